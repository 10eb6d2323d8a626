/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's guardrails (docs/guardrails.md): checks on requests and answers, attached to
 * public models and client keys.
 *
 *     {"name", "description", "enabled",
 *      "applies_to": {"all": bool, "models": ["<public model>"], "keys": [<key id>]},
 *      "input":  {"detectors": ["email", "phone", "cn_mobile", "cn_id", "bank_card", "ipv4",
 *                               "ipv6", "secret"],
 *                 "keywords": ["..."], "regexes": ["..."],
 *                 "action": "block" | "redact" | "log",
 *                 "actions": {"<detector>" | "keywords" | "regexes": "<action>"}},
 *      "output": {... as input},
 *      "limits": {"max_input_chars", "max_input_tokens", "max_tokens_cap",
 *                 "max_tokens_mode": "lower" | "refuse", "max_output_chars"}}
 *
 * plus id, object, version, created_at and updated_at on reads (guardrail_doc() in
 * migrations/009_guardrails.sql). The document is checked by the routing table's own reader
 * (sy_guardrail_check_json: what is accepted here is what the data plane reads), and every
 * regular expression is compiled with vectorscan, as the data plane will, so that a pattern it
 * cannot compile is refused now, naming its index and vectorscan's reason. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hs/hs.h>

#include "api.h"
#include "sy/table.h"

static const char *const fields[] = {
    "name", "description", "enabled", "applies_to", "input", "output", "limits",
    /* shown by reads, ignored on writes so a fetched document can be sent back edited */
    "id", "object", "version", "created_at", "updated_at", NULL};

/* Members merged one level deep by PATCH: {"limits": {"max_output_chars": 100}} changes only
 * that limit; arrays (keywords, detectors) are replaced whole. */
static const char *const nested[] = {"applies_to", "input", "output", "limits", NULL};

static const char *const spec_parts[] = {"applies_to", "input", "output", "limits"};

/* Compile each regex of <side> (the "input" or "output" object) as the data plane does; answers
 * 400 naming the first that fails. */
static bool regexes_compile(struct cp_call *c, const char *side_name, json_t *side)
{
    json_t *regexes = json_object_get(side, "regexes"), *re;
    size_t i;
    json_array_foreach(regexes, i, re)
    {
        hs_database_t *db = NULL;
        hs_compile_error_t *ce = NULL;
        /* the flags and mode of dataplane/src/guard.c */
        if (hs_compile(json_string_value(re), HS_FLAG_UTF8 | HS_FLAG_SOM_LEFTMOST,
                       HS_MODE_STREAM | HS_MODE_SOM_HORIZON_SMALL, NULL, &db, &ce) == HS_SUCCESS) {
            hs_free_database(db);
            continue;
        }
        char param[64];
        snprintf(param, sizeof(param), "%s.regexes[%zu]", side_name, i);
        cp_call_invalid(c, param, "%s: %s", param, ce && ce->message ? ce->message : "invalid");
        hs_free_compile_error(ce);
        return false;
    }
    return true;
}

/* Validate <doc> (the merged document); answers 400 and returns NULL on a problem, else the
 * row to write: {name, description, enabled, spec} (caller decrefs). */
static json_t *validate(struct cp_call *c, json_t *doc)
{
    const char *name, *desc;
    bool enabled;
    if (!cp_val_known(c, doc, NULL, fields) || !cp_val_str(c, doc, "name", true, 128, &name) ||
        !cp_val_str(c, doc, "description", false, 1024, &desc) ||
        !cp_val_bool(c, doc, "enabled", true, &enabled))
        return NULL;
    if (strchr(name, ' ')) {
        cp_call_invalid(c, "name", "name: a guardrail name must not contain spaces");
        return NULL;
    }
    json_t *spec = json_object();
    for (size_t i = 0; i < sizeof(spec_parts) / sizeof(spec_parts[0]); i++) {
        json_t *v = json_object_get(doc, spec_parts[i]);
        if (v && !json_is_null(v))
            json_object_set(spec, spec_parts[i], v);
    }
    /* the table's reader, on the guardrail as the table will carry it */
    json_t *check = json_deep_copy(spec);
    json_object_set_new(check, "name", json_string(name));
    char *text = json_dumps(check, JSON_COMPACT);
    json_decref(check);
    char *err = NULL, *param = NULL;
    int rc = text ? sy_guardrail_check_json(text, strlen(text), NULL, &err, &param) : -1;
    free(text);
    if (rc < 0) {
        cp_call_invalid(c, param && *param ? param : "guardrail", "%s",
                        err ? err : "the guardrail cannot be read");
        free(err);
        free(param);
        json_decref(spec);
        return NULL;
    }
    if (!regexes_compile(c, "input", json_object_get(spec, "input")) ||
        !regexes_compile(c, "output", json_object_get(spec, "output"))) {
        json_decref(spec);
        return NULL;
    }
    return json_pack("{s:s,s:o,s:b,s:o}", "name", name, "description",
                     desc ? json_string(desc) : json_null(), "enabled", enabled, "spec", spec);
}

