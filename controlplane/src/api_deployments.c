/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's deployments: a model at a provider, with its weight, limits, timeouts and
 * prices. A deployment names its provider; the database keeps the provider's id, so renaming a
 * provider moves nothing. Documents come from deployment_doc() (migrations/003_admin_docs.sql):
 *
 *     {"name", "provider", "model", "weight", "limits": {"rpm", "tpm", "max_concurrency"},
 *      "timeouts": {"connect_ms", "first_byte_ms", "idle_ms", "total_ms"},
 *      "price": {"input", "output"}, "enabled"}
 *
 * plus id, object, slot, version, created_at and updated_at on reads. */

#include <stdio.h>
#include <string.h>

#include "api.h"

#define MAX_TIMEOUT_MS 86400000 /* a day */

static const char *const fields[] = {
    "name", "provider", "model", "weight", "limits", "timeouts", "price", "enabled",
    /* shown by reads, ignored on writes so a fetched document can be sent back edited */
    "id", "object", "slot", "version", "created_at", "updated_at", NULL};
static const char *const limit_fields[] = {"rpm", "tpm", "max_concurrency", NULL};
static const char *const timeout_fields[] = {"connect_ms", "first_byte_ms", "idle_ms", "total_ms",
                                             NULL};
static const char *const price_fields[] = {"input", "output", NULL};
static const char *const nested[] = {"limits", "timeouts", "price", NULL};

#define N_PARAMS 14

/* A validated deployment as the text parameters $1..$14 of the statements below. */
struct deployment_row {
    const char *p[N_PARAMS];
    char num[11][32];
};

static void free_json(void *p)
{
    json_decref(p);
}

/* An optional integer member into parameter <i> (NULL when absent). */
static bool opt_int(struct cp_call *c, json_t *doc, const char *key, int64_t min, int64_t max,
                    struct deployment_row *r, int i)
{
    bool present;
    int64_t v;
    if (!cp_val_int(c, doc, key, min, max, &present, &v))
        return false;
    r->p[i] = present ? cp_i64(r->num[i - 3], v) : NULL;
    return true;
}

/* Validate <doc> (the merged document) into <r>; answers 400 and returns false on a problem. */
static bool validate(struct cp_call *c, json_t *doc, struct deployment_row *r)
{
    json_t *sub;
    const char *model;
    bool present, enabled;
    int64_t weight;
    double price[2];
    memset(r, 0, sizeof(*r));
    if (!cp_val_known(c, doc, NULL, fields) || !cp_val_name(c, doc, "name", 64, &r->p[0]) ||
        !cp_val_str(c, doc, "provider", true, 64, &r->p[1]) ||
        !cp_val_str(c, doc, "model", true, 256, &model))
        return false;
    for (const char *s = model; *s; s++) {
        if (*s == ' ') {
            cp_call_invalid(c, "model",
                            "model: the provider's model id must not contain spaces (\"%s\")",
                            model);
            return false;
        }
    }
    r->p[2] = model;
    if (!cp_val_int(c, doc, "weight", 0, 1000000, &present, &weight))
        return false;
    r->p[3] = cp_i64(r->num[0], present ? weight : 1);
    if (!cp_val_object(c, doc, "limits", limit_fields, &sub) ||
        !opt_int(c, doc, "limits.rpm", 1, INT32_MAX, r, 4) ||
        !opt_int(c, doc, "limits.tpm", 1, INT32_MAX, r, 5) ||
        !opt_int(c, doc, "limits.max_concurrency", 1, 1000000, r, 6) ||
        !cp_val_object(c, doc, "timeouts", timeout_fields, &sub) ||
        !opt_int(c, doc, "timeouts.connect_ms", 1, MAX_TIMEOUT_MS, r, 7) ||
        !opt_int(c, doc, "timeouts.first_byte_ms", 1, MAX_TIMEOUT_MS, r, 8) ||
        !opt_int(c, doc, "timeouts.idle_ms", 1, MAX_TIMEOUT_MS, r, 9) ||
        !opt_int(c, doc, "timeouts.total_ms", 1, MAX_TIMEOUT_MS, r, 10) ||
        !cp_val_object(c, doc, "price", price_fields, &sub) ||
        !cp_val_number(c, doc, "price.input", &price[0]) ||
        !cp_val_number(c, doc, "price.output", &price[1]) ||
        !cp_val_bool(c, doc, "enabled", true, &enabled))
        return false;
    /* numeric(20, 6): six decimals are all the column keeps */
    snprintf(r->num[8], sizeof(r->num[8]), "%.6f", price[0]);
    snprintf(r->num[9], sizeof(r->num[9]), "%.6f", price[1]);
    r->p[11] = r->num[8];
    r->p[12] = r->num[9];
    r->p[13] = enabled ? "true" : "false";
    return true;
}

