/*
 * cocoon-egress-relay SOCKET: copies stdin to the unix socket SOCKET and the socket to stdout.
 *
 * A host-side helper, not a guest program. libslirp runs a guestfwd `cmd:` once per guest
 * connection, with the connection as stdin and stdout, after QEMU has chrooted and dropped to its
 * VM's uid: nothing of the host (socat, a libc) exists there. This static binary is copied into
 * the chroot, and the socket it connects to is the build egress listener of that one VM.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUFFER_BYTES 65536

/* One direction of the copy: from `in` to `out`, until `in` ends. */
struct pipe_dir {
	int in;
	int out;
	int open;
};

static int write_all(int fd, const char *data, size_t length)
{
	while (length > 0) {
		ssize_t n = write(fd, data, length);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		data += n;
		length -= (size_t)n;
	}
	return 0;
}

/* Half-closes the writing side so that the peer sees the end of this direction. */
static void end_output(int fd)
{
	if (shutdown(fd, SHUT_WR) < 0 && errno == ENOTSOCK)
		close(fd);
}

/* Moves one buffer; returns 0 while the direction stays open, 1 at its end, -1 on an error. */
static int pump(struct pipe_dir *dir, char *buffer)
{
	ssize_t n = read(dir->in, buffer, BUFFER_BYTES);
	if (n < 0)
		return errno == EINTR || errno == EAGAIN ? 0 : -1;
	if (n == 0) {
		dir->open = 0;
		end_output(dir->out);
		return 1;
	}
	return write_all(dir->out, buffer, (size_t)n) < 0 ? -1 : 0;
}

static int connect_unix(const char *path)
{
	struct sockaddr_un address;
	if (strlen(path) >= sizeof(address.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memset(&address, 0, sizeof(address));
	address.sun_family = AF_UNIX;
	strcpy(address.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	while (connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
		if (errno == EINTR)
			continue;
		close(fd);
		return -1;
	}
	return fd;
}

int main(int argc, char **argv)
{
	static char buffer[BUFFER_BYTES];
	if (argc != 2) {
		fprintf(stderr, "usage: cocoon-egress-relay SOCKET\n");
		return 2;
	}
	/* A peer that went away is an error on write, not a silent death. */
	signal(SIGPIPE, SIG_IGN);
	int sock = connect_unix(argv[1]);
	if (sock < 0) {
		fprintf(stderr, "cocoon-egress-relay: connect %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	struct pipe_dir dirs[2] = {
		{ .in = STDIN_FILENO, .out = sock, .open = 1 },
		{ .in = sock, .out = STDOUT_FILENO, .open = 1 },
	};
	while (dirs[0].open || dirs[1].open) {
		struct pollfd fds[2];
		nfds_t count = 0;
		int which[2];
		for (int i = 0; i < 2; i++) {
			if (!dirs[i].open)
				continue;
			fds[count].fd = dirs[i].in;
			fds[count].events = POLLIN;
			fds[count].revents = 0;
			which[count++] = i;
		}
		if (poll(fds, count, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		for (nfds_t k = 0; k < count; k++) {
			if (fds[k].revents & (POLLIN | POLLHUP | POLLERR)) {
				if (pump(&dirs[which[k]], buffer) < 0)
					return 1;
			}
		}
	}
	return 0;
}
