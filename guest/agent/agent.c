/* Cocoon guest agent: entry point, logging and the single-threaded event loop.
 *
 * The loop blocks in poll() on: a signalfd (SIGCHLD for reaping, SIGIO for "host connected"),
 * the port (while the host is connected) and the children's output pipes. Its timeout is the
 * nearest deadline (EXEC timeout, app stop grace), else infinite: an idle agent never wakes. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define MAX_POLLFDS 160
/* While the host is not connected, the port's SIGIO wakes the loop when it connects; this
 * re-check is only a safety net (measured: SIGIO alone reconnects in ~3 ms). */
#define RECONNECT_CHECK_MS 1000

static int sig_fd = -1;
static sigset_t agent_sigmask;

int64_t monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
	}
}

static void vlog(const char *fmt, va_list ap)
{
	static const char prefix[] = "cocoon-agent: ";
	char line[512];
	size_t p = sizeof prefix - 1;
	memcpy(line, prefix, p);
	int n = vsnprintf(line + p, sizeof line - p - 1, fmt, ap);
	size_t len = n < 0 ? p : p + ((size_t)n < sizeof line - p - 1 ? (size_t)n : sizeof line - p - 2);
	port_log(line + p, len - p);
	line[len++] = '\n';
	/* fd 2 is /dev/console (boot.c); nothing useful can be done when this write fails. */
	if (write(2, line, len) < 0) {
	}
}

void agent_log(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(fmt, ap);
	va_end(ap);
}

_Noreturn void agent_fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(fmt, ap);
	va_end(ap);
	agent_log("fatal: powering off");
	sync();
	reboot(RB_POWER_OFF);
	/* PID 1 must not exit; if power-off is refused, a reboot ends the VM too (-no-reboot). */
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

void restore_child_signals(void)
{
	sigset_t none;
	sigemptyset(&none);
	signal(SIGPIPE, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

void fds_from(int from, bool close_them)
{
	if (syscall(SYS_close_range, (unsigned)from, ~0U, close_them ? 0 : CLOSE_RANGE_CLOEXEC) == 0)
		return;
	/* Kernels before 5.11: every agent fd is opened O_CLOEXEC, so only closing needs a loop. */
	if (close_them)
		for (int fd = from; fd < 1024; fd++)
			close(fd);
}

static void signals_init(void)
{
	/* Ctrl-Alt-Del must not reboot the VM from under the host; the kernel then sends SIGINT
	 * to PID 1, which is ignored. */
	reboot(RB_DISABLE_CAD);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	sigemptyset(&agent_sigmask);
	sigaddset(&agent_sigmask, SIGCHLD);
	sigaddset(&agent_sigmask, SIGIO);
	sigprocmask(SIG_BLOCK, &agent_sigmask, NULL);
	sig_fd = signalfd(-1, &agent_sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sig_fd < 0)
		agent_fatal("signalfd: %s", strerror(errno));
}

static void drain_signals(void)
{
	struct signalfd_siginfo si[8];
	while (read(sig_fd, si, sizeof si) > 0) {
	}
}

static _Noreturn void serve(void)
{
	struct pollfd pfds[MAX_POLLFDS];
	int tags[MAX_POLLFDS];
	for (;;) {
		int n = 0;
		pfds[n++] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
		int port_idx = -1;
		int pfd = port_poll_fd();
		if (pfd >= 0) {
			port_idx = n;
			pfds[n++] = (struct pollfd){.fd = pfd, .events = POLLIN};
		}
		int first_child = n;
		n += procs_pollfds(pfds + n, tags + n, MAX_POLLFDS - n);

		int64_t now = monotonic_ms();
		int64_t deadline = procs_next_deadline();
		if (!port_connected() && (deadline < 0 || deadline > now + RECONNECT_CHECK_MS))
			deadline = now + RECONNECT_CHECK_MS;
		int timeout = -1; /* idle: block until something happens */
		if (deadline >= 0)
			timeout = deadline <= now               ? 0
				  : deadline - now > INT_MAX ? INT_MAX
							     : (int)(deadline - now);

		if (poll(pfds, (nfds_t)n, timeout) < 0 && errno != EINTR) {
			agent_log("poll: %s", strerror(errno));
			sleep_ms(100);
			continue;
		}
		/* Requests first: right after a snapshot restore, the new host's HELLO must end the old
		 * session before output is forwarded under its ids. */
		bool port_ready = port_idx >= 0 && pfds[port_idx].revents;
		if (port_ready)
			port_on_ready(pfds[port_idx].revents);
		/* Output before reaping, so that a reaped child's EXIT follows all output read so far. */
		for (int i = first_child; i < n; i++)
			if (pfds[i].revents)
				procs_on_output(tags[i], pfds[i].fd, pfds[i].revents);
		if (pfds[0].revents) {
			drain_signals();
			procs_reap();
		}
		procs_on_deadlines(monotonic_ms());
		if (!port_ready && !port_connected())
			port_check_connected();
	}
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	if (getpid() != 1) {
		/* It mounts, switches root and reboots: never let it loose on a host by accident. */
		static const char msg[] = "cocoon-agent: must run as PID 1 inside a Cocoon VM\n";
		if (write(2, msg, sizeof msg - 1) < 0) {
		}
		return 2;
	}
	struct boot_config cfg;
	boot(&cfg); /* first: it also makes fds 0-2 valid, so later fds never land there */
	signals_init();
	port_init();
	serve();
}
