/* SPDX-License-Identifier: Apache-2.0 */
/** The decision-log ring of a running data plane, for run.sh's ring measure (issue 6: "a flood
 * of events at full load never slows requests").
 *
 *   bench_ring SEGMENT stat             print the ring's fill and its drop counter
 *   bench_ring SEGMENT fill             push placeholder events until the ring is full
 *   bench_ring SEGMENT drain SECONDS    be the consumer (as the control plane is) for SECONDS
 *                                       (at most 600), popping everything, sleeping 200 µs
 *                                       when the ring is empty; then print what it popped
 *
 * Every mode prints one line: `BENCH_RING cells=N used=N dropped=N popped=N`. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sy/shm.h"
#include "sy/util.h"

static uint64_t used(const struct sy_shm *shm)
{
    uint64_t e = atomic_load_explicit(&shm->ring->enqueue_pos, memory_order_relaxed);
    uint64_t d = atomic_load_explicit(&shm->ring->dequeue_pos, memory_order_relaxed);
    return e > d ? e - d : 0;
}

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[2], "drain") == 0 && argc < 4)) {
        fprintf(stderr, "usage: bench_ring SEGMENT stat|fill|drain SECONDS\n");
        return 2;
    }
    const char *mode = argv[2];
    bool writable = strcmp(mode, "stat") != 0;
    struct sy_shm *shm = NULL;
    char *err = NULL;
    int rc = sy_shm_attach(argv[1], writable, &shm, &err);
    if (rc != 0) {
        fprintf(stderr, "bench_ring: %s: %s\n", argv[1], err ? err : strerror(-rc));
        return 1;
    }
    uint64_t popped = 0;
    if (strcmp(mode, "fill") == 0) {
        struct sy_shm_event ev;
        sy_shm_event_init(&ev, SY_EVENT_ATTEMPT, NULL);
        snprintf(ev.text, sizeof(ev.text), "bench_ring placeholder");
        for (uint64_t i = 0; i <= 2ull * shm->caps.event_cells; i++)
            if (sy_shm_event_push(shm, &ev) == -ENOBUFS)
                break;
    } else if (strcmp(mode, "drain") == 0) {
        double secs = strtod(argv[3], NULL);
        if (!(secs > 0 && secs <= 600)) {
            fprintf(stderr, "bench_ring: SECONDS must be in (0, 600]\n");
            return 2;
        }
        uint64_t end = sy_now_ns() + (uint64_t)(secs * 1e9);
        struct sy_shm_event ev;
        while (sy_now_ns() < end) {
            int n = 0;
            while (n < 4096 && sy_shm_event_pop(shm, sy_now_ms(), &ev) == 0)
                n++;
            popped += (uint64_t)n;
            if (n == 0)
                nanosleep(&(struct timespec){0, 200000}, NULL);
        }
    } else if (strcmp(mode, "stat") != 0) {
        fprintf(stderr, "bench_ring: unknown mode %s\n", mode);
        return 2;
    }
    printf("BENCH_RING cells=%u used=%llu dropped=%llu popped=%llu\n", shm->caps.event_cells,
           (unsigned long long)used(shm), (unsigned long long)sy_shm_event_dropped(shm),
           (unsigned long long)popped);
    sy_shm_detach(shm);
    return 0;
}
