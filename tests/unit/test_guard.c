/* SPDX-License-Identifier: Apache-2.0 */
/* The guardrail scanner: every built-in detector with positive and negative cases (valid and
 * invalid checksums), keywords (Chinese and English, caseless), regexes, redaction masks,
 * overlaps, matches straddling two writes of a stream, the hold-back, the length limit, and
 * the table codec of guardrails. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "guard.h"
#include "sy/table.h"

/* ---- helpers ----------------------------------------------------------------------------- */

static struct dp_guard_db *db_of(uint32_t detectors, const char *const *kw, uint32_t n_kw,
                                 const char *const *re, uint32_t n_re, enum sy_guard_action a)
{
    struct sy_guard_side side = {.detectors = detectors};
    for (int d = 0; d < SY_GUARD_DETECTOR_MAX; d++)
        side.actions[d] = (uint8_t)a;
    side.keywords = (char **)kw;
    side.n_keywords = n_kw;
    side.regexes = (char **)re;
    side.n_regexes = n_re;
    struct dp_guard_db *db = NULL;
    char *err = NULL;
    int rc = dp_guard_db_compile(&side, &db, &err);
    if (rc != 0)
        fail_msg("compile: %s", err ? err : "?");
    return db;
}

/* Redact <in> with one detector and compare with <want>. */
static void expect_redact(uint32_t detectors, const char *in, const char *want)
{
    struct dp_guard_db *db = db_of(detectors, NULL, 0, NULL, 0, SY_GUARD_REDACT);
    struct dp_guard_matches m = {0};
    struct sy_buf out = SY_BUF_INIT;
    dp_guard_scan_text(&db, 1, in, strlen(in), &m);
    dp_guard_redact(in, strlen(in), 0, &m, &out);
    if (strcmp(out.data ? out.data : "", want) != 0)
        fail_msg("redact of\n  %s\ngave\n  %s\nwanted\n  %s", in, out.data ? out.data : "", want);
    sy_buf_free(&out);
    dp_guard_matches_free(&m);
    dp_guard_db_unref(db);
}

#define BIT(d) (1u << (d))

/* ---- detectors ----------------------------------------------------------------------------- */

static void test_email(void **state)
{
    expect_redact(BIT(SY_GUARD_EMAIL), "write to john.doe+x@example.co.uk today",
                  "write to [EMAIL] today");
    expect_redact(BIT(SY_GUARD_EMAIL), "联系 zhang.san@qq.com 谢谢", "联系 [EMAIL] 谢谢");
    expect_redact(BIT(SY_GUARD_EMAIL), "not an email: user@localhost or @example.com",
                  "not an email: user@localhost or @example.com");
}

static void test_cn_mobile(void **state)
{
    expect_redact(BIT(SY_GUARD_CN_MOBILE), "手机13812345678，请回电", "手机138****5678，请回电");
    expect_redact(BIT(SY_GUARD_CN_MOBILE), "call +86 13912345678", "call +86 139****5678");
    /* 12 digits, or starting 12: not a mobile number */
    expect_redact(BIT(SY_GUARD_CN_MOBILE), "order 138123456789 and 12812345678",
                  "order 138123456789 and 12812345678");
}

static void test_phone(void **state)
{
    expect_redact(BIT(SY_GUARD_PHONE), "office +1 415 555 0100.", "office +1 41* *** 0100.");
    expect_redact(BIT(SY_GUARD_PHONE), "+44 20 7946 0958", "+44 20 **** 0958");
    /* too short for a phone number */
    expect_redact(BIT(SY_GUARD_PHONE), "score +12 345", "score +12 345");
}

