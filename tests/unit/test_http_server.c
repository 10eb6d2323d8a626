/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTP/1.1 server as a client sees it over a real socket: status line, Content-Length and
 * x-request-id; keep-alive, pipelining answered in order; chunked request bodies and
 * Expect: 100-continue; the head and body limits (431, 413), malformed requests (400), the head,
 * whole-body and idle timeouts; chunked response framing and resp_abort's truncated message;
 * on_abort when the client leaves mid-request; drain's Connection: close; query parameters.
 *
 * Each test runs the server on a libuv loop in the test thread and a blocking client script in a
 * helper thread. The script never asserts (cmocka cannot fail from another thread): it records
 * what it received and the first step that failed, and the test thread asserts after joining it.
 * A 5 s guard timer stops the loop and fails the test. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "sy/http_server.h"

#define GUARD_MS             5000
#define CLIENT_RCV_TIMEOUT_S 4 /* below the guard, so a stuck client still ends */
#define HEAD_LIMIT           1024
#define BODY_LIMIT           1024
#define HEADER_TIMEOUT_MS    100
#define IDLE_TIMEOUT_MS      150
#define N_GOT                4
#define GOT_CAP              16384

/* ---- fixture ------------------------------------------------------------------------------- */

struct fx {
    uv_loop_t loop;
    struct sy_http_server srv;
    uv_timer_t guard;
    uv_async_t done;
    bool timed_out;
    bool stopped;
    int port;
    void (*script)(struct fx *f);

    /* Filled by the client thread; read by the test thread only after the join. */
    char got[N_GOT][GOT_CAP]; /* NUL-terminated */
    size_t got_len[N_GOT];
    bool got_eof[N_GOT]; /* the read ended with the server's FIN, not a timeout */
    long got_ms[N_GOT];  /* how long the read took */
    int client_err;      /* source line of the first failed step, 0 when all went well */
    int keep_fd;         /* a client socket left open past the script */

    /* Server-side observations, written on the loop thread. */
    atomic_int n_requests;
    atomic_int n_done;
    atomic_int n_aborts;
    atomic_int n_held;
    struct sy_http_request *held;
};

static struct fx F;

static void on_done_async(uv_async_t *a)
{
    uv_stop(a->loop);
}

static void on_guard(uv_timer_t *t)
{
    F.timed_out = true;
    uv_stop(t->loop);
}

static void handler(struct sy_http_request *req);

static void on_request_done(struct sy_http_request *req)
{
    (void)req;
    F.n_done++;
}

static void fx_start(void)
{
    memset(&F, 0, sizeof(F));
    assert_int_equal(uv_loop_init(&F.loop), 0);
    struct sy_http_limits l;
    sy_http_limits_default(&l);
    l.max_header_bytes = HEAD_LIMIT;
    l.max_body_bytes = BODY_LIMIT;
    l.header_timeout_ms = HEADER_TIMEOUT_MS;
    l.body_timeout_ms = HEADER_TIMEOUT_MS;
    l.idle_timeout_ms = IDLE_TIMEOUT_MS;
    l.send_timeout_ms = 1000;
    sy_http_server_init(&F.srv, &F.loop, &l);
    F.srv.on_request = handler;
    F.srv.on_request_done = on_request_done;

    struct sockaddr_in sa;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    assert_int_equal(uv_tcp_bind(&F.srv.listener, (const struct sockaddr *)&sa, 0), 0);
    assert_int_equal(sy_http_server_start(&F.srv), 0);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    assert_int_equal(uv_tcp_getsockname(&F.srv.listener, (struct sockaddr *)&ss, &sl), 0);
    F.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    assert_int_not_equal(F.port, 0);

    assert_int_equal(uv_async_init(&F.loop, &F.done, on_done_async), 0);
    assert_int_equal(uv_timer_init(&F.loop, &F.guard), 0);
}

/* Close everything and require the loop to end with no handle left behind. Idempotent. */
static void fx_stop(void)
{
    if (F.stopped)
        return;
    F.stopped = true;
    sy_http_server_close_all(&F.srv);
    if (!uv_is_closing((uv_handle_t *)&F.srv.listener))
        uv_close((uv_handle_t *)&F.srv.listener, NULL);
    uv_close((uv_handle_t *)&F.guard, NULL);
    uv_close((uv_handle_t *)&F.done, NULL);
    uv_run(&F.loop, UV_RUN_DEFAULT);
    assert_int_equal(F.srv.n_conns, 0);
    assert_int_equal(uv_loop_close(&F.loop), 0);
}

