/* SPDX-License-Identifier: Apache-2.0 */
/** The request log's drain (request_log.h): ring -> memory -> request_log, in batches. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "internal.h"
#include "request_log.h"
#include "server.h"
#include "sy/buf.h"
#include "sy/log.h"
#include "sy/shm.h"
#include "sy/table.h"
#include "sy/util.h"
#include "usage.h"

#define TICK_MS        100
#define BATCH_RECORDS  200
#define BATCH_BYTES    (4u << 20) /* JSON of a batch, about */
#define BUFFER_RECORDS 65536
#define BUFFER_BYTES   (64u << 20)
#define RETRY_MS       500
#define PRUNE_FIRST_MS 5000
#define PRUNE_EVERY_MS (10 * 60000)
#define STOP_CONNECT_S "3"

/* One record as popped: the head, then the bodies. */
struct item {
    char *data;
    size_t len;
};

struct cp_reqlog {
    struct cp_server *cp;
    struct cp__seg seg;
    uv_timer_t tick, prune;
    unsigned open_handles, pending;
    bool stopping;

    struct item *buf; /* FIFO of records not yet stored */
    size_t head, len, cap;
    size_t bytes;    /* held in <buf> */
    size_t inflight; /* records of the batch being written (the first ones) */
    uint64_t retry_at_ms;
    char *scratch; /* SY_SHM_REQLOG_RECORD_MAX bytes to pop into */

    uint64_t stored, batches, failures, pruned;
    char *last_error;
    bool failing;
};

static const char insert_sql[] =
    "INSERT INTO request_log (at, request_id, node, worker, key_id, key, agent, user_name, model,"
    " deployment, status, outcome, latency_ms, ttfb_ms, prompt_tokens, completion_tokens, cost,"
    " stream, attempts, table_version, request_body, request_bytes, request_truncated,"
    " response_body, response_bytes, response_truncated)"
    " SELECT to_timestamp((j->>'at')::bigint / 1000.0), j->>'rid', $1, (j->>'w')::int,"
    "  nullif((j->>'kid')::bigint, 0), k.name, k.agent, k.user_name, m.name, d.name,"
    "  nullif((j->>'st')::int, 0), j->>'o', (j->>'lat')::bigint / 1000.0,"
    "  nullif((j->>'ttfb')::bigint, 0) / 1000.0, (j->>'pt')::bigint, (j->>'ct')::bigint,"
    "  (j->>'cost')::bigint / 1000000.0, (j->>'s')::boolean, (j->>'a')::int, (j->>'v')::bigint,"
    "  j->>'req', (j->>'reqn')::bigint, (j->>'reqt')::boolean,"
    "  j->>'resp', (j->>'respn')::bigint, (j->>'respt')::boolean"
    " FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS e(j, ord)"
    " LEFT JOIN models m ON m.slot = (j->>'ms')::int"
    " LEFT JOIN deployments d ON d.slot = (j->>'ds')::int"
    " LEFT JOIN api_keys k ON k.id = nullif((j->>'kid')::bigint, 0)"
    " ORDER BY ord";

static const char prune_sql[] =
    "DELETE FROM request_log WHERE id IN (SELECT id FROM request_log"
    " WHERE at < now() - make_interval(days => $1::int) ORDER BY id LIMIT 10000)";

/* ---- a record as JSON --------------------------------------------------------------------------
 */

/* <s>/<n> as a JSON string: invalid UTF-8 (a body cut inside a character, or not text at all)
 * and NUL, which PostgreSQL's text cannot hold, become U+FFFD. */
static void json_bytes(struct sy_buf *b, const char *s, size_t n)
{
    struct sy_buf clean = SY_BUF_INIT;
    sy_buf_reserve(&clean, n + 16);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c == 0               ? 0
                     : c < 0x80           ? 1
                     : (c & 0xe0) == 0xc0 ? 2
                     : (c & 0xf0) == 0xe0 ? 3
                     : (c & 0xf8) == 0xf0 ? 4
                                          : 0;
        bool ok = len && i + len <= n && !(len == 2 && c < 0xc2) && !(len == 4 && c > 0xf4);
        for (size_t k = 1; ok && k < len; k++)
            ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
        if (ok && len == 3) {
            unsigned char c1 = (unsigned char)s[i + 1];
            ok = !(c == 0xe0 && c1 < 0xa0) && !(c == 0xed && c1 >= 0xa0); /* overlong, surrogate */
        }
        if (ok && len == 4) {
            unsigned char c1 = (unsigned char)s[i + 1];
            ok = !(c == 0xf0 && c1 < 0x90) && !(c == 0xf4 && c1 >= 0x90);
        }
        if (!ok) {
            sy_buf_append(&clean, "\xef\xbf\xbd", 3);
            i++;
            continue;
        }
        sy_buf_append(&clean, s + i, len);
        i += len;
    }
    sy_buf_json_str(b, clean.data ? clean.data : "", clean.len);
    sy_buf_free(&clean);
}

