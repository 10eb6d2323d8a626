/* SPDX-License-Identifier: Apache-2.0 */
/* The SSE parser: line endings, events split anywhere across feeds, fields, comments, the
 * provider stream shapes a proxy relays, the size bound, the callback's stop value and the
 * zero-copy promise. A small byte-by-byte reference parser checks random streams. */
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

#include "sy/sse.h"

/* ---- collecting events ------------------------------------------------------------------- */

struct got {
    char *raw, *event, *data, *id; /* copies, NUL-terminated; id NULL when none */
    size_t raw_len, data_len, id_len;
    bool raw_in_input; /* raw pointed inside the chunk being fed */
};

struct sink {
    struct got ev[256];
    size_t n;
    const char *in; /* the chunk being fed, for the zero-copy check */
    size_t in_len;
    int stop_at; /* return stop_rc from the callback for event number stop_at (1-based) */
    int stop_rc;
};

static char *dup_n(const char *s, size_t n)
{
    char *r = malloc(n + 1);
    assert_non_null(r);
    if (n)
        memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

static int on_event(void *ud, const struct sy_sse_event *ev)
{
    struct sink *k = ud;
    assert_true(k->n < sizeof(k->ev) / sizeof(k->ev[0]));
    struct got *g = &k->ev[k->n++];
    assert_non_null(ev->raw);
    assert_non_null(ev->event);
    assert_non_null(ev->data);
    g->raw = dup_n(ev->raw, ev->raw_len);
    g->raw_len = ev->raw_len;
    g->event = dup_n(ev->event, ev->event_len);
    g->data = dup_n(ev->data, ev->data_len);
    g->data_len = ev->data_len;
    g->id = ev->id ? dup_n(ev->id, ev->id_len) : NULL;
    g->id_len = ev->id_len;
    g->raw_in_input = k->in && ev->raw >= k->in && ev->raw + ev->raw_len <= k->in + k->in_len;
    if (k->stop_at && (int)k->n == k->stop_at)
        return k->stop_rc;
    return 0;
}

static void sink_clear(struct sink *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->ev[i].raw);
        free(k->ev[i].event);
        free(k->ev[i].data);
        free(k->ev[i].id);
    }
    memset(k, 0, sizeof(*k));
}

static int feed(struct sy_sse_parser *p, struct sink *k, const char *d, size_t n)
{
    k->in = d;
    k->in_len = n;
    int rc = sy_sse_feed(p, d, n, on_event, k);
    k->in = NULL;
    return rc;
}

/* Parse <s> in one feed into <k>. */
static void parse_all(struct sink *k, const char *s, size_t n)
{
    struct sy_sse_parser p;
    sy_sse_init(&p, 1 << 20);
    assert_int_equal(feed(&p, k, s, n), 0);
    sy_sse_free(&p);
}

static void assert_same_fields(const struct got *a, const struct got *b)
{
    assert_string_equal(a->event, b->event);
    assert_int_equal(a->data_len, b->data_len);
    assert_memory_equal(a->data, b->data, a->data_len + 1);
    assert_int_equal(a->id == NULL, b->id == NULL);
    if (a->id) {
        assert_int_equal(a->id_len, b->id_len);
        assert_memory_equal(a->id, b->id, a->id_len);
    }
}

/* Raw bytes must match, except that when a chunk ends between the "\r" and "\n" of an event's
 * terminating blank line, the event is delivered at the "\r" (the "\n" would only delay it). */
static void assert_same_raw(const struct got *whole, const struct got *split)
{
    if (split->raw_len + 1 == whole->raw_len && whole->raw[whole->raw_len - 1] == '\n' &&
        split->raw[split->raw_len - 1] == '\r')
        assert_memory_equal(whole->raw, split->raw, split->raw_len);
    else {
        assert_int_equal(whole->raw_len, split->raw_len);
        assert_memory_equal(whole->raw, split->raw, whole->raw_len);
    }
}

