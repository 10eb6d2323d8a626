/* SPDX-License-Identifier: Apache-2.0 */
/* The routing table's msgpack codec, look-up and lifetime.
 *
 * Decoding goes in three steps. A pre-scan walks the bytes once and checks that every
 * container's declared size fits in what is left of the input and that nesting stays shallow,
 * so a hostile or truncated frame can neither make msgpack-c allocate gigabytes nor overflow its
 * stack. msgpack-c then builds an object tree that points into the caller's bytes. Finally the
 * tree is read into a struct sy_table through declarative field lists (Redis config.c style):
 * the same lists drive the encoder, so a field added to a list is decoded, encoded and round-
 * tripped at once. Keys no list names are skipped whatever their type: forward compatibility.
 *
 * Every message names the path of the value at fault, built as the walk descends. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sy/table.h"
#include "sy/util.h"
#include "internal.h"

/* Deeper nesting than this is refused before msgpack-c sees it (its own limit is 32). A table
 * needs 4 levels; the rest is room for fields added later. */
#define MAX_DEPTH SY__MSGPACK_MAX_DEPTH

static const char *const format_names[SY_FORMAT_MAX] = {
    [SY_FORMAT_OPENAI] = "openai",
    [SY_FORMAT_ANTHROPIC] = "anthropic",
    [SY_FORMAT_AZURE] = "azure",
};

static const char *const auth_names[SY_AUTH_MAX] = {
    [SY_AUTH_BEARER] = "bearer",
    [SY_AUTH_HEADER] = "header",
    [SY_AUTH_QUERY] = "query",
    [SY_AUTH_NONE] = "none",
};

/* Header names the data plane writes itself: letting a table set them would break framing. */
static const char *const reserved_headers[] = {
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
};

int sy__proto_fail(char **err, int rc, const char *fmt, ...)
{
    if (err) {
        struct sy_buf b = SY_BUF_INIT;
        va_list ap;
        va_start(ap, fmt);
        sy_buf_vprintf(&b, fmt, ap);
        va_end(ap);
        *err = sy_buf_steal(&b, NULL);
    }
    return rc;
}

bool sy__is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* ---- pre-scan ------------------------------------------------------------------------- */

/* For the type bytes 0xc0..0xdf: the payload size of a fixed-size item, or minus the number of
 * big-endian length bytes that follow the type byte; NEVER for 0xc1, which no item starts with. */
#define NEVER 127
static const int8_t type_sizes[] = {
    0,  NEVER, 0,  0,     /* nil, (never used), false, true */
    -1, -2,    -4,        /* bin 8/16/32 */
    -1, -2,    -4,        /* ext 8/16/32, whose payload is a type byte and the data */
    4,  8,                /* float 32/64 */
    1,  2,     4,  8,     /* uint 8..64 */
    1,  2,     4,  8,     /* int 8..64 */
    2,  3,     5,  9, 17, /* fixext 1..16, type byte included */
    -1, -2,    -4,        /* str 8/16/32 */
    -2, -4,               /* array 16/32 */
    -2, -4,               /* map 16/32 */
};
static_assert(SY_ARRAY_LEN(type_sizes) == 0xe0 - 0xc0, "one entry per type byte");

/* Length of the header of the item at <p> (type byte plus length bytes), and how many payload
 * bytes and child items follow it; -1 for a byte that starts no item. A header cut short is
 * given a length past <avail>, for the caller to report. */
static int item_header(const unsigned char *p, size_t avail, size_t *hdr, uint64_t *payload,
                       uint64_t *children)
{
    unsigned char c = p[0];

    *hdr = 1;
    *payload = 0;
    *children = 0;
    if (c <= 0x7f || c >= 0xe0) /* fixint */
        return 0;
    if (c <= 0x8f) {
        *children = 2u * (c & 0x0f);
        return 0;
    }
    if (c <= 0x9f) {
        *children = c & 0x0f;
        return 0;
    }
    if (c <= 0xbf) {
        *payload = c & 0x1f;
        return 0;
    }

    int size = type_sizes[c - 0xc0];
    if (size == NEVER)
        return -1;
    if (size >= 0) {
        *payload = (uint64_t)size;
        return 0;
    }
    size_t extra = (size_t)-size;
    if (avail < 1 + extra) {
        *hdr = avail + 1;
        return 0;
    }
    uint64_t n = 0;
    for (size_t i = 0; i < extra; i++)
        n = (n << 8) | p[1 + i];
    *hdr = 1 + extra;
    if (c == 0xdc || c == 0xdd)
        *children = n;
    else if (c == 0xde || c == 0xdf)
        *children = 2 * n;
    else if (c >= 0xc7 && c <= 0xc9)
        *payload = n + 1;
    else
        *payload = n;
    return 0;
}

int sy__msgpack_prescan(const char *data, size_t len, const char *what, char **err)
{
    const unsigned char *p = (const unsigned char *)data, *end = p + len;
    uint64_t left[MAX_DEPTH + 1]; /* items still to read at each open level */
    uint64_t pending = 1;         /* sum of left[]: each needs at least one byte */
    int depth = 0;

    left[0] = 1;
    while (depth >= 0) {
        size_t hdr;
        uint64_t payload, children;

        if (p == end)
            return sy__proto_fail(err, -EINVAL, "truncated msgpack (ends inside the %s)", what);
        if (item_header(p, (size_t)(end - p), &hdr, &payload, &children) < 0)
            return sy__proto_fail(err, -EINVAL, "invalid msgpack byte 0x%02x at offset %zu", *p,
                                  (size_t)(p - (const unsigned char *)data));
        if (hdr > (size_t)(end - p) || payload > (uint64_t)(end - p) - hdr)
            return sy__proto_fail(err, -EINVAL, "truncated msgpack (ends inside the %s)", what);
        p += hdr + payload;
        left[depth]--;
        pending--;
        if (children > 0) {
            if (depth == MAX_DEPTH)
                return sy__proto_fail(err, -EINVAL, "msgpack nested more than %d levels deep",
                                      MAX_DEPTH);
            pending += children;
            if (pending > (uint64_t)(end - p))
                return sy__proto_fail(err, -EINVAL, "truncated msgpack (ends inside the %s)", what);
            left[++depth] = children;
        }
        while (depth >= 0 && left[depth] == 0)
            depth--;
    }
    if (p != end)
        return sy__proto_fail(err, -EINVAL, "%zu unexpected bytes after the %s", (size_t)(end - p),
                              what);
    return 0;
}

/* ---- decoding context ------------------------------------------------------------------ */

struct dec {
    struct sy_buf path; /* where the walk is, e.g. "deployments[2].timeouts" */
    char **err;
    char **err_path; /* when not NULL, set to a copy of the path at fault */
    bool strict;     /* refuse keys no field list names (an operator's input), not skip them */
};

static int fail(struct dec *d, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(struct dec *d, int rc, const char *fmt, ...)
{
    if (d->err) {
        struct sy_buf b = SY_BUF_INIT;
        va_list ap;
        if (d->path.len)
            sy_buf_printf(&b, "%s: ", d->path.data);
        va_start(ap, fmt);
        sy_buf_vprintf(&b, fmt, ap);
        va_end(ap);
        *d->err = sy_buf_steal(&b, NULL);
    }
    if (d->err_path && *d->err_path == NULL)
        *d->err_path = sy_xstrdup(d->path.len ? d->path.data : "");
    return rc;
}

static int oom(struct dec *d)
{
    return sy__proto_fail(d->err, -ENOMEM, "out of memory");
}

/* Descend into field <key>; returns the mark to give back to path_pop(). */
static size_t path_key(struct dec *d, const char *key)
{
    size_t mark = d->path.len;
    if (mark)
        sy_buf_puts(&d->path, ".");
    sy_buf_puts(&d->path, key);
    return mark;
}

static size_t path_index(struct dec *d, uint32_t i)
{
    size_t mark = d->path.len;
    sy_buf_printf(&d->path, "[%" PRIu32 "]", i);
    return mark;
}

static void path_pop(struct dec *d, size_t mark)
{
    d->path.len = mark;
    d->path.data[mark] = '\0';
}

static const char *type_name(const msgpack_object *v)
{
    switch (v->type) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "string";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    case MSGPACK_OBJECT_BIN:
        return "binary";
    case MSGPACK_OBJECT_EXT:
        return "extension";
    }
    return "unknown";
}

static bool key_is(const msgpack_object *k, const char *lit)
{
    size_t n = strlen(lit);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, lit, n) == 0;
}

/* Set *<out> to the value of <key> in <map>, NULL when absent or nil. A key given twice is
 * an error: which one was meant cannot be known. */
static int map_get(struct dec *d, const msgpack_object *map, const char *key,
                   const msgpack_object **out)
{
    const msgpack_object *found = NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        if (!key_is(&map->via.map.ptr[i].key, key))
            continue;
        if (found) {
            size_t mark = path_key(d, key);
            int rc = fail(d, -EINVAL, "given twice");
            path_pop(d, mark);
            return rc;
        }
        found = &map->via.map.ptr[i].val;
    }
    *out = found && found->type != MSGPACK_OBJECT_NIL ? found : NULL;
    return 0;
}

/* ---- scalar readers -------------------------------------------------------------------- */

/* Copy a string value; NUL and other control characters are refused everywhere in a table,
 * which rules out header injection through any field (CR/LF). */
static int get_str(struct dec *d, const msgpack_object *v, char **out)
{
    if (v->type != MSGPACK_OBJECT_STR)
        return fail(d, -EINVAL, "expected a string, got %s", type_name(v));
    for (uint32_t i = 0; i < v->via.str.size; i++) {
        unsigned char c = (unsigned char)v->via.str.ptr[i];
        if (c < 0x20 || c == 0x7f)
            return fail(d, -EINVAL, "contains a control character (0x%02x) at byte %" PRIu32, c, i);
    }
    char *s = strndup(v->via.str.ptr, v->via.str.size);
    if (s == NULL)
        return oom(d);
    free(*out);
    *out = s;
    return 0;
}

static int get_u64(struct dec *d, const msgpack_object *v, uint64_t max, uint64_t *out)
{
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return fail(d, -EINVAL, "must not be negative");
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fail(d, -EINVAL, "expected an unsigned integer, got %s", type_name(v));
    if (v->via.u64 > max)
        return fail(d, -EINVAL, "must be at most %" PRIu64, max);
    *out = v->via.u64;
    return 0;
}

static int get_u32(struct dec *d, const msgpack_object *v, uint32_t *out)
{
    uint64_t x = 0;
    int rc = get_u64(d, v, UINT32_MAX, &x);
    if (rc == 0)
        *out = (uint32_t)x;
    return rc;
}

static int get_i64(struct dec *d, const msgpack_object *v, int64_t *out)
{
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = v->via.i64;
        return 0;
    }
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fail(d, -EINVAL, "expected an integer, got %s", type_name(v));
    if (v->via.u64 > INT64_MAX)
        return fail(d, -EINVAL, "must be at most %" PRId64, INT64_MAX);
    *out = (int64_t)v->via.u64;
    return 0;
}

/* A number of currency units: an integer or a float, finite and not negative. */
static int get_price(struct dec *d, const msgpack_object *v, double *out)
{
    double x;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        x = (double)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return fail(d, -EINVAL, "must not be negative");
    else if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
        x = v->via.f64;
    else
        return fail(d, -EINVAL, "expected a number, got %s", type_name(v));
    if (!isfinite(x))
        return fail(d, -EINVAL, "must be a finite number");
    if (x < 0)
        return fail(d, -EINVAL, "must not be negative");
    *out = x;
    return 0;
}

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* A SHA-256 written as 64 lowercase hex digits: one spelling only, so that two entries for
 * one key cannot hide from the duplicate check. */
static int get_hash(struct dec *d, const msgpack_object *v, uint8_t *out)
{
    if (v->type != MSGPACK_OBJECT_STR)
        return fail(d, -EINVAL, "expected a string, got %s", type_name(v));
    if (v->via.str.size != 2 * SY_KEY_HASH_LEN)
        return fail(d, -EINVAL,
                    "must be %d lowercase hex digits (the SHA-256 of the key), got %" PRIu32
                    " characters",
                    2 * SY_KEY_HASH_LEN, v->via.str.size);
    for (uint32_t i = 0; i < v->via.str.size; i++) {
        unsigned char c = (unsigned char)v->via.str.ptr[i];
        if (hex_digit(c) < 0) {
            if (c >= 0x20 && c < 0x7f)
                return fail(d, -EINVAL, "must be lowercase hex digits: '%c' at byte %" PRIu32, c,
                            i);
            return fail(d, -EINVAL, "must be lowercase hex digits: 0x%02x at byte %" PRIu32, c, i);
        }
    }
    for (uint32_t i = 0; i < SY_KEY_HASH_LEN; i++)
        out[i] = (uint8_t)(hex_digit((unsigned char)v->via.str.ptr[2 * i]) << 4 |
                           hex_digit((unsigned char)v->via.str.ptr[2 * i + 1]));
    return 0;
}

static int get_enum(struct dec *d, const msgpack_object *v, const char *const *names, int n,
                    int *out)
{
    if (v->type != MSGPACK_OBJECT_STR)
        return fail(d, -EINVAL, "expected a string, got %s", type_name(v));
    for (int i = 0; i < n; i++) {
        if (key_is(v, names[i])) {
            *out = i;
            return 0;
        }
    }
    struct sy_buf b = SY_BUF_INIT;
    for (int i = 0; i < n; i++)
        sy_buf_printf(&b, "%s\"%s\"", i == 0 ? "" : i == n - 1 ? " or " : ", ", names[i]);
    sy_buf_puts(&b, ", got ");
    sy_buf_json_str(&b, v->via.str.ptr, v->via.str.size);
    int rc = fail(d, -EINVAL, "must be %s", b.data);
    sy_buf_free(&b);
    return rc;
}

