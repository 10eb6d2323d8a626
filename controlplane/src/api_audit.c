/* SPDX-License-Identifier: Apache-2.0 */
/** The audit log: who changed what, when.
 *
 * Every admin write (POST, PUT, PATCH, DELETE under /admin/v1/), accepted or refused, leaves a
 * row in audit_log (migrations/008_audit.sql). The framework (api.c) hands each finished write
 * request here from the HTTP server's request-done hook, so every resource is covered, those
 * added later too, without a line of their own. The row is queued on the control plane's one
 * database connection right after the response went out: the connection runs queries in order,
 * so a client that reads the audit log after its write's answer finds the write's row. A row
 * that cannot be stored because the database is away is kept in memory and retried (up to
 * AUDIT_QUEUE_MAX rows; beyond that, and at stop, the oldest is written to the log instead).
 *
 *     GET /admin/v1/audit?since=&until=&resource=&actor=&status=&limit=&after=
 *     GET /admin/v1/audit/<id>
 *
 * Rows come oldest first, paginated like the events. Each is
 *
 *     {"id", "at", "actor", "role", "actor_claimed", "remote", "action", "method", "path",
 *      "resource", "item", "status", "version", "request_id", "summary"}
 *
 * in the audit_log table that 001 made for the command-line tools (rotate-key's rows have
 * actor "cli", an action and a summary, and no request); 008 added the request's columns.
 *
 * `actor` is a named token's name (--admin-tokens-file, tokens.c), else the role and a
 * fingerprint of the token (the first 8 hex digits of its SHA-256), so two tokens of one role
 * are told apart without storing either; `actor_claimed` is the
 * X-Switchyard-Actor header as sent (a name the caller chose, recorded, not verified);
 * `summary` is the JSON body with secret members replaced by "[REDACTED]". */

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "api.h"
#include "sy/log.h"
#include "sy/util.h"
#include "usage.h"

#define AUDIT_QUEUE_MAX   10000 /* rows kept while the database is away */
#define AUDIT_RETRY_MS    1000
#define AUDIT_SUMMARY_MAX (32 * 1024) /* larger redacted bodies are summarised by their keys */
#define AUDIT_CLAIMED_MAX 128
#define AUDIT_N_PARAMS    13

/* One row on its way to the database: its parameters as text (NULL: SQL NULL). */
struct audit_row {
    struct audit_row *next; /* in the retry queue */
    struct cp_audit *owner;
    char *params[AUDIT_N_PARAMS];
};

struct cp_audit {
    struct cp_server *cp;
    uv_timer_t retry;
    struct audit_row *head, *tail; /* waiting for a retry, oldest first */
    unsigned n_waiting;
    unsigned in_flight; /* inserts sent, not answered */
    bool stopping;
    bool closed; /* the retry timer's close callback ran */
};

static const char insert_sql[] =
    "INSERT INTO audit_log (at, actor, role, actor_claimed, remote, method, path, resource,"
    " resource_name, status, version, request_id, detail, action)"
    " VALUES (to_timestamp($1::bigint / 1000.0), $2, $3, $4, $5, $6, $7, $8, $9, $10::int,"
    " $11::bigint, $12, $13::jsonb, CASE $6 WHEN 'POST' THEN 'create' WHEN 'PUT' THEN 'replace'"
    " WHEN 'PATCH' THEN 'update' WHEN 'DELETE' THEN 'delete' ELSE lower($6) END)";

/* ============================================================================================
 * Redaction
 * ========================================================================================== */

/* Members that hold a secret, by name (any case) or by suffix. */
static bool secret_name(const char *k)
{
    static const char *const names[] = {"api_key",  "apikey", "secret",        "key",
                                        "password", "token",  "authorization", "master_key"};
    static const char *const suffixes[] = {"_key", "_secret", "_password", "_token"};
    size_t n = strlen(k);
    for (size_t i = 0; i < SY_ARRAY_LEN(names); i++)
        if (strcasecmp(k, names[i]) == 0)
            return true;
    for (size_t i = 0; i < SY_ARRAY_LEN(suffixes); i++) {
        size_t sl = strlen(suffixes[i]);
        if (n > sl && strcasecmp(k + n - sl, suffixes[i]) == 0)
            return true;
    }
    return false;
}

