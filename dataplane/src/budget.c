/* SPDX-License-Identifier: Apache-2.0 */
/* Spend budgets on the request path (budget.h); the slot's protocol is in sy/shm-t.h. */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "budget.h"
#include "sy/log.h"
#include "sy/shm.h"
#include "sy/util.h"
#include "worker.h"

static const char *const period_words[SY_BUDGET_PERIOD_MAX] = {
    [SY_BUDGET_DAY] = "day",
    [SY_BUDGET_WEEK] = "week",
    [SY_BUDGET_MONTH] = "month",
};

/* ---- the slot ---------------------------------------------------------------------------- */

/* The least spend at soft_percent of the amount: ceil(amount * soft / 100) without the
 * product, which could overflow 64 bits. */
static uint64_t soft_threshold(const struct sy_budget *b)
{
    uint64_t q = b->amount_micros / 100, r = b->amount_micros % 100;
    return q * b->soft_percent + (r * b->soft_percent + 99) / 100;
}

void dp_budget_judge(const struct sy_shm_budget *sb, const struct sy_budget *b, uint64_t now_ms,
                     struct dp_budget_view *out)
{
    memset(out, 0, sizeof(*out));
    if (!sb || atomic_load_explicit(&sb->owner, memory_order_acquire) != b->id)
        return;
    /* the end first (acquire), then the offset written before it */
    uint64_t end = atomic_load_explicit(&sb->period_end_ms, memory_order_acquire);
    if (end == 0 || now_ms >= end)
        return;
    int64_t offset = atomic_load_explicit(&sb->offset_micros, memory_order_relaxed);
    uint64_t local = atomic_load_explicit(&sb->local_micros, memory_order_relaxed);
    int64_t spent = (int64_t)local + offset;
    out->spent_micros = spent > 0 ? (uint64_t)spent : 0;
    out->period_end_ms = end;
    if (out->spent_micros >= b->amount_micros)
        out->state = DP_BUDGET_EXHAUSTED;
    else if (out->spent_micros >= soft_threshold(b))
        out->state = DP_BUDGET_SOFT;
    else
        out->state = DP_BUDGET_OK;
}

bool dp_budget_announce(struct sy_shm_budget *sb, enum dp_budget_state state)
{
    if (!sb || (state != DP_BUDGET_SOFT && state != DP_BUDGET_EXHAUSTED))
        return false;
    uint64_t bit = state == DP_BUDGET_SOFT ? 1 : 2;
    uint64_t tag = atomic_load_explicit(&sb->period_start_ms, memory_order_relaxed) << 2;
    uint64_t f = atomic_load_explicit(&sb->flags, memory_order_relaxed);
    for (;;) {
        uint64_t bits = (f & ~(uint64_t)3) == tag ? f & 3 : 0;
        if (bits & bit)
            return false;
        if (atomic_compare_exchange_weak_explicit(&sb->flags, &f, tag | bits | bit,
                                                  memory_order_relaxed, memory_order_relaxed))
            return true;
    }
}

uint64_t dp_budget_now_ms(void)
{
    static int64_t offset = -1; /* per process; a race between workers is impossible (one loop) */
    if (offset == -1) {
        const char *s = getenv("SWITCHYARD_TEST_CLOCK_OFFSET_MS");
        offset = s && *s ? strtoll(s, NULL, 10) : 0;
        if (offset == -1)
            offset = 0;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + offset);
}

const char *dp_budget_amount(uint64_t micros, char buf[32])
{
    int n = snprintf(buf, 32, "%" PRIu64 ".%06" PRIu64, micros / 1000000, micros % 1000000);
    while (n > 0 && buf[n - 1] == '0')
        buf[--n] = '\0';
    if (n > 0 && buf[n - 1] == '.')
        buf[--n] = '\0';
    return buf;
}

/* ---- the worker's side ---------------------------------------------------------------------- */

