/* SPDX-License-Identifier: Apache-2.0 */
/* Rendering answers in the providers' formats: OpenAI chat completions, OpenAI legacy
 * completions, Anthropic messages, embeddings and errors. Everything is appended to a caller's
 * reusable buffer; nothing here allocates beyond growing that buffer.
 *
 * A stream is a fixed sequence of phases (enum mp_phase); each format says which phases it has
 * and what the event of each looks like, so a new kind of output (say several tool calls, or
 * thinking blocks) is a new phase or a new piece source, not a new state machine. */
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "sy/util.h"

#define LIT(out, s) sy_buf_append((out), (s), sizeof(s) - 1)

/* Append <s>/<n> JSON-escaped, without quotes. */
static void json_esc(struct sy_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sy_buf_reserve(out, n + 8);
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (SY_LIKELY(ch >= 0x20 && ch != '"' && ch != '\\'))
            continue;
        sy_buf_append(out, s + start, i - start);
        start = i + 1;
        switch (ch) {
        case '"':
            LIT(out, "\\\"");
            break;
        case '\\':
            LIT(out, "\\\\");
            break;
        case '\n':
            LIT(out, "\\n");
            break;
        case '\r':
            LIT(out, "\\r");
            break;
        case '\t':
            LIT(out, "\\t");
            break;
        default: {
            char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            sy_buf_append(out, e, sizeof(e));
        }
        }
    }
    sy_buf_append(out, s + start, n - start);
}

static void json_str(struct sy_buf *out, const char *s, size_t n)
{
    LIT(out, "\"");
    json_esc(out, s, n);
    LIT(out, "\"");
}

/* ---- pieces: words of the content, or slices of the tool arguments -------------------------- */

static bool is_space(char ch)
{
    return ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r';
}

/* The next word of the text with the whitespace after it; wraps around to the start when the
 * text is exhausted (a chunk count larger than the word count cycles the text). *<space> asks
 * for a separating space when the last word of the text is followed by a wrapped first one. */
static void next_word(struct mp_reply *r, const char **p, size_t *n, bool *space)
{
    *space = false;
    if (r->pos >= r->text_len)
        r->pos = 0;
    size_t i = r->pos;
    while (i < r->text_len && !is_space(r->text[i]))
        i++;
    while (i < r->text_len && is_space(r->text[i]))
        i++;
    *p = r->text + r->pos;
    *n = i - r->pos;
    r->pos = i;
    if (i >= r->text_len && *n > 0 && !is_space(r->text[i - 1]) &&
        (r->endless || r->emitted + 1 < r->npieces))
        *space = true;
}

/* Append piece number r->emitted, JSON-escaped, without quotes, and advance. */
static void put_piece(struct mp_reply *r, struct sy_buf *out)
{
    if (r->tool) {
        size_t size = (r->tool_args_len + r->npieces - 1) / (r->npieces ? r->npieces : 1);
        size_t off = r->emitted * size;
        size_t n = off >= r->tool_args_len ? 0 : SY_MIN(size, r->tool_args_len - off);
        json_esc(out, r->tool_args + off, n);
    } else {
        const char *p;
        size_t n;
        bool space;
        next_word(r, &p, &n, &space);
        json_esc(out, p, n);
        if (space)
            LIT(out, " ");
    }
    r->emitted++;
}

/* The whole content, JSON-escaped, without quotes: the concatenation of all pieces. */
static void put_text(struct mp_reply *r, struct sy_buf *out)
{
    if (!r->tool && r->npieces == 0)
        return;
    r->emitted = 0;
    r->pos = 0;
    while (r->emitted < r->npieces)
        put_piece(r, out);
    r->emitted = 0;
    r->pos = 0;
}

/* ---- common bits --------------------------------------------------------------------------- */

static void put_usage_openai(const struct mp_reply *r, struct sy_buf *out)
{
    sy_buf_printf(out, "{\"prompt_tokens\":%llu,\"completion_tokens\":%llu,\"total_tokens\":%llu}",
                  (unsigned long long)r->prompt_tokens, (unsigned long long)r->completion_tokens,
                  (unsigned long long)r->total_tokens);
}