/* ---- field lists ----------------------------------------------------------------------- */

enum field_kind {
    FIELD_STR = 0, /* char *, NULL when absent */
    FIELD_U32,
    FIELD_U64,
    FIELD_I64,
    FIELD_BOOL,
    FIELD_FORMAT,      /* enum sy_format */
    FIELD_AUTH,        /* enum sy_auth_style */
    FIELD_HEADERS,     /* struct sy_deployment's headers/n_headers */
    FIELD_TIMEOUTS,    /* struct sy_timeouts, a nested map */
    FIELD_TARGETS,     /* struct sy_model's targets, resolved against the deployments */
    FIELD_PRICE_VALUE, /* double: currency units per million tokens */
    FIELD_LIMITS,      /* struct sy_limits, a nested map */
    FIELD_PRICE,       /* struct sy_price, a nested map */
    FIELD_HASH,        /* struct sy_key's hash: 64 lowercase hex digits */
    FIELD_MODEL_LIST,  /* struct sy_key's models/n_models: array of strings, NULL when absent */
    FIELD_KEY_LIMITS,  /* struct sy_key's model_limits: map model name -> {rpm, tpm} */
    FIELD_POLICY,      /* struct sy_model's policy, a nested map read in a second pass */
    FIELD_FALLBACKS,   /* struct sy_model's policy.fallbacks: model names, second pass too */
    FIELD_BALANCE,     /* enum sy_balance */
    FIELD_OLD_BALANCE, /* enum sy_balance under an older key: decoded, never encoded */
    FIELD_RETRY,       /* struct sy_retry_policy, a nested map */
    FIELD_CIRCUIT,     /* struct sy_circuit_policy, a nested map */
    FIELD_TRIGGERS,    /* uint32_t SY_TRIGGER_* bits, an array of trigger names */
    FIELD_STATUSES,    /* struct sy_policy's statuses/n_statuses: HTTP statuses 400..599 */
    FIELD_RULES,       /* struct sy_policy's rules/n_rules */
    FIELD_BUDGET_LIST, /* struct sy_key's budgets/n_budgets: budget names, resolved */
    FIELD_PERIOD,      /* enum sy_budget_period */
    FIELD_MAX,
};

/* A field of a map. A FIELD_U32 with <max> > 0 must lie in [<min>, <max>]. */
struct field {
    const char *key;
    enum field_kind kind;
    size_t off;
    uint32_t min, max;
};

#define DEP_FIELD(key, kind, member)                                                               \
    {                                                                                              \
        key, kind, offsetof(struct sy_deployment, member), 0, 0                                    \
    }
static const struct field deployment_fields[] = {
    DEP_FIELD("name", FIELD_STR, name),
    DEP_FIELD("provider", FIELD_STR, provider),
    DEP_FIELD("model", FIELD_STR, model),
    DEP_FIELD("format", FIELD_FORMAT, format),
    DEP_FIELD("base_url", FIELD_STR, base_url),
    DEP_FIELD("auth", FIELD_AUTH, auth_style),
    DEP_FIELD("auth_name", FIELD_STR, auth_name),
    DEP_FIELD("api_key", FIELD_STR, api_key),
    DEP_FIELD("api_version", FIELD_STR, api_version),
    DEP_FIELD("headers", FIELD_HEADERS, headers),
    DEP_FIELD("ca_file", FIELD_STR, origin.ca_file),
    DEP_FIELD("insecure", FIELD_BOOL, origin.insecure),
    DEP_FIELD("timeouts", FIELD_TIMEOUTS, timeouts),
    DEP_FIELD("limits", FIELD_LIMITS, limits),
    DEP_FIELD("price", FIELD_PRICE, price),
    DEP_FIELD("weight", FIELD_U32, weight),
    DEP_FIELD("slot", FIELD_U32, slot),
    DEP_FIELD("enabled", FIELD_BOOL, enabled),
};

#define TIMEOUT_FIELD(key)                                                                         \
    {                                                                                              \
#key, FIELD_U32, offsetof(struct sy_timeouts, key), 0, 0                                   \
    }
static const struct field timeout_fields[] = {
    TIMEOUT_FIELD(connect_ms),
    TIMEOUT_FIELD(first_byte_ms),
    TIMEOUT_FIELD(idle_ms),
    TIMEOUT_FIELD(total_ms),
};

static const struct field limit_fields[] = {
    {"rpm", FIELD_U32, offsetof(struct sy_limits, rpm), 0, 0},
    {"tpm", FIELD_U32, offsetof(struct sy_limits, tpm), 0, 0},
    {"max_concurrency", FIELD_U32, offsetof(struct sy_limits, max_concurrency), 0, 0},
};

static const struct field price_fields[] = {
    {"input", FIELD_PRICE_VALUE, offsetof(struct sy_price, input), 0, 0},
    {"output", FIELD_PRICE_VALUE, offsetof(struct sy_price, output), 0, 0},
};

#define KEY_FIELD(key, kind, member)                                                               \
    {                                                                                              \
        key, kind, offsetof(struct sy_key, member), 0, 0                                           \
    }
static const struct field key_fields[] = {
    KEY_FIELD("hash", FIELD_HASH, hash),
    KEY_FIELD("id", FIELD_U64, id),
    KEY_FIELD("name", FIELD_STR, name),
    KEY_FIELD("prefix", FIELD_STR, prefix),
    KEY_FIELD("agent", FIELD_STR, agent),
    KEY_FIELD("user", FIELD_STR, user),
    KEY_FIELD("tier", FIELD_STR, tier),
    KEY_FIELD("models", FIELD_MODEL_LIST, models),
    KEY_FIELD("expires_ms", FIELD_I64, expires_ms),
    KEY_FIELD("slot", FIELD_U32, slot),
    KEY_FIELD("rpm", FIELD_U32, rpm),
    KEY_FIELD("tpm", FIELD_U32, tpm),
    KEY_FIELD("model_limits", FIELD_KEY_LIMITS, model_limits),
    KEY_FIELD("budgets", FIELD_BUDGET_LIST, budgets),
};

static const struct field key_limit_fields[] = {
    {"rpm", FIELD_U32, offsetof(struct sy_key_limit, rpm), 0, 0},
    {"tpm", FIELD_U32, offsetof(struct sy_key_limit, tpm), 0, 0},
};

static const char *const period_names[SY_BUDGET_PERIOD_MAX] = {
    [SY_BUDGET_DAY] = "day",
    [SY_BUDGET_WEEK] = "week",
    [SY_BUDGET_MONTH] = "month",
};

#define BUDGET_FIELD(key, kind, member, min, max)                                                  \
    {                                                                                              \
        key, kind, offsetof(struct sy_budget, member), min, max                                    \
    }
static const struct field budget_fields[] = {
    BUDGET_FIELD("name", FIELD_STR, name, 0, 0),
    BUDGET_FIELD("id", FIELD_U64, id, 0, 0),
    BUDGET_FIELD("slot", FIELD_U32, slot, 0, 0),
    BUDGET_FIELD("amount_micros", FIELD_U64, amount_micros, 0, 0),
    BUDGET_FIELD("soft_percent", FIELD_U32, soft_percent, 1, 100),
    BUDGET_FIELD("period", FIELD_PERIOD, period, 0, 0),
};

static const struct field model_fields[] = {
    {"name", FIELD_STR, offsetof(struct sy_model, name), 0, 0},
    {"slot", FIELD_U32, offsetof(struct sy_model, slot), 0, 0},
    {"targets", FIELD_TARGETS, offsetof(struct sy_model, targets), 0, 0},
    {"fallbacks", FIELD_FALLBACKS, offsetof(struct sy_model, policy.fallbacks), 0, 0},
    {"policy", FIELD_POLICY, offsetof(struct sy_model, policy), 0, 0},
};

/* ---- the policy of a public model ---------------------------------------------------------
 * Every number has a range, so that a policy that decodes cannot stall the data plane (an
 * hour-long backoff) or defeat itself (a circuit that never judges). The defaults are in
 * sy_policy_init(); proto/README.md lists both. */

static const char *const balance_names[SY_BALANCE_MAX] = {
    [SY_BALANCE_WEIGHTED] = "weighted",
    [SY_BALANCE_ROUND_ROBIN] = "round_robin",
    [SY_BALANCE_LEAST_CONNECTIONS] = "least_connections",
    [SY_BALANCE_LATENCY] = "latency",
    [SY_BALANCE_COST] = "cost",
};

/* Indexed by bit: SY_TRIGGER_CONNECT is bit 0. */
static const char *const trigger_names[] = {
    "connect", "timeout", "429", "5xx", "context_length", "status", "malformed",
};
static_assert(1u << (SY_ARRAY_LEN(trigger_names) - 1) == SY_TRIGGER_MALFORMED,
              "one name per trigger bit");

#define POLICY_FIELD(key, kind, member, min, max)                                                  \
    {                                                                                              \
        key, kind, offsetof(struct sy_policy, member), min, max                                    \
    }
static const struct field policy_fields[] = {
    POLICY_FIELD("balance", FIELD_BALANCE, balance, 0, 0),
    POLICY_FIELD("strategy", FIELD_OLD_BALANCE, balance, 0, 0),
    POLICY_FIELD("retry", FIELD_RETRY, retry, 0, 0),
    POLICY_FIELD("circuit", FIELD_CIRCUIT, circuit, 0, 0),
    POLICY_FIELD("fallback_on", FIELD_TRIGGERS, fallback_triggers, 0, 0),
    POLICY_FIELD("statuses", FIELD_STATUSES, statuses, 0, 0),
    POLICY_FIELD("shed_percent", FIELD_U32, shed_percent, 1, 100),
    POLICY_FIELD("max_timeout_ms", FIELD_U32, max_timeout_ms, 0, 3600000),
    POLICY_FIELD("rules", FIELD_RULES, rules, 0, 0),
};

#define RETRY_FIELD(key, kind, min, max)                                                           \
    {                                                                                              \
#key, kind, offsetof(struct sy_retry_policy, key), min, max                                \
    }
static const struct field retry_fields[] = {
    RETRY_FIELD(attempts, FIELD_U32, 1, 10),
    RETRY_FIELD(backoff_ms, FIELD_U32, 0, 60000),
    RETRY_FIELD(max_backoff_ms, FIELD_U32, 0, 300000),
    RETRY_FIELD(retry_after_cap_ms, FIELD_U32, 0, 300000),
    RETRY_FIELD(budget_percent, FIELD_U32, 0, 100),
    {"on", FIELD_TRIGGERS, offsetof(struct sy_retry_policy, triggers), 0, 0},
};

#define CIRCUIT_FIELD(key, min, max)                                                               \
    {                                                                                              \
#key, FIELD_U32, offsetof(struct sy_circuit_policy, key), min, max                         \
    }
static const struct field circuit_fields[] = {
    CIRCUIT_FIELD(window_ms, 1000, 3600000),  CIRCUIT_FIELD(min_requests, 1, 1000000),
    CIRCUIT_FIELD(error_percent, 1, 100),     CIRCUIT_FIELD(consecutive, 0, 1000000),
    CIRCUIT_FIELD(cooldown_ms, 100, 3600000), CIRCUIT_FIELD(half_open_probes, 1, 1000),
};

/* Keys of a rule's `when`, indexed by enum sy_rule_op. */
static const char *const when_names[SY_RULE_MAX] = {
    [SY_RULE_TOKENS_BELOW] = "tokens_below",
    [SY_RULE_TOKENS_ABOVE] = "tokens_above",
    [SY_RULE_MESSAGES_BELOW] = "messages_below",
    [SY_RULE_MESSAGES_ABOVE] = "messages_above",
    [SY_RULE_HAS_TOOLS] = "has_tools",
    [SY_RULE_HAS_IMAGES] = "has_images",
    [SY_RULE_COMPLEXITY_BELOW] = "complexity_below",
    [SY_RULE_COMPLEXITY_ABOVE] = "complexity_above",
    [SY_RULE_HEADER] = "header",
    [SY_RULE_TIER] = "tier",
    [SY_RULE_AGENT] = "agent",
    [SY_RULE_USER] = "user",
};

#define MAX_RULES         64  /* rules of one model */
#define MAX_STATUSES      64  /* statuses of one model */
#define MAX_RULE_VALUES   256 /* values of one header/tier/agent/user condition */
#define MAX_RULE_TOKENS   100000000
#define MAX_RULE_MESSAGES 1000000
#define MAX_RULE_WEIGHT   1000000
#define MAX_RULE_TARGETS  64 /* deployments of one rule target */

void sy_policy_init(struct sy_policy *p)
{
    *p = (struct sy_policy){
        .balance = SY_BALANCE_WEIGHTED,
        .retry =
            {
                .attempts = 2,
                .backoff_ms = 100,
                .max_backoff_ms = 2000,
                .retry_after_cap_ms = 5000,
                .budget_percent = 20,
                .triggers = SY_TRIGGER_DEFAULT,
            },
        .circuit =
            {
                .window_ms = 30000,
                .min_requests = 20,
                .error_percent = 50,
                .consecutive = 5,
                .cooldown_ms = 30000,
                .half_open_probes = 1,
            },
        .fallback_triggers = SY_TRIGGER_DEFAULT,
        .shed_percent = 80,
        .max_timeout_ms = 0,
    };
}

