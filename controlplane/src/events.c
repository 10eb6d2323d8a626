/* SPDX-License-Identifier: Apache-2.0 */
/** The decision log's drain (events.h): event ring -> buffer -> `events`, in batches.
 *
 * Why not COPY: db.h drives one libpq connection with PQsendQueryParams and hands each query's
 * final result to a callback; a COPY FROM STDIN would leave that connection in the COPY_IN
 * state, which db.c neither feeds (PQputCopyData/PQputCopyEnd) nor expects, and a second
 * connection just for the log would double the connections of every node. So a batch is ONE
 * INSERT ... SELECT over one parameter, a JSON array of up to 1000 records, expanded by
 * jsonb_array_elements on the server: a single round trip and a single plan, no limit on the
 * number of parameters, which is what COPY would have bought here. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "events.h"
#include "internal.h"
#include "server.h"
#include "sy/buf.h"
#include "sy/log.h"
#include "sy/shm.h"
#include "sy/util.h"
#include "usage.h"

#define CHECK_MS       25    /* how often the ring's fill is looked at */
#define DRAIN_MS       250   /* how often it is drained at the least */
#define BATCH          1000  /* records per statement */
#define BUFFER_MAX     65536 /* records held while the database is away */
#define STOP_CONNECT_S "3"

struct cp_events {
    struct cp_server *cp;
    struct cp__seg seg;
    uv_timer_t timer;
    bool timer_open, stopping;
    unsigned pending; /* queries whose callback has not run */

    struct sy_shm_event *buf; /* FIFO of records read from the ring, not yet stored */
    size_t head, len, cap;    /* ring buffer over <buf> */
    size_t inflight;          /* records of the batch being written (the first ones) */
    uint64_t last_drain_ms;   /* monotonic */
    uint64_t retry_at_ms;     /* after a failed batch, not before this (monotonic) */

    uint64_t stored, batches, failures;
    char *last_error;
    bool failing;
};

static const char insert_sql[] =
    "INSERT INTO events (at, node, worker, request_id, kind, outcome, reason, status, model,"
    " deployment, key, duration_ms, attempt, text, table_version)"
    " SELECT to_timestamp((j->>'at')::bigint / 1000.0), $1, (j->>'w')::int,"
    "  nullif(j->>'rid', ''), j->>'k', j->>'o', nullif(j->>'r', ''),"
    "  nullif((j->>'st')::int, 0), m.name, d.name, k.name, (j->>'dur')::int,"
    "  nullif((j->>'a')::int, 0), nullif(j->>'t', ''), (j->>'v')::bigint"
    " FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS e(j, ord)"
    " LEFT JOIN models m ON m.slot = (j->>'ms')::int"
    " LEFT JOIN deployments d ON d.slot = (j->>'ds')::int"
    " LEFT JOIN api_keys k ON k.slot = (j->>'ks')::int"
    " ORDER BY ord";

/* ---- the buffer ------------------------------------------------------------------------------ */

static struct sy_shm_event *buf_at(struct cp_events *e, size_t i)
{
    return &e->buf[(e->head + i) % e->cap];
}

static void buf_drop_front(struct cp_events *e, size_t n)
{
    e->head = (e->head + n) % e->cap;
    e->len -= n;
}

/* Move what the ring holds into the buffer, as room allows. */
static void drain_ring(struct cp_events *e)
{
    if (!e->seg.shm)
        return;
    uint64_t now = sy_now_ms();
    e->last_drain_ms = now;
    while (e->len < e->cap) {
        if (sy_shm_event_pop(e->seg.shm, now, &e->buf[(e->head + e->len) % e->cap]) != 0)
            break;
        e->len++;
    }
}

static uint64_t ring_fill(const struct sy_shm *shm)
{
    uint64_t enq = atomic_load_explicit(&shm->ring->enqueue_pos, memory_order_relaxed);
    uint64_t deq = atomic_load_explicit(&shm->ring->dequeue_pos, memory_order_relaxed);
    return enq > deq ? enq - deq : 0;
}

/* ---- a batch as JSON ---------------------------------------------------------------------------
 */

/* <s> (at most <max> bytes, maybe not terminated) as a JSON string, invalid UTF-8 replaced by
 * '?': a record cut in the middle of a character must not make PostgreSQL refuse the batch. */
