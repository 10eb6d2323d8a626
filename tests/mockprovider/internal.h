/* SPDX-License-Identifier: Apache-2.0 */
/** Declarations shared between the mock provider's files.
 *
 * The mock is one libuv loop per process. A connection (conn.c) parses requests with llhttp and
 * hands one complete request at a time to respond.c, which decides the answer (fault.c picks
 * the fault, reply.c renders OpenAI / Anthropic JSON and SSE) and writes it back through the
 * connection's reusable buffers. admin.c serves /mock/... and keeps stats and the request log.
 * Pipelined requests wait in the connection's input buffer until the response before them is
 * finished, so responses always leave in request order. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <llhttp.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "sy/buf.h"

#define MP_MAX_HEADERS    64
#define MP_MAX_HEAD_BYTES (64u * 1024)        /* a larger request head gets 431 */
#define MP_MAX_BODY_BYTES (64u * 1024 * 1024) /* a larger body gets 413 */
#define MP_LOG_SIZE       50                  /* requests kept for GET /mock/requests */

/* ---- pool.c: per-request bump allocator, also jansson's allocator -------------------------- */

struct mp_pool_block;

/** Memory for one request's parsed JSON. Blocks are kept across resets, so a connection that
 * serves small requests stops calling malloc after its first one. */
struct mp_pool {
    struct mp_pool_block *blocks; /* standard blocks, kept */
    struct mp_pool_block *cur;
    struct mp_pool_block *big; /* one-off blocks for large allocations, freed on reset */
    char *ptr;
    char *end;
};

void mp_pool_init(struct mp_pool *p);
/** <n> bytes, 16-aligned, valid until mp_pool_reset(<p>). Aborts on failure. */
void *mp_pool_alloc(struct mp_pool *p, size_t n);
/** Forget every allocation; keeps the standard blocks for reuse. */
void mp_pool_reset(struct mp_pool *p);
/** Release all memory. */
void mp_pool_free(struct mp_pool *p);
/** Install the jansson allocator hooks; call once before any jansson use. */
void mp_json_init(void);
/** Make jansson allocate from <p> (borrowed) until the next call; NULL means malloc, for
 * values that outlive a request (the config). */
void mp_json_use_pool(struct mp_pool *p);

/* ---- tls.c ------------------------------------------------------------------------------- */

/** Load <cert> and <key> (PEM paths) into the process' server context. -EINVAL with a message
 * in *<err> (caller frees) on failure. */
int mp_tls_init(const char *cert, const char *key, char **err);
/** True once mp_tls_init() succeeded: connections speak TLS. */
bool mp_tls_enabled(void);
/** A server SSL object wired to two fresh memory BIOs (returned through <rbio>, <wbio>, owned
 * by the SSL). */
SSL *mp_tls_new(BIO **rbio, BIO **wbio);
void mp_tls_cleanup(void);

/* ---- fault.c ----------------------------------------------------------------------------- */

/** What to do to one request. Pointers borrow from the JSON the fault came from, which the
 * connection keeps alive until the response ends. */
struct mp_fault {
    int status;       /* 0: none */
    const char *body; /* raw body for <status> (or a 200) */
    size_t body_len;
    json_t *retry_after;     /* Retry-After header value: string or integer */
    json_t *headers;         /* extra response headers: object of strings or numbers */
    uint32_t delay_ms;       /* before the response head */
    uint32_t drip_ms;        /* body a few bytes at a time */
    uint32_t chunk_delay_ms; /* between SSE events */
    int64_t chunks;          /* content chunks; -1: one per word of the content */
    int64_t abort_after;     /* close after this many content chunks; -1: never */
    const char *content;     /* the text; NULL: default */
    size_t content_len;
    json_t *tool_call; /* true or an object {name, arguments, id}; NULL: text */
    json_t *usage;     /* overrides of the usage numbers */
    bool hang;
    bool reset;
    bool close;
    bool malformed;
    bool garbage;
    bool chunked;
    bool endless_headers;
    bool endless_stream;
    bool echo;
};

/** The config set through POST /mock/config: a default fault and faults per model id. */
struct mp_config {
    json_t *dflt;     /* object or NULL; malloc-allocated */
    json_t *by_model; /* object of objects or NULL */
};

extern struct mp_config mp_config;

