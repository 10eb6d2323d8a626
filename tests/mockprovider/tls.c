/* SPDX-License-Identifier: Apache-2.0 */
/* HTTPS: one server SSL_CTX per process; each connection's SSL talks through memory BIOs, so
 * the socket stays a plain libuv stream and conn.c moves ciphertext in and out. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "internal.h"
#include "sy/util.h"

static SSL_CTX *ctx;

/* Always settle on HTTP/1.1: a client offering h2 first must not believe it got h2. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    for (unsigned i = 0; i < inlen; i += 1u + in[i]) {
        if (in[i] == 8 && i + 9 <= inlen && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static char *ssl_error(const char *what, const char *path)
{
    char msg[256] = "";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, msg, sizeof(msg));
    size_t n = strlen(what) + strlen(path) + strlen(msg) + 8;
    char *s = sy_xmalloc(n);
    snprintf(s, n, "%s %s: %s", what, path, msg);
    return s;
}

int mp_tls_init(const char *cert, const char *key, char **err)
{
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        *err = sy_xstrdup("cannot create an SSL context");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        *err = ssl_error("cannot load certificate", cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        *err = ssl_error("cannot load private key", key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        *err = ssl_error("private key does not match", cert);
        goto fail;
    }
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    return 0;
fail:
    mp_tls_cleanup();
    return -EINVAL;
}

bool mp_tls_enabled(void)
{
    return ctx != NULL;
}

SSL *mp_tls_new(BIO **rbio, BIO **wbio)
{
    SSL *ssl = SSL_new(ctx);
    SY_REQUIRE(ssl != NULL);
    *rbio = BIO_new(BIO_s_mem());
    *wbio = BIO_new(BIO_s_mem());
    SY_REQUIRE(*rbio != NULL && *wbio != NULL);
    /* An empty read BIO means "want more", not EOF. */
    BIO_set_mem_eof_return(*rbio, -1);
    SSL_set_bio(ssl, *rbio, *wbio);
    SSL_set_accept_state(ssl);
    return ssl;
}

void mp_tls_cleanup(void)
{
    SSL_CTX_free(ctx);
    ctx = NULL;
}
