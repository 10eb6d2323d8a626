/* SPDX-License-Identifier: Apache-2.0 */
#include <stdio.h>
#include <string.h>

#include "sy/buf.h"
#include "sy/util.h"

void sy_buf_reserve(struct sy_buf *b, size_t extra)
{
    SY_REQUIRE(extra < SIZE_MAX / 2 - b->len); /* a length this large is a bug, not data */
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = sy_xrealloc(b->data, cap);
    b->cap = cap;
    b->data[b->len] = '\0'; /* a fresh buffer is "" too, not garbage */
}

void sy_buf_append(struct sy_buf *b, const void *p, size_t n)
{
    sy_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void sy_buf_puts(struct sy_buf *b, const char *s)
{
    sy_buf_append(b, s, strlen(s));
}

void sy_buf_putu(struct sy_buf *b, unsigned long long v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    sy_buf_append(b, tmp + i, sizeof(tmp) - i);
}

void sy_buf_cat(struct sy_buf *b, ...)
{
    va_list ap;
    va_start(ap, b);
    for (const char *s = va_arg(ap, const char *); s; s = va_arg(ap, const char *))
        sy_buf_append(b, s, strlen(s));
    va_end(ap);
}

/* The format attribute is repeated here so that clang's -Wformat-nonliteral (from -Wformat=2)
 * knows <fmt> is checked at the callers. */
__attribute__((format(printf, 2, 0))) void sy_buf_vprintf(struct sy_buf *b, const char *fmt,
                                                          va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    sy_buf_reserve(b, 64);
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    if (n < 0) {
        va_end(ap2);
        return;
    }
    if ((size_t)n >= b->cap - b->len) {
        sy_buf_reserve(b, (size_t)n);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap2);
    }
    va_end(ap2);
    b->len += (size_t)n;
}

void sy_buf_printf(struct sy_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sy_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void sy_buf_json_str(struct sy_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sy_buf_reserve(b, n + 2);
    b->data[b->len++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            sy_buf_append(b, esc, 2);
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            if (c == '\n')
                sy_buf_append(b, "\\n", 2);
            else if (c == '\r')
                sy_buf_append(b, "\\r", 2);
            else if (c == '\t')
                sy_buf_append(b, "\\t", 2);
            else
                sy_buf_append(b, esc, 6);
        } else {
            sy_buf_append(b, &s[i], 1);
        }
    }
    sy_buf_append(b, "\"", 1);
}

void sy_buf_consume(struct sy_buf *b, size_t n)
{
    if (n >= b->len) {
        sy_buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

void sy_buf_free(struct sy_buf *b)
{
    SY_FREE(b->data);
    b->len = b->cap = 0;
}

char *sy_buf_steal(struct sy_buf *b, size_t *len)
{
    if (b->data == NULL)
        sy_buf_reserve(b, 0);
    char *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
