/* SPDX-License-Identifier: Apache-2.0 */
/* Fault objects: the declarative table of fields (Redis config.c style), parsing one object
 * into struct mp_fault, and the config stored by POST /mock/config. Adding a fault is a row
 * here, a member in struct mp_fault and its behaviour in respond.c. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "sy/util.h"

struct mp_config mp_config;

enum field_type {
    F_BOOL = 0, /* bool */
    F_STATUS,   /* int, 100..999 */
    F_MS,       /* uint32_t milliseconds */
    F_COUNT,    /* int64_t >= 0 (unset: -1) */
    F_STR,      /* const char * + size_t length at len_off */
    F_SCALAR,   /* json_t *: string or integer */
    F_OBJECT,   /* json_t *: object */
    F_TOOL,     /* json_t *: true or object; false leaves NULL */
    F_MAX,
};

struct field {
    const char *name;
    enum field_type type;
    size_t off;
    size_t len_off;
};

/* clang-format off */
#define FIELD(n, t, m)     {n, t, offsetof(struct mp_fault, m), 0}
#define FIELD_STR(n, m, l) {n, F_STR, offsetof(struct mp_fault, m), offsetof(struct mp_fault, l)}
/* clang-format on */

static const struct field fields[] = {
    FIELD("status", F_STATUS, status),
    FIELD_STR("body", body, body_len),
    FIELD("retry_after", F_SCALAR, retry_after),
    FIELD("headers", F_OBJECT, headers),
    FIELD("delay_ms", F_MS, delay_ms),
    FIELD("drip_ms", F_MS, drip_ms),
    FIELD("chunk_delay_ms", F_MS, chunk_delay_ms),
    FIELD("chunks", F_COUNT, chunks),
    FIELD("abort_after", F_COUNT, abort_after),
    FIELD_STR("content", content, content_len),
    FIELD("tool_call", F_TOOL, tool_call),
    FIELD("usage", F_OBJECT, usage),
    FIELD("hang", F_BOOL, hang),
    FIELD("reset", F_BOOL, reset),
    FIELD("close", F_BOOL, close),
    FIELD("malformed", F_BOOL, malformed),
    FIELD("garbage", F_BOOL, garbage),
    FIELD("chunked", F_BOOL, chunked),
    FIELD("endless_headers", F_BOOL, endless_headers),
    FIELD("endless_stream", F_BOOL, endless_stream),
    FIELD("echo", F_BOOL, echo),
};

void mp_fault_clear(struct mp_fault *f)
{
    memset(f, 0, sizeof(*f));
    f->chunks = -1;
    f->abort_after = -1;
}

static int set_field(struct mp_fault *f, const struct field *fd, json_t *v)
{
    char *base = (char *)f;
    switch (fd->type) {
    case F_BOOL:
        if (!json_is_boolean(v))
            return -EINVAL;
        *(bool *)(base + fd->off) = json_is_true(v);
        return 0;
    case F_STATUS:
        if (!json_is_integer(v) || json_integer_value(v) < 100 || json_integer_value(v) > 999)
            return -EINVAL;
        *(int *)(base + fd->off) = (int)json_integer_value(v);
        return 0;
    case F_MS:
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > 24 * 3600 * 1000)
            return -EINVAL;
        *(uint32_t *)(base + fd->off) = (uint32_t)json_integer_value(v);
        return 0;
    case F_COUNT:
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return -EINVAL;
        *(int64_t *)(base + fd->off) = (int64_t)json_integer_value(v);
        return 0;
    case F_STR:
        if (!json_is_string(v))
            return -EINVAL;
        *(const char **)(base + fd->off) = json_string_value(v);
        *(size_t *)(base + fd->len_off) = json_string_length(v);
        return 0;
    case F_SCALAR:
        if (!json_is_string(v) && !json_is_integer(v))
            return -EINVAL;
        *(json_t **)(base + fd->off) = v;
        return 0;
    case F_OBJECT:
        if (!json_is_object(v))
            return -EINVAL;
        *(json_t **)(base + fd->off) = v;
        return 0;
    case F_TOOL:
        if (!json_is_boolean(v) && !json_is_object(v))
            return -EINVAL;
        *(json_t **)(base + fd->off) = json_is_false(v) ? NULL : v;
        return 0;
    case F_MAX:
        break;
    }
    return -EINVAL;
}

static const char *const type_words[F_MAX] = {
    "a boolean",
    "an integer status (100-999)",
    "an integer of milliseconds",
    "an integer >= 0",
    "a string",
    "a string or an integer",
    "an object",
    "true or an object",
};

int mp_fault_parse(struct mp_fault *f, const json_t *o, char *err, size_t errlen)
{
    mp_fault_clear(f);
    if (o == NULL)
        return 0;
    if (!json_is_object(o)) {
        snprintf(err, errlen, "a mock fault must be a JSON object");
        return -EINVAL;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v)
    {
        const struct field *fd = NULL;
        for (size_t i = 0; i < SY_ARRAY_LEN(fields); i++) {
            if (strcmp(fields[i].name, key) == 0) {
                fd = &fields[i];
                break;
            }
        }
        if (fd == NULL) {
            snprintf(err, errlen, "unknown mock fault field '%s'", key);
            return -EINVAL;
        }
        if (set_field(f, fd, v) < 0) {
            snprintf(err, errlen, "mock fault field '%s' must be %s", key, type_words[fd->type]);
            return -EINVAL;
        }
    }
    return 0;
}

/* ---- the config --------------------------------------------------------------------------- */

int mp_config_set(json_t *o, char *err, size_t errlen)
{
    struct mp_fault scratch;
    json_t *by_model = NULL;
    if (!json_is_object(o)) {
        snprintf(err, errlen, "the config must be a JSON object");
        goto fail;
    }
    by_model = json_object_get(o, "by_model");
    if (by_model) {
        if (!json_is_object(by_model)) {
            snprintf(err, errlen, "by_model must be an object of model id -> fault");
            by_model = NULL;
            goto fail;
        }
        json_incref(by_model);
        json_object_del(o, "by_model");
        const char *model;
        json_t *fo;
        json_object_foreach(by_model, model, fo)
        {
            if (mp_fault_parse(&scratch, fo, err, errlen) < 0)
                goto fail;
        }
    }
    if (mp_fault_parse(&scratch, o, err, errlen) < 0)
        goto fail;
    mp_config_clear();
    if (json_object_size(o) > 0)
        mp_config.dflt = o;
    else
        json_decref(o);
    if (by_model && json_object_size(by_model) > 0)
        mp_config.by_model = by_model;
    else
        json_decref(by_model);
    return 0;
fail:
    json_decref(by_model);
    json_decref(o);
    return -EINVAL;
}

void mp_config_clear(void)
{
    json_decref(mp_config.dflt);
    json_decref(mp_config.by_model);
    mp_config.dflt = NULL;
    mp_config.by_model = NULL;
}
