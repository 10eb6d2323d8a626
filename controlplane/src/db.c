/* SPDX-License-Identifier: Apache-2.0 */
/** Asynchronous libpq on libuv (see db.h for the contract).
 *
 * One PGconn, in non-blocking mode, watched by a uv_poll on PQsocket(). The connection moves
 * DOWN -> CONNECTING -> UP and back to DOWN when it fails; a timer both bounds a connection
 * attempt and spaces the retries. A uv_idle handle runs work that must not happen inside the
 * caller's stack: failing a query queued while the database is down, and sending the first
 * query of an idle connection.
 *
 * While connecting, libpq may replace its socket (next host of a list, SSL fallback) and the
 * new one can reuse the old descriptor number; epoll would then be told to modify a descriptor
 * it has forgotten. So every connection step gets a fresh poll handle; once UP the socket is
 * stable and one handle serves until the connection ends. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sy/log.h"
#include "sy/util.h"

#include "db.h"
#include "internal.h"

#define BACKOFF_MIN_MS  250
#define BACKOFF_MAX_MS  5000
#define CONNECT_TIMEOUT 10000 /* ms a connection attempt may take before it is abandoned */

enum db_state {
    DB_DOWN = 0,   /* waiting for the retry timer */
    DB_CONNECTING, /* PQconnectPoll in progress */
    DB_UP,
    DB_CLOSING, /* cp_db_close() was called; handles are closing */
    DB_STATE_MAX,
};

struct query {
    struct query *next;
    cp_db_result_cb cb; /* NULL for the connection's own LISTENs */
    void *ud;
    char *sql;
    char **params;
    int nparams;
    bool script; /* several statements through PQsendQuery */
    char *err;   /* why it failed, while waiting in the deferred-failure list */
};

struct qlist {
    struct query *head, *tail;
};

struct channel {
    struct channel *next;
    char name[];
};

/* A poll handle lives in its own allocation so that it can be replaced while the old one's
 * close callback is still pending. */
struct poller {
    uv_poll_t h;
    struct cp_db *db;
};

struct cp_db {
    uv_loop_t *loop;
    char *conninfo;
    enum db_state state;
    bool known_down; /* a failure was reported and no connection succeeded since */
    uint64_t backoff_ms;
    char *last_error; /* why the last attempt or connection failed */

    PGconn *pg;
    struct poller *poller;
    int poll_events;

    uv_timer_t timer; /* connect deadline while CONNECTING, retry delay while DOWN */
    uv_idle_t defer;  /* runs deliver_deferred() on the next loop turn */
    int handles;      /* handles not yet closed; the db is freed when closing and 0 */

    struct qlist queue;     /* waiting to be sent */
    struct query *inflight; /* sent, result not complete */
    PGresult *inflight_res; /* last result of the query in flight, or its first error */
    struct qlist failed;    /* failures to deliver from the loop */
    struct channel *channels;

    cp_db_state_cb state_cb;
    void *state_ud;
    cp_db_notify_cb notify_cb;
    void *notify_ud;
};

static void start_connect(struct cp_db *db);
static void go_down(struct cp_db *db, const char *why);
static void pump(struct cp_db *db);
static void on_timer(uv_timer_t *t);

/* ---- queries ------------------------------------------------------------------------------- */

static void query_free(struct query *q)
{
    if (!q)
        return;
    for (int i = 0; i < q->nparams; i++)
        free(q->params[i]);
    free(q->params);
    free(q->sql);
    free(q->err);
    free(q);
}

static struct query *query_new(const char *sql, int nparams, const char *const *params,
                               cp_db_result_cb cb, void *ud)
{
    struct query *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->cb = cb;
    q->ud = ud;
    q->sql = strdup(sql);
    if (!q->sql)
        goto fail;
    if (nparams > 0) {
        q->params = calloc((size_t)nparams, sizeof(*q->params));
        if (!q->params)
            goto fail;
        q->nparams = nparams;
        for (int i = 0; i < nparams; i++)
            if (params[i] && !(q->params[i] = strdup(params[i])))
                goto fail;
    }
    return q;
fail:
    query_free(q);
    return NULL;
}

