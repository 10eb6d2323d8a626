/* SPDX-License-Identifier: Apache-2.0 */
/** Spend budgets, the control plane's side (budget.h): PostgreSQL's spend per budget and
 * period -> the budgets' shared-memory slots. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "budget.h"
#include "internal.h"
#include "server.h"
#include "sy/buf.h"
#include "sy/log.h"
#include "sy/shm.h"
#include "sy/util.h"
#include "usage.h"

#define KICK_MS     20 /* a refresh soon after an admin write */
#define ROLLOVER_MS 50 /* after a period's end, before its refresh */

/* A slot's local spend as a usage flush recorded it. */
struct mark {
    uint64_t owner;
    uint64_t local;
};

/* A budget as the last refresh saw it (for metrics). */
struct row {
    int64_t id;
    uint32_t slot;
    char *name;
    uint64_t amount_micros;
    uint32_t soft_percent;
    int64_t start_ms, end_ms;
    uint64_t base_micros;
};

struct cp_budgets {
    struct cp_server *cp;
    struct cp__seg seg; /* writable: the module writes the slots */
    uv_timer_t timer;
    bool timer_open, busy, stopping, again;
    unsigned pending;

    /* marks of the usage flush in progress and of the last one PostgreSQL took */
    struct mark *pending_marks, *flushed_marks;
    uint32_t n_marks;
    uint64_t pending_gen, flushed_gen;
    bool pending_valid, flushed_valid;

    struct row *rows;
    size_t n_rows;
    bool warned_capacity;
};

static const char state_sql[] =
    "SELECT id, slot, name, (amount * 1000000)::bigint, soft_percent,"
    " (extract(epoch FROM period_start) * 1000)::bigint,"
    " (extract(epoch FROM period_end) * 1000)::bigint, spent_micros"
    " FROM budget_state(to_timestamp($1::double precision / 1000), $2::bigint)";

int64_t cp__budget_offset_ms(void)
{
    static int64_t offset = -1; /* the loop's thread only */
    if (offset == -1) {
        const char *s = getenv("SWITCHYARD_TEST_CLOCK_OFFSET_MS");
        offset = s && *s ? strtoll(s, NULL, 10) : 0;
        if (offset == -1)
            offset = 0;
        if (offset)
            sy_log(SY_LOG_WARN, "budget",
                   "SWITCHYARD_TEST_CLOCK_OFFSET_MS=%" PRId64 ": budget periods follow a shifted "
                   "clock (tests only)",
                   offset);
    }
    return offset;
}

int64_t cp__budget_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + cp__budget_offset_ms();
}

/* ---- lifetime ---------------------------------------------------------------------------- */

static void rows_free(struct cp_budgets *m)
{
    for (size_t i = 0; i < m->n_rows; i++)
        free(m->rows[i].name);
    free(m->rows);
    m->rows = NULL;
    m->n_rows = 0;
}

static void maybe_free(struct cp_budgets *m)
{
    if (!m->stopping || m->timer_open || m->pending)
        return;
    cp__seg_detach(&m->seg);
    free(m->seg.path);
    free(m->pending_marks);
    free(m->flushed_marks);
    rows_free(m);
    free(m);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct cp_budgets *m = h->data;
    m->timer_open = false;
    maybe_free(m);
}

/* ---- the usage flush's marks ------------------------------------------------------------ */

void cp__budget_usage_collect(struct cp_server *cp, const struct sy_shm *shm)
{
    struct cp_budgets *m = cp ? cp->budgets : NULL;
    if (!m || !shm)
        return;
    uint32_t n = shm->caps.max_budgets;
    if (n != m->n_marks) {
        free(m->pending_marks);
        free(m->flushed_marks);
        m->pending_marks = sy_xcalloc(n ? n : 1, sizeof(struct mark));
        m->flushed_marks = sy_xcalloc(n ? n : 1, sizeof(struct mark));
        m->n_marks = n;
        m->flushed_valid = false;
    }
    for (uint32_t s = 0; s < n; s++) {
        const struct sy_shm_budget *sb = sy_shm_budget_peek(shm, s);
        m->pending_marks[s].owner = atomic_load_explicit(&sb->owner, memory_order_acquire);
        m->pending_marks[s].local = atomic_load_explicit(&sb->local_micros, memory_order_relaxed);
    }
    m->pending_gen = shm->hdr->generation;
    m->pending_valid = true;
}

