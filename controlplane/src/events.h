/* SPDX-License-Identifier: Apache-2.0 */
/** The decision log's drain: the single consumer of the node's event ring (sy/shm.h), moving
 * its records into the `events` table (migrations/005_usage_events.sql) in batches.
 *
 * Every 250 ms, and sooner when the ring is more than half full (checked every 25 ms: two
 * atomic loads), the ring is emptied into a buffer in memory, and the buffer goes to
 * PostgreSQL in batches of up to 1000 records, one statement each. The data plane never waits:
 * producers never block on the ring, and a full ring drops and counts (shown in the status).
 * While the database is down the buffer holds up to 64k records (16 MiB); beyond that the
 * drain stops reading and the ring fills, so its own drop counter tells what was lost. At stop
 * the buffer is written one last time on a blocking connection.
 *
 * Names of models, deployments and keys are resolved from their slots when a batch is
 * written, by the config tables (the slot's owner then). */
#pragma once

#include <stdbool.h>

struct cp_server;

/** Start draining the segment <shm_path> (borrowed, copied; NULL: nothing to drain) for <cp>
 * (borrowed; loop and db ready). Returns 0 or a negative errno with *<err> (caller frees). */
int cp__events_start(struct cp_server *cp, const char *shm_path, char **err);

/** Drain and write one last time (blocking, 3-second connect timeout), then stop; freed once
 * its timer has closed (run the loop). Call it before the db is closed. Safe to call twice. */
void cp__events_stop(struct cp_server *cp);

/** A new JSON object with the drain's state: attached, ring capacity and fill, records
 * stored, buffered, dropped by the ring (full) and skipped (a stalled producer), last error. */
struct json_t *cp__events_status(struct cp_server *cp);
