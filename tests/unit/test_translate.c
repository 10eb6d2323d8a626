/* SPDX-License-Identifier: Apache-2.0 */
/* OpenAI <-> Anthropic translation: the golden files of tests/data/translation (requests,
 * responses and recorded streams, each direction, compared as parsed JSON and, for streams,
 * event by event in order), then each feature on its own: tool arguments kept exact, request
 * errors naming the field, stop reasons, usage on streams, error shapes and statuses, streams
 * emitting as each event arrives, the held message_delta, garbage input, and the cost per
 * event. SY_TR_REGEN=1 writes the .out files from the current code (review them before
 * committing). */
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "sy/util.h"
#include "translate.h"

/* ---- files ------------------------------------------------------------------------------- */

/* tests/data/translation: the executable lives in <build>/tests, and __FILE__ is either
 * absolute or relative to <build>, where the compiler ran. */
static const char *data_dir(void)
{
    static char path[PATH_MAX];
    char exe[PATH_MAX], src[PATH_MAX];
    if (path[0])
        return path;
    snprintf(src, sizeof(src), "%s", __FILE__);
    if (src[0] == '/') {
        snprintf(path, sizeof(path), "%s/../data/translation", dirname(src));
    } else {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        SY_REQUIRE(n > 0);
        exe[n] = '\0';
        snprintf(path, sizeof(path), "%s/../%s/../data/translation", dirname(exe), dirname(src));
    }
    return path;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    struct sy_buf b = SY_BUF_INIT;
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        sy_buf_append(&b, tmp, n);
    fclose(f);
    if (b.data == NULL)
        sy_buf_puts(&b, "");
    return sy_buf_steal(&b, len);
}

static void spit(const char *path, const char *d, size_t n)
{
    FILE *f = fopen(path, "wb");
    SY_REQUIRE(f != NULL);
    SY_REQUIRE(fwrite(d, 1, n, f) == n);
    fclose(f);
}

static bool regen(void)
{
    const char *e = getenv("SY_TR_REGEN");
    return e && *e == '1';
}

/* ---- comparing JSON and SSE -------------------------------------------------------------- */

/* "created" is the clock: drop it from both sides before comparing. */
static json_t *load_norm(const char *s, size_t n)
{
    json_t *j = json_loadb(s, n, JSON_ALLOW_NUL, NULL);
    if (json_is_object(j))
        json_object_del(j, "created");
    return j;
}

static void expect_json_equal(const char *what, const char *want, size_t wn, const char *got,
                              size_t gn)
{
    json_t *a = load_norm(want, wn), *b = load_norm(got, gn);
    if (a == NULL || b == NULL || !json_equal(a, b))
        fail_msg("%s: JSON differs\n want: %.*s\n  got: %.*s", what, (int)wn, want, (int)gn, got);
    json_decref(a);
    json_decref(b);
}

struct sse_ev {
    char event[64];
    const char *data;
    size_t data_len;
};

/* Split a whole SSE text into its events (simple: "\n\n" separated, one data line each, which
 * is what the translator writes). */
static size_t sse_split(const char *s, size_t n, struct sse_ev *ev, size_t max)
{
    size_t k = 0;
    const char *p = s, *e = s + n;
    while (p < e && k < max) {
        const char *end = memmem(p, (size_t)(e - p), "\n\n", 2);
        if (end == NULL)
            end = e;
        struct sse_ev *x = &ev[k];
        memset(x, 0, sizeof(*x));
        const char *l = p;
        while (l < end) {
            const char *nl = memchr(l, '\n', (size_t)(end - l));
            if (nl == NULL)
                nl = end;
            if (strncmp(l, "event: ", 7) == 0)
                snprintf(x->event, sizeof(x->event), "%.*s", (int)(nl - l - 7), l + 7);
            else if (strncmp(l, "data: ", 6) == 0)
                x->data = l + 6, x->data_len = (size_t)(nl - l - 6);
            l = nl + 1;
        }
        if (x->data || x->event[0])
            k++;
        p = end + 2;
    }
    return k;
}

static void expect_sse_equal(const char *what, const char *want, size_t wn, const char *got,
                             size_t gn)
{
    struct sse_ev a[128], b[128];
    size_t na = sse_split(want, wn, a, 128), nb = sse_split(got, gn, b, 128);
    if (na != nb)
        fail_msg("%s: %zu events, wanted %zu\n got:\n%.*s", what, nb, na, (int)gn, got);
    for (size_t i = 0; i < na; i++) {
        if (strcmp(a[i].event, b[i].event) != 0)
            fail_msg("%s: event %zu is '%s', wanted '%s'", what, i, b[i].event, a[i].event);
        if (a[i].data_len == 6 && memcmp(a[i].data, "[DONE]", 6) == 0) {
            assert_int_equal(b[i].data_len, 6);
            assert_memory_equal(b[i].data, "[DONE]", 6);
            continue;
        }
        char name[512];
        snprintf(name, sizeof(name), "%.300s event %zu (%.60s)", what, i, a[i].event);
        expect_json_equal(name, a[i].data, a[i].data_len, b[i].data, b[i].data_len);
    }
}

/* ---- running a stream ---------------------------------------------------------------------- */

struct feed {
    struct dp_tr_stream *s;
    struct sy_buf *out;
    int rc;
};

static int on_event(void *ud, const struct sy_sse_event *ev)
{
    struct feed *f = ud;
    int rc = dp_tr_stream_event(f->s, ev, f->out);
    if (rc && f->rc == 0)
        f->rc = rc;
    return 0;
}

/* Translate the SSE text <in> fed in pieces of <step> bytes (0: all at once). */
static int run_stream(enum dp_api from, enum dp_api to, const char *in, size_t n, size_t step,
                      bool usage, const char *req_id, struct sy_buf *out, struct dp_usage *u)
{
    struct dp_tr_stream s;
    struct sy_sse_parser p;
    struct feed f = {&s, out, 0};
    dp_tr_stream_init(&s, from, to, "client-model", req_id, usage);
    sy_sse_init(&p, 1 << 20);
    if (step == 0)
        step = n ? n : 1;
    for (size_t off = 0; off < n; off += step)
        sy_sse_feed(&p, in + off, SY_MIN(step, n - off), on_event, &f);
    if (f.rc == 0)
        dp_tr_stream_end(&s, out);
    if (u)
        *u = *dp_tr_stream_usage(&s);
    sy_sse_free(&p);
    dp_tr_stream_free(&s);
    return f.rc;
}

