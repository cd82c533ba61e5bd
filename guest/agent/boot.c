/* Boot steps 1-3 of PROTOCOL.md: early mounts, kernel modules, root disk, switch root; and the
 * ROOT request, which runs steps 3-4 later when the kernel command line has cocoon.wait_root=1
 * (the host snapshots the VM before the root disk is mounted and restores it with another disk). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define ROOT_WAIT_MS 30000
#define ROOT_REQUEST_WAIT_MS 5000 /* ROOT: the device existed at boot, or it is a mistake */
#define RAMFS_MAGIC_ 0x858458f6
#define TMPFS_MAGIC_ 0x01021994

static bool root_is_mounted;
/* cocoon.wait_root=1: the root device and its size at boot (what the snapshot's kernel saw). */
static struct {
	bool known;
	dev_t rdev;
	uint64_t size;
} boot_disk;

bool root_mounted(void)
{
	return root_is_mounted;
}

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

static void mkdir_quiet(const char *path, mode_t mode)
{
	if (mkdir(path, mode) < 0 && errno != EEXIST)
		agent_log("mkdir %s: %s", path, strerror(errno));
}

static void mount_early(void)
{
	mkdir("/dev", 0755);
	mkdir("/proc", 0555);
	mkdir("/sys", 0555);
	/* EBUSY: already mounted (e.g. CONFIG_DEVTMPFS_MOUNT); fine. Errors are logged once the
	 * console is open. */
	mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

/* fd 0 = /dev/null, fds 1 and 2 = /dev/console: the agent logs to fd 2, and no fd the agent
 * opens later can land on 0-2 (children get those dup2'ed over). */
static void stdio_init(void)
{
	int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	int con = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (con < 0)
		con = null_fd;
	if (null_fd >= 0 && null_fd != 0)
		dup2(null_fd, 0);
	if (con >= 0 && con != 1)
		dup2(con, 1);
	if (con >= 0 && con != 2)
		dup2(con, 2);
	if (null_fd > 2)
		close(null_fd);
	if (con > 2 && con != null_fd)
		close(con);
}

static void cmdline_value(const char *cmdline, const char *key, char *out, size_t outlen)
{
	size_t klen = strlen(key);
	for (const char *p = cmdline; *p;) {
		while (*p == ' ' || *p == '\n' || *p == '\t')
			p++;
		const char *end = p;
		while (*end && *end != ' ' && *end != '\n' && *end != '\t')
			end++;
		if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
			size_t vlen = (size_t)(end - p) - klen - 1;
			if (vlen >= outlen) {
				agent_log("ignoring %s=: value too long", key);
			} else {
				memcpy(out, p + klen + 1, vlen);
				out[vlen] = '\0';
			}
		}
		p = end;
	}
}

void boot_config_defaults(struct boot_config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	snprintf(cfg->root, sizeof cfg->root, "/dev/vda");
	snprintf(cfg->ip, sizeof cfg->ip, "10.0.2.15/24");
	snprintf(cfg->gw, sizeof cfg->gw, "10.0.2.2");
}

static void read_config(struct boot_config *cfg)
{
	boot_config_defaults(cfg);

	char cmdline[4096];
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof cmdline - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (n < 0) {
		agent_log("cannot read /proc/cmdline: %s; using defaults", strerror(errno));
		return;
	}
	cmdline[n] = '\0';
	cmdline_value(cmdline, "cocoon.root", cfg->root, sizeof cfg->root);
	cmdline_value(cmdline, "cocoon.hostname", cfg->hostname, sizeof cfg->hostname);
	cmdline_value(cmdline, "cocoon.ip", cfg->ip, sizeof cfg->ip);
	cmdline_value(cmdline, "cocoon.gw", cfg->gw, sizeof cfg->gw);
	char wait_root[8] = "";
	cmdline_value(cmdline, "cocoon.wait_root", wait_root, sizeof wait_root);
	cfg->wait_root = strcmp(wait_root, "1") == 0;
	if (wait_root[0] && strcmp(wait_root, "0") != 0 && strcmp(wait_root, "1") != 0)
		agent_log("ignoring cocoon.wait_root=%s: not 0 or 1", wait_root);
}

static void load_module(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		agent_log("module %s: %s", path, strerror(errno));
		return;
	}
	if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
		agent_log("module %s: finit_module: %s", path, strerror(errno));
	close(fd);
}

