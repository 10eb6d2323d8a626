/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's alerts (docs/observability.md, "Alerts"):
 *
 *     /admin/v1/alert-channels   where notifications go (CRUD)
 *         {"name", "type": generic|slack|dingtalk|feishu|wecom, "url", "headers": {..},
 *          "secret" (write-only: DingTalk/Feishu signing, generic HMAC), "enabled"}
 *         reads show "secret_set" instead of the secret
 *     /admin/v1/alert-rules      what is watched (CRUD)
 *         {"name", "description", "kind", "scope", "target", "threshold", "window_minutes",
 *          "min_requests", "limit", "for_minutes", "repeat_minutes", "channels": [names],
 *          "enabled"}
 *     /admin/v1/alerts           current and past alerts, one per rule x subject (read-only)
 *     /admin/v1/alert-deliveries the outbox of notifications (read-only)
 *
 * Documents come from alert_channel_doc(), alert_rule_doc(), alert_state_doc() and
 * alert_delivery_doc() (migrations/007_alerts.sql). Rules and channels are addressed by name. */

#include <stdio.h>
#include <string.h>

#include "api.h"
#include "sy/buf.h"
#include "sy/util.h"
#include "webhook.h"

#define MAX_RULE_CHANNELS 16

/* ============================================================================================
 * Channels
 * ========================================================================================== */

static const char *const channel_fields[] = {"name", "type", "url", "headers", "secret", "enabled",
                                             /* shown by reads, ignored on writes */
                                             "id", "object", "secret_set", "version", "created_at",
                                             "updated_at", NULL};
static const char *const channel_types[] = {"generic", "slack", "dingtalk",
                                            "feishu",  "wecom", NULL};

struct channel_row {
    const char *p[9]; /* name, type, url, headers, enabled, secret action, enc, key id, (spare) */
    char *headers;
    char *enc;
    char key_id[72];
};

static void channel_row_free(struct channel_row *r)
{
    free(r->headers);
    free(r->enc);
}

