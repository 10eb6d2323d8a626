/* SPDX-License-Identifier: Apache-2.0 */
/** The master process of the data plane.
 *
 * The master binds one listening socket per worker slot, forks one worker per slot, and then
 * only supervises: it restarts a worker that dies, replaces every worker on SIGHUP (new table,
 * new generation, old one drained), and drains them all on SIGTERM/SIGINT/SIGQUIT. It serves no
 * traffic and runs no event loop: a plain ppoll() over the new workers' ready pipes, with the
 * signals it handles blocked everywhere except inside ppoll(), so a signal is never lost and
 * never handled halfway through a state change. A child inherits nothing of a loop.
 *
 * Why the master keeps every listening socket open for its whole life: with SO_REUSEPORT the
 * kernel hashes each new connection to one socket of the group and queues it there. Were a
 * socket closed when its worker exits, every connection already waiting in its accept queue
 * would be reset. Because the master holds slot i's socket, a replacement worker for slot i
 * (after a crash or on SIGHUP) inherits the very same socket and accepts what queued there in
 * the meantime: reloads and restarts lose no connection. The old and the new worker of a slot
 * share that socket until the old one, told to drain, stops accepting. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sy/buf.h"
#include "sy/log.h"
#include "sy/shm.h"
#include "sy/table.h"
#include "sy/tls_server.h"
#include "sy/util.h"

#include "internal.h"

#define LISTEN_BACKLOG    511
#define READY_TIMEOUT_MS  10000 /* a new generation's worker must be accepting by then */
#define KILL_GRACE_MS     5000  /* beyond drain_timeout_ms before a draining worker is killed */
#define RESTART_BURST     5     /* more restarts than this ... */
#define RESTART_WINDOW_MS 10000 /* ... within this window is a crash loop ... */
#define RESTART_DELAY_MS  1000  /* ... and the next restart of that slot waits this long */

/* ---- crash-loop accounting ------------------------------------------------------------- */

/** The times of a slot's last RESTART_BURST restarts, oldest first from <next>. */
struct restart_history {
    uint64_t at_ms[RESTART_BURST];
    unsigned n;    /* how many of at_ms[] are set */
    unsigned next; /* where the next one goes: the oldest once n == RESTART_BURST */
};

/* How long to wait before restarting a slot with history <h> at <now_ms>: 0 normally,
 * RESTART_DELAY_MS when the slot already restarted RESTART_BURST times within the last
 * RESTART_WINDOW_MS, so that this one would be one too many. */
static uint64_t restart_delay_ms(const struct restart_history *h, uint64_t now_ms)
{
    if (h->n < RESTART_BURST)
        return 0;
    return now_ms - h->at_ms[h->next] < RESTART_WINDOW_MS ? RESTART_DELAY_MS : 0;
}

static void restart_record(struct restart_history *h, uint64_t now_ms)
{
    h->at_ms[h->next] = now_ms;
    h->next = (h->next + 1) % RESTART_BURST;
    if (h->n < RESTART_BURST)
        h->n++;
}

/* ---- state ----------------------------------------------------------------------------- */

enum child_role {
    CHILD_SERVING = 0, /* the worker of its slot */
    CHILD_STARTING,    /* replacement from a SIGHUP, not ready yet; the serving one stays */
    CHILD_RETIRING,    /* told to drain (SIGTERM); killed at its deadline */
    CHILD_KILLED,      /* sent SIGKILL; waiting to be reaped */
    CHILD_MAX,
};

struct child {
    pid_t pid;
    unsigned slot;
    enum child_role role;
    int ready_fd;         /* CHILD_STARTING: read end of its ready pipe, until read; else -1 */
    uint64_t deadline_ms; /* STARTING: ready by then; RETIRING: gone by then; else 0 */
};

struct slot {
    int fd;                 /* listening socket, open for the master's whole life */
    uint64_t restart_at_ms; /* a delayed restart is due then; 0 for none */
    struct restart_history restarts;
};

struct master {
    const struct dp_config *c;
    pid_t pid;
    struct sy_table *table; /* one reference: the table the next worker we fork gets */
    struct slot *slots;
    unsigned n_slots;
    struct child *children;
    size_t n_children, cap_children;
    struct pollfd *pfds; /* cap_children entries */
    bool stopping;
    int status;                /* exit status of dp_master_run() */
    struct stat snapshot_seen; /* the snapshot file as last read, to read it again on change */
    unsigned port;             /* the port the listeners are bound to */
};

