/* SPDX-License-Identifier: Apache-2.0 */
/* Webhook requests of alerts: URL parsing, the DingTalk and Feishu signatures against vectors
 * computed with Python's hmac module, and the body each channel type gets. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "webhook.h"

#define NOW_MS INT64_C(1700000000000)

static json_t *alert(const char *status)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:f,s:f,s:s,s:s}", "status", status, "rule", "errors",
                     "kind", "error_rate", "scope", "deployment", "subject", "dep-a", "value", 80.0,
                     "threshold", 50.0, "since", "2030-01-01T00:00:00Z", "message",
                     "[FIRING] errors: deployment dep-a error rate 80%");
}

static struct cp_webhook_req *build(const char *type, const char *url, const char *secret,
                                    json_t *headers)
{
    json_t *a = alert("firing");
    char *err = NULL;
    struct cp_webhook_req *r = cp__webhook_build(type, url, a, secret, headers, NOW_MS, &err);
    json_decref(a);
    if (!r)
        fail_msg("cp__webhook_build(%s): %s", type, err);
    return r;
}

static json_t *body_of(struct cp_webhook_req *r)
{
    json_t *j = json_loads(cp__webhook_body(r), 0, NULL);
    assert_non_null(j);
    return j;
}

static void urls_parse_and_bad_ones_are_refused(void **state)
{
    struct cp_webhook_url u;
    const char *why;
    assert_int_equal(
        cp__webhook_parse_url("https://oapi.dingtalk.com/robot/send?access_token=x", &u, &why), 0);
    assert_true(u.tls);
    assert_string_equal(u.host, "oapi.dingtalk.com");
    assert_string_equal(u.port, "443");
    assert_string_equal(u.target, "/robot/send?access_token=x");
    free(u.target);
    assert_int_equal(cp__webhook_parse_url("http://[::1]:8080", &u, &why), 0);
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.port, "8080");
    assert_string_equal(u.target, "/");
    free(u.target);
    assert_int_equal(cp__webhook_parse_url("http://h?x=1", &u, &why), 0);
    assert_string_equal(u.target, "/?x=1");
    free(u.target);
    const char *bad[] = {"ftp://h/",      "http://",      "http://h:0/",    "http://h:99999/",
                         "http://u:p@h/", "http://h/a b", "http://h/#frag", "http://[::1/",
                         "http://h\r\n/", "https://h_!/", "hooks.slack.com"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        if (cp__webhook_parse_url(bad[i], &u, &why) != -EINVAL)
            fail_msg("accepted %s", bad[i]);
        assert_non_null(why);
    }
}

static void signatures_match_the_vendors_recipes(void **state)
{
    char sig[64];
    /* base64(HMAC-SHA256(key=secret, "<ms>\n<secret>")) */
    cp__webhook_sign_dingtalk("SECabc+/x", NOW_MS, sig);
    assert_string_equal(sig, "/Fijok78aJBBKOaRb8B3KoRttFNRIXbYWose0UCkT6U=");
    /* base64(HMAC-SHA256(key="<s>\n<secret>", "")) */
    cp__webhook_sign_feishu("feishu", NOW_MS / 1000, sig);
    assert_string_equal(sig, "hliLG+zWj6SRnCtD1QgoXSxdZbACZebJ75EBjGuV5IA=");
}

static void dingtalk_is_markdown_with_signed_url_encoded_query(void **state)
{
    struct cp_webhook_req *r =
        build("dingtalk", "https://oapi.dingtalk.com/robot/send?access_token=t", "SECabc+/x", NULL);
    assert_string_equal(cp__webhook_target(r),
                        "/robot/send?access_token=t&timestamp=1700000000000"
                        "&sign=%2FFijok78aJBBKOaRb8B3KoRttFNRIXbYWose0UCkT6U%3D");
    json_t *b = body_of(r);
    assert_string_equal(json_string_value(json_object_get(b, "msgtype")), "markdown");
    json_t *md = json_object_get(b, "markdown");
    assert_string_equal(json_string_value(json_object_get(md, "title")), "[FIRING] errors");
    assert_non_null(strstr(json_string_value(json_object_get(md, "text")), "dep-a"));
    json_decref(b);
    cp__webhook_free(r);
    /* without a secret the URL is left alone */
    r = build("dingtalk", "https://oapi.dingtalk.com/robot/send?access_token=t", NULL, NULL);
    assert_string_equal(cp__webhook_target(r), "/robot/send?access_token=t");
    cp__webhook_free(r);
}

static void feishu_signs_in_the_body(void **state)
{
    struct cp_webhook_req *r =
        build("feishu", "https://open.feishu.cn/open-apis/bot/v2/hook/x", "feishu", NULL);
    json_t *b = body_of(r);
    assert_string_equal(json_string_value(json_object_get(b, "msg_type")), "text");
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(b, "content"), "text")), "dep-a"));
    assert_string_equal(json_string_value(json_object_get(b, "timestamp")), "1700000000");
    assert_string_equal(json_string_value(json_object_get(b, "sign")),
                        "hliLG+zWj6SRnCtD1QgoXSxdZbACZebJ75EBjGuV5IA=");
    json_decref(b);
    cp__webhook_free(r);
}

static void slack_wecom_and_generic_shapes(void **state)
{
    struct cp_webhook_req *r = build("slack", "https://hooks.slack.com/services/x", NULL, NULL);
    json_t *b = body_of(r);
    assert_int_equal(json_object_size(b), 1);
    assert_non_null(strstr(json_string_value(json_object_get(b, "text")), "errors"));
    json_decref(b);
    cp__webhook_free(r);

    r = build("wecom", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", NULL, NULL);
    b = body_of(r);
    assert_string_equal(json_string_value(json_object_get(b, "msgtype")), "markdown");
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(b, "markdown"), "content")),
               "Value**: 80 (threshold 50)"));
    json_decref(b);
    cp__webhook_free(r);

    json_t *h = json_pack("{s:s}", "X-Team", "sre");
    r = build("generic", "http://127.0.0.1:9/hook", "gen", h);
    json_decref(h);
    b = body_of(r);
    assert_string_equal(json_string_value(json_object_get(b, "status")), "firing");
    assert_string_equal(json_string_value(json_object_get(b, "subject")), "dep-a");
    assert_true(json_number_value(json_object_get(b, "threshold")) == 50.0);
    json_decref(b);
    const char *hd = cp__webhook_headers(r);
    assert_non_null(strstr(hd, "X-Switchyard-Timestamp: 1700000000\r\n"));
    assert_non_null(strstr(hd, "X-Switchyard-Signature: sha256="));
    assert_non_null(strstr(hd, "X-Team: sre\r\n"));
    cp__webhook_free(r);

    char *err = NULL;
    json_t *a = alert("resolved");
    assert_null(cp__webhook_build("teams", "http://h/", a, NULL, NULL, NOW_MS, &err));
    assert_non_null(err);
    free(err);
    json_decref(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(urls_parse_and_bad_ones_are_refused),
        cmocka_unit_test(signatures_match_the_vendors_recipes),
        cmocka_unit_test(dingtalk_is_markdown_with_signed_url_encoded_query),
        cmocka_unit_test(feishu_signs_in_the_body),
        cmocka_unit_test(slack_wecom_and_generic_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
