/* SPDX-License-Identifier: Apache-2.0 */
/** Request handlers: the OpenAI-compatible endpoints and the health probes. A model call is
 * parsed once, routed through the routing table to a deployment, rewritten (model id, stream
 * usage), sent upstream, and its answer relayed: buffered for JSON, event by event for SSE. */

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "budget.h"
#include "rewrite.h"
#include "worker.h"
#include "sy/log.h"
#include "sy/sse.h"
#include "sy/table.h"
#include "sy/util.h"
#include "classify.h"
#include "govern.h"
#include "guard.h"
#include "translate.h"
#include "upstream.h"

enum endpoint {
    EP_CHAT = 0,
    EP_COMPLETIONS,
    EP_EMBEDDINGS,
    EP_MESSAGES, /* Anthropic's Messages API */
    EP_MAX,
};

static const struct {
    const char *path;   /* client path */
    const char *suffix; /* appended to the deployment's base URL */
    bool can_stream;
    const char *required; /* member a request must have besides model */
} endpoints[EP_MAX] = {
    [EP_CHAT] = {"/v1/chat/completions", "/chat/completions", true, "messages"},
    [EP_COMPLETIONS] = {"/v1/completions", "/completions", true, "prompt"},
    [EP_EMBEDDINGS] = {"/v1/embeddings", "/embeddings", false, "input"},
    [EP_MESSAGES] = {"/v1/messages", "/messages", true, "messages"},
};

/* Anthropic requires max_tokens; a request translated to it without one gets this. */
#define DEFAULT_MAX_TOKENS 4096

/* Largest single SSE event from upstream. */
#define MAX_SSE_EVENT (4u * 1024 * 1024)

/** One attempt, for the trace header. */
struct trace_rec {
    uint32_t dep; /* deployment index */
    uint8_t outcome;
    uint16_t status;
    uint32_t ms;
};

struct proxy;

/** A backoff before a retry; outlives the proxy if the client leaves while it runs. */
struct retry_timer {
    uv_timer_t t;
    struct proxy *p; /* NULL once the call is gone */
};

/** One model call in flight; lives in the request's arena. */
struct proxy {
    struct sy_http_request *req;
    struct dp_worker *w;
    const struct sy_table *t;
    const struct sy_key *key; /* the client key, NULL when the table requires none */
    enum endpoint ep;
    enum dp_api api;    /* the client's */
    enum dp_api up_api; /* the current attempt's deployment's */
    bool stream;
    bool client_usage;             /* the client asked for the usage chunk itself */
    json_t *root;                  /* the parsed request, for translating it to another format */
    const char *client_model;      /* the model the client asked for (arena) */
    uint32_t est_cost_tokens;      /* estimated prompt tokens plus max_tokens, for TPM limits */
    struct dp_key_grant key_grant; /* what the client key's limiters gave, settled at the end */
    uint32_t timeout_override_ms;

    /* the route: models to try in order, and where we are */
    uint32_t chain[8];
    uint32_t n_chain, chain_pos;
    const struct sy_target *targets; /* a rule's deployments for the first model, else NULL */
    uint32_t n_targets;
    uint32_t tries_on_model;
    uint64_t excluded; /* targets of the current model that failed in this call */
    uint64_t skipped;  /* ...and those that had no capacity when we tried to start on them */
    uint32_t retries, fallbacks;
    struct no_capacity {
        uint32_t rate_limited;
        uint32_t circuit_open;
        uint32_t retry_after_ms;
    } nocap;
    struct retry_timer *timer;

    /* the attempt in progress */
    const struct sy_deployment *dep;
    uint32_t target_index;
    uint64_t attempt_ns, ttfb_ns;
    struct dp_upstream *up;
    int status;
    const char *ctype; /* upstream Content-Type (arena) */
    uint32_t retry_after_ms;
    bool sse;         /* the upstream answers with an event stream */
    bool has_content; /* ...and it has carried content */
    bool committed;   /* the client has the response head: no more retries */
    bool paused;      /* upstream reading paused for a slow client */
    bool probe;       /* the attempt holds a half-open circuit probe */
    struct sy_timeouts timeouts;
    struct sy_buf up_head; /* upstream request head */
    struct sy_buf up_body; /* upstream request body */
    struct sy_buf body;    /* buffered upstream body, or SSE events not yet written */
    struct sy_buf headers; /* upstream response headers we pass on */
    struct sy_sse_parser sse_parser;
    struct dp_tr_stream tr; /* an event stream from a deployment of another format */
    bool tr_active;
    uv_buf_t up_bufs[2]; /* head and body, borrowed by the upstream client until done */

    /* the answer of the last failed attempt, relayed if nothing better comes */
    int last_status;
    const char *last_ctype;
    enum dp_upstream_error last_err;
    char *last_detail;
    struct sy_buf last_body, last_headers;

    struct trace_rec trace[12];
    uint32_t n_trace, n_trace_dropped;

    /* accounting */
    struct dp_usage usage;  /* what the provider reported for the answer */
    uint64_t first_ns;      /* when the client got its first byte (head) */
    bool cut;               /* a stream ended by an error after content went out */
    bool budget_charged;    /* the answer's cost is in the key's budgets */
    struct sy_buf log_resp; /* the response as sent, for the request log (opted-in keys) */

    /* guardrails (guard.h): NULL when none applies to the call */
    struct dp_guard_req *guard;
    enum dp_guard_verdict guard_stop; /* an output guardrail ended the stream */
};

static void next_attempt(struct proxy *p);
static void attempt_end(struct proxy *p, enum dp_outcome o);
static void after_failure(struct proxy *p, enum dp_outcome o, enum dp_upstream_error err,
                          const char *detail);
static void attempt_failed_or_cut(struct proxy *p, enum dp_upstream_error err, const char *detail);
static void restore_last(struct proxy *p);
static void fall_back(struct proxy *p, const char *why);
static void retry_timer_closed(uv_handle_t *h);

/* ============================================================================================
 * Small responses
 * ========================================================================================== */

static void send_json(struct sy_http_request *req, int status, const char *json)
{
    sy_http_resp_send(req, status, "application/json", NULL, json, strlen(json));
}

/* The API a client speaks, from the endpoint it called. */
static enum dp_api req_api(const struct sy_http_request *req)
{
    return strcmp(req->path, endpoints[EP_MESSAGES].path) == 0 ? DP_API_ANTHROPIC : DP_API_OPENAI;
}

/* Answer an error in the shape of the client's API: OpenAI's {"error":{...}} or Anthropic's
 * {"type":"error","error":{...}}, with extra header lines <extra> (may be NULL). */
__attribute__((format(printf, 7, 8))) static void
api_error_h(struct sy_http_request *req, const char *extra, int status, const char *type,
            const char *code, const char *param, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct sy_buf b = SY_BUF_INIT;
    if (req_api(req) == DP_API_ANTHROPIC) {
        /* Anthropic's error type follows the status (authentication_error for 401,
         * rate_limit_error for 429...); OpenAI's types mean other things there. */
        dp_tr_gateway_error(DP_API_ANTHROPIC, status, status == 400 ? type : NULL, code, msg, &b);
    } else {
        sy_http_error_json(&b, type, code, param, msg);
    }
    sy_http_resp_send(req, status, "application/json", extra, b.data, b.len);
    sy_buf_free(&b);
}

#define api_error(req, ...) api_error_h((req), NULL, __VA_ARGS__)

static void method_not_allowed(struct sy_http_request *req, const char *allow)
{
    char extra[64], body[256];
    snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
    snprintf(body, sizeof(body),
             "{\"error\":{\"message\":\"Use %s for %s.\",\"type\":\"invalid_request_error\","
             "\"param\":null,\"code\":\"method_not_allowed\"}}\n",
             allow, req->path);
    sy_http_resp_send(req, 405, "application/json", extra, body, strlen(body));
}

/* ============================================================================================
 * Client keys
 * ========================================================================================== */

/* Characters of a key echoed back in an error: as many as a display prefix ("sk-sy-AbCd"), and
 * never more than half of what was sent, so a short key is not echoed whole. */
#define KEY_ECHO_MAX 10

/* The key the client presented: `Authorization: Bearer <key>` or `x-api-key: <key>`. */
static const char *presented_key(const struct sy_http_request *req, size_t *len)
{
    size_t n;
    const char *v = sy_http_req_header(req, "authorization", &n);
    if (v && n > 7 && sy_strcaseeq(v, 6, "bearer") && (v[6] == ' ' || v[6] == '\t')) {
        v += 7;
        n -= 7;
        while (n > 0 && (*v == ' ' || *v == '\t')) {
            v++;
            n--;
        }
        while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
        if (n > 0) {
            *len = n;
            return v;
        }
    }
    v = sy_http_req_header(req, "x-api-key", &n);
    if (v && n > 0) {
        *len = n;
        return v;
    }
    return NULL;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Authenticate the request against its table's keys. Returns true with *<out> set (NULL when
 * the table requires no key) when it may go on; false when it has been answered with a 401.
 * Never logs or echoes the key: only its display prefix, or the first few characters sent. */