/* Replace, in place, every secret member of <v> at any depth with "[REDACTED]". */
static void redact(json_t *v)
{
    const char *k;
    json_t *m;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach(v, k, m)
        {
            if (secret_name(k) && !json_is_null(m))
                json_object_set_new(v, k, json_string("[REDACTED]"));
            else
                redact(m);
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, m) redact(m);
    }
}

char *cp__audit_summary(const char *body, size_t len)
{
    json_error_t jerr;
    json_t *doc;
    char *text;

    if (len == 0)
        return NULL;
    doc = json_loadb(body, len, 0, &jerr);
    if (!doc) {
        /* Never store what could not be read: it may hold a secret we cannot find. */
        char buf[96];
        snprintf(buf, sizeof(buf), "{\"invalid_json\":true,\"bytes\":%zu}", len);
        return sy_xstrdup(buf);
    }
    redact(doc);
    text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    if (text && strlen(text) > AUDIT_SUMMARY_MAX) {
        /* Too large to keep whole: its size and its top-level member names. */
        json_t *keys = json_array();
        const char *k;
        json_t *m;
        if (json_is_object(doc))
            json_object_foreach(doc, k, m) json_array_append_new(keys, json_string(k));
        free(text);
        json_t *s =
            json_pack("{s:b,s:I,s:o}", "truncated", 1, "bytes", (json_int_t)len, "keys", keys);
        text = json_dumps(s, JSON_COMPACT);
        json_decref(s);
    }
    json_decref(doc);
    return text;
}

/* ============================================================================================
 * Storing
 * ========================================================================================== */

static void row_free(struct audit_row *r)
{
    for (int i = 0; i < AUDIT_N_PARAMS; i++)
        free(r->params[i]);
    free(r);
}

/* A row we cannot store goes to the log, so that it is never silently lost. */
static void row_to_log(const struct audit_row *r, const char *why)
{
    sy_log(SY_LOG_ERROR, "audit",
           "audit record not stored (%s): at_ms=%s actor=%s role=%s claimed=%s remote=%s "
           "method=%s path=%s status=%s version=%s request_id=%s summary=%s",
           why, r->params[0], r->params[1], r->params[2], r->params[3] ? r->params[3] : "-",
           r->params[4] ? r->params[4] : "-", r->params[5], r->params[6], r->params[9],
           r->params[10] ? r->params[10] : "-", r->params[11] ? r->params[11] : "-",
           r->params[12] ? r->params[12] : "-");
}

static void send_row(struct cp_audit *a, struct audit_row *r);

static void wait_row(struct cp_audit *a, struct audit_row *r)
{
    r->next = NULL;
    if (a->tail)
        a->tail->next = r;
    else
        a->head = r;
    a->tail = r;
    if (++a->n_waiting > AUDIT_QUEUE_MAX) {
        struct audit_row *old = a->head;
        a->head = old->next;
        if (!a->head)
            a->tail = NULL;
        a->n_waiting--;
        row_to_log(old, "too many records waiting for the database");
        row_free(old);
    }
}

static void retry_cb(uv_timer_t *t)
{
    struct cp_audit *a = t->data;
    struct audit_row *r = a->head;
    a->head = a->tail = NULL;
    a->n_waiting = 0;
    while (r) {
        struct audit_row *next = r->next;
        send_row(a, r);
        r = next;
    }
}

