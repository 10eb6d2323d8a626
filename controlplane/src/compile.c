/* SPDX-License-Identifier: Apache-2.0 */
/** The compiler of routing tables (compile.h): one SQL statement reads the whole config as a
 * JSON document, a worker thread turns it into a struct sy_table, encodes it and decodes the
 * result back, so that nothing is published that a data-plane worker would refuse. */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <uv.h>

#include "compile.h"
#include "policy.h"
#include "internal.h"
#include "server.h"
#include "sy/buf.h"
#include "sy/log.h"
#include "sy/table.h"
#include "sy/util.h"

/* ---- the statement --------------------------------------------------------------------------- */

/* One statement, so one snapshot: under READ COMMITTED every subquery of a statement sees the
 * same committed state, config_state.version included. Targets are aggregated per model in one
 * pass (a correlated subquery would be one index probe per model). Providers keep their
 * credential as hex; keys keep only their hash. */
const char cp__compile_sql[] =
    "SELECT json_build_object("
    " 'version', (SELECT version FROM config_state),"
    " 'nodes', (SELECT live_nodes FROM config_state),"
    " 'providers', coalesce((SELECT json_agg(json_build_object("
    "   'id', p.id, 'name', p.name, 'base_url', p.base_url, 'format', p.format,"
    "   'auth_style', p.auth_style, 'auth_name', p.auth_name, 'headers', p.extra_headers,"
    "   'key_enc', encode(p.api_key_enc, 'hex'), 'key_id', p.api_key_key_id,"
    "   'api_version', p.api_version, 'ca_file', p.ca_file, 'insecure', p.insecure)"
    "   ORDER BY p.id) FROM providers p), '[]'),"
    " 'deployments', coalesce((SELECT json_agg(json_build_object("
    "   'id', d.id, 'name', d.name, 'provider_id', d.provider_id, 'model', d.model,"
    "   'weight', d.weight, 'rpm', d.rpm, 'tpm', d.tpm, 'max_concurrency', d.max_concurrency,"
    "   'connect_ms', d.connect_timeout_ms, 'first_byte_ms', d.first_byte_timeout_ms,"
    "   'idle_ms', d.idle_timeout_ms, 'total_ms', d.total_timeout_ms,"
    "   'input_price', d.input_price, 'output_price', d.output_price,"
    "   'enabled', d.enabled, 'slot', d.slot)"
    "   ORDER BY d.id) FROM deployments d), '[]'),"
    " 'models', coalesce((SELECT json_agg(json_build_object("
    "   'name', m.name, 'slot', m.slot, 'targets', coalesce(t.targets, '[]'),"
    "   'policy', m.policy, 'fallbacks', to_json(m.fallbacks))"
    "   ORDER BY m.id)"
    "   FROM models m LEFT JOIN (SELECT model_id,"
    "     json_agg(json_build_array(deployment_id, weight) ORDER BY position) AS targets"
    "     FROM model_targets GROUP BY model_id) t ON t.model_id = m.id), '[]'),"
    " 'keys', coalesce((SELECT json_agg(json_build_object("
    "   'id', k.id, 'name', k.name, 'hash', encode(k.key_hash, 'hex'), 'prefix', k.key_prefix,"
    "   'agent', k.agent, 'user', k.user_name, 'tier', k.tier, 'models', k.allowed_models,"
    "   'expires_ms', (extract(epoch FROM k.expires_at) * 1000)::bigint,"
    "   'slot', k.slot, 'rpm', k.rpm, 'tpm', k.tpm, 'model_limits', k.model_limits)"
    "   ORDER BY k.id) FROM api_keys k WHERE NOT k.revoked), '[]'),"
    " 'guardrails', coalesce((SELECT json_agg(g.spec || jsonb_build_object('id', g.id,"
    "   'name', g.name) ORDER BY g.id) FROM guardrails g WHERE g.enabled), '[]'),"
    " 'budgets', coalesce((SELECT json_agg(json_build_object("
    "   'id', b.id, 'name', b.name, 'slot', b.slot, 'scope', b.scope, 'subject', b.subject,"
    "   'amount_micros', (b.amount * 1000000)::bigint, 'soft_percent', b.soft_percent,"
    "   'period', b.period)"
    "   ORDER BY b.id) FROM budgets b WHERE b.enabled), '[]')"
    ")";

