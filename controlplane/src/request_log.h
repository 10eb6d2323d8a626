/* SPDX-License-Identifier: Apache-2.0 */
/** The request log's drain: the segment's request-log ring -> memory -> table request_log.
 *
 * Off by default. The control plane's --request-log (off | metadata | bodies) goes into every
 * routing table it publishes, so a change is live on every worker of the node with the next
 * table; the workers then write one record per model call into a ring of 1 KiB cells in the
 * shared memory (a record with bodies takes several), never blocking: a full ring drops the
 * record and counts it (switchyard_request_log_dropped_total, /admin/v1/requests/status).
 *
 * Every 100 ms this module moves what the ring holds into memory (up to 64 MiB; beyond that
 * it leaves records in the ring, which then drops), and writes them in batches of up to 200
 * records or 4 MiB, each ONE INSERT ... SELECT over a JSON array (as the decision log does,
 * events.c says why not COPY). Slots and key ids are turned into names as the rows are
 * written. While the database is away the records wait in memory; at stop what is left is
 * written on a connection of its own. Rows older than --request-log-retention-days (7) are
 * deleted every 10 minutes, 10,000 at a time. */
#pragma once

struct cp_server;
struct json_t;

/** Start draining the segment <shm_path> (borrowed, copied; NULL: nothing to do, returns 0)
 * for <cp> (borrowed). Returns 0 or a negative errno with *<err> (caller frees). */
int cp__reqlog_start(struct cp_server *cp, const char *shm_path, char **err);

/** Write what is left (blocking, bounded by a 3-second connect timeout) and stop; freed once
 * its timers have closed. Safe to call twice or without a start. */
void cp__reqlog_stop(struct cp_server *cp);

/** A new JSON object with the drain's state: mode, attached, ring cells, records stored,
 * buffered, dropped by the ring, cells skipped, batches, last error. */
struct json_t *cp__reqlog_status(struct cp_server *cp);
