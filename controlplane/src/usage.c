/* SPDX-License-Identifier: Apache-2.0 */
/** The usage flusher (usage.h): shared-memory totals -> usage_flush() -> per-minute rollups,
 * and their compaction; plus the segment follower and the time parsing the admin API uses. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "budget.h"
#include "internal.h"
#include "server.h"
#include "sy/buf.h"
#include "sy/log.h"
#include "sy/shm.h"
#include "sy/util.h"
#include "usage.h"

#define COMPACT_FIRST_MS 5000         /* the first compaction, after start */
#define COMPACT_EVERY_MS (10 * 60000) /* then this often */
#define STOP_CONNECT_S   "3"          /* connect timeout of the last flush at stop */
#define DB_UP_FLUSH_MS   200          /* a flush soon after the database comes back */

/* ============================================================================================
 * The segment follower
 * ========================================================================================== */

bool cp__seg_attach(struct cp__seg *s, const char *what)
{
    if (s->shm)
        return true;
    if (!s->path)
        return false;
    char *err = NULL;
    struct stat st;
    if (stat(s->path, &st) == -1) {
        if (!s->warned)
            sy_log(SY_LOG_INFO, what, "shared memory %s not there yet (%s); will retry", s->path,
                   strerror(errno));
        s->warned = true;
        return false;
    }
    if (sy_shm_attach(s->path, s->writable, &s->shm, &err) != 0) {
        if (!s->warned)
            sy_log(SY_LOG_WARN, what, "cannot map the shared memory %s: %s; will retry", s->path,
                   err ? err : "out of memory");
        free(err);
        s->warned = true;
        s->shm = NULL;
        return false;
    }
    /* The file may have been replaced between stat() and the attach: then the next
     * cp__seg_replaced() says so and the caller maps the newer one; nothing is lost. */
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->warned = false;
    sy_log(SY_LOG_INFO, what, "mapped the shared memory %s (generation %" PRIu64 ")", s->path,
           s->shm->hdr->generation);
    return true;
}

bool cp__seg_replaced(struct cp__seg *s)
{
    struct stat st;
    if (!s->shm || stat(s->path, &st) == -1)
        return false; /* gone: what we map is all there is */
    return st.st_dev != s->dev || st.st_ino != s->ino;
}

void cp__seg_detach(struct cp__seg *s)
{
    sy_shm_detach(s->shm);
    s->shm = NULL;
}

/* ============================================================================================
 * Time
 * ========================================================================================== */

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

bool cp__parse_time(const char *s, int64_t *ms)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    size_t n = strlen(s);
    uint64_t secs;
    if (n && n <= 12 && sy_parse_u64(s, n, &secs)) {
        *ms = (int64_t)secs * 1000;
        return true;
    }
    int y, mo, d, h = 0, mi = 0, sec = 0, frac_ms = 0, off = 0;
    if (n < 10 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d) || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1])
        return false;
    const char *p = s + 10;
    if (*p) {
        if ((*p != 'T' && *p != 't' && *p != ' ') || strlen(p) < 9 || !digits(p + 1, 2, &h) ||
            p[3] != ':' || !digits(p + 4, 2, &mi) || p[6] != ':' || !digits(p + 7, 2, &sec) ||
            h > 23 || mi > 59 || sec > 60)
            return false;
        p += 9;
        if (*p == '.') {
            int scale = 100, nd = 0;
            for (p++; *p >= '0' && *p <= '9'; p++, nd++) {
                frac_ms += (*p - '0') * scale;
                scale /= 10;
            }
            if (!nd)
                return false;
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int oh, om;
            if (strlen(p) != 6 || !digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) ||
                oh > 23 || om > 59)
                return false;
            off = (oh * 60 + om) * (*p == '+' ? 1 : -1);
            p += 6;
        } else {
            return false;
        }
        if (*p)
            return false;
    }
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return false;
    *ms = ((int64_t)t - (int64_t)off * 60) * 1000 + frac_ms;
    return true;
}

const char *cp__format_time(int64_t ms, char buf[32])
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, 32 - n, ".%03dZ", (int)(ms % 1000));
    return buf;
}

