/* SPDX-License-Identifier: Apache-2.0 */
/* The routing table: JSON and msgpack forms, validation messages, origins, look-up, lifetime. */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <msgpack.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "sy/table.h"
#include "sy/util.h"

/* ---- helpers --------------------------------------------------------------------------- */

/* Test JSON is written with single quotes, to spare the backslashes; this swaps them. */
static char *json(const char *single_quoted)
{
    char *s = sy_xstrdup(single_quoted);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    return s;
}

static struct sy_table *from_json_ok(const char *single_quoted)
{
    char *text = json(single_quoted), *err = NULL;
    struct sy_table *t = NULL;
    int rc = sy_table_from_json(text, strlen(text), &t, &err);
    if (rc != 0)
        fail_msg("unexpected error: %s", err);
    free(text);
    return t;
}

static void expect_json_error(const char *single_quoted, const char *expected)
{
    char *text = json(single_quoted), *err = NULL;
    struct sy_table *t = (struct sy_table *)1;
    int rc = sy_table_from_json(text, strlen(text), &t, &err);
    if (rc == 0)
        fail_msg("accepted, expected: %s\n  %s", expected, text);
    assert_int_equal(rc, -EINVAL);
    assert_null(t);
    assert_non_null(err);
    if (strcmp(err, expected) != 0)
        fail_msg("for %s\n  got:      %s\n  expected: %s", text, err, expected);
    free(err);
    free(text);
}

/* Where tests/data/tables is: the executable lives in <build>/tests, and __FILE__ is either
 * absolute or relative to <build>, where the compiler ran. */
static const char *data_dir(void)
{
    static char dir[PATH_MAX];
    char exe[PATH_MAX], src[PATH_MAX];

    if (dir[0])
        return dir;
    snprintf(src, sizeof(src), "%s", __FILE__);
    if (src[0] == '/') {
        snprintf(dir, sizeof(dir), "%s/../data/tables", dirname(src));
    } else {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        assert_true(n > 0);
        exe[n] = '\0';
        snprintf(dir, sizeof(dir), "%s/../%s/../data/tables", dirname(exe), dirname(src));
    }
    return dir;
}

static char *data_path(const char *name)
{
    char *p;
    assert_true(asprintf(&p, "%s/%s", data_dir(), name) > 0);
    return p;
}

static struct sy_table *load_ok(const char *name)
{
    char *path = data_path(name), *err = NULL;
    struct sy_table *t = NULL;
    if (sy_table_load_file(path, &t, &err) != 0)
        fail_msg("%s", err);
    free(path);
    return t;
}

static const struct sy_deployment *find_dep(const struct sy_table *t, const char *name)
{
    for (uint32_t i = 0; i < t->n_deployments; i++)
        if (strcmp(t->deployments[i].name, name) == 0)
            return &t->deployments[i];
    fail_msg("no deployment %s", name);
    return NULL;
}

static const struct sy_model *model(const struct sy_table *t, const char *name)
{
    const struct sy_model *m = sy_table_find_model(t, name, strlen(name));
    assert_non_null(m);
    return m;
}

static void assert_str_or_null_equal(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

static void assert_tables_equal(const struct sy_table *a, const struct sy_table *b)
{
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->created_ms, b->created_ms);
    assert_int_equal(a->n_deployments, b->n_deployments);
    for (uint32_t i = 0; i < a->n_deployments; i++) {
        const struct sy_deployment *x = &a->deployments[i], *y = &b->deployments[i];
        assert_string_equal(x->name, y->name);
        assert_string_equal(x->provider, y->provider);
        assert_string_equal(x->model, y->model);
        assert_int_equal(x->format, y->format);
        assert_string_equal(x->base_url, y->base_url);
        assert_int_equal(x->origin.tls, y->origin.tls);
        assert_int_equal(x->origin.port, y->origin.port);
        assert_string_equal(x->origin.host, y->origin.host);
        assert_string_equal(x->origin.host_header, y->origin.host_header);
        assert_string_equal(x->origin.path_prefix, y->origin.path_prefix);
        assert_str_or_null_equal(x->origin.ca_file, y->origin.ca_file);
        assert_int_equal(x->origin.insecure, y->origin.insecure);
        assert_string_equal(x->origin.key, y->origin.key);
        assert_int_equal(x->auth_style, y->auth_style);
        assert_str_or_null_equal(x->auth_name, y->auth_name);
        assert_str_or_null_equal(x->api_key, y->api_key);
        assert_str_or_null_equal(x->api_version, y->api_version);
        assert_int_equal(x->n_headers, y->n_headers);
        for (uint32_t h = 0; h < x->n_headers; h++) {
            assert_string_equal(x->headers[h].name, y->headers[h].name);
            assert_string_equal(x->headers[h].value, y->headers[h].value);
        }
        assert_memory_equal(&x->timeouts, &y->timeouts, sizeof(x->timeouts));
        assert_int_equal(x->weight, y->weight);
        assert_int_equal(x->slot, y->slot);
        assert_int_equal(x->enabled, y->enabled);
        assert_memory_equal(&x->limits, &y->limits, sizeof(x->limits));
        assert_true(x->price.input == y->price.input);
        assert_true(x->price.output == y->price.output);
    }
    assert_int_equal(a->require_keys, b->require_keys);
    assert_int_equal(a->n_keys, b->n_keys);
    for (uint32_t i = 0; i < a->n_keys; i++) {
        const struct sy_key *x = &a->keys[i], *y = &b->keys[i];
        assert_memory_equal(x->hash, y->hash, SY_KEY_HASH_LEN);
        assert_int_equal(x->id, y->id);
        assert_str_or_null_equal(x->name, y->name);
        assert_str_or_null_equal(x->prefix, y->prefix);
        assert_str_or_null_equal(x->agent, y->agent);
        assert_str_or_null_equal(x->user, y->user);
        assert_str_or_null_equal(x->tier, y->tier);
        assert_int_equal(x->models == NULL, y->models == NULL);
        assert_int_equal(x->n_models, y->n_models);
        for (uint32_t j = 0; j < x->n_models; j++)
            assert_string_equal(x->models[j], y->models[j]);
        assert_int_equal(x->expires_ms, y->expires_ms);
        assert_int_equal(x->slot, y->slot);
        assert_int_equal(x->rpm, y->rpm);
        assert_int_equal(x->tpm, y->tpm);
    }
    assert_int_equal(a->n_models, b->n_models);
    for (uint32_t i = 0; i < a->n_models; i++) {
        const struct sy_model *x = &a->models[i], *y = &b->models[i];
        assert_string_equal(x->name, y->name);
        assert_int_equal(x->slot, y->slot);
        assert_int_equal(x->total_weight, y->total_weight);
        assert_int_equal(x->n_targets, y->n_targets);
        for (uint32_t j = 0; j < x->n_targets; j++) {
            assert_int_equal(x->targets[j].deployment, y->targets[j].deployment);
            assert_int_equal(x->targets[j].weight, y->targets[j].weight);
        }
    }
}

static void encode(const struct sy_table *t, struct sy_buf *b)
{
    sy_buf_reset(b);
    assert_int_equal(sy_table_encode(t, b), 0);
}

static int buf_write(void *data, const char *p, size_t n)
{
    sy_buf_append(data, p, n);
    return 0;
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* ---- the JSON form --------------------------------------------------------------------- */

static void test_json_full_example(void **state)
{
    struct sy_table *t = load_ok("good-full.json");

    assert_int_equal(atomic_load(&t->refs), 1);
    assert_int_equal(t->version, 42);
    assert_int_equal(t->created_ms, 1717000000000);
    assert_int_equal(t->n_deployments, 5);

    const struct sy_deployment *d = &t->deployments[0]; /* deployments keep their order */
    assert_string_equal(d->name, "openai-gpt4o");
    assert_string_equal(d->provider, "openai-prod");
    assert_string_equal(d->model, "gpt-4o");
    assert_int_equal(d->format, SY_FORMAT_OPENAI);
    assert_int_equal(d->auth_style, SY_AUTH_BEARER);
    assert_null(d->auth_name);
    assert_string_equal(d->api_key, "sk-test-openai");
    assert_null(d->api_version);
    assert_true(d->origin.tls);
    assert_int_equal(d->origin.port, 443);
    assert_string_equal(d->origin.host, "api.openai.com");
    assert_string_equal(d->origin.host_header, "api.openai.com");
    assert_string_equal(d->origin.path_prefix, "/v1");
    assert_string_equal(d->origin.key, "https://api.openai.com:443");
    assert_int_equal(d->n_headers, 2);
    assert_string_equal(d->headers[0].name, "OpenAI-Organization");
    assert_string_equal(d->headers[0].value, "org-123");
    assert_string_equal(d->headers[1].name, "X-Trace");
    assert_int_equal(d->timeouts.connect_ms, 2000);
    assert_int_equal(d->timeouts.first_byte_ms, 30000);
    assert_int_equal(d->timeouts.idle_ms, 60000);
    assert_int_equal(d->timeouts.total_ms, 600000);
    assert_int_equal(d->weight, 3);
    assert_int_equal(d->slot, 10);
    assert_true(d->enabled);

    d = find_dep(t, "azure-gpt4o"); /* azure: api-key header by default */
    assert_int_equal(d->format, SY_FORMAT_AZURE);
    assert_int_equal(d->auth_style, SY_AUTH_HEADER);
    assert_string_equal(d->auth_name, "api-key");
    assert_string_equal(d->api_version, "2024-10-21");
    assert_string_equal(d->origin.host, "myres.openai.azure.com");
    assert_string_equal(d->origin.path_prefix, "/openai");
    assert_int_equal(d->weight, 1);
    assert_int_equal(d->n_headers, 0);
    assert_int_equal(d->timeouts.connect_ms, 0); /* 0: the data plane's default */

    d = find_dep(t, "claude-sonnet"); /* anthropic: x-api-key header by default */
    assert_int_equal(d->format, SY_FORMAT_ANTHROPIC);
    assert_int_equal(d->auth_style, SY_AUTH_HEADER);
    assert_string_equal(d->auth_name, "x-api-key");
    assert_string_equal(d->origin.path_prefix, "");

    d = find_dep(t, "local-llama");
    assert_false(d->enabled);
    assert_int_equal(d->auth_style, SY_AUTH_NONE);
    assert_null(d->api_key);
    assert_false(d->origin.tls);
    assert_int_equal(d->origin.port, 11434);
    assert_string_equal(d->origin.host_header, "127.0.0.1:11434");
    assert_string_equal(d->origin.path_prefix, "/v1");
    assert_string_equal(d->origin.key, "http://127.0.0.1:11434");

    d = find_dep(t, "staging-gw");
    assert_int_equal(d->auth_style, SY_AUTH_QUERY);
    assert_string_equal(d->auth_name, "key");
    assert_string_equal(d->origin.host, "fd00::1");
    assert_string_equal(d->origin.host_header, "[fd00::1]:8443");
    assert_string_equal(d->origin.path_prefix, "/gw");
    assert_string_equal(d->origin.ca_file, "/etc/switchyard/staging-ca.pem");
    assert_string_equal(d->origin.key, "https://[fd00::1]:8443|ca=/etc/switchyard/staging-ca.pem");

    /* Models come sorted by name; targets are resolved to indices. */
    assert_int_equal(t->n_models, 3);
    assert_string_equal(t->models[0].name, "claude");
    assert_string_equal(t->models[1].name, "gpt-4o");
    assert_string_equal(t->models[2].name, "local");
    const struct sy_model *m = model(t, "gpt-4o");
    assert_int_equal(m->slot, 0);
    assert_int_equal(m->n_targets, 2);
    assert_string_equal(t->deployments[m->targets[0].deployment].name, "openai-gpt4o");
    assert_int_equal(m->targets[0].weight, 3);
    assert_string_equal(t->deployments[m->targets[1].deployment].name, "azure-gpt4o");
    assert_int_equal(m->targets[1].weight, 1);
    assert_int_equal(m->total_weight, 4);
    m = model(t, "claude");
    assert_int_equal(m->targets[0].weight, 1); /* default */
    assert_int_equal(m->total_weight, 1);
    /* Only enabled targets count: local-llama is disabled, staging-gw has weight 0. */
    m = model(t, "local");
    assert_int_equal(m->n_targets, 2);
    assert_int_equal(m->total_weight, 0);

    sy_table_unref(t);
}

static void test_json_defaults(void **state)
{
    struct sy_table *t = load_ok("good-minimal.json");
    assert_int_equal(t->version, 1);
    assert_int_equal(t->created_ms, 0);
    const struct sy_deployment *d = &t->deployments[0];
    assert_string_equal(d->provider, "");
    assert_int_equal(d->format, SY_FORMAT_OPENAI);
    assert_int_equal(d->slot, 0);
    assert_int_equal(d->weight, 1);
    assert_true(d->enabled);
    assert_false(d->origin.insecure);
    assert_null(d->origin.ca_file);
    assert_int_equal(t->models[0].slot, 0);
    sy_table_unref(t);

    t = load_ok("good-empty.json");
    assert_int_equal(t->version, 7);
    assert_int_equal(t->n_deployments, 0);
    assert_int_equal(t->n_models, 0);
    assert_null(sy_table_find_model(t, "x", 1));
    sy_table_unref(t);

    /* null is the same as absent */
    t = from_json_ok("{'deployments':[{'name':'a','model':'m','base_url':'http://h',"
                     "'api_key':'k','api_version':null,'weight':null,'headers':null}]}");
    assert_null(t->deployments[0].api_version);
    assert_int_equal(t->deployments[0].weight, 1);
    sy_table_unref(t);
}

/* Every sample under tests/data/tables: good-* loads; bad-* fails with the message in its own
 * "_expect_error" key (an unknown key, so the table ignores it). */
static void test_sample_files(void **state)
{
    DIR *dir = opendir(data_dir());
    struct dirent *e;
    int good = 0, bad = 0;

    assert_non_null(dir);
    while ((e = readdir(dir)) != NULL) {
        if (strncmp(e->d_name, "good-", 5) == 0) {
            sy_table_unref(load_ok(e->d_name));
            good++;
            continue;
        }
        if (strncmp(e->d_name, "bad-", 4) != 0)
            continue;
        char *path = data_path(e->d_name), *err = NULL, *want;
        struct sy_table *t = NULL;
        json_t *j = json_load_file(path, 0, NULL);
        assert_non_null(j);
        const char *expect = json_string_value(json_object_get(j, "_expect_error"));
        if (expect == NULL)
            fail_msg("%s has no _expect_error", e->d_name);
        assert_int_equal(sy_table_load_file(path, &t, &err), -EINVAL);
        assert_null(t);
        assert_true(asprintf(&want, "%s: %s", path, expect) > 0);
        if (strcmp(err, want) != 0)
            fail_msg("%s\n  got:      %s\n  expected: %s", e->d_name, err, want);
        free(want);
        free(err);
        free(path);
        json_decref(j);
        bad++;
    }
    closedir(dir);
    assert_true(good >= 3);
    assert_true(bad >= 7);
}

static void test_load_file_errors(void **state)
{
    char *err = NULL;
    struct sy_table *t = NULL;
    char tmpl[] = "/tmp/sy-table-XXXXXX";

    assert_int_equal(sy_table_load_file("/nonexistent/table.json", &t, &err), -ENOENT);
    assert_string_equal(err, "/nonexistent/table.json: No such file or directory");
    SY_FREE(err);

    int fd = mkstemp(tmpl);
    assert_true(fd != -1);
    assert_int_equal(write(fd, " \n\t ", 4), 4);
    assert_int_equal(sy_table_load_file(tmpl, &t, &err), -EINVAL);
    char *want;
    assert_true(asprintf(&want, "%s: empty file", tmpl) > 0);
    assert_string_equal(err, want);
    SY_FREE(want);
    SY_FREE(err);

    /* JSON syntax errors say where */
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, "{\n  \"version\": 1,\n}", 19, 0), 19);
    assert_int_equal(sy_table_load_file(tmpl, &t, &err), -EINVAL);
    assert_true(asprintf(&want,
                         "%s: invalid JSON at line 3, column 1: string or '}' expected "
                         "near '}'",
                         tmpl) > 0);
    assert_string_equal(err, want);
    SY_FREE(want);
    SY_FREE(err);

    /* msgpack when the file does not start with '{' */
    struct sy_table *src = load_ok("good-full.json");
    struct sy_buf b = SY_BUF_INIT;
    encode(src, &b);
    assert_int_equal(ftruncate(fd, 0), 0);
    assert_int_equal(pwrite(fd, b.data, b.len, 0), (ssize_t)b.len);
    assert_int_equal(sy_table_load_file(tmpl, &t, &err), 0);
    assert_tables_equal(src, t);
    sy_table_unref(t);

    /* and its errors carry the path too */
    assert_int_equal(pwrite(fd, "\x92\x01\x02", 3, 0), 3);
    assert_int_equal(ftruncate(fd, 3), 0);
    assert_int_equal(sy_table_load_file(tmpl, &t, &err), -EINVAL);
    assert_true(asprintf(&want, "%s: expected a map at the top level, got array", tmpl) > 0);
    assert_string_equal(err, want);
    SY_FREE(want);
    SY_FREE(err);

    sy_buf_free(&b);
    sy_table_unref(src);
    close(fd);
    unlink(tmpl);
}

