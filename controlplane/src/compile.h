/* SPDX-License-Identifier: Apache-2.0 */
/** The compiler of routing tables: the whole config, read from PostgreSQL in one statement (one
 * snapshot, so a table never mixes two versions of the config), turned into a struct sy_table,
 * encoded as msgpack (proto/README.md) and decoded back to prove that every data-plane worker
 * will accept it.
 *
 * A problem confined to one row does not stop the table: a provider whose credential does not
 * decrypt, or an enabled deployment without a credential, is compiled disabled; a model with no
 * target, or whose targets all weigh 0, is left out; each with an error or warning in the log
 * naming the row. Anything else that makes the table fail to decode fails the compile, and the
 * caller keeps the table it has. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"

struct cp_server;

/** A compiled routing table. */
struct cp_compiled {
    uint64_t version; /* config_state.version the table was read at */
    char *bytes;      /* the msgpack table; holds the credentials: cp__compiled_free wipes it */
    size_t len;
    uint32_t n_deployments, n_models, n_keys;
    uint32_t n_problems; /* rows compiled disabled or left out (each logged) */
    uint64_t query_ms;   /* the statement, from queueing to its result */
    uint64_t build_ms;   /* parse, build, encode and check */
    /* enabled guardrails in the table */
    uint32_t n_guardrails;
};

/** The statement that returns the whole config as one JSON document (one row, one column):
 * {version, providers[], deployments[], models[], keys[], guardrails[]}. */
extern const char cp__compile_sql[];

/** Build the table from the document <json>/<len> (borrowed) that cp__compile_sql returned,
 * decrypting credentials with <ring> (borrowed, only read: this may run on a worker thread).
 * <created_ms> goes into the table. On success fills <out> (free it with cp__compiled_free())
 * and returns 0; otherwise returns -EINVAL with *<err> (caller frees) saying what is wrong, and
 * <out> holds nothing to free. */
int cp__compile_document(const char *json, size_t len, const struct cp_crypto_ring *ring,
                         int64_t created_ms, struct cp_compiled *out, char **err);

/** Wipe and free what <c> holds; it is zeroed and may be filled again. NULL is fine. */
void cp__compiled_free(struct cp_compiled *c);

/** The outcome of cp__compile_run: <res> (taken: free it with cp__compiled_free() and free())
 * or NULL with <err> (borrowed) saying why, such as "database unavailable: ...". */
typedef void (*cp_compile_cb)(void *ud, struct cp_compiled *res, const char *err);

/** Compile the current config of <cp> (borrowed): the query runs on cp->db, the build on the
 * libuv thread pool so the loop keeps serving. <cb> runs exactly once, from the loop, with <ud>
 * (borrowed), also when the database closes meanwhile. Returns 0, or -ENOMEM / -ESHUTDOWN (the
 * callback will not run). */
int cp__compile_run(struct cp_server *cp, cp_compile_cb cb, void *ud);