struct sy_shm *dp__node_shm;
struct sy_tls_server *dp__listen_tls;

/* Set by the signal handler, which runs only inside ppoll() (the signals are blocked
 * elsewhere), and read and cleared by the loop. */
static volatile sig_atomic_t got_chld, got_hup, got_stop;
static const int handled_signals[] = {SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGQUIT};

static void on_signal(int sig)
{
    if (sig == SIGCHLD)
        got_chld = 1;
    else if (sig == SIGHUP)
        got_hup = 1;
    else if (got_stop < 2)
        got_stop++; /* the other handled signals are blocked while this runs */
}

/* ---- children -------------------------------------------------------------------------- */

static ssize_t child_find(const struct master *m, pid_t pid)
{
    for (size_t i = 0; i < m->n_children; i++)
        if (m->children[i].pid == pid)
            return (ssize_t)i;
    return -1;
}

static ssize_t child_in_slot(const struct master *m, unsigned slot, enum child_role role)
{
    for (size_t i = 0; i < m->n_children; i++)
        if (m->children[i].slot == slot && m->children[i].role == role)
            return (ssize_t)i;
    return -1;
}

static void close_ready(struct child *ch)
{
    if (ch->ready_fd != -1) {
        close(ch->ready_fd);
        ch->ready_fd = -1;
    }
}