static void announce(struct dp_worker *w, const struct sy_table *t, const struct sy_key *k,
                     const struct sy_budget *b, const struct dp_budget_view *v,
                     enum dp_budget_state level, const char *request_id)
{
    char spent[32], amount[32];
    dp_budget_amount(v->spent_micros, spent);
    dp_budget_amount(b->amount_micros, amount);
    sy_log(level == DP_BUDGET_EXHAUSTED ? SY_LOG_WARN : SY_LOG_INFO, "budget",
           "budget=%s %s: %s of %s spent this %s", b->name,
           level == DP_BUDGET_EXHAUSTED ? "exhausted" : "past its soft threshold", spent, amount,
           period_words[b->period]);
    struct sy_shm_event ev;
    sy_shm_event_init(&ev, SY_EVENT_BUDGET, request_id);
    struct timespec ts; /* the real time: only periods follow the test clock */
    clock_gettime(CLOCK_REALTIME, &ts);
    ev.ts_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    ev.table_version = t->version;
    ev.reason = level == DP_BUDGET_EXHAUSTED ? SY_REASON_BUDGET_EXHAUSTED : SY_REASON_BUDGET_SOFT;
    ev.worker = w->index;
    ev.key_slot = k->slot;
    unsigned pct = (unsigned)((double)v->spent_micros * 100 / (double)b->amount_micros);
    snprintf(ev.text, sizeof(ev.text), "budget %s: %s of %s spent this %s (%u%%, soft at %u%%)",
             b->name, spent, amount, period_words[b->period], pct, b->soft_percent);
    sy_shm_event_push(w->shm, &ev);
}

/* Announce what <v> reached and was not announced yet this period: soft, then exhausted. */
static void announce_levels(struct dp_worker *w, const struct sy_table *t, const struct sy_key *k,
                            const struct sy_budget *b, struct sy_shm_budget *sb,
                            const struct dp_budget_view *v, const char *request_id)
{
    if (v->state < DP_BUDGET_SOFT)
        return;
    if (dp_budget_announce(sb, DP_BUDGET_SOFT))
        announce(w, t, k, b, v, DP_BUDGET_SOFT, request_id);
    if (v->state == DP_BUDGET_EXHAUSTED && dp_budget_announce(sb, DP_BUDGET_EXHAUSTED))
        announce(w, t, k, b, v, DP_BUDGET_EXHAUSTED, request_id);
}

bool dp__budget_admits(struct dp_worker *w, const struct sy_table *t, const struct sy_key *k,
                       const char *request_id, const struct sy_budget **which, uint64_t *reset_ms)
{
    if (!w->shm || !k || !k->n_budgets)
        return true;
    uint64_t now = dp_budget_now_ms();
    for (uint32_t i = 0; i < k->n_budgets; i++) {
        const struct sy_budget *b = &t->budgets[k->budgets[i]];
        struct sy_shm_budget *sb = sy_shm_budget(w->shm, b->slot);
        struct dp_budget_view v;
        dp_budget_judge(sb, b, now, &v);
        announce_levels(w, t, k, b, sb, &v, request_id);
        if (v.state == DP_BUDGET_EXHAUSTED) {
            *which = b;
            *reset_ms = v.period_end_ms;
            sy_shm_outcome(sy_shm_counters(w->shm, w->index, SY_SHM_KEY, k->slot),
                           SY_OUTCOME_RATE_LIMITED);
            return false;
        }
    }
    return true;
}

void dp__budget_charge(struct dp_worker *w, const struct sy_table *t, const struct sy_key *k,
                       uint64_t cost_micros, const char *request_id)
{
    if (!w->shm || !k || !k->n_budgets || !cost_micros)
        return;
    uint64_t now = dp_budget_now_ms();
    for (uint32_t i = 0; i < k->n_budgets; i++) {
        const struct sy_budget *b = &t->budgets[k->budgets[i]];
        struct sy_shm_budget *sb = sy_shm_budget(w->shm, b->slot);
        /* Only into a slot this budget owns: a slot being handed to another budget loses the
         * cost here, and the usage flush brings it back through PostgreSQL. */
        if (!sb || atomic_load_explicit(&sb->owner, memory_order_acquire) != b->id)
            continue;
        atomic_fetch_add_explicit(&sb->local_micros, cost_micros, memory_order_relaxed);
        struct dp_budget_view v;
        dp_budget_judge(sb, b, now, &v);
        announce_levels(w, t, k, b, sb, &v, request_id);
    }
}
