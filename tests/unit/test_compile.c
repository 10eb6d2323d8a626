/* SPDX-License-Identifier: Apache-2.0 */
/* The compiler of routing tables, from the JSON document the config query returns: every field
 * reaches the table, credentials are decrypted, a row with a problem is compiled disabled or
 * left out without stopping the table, and a table the decoder would refuse is refused with a
 * message naming the row. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "compile.h"
#include "sy/buf.h"
#include "sy/table.h"

#define KEY_HEX "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define HASH_A  "aa00000000000000000000000000000000000000000000000000000000000001"

/* ---- helpers --------------------------------------------------------------------------------- */

static struct cp_crypto_ring ring;

static int setup(void **state)
{
    char *err = NULL;
    if (cp_crypto_ring_add(&ring, "k1:" KEY_HEX, "test", &err) != 0)
        fail_msg("ring: %s", err);
    return 0;
}

static int teardown(void **state)
{
    cp_crypto_ring_free(&ring);
    return 0;
}

/* The hex of <plain> sealed under the ring's key (caller frees). */
static char *sealed_hex(const char *plain)
{
    unsigned char *ct = NULL;
    size_t n = 0;
    const char *id = NULL;
    assert_int_equal(cp_crypto_encrypt(&ring, plain, strlen(plain), &ct, &n, &id, NULL), 0);
    char *hex = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++)
        sprintf(hex + 2 * i, "%02x", ct[i]);
    free(ct);
    return hex;
}

/* A document with one provider "p" (credential sealed from <plain>, or <key_enc> as given)
 * and the deployments, models and keys given as JSON array texts. */
static char *document(const char *key_enc, const char *deployments, const char *models,
                      const char *keys)
{
    struct sy_buf b = SY_BUF_INIT;
    sy_buf_printf(&b,
                  "{\"version\": 42,"
                  " \"providers\": [{\"id\": 1, \"name\": \"p\", \"base_url\": "
                  "\"https://api.example.com/v1\", \"format\": \"openai\", \"auth_style\": "
                  "\"bearer\", \"auth_name\": null, \"headers\": {\"X-Org\": \"o-1\"}, "
                  "\"key_enc\": %s%s%s, \"key_id\": \"k1\", \"api_version\": null, "
                  "\"ca_file\": null, \"insecure\": false}],"
                  " \"deployments\": %s, \"models\": %s, \"keys\": %s}",
                  key_enc ? "\"" : "", key_enc ? key_enc : "null", key_enc ? "\"" : "", deployments,
                  models, keys);
    return sy_buf_steal(&b, NULL);
}

#define DEP(id, name, enabled)                                                                     \
    "{\"id\": " #id ", \"name\": \"" name "\", \"provider_id\": 1, \"model\": \"gpt-4o\", "        \
    "\"weight\": 2, \"rpm\": 60, \"tpm\": 1000, \"max_concurrency\": 4, \"connect_ms\": 1500, "    \
    "\"first_byte_ms\": null, \"idle_ms\": null, \"total_ms\": 30000, \"input_price\": 2.5, "      \
    "\"output_price\": 10.000000, \"enabled\": " #enabled ", \"slot\": " #id "}"

