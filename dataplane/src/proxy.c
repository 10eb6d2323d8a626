/* SPDX-License-Identifier: Apache-2.0 */
/** Request handlers: the OpenAI-compatible endpoints and the health probes. A model call is
 * parsed once, routed through the routing table to a deployment, rewritten (model id, stream
 * usage), sent upstream, and its answer relayed: buffered for JSON, event by event for SSE. */

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "rewrite.h"
#include "worker.h"
#include "sy/log.h"
#include "sy/sse.h"
#include "sy/table.h"
#include "sy/util.h"
#include "upstream.h"

enum endpoint {
    EP_CHAT = 0,
    EP_COMPLETIONS,
    EP_EMBEDDINGS,
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
};

/* Largest buffered (non-stream) upstream body we relay. */
#define MAX_UPSTREAM_BODY (64u * 1024 * 1024)
/* Largest single SSE event from upstream. */
#define MAX_SSE_EVENT (4u * 1024 * 1024)

/** One model call in flight; lives in the request's arena. */
struct proxy {
    struct sy_http_request *req;
    const struct sy_key *key; /* the client key, NULL when the table requires none */
    const struct sy_deployment *dep;
    enum endpoint ep;
    bool stream;
    bool client_usage; /* the client asked for the usage chunk itself */
    bool sse;          /* relaying an event stream to the client */
    bool paused;       /* upstream reading paused for a slow client */
    int status;
    struct sy_timeouts timeouts;
    struct sy_buf up_head; /* upstream request head */
    struct sy_buf up_body; /* upstream request body */
    struct sy_buf body;    /* buffered upstream body, or a batch of SSE events */
    struct sy_buf headers; /* upstream response headers we pass on */
    char *ctype;           /* upstream Content-Type (arena) */
    struct sy_sse_parser sse_parser;
    uv_buf_t up_bufs[2]; /* head and body, borrowed by the upstream client until done */
    struct dp_upstream *up;
};

/* ============================================================================================
 * Small responses
 * ========================================================================================== */

static void send_json(struct sy_http_request *req, int status, const char *json)
{
    sy_http_resp_send(req, status, "application/json", NULL, json, strlen(json));
}

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
        sy_http_resp_error(req, 401, "invalid_request_error", "invalid_api_key", NULL,
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
    sy_http_resp_error(req, 401, "invalid_request_error", "invalid_api_key", NULL,
                       "Incorrect API key provided: %s\u2026%s", shown,
                       k ? " This key has expired." : "");
    return false;
}

