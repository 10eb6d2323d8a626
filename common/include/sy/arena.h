/* SPDX-License-Identifier: Apache-2.0 */
/** A bump allocator for data that lives as long as one request: allocate freely, release in
 * one go with sy_arena_reset() (h2o's req->pool). The first block is embedded, so a small
 * request allocates nothing from malloc. */
#pragma once

#include <stddef.h>

struct sy_arena_block;

struct sy_arena {
    struct sy_arena_block *blocks; /* extra blocks, newest first */
    char *cur;
    char *end;
    char first[2048];
};

/** Make <a> empty and ready. */
void sy_arena_init(struct sy_arena *a);
/** <n> bytes aligned for any type, valid until the next reset. Aborts on failure. */
void *sy_arena_alloc(struct sy_arena *a, size_t n);
/** A NUL-terminated copy of <s>/<n> in the arena. */
char *sy_arena_strndup(struct sy_arena *a, const char *s, size_t n);
/** Release everything allocated since init; keeps the embedded block. */
void sy_arena_reset(struct sy_arena *a);