/* ---- golden files ------------------------------------------------------------------------ */

enum kind { K_REQUEST = 0, K_RESPONSE, K_STREAM, K_MAX };

static void golden_one(enum kind kind, enum dp_api from, enum dp_api to, const char *dir,
                       const char *name)
{
    char in_path[3 * PATH_MAX], out_path[3 * PATH_MAX], stem[NAME_MAX + 1];
    const char *ext = kind == K_STREAM ? "sse" : "json";
    size_t stem_len = strlen(name) - strlen(".in.") - strlen(ext);
    snprintf(stem, sizeof(stem), "%.*s", (int)stem_len, name);
    snprintf(in_path, sizeof(in_path), "%s/%s", dir, name);
    snprintf(out_path, sizeof(out_path), "%s/%s.out.%s", dir, stem, ext);
    size_t n;
    char *in = slurp(in_path, &n);
    assert_non_null(in);
    struct sy_buf got = SY_BUF_INIT;
    int rc;
    if (kind == K_REQUEST) {
        json_t *req = json_loadb(in, n, 0, NULL);
        assert_non_null(req);
        char *err = NULL;
        bool stream = json_is_true(json_object_get(req, "stream"));
        rc = dp_tr_request(from, to, req, "up-model", stream, 4096, &got, &err);
        if (rc)
            fail_msg("%s: %s", in_path, err);
        json_decref(req);
    } else if (kind == K_RESPONSE) {
        struct dp_usage u;
        rc = dp_tr_response(from, to, in, n, "client-model", &got, &u);
        assert_true(u.present);
    } else {
        rc = run_stream(from, to, in, n, 0, strstr(name, "nousage") == NULL, NULL, &got, NULL);
        /* the same stream fed 7 bytes at a time gives the same events */
        struct sy_buf again = SY_BUF_INIT;
        assert_int_equal(
            run_stream(from, to, in, n, 7, strstr(name, "nousage") == NULL, NULL, &again, NULL),
            rc);
        expect_sse_equal(in_path, got.data, got.len, again.data, again.len);
        sy_buf_free(&again);
    }
    assert_int_equal(rc, 0);
    if (regen()) {
        if (kind == K_STREAM) {
            spit(out_path, got.data, got.len);
        } else {
            json_t *j = json_loadb(got.data, got.len, 0, NULL);
            char *pretty = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(16));
            struct sy_buf b = SY_BUF_INIT;
            sy_buf_printf(&b, "%s\n", pretty);
            spit(out_path, b.data, b.len);
            sy_buf_free(&b);
            free(pretty);
            json_decref(j);
        }
    }
    size_t wn;
    char *want = slurp(out_path, &wn);
    if (want == NULL)
        fail_msg("%s: missing (run with SY_TR_REGEN=1)", out_path);
    if (kind == K_STREAM)
        expect_sse_equal(in_path, want, wn, got.data, got.len);
    else
        expect_json_equal(in_path, want, wn, got.data, got.len);
    free(want);
    free(in);
    sy_buf_free(&got);
}