/* /modules.order: one path per line (relative paths are taken from /); '#' starts a comment. */
static void load_modules(void)
{
	FILE *f = fopen("/modules.order", "re");
	if (!f) {
		if (errno != ENOENT)
			agent_log("/modules.order: %s", strerror(errno));
		return;
	}
	char line[512];
	while (fgets(line, sizeof line, f)) {
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		size_t len = strcspn(p, "#\r\n");
		while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		p[len] = '\0';
		if (len == 0)
			continue;
		char path[600];
		snprintf(path, sizeof path, "%s%s", p[0] == '/' ? "" : "/", p);
		load_module(path);
	}
	fclose(f);
}

static int wait_for_block_device(const char *dev, int wait_ms, struct stat *st, char *err,
				 size_t errlen)
{
	int64_t deadline = monotonic_ms() + wait_ms;
	for (;;) {
		if (stat(dev, st) == 0)
			return S_ISBLK(st->st_mode)
				       ? 0
				       : fail(err, errlen, "root device %s is not a block device", dev);
		if (errno != ENOENT)
			return fail(err, errlen, "root device %s: %s", dev, strerror(errno));
		if (monotonic_ms() > deadline)
			return fail(err, errlen, "root device %s did not appear within %d ms", dev,
				    wait_ms);
		sleep_ms(5);
	}
}

static int write_sysfs(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = write(fd, value, strlen(value));
	int e = errno;
	close(fd);
	errno = e;
	return n == (ssize_t)strlen(value) ? 0 : -1;
}

/* After a snapshot restore, virtio_blk still reports the capacity of the disk attached when the
 * snapshot was taken: it reads the capacity at probe time and on a config-change interrupt,
 * neither of which a restore gives. Unbinding and binding the driver probes the disk again, so
 * the capacity is the current disk's (and its page cache starts empty). Returns 0 when re-probed,
 * 1 when the device is not a virtio_blk disk (nothing done), -1 with a message. */
static int reprobe_virtio_blk(const char *dev, const struct stat *st, char *err, size_t errlen)
{
	char link[64], sys_path[PATH_MAX], drv[PATH_MAX];
	/* /sys/devices/.../virtio0/block/vda (or .../block/vda/vda1 for a partition) */
	snprintf(link, sizeof link, "/sys/dev/block/%u:%u", major(st->st_rdev), minor(st->st_rdev));
	if (!realpath(link, sys_path))
		return fail(err, errlen, "%s: %s: %s", dev, link, strerror(errno));
	char *block = strstr(sys_path, "/block/");
	if (!block)
		return 1;
	*block = '\0';
	char driver_link[PATH_MAX + 8];
	snprintf(driver_link, sizeof driver_link, "%s/driver", sys_path);
	ssize_t n = readlink(driver_link, drv, sizeof drv - 1);
	if (n < 0)
		return 1;
	drv[n] = '\0';
	const char *slash = strrchr(drv, '/');
	if (strcmp(slash ? slash + 1 : drv, "virtio_blk") != 0)
		return 1;
	char vdev[64]; /* virtio0 */
	snprintf(vdev, sizeof vdev, "%s", strrchr(sys_path, '/') + 1);
	*block = '/';
	if (write_sysfs("/sys/bus/virtio/drivers/virtio_blk/unbind", vdev) < 0)
		return fail(err, errlen, "unbind %s (%s) from virtio_blk: %s", vdev, dev, strerror(errno));
	if (write_sysfs("/sys/bus/virtio/drivers/virtio_blk/bind", vdev) < 0)
		return fail(err, errlen, "bind %s (%s) to virtio_blk: %s", vdev, dev, strerror(errno));
	/* The probe is synchronous; the disk must come back under its old name. */
	struct stat now;
	if (stat(sys_path, &now) < 0 || wait_for_block_device(dev, ROOT_REQUEST_WAIT_MS, &now, err,
							      errlen) < 0 || now.st_rdev != st->st_rdev)
		return fail(err, errlen, "%s did not come back as %s after re-probing %s", sys_path,
			    dev, vdev);
	return 0;
}