/* ---- reads ----------------------------------------------------------------------------------- */

static void get(struct cp_call *c)
{
    const char *p[] = {c->name};
    cp_call_query(c, "SELECT deployment_doc(d), d.version FROM deployments d WHERE d.name = $1", 1,
                  p, cp_call_on_doc);
}

/* ?q= matches the name, the model id or the provider's name, case-insensitively. */
static void list(struct cp_call *c)
{
    int limit;
    int64_t after;
    char a[24], l[24];
    if (!cp_call_page(c, &limit, &after))
        return;
    const char *q = cp_call_param(c, "q");
    c->state = (void *)(intptr_t)limit;
    const char *p[] = {cp_i64(a, after), cp_i64(l, limit + 1), q};
    cp_call_query(c,
                  "SELECT d.id, deployment_doc(d) FROM deployments d"
                  " JOIN providers p ON p.id = d.provider_id WHERE d.id > $1"
                  " AND ($3::text IS NULL OR strpos(lower(d.name), lower($3)) > 0"
                  " OR strpos(lower(d.model), lower($3)) > 0"
                  " OR strpos(lower(p.name), lower($3)) > 0)"
                  " ORDER BY d.id LIMIT $2",
                  3, p, cp_call_on_page);
}

/* ---- writes ---------------------------------------------------------------------------------- */

/* Both writes answer (doc, version, provider exists, row exists): no doc means the provider is
 * unknown, or (update) the row is gone or has another version. */
static void on_written(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    if (!PQgetisnull(res, 0, 0)) {
        cp_call_doc_result(c, c->req->method == HTTP_POST ? 201 : 200, res);
    } else if (strcmp(PQgetvalue(res, 0, 2), "t") != 0) {
        const char *prov = json_string_value(json_object_get(c->state, "provider"));
        cp_call_invalid(c, "provider",
                        "provider: unknown provider \"%s\" (GET /admin/v1/providers lists them)",
                        prov ? prov : "");
    } else if (strcmp(PQgetvalue(res, 0, 3), "t") != 0) {
        cp_call_not_found(c);
    } else {
        cp_call_error(c, 412, "precondition_failed", "version_mismatch", "version",
                      "deployment \"%s\" was changed by someone else (its version is no longer "
                      "the one given); fetch it again and retry",
                      c->name);
    }
}

static void create(struct cp_call *c)
{
    struct deployment_row r;
    if (!validate(c, c->body, &r))
        return;
    c->state = json_incref(c->body);
    c->free_state = free_json;
    cp_call_query(c,
                  "WITH p AS (SELECT id FROM providers WHERE name = $2),"
                  " i AS (INSERT INTO deployments (name, provider_id, model, weight, rpm, tpm,"
                  "   max_concurrency, connect_timeout_ms, first_byte_timeout_ms,"
                  "   idle_timeout_ms, total_timeout_ms, input_price, output_price, enabled)"
                  "  SELECT $1, p.id, $3, $4::int, $5::int, $6::int, $7::int, $8::int, $9::int,"
                  "   $10::int, $11::int, $12::numeric, $13::numeric, $14::boolean FROM p"
                  "  RETURNING deployment_doc(deployments) AS doc, version)"
                  " SELECT (SELECT doc FROM i), (SELECT version FROM i),"
                  " EXISTS (SELECT 1 FROM p), true",
                  N_PARAMS, r.p, on_written);
}

