/* SPDX-License-Identifier: Apache-2.0 */
/** Settings of the data plane: defaults, then the environment, then the command line.
 *
 * Every setting is one row of the `options` table below (Redis `config.c` style): its flag,
 * its environment variable, how its value is parsed and the range it must fall in. The help
 * text, the environment pass and the flag pass all walk that one table, so a new setting is
 * one new row plus its default in config_defaults(). */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sy/buf.h"
#include "sy/util.h"

#include "internal.h"

#ifndef SY_VERSION
#define SY_VERSION "0.1.0"
#endif

#define WORKERS_MAX 256u
#define DAY_MS      86400000u

static_assert(sizeof(unsigned) == sizeof(uint32_t), "workers is parsed as a uint32_t");

/* ---- the options ----------------------------------------------------------------------- */

enum opt_kind {
    OPT_STRING = 0, /* char *, any non-empty text */
    OPT_LISTEN,     /* char *, validated by dp__listen_parse() */
    OPT_LOG_LEVEL,  /* char *, one of log_levels[] */
    OPT_U32,        /* uint32_t (or unsigned), a plain decimal number */
    OPT_MS,         /* uint32_t, milliseconds */
    OPT_SIZE,       /* size_t, bytes with an optional k or m suffix (KiB, MiB) */
    OPT_SOCKET,     /* char *, a Unix socket path that fits in sockaddr_un */
    OPT_PAIR,       /* char *[2], two values: --encode-table IN OUT */
    OPT_FLAG,       /* no value: --help, --version */
    OPT_MAX,
};

struct option_def {
    const char *flag; /* without the leading "--" */
    const char *env;  /* NULL when the option has no variable (--help, --version) */
    enum opt_kind kind;
    size_t offset; /* into struct dp_config */
    uint64_t min, max;
    const char *help;
    bool hidden; /* left out of --help: tools for tests and scripts */
};

#define OFF(field) offsetof(struct dp_config, field)