/* "Buffers:" of /proc/meminfo: the page cache of all block devices, in kB (-1 if unknown). */
static long buffers_kb(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	long kb = -1;
	char line[128];
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "Buffers: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/* The device's size in bytes; with `flush`, first drops every cached page of it. */
static int block_device_size(const char *dev, uint64_t *size, bool flush, char *err, size_t errlen)
{
	int fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(err, errlen, "open %s: %s", dev, strerror(errno));
	if (flush) {
		/* A restored snapshot's kernel may still cache pages (partition table, ext4
		 * superblock) read from the disk attached when the snapshot was taken; the disk
		 * attached now is another file. Nothing is mounted, so every page can go. */
		if (ioctl(fd, BLKFLSBUF, 0) < 0) {
			int e = errno;
			close(fd);
			return fail(err, errlen, "BLKFLSBUF %s: %s", dev, strerror(e));
		}
		int e = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		if (e)
			agent_log("posix_fadvise %s DONTNEED: %s", dev, strerror(e));
	}
	if (ioctl(fd, BLKGETSIZE64, size) < 0) {
		int e = errno;
		close(fd);
		return fail(err, errlen, "BLKGETSIZE64 %s: %s", dev, strerror(e));
	}
	close(fd);
	return 0;
}

/* Frees the initramfs' memory like busybox switch_root: deletes everything on the initramfs
 * filesystem, never crossing into other mounts (the new root is one). */
static void delete_contents(int dfd, dev_t dev)
{
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		const char *name = e->d_name;
		if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
			continue;
		struct stat st;
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != dev)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub >= 0)
				delete_contents(sub, dev);
			unlinkat(dfd, name, AT_REMOVEDIR);
		} else {
			unlinkat(dfd, name, 0);
		}
	}
	closedir(d);
}

/* Deletes the initramfs' files (old_root: an fd of its root directory, taken before the switch;
 * the new root now hides it). */
static void free_initramfs(int old_root)
{
	struct statfs sfs;
	struct stat st;
	/* Only ever wipe a RAM filesystem: never a real disk the agent was started from. */
	if (fstatfs(old_root, &sfs) < 0 || fstat(old_root, &st) < 0 ||
	    ((unsigned long)sfs.f_type != RAMFS_MAGIC_ && (unsigned long)sfs.f_type != TMPFS_MAGIC_)) {
		close(old_root);
		return;
	}
	delete_contents(old_root, st.st_dev);
}

static const char *const moved[] = {"/dev", "/proc", "/sys"};
#define NMOVED (sizeof moved / sizeof moved[0])

/* Moves the first n of /dev /proc /sys back from /newroot and unmounts it. */
static void undo_newroot(size_t n)
{
	while (n-- > 0) {
		char from[32];
		snprintf(from, sizeof from, "/newroot%s", moved[n]);
		if (mount(from, moved[n], NULL, MS_MOVE, NULL) < 0)
			agent_log("moving %s back: %s", from, strerror(errno));
	}
	if (umount2("/newroot", 0) < 0)
		agent_log("umount /newroot: %s", strerror(errno));
}

/* Mounts dev on /newroot, moves /dev /proc /sys there and makes it the root. A failure before
 * the root has moved is undone (returns -1 with a message); one after it cannot be. */
static int switch_root(const char *dev, char *err, size_t errlen)
{
	mkdir_quiet("/newroot", 0755);
	if (mount(dev, "/newroot", "ext4", 0, NULL) < 0)
		return fail(err, errlen, "mount %s on /newroot (ext4): %s", dev, strerror(errno));
	size_t n = 0;
	for (; n < NMOVED; n++) {
		char to[32];
		snprintf(to, sizeof to, "/newroot%s", moved[n]);
		mkdir_quiet(to, 0755);
		if (mount(moved[n], to, NULL, MS_MOVE, NULL) < 0) {
			fail(err, errlen, "move %s to %s: %s", moved[n], to, strerror(errno));
			undo_newroot(n);
			return -1;
		}
	}
	int old_root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	/* The initramfs cannot be pivot_root'ed away: move the new root over / and chroot. */
	if (old_root < 0 || chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0) {
		fail(err, errlen, "move /newroot to /: %s", strerror(errno));
		if (chdir("/") < 0) {
		}
		if (old_root >= 0)
			close(old_root);
		undo_newroot(NMOVED);
		return -1;
	}
	if (chroot(".") < 0 || chdir("/") < 0)
		agent_fatal("chroot: %s", strerror(errno));
	free_initramfs(old_root);
	return 0;
}

