/* SPDX-License-Identifier: Apache-2.0 */
/** A data-plane worker and the request handlers that run on it (proxy.c). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "internal.h"
#include "govern.h"
#include "sy/http_server.h"
#include "sy/shm-t.h"
#include "sy/table-t.h"

struct dp_upstream_ctx;
struct dp_cpclient;
struct sy_shm;

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
    uv_timer_t heartbeat; /* the worker slot's heartbeat in shared memory */
    uint64_t drain_deadline_ms;
    bool draining;
    uint64_t rr;  /* round-robin counter for target choice */
    uint64_t rnd; /* xorshift state for weighted choice and jitter */
    struct dp_cpclient *cp; /* control-plane client (cpclient.c), NULL without --control-socket */
    struct sy_shm *shm;     /* the node's shared memory (NULL: governance state is not shared) */
    struct {
        double requests, retries; /* halved every 5 s */
        uint64_t at_ms;
    } budget;
    uint64_t table_seq;     /* tables handed to dp__worker_set_table, in order */
    uint64_t installed_seq; /* the one serving (a table whose guardrails compile later than a
                             * newer one's is dropped) */
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
 * the last request holding it ends. When <t> has guardrails to compile, that happens on the
 * thread pool first and the switch follows (the current table serves meanwhile). */
void dp__worker_set_table(struct dp_worker *w, struct sy_table *t);

/* ---- governor.c: the node-wide governance state ------------------------------------------- */

enum dp_gov_refusal {
    DP_GOV_ADMITTED = 0,
    DP_GOV_CIRCUIT_OPEN, /* its circuit breaker does not admit traffic now */
    DP_GOV_RATE_LIMITED, /* at its rpm, tpm or concurrency limit */
    DP_GOV_UNSUPPORTED,  /* a format this build cannot speak */
    DP_GOV_REFUSAL_MAX,
};

/** What a request took from its client key's token limiters, settled when it ends. */
struct dp_key_grant {
    uint32_t tpm;       /* tokens reserved on the key's own tpm limiter */
    uint32_t model_tpm; /* ...and on the key's tpm limiter for the model */
    const struct sy_key_limit *limit; /* the key's limits on the model (borrowed), or NULL */
    uint32_t model_slot;
};

/** May client key <k> (may be NULL) make a request of about <est_tokens> to public model <m>
 * now? Takes from its rpm/tpm limiters and from those of its limits on <m>, recording the
 * tokens taken in *<grant>; when refused takes nothing, sets *<retry_after_ms> and *<which>
 * ("requests per minute", "tokens per minute on this model"). */
bool dp__gov_key_admits(struct dp_worker *w, const struct sy_key *k, const struct sy_model *m,
                        uint32_t est_tokens, struct dp_key_grant *grant, uint32_t *retry_after_ms,
                        const char **which);
/** Count a request against the retry budget of <w>. */
void dp__gov_request(struct dp_worker *w, const struct sy_policy *pol);
/** May a retry happen now (retries stay under pol->retry.budget_percent of requests)? Counts
 * the retry when it may. */
bool dp__gov_retry_allowed(struct dp_worker *w, const struct sy_policy *pol);
/** Could deployment <d> of model <m> take a request now? Sets *<near_limit> above the shed share
 * and *<retry_after> (ms) when rate-limited. Changes no state. */
enum dp_gov_refusal dp__gov_admits(struct dp_worker *w, const struct sy_table *t,
                                   const struct sy_deployment *d, const struct sy_model *m,
                                   uint32_t est_tokens, bool *near_limit, uint32_t *retry_after);
/** An attempt begins on <d>: take its rate tokens, a circuit probe if half open, raise its
 * in-flight count. Returns 0, or -EAGAIN (rate limited) / -EBUSY (circuit) when another worker
 * got there first; then nothing is held. *<probe> must go back to dp__gov_attempt_done. */
int dp__gov_attempt_start(struct dp_worker *w, const struct sy_deployment *d,
                          const struct sy_model *m, uint32_t est_tokens, bool *probe);
