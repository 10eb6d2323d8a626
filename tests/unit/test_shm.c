/* SPDX-License-Identifier: Apache-2.0 */
/* The node-wide shared memory: layout facts, create/attach and what attach refuses, a forked
 * process seeing another's writes, counters from several processes summing exactly, the
 * histogram buckets, slot reuse, reaping a dead worker, the key-model table, the combination
 * cells (claimed, racing, overflowing), and the decision log ring (single and multi producer, full,
 * a stalled producer). Prints the cost of a counter bump. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "sy/shm.h"
#include "sy/util.h"

/* ---- helpers ------------------------------------------------------------------------------- */

static char *tmp_path(void)
{
    static int n;
    char *p = NULL;
    assert_true(asprintf(&p, "/dev/shm/sy-test-shm-%d-%d", (int)getpid(), n++) > 0);
    return p;
}

static struct sy_shm *make(const char *path, const struct sy_shm_caps *caps)
{
    struct sy_shm *shm = NULL;
    char *err = NULL;
    int rc = sy_shm_create(path, caps, &shm, &err);
    if (rc != 0)
        fail_msg("create: %s", err ? err : "?");
    assert_null(err);
    return shm;
}

/* Wait for <pid> and require a clean exit 0. */
static void reap_ok(pid_t pid)
{
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* In a child: exit 1 when <x> is false (cmocka's asserts longjmp into the parent's state). */
#define CHILD_REQUIRE(x)                                                                           \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "child %d: %s:%d: %s\n", (int)getpid(), __FILE__, __LINE__, #x);       \
            _exit(1);                                                                              \
        }                                                                                          \
    } while (0)

/* ---- layout -------------------------------------------------------------------------------- */

static void layout_blocks_are_aligned_ordered_and_sized(void **state)
{
    struct sy_shm_caps caps = {0};
    struct sy_shm_header h;
    char *err = NULL;
    assert_int_equal(sy_shm_layout(&caps, &h, &err), 0);
    assert_int_equal(caps.max_workers, SY_SHM_DEFAULT_WORKERS);
    assert_int_equal(caps.max_deployments, SY_SHM_DEFAULT_DEPLOYMENTS);
    assert_int_equal(caps.max_models, SY_SHM_DEFAULT_MODELS);
    assert_int_equal(caps.max_keys, SY_SHM_DEFAULT_KEYS);
    assert_int_equal(h.version, SY_SHM_VERSION);
    assert_int_equal(h.header_size, sizeof(struct sy_shm_header));

    assert_int_equal(caps.combo_cells, SY_SHM_DEFAULT_COMBOS);
    uint64_t offs[] = {h.off_workers,    h.off_deployments, h.off_models, h.off_keys,
                       h.off_key_models, h.off_events,      h.off_combos, h.off_shards};
    uint64_t ends[] = {
        h.off_workers + caps.max_workers * sizeof(struct sy_shm_worker),
        h.off_deployments + caps.max_deployments * sizeof(struct sy_shm_dep_state),
        h.off_models + caps.max_models * sizeof(struct sy_shm_model_state),
        h.off_keys + caps.max_keys * sizeof(struct sy_shm_key_state),
        h.off_key_models + caps.key_model_entries * sizeof(struct sy_shm_key_model),
        h.off_events + sizeof(struct sy_shm_event_ring) +
            caps.event_cells * sizeof(struct sy_shm_event_cell),
        h.off_combos + (caps.combo_cells + 1) * sizeof(struct sy_shm_combo),
        h.off_shards + caps.max_workers * h.shard_stride,
    };
    assert_true(h.off_workers >= sizeof(struct sy_shm_header));
    for (size_t i = 0; i < SY_ARRAY_LEN(offs); i++) {
        assert_int_equal(offs[i] % 64, 0);
        if (i + 1 < SY_ARRAY_LEN(offs))
            assert_true(ends[i] <= offs[i + 1]);
    }
    assert_true(ends[SY_ARRAY_LEN(ends) - 1] <= h.size);
    assert_int_equal(h.size % 4096, 0);
    assert_int_equal(h.shard_stride % 64, 0);
    assert_int_equal(h.shard_off_models % 64, 0);
    assert_int_equal(h.shard_off_keys % 64, 0);
    assert_int_equal(h.shard_off_models, caps.max_deployments * sizeof(struct sy_shm_obj_counters));

    /* the sizes a reader of the report wants, for the default capacities */
    print_message("layout (defaults: %u workers, %u deployments, %u models, %u keys, "
                  "%u key-model entries, %u events, %u combinations):\n",
                  caps.max_workers, caps.max_deployments, caps.max_models, caps.max_keys,
                  caps.key_model_entries, caps.event_cells, caps.combo_cells);
    const char *names[] = {"workers",    "deployments", "models", "keys",
                           "key_models", "events",      "combos", "shards"};
    static_assert(SY_ARRAY_LEN(names) == SY_ARRAY_LEN(offs), "a name per block");
    for (size_t i = 0; i < SY_ARRAY_LEN(offs); i++)
        print_message("  %-12s @%10llu  %10llu bytes\n", names[i], (unsigned long long)offs[i],
                      (unsigned long long)(ends[i] - offs[i]));
    print_message("  shard stride %llu bytes; total %llu bytes (%.1f MiB)\n",
                  (unsigned long long)h.shard_stride, (unsigned long long)h.size,
                  (double)h.size / (1 << 20));

    /* powers of two, out-of-range capacities */
    struct sy_shm_caps odd = {.event_cells = 1000, .key_model_entries = 3};
    assert_int_equal(sy_shm_layout(&odd, &h, NULL), 0);
    assert_int_equal(odd.event_cells, 1024);
    assert_int_equal(odd.key_model_entries, 4);
    struct sy_shm_caps huge = {.max_workers = 100000};
    assert_int_equal(sy_shm_layout(&huge, &h, &err), -EINVAL);
    assert_non_null(strstr(err, "workers=100000"));
    SY_FREE(err);
}

