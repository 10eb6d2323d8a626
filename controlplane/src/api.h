/* SPDX-License-Identifier: Apache-2.0 */
/** The admin REST API's framework: routing of /admin/v1/<resource>[/<name>], token roles, the
 * per-request call object, database queries bound to a call, JSON responses and errors in the
 * shape {"error":{"message","type","param","code"}}, pagination, and field validation.
 *
 * A resource (api_providers.c, ...) fills a struct cp_resource. Its handlers answer through
 * cp_call_json / cp_call_error (each ends the call and frees it) or start a query with
 * cp_call_query, whose callback then answers. If the client goes away while a query runs, the
 * callback is not invoked and the call is freed: a handler never sees a dead request. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "server.h"

struct cp_call;

/** Handlers of one resource; NULL means the method is not allowed (405). */
struct cp_resource {
    const char *name;          /* path segment: "providers" */
    const char *kind;          /* singular for messages: "provider" */
    const char *referrers;     /* "is still used by deployments": a refused delete's message */
    const char *referrers_fix; /* ...and what to do: "delete or move them first" */
    void (*list)(struct cp_call *c);
    void (*get)(struct cp_call *c);
    void (*create)(struct cp_call *c);
    void (*update)(struct cp_call *c, bool replace); /* PUT: replace; PATCH: merge */
    void (*remove)(struct cp_call *c);
};

struct cp_call {
    struct cp_server *cp;
    struct sy_http_request *req; /* NULL once the client has gone */
    enum cp_role role;
    const struct cp_resource *res;
    char *name;       /* the item's name from the path, decoded; NULL for the collection */
    json_t *body;     /* the JSON request body (an object) for POST/PUT/PATCH, else NULL */
    int64_t if_match; /* version from If-Match: "<n>", or -1 */
    bool query_running;
    void *state; /* the handler's own, freed with free_state when the call ends */
    void (*free_state)(void *state);
};

/** Callback of cp_call_query: the call is alive (its client still waits). */
typedef void (*cp_call_result_cb)(struct cp_call *c, const PGresult *res, const char *err);

/** Run <sql> with text <params> (copied) for <c>; <cb> answers. */
void cp_call_query(struct cp_call *c, const char *sql, int nparams, const char *const *params,
                   cp_call_result_cb cb);

