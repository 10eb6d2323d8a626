/* SPDX-License-Identifier: Apache-2.0 */
/* The `guardrails` array of the routing table: decode, check, encode and free.
 *
 * One reader serves three callers: the table decoder (lenient: unknown keys are skipped, for
 * forward compatibility), the admin API (strict: unknown keys are refused, every message names
 * the field by its path, e.g. `input.detectors[2]: unknown detector "mail"`), and the encoder
 * writes the same keys back, so that what the admin API accepts is what the data plane reads.
 * The wire form is documented in proto/README.md, section "guardrails". */
#include <errno.h>
#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sy/buf.h"
#include "sy/table.h"
#include "sy/util.h"
#include "internal.h"

/* Limits of one guardrail: enough for a real deny list (10,000 keywords of up to 256 bytes is
 * the documented target), small enough that one document cannot exhaust a worker. */
#define MAX_KEYWORDS    100000
#define MAX_KEYWORD_LEN 256
#define MAX_REGEXES     256
#define MAX_REGEX_LEN   1024
#define MAX_ATTACH      1024 /* models or keys one guardrail names */
#define MAX_GUARDRAILS  1024 /* guardrails of one table */
#define MAX_NAME_LEN    128
#define MAX_LIMIT       100000000u

static const char *const detector_names[SY_GUARD_DETECTOR_MAX] = {
    [SY_GUARD_EMAIL] = "email",         [SY_GUARD_PHONE] = "phone",
    [SY_GUARD_CN_MOBILE] = "cn_mobile", [SY_GUARD_CN_ID] = "cn_id",
    [SY_GUARD_BANK_CARD] = "bank_card", [SY_GUARD_IPV4] = "ipv4",
    [SY_GUARD_IPV6] = "ipv6",           [SY_GUARD_SECRET] = "secret",
    [SY_GUARD_KEYWORD] = "keywords",    [SY_GUARD_REGEX] = "regexes",
};

static const char *const action_names[SY_GUARD_ACTION_MAX] = {
    [SY_GUARD_LOG] = "log",
    [SY_GUARD_REDACT] = "redact",
    [SY_GUARD_BLOCK] = "block",
};

static const char *const tokens_mode_names[SY_GUARD_TOKENS_MAX] = {
    [SY_GUARD_TOKENS_LOWER] = "lower",
    [SY_GUARD_TOKENS_REFUSE] = "refuse",
};

const char *sy_guard_detector_name(enum sy_guard_detector d)
{
    return (unsigned)d < SY_GUARD_DETECTOR_MAX ? detector_names[d] : "?";
}

const char *sy_guard_action_name(enum sy_guard_action a)
{
    return (unsigned)a < SY_GUARD_ACTION_MAX ? action_names[a] : "?";
}

/* ---- the walk ---------------------------------------------------------------------------- */

struct gdec {
    struct sy_buf path; /* "guardrails[0].input.keywords[3]" as the walk descends */
    bool strict;
    char **err, **err_path;
};

__attribute__((format(printf, 3, 4))) static int gfail(struct gdec *g, int rc, const char *fmt, ...)
{
    if (g->err) {
        struct sy_buf b = SY_BUF_INIT;
        va_list ap;
        if (g->path.len)
            sy_buf_printf(&b, "%s: ", g->path.data);
        va_start(ap, fmt);
        sy_buf_vprintf(&b, fmt, ap);
        va_end(ap);
        *g->err = sy_buf_steal(&b, NULL);
    }
    if (g->err_path)
        *g->err_path = sy_xstrdup(g->path.len ? g->path.data : "");
    return rc;
}

static size_t push_key(struct gdec *g, const char *key)
{
    size_t mark = g->path.len;
    sy_buf_printf(&g->path, "%s%s", g->path.len ? "." : "", key);
    return mark;
}

static size_t push_index(struct gdec *g, uint32_t i)
{
    size_t mark = g->path.len;
    sy_buf_printf(&g->path, "[%" PRIu32 "]", i);
    return mark;
}

static void pop(struct gdec *g, size_t mark)
{
    g->path.len = mark;
    if (g->path.data)
        g->path.data[mark] = '\0';
}

