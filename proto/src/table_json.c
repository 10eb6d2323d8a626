/* SPDX-License-Identifier: Apache-2.0 */
/* The hand-written JSON form of a routing table, and loading a table from a file.
 *
 * JSON is turned into the msgpack form and handed to sy_table_decode(), so both forms share
 * one validator and one set of messages. Only what JSON adds is done here: the defaults of
 * `schema` and `version`, and `api_key_env`, which reads a deployment's key from the
 * environment so that a table file need not hold the secret. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sy/table.h"
#include "sy/util.h"
#include "internal.h"

/* A table file larger than this is refused rather than read into memory. */
#define MAX_TABLE_FILE (512u << 20)

static int buf_write(void *data, const char *p, size_t n)
{
    sy_buf_append(data, p, n);
    return 0;
}

static void pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str_with_body(pk, s, n);
}

static void pack_json(msgpack_packer *pk, const json_t *j)
{
    const char *key;
    json_t *v;
    size_t i;

    switch (json_typeof(j)) {
    case JSON_OBJECT:
        msgpack_pack_map(pk, json_object_size(j));
        json_object_foreach((json_t *)j, key, v)
        {
            pack_str(pk, key, strlen(key));
            pack_json(pk, v);
        }
        return;
    case JSON_ARRAY:
        msgpack_pack_array(pk, json_array_size(j));
        json_array_foreach(j, i, v) pack_json(pk, v);
        return;
    case JSON_STRING:
        pack_str(pk, json_string_value(j), json_string_length(j));
        return;
    case JSON_INTEGER:
        if (json_integer_value(j) >= 0)
            msgpack_pack_uint64(pk, (uint64_t)json_integer_value(j));
        else
            msgpack_pack_int64(pk, json_integer_value(j));
        return;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(j));
        return;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        return;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        return;
    case JSON_NULL:
        msgpack_pack_nil(pk);
        return;
    }
}

/* Deployment <i>, with `api_key_env` replaced by the `api_key` it names. */
static int pack_deployment(msgpack_packer *pk, const json_t *dep, size_t i, char **err)
{
    const json_t *env = json_object_get(dep, "api_key_env");
    const json_t *key = json_object_get(dep, "api_key");
    const char *k, *secret = NULL;
    json_t *v;

    if (env && !json_is_null(env)) {
        if (!json_is_string(env))
            return sy__proto_fail(err, -EINVAL, "deployments[%zu].api_key_env: expected a string",
                                  i);
        if (key && !json_is_null(key))
            return sy__proto_fail(err, -EINVAL,
                                  "deployments[%zu]: give api_key or api_key_env, not both", i);
        secret = getenv(json_string_value(env));
        if (secret == NULL || *secret == '\0')
            return sy__proto_fail(err, -EINVAL,
                                  "deployments[%zu].api_key_env: environment variable %s is %s", i,
                                  json_string_value(env), secret ? "empty" : "not set");
    }

    size_t n = json_object_size(dep);
    if (env && !secret)
        n--; /* a null api_key_env is dropped */
    msgpack_pack_map(pk, n);
    json_object_foreach((json_t *)dep, k, v)
    {
        if (v == env) {
            if (secret) {
                pack_str(pk, "api_key", 7);
                pack_str(pk, secret, strlen(secret));
            }
            continue;
        }
        pack_str(pk, k, strlen(k));
        pack_json(pk, v);
    }
    return 0;
}

static int pack_table(msgpack_packer *pk, const json_t *root, char **err)
{
    const char *k;
    json_t *v;
    size_t n = json_object_size(root);
    bool has_schema = json_object_get(root, "schema") != NULL;
    bool has_version = json_object_get(root, "version") != NULL;

    msgpack_pack_map(pk, n + !has_schema + !has_version);
    if (!has_schema) {
        pack_str(pk, "schema", 6);
        msgpack_pack_int(pk, SY_TABLE_SCHEMA);
    }
    if (!has_version) {
        pack_str(pk, "version", 7);
        msgpack_pack_uint64(pk, 1);
    }
    json_object_foreach((json_t *)root, k, v)
    {
        pack_str(pk, k, strlen(k));
        if (strcmp(k, "deployments") != 0 || !json_is_array(v)) {
            pack_json(pk, v); /* the decoder says what is wrong, if anything */
            continue;
        }
        msgpack_pack_array(pk, json_array_size(v));
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *dep = json_array_get(v, i);
            if (!json_is_object(dep)) {
                pack_json(pk, dep);
                continue;
            }
            int rc = pack_deployment(pk, dep, i, err);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

/* Overwrite the api_key strings inside <root> before jansson frees them. */
static void scrub_keys(json_t *root)
{
    json_t *deps = json_object_get(root, "deployments"), *dep;
    size_t i;

    if (!json_is_array(deps))
        return;
    json_array_foreach(deps, i, dep)
    {
        json_t *key = json_object_get(dep, "api_key");
        if (json_is_string(key))
            explicit_bzero((char *)json_string_value(key), json_string_length(key));
    }
}

int sy_table_from_json(const char *text, size_t len, struct sy_table **out, char **err)
{
    struct sy_buf mp = SY_BUF_INIT;
    msgpack_packer pk;
    json_error_t je;
    json_t *root;
    int rc;

    *out = NULL;
    if (err)
        *err = NULL;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL)
        return sy__proto_fail(err, -EINVAL, "invalid JSON at line %d, column %d: %s", je.line,
                              je.column, je.text);
    if (!json_is_object(root)) {
        rc = sy__proto_fail(err, -EINVAL, "expected a JSON object at the top level");
        goto fail;
    }
    msgpack_packer_init(&pk, &mp, buf_write);
    if ((rc = pack_table(&pk, root, err)) < 0)
        goto fail;
    rc = sy_table_decode(mp.data, mp.len, out, err);

fail:
    if (mp.data)
        explicit_bzero(mp.data, mp.len);
    sy_buf_free(&mp);
    scrub_keys(root);
    json_decref(root);
    return rc;
}

/* ---- policies -------------------------------------------------------------------------- */

/* <text>/<len> as msgpack in <mp>; a message (with <what>) when it is not a JSON object. */
static int json_object_to_msgpack(const char *text, size_t len, const char *what, struct sy_buf *mp,
                                  char **err)
{
    json_error_t je;
    msgpack_packer pk;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL)
        return sy__proto_fail(err, -EINVAL, "%s: invalid JSON at line %d, column %d: %s", what,
                              je.line, je.column, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return sy__proto_fail(err, -EINVAL, "%s: must be an object", what);
    }
    msgpack_packer_init(&pk, mp, buf_write);
    pack_json(&pk, root);
    json_decref(root);
    return 0;
}