void cp__budget_usage_flushed(struct cp_server *cp)
{
    struct cp_budgets *m = cp ? cp->budgets : NULL;
    if (!m || !m->pending_valid)
        return;
    struct mark *t = m->flushed_marks;
    m->flushed_marks = m->pending_marks;
    m->pending_marks = t;
    m->flushed_gen = m->pending_gen;
    m->flushed_valid = true;
    m->pending_valid = false;
}

/* ---- the refresh ---------------------------------------------------------------------------- */

static int64_t col_i64(const PGresult *res, int r, int c)
{
    return PQgetisnull(res, r, c) ? 0 : strtoll(PQgetvalue(res, r, c), NULL, 10);
}

/* Point slot <sb> at budget <id>, empty: no spend counted here yet, no period. */
static void claim(struct sy_shm_budget *sb, uint64_t id)
{
    atomic_store_explicit(&sb->owner, 0, memory_order_release);
    atomic_store_explicit(&sb->period_end_ms, 0, memory_order_release);
    atomic_store_explicit(&sb->local_micros, 0, memory_order_relaxed);
    atomic_store_explicit(&sb->offset_micros, 0, memory_order_relaxed);
    atomic_store_explicit(&sb->period_start_ms, 0, memory_order_relaxed);
    atomic_store_explicit(&sb->flags, 0, memory_order_relaxed);
    atomic_store_explicit(&sb->base_micros, 0, memory_order_relaxed);
    atomic_store_explicit(&sb->local_at_base, 0, memory_order_relaxed);
    atomic_store_explicit(&sb->owner, id, memory_order_release);
}

/* Write row <r>'s period and base into its slot. */
static void apply(struct cp_budgets *m, const struct row *r)
{
    struct sy_shm_budget *sb = sy_shm_budget(m->seg.shm, r->slot);
    if (!sb) {
        if (!m->warned_capacity)
            sy_log(SY_LOG_WARN, "budget",
                   "budget %s: slot %" PRIu32 " is beyond the shared memory's %" PRIu32
                   " budgets; it is not enforced on this node",
                   r->name, r->slot, m->seg.shm->caps.max_budgets);
        m->warned_capacity = true;
        return;
    }
    uint64_t id = (uint64_t)r->id;
    bool fresh = atomic_load_explicit(&sb->owner, memory_order_acquire) != id;
    if (fresh)
        claim(sb, id); /* nothing of what it will count is in PostgreSQL yet */
    uint64_t local = atomic_load_explicit(&sb->local_micros, memory_order_relaxed);
    uint64_t at_base;
    bool same_period =
        atomic_load_explicit(&sb->period_start_ms, memory_order_relaxed) == (uint64_t)r->start_ms;
    if (fresh) {
        at_base = 0;
    } else if (m->flushed_valid && m->flushed_gen == m->seg.shm->hdr->generation &&
               r->slot < m->n_marks && m->flushed_marks[r->slot].owner == id) {
        at_base = m->flushed_marks[r->slot].local; /* what PostgreSQL includes */
    } else if (local == 0) {
        at_base = 0;
    } else if (same_period) {
        return; /* no flush recorded since this process started: the offset in force holds */
    } else {
        /* A new period and no record of what was flushed: what was counted before now is
         * assumed to be in PostgreSQL (at most one flush interval of spend is not counted). */
        at_base = local;
    }
    atomic_store_explicit(&sb->base_micros, r->base_micros, memory_order_relaxed);
    atomic_store_explicit(&sb->local_at_base, at_base, memory_order_relaxed);
    atomic_store_explicit(&sb->offset_micros, (int64_t)r->base_micros - (int64_t)at_base,
                          memory_order_relaxed);
    atomic_store_explicit(&sb->period_start_ms, (uint64_t)r->start_ms, memory_order_relaxed);
    atomic_store_explicit(&sb->period_end_ms, (uint64_t)r->end_ms, memory_order_release);
}

static void on_timer(uv_timer_t *t);

static void schedule(struct cp_budgets *m, uint64_t delay_ms)
{
    if (m->stopping)
        return;
    uint64_t every = m->cp->cfg.usage_flush_ms > 0 ? (uint64_t)m->cp->cfg.usage_flush_ms : 10000;
    uv_timer_start(&m->timer, on_timer, SY_MIN(delay_ms, every), every);
}