static void test_api_key_env(void **state)
{
#define ENV_DEP(extra) "{'deployments':[{'name':'a','model':'m','base_url':'https://h'," extra "}]}"
    setenv("SY_TEST_KEY", "sk-from-env", 1);
    struct sy_table *t = from_json_ok(ENV_DEP("'api_key_env':'SY_TEST_KEY'"));
    assert_string_equal(t->deployments[0].api_key, "sk-from-env");
    sy_table_unref(t);

    unsetenv("SY_TEST_KEY");
    expect_json_error(ENV_DEP("'api_key_env':'SY_TEST_KEY'"),
                      "deployments[0].api_key_env: environment variable SY_TEST_KEY is not set");
    setenv("SY_TEST_KEY", "", 1);
    expect_json_error(ENV_DEP("'api_key_env':'SY_TEST_KEY'"),
                      "deployments[0].api_key_env: environment variable SY_TEST_KEY is empty");
    unsetenv("SY_TEST_KEY");

    expect_json_error(ENV_DEP("'api_key':'k','api_key_env':'HOME'"),
                      "deployments[0]: give api_key or api_key_env, not both");
    expect_json_error(ENV_DEP("'api_key_env':3"), "deployments[0].api_key_env: expected a string");

    /* msgpack has no api_key_env: there it is an unknown key, and the key is missing */
    t = from_json_ok("{'deployments':[{'name':'a','model':'m','base_url':'https://h',"
                     "'api_key_env':null,'auth':'none'}]}");
    assert_null(t->deployments[0].api_key);
    sy_table_unref(t);
}

/* ---- validation ------------------------------------------------------------------------ */

#define DEP(name, extra)                                                                           \
    "{'name':'" name "','model':'m','base_url':'https://h.example','api_key':'k'" extra "}"
#define ONE_DEP(extra) "{'deployments':[" DEP("a", extra) "]}"
#define WITH_MODELS(models)                                                                        \
    "{'deployments':[" DEP("a", "") "," DEP("b", "") "],'models':" models "}"

static void test_validation_errors(void **state)
{
    static const struct {
        const char *json;
        const char *err;
    } cases[] = {
        /* top level */
        {"{'schema':2}", "schema: table schema 2 is not supported (this build reads schema 1)"},
        {"{'schema':'1'}", "schema: expected an integer, got string"},
        {"{'version':1.5}", "version: expected an unsigned integer, got float"},
        {"{'version':-1}", "version: must not be negative"},
        {"{'created_ms':true}", "created_ms: expected an integer, got boolean"},
        {"{'deployments':{}}", "deployments: expected an array, got map"},
        {"{'models':'x'}", "models: expected an array, got string"},
        {"{'deployments':['a']}", "deployments[0]: expected a map, got string"},
        /* names */
        {"{'deployments':[" DEP("", "") "]}", "deployments[0].name: must not be empty"},
        {"{'deployments':[{'model':'m','base_url':'http://h'}]}", "deployments[0].name: missing"},
        {"{'deployments':[" DEP("a", "") "," DEP("b", "") "," DEP("a", "") "]}",
         "deployments[2].name: duplicate \"a\" (also deployments[0])"},
        {"{'deployments':[" DEP("a\\n", "") "]}",
         "deployments[0].name: contains a control character (0x0a) at byte 1"},
        {WITH_MODELS("[{'name':'','targets':[{'deployment':'a'}]}]"),
         "models[0].name: must not be empty"},
        {WITH_MODELS("[{'name':'m','targets':[{'deployment':'a'}]},"
                     "{'name':'m','targets':[{'deployment':'b'}]}]"),
         "models[1].name: duplicate \"m\" (also models[0])"},
        /* required fields and types */
        {"{'deployments':[{'name':'a','base_url':'http://h'}]}", "deployments[0].model: missing"},
        {"{'deployments':[{'name':'a','model':'m'}]}", "deployments[0].base_url: missing"},
        {ONE_DEP(",'format':'gemini'"),
         "deployments[0].format: must be \"openai\", \"anthropic\" or \"azure\", got \"gemini\""},
        {ONE_DEP(",'auth':'basic'"),
         "deployments[0].auth: must be \"bearer\", \"header\", \"query\" or \"none\", got "
         "\"basic\""},
        {ONE_DEP(",'weight':-1"), "deployments[0].weight: must not be negative"},
        {ONE_DEP(",'weight':4294967296"), "deployments[0].weight: must be at most 4294967295"},
        {ONE_DEP(",'enabled':1"), "deployments[0].enabled: expected true or false, got integer"},
        {ONE_DEP(",'insecure':'yes'"),
         "deployments[0].insecure: expected true or false, got string"},
        {ONE_DEP(",'timeouts':{'connect_ms':'5s'}"),
         "deployments[0].timeouts.connect_ms: expected an unsigned integer, got string"},
        {ONE_DEP(",'timeouts':{'idle_ms':5000000000}"),
         "deployments[0].timeouts.idle_ms: must be at most 4294967295"},
        {ONE_DEP(",'timeouts':[]"), "deployments[0].timeouts: expected a map, got array"},
        {ONE_DEP(",'ca_file':''"), "deployments[0].ca_file: must not be empty"},
        {"{'deployments':[" DEP("a", "") "," DEP("b", ",'slot':0") "]}",
         "deployments[1].slot: 0 is already used by deployments[0]"},
        /* base_url */
        {"{'deployments':[{'name':'a','model':'m','api_key':'k','base_url':'ftp://h'}]}",
         "deployments[0].base_url: scheme must be http or https"},
        {"{'deployments':[{'name':'a','model':'m','api_key':'k',"
         "'base_url':'https://u:p@h.example'}]}",
         "deployments[0].base_url: must not have user info (user:password@); put the credential "
         "in api_key"},
        /* auth */
        {ONE_DEP(",'auth':'header'"), "deployments[0].auth_name: required when auth is \"header\""},
        {ONE_DEP(",'auth':'query','auth_name':''"),
         "deployments[0].auth_name: required when auth is \"query\""},
        {ONE_DEP(",'auth':'header','auth_name':'x api key'"),
         "deployments[0].auth_name: illegal character ' ' in a header name"},
        {ONE_DEP(",'auth':'query','auth_name':'k&x'"),
         "deployments[0].auth_name: illegal character '&' in a query parameter name"},
        {"{'deployments':[{'name':'a','model':'m','base_url':'http://h'}]}",
         "deployments[0].api_key: missing (auth is \"bearer\"; use auth \"none\" for a keyless "
         "provider)"},
        {"{'deployments':[{'name':'a','model':'m','format':'anthropic','base_url':'http://h'}]}",
         "deployments[0].api_key: missing (auth is \"header\"; use auth \"none\" for a keyless "
         "provider)"},
        /* header injection: CR/LF anywhere */
        {ONE_DEP(",'headers':{'X-A\\r\\nX-B':'1'}"),
         "deployments[0].headers[\"X-A\\r\\nX-B\"]: header name contains an illegal character "
         "(0x0d)"},
        {ONE_DEP(",'headers':{'X-A':'1\\nX-B: 2'}"),
         "deployments[0].headers[\"X-A\"]: header value contains a control character (0x0a) at "
         "byte 1"},
        {ONE_DEP(",'headers':{'X A':'1'}"),
         "deployments[0].headers[\"X A\"]: header name contains an illegal character (0x20)"},
        {ONE_DEP(",'headers':{'':'1'}"), "deployments[0].headers[\"\"]: empty header name"},
        {ONE_DEP(",'headers':{'X-A':1}"),
         "deployments[0].headers[\"X-A\"]: expected a string, got integer"},
        {ONE_DEP(",'headers':{'Content-Length':'1'}"),
         "deployments[0].headers[\"Content-Length\"]: header is set by the gateway and cannot be "
         "configured"},
        {"{'deployments':[{'name':'a','model':'m','base_url':'http://h','api_key':'k\\r\\nX: 1'}]}",
         "deployments[0].api_key: contains a control character (0x0d) at byte 1"},
        {ONE_DEP(",'api_version':'2024\\n'"),
         "deployments[0].api_version: contains a control character (0x0a) at byte 4"},
        {ONE_DEP(",'auth':'header','auth_name':'x-key\\r\\n'"),
         "deployments[0].auth_name: contains a control character (0x0d) at byte 5"},
        {"{'deployments':[{'name':'a','model':'m\\u0000','base_url':'http://h','api_key':'k'}]}",
         "invalid JSON at line 1, column 45: \\u0000 is not allowed without JSON_ALLOW_NUL near "
         "'\"m\\u0000\"'"},
        /* models and targets */
        {WITH_MODELS("[{'name':'m'}]"), "models[0].targets: missing"},
        {WITH_MODELS("[{'name':'m','targets':[]}]"),
         "models[0].targets: must list at least one deployment"},
        {WITH_MODELS("[{'name':'m','targets':{}}]"),
         "models[0].targets: expected an array, got map"},
        {WITH_MODELS("[{'name':'m','targets':['a']}]"),
         "models[0].targets[0]: expected a map, got string"},
        {WITH_MODELS("[{'name':'m','targets':[{'weight':1}]}]"),
         "models[0].targets[0].deployment: missing"},
        {WITH_MODELS("[{'name':'m','targets':[{'deployment':'a'},{'deployment':'x'}]}]"),
         "models[0].targets[1]: unknown deployment \"x\""},
        {WITH_MODELS("[{'name':'m','targets':[{'deployment':'a'},{'deployment':'a'}]}]"),
         "models[0].targets[1]: deployment \"a\" is already listed at targets[0]"},
        {WITH_MODELS("[{'name':'m','targets':[{'deployment':'a','weight':0},"
                     "{'deployment':'b','weight':0}]}]"),
         "models[0].targets: weights sum to 0; give at least one target a positive weight"},
        {WITH_MODELS("[{'name':'m','targets':[{'deployment':'a','weight':4294967295},"
                     "{'deployment':'b','weight':1}]}]"),
         "models[0].targets: weights sum to more than 4294967295"},
        {WITH_MODELS("[{'name':'m','targets':[{'deployment':'a','weight':'2'}]}]"),
         "models[0].targets[0].weight: expected an unsigned integer, got string"},
        {WITH_MODELS("[{'name':'m','targets':[{'deployment':'a'}]},"
                     "{'name':'n','slot':0,'targets':[{'deployment':'b'}]}]"),
         "models[1].slot: 0 is already used by models[0]"},
        /* JSON itself */
        {"[]", "expected a JSON object at the top level"},
        {"{'version':1", "invalid JSON at line 1, column 12: '}' expected near end of file"},
        {"{'version':1,'version':2}",
         "invalid JSON at line 1, column 22: duplicate object key near '\"version\"'"},
    };

    for (size_t i = 0; i < SY_ARRAY_LEN(cases); i++)
        expect_json_error(cases[i].json, cases[i].err);
}