static int setup(void **state)
{
    (void)state;
    fx_start();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    fx_stop();
    return 0;
}

static void *client_main(void *arg)
{
    struct fx *f = arg;
    f->script(f);
    uv_async_send(&f->done);
    return NULL;
}

/* Run <script> in a client thread while the loop serves it; fail on the guard or a failed step. */
static void run_client(void (*script)(struct fx *f))
{
    F.script = script;
    pthread_t th;
    assert_int_equal(uv_timer_start(&F.guard, on_guard, GUARD_MS, 0), 0);
    assert_int_equal(pthread_create(&th, NULL, client_main, &F), 0);
    uv_run(&F.loop, UV_RUN_DEFAULT);
    assert_int_equal(pthread_join(th, NULL), 0);
    uv_timer_stop(&F.guard);
    assert_false(F.timed_out);
    assert_int_equal(F.client_err, 0);
}

/* ---- the handler (loop thread) -------------------------------------------------------------- */

static bool path_is(const struct sy_http_request *req, const char *p)
{
    return req->path_len == strlen(p) && memcmp(req->path, p, req->path_len) == 0;
}

static void on_abort(struct sy_http_request *req)
{
    assert_ptr_equal(req, F.held);
    F.held = NULL;
    F.n_aborts++;
}

static void put_query(char *out, size_t cap, const struct sy_http_request *req, const char *name)
{
    size_t len = 99;
    const char *v = sy_http_req_query(req, name, &len);
    size_t n = strlen(out);
    if (v)
        snprintf(out + n, cap - n, "%s=[%.*s] ", name, (int)len, v);
    else
        snprintf(out + n, cap - n, "%s=NULL ", name);
}

static void handler(struct sy_http_request *req)
{
    F.n_requests++;
    if (path_is(req, "/echo")) {
        sy_http_resp_send(req, 200, "application/octet-stream", NULL, req->body.data,
                          req->body.len);
    } else if (path_is(req, "/chunked")) {
        struct sy_http_resp_head h = {
            .status = 200, .content_type = "text/plain", .content_length = -1};
        assert_int_equal(sy_http_resp_start(req, &h), 0);
        assert_int_equal(sy_http_resp_write(req, "hello", 5), 0);
        assert_int_equal(sy_http_resp_write(req, "", 0), 0); /* an empty write is no chunk */
        assert_int_equal(sy_http_resp_write(req, " chunked world", 14), 0);
        sy_http_resp_end(req);
    } else if (path_is(req, "/abort")) {
        struct sy_http_resp_head h = {
            .status = 200, .content_type = "text/plain", .content_length = -1};
        assert_int_equal(sy_http_resp_start(req, &h), 0);
        assert_int_equal(sy_http_resp_write(req, "hello", 5), 0);
        sy_http_resp_abort(req);
    } else if (path_is(req, "/end-with")) {
        /* the head is kept back: it leaves with the tail and the last chunk, in one write */
        struct sy_http_resp_head h = {
            .status = 200, .content_type = "text/plain", .content_length = -1};
        assert_int_equal(sy_http_resp_start(req, &h), 0);
        sy_http_resp_end_with(req, "tail", 4);
    } else if (path_is(req, "/abort-at-once")) {
        /* aborted before any body: the head kept back still goes out */
        struct sy_http_resp_head h = {
            .status = 200, .content_type = "text/plain", .content_length = -1};
        assert_int_equal(sy_http_resp_start(req, &h), 0);
        sy_http_resp_abort(req);
    } else if (path_is(req, "/hold")) {
        F.held = req;
        req->on_abort = on_abort;
        F.n_held++;
    } else if (path_is(req, "/missing")) {
        sy_http_resp_error(req, 404, "invalid_request_error", "not_found", "model",
                           "No model named %s.", "gpt-x");
    } else if (path_is(req, "/first")) {
        sy_http_resp_send(req, 200, "text/plain", NULL, "first", 5);
        sy_http_server_drain(&F.srv);
    } else if (path_is(req, "/query")) {
        char out[256] = "";
        const char *names[] = {"a", "b", "c", "d", "dd", "zz", "model"};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            put_query(out, sizeof(out), req, names[i]);
        sy_http_resp_send(req, 200, "text/plain", NULL, out, strlen(out));
    } else {
        /* Echo the path, so pipelined answers can be told apart. */
        sy_http_resp_send(req, 200, "text/plain", "x-test: yes\r\n", req->path, req->path_len);
    }
}

