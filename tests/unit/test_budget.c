/* SPDX-License-Identifier: Apache-2.0 */
/* Spend budgets: the data plane's judgement of a slot (owner, period, offset, soft and hard
 * thresholds, rounding), the once-per-period announcements shared by processes, amounts as
 * text, the routing table's budgets (JSON and msgpack forms, validation messages), and the
 * cost of a check and a charge (printed).
 * Periods themselves are PostgreSQL's (budget_period(), pinned by test_budgets.py). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "budget.h"
#include "sy/buf.h"
#include "sy/table.h"
#include "sy/util.h"

#define T0  UINT64_C(1796083200000) /* 2026-12-01T00:00:00Z */
#define DAY UINT64_C(86400000)

/* A slot set up by the control plane for budget <id>: the period [T0, T0 + DAY) and a base of
 * <base> micros of which <at_base> were this node's at the flush. */
static void setup(struct sy_shm_budget *sb, uint64_t id, uint64_t base, uint64_t at_base)
{
    memset(sb, 0, sizeof(*sb));
    atomic_store(&sb->offset_micros, (int64_t)base - (int64_t)at_base);
    atomic_store(&sb->period_start_ms, T0);
    atomic_store(&sb->period_end_ms, T0 + DAY);
    atomic_store(&sb->owner, id);
}

static struct sy_budget budget(uint64_t id, uint64_t amount, uint32_t soft)
{
    struct sy_budget b = {.name = "b", .id = id, .amount_micros = amount, .soft_percent = soft};
    return b;
}

static void test_judge_sums_base_and_local_spend(void **state)
{
    struct sy_shm_budget sb;
    struct sy_budget b = budget(7, 1000000, 90);
    struct dp_budget_view v;
    /* 0.5 in PostgreSQL, of which 0.2 was ours when flushed; 0.3 counted here since */
    setup(&sb, 7, 500000, 200000);
    atomic_store(&sb.local_micros, 500000);
    dp_budget_judge(&sb, &b, T0 + 1000, &v);
    assert_int_equal(v.state, DP_BUDGET_OK);
    assert_int_equal(v.spent_micros, 800000); /* 0.5 + (0.5 - 0.2) */
    assert_int_equal(v.period_end_ms, T0 + DAY);
    /* more spend here and more in PostgreSQL (a refresh: base 0.9, of which 0.45 ours) */
    atomic_store(&sb.local_micros, 600000);
    atomic_store(&sb.offset_micros, 900000 - 450000);
    dp_budget_judge(&sb, &b, T0 + 1000, &v);
    assert_int_equal(v.spent_micros, 1050000);
    assert_int_equal(v.state, DP_BUDGET_EXHAUSTED);
    (void)state;
}

static void test_judge_thresholds(void **state)
{
    struct sy_shm_budget sb;
    struct sy_budget b = budget(7, 1000000, 80);
    struct dp_budget_view v;
    setup(&sb, 7, 0, 0);
    atomic_store(&sb.local_micros, 799999);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_OK);
    atomic_store(&sb.local_micros, 800000);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_SOFT);
    assert_int_equal(v.period_end_ms, T0 + DAY);
    atomic_store(&sb.local_micros, 999999);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_SOFT);
    atomic_store(&sb.local_micros, 1000000);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_EXHAUSTED);
    /* soft at 100 %: the same as exhausted, never soft */
    b.soft_percent = 100;
    atomic_store(&sb.local_micros, 999999);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_OK);
    /* the threshold is rounded up, and an amount near 2^64 does not overflow */
    b = budget(7, 3, 50); /* 1.5 micros: soft from 2 */
    atomic_store(&sb.local_micros, 1);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_OK);
    atomic_store(&sb.local_micros, 2);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_SOFT);
    b = budget(7, UINT64_MAX - 1, 99);
    atomic_store(&sb.local_micros, UINT64_MAX / 100 * 98);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_OK);
    (void)state;
}

static void test_judge_unknown_until_set_up_and_after_the_period(void **state)
{
    struct sy_shm_budget sb;
    struct sy_budget b = budget(7, 1000, 80);
    struct dp_budget_view v;
    setup(&sb, 7, 5000, 0); /* way past the amount */
    dp_budget_judge(NULL, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_UNKNOWN);
    dp_budget_judge(&sb, &b, T0 + DAY - 1, &v);
    assert_int_equal(v.state, DP_BUDGET_EXHAUSTED);
    /* the period is over and the control plane has not rolled it over: not enforced */
    dp_budget_judge(&sb, &b, T0 + DAY, &v);
    assert_int_equal(v.state, DP_BUDGET_UNKNOWN);
    /* a slot of another budget (reused, or not claimed yet) */
    atomic_store(&sb.owner, 8);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_UNKNOWN);
    /* claimed, no period yet */
    atomic_store(&sb.owner, 7);
    atomic_store(&sb.period_end_ms, 0);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.state, DP_BUDGET_UNKNOWN);
    /* a negative offset (this node's spend is all flushed, and the period is new) */
    setup(&sb, 7, 0, 900);
    atomic_store(&sb.local_micros, 1000);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.spent_micros, 100);
    atomic_store(&sb.local_micros, 10);
    dp_budget_judge(&sb, &b, T0, &v);
    assert_int_equal(v.spent_micros, 0);
    (void)state;
}

