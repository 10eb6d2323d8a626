/* SPDX-License-Identifier: Apache-2.0 */
/* The governance policy of a public model (policy.h): one validator, the routing table's own
 * (sy_policy_check_json), so that the admin API accepts exactly what the table decodes and says
 * so in the table's words. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "sy/buf.h"

int cp_policy_check(json_t *policy, char **err, char **param)
{
    *err = NULL;
    *param = NULL;
    char *text = json_dumps(policy, JSON_COMPACT | JSON_ENCODE_ANY);
    if (text == NULL) {
        *err = strdup("policy: cannot be encoded");
        *param = strdup("policy");
        return -ENOMEM;
    }
    int rc = sy_policy_check_json(text, strlen(text), err, param);
    free(text);
    return rc;
}

static bool given(const char *s)
{
    return s != NULL && *s != '\0';
}

int cp_policy_apply(struct sy_table *t, uint32_t model, const char *policy_json,
                    const char *fallbacks_json, char **err)
{
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_puts(&b, "{\"policy\":");
    sy_buf_puts(&b, given(policy_json) ? policy_json : "null");
    sy_buf_puts(&b, ",\"fallbacks\":");
    sy_buf_puts(&b, given(fallbacks_json) ? fallbacks_json : "null");
    sy_buf_puts(&b, "}");
    int rc = sy_model_policy_from_json(t, model, b.data, b.len, err);
    sy_buf_free(&b);
    return rc;
}
