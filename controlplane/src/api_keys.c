/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's keys resource. */
#include "api.h"

const struct cp_resource cp_api_keys = {
    .name = "keys",
    .kind = "key",
};