static void test_cn_id(void **state)
{
    /* 11010519491231002X: valid check character X */
    expect_redact(BIT(SY_GUARD_CN_ID), "身份证 11010519491231002X。",
                  "身份证 110105********002X。");
    expect_redact(BIT(SY_GUARD_CN_ID), "id 110105194912310021 end", "id 110105194912310021 end");
    /* 440524188001010014 is valid */
    assert_true(dp__guard_cn_id("440524188001010014", 18));
    assert_false(dp__guard_cn_id("440524188001010015", 18));
    expect_redact(BIT(SY_GUARD_CN_ID), "440524188001010014", "440524********0014");
    /* 19 digits: not an ID */
    expect_redact(BIT(SY_GUARD_CN_ID), "4405241880010100145", "4405241880010100145");
}

static void test_bank_card(void **state)
{
    expect_redact(BIT(SY_GUARD_BANK_CARD), "card 4111 1111 1111 1111 ok",
                  "card **** **** **** 1111 ok");
    expect_redact(BIT(SY_GUARD_BANK_CARD), "卡号6222021234567890128", "卡号***************0128");
    assert_true(dp__guard_luhn("6222021234567890128", 19));
    /* Luhn fails */
    expect_redact(BIT(SY_GUARD_BANK_CARD), "card 4111 1111 1111 1112 ok",
                  "card 4111 1111 1111 1112 ok");
    assert_false(dp__guard_luhn("4111111111111112", 16));
}

static void test_ip(void **state)
{
    expect_redact(BIT(SY_GUARD_IPV4), "host 192.168.1.20, gw 10.0.0.1.", "host [IPV4], gw [IPV4].");
    expect_redact(BIT(SY_GUARD_IPV4), "version 1.2.3.4.5 and 999.1.1.1",
                  "version 1.2.3.4.5 and 999.1.1.1");
    expect_redact(BIT(SY_GUARD_IPV6), "addr 2001:db8::8a2e:370:7334 here", "addr [IPV6] here");
    expect_redact(BIT(SY_GUARD_IPV6), "fe80::1ff:fe23:4567:890a", "[IPV6]");
    expect_redact(BIT(SY_GUARD_IPV6), "std::cout at 12:30:45", "std::cout at 12:30:45");
}

static void test_secret(void **state)
{
    expect_redact(BIT(SY_GUARD_SECRET), "key sk-proj-abcdefghijklmnopqrstuvwxyz0123 ok",
                  "key [SECRET] ok");
    expect_redact(BIT(SY_GUARD_SECRET), "aws AKIAIOSFODNN7EXAMPLE", "aws [SECRET]");
    expect_redact(BIT(SY_GUARD_SECRET),
                  "x\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE "
                  "KEY-----\ny",
                  "x\n[SECRET]\ny");
    expect_redact(BIT(SY_GUARD_SECRET), "a sketch sk-short", "a sketch sk-short");
}

static void test_keywords(void **state)
{
    const char *kw[] = {"机密", "Project Falcon", "a.b*c"};
    struct dp_guard_db *db = db_of(0, kw, 3, NULL, 0, SY_GUARD_REDACT);
    struct dp_guard_matches m = {0};
    struct sy_buf out = SY_BUF_INIT;
    const char *in = "这是机密: project FALCON, a.b*c, abbc";
    assert_int_equal(dp_guard_scan_text(&db, 1, in, strlen(in), &m), SY_GUARD_REDACT);
    dp_guard_redact(in, strlen(in), 0, &m, &out);
    assert_string_equal(out.data, "这是[REDACTED]: [REDACTED], [REDACTED], abbc");
    sy_buf_free(&out);
    dp_guard_matches_free(&m);
    assert_int_equal(dp_guard_scan_text(&db, 1, "nothing here", 12, &m), -1);
    dp_guard_matches_free(&m);
    dp_guard_db_unref(db);
}