/* ============================================================================================
 * Totals
 * ========================================================================================== */

/* What the rollups keep of a slot's totals (see usage_flush()). */
enum {
    V_REQUESTS = 0,
    V_SUCCESSES,
    V_RETRIES,
    V_FALLBACKS,
    V_RATE_LIMITED,
    V_PROMPT_TOKENS,
    V_COMPLETION_TOKENS,
    V_COST_MICROS,
    V_LATENCY_COUNT,
    V_LATENCY_SUM_US,
    V_MAX,
};

static const char *const v_names[V_MAX] = {
    "requests",      "successes",         "retries",     "fallbacks",     "rate_limited",
    "prompt_tokens", "completion_tokens", "cost_micros", "latency_count", "latency_sum_us",
};

struct rec {
    uint64_t v[V_MAX];
    uint64_t b[SY_HIST_BUCKETS];
};

static const char *const kind_names[SY_SHM_KIND_MAX] = {
    [SY_SHM_DEPLOYMENT] = "deployment",
    [SY_SHM_MODEL] = "model",
    [SY_SHM_KEY] = "key",
};

static uint32_t kind_cap(const struct sy_shm *shm, enum sy_shm_kind k)
{
    return k == SY_SHM_DEPLOYMENT ? shm->caps.max_deployments
           : k == SY_SHM_MODEL    ? shm->caps.max_models
                                  : shm->caps.max_keys;
}

static void read_rec(const struct sy_shm *shm, enum sy_shm_kind k, uint32_t slot, struct rec *r)
{
    struct sy_shm_totals t;
    memset(r, 0, sizeof(*r));
    if (sy_shm_read(shm, k, slot, &t) != 0)
        return;
    for (int o = 0; o < SY_OUTCOME_MAX; o++)
        r->v[V_REQUESTS] += t.requests[o];
    r->v[V_SUCCESSES] = t.requests[SY_OUTCOME_SUCCESS];
    /* requests refused by our own limits (the outcome; the counter of the same name also
     * counts deployments skipped on the way, which would count one request twice) */
    r->v[V_RATE_LIMITED] = t.requests[SY_OUTCOME_RATE_LIMITED];
    r->v[V_RETRIES] = t.ctr[SY_CTR_RETRIES];
    r->v[V_FALLBACKS] = t.ctr[SY_CTR_FALLBACKS];
    r->v[V_PROMPT_TOKENS] = t.ctr[SY_CTR_PROMPT_TOKENS];
    r->v[V_COMPLETION_TOKENS] = t.ctr[SY_CTR_COMPLETION_TOKENS];
    r->v[V_COST_MICROS] = t.ctr[SY_CTR_COST_MICROS];
    if (k != SY_SHM_KEY) {
        for (int i = 0; i < SY_HIST_BUCKETS; i++) {
            r->b[i] = t.hist[SY_HIST_LATENCY][i];
            r->v[V_LATENCY_COUNT] += r->b[i];
        }
        r->v[V_LATENCY_SUM_US] = t.hist_sum_us[SY_HIST_LATENCY];
    }
}

/* bigint columns: a total beyond INT64_MAX cannot happen in practice; clamp rather than fail. */
static void put_i64(struct sy_buf *b, uint64_t v)
{
    sy_buf_putu(b, v > INT64_MAX ? INT64_MAX : v);
}

static void rec_json(struct sy_buf *b, enum sy_shm_kind k, uint32_t slot, const struct rec *r)
{
    sy_buf_printf(b, "{\"kind\":\"%s\",\"slot\":%" PRIu32, kind_names[k], slot);
    for (int i = 0; i < V_MAX; i++) {
        sy_buf_printf(b, ",\"%s\":", v_names[i]);
        put_i64(b, r->v[i]);
    }
    if (k == SY_SHM_KEY) {
        sy_buf_puts(b, ",\"latency_buckets\":null}");
        return;
    }
    sy_buf_puts(b, ",\"latency_buckets\":[");
    for (int i = 0; i < SY_HIST_BUCKETS; i++) {
        if (i)
            sy_buf_puts(b, ",");
        put_i64(b, r->b[i]);
    }
    sy_buf_puts(b, "]}");
}

