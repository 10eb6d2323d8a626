/* SPDX-License-Identifier: Apache-2.0 */
/** The built-in provider catalog. */
#include <string.h>

#include "catalog.h"

const struct cp_catalog_entry cp_catalog[] = {
    {.id = "openai", .name = "OpenAI", .base_url = "https://api.openai.com/v1", .format = "openai",
     .auth_style = "bearer", .price_currency = "USD"},
};
const size_t cp_catalog_len = sizeof(cp_catalog) / sizeof(cp_catalog[0]);

const struct cp_catalog_entry *cp_catalog_find(const char *id)
{
    for (size_t i = 0; i < cp_catalog_len; i++)
        if (strcmp(cp_catalog[i].id, id) == 0)
            return &cp_catalog[i];
    return NULL;
}
