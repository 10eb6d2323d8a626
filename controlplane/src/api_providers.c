/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's providers: model provider accounts. A provider's credential is write-only:
 * it is sealed with the master key (crypto.h) before it reaches the database, and only a hint
 * ("sk-…abcd") is ever shown. A provider of a catalog kind takes the catalog's base URL, format
 * and auth style unless the request sets them. */

#include <stdio.h>
#include <string.h>

#include "api.h"
#include "catalog.h"
#include "sy/buf.h"
#include "sy/table.h"
#include "sy/util.h"

static const char *const fields[] = {
    "name",    "kind",        "base_url", "format", "auth_style", "auth_name", "headers",
    "api_key", "api_version", "ca_file",  "insecure",
    /* shown by reads, ignored on writes so a fetched document can be sent back edited */
    "id", "object", "api_key_set", "api_key_hint", "version", "created_at", "updated_at", NULL,
};
static const char *const formats[] = {"openai", "anthropic", "azure", NULL};
static const char *const auth_styles[] = {"bearer", "header", "query", "none", NULL};

/* A validated provider, ready to be written: text parameters for the SQL below. */
struct provider_row {
    const char *name, *kind, *base_url, *format, *auth_style, *auth_name, *api_version, *ca_file;
    char *headers; /* JSON text */
    bool insecure;
    int key_action; /* 0 keep, 1 set, 2 clear */
    char *key_enc;  /* "\\x..." bytea text */
    char key_id[64];
    char *key_hint;
};

static void row_free(struct provider_row *r)
{
    free(r->headers);
    free(r->key_enc);
    free(r->key_hint);
}

static bool header_name_ok(const char *s)
{
    static const char *const reserved[] = {"host",    "content-length", "transfer-encoding",
                                           "connection", "keep-alive",  "upgrade",
                                           "te",      NULL};
    if (!*s)
        return false;
    for (const char *p = s; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= 0x20 || ch >= 0x7f || strchr("()<>@,;:\\\"/[]?={}", ch))
            return false;
    }
    for (const char *const *r = reserved; *r; r++)
        if (strcasecmp(s, *r) == 0)
            return false;
    return true;
}

