/* SPDX-License-Identifier: Apache-2.0 */
/** The upstream client against servers inside the test: a libuv TCP server on 127.0.0.1:0 on
 * the client's own loop, answering each request with canned pieces (with pauses between them
 * so that they arrive in separate reads), and for TLS a blocking OpenSSL server in a thread
 * with certificates made by the openssl command at test time. */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "sy/buf.h"
#include "sy/util.h"

#include "upstream.h"
#include "upstream_internal.h"

/* ---- the in-loop test server ------------------------------------------------------------- */

struct srv;

struct sconn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct srv *srv;
    struct sconn *next;
    char buf[8192];
    size_t len;
    unsigned piece;
    bool responding;
    bool closing;
    int open_handles;
};

struct srv {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uint16_t port;
    int accepted;
    int requests;
    const char *const *pieces; /* response pieces, NULL-terminated, written delay_ms apart */
    unsigned delay_ms;
    bool silent;         /* read requests, never answer */
    bool close_after;    /* close once the response is written */
    bool eager;          /* answer the first bytes whatever they are */
    const char *trickle; /* after the pieces, send this every delay_ms forever */
    struct sconn *conns;
};

static void sconn_handle_closed(uv_handle_t *h)
{
    struct sconn *sc = h->data;

    if (--sc->open_handles == 0)
        free(sc);
}

static void sconn_close(struct sconn *sc)
{
    struct sconn **pp;

    if (sc->closing)
        return;
    sc->closing = true;
    for (pp = &sc->srv->conns; *pp; pp = &(*pp)->next) {
        if (*pp == sc) {
            *pp = sc->next;
            break;
        }
    }
    uv_close((uv_handle_t *)&sc->tcp, sconn_handle_closed);
    uv_close((uv_handle_t *)&sc->timer, sconn_handle_closed);
}

static void swrite_cb(uv_write_t *w, int status)
{
    free(w);
}

static void swrite(struct sconn *sc, const char *s, size_t n)
{
    uv_write_t *w = malloc(sizeof(*w));
    uv_buf_t b = uv_buf_init((char *)s, (unsigned)n);

    if (uv_write(w, (uv_stream_t *)&sc->tcp, &b, 1, swrite_cb) != 0)
        free(w);
}

static void send_next(uv_timer_t *t);

/* The response is out: close (for bodies that run until close). */
static void shutdown_cb(uv_shutdown_t *sh, int status)
{
    struct sconn *sc = sh->data;

    free(sh);
    if (status != UV_ECANCELED)
        sconn_close(sc);
}

static void schedule_next(struct sconn *sc)
{
    uv_timer_start(&sc->timer, send_next, sc->srv->delay_ms, 0);
}

static void send_next(uv_timer_t *t)
{
    struct sconn *sc = t->data;
    struct srv *s = sc->srv;

    if (sc->closing)
        return;
    if (s->pieces[sc->piece]) {
        const char *p = s->pieces[sc->piece++];
        swrite(sc, p, strlen(p));
        if (s->pieces[sc->piece] || s->trickle) {
            schedule_next(sc);
        } else if (s->close_after) {
            uv_shutdown_t *sh = malloc(sizeof(*sh));
            sh->data = sc;
            if (uv_shutdown(sh, (uv_stream_t *)&sc->tcp, shutdown_cb) != 0)
                free(sh);
        } else {
            sc->responding = false;
        }
        return;
    }
    if (s->trickle) {
        swrite(sc, s->trickle, strlen(s->trickle));
        schedule_next(sc);
    }
}

static void salloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    struct sconn *sc = h->data;

    b->base = sc->buf + sc->len;
    b->len = sizeof(sc->buf) - sc->len - 1;
}

static void sread(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct sconn *sc = st->data;
    char *end;

    if (n < 0) {
        sconn_close(sc);
        return;
    }
    sc->len += (size_t)n;
    sc->buf[sc->len] = '\0';
    if (sc->srv->eager && !sc->responding) {
        sc->responding = true;
        send_next(&sc->timer);
        return;
    }
    while ((end = strstr(sc->buf, "\r\n\r\n"))) {
        size_t used = (size_t)(end + 4 - sc->buf);
        memmove(sc->buf, end + 4, sc->len - used + 1);
        sc->len -= used;
        sc->srv->requests++;
        if (sc->srv->silent || sc->responding)
            continue;
        sc->responding = true;
        sc->piece = 0;
        send_next(&sc->timer);
    }
}