static const char *type_of(const msgpack_object *v)
{
    switch (v->type) {
    case MSGPACK_OBJECT_NIL:
        return "null";
    case MSGPACK_OBJECT_BOOLEAN:
        return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "an integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "a number";
    case MSGPACK_OBJECT_STR:
        return "a string";
    case MSGPACK_OBJECT_ARRAY:
        return "an array";
    case MSGPACK_OBJECT_MAP:
        return "an object";
    default:
        return "binary data";
    }
}

static bool str_is(const msgpack_object *k, const char *lit)
{
    size_t n = strlen(lit);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, lit, n) == 0;
}

/* Keys of <map> must be among <names> (strict walks only); a key given twice is refused. */
static int check_keys(struct gdec *g, const msgpack_object *map, const char *const *names)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        bool known = false;
        for (const char *const *n = names; *n; n++)
            known = known || str_is(k, *n);
        for (uint32_t j = 0; j < i; j++) {
            const msgpack_object *o = &map->via.map.ptr[j].key;
            if (k->type == MSGPACK_OBJECT_STR && o->type == MSGPACK_OBJECT_STR &&
                k->via.str.size == o->via.str.size &&
                memcmp(k->via.str.ptr, o->via.str.ptr, k->via.str.size) == 0)
                return gfail(g, -EINVAL, "key \"%.*s\" given twice", (int)k->via.str.size,
                             k->via.str.ptr);
        }
        if (!known && g->strict) {
            if (k->type != MSGPACK_OBJECT_STR)
                return gfail(g, -EINVAL, "keys must be strings");
            size_t mark = g->path.len;
            if (g->path.len)
                sy_buf_append(&g->path, ".", 1);
            sy_buf_append(&g->path, k->via.str.ptr, k->via.str.size);
            int rc = gfail(g, -EINVAL, "unknown field");
            pop(g, mark);
            return rc;
        }
    }
    return 0;
}

/* The value of <key> in <map>, or NULL when absent or null. */
static const msgpack_object *get(const msgpack_object *map, const char *key)
{
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (str_is(&map->via.map.ptr[i].key, key))
            return map->via.map.ptr[i].val.type == MSGPACK_OBJECT_NIL ? NULL
                                                                      : &map->via.map.ptr[i].val;
    return NULL;
}

static int want_map(struct gdec *g, const msgpack_object *v)
{
    return v->type == MSGPACK_OBJECT_MAP
               ? 0
               : gfail(g, -EINVAL, "expected an object, got %s", type_of(v));
}

static int get_string(struct gdec *g, const msgpack_object *v, size_t min, size_t max, char **out)
{
    if (v->type != MSGPACK_OBJECT_STR)
        return gfail(g, -EINVAL, "expected a string, got %s", type_of(v));
    if (v->via.str.size < min || v->via.str.size > max)
        return gfail(g, -EINVAL, "must be %zu to %zu bytes long", min, max);
    if (memchr(v->via.str.ptr, '\0', v->via.str.size))
        return gfail(g, -EINVAL, "must not contain NUL characters");
    *out = sy_xstrndup(v->via.str.ptr, v->via.str.size);
    return 0;
}

static int get_uint(struct gdec *g, const msgpack_object *v, uint64_t max, uint64_t *out)
{
    if (v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32) {
        double d = v->via.f64;
        if (d >= 0 && d <= (double)max && d == (double)(uint64_t)d) {
            *out = (uint64_t)d;
            return 0;
        }
    } else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= max) {
        *out = v->via.u64;
        return 0;
    }
    return gfail(g, -EINVAL, "must be a whole number from 0 to %" PRIu64, max);
}

static int get_name(struct gdec *g, const msgpack_object *v, const char *const *names, int n,
                    int *out)
{
    if (v->type == MSGPACK_OBJECT_STR)
        for (int i = 0; i < n; i++)
            if (names[i] && str_is(v, names[i])) {
                *out = i;
                return 0;
            }
    struct sy_buf b = SY_BUF_INIT;
    for (int i = 0; i < n; i++)
        if (names[i])
            sy_buf_printf(&b, "%s\"%s\"", b.len ? ", " : "", names[i]);
    int rc;
    if (v->type == MSGPACK_OBJECT_STR)
        rc = gfail(g, -EINVAL, "must be one of %s, got \"%.*s\"", b.data, (int)v->via.str.size,
                   v->via.str.ptr);
    else
        rc = gfail(g, -EINVAL, "must be one of %s, got %s", b.data, type_of(v));
    sy_buf_free(&b);
    return rc;
}

