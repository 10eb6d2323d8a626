/* SPDX-License-Identifier: Apache-2.0 */
/** TLS to providers with OpenSSL 3 through two memory BIOs: ciphertext read by libuv goes into
 * the read BIO, SSL_read gives plaintext; SSL_write fills the write BIO, which is drained into
 * uv_write. OpenSSL never touches the socket, so the loop stays in charge of all I/O.
 *
 * Verification is on by default against the system store, or against the origin's own CA
 * bundle; the host name (or IP address) is checked; SNI is sent for names. One SSL_CTX per
 * (ca_file, insecure) pair, and the last session of each origin is kept for resumption. */

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "sy/log.h"
#include "sy/util.h"

#include "upstream_internal.h"

static const unsigned char alpn_http11[] = "\x08http/1.1";

void dp__tls_error(char *detail, size_t n, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[200];

    if (e) {
        ERR_error_string_n(e, buf, sizeof(buf));
        snprintf(detail, n, "%s: %s", what, buf);
    } else {
        snprintf(detail, n, "%s failed", what);
    }
    ERR_clear_error();
}

/* TLS 1.3 sends session tickets after the handshake: this is where each lands. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct dp__conn *c = SSL_get_app_data(ssl);

    if (!c || c->state == DP__CONN_CLOSING)
        return 0;
    if (c->pool->session)
        SSL_SESSION_free(c->pool->session);
    c->pool->session = sess;
    return 1; /* we keep the reference */
}

static SSL_CTX *ssl_ctx_new(const struct sy_origin *o, char *detail, size_t n)
{
    SSL_CTX *sc = SSL_CTX_new(TLS_client_method());

    if (!sc) {
        dp__tls_error(detail, n, "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(sc, TLS1_2_VERSION);
    SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(sc, new_session_cb);
    if (SSL_CTX_set_alpn_protos(sc, alpn_http11, sizeof(alpn_http11) - 1) != 0) {
        dp__tls_error(detail, n, "ALPN");
        goto fail;
    }
    if (o->insecure) {
        SSL_CTX_set_verify(sc, SSL_VERIFY_NONE, NULL);
        return sc;
    }
    SSL_CTX_set_verify(sc, SSL_VERIFY_PEER, NULL);
    if (o->ca_file) {
        if (SSL_CTX_load_verify_locations(sc, o->ca_file, NULL) != 1) {
            char what[160];
            snprintf(what, sizeof(what), "cannot load CA file %s", o->ca_file);
            dp__tls_error(detail, n, what);
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(sc) != 1) {
        dp__tls_error(detail, n, "cannot load the system CA store");
        goto fail;
    }
    return sc;
fail:
    SSL_CTX_free(sc);
    return NULL;
}

/* The SSL_CTX for <o>'s TLS settings, made on first use. */
static SSL_CTX *ssl_ctx_get(struct dp_upstream_ctx *ctx, const struct sy_origin *o, char *detail,
                            size_t n)
{
    struct dp__tls_ctx *t;
    SSL_CTX *sc;

    for (t = ctx->tls; t; t = t->next) {
        if (t->insecure == o->insecure &&
            (t->ca_file && o->ca_file ? strcmp(t->ca_file, o->ca_file) == 0
                                      : t->ca_file == o->ca_file))
            return t->ssl_ctx;
    }
    sc = ssl_ctx_new(o, detail, n);
    if (!sc)
        return NULL;
    t = sy_xcalloc(1, sizeof(*t));
    t->ca_file = o->ca_file ? sy_xstrdup(o->ca_file) : NULL;
    t->insecure = o->insecure;
    t->ssl_ctx = sc;
    t->next = ctx->tls;
    ctx->tls = t;
    return sc;
}

void dp__tls_free(struct dp__conn *c)
{
    if (!c->ssl)
        return;
    /* We close without a close_notify; without this, SSL_free would mark the origin's cached
     * session not resumable. */
    SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(c->ssl); /* frees both BIOs */
    c->ssl = NULL;
}

void dp__tls_ctx_free_all(struct dp_upstream_ctx *ctx)
{
    struct dp__tls_ctx *t = ctx->tls;

    ctx->tls = NULL;
    while (t) {
        struct dp__tls_ctx *next = t->next;
        SSL_CTX_free(t->ssl_ctx);
        free(t->ca_file);
        free(t);
        t = next;
    }
}

int dp__tls_start(struct dp__conn *c, const struct sy_origin *o, char *detail, size_t n)
{
    SSL_CTX *sc;
    bool literal = dp__addr_literal(o->host, NULL);

    ERR_clear_error();
    sc = ssl_ctx_get(c->ctx, o, detail, n);
    if (!sc)
        return -EINVAL;
    c->ssl = SSL_new(sc);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    SY_REQUIRE(c->ssl && c->rbio && c->wbio);
    /* An empty read BIO means "wait for more", never EOF: libuv tells us about EOF. */
    BIO_set_mem_eof_return(c->rbio, -1);
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    SSL_set_app_data(c->ssl, c);
    SSL_set_connect_state(c->ssl);
    if (!literal && SSL_set_tlsext_host_name(c->ssl, o->host) != 1) {
        dp__tls_error(detail, n, "SNI");
        return -EINVAL;
    }
    if (!o->insecure) {
        int ok = literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), o->host)
                         : SSL_set1_host(c->ssl, o->host);
        if (ok != 1) {
            dp__tls_error(detail, n, "cannot set the name to verify");
            return -EINVAL;
        }
    }
    if (c->pool->session)
        SSL_set_session(c->ssl, c->pool->session);
    if (!c->pbuf)
        c->pbuf = sy_xmalloc(DP__RBUF_SIZE);
    return 0;
}

int dp__tls_handshake(struct dp__conn *c, enum dp_upstream_error *err, char *detail, size_t n)
{
    int r, e;
    long v;

    ERR_clear_error();
    r = SSL_do_handshake(c->ssl);
    if (dp__tls_flush(c) < 0 && r == 1)
        r = 0; /* the write failure comes back through the write callback */
    if (r == 1)
        return 1;
    e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    v = SSL_get_verify_result(c->ssl);
    if (v != X509_V_OK && c->u && !c->u->origin->insecure) {
        *err = DP_UE_TLS_VERIFY;
        snprintf(detail, n, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        ERR_clear_error();
        return -1;
    }
    *err = DP_UE_TLS_HANDSHAKE;
    dp__tls_error(detail, n, "TLS handshake");
    return -1;
}

bool dp__tls_write_pending(const struct dp__conn *c)
{
    return c->writing || BIO_ctrl_pending(c->wbio) > 0;
}

int dp__tls_flush(struct dp__conn *c)
{
    size_t pending;
    uv_buf_t b;
    int r;

    if (c->writing || c->state == DP__CONN_CLOSING)
        return 0;
    pending = BIO_ctrl_pending(c->wbio);
    if (pending == 0)
        return 0;
    sy_buf_reset(&c->wbuf);
    sy_buf_reserve(&c->wbuf, pending);
    r = BIO_read(c->wbio, c->wbuf.data, (int)pending);
    SY_REQUIRE(r == (int)pending);
    c->wbuf.len = pending;
    b = uv_buf_init(c->wbuf.data, (unsigned)pending);
    r = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, dp__conn_write_cb);
    if (r < 0)
        return r;
    c->writing = true;
    return 0;
}