static void test_announce_once_per_level_and_period(void **state)
{
    struct sy_shm_budget sb;
    setup(&sb, 7, 0, 0);
    assert_false(dp_budget_announce(&sb, DP_BUDGET_OK));
    assert_true(dp_budget_announce(&sb, DP_BUDGET_SOFT));
    assert_false(dp_budget_announce(&sb, DP_BUDGET_SOFT));
    assert_true(dp_budget_announce(&sb, DP_BUDGET_EXHAUSTED));
    assert_false(dp_budget_announce(&sb, DP_BUDGET_EXHAUSTED));
    assert_false(dp_budget_announce(&sb, DP_BUDGET_SOFT));
    /* the next period: both again */
    atomic_store(&sb.period_start_ms, T0 + DAY);
    atomic_store(&sb.period_end_ms, T0 + 2 * DAY);
    assert_true(dp_budget_announce(&sb, DP_BUDGET_EXHAUSTED));
    assert_true(dp_budget_announce(&sb, DP_BUDGET_SOFT));
    assert_false(dp_budget_announce(&sb, DP_BUDGET_SOFT));
    (void)state;
}

/* Processes racing for one announcement: exactly one wins. */
static void test_announce_is_shared_by_processes(void **state)
{
    struct sy_shm_budget *sb =
        mmap(NULL, sizeof(*sb), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sb != MAP_FAILED);
    setup(sb, 7, 0, 0);
    _Atomic int *wins =
        mmap(NULL, sizeof(*wins), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true((void *)wins != MAP_FAILED);
    atomic_store(wins, 0);
    enum { N = 8 };
    pid_t pids[N];
    for (int i = 0; i < N; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            for (int j = 0; j < 1000; j++)
                if (dp_budget_announce(sb, DP_BUDGET_SOFT))
                    atomic_fetch_add(wins, 1);
            _exit(0);
        }
    }
    for (int i = 0; i < N; i++) {
        int st;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    assert_int_equal(atomic_load(wins), 1);
    munmap((void *)wins, sizeof(*wins));
    munmap(sb, sizeof(*sb));
    (void)state;
}

static void test_amount_text(void **state)
{
    char buf[32];
    assert_string_equal(dp_budget_amount(0, buf), "0");
    assert_string_equal(dp_budget_amount(100000, buf), "0.1");
    assert_string_equal(dp_budget_amount(125, buf), "0.000125");
    assert_string_equal(dp_budget_amount(12500000, buf), "12.5");
    assert_string_equal(dp_budget_amount(3000000, buf), "3");
    assert_string_equal(dp_budget_amount(UINT64_MAX, buf), "18446744073709.551615");
    (void)state;
}

/* ---- cost --------------------------------------------------------------------------------- */

/* What a request of a key with one budget costs on the hot path: the check before it, and the
 * charge after it (an atomic add and a second judgement). Printed, not asserted. */
static void cost_of_a_check_and_a_charge(void **state)
{
    struct sy_shm_budget sb;
    struct sy_budget b = budget(7, UINT64_MAX / 2, 80);
    struct dp_budget_view v;
    setup(&sb, 7, 0, 0);
    const uint64_t n = 10000000;
    uint64_t refused = 0;
    uint64_t t0 = sy_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        dp_budget_judge(&sb, &b, T0 + i / 1000, &v);
        refused += v.state == DP_BUDGET_EXHAUSTED;
        atomic_fetch_add_explicit(&sb.local_micros, 20000, memory_order_relaxed);
        dp_budget_judge(&sb, &b, T0 + i / 1000, &v);
    }
    uint64_t t1 = sy_now_ns();
    print_message("budget check + charge: %.2f ns (over %llu)\n", (double)(t1 - t0) / (double)n,
                  (unsigned long long)n);
    assert_int_equal(refused, 0);
    assert_int_equal(atomic_load(&sb.local_micros), n * 20000);
    (void)state;
}

/* ---- the routing table's budgets -------------------------------------------------------- */

/* Test JSON is written with single quotes, to spare the backslashes; this swaps them. */
static char *json(const char *single_quoted)
{
    char *s = sy_xstrdup(single_quoted);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    return s;
}

static const char *const key_a =
    "'hash':'" /* 64 hex digits */
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'";
static const char *const key_b =
    "'hash':'"
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'";

static int table(const char *budgets, const char *keys_budgets_a, struct sy_table **out, char **err)
{
    char text[4096];
    snprintf(text, sizeof(text),
             "{'require_keys':true,'budgets':%s,'keys':[{%s,'slot':0%s%s},{%s,'slot':1}]}", budgets,
             key_a, keys_budgets_a ? ",'budgets':" : "", keys_budgets_a ? keys_budgets_a : "",
             key_b);
    char *j = json(text);
    int rc = sy_table_from_json(j, strlen(j), out, err);
    free(j);
    return rc;
}

