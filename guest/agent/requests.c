/* Request validation and the requests that finish at once: HELLO, FILE_WRITE, FILE_READ,
 * SET_CLOCK, ADD_ENTROPY, SYNC, ROOT (its work is boot.c's). Children are proc.c's. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define MAX_ITEMS 8
#define STRING_ITEM_MAX 4096 /* path, cwd, user */

/* RNDADDENTROPY from <linux/random.h>, which musl does not ship. */
#define RNDADDENTROPY_ _IOW('R', 0x03, int[2])
struct rand_pool_info_ {
	int entropy_count;
	int buf_size;
	uint8_t buf[ENTROPY_MAX];
};

/* Everything a request allocates; freed once it is handled. */
static void *allocs[8];
static int nallocs;

static void *req_alloc(size_t n)
{
	if (nallocs == (int)(sizeof allocs / sizeof allocs[0]))
		return NULL;
	void *p = malloc(n);
	if (p)
		allocs[nallocs++] = p;
	return p;
}

static void req_free_all(void)
{
	while (nallocs > 0)
		free(allocs[--nallocs]);
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Splits a body into items; -1 when an item overruns the body or there are too many. */
static int parse_items(const uint8_t *body, size_t len, struct item *items)
{
	int n = 0;
	size_t off = 0;
	while (off < len) {
		if (n == MAX_ITEMS || len - off < 4)
			return -1;
		uint32_t ilen = be32(body + off);
		off += 4;
		if (ilen > len - off)
			return -1;
		items[n].p = body + off;
		items[n].len = ilen;
		off += ilen;
		n++;
	}
	return n;
}

static bool get_u32(const struct item *it, uint32_t *v)
{
	if (it->len != 4)
		return false;
	*v = be32(it->p);
	return true;
}

static bool get_u64(const struct item *it, uint64_t *v)
{
	if (it->len != 8)
		return false;
	*v = (uint64_t)be32(it->p) << 32 | be32(it->p + 4);
	return true;
}

/* A `string` item as a C string: NULL when too long, containing NUL, or out of memory. */
static char *get_string(const struct item *it)
{
	if (it->len > STRING_ITEM_MAX || memchr(it->p, '\0', it->len))
		return NULL;
	char *s = req_alloc(it->len + 1);
	if (s) {
		memcpy(s, it->p, it->len);
		s[it->len] = '\0';
	}
	return s;
}

/* A `strings` item as a NULL-terminated array with room for `extra` more entries. */
static char **get_strings(const struct item *it, size_t extra, size_t *count)
{
	if (it->len > STRINGS_ITEM_MAX || (it->len > 0 && it->p[it->len - 1] != '\0'))
		return NULL;
	size_t n = 0;
	for (uint32_t i = 0; i < it->len; i++)
		n += it->p[i] == '\0';
	char *copy = req_alloc(it->len + 1);
	char **v = req_alloc((n + extra + 1) * sizeof *v);
	if (!copy || !v)
		return NULL;
	memcpy(copy, it->p, it->len);
	char *s = copy;
	for (size_t i = 0; i < n; i++) {
		v[i] = s;
		s += strlen(s) + 1;
	}
	v[n] = NULL;
	*count = n;
	return v;
}

/* EXEC and APP_START share argv, env, cwd, user. Returns false when malformed. */
static bool get_spawn(const struct item *items, struct spawn_req *r)
{
	size_t argc, envc;
	memset(r, 0, sizeof *r);
	r->argv = get_strings(&items[0], 0, &argc);
	r->envp = get_strings(&items[1], 1, &envc);
	r->cwd = get_string(&items[2]);
	r->user = get_string(&items[3]);
	if (!r->argv || argc == 0 || !r->envp || !r->cwd || !r->user)
		return false;
	bool has_path = false;
	for (size_t i = 0; i < envc; i++) {
		const char *eq = strchr(r->envp[i], '=');
		if (!eq || eq == r->envp[i])
			return false;
		has_path |= strncmp(r->envp[i], "PATH=", 5) == 0;
	}
	if (!has_path) {
		r->envp[envc] = DEFAULT_PATH;
		r->envp[envc + 1] = NULL;
	}
	if (!r->cwd[0])
		r->cwd = "/";
	return true;
}

/* Replies OK when err is 0, else ERROR not_found (ENOENT) or io. */
static void reply_errno(uint32_t id, int err, const char *what, const char *path)
{
	if (err == 0)
		reply_ok(id);
	else
		reply_error(id, err == ENOENT ? "not_found" : "io", "%s %s: %s", what, path,
			    strerror(err));
}

/* mkdir -p of every directory above path (mode 0755). */
static int make_parents(char *path)
{
	for (char *p = strchr(path + 1, '/'); p; p = strchr(p + 1, '/')) {
		*p = '\0';
		int r = mkdir(path, 0755);
		int err = errno;
		*p = '/';
		if (r < 0 && err != EEXIST) {
			errno = err;
			return -1;
		}
	}
	return 0;
}

static int write_fd(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Returns 0 or an errno value (with *what naming the step) so that the caller replies once. */
static int file_write(char *path, mode_t mode, uint32_t flags, const struct item *data,
		      const char **what)
{
	*what = "mkdir parents of";
	if ((flags & 2) && make_parents(path) < 0)
		return errno;
	int fd, r, err;
	if (flags & 1) {
		bool created = true;
		*what = "open";
		fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, mode);
		if (fd < 0 && errno == EEXIST) {
			created = false;
			fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
		}
		if (fd < 0)
			return errno;
		*what = "write";
		/* fchmod: the mode applies as given, whatever the umask. */
		r = (created && fchmod(fd, mode) < 0) ? -1 : write_fd(fd, data->p, data->len);
		err = errno;
		if (close(fd) < 0 && r == 0) {
			r = -1;
			err = errno;
		}
		return r < 0 ? err : 0;
	}

	/* Whole-file write: a temporary sibling renamed over the target, never half-written. */
	static unsigned counter;
	char tmp[PATH_MAX];
	char *slash = strrchr(path, '/');
	int n = snprintf(tmp, sizeof tmp, "%.*s/.%s.cocoon-%u", (int)(slash - path), path, slash + 1,
			 ++counter);
	*what = "create";
	if (n < 0 || (size_t)n >= sizeof tmp)
		return ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return errno;
	*what = "write";
	struct stat st;
	r = write_fd(fd, data->p, data->len);
	if (r == 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
		/* `mode` is for new files: a replaced file keeps its mode and owner. */
		r = fchmod(fd, st.st_mode & 07777);
		if (r == 0)
			r = fchown(fd, st.st_uid, st.st_gid);
	} else if (r == 0) {
		r = fchmod(fd, mode);
	}
	err = errno;
	if (close(fd) < 0 && r == 0) {
		r = -1;
		err = errno;
	}
	if (r == 0 && rename(tmp, path) < 0) {
		r = -1;
		err = errno;
	}
	if (r < 0)
		unlink(tmp);
	return r < 0 ? err : 0;
}

static int file_read(uint32_t id, const char *path, uint64_t offset, uint32_t max)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	msg_begin(id, MSG_OK);
	uint8_t *buf = msg_reserve(max);
	size_t got = 0;
	int err = buf ? 0 : ENOMEM;
	while (!err && got < max) {
		ssize_t n = pread(fd, buf + got, max - got, (off_t)(offset + got));
		if (n < 0 && errno != EINTR)
			err = errno;
		if (n == 0)
			break;
		if (n > 0)
			got += (size_t)n;
	}
	close(fd);
	if (err)
		return err;
	msg_commit(got);
	msg_send();
	return 0;
}

