/* SPDX-License-Identifier: Apache-2.0 */
/* GCRA limiters: exact admissions at an injected clock, burst, Retry-After, costs (TPM),
 * refunds and charges, the usage fraction, a limit changed live, no limit, and processes
 * sharing one limiter (at a frozen clock, and over one simulated minute in lock step): the
 * total admitted is exactly the limit. Prints the cost of a take. */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "ratelimit.h"
#include "sy/util.h"

#define US_PER_S  1000000u
#define US_PER_MS 1000u
#define T0        (1000u * US_PER_S) /* a clock that is not near zero */

/* How many of <tries> takes of <cost> succeed at <now>. */
static int admitted(_Atomic uint64_t *w, uint64_t now, uint64_t limit, uint64_t burst,
                    uint64_t cost, int tries)
{
    int n = 0;
    for (int i = 0; i < tries; i++)
        n += dp_rate_take(w, now, limit, burst, cost, NULL) == 0;
    return n;
}

static void a_burst_is_admitted_at_once_then_one_per_interval(void **state)
{
    _Atomic uint64_t w = 0;
    uint32_t ra = 0;
    /* 600/min is one every 100 ms; a burst of 10 */
    assert_int_equal(admitted(&w, T0, 600, 10, 1, 50), 10);
    assert_int_equal(dp_rate_take(&w, T0, 600, 10, 1, &ra), -EAGAIN);
    assert_int_equal(ra, 100);
    assert_int_equal(dp_rate_take(&w, T0 + 30 * US_PER_MS, 600, 10, 1, &ra), -EAGAIN);
    assert_int_equal(ra, 70);
    assert_int_equal(admitted(&w, T0 + 99999, 600, 10, 1, 5), 0);
    assert_int_equal(admitted(&w, T0 + 100 * US_PER_MS, 600, 10, 1, 5), 1);
    assert_int_equal(admitted(&w, T0 + 350 * US_PER_MS, 600, 10, 1, 5), 2); /* 200, 300 */
    /* a long idle spell refills to the burst, never beyond */
    assert_int_equal(admitted(&w, T0 + 3600ull * US_PER_S, 600, 10, 1, 50), 10);
}

static void the_default_burst_is_a_minutes_worth(void **state)
{
    _Atomic uint64_t w = 0;
    assert_int_equal(admitted(&w, T0, 600, 0, 1, 1000), 600);
    uint32_t ra;
    assert_int_equal(dp_rate_take(&w, T0, 600, 0, 1, &ra), -EAGAIN);
    assert_int_equal(ra, 100);
    /* a limit that does not divide a minute: 7/min, and a huge one */
    _Atomic uint64_t x = 0;
    assert_int_equal(admitted(&x, T0, 7, 0, 1, 100), 7);
    _Atomic uint64_t y = 0;
    assert_int_equal(admitted(&y, T0, 1000000, 0, 1, 2000000), 1000000);
}

static void over_one_simulated_minute_exactly_the_limit(void **state)
{
    /* burst 1, stepping the clock 1 ms over [0, 60 s): exactly the limit. (With burst 1 the
     * spacing is strict: a caller that comes after the due time loses the slack, so the limits
     * here have an interval that the 1 ms steps hit, or nearly: 7/min is 8571.43 ms.) */
    uint64_t limits[] = {1, 7, 600, 1000, 6000, 60000};
    for (size_t i = 0; i < SY_ARRAY_LEN(limits); i++) {
        _Atomic uint64_t w = 0;
        uint64_t n = 0;
        for (uint64_t ms = 0; ms < 60000; ms++)
            n += (uint64_t)admitted(&w, T0 + ms * US_PER_MS, limits[i], 1, 1, 2);
        assert_int_equal(n, limits[i]);
    }
    /* with a burst of 2 the slack is kept: 7919/min (7.58 ms) hit by 1 ms steps still gets its
     * limit, and at most burst - 1 more */
    _Atomic uint64_t w = 0;
    uint64_t n = 0;
    for (uint64_t ms = 0; ms < 60000; ms++)
        n += (uint64_t)admitted(&w, T0 + ms * US_PER_MS, 7919, 2, 1, 3);
    assert_true(n >= 7919 && n <= 7920);
}