static long long slot_or_none(uint32_t slot)
{
    return slot == SY_SHM_NO_SLOT ? -1 : (long long)slot;
}

static uint64_t clamp(uint64_t v)
{
    return v > INT64_MAX ? INT64_MAX : v;
}

static void record_json(struct sy_buf *b, const struct item *it)
{
    struct sy_reqlog_head h;
    memcpy(&h, it->data, sizeof(h));
    size_t body_room = it->len - sizeof(h);
    uint32_t req_len = (uint32_t)SY_MIN((size_t)h.req_len, body_room);
    uint32_t resp_len = (uint32_t)SY_MIN((size_t)h.resp_len, body_room - req_len);
    const char *req = it->data + sizeof(h), *resp = req + req_len;
    char rid[SY_EVENT_REQUEST_ID_LEN];
    memcpy(rid, h.request_id, sizeof(rid));
    rid[sizeof(rid) - 1] = '\0';
    sy_buf_printf(b, "{\"at\":%" PRIu64 ",\"rid\":", clamp(h.ts_ms));
    json_bytes(b, rid, strlen(rid));
    sy_buf_printf(b,
                  ",\"w\":%" PRIu32 ",\"kid\":%" PRIu64 ",\"ms\":%lld,\"ds\":%lld,\"st\":%u,"
                  "\"o\":\"%s\",\"lat\":%" PRIu64 ",\"ttfb\":%" PRIu64 ",\"pt\":%" PRIu64
                  ",\"ct\":%" PRIu64 ",\"cost\":%" PRIu64 ",\"s\":%s,\"a\":%u,\"v\":%" PRIu64,
                  h.worker & INT32_MAX, clamp(h.key_id), slot_or_none(h.model_slot),
                  slot_or_none(h.deployment_slot), (unsigned)h.status,
                  sy_outcome_label((enum sy_outcome)h.outcome), clamp(h.latency_us),
                  clamp(h.ttfb_us), clamp(h.prompt_tokens), clamp(h.completion_tokens),
                  clamp(h.cost_micros), h.flags & SY_REQLOG_STREAM ? "true" : "false",
                  (unsigned)h.attempts, clamp(h.table_version));
    if (h.flags & SY_REQLOG_BODIES) {
        sy_buf_puts(b, ",\"req\":");
        json_bytes(b, req, req_len);
        sy_buf_printf(b, ",\"reqn\":%" PRIu64 ",\"reqt\":%s,\"resp\":", clamp(h.req_size),
                      h.flags & SY_REQLOG_REQ_TRUNCATED ? "true" : "false");
        json_bytes(b, resp, resp_len);
        sy_buf_printf(b, ",\"respn\":%" PRIu64 ",\"respt\":%s}", clamp(h.resp_size),
                      h.flags & SY_REQLOG_RESP_TRUNCATED ? "true" : "false");
    } else {
        sy_buf_puts(b, ",\"req\":null,\"reqn\":null,\"reqt\":false,\"resp\":null,"
                       "\"respn\":null,\"respt\":false}");
    }
}

/* ---- the buffer --------------------------------------------------------------------------------
 */

static struct item *buf_at(struct cp_reqlog *r, size_t i)
{
    return &r->buf[(r->head + i) % r->cap];
}

static void buf_drop_front(struct cp_reqlog *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct item *it = buf_at(r, i);
        r->bytes -= it->len;
        SY_FREE(it->data);
    }
    r->head = (r->head + n) % r->cap;
    r->len -= n;
}

/* Move what the ring holds into the buffer, as room allows. */
static void drain_ring(struct cp_reqlog *r)
{
    if (!r->seg.shm)
        return;
    uint64_t now = sy_now_ms();
    size_t n;
    while (r->len < r->cap && r->bytes < BUFFER_BYTES &&
           sy_shm_reqlog_pop(r->seg.shm, now, r->scratch, SY_SHM_REQLOG_RECORD_MAX, &n) == 0) {
        struct item *it = buf_at(r, r->len);
        it->data = sy_xmalloc(n);
        memcpy(it->data, r->scratch, n);
        it->len = n;
        r->bytes += n;
        r->len++;
    }
}