/* Validate <doc> (the merged document) into <r>; answers 400 and returns false on a problem. */
static bool validate(struct cp_call *c, json_t *doc, struct provider_row *r)
{
    const struct cp_catalog_entry *cat = NULL;
    if (!cp_val_known(c, doc, NULL, fields) || !cp_val_name(c, doc, "name", 64, &r->name) ||
        !cp_val_str(c, doc, "kind", false, 64, &r->kind))
        return false;
    if (!r->kind)
        r->kind = "custom";
    if (strcmp(r->kind, "custom") != 0 && !(cat = cp_catalog_find(r->kind))) {
        cp_call_invalid(c, "kind",
                        "kind: \"%s\" is not in the catalog (GET /admin/v1/catalog); use "
                        "\"custom\" for any other endpoint",
                        r->kind);
        return false;
    }
    if (!cp_val_str(c, doc, "base_url", !cat, 2048, &r->base_url))
        return false;
    if (!r->base_url)
        r->base_url = cat->base_url;
    struct sy_origin origin;
    memset(&origin, 0, sizeof(origin));
    char *err = NULL;
    if (sy_origin_parse(r->base_url, &origin, &err) < 0) {
        cp_call_invalid(c, "base_url", "base_url: %s", err ? err : "not a valid URL");
        free(err);
        return false;
    }
    sy_origin_free(&origin);
    if (!cp_val_enum(c, doc, "format", formats, cat ? cat->format : NULL, &r->format) ||
        !cp_val_enum(c, doc, "auth_style", auth_styles, cat ? cat->auth_style : "bearer",
                     &r->auth_style) ||
        !cp_val_str(c, doc, "auth_name", false, 128, &r->auth_name) ||
        !cp_val_str(c, doc, "api_version", false, 64, &r->api_version) ||
        !cp_val_str(c, doc, "ca_file", false, 4096, &r->ca_file) ||
        !cp_val_bool(c, doc, "insecure", false, &r->insecure))
        return false;
    if (!r->auth_name && cat && cat->auth_name && strcmp(r->auth_style, cat->auth_style) == 0)
        r->auth_name = cat->auth_name;
    if (!r->api_version && cat && cat->api_version)
        r->api_version = cat->api_version;

    if ((strcmp(r->auth_style, "header") == 0 || strcmp(r->auth_style, "query") == 0)) {
        if (!r->auth_name || !header_name_ok(r->auth_name)) {
            cp_call_invalid(c, "auth_name",
                            "auth_name: auth_style \"%s\" needs the name of the header or query "
                            "parameter that carries the key (e.g. \"x-api-key\")",
                            r->auth_style);
            return false;
        }
    } else {
        r->auth_name = NULL;
    }

    json_t *h = json_object_get(doc, "headers");
    if (h && !json_is_null(h)) {
        if (!json_is_object(h)) {
            cp_call_invalid(c, "headers", "headers: must be an object of name: value strings");
            return false;
        }
        const char *k;
        json_t *v;
        json_object_foreach(h, k, v)
        {
            char param[192];
            snprintf(param, sizeof(param), "headers.%s", k);
            if (!header_name_ok(k)) {
                cp_call_invalid(c, param, "%s: not a header name the gateway may send", param);
                return false;
            }
            const char *val;
            if (!cp_val_str(c, h, k, true, 4096, &val))
                return false;
        }
        r->headers = json_dumps(h, JSON_COMPACT);
    } else {
        r->headers = sy_xstrdup("{}");
    }

    json_t *key = json_object_get(c->body, "api_key");
    if (key && json_is_null(key)) {
        r->key_action = 2;
    } else if (key) {
        const char *plain;
        if (!cp_val_str(c, c->body, "api_key", true, 4096, &plain))
            return false;
        unsigned char *ct = NULL;
        size_t ct_len = 0;
        const char *key_id = NULL;
        if (cp_crypto_encrypt(&c->cp->ring, plain, strlen(plain), &ct, &ct_len, &key_id, &err) <
            0) {
            cp_call_error(c, 500, "server_error", "encryption_failed", "api_key",
                          "api_key: could not be encrypted: %s", err ? err : "");
            free(err);
            return false;
        }
        struct sy_buf b = SY_BUF_INIT;
        sy_buf_puts(&b, "\\x");
        for (size_t i = 0; i < ct_len; i++)
            sy_buf_printf(&b, "%02x", ct[i]);
        r->key_enc = sy_buf_steal(&b, NULL);
        snprintf(r->key_id, sizeof(r->key_id), "%s", key_id);
        r->key_hint = cp_crypto_hint(plain);
        r->key_action = 1;
        free(ct);
    }
    return true;
}

static void params_of(const struct provider_row *r, const char **p)
{
    p[0] = r->name;
    p[1] = r->kind;
    p[2] = r->base_url;
    p[3] = r->format;
    p[4] = r->auth_style;
    p[5] = r->auth_name;
    p[6] = r->headers;
    p[7] = r->api_version;
    p[8] = r->ca_file;
    p[9] = r->insecure ? "true" : "false";
    p[10] = r->key_action == 0 ? "keep" : r->key_action == 1 ? "set" : "clear";
    p[11] = r->key_enc;
    p[12] = r->key_action == 1 ? r->key_id : NULL;
    p[13] = r->key_hint;
}

/* ---- reads ----------------------------------------------------------------------------------- */

static void get(struct cp_call *c)
{
    const char *p[] = {c->name};
    cp_call_query(c, "SELECT provider_doc(p), p.version FROM providers p WHERE p.name = $1", 1, p,
                  cp_call_on_doc);
}

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
                  "SELECT p.id, provider_doc(p) FROM providers p WHERE p.id > $1 "
                  "AND ($3::text IS NULL OR p.name ILIKE '%' || $3 || '%' OR p.kind ILIKE '%' "
                  "|| $3 || '%') ORDER BY p.id LIMIT $2",
                  3, p, cp_call_on_page);
}

/* ---- writes ---------------------------------------------------------------------------------- */