/* ============================================================================================
 * The flusher
 * ========================================================================================== */

struct cp_usage {
    struct cp_server *cp;
    struct cp__seg seg;
    uv_timer_t flush_timer, compact_timer;
    unsigned open_handles, pending; /* freed when stopping and both are 0 */
    bool stopping;

    /* per kind: what the database holds (the last successful flush) and what is being sent */
    struct rec *flushed[SY_SHM_KIND_MAX];
    struct rec *sending[SY_SHM_KIND_MAX];
    uint32_t cap[SY_SHM_KIND_MAX];
    bool busy;        /* a flush is in flight */
    bool then_switch; /* the segment was replaced: map the new one after this flush */
    uint64_t generation;

    /* status */
    uint64_t flushes, failures, rows_sent;
    int64_t last_ok_ms;
    char *last_error;
    bool failing; /* the last flush failed (log the first failure only) */
};

static const char flush_sql[] = "SELECT usage_flush($1, $2::bigint, $3::jsonb)";
static const char compact_sql[] = "SELECT usage_compact($1::int, $2::int)";

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void maybe_free(struct cp_usage *u)
{
    if (!u->stopping || u->open_handles || u->pending)
        return;
    cp__seg_detach(&u->seg);
    free(u->seg.path);
    for (int k = 0; k < SY_SHM_KIND_MAX; k++) {
        free(u->flushed[k]);
        free(u->sending[k]);
    }
    free(u->last_error);
    free(u);
}

static void on_closed(uv_handle_t *h)
{
    struct cp_usage *u = h->data;
    u->open_handles--;
    maybe_free(u);
}

/* Size the per-slot arrays for the mapped segment; everything counts as never flushed. */
static void arrays_for_segment(struct cp_usage *u)
{
    for (int k = 0; k < SY_SHM_KIND_MAX; k++) {
        uint32_t n = kind_cap(u->seg.shm, (enum sy_shm_kind)k);
        free(u->flushed[k]);
        free(u->sending[k]);
        u->flushed[k] = sy_xcalloc(n ? n : 1, sizeof(struct rec));
        u->sending[k] = sy_xcalloc(n ? n : 1, sizeof(struct rec));
        u->cap[k] = n;
    }
    u->generation = u->seg.shm->hdr->generation;
}

static bool attach(struct cp_usage *u)
{
    if (u->seg.shm)
        return true;
    if (!cp__seg_attach(&u->seg, "usage"))
        return false;
    arrays_for_segment(u);
    return true;
}

/* Read every slot into u->sending; write the rows that moved since the last successful flush
 * to <b> as a JSON array. Returns the number of rows. */
static unsigned collect(struct cp_usage *u, struct sy_buf *b)
{
    unsigned rows = 0;
    cp__budget_usage_collect(u->cp, u->seg.shm); /* before the key counters: see budget.h */
    sy_buf_puts(b, "[");
    for (int k = 0; k < SY_SHM_KIND_MAX; k++) {
        for (uint32_t s = 0; s < u->cap[k]; s++) {
            struct rec *r = &u->sending[k][s];
            read_rec(u->seg.shm, (enum sy_shm_kind)k, s, r);
            if (memcmp(r, &u->flushed[k][s], sizeof(*r)) == 0)
                continue;
            if (rows++)
                sy_buf_puts(b, ",");
            rec_json(b, (enum sy_shm_kind)k, s, r);
        }
    }
    sy_buf_puts(b, "]");
    return rows;
}

static void flush_succeeded(struct cp_usage *u, unsigned rows)
{
    for (int k = 0; k < SY_SHM_KIND_MAX; k++)
        memcpy(u->flushed[k], u->sending[k], (size_t)u->cap[k] * sizeof(struct rec));
    cp__budget_usage_flushed(u->cp);
    u->flushes++;
    u->rows_sent += rows;
    u->last_ok_ms = wall_ms();
    if (u->failing)
        sy_log(SY_LOG_INFO, "usage", "usage flushed again after %" PRIu64 " failed attempts",
               u->failures);
    u->failing = false;
}

