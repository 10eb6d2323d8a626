/* SPDX-License-Identifier: Apache-2.0 */
/** The node-wide shared-memory segment: create, attach, find a slot's state and counters, bump
 * counters, sum them, and the decision-log ring. The layout is in shm-t.h.
 *
 * Writers: each worker bumps counters only in its own shard (sy_shm_counters() with its worker
 * index), with relaxed atomic adds; state that every worker shares (circuit, limiters, in
 * flight) changes by CAS or atomic add in the slot's shared state. Adds rather than plain
 * stores, so that the old and the new worker of a slot, which overlap during a SIGHUP
 * replacement, can share a shard without losing counts.
 *
 * Readers (the control plane) sum the shards; a sum is not a snapshot of one instant, but each
 * counter only grows, so a later read never shows less than an earlier one. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "sy/hist.h"
#include "sy/shm-t.h"

static_assert(SY_SHM_HIST_BUCKETS == SY_HIST_BUCKETS, "the segment stores hist.h's buckets");

/* ---- segment ------------------------------------------------------------------------------- */

/** Fill <caps> (in/out) with defaults for its zero fields and round the ring and the key-model
 * table up to powers of two, then compute the layout into <h> (offsets, sizes; magic left 0).
 * Returns -EINVAL with a message in *<err> (caller frees) when a capacity is out of range. */
int sy_shm_layout(struct sy_shm_caps *caps, struct sy_shm_header *h, char **err);

/** Create the segment file <path> (borrowed; e.g. /dev/shm/switchyard), mode 0600, sized for
 * <caps> (borrowed; NULL or zero fields for the defaults), and map it writable into *<out>.
 * The file is built under a temporary name and renamed over <path>, so a process still mapping
 * a previous segment keeps it intact (a plain O_TRUNC would make its pages SIGBUS) and an
 * attacher never sees a half-built one. Returns 0, or a negative errno with a message in
 * *<err> (caller frees). */
int sy_shm_create(const char *path, const struct sy_shm_caps *caps, struct sy_shm **out,
                  char **err);

/** Map the existing segment <path> (borrowed), read-write or read-only. Refuses a file that is
 * not a segment (-EPROTO), a segment of another layout version (-EPROTO, the message names both
 * versions) or one whose size does not match its header (-EPROTO). Returns 0, or a negative
 * errno with a message in *<err> (caller frees). */
int sy_shm_attach(const char *path, bool writable, struct sy_shm **out, char **err);

/** Unmap and free <shm> (invalidated); NULL is ignored. The file stays. */
void sy_shm_detach(struct sy_shm *shm);

/** Reuse <slot> of <kind> for a new object of generation <generation> (never 0): zero its
 * shared state (circuit, limiters, in flight) and its counters in every shard, then publish
 * the generation. The control plane calls it after it has flushed the old owner's counters;
 * workers compare the generation with their table's to tell whose state it is. For a key, its
 * per-model limiters are zeroed too. Returns -ERANGE for a slot beyond capacity, -EROFS on a
 * read-only attach. */
int sy_shm_slot_reset(struct sy_shm *shm, enum sy_shm_kind kind, uint32_t slot,
                      uint64_t generation);

/* ---- worker slots -------------------------------------------------------------------------- */

/** Worker slot <i>, or NULL beyond capacity. */
static inline struct sy_shm_worker *sy_shm_worker(struct sy_shm *shm, uint32_t i)
{
    return i < shm->caps.max_workers ? &shm->workers[i] : NULL;
}

/** Record that worker <i> started as <pid> at <now_ms> (monotonic), and make readers include
 * its shard. Called by the master or the worker itself. -ERANGE beyond capacity. */
int sy_shm_worker_start(struct sy_shm *shm, uint32_t i, pid_t pid, uint64_t now_ms);

/** Worker <w> (borrowed) is alive at <now_ms>, serving table <table_version>. */
static inline void sy_shm_worker_heartbeat(struct sy_shm_worker *w, uint64_t now_ms,
                                           uint64_t table_version)
{
    atomic_store_explicit(&w->heartbeat_ms, now_ms, memory_order_relaxed);
    atomic_store_explicit(&w->table_version, table_version, memory_order_relaxed);
}