static void expect_error(const char *budgets, const char *kb, const char *want)
{
    struct sy_table *t = NULL;
    char *err = NULL;
    int rc = table(budgets, kb, &t, &err);
    if (rc == 0)
        fail_msg("accepted, expected: %s", want);
    assert_int_equal(rc, -EINVAL);
    if (!err || strcmp(err, want) != 0)
        fail_msg("got:      %s\nexpected: %s", err ? err : "(none)", want);
    free(err);
}

static const struct sy_key *key_of(const struct sy_table *t, char c)
{
    uint8_t h[SY_KEY_HASH_LEN];
    memset(h, c == 'a' ? 0xaa : 0xbb, sizeof(h));
    return sy_table_find_key(t, h);
}

static void test_table_budgets_round_trip(void **state)
{
    struct sy_table *t = NULL, *t2 = NULL;
    char *err = NULL;
    int rc = table("[{'name':'zeta','id':9,'slot':3,'amount_micros':5000000,'period':'week'},"
                   "{'name':'alpha','id':4,'slot':0,'amount_micros':1,'soft_percent':50,"
                   "'period':'month'}]",
                   "['zeta','alpha']", &t, &err);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(t->n_budgets, 2);
    /* sorted by name */
    assert_string_equal(t->budgets[0].name, "alpha");
    assert_int_equal(t->budgets[0].soft_percent, 50);
    assert_int_equal(t->budgets[0].period, SY_BUDGET_MONTH);
    assert_string_equal(t->budgets[1].name, "zeta");
    assert_int_equal(t->budgets[1].soft_percent, 80); /* the default */
    assert_int_equal(t->budgets[1].slot, 3);
    assert_int_equal(t->budgets[1].id, 9);
    assert_int_equal(t->budgets[1].amount_micros, 5000000);
    const struct sy_key *ka = key_of(t, 'a'), *kb = key_of(t, 'b');
    assert_non_null(ka);
    assert_int_equal(ka->n_budgets, 2);
    assert_string_equal(t->budgets[ka->budgets[0]].name, "zeta");
    assert_string_equal(t->budgets[ka->budgets[1]].name, "alpha");
    assert_int_equal(kb->n_budgets, 0);
    assert_null(kb->budgets);

    struct sy_buf b = SY_BUF_INIT;
    assert_int_equal(sy_table_encode(t, &b), 0);
    rc = sy_table_decode(b.data, b.len, &t2, &err);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(t2->n_budgets, 2);
    ka = key_of(t2, 'a');
    assert_int_equal(ka->n_budgets, 2);
    assert_string_equal(t2->budgets[ka->budgets[0]].name, "zeta");
    assert_int_equal(t2->budgets[1].amount_micros, 5000000);
    assert_int_equal(t2->budgets[1].period, SY_BUDGET_WEEK);
    sy_buf_free(&b);
    sy_table_unref(t);
    sy_table_unref(t2);
    (void)state;
}

static void test_table_budget_errors(void **state)
{
    expect_error("[{'id':1,'amount_micros':5,'period':'day'}]", NULL, "budgets[0].name: missing");
    expect_error("[{'name':'x','id':1,'period':'day'}]", NULL,
                 "budgets[0].amount_micros: missing (a budget needs a positive amount)");
    expect_error("[{'name':'x','amount_micros':5,'period':'year'}]", NULL,
                 "budgets[0].period: must be \"day\", \"week\" or \"month\", got \"year\"");
    expect_error("[{'name':'x','amount_micros':5,'soft_percent':0}]", NULL,
                 "budgets[0].soft_percent: must be a whole number from 1 to 100");
    expect_error("[{'name':'x','amount_micros':5},{'name':'x','amount_micros':5}]", NULL,
                 "budgets[1].name: duplicate \"x\" (also budgets[0])");
    expect_error("[{'name':'x','amount_micros':5,'slot':2},{'name':'y','amount_micros':5,"
                 "'slot':2}]",
                 NULL, "budgets[1].slot: 2 is already used by budgets[0]");
    expect_error("[{'name':'x','amount_micros':5}]", "['y']",
                 "keys[0].budgets[0]: unknown budget \"y\"");
    expect_error("[{'name':'x','amount_micros':5}]", "['x','x']",
                 "keys[0].budgets[1]: budget \"x\" is listed twice");
    expect_error("[{'name':'x','amount_micros':5}]", "[3]",
                 "keys[0].budgets[0]: expected a budget name, got integer");
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_judge_sums_base_and_local_spend),
        cmocka_unit_test(test_judge_thresholds),
        cmocka_unit_test(test_judge_unknown_until_set_up_and_after_the_period),
        cmocka_unit_test(test_announce_once_per_level_and_period),
        cmocka_unit_test(test_announce_is_shared_by_processes),
        cmocka_unit_test(test_amount_text),
        cmocka_unit_test(cost_of_a_check_and_a_charge),
        cmocka_unit_test(test_table_budgets_round_trip),
        cmocka_unit_test(test_table_budget_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
