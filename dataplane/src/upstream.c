/* SPDX-License-Identifier: Apache-2.0 */
/** Exchanges: a request written on a connection, its response parsed with llhttp and handed to
 * the caller as it arrives, one timer for every deadline.
 *
 * Re-entrancy rules, because the caller's callbacks may cancel, pause, resume or start a new
 * exchange:
 *  - on_head and on_body run inside llhttp_execute(); the parser callback checks afterwards
 *    whether the exchange was cancelled (then stops the parser and recycles the object) or
 *    paused (then stops the parser where it is and keeps the unparsed bytes in conn->pend).
 *  - on_done is called by finish() once the connection is already pooled or closing and the
 *    exchange is detached from everything; the object is recycled after it returns. Whoever
 *    calls finish() returns at once without touching the exchange or the connection again.
 *  - Failures found while still inside dp_upstream_start() (a refused connect(), a bad CA
 *    file) are reported at the next loop iteration through the timer ("kick"). */

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "sy/log.h"
#include "sy/util.h"

#include "upstream_internal.h"

#define DEFAULT_CONNECT_MS    10000u
#define DEFAULT_FIRST_BYTE_MS 120000u
#define DEFAULT_IDLE_MS       120000u
#define DEFAULT_TOTAL_MS      600000u

/* What feeding response bytes to the parser came to. */
enum feed_result {
    FEED_MORE = 0, /* everything parsed, want more */
    FEED_PAUSED,   /* the exchange paused; the rest is in conn->pend */
    FEED_STOP,     /* the exchange ended or was cancelled: touch nothing */
    FEED_RESULT_MAX,
};

enum hstate {
    H_NONE = 0,
    H_FIELD,
    H_VALUE,
    H_MAX,
};

/* ---- error classes ----------------------------------------------------------------------- */

static const char *const error_upper[DP_UE_MAX] = {[DP_UE_NONE] = "NONE",
#define X(name, safe, status, msg) [DP_UE_##name] = #name,
                                                   DP_UPSTREAM_ERRORS(X)
#undef X
};

static const char *const error_messages[DP_UE_MAX] = {[DP_UE_NONE] = "no error",
#define X(name, safe, status, msg) [DP_UE_##name] = msg,
                                                      DP_UPSTREAM_ERRORS(X)
#undef X
};

static const short error_statuses[DP_UE_MAX] = {[DP_UE_NONE] = 200,
#define X(name, safe, status, msg) [DP_UE_##name] = status,
                                                DP_UPSTREAM_ERRORS(X)
#undef X
};

static const bool error_safe[DP_UE_MAX] = {
#define X(name, safe, status, msg) [DP_UE_##name] = safe,
    DP_UPSTREAM_ERRORS(X)
#undef X
};

/* The X-macro names are upper case; metrics and logs want them lower case. Filled once before
 * main() so that no worker thread ever races on it. */
static char error_names[DP_UE_MAX][32];

__attribute__((constructor)) static void error_names_init(void)
{
    for (int e = 0; e < DP_UE_MAX; e++) {
        const char *s = error_upper[e];
        size_t i = 0;
        for (; s[i] && i + 1 < sizeof(error_names[e]); i++)
            error_names[e][i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] - 'A' + 'a' : s[i]);
        error_names[e][i] = '\0';
    }
}

const char *dp_upstream_error_name(enum dp_upstream_error e)
{
    return (unsigned)e < DP_UE_MAX ? error_names[e] : "unknown";
}

const char *dp_upstream_error_message(enum dp_upstream_error e)
{
    return (unsigned)e < DP_UE_MAX ? error_messages[e] : "unknown upstream error";
}

int dp_upstream_error_status(enum dp_upstream_error e)
{
    return (unsigned)e < DP_UE_MAX ? error_statuses[e] : 502;
}

bool dp_upstream_error_retry_safe(enum dp_upstream_error e)
{
    return (unsigned)e < DP_UE_MAX && error_safe[e];
}

/* ---- exchange objects and the timer ------------------------------------------------------ */

static void timer_cb(uv_timer_t *t);

static struct dp_upstream *exchange_alloc(struct dp_upstream_ctx *ctx)
{
    struct dp_upstream *u;