static void qlist_push(struct qlist *l, struct query *q)
{
    q->next = NULL;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
}

static struct query *qlist_pop(struct qlist *l)
{
    struct query *q = l->head;
    if (q) {
        l->head = q->next;
        if (!l->head)
            l->tail = NULL;
        q->next = NULL;
    }
    return q;
}

/* Take the whole list out of <l>, so that callbacks may queue into <l> while it is walked. */
static struct qlist qlist_take(struct qlist *l)
{
    struct qlist all = *l;
    l->head = l->tail = NULL;
    return all;
}

/* Hand the outcome to the query's owner and free the query. */
static void deliver(struct cp_db *db, struct query *q, const PGresult *res, const char *err)
{
    if (q->cb)
        q->cb(db, q->ud, res, err);
    else if (err)
        sy_log(SY_LOG_WARN, "db", "%s failed: %s", q->sql, err);
    query_free(q);
}

/* Fail every query of <l> with <err>, from the loop (never from a caller's stack). */
static void fail_all(struct cp_db *db, struct qlist *l, const char *err)
{
    struct qlist all = qlist_take(l);
    struct query *q;
    while ((q = qlist_pop(&all)))
        deliver(db, q, NULL, err);
}

/* ---- messages -------------------------------------------------------------------------- */

/* "database unavailable: " and the first line of libpq's message, without its trailing
 * newline and hints, into a new string (NULL when out of memory). */
static char *unavailable(const char *why)
{
    char *s = NULL;
    if (!why || !*why)
        why = "connection lost";
    /* libpq relays the server's "FATAL:  terminating connection..." with its severity. */
    if (strncmp(why, "FATAL:", 6) == 0)
        why += 6 + strspn(why + 6, " ");
    size_t n = strcspn(why, "\n");
    if (asprintf(&s, "database unavailable: %.*s", (int)n, why) == -1)
        return NULL;
    return s;
}

static const char *or_oom(const char *s)
{
    return s ? s : "database unavailable: out of memory";
}

/* ---- handles ------------------------------------------------------------------------------ */

static void handle_closed(struct cp_db *db)
{
    SY_REQUIRE(db->handles > 0);
    if (--db->handles == 0 && db->state == DB_CLOSING) {
        free(db->conninfo);
        free(db->last_error);
        free(db);
    }
}

static void on_poller_closed(uv_handle_t *h)
{
    struct poller *p = SY_CONTAINER_OF((uv_poll_t *)h, struct poller, h);
    struct cp_db *db = p->db;
    free(p);
    handle_closed(db);
}

static void on_handle_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

/* Stop watching the socket. uv_close() unregisters the descriptor at once, so the caller may
 * close it (PQfinish) right after. */
