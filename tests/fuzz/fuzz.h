/* SPDX-License-Identifier: Apache-2.0 */
/** Helpers shared by the libFuzzer targets of tests/fuzz/: an oracle that aborts (so libFuzzer
 * records the input as a crash) and checks that what the code under test produced is JSON. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

/** The code under test broke a promise: print <what> and abort so the input is kept. */
#define FUZZ_CHECK(cond, what)                                                                     \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz check failed at %s:%d: %s (%s)\n", __FILE__, __LINE__, what,     \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/** libFuzzer's entry point, declared for -Wmissing-prototypes. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/** True when <d>/<n> (borrowed) is one JSON value, as a client's JSON parser reads it. */
static inline bool fuzz_is_json(const char *d, size_t n)
{
    json_error_t e;
    json_t *v = json_loadb(d, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!v)
        return false;
    json_decref(v);
    return true;
}

/** Abort with <what> when <d>/<n> is not one JSON value; prints it and jansson's complaint. */
static inline void fuzz_require_json(const char *d, size_t n, const char *what)
{
    json_error_t e;
    json_t *v = json_loadb(d, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!v) {
        fprintf(stderr, "not JSON (%s at %d): %.*s\n", e.text, e.position,
                (int)(n > 2000 ? 2000 : n), d);
        FUZZ_CHECK(false, what);
    }
    json_decref(v);
}

/** A copy of <d>/<n> in a buffer of exactly <n> bytes, so ASan sees any read past its end; the
 * caller frees it. */
static inline char *fuzz_dup(const void *d, size_t n)
{
    char *p = malloc(n ? n : 1);
    if (n)
        __builtin_memcpy(p, d, n);
    return p;
}
