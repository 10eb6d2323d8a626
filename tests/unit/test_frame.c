/* SPDX-License-Identifier: Apache-2.0 */
/* Frames of the control socket: the incremental reader, the writers, HELLO, ACK, PING/PONG. */
#include <errno.h>
#include <msgpack.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "sy/frame.h"
#include "sy/table.h"
#include "sy/util.h"

/* ---- helpers --------------------------------------------------------------------------- */

/* What the reader handed out, each frame as "type:body" bytes. */
struct seen {
    struct sy_buf log;
    unsigned n;
    unsigned stop_at; /* return 7 from this frame (1-based), 0 for never */
};

static int record(void *ud, unsigned type, const char *body, size_t len)
{
    struct seen *s = ud;
    s->n++;
    sy_buf_printf(&s->log, "%u:%zu:", type, len);
    sy_buf_append(&s->log, body, len);
    sy_buf_puts(&s->log, "|");
    return s->stop_at == s->n ? 7 : 0;
}

static int buf_write(void *data, const char *p, size_t n)
{
    sy_buf_append(data, p, n);
    return 0;
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* <j> as msgpack: the cases below are written as JSON. */
static void pack_json(msgpack_packer *pk, const json_t *j)
{
    const char *key;
    json_t *v;
    size_t i;

    switch (json_typeof(j)) {
    case JSON_OBJECT:
        msgpack_pack_map(pk, json_object_size(j));
        json_object_foreach((json_t *)j, key, v)
        {
            pack_cstr(pk, key);
            pack_json(pk, v);
        }
        return;
    case JSON_ARRAY:
        msgpack_pack_array(pk, json_array_size(j));
        json_array_foreach(j, i, v) pack_json(pk, v);
        return;
    case JSON_STRING:
        pack_cstr(pk, json_string_value(j));
        return;
    case JSON_INTEGER:
        msgpack_pack_int64(pk, json_integer_value(j));
        return;
    default:
        msgpack_pack_nil(pk);
        return;
    }
}

/* A stream of assorted frames: every type, an empty body, an unknown type, a body of
 * <big_len> bytes. */
static void build_stream(struct sy_buf *b, size_t big_len)
{
    static const char *caps[] = {"table", "ping"};
    struct sy_hello h = {.proto = SY_PROTO_VERSION,
                         .role = SY_ROLE_CONTROLPLANE,
                         .node = "node-a",
                         .pid = 42,
                         .table_version = 9,
                         .caps = (char **)caps,
                         .n_caps = 2};
    struct sy_ack a = {.version = 3, .ok = false, .error = "bad"};
    static char big[70000];

    memset(big, 'x', sizeof(big));
    assert_int_equal(sy_hello_write(b, &h), 0);
    assert_int_equal(sy_ack_write(b, &a), 0);
    assert_int_equal(sy_ping_write(b, SY_FRAME_PING, -5), 0);
    assert_int_equal(sy_frame_write(b, SY_FRAME_PONG, "", 0), 0);
    assert_int_equal(sy_frame_write(b, (enum sy_frame_type)200, "future", 6), 0);
    SY_REQUIRE(big_len <= sizeof(big));
    assert_int_equal(sy_frame_write(b, SY_FRAME_TABLE, big, big_len), 0);
    assert_int_equal(sy_ping_write(b, SY_FRAME_PONG, 1), 0);
}

/* ---- the reader ------------------------------------------------------------------------ */

static void test_header_layout(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    assert_int_equal(sy_frame_write(&b, SY_FRAME_ACK, "\x80", 1), 0);
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.data, "\x00\x00\x00\x01\x03\x80", 6); /* length excludes the header */
    sy_buf_reset(&b);
    size_t start = sy_frame_begin(&b, SY_FRAME_PING);
    sy_buf_append(&b, "abc", 3);
    assert_int_equal(sy_frame_end(&b, start), 0);
    assert_memory_equal(b.data,
                        "\x00\x00\x00\x03\x04"
                        "abc",
                        8);
    /* too large is refused before anything is read or copied */
    assert_int_equal(sy_frame_write(&b, SY_FRAME_TABLE, "", (size_t)SY_FRAME_MAX_BODY + 1),
                     -EMSGSIZE);
    assert_int_equal(b.len, 8);
    assert_string_equal(sy_frame_type_name(SY_FRAME_TABLE), "TABLE");
    assert_string_equal(sy_frame_type_name(77), "unknown");
    sy_buf_free(&b);
}

