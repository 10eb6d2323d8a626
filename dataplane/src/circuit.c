/* SPDX-License-Identifier: Apache-2.0 */
/* Circuit breaker of a deployment in shared memory (see circuit.h for the state machine and
 * sy/shm-t.h for the packed word).
 *
 * The closed path, which is every request of a healthy deployment, costs one load in allow and,
 * in record, one CAS on the current second's window bucket (plus a store that resets the run
 * of failures, only when there was one). The window's sum is computed only when a failure
 * could open the circuit. */
#include "circuit.h"

#include "sy/shm.h"
#include "sy/util.h"

/* ---- the error-rate window ----------------------------------------------------------------- */

/* A bucket: {second (28 bits) | requests (18) | failures (18)}. The counts saturate, which
 * only matters above 262143 requests a second to one deployment. */
#define SEC_BITS   28
#define COUNT_BITS 18
#define COUNT_MAX  ((UINT64_C(1) << COUNT_BITS) - 1)
#define SEC_MASK   ((UINT64_C(1) << SEC_BITS) - 1)

static uint64_t bucket_sec(uint64_t b)
{
    return b >> (2 * COUNT_BITS);
}

static uint64_t bucket_total(uint64_t b)
{
    return (b >> COUNT_BITS) & COUNT_MAX;
}

static uint64_t bucket_failures(uint64_t b)
{
    return b & COUNT_MAX;
}

static uint32_t window_buckets(const struct dp_circuit_settings *s)
{
    uint32_t n = (s->window_ms + 999) / 1000;
    /* at most 60 of the 64 buckets, so the oldest counted second is never the one being
     * overwritten by a new second */
    return n < 1 ? 1 : n > 60 ? 60 : n;
}

/* Count one request (a failure or not) in the bucket of <now_ms>. */
static void window_add(struct sy_shm_circuit *c, uint64_t now_ms, bool failure)
{
    uint64_t sec = (now_ms / 1000) & SEC_MASK;
    _Atomic uint64_t *slot = &c->window[(now_ms / 1000) % SY_CIRCUIT_BUCKETS];
    uint64_t b = atomic_load_explicit(slot, memory_order_relaxed);
    uint64_t nb;
    do {
        uint64_t total = 0, fails = 0;
        if (bucket_sec(b) == sec) {
            total = bucket_total(b);
            fails = bucket_failures(b);
        } else if (b != 0 && ((sec - bucket_sec(b)) & SEC_MASK) > (1u << (SEC_BITS - 1))) {
            return; /* a worker with a clock ahead already moved the bucket to a later second */
        }
        total += total < COUNT_MAX;
        fails += failure && fails < COUNT_MAX;
        nb = sec << (2 * COUNT_BITS) | total << COUNT_BITS | fails;
    } while (!atomic_compare_exchange_weak_explicit(slot, &b, nb, memory_order_relaxed,
                                                    memory_order_relaxed));
}

/* Sum the last <n> seconds (the current one included) of the window. */
static void window_sum(const struct sy_shm_circuit *c, uint64_t now_ms, uint32_t n, uint64_t *total,
                       uint64_t *failures)
{
    uint64_t now_sec = now_ms / 1000;
    *total = *failures = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t sec = now_sec - i;
        uint64_t b =
            atomic_load_explicit(&c->window[sec % SY_CIRCUIT_BUCKETS], memory_order_relaxed);
        if (bucket_sec(b) != (sec & SEC_MASK) || b == 0)
            continue;
        *total += bucket_total(b);
        *failures += bucket_failures(b);
    }
}

static void window_reset(struct sy_shm_circuit *c)
{
    for (int i = 0; i < SY_CIRCUIT_BUCKETS; i++)
        atomic_store_explicit(&c->window[i], 0, memory_order_relaxed);
    atomic_store_explicit(&c->consecutive, 0, memory_order_relaxed);
}

/* ---- the state machine --------------------------------------------------------------------- */

void dp_circuit_settings_default(struct dp_circuit_settings *s)
{
    *s = (struct dp_circuit_settings){
        .window_ms = 30000,
        .min_volume = 20,
        .error_rate_pct = 50,
        .consecutive_failures = 5,
        .cooldown_ms = 30000,
        .half_open_probes = 2,
        .probe_timeout_ms = 120000,
        .max_retry_after_ms = 60000,
        .rate_limited_ms = 1000,
    };
}

