/* cocoon-testapp [port]: a tiny HTTP/1.1 server for tests and benchmarks inside a Cocoon VM.
 *
 *   GET /          200 "hello from cocoon\n"
 *   GET /count     increments an in-memory counter, returns it ("<n>\n")
 *   GET /hostname  the VM's hostname ("<name>\n")
 *   anything else  404
 *
 * Single-threaded poll() loop (blocks when idle), keep-alive and pipelining, request bodies
 * (Content-Length) skipped. Default port 8080, listening on 0.0.0.0. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 128
#define IN_MAX 8192
#define OUT_MAX 1024

struct conn {
	int fd;
	char in[IN_MAX];
	size_t in_len;
	uint64_t body_left; /* request body bytes still to skip */
	char out[OUT_MAX];
	size_t out_len, out_off;
	bool close_after; /* close once `out` is sent */
};

static struct conn conns[MAX_CONNS];
static uint64_t counter;

static void conn_close(struct conn *c)
{
	close(c->fd);
	c->fd = -1;
}

static void respond(struct conn *c, int status, const char *body, bool keep_alive)
{
	const char *reason = status == 200 ? "OK"
			     : status == 404 ? "Not Found"
			     : status == 431 ? "Request Header Fields Too Large"
					     : "Bad Request";
	int n = snprintf(c->out, sizeof c->out,
			 "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
			 "Connection: %s\r\n\r\n%s",
			 status, reason, strlen(body), keep_alive ? "keep-alive" : "close", body);
	c->out_len = n > 0 && (size_t)n < sizeof c->out ? (size_t)n : 0;
	c->out_off = 0;
	c->close_after = !keep_alive;
}

/* Case-insensitive: does the comma-separated header value list contain token? */
static bool has_token(const char *value, size_t len, const char *token)
{
	size_t tlen = strlen(token);
	for (size_t i = 0; i < len;) {
		while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
			i++;
		size_t start = i;
		while (i < len && value[i] != ',' && value[i] != ' ' && value[i] != '\t')
			i++;
		if (i - start == tlen && strncasecmp(value + start, token, tlen) == 0)
			return true;
	}
	return false;
}

/* Handles one complete request head (head_len bytes, ending in \r\n\r\n). */
static void handle_request(struct conn *c, char *head, size_t head_len)
{
	char *line_end = strstr(head, "\r\n");
	char method[16], target[1024], version[16];
	*line_end = '\0';
	if (sscanf(head, "%15s %1023s %15s", method, target, version) != 3 ||
	    strncmp(version, "HTTP/1.", 7) != 0) {
		respond(c, 400, "bad request\n", false);
		return;
	}
	bool http10 = strcmp(version, "HTTP/1.0") == 0;
	bool keep_alive = !http10, bad = false;
	uint64_t content_length = 0;
	for (char *h = line_end + 2; h < head + head_len - 2;) {
		char *end = strstr(h, "\r\n");
		char *colon = memchr(h, ':', (size_t)(end - h));
		if (colon) {
			size_t nlen = (size_t)(colon - h);
			char *v = colon + 1;
			while (*v == ' ' || *v == '\t')
				v++;
			size_t vlen = (size_t)(end - v);
			if (nlen == 10 && strncasecmp(h, "connection", 10) == 0) {
				if (has_token(v, vlen, "close"))
					keep_alive = false;
				else if (has_token(v, vlen, "keep-alive"))
					keep_alive = true;
			} else if (nlen == 14 && strncasecmp(h, "content-length", 14) == 0) {
				char *num_end;
				content_length = strtoull(v, &num_end, 10);
				bad |= num_end == v || (num_end != end && *num_end != ' ');
			} else if (nlen == 17 && strncasecmp(h, "transfer-encoding", 17) == 0) {
				bad = true; /* chunked request bodies are not supported */
			}
		}
		h = end + 2;
	}
	if (bad) {
		respond(c, 400, "bad request\n", false);
		return;
	}
	c->body_left = content_length;

	char body[320];
	char *query = strchr(target, '?');
	if (query)
		*query = '\0';
	int status = 200;
	if (strcmp(method, "GET") != 0) {
		status = 404;
	} else if (strcmp(target, "/") == 0) {
		snprintf(body, sizeof body, "hello from cocoon\n");
	} else if (strcmp(target, "/count") == 0) {
		snprintf(body, sizeof body, "%llu\n", (unsigned long long)++counter);
	} else if (strcmp(target, "/hostname") == 0) {
		char name[256] = "";
		gethostname(name, sizeof name - 1);
		snprintf(body, sizeof body, "%s\n", name);
	} else {
		status = 404;
	}
	if (status == 404)
		snprintf(body, sizeof body, "not found\n");
	respond(c, status, body, keep_alive);
}

