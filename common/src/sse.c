/* SPDX-License-Identifier: Apache-2.0 */
/* Server-Sent Events parsing (WHATWG "event stream interpretation").
 *
 * The fast path works on the caller's bytes: each event that lies whole inside a fed chunk is
 * scanned once and delivered with pointers into the chunk. Only the tail of a chunk that holds
 * an incomplete event is copied into p->pending; the next feed finds where that event ends,
 * appends just the missing bytes and parses the now whole event from p->pending.
 *
 * The parser keeps no state besides p->pending, which always starts at the beginning of an
 * event (after its leading blank lines), so its last byte says everything the next feed needs:
 * whether the next byte starts a line, and whether a '\n' first in the next chunk ends a "\r\n"
 * split between the feeds. */
#include <errno.h>
#include <string.h>

#include "sy/sse.h"
#include "sy/util.h"

/* ---- lines ------------------------------------------------------------------------------ */

/* Finds line ends in [s, end). The next '\r' and the next '\n' are each found with memchr and
 * remembered until passed, so a stream that never uses '\r' costs one memchr per chunk for it,
 * and every byte is looked at about twice in all, with the C library's vector code. */
struct lines {
    const char *end;
    const char *cr; /* next '\r' at or after the last position asked, or end */
    const char *lf; /* next '\n', likewise */
};

static const char *find_or_end(const char *s, const char *end, int c)
{
    const char *r = memchr(s, c, (size_t)(end - s));
    return r ? r : end;
}

static void lines_init(struct lines *l, const char *s, const char *end)
{
    l->end = end;
    l->cr = find_or_end(s, end, '\r');
    l->lf = find_or_end(s, end, '\n');
}

/* The first line terminator at or after <s>, or l->end when the line is not terminated. */
static inline const char *next_eol(struct lines *l, const char *s)
{
    if (l->cr < s)
        l->cr = find_or_end(s, l->end, '\r');
    if (l->lf < s)
        l->lf = find_or_end(s, l->end, '\n');
    return l->cr < l->lf ? l->cr : l->lf;
}

/* Length of the terminator at <eol> (which is '\r' or '\n'): "\r\n" counts as one. A '\r' last
 * in the buffer counts alone; if the next chunk starts with '\n', the caller skips it. */
static inline size_t eol_len(const char *eol, const char *end)
{
    return (*eol == '\r' && eol + 1 < end && eol[1] == '\n') ? 2 : 1;
}

/* ---- events ----------------------------------------------------------------------------- */

static const char bom[3] = {'\xef', '\xbb', '\xbf'};

/* Skip blank lines and UTF-8 BOMs before an event. A BOM is honoured at the start of any event,
 * not only of the stream, and after blank lines as well as before them: the parser holds no
 * "stream started" flag, and an event must come out the same whether or not the bytes before
 * it arrived in the same chunk (a BOM anywhere else would be a malformed field name that is
 * ignored anyway). Returns where the event's first line starts; sets *<partial> when [s, end)
 * ends with the beginning of a BOM, which must be kept until the rest arrives. */
static const char *skip_to_event(const char *s, const char *end, bool *partial)
{
    *partial = false;
    for (;;) {
        while (s < end && (*s == '\n' || *s == '\r'))
            s++;
        if (s == end || *s != bom[0])
            return s;
        size_t n = SY_MIN((size_t)(end - s), sizeof(bom));
        if (memcmp(s, bom, n) != 0)
            return s;
        if (n < sizeof(bom)) {
            *partial = true;
            return s;
        }
        s += sizeof(bom);
    }
}

static bool name_is(const char *name, size_t len, const char *lit, size_t lit_len)
{
    return len == lit_len && memcmp(name, lit, lit_len) == 0;
}

/* Parse the event that starts at <s> (at the beginning of a line) into <ev>. Returns the end of
 * its terminating blank line, or NULL when [s, end) holds no blank line. The data of several
 * `data:` lines is joined in p->scratch; a single one is pointed at where it lies. */
static const char *parse_event(struct sy_sse_parser *p, struct lines *l, const char *s,
                               struct sy_sse_event *ev)
{
    const char *end = l->end;
    unsigned ndata = 0;

    ev->raw = s;
    ev->event = "";
    ev->event_len = 0;
    ev->data = "";
    ev->data_len = 0;
    ev->id = NULL;
    ev->id_len = 0;

