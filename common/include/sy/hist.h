/* SPDX-License-Identifier: Apache-2.0 */
/** Latency histograms: log-linear buckets from 1 ms to 10 min, two buckets per power of two.
 *
 * The upper bounds, in milliseconds, are 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... 393216, 524288,
 * then 600000 (10 min) and +Inf: 40 buckets in all. Every bound is a whole number of
 * milliseconds, so Prometheus `le` labels read cleanly ("0.012", "1.536"), and from 2 ms on two
 * adjacent bounds are at most 1.5x apart, which keeps an interpolated quantile within 25%.
 *
 * Buckets are stored non-cumulative (one count per bucket, the last one for everything above
 * 10 min); the reader makes them cumulative when it writes `_bucket{le=...}` lines. A bucket
 * holds the durations d with upper(i-1) < d <= upper(i), which is Prometheus' `le` rule. */
#pragma once

#include <stdint.h>
#include <stdio.h>

/** Number of buckets, the last one being +Inf. */
#define SY_HIST_BUCKETS 40
/** The largest finite bound, in milliseconds: 10 minutes. */
#define SY_HIST_MAX_MS 600000u

/** The bucket of a duration of <us> microseconds. Branch-light: a division by a constant (a
 * multiply), a count of leading zeros and two conditional moves. */
static inline unsigned sy_hist_bucket(uint64_t us)
{
    /* ceil(us / 1000): us <= B * 1000 exactly when ms <= B, for a whole number of ms B. */
    uint64_t ms = us / 1000 + (us % 1000 != 0);
    uint64_t x = ms > 1 ? ms - 1 : 0;
    /* For x in [2^p, 2^(p+1)), that is ms in (2^p, 2^(p+1)], the two candidate bounds are
     * 1.5 * 2^p (bucket 2p) and 2^(p+1) (bucket 2p+1); ms is above the first when bit p of
     * 2x+1 is set. */
    unsigned p = 63u - (unsigned)__builtin_clzll(x | 1);
    unsigned i = 2 * p + (unsigned)(((2 * x + 1) >> p) & 1);
    i = x ? i : 0;
    return ms > SY_HIST_MAX_MS ? SY_HIST_BUCKETS - 1 : i;
}

/** The upper bound of bucket <i> in milliseconds; UINT64_MAX for the last (+Inf) bucket. */
static inline uint64_t sy_hist_upper_ms(unsigned i)
{
    if (i >= SY_HIST_BUCKETS - 1)
        return UINT64_MAX;
    if (i == SY_HIST_BUCKETS - 2)
        return SY_HIST_MAX_MS;
    if (i == 0)
        return 1;
    unsigned p = i / 2;
    return (i & 1) ? (uint64_t)2 << p : (uint64_t)3 << (p - 1);
}

/** Write the Prometheus `le` label of bucket <i> (seconds, or "+Inf") into <buf>/<size>. */
static inline void sy_hist_le(unsigned i, char *buf, size_t size)
{
    uint64_t ms = sy_hist_upper_ms(i);
    if (ms == UINT64_MAX)
        snprintf(buf, size, "+Inf");
    else if (ms % 1000 == 0)
        snprintf(buf, size, "%llu", (unsigned long long)(ms / 1000));
    else
        snprintf(buf, size, "%llu.%03llu", (unsigned long long)(ms / 1000),
                 (unsigned long long)(ms % 1000));
}
