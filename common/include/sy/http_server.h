/* SPDX-License-Identifier: Apache-2.0 */
/** An HTTP/1.1 server on a libuv loop and llhttp, shared by the data plane (model endpoints)
 * and the control plane (admin API): keep-alive, pipelined requests answered in order, chunked
 * and content-length bodies, Expect: 100-continue, limits on the head and the body, timeouts
 * for slow or half-open clients, graceful drain. One request at a time per connection. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>
#include <uv.h>

#include "sy/arena.h"
#include "sy/buf.h"

struct sy_http_conn;
struct sy_http_request;
struct sy_http_server;
struct sy_tls_server;

/** Largest plaintext of one TLS record: what one SSL_read can return. */
#define SY_HTTP_TLS_PLAIN_BUF 16384

/** Intrusive doubly linked list node. */
struct sy_link {
    struct sy_link *prev, *next;
};

/** Limits and timeouts of a server; zero fields are not allowed (see sy_http_limits_default). */
struct sy_http_limits {
    size_t max_header_bytes;    /* larger head -> 431 */
    size_t max_body_bytes;      /* larger body -> 413 */
    uint32_t header_timeout_ms; /* the whole head must arrive within this -> 408 */
    uint32_t body_timeout_ms;   /* longest silence inside a body -> 408 */
    uint32_t idle_timeout_ms;   /* keep-alive connection idle between requests -> closed */
    uint32_t send_timeout_ms;   /* a client that reads nothing for this long -> closed */
    /* the whole body must arrive within this -> 408 (a body dribbled a byte at a time never
     * stalls); 0: no bound */
    uint32_t body_total_timeout_ms;
};

/** A complete request, to be answered with sy_http_resp_*. */
typedef void (*sy_http_request_cb)(struct sy_http_request *req);
/** A dispatched request has ended (answered or abandoned); its memory is about to be reused. */
typedef void (*sy_http_request_done_cb)(struct sy_http_request *req);
/** A connection closed (for a draining owner waiting for the last one). */
typedef void (*sy_http_conn_closed_cb)(struct sy_http_server *s);
/** The client went away while its request was being handled: release what the handler holds
 * (cancel upstream work); the request must not be touched afterwards. */
typedef void (*sy_http_abort_cb)(struct sy_http_request *req);
/** The connection's queued writes drained after sy_http_resp_write reported backpressure. */
typedef void (*sy_http_drain_cb)(struct sy_http_request *req);

struct sy_http_server {
    uv_loop_t *loop;
    struct sy_http_limits limits;
    sy_http_request_cb on_request;
    sy_http_request_done_cb on_request_done; /* may be NULL */
    sy_http_conn_closed_cb on_conn_closed;   /* may be NULL */
    void *data;                              /* the owner's */

    uv_tcp_t listener;
    struct sy_link conns; /* every open connection */
    unsigned n_conns;
    bool draining;
    uint64_t req_seq;
    uint32_t id_prefix; /* random per process, so request ids differ across workers */
    char date[40];      /* cached "Date: ...\r\n" */
    uint64_t date_sec;
    struct sy_tls_server *tls; /* NULL: plaintext; borrowed, may be replaced (new connections
                                * take the new one) */
    char rbuf[65536]; /* shared read buffer: consumed inside each read callback */
    char tls_plain[SY_HTTP_TLS_PLAIN_BUF]; /* decrypted bytes, consumed like rbuf */
};

/** One header of a request; pointers into the request's header buffer. */
struct sy_http_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct sy_http_request {
    struct sy_http_conn *conn;
    struct sy_http_server *server;
    struct sy_arena arena; /* per-request allocations, freed in one go when it ends */
    /* Everything below is reset between requests. */
    llhttp_method_t method;
    const char *path; /* target without the query string, NUL-terminated */
    size_t path_len;
    const char *query; /* after '?', NUL-terminated; NULL if none */
    struct sy_http_header *headers;
    size_t n_headers;
    struct sy_buf body;
    bool keep_alive;
    bool dispatched;
    uint64_t start_ns;
    char id[40]; /* request id, also sent as x-request-id */

    /* response state, owned by the server */
    uint16_t resp_status; /* the status sent, 0 before the head went out */
    bool resp_started;
    bool resp_chunked;
    bool resp_done;

