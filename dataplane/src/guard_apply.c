/* SPDX-License-Identifier: Apache-2.0 */
/** Guardrails on requests and answers (guard.h): which guardrails apply to a call, the texts of
 * OpenAI and Anthropic bodies, the limits, the block/redact/log actions and their events.
 *
 * Texts are the decoded strings of the parsed body (jansson has undone every escape, so a
 * keyword written \u4f60\u597d in JSON is found as 你好): message contents, text parts, the
 * Anthropic system prompt, completions' prompt and embeddings' input; never keys, roles, tool
 * definitions or tool arguments. A redacted request is serialised again from the parsed body
 * (strings re-escaped by jansson, so the JSON stays valid whatever the mask); a request the
 * guardrails leave alone goes out byte for byte as before.
 *
 * Streams: each content delta of the answer (OpenAI choices[i].delta.content or .text, each
 * choice on its own; Anthropic text_delta) is written to one vectorscan stream per guardrail, so
 * a match split across two events is found; the last DP_GUARD_HOLD bytes are held back until more
 * text comes or the text ends (finish_reason, content_block_stop, [DONE]), when they go out,
 * redacted, in the event that ends the text or in one made for them. */

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "classify.h"
#include "guard.h"
#include "worker.h"
#include "sy/log.h"
#include "sy/table.h"
#include "sy/util.h"

/* Largest single SSE event of a checked stream (as proxy.c's). */
#define MAX_EVENT (4u * 1024 * 1024)

/* Choices of a streamed answer checked each on its own (n > this: the stream is refused). */
#define MAX_CHOICES 8

/* ============================================================================================
 * The compiled guardrails of a table
 * ========================================================================================== */

struct rail {
    const struct sy_guardrail *gr; /* in the table */
    struct dp_guard_db *in, *out;  /* NULL: that side has nothing to scan */
    bool broken;                   /* did not compile: left out */
};

struct guard_set {
    struct rail *rails;
    uint32_t n;
};

static void set_free(void *p)
{
    struct guard_set *s = p;
    for (uint32_t i = 0; i < s->n; i++) {
        dp_guard_db_unref(s->rails[i].in);
        dp_guard_db_unref(s->rails[i].out);
    }
    free(s->rails);
    free(s);
}

/* One side to compile, or taken from the cache. */
struct prep_side {
    const struct sy_guard_side *side;
    struct dp_guard_db *db;
    bool compile; /* not in the cache: dp_guard_prepare_work() compiles it */
    int rc;
    char *err;
};

struct dp_guard_prep {
    struct sy_table *t;
    struct prep_side *sides; /* input and output of each guardrail */
    uint32_t n_compile;
    uint64_t t0_ns;
};

struct dp_guard_prep *dp_guard_prepare(struct sy_table *t)
{
    if (t->ext || t->n_guardrails == 0)
        return NULL;
    struct dp_guard_prep *p = sy_xcalloc(1, sizeof(*p));
    p->t = t;
    p->t0_ns = sy_now_ns();
    p->sides = sy_xcalloc(2 * (size_t)t->n_guardrails, sizeof(*p->sides));
    for (uint32_t i = 0; i < 2 * t->n_guardrails; i++) {
        struct prep_side *ps = &p->sides[i];
        ps->side = i % 2 ? &t->guardrails[i / 2].output : &t->guardrails[i / 2].input;
        ps->compile = !dp_guard_db_lookup(ps->side, &ps->db);
        p->n_compile += ps->compile;
    }
    return p;
}

bool dp_guard_prepare_pending(const struct dp_guard_prep *p)
{
    return p && p->n_compile > 0;
}

void dp_guard_prepare_work(struct dp_guard_prep *p)
{
    for (uint32_t i = 0; i < 2 * p->t->n_guardrails; i++) {
        struct prep_side *ps = &p->sides[i];
        if (ps->compile)
            ps->rc = dp_guard_db_compile(ps->side, &ps->db, &ps->err);
    }
}

