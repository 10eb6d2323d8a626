/* SPDX-License-Identifier: Apache-2.0 */
/** Alerts (alerts.h): the evaluation timer around alert_evaluate(), and the outbox sender. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <openssl/ssl.h>

#include "alerts.h"
#include "internal.h"
#include "server.h"
#include "sy/log.h"
#include "sy/util.h"
#include "webhook.h"

#define POLL_MS        1000    /* how often due deliveries are looked for */
#define LEASE_EXTRA_S  30      /* a claim's lease: the send's total timeout plus this */
#define BACKOFF_MAX_MS 3600000 /* the longest wait between two attempts */
#define CONNECT_MAX_MS 5000    /* connect timeout, within the total */
#define FIRST_EVAL_MS  500     /* the first evaluation, after start */

struct cp_alerts {
    struct cp_server *cp;
    /* A connection of its own: an evaluation can take a second or more with many rules, and
     * cp->db runs one query at a time, so sharing it would hold up the admin API and the
     * publisher for as long. */
    struct cp_db *db;
    SSL_CTX *ssl;
    uv_timer_t eval_timer, poll_timer;
    unsigned open_handles;
    unsigned pending;  /* queries whose callback has not run */
    unsigned inflight; /* deliveries claimed and not yet recorded */
    bool evaluating, claiming, stopping, poll_again;
    struct cp_alerts_stats stats;
    char *last_error;         /* of the last evaluation, to log a change once */
    struct delivery *sending; /* deliveries on the pool, to abort at stop */
};

/* One claimed delivery, from its claim to the record of its outcome. */
struct delivery {
    struct cp_alerts *a;
    char id[24];
    int attempts;
    struct cp_webhook_req *req; /* while on the pool */
    struct delivery *prev, *next;
};

static void maybe_free(struct cp_alerts *a)
{
    if (!a->stopping || a->open_handles || a->pending || a->inflight)
        return;
    if (a->ssl)
        SSL_CTX_free(a->ssl);
    free(a->last_error);
    free(a);
}

static void on_closed(uv_handle_t *h)
{
    struct cp_alerts *a = h->data;
    a->open_handles--;
    maybe_free(a);
}

/* ---- evaluation ------------------------------------------------------------------------------ */

static void poll_now(struct cp_alerts *a);

static void note_error(struct cp_alerts *a, const char *what, const char *err)
{
    if (!a->last_error || strcmp(a->last_error, err) != 0)
        sy_log(SY_LOG_WARN, "alerts", "%s failed: %s", what, err);
    free(a->last_error);
    a->last_error = sy_xstrdup(err);
}

static void on_stats(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_alerts *a = ud;
    a->pending--;
    if (!err && PQntuples(res) == 1) {
        a->stats.firing = atoll(PQgetvalue(res, 0, 0));
        a->stats.deliveries_pending = atoll(PQgetvalue(res, 0, 1));
        a->stats.deliveries_failed = atoll(PQgetvalue(res, 0, 2));
    }
    maybe_free(a);
}

static void on_evaluated(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_alerts *a = ud;
    a->pending--;
    a->evaluating = false;
    if (err) {
        if (!a->stopping) /* the db closing at stop fails the query in flight */
            note_error(a, "alert evaluation", err);
    } else {
        if (a->last_error) {
            sy_log(SY_LOG_INFO, "alerts", "alert evaluation works again");
            SY_FREE(a->last_error);
        }
        long long n = atoll(PQgetvalue(res, 0, 0));
        if (n >= 0)
            a->stats.evaluations++;
        if (n > 0) {
            sy_log(SY_LOG_INFO, "alerts", "%lld alert notification%s queued", n, n == 1 ? "" : "s");
            poll_now(a);
        }
        if (!a->stopping &&
            cp_db_exec(a->db,
                       "SELECT (SELECT count(*) FROM alert_states WHERE state = 'firing'),"
                       " (SELECT count(*) FROM alert_deliveries"
                       "   WHERE delivered_at IS NULL AND gave_up_at IS NULL),"
                       " (SELECT count(*) FROM alert_deliveries WHERE gave_up_at IS NOT NULL)",
                       on_stats, a) == 0)
            a->pending++;
    }
    maybe_free(a);
}

