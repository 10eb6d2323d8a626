/* SPDX-License-Identifier: Apache-2.0 */
/* Frames of the control-plane <-> data-plane socket, and the codecs of the small messages.
 *
 * A frame is a 4-byte big-endian body length, a type byte and a msgpack body. The reader keeps
 * no more than the frame being assembled, so a peer cannot make it hold more than one frame's
 * worth of memory, and a frame that arrives whole in one read is handed out in place, without a
 * copy (a table can be megabytes).
 *
 * Message bodies go through the same pre-scan as tables before msgpack-c unpacks them, and are
 * read leniently in one respect only: keys this build does not know are skipped, so either side
 * can be upgraded first. */
#include <errno.h>
#include <inttypes.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "sy/frame.h"
#include "sy/table.h"
#include "sy/util.h"
#include "internal.h"

static const char *const frame_names[SY_FRAME_MAX] = {
    [SY_FRAME_INVALID] = "INVALID", [SY_FRAME_HELLO] = "HELLO", [SY_FRAME_TABLE] = "TABLE",
    [SY_FRAME_ACK] = "ACK",         [SY_FRAME_PING] = "PING",   [SY_FRAME_PONG] = "PONG",
};

static const char *const role_names[SY_ROLE_MAX] = {
    [SY_ROLE_DATAPLANE] = "dataplane",
    [SY_ROLE_CONTROLPLANE] = "controlplane",
};

const char *sy_frame_type_name(unsigned type)
{
    return type < SY_FRAME_MAX ? frame_names[type] : "unknown";
}

const char *sy_role_name(enum sy_role role)
{
    return (unsigned)role < SY_ROLE_MAX ? role_names[role] : "unknown";
}

/* ---- reading --------------------------------------------------------------------------- */

static uint32_t get_be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

void sy_frame_reader_init(struct sy_frame_reader *r, size_t max_body)
{
    *r = (struct sy_frame_reader){
        .buf = SY_BUF_INIT,
        .max_body = SY_MIN(max_body, (size_t)SY_FRAME_MAX_BODY),
    };
}

void sy_frame_reader_free(struct sy_frame_reader *r)
{
    sy_buf_free(&r->buf);
}

static int too_large(struct sy_frame_reader *r, uint32_t body, char **err)
{
    r->failed = true;
    sy_buf_free(&r->buf);
    return sy__proto_fail(err, -EMSGSIZE,
                          "frame body of %" PRIu32 " bytes is larger than the limit of %zu bytes",
                          body, r->max_body);
}

int sy_frame_reader_feed(struct sy_frame_reader *r, const char *data, size_t len, sy_frame_cb cb,
                         void *ud, char **err)
{
    if (r->failed)
        return sy__proto_fail(err, -EMSGSIZE, "the stream was already refused (frame too large)");

    for (;;) {
        /* Complete the frame in the buffer, if one is started, from <data>. */
        if (r->buf.len > 0) {
            size_t need = SY_FRAME_HEADER;
            if (r->buf.len >= SY_FRAME_HEADER)
                need += get_be32(r->buf.data);
            else if (r->buf.len + len >= SY_FRAME_HEADER) {
                /* Take just enough to learn the length, and check it before growing. */
                size_t take = SY_FRAME_HEADER - r->buf.len;
                sy_buf_append(&r->buf, data, take);
                data += take;
                len -= take;
                uint32_t body = get_be32(r->buf.data);
                if (body > r->max_body)
                    return too_large(r, body, err);
                need += body;
            }
            size_t take = SY_MIN(need - r->buf.len, len);
            sy_buf_append(&r->buf, data, take);
            data += take;
            len -= take;
            if (r->buf.len < need)
                return 0; /* everything was taken; wait for more */
            /* Whole: hand it out, then forget it (the callback must not keep pointers). */
            int rc = cb(ud, (unsigned char)r->buf.data[4], r->buf.data + SY_FRAME_HEADER,
                        need - SY_FRAME_HEADER);
            sy_buf_reset(&r->buf);
            if (r->buf.cap > 65536) /* a big table went through: do not keep its memory */
                sy_buf_free(&r->buf);
            if (rc != 0)
                return rc;
            continue;
        }
        if (len == 0)
            return 0;
        /* Frames that arrived whole are handed out from <data> itself. */
        if (len >= SY_FRAME_HEADER) {
            uint32_t body = get_be32(data);
            if (body > r->max_body)
                return too_large(r, body, err);
            if (len - SY_FRAME_HEADER >= body) {
                int rc = cb(ud, (unsigned char)data[4], data + SY_FRAME_HEADER, body);
                data += SY_FRAME_HEADER + body;
                len -= SY_FRAME_HEADER + body;
                if (rc != 0)
                    return rc;
                continue;
            }
        }
        /* A partial frame: keep what there is (at most header + max_body, checked above). */
        sy_buf_append(&r->buf, data, len);
        return 0;
    }
}