void dp_guard_prepare_finish(struct dp_guard_prep *p)
{
    struct sy_table *t = p->t;
    struct guard_set *s = sy_xcalloc(1, sizeof(*s));
    s->rails = sy_xcalloc(t->n_guardrails, sizeof(*s->rails));
    s->n = t->n_guardrails;
    for (uint32_t i = 0; i < t->n_guardrails; i++) {
        struct rail *r = &s->rails[i];
        struct prep_side *in = &p->sides[2 * i], *out = &p->sides[2 * i + 1];
        r->gr = &t->guardrails[i];
        if (in->compile)
            in->db = dp_guard_db_adopt(in->db);
        if (out->compile)
            out->db = dp_guard_db_adopt(out->db);
        r->in = in->db;
        r->out = out->db;
        if (in->rc < 0 || out->rc < 0) {
            /* The admin API compiles every regex before it stores it: this is a table from
             * elsewhere (a file) or another vectorscan. Leaving the guardrail out is logged. */
            const char *why = in->rc < 0 ? in->err : out->err;
            sy_log(SY_LOG_ERROR, "guard", "guardrail \"%s\" does not compile, left out: %s%s",
                   r->gr->name, in->rc < 0 ? "input." : "output.", why ? why : "out of memory");
            r->broken = true;
        }
        free(in->err);
        free(out->err);
    }
    t->ext = s;
    t->ext_free = set_free;
    sy_log(SY_LOG_INFO, "guard",
           "table version %llu: %u guardrails ready (%u sides compiled) in "
           "%llu ms",
           (unsigned long long)t->version, t->n_guardrails, p->n_compile,
           (unsigned long long)((sy_now_ns() - p->t0_ns) / 1000000));
    free(p->sides);
    free(p);
}

void dp_guard_attach(struct sy_table *t)
{
    struct dp_guard_prep *p = dp_guard_prepare(t);
    if (!p)
        return;
    dp_guard_prepare_work(p);
    dp_guard_prepare_finish(p);
}

/* ============================================================================================
 * A request's guardrails
 * ========================================================================================== */

struct dp_guard_req {
    struct sy_http_request *req;
    struct dp_worker *w;
    const struct sy_table *t;
    const struct sy_model *model;
    enum dp_api api;
    const struct rail *rails[DP_GUARD_MAX_RAILS];
    struct dp_guard_db *in[DP_GUARD_MAX_RAILS], *out[DP_GUARD_MAX_RAILS];
    size_t n;
    uint64_t max_output_chars; /* the smallest of the rails' limits; 0 for none */
    const char *limit_rail;    /* the guardrail whose limit that is */
    bool has_output;

    /* a refusal */
    bool blocked;
    const char *code, *param;
    char message[512];

    /* a checked stream: one scanner per choice (OpenAI's n), opened as choices appear */
    bool streaming, ended;
    struct dp_guard_stream st[MAX_CHOICES];
    bool st_open[MAX_CHOICES];
    struct sy_sse_parser sse;
    struct sy_buf *out_buf;
    enum dp_guard_verdict verdict;
    json_t *last_chunk; /* OpenAI: the last chunk, the template of the ones made here */
    int block_index;    /* Anthropic: the content block being streamed */
};

static bool applies(const struct sy_guardrail *gr, const struct sy_model *m, const struct sy_key *k)
{
    if (gr->all)
        return true;
    for (uint32_t i = 0; i < gr->n_models; i++)
        if (strcmp(gr->models[i], m->name) == 0)
            return true;
    for (uint32_t i = 0; k && i < gr->n_keys; i++)
        if (gr->keys[i] == k->id)
            return true;
    return false;
}

struct dp_guard_req *dp_guard_begin(struct sy_http_request *req, const struct sy_model *model,
                                    const struct sy_key *k, enum dp_api api)
{
    const struct sy_table *t = dp__req_table(req);
    const struct guard_set *s = t->ext;
    if (!s)
        return NULL;
    struct dp_guard_req *g = NULL;
    for (uint32_t i = 0; i < s->n; i++) {
        const struct rail *r = &s->rails[i];
        if (r->broken || !applies(r->gr, model, k))
            continue;
        if (!g) {
            g = sy_arena_alloc(&req->arena, sizeof(*g));
            memset(g, 0, sizeof(*g));
            g->req = req;
            g->w = dp__req_worker(req);
            g->t = t;
            g->model = model;
            g->api = api;
            g->block_index = -1;
        }
        if (g->n == DP_GUARD_MAX_RAILS) {
            sy_log(SY_LOG_WARN, "guard",
                   "request=%s more than %d guardrails apply; \"%s\" "
                   "and later ones are skipped",
                   req->id, DP_GUARD_MAX_RAILS, r->gr->name);
            break;
        }
        g->rails[g->n] = r;
        g->in[g->n] = r->in;
        g->out[g->n] = r->out;
        uint32_t lim = r->gr->limits.max_output_chars;
        if (lim && (g->max_output_chars == 0 || lim < g->max_output_chars)) {
            g->max_output_chars = lim;
            g->limit_rail = r->gr->name;
        }
        g->has_output = g->has_output || r->out || lim;
        g->n++;
    }
    return g;
}

