/* SPDX-License-Identifier: Apache-2.0 */
/* OpenAI Chat Completions <-> Anthropic Messages translation (translate.h).
 *
 * Requests and JSON responses are translated on jansson trees: they come once per request and
 * their structure (messages, content blocks, tool calls) needs real rebuilding. They are written
 * out with our own serializer, which prints reals in their shortest round-trip form, so tool
 * arguments keep 0.1 as 0.1 and not jansson's 0.10000000000000001.
 *
 * Streams are the hot path: one call per upstream event, and the budget is a fraction of a
 * microsecond. Events are not parsed into trees; a small scanner finds the few members an
 * event type needs, in one pass over the object, and string values are copied as their raw
 * JSON literals (both formats carry text as JSON strings, so a literal valid in one is valid in
 * the other, escapes and all). Nothing is allocated per event; the constant head of an OpenAI
 * chunk is formatted once per stream. Every choice for a field one format lacks is written down
 * in docs/translation.md. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "rewrite.h"
#include "translate.h"
#include "sy/util.h"

#define PUT(b, lit) sy_buf_append((b), (lit), sizeof(lit) - 1)

/* ============================================================================================
 * A scanner for the members of small JSON objects (the stream fast path)
 * ========================================================================================== */

/* One JSON value: its bytes [p, e). p is NULL when the value is absent. */
struct jv {
    const char *p, *e;
};

struct key {
    const char *s;
    size_t n;
};
#define KEY(lit)                                                                                   \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }

static inline bool is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline const char *skip_ws(const char *p, const char *e)
{
    while (p < e && is_ws(*p))
        p++;
    return p;
}

/* <p> is at the first byte of a value; returns the byte after it, or NULL. Containers are
 * skipped by counting brackets (with strings skipped whole); scalars run to a delimiter. */
static const char *skip_val(const char *p, const char *e)
{
    if (p >= e)
        return NULL;
    if (*p == '"')
        return dp_json_skip_string(p, e);
    if (*p == '{' || *p == '[') {
        size_t depth = 0;
        while (p < e) {
            char c = *p;
            if (c == '"') {
                p = dp_json_skip_string(p, e);
                if (p == NULL)
                    return NULL;
                continue;
            }
            if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        return NULL;
    }
    const char *s = p;
    while (p < e && *p != ',' && *p != '}' && *p != ']' && !is_ws(*p))
        p++;
    return p > s ? p : NULL;
}

/* Find the values of the <n> <keys> among the members of the object <obj>, in one pass; an
 * absent key gets p == NULL (the last duplicate wins). Keys are compared as raw bytes, which is
 * right for the escape-free keys of both APIs. False when <obj> is not an object. */
static bool obj_scan(struct jv obj, const struct key *keys, size_t n, struct jv *out)
{
    for (size_t i = 0; i < n; i++)
        out[i].p = out[i].e = NULL;
    const char *p = obj.p, *e = obj.e;
    if (p == NULL || p >= e || *p != '{')
        return false;
    p = skip_ws(p + 1, e);
    if (p < e && *p == '}')
        return true;
    for (;;) {
        if (p >= e || *p != '"')
            return false;
        const char *ks = p + 1, *ke = dp_json_skip_string(p, e);
        if (ke == NULL)
            return false;
        size_t kl = (size_t)(ke - 1 - ks);
        p = skip_ws(ke, e);
        if (p >= e || *p != ':')
            return false;
        p = skip_ws(p + 1, e);
        const char *ve = skip_val(p, e);
        if (ve == NULL)
            return false;
        for (size_t i = 0; i < n; i++) {
            if (keys[i].n == kl && memcmp(keys[i].s, ks, kl) == 0) {
                out[i].p = p;
                out[i].e = ve;
                break;
            }
        }
        p = skip_ws(ve, e);
        if (p < e && *p == ',') {
            p = skip_ws(p + 1, e);
            continue;
        }
        return p < e && *p == '}';
    }
}

struct jarr {
    const char *p, *e;
    bool first;
};

static bool arr_begin(struct jv a, struct jarr *it)
{
    if (a.p == NULL || a.p >= a.e || *a.p != '[')
        return false;
    it->p = skip_ws(a.p + 1, a.e);
    it->e = a.e;
    it->first = true;
    return true;
}

/* The next element of the array: 1 with <el> set, 0 at the end, -1 on bad syntax. */
static int arr_next(struct jarr *it, struct jv *el)
{
    const char *p = it->p, *e = it->e;
    if (p >= e)
        return -1;
    if (*p == ']')
        return 0;
    if (!it->first) {
        if (*p != ',')
            return -1;
        p = skip_ws(p + 1, e);
    }
    it->first = false;
    const char *ve = skip_val(p, e);
    if (ve == NULL)
        return -1;
    el->p = p;
    el->e = ve;
    it->p = skip_ws(ve, e);
    return 1;
}

static inline bool jv_is(struct jv v, char c)
{
    return v.p != NULL && *v.p == c;
}

/* A string value with at least one character. */
static inline bool jv_nonempty_str(struct jv v)
{
    return jv_is(v, '"') && v.e - v.p > 2;
}

/* The string value is exactly <lit> (escape-free, as the enums of both APIs are). */
static bool jv_eq(struct jv v, const char *lit)
{
    size_t n = strlen(lit);
    return jv_is(v, '"') && (size_t)(v.e - v.p) == n + 2 && memcmp(v.p + 1, lit, n) == 0;
}

static bool jv_u64(struct jv v, uint64_t *out)
{
    return v.p != NULL && sy_parse_u64(v.p, (size_t)(v.e - v.p), out);
}

/* The whole of <d>/<n> as a value, surrounding whitespace trimmed. */
static struct jv jv_of(const char *d, size_t n)
{
    struct jv v = {d, d + n};
    v.p = skip_ws(v.p, v.e);
    while (v.e > v.p && is_ws(v.e[-1]))
        v.e--;
    return v;
}

/* A value cut out of the upstream's document goes into ours repaired: the scanner does not
 * check what is inside strings, and a client's JSON parser would reject raw control characters
 * or bytes that are not UTF-8 (found by the fuzz_translate_stream_* targets). */
static inline void put_jv(struct sy_buf *b, struct jv v)
{
    sy_buf_json_repair(b, v.p, (size_t)(v.e - v.p));
}

static void put_u64(struct sy_buf *b, uint64_t v)
{
    char t[24];
    size_t i = sizeof(t);
    do {
        t[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    sy_buf_append(b, t + i, sizeof(t) - i);
}

/* ============================================================================================
 * Serializing jansson trees
 * ========================================================================================== */

/* The shortest %g spelling that reads back as the same double, always with a '.' or exponent so
 * it stays a real. */
static void put_real(struct sy_buf *b, double d)
{
    char t[40];
    if (!isfinite(d)) {
        PUT(b, "null");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(t, sizeof(t), "%.*g", prec, d);
        if (strtod(t, NULL) == d)
            break;
    }
    sy_buf_puts(b, t);
    if (strpbrk(t, ".eE") == NULL)
        PUT(b, ".0");
}

/* Compact JSON of <v>, object members in insertion order. */
static void put_json(struct sy_buf *b, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        bool first = true;
        PUT(b, "{");
        json_object_foreach((json_t *)v, k, x)
        {
            if (!first)
                PUT(b, ",");
            first = false;
            sy_buf_json_str(b, k, strlen(k));
            PUT(b, ":");
            put_json(b, x);
        }
        PUT(b, "}");
        break;
    }
    case JSON_ARRAY:
        PUT(b, "[");
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i)
                PUT(b, ",");
            put_json(b, json_array_get(v, i));
        }
        PUT(b, "]");
        break;
    case JSON_STRING:
        sy_buf_json_str(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        sy_buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        put_real(b, json_real_value(v));
        break;
    case JSON_TRUE:
        PUT(b, "true");
        break;
    case JSON_FALSE:
        PUT(b, "false");
        break;
    case JSON_NULL:
        PUT(b, "null");
        break;
    }
}

/* ============================================================================================
 * Stop reasons, usage, error types
 * ========================================================================================== */

enum stop {
    STOP_NONE = 0,
    STOP_END,      /* end_turn / stop */
    STOP_LENGTH,   /* max_tokens / length */
    STOP_TOOL,     /* tool_use / tool_calls */
    STOP_SEQUENCE, /* stop_sequence / stop */
    STOP_REFUSAL,  /* refusal / content_filter */
    STOP_PAUSE,    /* pause_turn / stop */
    STOP_MAX,
};

static const char *const an_stop_name[STOP_MAX] = {
    NULL, "end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal", "pause_turn"};
static const char *const oa_finish_name[STOP_MAX] = {
    NULL, "stop", "length", "tool_calls", "stop", "content_filter", "stop"};

/* An Anthropic stop_reason; anything unknown ends the turn. */
static enum stop stop_from_an(const char *s, size_t n)
{
    for (int i = STOP_END; i < STOP_MAX; i++)
        if (strlen(an_stop_name[i]) == n && memcmp(an_stop_name[i], s, n) == 0)
            return (enum stop)i;
    if (n == 29 && memcmp(s, "model_context_window_exceeded", n) == 0)
        return STOP_LENGTH;
    return STOP_END;
}

/* An OpenAI finish_reason; anything unknown ends the turn. */
static enum stop stop_from_oa(const char *s, size_t n)
{
    if (n == 6 && memcmp(s, "length", 6) == 0)
        return STOP_LENGTH;
    if ((n == 10 && memcmp(s, "tool_calls", 10) == 0) ||
        (n == 13 && memcmp(s, "function_call", 13) == 0))
        return STOP_TOOL;
    if (n == 14 && memcmp(s, "content_filter", 14) == 0)
        return STOP_REFUSAL;
    return STOP_END;
}

