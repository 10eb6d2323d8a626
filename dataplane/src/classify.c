/* SPDX-License-Identifier: Apache-2.0 */
/* The complexity classifier. One pass over the prompt's bytes counts what a person would look
 * at to decide whether a cheap model can answer: how long it is, whether it carries code or
 * math, whether it asks for reasoning (why, compare, design, 为什么, 分析, 方案) or states a
 * simple intent (order status, tracking, opening hours, 订单, 物流, 你好). Each count is
 * squashed into [0, 1], the features are summed with fixed weights (classify.h), and the sum
 * goes through a sigmoid. Nothing here allocates or depends on the locale: keywords are
 * matched case-insensitively on ASCII and byte-exactly on UTF-8, from a small table compiled
 * in. The weights were fitted on the even ids of tests/data/complexity/prompts.jsonl and
 * rounded; docs/routing.md has the numbers. */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classify.h"
#include "sy/util.h"

/* ---- the keyword table ------------------------------------------------------------------- */

enum kw_kind {
    KW_CODE = 0,
    KW_MATH,
    KW_REASON,
    KW_SIMPLE,
    KW_KIND_MAX,
};

/* An ASCII keyword matches at the start of a word and, unless KW_PREFIX, ends at the end of a
 * word, so "why" is not found in "anyhow" and "analy" finds analyze, analysis and analytics.
 * CJK keywords match anywhere: Chinese has no spaces. */
#define KW_PREFIX 1u

struct kw {
    const char *w; /* lower case */
    uint8_t len;
    uint8_t kind;   /* enum kw_kind */
    uint8_t weight; /* 1 a hint, 2 a strong sign on its own */
    uint8_t flags;
};

/* clang-format off */
#define KW(kind, weight, flags, s) {s, sizeof(s) - 1, kind, weight, flags}
#define C(wt, s)                   KW(KW_CODE, wt, 0, s)
#define CP(wt, s)                  KW(KW_CODE, wt, KW_PREFIX, s)
#define M(wt, s)                   KW(KW_MATH, wt, 0, s)
#define MP(wt, s)                  KW(KW_MATH, wt, KW_PREFIX, s)
#define R(wt, s)                   KW(KW_REASON, wt, 0, s)
#define RP(wt, s)                  KW(KW_REASON, wt, KW_PREFIX, s)
#define S(wt, s)                   KW(KW_SIMPLE, wt, 0, s)
#define SP(wt, s)                  KW(KW_SIMPLE, wt, KW_PREFIX, s)

/* Written by category for the reader; kw_index() orders them for the lookup. Generic cues
 * only: a keyword earns its place by being common in a whole class of requests, never by
 * appearing in one test prompt. */