static void on_accept(uv_stream_t *l, int status)
{
    struct srv *s = l->data;
    struct sconn *sc = calloc(1, sizeof(*sc));

    sc->srv = s;
    uv_tcp_init(s->loop, &sc->tcp);
    uv_timer_init(s->loop, &sc->timer);
    sc->tcp.data = sc;
    sc->timer.data = sc;
    sc->open_handles = 2;
    sc->next = s->conns;
    s->conns = sc;
    if (uv_accept(l, (uv_stream_t *)&sc->tcp) != 0) {
        sconn_close(sc);
        return;
    }
    s->accepted++;
    uv_read_start((uv_stream_t *)&sc->tcp, salloc, sread);
}

static void srv_start(struct srv *s, uv_loop_t *loop)
{
    struct sockaddr_in a;
    struct sockaddr_storage got;
    int len = sizeof(got);

    s->loop = loop;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
    s->listener.data = s;
    assert_int_equal(uv_tcp_bind(&s->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 64, on_accept), 0);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&got, &len);
    s->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
}

/* Close every server-side connection now (the FIN leaves at once). */
static void srv_drop_conns(struct srv *s)
{
    while (s->conns)
        sconn_close(s->conns);
}

static void srv_stop(struct srv *s)
{
    srv_drop_conns(s);
    uv_close((uv_handle_t *)&s->listener, NULL);
}

/* ---- the client side --------------------------------------------------------------------- */

struct result {
    struct dp_upstream *u;
    bool done;
    enum dp_upstream_error err;
    char detail[256];
    int status;
    int heads;
    int body_calls;
    struct sy_buf body;
    char x_test[64];
    bool cancel_in_body;
    bool pause_in_body;
    int body_calls_at_resume;
    /* on_done starts this one */
    struct result *chain;
};

struct fixture {
    uv_loop_t loop;
    struct srv srv;
    struct dp_upstream_ctx *ctx;
    struct sy_origin origin;
    char key[256];
    struct sy_timeouts to;
};

static const char request[] = "GET /v1/models HTTP/1.1\r\nHost: test\r\n\r\n";
static uv_buf_t req_buf;

static struct fixture *F;

static void on_head(struct dp_upstream *u, void *ud, int status, const struct dp_header *h,
                    size_t n)
{
    struct result *r = ud;

    r->status = status;
    r->heads++;
    for (size_t i = 0; i < n; i++) {
        if (h[i].name_len == 6 && strncasecmp(h[i].name, "X-Test", 6) == 0)
            snprintf(r->x_test, sizeof(r->x_test), "%.*s", (int)h[i].value_len, h[i].value);
    }
}

static void on_body(struct dp_upstream *u, void *ud, const char *d, size_t n)
{
    struct result *r = ud;

    assert_false(r->done);
    r->body_calls++;
    sy_buf_append(&r->body, d, n);
    if (r->cancel_in_body) {
        dp_upstream_cancel(u);
        r->u = NULL;
    } else if (r->pause_in_body && r->body_calls == 1) {
        dp_upstream_pause(u);
    }
}

static void start(struct result *r);

static void on_done(struct dp_upstream *u, void *ud, enum dp_upstream_error err, const char *detail)
{
    struct result *r = ud;

    assert_false(r->done);
    assert_ptr_equal(u, r->u);
    r->done = true;
    r->u = NULL;
    r->err = err;
    snprintf(r->detail, sizeof(r->detail), "%s", detail ? detail : "");
    if (r->chain)
        start(r->chain); /* a new exchange from inside on_done */
}

static const struct dp_upstream_cbs cbs = {on_head, on_body, on_done};

static void start(struct result *r)
{
    assert_int_equal(dp_upstream_start(F->ctx, &F->origin, &F->to, &req_buf, 1, &cbs, r, &r->u), 0);
}