static void set_clock(uint32_t id, uint64_t ns)
{
	struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
	if (clock_settime(CLOCK_REALTIME, &ts) < 0)
		reply_error(id, "io", "clock_settime: %s", strerror(errno));
	else
		reply_ok(id);
}

static void add_entropy(uint32_t id, const struct item *seed)
{
	struct rand_pool_info_ info;
	info.entropy_count = (int)(8 * seed->len);
	info.buf_size = (int)seed->len;
	memcpy(info.buf, seed->p, seed->len);
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	int r = fd < 0 ? -1 : ioctl(fd, RNDADDENTROPY_, &info);
	int err = errno;
	if (fd >= 0)
		close(fd);
	if (r < 0)
		reply_error(id, "io", "RNDADDENTROPY: %s", strerror(err));
	else
		reply_ok(id);
}

/* ROOT's items, with PROTOCOL.md's defaults for empty ones. Returns a bad_request reason or NULL. */
static const char *get_root_config(const struct item *it, struct boot_config *cfg)
{
	boot_config_defaults(cfg);
	struct {
		char *dst;
		size_t cap;
		const char *what;
	} fields[] = {
		{cfg->root, sizeof cfg->root, "device"},
		{cfg->hostname, sizeof cfg->hostname, "hostname"},
		{cfg->ip, sizeof cfg->ip, "ip"},
		{cfg->gw, sizeof cfg->gw, "gateway"},
	};
	static char why[64];
	for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
		if (it[i].len == 0)
			continue; /* the default */
		if (it[i].len >= fields[i].cap || memchr(it[i].p, '\0', it[i].len)) {
			snprintf(why, sizeof why, "%s: at most %zu bytes, no NUL", fields[i].what,
				 fields[i].cap - 1);
			return why;
		}
		memcpy(fields[i].dst, it[i].p, it[i].len);
		fields[i].dst[it[i].len] = '\0';
	}
	if (cfg->root[0] != '/')
		return "device must be an absolute path";
	return net_config_error(cfg);
}