/* "exited with status 3" or "was killed by signal 11 (Segmentation fault)". */
static void describe_status(int status, char *out, size_t size)
{
    if (WIFEXITED(status))
        snprintf(out, size, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(out, size, "was killed by signal %d (%s)%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(out, size, "ended with wait status %#x", (unsigned)status);
}

/* ---- the snapshot ----------------------------------------------------------------------- */

static bool same_file_state(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Without --table the workers take their tables from the control plane, and worker 0 writes
 * each to the snapshot. A worker forked later (a restart, a SIGHUP) should start from that
 * rather than from what the master read at start-up: take the snapshot when it changed and is
 * newer. A bad one is only logged: the control plane sends the current table anyway. */
static void refresh_from_snapshot(struct master *m)
{
    const char *path = m->c->snapshot_path;
    struct sy_table *t = NULL;
    struct stat st;
    char *err = NULL;

    if (m->c->table_path != NULL || path == NULL || stat(path, &st) == -1 ||
        same_file_state(&st, &m->snapshot_seen))
        return;
    m->snapshot_seen = st;
    if (dp__snapshot_load(path, &t, &err) != 0) {
        sy_log(SY_LOG_WARN, "master", "snapshot: %s; new workers keep table version %llu",
               err ? err : "cannot load the table", (unsigned long long)m->table->version);
        free(err);
        return;
    }
    if (t->version <= m->table->version) {
        sy_table_unref(t);
        return;
    }
    sy_log(SY_LOG_INFO, "master", "new workers start with table version %llu from snapshot %s",
           (unsigned long long)t->version, path);
    sy_table_unref(m->table);
    m->table = t;
}

/* In the child: shed what belongs to the master, then become the worker of <slot>. */
__attribute__((noreturn)) static void run_worker(struct master *m, unsigned slot, int ready_fd)
{
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigset_t none;

    /* Defaults first, then unblock, so that nothing pending runs the master's handler. SIGPIPE
     * stays ignored (main.c): a worker writes to sockets a client may have closed. */
    for (size_t i = 0; i < SY_ARRAY_LEN(handled_signals); i++)
        sigaction(handled_signals[i], &dfl, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* Its own process group, so a terminal's Ctrl-C reaches the master only, which drains the
     * workers in order; and a SIGTERM (drain) should the master die without doing so. */
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != m->pid)
        _exit(0);

    for (unsigned i = 0; i < m->n_slots; i++)
        if (i != slot)
            close(m->slots[i].fd);
    for (size_t i = 0; i < m->n_children; i++)
        close_ready(&m->children[i]);

    sy_log_set_ident("dataplane-worker");
    /* The table came through fork (copy-on-write): the master's reference is now the worker's. */
    _exit(dp_worker_run(m->c, m->slots[slot].fd, slot, ready_fd, m->table));
}

/* Fork a worker for <slot> in <role>: CHILD_SERVING (start, restart) or CHILD_STARTING
 * (SIGHUP: with a ready pipe and a deadline). */
static int spawn(struct master *m, unsigned slot, enum child_role role)
{
    int pipefd[2] = {-1, -1};

    refresh_from_snapshot(m);
    if (role == CHILD_STARTING && pipe2(pipefd, O_CLOEXEC) == -1) {
        int e = errno;
        sy_log(SY_LOG_ERROR, "master", "worker %u: pipe: %s", slot, strerror(e));
        return -e;
    }
    if (m->n_children == m->cap_children) {
        m->cap_children = m->cap_children ? 2 * m->cap_children : 2u * m->n_slots + 4;
        m->children = sy_xrealloc(m->children, m->cap_children * sizeof(*m->children));
        m->pfds = sy_xrealloc(m->pfds, m->cap_children * sizeof(*m->pfds));
    }
    fflush(NULL); /* or the child would write our buffered output a second time */
    pid_t pid = fork();
    if (pid == -1) {
        int e = errno;
        sy_log(SY_LOG_ERROR, "master", "worker %u: fork: %s", slot, strerror(e));
        if (pipefd[0] != -1) {
            close(pipefd[0]);
            close(pipefd[1]);
        }
        return -e;
    }
    if (pid == 0) {
        if (pipefd[0] != -1)
            close(pipefd[0]);
        run_worker(m, slot, pipefd[1]);
    }
    if (pipefd[1] != -1) {
        close(pipefd[1]);
        fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
    }
    m->children[m->n_children++] = (struct child){
        .pid = pid,
        .slot = slot,
        .role = role,
        .ready_fd = pipefd[0],
        .deadline_ms = role == CHILD_STARTING ? sy_now_ms() + READY_TIMEOUT_MS : 0,
    };
    sy_log(SY_LOG_INFO, "master", "worker %u started: pid=%d%s", slot, (int)pid,
           role == CHILD_STARTING ? " (replacement, waiting until it is ready)" : "");
    return 0;
}

/* Restart <slot>, whose worker is gone, now or after a crash-loop delay. */
static void schedule_restart(struct master *m, unsigned slot)
{
    struct slot *s = &m->slots[slot];
    uint64_t now = sy_now_ms();
    uint64_t delay = restart_delay_ms(&s->restarts, now);

    if (delay != 0) {
        sy_log(SY_LOG_WARN, "master",
               "worker %u restarted %d times within %d s; next restart in %llu ms", slot,
               RESTART_BURST, RESTART_WINDOW_MS / 1000, (unsigned long long)delay);
    } else if (spawn(m, slot, CHILD_SERVING) == 0) {
        restart_record(&s->restarts, now);
        return;
    } else {
        delay = RESTART_DELAY_MS;
    }
    s->restart_at_ms = now + delay;
}

static void retire(struct master *m, size_t i, uint64_t now)
{
    struct child *ch = &m->children[i];
    close_ready(ch);
    kill(ch->pid, SIGTERM);
    ch->role = CHILD_RETIRING;
    ch->deadline_ms = now + m->c->drain_timeout_ms + KILL_GRACE_MS;
}

static void kill_now(struct master *m, size_t i)
{
    struct child *ch = &m->children[i];
    close_ready(ch);
    kill(ch->pid, SIGKILL);
    ch->role = CHILD_KILLED;
    ch->deadline_ms = 0;
}

static void child_exited(struct master *m, pid_t pid, int status)
{
    ssize_t i = child_find(m, pid);
    char how[128];

    if (i < 0)
        return;
    struct child ch = m->children[i];
    close_ready(&ch);
    m->children[i] = m->children[--m->n_children];
    describe_status(status, how, sizeof(how));

    switch (ch.role) {
    case CHILD_SERVING:
        if (m->stopping) {
            sy_log(SY_LOG_INFO, "master", "worker %u (pid %d) %s", ch.slot, (int)pid, how);
            break;
        }
        /* A replacement on its way takes the slot over; should it fail, it restarts then. */
        if (child_in_slot(m, ch.slot, CHILD_STARTING) >= 0) {
            sy_log(SY_LOG_WARN, "master", "worker %u (pid %d) %s; its replacement takes over",
                   ch.slot, (int)pid, how);
            break;
        }
        sy_log(SY_LOG_WARN, "master", "worker %u (pid %d) %s; restarting it", ch.slot, (int)pid,
               how);
        /* It died with requests in flight: give its share of the node-wide in-flight counts
         * back, or least-connections and concurrency limits would count them forever. */
        if (dp__node_shm && child_in_slot(m, ch.slot, CHILD_RETIRING) < 0)
            sy_shm_worker_reap(dp__node_shm, ch.slot);
        schedule_restart(m, ch.slot);
        break;
    case CHILD_STARTING:
        sy_log(SY_LOG_WARN, "master", "new worker %u (pid %d) %s before it was ready%s", ch.slot,
               (int)pid, how, m->stopping ? "" : "; the running worker stays");
        if (!m->stopping && child_in_slot(m, ch.slot, CHILD_SERVING) < 0)
            schedule_restart(m, ch.slot);
        break;
    case CHILD_RETIRING:
        sy_log(WIFEXITED(status) && WEXITSTATUS(status) == 0 ? SY_LOG_INFO : SY_LOG_WARN, "master",
               "worker %u (pid %d) drained and %s", ch.slot, (int)pid, how);
        break;
    case CHILD_KILLED:
    case CHILD_MAX:
        sy_log(SY_LOG_DEBUG, "master", "worker %u (pid %d) %s", ch.slot, (int)pid, how);
        break;
    }
}

static void reap(struct master *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        child_exited(m, pid, status);
}

/* The ready pipe of new worker <i> is readable: one byte says it accepts, so the worker it
 * replaces drains. End of file without it says nothing: its exit or its deadline decides. */
static void child_ready(struct master *m, size_t i)
{
    struct child *ch = &m->children[i];
    char byte;
    ssize_t n = read(ch->ready_fd, &byte, 1);

    if (n == -1 && (errno == EAGAIN || errno == EINTR))
        return;
    close_ready(ch);
    if (n != 1)
        return;

    ssize_t old = child_in_slot(m, ch->slot, CHILD_SERVING);
    ch->role = CHILD_SERVING;
    ch->deadline_ms = 0;
    m->slots[ch->slot].restart_at_ms = 0;
    if (old < 0) {
        sy_log(SY_LOG_INFO, "master", "worker %u (pid %d) is ready", ch->slot, (int)ch->pid);
        return;
    }
    sy_log(SY_LOG_INFO, "master", "worker %u (pid %d) is ready; old worker pid=%d drains", ch->slot,
           (int)ch->pid, (int)m->children[old].pid);
    retire(m, (size_t)old, sy_now_ms());
}

/* ---- signals --------------------------------------------------------------------------- */

/* ---- TLS ------------------------------------------------------------------------------- */

/* Load --tls-cert/--tls-key into dp__listen_tls: at start (<reloading> false) a bad file is
 * fatal; on SIGHUP it is logged and the certificate in force stays, for the new workers too. The
 * workers inherit the context through fork, so every worker of a generation serves the same
 * certificate, and TLS session tickets made by one are accepted by the others. */
static int load_tls(struct master *m, bool reloading)
{
    struct sy_tls_server *t = NULL;
    char *err = NULL;

    if (m->c->tls_cert == NULL)
        return 0;
    if (sy_tls_server_new(m->c->tls_cert, m->c->tls_key, &t, &err) != 0) {
        if (!reloading)
            fprintf(stderr, "switchyard-dataplane: %s\n", err);
        else
            sy_log(SY_LOG_ERROR, "master",
                   "reload: %s; new workers keep serving certificate serial %s", err,
                   dp__listen_tls->serial);
        free(err);
        return -EINVAL;
    }
    sy_log(SY_LOG_INFO, "master", "%sTLS certificate serial %s, %s, expires %s",
           reloading ? "reload: " : "", t->serial, t->subject, t->not_after);
    sy_tls_server_free(dp__listen_tls); /* the running workers have their own copy */
    dp__listen_tls = t;
    return 0;
}

/* SIGHUP: load the table again and replace every worker with one that serves it. */
static void reload(struct master *m)
{
    const char *path = m->c->table_path;

    if (m->stopping) {
        sy_log(SY_LOG_INFO, "master", "SIGHUP ignored: shutting down");
        return;
    }
    load_tls(m, true);
    if (path != NULL) {
        struct sy_table *t = NULL;
        char *err = NULL;
        if (sy_table_load_file(path, &t, &err) != 0) {
            /* The loader's message names the file. */
            sy_log(SY_LOG_ERROR, "master", "reload: %s; the running workers stay",
                   err ? err : "cannot load the table");
            free(err);
            return;
        }
        sy_table_unref(m->table);
        m->table = t;
        sy_log(SY_LOG_INFO, "master", "reload: table version %llu from %s; replacing workers",
               (unsigned long long)t->version, path);
    } else {
        sy_log(SY_LOG_INFO, "master", "reload: no --table set; replacing workers%s",
               m->c->snapshot_path ? " (they start from the snapshot when it is newer)" : "");
    }

    uint64_t now = sy_now_ms();
    for (unsigned slot = 0; slot < m->n_slots; slot++) {
        /* A replacement from an earlier SIGHUP still starting is superseded; it may already be
         * accepting, so it drains rather than dies. */
        ssize_t pending = child_in_slot(m, slot, CHILD_STARTING);
        if (pending >= 0)
            retire(m, (size_t)pending, now);
        if (spawn(m, slot, CHILD_STARTING) == 0)
            m->slots[slot].restart_at_ms = 0;
    }
}

static void begin_stop(struct master *m, uint64_t now)
{
    m->stopping = true;
    sy_log(SY_LOG_INFO, "master", "shutting down: draining %zu worker(s), at most %u ms",
           m->n_children, m->c->drain_timeout_ms + KILL_GRACE_MS);
    for (size_t i = 0; i < m->n_children; i++)
        if (m->children[i].role != CHILD_KILLED)
            retire(m, i, now);
}

static void force_stop(struct master *m)
{
    sy_log(SY_LOG_WARN, "master", "second stop signal: killing %zu worker(s)", m->n_children);
    for (size_t i = 0; i < m->n_children; i++)
        kill_now(m, i);
    m->status = 1;
}

/* ---- timers ---------------------------------------------------------------------------- */

static void run_timers(struct master *m, uint64_t now)
{
    /* By index: schedule_restart() may append to (and move) the array. */
    for (size_t i = 0; i < m->n_children; i++) {
        struct child *ch = &m->children[i];
        if (ch->deadline_ms == 0 || ch->deadline_ms > now)
            continue;
        unsigned slot = ch->slot;
        if (ch->role == CHILD_STARTING) {
            bool serving = child_in_slot(m, slot, CHILD_SERVING) >= 0;
            sy_log(SY_LOG_WARN, "master",
                   "new worker %u (pid %d) not ready after %d ms; killing it%s", slot, (int)ch->pid,
                   READY_TIMEOUT_MS, serving ? ", the running worker stays" : "");
            kill_now(m, i);
            if (!serving)
                schedule_restart(m, slot);
        } else if (ch->role == CHILD_RETIRING) {
            sy_log(SY_LOG_WARN, "master",
                   "worker %u (pid %d) still draining after %u ms; killing it", slot, (int)ch->pid,
                   m->c->drain_timeout_ms + KILL_GRACE_MS);
            kill_now(m, i);
        }
    }
    if (m->stopping)
        return;
    for (unsigned slot = 0; slot < m->n_slots; slot++) {
        struct slot *s = &m->slots[slot];
        if (s->restart_at_ms == 0 || s->restart_at_ms > now)
            continue;
        s->restart_at_ms = 0;
        if (spawn(m, slot, CHILD_SERVING) == 0)
            restart_record(&s->restarts, now);
        else
            s->restart_at_ms = now + RESTART_DELAY_MS;
    }
}

/* Milliseconds until the next deadline, or -1 for none. */
static int64_t next_timeout_ms(const struct master *m, uint64_t now)
{
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < m->n_children; i++)
        if (m->children[i].deadline_ms != 0)
            next = SY_MIN(next, m->children[i].deadline_ms);
    for (unsigned slot = 0; !m->stopping && slot < m->n_slots; slot++)
        if (m->slots[slot].restart_at_ms != 0)
            next = SY_MIN(next, m->slots[slot].restart_at_ms);
    if (next == UINT64_MAX)
        return -1;
    return next > now ? (int64_t)(next - now) : 0;
}

/* ---- start-up -------------------------------------------------------------------------- */

static int write_port_file(const char *path, unsigned port)
{
    struct sy_buf tmp = SY_BUF_INIT;
    int rc = 0;

    /* Written aside and renamed, so that a reader sees no file or a whole one. */
    sy_buf_printf(&tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp.data, "w");
    if (f == NULL)
        goto fail;
    fprintf(f, "%u\n", port);
    if (fclose(f) != 0)
        goto fail;
    if (rename(tmp.data, path) == -1)
        goto fail;
    sy_buf_free(&tmp);
    return 0;

fail:
    rc = -errno;
    fprintf(stderr, "switchyard-dataplane: --port-file: cannot write %s: %s\n", path,
            strerror(errno));
    unlink(tmp.data);
    sy_buf_free(&tmp);
    return rc;
}

static int set_int_opt(int fd, int level, int name, int value)
{
    return setsockopt(fd, level, name, &value, sizeof(value));
}

/* Bind one listening socket per slot to the configured address. With port 0 the first takes
 * what the kernel picks and the others join it there. */
static int bind_listeners(struct master *m)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char *err = NULL, where[INET6_ADDRSTRLEN + 16];
    const char *what = "socket";

    if (dp__listen_parse(m->c->listen, &ss, &len, &err) != 0) {
        fprintf(stderr, "switchyard-dataplane: --listen: %s\n", err);
        free(err);
        return -EINVAL;
    }
    for (unsigned i = 0; i < m->n_slots; i++) {
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1)
            goto fail;
        m->slots[i].fd = fd;
        what = "setsockopt";
        if (set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1) == -1 ||
            set_int_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1) == -1)
            goto fail;
        /* [::] serves IPv4 too, whatever net.ipv6.bindv6only says. */
        if (ss.ss_family == AF_INET6 &&
            IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr) &&
            set_int_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0) == -1)
            goto fail;
        what = "bind";
        if (bind(fd, (struct sockaddr *)&ss, len) == -1)
            goto fail;
        what = "listen";
        if (listen(fd, LISTEN_BACKLOG) == -1)
            goto fail;
        if (i == 0) {
            /* Learn the port the kernel picked for port 0; the other slots bind to it. */
            what = "getsockname";
            if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1)
                goto fail;
        }
    }

    dp__addr_format((struct sockaddr *)&ss, where, sizeof(where));
    m->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                       : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    sy_log(SY_LOG_INFO, "master", "listening on %s", where);
    printf("switchyard-dataplane listening on %s://%s\n", dp__listen_tls ? "https" : "http", where);
    fflush(stdout);
    if (m->c->port_file != NULL) {
        unsigned port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                                 : ntohs(((struct sockaddr_in *)&ss)->sin_port);
        return write_port_file(m->c->port_file, port);
    }
    return 0;

