/* Cocoon guest agent: PID 1 in every Cocoon VM. Shared declarations.
 *
 * Modules:
 *   agent.c     entry point, logging, the event loop
 *   boot.c      mounts, kernel modules, switch root (boot steps 1-3), the ROOT request
 *   net.c       hostname, lo and eth0 (boot step 4)
 *   wire.c      the virtio-serial port: framing, connection state, sending
 *   requests.c  validates requests and runs the simple ones
 *   proc.c      children: EXEC, the app (and its output backlog), WAIT_PORT helpers, reaping,
 *               deadlines
 *   spawn.c     the child side of a spawn: credentials, fds, exec; the WAIT_PORT probe
 *   users.c     `user` strings -> uid/gid/groups from /etc/passwd and /etc/group
 *
 * The wire contract is guest/PROTOCOL.md. */
#ifndef COCOON_AGENT_H
#define COCOON_AGENT_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define AGENT_VERSION "1.2"
#define PROTOCOL_VERSION 1

enum msg_type {
	MSG_HELLO = 0x01,
	MSG_EXEC = 0x02,
	MSG_FILE_WRITE = 0x03,
	MSG_FILE_READ = 0x04,
	MSG_APP_START = 0x05,
	MSG_APP_STOP = 0x06,
	MSG_WAIT_PORT = 0x07,
	MSG_SET_CLOCK = 0x08,
	MSG_ADD_ENTROPY = 0x09,
	MSG_SYNC = 0x0A,
	MSG_SHUTDOWN = 0x0B,
	MSG_ROOT = 0x0C,
	MSG_APP_ATTACH = 0x0D,

	MSG_OK = 0x80,
	MSG_ERROR = 0x81,
	MSG_STARTED = 0x82,
	MSG_STDOUT = 0x83,
	MSG_STDERR = 0x84,
	MSG_EXIT = 0x85,
	MSG_LOG = 0x86,
	MSG_APP_EXIT = 0x87,
};

#define FRAME_LEN_MIN 8u                /* id + type + reserved */
#define FRAME_LEN_MAX (4u << 20)        /* value of the length field */
#define FILE_DATA_MAX (1u << 20)        /* FILE_WRITE data, FILE_READ maxBytes */
#define OUTPUT_CHUNK_MAX (32u << 10)    /* STDOUT/STDERR chunk */
#define STRINGS_ITEM_MAX (256u << 10)   /* argv, env */
#define ENTROPY_MAX 512u
#define APP_BACKLOG_MAX (64u << 10)     /* app output kept while no host is attached */

#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ---- agent.c ---- */
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Logs, syncs and powers the VM off: for boot errors that leave the VM useless. */
_Noreturn void agent_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int64_t monotonic_ms(void);
void sleep_ms(unsigned ms);
/* The signal mask the agent runs with (SIGCHLD, SIGIO blocked): children restore it. */
void restore_child_signals(void);
/* Marks every fd >= `from` close-on-exec (or closes them when `close_them`). */
void fds_from(int from, bool close_them);

/* ---- boot.c ---- */
/* Boot steps 3-4: from the kernel command line, or from a ROOT request (cocoon.wait_root=1). */
struct boot_config {
	char root[128];     /* cocoon.root=, default /dev/vda */
	char hostname[65];  /* cocoon.hostname=, empty = leave as is */
	char ip[48];        /* cocoon.ip=, default 10.0.2.15/24; "off" = leave eth0 down */
	char gw[48];        /* cocoon.gw=, default 10.0.2.2; "none" = no default route */
	bool wait_root;     /* cocoon.wait_root=1: steps 3-4 wait for a ROOT request */
};
/* The defaults above (wait_root false). */
void boot_config_defaults(struct boot_config *cfg);
/* Boot steps 1-4; with wait_root only 1-2 (and the root device's size is recorded). */
void boot(struct boot_config *cfg);
/* False until boot steps 3-4 have run: the agent then serves the restricted request set. */
bool root_mounted(void);
/* The ROOT request: drops the device's cached pages, checks its size against the one recorded
 * at boot, then runs boot steps 3-4 with cfg. Returns 0 with the device's size in bytes, or -1
 * with a message in err (nothing changed: the agent can take another ROOT). */
