/* SPDX-License-Identifier: Apache-2.0 */
/** The governance state a worker shares with the others of its node (shared memory, see
 * sy/shm.h): circuit breakers, rate limiters, in-flight counts and latencies of deployments,
 * the counters, the decision log; and the worker's own retry budget. proxy.c asks and reports
 * through the dp__gov_* functions of worker.h, so it never touches the segment itself. */

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "circuit.h"
#include "govern.h"
#include "ratelimit.h"
#include "sy/log.h"
#include "sy/shm.h"
#include "sy/table.h"
#include "sy/util.h"
#include "worker.h"

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void circuit_settings(const struct sy_policy *pol, struct dp_circuit_settings *s)
{
    dp_circuit_settings_default(s);
    if (!pol || !pol->circuit.window_ms)
        return;
    s->window_ms = pol->circuit.window_ms;
    s->min_volume = pol->circuit.min_requests;
    s->error_rate_pct = pol->circuit.error_percent;
    s->consecutive_failures = pol->circuit.consecutive;
    s->cooldown_ms = pol->circuit.cooldown_ms;
    s->half_open_probes = pol->circuit.half_open_probes ? pol->circuit.half_open_probes : 1;
}

static struct sy_shm_dep_state *dep_state(struct dp_worker *w, const struct sy_deployment *d)
{
    return w->shm ? sy_shm_dep(w->shm, d->slot) : NULL;
}

/* ---- the retry budget: retries stay under a share of the requests of the last ~10 s ------- */

static void budget_decay(struct dp_worker *w)
{
    uint64_t now = sy_now_ms();
    while (now - w->budget.at_ms >= 5000) {
        w->budget.requests /= 2;
        w->budget.retries /= 2;
        w->budget.at_ms += 5000;
        if (now - w->budget.at_ms > 60000)
            w->budget.at_ms = now;
    }
}

void dp__gov_request(struct dp_worker *w, const struct sy_policy *pol)
{
    budget_decay(w);
    w->budget.requests += 1;
}

bool dp__gov_retry_allowed(struct dp_worker *w, const struct sy_policy *pol)
{
    budget_decay(w);
    /* A floor of a few retries, so a quiet gateway can still retry its rare failures. */
    double allowed = w->budget.requests * pol->retry.budget_percent / 100.0 + 3;
    if (w->budget.retries + 1 > allowed)
        return false;
    w->budget.retries += 1;
    return true;
}

/* ---- client keys ---------------------------------------------------------------------------- */

/* Take one request and <tokens> from an rpm/tpm pair of limiters (either limit may be 0: none);
 * all or nothing. */
static bool take_pair(_Atomic uint64_t *rpm_word, uint32_t rpm, _Atomic uint64_t *tpm_word,
                      uint32_t tpm, uint32_t tokens, uint64_t now_us, uint32_t *retry_after_ms,
                      bool *tokens_refused)
{
    if (rpm && dp_rate_take(rpm_word, now_us, rpm, 0, 1, retry_after_ms) != 0)
        return false;
    if (tpm && tokens && dp_rate_take(tpm_word, now_us, tpm, 0, tokens, retry_after_ms) != 0) {
        if (rpm)
            dp_rate_refund(rpm_word, rpm, 1);
        *tokens_refused = true;
        return false;
    }
    return true;
}

