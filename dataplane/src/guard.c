/* SPDX-License-Identifier: Apache-2.0 */
/** The guardrail scanner (guard.h): every detector, keyword and regular expression of a
 * guardrail side compiled into one vectorscan database, so a text is scanned once whatever the
 * number of patterns; matches validated in C (guard_detect.c), merged, and masked in place.
 *
 * Databases are compiled in streaming mode only: a whole text is a stream of one write, and an
 * answer's content deltas are the writes of one stream, so a match that straddles two SSE
 * events is found like any other. Keywords are literals, matched caseless (ASCII) without
 * start-of-match tracking (their start is their end minus their length); detectors and custom
 * regexes ask for the leftmost start (HS_FLAG_SOM_LEFTMOST), which redaction needs.
 *
 * Compiling 10,000 keywords takes a few hundred milliseconds, so it happens when a worker
 * installs a table, never on a request, and each compiled side is cached by the SHA-256 of its
 * content: a table republished with the same guardrails reuses the databases it has. One
 * scratch space per process (a worker is one thread) is grown to fit every database. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hs/hs.h>
#include <openssl/evp.h>

#include "guard.h"
#include "sy/log.h"
#include "sy/table.h"
#include "sy/util.h"

struct dp_guard_db {
    hs_database_t *hs;
    uint32_t refs;
    unsigned char hash[32]; /* SHA-256 of what was compiled and the actions */
    uint32_t n_ids;
    uint8_t *det;       /* per pattern id: enum sy_guard_detector */
    uint8_t *act;       /* per pattern id: enum sy_guard_action */
    uint16_t *kw_len;   /* per pattern id: a keyword's length (its start is end - length), or 0 */
    bool *no_som;       /* per pattern id: no start of match (the validator finds it) */
    bool scratch_ok;    /* the process's scratch space fits it (grown on its first scan) */
    hs_stream_t *block; /* for whole texts: scanned, then reset (no allocation per text) */
    struct dp_guard_db *next; /* the cache */
};

/* One worker is one thread: one scratch space, grown for every database compiled here. */
static hs_scratch_t *scratch;
static struct dp_guard_db *cache;

/* Detectors first when overlapping matches span the same bytes: the more specific wins. */
static const uint8_t priority[SY_GUARD_DETECTOR_MAX] = {
    [SY_GUARD_CN_ID] = 0, [SY_GUARD_BANK_CARD] = 1, [SY_GUARD_CN_MOBILE] = 2,
    [SY_GUARD_PHONE] = 3, [SY_GUARD_SECRET] = 4,    [SY_GUARD_EMAIL] = 5,
    [SY_GUARD_IPV4] = 6,  [SY_GUARD_IPV6] = 7,      [SY_GUARD_KEYWORD] = 8,
    [SY_GUARD_REGEX] = 9,
};

/* ============================================================================================
 * Compiling
 * ========================================================================================== */

/* A keyword as a byte-exact pattern: every byte that is not a letter or digit escaped. */
static char *keyword_pattern(const char *kw)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = strlen(kw);
    char *p = sy_xmalloc(4 * n + 1), *d = p;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)kw[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
            *d++ = (char)c;
        } else {
            *d++ = '\\';
            *d++ = 'x';
            *d++ = hex[c >> 4];
            *d++ = hex[c & 15];
        }
    }
    *d = '\0';
    return p;
}

static void db_free(struct dp_guard_db *db)
{
    if (!db)
        return;
    if (db->block)
        hs_close_stream(db->block, NULL, NULL, NULL);
    hs_free_database(db->hs);
    free(db->det);
    free(db->act);
    free(db->kw_len);
    free(db->no_som);
    free(db);
}

/* The patterns of <side>, in id order: built-in detectors, keywords, regexes. */
struct plan {
    char **pats;
    unsigned *flags, *ids;
    uint32_t n;
    bool *owned; /* pats[i] was allocated here */
};

static void plan_free(struct plan *p)
{
    for (uint32_t i = 0; i < p->n; i++)
        if (p->owned[i])
            free(p->pats[i]);
    free(p->pats);
    free(p->flags);
    free(p->ids);
    free(p->owned);
}

