/* SPDX-License-Identifier: Apache-2.0 */
/** The control-plane daemon: settings, start-up (migrations, master key, database), the admin
 * listener, the publisher, and a clean stop on SIGTERM/SIGINT. */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "alerts.h"
#include "api.h"
#include "budget.h"
#include "events.h"
#include "internal.h"
#include "metrics.h"
#include "migrate.h"
#include "server.h"
#include "sy/log.h"
#include "sy/tls_server.h"
#include "sy/util.h"
#include "usage.h"

static const char usage_text[] =
    "Usage: switchyard-controlplane [serve] [OPTIONS]\n"
    "\n"
    "Run the control plane: the admin API, and the publisher of routing tables to the data\n"
    "plane. Every option is also an environment variable.\n"
    "\n"
    "  --database-url URL        SWITCHYARD_DATABASE_URL (required)\n"
    "  --admin-listen HOST:PORT  SWITCHYARD_ADMIN_LISTEN (default 127.0.0.1:9090)\n"
    "  --admin-token TOKEN       SWITCHYARD_ADMIN_TOKEN: read-write admin token (required, or:)\n"
    "  --admin-token-file FILE   SWITCHYARD_ADMIN_TOKEN_FILE\n"
    "  --readonly-token TOKEN    SWITCHYARD_READONLY_TOKEN: token that can only read\n"
    "  --readonly-token-file F   SWITCHYARD_READONLY_TOKEN_FILE\n"
    "  --socket PATH             SWITCHYARD_SOCKET: Unix socket for the data plane\n"
    "                            (default /run/switchyard/control.sock)\n"
    "  --node-id ID              SWITCHYARD_NODE_ID (default: the host name)\n"
    "  --port-file FILE          write the admin port here once listening\n"
    "  --log-level LEVEL         SWITCHYARD_LOG_LEVEL: error, warn, info, debug\n"
    "  --shm PATH                SWITCHYARD_SHM: the data plane's shared memory, read for\n"
    "                            GET /metrics (e.g. /dev/shm/switchyard-8080; default none)\n"
    "  --metrics-token TOKEN     SWITCHYARD_METRICS_TOKEN: Bearer token GET /metrics wants\n"
    "                            (default: none needed)\n"
    "  --metrics-token-file F    SWITCHYARD_METRICS_TOKEN_FILE\n"
    "  --usage-retention-days N  SWITCHYARD_USAGE_RETENTION_DAYS: per-minute usage kept this\n"
    "                            long, then compacted into hours (default 30)\n"
    "  --events-retention-days N SWITCHYARD_EVENTS_RETENTION_DAYS: decision log kept (30)\n"
    "  --usage-flush-ms MS       SWITCHYARD_USAGE_FLUSH_MS: usage flush period (10000)\n"
    "  --alert-interval-ms MS    SWITCHYARD_ALERT_INTERVAL_MS: alert rules evaluated this\n"
    "                            often (15000)\n"
    "  --webhook-ca-file FILE    SWITCHYARD_WEBHOOK_CA_FILE: CA certificates trusted for\n"
    "                            HTTPS webhooks, besides the system store\n"
    "  --webhook-timeout-ms MS   SWITCHYARD_WEBHOOK_TIMEOUT_MS: one webhook attempt (10000)\n"
    "  --webhook-max-attempts N  SWITCHYARD_WEBHOOK_MAX_ATTEMPTS: attempts before giving up (8)\n"
    "  --webhook-backoff-ms MS   SWITCHYARD_WEBHOOK_BACKOFF_MS: first retry delay, doubled\n"
    "                            after each failure, with jitter (2000)\n"
    "  --webhook-concurrency N   SWITCHYARD_WEBHOOK_CONCURRENCY: sends at once (4)\n"
    "  --heartbeat-ms MS         SWITCHYARD_HEARTBEAT_MS: node heartbeat period (5000); a node\n"
    "                            not heard from for 3 periods no longer shares the limits\n"
    "  --admin-tokens-file F     SWITCHYARD_ADMIN_TOKENS_FILE: named tokens, lines\n"
    "                            name:admin|read:token; re-read on SIGHUP\n"
    "  --admin-tls-cert FILE     SWITCHYARD_ADMIN_TLS_CERT: serve the admin API over HTTPS with\n"
    "                            this certificate chain (PEM); re-read on SIGHUP\n"
    "  --admin-tls-key FILE      SWITCHYARD_ADMIN_TLS_KEY: its private key (PEM)\n"
    "  SWITCHYARD_MASTER_KEY / SWITCHYARD_MASTER_KEY_FILE: the master key for credentials\n";

