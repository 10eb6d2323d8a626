/* SPDX-License-Identifier: Apache-2.0 */
/* Credentials at rest and client keys: AES-256-GCM round trips, tamper and wrong-key detection,
 * the key id bound as additional data, rings with old keys, parsing of keys from the
 * environment and from a key file, hints that never show more than the last 4 characters, and
 * the format, uniqueness and hash of generated client keys. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "crypto.h"

#define HEX_A "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define HEX_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
/* base64 of the 32 bytes 0x00..0x1f, i.e. the same key as HEX_A */
#define B64_A "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

/* ---- helpers ------------------------------------------------------------------------------- */

static void ring_of(struct cp_crypto_ring *r, const char *spec)
{
    char *err = NULL;
    int rc = cp_crypto_ring_add(r, spec, "test", &err);
    if (rc != 0)
        fail_msg("cp_crypto_ring_add(%s): %s", spec, err);
}

/* Encrypt <plain> under <r>'s current key. */
static unsigned char *seal(const struct cp_crypto_ring *r, const char *plain, size_t *len,
                           const char **key_id)
{
    unsigned char *ct = NULL;
    char *err = NULL;
    assert_int_equal(cp_crypto_encrypt(r, plain, strlen(plain), &ct, len, key_id, &err), 0);
    assert_null(err);
    return ct;
}

/* Decrypt and return the error code; *<out> the plaintext on success, *<err> the message. */
static int open_ct(const struct cp_crypto_ring *r, const char *key_id, const unsigned char *ct,
                   size_t len, char **out, char **err)
{
    size_t plain_len = 0;
    *out = NULL;
    return cp_crypto_decrypt(r, key_id, ct, len, out, &plain_len, err);
}

/* ---- encryption ---------------------------------------------------------------------------- */

static void round_trip_gives_back_the_plaintext(void **state)
{
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
    ring_of(&r, "k1:" HEX_A);
    const char *secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    size_t len;
    const char *id;
    unsigned char *ct = seal(&r, secret, &len, &id);

    assert_string_equal(id, "k1");
    assert_int_equal(len, strlen(secret) + CP_CRYPTO_OVERHEAD);
    assert_int_equal(ct[0], CP_CRYPTO_FORMAT_V1);
    assert_null(memmem(ct, len, "sk-proj", 7)); /* not stored in clear */

    char *plain, *err = NULL;
    assert_int_equal(open_ct(&r, id, ct, len, &plain, &err), 0);
    assert_string_equal(plain, secret);
    cp_crypto_free_secret(plain, strlen(secret) + 1);
    free(ct);
    cp_crypto_ring_free(&r);
}

static void empty_plaintext_round_trips(void **state)
{
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
    ring_of(&r, HEX_A);
    size_t len;
    const char *id;
    unsigned char *ct = seal(&r, "", &len, &id);
    assert_int_equal(len, CP_CRYPTO_OVERHEAD);
    char *plain, *err = NULL;
    assert_int_equal(open_ct(&r, id, ct, len, &plain, &err), 0);
    assert_string_equal(plain, "");
    cp_crypto_free_secret(plain, 1);
    free(ct);
    cp_crypto_ring_free(&r);
}

static void two_encryptions_use_different_nonces(void **state)
{
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
    ring_of(&r, HEX_A);
    size_t l1, l2;
    const char *id;
    unsigned char *a = seal(&r, "same secret", &l1, &id);
    unsigned char *b = seal(&r, "same secret", &l2, &id);
    assert_int_equal(l1, l2);
    assert_memory_not_equal(a + 1, b + 1, CP_CRYPTO_NONCE_LEN);
    assert_memory_not_equal(a, b, l1);
    free(a);
    free(b);
    cp_crypto_ring_free(&r);
}

