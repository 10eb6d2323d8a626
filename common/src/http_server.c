/* SPDX-License-Identifier: Apache-2.0 */
/** The HTTP/1.1 server (see sy/http_server.h): accept, parse with llhttp, enforce limits and
 * timeouts, hand complete requests to the owner one at a time per connection, write responses.
 *
 * Reading: every connection reads into the worker's one shared buffer and parses in place; only
 * bytes that arrive while a request is being handled (pipelining) are copied aside. Writing:
 * uv_try_write first, and only what the socket did not take is copied into a queued write.
 *
 * TLS (when the server has a sy_tls_server): ciphertext read from the socket goes into the
 * connection's read BIO, SSL_read gives plaintext that takes the very same path as a plaintext
 * connection's bytes; responses go through SSL_write into the write BIO, whose ciphertext is
 * written like any response. A plaintext connection pays one well-predicted branch. */

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "sy/http_server.h"
#include "sy/log.h"
#include "sy/tls_server.h"
#include "sy/util.h"

enum conn_state {
    CONN_IDLE = 0, /* keep-alive: waiting for the first byte of a request */
    CONN_HEAD,     /* reading a request head */
    CONN_BODY,     /* reading a request body */
    CONN_HANDLING, /* request complete, the handler is answering */
    CONN_CLOSING,  /* shutting down; nothing more is parsed */
    CONN_STATE_MAX,
};

enum conn_timer {
    TIMER_NONE = 0,
    TIMER_IDLE,   /* keep-alive idle: close quietly */
    TIMER_HEAD,   /* head not complete in time: 408 */
    TIMER_BODY,   /* body stalled or too slow in all: 408 */
    TIMER_SEND,   /* client reads nothing: close */
    TIMER_LINGER, /* after our FIN, waiting for the client's: close */
    TIMER_MAX,
};

/* Header positions inside the connection's head buffer while it may still move. */
struct hdr_span {
    uint32_t name_off, name_len, value_off, value_len;
};

struct sy_http_conn {
    uv_tcp_t tcp; /* first: the handle's address is the connection's */
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    struct sy_link link;
    struct sy_http_server *srv;
    llhttp_t parser;
    enum conn_state state;
    enum conn_timer timer_kind;
    int closes_pending; /* handles still to be closed before the free */

    struct sy_buf in; /* received, not yet parsed (pipelined requests) */
    size_t in_off;
    bool reading;
    bool processing; /* inside conn_process: don't recurse */

    /* the request being parsed */
    struct sy_buf hbuf; /* target and header bytes */
    struct hdr_span *spans;
    size_t n_spans, cap_spans;
    uint32_t url_len;
    bool in_value;
    size_t head_bytes;
    int err_status; /* set by a callback that refuses the request (413, 431) */
    /* loop time by which the whole body must be in; 0: none */
    uint64_t body_deadline;
    size_t trailer_bytes;
    const char *err_msg;

    struct sy_http_request req;
    bool req_active; /* handed to the handler, not yet ended */

    /* TLS: NULL on a plaintext connection */
    SSL *ssl;
    bool tls_seen; /* the first byte arrived (and was a TLS record) */

    /* writing */
    struct sy_buf out; /* response head scratch */
    unsigned writes_pending;
    size_t write_bytes;
    bool want_drain;
    bool head_pending; /* sy_http_resp_start() formatted the head into <out>, not written yet */
};

/* A queued write owns a copy of the bytes the socket could not take at once. */
struct wreq {
    uv_write_t req;
    struct sy_http_conn *c;
    size_t len;
    char data[];
};

/* Above this many queued bytes a writer is told to hold off (slow client backpressure). */
#define BACKPRESSURE_MARK (16u * 1024)
/* Bytes of pipelined input held before we stop reading the socket. */
#define MAX_BUFFERED_INPUT (256u * 1024)
#define MAX_HEADERS        256
#define LINGER_MS          2000

static llhttp_settings_t parser_settings;

static void conn_close(struct sy_http_conn *c);
static void conn_close_graceful(struct sy_http_conn *c);
static void conn_process(struct sy_http_conn *c);
static void request_finish(struct sy_http_conn *c);
static void conn_read_start(struct sy_http_conn *c);
static int tls_flush(struct sy_http_conn *c);
static void conn_input(struct sy_http_conn *c, const char *d, size_t n);

/* ============================================================================================
 * Small helpers
 * ========================================================================================== */

static void link_insert(struct sy_link *head, struct sy_link *l)
{
    l->next = head->next;
    l->prev = head;
    head->next->prev = l;
    head->next = l;
}

static void link_remove(struct sy_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->next = l->prev = l;
}

static void conn_arm(struct sy_http_conn *c, enum conn_timer kind, uint64_t ms);

static const char *status_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

/* The Date header changes once a second; format it once a second per worker. */
static const char *date_header(struct sy_http_server *srv)
{
    uint64_t now = (uint64_t)time(NULL);
    if (now != srv->date_sec) {
        struct tm tm;
        time_t t = (time_t)now;
        gmtime_r(&t, &tm);
        strftime(srv->date, sizeof(srv->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        srv->date_sec = now;
    }
    return srv->date;
}

const char *sy_http_req_header(const struct sy_http_request *req, const char *name, size_t *len)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct sy_http_header *h = &req->headers[i];
        if (sy_strcaseeq(h->name, h->name_len, name) && n == h->name_len) {
            if (len)
                *len = h->value_len;
            return h->value;
        }
    }
    return NULL;
}