static void test_reader_whole_stream(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    struct sy_frame_reader r;
    struct seen s = {SY_BUF_INIT};

    build_stream(&b, 70000);
    sy_frame_reader_init(&r, SY_FRAME_MAX_BODY);
    assert_int_equal(sy_frame_reader_feed(&r, b.data, b.len, record, &s, NULL), 0);
    assert_int_equal(s.n, 7);
    assert_int_equal(sy_frame_reader_pending(&r), 0);
    /* the log holds msgpack, NULs included */
    assert_non_null(memmem(s.log.data, s.log.len, "|5:0:|", 6)); /* the empty body */
    assert_non_null(memmem(s.log.data, s.log.len, "|200:6:future|", 14));
    assert_non_null(memmem(s.log.data, s.log.len, "|2:70000:xxx", 12));
    sy_frame_reader_free(&r);
    sy_buf_free(&s.log);
    sy_buf_free(&b);
}

/* The same frames come out whatever the stream is cut into: at every offset in two pieces,
 * and byte by byte. */
static void test_reader_split_everywhere(void **state)
{
    struct sy_buf b = SY_BUF_INIT, want = SY_BUF_INIT;
    struct sy_frame_reader r;

    build_stream(&b, 3000); /* every cut is a pass over the whole stream */
    {
        struct seen s = {SY_BUF_INIT};
        sy_frame_reader_init(&r, SY_FRAME_MAX_BODY);
        assert_int_equal(sy_frame_reader_feed(&r, b.data, b.len, record, &s, NULL), 0);
        want = s.log;
        sy_frame_reader_free(&r);
    }
    for (size_t cut = 0; cut <= b.len; cut++) {
        struct seen s = {SY_BUF_INIT};
        sy_frame_reader_init(&r, SY_FRAME_MAX_BODY);
        assert_int_equal(sy_frame_reader_feed(&r, b.data, cut, record, &s, NULL), 0);
        assert_int_equal(sy_frame_reader_feed(&r, b.data + cut, b.len - cut, record, &s, NULL), 0);
        assert_int_equal(s.log.len, want.len);
        assert_memory_equal(s.log.data, want.data, want.len);
        assert_int_equal(sy_frame_reader_pending(&r), 0);
        sy_frame_reader_free(&r);
        sy_buf_free(&s.log);
    }
    struct seen s = {SY_BUF_INIT};
    sy_frame_reader_init(&r, SY_FRAME_MAX_BODY);
    for (size_t i = 0; i < b.len; i++) {
        assert_int_equal(sy_frame_reader_feed(&r, b.data + i, 1, record, &s, NULL), 0);
        /* bounded: never more than the frame being assembled */
        assert_true(sy_frame_reader_pending(&r) <= SY_FRAME_HEADER + 3000);
    }
    assert_memory_equal(s.log.data, want.data, want.len);
    sy_frame_reader_free(&r);
    sy_buf_free(&s.log);
    sy_buf_free(&want);
    sy_buf_free(&b);
}

