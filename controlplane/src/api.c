/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's framework (see api.h): authentication, routing, calls, responses. */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "metrics.h"
#include "sy/log.h"
#include "sy/util.h"

#define API_PREFIX "/admin/v1/"
#define MAX_CALL_PARAMS 8

/* What a call keeps that handlers do not see. */
struct call_private {
    struct cp_call pub;
    cp_call_result_cb cb;
    char *params[MAX_CALL_PARAMS];
    unsigned n_params;
};

static const struct cp_resource *const resources[] = {
    &cp_api_providers, &cp_api_deployments, &cp_api_models,
    &cp_api_keys,      &cp_api_catalog,     &cp_api_status,
    &cp_api_usage,     &cp_api_events,      &cp_api_audit,
    &cp_api_alert_channels, &cp_api_alert_rules, &cp_api_alerts, &cp_api_alert_deliveries,
    &cp_api_budgets,
    &cp_api_guardrails,
    &cp_api_requests,
};

/* What the framework learns about an admin write while serving it, for its audit record:
 * kept in the request (req->ctx, in its arena) until the request ends. */
struct audit_note {
    enum cp_role role;
    const char *token_name; /* a named token's name (in the request's arena), or NULL */
    int64_t version;        /* the ETag of the answer, -1 for none */
};

/* ============================================================================================
 * Calls
 * ========================================================================================== */

static void call_free(struct cp_call *c)
{
    struct call_private *p = (struct call_private *)c;
    if (c->req) {
        c->req->handler = NULL;
        c->req->on_abort = NULL;
    }
    if (c->free_state && c->state)
        c->free_state(c->state);
    free(c->name);
    json_decref(c->body);
    for (unsigned i = 0; i < p->n_params; i++)
        free(p->params[i]);
    free(p);
}

static void call_abort(struct sy_http_request *req)
{
    struct cp_call *c = req->handler;
    c->req = NULL;
    if (!c->query_running)
        call_free(c);
}

static void db_cb(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct call_private *p = ud;
    struct cp_call *c = &p->pub;
    c->query_running = false;
    if (!c->req) {
        call_free(c);
        return;
    }
    p->cb(c, res, err);
}

void cp_call_query(struct cp_call *c, const char *sql, int nparams, const char *const *params,
                   cp_call_result_cb cb)
{
    struct call_private *p = (struct call_private *)c;
    p->cb = cb;
    c->query_running = true;
    if (cp_db_query(c->cp->db, sql, nparams, params, db_cb, p) < 0) {
        c->query_running = false;
        cp_call_error(c, 503, "service_unavailable", "database_unavailable", NULL,
                      "The control plane is shutting down.");
    }
}

const char *cp_i64(char buf[24], int64_t v)
{
    snprintf(buf, 24, "%lld", (long long)v);
    return buf;
}

/* ============================================================================================
 * Responses
 * ========================================================================================== */

void cp_call_json_text(struct cp_call *c, int status, const char *json, int64_t etag)
{
    if (c->req) {
        struct audit_note *note = c->req->ctx;
        if (note && etag >= 0)
            note->version = etag;
        char extra[48] = "";
        if (etag >= 0)
            snprintf(extra, sizeof(extra), "ETag: \"%lld\"\r\n", (long long)etag);
        if (json)
            sy_http_resp_send(c->req, status, "application/json", extra[0] ? extra : NULL, json,
                              strlen(json));
        else
            sy_http_resp_send(c->req, status, NULL, extra[0] ? extra : NULL, "", 0);
    }
    call_free(c);
}

void cp_call_json(struct cp_call *c, int status, json_t *body, int64_t etag)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text) {
        size_t n = strlen(text);
        char *with_nl = sy_xrealloc(text, n + 2);
        with_nl[n] = '\n';
        with_nl[n + 1] = '\0';
        text = with_nl;
    }
    cp_call_json_text(c, status, text, etag);
    free(text);
}

