/* SPDX-License-Identifier: Apache-2.0 */
/** What counting a request per deployment x model x key combination costs (issue 6).
 *
 * The combination cells of the segment are shared by the node's workers and bumped with relaxed
 * atomic adds (common/include/sy/shm-t.h says why they are not sharded per worker). This measures,
 * in ns per request, with P processes (forked, as workers are) each counting ITERATIONS requests:
 *
 *   objects   what dp__gov_account() did before: outcome, histogram and tokens/cost on the
 *             model's, the key's and the deployment's counters, in the process's own shard
 *   combo     sy_shm_combo() (find the cell) + sy_shm_combo_count() on one combination that
 *             every process hits: the worst case, one hot combination, its lines bouncing
 *   spread    the same, each process on a combination of its own
 *   sharded   the alternative not taken: the same adds on a cell in the process's own shard
 *
 *   bench_combo [ITERATIONS] [PROCESSES...]     (defaults 2,000,000 and 1 2 4)
 *
 * Output: `BENCH_COMBO name=... procs=... ns=...` per measure (the slowest process). */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sy/shm.h"
#include "sy/util.h"

enum measure { OBJECTS = 0, COMBO, SPREAD, SHARDED, MEASURE_MAX };
static const char *const names[MEASURE_MAX] = {"objects", "combo", "spread", "sharded"};

/* One process's run of <m>, as worker <w>; returns ns per request. */
static double run(struct sy_shm *shm, enum measure m, uint32_t w, uint64_t n,
                  struct sy_shm_combo *own)
{
    uint64_t t0 = sy_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        uint64_t us = 800 + (i & 1023);
        switch (m) {
        case OBJECTS: {
            struct sy_shm_counters *mc = sy_shm_counters(shm, w, SY_SHM_MODEL, 1);
            struct sy_shm_counters *kc = sy_shm_counters(shm, w, SY_SHM_KEY, 2);
            struct sy_shm_counters *dc = sy_shm_counters(shm, w, SY_SHM_DEPLOYMENT, 3);
            sy_shm_outcome(mc, SY_OUTCOME_SUCCESS);
            sy_shm_observe(sy_shm_hist(mc, SY_SHM_MODEL, SY_HIST_LATENCY), us);
            sy_shm_outcome(kc, SY_OUTCOME_SUCCESS);
            struct sy_shm_counters *all[] = {mc, kc, dc};
            for (int k = 0; k < 3; k++) {
                sy_shm_add(all[k], SY_CTR_PROMPT_TOKENS, 14);
                sy_shm_add(all[k], SY_CTR_COMPLETION_TOKENS, 9);
                sy_shm_add(all[k], SY_CTR_COST_MICROS, 700);
            }
            break;
        }
        case COMBO:
            sy_shm_combo_count(sy_shm_combo(shm, &(struct sy_shm_combo_ids){3, 1, 2, 31, 11, 42}),
                               SY_OUTCOME_SUCCESS, 14, 9, 700, us);
            break;
        case SPREAD:
            sy_shm_combo_count(
                sy_shm_combo(shm, &(struct sy_shm_combo_ids){3, 1, w, 31, 11, 100 + w}),
                SY_OUTCOME_SUCCESS, 14, 9, 700, us);
            break;
        case SHARDED:
            sy_shm_combo_count(own, SY_OUTCOME_SUCCESS, 14, 9, 700, us);
            break;
        default:
            break;
        }
    }
    return (double)(sy_now_ns() - t0) / (double)n;
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
    unsigned procs[8] = {1, 2, 4};
    unsigned n_procs = 3;
    if (argc > 2) {
        n_procs = 0;
        for (int i = 2; i < argc && n_procs < 8; i++)
            procs[n_procs++] = (unsigned)atoi(argv[i]);
    }
    char path[64];
    snprintf(path, sizeof(path), "/dev/shm/sy-bench-combo-%d", (int)getpid());
    struct sy_shm_caps caps = {.max_workers = 8, .max_keys = 16};
    struct sy_shm *shm = NULL;
    char *err = NULL;
    if (sy_shm_create(path, &caps, &shm, &err) != 0) {
        fprintf(stderr, "bench_combo: %s\n", err ? err : "cannot create the segment");
        return 1;
    }
    unlink(path);
    /* the per-process cells of "sharded": one combination per worker, as a sharded block would
     * hold them (each on its own lines) */
    double *res = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED)
        return 1;
    for (unsigned pi = 0; pi < n_procs; pi++) {
        unsigned p = procs[pi] ? SY_MIN(procs[pi], 8u) : 1;
        for (int m = 0; m < MEASURE_MAX; m++) {
            for (unsigned w = 0; w < p; w++) {
                pid_t pid = fork();
                if (pid == -1)
                    return 1;
                if (pid == 0) {
                    struct sy_shm_combo *own =
                        sy_shm_combo(shm, &(struct sy_shm_combo_ids){5, 5, 8 + w, 0, 0, 1000 + w});
                    res[w] = run(shm, (enum measure)m, w, n, own);
                    _exit(0);
                }
            }
            double worst = 0;
            for (unsigned w = 0; w < p; w++) {
                int st;
                wait(&st);
            }
            for (unsigned w = 0; w < p; w++)
                worst = SY_MAX(worst, res[w]);
            printf("BENCH_COMBO name=%s procs=%u ns=%.1f\n", names[m], p, worst);
            fflush(stdout);
        }
    }
    sy_shm_detach(shm);
    return 0;
}
