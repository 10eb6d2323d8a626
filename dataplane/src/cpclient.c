/* SPDX-License-Identifier: Apache-2.0 */
/** The data plane's client of the control plane.
 *
 * Every worker holds its own connection to the control socket (a Unix socket, uv_pipe), so a
 * table reaches each worker directly and each one acknowledges the version it now serves: the
 * control plane sees exactly which worker runs what. The exchange:
 *
 *   worker -> HELLO {proto, role "dataplane", node, pid, worker, table_version, caps}
 *   cp     -> HELLO {proto, role "controlplane", ...}      (a wrong proto: we hang up)
 *   cp     -> TABLE <routing table>   worker -> ACK {version, ok[, error]}
 *   either -> PING {t}                other  -> PONG {t}
 *
 * Static stability: when the connection fails or ends, the worker goes on serving its last good
 * table and reconnects with backoff, forever. A new table is decoded and validated in full
 * before it replaces the old one, between requests; a request in flight keeps the table it began
 * with (worker.c holds a reference per request). Worker 0 also writes every table it takes to
 * the snapshot file, from the libuv thread pool so that the disk never stalls the loop, and the
 * master starts from that file when the control plane is away. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpclient.h"
#include "sy/buf.h"
#include "sy/frame.h"
#include "sy/log.h"
#include "sy/table.h"
#include "sy/util.h"
#include "worker.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

/** A table on its way to the snapshot file, in the thread pool. */
struct snapshot_job {
    uv_work_t req;
    struct dp_cpclient *c;
    struct sy_table *table; /* one reference */
    const char *path;       /* the config's */
    int err;                /* 0 or a negative errno, set in the pool */
    const char *step;       /* what failed */
};

struct dp_cpclient {
    struct dp_worker *w;
    uv_pipe_t pipe;
    bool pipe_open; /* initialised and not closed yet */
    bool connected; /* the connect succeeded; reading */
    uv_connect_t connect_req;
    uv_timer_t retry;
    uint32_t backoff_ms;
    unsigned failures; /* connect failures since the last connection: the first is logged */
    bool closing;
    unsigned pending_closes; /* close callbacks still due */
    struct sy_frame_reader reader;
    char node[256];
    struct snapshot_job *job;   /* being written, or NULL */
    struct sy_table *snap_next; /* the newest table to write after it, or NULL */
    char rbuf[65536];
};

static void connect_now(struct dp_cpclient *c);

/* ---- lifetime -------------------------------------------------------------------------- */

static void maybe_free(struct dp_cpclient *c)
{
    if (!c->closing || c->pending_closes > 0 || c->job != NULL)
        return;
    sy_frame_reader_free(&c->reader);
    free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct dp_cpclient *c = h->data;
    c->pending_closes--;
    maybe_free(c);
}

static void retry_cb(uv_timer_t *t)
{
    connect_now(t->data);
}

static void schedule_retry(struct dp_cpclient *c)
{
    if (c->closing)
        return;
    uv_timer_start(&c->retry, retry_cb, c->backoff_ms, 0);
    c->backoff_ms = SY_MIN(c->backoff_ms * 2, BACKOFF_MAX_MS);
}

static void on_pipe_closed(uv_handle_t *h)
{
    struct dp_cpclient *c = h->data;
    c->pending_closes--;
    if (c->closing)
        maybe_free(c);
    else
        schedule_retry(c);
}

/* Hang up (or give up connecting); the close callback schedules the next attempt. */
static void drop_connection(struct dp_cpclient *c)
{
    c->connected = false;
    sy_frame_reader_free(&c->reader);
    if (c->pipe_open) {
        c->pipe_open = false;
        c->pending_closes++;
        uv_close((uv_handle_t *)&c->pipe, on_pipe_closed);
    }
}

/* ---- writing --------------------------------------------------------------------------- */

struct cp_write {
    uv_write_t req;
    struct sy_buf buf;
};

static void on_write(uv_write_t *req, int status)
{
    struct cp_write *wr = SY_CONTAINER_OF(req, struct cp_write, req);
    if (status < 0 && status != UV_ECANCELED)
        sy_log(SY_LOG_DEBUG, "cpclient", "write to the control plane failed: %s",
               uv_strerror(status));
    sy_buf_free(&wr->buf);
    free(wr);
}

