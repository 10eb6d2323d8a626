/* SPDX-License-Identifier: Apache-2.0 */
/** Host-name resolution off the loop (uv_getaddrinfo runs in libuv's thread pool), with a
 * per-ctx cache kept dns_ttl_ms and one lookup in flight per host however many exchanges want
 * it. Literal addresses never reach the resolver. Failures are not cached. */

#include <string.h>

#include "sy/log.h"
#include "sy/util.h"

#include "upstream_internal.h"

bool dp__addr_literal(const char *host, union dp__addr *a)
{
    union dp__addr tmp;

    if (!a)
        a = &tmp;
    memset(a, 0, sizeof(*a));
    if (uv_inet_pton(AF_INET, host, &a->in.sin_addr) == 0) {
        a->in.sin_family = AF_INET;
        return true;
    }
    if (uv_inet_pton(AF_INET6, host, &a->in6.sin6_addr) == 0) {
        a->in6.sin6_family = AF_INET6;
        return true;
    }
    return false;
}

static struct dp__dns_entry *entry_find(struct dp_upstream_ctx *ctx, const char *host)
{
    for (struct dp__dns_entry *e = ctx->dns; e; e = e->next) {
        if (strcmp(e->host, host) == 0)
            return e;
    }
    return NULL;
}

static void entry_free(struct dp__dns_entry *e)
{
    free(e->addrs);
    free(e->host);
    free(e);
}

/* Keep the addresses of <res> in <e>, in the resolver's order of preference. */
static void entry_store(struct dp__dns_entry *e, const struct addrinfo *res)
{
    unsigned n = 0;

    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6)
            n++;
    }
    e->addrs = sy_xrealloc(e->addrs, (n ? n : 1) * sizeof(*e->addrs));
    e->n_addrs = 0;
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        union dp__addr *a = &e->addrs[e->n_addrs];
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        memset(a, 0, sizeof(*a));
        memcpy(a, ai->ai_addr, SY_MIN((size_t)ai->ai_addrlen, sizeof(*a)));
        e->n_addrs++;
    }
}

static void getaddrinfo_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct dp__dns_entry *e = SY_CONTAINER_OF(req, struct dp__dns_entry, req);
    struct dp_upstream_ctx *ctx = e->ctx;

    e->resolving = false;
    if (ctx->closing) {
        uv_freeaddrinfo(res);
        entry_free(e);
        dp__ctx_unref(ctx);
        return;
    }
    if (status == 0) {
        entry_store(e, res);
        e->expires_ms = uv_now(ctx->loop) + ctx->opts.dns_ttl_ms;
    } else {
        e->n_addrs = 0;
        e->expires_ms = 0;
        sy_log(SY_LOG_WARN, "upstream", "msg=\"DNS lookup failed\" host=%s err=\"%s\"", e->host,
               uv_strerror(status));
    }
    uv_freeaddrinfo(res);
    /* One at a time from the head: an answer may start or cancel other exchanges. */
    while (!dp__list_empty(&e->waiters)) {
        struct dp_upstream *u = SY_CONTAINER_OF(e->waiters.next, struct dp_upstream, link);
        dp__list_remove(&u->link);
        dp__exchange_resolved(u, status, e->addrs, e->n_addrs);
    }
    dp__ctx_unref(ctx);
}

void dp__dns_resolve(struct dp_upstream *u)
{
    struct dp_upstream_ctx *ctx = u->ctx;
    const char *host = u->origin->host;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    union dp__addr lit;
    struct dp__dns_entry *e;
    int r;

    if (dp__addr_literal(host, &lit)) {
        dp__exchange_resolved(u, 0, &lit, 1);
        return;
    }
    e = entry_find(ctx, host);
    if (e && !e->resolving && e->n_addrs && uv_now(ctx->loop) < e->expires_ms) {
        dp__exchange_resolved(u, 0, e->addrs, e->n_addrs);
        return;
    }
    if (!e) {
        e = sy_xcalloc(1, sizeof(*e));
        e->ctx = ctx;
        e->host = sy_xstrdup(host);
        dp__list_init(&e->waiters);
        e->next = ctx->dns;
        ctx->dns = e;
    }
    dp__list_push_tail(&e->waiters, &u->link);
    if (e->resolving)
        return; /* coalesced with the lookup in flight */
    r = uv_getaddrinfo(ctx->loop, &e->req, getaddrinfo_cb, host, NULL, &hints);
    if (r < 0) {
        dp__list_remove(&u->link);
        dp__exchange_resolved(u, r, NULL, 0);
        return;
    }
    e->resolving = true;
    ctx->refs++;
}

void dp__dns_close(struct dp_upstream_ctx *ctx)
{
    struct dp__dns_entry *e = ctx->dns;

    ctx->dns = NULL;
    while (e) {
        struct dp__dns_entry *next = e->next;
        if (e->resolving)
            uv_cancel((uv_req_t *)&e->req); /* its callback frees it, cancelled or not */
        else
            entry_free(e);
        e = next;
    }
}