static void create_then_attach_sees_the_same_segment(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {.max_workers = 4,
                               .max_deployments = 8,
                               .max_models = 4,
                               .max_keys = 16,
                               .key_model_entries = 64,
                               .event_cells = 16};
    struct sy_shm *shm = make(path, &caps);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal((uint64_t)st.st_size, shm->size);
    assert_int_equal(atomic_load(&shm->hdr->magic), SY_SHM_MAGIC);
    assert_true(shm->hdr->generation != 0);
    /* no temporary file left behind */
    char *tmp = NULL;
    assert_true(asprintf(&tmp, "%s.%d.tmp", path, (int)getpid()) > 0);
    assert_int_equal(access(tmp, F_OK), -1);
    free(tmp);

    struct sy_shm *rw = NULL, *ro = NULL;
    char *err = NULL;
    assert_int_equal(sy_shm_attach(path, true, &rw, &err), 0);
    assert_int_equal(sy_shm_attach(path, false, &ro, &err), 0);
    assert_null(err);
    assert_int_equal(rw->caps.max_deployments, 8);
    assert_int_equal(rw->hdr->generation, shm->hdr->generation);

    /* a write through one mapping is seen through the others */
    assert_int_equal(sy_shm_worker_start(shm, 2, 1234, 99), 0);
    sy_shm_outcome(sy_shm_counters(rw, 2, SY_SHM_DEPLOYMENT, 5), SY_OUTCOME_UPSTREAM_5XX);
    struct sy_shm_totals t;
    assert_int_equal(sy_shm_read(ro, SY_SHM_DEPLOYMENT, 5, &t), 0);
    assert_int_equal(t.requests[SY_OUTCOME_UPSTREAM_5XX], 1);
    assert_int_equal(atomic_load(&ro->workers[2].pid), 1234);

    /* recreating replaces the file; the old mappings keep the old segment intact */
    struct sy_shm *again = make(path, &caps);
    assert_true(again->hdr->generation != shm->hdr->generation);
    assert_int_equal(sy_shm_read(ro, SY_SHM_DEPLOYMENT, 5, &t), 0);
    assert_int_equal(t.requests[SY_OUTCOME_UPSTREAM_5XX], 1);
    assert_int_equal(sy_shm_read(again, SY_SHM_DEPLOYMENT, 5, &t), 0);
    assert_int_equal(t.requests[SY_OUTCOME_UPSTREAM_5XX], 0);

    sy_shm_detach(again);
    sy_shm_detach(ro);
    sy_shm_detach(rw);
    sy_shm_detach(shm);
    sy_shm_detach(NULL);
    unlink(path);
    free(path);
}

static void attach_refuses_what_is_not_this_layout(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {.max_workers = 2,
                               .max_deployments = 2,
                               .max_models = 2,
                               .max_keys = 2,
                               .key_model_entries = 4,
                               .event_cells = 4};
    struct sy_shm *shm = make(path, &caps);
    uint64_t size = shm->size;
    sy_shm_detach(shm);
    struct sy_shm *a = NULL;
    char *err = NULL;
    int fd = open(path, O_RDWR);
    assert_true(fd != -1);

    /* another version: the message names both */
    uint32_t v = SY_SHM_VERSION + 1;
    assert_int_equal(pwrite(fd, &v, sizeof(v), offsetof(struct sy_shm_header, version)), 4);
    assert_int_equal(sy_shm_attach(path, false, &a, &err), -EPROTO);
    assert_null(a);
    char want[128];
    snprintf(want, sizeof(want), "layout version %u, but this build uses version %u",
             SY_SHM_VERSION + 1, SY_SHM_VERSION);
    assert_non_null(strstr(err, want));
    SY_FREE(err);
    v = SY_SHM_VERSION;
    assert_int_equal(pwrite(fd, &v, sizeof(v), offsetof(struct sy_shm_header, version)), 4);
    assert_int_equal(sy_shm_attach(path, false, &a, NULL), 0);
    sy_shm_detach(a);

    /* a size that does not match the header */
    assert_int_equal(ftruncate(fd, (off_t)size + 4096), 0);
    assert_int_equal(sy_shm_attach(path, true, &a, &err), -EPROTO);
    assert_non_null(strstr(err, "bytes"));
    SY_FREE(err);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);

    /* an offset that does not match the capacities */
    uint64_t off = 128;
    assert_int_equal(pwrite(fd, &off, 8, offsetof(struct sy_shm_header, off_workers)), 8);
    assert_int_equal(sy_shm_attach(path, true, &a, &err), -EPROTO);
    assert_non_null(strstr(err, "offsets"));
    SY_FREE(err);

    /* no magic */
    uint64_t zero = 0;
    assert_int_equal(pwrite(fd, &zero, 8, 0), 8);
    assert_int_equal(sy_shm_attach(path, true, &a, &err), -EPROTO);
    assert_non_null(strstr(err, "not a Switchyard segment"));
    SY_FREE(err);

    /* too small, missing */
    assert_int_equal(ftruncate(fd, 100), 0);
    assert_int_equal(sy_shm_attach(path, true, &a, &err), -EPROTO);
    assert_non_null(strstr(err, "too small"));
    SY_FREE(err);
    close(fd);
    unlink(path);
    assert_int_equal(sy_shm_attach(path, true, &a, &err), -ENOENT);
    assert_non_null(strstr(err, path));
    SY_FREE(err);
    free(path);
}