static bool authenticate(struct sy_http_request *req, const struct sy_key **out)
{
    const struct sy_table *t = dp__req_table(req);
    uint8_t hash[SY_KEY_HASH_LEN];
    unsigned int hash_len = 0;
    size_t len;

    *out = NULL;
    if (!t->require_keys)
        return true;
    const char *key = presented_key(req, &len);
    if (key == NULL) {
        api_error(req, 401, "invalid_request_error", "invalid_api_key", NULL,
                  "You didn't provide an API key. You need to provide your API key in "
                  "an Authorization header using Bearer auth (i.e. Authorization: "
                  "Bearer YOUR_KEY), or in an x-api-key header.");
        return false;
    }
    SY_REQUIRE(EVP_Digest(key, len, hash, &hash_len, EVP_sha256(), NULL) == 1 &&
               hash_len == SY_KEY_HASH_LEN);
    const struct sy_key *k = sy_table_find_key(t, hash);
    if (k && (k->expires_ms == 0 || wall_ms() < k->expires_ms)) {
        *out = k;
        return true;
    }
    char shown[KEY_ECHO_MAX + 1];
    if (k && k->prefix) {
        snprintf(shown, sizeof(shown), "%s", k->prefix);
    } else {
        size_t n = SY_MIN(len / 2, (size_t)KEY_ECHO_MAX);
        for (size_t i = 0; i < n; i++) /* sy_http_resp_error escapes; keep it readable too */
            shown[i] = key[i] > 0x20 && key[i] < 0x7f ? key[i] : '?';
        shown[n] = '\0';
    }
    api_error(req, 401, "invalid_request_error", "invalid_api_key", NULL,
              "Incorrect API key provided: %s\u2026%s", shown, k ? " This key has expired." : "");
    return false;
}

/* A key that may not use <model> (borrowed, counted): answer 403 and return false. */
static bool key_allows(struct sy_http_request *req, const struct sy_key *k, const char *model,
                       size_t len)
{
    if (k == NULL || sy_key_allows_model(k, model, len))
        return true;
    api_error(req, 403, "permission_denied", "model_not_allowed", "model",
              "This API key is not allowed to use the model `%.*s`.", (int)len, model);
    return false;
}

/* Count the cost of the answer of deployment <d> into the key's budgets, once: before a
 * buffered answer goes out, so that a request the client sends after reading it sees its cost;
 * at the end of the request otherwise (streams, failures). */
static void charge_budgets(struct proxy *p, const struct sy_deployment *d)
{
    if (p->budget_charged)
        return;
    p->budget_charged = true;
    dp__budget_charge(p->w, p->t, p->key,
                      dp__gov_cost(d, p->usage.prompt_tokens, p->usage.completion_tokens),
                      p->req ? p->req->id : NULL);
}

/* The budgets covering key <k> (may be NULL) of table <t>: when one is exhausted, answer 429 in
 * the client's API shape, naming the budget and when it resets, and return false. */
static bool budgets_admit(struct sy_http_request *req, const struct sy_table *t,
                          const struct sy_key *k)
{
    const struct sy_budget *b = NULL;
    uint64_t reset_ms = 0;
    if (dp__budget_admits(dp__req_worker(req), t, k, req->id, &b, &reset_ms))
        return true;
    uint64_t now = dp_budget_now_ms();
    uint64_t secs = reset_ms > now ? (reset_ms - now + 999) / 1000 : 1;
    char extra[48], at[32], amount[32];
    snprintf(extra, sizeof(extra), "Retry-After: %" PRIu64 "\r\n", secs);
    time_t rs = (time_t)(reset_ms / 1000);
    struct tm tm;
    gmtime_r(&rs, &tm);
    strftime(at, sizeof(at), "%Y-%m-%dT%H:%M:%SZ", &tm);
    api_error_h(req, extra, 429, "insufficient_quota", "budget_exceeded", NULL,
                "The spend budget `%s` of this API key is exhausted (%s per %s). It resets at %s, "
                "in %" PRIu64 " s.",
                b->name, dp_budget_amount(b->amount_micros, amount),
                b->period == SY_BUDGET_DAY    ? "day"
                : b->period == SY_BUDGET_WEEK ? "week"
                                              : "month",
                at, secs);
    return false;
}

/* ============================================================================================
 * Models and probes
 * ========================================================================================== */

static void handle_models(struct sy_http_request *req)
{
    const struct sy_table *t = dp__req_table(req);
    const struct sy_key *key;
    struct sy_buf b = SY_BUF_INIT;
    long long created = (long long)(t->created_ms / 1000);
    bool first = true;

    if (!authenticate(req, &key))
        return;
    sy_buf_puts(&b, "{\"object\":\"list\",\"data\":[");
    for (uint32_t i = 0; i < t->n_models; i++) {
        const char *name = t->models[i].name;
        if (key && !sy_key_allows_model(key, name, strlen(name)))
            continue; /* a key sees only what it may use */
        if (!first)
            sy_buf_puts(&b, ",");
        first = false;
        sy_buf_puts(&b, "{\"id\":");
        sy_buf_json_str(&b, t->models[i].name, strlen(t->models[i].name));
        sy_buf_printf(&b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"switchyard\"}",
                      created);
    }
    sy_buf_puts(&b, "]}\n");
    sy_http_resp_send(req, 200, "application/json", NULL, b.data, b.len);
    sy_buf_free(&b);
}

static void handle_readyz(struct sy_http_request *req)
{
    char body[160];
    if (dp__req_table(req)->version == 0) {
        send_json(req, 503, "{\"status\":\"not ready\",\"reason\":\"no routing table loaded\"}\n");
        return;
    }
    snprintf(body, sizeof(body), "{\"status\":\"ready\",\"table_version\":%llu}\n",
             (unsigned long long)dp__req_table(req)->version);
    send_json(req, 200, body);
}

/* ============================================================================================
 * A model call: attempts, retries and fallbacks
 *
 * A call walks a chain of public models (the one asked for, or the one a routing rule chose,
 * then its fallbacks). On each model it makes up to retry.attempts attempts, each on a
 * deployment picked among those whose circuit admits traffic and whose limits have room. An
 * attempt that fails before anything reached the client is retried (after a backoff with full
 * jitter, Retry-After honoured) or falls back to the next model, as the policy's triggers say.
 * A stream is held back until its first content event, so a stream that fails before content
 * is retried like any request; once content has gone out, a failure ends the stream with an
 * error event and no clean end.
 * ========================================================================================== */

static const struct sy_policy *policy_of(const struct sy_model *m)
{
    /* A table from before policies, or a model without one: the documented defaults. */
    static const struct sy_policy dflt = {
        .balance = SY_BALANCE_WEIGHTED,
        .retry = {.attempts = 2,
                  .backoff_ms = 100,
                  .max_backoff_ms = 2000,
                  .retry_after_cap_ms = 5000,
                  .budget_percent = 20,
                  .triggers = SY_TRIGGER_DEFAULT | SY_TRIGGER_MALFORMED},
        .circuit = {.window_ms = 30000,
                    .min_requests = 20,
                    .error_percent = 50,
                    .consecutive = 5,
                    .cooldown_ms = 30000,
                    .half_open_probes = 1},
        .fallback_triggers = SY_TRIGGER_DEFAULT | SY_TRIGGER_MALFORMED,
        .shed_percent = 80,
    };
    return m->policy.retry.attempts ? &m->policy : &dflt;
}

static void proxy_release(struct proxy *p)
{
    if (p->up_head.data) /* it carried the provider's credential */
        explicit_bzero(p->up_head.data, p->up_head.len);
    sy_buf_free(&p->up_head);
    sy_buf_free(&p->up_body);
    sy_buf_free(&p->body);
    sy_buf_free(&p->headers);
    sy_buf_free(&p->last_body);
    sy_buf_free(&p->last_headers);
    sy_sse_free(&p->sse_parser);
    if (p->tr_active) {
        if (dp_tr_stream_usage(&p->tr)->present)
            p->usage = *dp_tr_stream_usage(&p->tr);
        dp_tr_stream_free(&p->tr);
        p->tr_active = false;
    }
    json_decref(p->root);
    p->root = NULL;
    dp_guard_end(p->guard);
    if (p->timer) {
        p->timer->p = NULL; /* its callback frees it */
        uv_timer_stop(&p->timer->t);
        uv_close((uv_handle_t *)&p->timer->t, retry_timer_closed);
        p->timer = NULL;
    }
}