static void policy_free(struct sy_policy *p)
{
    for (uint32_t i = 0; i < p->n_rules; i++) {
        struct sy_rule *r = &p->rules[i];
        for (uint32_t j = 0; j < r->n_conds; j++) {
            for (uint32_t k = 0; k < r->conds[j].n_values; k++)
                free(r->conds[j].values[k]);
            free(r->conds[j].values);
            free(r->conds[j].name);
        }
        free(r->conds);
        free(r->targets);
        free(r->name);
    }
    free(p->rules);
    free(p->fallbacks);
    free(p->statuses);
    memset(p, 0, sizeof(*p));
}

/* ---- decoding -------------------------------------------------------------------------- */

struct table_dec {
    struct dec d;
    struct sy_table *t;
    uint32_t *dep_by_name;   /* deployment indices sorted by name, for target resolution */
    uint32_t *model_by_name; /* model indices sorted by name, for fallbacks and rule targets */
    bool no_resolve;         /* only check policies: names of models and deployments are not
                              * looked up (the table is not known; t is NULL) */
    uint32_t *seen_model;    /* per deployment: 1 + the model that last listed it */
    uint32_t *seen_target;   /* per deployment: where in that model's targets */
};

static int decode_fields(struct table_dec *td, const msgpack_object *map,
                         const struct field *fields, size_t n_fields, void *base);

static int decode_headers(struct dec *d, const msgpack_object *v, struct sy_deployment *dep)
{
    if (v->type != MSGPACK_OBJECT_MAP)
        return fail(d, -EINVAL, "expected a map, got %s", type_name(v));
    if (v->via.map.size == 0)
        return 0;
    dep->headers = calloc(v->via.map.size, sizeof(*dep->headers));
    if (dep->headers == NULL)
        return oom(d);
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object *k = &v->via.map.ptr[i].key, *val = &v->via.map.ptr[i].val;
        struct sy_header_kv *h = &dep->headers[dep->n_headers];
        if (k->type != MSGPACK_OBJECT_STR)
            return fail(d, -EINVAL, "header names must be strings, got %s", type_name(k));
        size_t mark = d->path.len;
        sy_buf_puts(&d->path, "[");
        sy_buf_json_str(&d->path, k->via.str.ptr, k->via.str.size);
        sy_buf_puts(&d->path, "]");
        if (k->via.str.size == 0)
            return fail(d, -EINVAL, "empty header name");
        for (uint32_t j = 0; j < k->via.str.size; j++)
            if (!sy__is_tchar((unsigned char)k->via.str.ptr[j]))
                return fail(d, -EINVAL, "header name contains an illegal character (0x%02x)",
                            (unsigned char)k->via.str.ptr[j]);
        for (size_t j = 0; j < SY_ARRAY_LEN(reserved_headers); j++)
            if (sy_strcaseeq(k->via.str.ptr, k->via.str.size, reserved_headers[j]))
                return fail(d, -EINVAL, "header is set by the gateway and cannot be configured");
        if (val->type != MSGPACK_OBJECT_STR)
            return fail(d, -EINVAL, "expected a string, got %s", type_name(val));
        for (uint32_t j = 0; j < val->via.str.size; j++) {
            unsigned char c = (unsigned char)val->via.str.ptr[j];
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return fail(d, -EINVAL,
                            "header value contains a control character (0x%02x) at byte %" PRIu32,
                            c, j);
        }
        h->name = strndup(k->via.str.ptr, k->via.str.size);
        h->value = strndup(val->via.str.ptr, val->via.str.size);
        dep->n_headers++; /* counted now so that a failure below frees them */
        if (h->name == NULL || h->value == NULL)
            return oom(d);
        path_pop(d, mark);
    }
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A key's models: names of public models, which need not exist yet (a model may be added
 * after the key), but must be non-empty strings. Kept sorted for sy_key_allows_model(). */
static int decode_model_list(struct dec *d, const msgpack_object *v, struct sy_key *k)
{
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array, got %s", type_name(v));
    uint32_t n = v->via.array.size;
    k->models = calloc(n ? n : 1, sizeof(*k->models));
    if (k->models == NULL)
        return oom(d);
    for (uint32_t i = 0; i < n; i++) {
        size_t mark = path_index(d, i);
        int rc = get_str(d, &v->via.array.ptr[i], &k->models[i]);
        if (rc < 0)
            return rc;
        k->n_models++; /* counted now so that a failure below frees it */
        if (k->models[i][0] == '\0')
            return fail(d, -EINVAL, "must not be empty");
        path_pop(d, mark);
    }
    qsort(k->models, n, sizeof(*k->models), cmp_str_ptr);
    return 0;
}

static int cmp_counted(const char *key, size_t len, const char *name);
static int fail_named(struct dec *d, const char *what, const msgpack_object *str, const char *tail);

static int cmp_budget_name(const void *a, const void *b)
{
    return strcmp(((const struct sy_budget *)a)->name, ((const struct sy_budget *)b)->name);
}

/* A key's budgets: names of the table's budgets (decoded before the keys), each once. */
static int decode_budget_list(struct table_dec *td, const msgpack_object *v, struct sy_key *k)
{
    struct dec *d = &td->d;
    const struct sy_table *t = td->t;
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array, got %s", type_name(v));
    uint32_t n = v->via.array.size;
    k->budgets = calloc(n ? n : 1, sizeof(*k->budgets));
    if (k->budgets == NULL)
        return oom(d);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &v->via.array.ptr[i];
        size_t mark = path_index(d, i);
        if (e->type != MSGPACK_OBJECT_STR)
            return fail(d, -EINVAL, "expected a budget name, got %s", type_name(e));
        size_t lo = 0, hi = t->n_budgets;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            int c = cmp_counted(e->via.str.ptr, e->via.str.size, t->budgets[mid].name);
            if (c == 0) {
                lo = mid;
                break;
            }
            if (c < 0)
                hi = mid;
            else
                lo = mid + 1;
        }
        if (lo >= t->n_budgets ||
            cmp_counted(e->via.str.ptr, e->via.str.size, t->budgets[lo].name) != 0)
            return fail_named(d, "unknown budget", e, "");
        for (uint32_t j = 0; j < k->n_budgets; j++)
            if (k->budgets[j] == lo)
                return fail_named(d, "budget", e, " is listed twice");
        k->budgets[k->n_budgets++] = (uint32_t)lo;
        path_pop(d, mark);
    }
    return 0;
}

static int cmp_key_limit(const void *a, const void *b)
{
    return strcmp(((const struct sy_key_limit *)a)->model, ((const struct sy_key_limit *)b)->model);
}

/* A key's limits per public model: {"<model>": {"rpm": n, "tpm": n}, ...}. Like the key's
 * models, the names need not exist yet. Kept sorted for sy_key_model_limit(). */
static int decode_key_limits(struct table_dec *td, const msgpack_object *v, struct sy_key *k)
{
    struct dec *d = &td->d;
    if (v->type != MSGPACK_OBJECT_MAP)
        return fail(d, -EINVAL, "expected a map of model names to limits, got %s", type_name(v));
    uint32_t n = v->via.map.size;
    k->model_limits = calloc(n ? n : 1, sizeof(*k->model_limits));
    if (k->model_limits == NULL)
        return oom(d);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *name = &v->via.map.ptr[i].key;
        struct sy_key_limit *l = &k->model_limits[i];
        int rc = get_str(d, name, &l->model);
        if (rc < 0)
            return rc;
        k->n_model_limits++; /* counted now so that a failure below frees it */
        size_t mark = path_key(d, l->model);
        if (l->model[0] == '\0')
            return fail(d, -EINVAL, "a model name must not be empty");
        if ((rc = decode_fields(td, &v->via.map.ptr[i].val, key_limit_fields,
                                SY_ARRAY_LEN(key_limit_fields), l)) < 0)
            return rc;
        path_pop(d, mark);
    }
    qsort(k->model_limits, n, sizeof(*k->model_limits), cmp_key_limit);
    for (uint32_t i = 1; i < n; i++)
        if (strcmp(k->model_limits[i - 1].model, k->model_limits[i].model) == 0)
            return fail(d, -EINVAL, "model \"%s\" is given twice", k->model_limits[i].model);
    return 0;
}

static int resolve_deployment(struct table_dec *td, const char *name, size_t len, uint32_t *idx)
{
    size_t lo = 0, hi = td->t->n_deployments;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *s = td->t->deployments[td->dep_by_name[mid]].name;
        size_t sn = strlen(s);
        int c = memcmp(name, s, SY_MIN(len, sn));
        if (c == 0)
            c = len < sn ? -1 : len > sn;
        if (c == 0) {
            *idx = td->dep_by_name[mid];
            return 0;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -ENOENT;
}

static int decode_targets(struct table_dec *td, const msgpack_object *v, struct sy_model *m,
                          uint32_t model_idx)
{
    struct dec *d = &td->d;
    uint64_t sum = 0, enabled_sum = 0;

    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array, got %s", type_name(v));
    if (v->via.array.size == 0)
        return fail(d, -EINVAL, "must list at least one deployment");
    free(m->targets);
    m->n_targets = 0;
    m->targets = calloc(v->via.array.size, sizeof(*m->targets));
    if (m->targets == NULL)
        return oom(d);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *e = &v->via.array.ptr[i];
        size_t mark = path_index(d, i);
        struct sy_target *tg = &m->targets[i];
        const msgpack_object *dn, *w;
        uint32_t idx;
        int rc;

        if (e->type != MSGPACK_OBJECT_MAP)
            return fail(d, -EINVAL, "expected a map, got %s", type_name(e));
        if ((rc = map_get(d, e, "deployment", &dn)) < 0 || (rc = map_get(d, e, "weight", &w)) < 0)
            return rc;
        if (dn == NULL) {
            path_key(d, "deployment");
            return fail(d, -EINVAL, "missing");
        }
        if (dn->type != MSGPACK_OBJECT_STR) {
            path_key(d, "deployment");
            return fail(d, -EINVAL, "expected a string, got %s", type_name(dn));
        }
        if (resolve_deployment(td, dn->via.str.ptr, dn->via.str.size, &idx) < 0) {
            struct sy_buf b = SY_BUF_INIT;
            sy_buf_json_str(&b, dn->via.str.ptr, dn->via.str.size);
            rc = fail(d, -EINVAL, "unknown deployment %s", b.data);
            sy_buf_free(&b);
            return rc;
        }
        if (td->seen_model[idx] == model_idx + 1)
            return fail(d, -EINVAL, "deployment \"%s\" is already listed at targets[%" PRIu32 "]",
                        td->t->deployments[idx].name, td->seen_target[idx]);
        td->seen_model[idx] = model_idx + 1;
        td->seen_target[idx] = i;
        tg->deployment = idx;
        tg->weight = 1;
        if (w) {
            size_t m2 = path_key(d, "weight");
            if ((rc = get_u32(d, w, &tg->weight)) < 0)
                return rc;
            path_pop(d, m2);
        }
        sum += tg->weight;
        if (td->t->deployments[idx].enabled)
            enabled_sum += tg->weight;
        m->n_targets++;
        path_pop(d, mark);
    }
    if (sum == 0)
        return fail(d, -EINVAL, "weights sum to 0; give at least one target a positive weight");
    if (sum > UINT32_MAX)
        return fail(d, -EINVAL, "weights sum to more than %" PRIu32, UINT32_MAX);
    m->total_weight = (uint32_t)enabled_sum;
    return 0;
}

static int missing(struct dec *d, const char *key, const char *why);

/* ---- policies ---------------------------------------------------------------------------- */

static int get_u32_range(struct dec *d, const msgpack_object *v, uint32_t min, uint32_t max,
                         uint32_t *out)
{
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 < min || v->via.u64 > max)
        return fail(d, -EINVAL, "must be a whole number from %" PRIu32 " to %" PRIu32, min, max);
    *out = (uint32_t)v->via.u64;
    return 0;
}

/* Fail with "<what> <quoted str>" followed by <tail>. */
static int fail_named(struct dec *d, const char *what, const msgpack_object *str, const char *tail)
{
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_json_str(&b, str->via.str.ptr, str->via.str.size);
    int rc = fail(d, -EINVAL, "%s %s%s", what, b.data, tail);
    sy_buf_free(&b);
    return rc;
}

/* In strict mode, refuse a key of <map> that is not in <names> (<n> of them, NULL entries
 * skipped), naming it in the path as the admin API does: `policy.retry.tries: unknown field`. */
static int check_known(struct dec *d, const msgpack_object *map, const char *const *names, size_t n)
{
    if (!d->strict)
        return 0;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        bool ok = false;
        for (size_t j = 0; j < n && !ok; j++)
            ok = names[j] && key_is(k, names[j]);
        if (ok)
            continue;
        if (k->type != MSGPACK_OBJECT_STR)
            return fail(d, -EINVAL, "keys must be strings, got %s", type_name(k));
        if (d->path.len)
            sy_buf_puts(&d->path, ".");
        sy_buf_append(&d->path, k->via.str.ptr, k->via.str.size);
        return fail(d, -EINVAL, "unknown field");
    }
    return 0;
}