static void costs_refunds_and_charges_reconcile_tokens(void **state)
{
    _Atomic uint64_t w = 0;
    uint32_t ra;
    /* 60000 tokens/min: one a millisecond, a minute's burst */
    assert_int_equal(dp_rate_take(&w, T0, 60000, 0, 50000, &ra), 0);
    assert_int_equal(dp_rate_take(&w, T0, 60000, 0, 20000, &ra), -EAGAIN);
    assert_int_equal(ra, 10000); /* 10000 tokens short: 10 s */
    /* the reply used only 20000 of the 50000 reserved */
    dp_rate_refund(&w, 60000, 30000);
    assert_int_equal(dp_rate_take(&w, T0, 60000, 0, 20000, &ra), 0);
    assert_int_equal(dp_rate_take(&w, T0, 60000, 0, 20001, &ra), -EAGAIN);
    assert_int_equal(ra, 1);
    /* a reply bigger than its estimate is charged on top, past the burst */
    dp_rate_charge(&w, T0, 60000, 30000);
    assert_int_equal(dp_rate_take(&w, T0, 60000, 0, 1, &ra), -EAGAIN);
    assert_int_equal(ra, 10001);
    assert_int_equal(dp_rate_usage(&w, T0, 60000, 0), 1.0);
    /* a cost larger than the burst can never pass: -E2BIG, no Retry-After */
    _Atomic uint64_t v = 0;
    assert_int_equal(dp_rate_take(&v, T0, 60000, 1000, 1001, &ra), -E2BIG);
    assert_int_equal(ra, 0);
    assert_int_equal(atomic_load(&v), 0);
    /* refunding what already refilled makes no room beyond the burst */
    dp_rate_refund(&v, 60000, 1000000);
    assert_int_equal(atomic_load(&v), 0);
    assert_int_equal(dp_rate_take(&v, T0, 60000, 1000, 1000, &ra), 0);
    assert_int_equal(dp_rate_take(&v, T0, 60000, 1000, 1, &ra), -EAGAIN);
    dp_rate_refund(&v, 60000, 5000); /* more than was taken */
    assert_int_equal(admitted(&v, T0, 60000, 1000, 1, 2000), 1000);
    /* a charge on an idle limiter starts from now, not from its old time */
    _Atomic uint64_t u = 0;
    dp_rate_charge(&u, T0, 60000, 30000);
    assert_true(fabs(dp_rate_usage(&u, T0, 60000, 0) - 0.5) < 1e-9);
}

static void usage_is_the_fraction_of_the_burst_in_use(void **state)
{
    _Atomic uint64_t w = 0;
    assert_true(dp_rate_usage(&w, T0, 100, 0) == 0.0);
    assert_int_equal(admitted(&w, T0, 100, 0, 1, 80), 80);
    assert_true(fabs(dp_rate_usage(&w, T0, 100, 0) - 0.8) < 1e-9);
    /* 30 s later, 50 of the 80 have refilled */
    assert_true(fabs(dp_rate_usage(&w, T0 + 30ull * US_PER_S, 100, 0) - 0.3) < 1e-9);
    assert_true(dp_rate_usage(&w, T0 + 60ull * US_PER_S, 100, 0) == 0.0);
    /* no limit: never in use */
    assert_true(dp_rate_usage(&w, T0, 0, 0) == 0.0);
    /* a small burst fills faster */
    _Atomic uint64_t v = 0;
    assert_int_equal(admitted(&v, T0, 100, 4, 1, 1), 1);
    assert_true(fabs(dp_rate_usage(&v, T0, 100, 4) - 0.25) < 1e-9);
}

static void a_limit_changed_live_applies_from_the_next_call(void **state)
{
    _Atomic uint64_t w = 0;
    /* 500 of 600/min used: 50 s of backlog */
    assert_int_equal(admitted(&w, T0, 600, 0, 1, 500), 500);
    /* lowered to 100/min (600 ms each, a 60 s burst): 10 s of room left, 16 takes */
    assert_int_equal(admitted(&w, T0, 100, 0, 1, 100), 16);
    /* lowered to 10/min with a burst of 2 (12 s), below the 50 s backlog: nothing until the
     * backlog has drained in real time to what the new burst allows */
    _Atomic uint64_t v = 0;
    assert_int_equal(admitted(&v, T0, 600, 0, 1, 500), 500);
    uint32_t ra;
    assert_int_equal(dp_rate_take(&v, T0, 10, 2, 1, &ra), -EAGAIN);
    assert_int_equal(ra, 44000); /* 50 s + 6 s - 12 s */
    assert_int_equal(admitted(&v, T0 + 10ull * US_PER_S, 10, 2, 1, 10), 0);
    assert_int_equal(admitted(&v, T0 + 44ull * US_PER_S, 10, 2, 1, 10), 1);
    assert_int_equal(admitted(&v, T0 + 50ull * US_PER_S, 10, 2, 1, 10), 1);
    /* raised to 6000/min: the backlog stays, the room is there at once */
    _Atomic uint64_t x = 0;
    assert_int_equal(admitted(&x, T0, 600, 0, 1, 500), 500);
    assert_int_equal(admitted(&x, T0, 6000, 0, 1, 10000), 1000); /* (60 s - 50 s) / 10 ms */
}

