/* SPDX-License-Identifier: Apache-2.0 */
/** The client state and its per-origin connection pools: idle keep-alive connections reused
 * last-in first-out (the warmest socket, the likeliest to still be open), a cap on connections
 * per origin with a first-come first-served queue above it, and one timer that closes idle
 * connections as they expire, oldest first. */

#include <string.h>

#include "sy/log.h"
#include "sy/util.h"

#include "upstream_internal.h"

#define DEFAULT_MAX_IDLE       64u
#define DEFAULT_MAX_CONNS      1024u
#define DEFAULT_IDLE_EXPIRY_MS 60000u
#define DEFAULT_DNS_TTL_MS     30000u
#define DEFAULT_MAX_HEAD       65536u

/* ---- the ctx ----------------------------------------------------------------------------- */

struct dp_upstream_ctx *dp_upstream_ctx_new(uv_loop_t *loop, const struct dp_upstream_pool_opts *o)
{
    struct dp_upstream_ctx *ctx = sy_xcalloc(1, sizeof(*ctx));

    ctx->loop = loop;
    if (o)
        ctx->opts = *o;
    if (!ctx->opts.max_idle_per_origin)
        ctx->opts.max_idle_per_origin = DEFAULT_MAX_IDLE;
    if (!ctx->opts.max_conns_per_origin)
        ctx->opts.max_conns_per_origin = DEFAULT_MAX_CONNS;
    if (!ctx->opts.idle_expiry_ms)
        ctx->opts.idle_expiry_ms = DEFAULT_IDLE_EXPIRY_MS;
    if (!ctx->opts.dns_ttl_ms)
        ctx->opts.dns_ttl_ms = DEFAULT_DNS_TTL_MS;
    if (!ctx->opts.max_head_bytes)
        ctx->opts.max_head_bytes = DEFAULT_MAX_HEAD;
    dp__parser_settings_init(&ctx->settings);
    dp__list_init(&ctx->free_u);
    dp__list_init(&ctx->lru);
    uv_timer_init(loop, &ctx->idle_timer);
    ctx->refs = 1; /* the idle timer */
    return ctx;
}

static void ctx_free(struct dp_upstream_ctx *ctx)
{
    for (size_t i = 0; i < DP__POOL_BUCKETS; i++) {
        struct dp__pool *p = ctx->pools[i];
        while (p) {
            struct dp__pool *next = p->next;
            if (p->session)
                SSL_SESSION_free(p->session);
            free(p->key);
            free(p);
            p = next;
        }
    }
    dp__tls_ctx_free_all(ctx);
    free(ctx);
}

void dp__ctx_unref(struct dp_upstream_ctx *ctx)
{
    SY_REQUIRE(ctx->refs > 0);
    if (--ctx->refs == 0 && ctx->closing)
        ctx_free(ctx);
}

static void idle_timer_close_cb(uv_handle_t *h)
{
    dp__ctx_unref(SY_CONTAINER_OF(h, struct dp_upstream_ctx, idle_timer));
}

void dp_upstream_ctx_close(struct dp_upstream_ctx *ctx)
{
    if (!ctx || ctx->closing)
        return;
    ctx->closing = true;
    while (!dp__list_empty(&ctx->lru))
        dp__conn_close(SY_CONTAINER_OF(ctx->lru.next, struct dp__conn, lru_link), NULL);
    while (!dp__list_empty(&ctx->free_u))
        dp__exchange_destroy(SY_CONTAINER_OF(ctx->free_u.next, struct dp_upstream, link));
    dp__dns_close(ctx);
    uv_close((uv_handle_t *)&ctx->idle_timer, idle_timer_close_cb);
}

uint32_t dp_upstream_ctx_open_conns(const struct dp_upstream_ctx *ctx)
{
    return ctx->n_open;
}

/* ---- pools ------------------------------------------------------------------------------- */