/* The client left: drop the upstream exchange with it. */
static void proxy_abort(struct sy_http_request *req)
{
    struct proxy *p = req->handler;
    if (p->up) {
        dp_upstream_cancel(p->up);
        p->up = NULL;
        attempt_end(p, DP_OUT_CANCELLED);
    }
    proxy_release(p);
}

static void proxy_drain(struct sy_http_request *req)
{
    struct proxy *p = req->handler;
    if (p->paused && p->up) {
        p->paused = false;
        dp_upstream_resume(p->up);
    }
}

/* Response headers that describe the upstream hop, not the answer, and are not passed on. */
static bool hop_header(const char *name, size_t len)
{
    static const char *const skip[] = {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-type",
        "date",
        "server",
        "te",
        "trailer",
        "upgrade",
        "set-cookie",
        "x-request-id",
        "proxy-connection",
        "proxy-authenticate",
        "alt-svc",
        "strict-transport-security",
    };
    for (size_t i = 0; i < SY_ARRAY_LEN(skip); i++)
        if (sy_strcaseeq(name, len, skip[i]))
            return true;
    return false;
}

static void trace_item(struct proxy *p, struct sy_buf *h, uint32_t dep, enum dp_outcome o,
                       int status, uint32_t ms, bool first)
{
    sy_buf_cat(h, first ? "" : ", ", p->t->deployments[dep].name, ";", NULL);
    if (status && (o == DP_OUT_SUCCESS || o == DP_OUT_CLIENT_ERROR || o == DP_OUT_RATE_LIMITED ||
                   o == DP_OUT_SERVER_ERROR || o == DP_OUT_CONTEXT_LENGTH))
        sy_buf_putu(h, (unsigned)status);
    else
        sy_buf_puts(h, dp_outcome_label(o));
    sy_buf_puts(h, ";");
    sy_buf_putu(h, ms);
    sy_buf_puts(h, "ms");
}

/* Our own headers on every answer: the model that served it, the deployment that answered, and
 * the story of the attempts ("dep-a;connect_error;3ms, dep-b;200;41ms"). An attempt still
 * running (a stream being committed) is in it too. */
static void add_trace_headers(struct proxy *p, struct sy_buf *h)
{
    if (p->n_trace == 0 && !p->dep)
        return;
    const struct sy_table *t = p->t;
    uint32_t last = p->dep ? (uint32_t)(p->dep - t->deployments) : p->trace[p->n_trace - 1].dep;
    sy_buf_cat(h, "x-switchyard-model: ", t->models[p->chain[p->chain_pos]].name,
               "\r\nx-switchyard-deployment: ", t->deployments[last].name, "\r\n", NULL);
    sy_buf_puts(h, "x-switchyard-trace: ");
    for (uint32_t i = 0; i < p->n_trace; i++) {
        const struct trace_rec *r = &p->trace[i];
        trace_item(p, h, r->dep, (enum dp_outcome)r->outcome, r->status, r->ms, i == 0);
    }
    if (p->dep)
        trace_item(p, h, last, DP_OUT_SUCCESS, p->status,
                   (uint32_t)((sy_now_ns() - p->attempt_ns) / 1000000), p->n_trace == 0);
    if (p->n_trace_dropped)
        sy_buf_printf(h, ", +%u more", p->n_trace_dropped);
    sy_buf_puts(h, "\r\n");
}

/* Close the books on the current attempt. */
static void attempt_end(struct proxy *p, enum dp_outcome o)
{
    if (!p->dep)
        return;
    uint32_t ms = (uint32_t)((sy_now_ns() - p->attempt_ns) / 1000000);
    if (o == DP_OUT_CANCELLED && !p->committed && p->status == 0)
        p->status = 499;
    uint32_t dep = (uint32_t)(p->dep - p->t->deployments);
    if (p->n_trace < SY_ARRAY_LEN(p->trace))
        p->trace[p->n_trace++] = (struct trace_rec){dep, (uint8_t)o, (uint16_t)p->status, ms};
    else
        p->n_trace_dropped++;
    uint64_t now = sy_now_ns();
    if (o != DP_OUT_SUCCESS) /* nothing was produced: the tokens it reserved go back */
        dp__gov_tpm_settle(p->w, p->dep, NULL, p->est_cost_tokens, NULL, 0);
    dp__gov_attempt_done(p->w, p->t, p->dep, &p->t->models[p->chain[p->chain_pos]], o, p->probe,
                         p->retry_after_ms, p->ttfb_ns ? p->ttfb_ns - p->attempt_ns : 0,
                         now - p->attempt_ns, p->req, p->tries_on_model, p->status);
    p->probe = false;
    p->dep = NULL;
}

