/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's catalog: the built-in providers (catalog.c), read-only.
 *
 *     GET /admin/v1/catalog[?q=]   {"object":"list","data":[entries...],...}
 *     GET /admin/v1/catalog/<id>   {"id", "object": "catalog_entry", "name", "base_url",
 *                                   "format", "auth_style", "auth_name", "api_version",
 *                                   "price_currency", "prices_as_of", "notes",
 *                                   "models": [{"id", "input_price", "output_price",
 *                                               "context_window"}]}
 *
 * ?q= matches the id, the name or any model id, case-insensitively. The catalog is a dozen
 * entries: a list is one page. */

#include <string.h>

#include "api.h"
#include "catalog.h"

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *entry_doc(const struct cp_catalog_entry *e)
{
    json_t *models = json_array();
    for (size_t i = 0; i < e->n_models; i++) {
        const struct cp_catalog_model *m = &e->models[i];
        json_array_append_new(
            models, json_pack("{s:s,s:f,s:f,s:o}", "id", m->id, "input_price", m->input_price,
                              "output_price", m->output_price, "context_window",
                              m->context ? json_integer(m->context) : json_null()));
    }
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:s,s:s,s:o,s:o}", "id", e->id, "object",
                     "catalog_entry", "name", e->name, "base_url", e->base_url, "format", e->format,
                     "auth_style", e->auth_style, "auth_name", str_or_null(e->auth_name),
                     "api_version", str_or_null(e->api_version), "price_currency",
                     e->price_currency, "prices_as_of", cp_catalog_date, "notes",
                     str_or_null(e->notes), "models", models);
}

static bool matches(const struct cp_catalog_entry *e, const char *q)
{
    if (!q || strcasestr(e->id, q) || strcasestr(e->name, q))
        return true;
    for (size_t i = 0; i < e->n_models; i++)
        if (strcasestr(e->models[i].id, q))
            return true;
    return false;
}

/* Prices are reals: dump them at 12 digits, so 0.15 reads 0.15 and not 0.14999999999999999. */
static void answer(struct cp_call *c, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(12));
    json_decref(doc);
    cp_call_json_text(c, 200, text, -1);
    free(text);
}

static void list(struct cp_call *c)
{
    const char *q = cp_call_param(c, "q");
    json_t *data = json_array();
    for (size_t i = 0; i < cp_catalog_len; i++)
        if (matches(&cp_catalog[i], q))
            json_array_append_new(data, entry_doc(&cp_catalog[i]));
    answer(c, json_pack("{s:s,s:o,s:b,s:n}", "object", "list", "data", data, "has_more", 0,
                        "next_cursor"));
}

static void get(struct cp_call *c)
{
    const struct cp_catalog_entry *e = cp_catalog_find(c->name);
    if (!e) {
        cp_call_error(c, 404, "not_found_error", "not_found", NULL,
                      "catalog entry \"%s\" not found (GET /admin/v1/catalog lists them)", c->name);
        return;
    }
    answer(c, entry_doc(e));
}

const struct cp_resource cp_api_catalog = {
    .name = "catalog",
    .kind = "catalog entry",
    .list = list,
    .get = get,
};
