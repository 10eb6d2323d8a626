/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's status resource. */
#include "api.h"

const struct cp_resource cp_api_status = {
    .name = "status",
    .kind = "status",
};