static void on_state(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_budgets *m = ud;
    m->pending--;
    m->busy = false;
    if (m->stopping) {
        maybe_free(m);
        return;
    }
    if (err) {
        sy_log(SY_LOG_DEBUG, "budget", "budgets not refreshed: %s", err);
        return;
    }
    rows_free(m);
    int n = PQntuples(res);
    m->rows = sy_xcalloc((size_t)n + 1, sizeof(*m->rows));
    int64_t now = cp__budget_now_ms(), next_end = INT64_MAX;
    for (int i = 0; i < n; i++) {
        struct row *r = &m->rows[m->n_rows++];
        r->id = col_i64(res, i, 0);
        r->slot = (uint32_t)col_i64(res, i, 1);
        r->name = sy_xstrdup(PQgetvalue(res, i, 2));
        r->amount_micros = (uint64_t)col_i64(res, i, 3);
        r->soft_percent = (uint32_t)col_i64(res, i, 4);
        r->start_ms = col_i64(res, i, 5);
        r->end_ms = col_i64(res, i, 6);
        int64_t base = col_i64(res, i, 7);
        r->base_micros = base > 0 ? (uint64_t)base : 0;
        if (m->seg.shm)
            apply(m, r);
        if (r->end_ms > now && r->end_ms < next_end)
            next_end = r->end_ms;
    }
    /* The next refresh at the latest just after the first period ends. */
    if (m->again)
        schedule(m, KICK_MS);
    else if (next_end != INT64_MAX)
        schedule(m, (uint64_t)(next_end - now) + ROLLOVER_MS);
    m->again = false;
}

static void refresh(struct cp_budgets *m)
{
    if (m->stopping || !m->cp->db)
        return;
    if (m->busy) {
        m->again = true;
        return;
    }
    if (m->seg.path) {
        if (cp__seg_replaced(&m->seg)) {
            sy_log(SY_LOG_INFO, "budget", "the data plane made a new shared memory segment");
            cp__seg_detach(&m->seg);
        }
        cp__seg_attach(&m->seg, "budget");
    }
    char at[24], off[24];
    snprintf(at, sizeof(at), "%" PRId64, cp__budget_now_ms());
    snprintf(off, sizeof(off), "%" PRId64, cp__budget_offset_ms());
    const char *params[] = {at, off};
    if (cp_db_query(m->cp->db, state_sql, 2, params, on_state, m) == 0) {
        m->busy = true;
        m->pending++;
    }
}

static void on_timer(uv_timer_t *t)
{
    refresh(t->data);
}

/* ---- the interface ----------------------------------------------------------------------- */

int cp__budget_start(struct cp_server *cp, const char *shm_path, char **err)
{
    struct cp_budgets *m = calloc(1, sizeof(*m));
    if (!m)
        return cp__fail(err, -ENOMEM, "out of memory");
    m->cp = cp;
    m->seg.path = shm_path ? sy_xstrdup(shm_path) : NULL;
    m->seg.writable = true;
    cp->budgets = m;
    uv_timer_init(&cp->loop, &m->timer);
    m->timer.data = m;
    m->timer_open = true;
    if (!m->seg.path)
        sy_log(SY_LOG_INFO, "budget",
               "no shared memory segment (--shm): budgets are not enforced by this node");
    uint64_t every = cp->cfg.usage_flush_ms > 0 ? (uint64_t)cp->cfg.usage_flush_ms : 10000;
    uv_timer_start(&m->timer, on_timer, 0, every);
    return 0;
}

void cp__budget_stop(struct cp_server *cp)
{
    struct cp_budgets *m = cp ? cp->budgets : NULL;
    if (!m)
        return;
    cp->budgets = NULL;
    m->stopping = true;
    uv_close((uv_handle_t *)&m->timer, on_timer_closed);
}

void cp__budget_kick(struct cp_server *cp)
{
    struct cp_budgets *m = cp ? cp->budgets : NULL;
    if (m)
        schedule(m, KICK_MS);
}

