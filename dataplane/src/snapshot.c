/* SPDX-License-Identifier: Apache-2.0 */
/** The snapshot file, encrypted: the last-known-good routing table holds the providers'
 * credentials, so it never reaches the disk in plaintext.
 *
 * File format (all of it authenticated):
 *
 *     "SYSNAP01"   8 bytes: magic and format version, also the AES-GCM additional data
 *     nonce        12 random bytes, new for every write
 *     ciphertext   the msgpack table (sy_table_encode), AES-256-GCM
 *     tag          16 bytes
 *
 * The key is 32 bytes, from --snapshot-key-file (64 hex characters or base64). Without one the
 * master makes <snapshot>.key (mode 0600) the first time and reuses it afterwards. That keeps
 * the credentials out of the snapshot itself, of its backups and of anything that copies it
 * alone; it does not protect against someone who can read the directory (they read both files).
 * A key kept elsewhere (a secret volume, a tmpfs) closes that gap: docs/security.md.
 *
 * A snapshot that does not decrypt (wrong key, altered bytes, the old plaintext format) is
 * refused with a clear message, and the data plane waits for the control plane's table. */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "sy/buf.h"
#include "sy/log.h"
#include "sy/table.h"
#include "sy/util.h"

#include "internal.h"

#define SNAP_MAGIC     "SYSNAP01"
#define SNAP_MAGIC_LEN 8
#define SNAP_NONCE_LEN 12
#define SNAP_TAG_LEN   16
#define SNAP_KEY_LEN   32
#define SNAP_MAX_BYTES (256u << 20)

static unsigned char snapshot_key[SNAP_KEY_LEN];
static bool have_key;

__attribute__((format(printf, 2, 3))) static int fail(char **err, const char *fmt, ...)
{
    struct sy_buf b = SY_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    sy_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    free(*err);
    *err = sy_buf_steal(&b, NULL);
    return -EINVAL;
}

/* ---- the key --------------------------------------------------------------------------- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* <text>/<n> as 64 hex digits or the base64 of 32 bytes into <key>. */
static bool parse_key(const char *text, size_t n, unsigned char key[SNAP_KEY_LEN])
{
    if (n == 2 * SNAP_KEY_LEN) {
        for (size_t i = 0; i < SNAP_KEY_LEN; i++) {
            int hi = hexval(text[2 * i]), lo = hexval(text[2 * i + 1]);
            if (hi < 0 || lo < 0)
                return false;
            key[i] = (unsigned char)(hi * 16 + lo);
        }
        return true;
    }
    if (n == 44) {
        unsigned char out[48];
        int len = EVP_DecodeBlock(out, (const unsigned char *)text, (int)n);
        /* 44 characters decode to 33 bytes, the last of them padding ("=" at the end) */
        bool ok = len == 33 && text[43] == '=' && text[42] != '=';
        if (ok)
            memcpy(key, out, SNAP_KEY_LEN);
        OPENSSL_cleanse(out, sizeof(out));
        return ok;
    }
    return false;
}

static int read_key(const char *path, char **err)
{
    char buf[256];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;
    int rc = 0;

    if (fd == -1)
        return fail(err, "--snapshot-key-file: cannot read %s: %s", path, strerror(errno));
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        return fail(err, "--snapshot-key-file: cannot read %s: %s", path, strerror(errno));
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    if (!parse_key(buf, (size_t)n, snapshot_key))
        rc = fail(err,
                  "--snapshot-key-file: %s must hold a 32-byte key: 64 hex characters or 44 "
                  "characters of base64 (e.g. openssl rand -hex 32)",
                  path);
    else
        have_key = true;
    OPENSSL_cleanse(buf, sizeof(buf));
    return rc;
}

/* Make a new random key at <path> (mode 0600, never over an existing file). */
static int create_key(const char *path, char **err)
{
    static const char digits[] = "0123456789abcdef";
    char hex[2 * SNAP_KEY_LEN + 1];
    int fd, rc = 0;

    if (RAND_bytes(snapshot_key, SNAP_KEY_LEN) != 1)
        return fail(err, "cannot make a snapshot key: no randomness");
    for (size_t i = 0; i < SNAP_KEY_LEN; i++) {
        hex[2 * i] = digits[snapshot_key[i] >> 4];
        hex[2 * i + 1] = digits[snapshot_key[i] & 15];
    }
    hex[2 * SNAP_KEY_LEN] = '\n';
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1 || write(fd, hex, sizeof(hex)) != (ssize_t)sizeof(hex) || fsync(fd) == -1) {
        rc = fail(err, "cannot create the snapshot key %s: %s", path, strerror(errno));
        if (fd != -1) {
            close(fd);
            unlink(path);
        }
    } else if (close(fd) == -1) {
        rc = fail(err, "cannot create the snapshot key %s: %s", path, strerror(errno));
        unlink(path);
    } else {
        have_key = true;
        sy_log(SY_LOG_INFO, "master",
               "made a new snapshot key %s (mode 0600): keep it with the snapshot, or set "
               "--snapshot-key-file to keep it elsewhere",
               path);
    }
    OPENSSL_cleanse(hex, sizeof(hex));
    return rc;
}

