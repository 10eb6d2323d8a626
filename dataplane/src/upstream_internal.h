/* SPDX-License-Identifier: Apache-2.0 */
/** What the upstream client's files share: upstream.c (exchanges, HTTP parsing, I/O), pool.c
 * (client state, per-origin pools, connections), dns.c (resolver cache) and tls.c (OpenSSL
 * through memory BIOs).
 *
 * Ownership in one paragraph: the ctx owns pools, DNS entries, TLS contexts and a free list of
 * exchange objects. A pool owns its idle connections; a busy connection is owned by the
 * exchange attached to it. Every libuv handle is embedded in its owner, and the owner is freed
 * only in the handle's close callback; ctx->refs counts those owners (and resolver requests in
 * flight) so that dp_upstream_ctx_close() frees the ctx only when the last one is gone. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <llhttp.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "sy/buf.h"
#include "sy/util.h"

#include "upstream.h"

/* ---- intrusive circular lists ------------------------------------------------------------ */

struct dp__list {
    struct dp__list *prev;
    struct dp__list *next;
};

static inline void dp__list_init(struct dp__list *l)
{
    l->prev = l;
    l->next = l;
}

static inline bool dp__list_empty(const struct dp__list *l)
{
    return l->next == l;
}

/** True when <e> (initialised with dp__list_init) is in some list. */
static inline bool dp__list_linked(const struct dp__list *e)
{
    return e->next != e;
}

static inline void dp__list_insert_after(struct dp__list *at, struct dp__list *e)
{
    e->prev = at;
    e->next = at->next;
    at->next->prev = e;
    at->next = e;
}

/** Insert <e> first in <h>. */
static inline void dp__list_push_head(struct dp__list *h, struct dp__list *e)
{
    dp__list_insert_after(h, e);
}

/** Insert <e> last in <h>. */
static inline void dp__list_push_tail(struct dp__list *h, struct dp__list *e)
{
    dp__list_insert_after(h->prev, e);
}

/** Unlink <e>; it is left self-linked, so removing it twice is harmless. */
static inline void dp__list_remove(struct dp__list *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    dp__list_init(e);
}

/* ---- shared types ------------------------------------------------------------------------ */

/** A socket address of either family, with its port. */
union dp__addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/** Addresses of a host tried on connect failure, in resolver order. */
#define DP__MAX_ADDRS 8
/** Read buffer of a connection: ciphertext for TLS, the response itself for plain TCP. */
#define DP__RBUF_SIZE    16384
#define DP__DETAIL_SIZE  256
#define DP__POOL_BUCKETS 64

/** An SSL_CTX for one (ca_file, insecure) pair, shared by every origin that has it. */
struct dp__tls_ctx {
    struct dp__tls_ctx *next;
    char *ca_file; /* NULL: the system store */
    bool insecure;
    SSL_CTX *ssl_ctx;
};

/** A host's resolved addresses, and the exchanges waiting for a lookup in flight. */
struct dp__dns_entry {
    struct dp__dns_entry *next;
    struct dp_upstream_ctx *ctx;
    char *host;
    uv_getaddrinfo_t req; /* a request, not a handle: the entry outlives it (ctx->refs) */
    bool resolving;
    uint64_t expires_ms;   /* loop time after which the addresses are looked up again */
    union dp__addr *addrs; /* port 0: the exchange sets its origin's port */
    unsigned n_addrs;
    struct dp__list waiters; /* struct dp_upstream, by link */
};

/** Every connection to one origin (sy_origin.key): the idle ones and the queue of exchanges
 * waiting for one when all max_conns_per_origin are busy. */
struct dp__pool {
    struct dp__pool *next; /* hash chain */
    struct dp_upstream_ctx *ctx;
    char *key;
    uint32_t hash;
    uint32_t n_conns;        /* open or opening, busy or idle, plus slots reserved by exchanges */
    uint32_t n_idle;         /* in <idle> */
    struct dp__list idle;    /* struct dp__conn by pool_link, most recently used first (LIFO) */
    struct dp__list waiters; /* struct dp_upstream by link, first come first served */
    SSL_SESSION *session;    /* last TLS session the origin gave us, for resumption */
};

enum dp__conn_state {
    DP__CONN_CONNECTING = 0, /* TCP connect in flight */
    DP__CONN_HANDSHAKE,      /* TLS handshake in flight */
    DP__CONN_READY,          /* can carry an exchange */
    DP__CONN_CLOSING,        /* uv_close called; freed in the close callback */
    DP__CONN_STATE_MAX,
};