static int resolve_model(struct table_dec *td, const char *name, size_t len, uint32_t *idx)
{
    size_t lo = 0, hi = td->t->n_models;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *s = td->t->models[td->model_by_name[mid]].name;
        size_t sn = strlen(s);
        int c = memcmp(name, s, SY_MIN(len, sn));
        if (c == 0)
            c = len < sn ? -1 : len > sn;
        if (c == 0) {
            *idx = td->model_by_name[mid];
            return 0;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -ENOENT;
}

/* A public model's name at <v>: its index in *<idx> (0 when only checking). */
static int get_model_ref(struct table_dec *td, const msgpack_object *v, uint32_t *idx)
{
    struct dec *d = &td->d;
    if (v->type != MSGPACK_OBJECT_STR)
        return fail(d, -EINVAL, "expected a model name, got %s", type_name(v));
    if (v->via.str.size == 0)
        return fail(d, -EINVAL, "must not be empty");
    *idx = 0;
    if (!td->no_resolve && resolve_model(td, v->via.str.ptr, v->via.str.size, idx) < 0)
        return fail_named(d, "unknown model", v, "");
    return 0;
}

static int decode_triggers(struct dec *d, const msgpack_object *v, uint32_t *out)
{
    uint32_t bits = 0;
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array of trigger names, got %s", type_name(v));
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *e = &v->via.array.ptr[i];
        size_t mark = path_index(d, i);
        size_t bit = SY_ARRAY_LEN(trigger_names);
        if (e->type != MSGPACK_OBJECT_STR)
            return fail(d, -EINVAL, "expected a trigger name, got %s", type_name(e));
        for (size_t j = 0; j < SY_ARRAY_LEN(trigger_names) && bit == SY_ARRAY_LEN(trigger_names);
             j++)
            if (key_is(e, trigger_names[j]))
                bit = j;
        if (bit == SY_ARRAY_LEN(trigger_names)) {
            struct sy_buf b = SY_BUF_INIT;
            sy_buf_puts(&b, "; valid triggers are ");
            for (size_t j = 0; j < SY_ARRAY_LEN(trigger_names); j++)
                sy_buf_printf(&b, "%s\"%s\"", j ? ", " : "", trigger_names[j]);
            int rc = fail_named(d, "unknown trigger", e, b.data);
            sy_buf_free(&b);
            return rc;
        }
        if (bits & (1u << bit))
            return fail(d, -EINVAL, "\"%s\" is listed twice", trigger_names[bit]);
        bits |= 1u << bit;
        path_pop(d, mark);
    }
    *out = bits;
    return 0;
}

static int decode_statuses(struct dec *d, const msgpack_object *v, struct sy_policy *p)
{
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array of HTTP statuses, got %s", type_name(v));
    if (v->via.array.size > MAX_STATUSES)
        return fail(d, -EINVAL, "must list at most %d statuses", MAX_STATUSES);
    free(p->statuses);
    p->n_statuses = 0;
    p->statuses = calloc(v->via.array.size ? v->via.array.size : 1, sizeof(*p->statuses));
    if (p->statuses == NULL)
        return oom(d);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        size_t mark = path_index(d, i);
        uint32_t st = 0;
        int rc = get_u32_range(d, &v->via.array.ptr[i], 400, 599, &st);
        if (rc < 0)
            return rc;
        for (uint32_t j = 0; j < i; j++)
            if (p->statuses[j] == st)
                return fail(d, -EINVAL, "%" PRIu32 " is listed twice (also statuses[%" PRIu32 "])",
                            st, j);
        p->statuses[p->n_statuses++] = (uint16_t)st;
        path_pop(d, mark);
    }
    return 0;
}

/* A list of accepted values: one string or an array of 1..MAX_RULE_VALUES strings. */
static int decode_values(struct dec *d, const msgpack_object *v, struct sy_rule_cond *c)
{
    const msgpack_object *items = v;
    uint32_t n = 1;

    if (v->type == MSGPACK_OBJECT_ARRAY) {
        items = v->via.array.ptr;
        n = v->via.array.size;
        if (n == 0 || n > MAX_RULE_VALUES)
            return fail(d, -EINVAL, "must list 1 to %d values", MAX_RULE_VALUES);
    } else if (v->type != MSGPACK_OBJECT_STR) {
        return fail(d, -EINVAL, "expected a string or an array of strings, got %s", type_name(v));
    }
    c->values = calloc(n, sizeof(*c->values));
    if (c->values == NULL)
        return oom(d);
    for (uint32_t i = 0; i < n; i++) {
        size_t mark = v->type == MSGPACK_OBJECT_ARRAY ? path_index(d, i) : d->path.len;
        int rc = get_str(d, &items[i], &c->values[i]);
        if (rc < 0)
            return rc;
        c->n_values++; /* counted now so that a failure below frees it */
        if (c->values[i][0] == '\0')
            return fail(d, -EINVAL, "must not be empty");
        path_pop(d, mark);
    }
    return 0;
}

/* A complexity threshold: a number from 0 to 1, kept in thousandths. */
static int get_complexity(struct dec *d, const msgpack_object *v, int64_t *out)
{
    double x;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= 1)
        x = (double)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
        x = v->via.f64;
    else
        x = -1;
    if (!(x >= 0 && x <= 1))
        return fail(d, -EINVAL, "must be a number from 0 to 1");
    *out = (int64_t)(x * 1000 + 0.5); /* x >= 0: rounds to nearest, no libm needed */
    return 0;
}

static int decode_header_conds(struct dec *d, const msgpack_object *v, struct sy_rule *r)
{
    if (v->type != MSGPACK_OBJECT_MAP)
        return fail(d, -EINVAL, "expected a map of header names to values, got %s", type_name(v));
    if (v->via.map.size == 0)
        return fail(d, -EINVAL, "must name at least one header");
    uint32_t first = r->n_conds;
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object *k = &v->via.map.ptr[i].key;
        struct sy_rule_cond *c = &r->conds[r->n_conds];
        if (k->type != MSGPACK_OBJECT_STR)
            return fail(d, -EINVAL, "header names must be strings, got %s", type_name(k));
        size_t mark = d->path.len;
        sy_buf_puts(&d->path, "[");
        sy_buf_json_str(&d->path, k->via.str.ptr, k->via.str.size);
        sy_buf_puts(&d->path, "]");
        if (k->via.str.size == 0)
            return fail(d, -EINVAL, "empty header name");
        for (uint32_t j = 0; j < k->via.str.size; j++)
            if (!sy__is_tchar((unsigned char)k->via.str.ptr[j]))
                return fail(d, -EINVAL, "header name contains an illegal character (0x%02x)",
                            (unsigned char)k->via.str.ptr[j]);
        for (uint32_t j = first; j < r->n_conds; j++)
            if (sy_strcaseeq(k->via.str.ptr, k->via.str.size, r->conds[j].name))
                return fail(d, -EINVAL, "header is given twice (names are case-insensitive)");
        c->op = SY_RULE_HEADER;
        c->name = strndup(k->via.str.ptr, k->via.str.size);
        r->n_conds++; /* counted now so that a failure below frees it */
        if (c->name == NULL)
            return oom(d);
        for (char *s = c->name; *s; s++) /* header names are case-insensitive */
            if (*s >= 'A' && *s <= 'Z')
                *s = (char)(*s - 'A' + 'a');
        int rc = decode_values(d, &v->via.map.ptr[i].val, c);
        if (rc < 0)
            return rc;
        path_pop(d, mark);
    }
    return 0;
}

/* A rule's `when`: conditions kept in enum sy_rule_op order (header ones in the order given),
 * whatever the order of the keys, so that an encoded rule decodes to the same conditions. */
static int decode_when(struct table_dec *td, const msgpack_object *v, struct sy_rule *r)
{
    struct dec *d = &td->d;
    const msgpack_object *hdr;
    int rc;

    if (v->type != MSGPACK_OBJECT_MAP)
        return fail(d, -EINVAL, "expected a map of conditions, got %s", type_name(v));
    if ((rc = check_known(d, v, when_names, SY_RULE_MAX)) < 0)
        return rc;
    if ((rc = map_get(d, v, "header", &hdr)) < 0)
        return rc;
    uint32_t cap = SY_RULE_MAX;
    if (hdr && hdr->type == MSGPACK_OBJECT_MAP)
        cap += hdr->via.map.size;
    r->conds = calloc(cap, sizeof(*r->conds));
    if (r->conds == NULL)
        return oom(d);
    for (int op = 0; op < SY_RULE_MAX; op++) {
        const msgpack_object *x;
        if ((rc = map_get(d, v, when_names[op], &x)) < 0)
            return rc;
        if (x == NULL)
            continue;
        size_t mark = path_key(d, when_names[op]);
        if (op == SY_RULE_HEADER) {
            if ((rc = decode_header_conds(d, x, r)) < 0)
                return rc;
            path_pop(d, mark);
            continue;
        }
        struct sy_rule_cond *c = &r->conds[r->n_conds];
        uint32_t u = 0;
        c->op = (enum sy_rule_op)op;
        r->n_conds++;
        switch (op) {
        case SY_RULE_TOKENS_BELOW:
        case SY_RULE_TOKENS_ABOVE:
            rc = get_u32_range(d, x, 0, MAX_RULE_TOKENS, &u);
            c->value = u;
            break;
        case SY_RULE_MESSAGES_BELOW:
        case SY_RULE_MESSAGES_ABOVE:
            rc = get_u32_range(d, x, 0, MAX_RULE_MESSAGES, &u);
            c->value = u;
            break;
        case SY_RULE_HAS_TOOLS:
        case SY_RULE_HAS_IMAGES:
            if (x->type != MSGPACK_OBJECT_BOOLEAN)
                rc = fail(d, -EINVAL, "expected true or false, got %s", type_name(x));
            else
                c->value = x->via.boolean;
            break;
        case SY_RULE_COMPLEXITY_BELOW:
        case SY_RULE_COMPLEXITY_ABOVE:
            rc = get_complexity(d, x, &c->value);
            break;
        default: /* tier, agent, user */
            rc = decode_values(d, x, c);
            break;
        }
        if (rc < 0)
            return rc;
        path_pop(d, mark);
    }
    return 0;
}

static int decode_rule_target(struct table_dec *td, const msgpack_object *v, struct sy_rule *r)
{
    static const char *const keys[] = {"model", "deployments"};
    struct dec *d = &td->d;
    const msgpack_object *model, *deps;
    uint64_t sum = 0;
    int rc;

    if (v->type != MSGPACK_OBJECT_MAP)
        return fail(d, -EINVAL, "expected a map, got %s", type_name(v));
    if ((rc = check_known(d, v, keys, SY_ARRAY_LEN(keys))) < 0 ||
        (rc = map_get(d, v, "model", &model)) < 0 || (rc = map_get(d, v, "deployments", &deps)) < 0)
        return rc;
    if ((model == NULL) == (deps == NULL))
        return fail(d, -EINVAL,
                    "give either model (a public model) or deployments "
                    "([{\"deployment\", \"weight\"}]), not %s",
                    model ? "both" : "neither");
    if (model) {
        uint32_t idx;
        size_t mark = path_key(d, "model");
        if ((rc = get_model_ref(td, model, &idx)) < 0)
            return rc;
        r->model = (int32_t)idx;
        path_pop(d, mark);
        return 0;
    }

    size_t mark = path_key(d, "deployments");
    if (deps->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array, got %s", type_name(deps));
    if (deps->via.array.size == 0)
        return fail(d, -EINVAL, "must list at least one deployment");
    if (deps->via.array.size > MAX_RULE_TARGETS)
        return fail(d, -EINVAL, "must list at most %d deployments", MAX_RULE_TARGETS);
    r->targets = calloc(deps->via.array.size, sizeof(*r->targets));
    if (r->targets == NULL)
        return oom(d);
    for (uint32_t i = 0; i < deps->via.array.size; i++) {
        static const char *const tkeys[] = {"deployment", "weight"};
        const msgpack_object *e = &deps->via.array.ptr[i], *dn, *w;
        struct sy_target *tg = &r->targets[i];
        size_t m2 = path_index(d, i);
        if (e->type != MSGPACK_OBJECT_MAP)
            return fail(d, -EINVAL, "expected a map, got %s", type_name(e));
        if ((rc = check_known(d, e, tkeys, SY_ARRAY_LEN(tkeys))) < 0 ||
            (rc = map_get(d, e, "deployment", &dn)) < 0 || (rc = map_get(d, e, "weight", &w)) < 0)
            return rc;
        path_key(d, "deployment");
        if (dn == NULL)
            return fail(d, -EINVAL, "missing");
        if (dn->type != MSGPACK_OBJECT_STR)
            return fail(d, -EINVAL, "expected a string, got %s", type_name(dn));
        if (dn->via.str.size == 0)
            return fail(d, -EINVAL, "must not be empty");
        tg->deployment = i;
        if (!td->no_resolve &&
            resolve_deployment(td, dn->via.str.ptr, dn->via.str.size, &tg->deployment) < 0)
            return fail_named(d, "unknown deployment", dn, "");
        for (uint32_t j = 0; j < i; j++) { /* entries before this one are well-formed */
            const msgpack_object *pn = NULL;
            map_get(d, &deps->via.array.ptr[j], "deployment", &pn);
            if (pn->via.str.size == dn->via.str.size &&
                memcmp(pn->via.str.ptr, dn->via.str.ptr, dn->via.str.size) == 0)
                return fail_named(d, "deployment", dn, " is listed twice");
        }
        path_pop(d, m2);
        m2 = path_index(d, i);
        tg->weight = 1;
        if (w) {
            path_key(d, "weight");
            if ((rc = get_u32_range(d, w, 0, MAX_RULE_WEIGHT, &tg->weight)) < 0)
                return rc;
        }
        sum += tg->weight;
        r->n_targets++;
        path_pop(d, m2);
    }
    if (sum == 0)
        return fail(d, -EINVAL, "weights sum to 0; give at least one deployment a positive weight");
    path_pop(d, mark);
    return 0;
}

static int decode_rules(struct table_dec *td, const msgpack_object *v, struct sy_policy *p)
{
    static const char *const keys[] = {"name", "when", "target"};
    struct dec *d = &td->d;
    int rc;

    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array of rules, got %s", type_name(v));
    if (v->via.array.size > MAX_RULES)
        return fail(d, -EINVAL, "must list at most %d rules", MAX_RULES);
    p->rules = calloc(v->via.array.size ? v->via.array.size : 1, sizeof(*p->rules));
    if (p->rules == NULL)
        return oom(d);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *e = &v->via.array.ptr[i], *name, *when, *target;
        struct sy_rule *r = &p->rules[i];
        size_t mark = path_index(d, i);
        r->model = -1;
        p->n_rules++; /* counted now so that a failure below frees it */
        if (e->type != MSGPACK_OBJECT_MAP)
            return fail(d, -EINVAL, "expected a map {\"name\", \"when\", \"target\"}, got %s",
                        type_name(e));
        if ((rc = check_known(d, e, keys, SY_ARRAY_LEN(keys))) < 0 ||
            (rc = map_get(d, e, "name", &name)) < 0 || (rc = map_get(d, e, "when", &when)) < 0 ||
            (rc = map_get(d, e, "target", &target)) < 0)
            return rc;
        if (name) {
            size_t m2 = path_key(d, "name");
            if ((rc = get_str(d, name, &r->name)) < 0)
                return rc;
            if (r->name[0] == '\0')
                return fail(d, -EINVAL, "must not be empty");
            path_pop(d, m2);
        }
        if (when) {
            size_t m2 = path_key(d, "when");
            if ((rc = decode_when(td, when, r)) < 0)
                return rc;
            path_pop(d, m2);
        }
        if (target == NULL)
            return missing(d, "target", " (a {\"model\"} or {\"deployments\"} map)");
        size_t m2 = path_key(d, "target");
        if ((rc = decode_rule_target(td, target, r)) < 0)
            return rc;
        path_pop(d, m2);
        path_pop(d, mark);
    }
    return 0;
}

