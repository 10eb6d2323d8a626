/* SPDX-License-Identifier: Apache-2.0 */
/** Prometheus metrics (see metrics.h): the segment attach loop, the slot names from the
 * published table, and the exposition.
 *
 * Families, all prefixed `switchyard_`:
 *   public models   {model}                          requests_total{outcome}, retries_total,
 *                   fallbacks_total, rate_limit_rejections_total, prompt_tokens_total,
 *                   completion_tokens_total, cost_total, request_duration_seconds,
 *                   time_to_first_byte_seconds
 *   deployments     {deployment, provider, model}    the same with a `deployment_` prefix
 *                   (attempts, retries included), plus deployment_in_flight;
 *                   circuit_state and circuit_opens_total {deployment}
 *   client keys     {key, key_prefix, agent, user}   key_requests_total{outcome},
 *                   key_prompt_tokens_total, key_completion_tokens_total, key_cost_total
 *   node            decision_log_dropped_total, dataplane_workers, shm_attached
 *   control plane   config_version, connected_workers, publish_latency_seconds,
 *                   database_up, controlplane_start_time_seconds
 *
 * Deployment, model and key families are separate names, not one name told apart by labels:
 * `sum(switchyard_requests_total{model="x"})` is then what clients asked for "x", never
 * mixed with the attempts of an upstream model that happens to have the same id.
 *
 * A key is named by its id and its display prefix ("sk-sy-AbCd"), never by anything that
 * could be used as the key. */

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>

#include <uv.h>

#include "alerts.h"
#include "budget.h"
#include "crypto.h"
#include "internal.h"
#include "metrics.h"
#include "server.h"
#include "sy/hist.h"
#include "sy/log.h"
#include "sy/shm.h"
#include "sy/table.h"
#include "sy/util.h"

#define ATTACH_PERIOD_MS 1000
/* A worker that has written heartbeats and then none for this long is not counted alive. */
#define WORKER_STALE_MS 15000

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Label sets of the objects of the current table, written out and escaped once per version. */
struct labelled {
    uint32_t slot;
    char *labels;       /* `deployment="a",provider="b",model="c"` */
    char *short_labels; /* deployments: `deployment="a"` for the circuit families */
};

struct names {
    uint64_t version; /* of the table they come from; 0: none yet */
    struct labelled *deps, *models, *keys;
    uint32_t n_deps, n_models, n_keys;
};

struct cp_metrics {
    struct cp_server *cp;
    char *shm_path;
    char *token;
    uv_timer_t timer;
    bool stopping;

    /* the segment */
    struct sy_shm *shm;
    dev_t shm_dev;
    ino_t shm_ino;
    uint64_t shm_generation;
    int last_attach_rc; /* the last failure logged, to log each new reason once */

    struct names names;
};

/* One module per process: the control plane serves one admin listener. (server.h's struct
 * cp_server could hold the pointer; it is kept here so the module stays in its own files.) */
static struct cp_metrics *the_metrics;

/* ==============================================================================================
 * Slot names from the published table
 * ============================================================================================ */

static void names_free(struct names *n)
{
    struct labelled *lists[] = {n->deps, n->models, n->keys};
    uint32_t counts[] = {n->n_deps, n->n_models, n->n_keys};
    for (size_t l = 0; l < SY_ARRAY_LEN(lists); l++) {
        for (uint32_t i = 0; i < counts[l]; i++) {
            free(lists[l][i].labels);
            free(lists[l][i].short_labels);
        }
        free(lists[l]);
    }
    memset(n, 0, sizeof(*n));
}

/* A label value, escaped as the text format wants: backslash, double quote and line feed. */
static void put_label_value(struct sy_buf *b, const char *s)
{
    const char *run = s;
    for (; *s; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
        if (!esc)
            continue;
        sy_buf_append(b, run, (size_t)(s - run));
        sy_buf_puts(b, esc);
        run = s + 1;
    }
    sy_buf_append(b, run, (size_t)(s - run));
}