static uint32_t max_probes(const struct dp_circuit_settings *s)
{
    uint32_t p = s->half_open_probes;
    return p < 1 ? 1 : p > SY_CIRCUIT_PROBES_MAX ? SY_CIRCUIT_PROBES_MAX : p;
}

/* The word of a new state after <w>: the transition count moves on. */
static uint64_t next(uint64_t w, enum sy_circuit_state st, uint32_t probes, uint64_t until)
{
    return sy_circuit_word(st, probes, until, sy_circuit_word_seq(w) + 1);
}

static bool cas(struct sy_shm_circuit *c, uint64_t *w, uint64_t nw)
{
    return atomic_compare_exchange_strong_explicit(&c->word, w, nw, memory_order_acq_rel,
                                                   memory_order_acquire);
}

bool dp_circuit_allow(struct sy_shm_circuit *c, uint64_t now_ms,
                      const struct dp_circuit_settings *s, bool *probe,
                      enum dp_circuit_transition *tr)
{
    uint64_t w = atomic_load_explicit(&c->word, memory_order_acquire);
    *probe = false;
    if (tr)
        *tr = DP_CIRCUIT_NONE;
    for (;;) {
        uint64_t until = sy_circuit_word_until(w);
        switch (sy_circuit_word_state(w)) {
        case SY_CIRCUIT_CLOSED:
            return true;
        case SY_CIRCUIT_OPEN:
            if (now_ms < until)
                return false;
            if (cas(c, &w, next(w, SY_CIRCUIT_HALF_OPEN, 1, now_ms + s->probe_timeout_ms))) {
                *probe = true;
                if (tr)
                    *tr = DP_CIRCUIT_HALF_OPENED;
                return true;
            }
            break;
        case SY_CIRCUIT_HALF_OPEN: {
            uint32_t p = sy_circuit_word_probes(w);
            uint64_t nw;
            if (p < max_probes(s))
                nw = sy_circuit_word(SY_CIRCUIT_HALF_OPEN, p + 1, until, sy_circuit_word_seq(w));
            else if (now_ms >= until) /* the probes in flight are presumed lost */
                nw = sy_circuit_word(SY_CIRCUIT_HALF_OPEN, 1, now_ms + s->probe_timeout_ms,
                                     sy_circuit_word_seq(w));
            else
                return false;
            if (cas(c, &w, nw)) {
                *probe = true;
                return true;
            }
            break;
        }
        default: /* a torn or foreign word cannot happen; treat it as closed, safely */
            return true;
        }
    }
}

bool dp_circuit_available(const struct sy_shm_circuit *c, uint64_t now_ms,
                          const struct dp_circuit_settings *s)
{
    uint64_t w = atomic_load_explicit(&c->word, memory_order_acquire);
    switch (sy_circuit_word_state(w)) {
    case SY_CIRCUIT_OPEN:
        return now_ms >= sy_circuit_word_until(w);
    case SY_CIRCUIT_HALF_OPEN:
        return sy_circuit_word_probes(w) < max_probes(s) || now_ms >= sy_circuit_word_until(w);
    default:
        return true;
    }
}

/* Should a failure just counted (the <run>th in a row) open a closed circuit? */
static bool should_trip(const struct sy_shm_circuit *c, uint64_t now_ms,
                        const struct dp_circuit_settings *s, uint64_t run)
{
    if (s->consecutive_failures && run >= s->consecutive_failures)
        return true;
    if (!s->error_rate_pct)
        return false;
    uint64_t total, failures;
    window_sum(c, now_ms, window_buckets(s), &total, &failures);
    return total >= s->min_volume && total > 0 && failures * 100 >= total * s->error_rate_pct;
}

