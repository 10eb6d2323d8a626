/* SPDX-License-Identifier: Apache-2.0 */
/** A worker process: one libuv loop serving the listening socket it inherited from the master,
 * until a SIGTERM asks it to drain. */

#include <errno.h>
#include <signal.h>
#include <sys/random.h>
#include <string.h>
#include <unistd.h>

#include "cpclient.h"
#include "worker.h"
#include "sy/log.h"
#include "sy/shm.h"
#include "guard.h"
#include "sy/table.h"
#include "sy/util.h"
#include "upstream.h"

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Everything is closed or about to be: let the loop run out. */
/* Once a second: this worker is alive and serves this table (read by the control plane). */
static void heartbeat_cb(uv_timer_t *t)
{
    struct dp_worker *w = t->data;
    struct sy_shm_worker *slot = w->shm ? sy_shm_worker(w->shm, w->index) : NULL;
    if (slot)
        sy_shm_worker_heartbeat(slot, sy_now_ms(), w->table->version);
}

static void worker_finish(struct dp_worker *w)
{
    if (!uv_is_closing((uv_handle_t *)&w->heartbeat))
        uv_close((uv_handle_t *)&w->heartbeat, NULL);
    dp_cpclient_close(w->cp);
    w->cp = NULL;
    if (!uv_is_closing((uv_handle_t *)&w->drain_timer))
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
    if (!uv_is_closing((uv_handle_t *)&w->sig_term))
        uv_close((uv_handle_t *)&w->sig_term, NULL);
    if (!uv_is_closing((uv_handle_t *)&w->sig_int))
        uv_close((uv_handle_t *)&w->sig_int, NULL);
    if (w->upstream) {
        dp_upstream_ctx_close(w->upstream);
        w->upstream = NULL;
    }
}

static void on_conn_closed(struct sy_http_server *s)
{
    struct dp_worker *w = s->data;
    if (w->draining && s->n_conns == 0)
        worker_finish(w);
}

static void on_request(struct sy_http_request *req)
{
    struct dp_worker *w = req->server->data;
    /* A table swapped in while this request runs does not change it. */
    req->ctx = sy_table_ref(w->table);
    dp__handle_request(req);
}

static void install_table(struct dp_worker *w, struct sy_table *t, uint64_t seq)
{
    struct sy_table *old = w->table;
    w->table = t;
    w->installed_seq = seq;
    sy_log(SY_LOG_INFO, "worker", "worker %u: table version %llu -> %llu", w->index,
           (unsigned long long)old->version, (unsigned long long)t->version);
    sy_table_unref(old); /* requests in flight hold their own references */
}

/* A table whose guardrails must be compiled first: compiling 10,000 keywords takes a good part
 * of a second, so it runs on libuv's thread pool while the worker keeps serving the table it
 * has. A table that a later one overtook is dropped when its compile ends. */
struct table_job {
    uv_work_t work;
    struct dp_worker *w;
    struct sy_table *t;
    struct dp_guard_prep *prep;
    uint64_t seq;
};

static void table_job_work(uv_work_t *req)
{
    struct table_job *job = req->data;
    dp_guard_prepare_work(job->prep);
}

static void table_job_done(uv_work_t *req, int status)
{
    struct table_job *job = req->data;
    struct dp_worker *w = job->w;
    dp_guard_prepare_finish(job->prep);
    if (status == 0 && !w->draining && job->seq > w->installed_seq)
        install_table(w, job->t, job->seq);
    else
        sy_table_unref(job->t);
    free(job);
}

void dp__worker_set_table(struct dp_worker *w, struct sy_table *t)
{
    uint64_t seq = ++w->table_seq;
    struct dp_guard_prep *prep = dp_guard_prepare(t);
    if (dp_guard_prepare_pending(prep)) {
        struct table_job *job = sy_xcalloc(1, sizeof(*job));
        *job = (struct table_job){.w = w, .t = t, .prep = prep, .seq = seq};
        job->work.data = job;
        SY_REQUIRE(uv_queue_work(&w->loop, &job->work, table_job_work, table_job_done) == 0);
        return;
    }
    if (prep)
        dp_guard_prepare_finish(prep);
    install_table(w, t, seq);
}

static void on_request_done(struct sy_http_request *req)
{
    dp__proxy_request_done(req);
    sy_table_unref(req->ctx);
    req->ctx = NULL;
}

static void drain_timer_cb(uv_timer_t *t)
{
    struct dp_worker *w = t->data;
    if (sy_now_ms() < w->drain_deadline_ms) {
        /* The idle grace is over: idle keep-alives go; requests in flight may still finish. */
        sy_http_server_close_idle(&w->http);
        uint64_t left = w->drain_deadline_ms - sy_now_ms();
        uv_timer_start(&w->drain_timer, drain_timer_cb, left ? left : 1, 0);
        return;
    }
    sy_log(SY_LOG_WARN, "worker", "drain grace period over: closing %u connections",
           w->http.n_conns);
    sy_http_server_close_all(&w->http);
    if (w->http.n_conns == 0)
        worker_finish(w);
}