static void wait_timer_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Run the loop until <flag> is true or <ms> pass; returns the flag. */
static bool run_loop(const bool *flag, unsigned ms)
{
    uv_timer_t t;
    bool expired = false;

    uv_timer_init(&F->loop, &t);
    t.data = &expired;
    uv_timer_start(&t, wait_timer_cb, ms, 0);
    while (!*flag && !expired)
        uv_run(&F->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&F->loop, UV_RUN_NOWAIT);
    return *flag;
}

/* Run the loop until <flag> is true, failing the test after <ms>. */
static void run_until(const bool *flag, unsigned ms)
{
    assert_true(run_loop(flag, ms));
}

/* Run the loop for <ms>. */
static void run_for(unsigned ms)
{
    bool never = false;
    run_loop(&never, ms);
}

static void set_origin(const char *host, uint16_t port, bool tls)
{
    F->origin.host = (char *)host;
    F->origin.port = port;
    F->origin.tls = tls;
    snprintf(F->key, sizeof(F->key), "%s://%s:%u%s%s", tls ? "https" : "http", host, port,
             F->origin.insecure ? "/insecure" : "", F->origin.ca_file ? F->origin.ca_file : "");
    F->origin.key = F->key;
}

static void make_ctx(const struct dp_upstream_pool_opts *o)
{
    if (F->ctx)
        dp_upstream_ctx_close(F->ctx);
    F->ctx = dp_upstream_ctx_new(&F->loop, o);
}

static int setup(void **state)
{
    F = calloc(1, sizeof(*F));
    uv_loop_init(&F->loop);
    srv_start(&F->srv, &F->loop);
    make_ctx(NULL);
    set_origin("127.0.0.1", F->srv.port, false);
    req_buf = uv_buf_init((char *)request, sizeof(request) - 1);
    *state = F;
    return 0;
}

static void walk_cb(uv_handle_t *h, void *arg)
{
    fprintf(stderr, "left open: handle type %d\n", (int)h->type);
    (*(int *)arg)++;
}

static int teardown(void **state)
{
    int left = 0;

    dp_upstream_ctx_close(F->ctx);
    srv_stop(&F->srv);
    uv_run(&F->loop, UV_RUN_DEFAULT);
    uv_walk(&F->loop, walk_cb, &left);
    assert_int_equal(left, 0);
    assert_int_equal(uv_loop_close(&F->loop), 0);
    free(F);
    F = NULL;
    return 0;
}

static void result_free(struct result *r)
{
    sy_buf_free(&r->body);
}

static bool body_is(const struct result *r, const char *s)
{
    return r->body.len == strlen(s) && memcmp(r->body.data, s, r->body.len) == 0;
}

/* ---- HTTP/1.1 over TCP ------------------------------------------------------------------- */

static void test_error_names(void **state)
{
    assert_string_equal(dp_upstream_error_name(DP_UE_CONNECT_REFUSED), "connect_refused");
    assert_string_equal(dp_upstream_error_name(DP_UE_NONE), "none");
    assert_int_equal(dp_upstream_error_status(DP_UE_FIRST_BYTE_TIMEOUT), 504);
    assert_true(dp_upstream_error_retry_safe(DP_UE_POOL_FULL));
    assert_false(dp_upstream_error_retry_safe(DP_UE_RESET));
    assert_non_null(strstr(dp_upstream_error_message(DP_UE_DNS), "resolve"));
}

static void test_content_length_body_and_headers(void **state)
{
    static const char *const pieces[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: yes\r\nX-Empty:\r\n\r\nhello", NULL};
    struct result r = {0};

    F->srv.pieces = pieces;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_NONE);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.heads, 1);
    assert_string_equal(r.x_test, "yes");
    assert_true(body_is(&r, "hello"));
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 1); /* pooled */
    result_free(&r);
}

