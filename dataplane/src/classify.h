/* SPDX-License-Identifier: Apache-2.0 */
/** The built-in complexity classifier that routing rules consult: a score in [0, 1] from a
 * prompt's length, code, math, reasoning cues and simple-intent cues (English and Chinese), the
 * conversation's depth, tools and images. A rule such as "complexity < 0.5 → cheap model" sends
 * order-status and tracking questions to a cheap model and proofs, code and analysis to a
 * strong one. One linear pass over the text, no allocation, deterministic; the weights, the
 * threshold and the accuracy measured on tests/data/complexity are in docs/routing.md. */
#pragma once

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** The default threshold: a score at or above it is "complex". */
#define DP_COMPLEXITY_THRESHOLD 0.5

/* The features, each scaled to [0, 1] (simple is subtracted through a negative weight).
 * X-macro: NAME, short name for the debug header, weight in the linear sum. */
#define DP_COMPLEXITY_FEATURES(X)                                                                  \
    X(LENGTH, "len", 6.0)                                                                          \
    X(CODE, "code", 5.0)                                                                           \
    X(MATH, "math", 4.5)                                                                           \
    X(REASON, "reason", 7.0)                                                                       \
    X(SIMPLE, "simple", -3.5)                                                                      \
    X(DEPTH, "depth", 1.5)                                                                         \
    X(TOOLS, "tools", 0.25)                                                                        \
    X(IMAGES, "images", 0.5)

/** Bias of the linear sum: with no feature present a prompt leans simple. */
#define DP_COMPLEXITY_BIAS (-1.25)

/* DP_CFEAT_LENGTH = 0, DP_CFEAT_CODE, ..., DP_CFEAT_MAX */
/* clang-format off */
enum dp_complexity_feature {
#define DP__CFEAT_ENUM(name, s, w) DP_CFEAT_##name,
    DP_COMPLEXITY_FEATURES(DP__CFEAT_ENUM)
#undef DP__CFEAT_ENUM
    DP_CFEAT_MAX,
};
/* clang-format on */
static_assert(DP_CFEAT_LENGTH == 0, "the feature list starts at 0");

/** What the classifier looks at. All of it is borrowed for the duration of the call. */
struct dp_complexity_input {
    const char *text; /* the prompt text: the last user message, plus the system prompt if given
                         separately; UTF-8, not NUL-terminated; may be NULL when <len> is 0 */
    size_t len;
    uint32_t n_messages;        /* all messages of the request, system and assistant included */
    uint32_t n_user_turns;      /* user messages */
    bool has_tools;             /* the request declares tools (or functions) */
    bool has_images;            /* some message carries an image part */
    uint32_t est_prompt_tokens; /* the whole request's estimate; used for length only when
                                   <text> is empty (0: unknown) */
};

/** Why a prompt got its score: the raw counts and the scaled features. */
struct dp_complexity_features {
    uint32_t tokens;       /* dp_estimate_tokens() of the text */
    uint32_t cjk_chars;    /* CJK ideographs and punctuation */
    uint32_t code_hits;    /* weighted keyword hits, plus 3 per ``` fence */
    uint32_t code_symbols; /* { } [ ] ; = < > | & \ ` _ # outside CJK text */
    uint32_t math_hits;    /* weighted keyword hits, LaTeX commands, digit-operator-digit runs */
    uint32_t reason_hits;
    uint32_t simple_hits;
    double f[DP_CFEAT_MAX]; /* each feature in [0, 1], indexed by enum dp_complexity_feature */
    double z;               /* bias + the weighted sum */
    double score;           /* what dp_complexity_score() returned */
};

/** The complexity of <in> (borrowed) in [0, 1]; at or above DP_COMPLEXITY_THRESHOLD reads as
 * "send it to a strong model". Fills <why> (may be NULL) with the counts and features.
 * Linear in <in>->len with a small constant; allocates nothing; thread-safe; deterministic. */
double dp_complexity_score(const struct dp_complexity_input *in,
                           struct dp_complexity_features *why);

/** An estimate of the tokens of <text>/<len> (borrowed, UTF-8): about 4 ASCII bytes per token
 * and 1 token per CJK or other non-ASCII character. Never 0 for a non-empty text. */
uint32_t dp_estimate_tokens(const char *text, size_t len);

/** Write <why> (borrowed) into <buf>/<size> as a debug header value, e.g.
 * "score=0.81; len=0.42; code=0.00; math=0.93; ...", NUL-terminated and truncated to fit.
 * Returns the length it would have had, as snprintf() does. */
int dp_complexity_format(const struct dp_complexity_features *why, char *buf, size_t size);

/** The short name of feature <f> ("len", "code", ...), or "?" when out of range. */
const char *dp_complexity_feature_name(enum dp_complexity_feature f);
