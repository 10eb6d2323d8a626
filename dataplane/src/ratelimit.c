/* SPDX-License-Identifier: Apache-2.0 */
/* GCRA rate limiters in shared memory (see ratelimit.h).
 *
 * Arithmetic is in nanoseconds so that the emission interval of a large TPM limit keeps its
 * precision (10M tokens/min is 6000 ns a token). The interval T is rounded up, so that a
 * limiter never runs fast: after k admissions TAT is at least start + k * T, and each needs
 * TAT <= now + burst * T, so over any minute it admits at most limit + burst - 1 units (with
 * burst 1, exactly the limit). Products saturate instead of wrapping. */
#include <errno.h>

#include "ratelimit.h"

#define NS_PER_MIN UINT64_C(60000000000)

/* Nanoseconds per unit under <limit> per minute, rounded up. */
static uint64_t interval_ns(uint64_t limit)
{
    return limit >= NS_PER_MIN ? 1 : (NS_PER_MIN + limit - 1) / limit;
}

static uint64_t mul_sat(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}

int dp_rate_take(_Atomic uint64_t *word, uint64_t now_us, uint64_t limit_per_min, uint64_t burst,
                 uint64_t cost, uint32_t *retry_after_ms)
{
    if (retry_after_ms)
        *retry_after_ms = 0;
    if (limit_per_min == 0)
        return 0;
    uint64_t t = interval_ns(limit_per_min);
    uint64_t inc = mul_sat(cost, t);
    uint64_t tau = mul_sat(burst ? burst : limit_per_min, t);
    if (inc > tau)
        return -E2BIG;
    uint64_t now = mul_sat(now_us, 1000);
    uint64_t tat = atomic_load_explicit(word, memory_order_relaxed);
    for (;;) {
        uint64_t nt = add_sat(tat > now ? tat : now, inc);
        if (nt - now > tau) {
            if (retry_after_ms) {
                uint64_t wait_ms = (nt - now - tau + 999999) / 1000000;
                *retry_after_ms = wait_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)wait_ms;
            }
            return -EAGAIN;
        }
        if (atomic_compare_exchange_weak_explicit(word, &tat, nt, memory_order_relaxed,
                                                  memory_order_relaxed))
            return 0;
    }
}

void dp_rate_refund(_Atomic uint64_t *word, uint64_t limit_per_min, uint64_t cost)
{
    if (limit_per_min == 0 || cost == 0)
        return;
    uint64_t inc = mul_sat(cost, interval_ns(limit_per_min));
    uint64_t tat = atomic_load_explicit(word, memory_order_relaxed);
    uint64_t nt;
    do {
        /* Below now the word means "empty" either way: max(TAT, now) in take. */
        nt = tat > inc ? tat - inc : 0;
    } while (!atomic_compare_exchange_weak_explicit(word, &tat, nt, memory_order_relaxed,
                                                    memory_order_relaxed));
}

void dp_rate_charge(_Atomic uint64_t *word, uint64_t now_us, uint64_t limit_per_min, uint64_t cost)
{
    if (limit_per_min == 0 || cost == 0)
        return;
    uint64_t inc = mul_sat(cost, interval_ns(limit_per_min));
    uint64_t now = mul_sat(now_us, 1000);
    uint64_t tat = atomic_load_explicit(word, memory_order_relaxed);
    uint64_t nt;
    do {
        nt = add_sat(tat > now ? tat : now, inc);
    } while (!atomic_compare_exchange_weak_explicit(word, &tat, nt, memory_order_relaxed,
                                                    memory_order_relaxed));
}

double dp_rate_usage(const _Atomic uint64_t *word, uint64_t now_us, uint64_t limit_per_min,
                     uint64_t burst)
{
    if (limit_per_min == 0)
        return 0.0;
    uint64_t tau = mul_sat(burst ? burst : limit_per_min, interval_ns(limit_per_min));
    uint64_t now = mul_sat(now_us, 1000);
    uint64_t tat = atomic_load_explicit((_Atomic uint64_t *)word, memory_order_relaxed);
    if (tat <= now || tau == 0)
        return 0.0;
    double u = (double)(tat - now) / (double)tau;
    return u > 1.0 ? 1.0 : u;
}
