/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's spend budgets (docs/governance.md, "Budgets"):
 *
 *     {"name", "scope": "key" | "agent" | "user", "subject": "<key id | agent | user>",
 *      "amount": <currency units > 0>, "period": "day" | "week" | "month",
 *      "timezone": "UTC" (IANA name), "soft_percent": 80, "enabled": true}
 *
 * plus id, object, slot, version, created_at and updated_at on reads (budget_doc() in
 * migrations/010_budgets.sql). The read of one budget, GET /admin/v1/budgets/<name>, also
 * shows its current period: `spent` (what PostgreSQL holds for the period from every node,
 * plus what this node has counted and not flushed yet), `period_start`, `period_end`, `state`
 * (ok, soft or exhausted) and `enforced` (this node's data plane has the budget's period set up
 * in shared memory; until then, spent is PostgreSQL's alone). Every write refreshes the node's
 * budgets at once. */

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "budget.h"
#include "sy/util.h"
#include "usage.h"

static const char *const fields[] = {
    "name", "scope", "subject", "amount", "period", "timezone", "soft_percent", "enabled",
    /* shown by reads, ignored on writes so a fetched document can be sent back edited */
    "id", "object", "slot", "version", "created_at", "updated_at", "spent", "period_start",
    "period_end", "state", "enforced", NULL};
static const char *const scopes[] = {"key", "agent", "user", NULL};
static const char *const periods[] = {"day", "week", "month", NULL};

#define N_PARAMS   8
#define MAX_AMOUNT 1e12

/* A validated budget as the text parameters $1..$8 of the statements below. */
struct budget_row {
    const char *p[N_PARAMS];
    char amount[48], soft[24], subject[24];
};

/* Validate <doc> (the merged document) into <r>; answers 400 and returns false on a problem. */
static bool validate(struct cp_call *c, json_t *doc, struct budget_row *r)
{
    bool present, enabled;
    int64_t soft;
    memset(r, 0, sizeof(*r));
    if (!cp_val_known(c, doc, NULL, fields) || !cp_val_name(c, doc, "name", 64, &r->p[0]) ||
        !cp_val_enum(c, doc, "scope", scopes, NULL, &r->p[1]))
        return false;

    /* A key is named by its id, as a number or a string of digits. */
    json_t *subject = json_object_get(doc, "subject");
    if (json_is_integer(subject) && strcmp(r->p[1], "key") == 0) {
        if (json_integer_value(subject) < 1) {
            cp_call_invalid(c, "subject",
                            "subject: a key budget names the key by its id, a "
                            "positive whole number");
            return false;
        }
        r->p[2] = cp_i64(r->subject, json_integer_value(subject));
    } else if (!cp_val_str(c, doc, "subject", true, 128, &r->p[2])) {
        return false;
    }
    if (strcmp(r->p[1], "key") == 0 && (strspn(r->p[2], "0123456789") != strlen(r->p[2]) ||
                                        r->p[2][0] == '0' || strlen(r->p[2]) > 18)) {
        cp_call_invalid(c, "subject",
                        "subject: a key budget names the key by its id (GET /admin/v1/keys "
                        "lists them), got \"%s\"",
                        r->p[2]);
        return false;
    }

    json_t *amount = json_object_get(doc, "amount");
    double a = json_number_value(amount);
    if (!amount || json_is_null(amount)) {
        cp_call_invalid(c, "amount", "amount: is required (currency units per period, > 0)");
        return false;
    }
    if (!json_is_number(amount) || !isfinite(a) || a <= 0 || a > MAX_AMOUNT) {
        cp_call_invalid(c, "amount",
                        "amount: must be a number greater than 0 and at most 1000000000000 "
                        "(currency units per period, as the deployments' prices)");
        return false;
    }
    if (a < 0.000001) {
        cp_call_invalid(c, "amount",
                        "amount: must be at least 0.000001 (spend is counted in millionths)");
        return false;
    }
    snprintf(r->amount, sizeof(r->amount), "%.6f", a);
    r->p[3] = r->amount;

    if (!cp_val_enum(c, doc, "period", periods, NULL, &r->p[4]) ||
        !cp_val_str(c, doc, "timezone", false, 64, &r->p[5]))
        return false;
    if (r->p[5] && !*r->p[5]) {
        cp_call_invalid(c, "timezone", "timezone: must not be empty (\"UTC\" is the default)");
        return false;
    }
    r->p[5] = r->p[5] ? r->p[5] : "UTC";
    if (!cp_val_int(c, doc, "soft_percent", 1, 100, &present, &soft))
        return false;
    r->p[6] = cp_i64(r->soft, present ? soft : 80);
    if (!cp_val_bool(c, doc, "enabled", true, &enabled))
        return false;
    r->p[7] = enabled ? "true" : "false";
    return true;
}

/* ---- reads ----------------------------------------------------------------------------------- */

/* Columns of the read of one budget. */
enum {
    G_DOC = 0,
    G_VERSION,
    G_ID,
    G_SLOT,
    G_SPENT,
    G_START,
    G_END,
    G_AMOUNT,
    G_SOFT,
    G_ENABLED,
};

static int64_t col(const PGresult *res, int c)
{
    return PQgetisnull(res, 0, c) ? 0 : strtoll(PQgetvalue(res, 0, c), NULL, 10);
}

static void on_got(struct cp_call *c, const PGresult *res, const char *err)
{
    if (err) {
        cp_call_db_failed(c, res, err);
        return;
    }
    if (PQntuples(res) == 0) {
        cp_call_not_found(c);
        return;
    }
    json_t *doc = json_loads(PQgetvalue(res, 0, G_DOC), 0, NULL);
    if (!doc) {
        cp_call_error(c, 500, "server_error", "internal_error", NULL, "cannot read the budget");
        return;
    }
    /* What this node enforces when its slot is set up for this period; else PostgreSQL's. */
    uint64_t spent;
    bool enforced = strcmp(PQgetvalue(res, 0, G_ENABLED), "t") == 0 &&
                    cp__budget_spent(c->cp, col(res, G_ID), (uint32_t)col(res, G_SLOT),
                                     col(res, G_START), &spent);
    if (!enforced)
        spent = (uint64_t)SY_MAX(col(res, G_SPENT), 0);
    uint64_t amount = (uint64_t)col(res, G_AMOUNT);
    int64_t soft = col(res, G_SOFT);
    const char *state = spent >= amount                                        ? "exhausted"
                        : (double)spent * 100 >= (double)amount * (double)soft ? "soft"
                                                                               : "ok";
    char t[32];
    json_object_set_new(doc, "spent", json_real((double)spent / 1e6));
    json_object_set_new(doc, "period_start", json_string(cp__format_time(col(res, G_START), t)));
    json_object_set_new(doc, "period_end", json_string(cp__format_time(col(res, G_END), t)));
    json_object_set_new(doc, "state", json_string(state));
    json_object_set_new(doc, "enforced", json_boolean(enforced));
    cp_call_json(c, 200, doc, col(res, G_VERSION));
}

static void get(struct cp_call *c)
{
    char now[24], off[24];
    const char *p[] = {c->name, cp_i64(now, cp__budget_now_ms()),
                       cp_i64(off, cp__budget_offset_ms())};
    cp_call_query(
        c,
        "SELECT budget_doc(b), b.version, b.id, b.slot,"
        " (budget_spent(b, p.period_start - make_interval(secs => $3::bigint / 1000.0),"
        "  p.period_end - make_interval(secs => $3::bigint / 1000.0)) * 1000000)::bigint,"
        " (extract(epoch FROM p.period_start) * 1000)::bigint,"
        " (extract(epoch FROM p.period_end) * 1000)::bigint,"
        " (b.amount * 1000000)::bigint, b.soft_percent, b.enabled"
        " FROM budgets b,"
        " budget_period(b.period, b.timezone, to_timestamp($2::double precision / 1000)) p"
        " WHERE b.name = $1",
        3, p, on_got);
}

/* ?q= matches the name or the subject; ?scope= and ?subject= filter exactly. */
static void list(struct cp_call *c)
{
    int limit;
    int64_t after;
    char a[24], l[24];
    if (!cp_call_page(c, &limit, &after))
        return;
    c->state = (void *)(intptr_t)limit;
    const char *p[] = {cp_i64(a, after), cp_i64(l, limit + 1), cp_call_param(c, "q"),
                       cp_call_param(c, "scope"), cp_call_param(c, "subject")};
    cp_call_query(c,
                  "SELECT b.id, budget_doc(b) FROM budgets b WHERE b.id > $1"
                  " AND ($3::text IS NULL OR strpos(lower(b.name || ' ' || b.subject),"
                  " lower($3)) > 0)"
                  " AND ($4::text IS NULL OR b.scope = $4) AND ($5::text IS NULL OR b.subject = $5)"
                  " ORDER BY b.id LIMIT $2",
                  5, p, cp_call_on_page);
}

/* ---- writes ---------------------------------------------------------------------------------- */

static void on_created(struct cp_call *c, const PGresult *res, const char *err)
{
    if (!err)
        cp__budget_kick(c->cp);
    cp_call_on_written(c, res, err);
}

static void create(struct cp_call *c)
{
    struct budget_row r;
    if (!validate(c, c->body, &r))
        return;
    cp_call_query(c,
                  "INSERT INTO budgets (name, scope, subject, amount, period, timezone,"
                  " soft_percent, enabled)"
                  " VALUES ($1, $2, $3, $4::numeric, $5, $6, $7::int, $8::boolean)"
                  " RETURNING budget_doc(budgets), version",
                  N_PARAMS, r.p, on_created);
}

static void on_updated(struct cp_call *c, const PGresult *res, const char *err)
{
    if (!err)
        cp__budget_kick(c->cp);
    cp_call_on_updated(c, res, err);
}

/* An update reads the current document, merges (PATCH) or replaces (PUT) it with the body,
 * validates the result, and writes it only if the row still has the version that was read (or
 * the one the client named in If-Match). Raising the amount lets traffic through at once: the
 * table is published with it, and the data plane compares the spend with the new amount. */
static void on_update_read(struct cp_call *c, const PGresult *res, const char *err)
{
    int64_t version;
    json_t *doc = cp_call_update_doc(c, res, err, NULL, true, &version);
    if (!doc)
        return;
    struct budget_row r;
    if (!validate(c, doc, &r))
        return;
    const char *p[N_PARAMS + 2];
    char v[24];
    memcpy(p, r.p, sizeof(r.p));
    p[N_PARAMS] = c->name;
    p[N_PARAMS + 1] = cp_i64(v, version);
    cp_call_query(c,
                  "WITH u AS (UPDATE budgets b SET name = $1, scope = $2, subject = $3,"
                  "  amount = $4::numeric, period = $5, timezone = $6, soft_percent = $7::int,"
                  "  enabled = $8::boolean WHERE b.name = $9 AND b.version = $10::int"
                  "  RETURNING budget_doc(b) AS doc, b.version)"
                  " SELECT (SELECT doc FROM u), (SELECT version FROM u),"
                  " EXISTS (SELECT 1 FROM budgets WHERE name = $9)",
                  N_PARAMS + 2, p, on_updated);
}

static void update(struct cp_call *c, bool replace)
{
    cp_call_update_read(c, replace,
                        "SELECT budget_doc(b), b.version FROM budgets b WHERE b.name = $1", c->name,
                        on_update_read);
}

static void on_removed(struct cp_call *c, const PGresult *res, const char *err)
{
    if (!err)
        cp__budget_kick(c->cp);
    cp_call_on_removed(c, res, err);
}

static void remove_(struct cp_call *c)
{
    char v[24];
    const char *p[] = {c->name, c->if_match >= 0 ? cp_i64(v, c->if_match) : NULL};
    cp_call_query(c,
                  "WITH b AS (SELECT id FROM budgets WHERE name = $1),"
                  " del AS (DELETE FROM budgets WHERE id = (SELECT id FROM b)"
                  "   AND ($2::int IS NULL OR version = $2::int) RETURNING id)"
                  " SELECT (SELECT count(*) FROM b), NULL::text, (SELECT count(*) FROM del)",
                  2, p, on_removed);
}

const struct cp_resource cp_api_budgets = {
    .name = "budgets",
    .kind = "budget",
    .list = list,
    .get = get,
    .create = create,
    .update = update,
    .remove = remove_,
};