static uint64_t ring_fill(const struct sy_shm *shm)
{
    uint64_t enq = atomic_load_explicit(&shm->reqlog->enqueue_pos, memory_order_relaxed);
    uint64_t deq = atomic_load_explicit(&shm->reqlog->dequeue_pos, memory_order_relaxed);
    return enq > deq ? enq - deq : 0;
}

/* The next batch from record <from> of the buffer as a JSON array; returns how many. */
static size_t batch_json(struct cp_reqlog *r, size_t from, struct sy_buf *b)
{
    size_t n = 0;
    sy_buf_puts(b, "[");
    while (from + n < r->len && n < BATCH_RECORDS && b->len < BATCH_BYTES) {
        if (n)
            sy_buf_puts(b, ",");
        record_json(b, buf_at(r, from + n));
        n++;
    }
    sy_buf_puts(b, "]");
    return n;
}

/* ---- writing -----------------------------------------------------------------------------------
 */

static void maybe_free(struct cp_reqlog *r)
{
    if (!r->stopping || r->open_handles || r->pending)
        return;
    cp__seg_detach(&r->seg);
    free(r->seg.path);
    buf_drop_front(r, r->len);
    free(r->buf);
    free(r->scratch);
    free(r->last_error);
    free(r);
}

static void write_batch(struct cp_reqlog *r);

static void on_written(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_reqlog *r = ud;
    r->pending--;
    size_t n = r->inflight;
    r->inflight = 0;
    if (r->stopping) {
        if (!err)
            buf_drop_front(r, n);
        maybe_free(r);
        return;
    }
    if (err) {
        r->failures++;
        free(r->last_error);
        r->last_error = sy_xstrdup(err);
        r->retry_at_ms = sy_now_ms() + RETRY_MS;
        if (!r->failing)
            sy_log(SY_LOG_WARN, "reqlog",
                   "request log not written (%s); %zu records wait in memory", err, r->len);
        r->failing = true;
        return;
    }
    if (r->failing)
        sy_log(SY_LOG_INFO, "reqlog", "request log written again");
    r->failing = false;
    buf_drop_front(r, n);
    r->stored += n;
    r->batches++;
    write_batch(r);
}

static void write_batch(struct cp_reqlog *r)
{
    if (r->inflight || !r->len || r->stopping)
        return;
    struct sy_buf b = SY_BUF_INIT;
    size_t n = batch_json(r, 0, &b);
    const char *params[] = {r->cp->cfg.node_id, b.data};
    if (cp_db_query(r->cp->db, insert_sql, 2, params, on_written, r) == 0) {
        r->inflight = n;
        r->pending++;
    }
    sy_buf_free(&b);
}

static void on_tick(uv_timer_t *t)
{
    struct cp_reqlog *r = t->data;
    if (!cp__seg_attach(&r->seg, "reqlog"))
        return;
    bool replaced = cp__seg_replaced(&r->seg);
    drain_ring(r);
    if (replaced && r->len < r->cap && ring_fill(r->seg.shm) == 0) {
        sy_log(SY_LOG_INFO, "reqlog", "the data plane made a new segment; following it");
        cp__seg_detach(&r->seg);
        cp__seg_attach(&r->seg, "reqlog");
    }
    if (sy_now_ms() >= r->retry_at_ms)
        write_batch(r);
}

static void on_pruned(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_reqlog *r = ud;
    r->pending--;
    if (r->stopping) {
        maybe_free(r);
        return;
    }
    if (err) {
        sy_log(SY_LOG_DEBUG, "reqlog", "retention not applied: %s", err);
        return;
    }
    uint64_t n = strtoull(PQcmdTuples((PGresult *)res), NULL, 10);
    r->pruned += n;
    if (n)
        sy_log(SY_LOG_INFO, "reqlog", "deleted %" PRIu64 " request-log rows past the retention", n);
}

static void on_prune_timer(uv_timer_t *t)
{
    struct cp_reqlog *r = t->data;
    if (r->stopping || !cp_db_is_up(r->cp->db))
        return;
    char days[24];
    snprintf(days, sizeof(days), "%d", r->cp->cfg.request_log_retention_days);
    const char *params[] = {days};
    if (cp_db_query(r->cp->db, prune_sql, 1, params, on_pruned, r) == 0)
        r->pending++;
}

/* ---- the interface -----------------------------------------------------------------------------
 */