static void on_eval_timer(uv_timer_t *t)
{
    struct cp_alerts *a = t->data;
    if (a->stopping || a->evaluating || !cp_db_is_up(a->db))
        return;
    const char *p[] = {a->cp->cfg.node_id};
    if (cp_db_query(a->db, "SELECT alert_evaluate($1)", 1, p, on_evaluated, a) == 0) {
        a->evaluating = true;
        a->pending++;
    }
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- delivery -------------------------------------------------------------------------------- */

static void on_recorded(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_alerts *a = ud;
    a->pending--;
    if (err)
        sy_log(SY_LOG_WARN, "alerts", "cannot record a delivery's outcome: %s", err);
    maybe_free(a);
}

/* The wait before attempt <attempts> + 1: base x 2^(attempts - 1), at most BACKOFF_MAX_MS,
 * then jitter of -20%..+20% so that deliveries failing together do not retry together. */
static int64_t backoff_ms(int base, int attempts)
{
    int64_t d = base;
    for (int i = 1; i < attempts && d < BACKOFF_MAX_MS; i++)
        d *= 2;
    if (d > BACKOFF_MAX_MS)
        d = BACKOFF_MAX_MS;
    uint32_t r = 0;
    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
        r = (uint32_t)sy_now_ms() * 2654435761u;
    double f = 0.8 + 0.4 * ((double)r / 4294967296.0);
    return (int64_t)((double)d * f);
}

static void on_sent(struct cp_webhook_req *req, void *ud, int status, const char *error)
{
    struct delivery *dv = ud;
    struct cp_alerts *a = dv->a;
    struct cp_config *cfg = &a->cp->cfg;
    a->inflight--;
    if (dv->req) {
        if (dv->prev)
            dv->prev->next = dv->next;
        else
            a->sending = dv->next;
        if (dv->next)
            dv->next->prev = dv->prev;
    }
    char id[24], st[24], wait[24];
    snprintf(id, sizeof(id), "%s", dv->id); /* dv is freed before the query is sent */
    snprintf(st, sizeof(st), "%d", status);
    const char *sql;
    const char *p[4] = {id, status ? st : NULL, error, NULL};
    int n = 3;
    if (!error) {
        a->stats.sent++;
        sy_log(SY_LOG_INFO, "alerts", "delivery %s sent (HTTP %d, attempt %d)", dv->id, status,
               dv->attempts);
        sql = "UPDATE alert_deliveries SET delivered_at = now(), last_status = $2::int,"
              " last_error = $3, claimed_by = NULL, claimed_until = NULL WHERE id = $1::bigint";
    } else if (dv->attempts >= cfg->webhook_max_attempts) {
        a->stats.send_failures++;
        sy_log(SY_LOG_WARN, "alerts", "delivery %s failed (attempt %d of %d): %s; giving up",
               dv->id, dv->attempts, cfg->webhook_max_attempts, error);
        /* and in the decision log, where an operator looks for what went wrong */
        sql = "WITH u AS (UPDATE alert_deliveries d SET gave_up_at = now(),"
              "  last_status = $2::int, last_error = $3, claimed_by = NULL, claimed_until = NULL"
              "  WHERE d.id = $1::bigint RETURNING d.*)"
              " INSERT INTO events (at, node, kind, outcome, reason, text)"
              " SELECT now(), $4, 'alert', 'undelivered', 'webhook',"
              "  format('%s notification of rule %s about %s to channel %s given up after %s"
              " attempts: %s', u.status, u.rule, u.subject, ch.name, u.attempts, $3)"
              " FROM u JOIN alert_channels ch ON ch.id = u.channel_id";
        p[3] = cfg->node_id;
        n = 4;
    } else {
        a->stats.send_failures++;
        int64_t ms = backoff_ms(cfg->webhook_backoff_ms, dv->attempts);
        sy_log(SY_LOG_WARN, "alerts",
               "delivery %s failed (attempt %d of %d): %s; retry in %" PRId64 " ms", dv->id,
               dv->attempts, cfg->webhook_max_attempts, error, ms);
        snprintf(wait, sizeof(wait), "%" PRId64, ms);
        p[3] = wait;
        n = 4;
        sql = "UPDATE alert_deliveries SET last_status = $2::int, last_error = $3,"
              " next_attempt_at = now() + make_interval(secs => $4::bigint / 1000.0),"
              " claimed_by = NULL, claimed_until = NULL WHERE id = $1::bigint";
    }
    free(dv);
    if (!a->stopping && cp_db_query(a->db, sql, n, p, on_recorded, a) == 0)
        a->pending++;
    if (!a->stopping)
        poll_now(a);
    maybe_free(a);
}

/* Rows: id, attempts, alert, type, url, headers, secret_enc (hex bytea), secret_key_id. */
static void start_send(struct cp_alerts *a, const PGresult *res, int i)
{
    struct cp_server *cp = a->cp;
    const char *id = PQgetvalue(res, i, 0);
    char *err = NULL, *secret = NULL;
    size_t secret_len = 0;
    json_t *alert = json_loads(PQgetvalue(res, i, 2), 0, NULL);
    json_t *headers = json_loads(PQgetvalue(res, i, 5), 0, NULL);
    struct delivery *dv = sy_xcalloc(1, sizeof(*dv));
    dv->a = a;
    snprintf(dv->id, sizeof(dv->id), "%s", id);
    dv->attempts = atoi(PQgetvalue(res, i, 1));
    a->inflight++;
    if (!PQgetisnull(res, i, 6)) {
        size_t n = 0;
        unsigned char *ct = PQunescapeBytea((const unsigned char *)PQgetvalue(res, i, 6), &n);
        int rc = ct ? cp_crypto_decrypt(&cp->ring, PQgetvalue(res, i, 7), ct, n, &secret,
                                        &secret_len, &err)
                    : -ENOMEM;
        PQfreemem(ct);
        if (rc < 0) {
            char msg[300];
            snprintf(msg, sizeof(msg), "cannot decrypt the channel's secret: %s",
                     err ? err : "out of memory");
            free(err);
            json_decref(alert);
            json_decref(headers);
            on_sent(NULL, dv, 0, msg);
            return;
        }
    }
    struct cp_webhook_req *req =
        alert ? cp__webhook_build(PQgetvalue(res, i, 3), PQgetvalue(res, i, 4), alert, secret,
                                  headers, wall_ms(), &err)
              : NULL;
    if (secret)
        cp_crypto_free_secret(secret, secret_len);
    json_decref(alert);
    json_decref(headers);
    int total = cp->cfg.webhook_timeout_ms;
    if (req) {
        dv->req = req; /* listed before the send: its callback unlists it */
        dv->next = a->sending;
        if (a->sending)
            a->sending->prev = dv;
        a->sending = dv;
    }
    if (!req || cp__webhook_send(&cp->loop, req, a->ssl, SY_MIN(CONNECT_MAX_MS, total), total,
                                 on_sent, dv) < 0) {
        char msg[300];
        snprintf(msg, sizeof(msg), "cannot send: %s", err ? err : "out of memory");
        free(err);
        on_sent(NULL, dv, 0, msg);
        return;
    }
    free(err);
}

static void on_claimed(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_alerts *a = ud;
    a->pending--;
    a->claiming = false;
    if (err) {
        sy_log(SY_LOG_DEBUG, "alerts", "cannot claim deliveries: %s", err);
    } else if (!a->stopping) {
        for (int i = 0; i < PQntuples(res); i++)
            start_send(a, res, i);
        /* a full batch: there may be more due */
        if (a->poll_again ||
            (PQntuples(res) > 0 && a->inflight < (unsigned)a->cp->cfg.webhook_concurrency))
            poll_now(a);
        a->poll_again = false;
    }
    maybe_free(a);
}

static void poll_now(struct cp_alerts *a)
{
    struct cp_server *cp = a->cp;
    if (a->stopping || !cp_db_is_up(a->db))
        return;
    if (a->claiming) {
        a->poll_again = true;
        return;
    }
    int room = cp->cfg.webhook_concurrency - (int)a->inflight;
    if (room <= 0)
        return;
    char lease[24], lim[24];
    snprintf(lease, sizeof(lease), "%d", cp->cfg.webhook_timeout_ms / 1000 + LEASE_EXTRA_S);
    snprintf(lim, sizeof(lim), "%d", room);
    const char *p[] = {cp->cfg.node_id, lease, lim};
    if (cp_db_query(a->db,
                    "UPDATE alert_deliveries d SET claimed_by = $1,"
                    " claimed_until = now() + make_interval(secs => $2::int),"
                    " attempts = d.attempts + 1"
                    " FROM alert_channels ch"
                    " WHERE ch.id = d.channel_id AND d.id IN ("
                    "  SELECT x.id FROM alert_deliveries x"
                    "  WHERE x.delivered_at IS NULL AND x.gave_up_at IS NULL"
                    "   AND x.next_attempt_at <= now()"
                    "   AND (x.claimed_until IS NULL OR x.claimed_until < now())"
                    "  ORDER BY x.next_attempt_at, x.id LIMIT $3::int FOR UPDATE SKIP LOCKED)"
                    " RETURNING d.id, d.attempts, d.alert, ch.type, ch.url, ch.headers,"
                    " ch.secret_enc, ch.secret_key_id",
                    3, p, on_claimed, a) == 0) {
        a->claiming = true;
        a->pending++;
    }
}

static void on_poll_timer(uv_timer_t *t)
{
    poll_now(t->data);
}

static void on_released(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_alerts *a = ud;
    a->pending--;
    if (err)
        sy_log(SY_LOG_DEBUG, "alerts", "cannot release this node's claims: %s", err);
    else if (atoll(PQcmdTuples((PGresult *)res)) > 0)
        sy_log(SY_LOG_INFO, "alerts", "%s deliveries claimed before a restart are due again",
               PQcmdTuples((PGresult *)res));
    maybe_free(a);
}

/* ---- module ---------------------------------------------------------------------------------- */

int cp__alerts_start(struct cp_server *cp, char **err)
{
    struct cp_alerts *a = sy_xcalloc(1, sizeof(*a));
    a->cp = cp;
    a->stats.firing = a->stats.deliveries_pending = a->stats.deliveries_failed = -1;
    a->ssl = cp__webhook_ssl_new(cp->cfg.webhook_ca_file, err);
    if (!a->ssl) {
        free(a);
        return -EINVAL;
    }
    if (cp_db_open(&cp->loop, cp->cfg.database_url, &a->db, err) < 0) {
        SSL_CTX_free(a->ssl);
        free(a);
        return -ENOMEM;
    }
    uv_timer_init(&cp->loop, &a->eval_timer);
    uv_timer_init(&cp->loop, &a->poll_timer);
    a->eval_timer.data = a->poll_timer.data = a;
    a->open_handles = 2;
    uint64_t every = (uint64_t)cp->cfg.alert_interval_ms;
    uv_timer_start(&a->eval_timer, on_eval_timer, SY_MIN(FIRST_EVAL_MS, every), every);
    uv_timer_start(&a->poll_timer, on_poll_timer, SY_MIN(POLL_MS, every), SY_MIN(POLL_MS, every));
    /* A delivery this node had claimed when it stopped (or died) is due again now, rather than
     * when its lease expires: nothing else can be sending it under this node's name. */
    const char *p[] = {cp->cfg.node_id};
    if (cp_db_query(a->db,
                    "UPDATE alert_deliveries SET claimed_by = NULL, claimed_until = NULL"
                    " WHERE claimed_by = $1 AND delivered_at IS NULL AND gave_up_at IS NULL",
                    1, p, on_released, a) == 0)
        a->pending++;
    cp->alerts = a;
    sy_log(SY_LOG_INFO, "alerts", "evaluating alert rules every %d ms", cp->cfg.alert_interval_ms);
    return 0;
}

void cp__alerts_stop(struct cp_server *cp)
{
    struct cp_alerts *a = cp ? cp->alerts : NULL;
    if (!a)
        return;
    cp->alerts = NULL;
    a->stopping = true;
    /* A webhook that hangs must not hold the stop for its whole timeout; its claim is
     * released by the next start. */
    for (struct delivery *dv = a->sending; dv; dv = dv->next)
        cp__webhook_abort(dv->req);
    uv_close((uv_handle_t *)&a->eval_timer, on_closed);
    uv_close((uv_handle_t *)&a->poll_timer, on_closed);
    /* the queries not answered fail now (their callbacks run here); a is freed later, when the
     * timers have closed */
    cp_db_close(a->db);
    a->db = NULL;
}

void cp__alerts_stats(struct cp_server *cp, struct cp_alerts_stats *out)
{
    if (!cp->alerts) {
        memset(out, 0, sizeof(*out));
        out->firing = out->deliveries_pending = out->deliveries_failed = -1;
        return;
    }
    *out = cp->alerts->stats;
}