bool dp_guard_has_output(const struct dp_guard_req *g)
{
    return g && g->has_output;
}

bool dp_guard_blocked(const struct dp_guard_req *g)
{
    return g && g->blocked;
}

/* ---- events and refusals ------------------------------------------------------------------- */

static void event(struct dp_guard_req *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void event(struct dp_guard_req *g, const char *fmt, ...)
{
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    dp__gov_event(g->w, g->req, SY_EVENT_GUARDRAIL, g->t, g->model, NULL, why, 0);
}

/* One event per guardrail, detector and action seen on <side>. */
static void events_from(struct dp_guard_req *g, const uint32_t *seen, const char *side)
{
    for (size_t r = 0; r < g->n; r++) {
        for (int d = 0; d < SY_GUARD_DETECTOR_MAX; d++)
            for (int a = 0; a < SY_GUARD_ACTION_MAX; a++)
                if (seen[r] & (1u << (d * 3 + a)))
                    event(g, "%s: %s %s (%s)", g->rails[r]->gr->name,
                          sy_guard_action_name((enum sy_guard_action)a),
                          sy_guard_detector_name((enum sy_guard_detector)d), side);
    }
}

static const char *what_found(enum sy_guard_detector d)
{
    switch (d) {
    case SY_GUARD_EMAIL:
        return "an email address";
    case SY_GUARD_PHONE:
        return "a phone number";
    case SY_GUARD_CN_MOBILE:
        return "a mobile phone number";
    case SY_GUARD_CN_ID:
        return "a resident ID number";
    case SY_GUARD_BANK_CARD:
        return "a bank card number";
    case SY_GUARD_IPV4:
        return "an IPv4 address";
    case SY_GUARD_IPV6:
        return "an IPv6 address";
    case SY_GUARD_SECRET:
        return "a secret (an API key or a private key)";
    case SY_GUARD_KEYWORD:
        return "a blocked keyword";
    case SY_GUARD_REGEX:
        return "text matching a blocked pattern";
    case SY_GUARD_DETECTOR_MAX:
        break;
    }
    return "blocked content";
}

static void refuse(struct dp_guard_req *g, const char *code, const char *param, const char *fmt,
                   ...) __attribute__((format(printf, 4, 5)));

static void refuse(struct dp_guard_req *g, const char *code, const char *param, const char *fmt,
                   ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->message, sizeof(g->message), fmt, ap);
    va_end(ap);
    g->blocked = true;
    g->code = code;
    g->param = param;
}

/* The first blocking match of <m>: which guardrail, which detector. */
static void refuse_match(struct dp_guard_req *g, const struct dp_guard_matches *m, const char *side)
{
    for (size_t r = 0; r < g->n; r++)
        for (int d = 0; d < SY_GUARD_DETECTOR_MAX; d++)
            if (m->seen[r] & (1u << (d * 3 + SY_GUARD_BLOCK))) {
                refuse(g, "guardrail_blocked", NULL,
                       "Blocked by guardrail \"%s\": the %s contains %s.", g->rails[r]->gr->name,
                       side, what_found((enum sy_guard_detector)d));
                return;
            }
    refuse(g, "guardrail_blocked", NULL, "Blocked by a guardrail.");
}

static void error_body(struct dp_guard_req *g, struct sy_buf *b)
{
    if (g->api == DP_API_ANTHROPIC)
        dp_tr_gateway_error(DP_API_ANTHROPIC, 400, "invalid_request_error", g->code, g->message, b);
    else
        sy_http_error_json(b, "invalid_request_error", g->code, g->param, g->message);
}

void dp_guard_error(struct dp_guard_req *g, const char *extra)
{
    struct sy_buf b = SY_BUF_INIT;
    error_body(g, &b);
    sy_http_resp_send(g->req, 400, "application/json", extra, b.data, b.len);
    sy_buf_free(&b);
}

/* ============================================================================================
 * Input
 * ========================================================================================== */

