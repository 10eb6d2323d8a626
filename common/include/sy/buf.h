/* SPDX-License-Identifier: Apache-2.0 */
/** A growable byte buffer. The bytes are always followed by a NUL that is not counted, so a
 * buffer of text can be handed to functions that want a C string. */
#pragma once

#include <stdarg.h>
#include <stddef.h>

struct sy_buf {
    char *data;
    size_t len;
    size_t cap;
};

#define SY_BUF_INIT {NULL, 0, 0}

/** Make room for <extra> more bytes (plus the NUL). Aborts on allocation failure. */
void sy_buf_reserve(struct sy_buf *b, size_t extra);
/** Append <n> bytes of <p> (borrowed). */
void sy_buf_append(struct sy_buf *b, const void *p, size_t n);
/** Append a NUL-terminated string. */
void sy_buf_puts(struct sy_buf *b, const char *s);
/** Append the decimal digits of <v>: printf's work for the hot path, without printf. */
void sy_buf_putu(struct sy_buf *b, unsigned long long v);
/** Append several NUL-terminated strings (borrowed); the list ends with NULL. */
void sy_buf_cat(struct sy_buf *b, ...) __attribute__((sentinel));
/** Append printf-formatted text. */
void sy_buf_printf(struct sy_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sy_buf_vprintf(struct sy_buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/** Append <s>/<n> as a JSON string literal, quotes included. Bytes that are not well-formed
 * UTF-8 become U+FFFD, so the result is valid JSON whatever <s> holds (an upstream's text, a
 * parser's complaint quoting the client's bytes). */
void sy_buf_json_str(struct sy_buf *b, const char *s, size_t n);
/** Append the JSON value <p>/<n> (borrowed), cut out of an untrusted document by a scanner that
 * does not check everything, repaired so that it can go into a document of ours: inside its
 * strings, raw control characters become \u escapes, invalid escapes and lone surrogates
 * U+FFFD; everywhere, bytes that are not well-formed UTF-8 become U+FFFD. A value that needs
 * no repair (the usual case) is copied as it is. */
void sy_buf_json_repair(struct sy_buf *b, const char *p, size_t n);
/** Drop the first <n> bytes, moving the rest down. */
void sy_buf_consume(struct sy_buf *b, size_t n);
/** Forget the contents, keep the memory. */
static inline void sy_buf_reset(struct sy_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}
/** Release the memory; the buffer is empty and reusable afterwards. */
void sy_buf_free(struct sy_buf *b);
/** Take the bytes out of <b> (the caller frees them); <b> is left empty. */
char *sy_buf_steal(struct sy_buf *b, size_t *len);
