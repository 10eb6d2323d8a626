/* SPDX-License-Identifier: Apache-2.0 */
/** The publisher: the Unix socket every data-plane worker connects to, and the loop that keeps
 * them on the newest routing table.
 *
 * - The socket is 0600 in a directory we create 0700, and each peer's credentials are checked
 *   (SO_PEERCRED): root or our own uid only.
 * - Frames (proto/README.md): a worker says HELLO with the version it serves; we answer HELLO
 *   and, when its version differs from ours, the TABLE at once. Every new version goes to every
 *   worker; each answers ACK. A worker slow to read gets only the newest version once its
 *   previous TABLE is written, never a queue of stale ones.
 * - Every 5 s each worker is PINGed, and one silent for 15 s is dropped (it reconnects).
 * - Config changes arrive by LISTEN switchyard_config. Compiles are coalesced: while one runs,
 *   further notifications ask for exactly one more after it; a version not newer than the one
 *   published is never published.
 * - Static stability: the last table stays in memory, so with PostgreSQL down a worker that
 *   (re)connects still gets it. When the database comes back we recompile, since
 *   notifications sent meanwhile were lost.
 * - Every 5 s (--heartbeat-ms) this node's row in `nodes` is refreshed (heartbeat, versions,
 *   worker count) and the live nodes are recounted by node_heartbeat() (migrations/006): a
 *   change of the count is a config change, and the compile divides every limit by it. */

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "compile.h"
#include "internal.h"
#include "metrics.h"
#include "server.h"
#include "sy/frame.h"
#include "sy/log.h"
#include "sy/util.h"

#define CONFIG_CHANNEL "switchyard_config"
/* PINGs, the silence check and the heartbeat run every --heartbeat-ms (5000 by default). */
#define SILENCE_MS       15000       /* a worker silent this long is dropped */
#define MAX_INBOUND_BODY (64u << 10) /* workers send only small messages */

/* A TABLE frame, header included, shared by every connection it is written to. It holds the
 * credentials: wiped when the last writer lets go. */
struct table_frame {
    unsigned refs;
    uint64_t version;
    size_t len;
    char data[];
};

struct pub_conn {
    uv_pipe_t pipe;
    struct cp_publisher *pub;
    struct pub_conn *prev, *next;
    struct sy_frame_reader reader;
    bool hello; /* the worker said HELLO */
    bool closing;
    char *node; /* from its HELLO */
    int64_t pid;
    uint32_t worker;
    uint64_t version;      /* the version it serves (HELLO, then each ACK) */
    uint64_t sent_version; /* the last TABLE written or being written to it */
    bool table_writing;    /* a TABLE write has not completed yet */
    int64_t connected_ms;  /* wall clock */
    uint64_t last_seen;    /* monotonic ms of its last frame */
};

struct write_req {
    uv_write_t req;
    struct pub_conn *conn;
    struct table_frame *table; /* a TABLE, or NULL for a small frame in <own> */
    char *own;
};

struct cp_publisher {
    struct cp_server *cp;
    uv_pipe_t listener;
    uv_timer_t tick;
    bool bound; /* the socket file is ours to remove */
    bool stopping;
    unsigned open_handles; /* listener, tick and connections not yet closed */
    unsigned pending;      /* compiles and queries whose callback has not run */
    struct pub_conn *conns;
    unsigned n_conns;
    char hostname[256];
    char rbuf[64 << 10]; /* reads: the loop reads one connection at a time */

    /* what is published */
    struct table_frame *table; /* NULL until the first compile succeeds */
    uint64_t version;
    int64_t published_ms; /* wall clock */
    uint64_t compile_ms;  /* notification to table ready, for the last version */
    int64_t publish_ms;   /* notification to the last worker's ACK, -1 before the first */

    /* compiles */
    bool compiling, again;
    uint64_t change_t0;  /* monotonic ms of the first change not yet being compiled; 0 none */
    uint64_t compile_t0; /* change_t0 of the compile running */