struct texts {
    json_t *v[256];
    size_t n;
    json_t **more; /* beyond 256 */
    size_t n_more, cap_more;
};

static void texts_add(struct texts *t, json_t *s)
{
    if (t->n < SY_ARRAY_LEN(t->v)) {
        t->v[t->n++] = s;
        return;
    }
    if (t->n_more == t->cap_more) {
        t->cap_more = t->cap_more ? 2 * t->cap_more : 256;
        t->more = sy_xrealloc(t->more, t->cap_more * sizeof(*t->more));
    }
    t->more[t->n_more++] = s;
}

static json_t *texts_at(const struct texts *t, size_t i)
{
    return i < t->n ? t->v[i] : t->more[i - t->n];
}

/* A string, or an array of strings or of {"type": "text", "text": ...} parts. */
static void collect_content(struct texts *t, json_t *c)
{
    if (json_is_string(c)) {
        texts_add(t, c);
        return;
    }
    size_t i;
    json_t *part;
    json_array_foreach(c, i, part)
    {
        if (json_is_string(part)) {
            texts_add(t, part);
            continue;
        }
        json_t *text = json_object_get(part, "text");
        if (json_is_string(text))
            texts_add(t, text);
    }
}

static void collect(struct texts *t, json_t *root)
{
    size_t i;
    json_t *msg;
    json_array_foreach(json_object_get(root, "messages"), i, msg)
        collect_content(t, json_object_get(msg, "content"));
    collect_content(t, json_object_get(root, "system"));
    collect_content(t, json_object_get(root, "prompt"));
    collect_content(t, json_object_get(root, "input"));
}

static size_t utf8_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xc0) != 0x80;
    return k;
}

static bool check_limits(struct dp_guard_req *g, const struct texts *t)
{
    uint64_t chars = 0, tokens = 0;
    bool any = false;
    for (size_t r = 0; r < g->n; r++)
        any = any || g->rails[r]->gr->limits.max_input_chars ||
              g->rails[r]->gr->limits.max_input_tokens;
    for (size_t i = 0; any && i < t->n + t->n_more; i++) {
        json_t *s = texts_at(t, i);
        chars += utf8_len(json_string_value(s), json_string_length(s));
        tokens += dp_estimate_tokens(json_string_value(s), json_string_length(s));
    }
    for (size_t r = 0; r < g->n; r++) {
        const struct sy_guardrail *gr = g->rails[r]->gr;
        if (gr->limits.max_input_chars && chars > gr->limits.max_input_chars) {
            event(g, "%s: block max_input_chars (input)", gr->name);
            refuse(g, "guardrail_input_too_long", "messages",
                   "Blocked by guardrail \"%s\": the input has %llu characters, more than its "
                   "limit of %u.",
                   gr->name, (unsigned long long)chars, gr->limits.max_input_chars);
            return false;
        }
        if (gr->limits.max_input_tokens && tokens > gr->limits.max_input_tokens) {
            event(g, "%s: block max_input_tokens (input)", gr->name);
            refuse(g, "guardrail_input_too_long", "messages",
                   "Blocked by guardrail \"%s\": the input has about %llu tokens, more than its "
                   "limit of %u.",
                   gr->name, (unsigned long long)tokens, gr->limits.max_input_tokens);
            return false;
        }
    }
    return true;
}

/* max_tokens above a cap: lowered or refused; absent: set to the cap, so that the cap holds. */
static bool cap_max_tokens(struct dp_guard_req *g, json_t *root, bool *changed)
{
    static const char *const fields[] = {"max_tokens", "max_completion_tokens"};
    if (!json_object_get(root, "messages") && !json_object_get(root, "prompt"))
        return true; /* embeddings: nothing is generated */
    for (size_t r = 0; r < g->n; r++) {
        const struct sy_guardrail *gr = g->rails[r]->gr;
        uint32_t cap = gr->limits.max_tokens_cap;
        if (!cap)
            continue;
        bool present = false;
        for (size_t f = 0; f < SY_ARRAY_LEN(fields); f++) {
            json_t *v = json_object_get(root, fields[f]);
            if (!json_is_integer(v))
                continue;
            present = true;
            if (json_integer_value(v) <= (json_int_t)cap)
                continue;
            if (gr->limits.max_tokens_mode == SY_GUARD_TOKENS_REFUSE) {
                event(g, "%s: block %s (input)", gr->name, fields[f]);
                refuse(g, "guardrail_max_tokens", fields[f],
                       "Blocked by guardrail \"%s\": %s is %lld, above its cap of %u.", gr->name,
                       fields[f], (long long)json_integer_value(v), cap);
                return false;
            }
            event(g, "%s: lower %s %lld -> %u (input)", gr->name, fields[f],
                  (long long)json_integer_value(v), cap);
            json_object_set_new(root, fields[f], json_integer(cap));
            *changed = true;
        }
        if (!present) {
            json_object_set_new(root, "max_tokens", json_integer(cap));
            *changed = true;
        }
    }
    return true;
}

