/* SPDX-License-Identifier: Apache-2.0 */
/** Schema migrations: migrations/NNN_name.sql, embedded into the binary at build time
 * (gen_migrations.py), applied in order at start-up and recorded in schema_migrations.
 *
 * Several control planes may start at once against one database: the run holds a session
 * advisory lock (CP_MIGRATE_LOCK_ID) from before it reads schema_migrations until it is done,
 * and each migration commits in one transaction together with its schema_migrations row, so
 * every migration is applied exactly once and a failure leaves no half-applied one. A database
 * that records a version this binary does not know (it is ahead of the binary) is refused. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

/** pg_advisory_lock() key of migration runs: "SYMIGRAT" in ASCII. */
#define CP_MIGRATE_LOCK_ID INT64_C(0x53594d4947524154)

struct cp_migration {
    int version;      /* the NNN of the file name; increasing, gaps allowed */
    const char *name; /* the rest of the file name, without ".sql" */
    const char *sql;  /* the file's text: statements without transaction control */
};

/** The embedded migrations in version order (generated at build time). */
extern const struct cp_migration cp_migrations[];
extern const size_t cp_migrations_count;

/** Called for each migration as it is applied (after its commit), with <ud>. */
typedef void (*cp_migrate_applied_cb)(void *ud, const struct cp_migration *m);

/** Bring the database behind <pg> (a connected, blocking connection, borrowed) up to date: take
 * the lock, create schema_migrations if missing, apply the missing migrations, unlock. Returns
 * 0 with *<applied> (may be NULL) the number applied, or a negative code with *<err> (caller
 * frees): -EPROTO the database is ahead of this binary, -EIO an SQL or connection failure. */
int cp_migrate_conn(PGconn *pg, int *applied, cp_migrate_applied_cb cb, void *ud, char **err);

/** cp_migrate_conn() on a connection of its own to <conninfo> (borrowed), closed before it
 * returns. For start-up, before the loop serves: it blocks. */
int cp_migrate(const char *conninfo, int *applied, cp_migrate_applied_cb cb, void *ud, char **err);
