/* SPDX-License-Identifier: Apache-2.0 */
/* The node-wide shared-memory segment (layout in sy/shm-t.h).
 *
 * The decision log is Dmitry Vyukov's bounded MPMC queue used with one consumer: each cell
 * carries a sequence number; a producer claims position p by CAS on enqueue_pos when cell
 * p % n has seq == p, writes the record, and publishes it by moving seq to p + 1; the
 * consumer reads the cell at dequeue_pos d when seq == d + 1 and frees it by storing
 * seq = d + n, which is exactly what the producer of position d + n waits for. A producer that
 * finds seq < p knows the ring is full and drops its record (counted) instead of waiting.
 *
 * We chose it over one SPSC ring per worker because the old and the new worker of a slot run
 * side by side during a SIGHUP replacement: two producers on one ring, which an SPSC ring
 * cannot take. It also hands the consumer one global order (per producer: its own order).
 *
 * One change to Vyukov's scheme: the producer publishes with a CAS (seq: p -> p + 1), not a
 * store, so that the consumer can give up on a cell whose producer died between claim and
 * publish (CAS seq: p -> p + n) without racing a producer that was merely slow: exactly one of
 * the two CASes wins, and the loser's record is counted as dropped. A producer stopped for
 * longer than the stall timeout that then resumes may still scribble over the cell's next
 * record before its CAS fails; that needs a process frozen for seconds mid-copy, and costs
 * at worst one garbled record, never the ring. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sy/shm.h"
#include "sy/util.h"

/* ---- errors -------------------------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int say(char **err, int rc, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(err, fmt, ap) == -1)
            *err = NULL;
        va_end(ap);
    }
    return rc;
}

/* ---- layout -------------------------------------------------------------------------------- */

static uint64_t align64(uint64_t n)
{
    return (n + 63) & ~(uint64_t)63;
}

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

int sy_shm_layout(struct sy_shm_caps *caps, struct sy_shm_header *h, char **err)
{
    if (!caps->max_workers)
        caps->max_workers = SY_SHM_DEFAULT_WORKERS;
    if (!caps->max_deployments)
        caps->max_deployments = SY_SHM_DEFAULT_DEPLOYMENTS;
    if (!caps->max_models)
        caps->max_models = SY_SHM_DEFAULT_MODELS;
    if (!caps->max_keys)
        caps->max_keys = SY_SHM_DEFAULT_KEYS;
    if (!caps->key_model_entries)
        caps->key_model_entries = SY_SHM_DEFAULT_KEY_MODELS;
    if (!caps->event_cells)
        caps->event_cells = SY_SHM_DEFAULT_EVENTS;
    if (!caps->max_budgets)
        caps->max_budgets = SY_SHM_DEFAULT_BUDGETS;
    /* Bounds that keep every size below far from overflow and the segment sane. */
    if (caps->max_workers > 4096 || caps->max_deployments > (1u << 20) ||
        caps->max_models > (1u << 20) || caps->max_keys > (1u << 22) ||
        caps->key_model_entries > (1u << 24) || caps->event_cells > (1u << 24) ||
        caps->max_budgets > (1u << 20))
        return say(err, -EINVAL,
                   "shared memory capacities too large: workers=%u deployments=%u models=%u "
                   "keys=%u key_models=%u events=%u budgets=%u (at most 4096, 2^20, 2^20, 2^22, "
                   "2^24, 2^24, 2^20)",
                   caps->max_workers, caps->max_deployments, caps->max_models, caps->max_keys,
                   caps->key_model_entries, caps->event_cells, caps->max_budgets);
    caps->key_model_entries = pow2_at_least(caps->key_model_entries);
    caps->event_cells = pow2_at_least(caps->event_cells < 2 ? 2 : caps->event_cells);

    memset(h, 0, sizeof(*h));
    h->version = SY_SHM_VERSION;
    h->header_size = sizeof(struct sy_shm_header);
    h->caps = *caps;
    uint64_t off = align64(sizeof(struct sy_shm_header));
    h->off_workers = off;
    off = align64(off + (uint64_t)caps->max_workers * sizeof(struct sy_shm_worker));
    h->off_deployments = off;
    off = align64(off + (uint64_t)caps->max_deployments * sizeof(struct sy_shm_dep_state));
    h->off_models = off;
    off = align64(off + (uint64_t)caps->max_models * sizeof(struct sy_shm_model_state));
    h->off_keys = off;
    off = align64(off + (uint64_t)caps->max_keys * sizeof(struct sy_shm_key_state));
    h->off_key_models = off;
    off = align64(off + (uint64_t)caps->key_model_entries * sizeof(struct sy_shm_key_model));
    h->off_events = off;
    off = align64(off + sizeof(struct sy_shm_event_ring) +
                  (uint64_t)caps->event_cells * sizeof(struct sy_shm_event_cell));
    h->off_shards = off;
    h->shard_off_models = (uint64_t)caps->max_deployments * sizeof(struct sy_shm_obj_counters);
    h->shard_off_keys =
        h->shard_off_models + (uint64_t)caps->max_models * sizeof(struct sy_shm_obj_counters);
    h->shard_stride =
        align64(h->shard_off_keys + (uint64_t)caps->max_keys * sizeof(struct sy_shm_key_counters));
    off += (uint64_t)caps->max_workers * h->shard_stride;
    h->off_budgets = off;
    off = align64(off + (uint64_t)caps->max_budgets * sizeof(struct sy_shm_budget));
    h->size = (off + 4095) & ~(uint64_t)4095;
    return 0;
}

