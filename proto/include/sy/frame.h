/* SPDX-License-Identifier: Apache-2.0 */
/** Frames of the control-plane <-> data-plane socket: an incremental reader, writers, and the
 * codecs of the small messages (HELLO, ACK, PING/PONG). A TABLE frame's body is a routing table
 * (sy_table_encode / sy_table_decode). Every message and field is documented in
 * proto/README.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sy/buf.h"
#include "sy/table-t.h"

/** Version of the socket protocol. A peer that says another version in its HELLO is refused:
 * the version changes only when old and new cannot talk at all (unknown keys and frame types
 * are ignored, so adding either needs no bump). */
#define SY_PROTO_VERSION 1

/** Bytes before the body: a 4-byte big-endian body length, then the type byte. */
#define SY_FRAME_HEADER 5

/** Largest body a reader accepts by default; a longer frame is a protocol error. */
#define SY_FRAME_MAX_BODY (256u << 20)

enum sy_frame_type {
    SY_FRAME_INVALID = 0, /* never sent */
    SY_FRAME_HELLO = 1,   /* both ways, first: struct sy_hello */
    SY_FRAME_TABLE = 2,   /* control plane -> data plane: a routing table */
    SY_FRAME_ACK = 3,     /* data plane -> control plane, per TABLE: struct sy_ack */
    SY_FRAME_PING = 4,    /* either way: {t}; answered by a PONG with the same t */
    SY_FRAME_PONG = 5,
    SY_FRAME_MAX,
};

/** Name of frame type <type> ("HELLO"), or "unknown". */
const char *sy_frame_type_name(unsigned type);

/* ---- reading --------------------------------------------------------------------------- */

/** One complete frame: <type> (any byte: a type this build does not know is the caller's to
 * ignore) and its body <body>/<len>, borrowed for the duration of the call only. Return 0 to
 * go on, anything else to stop: sy_frame_reader_feed() then returns that value and drops the
 * bytes after that frame (stopping means closing the connection). The callback must not feed or
 * free the reader. */
typedef int (*sy_frame_cb)(void *ud, unsigned type, const char *body, size_t len);

/** An incremental reader: bytes go in as they arrive, in pieces of any size; each complete
 * frame comes out through the callback. It holds at most one frame's bytes (SY_FRAME_HEADER +
 * max_body), and none at all for a frame that arrives whole in one piece. */
struct sy_frame_reader {
    struct sy_buf buf; /* the bytes of an incomplete frame */
    size_t max_body;
    bool failed; /* a frame was too large: the stream cannot be resynchronised */
};

/** Prepare <r> for frames of at most <max_body> bytes of body (SY_FRAME_MAX_BODY is the
 * protocol's limit; larger is clamped to it). */
void sy_frame_reader_init(struct sy_frame_reader *r, size_t max_body);

/** Feed <len> bytes at <data> (borrowed) and call <cb> for each frame they complete. Returns 0,
 * the first non-zero value <cb> returned, or
 * -EMSGSIZE with *<err> set (caller frees; <err> may be NULL) when a frame announces a body
 * larger than the limit: the connection must then be closed, and every later feed fails. */
int sy_frame_reader_feed(struct sy_frame_reader *r, const char *data, size_t len, sy_frame_cb cb,
                         void *ud, char **err);

/** Bytes held for a frame not yet complete. */
static inline size_t sy_frame_reader_pending(const struct sy_frame_reader *r)
{
    return r->buf.len;
}

/** Release the buffer; <r> can be initialised again. */
void sy_frame_reader_free(struct sy_frame_reader *r);

/* ---- writing --------------------------------------------------------------------------- */

/** Start a frame of <type> at the end of <out>: writes a header whose length
 * sy_frame_end() fills in. Returns the offset to give it. */
size_t sy_frame_begin(struct sy_buf *out, enum sy_frame_type type);