static void test_chunked_with_extensions_split_across_reads(void **state)
{
    static const char *const pieces[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r",
        "\nhel",
        "lo\r\n6;a;b\r\n world\r\n3;q=\"x y\"\r\n!!!\r\n0\r\n",
        "\r\n",
        NULL,
    };
    struct result r = {0};

    F->srv.pieces = pieces;
    F->srv.delay_ms = 15;
    start(&r);
    run_until(&r.done, 2000);
    assert_string_equal(r.detail, "");
    assert_int_equal(r.err, DP_UE_NONE);
    assert_true(body_is(&r, "hello world!!!"));
    assert_true(r.body_calls >= 3); /* streamed as it came, never gathered */
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 1);
    result_free(&r);
}

static void test_interim_100_continue_is_skipped(void **state)
{
    static const char *const pieces[] = {
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        NULL,
    };
    struct result r = {0};

    F->srv.pieces = pieces;
    F->srv.delay_ms = 10;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_NONE);
    assert_int_equal(r.heads, 1);
    assert_int_equal(r.status, 201);
    assert_true(body_is(&r, "ok"));
    result_free(&r);
}

static void test_read_until_close_is_not_pooled(void **state)
{
    static const char *const pieces[] = {"HTTP/1.1 200 OK\r\n\r\nstreamed ", "until close", NULL};
    struct result r = {0};

    F->srv.pieces = pieces;
    F->srv.delay_ms = 10;
    F->srv.close_after = true;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_NONE);
    assert_true(body_is(&r, "streamed until close"));
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 0);
    result_free(&r);
}

static void test_connection_close_is_not_pooled(void **state)
{
    static const char *const pieces[] = {
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", NULL};
    struct result r = {0};

    F->srv.pieces = pieces;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_NONE);
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 0);
    result_free(&r);
}

static const char *const ok_pieces[] = {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", NULL};

static void test_keep_alive_reuses_the_connection(void **state)
{
    struct result a = {0}, b = {0};

    F->srv.pieces = ok_pieces;
    start(&a);
    run_until(&a.done, 2000);
    start(&b);
    run_until(&b.done, 2000);
    assert_int_equal(a.err, DP_UE_NONE);
    assert_int_equal(b.err, DP_UE_NONE);
    assert_int_equal(F->srv.accepted, 1);
    assert_int_equal(F->srv.requests, 2);
    result_free(&a);
    result_free(&b);
}

static void test_new_exchange_from_inside_on_done(void **state)
{
    struct result a = {0}, b = {0};

    F->srv.pieces = ok_pieces;
    a.chain = &b;
    start(&a);
    run_until(&b.done, 2000);
    assert_int_equal(a.err, DP_UE_NONE);
    assert_int_equal(b.err, DP_UE_NONE);
    assert_true(body_is(&b, "ok"));
    assert_int_equal(F->srv.accepted, 1);
    result_free(&a);
    result_free(&b);
}

static void test_stale_pooled_connection_is_retried(void **state)
{
    struct result a = {0}, b = {0};

    F->srv.pieces = ok_pieces;
    start(&a);
    run_until(&a.done, 2000);
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 1);
    /* The provider closes the idle keep-alive; the client has not read the FIN yet. */
    srv_drop_conns(&F->srv);
    start(&b);
    run_until(&b.done, 2000);
    assert_int_equal(b.err, DP_UE_NONE);
    assert_true(body_is(&b, "ok"));
    assert_int_equal(F->srv.accepted, 2);
    result_free(&a);
    result_free(&b);
}

static void test_idle_connection_closed_by_provider_is_dropped(void **state)
{
    struct result a = {0};

    F->srv.pieces = ok_pieces;
    start(&a);
    run_until(&a.done, 2000);
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 1);
    srv_drop_conns(&F->srv);
    run_for(50);
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 0);
    result_free(&a);
}

static void test_idle_connection_expires(void **state)
{
    struct dp_upstream_pool_opts o = {.idle_expiry_ms = 30};
    struct result a = {0};

    make_ctx(&o);
    F->srv.pieces = ok_pieces;
    start(&a);
    run_until(&a.done, 2000);
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 1);
    run_for(100);
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 0);
    result_free(&a);
}