static void json_text(struct sy_buf *b, const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    char clean[SY_EVENT_TEXT_LEN];
    n = SY_MIN(n, sizeof(clean));
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80             ? 1
                     : (c & 0xe0) == 0xc0 ? 2
                     : (c & 0xf0) == 0xe0 ? 3
                     : (c & 0xf8) == 0xf0 ? 4
                                          : 0;
        bool ok = len && i + len <= n && !(len == 2 && c < 0xc2);
        for (size_t k = 1; ok && k < len; k++)
            ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
        if (!ok) {
            clean[i++] = '?';
            continue;
        }
        memcpy(clean + i, s + i, len);
        i += len;
    }
    sy_buf_json_str(b, clean, n);
}

static long long slot_or_none(uint32_t slot)
{
    return slot == SY_SHM_NO_SLOT ? -1 : (long long)slot;
}

static void event_json(struct sy_buf *b, const struct sy_shm_event *ev)
{
    sy_buf_printf(b, "{\"at\":%" PRIu64 ",\"w\":%" PRIu32 ",\"rid\":", ev->ts_ms & INT64_MAX,
                  ev->worker & INT32_MAX);
    json_text(b, ev->request_id, sizeof(ev->request_id));
    sy_buf_printf(b, ",\"k\":\"%s\",\"o\":", sy_event_kind_label((enum sy_event_kind)ev->kind));
    if (ev->outcome < SY_OUTCOME_MAX)
        sy_buf_printf(b, "\"%s\"", sy_outcome_label((enum sy_outcome)ev->outcome));
    else
        sy_buf_puts(b, "null");
    sy_buf_printf(b,
                  ",\"r\":\"%s\",\"st\":%u,\"ms\":%lld,\"ds\":%lld,\"ks\":%lld,\"dur\":%" PRIu32
                  ",\"a\":%" PRIu32 ",\"v\":%" PRIu64 ",\"t\":",
                  sy_reason_label((enum sy_reason)ev->reason), (unsigned)ev->status,
                  slot_or_none(ev->model_slot), slot_or_none(ev->deployment_slot),
                  slot_or_none(ev->key_slot), ev->duration_ms & INT32_MAX, ev->attempt & INT32_MAX,
                  ev->table_version & INT64_MAX);
    json_text(b, ev->text, sizeof(ev->text));
    sy_buf_puts(b, "}");
}

/* The first <n> records of the buffer as a JSON array. */
static void batch_json(struct cp_events *e, size_t n, struct sy_buf *b)
{
    sy_buf_puts(b, "[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            sy_buf_puts(b, ",");
        event_json(b, buf_at(e, i));
    }
    sy_buf_puts(b, "]");
}

/* ---- writing -----------------------------------------------------------------------------------
 */

static void maybe_free(struct cp_events *e)
{
    if (!e->stopping || e->timer_open || e->pending)
        return;
    cp__seg_detach(&e->seg);
    free(e->seg.path);
    free(e->buf);
    free(e->last_error);
    free(e);
}

static void write_batch(struct cp_events *e);

static void on_written(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_events *e = ud;
    e->pending--;
    size_t n = e->inflight;
    e->inflight = 0;
    if (e->stopping) {
        if (!err)
            buf_drop_front(e, n);
        maybe_free(e);
        return;
    }
    if (err) {
        e->failures++;
        free(e->last_error);
        e->last_error = sy_xstrdup(err);
        e->retry_at_ms = sy_now_ms() + DRAIN_MS;
        if (!e->failing)
            sy_log(SY_LOG_WARN, "events",
                   "decision log not written (%s); %zu records wait in memory", err, e->len);
        e->failing = true;
        return;
    }
    if (e->failing)
        sy_log(SY_LOG_INFO, "events", "decision log written again");
    e->failing = false;
    buf_drop_front(e, n);
    e->stored += n;
    e->batches++;
    /* More waiting: the next batch right away. */
    write_batch(e);
}

static void write_batch(struct cp_events *e)
{
    if (e->inflight || !e->len || e->stopping)
        return;
    size_t n = SY_MIN(e->len, (size_t)BATCH);
    struct sy_buf b = SY_BUF_INIT;
    batch_json(e, n, &b);
    const char *params[] = {e->cp->cfg.node_id, b.data};
    if (cp_db_query(e->cp->db, insert_sql, 2, params, on_written, e) == 0) {
        e->inflight = n;
        e->pending++;
    }
    sy_buf_free(&b);
}

static void on_tick(uv_timer_t *t)
{
    struct cp_events *e = t->data;
    if (!cp__seg_attach(&e->seg, "events"))
        return;
    uint64_t now = sy_now_ms();
    bool replaced = cp__seg_replaced(&e->seg);
    if (replaced || now - e->last_drain_ms >= DRAIN_MS ||
        ring_fill(e->seg.shm) > e->seg.shm->caps.event_cells / 2)
        drain_ring(e);
    if (replaced && e->len < e->cap && ring_fill(e->seg.shm) == 0) {
        /* The old segment's producers are gone and its ring is empty: follow the new one. */
        sy_log(SY_LOG_INFO, "events", "the data plane made a new segment; following it");
        cp__seg_detach(&e->seg);
        cp__seg_attach(&e->seg, "events");
    }
    if (now >= e->retry_at_ms)
        write_batch(e);
}