/* ---- the client (helper thread; records, never asserts) ----------------------------------- */

#define CHECK(f, x)                                                                                \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            if (!(f)->client_err)                                                                  \
                (f)->client_err = __LINE__;                                                        \
            return;                                                                                \
        }                                                                                          \
    } while (0)

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int cl_connect(const struct fx *f)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd == -1)
        return -1;
    struct timeval tv = {.tv_sec = CLIENT_RCV_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool cl_send_n(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w == -1) {
            if (errno == EINTR)
                continue;
            return false;
        }
        s += w;
        n -= (size_t)w;
    }
    return true;
}

static bool cl_send(int fd, const char *s)
{
    return cl_send_n(fd, s, strlen(s));
}

/* Read into got[<slot>] until the peer closes (or the receive timeout). */
static void cl_read_all(struct fx *f, int fd, int slot)
{
    char *b = f->got[slot];
    size_t len = 0;
    long t0 = now_ms();
    f->got_eof[slot] = false;
    while (len < GOT_CAP - 1) {
        ssize_t r = recv(fd, b + len, GOT_CAP - 1 - len, 0);
        if (r == 0) {
            f->got_eof[slot] = true;
            break;
        }
        if (r == -1) {
            if (errno == EINTR)
                continue;
            /* A reset after the response still counts as the server closing. */
            f->got_eof[slot] = errno == ECONNRESET;
            break;
        }
        len += (size_t)r;
    }
    b[len] = '\0';
    f->got_len[slot] = len;
    f->got_ms[slot] = now_ms() - t0;
}

/* Read into got[<slot>] until it holds <stop> (for interim responses and chunked bodies). */
static bool cl_read_until(struct fx *f, int fd, int slot, const char *stop)
{
    char *b = f->got[slot];
    size_t len = 0;
    b[0] = '\0';
    while (!strstr(b, stop)) {
        if (len == GOT_CAP - 1)
            return false;
        ssize_t r = recv(fd, b + len, GOT_CAP - 1 - len, 0);
        if (r <= 0)
            return false;
        len += (size_t)r;
        b[len] = '\0';
    }
    f->got_len[slot] = len;
    return true;
}

/* Read one Content-Length response into got[<slot>], no byte more. */
static bool cl_read_response(struct fx *f, int fd, int slot)
{
    char *b = f->got[slot];
    size_t len = 0;
    b[0] = '\0';
    char *end;
    while (!(end = strstr(b, "\r\n\r\n"))) {
        if (len == GOT_CAP - 1)
            return false;
        ssize_t r = recv(fd, b + len, 1, 0); /* byte by byte: never eat the next response */
        if (r <= 0)
            return false;
        len += (size_t)r;
        b[len] = '\0';
    }
    const char *cl = strcasestr(b, "\r\nContent-Length: ");
    if (!cl || cl > end)
        return false;
    size_t want = (size_t)(end + 4 - b) + strtoul(cl + 18, NULL, 10);
    if (want > GOT_CAP - 1)
        return false;
    while (len < want) {
        ssize_t r = recv(fd, b + len, want - len, 0);
        if (r <= 0)
            return false;
        len += (size_t)r;
    }
    b[len] = '\0';
    f->got_len[slot] = len;
    return true;
}

/* ---- reading what the client got (test thread) --------------------------------------------- */

static int status_of(const char *resp)
{
    if (strncmp(resp, "HTTP/1.1 ", 9) != 0)
        return -1;
    return atoi(resp + 9);
}

/* The value of header <name> in the first head of <resp>, copied into a static buffer; NULL if
 * it is absent. */