static const struct option_def options[] = {
    {"listen", "SWITCHYARD_LISTEN", OPT_LISTEN, OFF(listen), 0, 0,
     "address to serve on: host:port, [ipv6]:port or :port (all IPv4 interfaces)"},
    {"workers", "SWITCHYARD_WORKERS", OPT_U32, OFF(workers), 1, WORKERS_MAX,
     "worker processes, each with its own listening socket"},
    {"table", "SWITCHYARD_TABLE", OPT_STRING, OFF(table_path), 0, 0,
     "routing table file (JSON or msgpack), re-read on SIGHUP; none: serve nothing"},
    {"port-file", "SWITCHYARD_PORT_FILE", OPT_STRING, OFF(port_file), 0, 0,
     "write the bound port here once listening (useful with port 0)"},
    {"log-level", "SWITCHYARD_LOG_LEVEL", OPT_LOG_LEVEL, OFF(log_level), 0, 0,
     "error, warn, info or debug"},
    {"max-header-bytes", "SWITCHYARD_MAX_HEADER_BYTES", OPT_SIZE, OFF(max_header_bytes), 1024,
     16u << 20, "largest request head; larger gets 431"},
    {"max-body-bytes", "SWITCHYARD_MAX_BODY", OPT_SIZE, OFF(max_body_bytes), 1, 1u << 30,
     "largest request body; larger gets 413"},
    {"max-upstream-body-bytes", "SWITCHYARD_MAX_UPSTREAM_BODY", OPT_SIZE,
     OFF(max_upstream_body_bytes), 1024, 1u << 30,
     "largest provider answer (not a stream) relayed; larger gets 502"},
    {"header-timeout-ms", "SWITCHYARD_HEADER_TIMEOUT_MS", OPT_MS, OFF(header_timeout_ms), 1, DAY_MS,
     "time for the whole request head to arrive"},
    {"body-timeout-ms", "SWITCHYARD_BODY_TIMEOUT_MS", OPT_MS, OFF(body_timeout_ms), 1, DAY_MS,
     "longest silence inside a request body"},
    {"body-total-timeout-ms", "SWITCHYARD_BODY_TOTAL_TIMEOUT_MS", OPT_MS,
     OFF(body_total_timeout_ms), 0, DAY_MS,
     "time for the whole request body to arrive, however it trickles in (0: no bound)"},
    {"idle-timeout-ms", "SWITCHYARD_IDLE_TIMEOUT_MS", OPT_MS, OFF(idle_timeout_ms), 1, DAY_MS,
     "how long an idle keep-alive connection stays open"},
    {"send-timeout-ms", "SWITCHYARD_SEND_TIMEOUT_MS", OPT_MS, OFF(send_timeout_ms), 1, DAY_MS,
     "how long a client may read nothing while a response waits"},
    {"drain-timeout-ms", "SWITCHYARD_DRAIN_TIMEOUT_MS", OPT_MS, OFF(drain_timeout_ms), 0, DAY_MS,
     "on SIGTERM, how long in-flight requests may take to finish"},
    {"drain-idle-ms", "SWITCHYARD_DRAIN_IDLE_MS", OPT_MS, OFF(drain_idle_ms), 0, DAY_MS,
     "on SIGTERM, how long idle keep-alive connections stay open"},
    {"upstream-connect-timeout-ms", "SWITCHYARD_UPSTREAM_CONNECT_TIMEOUT_MS", OPT_MS,
     OFF(upstream_timeouts.connect_ms), 1, DAY_MS,
     "provider connect (and TLS handshake) timeout, unless the deployment sets one"},
    {"upstream-first-byte-timeout-ms", "SWITCHYARD_UPSTREAM_FIRST_BYTE_TIMEOUT_MS", OPT_MS,
     OFF(upstream_timeouts.first_byte_ms), 1, DAY_MS,
     "request sent to response head (time to first token on streams)"},
    {"upstream-idle-timeout-ms", "SWITCHYARD_UPSTREAM_IDLE_TIMEOUT_MS", OPT_MS,
     OFF(upstream_timeouts.idle_ms), 1, DAY_MS, "longest silence inside a provider response"},
    {"upstream-total-timeout-ms", "SWITCHYARD_UPSTREAM_TOTAL_TIMEOUT_MS", OPT_MS,
     OFF(upstream_timeouts.total_ms), 1, DAY_MS, "whole provider exchange"},
    {"pool-max-idle", "SWITCHYARD_POOL_MAX_IDLE", OPT_U32, OFF(pool_max_idle), 0, 1000000,
     "idle keep-alive connections kept per provider origin and worker"},
    {"pool-max-conns", "SWITCHYARD_POOL_MAX_CONNS", OPT_U32, OFF(pool_max_conns), 1, 1000000,
     "connections per provider origin and worker"},
    {"pool-idle-ms", "SWITCHYARD_POOL_IDLE_MS", OPT_MS, OFF(pool_idle_ms), 1, DAY_MS,
     "how long an idle provider connection is kept"},
    {"control-socket", "SWITCHYARD_SOCKET", OPT_SOCKET, OFF(control_socket), 0, 0,
     "the control plane's Unix socket: every worker connects, takes the routing tables it "
     "publishes, and reconnects whenever it goes away; none: the table file only"},
    {"node-id", "SWITCHYARD_NODE_ID", OPT_STRING, OFF(node_id), 0, 0,
     "this node's name in the HELLO to the control plane (default: the host name)"},
    {"snapshot", "SWITCHYARD_SNAPSHOT", OPT_STRING, OFF(snapshot_path), 0, 0,
     "last-known-good table: worker 0 writes each table from the control plane here (mode "
     "0600); read at start when --table is not given"},
    {"snapshot-key-file", "SWITCHYARD_SNAPSHOT_KEY_FILE", OPT_STRING, OFF(snapshot_key_file), 0, 0,
     "32-byte key (64 hex characters or base64) that encrypts the snapshot (AES-256-GCM); "
     "default: <snapshot>.key, made with mode 0600 on first start"},
    {"tls-cert", "SWITCHYARD_TLS_CERT", OPT_STRING, OFF(tls_cert), 0, 0,
     "serve HTTPS with this certificate chain (PEM, leaf first); re-read on SIGHUP"},
    {"tls-key", "SWITCHYARD_TLS_KEY", OPT_STRING, OFF(tls_key), 0, 0,
     "the private key of --tls-cert (PEM, unencrypted); re-read on SIGHUP"},
    {"shm", "SWITCHYARD_SHM", OPT_STRING, OFF(shm_path), 0, 0,
     "the node's shared-memory segment (circuits, rate limits, counters, decision log), a file "
     "the control plane reads metrics and events from; default: an anonymous segment that "
     "only the workers share"},
    {"shm-combos", "SWITCHYARD_SHM_COMBOS", OPT_U32, OFF(shm_combos), 64, 1u << 22,
     "usage cells for deployment x model x key combinations in the shared memory (448 bytes "
     "each, rounded up to a power of two); requests beyond them are counted as one overflow"},
    {"shm-request-log-cells", "SWITCHYARD_SHM_REQUEST_LOG_CELLS", OPT_U32,
     OFF(shm_request_log_cells), 2, 1u << 22,
     "1 KiB cells of the request-log ring in the shared memory (rounded up to a power of two); "
     "a record takes one cell, or more with bodies; a full ring drops records, counted"},
    {"encode-table", NULL, OPT_PAIR, OFF(encode_table), 0, 0,
     "IN OUT: write table file IN as msgpack to OUT and exit", true},
    {"help", NULL, OPT_FLAG, 0, 0, 0, "print this help and exit"},
    {"version", NULL, OPT_FLAG, 0, 0, 0, "print the version and exit"},
};