static void root(uint32_t id, const struct boot_config *cfg)
{
	if (root_mounted()) {
		reply_error(id, "busy", "root already mounted");
		return;
	}
	uint64_t size;
	char err[400];
	if (boot_root(cfg, &size, err, sizeof err) < 0) {
		agent_log("ROOT failed: %s", err);
		reply_error(id, "io", "%s", err);
		return;
	}
	char text[24];
	snprintf(text, sizeof text, "%" PRIu64, size);
	msg_begin(id, MSG_OK);
	msg_str(text);
	msg_send();
}

/* Before ROOT (cocoon.wait_root=1) only these run: the rest needs the root disk. */
static bool allowed_before_root(uint16_t type)
{
	switch (type) {
	case MSG_HELLO: case MSG_SET_CLOCK: case MSG_ADD_ENTROPY: case MSG_SYNC: case MSG_SHUTDOWN:
	case MSG_ROOT:
		return true;
	default:
		return false;
	}
}

/* Items each request type takes; -1 = unknown type. */
static int expected_items(uint16_t type)
{
	switch (type) {
	case MSG_HELLO: case MSG_SYNC: case MSG_SHUTDOWN: case MSG_APP_ATTACH: return 0;
	case MSG_EXEC: return 6;
	case MSG_FILE_WRITE: return 4;
	case MSG_FILE_READ: return 3;
	case MSG_APP_START: return 4;
	case MSG_APP_STOP: case MSG_SET_CLOCK: case MSG_ADD_ENTROPY: return 1;
	case MSG_WAIT_PORT: return 2;
	case MSG_ROOT: return 4;
	default: return -1;
	}
}