fail:;
    int e = errno;
    dp__addr_format((struct sockaddr *)&ss, where, sizeof(where));
    fprintf(stderr, "switchyard-dataplane: cannot listen on %s: %s: %s\n", where, what,
            strerror(e));
    return -e;
}

/* The node's shared memory: created once, before the first fork, so that every worker of
 * every generation maps the same circuits, limiters and counters. Without it the data plane
 * still serves, each worker keeping its own view. */
static void create_shm(struct master *m)
{
    char *err = NULL;
    const char *path = m->c->shm_path;
    char tmp[64];
    /* A slot per worker; a replacement reuses the slot of the worker it replaces. */
    struct sy_shm_caps caps = {.max_workers = m->n_slots};
    if (!path) {
        /* Nobody else will look for it: map it and remove the name at once, so nothing is
         * left in /dev/shm whatever way this process ends. */
        snprintf(tmp, sizeof(tmp), "/dev/shm/switchyard-%d", (int)getpid());
        path = tmp;
    }
    if (sy_shm_create(path, &caps, &dp__node_shm, &err) != 0) {
        sy_log(SY_LOG_ERROR, "master",
               "no shared memory (%s): circuits, rate limits and counters are per worker",
               err ? err : "cannot create the segment");
        free(err);
        return;
    }
    if (!m->c->shm_path)
        unlink(tmp);
    sy_log(SY_LOG_INFO, "master", "shared memory %s (%zu bytes)",
           m->c->shm_path ? m->c->shm_path : "(anonymous)", dp__node_shm->size);
}

