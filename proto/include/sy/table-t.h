/* SPDX-License-Identifier: Apache-2.0 */
/** Types of the routing table: the immutable, versioned description of deployments and public
 * models that the control plane publishes and every data-plane worker routes by.
 * Field-by-field documentation of the wire form is in proto/README.md. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/** Version of the routing table's msgpack schema; bumped on an incompatible change only
 * (unknown keys are ignored, so adding a field does not need it). */
#define SY_TABLE_SCHEMA 1

enum sy_format {
    SY_FORMAT_OPENAI = 0, /* OpenAI chat completions and everything compatible */
    SY_FORMAT_ANTHROPIC,  /* Anthropic Messages */
    SY_FORMAT_AZURE,      /* Azure OpenAI: deployment in the path, api-version query */
    SY_FORMAT_MAX,
};

enum sy_auth_style {
    SY_AUTH_BEARER = 0, /* Authorization: Bearer <key> */
    SY_AUTH_HEADER,     /* <auth_name>: <key> (x-api-key, api-key, ...) */
    SY_AUTH_QUERY,      /* ?<auth_name>=<key> */
    SY_AUTH_NONE,
    SY_AUTH_MAX,
};

/** Where a deployment's provider listens, parsed once from its base URL. */
struct sy_origin {
    bool tls;
    uint16_t port;
    char *host;        /* host name or literal address, without brackets */
    char *host_header; /* "host" or "host:port" as the Host header wants it */
    char *path_prefix; /* base URL path without a trailing slash, "" for none */
    char *ca_file;     /* extra CA bundle for this provider, NULL for the system store */
    bool insecure;     /* skip certificate and host-name verification (development only) */
    char *key;         /* pool key: "https://host:443" plus "|ca=<file>" and "|insecure" when
                        * set on an https origin; IPv6 hosts in brackets */
};

struct sy_header_kv {
    char *name;
    char *value;
};

struct sy_timeouts {
    uint32_t connect_ms;
    uint32_t first_byte_ms; /* request sent -> response head (time to first token on streams) */
    uint32_t idle_ms;       /* longest silence between two reads of a response */
    uint32_t total_ms;      /* whole exchange */
};

/** Limits of a deployment, for the whole node; 0 = no limit. */
struct sy_limits {
    uint32_t rpm;             /* requests per minute */
    uint32_t tpm;             /* tokens (prompt + completion) per minute */
    uint32_t max_concurrency; /* requests in flight at once */
};

/** Price of a deployment's tokens, in currency units per million tokens; 0 = not priced. */
struct sy_price {
    double input;  /* prompt tokens */
    double output; /* completion tokens */
};

/** One upstream model on one provider account. */
struct sy_deployment {
    char *name;
    char *provider; /* provider account name, for labels; "" when not given, never NULL */
    char *model;    /* upstream model id */
    enum sy_format format;
    char *base_url;
    struct sy_origin origin;
    enum sy_auth_style auth_style;
    char *auth_name;   /* header or query parameter name for SY_AUTH_HEADER / SY_AUTH_QUERY;
                        * "x-api-key" (anthropic) or "api-key" (azure) when auth is not given */
    char *api_key;     /* plaintext credential in memory only; zeroed when the table is freed;
                        * NULL for SY_AUTH_NONE or a disabled deployment without one */
    char *api_version; /* Azure api-version, Anthropic anthropic-version; NULL for default */
    struct sy_header_kv *headers; /* extra headers sent upstream */
    uint32_t n_headers;
    struct sy_timeouts timeouts; /* 0: the data plane's default */
    struct sy_limits limits;
    struct sy_price price;
    uint32_t weight;
    uint32_t slot; /* index in the shared-memory counters, assigned by the control plane */
    bool enabled;
};

/** A target of a public model: a deployment (by index into the table) and its weight. */
struct sy_target {
    uint32_t deployment;
    uint32_t weight;
};

/* ---- the governance policy of a public model ------------------------------------------------ */