static void create(struct cp_call *c)
{
    struct provider_row r = {0};
    if (validate(c, c->body, &r)) {
        const char *p[14];
        params_of(&r, p);
        cp_call_query(c,
                      "INSERT INTO providers (name, kind, base_url, format, auth_style, auth_name,"
                      " extra_headers, api_version, ca_file, insecure, api_key_enc,"
                      " api_key_key_id, api_key_hint)"
                      " SELECT $1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10::boolean,"
                      " CASE WHEN $11 = 'set' THEN $12::bytea END,"
                      " CASE WHEN $11 = 'set' THEN $13 END, CASE WHEN $11 = 'set' THEN $14 END"
                      " RETURNING provider_doc(providers), version",
                      14, p, cp_call_on_written);
    }
    row_free(&r);
}

/* An update reads the current document, merges (PATCH) or replaces (PUT) it with the body,
 * validates the result, and writes it only if the row still has the version that was read (or
 * the one the client named in If-Match). */
static void on_update_written(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    if (PQntuples(res) == 0) {
        cp_call_error(c, 412, "precondition_failed", "version_mismatch", "version",
                      "provider \"%s\" was changed by someone else (its version is no longer "
                      "the one given); fetch it again and retry",
                      c->name);
        return;
    }
    cp_call_doc_result(c, 200, res);
}

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
        cp_call_error(c, 500, "server_error", "internal_error", NULL, "cannot read the provider");
        return;
    }
    /* PATCH merges members, but an object member (headers) is replaced as a whole. */
    json_object_update(doc, c->body);
    json_object_del(doc, "api_key");
    if (!json_object_get(doc, "name"))
        json_object_set_new(doc, "name", json_string(c->name));
    int64_t version = c->if_match >= 0 ? c->if_match : atoll(PQgetvalue(res, 0, 1));
    struct provider_row r = {0};
    if (validate(c, doc, &r)) {
        const char *p[16];
        char v[24];
        params_of(&r, p);
        p[14] = c->name;
        p[15] = cp_i64(v, version);
        cp_call_query(c,
                      "UPDATE providers SET name = $1, kind = $2, base_url = $3, format = $4,"
                      " auth_style = $5, auth_name = $6, extra_headers = $7::jsonb,"
                      " api_version = $8, ca_file = $9, insecure = $10::boolean,"
                      " api_key_enc = CASE $11 WHEN 'set' THEN $12::bytea WHEN 'clear' THEN NULL"
                      "   ELSE api_key_enc END,"
                      " api_key_key_id = CASE $11 WHEN 'set' THEN $13 WHEN 'clear' THEN NULL"
                      "   ELSE api_key_key_id END,"
                      " api_key_hint = CASE $11 WHEN 'set' THEN $14 WHEN 'clear' THEN NULL"
                      "   ELSE api_key_hint END"
                      " WHERE name = $15 AND version = $16::int"
                      " RETURNING provider_doc(providers), version",
                      16, p, on_update_written);
    }
    row_free(&r);
    json_decref(doc);
}

static void update(struct cp_call *c, bool replace)
{
    const char *p[] = {c->name};
    c->state = replace ? (void *)1 : NULL;
    cp_call_query(c, "SELECT provider_doc(p), p.version FROM providers p WHERE p.name = $1", 1, p,
                  on_update_read);
}

static void remove_(struct cp_call *c)
{
    char v[24];
    const char *p[] = {c->name, c->if_match >= 0 ? cp_i64(v, c->if_match) : NULL};
    cp_call_query(c,
                  "WITH p AS (SELECT id, version FROM providers WHERE name = $1),"
                  " refs AS (SELECT string_agg(d.name, ', ' ORDER BY d.name) AS names"
                  "   FROM deployments d JOIN p ON d.provider_id = p.id),"
                  " del AS (DELETE FROM providers WHERE id = (SELECT id FROM p)"
                  "   AND (SELECT names FROM refs) IS NULL"
                  "   AND ($2::int IS NULL OR version = $2::int) RETURNING id)"
                  " SELECT (SELECT count(*) FROM p), (SELECT names FROM refs),"
                  " (SELECT count(*) FROM del)",
                  2, p, cp_call_on_removed);
}

const struct cp_resource cp_api_providers = {
    .name = "providers",
    .kind = "provider",
    .referrers = "is still used by deployments",
    .referrers_fix = "delete or move them first",
    .list = list,
    .get = get,
    .create = create,
    .update = update,
    .remove = remove_,
};