/* Point the handle's block pointers at the mapping, from header <h>. */
static void bind(struct sy_shm *shm, const struct sy_shm_header *h)
{
    shm->hdr = (struct sy_shm_header *)(void *)shm->base;
    shm->caps = h->caps;
    shm->workers = (struct sy_shm_worker *)(void *)(shm->base + h->off_workers);
    shm->deps = (struct sy_shm_dep_state *)(void *)(shm->base + h->off_deployments);
    shm->models = (struct sy_shm_model_state *)(void *)(shm->base + h->off_models);
    shm->keys = (struct sy_shm_key_state *)(void *)(shm->base + h->off_keys);
    shm->key_models = (struct sy_shm_key_model *)(void *)(shm->base + h->off_key_models);
    shm->ring = (struct sy_shm_event_ring *)(void *)(shm->base + h->off_events);
    shm->cells = (struct sy_shm_event_cell *)(void *)(shm->base + h->off_events +
                                                      sizeof(struct sy_shm_event_ring));
    shm->shards = shm->base + h->off_shards;
    shm->shard_stride = h->shard_stride;
    shm->shard_off_models = h->shard_off_models;
    shm->shard_off_keys = h->shard_off_keys;
    shm->budgets = (struct sy_shm_budget *)(void *)(shm->base + h->off_budgets);
}

/* ---- create, attach, detach ---------------------------------------------------------------- */