    /* publish latency of the newest version: pending until every worker has ACKed it */
    uint64_t lat_version;
    uint64_t lat_t0;

    bool heartbeat_running;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "2024-05-01T12:00:00.123Z" */
static json_t *json_time(int64_t ms)
{
    char text[40];
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(text + n, sizeof(text) - n, ".%03dZ", (int)(ms % 1000));
    return json_string(text);
}

static void table_frame_unref(struct table_frame *f)
{
    if (f && --f->refs == 0)
        cp_crypto_free_secret(f, sizeof(*f) + f->len);
}

static void maybe_free(struct cp_publisher *pub)
{
    if (!pub->stopping || pub->open_handles || pub->pending)
        return;
    table_frame_unref(pub->table);
    free(pub);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct cp_publisher *pub = h->data;
    pub->open_handles--;
    maybe_free(pub);
}

/* ---- connections ----------------------------------------------------------------------------- */

static void conn_closed_cb(uv_handle_t *h)
{
    struct pub_conn *c = SY_CONTAINER_OF((uv_pipe_t *)h, struct pub_conn, pipe);
    struct cp_publisher *pub = c->pub;
    sy_frame_reader_free(&c->reader);
    free(c->node);
    free(c);
    pub->open_handles--;
    maybe_free(pub);
}

static void check_latency(struct cp_publisher *pub);

static void heartbeat(struct cp_publisher *pub);

/* Workers that said HELLO. */
static unsigned serving(const struct cp_publisher *pub)
{
    unsigned n = 0;
    for (const struct pub_conn *c = pub->conns; c; c = c->next)
        n += c->hello && !c->closing;
    return n;
}

static void conn_close(struct pub_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    struct cp_publisher *pub = c->pub;
    if (c->prev)
        c->prev->next = c->next;
    else
        pub->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pub->n_conns--;
    uv_close((uv_handle_t *)&c->pipe, conn_closed_cb);
    if (!pub->stopping)
        check_latency(pub);
    /* The node's last worker left: it no longer takes a share of the limits. */
    if (!pub->stopping && c->hello && serving(pub) == 0)
        heartbeat(pub);
}

/* A worker's name in log lines. */
#define CONN_FMT     "worker %s/%" PRId64 "/%" PRIu32
#define CONN_ARGS(c) ((c)->node ? (c)->node : "?"), (c)->pid, (c)->worker

static void send_table(struct pub_conn *c);

static void on_written(uv_write_t *req, int status)
{
    struct write_req *w = SY_CONTAINER_OF(req, struct write_req, req);
    struct pub_conn *c = w->conn;
    bool was_table = w->table != NULL;
    table_frame_unref(w->table);
    free(w->own);
    free(w);
    if (status < 0) {
        if (status != UV_ECANCELED && !c->closing)
            sy_log(SY_LOG_WARN, "publish", CONN_FMT ": write failed: %s", CONN_ARGS(c),
                   uv_strerror(status));
        conn_close(c);
        return;
    }
    if (was_table) {
        c->table_writing = false;
        send_table(c); /* a newer version may have been compiled meanwhile */
    }
}

/* Write <own> (taken; <len> bytes) or <table> (a reference is taken) to <c>. */
static void conn_write(struct pub_conn *c, char *own, size_t len, struct table_frame *table)
{
    if (c->closing) {
        free(own);
        return;
    }
    struct write_req *w = sy_xcalloc(1, sizeof(*w));
    w->conn = c;
    w->own = own;
    uv_buf_t buf;
    if (table) {
        table->refs++;
        w->table = table;
        buf = uv_buf_init(table->data, (unsigned)table->len);
    } else {
        buf = uv_buf_init(own, (unsigned)len);
    }
    int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, on_written);
    if (rc < 0) {
        sy_log(SY_LOG_WARN, "publish", CONN_FMT ": write failed: %s", CONN_ARGS(c),
               uv_strerror(rc));
        table_frame_unref(w->table);
        free(w->own);
        free(w);
        conn_close(c);
    }
}

