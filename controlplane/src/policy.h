/* SPDX-License-Identifier: Apache-2.0 */
/** The governance policy of a public model, on the control plane's side.
 *
 * The stored shape IS the routing table's shape: models.policy (jsonb) holds the `policy` map
 * of proto/README.md exactly as the operator wrote it, and models.fallbacks (text[]) its
 * `fallbacks`, an array of public model names. Nothing is translated on the way to the table:
 * compile the model as {"policy": <models.policy>, "fallbacks": to_json(models.fallbacks)} and
 * hand it to cp_policy_apply() (or put the two keys into a table's JSON form as they are). */
#pragma once

#include <stdint.h>

#include <jansson.h>

#include "sy/table.h"

/** Check the `policy` object <policy> (borrowed) that an operator sent. Returns 0, or -EINVAL
 * with *<err> the message (`policy.retry.attempts: must be a whole number from 1 to 10`) and
 * *<param> the path at fault (`policy.retry.attempts`), both for the caller to free. What needs
 * the database -- rule targets exist, no loop among fallbacks and rule targets -- is checked
 * by model_write() in migrations/004_model_policy.sql. */
int cp_policy_check(json_t *policy, char **err, char **param);

/** Set the policy of <t>->models[<model>] from the stored <policy_json> (the jsonb's text; NULL
 * or "" for none) and <fallbacks_json> (a JSON array of names; NULL or "" for none), both
 * borrowed. Every model of <t> must have its name, and every deployment its name, first:
 * fallbacks and rule targets are resolved against them as indices into those arrays. Without
 * a call, a model must still get sy_policy_init() (or stay all zero: then the encoder leaves the
 * policy out and the decoder gives it the defaults). Returns 0, or -EINVAL / -ENOMEM with
 * *<err> set (caller frees), e.g. `fallbacks[0]: unknown model "x"`. */
int cp_policy_apply(struct sy_table *t, uint32_t model, const char *policy_json,
                    const char *fallbacks_json, char **err);
