/* SPDX-License-Identifier: Apache-2.0 */
/* The byte buffer: appending, the NUL that always follows, printf, JSON strings, consuming,
 * stealing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sy/buf.h"

static void test_append_keeps_nul(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_append(&b, "abc", 3);
    assert_int_equal(b.len, 3);
    assert_string_equal(b.data, "abc");
    sy_buf_puts(&b, "def");
    assert_string_equal(b.data, "abcdef");
    sy_buf_append(&b, "", 0);
    assert_int_equal(b.len, 6);
    /* growth keeps the bytes and the NUL */
    for (int i = 0; i < 1000; i++)
        sy_buf_append(&b, "0123456789", 10);
    assert_int_equal(b.len, 10006);
    assert_true(b.cap > b.len);
    assert_int_equal(b.data[b.len], '\0');
    assert_memory_equal(b.data + 9996, "0123456789", 10);
    sy_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    sy_buf_puts(&b, "again"); /* reusable after free */
    assert_string_equal(b.data, "again");
    sy_buf_free(&b);
}

static void test_reserve_fresh_buffer_is_empty_string(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_reserve(&b, 100);
    assert_non_null(b.data);
    assert_true(b.cap >= 101);
    assert_string_equal(b.data, ""); /* the NUL promise holds even before any append */
    char *old = b.data;
    sy_buf_reserve(&b, 50); /* already room: no move */
    assert_ptr_equal(b.data, old);
    sy_buf_free(&b);
}

static void test_printf(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_printf(&b, "%s=%d", "a", 42);
    assert_string_equal(b.data, "a=42");
    char big[300];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    sy_buf_printf(&b, " %s!", big); /* longer than the first guess: formatted twice */
    assert_int_equal(b.len, 4 + 1 + 299 + 1);
    assert_int_equal(b.data[b.len - 1], '!');
    assert_int_equal(b.data[b.len], '\0');
    sy_buf_free(&b);
}

static void test_json_str(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    const char in[] = "a\"b\\c\n\r\t\x01\x1f/é";
    sy_buf_json_str(&b, in, sizeof(in) - 1);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\n\\r\\t\\u0001\\u001f/é\"");
    sy_buf_reset(&b);
    sy_buf_json_str(&b, "", 0);
    assert_string_equal(b.data, "\"\"");
    sy_buf_free(&b);
}

/* Each byte that is not part of well-formed UTF-8 becomes U+FFFD (a cut sequence: one per
 * byte); good multibyte text passes through. */
static void test_json_str_invalid_utf8(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    const char in[] = "a\xff b\xe2\x82 \xc3\xa9 \xed\xa0\x80 \xf0\x9f\x98\x80";
    sy_buf_json_str(&b, in, sizeof(in) - 1);
    assert_string_equal(b.data, "\"a\xef\xbf\xbd b\xef\xbf\xbd\xef\xbf\xbd \xc3\xa9 "
                                "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xf0\x9f\x98\x80\"");
    sy_buf_free(&b);
}

/* A value cut out of an upstream's document comes out as valid JSON: control characters in
 * strings escaped, broken escapes and lone surrogates U+FFFD, bad bytes U+FFFD; a clean value
 * is copied as it is. */
static void test_json_repair(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"\"plain \\\"x\\\" \\u00e9 \\ud83d\\ude00\"",
         "\"plain \\\"x\\\" \\u00e9 \\ud83d\\ude00\""},
        {"\"a\x01"
         "b\tc\"",
         "\"a\\u0001b\\u0009c\""},
        {"\"a\xff"
         "b\"",
         "\"a\xef\xbf\xbd"
         "b\""},
        {"\"\\ud800x\"", "\"\\ufffdx\""},
        {"\"\\udc00\"", "\"\\ufffd\""},
        {"\"\\u12\"", "\"\\ufffd12\""},
        {"\"\\q\"", "\"\\ufffdq\""},
        {"{\"k\":\"v\x02\",\"n\":[1,\"\xc3\"]}", "{\"k\":\"v\\u0002\",\"n\":[1,\"\xef\xbf\xbd\"]}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sy_buf b = SY_BUF_INIT;
        sy_buf_json_repair(&b, cases[i].in, strlen(cases[i].in));
        assert_string_equal(b.data, cases[i].out);
        sy_buf_free(&b);
    }
}

static void test_consume(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_puts(&b, "hello world");
    sy_buf_consume(&b, 6);
    assert_string_equal(b.data, "world");
    assert_int_equal(b.len, 5);
    sy_buf_consume(&b, 0);
    assert_string_equal(b.data, "world");
    sy_buf_consume(&b, 99);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    sy_buf_free(&b);
    sy_buf_consume(&b, 1); /* on an empty, never allocated buffer */
    assert_int_equal(b.len, 0);
}

static void test_reset_keeps_memory(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_reset(&b); /* never allocated: fine */
    sy_buf_puts(&b, "abc");
    size_t cap = b.cap;
    sy_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap);
    assert_string_equal(b.data, "");
    sy_buf_free(&b);
}

static void test_steal(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    size_t len = 99;
    char *p = sy_buf_steal(&b, &len); /* from an empty buffer: an empty string */
    assert_non_null(p);
    assert_int_equal(len, 0);
    assert_string_equal(p, "");
    free(p);
    sy_buf_puts(&b, "xyz");
    p = sy_buf_steal(&b, &len);
    assert_int_equal(len, 3);
    assert_string_equal(p, "xyz");
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_keeps_nul),
        cmocka_unit_test(test_reserve_fresh_buffer_is_empty_string),
        cmocka_unit_test(test_printf),
        cmocka_unit_test(test_json_str),
        cmocka_unit_test(test_json_str_invalid_utf8),
        cmocka_unit_test(test_json_repair),
        cmocka_unit_test(test_consume),
        cmocka_unit_test(test_reset_keeps_memory),
        cmocka_unit_test(test_steal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
