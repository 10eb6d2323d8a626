/* SPDX-License-Identifier: Apache-2.0 */
/** Governance decisions (see govern.h). */

#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "classify.h"
#include "govern.h"
#include "rewrite.h"
#include "sy/util.h"

static const char *const outcome_labels[DP_OUT_MAX] = {
#define X(name, label) [DP_OUT_##name] = label,
    DP_OUTCOMES(X)
#undef X
};

const char *dp_outcome_label(enum dp_outcome o)
{
    return o < DP_OUT_MAX ? outcome_labels[o] : "unknown";
}

/* Providers say "context length", "context_length_exceeded", "maximum context", "too many
 * tokens", "prompt is too long": any of these in a 400 body reads as a context-length error. */
static bool says_context_length(const char *body, size_t len)
{
    static const char *const cues[] = {"context_length", "context length", "maximum context",
                                       "prompt is too long", "too many tokens",
                                       "reduce the length"};
    if (!body)
        return false;
    for (size_t i = 0; i < SY_ARRAY_LEN(cues); i++) {
        size_t cl = strlen(cues[i]);
        for (size_t j = 0; j + cl <= len; j++)
            if (strncasecmp(body + j, cues[i], cl) == 0)
                return true;
    }
    return false;
}

enum dp_outcome dp_classify(enum dp_upstream_error err, int status, const char *body, size_t len,
                            bool json_expected)
{
    switch (err) {
    case DP_UE_NONE:
        break;
    case DP_UE_CONNECT_TIMEOUT:
    case DP_UE_FIRST_BYTE_TIMEOUT:
    case DP_UE_IDLE_TIMEOUT:
    case DP_UE_TOTAL_TIMEOUT:
        return DP_OUT_TIMEOUT;
    case DP_UE_DNS:
    case DP_UE_CONNECT_REFUSED:
    case DP_UE_CONNECT_FAILED:
    case DP_UE_TLS_HANDSHAKE:
    case DP_UE_TLS_VERIFY:
    case DP_UE_POOL_FULL:
    case DP_UE_SEND_FAILED:
    case DP_UE_RESET:
        return DP_OUT_CONNECT;
    default:
        return DP_OUT_MALFORMED; /* closed early, protocol errors, oversized responses */
    }
    if (status == 429)
        return DP_OUT_RATE_LIMITED;
    if (status >= 500)
        return DP_OUT_SERVER_ERROR;
    if (status == 400 && says_context_length(body, len))
        return DP_OUT_CONTEXT_LENGTH;
    if (status == 413)
        return DP_OUT_CONTEXT_LENGTH;
    if (status >= 400)
        return DP_OUT_CLIENT_ERROR;
    /* A structural scan (strings, nesting, the object's syntax), not a full parse: it catches
     * a truncated or garbled body at a fraction of the cost, on every answer. */
    if (json_expected && status == 200 && (!body || dp_json_top_members(body, len, NULL, NULL) < 0))
        return DP_OUT_MALFORMED;
    return DP_OUT_SUCCESS;
}

uint32_t dp_outcome_triggers(enum dp_outcome o, int status, const struct sy_policy *pol)
{
    uint32_t t = 0;
    switch (o) {
    case DP_OUT_CONNECT: t = SY_TRIGGER_CONNECT; break;
    case DP_OUT_TIMEOUT: t = SY_TRIGGER_TIMEOUT; break;
    case DP_OUT_RATE_LIMITED: t = SY_TRIGGER_429; break;
    case DP_OUT_SERVER_ERROR: t = SY_TRIGGER_5XX; break;
    case DP_OUT_CONTEXT_LENGTH: t = SY_TRIGGER_CONTEXT_LENGTH; break;
    case DP_OUT_MALFORMED: t = SY_TRIGGER_MALFORMED; break;
    default: break;
    }
    for (uint32_t i = 0; pol && i < pol->n_statuses && status; i++)
        if (pol->statuses[i] == status)
            t |= SY_TRIGGER_STATUS;
    return t;
}

