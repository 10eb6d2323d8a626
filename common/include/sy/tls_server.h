/* SPDX-License-Identifier: Apache-2.0 */
/** Server-side TLS for sy_http listeners: one OpenSSL context built from a certificate chain
 * file and a private key file (PEM), TLS 1.2 and 1.3 only, forward-secret AEAD ciphers, ALPN
 * "http/1.1". The HTTP server drives each connection through memory BIOs, so OpenSSL never
 * touches a socket and the loop stays in charge of all I/O.
 *
 * Reload: build a new context from the files and hand it to the server (sy_http_server.tls);
 * connections already open keep the context they started with (each SSL holds a reference),
 * new ones use the new certificate. */
#pragma once

#include <stddef.h>

#include <openssl/ssl.h>

/** A loaded certificate and key, ready to accept connections. */
struct sy_tls_server {
    SSL_CTX *ctx;
    char serial[80];    /* the leaf certificate's serial number in hex, for logs */
    char subject[256];  /* its subject, one line */
    char not_after[40]; /* its expiry, "Nov 27 12:00:00 2027 GMT" */
};

/** Load the certificate chain <cert_file> (PEM, leaf first) and the private key <key_file> (PEM,
 * unencrypted), both borrowed, and check that they match. On success *<out> is a new context
 * (free with sy_tls_server_free) and 0 is returned; otherwise a negative errno with a message
 * naming the file and OpenSSL's reason in *<err> (caller frees). */
int sy_tls_server_new(const char *cert_file, const char *key_file, struct sy_tls_server **out,
                      char **err);

/** Release <t> (NULL is fine). Connections that use it keep its OpenSSL context alive until
 * they close. */
void sy_tls_server_free(struct sy_tls_server *t);