static enum stop stop_from_jv(enum dp_api api, struct jv v)
{
    if (!jv_is(v, '"'))
        return STOP_NONE;
    const char *s = v.p + 1;
    size_t n = (size_t)(v.e - v.p) - 2;
    return api == DP_API_ANTHROPIC ? stop_from_an(s, n) : stop_from_oa(s, n);
}

static inline uint64_t sat_sub(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

/* Input tokens that were neither read from nor written to a cache (Anthropic's input_tokens). */
static inline uint64_t usage_uncached(const struct dp_usage *u)
{
    return sat_sub(sat_sub(u->prompt_tokens, u->cached_tokens), u->cache_write_tokens);
}

/* A token count, saturated at 2^32 - 1: a larger one is the upstream's error (or malice), and
 * passed on it would overflow the sums and costs we keep and leave the integer range of the
 * client's JSON parser (found by fuzz_translate_stream_a2o). */
static bool jv_count(struct jv v, uint64_t *out)
{
    if (!jv_u64(v, out))
        return false;
    *out = SY_MIN(*out, (uint64_t)UINT32_MAX);
    return true;
}

static void usage_an(struct jv obj, struct dp_usage *u)
{
    static const struct key k[] = {KEY("input_tokens"), KEY("output_tokens"),
                                   KEY("cache_read_input_tokens"),
                                   KEY("cache_creation_input_tokens")};
    struct jv v[4];
    if (!obj_scan(obj, k, 4, v))
        return;
    uint64_t in = usage_uncached(u), x;
    bool any = false;
    if (jv_count(v[0], &x))
        in = x, any = true;
    if (jv_count(v[2], &x))
        u->cached_tokens = x, any = true;
    if (jv_count(v[3], &x))
        u->cache_write_tokens = x, any = true;
    if (jv_count(v[1], &x))
        u->completion_tokens = x, any = true;
    if (any) {
        u->prompt_tokens = in + u->cached_tokens + u->cache_write_tokens;
        u->present = true;
    }
}

static void usage_oa(struct jv obj, struct dp_usage *u)
{
    static const struct key k[] = {KEY("prompt_tokens"), KEY("completion_tokens"),
                                   KEY("prompt_tokens_details"), KEY("completion_tokens_details"),
                                   KEY("prompt_cache_hit_tokens")};
    static const struct key kc[] = {KEY("cached_tokens")};
    static const struct key kr[] = {KEY("reasoning_tokens")};
    struct jv v[5], d;
    uint64_t x;
    if (!obj_scan(obj, k, 5, v))
        return;
    if (jv_count(v[0], &x))
        u->prompt_tokens = x, u->present = true;
    if (jv_count(v[1], &x))
        u->completion_tokens = x, u->present = true;
    if (obj_scan(v[2], kc, 1, &d) && jv_count(d, &x))
        u->cached_tokens = x;
    else if (jv_count(v[4], &x)) /* DeepSeek's spelling */
        u->cached_tokens = x;
    if (obj_scan(v[3], kr, 1, &d) && jv_count(d, &x))
        u->reasoning_tokens = x;
}

void dp_usage_from_json(enum dp_api api, const char *json, size_t len, struct dp_usage *u)
{
    static const struct key k[] = {KEY("usage"), KEY("message")};
    static const struct key km[] = {KEY("usage")};
    struct jv v[2], m;
    if (json == NULL || !obj_scan(jv_of(json, len), k, 2, v))
        return;
    if (api == DP_API_OPENAI) {
        usage_oa(v[0], u);
        return;
    }
    usage_an(v[0], u);
    if (obj_scan(v[1], km, 1, &m))
        usage_an(m, u);
}

/* Anthropic's error type for an HTTP status (docs: "HTTP errors"). */
static const char *an_type_for_status(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 402:
        return "billing_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 503:
    case 529:
        return "overloaded_error";
    case 504:
        return "timeout_error";
    default:
        return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

/* OpenAI's error type for an HTTP status. */
static const char *oa_type_for_status(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 402:
        return "insufficient_quota";
    case 403:
        return "permission_error";
    case 429:
        return "rate_limit_error";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static bool is_an_error_type(const char *t)
{
    static const char *const types[] = {
        "invalid_request_error", "authentication_error", "billing_error",    "permission_error",
        "not_found_error",       "request_too_large",    "rate_limit_error", "api_error",
        "overloaded_error",      "timeout_error"};
    for (size_t i = 0; t && i < SY_ARRAY_LEN(types); i++)
        if (strcmp(t, types[i]) == 0)
            return true;
    return false;
}

/* The Anthropic type for a (gateway or OpenAI) error code or type, NULL if none fits. */
static const char *an_type_for_code(const char *c)
{
    if (c == NULL)
        return NULL;
    if (is_an_error_type(c))
        return c;
    if (strstr(c, "rate_limit"))
        return "rate_limit_error";
    if (strstr(c, "overload"))
        return "overloaded_error";
    if (strstr(c, "timeout"))
        return "timeout_error";
    return NULL;
}

/* ============================================================================================
 * Requests
 * ========================================================================================== */

static int fail(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(char **err, const char *fmt, ...)
{
    struct sy_buf b = SY_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    sy_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    if (err)
        *err = sy_buf_steal(&b, NULL);
    else
        sy_buf_free(&b);
    return -EINVAL;
}

static const char *str_or(json_t *v, const char *dflt)
{
    return json_is_string(v) ? json_string_value(v) : dflt;
}

static json_t *text_block(json_t *text)
{
    return json_pack("{s:s,s:O}", "type", "text", "text", text);
}

/* Append <blocks> (taken) as a turn of <role>, merged into the last turn when it has the same
 * role: Anthropic wants user and assistant turns to alternate, and consecutive tool results
 * belong in one user turn. */
static void push_turn(json_t *msgs, const char *role, json_t *blocks)
{
    if (json_array_size(blocks) == 0) {
        json_decref(blocks);
        return;
    }
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    if (last && strcmp(str_or(json_object_get(last, "role"), ""), role) == 0) {
        json_array_extend(json_object_get(last, "content"), blocks);
        json_decref(blocks);
        return;
    }
    json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", role, "content", blocks));
}

/* Text parts of an OpenAI content (string or parts) appended to <blocks> as text blocks. */
static int oa_text_blocks(json_t *content, json_t *blocks, const char *what, size_t i, char **err)
{
    if (json_is_null(content) || content == NULL)
        return 0;
    if (json_is_string(content)) {
        json_array_append_new(blocks, text_block(content));
        return 0;
    }
    if (!json_is_array(content))
        return fail(err, "messages[%zu].content: must be a string or an array of parts", i);
    size_t j;
    json_t *part;
    json_array_foreach(content, j, part)
    {
        const char *t = str_or(json_object_get(part, "type"), "");
        json_t *text = json_object_get(part, "text");
        if ((strcmp(t, "text") != 0 && strcmp(t, "refusal") != 0) ||
            (!json_is_string(text) && !json_is_string(text = json_object_get(part, "refusal"))))
            return fail(err,
                        "messages[%zu].content[%zu]: a %s message part of type '%s' has no "
                        "Anthropic equivalent (only text)",
                        i, j, what, t);
        json_t *b = text_block(text);
        json_t *cc = json_object_get(part, "cache_control");
        if (cc)
            json_object_set(b, "cache_control", cc);
        json_array_append_new(blocks, b);
    }
    return 0;
}

/* An OpenAI image_url part as an Anthropic image block. */
static int oa_image_block(json_t *part, json_t *blocks, size_t i, size_t j, char **err)
{
    json_t *iu = json_object_get(part, "image_url");
    const char *url =
        json_is_string(iu) ? json_string_value(iu) : str_or(json_object_get(iu, "url"), NULL);
    if (url == NULL)
        return fail(err, "messages[%zu].content[%zu].image_url.url: missing", i, j);
    if (strncmp(url, "data:", 5) != 0) {
        json_array_append_new(blocks, json_pack("{s:s,s:{s:s,s:s}}", "type", "image", "source",
                                                "type", "url", "url", url));
        return 0;
    }
    const char *semi = strchr(url + 5, ';'), *comma = strchr(url + 5, ',');
    if (semi == NULL || comma == NULL || semi > comma || strncmp(semi, ";base64,", 8) != 0)
        return fail(err,
                    "messages[%zu].content[%zu].image_url.url: a data URL must be "
                    "data:<media type>;base64,<data>",
                    i, j);
    json_array_append_new(blocks, json_pack("{s:s,s:{s:s,s:s%,s:s}}", "type", "image", "source",
                                            "type", "base64", "media_type", url + 5,
                                            (size_t)(semi - url - 5), "data", comma + 1));
    return 0;
}

static int oa_user_blocks(json_t *content, json_t *blocks, size_t i, char **err)
{
    if (!json_is_array(content))
        return oa_text_blocks(content, blocks, "user", i, err);
    size_t j;
    json_t *part;
    json_array_foreach(content, j, part)
    {
        const char *t = str_or(json_object_get(part, "type"), "");
        int rc;
        if (strcmp(t, "image_url") == 0) {
            rc = oa_image_block(part, blocks, i, j, err);
        } else {
            json_t *one = json_array();
            json_array_append(one, part);
            rc = oa_text_blocks(one, blocks, "user", i, err);
            json_decref(one);
            if (rc && err && *err) { /* name the part, not the one-element array */
                free(*err);
                rc = fail(err,
                          "messages[%zu].content[%zu]: a user message part of type '%s' has no "
                          "Anthropic equivalent (text and image_url only)",
                          i, j, t);
            }
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* Parse tool call arguments (an OpenAI JSON string) into the input object Anthropic wants.
 * NULL when they are not a JSON object. An empty string is a call without arguments. */
static json_t *parse_args(json_t *args, json_error_t *je)
{
    if (json_is_object(args))
        return json_incref(args);
    if (!json_is_string(args)) {
        snprintf(je->text, sizeof(je->text), "not a string");
        return NULL;
    }
    const char *s = json_string_value(args);
    size_t n = json_string_length(args);
    struct jv v = jv_of(s, n);
    if (v.p == v.e)
        return json_object();
    json_t *o = json_loadb(s, n, JSON_ALLOW_NUL, je);
    if (o && !json_is_object(o)) {
        json_decref(o);
        snprintf(je->text, sizeof(je->text), "not an object");
        return NULL;
    }
    return o;
}

static int oa_assistant_blocks(json_t *m, json_t *blocks, size_t i, char **err)
{
    json_t *content = json_object_get(m, "content");
    json_t *texts = json_array();
    int rc = oa_text_blocks(content, texts, "assistant", i, err);
    if (rc) {
        json_decref(texts);
        return rc;
    }
    size_t j;
    json_t *b;
    json_array_foreach(texts, j, b)
    { /* Anthropic refuses empty text blocks */
        if (json_string_length(json_object_get(b, "text")) > 0)
            json_array_append(blocks, b);
    }
    json_decref(texts);
    json_t *refusal = json_object_get(m, "refusal");
    if (json_is_string(refusal) && json_string_length(refusal) > 0)
        json_array_append_new(blocks, text_block(refusal));

    json_t *calls = json_object_get(m, "tool_calls"), *c;
    if (calls && !json_is_array(calls) && !json_is_null(calls))
        return fail(err, "messages[%zu].tool_calls: must be an array", i);
    json_array_foreach(calls, j, c)
    {
        json_t *fn = json_object_get(c, "function");
        const char *id = str_or(json_object_get(c, "id"), NULL);
        const char *name = str_or(json_object_get(fn, "name"), NULL);
        if (id == NULL || name == NULL)
            return fail(err, "messages[%zu].tool_calls[%zu]: needs an id and a function.name", i,
                        j);
        json_error_t je;
        json_t *input = parse_args(json_object_get(fn, "arguments"), &je);
        if (input == NULL)
            return fail(err,
                        "messages[%zu].tool_calls[%zu].function.arguments: not a JSON object "
                        "(%s), so it cannot become an Anthropic tool_use input",
                        i, j, je.text);
        json_array_append_new(blocks, json_pack("{s:s,s:s,s:s,s:o}", "type", "tool_use", "id", id,
                                                "name", name, "input", input));
    }
    if (json_object_get(m, "function_call") && !json_is_null(json_object_get(m, "function_call")))
        return fail(err,
                    "messages[%zu].function_call: the deprecated function_call is not "
                    "supported, use tool_calls",
                    i);
    return 0;
}

static int oa_tool_result(json_t *m, json_t *blocks, size_t i, char **err)
{
    const char *id = str_or(json_object_get(m, "tool_call_id"), NULL);
    if (id == NULL)
        return fail(err, "messages[%zu].tool_call_id: missing", i);
    json_t *content = json_object_get(m, "content"), *c;
    if (json_is_string(content)) {
        c = json_incref(content);
    } else if (content == NULL || json_is_null(content)) {
        c = json_string("");
    } else {
        c = json_array();
        int rc = oa_text_blocks(content, c, "tool", i, err);
        if (rc) {
            json_decref(c);
            return rc;
        }
    }
    json_array_append_new(
        blocks, json_pack("{s:s,s:s,s:o}", "type", "tool_result", "tool_use_id", id, "content", c));
    return 0;
}

static int oa_tools(json_t *req, json_t *o, char **err)
{
    json_t *tools = json_object_get(req, "tools"), *t;
    size_t i;
    if (tools == NULL || json_is_null(tools))
        return 0;
    if (!json_is_array(tools))
        return fail(err, "tools: must be an array");
    json_t *out = json_array();
    json_array_foreach(tools, i, t)
    {
        json_t *fn = json_object_get(t, "function");
        const char *type = str_or(json_object_get(t, "type"), "function");
        const char *name = str_or(json_object_get(fn, "name"), NULL);
        if (strcmp(type, "function") != 0 || name == NULL) {
            json_decref(out);
            return fail(err,
                        "tools[%zu]: only function tools with a name can be translated "
                        "(type '%s')",
                        i, type);
        }
        json_t *a = json_pack("{s:s}", "name", name);
        json_t *desc = json_object_get(fn, "description");
        if (json_is_string(desc))
            json_object_set(a, "description", desc);
        json_t *params = json_object_get(fn, "parameters");
        if (json_is_object(params))
            json_object_set(a, "input_schema", params);
        else
            json_object_set_new(a, "input_schema",
                                json_pack("{s:s,s:{}}", "type", "object", "properties"));
        json_array_append_new(out, a);
    }
    if (json_array_size(out) == 0) {
        json_decref(out);
        return 0;
    }
    json_object_set_new(o, "tools", out);

    json_t *tc = json_object_get(req, "tool_choice"), *choice = NULL;
    if (json_is_string(tc)) {
        const char *s = json_string_value(tc);
        if (strcmp(s, "required") == 0)
            s = "any";
        else if (strcmp(s, "auto") != 0 && strcmp(s, "none") != 0)
            return fail(err, "tool_choice: unknown value '%s'", s);
        choice = json_pack("{s:s}", "type", s);
    } else if (json_is_object(tc)) {
        const char *name = str_or(json_object_get(json_object_get(tc, "function"), "name"), NULL);
        if (name == NULL)
            return fail(err, "tool_choice: only {\"type\":\"function\",\"function\":{\"name\"}} "
                             "can be translated");
        choice = json_pack("{s:s,s:s}", "type", "tool", "name", name);
    }
    if (json_is_false(json_object_get(req, "parallel_tool_calls"))) {
        if (choice == NULL)
            choice = json_pack("{s:s}", "type", "auto");
        if (strcmp(str_or(json_object_get(choice, "type"), ""), "none") != 0)
            json_object_set_new(choice, "disable_parallel_tool_use", json_true());
    }
    if (choice)
        json_object_set_new(o, "tool_choice", choice);
    return 0;
}

/* A content array holding a single plain text block becomes a string again. */
static void simplify_content(json_t *msg)
{
    json_t *c = json_object_get(msg, "content");
    json_t *b = json_array_get(c, 0);
    if (json_array_size(c) == 1 && json_object_size(b) == 2 &&
        strcmp(str_or(json_object_get(b, "type"), ""), "text") == 0)
        json_object_set(msg, "content", json_object_get(b, "text"));
}

static int oa_to_an_request(json_t *req, const char *model, bool stream, uint32_t dflt_max,
                            json_t *o, char **err)
{
    json_t *msgs_in = json_object_get(req, "messages"), *m, *v;
    size_t i;
    if (!json_is_array(msgs_in))
        return fail(err, "messages: must be an array");

    json_object_set_new(o, "model", json_string(model));
    json_t *mt = json_object_get(req, "max_completion_tokens");
    if (mt == NULL || json_is_null(mt))
        mt = json_object_get(req, "max_tokens");
    if (mt && !json_is_null(mt) && (!json_is_integer(mt) || json_integer_value(mt) < 1))
        return fail(err, "max_tokens: must be a positive integer");
    json_object_set_new(o, "max_tokens",
                        mt && !json_is_null(mt) ? json_copy(mt) : json_integer(dflt_max));

    v = json_object_get(req, "n");
    if (json_is_integer(v) && json_integer_value(v) != 1)
        return fail(err, "n: Anthropic returns one choice, n must be 1");
    v = json_object_get(json_object_get(req, "response_format"), "type");
    if (v && strcmp(str_or(v, ""), "text") != 0)
        return fail(err, "response_format: '%s' has no Anthropic equivalent", str_or(v, "?"));
    v = json_object_get(req, "audio");
    if (v && !json_is_null(v))
        return fail(err, "audio: audio output has no Anthropic equivalent");

    json_t *sys = json_array(), *msgs = json_array();
    json_object_set_new(o, "messages", msgs); /* owned by <o> from here on */
    int rc = 0;
    json_array_foreach(msgs_in, i, m)
    {
        const char *role = str_or(json_object_get(m, "role"), "");
        json_t *blocks = json_array();
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            rc = oa_text_blocks(json_object_get(m, "content"), sys, role, i, err);
            json_decref(blocks);
            blocks = NULL;
        } else if (strcmp(role, "user") == 0) {
            rc = oa_user_blocks(json_object_get(m, "content"), blocks, i, err);
        } else if (strcmp(role, "assistant") == 0) {
            rc = oa_assistant_blocks(m, blocks, i, err);
            role = "assistant";
        } else if (strcmp(role, "tool") == 0) {
            rc = oa_tool_result(m, blocks, i, err);
            role = "user";
        } else {
            rc = fail(err, "messages[%zu].role: '%s' has no Anthropic equivalent", i, role);
        }
        if (rc) {
            json_decref(blocks);
            goto fail;
        }
        if (blocks)
            push_turn(msgs, role, blocks);
    }
    json_array_foreach(msgs, i, m) simplify_content(m);
    if (json_array_size(sys) == 1 && json_object_size(json_array_get(sys, 0)) == 2)
        json_object_set(o, "system", json_object_get(json_array_get(sys, 0), "text"));
    else if (json_array_size(sys) > 1)
        json_object_set(o, "system", sys);

    if ((rc = oa_tools(req, o, err)) != 0)
        goto fail;

    v = json_object_get(req, "stop");
    if (json_is_string(v))
        json_object_set_new(o, "stop_sequences", json_pack("[O]", v));
    else if (json_is_array(v) && json_array_size(v) > 0)
        json_object_set(o, "stop_sequences", v);
    v = json_object_get(req, "temperature");
    if (json_is_number(v)) /* OpenAI allows 0..2, Anthropic 0..1 */
        json_object_set_new(o, "temperature",
                            json_number_value(v) > 1.0 ? json_integer(1) : json_copy(v));
    v = json_object_get(req, "top_p");
    if (json_is_number(v))
        json_object_set(o, "top_p", v);
    v = json_object_get(req, "user");
    if (json_is_string(v))
        json_object_set_new(o, "metadata", json_pack("{s:O}", "user_id", v));
    if (stream)
        json_object_set_new(o, "stream", json_true());
    json_decref(sys);
    return 0;
fail:
    json_decref(sys);
    return rc;
}

/* Anthropic text blocks (or a string) as one string; false when a block is not text. */
static bool an_join_text(json_t *content, struct sy_buf *b, const char *sep, size_t *bad)
{
    if (json_is_string(content)) {
        sy_buf_append(b, json_string_value(content), json_string_length(content));
        return true;
    }
    size_t j;
    json_t *blk;
    bool first = true;
    json_array_foreach(content, j, blk)
    {
        json_t *t = json_object_get(blk, "text");
        if (strcmp(str_or(json_object_get(blk, "type"), ""), "text") != 0 || !json_is_string(t)) {
            *bad = j;
            return false;
        }
        if (!first)
            sy_buf_puts(b, sep);
        first = false;
        sy_buf_append(b, json_string_value(t), json_string_length(t));
    }
    return true;
}

static json_t *buf_string(struct sy_buf *b)
{
    json_t *s = json_stringn(b->data ? b->data : "", b->len);
    sy_buf_reset(b);
    return s;
}

/* An Anthropic image block as an OpenAI image_url part. */
static json_t *an_image_part(json_t *blk)
{
    json_t *src = json_object_get(blk, "source");
    const char *t = str_or(json_object_get(src, "type"), "");
    if (strcmp(t, "url") == 0 && json_is_string(json_object_get(src, "url")))
        return json_pack("{s:s,s:{s:O}}", "type", "image_url", "image_url", "url",
                         json_object_get(src, "url"));
    const char *mt = str_or(json_object_get(src, "media_type"), NULL);
    const char *data = str_or(json_object_get(src, "data"), NULL);
    if (strcmp(t, "base64") != 0 || mt == NULL || data == NULL)
        return NULL;
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_printf(&b, "data:%s;base64,%s", mt, data);
    json_t *p = json_pack("{s:s,s:{s:s%}}", "type", "image_url", "image_url", "url", b.data, b.len);
    sy_buf_free(&b);
    return p;
}

static int an_user_msgs(json_t *content, json_t *msgs, size_t i, char **err)
{
    if (json_is_string(content)) {
        json_array_append_new(msgs, json_pack("{s:s,s:O}", "role", "user", "content", content));
        return 0;
    }
    if (!json_is_array(content))
        return fail(err, "messages[%zu].content: must be a string or an array of blocks", i);
    json_t *parts = json_array(), *blk;
    struct sy_buf b = SY_BUF_INIT;
    size_t j;
    json_array_foreach(content, j, blk)
    {
        const char *t = str_or(json_object_get(blk, "type"), "");
        json_t *img = NULL;
        if (strcmp(t, "tool_result") == 0) {
            /* results go first, as tool messages right after the assistant's tool_calls */
            const char *id = str_or(json_object_get(blk, "tool_use_id"), NULL);
            json_t *c = json_object_get(blk, "content");
            size_t bad = 0;
            if (id == NULL || (c && !an_join_text(c, &b, "\n", &bad))) {
                sy_buf_free(&b);
                json_decref(parts);
                return fail(err,
                            "messages[%zu].content[%zu]: a tool_result needs a tool_use_id and "
                            "text content (content[%zu] is not text: OpenAI tool messages hold "
                            "text only)",
                            i, j, bad);
            }
            json_array_append_new(msgs, json_pack("{s:s,s:s,s:o}", "role", "tool", "tool_call_id",
                                                  id, "content", buf_string(&b)));
        } else if (strcmp(t, "text") == 0 && json_is_string(json_object_get(blk, "text"))) {
            json_array_append_new(parts, text_block(json_object_get(blk, "text")));
        } else if (strcmp(t, "image") == 0 && (img = an_image_part(blk)) != NULL) {
            json_array_append_new(parts, img);
        } else {
            sy_buf_free(&b);
            json_decref(parts);
            return fail(err,
                        "messages[%zu].content[%zu]: a user block of type '%s' has no "
                        "OpenAI equivalent",
                        i, j, t);
        }
    }
    sy_buf_free(&b);
    if (json_array_size(parts) == 0) {
        json_decref(parts);
        return 0;
    }
    json_t *msg = json_pack("{s:s,s:o}", "role", "user", "content", parts);
    simplify_content(msg);
    json_array_append_new(msgs, msg);
    return 0;
}

static int an_assistant_msg(json_t *content, json_t *msgs, size_t i, char **err)
{
    json_t *msg = json_pack("{s:s}", "role", "assistant");
    if (json_is_string(content)) {
        json_object_set(msg, "content", content);
        json_array_append_new(msgs, msg);
        return 0;
    }
    if (!json_is_array(content)) {
        json_decref(msg);
        return fail(err, "messages[%zu].content: must be a string or an array of blocks", i);
    }
    struct sy_buf text = SY_BUF_INIT, args = SY_BUF_INIT;
    json_t *calls = json_array(), *blk;
    size_t j;
    bool has_text = false;
    json_array_foreach(content, j, blk)
    {
        const char *t = str_or(json_object_get(blk, "type"), "");
        json_t *tx = json_object_get(blk, "text");
        if (strcmp(t, "text") == 0 && json_is_string(tx)) {
            sy_buf_append(&text, json_string_value(tx), json_string_length(tx));
            has_text = true;
        } else if (strcmp(t, "tool_use") == 0) {
            const char *id = str_or(json_object_get(blk, "id"), NULL);
            const char *name = str_or(json_object_get(blk, "name"), NULL);
            json_t *input = json_object_get(blk, "input");
            if (id == NULL || name == NULL || !json_is_object(input)) {
                json_decref(calls);
                json_decref(msg);
                sy_buf_free(&text);
                sy_buf_free(&args);
                return fail(err,
                            "messages[%zu].content[%zu]: a tool_use needs an id, a name and an "
                            "input object",
                            i, j);
            }
            sy_buf_reset(&args);
            put_json(&args, input);
            json_array_append_new(calls, json_pack("{s:s,s:s,s:{s:s,s:o}}", "id", id, "type",
                                                   "function", "function", "name", name,
                                                   "arguments", buf_string(&args)));
        } else if (strcmp(t, "thinking") != 0 && strcmp(t, "redacted_thinking") != 0) {
            json_decref(calls);
            json_decref(msg);
            sy_buf_free(&text);
            sy_buf_free(&args);
            return fail(err,
                        "messages[%zu].content[%zu]: an assistant block of type '%s' has "
                        "no OpenAI equivalent",
                        i, j, t);
        }
    }
    sy_buf_free(&args);
    size_t n_calls = json_array_size(calls);
    json_object_set_new(msg, "content", has_text || n_calls == 0 ? buf_string(&text) : json_null());
    sy_buf_free(&text);
    if (n_calls)
        json_object_set_new(msg, "tool_calls", calls);
    else
        json_decref(calls);
    json_array_append_new(msgs, msg);
    return 0;
}

static int an_tools(json_t *req, json_t *o, char **err)
{
    json_t *tools = json_object_get(req, "tools"), *t;
    size_t i;
    if (!json_is_array(tools) || json_array_size(tools) == 0)
        return 0;
    json_t *out = json_array();
    json_object_set_new(o, "tools", out);
    json_array_foreach(tools, i, t)
    {
        const char *type = str_or(json_object_get(t, "type"), "custom");
        const char *name = str_or(json_object_get(t, "name"), NULL);
        if (strcmp(type, "custom") != 0 || name == NULL)
            return fail(err,
                        "tools[%zu]: the Anthropic tool type '%s' (a server or client-defined "
                        "tool of Anthropic's) has no OpenAI equivalent",
                        i, type);
        json_t *fn = json_pack("{s:s}", "name", name);
        json_t *desc = json_object_get(t, "description");
        if (json_is_string(desc))
            json_object_set(fn, "description", desc);
        json_t *schema = json_object_get(t, "input_schema");
        if (json_is_object(schema))
            json_object_set(fn, "parameters", schema);
        json_array_append_new(out, json_pack("{s:s,s:o}", "type", "function", "function", fn));
    }
    json_t *tc = json_object_get(req, "tool_choice");
    const char *type = str_or(json_object_get(tc, "type"), NULL);
    if (type == NULL)
        return 0;
    if (strcmp(type, "auto") == 0 || strcmp(type, "none") == 0) {
        json_object_set_new(o, "tool_choice", json_string(type));
    } else if (strcmp(type, "any") == 0) {
        json_object_set_new(o, "tool_choice", json_string("required"));
    } else if (strcmp(type, "tool") == 0 && json_is_string(json_object_get(tc, "name"))) {
        json_object_set_new(o, "tool_choice",
                            json_pack("{s:s,s:{s:O}}", "type", "function", "function", "name",
                                      json_object_get(tc, "name")));
    } else {
        return fail(err, "tool_choice: type '%s' cannot be translated", type);
    }
    if (json_is_true(json_object_get(tc, "disable_parallel_tool_use")) && strcmp(type, "none") != 0)
        json_object_set_new(o, "parallel_tool_calls", json_false());
    return 0;
}

static int an_to_oa_request(json_t *req, const char *model, bool stream, json_t *o, char **err)
{
    json_t *msgs_in = json_object_get(req, "messages"), *m, *v;
    size_t i;
    if (!json_is_array(msgs_in))
        return fail(err, "messages: must be an array");
    json_object_set_new(o, "model", json_string(model));
    json_t *msgs = json_array();
    json_object_set_new(o, "messages", msgs);

    v = json_object_get(req, "system");
    if (v && !json_is_null(v)) {
        struct sy_buf b = SY_BUF_INIT;
        size_t bad = 0;
        if (!an_join_text(v, &b, "\n\n", &bad)) {
            sy_buf_free(&b);
            return fail(err, "system[%zu]: only text blocks can be translated", bad);
        }
        json_array_append_new(msgs,
                              json_pack("{s:s,s:o}", "role", "system", "content", buf_string(&b)));
        sy_buf_free(&b);
    }
    json_array_foreach(msgs_in, i, m)
    {
        const char *role = str_or(json_object_get(m, "role"), "");
        json_t *content = json_object_get(m, "content");
        int rc;
        if (strcmp(role, "user") == 0)
            rc = an_user_msgs(content, msgs, i, err);
        else if (strcmp(role, "assistant") == 0)
            rc = an_assistant_msg(content, msgs, i, err);
        else
            rc = fail(err, "messages[%zu].role: '%s' is not user or assistant", i, role);
        if (rc)
            return rc;
    }
    int rc = an_tools(req, o, err);
    if (rc)
        return rc;
    v = json_object_get(req, "max_tokens");
    if (json_is_integer(v))
        json_object_set(o, "max_tokens", v);
    v = json_object_get(req, "stop_sequences");
    if (json_is_array(v) && json_array_size(v) > 0)
        json_object_set(o, "stop", v);
    v = json_object_get(req, "temperature");
    if (json_is_number(v))
        json_object_set(o, "temperature", v);
    v = json_object_get(req, "top_p");
    if (json_is_number(v))
        json_object_set(o, "top_p", v);
    v = json_object_get(json_object_get(req, "metadata"), "user_id");
    if (json_is_string(v))
        json_object_set(o, "user", v);
    if (stream) {
        json_object_set_new(o, "stream", json_true());
        json_object_set_new(o, "stream_options", json_pack("{s:b}", "include_usage", 1));
    }
    return 0;
}

/* Same format: a copy with the model, stream and (Anthropic) max_tokens members set. */
static int same_request(enum dp_api api, json_t *req, const char *model, bool stream,
                        uint32_t dflt_max, json_t *o)
{
    json_object_update(o, req);
    json_object_set_new(o, "model", json_string(model));
    if (api == DP_API_ANTHROPIC && !json_is_integer(json_object_get(o, "max_tokens")))
        json_object_set_new(o, "max_tokens", json_integer(dflt_max));
    if (!stream) {
        json_object_del(o, "stream");
        json_object_del(o, "stream_options");
        return 0;
    }
    json_object_set_new(o, "stream", json_true());
    if (api == DP_API_OPENAI) {
        json_t *so = json_deep_copy(json_object_get(o, "stream_options"));
        if (!json_is_object(so)) {
            json_decref(so);
            so = json_object();
        }
        json_object_set_new(so, "include_usage", json_true());
        json_object_set_new(o, "stream_options", so);
    }
    return 0;
}

int dp_tr_request(enum dp_api from, enum dp_api to, json_t *req, const char *upstream_model,
                  bool stream, uint32_t default_max_tokens, struct sy_buf *out, char **err)
{
    if (!json_is_object(req))
        return fail(err, "the request body must be a JSON object");
    json_t *o = json_object();
    int rc;
    if (from == to)
        rc = same_request(from, req, upstream_model, stream, default_max_tokens, o);
    else if (from == DP_API_OPENAI)
        rc = oa_to_an_request(req, upstream_model, stream, default_max_tokens, o, err);
    else
        rc = an_to_oa_request(req, upstream_model, stream, o, err);
    if (rc == 0)
        put_json(out, o);
    json_decref(o);
    return rc;
}

/* ============================================================================================
 * JSON responses
 * ========================================================================================== */

static json_t *oa_usage_json(const struct dp_usage *u)
{
    json_t *j = json_pack("{s:I,s:I,s:I,s:{s:I}}", "prompt_tokens", (json_int_t)u->prompt_tokens,
                          "completion_tokens", (json_int_t)u->completion_tokens, "total_tokens",
                          (json_int_t)(u->prompt_tokens + u->completion_tokens),
                          "prompt_tokens_details", "cached_tokens", (json_int_t)u->cached_tokens);
    if (u->reasoning_tokens)
        json_object_set_new(
            j, "completion_tokens_details",
            json_pack("{s:I}", "reasoning_tokens", (json_int_t)u->reasoning_tokens));
    return j;
}

static json_t *an_usage_json(const struct dp_usage *u)
{
    return json_pack("{s:I,s:I,s:I,s:I}", "input_tokens", (json_int_t)usage_uncached(u),
                     "cache_creation_input_tokens", (json_int_t)u->cache_write_tokens,
                     "cache_read_input_tokens", (json_int_t)u->cached_tokens, "output_tokens",
                     (json_int_t)u->completion_tokens);
}

static json_t *an_to_oa_response(json_t *r, const char *model, const struct dp_usage *u)
{
    json_t *content = json_object_get(r, "content"), *blk;
    if (!json_is_array(content))
        return NULL;
    struct sy_buf text = SY_BUF_INIT, think = SY_BUF_INIT, args = SY_BUF_INIT;
    json_t *calls = json_array();
    size_t j;
    bool has_text = false;
    json_array_foreach(content, j, blk)
    {
        const char *t = str_or(json_object_get(blk, "type"), "");
        json_t *v;
        if (strcmp(t, "text") == 0 && json_is_string(v = json_object_get(blk, "text"))) {
            sy_buf_append(&text, json_string_value(v), json_string_length(v));
            has_text = true;
        } else if (strcmp(t, "thinking") == 0 &&
                   json_is_string(v = json_object_get(blk, "thinking"))) {
            sy_buf_append(&think, json_string_value(v), json_string_length(v));
        } else if (strcmp(t, "tool_use") == 0 && json_is_object(json_object_get(blk, "input"))) {
            sy_buf_reset(&args);
            put_json(&args, json_object_get(blk, "input"));
            json_array_append_new(calls, json_pack("{s:O,s:s,s:{s:O,s:o}}", "id",
                                                   json_object_get(blk, "id"), "type", "function",
                                                   "function", "name", json_object_get(blk, "name"),
                                                   "arguments", buf_string(&args)));
        }
    }
    json_t *msg = json_pack("{s:s}", "role", "assistant");
    size_t n_calls = json_array_size(calls);
    json_object_set_new(msg, "content", has_text || n_calls == 0 ? buf_string(&text) : json_null());
    if (think.len)
        json_object_set_new(msg, "reasoning_content", buf_string(&think));
    if (n_calls)
        json_object_set(msg, "tool_calls", calls);
    json_decref(calls);
    sy_buf_free(&text);
    sy_buf_free(&think);
    sy_buf_free(&args);

    json_t *sr = json_object_get(r, "stop_reason");
    enum stop st =
        json_is_string(sr) ? stop_from_an(json_string_value(sr), json_string_length(sr)) : STOP_END;
    json_t *id = json_object_get(r, "id");
    id = json_is_string(id) ? json_incref(id) : json_string("chatcmpl-gw");
    return json_pack("{s:o,s:s,s:I,s:s,s:[{s:i,s:o,s:n,s:s}],s:o}", "id", id, "object",
                     "chat.completion", "created", (json_int_t)time(NULL), "model", model,
                     "choices", "index", 0, "message", msg, "logprobs", "finish_reason",
                     oa_finish_name[st], "usage", oa_usage_json(u));
}

static json_t *oa_to_an_response(json_t *r, const char *model, const struct dp_usage *u)
{
    json_t *choice = json_array_get(json_object_get(r, "choices"), 0);
    json_t *msg = json_object_get(choice, "message");
    if (!json_is_object(msg))
        return NULL;
    json_t *content = json_array(), *v;
    if (json_is_string(v = json_object_get(msg, "reasoning_content")) ||
        json_is_string(v = json_object_get(msg, "reasoning")))
        if (json_string_length(v))
            json_array_append_new(content, json_pack("{s:s,s:O,s:s}", "type", "thinking",
                                                     "thinking", v, "signature", ""));
    v = json_object_get(msg, "content");
    if (json_is_string(v) && json_string_length(v))
        json_array_append_new(content, text_block(v));
    else if (json_is_array(v) && oa_text_blocks(v, content, "assistant", 0, NULL) != 0)
        goto fail;
    v = json_object_get(msg, "refusal");
    if (json_is_string(v) && json_string_length(v))
        json_array_append_new(content, text_block(v));
    json_t *calls = json_object_get(msg, "tool_calls"), *c;
    size_t j;
    json_array_foreach(calls, j, c)
    {
        json_t *fn = json_object_get(c, "function");
        json_error_t je;
        json_t *input = parse_args(json_object_get(fn, "arguments"), &je);
        if (input == NULL || !json_is_string(json_object_get(c, "id")) ||
            !json_is_string(json_object_get(fn, "name"))) {
            json_decref(input);
            goto fail;
        }
        json_array_append_new(content, json_pack("{s:s,s:O,s:O,s:o}", "type", "tool_use", "id",
                                                 json_object_get(c, "id"), "name",
                                                 json_object_get(fn, "name"), "input", input));
    }
    json_t *fr = json_object_get(choice, "finish_reason");
    enum stop st =
        json_is_string(fr) ? stop_from_oa(json_string_value(fr), json_string_length(fr)) : STOP_END;
    json_t *id = json_object_get(r, "id");
    id = json_is_string(id) ? json_incref(id) : json_string("msg_gw");
    return json_pack("{s:o,s:s,s:s,s:s,s:o,s:s,s:n,s:o}", "id", id, "type", "message", "role",
                     "assistant", "model", model, "content", content, "stop_reason",
                     an_stop_name[st], "stop_sequence", "usage", an_usage_json(u));
fail:
    json_decref(content);
    return NULL;
}

int dp_tr_response(enum dp_api from, enum dp_api to, const char *body, size_t len,
                   const char *client_model, struct sy_buf *out, struct dp_usage *usage)
{
    struct dp_usage u = {0};
    json_t *r = json_loadb(body, len, JSON_ALLOW_NUL, NULL), *o = NULL;
    if (!json_is_object(r))
        goto fail;
    dp_usage_from_json(from, body, len, &u);
    if (from == to) {
        o = json_copy(r);
        json_object_set_new(o, "model", json_string(client_model));
    } else if (from == DP_API_ANTHROPIC) {
        o = an_to_oa_response(r, client_model, &u);
    } else {
        o = oa_to_an_response(r, client_model, &u);
    }
    if (o == NULL)
        goto fail;
    put_json(out, o);
    json_decref(o);
    json_decref(r);
    if (usage)
        *usage = u;
    return 0;
fail:
    json_decref(r);
    return -EPROTO;
}

/* ============================================================================================
 * Errors
 * ========================================================================================== */

struct err_info {
    const char *message, *type, *code, *param; /* into the parsed body; NULL when absent */
    bool shaped;                               /* the body already has the <from> shape */
};

static void err_parse(enum dp_api from, json_t *j, struct err_info *ei)
{
    memset(ei, 0, sizeof(*ei));
    json_t *e = json_object_get(j, "error");
    if (json_is_object(e)) {
        ei->message = str_or(json_object_get(e, "message"), NULL);
        ei->type = str_or(json_object_get(e, "type"), NULL);
        ei->code = str_or(json_object_get(e, "code"), NULL);
        ei->param = str_or(json_object_get(e, "param"), NULL);
        ei->shaped =
            ei->message != NULL &&
            (from == DP_API_OPENAI || strcmp(str_or(json_object_get(j, "type"), ""), "error") == 0);
    } else if (json_is_string(e)) {
        ei->message = json_string_value(e);
    }
    if (ei->message == NULL)
        ei->message = str_or(json_object_get(j, "message"), NULL);
    if (ei->message == NULL)
        ei->message = str_or(json_object_get(j, "detail"), NULL);
}

static void put_oa_error(struct sy_buf *out, const char *message, size_t mlen, const char *type,
                         const char *param, const char *code)
{
    PUT(out, "{\"error\":{\"message\":");
    sy_buf_json_str(out, message, mlen);
    PUT(out, ",\"type\":");
    sy_buf_json_str(out, type, strlen(type));
    PUT(out, ",\"param\":");
    if (param)
        sy_buf_json_str(out, param, strlen(param));
    else
        PUT(out, "null");
    PUT(out, ",\"code\":");
    if (code)
        sy_buf_json_str(out, code, strlen(code));
    else
        PUT(out, "null");
    PUT(out, "}}");
}

static void put_an_error(struct sy_buf *out, const char *type, const char *message, size_t mlen)
{
    PUT(out, "{\"type\":\"error\",\"error\":{\"type\":");
    sy_buf_json_str(out, type, strlen(type));
    PUT(out, ",\"message\":");
    sy_buf_json_str(out, message, mlen);
    PUT(out, "}}");
}

void dp_tr_error(enum dp_api from, enum dp_api to, int status, const char *body, size_t len,
                 struct sy_buf *out, int *out_status)
{
    json_t *j = len ? json_loadb(body, len, JSON_ALLOW_NUL, NULL) : NULL;
    struct err_info ei;
    err_parse(from, j, &ei);
    int st = status;
    if (from == DP_API_ANTHROPIC && to == DP_API_OPENAI && status == 529)
        st = 503;
    else if (from == DP_API_OPENAI && to == DP_API_ANTHROPIC && status == 503)
        st = 529;
    if (out_status)
        *out_status = st;

    if (from == to && ei.shaped) {
        sy_buf_append(out, body, len);
        json_decref(j);
        return;
    }
    char fallback[64];
    const char *msg = ei.message;
    size_t mlen;
    if (msg) {
        mlen = strlen(msg);
    } else {
        struct jv t = jv_of(body ? body : "", body ? len : 0); /* not JSON: its text, trimmed */
        msg = t.p;
        mlen = SY_MIN((size_t)(t.e - t.p), 1024);
        if (mlen == 0 || j != NULL) {
            snprintf(fallback, sizeof(fallback), "upstream returned HTTP %d", status);
            msg = fallback;
            mlen = strlen(fallback);
        }
    }
    if (to == DP_API_OPENAI) {
        /* from Anthropic: the Anthropic type becomes the code, machine-readable as before */
        const char *code = from == DP_API_ANTHROPIC ? ei.type : ei.code;
        const char *type = from == DP_API_OPENAI && ei.type ? ei.type : oa_type_for_status(st);
        put_oa_error(out, msg, mlen, type, ei.param, code);
    } else {
        const char *type = from == DP_API_ANTHROPIC && is_an_error_type(ei.type)
                               ? ei.type
                               : an_type_for_status(st);
        put_an_error(out, type, msg, mlen);
    }
    json_decref(j);
}

void dp_tr_gateway_error(enum dp_api to, int status, const char *type, const char *code,
                         const char *message, struct sy_buf *out)
{
    if (message == NULL)
        message = "error";
    if (to == DP_API_OPENAI) {
        put_oa_error(out, message, strlen(message), type ? type : oa_type_for_status(status), NULL,
                     code);
        return;
    }
    const char *t = is_an_error_type(type) ? type : an_type_for_status(status);
    put_an_error(out, t, message, strlen(message));
}

/* ============================================================================================
 * Streams
 * ========================================================================================== */

enum block {
    BLOCK_NONE = 0,
    BLOCK_TEXT,
    BLOCK_THINKING,
    BLOCK_TOOL,
    BLOCK_MAX,
};

void dp_tr_stream_init(struct dp_tr_stream *s, enum dp_api from, enum dp_api to,
                       const char *client_model, const char *request_id, bool client_wants_usage)
{
    memset(s, 0, sizeof(*s));
    s->from = (uint8_t)from;
    s->to = (uint8_t)to;
    s->client_wants_usage = client_wants_usage;
    s->cur_tool = -1;
    for (size_t i = 0; i < DP_TR_MAX_BLOCKS; i++)
        s->map[i] = -1;
    if (client_model == NULL)
        client_model = "";
    sy_buf_json_str(&s->model, client_model, strlen(client_model));
    if (request_id)
        sy_buf_json_str(&s->msg_id, request_id, strlen(request_id));
}

/* The constant head of every OpenAI chunk, formatted once with the id <id> (a literal). */
static void oa_head(struct dp_tr_stream *s, struct jv id)
{
    if (s->head.len)
        return;
    PUT(&s->head, "data: {\"id\":");
    if (s->msg_id.len)
        sy_buf_append(&s->head, s->msg_id.data, s->msg_id.len);
    else if (jv_is(id, '"'))
        put_jv(&s->head, id);
    else
        PUT(&s->head, "\"chatcmpl-gw\"");
    sy_buf_printf(&s->head, ",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":",
                  (long long)time(NULL));
    sy_buf_append(&s->head, s->model.data, s->model.len);
    PUT(&s->head, ",");
}

static inline void oa_open(struct dp_tr_stream *s, struct sy_buf *out)
{
    sy_buf_append(out, s->head.data, s->head.len);
    PUT(out, "\"choices\":[{\"index\":0,\"delta\":");
}

static inline void oa_close(struct sy_buf *out)
{
    PUT(out, ",\"logprobs\":null,\"finish_reason\":null}]}\n\n");
}

/* One OpenAI delta chunk carrying <field> set to the literal <v>. */
static void oa_delta(struct dp_tr_stream *s, struct sy_buf *out, const char *field, size_t flen,
                     struct jv v)
{
    oa_open(s, out);
    PUT(out, "{\"");
    sy_buf_append(out, field, flen);
    PUT(out, "\":");
    put_jv(out, v);
    PUT(out, "}");
    oa_close(out);
    s->has_content = true;
}

static void oa_role_chunk(struct dp_tr_stream *s, struct sy_buf *out, struct jv id)
{
    oa_head(s, id);
    oa_open(s, out);
    PUT(out, "{\"role\":\"assistant\",\"content\":\"\"}");
    oa_close(out);
    s->started = true;
}

static void oa_finish_chunk(struct dp_tr_stream *s, struct sy_buf *out)
{
    oa_open(s, out);
    PUT(out, "{},\"logprobs\":null,\"finish_reason\":\"");
    sy_buf_puts(out, oa_finish_name[s->stop ? s->stop : STOP_END]);
    PUT(out, "\"}]}\n\n");
    s->finished = true;
}

static void oa_usage_chunk(struct dp_tr_stream *s, struct sy_buf *out)
{
    const struct dp_usage *u = &s->usage;
    sy_buf_append(out, s->head.data, s->head.len);
    PUT(out, "\"choices\":[],\"usage\":{\"prompt_tokens\":");
    put_u64(out, u->prompt_tokens);
    PUT(out, ",\"completion_tokens\":");
    put_u64(out, u->completion_tokens);
    PUT(out, ",\"total_tokens\":");
    put_u64(out, u->prompt_tokens + u->completion_tokens);
    PUT(out, ",\"prompt_tokens_details\":{\"cached_tokens\":");
    put_u64(out, u->cached_tokens);
    PUT(out, "}}}\n\n");
}

/* Close an OpenAI client stream: finish chunk if none yet, usage chunk if asked, [DONE]. */
static void oa_end(struct dp_tr_stream *s, struct sy_buf *out)
{
    if (s->done)
        return;
    struct jv none = {NULL, NULL};
    if (!s->started)
        oa_role_chunk(s, out, none);
    if (!s->finished)
        oa_finish_chunk(s, out);
    if (s->client_wants_usage)
        oa_usage_chunk(s, out);
    PUT(out, "data: [DONE]\n\n");
    s->done = true;
}

static void oa_error_chunk(struct sy_buf *out, const char *msg, size_t mlen, const char *type,
                           const char *code)
{
    PUT(out, "data: ");
    put_oa_error(out, msg, mlen, type, NULL, code);
    PUT(out, "\n\n");
}

/* Anthropic upstream -> OpenAI client. */
static int an_to_oa_event(struct dp_tr_stream *s, const char *type, size_t tlen, struct jv obj,
                          struct sy_buf *out)
{
    static const struct key k[] = {KEY("message"), KEY("index"), KEY("content_block"),
                                   KEY("delta"),   KEY("usage"), KEY("error")};
    enum { K_MESSAGE, K_INDEX, K_BLOCK, K_DELTA, K_USAGE, K_ERROR };
    struct jv v[6];
    if (!obj_scan(obj, k, 6, v))
        return -EPROTO;
#define IS(lit) (tlen == sizeof(lit) - 1 && memcmp(type, lit, tlen) == 0)
    struct jv none = {NULL, NULL};
    if (IS("content_block_delta")) {
        static const struct key kd[] = {KEY("type"), KEY("text"), KEY("partial_json"),
                                        KEY("thinking")};
        struct jv d[4];
        uint64_t idx;
        if (!obj_scan(v[K_DELTA], kd, 4, d) || !jv_u64(v[K_INDEX], &idx))
            return -EPROTO;
        if (!s->started)
            oa_role_chunk(s, out, none);
        if (jv_eq(d[0], "text_delta") && jv_is(d[1], '"')) {
            oa_delta(s, out, "content", 7, d[1]);
        } else if (jv_eq(d[0], "input_json_delta") && jv_is(d[2], '"')) {
            if (idx >= DP_TR_MAX_BLOCKS || s->map[idx] < 0)
                return -EPROTO;
            if (d[2].e - d[2].p <= 2)
                return 0;
            oa_open(s, out);
            PUT(out, "{\"tool_calls\":[{\"index\":");
            put_u64(out, (uint64_t)s->map[idx]);
            PUT(out, ",\"function\":{\"arguments\":");
            put_jv(out, d[2]);
            PUT(out, "}}]}");
            oa_close(out);
        } else if (jv_eq(d[0], "thinking_delta") && jv_is(d[3], '"')) {
            oa_delta(s, out, "reasoning_content", 17, d[3]);
        } /* signature_delta, citations_delta: no place in an OpenAI stream */
        return 0;
    }
    if (IS("content_block_start")) {
        static const struct key kb[] = {KEY("type"), KEY("text"), KEY("thinking"),
                                        KEY("id"),   KEY("name"), KEY("input")};
        struct jv b[6];
        uint64_t idx;
        if (!obj_scan(v[K_BLOCK], kb, 6, b) || !jv_u64(v[K_INDEX], &idx))
            return -EPROTO;
        if (!s->started)
            oa_role_chunk(s, out, none);
        if (jv_eq(b[0], "text") && jv_nonempty_str(b[1])) {
            oa_delta(s, out, "content", 7, b[1]);
        } else if (jv_eq(b[0], "thinking") && jv_nonempty_str(b[2])) {
            oa_delta(s, out, "reasoning_content", 17, b[2]);
        } else if (jv_eq(b[0], "tool_use")) {
            if (idx >= DP_TR_MAX_BLOCKS || !jv_is(b[3], '"') || !jv_is(b[4], '"'))
                return -EPROTO;
            s->map[idx] = (int16_t)s->n_tools;
            oa_open(s, out);
            PUT(out, "{\"tool_calls\":[{\"index\":");
            put_u64(out, s->n_tools++);
            PUT(out, ",\"id\":");
            put_jv(out, b[3]);
            PUT(out, ",\"type\":\"function\",\"function\":{\"name\":");
            put_jv(out, b[4]);
            PUT(out, ",\"arguments\":");
            /* the input normally comes in input_json_delta pieces; a whole one is sent here */
            struct jv in = b[5];
            const char *q = in.p ? skip_ws(in.p + 1, in.e) : NULL;
            if (jv_is(in, '{') && *q != '}')
                sy_buf_json_str(out, in.p, (size_t)(in.e - in.p));
            else
                PUT(out, "\"\"");
            PUT(out, "}}]}");
            oa_close(out);
            s->has_content = true;
        }
        return 0;
    }
    if (IS("content_block_stop") || IS("ping"))
        return 0;
    if (IS("message_start")) {
        static const struct key km[] = {KEY("id"), KEY("usage")};
        struct jv m[2];
        if (!obj_scan(v[K_MESSAGE], km, 2, m))
            return -EPROTO;
        usage_an(m[1], &s->usage);
        if (!s->started)
            oa_role_chunk(s, out, m[0]);
        return 0;
    }
    if (IS("message_delta")) {
        static const struct key kd[] = {KEY("stop_reason")};
        struct jv d;
        if (!obj_scan(v[K_DELTA], kd, 1, &d))
            return -EPROTO;
        usage_an(v[K_USAGE], &s->usage);
        if (!s->started)
            oa_role_chunk(s, out, none);
        if (jv_is(d, '"') && !s->finished) {
            s->stop = (uint8_t)stop_from_jv(DP_API_ANTHROPIC, d);
            oa_finish_chunk(s, out);
        }
        return 0;
    }
    if (IS("message_stop")) {
        oa_end(s, out);
        return 0;
    }
    if (IS("error")) {
        static const struct key ke[] = {KEY("type"), KEY("message")};
        struct jv e[2];
        char t[64] = "api_error";
        if (!obj_scan(v[K_ERROR], ke, 2, e) || !jv_is(e[1], '"'))
            return -EPROTO;
        if (jv_is(e[0], '"') && e[0].e - e[0].p - 2 < (ptrdiff_t)sizeof(t)) {
            memcpy(t, e[0].p + 1, (size_t)(e[0].e - e[0].p - 2));
            t[e[0].e - e[0].p - 2] = '\0';
        }
        int st = strcmp(t, "overloaded_error") == 0   ? 503
                 : strcmp(t, "rate_limit_error") == 0 ? 429
                                                      : 500;
        PUT(out, "data: {\"error\":{\"message\":");
        put_jv(out, e[1]);
        PUT(out, ",\"type\":\"");
        sy_buf_puts(out, oa_type_for_status(st));
        PUT(out, "\",\"param\":null,\"code\":");
        sy_buf_json_str(out, t, strlen(t));
        PUT(out, "}}\n\n");
        s->done = true;
        return 0;
    }
#undef IS
    return 0; /* Anthropic may add event types; unknown ones are skipped */
}

/* ---- OpenAI upstream -> Anthropic client ------------------------------------------------- */

static void an_message_start(struct dp_tr_stream *s, struct sy_buf *out, struct jv id)
{
    PUT(out, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":");
    if (s->msg_id.len)
        sy_buf_append(out, s->msg_id.data, s->msg_id.len);
    else if (jv_is(id, '"'))
        put_jv(out, id);
    else
        PUT(out, "\"msg_gw\"");
    PUT(out, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    sy_buf_append(out, s->model.data, s->model.len);
    PUT(out, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
             "\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}\n\n");
    s->started = true;
}

static void an_block_stop(struct dp_tr_stream *s, struct sy_buf *out)
{
    if (s->block == BLOCK_NONE)
        return;
    PUT(out, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":");
    put_u64(out, (uint64_t)(s->next_block - 1));
    PUT(out, "}\n\n");
    s->block = BLOCK_NONE;
    s->cur_tool = -1;
}

/* Make sure a block of <kind> (text or thinking) is open, closing another one. */
static void an_block_need(struct dp_tr_stream *s, struct sy_buf *out, enum block kind)
{
    if (s->block == kind)
        return;
    an_block_stop(s, out);
    PUT(out, "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":");
    put_u64(out, s->next_block++);
    if (kind == BLOCK_TEXT)
        PUT(out, ",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    else
        PUT(out, ",\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}"
                 "\n\n");
    s->block = (uint8_t)kind;
}

static void an_delta(struct sy_buf *out, uint64_t index, const char *head, size_t hlen,
                     struct jv lit)
{
    PUT(out, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":");
    put_u64(out, index);
    sy_buf_append(out, head, hlen);
    put_jv(out, lit);
    PUT(out, "}}\n\n");
}

#define AN_TEXT     ",\"delta\":{\"type\":\"text_delta\",\"text\":"
#define AN_THINKING ",\"delta\":{\"type\":\"thinking_delta\",\"thinking\":"
#define AN_JSON     ",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":"

/* Send the held message_delta (stop reason and usage so far) and message_stop. */
static void an_end(struct dp_tr_stream *s, struct sy_buf *out)
{
    if (s->done)
        return;
    struct jv none = {NULL, NULL};
    if (!s->started)
        an_message_start(s, out, none);
    an_block_stop(s, out);
    const struct dp_usage *u = &s->usage;
    PUT(out,
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"");
    sy_buf_puts(out, an_stop_name[s->stop ? s->stop : STOP_END]);
    PUT(out, "\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":");
    put_u64(out, usage_uncached(u));
    PUT(out, ",\"cache_creation_input_tokens\":");
    put_u64(out, u->cache_write_tokens);
    PUT(out, ",\"cache_read_input_tokens\":");
    put_u64(out, u->cached_tokens);
    PUT(out, ",\"output_tokens\":");
    put_u64(out, u->completion_tokens);
    PUT(out, "}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s->done = true;
    s->delta_pending = false;
}

static int oa_tool_delta(struct dp_tr_stream *s, struct jv tc, struct sy_buf *out)
{
    static const struct key k[] = {KEY("index"), KEY("id"), KEY("function")};
    static const struct key kf[] = {KEY("name"), KEY("arguments")};
    struct jv v[3], f[2];
    uint64_t idx;
    if (!obj_scan(tc, k, 3, v))
        return -EPROTO;
    if (!obj_scan(v[2], kf, 2, f) && jv_is(v[2], '{'))
        return -EPROTO;
    if (!jv_u64(v[0], &idx)) /* some providers leave index out: a new id is a new call */
        idx = jv_is(v[1], '"') || s->cur_tool < 0 ? (uint64_t)(s->cur_tool + 1)
                                                  : (uint64_t)s->cur_tool;
    if (idx >= DP_TR_MAX_BLOCKS)
        return -EPROTO;
    if (s->map[idx] < 0) {
        an_block_stop(s, out);
        s->map[idx] = (int16_t)s->next_block;
        PUT(out, "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":");
        put_u64(out, s->next_block++);
        PUT(out, ",\"content_block\":{\"type\":\"tool_use\",\"id\":");
        if (jv_is(v[1], '"'))
            put_jv(out, v[1]);
        else
            sy_buf_printf(out, "\"toolu_gw_%u\"", (unsigned)idx);
        PUT(out, ",\"name\":");
        if (jv_is(f[0], '"'))
            put_jv(out, f[0]);
        else
            PUT(out, "\"\"");
        PUT(out, ",\"input\":{}}}\n\n");
        s->block = BLOCK_TOOL;
        s->cur_tool = (int16_t)idx;
        s->has_content = true;
    }
    /* a piece for a call whose block was closed still goes to that block's index */
    if (jv_nonempty_str(f[1]))
        an_delta(out, (uint64_t)s->map[idx], AN_JSON, sizeof(AN_JSON) - 1, f[1]);
    return 0;
}

static int oa_to_an_event(struct dp_tr_stream *s, struct jv obj, struct sy_buf *out)
{
    static const struct key k[] = {KEY("id"), KEY("choices"), KEY("usage"), KEY("error")};
    struct jv v[4], c0;
    struct jarr it;
    if (obj.e - obj.p == 6 && memcmp(obj.p, "[DONE]", 6) == 0) {
        an_end(s, out);
        return 0;
    }
    if (!obj_scan(obj, k, 4, v))
        return -EPROTO;
    if (jv_is(v[3], '{')) {
        static const struct key ke[] = {KEY("message"), KEY("type"), KEY("code")};
        struct jv e[3];
        obj_scan(v[3], ke, 3, e);
        const char *t = "api_error";
        if (jv_eq(e[1], "rate_limit_error") || jv_eq(e[2], "rate_limit_exceeded"))
            t = "rate_limit_error";
        else if (jv_eq(e[1], "invalid_request_error"))
            t = "invalid_request_error";
        PUT(out, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"");
        sy_buf_puts(out, t);
        PUT(out, "\",\"message\":");
        if (jv_is(e[0], '"'))
            put_jv(out, e[0]);
        else
            PUT(out, "\"upstream error\"");
        PUT(out, "}}\n\n");
        s->done = true;
        return 0;
    }
    if (s->done) { /* a usage chunk after the end: counted, not sent */
        if (jv_is(v[2], '{'))
            usage_oa(v[2], &s->usage);
        return 0;
    }
    if (!s->started)
        an_message_start(s, out, v[0]);
    if (v[1].p && !jv_is(v[1], '[') && !jv_is(v[1], 'n'))
        return -EPROTO;
    if (arr_begin(v[1], &it) && arr_next(&it, &c0) == 1) {
        static const struct key kc[] = {KEY("delta"), KEY("finish_reason")};
        static const struct key kd[] = {KEY("content"), KEY("reasoning_content"), KEY("reasoning"),
                                        KEY("tool_calls"), KEY("refusal")};
        struct jv c[2], d[5];
        if (!obj_scan(c0, kc, 2, c) || (c[0].p && !obj_scan(c[0], kd, 5, d)))
            return -EPROTO;
        if (c[0].p) {
            struct jv r = jv_nonempty_str(d[1]) ? d[1] : d[2];
            if (jv_nonempty_str(r)) {
                an_block_need(s, out, BLOCK_THINKING);
                an_delta(out, s->next_block - 1u, AN_THINKING, sizeof(AN_THINKING) - 1, r);
                s->has_content = true;
            }
            for (int i = 0; i < 5; i += 4) { /* content, then refusal */
                if (!jv_nonempty_str(d[i]))
                    continue;
                an_block_need(s, out, BLOCK_TEXT);
                an_delta(out, s->next_block - 1u, AN_TEXT, sizeof(AN_TEXT) - 1, d[i]);
                s->has_content = true;
            }
            struct jarr ti;
            struct jv tc;
            int rc;
            if (arr_begin(d[3], &ti)) {
                while ((rc = arr_next(&ti, &tc)) == 1)
                    if (oa_tool_delta(s, tc, out) != 0)
                        return -EPROTO;
                if (rc < 0)
                    return -EPROTO;
            }
        }
        if (jv_is(c[1], '"')) {
            an_block_stop(s, out);
            s->stop = (uint8_t)stop_from_jv(DP_API_OPENAI, c[1]);
            s->finished = true;
            s->delta_pending = true;
        }
    }
    if (jv_is(v[2], '{')) {
        usage_oa(v[2], &s->usage);
        if (s->delta_pending)
            an_end(s, out);
    }
    return 0;
}

/* ---- same format: pass through, counting ------------------------------------------------- */

static void put_raw_event(const struct sy_sse_event *ev, struct sy_buf *out)
{
    if (ev->raw) {
        sy_buf_append(out, ev->raw, ev->raw_len);
        return;
    }
    if (ev->event_len) {
        PUT(out, "event: ");
        sy_buf_append(out, ev->event, ev->event_len);
        PUT(out, "\n");
    }
    PUT(out, "data: ");
    sy_buf_append(out, ev->data, ev->data_len);
    PUT(out, "\n\n");
}

/* The first choice's delta carries text, reasoning or a tool call. */
static bool oa_chunk_has_content(struct jv choices)
{
    static const struct key kc[] = {KEY("delta")};
    static const struct key kd[] = {KEY("content"), KEY("reasoning_content"), KEY("reasoning"),
                                    KEY("tool_calls"), KEY("refusal")};
    struct jarr it;
    struct jv c0, delta, d[5];
    if (!arr_begin(choices, &it) || arr_next(&it, &c0) != 1 || !obj_scan(c0, kc, 1, &delta) ||
        !obj_scan(delta, kd, 5, d))
        return false;
    return jv_nonempty_str(d[0]) || jv_nonempty_str(d[1]) || jv_nonempty_str(d[2]) ||
           jv_is(d[3], '[') || jv_nonempty_str(d[4]);
}

static int passthrough(struct dp_tr_stream *s, const struct sy_sse_event *ev, struct jv obj,
                       struct sy_buf *out)
{
    if (s->from == DP_API_OPENAI) {
        static const struct key k[] = {KEY("choices"), KEY("usage")};
        struct jv v[2];
        if (obj.e - obj.p == 6 && memcmp(obj.p, "[DONE]", 6) == 0) {
            s->done = true;
        } else if (obj_scan(obj, k, 2, v)) {
            if (jv_is(v[1], '{')) {
                usage_oa(v[1], &s->usage);
                /* the usage-only chunk forced upstream is not for a client that did not ask */
                struct jarr it;
                struct jv el;
                if (!s->client_wants_usage && arr_begin(v[0], &it) && arr_next(&it, &el) == 0)
                    return 0;
            }
            if (!s->has_content)
                s->has_content = oa_chunk_has_content(v[0]);
        }
    } else {
        const char *t = ev->event;
        size_t n = ev->event_len;
        if ((n == 13 && memcmp(t, "message_start", 13) == 0) ||
            (n == 13 && memcmp(t, "message_delta", 13) == 0))
            dp_usage_from_json(DP_API_ANTHROPIC, obj.p, (size_t)(obj.e - obj.p), &s->usage);
        else if (n == 19 && memcmp(t, "content_block_delta", 19) == 0)
            s->has_content = true;
        else if (n == 12 && memcmp(t, "message_stop", 12) == 0)
            s->done = true;
    }
    put_raw_event(ev, out);
    return 0;
}

int dp_tr_stream_event(struct dp_tr_stream *s, const struct sy_sse_event *ev, struct sy_buf *out)
{
    struct jv obj = jv_of(ev->data ? ev->data : "", ev->data ? ev->data_len : 0);
    if (s->from == s->to)
        return passthrough(s, ev, obj, out);
    if (obj.p == obj.e) /* a comment or keep-alive: the client gets its own */
        return 0;
    if (s->from == DP_API_OPENAI)
        return oa_to_an_event(s, obj, out);
    if (s->done)
        return 0;
    const char *type = ev->event;
    size_t tlen = ev->event_len;
    struct jv tv = {NULL, NULL};
    if (tlen == 0) { /* no event: line, fall back to the data's "type" */
        static const struct key kt[] = {KEY("type")};
        if (!obj_scan(obj, kt, 1, &tv) || !jv_is(tv, '"'))
            return -EPROTO;
        type = tv.p + 1;
        tlen = (size_t)(tv.e - tv.p) - 2;
    }
    return an_to_oa_event(s, type, tlen, obj, out);
}

int dp_tr_stream_end(struct dp_tr_stream *s, struct sy_buf *out)
{
    if (s->from == s->to) {
        if (s->to == DP_API_OPENAI && !s->done)
            PUT(out, "data: [DONE]\n\n");
        s->done = true;
        return 0;
    }
    if (s->to == DP_API_ANTHROPIC)
        an_end(s, out);
    else
        oa_end(s, out);
    return 0;
}

void dp_tr_stream_error(struct dp_tr_stream *s, const char *message, const char *code,
                        struct sy_buf *out)
{
    if (message == NULL)
        message = "stream error";
    if (s->to == DP_API_OPENAI) {
        oa_error_chunk(out, message, strlen(message), "server_error", code);
    } else {
        const char *t = an_type_for_code(code);
        PUT(out, "event: error\ndata: ");
        put_an_error(out, t ? t : "api_error", message, strlen(message));
        PUT(out, "\n\n");
    }
    s->done = true;
}

bool dp_tr_stream_has_content(const struct dp_tr_stream *s)
{
    return s->has_content;
}

const struct dp_usage *dp_tr_stream_usage(const struct dp_tr_stream *s)
{
    return &s->usage;
}

void dp_tr_stream_free(struct dp_tr_stream *s)
{
    sy_buf_free(&s->model);
    sy_buf_free(&s->head);
    sy_buf_free(&s->msg_id);
}