static void a_forked_process_attaches_and_sees_the_parents_writes(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {
        .max_workers = 4, .max_deployments = 8, .max_models = 4, .max_keys = 8, .event_cells = 16};
    struct sy_shm *shm = make(path, &caps);
    assert_int_equal(sy_shm_worker_start(shm, 0, getpid(), 1), 0);
    assert_int_equal(sy_shm_worker_start(shm, 1, getpid(), 1), 0);
    struct sy_shm_counters *c = sy_shm_counters(shm, 0, SY_SHM_MODEL, 3);
    sy_shm_add(c, SY_CTR_COMPLETION_TOKENS, 42);
    sy_shm_observe(sy_shm_hist(c, SY_SHM_MODEL, SY_HIST_TTFB), 2500);
    atomic_store(&sy_shm_dep(shm, 7)->ttfb_ewma_us, 777);
    struct sy_shm_event ev;
    sy_shm_event_init(&ev, SY_EVENT_FALLBACK, "req-parent");
    assert_int_equal(sy_shm_event_push(shm, &ev), 0);

    pid_t pid = fork();
    assert_true(pid != -1);
    if (pid == 0) {
        struct sy_shm *s = NULL;
        CHILD_REQUIRE(sy_shm_attach(path, true, &s, NULL) == 0);
        struct sy_shm_totals t;
        CHILD_REQUIRE(sy_shm_read(s, SY_SHM_MODEL, 3, &t) == 0);
        CHILD_REQUIRE(t.ctr[SY_CTR_COMPLETION_TOKENS] == 42);
        CHILD_REQUIRE(t.hist[SY_HIST_TTFB][sy_hist_bucket(2500)] == 1);
        CHILD_REQUIRE(t.hist_sum_us[SY_HIST_TTFB] == 2500);
        CHILD_REQUIRE(atomic_load(&s->deps[7].ttfb_ewma_us) == 777);
        struct sy_shm_event got;
        CHILD_REQUIRE(sy_shm_event_pop(s, 0, &got) == 0);
        CHILD_REQUIRE(strcmp(got.request_id, "req-parent") == 0);
        /* and writes back, in its own shard */
        sy_shm_add(sy_shm_counters(s, 1, SY_SHM_MODEL, 3), SY_CTR_COMPLETION_TOKENS, 8);
        sy_shm_detach(s);
        _exit(0);
    }
    reap_ok(pid);
    struct sy_shm_totals t;
    assert_int_equal(sy_shm_read(shm, SY_SHM_MODEL, 3, &t), 0);
    assert_int_equal(t.ctr[SY_CTR_COMPLETION_TOKENS], 50);
    struct sy_shm_event got;
    assert_int_equal(sy_shm_event_pop(shm, 0, &got), -EAGAIN);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

static void slots_beyond_capacity_and_read_only_attaches_get_null(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {
        .max_workers = 2, .max_deployments = 3, .max_models = 4, .max_keys = 5, .event_cells = 4};
    struct sy_shm *shm = make(path, &caps);
    assert_null(sy_shm_worker(shm, 2));
    assert_non_null(sy_shm_worker(shm, 1));
    assert_null(sy_shm_dep(shm, 3));
    assert_non_null(sy_shm_dep(shm, 2));
    assert_null(sy_shm_model(shm, 4));
    assert_null(sy_shm_key(shm, 5));
    assert_null(sy_shm_key_model(shm, 5, 0));
    assert_null(sy_shm_key_model(shm, 0, 4));
    assert_null(sy_shm_counters(shm, 2, SY_SHM_DEPLOYMENT, 0));
    assert_null(sy_shm_counters(shm, 0, SY_SHM_DEPLOYMENT, 3));
    assert_null(sy_shm_counters(shm, 0, SY_SHM_MODEL, 4));
    assert_null(sy_shm_counters(shm, 0, SY_SHM_KEY, 5));
    assert_null(sy_shm_counters(shm, 0, SY_SHM_KIND_MAX, 0));
    assert_non_null(sy_shm_counters(shm, 1, SY_SHM_KEY, 4));
    assert_null(sy_shm_hist(sy_shm_counters(shm, 0, SY_SHM_KEY, 0), SY_SHM_KEY, SY_HIST_TTFB));
    /* the helpers take NULL and do nothing */
    sy_shm_add(NULL, SY_CTR_RETRIES, 1);
    sy_shm_outcome(NULL, SY_OUTCOME_SUCCESS);
    sy_shm_observe(NULL, 5);
    sy_shm_inflight_inc(NULL, NULL);
    sy_shm_inflight_dec(NULL, NULL);
    struct sy_shm_totals t;
    assert_int_equal(sy_shm_read(shm, SY_SHM_KEY, 5, &t), -ERANGE);
    assert_int_equal(sy_shm_read(shm, SY_SHM_DEPLOYMENT, 3, &t), -ERANGE);
    assert_int_equal(sy_shm_slot_reset(shm, SY_SHM_MODEL, 4, 1), -ERANGE);
    assert_int_equal(sy_shm_worker_start(shm, 2, 1, 1), -ERANGE);
    assert_int_equal(sy_shm_worker_reap(shm, 2), -ERANGE);

    struct sy_shm *ro = NULL;
    assert_int_equal(sy_shm_attach(path, false, &ro, NULL), 0);
    assert_null(sy_shm_dep(ro, 0));
    assert_non_null(sy_shm_dep_peek(ro, 0));
    assert_null(sy_shm_dep_peek(ro, 3));
    assert_null(sy_shm_counters(ro, 0, SY_SHM_DEPLOYMENT, 0));
    assert_null(sy_shm_key_model(ro, 0, 0));
    struct sy_shm_event ev;
    sy_shm_event_init(&ev, SY_EVENT_ATTEMPT, NULL);
    assert_int_equal(sy_shm_event_push(ro, &ev), -EROFS);
    assert_int_equal(sy_shm_event_pop(ro, 0, &ev), -EROFS);
    assert_int_equal(sy_shm_slot_reset(ro, SY_SHM_MODEL, 0, 1), -EROFS);
    assert_int_equal(sy_shm_read(ro, SY_SHM_DEPLOYMENT, 0, &t), 0);
    sy_shm_detach(ro);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

/* ---- counters ------------------------------------------------------------------------------ */

#define PROCS 4
#define BUMPS 1000000

static void four_processes_bump_their_shards_and_the_sums_are_exact(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {
        .max_workers = 8, .max_deployments = 4, .max_models = 4, .max_keys = 4, .event_cells = 4};
    struct sy_shm *shm = make(path, &caps);
    pid_t pids[PROCS];
    for (int i = 0; i < PROCS; i++) {
        assert_int_equal(sy_shm_worker_start(shm, (uint32_t)i, getpid(), 1), 0);
        pids[i] = fork();
        assert_true(pids[i] != -1);
        if (pids[i] == 0) {
            struct sy_shm_counters *dep = sy_shm_counters(shm, (uint32_t)i, SY_SHM_DEPLOYMENT, 3);
            struct sy_shm_counters *key = sy_shm_counters(shm, (uint32_t)i, SY_SHM_KEY, 1);
            /* shard 0 shared by all, as the old and new worker of a slot during a reload */
            struct sy_shm_counters *shared = sy_shm_counters(shm, 0, SY_SHM_MODEL, 2);
            struct sy_shm_hist *lat = sy_shm_hist(dep, SY_SHM_DEPLOYMENT, SY_HIST_LATENCY);
            struct sy_shm_dep_state *ds = sy_shm_dep(shm, 3);
            for (uint64_t n = 0; n < BUMPS; n++) {
                sy_shm_inflight_inc(ds, dep);
                sy_shm_outcome(dep, SY_OUTCOME_SUCCESS);
                sy_shm_add(dep, SY_CTR_PROMPT_TOKENS, 3);
                sy_shm_observe(lat, n % 5000 * 1000);
                sy_shm_add(key, SY_CTR_COST_MICROS, 7);
                sy_shm_add(shared, SY_CTR_RETRIES, 1);
                sy_shm_inflight_dec(ds, dep);
            }
            _exit(0);
        }
    }
    for (int i = 0; i < PROCS; i++)
        reap_ok(pids[i]);
    struct sy_shm_totals t;
    assert_int_equal(sy_shm_read(shm, SY_SHM_DEPLOYMENT, 3, &t), 0);
    assert_int_equal(t.requests[SY_OUTCOME_SUCCESS], (uint64_t)PROCS * BUMPS);
    assert_int_equal(t.ctr[SY_CTR_PROMPT_TOKENS], (uint64_t)PROCS * BUMPS * 3);
    assert_int_equal(t.ctr[SY_CTR_IN_FLIGHT], 0);
    uint64_t hist_total = 0;
    for (int b = 0; b < SY_HIST_BUCKETS; b++)
        hist_total += t.hist[SY_HIST_LATENCY][b];
    assert_int_equal(hist_total, (uint64_t)PROCS * BUMPS);
    /* sum of (n % 5000) ms over n < 1e6: 200 rounds of 0..4999 */
    assert_int_equal(t.hist_sum_us[SY_HIST_LATENCY],
                     (uint64_t)PROCS * 200 * (4999 * 5000 / 2) * 1000);
    assert_int_equal(atomic_load(&shm->deps[3].in_flight), 0);
    assert_int_equal(sy_shm_read(shm, SY_SHM_KEY, 1, &t), 0);
    assert_int_equal(t.ctr[SY_CTR_COST_MICROS], (uint64_t)PROCS * BUMPS * 7);
    assert_int_equal(sy_shm_read(shm, SY_SHM_MODEL, 2, &t), 0);
    assert_int_equal(t.ctr[SY_CTR_RETRIES], (uint64_t)PROCS * BUMPS);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

static void readers_skip_shards_no_worker_used(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {
        .max_workers = 8, .max_deployments = 2, .max_models = 2, .max_keys = 2, .event_cells = 4};
    struct sy_shm *shm = make(path, &caps);
    assert_int_equal(atomic_load(&shm->hdr->workers_seen), 0);
    assert_int_equal(sy_shm_worker_start(shm, 5, 42, 10), 0);
    assert_int_equal(atomic_load(&shm->hdr->workers_seen), 6);
    assert_int_equal(sy_shm_worker_start(shm, 2, 43, 10), 0);
    assert_int_equal(atomic_load(&shm->hdr->workers_seen), 6);
    sy_shm_add(sy_shm_counters(shm, 5, SY_SHM_KEY, 1), SY_CTR_FALLBACKS, 2);
    sy_shm_add(sy_shm_counters(shm, 7, SY_SHM_KEY, 1), SY_CTR_FALLBACKS, 100); /* never started */
    struct sy_shm_totals t;
    assert_int_equal(sy_shm_read(shm, SY_SHM_KEY, 1, &t), 0);
    assert_int_equal(t.ctr[SY_CTR_FALLBACKS], 2);
    sy_shm_worker_heartbeat(sy_shm_worker(shm, 5), 20, 9);
    assert_int_equal(atomic_load(&shm->workers[5].heartbeat_ms), 20);
    assert_int_equal(atomic_load(&shm->workers[5].table_version), 9);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

/* ---- histograms ---------------------------------------------------------------------------- */

static void histogram_buckets_follow_the_le_rule(void **state)
{
    assert_int_equal(SY_HIST_BUCKETS, 40);
    assert_int_equal(sy_hist_bucket(0), 0);
    assert_int_equal(sy_hist_bucket(1), 0);
    assert_int_equal(sy_hist_bucket(1000), 0);
    assert_int_equal(sy_hist_bucket(1001), 1);
    assert_int_equal(sy_hist_bucket(UINT64_MAX), SY_HIST_BUCKETS - 1);
    assert_int_equal(sy_hist_upper_ms(0), 1);
    assert_int_equal(sy_hist_upper_ms(SY_HIST_BUCKETS - 2), 600000);
    assert_int_equal(sy_hist_upper_ms(SY_HIST_BUCKETS - 1), UINT64_MAX);
    uint64_t prev = 0;
    for (unsigned i = 0; i + 1 < SY_HIST_BUCKETS; i++) {
        uint64_t up = sy_hist_upper_ms(i);
        assert_true(up > prev);
        if (prev > 1)
            assert_true(up * 2 <= prev * 3); /* neighbours at most 1.5x apart, from 2 ms */
        /* a duration equal to the bound is in the bucket, one microsecond more is not */
        assert_int_equal(sy_hist_bucket(up * 1000), i);
        assert_int_equal(sy_hist_bucket(up * 1000 + 1), i + 1);
        if (i > 0)
            assert_int_equal(sy_hist_bucket(prev * 1000 + 1), i);
        prev = up;
    }
    /* every millisecond up to 10 min lands in the bucket the bounds say */
    unsigned b = 0;
    for (uint64_t ms = 1; ms <= 600001; ms++) {
        while (ms > sy_hist_upper_ms(b))
            b++;
        if (sy_hist_bucket(ms * 1000) != b)
            fail_msg("%llu ms: bucket %u, want %u", (unsigned long long)ms,
                     sy_hist_bucket(ms * 1000), b);
    }
    char le[32];
    sy_hist_le(0, le, sizeof(le));
    assert_string_equal(le, "0.001");
    sy_hist_le(6, le, sizeof(le));
    assert_string_equal(le, "0.012");
    sy_hist_le(21, le, sizeof(le));
    assert_string_equal(le, "2.048");
    sy_hist_le(SY_HIST_BUCKETS - 2, le, sizeof(le));
    assert_string_equal(le, "600");
    sy_hist_le(SY_HIST_BUCKETS - 1, le, sizeof(le));
    assert_string_equal(le, "+Inf");
}

/* ---- slots --------------------------------------------------------------------------------- */

static void reset_gives_a_slot_to_a_new_owner_and_nothing_else(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {.max_workers = 2,
                               .max_deployments = 4,
                               .max_models = 4,
                               .max_keys = 4,
                               .key_model_entries = 16,
                               .event_cells = 4};
    struct sy_shm *shm = make(path, &caps);
    assert_int_equal(sy_shm_worker_start(shm, 0, 1, 1), 0);
    assert_int_equal(sy_shm_worker_start(shm, 1, 2, 1), 0);
    for (uint32_t s = 0; s < 2; s++) {
        struct sy_shm_dep_state *d = sy_shm_dep(shm, s);
        atomic_store(&d->circuit.word, 5);
        atomic_store(&d->rpm, 123);
        atomic_store(&d->circuit.window[3], 9);
        for (uint32_t w = 0; w < 2; w++) {
            struct sy_shm_counters *c = sy_shm_counters(shm, w, SY_SHM_DEPLOYMENT, s);
            sy_shm_outcome(c, SY_OUTCOME_TIMEOUT);
            sy_shm_observe(sy_shm_hist(c, SY_SHM_DEPLOYMENT, SY_HIST_LATENCY), 1000);
        }
        atomic_store(&sy_shm_key(shm, s)->tpm, 55);
        atomic_store(&sy_shm_key_model(shm, s, 1)->rpm, 66);
        sy_shm_add(sy_shm_counters(shm, 1, SY_SHM_KEY, s), SY_CTR_PROMPT_TOKENS, 10);
    }
    assert_int_equal(sy_shm_slot_reset(shm, SY_SHM_DEPLOYMENT, 1, 7), 0);
    assert_int_equal(sy_shm_slot_reset(shm, SY_SHM_KEY, 1, 3), 0);
    assert_int_equal(sy_shm_slot_reset(shm, SY_SHM_MODEL, 2, 4), 0);

    struct sy_shm_totals t;
    assert_int_equal(atomic_load(&shm->deps[1].generation), 7);
    assert_int_equal(atomic_load(&shm->deps[1].circuit.word), 0);
    assert_int_equal(atomic_load(&shm->deps[1].circuit.window[3]), 0);
    assert_int_equal(atomic_load(&shm->deps[1].rpm), 0);
    assert_int_equal(sy_shm_read(shm, SY_SHM_DEPLOYMENT, 1, &t), 0);
    assert_int_equal(t.requests[SY_OUTCOME_TIMEOUT], 0);
    assert_int_equal(t.hist[SY_HIST_LATENCY][0], 0);
    assert_int_equal(atomic_load(&shm->keys[1].generation), 3);
    assert_int_equal(atomic_load(&shm->keys[1].tpm), 0);
    assert_int_equal(atomic_load(&sy_shm_key_model(shm, 1, 1)->rpm), 0);
    assert_int_equal(sy_shm_read(shm, SY_SHM_KEY, 1, &t), 0);
    assert_int_equal(t.ctr[SY_CTR_PROMPT_TOKENS], 0);
    assert_int_equal(atomic_load(&shm->models[2].generation), 4);
    /* the neighbours keep theirs */
    assert_int_equal(atomic_load(&shm->deps[0].circuit.word), 5);
    assert_int_equal(atomic_load(&shm->deps[0].rpm), 123);
    assert_int_equal(sy_shm_read(shm, SY_SHM_DEPLOYMENT, 0, &t), 0);
    assert_int_equal(t.requests[SY_OUTCOME_TIMEOUT], 2);
    assert_int_equal(t.hist[SY_HIST_LATENCY][0], 2);
    assert_int_equal(atomic_load(&shm->keys[0].tpm), 55);
    assert_int_equal(atomic_load(&sy_shm_key_model(shm, 0, 1)->rpm), 66);
    assert_int_equal(sy_shm_read(shm, SY_SHM_KEY, 0, &t), 0);
    assert_int_equal(t.ctr[SY_CTR_PROMPT_TOKENS], 10);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

static void reaping_a_dead_worker_gives_back_its_in_flight(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {
        .max_workers = 2, .max_deployments = 4, .max_models = 2, .max_keys = 2, .event_cells = 4};
    struct sy_shm *shm = make(path, &caps);
    assert_int_equal(sy_shm_worker_start(shm, 0, 100, 1), 0);
    assert_int_equal(sy_shm_worker_start(shm, 1, 101, 1), 0);
    struct sy_shm_dep_state *d = sy_shm_dep(shm, 2);
    for (int i = 0; i < 3; i++)
        sy_shm_inflight_inc(d, sy_shm_counters(shm, 0, SY_SHM_DEPLOYMENT, 2));
    for (int i = 0; i < 2; i++)
        sy_shm_inflight_inc(d, sy_shm_counters(shm, 1, SY_SHM_DEPLOYMENT, 2));
    sy_shm_inflight_inc(NULL, sy_shm_counters(shm, 1, SY_SHM_MODEL, 1));
    sy_shm_add(sy_shm_counters(shm, 1, SY_SHM_DEPLOYMENT, 2), SY_CTR_RETRIES, 4);
    assert_int_equal(atomic_load(&d->in_flight), 5);
    assert_int_equal(sy_shm_worker_reap(shm, 1), 0); /* worker 1 died with 2 in flight */
    assert_int_equal(atomic_load(&d->in_flight), 3);
    assert_int_equal(atomic_load(&shm->workers[1].pid), 0);
    struct sy_shm_totals t;
    assert_int_equal(sy_shm_read(shm, SY_SHM_DEPLOYMENT, 2, &t), 0);
    assert_int_equal(t.ctr[SY_CTR_IN_FLIGHT], 3);
    assert_int_equal(t.ctr[SY_CTR_RETRIES], 4); /* cumulative counters stay */
    assert_int_equal(sy_shm_read(shm, SY_SHM_MODEL, 1, &t), 0);
    assert_int_equal(t.ctr[SY_CTR_IN_FLIGHT], 0);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

static void key_model_limiters_are_found_claimed_and_bounded(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {.max_workers = 1,
                               .max_deployments = 1,
                               .max_models = 64,
                               .max_keys = 64,
                               .key_model_entries = 16,
                               .event_cells = 4};
    struct sy_shm *shm = make(path, &caps);
    struct sy_shm_key_model *a = sy_shm_key_model(shm, 3, 9);
    assert_non_null(a);
    assert_ptr_equal(sy_shm_key_model(shm, 3, 9), a);
    assert_int_equal(atomic_load(&a->tag), (uint64_t)4 << 32 | 9);
    assert_true(sy_shm_key_model(shm, 9, 3) != a);
    assert_true(sy_shm_key_model(shm, 0, 0) != a);
    /* fill it: 16 entries, then no room */
    int got = 0;
    for (uint32_t k = 10; k < 40; k++)
        got += sy_shm_key_model(shm, k, 1) != NULL;
    assert_int_equal(got, 16 - 3);
    assert_null(sy_shm_key_model(shm, 50, 50));
    assert_ptr_equal(sy_shm_key_model(shm, 3, 9), a); /* still found when full */
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

static void ewma_moves_an_eighth_of_the_way(void **state)
{
    _Atomic uint64_t avg = 0;
    sy_shm_ewma(&avg, 8000);
    assert_int_equal(atomic_load(&avg), 8000);
    sy_shm_ewma(&avg, 16000);
    assert_int_equal(atomic_load(&avg), 9000);
    for (int i = 0; i < 200; i++)
        sy_shm_ewma(&avg, 1000);
    assert_true(atomic_load(&avg) >= 1000 && atomic_load(&avg) < 1010);
}

static void labels_come_from_the_lists(void **state)
{
    assert_string_equal(sy_outcome_label(SY_OUTCOME_UPSTREAM_429), "upstream_429");
    assert_string_equal(sy_outcome_label(SY_OUTCOME_MAX), "unknown");
    assert_string_equal(sy_ctr_metric(SY_CTR_COST_MICROS), "cost_micros_total");
    assert_true(strlen(sy_ctr_help(SY_CTR_RETRIES)) > 0);
    assert_string_equal(sy_event_kind_label(SY_EVENT_CIRCUIT), "circuit");
    assert_string_equal(sy_reason_label(SY_REASON_TPM), "tpm");
    assert_string_equal(sy_circuit_state_label(SY_CIRCUIT_HALF_OPEN), "half_open");
}

/* ---- the decision log ---------------------------------------------------------------------- */

static struct sy_shm *ring(const char *path, uint32_t cells)
{
    struct sy_shm_caps caps = {.max_workers = 8,
                               .max_deployments = 1,
                               .max_models = 1,
                               .max_keys = 1,
                               .event_cells = cells};
    return make(path, &caps);
}

static void one_producer_records_come_out_in_order(void **state)
{
    char *path = tmp_path();
    struct sy_shm *shm = ring(path, 8);
    struct sy_shm_event ev, got;
    assert_int_equal(sy_shm_event_pop(shm, 0, &got), -EAGAIN);
    for (int lap = 0; lap < 5; lap++) { /* several laps round the ring */
        for (uint32_t i = 0; i < 6; i++) {
            sy_shm_event_init(&ev, SY_EVENT_ATTEMPT, "req-1");
            ev.attempt = (uint32_t)lap * 100 + i;
            ev.outcome = SY_OUTCOME_UPSTREAM_5XX;
            ev.deployment_slot = 3;
            snprintf(ev.text, sizeof(ev.text), "attempt %u", ev.attempt);
            assert_int_equal(sy_shm_event_push(shm, &ev), 0);
        }
        for (uint32_t i = 0; i < 6; i++) {
            assert_int_equal(sy_shm_event_pop(shm, 0, &got), 0);
            assert_int_equal(got.attempt, (uint32_t)lap * 100 + i);
            assert_int_equal(got.kind, SY_EVENT_ATTEMPT);
            assert_int_equal(got.deployment_slot, 3);
            assert_int_equal(got.model_slot, SY_SHM_NO_SLOT);
            assert_string_equal(got.request_id, "req-1");
        }
        assert_int_equal(sy_shm_event_pop(shm, 0, &got), -EAGAIN);
    }
    assert_int_equal(sy_shm_event_dropped(shm), 0);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

static void a_full_ring_drops_and_counts(void **state)
{
    char *path = tmp_path();
    struct sy_shm *shm = ring(path, 8);
    struct sy_shm_event ev, got;
    sy_shm_event_init(&ev, SY_EVENT_RETRY, NULL);
    for (uint32_t i = 0; i < 8; i++) {
        ev.attempt = i;
        assert_int_equal(sy_shm_event_push(shm, &ev), 0);
    }
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(sy_shm_event_push(shm, &ev), -ENOBUFS);
    assert_int_equal(sy_shm_event_dropped(shm), 3);
    assert_int_equal(sy_shm_event_pop(shm, 0, &got), 0);
    assert_int_equal(got.attempt, 0);
    ev.attempt = 8;
    assert_int_equal(sy_shm_event_push(shm, &ev), 0); /* room again */
    for (uint32_t i = 1; i <= 8; i++) {
        assert_int_equal(sy_shm_event_pop(shm, 0, &got), 0);
        assert_int_equal(got.attempt, i);
    }
    assert_int_equal(sy_shm_event_pop(shm, 0, &got), -EAGAIN);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

static void a_producer_that_dies_mid_push_does_not_block_the_ring(void **state)
{
    char *path = tmp_path();
    struct sy_shm *shm = ring(path, 8);
    struct sy_shm_event ev, got;
    sy_shm_event_init(&ev, SY_EVENT_ATTEMPT, NULL);
    /* a producer claims position 0 and dies before it publishes */
    atomic_fetch_add(&shm->ring->enqueue_pos, 1);
    ev.attempt = 1;
    assert_int_equal(sy_shm_event_push(shm, &ev), 0);
    assert_int_equal(sy_shm_event_pop(shm, 1000, &got), -EAGAIN); /* starts waiting */
    assert_int_equal(sy_shm_event_pop(shm, 2999, &got), -EAGAIN);
    assert_int_equal(sy_shm_event_pop(shm, 1000 + SY_SHM_EVENT_STALL_MS, &got), 0);
    assert_int_equal(got.attempt, 1);
    assert_int_equal(sy_shm_event_skipped(shm), 1);
    assert_int_equal(sy_shm_event_pop(shm, 4000, &got), -EAGAIN);
    /* the ring goes on for whole laps */
    for (uint32_t i = 0; i < 20; i++) {
        ev.attempt = 10 + i;
        assert_int_equal(sy_shm_event_push(shm, &ev), 0);
        assert_int_equal(sy_shm_event_pop(shm, 5000, &got), 0);
        assert_int_equal(got.attempt, 10 + i);
    }
    /* a slow producer that publishes before the timeout is read, not skipped */
    uint64_t pos = atomic_fetch_add(&shm->ring->enqueue_pos, 1);
    assert_int_equal(sy_shm_event_pop(shm, 6000, &got), -EAGAIN);
    struct sy_shm_event_cell *cell = &shm->cells[pos % 8];
    cell->ev.attempt = 77;
    atomic_store(&cell->seq, pos + 1);
    assert_int_equal(sy_shm_event_pop(shm, 7000, &got), 0);
    assert_int_equal(got.attempt, 77);
    assert_int_equal(sy_shm_event_skipped(shm), 1);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

#define PRODUCERS    4
#define PER_PRODUCER 200000u
#define RING_CELLS   1024u

static void many_producers_one_consumer_every_record_once_in_order(void **state)
{
    char *path = tmp_path();
    struct sy_shm *shm = ring(path, RING_CELLS);
    /* which records each producer stored (push returned 0): a bitmap shared with the children */
    size_t bits = (size_t)PRODUCERS * PER_PRODUCER;
    _Atomic uint8_t *stored =
        mmap(NULL, bits, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(stored != MAP_FAILED);
    pid_t pids[PRODUCERS];
    for (uint32_t p = 0; p < PRODUCERS; p++) {
        pids[p] = fork();
        assert_true(pids[p] != -1);
        if (pids[p] == 0) {
            struct sy_shm_event ev;
            sy_shm_event_init(&ev, SY_EVENT_ATTEMPT, NULL);
            ev.worker = p;
            for (uint32_t i = 0; i < PER_PRODUCER; i++) {
                ev.attempt = i;
                snprintf(ev.text, sizeof(ev.text), "p%u-%u", p, i);
                if (sy_shm_event_push(shm, &ev) == 0)
                    atomic_store_explicit(&stored[p * PER_PRODUCER + i], 1, memory_order_relaxed);
                if (i % 64 == 0)
                    sched_yield(); /* give the consumer a chance, so not everything drops */
            }
            _exit(0);
        }
    }
    uint8_t *seen = calloc(bits, 1);
    int64_t last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++)
        last[p] = -1;
    uint64_t received = 0;
    int live = PRODUCERS;
    struct sy_shm_event got;
    char want[32];
    for (;;) {
        if (sy_shm_event_pop(shm, 0, &got) != 0) {
            if (live == 0)
                break; /* every producer has exited, and the ring is empty */
            int st;
            pid_t done = waitpid(-1, &st, WNOHANG);
            if (done > 0) {
                assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
                live--;
            }
            continue;
        }
        assert_true(got.worker < PRODUCERS);
        assert_true(got.attempt < PER_PRODUCER);
        assert_true((int64_t)got.attempt > last[got.worker]); /* in order per producer */
        last[got.worker] = got.attempt;
        size_t idx = (size_t)got.worker * PER_PRODUCER + got.attempt;
        assert_int_equal(seen[idx], 0); /* once */
        seen[idx] = 1;
        snprintf(want, sizeof(want), "p%u-%u", got.worker, got.attempt);
        assert_string_equal(got.text, want); /* not torn */
        received++;
    }
    uint64_t accepted = 0;
    for (size_t i = 0; i < bits; i++) {
        assert_int_equal(seen[i], atomic_load(&stored[i])); /* exactly the stored ones */
        accepted += seen[i];
    }
    assert_int_equal(received, accepted);
    assert_int_equal(received + sy_shm_event_dropped(shm), bits);
    print_message("ring: %llu records received, %llu dropped (ring of %u)\n",
                  (unsigned long long)received, (unsigned long long)sy_shm_event_dropped(shm),
                  RING_CELLS);
    free(seen);
    munmap((void *)stored, bits);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

/* ---- cost ---------------------------------------------------------------------------------- */

/* ---- usage per combination ----------------------------------------------------------------- */

static void combination_cells_are_found_claimed_and_overflow(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {.max_workers = 1,
                               .max_deployments = 4,
                               .max_models = 4,
                               .max_keys = 64,
                               .event_cells = 4,
                               .combo_cells = 50};
    struct sy_shm *shm = make(path, &caps);
    assert_int_equal(shm->caps.combo_cells, 64); /* a power of two */

    struct sy_shm_combo *a = sy_shm_combo(shm, &(struct sy_shm_combo_ids){1, 2, 3, 0, 0, 1003});
    assert_non_null(a);
    assert_ptr_equal(sy_shm_combo(shm, &(struct sy_shm_combo_ids){1, 2, 3, 0, 0, 1003}), a);
    /* the same slots for another key id (a reused key slot) is another combination */
    struct sy_shm_combo *b = sy_shm_combo(shm, &(struct sy_shm_combo_ids){1, 2, 3, 0, 0, 2003});
    /* and so is a reused deployment or model slot (another id), even for the same key */
    struct sy_shm_combo *dep2 = sy_shm_combo(shm, &(struct sy_shm_combo_ids){1, 2, 3, 71, 0, 1003});
    struct sy_shm_combo *mod2 = sy_shm_combo(shm, &(struct sy_shm_combo_ids){1, 2, 3, 0, 72, 1003});
    assert_true(dep2 && mod2 && dep2 != a && mod2 != a && dep2 != mod2 && dep2 != b);
    assert_ptr_equal(sy_shm_combo(shm, &(struct sy_shm_combo_ids){1, 2, 3, 71, 0, 1003}), dep2);
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    /* a part may be missing; all three missing is no combination */
    struct sy_shm_combo *nokey =
        sy_shm_combo(shm, &(struct sy_shm_combo_ids){SY_SHM_NO_SLOT, 2, SY_SHM_NO_SLOT, 0, 0, 0});
    assert_non_null(nokey);
    assert_ptr_not_equal(nokey, a);
    assert_null(sy_shm_combo(
        shm, &(struct sy_shm_combo_ids){SY_SHM_NO_SLOT, SY_SHM_NO_SLOT, SY_SHM_NO_SLOT, 0, 0, 0}));

    sy_shm_combo_count(a, SY_OUTCOME_SUCCESS, 10, 5, 700, 1500);
    sy_shm_combo_count(a, SY_OUTCOME_UPSTREAM_5XX, 0, 0, 0, 20000);
    sy_shm_combo_count(b, SY_OUTCOME_RATE_LIMITED, 0, 0, 0, 10);
    sy_shm_combo_count(NULL, SY_OUTCOME_SUCCESS, 1, 1, 1, 1); /* nothing, no crash */

    /* the reader decodes each cell back to its slots and key id, read-only */
    struct sy_shm *ro = NULL;
    char *err = NULL;
    assert_int_equal(sy_shm_attach(path, false, &ro, &err), 0);
    assert_null(sy_shm_combo(ro, &(struct sy_shm_combo_ids){1, 2, 3, 0, 0, 1003}));
    unsigned found = 0;
    for (uint32_t i = 0; i < ro->caps.combo_cells; i++) {
        struct sy_shm_combo_totals t;
        if (!sy_shm_combo_peek(ro, i, &t))
            continue;
        found++;
        assert_false(t.overflow);
        if (t.deployment_id == 71 || t.model_id == 72) {
            assert_int_equal(t.key_id, 1003);
            assert_int_equal(t.deployment_slot, 1);
            assert_int_equal(t.deployment_id + t.model_id, t.deployment_id ? 71 : 72);
            assert_int_equal(t.ctr[SY_COMBO_REQUESTS], 0);
        } else if (t.key_id == 1003) {
            assert_int_equal(t.deployment_slot, 1);
            assert_int_equal(t.model_slot, 2);
            assert_int_equal(t.key_slot, 3);
            assert_int_equal(t.ctr[SY_COMBO_REQUESTS], 2);
            assert_int_equal(t.ctr[SY_COMBO_SUCCESSES], 1);
            assert_int_equal(t.ctr[SY_COMBO_PROMPT_TOKENS], 10);
            assert_int_equal(t.ctr[SY_COMBO_COMPLETION_TOKENS], 5);
            assert_int_equal(t.ctr[SY_COMBO_COST_MICROS], 700);
            assert_int_equal(t.hist_sum_us, 21500);
            assert_int_equal(t.hist[sy_hist_bucket(1500)] + t.hist[sy_hist_bucket(20000)], 2);
        } else if (t.key_id == 2003) {
            assert_int_equal(t.ctr[SY_COMBO_RATE_LIMITED], 1);
        } else {
            assert_int_equal(t.key_id, 0);
            assert_int_equal(t.deployment_slot, SY_SHM_NO_SLOT);
            assert_int_equal(t.key_slot, SY_SHM_NO_SLOT);
            assert_int_equal(t.model_slot, 2);
        }
    }
    assert_int_equal(found, 5);
    struct sy_shm_combo_totals t;
    assert_false(sy_shm_combo_peek(ro, ro->caps.combo_cells, &t)); /* empty overflow */
    assert_false(sy_shm_combo_peek(ro, ro->caps.combo_cells + 1, &t));

    /* fill the table: 64 cells, more combinations; the rest go to the overflow cell, counted */
    struct sy_shm_combo *over = &shm->combos[shm->caps.combo_cells];
    unsigned overflowed = 0;
    for (uint32_t k = 0; k < 64; k++)
        for (uint32_t d = 0; d < 4; d++) {
            struct sy_shm_combo *e =
                sy_shm_combo(shm, &(struct sy_shm_combo_ids){d, 0, k, 0, 0, 5000 + k});
            assert_non_null(e);
            sy_shm_combo_count(e, SY_OUTCOME_SUCCESS, 1, 0, 0, 1);
            overflowed += e == over;
        }
    assert_true(overflowed >= 256 + 5 - 64);
    assert_int_equal(sy_shm_combo_overflows(ro), overflowed);
    assert_true(sy_shm_combo_peek(ro, ro->caps.combo_cells, &t));
    assert_true(t.overflow);
    assert_int_equal(t.ctr[SY_COMBO_REQUESTS], overflowed);
    /* a slot beyond capacity counts as overflow too, never out of bounds */
    assert_ptr_equal(sy_shm_combo(shm, &(struct sy_shm_combo_ids){99, 0, 0, 0, 0, 1}), over);
    sy_shm_detach(ro);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

/* Processes racing to claim and count the same few combinations: every request is counted once,
 * in a cell of its own combination. */
static void processes_racing_on_combinations_count_every_request_once(void **state)
{
    enum { PROCS_C = 4, COMBOS = 6, PER = 100000 };
    char *path = tmp_path();
    struct sy_shm_caps caps = {.max_workers = PROCS_C,
                               .max_deployments = 4,
                               .max_models = 4,
                               .max_keys = 8,
                               .event_cells = 4,
                               .combo_cells = 64};
    struct sy_shm *shm = make(path, &caps);
    pid_t pids[PROCS_C];
    for (int i = 0; i < PROCS_C; i++) {
        pids[i] = fork();
        assert_true(pids[i] != -1);
        if (pids[i] == 0) {
            for (uint32_t n = 0; n < PER; n++) {
                uint32_t c = (n + (uint32_t)i) % COMBOS;
                struct sy_shm_combo *e =
                    sy_shm_combo(shm, &(struct sy_shm_combo_ids){c % 2, c % 3, c, 0, 0, 100 + c});
                CHILD_REQUIRE(e && e != &shm->combos[shm->caps.combo_cells]);
                sy_shm_combo_count(e, SY_OUTCOME_SUCCESS, c, 1, 2, 1000);
            }
            _exit(0);
        }
    }
    for (int i = 0; i < PROCS_C; i++)
        reap_ok(pids[i]);
    uint64_t req[COMBOS] = {0}, pt[COMBOS] = {0};
    for (uint32_t i = 0; i < shm->caps.combo_cells; i++) {
        struct sy_shm_combo_totals t;
        if (!sy_shm_combo_peek(shm, i, &t))
            continue;
        uint32_t c = t.key_slot;
        assert_true(c < COMBOS);
        assert_int_equal(t.key_id, 100 + c);
        assert_int_equal(t.deployment_slot, c % 2);
        assert_int_equal(t.model_slot, c % 3);
        req[c] += t.ctr[SY_COMBO_REQUESTS];
        pt[c] += t.ctr[SY_COMBO_PROMPT_TOKENS];
    }
    uint64_t total = 0;
    for (uint32_t c = 0; c < COMBOS; c++) {
        assert_int_equal(pt[c], req[c] * c);
        total += req[c];
    }
    assert_int_equal(total, (uint64_t)PROCS_C * PER);
    assert_int_equal(sy_shm_combo_overflows(shm), 0);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

static void cost_of_a_counter_bump(void **state)
{
    char *path = tmp_path();
    struct sy_shm_caps caps = {
        .max_workers = 1, .max_deployments = 4, .max_models = 1, .max_keys = 1, .event_cells = 4};
    struct sy_shm *shm = make(path, &caps);
    struct sy_shm_counters *c = sy_shm_counters(shm, 0, SY_SHM_DEPLOYMENT, 1);
    struct sy_shm_hist *h = sy_shm_hist(c, SY_SHM_DEPLOYMENT, SY_HIST_LATENCY);
    const uint64_t n = 10000000;
    uint64_t t0 = sy_now_ns();
    for (uint64_t i = 0; i < n; i++)
        sy_shm_add(c, SY_CTR_PROMPT_TOKENS, i);
    uint64_t t1 = sy_now_ns();
    for (uint64_t i = 0; i < n; i++)
        sy_shm_observe(h, i);
    uint64_t t2 = sy_now_ns();
    struct sy_shm_combo *e = NULL;
    for (uint64_t i = 0; i < n; i++) {
        e = sy_shm_combo(shm, &(struct sy_shm_combo_ids){1, 0, 0, 0, 0, 42});
        sy_shm_combo_count(e, SY_OUTCOME_SUCCESS, 10, 5, 700, i & 0xffff);
    }
    uint64_t t3 = sy_now_ns();
    print_message("counter bump: %.2f ns; histogram observe: %.2f ns; combination lookup and "
                  "count: %.2f ns (over %llu)\n",
                  (double)(t1 - t0) / (double)n, (double)(t2 - t1) / (double)n,
                  (double)(t3 - t2) / (double)n, (unsigned long long)n);
    assert_int_equal(atomic_load(&e->ctr[SY_COMBO_REQUESTS]), n);
    assert_int_equal(atomic_load(&c->ctr[SY_CTR_PROMPT_TOKENS]), n * (n - 1) / 2);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(layout_blocks_are_aligned_ordered_and_sized),
        cmocka_unit_test(create_then_attach_sees_the_same_segment),
        cmocka_unit_test(attach_refuses_what_is_not_this_layout),
        cmocka_unit_test(a_forked_process_attaches_and_sees_the_parents_writes),
        cmocka_unit_test(slots_beyond_capacity_and_read_only_attaches_get_null),
        cmocka_unit_test(four_processes_bump_their_shards_and_the_sums_are_exact),
        cmocka_unit_test(readers_skip_shards_no_worker_used),
        cmocka_unit_test(histogram_buckets_follow_the_le_rule),
        cmocka_unit_test(reset_gives_a_slot_to_a_new_owner_and_nothing_else),
        cmocka_unit_test(reaping_a_dead_worker_gives_back_its_in_flight),
        cmocka_unit_test(key_model_limiters_are_found_claimed_and_bounded),
        cmocka_unit_test(ewma_moves_an_eighth_of_the_way),
        cmocka_unit_test(labels_come_from_the_lists),
        cmocka_unit_test(one_producer_records_come_out_in_order),
        cmocka_unit_test(a_full_ring_drops_and_counts),
        cmocka_unit_test(a_producer_that_dies_mid_push_does_not_block_the_ring),
        cmocka_unit_test(many_producers_one_consumer_every_record_once_in_order),
        cmocka_unit_test(combination_cells_are_found_claimed_and_overflow),
        cmocka_unit_test(processes_racing_on_combinations_count_every_request_once),
        cmocka_unit_test(cost_of_a_counter_bump),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