static void plan_build(const struct sy_guard_side *side, struct plan *p, struct dp_guard_db *db)
{
    size_t n_builtin;
    const struct dp_guard_pattern *bp = dp__guard_patterns(&n_builtin);
    uint32_t cap = (uint32_t)n_builtin + side->n_keywords + side->n_regexes;
    p->pats = sy_xcalloc(cap ? cap : 1, sizeof(*p->pats));
    p->flags = sy_xcalloc(cap ? cap : 1, sizeof(*p->flags));
    p->ids = sy_xcalloc(cap ? cap : 1, sizeof(*p->ids));
    p->owned = sy_xcalloc(cap ? cap : 1, sizeof(*p->owned));
    db->det = sy_xcalloc(cap ? cap : 1, 1);
    db->act = sy_xcalloc(cap ? cap : 1, 1);
    db->kw_len = sy_xcalloc(cap ? cap : 1, sizeof(*db->kw_len));
    db->no_som = sy_xcalloc(cap ? cap : 1, sizeof(*db->no_som));
    p->n = 0;
    for (size_t i = 0; i < n_builtin; i++) {
        if (!(side->detectors & (1u << bp[i].detector)))
            continue;
        p->pats[p->n] = (char *)bp[i].regex;
        p->flags[p->n] = bp[i].no_som ? 0 : HS_FLAG_SOM_LEFTMOST;
        db->no_som[p->n] = bp[i].no_som;
        db->det[p->n] = (uint8_t)bp[i].detector;
        p->n++;
    }
    for (uint32_t i = 0; i < side->n_keywords; i++) {
        p->pats[p->n] = keyword_pattern(side->keywords[i]);
        p->owned[p->n] = true;
        p->flags[p->n] = HS_FLAG_CASELESS;
        db->det[p->n] = SY_GUARD_KEYWORD;
        db->kw_len[p->n] = (uint16_t)SY_MIN(strlen(side->keywords[i]), (size_t)UINT16_MAX);
        p->n++;
    }
    for (uint32_t i = 0; i < side->n_regexes; i++) {
        p->pats[p->n] = side->regexes[i];
        p->flags[p->n] = HS_FLAG_UTF8 | HS_FLAG_SOM_LEFTMOST;
        db->det[p->n] = SY_GUARD_REGEX;
        p->n++;
    }
    for (uint32_t i = 0; i < p->n; i++) {
        p->ids[i] = i;
        db->act[i] = side->actions[db->det[i]];
    }
    db->n_ids = p->n;
}

static void side_hash(const struct sy_guard_side *side, unsigned char out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    SY_REQUIRE(md);
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_DigestUpdate(md, &side->detectors, sizeof(side->detectors));
    EVP_DigestUpdate(md, side->actions, sizeof(side->actions));
    for (uint32_t i = 0; i < side->n_keywords; i++)
        EVP_DigestUpdate(md, side->keywords[i], strlen(side->keywords[i]) + 1);
    EVP_DigestUpdate(md, "\xff", 1); /* keywords and regexes cannot trade places */
    for (uint32_t i = 0; i < side->n_regexes; i++)
        EVP_DigestUpdate(md, side->regexes[i], strlen(side->regexes[i]) + 1);
    EVP_DigestFinal_ex(md, out, NULL);
    EVP_MD_CTX_free(md);
}

int dp_guard_db_compile(const struct sy_guard_side *side, struct dp_guard_db **out, char **err)
{
    struct plan p = {0};
    hs_compile_error_t *ce = NULL;
    int rc = 0;

    *out = NULL;
    if (err)
        *err = NULL;
    struct dp_guard_db *db = sy_xcalloc(1, sizeof(*db));
    db->refs = 1;
    side_hash(side, db->hash);
    plan_build(side, &p, db);
    if (p.n == 0)
        goto fail; /* nothing to scan: rc 0, *out NULL */
    if (hs_compile_multi((const char *const *)p.pats, p.flags, p.ids, p.n,
                         HS_MODE_STREAM | HS_MODE_SOM_HORIZON_SMALL, NULL, &db->hs,
                         &ce) != HS_SUCCESS) {
        rc = -EINVAL;
        if (err) {
            /* expression < 0: the database as a whole (too large, ...) */
            uint32_t at = ce && ce->expression >= 0 ? (uint32_t)ce->expression : UINT32_MAX;
            struct sy_buf b = SY_BUF_INIT;
            if (at == UINT32_MAX)
                sy_buf_printf(&b, "%s", ce ? ce->message : "cannot compile");
            else if (db->det[at] == SY_GUARD_REGEX)
                sy_buf_printf(&b, "regexes[%u]: %s", at - (p.n - side->n_regexes), ce->message);
            else if (db->det[at] == SY_GUARD_KEYWORD)
                sy_buf_printf(&b, "keywords[%u]: %s",
                              at - (p.n - side->n_regexes - side->n_keywords), ce->message);
            else
                sy_buf_printf(&b, "detector %s: %s",
                              sy_guard_detector_name((enum sy_guard_detector)db->det[at]),
                              ce->message);
            *err = sy_buf_steal(&b, NULL);
        }
        hs_free_compile_error(ce);
        goto fail;
    }
    *out = db;
    db = NULL;
fail:
    plan_free(&p);
    db_free(db);
    return rc;
}

