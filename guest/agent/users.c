/* `user` strings -> credentials, read straight from /etc/passwd and /etc/group (no NSS: the agent
 * is static and the root disk's libc is not ours).
 *
 * Rules (as Docker's USER): a name must exist; a numeric uid need not (then gid 0, no
 * supplementary groups). Without an explicit group the primary group comes from passwd and the
 * supplementary groups are those listing the user in /etc/group. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

#define NAME_MAX_ 256

/* Strict decimal id below 2^32-1 (which means "no id" to the kernel). */
static bool parse_id(const char *s, uint32_t *out)
{
	uint64_t v = 0;
	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
		if (v >= 0xffffffffu)
			return false;
	}
	*out = (uint32_t)v;
	return true;
}

/* Splits a colon-separated line in place; returns the number of fields. */
static int split_fields(char *line, char **f, int max)
{
	int n = 0;
	line[strcspn(line, "\r\n")] = '\0';
	while (n < max) {
		f[n++] = line;
		char *c = strchr(line, ':');
		if (!c)
			break;
		*c = '\0';
		line = c + 1;
	}
	return n;
}

/* Finds a passwd entry by name (when name is non-NULL) or by uid. */
static bool find_passwd(const char *name, uint32_t uid, char *name_out, uint32_t *uid_out,
			uint32_t *gid_out)
{
	FILE *f = fopen("/etc/passwd", "re");
	if (!f)
		return false;
	char *line = NULL;
	size_t cap = 0;
	bool found = false;
	while (!found && getline(&line, &cap, f) > 0) {
		char *fld[7];
		uint32_t u, g;
		if (split_fields(line, fld, 7) < 4 || !parse_id(fld[2], &u) || !parse_id(fld[3], &g))
			continue;
		if (name ? strcmp(fld[0], name) == 0 : u == uid) {
			snprintf(name_out, NAME_MAX_, "%s", fld[0]);
			*uid_out = u;
			*gid_out = g;
			found = true;
		}
	}
	free(line);
	fclose(f);
	return found;
}

static void add_group(struct cred *c, gid_t g)
{
	for (int i = 0; i < c->ngroups; i++)
		if (c->groups[i] == g)
			return;
	if (c->ngroups < CRED_GROUPS_MAX)
		c->groups[c->ngroups++] = g;
}

/* Looks a group name up (gid_out set), or, with member set, collects the member's groups. */
static bool scan_groups(const char *group, uint32_t *gid_out, const char *member, struct cred *c)
{
	FILE *f = fopen("/etc/group", "re");
	if (!f)
		return false;
	char *line = NULL;
	size_t cap = 0;
	bool found = false;
	while (!found && getline(&line, &cap, f) > 0) {
		char *fld[4], *save;
		uint32_t g;
		int nf = split_fields(line, fld, 4);
		if (nf < 3 || !parse_id(fld[2], &g))
			continue;
		if (group && strcmp(fld[0], group) == 0) {
			*gid_out = g;
			found = true;
		} else if (member && nf == 4) {
			for (char *m = strtok_r(fld[3], ",", &save); m; m = strtok_r(NULL, ",", &save))
				if (strcmp(m, member) == 0)
					add_group(c, g);
		}
	}
	free(line);
	fclose(f);
	return found;
}

int resolve_user(const char *spec, struct cred *c, char *err, size_t errlen)
{
	char user[NAME_MAX_], name[NAME_MAX_];
	const char *colon = strchr(spec, ':');
	size_t ulen = colon ? (size_t)(colon - spec) : strlen(spec);
	const char *group = colon ? colon + 1 : NULL;
	if (ulen >= sizeof user || (group && (!*group || strlen(group) >= NAME_MAX_))) {
		snprintf(err, errlen, "bad user \"%s\"", spec);
		return -1;
	}
	memcpy(user, spec, ulen);
	user[ulen] = '\0';

	uint32_t uid = 0, gid = 0, pw_uid, pw_gid;
	bool known;
	memset(c, 0, sizeof *c);
	if (ulen == 0 || parse_id(user, &uid)) {
		known = find_passwd(NULL, uid, name, &pw_uid, &pw_gid);
	} else {
		known = find_passwd(user, 0, name, &pw_uid, &pw_gid);
		if (!known) {
			snprintf(err, errlen, "no user \"%s\" in /etc/passwd", user);
			return -1;
		}
		uid = pw_uid;
	}
	if (known)
		gid = pw_gid;

	if (group) {
		if (!parse_id(group, &gid) && !scan_groups(group, &gid, NULL, NULL)) {
			snprintf(err, errlen, "no group \"%s\" in /etc/group", group);
			return -1;
		}
	}
	c->uid = uid;
	c->gid = gid;
	add_group(c, gid);
	if (!group && known)
		scan_groups(NULL, NULL, name, c);
	return 0;
}