int cp__reqlog_start(struct cp_server *cp, const char *shm_path, char **err)
{
    if (!shm_path)
        return 0;
    struct cp_reqlog *r = calloc(1, sizeof(*r));
    if (!r)
        return cp__fail(err, -ENOMEM, "out of memory");
    r->cap = BUFFER_RECORDS;
    r->buf = calloc(r->cap, sizeof(*r->buf));
    r->scratch = malloc(SY_SHM_REQLOG_RECORD_MAX);
    if (!r->buf || !r->scratch) {
        free(r->buf);
        free(r->scratch);
        free(r);
        return cp__fail(err, -ENOMEM, "out of memory");
    }
    r->cp = cp;
    r->seg.path = sy_xstrdup(shm_path);
    r->seg.writable = true; /* the consumer writes its position */
    cp->reqlog = r;
    uv_timer_init(&cp->loop, &r->tick);
    uv_timer_init(&cp->loop, &r->prune);
    r->tick.data = r->prune.data = r;
    r->open_handles = 2;
    uv_timer_start(&r->tick, on_tick, TICK_MS, TICK_MS);
    uv_timer_start(&r->prune, on_prune_timer, PRUNE_FIRST_MS, PRUNE_EVERY_MS);
    sy_log(SY_LOG_INFO, "reqlog", "request log: %s (--request-log), kept %d days",
           sy_request_log_name(cp->cfg.request_log), cp->cfg.request_log_retention_days);
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    struct cp_reqlog *r = h->data;
    r->open_handles--;
    maybe_free(r);
}

/* The last write, on a connection of its own (a batch in flight is left to its connection). */
static void write_blocking(struct cp_reqlog *r)
{
    drain_ring(r);
    size_t skip = r->inflight;
    if (r->len <= skip)
        return;
    const char *const keys[] = {"dbname", "connect_timeout", NULL};
    const char *const vals[] = {r->cp->cfg.database_url, STOP_CONNECT_S, NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    size_t done = 0, total = r->len - skip;
    if (pg && PQstatus(pg) == CONNECTION_OK) {
        while (done < total) {
            struct sy_buf b = SY_BUF_INIT;
            size_t n = batch_json(r, skip + done, &b);
            const char *params[] = {r->cp->cfg.node_id, b.data};
            PGresult *res = PQexecParams(pg, insert_sql, 2, NULL, params, NULL, NULL, 0);
            bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
            PQclear(res);
            sy_buf_free(&b);
            if (!ok)
                break;
            done += n;
        }
    }
    if (done < total)
        sy_log(SY_LOG_WARN, "reqlog", "%zu request-log records lost at stop: %.*s", total - done,
               pg ? (int)strcspn(PQerrorMessage(pg), "\n") : 13,
               pg ? PQerrorMessage(pg) : "out of memory");
    r->stored += done;
    PQfinish(pg);
}

void cp__reqlog_stop(struct cp_server *cp)
{
    struct cp_reqlog *r = cp ? cp->reqlog : NULL;
    if (!r)
        return;
    cp->reqlog = NULL;
    write_blocking(r);
    r->stopping = true;
    uv_close((uv_handle_t *)&r->tick, on_closed);
    uv_close((uv_handle_t *)&r->prune, on_closed);
}

json_t *cp__reqlog_status(struct cp_server *cp)
{
    struct cp_reqlog *r = cp->reqlog;
    const char *mode = sy_request_log_name(cp->cfg.request_log);
    if (!r)
        return json_pack("{s:s, s:b}", "mode", mode, "attached", false);
    const struct sy_shm *shm = r->seg.shm;
    return json_pack(
        "{s:s, s:b, s:o, s:o, s:I, s:I, s:I, s:o, s:o, s:I, s:o}", "mode", mode, "attached",
        shm != NULL, "ring_cells", shm ? json_integer(shm->caps.reqlog_cells) : json_null(),
        "ring_fill", shm ? json_integer((json_int_t)ring_fill(shm)) : json_null(), "stored",
        (json_int_t)r->stored, "buffered", (json_int_t)r->len, "batches", (json_int_t)r->batches,
        "dropped", shm ? json_integer((json_int_t)sy_shm_reqlog_dropped(shm)) : json_null(),
        "skipped", shm ? json_integer((json_int_t)atomic_load(&shm->reqlog->skipped)) : json_null(),
        "pruned", (json_int_t)r->pruned, "last_error",
        r->failing && r->last_error ? json_string(r->last_error) : json_null());
}