__attribute__((format(printf, 6, 0))) static void
call_verror(struct cp_call *c, int status, const char *type, const char *code, const char *param,
            const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    json_t *err = json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", msg, "type", type,
                            "param", param ? json_string(param) : json_null(), "code",
                            code ? json_string(code) : json_null());
    cp_call_json(c, status, err, -1);
}

void cp_call_error(struct cp_call *c, int status, const char *type, const char *code,
                   const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    call_verror(c, status, type, code, param, fmt, ap);
    va_end(ap);
}

void cp_call_invalid(struct cp_call *c, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    call_verror(c, 400, "invalid_request_error", "invalid_value", param, fmt, ap);
    va_end(ap);
}

void cp_call_not_found(struct cp_call *c)
{
    cp_call_error(c, 404, "not_found_error", "not_found", NULL, "%s \"%s\" not found",
                  c->res->kind, c->name ? c->name : "");
}

/* "deployments_weight_range" on table deployments -> "weight". */
static void constraint_param(const char *constraint, const char *table, char *out, size_t n)
{
    out[0] = '\0';
    if (!constraint)
        return;
    const char *s = constraint;
    size_t tl = table ? strlen(table) : 0;
    if (tl && strncmp(s, table, tl) == 0 && s[tl] == '_')
        s += tl + 1;
    snprintf(out, n, "%s", s);
    char *last = strrchr(out, '_');
    if (last)
        *last = '\0';
}

void cp_call_db_failed(struct cp_call *c, const PGresult *res, const char *err)
{
    if (!res) {
        cp_call_error(c, 503, "service_unavailable", "database_unavailable", NULL,
                      "The configuration database is unavailable (%s); nothing was changed. "
                      "The data plane keeps serving its last configuration.",
                      err ? err : "no connection");
        return;
    }
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
    const char *constraint = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
    const char *table = PQresultErrorField(res, PG_DIAG_TABLE_NAME);
    /* The name being written (a rename's new name) rather than the one in the URL. */
    const char *name = c->name;
    if (c->body && json_is_string(json_object_get(c->body, "name")))
        name = json_string_value(json_object_get(c->body, "name"));
    if (!state)
        state = "";
    if (strncmp(state, "SY", 2) == 0) {
        int status = atoi(state + 2);
        const char *type = status == 404   ? "not_found_error"
                           : status == 409 ? "conflict_error"
                           : status == 412 ? "precondition_failed"
                                           : "invalid_request_error";
        const char *code = status == 404   ? "not_found"
                           : status == 409 ? "conflict"
                           : status == 412 ? "version_mismatch"
                                           : "invalid_value";
        cp_call_error(c, status >= 400 && status < 600 ? status : 400, type, code, hint, "%s",
                      msg ? msg : "invalid request");
        return;
    }
    if (strcmp(state, "23505") == 0) {
        cp_call_error(c, 409, "conflict_error", "already_exists", "name",
                      "a %s named \"%s\" already exists", c->res->kind, name ? name : "");
        return;
    }
    if (strcmp(state, "23503") == 0) {
        const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
        cp_call_error(c, 409, "conflict_error", "still_referenced", NULL,
                      "%s \"%s\" is still referenced: %s", c->res->kind, name ? name : "",
                      detail ? detail : msg ? msg : "");
        return;
    }
    if (strcmp(state, "23514") == 0 || strcmp(state, "23502") == 0 ||
        strncmp(state, "22", 2) == 0) {
        char param[64];
        constraint_param(constraint, table, param, sizeof(param));
        if (!param[0]) {
            const char *col = PQresultErrorField(res, PG_DIAG_COLUMN_NAME);
            snprintf(param, sizeof(param), "%s", col ? col : "");
        }
        cp_call_error(c, 400, "invalid_request_error", "invalid_value", param[0] ? param : NULL,
                      "%s%s%s", param[0] ? param : "", param[0] ? ": invalid value (" : "",
                      msg ? msg : "invalid value");
        return;
    }
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0) {
        cp_call_error(c, 409, "conflict_error", "concurrent_change", NULL,
                      "a concurrent change got in the way; retry the request");
        return;
    }
    sy_log(SY_LOG_ERROR, "api", "query failed: %s (%s)", err ? err : "", state);
    cp_call_error(c, 500, "server_error", "internal_error", NULL,
                  "The request failed inside the control plane: %s", msg ? msg : "unknown error");
    (void)hint;
}