static const char *const log_levels[] = {"error", "warn", "info", "debug"};

static unsigned online_cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > (long)WORKERS_MAX ? WORKERS_MAX : (unsigned)n;
}

static void config_defaults(struct dp_config *c)
{
    *c = (struct dp_config){
        .listen = sy_xstrdup("0.0.0.0:8080"),
        .workers = online_cores(),
        .log_level = sy_xstrdup("info"),
        .max_header_bytes = 65536,
        .max_body_bytes = 8u << 20,
        .max_upstream_body_bytes = 64u << 20,
        .header_timeout_ms = 10000,
        .body_timeout_ms = 30000,
        .body_total_timeout_ms = 120000,
        .idle_timeout_ms = 60000,
        .send_timeout_ms = 60000,
        .drain_timeout_ms = 30000,
        .drain_idle_ms = 2000,
        .upstream_timeouts = {.connect_ms = 10000,
                              .first_byte_ms = 120000,
                              .idle_ms = 120000,
                              .total_ms = 600000},
        .pool_max_idle = 64,
        .pool_max_conns = 1024,
        .pool_idle_ms = 60000,
    };
}

/* ---- messages -------------------------------------------------------------------------- */

__attribute__((format(printf, 2, 3))) static int fail(char **err, const char *fmt, ...)
{
    struct sy_buf b = SY_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    sy_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    free(*err);
    *err = sy_buf_steal(&b, NULL);
    return -EINVAL;
}

/* ---- listen addresses ------------------------------------------------------------------ */

