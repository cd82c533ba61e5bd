/* Boot step 4: hostname, lo, eth0 and the default route, with plain ioctls (no tools). It runs at
 * boot, or on the ROOT request (cocoon.wait_root=1). */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"

#define IFACE_WAIT_MS 5000

static void ifreq_for(struct ifreq *ifr, const char *ifname)
{
	memset(ifr, 0, sizeof *ifr);
	snprintf(ifr->ifr_name, sizeof ifr->ifr_name, "%s", ifname);
}

static struct sockaddr_in sin_of(in_addr_t addr)
{
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = addr;
	return sin;
}

/* Waits for the interface to exist (virtio_net may still be probing), then sets IFF_UP. */
static int iface_up(int s, const char *ifname)
{
	struct ifreq ifr;
	int64_t deadline = monotonic_ms() + IFACE_WAIT_MS;
	for (;;) {
		ifreq_for(&ifr, ifname);
		if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0)
			break;
		if (errno != ENODEV || monotonic_ms() > deadline) {
			agent_log("%s: %s", ifname, strerror(errno));
			return -1;
		}
		sleep_ms(10);
	}
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
		agent_log("%s: bringing up: %s", ifname, strerror(errno));
		return -1;
	}
	return 0;
}

/* "a.b.c.d/len" (len defaults to 24). */
static int parse_cidr(const char *text, struct in_addr *addr, int *prefix)
{
	char buf[48];
	snprintf(buf, sizeof buf, "%s", text);
	*prefix = 24;
	char *slash = strchr(buf, '/');
	if (slash) {
		*slash = '\0';
		char *end;
		long v = strtol(slash + 1, &end, 10);
		if (slash[1] == '\0' || *end != '\0' || v < 0 || v > 32)
			return -1;
		*prefix = (int)v;
	}
	return inet_pton(AF_INET, buf, addr) == 1 ? 0 : -1;
}

static int set_address(int s, const char *ifname, struct in_addr addr, int prefix)
{
	struct ifreq ifr;
	struct sockaddr_in sin = sin_of(addr.s_addr);
	ifreq_for(&ifr, ifname);
	memcpy(&ifr.ifr_addr, &sin, sizeof sin);
	if (ioctl(s, SIOCSIFADDR, &ifr) < 0) {
		agent_log("%s: set address: %s", ifname, strerror(errno));
		return -1;
	}
	uint32_t mask = prefix == 0 ? 0 : htonl(~0u << (32 - prefix));
	sin = sin_of(mask);
	ifreq_for(&ifr, ifname);
	memcpy(&ifr.ifr_netmask, &sin, sizeof sin);
	if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) {
		agent_log("%s: set netmask: %s", ifname, strerror(errno));
		return -1;
	}
	return 0;
}

static void add_default_route(int s, const char *ifname, struct in_addr gw)
{
	struct rtentry rt;
	memset(&rt, 0, sizeof rt);
	struct sockaddr_in any = sin_of(INADDR_ANY), via = sin_of(gw.s_addr);
	memcpy(&rt.rt_dst, &any, sizeof any);
	memcpy(&rt.rt_genmask, &any, sizeof any);
	memcpy(&rt.rt_gateway, &via, sizeof via);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = (char *)ifname;
	if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST)
		agent_log("default route via %s: %s", inet_ntoa(gw), strerror(errno));
}

const char *net_config_error(const struct boot_config *cfg)
{
	struct in_addr a;
	int prefix;
	if (strcmp(cfg->ip, "off") != 0 && parse_cidr(cfg->ip, &a, &prefix) < 0)
		return "ip must be an IPv4 address/prefix or \"off\"";
	if (cfg->gw[0] && strcmp(cfg->gw, "none") != 0 && inet_pton(AF_INET, cfg->gw, &a) != 1)
		return "gateway must be an IPv4 address or \"none\"";
	return NULL;
}

void net_setup(const struct boot_config *cfg)
{
	if (cfg->hostname[0] && sethostname(cfg->hostname, strlen(cfg->hostname)) < 0)
		agent_log("sethostname: %s", strerror(errno));

	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		agent_log("socket: %s; no network", strerror(errno));
		return;
	}
	/* lo gets 127.0.0.1/8 from the kernel when it comes up. */
	iface_up(s, "lo");

	struct in_addr addr, gw;
	int prefix;
	if (strcmp(cfg->ip, "off") == 0) {
		close(s);
		return;
	}
	if (parse_cidr(cfg->ip, &addr, &prefix) < 0) {
		agent_log("cocoon.ip=%s: not an IPv4 address/prefix; eth0 stays down", cfg->ip);
		close(s);
		return;
	}
	if (iface_up(s, "eth0") == 0 && set_address(s, "eth0", addr, prefix) == 0 && cfg->gw[0] &&
	    strcmp(cfg->gw, "none") != 0) {
		if (inet_pton(AF_INET, cfg->gw, &gw) == 1)
			add_default_route(s, "eth0", gw);
		else
			agent_log("cocoon.gw=%s: not an IPv4 address", cfg->gw);
	}
	close(s);
}
