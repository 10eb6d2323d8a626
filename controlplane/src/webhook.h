/* SPDX-License-Identifier: Apache-2.0 */
/** Webhook delivery of alerts: the request each channel type wants, and an HTTP(S) client that
 * sends it off the control plane's loop.
 *
 * A request is built on the loop (cp__webhook_build: body, URL with signature parameters,
 * headers) and sent by cp__webhook_send() on a thread of libuv's pool with blocking sockets
 * bounded by a connect timeout and a total deadline, so the loop never waits. HTTPS verifies
 * the server's certificate and host name against the system store plus an optional CA file.
 *
 * Bodies, from the alert document that alert_notify() stored (status, rule, kind, scope,
 * subject, value, threshold, since, message...):
 * - generic:  the alert document itself; with a secret, X-Switchyard-Timestamp (Unix seconds)
 *             and X-Switchyard-Signature: sha256=hex(HMAC-SHA256(secret, "<ts>.<body>"))
 * - slack:    {"text": ...}
 * - dingtalk: {"msgtype": "markdown", "markdown": {"title", "text"}}; with a secret, the URL
 *             gets &timestamp=<ms>&sign=urlencode(base64(HMAC-SHA256(secret, "<ms>\n<secret>")))
 * - feishu:   {"msg_type": "text", "content": {"text"}}; with a secret, "timestamp" (seconds,
 *             a string) and "sign" = base64(HMAC-SHA256(key "<s>\n<secret>", empty message))
 * - wecom:    {"msgtype": "markdown", "markdown": {"content"}}
 * A 2xx answer is a success, except a DingTalk/WeCom answer whose "errcode" or a Feishu answer
 * whose "code" is not 0 (those services answer 200 with the error in the body). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

struct ssl_ctx_st;

/** A parsed webhook URL. */
struct cp_webhook_url {
    bool tls;
    char host[256]; /* without brackets */
    char port[8];
    char *target; /* path and query, "/" at least; owned */
};

/** Parse <url> (borrowed) into <out> (free its target with free()). Accepts
 * http[s]://host[:port][/path][?query] with a host name, an IPv4 address or [IPv6]; no user
 * info, no fragment, no spaces or control characters. Returns 0, or -EINVAL with a message in
 * <why> (static). */
int cp__webhook_parse_url(const char *url, struct cp_webhook_url *out, const char **why);

/** One delivery: built on the loop, sent on a pool thread, answered on the loop. */
struct cp_webhook_req;

/** Called on the loop when a send ends: <status> is the HTTP status (0: none came back) and
 * <error> NULL on success or why it failed (borrowed for the call). */
typedef void (*cp_webhook_done_cb)(struct cp_webhook_req *req, void *ud, int status,
                                   const char *error);

/** Build the request of channel <type> ("generic", "slack"...) at <url> (borrowed) for the
 * alert document <alert> (borrowed), with <secret> (borrowed, NULL for none), extra <headers>
 * (borrowed object of strings, or NULL) and the time <now_ms> (signatures). Returns a request
 * (caller sends it or frees it with cp__webhook_free) or NULL with *<err> (caller frees). */
struct cp_webhook_req *cp__webhook_build(const char *type, const char *url, json_t *alert,
                                         const char *secret, json_t *headers, int64_t now_ms,
                                         char **err);

/** The body of <req> (borrowed), for tests. */
const char *cp__webhook_body(const struct cp_webhook_req *req);
/** The request target (path and query) of <req> (borrowed), for tests. */
const char *cp__webhook_target(const struct cp_webhook_req *req);
/** The extra header lines ("Name: value\r\n"...) of <req> (borrowed), for tests. */
const char *cp__webhook_headers(const struct cp_webhook_req *req);

/** Free a request that was not sent. */
void cp__webhook_free(struct cp_webhook_req *req);

/** Send <req> (taken; freed after <cb> returns) on a thread of <loop>'s pool with <ssl>
 * (borrowed; must outlive the send), <connect_ms> to connect and <total_ms> for everything.
 * <cb> runs on the loop with <ud>. Returns 0, or a negative errno (the request is freed, <cb>
 * does not run). */
int cp__webhook_send(uv_loop_t *loop, struct cp_webhook_req *req, struct ssl_ctx_st *ssl,
                     int connect_ms, int total_ms, cp_webhook_done_cb cb, void *ud);

/** Stop <req> (borrowed; a send whose callback has not run yet) as soon as possible: a send not
 * started is cancelled, one connected has its socket shut down, which ends its blocking calls.
 * Its callback still runs, with an error. For a stop of the control plane. */
void cp__webhook_abort(struct cp_webhook_req *req);

/** A TLS client context that verifies peers against the system store and <ca_file>
 * (borrowed, NULL: none). NULL with *<err> on failure. */
struct ssl_ctx_st *cp__webhook_ssl_new(const char *ca_file, char **err);

/** The DingTalk signature of <ts_ms> with <secret>: base64, not URL-encoded, into <out>. */
void cp__webhook_sign_dingtalk(const char *secret, int64_t ts_ms, char out[64]);
/** The Feishu signature of <ts_s> with <secret>: base64, into <out>. */
void cp__webhook_sign_feishu(const char *secret, int64_t ts_s, char out[64]);
