/* SPDX-License-Identifier: Apache-2.0 */
/** The upstream HTTP/1.1 client: one request/response exchange with a provider over a pooled
 * keep-alive connection, plain TCP or TLS (OpenSSL 3 through memory BIOs), with connect,
 * first-byte, idle and total timeouts. Everything runs on the worker's libuv loop. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "sy/table-t.h"

/* Failure classes of an exchange, the basis of retry and fallback decisions. X-macro: name,
 * retry-safe (nothing reached the provider), HTTP status to answer a client with, message. */
#define DP_UPSTREAM_ERRORS(X)                                                                      \
    X(DNS, true, 502, "could not resolve the provider's host")                                     \
    X(CONNECT_REFUSED, true, 502, "the provider refused the connection")                           \
    X(CONNECT_FAILED, true, 502, "could not connect to the provider")                              \
    X(CONNECT_TIMEOUT, true, 504, "timed out connecting to the provider")                          \
    X(TLS_HANDSHAKE, true, 502, "TLS handshake with the provider failed")                          \
    X(TLS_VERIFY, true, 502, "the provider's TLS certificate failed verification")                 \
    X(POOL_FULL, true, 503, "too many connections to the provider are in use")                     \
    X(SEND_FAILED, false, 502, "the connection to the provider failed while sending")              \
    X(RESET, false, 502, "the provider reset the connection")                                      \
    X(CLOSED, false, 502, "the provider closed the connection before the response was complete")   \
    X(PROTOCOL, false, 502, "the provider sent a malformed HTTP response")                         \
    X(HEAD_TOO_LARGE, false, 502, "the provider's response headers are too large")                 \
    X(BODY_TOO_LARGE, false, 502, "the provider's response body is too large")                     \
    X(FIRST_BYTE_TIMEOUT, false, 504, "timed out waiting for the provider's first byte")           \
    X(IDLE_TIMEOUT, false, 504, "the provider went silent in the middle of the response")          \
    X(TOTAL_TIMEOUT, false, 504, "the provider did not finish within the total timeout")

enum dp_upstream_error {
    DP_UE_NONE = 0,
#define X(name, safe, status, msg) DP_UE_##name,
    DP_UPSTREAM_ERRORS(X)
#undef X
        DP_UE_MAX,
};

/** Short snake_case name of <e> ("connect_refused"), for logs, metrics and trace headers. */
const char *dp_upstream_error_name(enum dp_upstream_error e);
/** The operator-facing sentence for <e>. */
const char *dp_upstream_error_message(enum dp_upstream_error e);
/** The status a client should get when <e> ends its request. */
int dp_upstream_error_status(enum dp_upstream_error e);
/** True when <e> happened before any byte of the request could have reached the provider. */
bool dp_upstream_error_retry_safe(enum dp_upstream_error e);

/** One response header, pointers valid only during the head callback. */
struct dp_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct dp_upstream;

/** The response head arrived: <status> and <n> headers (borrowed for the call). */
typedef void (*dp_upstream_head_cb)(struct dp_upstream *u, void *ud, int status,
                                    const struct dp_header *headers, size_t n);
/** A piece of the response body, de-chunked (borrowed for the call). */
typedef void (*dp_upstream_body_cb)(struct dp_upstream *u, void *ud, const char *data, size_t len);
/** The exchange ended: <err> is DP_UE_NONE after a complete response. <detail> is a message
 * with specifics (an OpenSSL verification reason, say) or NULL. After this call the
 * dp_upstream is gone: the connection went back to the pool or was closed. */
typedef void (*dp_upstream_done_cb)(struct dp_upstream *u, void *ud, enum dp_upstream_error err,
                                    const char *detail);

struct dp_upstream_cbs {
    dp_upstream_head_cb on_head;
    dp_upstream_body_cb on_body;
    dp_upstream_done_cb on_done;
};

/** Per-worker client state: the connection pools, the DNS cache, the TLS contexts. */
struct dp_upstream_ctx;

struct dp_upstream_pool_opts {
    uint32_t max_idle_per_origin;  /* idle keep-alive connections kept per origin (default 64) */
    uint32_t max_conns_per_origin; /* open connections per origin, busy or idle (default 1024) */
    uint32_t idle_expiry_ms;       /* an idle pooled connection is closed after this (60000) */
    uint32_t dns_ttl_ms;           /* how long a resolved address is reused (30000) */
    size_t max_head_bytes;         /* response head limit (65536) */
};

/** Create the client state for <loop>. */
struct dp_upstream_ctx *dp_upstream_ctx_new(uv_loop_t *loop, const struct dp_upstream_pool_opts *o);

/** Close every pooled connection and free the state once they are closed (asynchronously;
 * the loop must run until then). Exchanges in flight must have been cancelled first. */
void dp_upstream_ctx_close(struct dp_upstream_ctx *ctx);

/** Number of open connections (busy and idle) in all pools: for tests and metrics. */
uint32_t dp_upstream_ctx_open_conns(const struct dp_upstream_ctx *ctx);

/** Start an exchange with <origin> (borrowed; must outlive the exchange, e.g. through a table
 * reference). <req>/<n_req> are the complete request bytes, head and body: the client borrows
 * both the array and the bytes until the done callback. Callbacks get <ud>. Returns 0 and sets *<out>, or a negative
 * errno when it cannot even begin (then no callback is called). Every failure after that is
 * reported through on_done, never synchronously from inside this call. A pooled connection that
 * turns out to be closed by the provider before any response byte is retried once on a fresh
 * connection, transparently. */
int dp_upstream_start(struct dp_upstream_ctx *ctx, const struct sy_origin *origin,
                      const struct sy_timeouts *timeouts, const uv_buf_t *req, unsigned n_req,
                      const struct dp_upstream_cbs *cbs, void *ud, struct dp_upstream **out);

/** Abandon <u>: close its connection (never reused), call no more callbacks. Invalidates <u>.
 * Safe to call from inside a head or body callback. */
void dp_upstream_cancel(struct dp_upstream *u);

/** Stop reading the response (the client is slow) / read again. Timeouts for idleness do not
 * run while paused; the total timeout does. */
void dp_upstream_pause(struct dp_upstream *u);
void dp_upstream_resume(struct dp_upstream *u);
