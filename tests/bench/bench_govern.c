/* SPDX-License-Identifier: Apache-2.0 */
/** CPU cost of governance per request on the happy path (issue 4: "under 2 µs").
 *
 * Times, over millions of iterations, exactly what dataplane/src/proxy.c does for a request
 * besides I/O and besides parsing the client's body: the key check (no key), the retry-budget
 * count (dp__gov_request), the pick of a deployment (dp_pick with the admits/inflight/ttfb
 * callbacks of proxy.c, which call dp__gov_admits), dp__gov_attempt_start, the clock reads of an
 * attempt, dp_classify of a successful 200 (the JSON check of its body; a stream has none: proxy.c
 * closes it as a success at its end) and dp__gov_attempt_done (counters, histograms, EWMA,
 * circuit record, decision-log event). dp__gov_retry_allowed is not on the happy path. The state is real: a shared-memory segment made by sy_shm_create (in
 * /dev/shm, unlinked at once, so nothing is left behind) and a routing table decoded from JSON
 * by sy_table_from_json, with a model of three deployments and a policy.
 *
 *   bench_govern [ITERATIONS_PER_BATCH] [BATCHES]      (defaults 1,000,000 and 5)
 *
 * Every measure runs BATCHES batches; the median batch gives ns per operation. Iterations run
 * in chunks of 4,096; in the "drained" variants the decision log is emptied between chunks,
 * outside the timed part (as the control plane does), so every event push stores its record;
 * in the "ring full" variants nobody drains and every push is dropped and counted. Output: one
 * line per measure, `BENCH_GOV name=... ns=... min=... max=...`, for report.py. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "govern.h"
#include "sy/http_server.h"
#include "sy/shm.h"
#include "sy/table.h"
#include "sy/util.h"
#include "worker.h"

#define CHUNK 4096u
#define MAX_BATCHES 15u

/* What the mock answers to a small chat completion: dp_classify parses it (a 200 must be a JSON
 * object, or it is "malformed"). */
static const char RESPONSE[] =
    "{\"id\":\"chatcmpl-mock-0001\",\"object\":\"chat.completion\",\"created\":1735689600,"
    "\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
    "\"content\":\"Hello! How can I help you today?\"},\"logprobs\":null,"
    "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":9,"
    "\"total_tokens\":23},\"system_fingerprint\":\"fp_mock\"}";

/* Three deployments of "gpt" with a full policy (the defaults spelled out, a fallback); "gpt-lim"
 * is the same over deployments with rpm/tpm/concurrency limits far above what the run reaches,
 * so the limiters are consulted and charged on every request. */