bool dp_outcome_is_failure(enum dp_outcome o)
{
    return o == DP_OUT_SERVER_ERROR || o == DP_OUT_TIMEOUT || o == DP_OUT_CONNECT ||
           o == DP_OUT_MALFORMED || o == DP_OUT_CUT;
}

uint32_t dp_backoff_ms(const struct sy_retry_policy *r, uint32_t retry_no, uint32_t retry_after_ms,
                       uint64_t rnd)
{
    uint64_t cap = r->backoff_ms;
    for (uint32_t i = 1; i < retry_no && cap < r->max_backoff_ms; i++)
        cap *= 2;
    if (cap > r->max_backoff_ms)
        cap = r->max_backoff_ms;
    uint32_t wait = cap ? (uint32_t)(rnd % (cap + 1)) : 0;
    if (retry_after_ms) {
        uint32_t ra = SY_MIN(retry_after_ms, r->retry_after_cap_ms);
        wait = SY_MAX(wait, ra);
    }
    return wait;
}

uint32_t dp_retry_after_ms(const char *v, size_t len)
{
    uint64_t secs;
    while (len && (*v == ' ' || *v == '\t'))
        v++, len--;
    while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (len == 0)
        return 0;
    if (sy_parse_u64(v, len, &secs))
        return secs > 86400 ? 86400000u : (uint32_t)(secs * 1000);
    char date[64];
    if (len >= sizeof(date))
        return 0;
    memcpy(date, v, len);
    date[len] = '\0';
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (!strptime(date, "%a, %d %b %Y %H:%M:%S GMT", &tm))
        return 0;
    time_t when = timegm(&tm), now = time(NULL);
    return when > now ? (uint32_t)SY_MIN((uint64_t)(when - now) * 1000, 86400000u) : 0;
}

/* ============================================================================================
 * Routing rules
 * ========================================================================================== */

static bool value_in(const struct sy_rule_cond *c, const char *v, size_t len)
{
    if (!v)
        return false;
    for (uint32_t i = 0; i < c->n_values; i++)
        if (strlen(c->values[i]) == len && memcmp(c->values[i], v, len) == 0)
            return true;
    return false;
}

static int32_t complexity(struct dp_route_ctx *ctx)
{
    if (ctx->complexity_milli < 0) {
        struct dp_complexity_input in = {
            .text = ctx->text,
            .len = ctx->text_len,
            .n_messages = ctx->n_messages,
            .n_user_turns = ctx->n_user_turns,
            .has_tools = ctx->has_tools,
            .has_images = ctx->has_images,
            .est_prompt_tokens = ctx->est_tokens,
        };
        ctx->complexity_milli = (int32_t)(dp_complexity_score(&in, NULL) * 1000.0 + 0.5);
    }
    return ctx->complexity_milli;
}

static bool cond_holds(const struct sy_rule_cond *c, struct dp_route_ctx *ctx)
{
    const char *v;
    size_t len;
    switch (c->op) {
    case SY_RULE_TOKENS_BELOW: return ctx->est_tokens < c->value;
    case SY_RULE_TOKENS_ABOVE: return ctx->est_tokens > c->value;
    case SY_RULE_MESSAGES_BELOW: return ctx->n_messages < c->value;
    case SY_RULE_MESSAGES_ABOVE: return ctx->n_messages > c->value;
    case SY_RULE_HAS_TOOLS: return ctx->has_tools == (c->value != 0);
    case SY_RULE_HAS_IMAGES: return ctx->has_images == (c->value != 0);
    case SY_RULE_COMPLEXITY_BELOW: return complexity(ctx) < c->value;
    case SY_RULE_COMPLEXITY_ABOVE: return complexity(ctx) > c->value;
    case SY_RULE_HEADER:
        v = sy_http_req_header(ctx->req, c->name, &len);
        return value_in(c, v, v ? len : 0);
    case SY_RULE_TIER:
        v = ctx->key ? ctx->key->tier : NULL;
        return value_in(c, v, v ? strlen(v) : 0);
    case SY_RULE_AGENT:
        v = ctx->key ? ctx->key->agent : NULL;
        return value_in(c, v, v ? strlen(v) : 0);
    case SY_RULE_USER:
        v = ctx->key ? ctx->key->user : NULL;
        return value_in(c, v, v ? strlen(v) : 0);
    default: return false;
    }
}