int sy_http_req_peer(const struct sy_http_request *req, char *out, size_t n)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char host[64];
    int r = uv_tcp_getpeername(&req->conn->tcp, (struct sockaddr *)&ss, &len);
    if (r < 0)
        return r;
    if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof(host));
        snprintf(out, n, "[%s]:%u", host, (unsigned)ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    } else {
        uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof(host));
        snprintf(out, n, "%s:%u", host, (unsigned)ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
    return 0;
}

const char *sy_http_req_query(const struct sy_http_request *req, const char *name, size_t *len)
{
    size_t n = strlen(name);
    const char *q = req->query;
    while (q && *q) {
        const char *amp = strchr(q, '&');
        size_t seg = amp ? (size_t)(amp - q) : strlen(q);
        if (seg > n && strncmp(q, name, n) == 0 && q[n] == '=') {
            if (len)
                *len = seg - n - 1;
            return q + n + 1;
        }
        if (seg == n && strncmp(q, name, n) == 0) {
            if (len)
                *len = 0;
            return q + n;
        }
        q = amp ? amp + 1 : NULL;
    }
    return NULL;
}

/* ============================================================================================
 * Writing
 * ========================================================================================== */

static void write_cb(uv_write_t *wr, int status)
{
    struct wreq *q = SY_CONTAINER_OF(wr, struct wreq, req);
    struct sy_http_conn *c = q->c;
    c->writes_pending--;
    c->write_bytes -= q->len;
    free(q);
    if (status < 0) {
        /* The client is gone; whatever was in flight is lost with it. */
        conn_close(c);
        return;
    }
    if (c->state == CONN_CLOSING)
        return;
    if (c->writes_pending == 0) {
        if (c->timer_kind == TIMER_SEND)
            uv_timer_stop(&c->timer), c->timer_kind = TIMER_NONE;
        if (!c->req_active && c->state == CONN_IDLE && c->in.len == c->in_off)
            conn_arm(c, TIMER_IDLE, c->srv->limits.idle_timeout_ms);
    } else if (c->timer_kind == TIMER_SEND) {
        conn_arm(c, TIMER_SEND, c->srv->limits.send_timeout_ms); /* progress: restart the clock */
    }
    if (c->want_drain && c->write_bytes < BACKPRESSURE_MARK / 4 && c->req_active) {
        c->want_drain = false;
        if (c->req.on_drain)
            c->req.on_drain(&c->req);
    }
}

/* Write <bufs> to the socket in order after anything already queued. Returns 1 above the
 * backpressure mark, 0 otherwise, or a negative errno when the connection cannot be written. */
