/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's catalog resource. */
#include "api.h"

const struct cp_resource cp_api_catalog = {
    .name = "catalog",
    .kind = "catalog entry",
};