static struct sy_table *compile_ok(const char *doc, struct cp_compiled *out)
{
    char *err = NULL;
    int rc = cp__compile_document(doc, strlen(doc), &ring, 1234, out, &err);
    if (rc != 0)
        fail_msg("compile: %s", err);
    struct sy_table *t = NULL;
    assert_int_equal(sy_table_decode(out->bytes, out->len, &t, &err), 0);
    return t;
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void every_field_reaches_the_table(void **state)
{
    char *hex = sealed_hex("sk-secret-1");
    char *doc = document(hex, "[" DEP(10, "d1", true) "]",
                         "[{\"name\": \"m\", \"slot\": 3, \"targets\": [[10, 5]]}]",
                         "[{\"id\": 7, \"name\": \"ci\", \"hash\": \"" HASH_A "\", \"prefix\": "
                         "\"sk-sy-AbCd\", \"agent\": \"bot\", \"user\": \"ann\", \"tier\": "
                         "\"gold\", \"models\": [\"m\", \"\"], \"expires_ms\": 1700000000000, "
                         "\"slot\": 2, \"rpm\": 5, \"tpm\": null}]");
    struct cp_compiled c;
    struct sy_table *t = compile_ok(doc, &c);
    assert_int_equal(c.version, 42);
    assert_int_equal(c.n_problems, 0);
    assert_int_equal(t->version, 42);
    assert_int_equal(t->created_ms, 1234);
    assert_true(t->require_keys);
    assert_int_equal(t->n_deployments, 1);
    const struct sy_deployment *d = &t->deployments[0];
    assert_string_equal(d->name, "d1");
    assert_string_equal(d->provider, "p");
    assert_string_equal(d->api_key, "sk-secret-1");
    assert_int_equal(d->auth_style, SY_AUTH_BEARER);
    assert_int_equal(d->n_headers, 1);
    assert_string_equal(d->headers[0].name, "X-Org");
    assert_int_equal(d->timeouts.connect_ms, 1500);
    assert_int_equal(d->timeouts.first_byte_ms, 0);
    assert_int_equal(d->timeouts.total_ms, 30000);
    assert_int_equal(d->limits.rpm, 60);
    assert_int_equal(d->limits.tpm, 1000);
    assert_int_equal(d->limits.max_concurrency, 4);
    assert_true(d->price.input == 2.5 && d->price.output == 10.0);
    assert_int_equal(d->weight, 2);
    assert_int_equal(d->slot, 10);
    assert_true(d->enabled);
    const struct sy_model *m = sy_table_find_model(t, "m", 1);
    assert_non_null(m);
    assert_int_equal(m->slot, 3);
    assert_int_equal(m->n_targets, 1);
    assert_int_equal(m->targets[0].weight, 5);
    assert_int_equal(t->n_keys, 1);
    const struct sy_key *k = &t->keys[0];
    assert_int_equal(k->id, 7);
    assert_int_equal(k->hash[0], 0xaa);
    assert_int_equal(k->hash[31], 0x01);
    assert_string_equal(k->tier, "gold");
    assert_string_equal(k->user, "ann");
    assert_int_equal(k->n_models, 1); /* the empty name is dropped */
    assert_int_equal(k->expires_ms, 1700000000000LL);
    assert_int_equal(k->rpm, 5);
    assert_int_equal(k->tpm, 0);
    sy_table_unref(t);
    cp__compiled_free(&c);
    free(doc);
    free(hex);
}

static void a_credential_that_does_not_decrypt_disables_its_deployments(void **state)
{
    char *hex = sealed_hex("sk-secret-1");
    hex[40] = hex[40] == '0' ? '1' : '0'; /* tampered */
    char *doc = document(hex, "[" DEP(1, "d1", true) "," DEP(2, "d2", false) "]",
                         "[{\"name\": \"m\", \"slot\": 0, \"targets\": [[1, 1], [2, 1]]}]", "[]");
    struct cp_compiled c;
    struct sy_table *t = compile_ok(doc, &c);
    assert_int_equal(c.n_problems, 1);
    assert_false(t->deployments[0].enabled);
    assert_null(t->deployments[0].api_key);
    assert_int_equal(sy_table_find_model(t, "m", 1)->total_weight, 0);
    sy_table_unref(t);
    cp__compiled_free(&c);
    free(doc);
    free(hex);
}

static void an_enabled_deployment_without_credential_is_compiled_disabled(void **state)
{
    char *doc = document(NULL, "[" DEP(1, "d1", true) "]", "[]", "[]");
    struct cp_compiled c;
    struct sy_table *t = compile_ok(doc, &c);
    assert_int_equal(c.n_problems, 1);
    assert_false(t->deployments[0].enabled);
    sy_table_unref(t);
    cp__compiled_free(&c);
    free(doc);
}

static void models_without_usable_targets_are_left_out(void **state)
{
    char *hex = sealed_hex("sk-1");
    char *doc = document(hex, "[" DEP(1, "d1", true) "]",
                         "[{\"name\": \"none\", \"slot\": 0, \"targets\": []},"
                         " {\"name\": \"zero\", \"slot\": 1, \"targets\": [[1, 0]]},"
                         " {\"name\": \"ok\", \"slot\": 2, \"targets\": [[1, 1]]}]",
                         "[]");
    struct cp_compiled c;
    struct sy_table *t = compile_ok(doc, &c);
    assert_int_equal(c.n_problems, 2);
    assert_int_equal(t->n_models, 1);
    assert_non_null(sy_table_find_model(t, "ok", 2));
    sy_table_unref(t);
    cp__compiled_free(&c);
    free(doc);
    free(hex);
}

static void a_table_the_decoder_refuses_is_refused_naming_the_row(void **state)
{
    char *hex = sealed_hex("sk-1");
    /* two deployments on one slot: only the decoder knows */
    char *doc = document(hex, "[" DEP(1, "d1", true) ", " DEP(1, "d2", true) "]", "[]", "[]");
    struct cp_compiled c;
    char *err = NULL;
    assert_int_equal(cp__compile_document(doc, strlen(doc), &ring, 0, &c, &err), -EINVAL);
    assert_non_null(err);
    assert_non_null(strstr(err, "deployments[1]"));
    assert_non_null(strstr(err, "(deployment \"d2\")"));
    assert_null(c.bytes);
    free(err);
    free(doc);
    free(hex);
}

static void a_malformed_document_is_refused(void **state)
{
    static const char *const docs[] = {"", "[]", "{\"providers\": []}",
                                       "{\"version\": 1, \"providers\": {}}"};
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        struct cp_compiled c;
        char *err = NULL;
        assert_int_equal(cp__compile_document(docs[i], strlen(docs[i]), &ring, 0, &c, &err),
                         -EINVAL);
        assert_non_null(err);
        assert_non_null(strstr(err, "config document"));
        free(err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_field_reaches_the_table),
        cmocka_unit_test(a_credential_that_does_not_decrypt_disables_its_deployments),
        cmocka_unit_test(an_enabled_deployment_without_credential_is_compiled_disabled),
        cmocka_unit_test(models_without_usable_targets_are_left_out),
        cmocka_unit_test(a_table_the_decoder_refuses_is_refused_naming_the_row),
        cmocka_unit_test(a_malformed_document_is_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