/* A disabled deployment stays in the table, and its model's weight counts only enabled ones. */
static void test_disabled_deployment(void **state)
{
    struct sy_table *t = from_json_ok("{'deployments':[" DEP("a", ",'enabled':false") "," DEP(
        "b", "") "],"
                 "'models':[{'name':'m','targets':[{'deployment':'a','weight':5},{'deployment':'b'}"
                 "]}]}");
    assert_int_equal(t->n_deployments, 2);
    assert_false(t->deployments[0].enabled);
    const struct sy_model *m = model(t, "m");
    assert_int_equal(m->n_targets, 2);
    assert_int_equal(m->total_weight, 1);
    sy_table_unref(t);

    /* a disabled deployment needs no key yet */
    t = from_json_ok("{'deployments':[{'name':'a','model':'m','base_url':'http://h',"
                     "'enabled':false}]}");
    sy_table_unref(t);
}

/* ---- msgpack ----------------------------------------------------------------------------- */

static void test_round_trip(void **state)
{
    struct sy_table *a = load_ok("good-full.json"), *b = NULL;
    struct sy_buf m1 = SY_BUF_INIT, m2 = SY_BUF_INIT;
    char *err = NULL;

    encode(a, &m1);
    assert_int_equal(sy_table_decode(m1.data, m1.len, &b, &err), 0);
    assert_null(err);
    assert_tables_equal(a, b);
    encode(b, &m2); /* and the encoding is stable */
    assert_int_equal(m1.len, m2.len);
    assert_memory_equal(m1.data, m2.data, m1.len);

    /* insecure goes into the pool key, and survives the trip */
    struct sy_deployment *d = &a->deployments[4];
    d->origin.insecure = true;
    assert_int_equal(sy_origin_parse(d->base_url, &d->origin, &err), 0);
    assert_string_equal(d->origin.key,
                        "https://[fd00::1]:8443|ca=/etc/switchyard/staging-ca.pem|insecure");
    sy_table_unref(b);
    encode(a, &m1);
    assert_int_equal(sy_table_decode(m1.data, m1.len, &b, &err), 0);
    assert_tables_equal(a, b);

    sy_table_unref(a);
    sy_table_unref(b);
    sy_buf_free(&m1);
    sy_buf_free(&m2);
}

/* Pack an unknown key with a value of each msgpack type into the map being written. */
#define N_ODD 18
static void pack_odd_entries(msgpack_packer *pk)
{
    static const char bin[] = {0, 1, 2, 3};
    pack_cstr(pk, "x_nil");
    msgpack_pack_nil(pk);
    pack_cstr(pk, "x_bool");
    msgpack_pack_true(pk);
    pack_cstr(pk, "x_uint");
    msgpack_pack_uint64(pk, UINT64_MAX);
    pack_cstr(pk, "x_int");
    msgpack_pack_int64(pk, INT64_MIN);
    pack_cstr(pk, "x_f32");
    msgpack_pack_float(pk, 1.5f);
    pack_cstr(pk, "x_f64");
    msgpack_pack_double(pk, 2.5);
    pack_cstr(pk, "x_str");
    pack_cstr(pk, "with\r\ncontrol\0chars");
    pack_cstr(pk, "x_bin");
    msgpack_pack_bin_with_body(pk, bin, sizeof(bin));
    pack_cstr(pk, "x_ext");
    msgpack_pack_ext_with_body(pk, bin, 3, 42); /* ext8 */
    pack_cstr(pk, "x_fixext");
    msgpack_pack_ext_with_body(pk, bin, 4, -1); /* fixext4: a timestamp */
    pack_cstr(pk, "x_array");
    msgpack_pack_array(pk, 2);
    msgpack_pack_array(pk, 0);
    msgpack_pack_map(pk, 1);
    pack_cstr(pk, "policy");
    pack_cstr(pk, "round_robin");
    pack_cstr(pk, "x_map");
    msgpack_pack_map(pk, 1);
    msgpack_pack_int(pk, 7);
    msgpack_pack_array(pk, 1);
    msgpack_pack_nil(pk);
    pack_cstr(pk, "x_ext16"); /* and the wider length forms */
    static char big[70000];
    msgpack_pack_ext_with_body(pk, big, 300, 1);
    pack_cstr(pk, "x_bin16");
    msgpack_pack_bin_with_body(pk, big, 300);
    pack_cstr(pk, "x_str32");
    msgpack_pack_str_with_body(pk, big, sizeof(big));
    pack_cstr(pk, "x_array16");
    msgpack_pack_array(pk, 20);
    for (int i = 0; i < 20; i++)
        msgpack_pack_nil(pk);
    msgpack_pack_int(pk, 12); /* a key that is not a string */
    pack_cstr(pk, "int key");
    msgpack_pack_nil(pk); /* a nil key */
    msgpack_pack_bin_with_body(pk, bin, 2);
}

static void test_unknown_keys_skipped(void **state)
{
    struct sy_buf b = SY_BUF_INIT;
    msgpack_packer pk;
    struct sy_table *t = NULL;
    char *err = NULL;

    msgpack_packer_init(&pk, &b, buf_write);
    msgpack_pack_map(&pk, 4 + N_ODD);
    pack_odd_entries(&pk);
    pack_cstr(&pk, "schema");
    msgpack_pack_int(&pk, SY_TABLE_SCHEMA);
    pack_cstr(&pk, "models"); /* before deployments: key order does not matter */
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 2 + N_ODD);
    pack_cstr(&pk, "name");
    pack_cstr(&pk, "gpt");
    pack_odd_entries(&pk);
    pack_cstr(&pk, "targets");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 2 + N_ODD);
    pack_odd_entries(&pk);
    pack_cstr(&pk, "deployment");
    pack_cstr(&pk, "d");
    pack_cstr(&pk, "weight");
    msgpack_pack_uint32(&pk, 9);
    pack_cstr(&pk, "version");
    msgpack_pack_uint64(&pk, 5);
    pack_cstr(&pk, "deployments");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 5 + N_ODD);
    pack_cstr(&pk, "name");
    pack_cstr(&pk, "d");
    pack_cstr(&pk, "model");
    pack_cstr(&pk, "m");
    pack_odd_entries(&pk);
    pack_cstr(&pk, "base_url");
    pack_cstr(&pk, "http://h");
    pack_cstr(&pk, "auth");
    pack_cstr(&pk, "none");
    pack_cstr(&pk, "timeouts");
    msgpack_pack_map(&pk, 1 + N_ODD);
    pack_odd_entries(&pk);
    pack_cstr(&pk, "total_ms");
    msgpack_pack_uint32(&pk, 1234);

    assert_int_equal(sy_table_decode(b.data, b.len, &t, &err), 0);
    assert_null(err);
    assert_int_equal(t->version, 5);
    assert_string_equal(t->deployments[0].name, "d");
    assert_int_equal(t->deployments[0].timeouts.total_ms, 1234);
    const struct sy_model *m = model(t, "gpt");
    assert_int_equal(m->n_targets, 1);
    assert_int_equal(m->targets[0].weight, 9);
    assert_int_equal(m->total_weight, 9);
    sy_table_unref(t);
    sy_buf_free(&b);
}

static void expect_decode_error(const char *data, size_t len, const char *expected)
{
    struct sy_table *t = (struct sy_table *)1;
    char *err = NULL;
    assert_int_equal(sy_table_decode(data, len, &t, &err), -EINVAL);
    assert_null(t);
    if (strcmp(err, expected) != 0)
        fail_msg("got:      %s\n  expected: %s", err, expected);
    free(err);
}