/* Commit a stream: send the head and every event held back, from now on relay as they come. */
static int stream_commit(struct proxy *p)
{
    struct sy_buf h = p->headers;
    p->headers = (struct sy_buf)SY_BUF_INIT;
    sy_buf_puts(&h, "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
    add_trace_headers(p, &h);
    struct sy_http_resp_head head = {
        .status = 200,
        .content_type = "text/event-stream",
        .extra = h.data,
        .extra_len = h.len,
        .content_length = -1,
    };
    p->committed = true;
    p->first_ns = sy_now_ns();
    int r = sy_http_resp_start(p->req, &head);
    sy_buf_free(&h);
    if (r < 0)
        return r;
    if (p->body.len) {
        r = sy_http_resp_write(p->req, p->body.data, p->body.len);
        sy_buf_reset(&p->body);
    }
    return r;
}

static void on_head(struct dp_upstream *u, void *ud, int status, const struct dp_header *h,
                    size_t n)
{
    struct proxy *p = ud;
    const char *ctype = NULL;
    size_t ctype_len = 0;
    p->status = status;
    p->ttfb_ns = sy_now_ns();
    for (size_t i = 0; i < n; i++) {
        if (sy_strcaseeq(h[i].name, h[i].name_len, "content-type")) {
            ctype = h[i].value;
            ctype_len = h[i].value_len;
        } else if (!hop_header(h[i].name, h[i].name_len)) {
            if (sy_strcaseeq(h[i].name, h[i].name_len, "retry-after"))
                p->retry_after_ms = dp_retry_after_ms(h[i].value, h[i].value_len);
            sy_buf_append(&p->headers, h[i].name, h[i].name_len);
            sy_buf_append(&p->headers, ": ", 2);
            sy_buf_append(&p->headers, h[i].value, h[i].value_len);
            sy_buf_append(&p->headers, "\r\n", 2);
        }
    }
    p->ctype = ctype ? sy_arena_strndup(&p->req->arena, ctype, ctype_len) : NULL;
    bool is_sse = p->ctype && strncasecmp(p->ctype, "text/event-stream", 17) == 0;
    if (p->stream && status == 200 && is_sse) {
        p->sse = true;
        sy_sse_init(&p->sse_parser, MAX_SSE_EVENT);
        if (p->up_api != p->api) {
            dp_tr_stream_init(&p->tr, p->up_api, p->api, p->client_model, p->req->id,
                              p->client_usage);
            p->tr_active = true;
        }
    }
}

/* Is this the final OpenAI usage chunk, `"choices":[]` with a usage object? */
static bool is_usage_chunk(const char *d, size_t n)
{
    const char *u = memmem(d, n, "\"usage\"", 7);
    if (!u)
        return false;
    const char *e = d + n;
    u += 7;
    while (u < e && (*u == ' ' || *u == ':' || *u == '\t'))
        u++;
    if (u >= e || *u != '{')
        return false;
    const char *c = memmem(d, n, "\"choices\"", 9);
    if (!c)
        return true;
    c += 9;
    while (c < e && (*c == ' ' || *c == ':' || *c == '\t'))
        c++;
    if (c >= e || *c != '[')
        return false;
    c++;
    while (c < e && (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r'))
        c++;
    return c < e && *c == ']';
}

/* After <key> (a quoted member name with its colon skipped) in <d>/<n>, is there a value that
 * is not empty: a non-empty string, an object, an array, a number? null, "" and absence are not. */
static bool member_has_value(const char *d, size_t n, const char *key, size_t klen)
{
    const char *e = d + n;
    for (const char *k = memmem(d, n, key, klen); k;
         k = memmem(k + 1, (size_t)(e - k - 1), key, klen)) {
        const char *v = k + klen;
        while (v < e && (*v == ' ' || *v == ':' || *v == '\t'))
            v++;
        if (v >= e)
            return false;
        if (*v == 'n') /* null */
            continue;
        if (*v == '"' && v + 1 < e && v[1] == '"')
            continue;
        return true;
    }
    return false;
}

/* Does an event carry content (as opposed to the opening role chunk or a comment)? Asked only
 * until the stream is committed; a scan for the members that make content, not a parse. */
static bool is_content_event(const struct sy_sse_event *ev)
{
    const char *d = ev->data;
    size_t n = ev->data_len;
    if (n == 0 || !d)
        return false; /* comment or keep-alive */
    if (!memmem(d, n, "\"choices\"", 9) || memmem(d, n, "\"error\"", 7))
        return true; /* [DONE], an error, anything we do not understand: goes out as it is */
    return member_has_value(d, n, "\"content\"", 9) || member_has_value(d, n, "\"text\"", 6) ||
           member_has_value(d, n, "\"tool_calls\"", 12) ||
           member_has_value(d, n, "\"function_call\"", 15) ||
           member_has_value(d, n, "\"reasoning_content\"", 19) ||
           member_has_value(d, n, "\"finish_reason\"", 15);
}

/* Anthropic events that carry content, for a stream relayed as it is. */
static bool is_anthropic_content(const struct sy_sse_event *ev)
{
    static const char *const kinds[] = {"content_block_delta", "message_delta", "error"};
    for (size_t i = 0; i < SY_ARRAY_LEN(kinds); i++)
        if (sy_strcaseeq(ev->event, ev->event_len, kinds[i]))
            return true;
    return false;
}

static int relay_event(struct proxy *p, const struct sy_sse_event *ev)
{
    if (p->tr_active) {
        if (dp_tr_stream_event(&p->tr, ev, &p->body) < 0)
            return -EPROTO;
        p->has_content = p->has_content || dp_tr_stream_has_content(&p->tr);
        return 0;
    }
    if (p->api == DP_API_ANTHROPIC) {
        p->has_content = p->has_content || is_anthropic_content(ev);
        if (sy_strcaseeq(ev->event, ev->event_len, "message_start") ||
            sy_strcaseeq(ev->event, ev->event_len, "message_delta"))
            dp_usage_from_json(DP_API_ANTHROPIC, ev->data, ev->data_len, &p->usage);
        sy_buf_append(&p->body, ev->raw, ev->raw_len);
        return 0;
    }
    if (ev->data_len && is_usage_chunk(ev->data, ev->data_len)) {
        dp_usage_from_json(DP_API_OPENAI, ev->data, ev->data_len, &p->usage);
        if (!p->client_usage)
            return 0; /* we asked for usage for our own accounting; the client did not */
    } else if (!p->committed && !p->has_content && is_content_event(ev)) {
        p->has_content = true;
    }
    sy_buf_append(&p->body, ev->raw, ev->raw_len);
    return 0;
}

/* Output guardrails see the events as the client will, after any translation: what the relay
 * appended to p->body from <mark> on is replaced by what they let through. */
static int guard_events(struct proxy *p, size_t mark)
{
    struct sy_buf checked = SY_BUF_INIT;
    enum dp_guard_verdict v =
        dp_guard_stream(p->guard, p->body.data + mark, p->body.len - mark, &checked);
    p->body.len = mark;
    sy_buf_append(&p->body, checked.data ? checked.data : "", checked.len);
    sy_buf_free(&checked);
    if (v == DP_GUARD_PASS)
        return 0;
    p->guard_stop = v;
    return 1; /* stops the parser: nothing after this goes out */
}

static int on_event(void *ud, const struct sy_sse_event *ev)
{
    struct proxy *p = ud;
    size_t mark = p->body.len;
    int r = relay_event(p, ev);
    if (r == 0 && dp_guard_has_output(p->guard))
        r = guard_events(p, mark);
    return r;
}

/* The client cannot be written to any more: give up the call. */
static void client_gone(struct proxy *p, struct dp_upstream *u)
{
    struct sy_http_request *req = p->req;
    dp_upstream_cancel(u);
    p->up = NULL;
    attempt_end(p, DP_OUT_CANCELLED);
    proxy_release(p);
    sy_http_resp_abort(req);
}

/* An output guardrail ended the stream: blocked (an error event ends p->body) or cut at the
 * length limit (the answer's own ending does). What is there goes out; the upstream is dropped.
 * A stream blocked before anything was sent gets a plain 400 instead. */
static void guard_stream_stop(struct proxy *p, struct dp_upstream *u)
{
    struct sy_http_request *req = p->req;
    dp_upstream_cancel(u);
    p->up = NULL;
    attempt_end(p, DP_OUT_SUCCESS); /* the deployment did its part */
    if (!p->committed && p->guard_stop == DP_GUARD_BLOCKED) {
        proxy_release(p);
        dp_guard_error(p->guard, NULL);
        return;
    }
    if (!p->committed && stream_commit(p) < 0) {
        proxy_release(p);
        sy_http_resp_abort(req);
        return;
    }
    struct sy_buf last = p->body; /* the tail and the last chunk go out in one write */
    p->body = (struct sy_buf)SY_BUF_INIT;
    proxy_release(p);
    sy_http_resp_end_with(req, last.data, last.len);
    sy_buf_free(&last);
}

static void on_body(struct dp_upstream *u, void *ud, const char *data, size_t len)
{
    struct proxy *p = ud;
    if (!p->sse) {
        /* The answer is buffered (to translate it, to retry on a bad one): bounded. */
        size_t max = p->w->cfg->max_upstream_body_bytes;
        if (p->body.len + len > max) {
            dp_upstream_cancel(u);
            p->up = NULL;
            p->status = 502;
            attempt_end(p, DP_OUT_MALFORMED);
            proxy_release(p);
            api_error(p->req, 502, "upstream_error", "upstream_body_too_large", NULL,
                      "The provider's response is larger than %zu bytes.", max);
            return;
        }
        sy_buf_append(&p->body, data, len);
        return;
    }
    /* Every event that completes in this read goes out now, in one write. */
    if (sy_sse_feed(&p->sse_parser, data, len, on_event, p) < 0) {
        dp_upstream_cancel(u);
        p->up = NULL;
        attempt_failed_or_cut(p, DP_UE_PROTOCOL, "an event of the stream is too large");
        return;
    }
    if (p->guard_stop != DP_GUARD_PASS) {
        guard_stream_stop(p, u);
        return;
    }
    if (!p->committed) {
        if (!p->has_content)
            return; /* hold back until content: the attempt can still be retried */
        if (stream_commit(p) < 0)
            client_gone(p, u);
        return;
    }
    if (p->body.len == 0)
        return;
    int r = sy_http_resp_write(p->req, p->body.data, p->body.len);
    sy_buf_reset(&p->body);
    if (r < 0) {
        client_gone(p, u);
    } else if (r == 1 && !p->paused) {
        p->paused = true;
        dp_upstream_pause(u);
    }
}

/* The stream was committed and broke: say so in the client's format, then cut it so it cannot
 * be mistaken for a complete answer. */
static void stream_cut(struct proxy *p, enum dp_upstream_error err, const char *detail)
{
    struct sy_http_request *req = p->req;
    struct sy_buf ev = SY_BUF_INIT;
    const char *msg = detail ? detail : dp_upstream_error_message(err);
    if (p->tr_active) {
        dp_tr_stream_error(&p->tr, msg, dp_upstream_error_name(err), &ev);
    } else if (p->api == DP_API_ANTHROPIC) {
        struct dp_tr_stream tr;
        dp_tr_stream_init(&tr, DP_API_ANTHROPIC, DP_API_ANTHROPIC, p->client_model, req->id, false);
        dp_tr_stream_error(&tr, msg, dp_upstream_error_name(err), &ev);
        dp_tr_stream_free(&tr);
    } else {
        sy_buf_puts(&ev, "data: {\"error\":{\"message\":");
        sy_buf_json_str(&ev, msg, strlen(msg));
        sy_buf_printf(&ev, ",\"type\":\"upstream_error\",\"param\":null,\"code\":\"%s\"}}\n\n",
                      dp_upstream_error_name(err));
    }
    sy_http_resp_write(req, ev.data, ev.len);
    sy_buf_free(&ev);
    sy_log(SY_LOG_WARN, "proxy", "request=%s deployment=%s stream cut: %s", req->id,
           p->dep ? p->dep->name : "?", dp_upstream_error_name(err));
    attempt_end(p, DP_OUT_CUT);
    p->cut = true;
    proxy_release(p);
    sy_http_resp_abort(req);
}

/* Relay what the last attempt got, as the answer: a response the provider sent (faithfully:
 * status, type, headers, body), or our error for a failure that produced none. */
static void relay_final(struct proxy *p, enum dp_upstream_error err, const char *detail)
{
    struct sy_http_request *req = p->req;
    if (err != DP_UE_NONE) {
        sy_log(SY_LOG_WARN, "proxy", "request=%s upstream failed: %s%s%s", req->id,
               dp_upstream_error_name(err), detail ? ": " : "", detail ? detail : "");
        struct sy_buf h = SY_BUF_INIT;
        add_trace_headers(p, &h);
        proxy_release(p);
        api_error_h(req, h.len ? h.data : NULL, dp_upstream_error_status(err), "upstream_error",
                    dp_upstream_error_name(err), NULL, "%s%s%s", dp_upstream_error_message(err),
                    detail ? ": " : "", detail ? detail : "");
        sy_buf_free(&h);
        return;
    }
    p->first_ns = sy_now_ns();
    if (p->up_api == p->api && p->status >= 200 && p->status < 300 && p->body.len)
        dp_usage_from_json(p->api, p->body.data, p->body.len, &p->usage);
    if (p->up_api != p->api) {
        /* A deployment of the other format answered: the client gets its own format. */
        struct sy_buf out = SY_BUF_INIT;
        if (p->status >= 200 && p->status < 300) {
            if (dp_tr_response(p->up_api, p->api, p->body.data ? p->body.data : "", p->body.len,
                               p->client_model, &out, &p->usage) < 0) {
                sy_buf_free(&out);
                struct sy_buf h = SY_BUF_INIT;
                add_trace_headers(p, &h);
                proxy_release(p);
                api_error_h(req, h.len ? h.data : NULL, 502, "upstream_error",
                            "untranslatable_response", NULL,
                            "The provider's answer could not be translated to this API.");
                sy_buf_free(&h);
                return;
            }
        } else {
            int status = p->status;
            dp_tr_error(p->up_api, p->api, p->status, p->body.data ? p->body.data : "", p->body.len,
                        &out, &status);
            p->status = status;
        }
        sy_buf_free(&p->body);
        p->body = out;
        p->ctype = "application/json";
    }
    struct sy_buf body = p->body, headers = p->headers;
    p->body = p->headers = (struct sy_buf)SY_BUF_INIT;
    add_trace_headers(p, &headers);
    const char *ctype = p->ctype ? p->ctype : "application/json";
    int status = p->status;
    if (status >= 200 && status < 300 && p->n_trace) /* the last attempt answered */
        charge_budgets(p, &p->t->deployments[p->trace[p->n_trace - 1].dep]);
    if (status >= 200 && status < 300 && dp_guard_has_output(p->guard) &&
        dp_guard_output_body(p->guard, &body) == DP_GUARD_BLOCKED) {
        proxy_release(p);
        dp_guard_error(p->guard, headers.len ? headers.data : NULL);
        sy_buf_free(&body);
        sy_buf_free(&headers);
        return;
    }
    proxy_release(p);
    /* The arena (and ctype in it) lives until the request ends inside sy_http_resp_send. */
    sy_http_resp_send(req, status, ctype, headers.len ? headers.data : NULL,
                      body.data ? body.data : "", body.len);
    sy_buf_free(&body);
    sy_buf_free(&headers);
}

static void retry_timer_closed(uv_handle_t *h)
{
    free(SY_CONTAINER_OF((uv_timer_t *)h, struct retry_timer, t));
}

static void retry_timer_cb(uv_timer_t *t)
{
    struct retry_timer *rt = SY_CONTAINER_OF(t, struct retry_timer, t);
    struct proxy *p = rt->p;
    uv_close((uv_handle_t *)t, retry_timer_closed);
    if (!p)
        return;
    p->timer = NULL;
    next_attempt(p);
}

/* Decide what follows a failed attempt that sent nothing to the client: retry on this model,
 * fall back to the next one, or answer with what we got. */
static void after_failure(struct proxy *p, enum dp_outcome o, enum dp_upstream_error err,
                          const char *detail)
{
    const struct sy_model *m = &p->t->models[p->chain[p->chain_pos]];
    const struct sy_policy *pol = policy_of(m);
    uint32_t trig = dp_outcome_triggers(o, p->status, pol);
    uint32_t failed_target = p->target_index;
    uint32_t retry_after = p->retry_after_ms;

    /* Keep this answer: if nothing better comes, it is the one the client gets. */
    sy_buf_free(&p->last_body);
    sy_buf_free(&p->last_headers);
    p->last_body = p->body;
    p->last_headers = p->headers;
    p->body = p->headers = (struct sy_buf)SY_BUF_INIT;
    p->last_status = p->status;
    p->last_ctype = p->ctype;
    p->last_err = err;
    p->last_detail = detail ? sy_arena_strndup(&p->req->arena, detail, strlen(detail)) : NULL;

    if (failed_target < 64)
        p->excluded |= 1ull << failed_target;
    /* A Retry-After beyond the cap: this deployment will not recover in time for a retry. */
    bool retry_here = !(o == DP_OUT_RATE_LIMITED && retry_after > pol->retry.retry_after_cap_ms);
    if ((trig & pol->retry.triggers) && p->tries_on_model < pol->retry.attempts &&
        dp__gov_retry_allowed(p->w, pol)) {
        p->retries++;
        uint32_t wait = dp_backoff_ms(&pol->retry, p->tries_on_model, retry_here ? retry_after : 0,
                                      dp_rand(&p->w->rnd));
        dp__gov_event(p->w, p->req, SY_EVENT_RETRY, p->t, m, NULL, dp_outcome_label(o), wait);
        if (wait == 0) {
            next_attempt(p);
            return;
        }
        p->timer = sy_xcalloc(1, sizeof(*p->timer));
        p->timer->p = p;
        uv_timer_init(&p->w->loop, &p->timer->t);
        uv_timer_start(&p->timer->t, retry_timer_cb, wait, 0);
        return;
    }
    if ((trig & pol->fallback_triggers) && p->chain_pos + 1 < p->n_chain) {
        fall_back(p, dp_outcome_label(o));
        next_attempt(p);
        return;
    }
    restore_last(p);
    relay_final(p, p->last_err, p->last_detail);
}

/* Put the kept answer of the last failed attempt back in place, to be relayed. */
static void restore_last(struct proxy *p)
{
    sy_buf_free(&p->body);
    sy_buf_free(&p->headers);
    p->body = p->last_body;
    p->headers = p->last_headers;
    p->last_body = p->last_headers = (struct sy_buf)SY_BUF_INIT;
    p->status = p->last_status;
    p->ctype = p->last_ctype;
}

static void fall_back(struct proxy *p, const char *why)
{
    const struct sy_model *from = &p->t->models[p->chain[p->chain_pos]];
    p->chain_pos++;
    p->tries_on_model = 0;
    p->excluded = p->skipped = 0;
    p->targets = NULL; /* the next model's own targets */
    p->fallbacks++;
    dp__gov_event(p->w, p->req, SY_EVENT_FALLBACK, p->t, from,
                  &p->t->models[p->chain[p->chain_pos]], why, 0);
}

/* An attempt ended before the stream was committed, or a committed stream broke. */
static void attempt_failed_or_cut(struct proxy *p, enum dp_upstream_error err, const char *detail)
{
    if (p->committed) {
        stream_cut(p, err, detail);
        return;
    }
    enum dp_outcome o = dp_classify(err, p->status, NULL, 0, false);
    attempt_end(p, o);
    after_failure(p, o, err, detail);
}

static void on_done(struct dp_upstream *u, void *ud, enum dp_upstream_error err, const char *detail)
{
    struct proxy *p = ud;
    struct sy_http_request *req = p->req;
    p->up = NULL;
    if (err != DP_UE_NONE) {
        attempt_failed_or_cut(p, err, detail);
        return;
    }
    if (p->sse) {
        size_t mark = p->body.len;
        /* A stream that ends without its final blank line: pass the tail on as it is. */
        if (sy_sse_pending(&p->sse_parser) && !p->tr_active)
            sy_buf_append(&p->body, p->sse_parser.pending.data, p->sse_parser.pending.len);
        if (p->tr_active)
            dp_tr_stream_end(&p->tr, &p->body);
        if (dp_guard_has_output(p->guard) && p->guard_stop == DP_GUARD_PASS &&
            guard_events(p, mark) == 0)
            dp_guard_stream_end(p->guard, &p->body);
        attempt_end(p, DP_OUT_SUCCESS);
        if (!p->committed && stream_commit(p) < 0) {
            proxy_release(p);
            sy_http_resp_abort(req);
            return;
        }
        struct sy_buf last = p->body; /* the tail and the last chunk go out in one write */
        p->body = (struct sy_buf)SY_BUF_INIT;
        proxy_release(p);
        sy_http_resp_end_with(req, last.data, last.len);
        sy_buf_free(&last);
        return;
    }
    enum dp_outcome o =
        dp_classify(DP_UE_NONE, p->status, p->body.data, p->body.len, p->status == 200);
    attempt_end(p, o);
    if (o == DP_OUT_SUCCESS || o == DP_OUT_CLIENT_ERROR) {
        relay_final(p, DP_UE_NONE, NULL);
        return;
    }
    after_failure(p, o, DP_UE_NONE, NULL);
}

static const struct dp_upstream_cbs upstream_cbs = {
    .on_head = on_head,
    .on_body = on_body,
    .on_done = on_done,
};

/* ============================================================================================
 * Starting attempts
 * ========================================================================================== */

static void url_encode(struct sy_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '_' || ch == '.' || ch == '~') {
            sy_buf_append(b, s, 1);
        } else {
            char esc[3] = {'%', hex[ch >> 4], hex[ch & 15]};
            sy_buf_append(b, esc, 3);
        }
    }
}

/* The path after the base URL: the client's endpoint, or its equivalent in the deployment's
 * format (a chat in either format is /chat/completions or /messages). */
static const char *upstream_suffix(const struct proxy *p)
{
    if (p->up_api == DP_API_ANTHROPIC)
        return endpoints[EP_MESSAGES].suffix;
    if (p->ep == EP_MESSAGES)
        return endpoints[EP_CHAT].suffix;
    return endpoints[p->ep].suffix;
}

static void build_upstream_head(struct proxy *p)
{
    const struct sy_deployment *d = p->dep;
    struct sy_buf *h = &p->up_head;
    char sep = '?';
    sy_buf_reset(h);
    sy_buf_puts(h, "POST ");
    sy_buf_puts(h, d->origin.path_prefix);
    if (d->format == SY_FORMAT_AZURE) {
        sy_buf_puts(h, "/openai/deployments/");
        url_encode(h, d->model);
        sy_buf_puts(h, upstream_suffix(p));
        sy_buf_puts(h, "?api-version=");
        url_encode(h, d->api_version ? d->api_version : "2024-10-21");
        sep = '&';
    } else {
        sy_buf_puts(h, upstream_suffix(p));
    }
    if (d->auth_style == SY_AUTH_QUERY && d->api_key) {
        sy_buf_append(h, &sep, 1);
        url_encode(h, d->auth_name);
        sy_buf_puts(h, "=");
        url_encode(h, d->api_key);
    }
    sy_buf_cat(h, " HTTP/1.1\r\nHost: ", d->origin.host_header,
               "\r\nContent-Type: application/json\r\nContent-Length: ", NULL);
    sy_buf_putu(h, p->up_body.len);
    sy_buf_cat(h, "\r\nAccept: ", p->stream ? "text/event-stream" : "application/json",
               "\r\nUser-Agent: switchyard/" SY_VERSION "\r\nX-Request-Id: ", p->req->id, "\r\n",
               NULL);
    if (d->api_key && d->auth_style == SY_AUTH_BEARER)
        sy_buf_cat(h, "Authorization: Bearer ", d->api_key, "\r\n", NULL);
    else if (d->api_key && d->auth_style == SY_AUTH_HEADER)
        sy_buf_cat(h, d->auth_name, ": ", d->api_key, "\r\n", NULL);
    if (d->format == SY_FORMAT_ANTHROPIC)
        sy_buf_cat(h, "anthropic-version: ", d->api_version ? d->api_version : "2023-06-01", "\r\n",
                   NULL);
    for (uint32_t i = 0; i < d->n_headers; i++)
        sy_buf_cat(h, d->headers[i].name, ": ", d->headers[i].value, "\r\n", NULL);
    sy_buf_puts(h, "\r\n");
}

static uint32_t pick_or_default(uint32_t v, uint32_t dflt)
{
    return v ? v : dflt;
}

/* Start an attempt on target <ti> of the current target set. */
static void start_attempt(struct proxy *p, const struct sy_target *targets, int ti)
{
    const struct sy_deployment *d = &p->t->deployments[targets[ti].deployment];
    const struct dp_config *cfg = p->w->cfg;
    p->dep = d;
    p->target_index = (uint32_t)ti;
    p->tries_on_model++;
    p->status = 0;
    p->ctype = NULL;
    p->sse = false;
    p->up_api = d->format == SY_FORMAT_ANTHROPIC ? DP_API_ANTHROPIC : DP_API_OPENAI;
    if (p->tr_active) {
        dp_tr_stream_free(&p->tr);
        p->tr_active = false;
    }
    p->has_content = false;
    p->retry_after_ms = 0;
    p->ttfb_ns = 0;
    sy_buf_reset(&p->body);
    sy_buf_reset(&p->headers);
    sy_sse_free(&p->sse_parser);
    p->timeouts = (struct sy_timeouts){
        .connect_ms = pick_or_default(d->timeouts.connect_ms, cfg->upstream_timeouts.connect_ms),
        .first_byte_ms =
            pick_or_default(d->timeouts.first_byte_ms, cfg->upstream_timeouts.first_byte_ms),
        .idle_ms = pick_or_default(d->timeouts.idle_ms, cfg->upstream_timeouts.idle_ms),
        .total_ms = pick_or_default(d->timeouts.total_ms, cfg->upstream_timeouts.total_ms),
    };
    if (p->timeout_override_ms) {
        p->timeouts.total_ms = p->timeout_override_ms;
        p->timeouts.first_byte_ms = SY_MIN(p->timeouts.first_byte_ms, p->timeout_override_ms);
    }

    sy_buf_reset(&p->up_body);
    if (p->up_api == p->api) {
        /* Same format: splice the model id, keep every other byte the client sent. */
        struct dp_rewrite rw = {
            .model = d->model,
            .model_len = strlen(d->model),
            .force_include_usage = p->stream && p->api == DP_API_OPENAI,
        };
        struct dp_rewrite_info info;
        if (dp_rewrite_request(p->req->body.data, p->req->body.len, &rw, &p->up_body, &info) < 0) {
            struct sy_http_request *req = p->req;
            p->dep = NULL;
            proxy_release(p);
            api_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                      "The request body could not be rewritten for the provider.");
            return;
        }
    } else {
        char *err = NULL;
        if (dp_tr_request(p->api, p->up_api, p->root, d->model, p->stream, DEFAULT_MAX_TOKENS,
                          &p->up_body, &err) < 0) {
            struct sy_http_request *req = p->req;
            p->dep = NULL;
            proxy_release(p);
            api_error(req, 400, "invalid_request_error", "untranslatable_request", NULL,
                      "The request cannot be sent to a deployment of the other API format: %s",
                      err ? err : "unsupported content");
            free(err);
            return;
        }
    }
    build_upstream_head(p);
    const struct sy_model *m = &p->t->models[p->chain[p->chain_pos]];
    int g = dp__gov_attempt_start(p->w, d, m, p->est_cost_tokens, &p->probe);
    if (g < 0) {
        /* Another worker took the last of its capacity since we picked it: pick again. */
        p->dep = NULL;
        p->tries_on_model--;
        if (g == -EAGAIN)
            p->nocap.rate_limited++;
        else
            p->nocap.circuit_open++;
        if (p->target_index < 64)
            p->skipped |= 1ull << p->target_index;
        next_attempt(p);
        return;
    }
    p->attempt_ns = sy_now_ns();
    p->up_bufs[0] = uv_buf_init(p->up_head.data, (unsigned)p->up_head.len);
    p->up_bufs[1] = uv_buf_init(p->up_body.data, (unsigned)p->up_body.len);
    int r = dp_upstream_start(p->w->upstream, &d->origin, &p->timeouts, p->up_bufs, 2,
                              &upstream_cbs, p, &p->up);
    if (r < 0) {
        /* Not even started (out of resources): as if the connection failed. */
        attempt_end(p, DP_OUT_CONNECT);
        after_failure(p, DP_OUT_CONNECT, DP_UE_CONNECT_FAILED, strerror(-r));
    }
}