int dp__listen_parse(const char *text, struct sockaddr_storage *addr, socklen_t *len, char **err)
{
    const char *colon, *host = text;
    size_t host_len;
    char buf[INET6_ADDRSTRLEN + 1];
    uint64_t port;

    memset(addr, 0, sizeof(*addr));
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':')
            return fail(err, "\"%s\" is not an address: expected [ipv6]:port", text);
        host = text + 1;
        host_len = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            return fail(err, "\"%s\" is not an address: expected host:port, [ipv6]:port or :port",
                        text);
        host_len = (size_t)(colon - text);
        if (memchr(text, ':', host_len) != NULL)
            return fail(err,
                        "\"%s\" is not an address: write an IPv6 address in brackets, "
                        "[ipv6]:port",
                        text);
    }
    if (!sy_parse_u64(colon + 1, strlen(colon + 1), &port) || port > 65535)
        return fail(err, "\"%s\": the port must be a number between 0 and 65535", text);
    if (host_len >= sizeof(buf))
        return fail(err, "\"%s\": \"%.*s\" is not an IPv4 or IPv6 address", text, (int)host_len,
                    host);
    memcpy(buf, host, host_len);
    buf[host_len] = '\0';

    if (text[0] == '[') {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)addr;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) != 1)
            return fail(err, "\"%s\": \"%s\" is not an IPv6 address", text, buf);
        *len = sizeof(*sin6);
        return 0;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)addr;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    if (buf[0] == '\0' || strcmp(buf, "*") == 0)
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (strcmp(buf, "localhost") == 0)
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, buf, &sin->sin_addr) != 1)
        return fail(err, "\"%s\": \"%s\" is not an IPv4 address (use [...] for IPv6)", text, buf);
    *len = sizeof(*sin);
    return 0;
}

void dp__addr_format(const struct sockaddr *sa, char *out, size_t size)
{
    char host[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        snprintf(out, size, "[%s]:%u", host, (unsigned)ntohs(sin6->sin6_port));
    } else {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        snprintf(out, size, "%s:%u", host, (unsigned)ntohs(sin->sin_port));
    }
}

static bool is_log_level(const char *s)
{
    for (size_t i = 0; i < SY_ARRAY_LEN(log_levels); i++)
        if (strcmp(s, log_levels[i]) == 0)
            return true;
    return false;
}

/* ---- values ---------------------------------------------------------------------------- */

/* A size: digits, then optionally k or m (KiB, MiB), either case. */
static bool parse_size(const char *s, uint64_t *out)
{
    size_t n = strlen(s);
    unsigned shift = 0;
    if (n > 0 && (s[n - 1] == 'k' || s[n - 1] == 'K'))
        shift = 10;
    else if (n > 0 && (s[n - 1] == 'm' || s[n - 1] == 'M'))
        shift = 20;
    if (shift != 0)
        n--;
    if (!sy_parse_u64(s, n, out) || *out > (UINT64_MAX >> shift))
        return false;
    *out <<= shift;
    return true;
}

/* Parse <value> (borrowed) for option <o> into <c>. <source> names where the value came from
 * ("--workers" or "SWITCHYARD_WORKERS") for the message. */