static void test_garbage_rejected(void **state)
{
    struct sy_table *src = load_ok("good-full.json"), *t;
    struct sy_buf b = SY_BUF_INIT;
    char *err;

    /* every truncation of a valid table */
    encode(src, &b);
    for (size_t n = 0; n < b.len; n++) {
        t = (struct sy_table *)1;
        err = NULL;
        assert_int_equal(sy_table_decode(b.data, n, &t, &err), -EINVAL);
        assert_null(t);
        assert_non_null(err);
        free(err);
    }
    /* every byte of it flipped: any outcome but a crash, a leak or a bad read */
    for (size_t i = 0; i < b.len; i++) {
        static const unsigned char xors[] = {0xff, 0x01, 0x10, 0x80};
        for (size_t x = 0; x < SY_ARRAY_LEN(xors); x++) {
            b.data[i] ^= (char)xors[x];
            err = NULL;
            t = NULL;
            if (sy_table_decode(b.data, b.len, &t, &err) == 0)
                sy_table_unref(t);
            else
                assert_non_null(err);
            free(err);
            b.data[i] ^= (char)xors[x];
        }
    }
    /* trailing bytes */
    sy_buf_append(&b, "\xc0", 1);
    expect_decode_error(b.data, b.len, "1 unexpected bytes after the table");

    expect_decode_error("", 0, "empty table");
    expect_decode_error("\xc1", 1, "invalid msgpack byte 0xc1 at offset 0");
    expect_decode_error("\x81\xa1x\xc1", 4, "invalid msgpack byte 0xc1 at offset 3");
    /* sizes that claim more than there is must not be believed */
    expect_decode_error("\xdd\xff\xff\xff\xff\xc0", 6, "truncated msgpack (ends inside the table)");
    expect_decode_error("\xdf\xff\xff\xff\xff", 5, "truncated msgpack (ends inside the table)");
    expect_decode_error("\xdb\xff\xff\xff\xf0xx", 7, "truncated msgpack (ends inside the table)");
    expect_decode_error("\xc9\xff\xff\xff\xf0\x01", 6, "truncated msgpack (ends inside the table)");
    expect_decode_error("\xa5", 1, "truncated msgpack (ends inside the table)");
    expect_decode_error("\xa0", 1, "expected a map at the top level, got string");
    expect_decode_error("\x80", 1, "schema: missing (this build reads schema 1)");
    expect_decode_error("\x81\xa6schema\x02", 9,
                        "schema: table schema 2 is not supported (this build reads schema 1)");
    expect_decode_error("\x82\xa6schema\x01\xa6schema\x01", 17, "schema: given twice");
    expect_decode_error("\x81\xa6schema\x01", 9, "version: missing");
    static const char bin_name[] = "\x83\xa6schema\x01\xa7version\xcf\xff\xff\xff\xff\xff"
                                   "\xff\xff\xff\xa6models\x91\x81\xa4name\xc4\x01x";
    expect_decode_error(bin_name, sizeof(bin_name) - 1,
                        "models[0].name: expected a string, got binary");
    static const char twice[] = "\x83\xa6schema\x01\xa7version\x01\xab"
                                "deployments\x91\x82"
                                "\xa4name\xa1x\xa4name\xa1y";
    expect_decode_error(twice, sizeof(twice) - 1, "deployments[0].name: given twice");
    static const char str_nul[] = "\x83\xa6schema\x01\xa7version\x01\xa6models\x91\x81"
                                  "\xa4name\xa3x\0y";
    expect_decode_error(str_nul, sizeof(str_nul) - 1,
                        "models[0].name: contains a control character (0x00) at byte 1");

    /* deep nesting, as an unknown value */
    struct sy_buf deep = SY_BUF_INIT;
    static const char head[] = "\x83\xa6schema\x01\xa7version\x01\xa4"
                               "deep";
    sy_buf_append(&deep, head, sizeof(head) - 1);
    for (int i = 0; i < 100; i++)
        sy_buf_append(&deep, "\x91", 1);
    sy_buf_append(&deep, "\xc0", 1);
    expect_decode_error(deep.data, deep.len, "msgpack nested more than 24 levels deep");
    sy_buf_free(&deep);

    sy_buf_free(&b);
    sy_table_unref(src);
}

/* ---- client keys, limits and prices ------------------------------------------------------- */

#define H64(c) c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c /* 64 of <c> */
#define HASH_A H64("a1")
#define HASH_0 H64("00")
#define HASH_F H64("ff")

/* A table with keys, limits and prices, in the JSON form. */
/* clang-format off */
static const char keys_table[] =
    "{'version':8,'require_keys':true,"
    "'deployments':[" DEP("a", ",'limits':{'rpm':600,'tpm':100000,'max_concurrency':20},"
                               "'price':{'input':2.5,'output':10}") "," DEP("b", "") "],"
    "'models':[{'name':'gpt','targets':[{'deployment':'a'}]},"
    "{'name':'cheap','targets':[{'deployment':'b'}]}],"
    "'keys':["
    "{'hash':'" HASH_A "','id':17,'name':'ci bot','prefix':'sk-sy-AbCd','agent':'ci',"
    "'user':'ana','tier':'gold','models':['gpt','later-model'],'expires_ms':1900000000000,"
    "'rpm':60,'tpm':50000,'comment':'ignored'},"
    "{'hash':'" HASH_F "','id':18},"
    "{'hash':'" HASH_0 "','id':19,'models':[],'slot':7}]}";
/* clang-format on */

static void test_keys_limits_and_prices(void **state)
{
    struct sy_table *t = from_json_ok(keys_table);
    uint8_t h[SY_KEY_HASH_LEN];

    assert_true(t->require_keys);
    const struct sy_deployment *d = find_dep(t, "a");
    assert_int_equal(d->limits.rpm, 600);
    assert_int_equal(d->limits.tpm, 100000);
    assert_int_equal(d->limits.max_concurrency, 20);
    assert_true(d->price.input == 2.5);
    assert_true(d->price.output == 10.0); /* an integer is a price too */
    /* defaults: no limits, no price */
    d = find_dep(t, "b");
    assert_int_equal(d->limits.rpm, 0);
    assert_int_equal(d->limits.tpm, 0);
    assert_int_equal(d->limits.max_concurrency, 0);
    assert_true(d->price.input == 0 && d->price.output == 0);

    /* keys are sorted by hash */
    assert_int_equal(t->n_keys, 3);
    assert_int_equal(t->keys[0].id, 19);
    assert_int_equal(t->keys[1].id, 17);
    assert_int_equal(t->keys[2].id, 18);

    memset(h, 0xa1, sizeof(h));
    const struct sy_key *k = sy_table_find_key(t, h);
    assert_non_null(k);
    assert_int_equal(k->id, 17);
    assert_string_equal(k->name, "ci bot");
    assert_string_equal(k->prefix, "sk-sy-AbCd");
    assert_string_equal(k->agent, "ci");
    assert_string_equal(k->user, "ana");
    assert_string_equal(k->tier, "gold");
    assert_int_equal(k->expires_ms, 1900000000000);
    assert_int_equal(k->rpm, 60);
    assert_int_equal(k->tpm, 50000);
    assert_int_equal(k->slot, 0); /* its index in the list given */
    assert_int_equal(k->n_models, 2);
    assert_true(sy_key_allows_model(k, "gpt", 3));
    assert_true(sy_key_allows_model(k, "later-model", 11)); /* need not exist yet */
    assert_false(sy_key_allows_model(k, "cheap", 5));
    assert_false(sy_key_allows_model(k, "gp", 2));
    assert_false(sy_key_allows_model(k, "GPT", 3));
    assert_true(sy_key_allows_model(k, "gpt\",", 3)); /* counted, no NUL needed */

    memset(h, 0xff, sizeof(h));
    k = sy_table_find_key(t, h);
    assert_non_null(k);
    assert_null(k->models); /* absent: every model */
    assert_null(k->name);
    assert_int_equal(k->expires_ms, 0);
    assert_int_equal(k->slot, 1);
    assert_true(sy_key_allows_model(k, "anything", 8));

    memset(h, 0, sizeof(h));
    k = sy_table_find_key(t, h);
    assert_non_null(k);
    assert_non_null(k->models); /* empty: no model at all */
    assert_int_equal(k->n_models, 0);
    assert_false(sy_key_allows_model(k, "gpt", 3));
    assert_int_equal(k->slot, 7);

    memset(h, 0xa1, sizeof(h));
    h[31] = 0xa2;
    assert_null(sy_table_find_key(t, h));
    memset(h, 0x01, sizeof(h));
    assert_null(sy_table_find_key(t, h));

    /* round trip: equal, and the encoding is stable */
    struct sy_buf m1 = SY_BUF_INIT, m2 = SY_BUF_INIT;
    struct sy_table *back = NULL;
    char *err = NULL;
    encode(t, &m1);
    assert_int_equal(sy_table_decode(m1.data, m1.len, &back, &err), 0);
    assert_tables_equal(t, back);
    encode(back, &m2);
    assert_int_equal(m1.len, m2.len);
    assert_memory_equal(m1.data, m2.data, m1.len);
    sy_table_unref(back);

    /* defaults: no keys, keys not required, and they survive the trip too */
    sy_table_unref(t);
    t = load_ok("good-minimal.json");
    assert_false(t->require_keys);
    assert_int_equal(t->n_keys, 0);
    assert_null(sy_table_find_key(t, h));
    encode(t, &m1);
    assert_int_equal(sy_table_decode(m1.data, m1.len, &back, &err), 0);
    assert_tables_equal(t, back);
    sy_table_unref(back);
    sy_table_unref(t);
    sy_buf_free(&m1);
    sy_buf_free(&m2);
}

static void test_keys_limits_and_prices_validation(void **state)
{
    static const struct {
        const char *json;
        const char *err;
    } cases[] = {
        {"{'require_keys':1}", "require_keys: expected true or false, got integer"},
        {"{'keys':{}}", "keys: expected an array, got map"},
        {"{'keys':['x']}", "keys[0]: expected a map, got string"},
        {"{'keys':[{'id':1}]}", "keys[0].hash: missing"},
        {"{'keys':[{'hash':null}]}", "keys[0].hash: missing"},
        {"{'keys':[{'hash':7}]}", "keys[0].hash: expected a string, got integer"},
        {"{'keys':[{'hash':'abc'}]}",
         "keys[0].hash: must be 64 lowercase hex digits (the SHA-256 of the key), got 3 "
         "characters"},
        {"{'keys':[{'hash':'" H64("A1") "'}]}",
         "keys[0].hash: must be lowercase hex digits: 'A' at byte 0"},
        {"{'keys':[{'hash':'" H64("0g") "'}]}",
         "keys[0].hash: must be lowercase hex digits: 'g' at byte 1"},
        {"{'keys':[{'hash':'" HASH_A "'},{'hash':'" HASH_0 "'},{'hash':'" HASH_A "'}]}",
         "keys[2].hash: duplicate (also keys[0])"},
        {"{'keys':[{'hash':'" HASH_A "'},{'hash':'" HASH_0 "','slot':0}]}",
         "keys[1].slot: 0 is already used by keys[0]"},
        {"{'keys':[{'hash':'" HASH_A "','id':-1}]}", "keys[0].id: must not be negative"},
        {"{'keys':[{'hash':'" HASH_A "','name':3}]}",
         "keys[0].name: expected a string, got integer"},
        {"{'keys':[{'hash':'" HASH_A "','prefix':'sk\\n'}]}",
         "keys[0].prefix: contains a control character (0x0a) at byte 2"},
        {"{'keys':[{'hash':'" HASH_A "','models':'gpt'}]}",
         "keys[0].models: expected an array, got string"},
        {"{'keys':[{'hash':'" HASH_A "','models':['gpt','']}]}",
         "keys[0].models[1]: must not be empty"},
        {"{'keys':[{'hash':'" HASH_A "','models':[1]}]}",
         "keys[0].models[0]: expected a string, got integer"},
        {"{'keys':[{'hash':'" HASH_A "','expires_ms':-5}]}",
         "keys[0].expires_ms: must not be negative (0 = never expires)"},
        {"{'keys':[{'hash':'" HASH_A "','expires_ms':'soon'}]}",
         "keys[0].expires_ms: expected an integer, got string"},
        {"{'keys':[{'hash':'" HASH_A "','rpm':4294967296}]}",
         "keys[0].rpm: must be at most 4294967295"},
        {"{'keys':[{'hash':'" HASH_A "','tpm':-1}]}", "keys[0].tpm: must not be negative"},
        {ONE_DEP(",'limits':{'rpm':-1}"), "deployments[0].limits.rpm: must not be negative"},
        {ONE_DEP(",'limits':{'max_concurrency':'8'}"),
         "deployments[0].limits.max_concurrency: expected an unsigned integer, got string"},
        {ONE_DEP(",'limits':[]"), "deployments[0].limits: expected a map, got array"},
        {ONE_DEP(",'price':{'input':-0.5}"), "deployments[0].price.input: must not be negative"},
        {ONE_DEP(",'price':{'output':-1}"), "deployments[0].price.output: must not be negative"},
        {ONE_DEP(",'price':{'output':'1.5'}"),
         "deployments[0].price.output: expected a number, got string"},
        {ONE_DEP(",'price':3"), "deployments[0].price: expected a map, got integer"},
    };

    for (size_t i = 0; i < SY_ARRAY_LEN(cases); i++)
        expect_json_error(cases[i].json, cases[i].err);

    /* non-finite prices can only come as msgpack */
    struct sy_buf b = SY_BUF_INIT;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, buf_write);
    msgpack_pack_map(&pk, 3);
    pack_cstr(&pk, "schema");
    msgpack_pack_int(&pk, SY_TABLE_SCHEMA);
    pack_cstr(&pk, "version");
    msgpack_pack_int(&pk, 1);
    pack_cstr(&pk, "deployments");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 5);
    pack_cstr(&pk, "name");
    pack_cstr(&pk, "a");
    pack_cstr(&pk, "model");
    pack_cstr(&pk, "m");
    pack_cstr(&pk, "base_url");
    pack_cstr(&pk, "http://h");
    pack_cstr(&pk, "auth");
    pack_cstr(&pk, "none");
    pack_cstr(&pk, "price");
    msgpack_pack_map(&pk, 1);
    pack_cstr(&pk, "input");
    msgpack_pack_double(&pk, 1.0 / 0.0);
    expect_decode_error(b.data, b.len, "deployments[0].price.input: must be a finite number");
    sy_buf_free(&b);
}

