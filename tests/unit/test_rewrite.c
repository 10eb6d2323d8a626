/* SPDX-License-Identifier: Apache-2.0 */
/* The request rewrite: byte-exact outputs for the model replacement and the stream_options
 * edit, only top-level keys, escapes, duplicates, BOM, errors; a 1 MB body; random mutations
 * checked against jansson; and the throughput on a 100 KB body. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "rewrite.h"

/* ---- helpers ----------------------------------------------------------------------------- */

/* Rewrite <in> with model <model> and check the output is exactly <want>. */
static void expect_rw(const char *in, size_t in_len, const char *model, bool force,
                      const char *want, size_t want_len, struct dp_rewrite_info *info)
{
    struct dp_rewrite rw = {
        .model = model, .model_len = strlen(model), .force_include_usage = force};
    struct sy_buf out = SY_BUF_INIT;
    /* the input in its own allocation, so ASan sees any read past its end */
    char *copy = malloc(in_len ? in_len : 1);
    memcpy(copy, in, in_len);
    int rc = dp_rewrite_request(copy, in_len, &rw, &out, info);
    if (rc != 0 || out.len != want_len || memcmp(out.data, want, want_len) != 0)
        fail_msg("rewrite of\n  %.*s\ngave rc=%d\n  %.*s\nwanted\n  %.*s", (int)in_len, in, rc,
                 (int)out.len, out.data ? out.data : "", (int)want_len, want);
    assert_int_equal(out.data[out.len], '\0');
    free(copy);
    sy_buf_free(&out);
}

#define EXPECT(in, model, want) expect_rw(in, strlen(in), model, false, want, strlen(want), NULL)
#define EXPECT_U(in, model, want, info)                                                            \
    expect_rw(in, strlen(in), model, true, want, strlen(want), info)

static int rewrite_rc(const char *in, size_t len, bool force)
{
    struct dp_rewrite rw = {.model = "m", .model_len = 1, .force_include_usage = force};
    struct sy_buf out = SY_BUF_INIT;
    sy_buf_puts(&out, "keep");
    int rc = dp_rewrite_request(in, len, &rw, &out, NULL);
    if (rc != 0)
        assert_string_equal(out.data, "keep"); /* left as it was */
    sy_buf_free(&out);
    return rc;
}

/* ---- model ------------------------------------------------------------------------------- */

static void test_model_replaced(void **state)
{
    EXPECT("{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
           "openai/gpt-4o-2024-08-06",
           "{\"model\":\"openai/gpt-4o-2024-08-06\",\"messages\":[{\"role\":\"user\","
           "\"content\":\"hi\"}]}");
    /* whitespace around everything is kept */
    EXPECT(" \r\n{ \"messages\" : [ ] ,\n\t\"model\"  :\t\"a\" \n} \n", "b",
           " \r\n{ \"messages\" : [ ] ,\n\t\"model\"  :\t\"b\" \n} \n");
    /* the new name is JSON-escaped */
    EXPECT("{\"model\":\"a\"}", "we\"ird\\name\n", "{\"model\":\"we\\\"ird\\\\name\\n\"}");
}

static void test_model_of_any_type(void **state)
{
    EXPECT("{\"model\":42,\"x\":1}", "m", "{\"model\":\"m\",\"x\":1}");
    EXPECT("{\"model\":-1.5e3}", "m", "{\"model\":\"m\"}");
    EXPECT("{\"model\":null}", "m", "{\"model\":\"m\"}");
    EXPECT("{\"model\":true,\"a\":false}", "m", "{\"model\":\"m\",\"a\":false}");
    EXPECT("{\"model\":false}", "m", "{\"model\":\"m\"}");
    EXPECT("{\"model\":{\"name\":\"x\",\"n\":[1,{\"model\":2}]},\"b\":2}", "m",
           "{\"model\":\"m\",\"b\":2}");
    EXPECT("{\"model\":[\"a\",\"]\"],\"b\":2}", "m", "{\"model\":\"m\",\"b\":2}");
    EXPECT("{\"model\":\"\"}", "m", "{\"model\":\"m\"}");
}

static void test_model_inserted_when_absent(void **state)
{
    EXPECT("{\"messages\":[]}", "m", "{\"model\":\"m\",\"messages\":[]}");
    EXPECT("{}", "m", "{\"model\":\"m\"}");
    EXPECT("{ }", "m", "{\"model\":\"m\" }");
    EXPECT("  {\n  \"a\": 1\n}", "m", "  {\"model\":\"m\",\n  \"a\": 1\n}");
}

