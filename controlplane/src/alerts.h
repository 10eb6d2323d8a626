/* SPDX-License-Identifier: Apache-2.0 */
/** Alerts: the evaluator and the sender of their notifications (docs/observability.md).
 *
 * Every --alert-interval-ms (15 s) the control plane runs alert_evaluate() in PostgreSQL
 * (migrations/007_alerts.sql), on a connection of its own: an evaluation of many rules must not
 * hold up the admin API, which shares the main one. That statement takes a transaction-level
 * advisory lock, so one evaluation runs at a time across every control plane of the database,
 * measures each enabled rule from the fleet's data, moves the alert states and writes, in the same
 * transaction, an `alert` event and one delivery row per channel for every notification. Evaluating
 * from the database makes any control plane able to do it, and the result is the fleet's.
 *
 * Deliveries live in the alert_deliveries outbox: every second (and right after an evaluation
 * that wrote some), the control plane claims due ones with FOR UPDATE SKIP LOCKED and a lease,
 * sends them (webhook.h) at most --webhook-concurrency at a time, and records the outcome: done,
 * or retried after an exponential backoff with jitter, or given up after
 * --webhook-max-attempts. A delivery survives a restart (it is a row); a claim of a control
 * plane that died is taken over when its lease expires, or at once by its own restart. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct cp_server;

/** Start evaluating and delivering for <cp> (borrowed; loop and db ready; settings from
 * cp->cfg). Returns 0 or a negative errno with *<err> (caller frees), e.g. an unreadable
 * --webhook-ca-file. */
int cp__alerts_start(struct cp_server *cp, char **err);

/** Stop the timers and abort the sends in flight (cp__webhook_abort); their outcome is not
 * recorded, and their claims are released by the next start. Freed once everything has
 * closed: run the loop afterwards. Safe to call twice or without a start. */
void cp__alerts_stop(struct cp_server *cp);

/** What /metrics shows, as of the last evaluation: alerts firing, deliveries pending and given
 * up. All -1 before the first one. */
struct cp_alerts_stats {
    int64_t firing;
    int64_t deliveries_pending;
    int64_t deliveries_failed;
    uint64_t evaluations; /* evaluations this control plane ran (it held the lock) */
    uint64_t sent;        /* deliveries this control plane sent successfully */
    uint64_t send_failures;
};

/** Fill <out> from <cp>'s evaluator; zeros and -1s before it starts. */
void cp__alerts_stats(struct cp_server *cp, struct cp_alerts_stats *out);