/* Append `name="value"` (with a leading comma unless <first>). <value> NULL is "". */
static void put_label(struct sy_buf *b, bool first, const char *name, const char *value)
{
    if (!first)
        sy_buf_puts(b, ",");
    sy_buf_puts(b, name);
    sy_buf_puts(b, "=\"");
    put_label_value(b, value ? value : "");
    sy_buf_puts(b, "\"");
}

static char *buf_string(struct sy_buf *b)
{
    sy_buf_append(b, "", 1);
    return sy_buf_steal(b, NULL);
}

/* Build <out> from table <t> (borrowed). */
static void names_build(struct names *out, const struct sy_table *t)
{
    struct sy_buf b = SY_BUF_INIT;
    out->version = t->version;
    out->deps = sy_xcalloc(t->n_deployments ? t->n_deployments : 1, sizeof(*out->deps));
    for (uint32_t i = 0; i < t->n_deployments; i++) {
        const struct sy_deployment *d = &t->deployments[i];
        struct labelled *l = &out->deps[out->n_deps++];
        l->slot = d->slot;
        put_label(&b, true, "deployment", d->name);
        l->short_labels = buf_string(&b);
        put_label(&b, true, "deployment", d->name);
        put_label(&b, false, "provider", d->provider);
        put_label(&b, false, "model", d->model);
        l->labels = buf_string(&b);
    }
    out->models = sy_xcalloc(t->n_models ? t->n_models : 1, sizeof(*out->models));
    for (uint32_t i = 0; i < t->n_models; i++) {
        struct labelled *l = &out->models[out->n_models++];
        l->slot = t->models[i].slot;
        put_label(&b, true, "model", t->models[i].name);
        l->labels = buf_string(&b);
    }
    out->keys = sy_xcalloc(t->n_keys ? t->n_keys : 1, sizeof(*out->keys));
    for (uint32_t i = 0; i < t->n_keys; i++) {
        const struct sy_key *k = &t->keys[i];
        struct labelled *l = &out->keys[out->n_keys++];
        char id[24];
        snprintf(id, sizeof(id), "%" PRIu64, k->id);
        l->slot = k->slot;
        put_label(&b, true, "key", id);
        put_label(&b, false, "key_prefix", k->prefix);
        put_label(&b, false, "agent", k->agent);
        put_label(&b, false, "user", k->user);
        l->labels = buf_string(&b);
    }
    sy_buf_free(&b);
}

/* Bring the names up to the published version. The table is decoded only to read names and
 * slots, then freed at once (sy_table_unref wipes its credentials). On a table that does not
 * decode (it did when it was compiled, so this is a bug) the old names stay. */
static void names_refresh(struct cp_metrics *m, const struct cp_publish_view *v)
{
    if (!v->table || v->version == m->names.version)
        return;
    struct sy_table *t = NULL;
    char *err = NULL;
    if (sy_table_decode(v->table, v->table_len, &t, &err) < 0) {
        sy_log(SY_LOG_ERROR, "metrics", "cannot read names from table version %" PRIu64 ": %s",
               v->version, err ? err : "out of memory");
        free(err);
        return;
    }
    names_free(&m->names);
    names_build(&m->names, t);
    sy_table_unref(t);
}

/* ==============================================================================================
 * The segment
 * ============================================================================================ */

static void shm_drop(struct cp_metrics *m)
{
    sy_shm_detach(m->shm);
    m->shm = NULL;
}

/* Attach when the segment appears, and again when the file at the path is another segment (a
 * restarted data plane builds a new file and renames it over the old one, which we still map
 * and keep until then: its counters are the last word of the data plane that wrote them). */