/* Send the frames in <b> (taken: <b> is left empty). A failure shows up as a read error. */
static void send_frames(struct dp_cpclient *c, struct sy_buf *b)
{
    struct cp_write *wr = sy_xcalloc(1, sizeof(*wr));
    wr->buf = *b;
    *b = (struct sy_buf)SY_BUF_INIT;
    uv_buf_t ub = uv_buf_init(wr->buf.data, (unsigned)wr->buf.len);
    int r = uv_write(&wr->req, (uv_stream_t *)&c->pipe, &ub, 1, on_write);
    if (r < 0) {
        sy_log(SY_LOG_DEBUG, "cpclient", "write to the control plane failed: %s", uv_strerror(r));
        sy_buf_free(&wr->buf);
        free(wr);
    }
}

static void send_hello(struct dp_cpclient *c)
{
    static const char *caps[] = {"table", "ack", "ping"};
    struct sy_buf b = SY_BUF_INIT;
    struct sy_hello h = {
        .proto = SY_PROTO_VERSION,
        .role = SY_ROLE_DATAPLANE,
        .node = c->node,
        .pid = getpid(),
        .worker = c->w->index,
        .table_version = c->w->table->version,
        .caps = (char **)caps,
        .n_caps = SY_ARRAY_LEN(caps),
    };
    SY_REQUIRE(sy_hello_write(&b, &h) == 0);
    send_frames(c, &b);
}

/* ---- the snapshot ---------------------------------------------------------------------- */

/* In the thread pool: the table is immutable and its reference count atomic, so encoding it
 * here is safe. Encrypted with the snapshot key (snapshot.c: the providers' credentials never
 * reach the disk in plaintext), written aside with mode 0600, synced, then renamed: a reader
 * finds the old file or the whole new one, never half of one. */
static void snapshot_work(uv_work_t *req)
{
    struct snapshot_job *job = req->data;
    struct sy_buf bytes = SY_BUF_INIT, tmp = SY_BUF_INIT;
    int fd = -1;

    job->step = "encrypt";
    if (dp__snapshot_seal(job->table, &bytes) != 0) {
        errno = EIO;
        goto fail;
    }
    sy_buf_printf(&tmp, "%s.tmp.%d", job->path, (int)getpid());
    unlink(tmp.data);
    job->step = "open";
    fd = open(tmp.data, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1)
        goto fail;
    job->step = "write";
    for (size_t off = 0; off < bytes.len;) {
        ssize_t n = write(fd, bytes.data + off, bytes.len - off);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1)
            goto fail;
        off += (size_t)n;
    }
    job->step = "fsync";
    if (fsync(fd) == -1)
        goto fail;
    job->step = "close";
    if (close(fd) == -1) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    job->step = "rename";
    if (rename(tmp.data, job->path) == -1)
        goto fail;
    job->err = 0;
    goto out;

fail:
    job->err = -errno;
    if (fd != -1)
        close(fd);
    unlink(tmp.data);
out:
    if (bytes.data)
        explicit_bzero(bytes.data, bytes.len);
    sy_buf_free(&bytes);
    sy_buf_free(&tmp);
}

static void snapshot_start(struct dp_cpclient *c, struct sy_table *t);

static void snapshot_done(uv_work_t *req, int status)
{
    struct snapshot_job *job = req->data;
    struct dp_cpclient *c = job->c;

    if (status < 0)
        sy_log(SY_LOG_WARN, "cpclient", "snapshot of table version %" PRIu64 " not written: %s",
               job->table->version, uv_strerror(status));
    else if (job->err < 0)
        sy_log(SY_LOG_WARN, "cpclient", "snapshot %s: %s: %s; the previous snapshot stays",
               job->path, job->step, strerror(-job->err));
    else
        sy_log(SY_LOG_INFO, "cpclient", "snapshot of table version %" PRIu64 " written to %s",
               job->table->version, job->path);
    sy_table_unref(job->table);
    free(job);
    c->job = NULL;
    if (c->snap_next) {
        /* Tables came faster than the disk: only the newest is worth writing. */
        struct sy_table *next = c->snap_next;
        c->snap_next = NULL;
        snapshot_start(c, next);
        return;
    }
    maybe_free(c);
}