static char *env_dup(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? sy_xstrdup(v) : NULL;
}

/* The first line of <path>, trimmed; NULL with *<err> when unreadable or empty. */
static char *read_token_file(const char *path, char **err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        cp__fail(err, -errno, "cannot read token file %s: %s", path, strerror(errno));
        return NULL;
    }
    char line[1024];
    char *tok = NULL;
    if (fgets(line, sizeof(line), f)) {
        size_t n = strcspn(line, "\r\n");
        while (n && (line[n - 1] == ' ' || line[n - 1] == '\t'))
            n--;
        if (n)
            tok = sy_xstrndup(line, n);
    }
    fclose(f);
    if (!tok)
        cp__fail(err, -EINVAL, "token file %s is empty", path);
    return tok;
}

static void config_free(struct cp_config *c)
{
    SY_FREE(c->database_url);
    SY_FREE(c->admin_listen);
    if (c->admin_token)
        cp_crypto_free_secret(c->admin_token, strlen(c->admin_token));
    if (c->readonly_token)
        cp_crypto_free_secret(c->readonly_token, strlen(c->readonly_token));
    c->admin_token = c->readonly_token = NULL;
    SY_FREE(c->socket_path);
    SY_FREE(c->node_id);
    SY_FREE(c->port_file);
    SY_FREE(c->log_level);
    SY_FREE(c->webhook_ca_file);
    SY_FREE(c->tokens_file);
    cp__tokens_free(c->tokens, c->n_tokens);
    c->tokens = NULL;
    c->n_tokens = 0;
    SY_FREE(c->admin_tls_cert);
    SY_FREE(c->admin_tls_key);
}

static void set(char **field, const char *v)
{
    free(*field);
    *field = sy_xstrdup(v);
}

/* Long options without a short letter. */
enum {
    OPT_USAGE_RETENTION = 1000,
    OPT_EVENTS_RETENTION,
    OPT_USAGE_FLUSH,
    OPT_ALERT_INTERVAL,
    OPT_WEBHOOK_CA_FILE,
    OPT_WEBHOOK_TIMEOUT,
    OPT_WEBHOOK_ATTEMPTS,
    OPT_WEBHOOK_BACKOFF,
    OPT_WEBHOOK_CONCURRENCY,
    OPT_HEARTBEAT,
    OPT_ADMIN_TLS_CERT,
    OPT_ADMIN_TOKENS_FILE,
    OPT_ADMIN_TLS_KEY,
    OPT_LONG_MAX,
};

/* <text> (NULL: <dflt>) as a whole number in [<min>, <max>] into *<out>; -EINVAL naming
 * <flag> otherwise. */
static int int_setting(const char *text, const char *flag, int min, int max, int dflt, int *out,
                       char **err)
{
    uint64_t v;
    *out = dflt;
    if (!text)
        return 0;
    if (!sy_parse_u64(text, strlen(text), &v) || v < (uint64_t)min || v > (uint64_t)max)
        return cp__fail(err, -EINVAL, "%s must be a whole number from %d to %d, not \"%s\"",
                        flag, min, max, text);
    *out = (int)v;
    return 0;
}

/* Defaults, then the environment, then flags, into <c> and the metrics module's <mc>.
 * Returns 0, 1 after --help, or -EINVAL. */
