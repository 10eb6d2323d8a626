/* SPDX-License-Identifier: Apache-2.0 */
/* Server-side TLS as a client sees it: sy_tls_server_new's refusals (missing file, garbage, a key
 * that does not match), and the HTTP server over TLS on a real socket: a request answered with
 * ALPN http/1.1; two pipelined requests in one TLS record answered in order; a response much
 * larger than a record; Connection: close ending with close_notify; a plain-HTTP client told
 * 400 and closed; a broken handshake closed; and a context swapped while a connection is open
 * (the open one keeps its certificate, the next gets the new one).
 *
 * As in test_http_server.c, the server runs on a libuv loop in the test thread and a blocking
 * OpenSSL client script in a helper thread, which records what it saw and never asserts. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "sy/http_server.h"
#include "sy/tls_server.h"

#define GUARD_MS 5000
#define GOT_CAP  (512 * 1024)
#define BIG_LEN  (200 * 1000)

/* ---- certificates ---------------------------------------------------------------------------- */

static char dir[64];

/* A self-signed P-256 certificate for localhost with <serial>, written to <dir>/<name>.pem and
 * <dir>/<name>.key. */
static void make_cert(const char *name, long serial)
{
    char path[128];
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    assert_non_null(pk);
    assert_non_null(x);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pk);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, n);
    assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
    snprintf(path, sizeof(path), "%s/%s.pem", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
    snprintf(path, sizeof(path), "%s/%s.key", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pk);
}