enum sy_balance {
    SY_BALANCE_WEIGHTED = 0,     /* smooth weighted round robin (equal weights: round robin) */
    SY_BALANCE_ROUND_ROBIN,      /* strict rotation, weights ignored */
    SY_BALANCE_LEAST_CONNECTIONS, /* fewest requests in flight on the node (shared memory) */
    SY_BALANCE_LATENCY,          /* lowest recent time to first byte (EWMA, shared memory) */
    SY_BALANCE_COST,             /* cheapest healthy deployment by price */
    SY_BALANCE_MAX,
};

/* What may trigger a retry or a fallback: a bit set over the failure classes. */
#define SY_TRIGGER_CONNECT (1u << 0)        /* refused, reset, DNS, TLS: nothing was sent */
#define SY_TRIGGER_TIMEOUT (1u << 1)        /* connect, first-byte, idle or total timeout */
#define SY_TRIGGER_429 (1u << 2)            /* rate limited by the provider */
#define SY_TRIGGER_5XX (1u << 3)            /* any 5xx from the provider */
#define SY_TRIGGER_CONTEXT_LENGTH (1u << 4) /* a 400 that says the context is too long */
#define SY_TRIGGER_STATUS (1u << 5)         /* a status listed in the policy's statuses */
#define SY_TRIGGER_MALFORMED (1u << 6)      /* a 200 whose body is not valid JSON */
#define SY_TRIGGER_DEFAULT \
    (SY_TRIGGER_CONNECT | SY_TRIGGER_TIMEOUT | SY_TRIGGER_429 | SY_TRIGGER_5XX |                 \
     SY_TRIGGER_MALFORMED)

struct sy_retry_policy {
    uint32_t attempts;          /* total attempts on this model, first included (default 2) */
    uint32_t backoff_ms;        /* base of exponential backoff with full jitter (default 100) */
    uint32_t max_backoff_ms;    /* cap of one backoff (default 2000) */
    uint32_t retry_after_cap_ms; /* longest Retry-After honoured (default 5000) */
    uint32_t budget_percent;    /* retries at most this share of requests (default 20) */
    uint32_t triggers;          /* SY_TRIGGER_* (default SY_TRIGGER_DEFAULT) */
};

struct sy_circuit_policy {
    uint32_t window_ms;        /* sliding window of the error rate (default 30000) */
    uint32_t min_requests;     /* volume below which the rate is not judged (default 20) */
    uint32_t error_percent;    /* open at this error rate (default 50) */
    uint32_t consecutive;      /* or after this many failures in a row (default 5) */
    uint32_t cooldown_ms;      /* open this long before half-open (default 30000) */
    uint32_t half_open_probes; /* probes let through when half-open (default 1) */
};

enum sy_rule_op {
    SY_RULE_TOKENS_BELOW = 0, /* estimated prompt tokens < value */
    SY_RULE_TOKENS_ABOVE,     /* estimated prompt tokens > value */
    SY_RULE_MESSAGES_BELOW,
    SY_RULE_MESSAGES_ABOVE,
    SY_RULE_HAS_TOOLS,        /* value 1: must have tools; 0: must not */
    SY_RULE_HAS_IMAGES,
    SY_RULE_COMPLEXITY_BELOW, /* complexity score (x1000) < value */
    SY_RULE_COMPLEXITY_ABOVE,
    SY_RULE_HEADER,           /* request header <name> equals one of <values> */
    SY_RULE_TIER,             /* the client key's tier is one of <values> */
    SY_RULE_AGENT,
    SY_RULE_USER,
    SY_RULE_MAX,
};

/** One condition of a rule; all conditions of a rule must hold. */
struct sy_rule_cond {
    enum sy_rule_op op;
    int64_t value;
    char *name;    /* SY_RULE_HEADER: the header, lowercase */
    char **values; /* SY_RULE_HEADER/TIER/AGENT/USER: accepted values */
    uint32_t n_values;
};