bool cp__budget_spent(struct cp_server *cp, int64_t id, uint32_t slot, int64_t start_ms,
                      uint64_t *spent)
{
    struct cp_budgets *m = cp ? cp->budgets : NULL;
    if (!m || !m->seg.shm || cp__seg_replaced(&m->seg)) /* the data plane has another now */
        return false;
    const struct sy_shm_budget *sb = sy_shm_budget_peek(m->seg.shm, slot);
    if (!sb || atomic_load_explicit(&sb->owner, memory_order_acquire) != (uint64_t)id ||
        atomic_load_explicit(&sb->period_end_ms, memory_order_acquire) == 0 ||
        atomic_load_explicit(&sb->period_start_ms, memory_order_relaxed) != (uint64_t)start_ms)
        return false;
    int64_t v = (int64_t)atomic_load_explicit(&sb->local_micros, memory_order_relaxed) +
                atomic_load_explicit(&sb->offset_micros, memory_order_relaxed);
    *spent = v > 0 ? (uint64_t)v : 0;
    return true;
}

uint64_t cp__budget_unflushed(struct cp_server *cp, int64_t id, uint32_t slot)
{
    struct cp_budgets *m = cp ? cp->budgets : NULL;
    if (!m || !m->seg.shm)
        return 0;
    const struct sy_shm_budget *sb = sy_shm_budget_peek(m->seg.shm, slot);
    if (!sb || atomic_load_explicit(&sb->owner, memory_order_acquire) != (uint64_t)id)
        return 0;
    uint64_t local = atomic_load_explicit(&sb->local_micros, memory_order_relaxed);
    uint64_t at = atomic_load_explicit(&sb->local_at_base, memory_order_relaxed);
    return local > at ? local - at : 0;
}

static void put_micros(struct sy_buf *b, uint64_t v)
{
    sy_buf_printf(b, "%" PRIu64 ".%06" PRIu64 "\n", v / 1000000, v % 1000000);
}

void cp__budget_metrics(struct cp_server *cp, struct sy_buf *b)
{
    struct cp_budgets *m = cp ? cp->budgets : NULL;
    static const char *const states[] = {"ok", "soft", "exhausted"};
    sy_buf_puts(b, "# HELP switchyard_budget_spent Spend of the budget's current period: "
                   "PostgreSQL's, plus what this node has not flushed yet\n"
                   "# TYPE switchyard_budget_spent gauge\n");
    for (size_t i = 0; m && i < m->n_rows; i++) {
        const struct row *r = &m->rows[i];
        sy_buf_printf(b, "switchyard_budget_spent{budget=\"%s\"} ", r->name);
        put_micros(b, r->base_micros + cp__budget_unflushed(cp, r->id, r->slot));
    }
    sy_buf_puts(b, "# HELP switchyard_budget_amount The budget's amount per period\n"
                   "# TYPE switchyard_budget_amount gauge\n");
    for (size_t i = 0; m && i < m->n_rows; i++) {
        sy_buf_printf(b, "switchyard_budget_amount{budget=\"%s\"} ", m->rows[i].name);
        put_micros(b, m->rows[i].amount_micros);
    }
    sy_buf_puts(b, "# HELP switchyard_budget_state 1 for the budget's state: ok, soft (past "
                   "soft_percent) or exhausted (requests refused)\n"
                   "# TYPE switchyard_budget_state gauge\n");
    for (size_t i = 0; m && i < m->n_rows; i++) {
        const struct row *r = &m->rows[i];
        uint64_t spent = r->base_micros + cp__budget_unflushed(cp, r->id, r->slot);
        int st = spent >= r->amount_micros                                           ? 2
                 : (double)spent * 100 >= (double)r->amount_micros * r->soft_percent ? 1
                                                                                     : 0;
        for (int s = 0; s < 3; s++)
            sy_buf_printf(b, "switchyard_budget_state{budget=\"%s\",state=\"%s\"} %d\n", r->name,
                          states[s], s == st);
    }
    sy_buf_printf(b, "# HELP switchyard_budget_period_end_seconds End of the budget's current "
                     "period since the Unix epoch\n"
                     "# TYPE switchyard_budget_period_end_seconds gauge\n");
    for (size_t i = 0; m && i < m->n_rows; i++)
        sy_buf_printf(b, "switchyard_budget_period_end_seconds{budget=\"%s\"} %" PRId64 "\n",
                      m->rows[i].name, m->rows[i].end_ms / 1000);
}