int boot_root(const struct boot_config *cfg, uint64_t *size, char *err, size_t errlen);

/* ---- net.c ---- */
void net_setup(const struct boot_config *cfg);
/* NULL when cfg's ip and gw can be applied, else what is wrong with them. */
const char *net_config_error(const struct boot_config *cfg);

/* ---- wire.c: the port ---- */
void port_init(void);
bool port_connected(void);
/* The fd to poll for input while connected, else -1. */
int port_poll_fd(void);
/* Reads and dispatches whatever frames are available. */
void port_on_ready(short revents);
/* While disconnected: checks whether the host has connected since. */
void port_check_connected(void);
/* Sends a LOG frame (id 0) when connected; used by agent_log. */
void port_log(const char *line, size_t len);

/* ---- wire.c: building one outgoing frame at a time ----
 * Usage: msg_begin(id, type); msg_u32(...); ...; msg_send();
 * msg_send drops the frame when the host is not connected. */
void msg_begin(uint32_t id, uint16_t type);
void msg_u32(uint32_t v);
void msg_i32(int32_t v);
void msg_bytes(const void *p, size_t n);
void msg_str(const char *s);
/* Starts a bytes item of at most `max` bytes and returns where to write it (NULL when out of
 * memory); msg_commit(n) then fixes its length to n. */
uint8_t *msg_reserve(size_t max);
void msg_commit(size_t n);
void msg_send(void);

void reply_ok(uint32_t id);
void reply_error(uint32_t id, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- requests.c ---- */
struct item {
	const uint8_t *p;
	uint32_t len;
};
void handle_frame(uint32_t id, uint16_t type, uint16_t reserved, const uint8_t *body, size_t len);

/* ---- users.c ---- */
#define CRED_GROUPS_MAX 64
struct cred {
	uid_t uid;
	gid_t gid;
	int ngroups;
	gid_t groups[CRED_GROUPS_MAX];
};
/* "" = root; "uid", "uid:gid", "name", "name:group". Returns 0, or -1 with a message in err. */
int resolve_user(const char *spec, struct cred *c, char *err, size_t errlen);

/* ---- proc.c, spawn.c ---- */
struct spawn_req {
	char **argv;
	char **envp;
	const char *cwd;
	const char *user;
	const uint8_t *stdin_data;
	size_t stdin_len;
};
/* spawn.c: the child side. A failure before exec is written to status_fd. */
enum spawn_stage { ST_SETUP, ST_USER, ST_CWD, ST_EXEC };
struct spawn_status {
	int stage;
	int err;
};
_Noreturn void exec_child(const struct spawn_req *r, const struct cred *c, int in, int out,
			  int err, int status_fd);
/* stdin for a child: /dev/null when empty, else a memfd holding all of it. */
int stdin_fd(const struct spawn_req *r);
/* Probes 127.0.0.1:port every 20 ms; exits 0 on a connect, 1 at the deadline (0 = none). */
_Noreturn void wait_port_child(uint32_t port, uint32_t timeout_ms);

void proc_exec(uint32_t id, const struct spawn_req *r, uint32_t timeout_ms);
void proc_app_start(uint32_t id, const struct spawn_req *r);
void proc_app_stop(uint32_t id, uint32_t grace_ms);
/* APP_ATTACH: the app's backlog, then its live output and APP_EXIT, go to request `id`. */
void proc_app_attach(uint32_t id);
void proc_wait_port(uint32_t id, uint32_t port, uint32_t timeout_ms);
/* Fills pollfds for the children's output pipes; tags[i] identifies each for procs_on_output. */
int procs_pollfds(struct pollfd *pfds, int *tags, int max);
void procs_on_output(int tag, int fd, short revents);
void procs_reap(void);
/* Earliest monotonic deadline in ms, or -1 when none. */
int64_t procs_next_deadline(void);
void procs_on_deadlines(int64_t now);
/* The host connection is gone, or a HELLO began a new session: earlier requests are void
 * (see PROTOCOL.md). */
void procs_forget_connection(void);
_Noreturn void procs_shutdown(void);

#endif