static int decode_fallbacks(struct table_dec *td, const msgpack_object *v, struct sy_policy *p)
{
    struct dec *d = &td->d;
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array of model names, got %s", type_name(v));
    free(p->fallbacks);
    p->n_fallbacks = 0;
    p->fallbacks = calloc(v->via.array.size ? v->via.array.size : 1, sizeof(*p->fallbacks));
    if (p->fallbacks == NULL)
        return oom(d);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *e = &v->via.array.ptr[i];
        size_t mark = path_index(d, i);
        int rc = get_model_ref(td, e, &p->fallbacks[i]);
        if (rc < 0)
            return rc;
        for (uint32_t j = 0; j < i; j++) {
            const msgpack_object *o = &v->via.array.ptr[j];
            if (o->via.str.size == e->via.str.size &&
                memcmp(o->via.str.ptr, e->via.str.ptr, e->via.str.size) == 0) {
                char tail[48];
                snprintf(tail, sizeof(tail), " is listed twice (also fallbacks[%" PRIu32 "])", j);
                return fail_named(d, "model", e, tail);
            }
        }
        p->n_fallbacks++;
        path_pop(d, mark);
    }
    return 0;
}

/* The checks across the fields of a policy, once they are all read. */
static int check_policy(struct dec *d, const msgpack_object *map, const struct sy_policy *p)
{
    const msgpack_object *a, *b;
    int rc;

    if ((rc = map_get(d, map, "balance", &a)) < 0 || (rc = map_get(d, map, "strategy", &b)) < 0)
        return rc;
    if (a && b) {
        size_t mark = path_key(d, "strategy");
        rc = fail(d, -EINVAL, "is the older name of balance: give one of the two");
        path_pop(d, mark);
        return rc;
    }
    if (p->retry.max_backoff_ms < p->retry.backoff_ms) {
        size_t mark = path_key(d, "retry.max_backoff_ms");
        rc = fail(d, -EINVAL, "must be at least backoff_ms (%" PRIu32 ")", p->retry.backoff_ms);
        path_pop(d, mark);
        return rc;
    }
    if (((p->retry.triggers | p->fallback_triggers) & SY_TRIGGER_STATUS) && p->n_statuses == 0) {
        size_t mark = path_key(d, "statuses");
        rc = fail(d, -EINVAL,
                  "required when retry.on or fallback_on lists \"status\": the HTTP statuses "
                  "(400 to 599) that trigger");
        path_pop(d, mark);
        return rc;
    }
    return 0;
}

static int decode_policy(struct table_dec *td, const msgpack_object *v, struct sy_policy *p)
{
    int rc = decode_fields(td, v, policy_fields, SY_ARRAY_LEN(policy_fields), p);
    return rc < 0 ? rc : check_policy(&td->d, v, p);
}

static int decode_field(struct table_dec *td, const struct field *f, const msgpack_object *v,
                        void *base)
{
    struct dec *d = &td->d;
    void *p = (char *)base + f->off;
    uint64_t u;
    int e = 0, rc;

    switch (f->kind) {
    case FIELD_STR:
        return get_str(d, v, p);
    case FIELD_U32:
        if (f->max > 0)
            return get_u32_range(d, v, f->min, f->max, p);
        return get_u32(d, v, p);
    case FIELD_U64:
        if ((rc = get_u64(d, v, UINT64_MAX, &u)) == 0)
            *(uint64_t *)p = u;
        return rc;
    case FIELD_I64:
        return get_i64(d, v, p);
    case FIELD_BOOL:
        if (v->type != MSGPACK_OBJECT_BOOLEAN)
            return fail(d, -EINVAL, "expected true or false, got %s", type_name(v));
        *(bool *)p = v->via.boolean;
        return 0;
    case FIELD_FORMAT:
        if ((rc = get_enum(d, v, format_names, SY_FORMAT_MAX, &e)) == 0)
            *(enum sy_format *)p = (enum sy_format)e;
        return rc;
    case FIELD_AUTH:
        if ((rc = get_enum(d, v, auth_names, SY_AUTH_MAX, &e)) == 0)
            *(enum sy_auth_style *)p = (enum sy_auth_style)e;
        return rc;
    case FIELD_HEADERS:
        return decode_headers(d, v, SY_CONTAINER_OF(p, struct sy_deployment, headers));
    case FIELD_TIMEOUTS:
        return decode_fields(td, v, timeout_fields, SY_ARRAY_LEN(timeout_fields), p);
    case FIELD_TARGETS: {
        struct sy_model *m = SY_CONTAINER_OF(p, struct sy_model, targets);
        return decode_targets(td, v, m, (uint32_t)(m - td->t->models));
    }
    case FIELD_PRICE_VALUE:
        return get_price(d, v, p);
    case FIELD_LIMITS:
        return decode_fields(td, v, limit_fields, SY_ARRAY_LEN(limit_fields), p);
    case FIELD_PRICE:
        return decode_fields(td, v, price_fields, SY_ARRAY_LEN(price_fields), p);
    case FIELD_HASH:
        return get_hash(d, v, p);
    case FIELD_MODEL_LIST:
        return decode_model_list(d, v, SY_CONTAINER_OF(p, struct sy_key, models));
    case FIELD_KEY_LIMITS:
        return decode_key_limits(td, v, SY_CONTAINER_OF(p, struct sy_key, model_limits));
    case FIELD_POLICY:
    case FIELD_FALLBACKS:
        return 0; /* read by decode_models() once every model's name is known */
    case FIELD_BALANCE:
    case FIELD_OLD_BALANCE:
        if ((rc = get_enum(d, v, balance_names, SY_BALANCE_MAX, &e)) == 0)
            *(enum sy_balance *)p = (enum sy_balance)e;
        return rc;
    case FIELD_RETRY:
        return decode_fields(td, v, retry_fields, SY_ARRAY_LEN(retry_fields), p);
    case FIELD_CIRCUIT:
        return decode_fields(td, v, circuit_fields, SY_ARRAY_LEN(circuit_fields), p);
    case FIELD_TRIGGERS:
        return decode_triggers(d, v, p);
    case FIELD_STATUSES:
        return decode_statuses(d, v, SY_CONTAINER_OF(p, struct sy_policy, statuses));
    case FIELD_RULES:
        return decode_rules(td, v, SY_CONTAINER_OF(p, struct sy_policy, rules));
    case FIELD_BUDGET_LIST:
        return decode_budget_list(td, v, SY_CONTAINER_OF(p, struct sy_key, budgets));
    case FIELD_PERIOD:
        if ((rc = get_enum(d, v, period_names, SY_BUDGET_PERIOD_MAX, &e)) == 0)
            *(enum sy_budget_period *)p = (enum sy_budget_period)e;
        return rc;
    case FIELD_MAX:
        break;
    }
    SY_REQUIRE(0);
    return -EINVAL;
}

/* Read the keys of <map> named in <fields> into <base>; nil values are skipped, and so are
 * other keys unless the walk is strict. */
static int decode_fields(struct table_dec *td, const msgpack_object *map,
                         const struct field *fields, size_t n_fields, void *base)
{
    struct dec *d = &td->d;

    uint64_t seen = 0;

    static_assert(SY_ARRAY_LEN(deployment_fields) <= 64, "seen is a 64-bit mask");
    if (map->type != MSGPACK_OBJECT_MAP)
        return fail(d, -EINVAL, "expected a map, got %s", type_name(map));
    if (d->strict) {
        const char *names[64];
        SY_REQUIRE(n_fields <= SY_ARRAY_LEN(names));
        for (size_t j = 0; j < n_fields; j++)
            names[j] = fields[j].key;
        int rc = check_known(d, map, names, n_fields);
        if (rc < 0)
            return rc;
    }
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        for (size_t j = 0; j < n_fields; j++) {
            if (!key_is(&kv->key, fields[j].key))
                continue;
            size_t mark = path_key(d, fields[j].key);
            if (seen & (UINT64_C(1) << j)) /* which one was meant cannot be known */
                return fail(d, -EINVAL, "given twice");
            seen |= UINT64_C(1) << j;
            if (kv->val.type == MSGPACK_OBJECT_NIL) { /* same as absent */
                path_pop(d, mark);
                break;
            }
            int rc = decode_field(td, &fields[j], &kv->val, base);
            if (rc < 0)
                return rc;
            path_pop(d, mark);
            break;
        }
    }
    return 0;
}

/* A string field that must be given and not empty. */
static int check_given(struct dec *d, const char *key, const char *value)
{
    if (value == NULL || *value == '\0') {
        size_t mark = path_key(d, key);
        int rc = fail(d, -EINVAL, value ? "must not be empty" : "missing");
        path_pop(d, mark);
        return rc;
    }
    return 0;
}

static int missing(struct dec *d, const char *key, const char *why)
{
    size_t mark = path_key(d, key);
    int rc = fail(d, -EINVAL, "missing%s", why);
    path_pop(d, mark);
    return rc;
}

static int check_deployment(struct dec *d, struct sy_deployment *dep)
{
    int rc;

    if ((rc = check_given(d, "name", dep->name)) < 0 ||
        (rc = check_given(d, "model", dep->model)) < 0 ||
        (rc = check_given(d, "base_url", dep->base_url)) < 0)
        return rc;
    if (dep->origin.ca_file && *dep->origin.ca_file == '\0')
        return check_given(d, "ca_file", dep->origin.ca_file);
    if (dep->provider == NULL && (dep->provider = strdup("")) == NULL)
        return oom(d);
    char *oerr = NULL;
    if ((rc = sy_origin_parse(dep->base_url, &dep->origin, &oerr)) < 0) {
        size_t mark = path_key(d, "base_url");
        rc = fail(d, rc, "%s", oerr);
        path_pop(d, mark);
        free(oerr);
        return rc;
    }

    if (dep->auth_style == SY_AUTH_MAX) { /* not given: what the format's provider expects */
        static const char *const name_by_format[SY_FORMAT_MAX] = {
            [SY_FORMAT_ANTHROPIC] = "x-api-key",
            [SY_FORMAT_AZURE] = "api-key",
        };
        const char *n = name_by_format[dep->format];
        dep->auth_style = n ? SY_AUTH_HEADER : SY_AUTH_BEARER;
        if (n && dep->auth_name == NULL && (dep->auth_name = strdup(n)) == NULL)
            return oom(d);
    }
    if (dep->auth_style == SY_AUTH_HEADER || dep->auth_style == SY_AUTH_QUERY) {
        const char *style = auth_names[dep->auth_style];
        if (dep->auth_name == NULL || *dep->auth_name == '\0') {
            size_t mark = path_key(d, "auth_name");
            rc = fail(d, -EINVAL, "required when auth is \"%s\"", style);
            path_pop(d, mark);
            return rc;
        }
        for (const char *c = dep->auth_name; *c; c++) {
            bool ok = dep->auth_style == SY_AUTH_HEADER
                          ? sy__is_tchar((unsigned char)*c)
                          : (sy__is_tchar((unsigned char)*c) && !strchr("!$&'*+|^`#%", *c));
            if (!ok) {
                size_t mark = path_key(d, "auth_name");
                rc = fail(d, -EINVAL, "illegal character '%c' in a %s name", *c,
                          dep->auth_style == SY_AUTH_HEADER ? "header" : "query parameter");
                path_pop(d, mark);
                return rc;
            }
        }
    }
    if (dep->enabled && dep->auth_style != SY_AUTH_NONE && dep->api_key == NULL) {
        char why[96];
        snprintf(why, sizeof(why), " (auth is \"%s\"; use auth \"none\" for a keyless provider)",
                 auth_names[dep->auth_style]);
        return missing(d, "api_key", why);
    }
    return 0;
}