/** The attempt on <d> ended with <o>: circuit, counters, latency, decision log. */
void dp__gov_attempt_done(struct dp_worker *w, const struct sy_table *t,
                          const struct sy_deployment *d, const struct sy_model *m,
                          enum dp_outcome o, bool probe, uint32_t retry_after_ms,
                          uint64_t ttfb_ns, uint64_t total_ns, const struct sy_http_request *req,
                          uint32_t attempt, int status);
/** Requests in flight on <d> across the node; its recent time to first byte (µs). */
uint64_t dp__gov_inflight(struct dp_worker *w, const struct sy_deployment *d);
uint64_t dp__gov_ttfb_us(struct dp_worker *w, const struct sy_deployment *d);
/** The cost in millionths of the price currency of <prompt_tokens> and <completion_tokens> at
 * deployment <d>'s prices (0 for a NULL <d>). */
uint64_t dp__gov_cost(const struct sy_deployment *d, uint64_t prompt_tokens,
                      uint64_t completion_tokens);
/** A model call ended with <o>: count it on its public model <m>, its client key <k> and the
 * deployment <d> that answered (each may be NULL), with the tokens the provider reported and
 * their cost at <d>'s prices, the whole duration and the time to the client's first byte. */
void dp__gov_account(struct dp_worker *w, const struct sy_model *m, const struct sy_deployment *d,
                     const struct sy_key *k, enum sy_outcome o, uint64_t prompt_tokens,
                     uint64_t completion_tokens, uint64_t total_ns, uint64_t first_byte_ns);
/** What the request log records of a model call (dp__gov_reqlog). */
struct dp_reqlog_facts {
    const struct sy_model *model;    /* the public model asked for */
    const struct sy_deployment *dep; /* the one that answered last; NULL: none tried */
    const struct sy_key *key;        /* NULL: no key */
    enum sy_outcome outcome;
    int status; /* sent to the client */
    uint32_t attempts;
    bool stream;
    uint64_t prompt_tokens, completion_tokens;
    uint64_t total_ns, first_byte_ns; /* first_byte_ns 0: none */
    const struct sy_buf *resp;        /* the response body captured (NULL: bodies not logged) */
    uint64_t resp_size;               /* ...and its whole size */
};
/** Write a record of request <req> (its id and body, borrowed) served on table <t> to the
 * node's request-log ring, as <t>->request_log says: nothing when off, no bodies unless the
 * mode is bodies and <f>->resp is given. Never blocks; a full ring drops the record (counted). */
void dp__gov_reqlog(struct dp_worker *w, const struct sy_table *t,
                    const struct sy_http_request *req, const struct dp_reqlog_facts *f);
/** TPM reconciliation: the tokens reserved (estimated prompt plus max_tokens) on deployment <d>
 * and those key <k> was granted (<grant>) become the <actual> tokens the provider reported (0
 * for an attempt that failed): the difference is charged or given back. <d>, <k> and <grant>
 * may be NULL. */
void dp__gov_tpm_settle(struct dp_worker *w, const struct sy_deployment *d, const struct sy_key *k,
                        uint64_t reserved_dep, const struct dp_key_grant *grant, uint64_t actual);
/** The shared-memory outcome class of an attempt's outcome. */
enum sy_outcome dp__gov_outcome(enum dp_outcome o);
/** A decision worth the log: a retry, a fallback, a rule's route, a rejection. */
void dp__gov_event(struct dp_worker *w, const struct sy_http_request *req, enum sy_event_kind kind,
                   const struct sy_table *t, const struct sy_model *from,
                   const struct sy_model *to, const char *why, uint32_t ms);

/** A request ends (the server's on_request_done): if it was a model call, count it. */
void dp__proxy_request_done(struct sy_http_request *req);

/** Handle a complete request (proxy.c). Must end it with sy_http_resp_end/abort/send/error, or
 * be told through on_abort that the client left. */
void dp__handle_request(struct sy_http_request *req);

struct json_t;
/** Fill what routing rules read from the parsed request <root> (borrowed; <ctx> points into
 * it): message and user-turn counts, tools, images, the last user text and the prompt token
 * estimate. Exported for the fuzz target tests/fuzz/fuzz_json_request.c. */
void dp__route_ctx_fill(struct dp_route_ctx *ctx, struct json_t *root);