static void any_flipped_bit_is_detected(void **state)
{
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
    ring_of(&r, "k1:" HEX_A);
    size_t len;
    const char *id;
    unsigned char *ct = seal(&r, "sk-tamper-me-please", &len, &id);

    for (size_t i = 0; i < len; i++) {
        ct[i] ^= 0x01;
        char *plain, *err = NULL;
        int rc = open_ct(&r, "k1", ct, len, &plain, &err);
        assert_int_equal(rc, -EBADMSG);
        assert_null(plain);
        assert_non_null(err);
        if (i > 0) /* byte 0 is the version: a different message */
            assert_non_null(strstr(err, "tampered"));
        free(err);
        ct[i] ^= 0x01;
    }
    char *err = NULL, *plain;
    assert_int_equal(open_ct(&r, "k1", ct, len - 1, &plain, &err), -EBADMSG);
    free(err);
    err = NULL;
    assert_int_equal(open_ct(&r, "k1", ct, 5, &plain, &err), -EBADMSG);
    assert_non_null(strstr(err, "truncated"));
    free(err);
    free(ct);
    cp_crypto_ring_free(&r);
}

static void the_wrong_key_does_not_decrypt(void **state)
{
    struct cp_crypto_ring a = CP_CRYPTO_RING_INIT, b = CP_CRYPTO_RING_INIT;
    ring_of(&a, "prod:" HEX_A);
    ring_of(&b, "prod:" HEX_B); /* same id, other key material */
    size_t len;
    const char *id;
    unsigned char *ct = seal(&a, "sk-live-123456789012", &len, &id);

    char *plain, *err = NULL;
    assert_int_equal(open_ct(&b, "prod", ct, len, &plain, &err), -EBADMSG);
    assert_non_null(strstr(err, "wrong"));
    assert_non_null(strstr(err, "\"prod\""));
    free(err);
    free(ct);
    cp_crypto_ring_free(&a);
    cp_crypto_ring_free(&b);
}

static void an_unknown_key_id_is_named(void **state)
{
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
    ring_of(&r, "new:" HEX_A);
    size_t len;
    const char *id;
    unsigned char *ct = seal(&r, "sk-abc", &len, &id);
    char *plain, *err = NULL;
    assert_int_equal(open_ct(&r, "gone", ct, len, &plain, &err), -ENOKEY);
    assert_non_null(strstr(err, "\"gone\""));
    assert_non_null(strstr(err, "not in the key ring"));
    free(err);
    err = NULL;
    assert_int_equal(open_ct(&r, NULL, ct, len, &plain, &err), -ENOKEY);
    free(err);
    free(ct);
    cp_crypto_ring_free(&r);
}

/* The key id is authenticated: the same key material under another id refuses the ciphertext,
 * so swapping api_key_key_id in the database cannot go unnoticed. */
static void the_key_id_is_bound_as_additional_data(void **state)
{
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
    ring_of(&r, "one:" HEX_A);
    ring_of(&r, "two:" HEX_A);
    size_t len;
    const char *id;
    unsigned char *ct = seal(&r, "sk-bound-to-its-key-id", &len, &id);
    assert_string_equal(id, "one");

    char *plain, *err = NULL;
    assert_int_equal(open_ct(&r, "two", ct, len, &plain, &err), -EBADMSG);
    free(err);
    err = NULL;
    assert_int_equal(open_ct(&r, "one", ct, len, &plain, &err), 0);
    cp_crypto_free_secret(plain, strlen(plain) + 1);
    free(ct);
    cp_crypto_ring_free(&r);
}

static void old_keys_of_the_ring_still_decrypt(void **state)
{
    struct cp_crypto_ring old = CP_CRYPTO_RING_INIT, ring = CP_CRYPTO_RING_INIT;
    ring_of(&old, "2023:" HEX_A);
    size_t len;
    const char *id;
    unsigned char *ct = seal(&old, "sk-from-last-year", &len, &id);

    ring_of(&ring, "2024:" HEX_B);
    ring_of(&ring, "2023:" HEX_A);
    assert_string_equal(cp_crypto_current_id(&ring), "2024");
    char *plain, *err = NULL;
    assert_int_equal(open_ct(&ring, "2023", ct, len, &plain, &err), 0);
    assert_string_equal(plain, "sk-from-last-year");
    cp_crypto_free_secret(plain, strlen(plain) + 1);

    /* New ciphertexts go under the current key. */
    unsigned char *ct2 = seal(&ring, "sk-new", &len, &id);
    assert_string_equal(id, "2024");
    free(ct2);
    free(ct);
    cp_crypto_ring_free(&ring);
    cp_crypto_ring_free(&old);
}