static void assert_same_events(const struct sink *a, const struct sink *b)
{
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        assert_same_fields(&a->ev[i], &b->ev[i]);
        assert_same_raw(&a->ev[i], &b->ev[i]);
    }
}

/* Copy <s> with every "\n" replaced by <eol>. */
static char *with_eol(const char *s, const char *eol, size_t *out_len)
{
    size_t n = 0, el = strlen(eol);
    char *r = malloc(strlen(s) * el + 1);
    for (; *s; s++) {
        if (*s == '\n') {
            memcpy(r + n, eol, el);
            n += el;
        } else
            r[n++] = *s;
    }
    r[n] = '\0';
    *out_len = n;
    return r;
}

static const char *const eols[] = {"\n", "\r\n", "\r"};

/* ---- basic fields ------------------------------------------------------------------------ */

static void test_fields_every_line_ending(void **state)
{
    const char *src = ": hello\n"
                      "\n"
                      "event: add\n"
                      "id: 7\n"
                      "data: one\n"
                      "data:two\n"
                      "retry: 100\n"
                      "\n"
                      "\n"
                      "data\n"
                      "\n";
    for (size_t e = 0; e < 3; e++) {
        size_t n;
        char *s = with_eol(src, eols[e], &n);
        struct sink k = {0};
        parse_all(&k, s, n);
        assert_int_equal(k.n, 3);
        /* comment-only block: delivered with no data, raw set */
        assert_int_equal(k.ev[0].data_len, 0);
        assert_string_equal(k.ev[0].event, "");
        assert_null(k.ev[0].id);
        assert_int_equal(k.ev[0].raw_len, 7 + 2 * strlen(eols[e]));
        assert_memory_equal(k.ev[0].raw, ": hello", 7);
        /* event, id, data joined with "\n", one leading space stripped */
        assert_string_equal(k.ev[1].event, "add");
        assert_string_equal(k.ev[1].id, "7");
        assert_string_equal(k.ev[1].data, "one\ntwo");
        assert_memory_equal(k.ev[1].raw, "event: add", 10);
        /* "data" without a colon is a data line with an empty value */
        assert_int_equal(k.ev[2].data_len, 0);
        assert_memory_equal(k.ev[2].raw, "data", 4);
        sink_clear(&k);
        free(s);
    }
}

static void test_mixed_line_endings(void **state)
{
    const char s[] = "data: a\r\ndata: b\rdata: c\n\r\n"
                     "event: e\r\rdata: d\n\r";
    struct sink k = {0};
    parse_all(&k, s, sizeof(s) - 1);
    assert_int_equal(k.n, 3);
    assert_string_equal(k.ev[0].data, "a\nb\nc");
    assert_int_equal(k.ev[0].raw_len, strlen("data: a\r\ndata: b\rdata: c\n\r\n"));
    assert_string_equal(k.ev[1].event, "e");
    assert_int_equal(k.ev[1].data_len, 0);
    assert_string_equal(k.ev[2].data, "d");
    sink_clear(&k);
}

static void test_value_spaces_and_colons(void **state)
{
    const char s[] = "data:  two spaces\n"
                     "data:x:y\n"
                     "data:\n"
                     "id\n"
                     "event:\n"
                     "\n";
    struct sink k = {0};
    parse_all(&k, s, sizeof(s) - 1);
    assert_int_equal(k.n, 1);
    assert_string_equal(k.ev[0].data, " two spaces\nx:y\n");
    assert_non_null(k.ev[0].id); /* "id" with no value sets an empty id */
    assert_int_equal(k.ev[0].id_len, 0);
    assert_string_equal(k.ev[0].event, "");
    sink_clear(&k);
}

static void test_last_event_and_id_win_nul_id_ignored(void **state)
{
    const char s[] = "event: a\nevent: b\nid: 1\nid: 2\nid: 3\0x\ndata: z\n\n";
    struct sink k = {0};
    parse_all(&k, s, sizeof(s) - 1);
    assert_int_equal(k.n, 1);
    assert_string_equal(k.ev[0].event, "b");
    assert_string_equal(k.ev[0].id, "2");
    sink_clear(&k);
}