static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int sy_shm_create(const char *path, const struct sy_shm_caps *caps, struct sy_shm **out, char **err)
{
    struct sy_shm_caps c = caps ? *caps : (struct sy_shm_caps){0};
    struct sy_shm_header h;
    struct sy_shm *shm = NULL;
    char *tmp = NULL;
    int fd = -1, rc;

    *out = NULL;
    if (err)
        *err = NULL;
    rc = sy_shm_layout(&c, &h, err);
    if (rc < 0)
        return rc;
    if (asprintf(&tmp, "%s.%ld.tmp", path, (long)getpid()) == -1) {
        tmp = NULL;
        rc = say(err, -ENOMEM, "shared memory %s: out of memory", path);
        goto fail;
    }
    fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1) {
        rc = -errno;
        say(err, rc, "shared memory %s: cannot create %s: %s", path, tmp, strerror(errno));
        goto fail;
    }
    if (ftruncate(fd, (off_t)h.size) == -1) {
        rc = -errno;
        say(err, rc, "shared memory %s: cannot size it to %llu bytes: %s", path,
            (unsigned long long)h.size, strerror(errno));
        goto fail;
    }
    /* Allocate every page now, so that a /dev/shm too small for the segment fails here with a
     * message instead of with SIGBUS in a worker later. Not every file system can. */
    int fa = posix_fallocate(fd, 0, (off_t)h.size);
    if (fa != 0 && fa != EOPNOTSUPP && fa != EINVAL) {
        rc = -fa;
        say(err, rc, "shared memory %s: cannot allocate %llu bytes: %s (is /dev/shm too small?)",
            path, (unsigned long long)h.size, strerror(fa));
        goto fail;
    }
    shm = calloc(1, sizeof(*shm));
    if (!shm || !(shm->path = strdup(path))) {
        rc = say(err, -ENOMEM, "shared memory %s: out of memory", path);
        goto fail;
    }
    void *base = mmap(NULL, h.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = -errno;
        say(err, rc, "shared memory %s: mmap of %llu bytes: %s", path, (unsigned long long)h.size,
            strerror(errno));
        goto fail;
    }
    shm->base = base;
    shm->size = h.size;
    shm->writable = true;

    /* The file is zero-filled: every counter, circuit (closed) and limiter (empty) is ready.
     * Only the ring's sequence numbers need a start value: cell i waits for position i. */
    h.generation = wall_ns() ^ ((uint64_t)getpid() << 40);
    h.created_ms = wall_ns() / 1000000u;
    struct sy_shm_header *hdr = (struct sy_shm_header *)base;
    memcpy((char *)hdr + sizeof(hdr->magic), (char *)&h + sizeof(h.magic),
           sizeof(h) - sizeof(h.magic));
    bind(shm, &h);
    for (uint32_t i = 0; i < c.event_cells; i++)
        atomic_init(&shm->cells[i].seq, i);
    atomic_store_explicit(&hdr->magic, SY_SHM_MAGIC, memory_order_release);

    if (rename(tmp, path) == -1) {
        rc = -errno;
        say(err, rc, "shared memory %s: cannot rename %s into place: %s", path, tmp,
            strerror(errno));
        goto fail;
    }
    close(fd);
    free(tmp);
    *out = shm;
    return 0;
fail:
    if (shm && shm->base)
        munmap(shm->base, shm->size);
    if (shm)
        free(shm->path);
    free(shm);
    if (fd != -1) {
        close(fd);
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

int sy_shm_attach(const char *path, bool writable, struct sy_shm **out, char **err)
{
    struct sy_shm *shm = NULL;
    void *base = MAP_FAILED;
    size_t size = 0;
    int fd, rc;
    struct stat st;

    *out = NULL;
    if (err)
        *err = NULL;
    fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd == -1) {
        rc = -errno;
        return say(err, rc, "shared memory %s: cannot open: %s", path, strerror(errno));
    }
    if (fstat(fd, &st) == -1) {
        rc = -errno;
        say(err, rc, "shared memory %s: fstat: %s", path, strerror(errno));
        goto fail;
    }
    if ((uint64_t)st.st_size < sizeof(struct sy_shm_header)) {
        rc = say(err, -EPROTO, "shared memory %s: %lld bytes, too small to be a Switchyard segment",
                 path, (long long)st.st_size);
        goto fail;
    }
    size = (size_t)st.st_size;
    base = mmap(NULL, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = -errno;
        say(err, rc, "shared memory %s: mmap: %s", path, strerror(errno));
        goto fail;
    }
    const struct sy_shm_header *hdr = base;
    uint64_t magic = atomic_load_explicit(&hdr->magic, memory_order_acquire);
    if (magic != SY_SHM_MAGIC) {
        rc = say(err, -EPROTO,
                 "shared memory %s: not a Switchyard segment (magic %016llx, expected %016llx)",
                 path, (unsigned long long)magic, (unsigned long long)SY_SHM_MAGIC);
        goto fail;
    }
    if (hdr->version != SY_SHM_VERSION) {
        rc = say(err, -EPROTO,
                 "shared memory %s: layout version %u, but this build uses version %u; "
                 "run the data plane and the control plane of one release, or remove the file "
                 "and restart the data plane",
                 path, hdr->version, SY_SHM_VERSION);
        goto fail;
    }
    if (hdr->header_size != sizeof(struct sy_shm_header) || hdr->size != (uint64_t)st.st_size) {
        rc = say(err, -EPROTO,
                 "shared memory %s: header says %u-byte header and %llu bytes, the file has "
                 "%lld bytes and this build a %zu-byte header",
                 path, hdr->header_size, (unsigned long long)hdr->size, (long long)st.st_size,
                 sizeof(struct sy_shm_header));
        goto fail;
    }
    /* Recompute the layout from the capacities: a header whose offsets disagree was written
     * by a build with another layout under the same version number, or is corrupt. */
    struct sy_shm_caps caps = hdr->caps;
    struct sy_shm_header want;
    char *lerr = NULL;
    if (sy_shm_layout(&caps, &want, &lerr) < 0 || memcmp(&caps, &hdr->caps, sizeof(caps)) != 0 ||
        want.size != hdr->size || want.off_shards != hdr->off_shards ||
        want.off_events != hdr->off_events || want.shard_stride != hdr->shard_stride ||
        want.off_workers != hdr->off_workers || want.off_deployments != hdr->off_deployments ||
        want.off_models != hdr->off_models || want.off_keys != hdr->off_keys ||
        want.off_key_models != hdr->off_key_models ||
        want.shard_off_models != hdr->shard_off_models ||
        want.shard_off_keys != hdr->shard_off_keys || want.off_budgets != hdr->off_budgets) {
        free(lerr);
        rc = say(err, -EPROTO,
                 "shared memory %s: its block offsets do not match layout version %u for its "
                 "capacities; the file is corrupt or from a build that forgot a version bump",
                 path, SY_SHM_VERSION);
        goto fail;
    }
    shm = calloc(1, sizeof(*shm));
    if (!shm || !(shm->path = strdup(path))) {
        free(shm);
        rc = say(err, -ENOMEM, "shared memory %s: out of memory", path);
        goto fail;
    }
    shm->base = base;
    shm->size = size;
    shm->writable = writable;
    bind(shm, hdr);
    close(fd);
    *out = shm;
    return 0;
fail:
    if (base != MAP_FAILED)
        munmap(base, size);
    close(fd);
    return rc;
}