/* A key that may not use <model> (borrowed, counted): answer 403 and return false. */
static bool key_allows(struct sy_http_request *req, const struct sy_key *k, const char *model,
                       size_t len)
{
    if (k == NULL || sy_key_allows_model(k, model, len))
        return true;
    sy_http_resp_error(req, 403, "permission_denied", "model_not_allowed", "model",
                       "This API key is not allowed to use the model `%.*s`.", (int)len, model);
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
 * Relaying the answer
 * ========================================================================================== */

static void proxy_release(struct proxy *p)
{
    sy_buf_free(&p->up_head);
    sy_buf_free(&p->up_body);
    sy_buf_free(&p->body);
    sy_buf_free(&p->headers);
    sy_sse_free(&p->sse_parser);
}

/* The client left: drop the upstream exchange with it. */
static void proxy_abort(struct sy_http_request *req)
{
    struct proxy *p = req->handler;
    if (p->up) {
        dp_upstream_cancel(p->up);
        p->up = NULL;
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
        "connection", "keep-alive",   "transfer-encoding", "content-length", "content-type",
        "date",       "server",       "te",                "trailer",        "upgrade",
        "set-cookie", "x-request-id", "proxy-connection",  "proxy-authenticate",
        "alt-svc",    "strict-transport-security",
    };
    for (size_t i = 0; i < SY_ARRAY_LEN(skip); i++)
        if (sy_strcaseeq(name, len, skip[i]))
            return true;
    return false;
}

static void on_head(struct dp_upstream *u, void *ud, int status, const struct dp_header *h,
                    size_t n)
{
    struct proxy *p = ud;
    const char *ctype = NULL;
    size_t ctype_len = 0;
    p->status = status;
    for (size_t i = 0; i < n; i++) {
        if (sy_strcaseeq(h[i].name, h[i].name_len, "content-type")) {
            ctype = h[i].value;
            ctype_len = h[i].value_len;
        } else if (!hop_header(h[i].name, h[i].name_len)) {
            sy_buf_append(&p->headers, h[i].name, h[i].name_len);
            sy_buf_append(&p->headers, ": ", 2);
            sy_buf_append(&p->headers, h[i].value, h[i].value_len);
            sy_buf_append(&p->headers, "\r\n", 2);
        }
    }
    p->ctype = ctype ? sy_arena_strndup(&p->req->arena, ctype, ctype_len) : NULL;
    bool is_sse = p->ctype && strncasecmp(p->ctype, "text/event-stream", 17) == 0;
    if (!(p->stream && status == 200 && is_sse))
        return; /* buffered: relayed whole in on_done */
    p->sse = true;
    sy_buf_puts(&p->headers, "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
    struct sy_http_resp_head head = {
        .status = 200,
        .content_type = "text/event-stream",
        .extra = p->headers.data,
        .extra_len = p->headers.len,
        .content_length = -1,
    };
    sy_sse_init(&p->sse_parser, MAX_SSE_EVENT);
    if (sy_http_resp_start(p->req, &head) < 0) {
        struct sy_http_request *req = p->req;
        dp_upstream_cancel(u);
        p->up = NULL;
        proxy_release(p);
        sy_http_resp_abort(req);
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

static int on_event(void *ud, const struct sy_sse_event *ev)
{
    struct proxy *p = ud;
    if (!p->client_usage && ev->data_len && is_usage_chunk(ev->data, ev->data_len))
        return 0; /* we asked for usage for our own accounting; the client did not */
    sy_buf_append(&p->body, ev->raw, ev->raw_len);
    return 0;
}

static void on_body(struct dp_upstream *u, void *ud, const char *data, size_t len)
{
    struct proxy *p = ud;
    if (!p->sse) {
        if (p->body.len + len > MAX_UPSTREAM_BODY) {
            dp_upstream_cancel(u);
            p->up = NULL;
            proxy_release(p);
            sy_http_resp_error(p->req, 502, "upstream_error", "upstream_body_too_large", NULL,
                          "The provider's response is larger than %u bytes.", MAX_UPSTREAM_BODY);
            return;
        }
        sy_buf_append(&p->body, data, len);
        return;
    }
    /* Every event that completes in this read goes out now, in one write. */
    if (sy_sse_feed(&p->sse_parser, data, len, on_event, p) < 0) {
        dp_upstream_cancel(u);
        p->up = NULL;
        struct sy_http_request *req = p->req;
        proxy_release(p);
        sy_http_resp_abort(req);
        return;
    }
    if (p->body.len == 0)
        return;
    int r = sy_http_resp_write(p->req, p->body.data, p->body.len);
    sy_buf_reset(&p->body);
    if (r < 0) {
        dp_upstream_cancel(u);
        p->up = NULL;
        struct sy_http_request *req = p->req;
        proxy_release(p);
        sy_http_resp_abort(req);
    } else if (r == 1 && !p->paused) {
        p->paused = true;
        dp_upstream_pause(u);
    }
}

static void on_done(struct dp_upstream *u, void *ud, enum dp_upstream_error err,
                    const char *detail)
{
    struct proxy *p = ud;
    struct sy_http_request *req = p->req;
    p->up = NULL;
    if (p->sse) {
        if (err == DP_UE_NONE) {
            /* A stream that ends without its final blank line: pass the tail on as it is. */
            if (sy_sse_pending(&p->sse_parser))
                sy_http_resp_write(req, p->sse_parser.pending.data, p->sse_parser.pending.len);
            proxy_release(p);
            sy_http_resp_end(req);
            return;
        }
        /* Content may have reached the client: say what happened in its own format, then cut
         * the stream so it cannot be mistaken for a complete answer. */
        struct sy_buf ev = SY_BUF_INIT;
        const char *msg = detail ? detail : dp_upstream_error_message(err);
        sy_buf_puts(&ev, "data: {\"error\":{\"message\":");
        sy_buf_json_str(&ev, msg, strlen(msg));
        sy_buf_printf(&ev, ",\"type\":\"upstream_error\",\"param\":null,\"code\":\"%s\"}}\n\n",
                      dp_upstream_error_name(err));
        sy_http_resp_write(req, ev.data, ev.len);
        sy_buf_free(&ev);
        sy_log(SY_LOG_WARN, "proxy", "request=%s deployment=%s stream cut: %s", req->id,
               p->dep->name, dp_upstream_error_name(err));
        proxy_release(p);
        sy_http_resp_abort(req);
        return;
    }
    if (err != DP_UE_NONE) {
        sy_log(SY_LOG_WARN, "proxy", "request=%s deployment=%s upstream failed: %s%s%s", req->id,
               p->dep->name, dp_upstream_error_name(err), detail ? ": " : "",
               detail ? detail : "");
        proxy_release(p);
        if (detail)
            sy_http_resp_error(req, dp_upstream_error_status(err), "upstream_error",
                          dp_upstream_error_name(err), NULL, "%s: %s",
                          dp_upstream_error_message(err), detail);
        else
            sy_http_resp_error(req, dp_upstream_error_status(err), "upstream_error",
                          dp_upstream_error_name(err), NULL, "%s", dp_upstream_error_message(err));
        return;
    }
    /* The buffered answer, relayed faithfully: status, type, headers, body. */
    struct sy_buf body = p->body, headers = p->headers;
    p->body = p->headers = (struct sy_buf)SY_BUF_INIT;
    const char *ctype = p->ctype ? p->ctype : "application/json";
    int status = p->status;
    proxy_release(p);
    /* The arena (and ctype in it) lives until the request ends inside sy_http_resp_send. */
    sy_http_resp_send(req, status, ctype, headers.len ? headers.data : NULL, body.data ? body.data : "",
                 body.len);
    sy_buf_free(&body);
    sy_buf_free(&headers);
}

static const struct dp_upstream_cbs upstream_cbs = {
    .on_head = on_head,
    .on_body = on_body,
    .on_done = on_done,
};

/* ============================================================================================
 * Building the upstream request
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

static void build_upstream_head(struct proxy *p)
{
    const struct sy_deployment *d = p->dep;
    struct sy_buf *h = &p->up_head;
    char sep = '?';
    sy_buf_puts(h, "POST ");
    sy_buf_puts(h, d->origin.path_prefix);
    if (d->format == SY_FORMAT_AZURE) {
        sy_buf_puts(h, "/openai/deployments/");
        url_encode(h, d->model);
        sy_buf_puts(h, endpoints[p->ep].suffix);
        sy_buf_puts(h, "?api-version=");
        url_encode(h, d->api_version ? d->api_version : "2024-10-21");
        sep = '&';
    } else {
        sy_buf_puts(h, endpoints[p->ep].suffix);
    }
    if (d->auth_style == SY_AUTH_QUERY && d->api_key) {
        sy_buf_append(h, &sep, 1);
        url_encode(h, d->auth_name);
        sy_buf_puts(h, "=");
        url_encode(h, d->api_key);
    }
    sy_buf_printf(h, " HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nAccept: %s\r\nUser-Agent: switchyard/" SY_VERSION
                     "\r\nX-Request-Id: %s\r\n",
                  d->origin.host_header, p->up_body.len,
                  p->stream ? "text/event-stream" : "application/json", p->req->id);
    if (d->api_key && d->auth_style == SY_AUTH_BEARER)
        sy_buf_printf(h, "Authorization: Bearer %s\r\n", d->api_key);
    else if (d->api_key && d->auth_style == SY_AUTH_HEADER)
        sy_buf_printf(h, "%s: %s\r\n", d->auth_name, d->api_key);
    for (uint32_t i = 0; i < d->n_headers; i++)
        sy_buf_printf(h, "%s: %s\r\n", d->headers[i].name, d->headers[i].value);
    sy_buf_puts(h, "\r\n");
}

static uint32_t pick_or_default(uint32_t v, uint32_t dflt)
{
    return v ? v : dflt;
}

/* Choose a deployment among the model's enabled targets, by weight, in turn. */
static const struct sy_deployment *pick_target(struct sy_http_request *req, const struct sy_model *m)
{
    const struct sy_table *t = dp__req_table(req);
    if (m->total_weight == 0)
        return NULL;
    uint64_t x = dp__req_worker(req)->rr++ % m->total_weight;
    for (uint32_t i = 0; i < m->n_targets; i++) {
        const struct sy_deployment *d = &t->deployments[m->targets[i].deployment];
        if (!d->enabled)
            continue;
        if (x < m->targets[i].weight)
            return d;
        x -= m->targets[i].weight;
    }
    return NULL;
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
        sy_http_resp_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                      "The request body is empty; send a JSON object.");
        return;
    }
    json_error_t jerr;
    json_t *root = json_loadb(req->body.data, req->body.len, 0, &jerr);
    if (!root) {
        sy_http_resp_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                      "The request body is not valid JSON: %s (line %d, column %d).", jerr.text,
                      jerr.line, jerr.column);
        return;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        sy_http_resp_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                      "The request body must be a JSON object.");
        return;
    }
    json_t *jmodel = json_object_get(root, "model");
    json_t *jstream = json_object_get(root, "stream");
    json_t *jso = json_object_get(root, "stream_options");
    if (!json_is_string(jmodel) || json_string_length(jmodel) == 0) {
        json_decref(root);
        sy_http_resp_error(req, 400, "invalid_request_error", "missing_required_parameter", "model",
                      "You must provide a model parameter (a string).");
        return;
    }
    if (jstream && !json_is_boolean(jstream) && !json_is_null(jstream)) {
        json_decref(root);
        sy_http_resp_error(req, 400, "invalid_request_error", "invalid_type", "stream",
                      "'stream' must be a boolean.");
        return;
    }
    if (!json_object_get(root, endpoints[ep].required)) {
        json_decref(root);
        sy_http_resp_error(req, 400, "invalid_request_error", "missing_required_parameter",
                      endpoints[ep].required, "Missing required parameter: '%s'.",
                      endpoints[ep].required);
        return;
    }
    bool stream = json_is_true(jstream) && endpoints[ep].can_stream;
    if (jso && !json_is_object(jso) && !json_is_null(jso)) {
        json_decref(root);
        sy_http_resp_error(req, 400, "invalid_request_error", "invalid_type", "stream_options",
                      "'stream_options' must be an object.");
        return;
    }
    if (!key_allows(req, key, json_string_value(jmodel), json_string_length(jmodel))) {
        json_decref(root);
        return;
    }
    const struct sy_model *m =
        sy_table_find_model(dp__req_table(req), json_string_value(jmodel), json_string_length(jmodel));
    if (!m) {
        sy_http_resp_error(req, 404, "invalid_request_error", "model_not_found", "model",
                      "The model `%s` does not exist or you do not have access to it.",
                      json_string_value(jmodel));
        json_decref(root);
        return;
    }
    json_decref(root);

    const struct sy_deployment *d = pick_target(req, m);
    if (!d) {
        sy_http_resp_error(req, 503, "service_unavailable", "no_deployment", "model",
                      "The model `%s` has no enabled deployment.", m->name);
        return;
    }
    if (d->format == SY_FORMAT_ANTHROPIC) {
        sy_http_resp_error(req, 501, "not_implemented", "format_not_supported", NULL,
                      "Deployment `%s` speaks the Anthropic format, which this gateway cannot "
                      "translate yet.",
                      d->name);
        return;
    }

    struct proxy *p = sy_arena_alloc(&req->arena, sizeof(*p));
    memset(p, 0, sizeof(*p));
    p->req = req;
    p->key = key;
    p->dep = d;
    p->ep = ep;
    p->stream = stream;
    const struct dp_config *cfg = dp__req_worker(req)->cfg;
    p->timeouts = (struct sy_timeouts){
        .connect_ms = pick_or_default(d->timeouts.connect_ms, cfg->upstream_timeouts.connect_ms),
        .first_byte_ms =
            pick_or_default(d->timeouts.first_byte_ms, cfg->upstream_timeouts.first_byte_ms),
        .idle_ms = pick_or_default(d->timeouts.idle_ms, cfg->upstream_timeouts.idle_ms),
        .total_ms = pick_or_default(d->timeouts.total_ms, cfg->upstream_timeouts.total_ms),
    };

    struct dp_rewrite rw = {
        .model = d->model,
        .model_len = strlen(d->model),
        .force_include_usage = stream,
    };
    struct dp_rewrite_info info;
    if (dp_rewrite_request(req->body.data, req->body.len, &rw, &p->up_body, &info) < 0) {
        proxy_release(p);
        sy_http_resp_error(req, 400, "invalid_request_error", "invalid_json", NULL,
                      "The request body could not be rewritten for the provider.");
        return;
    }
    p->client_usage = info.client_include_usage;
    build_upstream_head(p);

    req->handler = p;
    req->on_abort = proxy_abort;
    req->on_drain = proxy_drain;
    p->up_bufs[0] = uv_buf_init(p->up_head.data, (unsigned)p->up_head.len);
    p->up_bufs[1] = uv_buf_init(p->up_body.data, (unsigned)p->up_body.len);
    int r = dp_upstream_start(dp__req_worker(req)->upstream, &d->origin, &p->timeouts, p->up_bufs,
                              2, &upstream_cbs, p, &p->up);
    if (r < 0) {
        proxy_release(p);
        req->on_abort = NULL;
        sy_http_resp_error(req, 502, "upstream_error", "upstream_unavailable", NULL,
                      "Could not start the request to the provider: %s.", strerror(-r));
    }
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
        sy_http_resp_error(req, 404, "invalid_request_error", "unknown_url", NULL,
                      "Unknown request URL: %s %s.", llhttp_method_name(req->method), req->path);
    }
}