static void begin_drain(struct dp_worker *w)
{
    if (w->draining) {
        /* A second request to stop: stop now. */
        sy_http_server_close_all(&w->http);
        return;
    }
    w->draining = true;
    sy_log(SY_LOG_INFO, "worker", "draining: %u connections open", w->http.n_conns);
    /* A draining worker takes no new table, and the connection must not keep it alive. */
    dp_cpclient_close(w->cp);
    w->cp = NULL;
    sy_http_server_drain(&w->http);
    w->drain_deadline_ms = sy_now_ms() + w->cfg->drain_timeout_ms;
    uint32_t idle = SY_MIN(w->cfg->drain_idle_ms, w->cfg->drain_timeout_ms);
    uv_timer_start(&w->drain_timer, drain_timer_cb, idle ? idle : 1, 0);
    if (w->http.n_conns == 0)
        worker_finish(w);
}

static void signal_cb(uv_signal_t *s, int signum)
{
    begin_drain(s->data);
}

int dp_worker_run(const struct dp_config *c, int listen_fd, unsigned index, int ready_fd,
                  struct sy_table *table)
{
    struct dp_worker *w = sy_xcalloc(1, sizeof(*w));
    int status = 1;
    w->cfg = c;
    w->index = index;
    if (getrandom(&w->rnd, sizeof(w->rnd), 0) != sizeof(w->rnd) || w->rnd == 0)
        w->rnd = sy_now_ns() | 1;
    w->budget.at_ms = sy_now_ms();
    w->shm = dp__node_shm;
    if (w->shm)
        sy_shm_worker_start(w->shm, index, getpid(), sy_now_ms());
    dp_guard_attach(table);
    w->table = table;
    signal(SIGPIPE, SIG_IGN);

    SY_REQUIRE(uv_loop_init(&w->loop) == 0);
    struct dp_upstream_pool_opts po = {
        .max_idle_per_origin = c->pool_max_idle,
        .max_conns_per_origin = c->pool_max_conns,
        .idle_expiry_ms = c->pool_idle_ms,
        .dns_ttl_ms = 30000,
        .max_head_bytes = 65536,
    };
    w->upstream = dp_upstream_ctx_new(&w->loop, &po);
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    uv_timer_init(&w->loop, &w->heartbeat);
    w->heartbeat.data = w;
    uv_timer_start(&w->heartbeat, heartbeat_cb, 0, 1000);
    uv_signal_init(&w->loop, &w->sig_term);
    uv_signal_init(&w->loop, &w->sig_int);
    w->sig_term.data = w->sig_int.data = w;
    uv_signal_start(&w->sig_term, signal_cb, SIGTERM);
    uv_signal_start(&w->sig_int, signal_cb, SIGINT);

    struct sy_http_limits limits = {
        .max_header_bytes = c->max_header_bytes,
        .max_body_bytes = c->max_body_bytes,
        .header_timeout_ms = c->header_timeout_ms,
        .body_timeout_ms = c->body_timeout_ms,
        .idle_timeout_ms = c->idle_timeout_ms,
        .send_timeout_ms = c->send_timeout_ms,
        .body_total_timeout_ms = c->body_total_timeout_ms,
    };
    sy_http_server_init(&w->http, &w->loop, &limits);
    w->http.data = w;
    w->http.on_request = on_request;
    w->http.on_request_done = on_request_done;
    w->http.on_conn_closed = on_conn_closed;
    w->http.tls = dp__listen_tls;
    int r = uv_tcp_open(&w->http.listener, listen_fd);
    if (r == 0)
        r = sy_http_server_start(&w->http);
    if (r < 0) {
        sy_log(SY_LOG_ERROR, "worker", "cannot serve on the listening socket: %s",
               uv_strerror(r));
        goto out;
    }
    sy_log(SY_LOG_INFO, "worker", "worker %u serving, table version %llu", index,
           (unsigned long long)table->version);
    if (c->control_socket != NULL)
        w->cp = dp_cpclient_start(w);
    if (ready_fd >= 0) {
        char one = 1;
        ssize_t n = write(ready_fd, &one, 1);
        (void)n;
        close(ready_fd);
        ready_fd = -1;
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    status = 0;
    sy_log(SY_LOG_INFO, "worker", "worker %u drained", index);

out:
    if (ready_fd >= 0)
        close(ready_fd);
    worker_finish(w);
    if (!uv_is_closing((uv_handle_t *)&w->http.listener))
        uv_close((uv_handle_t *)&w->http.listener, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_walk(&w->loop, close_walk_cb, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    sy_table_unref(w->table);
    free(w);
    return status;
}