static void test_connection_refused(void **state)
{
    uv_tcp_t t;
    struct sockaddr_in a;
    struct sockaddr_storage got;
    int len = sizeof(got);
    struct result r = {0};

    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&F->loop, &t);
    uv_tcp_bind(&t, (struct sockaddr *)&a, 0);
    uv_tcp_getsockname(&t, (struct sockaddr *)&got, &len);
    uv_close((uv_handle_t *)&t, NULL); /* a port nobody listens on */
    set_origin("127.0.0.1", ntohs(((struct sockaddr_in *)&got)->sin_port), false);
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_CONNECT_REFUSED);
    assert_true(dp_upstream_error_retry_safe(r.err));
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 0);
    result_free(&r);
}

static void test_resolves_host_names(void **state)
{
    struct result a = {0}, b = {0};

    /* "localhost" may resolve to ::1 first, where nobody listens: the next address is tried. */
    F->srv.pieces = ok_pieces;
    set_origin("localhost", F->srv.port, false);
    start(&a);
    start(&b);
    run_until(&a.done, 5000);
    run_until(&b.done, 5000);
    assert_int_equal(a.err, DP_UE_NONE);
    assert_int_equal(b.err, DP_UE_NONE);
    assert_non_null(F->ctx->dns);
    assert_null(F->ctx->dns->next); /* one cache entry: the two lookups were one */
    result_free(&a);
    result_free(&b);
}

static void test_first_byte_timeout(void **state)
{
    struct result r = {0};

    F->srv.silent = true;
    F->to.first_byte_ms = 80;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_FIRST_BYTE_TIMEOUT);
    assert_int_equal(F->srv.requests, 1);
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 0);
    result_free(&r);
}

static void test_idle_timeout(void **state)
{
    static const char *const pieces[] = {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello",
                                         NULL};
    struct result r = {0};

    F->srv.pieces = pieces;
    F->to.idle_ms = 80;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_IDLE_TIMEOUT);
    assert_int_equal(r.status, 200);
    assert_true(body_is(&r, "hello"));
    result_free(&r);
}

static void test_total_timeout(void **state)
{
    static const char *const pieces[] = {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                                         NULL};
    struct result r = {0};

    F->srv.pieces = pieces;
    F->srv.trickle = "1\r\nx\r\n";
    F->srv.delay_ms = 20;
    F->to.idle_ms = 100;
    F->to.total_ms = 250;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_TOTAL_TIMEOUT);
    assert_true(r.body.len >= 3);
    result_free(&r);
}

static void test_head_too_large(void **state)
{
    struct dp_upstream_pool_opts o = {.max_head_bytes = 1024};
    struct sy_buf big = SY_BUF_INIT;
    const char *pieces[2];
    struct result r = {0};

    sy_buf_puts(&big, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 200; i++)
        sy_buf_printf(&big, "X-Filler-%d: %s\r\n", i, "aaaaaaaaaaaaaaaaaaaa");
    pieces[0] = big.data;
    pieces[1] = NULL;
    make_ctx(&o);
    F->srv.pieces = pieces;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_HEAD_TOO_LARGE);
    assert_int_equal(r.heads, 0);
    sy_buf_free(&big);
    result_free(&r);
}

static void test_endless_header_whitespace_is_bounded(void **state)
{
    struct dp_upstream_pool_opts o = {.max_head_bytes = 1024};
    static const char *const pieces[] = {"HTTP/1.1 200 OK\r\nX-A:", NULL};
    struct result r = {0};

    make_ctx(&o);
    F->srv.pieces = pieces;
    F->srv.trickle = "                                                                      ";
    F->srv.delay_ms = 1;
    start(&r);
    run_until(&r.done, 3000);
    assert_int_equal(r.err, DP_UE_HEAD_TOO_LARGE);
    result_free(&r);
}

static void test_garbage_is_a_protocol_error(void **state)
{
    static const char *const pieces[] = {"HELLO\x01\x02 this is not http\r\n\r\n", NULL};
    struct result r = {0};

    F->srv.pieces = pieces;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_PROTOCOL);
    assert_true(r.detail[0] != '\0');
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 0);
    result_free(&r);
}

static void test_bad_chunk_size_is_a_protocol_error(void **state)
{
    static const char *const pieces[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n", NULL};
    struct result r = {0};

    F->srv.pieces = pieces;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_PROTOCOL);
    result_free(&r);
}