static void test_blank_lines_only_deliver_nothing(void **state)
{
    const char s[] = "\n\r\n\r\r\n\n";
    struct sy_sse_parser p;
    struct sink k = {0};
    sy_sse_init(&p, 1024);
    assert_int_equal(feed(&p, &k, s, sizeof(s) - 1), 0);
    assert_int_equal(k.n, 0);
    assert_int_equal(sy_sse_pending(&p), 0);
    assert_null(p.pending.data); /* nothing was allocated */
    sy_sse_free(&p);
}

static void test_incomplete_event_not_delivered(void **state)
{
    struct sy_sse_parser p;
    struct sink k = {0};
    sy_sse_init(&p, 1024);
    assert_int_equal(feed(&p, &k, "data: a\n", 8), 0);
    assert_int_equal(k.n, 0);
    assert_int_equal(sy_sse_pending(&p), 8);
    assert_int_equal(feed(&p, &k, "\n", 1), 0);
    assert_int_equal(k.n, 1);
    assert_string_equal(k.ev[0].data, "a");
    assert_string_equal(k.ev[0].raw, "data: a\n\n");
    assert_int_equal(sy_sse_pending(&p), 0);
    sink_clear(&k);
    sy_sse_free(&p);
}

static void test_cr_then_lf_in_next_feed(void **state)
{
    struct sy_sse_parser p;
    struct sink k = {0};
    sy_sse_init(&p, 1024);
    /* "\r" | "\n" inside an event: one line end, not a blank line */
    assert_int_equal(feed(&p, &k, "data: a\r", 8), 0);
    assert_int_equal(feed(&p, &k, "\ndata: b\r\n\r", 11), 0);
    assert_int_equal(k.n, 1);
    assert_string_equal(k.ev[0].data, "a\nb");
    /* "\r" | "\n" ending the blank line: the event went at the "\r", the "\n" is dropped */
    assert_int_equal(feed(&p, &k, "\ndata: c\r\n\r\n", 12), 0);
    assert_int_equal(k.n, 2);
    assert_string_equal(k.ev[1].data, "c");
    assert_string_equal(k.ev[1].raw, "data: c\r\n\r\n");
    assert_true(k.ev[1].raw_in_input);
    sink_clear(&k);
    sy_sse_free(&p);
}

static void test_bom(void **state)
{
    const char s[] = "\xef\xbb\xbf"
                     "data: a\n\n";
    struct sink whole = {0};
    parse_all(&whole, s, sizeof(s) - 1);
    assert_int_equal(whole.n, 1);
    assert_string_equal(whole.ev[0].data, "a");
    assert_string_equal(whole.ev[0].raw, "data: a\n\n");

    /* the BOM split across feeds, byte by byte */
    struct sy_sse_parser p;
    struct sink k = {0};
    sy_sse_init(&p, 1024);
    for (size_t i = 0; i < sizeof(s) - 1; i++)
        assert_int_equal(feed(&p, &k, s + i, 1), 0);
    assert_same_events(&whole, &k);
    sink_clear(&k);
    sy_sse_free(&p);
    sink_clear(&whole);

    /* a BOM then blank lines then an event */
    const char t[] = "\xef\xbb\xbf\r\n\r\ndata: b\r\n\r\n";
    parse_all(&whole, t, sizeof(t) - 1);
    assert_int_equal(whole.n, 1);
    assert_string_equal(whole.ev[0].data, "b");
    sink_clear(&whole);
}

/* ---- provider streams -------------------------------------------------------------------- */

static const char openai_stream[] =
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
    "\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
    "\"content\":\"\"},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
    "\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\\nlo\"},"
    "\"finish_reason\":null}]}\n\n"
    ": keep-alive\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
    "\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,"
    "\"completion_tokens\":2,\"total_tokens\":11}}\n\n"
    "data: [DONE]\n\n";