static const char TABLE[] =
    "{\"version\":7,\"deployments\":["
    "{\"name\":\"a\",\"provider\":\"mock\",\"model\":\"a-up\",\"format\":\"openai\","
    " \"base_url\":\"http://127.0.0.1:9/v1\",\"auth\":\"bearer\",\"api_key\":\"sk-bench\"},"
    "{\"name\":\"b\",\"provider\":\"mock\",\"model\":\"b-up\",\"format\":\"openai\","
    " \"base_url\":\"http://127.0.0.1:9/v1\",\"auth\":\"bearer\",\"api_key\":\"sk-bench\"},"
    "{\"name\":\"c\",\"provider\":\"mock\",\"model\":\"c-up\",\"format\":\"openai\","
    " \"base_url\":\"http://127.0.0.1:9/v1\",\"auth\":\"bearer\",\"api_key\":\"sk-bench\"},"
    "{\"name\":\"la\",\"provider\":\"mock\",\"model\":\"a-up\",\"format\":\"openai\","
    " \"base_url\":\"http://127.0.0.1:9/v1\",\"auth\":\"bearer\",\"api_key\":\"sk-bench\","
    " \"limits\":{\"rpm\":4000000000,\"tpm\":4000000000,\"max_concurrency\":1000000}},"
    "{\"name\":\"lb\",\"provider\":\"mock\",\"model\":\"b-up\",\"format\":\"openai\","
    " \"base_url\":\"http://127.0.0.1:9/v1\",\"auth\":\"bearer\",\"api_key\":\"sk-bench\","
    " \"limits\":{\"rpm\":4000000000,\"tpm\":4000000000,\"max_concurrency\":1000000}},"
    "{\"name\":\"lc\",\"provider\":\"mock\",\"model\":\"c-up\",\"format\":\"openai\","
    " \"base_url\":\"http://127.0.0.1:9/v1\",\"auth\":\"bearer\",\"api_key\":\"sk-bench\","
    " \"limits\":{\"rpm\":4000000000,\"tpm\":4000000000,\"max_concurrency\":1000000}},"
    "{\"name\":\"backup\",\"provider\":\"mock\",\"model\":\"backup-up\",\"format\":\"openai\","
    " \"base_url\":\"http://127.0.0.1:9/v1\",\"auth\":\"bearer\",\"api_key\":\"sk-bench\"},"
    "{\"name\":\"dead\",\"provider\":\"mock\",\"model\":\"dead-up\",\"format\":\"openai\","
    " \"base_url\":\"http://127.0.0.1:9/v1\",\"auth\":\"bearer\",\"api_key\":\"sk-bench\"}],"
    "\"models\":["
    "{\"name\":\"backup\",\"targets\":[{\"deployment\":\"backup\",\"weight\":1}]},"
    "{\"name\":\"fb-circuit\",\"targets\":[{\"deployment\":\"dead\",\"weight\":1}],"
    " \"fallbacks\":[\"backup\"],\"policy\":{\"retry\":{\"attempts\":1},"
    " \"circuit\":{\"consecutive\":1,\"cooldown_ms\":3600000,\"min_requests\":1000}}},"
    "{\"name\":\"gpt\",\"targets\":[{\"deployment\":\"a\",\"weight\":3},"
    "  {\"deployment\":\"b\",\"weight\":2},{\"deployment\":\"c\",\"weight\":1}],"
    " \"fallbacks\":[\"backup\"],\"policy\":%s},"
    "{\"name\":\"gpt-lim\",\"targets\":[{\"deployment\":\"la\",\"weight\":3},"
    "  {\"deployment\":\"lb\",\"weight\":2},{\"deployment\":\"lc\",\"weight\":1}],"
    " \"fallbacks\":[\"backup\"],\"policy\":%s}]}";

#define POLICY(balance)                                                                            \
    "{\"balance\":\"" balance "\","                                                                \
    "\"retry\":{\"attempts\":2,\"backoff_ms\":100,\"max_backoff_ms\":2000,"                        \
    "\"retry_after_cap_ms\":5000,\"budget_percent\":20,"                                           \
    "\"on\":[\"connect\",\"timeout\",\"429\",\"5xx\",\"malformed\"]},"                             \
    "\"fallback_on\":[\"connect\",\"timeout\",\"429\",\"5xx\",\"malformed\"],"                     \
    "\"circuit\":{\"window_ms\":30000,\"min_requests\":20,\"error_percent\":50,"                   \
    "\"consecutive\":5,\"cooldown_ms\":30000,\"half_open_probes\":1},\"shed_percent\":80}"

/* ---- proxy.c's callbacks of struct dp_pick_env, as it writes them ------------------------ */

struct ctx {
    struct dp_worker *w;
    const struct sy_table *t;
    const struct sy_model *m;
    uint32_t est_tokens;
    uint32_t rate_limited, circuit_open, retry_after_ms;
};

static bool admits(void *ud, const struct sy_deployment *d, bool *near_limit)
{
    struct ctx *p = ud;
    uint32_t retry_after = 0;
    enum dp_gov_refusal why =
        dp__gov_admits(p->w, p->t, d, p->m, p->est_tokens, near_limit, &retry_after);
    if (why == DP_GOV_RATE_LIMITED) {
        p->rate_limited++;
        if (!p->retry_after_ms || retry_after < p->retry_after_ms)
            p->retry_after_ms = retry_after;
    } else if (why == DP_GOV_CIRCUIT_OPEN) {
        p->circuit_open++;
    }
    return why == DP_GOV_ADMITTED;
}

