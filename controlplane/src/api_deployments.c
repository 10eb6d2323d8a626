/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's deployments resource. */
#include "api.h"

const struct cp_resource cp_api_deployments = {
    .name = "deployments",
    .kind = "deployment",
};