    while (s < end) {
        const char *eol = next_eol(l, s);
        if (eol == end)
            return NULL;
        const char *next = eol + eol_len(eol, end);
        if (eol == s) { /* blank line: the event is complete */
            ev->raw_len = (size_t)(next - ev->raw);
            if (ndata > 1) {
                ev->data = p->scratch.data;
                ev->data_len = p->scratch.len;
            }
            return next;
        }
        if (*s != ':') { /* not a comment */
            const char *colon = memchr(s, ':', (size_t)(eol - s));
            size_t name_len = (size_t)((colon ? colon : eol) - s);
            const char *val = colon ? colon + 1 : eol;
            if (val < eol && *val == ' ')
                val++;
            size_t val_len = (size_t)(eol - val);

            if (name_is(s, name_len, "data", 4)) {
                if (ndata == 0) {
                    ev->data = val;
                    ev->data_len = val_len;
                } else {
                    if (ndata == 1) {
                        sy_buf_reset(&p->scratch);
                        sy_buf_append(&p->scratch, ev->data, ev->data_len);
                    }
                    sy_buf_append(&p->scratch, "\n", 1);
                    sy_buf_append(&p->scratch, val, val_len);
                }
                ndata++;
            } else if (name_is(s, name_len, "event", 5)) {
                ev->event = val;
                ev->event_len = val_len;
            } else if (name_is(s, name_len, "id", 2)) {
                if (memchr(val, '\0', val_len) == NULL) { /* WHATWG: an id with NUL is ignored */
                    ev->id = val;
                    ev->id_len = val_len;
                }
            }
            /* "retry" and unknown fields are ignored; they still make the block an event. */
        }
        s = next;
    }
    return NULL;
}

/* With p->pending holding the start of an event, find where that event ends in [s, end): the
 * end of its terminating blank line, or NULL. */
static const char *find_pending_end(const struct sy_sse_parser *p, struct lines *l, const char *s)
{
    const char *end = l->end;
    char last = p->pending.data[p->pending.len - 1];
    bool bol = last == '\n' || last == '\r';

    if (last == '\r' && s < end && *s == '\n')
        s++; /* the second half of a "\r\n" split between feeds */
    while (s < end) {
        const char *eol = next_eol(l, s);
        if (eol == end)
            return NULL;
        if (bol && eol == s)
            return eol + eol_len(eol, end);
        s = eol + eol_len(eol, end);
        bol = true;
    }
    return NULL;
}

/* ---- API -------------------------------------------------------------------------------- */

void sy_sse_init(struct sy_sse_parser *p, size_t max_event)
{
    p->pending = (struct sy_buf)SY_BUF_INIT;
    p->scratch = (struct sy_buf)SY_BUF_INIT;
    p->max_event = max_event;
}

/* Finish the event held in p->pending, whose end is now in [d, end). Returns the callback's
 * value, or -EMSGSIZE, or 0; sets *<used> to the bytes of <d> it took. */
static int feed_pending(struct sy_sse_parser *p, struct lines *l, const char *d, size_t *used,
                        sy_sse_event_cb cb, void *ud)
{
    const char *e = find_pending_end(p, l, d);
    size_t take = (size_t)((e ? e : l->end) - d);

    if (take > p->max_event - p->pending.len)
        return -EMSGSIZE;
    sy_buf_append(&p->pending, d, take);
    *used = take;
    if (e == NULL)
        return 0;

    /* The event is whole in p->pending now: parse it there. It may still turn out to be only a
     * BOM and blank lines, which deliver nothing. */
    const char *s = p->pending.data, *pend = s + p->pending.len;
    struct lines pl;
    struct sy_sse_event ev;
    bool partial;
    int rc = 0;

    s = skip_to_event(s, pend, &partial);
    if (s < pend) {
        lines_init(&pl, s, pend);
        const char *ee = parse_event(p, &pl, s, &ev);
        SY_REQUIRE(ee == pend); /* both scans agree on where the event ends */
        rc = cb(ud, &ev);
    }
    sy_buf_reset(&p->pending); /* only now: ev pointed into it */
    return rc;
}

/* Stops at the first event whose callback returns nonzero; the bytes of <d> after that event
 * are dropped, and the parser is left between events. After -EMSGSIZE the stream cannot be
 * resynchronised; the parser is emptied so that it can at least be freed or reused. */
int sy_sse_feed(struct sy_sse_parser *p, const char *d, size_t n, sy_sse_event_cb cb, void *ud)
{
    const char *s = d, *end = d + n;
    struct lines l;
    int rc;

    if (n == 0)
        return 0;
    lines_init(&l, s, end);

    if (p->pending.len > 0) {
        size_t used;
        rc = feed_pending(p, &l, s, &used, cb, ud);
        if (rc != 0)
            goto fail;
        s += used;
    }

    while (s < end) {
        bool partial;
        struct sy_sse_event ev;
        const char *start = skip_to_event(s, end, &partial);
        const char *e = partial ? NULL : parse_event(p, &l, start, &ev);

        if (e == NULL) { /* an incomplete event: carry it */
            size_t tail = (size_t)(end - start);
            if (tail > p->max_event) {
                rc = -EMSGSIZE;
                goto fail;
            }
            if (tail > 0)
                sy_buf_append(&p->pending, start, tail);
            return 0;
        }
        if (SY_UNLIKELY(ev.raw_len > p->max_event)) {
            rc = -EMSGSIZE;
            goto fail;
        }
        rc = cb(ud, &ev);
        if (rc != 0)
            goto fail;
        s = e;
    }
    return 0;

fail:
    sy_buf_reset(&p->pending);
    return rc;
}

void sy_sse_free(struct sy_sse_parser *p)
{
    sy_buf_free(&p->pending);
    sy_buf_free(&p->scratch);
}