const struct sy_rule *dp_route_rules(const struct sy_policy *pol, struct dp_route_ctx *ctx)
{
    for (uint32_t i = 0; i < pol->n_rules; i++) {
        const struct sy_rule *r = &pol->rules[i];
        bool all = true;
        for (uint32_t j = 0; j < r->n_conds && all; j++)
            all = cond_holds(&r->conds[j], ctx);
        if (all)
            return r;
    }
    return NULL;
}

/* ============================================================================================
 * Picking a deployment
 * ========================================================================================== */

int dp_pick(const struct sy_table *t, const struct sy_target *targets, uint32_t n,
            enum sy_balance balance, uint64_t exclude, const struct dp_pick_env *env, uint64_t rnd,
            uint64_t rr)
{
    /* Two passes: first only deployments below their shed share, then those near their limit
     * too, so traffic moves to siblings before a deployment is exhausted. */
    for (int pass = 0; pass < 2; pass++) {
        int best = -1;
        uint64_t best_key = UINT64_MAX, total = 0;
        uint32_t eligible[64];
        uint32_t n_eligible = 0;
        for (uint32_t i = 0; i < n && n_eligible < SY_ARRAY_LEN(eligible); i++) {
            const struct sy_deployment *d = &t->deployments[targets[i].deployment];
            if (!d->enabled || (i < 64 && (exclude >> i) & 1))
                continue;
            bool near = false;
            if (env && env->admits && !env->admits(env->ud, d, &near))
                continue;
            if (near && pass == 0)
                continue;
            if (balance == SY_BALANCE_WEIGHTED && targets[i].weight == 0)
                continue;
            eligible[n_eligible++] = i;
            total += targets[i].weight;
            uint64_t key = 0;
            switch (balance) {
            case SY_BALANCE_LEAST_CONNECTIONS:
                key = env && env->inflight ? env->inflight(env->ud, d) : 0;
                break;
            case SY_BALANCE_LATENCY:
                key = env && env->ttfb_us ? env->ttfb_us(env->ud, d) : 0;
                break;
            case SY_BALANCE_COST:
                key = (uint64_t)((d->price.input + d->price.output) * 1e6);
                break;
            default:
                break;
            }
            if (best < 0 || key < best_key) {
                best = (int)i;
                best_key = key;
            }
        }
        if (n_eligible == 0)
            continue;
        switch (balance) {
        case SY_BALANCE_WEIGHTED: {
            uint64_t x = total ? rnd % total : 0;
            for (uint32_t k = 0; k < n_eligible; k++) {
                uint32_t w = targets[eligible[k]].weight;
                if (x < w)
                    return (int)eligible[k];
                x -= w;
            }
            return (int)eligible[n_eligible - 1];
        }
        case SY_BALANCE_ROUND_ROBIN:
            return (int)eligible[rr % n_eligible];
        default:
            /* Ties on the key (idle deployments, equal prices) rotate instead of piling up. */
            if (best_key == 0 || balance == SY_BALANCE_COST) {
                uint32_t ties[64], n_ties = 0;
                for (uint32_t k = 0; k < n_eligible; k++) {
                    const struct sy_deployment *d = &t->deployments[targets[eligible[k]].deployment];
                    uint64_t key = balance == SY_BALANCE_LEAST_CONNECTIONS
                                       ? (env && env->inflight ? env->inflight(env->ud, d) : 0)
                                   : balance == SY_BALANCE_LATENCY
                                       ? (env && env->ttfb_us ? env->ttfb_us(env->ud, d) : 0)
                                       : (uint64_t)((d->price.input + d->price.output) * 1e6);
                    if (key == best_key)
                        ties[n_ties++] = eligible[k];
                }
                if (n_ties > 1)
                    return (int)ties[rr % n_ties];
            }
            return best;
        }
    }
    return -1;
}