/* ---- writing --------------------------------------------------------------------------- */

size_t sy_frame_begin(struct sy_buf *out, enum sy_frame_type type)
{
    size_t start = out->len;
    char head[SY_FRAME_HEADER] = {0, 0, 0, 0, (char)type};
    sy_buf_append(out, head, sizeof(head));
    return start;
}

int sy_frame_end(struct sy_buf *out, size_t start)
{
    SY_REQUIRE(out->len >= start + SY_FRAME_HEADER);
    size_t body = out->len - start - SY_FRAME_HEADER;
    if (body > SY_FRAME_MAX_BODY) {
        out->len = start;
        out->data[start] = '\0';
        return -EMSGSIZE;
    }
    unsigned char *p = (unsigned char *)out->data + start;
    p[0] = (unsigned char)(body >> 24);
    p[1] = (unsigned char)(body >> 16);
    p[2] = (unsigned char)(body >> 8);
    p[3] = (unsigned char)body;
    return 0;
}

int sy_frame_write(struct sy_buf *out, enum sy_frame_type type, const char *body, size_t len)
{
    if (len > SY_FRAME_MAX_BODY)
        return -EMSGSIZE;
    size_t start = sy_frame_begin(out, type);
    sy_buf_append(out, body, len);
    return sy_frame_end(out, start);
}

int sy_frame_write_table(struct sy_buf *out, const struct sy_table *t)
{
    size_t start = sy_frame_begin(out, SY_FRAME_TABLE);
    sy_table_encode(t, out);
    return sy_frame_end(out, start);
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

int sy_hello_write(struct sy_buf *out, const struct sy_hello *h)
{
    msgpack_packer pk;
    size_t start = sy_frame_begin(out, SY_FRAME_HELLO);

    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 7);
    pack_cstr(&pk, "proto");
    msgpack_pack_uint32(&pk, h->proto);
    pack_cstr(&pk, "role");
    pack_cstr(&pk, sy_role_name(h->role));
    pack_cstr(&pk, "node");
    pack_cstr(&pk, h->node ? h->node : "");
    pack_cstr(&pk, "pid");
    msgpack_pack_int64(&pk, h->pid);
    pack_cstr(&pk, "worker");
    msgpack_pack_uint32(&pk, h->worker);
    pack_cstr(&pk, "table_version");
    msgpack_pack_uint64(&pk, h->table_version);
    pack_cstr(&pk, "caps");
    msgpack_pack_array(&pk, h->n_caps);
    for (uint32_t i = 0; i < h->n_caps; i++)
        pack_cstr(&pk, h->caps[i]);
    return sy_frame_end(out, start);
}

int sy_ack_write(struct sy_buf *out, const struct sy_ack *a)
{
    msgpack_packer pk;
    size_t start = sy_frame_begin(out, SY_FRAME_ACK);

    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, a->error ? 3 : 2);
    pack_cstr(&pk, "version");
    msgpack_pack_uint64(&pk, a->version);
    pack_cstr(&pk, "ok");
    if (a->ok)
        msgpack_pack_true(&pk);
    else
        msgpack_pack_false(&pk);
    if (a->error) {
        pack_cstr(&pk, "error");
        pack_cstr(&pk, a->error);
    }
    return sy_frame_end(out, start);
}

int sy_ping_write(struct sy_buf *out, enum sy_frame_type type, int64_t t)
{
    msgpack_packer pk;
    SY_REQUIRE(type == SY_FRAME_PING || type == SY_FRAME_PONG);
    size_t start = sy_frame_begin(out, type);

    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 1);
    pack_cstr(&pk, "t");
    msgpack_pack_int64(&pk, t);
    return sy_frame_end(out, start);
}

/* ---- decoding messages ----------------------------------------------------------------- */

/* One message body unpacked: the map's entries, valid until msg_done(). */
struct msg {
    msgpack_unpacked up;
    const msgpack_object *root;
    const char *what; /* "HELLO", for messages */
    char **err;
};