bool dp_guard_db_lookup(const struct sy_guard_side *side, struct dp_guard_db **out)
{
    unsigned char h[32];
    side_hash(side, h);
    for (struct dp_guard_db *db = cache; db; db = db->next) {
        if (memcmp(db->hash, h, sizeof(h)) == 0) {
            db->refs++;
            *out = db;
            return true;
        }
    }
    return false;
}

struct dp_guard_db *dp_guard_db_adopt(struct dp_guard_db *db)
{
    if (!db)
        return NULL;
    for (struct dp_guard_db *c = cache; c; c = c->next) {
        if (c != db && memcmp(c->hash, db->hash, sizeof(db->hash)) == 0) {
            c->refs++; /* compiled twice meanwhile (two tables in flight): keep the first */
            dp_guard_db_unref(db);
            return c;
        }
    }
    db->next = cache;
    cache = db;
    return db;
}

int dp_guard_db_get(const struct sy_guard_side *side, struct dp_guard_db **out, char **err)
{
    if (dp_guard_db_lookup(side, out))
        return 0;
    int rc = dp_guard_db_compile(side, out, err);
    if (rc == 0)
        *out = dp_guard_db_adopt(*out);
    return rc;
}

/* The scratch space is grown for a database on its first scan, on the thread that scans (a
 * worker's loop): compiling may happen on another thread, scratch allocation may not race. */
static bool scratch_for(struct dp_guard_db *db)
{
    if (db->scratch_ok)
        return true;
    if (hs_alloc_scratch(db->hs, &scratch) != HS_SUCCESS)
        return false;
    db->scratch_ok = true;
    return true;
}

void dp_guard_db_unref(struct dp_guard_db *db)
{
    if (!db || --db->refs > 0)
        return;
    /* not in the cache when never adopted: the walk finds nothing */
    for (struct dp_guard_db **pp = &cache; *pp; pp = &(*pp)->next) {
        if (*pp == db) {
            *pp = db->next;
            break;
        }
    }
    db_free(db);
}

/* ============================================================================================
 * Matches
 * ========================================================================================== */

void dp_guard_matches_free(struct dp_guard_matches *m)
{
    free(m->v);
    m->v = NULL;
    m->n = m->cap = 0; /* what was seen stays, for the events */
}

static void matches_push(struct dp_guard_matches *m, const struct dp_guard_match *x)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 16;
        m->v = sy_xrealloc(m->v, m->cap * sizeof(*m->v));
    }
    m->v[m->n++] = *x;
}

static int cmp_match(const void *a, const void *b)
{
    const struct dp_guard_match *x = a, *y = b;
    if (x->from != y->from)
        return x->from < y->from ? -1 : 1;
    if (x->to != y->to)
        return x->to > y->to ? -1 : 1; /* the longer first */
    return (int)priority[x->detector] - (int)priority[y->detector];
}

/* Sort and merge overlapping matches: the first (earliest, longest, most specific) keeps its
 * detector, spans what they cover together, and takes the strongest action. */
static void matches_merge(struct dp_guard_matches *m)
{
    if (m->n < 2)
        return;
    qsort(m->v, m->n, sizeof(*m->v), cmp_match);
    size_t k = 0;
    for (size_t i = 1; i < m->n; i++) {
        struct dp_guard_match *cur = &m->v[k], *x = &m->v[i];
        if (x->from < cur->to) {
            if (x->to > cur->to)
                cur->to = x->to;
            if (x->action > cur->action)
                cur->action = x->action;
            continue;
        }
        m->v[++k] = *x;
    }
    m->n = k + 1;
}

struct scan_ctx {
    const struct dp_guard_db *db;
    uint16_t rail;
    const char *text; /* what is available: text[0] is stream offset <base> */
    size_t len;
    uint64_t base;
    uint64_t off; /* stream offset where the vectorscan stream began */
    struct dp_guard_matches *out;
    int worst;
    uint32_t *seen; /* per rail: bit (detector * 3 + action) */
};