/** One header's place in dp__conn.hbuf (offsets: the buffer may move as it grows). */
struct dp__hoff {
    uint32_t name_off;
    uint32_t name_len;
    uint32_t value_off;
    uint32_t value_len;
};

/** A TCP (and maybe TLS) connection to an origin. Its parser and buffers serve exchange after
 * exchange, so a pooled exchange allocates nothing. */
struct dp__conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    struct dp_upstream_ctx *ctx;
    struct dp__pool *pool;
    struct dp_upstream *u;     /* the exchange it carries, NULL when idle or closing */
    struct dp__list pool_link; /* in pool->idle while idle */
    struct dp__list lru_link;  /* in ctx->lru while idle, oldest first */
    uint64_t idle_since_ms;
    enum dp__conn_state state;
    bool writing;  /* write_req in flight */
    bool reading;  /* uv_read_start in force */
    bool unusable; /* saw something that rules out reuse (extra bytes, failed write) */
    uint32_t n_exchanges;

    llhttp_t parser;
    int hstate;             /* which header callback ran last */
    struct sy_buf hbuf;     /* header names and values of the response head */
    struct dp__hoff *hoffs; /* n_hoffs entries into hbuf */
    size_t n_hoffs, cap_hoffs;
    struct dp_header *hdrs; /* built from hoffs for the head callback */
    size_t cap_hdrs;
    const char *pend; /* response bytes not parsed yet because the exchange paused */
    size_t pend_len;

    SSL *ssl;           /* NULL for plain TCP */
    BIO *rbio;          /* ciphertext in; owned by ssl */
    BIO *wbio;          /* ciphertext out; owned by ssl */
    struct sy_buf wbuf; /* ciphertext being written */
    char *pbuf;         /* plaintext out of SSL_read, DP__RBUF_SIZE bytes */
    char rbuf[DP__RBUF_SIZE];
};

enum dp__phase {
    DP__PHASE_FREE = 0,   /* in ctx->free_u */
    DP__PHASE_QUEUED,     /* waiting for a connection of a full pool */
    DP__PHASE_RESOLVING,  /* waiting for DNS */
    DP__PHASE_CONNECTING, /* TCP connect or TLS handshake */
    DP__PHASE_ACTIVE,     /* request and response on a ready connection */
    DP__PHASE_DONE,       /* ended or cancelled; recycled once the callback returns */
    DP__PHASE_MAX,
};

/** One exchange. Objects are recycled through ctx->free_u with their timer initialised, so
 * starting an exchange allocates nothing once the ctx is warm. */
struct dp_upstream {
    uv_timer_t timer; /* the nearest deadline, or 0 for deferred work (kick) */
    struct dp_upstream_ctx *ctx;
    struct dp__list link; /* ctx->free_u, pool->waiters or dns_entry->waiters */

    /* Everything below is zeroed when the object is reused. */
    int reset_from;
    enum dp__phase phase;
    const struct sy_origin *origin;
    struct dp__pool *pool;
    struct dp__conn *conn;
    struct dp_upstream_cbs cbs;
    void *ud;
    const uv_buf_t *req;
    unsigned n_req;
    uint32_t connect_ms, first_byte_ms, idle_ms, total_ms;
    uint64_t start_ms, connect_deadline, sent_ms, last_read_ms;
    int in_cb;     /* > 0 while a user callback runs: cancel defers the recycling */
    bool has_slot; /* counts in pool->n_conns without a connection yet */
    bool kick;     /* the timer was set to fire at once for deferred work */
    bool cancelled;
    bool paused;
    bool retried;    /* the one transparent retry after a stale pooled connection is used */
    bool reused;     /* the connection carried an exchange before this one */
    bool is_head;    /* a HEAD request: the response has no body */
    bool req_queued; /* TLS: the whole request went through SSL_write */
    bool sent;       /* the request is fully written */
    bool first_byte; /* a byte of the response arrived */
    bool head_done;
    bool interim;                       /* parsing a 1xx response */
    bool complete;                      /* the response is complete */
    bool keep_alive;                    /* the response allows reusing the connection */
    enum dp_upstream_error pending_err; /* to report at the next kick, or from a parser callback */
    size_t head_bytes, raw_head;
    int connect_err;
    unsigned n_addrs, addr_i;
    union dp__addr addrs[DP__MAX_ADDRS];
    char detail[DP__DETAIL_SIZE];
};

