/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTP/1.1 server (common/src/http_server.c) fed a client's bytes without a network: the
 * server's own read callback is called with the input cut into pieces, on a connection whose
 * socket is one end of a socketpair (the responses go there and are read back and checked).
 * This reaches everything a client can: llhttp's callbacks, the head and body limits (431, 413,
 * 417, 400, 505), pipelining held while a request is handled, chunked bodies and trailers,
 * Upgrade, the request id, header and query lookups, the response writers and the timeouts
 * (fired by hand at the end).
 *
 * Input: byte 0: bits 0-5 piece size (0: whole), bit 6 = answer each request only after the
 * next piece arrives (pipelining), bit 7 = fire the connection's timer at the end; the rest is
 * what the client sends. */
#include <signal.h>
#include <sys/socket.h>

#include "../../common/src/http_server.c"
#include "fuzz.h"

#define HEAD_LIMIT 2048
#define BODY_LIMIT 4096

static uv_loop_t loop;
static struct sy_http_server srv;
static int peer = -1;
static struct sy_http_request *held;
static unsigned closed;
static unsigned answered;
static size_t got;

static void answer(struct sy_http_request *req)
{
    size_t n = 0;
    const char *ct = sy_http_req_header(req, "content-type", &n);
    size_t qn = 0;
    const char *q = sy_http_req_query(req, "a", &qn);
    FUZZ_CHECK(req->path && strlen(req->path) == req->path_len, "path is NUL-terminated");
    for (size_t i = 0; i < req->n_headers; i++) {
        if (req->headers[i].name_len == 0)
            for (size_t j = 0; j < req->n_headers; j++)
                fprintf(stderr, "header %zu: [%.*s] [%.*s]\n", j, (int)req->headers[j].name_len,
                        req->headers[j].name, (int)req->headers[j].value_len,
                        req->headers[j].value);
        FUZZ_CHECK(req->headers[i].name_len > 0, "a header has a name");
    }
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_cat(&b, "path=", req->path, " id=", req->id, NULL);
    if (ct)
        sy_buf_append(&b, ct, n);
    if (q)
        sy_buf_append(&b, q, qn);
    sy_buf_putu(&b, req->body.len);
    answered++;
    switch (req->body.len % 3) {
    case 0:
        sy_http_resp_send(req, 200, "text/plain", "X-A: b\r\n", b.data, b.len);
        break;
    case 1: {
        struct sy_http_resp_head h = {
            .status = 201, .content_type = "text/plain", .content_length = -1};
        if (sy_http_resp_start(req, &h) == 0 && sy_http_resp_write(req, b.data, b.len) >= 0)
            sy_http_resp_write(req, req->body.data, req->body.len);
        sy_http_resp_end(req);
        break;
    }
    default:
        sy_http_resp_error(req, 400, "invalid_request_error", NULL, "x", "bad %zu", n);
        break;
    }
    sy_buf_free(&b);
}

static void on_abort(struct sy_http_request *req)
{
    FUZZ_CHECK(req == held, "abort of the held request");
    held = NULL;
}

static bool hold_mode;

static void on_request(struct sy_http_request *req)
{
    FUZZ_CHECK(held == NULL, "one request at a time per connection");
    if (hold_mode) {
        held = req;
        req->on_abort = on_abort;
        return;
    }
    answer(req);
}

static void on_conn_closed(struct sy_http_server *s)
{
    closed++;
}

/* Read what the server wrote, so its socket never fills up. */
static void drain_peer(void)
{
    char buf[65536];
    ssize_t r;
    while ((r = read(peer, buf, sizeof(buf))) > 0)
        got += (size_t)r;
}

static void flush(void)
{
    for (int i = 0; i < 4; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        drain_peer();
    }
}

static void setup_once(void)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    struct sy_http_limits l;
    sy_http_limits_default(&l);
    l.max_header_bytes = HEAD_LIMIT;
    l.max_body_bytes = BODY_LIMIT;
    sy_http_server_init(&srv, &loop, &l);
    srv.on_request = on_request;
    srv.on_conn_closed = on_conn_closed;
    parser_settings_init();
}

/* A connection as on_connection makes it, on a socketpair instead of an accepted socket. */
static struct sy_http_conn *conn_new(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == -1)
        abort();
    peer = sv[1];
    struct sy_http_conn *c = sy_xcalloc(1, sizeof(*c));
    c->srv = &srv;
    uv_tcp_init(&loop, &c->tcp);
    uv_timer_init(&loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    if (uv_tcp_open(&c->tcp, sv[0]) != 0)
        abort();
    srv.n_conns++;
    link_insert(&srv.conns, &c->link);
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    sy_arena_init(&c->req.arena);
    request_reset(c);
    c->state = CONN_IDLE;
    conn_read_start(c);
    conn_arm(c, TIMER_IDLE, srv.limits.header_timeout_ms);
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup_once();
        ready = true;
    }
    if (size < 1)
        return 0;
    unsigned piece = data[0] & 63;
    hold_mode = data[0] & 64;
    bool fire_timer = data[0] & 128;
    const char *d = (const char *)data + 1;
    size_t n = size - 1, off = 0;

    closed = answered = 0;
    got = 0;
    held = NULL;
    struct sy_http_conn *c = conn_new();
    while (off < n && !c->closes_pending) {
        size_t k = piece ? piece : n - off;
        k = k > n - off ? n - off : k;
        char *chunk = fuzz_dup(d + off, k);
        uv_buf_t b = uv_buf_init(chunk, (unsigned)k);
        read_cb((uv_stream_t *)&c->tcp, (ssize_t)k, &b);
        free(chunk);
        off += k;
        flush();
        if (closed)
            break;
        if (held) {
            struct sy_http_request *r = held;
            held = NULL;
            answer(r); /* may parse and dispatch the next pipelined request */
            flush();
            if (closed)
                break;
        }
    }
    if (!closed) {
        FUZZ_CHECK(c->in.len - c->in_off <= n, "held input is what was sent");
        if (held) {
            struct sy_http_request *r = held;
            held = NULL;
            answer(r);
            flush();
        }
        if (!closed && fire_timer && c->timer_kind != TIMER_NONE && !c->closes_pending) {
            uv_timer_stop(&c->timer);
            timer_cb(&c->timer);
            flush();
        }
        if (!closed) {
            /* The client hangs up. */
            uv_buf_t b = uv_buf_init(NULL, 0);
            read_cb((uv_stream_t *)&c->tcp, UV_EOF, &b);
        }
    }
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    FUZZ_CHECK(held == NULL, "no request outlives its connection");
    FUZZ_CHECK(srv.n_conns == 0, "the connection was freed");
    FUZZ_CHECK(answered == 0 || got > 0, "an answered request sent bytes");
    close(peer);
    peer = -1;
    return 0;
}