/* The snapshot's key, before the snapshot is read and before any worker may write one. */
static int load_snapshot_key(struct master *m)
{
    char *err = NULL;
    if (dp__snapshot_key_init(m->c, &err) != 0) {
        fprintf(stderr, "switchyard-dataplane: %s\n", err ? err : "no snapshot key");
        free(err);
        return -EINVAL;
    }
    return 0;
}

/* The table the workers start with: from --table (a bad one is fatal); else from the
 * --snapshot the workers wrote last time (static stability: serve the last good table while the
 * control plane is away; a bad snapshot is only a warning, since the control plane will send
 * a table); else an empty one that routes nothing, so /readyz says not ready until a table
 * arrives. */
static int load_initial_table(struct master *m)
{
    const char *snap = m->c->snapshot_path;
    char *err = NULL;

    if (m->c->table_path == NULL && snap != NULL && stat(snap, &m->snapshot_seen) == 0) {
        if (dp__snapshot_load(snap, &m->table, &err) == 0) {
            sy_log(SY_LOG_INFO, "master",
                   "no --table set: table version %llu loaded from snapshot %s",
                   (unsigned long long)m->table->version, snap);
            return 0;
        }
        /* The loader's message names the file. */
        sy_log(SY_LOG_WARN, "master",
               "snapshot unusable: %s; starting with an empty table until the control plane "
               "sends one",
               err ? err : "cannot load the table");
        SY_FREE(err);
    }
    if (m->c->table_path == NULL) {
        m->table = sy_xcalloc(1, sizeof(*m->table));
        atomic_init(&m->table->refs, 1);
        sy_log(SY_LOG_WARN, "master", "no --table set: starting with an empty routing table%s",
               m->c->control_socket ? " until the control plane sends one" : "");
        return 0;
    }
    if (sy_table_load_file(m->c->table_path, &m->table, &err) != 0) {
        fprintf(stderr, "switchyard-dataplane: --table: %s\n", err ? err : "cannot load the table");
        free(err);
        return -EINVAL;
    }
    sy_log(SY_LOG_INFO, "master", "table version %llu loaded from %s",
           (unsigned long long)m->table->version, m->c->table_path);
    return 0;
}