static void drop_poller(struct cp_db *db)
{
    if (!db->poller)
        return;
    uv_close((uv_handle_t *)&db->poller->h, on_poller_closed);
    db->poller = NULL;
    db->poll_events = 0;
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watch PQsocket() for <events>, on a new handle when <fresh> (see the top of the file). */
static int watch(struct cp_db *db, int events, bool fresh)
{
    if (fresh)
        drop_poller(db);
    if (db->poller && db->poll_events == events)
        return 0;
    if (!db->poller) {
        int fd = PQsocket(db->pg);
        if (fd < 0)
            return -EBADF;
        struct poller *p = calloc(1, sizeof(*p));
        if (!p)
            return -ENOMEM;
        int rc = uv_poll_init_socket(db->loop, &p->h, fd);
        if (rc < 0) {
            free(p);
            return rc;
        }
        p->db = db;
        db->handles++;
        db->poller = p;
    }
    int rc = uv_poll_start(&db->poller->h, events, on_poll);
    if (rc < 0)
        return rc;
    db->poll_events = events;
    return 0;
}

/* ---- connection state machine ---------------------------------------------------------------- */

static void notice_to_log(void *arg, const char *message)
{
    sy_log(SY_LOG_DEBUG, "db", "server notice: %.*s", (int)strcspn(message, "\n"), message);
}

/* Quote <name> as an SQL identifier. */
static char *quote_ident(const char *name)
{
    size_t n = strlen(name), j = 0;
    char *s = malloc(2 * n + 3);
    if (!s)
        return NULL;
    s[j++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (name[i] == '"')
            s[j++] = '"';
        s[j++] = name[i];
    }
    s[j++] = '"';
    s[j] = '\0';
    return s;
}

static struct query *listen_query(const char *channel)
{
    char *id = quote_ident(channel), *sql = NULL;
    struct query *q = NULL;
    if (id && asprintf(&sql, "LISTEN %s", id) != -1)
        q = query_new(sql, 0, NULL, NULL, NULL);
    free(id);
    free(sql);
    if (!q)
        sy_log(SY_LOG_ERROR, "db", "out of memory: cannot LISTEN %s", channel);
    return q;
}

static void connected(struct cp_db *db)
{
    uv_timer_stop(&db->timer);
    int rc = watch(db, UV_READABLE, true);
    if (rc < 0) {
        go_down(db, uv_strerror(rc));
        return;
    }
    db->state = DB_UP;
    db->known_down = false;
    db->backoff_ms = BACKOFF_MIN_MS;
    sy_log(SY_LOG_INFO, "db", "connected to the database (server version %d)",
           PQserverVersion(db->pg));

    /* LISTENs go first, in the order they were asked for, before anything already queued. */
    struct qlist listens = {NULL, NULL};
    for (struct channel *c = db->channels; c; c = c->next) {
        struct query *q = listen_query(c->name);
        if (q)
            qlist_push(&listens, q);
    }
    if (listens.head) {
        listens.tail->next = db->queue.head;
        if (!db->queue.tail)
            db->queue.tail = listens.tail;
        db->queue.head = listens.head;
    }
    if (db->state_cb) {
        db->state_cb(db, db->state_ud, true, NULL);
        if (db->state != DB_UP)
            return; /* closed or lost from the callback */
    }
    pump(db);
}

static void schedule_retry(struct cp_db *db)
{
    uint64_t delay = db->backoff_ms;
    db->backoff_ms = SY_MIN(db->backoff_ms * 2, BACKOFF_MAX_MS);
    uv_timer_start(&db->timer, on_timer, delay, 0);
    sy_log(SY_LOG_DEBUG, "db", "retrying the database in %llu ms", (unsigned long long)delay);
}

/* The connection failed or was lost (<why> is libpq's message or ours): fail whatever waits,
 * report the outage once, retry later. */
static void go_down(struct cp_db *db, const char *why)
{
    char *msg = unavailable(why);
    bool was_up = db->state == DB_UP;

    uv_timer_stop(&db->timer);
    drop_poller(db);
    PQfinish(db->pg);
    db->pg = NULL;
    db->state = DB_DOWN;
    free(db->last_error);
    db->last_error = msg;
    bool report = !db->known_down;
    db->known_down = true;

    if (report || was_up)
        sy_log(SY_LOG_WARN, "db", "%s", or_oom(msg));

    /* Callbacks below may close the db or queue more (which now fails at once, deferred). */
    struct query *q = db->inflight;
    PGresult *res = db->inflight_res;
    db->inflight = NULL;
    db->inflight_res = NULL;
    PQclear(res);
    if (q)
        deliver(db, q, NULL, or_oom(db->last_error));
    if (db->state != DB_DOWN)
        return;
    fail_all(db, &db->queue, or_oom(db->last_error));
    if (db->state != DB_DOWN)
        return;
    if (report && db->state_cb) {
        db->state_cb(db, db->state_ud, false, or_oom(db->last_error));
        if (db->state != DB_DOWN)
            return;
    }
    schedule_retry(db);
}

/* One step of PQconnectPoll(). */
static void advance_connect(struct cp_db *db)
{
    int rc;
    switch (PQconnectPoll(db->pg)) {
    case PGRES_POLLING_READING:
        rc = watch(db, UV_READABLE, true);
        break;
    case PGRES_POLLING_WRITING:
        rc = watch(db, UV_WRITABLE, true);
        break;
    case PGRES_POLLING_OK:
        connected(db);
        return;
    default: /* PGRES_POLLING_FAILED */
        go_down(db, PQerrorMessage(db->pg));
        return;
    }
    if (rc < 0)
        go_down(db, uv_strerror(rc));
}

static void start_connect(struct cp_db *db)
{
    db->state = DB_CONNECTING;
    db->pg = PQconnectStart(db->conninfo);
    if (!db->pg) {
        go_down(db, "out of memory");
        return;
    }
    if (PQstatus(db->pg) == CONNECTION_BAD) {
        go_down(db, PQerrorMessage(db->pg));
        return;
    }
    PQsetNoticeProcessor(db->pg, notice_to_log, db);
    if (PQsetnonblocking(db->pg, 1) != 0) {
        go_down(db, PQerrorMessage(db->pg));
        return;
    }
    uv_timer_start(&db->timer, on_timer, CONNECT_TIMEOUT, 0);
    /* As if PQconnectPoll() had answered PGRES_POLLING_WRITING (libpq's documentation). */
    int rc = watch(db, UV_WRITABLE, true);
    if (rc < 0)
        go_down(db, uv_strerror(rc));
}

static void on_timer(uv_timer_t *t)
{
    struct cp_db *db = t->data;
    if (db->state == DB_CONNECTING)
        go_down(db, "timed out while connecting");
    else if (db->state == DB_DOWN)
        start_connect(db);
}

/* ---- sending and receiving --------------------------------------------------------------- */

static void flush(struct cp_db *db)
{
    int r = PQflush(db->pg);
    if (r < 0) {
        go_down(db, PQerrorMessage(db->pg));
        return;
    }
    int rc = watch(db, r ? UV_READABLE | UV_WRITABLE : UV_READABLE, false);
    if (rc < 0)
        go_down(db, uv_strerror(rc));
}

/* Send queued queries while the connection is idle. */
static void pump(struct cp_db *db)
{
    while (db->state == DB_UP && !db->inflight && db->queue.head) {
        struct query *q = qlist_pop(&db->queue);
        int ok = q->script ? PQsendQuery(db->pg, q->sql)
                           : PQsendQueryParams(db->pg, q->sql, q->nparams, NULL,
                                               (const char *const *)q->params, NULL, NULL, 0);
        if (!ok) {
            if (PQstatus(db->pg) == CONNECTION_BAD) {
                db->inflight = q; /* go_down() fails it with the others */
                go_down(db, PQerrorMessage(db->pg));
                return;
            }
            char *msg = NULL;
            if (asprintf(&msg, "cannot send the query: %.*s",
                         (int)strcspn(PQerrorMessage(db->pg), "\n"), PQerrorMessage(db->pg)) == -1)
                msg = NULL;
            deliver(db, q, NULL, msg ? msg : "cannot send the query");
            free(msg);
            continue;
        }
        db->inflight = q;
        flush(db);
    }
}

/* The query in flight has all its results: hand them over. */
static void complete(struct cp_db *db)
{
    struct query *q = db->inflight;
    PGresult *res = db->inflight_res;
    db->inflight = NULL;
    db->inflight_res = NULL;

    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok && PQstatus(db->pg) == CONNECTION_BAD) {
        /* The server went away mid-query: an outage, not an SQL error. */
        char *msg = unavailable(PQerrorMessage(db->pg));
        deliver(db, q, NULL, or_oom(msg));
        free(msg);
    } else if (ok) {
        deliver(db, q, res, NULL);
    } else if (!res) {
        deliver(db, q, NULL, "the query returned no result");
    } else if (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR) {
        const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        deliver(db, q, res, primary ? primary : PQresultErrorMessage(res));
    } else {
        char msg[96];
        snprintf(msg, sizeof(msg), "unsupported result: %s", PQresStatus(st));
        deliver(db, q, res, msg);
    }
    PQclear(res);
}

