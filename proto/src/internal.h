/* SPDX-License-Identifier: Apache-2.0 */
/** Declarations shared between the files of proto/src. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Set *<err> (when <err> is not NULL) to a new printf-formatted message the caller frees, and
 * return <rc>. Aborts on allocation failure, as sy_buf does: messages are small. */
int sy__proto_fail(char **err, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/** Whether <c> may appear in an HTTP field name (RFC 9110 "tchar"). */
bool sy__is_tchar(unsigned char c);

/** Deepest msgpack nesting a table or a socket message may have. */
#define SY__MSGPACK_MAX_DEPTH 24

/** Check, before msgpack-c sees them, that <data>/<len> holds exactly one well-formed msgpack
 * item with every declared size inside the input (so that a hostile length cannot make the
 * unpacker allocate) nested at most SY__MSGPACK_MAX_DEPTH deep. <what> names the item in the
 * messages ("table", "message"). Returns 0 or -EINVAL with *<err> set. */
int sy__msgpack_prescan(const char *data, size_t len, const char *what, char **err);

struct sy_table;

/** Decode msgpack <data>/<len> (borrowed), a map {"policy": {...}, "fallbacks": [...]} (both
 * optional), as the policy of a public model. With <t> NULL only check it, strictly: keys no
 * field list names are refused, and names of models and deployments are not looked up. With
 * <t>, resolve those names against <t>'s models and deployments as they stand and replace the
 * policy of <t>->models[<model>]. Paths in messages start at "policy" or "fallbacks"; when
 * <err_path> is not NULL it receives a copy of the path at fault (caller frees). Returns 0,
 * -EINVAL or -ENOMEM. */
int sy__policy_decode(struct sy_table *t, uint32_t model, const char *data, size_t len, char **err,
                      char **err_path);

/* ---- guardrail.c ------------------------------------------------------------------------ */

struct msgpack_object;
struct msgpack_packer;
struct sy_guardrail;

/** Decode the table's `guardrails` array <v> into <t> (which must hold none yet), leniently:
 * unknown keys are skipped. Returns 0 or -EINVAL with *<err> naming the path
 * (`guardrails[1].input.detectors[0]: ...`); <t> then holds a partial array for table_free. */
int sy__guardrails_decode(struct sy_table *t, const struct msgpack_object *v, char **err);
/** Check one guardrail document, msgpack <data>/<len> (borrowed), strictly: unknown keys are
 * refused. On success fills <out> unless NULL (free with sy__guardrail_free). Returns 0 or
 * -EINVAL with *<err> and *<err_path> (either may be NULL; caller frees). */
int sy__guardrail_check(const char *data, size_t len, struct sy_guardrail *out, char **err,
                        char **err_path);
/** Append the `guardrails` array of <t> to <pk>: every key spelled out. */
void sy__guardrails_pack(struct msgpack_packer *pk, const struct sy_table *t);
/** Free what <t>'s guardrails own, and the array. */
void sy__guardrails_free(struct sy_table *t);
/** Free what one guardrail owns, and zero it. */
void sy__guardrail_free(struct sy_guardrail *gr);