/* ---- the loop -------------------------------------------------------------------------- */

static void supervise(struct master *m, const sigset_t *wait_mask)
{
    for (;;) {
        if (m->stopping && m->n_children == 0)
            return;

        nfds_t n_pfds = 0;
        for (size_t i = 0; i < m->n_children; i++)
            if (m->children[i].ready_fd != -1)
                m->pfds[n_pfds++] =
                    (struct pollfd){.fd = m->children[i].ready_fd, .events = POLLIN};
        int64_t timeout = next_timeout_ms(m, sy_now_ms());
        struct timespec ts = {.tv_sec = timeout / 1000, .tv_nsec = (timeout % 1000) * 1000000};
        int n = ppoll(n_pfds ? m->pfds : NULL, n_pfds, timeout >= 0 ? &ts : NULL, wait_mask);
        if (n == -1 && errno != EINTR) {
            sy_log(SY_LOG_ERROR, "master", "ppoll: %s", strerror(errno));
            n = 0;
        }

        if (got_chld) {
            got_chld = 0;
            reap(m);
        }
        for (int stops = got_stop; stops > 0; stops--) {
            if (!m->stopping)
                begin_stop(m, sy_now_ms());
            else
                force_stop(m);
        }
        got_stop = 0;
        if (got_hup) {
            got_hup = 0;
            reload(m);
        }
        /* Match by fd: the array of children may have changed since ppoll() was set up. */
        for (nfds_t p = 0; n > 0 && p < n_pfds; p++) {
            if (m->pfds[p].revents == 0)
                continue;
            for (size_t i = 0; i < m->n_children; i++) {
                if (m->children[i].ready_fd == m->pfds[p].fd &&
                    m->children[i].role == CHILD_STARTING) {
                    child_ready(m, i);
                    break;
                }
            }
        }
        run_timers(m, sy_now_ms());
    }
}