/* ---- origins --------------------------------------------------------------------------- */

static void test_origin_parse(void **state)
{
    static const struct {
        const char *url;
        bool tls;
        unsigned port;
        const char *host, *host_header, *path, *key;
    } good[] = {
        {"https://api.openai.com", true, 443, "api.openai.com", "api.openai.com", "",
         "https://api.openai.com:443"},
        {"https://api.openai.com/", true, 443, "api.openai.com", "api.openai.com", "",
         "https://api.openai.com:443"},
        {"HTTPS://API.OpenAI.com:443/v1/", true, 443, "api.openai.com", "api.openai.com", "/v1",
         "https://api.openai.com:443"},
        {"http://localhost", false, 80, "localhost", "localhost", "", "http://localhost:80"},
        {"http://localhost:80/a/b//", false, 80, "localhost", "localhost", "/a/b",
         "http://localhost:80"},
        {"http://10.0.0.1:8080/v1", false, 8080, "10.0.0.1", "10.0.0.1:8080", "/v1",
         "http://10.0.0.1:8080"},
        {"https://h.example:80", true, 80, "h.example", "h.example:80", "", "https://h.example:80"},
        {"http://h.example:443", false, 443, "h.example", "h.example:443", "",
         "http://h.example:443"},
        {"https://[::1]", true, 443, "::1", "[::1]", "", "https://[::1]:443"},
        {"http://[2001:DB8::A]:8080/p", false, 8080, "2001:db8::a", "[2001:db8::a]:8080", "/p",
         "http://[2001:db8::a]:8080"},
        {"https://my_host.internal:65535/x%20y", true, 65535, "my_host.internal",
         "my_host.internal:65535", "/x%20y", "https://my_host.internal:65535"},
    };
    static const struct {
        const char *url, *err;
    } bad[] = {
        {"", "is empty"},
        {"api.openai.com", "scheme must be http or https"},
        {"ftp://h", "scheme must be http or https"},
        {"https:/h", "scheme must be http or https"},
        {"https://", "missing host"},
        {"https:///v1", "missing host"},
        {"https://:443", "missing host"},
        {"https://user:pw@h.example", "must not have user info (user:password@); put the "
                                      "credential in api_key"},
        {"https://h.example/v1?key=1", "must not have a query (?...)"},
        {"https://h.example/v1#frag", "must not have a fragment (#...)"},
        {"https://h.example/v 1", "contains a space, control or non-ASCII character at byte 19"},
        {" https://h.example", "contains a space, control or non-ASCII character at byte 0"},
        {"https://h.example\r\n", "contains a space, control or non-ASCII character at byte 17"},
        {"https://h\xc3\xa9.example", "contains a space, control or non-ASCII character at byte 9"},
        {"https://h.example:", "port must be a number from 1 to 65535"},
        {"https://h.example:0", "port must be a number from 1 to 65535"},
        {"https://h.example:65536", "port must be a number from 1 to 65535"},
        {"https://h.example:99999999999999999999999", "port must be a number from 1 to 65535"},
        {"https://h.example:-1", "port must be a number from 1 to 65535"},
        {"https://h.example:8a", "port must be a number from 1 to 65535"},
        {"https://h,example", "host contains an invalid character ','"},
        {"https://[::1", "IPv6 address has no closing ']'"},
        {"https://[]", "invalid IPv6 address"},
        {"https://[::g]", "invalid IPv6 address"},
        {"https://[fe80::1%25eth0]", "invalid IPv6 address"},
        {"https://[::1]x", "unexpected characters after the IPv6 address"},
        {"https://h.example/{x}", "path contains an invalid character '{'"},
    };

    for (size_t i = 0; i < SY_ARRAY_LEN(good); i++) {
        struct sy_origin o = {0};
        char *err = NULL;
        if (sy_origin_parse(good[i].url, &o, &err) != 0)
            fail_msg("%s: %s", good[i].url, err);
        assert_int_equal(o.tls, good[i].tls);
        assert_int_equal(o.port, good[i].port);
        assert_string_equal(o.host, good[i].host);
        assert_string_equal(o.host_header, good[i].host_header);
        assert_string_equal(o.path_prefix, good[i].path);
        assert_string_equal(o.key, good[i].key);
        assert_null(o.ca_file);
        assert_false(o.insecure);
        sy_origin_free(&o);
    }
    for (size_t i = 0; i < SY_ARRAY_LEN(bad); i++) {
        struct sy_origin o = {0};
        char *err = NULL;
        if (sy_origin_parse(bad[i].url, &o, &err) == 0)
            fail_msg("accepted %s", bad[i].url);
        if (strcmp(err, bad[i].err) != 0)
            fail_msg("%s\n  got:      %s\n  expected: %s", bad[i].url, err, bad[i].err);
        assert_null(o.host);
        assert_null(o.key);
        free(err);
    }
}

static void test_origin_tls_settings_in_key(void **state)
{
    struct sy_origin o = {0};
    char *err = NULL;

    o.ca_file = sy_xstrdup("/etc/ca.pem");
    o.insecure = true;
    assert_int_equal(sy_origin_parse("https://H.example:8443/v1", &o, &err), 0);
    assert_string_equal(o.key, "https://h.example:8443|ca=/etc/ca.pem|insecure");
    assert_string_equal(o.ca_file, "/etc/ca.pem");
    assert_true(o.insecure);

    /* parsing again replaces the URL parts and keeps the TLS settings */
    o.insecure = false;
    assert_int_equal(sy_origin_parse("https://other.example", &o, &err), 0);
    assert_string_equal(o.key, "https://other.example:443|ca=/etc/ca.pem");
    assert_string_equal(o.host, "other.example");

    /* a plain-HTTP origin ignores them: no TLS, one pool */
    assert_int_equal(sy_origin_parse("http://other.example", &o, &err), 0);
    assert_string_equal(o.key, "http://other.example:80");

    /* a failed parse leaves <o> as it was */
    assert_int_equal(sy_origin_parse("ftp://x", &o, &err), -EINVAL);
    free(err);
    assert_string_equal(o.host, "other.example");
    sy_origin_free(&o);
    assert_null(o.ca_file);

    /* and from a table: ca_file and insecure are read before the URL */
    struct sy_table *t =
        from_json_ok("{'deployments':[" DEP("a", ",'ca_file':'/ca.pem','insecure':true") "]}");
    assert_string_equal(t->deployments[0].origin.key, "https://h.example:443|ca=/ca.pem|insecure");
    sy_table_unref(t);
}

/* ---- look-up and lifetime -------------------------------------------------------------- */

/* Free what a decoded policy owns (the table does it in sy_table_unref()). */
static void policy_free_for_test(struct sy_policy *p)
{
    for (uint32_t i = 0; i < p->n_rules; i++) {
        for (uint32_t j = 0; j < p->rules[i].n_conds; j++) {
            for (uint32_t k = 0; k < p->rules[i].conds[j].n_values; k++)
                free(p->rules[i].conds[j].values[k]);
            free(p->rules[i].conds[j].values);
            free(p->rules[i].conds[j].name);
        }
        free(p->rules[i].conds);
        free(p->rules[i].targets);
        free(p->rules[i].name);
    }
    free(p->rules);
    free(p->fallbacks);
    free(p->statuses);
}

/* ---- policies -------------------------------------------------------------------------- */

/* A table of three deployments (d1, d2, d3) and the models in <models>, a JSON array
 * (single-quoted), for the policy tests. */
static char *policy_table(const char *models)
{
    char *s;
    assert_true(
        asprintf(&s,
                 "{'deployments': ["
                 "{'name': 'd1', 'model': 'm', 'base_url': 'http://h:1/v1', 'auth': 'none'},"
                 "{'name': 'd2', 'model': 'm', 'base_url': 'http://h:2/v1', 'auth': 'none'},"
                 "{'name': 'd3', 'model': 'm', 'base_url': 'http://h:3/v1', 'auth': 'none'}"
                 "], 'models': %s}",
                 models) > 0);
    return s;
}

static struct sy_table *policy_ok(const char *models)
{
    char *s = policy_table(models);
    struct sy_table *t = from_json_ok(s);
    free(s);
    return t;
}

static void expect_policy_error(const char *models, const char *expected)
{
    char *s = policy_table(models);
    expect_json_error(s, expected);
    free(s);
}

static void assert_default_policy(const struct sy_policy *p)
{
    assert_int_equal(p->balance, SY_BALANCE_WEIGHTED);
    assert_int_equal(p->retry.attempts, 2);
    assert_int_equal(p->retry.backoff_ms, 100);
    assert_int_equal(p->retry.max_backoff_ms, 2000);
    assert_int_equal(p->retry.retry_after_cap_ms, 5000);
    assert_int_equal(p->retry.budget_percent, 20);
    assert_int_equal(p->retry.triggers, SY_TRIGGER_DEFAULT);
    assert_int_equal(p->circuit.window_ms, 30000);
    assert_int_equal(p->circuit.min_requests, 20);
    assert_int_equal(p->circuit.error_percent, 50);
    assert_int_equal(p->circuit.consecutive, 5);
    assert_int_equal(p->circuit.cooldown_ms, 30000);
    assert_int_equal(p->circuit.half_open_probes, 1);
    assert_int_equal(p->fallback_triggers, SY_TRIGGER_DEFAULT);
    assert_int_equal(p->n_fallbacks, 0);
    assert_int_equal(p->n_statuses, 0);
    assert_int_equal(p->shed_percent, 80);
    assert_int_equal(p->max_timeout_ms, 0);
    assert_int_equal(p->n_rules, 0);
}

static void test_policy_defaults(void **state)
{
    /* no policy, an empty one and a nil one: the same defaults */
    struct sy_table *t =
        policy_ok("[{'name': 'a', 'targets': [{'deployment': 'd1'}]},"
                  " {'name': 'b', 'targets': [{'deployment': 'd1'}], 'policy': {}},"
                  " {'name': 'c', 'targets': [{'deployment': 'd1'}],"
                  "  'policy': null, 'fallbacks': null}]");
    for (uint32_t i = 0; i < t->n_models; i++)
        assert_default_policy(&t->models[i].policy);
    struct sy_policy p;
    sy_policy_init(&p);
    assert_default_policy(&p);
    /* a key left out keeps its default, the others are set */
    sy_table_unref(t);
    t = policy_ok("[{'name': 'a', 'targets': [{'deployment': 'd1'}],"
                  "  'policy': {'retry': {'attempts': 4}, 'circuit': {'consecutive': 0}}}]");
    const struct sy_policy *q = &t->models[0].policy;
    assert_int_equal(q->retry.attempts, 4);
    assert_int_equal(q->retry.backoff_ms, 100);
    assert_int_equal(q->retry.triggers, SY_TRIGGER_DEFAULT);
    assert_int_equal(q->circuit.consecutive, 0);
    assert_int_equal(q->circuit.window_ms, 30000);
    sy_table_unref(t);
}