static int raw_write(struct sy_http_conn *c, uv_buf_t *bufs, unsigned n)
{
    if (c->state == CONN_CLOSING && c->closes_pending)
        return -EPIPE;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    size_t done = 0;
    if (c->writes_pending == 0) {
        int r = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
        if (r < 0 && r != UV_EAGAIN)
            return r;
        if (r > 0)
            done = (size_t)r;
        if (done == total)
            return 0;
    }
    struct wreq *q = sy_xmalloc(sizeof(*q) + total - done);
    q->c = c;
    q->len = total - done;
    size_t skip = done, off = 0;
    for (unsigned i = 0; i < n; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(q->data + off, bufs[i].base + skip, len - skip);
        off += len - skip;
        skip = 0;
    }
    uv_buf_t b = uv_buf_init(q->data, (unsigned)q->len);
    int r = uv_write(&q->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
    if (r < 0) {
        free(q);
        return r;
    }
    c->writes_pending++;
    c->write_bytes += q->len;
    if (c->timer_kind != TIMER_SEND && c->timer_kind != TIMER_LINGER)
        conn_arm(c, TIMER_SEND, c->srv->limits.send_timeout_ms);
    if (c->write_bytes > BACKPRESSURE_MARK) {
        c->want_drain = true;
        return 1;
    }
    return 0;
}

static int tls_write(struct sy_http_conn *c, uv_buf_t *bufs, unsigned n);

/* Write <bufs> (borrowed) as raw_write does, through TLS on a TLS connection. */
static int conn_write(struct sy_http_conn *c, uv_buf_t *bufs, unsigned n)
{
    if (__builtin_expect(c->ssl != NULL, 0))
        return tls_write(c, bufs, n);
    return raw_write(c, bufs, n);
}

/* Format the status line and headers into c->out. */
static void format_head(struct sy_http_conn *c, const struct sy_http_resp_head *h)
{
    struct sy_http_request *req = &c->req;
    struct sy_buf *o = &c->out;
    sy_buf_reset(o);
    req->resp_status = (uint16_t)h->status;
    sy_buf_puts(o, "HTTP/1.1 ");
    sy_buf_putu(o, (unsigned)h->status);
    sy_buf_cat(o, " ", status_reason(h->status), "\r\n", date_header(c->srv), NULL);
    if (h->content_type)
        sy_buf_cat(o, "Content-Type: ", h->content_type, "\r\n", NULL);
    if (h->content_length >= 0) {
        sy_buf_puts(o, "Content-Length: ");
        sy_buf_putu(o, (unsigned long long)h->content_length);
        sy_buf_puts(o, "\r\n");
    } else {
        sy_buf_puts(o, "Transfer-Encoding: chunked\r\n");
    }
    if (!req->keep_alive || c->srv->draining)
        sy_buf_puts(o, "Connection: close\r\n");
    else if (c->parser.http_minor == 0)
        sy_buf_puts(o, "Connection: keep-alive\r\n");
    if (req->id[0])
        sy_buf_cat(o, "x-request-id: ", req->id, "\r\n", NULL);
    if (h->extra && h->extra_len)
        sy_buf_append(o, h->extra, h->extra_len);
    sy_buf_puts(o, "\r\n");
}

int sy_http_resp_start(struct sy_http_request *req, const struct sy_http_resp_head *h)
{
    struct sy_http_conn *c = req->conn;
    SY_REQUIRE(!req->resp_started);
    if (c->srv->draining)
        req->keep_alive = false;
    format_head(c, h);
    req->resp_started = true;
    req->resp_chunked = h->content_length < 0;
    /* Kept back to go out with the first body bytes (or the end): one write, not two. */
    c->head_pending = true;
    return 0;
}

/* Write <bufs> (borrowed, at most 4), after the response head if it is still kept back. */
static int write_with_head(struct sy_http_conn *c, uv_buf_t *bufs, unsigned n)
{
    if (!c->head_pending)
        return conn_write(c, bufs, n);
    uv_buf_t all[5];
    SY_REQUIRE(n < SY_ARRAY_LEN(all));
    all[0] = uv_buf_init(c->out.data, (unsigned)c->out.len);
    if (n)
        memcpy(all + 1, bufs, n * sizeof(*bufs));
    c->head_pending = false;
    return conn_write(c, all, n + 1);
}

/* Keep a copy of <n> bytes of response body for the handler, if it asked (req->capture). */
static void capture(struct sy_http_request *req, const char *data, size_t n)
{
    if (!req->capture || !n)
        return;
    req->capture_total += n;
    if (req->capture->len < req->capture_max)
        sy_buf_append(req->capture, data, SY_MIN(n, req->capture_max - req->capture->len));
}

int sy_http_resp_write(struct sy_http_request *req, const char *data, size_t n)
{
    capture(req, data, n);
    struct sy_http_conn *c = req->conn;
    if (n == 0)
        return c->write_bytes > BACKPRESSURE_MARK;
    if (!req->resp_chunked) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
        return write_with_head(c, &b, 1);
    }
    char size[24];
    int sl = snprintf(size, sizeof(size), "%zx\r\n", n);
    uv_buf_t b[3] = {uv_buf_init(size, (unsigned)sl), uv_buf_init((char *)data, (unsigned)n),
                     uv_buf_init("\r\n", 2)};
    return write_with_head(c, b, 3);
}

void sy_http_resp_end_with(struct sy_http_request *req, const char *data, size_t n)
{
    struct sy_http_conn *c = req->conn;
    char size[24];
    uv_buf_t b[4];
    unsigned nb = 0;
    capture(req, data, n);
    if (n && req->resp_chunked) {
        int sl = snprintf(size, sizeof(size), "%zx\r\n", n);
        b[nb++] = uv_buf_init(size, (unsigned)sl);
        b[nb++] = uv_buf_init((char *)data, (unsigned)n);
        b[nb++] = uv_buf_init("\r\n", 2);
    } else if (n) {
        b[nb++] = uv_buf_init((char *)data, (unsigned)n);
    }
    if (req->resp_chunked)
        b[nb++] = uv_buf_init("0\r\n\r\n", 5);
    /* the body, the last chunk and a head still kept back: one write */
    if ((nb || c->head_pending) && write_with_head(c, b, nb) < 0) {
        req->on_abort = NULL; /* the handler is ending the request itself */
        conn_close(c);
        return;
    }
    req->resp_done = true;
    request_finish(c);
}

void sy_http_resp_end(struct sy_http_request *req)
{
    sy_http_resp_end_with(req, NULL, 0);
}

void sy_http_resp_abort(struct sy_http_request *req)
{
    struct sy_http_conn *c = req->conn;
    /* A head kept back still goes out: the client sees a response cut short, not none. */
    if (c->head_pending)
        write_with_head(c, NULL, 0);
    /* Leave the message unfinished: no last chunk, so no client can take it for complete. */
    req->keep_alive = false;
    req->resp_done = true;
    c->req_active = false;
    req->on_abort = NULL;
    request_finish(c);
}

void sy_http_resp_send(struct sy_http_request *req, int status, const char *content_type,
                       const char *extra, const char *body, size_t len)
{
    struct sy_http_conn *c = req->conn;
    struct sy_http_resp_head h = {
        .status = status,
        .content_type = content_type,
        .extra = extra,
        .extra_len = extra ? strlen(extra) : 0,
        .content_length = (int64_t)len,
    };
    if (c->srv->draining)
        req->keep_alive = false;
    format_head(c, &h);
    req->resp_started = true;
    req->resp_chunked = false;
    uv_buf_t b[2] = {uv_buf_init(c->out.data, (unsigned)c->out.len),
                     uv_buf_init((char *)body, (unsigned)len)};
    bool head_only = req->method == HTTP_HEAD;
    if (!head_only)
        capture(req, body, len);
    if (conn_write(c, b, head_only || len == 0 ? 1 : 2) < 0) {
        /* The handler is ending the request itself: no abort call back into it. */
        req->on_abort = NULL;
        conn_close(c);
        return;
    }
    req->resp_done = true;
    request_finish(c);
}

