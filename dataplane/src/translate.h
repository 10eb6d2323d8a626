/* SPDX-License-Identifier: Apache-2.0 */
/** Translation between the OpenAI Chat Completions and the Anthropic Messages formats: requests,
 * JSON responses, streams (event by event), usage and errors. Pure functions of their inputs
 * (no I/O, no clock except the "created" stamp of OpenAI objects). Every choice made for a
 * field one side does not know is listed in docs/translation.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "sy/buf.h"
#include "sy/sse.h"

/** The wire formats a client or a deployment speaks. */
enum dp_api {
    DP_API_OPENAI = 0, /* POST /v1/chat/completions */
    DP_API_ANTHROPIC,  /* POST /v1/messages */
    DP_API_MAX,
};

/** Token counts of one response, in OpenAI's terms: <prompt_tokens> counts every input token,
 * cached or not (Anthropic input_tokens + cache_read_input_tokens +
 * cache_creation_input_tokens); <cached_tokens> are the cache reads, <cache_write_tokens> the
 * cache creations; <reasoning_tokens> is part of <completion_tokens>. */
struct dp_usage {
    uint64_t prompt_tokens;
    uint64_t completion_tokens;
    uint64_t cached_tokens;
    uint64_t cache_write_tokens;
    uint64_t reasoning_tokens;
    bool present; /* some usage was seen */
};

/* ---- requests, responses, errors --------------------------------------------------------- */

/** Append to <out> the request <req> (a parsed client body in <from> format, borrowed, not
 * modified) in <to> format, with "model" set to <upstream_model> (borrowed). <stream> is what
 * the client asked; an OpenAI upstream stream also gets "stream_options":{"include_usage":true}
 * so usage can be counted. An Anthropic upstream gets "max_tokens" from the request's
 * max_completion_tokens or max_tokens, else <default_max_tokens>. With <from> == <to> the body
 * is copied with only those members set. Returns 0, or -EINVAL with *<err> set to a message
 * naming the field that cannot be expressed (the caller frees it); <out> is then left as it
 * was. */
int dp_tr_request(enum dp_api from, enum dp_api to, json_t *req, const char *upstream_model,
                  bool stream, uint32_t default_max_tokens, struct sy_buf *out, char **err);

/** Append to <out> the non-stream response <body>/<len> (borrowed) of a <from>-format upstream
 * as a <to>-format response reporting <client_model> (borrowed), and fill <usage> (may be
 * NULL). Returns 0, or -EPROTO when the body is not a response of that format or holds a tool
 * call whose arguments are not a JSON object (then <out> is left as it was). */
int dp_tr_response(enum dp_api from, enum dp_api to, const char *body, size_t len,
                   const char *client_model, struct sy_buf *out, struct dp_usage *usage);

/** Merge into <u> the usage found in <json>/<len> (borrowed) of <api> format: a whole response
 * body, or the data of one stream event (an OpenAI chunk with "usage"; an Anthropic
 * message_start or message_delta). Each count present replaces the one in <u>, since both
 * formats report running totals (Anthropic's message_delta usage is cumulative); counts absent
 * keep their value, so message_start's input and message_delta's output add up to the whole.
 * Cheap: a targeted scan, no allocation. Anything unrecognised leaves <u> untouched. */
void dp_usage_from_json(enum dp_api api, const char *json, size_t len, struct dp_usage *u);

/** Append to <out> the client's (<to>) error body for an upstream error of format <from>:
 * <status> and <body>/<len> (borrowed; may be empty or not JSON, then its text becomes the
 * message). *<out_status> gets the status for the client: Anthropic 529 overloaded_error is
 * OpenAI 503 and back; other statuses are kept. */
void dp_tr_error(enum dp_api from, enum dp_api to, int status, const char *body, size_t len,
                 struct sy_buf *out, int *out_status);

/** Append to <out> a gateway error in <to> format. <type> and <code> (borrowed, may be NULL)
 * are OpenAI-style; an Anthropic body takes its type from <status> (or from <type> when it is
 * already an Anthropic error type). <message> is borrowed. */