static void an_empty_ring_refuses_to_encrypt(void **state)
{
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
    unsigned char *ct;
    size_t len;
    const char *id;
    char *err = NULL;
    assert_int_equal(cp_crypto_encrypt(&r, "x", 1, &ct, &len, &id, &err), -ENOKEY);
    assert_non_null(strstr(err, "SWITCHYARD_MASTER_KEY"));
    assert_null(cp_crypto_current_id(&r));
    free(err);
}

/* ---- parsing keys --------------------------------------------------------------------------- */

static void keys_parse_as_hex_or_base64_with_derived_or_given_ids(void **state)
{
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT, s = CP_CRYPTO_RING_INIT;
    ring_of(&r, HEX_A);
    ring_of(&s, B64_A);
    /* The same key either way, hence the same derived id: 8 hex characters. */
    assert_memory_equal(r.keys[0].key, s.keys[0].key, CP_CRYPTO_KEY_LEN);
    assert_string_equal(r.keys[0].id, s.keys[0].id);
    assert_int_equal(strlen(r.keys[0].id), 8);
    unsigned char h[CP_CRYPTO_HASH_LEN];
    cp_crypto_sha256(r.keys[0].key, CP_CRYPTO_KEY_LEN, h);
    char want[9];
    snprintf(want, sizeof(want), "%02x%02x%02x%02x", h[0], h[1], h[2], h[3]);
    assert_string_equal(r.keys[0].id, want);
    cp_crypto_ring_free(&s);

    ring_of(&r, "my-key.2024_a:" B64_A);
    assert_int_equal(r.n, 2);
    assert_string_equal(r.keys[1].id, "my-key.2024_a");
    cp_crypto_ring_free(&r);
}

static void malformed_keys_are_refused_without_echoing_them(void **state)
{
    static const char *bad[] = {
        "",
        "abc",
        HEX_A "00",                                                         /* too long */
        "g00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", /* not hex */
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==",                     /* 31 bytes */
        "bad id:" HEX_A,
        ":" HEX_A,
        "k1:",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
        char *err = NULL;
        assert_int_equal(cp_crypto_ring_add(&r, bad[i], "SWITCHYARD_MASTER_KEY", &err), -EINVAL);
        assert_non_null(strstr(err, "SWITCHYARD_MASTER_KEY"));
        if (strlen(bad[i]) > 8)
            assert_null(strstr(err, bad[i] + strlen(bad[i]) - 8));
        assert_int_equal(r.n, 0);
        free(err);
    }
}

