/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's client API keys, the keys agents and SDKs send to the data plane.
 *
 *     {"name", "agent", "user", "tier", "models": ["<public model>", ...] | null (= all),
 *      "limits": {"rpm", "tpm"}, "model_limits": {"<public model>": {"rpm", "tpm"}, ...},
 *      "expires_at": "<RFC 3339>" | null, "revoked",
 *      "log_bodies": false (the request log may keep this key's prompts and answers)}
 *
 * plus id, object, prefix, slot, version, created_at and updated_at on reads (api_key_doc() in
 * migrations/003_admin_docs.sql). The key itself is generated here (crypto.h), stored only as
 * its SHA-256 and returned once, as "key" in the answer to the POST that created it; never
 * again. Names need not be unique, so an item is addressed by its id: /admin/v1/keys/12.
 *
 * "model_limits" caps the key on one public model on top of its own limits; PATCH merges it
 * model by model, and a model set to null loses its limits. Like every limit, they are for the
 * whole fleet: each node enforces its share (compile.c). */

#include <stdio.h>
#include <string.h>

#include "api.h"
#include "sy/util.h"

#define MAX_KEY_MODELS 256

static const char *const fields[] = {
    "name", "agent", "user", "tier", "models", "limits", "model_limits", "expires_at", "revoked",
    "log_bodies",
    /* shown by reads, ignored on writes so a fetched document can be sent back edited */
    "id", "object", "prefix", "slot", "version", "created_at", "updated_at", NULL};
static const char *const limit_fields[] = {"rpm", "tpm", NULL};
static const char *const nested[] = {"limits", "model_limits", NULL};

#define MAX_KEY_MODEL_LIMITS 256

#define N_PARAMS 10

/* A validated key as the text parameters $1..$9 of the statements below. */
struct key_row {
    const char *p[N_PARAMS];
    char num[2][24];
    char *models;           /* JSON text of the array, or NULL */
    char *model_limits;     /* JSON text of the object, "{}" for none */
    const char *log_bodies; /* the request log may keep its prompts and answers */
};

static void key_row_free(struct key_row *r)
{
    free(r->models);
    free(r->model_limits);
}

/* A public model name as a key may name it: 1 to 128 characters, no spaces or controls. */
static bool model_name_ok(const char *s, size_t n)
{
    bool ok = s && n >= 1 && n <= 128;
    for (size_t k = 0; ok && k < n; k++)
        ok = (unsigned char)s[k] > 0x20 && s[k] != 0x7f;
    return ok;
}

/* Member <name> of limits object <v> of model_limits entry <key>: absent or null, or an integer
 * in 1..INT32_MAX. */
static bool limit_value(struct cp_call *c, json_t *v, const char *key, const char *name,
                        bool *present, int64_t *out)
{
    json_t *x = json_object_get(v, name);
    *present = x && !json_is_null(x);
    if (!*present)
        return true;
    if (!json_is_integer(x) || json_integer_value(x) < 1 || json_integer_value(x) > INT32_MAX) {
        char param[200];
        snprintf(param, sizeof(param), "%s.%s", key, name);
        cp_call_invalid(c, param, "%s: must be a whole number from 1 to %d, or null", param,
                        INT32_MAX);
        return false;
    }
    *out = json_integer_value(x);
    return true;
}

/* "model_limits": {"<model>": {"rpm", "tpm"} | null}, null members dropped (a PATCH's way to
 * remove one). Sets r->model_limits to the clean object's text. */
static bool validate_model_limits(struct cp_call *c, json_t *doc, struct key_row *r)
{
    json_t *obj = json_object_get(doc, "model_limits"), *v;
    const char *name;
    if (obj && !json_is_null(obj) &&
        (!json_is_object(obj) || json_object_size(obj) > MAX_KEY_MODEL_LIMITS)) {
        cp_call_invalid(c, "model_limits",
                        "model_limits: must be an object of at most %d public model names, each "
                        "with its limits: {\"gpt-4o\": {\"rpm\": 60, \"tpm\": 100000}}",
                        MAX_KEY_MODEL_LIMITS);
        return false;
    }
    json_t *clean = json_object();
    json_object_foreach(obj, name, v)
    {
        char key[160];
        static const char *const limit_only[] = {"rpm", "tpm", NULL};
        bool rpm_set, tpm_set;
        int64_t rpm, tpm;
        snprintf(key, sizeof(key), "model_limits.%s", name);
        if (!model_name_ok(name, strlen(name))) {
            cp_call_invalid(c, "model_limits",
                            "model_limits: \"%.*s\" is not a public model name (1 to 128 "
                            "characters, no spaces)",
                            64, name);
            goto fail;
        }
        if (json_is_null(v))
            continue;
        if (!json_is_object(v)) {
            cp_call_invalid(c, key,
                            "%s: must be an object {\"rpm\", \"tpm\"}, or null to remove the "
                            "limits on that model",
                            key);
            goto fail;
        }
        if (!cp_val_known(c, v, key, limit_only))
            goto fail;
        /* not cp_val_int's "a.b.c" paths: model names may hold dots ("qwen2.5") */
        if (!limit_value(c, v, key, "rpm", &rpm_set, &rpm) ||
            !limit_value(c, v, key, "tpm", &tpm_set, &tpm))
            goto fail;
        if (!rpm_set && !tpm_set) {
            cp_call_invalid(c, key, "%s: give rpm, tpm or both (or null to remove the limits)",
                            key);
            goto fail;
        }
        json_t *l = json_object();
        if (rpm_set)
            json_object_set_new(l, "rpm", json_integer(rpm));
        if (tpm_set)
            json_object_set_new(l, "tpm", json_integer(tpm));
        json_object_set_new(clean, name, l);
    }
    r->model_limits = json_dumps(clean, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(clean);
    r->p[9] = r->model_limits;
    return true;
fail:
    json_decref(clean);
    return false;
}

/* What a create keeps until its answer: the new key, wiped when the call ends. */
struct new_key {
    char key[CP_CRYPTO_CLIENT_KEY_LEN + 1];
};

static void free_new_key(void *p)
{
    cp_crypto_free_secret(p, sizeof(struct new_key));
}

/* The key id in the URL: a positive decimal number, or NULL (the item cannot exist). */
static const char *item_id(struct cp_call *c)
{
    const char *s = c->name;
    size_t n = strlen(s);
    if (n == 0 || n > 18 || s[0] == '0' || strspn(s, "0123456789") != n)
        return NULL;
    return s;
}

static bool leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* RFC 3339 date-time: 2030-01-31T23:59:59[.123]Z or with an offset +01:00. */
static bool rfc3339_ok(const char *s)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, sec, n = 0;
    if (strlen(s) < 20 || sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || n != 10 ||
        (s[10] != 'T' && s[10] != 't' && s[10] != ' '))
        return false;
    for (int i = 0; i < 19; i++) {
        char want = i == 4 || i == 7 ? '-' : i == 13 || i == 16 ? ':' : i == 10 ? s[i] : '0';
        if (want == '0' ? s[i] < '0' || s[i] > '9' : s[i] != want)
            return false;
    }
    if (sscanf(s + 11, "%2d:%2d:%2d", &h, &mi, &sec) != 3)
        return false;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap(y)) || h > 23 ||
        mi > 59 || sec > 60 || y < 1)
        return false;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return false;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if ((*p == 'Z' || *p == 'z') && p[1] == '\0')
        return true;
    if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[1] >= '0' && p[1] <= '2' && p[2] >= '0' &&
        p[2] <= '9' && p[3] == ':' && p[4] >= '0' && p[4] <= '5' && p[5] >= '0' && p[5] <= '9')
        return (p[1] - '0') * 10 + (p[2] - '0') <= 23;
    return false;
}