static void flush_failed(struct cp_usage *u, const char *err)
{
    u->failures++;
    free(u->last_error);
    u->last_error = sy_xstrdup(err ? err : "unknown error");
    if (!u->failing && !u->stopping)
        sy_log(SY_LOG_WARN, "usage",
               "usage not flushed (%s); the counts wait in shared memory and the next flush "
               "that succeeds adds them",
               u->last_error);
    u->failing = true;
}

/* The segment was replaced and the old one's counts are in: map the new one. */
static void switch_segment(struct cp_usage *u)
{
    sy_log(SY_LOG_INFO, "usage",
           "the data plane made a new shared memory segment; generation %" PRIu64
           " is flushed, following the new one",
           u->generation);
    cp__seg_detach(&u->seg);
    u->then_switch = false;
    attach(u);
}

static void on_flushed(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_usage *u = ud;
    unsigned rows = 0;
    u->pending--;
    u->busy = false;
    if (u->stopping) {
        maybe_free(u);
        return;
    }
    if (err) {
        flush_failed(u, err);
        return;
    }
    for (int k = 0; k < SY_SHM_KIND_MAX; k++)
        for (uint32_t s = 0; s < u->cap[k]; s++)
            rows += memcmp(&u->sending[k][s], &u->flushed[k][s], sizeof(struct rec)) != 0;
    flush_succeeded(u, rows);
    sy_log(SY_LOG_DEBUG, "usage", "flushed %u slots into %s rollup rows", rows,
           PQntuples(res) ? PQgetvalue(res, 0, 0) : "?");
    if (u->then_switch)
        switch_segment(u);
}

static void flush(struct cp_usage *u)
{
    if (u->busy || u->stopping || !attach(u))
        return;
    bool replaced = cp__seg_replaced(&u->seg);
    struct sy_buf b = SY_BUF_INIT;
    unsigned rows = collect(u, &b);
    if (!rows) {
        sy_buf_free(&b);
        if (replaced) {
            u->then_switch = true;
            switch_segment(u);
        }
        return;
    }
    char gen[24];
    snprintf(gen, sizeof(gen), "%" PRIu64, u->generation & INT64_MAX);
    const char *params[] = {u->cp->cfg.node_id, gen, b.data};
    if (cp_db_query(u->cp->db, flush_sql, 3, params, on_flushed, u) == 0) {
        u->busy = true;
        u->pending++;
        u->then_switch = replaced;
    }
    sy_buf_free(&b);
}

static void on_flush_timer(uv_timer_t *t)
{
    flush(t->data);
}

static void on_compacted(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_usage *u = ud;
    u->pending--;
    if (u->stopping) {
        maybe_free(u);
        return;
    }
    if (err) {
        sy_log(SY_LOG_DEBUG, "usage", "compaction not run: %s", err);
        return;
    }
    const char *n = PQntuples(res) ? PQgetvalue(res, 0, 0) : "0";
    if (strcmp(n, "-1") == 0)
        sy_log(SY_LOG_DEBUG, "usage", "another control plane compacts usage now");
    else if (strcmp(n, "0") != 0)
        sy_log(SY_LOG_INFO, "usage", "compacted usage: %s hourly rows from old minutes", n);
}

static void on_compact_timer(uv_timer_t *t)
{
    struct cp_usage *u = t->data;
    if (u->stopping || !cp_db_is_up(u->cp->db))
        return;
    char days[24], edays[24];
    snprintf(days, sizeof(days), "%d", u->cp->cfg.usage_retention_days);
    snprintf(edays, sizeof(edays), "%d", u->cp->cfg.events_retention_days);
    const char *params[] = {days, edays};
    if (cp_db_query(u->cp->db, compact_sql, 2, params, on_compacted, u) == 0)
        u->pending++;
}

/* ---- the interface ----------------------------------------------------------------------------
 */