static void golden_dir(enum kind kind, const char *sub, enum dp_api from, enum dp_api to)
{
    char dir[2 * PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/%s", data_dir(), sub);
    DIR *d = opendir(dir);
    if (d == NULL)
        fail_msg("cannot open %s", dir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL) {
        if (strstr(e->d_name, ".in.") == NULL)
            continue;
        golden_one(kind, from, to, dir, e->d_name);
        n++;
    }
    closedir(d);
    assert_true(n >= 3);
}

static void test_golden_requests(void **state)
{
    (void)state;
    golden_dir(K_REQUEST, "request/openai-to-anthropic", DP_API_OPENAI, DP_API_ANTHROPIC);
    golden_dir(K_REQUEST, "request/anthropic-to-openai", DP_API_ANTHROPIC, DP_API_OPENAI);
}

static void test_golden_responses(void **state)
{
    (void)state;
    golden_dir(K_RESPONSE, "response/openai-to-anthropic", DP_API_OPENAI, DP_API_ANTHROPIC);
    golden_dir(K_RESPONSE, "response/anthropic-to-openai", DP_API_ANTHROPIC, DP_API_OPENAI);
}

static void test_golden_streams(void **state)
{
    (void)state;
    golden_dir(K_STREAM, "stream/openai-to-anthropic", DP_API_OPENAI, DP_API_ANTHROPIC);
    golden_dir(K_STREAM, "stream/anthropic-to-openai", DP_API_ANTHROPIC, DP_API_OPENAI);
}

/* ---- requests ---------------------------------------------------------------------------- */

/* Translate the request JSON <in>; returns the output parsed (NULL and *err on failure). */
static json_t *tr_req(enum dp_api from, enum dp_api to, const char *in, bool stream, char **err)
{
    json_t *req = json_loads(in, 0, NULL);
    SY_REQUIRE(req != NULL);
    struct sy_buf out = SY_BUF_INIT;
    sy_buf_puts(&out, "keep");
    char *e = NULL;
    int rc = dp_tr_request(from, to, req, "up", stream, 1000, &out, &e);
    json_t *r = NULL;
    if (rc == 0) {
        assert_null(e);
        r = json_loadb(out.data + 4, out.len - 4, 0, NULL);
        assert_non_null(r);
    } else {
        assert_int_equal(rc, -EINVAL);
        assert_string_equal(out.data, "keep"); /* left as it was */
        assert_non_null(e);
    }
    if (err)
        *err = e;
    else
        free(e);
    json_decref(req);
    sy_buf_free(&out);
    return r;
}

static void expect_req_error(enum dp_api from, enum dp_api to, const char *in, const char *needle)
{
    char *err = NULL;
    json_t *r = tr_req(from, to, in, false, &err);
    assert_null(r);
    if (strstr(err, needle) == NULL)
        fail_msg("error '%s' does not name '%s'", err, needle);
    free(err);
}

static void test_request_errors_name_the_field(void **state)
{
    (void)state;
    enum dp_api O = DP_API_OPENAI, A = DP_API_ANTHROPIC;
    expect_req_error(
        O, A,
        "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\","
        "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\"}}]}]}",
        "messages[0].tool_calls[0].function.arguments");
    expect_req_error(
        O, A,
        "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\","
        "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"[1]\"}}]}]}",
        "not a JSON object");
    expect_req_error(O, A, "{\"messages\":[],\"n\":2}", "n:");
    expect_req_error(O, A, "{\"messages\":[],\"response_format\":{\"type\":\"json_object\"}}",
                     "response_format");
    expect_req_error(O, A, "{\"messages\":[{\"role\":\"function\",\"content\":\"x\"}]}",
                     "messages[0].role");
    expect_req_error(O, A, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}",
                     "messages[0].tool_call_id");
    expect_req_error(O, A,
                     "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\","
                     "\"input_audio\":{}}]}]}",
                     "messages[0].content[0]");
    expect_req_error(O, A,
                     "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
                     "\"image_url\":{\"url\":\"data:image/png,abc\"}}]}]}",
                     "data URL");
    expect_req_error(O, A, "{\"messages\":{}}", "messages");
    expect_req_error(O, A, "{\"messages\":[],\"max_tokens\":\"x\"}", "max_tokens");
    expect_req_error(O, A, "{\"messages\":[],\"tools\":[{\"type\":\"custom\",\"custom\":{}}]}",
                     "tools[0]");
    expect_req_error(A, O,
                     "{\"messages\":[],\"tools\":[{\"type\":\"web_search_20250305\","
                     "\"name\":\"web_search\"}]}",
                     "tools[0]");
    expect_req_error(A, O,
                     "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"document\","
                     "\"source\":{}}]}]}",
                     "messages[0].content[0]");
    expect_req_error(A, O,
                     "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
                     "\"tool_use_id\":\"t\",\"content\":[{\"type\":\"image\",\"source\":{}}]}]}]}",
                     "tool_result");
    expect_req_error(A, O, "{\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}",
                     "messages[0].role");
    expect_req_error(A, O, "{\"messages\":[],\"system\":[{\"type\":\"image\",\"source\":{}}]}",
                     "system[0]");
}

/* Arguments go OpenAI string -> Anthropic object -> OpenAI string without changing a value,
 * and numbers are printed in their shortest form. */
static void test_request_arguments_exact(void **state)
{
    (void)state;
    const char *args = "{\"a\":0.1,\"b\":[1,2.5e+21,-0.0,123456789012345],\"s\":\"\\u00e9\\n\\\"\","
                       "\"n\":null,\"t\":true,\"o\":{}}";
    json_t *m = json_pack("{s:[{s:s,s:n,s:[{s:s,s:s,s:{s:s,s:s}}]}]}", "messages", "role",
                          "assistant", "content", "tool_calls", "id", "call_1", "type", "function",
                          "function", "name", "f", "arguments", args);
    struct sy_buf an = SY_BUF_INIT, oa = SY_BUF_INIT;
    char *err = NULL;
    assert_int_equal(dp_tr_request(DP_API_OPENAI, DP_API_ANTHROPIC, m, "up", false, 10, &an, &err),
                     0);
    assert_non_null(strstr(an.data, "\"input\":{\"a\":0.1,\"b\":[1,2.5e+21,-0.0,123456789012345]"));
    json_t *areq = json_loads(an.data, 0, NULL);
    assert_int_equal(
        dp_tr_request(DP_API_ANTHROPIC, DP_API_OPENAI, areq, "up", false, 10, &oa, &err), 0);
    json_t *back = json_loads(oa.data, 0, NULL);
    json_t *call = json_array_get(
        json_object_get(json_array_get(json_object_get(back, "messages"), 0), "tool_calls"), 0);
    assert_string_equal(json_string_value(json_object_get(call, "id")), "call_1");
    const char *got =
        json_string_value(json_object_get(json_object_get(call, "function"), "arguments"));
    json_t *a = json_loads(args, 0, NULL), *b = json_loads(got, 0, NULL);
    assert_true(json_equal(a, b));
    assert_non_null(strstr(got, "\"a\":0.1,"));
    json_decref(a);
    json_decref(b);
    json_decref(back);
    json_decref(areq);
    json_decref(m);
    sy_buf_free(&an);
    sy_buf_free(&oa);
}