/* Write <t> (takes the reference) to the snapshot file, after the write in progress. */
static void snapshot_start(struct dp_cpclient *c, struct sy_table *t)
{
    if (c->job) {
        sy_table_unref(c->snap_next);
        c->snap_next = t;
        return;
    }
    struct snapshot_job *job = sy_xcalloc(1, sizeof(*job));
    job->req.data = job;
    job->c = c;
    job->table = t;
    job->path = c->w->cfg->snapshot_path;
    int r = uv_queue_work(&c->w->loop, &job->req, snapshot_work, snapshot_done);
    if (r < 0) {
        sy_log(SY_LOG_WARN, "cpclient", "snapshot not written: %s", uv_strerror(r));
        sy_table_unref(t);
        free(job);
        return;
    }
    c->job = job;
}

/* ---- frames ---------------------------------------------------------------------------- */

static void on_table(struct dp_cpclient *c, const char *body, size_t len)
{
    struct dp_worker *w = c->w;
    struct sy_table *t = NULL;
    struct sy_buf out = SY_BUF_INIT;
    struct sy_ack ack = {.ok = true};
    char *err = NULL;

    if (sy_table_decode(body, len, &t, &err) != 0) {
        /* A bad table received live is reported, and the old one stays in force. */
        sy_log(SY_LOG_WARN, "cpclient",
               "worker %u: table from the control plane refused: %s; serving version %" PRIu64,
               w->index, err ? err : "invalid table", w->table->version);
        ack.ok = false;
        ack.error = err ? err : "invalid table";
    } else if (t->version <= w->table->version) {
        sy_log(SY_LOG_INFO, "cpclient",
               "worker %u: table version %" PRIu64 " ignored: already serving version %" PRIu64,
               w->index, t->version, w->table->version);
        sy_table_unref(t);
    } else {
        dp__worker_set_table(w, t);
        if (w->index == 0 && w->cfg->snapshot_path)
            snapshot_start(c, sy_table_ref(t));
    }
    if (body != NULL && len > 0) {
        /* The frame held the providers' credentials: leave none in the read buffer. The body
         * is ours to scrub: it points into rbuf or into the reader's buffer. */
        explicit_bzero((char *)body, len);
    }
    ack.version = w->table->version;
    SY_REQUIRE(sy_ack_write(&out, &ack) == 0);
    send_frames(c, &out);
    free(err);
}

/* One frame from the control plane; non-zero hangs up. */
static int on_frame(void *ud, unsigned type, const char *body, size_t len)
{
    struct dp_cpclient *c = ud;
    struct sy_buf out = SY_BUF_INIT;
    char *err = NULL;
    int64_t t;

    switch (type) {
    case SY_FRAME_HELLO: {
        struct sy_hello h;
        if (sy_hello_decode(body, len, &h, &err) != 0) {
            sy_log(SY_LOG_ERROR, "cpclient", "worker %u: control plane's HELLO refused: %s",
                   c->w->index, err ? err : "invalid");
            free(err);
            return -1;
        }
        if (h.role != SY_ROLE_CONTROLPLANE) {
            sy_log(SY_LOG_ERROR, "cpclient", "worker %u: the peer is a %s, not a control plane",
                   c->w->index, sy_role_name(h.role));
            sy_hello_free(&h);
            return -1;
        }
        sy_log(SY_LOG_INFO, "cpclient",
               "worker %u: control plane node=%s pid=%" PRId64 " has table version %" PRIu64,
               c->w->index, h.node, h.pid, h.table_version);
        sy_hello_free(&h);
        return 0;
    }
    case SY_FRAME_TABLE:
        on_table(c, body, len);
        return 0;
    case SY_FRAME_PING:
        if (sy_ping_decode(body, len, &t, &err) != 0) {
            sy_log(SY_LOG_WARN, "cpclient", "bad PING: %s", err ? err : "invalid");
            free(err);
            return -1;
        }
        SY_REQUIRE(sy_ping_write(&out, SY_FRAME_PONG, t) == 0);
        send_frames(c, &out);
        return 0;
    default:
        /* PONG, ACK (not for us) and types added later. */
        sy_log(SY_LOG_DEBUG, "cpclient", "ignoring a %s frame (type %u)", sy_frame_type_name(type),
               type);
        return 0;
    }
}

