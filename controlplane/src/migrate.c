/* SPDX-License-Identifier: Apache-2.0 */
/** Apply the embedded migrations (see migrate.h). Blocking libpq: this runs before the loop
 * serves, or from the `migrate` command. */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sy/log.h"

#include "db.h"
#include "internal.h"
#include "migrate.h"

static const char create_table_sql[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                       " version int PRIMARY KEY,"
                                       " name text NOT NULL,"
                                       " applied_at timestamptz NOT NULL DEFAULT now())";

/* Run <sql> with <nparams> text <params>; true if the server accepted it. On failure *<err>
 * says "<what>: <server message>". *<out>, when asked for, takes the result (caller clears). */
static bool run(PGconn *pg, const char *what, const char *sql, int nparams,
                const char *const *params, PGresult **out, char **err)
{
    PGresult *res = PQexecParams(pg, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        if (!m)
            m = PQerrorMessage(pg);
        cp__fail(err, -EIO, "%s: %.*s", what, (int)strcspn(m, "\n"), m);
        PQclear(res);
        return false;
    }
    if (out)
        *out = res;
    else
        PQclear(res);
    return true;
}

/* Line number of the 1-based character <pos> in <sql> (PG_DIAG_STATEMENT_POSITION counts
 * characters; UTF-8 continuation bytes are skipped). */
static int line_of(const char *sql, long pos)
{
    int line = 1;
    for (long chars = 0; *sql && chars < pos - 1; sql++) {
        if (((unsigned char)*sql & 0xc0) != 0x80)
            chars++;
        if (*sql == '\n')
            line++;
    }
    return line;
}

/* Apply <m> in a transaction with its schema_migrations row. */
static int apply_one(PGconn *pg, const struct cp_migration *m, char **err)
{
    char version[16];
    snprintf(version, sizeof(version), "%d", m->version);
    const char *params[] = {version, m->name};

    if (!run(pg, "BEGIN", "BEGIN", 0, NULL, NULL, err))
        return -EIO;
    /* PQexec: a migration is a script of several statements without parameters. */
    PGresult *res = PQexec(pg, m->sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        const char *pos = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
        if (!msg)
            msg = PQerrorMessage(pg);
        if (pos)
            cp__fail(err, -EIO, "migration %03d_%s failed at line %d: %.*s", m->version, m->name,
                     line_of(m->sql, strtol(pos, NULL, 10)), (int)strcspn(msg, "\n"), msg);
        else
            cp__fail(err, -EIO, "migration %03d_%s failed: %.*s", m->version, m->name,
                     (int)strcspn(msg, "\n"), msg);
        PQclear(res);
        goto fail;
    }
    PQclear(res);
    if (!run(pg, "recording the migration",
             "INSERT INTO schema_migrations (version, name) VALUES ($1::int, $2)", 2, params, NULL,
             err))
        goto fail;
    if (!run(pg, "COMMIT", "COMMIT", 0, NULL, NULL, err))
        goto fail;
    return 0;
fail:
    PQclear(PQexec(pg, "ROLLBACK"));
    return -EIO;
}

/* The embedded migration numbered <version>, or NULL. */
static const struct cp_migration *migration_of(int version)
{
    for (size_t i = 0; i < cp_migrations_count; i++)
        if (cp_migrations[i].version == version)
            return &cp_migrations[i];
    return NULL;
}

int cp_migrate_conn(PGconn *pg, int *applied, cp_migrate_applied_cb cb, void *ud, char **err)
{
    char lock_id[24];
    const char *lock_param[] = {lock_id};
    PGresult *res = NULL;
    bool locked = false;
    bool *done = NULL;
    int rc = -EIO, count = 0;
    const int known = (int)cp_migrations_count;
    /* Versions increase but may have gaps (numbers reserved by work not merged yet). */
    const int newest = known ? cp_migrations[known - 1].version : 0;

    if (applied)
        *applied = 0;
    snprintf(lock_id, sizeof(lock_id), "%" PRId64, CP_MIGRATE_LOCK_ID);
    done = calloc((size_t)newest + 1, sizeof(*done));
    if (!done)
        return cp__fail(err, -ENOMEM, "out of memory");

    /* Try first, so that a wait behind another control plane is visible in the log. */
    if (!run(pg, "taking the migration lock", "SELECT pg_try_advisory_lock($1::bigint)", 1,
             lock_param, &res, err))
        goto fail;
    locked = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    res = NULL;
    if (!locked) {
        sy_log(SY_LOG_INFO, "migrate", "another control plane is migrating; waiting");
        if (!run(pg, "waiting for the migration lock", "SELECT pg_advisory_lock($1::bigint)", 1,
                 lock_param, NULL, err))
            goto fail;
        locked = true;
    }
    if (!run(pg, "creating schema_migrations", create_table_sql, 0, NULL, NULL, err))
        goto fail;
    if (!run(pg, "reading schema_migrations",
             "SELECT version, name FROM schema_migrations ORDER BY version", 0, NULL, &res, err))
        goto fail;
    for (int i = 0; i < PQntuples(res); i++) {
        int v = atoi(PQgetvalue(res, i, 0));
        const char *name = PQgetvalue(res, i, 1);
        const struct cp_migration *mine = migration_of(v);
        if (v < 1 || v > newest || !mine) {
            rc = cp__fail(err, -EPROTO,
                          "the database schema is at version %03d (%s), newer than this "
                          "switchyard-controlplane knows (up to %03d_%s): run a newer "
                          "switchyard-controlplane against this database",
                          v, name, newest, known ? cp_migrations[known - 1].name : "none");
            goto fail;
        }
        if (strcmp(name, mine->name) != 0)
            sy_log(SY_LOG_WARN, "migrate",
                   "migration %03d is recorded as '%s' but this binary calls it '%s'", v, name,
                   mine->name);
        done[v] = true;
    }
    PQclear(res);
    res = NULL;

    for (int i = 0; i < known; i++) {
        const struct cp_migration *m = &cp_migrations[i];
        if (done[m->version])
            continue;
        if (apply_one(pg, m, err) < 0)
            goto fail;
        count++;
        sy_log(SY_LOG_INFO, "migrate", "applied migration %03d_%s", m->version, m->name);
        if (cb)
            cb(ud, m);
    }
    rc = 0;
fail:
    PQclear(res);
    if (locked && PQstatus(pg) == CONNECTION_OK)
        PQclear(PQexecParams(pg, "SELECT pg_advisory_unlock($1::bigint)", 1, NULL, lock_param, NULL,
                             NULL, 0));
    free(done);
    if (applied)
        *applied = count;
    return rc;
}

int cp_migrate(const char *conninfo, int *applied, cp_migrate_applied_cb cb, void *ud, char **err)
{
    if (applied)
        *applied = 0;
    PGconn *pg = cp_db_connect_blocking(conninfo, err);
    if (!pg)
        return -EIO;
    int rc = cp_migrate_conn(pg, applied, cb, ud, err);
    PQfinish(pg);
    return rc;
}
