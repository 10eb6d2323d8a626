/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's usage and cost: GET /admin/v1/usage (the collection path only).
 *
 *     ?from=&to=            RFC 3339 or Unix seconds; default: the 24 hours up to now
 *     &group_by=            model (default) | deployment | key | agent | user
 *     &interval=            minute | hour (default) | day (buckets start in UTC)
 *     &node=                one node only (default: the whole fleet)
 *     &model= &deployment= &key= &agent= &user=
 *                           only the requests of that model, deployment (the one that
 *                           answered), key name, agent or user; they combine with each other
 *                           and with any group_by, and are answered from the per-combination
 *                           rollups (usage_combo_minute/hour, migrations/011_usage_combos.sql)
 *
 *     {"object": "usage", "from", "to", "group_by", "interval",
 *      "data": [{"group", "start", "calls", "successes", "errors", "success_rate",
 *                "retries", "fallbacks", "rate_limited", "avg_latency_ms", "p95_latency_ms",
 *                "prompt_tokens", "completion_tokens", "cost"}, ...]}
 *
 * ordered by group, then time. A deployment's calls are attempts; a model's and a key's are
 * requests. Latency is known for models and deployments only (the segment keeps no histogram
 * per key): null for key, agent and user. p95 is interpolated within the histogram bucket
 * (sy/hist.h: within 25%). Minutes older than the retention were compacted into hours: with
 * interval=minute they come back as one bucket at the start of their hour.
 *
 * With a filter, every group counts requests (a deployment's too: the requests it answered),
 * latency is known for every group (each combination has its histogram), "filters" echoes the
 * filters, and retries and fallbacks, which are per model, are null. */

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "sy/hist.h"
#include "usage.h"

#define DEFAULT_SPAN_MS (24 * 3600 * 1000LL)
#define MAX_BUCKETS     20000 /* rows per group the range and interval may ask for */

struct group_by {
    const char *name;
    const char *kind;   /* the rollup rows it reads */
    const char *column; /* the group */
};

static const struct group_by groups[] = {
    {"model", "model", "name"}, {"deployment", "deployment", "name"}, {"key", "key", "name"},
    {"agent", "key", "agent"},  {"user", "key", "user_name"},
};

/* The filters, in the order of their parameters ($5..$9) in combo_sql(), and the column each
 * matches. */
static const struct {
    const char *param;
    const char *column;
} filters[] = {{"model", "model"},
               {"deployment", "deployment"},
               {"key", "key"},
               {"agent", "agent"},
               {"user", "user_name"}};

#define N_FILTERS      (sizeof(filters) / sizeof(filters[0]))
#define MAX_FILTER_LEN 256

/* The column of the combination rollups that <g> groups by. */
static const char *combo_column(const struct group_by *g)
{
    return strcmp(g->name, "user") == 0 ? "user_name" : g->name;
}

static const struct {
    const char *name;
    int64_t ms;
} intervals[] = {{"minute", 60000}, {"hour", 3600000}, {"day", 86400000}};

/* The statement for one group column (an identifier from the table above, never input). */
static char *usage_sql(const char *column)
{
    char *sql = NULL;
    if (asprintf(
            &sql,
            "WITH src AS ("
            " SELECT minute AS t, %1$s AS g, requests, successes, errors, retries,"
            "  fallbacks, rate_limited, prompt_tokens, completion_tokens, cost,"
            "  latency_count, latency_sum_us, latency_buckets"
            " FROM usage_minute WHERE kind = $1 AND minute >= to_timestamp($2::bigint / 1000.0)"
            "  AND minute < to_timestamp($3::bigint / 1000.0)"
            "  AND ($5::text IS NULL OR node = $5)"
            " UNION ALL"
            " SELECT hour, %1$s, requests, successes, errors, retries, fallbacks,"
            "  rate_limited, prompt_tokens, completion_tokens, cost, latency_count,"
            "  latency_sum_us, latency_buckets"
            " FROM usage_hour WHERE kind = $1 AND hour >= to_timestamp($2::bigint / 1000.0)"
            "  AND hour < to_timestamp($3::bigint / 1000.0)"
            "  AND ($5::text IS NULL OR node = $5))"
            " SELECT g, (extract(epoch FROM date_trunc($4, t, 'UTC')) * 1000)::bigint,"
            "  sum(requests), sum(successes), sum(errors), sum(retries), sum(fallbacks),"
            "  sum(rate_limited), sum(prompt_tokens), sum(completion_tokens), sum(cost),"
            "  sum(latency_count), sum(latency_sum_us), usage_hist_sum(latency_buckets)"
            " FROM src GROUP BY 1, 2 ORDER BY 1, 2",
            column) == -1)
        return NULL;
    return sql;
}

/* The statement over the combination rollups for one group column (from combo_column(), never
 * input): $1 from, $2 to (ms), $3 the interval, $4 the node, $5..$9 the filters (NULL: any).
 * The same columns as usage_sql(), retries and fallbacks NULL. */
static char *combo_sql(const char *column)
{
    char *sql = NULL;
    if (asprintf(
            &sql,
            "WITH src AS ("
            " SELECT minute AS t, %1$s AS g, requests, successes, errors, rate_limited,"
            "  prompt_tokens, completion_tokens, cost, latency_count, latency_sum_us,"
            "  latency_buckets"
            " FROM usage_combo_minute WHERE minute >= to_timestamp($1::bigint / 1000.0)"
            "  AND minute < to_timestamp($2::bigint / 1000.0) AND ($4::text IS NULL OR node = $4)"
            "  AND ($5::text IS NULL OR model = $5) AND ($6::text IS NULL OR deployment = $6)"
            "  AND ($7::text IS NULL OR key = $7) AND ($8::text IS NULL OR agent = $8)"
            "  AND ($9::text IS NULL OR user_name = $9)"
            " UNION ALL"
            " SELECT hour, %1$s, requests, successes, errors, rate_limited, prompt_tokens,"
            "  completion_tokens, cost, latency_count, latency_sum_us, latency_buckets"
            " FROM usage_combo_hour WHERE hour >= to_timestamp($1::bigint / 1000.0)"
            "  AND hour < to_timestamp($2::bigint / 1000.0) AND ($4::text IS NULL OR node = $4)"
            "  AND ($5::text IS NULL OR model = $5) AND ($6::text IS NULL OR deployment = $6)"
            "  AND ($7::text IS NULL OR key = $7) AND ($8::text IS NULL OR agent = $8)"
            "  AND ($9::text IS NULL OR user_name = $9))"
            " SELECT g, (extract(epoch FROM date_trunc($3, t, 'UTC')) * 1000)::bigint,"
            "  sum(requests), sum(successes), sum(errors), NULL::bigint, NULL::bigint,"
            "  sum(rate_limited), sum(prompt_tokens), sum(completion_tokens), sum(cost),"
            "  sum(latency_count), sum(latency_sum_us), usage_hist_sum(latency_buckets)"
            " FROM src GROUP BY 1, 2 ORDER BY 1, 2",
            column) == -1)
        return NULL;
    return sql;
}

/* Parse PostgreSQL's text form of a bigint[] ("{1,2,3}") into <b>; false if it is not one of
 * SY_HIST_BUCKETS counts. */
static bool parse_buckets(const char *s, uint64_t b[SY_HIST_BUCKETS])
{
    if (*s++ != '{')
        return false;
    for (int i = 0; i < SY_HIST_BUCKETS; i++) {
        char *end;
        b[i] = strtoull(s, &end, 10);
        if (end == s || (*end != ',' && *end != '}'))
            return false;
        s = end + 1;
        if (*end == '}')
            return i == SY_HIST_BUCKETS - 1;
    }
    return false;
}

/* The <q> quantile (0..1) in milliseconds of the histogram <b> of <count> samples, interpolated
 * linearly within its bucket; the +Inf bucket answers its lower bound. */
static double hist_quantile(const uint64_t b[SY_HIST_BUCKETS], uint64_t count, double q)
{
    double x = q * (double)count;
    double rank = (double)(uint64_t)x + (x > (double)(uint64_t)x); /* ceil */
    uint64_t cum = 0;
    for (unsigned i = 0; i < SY_HIST_BUCKETS; i++) {
        if (!b[i])
            continue;
        if ((double)(cum + b[i]) >= rank) {
            double lo = i ? (double)sy_hist_upper_ms(i - 1) : 0;
            if (i == SY_HIST_BUCKETS - 1)
                return lo;
            double hi = (double)sy_hist_upper_ms(i);
            return lo + (hi - lo) * (rank - (double)cum) / (double)b[i];
        }
        cum += b[i];
    }
    return 0;
}

/* <v> >= 0 rounded to <scale> (100: two decimals), without libm. */
static double round_pos(double v, double scale)
{
    return (double)(int64_t)(v * scale + 0.5) / scale;
}

static json_int_t col_int(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0
                                      : (json_int_t)strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static json_t *round_ms(double v)
{
    return json_real(round_pos(v, 100));
}

struct usage_query {
    const struct group_by *g;
    const char *interval;
    int64_t from, to;
    const char *filter[N_FILTERS]; /* borrowed from the call's parameters; NULL: none */
    bool combos;                   /* answered from the combination rollups */
};

/* Column <col> of row <row> as an integer, or null when SQL says NULL. */
static json_t *col_int_or_null(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? json_null() : json_integer(col_int(res, row, col));
}

static void on_rows(struct cp_call *c, const PGresult *res, const char *err)
{
    struct usage_query *q = c->state;
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < PQntuples(res); i++) {
        const char *g = PQgetvalue(res, i, 0);
        char start[32];
        cp__format_time((int64_t)col_int(res, i, 1), start);
        json_int_t calls = col_int(res, i, 2), ok = col_int(res, i, 3);
        json_int_t lat_n = col_int(res, i, 11), lat_sum = col_int(res, i, 12);
        json_t *avg = json_null(), *p95 = json_null();
        uint64_t b[SY_HIST_BUCKETS];
        if (lat_n > 0) {
            avg = round_ms((double)lat_sum / (double)lat_n / 1000.0);
            if (!PQgetisnull(res, i, 13) && parse_buckets(PQgetvalue(res, i, 13), b))
                p95 = round_ms(hist_quantile(b, (uint64_t)lat_n, 0.95));
        }
        json_t *row = json_pack(
            "{s:o, s:s, s:I, s:I, s:I, s:o, s:o, s:o, s:I, s:o, s:o, s:I, s:I, s:f}", "group",
            *g ? json_string(g) : json_null(), "start", start, "calls", calls, "successes", ok,
            "errors", col_int(res, i, 4), "success_rate",
            calls ? json_real(round_pos((double)ok / (double)calls, 10000)) : json_null(),
            "retries", col_int_or_null(res, i, 5), "fallbacks", col_int_or_null(res, i, 6),
            "rate_limited", col_int(res, i, 7), "avg_latency_ms", avg, "p95_latency_ms", p95,
            "prompt_tokens", col_int(res, i, 8), "completion_tokens", col_int(res, i, 9), "cost",
            strtod(PQgetvalue(res, i, 10), NULL));
        json_array_append_new(data, row);
    }
    char from[32], to[32];
    json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o}", "object", "usage", "from",
                            cp__format_time(q->from, from), "to", cp__format_time(q->to, to),
                            "group_by", q->g->name, "interval", q->interval, "data", data);
    if (q->combos) {
        json_t *f = json_object();
        for (size_t i = 0; i < N_FILTERS; i++)
            if (q->filter[i])
                json_object_set_new(f, filters[i].param, json_string(q->filter[i]));
        json_object_set_new(doc, "filters", f);
    }
    cp_call_json(c, 200, doc, -1);
}