static void test_regex_and_errors(void **state)
{
    const char *re[] = {"订单号[0-9]{6}"};
    struct dp_guard_db *db = db_of(0, NULL, 0, re, 1, SY_GUARD_BLOCK);
    struct dp_guard_matches m = {0};
    const char *in = "查询订单号123456";
    assert_int_equal(dp_guard_scan_text(&db, 1, in, strlen(in), &m), SY_GUARD_BLOCK);
    assert_int_equal(m.n, 1);
    dp_guard_matches_free(&m);
    dp_guard_db_unref(db);

    const char *bad[] = {"ok", "a(b"};
    struct sy_guard_side side = {.regexes = (char **)bad, .n_regexes = 2};
    char *err = NULL;
    assert_int_equal(dp_guard_db_compile(&side, &db, &err), -EINVAL);
    assert_non_null(strstr(err, "regexes[1]"));
    free(err);
}

/* Every detector at once, and the cache returns the same database for the same content. */
static void test_all_and_cache(void **state)
{
    struct sy_guard_side side = {.detectors = 0xff};
    memset(side.actions, SY_GUARD_REDACT, sizeof(side.actions));
    struct dp_guard_db *a, *b;
    char *err = NULL;
    assert_int_equal(dp_guard_db_get(&side, &a, &err), 0);
    assert_int_equal(dp_guard_db_get(&side, &b, &err), 0);
    assert_ptr_equal(a, b);
    struct dp_guard_matches m = {0};
    struct sy_buf out = SY_BUF_INIT;
    const char *in = "mail a@b.io, tel 13812345678, card 4111111111111111, ip 8.8.8.8";
    dp_guard_scan_text(&a, 1, in, strlen(in), &m);
    dp_guard_redact(in, strlen(in), 0, &m, &out);
    assert_string_equal(out.data,
                        "mail [EMAIL], tel 138****5678, card ************1111, ip [IPV4]");
    sy_buf_free(&out);
    dp_guard_matches_free(&m);
    dp_guard_db_unref(a);
    dp_guard_db_unref(b);
}

/* ---- streams ------------------------------------------------------------------------------- */

/* Feed <parts> one by one; the concatenated output must be <want>. */
static int stream_run(struct dp_guard_db *db, const char *const *parts, size_t n, uint64_t max,
                      struct sy_buf *out)
{
    struct dp_guard_stream s;
    int worst = -1;
    assert_int_equal(dp_guard_stream_open(&s, &db, db ? 1 : 0, max), 0);
    for (size_t i = 0; i < n; i++) {
        int w = dp_guard_stream_feed(&s, parts[i], strlen(parts[i]), i == n - 1, out);
        if (w > worst)
            worst = w;
        if (w == SY_GUARD_BLOCK)
            break;
    }
    dp_guard_stream_close(&s);
    return worst;
}

static void test_stream_straddle(void **state)
{
    const char *kw[] = {"secret plan"};
    struct dp_guard_db *db =
        db_of(BIT(SY_GUARD_CN_MOBILE) | BIT(SY_GUARD_EMAIL), kw, 1, NULL, 0, SY_GUARD_REDACT);
    const char *parts[] = {"the secr", "et plan is at 1381234", "5678 or bob@exa", "mple.com", "!"};
    struct sy_buf out = SY_BUF_INIT;
    assert_int_equal(stream_run(db, parts, 5, 0, &out), SY_GUARD_REDACT);
    assert_string_equal(out.data, "the [REDACTED] is at 138****5678 or [EMAIL]!");
    sy_buf_free(&out);
    dp_guard_db_unref(db);
}

/* A block: the matched text never comes out, even split in two. */
static void test_stream_block(void **state)
{
    const char *kw[] = {"炸弹"};
    struct dp_guard_db *db = db_of(0, kw, 1, NULL, 0, SY_GUARD_BLOCK);
    const char *parts[] = {"如何制作", "炸", "弹的说明", "end"};
    struct sy_buf out = SY_BUF_INIT;
    assert_int_equal(stream_run(db, parts, 4, 0, &out), SY_GUARD_BLOCK);
    assert_null(out.data ? strstr(out.data, "炸") : NULL);
    sy_buf_free(&out);
    dp_guard_db_unref(db);
}