bool dp__gov_key_admits(struct dp_worker *w, const struct sy_key *k, const struct sy_model *m,
                        uint32_t est_tokens, struct dp_key_grant *grant, uint32_t *retry_after_ms,
                        const char **which)
{
    *retry_after_ms = 0;
    *grant = (struct dp_key_grant){0};
    if (!w->shm || !k)
        return true;
    const struct sy_key_limit *lim = k->n_model_limits && m ? sy_key_model_limit(k, m->name) : NULL;
    struct sy_shm_key_state *st = k->rpm || k->tpm ? sy_shm_key(w->shm, k->slot) : NULL;
    struct sy_shm_key_model *km =
        lim && (lim->rpm || lim->tpm) ? sy_shm_key_model(w->shm, k->slot, m->slot) : NULL;
    uint64_t now_us = sy_now_ns() / 1000;
    bool tokens = false;
    uint32_t key_tokens = k->tpm ? SY_MIN(est_tokens, k->tpm) : 0;
    if (st && !take_pair(&st->rpm, k->rpm, &st->tpm, k->tpm, key_tokens, now_us, retry_after_ms,
                         &tokens)) {
        *which = tokens ? "tokens per minute" : "requests per minute";
        goto refused;
    }
    if (km) {
        uint32_t model_tokens = lim->tpm ? SY_MIN(est_tokens, lim->tpm) : 0;
        if (!take_pair(&km->rpm, lim->rpm, &km->tpm, lim->tpm, model_tokens, now_us, retry_after_ms,
                       &tokens)) {
            if (st && k->rpm) /* all or nothing: give back what the key's own limits gave */
                dp_rate_refund(&st->rpm, k->rpm, 1);
            if (st && key_tokens)
                dp_rate_refund(&st->tpm, k->tpm, key_tokens);
            *which =
                tokens ? "tokens per minute on this model" : "requests per minute on this model";
            goto refused;
        }
        grant->limit = lim;
        grant->model_slot = m->slot;
        grant->model_tpm = model_tokens;
    }
    grant->tpm = st ? key_tokens : 0;
    return true;
refused:
    sy_shm_outcome(sy_shm_counters(w->shm, w->index, SY_SHM_KEY, k->slot), SY_OUTCOME_RATE_LIMITED);
    return false;
}

/* ---- admission -------------------------------------------------------------------------- */

enum dp_gov_refusal dp__gov_admits(struct dp_worker *w, const struct sy_table *t,
                                   const struct sy_deployment *d, const struct sy_model *m,
                                   uint32_t est_tokens, bool *near_limit, uint32_t *retry_after)
{
    *near_limit = false;
    struct sy_shm_dep_state *st = dep_state(w, d);
    if (!st)
        return DP_GOV_ADMITTED;
    uint64_t now = sy_now_ms();
    struct dp_circuit_settings cs;
    circuit_settings(m ? &m->policy : NULL, &cs);
    if (!dp_circuit_available(&st->circuit, now, &cs))
        return DP_GOV_CIRCUIT_OPEN;
    uint32_t shed = m && m->policy.shed_percent ? m->policy.shed_percent : 80;
    uint64_t now_us = sy_now_ns() / 1000;
    if (d->limits.rpm) {
        double used = dp_rate_usage(&st->rpm, now_us, d->limits.rpm, 0);
        if (used >= 1.0) {
            *retry_after = 60000 / d->limits.rpm;
            return DP_GOV_RATE_LIMITED;
        }
        *near_limit |= used * 100 >= shed;
    }
    if (d->limits.tpm) {
        double used = dp_rate_usage(&st->tpm, now_us, d->limits.tpm, 0);
        if (used >= 1.0) {
            *retry_after = 1000;
            return DP_GOV_RATE_LIMITED;
        }
        *near_limit |= used * 100 >= shed;
    }
    if (d->limits.max_concurrency &&
        atomic_load_explicit(&st->in_flight, memory_order_relaxed) >= d->limits.max_concurrency) {
        *retry_after = 1000;
        return DP_GOV_RATE_LIMITED;
    }
    (void)est_tokens;
    return DP_GOV_ADMITTED;
}

uint64_t dp__gov_inflight(struct dp_worker *w, const struct sy_deployment *d)
{
    struct sy_shm_dep_state *st = dep_state(w, d);
    return st ? atomic_load_explicit(&st->in_flight, memory_order_relaxed) : 0;
}

uint64_t dp__gov_ttfb_us(struct dp_worker *w, const struct sy_deployment *d)
{
    struct sy_shm_dep_state *st = dep_state(w, d);
    return st ? atomic_load_explicit(&st->ttfb_ewma_us, memory_order_relaxed) : 0;
}

/* ---- attempts ----------------------------------------------------------------------------- */