static const char *p(const char *name)
{
    static char buf[4][128];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
    return buf[i];
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/sy-tls-test-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    make_cert("a", 0xA1);
    make_cert("b", 0xB2);
    FILE *f = fopen(p("garbage.pem"), "w");
    fputs("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    const char *names[] = {"a.pem", "a.key", "b.pem", "b.key", "garbage.pem"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        unlink(p(names[i]));
    rmdir(dir);
    return 0;
}

static void test_bad_files_are_refused_with_a_message_naming_them(void **state)
{
    (void)state;
    struct sy_tls_server *t = NULL;
    char *err = NULL;

    assert_int_equal(sy_tls_server_new(p("none.pem"), p("a.key"), &t, &err), -EINVAL);
    assert_null(t);
    assert_non_null(strstr(err, "cannot load the TLS certificate chain"));
    assert_non_null(strstr(err, "none.pem"));

    assert_int_equal(sy_tls_server_new(p("garbage.pem"), p("a.key"), &t, &err), -EINVAL);
    assert_non_null(strstr(err, "garbage.pem"));

    assert_int_equal(sy_tls_server_new(p("a.pem"), p("b.key"), &t, &err), -EINVAL);
    assert_non_null(strstr(err, "does not match the certificate"));

    assert_int_equal(sy_tls_server_new(p("a.pem"), p("a.key"), &t, &err), 0);
    assert_non_null(t);
    assert_string_equal(t->serial, "A1");
    assert_non_null(strstr(t->subject, "CN=localhost"));
    sy_tls_server_free(t);
    free(err);
}

/* ---- fixture ------------------------------------------------------------------------------- */

struct fx {
    uv_loop_t loop;
    struct sy_http_server srv;
    struct sy_tls_server *tls, *tls_b;
    uv_timer_t guard;
    uv_async_t done, swap;
    bool timed_out;
    int port;
    void (*script)(struct fx *f);

    /* filled by the client thread */
    char *got;
    size_t got_len;
    bool close_notify; /* the read ended with the server's close_notify */
    char alpn[32];
    long serial[2];
    int client_err;
};

static struct fx F;

#define CHECK(f, cond)                                                                             \
    do {                                                                                           \
        if (!(cond) && !(f)->client_err)                                                           \
            (f)->client_err = __LINE__;                                                            \
    } while (0)

static void on_done_async(uv_async_t *a)
{
    uv_stop(a->loop);
}

/* The client asks for the second certificate (a reload) between two connections. */
static void on_swap_async(uv_async_t *a)
{
    F.srv.tls = F.tls_b;
}

static void on_guard(uv_timer_t *t)
{
    F.timed_out = true;
    uv_stop(t->loop);
}

static void handler(struct sy_http_request *req)
{
    if (strcmp(req->path, "/big") == 0) {
        char *body = malloc(BIG_LEN);
        for (size_t i = 0; i < BIG_LEN; i++)
            body[i] = (char)('a' + i % 26);
        sy_http_resp_send(req, 200, "text/plain", NULL, body, BIG_LEN);
        free(body);
        return;
    }
    char body[128];
    int n = snprintf(body, sizeof(body), "path=%s", req->path);
    sy_http_resp_send(req, 200, "text/plain", NULL, body, (size_t)n);
}

static int setup(void **state)
{
    (void)state;
    char *err = NULL;
    memset(&F, 0, sizeof(F));
    F.got = calloc(1, GOT_CAP);
    assert_int_equal(sy_tls_server_new(p("a.pem"), p("a.key"), &F.tls, &err), 0);
    assert_int_equal(sy_tls_server_new(p("b.pem"), p("b.key"), &F.tls_b, &err), 0);
    assert_int_equal(uv_loop_init(&F.loop), 0);
    struct sy_http_limits l;
    sy_http_limits_default(&l);
    l.header_timeout_ms = 500;
    sy_http_server_init(&F.srv, &F.loop, &l);
    F.srv.on_request = handler;
    F.srv.tls = F.tls;
    struct sockaddr_in sa;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    assert_int_equal(uv_tcp_bind(&F.srv.listener, (const struct sockaddr *)&sa, 0), 0);
    assert_int_equal(sy_http_server_start(&F.srv), 0);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    assert_int_equal(uv_tcp_getsockname(&F.srv.listener, (struct sockaddr *)&ss, &sl), 0);
    F.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    assert_int_equal(uv_async_init(&F.loop, &F.done, on_done_async), 0);
    assert_int_equal(uv_async_init(&F.loop, &F.swap, on_swap_async), 0);
    assert_int_equal(uv_timer_init(&F.loop, &F.guard), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sy_http_server_close_all(&F.srv);
    if (!uv_is_closing((uv_handle_t *)&F.srv.listener))
        uv_close((uv_handle_t *)&F.srv.listener, NULL);
    uv_close((uv_handle_t *)&F.guard, NULL);
    uv_close((uv_handle_t *)&F.done, NULL);
    uv_close((uv_handle_t *)&F.swap, NULL);
    uv_run(&F.loop, UV_RUN_DEFAULT);
    assert_int_equal(F.srv.n_conns, 0);
    assert_int_equal(uv_loop_close(&F.loop), 0);
    sy_tls_server_free(F.tls);
    sy_tls_server_free(F.tls_b);
    free(F.got);
    return 0;
}

static void *client_main(void *arg)
{
    struct fx *f = arg;
    f->script(f);
    uv_async_send(&f->done);
    return NULL;
}

static void run_client(void (*script)(struct fx *f))
{
    pthread_t th;
    F.script = script;
    assert_int_equal(uv_timer_start(&F.guard, on_guard, GUARD_MS, 0), 0);
    assert_int_equal(pthread_create(&th, NULL, client_main, &F), 0);
    uv_run(&F.loop, UV_RUN_DEFAULT);
    assert_int_equal(pthread_join(th, NULL), 0);
    uv_timer_stop(&F.guard);
    assert_false(F.timed_out);
    assert_int_equal(F.client_err, 0);
}

/* ---- the client (helper thread) -------------------------------------------------------------- */

static int cl_connect(const struct fx *f)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 4};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A TLS connection (no verification: the certificates are self-signed), or NULL. */
static SSL *cl_tls(struct fx *f, SSL_CTX **ctx, int *fd)
{
    static const unsigned char alpn[] = "\x08http/1.1";
    *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_alpn_protos(*ctx, alpn, sizeof(alpn) - 1);
    *fd = cl_connect(f);
    if (*fd == -1)
        return NULL;
    SSL *ssl = SSL_new(*ctx);
    SSL_set_fd(ssl, *fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    if (SSL_connect(ssl) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

static long peer_serial(SSL *ssl)
{
    X509 *x = SSL_get1_peer_certificate(ssl);
    long s = x ? ASN1_INTEGER_get(X509_get0_serialNumber(x)) : -1;
    X509_free(x);
    return s;
}

/* Read until the server ends the stream; note whether it sent close_notify. */
static void cl_read_all(struct fx *f, SSL *ssl)
{
    f->got_len = 0;
    for (;;) {
        int r = SSL_read(ssl, f->got + f->got_len, (int)(GOT_CAP - 1 - f->got_len));
        if (r > 0) {
            f->got_len += (size_t)r;
            continue;
        }
        f->close_notify = SSL_get_error(ssl, r) == SSL_ERROR_ZERO_RETURN;
        break;
    }
    f->got[f->got_len] = '\0';
}

static void cl_close(SSL *ssl, SSL_CTX *ctx, int fd)
{
    if (ssl)
        SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd != -1)
        close(fd);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void script_pipelined(struct fx *f)
{
    SSL_CTX *ctx;
    int fd;
    SSL *ssl = cl_tls(f, &ctx, &fd);
    CHECK(f, ssl != NULL);
    if (!ssl)
        return cl_close(ssl, ctx, fd);
    const unsigned char *proto;
    unsigned len;
    SSL_get0_alpn_selected(ssl, &proto, &len);
    snprintf(f->alpn, sizeof(f->alpn), "%.*s", (int)len, proto);
    /* two requests in one SSL_write: one TLS record */
    const char *two = "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    CHECK(f, SSL_write(ssl, two, (int)strlen(two)) == (int)strlen(two));
    cl_read_all(f, ssl);
    cl_close(ssl, ctx, fd);
}

static void test_pipelined_requests_in_one_record_and_close_notify(void **state)
{
    (void)state;
    run_client(script_pipelined);
    assert_string_equal(F.alpn, "http/1.1");
    const char *one = strstr(F.got, "path=/one");
    const char *two = strstr(F.got, "path=/two");
    assert_non_null(one);
    assert_non_null(two);
    assert_true(one < two);
    assert_true(F.close_notify);
}

static void script_big(struct fx *f)
{
    SSL_CTX *ctx;
    int fd;
    SSL *ssl = cl_tls(f, &ctx, &fd);
    CHECK(f, ssl != NULL);
    if (!ssl)
        return cl_close(ssl, ctx, fd);
    const char *req = "GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    CHECK(f, SSL_write(ssl, req, (int)strlen(req)) == (int)strlen(req));
    cl_read_all(f, ssl);
    cl_close(ssl, ctx, fd);
}

static void test_a_response_of_many_records_arrives_whole(void **state)
{
    (void)state;
    run_client(script_big);
    const char *body = strstr(F.got, "\r\n\r\n");
    assert_non_null(body);
    body += 4;
    assert_int_equal(F.got_len - (size_t)(body - F.got), BIG_LEN);
    for (size_t i = 0; i < BIG_LEN; i++)
        if (body[i] != (char)('a' + i % 26))
            fail_msg("byte %zu differs", i);
    assert_true(F.close_notify);
}

static void script_plain(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(f, send(fd, req, strlen(req), MSG_NOSIGNAL) == (ssize_t)strlen(req));
    f->got_len = 0;
    for (;;) {
        ssize_t r = recv(fd, f->got + f->got_len, GOT_CAP - 1 - f->got_len, 0);
        if (r <= 0) {
            f->close_notify = r == 0; /* here: the server closed (FIN) */
            break;
        }
        f->got_len += (size_t)r;
    }
    f->got[f->got_len] = '\0';
    close(fd);
}

static void test_plain_http_gets_a_400_in_plain_and_a_close(void **state)
{
    (void)state;
    run_client(script_plain);
    assert_true(strncmp(F.got, "HTTP/1.1 400 ", 13) == 0);
    assert_non_null(strstr(F.got, "\"code\":\"https_required\""));
    const char *body = strstr(F.got, "\r\n\r\n") + 4;
    const char *cl = strstr(F.got, "Content-Length: ");
    assert_non_null(cl);
    assert_int_equal(strtoul(cl + 16, NULL, 10), strlen(body));
    assert_true(F.close_notify);
}

static void script_bad_handshake(struct fx *f)
{
    int fd = cl_connect(f);
    CHECK(f, fd != -1);
    /* a handshake record whose body is nonsense */
    static const char bad[] = "\x16\x03\x01\x00\x08garbage!";
    CHECK(f, send(fd, bad, sizeof(bad) - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof(bad) - 1));
    char buf[256];
    ssize_t r;
    while ((r = recv(fd, buf, sizeof(buf), 0)) > 0) /* an alert, then the close */
        ;
    f->close_notify = r == 0 || (r == -1 && errno == ECONNRESET);
    close(fd);
}

static void test_a_broken_handshake_is_closed(void **state)
{
    (void)state;
    run_client(script_bad_handshake);
    assert_true(F.close_notify);
}

static void script_swap(struct fx *f)
{
    SSL_CTX *ctx1, *ctx2;
    int fd1, fd2;
    SSL *first = cl_tls(f, &ctx1, &fd1);
    CHECK(f, first != NULL);
    if (!first)
        return cl_close(first, ctx1, fd1);
    f->serial[0] = peer_serial(first);
    uv_async_send(&f->swap);
    usleep(100000);
    SSL *second = cl_tls(f, &ctx2, &fd2);
    CHECK(f, second != NULL);
    if (second)
        f->serial[1] = peer_serial(second);
    /* the first connection still works on its own certificate */
    const char *req = "GET /still HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    CHECK(f, SSL_write(first, req, (int)strlen(req)) == (int)strlen(req));
    cl_read_all(f, first);
    cl_close(first, ctx1, fd1);
    cl_close(second, ctx2, fd2);
}

static void test_a_new_context_serves_new_connections_and_open_ones_keep_theirs(void **state)
{
    (void)state;
    run_client(script_swap);
    assert_int_equal(F.serial[0], 0xA1);
    assert_int_equal(F.serial[1], 0xB2);
    assert_non_null(strstr(F.got, "path=/still"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_files_are_refused_with_a_message_naming_them),
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_pipelined_requests_in_one_record_and_close_notify),
        T(test_a_response_of_many_records_arrives_whole),
        T(test_plain_http_gets_a_400_in_plain_and_a_close),
        T(test_a_broken_handshake_is_closed),
        T(test_a_new_context_serves_new_connections_and_open_ones_keep_theirs),
#undef T
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