static void test_request_details(void **state)
{
    (void)state;
    enum dp_api O = DP_API_OPENAI, A = DP_API_ANTHROPIC;
    /* an empty arguments string is a call without arguments */
    json_t *r =
        tr_req(O, A,
               "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\","
               "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}]}",
               false, NULL);
    json_t *blk = json_array_get(
        json_object_get(json_array_get(json_object_get(r, "messages"), 0), "content"), 0);
    assert_int_equal(json_object_size(json_object_get(blk, "input")), 0);
    assert_int_equal(json_integer_value(json_object_get(r, "max_tokens")), 1000); /* default */
    assert_null(json_object_get(r, "stream"));
    json_decref(r);
    /* an OpenAI stream upstream gets include_usage even if the client asked for none */
    r = tr_req(A, O, "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
               true, NULL);
    assert_true(
        json_is_true(json_object_get(json_object_get(r, "stream_options"), "include_usage")));
    json_decref(r);
    /* same format: model, stream and include_usage set, the rest kept */
    r = tr_req(O, O,
               "{\"model\":\"pub\",\"messages\":[],\"seed\":3,\"stream_options\":"
               "{\"include_usage\":false}}",
               true, NULL);
    assert_string_equal(json_string_value(json_object_get(r, "model")), "up");
    assert_int_equal(json_integer_value(json_object_get(r, "seed")), 3);
    assert_true(
        json_is_true(json_object_get(json_object_get(r, "stream_options"), "include_usage")));
    json_decref(r);
    r = tr_req(A, A, "{\"model\":\"pub\",\"messages\":[]}", false, NULL);
    assert_int_equal(json_integer_value(json_object_get(r, "max_tokens")), 1000);
    json_decref(r);
    /* parallel_tool_calls:false without a tool_choice becomes auto + disable_parallel */
    r = tr_req(O, A,
               "{\"messages\":[],\"parallel_tool_calls\":false,\"tools\":[{\"type\":\"function\","
               "\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"none\"}",
               false, NULL);
    json_t *tc = json_object_get(r, "tool_choice");
    assert_string_equal(json_string_value(json_object_get(tc, "type")), "none");
    assert_null(json_object_get(tc, "disable_parallel_tool_use"));
    assert_non_null(
        json_object_get(json_array_get(json_object_get(r, "tools"), 0), "input_schema"));
    json_decref(r);
    /* a system message in the middle of a conversation still goes to the system prompt */
    r = tr_req(O, A,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"system\","
               "\"content\":\"s\"},{\"role\":\"user\",\"content\":\"b\"}]}",
               false, NULL);
    assert_string_equal(json_string_value(json_object_get(r, "system")), "s");
    assert_int_equal(json_array_size(json_object_get(r, "messages")), 1); /* users merged */
    json_decref(r);
}

/* ---- responses --------------------------------------------------------------------------- */

static json_t *tr_resp(enum dp_api from, enum dp_api to, const char *body, struct dp_usage *u)
{
    struct sy_buf out = SY_BUF_INIT;
    int rc = dp_tr_response(from, to, body, strlen(body), "pub", &out, u);
    json_t *r = rc == 0 ? json_loadb(out.data, out.len, 0, NULL) : NULL;
    sy_buf_free(&out);
    return r;
}

static const char *an_stop_to_finish(const char *stop)
{
    static char body[256];
    snprintf(body, sizeof(body),
             "{\"id\":\"m\",\"type\":\"message\",\"content\":[],\"stop_reason\":\"%s\","
             "\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}",
             stop);
    json_t *r = tr_resp(DP_API_ANTHROPIC, DP_API_OPENAI, body, NULL);
    static char fr[32];
    snprintf(fr, sizeof(fr), "%s",
             json_string_value(json_object_get(json_array_get(json_object_get(r, "choices"), 0),
                                               "finish_reason")));
    json_decref(r);
    return fr;
}

static const char *oa_finish_to_stop(const char *finish)
{
    static char body[256];
    snprintf(body, sizeof(body),
             "{\"id\":\"c\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
             "\"content\":\"x\"},\"finish_reason\":\"%s\"}]}",
             finish);
    json_t *r = tr_resp(DP_API_OPENAI, DP_API_ANTHROPIC, body, NULL);
    static char st[32];
    snprintf(st, sizeof(st), "%s", json_string_value(json_object_get(r, "stop_reason")));
    json_decref(r);
    return st;
}

static void test_stop_reasons(void **state)
{
    (void)state;
    assert_string_equal(an_stop_to_finish("end_turn"), "stop");
    assert_string_equal(an_stop_to_finish("stop_sequence"), "stop");
    assert_string_equal(an_stop_to_finish("max_tokens"), "length");
    assert_string_equal(an_stop_to_finish("tool_use"), "tool_calls");
    assert_string_equal(an_stop_to_finish("refusal"), "content_filter");
    assert_string_equal(an_stop_to_finish("pause_turn"), "stop");
    assert_string_equal(an_stop_to_finish("model_context_window_exceeded"), "length");
    assert_string_equal(oa_finish_to_stop("stop"), "end_turn");
    assert_string_equal(oa_finish_to_stop("length"), "max_tokens");
    assert_string_equal(oa_finish_to_stop("tool_calls"), "tool_use");
    assert_string_equal(oa_finish_to_stop("function_call"), "tool_use");
    assert_string_equal(oa_finish_to_stop("content_filter"), "refusal");
    assert_string_equal(oa_finish_to_stop("something_new"), "end_turn");
}

static void test_response_bad_bodies(void **state)
{
    (void)state;
    struct sy_buf out = SY_BUF_INIT;
    const char *bad[] = {"",
                         "nope",
                         "[]",
                         "{\"choices\":[]}",
                         "{\"content\":3}",
                         ("{\"choices\":[{\"message\":{\"tool_calls\":[{\"id\":\"c\",\"function\":"
                          "{\"name\":\"f\",\"arguments\":\"{bad\"}}]}}]}")};
    for (size_t i = 0; i < SY_ARRAY_LEN(bad); i++) {
        enum dp_api from = i == 4 ? DP_API_ANTHROPIC : DP_API_OPENAI;
        enum dp_api to = from == DP_API_OPENAI ? DP_API_ANTHROPIC : DP_API_OPENAI;
        assert_int_equal(dp_tr_response(from, to, bad[i], strlen(bad[i]), "m", &out, NULL),
                         -EPROTO);
        assert_int_equal(out.len, 0);
    }
    sy_buf_free(&out);
}

/* ---- usage ------------------------------------------------------------------------------- */