static uint64_t inflight(void *ud, const struct sy_deployment *d)
{
    struct ctx *p = ud;
    return dp__gov_inflight(p->w, d);
}

static uint64_t ttfb_us(void *ud, const struct sy_deployment *d)
{
    struct ctx *p = ud;
    return dp__gov_ttfb_us(p->w, d);
}

/* ---- the measures ------------------------------------------------------------------------ */

struct bench {
    struct sy_shm *shm;
    struct dp_worker w;
    struct sy_http_request req;
    uint64_t sink;
    uint64_t failures;
};

static void drain(struct bench *b)
{
    struct sy_shm_event ev;
    uint64_t now = sy_now_ms();
    for (uint32_t i = 0; i < 4 * CHUNK && sy_shm_event_pop(b->shm, now, &ev) == 0; i++)
        b->sink += ev.kind;
}

static void fill(struct bench *b)
{
    struct sy_shm_event ev;
    sy_shm_event_init(&ev, SY_EVENT_ATTEMPT, NULL);
    for (uint32_t i = 0; i <= b->shm->caps.event_cells; i++)
        sy_shm_event_push(b->shm, &ev);
}

/* One request on the happy path of model <m>: non-streaming (<stream> false), whose 200 body
 * dp_classify checks is JSON, or streaming, which proxy.c closes as a success at the end of the
 * stream without a classify. */
static inline void happy_request(struct bench *b, const struct sy_table *t,
                                 const struct sy_model *m, bool stream)
{
    struct dp_worker *w = &b->w;
    const struct sy_policy *pol = &m->policy;
    struct ctx p = {.w = w, .t = t, .m = m, .est_tokens = 30};
    uint32_t key_wait;
    const char *key_limit = NULL;
    struct dp_key_grant grant;
    if (!dp__gov_key_admits(w, NULL, m, p.est_tokens, &grant, &key_wait, &key_limit))
        b->failures++;
    dp__gov_request(w, pol);
    struct dp_pick_env env = {admits, inflight, ttfb_us, &p};
    uint64_t rnd = dp_rand(&w->rnd);
    int ti = dp_pick(t, m->targets, m->n_targets, pol->balance, 0, &env, rnd, w->rr++);
    if (ti < 0) {
        b->failures++;
        return;
    }
    const struct sy_deployment *d = &t->deployments[m->targets[ti].deployment];
    bool probe = false;
    if (dp__gov_attempt_start(w, d, m, p.est_tokens, &probe) < 0) {
        b->failures++;
        return;
    }
    uint64_t attempt_ns = sy_now_ns(); /* start_attempt */
    uint64_t ttfb_ns = sy_now_ns();    /* on_head */
    enum dp_outcome o = stream ? DP_OUT_SUCCESS
                               : dp_classify(DP_UE_NONE, 200, RESPONSE, sizeof(RESPONSE) - 1, true);
    if (o != DP_OUT_SUCCESS)
        b->failures++;
    uint64_t now = sy_now_ns(); /* attempt_end */
    dp__gov_attempt_done(w, t, d, m, o, probe, 0, ttfb_ns - attempt_ns + 1, now - attempt_ns + 1,
                         &b->req, 1, 200);
}

/* A request for <m> (model "fb-circuit") whose only deployment's circuit is open: the pick finds
 * nothing, the fallback is an event (as proxy.c's fall_back), then the happy path on <backup>. */
static inline void circuit_open_request(struct bench *b, const struct sy_table *t,
                                        const struct sy_model *m, const struct sy_model *backup)
{
    struct dp_worker *w = &b->w;
    struct ctx p = {.w = w, .t = t, .m = m, .est_tokens = 30};
    struct dp_pick_env env = {admits, inflight, ttfb_us, &p};
    uint64_t rnd = dp_rand(&w->rnd);
    if (dp_pick(t, m->targets, m->n_targets, m->policy.balance, 0, &env, rnd, w->rr++) >= 0) {
        b->failures++;
        return;
    }
    dp__gov_event(w, &b->req, SY_EVENT_FALLBACK, t, m, backup, "no_capacity", 0);
    happy_request(b, t, backup, false);
}