/* Text longer than the hold-back goes out before the end; nothing is lost or doubled. */
static void test_stream_holdback(void **state)
{
    const char *kw[] = {"zzz"};
    struct dp_guard_db *db = db_of(0, kw, 1, NULL, 0, SY_GUARD_REDACT);
    struct dp_guard_stream s;
    struct sy_buf out = SY_BUF_INIT, all = SY_BUF_INIT;
    assert_int_equal(dp_guard_stream_open(&s, &db, 1, 0), 0);
    for (int i = 0; i < 100; i++) {
        char part[32];
        snprintf(part, sizeof(part), "chunk %02d 你好. ", i);
        sy_buf_puts(&all, part);
        dp_guard_stream_feed(&s, part, strlen(part), false, &out);
    }
    assert_true(out.len > all.len - DP_GUARD_HOLD - 8);
    assert_true(out.len <= all.len - DP_GUARD_HOLD + 4);
    dp_guard_stream_feed(&s, "", 0, true, &out);
    assert_int_equal(out.len, all.len);
    assert_memory_equal(out.data, all.data, all.len);
    dp_guard_stream_close(&s);
    sy_buf_free(&out);
    sy_buf_free(&all);
    dp_guard_db_unref(db);
}

/* The length limit cuts at a character, with or without databases. */
static void test_stream_limit(void **state)
{
    const char *parts[] = {"你好世界", "hello"};
    struct sy_buf out = SY_BUF_INIT;
    stream_run(NULL, parts, 2, 6, &out);
    assert_string_equal(out.data, "你好世界he");
    sy_buf_free(&out);
}

/* A second text after a final one (Anthropic text blocks) is scanned too. */
static void test_stream_segments(void **state)
{
    const char *kw[] = {"abc"};
    struct dp_guard_db *db = db_of(BIT(SY_GUARD_BANK_CARD), kw, 1, NULL, 0, SY_GUARD_REDACT);
    struct dp_guard_stream s;
    struct sy_buf out = SY_BUF_INIT;
    assert_int_equal(dp_guard_stream_open(&s, &db, 1, 0), 0);
    dp_guard_stream_feed(&s, "x 4111111111111111", 18, true, &out);
    dp_guard_stream_feed(&s, " y ab", 5, false, &out);
    dp_guard_stream_feed(&s, "c", 1, true, &out);
    assert_string_equal(out.data, "x ************1111 y [REDACTED]");
    dp_guard_stream_close(&s);
    sy_buf_free(&out);
    dp_guard_db_unref(db);
}

/* ---- the table codec ------------------------------------------------------------------------ */

static void test_check_json(void **state)
{
    struct sy_guardrail gr;
    char *err = NULL, *param = NULL;
    const char *good = "{\"name\":\"pii\",\"applies_to\":{\"all\":true,\"keys\":[3]},"
                       "\"input\":{\"detectors\":[\"email\",\"cn_id\"],\"keywords\":[\"机密\"],"
                       "\"action\":\"redact\",\"actions\":{\"cn_id\":\"block\"}},"
                       "\"limits\":{\"max_tokens_cap\":100,\"max_tokens_mode\":\"refuse\"}}";
    assert_int_equal(sy_guardrail_check_json(good, strlen(good), &gr, &err, &param), 0);
    assert_string_equal(gr.name, "pii");
    assert_true(gr.all);
    assert_int_equal(gr.n_keys, 1);
    assert_int_equal(gr.input.detectors, BIT(SY_GUARD_EMAIL) | BIT(SY_GUARD_CN_ID));
    assert_int_equal(gr.input.actions[SY_GUARD_EMAIL], SY_GUARD_REDACT);
    assert_int_equal(gr.input.actions[SY_GUARD_CN_ID], SY_GUARD_BLOCK);
    assert_int_equal(gr.output.actions[SY_GUARD_EMAIL], SY_GUARD_BLOCK);
    assert_int_equal(gr.limits.max_tokens_mode, SY_GUARD_TOKENS_REFUSE);
    sy_guardrail_free(&gr);

    const char *bad = "{\"name\":\"x\",\"input\":{\"detectors\":[\"email\",\"mail\"]}}";
    assert_int_equal(sy_guardrail_check_json(bad, strlen(bad), NULL, &err, &param), -EINVAL);
    assert_string_equal(param, "input.detectors[1]");
    assert_non_null(strstr(err, "\"mail\""));
    free(err);
    free(param);
    const char *unknown = "{\"name\":\"x\",\"output\":{\"detector\":[]}}";
    assert_int_equal(sy_guardrail_check_json(unknown, strlen(unknown), NULL, &err, &param),
                     -EINVAL);
    assert_string_equal(param, "output.detector");
    free(err);
    free(param);
}