void sy_shm_detach(struct sy_shm *shm)
{
    if (!shm)
        return;
    munmap(shm->base, shm->size);
    free(shm->path);
    free(shm);
}

/* ---- slots --------------------------------------------------------------------------------- */

static void zero_atomics(void *p, size_t n)
{
    _Atomic uint64_t *w = p;
    for (size_t i = 0; i < n / sizeof(*w); i++)
        atomic_store_explicit(&w[i], 0, memory_order_relaxed);
}

int sy_shm_slot_reset(struct sy_shm *shm, enum sy_shm_kind kind, uint32_t slot, uint64_t generation)
{
    if (!shm->writable)
        return -EROFS;
    _Atomic uint64_t *gen;
    switch (kind) {
    case SY_SHM_DEPLOYMENT:
        if (slot >= shm->caps.max_deployments)
            return -ERANGE;
        gen = &shm->deps[slot].generation;
        atomic_store_explicit(gen, 0, memory_order_release);
        zero_atomics(&shm->deps[slot], sizeof(shm->deps[slot]));
        break;
    case SY_SHM_MODEL:
        if (slot >= shm->caps.max_models)
            return -ERANGE;
        gen = &shm->models[slot].generation;
        atomic_store_explicit(gen, 0, memory_order_release);
        break;
    case SY_SHM_KEY: {
        if (slot >= shm->caps.max_keys)
            return -ERANGE;
        gen = &shm->keys[slot].generation;
        atomic_store_explicit(gen, 0, memory_order_release);
        zero_atomics(&shm->keys[slot], sizeof(shm->keys[slot]));
        /* its per-model limiters: a scan, but slots are reused rarely and by the control plane */
        uint64_t hi = (uint64_t)(slot + 1) << 32;
        for (uint32_t i = 0; i < shm->caps.key_model_entries; i++) {
            struct sy_shm_key_model *e = &shm->key_models[i];
            if ((atomic_load_explicit(&e->tag, memory_order_relaxed) & ~(uint64_t)UINT32_MAX) ==
                hi) {
                atomic_store_explicit(&e->rpm, 0, memory_order_relaxed);
                atomic_store_explicit(&e->tpm, 0, memory_order_relaxed);
            }
        }
        break;
    }
    default:
        return -EINVAL;
    }
    uint32_t seen = atomic_load_explicit(&shm->hdr->workers_seen, memory_order_acquire);
    for (uint32_t w = 0; w < shm->caps.max_workers && w < seen; w++) {
        struct sy_shm_counters *c = sy_shm_counters(shm, w, kind, slot);
        zero_atomics(c, kind == SY_SHM_KEY ? sizeof(struct sy_shm_key_counters)
                                           : sizeof(struct sy_shm_obj_counters));
    }
    atomic_store_explicit(gen, generation, memory_order_release);
    return 0;
}