/* ============================================================================================
 * Pages and documents
 * ========================================================================================== */

static bool parse_i64(const char *s, int64_t *out)
{
    uint64_t v;
    if (!s || !sy_parse_u64(s, strlen(s), &v) || v > INT64_MAX)
        return false;
    *out = (int64_t)v;
    return true;
}

bool cp_call_page(struct cp_call *c, int *limit, int64_t *after)
{
    const char *l = cp_call_param(c, "limit");
    const char *a = cp_call_param(c, "after");
    int64_t v;
    *limit = 50;
    *after = 0;
    if (l) {
        if (!parse_i64(l, &v) || v < 1 || v > 500) {
            cp_call_invalid(c, "limit", "limit: must be a whole number from 1 to 500");
            return false;
        }
        *limit = (int)v;
    }
    if (a) {
        if (!parse_i64(a, &v)) {
            cp_call_invalid(c, "after", "after: must be a cursor from next_cursor");
            return false;
        }
        *after = v;
    }
    return true;
}

void cp_call_page_result(struct cp_call *c, const PGresult *res, int limit)
{
    int rows = PQntuples(res);
    bool more = rows > limit;
    if (more)
        rows = limit;
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_puts(&b, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < rows; i++) {
        if (i)
            sy_buf_puts(&b, ",");
        sy_buf_puts(&b, PQgetvalue(res, i, 1));
    }
    sy_buf_printf(&b, "],\"has_more\":%s,\"next_cursor\":", more ? "true" : "false");
    if (more) {
        sy_buf_puts(&b, "\"");
        sy_buf_puts(&b, PQgetvalue(res, rows - 1, 0));
        sy_buf_puts(&b, "\"");
    } else {
        sy_buf_puts(&b, "null");
    }
    sy_buf_puts(&b, "}\n");
    cp_call_json_text(c, 200, b.data, -1);
    sy_buf_free(&b);
}

void cp_call_doc_result(struct cp_call *c, int status, const PGresult *res)
{
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) {
        cp_call_not_found(c);
        return;
    }
    int64_t version = -1;
    if (PQnfields(res) > 1 && !PQgetisnull(res, 0, 1))
        parse_i64(PQgetvalue(res, 0, 1), &version);
    cp_call_json_text(c, status, PQgetvalue(res, 0, 0), version);
}

void cp_json_merge(json_t *doc, json_t *patch, const char *const *deep)
{
    const char *key;
    json_t *v;
    json_object_foreach(patch, key, v)
    {
        json_t *cur = json_object_get(doc, key);
        bool merge = false;
        for (const char *const *d = deep; d && *d && !merge; d++)
            merge = strcmp(*d, key) == 0;
        if (merge && json_is_object(cur) && json_is_object(v)) {
            json_t *copy = json_copy(cur);
            json_object_update(copy, v);
            json_object_set_new(doc, key, copy);
        } else {
            json_object_set(doc, key, v);
        }
    }
}

void cp_call_on_doc(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    cp_call_doc_result(c, 200, res);
}

void cp_call_on_page(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    cp_call_page_result(c, res, (int)(intptr_t)c->state);
}

void cp_call_on_written(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    cp_call_doc_result(c, c->req->method == HTTP_POST ? 201 : 200, res);
}

/* ---- the update flow ------------------------------------------------------------------------ */

/* What an update keeps between starting and reading the item: PUT or PATCH. */
#define UPDATE_REPLACE ((void *)1)

static void free_json_state(void *p)
{
    json_decref(p);
}

void cp_call_update_read(struct cp_call *c, bool replace, const char *sql, const char *item,
                         cp_call_result_cb cb)
{
    if (!item) {
        cp_call_not_found(c);
        return;
    }
    c->state = replace ? UPDATE_REPLACE : NULL;
    const char *p[] = {item};
    cp_call_query(c, sql, 1, p, cb);
}

