/* SPDX-License-Identifier: Apache-2.0 */
/** The node-wide shared-memory segment: its layout, and nothing else (functions in shm.h).
 *
 * One segment per node, a file (normally in /dev/shm) created by the data-plane master and
 * mapped by every worker and by the control plane. Everything in it is found from the header
 * by offset, never by pointer, because each process maps it at its own address.
 *
 *   +----------------------------+ 0
 *   | struct sy_shm_header       |   magic, version, sizes, generation, capacities, offsets
 *   +----------------------------+ off_workers
 *   | sy_shm_worker[max_workers] |   pid, heartbeat, table version, start time per worker
 *   +----------------------------+ off_deployments
 *   | sy_shm_dep_state[max_dep]  |   circuit, window, in flight, TTFB EWMA, RPM/TPM limiters
 *   +----------------------------+ off_models
 *   | sy_shm_model_state[max_m]  |   slot generation
 *   +----------------------------+ off_keys
 *   | sy_shm_key_state[max_keys] |   slot generation, RPM/TPM limiters
 *   +----------------------------+ off_key_models
 *   | sy_shm_key_model[entries]  |   open-addressing table (key slot, model slot) -> limiters
 *   +----------------------------+ off_events
 *   | sy_shm_event_ring          |   positions, drop counters
 *   | sy_shm_event_cell[cells]   |   256-byte cells of the decision log
 *   +----------------------------+ off_shards
 *   | shard 0: dep, model, key   |   counters written only by worker 0
 *   | shard 1 ...                |   (shard_stride bytes each, max_workers of them)
 *   +----------------------------+ off_budgets
 *   | sy_shm_budget[max_budgets] |   spend of the current period per budget (one line each)
 *   +----------------------------+ size
 *
 * Every block starts on a 64-byte line, and state that different workers write at different
 * moments sits on different lines.
 *
 * ANY CHANGE to a struct, an enum used in the segment (outcomes, counters, event kinds,
 * reasons), the histogram buckets (their number or hist.h's bounds), the packing of a circuit or
 * limiter word, or the order of the blocks needs SY_SHM_VERSION bumped: a process
 * of the old release must refuse the new segment rather than read it wrong. */
#pragma once

#include <assert.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** "SYSHMSEG" read as a little-endian 64-bit number. */
#define SY_SHM_MAGIC UINT64_C(0x4745534d48535953)
/** Layout version: bump on any change (see above). */
#define SY_SHM_VERSION 2u

/** "No slot", for an event that concerns no model, deployment or key. */
#define SY_SHM_NO_SLOT UINT32_MAX

/* Default capacities, used for a zero field of struct sy_shm_caps. With them the segment is
 * 23.5 MiB: 19 MiB of counter shards (608 KiB per worker), a 4 MiB event ring, 0.5 MiB of
 * shared state; sy_shm_create() allocates all of it up front, so a /dev/shm that is too
 * small fails at start-up, never with SIGBUS in a worker. Docker's default /dev/shm is 64 MiB. */
#define SY_SHM_DEFAULT_WORKERS     32u
#define SY_SHM_DEFAULT_DEPLOYMENTS 256u
#define SY_SHM_DEFAULT_MODELS      256u
#define SY_SHM_DEFAULT_KEYS        1024u
#define SY_SHM_DEFAULT_KEY_MODELS  4096u  /* rounded up to a power of two */
#define SY_SHM_DEFAULT_EVENTS      16384u /* rounded up to a power of two */
#define SY_SHM_DEFAULT_BUDGETS     256u

/** How many objects of each kind the segment has room for. */
struct sy_shm_caps {
    uint32_t max_workers;
    uint32_t max_deployments;
    uint32_t max_models;
    uint32_t max_keys;
    uint32_t key_model_entries; /* power of two */
    uint32_t event_cells;       /* power of two */
    uint32_t max_budgets;
};

