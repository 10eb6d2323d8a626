/* SPDX-License-Identifier: Apache-2.0 */
/** Guardrails: one multi-pattern scan of a text for every detector, keyword and regular
 * expression of a guardrail side (vectorscan), with checksum validation in C (guard_detect.c),
 * redaction in place, and a streaming scanner that catches matches straddling two SSE events.
 *
 * Three layers:
 *   - the scanner (guard.c): compiled databases, block scans, redaction, streams. Pure: no
 *     worker, no table; the unit tests, the fuzz target and the benchmark drive it directly;
 *   - the detectors (guard_detect.c): patterns, validators (Luhn, GB 11643, addresses), masks;
 *   - the request glue (guard_apply.c): which guardrails apply to a request, the texts of
 *     OpenAI and Anthropic bodies, limits, events. proxy.c calls only that layer. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "sy/buf.h"
#include "sy/sse.h"
#include "sy/table-t.h"
#include "translate.h"

/* ---- the scanner ----------------------------------------------------------------------------- */

/** Longest match the streaming scanner is sure to redact whole: trailing text this long is held
 * back before it is emitted, since it could still be the start of a match. */
#define DP_GUARD_HOLD 256

/** A compiled side of a guardrail: its detectors, keywords and regexes in one vectorscan
 * database, in streaming mode (a block of text is scanned as a stream of one write).
 * Reference-counted and shared by content: see dp_guard_db_get(). */
struct dp_guard_db;

/** A validated match, as byte offsets into the scanned text (a stream counts from its start). */
struct dp_guard_match {
    uint64_t from, to;
    uint8_t detector; /* enum sy_guard_detector */
    uint8_t action;   /* enum sy_guard_action */
    uint16_t rail;    /* which database of a dp_guard_scan found it */
};

/** Compile <side> (borrowed) into a new database with one reference, not in the cache. Returns
 * 0, -EINVAL with *<err> (caller frees) naming the pattern at fault ("regexes[2]: ..."), or
 * -ENOMEM. A side with no detector, keyword or regex gives *<out> = NULL and 0: nothing to
 * scan. Touches no shared state: safe on a thread-pool thread while the loop scans. */
int dp_guard_db_compile(const struct sy_guard_side *side, struct dp_guard_db **out, char **err);

/** The cached database of a side with the content of <side>: true and one more reference in
 * *<out>, or false. Loop thread only, as the two below. */
bool dp_guard_db_lookup(const struct sy_guard_side *side, struct dp_guard_db **out);

/** Put <db> (taken; from dp_guard_db_compile) in the cache and return it; when a database of
 * the same content got there first, <db> is dropped and that one returned (with a reference).
 * NULL gives NULL. */
struct dp_guard_db *dp_guard_db_adopt(struct dp_guard_db *db);

/** The database of <side>, from this process's cache when a side with the same content was
 * compiled before (a republished table does not recompile 10,000 keywords), else compiled.
 * Results as dp_guard_db_compile(); the caller owns one reference. */
int dp_guard_db_get(const struct sy_guard_side *side, struct dp_guard_db **out, char **err);

/** Drop a reference; the last one frees the database (and its cache entry). NULL is fine. */
void dp_guard_db_unref(struct dp_guard_db *db);

/** Up to this many databases (guardrails) scan one request's texts. */
#define DP_GUARD_MAX_RAILS 8

/** The matches of a scan, kept sorted by start and without overlaps. */
struct dp_guard_matches {
    struct dp_guard_match *v;
    size_t n, cap;
    uint32_t seen[DP_GUARD_MAX_RAILS]; /* per database: bit (detector * 3 + action) of every
                                        * match found, merged or not: what the events say */
};

/** Free the matches of <m> (what it has seen stays). */
void dp_guard_matches_free(struct dp_guard_matches *m);

/** Scan <text>/<len> (borrowed) with each of the <n> databases <dbs> (borrowed; NULL entries
 * are skipped) and append the validated matches to <out>, overlaps merged (the longer match
 * wins; then the stronger action). Returns the strongest action found, or -1 for none. */