/** Reset <f> to "no fault". */
void mp_fault_clear(struct mp_fault *f);
/** Fill <f> from the JSON object <o> (borrowed, must outlive <f>; NULL gives no fault). An
 * unknown key or a value of the wrong type is an error, so a typo in a test fails loudly:
 * -EINVAL with a message in <err> (<errlen> bytes). */
int mp_fault_parse(struct mp_fault *f, const json_t *o, char *err, size_t errlen);
/** Replace the config with the JSON object <o> (taken, malloc-allocated): its "by_model"
 * member becomes the per-model faults, the rest the default fault. -EINVAL with a message in
 * <err> (<errlen> bytes) if a fault is malformed; the old config then stays. */
int mp_config_set(json_t *o, char *err, size_t errlen);
void mp_config_clear(void);

/* ---- reply.c: rendering OpenAI and Anthropic bodies and events --------------------------- */

enum mp_api {
    MP_API_CHAT = 0,    /* POST /v1/chat/completions */
    MP_API_COMPLETIONS, /* POST /v1/completions */
    MP_API_MESSAGES,    /* POST /v1/messages (Anthropic) */
    MP_API_EMBEDDINGS,  /* POST /v1/embeddings */
    MP_API_MAX,
};

/** Stream phases, in order; each format emits events in the phases it has and skips the rest. */
enum mp_phase {
    MP_PH_OPEN = 0,    /* role chunk / message_start */
    MP_PH_BLOCK_START, /* content_block_start */
    MP_PH_PING,        /* ping */
    MP_PH_TOOL_HEAD,   /* OpenAI: tool call id + name */
    MP_PH_PIECES,      /* content words or tool argument pieces */
    MP_PH_BLOCK_STOP,  /* content_block_stop */
    MP_PH_FINISH,      /* finish_reason chunk / message_delta */
    MP_PH_USAGE,       /* usage chunk (include_usage) */
    MP_PH_DONE,        /* [DONE] / message_stop */
    MP_PH_MAX,
};

/** One answer, decided when the request arrives; strings borrow from the request JSON or the
 * fault, both alive until the response ends. */
struct mp_reply {
    enum mp_api api;
    const json_t *req; /* the request body, pool memory */
    bool stream;
    bool include_usage;
    bool malformed;
    bool endless;
    const char *model;
    size_t model_len;
    uint64_t seq; /* the N in chatcmpl-mock-N */
    long long created;
    const char *text; /* content the words are cut from */
    size_t text_len;
    uint64_t npieces; /* content chunks (words) or tool argument pieces to emit */
    bool tool;
    const char *tool_name;
    size_t tool_name_len;
    const char *tool_args;
    size_t tool_args_len;
    const char *tool_id;
    size_t tool_id_len;
    uint64_t prompt_tokens;
    uint64_t completion_tokens;
    uint64_t total_tokens;
    /* stream progress */
    enum mp_phase phase;
    uint64_t emitted; /* pieces emitted so far */
    size_t pos;       /* next byte of <text> for the next word */
};

/** Append the complete non-stream JSON body of <r> to <out>. */
void mp_reply_body(struct mp_reply *r, struct sy_buf *out);
/** Append the next SSE event of <r> (with its blank line) to <out>; false when the stream is
 * over. *<piece> is set when the event carried a content piece (for abort_after). */
bool mp_reply_event(struct mp_reply *r, struct sy_buf *out, bool *piece);
/** Append an error body in the shape of <api> for HTTP <status>, with <message> (NUL-terminated).
 */
void mp_reply_error(enum mp_api api, int status, const char *message, struct sy_buf *out);
/** Append an embeddings list for <input> (borrowed) under <model>, <prompt_tokens>. */
void mp_reply_embeddings(const json_t *input, const char *model, size_t model_len,
                         uint64_t prompt_tokens, struct sy_buf *out);

/* ---- conn.c ------------------------------------------------------------------------------ */

struct mp_header {
    uint32_t name_off; /* into mp_request.head; names are lowercased */
    uint32_t name_len;
    uint32_t value_off;
    uint32_t value_len;
};

/** The request being answered. Its bytes are copies owned by the connection, reused. */
struct mp_request {
    uint8_t method; /* llhttp_method_t */
    bool keep_alive;
    bool in_value; /* parser state: the last header callback was a value */
    unsigned nheaders;
    size_t head_bytes;
    struct sy_buf url;
    struct sy_buf head;
    struct mp_header headers[MP_MAX_HEADERS];
    struct sy_buf body;
};