static const char anthropic_stream[] =
    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\","
    "\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"usage\":"
    "{\"input_tokens\":25,\"output_tokens\":1}}}\n\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
    "\"text\":\"\"}}\n\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\"Hello\"}}\n\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
    "event: message_delta\n"
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"
    "\"usage\":{\"output_tokens\":15}}\n\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n\n";

static void test_openai_stream(void **state)
{
    struct sink k = {0};
    parse_all(&k, openai_stream, sizeof(openai_stream) - 1);
    assert_int_equal(k.n, 5);
    assert_non_null(strstr(k.ev[0].data, "\"role\":\"assistant\""));
    assert_int_equal(k.ev[0].data[0], '{');
    assert_int_equal(k.ev[0].data[k.ev[0].data_len - 1], '}');
    assert_non_null(strstr(k.ev[1].data, "Hel\\nlo")); /* JSON escapes are left alone */
    assert_int_equal(k.ev[2].data_len, 0);
    assert_string_equal(k.ev[2].raw, ": keep-alive\n\n");
    assert_non_null(strstr(k.ev[3].data, "\"total_tokens\":11"));
    assert_string_equal(k.ev[4].data, "[DONE]");
    /* the raws, concatenated, are the stream byte for byte */
    size_t off = 0;
    for (size_t i = 0; i < k.n; i++) {
        assert_true(k.ev[i].raw_in_input);
        assert_memory_equal(openai_stream + off, k.ev[i].raw, k.ev[i].raw_len);
        off += k.ev[i].raw_len;
    }
    assert_int_equal(off, sizeof(openai_stream) - 1);
    sink_clear(&k);
}

static void test_anthropic_stream(void **state)
{
    static const char *const names[] = {
        "message_start",      "content_block_start", "ping",        "content_block_delta",
        "content_block_stop", "message_delta",       "message_stop"};
    for (size_t e = 0; e < 2; e++) {
        size_t n;
        char *s = with_eol(anthropic_stream, eols[e], &n);
        struct sink k = {0};
        parse_all(&k, s, n);
        assert_int_equal(k.n, 7);
        for (size_t i = 0; i < 7; i++) {
            assert_string_equal(k.ev[i].event, names[i]);
            char want[64];
            snprintf(want, sizeof(want), "\"type\":\"%s\"", names[i]);
            if (i != 2)
                assert_memory_equal(k.ev[i].data + 1, want, strlen(want));
        }
        assert_string_equal(k.ev[2].data, "{\"type\": \"ping\"}");
        sink_clear(&k);
        free(s);
    }
}

/* ---- splitting ---------------------------------------------------------------------------- */

static const char *const split_sources[] = {
    openai_stream,
    anthropic_stream,
    ": c\n\nevent: x\nid: 42\ndata: a\ndata: b\n\n\n\ndata\n\n",
    "\xef\xbb\xbf"
    "data: bom\n\nid\nretry: 3\n\n",
    /* a BOM after blank lines: skipped whether or not the blank lines came in the same feed
     * (found by fuzz_sse) */
    "data: a\n\n\n\xef\xbb\xbf\n\ndata: b\n\n",
};

/* Every stream, in every line-ending style, split at every offset into two feeds, gives what
 * one feed gives. */
