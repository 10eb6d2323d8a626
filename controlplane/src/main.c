/* SPDX-License-Identifier: Apache-2.0 */
/** switchyard-controlplane: the subcommands that run once and exit (migrate, rotate-key), and
 * the daemon (serve, the default), which lives in serve.c.
 *
 * Exit status: 0 done, 1 the work failed (database, key), 2 bad usage. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "sy/buf.h"
#include "sy/log.h"

#include "crypto.h"
#include "db.h"
#include "internal.h"
#include "migrate.h"

#define PROG "switchyard-controlplane"

static const char usage_text[] =
    "Usage: " PROG " [COMMAND] [OPTIONS]\n"
    "\n"
    "The Switchyard control plane: keeps the configuration in PostgreSQL, serves the admin API\n"
    "and publishes routing tables to the data plane.\n"
    "\n"
    "Commands:\n"
    "  serve        run the daemon (the default when no command is given)\n"
    "  migrate      apply the database migrations this binary carries, then exit\n"
    "  rotate-key   re-encrypt every provider credential sealed with an older master key\n"
    "               under the current one, in one transaction\n"
    "\n"
    "Options of migrate and rotate-key:\n"
    "  --database-url URL   PostgreSQL URL or conninfo (default: $SWITCHYARD_DATABASE_URL)\n"
    "  -h, --help           show this help\n"
    "  -V, --version        show the version\n"
    "\n"
    "Environment:\n"
    "  SWITCHYARD_DATABASE_URL     e.g. postgresql://switchyard@db/switchyard\n"
    "  SWITCHYARD_MASTER_KEY       the master key for provider credentials: 64 hex characters\n"
    "                              or base64 of 32 bytes, optionally as id:key\n"
    "  SWITCHYARD_MASTER_KEY_FILE  instead, a file of id:key lines; the first is the current\n"
    "                              key, the others older keys still used to decrypt\n"
    "  SWITCHYARD_LOG_LEVEL        error, warn, info or debug\n";

struct cli {
    const char *database_url;
};

static void out_of_memory_or(const char *err)
{
    fprintf(stderr, PROG ": %s\n", err ? err : "out of memory");
}

/* Options shared by the one-shot commands. Returns 0, 1 for --help/--version (done), 2 on bad
 * usage (reported). Leaves optind at the first operand. */
static int parse_options(int argc, char **argv, struct cli *c)
{
    static const struct option longopts[] = {
        {"database-url", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    c->database_url = getenv("SWITCHYARD_DATABASE_URL");
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "+hV", longopts, NULL)) != -1) {
        switch (ch) {
        case 'd':
            c->database_url = optarg;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return 1;
        case 'V':
            printf(PROG " %s\n", SY_VERSION);
            return 1;
        default:
            if (optopt == 'd')
                fprintf(stderr, PROG " %s: --database-url needs a value\n", argv[0]);
            else
                fprintf(stderr, PROG " %s: unknown option \"%s\" (see --help)\n", argv[0],
                        argv[optind - 1]);
            return 2;
        }
    }
    return 0;
}

static int need_database(const struct cli *c, const char *cmd)
{
    if (c->database_url && *c->database_url)
        return 0;
    fprintf(stderr, PROG " %s: no database: set SWITCHYARD_DATABASE_URL or pass --database-url\n",
            cmd);
    return 2;
}

/* ---- migrate --------------------------------------------------------------------------------- */

static void print_applied(void *ud, const struct cp_migration *m)
{
    printf("applied %03d_%s\n", m->version, m->name);
    fflush(stdout);
}

