/* SPDX-License-Identifier: Apache-2.0 */
/** Spend budgets on the request path: the check before a request is routed, the charge after
 * it is served, and the events when a budget crosses its soft threshold or runs out.
 *
 * A budget's spend in its period is read from its shared-memory slot (struct sy_shm_budget in
 * sy/shm-t.h): what PostgreSQL holds for the period, from every node, as the control plane last
 * read it, plus what this node's workers have served since. The check is a few relaxed loads
 * per budget of the key; the charge is one relaxed atomic add per budget. Nothing locks or
 * allocates. A budget is checked before a request, never in the middle of an answer: the
 * request in flight when the budget runs out completes, and the next one is refused. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "sy/shm-t.h"
#include "sy/table-t.h"

struct dp_worker;

/** What a budget's slot says now. */
enum dp_budget_state {
    DP_BUDGET_UNKNOWN = 0, /* the control plane has not set up the period: not enforced */
    DP_BUDGET_OK,
    DP_BUDGET_SOFT,      /* at or past soft_percent of the amount */
    DP_BUDGET_EXHAUSTED, /* at or past the amount: requests are refused */
    DP_BUDGET_STATE_MAX,
};

/** What the check read of one budget. */
struct dp_budget_view {
    enum dp_budget_state state;
    uint64_t spent_micros;
    uint64_t period_end_ms; /* wall clock (with the test offset) */
};

/** Judge budget <b> (borrowed) from its slot <sb> (borrowed) at <now_ms>: UNKNOWN when the
 * slot belongs to another budget (or none yet), when the period is not set up, or when
 * <now_ms> is past its end (the control plane rolls periods over; until it has, the new
 * period's spend is unknown and the budget is not enforced). Fills <out>. */
void dp_budget_judge(const struct sy_shm_budget *sb, const struct sy_budget *b, uint64_t now_ms,
                     struct dp_budget_view *out);

/** Whether this caller is the first to announce <state> (SOFT or EXHAUSTED) for the period
 * that <sb> is in: a CAS on the slot's flags, so the workers of a node announce each level once
 * per period between them. */
bool dp_budget_announce(struct sy_shm_budget *sb, enum dp_budget_state state);

/** Wall clock in milliseconds, shifted by SWITCHYARD_TEST_CLOCK_OFFSET_MS when that is set
 * (read once; tests only: it moves the budgets' periods, nothing else). */
uint64_t dp_budget_now_ms(void);

/** Whether the budgets covering key <k> (borrowed, of table <t>; may be NULL) admit a request
 * now. When one is exhausted returns false with *<which> set to it and *<reset_ms> to the end
 * of its period; counts the refusal on the key and announces the exhaustion once per period
 * (event kind budget, reason exhausted) for request <request_id> (may be NULL). */
bool dp__budget_admits(struct dp_worker *w, const struct sy_table *t, const struct sy_key *k,
                       const char *request_id, const struct sy_budget **which, uint64_t *reset_ms);

/** A request of key <k> (of table <t>; may be NULL) cost <cost_micros>: add it to each of the
 * key's budgets, and announce a budget that this crossed into soft or exhausted. */
void dp__budget_charge(struct dp_worker *w, const struct sy_table *t, const struct sy_key *k,
                       uint64_t cost_micros, const char *request_id);

/** Write <micros> as a decimal amount of currency ("12.5", "0.000125") into <buf>. */
const char *dp_budget_amount(uint64_t micros, char buf[32]);