/** The kinds of object that own a slot. */
enum sy_shm_kind {
    SY_SHM_DEPLOYMENT = 0,
    SY_SHM_MODEL,
    SY_SHM_KEY,
    SY_SHM_KIND_MAX,
};

/* ---- outcome classes and counters ---------------------------------------------------------- */

/** How a request (or an attempt, for deployments) ended: enum name, metric label. */
#define SY_OUTCOME_MAP(X)                                                                          \
    X(SUCCESS, "success")               /* 2xx from the provider */                                \
    X(CLIENT_ERROR, "client_error")     /* refused before routing: bad JSON, unknown model, key */ \
    X(UPSTREAM_4XX, "upstream_4xx")     /* a provider 4xx other than 429 */                        \
    X(UPSTREAM_5XX, "upstream_5xx")     /* a provider 5xx */                                       \
    X(UPSTREAM_429, "upstream_429")     /* the provider rate-limited us */                         \
    X(TIMEOUT, "timeout")               /* connect, first-byte, idle or total timeout */           \
    X(CONNECT_ERROR, "connect_error")   /* refused, reset, DNS, TLS */                             \
    X(PROTOCOL_ERROR, "protocol_error") /* malformed upstream response */                          \
    X(STREAM_CUT, "stream_cut")         /* a stream broken after content went out */               \
    X(CANCELLED, "cancelled")           /* the client went away */                                 \
    X(RATE_LIMITED, "rate_limited")     /* refused by our own RPM/TPM limits */                    \
    X(UNAVAILABLE, "unavailable")       /* no deployment could take it (circuits open) */          \
    X(GUARDRAIL, "guardrail")           /* blocked by a guardrail */                               \
    X(INTERNAL, "internal_error")       /* a bug or resource exhaustion in the gateway */

enum sy_outcome {
#define SY__X(name, label) SY_OUTCOME_##name,
    SY_OUTCOME_MAP(SY__X)
#undef SY__X
        SY_OUTCOME_MAX,
};

/** Scalar counters besides the requests by outcome: enum name, metric name, help text. */
#define SY_CTR_MAP(X)                                                                              \
    X(IN_FLIGHT, "in_flight", "Requests in flight (a gauge)")                                      \
    X(RETRIES, "retries_total", "Attempts retried on the same target")                             \
    X(FALLBACKS, "fallbacks_total", "Moves to another target or model")                            \
    X(RATE_LIMITED, "rate_limit_rejections_total", "Requests or attempts refused by a limiter")    \
    X(PROMPT_TOKENS, "prompt_tokens_total", "Prompt tokens reported by providers")                 \
    X(COMPLETION_TOKENS, "completion_tokens_total", "Completion tokens reported by providers")     \
    X(COST_MICROS, "cost_micros_total", "Cost in millionths of the price currency")                \
    X(CIRCUIT_OPENS, "circuit_opens_total", "Circuit transitions to open (deployments)")

enum sy_ctr {
#define SY__X(name, metric, help) SY_CTR_##name,
    SY_CTR_MAP(SY__X)
#undef SY__X
        SY_CTR_MAX,
};

/** Counters of one object in one worker's shard. Bumped with relaxed atomic adds. */
struct sy_shm_counters {
    _Atomic uint64_t requests[SY_OUTCOME_MAX];
    _Atomic uint64_t ctr[SY_CTR_MAX];
};

/** Buckets of a latency histogram: the scheme of sy/hist.h (SY_HIST_BUCKETS, checked equal in
 * shm.h), repeated here so that this file includes no functions. */
#define SY_SHM_HIST_BUCKETS 40

/** A latency histogram (hist.h): a count per bucket and the sum of the samples. */
struct sy_shm_hist {
    _Atomic uint64_t bucket[SY_SHM_HIST_BUCKETS];
    _Atomic uint64_t sum_us;
};

/** Which histogram of a deployment or model. */
enum sy_shm_hist_kind {
    SY_HIST_LATENCY = 0, /* request start to last byte */
    SY_HIST_TTFB,        /* request start to first byte (time to first token for streams) */
    SY_HIST_KIND_MAX,
};

