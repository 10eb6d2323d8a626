/* SPDX-License-Identifier: Apache-2.0 */
/** The built-in detectors of guardrails (guard.h): their vectorscan patterns, the checks in C
 * that a pattern cannot make (checksums, address syntax), and the masks of redaction.
 *
 * Patterns are byte-oriented (no UTF-8 mode): what they look for is ASCII, and a byte of a
 * multi-byte character is simply "not a digit". A pattern that must not match inside a longer
 * run of digits carries a guard on each side, `(?:^|[^0-9])` and `(?:[^0-9]|$)`, instead of
 * look-arounds (vectorscan has none); the match then includes that guard byte, which
 * dp__guard_validate() trims. In a stream, a trailing guard means the match is reported when
 * the next byte arrives (or at the end of the stream), never early. */

#include <arpa/inet.h>
#include <string.h>

#include <hs/hs.h>

#include "guard.h"
#include "sy/util.h"

/* ============================================================================================
 * Patterns
 * ========================================================================================== */

#define NOT_DIGIT_BEFORE "(?:^|[^0-9])"
#define NOT_DIGIT_AFTER  "(?:[^0-9]|$)"

static const struct dp_guard_pattern patterns[] = {
    {SY_GUARD_EMAIL,
     "[A-Za-z0-9._%+\\-]{1,64}@[A-Za-z0-9\\-]{1,63}(?:\\.[A-Za-z0-9\\-]{1,63}){0,6}"
     "\\.[A-Za-z]{2,24}",
     true},
    /* +<country code> then 6..14 more digits, spaces, dashes, one parenthesised area code */
    {SY_GUARD_PHONE,
     "\\+[1-9][0-9]{0,2}[ \\-]?(?:\\([0-9]{1,4}\\)[ \\-]?)?(?:[0-9][ "
     "\\-]?){5,13}[0-9]" NOT_DIGIT_AFTER,
     false},
    {SY_GUARD_CN_MOBILE, NOT_DIGIT_BEFORE "(?:\\+?86[ \\-]?)?1[3-9][0-9]{9}" NOT_DIGIT_AFTER,
     false},
    /* region (6), birth date yyyymmdd (8), sequence (3), check character */
    {SY_GUARD_CN_ID,
     NOT_DIGIT_BEFORE "[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])"
                      "(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx](?:[^0-9A-Za-z]|$)",
     false},
    {SY_GUARD_BANK_CARD, NOT_DIGIT_BEFORE "[0-9](?:[ \\-]?[0-9]){12,18}" NOT_DIGIT_AFTER, false},
    {SY_GUARD_IPV4, "(?:^|[^0-9.])(?:[0-9]{1,3}\\.){3}[0-9]{1,3}" NOT_DIGIT_AFTER, false},
    {SY_GUARD_IPV6,
     "(?:^|[^0-9A-Fa-f:])(?:[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,7}(?:[^0-9A-Fa-f:]|$)",
     false},
    /* OpenAI and Anthropic keys, AWS access key ids, GitHub tokens, Slack tokens, Google API
     * keys, and the first line of a PEM private key (the block is extended to its END line) */
    {SY_GUARD_SECRET, "sk-(?:ant-|proj-)?[A-Za-z0-9_\\-]{20,160}", true},
    {SY_GUARD_SECRET, "AKIA[0-9A-Z]{16}", true},
    {SY_GUARD_SECRET, "gh[pousr]_[A-Za-z0-9]{36}", true},
    {SY_GUARD_SECRET, "xox[abprs]-[A-Za-z0-9\\-]{10,100}", true},
    {SY_GUARD_SECRET, "AIza[0-9A-Za-z_\\-]{35}", true},
    {SY_GUARD_SECRET, "-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY-----", true},
};

const struct dp_guard_pattern *dp__guard_patterns(size_t *n)
{
    *n = SY_ARRAY_LEN(patterns);
    return patterns;
}