/* An update reads the current document, merges (PATCH: limits, timeouts and price member by
 * member) or replaces (PUT) it with the body, validates the result, and writes it only if the
 * row still has the version that was read (or the one the client named in If-Match). */
static void on_update_read(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    if (PQntuples(res) == 0) {
        cp_call_not_found(c);
        return;
    }
    bool replace = c->state != NULL;
    json_t *doc = replace ? json_object() : json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    if (!doc) {
        cp_call_error(c, 500, "server_error", "internal_error", NULL, "cannot read the deployment");
        return;
    }
    cp_json_merge(doc, c->body, nested);
    if (!json_object_get(doc, "name"))
        json_object_set_new(doc, "name", json_string(c->name));
    int64_t version = c->if_match >= 0 ? c->if_match : atoll(PQgetvalue(res, 0, 1));
    struct deployment_row r;
    if (!validate(c, doc, &r)) {
        json_decref(doc);
        return;
    }
    const char *p[N_PARAMS + 2];
    char v[24];
    memcpy(p, r.p, sizeof(r.p));
    p[N_PARAMS] = c->name;
    p[N_PARAMS + 1] = cp_i64(v, version);
    c->state = doc; /* keeps the strings of p alive, and names the provider in errors */
    c->free_state = free_json;
    cp_call_query(c,
                  "WITH p AS (SELECT id FROM providers WHERE name = $2),"
                  " u AS (UPDATE deployments d SET name = $1, provider_id = (SELECT id FROM p),"
                  "   model = $3, weight = $4::int, rpm = $5::int, tpm = $6::int,"
                  "   max_concurrency = $7::int, connect_timeout_ms = $8::int,"
                  "   first_byte_timeout_ms = $9::int, idle_timeout_ms = $10::int,"
                  "   total_timeout_ms = $11::int, input_price = $12::numeric,"
                  "   output_price = $13::numeric, enabled = $14::boolean"
                  "  WHERE d.name = $15 AND d.version = $16::int AND EXISTS (SELECT 1 FROM p)"
                  "  RETURNING deployment_doc(d) AS doc, d.version)"
                  " SELECT (SELECT doc FROM u), (SELECT version FROM u),"
                  " EXISTS (SELECT 1 FROM p), EXISTS (SELECT 1 FROM deployments WHERE name = $15)",
                  N_PARAMS + 2, p, on_written);
}

static void update(struct cp_call *c, bool replace)
{
    const char *p[] = {c->name};
    c->state = replace ? (void *)1 : NULL;
    cp_call_query(c, "SELECT deployment_doc(d), d.version FROM deployments d WHERE d.name = $1", 1,
                  p, on_update_read);
}

static void remove_(struct cp_call *c)
{
    char v[24];
    const char *p[] = {c->name, c->if_match >= 0 ? cp_i64(v, c->if_match) : NULL};
    cp_call_query(c,
                  "WITH d AS (SELECT id, version FROM deployments WHERE name = $1),"
                  " refs AS (SELECT string_agg(m.name, ', ' ORDER BY m.name) AS names"
                  "   FROM models m WHERE m.id IN (SELECT t.model_id FROM model_targets t"
                  "   JOIN d ON t.deployment_id = d.id)),"
                  " del AS (DELETE FROM deployments WHERE id = (SELECT id FROM d)"
                  "   AND (SELECT names FROM refs) IS NULL"
                  "   AND ($2::int IS NULL OR version = $2::int) RETURNING id)"
                  " SELECT (SELECT count(*) FROM d), (SELECT names FROM refs),"
                  " (SELECT count(*) FROM del)",
                  2, p, cp_call_on_removed);
}

const struct cp_resource cp_api_deployments = {
    .name = "deployments",
    .kind = "deployment",
    .referrers = "is still a target of models",
    .referrers_fix = "remove it from their targets first",
    .list = list,
    .get = get,
    .create = create,
    .update = update,
    .remove = remove_,
};