static void test_policy_every_field(void **state)
{
    struct sy_table *t = load_ok("good-policy.json");
    const struct sy_model *gpt = model(t, "gpt-4o"), *claude = model(t, "claude"),
                          *qwen = model(t, "qwen");
    const struct sy_policy *p = &gpt->policy;

    assert_int_equal(p->balance, SY_BALANCE_LATENCY);
    assert_int_equal(p->retry.attempts, 3);
    assert_int_equal(p->retry.backoff_ms, 50);
    assert_int_equal(p->retry.max_backoff_ms, 1000);
    assert_int_equal(p->retry.retry_after_cap_ms, 3000);
    assert_int_equal(p->retry.budget_percent, 10);
    assert_int_equal(p->retry.triggers, SY_TRIGGER_CONNECT | SY_TRIGGER_TIMEOUT | SY_TRIGGER_429 |
                                            SY_TRIGGER_5XX | SY_TRIGGER_STATUS);
    assert_int_equal(p->circuit.window_ms, 10000);
    assert_int_equal(p->circuit.min_requests, 10);
    assert_int_equal(p->circuit.error_percent, 40);
    assert_int_equal(p->circuit.consecutive, 3);
    assert_int_equal(p->circuit.cooldown_ms, 15000);
    assert_int_equal(p->circuit.half_open_probes, 2);
    assert_int_equal(p->fallback_triggers, SY_TRIGGER_CONNECT | SY_TRIGGER_TIMEOUT |
                                               SY_TRIGGER_429 | SY_TRIGGER_5XX |
                                               SY_TRIGGER_CONTEXT_LENGTH);
    assert_int_equal(p->n_statuses, 2);
    assert_int_equal(p->statuses[0], 408);
    assert_int_equal(p->statuses[1], 409);
    assert_int_equal(p->shed_percent, 90);
    assert_int_equal(p->max_timeout_ms, 120000);

    /* fallbacks resolve to indices into the sorted models */
    assert_int_equal(p->n_fallbacks, 2);
    assert_ptr_equal(&t->models[p->fallbacks[0]], claude);
    assert_ptr_equal(&t->models[p->fallbacks[1]], qwen);
    assert_int_equal(claude->policy.n_fallbacks, 1);
    assert_ptr_equal(&t->models[claude->policy.fallbacks[0]], qwen);
    assert_int_equal(claude->policy.balance, SY_BALANCE_ROUND_ROBIN);
    assert_int_equal(claude->policy.retry.attempts, 1);
    assert_default_policy(&qwen->policy);

    /* rules, their conditions in a fixed order and their targets resolved */
    assert_int_equal(p->n_rules, 3);
    const struct sy_rule *r = &p->rules[0];
    assert_string_equal(r->name, "simple");
    assert_int_equal(r->n_conds, 3);
    assert_int_equal(r->conds[0].op, SY_RULE_TOKENS_BELOW);
    assert_int_equal(r->conds[0].value, 1500);
    assert_int_equal(r->conds[1].op, SY_RULE_HAS_TOOLS);
    assert_int_equal(r->conds[1].value, 0);
    assert_int_equal(r->conds[2].op, SY_RULE_COMPLEXITY_BELOW);
    assert_int_equal(r->conds[2].value, 250);
    assert_int_equal(r->model, -1);
    assert_int_equal(r->n_targets, 1);
    assert_string_equal(t->deployments[r->targets[0].deployment].name, "gpt-mini");
    assert_int_equal(r->targets[0].weight, 1);

    r = &p->rules[1];
    assert_string_equal(r->name, "long");
    assert_int_equal(r->n_conds, 1);
    assert_int_equal(r->conds[0].op, SY_RULE_TOKENS_ABOVE);
    assert_int_equal(r->conds[0].value, 100000);
    assert_ptr_equal(&t->models[r->model], qwen);
    assert_int_equal(r->n_targets, 0);

    r = &p->rules[2];
    assert_int_equal(r->n_conds, 2);
    assert_int_equal(r->conds[0].op, SY_RULE_HEADER);
    assert_string_equal(r->conds[0].name, "x-priority"); /* lowercased */
    assert_int_equal(r->conds[0].n_values, 2);
    assert_string_equal(r->conds[0].values[0], "high");
    assert_string_equal(r->conds[0].values[1], "urgent");
    assert_int_equal(r->conds[1].op, SY_RULE_TIER);
    assert_int_equal(r->conds[1].n_values, 1); /* a single string is a list of one */
    assert_string_equal(r->conds[1].values[0], "gold");
    assert_int_equal(r->n_targets, 2);
    assert_string_equal(t->deployments[r->targets[1].deployment].name, "gpt-4o-west");
    assert_int_equal(r->targets[1].weight, 0);
    sy_table_unref(t);

    /* the rest of the conditions, and the older name of balance */
    t = policy_ok("[{'name': 'a', 'targets': [{'deployment': 'd1'}],"
                  "  'policy': {'strategy': 'cost', 'rules': [{'when': {"
                  "    'user': ['ann', 'bob'], 'agent': 'bot', 'messages_above': 3,"
                  "    'messages_below': 9, 'has_images': true, 'complexity_above': 1,"
                  "    'header': {'x-a': '1', 'X-B': ['2', '3']}},"
                  "   'target': {'model': 'b'}, 'name': 'all'}]}},"
                  " {'name': 'b', 'targets': [{'deployment': 'd1'}]}]");
    p = &model(t, "a")->policy;
    assert_int_equal(p->balance, SY_BALANCE_COST);
    r = &p->rules[0];
    assert_ptr_equal(&t->models[r->model], model(t, "b"));
    static const enum sy_rule_op ops[] = {
        SY_RULE_MESSAGES_BELOW, SY_RULE_MESSAGES_ABOVE,
        SY_RULE_HAS_IMAGES,     SY_RULE_COMPLEXITY_ABOVE,
        SY_RULE_HEADER,         SY_RULE_HEADER,
        SY_RULE_AGENT,          SY_RULE_USER,
    };
    static const int64_t values[] = {9, 3, 1, 1000, 0, 0, 0, 0};
    assert_int_equal(r->n_conds, SY_ARRAY_LEN(ops));
    for (size_t i = 0; i < SY_ARRAY_LEN(ops); i++) {
        assert_int_equal(r->conds[i].op, ops[i]);
        assert_int_equal(r->conds[i].value, values[i]);
    }
    assert_string_equal(r->conds[4].name, "x-a");
    assert_string_equal(r->conds[5].name, "x-b");
    assert_int_equal(r->conds[5].n_values, 2);
    assert_string_equal(r->conds[6].values[0], "bot");
    assert_string_equal(r->conds[7].values[1], "bob");
    sy_table_unref(t);
}

static void assert_policies_equal(const struct sy_table *ta, const struct sy_policy *a,
                                  const struct sy_table *tb, const struct sy_policy *b)
{
    assert_int_equal(a->balance, b->balance);
    assert_memory_equal(&a->retry, &b->retry, sizeof(a->retry));
    assert_memory_equal(&a->circuit, &b->circuit, sizeof(a->circuit));
    assert_int_equal(a->fallback_triggers, b->fallback_triggers);
    assert_int_equal(a->shed_percent, b->shed_percent);
    assert_int_equal(a->max_timeout_ms, b->max_timeout_ms);
    assert_int_equal(a->n_fallbacks, b->n_fallbacks);
    for (uint32_t i = 0; i < a->n_fallbacks; i++)
        assert_string_equal(ta->models[a->fallbacks[i]].name, tb->models[b->fallbacks[i]].name);
    assert_int_equal(a->n_statuses, b->n_statuses);
    for (uint32_t i = 0; i < a->n_statuses; i++)
        assert_int_equal(a->statuses[i], b->statuses[i]);
    assert_int_equal(a->n_rules, b->n_rules);
    for (uint32_t i = 0; i < a->n_rules; i++) {
        const struct sy_rule *x = &a->rules[i], *y = &b->rules[i];
        assert_str_or_null_equal(x->name, y->name);
        assert_int_equal(x->model < 0, y->model < 0);
        if (x->model >= 0)
            assert_string_equal(ta->models[x->model].name, tb->models[y->model].name);
        assert_int_equal(x->n_targets, y->n_targets);
        for (uint32_t j = 0; j < x->n_targets; j++) {
            assert_string_equal(ta->deployments[x->targets[j].deployment].name,
                                tb->deployments[y->targets[j].deployment].name);
            assert_int_equal(x->targets[j].weight, y->targets[j].weight);
        }
        assert_int_equal(x->n_conds, y->n_conds);
        for (uint32_t j = 0; j < x->n_conds; j++) {
            assert_int_equal(x->conds[j].op, y->conds[j].op);
            assert_int_equal(x->conds[j].value, y->conds[j].value);
            assert_str_or_null_equal(x->conds[j].name, y->conds[j].name);
            assert_int_equal(x->conds[j].n_values, y->conds[j].n_values);
            for (uint32_t k = 0; k < x->conds[j].n_values; k++)
                assert_string_equal(x->conds[j].values[k], y->conds[j].values[k]);
        }
    }
}

static void test_policy_round_trip(void **state)
{
    struct sy_table *a = load_ok("good-policy.json"), *b = NULL;
    struct sy_buf m1 = SY_BUF_INIT, m2 = SY_BUF_INIT;
    char *err = NULL;

    encode(a, &m1);
    assert_int_equal(sy_table_decode(m1.data, m1.len, &b, &err), 0);
    assert_tables_equal(a, b);
    for (uint32_t i = 0; i < a->n_models; i++)
        assert_policies_equal(a, &a->models[i].policy, b, &b->models[i].policy);
    encode(b, &m2);
    assert_int_equal(m1.len, m2.len);
    assert_memory_equal(m1.data, m2.data, m1.len);
    sy_table_unref(b);

    /* every trigger and condition, and complexity thresholds that are not round numbers */
    struct sy_table *c = policy_ok(
        "[{'name': 'a', 'targets': [{'deployment': 'd1'}], 'fallbacks': ['b'],"
        "  'policy': {'retry': {'on': []}, 'statuses': [599, 400],"
        "   'fallback_on': ['malformed', 'status', 'context_length', '5xx', '429', 'timeout',"
        "                   'connect'],"
        "   'rules': [{'when': {'complexity_below': 0.333, 'complexity_above': 0.001,"
        "     'tokens_above': 0, 'messages_below': 1000000, 'has_tools': true,"
        "     'has_images': false, 'tier': ['t'], 'agent': ['x', 'y'], 'user': 'u',"
        "     'header': {'a': 'b'}}, 'target': {'deployments': [{'deployment': 'd3',"
        "     'weight': 1000000}, {'deployment': 'd1'}]}}, {'target': {'model': 'b'}}]}},"
        " {'name': 'b', 'targets': [{'deployment': 'd2'}]}]");
    assert_int_equal(model(c, "a")->policy.retry.triggers, 0);
    assert_int_equal(model(c, "a")->policy.fallback_triggers, 0x7f);
    assert_int_equal(model(c, "a")->policy.rules[0].conds[4].value, 333);
    encode(c, &m1);
    assert_int_equal(sy_table_decode(m1.data, m1.len, &b, &err), 0);
    for (uint32_t i = 0; i < c->n_models; i++)
        assert_policies_equal(c, &c->models[i].policy, b, &b->models[i].policy);
    encode(b, &m2);
    assert_int_equal(m1.len, m2.len);
    assert_memory_equal(m1.data, m2.data, m1.len);
    sy_table_unref(b);

    /* a policy never set (all zero, as a hand-built table has it) is left out, and decodes
     * with the defaults */
    policy_free_for_test(&c->models[0].policy);
    memset(&c->models[0].policy, 0, sizeof(c->models[0].policy));
    encode(c, &m1);
    assert_int_equal(sy_table_decode(m1.data, m1.len, &b, &err), 0);
    assert_default_policy(&model(b, "a")->policy);
    sy_table_unref(b);

    sy_table_unref(a);
    sy_table_unref(c);
    sy_buf_free(&m1);
    sy_buf_free(&m2);
}

