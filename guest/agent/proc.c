/* Children: EXEC processes, the app, WAIT_PORT helpers; output forwarding, the app's output
 * backlog, reaping, deadlines, and the shutdown sequence.
 *
 * Every child is forked from the single-threaded loop. EXEC and app children start their own
 * session (so pgid = pid and timeouts/stops signal the whole group), get stdin/stdout/stderr and
 * no other fd, then exec. A CLOEXEC status pipe reports a failure before exec as ERROR spawn. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"

#define MAX_PROCS 64
#define MAX_STOP_WAITERS 8
#define SHUTDOWN_GRACE_MS 3000

enum kind { K_EXEC, K_APP, K_WAIT_PORT };

struct proc {
	bool used;
	enum kind kind;
	uint32_t id;      /* request id; 0 once its host connection is gone: send nothing */
	pid_t pid;
	int fds[2];       /* read ends of stdout, stderr; -1 when closed */
	int64_t deadline; /* EXEC timeout (monotonic ms); 0 = none */
	uint32_t port, timeout_ms; /* WAIT_PORT, for the error message */
};

static struct proc procs[MAX_PROCS];
static struct proc *app;

/* The app's output while no host is attached (restored from a snapshot, host gone), replayed on
 * APP_ATTACH: records of [stream (0 stdout, 1 stderr)][u16 length][bytes], oldest first; the oldest
 * records make room for new ones. */
static struct {
	uint8_t buf[APP_BACKLOG_MAX];
	size_t len;
	uint64_t dropped; /* bytes of output dropped to make room */
} backlog;

/* APP_STOP requests waiting for the app to exit; deadline = when SIGKILL follows SIGTERM. */
static struct {
	bool stopping;
	int n;
	uint32_t ids[MAX_STOP_WAITERS];
	int64_t deadline;
} stop;

/* ---------------------------------------------------------------- spawning */