/** Finish the frame begun at <start>: the body is everything appended since. Returns 0, or
 * -EMSGSIZE (the frame is removed from <out>) when the body exceeds SY_FRAME_MAX_BODY. */
int sy_frame_end(struct sy_buf *out, size_t start);

/** Append a whole frame of <type> with body <body>/<len> (borrowed) to <out>. Returns 0 or
 * -EMSGSIZE. */
int sy_frame_write(struct sy_buf *out, enum sy_frame_type type, const char *body, size_t len);

/** Append a TABLE frame holding <t> (borrowed) to <out>. The bytes hold the credentials of
 * the deployments: zero them when done. Returns 0 or -EMSGSIZE. */
int sy_frame_write_table(struct sy_buf *out, const struct sy_table *t);

/* ---- HELLO ----------------------------------------------------------------------------- */

enum sy_role {
    SY_ROLE_DATAPLANE = 0, /* "dataplane": a worker of a data plane */
    SY_ROLE_CONTROLPLANE,  /* "controlplane" */
    SY_ROLE_MAX,
};

/** The first frame each way. */
struct sy_hello {
    uint32_t proto; /* SY_PROTO_VERSION */
    enum sy_role role;
    char *node;             /* node (host or pod) name; "" when not given, never NULL */
    int64_t pid;            /* sender's process id; 0 when not given */
    uint32_t worker;        /* data plane: the worker's index; 0 otherwise */
    uint64_t table_version; /* data plane: the version it serves now (0: none); control plane:
                             * the newest it has */
    char **caps;            /* capabilities, e.g. "table", "ping"; may be NULL when n_caps 0 */
    uint32_t n_caps;
};

/** Append a HELLO frame for <h> (borrowed; proto is written as given, node NULL as ""). */
int sy_hello_write(struct sy_buf *out, const struct sy_hello *h);

/** Decode a HELLO body <body>/<len> into <h> (zeroed first; free with sy_hello_free()).
 * Unknown keys are ignored. Returns 0; -EPROTONOSUPPORT when the peer speaks another protocol
 * version ("proto: the peer speaks protocol version 2; this build speaks version 1"); -EINVAL
 * for a malformed body; *<err> (caller frees) says what is wrong. */
int sy_hello_decode(const char *body, size_t len, struct sy_hello *h, char **err);

/** Whether <h> lists capability <cap>. */
bool sy_hello_has_cap(const struct sy_hello *h, const char *cap);

/** Free what sy_hello_decode() allocated in <h> and zero it. */
void sy_hello_free(struct sy_hello *h);

/** "dataplane" or "controlplane". */
const char *sy_role_name(enum sy_role role);

/* ---- ACK ------------------------------------------------------------------------------- */

/** The data plane's answer to a TABLE. */
struct sy_ack {
    uint64_t version; /* the table version the worker serves after this TABLE */
    bool ok;          /* false: the TABLE was refused, and <error> says why */
    char *error;      /* NULL when ok */
};

/** Append an ACK frame for <a> (borrowed). */
int sy_ack_write(struct sy_buf *out, const struct sy_ack *a);

/** Decode an ACK body into <a> (zeroed first; free with sy_ack_free()). Returns 0 or -EINVAL
 * with *<err> set (caller frees). */
int sy_ack_decode(const char *body, size_t len, struct sy_ack *a, char **err);

/** Free <a>'s error string and zero it. */
void sy_ack_free(struct sy_ack *a);

/* ---- PING / PONG ----------------------------------------------------------------------- */

/** Append a PING or PONG frame (<type>) carrying <t> (the sender's clock, echoed back). */
int sy_ping_write(struct sy_buf *out, enum sy_frame_type type, int64_t t);

/** Decode a PING or PONG body: *<t> is its t (0 when absent). Returns 0 or -EINVAL with *<err>
 * set (caller frees). */
int sy_ping_decode(const char *body, size_t len, int64_t *t, char **err);