struct sy_shm_key_model *sy_shm_key_model(struct sy_shm *shm, uint32_t key_slot,
                                          uint32_t model_slot)
{
    if (!shm->writable || key_slot >= shm->caps.max_keys || model_slot >= shm->caps.max_models)
        return NULL;
    uint64_t tag = (uint64_t)(key_slot + 1) << 32 | model_slot;
    uint64_t h = tag * UINT64_C(0x9e3779b97f4a7c15); /* Fibonacci hashing */
    uint32_t mask = shm->caps.key_model_entries - 1;
    uint32_t i = (uint32_t)(h >> 32) & mask;
    for (uint32_t n = 0; n < 64 && n <= mask; n++, i = (i + 1) & mask) {
        struct sy_shm_key_model *e = &shm->key_models[i];
        uint64_t t = atomic_load_explicit(&e->tag, memory_order_acquire);
        if (t == 0 && atomic_compare_exchange_strong_explicit(
                          &e->tag, &t, tag, memory_order_acq_rel, memory_order_acquire))
            return e;
        if (t == tag)
            return e;
    }
    return NULL;
}

/* ---- workers ------------------------------------------------------------------------------- */

int sy_shm_worker_start(struct sy_shm *shm, uint32_t i, pid_t pid, uint64_t now_ms)
{
    if (!shm->writable)
        return -EROFS;
    if (i >= shm->caps.max_workers)
        return -ERANGE;
    struct sy_shm_worker *w = &shm->workers[i];
    atomic_store_explicit(&w->started_ms, now_ms, memory_order_relaxed);
    atomic_store_explicit(&w->heartbeat_ms, now_ms, memory_order_relaxed);
    atomic_store_explicit(&w->table_version, 0, memory_order_relaxed);
    atomic_store_explicit(&w->pid, (int32_t)pid, memory_order_release);
    uint32_t seen = atomic_load_explicit(&shm->hdr->workers_seen, memory_order_relaxed);
    while (seen < i + 1 &&
           !atomic_compare_exchange_weak_explicit(&shm->hdr->workers_seen, &seen, i + 1,
                                                  memory_order_release, memory_order_relaxed))
        ;
    return 0;
}

int sy_shm_worker_reap(struct sy_shm *shm, uint32_t i)
{
    if (!shm->writable)
        return -EROFS;
    if (i >= shm->caps.max_workers)
        return -ERANGE;
    for (uint32_t d = 0; d < shm->caps.max_deployments; d++) {
        struct sy_shm_counters *c = sy_shm_counters(shm, i, SY_SHM_DEPLOYMENT, d);
        uint64_t n = atomic_exchange_explicit(&c->ctr[SY_CTR_IN_FLIGHT], 0, memory_order_relaxed);
        if (n)
            atomic_fetch_sub_explicit(&shm->deps[d].in_flight, n, memory_order_relaxed);
    }
    for (uint32_t m = 0; m < shm->caps.max_models; m++)
        atomic_store_explicit(&sy_shm_counters(shm, i, SY_SHM_MODEL, m)->ctr[SY_CTR_IN_FLIGHT], 0,
                              memory_order_relaxed);
    for (uint32_t k = 0; k < shm->caps.max_keys; k++)
        atomic_store_explicit(&sy_shm_counters(shm, i, SY_SHM_KEY, k)->ctr[SY_CTR_IN_FLIGHT], 0,
                              memory_order_relaxed);
    atomic_store_explicit(&shm->workers[i].pid, 0, memory_order_release);
    return 0;
}

