/* SPDX-License-Identifier: Apache-2.0 */
/** Decode, encode, look up and share routing tables. */
#pragma once

#include <stddef.h>

#include "sy/buf.h"
#include "sy/table-t.h"

/** Decode a msgpack routing table from <data>/<len> (borrowed). On success *<out> holds a new
 * table with one reference. On failure returns -EINVAL and sets *<err> to a message the caller
 * frees. */
int sy_table_decode(const char *data, size_t len, struct sy_table **out, char **err);

/** Encode <t> (borrowed) as msgpack, appended to <out>. */
int sy_table_encode(const struct sy_table *t, struct sy_buf *out);

/** Build a table from its hand-written JSON form (proto/README.md) in <text>/<len>. */
int sy_table_from_json(const char *text, size_t len, struct sy_table **out, char **err);

/** Load a table file: JSON when its first non-blank byte is '{', msgpack otherwise. */
int sy_table_load_file(const char *path, struct sy_table **out, char **err);

/** Parse <url> ("http[s]://host[:port][/path]") into <o>, which then owns its strings. */
int sy_origin_parse(const char *url, struct sy_origin *o, char **err);

/** The public model named <name>/<len>, or NULL. */
const struct sy_model *sy_table_find_model(const struct sy_table *t, const char *name, size_t len);

/** Take one more reference on <t>. */
static inline struct sy_table *sy_table_ref(struct sy_table *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

/** Drop a reference; the last one frees the table and zeroes its credentials. NULL is fine. */
void sy_table_unref(struct sy_table *t);
