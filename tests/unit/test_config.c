/* SPDX-License-Identifier: Apache-2.0 */
/** Data-plane settings: defaults, environment, flags, and the message every bad value gets. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"

/* Every variable the loader reads, cleared before each test so the runner's environment
 * cannot leak in. */
static const char *const env_vars[] = {
    "SWITCHYARD_LISTEN",
    "SWITCHYARD_WORKERS",
    "SWITCHYARD_TABLE",
    "SWITCHYARD_PORT_FILE",
    "SWITCHYARD_LOG_LEVEL",
    "SWITCHYARD_MAX_HEADER_BYTES",
    "SWITCHYARD_MAX_BODY",
    "SWITCHYARD_HEADER_TIMEOUT_MS",
    "SWITCHYARD_BODY_TIMEOUT_MS",
    "SWITCHYARD_IDLE_TIMEOUT_MS",
    "SWITCHYARD_SEND_TIMEOUT_MS",
    "SWITCHYARD_DRAIN_TIMEOUT_MS",
    "SWITCHYARD_DRAIN_IDLE_MS",
    "SWITCHYARD_UPSTREAM_CONNECT_TIMEOUT_MS",
    "SWITCHYARD_UPSTREAM_FIRST_BYTE_TIMEOUT_MS",
    "SWITCHYARD_UPSTREAM_IDLE_TIMEOUT_MS",
    "SWITCHYARD_UPSTREAM_TOTAL_TIMEOUT_MS",
    "SWITCHYARD_POOL_MAX_IDLE",
    "SWITCHYARD_POOL_MAX_CONNS",
    "SWITCHYARD_POOL_IDLE_MS",
};

static int clear_env(void **state)
{
    for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++)
        unsetenv(env_vars[i]);
    return 0;
}

/* Load from argv given as a NULL-terminated list after the program name. */
static int load_args(struct dp_config *c, char **err, ...)
{
    char *argv[32] = {"switchyard-dataplane"};
    int argc = 1;
    va_list ap;
    va_start(ap, err);
    for (char *a; (a = va_arg(ap, char *)) != NULL;)
        argv[argc++] = a;
    va_end(ap);
    return dp_config_load(c, argc, argv, err);
}

#define LOAD(c, err, ...) load_args((c), (err), ##__VA_ARGS__, (char *)NULL)

