/* SPDX-License-Identifier: Apache-2.0 */
/** Small things every file needs: invariants, freeing, branch hints, clocks. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define SY_LIKELY(x)   __builtin_expect(!!(x), 1)
#define SY_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define SY_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SY_MIN(a, b)   ((a) < (b) ? (a) : (b))
#define SY_MAX(a, b)   ((a) > (b) ? (a) : (b))
#define SY_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/** Free <p> and set it to NULL, so a second free or a use after it is a clean NULL. */
#define SY_FREE(p)                                                                                 \
    do {                                                                                           \
        free(p);                                                                                   \
        (p) = NULL;                                                                                \
    } while (0)

/** Abort with the failed expression when an invariant does not hold. Never compiled out. */
#define SY_REQUIRE(x)                                                                              \
    do {                                                                                           \
        if (SY_UNLIKELY(!(x)))                                                                     \
            sy__require_failed(#x, __FILE__, __LINE__);                                            \
    } while (0)

__attribute__((noreturn)) void sy__require_failed(const char *expr, const char *file, int line);

/** malloc/calloc/realloc/strdup that abort on failure: for the data plane, where a failed
 * allocation has no good answer (STYLE.md). */
void *sy_xmalloc(size_t n);
void *sy_xcalloc(size_t n, size_t size);
void *sy_xrealloc(void *p, size_t n);
char *sy_xstrdup(const char *s);
char *sy_xstrndup(const char *s, size_t n);

/** Monotonic clock in nanoseconds. */
static inline uint64_t sy_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/** Monotonic clock in milliseconds. */
static inline uint64_t sy_now_ms(void)
{
    return sy_now_ns() / 1000000u;
}

/** Case-insensitive comparison of a counted string <s>/<n> with a NUL-terminated <lit>. */
bool sy_strcaseeq(const char *s, size_t n, const char *lit);

/** Length (1 to 4) of the well-formed UTF-8 sequence that starts <s>/<n> (<n> > 0), or 0 when
 * it does not start with one (RFC 3629: no overlong forms, no surrogates, nothing above
 * U+10FFFF, no sequence cut short by the end). */
size_t sy_utf8_seq(const char *s, size_t n);

/** Parse a decimal unsigned integer from <s>/<n> into <out>; false on junk or overflow. */
bool sy_parse_u64(const char *s, size_t n, uint64_t *out);