static int cmd_migrate(int argc, char **argv)
{
    struct cli c;
    char *err = NULL;
    int applied = 0;
    int rc = parse_options(argc, argv, &c);
    if (rc)
        return rc == 1 ? 0 : rc;
    if (optind < argc) {
        fprintf(stderr, PROG " migrate: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if ((rc = need_database(&c, "migrate")))
        return rc;
    if (cp_migrate(c.database_url, &applied, print_applied, NULL, &err) < 0) {
        out_of_memory_or(err);
        free(err);
        return 1;
    }
    const struct cp_migration *last =
        cp_migrations_count ? &cp_migrations[cp_migrations_count - 1] : NULL;
    if (applied == 0)
        printf("the database is up to date (schema %03d_%s)\n", last ? last->version : 0,
               last ? last->name : "none");
    else
        printf("applied %d migration%s; the database is at %03d_%s\n", applied,
               applied == 1 ? "" : "s", last->version, last->name);
    return 0;
}

/* ---- rotate-key ------------------------------------------------------------------------------ */

/* "\x" and the hex of <n> bytes of <p>, the text form of a bytea parameter; NULL when out of
 * memory. */
static char *bytea_hex(const unsigned char *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    char *s = malloc(2 * n + 3);
    if (!s)
        return NULL;
    s[0] = '\\';
    s[1] = 'x';
    for (size_t i = 0; i < n; i++) {
        s[2 + 2 * i] = digits[p[i] >> 4];
        s[3 + 2 * i] = digits[p[i] & 15];
    }
    s[2 * n + 2] = '\0';
    return s;
}

static bool exec_ok(PGconn *pg, PGresult *res, const char *what, char **err)
{
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return true;
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!m)
        m = PQerrorMessage(pg);
    cp__fail(err, -EIO, "%s: %.*s", what, (int)strcspn(m, "\n"), m);
    return false;
}

/* Re-encrypt provider <id> (<enc_text>, the bytea in text form, under <key_id>). */
static int reencrypt_one(PGconn *pg, const struct cp_crypto_ring *ring, const char *id,
                         const char *name, const char *enc_text, const char *key_id, char **err)
{
    size_t ct_len = 0, plain_len = 0, out_len = 0;
    unsigned char *ct = NULL, *out = NULL;
    char *plain = NULL, *hex = NULL;
    const char *new_id = NULL;
    int rc = -EIO;

    ct = PQunescapeBytea((const unsigned char *)enc_text, &ct_len);
    if (!ct) {
        rc = cp__fail(err, -ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = cp_crypto_decrypt(ring, key_id, ct, ct_len, &plain, &plain_len, err)) < 0)
        goto fail;
    if ((rc = cp_crypto_encrypt(ring, plain, plain_len, &out, &out_len, &new_id, err)) < 0)
        goto fail;
    if (!(hex = bytea_hex(out, out_len))) {
        rc = cp__fail(err, -ENOMEM, "out of memory");
        goto fail;
    }
    const char *params[] = {hex, new_id, id};
    PGresult *res = PQexecParams(pg,
                                 "UPDATE providers SET api_key_enc = $1::bytea, api_key_key_id = $2"
                                 " WHERE id = $3::bigint",
                                 3, NULL, params, NULL, NULL, 0);
    rc = exec_ok(pg, res, "updating the provider", err) ? 0 : -EIO;
    PQclear(res);
fail:
    if (rc < 0 && err && *err) {
        char *inner = *err;
        *err = NULL;
        cp__fail(err, rc, "provider \"%s\": %s", name, inner);
        free(inner);
    }
    PQfreemem(ct);
    free(out);
    free(hex);
    cp_crypto_free_secret(plain, plain_len + 1);
    return rc;
}

static int cmd_rotate_key(int argc, char **argv)
{
    struct cp_crypto_ring ring = CP_CRYPTO_RING_INIT;
    struct cli c;
    PGconn *pg = NULL;
    PGresult *res = NULL;
    char *err = NULL;
    int n = 0, status = 1;

    int rc = parse_options(argc, argv, &c);
    if (rc)
        return rc == 1 ? 0 : rc;
    if (optind < argc) {
        fprintf(stderr, PROG " rotate-key: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if ((rc = need_database(&c, "rotate-key")))
        return rc;
    if (cp_crypto_ring_from_env(&ring, &err) < 0)
        goto fail;
    const char *cur = cp_crypto_current_id(&ring);
    if (!(pg = cp_db_connect_blocking(c.database_url, &err)))
        goto fail;

    res = PQexec(pg, "BEGIN");
    if (!exec_ok(pg, res, "BEGIN", &err))
        goto fail;
    PQclear(res);
    /* FOR UPDATE: a concurrent admin write of a credential waits for this transaction. */
    const char *sel[] = {cur};
    res = PQexecParams(pg,
                       "SELECT id, name, api_key_enc, api_key_key_id FROM providers"
                       " WHERE api_key_enc IS NOT NULL AND api_key_key_id <> $1"
                       " ORDER BY id FOR UPDATE",
                       1, NULL, sel, NULL, NULL, 0);
    if (!exec_ok(pg, res, "reading provider credentials", &err))
        goto rollback;
    n = PQntuples(res);
    for (int i = 0; i < n; i++)
        if (reencrypt_one(pg, &ring, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                          PQgetvalue(res, i, 2), PQgetvalue(res, i, 3), &err) < 0)
            goto rollback;
    PQclear(res);
    res = NULL;
    if (n > 0) {
        char count[16];
        snprintf(count, sizeof(count), "%d", n);
        const char *audit[] = {count, cur};
        res = PQexecParams(pg,
                           "INSERT INTO audit_log (actor, action, resource, detail)"
                           " VALUES ('cli', 'rotate-key', 'providers',"
                           " jsonb_build_object('count', $1::int, 'key_id', $2::text))",
                           2, NULL, audit, NULL, NULL, 0);
        if (!exec_ok(pg, res, "writing the audit log", &err))
            goto rollback;
        PQclear(res);
    }
    res = PQexec(pg, "COMMIT");
    if (!exec_ok(pg, res, "COMMIT", &err))
        goto fail;
    printf("re-encrypted %d provider credential%s with master key \"%s\"\n", n, n == 1 ? "" : "s",
           cur);
    status = 0;
    goto done;
rollback:
    PQclear(res);
    res = PQexec(pg, "ROLLBACK");
    fprintf(stderr, PROG " rotate-key: %s; nothing was changed\n", err ? err : "out of memory");
    goto done;
fail:
    out_of_memory_or(err);
done:
    PQclear(res);
    PQfinish(pg);
    free(err);
    cp_crypto_ring_free(&ring);
    return status;
}

/* ---- hidden commands for the tests ----------------------------------------------------------- */

/* debug-encrypt: seal stdin (one trailing newline dropped) under the current master key and
 * print "<key id>\t\x<hex>", ready for a bytea literal. */
static int cmd_debug_encrypt(int argc, char **argv)
{
    struct cp_crypto_ring ring = CP_CRYPTO_RING_INIT;
    struct sy_buf in = SY_BUF_INIT;
    unsigned char *out = NULL;
    size_t out_len = 0;
    const char *key_id;
    char *err = NULL, *hex = NULL, chunk[4096];
    size_t n;
    int status = 1;

    while ((n = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
        sy_buf_append(&in, chunk, n);
    if (in.len && in.data[in.len - 1] == '\n')
        in.len--;
    if (cp_crypto_ring_from_env(&ring, &err) < 0 ||
        cp_crypto_encrypt(&ring, in.len ? in.data : "", in.len, &out, &out_len, &key_id, &err) < 0)
        goto fail;
    if (!(hex = bytea_hex(out, out_len)))
        goto fail;
    printf("%s\t%s\n", key_id, hex);
    status = 0;
    goto done;
fail:
    out_of_memory_or(err);
done:
    if (in.data) {
        size_t cap = in.cap;
        cp_crypto_free_secret(sy_buf_steal(&in, NULL), cap);
    }
    free(out);
    free(hex);
    free(err);
    cp_crypto_ring_free(&ring);
    return status;
}

/* debug-decrypt KEY_ID HEX: print the plaintext of a stored credential. */
static int cmd_debug_decrypt(int argc, char **argv)
{
    struct cp_crypto_ring ring = CP_CRYPTO_RING_INIT;
    unsigned char *ct = NULL;
    char *plain = NULL, *err = NULL;
    size_t ct_len = 0, plain_len = 0;
    int status = 1;

    if (argc != 3) {
        fprintf(stderr, PROG " debug-decrypt: usage: debug-decrypt KEY_ID \\xHEX\n");
        return 2;
    }
    ct = PQunescapeBytea((const unsigned char *)argv[2], &ct_len);
    if (!ct || cp_crypto_ring_from_env(&ring, &err) < 0 ||
        cp_crypto_decrypt(&ring, argv[1], ct, ct_len, &plain, &plain_len, &err) < 0)
        goto fail;
    fwrite(plain, 1, plain_len, stdout);
    putchar('\n');
    status = 0;
    goto done;
fail:
    out_of_memory_or(err);
done:
    PQfreemem(ct);
    cp_crypto_free_secret(plain, plain_len + 1);
    free(err);
    cp_crypto_ring_free(&ring);
    return status;
}

/* ---- dispatch -------------------------------------------------------------------------------- */

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
};

static const struct command commands[] = {
    {"serve", cp_serve},
    {"migrate", cmd_migrate},
    {"rotate-key", cmd_rotate_key},
    {"debug-encrypt", cmd_debug_encrypt}, /* hidden: for the tests */
    {"debug-decrypt", cmd_debug_decrypt}, /* hidden: for the tests */
};

int main(int argc, char **argv)
{
    sy_log_set_ident("controlplane");
    const char *level = getenv("SWITCHYARD_LOG_LEVEL");
    if (level && *level && sy_log_set_level(level) < 0) {
        fprintf(stderr,
                PROG ": SWITCHYARD_LOG_LEVEL: \"%s\" is not one of error, warn, info, "
                     "debug\n",
                level);
        return 2;
    }

    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        printf(PROG " %s\n", SY_VERSION);
        return 0;
    }
    /* No command, or options first: serve, with the whole command line. */
    if (argc < 2 || argv[1][0] == '-')
        return cp_serve(argc, argv);
    /* The one-shot commands print their outcome; their log shows only trouble by default. */
    if (!(level && *level) && strcmp(argv[1], "serve") != 0)
        sy_log_set_level("warn");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, PROG ": unknown command \"%s\" (see --help)\n", argv[1]);
    return 2;
}