void sy_http_error_json(struct sy_buf *b, const char *type, const char *code, const char *param,
                        const char *msg)
{
    sy_buf_puts(b, "{\"error\":{\"message\":");
    sy_buf_json_str(b, msg, strlen(msg));
    sy_buf_puts(b, ",\"type\":");
    sy_buf_json_str(b, type, strlen(type));
    sy_buf_puts(b, ",\"param\":");
    if (param)
        sy_buf_json_str(b, param, strlen(param));
    else
        sy_buf_puts(b, "null");
    sy_buf_puts(b, ",\"code\":");
    if (code)
        sy_buf_json_str(b, code, strlen(code));
    else
        sy_buf_puts(b, "null");
    sy_buf_puts(b, "}}\n");
}

void sy_http_resp_error(struct sy_http_request *req, int status, const char *type, const char *code,
                        const char *param, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct sy_buf b = SY_BUF_INIT;
    sy_http_error_json(&b, type, code, param, msg);
    sy_http_resp_send(req, status, "application/json", NULL, b.data, b.len);
    sy_buf_free(&b);
}

/* ============================================================================================
 * Requests
 * ========================================================================================== */

static void request_reset(struct sy_http_conn *c)
{
    struct sy_http_request *req = &c->req;
    if (req->dispatched && c->srv->on_request_done)
        c->srv->on_request_done(req);
    sy_arena_reset(&req->arena);
    /* Keep a small body buffer for the next request; give a large one back. */
    if (req->body.cap > 64 * 1024)
        sy_buf_free(&req->body);
    else
        sy_buf_reset(&req->body);
    if (c->hbuf.cap > 16 * 1024)
        sy_buf_free(&c->hbuf);
    else
        sy_buf_reset(&c->hbuf);
    /* Everything from `method` on is per-request state; the arena before it is reset above. */
    struct sy_buf body = req->body;
    memset((char *)req + offsetof(struct sy_http_request, method), 0,
           sizeof(*req) - offsetof(struct sy_http_request, method));
    req->body = body;
    req->conn = c;
    req->server = c->srv;
    req->keep_alive = true;
    c->n_spans = 0;
    c->url_len = 0;
    c->in_value = false;
    c->head_bytes = 0;
    c->err_status = 0;
    c->body_deadline = 0;
    c->err_msg = NULL;
    c->trailer_bytes = 0;
}

/* The response is complete (or abandoned): release the request and move on to the next one. */
static void request_finish(struct sy_http_conn *c)
{
    bool keep = c->req.keep_alive && !c->srv->draining && c->state != CONN_CLOSING;
    c->req_active = false;
    c->want_drain = false;
    request_reset(c);
    if (c->state == CONN_CLOSING)
        return;
    if (!keep) {
        conn_close_graceful(c);
        return;
    }
    c->state = CONN_IDLE;
    if (c->in.len > c->in_off) {
        conn_process(c);
    } else if (c->writes_pending == 0) {
        conn_arm(c, TIMER_IDLE, c->srv->limits.idle_timeout_ms);
    }
    if (!c->reading && c->state != CONN_CLOSING && !c->req_active) {
        /* We had stopped reading while holding pipelined input; there is room again. */
        conn_read_start(c);
    }
}

static void make_request_id(struct sy_http_conn *c)
{
    struct sy_http_request *req = &c->req;
    size_t len;
    const char *given = sy_http_req_header(req, "x-request-id", &len);
    if (given && len > 0 && len < sizeof(req->id)) {
        bool ok = true;
        for (size_t i = 0; i < len && ok; i++) {
            char ch = given[i];
            ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '-' || ch == '_' || ch == '.';
        }
        if (ok) {
            memcpy(req->id, given, len);
            req->id[len] = '\0';
            return;
        }
    }
    snprintf(req->id, sizeof(req->id), "req_%08x%012llx", c->srv->id_prefix,
             (unsigned long long)++c->srv->req_seq);
}

static void dispatch(struct sy_http_conn *c)
{
    struct sy_http_request *req = &c->req;
    uv_timer_stop(&c->timer);
    c->timer_kind = TIMER_NONE;
    c->state = CONN_HANDLING;
    c->req_active = true;
    req->start_ns = sy_now_ns();
    req->dispatched = true;
    if (c->srv->draining)
        req->keep_alive = false;
    make_request_id(c);
    c->srv->on_request(req);
}

/* Answer a request we refuse at the HTTP level, then close: the rest of the stream can't be
 * trusted to be in step. */
static void refuse(struct sy_http_conn *c, int status, const char *msg)
{
    if (c->req_active)
        return;
    c->req.keep_alive = false;
    c->req_active = true;
    c->state = CONN_HANDLING;
    uv_timer_stop(&c->timer);
    c->timer_kind = TIMER_NONE;
    make_request_id(c);
    const char *type = "invalid_request_error";
    const char *code = status == 413   ? "request_too_large"
                       : status == 431 ? "headers_too_large"
                       : status == 408 ? "request_timeout"
                                       : "bad_request";
    sy_http_resp_error(&c->req, status, type, code, NULL, "%s", msg);
}

