/* SPDX-License-Identifier: Apache-2.0 */
/** Prometheus metrics: `GET /metrics` on the admin listener.
 *
 * The control plane maps the node's shared-memory segment read-only (--shm, SWITCHYARD_SHM),
 * sums the data plane's per-worker counter shards on each scrape, and names each slot from the
 * routing table it publishes. Only slots of that table are exported. Without --shm, or while
 * the segment does not exist yet, only the control plane's own metrics are exported; the
 * attach is retried every second, and a segment replaced by a restarted data plane (a new file,
 * a new header generation) is attached in place of the old one.
 *
 * The endpoint needs no token unless --metrics-token (SWITCHYARD_METRICS_TOKEN) is set: then
 * it wants `Authorization: Bearer <that token>`. The admin tokens do not open it, so a scraper
 * never holds a token that can change the config. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "sy/buf.h"

struct cp_server;
struct cp_metrics;
struct sy_http_request;
struct sy_shm;

/** Settings of the metrics module (serve.c fills them from flags and the environment). */
struct cp_metrics_config {
    char *shm_path; /* SWITCHYARD_SHM, --shm: the data plane's segment file; NULL: none */
    char *token;    /* SWITCHYARD_METRICS_TOKEN(_FILE), --metrics-token(-file); NULL: open */
};

/** Free what <c> holds (the token is wiped); the struct itself is the caller's. */
void cp__metrics_config_free(struct cp_metrics_config *c);

/** Start the module for <cp> (borrowed; its loop must be initialised): take <cfg>'s strings
 * (it is left zeroed), try the first attach and arm the 1-second retry timer. Returns 0 or
 * -ENOMEM with *<err> (caller frees). A missing segment is not an error. */
int cp__metrics_start(struct cp_server *cp, struct cp_metrics_config *cfg, char **err);

/** Stop the timer, unmap the segment and free the module (once its timer handle has closed,
 * so the loop must run afterwards). Safe to call twice and before cp__metrics_start(). */
void cp__metrics_stop(struct cp_server *cp);

/** Answer <req> (`/metrics`; the admin API routes it here before its own token check). */
void cp__metrics_request(struct sy_http_request *req);

/** Append the exposition (text format 0.0.4) of everything <m> (borrowed) knows to <out>.
 * Exposed for unit tests. */
void cp__metrics_render(struct cp_metrics *m, struct sy_buf *out);

/* ---- what the publisher tells (publish.c) ---------------------------------------------------- */

/** A view of the publisher, valid until control returns to the loop. */
struct cp_publish_view {
    uint64_t version;  /* published config version; 0 before the first table */
    const char *table; /* its msgpack body (borrowed; holds credentials: never copy it out) */
    size_t table_len;
    unsigned workers;   /* data-plane workers connected and past HELLO */
    int64_t publish_ms; /* change to the last worker's ACK, for the newest version; -1 unknown */
};

/** Fill <out> from <cp>'s publisher; all zero (publish_ms -1) before it starts. */
void cp__publisher_view(struct cp_server *cp, struct cp_publish_view *out);