static struct proc *free_slot(uint32_t id)
{
	for (int i = 0; i < MAX_PROCS; i++)
		if (!procs[i].used)
			return &procs[i];
	reply_error(id, "busy", "too many processes running (%d)", MAX_PROCS);
	return NULL;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Starts an EXEC or app child; on failure replies (spawn, busy) and returns NULL. */
static struct proc *spawn(uint32_t id, const struct spawn_req *r, enum kind kind)
{
	struct proc *p = free_slot(id);
	if (!p)
		return NULL;
	struct cred cred;
	char why[300];
	if (resolve_user(r->user, &cred, why, sizeof why) < 0) {
		reply_error(id, "spawn", "%s", why);
		return NULL;
	}
	int in = stdin_fd(r), out[2] = {-1, -1}, err[2] = {-1, -1}, st[2] = {-1, -1};
	pid_t pid = -1;
	if (in >= 0 && pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0 &&
	    pipe2(st, O_CLOEXEC) == 0) {
		pid = fork();
		if (pid == 0)
			exec_child(r, &cred, in, out[1], err[1], st[1]);
	}
	int saved = errno;
	close_fd(&in);
	close_fd(&out[1]);
	close_fd(&err[1]);
	close_fd(&st[1]);
	struct spawn_status ss = {ST_SETUP, saved};
	ssize_t n = sizeof ss;
	if (pid > 0) {
		do
			n = read(st[0], &ss, sizeof ss);
		while (n < 0 && errno == EINTR);
		if (n != 0) {
			/* It failed (or cannot tell us): it must not run unaccounted for. */
			if (n != sizeof ss)
				kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
		}
	}
	close_fd(&st[0]);
	if (n != 0) {
		if (n != sizeof ss || ss.stage < ST_SETUP || ss.stage > ST_EXEC)
			ss = (struct spawn_status){ST_SETUP, EIO};
		close_fd(&out[0]);
		close_fd(&err[0]);
		const char *what = ss.stage == ST_EXEC ? r->argv[0]
				   : ss.stage == ST_CWD ? r->cwd
				   : ss.stage == ST_USER ? (r->user[0] ? r->user : "root")
							 : "setup";
		static const char *const stages[] = {"prepare", "switch to user", "chdir to", "exec"};
		reply_error(id, "spawn", "%s %s: %s", stages[ss.stage], what, strerror(ss.err));
		return NULL;
	}
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	*p = (struct proc){.used = true, .kind = kind, .id = id, .pid = pid, .fds = {out[0], err[0]}};
	return p;
}

void proc_exec(uint32_t id, const struct spawn_req *r, uint32_t timeout_ms)
{
	struct proc *p = spawn(id, r, K_EXEC);
	if (!p)
		return;
	if (timeout_ms)
		p->deadline = monotonic_ms() + timeout_ms;
	msg_begin(id, MSG_STARTED);
	msg_u32((uint32_t)p->pid);
	msg_send();
}

void proc_app_start(uint32_t id, const struct spawn_req *r)
{
	if (app) {
		reply_error(id, "busy", "the app is already running (pid %d)", app->pid);
		return;
	}
	struct proc *p = spawn(id, r, K_APP);
	if (!p)
		return;
	app = p;
	memset(&stop, 0, sizeof stop);
	memset(&backlog, 0, sizeof backlog);
	msg_begin(id, MSG_OK);
	msg_u32((uint32_t)p->pid);
	msg_send();
}

void proc_app_stop(uint32_t id, uint32_t grace_ms)
{
	if (!app) {
		reply_error(id, "not_found", "no app is running");
		return;
	}
	if (stop.n == MAX_STOP_WAITERS) {
		reply_error(id, "busy", "too many APP_STOP requests waiting");
		return;
	}
	stop.ids[stop.n++] = id;
	int64_t deadline = monotonic_ms() + grace_ms;
	if (!stop.stopping) {
		stop.stopping = true;
		stop.deadline = deadline;
		kill(-app->pid, SIGTERM);
	} else if (stop.deadline && deadline < stop.deadline) {
		stop.deadline = deadline;
	}
}

/* ---------------------------------------------------------------- the app's backlog */

static size_t record_len(const uint8_t *r)
{
	return 3 + ((size_t)r[1] << 8 | r[2]);
}

/* n is at most OUTPUT_CHUNK_MAX, so a record always fits once older ones are dropped. */
static void backlog_add(int j, const uint8_t *data, size_t n)
{
	size_t drop = 0;
	while (backlog.len - drop + 3 + n > APP_BACKLOG_MAX) {
		size_t r = record_len(backlog.buf + drop);
		backlog.dropped += r - 3;
		drop += r;
	}
	memmove(backlog.buf, backlog.buf + drop, backlog.len - drop);
	backlog.len -= drop;
	uint8_t *r = backlog.buf + backlog.len;
	r[0] = (uint8_t)j;
	r[1] = (uint8_t)(n >> 8);
	r[2] = (uint8_t)n;
	memcpy(r + 3, data, n);
	backlog.len += 3 + n;
}

void proc_app_attach(uint32_t id)
{
	if (!app) {
		reply_error(id, "not_found", "no app is running");
		return;
	}
	/* Ids are zeroed when a session ends: a live one belongs to this session. */
	if (app->id) {
		reply_error(id, "busy", "the app's output already goes to request %u", app->id);
		return;
	}
	app->id = id;
	msg_begin(id, MSG_OK);
	msg_u32((uint32_t)app->pid);
	msg_send();
	if (backlog.dropped)
		agent_log("app attached: %llu bytes of older output were dropped while no host was attached",
			  (unsigned long long)backlog.dropped);
	for (size_t off = 0; off < backlog.len && app->id == id; off += record_len(backlog.buf + off)) {
		const uint8_t *r = backlog.buf + off;
		msg_begin(id, r[0] ? MSG_STDERR : MSG_STDOUT);
		msg_bytes(r + 3, record_len(r) - 3);
		msg_send();
	}
	/* A host that left during the replay gets all of it again on its next attach. */
	if (app->id == id)
		memset(&backlog, 0, sizeof backlog);
}

/* ---------------------------------------------------------------- WAIT_PORT */

void proc_wait_port(uint32_t id, uint32_t port, uint32_t timeout_ms)
{
	struct proc *p = free_slot(id);
	if (!p)
		return;
	pid_t pid = fork();
	if (pid < 0) {
		reply_error(id, "io", "fork: %s", strerror(errno));
		return;
	}
	if (pid == 0)
		wait_port_child(port, timeout_ms);
	*p = (struct proc){.used = true, .kind = K_WAIT_PORT, .id = id, .pid = pid, .fds = {-1, -1},
			   .port = port, .timeout_ms = timeout_ms};
}

/* ---------------------------------------------------------------- output, exits, deadlines */

int procs_pollfds(struct pollfd *pfds, int *tags, int max)
{
	int n = 0;
	for (int i = 0; i < MAX_PROCS; i++)
		for (int j = 0; j < 2 && procs[i].used; j++)
			if (procs[i].fds[j] >= 0 && n < max) {
				pfds[n] = (struct pollfd){.fd = procs[i].fds[j], .events = POLLIN};
				tags[n++] = i * 2 + j;
			}
	return n;
}

/* Reads one chunk (at most max bytes) from stdout (j=0) or stderr (j=1) and forwards it while its
 * request is live; a detached app's output goes to its backlog. Closes the pipe at EOF. Returns
 * the bytes read. */
static size_t forward(struct proc *p, int j, size_t max)
{
	static uint8_t scratch[OUTPUT_CHUNK_MAX];
	msg_begin(p->id, j ? MSG_STDERR : MSG_STDOUT);
	uint8_t *buf = p->id ? msg_reserve(max) : NULL;
	ssize_t n = read(p->fds[j], buf ? buf : scratch, max);
	if (n > 0) {
		if (buf) {
			msg_commit((size_t)n);
			msg_send();
		} else if (p == app && !p->id) {
			backlog_add(j, scratch, (size_t)n);
		}
		return (size_t)n;
	}
	if (n == 0 || (errno != EAGAIN && errno != EINTR))
		close_fd(&p->fds[j]);
	return 0;
}

void procs_on_output(int tag, int fd, short revents)
{
	struct proc *p = &procs[tag / 2];
	int j = tag % 2;
	if (p->used && p->fds[j] == fd && (revents & (POLLIN | POLLHUP | POLLERR)))
		forward(p, j, OUTPUT_CHUNK_MAX);
}

/* At exit: forwards what is in the pipe now, then closes it. Output that background children
 * write later is cut (PROTOCOL.md), and a chatty one cannot keep the loop here. */
static void drain(struct proc *p, int j)
{
	int avail = 0;
	if (p->fds[j] >= 0 && ioctl(p->fds[j], FIONREAD, &avail) == 0)
		while (avail > 0 && p->fds[j] >= 0) {
			size_t max = (size_t)avail < OUTPUT_CHUNK_MAX ? (size_t)avail : OUTPUT_CHUNK_MAX;
			size_t got = forward(p, j, max);
			if (got == 0)
				break;
			avail -= (int)got;
		}
	close_fd(&p->fds[j]);
}

static void finish(struct proc *p, int status)
{
	drain(p, 0);
	drain(p, 1);
	int32_t code = -1;
	uint32_t sig = 0;
	if (WIFEXITED(status))
		code = WEXITSTATUS(status);
	else if (WIFSIGNALED(status))
		sig = (uint32_t)WTERMSIG(status);
	if (p->kind == K_WAIT_PORT && p->id) {
		if (code == 0)
			reply_ok(p->id);
		else
			reply_error(p->id, "timeout", "nothing accepted a connection on 127.0.0.1:%u within %u ms",
				    p->port, p->timeout_ms);
	} else if (p->id) {
		msg_begin(p->id, p->kind == K_APP ? MSG_APP_EXIT : MSG_EXIT);
		msg_i32(code);
		msg_u32(sig);
		msg_send();
	}
	if (p == app) {
		app = NULL;
		/* A stop ends the whole group, also what the app left behind. */
		if (stop.stopping)
			kill(-p->pid, SIGKILL);
		for (int i = 0; i < stop.n; i++) {
			msg_begin(stop.ids[i], MSG_OK);
			msg_i32(code);
			msg_u32(sig);
			msg_send();
		}
		memset(&stop, 0, sizeof stop);
	}
	p->used = false;
}

void procs_reap(void)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0)
			return;
		/* Orphans re-parented to PID 1 are simply reaped. */
		for (int i = 0; i < MAX_PROCS; i++)
			if (procs[i].used && procs[i].pid == pid) {
				finish(&procs[i], status);
				break;
			}
	}
}

