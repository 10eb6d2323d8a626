/* SPDX-License-Identifier: Apache-2.0 */
/** An incremental Server-Sent Events parser (the WHATWG event-stream format). Bytes are fed as
 * they arrive; each complete event (ended by a blank line) is handed to a callback with its raw
 * bytes, so a proxy can forward it byte for byte, and with its parsed fields. An event that lies
 * whole inside one fed chunk is handed over without a copy; only a partial event is carried. */
#pragma once

#include <stddef.h>

#include "sy/buf.h"

struct sy_sse_event {
    const char *raw; /* the event as received, through its terminating blank line */
    size_t raw_len;
    const char *event; /* value of the last `event:` field, "" if none */
    size_t event_len;
    const char *data; /* `data:` lines joined with "\n", without the final newline */
    size_t data_len;
    const char *id; /* value of the last `id:` field, NULL if none */
    size_t id_len;
};

/** Called once per complete event; the pointers are valid only during the call. A nonzero
 * return stops sy_sse_feed(), which returns it. */
typedef int (*sy_sse_event_cb)(void *ud, const struct sy_sse_event *ev);

struct sy_sse_parser {
    struct sy_buf pending; /* bytes of an event not yet complete */
    struct sy_buf scratch; /* joined data lines when an event has several */
    size_t max_event;      /* an event larger than this is an error */
};

/** Prepare <p>; events longer than <max_event> bytes make sy_sse_feed() fail with -EMSGSIZE. */
void sy_sse_init(struct sy_sse_parser *p, size_t max_event);

/** Feed <n> bytes of <d> (borrowed), calling <cb> for each event completed. Returns 0,
 * -EMSGSIZE, or the callback's nonzero value. Comment-only events (": ping") are delivered
 * too, with data_len 0 and raw set, so a proxy can pass keep-alives through. */
int sy_sse_feed(struct sy_sse_parser *p, const char *d, size_t n, sy_sse_event_cb cb, void *ud);

/** Bytes of an incomplete event still held. */
static inline size_t sy_sse_pending(const struct sy_sse_parser *p)
{
    return p->pending.len;
}

/** Release the parser's memory. */
void sy_sse_free(struct sy_sse_parser *p);