static void test_split_every_offset(void **state)
{
    for (size_t si = 0; si < sizeof(split_sources) / sizeof(split_sources[0]); si++) {
        for (size_t e = 0; e < 3; e++) {
            size_t n;
            char *s = with_eol(split_sources[si], eols[e], &n);
            struct sink whole = {0};
            parse_all(&whole, s, n);
            assert_true(whole.n >= 2);
            for (size_t cut = 0; cut <= n; cut++) {
                struct sy_sse_parser p;
                struct sink k = {0};
                sy_sse_init(&p, 1 << 16);
                /* feed copies, so that a pointer into a dead chunk would be caught by ASan */
                char *a = dup_n(s, cut), *b = dup_n(s + cut, n - cut);
                assert_int_equal(feed(&p, &k, a, cut), 0);
                assert_int_equal(feed(&p, &k, b, n - cut), 0);
                assert_same_events(&whole, &k);
                assert_int_equal(sy_sse_pending(&p), 0);
                sink_clear(&k);
                sy_sse_free(&p);
                free(a);
                free(b);
            }
            sink_clear(&whole);
            free(s);
        }
    }
}

static void test_byte_at_a_time(void **state)
{
    for (size_t e = 0; e < 3; e++) {
        size_t n;
        char *s = with_eol(anthropic_stream, eols[e], &n);
        struct sink whole = {0}, k = {0};
        parse_all(&whole, s, n);
        struct sy_sse_parser p;
        sy_sse_init(&p, 1 << 16);
        for (size_t i = 0; i < n; i++) {
            char c = s[i];
            assert_int_equal(feed(&p, &k, &c, 1), 0);
        }
        assert_same_events(&whole, &k);
        sink_clear(&k);
        sink_clear(&whole);
        sy_sse_free(&p);
        free(s);
    }
}

/* ---- zero copy ---------------------------------------------------------------------------- */

static void test_zero_copy(void **state)
{
    const char a[] = "data: one\n\ndata: tw";
    const char b[] = "o\n\ndata: three\n\ndata: x\n";
    struct sy_sse_parser p;
    struct sink k = {0};
    sy_sse_init(&p, 1024);
    assert_int_equal(feed(&p, &k, a, sizeof(a) - 1), 0);
    assert_int_equal(k.n, 1);
    assert_true(k.ev[0].raw_in_input);
    assert_int_equal(sy_sse_pending(&p), strlen("data: tw")); /* only the tail was copied */
    assert_int_equal(feed(&p, &k, b, sizeof(b) - 1), 0);
    assert_int_equal(k.n, 3);
    assert_false(k.ev[1].raw_in_input); /* completed from the carried bytes */
    assert_string_equal(k.ev[1].data, "two");
    assert_true(k.ev[2].raw_in_input);
    assert_string_equal(k.ev[2].data, "three");
    assert_int_equal(sy_sse_pending(&p), strlen("data: x\n"));
    sink_clear(&k);
    sy_sse_free(&p);
}

static const char *zc_base;
static size_t zc_len;

/* A single data line points into the input itself, not into a copy. */
static int check_data_in_input(void *ud, const struct sy_sse_event *ev)
{
    assert_true(ev->data >= zc_base && ev->data + ev->data_len <= zc_base + zc_len);
    assert_true(ev->raw >= zc_base && ev->raw + ev->raw_len <= zc_base + zc_len);
    (*(int *)ud)++;
    return 0;
}

static void test_zero_copy_data_pointer(void **state)
{
    struct sy_sse_parser p;
    int count = 0;
    sy_sse_init(&p, 1 << 16);
    zc_base = anthropic_stream;
    zc_len = sizeof(anthropic_stream) - 1;
    assert_int_equal(sy_sse_feed(&p, zc_base, zc_len, check_data_in_input, &count), 0);
    assert_int_equal(count, 7);
    assert_null(p.pending.data); /* a stream of whole events allocates nothing */
    assert_null(p.scratch.data);
    sy_sse_free(&p);
}

/* ---- limits and stopping ------------------------------------------------------------------ */