static int config_load(struct cp_config *c, struct cp_metrics_config *mc, int argc, char **argv,
                       char **err)
{
    memset(c, 0, sizeof(*c));
    memset(mc, 0, sizeof(*mc));
    mc->shm_path = env_dup("SWITCHYARD_SHM");
    mc->token = env_dup("SWITCHYARD_METRICS_TOKEN");
    char *metrics_file = env_dup("SWITCHYARD_METRICS_TOKEN_FILE");
    c->database_url = env_dup("SWITCHYARD_DATABASE_URL");
    c->admin_listen = env_dup("SWITCHYARD_ADMIN_LISTEN");
    c->admin_token = env_dup("SWITCHYARD_ADMIN_TOKEN");
    c->readonly_token = env_dup("SWITCHYARD_READONLY_TOKEN");
    c->socket_path = env_dup("SWITCHYARD_SOCKET");
    c->node_id = env_dup("SWITCHYARD_NODE_ID");
    c->log_level = env_dup("SWITCHYARD_LOG_LEVEL");
    c->admin_tls_cert = env_dup("SWITCHYARD_ADMIN_TLS_CERT");
    c->tokens_file = env_dup("SWITCHYARD_ADMIN_TOKENS_FILE");
    c->admin_tls_key = env_dup("SWITCHYARD_ADMIN_TLS_KEY");
    char *admin_file = env_dup("SWITCHYARD_ADMIN_TOKEN_FILE");
    char *ro_file = env_dup("SWITCHYARD_READONLY_TOKEN_FILE");
    char *usage_days = env_dup("SWITCHYARD_USAGE_RETENTION_DAYS");
    char *events_days = env_dup("SWITCHYARD_EVENTS_RETENTION_DAYS");
    char *flush_ms = env_dup("SWITCHYARD_USAGE_FLUSH_MS");
    char *alert_ms = env_dup("SWITCHYARD_ALERT_INTERVAL_MS");
    char *wh_timeout = env_dup("SWITCHYARD_WEBHOOK_TIMEOUT_MS");
    char *wh_attempts = env_dup("SWITCHYARD_WEBHOOK_MAX_ATTEMPTS");
    char *wh_backoff = env_dup("SWITCHYARD_WEBHOOK_BACKOFF_MS");
    char *wh_conc = env_dup("SWITCHYARD_WEBHOOK_CONCURRENCY");
    c->webhook_ca_file = env_dup("SWITCHYARD_WEBHOOK_CA_FILE");
    char *heartbeat_ms = env_dup("SWITCHYARD_HEARTBEAT_MS");

    static const struct option opts[] = {
        {"database-url", required_argument, NULL, 'd'},
        {"admin-listen", required_argument, NULL, 'l'},
        {"admin-token", required_argument, NULL, 't'},
        {"admin-token-file", required_argument, NULL, 'T'},
        {"readonly-token", required_argument, NULL, 'r'},
        {"readonly-token-file", required_argument, NULL, 'R'},
        {"socket", required_argument, NULL, 's'},
        {"node-id", required_argument, NULL, 'n'},
        {"port-file", required_argument, NULL, 'p'},
        {"log-level", required_argument, NULL, 'L'},
        {"shm", required_argument, NULL, 'S'},
        {"metrics-token", required_argument, NULL, 'm'},
        {"metrics-token-file", required_argument, NULL, 'M'},
        {"usage-retention-days", required_argument, NULL, OPT_USAGE_RETENTION},
        {"events-retention-days", required_argument, NULL, OPT_EVENTS_RETENTION},
        {"usage-flush-ms", required_argument, NULL, OPT_USAGE_FLUSH},
        {"alert-interval-ms", required_argument, NULL, OPT_ALERT_INTERVAL},
        {"webhook-ca-file", required_argument, NULL, OPT_WEBHOOK_CA_FILE},
        {"webhook-timeout-ms", required_argument, NULL, OPT_WEBHOOK_TIMEOUT},
        {"webhook-max-attempts", required_argument, NULL, OPT_WEBHOOK_ATTEMPTS},
        {"webhook-backoff-ms", required_argument, NULL, OPT_WEBHOOK_BACKOFF},
        {"webhook-concurrency", required_argument, NULL, OPT_WEBHOOK_CONCURRENCY},
        {"heartbeat-ms", required_argument, NULL, OPT_HEARTBEAT},
        {"admin-tls-cert", required_argument, NULL, OPT_ADMIN_TLS_CERT},
        {"admin-tokens-file", required_argument, NULL, OPT_ADMIN_TOKENS_FILE},
        {"admin-tls-key", required_argument, NULL, OPT_ADMIN_TLS_KEY},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch, rc = 0;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'd': set(&c->database_url, optarg); break;
        case 'l': set(&c->admin_listen, optarg); break;
        case 't': set(&c->admin_token, optarg); break;
        case 'T': set(&admin_file, optarg); break;
        case 'r': set(&c->readonly_token, optarg); break;
        case 'R': set(&ro_file, optarg); break;
        case 's': set(&c->socket_path, optarg); break;
        case 'n': set(&c->node_id, optarg); break;
        case 'p': set(&c->port_file, optarg); break;
        case 'L': set(&c->log_level, optarg); break;
        case 'S': set(&mc->shm_path, optarg); break;
        case 'm': set(&mc->token, optarg); break;
        case 'M': set(&metrics_file, optarg); break;
        case OPT_USAGE_RETENTION: set(&usage_days, optarg); break;
        case OPT_EVENTS_RETENTION: set(&events_days, optarg); break;
        case OPT_USAGE_FLUSH: set(&flush_ms, optarg); break;
        case OPT_ALERT_INTERVAL: set(&alert_ms, optarg); break;
        case OPT_WEBHOOK_CA_FILE: set(&c->webhook_ca_file, optarg); break;
        case OPT_WEBHOOK_TIMEOUT: set(&wh_timeout, optarg); break;
        case OPT_WEBHOOK_ATTEMPTS: set(&wh_attempts, optarg); break;
        case OPT_WEBHOOK_BACKOFF: set(&wh_backoff, optarg); break;
        case OPT_WEBHOOK_CONCURRENCY: set(&wh_conc, optarg); break;
        case OPT_HEARTBEAT: set(&heartbeat_ms, optarg); break;
        case OPT_ADMIN_TLS_CERT: set(&c->admin_tls_cert, optarg); break;
        case OPT_ADMIN_TOKENS_FILE: set(&c->tokens_file, optarg); break;
        case OPT_ADMIN_TLS_KEY: set(&c->admin_tls_key, optarg); break;
        case 'h': fputs(usage_text, stdout); rc = 1; goto out;
        default:
            rc = cp__fail(err, -EINVAL, "unknown or incomplete option %s (see --help)",
                          argv[optind - 1]);
            goto out;
        }
    }
    if (optind < argc) {
        rc = cp__fail(err, -EINVAL, "unexpected argument \"%s\" (see --help)", argv[optind]);
        goto out;
    }
    if (admin_file && !c->admin_token && !(c->admin_token = read_token_file(admin_file, err))) {
        rc = -EINVAL;
        goto out;
    }
    if (ro_file && !c->readonly_token && !(c->readonly_token = read_token_file(ro_file, err))) {
        rc = -EINVAL;
        goto out;
    }
    if (metrics_file && !mc->token && !(mc->token = read_token_file(metrics_file, err))) {
        rc = -EINVAL;
        goto out;
    }
    if ((rc = int_setting(usage_days, "--usage-retention-days", 1, 36500, 30,
                          &c->usage_retention_days, err)) < 0 ||
        (rc = int_setting(events_days, "--events-retention-days", 1, 36500, 30,
                          &c->events_retention_days, err)) < 0 ||
        (rc = int_setting(flush_ms, "--usage-flush-ms", 100, 3600000, 10000, &c->usage_flush_ms,
                          err)) < 0 ||
        (rc = int_setting(alert_ms, "--alert-interval-ms", 100, 3600000, 15000,
                          &c->alert_interval_ms, err)) < 0 ||
        (rc = int_setting(wh_timeout, "--webhook-timeout-ms", 100, 300000, 10000,
                          &c->webhook_timeout_ms, err)) < 0 ||
        (rc = int_setting(wh_attempts, "--webhook-max-attempts", 1, 100, 8,
                          &c->webhook_max_attempts, err)) < 0 ||
        (rc = int_setting(wh_backoff, "--webhook-backoff-ms", 10, 3600000, 2000,
                          &c->webhook_backoff_ms, err)) < 0 ||
        (rc = int_setting(wh_conc, "--webhook-concurrency", 1, 64, 4, &c->webhook_concurrency,
                          err)) < 0 ||
        (rc = int_setting(heartbeat_ms, "--heartbeat-ms", 100, 60000, 5000, &c->heartbeat_ms,
                          err)) < 0)
        goto out;
    if (!c->database_url) {
        rc = cp__fail(err, -EINVAL, "no database: set SWITCHYARD_DATABASE_URL or --database-url");
        goto out;
    }
    if (c->tokens_file && (rc = cp__tokens_load(c->tokens_file, &c->tokens, &c->n_tokens, err)) < 0)
        goto out;
    bool named_admin = false;
    for (size_t i = 0; i < c->n_tokens; i++)
        named_admin |= c->tokens[i].role == CP_ROLE_ADMIN;
    if (!c->admin_token && !named_admin) {
        rc = cp__fail(err, -EINVAL,
                      "no admin token: set SWITCHYARD_ADMIN_TOKEN(_FILE) or --admin-token(-file), "
                      "or an admin line in --admin-tokens-file");
        goto out;
    }
    if (c->admin_token && strlen(c->admin_token) < 16) {
        rc = cp__fail(err, -EINVAL, "the admin token must be at least 16 characters long");
        goto out;
    }
    if (!c->admin_tls_cert != !c->admin_tls_key) {
        rc = cp__fail(err, -EINVAL,
                      "%s is set without %s: HTTPS needs both the certificate and its key",
                      c->admin_tls_cert ? "--admin-tls-cert" : "--admin-tls-key",
                      c->admin_tls_cert ? "--admin-tls-key" : "--admin-tls-cert");
        goto out;
    }
    if (!c->admin_listen)
        c->admin_listen = sy_xstrdup("127.0.0.1:9090");
    if (!c->socket_path)
        c->socket_path = sy_xstrdup("/run/switchyard/control.sock");
    if (!c->node_id) {
        char host[256];
        if (gethostname(host, sizeof(host)) != 0)
            snprintf(host, sizeof(host), "node");
        host[sizeof(host) - 1] = '\0';
        c->node_id = sy_xstrdup(host);
    }
    if (c->log_level && sy_log_set_level(c->log_level) < 0) {
        rc = cp__fail(err, -EINVAL, "log level \"%s\" is not error, warn, info or debug",
                      c->log_level);
        goto out;
    }