static bool admits(void *ud, const struct sy_deployment *d, bool *near_limit)
{
    struct proxy *p = ud;
    uint32_t retry_after = 0;
    /* Legacy completions and embeddings have no Anthropic counterpart. */
    if (d->format == SY_FORMAT_ANTHROPIC && p->ep != EP_CHAT && p->ep != EP_MESSAGES)
        return false;
    enum dp_gov_refusal why = dp__gov_admits(p->w, p->t, d, &p->t->models[p->chain[p->chain_pos]],
                                             p->est_cost_tokens, near_limit, &retry_after);
    if (why == DP_GOV_RATE_LIMITED) {
        p->nocap.rate_limited++;
        if (!p->nocap.retry_after_ms || retry_after < p->nocap.retry_after_ms)
            p->nocap.retry_after_ms = retry_after;
    } else if (why == DP_GOV_CIRCUIT_OPEN) {
        p->nocap.circuit_open++;
    }
    return why == DP_GOV_ADMITTED;
}

static uint64_t inflight(void *ud, const struct sy_deployment *d)
{
    struct proxy *p = ud;
    return dp__gov_inflight(p->w, d);
}

static uint64_t ttfb_us(void *ud, const struct sy_deployment *d)
{
    struct proxy *p = ud;
    return dp__gov_ttfb_us(p->w, d);
}