static void put_id(const struct mp_reply *r, struct sy_buf *out, const char *prefix)
{
    sy_buf_printf(out, "\"%s%llu\"", prefix, (unsigned long long)r->seq);
}

static void put_model(const struct mp_reply *r, struct sy_buf *out)
{
    json_str(out, r->model, r->model_len);
}

/* ---- OpenAI chat completions ---------------------------------------------------------------- */

static void chat_body(struct mp_reply *r, struct sy_buf *out)
{
    LIT(out, "{\"id\":");
    put_id(r, out, "chatcmpl-mock-");
    sy_buf_printf(out, ",\"object\":\"chat.completion\",\"created\":%lld,\"model\":", r->created);
    put_model(r, out);
    LIT(out, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    if (r->tool) {
        LIT(out, "null,\"tool_calls\":[{\"id\":");
        json_str(out, r->tool_id, r->tool_id_len);
        LIT(out, ",\"type\":\"function\",\"function\":{\"name\":");
        json_str(out, r->tool_name, r->tool_name_len);
        LIT(out, ",\"arguments\":");
        json_str(out, r->tool_args, r->tool_args_len);
        LIT(out, "}}]},\"finish_reason\":\"tool_calls\"}],\"usage\":");
    } else {
        LIT(out, "\"");
        put_text(r, out);
        LIT(out, "\"},\"finish_reason\":\"stop\"}],\"usage\":");
    }
    put_usage_openai(r, out);
    LIT(out, "}");
}

static void chat_chunk_open(const struct mp_reply *r, struct sy_buf *out)
{
    LIT(out, "data: {\"id\":");
    put_id(r, out, "chatcmpl-mock-");
    sy_buf_printf(out,
                  ",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":", r->created);
    put_model(r, out);
    LIT(out, ",\"choices\":[");
}

static bool chat_event(struct mp_reply *r, enum mp_phase ph, struct sy_buf *out)
{
    switch (ph) {
    case MP_PH_OPEN:
        chat_chunk_open(r, out);
        if (r->tool)
            LIT(out, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null},");
        else
            LIT(out, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},");
        LIT(out, "\"finish_reason\":null}]}\n\n");
        return true;
    case MP_PH_TOOL_HEAD:
        if (!r->tool)
            return false;
        chat_chunk_open(r, out);
        LIT(out, "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":");
        json_str(out, r->tool_id, r->tool_id_len);
        LIT(out, ",\"type\":\"function\",\"function\":{\"name\":");
        json_str(out, r->tool_name, r->tool_name_len);
        LIT(out, ",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n");
        return true;
    case MP_PH_PIECES:
        chat_chunk_open(r, out);
        if (r->tool) {
            LIT(out, "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
                     "{\"arguments\":\"");
            put_piece(r, out);
            LIT(out, "\"}}]},\"finish_reason\":null}]}\n\n");
        } else {
            LIT(out, "{\"index\":0,\"delta\":{\"content\":\"");
            put_piece(r, out);
            LIT(out, "\"},\"finish_reason\":null}]}\n\n");
        }
        return true;
    case MP_PH_FINISH:
        chat_chunk_open(r, out);
        if (r->tool)
            LIT(out, "{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n");
        else
            LIT(out, "{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        return true;
    case MP_PH_USAGE:
        if (!r->include_usage)
            return false;
        chat_chunk_open(r, out);
        LIT(out, "],\"usage\":");
        put_usage_openai(r, out);
        LIT(out, "}\n\n");
        return true;
    case MP_PH_DONE:
        LIT(out, "data: [DONE]\n\n");
        return true;
    default:
        return false;
    }
}

/* ---- OpenAI legacy completions -------------------------------------------------------------- */

static void completion_open(const struct mp_reply *r, struct sy_buf *out)
{
    LIT(out, "{\"id\":");
    put_id(r, out, "cmpl-mock-");
    sy_buf_printf(out, ",\"object\":\"text_completion\",\"created\":%lld,\"model\":", r->created);
    put_model(r, out);
    LIT(out, ",\"choices\":[");
}

static void completion_body(struct mp_reply *r, struct sy_buf *out)
{
    completion_open(r, out);
    LIT(out, "{\"text\":\"");
    put_text(r, out);
    LIT(out, "\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":");
    put_usage_openai(r, out);
    LIT(out, "}");
}

static bool completion_event(struct mp_reply *r, enum mp_phase ph, struct sy_buf *out)
{
    switch (ph) {
    case MP_PH_PIECES:
        LIT(out, "data: ");
        completion_open(r, out);
        LIT(out, "{\"text\":\"");
        put_piece(r, out);
        LIT(out, "\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n");
        return true;
    case MP_PH_FINISH:
        LIT(out, "data: ");
        completion_open(r, out);
        LIT(out, "{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n");
        return true;
    case MP_PH_USAGE:
        if (!r->include_usage)
            return false;
        LIT(out, "data: ");
        completion_open(r, out);
        LIT(out, "],\"usage\":");
        put_usage_openai(r, out);
        LIT(out, "}\n\n");
        return true;
    case MP_PH_DONE:
        LIT(out, "data: [DONE]\n\n");
        return true;
    default:
        return false;
    }
}

/* ---- Anthropic messages --------------------------------------------------------------------- */

static void messages_body(struct mp_reply *r, struct sy_buf *out)
{
    LIT(out, "{\"id\":");
    put_id(r, out, "msg_mock_");
    LIT(out, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    put_model(r, out);
    if (r->tool) {
        LIT(out, ",\"content\":[{\"type\":\"tool_use\",\"id\":");
        json_str(out, r->tool_id, r->tool_id_len);
        LIT(out, ",\"name\":");
        json_str(out, r->tool_name, r->tool_name_len);
        LIT(out, ",\"input\":");
        sy_buf_append(out, r->tool_args, r->tool_args_len);
        LIT(out, "}],\"stop_reason\":\"tool_use\"");
    } else {
        LIT(out, ",\"content\":[{\"type\":\"text\",\"text\":\"");
        put_text(r, out);
        LIT(out, "\"}],\"stop_reason\":\"end_turn\"");
    }
    sy_buf_printf(out,
                  ",\"stop_sequence\":null,\"usage\":{\"input_tokens\":%llu,"
                  "\"output_tokens\":%llu}}",
                  (unsigned long long)r->prompt_tokens, (unsigned long long)r->completion_tokens);
}

static bool messages_event(struct mp_reply *r, enum mp_phase ph, struct sy_buf *out)
{
    switch (ph) {
    case MP_PH_OPEN:
        LIT(out, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":");
        put_id(r, out, "msg_mock_");
        LIT(out, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        put_model(r, out);
        sy_buf_printf(out,
                      ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
                      "\"usage\":{\"input_tokens\":%llu,\"output_tokens\":1}}}\n\n",
                      (unsigned long long)r->prompt_tokens);
        return true;
    case MP_PH_BLOCK_START:
        LIT(out, "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
                 "\"content_block\":");
        if (r->tool) {
            LIT(out, "{\"type\":\"tool_use\",\"id\":");
            json_str(out, r->tool_id, r->tool_id_len);
            LIT(out, ",\"name\":");
            json_str(out, r->tool_name, r->tool_name_len);
            LIT(out, ",\"input\":{}}}\n\n");
        } else {
            LIT(out, "{\"type\":\"text\",\"text\":\"\"}}\n\n");
        }
        return true;
    case MP_PH_PING:
        LIT(out, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
        return true;
    case MP_PH_PIECES:
        LIT(out, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
                 "\"delta\":");
        if (r->tool)
            LIT(out, "{\"type\":\"input_json_delta\",\"partial_json\":\"");
        else
            LIT(out, "{\"type\":\"text_delta\",\"text\":\"");
        put_piece(r, out);
        LIT(out, "\"}}\n\n");
        return true;
    case MP_PH_BLOCK_STOP:
        LIT(out,
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
        return true;
    case MP_PH_FINISH:
        sy_buf_printf(out,
                      "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":"
                      "{\"stop_reason\":\"%s\",\"stop_sequence\":null},\"usage\":"
                      "{\"output_tokens\":%llu}}\n\n",
                      r->tool ? "tool_use" : "end_turn", (unsigned long long)r->completion_tokens);
        return true;
    case MP_PH_DONE:
        LIT(out, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        return true;
    default:
        return false;
    }
}

/* ---- entry points ---------------------------------------------------------------------------- */

void mp_reply_body(struct mp_reply *r, struct sy_buf *out)
{
    switch (r->api) {
    case MP_API_CHAT:
        chat_body(r, out);
        break;
    case MP_API_COMPLETIONS:
        completion_body(r, out);
        break;
    case MP_API_MESSAGES:
        messages_body(r, out);
        break;
    default:
        SY_REQUIRE(!"no body renderer for this api");
    }
}

bool mp_reply_event(struct mp_reply *r, struct sy_buf *out, bool *piece)
{
    *piece = false;
    while (r->phase < MP_PH_MAX) {
        if (r->phase == MP_PH_PIECES && !r->endless && r->emitted >= r->npieces) {
            r->phase++;
            continue;
        }
        enum mp_phase ph = r->phase;
        if (ph != MP_PH_PIECES)
            r->phase++;
        bool emitted;
        switch (r->api) {
        case MP_API_CHAT:
            emitted = chat_event(r, ph, out);
            break;
        case MP_API_COMPLETIONS:
            emitted = completion_event(r, ph, out);
            break;
        case MP_API_MESSAGES:
            emitted = messages_event(r, ph, out);
            break;
        default:
            emitted = false;
            r->phase = MP_PH_MAX;
        }
        if (emitted) {
            *piece = ph == MP_PH_PIECES;
            return true;
        }
    }
    return false;
}

static const char *anthropic_error_type(int status)
{
    switch (status) {
    case 400:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 529:
        return "overloaded_error";
    default:
        return "api_error";
    }
}

void mp_reply_error(enum mp_api api, int status, const char *message, struct sy_buf *out)
{
    if (api == MP_API_MESSAGES) {
        sy_buf_printf(out, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":",
                      anthropic_error_type(status));
        json_str(out, message ? message : "mock error", strlen(message ? message : "mock error"));
        LIT(out, "}}");
        return;
    }
    if (message == NULL) {
        LIT(out, "{\"error\":{\"message\":\"mock error\",\"type\":\"mock_error\",\"param\":null,"
                 "\"code\":\"mock\"}}");
        return;
    }
    LIT(out, "{\"error\":{\"message\":");
    json_str(out, message, strlen(message));
    sy_buf_printf(out, ",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}",
                  status >= 500 ? "server_error" : "invalid_request_error",
                  status == 404   ? "not_found"
                  : status == 413 ? "body_too_large"
                  : status == 431 ? "headers_too_large"
                                  : "invalid_request");
}

/* A stable pseudo-embedding: eight numbers in [-1, 1] derived from the text, so equal inputs
 * get equal vectors and tests can compare them. */
static void put_vector(const char *s, size_t n, struct sy_buf *out)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    LIT(out, "[");
    for (int k = 0; k < 8; k++) {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        double v = (double)(h >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        sy_buf_printf(out, "%s%.6f", k ? "," : "", v);
    }
    LIT(out, "]");
}

void mp_reply_embeddings(const json_t *input, const char *model, size_t model_len,
                         uint64_t prompt_tokens, struct sy_buf *out)
{
    LIT(out, "{\"object\":\"list\",\"data\":[");
    size_t count = 1;
    bool tokens = true; /* an array of integers is one tokenised input */
    if (json_is_array(input)) {
        for (size_t i = 0; i < json_array_size(input); i++)
            tokens = tokens && json_is_integer(json_array_get(input, i));
        count = tokens ? 1 : json_array_size(input);
    }
    for (size_t i = 0; i < count; i++) {
        const json_t *item = json_is_array(input) && !tokens ? json_array_get(input, i) : input;
        const char *s = json_is_string(item) ? json_string_value(item) : "";
        size_t n = json_is_string(item) ? json_string_length(item) : 0;
        sy_buf_printf(out, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":", i ? "," : "",
                      i);
        put_vector(s, n, out);
        LIT(out, "}");
    }
    LIT(out, "],\"model\":");
    json_str(out, model, model_len);
    sy_buf_printf(out, ",\"usage\":{\"prompt_tokens\":%llu,\"total_tokens\":%llu}}",
                  (unsigned long long)prompt_tokens, (unsigned long long)prompt_tokens);
}
