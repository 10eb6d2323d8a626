/* SPDX-License-Identifier: Apache-2.0 */
/** Named admin tokens (--admin-tokens-file): one per person or pipeline, so the audit log says
 * who made a change. The file holds lines
 *
 *     name:role:token        role: admin (read-write) or read (read-only)
 *
 * with blank lines and '#' comments ignored. Only each token's SHA-256 is kept in memory; the
 * admin API compares the presented token's digest with every one, in constant time, whatever
 * matches. SIGHUP reads the file again (a bad file keeps the tokens in force). */

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "server.h"
#include "sy/util.h"

#define TOKEN_NAME_MAX 64
#define TOKEN_MIN_LEN  16

static bool name_ok(const char *s, size_t n)
{
    if (n == 0 || n > TOKEN_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-' || ch == '@'))
            return false;
    }
    return true;
}

void cp__tokens_free(struct cp_token *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(t[i].name);
    if (t)
        cp_crypto_free_secret(t, n * sizeof(*t));
}

int cp__tokens_load(const char *path, struct cp_token **out, size_t *n_out, char **err)
{
    struct cp_token *t = NULL;
    size_t n = 0, cap = 0;
    char line[1024];
    int lineno = 0, rc = 0;
    FILE *f = fopen(path, "r");

    *out = NULL;
    *n_out = 0;
    if (!f)
        return cp__fail(err, -errno, "cannot read the admin tokens file %s: %s", path,
                        strerror(errno));
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        size_t len = strcspn(line, "\r\n");
        if (line[len] == '\0' && !feof(f)) {
            rc = cp__fail(err, -EINVAL, "%s:%d: the line is too long", path, lineno);
            goto fail;
        }
        line[len] = '\0';
        const char *s = line;
        while (*s == ' ' || *s == '\t')
            s++;
        if (*s == '\0' || *s == '#')
            continue;
        const char *c1 = strchr(s, ':');
        const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) {
            rc = cp__fail(err, -EINVAL, "%s:%d: expected name:role:token", path, lineno);
            goto fail;
        }
        size_t nl = (size_t)(c1 - s), rl = (size_t)(c2 - c1 - 1);
        const char *tok = c2 + 1;
        size_t tl = strlen(tok);
        while (tl && (tok[tl - 1] == ' ' || tok[tl - 1] == '\t'))
            tl--;
        enum cp_role role = CP_ROLE_NONE;
        if (rl == 5 && strncmp(c1 + 1, "admin", 5) == 0)
            role = CP_ROLE_ADMIN;
        else if (rl == 4 && strncmp(c1 + 1, "read", 4) == 0)
            role = CP_ROLE_READ;
        if (!name_ok(s, nl)) {
            rc = cp__fail(err, -EINVAL,
                          "%s:%d: a token name is 1 to %d characters of letters, digits, "
                          "'.', '_', '-' and '@'",
                          path, lineno, TOKEN_NAME_MAX);
            goto fail;
        }
        if (role == CP_ROLE_NONE) {
            rc = cp__fail(err, -EINVAL, "%s:%d: the role of \"%.*s\" must be admin or read", path,
                          lineno, (int)nl, s);
            goto fail;
        }
        if (tl < TOKEN_MIN_LEN) {
            rc = cp__fail(err, -EINVAL,
                          "%s:%d: the token of \"%.*s\" must be at least %d "
                          "characters long",
                          path, lineno, (int)nl, s, TOKEN_MIN_LEN);
            goto fail;
        }
        for (size_t i = 0; i < n; i++) {
            if (strlen(t[i].name) == nl && strncmp(t[i].name, s, nl) == 0) {
                rc = cp__fail(err, -EINVAL, "%s:%d: \"%.*s\" is named twice", path, lineno, (int)nl,
                              s);
                goto fail;
            }
        }
        if (n == cap) {
            struct cp_token *bigger = sy_xcalloc(cap ? 2 * cap : 8, sizeof(*t));
            if (n)
                memcpy(bigger, t, n * sizeof(*t));
            if (t)
                cp_crypto_free_secret(t, cap * sizeof(*t));
            t = bigger;
            cap = cap ? 2 * cap : 8;
        }
        t[n].name = sy_xstrndup(s, nl);
        t[n].role = role;
        cp_crypto_sha256(tok, tl, t[n].hash);
        n++;
    }
    if (ferror(f)) {
        rc = cp__fail(err, -EIO, "cannot read the admin tokens file %s", path);
        goto fail;
    }
    fclose(f);
    explicit_bzero(line, sizeof(line));
    *out = t;
    *n_out = n;
    return 0;

fail:
    fclose(f);
    explicit_bzero(line, sizeof(line));
    cp__tokens_free(t, n);
    return rc;
}