static void test_policy_errors(void **state)
{
    static const struct {
        const char *policy, *error;
    } cases[] = {
        {"'balance': 'random'", "models[0].policy.balance: must be \"weighted\", \"round_robin\", "
                                "\"least_connections\", \"latency\" or \"cost\", got \"random\""},
        {"'balance': 3", "models[0].policy.balance: expected a string, got integer"},
        {"'strategy': 'cost', 'balance': 'cost'",
         "models[0].policy.strategy: is the older name of balance: give one of the two"},
        {"'retry': 1", "models[0].policy.retry: expected a map, got integer"},
        {"'retry': {'attempts': 0}",
         "models[0].policy.retry.attempts: must be a whole number from 1 to 10"},
        {"'retry': {'attempts': 11}",
         "models[0].policy.retry.attempts: must be a whole number from 1 to 10"},
        {"'retry': {'attempts': 2.5}",
         "models[0].policy.retry.attempts: must be a whole number from 1 to 10"},
        {"'retry': {'backoff_ms': 60001}",
         "models[0].policy.retry.backoff_ms: must be a whole number from 0 to 60000"},
        {"'retry': {'max_backoff_ms': 300001}",
         "models[0].policy.retry.max_backoff_ms: must be a whole number from 0 to 300000"},
        {"'retry': {'backoff_ms': 300, 'max_backoff_ms': 200}",
         "models[0].policy.retry.max_backoff_ms: must be at least backoff_ms (300)"},
        {"'retry': {'retry_after_cap_ms': -1}",
         "models[0].policy.retry.retry_after_cap_ms: must be a whole number from 0 to 300000"},
        {"'retry': {'budget_percent': 101}",
         "models[0].policy.retry.budget_percent: must be a whole number from 0 to 100"},
        {"'retry': {'on': 'connect'}",
         "models[0].policy.retry.on: expected an array of trigger names, got string"},
        {"'retry': {'on': ['connect', 'oops']}",
         "models[0].policy.retry.on[1]: unknown trigger \"oops\"; valid triggers are "
         "\"connect\", \"timeout\", \"429\", \"5xx\", \"context_length\", \"status\", "
         "\"malformed\""},
        {"'retry': {'on': [429]}",
         "models[0].policy.retry.on[0]: expected a trigger name, got integer"},
        {"'retry': {'on': ['5xx', '5xx']}",
         "models[0].policy.retry.on[1]: \"5xx\" is listed twice"},
        {"'circuit': {'window_ms': 999}",
         "models[0].policy.circuit.window_ms: must be a whole number from 1000 to 3600000"},
        {"'circuit': {'min_requests': 0}",
         "models[0].policy.circuit.min_requests: must be a whole number from 1 to 1000000"},
        {"'circuit': {'error_percent': 0}",
         "models[0].policy.circuit.error_percent: must be a whole number from 1 to 100"},
        {"'circuit': {'consecutive': 1000001}",
         "models[0].policy.circuit.consecutive: must be a whole number from 0 to 1000000"},
        {"'circuit': {'cooldown_ms': 99}",
         "models[0].policy.circuit.cooldown_ms: must be a whole number from 100 to 3600000"},
        {"'circuit': {'half_open_probes': 0}",
         "models[0].policy.circuit.half_open_probes: must be a whole number from 1 to 1000"},
        {"'fallback_on': ['status']",
         "models[0].policy.statuses: required when retry.on or fallback_on lists \"status\": "
         "the HTTP statuses (400 to 599) that trigger"},
        {"'statuses': [399]",
         "models[0].policy.statuses[0]: must be a whole number from 400 to 599"},
        {"'statuses': [500, 500]",
         "models[0].policy.statuses[1]: 500 is listed twice (also statuses[0])"},
        {"'statuses': 500", "models[0].policy.statuses: expected an array of HTTP statuses, got "
                            "integer"},
        {"'shed_percent': 0",
         "models[0].policy.shed_percent: must be a whole number from 1 to 100"},
        {"'max_timeout_ms': 3600001",
         "models[0].policy.max_timeout_ms: must be a whole number from 0 to 3600000"},
        {"'rules': {}", "models[0].policy.rules: expected an array of rules, got map"},
        {"'rules': [1]", "models[0].policy.rules[0]: expected a map {\"name\", \"when\", "
                         "\"target\"}, got integer"},
        {"'rules': [{}]", "models[0].policy.rules[0].target: missing (a {\"model\"} or "
                          "{\"deployments\"} map)"},
        {"'rules': [{'name': '', 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].name: must not be empty"},
        {"'rules': [{'target': {}}]",
         "models[0].policy.rules[0].target: give either model (a public model) or deployments "
         "([{\"deployment\", \"weight\"}]), not neither"},
        {"'rules': [{'target': {'model': 'b', 'deployments': [{'deployment': 'd1'}]}}]",
         "models[0].policy.rules[0].target: give either model (a public model) or deployments "
         "([{\"deployment\", \"weight\"}]), not both"},
        {"'rules': [{'target': {'model': 'x'}}]",
         "models[0].policy.rules[0].target.model: unknown model \"x\""},
        {"'rules': [{'target': {'model': ''}}]",
         "models[0].policy.rules[0].target.model: must not be empty"},
        {"'rules': [{'target': {'deployments': []}}]",
         "models[0].policy.rules[0].target.deployments: must list at least one deployment"},
        {"'rules': [{'target': {'deployments': [{'weight': 1}]}}]",
         "models[0].policy.rules[0].target.deployments[0].deployment: missing"},
        {"'rules': [{'target': {'deployments': [{'deployment': 'dx'}]}}]",
         "models[0].policy.rules[0].target.deployments[0].deployment: unknown deployment \"dx\""},
        {"'rules': [{'target': {'deployments': [{'deployment': 'd1'}, {'deployment': 'd1'}]}}]",
         "models[0].policy.rules[0].target.deployments[1].deployment: deployment \"d1\" is "
         "listed twice"},
        {"'rules': [{'target': {'deployments': [{'deployment': 'd1', 'weight': 0}]}}]",
         "models[0].policy.rules[0].target.deployments: weights sum to 0; give at least one "
         "deployment a positive weight"},
        {"'rules': [{'target': {'deployments': [{'deployment': 'd1', 'weight': 1000001}]}}]",
         "models[0].policy.rules[0].target.deployments[0].weight: must be a whole number from 0 "
         "to 1000000"},
        {"'rules': [{'when': [], 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when: expected a map of conditions, got array"},
        {"'rules': [{'when': {'tokens_below': -1}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.tokens_below: must be a whole number from 0 to "
         "100000000"},
        {"'rules': [{'when': {'messages_above': 1000001}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.messages_above: must be a whole number from 0 to "
         "1000000"},
        {"'rules': [{'when': {'has_tools': 'yes'}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.has_tools: expected true or false, got string"},
        {"'rules': [{'when': {'complexity_below': 1.01}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.complexity_below: must be a number from 0 to 1"},
        {"'rules': [{'when': {'complexity_above': -0.5}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.complexity_above: must be a number from 0 to 1"},
        {"'rules': [{'when': {'tier': []}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.tier: must list 1 to 256 values"},
        {"'rules': [{'when': {'agent': ['a', '']}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.agent[1]: must not be empty"},
        {"'rules': [{'when': {'user': 7}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.user: expected a string or an array of strings, got "
         "integer"},
        {"'rules': [{'when': {'header': {}}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.header: must name at least one header"},
        {"'rules': [{'when': {'header': {'a b': 'x'}}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.header[\"a b\"]: header name contains an illegal "
         "character (0x20)"},
        {"'rules': [{'when': {'header': {'X-A': 'x', 'x-a': 'y'}}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.header[\"x-a\"]: header is given twice (names are "
         "case-insensitive)"},
        {"'rules': [{'when': {'header': {'x': 'a\\r\\nb'}}, 'target': {'model': 'b'}}]",
         "models[0].policy.rules[0].when.header[\"x\"]: contains a control character (0x0d) at "
         "byte 1"},
    };
    for (size_t i = 0; i < SY_ARRAY_LEN(cases); i++) {
        char *models;
        assert_true(asprintf(&models,
                             "[{'name': 'a', 'targets': [{'deployment': 'd1'}], 'policy': {%s}},"
                             " {'name': 'b', 'targets': [{'deployment': 'd2'}]}]",
                             cases[i].policy) > 0);
        expect_policy_error(models, cases[i].error);
        free(models);
    }

    /* fallbacks */
    expect_policy_error("[{'name': 'a', 'targets': [{'deployment': 'd1'}], 'fallbacks': 'b'}]",
                        "models[0].fallbacks: expected an array of model names, got string");
    expect_policy_error("[{'name': 'a', 'targets': [{'deployment': 'd1'}], 'fallbacks': ['x']}]",
                        "models[0].fallbacks[0]: unknown model \"x\"");
    expect_policy_error("[{'name': 'b', 'targets': [{'deployment': 'd1'}]},"
                        " {'name': 'a', 'targets': [{'deployment': 'd1'}], 'fallbacks': [1]}]",
                        "models[1].fallbacks[0]: expected a model name, got integer");
    expect_policy_error("[{'name': 'b', 'targets': [{'deployment': 'd1'}]},"
                        " {'name': 'a', 'targets': [{'deployment': 'd1'}],"
                        "  'fallbacks': ['b', 'b']}]",
                        "models[1].fallbacks[1]: model \"b\" is listed twice (also fallbacks[0])");
    /* the path names the model as given, not where sorting put it */
    expect_policy_error("[{'name': 'z', 'targets': [{'deployment': 'd1'}]},"
                        " {'name': 'y', 'targets': [{'deployment': 'd1'}]},"
                        " {'name': 'x', 'targets': [{'deployment': 'd1'}],"
                        "  'policy': {'rules': [{'target': {'model': 'w'}}]}}]",
                        "models[2].policy.rules[0].target.model: unknown model \"w\"");
}

static void test_policy_loops(void **state)
{
    /* length 1: a model that falls back to itself, or whose rule sends to itself */
    expect_policy_error("[{'name': 'a', 'targets': [{'deployment': 'd1'}], 'fallbacks': ['a']}]",
                        "models: fallback loop a → a");
    expect_policy_error("[{'name': 'a', 'targets': [{'deployment': 'd1'}],"
                        "  'policy': {'rules': [{'target': {'model': 'a'}}]}}]",
                        "models: routing loop a → a (through fallbacks and rule targets)");
    /* length 2 */
    expect_policy_error("[{'name': 'gpt-4o', 'targets': [{'deployment': 'd1'}],"
                        "  'fallbacks': ['claude']},"
                        " {'name': 'claude', 'targets': [{'deployment': 'd2'}],"
                        "  'fallbacks': ['gpt-4o']}]",
                        "models: fallback loop claude → gpt-4o → claude");
    /* length 3, behind a model that is not in it */
    expect_policy_error("[{'name': 'a', 'targets': [{'deployment': 'd1'}], 'fallbacks': ['b']},"
                        " {'name': 'b', 'targets': [{'deployment': 'd1'}], 'fallbacks': ['c']},"
                        " {'name': 'c', 'targets': [{'deployment': 'd1'}], 'fallbacks': ['d']},"
                        " {'name': 'd', 'targets': [{'deployment': 'd1'}], 'fallbacks': ['b']}]",
                        "models: fallback loop b → c → d → b");
    /* through a rule */
    expect_policy_error(
        "[{'name': 'a', 'targets': [{'deployment': 'd1'}], 'fallbacks': ['b']},"
        " {'name': 'b', 'targets': [{'deployment': 'd1'}],"
        "  'policy': {'rules': [{'target': {'deployments': [{'deployment': 'd2'}]}},"
        "   {'target': {'model': 'a'}}]}}]",
        "models: routing loop a → b → a (through fallbacks and rule targets)");

    /* no loop: a diamond, a three-level chain, the same model down two branches */
    struct sy_table *t =
        policy_ok("[{'name': 'gpt', 'targets': [{'deployment': 'd1'}],"
                  "  'fallbacks': ['claude', 'qwen']},"
                  " {'name': 'claude', 'targets': [{'deployment': 'd2'}], 'fallbacks': ['qwen']},"
                  " {'name': 'qwen', 'targets': [{'deployment': 'd3'}]},"
                  " {'name': 'router', 'targets': [{'deployment': 'd1'}],"
                  "  'policy': {'rules': [{'target': {'model': 'gpt'}},"
                  "   {'target': {'model': 'claude'}}]}, 'fallbacks': ['qwen']}]");
    const struct sy_model *gpt = model(t, "gpt");
    assert_int_equal(gpt->policy.n_fallbacks, 2);
    assert_string_equal(t->models[gpt->policy.fallbacks[0]].name, "claude");
    assert_string_equal(t->models[gpt->policy.fallbacks[1]].name, "qwen");
    sy_table_unref(t);
}