static void test_usage_from_json(void **state)
{
    (void)state;
    struct dp_usage u = {0};
    /* an Anthropic stream: input (and cache) from message_start, output from message_delta */
    const char *start = "{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":"
                        "{\"input_tokens\":10,\"cache_creation_input_tokens\":5,"
                        "\"cache_read_input_tokens\":100,\"output_tokens\":1}}}";
    const char *delta = "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"
                        "\"usage\":{\"output_tokens\":42}}";
    dp_usage_from_json(DP_API_ANTHROPIC, start, strlen(start), &u);
    dp_usage_from_json(DP_API_ANTHROPIC, delta, strlen(delta), &u);
    assert_true(u.present);
    assert_int_equal(u.prompt_tokens, 115);
    assert_int_equal(u.cached_tokens, 100);
    assert_int_equal(u.cache_write_tokens, 5);
    assert_int_equal(u.completion_tokens, 42);
    /* a second, cumulative message_delta replaces rather than adds */
    const char *delta2 = "{\"type\":\"message_delta\",\"usage\":{\"input_tokens\":20,"
                         "\"output_tokens\":50}}";
    dp_usage_from_json(DP_API_ANTHROPIC, delta2, strlen(delta2), &u);
    assert_int_equal(u.prompt_tokens, 125);
    assert_int_equal(u.completion_tokens, 50);

    struct dp_usage o = {0};
    const char *chunk = "{\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":2112,"
                        "\"completion_tokens\":300,\"total_tokens\":2412,\"prompt_tokens_details\":"
                        "{\"cached_tokens\":2000},\"completion_tokens_details\":"
                        "{\"reasoning_tokens\":200}}}";
    dp_usage_from_json(DP_API_OPENAI, chunk, strlen(chunk), &o);
    assert_int_equal(o.prompt_tokens, 2112);
    assert_int_equal(o.cached_tokens, 2000);
    assert_int_equal(o.completion_tokens, 300);
    assert_int_equal(o.reasoning_tokens, 200);
    /* chunks with "usage":null and garbage leave it alone */
    struct dp_usage z = {0};
    const char *nul = "{\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}";
    dp_usage_from_json(DP_API_OPENAI, nul, strlen(nul), &z);
    dp_usage_from_json(DP_API_OPENAI, "{\"usage\":{\"prompt_tokens\":", 26, &z);
    dp_usage_from_json(DP_API_ANTHROPIC, "[DONE]", 6, &z);
    assert_false(z.present);
    /* absurd counts saturate at 2^32 - 1, so sums and costs cannot overflow (fuzz_translate) */
    struct dp_usage big = {0};
    const char *huge = "{\"usage\":{\"input_tokens\":15399551061658872462,"
                       "\"output_tokens\":18446744073709551615,"
                       "\"cache_read_input_tokens\":99999999999}}";
    dp_usage_from_json(DP_API_ANTHROPIC, huge, strlen(huge), &big);
    assert_true(big.present);
    assert_int_equal(big.completion_tokens, UINT32_MAX);
    assert_int_equal(big.cached_tokens, UINT32_MAX);
    assert_int_equal(big.prompt_tokens, 2ull * UINT32_MAX);

    /* Anthropic -> OpenAI JSON: prompt_tokens counts cache reads and writes */
    json_t *r = tr_resp(DP_API_ANTHROPIC, DP_API_OPENAI,
                        "{\"id\":\"m\",\"type\":\"message\",\"content\":[],\"stop_reason\":"
                        "\"end_turn\",\"usage\":{\"input_tokens\":10,\"cache_creation_input_"
                        "tokens\":5,\"cache_read_input_tokens\":100,\"output_tokens\":7}}",
                        &u);
    json_t *us = json_object_get(r, "usage");
    assert_int_equal(json_integer_value(json_object_get(us, "prompt_tokens")), 115);
    assert_int_equal(json_integer_value(json_object_get(us, "total_tokens")), 122);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(us, "prompt_tokens_details"), "cached_tokens")),
                     100);
    json_decref(r);
}

/* ---- errors ------------------------------------------------------------------------------ */

static json_t *tr_err(enum dp_api from, enum dp_api to, int status, const char *body, int *st)
{
    struct sy_buf out = SY_BUF_INIT;
    dp_tr_error(from, to, status, body, body ? strlen(body) : 0, &out, st);
    json_t *r = json_loadb(out.data, out.len, 0, NULL);
    assert_non_null(r);
    sy_buf_free(&out);
    return r;
}

static const char *jpath(json_t *j, const char *a, const char *b)
{
    return json_string_value(json_object_get(json_object_get(j, a), b));
}

