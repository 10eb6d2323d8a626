/* SPDX-License-Identifier: Apache-2.0 */
#include <stdio.h>
#include <string.h>

#include "sy/buf.h"
#include "sy/util.h"

/* U+FFFD, for bytes that are not UTF-8. */
#define REPLACEMENT "\xef\xbf\xbd"

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
        } else if (c < 0x80) {
            sy_buf_append(b, &s[i], 1);
        } else {
            size_t k = sy_utf8_seq(s + i, n - i);
            if (k == 0) {
                sy_buf_append(b, REPLACEMENT, 3);
            } else {
                sy_buf_append(b, s + i, k);
                i += k - 1;
            }
        }
    }
    sy_buf_append(b, "\"", 1);
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The code unit of the escape "\uXXXX" at <p> (6 bytes before <e>), or -1. */
static long u_escape(const char *p, const char *e)
{
    if (e - p < 6 || p[0] != '\\' || p[1] != 'u')
        return -1;
    long u = 0;
    for (int i = 2; i < 6; i++) {
        int h = hex_val(p[i]);
        if (h < 0)
            return -1;
        u = u * 16 + h;
    }
    return u;
}

/* True when <p>/<n> is ASCII with no control character and only simple escapes: nothing to
 * repair. A backslash outside a string is a syntax error either way. */
static bool clean(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\\') {
            /* a \u escape is checked the slow way (surrogates), as is a bad one */
            if (i + 1 == n || p[i + 1] == 'u' || p[i + 1] == '\0' ||
                !strchr("\"\\/bfnrt", p[i + 1]))
                return false;
            i++;
            continue;
        }
        if (c < 0x20 || c >= 0x80)
            return false;
    }
    return true;
}

void sy_buf_json_repair(struct sy_buf *b, const char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (clean(p, n)) {
        sy_buf_append(b, p, n);
        return;
    }
    const char *e = p + n;
    bool in_str = false;
    while (p < e) {
        unsigned char c = (unsigned char)*p;
        if (c >= 0x80) {
            size_t k = sy_utf8_seq(p, (size_t)(e - p));
            if (k == 0) {
                sy_buf_append(b, REPLACEMENT, 3);
                k = 1;
            } else {
                sy_buf_append(b, p, k);
            }
            p += k;
        } else if (!in_str) {
            in_str = c == '"';
            sy_buf_append(b, p++, 1);
        } else if (c == '"') {
            in_str = false;
            sy_buf_append(b, p++, 1);
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            sy_buf_append(b, esc, 6);
            p++;
        } else if (c != '\\') {
            sy_buf_append(b, p++, 1);
        } else if (p + 1 < e && strchr("\"\\/bfnrt", p[1]) && p[1] != '\0') {
            sy_buf_append(b, p, 2);
            p += 2;
        } else {
            long u = u_escape(p, e);
            if (u >= 0xd800 && u <= 0xdbff) {
                long lo = u_escape(p + 6, e);
                if (lo >= 0xdc00 && lo <= 0xdfff) { /* a pair */
                    sy_buf_append(b, p, 12);
                    p += 12;
                } else { /* a high surrogate alone */
                    sy_buf_append(b, "\\ufffd", 6);
                    p += 6;
                }
            } else if (u >= 0xdc00 && u <= 0xdfff) { /* a low surrogate alone */
                sy_buf_append(b, "\\ufffd", 6);
                p += 6;
            } else if (u >= 0) {
                sy_buf_append(b, p, 6);
                p += 6;
            } else {
                /* a broken escape: U+FFFD for the backslash (and the 'u'); what follows is
                 * read as text, so a closing quote after it still closes the string */
                sy_buf_append(b, "\\ufffd", 6);
                p += (p + 1 < e && p[1] == 'u') ? 2 : 1;
            }
        }
    }
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