/* Open the circuit of <m>'s first deployment: one failed attempt (its policy opens on one). */
static void open_circuit(struct bench *b, const struct sy_table *t, const struct sy_model *m)
{
    const struct sy_deployment *d = &t->deployments[m->targets[0].deployment];
    bool probe = false;
    if (dp__gov_attempt_start(&b->w, d, m, 30, &probe) == 0)
        dp__gov_attempt_done(&b->w, t, d, m, DP_OUT_SERVER_ERROR, probe, 0, 0, 1000, &b->req, 1,
                             500);
}

/* The attempt event alone, as dp__gov_attempt_done builds and pushes it. */
static inline void event_push(struct bench *b, const struct sy_table *t, const struct sy_model *m)
{
    const struct sy_deployment *d = &t->deployments[m->targets[0].deployment];
    struct sy_shm_event ev;
    sy_shm_event_init(&ev, SY_EVENT_ATTEMPT, b->req.id);
    ev.table_version = t->version;
    ev.outcome = (uint16_t)SY_OUTCOME_SUCCESS;
    ev.status = 200;
    ev.worker = b->w.index;
    ev.model_slot = m->slot;
    ev.deployment_slot = d->slot;
    ev.duration_ms = 1;
    ev.attempt = 1;
    snprintf(ev.text, sizeof(ev.text), "%s %s", d->name, dp_outcome_label(DP_OUT_SUCCESS));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ev.ts_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    if (sy_shm_event_push(b->shm, &ev) != 0)
        b->sink++;
}

enum what { HAPPY_CHAT, HAPPY_STREAM, CIRCUIT_OPEN, EVENT, CLASSIFY };