/** Worker <i> died: give back the in-flight counts it held (its requests will never finish),
 * to the deployments' shared in-flight gauges and in its shard, and free its slot. The master
 * calls it before it starts a replacement, when no other live process writes to shard <i>.
 * Counters stay: they are cumulative. -ERANGE beyond capacity. */
int sy_shm_worker_reap(struct sy_shm *shm, uint32_t i);

/* ---- shared state -------------------------------------------------------------------------- */

/** Shared state of deployment <slot>, or NULL beyond capacity or on a read-only attach. */
static inline struct sy_shm_dep_state *sy_shm_dep(struct sy_shm *shm, uint32_t slot)
{
    return shm->writable && slot < shm->caps.max_deployments ? &shm->deps[slot] : NULL;
}

/** Read-only view of deployment <slot>'s shared state (for metrics), or NULL beyond capacity. */
static inline const struct sy_shm_dep_state *sy_shm_dep_peek(const struct sy_shm *shm,
                                                             uint32_t slot)
{
    return slot < shm->caps.max_deployments ? &shm->deps[slot] : NULL;
}

/** Shared state of model <slot>, or NULL beyond capacity or on a read-only attach. */
static inline struct sy_shm_model_state *sy_shm_model(struct sy_shm *shm, uint32_t slot)
{
    return shm->writable && slot < shm->caps.max_models ? &shm->models[slot] : NULL;
}

/** Shared state of key <slot>, or NULL beyond capacity or on a read-only attach. */
static inline struct sy_shm_key_state *sy_shm_key(struct sy_shm *shm, uint32_t slot)
{
    return shm->writable && slot < shm->caps.max_keys ? &shm->keys[slot] : NULL;
}

/** The limiters of key <key_slot> for model <model_slot>, found or claimed in the node's
 * key-model table. NULL for a slot beyond capacity, on a read-only attach, or when the table
 * is full around the pair's hash (64 probes): the caller then enforces the key's own limits
 * only, and should say so in an event. */
struct sy_shm_key_model *sy_shm_key_model(struct sy_shm *shm, uint32_t key_slot,
                                          uint32_t model_slot);

/** Budget <slot>'s spend (shm-t.h: struct sy_shm_budget), or NULL beyond capacity or on a
 * read-only attach. */
static inline struct sy_shm_budget *sy_shm_budget(struct sy_shm *shm, uint32_t slot)
{
    return shm->writable && slot < shm->caps.max_budgets ? &shm->budgets[slot] : NULL;
}

/** Read-only view of budget <slot> (for metrics and the admin API), or NULL beyond capacity. */
static inline const struct sy_shm_budget *sy_shm_budget_peek(const struct sy_shm *shm,
                                                             uint32_t slot)
{
    return slot < shm->caps.max_budgets ? &shm->budgets[slot] : NULL;
}

/** Update the EWMA <avg> (microseconds) with <sample_us>, weight 1/8: the first sample sets
 * it. A CAS loop, so that concurrent updates from several workers are all folded in. */
static inline void sy_shm_ewma(_Atomic uint64_t *avg, uint64_t sample_us)
{
    uint64_t old = atomic_load_explicit(avg, memory_order_relaxed);
    uint64_t nv;
    do {
        nv = old == 0 ? sample_us : old - old / 8 + sample_us / 8;
        nv = nv ? nv : 1; /* 0 means "no sample yet" */
    } while (!atomic_compare_exchange_weak_explicit(avg, &old, nv, memory_order_relaxed,
                                                    memory_order_relaxed));
}

/* ---- circuit word (see struct sy_shm_circuit) ---------------------------------------------- */

#define SY_CIRCUIT_PROBES_MAX 63u
#define SY_CIRCUIT_UNTIL_MASK ((UINT64_C(1) << 40) - 1)