static const struct kw kw_table[] = {
    /* code: languages, tools and the vocabulary of programming */
    C(1, "code"), C(1, "coding"), C(1, "function"), C(1, "functions"), C(1, "python"),
    C(1, "javascript"), C(1, "typescript"), C(1, "java"), C(1, "golang"), C(1, "rust"),
    C(1, "c++"), C(1, "sql"), C(1, "regex"), C(1, "api"), C(1, "bug"), C(1, "bugs"),
    CP(1, "compil"), C(2, "stack trace"), C(2, "traceback"), C(1, "exception"), C(2, "segfault"),
    C(1, "null pointer"), CP(1, "refactor"), C(1, "unit test"), C(1, "unit tests"),
    CP(1, "algorithm"), CP(1, "recursi"), C(1, "script"), C(1, "kubernetes"), C(1, "docker"),
    C(1, "endpoint"), C(1, "json"), C(1, "async"), C(1, "mutex"), C(1, "deadlock"),
    C(1, "race condition"), C(1, "memory leak"), C(1, "big-o"), C(1, "time complexity"),
    C(2, "#include"), C(1, "def"), C(1, "lambda"), C(1, "printf"), C(1, "console.log"),
    C(1, "npm"), C(1, "react"), C(1, "django"), C(1, "pandas"), C(1, "numpy"),
    C(1, "dataframe"), C(1, "database"), C(1, "schema"), C(1, "sql query"), CP(1, "implement"),
    C(1, "debug"), C(1, "git"), C(1, "microservice"), C(1, "microservices"), C(2, "lock-free"),
    C(1, "thread-safe"), CP(1, "concurren"), C(1, "data structure"), C(1, "linked list"),
    C(1, "hash table"), C(1, "hash map"), C(1, "binary tree"), C(1, "b-tree"), C(1, "cache"),
    C(1, "latency"), C(1, "throughput"), C(1, "semaphore"), C(1, "spinlock"), C(1, "crash"),
    C(1, "crashes"), C(1, "rollback"), C(1, "roll back"),
    C(1, "代码"), C(1, "函数"), C(1, "算法"), C(1, "报错"), C(1, "编译"), C(1, "接口"),
    C(1, "重构"), C(1, "脚本"), C(1, "数据库"), C(1, "调试"), C(1, "异常"), C(2, "内存泄漏"),
    C(1, "并发"), C(1, "线程"), C(1, "死锁"), C(1, "正则"), C(1, "单元测试"), C(1, "编程"),
    C(1, "程序"), C(1, "复杂度"), C(1, "微服务"), C(1, "索引"), C(2, "无锁"), C(1, "线程安全"),
    C(1, "数据结构"), C(1, "链表"), C(1, "哈希表"), C(1, "二叉树"), C(1, "缓存"), C(1, "队列"),
    C(1, "吞吐"), C(1, "互斥"), C(1, "信号量"), C(1, "自旋锁"), C(1, "崩溃"), C(1, "回滚"),

    /* math: words of proof, calculus, algebra, probability and statistics */
    M(2, "prove"), M(2, "proof"), MP(2, "integra"), MP(2, "derivative"), MP(1, "differentia"),
    MP(1, "equation"), M(2, "theorem"), M(1, "lemma"), MP(1, "probabilit"), M(1, "matrix"),
    MP(1, "eigen"), M(1, "calculus"), M(1, "limit of"), M(1, "solve"), M(1, "irrational"),
    M(1, "prime"), M(1, "primes"), MP(1, "polynomial"), MP(1, "converge"), M(1, "expected value"),
    M(1, "variance"), M(1, "standard deviation"), M(1, "regression"), MP(1, "statistic"),
    M(1, "inequality"), M(1, "induction"), M(1, "geometry"), M(1, "triangle"), MP(1, "logarithm"),
    M(1, "sqrt"), M(1, "factorial"), MP(1, "combinatori"), MP(1, "permutation"), M(1, "bayes"),
    M(1, "p-value"), M(1, "vector"), M(1, "modulo"), M(1, "divisible"), M(1, "infinitely"),
    M(2, "求解"), M(2, "证明"), M(1, "方程"), M(2, "积分"), M(2, "导数"), M(1, "微分"),
    M(1, "概率"), M(1, "矩阵"), M(1, "特征值"), M(1, "极限"), M(1, "极值"), M(1, "数列"),
    M(1, "级数"), M(1, "不等式"), M(1, "几何"), M(1, "三角形"), M(1, "定理"), M(1, "无理数"),
    M(1, "质数"), M(1, "素数"), M(1, "多项式"), M(1, "期望"), M(1, "方差"), M(1, "标准差"),
    M(1, "回归"), M(1, "假设检验"), M(1, "收敛"), M(1, "向量"), M(1, "对数"), M(1, "求导"),
    M(1, "最大值"), M(1, "最小值"),

    /* reasoning: asking for explanation, comparison, design, planning or evaluation */
    R(1, "why"), RP(1, "explain"), RP(1, "compar"), R(2, "step by step"), RP(1, "analy"),
    RP(1, "design"), RP(2, "trade-off"), RP(2, "tradeoff"), RP(1, "optimi"), RP(1, "evaluat"),
    RP(1, "assess"), R(2, "pros and cons"), RP(1, "strateg"), RP(1, "architect"), R(1, "plan"),
    RP(1, "deriv"), R(1, "justify"), RP(1, "critique"), RP(1, "recommend"), RP(1, "propos"),
    R(1, "implications"), R(1, "root cause"), RP(1, "diagnos"), RP(1, "investigat"),
    R(1, "in depth"), R(1, "in detail"), R(1, "detailed"), R(1, "comprehensive"), R(1, "essay"),
    R(1, "outline"), R(1, "framework"), RP(1, "hypothes"), RP(1, "scalab"),
    R(1, "bottleneck"), R(1, "what if"), R(1, "should i"), R(1, "should we"), RP(1, "forecast"),
    RP(1, "reason about"), R(1, "roadmap"), R(1, "itinerary"), R(1, "multi-step"),
    R(1, "how would"), R(1, "how should"), RP(1, "decid"),
    R(1, "为什么"), R(1, "解释"), R(1, "分析"), R(1, "比较"), R(1, "对比"), R(1, "设计"),
    R(2, "推导"), R(1, "优化"), R(1, "步骤"), R(1, "评估"), R(1, "方案"), R(1, "策略"),
    R(1, "架构"), R(1, "原因"), R(2, "权衡"), R(1, "利弊"), R(1, "优缺点"), R(1, "规划"),
    R(1, "论证"), R(1, "详细"), R(1, "深入"), R(1, "如何实现"), R(1, "建议"), R(1, "报告"),
    R(1, "论文"), R(1, "诊断"), R(1, "排查"), R(1, "影响"), R(1, "预测"), R(1, "计划"), R(1, "决定"),

    /* simple intents: customer service lookups, greetings, short facts and conversions */
    S(2, "order status"), S(1, "my order"), S(1, "where is my"), S(2, "tracking number"),
    S(1, "tracking"), S(1, "track my"), S(2, "delivery status"), S(2, "refund status"),
    S(2, "opening hours"), S(2, "business hours"), S(1, "store hours"), S(1, "what time"),
    S(1, "shipping fee"), S(1, "shipping cost"), S(1, "reset my password"), S(1, "reset password"),
    S(1, "change my address"), S(1, "cancel my order"), S(1, "hello"), S(1, "hi"), S(1, "hey"),
    S(1, "thanks"), S(1, "thank you"), S(1, "good morning"), S(1, "how much"), S(1, "in stock"),
    S(1, "return policy"), S(1, "coupon"), S(1, "invoice"), S(1, "receipt"), S(1, "phone number"),
    S(1, "weather"), S(1, "time zone"), S(1, "capital of"), S(1, "population of"),
    S(1, "meaning of"), S(1, "synonym"), SP(1, "translat"), S(1, "convert"), S(1, "package"),
    S(1, "parcel"), S(1, "delivered"), S(1, "refund"), S(1, "my account"), S(1, "membership"),
    S(1, "what is the"), S(1, "how many"),
    S(1, "查询"), S(1, "查一下"), S(1, "查下"), S(1, "订单"), S(2, "物流"), S(2, "快递"),
    S(1, "单号"), S(1, "几点"), S(1, "你好"), S(1, "您好"), S(1, "谢谢"), S(1, "多少钱"),
    S(1, "退款"), S(1, "到哪"), S(1, "发货"), S(2, "营业时间"), S(1, "客服"), S(1, "地址"),
    S(1, "电话"), S(1, "密码"), S(1, "优惠券"), S(1, "发票"), S(1, "签收"), S(1, "天气"),
    S(1, "翻译"), S(1, "什么意思"), S(1, "取消"), S(1, "运费"), S(1, "包邮"), S(1, "库存"),
    S(1, "有货"), S(1, "会员"), S(1, "积分"), S(1, "是多少"), S(1, "是哪"), S(1, "几天"),
};