static int msg_open(struct msg *m, const char *what, const char *body, size_t len, char **err)
{
    size_t off = 0;
    int rc;

    m->root = NULL;
    m->what = what;
    m->err = err;
    if (err)
        *err = NULL;
    msgpack_unpacked_init(&m->up);
    if (len == 0)
        return sy__proto_fail(err, -EINVAL, "%s: empty body", what);
    char *inner = NULL;
    if ((rc = sy__msgpack_prescan(body, len, "message", err ? &inner : NULL)) < 0) {
        sy__proto_fail(err, rc, "%s: %s", what, inner);
        free(inner);
        return rc;
    }
    if (msgpack_unpack_next(&m->up, body, len, &off) != MSGPACK_UNPACK_SUCCESS)
        return sy__proto_fail(err, -EINVAL, "%s: invalid msgpack", what);
    if (m->up.data.type != MSGPACK_OBJECT_MAP)
        return sy__proto_fail(err, -EINVAL, "%s: expected a map", what);
    m->root = &m->up.data;
    return 0;
}

static void msg_done(struct msg *m)
{
    msgpack_unpacked_destroy(&m->up);
}

/* The value of <key>, NULL when absent or nil; a key given twice is an error. */
static int msg_get(struct msg *m, const char *key, const msgpack_object **out)
{
    size_t n = strlen(key);
    *out = NULL;
    for (uint32_t i = 0; i < m->root->via.map.size; i++) {
        const msgpack_object *k = &m->root->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size != n ||
            memcmp(k->via.str.ptr, key, n) != 0)
            continue;
        if (*out)
            return sy__proto_fail(m->err, -EINVAL, "%s.%s: given twice", m->what, key);
        *out = &m->root->via.map.ptr[i].val;
    }
    if (*out && (*out)->type == MSGPACK_OBJECT_NIL)
        *out = NULL;
    return 0;
}

static int msg_u64(struct msg *m, const char *key, uint64_t max, bool required, uint64_t *out)
{
    const msgpack_object *v;
    int rc = msg_get(m, key, &v);
    if (rc < 0)
        return rc;
    if (v == NULL)
        return required ? sy__proto_fail(m->err, -EINVAL, "%s.%s: missing", m->what, key) : 0;
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > max)
        return sy__proto_fail(m->err, -EINVAL,
                              "%s.%s: expected an unsigned integer of at most %" PRIu64, m->what,
                              key, max);
    *out = v->via.u64;
    return 0;
}

static int msg_i64(struct msg *m, const char *key, int64_t *out)
{
    const msgpack_object *v;
    int rc = msg_get(m, key, &v);
    if (rc < 0 || v == NULL)
        return rc;
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
        (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX)) {
        *out = v->via.i64;
        return 0;
    }
    return sy__proto_fail(m->err, -EINVAL, "%s.%s: expected an integer", m->what, key);
}

/* A string, copied; NULL when absent. */
static int msg_str(struct msg *m, const char *key, char **out)
{
    const msgpack_object *v;
    int rc = msg_get(m, key, &v);
    if (rc < 0 || v == NULL)
        return rc;
    if (v->type != MSGPACK_OBJECT_STR)
        return sy__proto_fail(m->err, -EINVAL, "%s.%s: expected a string", m->what, key);
    *out = sy_xstrndup(v->via.str.ptr, v->via.str.size);
    return 0;
}

