/* The virtio-serial port `cocoon.agent`: discovery, host connection state, frame reading and
 * frame writing.
 *
 * Connection state comes from virtio_console: poll() reports POLLHUP and read() returns 0 while no
 * host is connected. While disconnected the port is not polled (it would be ready at once); the
 * agent gets SIGIO (O_ASYNC) when the host connects, and re-checks on a timer as a fallback. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define PORT_NAME "cocoon.agent"
#define PORT_WAIT_MS 30000
#define MSG_KEEP_CAP (64u << 10) /* larger frame buffers are freed after sending */

static int port_fd = -1;
static char port_dev[300];
static bool connected;
/* After a frame with an impossible length: input is noise until the host reconnects. */
static bool desynced;
static bool sending; /* inside write_all: agent_log must not send LOG frames */

/* The frame being read: 4 length bytes, then a body of `len` bytes. */
static struct {
	uint8_t hdr[4];
	uint32_t hdr_got;
	uint8_t *body;
	uint32_t len, got;
} in;

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* ---------------------------------------------------------------- port lifecycle */

static bool find_port(void)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return false;
	bool found = false;
	struct dirent *e;
	while (!found && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.' || strlen(e->d_name) > 200)
			continue;
		char path[300], name[64];
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t n = read(fd, name, sizeof name - 1);
		close(fd);
		if (n <= 0)
			continue;
		name[n] = '\0';
		name[strcspn(name, "\n")] = '\0';
		if (strcmp(name, PORT_NAME) == 0) {
			snprintf(port_dev, sizeof port_dev, "/dev/%s", e->d_name);
			found = true;
		}
	}
	closedir(d);
	return found;
}

static void set_async(bool on)
{
	int fl = fcntl(port_fd, F_GETFL);
	if (fl >= 0)
		fcntl(port_fd, F_SETFL, on ? fl | O_ASYNC : fl & ~O_ASYNC);
}