int dp_guard_scan_text(struct dp_guard_db *const *dbs, size_t n, const char *text, size_t len,
                       struct dp_guard_matches *out);

/** Append <text>/<len> to <out> with every match of <m> whose action is redact or block masked
 * ([EMAIL], 138****5678, 110101********1234, ************1234, [SECRET]...). Offsets are taken
 * relative to <base> (the text's first byte in a stream). */
void dp_guard_redact(const char *text, size_t len, uint64_t base, const struct dp_guard_matches *m,
                     struct sy_buf *out);

/** A stream of text scanned as it comes (an answer's content deltas). */
struct dp_guard_stream {
    struct dp_guard_db *dbs[DP_GUARD_MAX_RAILS]; /* borrowed */
    void *hs[DP_GUARD_MAX_RAILS];                /* hs_stream_t per database */
    size_t n;
    struct sy_buf held; /* up to DP_GUARD_HOLD bytes already emitted (context for the
                         * validators), then the text not emitted yet */
    uint64_t base;      /* stream offset of held.data[0] */
    size_t emit_skip;   /* bytes at the front of held already emitted */
    uint64_t total;     /* bytes fed */
    uint64_t seg;       /* stream offset where the current text began (after a final one) */
    struct dp_guard_matches pending; /* matches not yet emitted; .seen: every one found */
    int worst;                       /* strongest action seen, -1 for none */
    size_t hold;                     /* bytes held back: DP_GUARD_HOLD with databases, 0 without */
    uint64_t max_chars;              /* characters emitted at most (0: no limit) */
    uint64_t chars;                  /* characters emitted so far */
    bool limited;                    /* the limit cut the text */
    bool closed;
};

/** Start a stream over the <n> databases <dbs> (borrowed for the stream's life) emitting at
 * most <max_chars> characters (0: no limit). Returns 0 or -ENOMEM. */
int dp_guard_stream_open(struct dp_guard_stream *s, struct dp_guard_db *const *dbs, size_t n,
                         uint64_t max_chars);

/** Feed <text>/<len> (borrowed); with <final> the stream ends after it. Appends to <out> the
 * text that is now safe to emit, redacted: everything but the last DP_GUARD_HOLD bytes and any
 * match still open, cut at a UTF-8 character boundary; all of it when final. Returns the
 * strongest action among new matches (-1 for none). After a block nothing more is emitted:
 * the held text (with the match) is dropped. When the character limit is reached, s->limited
 * is set, the text is cut there and the rest is ignored. After a final text, another may be
 * fed: it is scanned as a new text (an Anthropic answer's second text block). */
int dp_guard_stream_feed(struct dp_guard_stream *s, const char *text, size_t len, bool final,
                         struct sy_buf *out);

/** Release what <s> holds; safe twice and on a zeroed stream. */
void dp_guard_stream_close(struct dp_guard_stream *s);

/* ---- detectors (guard_detect.c) ------------------------------------------------------------ */

/** One pattern of a built-in detector. */
struct dp_guard_pattern {
    enum sy_guard_detector detector;
    const char *regex;
    bool no_som; /* too large for start-of-match tracking: the validator finds the start */
};

/** The patterns of the built-in detectors; *<n> of them. */
const struct dp_guard_pattern *dp__guard_patterns(size_t *n);

/** Check the raw match <text>[<*from>, <*to>) of <det> (the pattern may include a guard byte on
 * either side, which this trims) and validate it: checksums for cards and ID numbers, addresses
 * for IPs. True when it stands. <text>/<len> is what is available around the match. When
 * *<from> == *<to> the start is unknown (a no_som pattern) and is found walking back. */
bool dp__guard_validate(enum sy_guard_detector det, const char *text, size_t len, size_t *from,
                        size_t *to);

/** Append the mask of the match <m>/<n> of <det> to <out>. */
void dp__guard_mask(enum sy_guard_detector det, const char *m, size_t n, struct sy_buf *out);

/** Luhn checksum over the digits of <s>/<n> (other bytes skipped). */
bool dp__guard_luhn(const char *s, size_t n);

