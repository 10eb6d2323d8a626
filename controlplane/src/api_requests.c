/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's request log: GET /admin/v1/requests, GET /admin/v1/requests/<id> and
 * GET /admin/v1/requests/status (request_log.h says what is logged and when).
 *
 *     ?request_id=          one request (the x-request-id the client got)
 *     &key= &model= &deployment= &outcome=
 *     &since= &until=       RFC 3339 or Unix seconds: since <= at < until
 *     &limit= &after=       a page (1..500, default 50) after the cursor next_cursor gave
 *
 * Requests come oldest first (by id). A listed request is
 *
 *     {"id", "at", "request_id", "node", "worker", "key_id", "key", "agent", "user", "model",
 *      "deployment", "status", "outcome", "latency_ms", "ttfb_ms", "prompt_tokens",
 *      "completion_tokens", "cost", "stream", "attempts", "table_version", "bodies_logged"}
 *
 * and the single-item read adds "request": {"body", "bytes", "truncated"} and "response"
 * (the same; a stream's body is its server-sent events as sent), both null when no body was
 * logged. Bodies are never in a list: they may be large, and they are the sensitive part. */

#include <stdio.h>
#include <string.h>

#include "api.h"
#include "request_log.h"
#include "sy/shm.h"
#include "usage.h"

#define REQUEST_DOC                                                                                \
    "'id', id, 'at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"         \
    " 'request_id', request_id, 'node', node, 'worker', worker, 'key_id', key_id, 'key', key,"     \
    " 'agent', agent, 'user', user_name, 'model', model, 'deployment', deployment,"                \
    " 'status', status, 'outcome', outcome, 'latency_ms', round(latency_ms::numeric, 3),"          \
    " 'ttfb_ms', round(ttfb_ms::numeric, 3), 'prompt_tokens', prompt_tokens,"                      \
    " 'completion_tokens', completion_tokens, 'cost', cost, 'stream', stream,"                     \
    " 'attempts', attempts, 'table_version', table_version,"                                       \
    " 'bodies_logged', request_body IS NOT NULL"

static const char list_sql[] =
    "SELECT id, json_build_object(" REQUEST_DOC ")::text FROM request_log"
    " WHERE id > $1::bigint"
    "  AND ($2::text IS NULL OR request_id = $2)"
    "  AND ($3::text IS NULL OR key = $3)"
    "  AND ($4::text IS NULL OR model = $4)"
    "  AND ($5::text IS NULL OR deployment = $5)"
    "  AND ($6::text IS NULL OR outcome = $6)"
    "  AND ($7::bigint IS NULL OR at >= to_timestamp($7::bigint / 1000.0))"
    "  AND ($8::bigint IS NULL OR at < to_timestamp($8::bigint / 1000.0))"
    " ORDER BY id LIMIT $9::int";

static const char get_sql[] =
    "SELECT json_build_object(" REQUEST_DOC ","
    " 'request', CASE WHEN request_body IS NULL THEN NULL ELSE json_build_object('body',"
    "  request_body, 'bytes', request_bytes, 'truncated', request_truncated) END,"
    " 'response', CASE WHEN response_body IS NULL THEN NULL ELSE json_build_object('body',"
    "  response_body, 'bytes', response_bytes, 'truncated', response_truncated) END)::text"
    " FROM request_log WHERE id = $1::bigint";

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
    const char *rid, *key, *model, *dep, *outcome, *since, *until;
    char after_s[24], limit_s[24], since_s[24], until_s[24];
    if (!str_param(c, "request_id", SY_EVENT_REQUEST_ID_LEN - 1, &rid) ||
        !str_param(c, "key", 128, &key) || !str_param(c, "model", 128, &model) ||
        !str_param(c, "deployment", 128, &dep) || !str_param(c, "outcome", 32, &outcome) ||
        !time_param(c, "since", since_s, &since) || !time_param(c, "until", until_s, &until) ||
        !cp_call_page(c, &limit, &after))
        return;
    if (outcome) {
        bool known = false;
        for (int o = 0; o < SY_OUTCOME_MAX && !known; o++)
            known = strcmp(outcome, sy_outcome_label((enum sy_outcome)o)) == 0;
        if (!known) {
            cp_call_invalid(c, "outcome",
                            "outcome: must be an outcome such as \"success\", \"upstream_5xx\", "
                            "\"timeout\" or \"rate_limited\"");
            return;
        }
    }
    c->state = (void *)(intptr_t)limit;
    const char *params[] = {cp_i64(after_s, after),    rid, key, model, dep, outcome, since, until,
                            cp_i64(limit_s, limit + 1)};
    cp_call_query(c, list_sql, 9, params, cp_call_on_page);
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
        json_t *doc =
            json_pack("{s:s, s:s, s:o}", "object", "request_log_status", "node",
                      cp->cfg.node_id ? cp->cfg.node_id : "", "log", cp__reqlog_status(cp));
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

const struct cp_resource cp_api_requests = {
    .name = "requests",
    .kind = "request",
    .list = list,
    .get = get,
};
