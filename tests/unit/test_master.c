/* SPDX-License-Identifier: Apache-2.0 */
/** The data plane's master: crash-loop accounting, and a whole master run (bind, port file,
 * restart, SIGHUP replacement, drain) with a stand-in worker defined below. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "../../dataplane/src/master.c"

/* ---- a stand-in worker ----------------------------------------------------------------- */

/* Inherited through fork: set by a test before it starts the master. */
static bool stub_ignores_sigterm;
static volatile sig_atomic_t stub_draining;

static void stub_on_term(int sig)
{
    stub_draining = 1;
}

/* Answers each connection with "pid=<its pid> slot=<index>" and closes it; says ready at once;
 * drains on SIGTERM (or ignores it). */
int dp_worker_run(const struct dp_config *c, int listen_fd, unsigned index, int ready_fd,
                  struct sy_table *table)
{
    struct sigaction sa = {.sa_handler = stub_ignores_sigterm ? SIG_IGN : stub_on_term};
    sigaction(SIGTERM, &sa, NULL);
    if (ready_fd != -1) {
        ssize_t w = write(ready_fd, "r", 1);
        (void)w;
        close(ready_fd);
    }
    while (!stub_draining) {
        struct pollfd p = {.fd = listen_fd, .events = POLLIN};
        if (poll(&p, 1, -1) <= 0)
            continue;
        int fd = accept(listen_fd, NULL, NULL);
        if (fd == -1)
            continue;
        char buf[256];
        int n = snprintf(buf, sizeof(buf), "pid=%d slot=%u\n", (int)getpid(), index);
        ssize_t w = write(fd, buf, (size_t)n);
        (void)w;
        close(fd);
    }
    sy_table_unref(table);
    return 0;
}

/* ---- crash-loop accounting ------------------------------------------------------------- */

static void five_quick_restarts_are_free_the_sixth_waits(void **state)
{
    struct restart_history h = {0};
    for (uint64_t t = 1000; t < 1005; t++) {
        assert_int_equal(restart_delay_ms(&h, t), 0);
        restart_record(&h, t);
    }
    assert_int_equal(restart_delay_ms(&h, 1005), RESTART_DELAY_MS);
    /* The oldest of the five leaves the window 10 s after it happened. */
    assert_int_equal(restart_delay_ms(&h, 1000 + RESTART_WINDOW_MS - 1), RESTART_DELAY_MS);
    assert_int_equal(restart_delay_ms(&h, 1000 + RESTART_WINDOW_MS), 0);
}

static void a_crash_loop_keeps_restarting_once_a_second(void **state)
{
    struct restart_history h = {0};
    uint64_t t = 50000;
    for (int i = 0; i < 5; i++)
        restart_record(&h, t++);
    /* Each delayed restart is recorded too, so the slot stays throttled while it crashes. */
    for (int i = 0; i < 20; i++) {
        uint64_t d = restart_delay_ms(&h, t);
        assert_int_equal(d, RESTART_DELAY_MS);
        t += d;
        restart_record(&h, t);
    }
}

static void restarts_spread_over_time_are_never_delayed(void **state)
{
    struct restart_history h = {0};
    for (uint64_t t = 0; t < 100 * 3000; t += 3000) {
        assert_int_equal(restart_delay_ms(&h, t), 0);
        restart_record(&h, t);
    }
}

static void exit_statuses_are_described(void **state)
{
    char out[128];
    describe_status(3 << 8, out, sizeof(out));
    assert_string_equal(out, "exited with status 3");
    describe_status(SIGKILL, out, sizeof(out));
    assert_non_null(strstr(out, "was killed by signal 9"));
}

/* ---- a whole master -------------------------------------------------------------------- */

struct run {
    pid_t master;
    char port_file[64];
    unsigned port;
};

static void start_master(struct run *r, unsigned workers)
{
    snprintf(r->port_file, sizeof(r->port_file), "/tmp/sy-test-master-%d.port", (int)getpid());
    unlink(r->port_file);
    fflush(NULL);
    r->master = fork();
    assert_true(r->master != -1);
    if (r->master == 0) {
        struct dp_config c = {
            .listen = "127.0.0.1:0",
            .workers = workers,
            .port_file = r->port_file,
            .drain_timeout_ms = 1000,
        };
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, STDOUT_FILENO);
        sy_log_set_level("error");
        _exit(dp_master_run(&c));
    }
    /* The port file appears whole, once every socket listens. */
    for (int i = 0; i < 500; i++) {
        FILE *f = fopen(r->port_file, "r");
        if (f != NULL) {
            char line[32] = "";
            assert_non_null(fgets(line, sizeof(line), f));
            fclose(f);
            assert_non_null(strchr(line, '\n'));
            r->port = (unsigned)atoi(line);
            assert_true(r->port > 0 && r->port < 65536);
            return;
        }
        usleep(10000);
    }
    fail_msg("no port file after 5 s");
}

