/* SPDX-License-Identifier: Apache-2.0 */
/** The bodies of the translation targets (dataplane/src/translate.c), one direction each:
 * a fuzz_translate_<kind>_<dir>.c defines FUZZ_FROM and FUZZ_TO and includes this file with
 * FUZZ_REQ, FUZZ_RESP or FUZZ_STREAM set. Oracles: a request or response the translator accepts
 * comes out as a JSON object (a request with the upstream model set); every event of a
 * translated stream carries JSON data (or [DONE]); errors are JSON in the client's format. */
#pragma once

#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "govern.h"
#include "sy/buf.h"
#include "sy/sse.h"
#include "translate.h"

#define FUZZ_MAX_EVENT (256 * 1024)

/* ---- requests ------------------------------------------------------------------------------ */

/* Input: byte 0 bit 0 = stream; the rest is the client's body. */
static inline void fuzz_tr_request(enum dp_api from, enum dp_api to, const uint8_t *data,
                                   size_t size)
{
    if (size < 1)
        return;
    bool stream = data[0] & 1;
    json_error_t je;
    json_t *root = json_loadb((const char *)data + 1, size - 1, 0, &je);
    if (!json_is_object(root)) {
        json_decref(root);
        return;
    }
    struct sy_buf out = SY_BUF_INIT;
    sy_buf_puts(&out, "x"); /* must be left as it was on failure */
    char *err = NULL;
    int rc = dp_tr_request(from, to, root, "upstream-model", stream, 4096, &out, &err);
    if (rc == 0) {
        FUZZ_CHECK(err == NULL, "no message on success");
        json_t *o = json_loadb(out.data + 1, out.len - 1, 0, &je);
        FUZZ_CHECK(json_is_object(o), "translated request is a JSON object");
        json_t *m = json_object_get(o, "model");
        FUZZ_CHECK(json_is_string(m) && strcmp(json_string_value(m), "upstream-model") == 0,
                   "translated request names the upstream model");
        if (to == DP_API_ANTHROPIC)
            FUZZ_CHECK(json_is_integer(json_object_get(o, "max_tokens")),
                       "Anthropic request has max_tokens");
        json_decref(o);
    } else {
        FUZZ_CHECK(rc == -EINVAL, "failure is -EINVAL");
        FUZZ_CHECK(err != NULL && err[0], "failure has a message");
        FUZZ_CHECK(out.len == 1, "out left as it was on failure");
    }
    free(err);
    sy_buf_free(&out);
    json_decref(root);
}

/* ---- responses and errors -------------------------------------------------------------------- */

/* Input: bytes 0-1 = an HTTP status for the error path; the rest is the upstream's body. */
static inline void fuzz_tr_response(enum dp_api from, enum dp_api to, const uint8_t *data,
                                    size_t size)
{
    if (size < 2)
        return;
    int status = 100 + (data[0] | data[1] << 8) % 500;
    const char *body = (const char *)data + 2;
    size_t len = size - 2;

    struct sy_buf out = SY_BUF_INIT;
    sy_buf_puts(&out, "x");
    struct dp_usage u = {0};
    int rc = dp_tr_response(from, to, body, len, "client-model", &out, &u);
    if (rc == 0) {
        json_error_t je;
        json_t *o = json_loadb(out.data + 1, out.len - 1, 0, &je);
        FUZZ_CHECK(json_is_object(o), "translated response is a JSON object");
        json_t *m = json_object_get(o, "model");
        FUZZ_CHECK(json_is_string(m) && strcmp(json_string_value(m), "client-model") == 0,
                   "translated response reports the client's model");
        json_decref(o);
    } else {
        FUZZ_CHECK(rc == -EPROTO, "failure is -EPROTO");
        FUZZ_CHECK(out.len == 1, "out left as it was on failure");
    }

    sy_buf_reset(&out);
    int st = 0;
    dp_tr_error(from, to, status, body, len, &out, &st);
    FUZZ_CHECK(st >= 100 && st <= 599, "client status is an HTTP status");
    fuzz_require_json(out.data, out.len, "translated error is JSON");

    struct dp_usage u2 = {0};
    dp_usage_from_json(from, body, len, &u2);
    (void)dp_classify(DP_UE_NONE, status, body, len, true);
    (void)dp_classify(DP_UE_NONE, 200, body, len, true);
    sy_buf_free(&out);
}

/* ---- streams --------------------------------------------------------------------------------- */

struct fuzz_stream {
    struct dp_tr_stream tr;
    struct sy_buf out;
    bool failed;
};

static inline int fuzz_stream_event(void *ud, const struct sy_sse_event *ev)
{
    struct fuzz_stream *f = ud;
    if (dp_tr_stream_event(&f->tr, ev, &f->out) < 0) {
        dp_tr_stream_error(&f->tr, "The upstream sent a malformed event.", "bad_upstream", &f->out);
        f->failed = true;
        return 1;
    }
    return 0;
}

static inline int fuzz_check_out_event(void *ud, const struct sy_sse_event *ev)
{
    if (ev->data_len == 0)
        return 0; /* a comment or an event without data */
    if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0)
        return 0;
    fuzz_require_json(ev->data, ev->data_len, "translated event data is JSON");
    return 0;
}

/* Input: byte 0: bit 0 = the client wants usage, bit 1 = a request id, bits 2-7 = feed piece
 * size (0: whole); the rest is the upstream's stream. */
static inline void fuzz_tr_stream(enum dp_api from, enum dp_api to, const uint8_t *data,
                                  size_t size)
{
    if (size < 1)
        return;
    unsigned piece = data[0] >> 2;
    struct fuzz_stream f = {.out = SY_BUF_INIT};
    dp_tr_stream_init(&f.tr, from, to, "client-model", (data[0] & 2) ? "req_1" : NULL, data[0] & 1);
    struct sy_sse_parser p;
    sy_sse_init(&p, FUZZ_MAX_EVENT);
    const char *d = (const char *)data + 1;
    size_t n = size - 1, off = 0;
    int rc = 0;
    while (off < n && rc == 0) {
        size_t k = piece ? piece : n - off;
        k = k > n - off ? n - off : k;
        char *c = fuzz_dup(d + off, k);
        rc = sy_sse_feed(&p, c, k, fuzz_stream_event, &f);
        free(c);
        off += k;
    }
    if (rc == 0)
        dp_tr_stream_end(&f.tr, &f.out);
    else if (!f.failed)
        dp_tr_stream_error(&f.tr, "The upstream's event is too large.", NULL, &f.out);
    (void)dp_tr_stream_has_content(&f.tr);
    (void)dp_tr_stream_usage(&f.tr);

    /* What the client gets is a well-formed stream of JSON events. */
    struct sy_sse_parser cp;
    sy_sse_init(&cp, SIZE_MAX);
    FUZZ_CHECK(sy_sse_feed(&cp, f.out.data, f.out.len, fuzz_check_out_event, NULL) == 0,
               "client stream parses");
    FUZZ_CHECK(f.out.len == 0 || sy_sse_pending(&cp) == 0, "client stream ends on an event");
    sy_sse_free(&cp);
    sy_sse_free(&p);
    dp_tr_stream_free(&f.tr);
    sy_buf_free(&f.out);
}
