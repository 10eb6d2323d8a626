/* SPDX-License-Identifier: Apache-2.0 */
/* The request-log ring of the shared memory (sy_shm_reqlog_push/pop in common/src/shm.c):
 * records of one cell and of many come out whole and in order across laps; a full ring and a
 * record larger than the ring are dropped and counted; a producer that dies half-way (before it
 * publishes anything, or after publishing the tail of its record) does not block the ring; four
 * processes pushing records of every size at once lose none they were told were stored. */
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

#include "sy/shm.h"
#include "sy/util.h"

static char *tmp_path(void)
{
    static int n;
    char *p = NULL;
    assert_true(asprintf(&p, "/dev/shm/sy-test-reqlog-%d-%d", (int)getpid(), n++) > 0);
    return p;
}

static struct sy_shm *ring(const char *path, uint32_t cells)
{
    struct sy_shm_caps caps = {.max_workers = 8,
                               .max_deployments = 1,
                               .max_models = 1,
                               .max_keys = 1,
                               .event_cells = 2,
                               .combo_cells = 1,
                               .reqlog_cells = cells};
    struct sy_shm *shm = NULL;
    char *err = NULL;
    if (sy_shm_create(path, &caps, &shm, &err) != 0)
        fail_msg("create: %s", err ? err : "?");
    unlink(path); /* mapped already (and inherited by forks): a failing test leaves no file */
    return shm;
}

/* The byte <i> of a body of record <id>: a pattern a torn or shifted record would break. */
static char pattern(uint64_t id, size_t i, int side)
{
    return (char)('a' + (id * 7 + i * 13 + (size_t)side * 5) % 26);
}

/* Push record <id> with bodies of <req_len> and <resp_len> bytes. */
static int push(struct sy_shm *shm, uint64_t id, uint32_t worker, size_t req_len, size_t resp_len)
{
    static char req[SY_REQLOG_BODY_MAX], resp[SY_REQLOG_BODY_MAX];
    struct sy_reqlog_head h = {.ts_ms = id,
                               .worker = worker,
                               .req_len = (uint32_t)req_len,
                               .resp_len = (uint32_t)resp_len,
                               .flags = SY_REQLOG_BODIES};
    snprintf(h.request_id, sizeof(h.request_id), "req-%llu", (unsigned long long)id);
    for (size_t i = 0; i < req_len; i++)
        req[i] = pattern(id, i, 0);
    for (size_t i = 0; i < resp_len; i++)
        resp[i] = pattern(id, i, 1);
    return sy_shm_reqlog_push(shm, &h, req, resp);
}

/* Check that <rec>/<len> is a whole record pushed by push(); returns its id. */
static uint64_t check(const char *rec, size_t len, uint32_t *worker)
{
    struct sy_reqlog_head h;
    assert_true(len >= sizeof(h));
    memcpy(&h, rec, sizeof(h));
    assert_int_equal(len, sizeof(h) + h.req_len + h.resp_len);
    char want[SY_EVENT_REQUEST_ID_LEN];
    snprintf(want, sizeof(want), "req-%llu", (unsigned long long)h.ts_ms);
    assert_string_equal(h.request_id, want);
    const char *req = rec + sizeof(h), *resp = req + h.req_len;
    for (size_t i = 0; i < h.req_len; i++)
        if (req[i] != pattern(h.ts_ms, i, 0))
            fail_msg("record %llu: request byte %zu torn", (unsigned long long)h.ts_ms, i);
    for (size_t i = 0; i < h.resp_len; i++)
        if (resp[i] != pattern(h.ts_ms, i, 1))
            fail_msg("record %llu: response byte %zu torn", (unsigned long long)h.ts_ms, i);
    if (worker)
        *worker = h.worker;
    return h.ts_ms;
}

static char out[SY_SHM_REQLOG_RECORD_MAX];