/** Counters of a deployment or a public model in one shard. */
struct sy_shm_obj_counters {
    alignas(64) struct sy_shm_counters c;
    struct sy_shm_hist hist[SY_HIST_KIND_MAX];
};

/** Counters of a client key in one shard: no histograms. */
struct sy_shm_key_counters {
    alignas(64) struct sy_shm_counters c;
};

/* ---- header and worker slots --------------------------------------------------------------- */

/** The segment header, at offset 0. <magic> is stored last, with release ordering, so a
 * process that reads the magic with acquire ordering sees the rest filled in. */
struct sy_shm_header {
    alignas(64) _Atomic uint64_t magic;
    uint32_t version;     /* SY_SHM_VERSION */
    uint32_t header_size; /* sizeof(struct sy_shm_header) */
    uint64_t size;        /* the whole segment in bytes; the file is exactly this long */
    uint64_t generation;  /* unique per creation: a reader that sees it change knows the
                           * counters restarted from zero (watermarks must be reset) */
    uint64_t created_ms;  /* wall clock */
    struct sy_shm_caps caps;
    /* offsets from the start of the segment */
    uint64_t off_workers;
    uint64_t off_deployments;
    uint64_t off_models;
    uint64_t off_keys;
    uint64_t off_key_models;
    uint64_t off_events;
    uint64_t off_shards;
    uint64_t shard_stride; /* bytes per worker shard */
    /* the shard layout: deployments, then models, then keys */
    uint64_t shard_off_models;
    uint64_t shard_off_keys;
    uint64_t off_budgets;
    /* 1 + the highest worker index ever started: readers sum shards [0, workers_seen) and
     * skip the shards no worker ever used */
    alignas(64) _Atomic uint32_t workers_seen;
};

/** A worker's slot; written by that worker (and by the master when it starts or reaps it). */
struct sy_shm_worker {
    alignas(64) _Atomic int32_t pid; /* 0: free */
    _Atomic uint64_t heartbeat_ms;   /* monotonic clock */
    _Atomic uint64_t table_version;  /* routing table the worker serves */
    _Atomic uint64_t started_ms;     /* monotonic clock */
};

/* ---- per-deployment, per-model and per-key shared state ------------------------------------ */

/** Buckets of the circuit's error-rate window: one per second, so windows up to 60 s. */
#define SY_CIRCUIT_BUCKETS 64

/** A circuit breaker's state, shared by every worker of the node (dataplane/src/circuit.c).
 *
 * <word> packs the whole state machine into 64 bits so that each transition is one CAS:
 *   bits  0..1   state (enum sy_circuit_state)
 *   bits  2..7   half-open probes in flight
 *   bits  8..47  until: open -> end of the cooldown; half open -> probe deadline (ms, monotonic)
 *   bits 48..63  transition count, wrapping: makes every transition a new value
 * A zero word is a closed circuit, so a zeroed slot is ready.
 *
 * Each <window> bucket packs {second (28 bits), requests (18), failures (18)}; a bucket whose
 * second is not one of the last window seconds is stale and counts as empty. */
struct sy_shm_circuit {
    alignas(64) _Atomic uint64_t word;
    _Atomic uint64_t consecutive; /* failures in a row, reset by a success */
    alignas(64) _Atomic uint64_t window[SY_CIRCUIT_BUCKETS];
};

/** States of a circuit: enum name, metric label. */
#define SY_CIRCUIT_STATE_MAP(X) X(CLOSED, "closed") X(OPEN, "open") X(HALF_OPEN, "half_open")

enum sy_circuit_state {
#define SY__X(name, label) SY_CIRCUIT_##name,
    SY_CIRCUIT_STATE_MAP(SY__X)
#undef SY__X
        SY_CIRCUIT_STATE_MAX,
};