    /* the handler's state */
    void *handler;
    void *ctx; /* the owner's per-request context (the data plane: its routing table) */
    sy_http_abort_cb on_abort;
    sy_http_drain_cb on_drain;

    /* a copy of the response body as sent (for the request log): the handler points <capture>
     * at a buffer it owns; the first <capture_max> bytes go into it, <capture_total> counts all */
    struct sy_buf *capture;
    size_t capture_max;
    uint64_t capture_total;
};

/** The defaults: 64 KiB head, 8 MiB body, 10 s head, 30 s body silence, 120 s whole body,
 * 60 s idle, 60 s send. */
void sy_http_limits_default(struct sy_http_limits *l);

/** Prepare <s> on <loop>; the caller then fills the callbacks and binds s->listener (with
 * uv_tcp_open on an inherited socket or uv_tcp_bind) before sy_http_server_start. */
void sy_http_server_init(struct sy_http_server *s, uv_loop_t *loop,
                         const struct sy_http_limits *limits);
/** Start accepting on s->listener. */
int sy_http_server_start(struct sy_http_server *s);
/** Begin a graceful drain: stop accepting (closes the listener); in-flight requests finish with
 * Connection: close; idle connections stay until sy_http_server_close_idle. */
void sy_http_server_drain(struct sy_http_server *s);
/** Close the connections that wait idle between requests. */
void sy_http_server_close_idle(struct sy_http_server *s);
/** Close every connection now. */
void sy_http_server_close_all(struct sy_http_server *s);

/** The value of header <name> (case-insensitive) or NULL; sets *<len>. */
const char *sy_http_req_header(const struct sy_http_request *req, const char *name, size_t *len);

/** The client's address as "a.b.c.d:port" or "[v6]:port" into <out>/<n>. Returns 0 or a
 * negative errno. */
int sy_http_req_peer(const struct sy_http_request *req, char *out, size_t n);

/** Value of query parameter <name> (not decoded) or NULL; sets *<len>. */
const char *sy_http_req_query(const struct sy_http_request *req, const char *name, size_t *len);

struct sy_http_resp_head {
    int status;
    const char *content_type; /* NULL for none */
    const char *extra;        /* preformatted header lines "Name: value\r\n", or NULL */
    size_t extra_len;
    int64_t content_length; /* -1: chunked */
};

/** Start the response with head <h> (copied). The head is kept back and goes out in one write
 * with the first body bytes or the end, so that a client gets it in the same packet. Returns 0
 * (a client that has gone is seen by the next write). */
int sy_http_resp_start(struct sy_http_request *req, const struct sy_http_resp_head *h);
/** Send <n> bytes of body (borrowed; copied only if the socket cannot take them at once).
 * Returns 1 when the connection's write queue is above the backpressure mark (the handler
 * should stop producing until on_drain), 0 otherwise, or a negative errno. */
int sy_http_resp_write(struct sy_http_request *req, const char *data, size_t n);
/** Finish the response; the request is over and must not be touched afterwards. */
void sy_http_resp_end(struct sy_http_request *req);
/** Write <n> bytes of <data> (borrowed; may be NULL when <n> is 0) as the last of the body and
 * end the response, in one write with the last chunk (and the head, if nothing was written
 * yet). */
void sy_http_resp_end_with(struct sy_http_request *req, const char *data, size_t n);
/** Abort the response mid-way: close the connection without finishing the body, so the client
 * sees a truncated message and never mistakes it for a complete one. Ends the request. */
void sy_http_resp_abort(struct sy_http_request *req);
/** Send a whole response (borrowed <body>) in one go and end the request. */
void sy_http_resp_send(struct sy_http_request *req, int status, const char *content_type,
                       const char *extra, const char *body, size_t len);
/** Append to <b> an error body in OpenAI's shape {"error":{"message","type","param","code"}};
 * <param> and <code> may be NULL (JSON null). All strings borrowed. */
void sy_http_error_json(struct sy_buf *b, const char *type, const char *code, const char *param,
                        const char *msg);

/** Send an error in OpenAI's shape {"error":{"message","type","param","code"}} and end the
 * request. <param> and <code> may be NULL (JSON null). */
void sy_http_resp_error(struct sy_http_request *req, int status, const char *type,
                        const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
