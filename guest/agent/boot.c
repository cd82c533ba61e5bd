/* Boot steps 1-3 of PROTOCOL.md: early mounts, kernel modules, root disk, switch root. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define ROOT_WAIT_MS 30000
#define RAMFS_MAGIC_ 0x858458f6
#define TMPFS_MAGIC_ 0x01021994

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

static void read_config(struct boot_config *cfg)
{
	snprintf(cfg->root, sizeof cfg->root, "/dev/vda");
	cfg->hostname[0] = '\0';
	snprintf(cfg->ip, sizeof cfg->ip, "10.0.2.15/24");
	snprintf(cfg->gw, sizeof cfg->gw, "10.0.2.2");

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

static void wait_for_block_device(const char *dev)
{
	int64_t deadline = monotonic_ms() + ROOT_WAIT_MS;
	struct stat st;
	while (stat(dev, &st) < 0 || !S_ISBLK(st.st_mode)) {
		if (monotonic_ms() > deadline)
			agent_fatal("root device %s did not appear within %d ms", dev, ROOT_WAIT_MS);
		sleep_ms(5);
	}
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

static void free_initramfs(void)
{
	struct statfs sfs;
	struct stat st;
	if (statfs("/", &sfs) < 0 || stat("/", &st) < 0)
		return;
	/* Only ever wipe a RAM filesystem: never a real disk the agent was started from. */
	if ((unsigned long)sfs.f_type != RAMFS_MAGIC_ && (unsigned long)sfs.f_type != TMPFS_MAGIC_)
		return;
	int dfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0)
		delete_contents(dfd, st.st_dev);
}

static void switch_root(const char *dev)
{
	static const char *const moved[] = {"dev", "proc", "sys"};
	mkdir_quiet("/newroot", 0755);
	if (mount(dev, "/newroot", "ext4", 0, NULL) < 0)
		agent_fatal("mount %s on /newroot (ext4): %s", dev, strerror(errno));
	for (size_t i = 0; i < sizeof moved / sizeof moved[0]; i++) {
		char from[16], to[32];
		snprintf(from, sizeof from, "/%s", moved[i]);
		snprintf(to, sizeof to, "/newroot/%s", moved[i]);
		mkdir_quiet(to, 0755);
		if (mount(from, to, NULL, MS_MOVE, NULL) < 0)
			agent_fatal("move %s to %s: %s", from, to, strerror(errno));
	}
	if (chdir("/newroot") < 0)
		agent_fatal("chdir /newroot: %s", strerror(errno));
	free_initramfs();
	/* The initramfs cannot be pivot_root'ed away: move the new root over / and chroot. */
	if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
		agent_fatal("move /newroot to /: %s", strerror(errno));
	if (chroot(".") < 0 || chdir("/") < 0)
		agent_fatal("chroot: %s", strerror(errno));
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

void boot(struct boot_config *cfg)
{
	umask(022);
	mount_early();
	stdio_init();
	agent_log("starting, version %s", AGENT_VERSION);
	read_config(cfg);
	load_modules();
	wait_for_block_device(cfg->root);
	switch_root(cfg->root);
	mount_runtime();
}