/* clang-format on */

#undef C
#undef CP
#undef M
#undef MP
#undef R
#undef RP
#undef S
#undef SP
#undef KW

/* The lookup index: table positions ordered by the keyword's key (its first two bytes in lower
 * case, or its first character's three bytes when that is not ASCII), so a position in the text
 * finds its candidates with one binary search; and a 4096-bit filter of the keys, so most
 * positions are turned away by one memory read. Built once, in static storage. */
#define KW_N          SY_ARRAY_LEN(kw_table)
#define KW_BLOOM_BITS 4096
static uint16_t kw_order[KW_N];
static uint32_t kw_key[KW_N];
static uint64_t kw_bloom[KW_BLOOM_BITS / 64];
static pthread_once_t kw_once = PTHREAD_ONCE_INIT;

static inline uint8_t lower(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

static inline bool is_word(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* The key of the text at <p>, which has at least 3 bytes when p[0] >= 0xE0. */
static inline uint32_t key_at(const uint8_t *p)
{
    if (p[0] >= 0xE0)
        return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
    return (uint32_t)lower(p[0]) << 8 | lower(p[1]);
}

static inline uint32_t key_len(const uint8_t *p)
{
    return p[0] >= 0xE0 ? 3 : 2;
}

static inline uint32_t bloom_bit(uint32_t key)
{
    return (key * 2654435761u) >> 20; /* Fibonacci hashing into 12 bits */
}

static int kw_cmp(const void *a, const void *b)
{
    uint16_t ia = *(const uint16_t *)a, ib = *(const uint16_t *)b;
    uint32_t ka = key_at((const uint8_t *)kw_table[ia].w);
    uint32_t kb = key_at((const uint8_t *)kw_table[ib].w);
    if (ka != kb)
        return ka < kb ? -1 : 1;
    return ia < ib ? -1 : 1; /* stable: table order */
}

static void kw_index(void)
{
    static_assert(KW_N < UINT16_MAX, "kw_order holds uint16_t positions");
    for (size_t i = 0; i < KW_N; i++) {
        SY_REQUIRE(kw_table[i].len >= key_len((const uint8_t *)kw_table[i].w));
        kw_order[i] = (uint16_t)i;
    }
    qsort(kw_order, KW_N, sizeof(kw_order[0]), kw_cmp);
    for (size_t i = 0; i < KW_N; i++) {
        kw_key[i] = key_at((const uint8_t *)kw_table[kw_order[i]].w);
        uint32_t bit = bloom_bit(kw_key[i]);
        kw_bloom[bit / 64] |= (uint64_t)1 << (bit % 64);
    }
}

/* The longest keyword that starts at <p> (with <end> the end of the text), or NULL. */
static const struct kw *kw_match(const uint8_t *p, const uint8_t *end)
{
    uint32_t kl = key_len(p);
    if ((size_t)(end - p) < kl)
        return NULL;
    uint32_t key = key_at(p), bit = bloom_bit(key);
    if (!(kw_bloom[bit / 64] >> (bit % 64) & 1))
        return NULL;
    size_t lo = 0, hi = KW_N;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (kw_key[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    const struct kw *best = NULL;
    for (size_t i = lo; i < KW_N && kw_key[i] == key; i++) {
        const struct kw *k = &kw_table[kw_order[i]];
        if ((size_t)(end - p) < k->len || (best && k->len <= best->len))
            continue;
        size_t j = kl;
        while (j < k->len && lower(p[j]) == (uint8_t)k->w[j])
            j++;
        if (j < k->len)
            continue;
        /* an ASCII keyword ends at a word boundary unless it is a prefix */
        bool ascii_end = (uint8_t)k->w[k->len - 1] < 0x80;
        if (ascii_end && !(k->flags & KW_PREFIX) && p + k->len < end && is_word(p[k->len]))
            continue;
        best = k;
    }
    return best;
}

/* ---- the pass over the text -------------------------------------------------------------- */

struct scan {
    uint32_t ascii_bytes, other_chars, cjk_chars;
    uint32_t ascii_nonspace, code_symbols, fences;
    uint32_t hits[KW_KIND_MAX];
    uint32_t math_marks; /* LaTeX, math symbols, digit-operator-digit */
};

static bool is_cjk(uint32_t cp)
{
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
           (cp >= 0x3000 && cp <= 0x303F) || (cp >= 0xFF00 && cp <= 0xFFEF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x20000 && cp <= 0x2FFFF);
}

/* Mathematical Operators (∑ √ ∫ ≤ ≠ ∞), superscripts, ÷, π and Σ. Not ×: shops write "×2" for
 * quantities. */
static bool is_math_symbol(uint32_t cp)
{
    return (cp >= 0x2200 && cp <= 0x22FF) || cp == 0xB2 || cp == 0xB3 || cp == 0xF7 ||
           cp == 0x3C0 || cp == 0x3A3 || (cp >= 0x2070 && cp <= 0x209F);
}

/* The nearest byte before <p> that is not a space (at most 4 back), or NULL. */
static const uint8_t *prev_nonspace(const uint8_t *start, const uint8_t *p)
{
    for (int n = 0; p > start && n < 4; n++) {
        p--;
        if (*p != ' ')
            return p;
    }
    return NULL;
}

static const uint8_t *next_nonspace(const uint8_t *p, const uint8_t *end)
{
    for (int n = 0; p < end && n < 4; n++, p++)
        if (*p != ' ')
            return p;
    return NULL;
}

static bool is_alpha(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* A number, a parenthesis, or a variable: one letter, as in "2x" or "x + 1" (not a word). */
static bool is_operand(const uint8_t *start, const uint8_t *q, const uint8_t *end)
{
    if (q < start || q >= end)
        return false;
    if ((*q >= '0' && *q <= '9') || *q == '(' || *q == ')')
        return true;
    return is_alpha(*q) && (q == start || !is_alpha(q[-1])) && (q + 1 == end || !is_alpha(q[1]));
}

/* An arithmetic operator between operands: "3 + 4", "x^2", "2x = 6", "n(n+1)/2". '-' and '/'
 * need a variable or a parenthesis on a side, and a space or a parenthesis around them, so
 * dates, phone and tracking numbers and lists ("2024-05-01", "555-1234", "1Z-99/88",
 * "order 30012 - 3 items") don't count. */
static bool is_math_operator(const uint8_t *start, const uint8_t *p, const uint8_t *end)
{
    const uint8_t *b = prev_nonspace(start, p), *a = next_nonspace(p + 1, end);
    if (!b || !a || !is_operand(start, b, end) || !is_operand(start, a, end))
        return false;
    if (*p == '=' && ((p + 1 < end && p[1] == '=') || (p > start && p[-1] == '=')))
        return false; /* "==" is code */
    bool digits = *b >= '0' && *b <= '9' && *a >= '0' && *a <= '9';
    bool spaced = p[-1] == ' ' || (p + 1 < end && p[1] == ' ');
    if (*p == '-' || *p == '/')
        return !digits && (spaced || *b == ')' || *a == '(');
    return true;
}

static void scan_text(const uint8_t *p, const uint8_t *end, struct scan *s)
{
    const uint8_t *start = p;
    while (p < end) {
        uint8_t c = *p;
        if (c < 0x80) {
            s->ascii_bytes++;
            if (c > ' ')
                s->ascii_nonspace++;
            bool word_start = is_word(c) && (p == start || !is_word(p[-1]));
            if (word_start || c == '#') {
                const struct kw *k = kw_match(p, end);
                if (k && (word_start || k->w[0] == '#')) {
                    s->hits[k->kind] += k->weight;
                    s->ascii_bytes += k->len - 1;
                    s->ascii_nonspace += k->len - 1;
                    p += k->len;
                    continue;
                }
            }
            switch (c) {
            case '`':
                if (end - p >= 3 && p[1] == '`' && p[2] == '`') {
                    s->fences++;
                    s->code_symbols += 3;
                    s->ascii_bytes += 2;
                    s->ascii_nonspace += 2;
                    p += 3;
                    continue;
                }
                s->code_symbols++;
                break;
            case '\\': {
                /* a LaTeX command: three or more letters after the backslash */
                const uint8_t *q = p + 1;
                while (q < end && ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z')))
                    q++;
                if (q - p > 3)
                    s->math_marks += 2;
                else
                    s->code_symbols++;
                break;
            }
            case '$':
                if (p + 1 < end && p[1] == '$')
                    s->math_marks++;
                break;
            case '+':
            case '*':
            case '^':
            case '-':
            case '/':
                if (is_math_operator(start, p, end))
                    s->math_marks++;
                break;
            case '=':
                if (is_math_operator(start, p, end))
                    s->math_marks++;
                else
                    s->code_symbols++;
                break;
            case '{':
            case '}':
            case '[':
            case ']':
            case ';':
            case '<':
            case '>':
            case '|':
            case '&':
            case '_':
                s->code_symbols++;
                break;
            default:
                break;
            }
            p++;
            continue;
        }
        if (c < 0xC0) {
            p++; /* a stray continuation byte, not a character */
            continue;
        }
        /* a UTF-8 sequence, possibly cut short by the end of the text */
        size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        if ((size_t)(end - p) < n)
            n = (size_t)(end - p);
        uint32_t cp =
            n == 1   ? 0
            : n == 2 ? (uint32_t)(c & 0x1F) << 6 | (p[1] & 0x3F)
            : n == 3 ? (uint32_t)(c & 0x0F) << 12 | (uint32_t)(p[1] & 0x3F) << 6 | (p[2] & 0x3F)
                     : (uint32_t)(c & 0x07) << 18 | (uint32_t)(p[1] & 0x3F) << 12 |
                           (uint32_t)(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
        if (is_cjk(cp)) {
            s->cjk_chars++;
            const struct kw *k = kw_match(p, end);
            if (k) {
                s->hits[k->kind] += k->weight;
                /* count the keyword's characters, then go past it: 为什么 is not also 什么 */
                for (const uint8_t *q = p + n; q < p + k->len; q++)
                    s->cjk_chars += (*q & 0xC0) != 0x80;
                p += k->len;
                continue;
            }
        } else {
            s->other_chars++;
            if (is_math_symbol(cp))
                s->math_marks++;
        }
        p += n;
    }
}

/* ---- from counts to a score -------------------------------------------------------------- */

/* x / (x + k): 0 at 0, one half at k, approaching 1. */
static inline double sat(double x, double k)
{
    return x / (x + k);
}

static inline double clamp01(double x)
{
    return x < 0 ? 0 : x > 1 ? 1 : x;
}

/* log2(x) for x >= 1, exact at powers of two and linear between them: no libm, and monotonic,
 * which is all a length feature needs. */
static double log2_approx(uint32_t x)
{
    if (x <= 1)
        return 0;
    int e = 31 - __builtin_clz(x);
    return e + ((double)x / (double)(1u << e) - 1.0);
}

static uint32_t tokens_of(const struct scan *s)
{
    uint32_t t = (s->ascii_bytes + 3) / 4 + s->cjk_chars + s->other_chars;
    return t;
}

uint32_t dp_estimate_tokens(const char *text, size_t len)
{
    uint32_t ascii = 0, chars = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)text[i];
        ascii += c < 0x80;
        chars += c >= 0xC0; /* a lead byte: one non-ASCII character */
    }
    uint32_t tokens = (ascii + 3) / 4 + chars;
    return tokens || len == 0 ? tokens : 1; /* stray continuation bytes are still text */
}

static const double weights[DP_CFEAT_MAX] = {
#define DP__CFEAT_W(name, s, w) w,
    DP_COMPLEXITY_FEATURES(DP__CFEAT_W)
#undef DP__CFEAT_W
};

static const char *const names[DP_CFEAT_MAX] = {
#define DP__CFEAT_S(name, s, w) s,
    DP_COMPLEXITY_FEATURES(DP__CFEAT_S)
#undef DP__CFEAT_S
};

const char *dp_complexity_feature_name(enum dp_complexity_feature f)
{
    return f >= 0 && f < DP_CFEAT_MAX ? names[f] : "?";
}

double dp_complexity_score(const struct dp_complexity_input *in, struct dp_complexity_features *why)
{
    struct scan s = {0};
    double f[DP_CFEAT_MAX];

    pthread_once(&kw_once, kw_index);
    if (in->text && in->len)
        scan_text((const uint8_t *)in->text, (const uint8_t *)in->text + in->len, &s);

    uint32_t tokens = in->len ? tokens_of(&s) : in->est_prompt_tokens;

    /* length: 0 up to 16 tokens, 1 from 1024, log-scaled between: a pasted order list is long
     * but simple, so length is a weak feature on its own */
    f[DP_CFEAT_LENGTH] = clamp01((log2_approx(tokens) - 4.0) / 6.0);

    /* code: keywords, fences, and the density of code punctuation once there is enough of it */
    double density = s.ascii_nonspace ? (double)s.code_symbols / s.ascii_nonspace : 0;
    double dense = s.code_symbols >= 4 ? clamp01((density - 0.02) / 0.06) : 0;
    double code_hits = s.hits[KW_CODE] + 3.0 * s.fences;
    f[DP_CFEAT_CODE] = SY_MAX(sat(code_hits, 2.0), dense);

    f[DP_CFEAT_MATH] = sat(s.hits[KW_MATH] + s.math_marks, 2.0);
    f[DP_CFEAT_REASON] = sat(s.hits[KW_REASON], 2.0);
    f[DP_CFEAT_SIMPLE] = sat(s.hits[KW_SIMPLE], 1.5);

    /* depth: the user's turns beyond the first, saturating at 6 more */
    uint32_t turns = in->n_user_turns ? in->n_user_turns : (in->n_messages + 1) / 2;
    f[DP_CFEAT_DEPTH] = turns > 1 ? clamp01((turns - 1) / 6.0) : 0;
    f[DP_CFEAT_TOOLS] = in->has_tools;
    f[DP_CFEAT_IMAGES] = in->has_images;

    double z = DP_COMPLEXITY_BIAS;
    for (int i = 0; i < DP_CFEAT_MAX; i++)
        z += weights[i] * f[i];
    /* a sigmoid without libm: 0.5 at z = 0, monotonic, in (0, 1) */
    double score = 0.5 + 0.5 * z / (1.0 + (z < 0 ? -z : z));

    if (why) {
        why->tokens = tokens;
        why->cjk_chars = s.cjk_chars;
        why->code_hits = (uint32_t)code_hits;
        why->code_symbols = s.code_symbols;
        why->math_hits = s.hits[KW_MATH] + s.math_marks;
        why->reason_hits = s.hits[KW_REASON];
        why->simple_hits = s.hits[KW_SIMPLE];
        memcpy(why->f, f, sizeof(f));
        why->z = z;
        why->score = score;
    }
    return score;
}

int dp_complexity_format(const struct dp_complexity_features *why, char *buf, size_t size)
{
    int n = snprintf(buf, size, "score=%.2f", why->score);
    for (int i = 0; i < DP_CFEAT_MAX && n >= 0; i++) {
        size_t at = (size_t)n < size ? (size_t)n : size;
        int m = snprintf(buf + at, size - at, "; %s=%.2f", names[i], why->f[i]);
        n = m < 0 ? m : n + m;
    }
    return n;
}
