/* SPDX-License-Identifier: Apache-2.0 */
/* The routing-table decoders (proto/src/table.c, table_json.c): what a data plane reads from
 * the control plane's socket or from its snapshot and table files. A table that decodes must
 * encode and decode again to the same bytes (sy_table_encode's promise), and every lookup on
 * it must be safe; a table that does not must come with a message.
 *
 * Input: byte 0 selects the decoder: 'j' the JSON form (sy_table_from_json), 'p' a model
 * policy in JSON (sy_policy_check_json), anything else msgpack (sy_table_decode); the rest is
 * the document. */
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "sy/table.h"

static void exercise(const struct sy_table *t)
{
    for (uint32_t i = 0; i < t->n_models; i++) {
        const char *name = t->models[i].name;
        const struct sy_model *m = sy_table_find_model(t, name, strlen(name));
        FUZZ_CHECK(m != NULL && strcmp(m->name, name) == 0, "each model is found by its name");
        for (uint32_t k = 0; k < t->n_keys; k++)
            (void)sy_key_allows_model(&t->keys[k], name, strlen(name));
    }
    (void)sy_table_find_model(t, "", 0);
    for (uint32_t k = 0; k < t->n_keys; k++) {
        const struct sy_key *key = sy_table_find_key(t, t->keys[k].hash);
        FUZZ_CHECK(key != NULL && memcmp(key->hash, t->keys[k].hash, SY_KEY_HASH_LEN) == 0,
                   "each key is found by its hash");
    }
}

static void roundtrip(struct sy_table *t)
{
    exercise(t);
    struct sy_buf a = SY_BUF_INIT, b = SY_BUF_INIT;
    FUZZ_CHECK(sy_table_encode(t, &a) == 0, "encode succeeds");
    struct sy_table *t2 = NULL;
    char *err = NULL;
    int rc = sy_table_decode(a.data, a.len, &t2, &err);
    if (rc != 0)
        fprintf(stderr, "re-decode failed: %s\n", err ? err : "?");
    FUZZ_CHECK(rc == 0, "an encoded table decodes");
    FUZZ_CHECK(sy_table_encode(t2, &b) == 0, "encode succeeds");
    FUZZ_CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0,
               "encode(decode(encode(t))) == encode(t)");
    sy_table_unref(t2);
    sy_buf_free(&a);
    sy_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *doc = fuzz_dup(data + 1, size - 1);
    size_t len = size - 1;
    struct sy_table *t = NULL;
    char *err = NULL, *param = NULL;
    int rc;

    switch (data[0]) {
    case 'j':
        rc = sy_table_from_json(doc, len, &t, &err);
        break;
    case 'p':
        rc = sy_policy_check_json(doc, len, &err, &param);
        FUZZ_CHECK(rc == 0 || (err != NULL && err[0]), "a refused policy has a message");
        free(err);
        free(param);
        free(doc);
        return 0;
    default:
        rc = sy_table_decode(doc, len, &t, &err);
        break;
    }
    if (rc == 0) {
        FUZZ_CHECK(t != NULL && err == NULL, "success gives a table and no message");
        roundtrip(t);
        sy_table_unref(t);
    } else {
        FUZZ_CHECK(rc == -EINVAL || rc == -ENOMEM, "failure is -EINVAL or -ENOMEM");
        FUZZ_CHECK(t == NULL, "failure gives no table");
        FUZZ_CHECK(err != NULL && err[0], "failure has a message");
        free(err);
    }
    free(doc);
    return 0;
}