/* Answer when no model of the chain had a deployment to try. */
static void no_deployment(struct proxy *p)
{
    struct sy_http_request *req = p->req;
    const char *name = p->t->models[p->chain[0]].name;
    if (p->last_status || p->last_err) {
        /* Something was tried: its answer is more useful than ours. */
        restore_last(p);
        relay_final(p, p->last_err, p->last_detail);
        return;
    }
    struct no_capacity nc = p->nocap;
    proxy_release(p);
    if (nc.rate_limited) {
        uint32_t secs = (nc.retry_after_ms + 999) / 1000;
        char extra[48];
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", secs ? secs : 1);
        dp__gov_event(p->w, req, SY_EVENT_RATE_LIMITED, p->t, &p->t->models[p->chain[0]], NULL,
                      "every deployment at its limit", 0);
        api_error_h(req, extra, 429, "requests", "rate_limit_exceeded", NULL,
                    "Rate limit reached for model `%s`: every deployment that can serve it is at "
                    "its limit. Retry after %u s.",
                    name, secs ? secs : 1);
        return;
    }
    api_error(req, 503, "service_unavailable", "no_healthy_deployment", "model",
              "The model `%s` has no deployment that can take the request now%s.", name,
              nc.circuit_open ? " (circuit breakers open)" : "");
}