/* ============================================================================================
 * Parsing
 * ========================================================================================== */

static int head_limit(struct sy_http_conn *c, size_t more)
{
    c->head_bytes += more;
    if (c->head_bytes > c->srv->limits.max_header_bytes) {
        c->err_status = 431;
        c->err_msg = "The request's header block is larger than the server accepts.";
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct sy_http_conn *c = p->data;
    c->state = CONN_HEAD;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct sy_http_conn *c = p->data;
    if (head_limit(c, len) < 0)
        return -1;
    sy_buf_append(&c->hbuf, at, len);
    c->url_len += (uint32_t)len;
    return 0;
}

/* Trailers of a chunked body come through the header callbacks once the head is complete: the
 * head buffer (which the request's headers point into) must not grow then. They are dropped,
 * counted against the body limit so an endless trailer cannot hold the connection. */
static int trailer(struct sy_http_conn *c, size_t len)
{
    c->trailer_bytes += len;
    if (c->req.body.len + c->trailer_bytes > c->srv->limits.max_body_bytes) {
        c->err_status = 413;
        c->err_msg = "The request body is larger than the server accepts.";
        return -1;
    }
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct sy_http_conn *c = p->data;
    if (c->state == CONN_BODY)
        return trailer(c, len);
    if (c->n_spans == 0 || c->in_value) {
        if (c->n_spans == MAX_HEADERS) {
            c->err_status = 431;
            c->err_msg = "The request has too many header fields.";
            return -1;
        }
        if (c->n_spans == c->cap_spans) {
            c->cap_spans = c->cap_spans ? c->cap_spans * 2 : 16;
            c->spans = sy_xrealloc(c->spans, c->cap_spans * sizeof(*c->spans));
        }
        struct hdr_span *s = &c->spans[c->n_spans++];
        memset(s, 0, sizeof(*s));
        s->name_off = (uint32_t)c->hbuf.len;
        c->in_value = false;
        if (head_limit(c, 4) < 0)
            return -1;
    }
    if (head_limit(c, len) < 0)
        return -1;
    sy_buf_append(&c->hbuf, at, len);
    c->spans[c->n_spans - 1].name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct sy_http_conn *c = p->data;
    if (c->state == CONN_BODY)
        return trailer(c, len);
    struct hdr_span *s = &c->spans[c->n_spans - 1];
    if (!c->in_value) {
        c->in_value = true;
        s->value_off = (uint32_t)c->hbuf.len;
    }
    if (head_limit(c, len) < 0)
        return -1;
    sy_buf_append(&c->hbuf, at, len);
    s->value_len += (uint32_t)len;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct sy_http_conn *c = p->data;
    struct sy_http_request *req = &c->req;
    const struct sy_http_limits *cfg = &c->srv->limits;

    /* The head buffer is complete and will not move again: point into it. */
    req->method = (llhttp_method_t)p->method;
    req->headers =
        sy_arena_alloc(&req->arena, (c->n_spans ? c->n_spans : 1) * sizeof(*req->headers));
    for (size_t i = 0; i < c->n_spans; i++) {
        struct hdr_span *s = &c->spans[i];
        if (s->name_len == 0) {
            /* llhttp 8 lets ": value" through; RFC 9110 field names are tokens. */
            c->err_status = 400;
            c->err_msg = "Malformed HTTP request: a header field has an empty name.";
            return -1;
        }
        req->headers[i] = (struct sy_http_header){
            .name = c->hbuf.data + s->name_off,
            .name_len = s->name_len,
            .value = c->hbuf.data + s->value_off,
            .value_len = s->value_len,
        };
    }
    req->n_headers = c->n_spans;
    const char *url = c->hbuf.data;
    const char *q = memchr(url, '?', c->url_len);
    size_t plen = q ? (size_t)(q - url) : c->url_len;
    req->path = sy_arena_strndup(&req->arena, url, plen);
    req->path_len = plen;
    req->query = q ? sy_arena_strndup(&req->arena, q + 1, c->url_len - plen - 1) : NULL;
    /* Upgrade (h2c, websocket) and CONNECT are not served: the request is answered as plain
     * HTTP/1.1 and the connection closed, since what follows belongs to the other protocol. */
    req->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;

    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > cfg->max_body_bytes) {
        c->err_status = 413;
        c->err_msg = "The request body is larger than the server accepts.";
        return -1;
    }
    size_t elen;
    const char *expect = sy_http_req_header(req, "expect", &elen);
    if (expect) {
        if (!sy_strcaseeq(expect, elen, "100-continue")) {
            c->err_status = 417;
            c->err_msg = "Only the expectation 100-continue is supported.";
            return -1;
        }
        uv_buf_t b = uv_buf_init("HTTP/1.1 100 Continue\r\n\r\n", 25);
        conn_write(c, &b, 1);
    }
    c->state = CONN_BODY;
    c->body_deadline =
        cfg->body_total_timeout_ms ? uv_now(c->srv->loop) + cfg->body_total_timeout_ms : 0;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct sy_http_conn *c = p->data;
    if (c->req.body.len + len > c->srv->limits.max_body_bytes) {
        c->err_status = 413;
        c->err_msg = "The request body is larger than the server accepts.";
        return -1;
    }
    sy_buf_append(&c->req.body, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    /* Stop here: the request is answered before the next one on this connection is parsed. */
    return HPE_PAUSED;
}

/* While a body arrives: the silence timeout, or less when the whole-body deadline is nearer. */
static void arm_body_timer(struct sy_http_conn *c)
{
    uint64_t ms = c->srv->limits.body_timeout_ms;
    if (c->body_deadline) {
        uint64_t now = uv_now(c->srv->loop);
        ms = SY_MIN(ms, c->body_deadline > now ? c->body_deadline - now : 0);
    }
    conn_arm(c, TIMER_BODY, ms);
}

/* Parse what we can of <d>/<n>, dispatching a request when one completes (and stopping
 * there). Returns the number of bytes consumed. */
static size_t conn_parse(struct sy_http_conn *c, const char *d, size_t n)
{
    if (c->state == CONN_IDLE)
        conn_arm(c, TIMER_HEAD, c->srv->limits.header_timeout_ms);
    llhttp_errno_t e = llhttp_execute(&c->parser, d, n);
    if (e == HPE_OK) {
        if (c->state == CONN_BODY)
            arm_body_timer(c);
        return n;
    }
    if (e == HPE_PAUSED_UPGRADE) {
        /* Upgrade (h2c, websocket) and CONNECT are not served: answer the request as plain
         * HTTP/1.1 and close, since the bytes after it belong to the other protocol. */
        c->req.keep_alive = false;
        e = HPE_PAUSED;
    }
    if (e == HPE_PAUSED) {
        size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - d);
        llhttp_resume(&c->parser);
        dispatch(c);
        return used;
    }
    if (c->err_status) {
        refuse(c, c->err_status, c->err_msg);
    } else {
        char msg[256];
        snprintf(msg, sizeof(msg), "Malformed HTTP request: %s.",
                 llhttp_get_error_reason(&c->parser));
        refuse(c, e == HPE_INVALID_VERSION ? 505 : 400, msg);
    }
    return n;
}