static void test_only_top_level_model(void **state)
{
    EXPECT("{\"messages\":[{\"role\":\"user\",\"model\":\"x\"}],\"metadata\":{\"model\":\"y\"},"
           "\"model\":\"z\",\"tools\":[{\"model\":{\"model\":1}}]}",
           "new",
           "{\"messages\":[{\"role\":\"user\",\"model\":\"x\"}],\"metadata\":{\"model\":\"y\"},"
           "\"model\":\"new\",\"tools\":[{\"model\":{\"model\":1}}]}");
    /* a string value that looks like a member */
    EXPECT("{\"content\":\"\\\"model\\\":\\\"x\\\"\",\"model\":\"a\"}", "b",
           "{\"content\":\"\\\"model\\\":\\\"x\\\"\",\"model\":\"b\"}");
    /* absent at top level, present below: inserted, the nested one untouched */
    EXPECT("{\"extra\":{\"model\":\"q\"}}", "m", "{\"model\":\"m\",\"extra\":{\"model\":\"q\"}}");
}

static void test_escapes(void **state)
{
    /* a key spelled with escapes is still "model" */
    EXPECT("{\"mod\\u0065l\":\"a\"}", "b", "{\"mod\\u0065l\":\"b\"}");
    EXPECT("{\"\\u006D\\u006f\\u0064\\u0065\\u006c\":1}", "b",
           "{\"\\u006D\\u006f\\u0064\\u0065\\u006c\":\"b\"}");
    /* keys that only look like it */
    EXPECT("{\"model\\\"\":1,\"model \":2,\"Model\":3}", "b",
           "{\"model\":\"b\",\"model\\\"\":1,\"model \":2,\"Model\":3}");
    /* escaped quotes and backslashes in strings before and in the value */
    EXPECT("{\"a\":\"x\\\\\",\"b\":\"\\\\\\\"}\",\"model\":\"q\\\"\\\\\"}", "n",
           "{\"a\":\"x\\\\\",\"b\":\"\\\\\\\"}\",\"model\":\"n\"}");
    EXPECT("{\"a\":\"\\ud83d\\ude00 \\u00e9\",\"model\":\"\\u00e9\"}", "n",
           "{\"a\":\"\\ud83d\\ude00 \\u00e9\",\"model\":\"n\"}");
    /* unicode in the new name goes out as UTF-8 */
    EXPECT("{\"model\":\"a\"}", "modèle", "{\"model\":\"modèle\"}");
}

static void test_duplicates_all_replaced(void **state)
{
    EXPECT("{\"model\":\"a\",\"x\":1,\"model\":\"b\"}", "m",
           "{\"model\":\"m\",\"x\":1,\"model\":\"m\"}");

    /* more duplicates than the recorded edits hold: the second, writing scan */
    char in[2048], want[2048];
    size_t il = 0, wl = 0;
    in[il++] = want[wl++] = '{';
    for (int i = 0; i < 30; i++) {
        il += (size_t)sprintf(in + il, "%s\"model\":%d,\"k%d\":[%d]", i ? "," : "", i, i, i);
        wl += (size_t)sprintf(want + wl, "%s\"model\":\"m\",\"k%d\":[%d]", i ? "," : "", i, i);
    }
    il += (size_t)sprintf(in + il, ",\"stream_options\":null}");
    wl += (size_t)sprintf(want + wl, ",\"stream_options\":{\"include_usage\":true}}");
    expect_rw(in, il, "m", true, want, wl, NULL);
}

static void test_bom_kept(void **state)
{
    EXPECT("\xef\xbb\xbf{\"model\":\"a\"}", "b", "\xef\xbb\xbf{\"model\":\"b\"}");
    EXPECT("\xef\xbb\xbf {}", "b", "\xef\xbb\xbf {\"model\":\"b\"}");
}

static void test_numbers_and_order_kept(void **state)
{
    EXPECT("{\"temperature\":1.0,\"max_tokens\":1e5,\"model\":\"a\",\"top_p\":-0.5E-3,"
           "\"n\":0,\"stop\":[\"\\n\"],\"seed\":12345678901234567890}",
           "b",
           "{\"temperature\":1.0,\"max_tokens\":1e5,\"model\":\"b\",\"top_p\":-0.5E-3,"
           "\"n\":0,\"stop\":[\"\\n\"],\"seed\":12345678901234567890}");
}