static void conn_write_buf(struct pub_conn *c, struct sy_buf *b)
{
    size_t len;
    char *data = sy_buf_steal(b, &len);
    conn_write(c, data, len, NULL);
}

/* Send the published table to <c> unless it has it, or a TABLE is still being written (its
 * completion calls this again, so only the newest version follows). */
static void send_table(struct pub_conn *c)
{
    struct cp_publisher *pub = c->pub;
    if (c->closing || !c->hello || !pub->table || c->table_writing ||
        c->sent_version == pub->version)
        return;
    c->sent_version = pub->version;
    c->table_writing = true;
    sy_log(SY_LOG_DEBUG, "publish", CONN_FMT ": TABLE version %" PRIu64 " (%zu bytes)",
           CONN_ARGS(c), pub->version, pub->table->len);
    conn_write(c, NULL, 0, pub->table);
}

/* Publish latency: once every worker serves the newest version, log and keep how long it took
 * from the change. */
static void check_latency(struct cp_publisher *pub)
{
    if (!pub->lat_version)
        return;
    for (struct pub_conn *c = pub->conns; c; c = c->next)
        if (c->hello && c->version < pub->lat_version)
            return;
    pub->publish_ms = (int64_t)(sy_now_ms() - pub->lat_t0);
    sy_log(SY_LOG_DEBUG, "publish",
           "version %" PRIu64 " served by every worker (%u) %" PRId64 " ms after the change",
           pub->lat_version, pub->n_conns, pub->publish_ms);
    pub->lat_version = 0;
}

static int on_hello(struct pub_conn *c, const char *body, size_t len)
{
    struct cp_publisher *pub = c->pub;
    struct sy_hello h;
    char *err = NULL;
    if (sy_hello_decode(body, len, &h, &err) < 0) {
        sy_log(SY_LOG_WARN, "publish", "refused a worker's HELLO: %s", err ? err : "out of memory");
        free(err);
        return -1;
    }
    if (h.role != SY_ROLE_DATAPLANE) {
        sy_log(SY_LOG_WARN, "publish", "refused a HELLO from a %s: only data planes connect here",
               sy_role_name(h.role));
        sy_hello_free(&h);
        return -1;
    }
    free(c->node);
    c->node = h.node;
    h.node = NULL;
    c->pid = h.pid;
    c->worker = h.worker;
    c->version = c->sent_version = h.table_version;
    c->hello = true;
    sy_hello_free(&h);
    if (serving(pub) == 1) /* the node serves again: it takes its share of the limits now */
        heartbeat(pub);
    sy_log(SY_LOG_INFO, "publish",
           CONN_FMT " connected, serving version %" PRIu64 " (published: %" PRIu64 ")",
           CONN_ARGS(c), c->version, pub->version);

    static const char *const caps[] = {"table", "ping"};
    struct sy_hello mine = {
        .proto = SY_PROTO_VERSION,
        .role = SY_ROLE_CONTROLPLANE,
        .node = pub->cp->cfg.node_id,
        .pid = getpid(),
        .table_version = pub->version,
        .caps = (char **)caps,
        .n_caps = SY_ARRAY_LEN(caps),
    };
    struct sy_buf b = SY_BUF_INIT;
    sy_hello_write(&b, &mine);
    conn_write_buf(c, &b);
    send_table(c);
    return 0;
}