enum dp_circuit_transition dp_circuit_record(struct sy_shm_circuit *c, uint64_t now_ms,
                                             const struct dp_circuit_settings *s,
                                             enum dp_circuit_outcome outcome,
                                             uint32_t retry_after_ms)
{
    uint64_t w = atomic_load_explicit(&c->word, memory_order_acquire);
    switch (outcome) {
    case DP_CIRCUIT_SUCCESS:
        for (;;) {
            switch (sy_circuit_word_state(w)) {
            case SY_CIRCUIT_HALF_OPEN:
                if (cas(c, &w, next(w, SY_CIRCUIT_CLOSED, 0, 0))) {
                    window_reset(c);
                    return DP_CIRCUIT_CLOSED;
                }
                continue;
            case SY_CIRCUIT_OPEN:
                /* an attempt that began before the trip: no evidence the deployment is back */
                return DP_CIRCUIT_NONE;
            default:
                window_add(c, now_ms, false);
                if (atomic_load_explicit(&c->consecutive, memory_order_relaxed))
                    atomic_store_explicit(&c->consecutive, 0, memory_order_relaxed);
                return DP_CIRCUIT_NONE;
            }
        }
    case DP_CIRCUIT_FAILURE:
        for (;;) {
            switch (sy_circuit_word_state(w)) {
            case SY_CIRCUIT_HALF_OPEN:
                if (cas(c, &w, next(w, SY_CIRCUIT_OPEN, 0, now_ms + s->cooldown_ms)))
                    return DP_CIRCUIT_REOPENED;
                continue;
            case SY_CIRCUIT_OPEN:
                return DP_CIRCUIT_NONE;
            default: {
                window_add(c, now_ms, true);
                uint64_t run =
                    atomic_fetch_add_explicit(&c->consecutive, 1, memory_order_relaxed) + 1;
                if (!should_trip(c, now_ms, s, run))
                    return DP_CIRCUIT_NONE;
                /* One CAS: if another worker tripped it (or anything moved) first, it is
                 * their transition, not ours. */
                if (!cas(c, &w, next(w, SY_CIRCUIT_OPEN, 0, now_ms + s->cooldown_ms)))
                    return DP_CIRCUIT_NONE;
                atomic_store_explicit(&c->consecutive, 0, memory_order_relaxed);
                return DP_CIRCUIT_OPENED;
            }
            }
        }
    case DP_CIRCUIT_RATE_LIMITED: {
        uint64_t cool =
            retry_after_ms ? SY_MIN(retry_after_ms, s->max_retry_after_ms) : s->rate_limited_ms;
        uint64_t until = now_ms + cool;
        for (;;) {
            switch (sy_circuit_word_state(w)) {
            case SY_CIRCUIT_OPEN:
                /* already cooling down: stretch the cooldown if this 429 asks for longer */
                if (sy_circuit_word_until(w) >= until)
                    return DP_CIRCUIT_NONE;
                if (cas(c, &w, sy_circuit_word(SY_CIRCUIT_OPEN, 0, until, sy_circuit_word_seq(w))))
                    return DP_CIRCUIT_NONE;
                continue;
            case SY_CIRCUIT_HALF_OPEN:
                if (cas(c, &w, next(w, SY_CIRCUIT_OPEN, 0, until)))
                    return DP_CIRCUIT_REOPENED;
                continue;
            default:
                if (cas(c, &w, next(w, SY_CIRCUIT_OPEN, 0, until)))
                    return DP_CIRCUIT_OPENED;
                continue;
            }
        }
    }
    default:
        return DP_CIRCUIT_NONE;
    }
}

void dp_circuit_release(struct sy_shm_circuit *c, bool probe)
{
    if (!probe)
        return;
    uint64_t w = atomic_load_explicit(&c->word, memory_order_acquire);
    while (sy_circuit_word_state(w) == SY_CIRCUIT_HALF_OPEN && sy_circuit_word_probes(w) > 0) {
        uint64_t nw = sy_circuit_word(SY_CIRCUIT_HALF_OPEN, sy_circuit_word_probes(w) - 1,
                                      sy_circuit_word_until(w), sy_circuit_word_seq(w));
        if (cas(c, &w, nw))
            return;
    }
}

static const char *const transition_labels[] = {
#define DP__X(name, label) label,
    DP_CIRCUIT_TRANSITION_MAP(DP__X)
#undef DP__X
};

const char *dp_circuit_transition_label(enum dp_circuit_transition t)
{
    return (unsigned)t < DP_CIRCUIT_TRANSITION_MAX ? transition_labels[t] : "unknown";
}