static void test_closed_mid_body(void **state)
{
    static const char *const pieces[] = {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", NULL};
    struct result r = {0};

    F->srv.pieces = pieces;
    F->srv.close_after = true;
    start(&r);
    run_until(&r.done, 2000);
    assert_int_equal(r.err, DP_UE_CLOSED);
    assert_false(dp_upstream_error_retry_safe(r.err));
    result_free(&r);
}

static void test_cancel_inside_on_body(void **state)
{
    static const char *const pieces[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n",
        "0\r\n\r\n", NULL};
    struct result r = {0};

    F->srv.pieces = pieces;
    F->srv.delay_ms = 20;
    r.cancel_in_body = true;
    start(&r);
    run_for(150);
    assert_false(r.done);
    assert_int_equal(r.body_calls, 1);
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 0);
    result_free(&r);
}

static void test_cancel_before_connect_completes(void **state)
{
    struct result r = {0};

    F->srv.pieces = ok_pieces;
    start(&r);
    dp_upstream_cancel(r.u);
    run_for(50);
    assert_false(r.done);
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 0);
    result_free(&r);
}

static struct result *resume_target;

static void resume_cb(uv_timer_t *t)
{
    resume_target->body_calls_at_resume = resume_target->body_calls;
    dp_upstream_resume(resume_target->u);
}

static void test_pause_and_resume(void **state)
{
    static const char *const pieces[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n",
        "5\r\nthree\r\n",
        "0\r\n\r\n",
        NULL,
    };
    struct result r = {0};
    static uv_timer_t t; /* outlives a failed assertion's longjmp */

    F->srv.pieces = pieces;
    F->srv.delay_ms = 20;
    F->to.idle_ms = 60; /* shorter than the pause: idleness does not count while paused */
    r.pause_in_body = true;
    start(&r);
    resume_target = &r;
    uv_timer_init(&F->loop, &t);
    uv_timer_start(&t, resume_cb, 200, 0);
    run_until(&r.done, 3000);
    uv_close((uv_handle_t *)&t, NULL);
    assert_string_equal(r.detail, "");
    assert_int_equal(r.err, DP_UE_NONE);
    assert_int_equal(r.body_calls_at_resume, 1); /* nothing while paused */
    assert_true(body_is(&r, "onetwothree"));
    result_free(&r);
}

static void test_max_conns_queues_then_serves(void **state)
{
    static const char *const pieces[] = {"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", "cd",
                                         NULL};
    struct dp_upstream_pool_opts o = {.max_conns_per_origin = 1};
    struct result a = {0}, b = {0}, c = {0};

    make_ctx(&o);
    F->srv.pieces = pieces;
    F->srv.delay_ms = 30;
    start(&a);
    start(&b);
    start(&c);
    run_until(&c.done, 3000);
    assert_int_equal(a.err, DP_UE_NONE);
    assert_int_equal(b.err, DP_UE_NONE);
    assert_int_equal(c.err, DP_UE_NONE);
    assert_true(body_is(&c, "abcd"));
    assert_int_equal(F->srv.accepted, 1);
    result_free(&a);
    result_free(&b);
    result_free(&c);
}

static void test_pool_full_after_connect_timeout(void **state)
{
    struct dp_upstream_pool_opts o = {.max_conns_per_origin = 1};
    struct result a = {0}, b = {0};

    make_ctx(&o);
    F->srv.silent = true;
    F->to.connect_ms = 60;
    start(&a);
    start(&b);
    run_until(&b.done, 2000);
    assert_int_equal(b.err, DP_UE_POOL_FULL);
    assert_false(a.done);
    dp_upstream_cancel(a.u);
    assert_int_equal(dp_upstream_ctx_open_conns(F->ctx), 0);
    result_free(&a);
    result_free(&b);
}

/* ---- TLS --------------------------------------------------------------------------------- */

static char tmpdir[64];
static char cert_ok[128], key_ok[128], cert_wrong[128], key_wrong[128];

static void make_cert(const char *cert, const char *key, const char *san)
{
    char cmd[1024];

    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s -out %s -days 2 -subj /CN=switchyard-test -addext "
             "subjectAltName=%s >/dev/null 2>&1",
             key, cert, san);
    assert_int_equal(system(cmd), 0);
}