struct dp_upstream_ctx {
    uv_loop_t *loop;
    struct dp_upstream_pool_opts opts;
    llhttp_settings_t settings;
    struct dp__pool *pools[DP__POOL_BUCKETS];
    struct dp__list free_u; /* recycled exchanges */
    struct dp__list lru;    /* idle connections of every pool, oldest first */
    uv_timer_t idle_timer;  /* closes the oldest idle connection when it expires */
    struct dp__dns_entry *dns;
    struct dp__tls_ctx *tls;
    uint32_t n_open; /* connections not closing */
    uint32_t refs;   /* embedded handles not yet closed and resolver requests in flight */
    bool closing;
};

/* ---- upstream.c -------------------------------------------------------------------------- */

/** Fill <s> with the response parser's callbacks. */
void dp__parser_settings_init(llhttp_settings_t *s);
/** Run exchange <u> on the ready connection <c> (from the pool or just opened): send. */
void dp__exchange_attach(struct dp_upstream *u, struct dp__conn *c);
/** <u> holds a pool slot: resolve its origin and connect. */
void dp__exchange_open(struct dp_upstream *u);
/** The resolver's answer for <u>: <err> (a libuv code) or <n> addresses (borrowed). May be
 * called from inside dp__dns_resolve(). */
void dp__exchange_resolved(struct dp_upstream *u, int err, const union dp__addr *addrs, unsigned n);
/** Read again unless the exchange on <c> is paused. */
void dp__conn_update_reading(struct dp__conn *c);
/** Write completion of <c>'s write_req, plain or TLS. */
void dp__conn_write_cb(uv_write_t *req, int status);
/** Free an exchange object of a closing ctx. */
void dp__exchange_destroy(struct dp_upstream *u);

/* ---- pool.c ------------------------------------------------------------------------------ */

/** The pool of <origin>, created on first use. */
struct dp__pool *dp__pool_get(struct dp_upstream_ctx *ctx, const struct sy_origin *origin);
/** Find <u> a connection: an idle one (unless it retries), a new one if the pool has room, or
 * a place in the queue. Calls no user callback. */
void dp__pool_acquire(struct dp_upstream *u);
/** Give back the slot <u> holds without a connection. */
void dp__pool_put_slot(struct dp__pool *pool);
/** Take back <c> after a complete exchange: hand it to a waiter, keep it idle, or close it. */
void dp__pool_release(struct dp__conn *c);
/** A new connection for <u>, taking the slot <u> holds. */
struct dp__conn *dp__conn_new(struct dp_upstream *u);
/** Close <c> (idempotent). Its slot goes to <heir> if not NULL, else back to the pool. */
void dp__conn_close(struct dp__conn *c, struct dp_upstream *heir);
/** Drop a reference of <ctx>; frees it when closing and the last one goes. */
void dp__ctx_unref(struct dp_upstream_ctx *ctx);

/* ---- dns.c ------------------------------------------------------------------------------- */

/** Resolve <u>'s origin host; answers through dp__exchange_resolved(), now or later. */
void dp__dns_resolve(struct dp_upstream *u);
/** Cancel lookups in flight and drop entries; those in flight are freed by their callback. */
void dp__dns_close(struct dp_upstream_ctx *ctx);
/** True when <host> is a literal IPv4 or IPv6 address; fills <a> (port 0) if not NULL. */
bool dp__addr_literal(const char *host, union dp__addr *a);

/* ---- tls.c ------------------------------------------------------------------------------- */

/** Set up TLS on the connected <c> for <origin> and send the ClientHello. On failure returns a
 * negative code with a reason in <detail>. */
int dp__tls_start(struct dp__conn *c, const struct sy_origin *origin, char *detail, size_t n);
/** Advance the handshake of <c>: 1 done, 0 waiting for bytes, or -1 with *<err> and <detail>
 * set (TLS_VERIFY with the X509 reason, or TLS_HANDSHAKE). */
int dp__tls_handshake(struct dp__conn *c, enum dp_upstream_error *err, char *detail, size_t n);
/** Write the ciphertext waiting in <c>'s wbio unless a write is in flight. 0 or a libuv code. */
int dp__tls_flush(struct dp__conn *c);
/** True when <c> has ciphertext still to write. */
bool dp__tls_write_pending(const struct dp__conn *c);
/** The last OpenSSL error as text in <detail>, prefixed by <what>; clears the error queue. */
void dp__tls_error(char *detail, size_t n, const char *what);
/** Free <c>'s SSL, if any, keeping the origin's cached session resumable. */
void dp__tls_free(struct dp__conn *c);
/** Free every SSL_CTX of <ctx>. */
void dp__tls_ctx_free_all(struct dp_upstream_ctx *ctx);
