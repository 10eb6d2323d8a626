/* SPDX-License-Identifier: Apache-2.0 */
/** The built-in catalog of model providers: base URL, format, auth style and well-known models
 * with list prices, so that adding a provider is choosing an entry and pasting a key. */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct cp_catalog_model {
    const char *id;      /* the provider's model id */
    double input_price;  /* list price per million input tokens, in price_currency */
    double output_price; /* per million output tokens */
    uint32_t context;    /* context window in tokens, 0 if unknown */
};

struct cp_catalog_entry {
    const char *id;   /* "openai", "anthropic", "dashscope", ... (the provider's `kind`) */
    const char *name; /* "OpenAI" */
    const char *base_url;
    const char *format;         /* "openai" | "anthropic" | "azure" */
    const char *auth_style;     /* "bearer" | "header" | "query" | "none" */
    const char *auth_name;      /* header or query parameter name, NULL for bearer/none */
    const char *api_version;    /* NULL unless the format needs one */
    const char *price_currency; /* "USD", "CNY" */
    const char *notes;          /* one line for operators (e.g. "replace <resource>") */
    const struct cp_catalog_model *models;
    size_t n_models;
};

/** The date of the list prices below ("2025-10"): prices change, and a deployment's own price
 * is what usage is billed at; the catalog only fills it in. */
extern const char cp_catalog_date[];
extern const struct cp_catalog_entry cp_catalog[];
extern const size_t cp_catalog_len;

/** The entry with id <id>, or NULL. */
const struct cp_catalog_entry *cp_catalog_find(const char *id);
