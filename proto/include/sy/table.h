/* SPDX-License-Identifier: Apache-2.0 */
/** Decode, encode, look up and share routing tables. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sy/buf.h"
#include "sy/table-t.h"

/** Decode a msgpack routing table from <data>/<len> (borrowed; nothing points into it
 * afterwards). On success *<out> holds a new table with one reference. On failure returns
 * -EINVAL (bad input) or -ENOMEM and sets *<err> to a message the caller frees, naming the
 * offending field by its path, e.g. `deployments[2].base_url: scheme must be http or https`.
 * The whole table is validated: a table that decodes is safe to route by. */
int sy_table_decode(const char *data, size_t len, struct sy_table **out, char **err);

/** Encode <t> (borrowed) as msgpack, appended to <out>; sy_table_decode() of the result gives
 * back an equal table. The bytes hold the credentials: zero them when done. Returns 0.
 * A model whose policy was never set (all zero, as calloc leaves it: retry.attempts is 0) is
 * encoded without one and so decodes with the defaults of sy_policy_init(). */
int sy_table_encode(const struct sy_table *t, struct sy_buf *out);

/** Build a table from its hand-written JSON form (proto/README.md) in <text>/<len> (borrowed).
 * Same keys, defaults, validation and messages as sy_table_decode() (the JSON is turned into
 * msgpack and decoded), plus `api_key_env` on a deployment: the key is read from that
 * environment variable now. Results as sy_table_decode(). */
int sy_table_from_json(const char *text, size_t len, struct sy_table **out, char **err);

/** Set <p> to the default policy: what a model gets when the table gives it no policy, and
 * what every key it leaves out of its policy is (proto/README.md lists the values). <p> owns
 * nothing before or after. */
void sy_policy_init(struct sy_policy *p);

/** Check the policy of a public model as an operator writes it: <text>/<len> (borrowed) is the
 * JSON object of `policy`. Same checks and messages as sy_table_decode(), with paths starting
 * at "policy" (`policy.retry.attempts: must be a whole number from 1 to 10`), but stricter:
 * unknown keys are refused (`policy.retry.tries: unknown field`), where the decoder skips them
 * for forward compatibility. Names of models and deployments (rule targets) are checked for
 * shape only: the caller knows which exist. Returns 0, or -EINVAL with *<err> set to the
 * message and *<param> to the path at fault ("policy.rules[0].target"), both for the caller to
 * free (either may be NULL). */
int sy_policy_check_json(const char *text, size_t len, char **err, char **param);

/** Set the policy of <t>->models[<model>] from the JSON object <text>/<len> (borrowed), which
 * holds `policy` (an object) and `fallbacks` (an array of model names), both optional, as the
 * admin API stores them: the stored shape is the table's shape. Other keys are ignored, so a
 * whole model document may be given. Names are resolved against <t>'s deployments and models
 * as they stand (so set every model's name first); indices refer to those arrays. Loops are
 * not checked here: sy_table_decode() of the encoded table refuses them. On failure the
 * model's policy is unchanged, and -EINVAL or -ENOMEM is returned with *<err> set (caller
 * frees), e.g. `policy.rules[0].target.model: unknown model "x"`. */
int sy_model_policy_from_json(struct sy_table *t, uint32_t model, const char *text, size_t len,
                              char **err);

/** Check a guardrail document as an operator writes it (proto/README.md, "guardrails"):
 * <text>/<len> (borrowed) is its JSON object. Same reader as sy_table_decode(), but strict:
 * unknown keys are refused. Regular expressions are checked for length only (the caller compiles
 * them). On success fills <out> unless it is NULL (free it with sy_guardrail_free()). Returns 0,
 * or -EINVAL with *<err> set to the message and *<param> to the path at fault
 * ("input.detectors[1]"), both for the caller to free (either may be NULL). */
int sy_guardrail_check_json(const char *text, size_t len, struct sy_guardrail *out, char **err,
                            char **param);

/** Free what guardrail <gr> owns (not <gr> itself) and zero it. */
void sy_guardrail_free(struct sy_guardrail *gr);

/** The name of detector <d> in tables and documents ("email", "keywords"...). */
const char *sy_guard_detector_name(enum sy_guard_detector d);
/** The name of action <a> ("log", "redact", "block"). */
const char *sy_guard_action_name(enum sy_guard_action a);

/** Load the table file <path>: JSON when its first non-blank byte is '{', msgpack otherwise.
 * Results as sy_table_decode(), and -errno when the file cannot be read; every message starts
 * with "<path>: ". */
int sy_table_load_file(const char *path, struct sy_table **out, char **err);

/** Parse <url> (borrowed; "http[s]://host[:port][/path]") into <o>, which then owns its
 * strings. <o> must be zeroed or hold an earlier result: its host, host_header, path_prefix and
 * key are replaced, while its ca_file (owned by <o>) and insecure are inputs that go into the
 * pool key of an https origin, so set them first. On failure <o> is unchanged and *<err> says
 * what is wrong without repeating the URL (it may hold a secret); returns -EINVAL or -ENOMEM. */
int sy_origin_parse(const char *url, struct sy_origin *o, char **err);

/** Free the strings of <o> (ca_file included) and zero it; it can be parsed into again. */
void sy_origin_free(struct sy_origin *o);

/** The public model named <name>/<len> (borrowed, need not be NUL-terminated), or NULL.
 * Binary search: O(log n_models). */
const struct sy_model *sy_table_find_model(const struct sy_table *t, const char *name, size_t len);

/** The client key whose SHA-256 is <hash> (borrowed, SY_KEY_HASH_LEN bytes), or NULL. Binary
 * search: O(log n_keys). Expiry is the caller's to check (expires_ms). */
const struct sy_key *sy_table_find_key(const struct sy_table *t,
                                       const uint8_t hash[SY_KEY_HASH_LEN]);

/** Whether key <k> may use the public model <model>/<len> (borrowed, need not be
 * NUL-terminated): true when the key lists no models or lists this one (case-sensitive). */
bool sy_key_allows_model(const struct sy_key *k, const char *model, size_t len);

/** The limits key <k> has on public model <model> (borrowed), or NULL when it has none. */
const struct sy_key_limit *sy_key_model_limit(const struct sy_key *k, const char *model);

/** Take one more reference on <t>. */
static inline struct sy_table *sy_table_ref(struct sy_table *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

/** Drop a reference; the last one frees the table and zeroes its credentials. NULL is fine. */
void sy_table_unref(struct sy_table *t);