json_t *cp_call_update_doc(struct cp_call *c, const PGresult *res, const char *err,
                           const char *const *deep, bool add_name, int64_t *version)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return NULL;
    }
    if (PQntuples(res) == 0) {
        cp_call_not_found(c);
        return NULL;
    }
    bool replace = c->state == UPDATE_REPLACE;
    json_t *doc = replace ? json_object() : json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    if (!doc) {
        cp_call_error(c, 500, "server_error", "internal_error", NULL, "cannot read the %s",
                      c->res->kind);
        return NULL;
    }
    cp_json_merge(doc, c->body, deep);
    if (add_name && !json_object_get(doc, "name"))
        json_object_set_new(doc, "name", json_string(c->name));
    *version = c->if_match >= 0 ? c->if_match : atoll(PQgetvalue(res, 0, 1));
    c->state = doc; /* the strings a write's parameters borrow point into it */
    c->free_state = free_json_state;
    return doc;
}

void cp_call_on_updated(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    if (!PQgetisnull(res, 0, 0)) {
        cp_call_doc_result(c, 200, res);
    } else if (strcmp(PQgetvalue(res, 0, 2), "t") != 0) {
        cp_call_not_found(c);
    } else {
        cp_call_error(c, 412, "precondition_failed", "version_mismatch", "version",
                      "%s \"%s\" was changed by someone else (its version is no longer the one "
                      "given); fetch it again and retry",
                      c->res->kind, c->name);
    }
}

void cp_call_on_removed(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "0") == 0) {
        cp_call_not_found(c);
    } else if (!PQgetisnull(res, 0, 1)) {
        cp_call_error(c, 409, "conflict_error", "still_referenced", NULL, "%s \"%s\" %s: %s; %s",
                      c->res->kind, c->name, c->res->referrers, PQgetvalue(res, 0, 1),
                      c->res->referrers_fix);
    } else if (strcmp(PQgetvalue(res, 0, 2), "0") == 0) {
        cp_call_error(c, 412, "precondition_failed", "version_mismatch", "version",
                      "%s \"%s\" has changed since version %lld", c->res->kind, c->name,
                      (long long)c->if_match);
    } else {
        cp_call_json(c, 204, NULL, -1);
    }
}

/* ============================================================================================
 * Validation
 * ========================================================================================== */

/* Member <key> of <obj>; a key absent as such but written as a path ("limits.rpm") names the
 * member of a nested object, so that nested fields are validated and reported by their path. */
static json_t *member(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    const char *dot = strchr(key, '.');
    if (v || !dot || (size_t)(dot - key) >= 128)
        return v;
    char head[128];
    memcpy(head, key, (size_t)(dot - key));
    head[dot - key] = '\0';
    json_t *sub = json_object_get(obj, head);
    return json_is_object(sub) ? member(sub, dot + 1) : NULL;
}

bool cp_val_str(struct cp_call *c, json_t *obj, const char *key, bool required, size_t max,
                const char **out)
{
    json_t *v = member(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required) {
            cp_call_invalid(c, key, "%s: is required", key);
            return false;
        }
        return true;
    }
    if (!json_is_string(v)) {
        cp_call_invalid(c, key, "%s: must be a string", key);
        return false;
    }
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (required && n == 0) {
        cp_call_invalid(c, key, "%s: must not be empty", key);
        return false;
    }
    if (n > max) {
        cp_call_invalid(c, key, "%s: must be at most %zu characters", key, max);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
            cp_call_invalid(c, key, "%s: must not contain control characters", key);
            return false;
        }
    }
    *out = s;
    return true;
}

bool cp_val_name(struct cp_call *c, json_t *obj, const char *key, size_t max, const char **out)
{
    if (!cp_val_str(c, obj, key, true, max, out))
        return false;
    for (const char *p = *out; *p; p++) {
        char ch = *p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
              ch == '-')) {
            cp_call_invalid(c, key,
                            "%s: may contain only lowercase letters, digits, '.', '_' and '-'",
                            key);
            return false;
        }
    }
    return true;
}

