/* SPDX-License-Identifier: Apache-2.0 */
/* Rewriting a request body by splicing bytes (rewrite.h).
 *
 * The body has been validated by jansson already, so re-serialising the parsed tree would be
 * both slower and unfaithful (key order, number spelling like 1.0 or 1e5, escapes). Instead
 * the top-level members are scanned once: strings are skipped with memchr, nested values by
 * counting brackets. The edits found on the way are recorded as splice operations, then the
 * output is written in one copy: the untouched stretches with memcpy, the edits in between.
 * Insertions go right after the opening brace, so they must be known before the first byte
 * after it is written; recording first is what allows that in a single scan. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "rewrite.h"
#include "sy/util.h"

/* ============================================================================================
 * Scanning
 * ========================================================================================== */

static inline const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

const char *dp_json_skip_string(const char *p, const char *e)
{
    const char *s = p + 1;
    for (;;) {
        const char *q = memchr(s, '"', (size_t)(e - s));
        if (q == NULL)
            return NULL;
        const char *b = q;
        while (b > s && b[-1] == '\\')
            b--;
        if (((q - b) & 1) == 0)
            return q + 1;
        s = q + 1;
    }
}

/* <p> is at '{' or '['; returns the byte after the matching closer, or NULL. Only nesting is
 * checked: the body was validated before, this only has to be safe on anything else. */
static const char *skip_container(const char *p, const char *e)
{
    size_t depth = 0;
    while (p < e) {
        switch (*p) {
        case '"':
            p = dp_json_skip_string(p, e);
            if (p == NULL)
                return NULL;
            continue;
        case '{':
        case '[':
            depth++;
            break;
        case '}':
        case ']':
            if (--depth == 0)
                return p + 1;
            break;
        default:
            break;
        }
        p++;
    }
    return NULL;
}

static const char *skip_literal(const char *p, const char *e, const char *lit, size_t n)
{
    return (size_t)(e - p) >= n && memcmp(p, lit, n) == 0 ? p + n : NULL;
}

/* <p> is at the first byte of a value (p < e); returns the byte after it, or NULL. */
static const char *skip_value(const char *p, const char *e, enum dp_json_type *type)
{
    switch (*p) {
    case '"':
        *type = DP_JSON_STRING;
        return dp_json_skip_string(p, e);
    case '{':
        *type = DP_JSON_OBJECT;
        return skip_container(p, e);
    case '[':
        *type = DP_JSON_ARRAY;
        return skip_container(p, e);
    case 't':
        *type = DP_JSON_TRUE;
        return skip_literal(p, e, "true", 4);
    case 'f':
        *type = DP_JSON_FALSE;
        return skip_literal(p, e, "false", 5);
    case 'n':
        *type = DP_JSON_NULL;
        return skip_literal(p, e, "null", 4);
    default:
        break;
    }
    if (*p != '-' && (*p < '0' || *p > '9'))
        return NULL;
    *type = DP_JSON_NUMBER;
    for (p++; p < e; p++) {
        char c = *p;
        if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'))
            break;
    }
    return p;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    return v;
}

