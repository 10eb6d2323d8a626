/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's models: the public names clients ask for, each routed to deployments.
 *
 *     {"name", "description", "targets": [{"deployment", "weight"}], "policy": {},
 *      "fallbacks": ["<public model>", ...]}
 *
 * plus id, object, slot, version, created_at and updated_at on reads (model_doc() in
 * migrations/003_admin_docs.sql). The policy (balance, retry, circuit, fallback triggers,
 * rules; proto/README.md) is checked by the routing table's own validator and stored as given:
 * its stored shape is the table's (policy.h). Fallbacks are the public models tried in order
 * when this one fails.
 *
 * This file checks shapes and formats; model_write() checks what needs the database (the
 * deployments and models named, rule targets included, exist; no loop forms among fallbacks
 * and rule targets; the name is free; the version) and writes the model and its targets in one
 * statement, raising SY400/SY404/SY409/SY412 that cp_call_db_failed maps. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "policy.h"

#define MAX_TARGETS   64
#define MAX_FALLBACKS 16

static const char *const fields[] = {
    "name", "description", "targets", "policy", "fallbacks",
    /* shown by reads, ignored on writes so a fetched document can be sent back edited */
    "id", "object", "slot", "version", "created_at", "updated_at", NULL};
static const char *const target_fields[] = {"deployment", "weight", NULL};

/* A public model name: 1..128 characters, no spaces or control characters (as the column). */
static bool model_name_ok(struct cp_call *c, json_t *obj, const char *key, const char **out)
{
    if (!cp_val_str(c, obj, key, true, 128, out))
        return false;
    for (const char *s = *out; *s; s++) {
        if (*s == ' ') {
            cp_call_invalid(c, key, "%s: a model name must not contain spaces", key);
            return false;
        }
    }
    return true;
}

/* Validate <doc> (the merged document); answers 400 and returns NULL on a problem, else the
 * clean document for model_write() (caller decrefs). */
static json_t *validate(struct cp_call *c, json_t *doc)
{
    const char *name, *desc;
    json_t *policy, *out = NULL;
    char key[64];
    if (!cp_val_known(c, doc, NULL, fields) || !model_name_ok(c, doc, "name", &name) ||
        !cp_val_str(c, doc, "description", false, 1024, &desc) ||
        !cp_val_object(c, doc, "policy", NULL, &policy))
        return NULL;
    if (policy) {
        char *err, *param;
        if (cp_policy_check(policy, &err, &param) < 0) {
            cp_call_invalid(c, param ? param : "policy", "%s", err ? err : "policy: invalid");
            free(err);
            free(param);
            return NULL;
        }
    }

    json_t *targets = json_object_get(doc, "targets");
    if (!json_is_array(targets) || json_array_size(targets) == 0 ||
        json_array_size(targets) > MAX_TARGETS) {
        cp_call_invalid(c, "targets",
                        "targets: must be an array of 1 to %d {\"deployment\": <name>, "
                        "\"weight\": <n>} objects",
                        MAX_TARGETS);
        return NULL;
    }
    json_t *clean_targets = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(targets, i, t)
    {
        /* A wrapper names the element's fields by their path: targets[1].deployment. */
        snprintf(key, sizeof(key), "targets[%zu]", i);
        json_t *wrap = json_pack("{sO}", key, t);
        const char *dep = NULL;
        bool present;
        int64_t weight = 1;
        char dkey[96], wkey[96];
        snprintf(dkey, sizeof(dkey), "%s.deployment", key);
        snprintf(wkey, sizeof(wkey), "%s.weight", key);
        bool ok;
        if (!json_is_object(t)) {
            cp_call_invalid(c, key,
                            "%s: must be an object {\"deployment\": <name>, \"weight\": "
                            "<n>}",
                            key);
            ok = false;
        } else {
            ok = cp_val_known(c, t, key, target_fields) && cp_val_name(c, wrap, dkey, 64, &dep) &&
                 cp_val_int(c, wrap, wkey, 0, 1000000, &present, &weight);
        }
        for (size_t j = 0; ok && j < i; j++) {
            const char *prev =
                json_string_value(json_object_get(json_array_get(clean_targets, j), "deployment"));
            if (strcmp(prev, dep) == 0) {
                cp_call_invalid(c, dkey,
                                "%s: deployment \"%s\" is listed twice (also targets[%zu])", dkey,
                                dep, j);
                ok = false;
            }
        }
        if (ok)
            json_array_append_new(clean_targets, json_pack("{s:s,s:I}", "deployment", dep, "weight",
                                                           (json_int_t)(present ? weight : 1)));
        json_decref(wrap);
        if (!ok)
            goto fail;
    }

    json_t *fallbacks = json_object_get(doc, "fallbacks");
    if (fallbacks && !json_is_null(fallbacks) &&
        (!json_is_array(fallbacks) || json_array_size(fallbacks) > MAX_FALLBACKS)) {
        cp_call_invalid(c, "fallbacks", "fallbacks: must be an array of at most %d model names",
                        MAX_FALLBACKS);
        goto fail;
    }
    json_t *clean_fallbacks = json_array();
    json_t *f;
    json_array_foreach(fallbacks, i, f)
    {
        snprintf(key, sizeof(key), "fallbacks[%zu]", i);
        json_t *wrap = json_pack("{sO}", key, f);
        const char *fb;
        bool ok = model_name_ok(c, wrap, key, &fb);
        if (ok && strcmp(fb, name) == 0) {
            cp_call_invalid(c, key, "%s: a model cannot be its own fallback", key);
            ok = false;
        }
        for (size_t j = 0; ok && j < i; j++) {
            if (strcmp(json_string_value(json_array_get(clean_fallbacks, j)), fb) == 0) {
                cp_call_invalid(c, key, "%s: model \"%s\" is listed twice", key, fb);
                ok = false;
            }
        }
        if (ok)
            json_array_append_new(clean_fallbacks, json_string(fb));
        json_decref(wrap);
        if (!ok) {
            json_decref(clean_fallbacks);
            goto fail;
        }
    }
    out = json_pack("{s:s,s:o,s:o,s:o,s:o}", "name", name, "description",
                    desc ? json_string(desc) : json_null(), "targets", clean_targets, "policy",
                    policy ? json_incref(policy) : json_object(), "fallbacks", clean_fallbacks);
    return out;

fail:
    json_decref(clean_targets);
    return NULL;
}