static int tls_group_setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/sy-upstream-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(cert_ok, sizeof(cert_ok), "%s/ok.pem", tmpdir);
    snprintf(key_ok, sizeof(key_ok), "%s/ok.key", tmpdir);
    snprintf(cert_wrong, sizeof(cert_wrong), "%s/wrong.pem", tmpdir);
    snprintf(key_wrong, sizeof(key_wrong), "%s/wrong.key", tmpdir);
    make_cert(cert_ok, key_ok, "DNS:localhost");
    make_cert(cert_wrong, key_wrong, "DNS:wrong.example");
    return 0;
}

static int tls_group_teardown(void **state)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A blocking TLS server in a thread: <expect> connections, one request each, answered with
 * Connection: close. */
struct tls_srv {
    int fd;
    uint16_t port;
    SSL_CTX *ctx;
    pthread_t th;
    int expect;
    int handshakes;
    int resumed;
};

static void *tls_srv_main(void *arg)
{
    static const char resp[] =
        "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret";
    struct tls_srv *s = arg;

    for (int i = 0; i < s->expect; i++) {
        int fd = accept(s->fd, NULL, NULL);
        SSL *ssl;
        char buf[4096];
        size_t len = 0;
        if (fd == -1)
            break;
        ssl = SSL_new(s->ctx);
        SSL_set_fd(ssl, fd);
        if (SSL_accept(ssl) == 1) {
            s->handshakes++;
            s->resumed += SSL_session_reused(ssl);
            while (len < sizeof(buf) - 1) {
                int n = SSL_read(ssl, buf + len, (int)(sizeof(buf) - 1 - len));
                if (n <= 0)
                    break;
                len += (size_t)n;
                buf[len] = '\0';
                if (strstr(buf, "\r\n\r\n")) {
                    SSL_write(ssl, resp, sizeof(resp) - 1);
                    break;
                }
            }
            SSL_shutdown(ssl);
        }
        SSL_free(ssl);
        close(fd);
        ERR_clear_error();
    }
    return NULL;
}

static void tls_srv_start(struct tls_srv *s, const char *cert, const char *key, int expect)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    struct timeval tv = {.tv_sec = 5};

    memset(s, 0, sizeof(*s));
    s->expect = expect;
    s->ctx = SSL_CTX_new(TLS_server_method());
    assert_int_equal(SSL_CTX_use_certificate_chain_file(s->ctx, cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(s->ctx, key, SSL_FILETYPE_PEM), 1);
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->fd, 16), 0);
    setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)); /* accept gives up */
    getsockname(s->fd, (struct sockaddr *)&a, &len);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, tls_srv_main, s), 0);
}

static void tls_srv_stop(struct tls_srv *s)
{
    shutdown(s->fd, SHUT_RDWR);
    pthread_join(s->th, NULL);
    close(s->fd);
    SSL_CTX_free(s->ctx);
}

static void tls_exchange(struct result *r)
{
    start(r);
    run_until(&r->done, 5000);
}

static void test_tls_with_ca_file_and_session_resumption(void **state)
{
    struct tls_srv s;
    struct result a = {0}, b = {0};

    tls_srv_start(&s, cert_ok, key_ok, 2);
    F->origin.ca_file = cert_ok;
    set_origin("localhost", s.port, true);
    tls_exchange(&a);
    assert_int_equal(a.err, DP_UE_NONE);
    assert_int_equal(a.status, 200);
    assert_true(body_is(&a, "secret"));
    tls_exchange(&b);
    assert_int_equal(b.err, DP_UE_NONE);
    tls_srv_stop(&s);
    assert_int_equal(s.handshakes, 2);
    assert_int_equal(s.resumed, 1); /* the second connection resumed the first's session */
    result_free(&a);
    result_free(&b);
}

static void test_tls_self_signed_fails_against_system_store(void **state)
{
    struct tls_srv s;
    struct result r = {0};

    tls_srv_start(&s, cert_ok, key_ok, 1);
    set_origin("localhost", s.port, true);
    tls_exchange(&r);
    tls_srv_stop(&s);
    assert_int_equal(r.err, DP_UE_TLS_VERIFY);
    assert_non_null(strstr(r.detail, "self-signed"));
    result_free(&r);
}

