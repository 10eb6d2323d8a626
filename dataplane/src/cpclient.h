/* SPDX-License-Identifier: Apache-2.0 */
/** The data plane's client of the control plane: each worker keeps one connection to the
 * control socket, says HELLO, takes the routing tables published on it and acknowledges them.
 * Protocol: proto/README.md, "The socket". */
#pragma once

struct dp_worker;
struct dp_cpclient;

/** Start the client of worker <w> (borrowed; must outlive the client) on the socket
 * w->cfg->control_socket: connect now, and again with backoff (100 ms doubling to 2 s) whenever
 * the connection fails or ends, forever, while the worker serves its last good table. Worker 0
 * also writes each new table to w->cfg->snapshot_path, when set. */
struct dp_cpclient *dp_cpclient_start(struct dp_worker *w);

/** Close the client <c> (invalidated): its connection and timer close, a snapshot being written
 * is finished, and it then frees itself; nothing of it keeps the loop alive longer than that.
 * NULL is fine. */
void dp_cpclient_close(struct dp_cpclient *c);