/* ---- connecting ------------------------------------------------------------------------ */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct dp_cpclient *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct dp_cpclient *c = s->data;
    char *err = NULL;

    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF)
            sy_log(SY_LOG_INFO, "cpclient",
                   "worker %u: control plane closed the connection; serving table version "
                   "%" PRIu64 " and reconnecting",
                   c->w->index, c->w->table->version);
        else
            sy_log(SY_LOG_INFO, "cpclient",
                   "worker %u: connection to the control plane lost: %s; serving table version "
                   "%" PRIu64 " and reconnecting",
                   c->w->index, uv_strerror((int)nread), c->w->table->version);
        drop_connection(c);
        return;
    }
    int rc = sy_frame_reader_feed(&c->reader, buf->base, (size_t)nread, on_frame, c, &err);
    if (rc != 0) {
        if (err)
            sy_log(SY_LOG_ERROR, "cpclient", "worker %u: %s; hanging up", c->w->index, err);
        else
            sy_log(SY_LOG_INFO, "cpclient", "worker %u: hanging up on the control plane",
                   c->w->index);
        free(err);
        drop_connection(c);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    struct dp_cpclient *c = req->data;

    if (c->closing || !c->pipe_open)
        return;
    if (status < 0) {
        /* An absent control plane is normal for a while: say it once, then quietly retry. */
        sy_log(c->failures++ == 0 ? SY_LOG_WARN : SY_LOG_DEBUG, "cpclient",
               "worker %u: cannot connect to the control plane at %s: %s; serving table version "
               "%" PRIu64 ", retrying",
               c->w->index, c->w->cfg->control_socket, uv_strerror(status), c->w->table->version);
        drop_connection(c);
        return;
    }
    c->connected = true;
    c->failures = 0;
    c->backoff_ms = BACKOFF_MIN_MS;
    sy_log(SY_LOG_INFO, "cpclient", "worker %u: connected to the control plane at %s", c->w->index,
           c->w->cfg->control_socket);
    sy_frame_reader_init(&c->reader, SY_FRAME_MAX_BODY);
    send_hello(c);
    int r = uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, on_read);
    if (r < 0) {
        sy_log(SY_LOG_WARN, "cpclient", "worker %u: cannot read from the control plane: %s",
               c->w->index, uv_strerror(r));
        drop_connection(c);
    }
}

static void connect_now(struct dp_cpclient *c)
{
    if (c->closing || c->pipe_open)
        return;
    SY_REQUIRE(uv_pipe_init(&c->w->loop, &c->pipe, 0) == 0);
    c->pipe.data = c;
    c->pipe_open = true;
    c->connect_req.data = c;
    uv_pipe_connect(&c->connect_req, &c->pipe, c->w->cfg->control_socket, on_connect);
}

struct dp_cpclient *dp_cpclient_start(struct dp_worker *w)
{
    struct dp_cpclient *c = sy_xcalloc(1, sizeof(*c));
    c->w = w;
    c->backoff_ms = BACKOFF_MIN_MS;
    sy_frame_reader_init(&c->reader, SY_FRAME_MAX_BODY);
    if (w->cfg->node_id)
        snprintf(c->node, sizeof(c->node), "%s", w->cfg->node_id);
    else if (gethostname(c->node, sizeof(c->node) - 1) == -1)
        snprintf(c->node, sizeof(c->node), "unknown");
    uv_timer_init(&w->loop, &c->retry);
    c->retry.data = c;
    connect_now(c);
    return c;
}

void dp_cpclient_close(struct dp_cpclient *c)
{
    if (c == NULL || c->closing)
        return;
    c->closing = true;
    sy_log(SY_LOG_INFO, "cpclient", "worker %u: closing the connection to the control plane",
           c->w->index);
    drop_connection(c);
    uv_timer_stop(&c->retry);
    c->pending_closes++;
    uv_close((uv_handle_t *)&c->retry, on_handle_closed);
}