/* ---- reads ----------------------------------------------------------------------------------- */

static void get(struct cp_call *c)
{
    const char *p[] = {c->name};
    cp_call_query(c, "SELECT model_doc(m), m.version FROM models m WHERE m.name = $1", 1, p,
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
                  "SELECT m.id, model_doc(m) FROM models m WHERE m.id > $1"
                  " AND ($3::text IS NULL OR strpos(lower(m.name), lower($3)) > 0"
                  " OR strpos(lower(coalesce(m.description, '')), lower($3)) > 0)"
                  " ORDER BY m.id LIMIT $2",
                  3, p, cp_call_on_page);
}

/* ---- writes ---------------------------------------------------------------------------------- */

/* Hand the clean document <doc> (taken) to model_write() for the model named <name> (NULL:
 * create) at version <expected> (< 0: any). */
static void write_model(struct cp_call *c, const char *name, int64_t expected, json_t *doc)
{
    char v[24];
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    const char *p[] = {name, expected >= 0 ? cp_i64(v, expected) : NULL, text};
    cp_call_query(c, "SELECT out_doc, out_version FROM model_write($1, $2::int, $3::jsonb)", 3, p,
                  cp_call_on_written);
    free(text);
}

static void create(struct cp_call *c)
{
    json_t *doc = validate(c, c->body);
    if (doc)
        write_model(c, NULL, -1, doc);
}

/* An update reads the current document, merges (PATCH; policy is replaced as a whole) or
 * replaces (PUT) it with the body, validates the result, and has model_write() store it only if
 * the model still has the version that was read (or the one the client named in If-Match). */
static void on_update_read(struct cp_call *c, const PGresult *res, const char *err)
{
    int64_t version;
    json_t *doc = cp_call_update_doc(c, res, err, NULL, true, &version);
    if (!doc)
        return;
    json_t *clean = validate(c, doc);
    if (clean)
        write_model(c, c->name, version, clean);
}

static void update(struct cp_call *c, bool replace)
{
    cp_call_update_read(c, replace,
                        "SELECT model_doc(m), m.version FROM models m WHERE m.name = $1", c->name,
                        on_update_read);
}

/* Its targets go with it (ON DELETE CASCADE), in the same statement. */
static void remove_(struct cp_call *c)
{
    char v[24];
    const char *p[] = {c->name, c->if_match >= 0 ? cp_i64(v, c->if_match) : NULL};
    cp_call_query(c,
                  "WITH m AS (SELECT id, version FROM models WHERE name = $1),"
                  " refs AS (SELECT string_agg(x.name, ', ' ORDER BY x.name) AS names"
                  "   FROM models x WHERE ($1 = ANY (x.fallbacks)"
                  "   OR $1 IN (SELECT policy_rule_models(x.policy))) AND x.name <> $1),"
                  " del AS (DELETE FROM models WHERE id = (SELECT id FROM m)"
                  "   AND (SELECT names FROM refs) IS NULL"
                  "   AND ($2::int IS NULL OR version = $2::int) RETURNING id)"
                  " SELECT (SELECT count(*) FROM m), (SELECT names FROM refs),"
                  " (SELECT count(*) FROM del)",
                  2, p, cp_call_on_removed);
}

const struct cp_resource cp_api_models = {
    .name = "models",
    .kind = "model",
    .referrers = "is still a fallback or rule target of models",
    .referrers_fix = "remove it from their fallbacks and policy rules first",
    .list = list,
    .get = get,
    .create = create,
    .update = update,
    .remove = remove_,
};