/* ---- readers ------------------------------------------------------------------------------- */

int sy_shm_read(const struct sy_shm *shm, enum sy_shm_kind kind, uint32_t slot,
                struct sy_shm_totals *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t base;
    size_t stride;
    switch (kind) {
    case SY_SHM_DEPLOYMENT:
        if (slot >= shm->caps.max_deployments)
            return -ERANGE;
        base = 0;
        stride = sizeof(struct sy_shm_obj_counters);
        break;
    case SY_SHM_MODEL:
        if (slot >= shm->caps.max_models)
            return -ERANGE;
        base = shm->shard_off_models;
        stride = sizeof(struct sy_shm_obj_counters);
        break;
    case SY_SHM_KEY:
        if (slot >= shm->caps.max_keys)
            return -ERANGE;
        base = shm->shard_off_keys;
        stride = sizeof(struct sy_shm_key_counters);
        break;
    default:
        return -EINVAL;
    }
    uint32_t seen = atomic_load_explicit(&shm->hdr->workers_seen, memory_order_acquire);
    for (uint32_t w = 0; w < seen && w < shm->caps.max_workers; w++) {
        const struct sy_shm_counters *c =
            (const void *)(shm->shards + w * shm->shard_stride + base + slot * stride);
        for (int i = 0; i < SY_OUTCOME_MAX; i++)
            out->requests[i] += atomic_load_explicit(&c->requests[i], memory_order_relaxed);
        for (int i = 0; i < SY_CTR_MAX; i++)
            out->ctr[i] += atomic_load_explicit(&c->ctr[i], memory_order_relaxed);
        if (kind == SY_SHM_KEY)
            continue;
        const struct sy_shm_obj_counters *o = (const void *)c;
        for (int k = 0; k < SY_HIST_KIND_MAX; k++) {
            for (int b = 0; b < SY_HIST_BUCKETS; b++)
                out->hist[k][b] +=
                    atomic_load_explicit(&o->hist[k].bucket[b], memory_order_relaxed);
            out->hist_sum_us[k] += atomic_load_explicit(&o->hist[k].sum_us, memory_order_relaxed);
        }
    }
    return 0;
}

/* ---- decision log -------------------------------------------------------------------------- */

void sy_shm_event_init(struct sy_shm_event *ev, enum sy_event_kind kind, const char *request_id)
{
    memset(ev, 0, sizeof(*ev));
    ev->kind = (uint16_t)kind;
    ev->outcome = SY_OUTCOME_MAX;
    ev->model_slot = ev->deployment_slot = ev->key_slot = SY_SHM_NO_SLOT;
    if (request_id)
        snprintf(ev->request_id, sizeof(ev->request_id), "%s", request_id);
}

int sy_shm_event_push(struct sy_shm *shm, const struct sy_shm_event *ev)
{
    if (!shm->writable)
        return -EROFS;
    struct sy_shm_event_ring *r = shm->ring;
    uint64_t mask = shm->caps.event_cells - 1;
    uint64_t pos = atomic_load_explicit(&r->enqueue_pos, memory_order_relaxed);
    struct sy_shm_event_cell *cell;
    for (;;) {
        cell = &shm->cells[pos & mask];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->enqueue_pos, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed))
                break;
        } else if (dif < 0) {
            /* the cell still holds the record of a lap ago: full */
            atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
            return -ENOBUFS;
        } else {
            pos = atomic_load_explicit(&r->enqueue_pos, memory_order_relaxed);
        }
    }
    memcpy(&cell->ev, ev, sizeof(*ev));
    cell->ev.text[sizeof(cell->ev.text) - 1] = '\0';
    cell->ev.request_id[sizeof(cell->ev.request_id) - 1] = '\0';
    uint64_t expect = pos;
    if (!atomic_compare_exchange_strong_explicit(&cell->seq, &expect, pos + 1, memory_order_release,
                                                 memory_order_relaxed)) {
        /* the consumer gave up on us (we stalled too long): our record is lost */
        atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
        return -ENOBUFS;
    }
    return 0;
}