int64_t procs_next_deadline(void)
{
	int64_t d = -1;
	for (int i = 0; i < MAX_PROCS; i++)
		if (procs[i].used && procs[i].deadline && (d < 0 || procs[i].deadline < d))
			d = procs[i].deadline;
	if (app && stop.deadline && (d < 0 || stop.deadline < d))
		d = stop.deadline;
	return d;
}

void procs_on_deadlines(int64_t now)
{
	for (int i = 0; i < MAX_PROCS; i++)
		if (procs[i].used && procs[i].deadline && now >= procs[i].deadline) {
			kill(-procs[i].pid, SIGKILL);
			procs[i].deadline = 0;
		}
	if (app && stop.deadline && now >= stop.deadline) {
		kill(-app->pid, SIGKILL);
		stop.deadline = 0;
	}
}

void procs_forget_connection(void)
{
	for (int i = 0; i < MAX_PROCS; i++) {
		struct proc *p = &procs[i];
		if (!p->used)
			continue;
		/* Nobody waits for these any more. The app keeps running, its output kept in the
		 * backlog until an APP_ATTACH. */
		if (p->kind == K_EXEC && p->id)
			kill(-p->pid, SIGKILL);
		else if (p->kind == K_WAIT_PORT)
			kill(p->pid, SIGKILL);
		p->id = 0;
	}
	stop.n = 0;
}

