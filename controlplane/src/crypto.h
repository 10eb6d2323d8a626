/* SPDX-License-Identifier: Apache-2.0 */
/** Secrets of the control plane: provider credentials encrypted at rest with AES-256-GCM under a
 * ring of master keys, client API keys generated at random and stored only as SHA-256 hashes.
 *
 * A stored credential is two columns: the ciphertext (api_key_enc) and the id of the master key
 * that sealed it (api_key_key_id). The ciphertext is
 *
 *     version (1 byte, CP_CRYPTO_FORMAT_V1) | nonce (12 random bytes) | ciphertext | tag (16)
 *
 * and the additional authenticated data is the version byte followed by the key id, so a
 * ciphertext moved to another key id, or a key id edited in the database, fails to decrypt
 * instead of decrypting with the wrong key.
 *
 * The ring comes from the environment: SWITCHYARD_MASTER_KEY holds one key, either bare (64 hex
 * characters or base64 of 32 bytes; its id is then the first 8 hex characters of the SHA-256 of
 * the key) or as `id:key`; SWITCHYARD_MASTER_KEY_FILE names a file of `id:key` lines, the first
 * being the current key and the others old keys that can still decrypt. Rotation: put a new
 * first line, restart, run `switchyard-controlplane rotate-key`, then drop the old lines. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define CP_CRYPTO_KEY_LEN    32
#define CP_CRYPTO_KEY_ID_MAX 64 /* an id is 1..64 of [A-Za-z0-9._-] */
#define CP_CRYPTO_FORMAT_V1  1
#define CP_CRYPTO_NONCE_LEN  12
#define CP_CRYPTO_TAG_LEN    16
/** Bytes a ciphertext adds to its plaintext. */
#define CP_CRYPTO_OVERHEAD (1 + CP_CRYPTO_NONCE_LEN + CP_CRYPTO_TAG_LEN)

/** Client keys: "sk-sy-" and 40 base62 characters (about 238 bits). */
#define CP_CRYPTO_CLIENT_KEY_PREFIX "sk-sy-"
#define CP_CRYPTO_CLIENT_KEY_LEN    46
#define CP_CRYPTO_CLIENT_PREFIX_LEN 10 /* shown in listings: "sk-sy-AbCd" */
#define CP_CRYPTO_HASH_LEN          32

struct cp_crypto_key {
    char id[CP_CRYPTO_KEY_ID_MAX + 1];
    unsigned char key[CP_CRYPTO_KEY_LEN];
};

/** A ring of master keys; keys[0] is the current one (encrypts), all of them decrypt. */
struct cp_crypto_ring {
    struct cp_crypto_key *keys;
    size_t n;
};

#define CP_CRYPTO_RING_INIT                                                                        \
    {                                                                                              \
        NULL, 0                                                                                    \
    }

/** Fill the empty <ring> from SWITCHYARD_MASTER_KEY or SWITCHYARD_MASTER_KEY_FILE. Returns 0,
 * -ENOENT when neither is set (the ring stays empty and *<err> says what to set), or -EINVAL /
 * -EIO / -ENOMEM with *<err> (caller frees) naming the variable, file and line at fault. */
int cp_crypto_ring_from_env(struct cp_crypto_ring *ring, char **err);

/** Append one key given as "key" or "id:key" (<spec> borrowed); <source> names where it came
 * from in error messages ("SWITCHYARD_MASTER_KEY", "keys.txt line 2"). The first key added is
 * the current one. -EINVAL on a malformed key or id, -EEXIST on a duplicate id. */
int cp_crypto_ring_add(struct cp_crypto_ring *ring, const char *spec, const char *source,
                       char **err);

/** Append the keys of the file at <path>: one "id:key" per line, blank lines and lines starting
 * with '#' ignored. The file must hold at least one key. */
int cp_crypto_ring_load_file(struct cp_crypto_ring *ring, const char *path, char **err);

/** Wipe and free the keys; <ring> is empty and reusable afterwards. */
void cp_crypto_ring_free(struct cp_crypto_ring *ring);

/** The id of the current key (borrowed from <ring>), NULL if the ring is empty. */
const char *cp_crypto_current_id(const struct cp_crypto_ring *ring);

/** The key named <id>, NULL if the ring has none. */
const struct cp_crypto_key *cp_crypto_find(const struct cp_crypto_ring *ring, const char *id);

/** Seal <n> bytes of <plain> (borrowed) under the current key. On success *<out> (caller frees)
 * holds *<out_len> = <n> + CP_CRYPTO_OVERHEAD bytes and *<key_id> points at the id to store
 * beside it (borrowed from <ring>). -ENOKEY when the ring is empty. */
int cp_crypto_encrypt(const struct cp_crypto_ring *ring, const void *plain, size_t n,
                      unsigned char **out, size_t *out_len, const char **key_id, char **err);

/** Open <n> bytes of <ct> (borrowed) sealed under the key <key_id>. On success *<plain> (caller
 * frees with cp_crypto_free_secret()) holds *<plain_len> bytes followed by a NUL. Errors, in
 * words: -ENOKEY the key id is not in the ring, -EBADMSG truncated, unknown version, or the tag
 * does not verify (wrong key or tampered data). */
int cp_crypto_decrypt(const struct cp_crypto_ring *ring, const char *key_id,
                      const unsigned char *ct, size_t n, char **plain, size_t *plain_len,
                      char **err);

/** A display hint for a secret: "sk-abcdef…wxyz" gives "sk-…wxyz". Shows a short scheme prefix
 * ("sk-", "sk-ant-") and at most the last 4 characters, and only "…" when the secret is shorter
 * than 12 characters. Returns a string the caller frees, NULL on allocation failure. */
char *cp_crypto_hint(const char *secret);

/** Generate a client key into <key> (NUL-terminated), its SHA-256 into <hash> and its display
 * prefix into <prefix>. -EIO if the random generator fails. */
int cp_crypto_client_key(char key[CP_CRYPTO_CLIENT_KEY_LEN + 1],
                         unsigned char hash[CP_CRYPTO_HASH_LEN],
                         char prefix[CP_CRYPTO_CLIENT_PREFIX_LEN + 1]);

/** SHA-256 of <n> bytes of <p> into <out>. */
void cp_crypto_sha256(const void *p, size_t n, unsigned char out[CP_CRYPTO_HASH_LEN]);

/** Compare <n> bytes in time independent of their contents (a key hash against a stored one). */
bool cp_crypto_equal(const void *a, const void *b, size_t n);

/** Wipe <n> bytes of <p> and free it; NULL is fine. Takes <p>. */
void cp_crypto_free_secret(void *p, size_t n);
