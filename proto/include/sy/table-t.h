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

/** A public model name clients ask for. */
struct sy_model {
    char *name;
    struct sy_target *targets;
    uint32_t n_targets;
    uint32_t total_weight; /* sum of the weights of targets on enabled deployments; may be 0 */
    uint32_t slot;
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
};