static int on_ack(struct pub_conn *c, const char *body, size_t len)
{
    struct sy_ack a;
    char *err = NULL;
    if (sy_ack_decode(body, len, &a, &err) < 0) {
        sy_log(SY_LOG_WARN, "publish", CONN_FMT ": bad ACK: %s", CONN_ARGS(c),
               err ? err : "out of memory");
        free(err);
        return -1;
    }
    if (!a.ok)
        sy_log(SY_LOG_ERROR, "publish",
               CONN_FMT " refused the table (serves version %" PRIu64 "): %s", CONN_ARGS(c),
               a.version, a.error ? a.error : "no reason given");
    else
        sy_log(SY_LOG_DEBUG, "publish", CONN_FMT " serves version %" PRIu64, CONN_ARGS(c),
               a.version);
    c->version = a.version;
    sy_ack_free(&a);
    check_latency(c->pub);
    return 0;
}

static int on_frame(void *ud, unsigned type, const char *body, size_t len)
{
    struct pub_conn *c = ud;
    c->last_seen = sy_now_ms();
    if (type == SY_FRAME_HELLO)
        return on_hello(c, body, len);
    if (!c->hello) {
        sy_log(SY_LOG_WARN, "publish", "a peer sent %s before HELLO; closing",
               sy_frame_type_name(type));
        return -1;
    }
    switch (type) {
    case SY_FRAME_ACK:
        return on_ack(c, body, len);
    case SY_FRAME_PING: {
        int64_t t = 0;
        if (sy_ping_decode(body, len, &t, NULL) < 0)
            return -1;
        struct sy_buf b = SY_BUF_INIT;
        sy_ping_write(&b, SY_FRAME_PONG, t);
        conn_write_buf(c, &b);
        return 0;
    }
    default: /* PONG (last_seen is all it is for), and types a newer peer may send */
        return 0;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct pub_conn *c = SY_CONTAINER_OF((uv_pipe_t *)h, struct pub_conn, pipe);
    *buf = uv_buf_init(c->pub->rbuf, sizeof(c->pub->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct pub_conn *c = SY_CONTAINER_OF((uv_pipe_t *)s, struct pub_conn, pipe);
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF)
            sy_log(SY_LOG_INFO, "publish", CONN_FMT " disconnected", CONN_ARGS(c));
        else
            sy_log(SY_LOG_WARN, "publish", CONN_FMT ": read failed: %s", CONN_ARGS(c),
                   uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    char *err = NULL;
    int rc = sy_frame_reader_feed(&c->reader, buf->base, (size_t)nread, on_frame, c, &err);
    if (rc != 0) {
        if (err)
            sy_log(SY_LOG_WARN, "publish", CONN_FMT ": %s; closing", CONN_ARGS(c), err);
        free(err);
        conn_close(c);
    }
}

/* Root and our own uid may connect: the tables carry provider credentials. */
static bool peer_allowed(struct pub_conn *c)
{
    uv_os_fd_t fd;
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
        sy_log(SY_LOG_WARN, "publish", "refused a connection: its credentials are unknown (%s)",
               strerror(errno));
        return false;
    }
    if (cred.uid != 0 && cred.uid != geteuid()) {
        sy_log(SY_LOG_WARN, "publish",
               "refused a connection from uid %u (pid %d): only root and uid %u may connect",
               (unsigned)cred.uid, (int)cred.pid, (unsigned)geteuid());
        return false;
    }
    c->pid = cred.pid;
    return true;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct cp_publisher *pub = server->data;
    if (status < 0) {
        sy_log(SY_LOG_WARN, "publish", "accept failed: %s", uv_strerror(status));
        return;
    }
    struct pub_conn *c = sy_xcalloc(1, sizeof(*c));
    c->pub = pub;
    sy_frame_reader_init(&c->reader, MAX_INBOUND_BODY);
    uv_pipe_init(&pub->cp->loop, &c->pipe, 0);
    pub->open_handles++;
    c->connected_ms = wall_ms();
    c->last_seen = sy_now_ms();
    c->next = pub->conns;
    if (pub->conns)
        pub->conns->prev = c;
    pub->conns = c;
    pub->n_conns++;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0 || !peer_allowed(c)) {
        conn_close(c);
        return;
    }
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

/* ---- compiling and publishing ---------------------------------------------------------------- */

static void start_compile(struct cp_publisher *pub);

/* Make <res> (borrowed) the published table and send it to every worker. */
static void install(struct cp_publisher *pub, const struct cp_compiled *res)
{
    if (pub->table && res->version <= pub->version) {
        sy_log(SY_LOG_DEBUG, "publish",
               "version %" PRIu64 " is not newer than %" PRIu64 " (published); nothing to do",
               res->version, pub->version);
        return;
    }
    struct table_frame *f = sy_xmalloc(sizeof(*f) + SY_FRAME_HEADER + res->len);
    f->refs = 1;
    f->version = res->version;
    /* the header by hand: the body is already encoded */
    size_t body = res->len;
    if (body > SY_FRAME_MAX_BODY) {
        sy_log(SY_LOG_ERROR, "publish",
               "version %" PRIu64 ": the table is %zu bytes, more than a frame may carry; "
               "version %" PRIu64 " stays published",
               res->version, body, pub->version);
        free(f);
        return;
    }
    unsigned char *h = (unsigned char *)f->data;
    h[0] = (unsigned char)(body >> 24);
    h[1] = (unsigned char)(body >> 16);
    h[2] = (unsigned char)(body >> 8);
    h[3] = (unsigned char)body;
    h[4] = SY_FRAME_TABLE;
    memcpy(f->data + SY_FRAME_HEADER, res->bytes, body);
    f->len = SY_FRAME_HEADER + body;

    table_frame_unref(pub->table);
    pub->table = f;
    pub->version = res->version;
    pub->published_ms = wall_ms();
    pub->compile_ms = sy_now_ms() - pub->compile_t0;
    pub->lat_version = pub->n_conns ? res->version : 0;
    pub->lat_t0 = pub->compile_t0;
    sy_log(SY_LOG_INFO, "publish",
           "version %" PRIu64 ": %" PRIu32 " deployments, %" PRIu32 " models, %" PRIu32
           " keys, %" PRIu32 " guardrails, %zu bytes, compiled in %" PRIu64 " ms (query %" PRIu64
           " ms, build %" PRIu64 " ms)%s; sending to %u workers",
           res->version, res->n_deployments, res->n_models, res->n_keys, res->n_guardrails,
           res->len, pub->compile_ms, res->query_ms, res->build_ms,
           res->n_problems ? ", with problems logged above" : "", pub->n_conns);
    for (struct pub_conn *c = pub->conns; c; c = c->next)
        send_table(c);
}

static void on_compiled(void *ud, struct cp_compiled *res, const char *err)
{
    struct cp_publisher *pub = ud;
    pub->pending--;
    pub->compiling = false;
    if (pub->stopping) {
        cp__compiled_free(res);
        free(res);
        maybe_free(pub);
        return;
    }
    bool db_down = false;
    if (res) {
        install(pub, res);
        cp__compiled_free(res);
        free(res);
    } else if (!cp_db_is_up(pub->cp->db)) {
        db_down = true;
        sy_log(SY_LOG_WARN, "publish",
               "cannot compile the config now (%s); version %" PRIu64 " stays published", err,
               pub->version);
    } else {
        sy_log(SY_LOG_ERROR, "publish",
               "the config does not compile: %s; version %" PRIu64 " stays published", err,
               pub->version);
    }
    /* After a failure for want of a database, the database coming back recompiles. */
    if (pub->again && !db_down) {
        pub->again = false;
        start_compile(pub);
    }
}

static void start_compile(struct cp_publisher *pub)
{
    pub->compiling = true;
    pub->compile_t0 = pub->change_t0 ? pub->change_t0 : sy_now_ms();
    pub->change_t0 = 0;
    int rc = cp__compile_run(pub->cp, on_compiled, pub);
    if (rc < 0) {
        pub->compiling = false;
        sy_log(SY_LOG_ERROR, "publish", "cannot start a compile: %s", strerror(-rc));
        return;
    }
    pub->pending++;
}

/* Compile now, or once more after the compile that runs. */
static void request_compile(struct cp_publisher *pub)
{
    if (pub->stopping)
        return;
    if (!pub->change_t0)
        pub->change_t0 = sy_now_ms();
    if (pub->compiling) {
        pub->again = true;
        return;
    }
    start_compile(pub);
}

static void on_notify(struct cp_db *db, void *ud, const char *channel, const char *payload)
{
    struct cp_publisher *pub = ud;
    if (strcmp(channel, CONFIG_CHANNEL) != 0)
        return;
    uint64_t v = 0;
    if (payload && sy_parse_u64(payload, strlen(payload), &v) && pub->table && v <= pub->version)
        return; /* a version we already publish (another compile got there first) */
    sy_log(SY_LOG_DEBUG, "publish", "config changed (version %s)", payload ? payload : "?");
    request_compile(pub);
}

/* ---- heartbeat ------------------------------------------------------------------------------- */

static const char heartbeat_sql[] =
    "SELECT node_heartbeat($1, $2, $3::double precision, $4::bigint, $5::jsonb, $6::int)";

static void on_heartbeat(struct cp_db *db, void *ud, const PGresult *res, const char *err)
{
    struct cp_publisher *pub = ud;
    pub->pending--;
    pub->heartbeat_running = false;
    if (err && !pub->stopping)
        sy_log(SY_LOG_DEBUG, "publish", "node heartbeat not written: %s", err);
    maybe_free(pub);
}

/* The version this node's data plane runs: the oldest any worker serves (the published one
 * when no worker is connected); 0 when nothing is known. */
static uint64_t node_version(const struct cp_publisher *pub)
{
    uint64_t v = 0;
    bool any = false;
    for (const struct pub_conn *c = pub->conns; c; c = c->next)
        if (c->hello && (!any || c->version < v)) {
            v = c->version;
            any = true;
        }
    return any ? v : pub->version;
}

static void heartbeat(struct cp_publisher *pub)
{
    if (pub->heartbeat_running || !cp_db_is_up(pub->cp->db))
        return;
    char started[24], version[24], window[24];
    unsigned workers = 0;
    for (struct pub_conn *c = pub->conns; c; c = c->next)
        workers += c->hello;
    uint64_t v = node_version(pub);
    snprintf(started, sizeof(started), "%" PRId64, pub->cp->started_ms);
    snprintf(version, sizeof(version), "%" PRIu64, v);
    json_t *info = json_pack("{s:I, s:I, s:s, s:I}", "workers", (json_int_t)workers,
                             "published_version", (json_int_t)pub->version, "socket",
                             pub->cp->cfg.socket_path, "pid", (json_int_t)getpid());
    char *info_text = info ? json_dumps(info, JSON_COMPACT) : NULL;
    json_decref(info);
    /* Live: heard from within three periods (one missed beat is not a departure). */
    snprintf(window, sizeof(window), "%d", 3 * pub->cp->cfg.heartbeat_ms);
    const char *params[] = {
        pub->cp->cfg.node_id,         pub->hostname, started, v ? version : NULL,
        info_text ? info_text : "{}", window};
    if (cp_db_query(pub->cp->db, heartbeat_sql, 6, params, on_heartbeat, pub) == 0) {
        pub->pending++;
        pub->heartbeat_running = true;
    }
    free(info_text);
}

static void on_tick(uv_timer_t *t)
{
    struct cp_publisher *pub = t->data;
    uint64_t now = sy_now_ms();
    struct pub_conn *next;
    for (struct pub_conn *c = pub->conns; c; c = next) {
        next = c->next;
        if (now - c->last_seen > SILENCE_MS) {
            sy_log(SY_LOG_WARN, "publish", CONN_FMT " silent for %" PRIu64 " ms; dropped",
                   CONN_ARGS(c), now - c->last_seen);
            conn_close(c);
            continue;
        }
        if (c->hello) {
            struct sy_buf b = SY_BUF_INIT;
            sy_ping_write(&b, SY_FRAME_PING, wall_ms());
            conn_write_buf(c, &b);
        }
    }
    heartbeat(pub);
}

/* ---- the socket ------------------------------------------------------------------------------ */

/* Create the directories leading to <path> (mode 0700), those missing only. */
static int make_parent_dirs(const char *path, char **err)
{
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(dir, 0700) == -1 && errno != EEXIST)
            return cp__fail(err, -errno, "cannot create the socket directory %s: %s", dir,
                            strerror(errno));
        *p = saved;
        if (saved == '\0')
            break;
    }
    return 0;
}