/* ---- stream_options ---------------------------------------------------------------------- */

static void test_usage_inserted_when_absent(void **state)
{
    struct dp_rewrite_info info;
    EXPECT_U("{\"model\":\"a\",\"stream\":true}", "b",
             "{\"stream_options\":{\"include_usage\":true},\"model\":\"b\",\"stream\":true}",
             &info);
    assert_false(info.had_stream_options);
    assert_false(info.client_include_usage);
    EXPECT_U("{\"stream\":true}", "b",
             "{\"model\":\"b\",\"stream_options\":{\"include_usage\":true},\"stream\":true}",
             &info);
    EXPECT_U("{}", "b", "{\"model\":\"b\",\"stream_options\":{\"include_usage\":true}}", &info);
    EXPECT_U("{\n}", "b", "{\"model\":\"b\",\"stream_options\":{\"include_usage\":true}\n}", &info);
    /* a nested stream_options does not count */
    EXPECT_U("{\"model\":\"a\",\"x\":{\"stream_options\":{}}}", "b",
             "{\"stream_options\":{\"include_usage\":true},\"model\":\"b\","
             "\"x\":{\"stream_options\":{}}}",
             &info);
}

static void test_usage_null_replaced_in_place(void **state)
{
    struct dp_rewrite_info info = {true, true};
    EXPECT_U("{\"model\":\"a\",\"stream_options\":null,\"stream\":true}", "b",
             "{\"model\":\"b\",\"stream_options\":{\"include_usage\":true},\"stream\":true}",
             &info);
    assert_false(info.had_stream_options);
    assert_false(info.client_include_usage);
}

static void test_usage_in_object(void **state)
{
    struct dp_rewrite_info info;
    EXPECT_U("{\"model\":\"a\",\"stream_options\":{}}", "b",
             "{\"model\":\"b\",\"stream_options\":{\"include_usage\":true}}", &info);
    assert_true(info.had_stream_options);
    assert_false(info.client_include_usage);
    EXPECT_U("{\"model\":\"a\",\"stream_options\":{ }}", "b",
             "{\"model\":\"b\",\"stream_options\":{\"include_usage\":true }}", &info);
    EXPECT_U("{\"model\":\"a\",\"stream_options\":{\"foo\":{\"include_usage\":0}}}", "b",
             "{\"model\":\"b\",\"stream_options\":{\"include_usage\":true,"
             "\"foo\":{\"include_usage\":0}}}",
             &info);
    EXPECT_U("{\"stream_options\" : { \"include_usage\" : false , \"x\":1}, \"model\":\"a\"}", "b",
             "{\"stream_options\" : { \"include_usage\" : true , \"x\":1}, \"model\":\"b\"}",
             &info);
    assert_true(info.had_stream_options);
    assert_false(info.client_include_usage);
    /* any non-true value is replaced, an escaped key included */
    EXPECT_U("{\"model\":\"a\",\"stream_options\":{\"include\\u005fusage\":null}}", "b",
             "{\"model\":\"b\",\"stream_options\":{\"include\\u005fusage\":true}}", &info);
    EXPECT_U("{\"model\":\"a\",\"stream_options\":{\"include_usage\":\"yes\"}}", "b",
             "{\"model\":\"b\",\"stream_options\":{\"include_usage\":true}}", &info);
    assert_false(info.client_include_usage);
}

static void test_usage_client_asked(void **state)
{
    struct dp_rewrite_info info;
    const char *in = "{\"model\":\"a\",\"stream_options\":{\"include_usage\":true}}";
    EXPECT_U(in, "b", "{\"model\":\"b\",\"stream_options\":{\"include_usage\":true}}", &info);
    assert_true(info.had_stream_options);
    assert_true(info.client_include_usage);
    /* without forcing, stream_options is left alone but still reported */
    memset(&info, 0, sizeof(info));
    expect_rw(in, strlen(in), "b", false,
              "{\"model\":\"b\",\"stream_options\":{\"include_usage\":true}}",
              strlen("{\"model\":\"b\",\"stream_options\":{\"include_usage\":true}}"), &info);
    assert_true(info.client_include_usage);
    EXPECT("{\"model\":\"a\",\"stream_options\":{\"include_usage\":false}}", "b",
           "{\"model\":\"b\",\"stream_options\":{\"include_usage\":false}}");
    EXPECT("{\"model\":\"a\",\"stream_options\":7}", "b", "{\"model\":\"b\",\"stream_options\":7}");
}