static uint32_t hash_key(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

struct dp__pool *dp__pool_get(struct dp_upstream_ctx *ctx, const struct sy_origin *origin)
{
    uint32_t h = hash_key(origin->key);
    struct dp__pool **slot = &ctx->pools[h % DP__POOL_BUCKETS];
    struct dp__pool *p;

    for (p = *slot; p; p = p->next) {
        if (p->hash == h && strcmp(p->key, origin->key) == 0)
            return p;
    }
    p = sy_xcalloc(1, sizeof(*p));
    p->ctx = ctx;
    p->key = sy_xstrdup(origin->key);
    p->hash = h;
    dp__list_init(&p->idle);
    dp__list_init(&p->waiters);
    p->next = *slot;
    *slot = p;
    return p;
}

/* Take <c> out of the idle lists. */
static void unidle(struct dp__conn *c)
{
    if (!dp__list_linked(&c->pool_link))
        return;
    dp__list_remove(&c->pool_link);
    dp__list_remove(&c->lru_link);
    c->pool->n_idle--;
}

static struct dp__conn *pop_idle(struct dp__pool *pool)
{
    struct dp__conn *c;

    if (dp__list_empty(&pool->idle))
        return NULL;
    c = SY_CONTAINER_OF(pool->idle.next, struct dp__conn, pool_link);
    unidle(c);
    return c;
}

/* Give queued exchanges what the pool now has room for. */
static void serve_waiters(struct dp__pool *pool)
{
    struct dp_upstream_ctx *ctx = pool->ctx;

    while (!dp__list_empty(&pool->waiters)) {
        struct dp_upstream *u = SY_CONTAINER_OF(pool->waiters.next, struct dp_upstream, link);
        struct dp__conn *c = pop_idle(pool);
        if (!c && pool->n_conns >= ctx->opts.max_conns_per_origin)
            return;
        dp__list_remove(&u->link);
        if (c) {
            dp__exchange_attach(u, c);
        } else {
            pool->n_conns++;
            u->has_slot = true;
            dp__exchange_open(u);
        }
    }
}

void dp__pool_acquire(struct dp_upstream *u)
{
    struct dp__pool *pool = u->pool;
    struct dp__conn *c;

    if (dp__list_empty(&pool->waiters) && (c = pop_idle(pool))) {
        dp__exchange_attach(u, c);
        return;
    }
    if (dp__list_empty(&pool->waiters) && pool->n_conns < pool->ctx->opts.max_conns_per_origin) {
        pool->n_conns++;
        u->has_slot = true;
        dp__exchange_open(u);
        return;
    }
    u->phase = DP__PHASE_QUEUED;
    dp__list_push_tail(&pool->waiters, &u->link);
}

void dp__pool_put_slot(struct dp__pool *pool)
{
    SY_REQUIRE(pool->n_conns > 0);
    pool->n_conns--;
    serve_waiters(pool);
}

static void idle_timer_cb(uv_timer_t *t)
{
    struct dp_upstream_ctx *ctx = SY_CONTAINER_OF(t, struct dp_upstream_ctx, idle_timer);
    uint64_t now = uv_now(ctx->loop);

    while (!dp__list_empty(&ctx->lru)) {
        struct dp__conn *c = SY_CONTAINER_OF(ctx->lru.next, struct dp__conn, lru_link);
        uint64_t expires = c->idle_since_ms + ctx->opts.idle_expiry_ms;
        if (expires > now) {
            uv_timer_start(&ctx->idle_timer, idle_timer_cb, expires - now, 0);
            return;
        }
        dp__conn_close(c, NULL);
    }
}

void dp__pool_release(struct dp__conn *c)
{
    struct dp__pool *pool = c->pool;
    struct dp_upstream_ctx *ctx = c->ctx;

    if (!dp__list_empty(&pool->waiters)) {
        struct dp_upstream *u = SY_CONTAINER_OF(pool->waiters.next, struct dp_upstream, link);
        dp__list_remove(&u->link);
        dp__exchange_attach(u, c);
        return;
    }
    if (ctx->closing || pool->n_idle >= ctx->opts.max_idle_per_origin) {
        dp__conn_close(c, NULL);
        return;
    }
    c->idle_since_ms = uv_now(ctx->loop);
    c->pend_len = 0;
    dp__list_push_head(&pool->idle, &c->pool_link);
    dp__list_push_tail(&ctx->lru, &c->lru_link);
    pool->n_idle++;
    dp__conn_update_reading(c); /* an idle connection reads to notice the provider closing it */
    if (!uv_is_active((uv_handle_t *)&ctx->idle_timer))
        uv_timer_start(&ctx->idle_timer, idle_timer_cb, ctx->opts.idle_expiry_ms, 0);
}

/* ---- connections ------------------------------------------------------------------------- */

struct dp__conn *dp__conn_new(struct dp_upstream *u)
{
    struct dp_upstream_ctx *ctx = u->ctx;
    struct dp__conn *c = sy_xcalloc(1, sizeof(*c));

    SY_REQUIRE(u->has_slot);
    u->has_slot = false; /* the connection now holds it */
    c->ctx = ctx;
    c->pool = u->pool;
    c->state = DP__CONN_CONNECTING;
    dp__list_init(&c->pool_link);
    dp__list_init(&c->lru_link);
    SY_REQUIRE(uv_tcp_init(ctx->loop, &c->tcp) == 0);
    ctx->refs++;
    ctx->n_open++;
    c->u = u;
    u->conn = c;
    return c;
}

static void conn_close_cb(uv_handle_t *h)
{
    struct dp__conn *c = SY_CONTAINER_OF(h, struct dp__conn, tcp);
    struct dp_upstream_ctx *ctx = c->ctx;

    dp__tls_free(c);
    sy_buf_free(&c->hbuf);
    sy_buf_free(&c->wbuf);
    free(c->hoffs);
    free(c->hdrs);
    free(c->pbuf);
    free(c);
    dp__ctx_unref(ctx);
}

void dp__conn_close(struct dp__conn *c, struct dp_upstream *heir)
{
    struct dp__pool *pool = c->pool;

    if (c->state == DP__CONN_CLOSING)
        return;
    unidle(c);
    c->state = DP__CONN_CLOSING;
    c->u = NULL;
    c->reading = false;
    c->ctx->n_open--;
    uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
    if (heir) {
        heir->has_slot = true;
    } else {
        SY_REQUIRE(pool->n_conns > 0);
        pool->n_conns--;
        serve_waiters(pool);
    }
}
