/* SPDX-License-Identifier: Apache-2.0 */
/* switchyard-mockprovider: command line, listening socket(s), worker processes, signals.
 *
 * With --workers 1 (the default) the process serves by itself. With more, the parent reserves
 * the port (bound, not listening, so the kernel never hands it a connection), forks N workers
 * that each bind their own SO_REUSEPORT listener to it, waits until all are accepting, then
 * publishes the port and forwards SIGTERM/SIGINT to them. */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "sy/log.h"
#include "sy/util.h"

#define MAX_WORKERS 256

struct options {
    const char *listen;
    const char *port_file;
    const char *tls_cert;
    const char *tls_key;
    unsigned workers;
    bool quiet;
    bool verbose;
};

static void usage(FILE *to)
{
    fputs("usage: switchyard-mockprovider [--listen HOST:PORT] [--port-file FILE]\n"
          "                               [--tls-cert FILE --tls-key FILE] [--workers N]\n"
          "                               [--quiet] [--verbose]\n"
          "A mock OpenAI/Anthropic provider for tests and benchmarks; see README.md.\n",
          to);
}

static int parse_options(struct options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"port-file", required_argument, NULL, 'p'},
        {"tls-cert", required_argument, NULL, 'c'},
        {"tls-key", required_argument, NULL, 'k'},
        {"workers", required_argument, NULL, 'w'},
        {"quiet", no_argument, NULL, 'q'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){.listen = "127.0.0.1:0", .workers = 1};
    int ch;
    while ((ch = getopt_long(argc, argv, "l:p:c:k:w:qvh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            o->listen = optarg;
            break;
        case 'p':
            o->port_file = optarg;
            break;
        case 'c':
            o->tls_cert = optarg;
            break;
        case 'k':
            o->tls_key = optarg;
            break;
        case 'w': {
            uint64_t n;
            if (!sy_parse_u64(optarg, strlen(optarg), &n) || n == 0 || n > MAX_WORKERS) {
                fprintf(stderr, "mockprovider: --workers must be 1..%d\n", MAX_WORKERS);
                return -EINVAL;
            }
            o->workers = (unsigned)n;
            break;
        }
        case 'q':
            o->quiet = true;
            break;
        case 'v':
            o->verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return -EINVAL;
        }
    }
    if (optind < argc || (o->tls_cert == NULL) != (o->tls_key == NULL)) {
        usage(stderr);
        return -EINVAL;
    }
    return 0;
}

/* ---- sockets ----------------------------------------------------------------------------------
 */