int dp__encode_table(const char *in, const char *out)
{
    struct sy_table *t = NULL;
    struct sy_buf b = SY_BUF_INIT, tmp = SY_BUF_INIT;
    char *err = NULL;
    int fd = -1, status = 1;

    if (sy_table_load_file(in, &t, &err) != 0) {
        fprintf(stderr, "switchyard-dataplane: --encode-table: %s\n",
                err ? err : "cannot load the table");
        goto fail;
    }
    sy_table_encode(t, &b);
    /* Mode 0600 and written aside: the bytes hold the providers' credentials. */
    sy_buf_printf(&tmp, "%s.tmp.%d", out, (int)getpid());
    fd = open(tmp.data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd == -1 || fchmod(fd, 0600) == -1 || write(fd, b.data, b.len) != (ssize_t)b.len ||
        close(fd) == -1 || (fd = -1, rename(tmp.data, out) == -1)) {
        fprintf(stderr, "switchyard-dataplane: --encode-table: %s: %s\n", out, strerror(errno));
        if (fd != -1)
            close(fd);
        unlink(tmp.data);
        goto fail;
    }
    status = 0;

fail:
    if (b.data)
        explicit_bzero(b.data, b.len);
    sy_buf_free(&b);
    sy_buf_free(&tmp);
    sy_table_unref(t);
    free(err);
    return status;
}