static int on_match(unsigned int id, unsigned long long from, unsigned long long to,
                    unsigned int flags, void *ud)
{
    struct scan_ctx *c = ud;
    const struct dp_guard_db *db = c->db;
    if (id >= db->n_ids)
        return 0;
    enum sy_guard_detector det = db->det[id];
    from += c->off;
    to += c->off;
    if (db->kw_len[id])
        from = to >= db->kw_len[id] ? to - db->kw_len[id] : 0;
    else if (db->no_som[id])
        from = to; /* the validator walks back to the start */
    if (to < c->base || to > c->base + c->len)
        return 0; /* nothing to check it against */
    size_t rf = from >= c->base ? (size_t)(from - c->base) : 0;
    if (from < c->base && db->no_som[id])
        return 0;
    size_t rt = (size_t)(to - c->base);
    if (from < c->base && det != SY_GUARD_KEYWORD && det != SY_GUARD_REGEX &&
        det != SY_GUARD_SECRET && det != SY_GUARD_EMAIL)
        return 0; /* began in text already gone: cannot be validated */
    if (!dp__guard_validate(det, c->text, c->len, &rf, &rt))
        return 0;
    struct dp_guard_match m = {
        .from = from >= c->base ? c->base + rf : from,
        .to = c->base + rt,
        .detector = (uint8_t)det,
        .action = db->act[id],
        .rail = c->rail,
    };
    matches_push(c->out, &m);
    if ((int)m.action > c->worst)
        c->worst = m.action;
    if (c->seen)
        c->seen[c->rail] |= 1u << (det * 3 + m.action);
    return 0;
}

int dp_guard_scan_text(struct dp_guard_db *const *dbs, size_t n, const char *text, size_t len,
                       struct dp_guard_matches *out)
{
    struct scan_ctx c = {.text = text, .len = len, .out = out, .worst = -1, .seen = out->seen};
    for (size_t i = 0; i < n; i++) {
        if (!dbs[i])
            continue;
        struct dp_guard_db *db = dbs[i];
        c.db = db;
        c.rail = (uint16_t)i;
        if (!scratch_for(db) || (!db->block && hs_open_stream(db->hs, 0, &db->block) != HS_SUCCESS))
            continue;
        hs_scan_stream(db->block, text, (unsigned)SY_MIN(len, (size_t)UINT32_MAX), 0, scratch,
                       on_match, &c);
        hs_reset_stream(db->block, 0, scratch, on_match, &c); /* end-of-text matches, then reset */
    }
    matches_merge(out);
    return c.worst;
}

void dp_guard_redact(const char *text, size_t len, uint64_t base, const struct dp_guard_matches *m,
                     struct sy_buf *out)
{
    uint64_t at = base, end = base + len;
    for (size_t i = 0; i < m->n; i++) {
        const struct dp_guard_match *x = &m->v[i];
        if (x->action < SY_GUARD_REDACT || x->from < at || x->to > end)
            continue;
        sy_buf_append(out, text + (at - base), (size_t)(x->from - at));
        dp__guard_mask((enum sy_guard_detector)x->detector, text + (x->from - base),
                       (size_t)(x->to - x->from), out);
        at = x->to;
    }
    sy_buf_append(out, text + (at - base), (size_t)(end - at));
}

/* ============================================================================================
 * Streams
 * ========================================================================================== */

int dp_guard_stream_open(struct dp_guard_stream *s, struct dp_guard_db *const *dbs, size_t n,
                         uint64_t max_chars)
{
    memset(s, 0, sizeof(*s));
    s->worst = -1;
    s->max_chars = max_chars;
    for (size_t i = 0; i < n && s->n < DP_GUARD_MAX_RAILS; i++) {
        if (!dbs[i])
            continue;
        hs_stream_t *st;
        if (!scratch_for(dbs[i]) || hs_open_stream(dbs[i]->hs, 0, &st) != HS_SUCCESS) {
            dp_guard_stream_close(s);
            return -ENOMEM;
        }
        s->dbs[s->n] = dbs[i];
        s->hs[s->n++] = st;
    }
    s->hold = s->n ? DP_GUARD_HOLD : 0;
    return 0;
}

static size_t utf8_chars(const char *p, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)p[i] & 0xc0) != 0x80;
    return k;
}

/* The byte offset in <p>/<n> where the <k>-th character (0-based) starts, or n. */
static size_t utf8_offset(const char *p, size_t n, uint64_t k)
{
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)p[i] & 0xc0) != 0x80 && k-- == 0)
            return i;
    return n;
}

