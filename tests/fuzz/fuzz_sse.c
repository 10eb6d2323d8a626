/* SPDX-License-Identifier: Apache-2.0 */
/* The SSE parser (common/src/sse.c) fed a stream whole and cut into pieces of fuzzer-chosen
 * sizes: both runs must deliver the same events (fields equal, raw bytes equal but for a
 * "\r\n" split between feeds), every event inside the bounds the header promises.
 *
 * Input: byte 0 picks the piece size (1..64, or 0: bytes 1-4 as a list of sizes), the rest is
 * the stream. */
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "sy/buf.h"
#include "sy/sse.h"

#define MAX_EVENT 4096

struct rec {
    struct sy_buf log; /* every event, serialised */
    size_t n;
};

static void put_field(struct sy_buf *b, const char *p, size_t n)
{
    sy_buf_putu(b, n);
    sy_buf_append(b, ":", 1);
    if (n)
        sy_buf_append(b, p, n);
}

static int on_event(void *ud, const struct sy_sse_event *ev)
{
    struct rec *r = ud;
    FUZZ_CHECK(ev->raw_len > 0 && ev->raw_len <= MAX_EVENT, "event size within max_event");
    FUZZ_CHECK(ev->event != NULL && ev->data != NULL, "event and data are never NULL");
    FUZZ_CHECK(ev->event_len <= ev->raw_len, "event name inside the event");
    FUZZ_CHECK(ev->id == NULL || ev->id_len <= ev->raw_len, "id inside the event");
    FUZZ_CHECK(ev->id == NULL || memchr(ev->id, '\0', ev->id_len) == NULL, "id has no NUL");
    /* The raw bytes end with the blank line; a '\n' completing a "\r\n" may be in the next feed. */
    size_t raw = ev->raw_len;
    while (raw > 0 && (ev->raw[raw - 1] == '\n' || ev->raw[raw - 1] == '\r'))
        raw--;
    FUZZ_CHECK(raw < ev->raw_len, "raw ends with a line terminator");
    put_field(&r->log, ev->raw, raw);
    put_field(&r->log, ev->event, ev->event_len);
    put_field(&r->log, ev->data, ev->data_len);
    if (ev->id)
        put_field(&r->log, ev->id, ev->id_len);
    else
        sy_buf_puts(&r->log, "-");
    sy_buf_puts(&r->log, "\n");
    r->n++;
    return 0;
}

/* Feed <d>/<n> in pieces of sizes drawn from <sizes>/<nsizes> (cycled); 0 sizes: whole.
 * Returns the first error or 0. */
static int run(struct rec *r, const char *d, size_t n, const uint8_t *sizes, size_t nsizes)
{
    struct sy_sse_parser p;
    sy_sse_init(&p, MAX_EVENT);
    int rc = 0;
    size_t off = 0, k = 0;
    while (off < n) {
        size_t piece = nsizes ? (size_t)(sizes[k++ % nsizes] % 64) + 1 : n;
        piece = piece > n - off ? n - off : piece;
        char *c = fuzz_dup(d + off, piece); /* exactly sized, so ASan sees overreads */
        rc = sy_sse_feed(&p, c, piece, on_event, r);
        free(c);
        off += piece;
        if (rc != 0)
            break;
        FUZZ_CHECK(sy_sse_pending(&p) <= MAX_EVENT, "pending bounded by max_event");
    }
    sy_sse_free(&p);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *sizes = data;
    size_t nsizes = 1;
    if (data[0] == 0 && size >= 5) {
        sizes = data + 1;
        nsizes = 4;
    }
    const char *d = (const char *)data + (nsizes == 4 ? 5 : 1);
    size_t n = size - (nsizes == 4 ? 5 : 1);

    struct rec whole = {.log = SY_BUF_INIT}, cut = {.log = SY_BUF_INIT};
    int rw = run(&whole, d, n, NULL, 0);
    int rc = run(&cut, d, n, sizes, nsizes);
    FUZZ_CHECK(rw == 0 || rw == -EMSGSIZE, "feed returns 0 or -EMSGSIZE");
    FUZZ_CHECK(rc == 0 || rc == -EMSGSIZE, "feed returns 0 or -EMSGSIZE");
    /* An event over the limit stops one run where the other may stop earlier or later (an
     * oversized partial tail); without one, both runs must agree event for event. */
    if (rw == 0 && rc == 0) {
        FUZZ_CHECK(whole.n == cut.n, "same number of events whole and cut");
        bool same =
            whole.log.len == cut.log.len &&
            (whole.log.len == 0 || memcmp(whole.log.data, cut.log.data, whole.log.len) == 0);
        if (!same)
            fprintf(stderr, "whole:\n%.*s\ncut:\n%.*s\n", (int)whole.log.len, whole.log.data,
                    (int)cut.log.len, cut.log.data);
        FUZZ_CHECK(same, "same events whole and cut");
    }
    sy_buf_free(&whole.log);
    sy_buf_free(&cut.log);
    return 0;
}