/* Whether <v> is one of <names>. */
static bool known_name(const msgpack_object *v, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (names[i] && str_is(v, names[i]))
            return true;
    return false;
}

/* An array of strings of <min>..<max> bytes, at most <max_n> of them. */
static int get_strings(struct gdec *g, const msgpack_object *v, uint32_t max_n, size_t min,
                       size_t max, char ***out, uint32_t *n_out)
{
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return gfail(g, -EINVAL, "expected an array of strings, got %s", type_of(v));
    if (v->via.array.size > max_n)
        return gfail(g, -EINVAL, "at most %" PRIu32 " entries, got %" PRIu32, max_n,
                     v->via.array.size);
    uint32_t n = v->via.array.size;
    char **a = sy_xcalloc(n ? n : 1, sizeof(*a));
    *out = a;
    *n_out = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t mark = push_index(g, i);
        int rc = get_string(g, &v->via.array.ptr[i], min, max, &a[i]);
        if (rc < 0)
            return rc;
        *n_out = i + 1;
        pop(g, mark);
    }
    return 0;
}

static const char *const side_keys[] = {"detectors", "keywords", "regexes",
                                        "action",    "actions",  NULL};

static int decode_side(struct gdec *g, const msgpack_object *v, struct sy_guard_side *s)
{
    const msgpack_object *x;
    int rc, a = SY_GUARD_BLOCK;
    size_t mark;

    if ((rc = want_map(g, v)) < 0 || (rc = check_keys(g, v, side_keys)) < 0)
        return rc;
    if ((x = get(v, "action"))) {
        mark = push_key(g, "action");
        if ((rc = get_name(g, x, action_names, SY_GUARD_ACTION_MAX, &a)) < 0)
            return rc;
        pop(g, mark);
    }
    for (int d = 0; d < SY_GUARD_DETECTOR_MAX; d++)
        s->actions[d] = (uint8_t)a;
    if ((x = get(v, "detectors"))) {
        mark = push_key(g, "detectors");
        if (x->type != MSGPACK_OBJECT_ARRAY)
            return gfail(g, -EINVAL, "expected an array of detector names, got %s", type_of(x));
        for (uint32_t i = 0; i < x->via.array.size; i++) {
            size_t m2 = push_index(g, i);
            int d;
            if (!g->strict && !known_name(&x->via.array.ptr[i], detector_names, SY_GUARD_KEYWORD)) {
                pop(g, m2); /* a detector of a newer build: this one cannot run it */
                continue;
            }
            if ((rc = get_name(g, &x->via.array.ptr[i], detector_names, SY_GUARD_KEYWORD, &d)) < 0)
                return rc;
            if (s->detectors & (1u << d))
                return gfail(g, -EINVAL, "\"%s\" is listed twice", detector_names[d]);
            s->detectors |= 1u << d;
            pop(g, m2);
        }
        pop(g, mark);
    }
    if ((x = get(v, "keywords"))) {
        mark = push_key(g, "keywords");
        if ((rc = get_strings(g, x, MAX_KEYWORDS, 1, MAX_KEYWORD_LEN, &s->keywords,
                              &s->n_keywords)) < 0)
            return rc;
        pop(g, mark);
    }
    if ((x = get(v, "regexes"))) {
        mark = push_key(g, "regexes");
        if ((rc = get_strings(g, x, MAX_REGEXES, 1, MAX_REGEX_LEN, &s->regexes, &s->n_regexes)) < 0)
            return rc;
        pop(g, mark);
    }
    if ((x = get(v, "actions"))) {
        mark = push_key(g, "actions");
        if ((rc = want_map(g, x)) < 0)
            return rc;
        for (uint32_t i = 0; i < x->via.map.size; i++) {
            const msgpack_object_kv *kv = &x->via.map.ptr[i];
            int d, act;
            if (!g->strict && !known_name(&kv->key, detector_names, SY_GUARD_DETECTOR_MAX))
                continue; /* the action of a detector this build does not have */
            if ((rc = get_name(g, &kv->key, detector_names, SY_GUARD_DETECTOR_MAX, &d)) < 0)
                return rc;
            size_t m2 = push_key(g, detector_names[d]);
            if ((rc = get_name(g, &kv->val, action_names, SY_GUARD_ACTION_MAX, &act)) < 0)
                return rc;
            s->actions[d] = (uint8_t)act;
            pop(g, m2);
        }
        pop(g, mark);
    }
    return 0;
}