static void duplicate_key_ids_are_refused(void **state)
{
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
    ring_of(&r, "a:" HEX_A);
    char *err = NULL;
    assert_int_equal(cp_crypto_ring_add(&r, "a:" HEX_B, "keys line 2", &err), -EEXIST);
    assert_non_null(strstr(err, "keys line 2"));
    free(err);
    cp_crypto_ring_free(&r);
}

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/sy-test-keys-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd != -1);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void the_key_file_gives_current_and_old_keys(void **state)
{
    char *path = write_tmp("# rotated 2024-05\n"
                           "new:" HEX_B "\r\n"
                           "\n"
                           "  old:" B64_A "  \n");
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
    char *err = NULL;
    unsetenv("SWITCHYARD_MASTER_KEY");
    setenv("SWITCHYARD_MASTER_KEY_FILE", path, 1);
    assert_int_equal(cp_crypto_ring_from_env(&r, &err), 0);
    assert_int_equal(r.n, 2);
    assert_string_equal(cp_crypto_current_id(&r), "new");
    assert_non_null(cp_crypto_find(&r, "old"));
    cp_crypto_ring_free(&r);
    unlink(path);
    free(path);

    /* A line without an id names the file and the line. */
    path = write_tmp("new:" HEX_B "\n" HEX_A "\n");
    setenv("SWITCHYARD_MASTER_KEY_FILE", path, 1);
    assert_int_equal(cp_crypto_ring_from_env(&r, &err), -EINVAL);
    assert_non_null(strstr(err, "line 2"));
    free(err);
    err = NULL;
    cp_crypto_ring_free(&r);
    unlink(path);
    free(path);

    path = write_tmp("# nothing\n\n");
    setenv("SWITCHYARD_MASTER_KEY_FILE", path, 1);
    assert_int_equal(cp_crypto_ring_from_env(&r, &err), -EINVAL);
    assert_non_null(strstr(err, "no key"));
    free(err);
    err = NULL;
    unlink(path);
    free(path);

    setenv("SWITCHYARD_MASTER_KEY_FILE", "/nonexistent/keys", 1);
    assert_int_equal(cp_crypto_ring_from_env(&r, &err), -EIO);
    assert_non_null(strstr(err, "/nonexistent/keys"));
    free(err);
    unsetenv("SWITCHYARD_MASTER_KEY_FILE");
}

static void the_environment_gives_one_key_or_says_what_to_set(void **state)
{
    struct cp_crypto_ring r = CP_CRYPTO_RING_INIT;
    char *err = NULL;
    unsetenv("SWITCHYARD_MASTER_KEY_FILE");
    unsetenv("SWITCHYARD_MASTER_KEY");
    assert_int_equal(cp_crypto_ring_from_env(&r, &err), -ENOENT);
    assert_non_null(strstr(err, "SWITCHYARD_MASTER_KEY"));
    free(err);
    err = NULL;

    setenv("SWITCHYARD_MASTER_KEY", "prod:" HEX_A, 1);
    assert_int_equal(cp_crypto_ring_from_env(&r, &err), 0);
    assert_string_equal(cp_crypto_current_id(&r), "prod");
    cp_crypto_ring_free(&r);

    setenv("SWITCHYARD_MASTER_KEY_FILE", "/tmp/whatever", 1);
    assert_int_equal(cp_crypto_ring_from_env(&r, &err), -EINVAL);
    assert_non_null(strstr(err, "only one"));
    free(err);
    unsetenv("SWITCHYARD_MASTER_KEY");
    unsetenv("SWITCHYARD_MASTER_KEY_FILE");
}

/* ---- hints ------------------------------------------------------------------------------------
 */

static void check_hint(const char *secret, const char *want)
{
    char *h = cp_crypto_hint(secret);
    assert_non_null(h);
    if (strcmp(h, want) != 0)
        fail_msg("hint(\"%s\") = \"%s\", want \"%s\"", secret, h, want);
    free(h);
}

static void hints_show_at_most_the_last_four_characters(void **state)
{
    check_hint("sk-abcdefghijklmnopqrstuvwxyz", "sk-\xe2\x80\xa6wxyz");
    check_hint("sk-ant-api03-abcdefghijklmnop", "sk-ant-\xe2\x80\xa6mnop");
    check_hint("AIzaSyA1234567890abcdefgh", "\xe2\x80\xa6"
                                            "efgh");
    check_hint("0123456789abcdef", "\xe2\x80\xa6"
                                   "cdef");
    /* Short secrets show nothing at all. */
    check_hint("", "\xe2\x80\xa6");
    check_hint("sk-1234", "\xe2\x80\xa6");
    check_hint("abcdefghijk", "\xe2\x80\xa6");
    /* A prefix that would leave fewer than 8 characters hidden is not shown. */
    check_hint("sk-abcdefghij", "\xe2\x80\xa6ghij");
}

/* ---- client keys ---------------------------------------------------------------------------- */

