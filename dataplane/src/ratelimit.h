/* SPDX-License-Identifier: Apache-2.0 */
/** Rate limits (RPM, TPM) in shared memory, used by every worker of the node without locks.
 *
 * Each limiter is one 64-bit word holding a GCRA "theoretical arrival time" (TAT) in
 * nanoseconds of the caller's monotonic clock: the time at which the limiter would be empty
 * again if nothing more were taken. Taking <cost> units moves it to max(TAT, now) + cost * T,
 * T = 1 min / limit; that is allowed while the result is at most now + burst * T. This is a
 * token bucket of capacity <burst> refilled at <limit> per minute, in one word and one CAS.
 *
 * Limits may change live (a new routing table): the word holds a time, not a token count, so
 * the new limit applies from the next call. Work already admitted stays admitted: if the limit
 * drops, the backlog (TAT - now) is measured against the new, smaller burst, and callers are
 * refused until it has drained in real time; if it rises, the extra room is there at once.
 * A changed limit never grants more than the new burst.
 *
 * Several nodes splitting a global limit: pass the per-node share (the caller divides by the
 * live nodes). A <limit_per_min> of 0 means no limit: every call succeeds and the word is not
 * touched. A <burst> of 0 means <limit_per_min>, a full minute's worth: "N per minute" as the
 * providers count it. Times are microseconds of a monotonic clock, injected by the caller. */
#pragma once

#include <stdatomic.h>
#include <stdint.h>

/** Take <cost> units (1 for RPM; estimated tokens for TPM) from limiter <word> at <now_us>.
 * Returns 0 if admitted; -EAGAIN if not, with *<retry_after_ms> (may be NULL) the wait until
 * it would be, rounded up; -E2BIG if <cost> exceeds the burst and never fits (then
 * *<retry_after_ms> is 0: waiting will not help). */
int dp_rate_take(_Atomic uint64_t *word, uint64_t now_us, uint64_t limit_per_min, uint64_t burst,
                 uint64_t cost, uint32_t *retry_after_ms);

/** Give back <cost> units taken earlier from <word> under <limit_per_min>: TPM reconciled with
 * the real usage when the estimate was too high, or a request refused by a later limiter.
 * Units that already refilled are not given twice: refunding never makes room beyond the
 * burst. */
void dp_rate_refund(_Atomic uint64_t *word, uint64_t limit_per_min, uint64_t cost);

/** Charge <cost> more units to <word> at <now_us> without asking: TPM reconciled with the real
 * usage when the estimate was too low. May push the limiter past its burst; callers then wait
 * until the overdraft has drained. */
void dp_rate_charge(_Atomic uint64_t *word, uint64_t now_us, uint64_t limit_per_min, uint64_t cost);

/** How full limiter <word> is at <now_us>: 0 empty, 1 full (nothing more fits). For shedding
 * traffic to siblings before a deployment is exhausted. 0 for no limit. */
double dp_rate_usage(const _Atomic uint64_t *word, uint64_t now_us, uint64_t limit_per_min,
                     uint64_t burst);