/** A routing rule: conditions -> a target (another public model, or a set of deployments). */
struct sy_rule {
    char *name;
    struct sy_rule_cond *conds;
    uint32_t n_conds;
    int32_t model;           /* index of the target model, or -1 */
    struct sy_target *targets; /* or these deployments (when model is -1) */
    uint32_t n_targets;
};

struct sy_policy {
    enum sy_balance balance;
    struct sy_retry_policy retry;
    struct sy_circuit_policy circuit;
    uint32_t *fallbacks; /* indices of public models tried in order after this one */
    uint32_t n_fallbacks;
    uint32_t fallback_triggers; /* SY_TRIGGER_* (default SY_TRIGGER_DEFAULT) */
    uint16_t *statuses;         /* for SY_TRIGGER_STATUS */
    uint32_t n_statuses;
    uint32_t shed_percent;      /* a deployment above this share of its rpm/tpm sheds (80) */
    uint32_t max_timeout_ms;    /* highest per-request timeout override a header may ask */
    struct sy_rule *rules;
    uint32_t n_rules;
};

/** A public model name clients ask for. */
struct sy_model {
    char *name;
    struct sy_target *targets;
    uint32_t n_targets;
    uint32_t total_weight; /* sum of the weights of targets on enabled deployments; may be 0 */
    uint32_t slot;
    struct sy_policy policy; /* defaults when the table gives none */
};

/** A client key's limits on one public model, on top of the key's own. */
struct sy_key_limit {
    char *model;  /* public model name; need not exist (a model may be added later) */
    uint32_t rpm; /* requests per minute on that model; 0 = no limit */
    uint32_t tpm; /* tokens per minute on that model; 0 = no limit */
};

/** Length of a client key's hash: SHA-256. */
#define SY_KEY_HASH_LEN 32

/** A client key: what a caller presents in `Authorization: Bearer` or `x-api-key`. Only its
 * SHA-256 is in the table; the key itself is never stored. */
struct sy_key {
    uint8_t hash[SY_KEY_HASH_LEN]; /* SHA-256 of the full key */
    uint64_t id;                   /* the control plane's id, for usage rows and events */
    char *name;                    /* NULL when not given, like the four below */
    char *prefix;                  /* display form, "sk-sy-AbCd": safe to show and log */
    char *agent;
    char *user;
    char *tier;    /* for routing rules that pick by tier */
    char **models; /* public model names the key may use, sorted; NULL = every model */
    uint32_t n_models;
    int64_t expires_ms; /* wall-clock milliseconds; 0 = never */
    uint32_t slot;      /* index in the shared-memory counters */
    uint32_t rpm;       /* requests per minute; 0 = no limit */
    uint32_t tpm;       /* tokens per minute; 0 = no limit */
    struct sy_key_limit *model_limits; /* sorted by model name; NULL when none */
    uint32_t n_model_limits;
    uint32_t *budgets; /* indices into the table's budgets of those that cover the key */
    uint32_t n_budgets;
};

/** Calendar periods of a spend budget. */
enum sy_budget_period {
    SY_BUDGET_DAY = 0,
    SY_BUDGET_WEEK, /* Monday to Monday */
    SY_BUDGET_MONTH,
    SY_BUDGET_PERIOD_MAX,
};

/** A spend budget: the keys it covers list it (struct sy_key's budgets). The period's bounds
 * and spend are in shared memory (struct sy_shm_budget at <slot>), because they move without a
 * config change; the table holds what an operator set. */
struct sy_budget {
    char *name;
    uint64_t id;            /* the control plane's id: owner of the shared-memory slot */
    uint32_t slot;          /* index in the segment's budgets */
    uint64_t amount_micros; /* the hard limit, in millionths of the price currency (> 0) */
    uint32_t soft_percent;  /* an event when the spend crosses this share (1..100) */
    enum sy_budget_period period;
};

/* ---- guardrails ------------------------------------------------------------------------------ */

/** What a guardrail does when a detector matches. Ordered by severity: the strongest wins. */
enum sy_guard_action {
    SY_GUARD_LOG = 0, /* record an event, change nothing */
    SY_GUARD_REDACT,  /* mask the match in place ([EMAIL], 138****5678) */
    SY_GUARD_BLOCK,   /* refuse the request, or end the answer with an error */
    SY_GUARD_ACTION_MAX,
};