/* Expect a failure whose message is exactly <want>. */
#define EXPECT_ERROR(want, ...)                                                                    \
    do {                                                                                           \
        struct dp_config c_;                                                                       \
        char *err_ = NULL;                                                                         \
        assert_int_equal(LOAD(&c_, &err_, ##__VA_ARGS__), -EINVAL);                                \
        assert_non_null(err_);                                                                     \
        assert_string_equal(err_, (want));                                                         \
        free(err_);                                                                                \
        assert_null(c_.listen);                                                                    \
    } while (0)

/* ---- defaults -------------------------------------------------------------------------- */

static void defaults_match_the_documented_ones(void **state)
{
    struct dp_config c;
    char *err = NULL;
    assert_int_equal(LOAD(&c, &err), 0);
    assert_null(err);
    assert_string_equal(c.listen, "0.0.0.0:8080");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(c.workers, cores < 1 ? 1 : cores > 256 ? 256 : cores);
    assert_null(c.table_path);
    assert_null(c.port_file);
    assert_string_equal(c.log_level, "info");
    assert_int_equal(c.max_header_bytes, 65536);
    assert_int_equal(c.max_body_bytes, 8 << 20);
    assert_int_equal(c.max_upstream_body_bytes, 64 << 20);
    assert_int_equal(c.header_timeout_ms, 10000);
    assert_int_equal(c.body_timeout_ms, 30000);
    assert_int_equal(c.body_total_timeout_ms, 120000);
    assert_int_equal(c.idle_timeout_ms, 60000);
    assert_int_equal(c.send_timeout_ms, 60000);
    assert_int_equal(c.drain_timeout_ms, 30000);
    assert_int_equal(c.drain_idle_ms, 2000);
    assert_int_equal(c.upstream_timeouts.connect_ms, 10000);
    assert_int_equal(c.upstream_timeouts.first_byte_ms, 120000);
    assert_int_equal(c.upstream_timeouts.idle_ms, 120000);
    assert_int_equal(c.upstream_timeouts.total_ms, 600000);
    assert_int_equal(c.pool_max_idle, 64);
    assert_int_equal(c.pool_max_conns, 1024);
    assert_int_equal(c.pool_idle_ms, 60000);
    dp_config_free(&c);
    dp_config_free(&c); /* twice is harmless */
}

/* ---- every flag, both spellings -------------------------------------------------------- */

static void every_flag_is_read_in_both_forms(void **state)
{
    struct dp_config c;
    char *err = NULL;
    assert_int_equal(LOAD(&c, &err, "--listen", "127.0.0.1:9000", "--workers=3", "--table",
                          "/tmp/t.json", "--port-file=/tmp/port", "--log-level", "debug",
                          "--max-header-bytes=32k", "--max-body-bytes", "2m", "--header-timeout-ms",
                          "1", "--body-timeout-ms=2", "--idle-timeout-ms", "3",
                          "--send-timeout-ms=4", "--drain-timeout-ms", "5", "--drain-idle-ms=6",
                          "--upstream-connect-timeout-ms", "7",
                          "--upstream-first-byte-timeout-ms=8", "--upstream-idle-timeout-ms", "9",
                          "--upstream-total-timeout-ms=10", "--pool-max-idle", "11",
                          "--pool-max-conns=12", "--pool-idle-ms", "13"),
                     0);
    assert_null(err);
    assert_string_equal(c.listen, "127.0.0.1:9000");
    assert_int_equal(c.workers, 3);
    assert_string_equal(c.table_path, "/tmp/t.json");
    assert_string_equal(c.port_file, "/tmp/port");
    assert_string_equal(c.log_level, "debug");
    assert_int_equal(c.max_header_bytes, 32 * 1024);
    assert_int_equal(c.max_body_bytes, 2 * 1024 * 1024);
    assert_int_equal(c.header_timeout_ms, 1);
    assert_int_equal(c.body_timeout_ms, 2);
    assert_int_equal(c.idle_timeout_ms, 3);
    assert_int_equal(c.send_timeout_ms, 4);
    assert_int_equal(c.drain_timeout_ms, 5);
    assert_int_equal(c.drain_idle_ms, 6);
    assert_int_equal(c.upstream_timeouts.connect_ms, 7);
    assert_int_equal(c.upstream_timeouts.first_byte_ms, 8);
    assert_int_equal(c.upstream_timeouts.idle_ms, 9);
    assert_int_equal(c.upstream_timeouts.total_ms, 10);
    assert_int_equal(c.pool_max_idle, 11);
    assert_int_equal(c.pool_max_conns, 12);
    assert_int_equal(c.pool_idle_ms, 13);
    dp_config_free(&c);
}

static void a_later_flag_wins_over_an_earlier_one(void **state)
{
    struct dp_config c;
    char *err = NULL;
    assert_int_equal(LOAD(&c, &err, "--workers", "2", "--workers=5"), 0);
    assert_int_equal(c.workers, 5);
    dp_config_free(&c);
}

/* ---- environment ----------------------------------------------------------------------- */

static void every_variable_is_read(void **state)
{
    struct dp_config c;
    char *err = NULL;
    setenv("SWITCHYARD_LISTEN", "[::1]:7000", 1);
    setenv("SWITCHYARD_WORKERS", "4", 1);
    setenv("SWITCHYARD_TABLE", "/etc/t.msgpack", 1);
    setenv("SWITCHYARD_PORT_FILE", "/run/port", 1);
    setenv("SWITCHYARD_LOG_LEVEL", "warn", 1);
    setenv("SWITCHYARD_MAX_HEADER_BYTES", "2048", 1);
    setenv("SWITCHYARD_MAX_BODY", "1M", 1);
    setenv("SWITCHYARD_HEADER_TIMEOUT_MS", "101", 1);
    setenv("SWITCHYARD_BODY_TIMEOUT_MS", "102", 1);
    setenv("SWITCHYARD_IDLE_TIMEOUT_MS", "103", 1);
    setenv("SWITCHYARD_SEND_TIMEOUT_MS", "104", 1);
    setenv("SWITCHYARD_DRAIN_TIMEOUT_MS", "0", 1);
    setenv("SWITCHYARD_DRAIN_IDLE_MS", "0", 1);
    setenv("SWITCHYARD_UPSTREAM_CONNECT_TIMEOUT_MS", "107", 1);
    setenv("SWITCHYARD_UPSTREAM_FIRST_BYTE_TIMEOUT_MS", "108", 1);
    setenv("SWITCHYARD_UPSTREAM_IDLE_TIMEOUT_MS", "109", 1);
    setenv("SWITCHYARD_UPSTREAM_TOTAL_TIMEOUT_MS", "110", 1);
    setenv("SWITCHYARD_POOL_MAX_IDLE", "0", 1);
    setenv("SWITCHYARD_POOL_MAX_CONNS", "112", 1);
    setenv("SWITCHYARD_POOL_IDLE_MS", "113", 1);
    assert_int_equal(LOAD(&c, &err), 0);
    assert_string_equal(c.listen, "[::1]:7000");
    assert_int_equal(c.workers, 4);
    assert_string_equal(c.table_path, "/etc/t.msgpack");
    assert_string_equal(c.port_file, "/run/port");
    assert_string_equal(c.log_level, "warn");
    assert_int_equal(c.max_header_bytes, 2048);
    assert_int_equal(c.max_body_bytes, 1 << 20);
    assert_int_equal(c.header_timeout_ms, 101);
    assert_int_equal(c.body_timeout_ms, 102);
    assert_int_equal(c.idle_timeout_ms, 103);
    assert_int_equal(c.send_timeout_ms, 104);
    assert_int_equal(c.drain_timeout_ms, 0);
    assert_int_equal(c.drain_idle_ms, 0);
    assert_int_equal(c.upstream_timeouts.connect_ms, 107);
    assert_int_equal(c.upstream_timeouts.first_byte_ms, 108);
    assert_int_equal(c.upstream_timeouts.idle_ms, 109);
    assert_int_equal(c.upstream_timeouts.total_ms, 110);
    assert_int_equal(c.pool_max_idle, 0);
    assert_int_equal(c.pool_max_conns, 112);
    assert_int_equal(c.pool_idle_ms, 113);
    dp_config_free(&c);
}

static void a_flag_wins_over_the_environment(void **state)
{
    struct dp_config c;
    char *err = NULL;
    setenv("SWITCHYARD_WORKERS", "4", 1);
    setenv("SWITCHYARD_LISTEN", ":1", 1);
    assert_int_equal(LOAD(&c, &err, "--workers", "7"), 0);
    assert_int_equal(c.workers, 7);
    assert_string_equal(c.listen, ":1"); /* no flag: the variable stands */
    dp_config_free(&c);
}

static void an_empty_variable_counts_as_unset(void **state)
{
    struct dp_config c;
    char *err = NULL;
    setenv("SWITCHYARD_WORKERS", "", 1);
    setenv("SWITCHYARD_TABLE", "", 1);
    assert_int_equal(LOAD(&c, &err), 0);
    assert_null(c.table_path);
    assert_true(c.workers >= 1);
    dp_config_free(&c);
}

static void a_bad_variable_is_named_in_the_message(void **state)
{
    setenv("SWITCHYARD_WORKERS", "many", 1);
    EXPECT_ERROR("SWITCHYARD_WORKERS: \"many\" is not a number between 1 and 256");
    clear_env(state);
    setenv("SWITCHYARD_MAX_BODY", "lots", 1);
    EXPECT_ERROR("SWITCHYARD_MAX_BODY: \"lots\" is not a size between 1 and 1073741824 bytes "
                 "(a number, optionally followed by k or m)");
    clear_env(state);
    setenv("SWITCHYARD_LOG_LEVEL", "chatty", 1);
    EXPECT_ERROR("SWITCHYARD_LOG_LEVEL: \"chatty\" is not one of error, warn, info, debug");
}

/* ---- sizes ----------------------------------------------------------------------------- */

static void sizes_take_k_and_m_suffixes(void **state)
{
    static const struct {
        const char *text;
        size_t want;
    } cases[] = {
        {"1", 1},       {"1000", 1000},   {"1k", 1024},     {"1K", 1024},
        {"64k", 65536}, {"3m", 3u << 20}, {"3M", 3u << 20}, {"1024m", 1u << 30},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct dp_config c;
        char *err = NULL;
        char arg[64];
        snprintf(arg, sizeof(arg), "--max-body-bytes=%s", cases[i].text);
        assert_int_equal(LOAD(&c, &err, arg), 0);
        assert_int_equal(c.max_body_bytes, cases[i].want);
        dp_config_free(&c);
    }
}

static void bad_sizes_are_refused(void **state)
{
    const char *tail = " bytes (a number, optionally followed by k or m)";
    static const char *const bad[] = {"",  "k",     "1g",  "1.5m", "-1",
                                      "0", "1025m", "1kk", " 1",   "99999999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[256];
        snprintf(want, sizeof(want),
                 "--max-body-bytes: \"%s\" is not a size between 1 and "
                 "1073741824%s",
                 bad[i], tail);
        EXPECT_ERROR(want, "--max-body-bytes", bad[i]);
    }
    EXPECT_ERROR("--max-header-bytes: \"512\" is not a size between 1024 and 16777216 bytes "
                 "(a number, optionally followed by k or m)",
                 "--max-header-bytes=512");
}

/* ---- numbers --------------------------------------------------------------------------- */

static void bad_numbers_name_the_flag_and_the_value(void **state)
{
    EXPECT_ERROR("--workers: \"abc\" is not a number between 1 and 256", "--workers", "abc");
    EXPECT_ERROR("--workers: \"0\" is not a number between 1 and 256", "--workers=0");
    EXPECT_ERROR("--workers: \"257\" is not a number between 1 and 256", "--workers=257");
    EXPECT_ERROR("--workers: \"-1\" is not a number between 1 and 256", "--workers=-1");
    EXPECT_ERROR("--workers: \"\" is not a number between 1 and 256", "--workers=");
    EXPECT_ERROR("--workers: \"4x\" is not a number between 1 and 256", "--workers=4x");
    EXPECT_ERROR("--pool-max-conns: \"0\" is not a number between 1 and 1000000",
                 "--pool-max-conns", "0");
    EXPECT_ERROR("--pool-max-idle: \"x\" is not a number between 0 and 1000000", "--pool-max-idle",
                 "x");
}

static void bad_timeouts_name_the_flag_and_the_value(void **state)
{
    static const char *const flags[] = {
        "header-timeout-ms",
        "body-timeout-ms",
        "idle-timeout-ms",
        "send-timeout-ms",
        "upstream-connect-timeout-ms",
        "upstream-first-byte-timeout-ms",
        "upstream-idle-timeout-ms",
        "upstream-total-timeout-ms",
        "pool-idle-ms",
    };
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        char arg[96], want[256];
        snprintf(arg, sizeof(arg), "--%s=0", flags[i]);
        snprintf(want, sizeof(want),
                 "--%s: \"0\" is not a number of milliseconds between 1 and 86400000", flags[i]);
        EXPECT_ERROR(want, arg);
        snprintf(arg, sizeof(arg), "--%s=10s", flags[i]);
        snprintf(want, sizeof(want),
                 "--%s: \"10s\" is not a number of milliseconds between 1 and 86400000", flags[i]);
        EXPECT_ERROR(want, arg);
    }
    EXPECT_ERROR("--drain-timeout-ms: \"86400001\" is not a number of milliseconds between 0 "
                 "and 86400000",
                 "--drain-timeout-ms", "86400001");
    EXPECT_ERROR("--drain-idle-ms: \"soon\" is not a number of milliseconds between 0 and "
                 "86400000",
                 "--drain-idle-ms", "soon");
}

/* ---- strings --------------------------------------------------------------------------- */

static void bad_strings_are_refused(void **state)
{
    EXPECT_ERROR("--log-level: \"verbose\" is not one of error, warn, info, debug",
                 "--log-level=verbose");
    EXPECT_ERROR("--table: the value is empty", "--table", "");
    EXPECT_ERROR("--port-file: the value is empty", "--port-file=");
}

/* ---- the command line itself ----------------------------------------------------------- */

static void command_line_mistakes_are_explained(void **state)
{
    EXPECT_ERROR("unknown option \"--wrokers\" (try --help)", "--wrokers", "2");
    EXPECT_ERROR("unknown option \"--listen-port\" (try --help)", "--listen-port=1");
    EXPECT_ERROR("--workers needs a value", "--workers");
    EXPECT_ERROR("unexpected argument \"serve\" (try --help)", "serve");
    EXPECT_ERROR("unexpected argument \"-w\" (try --help)", "-w", "2");
    EXPECT_ERROR("unexpected argument \"--\" (try --help)", "--");
}

/* Run <argv> with stdout captured to a file; return what it printed (caller frees). */
static char *capture_stdout(int *rc, const char *arg)
{
    char path[] = "/tmp/sy-test-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd != -1);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    dup2(fd, STDOUT_FILENO);

    struct dp_config c;
    char *err = NULL;
    *rc = LOAD(&c, &err, "--workers=1", (char *)arg);
    assert_null(err);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);

    off_t len = lseek(fd, 0, SEEK_END);
    char *out = calloc(1, (size_t)len + 1);
    assert_int_equal(pread(fd, out, (size_t)len, 0), len);
    close(fd);
    unlink(path);
    return out;
}