/* Sends pending output; false when the connection is done (error or closed after sending). */
static bool flush_out(struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return true;
		if (n <= 0)
			return false;
		c->out_off += (size_t)n;
	}
	c->out_len = c->out_off = 0;
	return !c->close_after;
}

/* Handles buffered requests one at a time while the previous response has been sent. */
static bool process(struct conn *c)
{
	while (c->out_len == 0) {
		if (c->body_left > 0) {
			size_t skip = c->body_left < c->in_len ? (size_t)c->body_left : c->in_len;
			memmove(c->in, c->in + skip, c->in_len - skip);
			c->in_len -= skip;
			c->body_left -= skip;
			if (c->body_left > 0)
				return true;
		}
		c->in[c->in_len] = '\0';
		char *end = strstr(c->in, "\r\n\r\n");
		if (!end) {
			if (c->in_len >= IN_MAX - 1 || strlen(c->in) != c->in_len) {
				respond(c, c->in_len >= IN_MAX - 1 ? 431 : 400, "bad request\n", false);
				return flush_out(c);
			}
			return true;
		}
		size_t head_len = (size_t)(end - c->in) + 4;
		handle_request(c, c->in, head_len);
		memmove(c->in, c->in + head_len, c->in_len - head_len);
		c->in_len -= head_len;
		if (!flush_out(c))
			return false;
	}
	return true;
}

static void on_event(struct conn *c, short revents)
{
	if (revents & POLLOUT) {
		if (!flush_out(c) || (c->out_len == 0 && !process(c))) {
			conn_close(c);
			return;
		}
	}
	if (!(revents & (POLLIN | POLLHUP | POLLERR)) || c->out_len > 0)
		return;
	ssize_t n = recv(c->fd, c->in + c->in_len, IN_MAX - 1 - c->in_len, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		conn_close(c);
		return;
	}
	c->in_len += (size_t)n;
	if (!process(c))
		conn_close(c);
}

int main(int argc, char **argv)
{
	long port = argc > 1 ? strtol(argv[1], NULL, 10) : 8080;
	if (port < 1 || port > 65535) {
		fprintf(stderr, "usage: cocoon-testapp [port]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_ANY);
	if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 128) < 0) {
		perror("cocoon-testapp: listen");
		return 1;
	}
	printf("listening on :%ld\n", port);
	fflush(stdout);

	for (int i = 0; i < MAX_CONNS; i++)
		conns[i].fd = -1;
	static struct pollfd pfds[MAX_CONNS + 1];
	static int owner[MAX_CONNS + 1];
	for (;;) {
		int n = 0, open_conns = 0;
		for (int i = 0; i < MAX_CONNS; i++) {
			if (conns[i].fd < 0)
				continue;
			open_conns++;
			pfds[n] = (struct pollfd){conns[i].fd, conns[i].out_len ? POLLOUT : POLLIN, 0};
			owner[n++] = i;
		}
		int listen_idx = -1;
		if (open_conns < MAX_CONNS) {
			listen_idx = n;
			pfds[n++] = (struct pollfd){ls, POLLIN, 0};
		}
		if (poll(pfds, (nfds_t)n, -1) < 0)
			continue;
		for (int i = 0; i < n; i++)
			if (i != listen_idx && pfds[i].revents)
				on_event(&conns[owner[i]], pfds[i].revents);
		if (listen_idx >= 0 && (pfds[listen_idx].revents & POLLIN)) {
			for (int i = 0; i < MAX_CONNS; i++) {
				if (conns[i].fd >= 0)
					continue;
				int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
				if (fd < 0)
					break;
				memset(&conns[i], 0, sizeof conns[i]);
				conns[i].fd = fd;
			}
		}
	}
}
