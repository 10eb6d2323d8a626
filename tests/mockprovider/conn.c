/* SPDX-License-Identifier: Apache-2.0 */
/* Connections: accept, read, parse with llhttp, TLS through memory BIOs, buffered writes,
 * close.
 *
 * One request is answered at a time. The parser pauses at the end of each message; bytes after
 * it (pipelined requests) wait in c->in until the response ends. Output goes out with one
 * uv_try_write per mp_conn_send(), so each SSE event is its own write; what the kernel does
 * not take waits in c->wbuf, and c->wflight holds the bytes of the one uv_write in flight. The
 * two buffers swap, so a connection allocates nothing once its buffers have grown. */
#include <string.h>

#include <openssl/err.h>

#include "internal.h"
#include "sy/log.h"
#include "sy/util.h"

#define MAX_PENDING_INPUT (2 * MP_MAX_BODY_BYTES)

static struct mp_conn *conns;
static llhttp_settings_t settings;
static char read_buf[64 * 1024]; /* what libuv reads into; one loop per process */
static char tls_plain[64 * 1024];

static void conn_run(struct mp_conn *c);

/* ---- parser callbacks ----------------------------------------------------------------------- */

static int on_message_begin(llhttp_t *p)
{
    struct mp_conn *c = p->data;
    struct mp_request *r = &c->req;
    sy_buf_reset(&r->url);
    sy_buf_reset(&r->head);
    sy_buf_reset(&r->body);
    r->nheaders = 0;
    r->in_value = false;
    r->head_bytes = 0;
    return 0;
}

static int count_head(struct mp_conn *c, size_t n)
{
    c->req.head_bytes += n;
    if (c->req.head_bytes > MP_MAX_HEAD_BYTES) {
        c->bad_status = 431;
        return -1;
    }
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct mp_conn *c = p->data;
    if (count_head(c, n) < 0)
        return -1;
    sy_buf_append(&c->req.url, at, n);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct mp_conn *c = p->data;
    struct mp_request *r = &c->req;
    if (count_head(c, n) < 0)
        return -1;
    if (r->nheaders == 0 || r->in_value) {
        r->in_value = false;
        if (r->nheaders == MP_MAX_HEADERS) {
            c->bad_status = 431;
            return -1;
        }
        struct mp_header *h = &r->headers[r->nheaders++];
        h->name_off = (uint32_t)r->head.len;
        h->name_len = 0;
        h->value_off = (uint32_t)r->head.len;
        h->value_len = 0;
    }
    struct mp_header *h = &r->headers[r->nheaders - 1];
    size_t start = r->head.len;
    sy_buf_append(&r->head, at, n);
    for (size_t i = start; i < r->head.len; i++) {
        char ch = r->head.data[i];
        if (ch >= 'A' && ch <= 'Z')
            r->head.data[i] = (char)(ch + 32);
    }
    h->name_len += (uint32_t)n;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct mp_conn *c = p->data;
    struct mp_request *r = &c->req;
    if (count_head(c, n) < 0)
        return -1;
    if (r->nheaders == 0)
        return 0;
    struct mp_header *h = &r->headers[r->nheaders - 1];
    if (!r->in_value) {
        r->in_value = true;
        h->value_off = (uint32_t)r->head.len;
        h->value_len = 0;
    }
    sy_buf_append(&r->head, at, n);
    h->value_len += (uint32_t)n;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct mp_conn *c = p->data;
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > MP_MAX_BODY_BYTES) {
        c->bad_status = 413; /* say so now rather than wait for a body we will refuse */
        return -1;
    }
    size_t n;
    const char *expect = mp_req_header(c, "expect", &n);
    if (expect && sy_strcaseeq(expect, n, "100-continue"))
        mp_conn_send(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct mp_conn *c = p->data;
    if (c->req.body.len + n > MP_MAX_BODY_BYTES) {
        c->bad_status = 413;
        return -1;
    }
    sy_buf_append(&c->req.body, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct mp_conn *c = p->data;
    c->req.method = (uint8_t)llhttp_get_method(p);
    c->req.keep_alive = llhttp_should_keep_alive(p);
    c->req_ready = true;
    return HPE_PAUSED; /* one request at a time: the rest waits in c->in */
}

const char *mp_req_header(const struct mp_conn *c, const char *name, size_t *len)
{
    const struct mp_request *r = &c->req;
    size_t nl = strlen(name);
    for (unsigned i = 0; i < r->nheaders; i++) {
        const struct mp_header *h = &r->headers[i];
        if (h->name_len == nl && memcmp(r->head.data + h->name_off, name, nl) == 0) {
            *len = h->value_len;
            return r->head.data + h->value_off;
        }
    }
    *len = 0;
    return NULL;
}

/* ---- closing --------------------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    struct mp_conn *c = h->data;
    if (--c->pending_closes > 0)
        return;
    sy_buf_free(&c->in);
    sy_buf_free(&c->wbuf);
    sy_buf_free(&c->wflight);
    sy_buf_free(&c->req.url);
    sy_buf_free(&c->req.head);
    sy_buf_free(&c->req.body);
    sy_buf_free(&c->out);
    sy_buf_free(&c->body);
    mp_pool_free(&c->pool);
    if (c->ssl)
        SSL_free(c->ssl); /* frees both BIOs */
    free(c);
}