int dp_master_run(const struct dp_config *c)
{
    struct master m = {.c = c, .pid = getpid(), .n_slots = c->workers};
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_NOCLDSTOP};
    struct sigaction old_actions[SY_ARRAY_LEN(handled_signals)];
    sigset_t ours, old_mask, wait_mask;

    if (c->encode_table[0] != NULL)
        return dp__encode_table(c->encode_table[0], c->encode_table[1]);
    SY_REQUIRE(c->workers >= 1);
    m.slots = sy_xcalloc(m.n_slots, sizeof(*m.slots));
    for (unsigned i = 0; i < m.n_slots; i++)
        m.slots[i].fd = -1;

    /* Blocked from here on except inside ppoll(); handlers set before the first fork. */
    got_chld = got_hup = got_stop = 0;
    sigemptyset(&ours);
    for (size_t i = 0; i < SY_ARRAY_LEN(handled_signals); i++)
        sigaddset(&ours, handled_signals[i]);
    sigprocmask(SIG_BLOCK, &ours, &old_mask);
    wait_mask = old_mask;
    for (size_t i = 0; i < SY_ARRAY_LEN(handled_signals); i++)
        sigdelset(&wait_mask, handled_signals[i]);
    sa.sa_mask = ours;
    for (size_t i = 0; i < SY_ARRAY_LEN(handled_signals); i++)
        sigaction(handled_signals[i], &sa, &old_actions[i]);

    m.status = 1;
    if (load_tls(&m, false) != 0 || load_snapshot_key(&m) != 0 || load_initial_table(&m) != 0 ||
        bind_listeners(&m) != 0)
        goto out;
    create_shm(&m);
    m.status = 0;

    for (unsigned i = 0; i < m.n_slots; i++)
        if (spawn(&m, i, CHILD_SERVING) != 0)
            m.slots[i].restart_at_ms = sy_now_ms() + RESTART_DELAY_MS;
    supervise(&m, &wait_mask);
    sy_log(SY_LOG_INFO, "master", "all workers gone; exiting with status %d", m.status);

out:
    for (size_t i = 0; i < SY_ARRAY_LEN(handled_signals); i++)
        sigaction(handled_signals[i], &old_actions[i], NULL);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    for (unsigned i = 0; i < m.n_slots; i++)
        if (m.slots[i].fd != -1)
            close(m.slots[i].fd);
    sy_table_unref(m.table);
    sy_tls_server_free(dp__listen_tls);
    dp__listen_tls = NULL;
    if (dp__node_shm) {
        sy_shm_detach(dp__node_shm);
        dp__node_shm = NULL;
    }
    free(m.slots);
    free(m.children);
    free(m.pfds);
    return m.status;
}
