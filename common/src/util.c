/* SPDX-License-Identifier: Apache-2.0 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "sy/util.h"

void sy__require_failed(const char *expr, const char *file, int line)
{
    fprintf(stderr, "switchyard: invariant failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

static void *checked(void *p)
{
    if (SY_UNLIKELY(p == NULL)) {
        fputs("switchyard: out of memory\n", stderr);
        abort();
    }
    return p;
}

void *sy_xmalloc(size_t n)
{
    return checked(malloc(n ? n : 1));
}

void *sy_xcalloc(size_t n, size_t size)
{
    return checked(calloc(n ? n : 1, size ? size : 1));
}

void *sy_xrealloc(void *p, size_t n)
{
    return checked(realloc(p, n ? n : 1));
}

char *sy_xstrdup(const char *s)
{
    return checked(strdup(s));
}

char *sy_xstrndup(const char *s, size_t n)
{
    return checked(strndup(s, n));
}

bool sy_strcaseeq(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(s, lit, n) == 0;
}

bool sy_parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

size_t sy_utf8_seq(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned char c = u[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* the range of the second byte */
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    else
        return 0;
    if (n < len || u[1] < lo || u[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((u[i] & 0xc0) != 0x80)
            return 0;
    return len;
}