/* Validate <doc> (the merged document) into <r>; answers 400 and returns false on a problem. */
static bool validate(struct cp_call *c, json_t *doc, struct key_row *r)
{
    json_t *sub;
    bool present, revoked;
    int64_t v;
    memset(r, 0, sizeof(*r));
    if (json_object_get(doc, "key")) {
        cp_call_invalid(c, "key",
                        "key: the key is generated by the control plane and shown once, when it "
                        "is created; it cannot be set or changed (create a new key instead)");
        return false;
    }
    if (!cp_val_known(c, doc, NULL, fields) || !cp_val_str(c, doc, "name", true, 128, &r->p[0]) ||
        !cp_val_str(c, doc, "agent", false, 128, &r->p[1]) ||
        !cp_val_str(c, doc, "user", false, 128, &r->p[2]) ||
        !cp_val_str(c, doc, "tier", false, 64, &r->p[3]) ||
        !cp_val_object(c, doc, "limits", limit_fields, &sub) ||
        !cp_val_int(c, doc, "limits.rpm", 1, INT32_MAX, &present, &v))
        return false;
    r->p[5] = present ? cp_i64(r->num[0], v) : NULL;
    if (!cp_val_int(c, doc, "limits.tpm", 1, INT32_MAX, &present, &v))
        return false;
    r->p[6] = present ? cp_i64(r->num[1], v) : NULL;
    if (!cp_val_str(c, doc, "expires_at", false, 64, &r->p[7]))
        return false;
    if (r->p[7] && !rfc3339_ok(r->p[7])) {
        cp_call_invalid(c, "expires_at",
                        "expires_at: must be an RFC 3339 date and time such as "
                        "\"2030-01-31T00:00:00Z\", or null for a key that does not expire");
        return false;
    }
    if (!cp_val_bool(c, doc, "revoked", false, &revoked))
        return false;
    r->p[8] = revoked ? "true" : "false";
    bool log_bodies;
    if (!cp_val_bool(c, doc, "log_bodies", false, &log_bodies))
        return false;
    r->log_bodies = log_bodies ? "true" : "false";

    json_t *models = json_object_get(doc, "models");
    if (models && !json_is_null(models)) {
        if (!json_is_array(models) || json_array_size(models) > MAX_KEY_MODELS) {
            cp_call_invalid(c, "models",
                            "models: must be an array of at most %d public model names, or null "
                            "for every model",
                            MAX_KEY_MODELS);
            return false;
        }
        size_t i, j;
        json_t *m;
        json_array_foreach(models, i, m)
        {
            char key[32];
            snprintf(key, sizeof(key), "models[%zu]", i);
            const char *s = json_string_value(m);
            if (!model_name_ok(s, json_string_length(m))) {
                cp_call_invalid(c, key,
                                "%s: must be a public model name (1 to 128 characters, no spaces)",
                                key);
                return false;
            }
            for (j = 0; j < i; j++) {
                if (strcmp(json_string_value(json_array_get(models, j)), s) == 0) {
                    cp_call_invalid(c, key, "%s: model \"%s\" is listed twice", key, s);
                    return false;
                }
            }
        }
        r->models = json_dumps(models, JSON_COMPACT);
    }
    r->p[4] = r->models;
    return validate_model_limits(c, doc, r);
}

