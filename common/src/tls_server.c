/* SPDX-License-Identifier: Apache-2.0 */
/** Server-side TLS contexts (see sy/tls_server.h). The per-connection glue lives in
 * http_server.c, beside the connection it drives. */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "sy/buf.h"
#include "sy/tls_server.h"
#include "sy/util.h"

/* The TLS 1.2 suites of Mozilla's "intermediate" profile: ECDHE key exchange (forward secrecy)
 * with an AEAD cipher. TLS 1.3 suites are OpenSSL's defaults, all of them AEAD. */
#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

static const unsigned char alpn_http11[] = "\x08http/1.1";

__attribute__((format(printf, 2, 3))) static int fail(char **err, const char *fmt, ...)
{
    struct sy_buf b = SY_BUF_INIT;
    unsigned long e = ERR_peek_last_error();
    char reason[256];
    va_list ap;

    va_start(ap, fmt);
    sy_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    if (e) {
        ERR_error_string_n(e, reason, sizeof(reason));
        sy_buf_printf(&b, ": %s", reason);
    }
    ERR_clear_error();
    free(*err);
    *err = sy_buf_steal(&b, NULL);
    return -EINVAL;
}

/* Speak HTTP/1.1 when the client offers it; a client offering only other protocols (h2) gets
 * no ALPN answer and may still go on with HTTP/1.1. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, alpn_http11, sizeof(alpn_http11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static void describe(struct sy_tls_server *t)
{
    X509 *x = SSL_CTX_get0_certificate(t->ctx);
    snprintf(t->serial, sizeof(t->serial), "?");
    snprintf(t->subject, sizeof(t->subject), "?");
    snprintf(t->not_after, sizeof(t->not_after), "?");
    if (!x)
        return;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    if (hex)
        snprintf(t->serial, sizeof(t->serial), "%s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    X509_NAME_oneline(X509_get_subject_name(x), t->subject, (int)sizeof(t->subject));
    BIO *mem = BIO_new(BIO_s_mem());
    if (mem && ASN1_TIME_print(mem, X509_get0_notAfter(x)) == 1) {
        int n = BIO_read(mem, t->not_after, (int)sizeof(t->not_after) - 1);
        t->not_after[n > 0 ? n : 0] = '\0';
    }
    BIO_free(mem);
}

int sy_tls_server_new(const char *cert_file, const char *key_file, struct sy_tls_server **out,
                      char **err)
{
    struct sy_tls_server *t = sy_xcalloc(1, sizeof(*t));
    int rc;

    *out = NULL;
    ERR_clear_error();
    t->ctx = SSL_CTX_new(TLS_server_method());
    if (!t->ctx) {
        rc = fail(err, "cannot create a TLS context");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    /* Renegotiation is a denial-of-service lever and HTTP/1.1 never needs it. */
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* Idle keep-alive connections give their record buffers back. */
    SSL_CTX_set_mode(t->ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_cipher_list(t->ctx, TLS12_CIPHERS) != 1) {
        rc = fail(err, "cannot set the TLS 1.2 cipher suites");
        goto fail;
    }
    SSL_CTX_set_alpn_select_cb(t->ctx, alpn_select, NULL);
    if (SSL_CTX_use_certificate_chain_file(t->ctx, cert_file) != 1) {
        rc = fail(err, "cannot load the TLS certificate chain %s (PEM, leaf first)", cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(t->ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
            rc = fail(err, "the TLS private key %s does not match the certificate %s", key_file,
                      cert_file);
        else
            rc = fail(err, "cannot load the TLS private key %s (PEM, unencrypted)", key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(t->ctx) != 1) {
        rc = fail(err, "the TLS private key %s does not match the certificate %s", key_file,
                  cert_file);
        goto fail;
    }
    describe(t);
    *out = t;
    return 0;

fail:
    sy_tls_server_free(t);
    return rc;
}

void sy_tls_server_free(struct sy_tls_server *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    free(t);
}