/* Opens the port (waiting for its device node to appear); starts disconnected. */
static void port_open(void)
{
	int64_t deadline = monotonic_ms() + PORT_WAIT_MS;
	for (;;) {
		port_fd = open(port_dev, O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
		if (port_fd >= 0)
			break;
		if (monotonic_ms() > deadline)
			agent_fatal("open %s: %s", port_dev, strerror(errno));
		sleep_ms(5);
	}
	connected = false;
	fcntl(port_fd, F_SETOWN, getpid());
	set_async(true);
}

void port_init(void)
{
	int64_t deadline = monotonic_ms() + PORT_WAIT_MS;
	while (!find_port()) {
		if (monotonic_ms() > deadline)
			agent_fatal("no virtio-serial port named %s", PORT_NAME);
		sleep_ms(5);
	}
	port_open();
	struct timespec up;
	clock_gettime(CLOCK_BOOTTIME, &up);
	agent_log("serving on %s (%ld ms after kernel start)", port_dev,
		  (long)up.tv_sec * 1000 + up.tv_nsec / 1000000);
	port_check_connected();
}

static void reset_input(void)
{
	free(in.body);
	memset(&in, 0, sizeof in);
}

/* The host went away: everything it asked for is void; stale input is dropped. */
static void port_disconnected(const char *why)
{
	if (!connected)
		return;
	connected = false;
	desynced = false;
	reset_input();
	uint8_t junk[4096];
	while (read(port_fd, junk, sizeof junk) > 0) {
	}
	set_async(true);
	agent_log("host disconnected (%s)", why);
	procs_forget_connection();
}

/* A frame with an impossible length leaves no way to find the next frame. Reopening the port
 * drops what the guest has buffered; QEMU keeps the host's socket open, so everything read until
 * the host reconnects is discarded (never parsed as frames). */
static void port_reset(void)
{
	port_disconnected("port reset");
	close(port_fd);
	port_open();
	port_check_connected();
	desynced = connected;
}

static void discard_input(void)
{
	uint8_t junk[4096];
	for (;;) {
		ssize_t n = read(port_fd, junk, sizeof junk);
		if (n > 0 || (n < 0 && errno == EINTR))
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		port_disconnected(n == 0 ? "end of file" : strerror(errno));
		return;
	}
}

bool port_connected(void)
{
	return connected;
}

int port_poll_fd(void)
{
	return connected ? port_fd : -1;
}

void port_check_connected(void)
{
	if (connected)
		return;
	/* Arm SIGIO before looking, so a connect right after the look still wakes the loop. */
	set_async(true);
	struct pollfd p = {.fd = port_fd, .events = POLLIN};
	if (poll(&p, 1, 0) < 0 || (p.revents & (POLLHUP | POLLERR | POLLNVAL)))
		return;
	set_async(false);
	reset_input();
	connected = true;
	agent_log("host connected");
}

/* ---------------------------------------------------------------- reading */

/* Returns false when the port is gone for this connection (EOF, error, reset). */
static bool read_some(uint8_t *dst, uint32_t want, uint32_t *got)
{
	for (;;) {
		ssize_t n = read(port_fd, dst, want);
		if (n > 0) {
			*got += (uint32_t)n;
			return true;
		}
		if (n == 0) {
			port_disconnected("end of file");
			return false;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			port_disconnected(strerror(errno));
		return false;
	}
}

void port_on_ready(short revents)
{
	if (!(revents & (POLLIN | POLLHUP | POLLERR)))
		return;
	if (desynced) {
		discard_input();
		return;
	}
	while (connected) {
		if (in.hdr_got < 4) {
			if (!read_some(in.hdr + in.hdr_got, 4 - in.hdr_got, &in.hdr_got))
				return;
			if (in.hdr_got < 4)
				continue;
			in.len = be32(in.hdr);
			if (in.len < FRAME_LEN_MIN || in.len > FRAME_LEN_MAX) {
				agent_log("frame length %u out of range [%u, %u]: reopening the port, "
					  "input ignored until the host reconnects",
					  in.len, FRAME_LEN_MIN, FRAME_LEN_MAX);
				port_reset();
				return;
			}
			in.body = malloc(in.len);
			if (!in.body) {
				agent_log("out of memory for a %u byte frame", in.len);
				port_reset();
				return;
			}
			in.got = 0;
		}
		if (in.got < in.len && !read_some(in.body + in.got, in.len - in.got, &in.got))
			return;
		if (in.got < in.len)
			continue;
		uint8_t *b = in.body;
		uint32_t len = in.len;
		in.body = NULL;
		in.hdr_got = 0;
		handle_frame(be32(b), (uint16_t)(b[4] << 8 | b[5]), (uint16_t)(b[6] << 8 | b[7]), b + 8,
			     len - 8);
		free(b);
	}
}

/* ---------------------------------------------------------------- writing */

static bool write_all(const uint8_t *p, size_t n)
{
	sending = true;
	while (n > 0) {
		ssize_t w = write(port_fd, p, n);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			/* Blocking write, but notice a host that leaves instead of waiting for the next. */
			struct pollfd pf = {.fd = port_fd, .events = POLLOUT};
			if (poll(&pf, 1, -1) < 0 || (pf.revents & POLLOUT) || !(pf.revents & POLLHUP))
				continue;
			errno = EPIPE;
		}
		sending = false;
		port_disconnected(w == 0 ? "short write" : strerror(errno));
		return false;
	}
	sending = false;
	return true;
}

static struct {
	uint8_t *buf;
	size_t len, cap;
	size_t item; /* offset of the open bytes item of msg_reserve */
	bool failed;
} out;

static bool out_grow(size_t extra)
{
	if (out.failed)
		return false;
	if (out.len + extra <= out.cap)
		return true;
	size_t cap = out.cap ? out.cap : 4096;
	while (cap < out.len + extra)
		cap *= 2;
	uint8_t *b = realloc(out.buf, cap);
	if (!b) {
		out.failed = true;
		return false;
	}
	out.buf = b;
	out.cap = cap;
	return true;
}

void msg_begin(uint32_t id, uint16_t type)
{
	out.len = 0;
	out.failed = false;
	if (!out_grow(12))
		return;
	put_be32(out.buf + 4, id);
	out.buf[8] = (uint8_t)(type >> 8);
	out.buf[9] = (uint8_t)type;
	out.buf[10] = out.buf[11] = 0;
	out.len = 12;
}

void msg_bytes(const void *p, size_t n)
{
	if (!out_grow(4 + n))
		return;
	put_be32(out.buf + out.len, (uint32_t)n);
	if (n)
		memcpy(out.buf + out.len + 4, p, n);
	out.len += 4 + n;
}

void msg_u32(uint32_t v)
{
	uint8_t b[4];
	put_be32(b, v);
	msg_bytes(b, 4);
}

void msg_i32(int32_t v)
{
	msg_u32((uint32_t)v);
}

void msg_str(const char *s)
{
	msg_bytes(s, strlen(s));
}

uint8_t *msg_reserve(size_t max)
{
	if (!out_grow(4 + max))
		return NULL;
	out.item = out.len;
	return out.buf + out.len + 4;
}

void msg_commit(size_t n)
{
	if (out.failed)
		return;
	put_be32(out.buf + out.item, (uint32_t)n);
	out.len = out.item + 4 + n;
}

void msg_send(void)
{
	if (out.failed) {
		agent_log("out of memory building a reply");
	} else if (connected) {
		put_be32(out.buf, (uint32_t)(out.len - 4));
		write_all(out.buf, out.len);
	}
	if (out.cap > MSG_KEEP_CAP) {
		free(out.buf);
		out.buf = NULL;
		out.cap = 0;
	}
	out.len = 0;
}

void reply_ok(uint32_t id)
{
	msg_begin(id, MSG_OK);
	msg_send();
}

void reply_error(uint32_t id, const char *code, const char *fmt, ...)
{
	char message[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(message, sizeof message, fmt, ap);
	va_end(ap);
	msg_begin(id, MSG_ERROR);
	msg_str(code);
	msg_str(message);
	msg_send();
}

void port_log(const char *line, size_t len)
{
	/* Its own buffer: a log line may be written while a reply is being built. */
	uint8_t frame[16 + 512];
	if (!connected || sending)
		return;
	if (len > sizeof frame - 16)
		len = sizeof frame - 16;
	put_be32(frame, (uint32_t)(12 + len));
	put_be32(frame + 4, 0);
	frame[8] = 0;
	frame[9] = MSG_LOG;
	frame[10] = frame[11] = 0;
	put_be32(frame + 12, (uint32_t)len);
	memcpy(frame + 16, line, len);
	write_all(frame, 16 + len);
}