static void test_oversize_event(void **state)
{
    struct sy_sse_parser p;
    struct sink k = {0};
    char big[200];
    memset(big, 'x', sizeof(big));
    memcpy(big, "data: ", 6);
    big[sizeof(big) - 2] = '\n';
    big[sizeof(big) - 1] = '\n';

    /* exactly the limit is fine, one byte more is not, whole or split */
    sy_sse_init(&p, sizeof(big));
    assert_int_equal(feed(&p, &k, big, sizeof(big)), 0);
    assert_int_equal(k.n, 1);
    assert_int_equal(feed(&p, &k, big, 100), 0);
    assert_int_equal(feed(&p, &k, big + 100, 100), 0);
    assert_int_equal(k.n, 2);
    sy_sse_free(&p);

    sy_sse_init(&p, sizeof(big) - 1);
    assert_int_equal(feed(&p, &k, big, sizeof(big)), -EMSGSIZE);
    assert_int_equal(feed(&p, &k, big, 100), 0);
    assert_int_equal(feed(&p, &k, big + 100, 100), -EMSGSIZE);
    assert_int_equal(sy_sse_pending(&p), 0);
    assert_int_equal(k.n, 2);
    sy_sse_free(&p);

    /* an event that never ends: the carried bytes stay bounded */
    sy_sse_init(&p, 1000);
    int rc = 0;
    size_t i;
    for (i = 0; i < 100 && rc == 0; i++) {
        rc = feed(&p, &k, big, 150);
        assert_true(sy_sse_pending(&p) <= 1000);
    }
    assert_int_equal(rc, -EMSGSIZE);
    assert_int_equal(i, 7);
    /* the same, in one big chunk with no event end */
    char *huge = malloc(5000);
    memset(huge, 'y', 5000);
    assert_int_equal(feed(&p, &k, huge, 5000), -EMSGSIZE);
    assert_int_equal(sy_sse_pending(&p), 0);
    free(huge);
    sy_sse_free(&p);
    sink_clear(&k);
}

static void test_callback_stop_value(void **state)
{
    const char s[] = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    struct sy_sse_parser p;
    struct sink k = {0};
    sy_sse_init(&p, 1024);
    k.stop_at = 2;
    k.stop_rc = 42;
    assert_int_equal(feed(&p, &k, s, sizeof(s) - 1), 42);
    assert_int_equal(k.n, 2); /* the third event was not delivered */
    assert_int_equal(sy_sse_pending(&p), 0);
    sink_clear(&k);

    /* the stop value also comes back when the event was completed from carried bytes */
    k.stop_at = 1;
    k.stop_rc = -ECANCELED;
    assert_int_equal(feed(&p, &k, "data: 1\n", 8), 0);
    assert_int_equal(feed(&p, &k, "\ndata: 2\n\n", 10), -ECANCELED);
    assert_int_equal(k.n, 1);
    assert_int_equal(sy_sse_pending(&p), 0);
    sink_clear(&k);

    /* and the parser goes on with the next feed */
    assert_int_equal(feed(&p, &k, s, sizeof(s) - 1), 0);
    assert_int_equal(k.n, 3);
    sink_clear(&k);
    sy_sse_free(&p);
}

/* ---- random streams against a reference -------------------------------------------------- */

/* A direct transcription of the WHATWG algorithm, one byte at a time, over a whole stream; it
 * delivers every block with a non-blank line, as sy_sse does. */