static size_t put_utf8(char *d, uint32_t cp)
{
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xc0 | (cp >> 6));
        d[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xe0 | (cp >> 12));
        d[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        d[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    d[0] = (char)(0xf0 | (cp >> 18));
    d[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    d[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    d[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decode the JSON string contents [s, e) into <d>, which has room for e - s bytes (decoding
 * never lengthens). Returns the decoded length, or -1 on a bad escape. A lone surrogate is
 * kept as its three-byte form: it can only fail to equal the keys callers look for. */
static ssize_t decode_string(const char *s, const char *e, char *d)
{
    char *d0 = d;
    while (s < e) {
        const char *bs = memchr(s, '\\', (size_t)(e - s));
        size_t run = (size_t)((bs ? bs : e) - s);
        memcpy(d, s, run);
        d += run;
        if (bs == NULL)
            break;
        s = bs + 1;
        if (s >= e)
            return -1;
        char c = *s++;
        switch (c) {
        case '"':
        case '\\':
        case '/':
            *d++ = c;
            break;
        case 'b':
            *d++ = '\b';
            break;
        case 'f':
            *d++ = '\f';
            break;
        case 'n':
            *d++ = '\n';
            break;
        case 'r':
            *d++ = '\r';
            break;
        case 't':
            *d++ = '\t';
            break;
        case 'u': {
            if (e - s < 4)
                return -1;
            int v = hex4(s);
            if (v < 0)
                return -1;
            s += 4;
            uint32_t cp = (uint32_t)v;
            if (cp >= 0xd800 && cp < 0xdc00 && e - s >= 6 && s[0] == '\\' && s[1] == 'u') {
                int lo = hex4(s + 2);
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
                    s += 6;
                }
            }
            d += put_utf8(d, cp);
            break;
        }
        default:
            return -1;
        }
    }
    return d - d0;
}

/* The object's opening brace after an optional UTF-8 BOM and whitespace, or NULL. */
static const char *object_open(const char *body, size_t len)
{
    const char *p = body, *e = body + len;
    if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
        p += 3;
    p = skip_ws(p, e);
    return p < e && *p == '{' ? p : NULL;
}

#define KEY_STACK 256

int dp_json_top_members(const char *body, size_t len, dp_json_member_cb cb, void *ud)
{
    const char *e = body + len;
    const char *p = object_open(body, len);
    struct dp_json_member m;
    char keybuf[KEY_STACK];

    if (p == NULL)
        return -EINVAL;
    p = skip_ws(p + 1, e);
    if (p < e && *p == '}')
        goto close;
    for (m.index = 0;; m.index++) {
        if (p >= e || *p != '"')
            return -EINVAL;
        m.key_at = p;
        const char *ke = dp_json_skip_string(p, e);
        if (ke == NULL)
            return -EINVAL;
        p = skip_ws(ke, e);
        if (p >= e || *p != ':')
            return -EINVAL;
        p = skip_ws(p + 1, e);
        if (p >= e)
            return -EINVAL;
        m.val = p;
        p = skip_value(p, e, &m.type);
        if (p == NULL)
            return -EINVAL;
        m.val_len = (size_t)(p - m.val);

        const char *ks = m.key_at + 1;
        size_t raw_len = (size_t)(ke - 1 - ks);
        char *heap = NULL;
        if (SY_LIKELY(memchr(ks, '\\', raw_len) == NULL)) {
            m.key = ks;
            m.key_len = raw_len;
        } else {
            char *d = raw_len <= sizeof(keybuf) ? keybuf : (heap = sy_xmalloc(raw_len));
            ssize_t n = decode_string(ks, ke - 1, d);
            if (n < 0) {
                free(heap);
                return -EINVAL;
            }
            m.key = d;
            m.key_len = (size_t)n;
        }
        int rc = cb ? cb(ud, &m) : 0;
        free(heap);
        if (rc != 0)
            return rc;

        p = skip_ws(p, e);
        if (p < e && *p == ',') {
            p = skip_ws(p + 1, e);
            continue;
        }
        if (p < e && *p == '}')
            break;
        return -EINVAL;
    }
close:
    return skip_ws(p + 1, e) == e ? 0 : -EINVAL;
}

/* ============================================================================================
 * Rewriting
 * ========================================================================================== */

enum op_kind {
    OP_MODEL = 0,       /* replace [at, end) with the model string */
    OP_TRUE,            /* replace [at, end) with true */
    OP_USAGE_OBJECT,    /* replace [at, end) (a null) with {"include_usage":true} */
    OP_INSERT_USAGE,    /* insert "include_usage":true at <at>, first in an empty object */
    OP_INSERT_USAGE_CM, /* the same followed by a comma, before other members */
    OP_KIND_MAX,
};

struct op {
    const char *at;
    const char *end;
    enum op_kind kind;
};

/* Enough for any honest body (one "model", one "stream_options" with one "include_usage");
 * more, from duplicate keys, makes the rewrite scan a second time and write as it goes. */
#define MAX_OPS 8

struct rewrite {
    const struct dp_rewrite *rw;
    struct dp_rewrite_info info;
    bool model_seen;
    bool usage_seen; /* a stream_options that will carry include_usage: no insertion needed */
    bool overflow;
    bool writing; /* the second scan: ops are written as they come */
    unsigned members;
    unsigned nops;
    struct op ops[MAX_OPS];
    struct sy_buf *out;
    const char *copied; /* in writing mode, the body is written out up to here */
    /* per stream_options object */
    bool so_has_usage;
    unsigned so_members;
};

static const char usage_member[] = "\"include_usage\":true";
static const char usage_object[] = "{\"include_usage\":true}";

static void write_op(struct rewrite *r, const struct op *op)
{
    struct sy_buf *out = r->out;
    sy_buf_append(out, r->copied, (size_t)(op->at - r->copied));
    switch (op->kind) {
    case OP_MODEL:
        sy_buf_json_str(out, r->rw->model, r->rw->model_len);
        break;
    case OP_TRUE:
        sy_buf_append(out, "true", 4);
        break;
    case OP_USAGE_OBJECT:
        sy_buf_append(out, usage_object, sizeof(usage_object) - 1);
        break;
    case OP_INSERT_USAGE:
    case OP_INSERT_USAGE_CM:
        sy_buf_append(out, usage_member, sizeof(usage_member) - 1);
        if (op->kind == OP_INSERT_USAGE_CM)
            sy_buf_append(out, ",", 1);
        break;
    case OP_KIND_MAX:
        SY_REQUIRE(!"bad op");
    }
    r->copied = op->end;
}

static void add_op(struct rewrite *r, const char *at, const char *end, enum op_kind kind)
{
    struct op op = {at, end, kind};
    if (r->writing)
        write_op(r, &op);
    else if (r->nops < MAX_OPS)
        r->ops[r->nops++] = op;
    else
        r->overflow = true;
}

static int on_stream_option(void *ud, const struct dp_json_member *m)
{
    struct rewrite *r = ud;
    r->so_members++;
    if (!dp_json_key_is(m, "include_usage", 13))
        return 0;
    r->so_has_usage = true;
    r->info.client_include_usage = m->type == DP_JSON_TRUE;
    if (r->rw->force_include_usage && m->type != DP_JSON_TRUE)
        add_op(r, m->val, m->val + m->val_len, OP_TRUE);
    return 0;
}

static int on_member(void *ud, const struct dp_json_member *m)
{
    struct rewrite *r = ud;
    r->members++;
    if (dp_json_key_is(m, "model", 5)) {
        r->model_seen = true;
        add_op(r, m->val, m->val + m->val_len, OP_MODEL);
        return 0;
    }
    if (!dp_json_key_is(m, "stream_options", 14))
        return 0;

    /* Duplicates: the last one is what a parser keeps, so it sets the info. */
    r->info.had_stream_options = m->type != DP_JSON_NULL;
    r->info.client_include_usage = false;
    if (m->type == DP_JSON_OBJECT) {
        r->so_has_usage = false;
        r->so_members = 0;
        int rc = dp_json_top_members(m->val, m->val_len, on_stream_option, r);
        if (rc < 0)
            return rc;
        if (r->rw->force_include_usage && !r->so_has_usage)
            add_op(r, m->val + 1, m->val + 1, r->so_members ? OP_INSERT_USAGE_CM : OP_INSERT_USAGE);
        r->usage_seen = true;
    } else if (r->rw->force_include_usage) {
        /* A null is replaced where it stands: a new member in front would be a duplicate key
         * that parsers resolve to the later null. */
        if (m->type != DP_JSON_NULL)
            return -EINVAL;
        add_op(r, m->val, m->val + m->val_len, OP_USAGE_OBJECT);
        r->usage_seen = true;
    }
    return 0;
}

/* Write the body up to its opening brace, then the members to insert there. */
static void write_head(struct rewrite *r, const char *body, const char *open)
{
    struct sy_buf *out = r->out;
    bool model = !r->model_seen;
    bool usage = r->rw->force_include_usage && !r->usage_seen;

    sy_buf_append(out, body, (size_t)(open + 1 - body));
    if (model) {
        sy_buf_append(out, "\"model\":", 8);
        sy_buf_json_str(out, r->rw->model, r->rw->model_len);
    }
    if (usage) {
        if (model)
            sy_buf_append(out, ",", 1);
        sy_buf_append(out, "\"stream_options\":", 17);
        sy_buf_append(out, usage_object, sizeof(usage_object) - 1);
    }
    if ((model || usage) && r->members > 0)
        sy_buf_append(out, ",", 1);
    r->copied = open + 1;
}

int dp_rewrite_request(const char *body, size_t len, const struct dp_rewrite *rw,
                       struct sy_buf *out, struct dp_rewrite_info *info)
{
    struct rewrite r = {.rw = rw, .out = out};
    const char *open = object_open(body, len);
    size_t out_len0 = out->len;
    int rc;

    SY_REQUIRE(rw->model != NULL);
    if (open == NULL)
        return -EINVAL;
    rc = dp_json_top_members(body, len, on_member, &r);
    if (rc < 0)
        return rc;

    /* A model string escapes to at most 6 bytes a byte; the rest is a few fixed members. */
    sy_buf_reserve(out, len + 6 * rw->model_len + 128);
    write_head(&r, body, open);
    if (SY_LIKELY(!r.overflow)) {
        for (unsigned i = 0; i < r.nops; i++)
            write_op(&r, &r.ops[i]);
    } else {
        r.writing = true;
        r.members = 0;
        rc = dp_json_top_members(body, len, on_member, &r);
        if (rc < 0)
            goto fail;
    }
    sy_buf_append(out, r.copied, (size_t)(body + len - r.copied));
    if (info)
        *info = r.info;
    return 0;

fail:
    out->len = out_len0;
    if (out->data)
        out->data[out->len] = '\0';
    return rc;
}