/* ---- reads ----------------------------------------------------------------------------------- */

static void get(struct cp_call *c)
{
    const char *p[] = {item_id(c)};
    if (!p[0]) {
        cp_call_not_found(c);
        return;
    }
    cp_call_query(c, "SELECT api_key_doc(k), k.version FROM api_keys k WHERE k.id = $1::bigint", 1,
                  p, cp_call_on_doc);
}

/* ?q= matches the name, agent, user, tier or prefix, case-insensitively. */
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
                  "SELECT k.id, api_key_doc(k) FROM api_keys k WHERE k.id > $1"
                  " AND ($3::text IS NULL OR strpos(lower(concat_ws(' ', k.name, k.agent,"
                  " k.user_name, k.tier, k.key_prefix)), lower($3)) > 0)"
                  " ORDER BY k.id LIMIT $2",
                  3, p, cp_call_on_page);
}

/* ---- writes ---------------------------------------------------------------------------------- */

/* The 201 of a create: the document with the key, the only time it is shown. */
static void on_created(struct cp_call *c, const PGresult *res, const char *err)
{
    struct new_key *nk = c->state;
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    json_t *doc = PQntuples(res) ? json_loads(PQgetvalue(res, 0, 0), 0, NULL) : NULL;
    if (!doc) {
        cp_call_error(c, 500, "server_error", "internal_error", NULL,
                      "the key was stored but its document could not be read");
        return;
    }
    json_object_set_new(doc, "key", json_string(nk->key));
    cp_call_json(c, 201, doc, atoll(PQgetvalue(res, 0, 1)));
}