static const char *const limit_keys[] = {"max_input_chars", "max_input_tokens", "max_tokens_cap",
                                         "max_tokens_mode", "max_output_chars", NULL};

static int decode_limits(struct gdec *g, const msgpack_object *v, struct sy_guard_limits *l)
{
    uint32_t *dst[] = {&l->max_input_chars, &l->max_input_tokens, &l->max_tokens_cap, NULL,
                       &l->max_output_chars};
    int rc;

    if ((rc = want_map(g, v)) < 0 || (rc = check_keys(g, v, limit_keys)) < 0)
        return rc;
    for (size_t i = 0; limit_keys[i]; i++) {
        const msgpack_object *x = get(v, limit_keys[i]);
        if (!x)
            continue;
        size_t mark = push_key(g, limit_keys[i]);
        if (dst[i]) {
            uint64_t u;
            if ((rc = get_uint(g, x, MAX_LIMIT, &u)) < 0)
                return rc;
            *dst[i] = (uint32_t)u;
        } else {
            int m;
            if ((rc = get_name(g, x, tokens_mode_names, SY_GUARD_TOKENS_MAX, &m)) < 0)
                return rc;
            l->max_tokens_mode = (enum sy_guard_tokens_mode)m;
        }
        pop(g, mark);
    }
    return 0;
}

static const char *const attach_keys[] = {"all", "models", "keys", NULL};

static int decode_attach(struct gdec *g, const msgpack_object *v, struct sy_guardrail *gr)
{
    const msgpack_object *x;
    int rc;
    size_t mark;

    if ((rc = want_map(g, v)) < 0 || (rc = check_keys(g, v, attach_keys)) < 0)
        return rc;
    if ((x = get(v, "all"))) {
        mark = push_key(g, "all");
        if (x->type != MSGPACK_OBJECT_BOOLEAN)
            return gfail(g, -EINVAL, "expected true or false, got %s", type_of(x));
        gr->all = x->via.boolean;
        pop(g, mark);
    }
    if ((x = get(v, "models"))) {
        mark = push_key(g, "models");
        if ((rc = get_strings(g, x, MAX_ATTACH, 1, MAX_NAME_LEN, &gr->models, &gr->n_models)) < 0)
            return rc;
        pop(g, mark);
    }
    if ((x = get(v, "keys"))) {
        mark = push_key(g, "keys");
        if (x->type != MSGPACK_OBJECT_ARRAY)
            return gfail(g, -EINVAL, "expected an array of key ids, got %s", type_of(x));
        if (x->via.array.size > MAX_ATTACH)
            return gfail(g, -EINVAL, "at most %d entries", MAX_ATTACH);
        gr->keys = sy_xcalloc(x->via.array.size ? x->via.array.size : 1, sizeof(*gr->keys));
        for (uint32_t i = 0; i < x->via.array.size; i++) {
            size_t m2 = push_index(g, i);
            if ((rc = get_uint(g, &x->via.array.ptr[i], UINT64_MAX, &gr->keys[i])) < 0)
                return rc;
            gr->n_keys = i + 1;
            pop(g, m2);
        }
        pop(g, mark);
    }
    return 0;
}

/* Keys of a guardrail; the admin document's own (description, enabled and what reads show) are
 * accepted by a strict walk so that a fetched document can be sent back. */
static const char *const guardrail_keys[] = {
    "name",    "id",     "applies_to", "input",      "output",     "limits", "description",
    "enabled", "object", "version",    "created_at", "updated_at", NULL};