bool cp_val_enum(struct cp_call *c, json_t *obj, const char *key, const char *const *choices,
                 const char *dflt, const char **out)
{
    json_t *v = member(obj, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        if (!dflt) {
            cp_call_invalid(c, key, "%s: is required", key);
            return false;
        }
        return true;
    }
    if (json_is_string(v)) {
        for (const char *const *ch = choices; *ch; ch++) {
            if (strcmp(json_string_value(v), *ch) == 0) {
                *out = *ch;
                return true;
            }
        }
    }
    struct sy_buf b = SY_BUF_INIT;
    for (const char *const *ch = choices; *ch; ch++)
        sy_buf_printf(&b, "%s\"%s\"", ch == choices ? "" : ", ", *ch);
    cp_call_invalid(c, key, "%s: must be one of %s", key, b.data);
    sy_buf_free(&b);
    return false;
}

bool cp_val_int(struct cp_call *c, json_t *obj, const char *key, int64_t min, int64_t max,
                bool *present, int64_t *out)
{
    json_t *v = member(obj, key);
    *present = false;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        cp_call_invalid(c, key, "%s: must be a whole number from %lld to %lld", key,
                        (long long)min, (long long)max);
        return false;
    }
    *present = true;
    *out = json_integer_value(v);
    return true;
}

bool cp_val_number(struct cp_call *c, json_t *obj, const char *key, double *out)
{
    json_t *v = member(obj, key);
    *out = 0;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1e9) {
        cp_call_invalid(c, key, "%s: must be a number from 0 to 1000000000", key);
        return false;
    }
    *out = json_number_value(v);
    return true;
}

bool cp_val_bool(struct cp_call *c, json_t *obj, const char *key, bool dflt, bool *out)
{
    json_t *v = member(obj, key);
    *out = dflt;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_boolean(v)) {
        cp_call_invalid(c, key, "%s: must be true or false", key);
        return false;
    }
    *out = json_is_true(v);
    return true;
}

bool cp_val_object(struct cp_call *c, json_t *obj, const char *key, const char *const *allowed,
                   json_t **out)
{
    json_t *v = member(obj, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return true;
    if (!json_is_object(v)) {
        cp_call_invalid(c, key, "%s: must be an object", key);
        return false;
    }
    if (allowed && !cp_val_known(c, v, key, allowed))
        return false;
    *out = v;
    return true;
}

bool cp_val_known(struct cp_call *c, json_t *obj, const char *prefix, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(key, *a) == 0;
        if (!ok) {
            char param[160];
            snprintf(param, sizeof(param), "%s%s%s", prefix ? prefix : "", prefix ? "." : "",
                     key);
            cp_call_invalid(c, param, "%s: unknown field", param);
            return false;
        }
    }
    return true;
}

/* ============================================================================================
 * Routing
 * ========================================================================================== */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decode <s>/<n>; NULL on a malformed escape or an embedded NUL. */
