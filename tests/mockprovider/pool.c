/* SPDX-License-Identifier: Apache-2.0 */
/* A bump allocator for one request's JSON, and the jansson hooks that use it.
 *
 * jansson allocates a node per value; parsing a chat request through malloc costs dozens of
 * calls. The hooks send those allocations to the current connection's pool instead, so parsing
 * is pointer bumps and releasing is one reset. Each allocation carries a 16-byte tag saying
 * where it came from, so json_decref() of a malloc'd value (the config) still frees it while a
 * pool value's "free" is a no-op. */
#include <string.h>

#include "internal.h"
#include "sy/util.h"

#define BLOCK_SIZE (16u * 1024)
#define BIG_SIZE   (4u * 1024) /* larger allocations get a block of their own */
#define TAG_SIZE   16

struct mp_pool_block {
    struct mp_pool_block *next;
    size_t size;
    _Alignas(16) char data[];
};

void mp_pool_init(struct mp_pool *p)
{
    memset(p, 0, sizeof(*p));
}

static struct mp_pool_block *block_new(size_t size)
{
    struct mp_pool_block *b = sy_xmalloc(sizeof(*b) + size);
    b->next = NULL;
    b->size = size;
    return b;
}

void *mp_pool_alloc(struct mp_pool *p, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (SY_LIKELY(p->ptr && n <= (size_t)(p->end - p->ptr))) {
        void *r = p->ptr;
        p->ptr += n;
        return r;
    }
    if (n > BIG_SIZE) {
        struct mp_pool_block *b = block_new(n);
        b->next = p->big;
        p->big = b;
        return b->data;
    }
    /* Move to the next kept block, or add one. */
    struct mp_pool_block *b = p->cur ? p->cur->next : p->blocks;
    if (b == NULL) {
        b = block_new(BLOCK_SIZE);
        if (p->cur)
            p->cur->next = b;
        else
            p->blocks = b;
    }
    p->cur = b;
    p->ptr = b->data + n;
    p->end = b->data + b->size;
    return b->data;
}

void mp_pool_reset(struct mp_pool *p)
{
    while (p->big) {
        struct mp_pool_block *next = p->big->next;
        free(p->big);
        p->big = next;
    }
    p->cur = NULL;
    p->ptr = p->end = NULL;
}

void mp_pool_free(struct mp_pool *p)
{
    mp_pool_reset(p);
    while (p->blocks) {
        struct mp_pool_block *next = p->blocks->next;
        free(p->blocks);
        p->blocks = next;
    }
}

/* ---- jansson hooks ------------------------------------------------------------------------ */

enum { TAG_POOL = 0x706f6f6c, TAG_HEAP = 0x68656170 };

static struct mp_pool *json_pool;

static void *json_alloc(size_t n)
{
    char *b;
    uint32_t tag;
    if (json_pool) {
        b = mp_pool_alloc(json_pool, n + TAG_SIZE);
        tag = TAG_POOL;
    } else {
        b = sy_xmalloc(n + TAG_SIZE);
        tag = TAG_HEAP;
    }
    memcpy(b, &tag, sizeof(tag));
    return b + TAG_SIZE;
}

static void json_free(void *ptr)
{
    if (ptr == NULL)
        return;
    char *b = (char *)ptr - TAG_SIZE;
    uint32_t tag;
    memcpy(&tag, b, sizeof(tag));
    SY_REQUIRE(tag == TAG_POOL || tag == TAG_HEAP);
    if (tag == TAG_HEAP)
        free(b);
}

void mp_json_init(void)
{
    json_set_alloc_funcs(json_alloc, json_free);
}

void mp_json_use_pool(struct mp_pool *p)
{
    json_pool = p;
}
