/* SPDX-License-Identifier: Apache-2.0 */
/** Byte-splicing edits of a JSON request body on its way to a provider: the members the
 * gateway must change are replaced or inserted in place, and every other byte goes out as the
 * client sent it (key order, number spelling, whitespace, escapes). Built on a scanner of the
 * top-level members of a JSON object that later stages (translation, guardrails) reuse. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "sy/buf.h"

/* ---- scanning the members of an object --------------------------------------------------- */

enum dp_json_type {
    DP_JSON_OBJECT = 0,
    DP_JSON_ARRAY,
    DP_JSON_STRING,
    DP_JSON_NUMBER,
    DP_JSON_TRUE,
    DP_JSON_FALSE,
    DP_JSON_NULL,
    DP_JSON_TYPE_MAX,
};

/** One member of an object, as the scanner hands it over; valid only during the callback. */
struct dp_json_member {
    const char *key; /* the key with its escapes decoded, not NUL-terminated: points into the
                        body when the key has no escapes, else into a scanner buffer */
    size_t key_len;
    const char *key_at; /* the key's opening quote in the body */
    const char *val;    /* the value in the body, from its first byte to its last */
    size_t val_len;
    enum dp_json_type type;
    unsigned index; /* 0 for the first member */
};

/** Called for each member in body order. A nonzero return stops the scan, which returns it. */
typedef int (*dp_json_member_cb)(void *ud, const struct dp_json_member *m);

/** Call <cb> for each member of the JSON object <body>/<len> (borrowed), which may start with a
 * UTF-8 BOM and whitespace; nested values are skipped, not descended into (scan a value of type
 * DP_JSON_OBJECT the same way to see its members). Returns 0, the callback's nonzero value, or
 * -EINVAL when the body is not an object. The scan checks the object's own syntax and the
 * nesting of its values, not everything a full parser would, and it may call <cb> for members
 * before it finds a fault further on. Allocates nothing unless a key that has escapes decodes to
 * more than 256 bytes. <cb> may be NULL: then it only checks the structure. */
int dp_json_top_members(const char *body, size_t len, dp_json_member_cb cb, void *ud);

/** <p> is at the opening quote of a JSON string ending before <e>: the byte after its closing
 * quote, or NULL. A quote closes the string when an even number of backslashes precede it;
 * each run of backslashes is looked at once, so this stays linear. */
const char *dp_json_skip_string(const char *p, const char *e);

/** True when the decoded key of <m> is <lit>/<n>. */
static inline bool dp_json_key_is(const struct dp_json_member *m, const char *lit, size_t n)
{
    return m->key_len == n && __builtin_memcmp(m->key, lit, n) == 0;
}

/* ---- the request rewrite ----------------------------------------------------------------- */

/** What to change in a request. */
struct dp_rewrite {
    const char *model; /* new value of the top-level "model" (required), raw text, borrowed */
    size_t model_len;
    bool force_include_usage; /* make sure of "stream_options":{"include_usage":true} */
};

/** What the client's body had, so the response can be fitted back to what it asked for. */
struct dp_rewrite_info {
    bool had_stream_options;   /* a non-null top-level "stream_options" */
    bool client_include_usage; /* its (last) "include_usage" was true: the client wants usage */
};

/** Append to <out> the request body <body>/<len> (borrowed, already validated as JSON) with
 * every top-level "model" member's value, whatever its type, replaced by the JSON string of
 * <rw>->model ("model" is inserted as the first member when absent). With
 * <rw>->force_include_usage, a top-level "stream_options" object gets "include_usage":true
 * (every such member replaced, or one inserted first); a null one is replaced by
 * {"include_usage":true}; an absent one is inserted after "model" at the front. Keys are
 * compared with their escapes decoded; nested objects are never touched. Fills <info> unless
 * it is NULL. Returns 0, or -EINVAL when the body is not a JSON object or "stream_options" is
 * neither an object nor null while it must be forced; <out> is then left as it was. One scan
 * of the body plus one copy; <out> is grown once up front in the usual case. */
int dp_rewrite_request(const char *body, size_t len, const struct dp_rewrite *rw,
                       struct sy_buf *out, struct dp_rewrite_info *info);