/* Runs a well-framed request; returns a bad_request reason, or NULL once it has replied. */
static const char *dispatch(uint32_t id, uint16_t type, const struct item *it)
{
	struct spawn_req sr;
	struct boot_config cfg;
	uint32_t a, b, c;
	uint64_t u;
	char *path;
	const char *what;
	int err;
	switch (type) {
	case MSG_HELLO:
		/* A new session: after a snapshot restore the host connects again, but the guest never
		 * saw the old connection end (PROTOCOL.md, "Connection loss and sessions"). */
		procs_forget_connection();
		msg_begin(id, MSG_OK);
		msg_u32(PROTOCOL_VERSION);
		msg_str(AGENT_VERSION);
		msg_send();
		return NULL;
	case MSG_EXEC:
		if (!get_spawn(it, &sr) || !get_u32(&it[5], &a))
			return "malformed argv, env, cwd, user or timeoutMs";
		sr.stdin_data = it[4].p;
		sr.stdin_len = it[4].len;
		proc_exec(id, &sr, a);
		return NULL;
	case MSG_APP_START:
		if (!get_spawn(it, &sr))
			return "malformed argv, env, cwd or user";
		proc_app_start(id, &sr);
		return NULL;
	case MSG_FILE_WRITE:
		path = get_string(&it[0]);
		if (!path || path[0] != '/' || path[strlen(path) - 1] == '/')
			return "path must be an absolute file path";
		if (!get_u32(&it[1], &a) || a > 07777)
			return "mode must be a u32 of at most 07777";
		if (!get_u32(&it[2], &b) || b > 3)
			return "flags must be a u32 using bits 0-1";
		if (it[3].len > FILE_DATA_MAX)
			return "data exceeds 1 MiB";
		err = file_write(path, (mode_t)a, b, &it[3], &what);
		reply_errno(id, err, what, path);
		return NULL;
	case MSG_FILE_READ:
		path = get_string(&it[0]);
		if (!path || path[0] != '/')
			return "path must be absolute";
		if (!get_u64(&it[1], &u) || u > (uint64_t)INT64_MAX - FILE_DATA_MAX)
			return "bad offset";
		if (!get_u32(&it[2], &c) || c > FILE_DATA_MAX)
			return "maxBytes must be a u32 of at most 1 MiB";
		err = file_read(id, path, u, c);
		if (err)
			reply_errno(id, err, "read", path);
		return NULL;
	case MSG_APP_ATTACH:
		proc_app_attach(id);
		return NULL;
	case MSG_APP_STOP:
		if (!get_u32(&it[0], &a))
			return "graceMs must be a u32";
		proc_app_stop(id, a);
		return NULL;
	case MSG_WAIT_PORT:
		if (!get_u32(&it[0], &a) || a == 0 || a > 65535 || !get_u32(&it[1], &b))
			return "port must be 1-65535 and timeoutMs a u32";
		proc_wait_port(id, a, b);
		return NULL;
	case MSG_SET_CLOCK:
		if (!get_u64(&it[0], &u) || u > (uint64_t)INT64_MAX)
			return "unixTimeNs must be a u64 below 2^63";
		set_clock(id, u);
		return NULL;
	case MSG_ADD_ENTROPY:
		if (it[0].len < 1 || it[0].len > ENTROPY_MAX)
			return "seed must be 1-512 bytes";
		add_entropy(id, &it[0]);
		return NULL;
	case MSG_SYNC:
		sync();
		reply_ok(id);
		return NULL;
	case MSG_SHUTDOWN:
		reply_ok(id);
		procs_shutdown();
	case MSG_ROOT:
		what = get_root_config(it, &cfg);
		if (what)
			return what;
		root(id, &cfg);
		return NULL;
	}
	return "unknown type";
}

void handle_frame(uint32_t id, uint16_t type, uint16_t reserved, const uint8_t *body, size_t len)
{
	struct item items[MAX_ITEMS];
	int want = expected_items(type);
	if (want < 0) {
		reply_error(id, "unsupported", "unknown request type 0x%02x", type);
		return;
	}
	int n = parse_items(body, len, items);
	const char *bad = NULL;
	if (id == 0)
		bad = "request id 0";
	else if (reserved != 0)
		bad = "reserved field is not 0";
	else if (n < 0)
		bad = "items overrun the frame (or more than 8)";
	else if (n != want)
		reply_error(id, "bad_request", "type 0x%02x takes %d items, got %d", type, want, n);
	else if (!root_mounted() && !allowed_before_root(type))
		reply_error(id, "busy", "root not mounted yet");
	else
		bad = dispatch(id, type, items);
	if (bad)
		reply_error(id, "bad_request", "%s (type 0x%02x)", bad, type);
	req_free_all();
}
