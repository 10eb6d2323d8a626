/* SPDX-License-Identifier: Apache-2.0 */
/** AES-256-GCM for provider credentials, the master-key ring, client key generation. See
 * crypto.h for the formats. Every buffer that held a key or a plaintext is wiped before it is
 * freed (OPENSSL_cleanse), so a later heap dump or core file does not carry it. */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "sy/log.h"
#include "sy/util.h"

#include "crypto.h"
#include "internal.h"

#define ENV_KEY      "SWITCHYARD_MASTER_KEY"
#define ENV_KEY_FILE "SWITCHYARD_MASTER_KEY_FILE"

/* ---- decoding keys ------------------------------------------------------------------------ */

static int hex_val(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* 64 hex characters into 32 bytes; false if <s> is not exactly that. */
static bool decode_hex_key(const char *s, size_t n, unsigned char out[CP_CRYPTO_KEY_LEN])
{
    if (n != 2 * CP_CRYPTO_KEY_LEN)
        return false;
    for (size_t i = 0; i < CP_CRYPTO_KEY_LEN; i++) {
        int hi = hex_val((unsigned char)s[2 * i]), lo = hex_val((unsigned char)s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

/* Base64 (standard alphabet, padded) of exactly 32 bytes. EVP_DecodeBlock does not report the
 * padding, so the length is checked from the text: 44 characters ending in one '='. */
static bool decode_b64_key(const char *s, size_t n, unsigned char out[CP_CRYPTO_KEY_LEN])
{
    unsigned char tmp[48];
    if (n != 44 || s[43] != '=' || s[42] == '=')
        return false;
    for (size_t i = 0; i < 43; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '+' && s[i] != '/')
            return false;
    int len = EVP_DecodeBlock(tmp, (const unsigned char *)s, (int)n);
    bool ok = len == 33; /* 44 characters decode to 33 bytes, the last one padding */
    if (ok)
        memcpy(out, tmp, CP_CRYPTO_KEY_LEN);
    OPENSSL_cleanse(tmp, sizeof(tmp));
    return ok;
}

static bool valid_key_id(const char *s, size_t n)
{
    if (n == 0 || n > CP_CRYPTO_KEY_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._-", s[i]))
            return false;
    return true;
}

/* ---- the ring ------------------------------------------------------------------------------ */

int cp_crypto_ring_add(struct cp_crypto_ring *ring, const char *spec, const char *source,
                       char **err)
{
    struct cp_crypto_key k;
    const char *colon = strchr(spec, ':');
    const char *key = colon ? colon + 1 : spec;
    size_t key_len = strlen(key);
    int rc = 0;

    if (colon && !valid_key_id(spec, (size_t)(colon - spec))) {
        rc = cp__fail(err, -EINVAL,
                      "%s: the key id before ':' must be 1 to %d characters of A-Z a-z 0-9 . _ -",
                      source, CP_CRYPTO_KEY_ID_MAX);
        goto fail;
    }
    if (!decode_hex_key(key, key_len, k.key) && !decode_b64_key(key, key_len, k.key)) {
        /* Never echo the value: it may be a real key with a typo. */
        rc = cp__fail(err, -EINVAL,
                      "%s: a master key must be 64 hex characters or the base64 of 32 bytes "
                      "(got %zu characters); generate one with `openssl rand -hex 32`",
                      source, key_len);
        goto fail;
    }
    if (colon) {
        memcpy(k.id, spec, (size_t)(colon - spec));
        k.id[colon - spec] = '\0';
    } else {
        unsigned char h[CP_CRYPTO_HASH_LEN];
        cp_crypto_sha256(k.key, sizeof(k.key), h);
        snprintf(k.id, sizeof(k.id), "%02x%02x%02x%02x", h[0], h[1], h[2], h[3]);
    }
    if (cp_crypto_find(ring, k.id)) {
        rc = cp__fail(err, -EEXIST, "%s: the key id \"%s\" is already in the key ring", source,
                      k.id);
        goto fail;
    }
    struct cp_crypto_key *keys = OPENSSL_secure_zalloc((ring->n + 1) * sizeof(*keys));
    if (!keys) {
        rc = cp__fail(err, -ENOMEM, "%s: out of memory", source);
        goto fail;
    }
    if (ring->n)
        memcpy(keys, ring->keys, ring->n * sizeof(*keys));
    keys[ring->n] = k;
    OPENSSL_secure_clear_free(ring->keys, ring->n * sizeof(*keys));
    ring->keys = keys;
    ring->n++;
fail:
    OPENSSL_cleanse(&k, sizeof(k));
    return rc;
}

/* Strip leading and trailing white space (and the CR of CRLF files) in place. */
static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

int cp_crypto_ring_load_file(struct cp_crypto_ring *ring, const char *path, char **err)
{
    char line[512];
    char where[64 + 4096];
    int rc = 0, lineno = 0;
    size_t before = ring->n;
    struct stat st;

    FILE *f = fopen(path, "re");
    if (!f)
        return cp__fail(err, -EIO, "%s=%s: cannot open: %s", ENV_KEY_FILE, path, strerror(errno));
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        sy_log(SY_LOG_WARN, "crypto", "%s is readable by group or others: chmod 600 it", path);
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        snprintf(where, sizeof(where), "%s line %d", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            rc = cp__fail(err, -EINVAL, "%s: the line is too long for a key", where);
            goto fail;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        if (!strchr(s, ':')) {
            rc = cp__fail(err, -EINVAL, "%s: expected id:key", where);
            goto fail;
        }
        rc = cp_crypto_ring_add(ring, s, where, err);
        if (rc < 0)
            goto fail;
    }
    if (ferror(f)) {
        rc = cp__fail(err, -EIO, "%s: read error: %s", path, strerror(errno));
        goto fail;
    }
    if (ring->n == before)
        rc = cp__fail(err, -EINVAL, "%s: the file holds no key (expected id:key lines)", path);
fail:
    OPENSSL_cleanse(line, sizeof(line));
    fclose(f);
    return rc;
}

int cp_crypto_ring_from_env(struct cp_crypto_ring *ring, char **err)
{
    const char *key = getenv(ENV_KEY);
    const char *file = getenv(ENV_KEY_FILE);
    if (key && *key == '\0')
        key = NULL;
    if (file && *file == '\0')
        file = NULL;

    if (key && file)
        return cp__fail(err, -EINVAL,
                        "both %s and %s are set: set only one (put old keys in the file)", ENV_KEY,
                        ENV_KEY_FILE);
    if (key)
        return cp_crypto_ring_add(ring, key, ENV_KEY, err);
    if (file)
        return cp_crypto_ring_load_file(ring, file, err);
    return cp__fail(err, -ENOENT,
                    "no master key: set %s (generate one with `openssl rand -hex 32`) or %s",
                    ENV_KEY, ENV_KEY_FILE);
}

void cp_crypto_ring_free(struct cp_crypto_ring *ring)
{
    OPENSSL_secure_clear_free(ring->keys, ring->n * sizeof(*ring->keys));
    ring->keys = NULL;
    ring->n = 0;
}

const char *cp_crypto_current_id(const struct cp_crypto_ring *ring)
{
    return ring->n ? ring->keys[0].id : NULL;
}

const struct cp_crypto_key *cp_crypto_find(const struct cp_crypto_ring *ring, const char *id)
{
    for (size_t i = 0; i < ring->n; i++)
        if (strcmp(ring->keys[i].id, id) == 0)
            return &ring->keys[i];
    return NULL;
}

/* ---- AES-256-GCM ----------------------------------------------------------------------------- */

/* The additional data: format version, then the key id. */
static size_t make_aad(unsigned char *aad, const char *key_id)
{
    size_t n = strlen(key_id);
    aad[0] = CP_CRYPTO_FORMAT_V1;
    memcpy(aad + 1, key_id, n);
    return n + 1;
}

int cp_crypto_encrypt(const struct cp_crypto_ring *ring, const void *plain, size_t n,
                      unsigned char **out, size_t *out_len, const char **key_id, char **err)
{
    unsigned char aad[1 + CP_CRYPTO_KEY_ID_MAX];
    unsigned char *buf = NULL;
    EVP_CIPHER_CTX *ctx = NULL;
    int len, rc = 0;

    *out = NULL;
    if (ring->n == 0)
        return cp__fail(err, -ENOKEY,
                        "cannot encrypt the credential: no master key is configured (set %s "
                        "or %s)",
                        ENV_KEY, ENV_KEY_FILE);
    if (n > INT32_MAX)
        return cp__fail(err, -EMSGSIZE, "the credential is too long to encrypt");
    const struct cp_crypto_key *k = &ring->keys[0];
    size_t aad_len = make_aad(aad, k->id);

    buf = malloc(n + CP_CRYPTO_OVERHEAD);
    ctx = EVP_CIPHER_CTX_new();
    if (!buf || !ctx) {
        rc = cp__fail(err, -ENOMEM, "out of memory");
        goto fail;
    }
    buf[0] = CP_CRYPTO_FORMAT_V1;
    unsigned char *nonce = buf + 1, *body = nonce + CP_CRYPTO_NONCE_LEN, *tag = body + n;
    if (RAND_bytes(nonce, CP_CRYPTO_NONCE_LEN) != 1 ||
        EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, k->key, nonce) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &len, aad, (int)aad_len) != 1 ||
        EVP_EncryptUpdate(ctx, body, &len, plain, (int)n) != 1 ||
        EVP_EncryptFinal_ex(ctx, body + len, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CP_CRYPTO_TAG_LEN, tag) != 1) {
        rc = cp__fail(err, -EIO, "cannot encrypt the credential: OpenSSL failed");
        goto fail;
    }
    *out = buf;
    *out_len = n + CP_CRYPTO_OVERHEAD;
    *key_id = k->id;
    buf = NULL;
fail:
    EVP_CIPHER_CTX_free(ctx);
    free(buf);
    return rc;
}

int cp_crypto_decrypt(const struct cp_crypto_ring *ring, const char *key_id,
                      const unsigned char *ct, size_t n, char **plain, size_t *plain_len,
                      char **err)
{
    unsigned char aad[1 + CP_CRYPTO_KEY_ID_MAX];
    EVP_CIPHER_CTX *ctx = NULL;
    char *buf = NULL;
    size_t body_len = 0;
    int len, rc = 0;

    *plain = NULL;
    const struct cp_crypto_key *k = key_id ? cp_crypto_find(ring, key_id) : NULL;
    if (!k) {
        const char *cur = cp_crypto_current_id(ring);
        return cp__fail(err, -ENOKEY,
                        "the credential was encrypted with master key \"%s\", which is not in "
                        "the key ring (current key: \"%s\"); add that key as a later line of %s",
                        key_id ? key_id : "(none)", cur ? cur : "none", ENV_KEY_FILE);
    }
    if (n < CP_CRYPTO_OVERHEAD || n - CP_CRYPTO_OVERHEAD > INT32_MAX)
        return cp__fail(err, -EBADMSG, "the stored credential is truncated (%zu bytes)", n);
    if (ct[0] != CP_CRYPTO_FORMAT_V1)
        return cp__fail(err, -EBADMSG,
                        "the stored credential has format version %u, which this version of "
                        "switchyard does not know",
                        ct[0]);
    size_t aad_len = make_aad(aad, k->id);
    const unsigned char *nonce = ct + 1, *body = nonce + CP_CRYPTO_NONCE_LEN;
    body_len = n - CP_CRYPTO_OVERHEAD;
    const unsigned char *tag = body + body_len;

    buf = malloc(body_len + 1);
    ctx = EVP_CIPHER_CTX_new();
    if (!buf || !ctx) {
        rc = cp__fail(err, -ENOMEM, "out of memory");
        goto fail;
    }
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, k->key, nonce) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &len, aad, (int)aad_len) != 1 ||
        EVP_DecryptUpdate(ctx, (unsigned char *)buf, &len, body, (int)body_len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CP_CRYPTO_TAG_LEN, (void *)tag) != 1 ||
        EVP_DecryptFinal_ex(ctx, (unsigned char *)buf + len, &len) != 1) {
        rc = cp__fail(err, -EBADMSG,
                      "the stored credential does not decrypt with master key \"%s\": the key "
                      "is wrong or the data was tampered with",
                      k->id);
        goto fail;
    }
    buf[body_len] = '\0';
    *plain = buf;
    *plain_len = body_len;
    buf = NULL;
fail:
    EVP_CIPHER_CTX_free(ctx);
    cp_crypto_free_secret(buf, body_len + 1);
    return rc;
}