void dp_tr_gateway_error(enum dp_api to, int status, const char *type, const char *code,
                         const char *message, struct sy_buf *out);

/* ---- streams ----------------------------------------------------------------------------- */

#define DP_TR_MAX_BLOCKS 64 /* content blocks / tool calls one stream can carry */

/** A stream translator. Embed it by value; all state is here, and the only memory it owns is
 * the two small buffers filled once by dp_tr_stream_init() (so no allocation per event). */
struct dp_tr_stream {
    uint8_t from, to;        /* enum dp_api */
    bool client_wants_usage; /* OpenAI client: it asked for stream_options.include_usage */
    bool started;            /* the client stream is open (message_start / role chunk sent) */
    bool finished;           /* the upstream's finish (finish_reason / message_delta) was seen */
    bool done;               /* the client stream is closed (message_stop / [DONE] sent) */
    bool has_content;        /* a content, tool or thinking delta has been sent */
    bool delta_pending;      /* to Anthropic: message_delta held back until usage or [DONE] */
    uint8_t block;           /* to Anthropic: the kind of content block open (0 none) */
    uint8_t stop;            /* stop reason seen, an internal code */
    int16_t cur_tool;        /* to Anthropic: OpenAI tool call index in the open block, or -1 */
    uint16_t next_block;     /* to Anthropic: index of the next content block */
    uint16_t n_tools;        /* to OpenAI: tool calls started so far */
    int16_t map[DP_TR_MAX_BLOCKS]; /* OpenAI tool index -> Anthropic block, or back; -1 */
    struct dp_usage usage;
    struct sy_buf model;  /* the client model as a JSON string literal */
    struct sy_buf head;   /* to OpenAI: `data: {"id":..,"object":..,"created":..,"model":..,` */
    struct sy_buf msg_id; /* the request id as a JSON string literal, or empty */
};

/** Prepare <s> to turn a <from>-format upstream stream into a <to>-format client stream that
 * reports <client_model> and, when not NULL, <request_id> as the id (else the upstream's id).
 * Both are copied. <client_wants_usage>: an OpenAI client asked for a usage chunk. */
void dp_tr_stream_init(struct dp_tr_stream *s, enum dp_api from, enum dp_api to,
                       const char *client_model, const char *request_id, bool client_wants_usage);

/** Translate one upstream event <ev> (borrowed), appending the client's SSE bytes to <out> at
 * once. Returns 0, or -EPROTO when the event is not what the upstream format allows (the caller
 * ends the stream, usually with dp_tr_stream_error()). With <from> == <to> the event passes
 * through byte for byte (an OpenAI usage-only chunk is dropped when the client did not ask). */
int dp_tr_stream_event(struct dp_tr_stream *s, const struct sy_sse_event *ev, struct sy_buf *out);

/** The upstream ended cleanly: append what the client format still needs to close (the held
 * message_delta and message_stop, or the finish chunk, usage chunk and [DONE]). Returns 0. */
int dp_tr_stream_end(struct dp_tr_stream *s, struct sy_buf *out);

/** Append an error event in the client's format: OpenAI `data: {"error":{...}}`, Anthropic
 * `event: error`. <message> and <code> are borrowed (<code> may be NULL). The stream counts as
 * closed afterwards. */
void dp_tr_stream_error(struct dp_tr_stream *s, const char *message, const char *code,
                        struct sy_buf *out);

/** True once a content, tool-call or thinking delta has gone to the client: after that a
 * failover can no longer restart the answer. */
bool dp_tr_stream_has_content(const struct dp_tr_stream *s);

/** The usage seen so far (borrowed from <s>). */
const struct dp_usage *dp_tr_stream_usage(const struct dp_tr_stream *s);

/** Release the memory of <s>; it may be initialised again. */
void dp_tr_stream_free(struct dp_tr_stream *s);