    if (!dp__list_empty(&ctx->free_u)) {
        u = SY_CONTAINER_OF(ctx->free_u.next, struct dp_upstream, link);
        dp__list_remove(&u->link);
    } else {
        u = sy_xcalloc(1, sizeof(*u));
        u->ctx = ctx;
        uv_timer_init(ctx->loop, &u->timer);
        dp__list_init(&u->link);
        ctx->refs++;
    }
    memset(&u->reset_from, 0, sizeof(*u) - offsetof(struct dp_upstream, reset_from));
    return u;
}

static void exchange_close_cb(uv_handle_t *h)
{
    struct dp_upstream *u = SY_CONTAINER_OF(h, struct dp_upstream, timer);
    struct dp_upstream_ctx *ctx = u->ctx;

    free(u);
    dp__ctx_unref(ctx);
}

void dp__exchange_destroy(struct dp_upstream *u)
{
    dp__list_remove(&u->link);
    uv_close((uv_handle_t *)&u->timer, exchange_close_cb);
}

/* Put <u> back on the free list (or free it if the ctx is closing). It must be detached. */
static void exchange_recycle(struct dp_upstream *u)
{
    uv_timer_stop(&u->timer);
    u->phase = DP__PHASE_FREE;
    if (u->ctx->closing)
        dp__exchange_destroy(u);
    else
        dp__list_push_head(&u->ctx->free_u, &u->link);
}

/* The earliest deadline that applies in <u>'s current state. */
static uint64_t next_deadline(const struct dp_upstream *u)
{
    uint64_t d = u->start_ms + u->total_ms;

    switch (u->phase) {
    case DP__PHASE_QUEUED:
    case DP__PHASE_RESOLVING:
    case DP__PHASE_CONNECTING:
        d = SY_MIN(d, u->connect_deadline);
        break;
    case DP__PHASE_ACTIVE:
        if (u->sent && !u->first_byte)
            d = SY_MIN(d, u->sent_ms + u->first_byte_ms);
        else if (u->first_byte && !u->paused)
            d = SY_MIN(d, u->last_read_ms + u->idle_ms);
        break;
    default:
        break;
    }
    return d;
}

/* Set the timer to the nearest deadline. Reads only move the idle deadline later, so they do
 * not re-arm: the timer fires early and re-arms itself (timer_cb). */
static void arm(struct dp_upstream *u)
{
    uint64_t now = uv_now(u->ctx->loop);
    uint64_t d = u->kick ? now : next_deadline(u);

    uv_timer_start(&u->timer, timer_cb, d > now ? d - now : 0, 0);
}

/* Report <err> at the next loop iteration: for failures found where no callback may run. */
static void fail_later(struct dp_upstream *u, enum dp_upstream_error err, const char *detail)
{
    if (u->pending_err != DP_UE_NONE && u->kick)
        return;
    u->pending_err = err;
    if (detail && detail != u->detail)
        snprintf(u->detail, sizeof(u->detail), "%s", detail);
    else if (!detail)
        u->detail[0] = '\0';
    u->kick = true;
    arm(u);
}

/* Take <u> out of whatever it waits in and give back a slot it holds without a connection. */
static void detach_waits(struct dp_upstream *u)
{
    dp__list_remove(&u->link);
    if (u->has_slot) {
        u->has_slot = false;
        dp__pool_put_slot(u->pool);
    }
}

/* End <u> with <err>: pool or close its connection, call on_done, recycle the object. The
 * caller must not touch <u> or its connection afterwards. */
static void finish(struct dp_upstream *u, enum dp_upstream_error err, const char *detail)
{
    struct dp__conn *c = u->conn;

    uv_timer_stop(&u->timer);
    detach_waits(u);
    u->phase = DP__PHASE_DONE;
    if (c) {
        bool reuse = err == DP_UE_NONE && u->keep_alive && u->sent && !c->writing && !c->unusable &&
                     c->state == DP__CONN_READY && !(c->ssl && dp__tls_write_pending(c));
        u->conn = NULL;
        c->u = NULL;
        if (reuse)
            dp__pool_release(c);
        else
            dp__conn_close(c, NULL);
    }
    if (detail && !detail[0])
        detail = NULL;
    u->in_cb++;
    u->cbs.on_done(u, u->ud, err, detail);
    u->in_cb--;
    exchange_recycle(u);
}