/* One request: the pid of the worker that answered it. */
static pid_t ask(const struct run *r)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd != -1);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[128] = "";
    size_t len = 0;
    for (ssize_t n; (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0;)
        len += (size_t)n;
    close(fd);
    assert_true(strncmp(buf, "pid=", 4) == 0);
    return (pid_t)atoi(buf + 4);
}

static int wait_master(const struct run *r)
{
    int status;
    for (int i = 0; i < 1000; i++) {
        pid_t p = waitpid(r->master, &status, WNOHANG);
        if (p == r->master) {
            unlink(r->port_file);
            assert_true(WIFEXITED(status));
            return WEXITSTATUS(status);
        }
        usleep(10000);
    }
    kill(r->master, SIGKILL);
    fail_msg("master still running after 10 s");
    return -1;
}

static bool gone(pid_t pid)
{
    for (int i = 0; i < 500; i++) {
        if (kill(pid, 0) == -1 && errno == ESRCH)
            return true;
        usleep(10000);
    }
    return false;
}

static void a_master_restarts_a_dead_worker_and_replaces_on_sighup(void **state)
{
    struct run r;
    start_master(&r, 1);

    pid_t first = ask(&r);
    assert_int_equal(ask(&r), first);

    /* A worker killed outright is replaced in its slot; the request waits in the queue of the
     * socket the master kept open, and is answered by the new worker. */
    kill(first, SIGKILL);
    pid_t second = ask(&r);
    assert_true(second != first);

    /* SIGHUP: a new worker, and the old one drains away once the new one is ready. Twice. */
    kill(r.master, SIGHUP);
    assert_true(gone(second));
    pid_t third = ask(&r);
    assert_true(third != second);
    kill(r.master, SIGHUP);
    kill(r.master, SIGHUP);
    assert_true(gone(third));
    assert_true(ask(&r) != third);

    kill(r.master, SIGTERM);
    assert_int_equal(wait_master(&r), 0);
}

static void every_slot_gets_a_worker(void **state)
{
    struct run r;
    start_master(&r, 3);
    pid_t seen[3] = {0};
    unsigned n = 0;
    /* The kernel spreads connections over the three sockets by hash; 200 tries find them. */
    for (int i = 0; i < 200 && n < 3; i++) {
        pid_t p = ask(&r);
        bool known = false;
        for (unsigned j = 0; j < n; j++)
            known |= seen[j] == p;
        if (!known)
            seen[n++] = p;
    }
    assert_int_equal(n, 3);
    kill(r.master, SIGINT);
    assert_int_equal(wait_master(&r), 0);
}

static void a_second_stop_signal_kills_the_workers_and_exits_1(void **state)
{
    struct run r;
    stub_ignores_sigterm = true;
    start_master(&r, 2);
    pid_t w = ask(&r);
    kill(r.master, SIGTERM);
    usleep(100000);
    assert_int_equal(kill(w, 0), 0); /* still draining: it ignores SIGTERM */
    kill(r.master, SIGINT);
    assert_int_equal(wait_master(&r), 1);
    assert_true(gone(w));
    stub_ignores_sigterm = false;
}

static void a_master_that_cannot_bind_returns_1(void **state)
{
    /* TEST-NET-1 is on no interface of this host. */
    struct dp_config c = {.listen = "192.0.2.1:0", .workers = 2};
    sy_log_set_level("error");
    assert_int_equal(dp_master_run(&c), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(five_quick_restarts_are_free_the_sixth_waits),
        cmocka_unit_test(a_crash_loop_keeps_restarting_once_a_second),
        cmocka_unit_test(restarts_spread_over_time_are_never_delayed),
        cmocka_unit_test(exit_statuses_are_described),
        cmocka_unit_test(a_master_restarts_a_dead_worker_and_replaces_on_sighup),
        cmocka_unit_test(every_slot_gets_a_worker),
        cmocka_unit_test(a_second_stop_signal_kills_the_workers_and_exits_1),
        cmocka_unit_test(a_master_that_cannot_bind_returns_1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