struct mp_conn;
typedef void (*mp_step_cb)(struct mp_conn *c);

enum mp_close {
    MP_CLOSE_NOW = 0, /* FIN now, dropping unsent bytes */
    MP_CLOSE_FLUSH,   /* FIN once every byte handed over has been written */
    MP_CLOSE_RESET,   /* RST (SO_LINGER 0) */
    MP_CLOSE_MAX,
};

struct mp_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    llhttp_t parser;
    struct mp_conn *prev, *next; /* all connections, for shutdown */
    SSL *ssl;                    /* NULL on plain HTTP */
    BIO *rbio, *wbio;
    unsigned pending_closes; /* handles still closing; free at 0 */
    bool closing;
    bool close_after_write;
    bool writing;   /* wreq is in flight with <wflight> */
    bool req_ready; /* the parser paused on a complete request */
    bool in_run;
    bool responding; /* a response has started and not ended */
    bool hanging;    /* the fault says never answer */
    int bad_status;  /* 413/431 chosen by a parser callback */
    mp_step_cb timer_cb;
    mp_step_cb drain_cb;   /* called once the output buffer has drained */
    struct sy_buf in;      /* received bytes not parsed yet (pipelined requests) */
    struct sy_buf wbuf;    /* bytes not yet handed to the kernel */
    struct sy_buf wflight; /* bytes of the write in flight */
    size_t wflight_off;
    struct mp_request req;
    /* the response in progress (respond.c) */
    struct mp_pool pool;
    struct mp_fault fault;
    json_t *fault_ref; /* config object the fault borrows from, referenced */
    struct mp_reply reply;
    struct sy_buf out;  /* plaintext about to be sent */
    struct sy_buf body; /* the body being built or dripped */
    size_t body_off;
    uint64_t counter; /* pieces sent (abort_after), header lines (endless_headers) */
};

/** Start listening and accepting on <server> (borrowed for the loop's life). 0 or a libuv
 * error code. */
int mp_conn_listen(uv_stream_t *server);
/** Hand <n> bytes of <p> (borrowed) to the peer: one write attempt now (encrypted on TLS), the
 * rest when the socket is writable. May close <c> when the peer is gone: check c->closing. */
void mp_conn_send(struct mp_conn *c, const void *p, size_t n);
/** Bytes handed over and not yet written to the kernel. */
size_t mp_conn_backlog(const struct mp_conn *c);
/** Call <cb> once the backlog is empty. */
void mp_conn_on_drain(struct mp_conn *c, mp_step_cb cb);
/** Call <cb> after <ms> milliseconds; one timer per connection, stopped when it closes. */
void mp_conn_after(struct mp_conn *c, uint64_t ms, mp_step_cb cb);
/** The response is finished: answer the next pipelined request, or close if not keep-alive. */
void mp_conn_done(struct mp_conn *c);
/** Close <c> (see enum mp_close); a no-op when already closing. */
void mp_conn_close(struct mp_conn *c, enum mp_close how);
/** Close every connection (shutdown). */
void mp_conn_close_all(void);
/** The value of request header <name> (lowercase, NUL-terminated) or NULL; <len> set. */
const char *mp_req_header(const struct mp_conn *c, const char *name, size_t *len);

/* ---- respond.c --------------------------------------------------------------------------- */

/** Answer the complete request in c->req. Ends, now or later, with mp_conn_done() or a close. */
void mp_respond(struct mp_conn *c);
/** Release what the response in progress holds (fault reference, pool). Idempotent. */
void mp_respond_release(struct mp_conn *c);
/** Append a response head for <status> to c->out. <content_length> < 0 means chunked. */
void mp_put_head(struct mp_conn *c, int status, const char *ctype, long long content_length);
/** A complete JSON response (head + c->body) for <status>, sent and finished. */
void mp_send_json(struct mp_conn *c, int status);

/* ---- admin.c: /mock/..., stats, request log ---------------------------------------------- */

struct mp_stats {
    uint64_t requests;
    uint64_t connections_open;
    uint64_t connections_total;
    uint64_t aborted;
    uint64_t seq; /* ids of responses; not reset */
};

extern struct mp_stats mp_stats;

/** True if c->req is for /mock/...; then it has been answered. */
bool mp_admin_handle(struct mp_conn *c, const char *path, size_t path_len);
/** Record c->req in the request log. */
void mp_admin_record(const struct mp_conn *c);
void mp_admin_free(void);