static int apply(struct dp_config *c, const struct option_def *o, const char *source,
                 const char *value, char **err)
{
    char *field = (char *)c + o->offset;
    uint64_t v;

    switch (o->kind) {
    case OPT_LISTEN: {
        struct sockaddr_storage ss;
        socklen_t len;
        char *why = NULL;
        if (dp__listen_parse(value, &ss, &len, &why) != 0) {
            fail(err, "%s: %s", source, why);
            free(why);
            return -EINVAL;
        }
        break;
    }
    case OPT_LOG_LEVEL:
        if (!is_log_level(value))
            return fail(err, "%s: \"%s\" is not one of error, warn, info, debug", source, value);
        break;
    case OPT_STRING:
        if (value[0] == '\0')
            return fail(err, "%s: the value is empty", source);
        break;
    case OPT_SOCKET:
        if (value[0] == '\0')
            return fail(err, "%s: the value is empty", source);
        if (strlen(value) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            return fail(err, "%s: \"%s\" is longer than a Unix socket path may be (%zu bytes)",
                        source, value, sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
        break;
    case OPT_U32:
        if (!sy_parse_u64(value, strlen(value), &v) || v < o->min || v > o->max)
            return fail(err, "%s: \"%s\" is not a number between %llu and %llu", source, value,
                        (unsigned long long)o->min, (unsigned long long)o->max);
        *(uint32_t *)field = (uint32_t)v;
        return 0;
    case OPT_MS:
        if (!sy_parse_u64(value, strlen(value), &v) || v < o->min || v > o->max)
            return fail(err, "%s: \"%s\" is not a number of milliseconds between %llu and %llu",
                        source, value, (unsigned long long)o->min, (unsigned long long)o->max);
        *(uint32_t *)field = (uint32_t)v;
        return 0;
    case OPT_SIZE:
        if (!parse_size(value, &v) || v < o->min || v > o->max)
            return fail(err,
                        "%s: \"%s\" is not a size between %llu and %llu bytes "
                        "(a number, optionally followed by k or m)",
                        source, value, (unsigned long long)o->min, (unsigned long long)o->max);
        *(size_t *)field = (size_t)v;
        return 0;
    case OPT_PAIR:
    case OPT_FLAG:
    case OPT_MAX:
        SY_REQUIRE(!"option without a single value");
    }
    /* The kinds that break out of the switch keep the text itself. */
    free(*(char **)field);
    *(char **)field = sy_xstrdup(value);
    return 0;
}

/* ---- help ------------------------------------------------------------------------------ */

static void default_text(const struct dp_config *d, const struct option_def *o, char *out,
                         size_t size)
{
    const char *field = (const char *)d + o->offset;
    switch (o->kind) {
    case OPT_STRING:
    case OPT_SOCKET:
    case OPT_LISTEN:
    case OPT_LOG_LEVEL: {
        const char *s = *(char *const *)field;
        snprintf(out, size, "%s", s ? s : "none");
        break;
    }
    case OPT_U32:
    case OPT_MS:
        if (o->offset == OFF(workers))
            snprintf(out, size, "number of online cores, %u here", d->workers);
        else
            snprintf(out, size, "%u", *(const uint32_t *)field);
        break;
    case OPT_SIZE: {
        size_t v = *(const size_t *)field;
        if (v % (1u << 20) == 0)
            snprintf(out, size, "%zum", v >> 20);
        else if (v % 1024 == 0)
            snprintf(out, size, "%zuk", v >> 10);
        else
            snprintf(out, size, "%zu", v);
        break;
    }
    case OPT_PAIR:
    case OPT_FLAG:
    case OPT_MAX:
        out[0] = '\0';
        break;
    }
}

static const char *value_name(enum opt_kind kind)
{
    switch (kind) {
    case OPT_LISTEN:
        return "ADDR";
    case OPT_LOG_LEVEL:
        return "LEVEL";
    case OPT_STRING:
    case OPT_SOCKET:
        return "PATH";
    case OPT_PAIR:
        return "IN OUT";
    case OPT_U32:
        return "N";
    case OPT_MS:
        return "MS";
    case OPT_SIZE:
        return "BYTES";
    case OPT_FLAG:
    case OPT_MAX:
        break;
    }
    return "";
}

static void print_help(FILE *f, const char *prog)
{
    struct dp_config d;
    config_defaults(&d);
    fprintf(f,
            "Usage: %s [OPTION]...\n"
            "Switchyard data plane: serve the LLM gateway's HTTP endpoint with a master process\n"
            "and one worker per slot. SIGHUP reloads the table and replaces the workers without\n"
            "dropping a connection; SIGTERM or SIGINT drains them and exits.\n"
            "\n"
            "Every option can also be set by the environment variable shown under it; a flag\n"
            "wins over the variable. Sizes take a k or m suffix (KiB, MiB). --flag VALUE and\n"
            "--flag=VALUE both work.\n\n",
            prog);
    for (size_t i = 0; i < SY_ARRAY_LEN(options); i++) {
        const struct option_def *o = &options[i];
        char flag[64], def[64];
        if (o->hidden)
            continue;
        if (o->kind == OPT_FLAG)
            snprintf(flag, sizeof(flag), "--%s", o->flag);
        else
            snprintf(flag, sizeof(flag), "--%s %s", o->flag, value_name(o->kind));
        fprintf(f, "  %s\n      %s\n", flag, o->help);
        if (o->env != NULL) {
            default_text(&d, o, def, sizeof(def));
            fprintf(f, "      env %s, default %s\n", o->env, def);
        }
    }
    dp_config_free(&d);
}

/* ---- loading --------------------------------------------------------------------------- */

static const struct option_def *find_flag(const char *name, size_t len)
{
    for (size_t i = 0; i < SY_ARRAY_LEN(options); i++)
        if (strlen(options[i].flag) == len && memcmp(options[i].flag, name, len) == 0)
            return &options[i];
    return NULL;
}

int dp_config_load(struct dp_config *c, int argc, char **argv, char **err)
{
    const char *prog = argc > 0 && argv[0] != NULL ? argv[0] : "switchyard-dataplane";
    char source[96];
    int rc;

    *err = NULL;
    config_defaults(c);

    /* --help and --version answer even when the environment holds a bad value. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            print_help(stdout, prog);
            rc = 1;
            goto fail;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("switchyard-dataplane %s\n", SY_VERSION);
            rc = 1;
            goto fail;
        }
    }

    /* An empty variable counts as unset, as container runtimes write "unset" that way. */
    for (size_t i = 0; i < SY_ARRAY_LEN(options); i++) {
        const char *value = options[i].env ? getenv(options[i].env) : NULL;
        if (value == NULL || value[0] == '\0')
            continue;
        rc = apply(c, &options[i], options[i].env, value, err);
        if (rc != 0)
            goto fail;
    }

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *name, *eq, *value;
        size_t name_len;

        if (strcmp(arg, "-h") == 0)
            arg = "--help";
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            rc = fail(err, "unexpected argument \"%s\" (try --help)", arg);
            goto fail;
        }
        name = arg + 2;
        eq = strchr(name, '=');
        name_len = eq ? (size_t)(eq - name) : strlen(name);
        const struct option_def *o = find_flag(name, name_len);
        if (o == NULL) {
            rc = fail(err, "unknown option \"--%.*s\" (try --help)", (int)name_len, name);
            goto fail;
        }
        if (o->kind == OPT_FLAG) {
            if (eq != NULL) {
                rc = fail(err, "--%s takes no value", o->flag);
                goto fail;
            }
            continue; /* answered above */
        }
        if (o->kind == OPT_PAIR) {
            char **pair = (char **)((char *)c + o->offset);
            if (eq != NULL || i + 2 >= argc) {
                rc = fail(err, "--%s needs two values: --%s %s", o->flag, o->flag,
                          value_name(o->kind));
                goto fail;
            }
            for (int k = 0; k < 2; k++) {
                free(pair[k]);
                pair[k] = sy_xstrdup(argv[++i]);
            }
            continue;
        }
        if (eq != NULL) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            rc = fail(err, "--%s needs a value", o->flag);
            goto fail;
        }
        snprintf(source, sizeof(source), "--%s", o->flag);
        rc = apply(c, o, source, value, err);
        if (rc != 0)
            goto fail;
    }
    if ((c->tls_cert == NULL) != (c->tls_key == NULL)) {
        rc = fail(err, "%s is set without %s: HTTPS needs both the certificate and its key",
                  c->tls_cert ? "--tls-cert" : "--tls-key",
                  c->tls_cert ? "--tls-key" : "--tls-cert");
        goto fail;
    }
    return 0;

fail:
    fflush(stdout);
    dp_config_free(c);
    return rc;
}

void dp_config_free(struct dp_config *c)
{
    SY_FREE(c->listen);
    SY_FREE(c->table_path);
    SY_FREE(c->port_file);
    SY_FREE(c->log_level);
    SY_FREE(c->control_socket);
    SY_FREE(c->node_id);
    SY_FREE(c->snapshot_path);
    SY_FREE(c->snapshot_key_file);
    SY_FREE(c->tls_cert);
    SY_FREE(c->tls_key);
    SY_FREE(c->shm_path);
    SY_FREE(c->encode_table[0]);
    SY_FREE(c->encode_table[1]);
}