static void test_errors(void **state)
{
    (void)state;
    enum dp_api O = DP_API_OPENAI, A = DP_API_ANTHROPIC;
    int st;
    json_t *r = tr_err(A, O, 529,
                       "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
                       "\"message\":\"Overloaded\"},\"request_id\":\"req_1\"}",
                       &st);
    assert_int_equal(st, 503);
    assert_string_equal(jpath(r, "error", "message"), "Overloaded");
    assert_string_equal(jpath(r, "error", "type"), "server_error");
    assert_string_equal(jpath(r, "error", "code"), "overloaded_error");
    assert_true(json_is_null(json_object_get(json_object_get(r, "error"), "param")));
    json_decref(r);

    r = tr_err(O, A, 503, "{\"error\":{\"message\":\"busy\",\"type\":\"server_error\"}}", &st);
    assert_int_equal(st, 529);
    assert_string_equal(json_string_value(json_object_get(r, "type")), "error");
    assert_string_equal(jpath(r, "error", "type"), "overloaded_error");
    json_decref(r);

    static const struct {
        int status;
        const char *an, *oa;
    } map[] = {{400, "invalid_request_error", "invalid_request_error"},
               {401, "authentication_error", "authentication_error"},
               {403, "permission_error", "permission_error"},
               {404, "not_found_error", "invalid_request_error"},
               {413, "request_too_large", "invalid_request_error"},
               {429, "rate_limit_error", "rate_limit_error"},
               {500, "api_error", "server_error"}};
    for (size_t i = 0; i < SY_ARRAY_LEN(map); i++) {
        r = tr_err(O, A, map[i].status,
                   "{\"error\":{\"message\":\"m\",\"type\":\"x\",\"param\":null,\"code\":null}}",
                   &st);
        assert_int_equal(st, map[i].status);
        assert_string_equal(jpath(r, "error", "type"), map[i].an);
        json_decref(r);
        char body[160];
        snprintf(body, sizeof(body),
                 "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"m\"}}", map[i].an);
        r = tr_err(A, O, map[i].status, body, &st);
        assert_int_equal(st, map[i].status);
        assert_string_equal(jpath(r, "error", "type"), map[i].oa);
        assert_string_equal(jpath(r, "error", "code"), map[i].an);
        json_decref(r);
    }
    /* not JSON: the text is the message; empty: a message naming the status */
    r = tr_err(A, O, 502, "<html>Bad gateway</html>\n", &st);
    assert_string_equal(jpath(r, "error", "message"), "<html>Bad gateway</html>");
    assert_string_equal(jpath(r, "error", "type"), "server_error");
    json_decref(r);
    r = tr_err(O, A, 429, NULL, &st);
    assert_string_equal(jpath(r, "error", "message"), "upstream returned HTTP 429");
    assert_string_equal(jpath(r, "error", "type"), "rate_limit_error");
    json_decref(r);
    r = tr_err(O, A, 400, "{\"error\":\"plain string\"}", &st);
    assert_string_equal(jpath(r, "error", "message"), "plain string");
    json_decref(r);
    /* same format and shape: the body as it was */
    struct sy_buf out = SY_BUF_INIT;
    const char *body =
        "{\"error\":{\"message\":\"x\",\"type\":\"t\",\"param\":null,\"code\":\"c\"}}";
    dp_tr_error(O, O, 401, body, strlen(body), &out, &st);
    assert_string_equal(out.data, body);
    assert_int_equal(st, 401);
    sy_buf_reset(&out);

    dp_tr_gateway_error(A, 429, "rate_limit_error", "rate_limited", "slow \"down\"", &out);
    r = json_loads(out.data, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(r, "type")), "error");
    assert_string_equal(jpath(r, "error", "type"), "rate_limit_error");
    assert_string_equal(jpath(r, "error", "message"), "slow \"down\"");
    json_decref(r);
    sy_buf_reset(&out);
    dp_tr_gateway_error(A, 503, "server_error", NULL, "no deployment", &out);
    r = json_loads(out.data, 0, NULL);
    assert_string_equal(jpath(r, "error", "type"), "overloaded_error");
    json_decref(r);
    sy_buf_reset(&out);
    dp_tr_gateway_error(O, 401, "authentication_error", "invalid_api_key", "bad key", &out);
    r = json_loads(out.data, 0, NULL);
    assert_string_equal(jpath(r, "error", "code"), "invalid_api_key");
    assert_string_equal(jpath(r, "error", "type"), "authentication_error");
    json_decref(r);
    sy_buf_free(&out);
}

/* ---- streams, event by event ------------------------------------------------------------- */

static struct sy_sse_event mkev(const char *event, const char *data)
{
    struct sy_sse_event ev = {NULL, 0, event, strlen(event), data, strlen(data), NULL, 0};
    return ev;
}

static int feed1(struct dp_tr_stream *s, const char *event, const char *data, struct sy_buf *out)
{
    struct sy_sse_event ev = mkev(event, data);
    return dp_tr_stream_event(s, &ev, out);
}

/* Each content event produces its client bytes at once; the message_delta waits for usage. */
static void test_stream_openai_to_anthropic_incremental(void **state)
{
    (void)state;
    struct dp_tr_stream s;
    struct sy_buf out = SY_BUF_INIT;
    dp_tr_stream_init(&s, DP_API_OPENAI, DP_API_ANTHROPIC, "pub", "msg_req1", false);
    assert_int_equal(feed1(&s, "",
                           "{\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
                           "\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}",
                           &out),
                     0);
    assert_non_null(strstr(out.data, "event: message_start"));
    assert_non_null(strstr(out.data, "\"id\":\"msg_req1\""));
    assert_non_null(strstr(out.data, "\"model\":\"pub\""));
    assert_false(dp_tr_stream_has_content(&s));
    sy_buf_reset(&out);
    assert_int_equal(
        feed1(&s, "", "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}", &out), 0);
    assert_true(dp_tr_stream_has_content(&s));
    assert_non_null(strstr(out.data, "content_block_start"));
    assert_non_null(strstr(out.data, "\"text_delta\",\"text\":\"Hi\""));
    sy_buf_reset(&out);
    assert_int_equal(feed1(&s, "",
                           "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":"
                           "\"stop\"}]}",
                           &out),
                     0);
    assert_non_null(strstr(out.data, "content_block_stop"));
    assert_null(strstr(out.data, "message_delta")); /* held for the usage chunk */
    sy_buf_reset(&out);
    assert_int_equal(feed1(&s, "",
                           "{\"choices\":[],\"usage\":{\"prompt_tokens\":9,"
                           "\"completion_tokens\":2,\"prompt_tokens_details\":"
                           "{\"cached_tokens\":4}}}",
                           &out),
                     0);
    assert_non_null(strstr(out.data, "\"stop_reason\":\"end_turn\""));
    assert_non_null(strstr(out.data, "\"input_tokens\":5,"));
    assert_non_null(strstr(out.data, "\"cache_read_input_tokens\":4,"));
    assert_non_null(strstr(out.data, "\"output_tokens\":2}"));
    assert_non_null(strstr(out.data, "event: message_stop"));
    sy_buf_reset(&out);
    assert_int_equal(feed1(&s, "", "[DONE]", &out), 0);
    assert_int_equal(dp_tr_stream_end(&s, &out), 0);
    assert_int_equal(out.len, 0); /* nothing after message_stop */
    assert_int_equal(dp_tr_stream_usage(&s)->prompt_tokens, 9);
    dp_tr_stream_free(&s);
    sy_buf_free(&out);
}