static const char *header_of(const char *resp, const char *name)
{
    static char val[256];
    const char *end = strstr(resp, "\r\n\r\n");
    size_t n = strlen(name);
    for (const char *l = strstr(resp, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n")) {
        const char *h = l + 2;
        if (strncasecmp(h, name, n) == 0 && h[n] == ':') {
            const char *v = h + n + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            snprintf(val, sizeof(val), "%.*s", (int)(e - v), v);
            return val;
        }
    }
    return NULL;
}

static const char *body_of(const char *resp)
{
    const char *e = strstr(resp, "\r\n\r\n");
    return e ? e + 4 : "";
}

static void assert_generated_id(const char *id)
{
    assert_non_null(id);
    assert_int_equal(strlen(id), 24); /* req_ + 8 + 12 hex digits */
    assert_memory_equal(id, "req_", 4);
    assert_int_equal(strspn(id + 4, "0123456789abcdef"), 20);
}

/* ---- simple requests ------------------------------------------------------------------------ */

static void script_request_ids(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(f, cl_read_response(f, fd, 0));
    CHECK(f, cl_send(fd, "GET /kept HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123_Z.9\r\n\r\n"));
    CHECK(f, cl_read_response(f, fd, 1));
    CHECK(f, cl_send(fd, "GET /bad HTTP/1.1\r\nHost: x\r\nx-request-id: bad id;drop\r\n\r\n"));
    CHECK(f, cl_read_response(f, fd, 2));
    char big[128];
    snprintf(big, sizeof(big),
             "GET /long HTTP/1.1\r\nHost: x\r\nx-request-id: %s\r\nConnection: close\r\n\r\n",
             "0123456789012345678901234567890123456789"); /* 40 characters: too long to keep */
    CHECK(f, cl_send(fd, big));
    cl_read_all(f, fd, 3);
    close(fd);
}

static void test_get_answers_status_length_and_request_id(void **state)
{
    (void)state;
    run_client(script_request_ids);
    const char *r = F.got[0];
    assert_memory_equal(r, "HTTP/1.1 200 OK\r\n", 17);
    assert_string_equal(header_of(r, "Content-Length"), "6");
    assert_string_equal(header_of(r, "Content-Type"), "text/plain");
    assert_string_equal(header_of(r, "x-test"), "yes");
    assert_non_null(header_of(r, "Date"));
    assert_null(header_of(r, "Connection"));
    assert_string_equal(body_of(r), "/hello");
    char first_id[64];
    snprintf(first_id, sizeof(first_id), "%s", header_of(r, "x-request-id"));
    assert_generated_id(first_id);

    assert_string_equal(header_of(F.got[1], "x-request-id"), "abc-123_Z.9");
    assert_string_equal(body_of(F.got[1]), "/kept");

    const char *replaced = header_of(F.got[2], "x-request-id");
    assert_generated_id(replaced);
    assert_string_not_equal(replaced, first_id); /* each generated id is new */

    assert_true(F.got_eof[3]);
    assert_int_equal(status_of(F.got[3]), 200);
    assert_generated_id(header_of(F.got[3], "x-request-id"));
    assert_string_equal(header_of(F.got[3], "Connection"), "close");
    assert_int_equal(F.n_requests, 4);
}

static void script_error_shape(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_resp_error_sends_openai_error_json(void **state)
{
    (void)state;
    run_client(script_error_shape);
    const char *r = F.got[0];
    assert_memory_equal(r, "HTTP/1.1 404 Not Found\r\n", 24);
    assert_string_equal(header_of(r, "Content-Type"), "application/json");
    const char *body = body_of(r);
    assert_string_equal(body, "{\"error\":{\"message\":\"No model named gpt-x.\","
                              "\"type\":\"invalid_request_error\",\"param\":\"model\","
                              "\"code\":\"not_found\"}}\n");
    assert_int_equal(strtoul(header_of(r, "Content-Length"), NULL, 10), strlen(body));
}

/* ---- connection reuse ----------------------------------------------------------------------- */

static void script_keep_alive(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(f, cl_read_response(f, fd, 0));
    sleep_ms(20); /* a pause between requests, well inside the idle timeout */
    CHECK(f, cl_send(fd, "GET /two HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(f, cl_read_response(f, fd, 1));
    close(fd);
}

static void test_keep_alive_serves_two_requests_on_one_connection(void **state)
{
    (void)state;
    run_client(script_keep_alive);
    assert_int_equal(status_of(F.got[0]), 200);
    assert_null(header_of(F.got[0], "Connection"));
    assert_string_equal(body_of(F.got[0]), "/one");
    assert_int_equal(status_of(F.got[1]), 200);
    assert_string_equal(body_of(F.got[1]), "/two");
    assert_int_equal(F.n_requests, 2);
}

static void script_http10_keep_alive(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    CHECK(f, cl_read_response(f, fd, 0));
    CHECK(f, cl_send(fd, "GET /old2 HTTP/1.0\r\n\r\n"));
    cl_read_all(f, fd, 1);
    close(fd);
}

static void test_http10_keep_alive_only_when_asked(void **state)
{
    (void)state;
    run_client(script_http10_keep_alive);
    assert_string_equal(header_of(F.got[0], "Connection"), "keep-alive");
    assert_string_equal(body_of(F.got[0]), "/old");
    assert_true(F.got_eof[1]);
    assert_string_equal(header_of(F.got[1], "Connection"), "close");
    assert_string_equal(body_of(F.got[1]), "/old2");
}

static void script_pipelined(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    /* One write: the server must answer one at a time, in order. */
    CHECK(f, cl_send(fd, "GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n"
                         "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
                         "GET /p3 HTTP/1.1\r\nHost: x\r\n\r\n"
                         "GET /p4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_pipelined_requests_answered_in_order(void **state)
{
    (void)state;
    run_client(script_pipelined);
    assert_true(F.got_eof[0]);
    const char *r = F.got[0];
    const char *want[] = {"/p1", "body", "/p3", "/p4"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(status_of(r), 200);
        size_t cl = strtoul(header_of(r, "Content-Length"), NULL, 10);
        const char *b = body_of(r);
        assert_int_equal(cl, strlen(want[i]));
        assert_memory_equal(b, want[i], cl);
        r = b + cl;
    }
    assert_string_equal(r, ""); /* nothing after the fourth answer */
    assert_int_equal(F.n_requests, 4);
}

/* ---- request bodies ------------------------------------------------------------------------ */

static void script_chunked_body(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         "Connection: close\r\n\r\n5\r\nhel"));
    sleep_ms(10); /* chunks split across reads, even inside a chunk */
    CHECK(f, cl_send(fd, "lo\r\n"));
    sleep_ms(10);
    CHECK(f, cl_send(fd, "6;ext=1\r\n wor"));
    sleep_ms(10);
    CHECK(f, cl_send(fd, "ld\r\n0\r\n\r\n"));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_chunked_request_body_is_reassembled(void **state)
{
    (void)state;
    run_client(script_chunked_body);
    assert_int_equal(status_of(F.got[0]), 200);
    assert_string_equal(header_of(F.got[0], "Content-Length"), "11");
    assert_string_equal(body_of(F.got[0]), "hello world");
}

static void script_expect_continue(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                         "Content-Length: 5\r\nConnection: close\r\n\r\n"));
    /* The body is only sent once the interim response arrived. */
    CHECK(f, cl_read_until(f, fd, 0, "\r\n\r\n"));
    CHECK(f, cl_send(fd, "12345"));
    cl_read_all(f, fd, 1);
    close(fd);
}

static void test_expect_100_continue_gets_interim_response(void **state)
{
    (void)state;
    run_client(script_expect_continue);
    assert_string_equal(F.got[0], "HTTP/1.1 100 Continue\r\n\r\n");
    assert_int_equal(status_of(F.got[1]), 200);
    assert_string_equal(body_of(F.got[1]), "12345");
}

static void script_expect_other(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n"
                         "Content-Length: 5\r\n\r\n"));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_unknown_expectation_gets_417(void **state)
{
    (void)state;
    run_client(script_expect_other);
    assert_true(F.got_eof[0]);
    assert_int_equal(status_of(F.got[0]), 417);
    assert_int_equal(F.n_requests, 0);
}

/* ---- limits and malformed input ------------------------------------------------------------ */

static void script_big_head(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    char req[2 * HEAD_LIMIT + 128];
    char pad[2 * HEAD_LIMIT];
    memset(pad, 'a', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n", pad);
    CHECK(f, cl_send(fd, req));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_head_over_limit_gets_431_and_close(void **state)
{
    (void)state;
    run_client(script_big_head);
    const char *r = F.got[0];
    assert_true(F.got_eof[0]);
    assert_memory_equal(r, "HTTP/1.1 431 Request Header Fields Too Large\r\n", 46);
    assert_string_equal(header_of(r, "Connection"), "close");
    assert_non_null(strstr(body_of(r), "\"code\":\"headers_too_large\""));
    assert_int_equal(F.n_requests, 0);
}

static void script_head_just_under_limit(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    char req[HEAD_LIMIT + 128];
    char pad[HEAD_LIMIT / 2];
    memset(pad, 'a', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    snprintf(req, sizeof(req),
             "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\nConnection: close\r\n\r\n", pad);
    CHECK(f, cl_send(fd, req));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_head_within_limit_is_served(void **state)
{
    (void)state;
    run_client(script_head_just_under_limit);
    assert_int_equal(status_of(F.got[0]), 200);
    assert_int_equal(F.n_requests, 1);
}

static void script_big_length(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    /* Only the head: the 413 must come without the server waiting for the body. */
    CHECK(f, cl_send(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_body_over_limit_by_length_gets_413_unread(void **state)
{
    (void)state;
    run_client(script_big_length);
    const char *r = F.got[0];
    assert_true(F.got_eof[0]);
    assert_memory_equal(r, "HTTP/1.1 413 Content Too Large\r\n", 32);
    assert_string_equal(header_of(r, "Connection"), "close");
    assert_non_null(strstr(body_of(r), "\"code\":\"request_too_large\""));
    assert_true(F.got_ms[0] < 1000); /* not the body timeout, nor the linger */
    assert_int_equal(F.n_requests, 0);
}

static void script_big_chunks(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"));
    char chunk[600 + 16];
    int n = snprintf(chunk, sizeof(chunk), "%x\r\n", 600);
    memset(chunk + n, 'b', 600);
    memcpy(chunk + n + 600, "\r\n", 2);
    for (int i = 0; i < 2; i++) /* 1200 bytes > BODY_LIMIT; no last chunk */
        CHECK(f, cl_send_n(fd, chunk, (size_t)n + 602));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_body_over_limit_by_chunks_gets_413(void **state)
{
    (void)state;
    run_client(script_big_chunks);
    assert_true(F.got_eof[0]);
    assert_int_equal(status_of(F.got[0]), 413);
    assert_string_equal(header_of(F.got[0], "Connection"), "close");
    assert_int_equal(F.n_requests, 0);
}

static void script_malformed(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n"));
    cl_read_all(f, fd, 0);
    close(fd);

    fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"));
    cl_read_all(f, fd, 1);
    close(fd);

    fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                         "Content-Length: 4\r\n\r\nabcd"));
    cl_read_all(f, fd, 2);
    close(fd);

    /* a header without a name, which llhttp 8 lets through (found by fuzz_http_request) */
    fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET / HTTP/1.1\r\nHost: x\r\n: no-name\r\n\r\n"));
    cl_read_all(f, fd, 3);
    close(fd);
}

static void test_malformed_request_gets_400(void **state)
{
    (void)state;
    run_client(script_malformed);
    for (int i = 0; i < 4; i++) {
        assert_true(F.got_eof[i]);
        assert_int_equal(status_of(F.got[i]), 400);
        assert_string_equal(header_of(F.got[i], "Connection"), "close");
        assert_non_null(strstr(body_of(F.got[i]), "\"code\":\"bad_request\""));
    }
    assert_int_equal(F.n_requests, 0);
}

/* ---- timeouts ------------------------------------------------------------------------------- */

static void script_slow_head(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET / HTTP/1.1\r\nHost: x\r\n"));
    sleep_ms(HEADER_TIMEOUT_MS / 2);
    /* Progress does not restart the clock: the whole head has the one deadline. */
    CHECK(f, cl_send(fd, "X-More: 1\r\n"));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_header_timeout_gets_408(void **state)
{
    (void)state;
    long t0 = now_ms();
    run_client(script_slow_head);
    long total = now_ms() - t0;
    assert_true(F.got_eof[0]);
    assert_int_equal(status_of(F.got[0]), 408);
    assert_non_null(strstr(body_of(F.got[0]), "\"code\":\"request_timeout\""));
    assert_true(total >= HEADER_TIMEOUT_MS - 10);
    assert_true(total < HEADER_TIMEOUT_MS * 5 / 2);
    assert_int_equal(F.n_requests, 0);
}

#define BODY_TOTAL_MS 250

static void script_dribbled_body(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"));
    /* A byte every third of the silence timeout never stalls; only the deadline ends it. */
    for (int i = 0; i < 60 && cl_send(fd, "x"); i++)
        sleep_ms(HEADER_TIMEOUT_MS / 3);
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_body_dribbled_gets_408_at_the_whole_body_deadline(void **state)
{
    (void)state;
    F.srv.limits.body_total_timeout_ms = BODY_TOTAL_MS;
    long t0 = now_ms();
    run_client(script_dribbled_body);
    long total = now_ms() - t0;
    assert_true(F.got_eof[0]);
    assert_int_equal(status_of(F.got[0]), 408);
    assert_non_null(strstr(body_of(F.got[0]), "did not arrive in time"));
    assert_true(total >= BODY_TOTAL_MS - 10);
    assert_int_equal(F.n_requests, 0);
}

static void script_idle(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /idle HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(f, cl_read_response(f, fd, 0));
    cl_read_all(f, fd, 1); /* nothing more: only the close, once idle */
    close(fd);
}

static void test_idle_keep_alive_closed_after_idle_timeout(void **state)
{
    (void)state;
    run_client(script_idle);
    assert_int_equal(status_of(F.got[0]), 200);
    assert_null(header_of(F.got[0], "Connection"));
    assert_true(F.got_eof[1]);
    assert_int_equal(F.got_len[1], 0);
    assert_true(F.got_ms[1] >= IDLE_TIMEOUT_MS - 20);
    assert_true(F.got_ms[1] < IDLE_TIMEOUT_MS * 4);
}

/* ---- responses ------------------------------------------------------------------------------ */

static void script_chunked_resp(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(f, cl_read_until(f, fd, 0, "\r\n0\r\n\r\n"));
    /* Still usable after the last chunk. */
    CHECK(f, cl_send(fd, "GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    cl_read_all(f, fd, 1);
    close(fd);
}

static void script_end_with(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /end-with HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(f, cl_read_until(f, fd, 0, "\r\n0\r\n\r\n"));
    CHECK(f, cl_send(fd, "GET /abort-at-once HTTP/1.1\r\nHost: x\r\n\r\n"));
    cl_read_all(f, fd, 1);
    close(fd);
}

static void test_kept_back_head_leaves_with_the_end_or_the_abort(void **state)
{
    (void)state;
    run_client(script_end_with);
    const char *r = F.got[0];
    assert_int_equal(status_of(r), 200);
    assert_string_equal(header_of(r, "Transfer-Encoding"), "chunked");
    assert_string_equal(body_of(r), "4\r\ntail\r\n0\r\n\r\n");
    r = F.got[1];
    assert_true(F.got_eof[1]);
    assert_int_equal(status_of(r), 200); /* the head, then the connection closes */
    assert_string_equal(body_of(r), "");
}

static void test_chunked_response_is_framed(void **state)
{
    (void)state;
    run_client(script_chunked_resp);
    const char *r = F.got[0];
    assert_int_equal(status_of(r), 200);
    assert_string_equal(header_of(r, "Transfer-Encoding"), "chunked");
    assert_null(header_of(r, "Content-Length"));
    assert_string_equal(body_of(r), "5\r\nhello\r\ne\r\n chunked world\r\n0\r\n\r\n");
    assert_int_equal(status_of(F.got[1]), 200);
    assert_string_equal(body_of(F.got[1]), "/after");
}

static void script_abort_resp(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /abort HTTP/1.1\r\nHost: x\r\n\r\n"));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_resp_abort_leaves_message_unfinished_and_closes(void **state)
{
    (void)state;
    run_client(script_abort_resp);
    const char *r = F.got[0];
    assert_true(F.got_eof[0]);
    assert_int_equal(status_of(r), 200);
    assert_string_equal(header_of(r, "Transfer-Encoding"), "chunked");
    assert_string_equal(body_of(r), "5\r\nhello\r\n"); /* no "0\r\n\r\n" */
}

static void script_client_leaves(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"));
    long t0 = now_ms();
    while (f->n_held == 0 && now_ms() - t0 < 2000)
        sleep_ms(1);
    CHECK(f, f->n_held == 1);
    close(fd);
    t0 = now_ms();
    while (f->n_aborts == 0 && now_ms() - t0 < 2000)
        sleep_ms(1);
    CHECK(f, f->n_aborts == 1);
}

static void test_on_abort_called_when_client_leaves(void **state)
{
    (void)state;
    run_client(script_client_leaves);
    assert_int_equal(F.n_aborts, 1);
    assert_null(F.held);
    fx_stop();
    assert_int_equal(F.n_aborts, 1); /* not a second time at close_all */
    assert_int_equal(F.n_requests, 1);
    assert_int_equal(F.n_done, 1); /* the abandoned request still ends */
}

static void script_hold_and_stay(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    f->keep_fd = fd; /* closed by the test after the server shut down */
    CHECK(f, cl_send(fd, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"));
    long t0 = now_ms();
    while (f->n_held == 0 && now_ms() - t0 < 2000)
        sleep_ms(1);
    CHECK(f, f->n_held == 1);
}

static void test_close_all_aborts_held_request(void **state)
{
    (void)state;
    F.keep_fd = -1;
    run_client(script_hold_and_stay);
    assert_int_equal(F.n_aborts, 0);
    fx_stop(); /* sy_http_server_close_all with the request still held */
    close(F.keep_fd);
    assert_int_equal(F.n_aborts, 1);
    assert_null(F.held);
    assert_int_equal(F.n_done, 1);
}

/* ---- drain ---------------------------------------------------------------------------------- */

static void script_drain(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n")); /* the handler drains */
    CHECK(f, cl_read_response(f, fd, 0));
    CHECK(f, cl_send(fd, "GET /second HTTP/1.1\r\nHost: x\r\n\r\n"));
    cl_read_all(f, fd, 1);
    close(fd);
    /* The listener is closed: nobody new gets in. */
    int again = cl_connect(f);
    if (again != -1)
        close(again);
    CHECK(f, again == -1);
}

static void test_drain_answers_next_request_with_connection_close(void **state)
{
    (void)state;
    run_client(script_drain);
    assert_int_equal(status_of(F.got[0]), 200);
    assert_string_equal(body_of(F.got[0]), "first");
    assert_true(F.got_eof[1]);
    assert_int_equal(status_of(F.got[1]), 200);
    assert_string_equal(header_of(F.got[1], "Connection"), "close");
    assert_string_equal(body_of(F.got[1]), "/second");
    assert_true(F.srv.draining);
}

/* ---- query parameters ----------------------------------------------------------------------- */

static void script_query(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    CHECK(f, cl_send(fd, "GET /query?a=1&b=&c&dd=4&model=gpt%2D4 HTTP/1.1\r\nHost: x\r\n"
                         "Connection: close\r\n\r\n"));
    cl_read_all(f, fd, 0);
    close(fd);
}

static void test_req_query_finds_parameters(void **state)
{
    (void)state;
    run_client(script_query);
    assert_int_equal(status_of(F.got[0]), 200);
    /* "d" is a prefix of "dd", not a parameter; values come undecoded. */
    assert_string_equal(body_of(F.got[0]),
                        "a=[1] b=[] c=[] d=NULL dd=[4] zz=NULL model=[gpt%2D4] ");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_get_answers_status_length_and_request_id),
        T(test_resp_error_sends_openai_error_json),
        T(test_keep_alive_serves_two_requests_on_one_connection),
        T(test_http10_keep_alive_only_when_asked),
        T(test_pipelined_requests_answered_in_order),
        T(test_chunked_request_body_is_reassembled),
        T(test_expect_100_continue_gets_interim_response),
        T(test_unknown_expectation_gets_417),
        T(test_head_over_limit_gets_431_and_close),
        T(test_head_within_limit_is_served),
        T(test_body_over_limit_by_length_gets_413_unread),
        T(test_body_over_limit_by_chunks_gets_413),
        T(test_malformed_request_gets_400),
        T(test_header_timeout_gets_408),
        T(test_body_dribbled_gets_408_at_the_whole_body_deadline),
        T(test_idle_keep_alive_closed_after_idle_timeout),
        T(test_chunked_response_is_framed),
        T(test_kept_back_head_leaves_with_the_end_or_the_abort),
        T(test_resp_abort_leaves_message_unfinished_and_closes),
        T(test_on_abort_called_when_client_leaves),
        T(test_close_all_aborts_held_request),
        T(test_drain_answers_next_request_with_connection_close),
        T(test_req_query_finds_parameters),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
