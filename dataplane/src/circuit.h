/* SPDX-License-Identifier: Apache-2.0 */
/** Circuit breaker of a deployment, one per node, in shared memory: every worker of the node
 * sees and moves the same state. No locks: each transition is one CAS on the packed word of
 * struct sy_shm_circuit (sy/shm-t.h), so two workers racing to make the same transition make it
 * once, and the loser learns it happened.
 *
 *   closed --(error rate over the window, or N failures in a row)--> open
 *   closed --(429: cool down for Retry-After)-----------------------> open
 *   open ----(cooldown over: the next allow)------------------------> half open (a probe)
 *   half open --(success)--> closed (window and failure run reset)
 *   half open --(failure or 429)--> open again (reopened)
 *
 * All times are monotonic milliseconds supplied by the caller, so tests inject the clock. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "sy/shm-t.h"

/** What a finished attempt tells the breaker. */
enum dp_circuit_outcome {
    DP_CIRCUIT_SUCCESS = 0,  /* a response the provider meant: 2xx, and 4xx other than 429 */
    DP_CIRCUIT_FAILURE,      /* 5xx, timeout, connect error, malformed response */
    DP_CIRCUIT_RATE_LIMITED, /* 429: cools down, is not an error-rate failure */
    DP_CIRCUIT_OUTCOME_MAX,
};

/** Transitions, for the caller's log line and event: enum name, label. */
#define DP_CIRCUIT_TRANSITION_MAP(X)                                                               \
    X(NONE, "none")                                                                                \
    X(OPENED, "opened")           /* closed -> open */                                             \
    X(HALF_OPENED, "half_opened") /* open -> half open: this caller holds a probe */               \
    X(CLOSED, "closed")           /* half open -> closed */                                        \
    X(REOPENED, "reopened")       /* half open -> open */

enum dp_circuit_transition {
#define DP__X(name, label) DP_CIRCUIT_##name,
    DP_CIRCUIT_TRANSITION_MAP(DP__X)
#undef DP__X
        DP_CIRCUIT_TRANSITION_MAX,
};

/** Tuning of a deployment's breaker; dp_circuit_settings_default() gives the defaults below,
 * which are what a deployment with no policy gets. A zero trigger is off. */
struct dp_circuit_settings {
    uint32_t window_ms;            /* 30000: error-rate window, in 1 s buckets, at most 60000 */
    uint32_t min_volume;           /* 20: fewer requests in the window never trip the rate */
    uint32_t error_rate_pct;       /* 50: open when failures >= this % of the window; 0 = off */
    uint32_t consecutive_failures; /* 5: open after this many failures in a row; 0 = off */
    uint32_t cooldown_ms;          /* 30000: how long it stays open before probing */
    uint32_t half_open_probes;     /* 2: probes let through at once when half open (1..63) */
    uint32_t probe_timeout_ms;     /* 120000: a probe that has not reported by then (its worker
                                    * died, or it was cancelled unreported) frees its place */
    uint32_t max_retry_after_ms;   /* 60000: cap on the cooldown a 429's Retry-After asks for */
    uint32_t rate_limited_ms;      /* 1000: cooldown of a 429 without Retry-After */
};

/** Fill <s> with the defaults. */
void dp_circuit_settings_default(struct dp_circuit_settings *s);

/** May an attempt go to the deployment of <c> at <now_ms>? Closed: yes. Open: no, until the
 * cooldown is over; then the first caller moves it to half open and gets the first probe
 * (*<tr> = DP_CIRCUIT_HALF_OPENED). Half open: yes for at most <s>->half_open_probes callers at
 * once. *<probe> says whether the caller holds a probe: it must then report it with
 * dp_circuit_record(), or dp_circuit_release() if the attempt never ran. <tr> may be NULL. */
bool dp_circuit_allow(struct sy_shm_circuit *c, uint64_t now_ms,
                      const struct dp_circuit_settings *s, bool *probe,
                      enum dp_circuit_transition *tr);

/** Would dp_circuit_allow() let an attempt through now? No state changes: for choosing among
 * candidates before committing to one. */
bool dp_circuit_available(const struct sy_shm_circuit *c, uint64_t now_ms,
                          const struct dp_circuit_settings *s);

/** Report how an attempt on <c> ended at <now_ms>. <retry_after_ms> is the provider's
 * Retry-After for a 429 (0: none given), capped by <s>->max_retry_after_ms. Returns the
 * transition this call made, if any; when two workers race, only one of them sees it. */
enum dp_circuit_transition dp_circuit_record(struct sy_shm_circuit *c, uint64_t now_ms,
                                             const struct dp_circuit_settings *s,
                                             enum dp_circuit_outcome outcome,
                                             uint32_t retry_after_ms);

/** Give back a probe whose attempt never reached the deployment (cancelled by the client,
 * refused by a rate limiter first). A no-op unless <probe> and the circuit is half open. */
void dp_circuit_release(struct sy_shm_circuit *c, bool probe);

/** The state of <c> now, for metrics and the admin API. */
static inline enum sy_circuit_state dp_circuit_state(const struct sy_shm_circuit *c)
{
    return (enum sy_circuit_state)(atomic_load_explicit(&c->word, memory_order_relaxed) & 3);
}

/** Label of transition <t>. */
const char *dp_circuit_transition_label(enum dp_circuit_transition t);
