/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's decision log: GET /admin/v1/events, GET /admin/v1/events/<id> and
 * GET /admin/v1/events/status.
 *
 *     ?request_id=  one request's whole story (attempts, retries, fallbacks...), in order
 *     &kind=        attempt | retry | fallback | circuit | rate_limited | shed | guardrail |
 *                   config | worker | budget (SY_EVENT_KIND_MAP) | alert (written by the
 *                   alert evaluator, alerts.h)
 *     &model=  &deployment=
 *     &since=  &until=   RFC 3339 or Unix seconds: since <= at < until
 *     &limit=  &after=   a page (1..500, default 50) after the cursor next_cursor gave
 *
 * Events come oldest first (by id: the order each node's drain stored them, which for one
 * request is the order its worker made its decisions). Each is
 *
 *     {"id", "at", "node", "worker", "request_id", "kind", "outcome", "reason", "status",
 *      "model", "deployment", "key", "duration_ms", "attempt", "text", "table_version"}
 *
 * `key` is the client key's name, never the key. /events/status tells this node's drain:
 * records stored and buffered, and what the ring had to drop (events.h), with the usage
 * flusher's state. */

#include <stdio.h>
#include <string.h>

#include "api.h"
#include "events.h"
#include "sy/buf.h"
#include "sy/shm.h"
#include "usage.h"

#define EVENT_DOC                                                                                  \
    "json_build_object('id', id,"                                                                  \
    " 'at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), 'node', node,"    \
    " 'worker', worker, 'request_id', request_id, 'kind', kind, 'outcome', outcome,"               \
    " 'reason', reason, 'status', status, 'model', model, 'deployment', deployment, 'key', key,"   \
    " 'duration_ms', duration_ms, 'attempt', attempt, 'text', text,"                               \
    " 'table_version', table_version)::text"

static const char list_sql[] =
    "SELECT id, " EVENT_DOC " FROM events"
    " WHERE id > $1::bigint"
    "  AND ($2::text IS NULL OR request_id = $2)"
    "  AND ($3::text IS NULL OR kind = $3)"
    "  AND ($4::text IS NULL OR model = $4)"
    "  AND ($5::text IS NULL OR deployment = $5)"
    "  AND ($6::bigint IS NULL OR at >= to_timestamp($6::bigint / 1000.0))"
    "  AND ($7::bigint IS NULL OR at < to_timestamp($7::bigint / 1000.0))"
    " ORDER BY id LIMIT $8::int";

static const char get_sql[] = "SELECT " EVENT_DOC " FROM events WHERE id = $1::bigint";

static void on_page(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    cp_call_page_result(c, res, *(int *)c->state);
}

/* ?<name>= as a string of at most <max> bytes; false after answering 400. */
static bool str_param(struct cp_call *c, const char *name, size_t max, const char **out)
{
    *out = cp_call_param(c, name);
    if (*out && (!**out || strlen(*out) > max)) {
        cp_call_invalid(c, name, "%s: must be 1 to %zu characters", name, max);
        return false;
    }
    return true;
}

/* ?<name>= as a time in milliseconds (decimal text into <buf>), or NULL when absent. */
static bool time_param(struct cp_call *c, const char *name, char buf[24], const char **out)
{
    const char *v = cp_call_param(c, name);
    int64_t ms;
    *out = NULL;
    if (!v)
        return true;
    if (!cp__parse_time(v, &ms)) {
        cp_call_invalid(c, name,
                        "%s: must be an RFC 3339 date-time such as 2030-01-31T12:00:00Z, or Unix "
                        "seconds",
                        name);
        return false;
    }
    *out = cp_i64(buf, ms);
    return true;
}

static void list(struct cp_call *c)
{
    int limit;
    int64_t after;
    const char *rid, *kind, *model, *dep, *since, *until;
    char after_s[24], limit_s[24], since_s[24], until_s[24];
    if (!str_param(c, "request_id", SY_EVENT_REQUEST_ID_LEN - 1, &rid) ||
        !str_param(c, "kind", 32, &kind) || !str_param(c, "model", 128, &model) ||
        !str_param(c, "deployment", 128, &dep) || !time_param(c, "since", since_s, &since) ||
        !time_param(c, "until", until_s, &until) || !cp_call_page(c, &limit, &after))
        return;
    if (kind) {
        bool known = strcmp(kind, "alert") == 0; /* written by alerts, not the ring */
        for (int k = 0; k < SY_EVENT_KIND_MAX && !known; k++)
            known = strcmp(kind, sy_event_kind_label((enum sy_event_kind)k)) == 0;
        if (!known) {
            struct sy_buf b = SY_BUF_INIT;
            for (int k = 0; k < SY_EVENT_KIND_MAX; k++)
                sy_buf_printf(&b, "%s\"%s\"", k ? ", " : "",
                              sy_event_kind_label((enum sy_event_kind)k));
            cp_call_invalid(c, "kind", "kind: must be one of %s, \"alert\"", b.data);
            sy_buf_free(&b);
            return;
        }
    }
    int *state = malloc(sizeof(*state));
    if (!state) {
        cp_call_error(c, 500, "server_error", "internal_error", NULL, "out of memory");
        return;
    }
    *state = limit;
    c->state = state;
    c->free_state = free;
    const char *params[] = {cp_i64(after_s, after),    rid, kind, model, dep, since, until,
                            cp_i64(limit_s, limit + 1)};
    cp_call_query(c, list_sql, 8, params, on_page);
}

static void on_one(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    cp_call_doc_result(c, 200, res);
}

static void get(struct cp_call *c)
{
    if (strcmp(c->name, "status") == 0) {
        struct cp_server *cp = c->cp;
        json_t *doc = json_pack("{s:s, s:s, s:o, s:o}", "object", "events_status", "node",
                                cp->cfg.node_id ? cp->cfg.node_id : "", "log",
                                cp__events_status(cp), "usage", cp__usage_status(cp));
        cp_call_json(c, 200, doc, -1);
        return;
    }
    size_t n = strlen(c->name);
    if (n == 0 || n > 18 || c->name[0] == '0' || strspn(c->name, "0123456789") != n) {
        cp_call_not_found(c);
        return;
    }
    const char *params[] = {c->name};
    cp_call_query(c, get_sql, 1, params, on_one);
}

const struct cp_resource cp_api_events = {
    .name = "events",
    .kind = "event",
    .list = list,
    .get = get,
};