/* ---- reading the document -------------------------------------------------------------------- */

/* A provider as the deployments need it; strings borrowed from the document. */
struct provider {
    int64_t id;
    const char *name;
    const char *base_url;
    enum sy_format format;
    enum sy_auth_style auth_style;
    const char *auth_name;
    json_t *headers; /* object of name: value */
    const char *api_version;
    const char *ca_file;
    bool insecure;
    char *api_key; /* decrypted (cp_crypto_free_secret), NULL without one */
    size_t api_key_len;
    bool key_failed; /* set, but did not decrypt: its deployments are compiled disabled */
};

struct build {
    const struct cp_crypto_ring *ring;
    struct sy_table *t;
    struct provider *providers; /* by id, ascending */
    size_t n_providers;
    int64_t *dep_ids; /* id of t->deployments[i], ascending */
    uint32_t problems;
};

static const char *get_str(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static char *dup_or_null(const char *s)
{
    return s ? sy_xstrdup(s) : NULL;
}

/* A non-negative integer that fits uint32; null or absent is 0. */
static uint32_t get_u32(json_t *obj, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(obj, key));
    return v < 0 ? 0 : v > (json_int_t)UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* This node's share of a fleet-wide <limit> (0: none): divided by the live nodes, rounded down
 * so that the shares never add up to more than the limit, but at least 1 (a limit below the
 * node count gives each node 1). */
static uint32_t share(const struct build *b, uint32_t limit)
{
    if (limit == 0 || b->t->nodes <= 1)
        return limit;
    return limit / b->t->nodes ? limit / b->t->nodes : 1;
}

static json_t *get_array(json_t *doc, const char *key, char **err)
{
    json_t *a = json_object_get(doc, key);
    if (!json_is_array(a))
        cp__fail(err, -EINVAL, "config document: \"%s\" is not an array", key);
    return json_is_array(a) ? a : NULL;
}

static int format_of(const char *s, enum sy_format *out)
{
    static const char *const names[SY_FORMAT_MAX] = {
        [SY_FORMAT_OPENAI] = "openai",
        [SY_FORMAT_ANTHROPIC] = "anthropic",
        [SY_FORMAT_AZURE] = "azure",
    };
    for (int i = 0; i < SY_FORMAT_MAX; i++)
        if (s && strcmp(s, names[i]) == 0) {
            *out = (enum sy_format)i;
            return 0;
        }
    return -EINVAL;
}

static int auth_of(const char *s, enum sy_auth_style *out)
{
    static const char *const names[SY_AUTH_MAX] = {
        [SY_AUTH_BEARER] = "bearer",
        [SY_AUTH_HEADER] = "header",
        [SY_AUTH_QUERY] = "query",
        [SY_AUTH_NONE] = "none",
    };
    for (int i = 0; i < SY_AUTH_MAX; i++)
        if (s && strcmp(s, names[i]) == 0) {
            *out = (enum sy_auth_style)i;
            return 0;
        }
    return -EINVAL;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode <n> hex digits of <hex> into <out> (n/2 bytes); false on a bad digit or odd length. */
static bool unhex(const char *hex, size_t n, unsigned char *out)
{
    if (n % 2)
        return false;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

/* Open a provider's credential. A failure is the provider's problem, not the table's. */
static void provider_decrypt(struct build *b, struct provider *p, json_t *row)
{
    const char *hex = get_str(row, "key_enc"), *key_id = get_str(row, "key_id");
    if (!hex)
        return;
    size_t n = strlen(hex) / 2;
    unsigned char *ct = sy_xmalloc(n ? n : 1);
    char *err = NULL;
    int rc;
    if (!key_id || !unhex(hex, strlen(hex), ct))
        rc = cp__fail(&err, -EBADMSG, "the stored ciphertext is malformed");
    else
        rc = cp_crypto_decrypt(b->ring, key_id, ct, n, &p->api_key, &p->api_key_len, &err);
    free(ct);
    if (rc < 0) {
        p->key_failed = true;
        b->problems++;
        sy_log(SY_LOG_ERROR, "compile",
               "provider \"%s\": the credential does not decrypt (%s); its deployments are "
               "compiled disabled",
               p->name, err ? err : "out of memory");
    }
    free(err);
}

static int read_providers(struct build *b, json_t *doc, char **err)
{
    json_t *arr = get_array(doc, "providers", err), *row;
    size_t i;
    if (!arr)
        return -EINVAL;
    b->providers = sy_xcalloc(json_array_size(arr) + 1, sizeof(*b->providers));
    json_array_foreach(arr, i, row)
    {
        struct provider *p = &b->providers[b->n_providers++];
        p->id = json_integer_value(json_object_get(row, "id"));
        p->name = get_str(row, "name");
        p->base_url = get_str(row, "base_url");
        if (!p->name || !p->base_url)
            return cp__fail(err, -EINVAL, "config document: providers[%zu] lacks a name or URL", i);
        if (format_of(get_str(row, "format"), &p->format) < 0 ||
            auth_of(get_str(row, "auth_style"), &p->auth_style) < 0)
            return cp__fail(err, -EINVAL,
                            "provider \"%s\": format or auth_style unknown to this build", p->name);
        p->auth_name = get_str(row, "auth_name");
        p->headers = json_object_get(row, "headers");
        p->api_version = get_str(row, "api_version");
        p->ca_file = get_str(row, "ca_file");
        p->insecure = json_is_true(json_object_get(row, "insecure"));
        provider_decrypt(b, p, row);
    }
    return 0;
}

static struct provider *find_provider(struct build *b, int64_t id)
{
    size_t lo = 0, hi = b->n_providers;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b->providers[mid].id == id)
            return &b->providers[mid];
        if (b->providers[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void copy_headers(struct build *b, struct sy_deployment *d, const struct provider *p)
{
    size_t n = json_object_size(p->headers);
    const char *name;
    json_t *v;
    if (!n)
        return;
    d->headers = sy_xcalloc(n, sizeof(*d->headers));
    json_object_foreach(p->headers, name, v)
    {
        if (!json_is_string(v)) {
            b->problems++;
            sy_log(SY_LOG_WARN, "compile",
                   "provider \"%s\": header \"%s\" is not a string; left out", p->name, name);
            continue;
        }
        d->headers[d->n_headers].name = sy_xstrdup(name);
        d->headers[d->n_headers].value = sy_xstrdup(json_string_value(v));
        d->n_headers++;
    }
}

static int read_deployments(struct build *b, json_t *doc, char **err)
{
    json_t *arr = get_array(doc, "deployments", err), *row;
    size_t i;
    if (!arr)
        return -EINVAL;
    struct sy_table *t = b->t;
    t->deployments = sy_xcalloc(json_array_size(arr) + 1, sizeof(*t->deployments));
    b->dep_ids = sy_xcalloc(json_array_size(arr) + 1, sizeof(*b->dep_ids));
    json_array_foreach(arr, i, row)
    {
        const char *name = get_str(row, "name"), *model = get_str(row, "model");
        struct provider *p =
            find_provider(b, json_integer_value(json_object_get(row, "provider_id")));
        if (!name || !model || !p)
            return cp__fail(err, -EINVAL,
                            "config document: deployments[%zu] lacks a name, model or provider", i);
        struct sy_deployment *d = &t->deployments[t->n_deployments];
        b->dep_ids[t->n_deployments++] = json_integer_value(json_object_get(row, "id"));
        d->name = sy_xstrdup(name);
        d->provider = sy_xstrdup(p->name);
        d->model = sy_xstrdup(model);
        d->format = p->format;
        d->base_url = sy_xstrdup(p->base_url);
        d->auth_style = p->auth_style;
        d->auth_name = dup_or_null(p->auth_name);
        d->api_version = dup_or_null(p->api_version);
        d->origin.ca_file = dup_or_null(p->ca_file);
        d->origin.insecure = p->insecure;
        copy_headers(b, d, p);
        d->timeouts.connect_ms = get_u32(row, "connect_ms");
        d->timeouts.first_byte_ms = get_u32(row, "first_byte_ms");
        d->timeouts.idle_ms = get_u32(row, "idle_ms");
        d->timeouts.total_ms = get_u32(row, "total_ms");
        d->limits.rpm = share(b, get_u32(row, "rpm"));
        d->limits.tpm = share(b, get_u32(row, "tpm"));
        d->limits.max_concurrency = share(b, get_u32(row, "max_concurrency"));
        d->price.input = json_number_value(json_object_get(row, "input_price"));
        d->price.output = json_number_value(json_object_get(row, "output_price"));
        d->weight = get_u32(row, "weight");
        d->slot = get_u32(row, "slot");
        d->enabled = json_is_true(json_object_get(row, "enabled"));
        if (!d->enabled || d->auth_style == SY_AUTH_NONE)
            continue;
        if (p->key_failed) {
            d->enabled = false; /* already logged once for the provider */
        } else if (!p->api_key) {
            d->enabled = false;
            b->problems++;
            sy_log(SY_LOG_WARN, "compile",
                   "deployment \"%s\": provider \"%s\" has no credential; compiled disabled",
                   d->name, p->name);
        } else {
            d->api_key = sy_xstrndup(p->api_key, p->api_key_len);
        }
    }
    return 0;
}

static bool find_deployment(struct build *b, int64_t id, uint32_t *idx)
{
    size_t lo = 0, hi = b->t->n_deployments;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b->dep_ids[mid] == id) {
            *idx = (uint32_t)mid;
            return true;
        }
        if (b->dep_ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static int read_models(struct build *b, json_t *doc, char **err)
{
    json_t *arr = get_array(doc, "models", err), *row;
    size_t i;
    if (!arr)
        return -EINVAL;
    struct sy_table *t = b->t;
    t->models = sy_xcalloc(json_array_size(arr) + 1, sizeof(*t->models));
    json_array_foreach(arr, i, row)
    {
        const char *name = get_str(row, "name");
        json_t *targets = json_object_get(row, "targets"), *tg;
        size_t j;
        if (!name || !json_is_array(targets))
            return cp__fail(err, -EINVAL, "config document: models[%zu] lacks a name", i);
        struct sy_model *m = &t->models[t->n_models];
        m->targets = sy_xcalloc(json_array_size(targets) + 1, sizeof(*m->targets));
        uint64_t sum = 0;
        json_array_foreach(targets, j, tg)
        {
            struct sy_target *st = &m->targets[m->n_targets];
            json_int_t w = json_integer_value(json_array_get(tg, 1));
            if (!find_deployment(b, json_integer_value(json_array_get(tg, 0)), &st->deployment))
                return cp__fail(err, -EINVAL, "model \"%s\": a target names no deployment", name);
            st->weight = w < 0 ? 0 : w > (json_int_t)UINT32_MAX ? UINT32_MAX : (uint32_t)w;
            sum += st->weight;
            m->n_targets++;
        }
        /* The table refuses such a model (and with it the whole table): leave it out instead,
         * since clients cannot be routed to it anyway. */
        if (m->n_targets == 0 || sum == 0 || sum > UINT32_MAX) {
            b->problems++;
            sy_log(SY_LOG_WARN, "compile", "model \"%s\": %s; left out of the table", name,
                   m->n_targets == 0 ? "it has no target"
                   : sum == 0        ? "the weights of its targets sum to 0"
                                     : "the weights of its targets sum to more than 2^32-1");
            SY_FREE(m->targets);
            m->n_targets = 0;
            continue;
        }
        m->name = sy_xstrdup(name);
        m->slot = get_u32(row, "slot");
        t->n_models++;
    }
    /* Policies last: their fallbacks and rule targets name other models and deployments. The
     * stored shape is the table's shape (controlplane/src/policy.h). */
    uint32_t mi = 0;
    json_array_foreach(arr, i, row)
    {
        if (mi >= t->n_models || !get_str(row, "name") ||
            strcmp(get_str(row, "name"), t->models[mi].name) != 0)
            continue; /* left out above */
        json_t *pol = json_object_get(row, "policy"), *fb = json_object_get(row, "fallbacks");
        if ((!json_is_object(pol) || json_object_size(pol) == 0) &&
            (!json_is_array(fb) || json_array_size(fb) == 0)) {
            /* No policy: left all zero, the table carries none and workers use the defaults
             * (and a 10,000-model config stays small and quick to compile). */
            mi++;
            continue;
        }
        char *pj = pol && json_is_object(pol) ? json_dumps(pol, JSON_COMPACT) : NULL;
        char *fj = fb && json_is_array(fb) ? json_dumps(fb, JSON_COMPACT) : NULL;
        int rc = cp_policy_apply(t, mi, pj, fj, err);
        free(pj);
        free(fj);
        if (rc < 0) {
            char *old = *err;
            *err = NULL;
            cp__fail(err, rc, "model \"%s\": %s", t->models[mi].name, old ? old : "bad policy");
            free(old);
            return rc;
        }
        mi++;
    }
    return 0;
}

/* A key's limits per public model, {"<model>": {"rpm", "tpm"}}, each this node's share. */
static void read_key_limits(struct build *b, struct sy_key *k, json_t *obj)
{
    const char *name;
    json_t *v;
    if (!json_is_object(obj) || json_object_size(obj) == 0)
        return;
    k->model_limits = sy_xcalloc(json_object_size(obj), sizeof(*k->model_limits));
    json_object_foreach(obj, name, v)
    {
        struct sy_key_limit *l = &k->model_limits[k->n_model_limits];
        l->rpm = share(b, get_u32(v, "rpm"));
        l->tpm = share(b, get_u32(v, "tpm"));
        if (!*name || (!l->rpm && !l->tpm))
            continue; /* the admin API refuses both; nothing to enforce */
        l->model = sy_xstrdup(name);
        k->n_model_limits++;
    }
    /* sy_table_decode() sorts them: the table is encoded and decoded before it is published */
}

static int read_keys(struct build *b, json_t *doc, char **err)
{
    json_t *arr = get_array(doc, "keys", err), *row;
    size_t i;
    if (!arr)
        return -EINVAL;
    struct sy_table *t = b->t;
    t->keys = sy_xcalloc(json_array_size(arr) + 1, sizeof(*t->keys));
    json_array_foreach(arr, i, row)
    {
        const char *hash = get_str(row, "hash");
        struct sy_key *k = &t->keys[t->n_keys];
        if (!hash || strlen(hash) != 2 * SY_KEY_HASH_LEN || !unhex(hash, strlen(hash), k->hash))
            return cp__fail(err, -EINVAL, "config document: keys[%zu] has no valid hash", i);
        t->n_keys++;
        k->id = (uint64_t)json_integer_value(json_object_get(row, "id"));
        k->name = dup_or_null(get_str(row, "name"));
        k->prefix = dup_or_null(get_str(row, "prefix"));
        k->agent = dup_or_null(get_str(row, "agent"));
        k->user = dup_or_null(get_str(row, "user"));
        k->tier = dup_or_null(get_str(row, "tier"));
        k->expires_ms = json_integer_value(json_object_get(row, "expires_ms"));
        k->slot = get_u32(row, "slot");
        k->rpm = share(b, get_u32(row, "rpm"));
        k->tpm = share(b, get_u32(row, "tpm"));
        read_key_limits(b, k, json_object_get(row, "model_limits"));
        json_t *models = json_object_get(row, "models"), *mv;
        size_t j;
        if (!json_is_array(models))
            continue; /* NULL: every model */
        k->models = sy_xcalloc(json_array_size(models) + 1, sizeof(*k->models));
        json_array_foreach(models, j, mv)
        {
            const char *s = json_string_value(mv);
            if (s && *s) /* an empty name could match nothing; the table refuses it */
                k->models[k->n_models++] = sy_xstrdup(s);
        }
    }
    return 0;
}

/* The enabled guardrails, read by the routing table's own strict reader (sy_guardrail_check_json,
 * as the admin API checked them). Attachments stay as written: a model or key a guardrail names
 * that does not exist (any more) matches no request. A row that does not read is left out and
 * logged, like any problem confined to one row. */
static void read_guardrails(struct build *b, json_t *doc)
{
    json_t *arr = json_object_get(doc, "guardrails"), *row;
    size_t i;
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return;
    struct sy_table *t = b->t;
    t->guardrails = sy_xcalloc(json_array_size(arr), sizeof(*t->guardrails));
    json_array_foreach(arr, i, row)
    {
        char *text = json_dumps(row, JSON_COMPACT), *err = NULL;
        if (text && sy_guardrail_check_json(text, strlen(text), &t->guardrails[t->n_guardrails],
                                            &err, NULL) == 0) {
            t->n_guardrails++;
        } else {
            sy_log(SY_LOG_ERROR, "compile", "guardrail \"%s\" left out: %s",
                   json_string_value(json_object_get(row, "name")), err ? err : "out of memory");
            b->problems++;
        }
        free(err);
        free(text);
    }
}

/* The enabled budgets, and on each key the budgets that cover it: its own (by id), its agent's
 * and its user's. A key covered by nothing has none, so the data plane's check costs nothing. */
static int read_budgets(struct build *b, json_t *doc, char **err)
{
    static const char *const periods[] = {"day", "week", "month"};
    static_assert(SY_ARRAY_LEN(periods) == SY_BUDGET_PERIOD_MAX, "one name per period");
    json_t *arr = json_object_get(doc, "budgets"), *row;
    size_t i;
    if (!arr) /* a document of an older statement */
        return 0;
    if (!json_is_array(arr))
        return cp__fail(err, -EINVAL, "config document: \"budgets\" is not an array");
    struct sy_table *t = b->t;
    size_t n = json_array_size(arr);
    t->budgets = sy_xcalloc(n + 1, sizeof(*t->budgets));
    const char **scope = sy_xcalloc(n + 1, sizeof(*scope));
    const char **subject = sy_xcalloc(n + 1, sizeof(*subject));
    json_array_foreach(arr, i, row)
    {
        struct sy_budget *bg = &t->budgets[t->n_budgets];
        json_int_t amount = json_integer_value(json_object_get(row, "amount_micros"));
        const char *period = get_str(row, "period");
        if (!get_str(row, "name") || amount <= 0 || !period)
            continue; /* the table's checks make this impossible; never publish it */
        bg->name = sy_xstrdup(get_str(row, "name"));
        bg->id = (uint64_t)json_integer_value(json_object_get(row, "id"));
        bg->slot = get_u32(row, "slot");
        bg->amount_micros = (uint64_t)amount;
        bg->soft_percent = get_u32(row, "soft_percent");
        for (int p = 0; p < SY_BUDGET_PERIOD_MAX; p++)
            if (strcmp(period, periods[p]) == 0)
                bg->period = (enum sy_budget_period)p;
        scope[t->n_budgets] = get_str(row, "scope");
        subject[t->n_budgets] = get_str(row, "subject");
        t->n_budgets++;
    }
    for (uint32_t k = 0; k < t->n_keys && t->n_budgets; k++) {
        struct sy_key *key = &t->keys[k];
        char id[24];
        snprintf(id, sizeof(id), "%" PRIu64, key->id);
        for (uint32_t j = 0; j < t->n_budgets; j++) {
            const char *want = !scope[j] || !subject[j]         ? NULL
                               : strcmp(scope[j], "key") == 0   ? id
                               : strcmp(scope[j], "agent") == 0 ? key->agent
                               : strcmp(scope[j], "user") == 0  ? key->user
                                                                : NULL;
            if (!want || strcmp(want, subject[j]) != 0)
                continue;
            if (!key->budgets)
                key->budgets = sy_xcalloc(t->n_budgets, sizeof(*key->budgets));
            key->budgets[key->n_budgets++] = j;
        }
    }
    free(scope);
    free(subject);
    (void)err;
    return 0;
}

/* Name the row behind a decoder message that starts with "deployments[N]" or "keys[N]". */
static void name_the_row(const struct sy_table *t, char **err)
{
    unsigned long idx;
    int used = 0;
    if (!*err)
        return;
    if (sscanf(*err, "deployments[%lu]%n", &idx, &used) == 1 && used && idx < t->n_deployments) {
        char *old = *err;
        *err = NULL;
        cp__fail(err, -EINVAL, "%s (deployment \"%s\")", old, t->deployments[idx].name);
        free(old);
    } else if (sscanf(*err, "models[%lu]%n", &idx, &used) == 1 && used && idx < t->n_models) {
        char *old = *err;
        *err = NULL;
        cp__fail(err, -EINVAL, "%s (model \"%s\")", old, t->models[idx].name);
        free(old);
    }
}

int cp__compile_document(const char *json, size_t len, const struct cp_crypto_ring *ring,
                         int64_t created_ms, struct cp_compiled *out, char **err)
{
    struct build b = {.ring = ring};
    struct sy_buf bytes = SY_BUF_INIT;
    json_error_t jerr;
    int rc = -EINVAL;
    memset(out, 0, sizeof(*out));

    json_t *doc = json_loadb(json, len, 0, &jerr);
    if (!json_is_object(doc)) {
        rc = cp__fail(err, -EINVAL, "config document: %s", doc ? "not an object" : jerr.text);
        goto fail;
    }
    json_t *version = json_object_get(doc, "version");
    if (!json_is_integer(version) || json_integer_value(version) < 0) {
        rc = cp__fail(err, -EINVAL, "config document: no config version");
        goto fail;
    }
    b.t = sy_xcalloc(1, sizeof(*b.t));
    atomic_init(&b.t->refs, 1);
    b.t->version = (uint64_t)json_integer_value(version);
    b.t->created_ms = created_ms;
    b.t->require_keys = true;
    json_t *nodes = json_object_get(doc, "nodes");
    b.t->nodes = json_is_integer(nodes) && json_integer_value(nodes) > 1 &&
                         json_integer_value(nodes) <= 65536
                     ? (uint32_t)json_integer_value(nodes)
                     : 1;
    if ((rc = read_providers(&b, doc, err)) < 0 || (rc = read_deployments(&b, doc, err)) < 0 ||
        (rc = read_models(&b, doc, err)) < 0 || (rc = read_keys(&b, doc, err)) < 0 ||
        (rc = read_budgets(&b, doc, err)) < 0)
        goto fail;
    read_guardrails(&b, doc);

    sy_table_encode(b.t, &bytes);
    /* The proof: the same decoder as the data plane's. */
    struct sy_table *check = NULL;
    if ((rc = sy_table_decode(bytes.data, bytes.len, &check, err)) < 0) {
        name_the_row(b.t, err);
        goto fail;
    }
    sy_table_unref(check);
    out->version = b.t->version;
    out->n_deployments = b.t->n_deployments;
    out->n_models = b.t->n_models;
    out->n_keys = b.t->n_keys;
    out->n_guardrails = b.t->n_guardrails;
    out->n_problems = b.problems;
    out->bytes = sy_buf_steal(&bytes, &out->len);
    rc = 0;

fail:
    if (bytes.data)
        explicit_bzero(bytes.data, bytes.len);
    sy_buf_free(&bytes);
    for (size_t i = 0; i < b.n_providers; i++)
        if (b.providers[i].api_key)
            cp_crypto_free_secret(b.providers[i].api_key, b.providers[i].api_key_len);
    free(b.providers);
    free(b.dep_ids);
    sy_table_unref(b.t); /* wipes the copies of the credentials */
    json_decref(doc);
    return rc;
}

void cp__compiled_free(struct cp_compiled *c)
{
    if (!c)
        return;
    if (c->bytes)
        cp_crypto_free_secret(c->bytes, c->len);
    memset(c, 0, sizeof(*c));
}

/* ---- running it ------------------------------------------------------------------------------ */

struct compile_job {
    uv_work_t work;
    struct cp_server *cp;
    cp_compile_cb cb;
    void *ud;
    char *json; /* the document, copied out of the result */
    size_t len;
    uint64_t t_queued;
    uint64_t query_ms;
    struct cp_compiled *res;
    char *err;
};

static void job_free(struct compile_job *job)
{
    if (job->res) {
        cp__compiled_free(job->res);
        free(job->res);
    }
    free(job->json);
    free(job->err);
    free(job);
}

static void work_cb(uv_work_t *w)
{
    struct compile_job *job = SY_CONTAINER_OF(w, struct compile_job, work);
    uint64_t t0 = sy_now_ms();
    struct cp_compiled *res = sy_xcalloc(1, sizeof(*res));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t created_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    if (cp__compile_document(job->json, job->len, &job->cp->ring, created_ms, res, &job->err) < 0) {
        free(res);
        if (!job->err)
            job->err = sy_xstrdup("out of memory");
        return;
    }
    res->build_ms = sy_now_ms() - t0;
    res->query_ms = job->query_ms;
    job->res = res;
}

static void after_work_cb(uv_work_t *w, int status)
{
    struct compile_job *job = SY_CONTAINER_OF(w, struct compile_job, work);
    if (status == UV_ECANCELED) {
        job->cb(job->ud, NULL, "the compile was cancelled");
    } else if (job->res) {
        struct cp_compiled *res = job->res;
        job->res = NULL;
        job->cb(job->ud, res, NULL);
    } else {
        job->cb(job->ud, NULL, job->err);
    }
    job_free(job);
}

static void on_config(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct compile_job *job = ud;
    if (err || PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        job->cb(job->ud, NULL, err ? err : "the config query returned no document");
        job_free(job);
        return;
    }
    job->query_ms = sy_now_ms() - job->t_queued;
    job->len = (size_t)PQgetlength(res, 0, 0);
    job->json = sy_xmalloc(job->len + 1);
    memcpy(job->json, PQgetvalue(res, 0, 0), job->len + 1);
    if (uv_queue_work(&job->cp->loop, &job->work, work_cb, after_work_cb) == 0)
        return;
    /* No thread pool (never expected): build here, on the loop. */
    work_cb(&job->work);
    after_work_cb(&job->work, 0);
}

int cp__compile_run(struct cp_server *cp, cp_compile_cb cb, void *ud)
{
    struct compile_job *job = calloc(1, sizeof(*job));
    if (!job)
        return -ENOMEM;
    job->cp = cp;
    job->cb = cb;
    job->ud = ud;
    job->t_queued = sy_now_ms();
    int rc = cp_db_exec(cp->db, cp__compile_sql, on_config, job);
    if (rc < 0)
        free(job);
    return rc;
}