static void reference_parse(struct sink *k, const char *s, size_t n)
{
    size_t i = 0;
    if (n >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
        i = 3;
    char data[4096], event[4096], id[4096];
    size_t dl = 0, el = 0, il = 0, block_start = 0;
    bool has_id = false, in_block = false, has_data = false;

    while (i < n) {
        size_t ls = i;
        while (i < n && s[i] != '\n' && s[i] != '\r')
            i++;
        if (i == n)
            break; /* unterminated line */
        size_t le = i;
        i += (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') ? 2 : 1;
        if (le == ls) {
            if (in_block) {
                struct got *g = &k->ev[k->n++];
                g->raw = dup_n(s + block_start, i - block_start);
                g->raw_len = i - block_start;
                g->event = dup_n(event, el);
                g->data = dup_n(data, has_data ? dl - 1 : 0);
                g->data_len = has_data ? dl - 1 : 0;
                g->id = has_id ? dup_n(id, il) : NULL;
                g->id_len = has_id ? il : 0;
            }
            in_block = has_id = has_data = false;
            dl = el = il = 0;
            continue;
        }
        if (!in_block) {
            in_block = true;
            block_start = ls;
        }
        if (s[ls] == ':')
            continue;
        size_t c = ls;
        while (c < le && s[c] != ':')
            c++;
        size_t vs = c < le ? c + 1 : le;
        if (vs < le && s[vs] == ' ')
            vs++;
        size_t nl = c - ls, vl = le - vs;
        if (nl == 4 && memcmp(s + ls, "data", 4) == 0) {
            memcpy(data + dl, s + vs, vl);
            dl += vl;
            data[dl++] = '\n';
            has_data = true;
        } else if (nl == 5 && memcmp(s + ls, "event", 5) == 0) {
            memcpy(event, s + vs, vl);
            el = vl;
        } else if (nl == 2 && memcmp(s + ls, "id", 2) == 0 && !memchr(s + vs, 0, vl)) {
            memcpy(id, s + vs, vl);
            il = vl;
            has_id = true;
        }
    }
}

static void test_random_streams_match_reference(void **state)
{
    static const char *const atoms[] = {"data", "data:",  "data: ", "event:", "id:", "id", ":",
                                        " ",    "x",      "yz",     "\n",     "\n",  "\r", "\r\n",
                                        "\0",   "retry:", "\n\n",   "\r\r",   "é"};
    size_t total = 0;
    srand(12345);
    for (int iter = 0; iter < 3000; iter++) {
        char s[600];
        size_t n = 0;
        if (rand() % 8 == 0) {
            memcpy(s, "\xef\xbb\xbf", 3);
            n = 3;
        }
        int natoms = rand() % 60;
        for (int a = 0; a < natoms; a++) {
            size_t ai = (size_t)rand() % (sizeof(atoms) / sizeof(atoms[0]));
            size_t al = ai == 14 ? 1 : strlen(atoms[ai]);
            memcpy(s + n, atoms[ai], al);
            n += al;
        }
        struct sink want = {0}, got = {0};
        reference_parse(&want, s, n);

        /* feed in random pieces, each in its own allocation */
        struct sy_sse_parser p;
        sy_sse_init(&p, 1 << 16);
        size_t off = 0;
        while (off < n) {
            size_t piece = 1 + (size_t)rand() % (n - off < 40 ? n - off : 40);
            if (rand() % 4 == 0)
                piece = n - off;
            char *c = dup_n(s + off, piece);
            assert_int_equal(feed(&p, &got, c, piece), 0);
            free(c);
            off += piece;
        }
        assert_int_equal(want.n, got.n);
        total += want.n;
        for (size_t i = 0; i < want.n; i++) {
            assert_same_fields(&want.ev[i], &got.ev[i]);
            assert_same_raw(&want.ev[i], &got.ev[i]);
        }
        sink_clear(&want);
        sink_clear(&got);
        sy_sse_free(&p);
    }
    assert_true(total > 3000); /* the random streams did hold events to compare */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields_every_line_ending),
        cmocka_unit_test(test_mixed_line_endings),
        cmocka_unit_test(test_value_spaces_and_colons),
        cmocka_unit_test(test_last_event_and_id_win_nul_id_ignored),
        cmocka_unit_test(test_blank_lines_only_deliver_nothing),
        cmocka_unit_test(test_incomplete_event_not_delivered),
        cmocka_unit_test(test_cr_then_lf_in_next_feed),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_openai_stream),
        cmocka_unit_test(test_anthropic_stream),
        cmocka_unit_test(test_split_every_offset),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_zero_copy),
        cmocka_unit_test(test_zero_copy_data_pointer),
        cmocka_unit_test(test_oversize_event),
        cmocka_unit_test(test_callback_stop_value),
        cmocka_unit_test(test_random_streams_match_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