static void no_limit_admits_everything_and_leaves_the_word(void **state)
{
    _Atomic uint64_t w = 0;
    uint32_t ra = 5;
    for (int i = 0; i < 1000; i++)
        assert_int_equal(dp_rate_take(&w, T0, 0, 0, 1000000, &ra), 0);
    assert_int_equal(ra, 0);
    dp_rate_charge(&w, T0, 0, 5);
    dp_rate_refund(&w, 0, 5);
    assert_int_equal(atomic_load(&w), 0);
    /* one a minute */
    assert_int_equal(dp_rate_take(&w, T0, 1, 0, 1, &ra), 0);
    assert_int_equal(dp_rate_take(&w, T0, 1, 0, 1, &ra), -EAGAIN);
    assert_int_equal(ra, 60000);
    /* extreme inputs saturate instead of wrapping, and do not crash */
    _Atomic uint64_t x = 0;
    assert_int_equal(dp_rate_take(&x, UINT64_MAX / 2, 1, UINT64_MAX, UINT64_MAX, &ra), 0);
    _Atomic uint64_t y = 0;
    assert_int_equal(dp_rate_take(&y, T0, UINT64_MAX, 0, 1, &ra), 0);
}

/* ---- several processes --------------------------------------------------------------------- */

#define PROCS 4

struct shared {
    _Atomic uint64_t word;
    _Atomic uint64_t admitted;
    _Atomic uint32_t arrived; /* a sense-reversing barrier across the processes */
    _Atomic uint32_t phase;
};

static struct shared *shared_new(void)
{
    struct shared *sh =
        mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sh != MAP_FAILED);
    return sh;
}

static void barrier(struct shared *sh)
{
    uint32_t ph = atomic_load(&sh->phase);
    if (atomic_fetch_add(&sh->arrived, 1) + 1 == PROCS) {
        atomic_store(&sh->arrived, 0);
        atomic_store(&sh->phase, ph + 1);
        return;
    }
    while (atomic_load(&sh->phase) == ph)
        sched_yield();
}

static void wait_all(pid_t *pids)
{
    for (int i = 0; i < PROCS; i++) {
        int st = 0;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
}

static void processes_sharing_a_limiter_admit_exactly_the_limit(void **state)
{
    /* frozen clock, a minute's burst: of 4 x 100000 takes, exactly 1000 pass */
    struct shared *sh = shared_new();
    pid_t pids[PROCS];
    for (int p = 0; p < PROCS; p++) {
        pids[p] = fork();
        assert_true(pids[p] != -1);
        if (pids[p] == 0) {
            uint64_t n = 0;
            for (int i = 0; i < 100000; i++)
                n += dp_rate_take(&sh->word, T0, 1000, 0, 1, NULL) == 0;
            atomic_fetch_add(&sh->admitted, n);
            _exit(0);
        }
    }
    wait_all(pids);
    assert_int_equal(atomic_load(&sh->admitted), 1000);
    munmap(sh, sizeof(*sh));
}

static void processes_over_one_simulated_minute_admit_exactly_the_limit(void **state)
{
    /* 600/min, burst 1; the processes walk the clock together in 25 ms steps over [0, 60 s),
     * each trying 3 takes a step: exactly 600 pass, however the takes interleave */
    struct shared *sh = shared_new();
    pid_t pids[PROCS];
    for (int p = 0; p < PROCS; p++) {
        pids[p] = fork();
        assert_true(pids[p] != -1);
        if (pids[p] == 0) {
            uint64_t n = 0;
            for (uint64_t ms = 0; ms < 60000; ms += 25) {
                for (int i = 0; i < 3; i++)
                    n += dp_rate_take(&sh->word, T0 + ms * US_PER_MS, 600, 1, 1, NULL) == 0;
                barrier(sh);
            }
            atomic_fetch_add(&sh->admitted, n);
            _exit(0);
        }
    }
    wait_all(pids);
    assert_int_equal(atomic_load(&sh->admitted), 600);
    munmap(sh, sizeof(*sh));
}

/* ---- cost ---------------------------------------------------------------------------------- */

static void cost_of_a_take(void **state)
{
    _Atomic uint64_t w = 0;
    const uint64_t n = 10000000;
    uint64_t ok = 0;
    uint64_t t0 = sy_now_ns();
    for (uint64_t i = 0; i < n; i++)
        ok += dp_rate_take(&w, T0 + i, 30000000, 0, 1, NULL) == 0; /* 2 us each, asked every 1 us */
    uint64_t t1 = sy_now_ns();
    print_message("rate take: %.2f ns (over %llu, %llu admitted)\n", (double)(t1 - t0) / (double)n,
                  (unsigned long long)n, (unsigned long long)ok);
    assert_int_equal(ok, n); /* 10 s of backlog: within the minute's burst */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_burst_is_admitted_at_once_then_one_per_interval),
        cmocka_unit_test(the_default_burst_is_a_minutes_worth),
        cmocka_unit_test(over_one_simulated_minute_exactly_the_limit),
        cmocka_unit_test(costs_refunds_and_charges_reconcile_tokens),
        cmocka_unit_test(usage_is_the_fraction_of_the_burst_in_use),
        cmocka_unit_test(a_limit_changed_live_applies_from_the_next_call),
        cmocka_unit_test(no_limit_admits_everything_and_leaves_the_word),
        cmocka_unit_test(processes_sharing_a_limiter_admit_exactly_the_limit),
        cmocka_unit_test(processes_over_one_simulated_minute_admit_exactly_the_limit),
        cmocka_unit_test(cost_of_a_take),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