/** The built-in detectors; each is a bit in sy_guard_side.detectors. */
enum sy_guard_detector {
    SY_GUARD_EMAIL = 0,
    SY_GUARD_PHONE,     /* international numbers: +<country> and 7..14 digits */
    SY_GUARD_CN_MOBILE, /* mainland-China mobile numbers: 1[3-9] and 9 digits */
    SY_GUARD_CN_ID,     /* China resident ID numbers, 18 characters, GB 11643 checksum */
    SY_GUARD_BANK_CARD, /* 13..19 digits (spaces or dashes allowed), Luhn checksum */
    SY_GUARD_IPV4,
    SY_GUARD_IPV6,
    SY_GUARD_SECRET,  /* API keys (sk-..., AKIA..., ghp_...), private-key blocks */
    SY_GUARD_KEYWORD, /* the side's keyword list (not a bit of detectors) */
    SY_GUARD_REGEX,   /* the side's regular expressions (not a bit of detectors) */
    SY_GUARD_DETECTOR_MAX,
};

/** One side (input or output) of a guardrail. */
struct sy_guard_side {
    uint32_t detectors; /* bit (1u << enum sy_guard_detector) per built-in detector */
    uint8_t actions[SY_GUARD_DETECTOR_MAX]; /* enum sy_guard_action per detector, keywords and
                                             * regexes included */
    char **keywords;                        /* literal, matched case-insensitively (ASCII) */
    uint32_t n_keywords;
    char **regexes; /* vectorscan syntax, UTF-8 */
    uint32_t n_regexes;
};

enum sy_guard_tokens_mode {
    SY_GUARD_TOKENS_LOWER = 0, /* a max_tokens above the cap is lowered to it */
    SY_GUARD_TOKENS_REFUSE,    /* ...or refused with a 400 */
    SY_GUARD_TOKENS_MAX,
};

/** Limits of a guardrail; 0 = no limit. */
struct sy_guard_limits {
    uint32_t max_input_chars;  /* characters of message text in a request */
    uint32_t max_input_tokens; /* estimated prompt tokens of a request */
    uint32_t max_tokens_cap;   /* highest max_tokens (or max_completion_tokens) a request gets */
    enum sy_guard_tokens_mode max_tokens_mode;
    uint32_t max_output_chars; /* characters of answer text; the answer is cut, marked "length" */
};

/** A guardrail: checks on requests and answers, attached to public models and client keys. */
struct sy_guardrail {
    char *name;
    uint64_t id;
    bool all;      /* applies to every request */
    char **models; /* public model names it applies to (the name the client asked for) */
    uint32_t n_models;
    uint64_t *keys; /* client key ids it applies to */
    uint32_t n_keys;
    struct sy_guard_side input, output;
    struct sy_guard_limits limits;
};

/** A routing table. Immutable once decoded; shared by reference count between a worker and the
 * requests that began on it. */
struct sy_table {
    _Atomic uint32_t refs;
    uint64_t version;
    int64_t created_ms; /* wall-clock milliseconds at compile time */
    struct sy_deployment *deployments;
    uint32_t n_deployments;
    struct sy_model *models; /* sorted by name, for binary search */
    uint32_t n_models;
    bool require_keys;   /* model endpoints and /v1/models need a client key */
    struct sy_key *keys; /* sorted by hash, for binary search */
    uint32_t n_keys;
    uint32_t nodes; /* live nodes the limits above were divided by (their share); 0 or 1: one */
    struct sy_budget *budgets; /* decoded before the keys, which refer to them by name */
    uint32_t n_budgets;
    struct sy_guardrail *guardrails; /* in the control plane's order (by id) */
    uint32_t n_guardrails;
    /* State a plane derives from the table and frees with it (the data plane's compiled
     * guardrails); not part of the wire form. NULL when none. */
    void *ext;
    void (*ext_free)(void *ext);
};
