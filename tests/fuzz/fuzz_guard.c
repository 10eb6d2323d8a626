/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: the guardrail scanner (dataplane/src/guard.c, guard_detect.c) and the
 * guardrail document reader (proto/src/guardrail.c).
 *
 * The first byte picks what the rest is:
 *   0..63    a guardrail document (JSON) for sy_guardrail_check_json, strict as the admin API;
 *   64..255  a text scanned with every detector, English and Chinese keywords and a regex, then
 *            redacted; and the same text fed as a stream in pieces whose sizes come from the
 *            first byte, redacted and held back.
 * Invariants checked: nothing crashes or leaks (ASan); a text without matches comes out of the
 * block redaction and of the stream byte for byte; a stream with no limit emits at least as
 * many bytes as it is fed unless it was blocked. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "sy/table.h"

static struct dp_guard_db *db;

static void setup(void)
{
    static const char *const kw[] = {"secret plan", "机密", "绝密文件", "drop table"};
    static const char *const re[] = {"订单号[0-9]{6}", "(?i)pass(word)?\\s*[:=]\\s*\\S+"};
    struct sy_guard_side side = {
        .detectors = 0xffu,
        .keywords = (char **)kw,
        .n_keywords = 4,
        .regexes = (char **)re,
        .n_regexes = 2,
    };
    memset(side.actions, SY_GUARD_REDACT, sizeof(side.actions));
    char *err = NULL;
    if (dp_guard_db_compile(&side, &db, &err) != 0 || !db)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (!db)
        setup();
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    if (data[0] < 64) {
        struct sy_guardrail gr;
        char *err = NULL, *param = NULL;
        if (sy_guardrail_check_json(text, len, &gr, &err, &param) == 0)
            sy_guardrail_free(&gr);
        free(err);
        free(param);
        return 0;
    }

    struct dp_guard_matches m = {0};
    struct sy_buf out = SY_BUF_INIT;
    int worst = dp_guard_scan_text(&db, 1, text, len, &m);
    dp_guard_redact(text, len, 0, &m, &out);
    if (worst < 0 && (out.len != len || (len && memcmp(out.data, text, len) != 0)))
        abort();
    dp_guard_matches_free(&m);

    struct dp_guard_stream s;
    struct sy_buf sout = SY_BUF_INIT;
    size_t piece = 1 + data[0] % 37, off = 0;
    int sworst = -1;
    if (dp_guard_stream_open(&s, &db, 1, 0) != 0)
        abort();
    do {
        size_t n = len - off < piece ? len - off : piece;
        int w = dp_guard_stream_feed(&s, text + off, n, off + n == len, &sout);
        if (w > sworst)
            sworst = w;
        off += n;
    } while (off < len);
    dp_guard_stream_close(&s);
    if (sworst < 0 && worst < 0 && (sout.len != len || (len && memcmp(sout.data, text, len))))
        abort();
    sy_buf_free(&out);
    sy_buf_free(&sout);
    return 0;
}
