/* What runs in a forked child before exec (EXEC, app) and the WAIT_PORT helper process.
 * Nothing here touches agent state: it runs in the child's copy of it. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"

#define WAIT_PORT_INTERVAL_MS 20

/* execvpe, but searching the child's own PATH (execvpe uses the agent's). */
static void exec_search(char *const argv[], char *const envp[])
{
	const char *file = argv[0];
	if (!file[0]) {
		errno = ENOENT;
		return;
	}
	if (strchr(file, '/')) {
		execve(file, argv, envp);
		return;
	}
	const char *path = DEFAULT_PATH + 5;
	for (char *const *e = envp; *e; e++)
		if (strncmp(*e, "PATH=", 5) == 0) {
			path = *e + 5;
			break;
		}
	int err = ENOENT;
	for (;;) {
		const char *end = strchrnul(path, ':');
		char full[PATH_MAX];
		int n = snprintf(full, sizeof full, "%.*s/%s", end == path ? 1 : (int)(end - path),
				 end == path ? "." : path, file);
		if (n > 0 && (size_t)n < sizeof full) {
			execve(full, argv, envp);
			if (errno == EACCES)
				err = EACCES;
			else if (errno != ENOENT && errno != ENOTDIR)
				return;
		}
		if (!*end)
			break;
		path = end + 1;
	}
	errno = err;
}

_Noreturn void exec_child(const struct spawn_req *r, const struct cred *c, int in, int out,
				 int err, int status_fd)
{
	restore_child_signals();
	int stage = ST_SETUP;
	if (setsid() < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
		goto fail;
	/* Every agent fd is O_CLOEXEC already; this makes sure of it (the port above all). */
	fds_from(3, false);
	stage = ST_USER;
	if (setgroups((size_t)c->ngroups, c->groups) < 0 || setgid(c->gid) < 0 || setuid(c->uid) < 0)
		goto fail;
	stage = ST_CWD;
	if (chdir(r->cwd) < 0)
		goto fail;
	stage = ST_EXEC;
	exec_search(r->argv, r->envp);
fail:;
	struct spawn_status st = {stage, errno};
	if (write(status_fd, &st, sizeof st) < 0) {
	}
	_exit(127);
}

int stdin_fd(const struct spawn_req *r)
{
	if (r->stdin_len == 0)
		return open("/dev/null", O_RDONLY | O_CLOEXEC);
	/* A memfd holds all of stdin at once: nothing to feed from the loop, nothing to block on. */
	int fd = memfd_create("cocoon-stdin", MFD_CLOEXEC);
	if (fd < 0)
		return -1;
	for (size_t off = 0; off < r->stdin_len;) {
		ssize_t n = write(fd, r->stdin_data + off, r->stdin_len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			close(fd);
			return -1;
		}
		off += (size_t)n;
	}
	if (lseek(fd, 0, SEEK_SET) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static bool try_connect(const struct sockaddr_in *sa, int64_t left_ms)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s < 0)
		return false;
	int r = connect(s, (const struct sockaddr *)sa, sizeof *sa);
	if (r < 0 && errno == EINPROGRESS) {
		struct pollfd pf = {.fd = s, .events = POLLOUT};
		int e = -1;
		socklen_t elen = sizeof e;
		int wait = left_ms > 1000 ? 1000 : left_ms < 0 ? 0 : (int)left_ms;
		if (poll(&pf, 1, wait) == 1)
			getsockopt(s, SOL_SOCKET, SO_ERROR, &e, &elen);
		r = e == 0 ? 0 : -1;
	}
	close(s);
	return r == 0;
}

/* The helper process: probes every 20 ms, exits 0 on a connect, 1 at the deadline. */
_Noreturn void wait_port_child(uint32_t port, uint32_t timeout_ms)
{
	fds_from(0, true);
	restore_child_signals();
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int64_t deadline = timeout_ms ? monotonic_ms() + timeout_ms : INT64_MAX;
	for (;;) {
		if (try_connect(&sa, deadline - monotonic_ms()))
			_exit(0);
		int64_t left = deadline - monotonic_ms();
		if (left <= 0)
			_exit(1);
		sleep_ms(left < WAIT_PORT_INTERVAL_MS ? (unsigned)left : WAIT_PORT_INTERVAL_MS);
	}
}