int dp__gov_attempt_start(struct dp_worker *w, const struct sy_deployment *d,
                          const struct sy_model *m, uint32_t est_tokens, bool *probe)
{
    *probe = false;
    struct sy_shm_dep_state *st = dep_state(w, d);
    if (!st)
        return 0;
    uint64_t now_us = sy_now_ns() / 1000;
    uint32_t retry_after = 0;
    if (d->limits.rpm && dp_rate_take(&st->rpm, now_us, d->limits.rpm, 0, 1, &retry_after) != 0)
        return -EAGAIN;
    if (d->limits.tpm && est_tokens &&
        dp_rate_take(&st->tpm, now_us, d->limits.tpm, 0, est_tokens, &retry_after) != 0) {
        if (d->limits.rpm)
            dp_rate_refund(&st->rpm, d->limits.rpm, 1);
        return -EAGAIN;
    }
    struct dp_circuit_settings cs;
    circuit_settings(m ? &m->policy : NULL, &cs);
    enum dp_circuit_transition tr = DP_CIRCUIT_NONE;
    if (!dp_circuit_allow(&st->circuit, sy_now_ms(), &cs, probe, &tr)) {
        if (d->limits.rpm)
            dp_rate_refund(&st->rpm, d->limits.rpm, 1);
        if (d->limits.tpm && est_tokens)
            dp_rate_refund(&st->tpm, d->limits.tpm, est_tokens);
        return -EBUSY;
    }
    if (tr != DP_CIRCUIT_NONE)
        sy_log(SY_LOG_INFO, "circuit", "deployment=%s circuit %s", d->name,
               dp_circuit_transition_label(tr));
    sy_shm_inflight_inc(st, sy_shm_counters(w->shm, w->index, SY_SHM_DEPLOYMENT, d->slot));
    return 0;
}

static enum sy_outcome shm_outcome(enum dp_outcome o)
{
    switch (o) {
    case DP_OUT_SUCCESS:
        return SY_OUTCOME_SUCCESS;
    case DP_OUT_CLIENT_ERROR:
    case DP_OUT_CONTEXT_LENGTH:
        return SY_OUTCOME_UPSTREAM_4XX;
    case DP_OUT_RATE_LIMITED:
        return SY_OUTCOME_UPSTREAM_429;
    case DP_OUT_SERVER_ERROR:
        return SY_OUTCOME_UPSTREAM_5XX;
    case DP_OUT_TIMEOUT:
        return SY_OUTCOME_TIMEOUT;
    case DP_OUT_CONNECT:
        return SY_OUTCOME_CONNECT_ERROR;
    case DP_OUT_MALFORMED:
        return SY_OUTCOME_PROTOCOL_ERROR;
    case DP_OUT_CUT:
        return SY_OUTCOME_STREAM_CUT;
    case DP_OUT_CANCELLED:
        return SY_OUTCOME_CANCELLED;
    default:
        return SY_OUTCOME_INTERNAL;
    }
}