static void help_lists_every_flag_with_its_variable_and_default(void **state)
{
    static const char *const flags[] = {
        "--listen ADDR",
        "--workers N",
        "--table PATH",
        "--port-file PATH",
        "--log-level LEVEL",
        "--max-header-bytes BYTES",
        "--max-body-bytes BYTES",
        "--max-upstream-body-bytes BYTES",
        "--header-timeout-ms MS",
        "--body-timeout-ms MS",
        "--body-total-timeout-ms MS",
        "--idle-timeout-ms MS",
        "--send-timeout-ms MS",
        "--drain-timeout-ms MS",
        "--drain-idle-ms MS",
        "--upstream-connect-timeout-ms MS",
        "--upstream-first-byte-timeout-ms MS",
        "--upstream-idle-timeout-ms MS",
        "--upstream-total-timeout-ms MS",
        "--pool-max-idle N",
        "--pool-max-conns N",
        "--pool-idle-ms MS",
        "--help",
        "--version",
    };
    int rc;
    /* A bad variable does not stop --help. */
    setenv("SWITCHYARD_WORKERS", "zero", 1);
    char *out = capture_stdout(&rc, "--help");
    assert_int_equal(rc, 1);
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        assert_non_null(strstr(out, flags[i]));
    for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++)
        assert_non_null(strstr(out, env_vars[i]));
    assert_non_null(strstr(out, "env SWITCHYARD_LISTEN, default 0.0.0.0:8080"));
    assert_non_null(strstr(out, "env SWITCHYARD_MAX_BODY, default 8m"));
    assert_non_null(strstr(out, "env SWITCHYARD_MAX_HEADER_BYTES, default 64k"));
    assert_non_null(strstr(out, "env SWITCHYARD_UPSTREAM_TOTAL_TIMEOUT_MS, default 600000"));
    assert_non_null(strstr(out, "env SWITCHYARD_TABLE, default none"));
    assert_non_null(strstr(out, "default number of online cores"));
    free(out);

    out = capture_stdout(&rc, "-h");
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "Usage:"));
    free(out);
}