static int decode_one(struct gdec *g, const msgpack_object *v, struct sy_guardrail *gr)
{
    const msgpack_object *x;
    int rc;
    size_t mark;

    if ((rc = want_map(g, v)) < 0 || (rc = check_keys(g, v, guardrail_keys)) < 0)
        return rc;
    mark = push_key(g, "name");
    if (!(x = get(v, "name")))
        return gfail(g, -EINVAL, "missing");
    if ((rc = get_string(g, x, 1, MAX_NAME_LEN, &gr->name)) < 0)
        return rc;
    pop(g, mark);
    if ((x = get(v, "id"))) {
        mark = push_key(g, "id");
        if ((rc = get_uint(g, x, UINT64_MAX, &gr->id)) < 0)
            return rc;
        pop(g, mark);
    }
    for (int d = 0; d < SY_GUARD_DETECTOR_MAX; d++)
        gr->input.actions[d] = gr->output.actions[d] = SY_GUARD_BLOCK;
    static const char *const parts[] = {"applies_to", "input", "output", "limits"};
    for (size_t i = 0; i < SY_ARRAY_LEN(parts); i++) {
        if (!(x = get(v, parts[i])))
            continue;
        mark = push_key(g, parts[i]);
        switch (i) {
        case 0:
            rc = decode_attach(g, x, gr);
            break;
        case 1:
            rc = decode_side(g, x, &gr->input);
            break;
        case 2:
            rc = decode_side(g, x, &gr->output);
            break;
        default:
            rc = decode_limits(g, x, &gr->limits);
            break;
        }
        if (rc < 0)
            return rc;
        pop(g, mark);
    }
    return 0;
}

static void side_free(struct sy_guard_side *s)
{
    for (uint32_t i = 0; i < s->n_keywords; i++)
        free(s->keywords[i]);
    free(s->keywords);
    for (uint32_t i = 0; i < s->n_regexes; i++)
        free(s->regexes[i]);
    free(s->regexes);
}

void sy__guardrail_free(struct sy_guardrail *gr)
{
    free(gr->name);
    for (uint32_t i = 0; i < gr->n_models; i++)
        free(gr->models[i]);
    free(gr->models);
    free(gr->keys);
    side_free(&gr->input);
    side_free(&gr->output);
    memset(gr, 0, sizeof(*gr));
}

void sy__guardrails_free(struct sy_table *t)
{
    for (uint32_t i = 0; i < t->n_guardrails; i++)
        sy__guardrail_free(&t->guardrails[i]);
    free(t->guardrails);
    t->guardrails = NULL;
    t->n_guardrails = 0;
}

int sy__guardrails_decode(struct sy_table *t, const msgpack_object *v, char **err)
{
    struct gdec g = {.path = SY_BUF_INIT, .err = err};
    int rc = 0;

    sy_buf_puts(&g.path, "guardrails");
    if (v->type != MSGPACK_OBJECT_ARRAY) {
        rc = gfail(&g, -EINVAL, "expected an array, got %s", type_of(v));
        goto fail;
    }
    if (v->via.array.size > MAX_GUARDRAILS) {
        rc = gfail(&g, -EINVAL, "at most %d guardrails", MAX_GUARDRAILS);
        goto fail;
    }
    t->guardrails = sy_xcalloc(v->via.array.size ? v->via.array.size : 1, sizeof(*t->guardrails));
    t->n_guardrails = v->via.array.size; /* zeroed: freeing copes with a partial decode */
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        size_t mark = push_index(&g, i);
        if ((rc = decode_one(&g, &v->via.array.ptr[i], &t->guardrails[i])) < 0)
            goto fail;
        pop(&g, mark);
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(t->guardrails[j].name, t->guardrails[i].name) == 0) {
                push_index(&g, i);
                rc = gfail(&g, -EINVAL, "name \"%s\" is used twice (also guardrails[%" PRIu32 "])",
                           t->guardrails[i].name, j);
                goto fail;
            }
        }
    }
fail:
    sy_buf_free(&g.path);
    return rc;
}