out:
    free(admin_file);
    free(ro_file);
    free(usage_days);
    free(events_days);
    free(flush_ms);
    free(alert_ms);
    free(wh_timeout);
    free(wh_attempts);
    free(wh_backoff);
    free(wh_conc);
    free(heartbeat_ms);
    free(metrics_file);
    if (rc != 0) {
        config_free(c);
        cp__metrics_config_free(mc);
    }
    return rc;
}

/* "host:port", "[v6]:port" or ":port". */
static int parse_listen(const char *text, struct sockaddr_storage *ss, char **err)
{
    char host[256];
    const char *colon = strrchr(text, ':');
    if (!colon || colon == text + strlen(text) - 1)
        return cp__fail(err, -EINVAL, "admin listen address \"%s\" needs a port (host:port)", text);
    size_t hl = (size_t)(colon - text);
    if (hl >= sizeof(host))
        return cp__fail(err, -EINVAL, "admin listen address \"%s\" is too long", text);
    memcpy(host, text, hl);
    host[hl] = '\0';
    uint64_t port;
    if (!sy_parse_u64(colon + 1, strlen(colon + 1), &port) || port > 65535)
        return cp__fail(err, -EINVAL, "admin listen address \"%s\": bad port", text);
    if (hl == 0 || strcmp(host, "*") == 0)
        snprintf(host, sizeof(host), "0.0.0.0");
    if (host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        if (uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)ss) == 0)
            return 0;
    } else if (strcmp(host, "localhost") == 0) {
        return uv_ip4_addr("127.0.0.1", (int)port, (struct sockaddr_in *)ss);
    } else if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) {
        return 0;
    }
    return cp__fail(err, -EINVAL, "admin listen address \"%s\": not an IP address", text);
}