/* ?<name>= as a time, or <dflt>; false after answering 400. */
static bool time_param(struct cp_call *c, const char *name, int64_t dflt, int64_t *out)
{
    const char *v = cp_call_param(c, name);
    *out = dflt;
    if (v && !cp__parse_time(v, out)) {
        cp_call_invalid(c, name,
                        "%s: must be an RFC 3339 date-time such as 2030-01-31T12:00:00Z, or Unix "
                        "seconds",
                        name);
        return false;
    }
    return true;
}

static void list(struct cp_call *c)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;

    struct usage_query *q = calloc(1, sizeof(*q));
    if (!q) {
        cp_call_error(c, 500, "server_error", "internal_error", NULL, "out of memory");
        return;
    }
    c->state = q;
    c->free_state = free;
    const char *gb = cp_call_param(c, "group_by"), *iv = cp_call_param(c, "interval");
    q->g = &groups[0];
    if (gb) {
        q->g = NULL;
        for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++)
            if (strcmp(gb, groups[i].name) == 0)
                q->g = &groups[i];
        if (!q->g) {
            cp_call_invalid(c, "group_by",
                            "group_by: must be one of \"model\", \"deployment\", \"key\", "
                            "\"agent\", \"user\"");
            return;
        }
    }
    int64_t step = 3600000;
    q->interval = "hour";
    if (iv) {
        q->interval = NULL;
        for (size_t i = 0; i < sizeof(intervals) / sizeof(intervals[0]); i++)
            if (strcmp(iv, intervals[i].name) == 0) {
                q->interval = intervals[i].name;
                step = intervals[i].ms;
            }
        if (!q->interval) {
            cp_call_invalid(c, "interval",
                            "interval: must be one of \"minute\", \"hour\", \"day\"");
            return;
        }
    }
    if (!time_param(c, "to", now, &q->to) ||
        !time_param(c, "from", q->to - DEFAULT_SPAN_MS, &q->from))
        return;
    if (q->from >= q->to) {
        cp_call_invalid(c, "from", "from: must be before to");
        return;
    }
    if ((q->to - q->from) / step > MAX_BUCKETS) {
        cp_call_invalid(c, "interval",
                        "interval: %s buckets from %s to %s are more than %d; ask for a shorter "
                        "range or a longer interval",
                        q->interval, cp_call_param(c, "from") ? "from" : "the default from",
                        cp_call_param(c, "to") ? "to" : "now", MAX_BUCKETS);
        return;
    }
    for (size_t i = 0; i < N_FILTERS; i++) {
        const char *v = cp_call_param(c, filters[i].param);
        if (!v)
            continue;
        size_t n = strlen(v);
        if (n == 0 || n > MAX_FILTER_LEN) {
            cp_call_invalid(c, filters[i].param, "%s: must be a name of 1 to %d characters",
                            filters[i].param, MAX_FILTER_LEN);
            return;
        }
        q->filter[i] = v;
        q->combos = true;
    }
    const char *node = cp_call_param(c, "node");
    char from[24], to[24];
    char *sql = q->combos ? combo_sql(combo_column(q->g)) : usage_sql(q->g->column);
    if (!sql) {
        cp_call_error(c, 500, "server_error", "internal_error", NULL, "out of memory");
        return;
    }
    if (q->combos) {
        const char *params[] = {
            cp_i64(from, q->from), cp_i64(to, q->to), q->interval,  node,        q->filter[0],
            q->filter[1],          q->filter[2],      q->filter[3], q->filter[4]};
        static_assert(N_FILTERS == 5, "one parameter per filter");
        cp_call_query(c, sql, 9, params, on_rows);
    } else {
        const char *params[] = {q->g->kind, cp_i64(from, q->from), cp_i64(to, q->to), q->interval,
                                node};
        cp_call_query(c, sql, 5, params, on_rows);
    }
    free(sql);
}

/* /admin/v1/usage/<anything> is no resource. */
static void no_item(struct cp_call *c)
{
    cp_call_error(c, 404, "not_found_error", "unknown_url", NULL,
                  "Unknown URL: usage is GET /admin/v1/usage?from=&to=&group_by=&interval="
                  "&model=&deployment=&key=&agent=&user=");
}

const struct cp_resource cp_api_usage = {
    .name = "usage",
    .kind = "usage",
    .list = list,
    .get = no_item,
};
