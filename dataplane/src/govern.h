/* SPDX-License-Identifier: Apache-2.0 */
/** Governance decisions that do not touch the network: what an attempt's result means (outcome
 * class, retry and fallback triggers), how long to back off, which routing rule applies, which
 * deployment to try. The proxy (proxy.c) acts on them; shared state (circuits, rate limits,
 * in-flight counts) is read through the callbacks of struct dp_pick_env. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sy/http_server.h"
#include "sy/table-t.h"
#include "upstream.h"

/* Outcome classes of one attempt. X-macro: name, label for metrics and the trace header. */
#define DP_OUTCOMES(X)                                                                             \
    X(SUCCESS, "ok")                                                                               \
    X(CLIENT_ERROR, "4xx")                                                                         \
    X(CONTEXT_LENGTH, "context_length")                                                            \
    X(RATE_LIMITED, "429")                                                                         \
    X(SERVER_ERROR, "5xx")                                                                         \
    X(TIMEOUT, "timeout")                                                                          \
    X(CONNECT, "connect_error")                                                                    \
    X(MALFORMED, "malformed")                                                                      \
    X(CUT, "stream_cut")                                                                           \
    X(CANCELLED, "cancelled")

enum dp_outcome {
#define X(name, label) DP_OUT_##name,
    DP_OUTCOMES(X)
#undef X
        DP_OUT_MAX,
};

/** The label of <o> ("429", "timeout"...). */
const char *dp_outcome_label(enum dp_outcome o);

/** Classify an attempt: <err> from the upstream client (DP_UE_NONE for a complete response),
 * <status> of the response (0 if none), and its buffered <body> (for context-length errors and
 * malformed JSON; may be NULL). <json_expected>: a 200 must be a JSON document. */
enum dp_outcome dp_classify(enum dp_upstream_error err, int status, const char *body, size_t len,
                            bool json_expected);

/** The SY_TRIGGER_* bit <o> (with <status>) sets, or 0 for an outcome that never triggers
 * (success, an ordinary 4xx). A status listed in <pol>->statuses sets SY_TRIGGER_STATUS too. */
uint32_t dp_outcome_triggers(enum dp_outcome o, int status, const struct sy_policy *pol);

/** Failure for the circuit breaker: a 5xx, timeout, connection error, malformed body or cut
 * stream (a 429 is a cool-down, a 4xx is the client's fault). */
bool dp_outcome_is_failure(enum dp_outcome o);

/** Backoff before retry number <retry_no> (1 for the first retry): full jitter over
 * min(max_backoff, backoff * 2^(retry_no-1)), using <rnd>; a Retry-After of <retry_after_ms>
 * (0: none) wins when larger, capped by the policy's retry_after_cap_ms. */
uint32_t dp_backoff_ms(const struct sy_retry_policy *r, uint32_t retry_no, uint32_t retry_after_ms,
                       uint64_t rnd);

/** Parse a Retry-After value (delta-seconds, or an HTTP date) into milliseconds from now; 0 when
 * absent or unparsable. */
uint32_t dp_retry_after_ms(const char *v, size_t len);

/** What routing rules look at. The complexity score is computed on first use. */
struct dp_route_ctx {
    const struct sy_http_request *req;
    const struct sy_key *key;
    uint32_t est_tokens;
    uint32_t n_messages;
    uint32_t n_user_turns;
    bool has_tools;
    bool has_images;
    const char *text; /* the last user message (and system prompt), for the classifier */
    size_t text_len;
    int32_t complexity_milli; /* -1 until computed */
};

/** The first rule of <pol> whose conditions all hold for <ctx>, or NULL. */
const struct sy_rule *dp_route_rules(const struct sy_policy *pol, struct dp_route_ctx *ctx);

/** Per-attempt view of a deployment's shared state, supplied by the caller. */
struct dp_pick_env {
    /* May <d> take a request now (enabled, circuit admits, rate room)? Sets *<near_limit> when it
     * is above the policy's shed share of its limits. */
    bool (*admits)(void *ud, const struct sy_deployment *d, bool *near_limit);
    uint64_t (*inflight)(void *ud, const struct sy_deployment *d);
    uint64_t (*ttfb_us)(void *ud, const struct sy_deployment *d);
    void *ud;
};

/** Pick a deployment among <targets>/<n> of <t> by <balance>, skipping those in <exclude> (a bit
 * per target index; targets beyond 64 are never excluded) and those <env> does not admit.
 * Deployments near their limit are chosen only when no other candidate is left. <rnd> drives
 * weighted and random choices, <rr> rotates round robin. Returns the target index or -1. */
int dp_pick(const struct sy_table *t, const struct sy_target *targets, uint32_t n,
            enum sy_balance balance, uint64_t exclude, const struct dp_pick_env *env, uint64_t rnd,
            uint64_t rr);

/** A fast per-worker random number generator (xorshift64*); <state> must be nonzero. */
static inline uint64_t dp_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}