/* Parse buffered input until a request is being handled or the input is used up. */
static void conn_process(struct sy_http_conn *c)
{
    if (c->processing)
        return;
    c->processing = true;
    while (!c->req_active && c->state != CONN_CLOSING && c->in.len > c->in_off) {
        size_t used = conn_parse(c, c->in.data + c->in_off, c->in.len - c->in_off);
        c->in_off += used;
    }
    if (c->in_off == c->in.len) {
        c->in_off = 0;
        if (c->in.cap > 64 * 1024)
            sy_buf_free(&c->in);
        else
            sy_buf_reset(&c->in);
    }
    c->processing = false;
}

/* ============================================================================================
 * TLS
 * ========================================================================================== */

/* A plain-HTTP client on the TLS port: its first byte is not a TLS handshake record (0x16).
 * Tell it in words it can read, unencrypted, and close, rather than leave it waiting. */
#define PLAIN_ON_TLS_BODY                                                                          \
    "{\"error\":{\"message\":\"This port speaks HTTPS: a plain HTTP request was sent to it.\","    \
    "\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"https_required\"}}\n"
#define PLAIN_ON_TLS_LEN "153"
static_assert(sizeof(PLAIN_ON_TLS_BODY) - 1 == 153, "PLAIN_ON_TLS_LEN is the body's length");
static const char plain_on_tls[] = "HTTP/1.1 400 Bad Request\r\n"
                                   "Content-Type: application/json\r\n"
                                   "Content-Length: " PLAIN_ON_TLS_LEN "\r\n"
                                   "Connection: close\r\n"
                                   "\r\n" PLAIN_ON_TLS_BODY;

static void tls_accept(struct sy_http_conn *c, struct sy_tls_server *t)
{
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    c->ssl = SSL_new(t->ctx);
    SY_REQUIRE(c->ssl && rbio && wbio);
    /* An empty read BIO means "wait for more", never EOF: libuv tells us about EOF. */
    BIO_set_mem_eof_return(rbio, -1);
    SSL_set_bio(c->ssl, rbio, wbio);
    SSL_set_accept_state(c->ssl);
}

/* Move the ciphertext OpenSSL produced (handshake, records, alerts) to the socket. */
static int tls_flush(struct sy_http_conn *c)
{
    BIO *wbio = SSL_get_wbio(c->ssl);
    char *data;
    long pending = BIO_get_mem_data(wbio, &data);
    if (pending <= 0)
        return 0;
    /* Straight from the BIO's memory: raw_write copies only what the socket does not take. */
    uv_buf_t b = uv_buf_init(data, (unsigned)pending);
    int r = raw_write(c, &b, 1);
    (void)BIO_reset(wbio);
    return r;
}

static int tls_write(struct sy_http_conn *c, uv_buf_t *bufs, unsigned n)
{
    if (c->state == CONN_CLOSING && c->closes_pending)
        return -EPIPE;
    for (unsigned i = 0; i < n; i++) {
        if (bufs[i].len == 0)
            continue;
        /* A memory BIO takes everything: SSL_write writes all of it or fails. */
        ERR_clear_error();
        if (SSL_write(c->ssl, bufs[i].base, (int)bufs[i].len) <= 0) {
            ERR_clear_error();
            return -EPROTO;
        }
    }
    return tls_flush(c);
}

