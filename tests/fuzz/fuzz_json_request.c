/* SPDX-License-Identifier: Apache-2.0 */
/* What the data plane does with a client's JSON body before it routes it: the member scanner
 * (dp_json_top_members) down nested objects, the byte-splicing rewrite of model and
 * stream_options (dp_rewrite_request), the reading of messages, tools and images for routing
 * rules (dp__route_ctx_fill), the token estimate and the complexity classifier, and the usage
 * scan that also reads provider bodies.
 *
 * Oracles: a body that jansson reads as an object (what proxy.c accepts) must be rewritten, and
 * the rewrite must be JSON with the new model (and include_usage when forced); the scanner's
 * pointers stay inside the body; the score stays in [0, 1].
 *
 * Input: byte 0 bit 0 = force include_usage; the rest is the body. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "classify.h"
#include "fuzz.h"
#include "govern.h"
#include "rewrite.h"
#include "translate.h"
#include "worker.h"

struct scan {
    const char *body, *end;
    unsigned depth;
    unsigned members;
    bool valid; /* jansson accepted the whole body: nested objects are valid too */
};

static int on_member(void *ud, const struct dp_json_member *m)
{
    struct scan *s = ud;
    FUZZ_CHECK(m->val >= s->body && m->val + m->val_len <= s->end, "value inside the body");
    FUZZ_CHECK(m->key_at >= s->body && m->key_at < m->val, "key before its value");
    FUZZ_CHECK(*m->key_at == '"', "key_at is the key's quote");
    FUZZ_CHECK(m->type < DP_JSON_TYPE_MAX, "a known type");
    FUZZ_CHECK(m->index == s->members, "members numbered in order");
    s->members++;
    if (m->type == DP_JSON_STRING)
        FUZZ_CHECK(dp_json_skip_string(m->val, s->end) == m->val + m->val_len,
                   "a string value ends where the skipper says");
    if (m->type == DP_JSON_OBJECT && s->depth < 16) {
        /* The scanner checks only the nesting of values, so a nested object may still be
         * refused on its own, unless the whole body is valid JSON. */
        struct scan in = {
            .body = m->val, .end = m->val + m->val_len, .depth = s->depth + 1, .valid = s->valid};
        int rc = dp_json_top_members(m->val, m->val_len, on_member, &in);
        FUZZ_CHECK(rc == 0 || (!s->valid && rc == -EINVAL), "a valid member object scans");
    }
    return 0;
}

static int find_bad_stream_options(void *ud, const struct dp_json_member *m)
{
    if (dp_json_key_is(m, "stream_options", 14) && m->type != DP_JSON_OBJECT &&
        m->type != DP_JSON_NULL)
        *(bool *)ud = true;
    return 0;
}

static void check_rewrite(const char *body, size_t len, json_t *root, bool force)
{
    struct dp_rewrite rw = {.model = "up-\"model\"", .model_len = 10, .force_include_usage = force};
    struct dp_rewrite_info info;
    struct sy_buf out = SY_BUF_INIT;
    sy_buf_puts(&out, "x");
    int rc = dp_rewrite_request(body, len, &rw, &out, &info);
    if (!root) {
        FUZZ_CHECK(rc == 0 || (rc == -EINVAL && out.len == 1), "-EINVAL leaves out as it was");
        sy_buf_free(&out);
        return;
    }
    /* The rewrite looks at every "stream_options" member, jansson keeps the last: a body with
     * one that is neither an object nor null is refused when include_usage is forced, even if a
     * later duplicate is an object (proxy.c then answers 400). */
    bool bad_so = false;
    dp_json_top_members(body, len, find_bad_stream_options, &bad_so);
    if (force && bad_so) {
        FUZZ_CHECK(rc == -EINVAL, "a stream_options that cannot be forced is refused");
        sy_buf_free(&out);
        return;
    }
    FUZZ_CHECK(rc == 0, "a body jansson reads as an object is rewritten");
    json_error_t je;
    json_t *o = json_loadb(out.data + 1, out.len - 1, 0, &je);
    if (!o)
        fprintf(stderr, "rewrite: %.*s\nerror: %s\n", (int)out.len - 1, out.data + 1, je.text);
    FUZZ_CHECK(json_is_object(o), "the rewritten body is a JSON object");
    json_t *m = json_object_get(o, "model");
    FUZZ_CHECK(json_is_string(m) && strcmp(json_string_value(m), "up-\"model\"") == 0,
               "the rewritten body names the new model");
    if (force) {
        json_t *iu = json_object_get(json_object_get(o, "stream_options"), "include_usage");
        FUZZ_CHECK(json_is_true(iu), "include_usage forced");
    }
    FUZZ_CHECK(json_object_size(o) >= json_object_size(root), "no member lost");
    json_decref(o);
    sy_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool force = data[0] & 1;
    char *body = fuzz_dup(data + 1, size - 1);
    size_t len = size - 1;

    /* As proxy.c: a body with a NUL byte is refused (jansson would skip one after a literal),
     * the rest is parsed once by jansson, and only an object goes on. */
    json_error_t je;
    json_t *root = memchr(body, '\0', len) ? NULL : json_loadb(body, len, 0, &je);
    if (root && !json_is_object(root)) {
        json_decref(root);
        root = NULL;
    }

    struct scan s = {.body = body, .end = body + len, .valid = root != NULL};
    int rc = dp_json_top_members(body, len, on_member, &s);
    FUZZ_CHECK(rc == 0 || rc == -EINVAL, "scan returns 0 or -EINVAL");
    if (root)
        FUZZ_CHECK(rc == 0, "the scanner accepts every object jansson accepts");
    check_rewrite(body, len, root, force);

    if (root) {
        struct dp_route_ctx ctx = {.complexity_milli = -1};
        dp__route_ctx_fill(&ctx, root);
        struct dp_complexity_input in = {
            .text = ctx.text,
            .len = ctx.text_len,
            .n_messages = ctx.n_messages,
            .n_user_turns = ctx.n_user_turns,
            .has_tools = ctx.has_tools,
            .has_images = ctx.has_images,
            .est_prompt_tokens = ctx.est_tokens,
        };
        struct dp_complexity_features why;
        double score = dp_complexity_score(&in, &why);
        FUZZ_CHECK(score >= 0.0 && score <= 1.0 && !isnan(score), "score in [0, 1]");
        char hdr[256];
        int n = dp_complexity_format(&why, hdr, sizeof(hdr));
        FUZZ_CHECK(n >= 0 && strlen(hdr) < sizeof(hdr), "the debug header fits");
        json_decref(root);
    }
    FUZZ_CHECK(len == 0 || dp_estimate_tokens(body, len) > 0, "a text has tokens");

    struct dp_usage u = {0};
    dp_usage_from_json(DP_API_OPENAI, body, len, &u);
    dp_usage_from_json(DP_API_ANTHROPIC, body, len, &u);
    free(body);
    return 0;
}