static void test_reader_too_large(void **state)
{
    struct sy_frame_reader r;
    struct seen s = {SY_BUF_INIT};
    char *err = NULL;

    /* the protocol's limit, announced whole */
    sy_frame_reader_init(&r, SY_FRAME_MAX_BODY);
    assert_int_equal(sy_frame_reader_feed(&r, "\x10\x00\x00\x01\x02", 5, record, &s, &err),
                     -EMSGSIZE);
    assert_string_equal(
        err, "frame body of 268435457 bytes is larger than the limit of 268435456 bytes");
    SY_FREE(err);
    /* the stream cannot be resynchronised: every later feed fails */
    assert_int_equal(sy_frame_reader_feed(&r, "\x00\x00\x00\x00\x04", 5, record, &s, &err),
                     -EMSGSIZE);
    SY_FREE(err);
    assert_int_equal(s.n, 0);
    sy_frame_reader_free(&r);

    /* a smaller limit, with the header split: checked as soon as the length is known */
    sy_frame_reader_init(&r, 100);
    assert_int_equal(sy_frame_reader_feed(&r, "\x00\x00", 2, record, &s, &err), 0);
    assert_int_equal(sy_frame_reader_feed(&r, "\x00\x65\x02zzzz", 7, record, &s, NULL), -EMSGSIZE);
    assert_int_equal(sy_frame_reader_pending(&r), 0);
    sy_frame_reader_free(&r);

    /* exactly the limit is fine */
    struct sy_buf b = SY_BUF_INIT;
    char body[100] = {0};
    assert_int_equal(sy_frame_write(&b, SY_FRAME_TABLE, body, sizeof(body)), 0);
    sy_frame_reader_init(&r, 100);
    assert_int_equal(sy_frame_reader_feed(&r, b.data, 50, record, &s, NULL), 0);
    assert_int_equal(sy_frame_reader_pending(&r), 50);
    assert_int_equal(sy_frame_reader_feed(&r, b.data + 50, b.len - 50, record, &s, NULL), 0);
    assert_int_equal(s.n, 1);
    sy_frame_reader_free(&r);
    sy_buf_free(&b);
    sy_buf_free(&s.log);
}

static void test_reader_stop(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    struct sy_frame_reader r;
    struct seen s = {SY_BUF_INIT, 0, 2};

    build_stream(&b, 100);
    sy_frame_reader_init(&r, SY_FRAME_MAX_BODY);
    assert_int_equal(sy_frame_reader_feed(&r, b.data, b.len, record, &s, NULL), 7);
    assert_int_equal(s.n, 2);
    sy_frame_reader_free(&r);
    sy_buf_free(&s.log);
    sy_buf_free(&b);
}

/* ---- messages -------------------------------------------------------------------------- */

/* The body of the single frame in <b>. */
static const char *body_of(const struct sy_buf *b, size_t *len, unsigned *type)
{
    assert_true(b->len >= SY_FRAME_HEADER);
    *len = b->len - SY_FRAME_HEADER;
    *type = (unsigned char)b->data[4];
    return b->data + SY_FRAME_HEADER;
}

static void test_hello_round_trip(void **state)
{
    static const char *caps[] = {"table", "ack", "ping"};
    struct sy_hello in = {.proto = SY_PROTO_VERSION,
                          .role = SY_ROLE_DATAPLANE,
                          .node = "pod-7",
                          .pid = 4242,
                          .worker = 3,
                          .table_version = UINT64_MAX,
                          .caps = (char **)caps,
                          .n_caps = 3},
                    out;
    struct sy_buf b = SY_BUF_INIT;
    char *err = NULL;
    size_t len;
    unsigned type;

    assert_int_equal(sy_hello_write(&b, &in), 0);
    const char *body = body_of(&b, &len, &type);
    assert_int_equal(type, SY_FRAME_HELLO);
    assert_int_equal(sy_hello_decode(body, len, &out, &err), 0);
    assert_null(err);
    assert_int_equal(out.proto, 1);
    assert_int_equal(out.role, SY_ROLE_DATAPLANE);
    assert_string_equal(out.node, "pod-7");
    assert_int_equal(out.pid, 4242);
    assert_int_equal(out.worker, 3);
    assert_true(out.table_version == UINT64_MAX);
    assert_int_equal(out.n_caps, 3);
    assert_true(sy_hello_has_cap(&out, "ack"));
    assert_false(sy_hello_has_cap(&out, "gzip"));
    sy_hello_free(&out);
    assert_null(out.node);
    sy_buf_free(&b);
}