int dp_guard_stream_feed(struct dp_guard_stream *s, const char *text, size_t len, bool final,
                         struct sy_buf *out)
{
    if (s->closed && (s->limited || s->worst == SY_GUARD_BLOCK))
        return -1;
    if (s->closed) { /* a text ended (final) and another begins: new vectorscan streams */
        for (size_t i = 0; i < s->n; i++)
            if (hs_open_stream(s->dbs[i]->hs, 0, (hs_stream_t **)&s->hs[i]) != HS_SUCCESS)
                s->hs[i] = NULL;
        s->seg = s->total;
        s->closed = false;
    }
    sy_buf_append(&s->held, text, len);
    s->total += len;
    struct scan_ctx c = {
        .text = s->held.data,
        .len = s->held.len,
        .base = s->base,
        .off = s->seg,
        .out = &s->pending,
        .worst = -1,
        .seen = s->pending.seen,
    };
    for (size_t i = 0; i < s->n; i++) {
        c.db = s->dbs[i];
        c.rail = (uint16_t)i;
        if (!s->hs[i])
            continue;
        if (len)
            hs_scan_stream(s->hs[i], text, (unsigned)len, 0, scratch, on_match, &c);
        if (final) {
            hs_close_stream(s->hs[i], scratch, on_match, &c);
            s->hs[i] = NULL;
        }
    }
    matches_merge(&s->pending);
    if (c.worst > s->worst)
        s->worst = c.worst;
    if (final)
        s->closed = true;
    if (c.worst == SY_GUARD_BLOCK) {
        s->closed = true; /* what is held (the match with it) is never emitted */
        return c.worst;
    }

    /* What can go out: all but the hold-back, never half a match to redact, never half a
     * character. [<start>, <end>) is what goes out now. */
    uint64_t start = s->base + s->emit_skip;
    uint64_t end = final ? s->total : (s->total > s->hold ? s->total - s->hold : 0);
    if (end < start)
        end = start;
    for (bool moved = true; moved;) {
        moved = false;
        for (size_t i = 0; i < s->pending.n; i++) {
            const struct dp_guard_match *m = &s->pending.v[i];
            if (m->action >= SY_GUARD_REDACT && m->from < end && m->to > end && m->from >= start) {
                end = m->from;
                moved = true;
            }
        }
    }
    while (end > start && end < s->total &&
           ((unsigned char)s->held.data[end - s->base] & 0xc0) == 0x80)
        end--;
    const char *p = s->held.data + (start - s->base);
    if (s->max_chars) {
        size_t k = utf8_chars(p, (size_t)(end - start));
        if (s->chars + k > s->max_chars) {
            end = start + utf8_offset(p, (size_t)(end - start), s->max_chars - s->chars);
            for (size_t i = 0; i < s->pending.n; i++) {
                const struct dp_guard_match *m = &s->pending.v[i];
                if (m->action >= SY_GUARD_REDACT && m->from < end && m->to > end &&
                    m->from >= start)
                    end = m->from;
            }
            s->limited = true;
            s->closed = true;
        }
        s->chars += utf8_chars(p, (size_t)(end - start));
    }
    dp_guard_redact(p, (size_t)(end - start), start, &s->pending, out);

    /* Forget matches that are behind us; keep DP_GUARD_HOLD bytes of emitted text as context
     * for validating matches that end later. */
    size_t k = 0;
    for (size_t i = 0; i < s->pending.n; i++)
        if (s->pending.v[i].to > end)
            s->pending.v[k++] = s->pending.v[i];
    s->pending.n = k;
    s->emit_skip = (size_t)(end - s->base);
    if (s->emit_skip > DP_GUARD_HOLD) {
        size_t drop = s->emit_skip - DP_GUARD_HOLD;
        memmove(s->held.data, s->held.data + drop, s->held.len - drop);
        s->held.len -= drop;
        s->base += drop;
        s->emit_skip -= drop;
    }
    if (s->closed)
        for (size_t i = 0; i < s->n; i++)
            if (s->hs[i]) {
                hs_close_stream(s->hs[i], NULL, NULL, NULL);
                s->hs[i] = NULL;
            }
    return c.worst;
}

void dp_guard_stream_close(struct dp_guard_stream *s)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->hs[i])
            hs_close_stream(s->hs[i], NULL, NULL, NULL);
        s->hs[i] = NULL;
    }
    sy_buf_free(&s->held);
    dp_guard_matches_free(&s->pending);
    s->n = 0;
    s->closed = true;
}