/* Try the next deployment of the current model, or the next model of the chain. */
static void next_attempt(struct proxy *p)
{
    while (p->chain_pos < p->n_chain) {
        const struct sy_model *m = &p->t->models[p->chain[p->chain_pos]];
        const struct sy_policy *pol = policy_of(m);
        const struct sy_target *targets = p->targets ? p->targets : m->targets;
        uint32_t n = p->targets ? p->n_targets : m->n_targets;
        if (p->tries_on_model < pol->retry.attempts) {
            struct dp_pick_env env = {admits, inflight, ttfb_us, p};
            uint64_t rnd = dp_rand(&p->w->rnd);
            int ti = dp_pick(p->t, targets, n, pol->balance, p->excluded | p->skipped, &env, rnd,
                             p->w->rr++);
            /* Every healthy target failed once already: a retry may go to one of them again. */
            if (ti < 0 && p->excluded)
                ti = dp_pick(p->t, targets, n, pol->balance, p->skipped, &env, rnd, p->w->rr++);
            if (ti >= 0) {
                start_attempt(p, targets, ti);
                return;
            }
        }
        if (p->chain_pos + 1 >= p->n_chain)
            break;
        fall_back(p, p->tries_on_model ? "attempts_exhausted" : "no_capacity");
    }
    no_deployment(p);
}

/* The chain of models to try: <m>, then its fallbacks, then theirs, each at most once. */
static void build_chain(struct proxy *p, uint32_t m)
{
    p->n_chain = 0;
    uint32_t queue[SY_ARRAY_LEN(p->chain)];
    uint32_t qn = 0;
    queue[qn++] = m;
    for (uint32_t qi = 0; qi < qn && p->n_chain < SY_ARRAY_LEN(p->chain); qi++) {
        uint32_t cur = queue[qi];
        bool seen = false;
        for (uint32_t k = 0; k < p->n_chain && !seen; k++)
            seen = p->chain[k] == cur;
        if (seen)
            continue;
        p->chain[p->n_chain++] = cur;
        const struct sy_policy *pol = &p->t->models[cur].policy;
        for (uint32_t f = 0; f < pol->n_fallbacks && qn < SY_ARRAY_LEN(queue); f++)
            queue[qn++] = pol->fallbacks[f];
    }
}

/* What routing rules look at, read from the parsed body. */
void dp__route_ctx_fill(struct dp_route_ctx *ctx, json_t *root)
{
    json_t *msgs = json_object_get(root, "messages");
    json_t *tools = json_object_get(root, "tools");
    ctx->has_tools =
        (json_is_array(tools) && json_array_size(tools) > 0) || json_object_get(root, "functions");
    ctx->est_tokens = 0;
    if (json_is_array(msgs)) {
        size_t i;
        json_t *msg;
        ctx->n_messages = (uint32_t)json_array_size(msgs);
        json_array_foreach(msgs, i, msg)
        {
            const char *role = json_string_value(json_object_get(msg, "role"));
            json_t *content = json_object_get(msg, "content");
            bool user = role && strcmp(role, "user") == 0;
            ctx->n_user_turns += user;
            if (json_is_string(content)) {
                ctx->est_tokens +=
                    dp_estimate_tokens(json_string_value(content), json_string_length(content));
                if (user) {
                    ctx->text = json_string_value(content);
                    ctx->text_len = json_string_length(content);
                }
            } else if (json_is_array(content)) {
                size_t j;
                json_t *part;
                json_array_foreach(content, j, part)
                {
                    const char *type = json_string_value(json_object_get(part, "type"));
                    json_t *text = json_object_get(part, "text");
                    if (type && (strcmp(type, "image_url") == 0 || strcmp(type, "image") == 0))
                        ctx->has_images = true;
                    if (json_is_string(text)) {
                        ctx->est_tokens +=
                            dp_estimate_tokens(json_string_value(text), json_string_length(text));
                        if (user) {
                            ctx->text = json_string_value(text);
                            ctx->text_len = json_string_length(text);
                        }
                    }
                }
            }
        }
    } else {
        json_t *prompt = json_object_get(root, "prompt");
        if (!prompt)
            prompt = json_object_get(root, "input");
        if (json_is_string(prompt)) {
            ctx->text = json_string_value(prompt);
            ctx->text_len = json_string_length(prompt);
            ctx->est_tokens = dp_estimate_tokens(ctx->text, ctx->text_len);
        }
        ctx->n_messages = 1;
        ctx->n_user_turns = 1;
    }
}

/* Input guardrails on the parsed request <root> (taken when refused): false when the call was
 * refused (answered); a body they changed (redacted, max_tokens capped) becomes the request's
 * body, which the rewrite and the translation start from. */
static bool guard_input(struct proxy *p, json_t *root, uint32_t model)
{
    struct sy_http_request *req = p->req;
    enum dp_guard_verdict v = dp_guard_input(p->guard, root);
    if (v == DP_GUARD_BLOCKED) {
        p->chain[0] = model; /* counted on its model with the outcome "guardrail" */
        p->n_chain = 1;
        p->root = root;
        req->handler = p;
        proxy_release(p);
        dp_guard_error(p->guard, NULL);
        return false;
    }
    if (v == DP_GUARD_CHANGED) {
        char *text = json_dumps(root, JSON_COMPACT);
        SY_REQUIRE(text);
        sy_buf_reset(&req->body);
        sy_buf_puts(&req->body, text);
        free(text);
    }
    return true;
}