static void shm_check(struct cp_metrics *m)
{
    if (!m->shm_path)
        return;
    struct stat st;
    if (stat(m->shm_path, &st) == -1) {
        if (!m->shm && m->last_attach_rc != -errno) {
            m->last_attach_rc = -errno;
            sy_log(SY_LOG_INFO, "metrics", "shared memory %s: %s; retrying every second",
                   m->shm_path, strerror(errno));
        }
        return;
    }
    if (m->shm && st.st_dev == m->shm_dev && st.st_ino == m->shm_ino &&
        m->shm->hdr->generation == m->shm_generation)
        return;
    struct sy_shm *shm = NULL;
    char *err = NULL;
    int rc = sy_shm_attach(m->shm_path, false, &shm, &err);
    if (rc < 0) {
        /* A data plane half-way through creating it, or one of another release: say it once
         * per reason, keep what we have, try again next second. */
        if (rc != m->last_attach_rc)
            sy_log(rc == -ENOENT ? SY_LOG_INFO : SY_LOG_WARN, "metrics",
                   "%s; retrying every second", err ? err : "cannot attach the shared memory");
        m->last_attach_rc = rc;
        free(err);
        return;
    }
    shm_drop(m);
    m->shm = shm;
    m->shm_dev = st.st_dev;
    m->shm_ino = st.st_ino;
    m->shm_generation = shm->hdr->generation;
    m->last_attach_rc = 0;
    sy_log(SY_LOG_INFO, "metrics",
           "shared memory %s attached read-only (generation %" PRIu64 ", %zu bytes)", m->shm_path,
           m->shm_generation, shm->size);
}

static void on_timer(uv_timer_t *t)
{
    shm_check(t->data);
}

/* ==============================================================================================
 * Exposition
 * ============================================================================================ */

