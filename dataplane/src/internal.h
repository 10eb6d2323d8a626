/* SPDX-License-Identifier: Apache-2.0 */
/** Declarations shared between the data plane's files. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "sy/table-t.h"

/** Settings of the data plane; every one is a flag and an environment variable (config.c). */
struct dp_config {
    char *listen;           /* SWITCHYARD_LISTEN, --listen: "host:port" (default 0.0.0.0:8080) */
    unsigned workers;       /* SWITCHYARD_WORKERS, --workers (default: number of cores) */
    char *table_path;       /* SWITCHYARD_TABLE, --table: routing table file, JSON or msgpack */
    char *port_file;        /* --port-file: write the bound port here once listening */
    char *log_level;        /* SWITCHYARD_LOG_LEVEL, --log-level */
    size_t max_header_bytes; /* --max-header-bytes (65536): larger head -> 431 */
    size_t max_body_bytes;   /* SWITCHYARD_MAX_BODY, --max-body-bytes (8 MiB): larger -> 413 */
    uint32_t header_timeout_ms; /* --header-timeout-ms (10000): whole request head must arrive */
    uint32_t body_timeout_ms;   /* --body-timeout-ms (30000): longest silence inside a body */
    uint32_t idle_timeout_ms;   /* --idle-timeout-ms (60000): keep-alive connection idle */
    uint32_t send_timeout_ms;   /* --send-timeout-ms (60000): a client that reads nothing */
    uint32_t drain_timeout_ms;  /* --drain-timeout-ms (30000): SIGTERM grace for in-flight work */
    uint32_t drain_idle_ms;     /* --drain-idle-ms (2000): idle keep-alives kept open on drain */
    struct sy_timeouts upstream_timeouts; /* defaults for deployments that set none */
    uint32_t pool_max_idle;     /* --pool-max-idle (64) per origin */
    uint32_t pool_max_conns;    /* --pool-max-conns (1024) per origin */
    uint32_t pool_idle_ms;      /* --pool-idle-ms (60000) */
};

/** Fill <c> from defaults, then the environment, then <argv>. On a bad value returns -EINVAL
 * with a message in *<err> (caller frees); on --help prints usage and returns 1. */
int dp_config_load(struct dp_config *c, int argc, char **argv, char **err);
void dp_config_free(struct dp_config *c);

/* ---- master.c ---------------------------------------------------------------------------- */

/** Run the master: bind one SO_REUSEPORT listener per worker slot, fork the workers, restart
 * one that dies, replace them all on SIGHUP, drain them on SIGTERM/SIGINT. Returns the exit
 * status. */
int dp_master_run(const struct dp_config *c);

/* ---- worker.c ---------------------------------------------------------------------------- */

/** Body of a worker process: serve on the inherited listening socket <listen_fd> until told to
 * drain (SIGTERM) and done. <index> names the slot in logs. Returns the exit status. */
int dp_worker_run(const struct dp_config *c, int listen_fd, unsigned index);