static void test_tls_insecure_skips_verification(void **state)
{
    struct tls_srv s;
    struct result r = {0};

    tls_srv_start(&s, cert_wrong, key_wrong, 1);
    F->origin.insecure = true;
    set_origin("127.0.0.1", s.port, true);
    tls_exchange(&r);
    tls_srv_stop(&s);
    assert_int_equal(r.err, DP_UE_NONE);
    assert_true(body_is(&r, "secret"));
    result_free(&r);
}

static void test_tls_host_name_mismatch(void **state)
{
    struct tls_srv s;
    struct result r = {0};

    tls_srv_start(&s, cert_wrong, key_wrong, 1);
    F->origin.ca_file = cert_wrong;
    set_origin("localhost", s.port, true);
    tls_exchange(&r);
    tls_srv_stop(&s);
    assert_int_equal(r.err, DP_UE_TLS_VERIFY);
    assert_non_null(strstr(r.detail, "hostname mismatch"));
    result_free(&r);
}

static void test_tls_ip_address_mismatch(void **state)
{
    struct tls_srv s;
    struct result r = {0};

    tls_srv_start(&s, cert_ok, key_ok, 1);
    F->origin.ca_file = cert_ok;
    set_origin("127.0.0.1", s.port, true);
    tls_exchange(&r);
    tls_srv_stop(&s);
    assert_int_equal(r.err, DP_UE_TLS_VERIFY);
    assert_non_null(strstr(r.detail, "IP address mismatch"));
    result_free(&r);
}

static void test_tls_against_plain_server_fails_handshake(void **state)
{
    static const char *const pieces[] = {"HTTP/1.1 400 Bad Request\r\n\r\n", NULL};
    struct result r = {0};

    F->srv.pieces = pieces;
    F->srv.close_after = true;
    F->srv.eager = true;
    F->origin.insecure = true;
    set_origin("127.0.0.1", F->srv.port, true);
    tls_exchange(&r);
    assert_int_equal(r.err, DP_UE_TLS_HANDSHAKE);
    result_free(&r);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tcp_tests[] = {
        cmocka_unit_test(test_error_names),
        T(test_content_length_body_and_headers),
        T(test_chunked_with_extensions_split_across_reads),
        T(test_interim_100_continue_is_skipped),
        T(test_read_until_close_is_not_pooled),
        T(test_connection_close_is_not_pooled),
        T(test_keep_alive_reuses_the_connection),
        T(test_new_exchange_from_inside_on_done),
        T(test_stale_pooled_connection_is_retried),
        T(test_idle_connection_closed_by_provider_is_dropped),
        T(test_idle_connection_expires),
        T(test_connection_refused),
        T(test_resolves_host_names),
        T(test_first_byte_timeout),
        T(test_idle_timeout),
        T(test_total_timeout),
        T(test_head_too_large),
        T(test_endless_header_whitespace_is_bounded),
        T(test_garbage_is_a_protocol_error),
        T(test_bad_chunk_size_is_a_protocol_error),
        T(test_closed_mid_body),
        T(test_cancel_inside_on_body),
        T(test_cancel_before_connect_completes),
        T(test_pause_and_resume),
        T(test_max_conns_queues_then_serves),
        T(test_pool_full_after_connect_timeout),
    };
    const struct CMUnitTest tls_tests[] = {
        T(test_tls_with_ca_file_and_session_resumption),
        T(test_tls_self_signed_fails_against_system_store),
        T(test_tls_insecure_skips_verification),
        T(test_tls_host_name_mismatch),
        T(test_tls_ip_address_mismatch),
        T(test_tls_against_plain_server_fails_handshake),
    };
#undef T
    int failed;

    signal(SIGPIPE, SIG_IGN);
    failed = cmocka_run_group_tests_name("upstream_tcp", tcp_tests, NULL, NULL);
    failed +=
        cmocka_run_group_tests_name("upstream_tls", tls_tests, tls_group_setup, tls_group_teardown);
    return failed ? 1 : 0;
}