void mp_conn_close(struct mp_conn *c, enum mp_close how)
{
    if (c->closing)
        return;
    if (how == MP_CLOSE_FLUSH && mp_conn_backlog(c) > 0) {
        c->close_after_write = true; /* finished by flush() */
        return;
    }
    c->closing = true;
    mp_respond_release(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    mp_stats.connections_open--;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    if (how != MP_CLOSE_RESET || uv_tcp_close_reset(&c->tcp, on_handle_closed) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* The client went away (EOF, reset, failed write). A response cut short by it is "aborted". */
static void peer_gone(struct mp_conn *c)
{
    if (c->closing)
        return;
    if (c->responding && !c->hanging)
        mp_stats.aborted++;
    mp_conn_close(c, MP_CLOSE_NOW);
}

void mp_conn_close_all(void)
{
    while (conns)
        mp_conn_close(conns, MP_CLOSE_NOW);
}

/* ---- writing --------------------------------------------------------------------------------- */

size_t mp_conn_backlog(const struct mp_conn *c)
{
    return c->wbuf.len + (c->writing ? c->wflight.len - c->wflight_off : 0);
}

static void flush(struct mp_conn *c);

static void on_write(uv_write_t *req, int status)
{
    struct mp_conn *c = req->data;
    c->writing = false;
    sy_buf_reset(&c->wflight);
    if (c->closing)
        return;
    if (status < 0) {
        peer_gone(c);
        return;
    }
    flush(c);
}

static void drained(struct mp_conn *c)
{
    if (c->close_after_write) {
        c->close_after_write = false;
        mp_conn_close(c, MP_CLOSE_NOW);
        return;
    }
    if (c->drain_cb) {
        mp_step_cb cb = c->drain_cb;
        c->drain_cb = NULL;
        cb(c);
    }
}

static void flush(struct mp_conn *c)
{
    if (c->closing || c->writing)
        return;
    if (c->wbuf.len == 0) {
        drained(c);
        return;
    }
    uv_buf_t b = uv_buf_init(c->wbuf.data, (unsigned)c->wbuf.len);
    int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (r == (int)c->wbuf.len) {
        sy_buf_reset(&c->wbuf);
        drained(c);
        return;
    }
    if (r < 0 && r != UV_EAGAIN) {
        peer_gone(c);
        return;
    }
    struct sy_buf t = c->wflight;
    c->wflight = c->wbuf;
    c->wbuf = t;
    sy_buf_reset(&c->wbuf);
    c->wflight_off = r > 0 ? (size_t)r : 0;
    b = uv_buf_init(c->wflight.data + c->wflight_off, (unsigned)(c->wflight.len - c->wflight_off));
    c->writing = true;
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        c->writing = false;
        peer_gone(c);
    }
}

/* Move the ciphertext OpenSSL produced into the output buffer and send it. */
static void tls_flush(struct mp_conn *c)
{
    size_t pending = BIO_ctrl_pending(c->wbio);
    if (pending > 0) {
        sy_buf_reserve(&c->wbuf, pending);
        int r = BIO_read(c->wbio, c->wbuf.data + c->wbuf.len, (int)pending);
        if (r > 0)
            c->wbuf.len += (size_t)r;
    }
    flush(c);
}

void mp_conn_send(struct mp_conn *c, const void *p, size_t n)
{
    if (c->closing || n == 0)
        return;
    if (c->ssl) {
        if (SSL_write(c->ssl, p, (int)n) <= 0) {
            mp_conn_close(c, MP_CLOSE_NOW);
            return;
        }
        tls_flush(c);
        return;
    }
    if (!c->writing && c->wbuf.len == 0) {
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (SY_LIKELY(r == (int)n))
            return;
        if (r < 0 && r != UV_EAGAIN) {
            peer_gone(c);
            return;
        }
        if (r > 0) {
            p = (const char *)p + r;
            n -= (size_t)r;
        }
    }
    sy_buf_append(&c->wbuf, p, n);
    flush(c);
}

void mp_conn_on_drain(struct mp_conn *c, mp_step_cb cb)
{
    c->drain_cb = cb;
    if (mp_conn_backlog(c) == 0)
        drained(c);
}

static void on_timer(uv_timer_t *t)
{
    struct mp_conn *c = t->data;
    mp_step_cb cb = c->timer_cb;
    c->timer_cb = NULL;
    if (cb && !c->closing)
        cb(c);
}

void mp_conn_after(struct mp_conn *c, uint64_t ms, mp_step_cb cb)
{
    if (c->closing)
        return;
    c->timer_cb = cb;
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* ---- reading and dispatching ------------------------------------------------------------------
 */

static void bad_request(struct mp_conn *c)
{
    int status = c->bad_status ? c->bad_status : 400;
    const char *msg = status == 431   ? "request head too large"
                      : status == 413 ? "request body too large"
                                      : llhttp_get_error_reason(&c->parser);
    c->req.keep_alive = false;
    c->responding = true;
    sy_buf_reset(&c->body);
    mp_reply_error(MP_API_CHAT, status, msg ? msg : "bad request", &c->body);
    mp_send_json(c, status);
}

/* Parse <n> bytes of <data>; returns how many were consumed (fewer when a request completed).
 * A parse error answers 400/413/431 and closes. */
static size_t parse(struct mp_conn *c, const char *data, size_t n)
{
    llhttp_errno_t e = llhttp_execute(&c->parser, data, n);
    if (SY_LIKELY(e == HPE_OK))
        return n;
    if (e == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        return pos ? (size_t)(pos - data) : n;
    }
    bad_request(c);
    return n;
}

static void dispatch(struct mp_conn *c)
{
    c->req_ready = false;
    llhttp_resume(&c->parser);
    c->responding = true;
    mp_respond(c);
}

/* Answer the requests waiting in c->in, one at a time, until one is still in progress. A
 * response that ends synchronously loops here instead of recursing. */
static void conn_run(struct mp_conn *c)
{
    if (c->in_run)
        return;
    c->in_run = true;
    while (!c->closing && !c->responding && !c->close_after_write) {
        if (!c->req_ready) {
            if (c->in.len == 0)
                break;
            size_t used = parse(c, c->in.data, c->in.len);
            sy_buf_consume(&c->in, used);
            if (!c->req_ready)
                break;
        }
        dispatch(c);
    }
    c->in_run = false;
}

static void feed(struct mp_conn *c, const char *data, size_t n)
{
    if (c->hanging || c->close_after_write || c->closing)
        return; /* nobody will answer these bytes */
    if (c->responding || c->in_run || c->req_ready || c->in.len > 0) {
        if (c->in.len + n > MAX_PENDING_INPUT) {
            mp_conn_close(c, MP_CLOSE_NOW);
            return;
        }
        sy_buf_append(&c->in, data, n);
        conn_run(c);
        return;
    }
    /* Fast path: parse straight from the read buffer, keep only what follows a request. */
    size_t used = parse(c, data, n);
    if (c->closing || c->responding)
        return;
    if (used < n)
        sy_buf_append(&c->in, data + used, n - used);
    conn_run(c);
}

static void tls_read(struct mp_conn *c, const char *data, size_t n)
{
    if (BIO_write(c->rbio, data, (int)n) != (int)n) {
        mp_conn_close(c, MP_CLOSE_NOW);
        return;
    }
    for (;;) {
        int r = SSL_read(c->ssl, tls_plain, sizeof(tls_plain));
        if (r > 0) {
            feed(c, tls_plain, (size_t)r);
            if (c->closing)
                return;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            peer_gone(c);
            return;
        }
        sy_log(SY_LOG_DEBUG, "tls", "handshake or read failed: %d", e);
        ERR_clear_error();
        tls_flush(c); /* the alert, if any */
        mp_conn_close(c, MP_CLOSE_FLUSH);
        return;
    }
    tls_flush(c); /* handshake messages */
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    buf->base = read_buf;
    buf->len = sizeof(read_buf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct mp_conn *c = s->data;
    if (nread < 0) {
        peer_gone(c);
        return;
    }
    if (nread == 0 || c->closing)
        return;
    if (c->ssl)
        tls_read(c, buf->base, (size_t)nread);
    else
        feed(c, buf->base, (size_t)nread);
}

void mp_conn_done(struct mp_conn *c)
{
    if (c->closing)
        return;
    mp_respond_release(c);
    c->responding = false;
    if (!c->req.keep_alive) {
        if (c->ssl && SSL_is_init_finished(c->ssl)) {
            SSL_shutdown(c->ssl);
            tls_flush(c);
        }
        mp_conn_close(c, MP_CLOSE_FLUSH);
        return;
    }
    conn_run(c);
}

/* ---- accepting ------------------------------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) {
        sy_log(SY_LOG_WARN, "accept", "accept failed: %s", uv_strerror(status));
        return;
    }
    struct mp_conn *c = sy_xcalloc(1, sizeof(*c));
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->pending_closes = 2;
    c->next = conns;
    if (conns)
        conns->prev = c;
    conns = c;
    mp_stats.connections_open++;
    mp_stats.connections_total++;
    mp_pool_init(&c->pool);
    mp_fault_clear(&c->fault);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        mp_conn_close(c, MP_CLOSE_NOW);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &settings);
    c->parser.data = c;
    if (mp_tls_enabled())
        c->ssl = mp_tls_new(&c->rbio, &c->wbio);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int mp_conn_listen(uv_stream_t *server)
{
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    return uv_listen(server, 1024, on_connection);
}