static void tls_input(struct sy_http_conn *c, const char *d, size_t n)
{
    if (!c->tls_seen) {
        c->tls_seen = true;
        if ((unsigned char)d[0] != 0x16) {
            uv_buf_t b = uv_buf_init((char *)plain_on_tls, sizeof(plain_on_tls) - 1);
            if (raw_write(c, &b, 1) < 0)
                conn_close(c);
            else
                conn_close_graceful(c);
            return;
        }
    }
    BIO_write(SSL_get_rbio(c->ssl), d, (int)n);
    char *plain = c->srv->tls_plain;
    for (;;) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, plain, SY_HTTP_TLS_PLAIN_BUF);
        if (r > 0) {
            conn_input(c, plain, (size_t)r);
            if (c->state == CONN_CLOSING)
                break; /* closed or closing; what is left is discarded */
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) { /* the client's close_notify: its end of stream */
            tls_flush(c);
            conn_close(c);
            return;
        }
        /* A failed handshake or a bad record: nothing more on this connection can be trusted.
         * The alert OpenSSL wrote goes out before the close when nothing is in flight. */
        unsigned long why = ERR_peek_error();
        char reason[160];
        ERR_error_string_n(why, reason, sizeof(reason));
        ERR_clear_error();
        sy_log(SY_LOG_DEBUG, "server", "TLS %s failed: %s",
               SSL_is_init_finished(c->ssl) ? "connection" : "handshake", reason);
        tls_flush(c);
        SSL_set_quiet_shutdown(c->ssl, 1); /* no close_notify after a fatal alert */
        if (c->req_active)
            conn_close(c);
        else
            conn_close_graceful(c);
        return;
    }
    /* Handshake messages and session tickets; a closing connection flushed its last bytes. */
    if (c->state != CONN_CLOSING && tls_flush(c) < 0)
        conn_close(c);
}

/* ============================================================================================
 * Connection life
 * ========================================================================================== */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct sy_http_conn *c = (struct sy_http_conn *)h;
    *buf = uv_buf_init(c->srv->rbuf, sizeof(c->srv->rbuf));
}

/* Plaintext bytes <d>/<n> of the request stream (borrowed; consumed or copied before return). */
static void conn_input(struct sy_http_conn *c, const char *d, size_t n)
{
    if (c->req_active || c->in.len > c->in_off) {
        sy_buf_append(&c->in, d, n);
        if (c->in.len - c->in_off > MAX_BUFFERED_INPUT && c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = false;
        }
        conn_process(c);
        return;
    }
    c->processing = true;
    size_t used = conn_parse(c, d, n);
    c->processing = false;
    if (used < n && c->state != CONN_CLOSING)
        sy_buf_append(&c->in, d + used, n - used);
    conn_process(c);
}

static void tls_input(struct sy_http_conn *c, const char *d, size_t n);

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct sy_http_conn *c = (struct sy_http_conn *)s;
    if (nread == 0)
        return;
    if (nread < 0) {
        /* EOF or error. A client gone mid-request cancels its upstream work (conn_close). */
        conn_close(c);
        return;
    }
    if (c->state == CONN_CLOSING)
        return; /* lingering: discard */
    if (__builtin_expect(c->ssl != NULL, 0))
        tls_input(c, buf->base, (size_t)nread);
    else
        conn_input(c, buf->base, (size_t)nread);
}

static void conn_read_start(struct sy_http_conn *c)
{
    c->reading = true;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static void close_cb(uv_handle_t *h)
{
    struct sy_http_conn *c = h->data;
    if (--c->closes_pending > 0)
        return;
    struct sy_http_server *srv = c->srv;
    request_reset(c);
    if (c->ssl)
        SSL_free(c->ssl); /* and its BIOs */
    sy_buf_free(&c->in);
    sy_buf_free(&c->hbuf);
    sy_buf_free(&c->out);
    sy_buf_free(&c->req.body);
    sy_arena_reset(&c->req.arena);
    free(c->spans);
    free(c);
    srv->n_conns--;
    if (srv->on_conn_closed)
        srv->on_conn_closed(srv);
}

/* Close now. A request being handled is told its client is gone. */
static void conn_close(struct sy_http_conn *c)
{
    if (c->closes_pending)
        return;
    if (c->req_active) {
        c->req_active = false;
        sy_http_abort_cb abort_cb = c->req.on_abort;
        c->req.on_abort = NULL;
        c->state = CONN_CLOSING;
        if (abort_cb)
            abort_cb(&c->req);
    }
    c->state = CONN_CLOSING;
    link_remove(&c->link);
    c->closes_pending = 2;
    uv_close((uv_handle_t *)&c->timer, close_cb);
    uv_close((uv_handle_t *)&c->tcp, close_cb);
}

static void shutdown_cb(uv_shutdown_t *sr, int status)
{
    struct sy_http_conn *c = sr->data;
    if (status < 0 || c->closes_pending) {
        conn_close(c);
        return;
    }
    /* Our FIN is out; read and discard until the client's arrives, so unread input does not
     * turn our close into a reset that destroys the response in flight (lingering close). */
    conn_arm(c, TIMER_LINGER, LINGER_MS);
    if (!c->reading)
        conn_read_start(c);
}

/* Close once every queued byte has been written. */
static void conn_close_graceful(struct sy_http_conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    c->state = CONN_CLOSING;
    if (c->ssl && SSL_is_init_finished(c->ssl)) {
        /* close_notify, so the client can tell our end of the stream from a truncation */
        ERR_clear_error();
        SSL_shutdown(c->ssl);
        tls_flush(c);
    }
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, shutdown_cb) < 0) {
        conn_close(c);
        return;
    }
    conn_arm(c, TIMER_SEND, c->srv->limits.send_timeout_ms);
}

