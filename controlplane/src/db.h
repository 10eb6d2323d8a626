/* SPDX-License-Identifier: Apache-2.0 */
/** PostgreSQL on the libuv loop: one libpq connection driven without ever blocking, so a slow or
 * absent database never stalls the daemon.
 *
 * Queries are queued FIFO and sent one at a time (text parameters, text results). Each query's
 * callback runs exactly once, from the loop, never from inside the call that queued it. When
 * the connection drops, the query in flight and every queued one fail with "database
 * unavailable: ...", and the connection is retried with exponential backoff from 250 ms up to
 * 5 s. While the database is known to be down, new queries fail at once (on the next loop turn)
 * rather than wait, so the admin API can answer 503. Queries made before the first connection
 * completes wait for it.
 *
 * LISTEN channels are re-issued after every reconnect. Notifications sent while the
 * connection was down are lost: the state callback's "up" is the cue to re-read whatever the
 * notifications would have announced. */
#pragma once

#include <stdbool.h>

#include <libpq-fe.h>
#include <uv.h>

struct cp_db;

/** The outcome of a query. <res> is borrowed for the duration of the call (do not PQclear it).
 * - success: <err> NULL, <res> PGRES_TUPLES_OK or PGRES_COMMAND_OK (for a script, the result
 *   of its last statement);
 * - the server rejected the statement: <err> holds its message and <res> the error result, so
 *   PQresultErrorField(<res>, PG_DIAG_SQLSTATE) tells a unique violation ("23505") from others;
 * - the query could not run (database down, connection lost, closing, out of memory): <res>
 *   NULL, <err> an operator-readable reason such as "database unavailable: connection refused".
 * <err> is borrowed too. */
typedef void (*cp_db_result_cb)(struct cp_db *db, void *ud, const PGresult *res, const char *err);

/** The connection came up (<up> true, <why> NULL) or went down (<why> says why). Called once per
 * transition, not once per failed reconnect attempt. */
typedef void (*cp_db_state_cb)(struct cp_db *db, void *ud, bool up, const char *why);

/** A NOTIFY on a channel this connection LISTENs to; both strings are borrowed. */
typedef void (*cp_db_notify_cb)(struct cp_db *db, void *ud, const char *channel,
                                const char *payload);

/** Start connecting to <conninfo> (a libpq URL or key=value string, copied) on <loop>
 * (borrowed; it must outlive the db). On success *<out> is a new db the caller ends with
 * cp_db_close(); the connection completes later, reported through the state callback.
 * Returns 0, or -ENOMEM with *<err> (caller frees). A bad conninfo is reported as a failed
 * connection, like an unreachable server. */
int cp_db_open(uv_loop_t *loop, const char *conninfo, struct cp_db **out, char **err);

/** Report up/down transitions to <cb> with <ud> (borrowed). Set it before the loop runs. */
void cp_db_on_state(struct cp_db *db, cp_db_state_cb cb, void *ud);

/** Deliver notifications to <cb> with <ud> (borrowed). */
void cp_db_on_notify(struct cp_db *db, cp_db_notify_cb cb, void *ud);

/** Queue <sql> (copied) with <nparams> text parameters <params> (copied; a NULL entry is SQL
 * NULL) for execution; <cb> receives the result with <ud> (borrowed). Returns 0 (the callback
 * will run exactly once), -ENOMEM or -ESHUTDOWN (the db is closing; the callback will not run). */
int cp_db_query(struct cp_db *db, const char *sql, int nparams, const char *const *params,
                cp_db_result_cb cb, void *ud);

/** cp_db_query() for a statement without parameters. */
int cp_db_exec(struct cp_db *db, const char *sql, cp_db_result_cb cb, void *ud);

/** Run a fixed script of several statements without parameters (PQsendQuery: they run in one
 * implicit transaction unless the script has its own BEGIN/COMMIT). The callback gets the result
 * of the last statement, or the first error, which ends the script. */
int cp_db_script(struct cp_db *db, const char *sql, cp_db_result_cb cb, void *ud);

/** LISTEN on <channel> (copied) now if connected and after every reconnect. Returns 0,
 * -ENOMEM or -ESHUTDOWN. Listening twice to the same channel is harmless. */
int cp_db_listen(struct cp_db *db, const char *channel);

/** True while the connection is established. */
bool cp_db_is_up(const struct cp_db *db);

/** A blocking connection to <conninfo> (borrowed), for start-up and command-line tools, never
 * on the serving loop. Returns the connection (caller PQfinish()es it) or NULL with *<err>
 * (caller frees) such as "cannot connect to the database: connection refused". Server notices
 * go to the debug log instead of stderr. */
PGconn *cp_db_connect_blocking(const char *conninfo, char **err);

/** Close the connection and stop reconnecting. Queries not yet answered fail now, from inside
 * this call, with "database connection closed". Invalidates <db>; its memory is released from
 * the loop once its handles have closed, so run the loop afterwards (uv_run) to finish. */
void cp_db_close(struct cp_db *db);