/** Shared state of a deployment. */
struct sy_shm_dep_state {
    /* read on every pick, written on every request */
    alignas(64) _Atomic uint64_t generation; /* owner of the slot (sy_shm_slot_reset) */
    _Atomic uint64_t in_flight;              /* all workers' requests on it now (least-conns) */
    _Atomic uint64_t ttfb_ewma_us;           /* time to first byte, EWMA 1/8 (latency LB) */
    /* GCRA limiter words (dataplane/src/ratelimit.c): theoretical arrival time in ns */
    alignas(64) _Atomic uint64_t rpm;
    _Atomic uint64_t tpm;
    struct sy_shm_circuit circuit;
};

/** Shared state of a public model. */
struct sy_shm_model_state {
    alignas(64) _Atomic uint64_t generation;
};

/** Shared state of a client key. */
struct sy_shm_key_state {
    alignas(64) _Atomic uint64_t generation;
    _Atomic uint64_t rpm; /* GCRA words, as for deployments */
    _Atomic uint64_t tpm;
};

/** An entry of the per-key-per-model limiter table: open addressing with linear probing,
 * keyed by <tag> = (key slot + 1) << 32 | model slot, claimed once by CAS from 0 and never
 * freed (a key's entries are zeroed, not removed, when its slot is reset). */
struct sy_shm_key_model {
    alignas(64) _Atomic uint64_t tag;
    _Atomic uint64_t rpm;
    _Atomic uint64_t tpm;
};

/* ---- the decision log ---------------------------------------------------------------------- */

/** What an event records: enum name, label (the `kind` column and query parameter). */
#define SY_EVENT_KIND_MAP(X)                                                                       \
    X(ATTEMPT, "attempt")           /* one try at a deployment, with its outcome */                \
    X(RETRY, "retry")               /* another try at the same target */                           \
    X(FALLBACK, "fallback")         /* moving to another target or model */                        \
    X(CIRCUIT, "circuit")           /* a circuit transition; reason says which */                  \
    X(RATE_LIMITED, "rate_limited") /* a limiter refused a request or skipped a deployment */      \
    X(SHED, "shed")                 /* a deployment near its limit passed traffic on */            \
    X(GUARDRAIL, "guardrail")       /* a guardrail blocked or rewrote something */                 \
    X(CONFIG, "config")             /* a worker switched routing table */                          \
    X(WORKER, "worker")             /* a worker started, died or was replaced */                   \
    X(BUDGET, "budget")             /* a spend budget crossed its soft threshold or ran out */

enum sy_event_kind {
#define SY__X(name, label) SY_EVENT_##name,
    SY_EVENT_KIND_MAP(SY__X)
#undef SY__X
        SY_EVENT_KIND_MAX,
};

/** Why: a finer reason than the outcome. */
#define SY_REASON_MAP(X)                                                                           \
    X(NONE, "")                                                                                    \
    X(CIRCUIT_ERROR_RATE, "circuit_error_rate")   /* opened: error rate over the window */         \
    X(CIRCUIT_CONSECUTIVE, "circuit_consecutive") /* opened: N failures in a row */                \
    X(CIRCUIT_RETRY_AFTER, "circuit_retry_after") /* opened: a 429 cools it down */                \
    X(CIRCUIT_HALF_OPEN, "circuit_half_open")     /* cooldown over, probing */                     \
    X(CIRCUIT_CLOSED, "circuit_closed")           /* a probe succeeded */                          \
    X(CIRCUIT_REOPENED, "circuit_reopened")       /* a probe failed */                             \
    X(CIRCUIT_OPEN, "circuit_open")               /* skipped: circuit open */                      \
    X(RPM, "rpm")                                 /* a requests-per-minute limit */                \
    X(TPM, "tpm")                                 /* a tokens-per-minute limit */                  \
    X(RETRY_BUDGET, "retry_budget")               /* no retry: the budget is spent */              \
    X(CONTEXT_LENGTH, "context_length")           /* fallback on a context-length 400 */           \
    X(TRIGGER, "trigger")                         /* fallback on a configured trigger */           \
    X(BUDGET_SOFT, "soft")                        /* a budget's spend crossed soft_percent */      \
    X(BUDGET_EXHAUSTED, "exhausted")              /* a budget's spend reached its amount */