static void write_port_file(const char *path, int port)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f, "%d\n", port);
    fclose(f);
    rename(tmp, path);
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct cp_server *cp = s->data;
    if (cp->stopping)
        return;
    cp->stopping = true;
    sy_log(SY_LOG_INFO, "serve", "stopping on signal %d", signum);
    cp__publisher_stop(cp);
    cp__metrics_stop(cp);
    sy_http_server_drain(&cp->http);
    sy_http_server_close_all(&cp->http);
    uv_close((uv_handle_t *)&cp->sig_term, NULL);
    uv_close((uv_handle_t *)&cp->sig_int, NULL);
    uv_close((uv_handle_t *)&cp->sig_hup, NULL);
    /* the last usage flush and decision-log write, before the database closes */
    cp__alerts_stop(cp);
    cp__events_stop(cp);
    cp__usage_stop(cp);
    cp__audit_stop(cp);
    cp__budget_stop(cp);
    cp_db_close(cp->db);
    cp->db = NULL;
}

/* SIGHUP: read the named tokens and the admin listener's certificate and key again. New
 * connections get the new certificate; open ones finish with the old. A bad file is logged and
 * what is in force stays. */
static void on_hup(uv_signal_t *s, int signum)
{
    struct cp_server *cp = s->data;
    struct sy_tls_server *t = NULL;
    char *err = NULL;

    if (cp->stopping)
        return;
    if (!cp->cfg.tokens_file && !cp->cfg.admin_tls_cert) {
        sy_log(SY_LOG_INFO, "serve",
               "SIGHUP: nothing to reload (no --admin-tokens-file, no --admin-tls-cert)");
        return;
    }
    if (cp->cfg.tokens_file) {
        struct cp_token *tokens = NULL;
        size_t n = 0;
        if (cp__tokens_load(cp->cfg.tokens_file, &tokens, &n, &err) < 0) {
            sy_log(SY_LOG_ERROR, "serve", "SIGHUP: %s; the %zu named tokens in force stay", err,
                   cp->cfg.n_tokens);
            SY_FREE(err);
        } else {
            cp__tokens_free(cp->cfg.tokens, cp->cfg.n_tokens);
            cp->cfg.tokens = tokens;
            cp->cfg.n_tokens = n;
            sy_log(SY_LOG_INFO, "serve", "SIGHUP: %zu named admin tokens from %s", n,
                   cp->cfg.tokens_file);
        }
    }
    if (!cp->cfg.admin_tls_cert)
        return;
    if (sy_tls_server_new(cp->cfg.admin_tls_cert, cp->cfg.admin_tls_key, &t, &err) != 0) {
        sy_log(SY_LOG_ERROR, "serve", "SIGHUP: %s; still serving certificate serial %s", err,
               cp->tls->serial);
        free(err);
        return;
    }
    sy_log(SY_LOG_INFO, "serve",
           "SIGHUP: admin TLS certificate reloaded: serial %s, %s, expires %s", t->serial,
           t->subject, t->not_after);
    sy_tls_server_free(cp->tls); /* open connections hold their own reference */
    cp->tls = t;
    cp->http.tls = t;
}