static void handle_model_call(struct sy_http_request *req, enum endpoint ep)
{
    const struct sy_key *key;
    if (!authenticate(req, &key))
        return;
    if (req->method != HTTP_POST) {
        method_not_allowed(req, "POST");
        return;
    }
    if (req->body.len == 0) {
        api_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                  "The request body is empty; send a JSON object.");
        return;
    }
    /* A raw NUL is never JSON (in a string it must be \u0000), but jansson skips one after a
     * literal or a number ("false\0,"), which the rewrite then refuses (found by
     * fuzz_json_request): refuse it here, saying why. */
    const char *nul = memchr(req->body.data, '\0', req->body.len);
    if (nul) {
        api_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                  "The request body is not valid JSON: a NUL byte at offset %zu.",
                  (size_t)(nul - req->body.data));
        return;
    }
    json_error_t jerr;
    json_t *root = json_loadb(req->body.data, req->body.len, 0, &jerr);
    if (!root) {
        api_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                  "The request body is not valid JSON: %s (line %d, column %d).", jerr.text,
                  jerr.line, jerr.column);
        return;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        api_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                  "The request body must be a JSON object.");
        return;
    }
    json_t *jmodel = json_object_get(root, "model");
    json_t *jstream = json_object_get(root, "stream");
    json_t *jso = json_object_get(root, "stream_options");
    if (!json_is_string(jmodel) || json_string_length(jmodel) == 0) {
        json_decref(root);
        api_error(req, 400, "invalid_request_error", "missing_required_parameter", "model",
                  "You must provide a model parameter (a string).");
        return;
    }
    if (jstream && !json_is_boolean(jstream) && !json_is_null(jstream)) {
        json_decref(root);
        api_error(req, 400, "invalid_request_error", "invalid_type", "stream",
                  "'stream' must be a boolean.");
        return;
    }
    if (!json_object_get(root, endpoints[ep].required)) {
        json_decref(root);
        api_error(req, 400, "invalid_request_error", "missing_required_parameter",
                  endpoints[ep].required, "Missing required parameter: '%s'.",
                  endpoints[ep].required);
        return;
    }
    bool stream = json_is_true(jstream) && endpoints[ep].can_stream;
    json_t *jmax = json_object_get(root, "max_tokens");
    if (ep == EP_MESSAGES && (!json_is_integer(jmax) || json_integer_value(jmax) < 1)) {
        json_decref(root);
        api_error(req, 400, "invalid_request_error", "invalid_value", "max_tokens",
                  "max_tokens: a whole number of at least 1 is required.");
        return;
    }
    if (jso && !json_is_object(jso) && !json_is_null(jso)) {
        json_decref(root);
        api_error(req, 400, "invalid_request_error", "invalid_type", "stream_options",
                  "'stream_options' must be an object.");
        return;
    }
    if (!key_allows(req, key, json_string_value(jmodel), json_string_length(jmodel))) {
        json_decref(root);
        return;
    }
    const struct sy_model *m = sy_table_find_model(dp__req_table(req), json_string_value(jmodel),
                                                   json_string_length(jmodel));
    if (!m) {
        api_error(req, 404, "invalid_request_error", "model_not_found", "model",
                  "The model `%s` does not exist or you do not have access to it.",
                  json_string_value(jmodel));
        json_decref(root);
        return;
    }
    struct proxy *p = sy_arena_alloc(&req->arena, sizeof(*p));
    memset(p, 0, sizeof(*p));
    p->req = req;
    p->w = dp__req_worker(req);
    p->t = dp__req_table(req);
    p->key = key;
    p->ep = ep;
    p->api = req_api(req);
    p->stream = stream;
    p->client_model =
        sy_arena_strndup(&req->arena, json_string_value(jmodel), json_string_length(jmodel));
    p->client_usage = json_is_true(json_object_get(jso, "include_usage"));
    p->guard = dp_guard_begin(req, m, key, p->api);
    if (p->guard && !guard_input(p, root, (uint32_t)(m - p->t->models)))
        return;
    jmax = json_object_get(root, "max_tokens"); /* a guardrail may have capped it */

    /* Routing rules look at the request only when the model has some: the parse of messages
     * and the classifier cost nothing otherwise. */
    uint32_t mi = (uint32_t)(m - p->t->models);
    struct dp_route_ctx ctx = {.req = req, .key = key, .complexity_milli = -1};
    const struct sy_policy *pol = policy_of(m);
    /* The messages are walked only for routing rules; limits make do with the body's size. */
    if (pol->n_rules)
        dp__route_ctx_fill(&ctx, root);
    else
        ctx.est_tokens = (uint32_t)SY_MIN(req->body.len / 4, (size_t)UINT32_MAX);
    if (!jmax)
        jmax = json_object_get(root, "max_completion_tokens");
    p->est_cost_tokens =
        ctx.est_tokens + (json_is_integer(jmax) && json_integer_value(jmax) > 0
                              ? (uint32_t)SY_MIN(json_integer_value(jmax), 1u << 24)
                              : 0);
    if (!budgets_admit(req, p->t, key)) {
        json_decref(root);
        return;
    }
    uint32_t key_wait;
    const char *key_limit = NULL;
    if (!dp__gov_key_admits(p->w, key, m, p->est_cost_tokens, &p->key_grant, &key_wait,
                            &key_limit)) {
        json_decref(root);
        uint32_t secs = (key_wait + 999) / 1000;
        char extra[48];
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", secs ? secs : 1);
        api_error_h(req, extra, 429, "requests", "rate_limit_exceeded", NULL,
                    "Rate limit reached for this API key (%s). Retry after %u s.", key_limit,
                    secs ? secs : 1);
        return;
    }
    const struct sy_rule *rule = pol->n_rules ? dp_route_rules(pol, &ctx) : NULL;
    p->root = root; /* kept for a translation to another format; released with the call */
    if (rule) {
        if (rule->model >= 0) {
            mi = (uint32_t)rule->model;
        } else {
            p->targets = rule->targets;
            p->n_targets = rule->n_targets;
        }
        dp__gov_event(p->w, req, SY_EVENT_FALLBACK, p->t, m, &p->t->models[mi], rule->name, 0);
    }
    build_chain(p, mi);

    /* A per-request timeout, within the operator's bound. */
    size_t tl;
    const char *tv = sy_http_req_header(req, "x-switchyard-timeout-ms", &tl);
    uint64_t tms;
    if (tv && policy_of(&p->t->models[mi])->max_timeout_ms && sy_parse_u64(tv, tl, &tms) && tms)
        p->timeout_override_ms =
            (uint32_t)SY_MIN(tms, (uint64_t)policy_of(&p->t->models[mi])->max_timeout_ms);

    req->handler = p;
    req->on_abort = proxy_abort;
    req->on_drain = proxy_drain;
    if (p->t->request_log == SY_REQUEST_LOG_BODIES && key && key->log_bodies) {
        req->capture = &p->log_resp;
        req->capture_max = SY_REQLOG_BODY_MAX;
    }
    dp__gov_request(p->w, policy_of(&p->t->models[mi]));
    next_attempt(p);
}

/* ============================================================================================
 * Accounting
 * ========================================================================================== */

void dp__proxy_request_done(struct sy_http_request *req)
{
    struct proxy *p = req->handler;
    if (!p || !p->t)
        return;
    const struct sy_deployment *d = NULL;
    enum sy_outcome o;
    int st = req->resp_status;
    if (p->n_trace)
        d = &p->t->deployments[p->trace[p->n_trace - 1].dep];
    if (dp_guard_blocked(p->guard))
        o = SY_OUTCOME_GUARDRAIL;
    else if (p->cut)
        o = SY_OUTCOME_STREAM_CUT;
    else if (st == 0 || !req->resp_done)
        o = SY_OUTCOME_CANCELLED;
    else if (st >= 200 && st < 300)
        o = SY_OUTCOME_SUCCESS;
    else if (p->n_trace && st != 503)
        o = dp__gov_outcome((enum dp_outcome)p->trace[p->n_trace - 1].outcome);
    else if (st == 429)
        o = SY_OUTCOME_RATE_LIMITED;
    else if (st == 503)
        o = SY_OUTCOME_UNAVAILABLE;
    else
        o = SY_OUTCOME_CLIENT_ERROR;
    uint64_t now = sy_now_ns();
    /* TPM limits reserved an estimate; the provider's count is what was really used. */
    uint64_t used = p->usage.prompt_tokens + p->usage.completion_tokens;
    bool served = p->n_trace && p->trace[p->n_trace - 1].outcome == DP_OUT_SUCCESS;
    dp__gov_tpm_settle(p->w, served ? d : NULL, p->key, p->est_cost_tokens, &p->key_grant,
                       p->usage.present ? used : p->est_cost_tokens);
    dp__gov_account(p->w, &p->t->models[p->chain[0]], d, p->key, o, p->usage.prompt_tokens,
                    p->usage.completion_tokens, now - req->start_ns,
                    p->first_ns ? p->first_ns - req->start_ns : 0);
    charge_budgets(p, d);
    struct dp_reqlog_facts f = {
        .model = &p->t->models[p->chain[0]],
        .dep = d,
        .key = p->key,
        .outcome = o,
        .status = st,
        .attempts = p->n_trace + p->n_trace_dropped,
        .stream = p->stream,
        .prompt_tokens = p->usage.prompt_tokens,
        .completion_tokens = p->usage.completion_tokens,
        .total_ns = now - req->start_ns,
        .first_byte_ns = p->first_ns ? p->first_ns - req->start_ns : 0,
        .resp = req->capture ? &p->log_resp : NULL,
        .resp_size = req->capture_total,
    };
    dp__gov_reqlog(p->w, p->t, req, &f);
    sy_buf_free(&p->log_resp);
    req->capture = NULL;
    req->handler = NULL;
}

/* ============================================================================================
 * Dispatch
 * ========================================================================================== */

static bool path_is(const struct sy_http_request *req, const char *path)
{
    return strcmp(req->path, path) == 0;
}

void dp__handle_request(struct sy_http_request *req)
{
    for (int ep = 0; ep < EP_MAX; ep++) {
        if (path_is(req, endpoints[ep].path)) {
            handle_model_call(req, (enum endpoint)ep);
            return;
        }
    }
    bool get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    if (path_is(req, "/healthz") && get) {
        send_json(req, 200, "{\"status\":\"ok\"}\n");
    } else if (path_is(req, "/readyz") && get) {
        handle_readyz(req);
    } else if (path_is(req, "/v1/models") && get) {
        handle_models(req);
    } else if (path_is(req, "/healthz") || path_is(req, "/readyz") || path_is(req, "/v1/models")) {
        method_not_allowed(req, "GET");
    } else {
        api_error(req, 404, "invalid_request_error", "unknown_url", NULL,
                  "Unknown request URL: %s %s.", llhttp_method_name(req->method), req->path);
    }
}