int sy_shm_event_pop(struct sy_shm *shm, uint64_t now_ms, struct sy_shm_event *out)
{
    if (!shm->writable)
        return -EROFS;
    struct sy_shm_event_ring *r = shm->ring;
    uint64_t n = shm->caps.event_cells;
    for (;;) {
        uint64_t pos = atomic_load_explicit(&r->dequeue_pos, memory_order_relaxed);
        struct sy_shm_event_cell *cell = &shm->cells[pos & (n - 1)];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        if (seq == pos + 1) {
            memcpy(out, &cell->ev, sizeof(*out));
            atomic_store_explicit(&cell->seq, pos + n, memory_order_release);
            atomic_store_explicit(&r->dequeue_pos, pos + 1, memory_order_relaxed);
            atomic_store_explicit(&r->stall_since_ms, 0, memory_order_relaxed);
            return 0;
        }
        /* Not published. Empty, unless a producer has claimed the position. */
        if (atomic_load_explicit(&r->enqueue_pos, memory_order_acquire) <= pos)
            return -EAGAIN;
        uint64_t since = atomic_load_explicit(&r->stall_since_ms, memory_order_relaxed);
        if (since == 0 || atomic_load_explicit(&r->stall_pos, memory_order_relaxed) != pos) {
            atomic_store_explicit(&r->stall_pos, pos, memory_order_relaxed);
            atomic_store_explicit(&r->stall_since_ms, now_ms ? now_ms : 1, memory_order_relaxed);
            return -EAGAIN;
        }
        if (now_ms < since + SY_SHM_EVENT_STALL_MS)
            return -EAGAIN;
        uint64_t expect = pos;
        if (atomic_compare_exchange_strong_explicit(&cell->seq, &expect, pos + n,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            atomic_fetch_add_explicit(&r->skipped, 1, memory_order_relaxed);
            atomic_store_explicit(&r->dequeue_pos, pos + 1, memory_order_relaxed);
            atomic_store_explicit(&r->stall_since_ms, 0, memory_order_relaxed);
        }
        /* else the producer published just now: read it on the next turn */
    }
}

/* ---- names --------------------------------------------------------------------------------- */

#define SY__LABEL(name, label)         label,
#define SY__METRIC(name, metric, help) metric,
#define SY__HELP(name, metric, help)   help,

static const char *const outcome_labels[] = {SY_OUTCOME_MAP(SY__LABEL)};
static const char *const ctr_metrics[] = {SY_CTR_MAP(SY__METRIC)};
static const char *const ctr_helps[] = {SY_CTR_MAP(SY__HELP)};
static const char *const event_labels[] = {SY_EVENT_KIND_MAP(SY__LABEL)};
static const char *const reason_labels[] = {SY_REASON_MAP(SY__LABEL)};
static const char *const circuit_labels[] = {SY_CIRCUIT_STATE_MAP(SY__LABEL)};

static_assert(SY_ARRAY_LEN(outcome_labels) == SY_OUTCOME_MAX, "one label per outcome");
static_assert(SY_ARRAY_LEN(circuit_labels) == SY_CIRCUIT_STATE_MAX, "one label per state");

const char *sy_outcome_label(enum sy_outcome o)
{
    return (unsigned)o < SY_OUTCOME_MAX ? outcome_labels[o] : "unknown";
}

const char *sy_ctr_metric(enum sy_ctr c)
{
    return (unsigned)c < SY_CTR_MAX ? ctr_metrics[c] : "unknown";
}

const char *sy_ctr_help(enum sy_ctr c)
{
    return (unsigned)c < SY_CTR_MAX ? ctr_helps[c] : "";
}

const char *sy_event_kind_label(enum sy_event_kind k)
{
    return (unsigned)k < SY_EVENT_KIND_MAX ? event_labels[k] : "unknown";
}

const char *sy_reason_label(enum sy_reason r)
{
    return (unsigned)r < SY_REASON_MAX ? reason_labels[r] : "unknown";
}

const char *sy_circuit_state_label(enum sy_circuit_state s)
{
    return (unsigned)s < SY_CIRCUIT_STATE_MAX ? circuit_labels[s] : "unknown";
}