static void on_db_state(struct cp_db *db, void *ud, bool up, const char *why)
{
    if (up)
        sy_log(SY_LOG_INFO, "db", "database connection up");
    else
        sy_log(SY_LOG_WARN, "db", "database connection down: %s", why ? why : "");
    cp__publisher_db_state(ud, up);
    cp__usage_db_state(ud, up);
    if (up)
        cp__budget_kick(ud);
}

int cp_serve(int argc, char **argv)
{
    struct cp_server *cp = sy_xcalloc(1, sizeof(*cp));
    struct cp_metrics_config mcfg;
    char *err = NULL;
    int status = 1;
    sy_log_set_ident("controlplane");
    signal(SIGPIPE, SIG_IGN);
    int rc = config_load(&cp->cfg, &mcfg, argc, argv, &err);
    if (rc == 1) {
        free(cp);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "switchyard-controlplane: %s\n", err ? err : "out of memory");
        free(err);
        free(cp);
        return 2;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    cp->started_ms = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;

    rc = cp_crypto_ring_from_env(&cp->ring, &err);
    if (rc < 0) {
        fprintf(stderr, "switchyard-controlplane: %s\n",
                rc == -ENOENT ? "no master key: set SWITCHYARD_MASTER_KEY or "
                                "SWITCHYARD_MASTER_KEY_FILE (64 hex characters)"
                              : err ? err : "out of memory");
        goto out_cfg;
    }
    /* Migrations run before the loop serves: nothing can be served from an old schema. */
    int applied = 0;
    if (cp_migrate(cp->cfg.database_url, &applied, NULL, NULL, &err) < 0) {
        fprintf(stderr, "switchyard-controlplane: %s\n", err ? err : "migrations failed");
        goto out_ring;
    }
    if (applied)
        sy_log(SY_LOG_INFO, "serve", "applied %d migrations", applied);

    SY_REQUIRE(uv_loop_init(&cp->loop) == 0);
    if (cp_db_open(&cp->loop, cp->cfg.database_url, &cp->db, &err) < 0) {
        fprintf(stderr, "switchyard-controlplane: %s\n", err ? err : "out of memory");
        goto out_loop;
    }
    cp_db_on_state(cp->db, on_db_state, cp);

    struct sy_http_limits limits;
    sy_http_limits_default(&limits);
    /* 8 MiB: a guardrail of 10,000 keywords of 256 bytes, even written with \u escapes */
    limits.max_body_bytes = 8 * 1024 * 1024;
    sy_http_server_init(&cp->http, &cp->loop, &limits);
    cp->http.data = cp;
    cp->http.on_request = cp__api_request;
    cp->http.on_request_done = cp__api_request_done;
    if (cp->cfg.admin_tls_cert) {
        if (sy_tls_server_new(cp->cfg.admin_tls_cert, cp->cfg.admin_tls_key, &cp->tls, &err) < 0) {
            fprintf(stderr, "switchyard-controlplane: %s\n", err);
            goto out_db;
        }
        cp->http.tls = cp->tls;
        sy_log(SY_LOG_INFO, "serve", "admin TLS certificate serial %s, %s, expires %s",
               cp->tls->serial, cp->tls->subject, cp->tls->not_after);
    }
    struct sockaddr_storage ss;
    if (parse_listen(cp->cfg.admin_listen, &ss, &err) < 0) {
        fprintf(stderr, "switchyard-controlplane: %s\n", err);
        goto out_db;
    }
    rc = uv_tcp_bind(&cp->http.listener, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = sy_http_server_start(&cp->http);
    if (rc < 0) {
        fprintf(stderr, "switchyard-controlplane: cannot listen on %s: %s\n",
                cp->cfg.admin_listen, uv_strerror(rc));
        goto out_db;
    }
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    uv_tcp_getsockname(&cp->http.listener, (struct sockaddr *)&bound, &blen);
    int port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                 : ((struct sockaddr_in *)&bound)->sin_port);

    if (cp__publisher_start(cp, &err) < 0) {
        fprintf(stderr, "switchyard-controlplane: %s\n", err ? err : "publisher failed");
        goto out_db;
    }
    /* before the metrics module takes the segment path */
    if (cp__usage_start(cp, mcfg.shm_path, &err) < 0 ||
        cp__events_start(cp, mcfg.shm_path, &err) < 0 ||
        cp__budget_start(cp, mcfg.shm_path, &err) < 0) {
        fprintf(stderr, "switchyard-controlplane: %s\n", err ? err : "out of memory");
        goto out_db;
    }
    cp__audit_start(cp, &err);
    if (cp__alerts_start(cp, &err) < 0) {
        fprintf(stderr, "switchyard-controlplane: %s\n", err ? err : "out of memory");
        goto out_db;
    }
    if (cp__metrics_start(cp, &mcfg, &err) < 0) {
        fprintf(stderr, "switchyard-controlplane: %s\n", err ? err : "out of memory");
        goto out_db;
    }

    uv_signal_init(&cp->loop, &cp->sig_term);
    uv_signal_init(&cp->loop, &cp->sig_int);
    cp->sig_term.data = cp->sig_int.data = cp;
    uv_signal_start(&cp->sig_term, on_signal, SIGTERM);
    uv_signal_start(&cp->sig_int, on_signal, SIGINT);
    uv_signal_init(&cp->loop, &cp->sig_hup);
    cp->sig_hup.data = cp;
    uv_signal_start(&cp->sig_hup, on_hup, SIGHUP);

    sy_log(SY_LOG_INFO, "serve", "admin API on %s (port %d), data-plane socket %s, node %s",
           cp->cfg.admin_listen, port, cp->cfg.socket_path, cp->cfg.node_id);
    printf("switchyard-controlplane admin API on %s://%s:%d/admin/v1/\n",
           cp->tls ? "https" : "http", bound.ss_family == AF_INET6 ? "[::1]" : "127.0.0.1", port);
    fflush(stdout);
    if (cp->cfg.port_file)
        write_port_file(cp->cfg.port_file, port);

    uv_run(&cp->loop, UV_RUN_DEFAULT);
    status = 0;

out_db:
    cp__metrics_stop(cp);
    if (cp->db) {
        cp__alerts_stop(cp);
        cp__events_stop(cp);
        cp__usage_stop(cp);
        cp__audit_stop(cp);
        cp__budget_stop(cp);
        cp__publisher_stop(cp);
        cp_db_close(cp->db);
        cp->db = NULL;
    }
    uv_walk(&cp->loop, close_walk_cb, NULL);
    uv_run(&cp->loop, UV_RUN_DEFAULT);
out_loop:
    uv_walk(&cp->loop, close_walk_cb, NULL);
    uv_run(&cp->loop, UV_RUN_DEFAULT);
    uv_loop_close(&cp->loop);
out_ring:
    cp_crypto_ring_free(&cp->ring);
    sy_tls_server_free(cp->tls);
out_cfg:
    free(err);
    config_free(&cp->cfg);
    cp__metrics_config_free(&mcfg);
    free(cp);
    return status;
}