static void read_input(struct cp_db *db)
{
    if (!PQconsumeInput(db->pg)) {
        go_down(db, PQerrorMessage(db->pg));
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(db->pg))) {
        if (db->notify_cb)
            db->notify_cb(db, db->notify_ud, n->relname, n->extra);
        PQfreemem(n);
        if (db->state != DB_UP)
            return;
    }
    while (db->inflight && !PQisBusy(db->pg)) {
        PGresult *res = PQgetResult(db->pg);
        if (!res) {
            complete(db);
            if (db->state != DB_UP)
                return;
            continue;
        }
        /* Keep the last result, or the first error (a script stops at it). */
        ExecStatusType prev =
            db->inflight_res ? PQresultStatus(db->inflight_res) : PGRES_EMPTY_QUERY;
        if (prev == PGRES_FATAL_ERROR || prev == PGRES_NONFATAL_ERROR) {
            PQclear(res);
        } else {
            PQclear(db->inflight_res);
            db->inflight_res = res;
        }
    }
    if (PQstatus(db->pg) == CONNECTION_BAD) {
        go_down(db, PQerrorMessage(db->pg));
        return;
    }
    pump(db);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct cp_db *db = SY_CONTAINER_OF(h, struct poller, h)->db;
    if (status < 0) {
        go_down(db, uv_strerror(status));
        return;
    }
    if (db->state == DB_CONNECTING) {
        advance_connect(db);
        return;
    }
    if (db->state != DB_UP)
        return;
    if (events & UV_WRITABLE) {
        flush(db);
        if (db->state != DB_UP)
            return;
    }
    if (events & UV_READABLE)
        read_input(db);
}