static char *url_decode(const char *s, size_t n)
{
    char *out = sy_xmalloc(n + 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(out);
                return NULL;
            }
            out[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (s[i] == '+') {
            out[j++] = ' ';
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return out;
}

const char *cp_call_param(struct cp_call *c, const char *name)
{
    struct call_private *p = (struct call_private *)c;
    size_t len;
    if (!c->req)
        return NULL;
    const char *v = sy_http_req_query(c->req, name, &len);
    if (!v || p->n_params == MAX_CALL_PARAMS)
        return NULL;
    char *d = url_decode(v, len);
    if (!d)
        return NULL;
    p->params[p->n_params++] = d;
    return d;
}

/* The token's role, compared in constant time whatever the lengths: compare SHA-256 digests,
 * every one of them, whichever matches. A named token's name goes to *<name> (NULL otherwise). */
static enum cp_role authenticate(struct cp_server *cp, struct sy_http_request *req,
                                 const char **name)
{
    *name = NULL;
    size_t len;
    const char *h = sy_http_req_header(req, "authorization", &len);
    if (!h || len < 8 || strncasecmp(h, "Bearer ", 7) != 0)
        return CP_ROLE_NONE;
    unsigned char given[CP_CRYPTO_HASH_LEN], want[CP_CRYPTO_HASH_LEN];
    cp_crypto_sha256(h + 7, len - 7, given);
    enum cp_role role = CP_ROLE_NONE;
    if (cp->cfg.admin_token) {
        cp_crypto_sha256(cp->cfg.admin_token, strlen(cp->cfg.admin_token), want);
        if (cp_crypto_equal(given, want, sizeof(want)))
            role = CP_ROLE_ADMIN;
    }
    if (cp->cfg.readonly_token) {
        cp_crypto_sha256(cp->cfg.readonly_token, strlen(cp->cfg.readonly_token), want);
        if (cp_crypto_equal(given, want, sizeof(want)) && role == CP_ROLE_NONE)
            role = CP_ROLE_READ;
    }
    for (size_t i = 0; i < cp->cfg.n_tokens; i++) {
        const struct cp_token *t = &cp->cfg.tokens[i];
        if (cp_crypto_equal(given, t->hash, sizeof(t->hash)) && role == CP_ROLE_NONE) {
            role = t->role;
            *name = t->name;
        }
    }
    return role;
}

static int64_t parse_if_match(struct sy_http_request *req)
{
    size_t len;
    const char *h = sy_http_req_header(req, "if-match", &len);
    if (!h)
        return -1;
    if (len > 2 && h[0] == 'W' && h[1] == '/') {
        h += 2;
        len -= 2;
    }
    if (len >= 2 && h[0] == '"' && h[len - 1] == '"') {
        h++;
        len -= 2;
    }
    uint64_t v;
    if (!sy_parse_u64(h, len, &v) || v > INT64_MAX)
        return -2;
    return (int64_t)v;
}

static void simple_error(struct sy_http_request *req, int status, const char *type,
                         const char *code, const char *msg)
{
    sy_http_resp_error(req, status, type, code, NULL, "%s", msg);
}

void cp__api_request(struct sy_http_request *req)
{
    struct cp_server *cp = req->server->data;
    if (strcmp(req->path, "/metrics") == 0) { /* its own token, if any: metrics.c */
        cp__metrics_request(req);
        return;
    }
    if (strcmp(req->path, "/healthz") == 0) {
        const char *body = cp_db_is_up(cp->db) ? "{\"status\":\"ok\",\"database\":\"up\"}\n"
                                               : "{\"status\":\"ok\",\"database\":\"down\"}\n";
        sy_http_resp_send(req, 200, "application/json", NULL, body, strlen(body));
        return;
    }
    if (strncmp(req->path, API_PREFIX, strlen(API_PREFIX)) != 0) {
        sy_http_resp_error(req, 404, "not_found_error", "unknown_url", NULL,
                           "Unknown URL %s: the admin API lives under /admin/v1/", req->path);
        return;
    }
    const char *token_name;
    enum cp_role role = authenticate(cp, req, &token_name);
    if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
        /* A write, or an attempt at one: audited when it ends (cp__api_request_done). */
        struct audit_note *note = sy_arena_alloc(&req->arena, sizeof(*note));
        note->role = role;
        note->token_name =
            token_name ? sy_arena_strndup(&req->arena, token_name, strlen(token_name)) : NULL;
        note->version = -1;
        req->ctx = note;
    }
    if (role == CP_ROLE_NONE) {
        simple_error(req, 401, "authentication_error", "invalid_admin_token",
                     "A valid admin token is required: Authorization: Bearer <token>.");
        return;
    }

    const char *rest = req->path + strlen(API_PREFIX);
    const char *slash = strchr(rest, '/');
    size_t rlen = slash ? (size_t)(slash - rest) : strlen(rest);
    const struct cp_resource *res = NULL;
    for (size_t i = 0; i < SY_ARRAY_LEN(resources); i++) {
        if (strlen(resources[i]->name) == rlen && strncmp(rest, resources[i]->name, rlen) == 0)
            res = resources[i];
    }
    if (!res) {
        sy_http_resp_error(req, 404, "not_found_error", "unknown_resource", NULL,
                           "Unknown resource \"%.*s\"", (int)rlen, rest);
        return;
    }
    char *name = NULL;
    if (slash && slash[1]) {
        const char *item = slash + 1;
        if (strchr(item, '/')) {
            simple_error(req, 404, "not_found_error", "unknown_url", "Unknown URL.");
            return;
        }
        name = url_decode(item, strlen(item));
        if (!name) {
            simple_error(req, 400, "invalid_request_error", "invalid_value",
                         "The name in the URL is not properly percent-encoded.");
            return;
        }
    }

    void (*handler)(struct cp_call *) = NULL;
    void (*update)(struct cp_call *, bool) = NULL;
    bool replace = false, wants_body = false;
    const char *allow = name ? "GET, PUT, PATCH, DELETE" : "GET, POST";
    switch (req->method) {
    case HTTP_GET:
    case HTTP_HEAD:
        handler = name ? res->get : res->list;
        break;
    case HTTP_POST:
        handler = name ? NULL : res->create;
        wants_body = true;
        break;
    case HTTP_PUT:
    case HTTP_PATCH:
        update = name ? res->update : NULL;
        replace = req->method == HTTP_PUT;
        wants_body = true;
        break;
    case HTTP_DELETE:
        handler = name ? res->remove : NULL;
        break;
    default:
        break;
    }
    if (!handler && !update) {
        free(name);
        char extra[80];
        snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
        char body[256];
        snprintf(body, sizeof(body),
                 "{\"error\":{\"message\":\"%s is not allowed here; allowed: %s\","
                 "\"type\":\"invalid_request_error\",\"param\":null,"
                 "\"code\":\"method_not_allowed\"}}\n",
                 llhttp_method_name(req->method), allow);
        sy_http_resp_send(req, 405, "application/json", extra, body, strlen(body));
        return;
    }
    if (role != CP_ROLE_ADMIN && req->method != HTTP_GET && req->method != HTTP_HEAD) {
        free(name);
        simple_error(req, 403, "permission_error", "read_only_token",
                     "This token is read-only; writes need the admin token.");
        return;
    }
    json_t *body = NULL;
    if (wants_body) {
        json_error_t jerr;
        body = req->body.len ? json_loadb(req->body.data, req->body.len, 0, &jerr) : NULL;
        if (!body || !json_is_object(body)) {
            free(name);
            if (body)
                sy_http_resp_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                                   "The request body must be a JSON object.");
            else if (req->body.len)
                sy_http_resp_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                                   "The request body is not valid JSON: %s (line %d, column %d)",
                                   jerr.text, jerr.line, jerr.column);
            else
                sy_http_resp_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                                   "The request body is empty; send a JSON object.");
            json_decref(body);
            return;
        }
    }
    int64_t if_match = parse_if_match(req);
    if (if_match == -2) {
        free(name);
        json_decref(body);
        simple_error(req, 400, "invalid_request_error", "invalid_value",
                     "If-Match must be a version as given in ETag, e.g. \"3\".");
        return;
    }

    struct call_private *p = sy_xcalloc(1, sizeof(*p));
    struct cp_call *c = &p->pub;
    c->cp = cp;
    c->req = req;
    c->role = role;
    c->res = res;
    c->name = name;
    c->body = body;
    c->if_match = if_match;
    req->handler = c;
    req->on_abort = call_abort;
    if (update)
        update(c, replace);
    else
        handler(c);
}

void cp__api_request_done(struct sy_http_request *req)
{
    struct audit_note *note = req->ctx;
    if (!note)
        return;
    req->ctx = NULL;
    cp__audit_request(req->server->data, req, note->role, note->token_name, note->version);
}