/* ---- hints, client keys, hashes ------------------------------------------------------------ */

/* Length of a scheme prefix worth showing: up to two segments of 1-4 lowercase letters, each
 * followed by '-' ("sk-", "sk-ant-"). */
static size_t scheme_prefix(const char *s)
{
    size_t end = 0;
    for (int seg = 0; seg < 2; seg++) {
        size_t i = end;
        while (i - end < 5 && s[i] >= 'a' && s[i] <= 'z')
            i++;
        if (i == end || i - end > 4 || s[i] != '-')
            break;
        end = i + 1;
    }
    return end;
}

char *cp_crypto_hint(const char *secret)
{
    static const char ellipsis[] = "\xe2\x80\xa6"; /* U+2026 */
    size_t n = strlen(secret);
    char *out;

    if (n < 12)
        return strdup(ellipsis);
    size_t pre = scheme_prefix(secret);
    if (n - pre < 4 + 8) /* keep at least 8 characters hidden */
        pre = 0;
    if (asprintf(&out, "%.*s%s%s", (int)pre, secret, ellipsis, secret + n - 4) == -1)
        return NULL;
    return out;
}

int cp_crypto_client_key(char key[CP_CRYPTO_CLIENT_KEY_LEN + 1],
                         unsigned char hash[CP_CRYPTO_HASH_LEN],
                         char prefix[CP_CRYPTO_CLIENT_PREFIX_LEN + 1])
{
    static const char alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const size_t plen = sizeof(CP_CRYPTO_CLIENT_KEY_PREFIX) - 1;
    unsigned char rnd[64];
    size_t have = 0;

    static_assert(sizeof(alphabet) - 1 == 62, "base62");
    static_assert(CP_CRYPTO_CLIENT_KEY_LEN == sizeof(CP_CRYPTO_CLIENT_KEY_PREFIX) - 1 + 40,
                  "client key length");
    memcpy(key, CP_CRYPTO_CLIENT_KEY_PREFIX, plen);
    /* Rejection sampling: bytes >= 248 (4 * 62) would favour the first characters. */
    for (size_t i = plen; i < CP_CRYPTO_CLIENT_KEY_LEN;) {
        if (have == 0) {
            if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
                OPENSSL_cleanse(key, CP_CRYPTO_CLIENT_KEY_LEN);
                return -EIO;
            }
            have = sizeof(rnd);
        }
        unsigned char b = rnd[--have];
        if (b < 248)
            key[i++] = alphabet[b % 62];
    }
    key[CP_CRYPTO_CLIENT_KEY_LEN] = '\0';
    OPENSSL_cleanse(rnd, sizeof(rnd));
    cp_crypto_sha256(key, CP_CRYPTO_CLIENT_KEY_LEN, hash);
    memcpy(prefix, key, CP_CRYPTO_CLIENT_PREFIX_LEN);
    prefix[CP_CRYPTO_CLIENT_PREFIX_LEN] = '\0';
    return 0;
}

void cp_crypto_sha256(const void *p, size_t n, unsigned char out[CP_CRYPTO_HASH_LEN])
{
    unsigned int len = CP_CRYPTO_HASH_LEN;
    SY_REQUIRE(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) == 1);
}

bool cp_crypto_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

void cp_crypto_free_secret(void *p, size_t n)
{
    if (!p)
        return;
    OPENSSL_cleanse(p, n);
    free(p);
}