/* Deferred work: failures of queries made while down, then the first send. */
static void on_defer(uv_idle_t *h)
{
    struct cp_db *db = h->data;
    uv_idle_stop(h);
    struct qlist all = qlist_take(&db->failed);
    struct query *q;
    while ((q = qlist_pop(&all)))
        deliver(db, q, NULL, q->err ? q->err : "database unavailable");
    if (db->state == DB_UP)
        pump(db);
}

/* ---- public API ------------------------------------------------------------------------------ */

int cp_db_open(uv_loop_t *loop, const char *conninfo, struct cp_db **out, char **err)
{
    struct cp_db *db = calloc(1, sizeof(*db));
    if (!db || !(db->conninfo = strdup(conninfo))) {
        free(db);
        return cp__fail(err, -ENOMEM, "out of memory");
    }
    db->loop = loop;
    db->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_init(loop, &db->timer);
    uv_idle_init(loop, &db->defer);
    db->timer.data = db;
    db->defer.data = db;
    db->handles = 2;
    /* The first attempt starts from the loop, after the caller has set its callbacks. */
    db->state = DB_DOWN;
    uv_timer_start(&db->timer, on_timer, 0, 0);
    *out = db;
    return 0;
}

void cp_db_on_state(struct cp_db *db, cp_db_state_cb cb, void *ud)
{
    db->state_cb = cb;
    db->state_ud = ud;
}

void cp_db_on_notify(struct cp_db *db, cp_db_notify_cb cb, void *ud)
{
    db->notify_cb = cb;
    db->notify_ud = ud;
}

bool cp_db_is_up(const struct cp_db *db)
{
    return db->state == DB_UP;
}