/* Start over on a fresh connection after the reused one was found closed by the provider. */
static void retry(struct dp_upstream *u)
{
    struct dp__conn *c = u->conn;

    sy_log(SY_LOG_DEBUG, "upstream", "msg=\"stale pooled connection, retrying\" origin=%s",
           u->origin->key);
    u->conn = NULL;
    c->u = NULL;
    dp__conn_close(c, u); /* the slot stays with u */
    u->retried = true;
    u->reused = false;
    u->req_queued = false;
    u->sent = false;
    u->first_byte = false;
    u->head_done = false;
    u->head_bytes = 0;
    u->raw_head = 0;
    dp__exchange_open(u);
}

/* True when a failure of <u> before any response byte means a stale keep-alive. */
static bool stale_retry(const struct dp_upstream *u)
{
    return u->reused && !u->retried && !u->first_byte && u->phase == DP__PHASE_ACTIVE;
}

/* ---- response parsing -------------------------------------------------------------------- */

static enum feed_result feed(struct dp__conn *c, const char *data, size_t n);

/* Count <len> bytes against the head limit; -1 (and the error recorded) beyond it. */
static int head_account(struct dp__conn *c, size_t len)
{
    struct dp_upstream *u = c->u;

    u->head_bytes += len;
    if (u->head_bytes > c->ctx->opts.max_head_bytes) {
        u->pending_err = DP_UE_HEAD_TOO_LARGE;
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct dp__conn *c = p->data;

    sy_buf_reset(&c->hbuf);
    c->n_hoffs = 0;
    c->hstate = H_NONE;
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    return head_account(p->data, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct dp__conn *c = p->data;
    struct dp__hoff *h;

    if (c->u->head_done)
        return 0; /* a trailer of a chunked body: not passed on */
    if (c->hstate != H_FIELD) {
        if (head_account(c, 4)) /* ": " and CRLF */
            return -1;
        if (c->n_hoffs == c->cap_hoffs) {
            c->cap_hoffs = c->cap_hoffs ? c->cap_hoffs * 2 : 32;
            c->hoffs = sy_xrealloc(c->hoffs, c->cap_hoffs * sizeof(*c->hoffs));
        }
        h = &c->hoffs[c->n_hoffs++];
        h->name_off = (uint32_t)c->hbuf.len;
        h->name_len = 0;
        h->value_off = 0;
        h->value_len = 0;
        c->hstate = H_FIELD;
    }
    if (head_account(c, len))
        return -1;
    h = &c->hoffs[c->n_hoffs - 1];
    sy_buf_append(&c->hbuf, at, len);
    h->name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct dp__conn *c = p->data;
    struct dp__hoff *h;

    if (c->u->head_done || c->n_hoffs == 0)
        return 0;
    if (head_account(c, len))
        return -1;
    h = &c->hoffs[c->n_hoffs - 1];
    if (c->hstate != H_VALUE) {
        h->value_off = (uint32_t)c->hbuf.len;
        c->hstate = H_VALUE;
    }
    sy_buf_append(&c->hbuf, at, len);
    h->value_len += (uint32_t)len;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct dp__conn *c = p->data;
    struct dp_upstream *u = c->u;
    int status = llhttp_get_status_code(p);

    if (status / 100 == 1) {
        if (status == 101) {
            u->pending_err = DP_UE_PROTOCOL;
            snprintf(u->detail, sizeof(u->detail), "unexpected 101 Switching Protocols");
            return -1;
        }
        u->interim = true; /* 100 Continue, 103 Early Hints: skipped */
        return 0;
    }
    u->head_done = true;
    if (u->cbs.on_head) {
        if (c->cap_hdrs < c->n_hoffs) {
            c->cap_hdrs = c->cap_hoffs;
            c->hdrs = sy_xrealloc(c->hdrs, c->cap_hdrs * sizeof(*c->hdrs));
        }
        for (size_t i = 0; i < c->n_hoffs; i++) {
            const struct dp__hoff *h = &c->hoffs[i];
            c->hdrs[i] = (struct dp_header){
                .name = c->hbuf.data + h->name_off,
                .name_len = h->name_len,
                .value = h->value_len ? c->hbuf.data + h->value_off : "",
                .value_len = h->value_len,
            };
        }
        u->in_cb++;
        u->cbs.on_head(u, u->ud, status, c->n_hoffs ? c->hdrs : NULL, c->n_hoffs);
        u->in_cb--;
        if (u->cancelled) {
            exchange_recycle(u);
            return -1;
        }
    }
    if (u->is_head)
        return 1;
    return u->paused ? HPE_PAUSED : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct dp__conn *c = p->data;
    struct dp_upstream *u = c->u;

    if (u->cbs.on_body && len) {
        u->in_cb++;
        u->cbs.on_body(u, u->ud, at, len);
        u->in_cb--;
        if (u->cancelled) {
            exchange_recycle(u);
            return HPE_USER;
        }
    }
    return u->paused ? HPE_PAUSED : 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct dp__conn *c = p->data;
    struct dp_upstream *u = c->u;

    if (u->interim) {
        u->interim = false;
        return 0;
    }
    u->complete = true;
    u->keep_alive = llhttp_should_keep_alive(p);
    return HPE_PAUSED; /* stop right after this response */
}

void dp__parser_settings_init(llhttp_settings_t *s)
{
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_status = on_status;
    s->on_header_field = on_header_field;
    s->on_header_value = on_header_value;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}

/* The parser failed with <e>: report the recorded cause or a protocol error. */
static void parse_failed(struct dp_upstream *u, llhttp_errno_t e, const char *reason)
{
    if (u->pending_err != DP_UE_NONE) {
        finish(u, u->pending_err, u->detail);
        return;
    }
    snprintf(u->detail, sizeof(u->detail), "%s: %s", llhttp_errno_name(e),
             reason ? reason : "malformed response");
    finish(u, DP_UE_PROTOCOL, u->detail);
}

/* Parse <n> response bytes of <c> (borrowed; kept in conn->pend if the exchange pauses). */
static enum feed_result feed(struct dp__conn *c, const char *data, size_t n)
{
    struct dp_upstream *u = c->u;
    llhttp_errno_t e;

    u->last_read_ms = uv_now(c->ctx->loop);
    if (!u->first_byte) {
        u->first_byte = true;
        arm(u);
    }
    e = llhttp_execute(&c->parser, data, n);
    if (e == HPE_OK) {
        if (!u->head_done) {
            u->raw_head += n; /* bounds what the callbacks do not see, e.g. endless spaces */
            if (u->raw_head > c->ctx->opts.max_head_bytes) {
                finish(u, DP_UE_HEAD_TOO_LARGE, NULL);
                return FEED_STOP;
            }
        }
        return FEED_MORE;
    }
    if (c->u != u)
        return FEED_STOP; /* cancelled from a callback */
    if (e == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        if (!pos || pos < data || pos > data + n)
            pos = data + n;
        if (u->complete) {
            if (pos != data + n)
                c->unusable = true; /* bytes past the response: cannot trust the stream */
            finish(u, DP_UE_NONE, NULL);
            return FEED_STOP;
        }
        c->pend = pos;
        c->pend_len = (size_t)(data + n - pos);
        dp__conn_update_reading(c);
        return FEED_PAUSED;
    }
    parse_failed(u, e, llhttp_get_error_reason(&c->parser));
    return FEED_STOP;
}

/* ---- connection I/O ---------------------------------------------------------------------- */

static void conn_read_start(struct dp__conn *c);

void dp__conn_update_reading(struct dp__conn *c)
{
    struct dp_upstream *u = c->u;
    bool want = c->state != DP__CONN_CLOSING && !(u && u->paused && u->phase == DP__PHASE_ACTIVE);

    if (want == c->reading)
        return;
    if (want) {
        conn_read_start(c);
    } else {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* The request is fully written: the first-byte clock starts. */
static void request_sent(struct dp_upstream *u)
{
    u->sent = true;
    u->sent_ms = uv_now(u->ctx->loop);
    arm(u);
}

/* A write of <u>'s connection failed with <status>. */
static void write_failed(struct dp_upstream *u, int status)
{
    if (u->first_byte) {
        u->conn->unusable = true; /* the response is coming anyway: read it, then close */
        return;
    }
    if (stale_retry(u)) {
        retry(u);
        return;
    }
    snprintf(u->detail, sizeof(u->detail), "%s", uv_strerror(status));
    finish(u, DP_UE_SEND_FAILED, u->detail);
}

void dp__conn_write_cb(uv_write_t *req, int status)
{
    struct dp__conn *c = SY_CONTAINER_OF(req, struct dp__conn, write_req);
    struct dp_upstream *u = c->u;

    c->writing = false;
    if (status == UV_ECANCELED || c->state == DP__CONN_CLOSING)
        return;
    if (!u) {
        if (status < 0)
            dp__conn_close(c, NULL);
        return;
    }
    if (status < 0) {
        if (c->state == DP__CONN_HANDSHAKE) {
            snprintf(u->detail, sizeof(u->detail), "%s", uv_strerror(status));
            finish(u, DP_UE_TLS_HANDSHAKE, u->detail);
            return;
        }
        write_failed(u, status);
        return;
    }
    if (c->ssl) {
        int r = dp__tls_flush(c);
        if (r < 0) {
            write_failed(u, r);
            return;
        }
        if (!c->writing && u->req_queued && !u->sent)
            request_sent(u);
        return;
    }
    request_sent(u);
}

static void send_request(struct dp_upstream *u)
{
    struct dp__conn *c = u->conn;
    int r;

    if (c->ssl) {
        for (unsigned i = 0; i < u->n_req; i++) {
            if (u->req[i].len == 0)
                continue;
            ERR_clear_error();
            /* A memory BIO takes everything: SSL_write never comes back short here. */
            if (SSL_write(c->ssl, u->req[i].base, (int)u->req[i].len) <= 0) {
                dp__tls_error(u->detail, sizeof(u->detail), "SSL_write");
                fail_later(u, DP_UE_SEND_FAILED, u->detail);
                return;
            }
        }
        u->req_queued = true;
        r = dp__tls_flush(c);
    } else {
        /* The caller's buffers go to the kernel as they are: no copy. */
        r = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, u->req, u->n_req, dp__conn_write_cb);
        if (r == 0)
            c->writing = true;
    }
    if (r < 0) {
        snprintf(u->detail, sizeof(u->detail), "%s", uv_strerror(r));
        fail_later(u, DP_UE_SEND_FAILED, u->detail);
        return;
    }
    if (c->ssl && !c->writing)
        request_sent(u); /* nothing left to write (cannot happen with a non-empty request) */
}

void dp__exchange_attach(struct dp_upstream *u, struct dp__conn *c)
{
    u->conn = c;
    c->u = u;
    u->phase = DP__PHASE_ACTIVE;
    u->reused = c->n_exchanges++ > 0;
    llhttp_init(&c->parser, HTTP_RESPONSE, &c->ctx->settings);
    c->parser.data = c;
    c->pend = NULL;
    c->pend_len = 0;
    dp__conn_update_reading(c);
    send_request(u);
    arm(u);
}

/* ---- connecting -------------------------------------------------------------------------- */

static void connect_next(struct dp_upstream *u);

static void handshake_step(struct dp__conn *c)
{
    struct dp_upstream *u = c->u;
    enum dp_upstream_error err = DP_UE_TLS_HANDSHAKE;
    int r = dp__tls_handshake(c, &err, u->detail, sizeof(u->detail));

    if (r < 0) {
        finish(u, err, u->detail);
        return;
    }
    if (r == 0)
        return;
    c->state = DP__CONN_READY;
    dp__exchange_attach(u, c);
}

static void connect_cb(uv_connect_t *req, int status)
{
    struct dp__conn *c = SY_CONTAINER_OF(req, struct dp__conn, connect_req);
    struct dp_upstream *u = c->u;

    if (status == UV_ECANCELED || c->state == DP__CONN_CLOSING || !u)
        return;
    if (status < 0) {
        u->connect_err = status;
        u->conn = NULL;
        c->u = NULL;
        dp__conn_close(c, u);
        connect_next(u);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (!u->origin->tls) {
        c->state = DP__CONN_READY;
        dp__exchange_attach(u, c);
        return;
    }
    c->state = DP__CONN_HANDSHAKE;
    if (dp__tls_start(c, u->origin, u->detail, sizeof(u->detail)) < 0) {
        finish(u, DP_UE_TLS_HANDSHAKE, u->detail);
        return;
    }
    dp__conn_update_reading(c);
    handshake_step(c);
}

/* Connect to the next address of <u>, or report the last failure. */
static void connect_next(struct dp_upstream *u)
{
    while (u->addr_i < u->n_addrs) {
        struct dp__conn *c = dp__conn_new(u);
        int r = uv_tcp_connect(&c->connect_req, &c->tcp, &u->addrs[u->addr_i++].sa, connect_cb);
        if (r == 0) {
            u->phase = DP__PHASE_CONNECTING;
            return;
        }
        u->connect_err = r;
        u->conn = NULL;
        c->u = NULL;
        dp__conn_close(c, u);
    }
    snprintf(u->detail, sizeof(u->detail), "%s", uv_strerror(u->connect_err));
    fail_later(u, u->connect_err == UV_ECONNREFUSED ? DP_UE_CONNECT_REFUSED : DP_UE_CONNECT_FAILED,
               u->detail);
}

void dp__exchange_resolved(struct dp_upstream *u, int err, const union dp__addr *addrs, unsigned n)
{
    uint16_t port = htons(u->origin->port);

    if (err < 0 || n == 0) {
        snprintf(u->detail, sizeof(u->detail), "%s: %s", u->origin->host,
                 err < 0 ? uv_strerror(err) : "no address");
        fail_later(u, DP_UE_DNS, u->detail);
        return;
    }
    u->n_addrs = SY_MIN(n, DP__MAX_ADDRS);
    u->addr_i = 0;
    u->connect_err = UV_ECONNREFUSED;
    for (unsigned i = 0; i < u->n_addrs; i++) {
        u->addrs[i] = addrs[i];
        if (u->addrs[i].sa.sa_family == AF_INET6)
            u->addrs[i].in6.sin6_port = port;
        else
            u->addrs[i].in.sin_port = port;
    }
    connect_next(u);
}

void dp__exchange_open(struct dp_upstream *u)
{
    u->phase = DP__PHASE_RESOLVING;
    u->connect_deadline = uv_now(u->ctx->loop) + u->connect_ms;
    arm(u);
    dp__dns_resolve(u);
}

/* ---- reading ----------------------------------------------------------------------------- */

/* The peer closed (<nread> UV_EOF) or reset the connection of an exchange. */
static void conn_eof(struct dp__conn *c, ssize_t nread)
{
    struct dp_upstream *u = c->u;

    if (c->state == DP__CONN_HANDSHAKE) {
        snprintf(u->detail, sizeof(u->detail), "connection %s during the TLS handshake",
                 nread == UV_EOF ? "closed" : uv_strerror((int)nread));
        finish(u, DP_UE_TLS_HANDSHAKE, u->detail);
        return;
    }
    if (stale_retry(u)) {
        retry(u);
        return;
    }
    if (nread == UV_EOF && u->first_byte) {
        llhttp_finish(&c->parser); /* completes a body that runs until close */
        if (u->complete) {
            c->unusable = true;
            finish(u, DP_UE_NONE, NULL);
            return;
        }
    }
    if (nread == UV_EOF) {
        finish(u, DP_UE_CLOSED, NULL);
        return;
    }
    snprintf(u->detail, sizeof(u->detail), "%s", uv_strerror((int)nread));
    finish(u, DP_UE_RESET, u->detail);
}

/* Pull plaintext out of SSL and parse it, until SSL wants more ciphertext. */
static enum feed_result tls_pull(struct dp__conn *c)
{
    struct dp_upstream *u = c->u;

    for (;;) {
        int n, e;
        if (u->paused) {
            dp__conn_update_reading(c);
            return FEED_PAUSED;
        }
        ERR_clear_error();
        n = SSL_read(c->ssl, c->pbuf, DP__RBUF_SIZE);
        if (n > 0) {
            enum feed_result r = feed(c, c->pbuf, (size_t)n);
            if (r != FEED_MORE)
                return r;
            continue;
        }
        e = SSL_get_error(c->ssl, n);
        if (dp__tls_flush(c) < 0) /* SSL_read may answer, e.g. a key update */
            c->unusable = true;
        if (e == SSL_ERROR_WANT_READ)
            return FEED_MORE;
        if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify */
            conn_eof(c, UV_EOF);
            return FEED_STOP;
        }
        dp__tls_error(u->detail, sizeof(u->detail), "TLS");
        finish(u, u->first_byte ? DP_UE_PROTOCOL : DP_UE_RESET, u->detail);
        return FEED_STOP;
    }
}

/* Bytes or EOF on an idle pooled connection: the provider closed it or misbehaves. A TLS
 * connection may still get a session ticket or a key update, which are kept. */
static void idle_read(struct dp__conn *c, ssize_t nread, const char *data)
{
    if (nread > 0 && c->ssl) {
        char b[1];
        int n;
        BIO_write(c->rbio, data, (int)nread);
        ERR_clear_error();
        n = SSL_read(c->ssl, b, 1);
        if (n <= 0 && SSL_get_error(c->ssl, n) == SSL_ERROR_WANT_READ && dp__tls_flush(c) == 0)
            return;
    }
    dp__conn_close(c, NULL);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct dp__conn *c = SY_CONTAINER_OF(h, struct dp__conn, tcp);

    buf->base = c->rbuf;
    buf->len = sizeof(c->rbuf);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct dp__conn *c = SY_CONTAINER_OF(s, struct dp__conn, tcp);

    if (nread == 0 || c->state == DP__CONN_CLOSING)
        return;
    if (!c->u) {
        idle_read(c, nread, buf->base);
        return;
    }
    if (nread < 0) {
        conn_eof(c, nread);
        return;
    }
    if (!c->ssl) {
        feed(c, buf->base, (size_t)nread);
        return;
    }
    BIO_write(c->rbio, buf->base, (int)nread);
    if (c->state == DP__CONN_HANDSHAKE) {
        handshake_step(c);
        return;
    }
    tls_pull(c);
}

static void conn_read_start(struct dp__conn *c)
{
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0)
        c->reading = true;
}

/* Parse what a pause held back, then read again. */
static void resume_pending(struct dp_upstream *u)
{
    struct dp__conn *c = u->conn;

    if (llhttp_get_errno(&c->parser) == HPE_PAUSED)
        llhttp_resume(&c->parser);
    if (c->pend_len) {
        const char *p = c->pend;
        size_t n = c->pend_len;
        c->pend_len = 0;
        if (feed(c, p, n) != FEED_MORE)
            return;
    }
    if (c->ssl && c->state == DP__CONN_READY && tls_pull(c) != FEED_MORE)
        return;
    dp__conn_update_reading(c);
    arm(u);
}

static void timer_cb(uv_timer_t *t)
{
    struct dp_upstream *u = SY_CONTAINER_OF(t, struct dp_upstream, timer);
    uint64_t now = uv_now(u->ctx->loop);

    if (u->phase == DP__PHASE_FREE || u->phase == DP__PHASE_DONE)
        return;
    if (u->kick) {
        u->kick = false;
        if (u->pending_err != DP_UE_NONE) {
            finish(u, u->pending_err, u->detail);
            return;
        }
        if (u->phase == DP__PHASE_ACTIVE && u->conn && !u->paused) {
            resume_pending(u); /* may end the exchange: return without touching it */
            return;
        }
    }
    if (now >= u->start_ms + u->total_ms) {
        finish(u, DP_UE_TOTAL_TIMEOUT, NULL);
        return;
    }
    switch (u->phase) {
    case DP__PHASE_QUEUED:
        if (now >= u->connect_deadline) {
            finish(u, DP_UE_POOL_FULL, NULL);
            return;
        }
        break;
    case DP__PHASE_RESOLVING:
    case DP__PHASE_CONNECTING:
        if (now >= u->connect_deadline) {
            finish(u, DP_UE_CONNECT_TIMEOUT,
                   u->phase == DP__PHASE_RESOLVING ? "DNS resolution timed out" : NULL);
            return;
        }
        break;
    case DP__PHASE_ACTIVE:
        if (u->sent && !u->first_byte && now >= u->sent_ms + u->first_byte_ms) {
            finish(u, DP_UE_FIRST_BYTE_TIMEOUT, NULL);
            return;
        }
        if (u->first_byte && !u->paused && now >= u->last_read_ms + u->idle_ms) {
            finish(u, DP_UE_IDLE_TIMEOUT, NULL);
            return;
        }
        break;
    default:
        break;
    }
    arm(u);
}

/* ---- the interface ----------------------------------------------------------------------- */

int dp_upstream_start(struct dp_upstream_ctx *ctx, const struct sy_origin *origin,
                      const struct sy_timeouts *timeouts, const uv_buf_t *req, unsigned n_req,
                      const struct dp_upstream_cbs *cbs, void *ud, struct dp_upstream **out)
{
    struct dp_upstream *u;

    if (!ctx || ctx->closing || !origin || !origin->host || !origin->key || !origin->port || !req ||
        n_req == 0 || !cbs || !cbs->on_done || !out)
        return -EINVAL;
    u = exchange_alloc(ctx);
    u->phase = DP__PHASE_QUEUED;
    u->origin = origin;
    u->cbs = *cbs;
    u->ud = ud;
    u->req = req;
    u->n_req = n_req;
    u->connect_ms = timeouts && timeouts->connect_ms ? timeouts->connect_ms : DEFAULT_CONNECT_MS;
    u->first_byte_ms =
        timeouts && timeouts->first_byte_ms ? timeouts->first_byte_ms : DEFAULT_FIRST_BYTE_MS;
    u->idle_ms = timeouts && timeouts->idle_ms ? timeouts->idle_ms : DEFAULT_IDLE_MS;
    u->total_ms = timeouts && timeouts->total_ms ? timeouts->total_ms : DEFAULT_TOTAL_MS;
    u->start_ms = uv_now(ctx->loop);
    u->connect_deadline = u->start_ms + u->connect_ms;
    u->is_head = req[0].len >= 5 && memcmp(req[0].base, "HEAD ", 5) == 0;
    u->pool = dp__pool_get(ctx, origin);
    *out = u;
    dp__pool_acquire(u);
    if (u->phase == DP__PHASE_QUEUED)
        arm(u); /* the other phases armed the timer when they began */
    return 0;
}

void dp_upstream_cancel(struct dp_upstream *u)
{
    struct dp__conn *c;

    if (!u || u->phase == DP__PHASE_FREE || u->phase == DP__PHASE_DONE)
        return;
    u->cancelled = true;
    u->phase = DP__PHASE_DONE;
    c = u->conn;
    if (c) {
        u->conn = NULL;
        c->u = NULL;
        dp__conn_close(c, NULL);
    }
    detach_waits(u);
    uv_timer_stop(&u->timer);
    if (u->in_cb == 0)
        exchange_recycle(u); /* else the callback's caller recycles it */
}

void dp_upstream_pause(struct dp_upstream *u)
{
    if (!u || u->phase == DP__PHASE_FREE || u->phase == DP__PHASE_DONE || u->paused)
        return;
    u->paused = true;
    /* Inside a callback the parser stops on return (HPE_PAUSED) and feed() stops reading. */
    if (u->in_cb == 0 && u->conn && u->conn->state == DP__CONN_READY)
        dp__conn_update_reading(u->conn);
}

void dp_upstream_resume(struct dp_upstream *u)
{
    if (!u || u->phase == DP__PHASE_FREE || u->phase == DP__PHASE_DONE || !u->paused)
        return;
    u->paused = false;
    u->last_read_ms = uv_now(u->ctx->loop); /* idleness is counted from here */
    if (u->in_cb > 0 || !u->conn || u->phase != DP__PHASE_ACTIVE)
        return;
    /* Held-back bytes are parsed at the next loop iteration, not inside this call, so the
     * caller never sees on_body or on_done from inside dp_upstream_resume(). */
    u->kick = true;
    arm(u);
}