/* Remove a socket file left by a control plane that died; refuse to take over a live one or a
 * file that is not a socket. */
static int remove_stale_socket(const char *path, char **err)
{
    struct stat st;
    if (lstat(path, &st) == -1)
        return errno == ENOENT ? 0
                               : cp__fail(err, -errno, "cannot use the socket path %s: %s", path,
                                          strerror(errno));
    if (!S_ISSOCK(st.st_mode))
        return cp__fail(err, -EEXIST, "%s exists and is not a socket; not removing it", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return cp__fail(err, -errno, "socket: %s", strerror(errno));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int live = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    if (live)
        return cp__fail(err, -EADDRINUSE,
                        "another process serves the socket %s (a second control plane on this "
                        "node needs its own --socket)",
                        path);
    if (unlink(path) == -1 && errno != ENOENT)
        return cp__fail(err, -errno, "cannot remove the stale socket %s: %s", path,
                        strerror(errno));
    sy_log(SY_LOG_INFO, "publish", "removed the stale socket %s", path);
    return 0;
}

static int listen_socket(struct cp_publisher *pub, char **err)
{
    const char *path = pub->cp->cfg.socket_path;
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return cp__fail(err, -ENAMETOOLONG, "the socket path %s is longer than %zu bytes", path,
                        sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    int rc;
    if ((rc = make_parent_dirs(path, err)) < 0 || (rc = remove_stale_socket(path, err)) < 0)
        return rc;
    /* Created 0600 from the start: no moment when another user could connect. */
    mode_t old = umask(0177);
    rc = uv_pipe_bind(&pub->listener, path);
    umask(old);
    if (rc < 0)
        return cp__fail(err, rc, "cannot bind the socket %s: %s", path, uv_strerror(rc));
    pub->bound = true;
    if (chmod(path, 0600) == -1)
        return cp__fail(err, -errno, "cannot chmod the socket %s: %s", path, strerror(errno));
    if ((rc = uv_listen((uv_stream_t *)&pub->listener, 128, on_connection)) < 0)
        return cp__fail(err, rc, "cannot listen on the socket %s: %s", path, uv_strerror(rc));
    return 0;
}

/* ---- the interface (server.h) ---------------------------------------------------------------- */

int cp__publisher_start(struct cp_server *cp, char **err)
{
    struct cp_publisher *pub = calloc(1, sizeof(*pub));
    if (!pub)
        return cp__fail(err, -ENOMEM, "out of memory");
    pub->cp = cp;
    pub->publish_ms = -1;
    cp->pub = pub;
    if (gethostname(pub->hostname, sizeof(pub->hostname)) != 0)
        snprintf(pub->hostname, sizeof(pub->hostname), "%s", cp->cfg.node_id);
    pub->hostname[sizeof(pub->hostname) - 1] = '\0';

    uv_pipe_init(&cp->loop, &pub->listener, 0);
    pub->listener.data = pub;
    uv_timer_init(&cp->loop, &pub->tick);
    pub->tick.data = pub;
    pub->open_handles = 2;
    int rc = listen_socket(pub, err);
    if (rc < 0) {
        cp__publisher_stop(cp);
        return rc;
    }
    uint64_t tick = (uint64_t)(cp->cfg.heartbeat_ms > 0 ? cp->cfg.heartbeat_ms : 5000);
    uv_timer_start(&pub->tick, on_tick, tick, tick);
    cp_db_on_notify(cp->db, on_notify, pub);
    if ((rc = cp_db_listen(cp->db, CONFIG_CHANNEL)) < 0) {
        cp__publisher_stop(cp);
        return cp__fail(err, rc, "cannot LISTEN for config changes: %s", strerror(-rc));
    }
    sy_log(SY_LOG_INFO, "publish", "data-plane socket %s", cp->cfg.socket_path);
    /* The first compile runs when the database comes up (cp__publisher_db_state). */
    if (cp_db_is_up(cp->db))
        request_compile(pub);
    return 0;
}

void cp__publisher_stop(struct cp_server *cp)
{
    struct cp_publisher *pub = cp->pub;
    if (!pub)
        return;
    cp->pub = NULL;
    pub->stopping = true;
    if (cp->db)
        cp_db_on_notify(cp->db, NULL, NULL);
    if (pub->bound)
        unlink(cp->cfg.socket_path);
    while (pub->conns)
        conn_close(pub->conns);
    uv_close((uv_handle_t *)&pub->listener, on_handle_closed);
    uv_close((uv_handle_t *)&pub->tick, on_handle_closed);
}

void cp__publisher_db_state(struct cp_server *cp, bool up)
{
    struct cp_publisher *pub = cp->pub;
    if (!pub || !up)
        return; /* down: keep serving the table we have */
    request_compile(pub);
    heartbeat(pub);
}

json_t *cp__publisher_status(struct cp_server *cp)
{
    struct cp_publisher *pub = cp->pub;
    json_t *st = json_object();
    json_t *workers = json_array();
    if (!st || !workers) {
        json_decref(st);
        json_decref(workers);
        return NULL;
    }
    json_object_set_new(st, "node", json_string(cp->cfg.node_id));
    json_object_set_new(st, "socket", json_string(cp->cfg.socket_path));
    bool have = pub && pub->table;
    json_object_set_new(st, "config_version",
                        have ? json_integer((json_int_t)pub->version) : json_null());
    json_object_set_new(st, "published_at", have ? json_time(pub->published_ms) : json_null());
    json_object_set_new(st, "compile_ms",
                        have ? json_integer((json_int_t)pub->compile_ms) : json_null());
    json_object_set_new(st, "publish_ms",
                        pub && pub->publish_ms >= 0 ? json_integer(pub->publish_ms) : json_null());
    for (struct pub_conn *c = pub ? pub->conns : NULL; c; c = c->next) {
        if (!c->hello)
            continue;
        json_array_append_new(
            workers, json_pack("{s:s, s:I, s:I, s:I, s:o}", "node", c->node ? c->node : "", "pid",
                               (json_int_t)c->pid, "worker", (json_int_t)c->worker, "version",
                               (json_int_t)c->version, "connected_at", json_time(c->connected_ms)));
    }
    json_object_set_new(st, "workers", workers);
    return st;
}

void cp__publisher_view(struct cp_server *cp, struct cp_publish_view *out)
{
    struct cp_publisher *pub = cp->pub;
    *out = (struct cp_publish_view){.publish_ms = -1};
    if (!pub)
        return;
    if (pub->table) {
        out->version = pub->version;
        out->table = pub->table->data + SY_FRAME_HEADER;
        out->table_len = pub->table->len - SY_FRAME_HEADER;
    }
    for (const struct pub_conn *c = pub->conns; c; c = c->next)
        out->workers += c->hello;
    out->publish_ms = pub->publish_ms;
}