int sy__guardrail_check(const char *data, size_t len, struct sy_guardrail *out, char **err,
                        char **err_path)
{
    struct gdec g = {.path = SY_BUF_INIT, .strict = true, .err = err, .err_path = err_path};
    struct sy_guardrail gr = {0};
    msgpack_unpacked up;
    size_t off = 0;
    int rc;

    msgpack_unpacked_init(&up);
    if ((rc = sy__msgpack_prescan(data, len, "guardrail", err)) < 0)
        goto fail;
    if (msgpack_unpack_next(&up, data, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        rc = gfail(&g, -EINVAL, "invalid document");
        goto fail;
    }
    rc = decode_one(&g, &up.data, &gr);
    if (rc == 0 && out) {
        *out = gr;
        memset(&gr, 0, sizeof(gr));
    }
fail:
    sy__guardrail_free(&gr);
    sy_buf_free(&g.path);
    msgpack_unpacked_destroy(&up);
    return rc;
}

/* ---- encoding ---------------------------------------------------------------------------- */

static void pack_s(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_strings(msgpack_packer *pk, char *const *a, uint32_t n)
{
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++)
        pack_s(pk, a[i]);
}

static void pack_side(msgpack_packer *pk, const struct sy_guard_side *s)
{
    uint32_t nd = 0;
    for (int d = 0; d < SY_GUARD_KEYWORD; d++)
        nd += (s->detectors >> d) & 1u;
    msgpack_pack_map(pk, 4);
    pack_s(pk, "detectors");
    msgpack_pack_array(pk, nd);
    for (int d = 0; d < SY_GUARD_KEYWORD; d++)
        if (s->detectors & (1u << d))
            pack_s(pk, detector_names[d]);
    pack_s(pk, "keywords");
    pack_strings(pk, s->keywords, s->n_keywords);
    pack_s(pk, "regexes");
    pack_strings(pk, s->regexes, s->n_regexes);
    pack_s(pk, "actions"); /* every action spelled out: no default to agree on */
    msgpack_pack_map(pk, SY_GUARD_DETECTOR_MAX);
    for (int d = 0; d < SY_GUARD_DETECTOR_MAX; d++) {
        pack_s(pk, detector_names[d]);
        pack_s(pk, action_names[s->actions[d] < SY_GUARD_ACTION_MAX ? s->actions[d] : 0]);
    }
}

void sy__guardrails_pack(msgpack_packer *pk, const struct sy_table *t)
{
    msgpack_pack_array(pk, t->n_guardrails);
    for (uint32_t i = 0; i < t->n_guardrails; i++) {
        const struct sy_guardrail *gr = &t->guardrails[i];
        const struct sy_guard_limits *l = &gr->limits;
        msgpack_pack_map(pk, 6);
        pack_s(pk, "name");
        pack_s(pk, gr->name);
        pack_s(pk, "id");
        msgpack_pack_uint64(pk, gr->id);
        pack_s(pk, "applies_to");
        msgpack_pack_map(pk, 3);
        pack_s(pk, "all");
        if (gr->all)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        pack_s(pk, "models");
        pack_strings(pk, gr->models, gr->n_models);
        pack_s(pk, "keys");
        msgpack_pack_array(pk, gr->n_keys);
        for (uint32_t k = 0; k < gr->n_keys; k++)
            msgpack_pack_uint64(pk, gr->keys[k]);
        pack_s(pk, "input");
        pack_side(pk, &gr->input);
        pack_s(pk, "output");
        pack_side(pk, &gr->output);
        pack_s(pk, "limits");
        msgpack_pack_map(pk, 5);
        pack_s(pk, "max_input_chars");
        msgpack_pack_uint32(pk, l->max_input_chars);
        pack_s(pk, "max_input_tokens");
        msgpack_pack_uint32(pk, l->max_input_tokens);
        pack_s(pk, "max_tokens_cap");
        msgpack_pack_uint32(pk, l->max_tokens_cap);
        pack_s(pk, "max_tokens_mode");
        pack_s(
            pk,
            tokens_mode_names[l->max_tokens_mode < SY_GUARD_TOKENS_MAX ? l->max_tokens_mode : 0]);
        pack_s(pk, "max_output_chars");
        msgpack_pack_uint32(pk, l->max_output_chars);
    }
}
