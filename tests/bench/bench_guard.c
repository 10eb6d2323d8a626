/* SPDX-License-Identifier: Apache-2.0 */
/** CPU cost of guardrail scans (issue 7: "keyword lists of 10,000 entries must not change
 * latency noticeably").
 *
 * Scans a 4 KB text of mixed English and Chinese prose, with a few matches in it, through the
 * scanner of dataplane/src/guard.c: every built-in detector with 0, 100 and 10,000 keywords
 * (of 6 to 40 bytes, a third of them Chinese), and 10,000 keywords alone. For each, the time to
 * compile the database (what a worker pays once when the guardrail changes), the time of a
 * whole-text scan (what a request's messages and a JSON answer cost, per KB) and the time of a
 * stream scan fed in 24-byte deltas with redaction and the hold-back (what a streamed answer
 * costs, per KB).
 *
 *   bench_guard [ITERATIONS] [BATCHES]      (defaults 2,000 and 5)
 *
 * The median batch gives the figure. Output: one line per measure,
 * `BENCH_GUARD name=... ns_per_kb=... compile_ms=...`. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "guard.h"
#include "sy/util.h"

#define MAX_BATCHES 15u

static const char *const PARAGRAPHS[] = {
    "The quarterly report covers revenue, churn and the roadmap for the next two releases. "
    "Please review the attached figures before Thursday's meeting and send comments. ",
    "我们下周会讨论新的产品路线图，请大家提前阅读附件中的材料，并准备好问题。会议地点在三楼。",
    "Customer asked about the refund for order 8842; the agent replied within the hour and "
    "closed the ticket after confirming the bank transfer went through. ",
    "系统在凌晨两点进行了例行维护，所有服务均已恢复正常，请留意后续的监控告警。",
};

/* a few things the detectors find */
static const char *const SPICE[] = {
    " Contact: li.wei@example.com ",
    " 电话 13812345678 ",
    " card 4111 1111 1111 1111 ",
    " host 10.20.30.40 ",
};

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Keyword i: English or Chinese, 6..40 bytes, distinct. */
static char *keyword(unsigned i, uint64_t *rnd)
{
    static const char *const zh[] = {"机密", "内部", "项目", "代号",
                                     "计划", "资料", "客户", "名单"};
    char buf[64];
    int n;
    *rnd ^= *rnd << 13;
    *rnd ^= *rnd >> 7;
    *rnd ^= *rnd << 17;
    if (i % 3 == 0)
        n = snprintf(buf, sizeof(buf), "%s%s%u", zh[*rnd % 8], zh[(*rnd >> 8) % 8], i);
    else
        n = snprintf(buf, sizeof(buf), "codename-%llx-%u",
                     (unsigned long long)(*rnd & 0xffffffffffull), i);
    return sy_xstrndup(buf, (size_t)n);
}

struct config {
    const char *name;
    uint32_t detectors;
    unsigned keywords;
};

int main(int argc, char **argv)
{
    unsigned iters = argc > 1 ? (unsigned)atoi(argv[1]) : 2000;
    unsigned batches = argc > 2 ? (unsigned)atoi(argv[2]) : 5;
    if (iters == 0 || batches == 0 || batches > MAX_BATCHES) {
        fprintf(stderr, "usage: bench_guard [ITERATIONS] [BATCHES<=%u]\n", MAX_BATCHES);
        return 2;
    }

    /* the text: 4 KB of paragraphs with a match every ~1 KB */
    struct sy_buf text = SY_BUF_INIT;
    for (unsigned i = 0; text.len < 4096; i++) {
        sy_buf_puts(&text, PARAGRAPHS[i % SY_ARRAY_LEN(PARAGRAPHS)]);
        if (i % 4 == 3)
            sy_buf_puts(&text, SPICE[(i / 4) % SY_ARRAY_LEN(SPICE)]);
    }
    double kb = (double)text.len / 1024.0;

    const struct config configs[] = {
        {"detectors", 0xffu, 0},
        {"detectors+100kw", 0xffu, 100},
        {"detectors+10000kw", 0xffu, 10000},
        {"10000kw", 0, 10000},
    };
    uint64_t rnd = 0x9e3779b97f4a7c15ull;
    char **words = sy_xcalloc(10000, sizeof(*words));
    for (unsigned i = 0; i < 10000; i++)
        words[i] = keyword(i, &rnd);

    for (size_t c = 0; c < SY_ARRAY_LEN(configs); c++) {
        struct sy_guard_side side = {.detectors = configs[c].detectors,
                                     .keywords = words,
                                     .n_keywords = configs[c].keywords};
        memset(side.actions, SY_GUARD_REDACT, sizeof(side.actions));
        struct dp_guard_db *db;
        char *err = NULL;
        double t0 = now_ns();
        if (dp_guard_db_compile(&side, &db, &err) != 0 || !db) {
            fprintf(stderr, "compile %s: %s\n", configs[c].name, err ? err : "nothing");
            return 1;
        }
        double compile_ms = (now_ns() - t0) / 1e6;

        double block[MAX_BATCHES], stream[MAX_BATCHES];
        size_t found = 0;
        struct dp_guard_matches m = {0};
        struct sy_buf out = SY_BUF_INIT;
        for (unsigned b = 0; b < batches; b++) {
            t0 = now_ns();
            for (unsigned i = 0; i < iters; i++) {
                m.n = 0;
                dp_guard_scan_text(&db, 1, text.data, text.len, &m);
                found = m.n;
            }
            block[b] = (now_ns() - t0) / iters / kb;
            t0 = now_ns();
            for (unsigned i = 0; i < iters / 4 + 1; i++) {
                struct dp_guard_stream s;
                dp_guard_stream_open(&s, &db, 1, 0);
                sy_buf_reset(&out);
                for (size_t off = 0; off < text.len; off += 24) {
                    size_t n = SY_MIN((size_t)24, text.len - off);
                    dp_guard_stream_feed(&s, text.data + off, n, off + n == text.len, &out);
                }
                dp_guard_stream_close(&s);
            }
            stream[b] = (now_ns() - t0) / (iters / 4 + 1) / kb;
        }
        qsort(block, batches, sizeof(double), cmp_double);
        qsort(stream, batches, sizeof(double), cmp_double);
        printf("BENCH_GUARD name=%s keywords=%u compile_ms=%.1f block_ns_per_kb=%.0f "
               "stream_ns_per_kb=%.0f matches=%zu text_bytes=%zu\n",
               configs[c].name, configs[c].keywords, compile_ms, block[batches / 2],
               stream[batches / 2], found, text.len);
        if (c == 0 && out.len != text.len - 0 && found == 0) {
            fprintf(stderr, "no match found: the text lost its spice\n");
            return 1;
        }
        dp_guard_matches_free(&m);
        sy_buf_free(&out);
        dp_guard_db_unref(db);
    }
    for (unsigned i = 0; i < 10000; i++)
        free(words[i]);
    free(words);
    sy_buf_free(&text);
    return 0;
}