static void records_of_one_and_many_cells_come_out_whole_in_order_across_laps(void **state)
{
    char *path = tmp_path();
    struct sy_shm *shm = ring(path, 16);
    size_t len;
    assert_int_equal(sy_shm_reqlog_pop(shm, 1, out, sizeof(out), &len), -EAGAIN);
    /* sizes that end exactly on a cell, just before, just after, and several cells */
    size_t cell = SY_REQLOG_CELL_DATA - sizeof(struct sy_reqlog_head);
    size_t sizes[][2] = {{0, 0},    {cell, 0},    {cell + 1, 0}, {cell - 1, 1},
                         {100, 99}, {3000, 4000}, {0, 7000},     {SY_REQLOG_CELL_DATA, 1}};
    uint64_t id = 1;
    for (int lap = 0; lap < 20; lap++) {
        /* two records in the ring at once, so that records wrap around its end */
        for (size_t i = 0; i < SY_ARRAY_LEN(sizes); i++) {
            assert_int_equal(push(shm, id, 0, sizes[i][0], sizes[i][1]), 0);
            assert_int_equal(push(shm, id + 1, 0, sizes[i][1], sizes[i][0]), 0);
            assert_int_equal(sy_shm_reqlog_pop(shm, 1, out, sizeof(out), &len), 0);
            assert_int_equal(check(out, len, NULL), id);
            assert_int_equal(sy_shm_reqlog_pop(shm, 1, out, sizeof(out), &len), 0);
            assert_int_equal(check(out, len, NULL), id + 1);
            id += 2;
        }
    }
    assert_int_equal(sy_shm_reqlog_pop(shm, 1, out, sizeof(out), &len), -EAGAIN);
    assert_int_equal(sy_shm_reqlog_dropped(shm), 0);
    assert_int_equal(atomic_load(&shm->reqlog->pushed), id - 1);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

static void a_full_ring_and_an_oversized_record_are_dropped_and_counted(void **state)
{
    char *path = tmp_path();
    struct sy_shm *shm = ring(path, 8);
    size_t len;
    /* 3 cells each: two fit in 8 cells, the third does not */
    assert_int_equal(push(shm, 1, 0, 2000, 500), 0);
    assert_int_equal(push(shm, 2, 0, 2000, 500), 0);
    assert_int_equal(push(shm, 3, 0, 2000, 500), -ENOBUFS);
    /* one cell still fits */
    assert_int_equal(push(shm, 4, 0, 10, 10), 0);
    assert_int_equal(push(shm, 5, 0, 10, 10), 0);
    assert_int_equal(push(shm, 6, 0, 10, 10), -ENOBUFS);
    /* larger than the whole ring: never fits */
    assert_int_equal(push(shm, 7, 0, 9000, 0), -EMSGSIZE);
    assert_int_equal(sy_shm_reqlog_dropped(shm), 3);
    uint64_t want[] = {1, 2, 4, 5};
    for (size_t i = 0; i < SY_ARRAY_LEN(want); i++) {
        assert_int_equal(sy_shm_reqlog_pop(shm, 1, out, sizeof(out), &len), 0);
        assert_int_equal(check(out, len, NULL), want[i]);
    }
    assert_int_equal(sy_shm_reqlog_pop(shm, 1, out, sizeof(out), &len), -EAGAIN);
    /* room again */
    assert_int_equal(push(shm, 8, 0, 2000, 2000), 0);
    assert_int_equal(sy_shm_reqlog_pop(shm, 1, out, sizeof(out), &len), 0);
    assert_int_equal(check(out, len, NULL), 8);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

static void a_producer_that_dies_half_way_does_not_block_the_ring(void **state)
{
    char *path = tmp_path();
    struct sy_shm *shm = ring(path, 16);
    size_t len;
    /* a producer claims three cells and dies before it publishes any */
    atomic_fetch_add(&shm->reqlog->enqueue_pos, 3);
    assert_int_equal(push(shm, 1, 0, 100, 100), 0);
    assert_int_equal(sy_shm_reqlog_pop(shm, 1000, out, sizeof(out), &len), -EAGAIN);
    assert_int_equal(sy_shm_reqlog_pop(shm, 2999, out, sizeof(out), &len), -EAGAIN);
    /* after the stall timeout its three cells are skipped in one go, and the next is read */
    assert_int_equal(sy_shm_reqlog_pop(shm, 1000 + SY_SHM_EVENT_STALL_MS, out, sizeof(out), &len),
                     0);
    assert_int_equal(check(out, len, NULL), 1);
    assert_int_equal(atomic_load(&shm->reqlog->skipped), 3);

    /* one that published the tail of its record (last to first) but not its first cell */
    uint64_t pos = atomic_fetch_add(&shm->reqlog->enqueue_pos, 3);
    for (uint64_t i = 1; i < 3; i++) {
        struct sy_shm_reqlog_cell *c = &shm->reqlog_cells[(pos + i) % 16];
        c->first = 0;
        c->count = 0;
        c->len = 10;
        atomic_store(&c->seq, pos + i + 1);
    }
    assert_int_equal(push(shm, 2, 0, 3000, 0), 0);
    assert_int_equal(sy_shm_reqlog_pop(shm, 10000, out, sizeof(out), &len), -EAGAIN);
    assert_int_equal(sy_shm_reqlog_pop(shm, 10000 + SY_SHM_EVENT_STALL_MS, out, sizeof(out), &len),
                     0);
    assert_int_equal(check(out, len, NULL), 2);
    assert_int_equal(atomic_load(&shm->reqlog->skipped), 6);

    /* a slow producer that publishes before the timeout is read, not skipped */
    pos = atomic_load(&shm->reqlog->enqueue_pos);
    atomic_fetch_add(&shm->reqlog->enqueue_pos, 1);
    assert_int_equal(sy_shm_reqlog_pop(shm, 20000, out, sizeof(out), &len), -EAGAIN);
    struct sy_shm_reqlog_cell *c = &shm->reqlog_cells[pos % 16];
    struct sy_reqlog_head h = {.ts_ms = 77};
    snprintf(h.request_id, sizeof(h.request_id), "req-77");
    memcpy(c->data, &h, sizeof(h));
    c->first = 1;
    c->count = 1;
    c->len = sizeof(h);
    atomic_store(&c->seq, pos + 1);
    assert_int_equal(sy_shm_reqlog_pop(shm, 21000, out, sizeof(out), &len), 0);
    assert_int_equal(check(out, len, NULL), 77);
    assert_int_equal(atomic_load(&shm->reqlog->skipped), 6);
    /* and on for laps */
    for (uint64_t i = 0; i < 40; i++) {
        assert_int_equal(push(shm, 100 + i, 0, i * 50, i * 30), 0);
        assert_int_equal(sy_shm_reqlog_pop(shm, 30000, out, sizeof(out), &len), 0);
        assert_int_equal(check(out, len, NULL), 100 + i);
    }
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

#define PRODUCERS    4
#define PER_PRODUCER 20000u

static void many_producers_lose_no_record_they_stored(void **state)
{
    char *path = tmp_path();
    struct sy_shm *shm = ring(path, 256);
    size_t bits = (size_t)PRODUCERS * PER_PRODUCER;
    _Atomic uint8_t *stored =
        mmap(NULL, bits, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(stored != MAP_FAILED);
    pid_t pids[PRODUCERS];
    for (uint32_t p = 0; p < PRODUCERS; p++) {
        pids[p] = fork();
        assert_true(pids[p] != -1);
        if (pids[p] == 0) {
            for (uint64_t n = 0; n < PER_PRODUCER; n++) {
                uint64_t id = (uint64_t)p * PER_PRODUCER + n;
                /* mostly metadata, some with bodies of a few cells */
                size_t req = n % 5 == 0 ? (n * 37) % 5000 : 0, resp = n % 7 == 0 ? 1500 : 0;
                if (push(shm, id, p, req, resp) == 0)
                    atomic_store(&stored[id], 1);
            }
            _exit(0);
        }
    }
    /* what the consumer read; compared with what the producers were told they stored once they
     * are done (a producer marks a record stored only after its push returned) */
    uint8_t *popped = calloc(bits, 1);
    assert_non_null(popped);
    uint64_t got = 0, last[PRODUCERS];
    bool any[PRODUCERS] = {false};
    size_t len;
    int live = PRODUCERS;
    while (live > 0 || sy_shm_reqlog_pop(shm, 1, out, sizeof(out), &len) == 0) {
        if (live > 0) {
            int st;
            pid_t done = waitpid(-1, &st, WNOHANG);
            if (done > 0) {
                assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
                live--;
            }
            if (sy_shm_reqlog_pop(shm, 1, out, sizeof(out), &len) != 0)
                continue;
        }
        uint32_t w;
        uint64_t id = check(out, len, &w);
        assert_true(w < PRODUCERS);
        /* each producer's records in its order */
        if (any[w])
            assert_true(id > last[w]);
        any[w] = true;
        last[w] = id;
        assert_int_equal(popped[id], 0); /* read once */
        popped[id] = 1;
        got++;
    }
    uint64_t stored_n = 0;
    for (size_t i = 0; i < bits; i++) {
        /* read if and only if its push said stored */
        assert_int_equal(popped[i], atomic_load(&stored[i]));
        stored_n += popped[i];
    }
    free(popped);
    assert_int_equal(got, stored_n);
    assert_int_equal(got + sy_shm_reqlog_dropped(shm), (uint64_t)PRODUCERS * PER_PRODUCER);
    print_message("request-log ring: %llu records received, %llu dropped (256 cells)\n",
                  (unsigned long long)got, (unsigned long long)sy_shm_reqlog_dropped(shm));
    munmap((void *)stored, bits);
    sy_shm_detach(shm);
    unlink(path);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(records_of_one_and_many_cells_come_out_whole_in_order_across_laps),
        cmocka_unit_test(a_full_ring_and_an_oversized_record_are_dropped_and_counted),
        cmocka_unit_test(a_producer_that_dies_half_way_does_not_block_the_ring),
        cmocka_unit_test(many_producers_lose_no_record_they_stored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