/* The parameters of a write from the row <row> (borrowed); *<spec_text> is the caller's. */
static void row_params(json_t *row, const char *p[4], char **spec_text)
{
    *spec_text = json_dumps(json_object_get(row, "spec"), JSON_COMPACT);
    p[0] = json_string_value(json_object_get(row, "name"));
    p[1] = json_string_value(json_object_get(row, "description"));
    p[2] = json_is_true(json_object_get(row, "enabled")) ? "true" : "false";
    p[3] = *spec_text;
}

/* ---- reads ----------------------------------------------------------------------------------- */

static void get(struct cp_call *c)
{
    const char *p[] = {c->name};
    cp_call_query(c, "SELECT guardrail_doc(g), g.version FROM guardrails g WHERE g.name = $1", 1, p,
                  cp_call_on_doc);
}

/* ?q= matches the name or the description, case-insensitively. */
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
                  "SELECT g.id, guardrail_doc(g) FROM guardrails g WHERE g.id > $1"
                  " AND ($3::text IS NULL OR strpos(lower(g.name), lower($3)) > 0"
                  " OR strpos(lower(coalesce(g.description, '')), lower($3)) > 0)"
                  " ORDER BY g.id LIMIT $2",
                  3, p, cp_call_on_page);
}

/* ---- writes ---------------------------------------------------------------------------------- */

static void create(struct cp_call *c)
{
    json_t *row = validate(c, c->body);
    if (!row)
        return;
    const char *p[4];
    char *spec;
    row_params(row, p, &spec);
    cp_call_query(c,
                  "INSERT INTO guardrails (name, description, enabled, spec)"
                  " VALUES ($1, $2, $3::boolean, $4::jsonb)"
                  " RETURNING guardrail_doc(guardrails), version",
                  4, p, cp_call_on_written); /* copies the parameters */
    free(spec);
    json_decref(row);
}

/* An update reads the current document, merges (PATCH) or replaces (PUT) it with the body,
 * validates the result, and writes it only if the guardrail still has the version that was
 * read (or the one the client named in If-Match). */
static void on_update_read(struct cp_call *c, const PGresult *res, const char *err)
{
    int64_t version;
    json_t *doc = cp_call_update_doc(c, res, err, nested, true, &version);
    if (!doc)
        return;
    json_t *row = validate(c, doc);
    if (!row)
        return;
    const char *p[6];
    char *spec, v[24];
    row_params(row, p, &spec);
    p[4] = c->name;
    p[5] = cp_i64(v, version);
    cp_call_query(c,
                  "WITH u AS (UPDATE guardrails g SET name = $1, description = $2,"
                  "  enabled = $3::boolean, spec = $4::jsonb"
                  "  WHERE g.name = $5 AND g.version = $6::int"
                  "  RETURNING guardrail_doc(g) AS doc, g.version)"
                  " SELECT (SELECT doc FROM u), (SELECT version FROM u),"
                  " EXISTS (SELECT 1 FROM guardrails WHERE name = $5)",
                  6, p, cp_call_on_updated); /* copies the parameters */
    free(spec);
    json_decref(row);
}

static void update(struct cp_call *c, bool replace)
{
    cp_call_update_read(c, replace,
                        "SELECT guardrail_doc(g), g.version FROM guardrails g WHERE g.name = $1",
                        c->name, on_update_read);
}

static void remove_(struct cp_call *c)
{
    char v[24];
    const char *p[] = {c->name, c->if_match >= 0 ? cp_i64(v, c->if_match) : NULL};
    cp_call_query(c,
                  "WITH g AS (SELECT id FROM guardrails WHERE name = $1),"
                  " del AS (DELETE FROM guardrails WHERE id = (SELECT id FROM g)"
                  "   AND ($2::int IS NULL OR version = $2::int) RETURNING id)"
                  " SELECT (SELECT count(*) FROM g), NULL, (SELECT count(*) FROM del)",
                  2, p, cp_call_on_removed);
}

const struct cp_resource cp_api_guardrails = {
    .name = "guardrails",
    .kind = "guardrail",
    .referrers = "is still referenced",
    .referrers_fix = "",
    .list = list,
    .get = get,
    .create = create,
    .update = update,
    .remove = remove_,
};
