/* SPDX-License-Identifier: Apache-2.0 */
/** Usage and cost: the flush of the node's shared-memory counters into per-minute rollups in
 * PostgreSQL, their compaction into hours, and what the admin API's usage and events
 * resources share (time parsing, the segment follower).
 *
 * Every flush interval (10 s) the totals of every slot whose counters moved since the last
 * successful flush are sent, as totals, to usage_flush() (migrations/005_usage_events.sql),
 * which subtracts the persisted watermark, adds the differences to the current minute and
 * moves the watermark in one transaction. So:
 * - a database outage loses nothing: the flush fails, the watermark stays, and the next
 *   success adds everything since (in its own minute); the counts wait in shared memory;
 * - a control-plane restart counts nothing twice: the watermark is in the database;
 * - a data-plane restart (a new segment, a new generation) resets the node's watermarks; the
 *   old segment stays mapped here until its last counts are flushed.
 * The last flush runs at stop, on a blocking connection, with a 3-second connect timeout.
 *
 * Every 10 minutes (and shortly after start) usage_compact() moves minutes older than the
 * retention into usage_hour and deletes old events, under an advisory lock, so one control
 * plane of the fleet does it. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct cp_server;
struct sy_shm;

/* ---- the node's segment, followed across data-plane restarts ----------------------------------
 */

/** A mapping of the segment file <path> that notices when the file is replaced. */
struct cp__seg {
    char *path;         /* owned; NULL: no segment configured */
    bool writable;      /* the event ring's consumer writes its position */
    struct sy_shm *shm; /* NULL until attached */
    dev_t dev;          /* the file mapped */
    ino_t ino;
    bool warned; /* a failed attach was logged */
};

/** Map <s>'s file unless mapped. Returns true when <s>->shm is mapped (now or before); a
 * failure is logged once until an attach succeeds. */
bool cp__seg_attach(struct cp__seg *s, const char *what);

/** True when <s> is mapped and its path now names another file (the data plane made a new
 * segment): the caller finishes with the old mapping, then cp__seg_detach() and attaches. */
bool cp__seg_replaced(struct cp__seg *s);

/** Unmap <s> (the path stays). */
void cp__seg_detach(struct cp__seg *s);

/* ---- time parameters of the admin API -----------------------------------------------------------
 */

/** Parse <s> (borrowed) as an RFC 3339 date-time ("2030-01-31T23:59:59.5Z", an offset allowed,
 * date alone = midnight UTC) or whole Unix seconds, into milliseconds since the epoch. */
bool cp__parse_time(const char *s, int64_t *ms);

/** Format <ms> since the epoch as "2030-01-31T23:59:59.000Z" into <buf>. */
const char *cp__format_time(int64_t ms, char buf[32]);

/* ---- the flusher ------------------------------------------------------------------------------
 */

/** Start flushing the segment <shm_path> (borrowed, copied; NULL: usage is not collected, which
 * is logged) of <cp> (borrowed; loop and db ready). Settings come from cp->cfg. Returns 0 or a
 * negative errno with *<err> (caller frees). */
int cp__usage_start(struct cp_server *cp, const char *shm_path, char **err);

/** Flush one last time (blocking, bounded by a 3-second connect timeout) and stop; the module
 * is freed once its timers have closed, so the loop must run afterwards. Call it before the db
 * is closed. Safe to call twice or without a start. */
void cp__usage_stop(struct cp_server *cp);

/** The database came up: flush soon rather than at the next tick. */
void cp__usage_db_state(struct cp_server *cp, bool up);

/** A new JSON object with the flusher's state (for status): attached, generation, flushes,
 * failures, last flush time and error. */
struct json_t *cp__usage_status(struct cp_server *cp);