enum sy_reason {
#define SY__X(name, label) SY_REASON_##name,
    SY_REASON_MAP(SY__X)
#undef SY__X
        SY_REASON_MAX,
};

/** Length of a request id, with its NUL (as struct sy_http_request's id). */
#define SY_EVENT_REQUEST_ID_LEN 40
/** Length of an event's free text, with its NUL. */
#define SY_EVENT_TEXT_LEN 160

/** One record of the decision log: 248 bytes, so that with its sequence number a ring cell is
 * 256 bytes (four cache lines). */
struct sy_shm_event {
    uint64_t ts_ms;         /* wall clock */
    uint64_t table_version; /* the routing table the decision was made on */
    uint16_t kind;          /* enum sy_event_kind */
    uint16_t outcome;       /* enum sy_outcome; SY_OUTCOME_MAX for none */
    uint16_t reason;        /* enum sy_reason */
    uint16_t status;        /* HTTP status, 0 for none */
    uint32_t worker;        /* worker index, the producer */
    uint32_t model_slot;    /* SY_SHM_NO_SLOT for none, like the two below */
    uint32_t deployment_slot;
    uint32_t key_slot;
    uint32_t duration_ms; /* of the attempt, or the cooldown of a circuit that opened */
    uint32_t attempt;     /* 1 for the first try */
    char request_id[SY_EVENT_REQUEST_ID_LEN];
    char text[SY_EVENT_TEXT_LEN]; /* NUL-terminated; never a secret or a prompt */
};

/** A cell of the ring: the record and its sequence number (Vyukov's bounded queue). */
struct sy_shm_event_cell {
    alignas(64) _Atomic uint64_t seq;
    struct sy_shm_event ev;
};

/** The ring's control block, followed by its cells. See shm.c for the algorithm. */
struct sy_shm_event_ring {
    alignas(64) _Atomic uint64_t enqueue_pos; /* producers: the next position to claim */
    alignas(64) _Atomic uint64_t dequeue_pos; /* the consumer: the next position to read */
    _Atomic uint64_t stall_pos;               /* the consumer: a claimed cell it waits for... */
    _Atomic uint64_t stall_since_ms;          /* ...since then (0: not waiting) */
    alignas(64) _Atomic uint64_t dropped;     /* records producers could not store */
    _Atomic uint64_t skipped;                 /* cells the consumer gave up on */
};

/* ---- spend budgets ------------------------------------------------------------------------ */

/** Spend of one budget in its current period, on this node (controlplane/src/budget.c writes
 * the period and what PostgreSQL knows; dataplane/src/budget.c counts and checks).
 *
 * The budget's spend in the period is  local_micros + offset_micros,  where <local_micros> is
 * the cost (millionths of the price currency) of every request this node's workers served for
 * a key the budget covers since the slot was claimed, cumulative and only ever added to, and
 * <offset_micros> = base - local_at_base: <base> is the period's spend recorded in PostgreSQL
 * by every node, and <local_at_base> the value <local_micros> had when this node's usage flush
 * that PostgreSQL includes read its counters. One word, so that a worker never pairs a new
 * base with an old local_at_base.
 *
 * <owner> is the budget's id (0: unclaimed); a worker counts into and checks a slot only when
 * it is the id its table names. The control plane claims a slot by storing owner 0, zeroing
 * the rest, then the id (release); it writes <offset_micros> before <period_end_ms> (release),
 * and a worker reads them in the other order (acquire), so it never pairs a new period with
 * the last period's offset. A worker past <period_end_ms> (the control plane has not rolled
 * the period over yet) does not enforce the budget.
 *
 * <flags> dedupes the events of a period: period_start_ms << 2 | 1 (soft sent) | 2 (exhausted
 * sent), changed by CAS; bits of another period count as none. */
