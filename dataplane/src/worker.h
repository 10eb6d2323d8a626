/* SPDX-License-Identifier: Apache-2.0 */
/** A data-plane worker and the request handlers that run on it (proxy.c). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "internal.h"
#include "sy/http_server.h"
#include "sy/table-t.h"

struct dp_upstream_ctx;
struct dp_cpclient;

/** A worker: one libuv loop, one HTTP server on the inherited listener, its routing table. */
struct dp_worker {
    uv_loop_t loop;
    const struct dp_config *cfg;
    unsigned index;
    struct sy_table *table; /* current; each request holds its own reference in req->ctx */
    struct dp_upstream_ctx *upstream;
    struct sy_http_server http;
    uv_signal_t sig_term, sig_int;
    uv_timer_t drain_timer;
    uint64_t drain_deadline_ms;
    bool draining;
    uint64_t rr; /* round-robin counter for target choice */
    struct dp_cpclient *cp; /* control-plane client (cpclient.c), NULL without --control-socket */
};

/** The worker a request arrived on. */
static inline struct dp_worker *dp__req_worker(const struct sy_http_request *req)
{
    return req->server->data;
}

/** The routing table a request began on (held for its life). */
static inline const struct sy_table *dp__req_table(const struct sy_http_request *req)
{
    return req->ctx;
}

/** Make <t> (takes the reference) the table new requests begin on; the old one is freed when
 * the last request holding it ends. */
void dp__worker_set_table(struct dp_worker *w, struct sy_table *t);

/** Handle a complete request (proxy.c). Must end it with sy_http_resp_end/abort/send/error, or
 * be told through on_abort that the client left. */
void dp__handle_request(struct sy_http_request *req);