static void test_usage_duplicates(void **state)
{
    struct dp_rewrite_info info;
    EXPECT_U("{\"stream_options\":{\"include_usage\":true},\"model\":\"a\","
             "\"stream_options\":{\"include_usage\":false,\"include_usage\":0}}",
             "b",
             "{\"stream_options\":{\"include_usage\":true},\"model\":\"b\","
             "\"stream_options\":{\"include_usage\":true,\"include_usage\":true}}",
             &info);
    assert_false(info.client_include_usage); /* the last one is what the client meant */
}

static void test_usage_wrong_type_rejected(void **state)
{
    static const char *const bad[] = {
        "{\"model\":\"a\",\"stream_options\":\"x\"}",
        "{\"model\":\"a\",\"stream_options\":[]}",
        "{\"model\":\"a\",\"stream_options\":true}",
        "{\"model\":\"a\",\"stream_options\":1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(rewrite_rc(bad[i], strlen(bad[i]), true), -EINVAL);
        assert_int_equal(rewrite_rc(bad[i], strlen(bad[i]), false), 0);
    }
}

/* ---- errors and the output buffer -------------------------------------------------------- */

static void test_not_an_object(void **state)
{
    static const char *const bad[] = {
        "",
        " ",
        "[]",
        "1",
        "\"x\"",
        "null",
        "{",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{\"a\":1} x",
        "{\"a\":1}}",
        "{a:1}",
        "{\"a\":tru}",
        "{\"a\":\"x}",
        "{\"a\":[1}",
        "{\"a\" 1}",
        "{,}",
        "{\"a\":1 \"b\":2}",
        "\xef\xbb{}",
        "{\"a\\q\":1}",
        "{\"\\u12\":1}",
        "{\"a\":+1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (rewrite_rc(bad[i], strlen(bad[i]), false) != -EINVAL)
            fail_msg("accepted: %s", bad[i]);
    }
}

static void test_appends_to_out(void **state)
{
    struct dp_rewrite rw = {.model = "m", .model_len = 1};
    struct sy_buf out = SY_BUF_INIT;
    sy_buf_puts(&out, "HEAD ");
    assert_int_equal(dp_rewrite_request("{\"model\":1}", 11, &rw, &out, NULL), 0);
    assert_string_equal(out.data, "HEAD {\"model\":\"m\"}");
    sy_buf_free(&out);
}

/* ---- the member scanner ------------------------------------------------------------------ */

struct seen {
    char keys[8][400];
    size_t key_len[8];
    enum dp_json_type types[8];
    char vals[8][64];
    unsigned n;
};

static int collect(void *ud, const struct dp_json_member *m)
{
    struct seen *s = ud;
    assert_int_equal(m->index, s->n);
    assert_true(m->key_len < sizeof(s->keys[0]));
    memcpy(s->keys[s->n], m->key, m->key_len);
    s->key_len[s->n] = m->key_len;
    s->types[s->n] = m->type;
    snprintf(s->vals[s->n], sizeof(s->vals[0]), "%.*s", (int)m->val_len, m->val);
    assert_int_equal(*m->key_at, '"');
    s->n++;
    return 0;
}

static int stop_at_second(void *ud, const struct dp_json_member *m)
{
    return m->index == 1 ? 77 : 0;
}

static void test_scanner(void **state)
{
    const char body[] = "{\"o\":{\"a\":[1]},\"a\":[{}],\"s\":\"x\\\"y\",\"n\":-1.5e+3,"
                        "\"t\":true,\"f\":false,\"z\":null,\"\\ud83d\\ude00\\n\":0}";
    struct seen s = {0};
    assert_int_equal(dp_json_top_members(body, sizeof(body) - 1, collect, &s), 0);
    assert_int_equal(s.n, 8);
    static const enum dp_json_type types[] = {DP_JSON_OBJECT, DP_JSON_ARRAY, DP_JSON_STRING,
                                              DP_JSON_NUMBER, DP_JSON_TRUE,  DP_JSON_FALSE,
                                              DP_JSON_NULL,   DP_JSON_NUMBER};
    static const char *const vals[] = {"{\"a\":[1]}", "[{}]",  "\"x\\\"y\"", "-1.5e+3",
                                       "true",        "false", "null",       "0"};
    for (unsigned i = 0; i < 8; i++) {
        assert_int_equal(s.types[i], types[i]);
        assert_string_equal(s.vals[i], vals[i]);
    }
    assert_int_equal(s.key_len[7], 5); /* decoded: U+1F600 in UTF-8, then a newline */
    assert_memory_equal(s.keys[7], "\xf0\x9f\x98\x80\n", 5);

    assert_int_equal(dp_json_top_members(body, sizeof(body) - 1, stop_at_second, NULL), 77);

    /* an escaped key longer than the scanner's stack buffer */
    char big[700];
    size_t n = 0;
    n += (size_t)sprintf(big + n, "{\"");
    for (int i = 0; i < 100; i++)
        n += (size_t)sprintf(big + n, "\\u0061");
    n += (size_t)sprintf(big + n, "\":1}");
    memset(&s, 0, sizeof(s));
    assert_int_equal(dp_json_top_members(big, n, collect, &s), 0);
    assert_int_equal(s.key_len[0], 100);
    assert_int_equal(s.keys[0][0], 'a');
    assert_int_equal(s.keys[0][99], 'a');
}

/* ---- big bodies -------------------------------------------------------------------------- */

/* A chat request of about <size> bytes: many messages with escapes, "model" last. */
static char *make_body(size_t size, size_t *len)
{
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_puts(&b, "{\"messages\":[");
    for (int i = 0; b.len < size; i++) {
        sy_buf_printf(&b,
                      "%s{\"role\":\"%s\",\"content\":\"Message %d: the \\\"quick\\\" brown fox "
                      "jumps over the lazy dog \\\\ \\u00e9\\n and {braces} [brackets] model: "
                      "here, a long line of text to make the body grow quickly.\"}",
                      i ? "," : "", i % 2 ? "assistant" : "user", i);
    }
    sy_buf_puts(&b, "],\"temperature\":0.7,\"stream\":true,\"model\":\"gpt-4o\"}");
    return sy_buf_steal(&b, len);
}

static void check_with_jansson(const char *out, size_t len, const char *model, bool usage)
{
    json_error_t err;
    json_t *j = json_loadb(out, len, 0, &err);
    if (j == NULL)
        fail_msg("output does not parse: %s at %d: %.*s", err.text, err.position, (int)len, out);
    assert_true(json_is_object(j));
    assert_string_equal(json_string_value(json_object_get(j, "model")), model);
    if (usage) {
        json_t *so = json_object_get(j, "stream_options");
        assert_true(json_is_object(so));
        assert_true(json_is_true(json_object_get(so, "include_usage")));
    }
    json_decref(j);
}

static void test_one_megabyte(void **state)
{
    size_t len;
    char *body = make_body(1 << 20, &len);
    assert_true(len >= 1 << 20);
    struct dp_rewrite rw = {.model = "azure/gpt-4o", .model_len = 12, .force_include_usage = true};
    struct sy_buf out = SY_BUF_INIT;
    assert_int_equal(dp_rewrite_request(body, len, &rw, &out, NULL), 0);
    const char head[] = "{\"stream_options\":{\"include_usage\":true},";
    assert_int_equal(out.len, len + sizeof(head) - 2 + 6);
    assert_memory_equal(out.data, head, sizeof(head) - 1);
    assert_memory_equal(out.data + sizeof(head) - 1, body + 1, len - 1 - 9);
    const char tail[] = "\"model\":\"azure/gpt-4o\"}";
    assert_memory_equal(out.data + out.len - (sizeof(tail) - 1), tail, sizeof(tail) - 1);
    check_with_jansson(out.data, out.len, "azure/gpt-4o", true);
    sy_buf_free(&out);
    free(body);
}

static void test_throughput_100k(void **state)
{
    size_t len;
    char *body = make_body(100 * 1024, &len);
    struct dp_rewrite rw = {
        .model = "openai/gpt-4o-mini", .model_len = 18, .force_include_usage = true};
    struct sy_buf out = SY_BUF_INIT;
    struct timespec t0, t1;
    int iters = 2000;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < iters; i++) {
        sy_buf_reset(&out);
        assert_int_equal(dp_rewrite_request(body, len, &rw, &out, NULL), 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    print_message("rewrite: %zu-byte body, %d iterations, %.0f MB/s, %.1f us per body\n", len,
                  iters, (double)len * iters / secs / 1e6, secs / iters * 1e6);

    /* for comparison: what jansson alone takes to parse the same body */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < iters / 10; i++) {
        json_error_t err;
        json_t *j = json_loadb(body, len, 0, &err);
        assert_non_null(j);
        json_decref(j);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    print_message("jansson json_loadb of the same body: %.0f MB/s\n",
                  (double)len * (iters / 10) / secs / 1e6);
    sy_buf_free(&out);
    free(body);
}

/* ---- random mutations -------------------------------------------------------------------- */

static const char base_body[] =
    "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\",\"content\":\"Be \\\"brief\\\".\"},"
    "{\"role\":\"user\",\"content\":\"Hi \\u00e9 \\\\ {x} [y]\",\"model\":\"nested\"}],"
    "\"stream\":true,\"stream_options\":{\"include_usage\":false},\"temperature\":1.0,"
    "\"max_tokens\":1e3,\"stop\":null,\"metadata\":{\"a\":[1,2,{\"b\":\"c\"}]}}";

static void test_random_mutations(void **state)
{
    static const char alphabet[] = "{}[]\":,\\ \n\tu0aefnlrt1.-e";
    srand(4242);
    int parsed = 0;
    for (int iter = 0; iter < 20000; iter++) {
        char buf[sizeof(base_body) + 32];
        size_t len = sizeof(base_body) - 1;
        memcpy(buf, base_body, len);
        int edits = 1 + rand() % 3;
        for (int k = 0; k < edits; k++) {
            size_t at = (size_t)rand() % (len + 1);
            char c = alphabet[(size_t)rand() % (sizeof(alphabet) - 1)];
            switch (rand() % 4) {
            case 0: /* replace */
                if (at < len)
                    buf[at] = c;
                break;
            case 1: /* insert */
                memmove(buf + at + 1, buf + at, len - at);
                buf[at] = c;
                len++;
                break;
            case 2: /* delete */
                if (at < len) {
                    memmove(buf + at, buf + at + 1, len - at - 1);
                    len--;
                }
                break;
            default: /* truncate */
                if (rand() % 8 == 0)
                    len = at;
                break;
            }
        }
        char *in = malloc(len ? len : 1); /* exact size: ASan catches reads past the end */
        memcpy(in, buf, len);
        bool force = rand() % 2;
        struct dp_rewrite rw = {
            .model = "new\"model", .model_len = 9, .force_include_usage = force};
        struct sy_buf out = SY_BUF_INIT;
        struct dp_rewrite_info info;
        int rc = dp_rewrite_request(in, len, &rw, &out, &info);

        json_error_t err;
        json_t *j = json_loadb(in, len, 0, &err);
        if (j && json_is_object(j)) {
            json_t *so = json_object_get(j, "stream_options");
            bool so_bad = so && !json_is_object(so) && !json_is_null(so);
            if (force && so_bad) {
                assert_int_equal(rc, -EINVAL);
            } else {
                if (rc != 0)
                    fail_msg("rc %d for valid body: %.*s", rc, (int)len, in);
                check_with_jansson(out.data, out.len, "new\"model", force);
                assert_int_equal(info.had_stream_options, so && json_is_object(so));
                assert_int_equal(info.client_include_usage,
                                 json_is_object(so) &&
                                     json_is_true(json_object_get(so, "include_usage")));
                parsed++;
            }
        }
        json_decref(j);
        sy_buf_free(&out);
        free(in);
    }
    assert_true(parsed > 1000); /* the mutations left enough valid bodies to check */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_replaced),
        cmocka_unit_test(test_model_of_any_type),
        cmocka_unit_test(test_model_inserted_when_absent),
        cmocka_unit_test(test_only_top_level_model),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_duplicates_all_replaced),
        cmocka_unit_test(test_bom_kept),
        cmocka_unit_test(test_numbers_and_order_kept),
        cmocka_unit_test(test_usage_inserted_when_absent),
        cmocka_unit_test(test_usage_null_replaced_in_place),
        cmocka_unit_test(test_usage_in_object),
        cmocka_unit_test(test_usage_client_asked),
        cmocka_unit_test(test_usage_duplicates),
        cmocka_unit_test(test_usage_wrong_type_rejected),
        cmocka_unit_test(test_not_an_object),
        cmocka_unit_test(test_appends_to_out),
        cmocka_unit_test(test_scanner),
        cmocka_unit_test(test_one_megabyte),
        cmocka_unit_test(test_throughput_100k),
        cmocka_unit_test(test_random_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