/* qsort_r context: the names, indexed like the array of indices being sorted. */
struct name_sort {
    const char *const *names;
};

static int cmp_by_name(const void *a, const void *b, void *ctx)
{
    const struct name_sort *ns = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = strcmp(ns->names[x], ns->names[y]);
    return c ? c : (x > y) - (x < y);
}

/* Sort indices 0..<n>-1 by <names>, then report the first name used twice under <what>. */
static int sort_unique(struct dec *d, const char *const *names, uint32_t n, const char *what,
                       uint32_t **out)
{
    uint32_t *idx = malloc(sizeof(*idx) * (n ? n : 1));
    struct name_sort ns = {names};
    if (idx == NULL)
        return oom(d);
    for (uint32_t i = 0; i < n; i++)
        idx[i] = i;
    qsort_r(idx, n, sizeof(*idx), cmp_by_name, &ns);
    for (uint32_t i = 1; i < n; i++) {
        if (strcmp(names[idx[i - 1]], names[idx[i]]) == 0) {
            struct sy_buf b = SY_BUF_INIT;
            sy_buf_json_str(&b, names[idx[i]], strlen(names[idx[i]]));
            int rc = sy__proto_fail(d->err, -EINVAL,
                                    "%s[%" PRIu32 "].name: duplicate %s (also %s[%" PRIu32 "])",
                                    what, idx[i], b.data, what, idx[i - 1]);
            sy_buf_free(&b);
            free(idx);
            return rc;
        }
    }
    *out = idx;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Report the first slot used twice under <what>: slots index shared-memory counters, and two
 * objects on one slot would count into each other. Element i's slot is the uint32_t at
 * <base> + i * <stride> + <off>. */
static int check_slots(struct dec *d, const void *base, size_t stride, size_t off, uint32_t n,
                       const char *what)
{
    uint64_t *s = malloc(sizeof(*s) * (n ? n : 1));
    int rc = 0;
    if (s == NULL)
        return oom(d);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t slot = *(const uint32_t *)((const char *)base + i * stride + off);
        s[i] = (uint64_t)slot << 32 | i;
    }
    qsort(s, n, sizeof(*s), cmp_u64);
    for (uint32_t i = 1; i < n; i++) {
        if (s[i - 1] >> 32 == s[i] >> 32) {
            rc = sy__proto_fail(
                d->err, -EINVAL,
                "%s[%" PRIu32 "].slot: %" PRIu32 " is already used by %s[%" PRIu32 "]", what,
                (uint32_t)s[i], (uint32_t)(s[i] >> 32), what, (uint32_t)s[i - 1]);
            break;
        }
    }
    free(s);
    return rc;
}

static void deployment_free(struct sy_deployment *dep)
{
    if (dep->api_key)
        explicit_bzero(dep->api_key, strlen(dep->api_key));
    for (uint32_t i = 0; i < dep->n_headers; i++) {
        free(dep->headers[i].name);
        if (dep->headers[i].value) /* custom auth headers carry secrets too */
            explicit_bzero(dep->headers[i].value, strlen(dep->headers[i].value));
        free(dep->headers[i].value);
    }
    free(dep->headers);
    free(dep->name);
    free(dep->provider);
    free(dep->model);
    free(dep->base_url);
    free(dep->auth_name);
    free(dep->api_key);
    free(dep->api_version);
    sy_origin_free(&dep->origin);
}

static void key_free(struct sy_key *k)
{
    free(k->name);
    free(k->prefix);
    free(k->agent);
    free(k->user);
    free(k->tier);
    for (uint32_t i = 0; i < k->n_models; i++)
        free(k->models[i]);
    free(k->models);
    free(k->budgets);
    for (uint32_t i = 0; i < k->n_model_limits; i++)
        free(k->model_limits[i].model);
    free(k->model_limits);
}

static void table_free(struct sy_table *t)
{
    for (uint32_t i = 0; i < t->n_deployments; i++)
        deployment_free(&t->deployments[i]);
    free(t->deployments);
    for (uint32_t i = 0; i < t->n_models; i++) {
        free(t->models[i].name);
        free(t->models[i].targets);
        policy_free(&t->models[i].policy);
    }
    free(t->models);
    for (uint32_t i = 0; i < t->n_keys; i++)
        key_free(&t->keys[i]);
    free(t->keys);
    for (uint32_t i = 0; i < t->n_budgets; i++)
        free(t->budgets[i].name);
    free(t->budgets);
    sy__guardrails_free(t);
    if (t->ext_free)
        t->ext_free(t->ext);
    free(t);
}

static int decode_deployments(struct table_dec *td, const msgpack_object *v)
{
    struct dec *d = &td->d;
    struct sy_table *t = td->t;
    int rc;

    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array, got %s", type_name(v));
    uint32_t n = v->via.array.size;
    t->deployments = calloc(n ? n : 1, sizeof(*t->deployments));
    if (t->deployments == NULL)
        return oom(d);
    t->n_deployments = n; /* all zeroed: table_free() copes with a partial decode */
    for (uint32_t i = 0; i < n; i++) {
        struct sy_deployment *dep = &t->deployments[i];
        size_t mark = path_index(d, i);
        dep->format = SY_FORMAT_OPENAI;
        dep->auth_style = SY_AUTH_MAX; /* "not given": the default depends on the format */
        dep->weight = 1;
        dep->slot = i;
        dep->enabled = true;
        if ((rc = decode_fields(td, &v->via.array.ptr[i], deployment_fields,
                                SY_ARRAY_LEN(deployment_fields), dep)) < 0)
            return rc;
        if ((rc = check_deployment(d, dep)) < 0)
            return rc;
        path_pop(d, mark);
    }

    const char **names = malloc(sizeof(*names) * (n ? n : 1));
    if (names == NULL)
        return oom(d);
    for (uint32_t i = 0; i < n; i++)
        names[i] = t->deployments[i].name;
    rc = sort_unique(d, names, n, "deployments", &td->dep_by_name);
    free(names);
    if (rc < 0)
        return rc;
    return check_slots(d, t->deployments, sizeof(*t->deployments),
                       offsetof(struct sy_deployment, slot), n, "deployments");
}

/* A policy's edges to other models: its fallbacks, then the models its rules target. Sets
 * *<to> to the <k>th and returns 1, returns 0 for a rule that targets deployments, -1 past
 * the end. */
static int model_edge(const struct sy_policy *p, uint32_t k, uint32_t *to, bool *fallback)
{
    if (k < p->n_fallbacks) {
        *to = p->fallbacks[k];
        *fallback = true;
        return 1;
    }
    k -= p->n_fallbacks;
    if (k >= p->n_rules)
        return -1;
    if (p->rules[k].model < 0)
        return 0;
    *to = (uint32_t)p->rules[k].model;
    *fallback = false;
    return 1;
}

/* Refuse a loop among the models' fallbacks and rule targets: a request would go round it
 * until its attempts ran out. An iterative depth-first search (a chain may be long); the first
 * loop found, from the models in name order, is named: `models: fallback loop a → b → a`. */
static int check_loops(struct dec *d, const struct sy_table *t)
{
    uint32_t n = t->n_models, sp = 0;
    uint8_t *state = calloc(n ? n : 1, 1); /* 0 unseen, 1 on the stack, 2 done */
    uint32_t *node = malloc(sizeof(*node) * (n ? n : 1));
    uint32_t *edge = malloc(sizeof(*edge) * (n ? n : 1));
    bool *via_fallback = malloc(sizeof(*via_fallback) * (n ? n : 1));
    int rc = 0;

    if (state == NULL || node == NULL || edge == NULL || via_fallback == NULL) {
        rc = oom(d);
        goto fail;
    }
    for (uint32_t s = 0; s < n && rc == 0; s++) {
        if (state[s])
            continue;
        node[0] = s;
        edge[0] = 0;
        state[s] = 1;
        sp = 1;
        while (sp > 0 && rc == 0) {
            uint32_t top = node[sp - 1], to;
            bool fb;
            int e = model_edge(&t->models[top].policy, edge[sp - 1]++, &to, &fb);
            if (e < 0) {
                state[top] = 2;
                sp--;
                continue;
            }
            if (e == 0 || state[to] == 2)
                continue;
            via_fallback[sp - 1] = fb;
            if (state[to] == 0) {
                state[to] = 1;
                node[sp] = to;
                edge[sp] = 0;
                sp++;
                continue;
            }
            /* <to> is on the stack: the loop is node[i..sp-1] and back to it */
            uint32_t i = 0;
            bool all_fallbacks = true;
            while (node[i] != to)
                i++;
            struct sy_buf b = SY_BUF_INIT;
            for (uint32_t j = i; j < sp; j++) {
                sy_buf_printf(&b, "%s \xe2\x86\x92 ", t->models[node[j]].name);
                all_fallbacks = all_fallbacks && via_fallback[j];
            }
            sy_buf_puts(&b, t->models[to].name);
            rc = sy__proto_fail(d->err, -EINVAL, "models: %s loop %s%s",
                                all_fallbacks ? "fallback" : "routing", b.data,
                                all_fallbacks ? "" : " (through fallbacks and rule targets)");
            sy_buf_free(&b);
        }
    }
fail:
    free(state);
    free(node);
    free(edge);
    free(via_fallback);
    return rc;
}

static int decode_models(struct table_dec *td, const msgpack_object *v)
{
    struct dec *d = &td->d;
    struct sy_table *t = td->t;
    int rc;

    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array, got %s", type_name(v));
    uint32_t n = v->via.array.size;
    t->models = calloc(n ? n : 1, sizeof(*t->models));
    td->seen_model = calloc(t->n_deployments ? t->n_deployments : 1, sizeof(uint32_t));
    td->seen_target = calloc(t->n_deployments ? t->n_deployments : 1, sizeof(uint32_t));
    if (t->models == NULL || td->seen_model == NULL || td->seen_target == NULL)
        return oom(d);
    t->n_models = n;
    for (uint32_t i = 0; i < n; i++) {
        struct sy_model *m = &t->models[i];
        size_t mark = path_index(d, i);
        m->slot = i;
        sy_policy_init(&m->policy);
        if ((rc = decode_fields(td, &v->via.array.ptr[i], model_fields, SY_ARRAY_LEN(model_fields),
                                m)) < 0)
            return rc;
        if ((rc = check_given(d, "name", m->name)) < 0)
            return rc;
        if (m->targets == NULL)
            return missing(d, "targets", "");
        path_pop(d, mark);
    }

    const char **names = malloc(sizeof(*names) * (n ? n : 1));
    if (names == NULL)
        return oom(d);
    for (uint32_t i = 0; i < n; i++)
        names[i] = t->models[i].name;
    rc = sort_unique(d, names, n, "models", &td->model_by_name);
    free(names);
    if (rc < 0)
        return rc;

    /* Second pass: policies and fallbacks name other models, which are now all known. */
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &v->via.array.ptr[i], *x;
        struct sy_model *m = &t->models[i];
        size_t mark = path_index(d, i), m2;
        if ((rc = map_get(d, e, "policy", &x)) < 0)
            return rc;
        m2 = path_key(d, "policy");
        if (x && (rc = decode_policy(td, x, &m->policy)) < 0)
            return rc;
        path_pop(d, m2);
        if ((rc = map_get(d, e, "fallbacks", &x)) < 0)
            return rc;
        m2 = path_key(d, "fallbacks");
        if (x && (rc = decode_fallbacks(td, x, &m->policy)) < 0)
            return rc;
        path_pop(d, mark);
    }
    if ((rc = check_slots(d, t->models, sizeof(*t->models), offsetof(struct sy_model, slot), n,
                          "models")) < 0)
        return rc;

    /* Lay the models out in name order, for sy_table_find_model(), and renumber the references
     * between them: <rank> maps a model's index in the input to its place in name order. */
    const uint32_t *order = td->model_by_name;
    struct sy_model *sorted = malloc(sizeof(*sorted) * (n ? n : 1));
    uint32_t *rank = malloc(sizeof(*rank) * (n ? n : 1));
    if (sorted == NULL || rank == NULL) {
        free(sorted);
        free(rank);
        return oom(d);
    }
    for (uint32_t i = 0; i < n; i++) {
        sorted[i] = t->models[order[i]];
        rank[order[i]] = i;
    }
    for (uint32_t i = 0; i < n; i++) {
        struct sy_policy *p = &sorted[i].policy;
        for (uint32_t j = 0; j < p->n_fallbacks; j++)
            p->fallbacks[j] = rank[p->fallbacks[j]];
        for (uint32_t j = 0; j < p->n_rules; j++)
            if (p->rules[j].model >= 0)
                p->rules[j].model = (int32_t)rank[p->rules[j].model];
    }
    free(t->models);
    t->models = sorted;
    free(rank);
    return check_loops(d, t);
}

/* qsort_r context: the keys, indexed like the array of indices being sorted. */
static int cmp_by_hash(const void *a, const void *b, void *ctx)
{
    const struct sy_key *keys = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = memcmp(keys[x].hash, keys[y].hash, SY_KEY_HASH_LEN);
    return c ? c : (x > y) - (x < y);
}