static void test_stream_anthropic_to_openai_incremental(void **state)
{
    (void)state;
    struct dp_tr_stream s;
    struct sy_buf out = SY_BUF_INIT;
    dp_tr_stream_init(&s, DP_API_ANTHROPIC, DP_API_OPENAI, "pub", "chatcmpl-req1", true);
    assert_int_equal(feed1(&s, "message_start",
                           "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":"
                           "{\"input_tokens\":10,\"output_tokens\":1}}}",
                           &out),
                     0);
    assert_non_null(strstr(out.data, "\"id\":\"chatcmpl-req1\""));
    assert_non_null(strstr(out.data, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}"));
    sy_buf_reset(&out);
    assert_int_equal(feed1(&s, "ping", "{\"type\":\"ping\"}", &out), 0);
    assert_int_equal(out.len, 0);
    assert_int_equal(
        feed1(&s, "content_block_start",
              "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":"
              "{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"f\",\"input\":{}}}",
              &out),
        0);
    assert_non_null(strstr(out.data,
                           "\"tool_calls\":[{\"index\":0,\"id\":\"toolu_9\",\"type\":"
                           "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]"));
    assert_true(dp_tr_stream_has_content(&s));
    sy_buf_reset(&out);
    assert_int_equal(feed1(&s, "content_block_delta",
                           "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
                           "\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}",
                           &out),
                     0);
    assert_non_null(strstr(out.data, "\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}"));
    sy_buf_reset(&out);
    /* no event: line: the type comes from the data */
    assert_int_equal(feed1(&s, "",
                           "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},"
                           "\"usage\":{\"output_tokens\":12}}",
                           &out),
                     0);
    assert_non_null(strstr(out.data, "\"finish_reason\":\"tool_calls\""));
    sy_buf_reset(&out);
    assert_int_equal(feed1(&s, "message_stop", "{\"type\":\"message_stop\"}", &out), 0);
    assert_non_null(strstr(out.data, "\"choices\":[],\"usage\":{\"prompt_tokens\":10,"
                                     "\"completion_tokens\":12,\"total_tokens\":22"));
    assert_non_null(strstr(out.data, "data: [DONE]\n\n"));
    sy_buf_reset(&out);
    assert_int_equal(dp_tr_stream_end(&s, &out), 0);
    assert_int_equal(out.len, 0);
    dp_tr_stream_free(&s);
    sy_buf_free(&out);
}

/* An upstream that stops without closing still gives the client a well-formed end. */
static void test_stream_end_and_error(void **state)
{
    (void)state;
    struct dp_tr_stream s;
    struct sy_buf out = SY_BUF_INIT;
    dp_tr_stream_init(&s, DP_API_ANTHROPIC, DP_API_OPENAI, "pub", NULL, false);
    dp_tr_stream_end(&s, &out);
    assert_non_null(strstr(out.data, "\"role\":\"assistant\""));
    assert_non_null(strstr(out.data, "\"finish_reason\":\"stop\""));
    assert_non_null(strstr(out.data, "data: [DONE]"));
    dp_tr_stream_free(&s);
    sy_buf_reset(&out);

    dp_tr_stream_init(&s, DP_API_OPENAI, DP_API_ANTHROPIC, "pub", NULL, false);
    feed1(&s, "",
          "{\"id\":\"chatcmpl-7\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}",
          &out);
    assert_non_null(strstr(out.data, "\"id\":\"chatcmpl-7\""));
    dp_tr_stream_end(&s, &out);
    assert_non_null(strstr(out.data, "content_block_stop"));
    assert_non_null(strstr(out.data, "\"stop_reason\":\"end_turn\""));
    assert_non_null(strstr(out.data, "event: message_stop"));
    dp_tr_stream_free(&s);
    sy_buf_reset(&out);

    dp_tr_stream_init(&s, DP_API_OPENAI, DP_API_ANTHROPIC, "pub", NULL, false);
    dp_tr_stream_error(&s, "upstream timed out", "timeout", &out);
    assert_string_equal(out.data, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
                                  "\"timeout_error\",\"message\":\"upstream timed out\"}}\n\n");
    sy_buf_reset(&out);
    dp_tr_stream_end(&s, &out);
    assert_int_equal(out.len, 0);
    dp_tr_stream_free(&s);

    dp_tr_stream_init(&s, DP_API_ANTHROPIC, DP_API_OPENAI, "pub", NULL, false);
    dp_tr_stream_error(&s, "boom", NULL, &out);
    assert_string_equal(out.data, "data: {\"error\":{\"message\":\"boom\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":null}}\n\n");
    dp_tr_stream_free(&s);
    sy_buf_reset(&out);

    /* an OpenAI error chunk from upstream becomes an Anthropic error event */
    dp_tr_stream_init(&s, DP_API_OPENAI, DP_API_ANTHROPIC, "pub", NULL, false);
    feed1(&s, "",
          "{\"error\":{\"message\":\"Rate limit\",\"type\":\"requests\",\"code\":"
          "\"rate_limit_exceeded\"}}",
          &out);
    assert_non_null(strstr(out.data,
                           "event: error\ndata: {\"type\":\"error\",\"error\":"
                           "{\"type\":\"rate_limit_error\",\"message\":\"Rate limit\"}}"));
    dp_tr_stream_free(&s);
    sy_buf_free(&out);
}

/* Same format: bytes pass through; the usage chunk the gateway forced is dropped. */
static void test_stream_passthrough(void **state)
{
    (void)state;
    struct dp_tr_stream s;
    struct sy_buf out = SY_BUF_INIT;
    const char *raw_role =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n";
    const char *raw_usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
                            "\"completion_tokens\":1}}\n\n";
    dp_tr_stream_init(&s, DP_API_OPENAI, DP_API_OPENAI, "pub", NULL, false);
    struct sy_sse_event ev =
        mkev("", "{\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}");
    ev.raw = raw_role;
    ev.raw_len = strlen(raw_role);
    dp_tr_stream_event(&s, &ev, &out);
    assert_string_equal(out.data, raw_role);
    assert_false(dp_tr_stream_has_content(&s));
    ev = mkev("", "{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}");
    ev.raw = raw_usage;
    ev.raw_len = strlen(raw_usage);
    sy_buf_reset(&out);
    dp_tr_stream_event(&s, &ev, &out);
    assert_int_equal(out.len, 0);
    assert_int_equal(dp_tr_stream_usage(&s)->prompt_tokens, 3);
    dp_tr_stream_end(&s, &out);
    assert_string_equal(out.data, "data: [DONE]\n\n");
    dp_tr_stream_free(&s);
    sy_buf_free(&out);
}