static inline enum sy_circuit_state sy_circuit_word_state(uint64_t w)
{
    return (enum sy_circuit_state)(w & 3);
}

static inline uint32_t sy_circuit_word_probes(uint64_t w)
{
    return (uint32_t)(w >> 2) & SY_CIRCUIT_PROBES_MAX;
}

static inline uint64_t sy_circuit_word_until(uint64_t w)
{
    return (w >> 8) & SY_CIRCUIT_UNTIL_MASK;
}

static inline uint32_t sy_circuit_word_seq(uint64_t w)
{
    return (uint32_t)(w >> 48);
}

static inline uint64_t sy_circuit_word(enum sy_circuit_state st, uint32_t probes, uint64_t until,
                                       uint32_t seq)
{
    return (uint64_t)st | (uint64_t)(probes & SY_CIRCUIT_PROBES_MAX) << 2 |
           (until & SY_CIRCUIT_UNTIL_MASK) << 8 | (uint64_t)(seq & 0xffff) << 48;
}

/* ---- counters ------------------------------------------------------------------------------ */

/** Counters of <slot> of <kind> in worker <worker>'s shard, or NULL for a worker or slot beyond
 * capacity or on a read-only attach. The bump helpers below accept NULL and do nothing, so a
 * caller with a bad slot loses counts, never memory. */
static inline struct sy_shm_counters *sy_shm_counters(struct sy_shm *shm, uint32_t worker,
                                                      enum sy_shm_kind kind, uint32_t slot)
{
    if (!shm->writable || worker >= shm->caps.max_workers)
        return NULL;
    char *shard = shm->shards + (uint64_t)worker * shm->shard_stride;
    switch (kind) {
    case SY_SHM_DEPLOYMENT:
        if (slot >= shm->caps.max_deployments)
            return NULL;
        return &((struct sy_shm_obj_counters *)shard)[slot].c;
    case SY_SHM_MODEL:
        if (slot >= shm->caps.max_models)
            return NULL;
        return &((struct sy_shm_obj_counters *)(shard + shm->shard_off_models))[slot].c;
    case SY_SHM_KEY:
        if (slot >= shm->caps.max_keys)
            return NULL;
        return &((struct sy_shm_key_counters *)(shard + shm->shard_off_keys))[slot].c;
    default:
        return NULL;
    }
}

/** Histogram <which> of a deployment's or model's counters <c> (from sy_shm_counters() for
 * <kind>), or NULL for a key's counters or a NULL <c>. */
static inline struct sy_shm_hist *sy_shm_hist(struct sy_shm_counters *c, enum sy_shm_kind kind,
                                              enum sy_shm_hist_kind which)
{
    if (!c || kind == SY_SHM_KEY || which >= SY_HIST_KIND_MAX)
        return NULL;
    return &((struct sy_shm_obj_counters *)(void *)c)->hist[which];
}

/** Add <n> to counter <ctr> of <c>. */
static inline void sy_shm_add(struct sy_shm_counters *c, enum sy_ctr ctr, uint64_t n)
{
    if (c && ctr < SY_CTR_MAX)
        atomic_fetch_add_explicit(&c->ctr[ctr], n, memory_order_relaxed);
}

/** Count one request of <c> that ended with <outcome>. */
static inline void sy_shm_outcome(struct sy_shm_counters *c, enum sy_outcome outcome)
{
    if (c && outcome < SY_OUTCOME_MAX)
        atomic_fetch_add_explicit(&c->requests[outcome], 1, memory_order_relaxed);
}