static void inserted(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct audit_row *r = ud;
    struct cp_audit *a = r->owner;
    a->in_flight--;
    if (!err) {
        row_free(r);
    } else if (res || a->stopping) {
        /* The database refused the row itself, or we are closing: no retry can help. */
        row_to_log(r, err);
        row_free(r);
    } else {
        wait_row(a, r);
        if (!uv_is_active((uv_handle_t *)&a->retry))
            uv_timer_start(&a->retry, retry_cb, AUDIT_RETRY_MS, 0);
    }
    if (a->stopping && a->in_flight == 0 && a->closed)
        free(a);
}

static void send_row(struct cp_audit *a, struct audit_row *r)
{
    r->owner = a;
    r->next = NULL;
    a->in_flight++;
    if (cp_db_query(a->cp->db, insert_sql, AUDIT_N_PARAMS, (const char *const *)r->params, inserted,
                    r) < 0) {
        a->in_flight--;
        row_to_log(r, "the database connection is closing");
        row_free(r);
    }
}

static const char *role_name(enum cp_role role)
{
    return role == CP_ROLE_ADMIN ? "admin" : role == CP_ROLE_READ ? "read" : "none";
}

static char *dup_header(const struct sy_http_request *req, const char *name, size_t max)
{
    size_t len;
    const char *v = sy_http_req_header(req, name, &len);
    if (!v || len == 0)
        return NULL;
    char *s = sy_xstrndup(v, SY_MIN(len, max));
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return s;
}

