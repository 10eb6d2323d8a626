/* SPDX-License-Identifier: Apache-2.0 */
/** Declarations shared between the data plane's files. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "sy/table-t.h"

struct sy_tls_server;

/** Settings of the data plane; every one is a flag and an environment variable (config.c). */
struct dp_config {
    char *listen;           /* SWITCHYARD_LISTEN, --listen: "host:port" (default 0.0.0.0:8080) */
    unsigned workers;       /* SWITCHYARD_WORKERS, --workers (default: number of cores) */
    char *table_path;       /* SWITCHYARD_TABLE, --table: routing table file, JSON or msgpack */
    char *port_file;        /* --port-file: write the bound port here once listening */
    char *log_level;        /* SWITCHYARD_LOG_LEVEL, --log-level */
    size_t max_header_bytes; /* --max-header-bytes (65536): larger head -> 431 */
    size_t max_body_bytes;   /* SWITCHYARD_MAX_BODY, --max-body-bytes (8 MiB): larger -> 413 */
    /* --max-upstream-body-bytes (64 MiB): a larger answer (not a stream) -> 502 */
    size_t max_upstream_body_bytes;
    uint32_t header_timeout_ms; /* --header-timeout-ms (10000): whole request head must arrive */
    uint32_t body_timeout_ms;   /* --body-timeout-ms (30000): longest silence inside a body */
    /* --body-total-timeout-ms (120000): the whole body must arrive; 0: no bound */
    uint32_t body_total_timeout_ms;
    uint32_t idle_timeout_ms;   /* --idle-timeout-ms (60000): keep-alive connection idle */
    uint32_t send_timeout_ms;   /* --send-timeout-ms (60000): a client that reads nothing */
    uint32_t drain_timeout_ms;  /* --drain-timeout-ms (30000): SIGTERM grace for in-flight work */
    uint32_t drain_idle_ms;     /* --drain-idle-ms (2000): idle keep-alives kept open on drain */
    struct sy_timeouts upstream_timeouts; /* defaults for deployments that set none */
    uint32_t pool_max_idle;     /* --pool-max-idle (64) per origin */
    uint32_t pool_max_conns;    /* --pool-max-conns (1024) per origin */
    uint32_t pool_idle_ms;      /* --pool-idle-ms (60000) */
    char *control_socket;  /* SWITCHYARD_SOCKET, --control-socket: the control plane's Unix socket */
    char *node_id;         /* SWITCHYARD_NODE_ID, --node-id: this node in HELLOs (host name) */
    char *snapshot_path;   /* SWITCHYARD_SNAPSHOT, --snapshot: last-known-good table file */
    char *snapshot_key_file; /* SWITCHYARD_SNAPSHOT_KEY_FILE, --snapshot-key-file: the key that
                              * encrypts the snapshot (default <snapshot>.key, made if absent) */
    char *tls_cert;          /* SWITCHYARD_TLS_CERT, --tls-cert: HTTPS certificate chain (PEM) */
    char *tls_key;           /* SWITCHYARD_TLS_KEY, --tls-key: its private key (PEM) */
    char *shm_path;        /* SWITCHYARD_SHM, --shm: the node's shared-memory segment file
                            * the control plane attaches (default: anonymous) */
    char *encode_table[2]; /* hidden --encode-table IN OUT: convert a table file and exit */
    uint32_t shm_combos;   /* SWITCHYARD_SHM_COMBOS, --shm-combos (16384): usage cells per
                            * deployment x model x key combination */
    uint32_t shm_request_log_cells; /* SWITCHYARD_SHM_REQUEST_LOG_CELLS (4096): 1 KiB each */
};

/** Fill <c> from defaults, then the environment, then <argv>. On a bad value returns -EINVAL
 * with a message in *<err> (caller frees); on --help or --version prints to stdout and returns
 * 1. On any non-zero return <c> holds nothing to free. */
int dp_config_load(struct dp_config *c, int argc, char **argv, char **err);
/** Free the strings of <c>; safe on a zeroed or already freed <c>. */
void dp_config_free(struct dp_config *c);

/** Parse a listen address <text> (borrowed): "host:port" with an IPv4 host, "[ipv6]:port",
 * ":port" or "*:port" (every IPv4 interface), "localhost:port". Fills <addr>/<len>. On failure
 * returns -EINVAL with a message in *<err> (caller frees). */
int dp__listen_parse(const char *text, struct sockaddr_storage *addr, socklen_t *len, char **err);
/** Write <sa> as "a.b.c.d:port" or "[v6]:port" into <out>/<size>. */
void dp__addr_format(const struct sockaddr *sa, char *out, size_t size);

/* ---- master.c ---------------------------------------------------------------------------- */

/** Run the master: bind one SO_REUSEPORT listener per worker slot, fork the workers, restart
 * one that dies, replace them all on SIGHUP, drain them on SIGTERM/SIGINT. Returns the exit
 * status. */
int dp_master_run(const struct dp_config *c);

/** --encode-table IN OUT: load the table file IN (JSON or msgpack, validated as at start-up)
 * and write it to OUT as msgpack, mode 0600. Returns the exit status. */
int dp__encode_table(const char *in, const char *out);

/** The node's shared memory, created by the master before it forks (workers inherit the
 * mapping); NULL when it could not be created (governance state then stays per worker). */
extern struct sy_shm *dp__node_shm;

/** The listener's TLS context (--tls-cert/--tls-key), loaded by the master at start and on
 * SIGHUP and inherited by the workers it forks; NULL when serving plain HTTP. */
extern struct sy_tls_server *dp__listen_tls;

/* ---- snapshot.c --------------------------------------------------------------------------- */

struct sy_buf;

/** Load the snapshot key (--snapshot-key-file), or read or make <snapshot>.key (mode 0600);
 * nothing without --snapshot. Called by the master before it forks. Returns 0 or -EINVAL with a
 * message in *<err> (caller frees). */
int dp__snapshot_key_init(const struct dp_config *c, char **err);
/** Encode <t> (borrowed) and encrypt it with the snapshot key into <out> (reset first): the
 * bytes of a snapshot file. The plaintext is wiped. Returns 0 or -EIO. Safe in the thread pool. */
int dp__snapshot_seal(const struct sy_table *t, struct sy_buf *out);
/** Read, decrypt and decode the snapshot <path> (borrowed). On success *<out> holds a new table
 * with one reference; else -EINVAL with a message naming the file in *<err> (caller frees). */
int dp__snapshot_load(const char *path, struct sy_table **out, char **err);

/* ---- worker.c ---------------------------------------------------------------------------- */

/** Body of a worker process (called in the child after fork): serve on the inherited listening
 * socket <listen_fd> with routing table <table> (takes the reference) until told to drain
 * (SIGTERM) and done. Writes one byte to <ready_fd> (then closes it) once it is accepting, so
 * the master can retire the generation it replaces; -1 for none. <index> names the slot in
 * logs. Returns the process exit status: 0 after a drain. */
int dp_worker_run(const struct dp_config *c, int listen_fd, unsigned index, int ready_fd,
                  struct sy_table *table);
