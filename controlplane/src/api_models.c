/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's models resource. */
#include "api.h"

const struct cp_resource cp_api_models = {
    .name = "models",
    .kind = "model",
};