static bool is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void mount_logged(const char *src, const char *target, const char *type,
			 unsigned long flags, const char *opts)
{
	if (mount(src, target, type, flags, opts) < 0)
		agent_log("mount %s on %s: %s", type, target, strerror(errno));
}

/* The root disk's usual runtime mounts. /dev is devtmpfs (ours), so its directories are made
 * here; /run and /tmp are mounted only where the image has them. */
static void mount_runtime(void)
{
	mkdir_quiet("/dev/pts", 0755);
	mount_logged("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		     "gid=5,mode=0620,ptmxmode=0666");
	mkdir_quiet("/dev/shm", 01777);
	mount_logged("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	if (is_dir("/run"))
		mount_logged("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	if (is_dir("/tmp"))
		mount_logged("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	/* What udev would add and shells expect (process substitution, /dev/stdin). */
	symlink("/proc/self/fd", "/dev/fd");
	symlink("/proc/self/fd/0", "/dev/stdin");
	symlink("/proc/self/fd/1", "/dev/stdout");
	symlink("/proc/self/fd/2", "/dev/stderr");
}

/* Boot steps 3 and 4; -1 with a message (and nothing changed) when the root cannot be mounted. */
static int enter_root(const struct boot_config *cfg, char *err, size_t errlen)
{
	if (switch_root(cfg->root, err, errlen) < 0)
		return -1;
	root_is_mounted = true;
	mount_runtime();
	net_setup(cfg);
	return 0;
}

void boot(struct boot_config *cfg)
{
	umask(022);
	mount_early();
	stdio_init();
	agent_log("starting, version %s", AGENT_VERSION);
	read_config(cfg);
	load_modules();
	char err[300];
	struct stat st;
	if (wait_for_block_device(cfg->root, ROOT_WAIT_MS, &st, err, sizeof err) < 0)
		agent_fatal("%s", err);
	if (!cfg->wait_root) {
		if (enter_root(cfg, err, sizeof err) < 0)
			agent_fatal("%s", err);
		return;
	}
	/* Recorded now, i.e. in the snapshot: a restore onto another disk is checked against it. */
	if (block_device_size(cfg->root, &boot_disk.size, false, err, sizeof err) < 0)
		agent_fatal("%s", err);
	boot_disk.rdev = st.st_rdev;
	boot_disk.known = true;
	agent_log("cocoon.wait_root=1: waiting for ROOT (%s: %" PRIu64 " bytes)", cfg->root,
		  boot_disk.size);
}

int boot_root(const struct boot_config *cfg, uint64_t *size, char *err, size_t errlen)
{
	struct stat st;
	uint64_t before;
	long cache_kb[2] = {buffers_kb(), -1}; /* what the snapshot's kernel had cached */
	if (wait_for_block_device(cfg->root, ROOT_REQUEST_WAIT_MS, &st, err, errlen) < 0 ||
	    block_device_size(cfg->root, &before, false, err, errlen) < 0)
		return -1;
	/* The size the snapshot's kernel saw: recorded at boot for cocoon.root=, else the one the
	 * driver still reports. */
	uint64_t expected = boot_disk.known && st.st_rdev == boot_disk.rdev ? boot_disk.size : before;
	int64_t t0 = monotonic_ms();
	int reprobed = reprobe_virtio_blk(cfg->root, &st, err, errlen);
	int64_t reprobe_ms = monotonic_ms() - t0;
	if (reprobed < 0 || block_device_size(cfg->root, size, true, err, errlen) < 0)
		return -1;
	cache_kb[1] = buffers_kb();
	agent_log("ROOT %s: %" PRIu64 " bytes (%s%" PRId64 " ms; block device cache %ld kB, "
		  "after dropping %ld kB)", cfg->root, *size,
		  reprobed == 0 ? "virtio_blk re-probed in " : "not virtio_blk: size not re-read, ",
		  reprobe_ms, cache_kb[0], cache_kb[1]);
	/* A re-probed driver reports the new disk's real size; without a re-probe it would still
	 * report the snapshot's, so a different size is refused. */
	if (reprobed != 0 && *size != expected)
		return fail(err, errlen, "disk size changed from %" PRIu64 " to %" PRIu64 " bytes",
			    expected, *size);
	return enter_root(cfg, err, errlen);
}