enum dp_guard_verdict dp_guard_input(struct dp_guard_req *g, json_t *root)
{
    struct texts t = {.n = 0};
    struct dp_guard_matches m = {0};
    struct sy_buf red = SY_BUF_INIT;
    bool changed = false, any_db = false;
    enum dp_guard_verdict v = DP_GUARD_PASS;

    collect(&t, root);
    if (!check_limits(g, &t)) {
        v = DP_GUARD_BLOCKED;
        goto done;
    }
    for (size_t r = 0; r < g->n; r++)
        any_db = any_db || g->in[r];
    for (size_t i = 0; any_db && i < t.n + t.n_more; i++) {
        json_t *s = texts_at(&t, i);
        const char *text = json_string_value(s);
        size_t len = json_string_length(s);
        m.n = 0;
        int worst = dp_guard_scan_text(g->in, g->n, text, len, &m);
        if (worst == SY_GUARD_BLOCK) {
            refuse_match(g, &m, "request");
            v = DP_GUARD_BLOCKED;
            break;
        }
        if (worst == SY_GUARD_REDACT) {
            sy_buf_reset(&red);
            dp_guard_redact(text, len, 0, &m, &red);
            json_string_setn(s, red.data ? red.data : "", red.len);
            changed = true;
        }
    }
    events_from(g, m.seen, "input");
    if (v == DP_GUARD_PASS && !cap_max_tokens(g, root, &changed))
        v = DP_GUARD_BLOCKED;
    if (v == DP_GUARD_PASS && changed)
        v = DP_GUARD_CHANGED;
done:
    free(t.more);
    dp_guard_matches_free(&m);
    sy_buf_free(&red);
    return v;
}

/* ============================================================================================
 * Output: a whole answer
 * ========================================================================================== */

/* Check one answer text <s> (a JSON string, changed in place); <chars_left> is what the length
 * limit still allows (UINT64_MAX: no limit). Returns -1 when blocked, 1 when cut by the limit. */
static int check_answer_text(struct dp_guard_req *g, json_t *s, struct dp_guard_matches *m,
                             bool *changed)
{
    const char *text = json_string_value(s);
    size_t len = json_string_length(s);
    struct sy_buf red = SY_BUF_INIT;
    int rc = 0;

    m->n = 0;
    int worst = dp_guard_scan_text(g->out, g->n, text, len, m);
    if (worst == SY_GUARD_BLOCK) {
        refuse_match(g, m, "answer");
        return -1;
    }
    if (worst == SY_GUARD_REDACT) {
        dp_guard_redact(text, len, 0, m, &red);
        text = red.data ? red.data : "";
        len = red.len;
        *changed = true;
    }
    if (g->max_output_chars && utf8_len(text, len) > g->max_output_chars) {
        size_t k = 0, i = 0;
        for (; i < len; i++)
            if (((unsigned char)text[i] & 0xc0) != 0x80 && k++ == g->max_output_chars)
                break;
        len = i;
        *changed = true;
        rc = 1;
    }
    if (*changed)
        json_string_setn(s, text, len);
    sy_buf_free(&red);
    return rc;
}