/* ============================================================================================
 * Validators
 * ========================================================================================== */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alnum(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool dp__guard_luhn(const char *s, size_t n)
{
    unsigned sum = 0, k = 0;
    for (size_t i = n; i-- > 0;) {
        if (!is_digit(s[i]))
            continue;
        unsigned d = (unsigned)(s[i] - '0');
        if (k++ & 1) {
            d *= 2;
            if (d > 9)
                d -= 9;
        }
        sum += d;
    }
    return k > 0 && sum % 10 == 0;
}

bool dp__guard_cn_id(const char *s, size_t n)
{
    static const unsigned weights[17] = {7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2};
    static const char check[11] = {'1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'};
    if (n != 18)
        return false;
    unsigned sum = 0;
    for (int i = 0; i < 17; i++) {
        if (!is_digit(s[i]))
            return false;
        sum += (unsigned)(s[i] - '0') * weights[i];
    }
    char c = s[17] == 'x' ? 'X' : s[17];
    return c == check[sum % 11];
}

static size_t count_digits(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += is_digit(s[i]);
    return k;
}

/* Trim the guard bytes: advance <*from> to the first byte <keep> accepts, move <*to> back
 * after the last one. */
static void trim(const char *text, size_t *from, size_t *to, bool (*keep)(char))
{
    while (*from < *to && !keep(text[*from]))
        (*from)++;
    while (*to > *from && !keep(text[*to - 1]))
        (*to)--;
}

static bool id_char(char c)
{
    return is_digit(c) || c == 'X' || c == 'x';
}

static bool phone_edge(char c)
{
    return is_digit(c) || c == '+';
}

static bool mobile_edge(char c)
{
    return is_digit(c) || c == '+';
}

static bool ipv6_char(char c)
{
    return is_hex(c) || c == ':';
}

static bool ipv6_ok(const char *s, size_t n)
{
    char buf[64];
    unsigned char addr[16];
    size_t groups = 0, hex = 0, run = 0;
    if (n == 0 || n >= sizeof(buf))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ':') {
            groups += run > 0;
            run = 0;
        } else {
            run++;
            hex++;
        }
    }
    groups += run > 0;
    /* "std::cout" holds "d::c", a valid address nobody means: ask for a real one */
    if (groups < 2 || hex < 5)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, addr) == 1;
}