static int submit(struct cp_db *db, struct query *q)
{
    if (db->state != DB_UP && db->known_down) {
        /* Known to be down (retrying or waiting to): fail now rather than wait. */
        q->err = strdup(or_oom(db->last_error));
        qlist_push(&db->failed, q);
    } else {
        /* UP, or the first connection is on its way. */
        qlist_push(&db->queue, q);
        if (db->state != DB_UP || db->inflight)
            return 0;
    }
    uv_idle_start(&db->defer, on_defer);
    return 0;
}

int cp_db_query(struct cp_db *db, const char *sql, int nparams, const char *const *params,
                cp_db_result_cb cb, void *ud)
{
    if (db->state == DB_CLOSING)
        return -ESHUTDOWN;
    SY_REQUIRE(nparams >= 0);
    struct query *q = query_new(sql, nparams, params, cb, ud);
    if (!q)
        return -ENOMEM;
    return submit(db, q);
}

int cp_db_exec(struct cp_db *db, const char *sql, cp_db_result_cb cb, void *ud)
{
    return cp_db_query(db, sql, 0, NULL, cb, ud);
}

int cp_db_script(struct cp_db *db, const char *sql, cp_db_result_cb cb, void *ud)
{
    if (db->state == DB_CLOSING)
        return -ESHUTDOWN;
    struct query *q = query_new(sql, 0, NULL, cb, ud);
    if (!q)
        return -ENOMEM;
    q->script = true;
    return submit(db, q);
}

int cp_db_listen(struct cp_db *db, const char *channel)
{
    if (db->state == DB_CLOSING)
        return -ESHUTDOWN;
    for (struct channel *c = db->channels; c; c = c->next)
        if (strcmp(c->name, channel) == 0)
            return 0;
    size_t n = strlen(channel);
    struct channel *c = malloc(sizeof(*c) + n + 1);
    if (!c)
        return -ENOMEM;
    memcpy(c->name, channel, n + 1);
    /* Appended, so reconnects LISTEN in the order of the calls. */
    struct channel **tail = &db->channels;
    while (*tail)
        tail = &(*tail)->next;
    c->next = NULL;
    *tail = c;
    if (db->state == DB_UP) {
        struct query *q = listen_query(channel);
        if (!q)
            return -ENOMEM;
        return submit(db, q);
    }
    return 0; /* connected() issues it */
}

PGconn *cp_db_connect_blocking(const char *conninfo, char **err)
{
    PGconn *pg = PQconnectdb(conninfo);
    if (!pg) {
        cp__fail(err, -ENOMEM, "cannot connect to the database: out of memory");
        return NULL;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        const char *m = PQerrorMessage(pg);
        cp__fail(err, -EIO, "cannot connect to the database: %.*s", (int)strcspn(m, "\n"), m);
        PQfinish(pg);
        return NULL;
    }
    PQsetNoticeProcessor(pg, notice_to_log, NULL);
    return pg;
}

void cp_db_close(struct cp_db *db)
{
    if (!db || db->state == DB_CLOSING)
        return;
    db->state = DB_CLOSING;
    uv_timer_stop(&db->timer);
    uv_idle_stop(&db->defer);
    drop_poller(db);
    PQfinish(db->pg);
    db->pg = NULL;

    static const char closed[] = "database connection closed";
    struct query *q = db->inflight;
    db->inflight = NULL;
    PQclear(db->inflight_res);
    db->inflight_res = NULL;
    if (q)
        deliver(db, q, NULL, closed);
    fail_all(db, &db->queue, closed);
    fail_all(db, &db->failed, closed);

    while (db->channels) {
        struct channel *c = db->channels;
        db->channels = c->next;
        free(c);
    }
    uv_close((uv_handle_t *)&db->timer, on_handle_closed);
    uv_close((uv_handle_t *)&db->defer, on_handle_closed);
}