static int resolve(const char *listen, const char *port_override, struct sockaddr_storage *ss,
                   socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (colon == NULL || (size_t)(colon - listen) >= sizeof(host)) {
        fprintf(stderr, "mockprovider: --listen wants HOST:PORT, got '%s'\n", listen);
        return -EINVAL;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {
        h[strlen(h) - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_flags = AI_PASSIVE, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(*h ? h : NULL, port_override ? port_override : colon + 1, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "mockprovider: cannot resolve '%s': %s\n", listen, gai_strerror(rc));
        return -EINVAL;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* A TCP socket with SO_REUSEPORT bound to <listen> (port replaced by <port> when nonzero). */
static int bind_socket(const char *listen, unsigned port, unsigned *bound_port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%u", port);
    if (resolve(listen, port ? portstr : NULL, &ss, &len) < 0)
        return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
        goto fail;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1 ||
        bind(fd, (struct sockaddr *)&ss, len) == -1)
        goto fail;
    len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1)
        goto fail;
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
fail:
    fprintf(stderr, "mockprovider: cannot bind %s: %s\n", listen, strerror(errno));
    if (fd != -1)
        close(fd);
    return -1;
}

static int publish_port(const struct options *o, unsigned port)
{
    if (o->port_file) {
        /* Written beside and renamed, so a reader never sees a half-written file. */
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.tmp.%d", o->port_file, (int)getpid());
        FILE *f = fopen(tmp, "w");
        if (f == NULL || fprintf(f, "%u\n", port) < 0 || fclose(f) != 0 ||
            rename(tmp, o->port_file) == -1) {
            fprintf(stderr, "mockprovider: cannot write %s: %s\n", o->port_file, strerror(errno));
            return -EIO;
        }
    }
    printf("mockprovider listening on %u\n", port);
    fflush(stdout);
    return 0;
}

/* ---- one serving process -------------------------------------------------------------------- */

static uv_tcp_t server;
static uv_signal_t sig_term, sig_int;

static void on_signal(uv_signal_t *s, int signum)
{
    sy_log(SY_LOG_INFO, "main", "signal %d: stopping", signum);
    uv_close((uv_handle_t *)&server, NULL);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    mp_conn_close_all();
}

/* Serve on the bound socket <fd> until SIGTERM/SIGINT. Tells the parent through <ready_fd>
 * (-1: none) or publishes <port> itself. Returns the exit status. */
static int serve(const struct options *o, int fd, unsigned port, int ready_fd)
{
    uv_loop_t *loop = uv_default_loop();
    uv_tcp_init(loop, &server);
    int rc = uv_tcp_open(&server, fd);
    if (rc == 0)
        rc = mp_conn_listen((uv_stream_t *)&server);
    if (rc != 0) {
        fprintf(stderr, "mockprovider: cannot listen: %s\n", uv_strerror(rc));
        return 1;
    }
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    if (ready_fd >= 0) {
        ssize_t w = write(ready_fd, "r", 1);
        (void)w;
        close(ready_fd);
    } else if (publish_port(o, port) < 0) {
        return 1;
    }
    sy_log(SY_LOG_INFO, "main", "serving %s on port %u", mp_tls_enabled() ? "https" : "http", port);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    mp_admin_free();
    mp_tls_cleanup();
    return 0;
}

/* ---- the parent of several workers -------------------------------------------------------------
 */

static int run_workers(const struct options *o, unsigned port)
{
    pid_t pids[MAX_WORKERS];
    int ready[2];
    sigset_t mask, old;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, &old);
    if (pipe(ready) == -1) {
        perror("mockprovider: pipe");
        return 1;
    }
    unsigned started = 0;
    for (unsigned i = 0; i < o->workers; i++) {
        pid_t pid = fork();
        if (pid == -1) {
            perror("mockprovider: fork");
            break;
        }
        if (pid == 0) {
            sigprocmask(SIG_SETMASK, &old, NULL);
            close(ready[0]);
            unsigned p;
            int fd = bind_socket(o->listen, port, &p);
            _exit(fd == -1 ? 1 : serve(o, fd, port, ready[1]));
        }
        pids[started++] = pid;
    }
    close(ready[1]);
    unsigned up = 0;
    char byte;
    while (up < started && read(ready[0], &byte, 1) == 1)
        up++;
    close(ready[0]);
    int status = 0;
    if (up < o->workers || publish_port(o, port) < 0)
        status = 1;
    unsigned alive = started;
    while (status == 0 && alive > 0) {
        int sig;
        sigwait(&mask, &sig);
        if (sig != SIGCHLD)
            break;
        while (waitpid(-1, NULL, WNOHANG) > 0)
            alive--;
        sy_log(SY_LOG_WARN, "main", "a worker exited; %u left", alive);
    }
    if (alive == 0)
        status = 1; /* every worker died by itself */
    for (unsigned i = 0; i < started; i++)
        kill(pids[i], SIGTERM);
    while (wait(NULL) > 0)
        ;
    return status;
}

int main(int argc, char **argv)
{
    struct options o;
    int rc = parse_options(&o, argc, argv);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    sy_log_set_ident("mockprovider");
    sy_log_set_level(o.verbose ? "debug" : o.quiet ? "error" : "warn");
    signal(SIGPIPE, SIG_IGN);
    mp_json_init();
    if (o.tls_cert) {
        char *err = NULL;
        if (mp_tls_init(o.tls_cert, o.tls_key, &err) < 0) {
            fprintf(stderr, "mockprovider: %s\n", err);
            free(err);
            return 1;
        }
    }
    unsigned port;
    int fd = bind_socket(o.listen, 0, &port);
    if (fd == -1)
        return 1;
    if (o.workers == 1)
        return serve(&o, fd, port, -1);
    rc = run_workers(&o, port);
    close(fd);
    mp_tls_cleanup();
    return rc;
}