/** Answer <status> with <body> (stolen; NULL for no body). <etag> >= 0 adds ETag: "<etag>". */
void cp_call_json(struct cp_call *c, int status, json_t *body, int64_t etag);
/** Answer with raw JSON text <json> (borrowed). */
void cp_call_json_text(struct cp_call *c, int status, const char *json, int64_t etag);
/** Answer an error. <param> and <code> may be NULL. */
void cp_call_error(struct cp_call *c, int status, const char *type, const char *code,
                   const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/** 400 invalid_request_error / invalid_value naming field <param>. */
void cp_call_invalid(struct cp_call *c, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/** 404 for the call's item: 'provider "x" not found'. */
void cp_call_not_found(struct cp_call *c);
/** Answer a failed query: database down -> 503; unique violation -> 409; foreign key -> 409;
 * check violation -> 400 naming the constraint; SY400/SY404/SY409/SY412 raised by our SQL
 * functions -> that status with their message (HINT = the param); anything else -> 500. */
void cp_call_db_failed(struct cp_call *c, const PGresult *res, const char *err);

/** Parse ?limit= (1..500, default 50) and ?after= (a cursor: the last id seen, default 0).
 * On a bad value answers 400 and returns false. */
bool cp_call_page(struct cp_call *c, int *limit, int64_t *after);
/** Answer a page from a result whose rows are (id, doc json), fetched with LIMIT limit+1:
 * {"object":"list","data":[docs...],"has_more":bool,"next_cursor":"<id>"|null}. */
void cp_call_page_result(struct cp_call *c, const PGresult *res, int limit);
/** Answer one row's doc (column 0, JSON text) with its version (column 1) as ETag; no row: 404
 * (or <status_if_none> when nonzero). */
void cp_call_doc_result(struct cp_call *c, int status, const PGresult *res);

/** PATCH: merge the members of <patch> (borrowed) into <doc>. A member named in <deep>
 * (NULL-terminated, or NULL) that is an object on both sides is merged member by member, as
 * "limits": {"rpm": 10} changes only rpm; any other member is replaced as a whole. */
void cp_json_merge(json_t *doc, json_t *patch, const char *const *deep);

/* Query callbacks most handlers share: a failed query is answered by cp_call_db_failed. */
/** Answer the document of one row (cp_call_doc_result with 200). */
void cp_call_on_doc(struct cp_call *c, const PGresult *res, const char *err);
/** Answer a page (cp_call_page_result); the page's limit was stored in c->state. */
void cp_call_on_page(struct cp_call *c, const PGresult *res, const char *err);
/** Answer a written row's document: 201 after a POST, 200 after a PUT or PATCH. */
void cp_call_on_written(struct cp_call *c, const PGresult *res, const char *err);

/* The update flow every resource shares: PUT replaces the item, PATCH merges the body into it;
 * the result is validated as a whole and written only if the row still has the version that
 * was read (or the one the client named in If-Match).
 *
 *     update(c, replace) -> cp_call_update_read(c, replace, "SELECT <doc>, version ...", id, cb)
 *     cb(c, res, err)    -> doc = cp_call_update_doc(...); validate(doc); write it with
 *                           "... WHERE <item> AND version = <version> RETURNING doc, version",
 *                           answering the row (doc, version, exists) with cp_call_on_updated */

/** Start an update: run <sql> with the one parameter <item> (the name or id in the URL; NULL:
 * the item cannot exist, answered 404) to read the item's (doc, version); <cb> continues. */
void cp_call_update_read(struct cp_call *c, bool replace, const char *sql, const char *item,
                         cp_call_result_cb cb);
/** In the callback of cp_call_update_read(): the document to validate (the call's: freed with
 * it) and in *<version> the version to write against; or NULL after answering (the query
 * failed, or no row: 404). PATCH merges the body into the stored document (<deep> as for
 * cp_json_merge()), PUT takes the body alone; with <add_name> the item's name is set as "name"
 * when the document has none. */
json_t *cp_call_update_doc(struct cp_call *c, const PGresult *res, const char *err,
                           const char *const *deep, bool add_name, int64_t *version);
/** Answer the write of an update whose statement returned one row (doc, version, exists): the
 * document (200); 404 when the item is gone; 412 when its version moved. */
void cp_call_on_updated(struct cp_call *c, const PGresult *res, const char *err);

/** Answer a delete whose query returned one row (existed: count, referrers: names or NULL,
 * deleted: count): 404, 409 naming the referrers (with the resource's referrers phrases), 412
 * when If-Match no longer held, else 204. */
void cp_call_on_removed(struct cp_call *c, const PGresult *res, const char *err);

/** Text of query parameter <name> decoded, or NULL; the string is the call's (freed with it). */
const char *cp_call_param(struct cp_call *c, const char *name);

/* ---- validation helpers: each returns true when valid; on a problem it answers 400 naming
 * the field and returns false. <obj> is the merged document being validated; <key> may be a
 * path into nested objects ("limits.rpm"), reported as such. ---------------------------------- */

/** A string member: <required>, at most <max> bytes, no control characters; *<out> borrowed
 * (NULL when absent and not required). */
bool cp_val_str(struct cp_call *c, json_t *obj, const char *key, bool required, size_t max,
                const char **out);
/** A name: 1..<max> characters of [a-z0-9._-]. */
bool cp_val_name(struct cp_call *c, json_t *obj, const char *key, size_t max, const char **out);
/** One of <choices> (NULL-terminated); absent -> <dflt>. */
bool cp_val_enum(struct cp_call *c, json_t *obj, const char *key, const char *const *choices,
                 const char *dflt, const char **out);
/** An integer in [min, max]; absent or null -> *<present> false. */
bool cp_val_int(struct cp_call *c, json_t *obj, const char *key, int64_t min, int64_t max,
                bool *present, int64_t *out);
/** A number >= 0; absent -> 0. */
bool cp_val_number(struct cp_call *c, json_t *obj, const char *key, double *out);
/** A boolean; absent -> <dflt>. */
bool cp_val_bool(struct cp_call *c, json_t *obj, const char *key, bool dflt, bool *out);
/** An object member; absent or null -> *<out> NULL. With <allowed> (NULL-terminated; NULL
 * allows anything) its members not in the list are refused as "<key>.<member>". *<out> borrowed. */
bool cp_val_object(struct cp_call *c, json_t *obj, const char *key, const char *const *allowed,
                   json_t **out);
/** Refuse members of <obj> not in <allowed> (NULL-terminated), naming the first unknown one. */
bool cp_val_known(struct cp_call *c, json_t *obj, const char *prefix, const char *const *allowed);

/** Format <v> as decimal text into <buf> (for query parameters). */
const char *cp_i64(char buf[24], int64_t v);

/** The resources served under /admin/v1. */
extern const struct cp_resource cp_api_providers;
extern const struct cp_resource cp_api_deployments;
extern const struct cp_resource cp_api_models;
extern const struct cp_resource cp_api_keys;
extern const struct cp_resource cp_api_catalog;
extern const struct cp_resource cp_api_status;
extern const struct cp_resource cp_api_usage;
extern const struct cp_resource cp_api_events;
extern const struct cp_resource cp_api_alert_channels;
extern const struct cp_resource cp_api_alert_rules;
extern const struct cp_resource cp_api_alerts;
extern const struct cp_resource cp_api_alert_deliveries;
extern const struct cp_resource cp_api_requests;
extern const struct cp_resource cp_api_audit;
extern const struct cp_resource cp_api_budgets;
extern const struct cp_resource cp_api_guardrails;

/* ---- api_audit.c: the audit log ------------------------------------------------------------ */

/** Store the audit record of admin write <req> (borrowed; read before this returns), made with
 * a token of <role> (named <token_name> in --admin-tokens-file, or NULL), whose answer carried
 * version <version> (-1: none). Queued on the database connection now; kept and retried while
 * the database is away. */
void cp__audit_request(struct cp_server *cp, struct sy_http_request *req, enum cp_role role,
                       const char *token_name, int64_t version);
/** The audit summary of a request body <body>/<len> (borrowed): compact JSON text with every
 * secret member (api_key, secret, key, password, token, authorization, *_key, *_secret,
 * *_password, *_token; any depth, any case) replaced by "[REDACTED]"; a note of the size for a
 * body that is not JSON or too large. NULL for an empty body. Caller frees. */
char *cp__audit_summary(const char *body, size_t len);