void cp__audit_request(struct cp_server *cp, struct sy_http_request *req, enum cp_role role,
                       const char *token_name, int64_t version)
{
    struct cp_audit *a = cp->audit;
    struct audit_row *r;
    struct timeval tv;
    char buf[64];
    size_t len;

    if (!a || a->stopping)
        return;
    r = sy_xcalloc(1, sizeof(*r));
    gettimeofday(&tv, NULL);
    snprintf(buf, sizeof(buf), "%lld", (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000);
    r->params[0] = sy_xstrdup(buf);

    /* who: the token's role and fingerprint, never the token */
    const char *auth = sy_http_req_header(req, "authorization", &len);
    if (token_name) {
        r->params[1] = sy_xstrdup(token_name);
    } else if (auth && len > 7 && strncasecmp(auth, "Bearer ", 7) == 0) {
        unsigned char h[CP_CRYPTO_HASH_LEN];
        cp_crypto_sha256(auth + 7, len - 7, h);
        snprintf(buf, sizeof(buf), "%s:%02x%02x%02x%02x", role_name(role), h[0], h[1], h[2], h[3]);
        r->params[1] = sy_xstrdup(buf);
    } else {
        r->params[1] = sy_xstrdup("anonymous");
    }
    r->params[2] = sy_xstrdup(role_name(role));
    r->params[3] = dup_header(req, "x-switchyard-actor", AUDIT_CLAIMED_MAX);
    if (sy_http_req_peer(req, buf, sizeof(buf)) == 0)
        r->params[4] = sy_xstrdup(buf);
    r->params[5] = sy_xstrdup(llhttp_method_name(req->method));
    r->params[6] = sy_xstrdup(req->path);

    /* what: /admin/v1/<resource>[/<item>] */
    const char *rest = req->path + strlen("/admin/v1/");
    if (strncmp(req->path, "/admin/v1/", strlen("/admin/v1/")) == 0 && *rest) {
        const char *slash = strchr(rest, '/');
        r->params[7] = slash ? sy_xstrndup(rest, (size_t)(slash - rest)) : sy_xstrdup(rest);
        if (slash && slash[1])
            r->params[8] = sy_xstrdup(slash + 1);
    }
    /* A request the client left before its answer: 499, as the change may or may not have
     * been made (the row then tells only that it was asked for). */
    snprintf(buf, sizeof(buf), "%d", req->resp_status ? req->resp_status : 499);
    r->params[9] = sy_xstrdup(buf);
    if (version >= 0)
        r->params[10] = sy_xstrdup(cp_i64(buf, version));
    if (req->id[0])
        r->params[11] = sy_xstrdup(req->id);
    r->params[12] = cp__audit_summary(req->body.data, req->body.len);
    send_row(a, r);
}

int cp__audit_start(struct cp_server *cp, char **err)
{
    struct cp_audit *a = sy_xcalloc(1, sizeof(*a));
    a->cp = cp;
    uv_timer_init(&cp->loop, &a->retry);
    a->retry.data = a;
    cp->audit = a;
    return 0;
}

static void retry_closed(uv_handle_t *h)
{
    struct cp_audit *a = h->data;
    a->closed = true;
    if (a->in_flight == 0)
        free(a);
}

void cp__audit_stop(struct cp_server *cp)
{
    struct cp_audit *a = cp->audit;
    if (!a)
        return;
    cp->audit = NULL;
    a->stopping = true;
    for (struct audit_row *r = a->head, *next; r; r = next) {
        next = r->next;
        row_to_log(r, "the control plane stopped before the database came back");
        row_free(r);
    }
    a->head = a->tail = NULL;
    a->n_waiting = 0;
    /* Inserts in flight answer when the database closes (cp_db_close fails them). */
    uv_close((uv_handle_t *)&a->retry, retry_closed);
}

/* ============================================================================================
 * GET /admin/v1/audit
 * ========================================================================================== */

#define AUDIT_DOC                                                                                  \
    "json_build_object('id', id,"                                                                  \
    " 'at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"                  \
    " 'actor', actor, 'role', role, 'actor_claimed', actor_claimed, 'remote', remote,"             \
    " 'action', action, 'method', method, 'path', path, 'resource', resource,"                     \
    " 'item', resource_name, 'status', status, 'version', version, 'request_id', request_id,"      \
    " 'summary', detail)::text"

static const char list_sql[] =
    "SELECT id, " AUDIT_DOC " FROM audit_log"
    " WHERE id > $1::bigint"
    "  AND ($2::text IS NULL OR resource = $2)"
    "  AND ($3::text IS NULL OR actor = $3 OR actor_claimed = $3)"
    "  AND ($4::bigint IS NULL OR at >= to_timestamp($4::bigint / 1000.0))"
    "  AND ($5::bigint IS NULL OR at < to_timestamp($5::bigint / 1000.0))"
    "  AND ($6::int IS NULL OR status = $6::int)"
    " ORDER BY id LIMIT $7::int";

static const char get_sql[] = "SELECT " AUDIT_DOC " FROM audit_log WHERE id = $1::bigint";

/* ?<name>= as a string of 1..<max> bytes; false after answering 400. */
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
    uint64_t st;
    const char *resource, *actor, *since, *until, *status;
    char after_s[24], limit_s[24], since_s[24], until_s[24];
    if (!str_param(c, "resource", 64, &resource) || !str_param(c, "actor", 128, &actor) ||
        !time_param(c, "since", since_s, &since) || !time_param(c, "until", until_s, &until) ||
        !str_param(c, "status", 3, &status) || !cp_call_page(c, &limit, &after))
        return;
    if (status && (!sy_parse_u64(status, strlen(status), &st) || st < 100 || st > 599)) {
        cp_call_invalid(c, "status", "status: must be an HTTP status from 100 to 599");
        return;
    }
    c->state = (void *)(intptr_t)limit;
    const char *params[] = {cp_i64(after_s, after),    resource, actor, since, until, status,
                            cp_i64(limit_s, limit + 1)};
    cp_call_query(c, list_sql, 7, params, cp_call_on_page);
}

static void get(struct cp_call *c)
{
    size_t n = strlen(c->name);
    if (n == 0 || n > 18 || c->name[0] == '0' || strspn(c->name, "0123456789") != n) {
        cp_call_not_found(c);
        return;
    }
    const char *params[] = {c->name};
    cp_call_query(c, get_sql, 1, params, cp_call_on_doc);
}

const struct cp_resource cp_api_audit = {
    .name = "audit",
    .kind = "audit record",
    .list = list,
    .get = get,
};