static void version_prints_the_version(void **state)
{
    int rc;
    char *out = capture_stdout(&rc, "--version");
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "switchyard-dataplane "));
    free(out);
    EXPECT_ERROR("--help takes no value", "--help=yes");
}

/* ---- listen addresses ------------------------------------------------------------------ */

static void listen_addresses_parse(void **state)
{
    static const struct {
        const char *text;
        int family;
        const char *host;
        unsigned port;
    } cases[] = {
        {"0.0.0.0:8080", AF_INET, "0.0.0.0", 8080},
        {"127.0.0.1:0", AF_INET, "127.0.0.1", 0},
        {":9000", AF_INET, "0.0.0.0", 9000},
        {"*:9000", AF_INET, "0.0.0.0", 9000},
        {"localhost:65535", AF_INET, "127.0.0.1", 65535},
        {"[::]:80", AF_INET6, "::", 80},
        {"[::1]:8443", AF_INET6, "::1", 8443},
        {"[fe80::1:2]:1", AF_INET6, "fe80::1:2", 1},
        {"[::ffff:10.0.0.1]:2", AF_INET6, "::ffff:10.0.0.1", 2},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        char *err = NULL, host[64], text[80];
        assert_int_equal(dp__listen_parse(cases[i].text, &ss, &len, &err), 0);
        assert_null(err);
        assert_int_equal(ss.ss_family, cases[i].family);
        if (cases[i].family == AF_INET) {
            struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
            assert_int_equal(len, sizeof(*sin));
            assert_int_equal(ntohs(sin->sin_port), cases[i].port);
            inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
            snprintf(text, sizeof(text), "%s:%u", cases[i].host, cases[i].port);
        } else {
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
            assert_int_equal(len, sizeof(*sin6));
            assert_int_equal(ntohs(sin6->sin6_port), cases[i].port);
            inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
            snprintf(text, sizeof(text), "[%s]:%u", cases[i].host, cases[i].port);
        }
        assert_string_equal(host, cases[i].host);

        char formatted[80];
        dp__addr_format((struct sockaddr *)&ss, formatted, sizeof(formatted));
        assert_string_equal(formatted, text);
    }
}