/* ---- garbage ----------------------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Mutated golden inputs (bytes flipped, cut short, spliced) through every entry point: no
 * crash, no leak, and the stream calls return 0 or -EPROTO. */
static void test_garbage(void **state)
{
    (void)state;
    static const char *const streams[] = {"stream/openai-to-anthropic/text.in.sse",
                                          "stream/openai-to-anthropic/tool_calls.in.sse",
                                          "stream/anthropic-to-openai/text.in.sse",
                                          "stream/anthropic-to-openai/tool_use_nousage.in.sse",
                                          "response/openai-to-anthropic/tool_calls.in.json",
                                          "response/anthropic-to-openai/tool_use.in.json"};
    static const char *const junk = "{}[]\",:\\0123456789.eE-tfnul \n";
    for (size_t f = 0; f < SY_ARRAY_LEN(streams); f++) {
        char path[2 * PATH_MAX];
        size_t n;
        snprintf(path, sizeof(path), "%s/%s", data_dir(), streams[f]);
        char *orig = slurp(path, &n);
        assert_non_null(orig);
        for (int round = 0; round < 400; round++) {
            char *m = malloc(n + 1);
            memcpy(m, orig, n);
            size_t len = n;
            int edits = 1 + (int)(rnd() % 6);
            for (int k = 0; k < edits; k++) {
                size_t at = rnd() % len;
                if (rnd() % 3 == 0)
                    m[at] = junk[rnd() % strlen(junk)];
                else if (rnd() % 2)
                    m[at] = (char)rnd();
                else
                    len = at + 1; /* cut short */
            }
            for (int d = 0; d < DP_API_MAX; d++) {
                for (int e = 0; e < DP_API_MAX; e++) {
                    struct sy_buf out = SY_BUF_INIT;
                    struct dp_usage u = {0};
                    int rc = run_stream((enum dp_api)d, (enum dp_api)e, m, len, 1 + rnd() % 64,
                                        rnd() & 1, NULL, &out, &u);
                    assert_true(rc == 0 || rc == -EPROTO);
                    sy_buf_reset(&out);
                    dp_tr_response((enum dp_api)d, (enum dp_api)e, m, len, "m", &out, &u);
                    sy_buf_reset(&out);
                    int st;
                    dp_tr_error((enum dp_api)d, (enum dp_api)e, 500, m, len, &out, &st);
                    dp_usage_from_json((enum dp_api)d, m, len, &u);
                    sy_buf_free(&out);
                }
            }
            free(m);
        }
        free(orig);
    }
}

/* ---- cost per event ---------------------------------------------------------------------- */

static double ns_per_event(enum dp_api from, enum dp_api to, const char *const *data, size_t n,
                           bool translate)
{
    struct sy_sse_event ev[8];
    const char *names[] = {"content_block_delta", "", ""};
    for (size_t i = 0; i < n; i++) {
        ev[i] = mkev(from == DP_API_ANTHROPIC ? names[0] : "", data[i]);
        ev[i].raw = data[i];
        ev[i].raw_len = strlen(data[i]);
    }
    struct dp_tr_stream s;
    struct sy_buf out = SY_BUF_INIT;
    dp_tr_stream_init(&s, from, to, "gpt-4o-mini", "chatcmpl-abcdef0123456789", true);
    sy_buf_reserve(&out, 1 << 16);
    const size_t rounds = 200000;
    uint64_t t0 = sy_now_ns();
    for (size_t r = 0; r < rounds; r++) {
        const struct sy_sse_event *e = &ev[r % n];
        if (translate)
            dp_tr_stream_event(&s, e, &out);
        else
            sy_buf_append(&out, e->raw, e->raw_len); /* passthrough: the copy */
        if (out.len > (1 << 15))
            sy_buf_reset(&out);
    }
    uint64_t t1 = sy_now_ns();
    dp_tr_stream_free(&s);
    sy_buf_free(&out);
    return (double)(t1 - t0) / (double)rounds;
}

static void test_cost_per_event(void **state)
{
    (void)state;
    static const char *const an[] = {
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\"Hello \"}}",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
        "\"text\":\"from the \\\"mock\\\" provider, with a longer piece of text.\"}}"};
    static const char *const oa[] = {
        "{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\","
        "\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":"
        "\"fp_eb9dce56a8\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \"},"
        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}",
        "{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\","
        "\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":"
        "\"fp_eb9dce56a8\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"from the "
        "\\\"mock\\\" provider, with a longer piece.\"},\"logprobs\":null,\"finish_reason\":null}"
        "],\"usage\":null}"};
    double a_t = ns_per_event(DP_API_ANTHROPIC, DP_API_OPENAI, an, 2, true);
    double a_p = ns_per_event(DP_API_ANTHROPIC, DP_API_OPENAI, an, 2, false);
    double o_t = ns_per_event(DP_API_OPENAI, DP_API_ANTHROPIC, oa, 2, true);
    double o_p = ns_per_event(DP_API_OPENAI, DP_API_ANTHROPIC, oa, 2, false);
    printf("translate anthropic->openai: %.0f ns/event (passthrough copy %.0f ns)\n", a_t, a_p);
    printf("translate openai->anthropic: %.0f ns/event (passthrough copy %.0f ns)\n", o_t, o_p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_requests),
        cmocka_unit_test(test_golden_responses),
        cmocka_unit_test(test_golden_streams),
        cmocka_unit_test(test_request_errors_name_the_field),
        cmocka_unit_test(test_request_arguments_exact),
        cmocka_unit_test(test_request_details),
        cmocka_unit_test(test_stop_reasons),
        cmocka_unit_test(test_response_bad_bodies),
        cmocka_unit_test(test_usage_from_json),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_stream_openai_to_anthropic_incremental),
        cmocka_unit_test(test_stream_anthropic_to_openai_incremental),
        cmocka_unit_test(test_stream_end_and_error),
        cmocka_unit_test(test_stream_passthrough),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_cost_per_event),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
