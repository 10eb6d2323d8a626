/* SPDX-License-Identifier: Apache-2.0 */
/** The control-plane daemon's state, shared by serve.c (start-up, settings, signals), the admin
 * API (api*.c) and the publisher (compile.c, publish.c). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "crypto.h"
#include "db.h"
#include "sy/buf.h"
#include "sy/http_server.h"

struct cp_publisher;
struct cp_usage;
struct cp_events;
struct cp_alerts;
struct cp_audit;
struct sy_tls_server;
struct cp_budgets;

/** Settings; each is a flag and an environment variable (serve.c). */
struct cp_config {
    char *database_url;   /* SWITCHYARD_DATABASE_URL, --database-url */
    char *admin_listen;   /* SWITCHYARD_ADMIN_LISTEN, --admin-listen (127.0.0.1:9090) */
    char *admin_token;    /* SWITCHYARD_ADMIN_TOKEN(_FILE), --admin-token(-file): read-write */
    char *readonly_token; /* SWITCHYARD_READONLY_TOKEN(_FILE), --readonly-token(-file) */
    char *socket_path;    /* SWITCHYARD_SOCKET, --socket: where data planes connect */
    char *node_id;        /* SWITCHYARD_NODE_ID, --node-id (default: the host name) */
    char *port_file;      /* --port-file: write the admin port once listening (tests) */
    char *log_level;      /* SWITCHYARD_LOG_LEVEL, --log-level */
    int usage_retention_days;  /* SWITCHYARD_USAGE_RETENTION_DAYS, --usage-retention-days (30) */
    int events_retention_days; /* SWITCHYARD_EVENTS_RETENTION_DAYS, --events-retention-days (30) */
    int usage_flush_ms;        /* SWITCHYARD_USAGE_FLUSH_MS, --usage-flush-ms (10000) */
    int alert_interval_ms;     /* SWITCHYARD_ALERT_INTERVAL_MS, --alert-interval-ms (15000) */
    char *webhook_ca_file;     /* SWITCHYARD_WEBHOOK_CA_FILE, --webhook-ca-file (NULL) */
    int webhook_timeout_ms;    /* SWITCHYARD_WEBHOOK_TIMEOUT_MS, --webhook-timeout-ms (10000) */
    int webhook_max_attempts;  /* SWITCHYARD_WEBHOOK_MAX_ATTEMPTS, --webhook-max-attempts (8) */
    int webhook_backoff_ms;    /* SWITCHYARD_WEBHOOK_BACKOFF_MS, --webhook-backoff-ms (2000) */
    int webhook_concurrency;   /* SWITCHYARD_WEBHOOK_CONCURRENCY, --webhook-concurrency (4) */
    int heartbeat_ms;          /* SWITCHYARD_HEARTBEAT_MS, --heartbeat-ms (5000) */
    char *tokens_file;         /* SWITCHYARD_ADMIN_TOKENS_FILE, --admin-tokens-file: named tokens */
    struct cp_token *tokens;   /* ...as loaded from it (tokens.c); re-read on SIGHUP */
    size_t n_tokens;
    char *admin_tls_cert; /* SWITCHYARD_ADMIN_TLS_CERT, --admin-tls-cert: HTTPS certificate chain */
    char *admin_tls_key;  /* SWITCHYARD_ADMIN_TLS_KEY, --admin-tls-key: its private key */
};

enum cp_role {
    CP_ROLE_NONE = 0,
    CP_ROLE_READ,  /* the read-only token: GET only */
    CP_ROLE_ADMIN, /* the admin token: everything */
    CP_ROLE_MAX,
};

/** A named token from --admin-tokens-file: only its digest is kept. */
struct cp_token {
    char *name;
    enum cp_role role;
    unsigned char hash[CP_CRYPTO_HASH_LEN]; /* SHA-256 of the token */
};

/** Read the named tokens of <path> (lines name:role:token, role admin or read). On success
 * *<out>/<n> hold them (free with cp__tokens_free). Returns 0, or a negative errno with a
 * message naming the file and line in *<err> (caller frees). */
int cp__tokens_load(const char *path, struct cp_token **out, size_t *n, char **err);
/** Wipe and free <n> tokens <t> (NULL is fine). */
void cp__tokens_free(struct cp_token *t, size_t n);

struct cp_server {
    uv_loop_t loop;
    struct cp_config cfg;
    struct cp_db *db;
    struct cp_crypto_ring ring;
    struct sy_http_server http;
    struct cp_publisher *pub; /* NULL until the publisher starts */
    struct cp_usage *usage;   /* usage.c: NULL until started, and after stop */
    struct cp_events *events; /* events.c: NULL without a segment, and after stop */
    struct cp_alerts *alerts; /* alerts.c: NULL until started, and after stop */
    uv_signal_t sig_term, sig_int;
    uv_signal_t sig_hup;       /* reloads the admin listener's certificate */
    struct sy_tls_server *tls; /* the admin listener's TLS context, or NULL for plain HTTP */
    struct cp_audit *audit;    /* api_audit.c: the queue of audit records to store */
    bool stopping;
    int64_t started_ms;         /* wall clock */
    struct cp_budgets *budgets; /* budget.c: NULL until started, and after stop */
};

/* ---- publish.c --------------------------------------------------------------------------- */

/** Start the publisher: listen on the data-plane socket, LISTEN for config changes, compile and
 * publish the current config. Returns 0 or a negative errno with *<err> (caller frees). */
int cp__publisher_start(struct cp_server *cp, char **err);
/** Close the socket and every data-plane connection (on stop). Safe to call twice. */
void cp__publisher_stop(struct cp_server *cp);
/** The database came up (recompile: notifications may have been missed) or went down. */
void cp__publisher_db_state(struct cp_server *cp, bool up);
/** A new JSON object describing what is published: config version, compile time, and every
 * connected data-plane worker with the version it serves (for GET /admin/v1/status). */
struct json_t *cp__publisher_status(struct cp_server *cp);

/* ---- api.c ------------------------------------------------------------------------------- */

/** Serve one admin request (the http server's on_request). */
void cp__api_request(struct sy_http_request *req);
/** A request ended (the http server's on_request_done): an admin write is audited. */
void cp__api_request_done(struct sy_http_request *req);

/* ---- api_audit.c ------------------------------------------------------------------------- */

/** Start the audit log's writer (before the admin listener serves). Returns 0. */
int cp__audit_start(struct cp_server *cp, char **err);
/** Stop it, before the database closes: records still waiting for the database are written to
 * the log instead. Safe to call twice. */
void cp__audit_stop(struct cp_server *cp);