void dp__gov_attempt_done(struct dp_worker *w, const struct sy_table *t,
                          const struct sy_deployment *d, const struct sy_model *m,
                          enum dp_outcome o, bool probe, uint32_t retry_after_ms, uint64_t ttfb_ns,
                          uint64_t total_ns, const struct sy_http_request *req, uint32_t attempt,
                          int status)
{
    struct sy_shm_dep_state *st = dep_state(w, d);
    if (!st)
        return;
    struct sy_shm_counters *c = sy_shm_counters(w->shm, w->index, SY_SHM_DEPLOYMENT, d->slot);
    sy_shm_inflight_dec(st, c);
    sy_shm_outcome(c, shm_outcome(o));
    sy_shm_observe(sy_shm_hist(c, SY_SHM_DEPLOYMENT, SY_HIST_LATENCY), total_ns / 1000);
    if (ttfb_ns) {
        sy_shm_observe(sy_shm_hist(c, SY_SHM_DEPLOYMENT, SY_HIST_TTFB), ttfb_ns / 1000);
        sy_shm_ewma(&st->ttfb_ewma_us, ttfb_ns / 1000);
    }
    struct dp_circuit_settings cs;
    circuit_settings(m ? &m->policy : NULL, &cs);
    enum dp_circuit_transition tr = DP_CIRCUIT_NONE;
    if (o == DP_OUT_CANCELLED) {
        dp_circuit_release(&st->circuit, probe);
    } else {
        enum dp_circuit_outcome co = o == DP_OUT_RATE_LIMITED   ? DP_CIRCUIT_RATE_LIMITED
                                     : dp_outcome_is_failure(o) ? DP_CIRCUIT_FAILURE
                                                                : DP_CIRCUIT_SUCCESS;
        tr = dp_circuit_record(&st->circuit, sy_now_ms(), &cs, co, retry_after_ms);
    }

    struct sy_shm_event ev;
    sy_shm_event_init(&ev, SY_EVENT_ATTEMPT, req ? req->id : NULL);
    ev.ts_ms = wall_ms();
    ev.table_version = t->version;
    ev.outcome = (uint16_t)shm_outcome(o);
    ev.status = (uint16_t)status;
    ev.worker = w->index;
    ev.model_slot = m ? m->slot : SY_SHM_NO_SLOT;
    ev.deployment_slot = d->slot;
    ev.duration_ms = (uint32_t)(total_ns / 1000000);
    ev.attempt = attempt;
    snprintf(ev.text, sizeof(ev.text), "%s %s", d->name, dp_outcome_label(o));
    sy_shm_event_push(w->shm, &ev);

    if (tr == DP_CIRCUIT_OPENED || tr == DP_CIRCUIT_REOPENED || tr == DP_CIRCUIT_CLOSED) {
        sy_log(SY_LOG_WARN, "circuit", "deployment=%s circuit %s after %s", d->name,
               dp_circuit_transition_label(tr), dp_outcome_label(o));
        if (tr != DP_CIRCUIT_CLOSED)
            sy_shm_add(c, SY_CTR_CIRCUIT_OPENS, 1);
        sy_shm_event_init(&ev, SY_EVENT_CIRCUIT, req ? req->id : NULL);
        ev.ts_ms = wall_ms();
        ev.table_version = t->version;
        ev.worker = w->index;
        ev.deployment_slot = d->slot;
        ev.reason = tr == DP_CIRCUIT_CLOSED     ? SY_REASON_CIRCUIT_CLOSED
                    : tr == DP_CIRCUIT_REOPENED ? SY_REASON_CIRCUIT_REOPENED
                    : o == DP_OUT_RATE_LIMITED  ? SY_REASON_CIRCUIT_RETRY_AFTER
                                                : SY_REASON_CIRCUIT_ERROR_RATE;
        snprintf(ev.text, sizeof(ev.text), "%s %s", d->name, dp_circuit_transition_label(tr));
        sy_shm_event_push(w->shm, &ev);
    }
}

uint64_t dp__gov_cost(const struct sy_deployment *d, uint64_t prompt_tokens,
                      uint64_t completion_tokens)
{
    /* Prices are per million tokens: tokens x price is the cost in millionths. */
    return d ? (uint64_t)((double)prompt_tokens * d->price.input +
                          (double)completion_tokens * d->price.output + 0.5)
             : 0;
}

void dp__gov_account(struct dp_worker *w, const struct sy_model *m, const struct sy_deployment *d,
                     const struct sy_key *k, enum sy_outcome o, uint64_t prompt_tokens,
                     uint64_t completion_tokens, uint64_t total_ns, uint64_t first_byte_ns)
{
    if (!w->shm)
        return;
    uint64_t cost = dp__gov_cost(d, prompt_tokens, completion_tokens);
    struct sy_shm_counters *mc =
        m ? sy_shm_counters(w->shm, w->index, SY_SHM_MODEL, m->slot) : NULL;
    sy_shm_outcome(mc, o);
    sy_shm_observe(sy_shm_hist(mc, SY_SHM_MODEL, SY_HIST_LATENCY), total_ns / 1000);
    if (first_byte_ns)
        sy_shm_observe(sy_shm_hist(mc, SY_SHM_MODEL, SY_HIST_TTFB), first_byte_ns / 1000);
    struct sy_shm_counters *kc = k ? sy_shm_counters(w->shm, w->index, SY_SHM_KEY, k->slot) : NULL;
    sy_shm_outcome(kc, o);
    struct sy_shm_counters *dc =
        d ? sy_shm_counters(w->shm, w->index, SY_SHM_DEPLOYMENT, d->slot) : NULL;
    struct sy_shm_counters *all[] = {mc, kc, dc};
    for (size_t i = 0; i < SY_ARRAY_LEN(all); i++) {
        if (prompt_tokens)
            sy_shm_add(all[i], SY_CTR_PROMPT_TOKENS, prompt_tokens);
        if (completion_tokens)
            sy_shm_add(all[i], SY_CTR_COMPLETION_TOKENS, completion_tokens);
        if (cost)
            sy_shm_add(all[i], SY_CTR_COST_MICROS, cost);
    }
}