static int decode_keys(struct table_dec *td, const msgpack_object *v)
{
    struct dec *d = &td->d;
    struct sy_table *t = td->t;
    int rc;

    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array, got %s", type_name(v));
    uint32_t n = v->via.array.size;
    t->keys = calloc(n ? n : 1, sizeof(*t->keys));
    if (t->keys == NULL)
        return oom(d);
    t->n_keys = n;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &v->via.array.ptr[i], *hash;
        struct sy_key *k = &t->keys[i];
        size_t mark = path_index(d, i);
        k->slot = i;
        if ((rc = decode_fields(td, e, key_fields, SY_ARRAY_LEN(key_fields), k)) < 0)
            return rc;
        if ((rc = map_get(d, e, "hash", &hash)) < 0)
            return rc;
        if (hash == NULL)
            return missing(d, "hash", "");
        if (k->expires_ms < 0) {
            path_key(d, "expires_ms");
            return fail(d, -EINVAL, "must not be negative (0 = never expires)");
        }
        path_pop(d, mark);
    }

    /* Lay the keys out in hash order, for sy_table_find_key(); a hash given twice would make
     * which entry a key gets depend on the sort. */
    uint32_t *order = malloc(sizeof(*order) * (n ? n : 1));
    struct sy_key *sorted = malloc(sizeof(*sorted) * (n ? n : 1));
    if (order == NULL || sorted == NULL) {
        free(order);
        free(sorted);
        return oom(d);
    }
    for (uint32_t i = 0; i < n; i++)
        order[i] = i;
    qsort_r(order, n, sizeof(*order), cmp_by_hash, t->keys);
    rc = 0;
    for (uint32_t i = 1; i < n && rc == 0; i++)
        if (memcmp(t->keys[order[i - 1]].hash, t->keys[order[i]].hash, SY_KEY_HASH_LEN) == 0)
            rc = sy__proto_fail(d->err, -EINVAL,
                                "keys[%" PRIu32 "].hash: duplicate (also keys[%" PRIu32 "])",
                                SY_MAX(order[i - 1], order[i]), SY_MIN(order[i - 1], order[i]));
    if (rc == 0)
        rc = check_slots(d, t->keys, sizeof(*t->keys), offsetof(struct sy_key, slot), n, "keys");
    if (rc < 0) {
        free(order);
        free(sorted);
        return rc;
    }
    for (uint32_t i = 0; i < n; i++)
        sorted[i] = t->keys[order[i]];
    free(t->keys);
    t->keys = sorted;
    free(order);
    return 0;
}

/* Budgets, sorted by name for the keys' look-ups: names and slots unique, amounts positive. */
static int decode_budgets(struct table_dec *td, const msgpack_object *v)
{
    struct dec *d = &td->d;
    struct sy_table *t = td->t;
    int rc;

    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(d, -EINVAL, "expected an array, got %s", type_name(v));
    uint32_t n = v->via.array.size;
    t->budgets = calloc(n ? n : 1, sizeof(*t->budgets));
    if (t->budgets == NULL)
        return oom(d);
    t->n_budgets = n;
    for (uint32_t i = 0; i < n; i++) {
        struct sy_budget *b = &t->budgets[i];
        size_t mark = path_index(d, i);
        b->slot = i;
        b->soft_percent = 80;
        if ((rc = decode_fields(td, &v->via.array.ptr[i], budget_fields,
                                SY_ARRAY_LEN(budget_fields), b)) < 0 ||
            (rc = check_given(d, "name", b->name)) < 0)
            return rc;
        if (b->amount_micros == 0)
            return missing(d, "amount_micros", " (a budget needs a positive amount)");
        path_pop(d, mark);
    }
    const char **names = malloc(sizeof(*names) * (n ? n : 1));
    uint32_t *order = NULL;
    if (names == NULL)
        return oom(d);
    for (uint32_t i = 0; i < n; i++)
        names[i] = t->budgets[i].name;
    rc = sort_unique(d, names, n, "budgets", &order);
    free(names);
    if (rc == 0)
        rc = check_slots(d, t->budgets, sizeof(*t->budgets), offsetof(struct sy_budget, slot), n,
                         "budgets");
    free(order);
    if (rc < 0)
        return rc;
    qsort(t->budgets, n, sizeof(*t->budgets), cmp_budget_name);
    return 0;
}

static int decode_table(struct table_dec *td, const msgpack_object *root)
{
    struct dec *d = &td->d;
    const msgpack_object *v;
    int64_t schema = 0;
    size_t mark;
    int rc;

    if (root->type != MSGPACK_OBJECT_MAP)
        return fail(d, -EINVAL, "expected a map at the top level, got %s", type_name(root));

    /* The schema first: a table of another schema would fail in confusing ways below. */
    if ((rc = map_get(d, root, "schema", &v)) < 0)
        return rc;
    mark = path_key(d, "schema");
    if (v == NULL)
        return fail(d, -EINVAL, "missing (this build reads schema %d)", SY_TABLE_SCHEMA);
    if ((rc = get_i64(d, v, &schema)) < 0)
        return rc;
    if (schema != SY_TABLE_SCHEMA)
        return fail(d, -EINVAL,
                    "table schema %" PRId64 " is not supported (this build reads "
                    "schema %d)",
                    schema, SY_TABLE_SCHEMA);
    path_pop(d, mark);

    if ((rc = map_get(d, root, "version", &v)) < 0)
        return rc;
    mark = path_key(d, "version");
    if (v == NULL)
        return fail(d, -EINVAL, "missing");
    if ((rc = get_u64(d, v, UINT64_MAX, &td->t->version)) < 0)
        return rc;
    path_pop(d, mark);

    if ((rc = map_get(d, root, "created_ms", &v)) < 0)
        return rc;
    mark = path_key(d, "created_ms");
    if (v && (rc = get_i64(d, v, &td->t->created_ms)) < 0)
        return rc;
    path_pop(d, mark);

    /* Deployments before models, whatever the order of the keys: targets refer to them. */
    if ((rc = map_get(d, root, "deployments", &v)) < 0)
        return rc;
    mark = path_key(d, "deployments");
    if (v && (rc = decode_deployments(td, v)) < 0)
        return rc;
    path_pop(d, mark);

    if ((rc = map_get(d, root, "models", &v)) < 0)
        return rc;
    mark = path_key(d, "models");
    if (v && (rc = decode_models(td, v)) < 0)
        return rc;
    path_pop(d, mark);

    if ((rc = map_get(d, root, "require_keys", &v)) < 0)
        return rc;
    mark = path_key(d, "require_keys");
    if (v && v->type != MSGPACK_OBJECT_BOOLEAN)
        return fail(d, -EINVAL, "expected true or false, got %s", type_name(v));
    td->t->require_keys = v && v->via.boolean;
    path_pop(d, mark);

    /* Budgets before keys, whatever the order: keys list them by name. */
    if ((rc = map_get(d, root, "budgets", &v)) < 0)
        return rc;
    mark = path_key(d, "budgets");
    if (v && (rc = decode_budgets(td, v)) < 0)
        return rc;
    path_pop(d, mark);

    if ((rc = map_get(d, root, "keys", &v)) < 0)
        return rc;
    mark = path_key(d, "keys");
    if (v && (rc = decode_keys(td, v)) < 0)
        return rc;
    path_pop(d, mark);

    if ((rc = map_get(d, root, "nodes", &v)) < 0)
        return rc;
    mark = path_key(d, "nodes");
    if (v && (rc = get_u32_range(d, v, 1, 65536, &td->t->nodes)) < 0)
        return rc;
    path_pop(d, mark);

    if ((rc = map_get(d, root, "guardrails", &v)) < 0)
        return rc;
    if (v && (rc = sy__guardrails_decode(td->t, v, d->err)) < 0)
        return rc;
    return 0;
}

int sy_table_decode(const char *data, size_t len, struct sy_table **out, char **err)
{
    struct table_dec td = {.d = {.path = SY_BUF_INIT, .err = err}};
    msgpack_unpacked up;
    size_t off = 0;
    int rc;

    *out = NULL;
    if (err)
        *err = NULL;
    if (len == 0)
        return sy__proto_fail(err, -EINVAL, "empty table");
    if ((rc = sy__msgpack_prescan(data, len, "table", err)) < 0)
        return rc;

    msgpack_unpacked_init(&up);
    switch (msgpack_unpack_next(&up, data, len, &off)) {
    case MSGPACK_UNPACK_SUCCESS:
        break;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        rc = sy__proto_fail(err, -ENOMEM, "out of memory");
        goto fail;
    default: /* the pre-scan lets nothing else through, but stay safe */
        rc = sy__proto_fail(err, -EINVAL, "invalid msgpack");
        goto fail;
    }

    td.t = calloc(1, sizeof(*td.t));
    if (td.t == NULL) {
        rc = sy__proto_fail(err, -ENOMEM, "out of memory");
        goto fail;
    }
    atomic_init(&td.t->refs, 1);
    sy_buf_reserve(&td.d.path, 64);
    if ((rc = decode_table(&td, &up.data)) < 0)
        goto fail;
    *out = td.t;
    td.t = NULL;

fail:
    if (td.t)
        table_free(td.t);
    free(td.dep_by_name);
    free(td.model_by_name);
    free(td.seen_model);
    free(td.seen_target);
    sy_buf_free(&td.d.path);
    msgpack_unpacked_destroy(&up);
    return rc;
}

int sy__policy_decode(struct sy_table *t, uint32_t model, const char *data, size_t len, char **err,
                      char **err_path)
{
    struct table_dec td = {
        .d = {.path = SY_BUF_INIT, .err = err, .err_path = err_path, .strict = t == NULL},
        .t = t,
        .no_resolve = t == NULL,
    };
    struct sy_policy p;
    const msgpack_object *v;
    msgpack_unpacked up;
    size_t off = 0;
    int rc;

    sy_policy_init(&p);
    msgpack_unpacked_init(&up);
    if ((rc = sy__msgpack_prescan(data, len, "policy", err)) < 0)
        goto fail;
    if (msgpack_unpack_next(&up, data, len, &off) != MSGPACK_UNPACK_SUCCESS ||
        up.data.type != MSGPACK_OBJECT_MAP) {
        rc = sy__proto_fail(err, -EINVAL, "expected a map {\"policy\", \"fallbacks\"}");
        goto fail;
    }
    sy_buf_reserve(&td.d.path, 64);
    if (t) {
        const char **names = malloc(sizeof(*names) * (SY_MAX(t->n_models, t->n_deployments) + 1));
        if (names == NULL) {
            rc = oom(&td.d);
            goto fail;
        }
        for (uint32_t i = 0; i < t->n_deployments; i++)
            names[i] = t->deployments[i].name;
        rc = sort_unique(&td.d, names, t->n_deployments, "deployments", &td.dep_by_name);
        for (uint32_t i = 0; rc == 0 && i < t->n_models; i++)
            names[i] = t->models[i].name;
        if (rc == 0)
            rc = sort_unique(&td.d, names, t->n_models, "models", &td.model_by_name);
        free(names);
        if (rc < 0)
            goto fail;
    }

    if ((rc = map_get(&td.d, &up.data, "policy", &v)) < 0)
        goto fail;
    size_t mark = path_key(&td.d, "policy");
    if (v && (rc = decode_policy(&td, v, &p)) < 0)
        goto fail;
    path_pop(&td.d, mark);
    if ((rc = map_get(&td.d, &up.data, "fallbacks", &v)) < 0)
        goto fail;
    path_key(&td.d, "fallbacks");
    if (v && (rc = decode_fallbacks(&td, v, &p)) < 0)
        goto fail;
    if (t) {
        policy_free(&t->models[model].policy);
        t->models[model].policy = p;
        sy_policy_init(&p); /* now the model's */
    }

fail:
    policy_free(&p);
    free(td.dep_by_name);
    free(td.model_by_name);
    sy_buf_free(&td.d.path);
    msgpack_unpacked_destroy(&up);
    return rc;
}

/* ---- encoding -------------------------------------------------------------------------- */