int dp__snapshot_key_init(const struct dp_config *c, char **err)
{
    struct sy_buf path = SY_BUF_INIT;
    int rc;

    if (c->snapshot_path == NULL)
        return 0;
    if (c->snapshot_key_file != NULL)
        return read_key(c->snapshot_key_file, err);
    sy_buf_printf(&path, "%s.key", c->snapshot_path);
    if (access(path.data, F_OK) == 0)
        rc = read_key(path.data, err);
    else
        rc = create_key(path.data, err);
    sy_buf_free(&path);
    return rc;
}

/* ---- sealing and opening ----------------------------------------------------------------- */

int dp__snapshot_seal(const struct sy_table *t, struct sy_buf *out)
{
    struct sy_buf plain = SY_BUF_INIT;
    EVP_CIPHER_CTX *ctx = NULL;
    unsigned char *p;
    int len, rc = -EIO;

    SY_REQUIRE(have_key);
    sy_table_encode(t, &plain);
    sy_buf_reset(out);
    sy_buf_reserve(out, SNAP_MAGIC_LEN + SNAP_NONCE_LEN + plain.len + SNAP_TAG_LEN + 16);
    p = (unsigned char *)out->data;
    memcpy(p, SNAP_MAGIC, SNAP_MAGIC_LEN);
    if (RAND_bytes(p + SNAP_MAGIC_LEN, SNAP_NONCE_LEN) != 1)
        goto fail;
    ctx = EVP_CIPHER_CTX_new();
    SY_REQUIRE(ctx);
    unsigned char *body = p + SNAP_MAGIC_LEN + SNAP_NONCE_LEN;
    int n = 0;
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, snapshot_key, p + SNAP_MAGIC_LEN) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &len, p, SNAP_MAGIC_LEN) != 1 ||
        EVP_EncryptUpdate(ctx, body, &len, (unsigned char *)plain.data, (int)plain.len) != 1)
        goto fail;
    n = len;
    if (EVP_EncryptFinal_ex(ctx, body + n, &len) != 1)
        goto fail;
    n += len;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SNAP_TAG_LEN, body + n) != 1)
        goto fail;
    out->len = SNAP_MAGIC_LEN + SNAP_NONCE_LEN + (size_t)n + SNAP_TAG_LEN;
    rc = 0;
fail:
    EVP_CIPHER_CTX_free(ctx);
    if (plain.data)
        OPENSSL_cleanse(plain.data, plain.cap);
    sy_buf_free(&plain);
    return rc;
}

/* Decrypt <data>/<n> into <plain> (cleared by the caller). */
static int open_sealed(const unsigned char *data, size_t n, struct sy_buf *plain, char **err,
                       const char *path)
{
    const unsigned char *nonce = data + SNAP_MAGIC_LEN;
    const unsigned char *body = nonce + SNAP_NONCE_LEN;
    size_t body_len = n - SNAP_MAGIC_LEN - SNAP_NONCE_LEN - SNAP_TAG_LEN;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len, rc = 0;

    SY_REQUIRE(ctx);
    sy_buf_reserve(plain, body_len + 16);
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, snapshot_key, nonce) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &len, data, SNAP_MAGIC_LEN) != 1 ||
        EVP_DecryptUpdate(ctx, (unsigned char *)plain->data, &len, body, (int)body_len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SNAP_TAG_LEN, (void *)(body + body_len)) !=
            1) {
        rc = fail(err, "snapshot %s: cannot decrypt", path);
        goto out;
    }
    plain->len = (size_t)len;
    if (EVP_DecryptFinal_ex(ctx, (unsigned char *)plain->data + len, &len) != 1) {
        rc = fail(err,
                  "snapshot %s does not decrypt with the snapshot key (another key, or the file "
                  "was altered)",
                  path);
        goto out;
    }
    plain->len += (size_t)len;
out:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int dp__snapshot_load(const char *path, struct sy_table **out, char **err)
{
    struct sy_buf file = SY_BUF_INIT, plain = SY_BUF_INIT;
    struct stat st;
    int fd, rc;

    *out = NULL;
    if (!have_key)
        return fail(err, "snapshot %s: no snapshot key", path);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return fail(err, "snapshot %s: %s", path, strerror(errno));
    if (fstat(fd, &st) == -1 || st.st_size > (off_t)SNAP_MAX_BYTES) {
        close(fd);
        return fail(err, "snapshot %s: unreadable or larger than %u MiB", path,
                    SNAP_MAX_BYTES >> 20);
    }
    sy_buf_reserve(&file, (size_t)st.st_size + 1);
    while (file.len < (size_t)st.st_size) {
        ssize_t n = read(fd, file.data + file.len, (size_t)st.st_size - file.len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        file.len += (size_t)n;
    }
    close(fd);
    if (file.len < SNAP_MAGIC_LEN + SNAP_NONCE_LEN + SNAP_TAG_LEN ||
        memcmp(file.data, SNAP_MAGIC, SNAP_MAGIC_LEN) != 0) {
        rc = fail(err,
                  "snapshot %s is not an encrypted snapshot (an older plaintext one, or not a "
                  "snapshot at all): refused",
                  path);
        goto out;
    }
    rc = open_sealed((unsigned char *)file.data, file.len, &plain, err, path);
    if (rc == 0 && (rc = sy_table_decode(plain.data, plain.len, out, err)) != 0) {
        char *why = *err;
        *err = NULL;
        fail(err, "snapshot %s: %s", path, why ? why : "invalid table");
        free(why);
    }
out:
    if (plain.data)
        OPENSSL_cleanse(plain.data, plain.cap);
    sy_buf_free(&plain);
    sy_buf_free(&file);
    return rc;
}