static void test_hello_lenient_and_strict(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    msgpack_packer pk;
    struct sy_hello h;
    char *err = NULL;

    /* the minimum, with unknown keys of any type: defaults and no complaint */
    msgpack_packer_init(&pk, &b, buf_write);
    msgpack_pack_map(&pk, 5);
    pack_cstr(&pk, "future");
    msgpack_pack_map(&pk, 1);
    pack_cstr(&pk, "x");
    msgpack_pack_array(&pk, 0);
    pack_cstr(&pk, "role");
    pack_cstr(&pk, "controlplane");
    msgpack_pack_int(&pk, 5); /* a key that is not a string */
    msgpack_pack_nil(&pk);
    pack_cstr(&pk, "proto");
    msgpack_pack_uint32(&pk, 1);
    pack_cstr(&pk, "node");
    msgpack_pack_nil(&pk); /* nil is absent */
    assert_int_equal(sy_hello_decode(b.data, b.len, &h, &err), 0);
    assert_int_equal(h.role, SY_ROLE_CONTROLPLANE);
    assert_string_equal(h.node, "");
    assert_int_equal(h.n_caps, 0);
    assert_int_equal(h.table_version, 0);
    sy_hello_free(&h);

    static const struct {
        const char *single_quoted_json; /* turned into msgpack */
        int rc;
        const char *err;
    } cases[] = {
        {"{'proto':2,'role':'dataplane'}", -EPROTONOSUPPORT,
         "HELLO.proto: the peer speaks protocol version 2; this build speaks version 1"},
        {"{'role':'dataplane'}", -EINVAL, "HELLO.proto: missing (this build speaks version 1)"},
        {"{'proto':'1','role':'dataplane'}", -EINVAL, "HELLO.proto: expected an unsigned integer"},
        {"{'proto':1}", -EINVAL, "HELLO.role: missing"},
        {"{'proto':1,'role':'admin'}", -EINVAL,
         "HELLO.role: must be \"dataplane\" or \"controlplane\""},
        {"{'proto':1,'role':'dataplane','worker':-1}", -EINVAL,
         "HELLO.worker: expected an unsigned integer of at most 4294967295"},
        {"{'proto':1,'role':'dataplane','caps':'table'}", -EINVAL,
         "HELLO.caps: expected an array of strings"},
        {"{'proto':1,'role':'dataplane','caps':['a',1]}", -EINVAL,
         "HELLO.caps[1]: expected a string"},
        {"{'proto':1,'role':'dataplane','node':7}", -EINVAL, "HELLO.node: expected a string"},
        {"[1]", -EINVAL, "HELLO: expected a map"},
    };
    for (size_t i = 0; i < SY_ARRAY_LEN(cases); i++) {
        char *text = strdup(cases[i].single_quoted_json);
        for (char *p = text; *p; p++)
            if (*p == '\'')
                *p = '"';
        sy_buf_reset(&b);
        msgpack_packer_init(&pk, &b, buf_write);
        json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);
        assert_non_null(j);
        pack_json(&pk, j);
        json_decref(j);
        free(text);
        int rc = sy_hello_decode(b.data, b.len, &h, &err);
        if (rc != cases[i].rc || err == NULL || strcmp(err, cases[i].err) != 0)
            fail_msg("%s\n  got:      %d %s\n  expected: %d %s", cases[i].single_quoted_json, rc,
                     err, cases[i].rc, cases[i].err);
        assert_null(h.node);
        SY_FREE(err);
    }

    /* garbage and truncation are refused before unpacking */
    assert_int_equal(sy_hello_decode("", 0, &h, &err), -EINVAL);
    assert_string_equal(err, "HELLO: empty body");
    SY_FREE(err);
    assert_int_equal(sy_hello_decode("\xdf\xff\xff\xff\xff", 5, &h, &err), -EINVAL);
    assert_string_equal(err, "HELLO: truncated msgpack (ends inside the message)");
    SY_FREE(err);
    assert_int_equal(sy_hello_decode("\x80\xc0", 2, &h, &err), -EINVAL);
    assert_string_equal(err, "HELLO: 1 unexpected bytes after the message");
    SY_FREE(err);
    sy_buf_free(&b);
}