static int buf_write(void *data, const char *p, size_t n)
{
    sy_buf_append(data, p, n);
    return 0;
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void pack_fields(msgpack_packer *pk, const struct sy_table *t, const struct field *fields,
                        size_t n_fields, const void *base);

/* A rule: {name, when, target}; the conditions in their order, header ones grouped in one map
 * (decode_when() keeps them together). */
static void pack_rule(msgpack_packer *pk, const struct sy_table *t, const struct sy_rule *r)
{
    uint32_t n_keys = 0, n_headers = 0;
    for (uint32_t i = 0; i < r->n_conds; i++) {
        if (r->conds[i].op != SY_RULE_HEADER)
            n_keys++;
        else if (n_headers++ == 0)
            n_keys++;
    }
    msgpack_pack_map(pk, r->name ? 3 : 2);
    if (r->name) {
        pack_cstr(pk, "name");
        pack_cstr(pk, r->name);
    }
    pack_cstr(pk, "when");
    msgpack_pack_map(pk, n_keys);
    for (uint32_t i = 0; i < r->n_conds; i++) {
        const struct sy_rule_cond *c = &r->conds[i];
        if (c->op == SY_RULE_HEADER) {
            if (i > 0 && r->conds[i - 1].op == SY_RULE_HEADER)
                continue;
            pack_cstr(pk, "header");
            msgpack_pack_map(pk, n_headers);
            for (uint32_t j = i; j < r->n_conds && r->conds[j].op == SY_RULE_HEADER; j++) {
                pack_cstr(pk, r->conds[j].name);
                msgpack_pack_array(pk, r->conds[j].n_values);
                for (uint32_t k = 0; k < r->conds[j].n_values; k++)
                    pack_cstr(pk, r->conds[j].values[k]);
            }
            continue;
        }
        pack_cstr(pk, when_names[c->op]);
        switch (c->op) {
        case SY_RULE_HAS_TOOLS:
        case SY_RULE_HAS_IMAGES:
            if (c->value)
                msgpack_pack_true(pk);
            else
                msgpack_pack_false(pk);
            break;
        case SY_RULE_COMPLEXITY_BELOW:
        case SY_RULE_COMPLEXITY_ABOVE:
            msgpack_pack_double(pk, (double)c->value / 1000);
            break;
        case SY_RULE_TIER:
        case SY_RULE_AGENT:
        case SY_RULE_USER:
            msgpack_pack_array(pk, c->n_values);
            for (uint32_t k = 0; k < c->n_values; k++)
                pack_cstr(pk, c->values[k]);
            break;
        default:
            msgpack_pack_int64(pk, c->value);
            break;
        }
    }
    pack_cstr(pk, "target");
    msgpack_pack_map(pk, 1);
    if (r->model >= 0) {
        pack_cstr(pk, "model");
        pack_cstr(pk, t->models[r->model].name);
        return;
    }
    pack_cstr(pk, "deployments");
    msgpack_pack_array(pk, r->n_targets);
    for (uint32_t i = 0; i < r->n_targets; i++) {
        msgpack_pack_map(pk, 2);
        pack_cstr(pk, "deployment");
        pack_cstr(pk, t->deployments[r->targets[i].deployment].name);
        pack_cstr(pk, "weight");
        msgpack_pack_uint32(pk, r->targets[i].weight);
    }
}

static void pack_field(msgpack_packer *pk, const struct sy_table *t, const struct field *f,
                       const void *p)
{
    switch (f->kind) {
    case FIELD_STR:
        pack_cstr(pk, *(char *const *)p);
        return;
    case FIELD_U32:
        msgpack_pack_uint32(pk, *(const uint32_t *)p);
        return;
    case FIELD_U64:
        msgpack_pack_uint64(pk, *(const uint64_t *)p);
        return;
    case FIELD_I64:
        msgpack_pack_int64(pk, *(const int64_t *)p);
        return;
    case FIELD_BOOL:
        if (*(const bool *)p)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        return;
    case FIELD_FORMAT:
        pack_cstr(pk, format_names[*(const enum sy_format *)p]);
        return;
    case FIELD_AUTH:
        pack_cstr(pk, auth_names[*(const enum sy_auth_style *)p]);
        return;
    case FIELD_HEADERS: {
        const struct sy_deployment *dep = SY_CONTAINER_OF(p, struct sy_deployment, headers);
        msgpack_pack_map(pk, dep->n_headers);
        for (uint32_t i = 0; i < dep->n_headers; i++) {
            pack_cstr(pk, dep->headers[i].name);
            pack_cstr(pk, dep->headers[i].value);
        }
        return;
    }
    case FIELD_TIMEOUTS:
        pack_fields(pk, t, timeout_fields, SY_ARRAY_LEN(timeout_fields), p);
        return;
    case FIELD_TARGETS: {
        const struct sy_model *m = SY_CONTAINER_OF(p, struct sy_model, targets);
        msgpack_pack_array(pk, m->n_targets);
        for (uint32_t i = 0; i < m->n_targets; i++) {
            msgpack_pack_map(pk, 2);
            pack_cstr(pk, "deployment");
            pack_cstr(pk, t->deployments[m->targets[i].deployment].name);
            pack_cstr(pk, "weight");
            msgpack_pack_uint32(pk, m->targets[i].weight);
        }
        return;
    }
    case FIELD_PRICE_VALUE:
        msgpack_pack_double(pk, *(const double *)p);
        return;
    case FIELD_LIMITS:
        pack_fields(pk, t, limit_fields, SY_ARRAY_LEN(limit_fields), p);
        return;
    case FIELD_PRICE:
        pack_fields(pk, t, price_fields, SY_ARRAY_LEN(price_fields), p);
        return;
    case FIELD_HASH: {
        static const char hex[] = "0123456789abcdef";
        char text[2 * SY_KEY_HASH_LEN];
        for (size_t i = 0; i < SY_KEY_HASH_LEN; i++) {
            text[2 * i] = hex[((const uint8_t *)p)[i] >> 4];
            text[2 * i + 1] = hex[((const uint8_t *)p)[i] & 15];
        }
        msgpack_pack_str_with_body(pk, text, sizeof(text));
        return;
    }
    case FIELD_MODEL_LIST: {
        const struct sy_key *k = SY_CONTAINER_OF(p, struct sy_key, models);
        msgpack_pack_array(pk, k->n_models);
        for (uint32_t i = 0; i < k->n_models; i++)
            pack_cstr(pk, k->models[i]);
        return;
    }
    case FIELD_KEY_LIMITS: {
        const struct sy_key *k = SY_CONTAINER_OF(p, struct sy_key, model_limits);
        msgpack_pack_map(pk, k->n_model_limits);
        for (uint32_t i = 0; i < k->n_model_limits; i++) {
            pack_cstr(pk, k->model_limits[i].model);
            pack_fields(pk, t, key_limit_fields, SY_ARRAY_LEN(key_limit_fields),
                        &k->model_limits[i]);
        }
        return;
    }
    case FIELD_POLICY:
        pack_fields(pk, t, policy_fields, SY_ARRAY_LEN(policy_fields), p);
        return;
    case FIELD_FALLBACKS: {
        const struct sy_policy *pol = SY_CONTAINER_OF(p, struct sy_policy, fallbacks);
        msgpack_pack_array(pk, pol->n_fallbacks);
        for (uint32_t i = 0; i < pol->n_fallbacks; i++)
            pack_cstr(pk, t->models[pol->fallbacks[i]].name);
        return;
    }
    case FIELD_BALANCE:
    case FIELD_OLD_BALANCE:
        pack_cstr(pk, balance_names[*(const enum sy_balance *)p]);
        return;
    case FIELD_RETRY:
        pack_fields(pk, t, retry_fields, SY_ARRAY_LEN(retry_fields), p);
        return;
    case FIELD_CIRCUIT:
        pack_fields(pk, t, circuit_fields, SY_ARRAY_LEN(circuit_fields), p);
        return;
    case FIELD_TRIGGERS: {
        uint32_t bits = *(const uint32_t *)p;
        msgpack_pack_array(pk, (size_t)__builtin_popcount(bits));
        for (size_t i = 0; i < SY_ARRAY_LEN(trigger_names); i++)
            if (bits & (1u << i))
                pack_cstr(pk, trigger_names[i]);
        return;
    }
    case FIELD_STATUSES: {
        const struct sy_policy *pol = SY_CONTAINER_OF(p, struct sy_policy, statuses);
        msgpack_pack_array(pk, pol->n_statuses);
        for (uint32_t i = 0; i < pol->n_statuses; i++)
            msgpack_pack_uint16(pk, pol->statuses[i]);
        return;
    }
    case FIELD_RULES: {
        const struct sy_policy *pol = SY_CONTAINER_OF(p, struct sy_policy, rules);
        msgpack_pack_array(pk, pol->n_rules);
        for (uint32_t i = 0; i < pol->n_rules; i++)
            pack_rule(pk, t, &pol->rules[i]);
        return;
    }
    case FIELD_BUDGET_LIST: {
        const struct sy_key *k = SY_CONTAINER_OF(p, struct sy_key, budgets);
        msgpack_pack_array(pk, k->n_budgets);
        for (uint32_t i = 0; i < k->n_budgets; i++)
            pack_cstr(pk, t->budgets[k->budgets[i]].name);
        return;
    }
    case FIELD_PERIOD:
        pack_cstr(pk, period_names[*(const enum sy_budget_period *)p]);
        return;
    case FIELD_MAX:
        break;
    }
    SY_REQUIRE(0);
}

/* Whether field <f> at <p> is absent, which the encoder leaves out: a NULL string or list, an
 * empty fallback, status or rule list, an older key, and a policy never initialised (its
 * attempts are 0; see sy_table_encode()). */
static bool field_absent(const struct field *f, const void *p)
{
    switch (f->kind) {
    case FIELD_STR:
        return *(char *const *)p == NULL;
    case FIELD_MODEL_LIST:
        return *(char **const *)p == NULL;
    case FIELD_BUDGET_LIST:
        return SY_CONTAINER_OF(p, struct sy_key, budgets)->n_budgets == 0;
    case FIELD_KEY_LIMITS:
        return SY_CONTAINER_OF(p, struct sy_key, model_limits)->n_model_limits == 0;
    case FIELD_OLD_BALANCE:
        return true;
    case FIELD_POLICY:
        return ((const struct sy_policy *)p)->retry.attempts == 0;
    case FIELD_FALLBACKS:
        return SY_CONTAINER_OF(p, struct sy_policy, fallbacks)->n_fallbacks == 0;
    case FIELD_STATUSES:
        return SY_CONTAINER_OF(p, struct sy_policy, statuses)->n_statuses == 0;
    case FIELD_RULES:
        return SY_CONTAINER_OF(p, struct sy_policy, rules)->n_rules == 0;
    default:
        return false;
    }
}

/* A map of the fields of <base>; absent strings and lists (NULL) are left out. */
static void pack_fields(msgpack_packer *pk, const struct sy_table *t, const struct field *fields,
                        size_t n_fields, const void *base)
{
    size_t n = 0;
    for (size_t i = 0; i < n_fields; i++)
        if (!field_absent(&fields[i], (const char *)base + fields[i].off))
            n++;
    msgpack_pack_map(pk, n);
    for (size_t i = 0; i < n_fields; i++) {
        const void *p = (const char *)base + fields[i].off;
        if (field_absent(&fields[i], p))
            continue;
        pack_cstr(pk, fields[i].key);
        pack_field(pk, t, &fields[i], p);
    }
}

int sy_table_encode(const struct sy_table *t, struct sy_buf *out)
{
    msgpack_packer pk;

    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 8 + (t->nodes > 1) + (t->n_guardrails > 0));
    pack_cstr(&pk, "schema");
    msgpack_pack_int(&pk, SY_TABLE_SCHEMA);
    pack_cstr(&pk, "version");
    msgpack_pack_uint64(&pk, t->version);
    pack_cstr(&pk, "created_ms");
    msgpack_pack_int64(&pk, t->created_ms);
    pack_cstr(&pk, "deployments");
    msgpack_pack_array(&pk, t->n_deployments);
    for (uint32_t i = 0; i < t->n_deployments; i++)
        pack_fields(&pk, t, deployment_fields, SY_ARRAY_LEN(deployment_fields), &t->deployments[i]);
    pack_cstr(&pk, "models");
    msgpack_pack_array(&pk, t->n_models);
    for (uint32_t i = 0; i < t->n_models; i++)
        pack_fields(&pk, t, model_fields, SY_ARRAY_LEN(model_fields), &t->models[i]);
    pack_cstr(&pk, "require_keys");
    if (t->require_keys)
        msgpack_pack_true(&pk);
    else
        msgpack_pack_false(&pk);
    pack_cstr(&pk, "budgets");
    msgpack_pack_array(&pk, t->n_budgets);
    for (uint32_t i = 0; i < t->n_budgets; i++)
        pack_fields(&pk, t, budget_fields, SY_ARRAY_LEN(budget_fields), &t->budgets[i]);
    pack_cstr(&pk, "keys");
    msgpack_pack_array(&pk, t->n_keys);
    for (uint32_t i = 0; i < t->n_keys; i++)
        pack_fields(&pk, t, key_fields, SY_ARRAY_LEN(key_fields), &t->keys[i]);
    if (t->nodes > 1) {
        pack_cstr(&pk, "nodes");
        msgpack_pack_uint32(&pk, t->nodes);
    }
    if (t->n_guardrails > 0) {
        pack_cstr(&pk, "guardrails");
        sy__guardrails_pack(&pk, t);
    }
    return 0;
}

/* ---- look-up and lifetime -------------------------------------------------------------- */

/* Order of the counted <key>/<len> against the NUL-terminated <name>, bytewise like strcmp. */
static int cmp_counted(const char *key, size_t len, const char *name)
{
    for (size_t i = 0; i < len; i++) {
        if (name[i] == '\0')
            return 1;
        if (key[i] != name[i])
            return (unsigned char)key[i] < (unsigned char)name[i] ? -1 : 1;
    }
    return name[len] == '\0' ? 0 : -1;
}

const struct sy_model *sy_table_find_model(const struct sy_table *t, const char *name, size_t len)
{
    size_t lo = 0, hi = t->n_models;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_counted(name, len, t->models[mid].name);
        if (c == 0)
            return &t->models[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const struct sy_key *sy_table_find_key(const struct sy_table *t,
                                       const uint8_t hash[SY_KEY_HASH_LEN])
{
    size_t lo = 0, hi = t->n_keys;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = memcmp(hash, t->keys[mid].hash, SY_KEY_HASH_LEN);
        if (c == 0)
            return &t->keys[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const struct sy_key_limit *sy_key_model_limit(const struct sy_key *k, const char *model)
{
    size_t lo = 0, hi = k->n_model_limits;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(model, k->model_limits[mid].model);
        if (c == 0)
            return &k->model_limits[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

bool sy_key_allows_model(const struct sy_key *k, const char *model, size_t len)
{
    if (k->models == NULL)
        return true;
    size_t lo = 0, hi = k->n_models;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_counted(model, len, k->models[mid]);
        if (c == 0)
            return true;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return false;
}

void sy_table_unref(struct sy_table *t)
{
    if (t == NULL)
        return;
    uint32_t prev = atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel);
    SY_REQUIRE(prev >= 1); /* 0 would be an unref too many */
    if (prev == 1)
        table_free(t);
}
