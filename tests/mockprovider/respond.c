/* SPDX-License-Identifier: Apache-2.0 */
/* Answering one request: route it, pick its fault, decide the reply, then play the fault's
 * script — wait, hang, reset, drip, stream with delays, cut the stream short — through the
 * connection's timer and output buffer.
 *
 * The fault comes from the first of: the x-mock-fault header, a "mock" object in the body, the
 * config for the requested model, the default config. The whole object wins; fields are not
 * merged across sources. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "sy/log.h"
#include "sy/util.h"

#define DEFAULT_TEXT       "Hello from the mock provider."
#define DEFAULT_MODEL      "mock-model"
#define DEFAULT_TOOL_ARGS  "{\"city\":\"Paris\"}"
#define STREAM_BACKLOG_MAX (256u * 1024) /* stop producing events while this much is unsent */
#define ENDLESS_DEFAULT_MS 10
#define DRIP_BYTES         8
#define CT_JSON            "application/json"
#define CT_SSE             "text/event-stream"

#define LIT(out, s) sy_buf_append((out), (s), sizeof(s) - 1)

/* ---- the response head ------------------------------------------------------------------------
 */

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 529:
        return "Overloaded";
    default:
        return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

static void put_header_value(struct sy_buf *out, const json_t *v)
{
    if (json_is_string(v))
        sy_buf_append(out, json_string_value(v), json_string_length(v));
    else if (json_is_integer(v))
        sy_buf_printf(out, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        sy_buf_printf(out, "%g", json_real_value(v));
    else if (json_is_boolean(v))
        sy_buf_puts(out, json_is_true(v) ? "true" : "false");
}

void mp_put_head(struct mp_conn *c, int status, const char *ctype, long long content_length)
{
    const struct mp_fault *f = &c->fault;
    struct sy_buf *out = &c->out;
    if (SY_LIKELY(status == 200))
        LIT(out, "HTTP/1.1 200 OK\r\n");
    else
        sy_buf_printf(out, "HTTP/1.1 %d %s\r\n", status, reason(status));
    if (!(f->headers && (json_object_get(f->headers, "content-type") ||
                         json_object_get(f->headers, "Content-Type"))))
        sy_buf_printf(out, "content-type: %s\r\n", ctype);
    if (content_length >= 0)
        sy_buf_printf(out, "content-length: %lld\r\n", content_length);
    else
        LIT(out, "transfer-encoding: chunked\r\n");
    if (strcmp(ctype, CT_SSE) == 0)
        LIT(out, "cache-control: no-cache\r\n");
    if (!c->req.keep_alive)
        LIT(out, "connection: close\r\n");
    if (f->retry_after) {
        LIT(out, "retry-after: ");
        put_header_value(out, f->retry_after);
        LIT(out, "\r\n");
    }
    if (f->headers) {
        const char *k;
        json_t *v;
        json_object_foreach(f->headers, k, v)
        {
            sy_buf_printf(out, "%s: ", k);
            put_header_value(out, v);
            LIT(out, "\r\n");
        }
    }
    LIT(out, "\r\n");
}

/* ---- non-stream bodies: plain, chunked, dripped, cut short ------------------------------------
 */

static void drip_step(struct mp_conn *c)
{
    size_t n = SY_MIN((size_t)DRIP_BYTES, c->out.len - c->body_off);
    mp_conn_send(c, c->out.data + c->body_off, n);
    if (c->closing)
        return;
    c->body_off += n;
    if (c->body_off >= c->out.len) {
        mp_conn_done(c);
        return;
    }
    mp_conn_after(c, c->fault.drip_ms, drip_step);
}

static void put_chunk(struct sy_buf *out, const char *p, size_t n)
{
    if (n == 0)
        return;
    sy_buf_printf(out, "%zx\r\n", n);
    sy_buf_append(out, p, n);
    LIT(out, "\r\n");
}

void mp_send_json(struct mp_conn *c, int status)
{
    const struct mp_fault *f = &c->fault;
    sy_buf_reset(&c->out);
    size_t head_len;
    if (f->chunked) {
        mp_put_head(c, status, CT_JSON, -1);
        head_len = c->out.len;
        size_t half = c->body.len / 2;
        put_chunk(&c->out, c->body.data, half);
        put_chunk(&c->out, c->body.data + half, c->body.len - half);
        LIT(&c->out, "0\r\n\r\n");
    } else {
        mp_put_head(c, status, CT_JSON, (long long)c->body.len);
        head_len = c->out.len;
        sy_buf_append(&c->out, c->body.data, c->body.len);
    }
    if (f->abort_after >= 0) {
        /* The head promises a body; the connection closes halfway through it. */
        mp_conn_send(c, c->out.data, head_len + (c->out.len - head_len) / 2);
        mp_conn_close(c, MP_CLOSE_FLUSH);
        return;
    }
    if (f->drip_ms > 0) {
        mp_conn_send(c, c->out.data, head_len);
        c->body_off = head_len;
        if (!c->closing)
            mp_conn_after(c, f->drip_ms, drip_step);
        return;
    }
    mp_conn_send(c, c->out.data, c->out.len);
    if (!c->closing)
        mp_conn_done(c);
}

/* ---- streams ----------------------------------------------------------------------------------
 */

static void stream_step(struct mp_conn *c)
{
    const struct mp_fault *f = &c->fault;
    struct mp_reply *r = &c->reply;
    uint32_t delay = f->chunk_delay_ms;
    if (r->endless && delay == 0)
        delay = ENDLESS_DEFAULT_MS;
    for (;;) {
        if (mp_conn_backlog(c) > STREAM_BACKLOG_MAX) {
            mp_conn_on_drain(c, stream_step);
            return;
        }
        /* N = 0 closes right after the opening events, before any content. */
        if (f->abort_after >= 0 && r->emitted >= (uint64_t)f->abort_after &&
            (r->phase == MP_PH_PIECES ||
             (f->abort_after == 0 && r->phase > MP_PH_OPEN && r->phase < MP_PH_PIECES))) {
            mp_conn_close(c, MP_CLOSE_FLUSH); /* no terminating chunk */
            return;
        }
        sy_buf_reset(&c->body);
        bool piece;
        if (!mp_reply_event(r, &c->body, &piece)) {
            mp_conn_send(c, "0\r\n\r\n", 5);
            if (!c->closing)
                mp_conn_done(c);
            return;
        }
        if (piece && r->malformed) {
            /* Cut the event's JSON in half: the SSE framing stays, the data is not JSON. */
            c->body.len = (c->body.len - 2) / 2;
            LIT(&c->body, "\n\n");
        }
        sy_buf_reset(&c->out);
        put_chunk(&c->out, c->body.data, c->body.len);
        mp_conn_send(c, c->out.data, c->out.len);
        if (c->closing)
            return;
        if (piece && f->abort_after >= 0 && r->emitted >= (uint64_t)f->abort_after) {
            mp_conn_close(c, MP_CLOSE_FLUSH);
            return;
        }
        /* No wait after the opening events (role chunk, message_start): content starts at
         * once and the delay paces the pieces, as a model does after its first token. No wait
         * before the terminating chunk either. */
        if (delay > 0 && r->phase < MP_PH_MAX && (piece || r->emitted > 0)) {
            mp_conn_after(c, delay, stream_step);
            return;
        }
    }
}

static void endless_headers_step(struct mp_conn *c)
{
    sy_buf_reset(&c->out);
    sy_buf_printf(&c->out, "x-mock-endless-%llu: ", (unsigned long long)c->counter++);
    sy_buf_reserve(&c->out, 1024);
    memset(c->out.data + c->out.len, 'a', 1000);
    c->out.len += 1000;
    LIT(&c->out, "\r\n");
    mp_conn_send(c, c->out.data, c->out.len);
    if (!c->closing)
        mp_conn_after(c, 10, endless_headers_step);
}

/* ---- the answer, once any delay has passed ------------------------------------------------------
 */

static void start(struct mp_conn *c)
{
    const struct mp_fault *f = &c->fault;
    struct mp_reply *r = &c->reply;
    sy_buf_reset(&c->out);
    sy_buf_reset(&c->body);
    if (f->garbage) {
        static const char junk[] = "\x15\x03\x03 this is not HTTP \x00\xff\xfe garbage\r\n\r\n";
        mp_conn_send(c, junk, sizeof(junk) - 1);
        mp_conn_close(c, MP_CLOSE_FLUSH);
        return;
    }
    if (f->endless_headers) {
        LIT(&c->out, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n");
        mp_conn_send(c, c->out.data, c->out.len);
        if (!c->closing)
            mp_conn_after(c, 10, endless_headers_step);
        return;
    }
    if (f->status || f->body) {
        int status = f->status ? f->status : 200;
        if (f->body)
            sy_buf_append(&c->body, f->body, f->body_len);
        else
            mp_reply_error(r->api, status, NULL, &c->body);
        mp_send_json(c, status);
        return;
    }
    if (r->api == MP_API_EMBEDDINGS) {
        mp_reply_embeddings(json_object_get(r->req, "input"), r->model, r->model_len,
                            r->prompt_tokens, &c->body);
        mp_send_json(c, 200);
        return;
    }
    if (r->stream) {
        mp_put_head(c, 200, CT_SSE, -1);
        mp_conn_send(c, c->out.data, c->out.len);
        if (!c->closing)
            stream_step(c);
        return;
    }
    mp_reply_body(r, &c->body);
    if (f->malformed)
        c->body.len /= 2; /* an unterminated object is never valid JSON */
    mp_send_json(c, 200);
}

/* ---- reading the request -----------------------------------------------------------------------
 */

/* Characters of text in a message content: a string, or an array of parts with "text". */
static size_t content_chars(const json_t *v)
{
    if (json_is_string(v))
        return json_string_length(v);
    size_t n = 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *part;
        json_array_foreach(v, i, part)
        {
            n += content_chars(json_is_object(part) ? json_object_get(part, "text") : part);
        }
    }
    return n;
}

static size_t prompt_chars(enum mp_api api, const json_t *req)
{
    size_t n = 0;
    switch (api) {
    case MP_API_CHAT:
    case MP_API_MESSAGES: {
        size_t i;
        json_t *m;
        json_array_foreach(json_object_get(req, "messages"), i, m)
        {
            n += content_chars(json_object_get(m, "content"));
        }
        n += content_chars(json_object_get(req, "system"));
        break;
    }
    case MP_API_COMPLETIONS:
        n = content_chars(json_object_get(req, "prompt"));
        break;
    case MP_API_EMBEDDINGS:
        n = content_chars(json_object_get(req, "input"));
        break;
    default:
        break;
    }
    return n;
}

/* The text of the last user message (or the prompt), for "echo". */
static const json_t *last_user_text(enum mp_api api, const json_t *req)
{
    if (api == MP_API_COMPLETIONS) {
        const json_t *p = json_object_get(req, "prompt");
        return json_is_array(p) ? json_array_get(p, 0) : p;
    }
    const json_t *msgs = json_object_get(req, "messages");
    for (size_t i = json_array_size(msgs); i-- > 0;) {
        const json_t *m = json_array_get(msgs, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (role == NULL || strcmp(role, "user") != 0)
            continue;
        const json_t *content = json_object_get(m, "content");
        if (json_is_string(content))
            return content;
        size_t j;
        json_t *part;
        json_array_foreach(content, j, part)
        {
            const json_t *t = json_object_get(part, "text");
            if (json_is_string(t))
                return t;
        }
        return NULL;
    }
    return NULL;
}

static uint64_t count_words(const char *s, size_t n)
{
    uint64_t words = 0;
    bool in_word = false;
    for (size_t i = 0; i < n; i++) {
        bool space = s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r';
        if (!space && !in_word)
            words++;
        in_word = !space;
    }
    return words;
}

static void set_str(const json_t *v, const char **p, size_t *n)
{
    if (json_is_string(v)) {
        *p = json_string_value(v);
        *n = json_string_length(v);
    }
}

/* A tool call answer: name from the fault or the request's first tool, arguments from the fault
 * or a fixed {"city":"Paris"}. False when there is no tool to call. */
static bool plan_tool(struct mp_reply *r, const json_t *req, const json_t *tc)
{
    const json_t *tool = json_array_get(json_object_get(req, "tools"), 0);
    const json_t *fn = json_object_get(tool, "function");
    const json_t *name = json_object_get(tc, "name");
    if (!json_is_string(name))
        name = json_object_get(fn ? fn : tool, "name");
    if (!json_is_string(name))
        return false;
    set_str(name, &r->tool_name, &r->tool_name_len);
    r->tool_id = r->api == MP_API_MESSAGES ? "toolu_mock_1" : "call_mock_1";
    r->tool_id_len = strlen(r->tool_id);
    set_str(json_object_get(tc, "id"), &r->tool_id, &r->tool_id_len);
    r->tool_args = DEFAULT_TOOL_ARGS;
    r->tool_args_len = sizeof(DEFAULT_TOOL_ARGS) - 1;
    const json_t *args = json_object_get(tc, "arguments");
    if (json_is_string(args)) {
        set_str(args, &r->tool_args, &r->tool_args_len);
    } else if (json_is_object(args)) {
        char *s = json_dumps(args, JSON_COMPACT); /* pool memory */
        r->tool_args = s;
        r->tool_args_len = strlen(s);
    }
    /* Two or more pieces, at most 32 bytes each. */
    r->npieces = r->tool_args_len <= 64 ? 2 : (r->tool_args_len + 31) / 32;
    r->tool = true;
    return true;
}

static uint64_t usage_field(const json_t *usage, const char *a, const char *b, uint64_t dflt)
{
    const json_t *v = json_object_get(usage, a);
    if (!json_is_integer(v))
        v = json_object_get(usage, b);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (uint64_t)json_integer_value(v)
                                                            : dflt;
}

static void plan_reply(struct mp_conn *c, enum mp_api api, const json_t *req)
{
    const struct mp_fault *f = &c->fault;
    struct mp_reply *r = &c->reply;
    memset(r, 0, sizeof(*r));
    r->api = api;
    r->req = req;
    r->model = DEFAULT_MODEL;
    r->model_len = sizeof(DEFAULT_MODEL) - 1;
    set_str(json_object_get(req, "model"), &r->model, &r->model_len);
    r->stream = json_is_true(json_object_get(req, "stream")) && api != MP_API_EMBEDDINGS;
    r->include_usage =
        json_is_true(json_object_get(json_object_get(req, "stream_options"), "include_usage"));
    r->malformed = f->malformed;
    r->endless = f->endless_stream && r->stream;
    r->seq = ++mp_stats.seq;
    r->created = (long long)time(NULL);
    r->prompt_tokens = SY_MAX(prompt_chars(api, req) / 4, (size_t)1);

    r->text = DEFAULT_TEXT;
    r->text_len = sizeof(DEFAULT_TEXT) - 1;
    if (f->content) {
        r->text = f->content;
        r->text_len = f->content_len;
    } else if (f->echo) {
        set_str(last_user_text(api, req), &r->text, &r->text_len);
    }
    if (!(f->tool_call && api != MP_API_COMPLETIONS && plan_tool(r, req, f->tool_call)))
        r->npieces = f->chunks >= 0 ? (uint64_t)f->chunks : count_words(r->text, r->text_len);
    r->completion_tokens = r->npieces;
    r->prompt_tokens = usage_field(f->usage, "prompt_tokens", "input_tokens", r->prompt_tokens);
    r->completion_tokens =
        usage_field(f->usage, "completion_tokens", "output_tokens", r->completion_tokens);
    r->total_tokens = usage_field(f->usage, "total_tokens", "total_tokens",
                                  r->prompt_tokens + r->completion_tokens);
}

/* ---- entry ------------------------------------------------------------------------------------
 */

static void fail(struct mp_conn *c, enum mp_api api, int status, const char *msg)
{
    sy_buf_reset(&c->body);
    mp_reply_error(api, status, msg, &c->body);
    mp_send_json(c, status);
}

static bool ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

static void list_models(struct mp_conn *c)
{
    static const char *const builtin[] = {DEFAULT_MODEL, "mock-gpt", "mock-claude"};
    struct sy_buf *out = &c->body;
    sy_buf_reset(out);
    LIT(out, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < SY_ARRAY_LEN(builtin); i++)
        sy_buf_printf(out,
                      "%s{\"id\":\"%s\",\"object\":\"model\",\"created\":0,"
                      "\"owned_by\":\"mock\"}",
                      i ? "," : "", builtin[i]);
    const char *model;
    json_t *v;
    json_object_foreach(mp_config.by_model, model, v)
    {
        LIT(out, ",{\"id\":");
        sy_buf_json_str(out, model, strlen(model));
        LIT(out, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"mock\"}");
    }
    LIT(out, "]}");
    mp_send_json(c, 200);
}

/* Pick the fault for this request; false after answering 400 when one is malformed. */
static bool choose_fault(struct mp_conn *c, enum mp_api api, const json_t *req)
{
    const json_t *fo = NULL;
    size_t n;
    const char *hdr = mp_req_header(c, "x-mock-fault", &n);
    if (hdr) {
        fo = json_loadb(hdr, n, 0, NULL);
        if (!json_is_object(fo)) {
            fail(c, api, 400, "x-mock-fault is not a JSON object");
            return false;
        }
    } else if (json_is_object(json_object_get(req, "mock"))) {
        fo = json_object_get(req, "mock");
    } else {
        const char *model = json_string_value(json_object_get(req, "model"));
        json_t *cfg = model ? json_object_get(mp_config.by_model, model) : NULL;
        if (cfg == NULL)
            cfg = mp_config.dflt;
        if (cfg)
            c->fault_ref = json_incref(cfg); /* a new config may replace it mid-response */
        fo = cfg;
    }
    char err[256];
    if (mp_fault_parse(&c->fault, fo, err, sizeof(err)) < 0) {
        mp_fault_clear(&c->fault);
        fail(c, api, 400, err);
        return false;
    }
    return true;
}

void mp_respond(struct mp_conn *c)
{
    const char *url = c->req.url.data ? c->req.url.data : "";
    size_t path_len = strcspn(url, "?");
    if (path_len > 6 && memcmp(url, "/mock/", 6) == 0 && mp_admin_handle(c, url, path_len))
        return;
    mp_stats.requests++;
    mp_admin_record(c);

    enum mp_api api;
    bool post = c->req.method == HTTP_POST;
    if (post && ends_with(url, path_len, "/chat/completions"))
        api = MP_API_CHAT;
    else if (post && ends_with(url, path_len, "/completions"))
        api = MP_API_COMPLETIONS;
    else if (post && ends_with(url, path_len, "/messages"))
        api = MP_API_MESSAGES;
    else if (post && ends_with(url, path_len, "/embeddings"))
        api = MP_API_EMBEDDINGS;
    else if (c->req.method == HTTP_GET && ends_with(url, path_len, "/models")) {
        list_models(c);
        return;
    } else {
        char msg[160];
        snprintf(msg, sizeof(msg), "no mock route for %s %.*s",
                 llhttp_method_name((llhttp_method_t)c->req.method), (int)SY_MIN(path_len, 100),
                 url);
        fail(c, MP_API_CHAT, 404, msg);
        return;
    }

    mp_json_use_pool(&c->pool);
    json_t *req = json_loadb(c->req.body.data ? c->req.body.data : "", c->req.body.len, 0, NULL);
    if (!json_is_object(req)) {
        mp_json_use_pool(NULL);
        fail(c, api, 400, "the request body is not a JSON object");
        return;
    }
    if (!choose_fault(c, api, req)) {
        mp_json_use_pool(NULL);
        return;
    }
    plan_reply(c, api, req);
    mp_json_use_pool(NULL);

    const struct mp_fault *f = &c->fault;
    if (f->reset) {
        mp_conn_close(c, MP_CLOSE_RESET);
        return;
    }
    if (f->close) {
        mp_conn_close(c, MP_CLOSE_NOW);
        return;
    }
    if (f->hang) {
        c->hanging = true; /* answered by nobody; closed by the client */
        return;
    }
    if (f->delay_ms > 0) {
        mp_conn_after(c, f->delay_ms, start);
        return;
    }
    start(c);
}

void mp_respond_release(struct mp_conn *c)
{
    if (c->fault_ref) {
        json_decref(c->fault_ref);
        c->fault_ref = NULL;
    }
    mp_pool_reset(&c->pool);
    mp_fault_clear(&c->fault);
    c->hanging = false;
    c->drain_cb = NULL;
    c->timer_cb = NULL;
    c->counter = 0;
    if (!c->closing)
        uv_timer_stop(&c->timer);
}