/* Move limiter <word> of <limit> tokens per minute from <reserved> to <actual> tokens. */
static void settle(_Atomic uint64_t *word, uint64_t limit, uint64_t reserved, uint64_t actual)
{
    if (actual > reserved)
        dp_rate_charge(word, sy_now_ns() / 1000, limit, actual - reserved);
    else if (reserved > actual)
        dp_rate_refund(word, limit, reserved - actual);
}

void dp__gov_tpm_settle(struct dp_worker *w, const struct sy_deployment *d, const struct sy_key *k,
                        uint64_t reserved_dep, const struct dp_key_grant *grant, uint64_t actual)
{
    if (!w->shm)
        return;
    struct sy_shm_dep_state *st = d ? dep_state(w, d) : NULL;
    if (st && d->limits.tpm && reserved_dep)
        settle(&st->tpm, d->limits.tpm, reserved_dep, actual);
    if (!k || !grant)
        return;
    struct sy_shm_key_state *ks = k->tpm && grant->tpm ? sy_shm_key(w->shm, k->slot) : NULL;
    if (ks)
        settle(&ks->tpm, k->tpm, grant->tpm, actual);
    if (grant->limit && grant->limit->tpm && grant->model_tpm) {
        struct sy_shm_key_model *km = sy_shm_key_model(w->shm, k->slot, grant->model_slot);
        if (km)
            settle(&km->tpm, grant->limit->tpm, grant->model_tpm, actual);
    }
}

enum sy_outcome dp__gov_outcome(enum dp_outcome o)
{
    return shm_outcome(o);
}

void dp__gov_event(struct dp_worker *w, const struct sy_http_request *req, enum sy_event_kind kind,
                   const struct sy_table *t, const struct sy_model *from, const struct sy_model *to,
                   const char *why, uint32_t ms)
{
    sy_log(SY_LOG_DEBUG, "govern", "request=%s %s %s%s%s (%s) %ums", req ? req->id : "-",
           sy_event_kind_label(kind), from ? from->name : "", to ? " -> " : "", to ? to->name : "",
           why ? why : "", ms);
    if (!w->shm)
        return;
    struct sy_shm_event ev;
    sy_shm_event_init(&ev, kind, req ? req->id : NULL);
    ev.ts_ms = wall_ms();
    ev.table_version = t ? t->version : 0;
    ev.worker = w->index;
    ev.model_slot = from ? from->slot : SY_SHM_NO_SLOT;
    ev.duration_ms = ms;
    snprintf(ev.text, sizeof(ev.text), "%s%s%s%s%s", from ? from->name : "", to ? " -> " : "",
             to ? to->name : "", why ? ": " : "", why ? why : "");
    sy_shm_event_push(w->shm, &ev);
    struct sy_shm_counters *c =
        from ? sy_shm_counters(w->shm, w->index, SY_SHM_MODEL, from->slot) : NULL;
    if (kind == SY_EVENT_RETRY)
        sy_shm_add(c, SY_CTR_RETRIES, 1);
    else if (kind == SY_EVENT_FALLBACK)
        sy_shm_add(c, SY_CTR_FALLBACKS, 1);
    else if (kind == SY_EVENT_RATE_LIMITED)
        sy_shm_add(c, SY_CTR_RATE_LIMITED, 1);
}
