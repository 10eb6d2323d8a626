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