static bool ipv4_ok(const char *s, size_t n)
{
    char buf[16];
    unsigned char addr[4];
    if (n < 7 || n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    /* inet_pton refuses leading zeros' ambiguity and octets above 255 */
    return inet_pton(AF_INET, buf, addr) == 1;
}

/* A PEM block: extend the match from its BEGIN line to the end of its END line when the text
 * holds it. */
static void extend_pem(const char *text, size_t len, size_t *to)
{
    static const char end[] = "-----END ";
    const char *e = memmem(text + *to, len - *to, end, sizeof(end) - 1);
    if (!e)
        return;
    const char *close =
        memmem(e + sizeof(end) - 1, (size_t)(text + len - e) - (sizeof(end) - 1), "-----", 5);
    if (close && close - e < 80)
        *to = (size_t)(close + 5 - text);
}

/* The start of an email address that ends at <to>: back over the domain to the '@', then over
 * the local part (at most 64 bytes). <to> itself when there is none. */
static size_t email_start(const char *text, size_t to)
{
    size_t i = to;
    while (i > 0 && to - i < 255 &&
           (is_alnum(text[i - 1]) || text[i - 1] == '.' || text[i - 1] == '-'))
        i--;
    if (i == 0 || text[i - 1] != '@')
        return to;
    size_t at = --i;
    while (i > 0 && at - i < 64 && (is_alnum(text[i - 1]) || strchr("._%+-", text[i - 1])))
        i--;
    return i == at ? to : i;
}

/* The start of a secret that ends at <to>: its BEGIN line for a PEM header, else back over the
 * characters keys are made of. */
static size_t secret_start(const char *text, size_t to)
{
    size_t i = to;
    if (to >= 5 && memcmp(text + to - 5, "-----", 5) == 0) {
        while (i >= 10 && to - i < 80) {
            if (memcmp(text + i - 10, "-----BEGIN", 10) == 0)
                return i - 10;
            i--;
        }
        return to;
    }
    while (i > 0 && to - i < 200 &&
           (is_alnum(text[i - 1]) || text[i - 1] == '_' || text[i - 1] == '-'))
        i--;
    return i;
}

bool dp__guard_validate(enum sy_guard_detector det, const char *text, size_t len, size_t *from,
                        size_t *to)
{
    if (*from == *to && det == SY_GUARD_EMAIL)
        *from = email_start(text, *to);
    else if (*from == *to && det == SY_GUARD_SECRET)
        *from = secret_start(text, *to);
    switch (det) {
    case SY_GUARD_EMAIL:
        while (*from < *to && text[*from] == '.')
            (*from)++;
        return *to > *from && text[*from] != '@' && memchr(text + *from, '@', *to - *from);
    case SY_GUARD_PHONE: {
        trim(text, from, to, phone_edge);
        size_t k = count_digits(text + *from, *to - *from);
        return k >= 8 && k <= 15;
    }
    case SY_GUARD_CN_MOBILE:
        trim(text, from, to, mobile_edge);
        return *to - *from >= 11;
    case SY_GUARD_CN_ID:
        trim(text, from, to, id_char);
        /* a trailing X belongs to the number only as its 18th character */
        return dp__guard_cn_id(text + *from, *to - *from);
    case SY_GUARD_BANK_CARD: {
        trim(text, from, to, is_digit);
        size_t k = count_digits(text + *from, *to - *from);
        return k >= 13 && k <= 19 && dp__guard_luhn(text + *from, *to - *from);
    }
    case SY_GUARD_IPV4:
        trim(text, from, to, is_digit);
        /* "1.2.3.4.5" is a version number, not an address */
        if (*to + 1 < len && text[*to] == '.' && is_digit(text[*to + 1]))
            return false;
        return ipv4_ok(text + *from, *to - *from);
    case SY_GUARD_IPV6:
        trim(text, from, to, ipv6_char);
        return ipv6_ok(text + *from, *to - *from);
    case SY_GUARD_SECRET:
        if (*to == *from)
            return false;
        if (*to - *from > 10 && memcmp(text + *from, "-----BEGIN", 10) == 0)
            extend_pem(text, len, to);
        return true;
    case SY_GUARD_KEYWORD:
    case SY_GUARD_REGEX:
        return *to > *from;
    case SY_GUARD_DETECTOR_MAX:
        break;
    }
    return false;
}

/* ============================================================================================
 * Masks
 * ========================================================================================== */

/* Mask the digits of <m>/<n> whose index among the digits is in [<lo>, <hi>); other bytes
 * (separators, '+') are kept. */
static void mask_digits(const char *m, size_t n, size_t lo, size_t hi, struct sy_buf *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_digit(m[i]) || ((m[i] == 'X' || m[i] == 'x') && i == n - 1)) {
            sy_buf_append(out, k >= lo && k < hi ? "*" : &m[i], 1);
            k++;
        } else {
            sy_buf_append(out, &m[i], 1);
        }
    }
}

void dp__guard_mask(enum sy_guard_detector det, const char *m, size_t n, struct sy_buf *out)
{
    size_t k = count_digits(m, n);
    if ((det == SY_GUARD_CN_ID) && n && (m[n - 1] == 'X' || m[n - 1] == 'x'))
        k++;
    switch (det) {
    case SY_GUARD_EMAIL:
        sy_buf_puts(out, "[EMAIL]");
        return;
    case SY_GUARD_PHONE: /* +86 138****5678: country code and the last four stay */
    case SY_GUARD_CN_MOBILE:
        mask_digits(m, n, k >= 8 ? k - 8 : 0, k >= 4 ? k - 4 : 0, out);
        return;
    case SY_GUARD_CN_ID: /* region and last four: 110101********1234 */
        mask_digits(m, n, 6, k >= 4 ? k - 4 : 0, out);
        return;
    case SY_GUARD_BANK_CARD: /* last four */
        mask_digits(m, n, 0, k >= 4 ? k - 4 : 0, out);
        return;
    case SY_GUARD_IPV4:
        sy_buf_puts(out, "[IPV4]");
        return;
    case SY_GUARD_IPV6:
        sy_buf_puts(out, "[IPV6]");
        return;
    case SY_GUARD_SECRET:
        sy_buf_puts(out, "[SECRET]");
        return;
    case SY_GUARD_KEYWORD:
    case SY_GUARD_REGEX:
    case SY_GUARD_DETECTOR_MAX:
        break;
    }
    sy_buf_puts(out, "[REDACTED]");
}