/** Count a sample of <us> microseconds into <h>. */
static inline void sy_shm_observe(struct sy_shm_hist *h, uint64_t us)
{
    if (!h)
        return;
    atomic_fetch_add_explicit(&h->bucket[sy_hist_bucket(us)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
}

/** A request starts on deployment state <dep> (may be NULL) with counters <c> (may be NULL):
 * raise the node-wide in-flight gauge and the shard's, which sy_shm_worker_reap() uses to give
 * back a dead worker's share. */
static inline void sy_shm_inflight_inc(struct sy_shm_dep_state *dep, struct sy_shm_counters *c)
{
    if (dep)
        atomic_fetch_add_explicit(&dep->in_flight, 1, memory_order_relaxed);
    if (c)
        atomic_fetch_add_explicit(&c->ctr[SY_CTR_IN_FLIGHT], 1, memory_order_relaxed);
}

/** The request counted by sy_shm_inflight_inc(<dep>, <c>) ended. */
static inline void sy_shm_inflight_dec(struct sy_shm_dep_state *dep, struct sy_shm_counters *c)
{
    if (dep)
        atomic_fetch_sub_explicit(&dep->in_flight, 1, memory_order_relaxed);
    if (c)
        atomic_fetch_sub_explicit(&c->ctr[SY_CTR_IN_FLIGHT], 1, memory_order_relaxed);
}

/** Sums over the shards, for one object. */
struct sy_shm_totals {
    uint64_t requests[SY_OUTCOME_MAX];
    uint64_t ctr[SY_CTR_MAX];                         /* IN_FLIGHT is a gauge: read it as int64_t */
    uint64_t hist[SY_HIST_KIND_MAX][SY_HIST_BUCKETS]; /* per bucket, not cumulative */
    uint64_t hist_sum_us[SY_HIST_KIND_MAX];
};

/** Sum the counters of <slot> of <kind> over every shard a worker has used into <out> (zeroed
 * first; no histograms for keys). Works on a read-only attach. -ERANGE beyond capacity. */
int sy_shm_read(const struct sy_shm *shm, enum sy_shm_kind kind, uint32_t slot,
                struct sy_shm_totals *out);

/* ---- decision log -------------------------------------------------------------------------- */

/** Make <ev> an empty event of <kind> for request <request_id> (borrowed; NULL for none): no
 * slots, no outcome, the rest zero. */
void sy_shm_event_init(struct sy_shm_event *ev, enum sy_event_kind kind, const char *request_id);

/** Append a copy of <ev> (borrowed) to the ring. Never blocks: when the ring is full the record
 * is dropped, counted, and -ENOBUFS returned. -EROFS on a read-only attach. */
int sy_shm_event_push(struct sy_shm *shm, const struct sy_shm_event *ev);

/** The single consumer: copy the oldest record into <out> and free its cell. Returns 0, or
 * -EAGAIN when there is nothing to read yet. A cell claimed by a producer that has not
 * published it for SY_SHM_EVENT_STALL_MS (by <now_ms>, monotonic) is skipped and counted: its
 * producer died or stopped half-way, and the ring must not stay stuck behind it. */
int sy_shm_event_pop(struct sy_shm *shm, uint64_t now_ms, struct sy_shm_event *out);

/** How long the consumer waits for a claimed cell before it skips it. */
#define SY_SHM_EVENT_STALL_MS 2000u

/** Records dropped because the ring was full (or, rarely, lost to a skip). */
static inline uint64_t sy_shm_event_dropped(const struct sy_shm *shm)
{
    return atomic_load_explicit(&shm->ring->dropped, memory_order_relaxed);
}

/** Cells the consumer skipped (see sy_shm_event_pop()). */
static inline uint64_t sy_shm_event_skipped(const struct sy_shm *shm)
{
    return atomic_load_explicit(&shm->ring->skipped, memory_order_relaxed);
}

/* ---- names from the X-macro lists ---------------------------------------------------------- */

/** Metric label of <o>; "unknown" out of range. */
const char *sy_outcome_label(enum sy_outcome o);
/** Metric name (without the switchyard_<kind>_ prefix) of counter <c>. */
const char *sy_ctr_metric(enum sy_ctr c);
/** HELP text of counter <c>. */
const char *sy_ctr_help(enum sy_ctr c);
/** Label of event kind <k>. */
const char *sy_event_kind_label(enum sy_event_kind k);
/** Label of reason <r>. */
const char *sy_reason_label(enum sy_reason r);
/** Label of circuit state <s>. */
const char *sy_circuit_state_label(enum sy_circuit_state s);