int sy_policy_check_json(const char *text, size_t len, char **err, char **param)
{
    struct sy_buf mp = SY_BUF_INIT;
    int rc;

    if (err)
        *err = NULL;
    if (param)
        *param = NULL;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    json_t *wrap = json_pack("{so}", "policy", root ? root : json_null());
    char *w = json_dumps(wrap, JSON_COMPACT);
    json_decref(wrap);
    if (root == NULL || w == NULL) {
        if (param)
            *param = sy_xstrdup("policy");
        free(w);
        return sy__proto_fail(err, root ? -ENOMEM : -EINVAL, "policy: must be a JSON object");
    }
    if ((rc = json_object_to_msgpack(w, strlen(w), "policy", &mp, err)) == 0)
        rc = sy__policy_decode(NULL, 0, mp.data, mp.len, err, param);
    free(w);
    sy_buf_free(&mp);
    return rc;
}

int sy_model_policy_from_json(struct sy_table *t, uint32_t model, const char *text, size_t len,
                              char **err)
{
    struct sy_buf mp = SY_BUF_INIT;
    int rc;

    if (err)
        *err = NULL;
    SY_REQUIRE(model < t->n_models);
    if ((rc = json_object_to_msgpack(text, len, "model", &mp, err)) == 0)
        rc = sy__policy_decode(t, model, mp.data, mp.len, err, NULL);
    sy_buf_free(&mp);
    return rc;
}

/* ---- guardrails ------------------------------------------------------------------------ */

int sy_guardrail_check_json(const char *text, size_t len, struct sy_guardrail *out, char **err,
                            char **param)
{
    struct sy_buf mp = SY_BUF_INIT;
    int rc;

    if (err)
        *err = NULL;
    if (param)
        *param = NULL;
    if ((rc = json_object_to_msgpack(text, len, "guardrail", &mp, err)) == 0)
        rc = sy__guardrail_check(mp.data, mp.len, out, err, param);
    sy_buf_free(&mp);
    return rc;
}

void sy_guardrail_free(struct sy_guardrail *gr)
{
    sy__guardrail_free(gr);
}

/* ---- files ----------------------------------------------------------------------------- */

static int read_file(const char *path, struct sy_buf *b, char **err)
{
    struct stat st;
    int fd, rc = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return sy__proto_fail(err, -errno, "%s: %s", path, strerror(errno));
    if (fstat(fd, &st) == -1) {
        rc = sy__proto_fail(err, -errno, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (st.st_size > (off_t)MAX_TABLE_FILE) {
        rc = sy__proto_fail(err, -EFBIG, "%s: larger than %u MiB", path, MAX_TABLE_FILE >> 20);
        goto out;
    }
    for (;;) {
        sy_buf_reserve(b, 65536);
        ssize_t n = read(fd, b->data + b->len, b->cap - b->len - 1);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1) {
            rc = sy__proto_fail(err, -errno, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        b->len += (size_t)n;
        if (b->len > MAX_TABLE_FILE) {
            rc = sy__proto_fail(err, -EFBIG, "%s: larger than %u MiB", path, MAX_TABLE_FILE >> 20);
            goto out;
        }
    }
    b->data[b->len] = '\0';
out:
    close(fd);
    return rc;
}

int sy_table_load_file(const char *path, struct sy_table **out, char **err)
{
    struct sy_buf b = SY_BUF_INIT;
    char *inner = NULL;
    size_t i = 0;
    int rc;

    *out = NULL;
    if (err)
        *err = NULL;
    if ((rc = read_file(path, &b, err)) < 0)
        goto fail;
    while (i < b.len && strchr(" \t\r\n", b.data[i]) && b.data[i] != '\0')
        i++;
    if (i == b.len) {
        rc = sy__proto_fail(err, -EINVAL, "%s: empty file", path);
        goto fail;
    }
    if (b.data[i] == '{')
        rc = sy_table_from_json(b.data, b.len, out, err ? &inner : NULL);
    else
        rc = sy_table_decode(b.data, b.len, out, err ? &inner : NULL);
    if (rc < 0)
        sy__proto_fail(err, rc, "%s: %s", path, inner ? inner : "invalid table");

fail:
    free(inner);
    if (b.data) /* the file holds credentials */
        explicit_bzero(b.data, b.len);
    sy_buf_free(&b);
    return rc;
}