static void test_table_roundtrip(void **state)
{
    const char *json =
        "{\"deployments\":[],\"models\":[],\"guardrails\":[{\"name\":\"g\",\"id\":7,"
        "\"applies_to\":{\"models\":[\"m\"]},\"output\":{\"keywords\":[\"a\",\"b\"],"
        "\"regexes\":[\"x+\"],\"action\":\"log\"},\"limits\":{\"max_output_chars\":9}}]}";
    struct sy_table *t, *t2;
    char *err = NULL;
    assert_int_equal(sy_table_from_json(json, strlen(json), &t, &err), 0);
    assert_int_equal(t->n_guardrails, 1);
    struct sy_buf b = SY_BUF_INIT;
    sy_table_encode(t, &b);
    assert_int_equal(sy_table_decode(b.data, b.len, &t2, &err), 0);
    const struct sy_guardrail *g = &t2->guardrails[0];
    assert_string_equal(g->name, "g");
    assert_int_equal(g->id, 7);
    assert_int_equal(g->n_models, 1);
    assert_int_equal(g->output.n_keywords, 2);
    assert_string_equal(g->output.regexes[0], "x+");
    assert_int_equal(g->output.actions[SY_GUARD_KEYWORD], SY_GUARD_LOG);
    assert_int_equal(g->limits.max_output_chars, 9);
    sy_buf_free(&b);
    sy_table_unref(t);
    sy_table_unref(t2);

    /* a detector of a newer build: skipped by the table, refused by the admin API */
    const char *newer = "{\"guardrails\":[{\"name\":\"g\",\"input\":{\"detectors\":"
                        "[\"iban\",\"email\"],\"actions\":{\"iban\":\"log\"}}}]}";
    assert_int_equal(sy_table_from_json(newer, strlen(newer), &t, &err), 0);
    assert_int_equal(t->guardrails[0].input.detectors, BIT(SY_GUARD_EMAIL));
    sy_table_unref(t);

    const char *dup = "{\"guardrails\":[{\"name\":\"g\"},{\"name\":\"g\"}]}";
    assert_int_equal(sy_table_from_json(dup, strlen(dup), &t, &err), -EINVAL);
    assert_non_null(strstr(err, "guardrails[1]"));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_email),
        cmocka_unit_test(test_cn_mobile),
        cmocka_unit_test(test_phone),
        cmocka_unit_test(test_cn_id),
        cmocka_unit_test(test_bank_card),
        cmocka_unit_test(test_ip),
        cmocka_unit_test(test_secret),
        cmocka_unit_test(test_keywords),
        cmocka_unit_test(test_regex_and_errors),
        cmocka_unit_test(test_all_and_cache),
        cmocka_unit_test(test_stream_straddle),
        cmocka_unit_test(test_stream_block),
        cmocka_unit_test(test_stream_holdback),
        cmocka_unit_test(test_stream_limit),
        cmocka_unit_test(test_stream_segments),
        cmocka_unit_test(test_check_json),
        cmocka_unit_test(test_table_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