int sy_hello_decode(const char *body, size_t len, struct sy_hello *h, char **err)
{
    struct msg m;
    const msgpack_object *v;
    uint64_t u;
    int rc;

    memset(h, 0, sizeof(*h));
    if ((rc = msg_open(&m, "HELLO", body, len, err)) < 0)
        goto fail;

    /* The version first: a peer of another version may have changed anything else. */
    if ((rc = msg_get(&m, "proto", &v)) < 0)
        goto fail;
    if (v == NULL) {
        rc = sy__proto_fail(err, -EINVAL, "HELLO.proto: missing (this build speaks version %d)",
                            SY_PROTO_VERSION);
        goto fail;
    }
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        rc = sy__proto_fail(err, -EINVAL, "HELLO.proto: expected an unsigned integer");
        goto fail;
    }
    if (v->via.u64 != SY_PROTO_VERSION) {
        rc = sy__proto_fail(err, -EPROTONOSUPPORT,
                            "HELLO.proto: the peer speaks protocol version %" PRIu64
                            "; this build speaks version %d",
                            v->via.u64, SY_PROTO_VERSION);
        goto fail;
    }
    h->proto = SY_PROTO_VERSION;

    if ((rc = msg_get(&m, "role", &v)) < 0)
        goto fail;
    if (v == NULL) {
        rc = sy__proto_fail(err, -EINVAL, "HELLO.role: missing");
        goto fail;
    }
    h->role = SY_ROLE_MAX;
    for (int i = 0; i < SY_ROLE_MAX && v->type == MSGPACK_OBJECT_STR; i++)
        if (v->via.str.size == strlen(role_names[i]) &&
            memcmp(v->via.str.ptr, role_names[i], v->via.str.size) == 0)
            h->role = (enum sy_role)i;
    if (h->role == SY_ROLE_MAX) {
        rc = sy__proto_fail(err, -EINVAL, "HELLO.role: must be \"dataplane\" or \"controlplane\"");
        goto fail;
    }

    if ((rc = msg_str(&m, "node", &h->node)) < 0)
        goto fail;
    if (h->node == NULL)
        h->node = sy_xstrdup("");
    if ((rc = msg_i64(&m, "pid", &h->pid)) < 0)
        goto fail;
    u = 0;
    if ((rc = msg_u64(&m, "worker", UINT32_MAX, false, &u)) < 0)
        goto fail;
    h->worker = (uint32_t)u;
    if ((rc = msg_u64(&m, "table_version", UINT64_MAX, false, &h->table_version)) < 0)
        goto fail;

    if ((rc = msg_get(&m, "caps", &v)) < 0)
        goto fail;
    if (v != NULL) {
        if (v->type != MSGPACK_OBJECT_ARRAY) {
            rc = sy__proto_fail(err, -EINVAL, "HELLO.caps: expected an array of strings");
            goto fail;
        }
        h->caps = sy_xcalloc(v->via.array.size ? v->via.array.size : 1, sizeof(*h->caps));
        for (uint32_t i = 0; i < v->via.array.size; i++) {
            const msgpack_object *c = &v->via.array.ptr[i];
            if (c->type != MSGPACK_OBJECT_STR) {
                rc = sy__proto_fail(err, -EINVAL, "HELLO.caps[%" PRIu32 "]: expected a string", i);
                goto fail;
            }
            h->caps[h->n_caps++] = sy_xstrndup(c->via.str.ptr, c->via.str.size);
        }
    }
    msg_done(&m);
    return 0;

fail:
    msg_done(&m);
    sy_hello_free(h);
    return rc;
}

bool sy_hello_has_cap(const struct sy_hello *h, const char *cap)
{
    for (uint32_t i = 0; i < h->n_caps; i++)
        if (strcmp(h->caps[i], cap) == 0)
            return true;
    return false;
}

void sy_hello_free(struct sy_hello *h)
{
    free(h->node);
    for (uint32_t i = 0; i < h->n_caps; i++)
        free(h->caps[i]);
    free(h->caps);
    memset(h, 0, sizeof(*h));
}

int sy_ack_decode(const char *body, size_t len, struct sy_ack *a, char **err)
{
    struct msg m;
    const msgpack_object *v;
    int rc;

    memset(a, 0, sizeof(*a));
    if ((rc = msg_open(&m, "ACK", body, len, err)) < 0)
        goto fail;
    if ((rc = msg_u64(&m, "version", UINT64_MAX, true, &a->version)) < 0)
        goto fail;
    if ((rc = msg_get(&m, "ok", &v)) < 0)
        goto fail;
    if (v == NULL || v->type != MSGPACK_OBJECT_BOOLEAN) {
        rc = sy__proto_fail(err, -EINVAL, "ACK.ok: %s", v ? "expected true or false" : "missing");
        goto fail;
    }
    a->ok = v->via.boolean;
    if ((rc = msg_str(&m, "error", &a->error)) < 0)
        goto fail;
    msg_done(&m);
    return 0;

fail:
    msg_done(&m);
    sy_ack_free(a);
    return rc;
}

void sy_ack_free(struct sy_ack *a)
{
    free(a->error);
    memset(a, 0, sizeof(*a));
}

int sy_ping_decode(const char *body, size_t len, int64_t *t, char **err)
{
    struct msg m;
    int rc;

    *t = 0;
    if ((rc = msg_open(&m, "PING", body, len, err)) == 0)
        rc = msg_i64(&m, "t", t);
    msg_done(&m);
    return rc;
}