static void create(struct cp_call *c)
{
    struct key_row r;
    if (!validate(c, c->body, &r)) {
        key_row_free(&r);
        return;
    }
    struct new_key *nk = sy_xcalloc(1, sizeof(*nk));
    unsigned char hash[CP_CRYPTO_HASH_LEN];
    char prefix[CP_CRYPTO_CLIENT_PREFIX_LEN + 1];
    c->state = nk;
    c->free_state = free_new_key;
    if (cp_crypto_client_key(nk->key, hash, prefix) < 0) {
        key_row_free(&r);
        cp_call_error(c, 500, "server_error", "internal_error", NULL,
                      "could not generate a key: the random number generator failed");
        return;
    }
    char hash_hex[2 + 2 * CP_CRYPTO_HASH_LEN + 1] = "\\x";
    for (size_t i = 0; i < CP_CRYPTO_HASH_LEN; i++)
        snprintf(hash_hex + 2 + 2 * i, 3, "%02x", hash[i]);
    const char *p[N_PARAMS + 3];
    memcpy(p, r.p, sizeof(r.p));
    p[N_PARAMS] = hash_hex;
    p[N_PARAMS + 1] = prefix;
    p[N_PARAMS + 2] = r.log_bodies;
    cp_call_query(c,
                  "INSERT INTO api_keys (name, agent, user_name, tier, allowed_models, rpm, tpm,"
                  " expires_at, revoked, model_limits, key_hash, key_prefix, log_bodies)"
                  " SELECT $1, $2, $3, $4, CASE WHEN $5::jsonb IS NULL THEN NULL ELSE"
                  " ARRAY(SELECT x FROM jsonb_array_elements_text($5::jsonb) WITH ORDINALITY"
                  " AS e (x, n) ORDER BY n) END, $6::int, $7::int, $8::timestamptz,"
                  " $9::boolean, $10::jsonb, $11::bytea, $12, $13::boolean"
                  " RETURNING api_key_doc(api_keys), version",
                  N_PARAMS + 3, p, on_created);
    key_row_free(&r);
}

/* An update reads the current document, merges (PATCH: limits member by member) or replaces
 * (PUT) it with the body, validates the result, and writes it only if the row still has the
 * version that was read (or the one the client named in If-Match). PATCH {"revoked": true}
 * revokes a key. */
static void on_update_read(struct cp_call *c, const PGresult *res, const char *err)
{
    int64_t version;
    json_t *doc = cp_call_update_doc(c, res, err, nested, false, &version);
    if (!doc)
        return;
    struct key_row r;
    if (!validate(c, doc, &r)) {
        key_row_free(&r);
        return;
    }
    const char *p[N_PARAMS + 3];
    char v[24];
    memcpy(p, r.p, sizeof(r.p));
    p[N_PARAMS] = item_id(c);
    p[N_PARAMS + 1] = cp_i64(v, version);
    p[N_PARAMS + 2] = r.log_bodies;
    cp_call_query(c,
                  "WITH u AS (UPDATE api_keys k SET name = $1, agent = $2, user_name = $3,"
                  "  tier = $4, allowed_models = CASE WHEN $5::jsonb IS NULL THEN NULL ELSE"
                  "  ARRAY(SELECT x FROM jsonb_array_elements_text($5::jsonb) WITH ORDINALITY"
                  "  AS e (x, n) ORDER BY n) END, rpm = $6::int, tpm = $7::int,"
                  "  expires_at = $8::timestamptz, revoked = $9::boolean,"
                  "  model_limits = $10::jsonb, log_bodies = $13::boolean"
                  "  WHERE k.id = $11::bigint AND k.version = $12::int"
                  "  RETURNING api_key_doc(k) AS doc, k.version)"
                  " SELECT (SELECT doc FROM u), (SELECT version FROM u),"
                  " EXISTS (SELECT 1 FROM api_keys WHERE id = $11::bigint)",
                  N_PARAMS + 3, p, cp_call_on_updated);
    key_row_free(&r);
}

static void update(struct cp_call *c, bool replace)
{
    cp_call_update_read(c, replace,
                        "SELECT api_key_doc(k), k.version FROM api_keys k WHERE k.id = $1::bigint",
                        item_id(c), on_update_read);
}

static void on_removed(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "0") == 0) {
        cp_call_not_found(c);
    } else if (strcmp(PQgetvalue(res, 0, 1), "0") == 0) {
        cp_call_error(c, 412, "precondition_failed", "version_mismatch", "version",
                      "key %s has changed since version %lld", c->name, (long long)c->if_match);
    } else {
        cp_call_json(c, 204, NULL, -1);
    }
}

static void remove_(struct cp_call *c)
{
    char v[24];
    const char *p[] = {item_id(c), c->if_match >= 0 ? cp_i64(v, c->if_match) : NULL};
    if (!p[0]) {
        cp_call_not_found(c);
        return;
    }
    cp_call_query(c,
                  "WITH k AS (SELECT id FROM api_keys WHERE id = $1::bigint),"
                  " del AS (DELETE FROM api_keys WHERE id = $1::bigint"
                  "   AND ($2::int IS NULL OR version = $2::int) RETURNING id)"
                  " SELECT (SELECT count(*) FROM k), (SELECT count(*) FROM del)",
                  2, p, on_removed);
}

const struct cp_resource cp_api_keys = {
    .name = "keys",
    .kind = "key",
    .list = list,
    .get = get,
    .create = create,
    .update = update,
    .remove = remove_,
};