/** GB 11643-1999 check character of an 18-character resident ID number <s>. */
bool dp__guard_cn_id(const char *s, size_t n);

/* ---- requests (guard_apply.c) -------------------------------------------------------------- */

struct sy_http_request;
struct dp_worker;
struct sy_model;
struct sy_key;

/** The guardrails of a request, from dp_guard_begin(); lives in the request's arena. */
struct dp_guard_req;

/** Compile the guardrails of <t> (from the cache where their content is unchanged) and attach
 * them to <t>, freed with it, all on the calling thread. A guardrail that does not compile is
 * logged and left out. A worker uses it for its first table, before it serves. */
void dp_guard_attach(struct sy_table *t);

/** The same in three steps, so that compiling runs off the loop: dp_guard_prepare() on the loop
 * takes what the cache has and returns the work left (NULL: <t> has no guardrails, nothing to
 * do); dp_guard_prepare_work() compiles the rest on any thread (it touches nothing shared);
 * dp_guard_prepare_finish() on the loop adopts them into the cache, attaches the set to <t>
 * and frees <p>. dp_guard_prepare_pending() says whether there is any compiling to do at all
 * (else finish at once). <t> must stay alive throughout. */
struct dp_guard_prep;
struct dp_guard_prep *dp_guard_prepare(struct sy_table *t);
bool dp_guard_prepare_pending(const struct dp_guard_prep *p);
void dp_guard_prepare_work(struct dp_guard_prep *p);
void dp_guard_prepare_finish(struct dp_guard_prep *p);

/** The guardrails that apply to a call of <model> (the public model asked for) by key <k> (may
 * be NULL) on <req>'s table, or NULL when none does: the usual, free path. */
struct dp_guard_req *dp_guard_begin(struct sy_http_request *req, const struct sy_model *model,
                                    const struct sy_key *k, enum dp_api api);

enum dp_guard_verdict {
    DP_GUARD_PASS = 0, /* nothing to change */
    DP_GUARD_CHANGED,  /* the body was changed (redacted, max_tokens lowered or set) */
    DP_GUARD_BLOCKED,  /* refuse: dp_guard_error() says why */
};

/** Input checks on the parsed request <root> (borrowed; changed in place when redacted or
 * max_tokens is lowered). Records an event per guardrail action. */
enum dp_guard_verdict dp_guard_input(struct dp_guard_req *g, json_t *root);

/** Write the 400 a blocked call gets, in the client's API shape: names the guardrail and the
 * detector or limit, never the matched text. <extra> header lines (may be NULL). */
void dp_guard_error(struct dp_guard_req *g, const char *extra);

/** Whether the guardrails of <g> look at the answer (output detectors or a length limit). */
bool dp_guard_has_output(const struct dp_guard_req *g);

/** Output checks on a whole (non-stream) answer <body> in the client's format, replaced when
 * redacted or cut to max_output_chars (finish_reason "length" / stop_reason "max_tokens"). */
enum dp_guard_verdict dp_guard_output_body(struct dp_guard_req *g, struct sy_buf *body);

/** Output checks on a stream: <raw>/<len> are client-format SSE bytes (whole events or not);
 * the checked events are appended to <out>. Returns DP_GUARD_PASS, DP_GUARD_BLOCKED (an error
 * event ends <out>: the stream must end) or DP_GUARD_CHANGED when the length limit ended the
 * answer (<out> ends it properly: finish_reason "length" and [DONE], or Anthropic's
 * max_tokens stop): the upstream can be dropped and the response ended. */
enum dp_guard_verdict dp_guard_stream(struct dp_guard_req *g, const char *raw, size_t len,
                                      struct sy_buf *out);

/** The upstream stream ended: append to <out> the text still held back, as an event. */
void dp_guard_stream_end(struct dp_guard_req *g, struct sy_buf *out);

/** Release what <g> holds (streams). NULL is fine. */
void dp_guard_end(struct dp_guard_req *g);

/** Whether the call was refused by a guardrail (for the outcome it is counted with). */
bool dp_guard_blocked(const struct dp_guard_req *g);