enum dp_guard_verdict dp_guard_output_body(struct dp_guard_req *g, struct sy_buf *body)
{
    if (!g->has_output || body->len == 0)
        return DP_GUARD_PASS;
    json_t *root = json_loadb(body->data, body->len, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return DP_GUARD_PASS;
    }
    struct dp_guard_matches m = {0};
    bool changed = false, cut = false;
    int rc = 0;
    size_t i;
    json_t *x;
    if (g->api == DP_API_ANTHROPIC) {
        json_array_foreach(json_object_get(root, "content"), i, x)
        {
            json_t *s = json_object_get(x, "text");
            if (!json_is_string(s))
                continue;
            bool ch = false;
            if ((rc = check_answer_text(g, s, &m, &ch)) < 0)
                break;
            changed = changed || ch;
            if (rc == 1) {
                json_object_set_new(root, "stop_reason", json_string("max_tokens"));
                cut = true;
            }
        }
    } else {
        json_array_foreach(json_object_get(root, "choices"), i, x)
        {
            json_t *msg = json_object_get(x, "message");
            json_t *s = msg ? json_object_get(msg, "content") : json_object_get(x, "text");
            if (!json_is_string(s))
                continue;
            bool ch = false;
            if ((rc = check_answer_text(g, s, &m, &ch)) < 0)
                break;
            changed = changed || ch;
            if (rc == 1) {
                json_object_set_new(x, "finish_reason", json_string("length"));
                cut = true;
            }
        }
    }
    events_from(g, m.seen, "output");
    dp_guard_matches_free(&m);
    enum dp_guard_verdict v = DP_GUARD_PASS;
    if (rc < 0) {
        v = DP_GUARD_BLOCKED;
    } else if (changed) {
        if (cut)
            event(g, "%s: truncate max_output_chars (output)", g->limit_rail);
        char *text = json_dumps(root, JSON_COMPACT);
        if (text) {
            sy_buf_reset(body);
            sy_buf_puts(body, text);
            free(text);
            v = DP_GUARD_CHANGED;
        }
    }
    json_decref(root);
    return v;
}

/* ============================================================================================
 * Output: streams
 * ========================================================================================== */

static void put_data(struct sy_buf *out, const char *event_name, json_t *j)
{
    char *text = json_dumps(j, JSON_COMPACT);
    if (event_name)
        sy_buf_printf(out, "event: %s\n", event_name);
    sy_buf_printf(out, "data: %s\n\n", text ? text : "{}");
    free(text);
}

/* An OpenAI chunk like the last one seen, with one choice <idx>: <delta> (taken) and <finish>. */
static void openai_chunk(struct dp_guard_req *g, int idx, json_t *delta, const char *finish)
{
    json_t *c = g->last_chunk ? json_deep_copy(g->last_chunk)
                              : json_pack("{s:s}", "object", "chat.completion.chunk");
    json_object_del(c, "usage");
    json_t *choice = json_pack("{s:i,s:o,s:o}", "index", idx, "delta", delta, "finish_reason",
                               finish ? json_string(finish) : json_null());
    json_object_set_new(c, "choices", json_pack("[o]", choice));
    put_data(g->out_buf, NULL, c);
    json_decref(c);
}

static void anthropic_text(struct dp_guard_req *g, const char *text, size_t len)
{
    json_t *ev = json_pack("{s:s,s:i,s:{s:s,s:s%}}", "type", "content_block_delta", "index",
                           g->block_index < 0 ? 0 : g->block_index, "delta", "type", "text_delta",
                           "text", text, len);
    put_data(g->out_buf, "content_block_delta", ev);
    json_decref(ev);
}

/* The stream ends with an error event in the client's format: never the matched text. */
static void stream_blocked(struct dp_guard_req *g)
{
    struct sy_buf b = SY_BUF_INIT;
    error_body(g, &b);
    if (g->api == DP_API_ANTHROPIC)
        sy_buf_puts(g->out_buf, "event: error\n");
    sy_buf_printf(g->out_buf, "data: %s\n\n", b.data ? b.data : "{}");
    sy_buf_free(&b);
    g->ended = true;
    g->verdict = DP_GUARD_BLOCKED;
}

/* The length limit was reached on choice <idx>: end the answer as a provider ends one cut by
 * max_tokens (with several choices, the others end there too). */