/* ---------------------------------------------------------------- shutdown */

static void discard_output(void)
{
	static uint8_t scratch[4096];
	for (int i = 0; i < MAX_PROCS; i++)
		for (int j = 0; j < 2 && procs[i].used; j++)
			while (procs[i].fds[j] >= 0 && read(procs[i].fds[j], scratch, sizeof scratch) > 0) {
			}
}

_Noreturn void procs_shutdown(void)
{
	agent_log("shutting down");
	if (app) {
		/* The app gets SIGTERM and a grace period; its output is read (and dropped) meanwhile
		 * so that it never blocks on a full pipe. */
		kill(-app->pid, SIGTERM);
		int64_t deadline = monotonic_ms() + SHUTDOWN_GRACE_MS;
		while (waitpid(app->pid, NULL, WNOHANG) == 0 && monotonic_ms() < deadline) {
			discard_output();
			sleep_ms(10);
		}
	}
	kill(-1, SIGKILL);
	int64_t deadline = monotonic_ms() + 1000;
	while (waitpid(-1, NULL, WNOHANG) >= 0 && monotonic_ms() < deadline)
		sleep_ms(5);
	sync();
	/* Before ROOT (cocoon.wait_root=1) / is still the initramfs: nothing to protect. */
	if (root_mounted() && mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
		agent_log("remount / read-only: %s", strerror(errno));
	sync();
	reboot(RB_AUTOBOOT);
	agent_fatal("reboot: %s", strerror(errno));
}