static bool header_name_ok(const char *s)
{
    static const char *const reserved[] = {"host",       "content-length",    "content-type",
                                           "connection", "transfer-encoding", "te",
                                           "upgrade",    "keep-alive",        NULL};
    if (!*s || strlen(s) > 128)
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

/* Validate the merged <doc> into <r>; the secret comes from the request body only. */
static bool channel_validate(struct cp_call *c, json_t *doc, struct channel_row *r)
{
    bool enabled;
    const char *type;
    memset(r, 0, sizeof(*r));
    if (!cp_val_known(c, doc, NULL, channel_fields) || !cp_val_name(c, doc, "name", 64, &r->p[0]) ||
        !cp_val_enum(c, doc, "type", channel_types, NULL, &type) ||
        !cp_val_str(c, doc, "url", true, 2048, &r->p[2]) ||
        !cp_val_bool(c, doc, "enabled", true, &enabled))
        return false;
    r->p[1] = type;
    r->p[4] = enabled ? "true" : "false";
    struct cp_webhook_url u;
    const char *why = NULL;
    if (cp__webhook_parse_url(r->p[2], &u, &why) < 0) {
        cp_call_invalid(c, "url", "url: %s", why);
        return false;
    }
    free(u.target);
    json_t *h = json_object_get(doc, "headers");
    if (h && !json_is_null(h)) {
        if (!json_is_object(h) || json_object_size(h) > 32) {
            cp_call_invalid(c, "headers",
                            "headers: must be an object of at most 32 name: value strings");
            return false;
        }
        const char *k;
        json_t *v;
        json_object_foreach(h, k, v)
        {
            char param[192];
            snprintf(param, sizeof(param), "headers.%s", k);
            const char *val;
            if (!header_name_ok(k)) {
                cp_call_invalid(c, param, "%s: not a header name a webhook may be sent with",
                                param);
                return false;
            }
            if (!cp_val_str(c, h, k, false, 4096, &val))
                return false;
            if (!val) {
                cp_call_invalid(c, param, "%s: must be a string", param);
                return false;
            }
        }
        r->headers = json_dumps(h, JSON_COMPACT);
    } else {
        r->headers = sy_xstrdup("{}");
    }
    r->p[3] = r->headers;
    /* a channel that becomes a type that is never signed drops the secret it had */
    bool unsigned_type = strcmp(type, "slack") == 0 || strcmp(type, "wecom") == 0;
    r->p[5] = unsigned_type ? "clear" : "keep";
    json_t *sec = json_object_get(c->body, "secret");
    if (sec && json_is_null(sec)) {
        r->p[5] = "clear";
    } else if (sec) {
        const char *plain;
        if (!cp_val_str(c, c->body, "secret", true, 512, &plain))
            return false;
        if (unsigned_type) {
            cp_call_invalid(c, "secret",
                            "secret: %s webhooks are not signed; only dingtalk, feishu and "
                            "generic channels take a secret",
                            type);
            return false;
        }
        unsigned char *ct = NULL;
        size_t ct_len = 0;
        const char *key_id = NULL;
        char *err = NULL;
        if (cp_crypto_encrypt(&c->cp->ring, plain, strlen(plain), &ct, &ct_len, &key_id, &err) <
            0) {
            cp_call_error(c, 500, "server_error", "encryption_failed", "secret",
                          "secret: could not be encrypted: %s", err ? err : "");
            free(err);
            return false;
        }
        struct sy_buf b = SY_BUF_INIT;
        sy_buf_puts(&b, "\\x");
        for (size_t i = 0; i < ct_len; i++)
            sy_buf_printf(&b, "%02x", ct[i]);
        free(ct);
        r->enc = sy_buf_steal(&b, NULL);
        snprintf(r->key_id, sizeof(r->key_id), "%s", key_id);
        r->p[5] = "set";
        r->p[6] = r->enc;
        r->p[7] = r->key_id;
    }
    return true;
}

static void channel_get(struct cp_call *c)
{
    const char *p[] = {c->name};
    cp_call_query(c,
                  "SELECT alert_channel_doc(ch), ch.version FROM alert_channels ch"
                  " WHERE ch.name = $1",
                  1, p, cp_call_on_doc);
}

static void channel_list(struct cp_call *c)
{
    int limit;
    int64_t after;
    char a[24], l[24];
    if (!cp_call_page(c, &limit, &after))
        return;
    c->state = (void *)(intptr_t)limit;
    const char *p[] = {cp_i64(a, after), cp_i64(l, limit + 1)};
    cp_call_query(c,
                  "SELECT ch.id, alert_channel_doc(ch) FROM alert_channels ch WHERE ch.id > $1"
                  " ORDER BY ch.id LIMIT $2",
                  2, p, cp_call_on_page);
}

static void channel_create(struct cp_call *c)
{
    struct channel_row r;
    if (!channel_validate(c, c->body, &r)) {
        channel_row_free(&r);
        return;
    }
    if (strcmp(r.p[5], "set") != 0) {
        r.p[6] = NULL;
        r.p[7] = NULL;
    }
    cp_call_query(c,
                  "INSERT INTO alert_channels (name, type, url, headers, enabled, secret_enc,"
                  " secret_key_id) VALUES ($1, $2, $3, $4::jsonb, $5::boolean, $6::bytea, $7)"
                  " RETURNING alert_channel_doc(alert_channels), version",
                  7, (const char *const[]){r.p[0], r.p[1], r.p[2], r.p[3], r.p[4], r.p[6], r.p[7]},
                  cp_call_on_written);
    channel_row_free(&r);
}

static void channel_on_update_read(struct cp_call *c, const PGresult *res, const char *err)
{
    int64_t version;
    json_t *doc = cp_call_update_doc(c, res, err, NULL, true, &version);
    if (!doc)
        return;
    json_object_del(doc, "secret"); /* write-only: channel_validate() reads it from the body */
    struct channel_row r;
    if (!channel_validate(c, doc, &r)) {
        channel_row_free(&r);
        return;
    }
    char v[24];
    const char *p[] = {r.p[0], r.p[1], r.p[2], r.p[3],  r.p[4],
                       r.p[5], r.p[6], r.p[7], c->name, cp_i64(v, version)};
    cp_call_query(c,
                  "WITH u AS (UPDATE alert_channels ch SET name = $1, type = $2, url = $3,"
                  "  headers = $4::jsonb, enabled = $5::boolean,"
                  "  secret_enc = CASE $6 WHEN 'set' THEN $7::bytea WHEN 'clear' THEN NULL"
                  "   ELSE secret_enc END,"
                  "  secret_key_id = CASE $6 WHEN 'set' THEN $8 WHEN 'clear' THEN NULL"
                  "   ELSE secret_key_id END"
                  "  WHERE ch.name = $9 AND ch.version = $10::int"
                  "  RETURNING alert_channel_doc(ch) AS doc, ch.version)"
                  " SELECT (SELECT doc FROM u), (SELECT version FROM u),"
                  " EXISTS (SELECT 1 FROM alert_channels WHERE name = $9)",
                  10, p, cp_call_on_updated);
    channel_row_free(&r);
}

static void channel_update(struct cp_call *c, bool replace)
{
    cp_call_update_read(c, replace,
                        "SELECT alert_channel_doc(ch), ch.version FROM alert_channels ch"
                        " WHERE ch.name = $1",
                        c->name, channel_on_update_read);
}

static void channel_remove(struct cp_call *c)
{
    char v[24];
    const char *p[] = {c->name, c->if_match >= 0 ? cp_i64(v, c->if_match) : NULL};
    cp_call_query(c,
                  "WITH ch AS (SELECT id FROM alert_channels WHERE name = $1),"
                  " refs AS (SELECT string_agg(r.name, ', ' ORDER BY r.name) AS names"
                  "   FROM alert_rules r WHERE r.id IN (SELECT rc.rule_id FROM"
                  "   alert_rule_channels rc JOIN ch ON rc.channel_id = ch.id)),"
                  " del AS (DELETE FROM alert_channels WHERE id = (SELECT id FROM ch)"
                  "   AND (SELECT names FROM refs) IS NULL"
                  "   AND ($2::int IS NULL OR version = $2::int) RETURNING id)"
                  " SELECT (SELECT count(*) FROM ch), (SELECT names FROM refs),"
                  " (SELECT count(*) FROM del)",
                  2, p, cp_call_on_removed);
}

const struct cp_resource cp_api_alert_channels = {
    .name = "alert-channels",
    .kind = "alert channel",
    .referrers = "is still used by alert rules",
    .referrers_fix = "remove it from their channels first",
    .list = channel_list,
    .get = channel_get,
    .create = channel_create,
    .update = channel_update,
    .remove = channel_remove,
};

/* ============================================================================================
 * Rules
 * ========================================================================================== */

static const char *const rule_fields[] = {
    "name", "description", "kind", "scope", "target", "threshold", "window_minutes", "min_requests",
    "limit", "for_minutes", "repeat_minutes", "channels", "enabled",
    /* shown by reads, ignored on writes */
    "id", "object", "version", "created_at", "updated_at", NULL};
static const char *const rule_kinds[] = {"error_rate", "circuit_open", "p95_latency", "limit_use",
                                         "budget_use", "no_traffic",   NULL};
static const char *const model_or_deployment[] = {"model", "deployment", NULL};
static const char *const deployment_only[] = {"deployment", NULL};
static const char *const budget_only[] = {"budget", NULL};
static const char *const limits[] = {"rpm", "tpm", NULL};

/* Validate the merged <doc>; on success *<out> is the normalised document for
 * alert_rule_write() (caller decrefs). */
static bool rule_validate(struct cp_call *c, json_t *doc, json_t **out)
{
    const char *name, *desc, *kind, *scope, *target, *limit = NULL;
    bool present, enabled;
    int64_t window = 5, min_req = 1, for_min = 0, repeat = 0, v;
    double threshold = 0;
    *out = NULL;
    if (!cp_val_known(c, doc, NULL, rule_fields) || !cp_val_name(c, doc, "name", 64, &name) ||
        !cp_val_str(c, doc, "description", false, 1024, &desc) ||
        !cp_val_enum(c, doc, "kind", rule_kinds, NULL, &kind))
        return false;
    bool per_traffic = strcmp(kind, "error_rate") == 0 || strcmp(kind, "p95_latency") == 0 ||
                       strcmp(kind, "no_traffic") == 0;
    const char *const *scopes = per_traffic                       ? model_or_deployment
                                : strcmp(kind, "budget_use") == 0 ? budget_only
                                                                  : deployment_only;
    if (!cp_val_enum(c, doc, "scope", scopes, scopes == budget_only ? "budget" : "deployment",
                     &scope) ||
        !cp_val_str(c, doc, "target", false, 128, &target))
        return false;
    if (target && !*target) {
        cp_call_invalid(c, "target", "target: must be a name, or null for every %s", scope);
        return false;
    }

    /* threshold: what the kind compares against */
    json_t *th = json_object_get(doc, "threshold");
    bool wants_threshold = strcmp(kind, "circuit_open") != 0 && strcmp(kind, "no_traffic") != 0;
    if (wants_threshold) {
        double lo = 0, hi = 100;
        const char *unit = "percent";
        if (strcmp(kind, "p95_latency") == 0) {
            hi = 600000;
            unit = "milliseconds";
        } else if (strcmp(kind, "limit_use") == 0 || strcmp(kind, "budget_use") == 0) {
            hi = 1000;
        }
        if (!th || json_is_null(th)) {
            cp_call_invalid(c, "threshold", "threshold: is required for kind %s (%s)", kind, unit);
            return false;
        }
        if (!json_is_number(th) || json_number_value(th) < lo || json_number_value(th) >= hi) {
            cp_call_invalid(c, "threshold",
                            "threshold: for kind %s must be a number of %s from %g up to (not "
                            "including) %g",
                            kind, unit, lo, hi);
            return false;
        }
        threshold = json_number_value(th);
    } else if (th && !json_is_null(th) && !json_is_number(th)) {
        cp_call_invalid(c, "threshold", "threshold: must be a number (kind %s does not use it)",
                        kind);
        return false;
    }
    if (!cp_val_int(c, doc, "window_minutes", 1, 1440, &present, &v))
        return false;
    if (present)
        window = v;
    if (!cp_val_int(c, doc, "min_requests", 1, 1000000000, &present, &v))
        return false;
    if (present)
        min_req = v;
    if (!cp_val_int(c, doc, "for_minutes", 0, 1440, &present, &v))
        return false;
    if (present)
        for_min = v;
    if (!cp_val_int(c, doc, "repeat_minutes", 0, 10080, &present, &v))
        return false;
    if (present)
        repeat = v;
    if (strcmp(kind, "limit_use") == 0) {
        if (!cp_val_enum(c, doc, "limit", limits, NULL, &limit))
            return false;
    } else {
        json_t *l = json_object_get(doc, "limit");
        if (l && !json_is_null(l)) {
            cp_call_invalid(c, "limit", "limit: only kind limit_use takes a limit (rpm or tpm)");
            return false;
        }
    }
    if (!cp_val_bool(c, doc, "enabled", true, &enabled))
        return false;

    json_t *chs = json_object_get(doc, "channels");
    json_t *names = json_array();
    if (chs && !json_is_null(chs)) {
        if (!json_is_array(chs) || json_array_size(chs) > MAX_RULE_CHANNELS) {
            json_decref(names);
            cp_call_invalid(c, "channels",
                            "channels: must be an array of at most %d alert channel names",
                            MAX_RULE_CHANNELS);
            return false;
        }
        size_t i, j;
        json_t *m;
        json_array_foreach(chs, i, m)
        {
            char key[32];
            snprintf(key, sizeof(key), "channels[%zu]", i);
            const char *s = json_string_value(m);
            if (!s || !*s || strlen(s) > 64) {
                json_decref(names);
                cp_call_invalid(c, key, "%s: must be the name of an alert channel", key);
                return false;
            }
            for (j = 0; j < i; j++) {
                if (strcmp(json_string_value(json_array_get(chs, j)), s) == 0) {
                    json_decref(names);
                    cp_call_invalid(c, key, "%s: channel \"%s\" is listed twice", key, s);
                    return false;
                }
            }
            json_array_append_new(names, json_string(s));
        }
    }
    *out = json_pack("{s:s,s:o,s:s,s:s,s:o,s:f,s:I,s:I,s:o,s:I,s:I,s:o,s:b}", "name", name,
                     "description", desc ? json_string(desc) : json_null(), "kind", kind, "scope",
                     scope, "target", target ? json_string(target) : json_null(), "threshold",
                     threshold, "window_minutes", (json_int_t)window, "min_requests",
                     (json_int_t)min_req, "limit", limit ? json_string(limit) : json_null(),
                     "for_minutes", (json_int_t)for_min, "repeat_minutes", (json_int_t)repeat,
                     "channels", names, "enabled", enabled);
    if (!*out) {
        cp_call_error(c, 500, "server_error", "internal_error", NULL, "out of memory");
        return false;
    }
    return true;
}

static void rule_get(struct cp_call *c)
{
    const char *p[] = {c->name};
    cp_call_query(c, "SELECT alert_rule_doc(r), r.version FROM alert_rules r WHERE r.name = $1", 1,
                  p, cp_call_on_doc);
}

static void rule_list(struct cp_call *c)
{
    int limit;
    int64_t after;
    char a[24], l[24];
    if (!cp_call_page(c, &limit, &after))
        return;
    c->state = (void *)(intptr_t)limit;
    const char *p[] = {cp_i64(a, after), cp_i64(l, limit + 1)};
    cp_call_query(c,
                  "SELECT r.id, alert_rule_doc(r) FROM alert_rules r WHERE r.id > $1"
                  " ORDER BY r.id LIMIT $2",
                  2, p, cp_call_on_page);
}

static void rule_write(struct cp_call *c, json_t *doc, int64_t version)
{
    json_t *norm;
    if (!rule_validate(c, doc, &norm))
        return;
    char *text = json_dumps(norm, JSON_COMPACT);
    json_decref(norm);
    char v[24];
    const char *p[] = {c->name, version >= 0 ? cp_i64(v, version) : NULL, text};
    cp_call_query(c, "SELECT out_doc, out_version FROM alert_rule_write($1, $2::int, $3::jsonb)", 3,
                  p, cp_call_on_written);
    free(text);
}

static void rule_create(struct cp_call *c)
{
    rule_write(c, c->body, -1);
}

static void rule_on_update_read(struct cp_call *c, const PGresult *res, const char *err)
{
    int64_t version;
    json_t *doc = cp_call_update_doc(c, res, err, NULL, true, &version);
    if (!doc)
        return;
    rule_write(c, doc, version);
}

static void rule_update(struct cp_call *c, bool replace)
{
    cp_call_update_read(c, replace,
                        "SELECT alert_rule_doc(r), r.version FROM alert_rules r WHERE r.name = $1",
                        c->name, rule_on_update_read);
}

static void rule_remove(struct cp_call *c)
{
    char v[24];
    const char *p[] = {c->name, c->if_match >= 0 ? cp_i64(v, c->if_match) : NULL};
    cp_call_query(c,
                  "WITH r AS (SELECT id FROM alert_rules WHERE name = $1),"
                  " del AS (DELETE FROM alert_rules WHERE id = (SELECT id FROM r)"
                  "   AND ($2::int IS NULL OR version = $2::int) RETURNING id)"
                  " SELECT (SELECT count(*) FROM r), NULL::text, (SELECT count(*) FROM del)",
                  2, p, cp_call_on_removed);
}

const struct cp_resource cp_api_alert_rules = {
    .name = "alert-rules",
    .kind = "alert rule",
    .list = rule_list,
    .get = rule_get,
    .create = rule_create,
    .update = rule_update,
    .remove = rule_remove,
};

/* ============================================================================================
 * Alerts and deliveries (read-only)
 * ========================================================================================== */

static bool enum_param(struct cp_call *c, const char *name, const char *const *choices,
                       const char **out)
{
    *out = cp_call_param(c, name);
    if (!*out)
        return true;
    for (const char *const *ch = choices; *ch; ch++)
        if (strcmp(*out, *ch) == 0)
            return true;
    struct sy_buf b = SY_BUF_INIT;
    for (const char *const *ch = choices; *ch; ch++)
        sy_buf_printf(&b, "%s\"%s\"", ch == choices ? "" : ", ", *ch);
    cp_call_invalid(c, name, "%s: must be one of %s", name, b.data);
    sy_buf_free(&b);
    return false;
}

/* The id in the URL: a positive decimal number, or NULL (the item cannot exist). */
static const char *item_id(struct cp_call *c)
{
    size_t n = strlen(c->name);
    if (n == 0 || n > 18 || c->name[0] == '0' || strspn(c->name, "0123456789") != n)
        return NULL;
    return c->name;
}

static void alerts_get(struct cp_call *c)
{
    const char *p[] = {item_id(c)};
    if (!p[0]) {
        cp_call_not_found(c);
        return;
    }
    cp_call_query(c,
                  "SELECT alert_state_doc(s, r) FROM alert_states s"
                  " JOIN alert_rules r ON r.id = s.rule_id WHERE s.id = $1::bigint",
                  1, p, cp_call_on_doc);
}

/* ?state=pending|firing|resolved &rule=<name>: ordered by id (first breach first). */
static void alerts_list(struct cp_call *c)
{
    static const char *const states[] = {"pending", "firing", "resolved", NULL};
    int limit;
    int64_t after;
    char a[24], l[24];
    const char *state;
    if (!cp_call_page(c, &limit, &after) || !enum_param(c, "state", states, &state))
        return;
    const char *rule = cp_call_param(c, "rule");
    c->state = (void *)(intptr_t)limit;
    const char *p[] = {cp_i64(a, after), cp_i64(l, limit + 1), state, rule};
    cp_call_query(c,
                  "SELECT s.id, alert_state_doc(s, r) FROM alert_states s"
                  " JOIN alert_rules r ON r.id = s.rule_id WHERE s.id > $1"
                  " AND ($3::text IS NULL OR s.state = $3) AND ($4::text IS NULL OR r.name = $4)"
                  " ORDER BY s.id LIMIT $2",
                  4, p, cp_call_on_page);
}

const struct cp_resource cp_api_alerts = {
    .name = "alerts",
    .kind = "alert",
    .list = alerts_list,
    .get = alerts_get,
};

static void deliveries_get(struct cp_call *c)
{
    const char *p[] = {item_id(c)};
    if (!p[0]) {
        cp_call_not_found(c);
        return;
    }
    cp_call_query(c, "SELECT alert_delivery_doc(d) FROM alert_deliveries d WHERE d.id = $1::bigint",
                  1, p, cp_call_on_doc);
}

/* ?state=pending|delivered|failed &channel=<name> &rule=<name>: ordered by id. */
static void deliveries_list(struct cp_call *c)
{
    static const char *const states[] = {"pending", "delivered", "failed", NULL};
    int limit;
    int64_t after;
    char a[24], l[24];
    const char *state;
    if (!cp_call_page(c, &limit, &after) || !enum_param(c, "state", states, &state))
        return;
    const char *channel = cp_call_param(c, "channel");
    const char *rule = cp_call_param(c, "rule");
    c->state = (void *)(intptr_t)limit;
    const char *p[] = {cp_i64(a, after), cp_i64(l, limit + 1), state, channel, rule};
    cp_call_query(c,
                  "SELECT d.id, alert_delivery_doc(d) FROM alert_deliveries d WHERE d.id > $1"
                  " AND ($3::text IS NULL OR CASE WHEN d.delivered_at IS NOT NULL THEN"
                  "  'delivered' WHEN d.gave_up_at IS NOT NULL THEN 'failed' ELSE 'pending'"
                  "  END = $3)"
                  " AND ($4::text IS NULL OR d.channel_id ="
                  "  (SELECT id FROM alert_channels WHERE name = $4))"
                  " AND ($5::text IS NULL OR d.rule = $5)"
                  " ORDER BY d.id LIMIT $2",
                  5, p, cp_call_on_page);
}

const struct cp_resource cp_api_alert_deliveries = {
    .name = "alert-deliveries",
    .kind = "alert delivery",
    .list = deliveries_list,
    .get = deliveries_get,
};