static void stream_limited(struct dp_guard_req *g, int idx)
{
    event(g, "%s: truncate max_output_chars (output)", g->limit_rail);
    if (g->api == DP_API_ANTHROPIC) {
        json_t *ev = json_pack("{s:s,s:i}", "type", "content_block_stop", "index",
                               g->block_index < 0 ? 0 : g->block_index);
        put_data(g->out_buf, "content_block_stop", ev);
        json_decref(ev);
        ev = json_pack("{s:s,s:{s:s,s:n},s:{s:i}}", "type", "message_delta", "delta", "stop_reason",
                       "max_tokens", "stop_sequence", "usage", "output_tokens", 0);
        put_data(g->out_buf, "message_delta", ev);
        json_decref(ev);
        sy_buf_puts(g->out_buf, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    } else {
        openai_chunk(g, idx, json_object(), "length");
        sy_buf_puts(g->out_buf, "data: [DONE]\n\n");
    }
    g->ended = true;
    g->verdict = DP_GUARD_CHANGED;
}

/* Feed <text> to the scanner of choice <idx>; the text to emit now is left in <emit>. Returns
 * false when the stream must end (blocked: the error event is written). */
static bool feed(struct dp_guard_req *g, int idx, const char *text, size_t len, bool final,
                 struct sy_buf *emit)
{
    if (idx < 0 || idx >= MAX_CHOICES) {
        refuse(g, "guardrail_blocked", NULL,
               "Blocked by guardrails: the answer has more choices than they check (%d).",
               MAX_CHOICES);
        stream_blocked(g);
        return false;
    }
    if (!g->st_open[idx]) {
        if (dp_guard_stream_open(&g->st[idx], g->out, g->n, g->max_output_chars) < 0)
            SY_REQUIRE(0); /* out of memory: the data plane aborts */
        g->st_open[idx] = true;
    }
    int worst = dp_guard_stream_feed(&g->st[idx], text, len, final, emit);
    if (worst == SY_GUARD_BLOCK) {
        refuse_match(g, &g->st[idx].pending, "answer");
        stream_blocked(g);
        return false;
    }
    return true;
}

/* Whether choice <idx>'s scanner hit the length limit. */
static bool limited(const struct dp_guard_req *g, int idx)
{
    return idx >= 0 && idx < MAX_CHOICES && g->st_open[idx] && g->st[idx].limited;
}

/* The end of the answer: every choice's held text goes out, in a chunk of its own. */
static bool openai_flush(struct dp_guard_req *g)
{
    for (int i = 0; i < MAX_CHOICES; i++) {
        struct sy_buf emit = SY_BUF_INIT;
        if (!g->st_open[i] || g->st[i].closed)
            continue;
        bool ok = feed(g, i, "", 0, true, &emit);
        if (ok && emit.len)
            openai_chunk(g, i, json_pack("{s:s%}", "content", emit.data, emit.len), NULL);
        sy_buf_free(&emit);
        if (!ok)
            return false;
    }
    return true;
}

static int on_openai(struct dp_guard_req *g, const struct sy_sse_event *ev)
{
    bool done = ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0;
    json_t *root = NULL;
    if (!done && ev->data_len)
        root = json_loadb(ev->data, ev->data_len, 0, NULL);
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    if (!done && (!json_is_object(root) || json_object_get(root, "error") || !choice)) {
        json_decref(root); /* a comment, an error, the usage chunk: as it is */
        sy_buf_append(g->out_buf, ev->raw, ev->raw_len);
        return 0;
    }
    struct sy_buf emit = SY_BUF_INIT;
    if (done) { /* what is still held goes out before the end */
        if (openai_flush(g))
            sy_buf_append(g->out_buf, ev->raw, ev->raw_len);
        return g->ended ? 1 : 0;
    }
    json_t *jidx = json_object_get(choice, "index");
    int idx =
        json_is_integer(jidx) ? (int)SY_MIN(json_integer_value(jidx), (json_int_t)INT32_MAX) : 0;
    json_decref(g->last_chunk);
    g->last_chunk = json_incref(root);
    json_t *delta = json_object_get(choice, "delta");
    json_t *holder = delta ? delta : choice; /* chat: delta.content; completions: text */
    const char *key = delta ? "content" : "text";
    json_t *s = json_object_get(holder, key);
    json_t *finish = json_object_get(choice, "finish_reason");
    bool final = finish && !json_is_null(finish);
    const char *text = json_is_string(s) ? json_string_value(s) : "";
    size_t len = json_is_string(s) ? json_string_length(s) : 0;
    if (!feed(g, idx, text, len, final, &emit)) {
        json_decref(root);
        sy_buf_free(&emit);
        return 1;
    }
    bool only_text = json_object_size(holder) == (json_is_string(s) ? 1u : 0u);
    if (emit.len || json_is_string(s) || final) {
        if (emit.len || json_is_string(s))
            json_object_set_new(holder, key, json_stringn(emit.data ? emit.data : "", emit.len));
        /* a delta that only carried text now held back says nothing: leave it out */
        if (emit.len || final || !only_text || !delta)
            put_data(g->out_buf, NULL, root);
    } else {
        sy_buf_append(g->out_buf, ev->raw, ev->raw_len);
    }
    if (limited(g, idx))
        stream_limited(g, idx);
    json_decref(root);
    sy_buf_free(&emit);
    return g->ended ? 1 : 0;
}

static int on_anthropic(struct dp_guard_req *g, const struct sy_sse_event *ev)
{
    bool delta = sy_strcaseeq(ev->event, ev->event_len, "content_block_delta");
    bool stop = sy_strcaseeq(ev->event, ev->event_len, "content_block_stop");
    bool msg_stop = sy_strcaseeq(ev->event, ev->event_len, "message_stop");
    struct sy_buf emit = SY_BUF_INIT;
    json_t *root = (delta || stop) ? json_loadb(ev->data, ev->data_len, 0, NULL) : NULL;
    json_t *d = json_object_get(root, "delta");
    json_t *s = json_object_get(d, "text");
    json_t *idx = json_object_get(root, "index");
    if (json_is_integer(idx))
        g->block_index = (int)json_integer_value(idx);

    if (delta && json_is_string(s)) {
        if (feed(g, 0, json_string_value(s), json_string_length(s), false, &emit)) {
            if (emit.len) {
                json_object_set_new(d, "text", json_stringn(emit.data, emit.len));
                put_data(g->out_buf, "content_block_delta", root);
            }
            if (limited(g, 0))
                stream_limited(g, 0);
        }
    } else if (stop || msg_stop) {
        /* the text block ends: what is held goes out in a delta of its own, before the stop */
        if (feed(g, 0, "", 0, true, &emit)) {
            if (emit.len)
                anthropic_text(g, emit.data, emit.len);
            if (limited(g, 0))
                stream_limited(g, 0);
            else
                sy_buf_append(g->out_buf, ev->raw, ev->raw_len);
        }
    } else {
        sy_buf_append(g->out_buf, ev->raw, ev->raw_len);
    }
    json_decref(root);
    sy_buf_free(&emit);
    return g->ended ? 1 : 0;
}

static int on_event(void *ud, const struct sy_sse_event *ev)
{
    struct dp_guard_req *g = ud;
    if (g->ended)
        return 1;
    return g->api == DP_API_ANTHROPIC ? on_anthropic(g, ev) : on_openai(g, ev);
}

enum dp_guard_verdict dp_guard_stream(struct dp_guard_req *g, const char *raw, size_t len,
                                      struct sy_buf *out)
{
    if (g->ended)
        return g->verdict;
    if (!g->streaming) {
        g->streaming = true;
        sy_sse_init(&g->sse, MAX_EVENT);
    }
    g->out_buf = out;
    if (sy_sse_feed(&g->sse, raw, len, on_event, g) == -EMSGSIZE) {
        refuse(g, "guardrail_blocked", NULL, "An event of the answer is too large to check.");
        stream_blocked(g);
    }
    g->out_buf = NULL;
    return g->verdict;
}

void dp_guard_stream_end(struct dp_guard_req *g, struct sy_buf *out)
{
    if (!g || !g->streaming || g->ended)
        return;
    g->out_buf = out;
    if (g->api == DP_API_ANTHROPIC) {
        struct sy_buf emit = SY_BUF_INIT;
        if (g->st_open[0] && !g->st[0].closed && feed(g, 0, "", 0, true, &emit) && emit.len)
            anthropic_text(g, emit.data, emit.len);
        sy_buf_free(&emit);
    } else {
        openai_flush(g);
    }
    g->out_buf = NULL;
}

void dp_guard_end(struct dp_guard_req *g)
{
    if (!g)
        return;
    if (g->streaming) {
        uint32_t seen[DP_GUARD_MAX_RAILS] = {0};
        for (int i = 0; i < MAX_CHOICES; i++) {
            if (!g->st_open[i])
                continue;
            for (size_t r = 0; r < DP_GUARD_MAX_RAILS; r++)
                seen[r] |= g->st[i].pending.seen[r];
            dp_guard_stream_close(&g->st[i]);
            g->st_open[i] = false;
        }
        events_from(g, seen, "output");
        sy_sse_free(&g->sse);
        g->streaming = false;
    }
    json_decref(g->last_chunk);
    g->last_chunk = NULL;
}