static void client_keys_have_the_documented_format(void **state)
{
    char key[CP_CRYPTO_CLIENT_KEY_LEN + 1], prefix[CP_CRYPTO_CLIENT_PREFIX_LEN + 1];
    unsigned char hash[CP_CRYPTO_HASH_LEN], want[CP_CRYPTO_HASH_LEN];

    assert_int_equal(cp_crypto_client_key(key, hash, prefix), 0);
    assert_int_equal(strlen(key), 46);
    assert_memory_equal(key, "sk-sy-", 6);
    for (size_t i = 6; i < 46; i++)
        assert_true((key[i] >= '0' && key[i] <= '9') || (key[i] >= 'a' && key[i] <= 'z') ||
                    (key[i] >= 'A' && key[i] <= 'Z'));
    assert_int_equal(strlen(prefix), 10);
    assert_memory_equal(prefix, key, 10);
    cp_crypto_sha256(key, strlen(key), want);
    assert_memory_equal(hash, want, CP_CRYPTO_HASH_LEN);
}

static void client_keys_are_unique_and_use_the_whole_alphabet(void **state)
{
    enum { N = 2000 };
    static char keys[N][CP_CRYPTO_CLIENT_KEY_LEN + 1];
    bool seen[256] = {false};
    char prefix[CP_CRYPTO_CLIENT_PREFIX_LEN + 1];
    unsigned char hash[CP_CRYPTO_HASH_LEN];

    for (int i = 0; i < N; i++) {
        assert_int_equal(cp_crypto_client_key(keys[i], hash, prefix), 0);
        for (size_t j = 6; j < CP_CRYPTO_CLIENT_KEY_LEN; j++)
            seen[(unsigned char)keys[i][j]] = true;
    }
    int distinct = 0;
    for (int c = 0; c < 256; c++)
        distinct += seen[c];
    assert_int_equal(distinct, 62);
    qsort(keys, N, sizeof(keys[0]), (int (*)(const void *, const void *))strcmp);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(keys[i - 1], keys[i]);
}

static void sha256_matches_the_standard_vector(void **state)
{
    unsigned char h[CP_CRYPTO_HASH_LEN];
    static const unsigned char abc[] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
        0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
        0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
    };
    cp_crypto_sha256("abc", 3, h);
    assert_memory_equal(h, abc, sizeof(abc));
}

static void equal_compares_all_bytes(void **state)
{
    unsigned char a[32] = {0}, b[32] = {0};
    assert_true(cp_crypto_equal(a, b, sizeof(a)));
    b[31] = 1;
    assert_false(cp_crypto_equal(a, b, sizeof(a)));
    b[31] = 0;
    b[0] = 1;
    assert_false(cp_crypto_equal(a, b, sizeof(a)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip_gives_back_the_plaintext),
        cmocka_unit_test(empty_plaintext_round_trips),
        cmocka_unit_test(two_encryptions_use_different_nonces),
        cmocka_unit_test(any_flipped_bit_is_detected),
        cmocka_unit_test(the_wrong_key_does_not_decrypt),
        cmocka_unit_test(an_unknown_key_id_is_named),
        cmocka_unit_test(the_key_id_is_bound_as_additional_data),
        cmocka_unit_test(old_keys_of_the_ring_still_decrypt),
        cmocka_unit_test(an_empty_ring_refuses_to_encrypt),
        cmocka_unit_test(keys_parse_as_hex_or_base64_with_derived_or_given_ids),
        cmocka_unit_test(malformed_keys_are_refused_without_echoing_them),
        cmocka_unit_test(duplicate_key_ids_are_refused),
        cmocka_unit_test(the_key_file_gives_current_and_old_keys),
        cmocka_unit_test(the_environment_gives_one_key_or_says_what_to_set),
        cmocka_unit_test(hints_show_at_most_the_last_four_characters),
        cmocka_unit_test(client_keys_have_the_documented_format),
        cmocka_unit_test(client_keys_are_unique_and_use_the_whole_alphabet),
        cmocka_unit_test(sha256_matches_the_standard_vector),
        cmocka_unit_test(equal_compares_all_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