static void timer_cb(uv_timer_t *t)
{
    struct sy_http_conn *c = t->data;
    enum conn_timer kind = c->timer_kind;
    c->timer_kind = TIMER_NONE;
    switch (kind) {
    case TIMER_HEAD:
        refuse(c, 408, "The request head did not arrive in time.");
        break;
    case TIMER_BODY:
        if (c->body_deadline && uv_now(c->srv->loop) >= c->body_deadline)
            refuse(c, 408, "The request body did not arrive in time.");
        else
            refuse(c, 408, "The request body stalled.");
        break;
    case TIMER_IDLE:
    case TIMER_SEND:
    case TIMER_LINGER:
    default:
        conn_close(c);
        break;
    }
}

static void conn_arm(struct sy_http_conn *c, enum conn_timer kind, uint64_t ms)
{
    if (c->closes_pending)
        return;
    c->timer_kind = kind;
    uv_timer_start(&c->timer, timer_cb, ms ? ms : 1, 0);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct sy_http_server *srv =
        SY_CONTAINER_OF((uv_tcp_t *)server, struct sy_http_server, listener);
    if (status < 0) {
        sy_log(SY_LOG_WARN, "server", "accept failed: %s", uv_strerror(status));
        return;
    }
    struct sy_http_conn *c = sy_xcalloc(1, sizeof(*c));
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->link.next = c->link.prev = &c->link;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        c->closes_pending = 2;
        uv_close((uv_handle_t *)&c->timer, close_cb);
        uv_close((uv_handle_t *)&c->tcp, close_cb);
        srv->n_conns++;
        return;
    }
    srv->n_conns++;
    link_insert(&srv->conns, &c->link);
    uv_tcp_nodelay(&c->tcp, 1);
    if (srv->tls)
        tls_accept(c, srv->tls);
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    sy_arena_init(&c->req.arena);
    request_reset(c);
    c->state = CONN_IDLE;
    conn_read_start(c);
    conn_arm(c, TIMER_IDLE, srv->limits.header_timeout_ms);
}

void sy_http_limits_default(struct sy_http_limits *l)
{
    *l = (struct sy_http_limits){
        .max_header_bytes = 64 * 1024,
        .max_body_bytes = 8 * 1024 * 1024,
        .header_timeout_ms = 10000,
        .body_timeout_ms = 30000,
        .idle_timeout_ms = 60000,
        .send_timeout_ms = 60000,
        .body_total_timeout_ms = 120000,
    };
}

void sy_http_server_init(struct sy_http_server *srv, uv_loop_t *loop,
                         const struct sy_http_limits *limits)
{
    srv->loop = loop;
    srv->limits = *limits;
    srv->conns.next = srv->conns.prev = &srv->conns;
    srv->n_conns = 0;
    srv->draining = false;
    srv->tls = NULL;
    uv_tcp_init(loop, &srv->listener);
    if (getrandom(&srv->id_prefix, sizeof(srv->id_prefix), 0) != sizeof(srv->id_prefix))
        srv->id_prefix = (uint32_t)getpid() * 2654435761u;
}

/* Apart from sy_http_server_start so that the fuzz target (which includes this file) can parse
 * without a listener. */
static void parser_settings_init(void)
{
    llhttp_settings_init(&parser_settings);
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_url = on_url;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;
}

int sy_http_server_start(struct sy_http_server *srv)
{
    parser_settings_init();
    return uv_listen((uv_stream_t *)&srv->listener, 511, on_connection);
}

void sy_http_server_drain(struct sy_http_server *srv)
{
    /* Requests in flight answer with Connection: close (format_head checks srv->draining);
     * idle connections stay open until sy_http_server_close_idle. */
    srv->draining = true;
    if (!uv_is_closing((uv_handle_t *)&srv->listener))
        uv_close((uv_handle_t *)&srv->listener, NULL);
}

void sy_http_server_close_idle(struct sy_http_server *srv)
{
    struct sy_link *l = srv->conns.next;
    while (l != &srv->conns) {
        struct sy_http_conn *c = SY_CONTAINER_OF(l, struct sy_http_conn, link);
        l = l->next;
        if (c->state == CONN_IDLE && !c->req_active && c->in.len == c->in_off)
            conn_close_graceful(c);
    }
}

void sy_http_server_close_all(struct sy_http_server *srv)
{
    struct sy_link *l = srv->conns.next;
    while (l != &srv->conns) {
        struct sy_http_conn *c = SY_CONTAINER_OF(l, struct sy_http_conn, link);
        l = l->next;
        conn_close(c);
    }
}