struct sy_shm_budget {
    alignas(64) _Atomic uint64_t local_micros; /* the hot word: every worker adds to it */
    alignas(64) _Atomic uint64_t owner;        /* budget id, 0: unclaimed */
    _Atomic int64_t offset_micros;             /* base - local_at_base */
    _Atomic uint64_t period_start_ms;          /* wall clock */
    _Atomic uint64_t period_end_ms;            /* wall clock, exclusive; 0: not known yet */
    _Atomic uint64_t flags;
    _Atomic uint64_t base_micros;   /* for reading: the period's spend in PostgreSQL... */
    _Atomic uint64_t local_at_base; /* ...and local_micros when it was flushed */
};

/* ---- layout facts -------------------------------------------------------------------------- */

static_assert(sizeof(struct sy_shm_header) % 64 == 0, "header fills whole lines");
static_assert(sizeof(struct sy_shm_header) == 256, "header size is part of the layout");
static_assert(sizeof(struct sy_shm_worker) == 64, "one line per worker");
static_assert(sizeof(struct sy_shm_counters) == (SY_OUTCOME_MAX + SY_CTR_MAX) * 8, "packed");
static_assert(sizeof(struct sy_shm_obj_counters) == 832, "deployment/model counters");
static_assert(sizeof(struct sy_shm_key_counters) == 192, "key counters");
static_assert(sizeof(struct sy_shm_circuit) == 64 + SY_CIRCUIT_BUCKETS * 8, "circuit");
static_assert(sizeof(struct sy_shm_dep_state) == 128 + sizeof(struct sy_shm_circuit), "dep");
static_assert(offsetof(struct sy_shm_dep_state, rpm) == 64, "limiters on their own line");
static_assert(sizeof(struct sy_shm_model_state) == 64, "model state");
static_assert(sizeof(struct sy_shm_key_state) == 64, "key state");
static_assert(sizeof(struct sy_shm_key_model) == 64, "key-model entry");
static_assert(sizeof(struct sy_shm_event) == 248, "event record");
static_assert(sizeof(struct sy_shm_event_cell) == 256, "event cell");
static_assert(sizeof(struct sy_shm_event_ring) == 192, "ring control block");
static_assert(sizeof(struct sy_shm_budget) == 128, "budget: the hot word on its own line");
static_assert(alignof(struct sy_shm_dep_state) == 64 && alignof(struct sy_shm_obj_counters) == 64,
              "blocks start on a cache line");
static_assert(sizeof(_Atomic uint64_t) == 8 && alignof(_Atomic uint64_t) == 8,
              "64-bit atomics are plain words");
/* ---- a process's handle on the segment (not part of the layout) ------------------------- */

/** What sy_shm_create() and sy_shm_attach() return: the mapping and, resolved from the header's
 * offsets once, a pointer to each block in this process's address space. */
struct sy_shm {
    char *base;
    size_t size;
    bool writable;
    char *path;
    struct sy_shm_header *hdr;
    struct sy_shm_caps caps;
    struct sy_shm_worker *workers;
    struct sy_shm_dep_state *deps;
    struct sy_shm_model_state *models;
    struct sy_shm_key_state *keys;
    struct sy_shm_key_model *key_models;
    struct sy_shm_event_ring *ring;
    struct sy_shm_event_cell *cells;
    char *shards;
    uint64_t shard_stride;
    uint64_t shard_off_models;
    uint64_t shard_off_keys;
    struct sy_shm_budget *budgets;
};

/* Atomics in a segment shared between processes must be lock-free (and so address-free). */
#if ATOMIC_LLONG_LOCK_FREE != 2 || ATOMIC_INT_LOCK_FREE != 2
#error "Switchyard's shared memory needs lock-free 32- and 64-bit atomics"
#endif