static void bad_listen_addresses_are_explained(void **state)
{
    EXPECT_ERROR("--listen: \"8080\" is not an address: expected host:port, [ipv6]:port or "
                 ":port",
                 "--listen", "8080");
    EXPECT_ERROR("--listen: \"0.0.0.0:99999\": the port must be a number between 0 and 65535",
                 "--listen=0.0.0.0:99999");
    EXPECT_ERROR("--listen: \"0.0.0.0:\": the port must be a number between 0 and 65535",
                 "--listen=0.0.0.0:");
    EXPECT_ERROR("--listen: \"0.0.0.0:http\": the port must be a number between 0 and 65535",
                 "--listen=0.0.0.0:http");
    EXPECT_ERROR("--listen: \"example.com:80\": \"example.com\" is not an IPv4 address (use "
                 "[...] for IPv6)",
                 "--listen=example.com:80");
    EXPECT_ERROR("--listen: \"1.2.3:80\": \"1.2.3\" is not an IPv4 address (use [...] for IPv6)",
                 "--listen=1.2.3:80");
    EXPECT_ERROR("--listen: \"::1:80\" is not an address: write an IPv6 address in brackets, "
                 "[ipv6]:port",
                 "--listen=::1:80");
    EXPECT_ERROR("--listen: \"[::1]\" is not an address: expected [ipv6]:port", "--listen=[::1]");
    EXPECT_ERROR("--listen: \"[::1:80\" is not an address: expected [ipv6]:port",
                 "--listen=[::1:80");
    EXPECT_ERROR("--listen: \"[1.2.3.4]:80\": \"1.2.3.4\" is not an IPv6 address",
                 "--listen=[1.2.3.4]:80");
    setenv("SWITCHYARD_LISTEN", "nowhere", 1);
    EXPECT_ERROR("SWITCHYARD_LISTEN: \"nowhere\" is not an address: expected host:port, "
                 "[ipv6]:port or :port");
}

#define T(f) cmocka_unit_test_setup_teardown(f, clear_env, clear_env)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(defaults_match_the_documented_ones),
        T(every_flag_is_read_in_both_forms),
        T(a_later_flag_wins_over_an_earlier_one),
        T(every_variable_is_read),
        T(a_flag_wins_over_the_environment),
        T(an_empty_variable_counts_as_unset),
        T(a_bad_variable_is_named_in_the_message),
        T(sizes_take_k_and_m_suffixes),
        T(bad_sizes_are_refused),
        T(bad_numbers_name_the_flag_and_the_value),
        T(bad_timeouts_name_the_flag_and_the_value),
        T(bad_strings_are_refused),
        T(command_line_mistakes_are_explained),
        T(help_lists_every_flag_with_its_variable_and_default),
        T(version_prints_the_version),
        T(listen_addresses_parse),
        T(bad_listen_addresses_are_explained),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