static void test_policy_unknown_keys(void **state)
{
    /* the decoder skips keys it does not know (a newer control plane may send them)... */
    struct sy_table *t = policy_ok("[{'name': 'a', 'targets': [{'deployment': 'd1'}],"
                                   "  'policy': {'later': 1, 'retry': {'jitter': 'full'},"
                                   "   'rules': [{'target': {'model': 'a2', 'x': 1}, 'y': 2,"
                                   "     'when': {'weekday': 'mon'}}]}},"
                                   " {'name': 'a2', 'targets': [{'deployment': 'd1'}]}]");
    assert_int_equal(model(t, "a")->policy.n_rules, 1);
    assert_int_equal(model(t, "a")->policy.rules[0].n_conds, 0);
    sy_table_unref(t);

    /* ...but an operator's policy is checked strictly */
    static const struct {
        const char *policy, *param, *error;
    } cases[] = {
        {"{'later': 1}", "policy.later", "policy.later: unknown field"},
        {"{'retry': {'jitter': 'full'}}", "policy.retry.jitter",
         "policy.retry.jitter: unknown field"},
        {"{'circuit': {'x': 1}}", "policy.circuit.x", "policy.circuit.x: unknown field"},
        {"{'rules': [{'target': {'model': 'm'}, 'y': 2}]}", "policy.rules[0].y",
         "policy.rules[0].y: unknown field"},
        {"{'rules': [{'target': {'model': 'm', 'x': 1}}]}", "policy.rules[0].target.x",
         "policy.rules[0].target.x: unknown field"},
        {"{'rules': [{'target': {'deployments': [{'deployment': 'd', 'w': 1}]}}]}",
         "policy.rules[0].target.deployments[0].w",
         "policy.rules[0].target.deployments[0].w: unknown field"},
        {"{'rules': [{'when': {'weekday': 'mon'}, 'target': {'model': 'm'}}]}",
         "policy.rules[0].when.weekday", "policy.rules[0].when.weekday: unknown field"},
        {"{'retry': {'attempts': 11}}", "policy.retry.attempts",
         "policy.retry.attempts: must be a whole number from 1 to 10"},
        {"{'rules': [{'target': {}}]}", "policy.rules[0].target",
         "policy.rules[0].target: give either model (a public model) or deployments "
         "([{\"deployment\", \"weight\"}]), not neither"},
        {"[]", "policy", "policy: expected a map, got array"},
    };
    for (size_t i = 0; i < SY_ARRAY_LEN(cases); i++) {
        char *text = json(cases[i].policy), *err = NULL, *param = NULL;
        assert_int_equal(sy_policy_check_json(text, strlen(text), &err, &param), -EINVAL);
        if (strcmp(err, cases[i].error) != 0)
            fail_msg("for %s\n  got:      %s\n  expected: %s", text, err, cases[i].error);
        assert_string_equal(param, cases[i].param);
        free(err);
        free(param);
        free(text);
    }

    /* names are not looked up: the admin API asks the database */
    char *text = json("{'balance': 'cost', 'rules': [{'target': {'model': 'anything'}},"
                      " {'target': {'deployments': [{'deployment': 'any', 'weight': 2}]}}]}");
    char *err = NULL, *param = NULL;
    assert_int_equal(sy_policy_check_json(text, strlen(text), &err, &param), 0);
    assert_null(err);
    assert_null(param);
    free(text);
}

static void test_model_policy_from_json(void **state)
{
    /* as the compiler will do it: a table built by hand, its policies from the stored JSON */
    struct sy_table *t = policy_ok("[{'name': 'b', 'targets': [{'deployment': 'd1'}]},"
                                   " {'name': 'a', 'targets': [{'deployment': 'd2'}]}]");
    struct sy_model *a = (struct sy_model *)model(t, "a");
    uint32_t ai = (uint32_t)(a - t->models);
    char *doc = json("{'name': 'a', 'policy': {'balance': 'round_robin', 'rules': [{'target':"
                     " {'deployments': [{'deployment': 'd3'}]}}]}, 'fallbacks': ['b']}");
    char *err = NULL;
    assert_int_equal(sy_model_policy_from_json(t, ai, doc, strlen(doc), &err), 0);
    assert_null(err);
    assert_int_equal(a->policy.balance, SY_BALANCE_ROUND_ROBIN);
    assert_string_equal(t->models[a->policy.fallbacks[0]].name, "b");
    assert_string_equal(t->deployments[a->policy.rules[0].targets[0].deployment].name, "d3");
    free(doc);

    /* a failure leaves the policy as it was */
    doc = json("{'policy': {'retry': {'attempts': 1}}, 'fallbacks': ['nope']}");
    assert_int_equal(sy_model_policy_from_json(t, ai, doc, strlen(doc), &err), -EINVAL);
    assert_string_equal(err, "fallbacks[0]: unknown model \"nope\"");
    assert_int_equal(a->policy.retry.attempts, 2);
    assert_int_equal(a->policy.balance, SY_BALANCE_ROUND_ROBIN);
    free(err);
    free(doc);
    doc = json("{'policy': {'rules': [{'target': {'model': 'zz'}}]}}");
    assert_int_equal(sy_model_policy_from_json(t, ai, doc, strlen(doc), &err), -EINVAL);
    assert_string_equal(err, "policy.rules[0].target.model: unknown model \"zz\"");
    free(err);
    free(doc);
    doc = json("[1]");
    assert_int_equal(sy_model_policy_from_json(t, ai, doc, strlen(doc), &err), -EINVAL);
    assert_string_equal(err, "model: must be an object");
    free(err);
    free(doc);

    /* and what it set survives the trip the compiler makes */
    struct sy_buf m = SY_BUF_INIT;
    struct sy_table *b = NULL;
    encode(t, &m);
    assert_int_equal(sy_table_decode(m.data, m.len, &b, &err), 0);
    assert_policies_equal(t, &a->policy, b, &model(b, "a")->policy);
    sy_table_unref(b);

    /* a loop set this way is caught when the encoded table is decoded */
    struct sy_model *bm = (struct sy_model *)model(t, "b");
    doc = json("{'fallbacks': ['a']}");
    assert_int_equal(
        sy_model_policy_from_json(t, (uint32_t)(bm - t->models), doc, strlen(doc), &err), 0);
    encode(t, &m);
    assert_int_equal(sy_table_decode(m.data, m.len, &b, &err), -EINVAL);
    assert_string_equal(err, "models: fallback loop a → b → a");
    free(err);
    free(doc);
    sy_buf_free(&m);
    sy_table_unref(t);
}

static void test_find_model(void **state)
{
    struct sy_table *t = from_json_ok(
        "{'deployments':[" DEP("a", "") "],'models':["
                                        "{'name':'gpt-4o-mini','targets':[{'deployment':'a'}]},"
                                        "{'name':'gpt-4o','targets':[{'deployment':'a'}]},"
                                        "{'name':'Claude','targets':[{'deployment':'a'}]},"
                                        "{'name':'claude','targets':[{'deployment':'a'}]},"
                                        "{'name':'a','targets':[{'deployment':'a'}]},"
                                        "{'name':'zz','targets':[{'deployment':'a'}]}]}");
    static const char *const names[] = {"gpt-4o-mini", "gpt-4o", "Claude", "claude", "a", "zz"};

    for (size_t i = 0; i < SY_ARRAY_LEN(names); i++)
        assert_string_equal(model(t, names[i])->name, names[i]);
    for (uint32_t i = 1; i < t->n_models; i++)
        assert_true(strcmp(t->models[i - 1].name, t->models[i].name) < 0);
    /* the slot of a model is its place in the list given, not in the sorted one */
    assert_int_equal(model(t, "gpt-4o-mini")->slot, 0);
    assert_int_equal(model(t, "zz")->slot, 5);

    /* counted names: a prefix of the buffer, no NUL needed */
    const char *body = "gpt-4o-mini\",\"stream\":true";
    assert_string_equal(sy_table_find_model(t, body, 6)->name, "gpt-4o");
    assert_string_equal(sy_table_find_model(t, body, 11)->name, "gpt-4o-mini");
    assert_null(sy_table_find_model(t, body, 5));
    assert_null(sy_table_find_model(t, body, 12));
    assert_null(sy_table_find_model(t, "gpt-4o\0", 7));
    assert_null(sy_table_find_model(t, "", 0));
    assert_null(sy_table_find_model(t, "CLAUDE", 6)); /* names are case-sensitive */
    assert_null(sy_table_find_model(t, "0", 1));
    assert_null(sy_table_find_model(t, "zzz", 3));
    assert_null(sy_table_find_model(t, "\xff", 1));
    sy_table_unref(t);
}

static void test_refcount(void **state)
{
    struct sy_table *t = load_ok("good-full.json");
    assert_int_equal(atomic_load(&t->refs), 1);
    assert_ptr_equal(sy_table_ref(t), t);
    assert_ptr_equal(sy_table_ref(t), t);
    assert_int_equal(atomic_load(&t->refs), 3);
    sy_table_unref(t);
    sy_table_unref(t);
    assert_int_equal(atomic_load(&t->refs), 1);
    assert_string_equal(t->deployments[0].api_key, "sk-test-openai"); /* still alive */
    sy_table_unref(t); /* the last: freed (the sanitizers check there is no leak) */
    sy_table_unref(NULL);
}

/* ---- scale ----------------------------------------------------------------------------- */

static void test_decode_10k(void **state)
{
    enum { N = 10000 };
    struct sy_buf b = SY_BUF_INIT;
    msgpack_packer pk;
    char name[64], url[64];

    msgpack_packer_init(&pk, &b, buf_write);
    msgpack_pack_map(&pk, 4);
    pack_cstr(&pk, "schema");
    msgpack_pack_int(&pk, SY_TABLE_SCHEMA);
    pack_cstr(&pk, "version");
    msgpack_pack_uint64(&pk, 99);
    pack_cstr(&pk, "deployments");
    msgpack_pack_array(&pk, N);
    for (int i = 0; i < N; i++) {
        msgpack_pack_map(&pk, 8);
        snprintf(name, sizeof(name), "dep-%05d", (i * 7919) % N);
        pack_cstr(&pk, "name");
        pack_cstr(&pk, name);
        pack_cstr(&pk, "provider");
        pack_cstr(&pk, "p");
        pack_cstr(&pk, "model");
        pack_cstr(&pk, "upstream-model");
        snprintf(url, sizeof(url), "https://host%d.example/v1", i % 100);
        pack_cstr(&pk, "base_url");
        pack_cstr(&pk, url);
        pack_cstr(&pk, "api_key");
        pack_cstr(&pk, "sk-0123456789abcdef");
        pack_cstr(&pk, "headers");
        msgpack_pack_map(&pk, 1);
        pack_cstr(&pk, "X-Tenant");
        pack_cstr(&pk, "acme");
        pack_cstr(&pk, "timeouts");
        msgpack_pack_map(&pk, 1);
        pack_cstr(&pk, "total_ms");
        msgpack_pack_uint32(&pk, 60000);
        pack_cstr(&pk, "slot");
        msgpack_pack_uint32(&pk, (uint32_t)i);
    }
    pack_cstr(&pk, "models");
    msgpack_pack_array(&pk, N);
    for (int i = 0; i < N; i++) {
        msgpack_pack_map(&pk, 3);
        snprintf(name, sizeof(name), "model-%05d", (i * 7919) % N);
        pack_cstr(&pk, "name");
        pack_cstr(&pk, name);
        pack_cstr(&pk, "slot");
        msgpack_pack_uint32(&pk, (uint32_t)i);
        pack_cstr(&pk, "targets");
        msgpack_pack_array(&pk, 2);
        for (int j = 0; j < 2; j++) {
            msgpack_pack_map(&pk, 2);
            snprintf(name, sizeof(name), "dep-%05d", (i + j * 5000) % N);
            pack_cstr(&pk, "deployment");
            pack_cstr(&pk, name);
            pack_cstr(&pk, "weight");
            msgpack_pack_uint32(&pk, (uint32_t)(j + 1));
        }
    }

    struct sy_table *t = NULL;
    char *err = NULL;
    uint64_t t0 = sy_now_ns();
    int rc = sy_table_decode(b.data, b.len, &t, &err);
    uint64_t t1 = sy_now_ns();
    if (rc != 0)
        fail_msg("%s", err);
    printf("# decoded %d deployments and %d models (%zu bytes of msgpack) in %.1f ms\n", N, N,
           b.len, (double)(t1 - t0) / 1e6);
    assert_int_equal(t->n_deployments, N);
    assert_int_equal(t->n_models, N);
    const struct sy_model *m = model(t, "model-04242");
    assert_int_equal(m->total_weight, 3);
    assert_null(sy_table_find_model(t, "model-10000", 11));

    t0 = sy_now_ns();
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "model-%05d", i);
        assert_non_null(sy_table_find_model(t, name, strlen(name)));
    }
    printf("# %d look-ups in %.2f ms\n", N, (double)(sy_now_ns() - t0) / 1e6);
    sy_table_unref(t);
    sy_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_full_example),
        cmocka_unit_test(test_json_defaults),
        cmocka_unit_test(test_sample_files),
        cmocka_unit_test(test_load_file_errors),
        cmocka_unit_test(test_api_key_env),
        cmocka_unit_test(test_validation_errors),
        cmocka_unit_test(test_disabled_deployment),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_unknown_keys_skipped),
        cmocka_unit_test(test_garbage_rejected),
        cmocka_unit_test(test_keys_limits_and_prices),
        cmocka_unit_test(test_keys_limits_and_prices_validation),
        cmocka_unit_test(test_origin_parse),
        cmocka_unit_test(test_origin_tls_settings_in_key),
        cmocka_unit_test(test_policy_defaults),
        cmocka_unit_test(test_policy_every_field),
        cmocka_unit_test(test_policy_round_trip),
        cmocka_unit_test(test_policy_errors),
        cmocka_unit_test(test_policy_loops),
        cmocka_unit_test(test_policy_unknown_keys),
        cmocka_unit_test(test_model_policy_from_json),
        cmocka_unit_test(test_find_model),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_decode_10k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
