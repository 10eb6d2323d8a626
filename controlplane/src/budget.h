/* SPDX-License-Identifier: Apache-2.0 */
/** Spend budgets, the control plane's side: every flush interval (and soon after an admin
 * write, and at the end of a period) it reads each enabled budget's period and the spend
 * PostgreSQL holds for it (budget_state() in migrations/010_budgets.sql) and writes them into
 * the budget's shared-memory slot, which the data plane's workers add to and check
 * (dataplane/src/budget.c; the slot's protocol is in sy/shm-t.h).
 *
 * Race-free base: the usage flush (usage.c) records each slot's local_micros just before it
 * reads the key counters it sends, and tells us when PostgreSQL has taken them. Queries run in
 * order on one connection, so when the answer of a budget query arrives, the flushes it saw are
 * exactly those whose success was already reported: offset = base - (local_micros recorded by
 * the last of them). A cost the data plane adds between the record and the read of the key
 * counters is counted twice until the next flush (a few requests' worth at most, on the safe
 * side); never lost. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct cp_server;
struct sy_shm;
struct sy_buf;

/** Start refreshing the budgets of segment <shm_path> (borrowed, copied; NULL: budgets are not
 * enforced on this node, which is logged). Returns 0, or -ENOMEM with *<err> (caller frees). */
int cp__budget_start(struct cp_server *cp, const char *shm_path, char **err);

/** Stop; the module is freed once its timer has closed and its query answered. Safe to call
 * twice or without a start. */
void cp__budget_stop(struct cp_server *cp);

/** Refresh soon: a budget was written, or the database came back. */
void cp__budget_kick(struct cp_server *cp);

/** The usage flusher is about to read the counters of segment <shm> (borrowed) for a flush:
 * record each budget slot's local spend. */
void cp__budget_usage_collect(struct cp_server *cp, const struct sy_shm *shm);

/** The flush whose counters were read after the last cp__budget_usage_collect() is in
 * PostgreSQL. */
void cp__budget_usage_flushed(struct cp_server *cp);

/** The spend this node has counted for budget <id> in <slot> and not yet flushed, in
 * millionths (0 when the slot is not the budget's or the segment is not mapped). */
uint64_t cp__budget_unflushed(struct cp_server *cp, int64_t id, uint32_t slot);

/** The spend of budget <id> in <slot> for the period that starts at <start_ms> as this node
 * enforces it (PostgreSQL's at the last refresh, plus what the node counted since): true with
 * *<spent> set, false when the slot is not set up for that budget and period. */
bool cp__budget_spent(struct cp_server *cp, int64_t id, uint32_t slot, int64_t start_ms,
                      uint64_t *spent);

/** The budgets' clock: the wall clock in milliseconds, shifted by
 * SWITCHYARD_TEST_CLOCK_OFFSET_MS when set (tests only; read once). */
int64_t cp__budget_now_ms(void);
/** That shift in milliseconds (0 outside tests). */
int64_t cp__budget_offset_ms(void);

/** Append the budgets' metrics (switchyard_budget_spent, _amount, _state) to <b> in the
 * Prometheus text format, as of the last refresh plus the node's unflushed spend. */
void cp__budget_metrics(struct cp_server *cp, struct sy_buf *b);