/* ---- the interface ------------------------------------------------------------------------------
 */

int cp__events_start(struct cp_server *cp, const char *shm_path, char **err)
{
    if (!shm_path)
        return 0;
    struct cp_events *e = calloc(1, sizeof(*e));
    if (!e)
        return cp__fail(err, -ENOMEM, "out of memory");
    e->cap = BUFFER_MAX;
    e->buf = calloc(e->cap, sizeof(*e->buf));
    if (!e->buf) {
        free(e);
        return cp__fail(err, -ENOMEM, "out of memory");
    }
    e->cp = cp;
    e->seg.path = sy_xstrdup(shm_path);
    e->seg.writable = true; /* the consumer writes its position */
    cp->events = e;
    uv_timer_init(&cp->loop, &e->timer);
    e->timer.data = e;
    e->timer_open = true;
    uv_timer_start(&e->timer, on_tick, CHECK_MS, CHECK_MS);
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct cp_events *e = h->data;
    e->timer_open = false;
    maybe_free(e);
}

/* The last write, on a connection of its own: the loop is stopping. A batch still in flight on
 * the loop's connection is left to it (its statement has reached the server, which commits it
 * whether or not the answer is read): writing it here too could store it twice. */
static void write_blocking(struct cp_events *e)
{
    drain_ring(e);
    size_t skip = e->inflight;
    if (e->len <= skip)
        return;
    const char *const keys[] = {"dbname", "connect_timeout", NULL};
    const char *const vals[] = {e->cp->cfg.database_url, STOP_CONNECT_S, NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (!pg || PQstatus(pg) != CONNECTION_OK) {
        sy_log(SY_LOG_WARN, "events", "%zu decision-log records lost at stop: %.*s", e->len - skip,
               pg ? (int)strcspn(PQerrorMessage(pg), "\n") : 13,
               pg ? PQerrorMessage(pg) : "out of memory");
        PQfinish(pg);
        return;
    }
    /* The buffer is not needed after this: walk it without consuming it. */
    size_t done = 0, total = e->len - skip;
    while (done < total) {
        size_t n = SY_MIN(total - done, (size_t)BATCH);
        struct sy_buf b = SY_BUF_INIT;
        sy_buf_puts(&b, "[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                sy_buf_puts(&b, ",");
            event_json(&b, buf_at(e, skip + done + i));
        }
        sy_buf_puts(&b, "]");
        const char *params[] = {e->cp->cfg.node_id, b.data};
        PGresult *res = PQexecParams(pg, insert_sql, 2, NULL, params, NULL, NULL, 0);
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        sy_buf_free(&b);
        if (!ok)
            break;
        done += n;
    }
    if (done < total)
        sy_log(SY_LOG_WARN, "events", "%zu decision-log records lost at stop: %.*s", total - done,
               (int)strcspn(PQerrorMessage(pg), "\n"), PQerrorMessage(pg));
    e->stored += done;
    PQfinish(pg);
}

void cp__events_stop(struct cp_server *cp)
{
    struct cp_events *e = cp ? cp->events : NULL;
    if (!e)
        return;
    cp->events = NULL;
    write_blocking(e);
    e->stopping = true;
    uv_close((uv_handle_t *)&e->timer, on_timer_closed);
}

json_t *cp__events_status(struct cp_server *cp)
{
    struct cp_events *e = cp->events;
    if (!e)
        return json_pack("{s:b}", "attached", false);
    const struct sy_shm *shm = e->seg.shm;
    return json_pack(
        "{s:b, s:o, s:o, s:I, s:I, s:I, s:o, s:o, s:o}", "attached", shm != NULL, "ring_cells",
        shm ? json_integer(shm->caps.event_cells) : json_null(), "ring_fill",
        shm ? json_integer((json_int_t)ring_fill(shm)) : json_null(), "stored",
        (json_int_t)e->stored, "buffered", (json_int_t)e->len, "batches", (json_int_t)e->batches,
        "dropped", shm ? json_integer((json_int_t)sy_shm_event_dropped(shm)) : json_null(),
        "skipped", shm ? json_integer((json_int_t)sy_shm_event_skipped(shm)) : json_null(),
        "last_error", e->failing && e->last_error ? json_string(e->last_error) : json_null());
}