static void family(struct sy_buf *b, const char *name, const char *type, const char *help)
{
    sy_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* `name{labels} ` (no braces for empty labels); the caller writes the value and newline. */
static void sample_head(struct sy_buf *b, const char *name, const char *labels, const char *extra)
{
    sy_buf_puts(b, name);
    if (labels[0] || (extra && extra[0])) {
        sy_buf_puts(b, "{");
        sy_buf_puts(b, labels);
        if (extra && extra[0]) {
            if (labels[0])
                sy_buf_puts(b, ",");
            sy_buf_puts(b, extra);
        }
        sy_buf_puts(b, "}");
    }
    sy_buf_puts(b, " ");
}

static void put_u64(struct sy_buf *b, uint64_t v)
{
    sy_buf_printf(b, "%" PRIu64 "\n", v);
}

/* <v> millionths as an exact decimal: 1234567 -> "1.234567". */
static void put_micros(struct sy_buf *b, uint64_t v)
{
    sy_buf_printf(b, "%" PRIu64 ".%06" PRIu64 "\n", v / 1000000, v % 1000000);
}

/* What one kind of object exports, and under which names. */
struct kind_spec {
    enum sy_shm_kind kind;
    const char *prefix; /* "switchyard_", "switchyard_deployment_", "switchyard_key_" */
    const char *requests_help;
    const enum sy_ctr *ctrs; /* scalar counters exported */
    size_t n_ctrs;
    bool hists;
};

static const enum sy_ctr model_ctrs[] = {
    SY_CTR_RETRIES,       SY_CTR_FALLBACKS,         SY_CTR_RATE_LIMITED,
    SY_CTR_PROMPT_TOKENS, SY_CTR_COMPLETION_TOKENS, SY_CTR_COST_MICROS,
};
static const enum sy_ctr usage_ctrs[] = {
    SY_CTR_PROMPT_TOKENS,
    SY_CTR_COMPLETION_TOKENS,
    SY_CTR_COST_MICROS,
};

static const struct kind_spec kind_specs[] = {
    {SY_SHM_MODEL, "switchyard_",
     "Requests by public model and outcome: what the client got, after retries and fallbacks",
     model_ctrs, SY_ARRAY_LEN(model_ctrs), true},
    {SY_SHM_DEPLOYMENT, "switchyard_deployment_",
     "Requests sent to a deployment (every attempt, retries included) by outcome", usage_ctrs,
     SY_ARRAY_LEN(usage_ctrs), true},
    {SY_SHM_KEY, "switchyard_key_", "Requests by client key and outcome", usage_ctrs,
     SY_ARRAY_LEN(usage_ctrs), false},
};

static const struct {
    enum sy_shm_hist_kind which;
    const char *suffix;
    const char *help;
} hist_specs[] = {
    {SY_HIST_LATENCY, "request_duration_seconds", "Time from request start to its last byte"},
    {SY_HIST_TTFB, "time_to_first_byte_seconds",
     "Time from request start to the first byte of the answer (first token of a stream)"},
};

static void render_histogram(struct sy_buf *b, const char *name, const char *labels,
                             const uint64_t *buckets, uint64_t sum_us)
{
    char bucket_name[112], le[48];
    snprintf(bucket_name, sizeof(bucket_name), "%s_bucket", name);
    uint64_t cum = 0;
    for (unsigned i = 0; i < SY_HIST_BUCKETS; i++) {
        char v[32];
        cum += buckets[i];
        sy_hist_le(i, v, sizeof(v));
        snprintf(le, sizeof(le), "le=\"%s\"", v);
        sample_head(b, bucket_name, labels, le);
        put_u64(b, cum);
    }
    char sub[112];
    snprintf(sub, sizeof(sub), "%s_sum", name);
    sample_head(b, sub, labels, NULL);
    put_micros(b, sum_us);
    snprintf(sub, sizeof(sub), "%s_count", name);
    sample_head(b, sub, labels, NULL);
    put_u64(b, cum);
}

/* Every family of one kind of object, for the objects <objs> of the table whose counters the
 * segment has. */
static void render_kind(struct sy_buf *b, const struct sy_shm *shm, const struct kind_spec *k,
                        const struct labelled *objs, uint32_t n)
{
    struct sy_shm_totals *tot = sy_xcalloc(n ? n : 1, sizeof(*tot));
    bool *have = sy_xcalloc(n ? n : 1, sizeof(*have));
    for (uint32_t i = 0; i < n; i++)
        have[i] = sy_shm_read(shm, k->kind, objs[i].slot, &tot[i]) == 0;
    char name[96];

    snprintf(name, sizeof(name), "%srequests_total", k->prefix);
    family(b, name, "counter", k->requests_help);
    for (uint32_t i = 0; i < n; i++) {
        if (!have[i])
            continue;
        for (unsigned o = 0; o < SY_OUTCOME_MAX; o++) {
            char outcome[48];
            snprintf(outcome, sizeof(outcome), "outcome=\"%s\"", sy_outcome_label(o));
            sample_head(b, name, objs[i].labels, outcome);
            put_u64(b, tot[i].requests[o]);
        }
    }

    for (size_t c = 0; c < k->n_ctrs; c++) {
        enum sy_ctr ctr = k->ctrs[c];
        bool cost = ctr == SY_CTR_COST_MICROS;
        snprintf(name, sizeof(name), "%s%s", k->prefix, cost ? "cost_total" : sy_ctr_metric(ctr));
        family(b, name, "counter",
               cost ? "Cost from the deployments' prices and the usage providers reported, in "
                      "currency units"
                    : sy_ctr_help(ctr));
        for (uint32_t i = 0; i < n; i++) {
            if (!have[i])
                continue;
            sample_head(b, name, objs[i].labels, NULL);
            if (cost)
                put_micros(b, tot[i].ctr[ctr]);
            else
                put_u64(b, tot[i].ctr[ctr]);
        }
    }

    for (size_t h = 0; k->hists && h < SY_ARRAY_LEN(hist_specs); h++) {
        snprintf(name, sizeof(name), "%s%s", k->prefix, hist_specs[h].suffix);
        family(b, name, "histogram", hist_specs[h].help);
        for (uint32_t i = 0; i < n; i++)
            if (have[i])
                render_histogram(b, name, objs[i].labels, tot[i].hist[hist_specs[h].which],
                                 tot[i].hist_sum_us[hist_specs[h].which]);
    }

    if (k->kind == SY_SHM_DEPLOYMENT) {
        family(b, "switchyard_deployment_in_flight", "gauge",
               "Requests in flight on the deployment, all workers of the node");
        for (uint32_t i = 0; i < n; i++) {
            const struct sy_shm_dep_state *st = sy_shm_dep_peek(shm, objs[i].slot);
            if (!have[i] || !st)
                continue;
            sample_head(b, "switchyard_deployment_in_flight", objs[i].labels, NULL);
            /* a gauge that a dying worker's reap may briefly take below zero */
            int64_t v = (int64_t)atomic_load_explicit(&st->in_flight, memory_order_relaxed);
            sy_buf_printf(b, "%" PRId64 "\n", v < 0 ? 0 : v);
        }
        family(b, "switchyard_circuit_state", "gauge",
               "Circuit breaker of the deployment: 0 closed, 1 open, 2 half-open");
        for (uint32_t i = 0; i < n; i++) {
            const struct sy_shm_dep_state *st = sy_shm_dep_peek(shm, objs[i].slot);
            if (!have[i] || !st)
                continue;
            uint64_t w = atomic_load_explicit(&st->circuit.word, memory_order_relaxed);
            sample_head(b, "switchyard_circuit_state", objs[i].short_labels, NULL);
            put_u64(b, (uint64_t)sy_circuit_word_state(w));
        }
        family(b, "switchyard_circuit_opens_total", "counter", sy_ctr_help(SY_CTR_CIRCUIT_OPENS));
        for (uint32_t i = 0; i < n; i++) {
            if (!have[i])
                continue;
            sample_head(b, "switchyard_circuit_opens_total", objs[i].short_labels, NULL);
            put_u64(b, tot[i].ctr[SY_CTR_CIRCUIT_OPENS]);
        }
    }
    free(have);
    free(tot);
}

/* A worker is alive when its slot holds a pid and: if it writes heartbeats, the last one is
 * recent; if it has never written one (its heartbeat is its start), the kernel knows the pid. */
static bool worker_alive(const struct sy_shm_worker *w, uint64_t now_ms)
{
    int32_t pid = atomic_load_explicit(&w->pid, memory_order_acquire);
    if (pid <= 0)
        return false;
    uint64_t hb = atomic_load_explicit(&w->heartbeat_ms, memory_order_relaxed);
    uint64_t started = atomic_load_explicit(&w->started_ms, memory_order_relaxed);
    if (hb > started)
        return hb >= now_ms || now_ms - hb <= WORKER_STALE_MS;
    return kill(pid, 0) == 0 || errno == EPERM;
}

static void render_node(struct sy_buf *b, const struct sy_shm *shm)
{
    family(b, "switchyard_decision_log_dropped_total", "counter",
           "Decision-log events dropped because the ring was full");
    sample_head(b, "switchyard_decision_log_dropped_total", "", NULL);
    put_u64(b, sy_shm_event_dropped(shm));
    uint64_t now = sy_now_ms();
    uint64_t alive = 0;
    for (uint32_t i = 0; i < shm->caps.max_workers; i++)
        alive += worker_alive(&shm->workers[i], now);
    family(b, "switchyard_dataplane_workers", "gauge",
           "Data-plane worker processes alive on the node");
    sample_head(b, "switchyard_dataplane_workers", "", NULL);
    put_u64(b, alive);
}

/* The fleet's alerts as of this control plane's last evaluation (counts read from PostgreSQL
 * after each one), and this control plane's own sends. */
static void render_alerts(struct sy_buf *b, struct cp_server *cp)
{
    struct cp_alerts_stats st;
    cp__alerts_stats(cp, &st);
    family(b, "switchyard_alerts_firing", "gauge", "Alerts firing (rule x subject), fleet-wide");
    if (st.firing >= 0) {
        sample_head(b, "switchyard_alerts_firing", "", NULL);
        put_u64(b, (uint64_t)st.firing);
    }
    family(b, "switchyard_alert_deliveries_pending", "gauge",
           "Alert notifications waiting to be delivered or retried, fleet-wide");
    if (st.deliveries_pending >= 0) {
        sample_head(b, "switchyard_alert_deliveries_pending", "", NULL);
        put_u64(b, (uint64_t)st.deliveries_pending);
    }
    family(b, "switchyard_alert_deliveries_failed", "gauge",
           "Alert notifications given up after the last attempt, fleet-wide (kept in the outbox)");
    if (st.deliveries_failed >= 0) {
        sample_head(b, "switchyard_alert_deliveries_failed", "", NULL);
        put_u64(b, (uint64_t)st.deliveries_failed);
    }
    family(b, "switchyard_alert_evaluations_total", "counter",
           "Alert evaluations this control plane ran (it held the evaluation lock)");
    sample_head(b, "switchyard_alert_evaluations_total", "", NULL);
    put_u64(b, st.evaluations);
    family(b, "switchyard_alert_webhooks_sent_total", "counter",
           "Webhook deliveries this control plane sent successfully");
    sample_head(b, "switchyard_alert_webhooks_sent_total", "", NULL);
    put_u64(b, st.sent);
    family(b, "switchyard_alert_webhook_failures_total", "counter",
           "Webhook attempts of this control plane that failed");
    sample_head(b, "switchyard_alert_webhook_failures_total", "", NULL);
    put_u64(b, st.send_failures);
}

void cp__metrics_render(struct cp_metrics *m, struct sy_buf *b)
{
    struct cp_server *cp = m->cp;
    struct cp_publish_view v;
    cp__publisher_view(cp, &v);
    names_refresh(m, &v);

    family(b, "switchyard_controlplane_start_time_seconds", "gauge",
           "Start time of the control plane since the Unix epoch");
    sample_head(b, "switchyard_controlplane_start_time_seconds", "", NULL);
    sy_buf_printf(b, "%" PRId64 ".%03" PRId64 "\n", cp->started_ms / 1000, cp->started_ms % 1000);
    family(b, "switchyard_config_version", "gauge",
           "Config version of the routing table published (0: none yet)");
    sample_head(b, "switchyard_config_version", "", NULL);
    put_u64(b, v.version);
    family(b, "switchyard_connected_workers", "gauge",
           "Data-plane workers connected to this control plane's socket");
    sample_head(b, "switchyard_connected_workers", "", NULL);
    put_u64(b, v.workers);
    family(b, "switchyard_publish_latency_seconds", "gauge",
           "From the last config change to every connected worker serving it");
    if (v.publish_ms >= 0) {
        sample_head(b, "switchyard_publish_latency_seconds", "", NULL);
        put_micros(b, (uint64_t)v.publish_ms * 1000);
    }
    family(b, "switchyard_database_up", "gauge", "1 when the control plane reaches PostgreSQL");
    sample_head(b, "switchyard_database_up", "", NULL);
    put_u64(b, cp->db && cp_db_is_up(cp->db));
    family(b, "switchyard_shm_attached", "gauge",
           "1 when the control plane maps the node's shared memory (the data plane's counters)");
    sample_head(b, "switchyard_shm_attached", "", NULL);
    put_u64(b, m->shm != NULL);
    render_alerts(b, cp);
    cp__budget_metrics(cp, b);

    if (!m->shm)
        return;
    render_node(b, m->shm);
    const struct names *n = &m->names;
    const struct labelled *objs[] = {n->models, n->deps, n->keys};
    const uint32_t counts[] = {n->n_models, n->n_deps, n->n_keys};
    for (size_t i = 0; i < SY_ARRAY_LEN(kind_specs); i++)
        render_kind(b, m->shm, &kind_specs[i], objs[i], counts[i]);
}

/* ==============================================================================================
 * The endpoint
 * ============================================================================================ */

static bool token_ok(const struct cp_metrics *m, struct sy_http_request *req)
{
    size_t len;
    const char *h = sy_http_req_header(req, "authorization", &len);
    if (!h || len < 8 || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    /* compare digests: constant time whatever the lengths */
    unsigned char given[CP_CRYPTO_HASH_LEN], want[CP_CRYPTO_HASH_LEN];
    cp_crypto_sha256(h + 7, len - 7, given);
    cp_crypto_sha256(m->token, strlen(m->token), want);
    return cp_crypto_equal(given, want, sizeof(want));
}

void cp__metrics_request(struct sy_http_request *req)
{
    struct cp_metrics *m = the_metrics;
    if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
        static const char body[] = "{\"error\":{\"message\":\"/metrics answers GET and HEAD\","
                                   "\"type\":\"invalid_request_error\",\"param\":null,"
                                   "\"code\":\"method_not_allowed\"}}\n";
        sy_http_resp_send(req, 405, "application/json", "Allow: GET, HEAD\r\n", body,
                          sizeof(body) - 1);
        return;
    }
    if (!m || m->stopping) {
        sy_http_resp_error(req, 503, "service_unavailable", "stopping", NULL,
                           "The control plane is stopping.");
        return;
    }
    if (m->token && !token_ok(m, req)) {
        static const char body[] =
            "{\"error\":{\"message\":\"A valid metrics token is required: Authorization: "
            "Bearer <token>.\",\"type\":\"authentication_error\",\"param\":null,"
            "\"code\":\"invalid_metrics_token\"}}\n";
        sy_http_resp_send(req, 401, "application/json",
                          "WWW-Authenticate: Bearer realm=\"switchyard-metrics\"\r\n", body,
                          sizeof(body) - 1);
        return;
    }
    shm_check(m); /* a scrape right after the data plane started need not wait for the timer */
    struct sy_buf b = SY_BUF_INIT;
    cp__metrics_render(m, &b);
    sy_http_resp_send(req, 200, CONTENT_TYPE, "Cache-Control: no-store\r\n", b.data ? b.data : "",
                      b.len);
    sy_buf_free(&b);
}

/* ==============================================================================================
 * Life cycle
 * ============================================================================================ */

void cp__metrics_config_free(struct cp_metrics_config *c)
{
    SY_FREE(c->shm_path);
    if (c->token)
        cp_crypto_free_secret(c->token, strlen(c->token));
    c->token = NULL;
}

int cp__metrics_start(struct cp_server *cp, struct cp_metrics_config *cfg, char **err)
{
    struct cp_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return cp__fail(err, -ENOMEM, "out of memory");
    m->cp = cp;
    m->shm_path = cfg->shm_path;
    m->token = cfg->token;
    memset(cfg, 0, sizeof(*cfg));
    uv_timer_init(&cp->loop, &m->timer);
    m->timer.data = m;
    the_metrics = m;
    if (m->shm_path) {
        shm_check(m);
        uv_timer_start(&m->timer, on_timer, ATTACH_PERIOD_MS, ATTACH_PERIOD_MS);
        sy_log(SY_LOG_INFO, "metrics", "GET /metrics%s, counters from %s",
               m->token ? " (token required)" : "", m->shm_path);
    } else {
        sy_log(SY_LOG_INFO, "metrics",
               "GET /metrics%s: control-plane metrics only (no --shm / SWITCHYARD_SHM)",
               m->token ? " (token required)" : "");
    }
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct cp_metrics *m = h->data;
    shm_drop(m);
    names_free(&m->names);
    free(m->shm_path);
    if (m->token)
        cp_crypto_free_secret(m->token, strlen(m->token));
    free(m);
}

void cp__metrics_stop(struct cp_server *cp)
{
    struct cp_metrics *m = the_metrics;
    if (!m || m->cp != cp || m->stopping)
        return;
    m->stopping = true;
    the_metrics = NULL;
    uv_close((uv_handle_t *)&m->timer, on_timer_closed);
}