/* ns per operation of one batch of <iters>. */
static double batch(struct bench *b, enum what what, const struct sy_table *t,
                    const struct sy_model *m, uint64_t iters, bool drained)
{
    uint64_t timed = 0;
    for (uint64_t done = 0; done < iters; done += CHUNK) {
        uint32_t n = (uint32_t)SY_MIN((uint64_t)CHUNK, iters - done);
        if (drained)
            drain(b);
        uint64_t t0 = sy_now_ns();
        switch (what) {
        case HAPPY_CHAT:
            for (uint32_t i = 0; i < n; i++)
                happy_request(b, t, m, false);
            break;
        case HAPPY_STREAM:
            for (uint32_t i = 0; i < n; i++)
                happy_request(b, t, m, true);
            break;
        case CIRCUIT_OPEN: {
            const struct sy_model *backup = sy_table_find_model(t, "backup", 6);
            for (uint32_t i = 0; i < n; i++)
                circuit_open_request(b, t, m, backup);
            break;
        }
        case EVENT:
            for (uint32_t i = 0; i < n; i++)
                event_push(b, t, m);
            break;
        case CLASSIFY:
            for (uint32_t i = 0; i < n; i++)
                b->sink += dp_classify(DP_UE_NONE, 200, RESPONSE, sizeof(RESPONSE) - 1, true);
            break;
        }
        timed += sy_now_ns() - t0;
    }
    return (double)timed / (double)iters;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void measure(struct bench *b, const char *name, enum what what, const struct sy_table *t,
                    const struct sy_model *m, uint64_t iters, unsigned batches, bool drained)
{
    double ns[MAX_BATCHES];
    if (drained)
        drain(b);
    else
        fill(b);
    batch(b, what, t, m, iters / 10 + 1, drained); /* warm-up */
    uint64_t dropped0 = sy_shm_event_dropped(b->shm);
    for (unsigned i = 0; i < batches; i++)
        ns[i] = batch(b, what, t, m, iters, drained);
    uint64_t dropped = sy_shm_event_dropped(b->shm) - dropped0;
    qsort(ns, batches, sizeof(ns[0]), cmp_double);
    printf("BENCH_GOV name=%s ns=%.1f min=%.1f max=%.1f iterations=%llu batches=%u "
           "events_dropped=%llu\n",
           name, ns[batches / 2], ns[0], ns[batches - 1], (unsigned long long)iters, batches,
           (unsigned long long)dropped);
    fflush(stdout);
}

static struct sy_table *make_table(const char *balance_policy)
{
    size_t cap = sizeof(TABLE) + 2 * strlen(balance_policy) + 1;
    char *json = malloc(cap);
    if (!json)
        abort();
    int len = snprintf(json, cap, TABLE, balance_policy, balance_policy);
    struct sy_table *t = NULL;
    char *err = NULL;
    if (sy_table_from_json(json, (size_t)len, &t, &err) != 0) {
        fprintf(stderr, "bench_govern: table: %s\n", err ? err : "?");
        exit(1);
    }
    free(json);
    return t;
}

static const struct sy_model *model(const struct sy_table *t, const char *name)
{
    const struct sy_model *m = sy_table_find_model(t, name, strlen(name));
    if (!m) {
        fprintf(stderr, "bench_govern: no model %s\n", name);
        exit(1);
    }
    return m;
}

int main(int argc, char **argv)
{
    uint64_t iters = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
    unsigned batches = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 5;
    if (iters < CHUNK || iters > 100000000 || batches < 1 || batches > MAX_BATCHES) {
        fprintf(stderr, "usage: bench_govern [ITERATIONS 4096..1e8] [BATCHES 1..15]\n");
        return 2;
    }

    static struct bench b;
    char path[64], *err = NULL;
    snprintf(path, sizeof(path), "/dev/shm/switchyard-bench-govern-%d", (int)getpid());
    int rc = sy_shm_create(path, NULL, &b.shm, &err);
    if (rc != 0) {
        fprintf(stderr, "bench_govern: %s: %s\n", path, err ? err : strerror(-rc));
        return 1;
    }
    unlink(path); /* the mapping stays; the file never outlives us */
    sy_shm_worker_start(b.shm, 0, getpid(), sy_now_ms());
    b.w.shm = b.shm;
    b.w.index = 0;
    b.w.rnd = 0x9E3779B97F4A7C15ull;
    b.w.budget.at_ms = sy_now_ms();
    snprintf(b.req.id, sizeof(b.req.id), "01JBENCHGOVERN0000000000000");

    struct sy_table *tw = make_table(POLICY("weighted"));
    struct sy_table *tl = make_table(POLICY("least_connections"));
    printf("# bench_govern: %llu iterations x %u batches per measure, ring of %u events\n",
           (unsigned long long)iters, batches, b.shm->caps.event_cells);
    const struct sy_model *gw = model(tw, "gpt"), *gl = model(tw, "gpt-lim");
    measure(&b, "happy_chat", HAPPY_CHAT, tw, gw, iters, batches, true);
    measure(&b, "happy_stream", HAPPY_STREAM, tw, gw, iters, batches, true);
    measure(&b, "happy_stream_limits", HAPPY_STREAM, tw, gl, iters, batches, true);
    measure(&b, "happy_stream_least_connections", HAPPY_STREAM, tl, model(tl, "gpt"), iters,
            batches, true);
    measure(&b, "happy_stream_ring_full", HAPPY_STREAM, tw, gw, iters, batches, false);
    const struct sy_model *fb = model(tw, "fb-circuit");
    open_circuit(&b, tw, fb);
    measure(&b, "circuit_open_fallback", CIRCUIT_OPEN, tw, fb, iters, batches, true);
    measure(&b, "classify_200", CLASSIFY, tw, gw, iters, batches, true);
    measure(&b, "event_push", EVENT, tw, gw, iters, batches, true);
    measure(&b, "event_push_ring_full", EVENT, tw, gw, iters, batches, false);
    if (b.failures) {
        fprintf(stderr, "bench_govern: %llu requests left the happy path\n",
                (unsigned long long)b.failures);
        return 1;
    }
    sy_table_unref(tw);
    sy_table_unref(tl);
    sy_shm_detach(b.shm);
    return b.sink == 42 ? 3 : 0; /* keep the sink alive */
}
