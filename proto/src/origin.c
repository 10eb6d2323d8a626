/* SPDX-License-Identifier: Apache-2.0 */
/* Parsing a deployment's base URL into the origin the upstream pool connects to.
 *
 * Only what a provider base URL needs is accepted: a scheme, a host, an optional port and an
 * optional path. User info, queries and fragments are refused rather than ignored, because a
 * credential or parameter written there would otherwise be dropped without a word. Messages
 * never repeat the URL: it may hold a credential the operator pasted by mistake. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sy/table.h"
#include "sy/util.h"
#include "internal.h"

static bool is_host_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

/* Characters RFC 3986 never allows unescaped in a path, beyond controls and space. */
static bool is_bad_path_char(unsigned char c)
{
    return strchr("\"<>\\^`{|}", c) != NULL;
}

static void lower(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            *s = (char)(*s - 'A' + 'a');
}

void sy_origin_free(struct sy_origin *o)
{
    SY_FREE(o->host);
    SY_FREE(o->host_header);
    SY_FREE(o->path_prefix);
    SY_FREE(o->ca_file);
    SY_FREE(o->key);
    o->insecure = false;
    o->tls = false;
    o->port = 0;
}

/* Split "host[:port]" or "[v6][:port]" in <a>/<n> into a new lowercased host and a port. */
static int parse_authority(const char *a, size_t n, bool tls, char **host, uint16_t *port, bool *v6,
                           char **err)
{
    const char *h = a, *rest;
    size_t hn;

    *v6 = false;
    if (n > 0 && a[0] == '[') {
        const char *close = memchr(a, ']', n);
        if (close == NULL)
            return sy__proto_fail(err, -EINVAL, "IPv6 address has no closing ']'");
        h = a + 1;
        hn = (size_t)(close - h);
        rest = close + 1;
        char tmp[INET6_ADDRSTRLEN + 1];
        struct in6_addr addr;
        if (hn == 0 || hn >= sizeof(tmp))
            return sy__proto_fail(err, -EINVAL, "invalid IPv6 address");
        memcpy(tmp, h, hn);
        tmp[hn] = '\0';
        if (inet_pton(AF_INET6, tmp, &addr) != 1)
            return sy__proto_fail(err, -EINVAL, "invalid IPv6 address");
        *v6 = true;
    } else {
        const char *colon = memchr(a, ':', n);
        hn = colon ? (size_t)(colon - a) : n;
        rest = a + hn;
        if (hn == 0)
            return sy__proto_fail(err, -EINVAL, "missing host");
        for (size_t i = 0; i < hn; i++)
            if (!is_host_char((unsigned char)h[i]))
                return sy__proto_fail(err, -EINVAL, "host contains an invalid character '%c'",
                                      h[i]);
    }

    const char *end = a + n;
    *port = tls ? 443 : 80;
    if (rest < end) {
        uint64_t p;
        if (*rest != ':')
            return sy__proto_fail(err, -EINVAL, "unexpected characters after the IPv6 address");
        rest++;
        if (!sy_parse_u64(rest, (size_t)(end - rest), &p) || p == 0 || p > 65535)
            return sy__proto_fail(err, -EINVAL, "port must be a number from 1 to 65535");
        *port = (uint16_t)p;
    }

    *host = strndup(h, hn);
    if (*host == NULL)
        return sy__proto_fail(err, -ENOMEM, "out of memory");
    lower(*host);
    return 0;
}

int sy_origin_parse(const char *url, struct sy_origin *o, char **err)
{
    const char *p = url;
    char *host = NULL, *host_header = NULL, *path = NULL, *key = NULL;
    uint16_t port = 0;
    bool tls, v6 = false;
    int rc;

    if (*url == '\0')
        return sy__proto_fail(err, -EINVAL, "is empty");
    for (const char *q = url; *q; q++) {
        unsigned char c = (unsigned char)*q;
        if (c <= 0x20 || c >= 0x7f)
            return sy__proto_fail(err, -EINVAL,
                                  "contains a space, control or non-ASCII character at byte %zu",
                                  (size_t)(q - url));
    }
    if (strncasecmp(p, "https://", 8) == 0) {
        tls = true;
        p += 8;
    } else if (strncasecmp(p, "http://", 7) == 0) {
        tls = false;
        p += 7;
    } else {
        return sy__proto_fail(err, -EINVAL, "scheme must be http or https");
    }
    if (strchr(p, '?'))
        return sy__proto_fail(err, -EINVAL, "must not have a query (?...)");
    if (strchr(p, '#'))
        return sy__proto_fail(err, -EINVAL, "must not have a fragment (#...)");

    size_t alen = strcspn(p, "/");
    if (memchr(p, '@', alen))
        return sy__proto_fail(err, -EINVAL,
                              "must not have user info (user:password@); put the credential "
                              "in api_key");
    rc = parse_authority(p, alen, tls, &host, &port, &v6, err);
    if (rc < 0)
        return rc;

    const char *ps = p + alen;
    size_t plen = strlen(ps);
    for (size_t i = 0; i < plen; i++) {
        if (is_bad_path_char((unsigned char)ps[i])) {
            rc = sy__proto_fail(err, -EINVAL, "path contains an invalid character '%c'", ps[i]);
            goto fail;
        }
    }
    while (plen > 0 && ps[plen - 1] == '/')
        plen--;

    bool default_port = port == (tls ? 443 : 80);
    const char *lb = v6 ? "[" : "", *rb = v6 ? "]" : "";
    path = strndup(ps, plen);
    int n1 = default_port ? asprintf(&host_header, "%s%s%s", lb, host, rb)
                          : asprintf(&host_header, "%s%s%s:%u", lb, host, rb, port);
    /* TLS settings only split pools of TLS connections: a plain-HTTP origin ignores them. */
    int n2 = asprintf(&key, "%s://%s%s%s:%u%s%s%s", tls ? "https" : "http", lb, host, rb, port,
                      tls && o->ca_file ? "|ca=" : "", tls && o->ca_file ? o->ca_file : "",
                      tls && o->insecure ? "|insecure" : "");
    if (n1 == -1)
        host_header = NULL;
    if (n2 == -1)
        key = NULL;
    if (path == NULL || host_header == NULL || key == NULL) {
        rc = sy__proto_fail(err, -ENOMEM, "out of memory");
        goto fail;
    }

    free(o->host);
    free(o->host_header);
    free(o->path_prefix);
    free(o->key);
    o->tls = tls;
    o->port = port;
    o->host = host;
    o->host_header = host_header;
    o->path_prefix = path;
    o->key = key;
    return 0;

fail:
    free(host);
    free(host_header);
    free(path);
    free(key);
    return rc;
}