static void test_ack_and_ping(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    struct sy_ack a;
    char *err = NULL;
    size_t len;
    unsigned type;
    int64_t t;

    assert_int_equal(sy_ack_write(&b, &(struct sy_ack){.version = 12, .ok = true}), 0);
    const char *body = body_of(&b, &len, &type);
    assert_int_equal(type, SY_FRAME_ACK);
    assert_int_equal(sy_ack_decode(body, len, &a, &err), 0);
    assert_int_equal(a.version, 12);
    assert_true(a.ok);
    assert_null(a.error);
    sy_ack_free(&a);

    sy_buf_reset(&b);
    assert_int_equal(
        sy_ack_write(&b, &(struct sy_ack){.version = 11, .ok = false, .error = "models: x"}), 0);
    body = body_of(&b, &len, &type);
    assert_int_equal(sy_ack_decode(body, len, &a, &err), 0);
    assert_int_equal(a.version, 11);
    assert_false(a.ok);
    assert_string_equal(a.error, "models: x");
    sy_ack_free(&a);

    assert_int_equal(sy_ack_decode("\x81\xa7version\x01", 10, &a, &err), -EINVAL);
    assert_string_equal(err, "ACK.ok: missing");
    SY_FREE(err);
    assert_int_equal(sy_ack_decode("\x81\xa2ok\xc3", 5, &a, &err), -EINVAL);
    assert_string_equal(err, "ACK.version: missing");
    SY_FREE(err);
    static const char twice[] = "\x83\xa2ok\xc3\xa7version\x01\xa7version\x02";
    assert_int_equal(sy_ack_decode(twice, sizeof(twice) - 1, &a, &err), -EINVAL);
    assert_string_equal(err, "ACK.version: given twice");
    SY_FREE(err);

    sy_buf_reset(&b);
    assert_int_equal(sy_ping_write(&b, SY_FRAME_PONG, -123456789012), 0);
    body = body_of(&b, &len, &type);
    assert_int_equal(type, SY_FRAME_PONG);
    assert_int_equal(sy_ping_decode(body, len, &t, &err), 0);
    assert_true(t == -123456789012);
    assert_int_equal(sy_ping_decode("\x80", 1, &t, &err), 0); /* t absent: 0 */
    assert_int_equal(t, 0);
    sy_buf_free(&b);
}

static void test_table_frame(void **state)
{
    const char *json = "{\"version\":5,\"require_keys\":true,\"deployments\":[{\"name\":\"d\","
                       "\"model\":\"m\",\"base_url\":\"http://h\",\"auth\":\"none\"}],"
                       "\"models\":[{\"name\":\"x\",\"targets\":[{\"deployment\":\"d\"}]}]}";
    struct sy_table *t = NULL, *back = NULL;
    struct sy_buf b = SY_BUF_INIT;
    char *err = NULL;
    size_t len;
    unsigned type;

    assert_int_equal(sy_table_from_json(json, strlen(json), &t, &err), 0);
    assert_int_equal(sy_frame_write_table(&b, t), 0);
    const char *body = body_of(&b, &len, &type);
    assert_int_equal(type, SY_FRAME_TABLE);
    assert_int_equal(sy_table_decode(body, len, &back, &err), 0);
    assert_int_equal(back->version, 5);
    assert_true(back->require_keys);
    assert_non_null(sy_table_find_model(back, "x", 1));
    sy_table_unref(t);
    sy_table_unref(back);
    sy_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_layout),
        cmocka_unit_test(test_reader_whole_stream),
        cmocka_unit_test(test_reader_split_everywhere),
        cmocka_unit_test(test_reader_too_large),
        cmocka_unit_test(test_reader_stop),
        cmocka_unit_test(test_hello_round_trip),
        cmocka_unit_test(test_hello_lenient_and_strict),
        cmocka_unit_test(test_ack_and_ping),
        cmocka_unit_test(test_table_frame),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