int cp__usage_start(struct cp_server *cp, const char *shm_path, char **err)
{
    struct cp_usage *u = calloc(1, sizeof(*u));
    if (!u)
        return cp__fail(err, -ENOMEM, "out of memory");
    u->cp = cp;
    u->seg.path = shm_path ? sy_xstrdup(shm_path) : NULL;
    u->seg.writable = false;
    cp->usage = u;
    uv_timer_init(&cp->loop, &u->flush_timer);
    uv_timer_init(&cp->loop, &u->compact_timer);
    u->flush_timer.data = u->compact_timer.data = u;
    u->open_handles = 2;
    uint64_t every = cp->cfg.usage_flush_ms > 0 ? (uint64_t)cp->cfg.usage_flush_ms : 10000;
    if (u->seg.path)
        uv_timer_start(&u->flush_timer, on_flush_timer, every, every);
    else
        sy_log(SY_LOG_INFO, "usage",
               "no shared memory segment (--shm): usage and the decision log are not collected");
    uv_timer_start(&u->compact_timer, on_compact_timer, COMPACT_FIRST_MS, COMPACT_EVERY_MS);
    attach(u);
    return 0;
}

/* The last flush, on a connection of its own: the loop is stopping. */
static void flush_blocking(struct cp_usage *u)
{
    if (!u->seg.shm)
        return;
    struct sy_buf b = SY_BUF_INIT;
    unsigned rows = collect(u, &b);
    if (!rows) {
        sy_buf_free(&b);
        return;
    }
    const char *const keys[] = {"dbname", "connect_timeout", NULL};
    const char *const vals[] = {u->cp->cfg.database_url, STOP_CONNECT_S, NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (!pg || PQstatus(pg) != CONNECTION_OK) {
        sy_log(SY_LOG_WARN, "usage",
               "last flush at stop not done (database unavailable: %.*s); the counts stay in "
               "shared memory for the next start",
               pg ? (int)strcspn(PQerrorMessage(pg), "\n") : 13,
               pg ? PQerrorMessage(pg) : "out of memory");
        PQfinish(pg);
        sy_buf_free(&b);
        return;
    }
    char gen[24];
    snprintf(gen, sizeof(gen), "%" PRIu64, u->generation & INT64_MAX);
    const char *params[] = {u->cp->cfg.node_id, gen, b.data};
    PGresult *res = PQexecParams(pg, flush_sql, 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        flush_succeeded(u, rows);
        sy_log(SY_LOG_INFO, "usage", "last flush at stop: %u slots", rows);
    } else {
        sy_log(SY_LOG_WARN, "usage", "last flush at stop failed: %.*s",
               (int)strcspn(PQerrorMessage(pg), "\n"), PQerrorMessage(pg));
    }
    PQclear(res);
    PQfinish(pg);
    sy_buf_free(&b);
}

void cp__usage_stop(struct cp_server *cp)
{
    struct cp_usage *u = cp ? cp->usage : NULL;
    if (!u)
        return;
    cp->usage = NULL;
    flush_blocking(u);
    u->stopping = true;
    uv_close((uv_handle_t *)&u->flush_timer, on_closed);
    uv_close((uv_handle_t *)&u->compact_timer, on_closed);
}

void cp__usage_db_state(struct cp_server *cp, bool up)
{
    struct cp_usage *u = cp->usage;
    if (!u || !up || !u->seg.path)
        return;
    uint64_t every = cp->cfg.usage_flush_ms > 0 ? (uint64_t)cp->cfg.usage_flush_ms : 10000;
    uv_timer_start(&u->flush_timer, on_flush_timer, SY_MIN(DB_UP_FLUSH_MS, every), every);
}

json_t *cp__usage_status(struct cp_server *cp)
{
    struct cp_usage *u = cp->usage;
    if (!u)
        return json_null();
    char t[32];
    return json_pack(
        "{s:b, s:o, s:I, s:I, s:I, s:o, s:o}", "attached", u->seg.shm != NULL, "generation",
        u->seg.shm ? json_integer((json_int_t)(u->generation & INT64_MAX)) : json_null(), "flushes",
        (json_int_t)u->flushes, "failures", (json_int_t)u->failures, "slots_flushed",
        (json_int_t)u->rows_sent, "last_flush_at",
        u->last_ok_ms ? json_string(cp__format_time(u->last_ok_ms, t)) : json_null(), "last_error",
        u->failing && u->last_error ? json_string(u->last_error) : json_null());
}
