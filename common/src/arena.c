/* SPDX-License-Identifier: Apache-2.0 */
#include <string.h>

#include "sy/arena.h"
#include "sy/util.h"

struct sy_arena_block {
    struct sy_arena_block *next;
    size_t size;
    _Alignas(16) char data[];
};

#define ARENA_ALIGN 16

void sy_arena_init(struct sy_arena *a)
{
    a->blocks = NULL;
    a->cur = a->first;
    a->end = a->first + sizeof(a->first);
}

void *sy_arena_alloc(struct sy_arena *a, size_t n)
{
    uintptr_t p = ((uintptr_t)a->cur + ARENA_ALIGN - 1) & ~(uintptr_t)(ARENA_ALIGN - 1);
    /* Compared as "fits in what is left", since p + n can wrap for a huge <n>. */
    if (SY_LIKELY(p <= (uintptr_t)a->end && n <= (uintptr_t)a->end - p)) {
        a->cur = (char *)(p + n);
        return (void *)p;
    }
    SY_REQUIRE(n <= SIZE_MAX - sizeof(struct sy_arena_block) - ARENA_ALIGN);
    size_t size = n > 8192 ? n : 8192;
    struct sy_arena_block *blk = sy_xmalloc(sizeof(*blk) + size);
    blk->size = size;
    blk->next = a->blocks;
    a->blocks = blk;
    if (n > 4096) /* a big one-off: keep the current block for small allocations */
        return blk->data;
    a->cur = blk->data + n;
    a->end = blk->data + size;
    return blk->data;
}

char *sy_arena_strndup(struct sy_arena *a, const char *s, size_t n)
{
    SY_REQUIRE(n < SIZE_MAX);
    char *p = sy_arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void sy_arena_reset(struct sy_arena *a)
{
    while (a->blocks) {
        struct sy_arena_block *next = a->blocks->next;
        free(a->blocks);
        a->blocks = next;
    }
    sy_arena_init(a);
}
