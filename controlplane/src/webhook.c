/* SPDX-License-Identifier: Apache-2.0 */
/** Webhook delivery (webhook.h): request builders per channel type, signatures, and a small
 * HTTP/1.1 client on blocking sockets that runs on libuv's thread pool.
 *
 * Why blocking sockets on the pool rather than libuv TCP with memory BIOs: a delivery is one
 * short request per alert, a few per minute at most, and the pool bounds concurrency for free;
 * blocking OpenSSL on a socket with a deadline is a third of the code of the event-driven
 * version, with certificate and host-name verification the same. The loop never blocks: it
 * only builds requests and reads results. Name resolution (getaddrinfo) happens on the thread
 * too; its own timeouts (resolv.conf) bound it. */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "internal.h"
#include "sy/buf.h"
#include "sy/util.h"
#include "webhook.h"

#define MAX_RESPONSE  (64 * 1024) /* what is read of an answer */
#define MAX_ERROR_LEN 400

struct cp_webhook_req {
    uv_work_t work;
    struct cp_webhook_url url;
    char *body;
    struct sy_buf headers; /* extra header lines */
    const char *type;      /* static */
    /* send parameters */
    SSL_CTX *ssl;
    int connect_ms, total_ms;
    cp_webhook_done_cb cb;
    void *ud;
    /* result */
    int status;
    char error[MAX_ERROR_LEN];
    /* cp__webhook_abort() from the loop while the send runs on its thread */
    pthread_mutex_t lock;
    int fd; /* the connected socket, -1 when none */
    bool aborted;
};

/* ============================================================================================
 * URLs
 * ========================================================================================== */

int cp__webhook_parse_url(const char *url, struct cp_webhook_url *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    const char *p;
    if (strncasecmp(url, "https://", 8) == 0) {
        out->tls = true;
        p = url + 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        p = url + 7;
    } else {
        *why = "must start with http:// or https://";
        return -EINVAL;
    }
    for (const char *s = url; *s; s++) {
        if ((unsigned char)*s <= 0x20 || *s == 0x7f) {
            *why = "must not contain spaces or control characters";
            return -EINVAL;
        }
        if (*s == '#') {
            *why = "must not contain a fragment (#)";
            return -EINVAL;
        }
    }
    size_t auth_len = strcspn(p, "/?");
    const char *auth_end = p + auth_len;
    if (memchr(p, '@', auth_len)) {
        *why = "must not contain user information (put credentials in headers or the secret)";
        return -EINVAL;
    }
    const char *host = p, *host_end, *port = NULL;
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(p, ']', auth_len);
        if (!host_end) {
            *why = "has an IPv6 address without its closing ']'";
            return -EINVAL;
        }
        if (host_end + 1 < auth_end) {
            if (host_end[1] != ':') {
                *why = "has something after the IPv6 address that is not a port";
                return -EINVAL;
            }
            port = host_end + 2;
        }
    } else {
        const char *colon = memchr(p, ':', auth_len);
        host_end = colon ? colon : auth_end;
        port = colon ? colon + 1 : NULL;
    }
    size_t hl = (size_t)(host_end - host);
    if (hl == 0 || hl >= sizeof(out->host)) {
        *why = "needs a host name";
        return -EINVAL;
    }
    memcpy(out->host, host, hl);
    for (size_t i = 0; i < hl; i++) {
        char ch = out->host[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == '_' || (ch == ':' && *p == '['))) {
            *why = "has a host name with characters a host name cannot have";
            return -EINVAL;
        }
    }
    if (port) {
        size_t pl = (size_t)(auth_end - port);
        uint64_t v;
        if (pl == 0 || pl > 5 || !sy_parse_u64(port, pl, &v) || v == 0 || v > 65535) {
            *why = "has a port that is not a number from 1 to 65535";
            return -EINVAL;
        }
        snprintf(out->port, sizeof(out->port), "%u", (unsigned)v);
    } else {
        snprintf(out->port, sizeof(out->port), "%s", out->tls ? "443" : "80");
    }
    if (*auth_end == '/') {
        out->target = sy_xstrdup(auth_end);
    } else {
        out->target = sy_xmalloc(strlen(auth_end) + 2);
        out->target[0] = '/';
        strcpy(out->target + 1, auth_end);
    }
    return 0;
}

/* ============================================================================================
 * Signatures and bodies
 * ========================================================================================== */

static void b64(const unsigned char *in, size_t n, char *out, size_t outsz)
{
    SY_REQUIRE(outsz >= 4 * ((n + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

static void hmac_sha256(const void *key, size_t klen, const void *msg, size_t mlen,
                        unsigned char out[32])
{
    unsigned int len = 32;
    SY_REQUIRE(HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &len) != NULL);
}

void cp__webhook_sign_dingtalk(const char *secret, int64_t ts_ms, char out[64])
{
    char *msg = NULL;
    SY_REQUIRE(asprintf(&msg, "%lld\n%s", (long long)ts_ms, secret) != -1);
    unsigned char mac[32];
    hmac_sha256(secret, strlen(secret), msg, strlen(msg), mac);
    free(msg);
    b64(mac, sizeof(mac), out, 64);
}

void cp__webhook_sign_feishu(const char *secret, int64_t ts_s, char out[64])
{
    char *key = NULL;
    SY_REQUIRE(asprintf(&key, "%lld\n%s", (long long)ts_s, secret) != -1);
    unsigned char mac[32];
    hmac_sha256(key, strlen(key), "", 0, mac);
    free(key);
    b64(mac, sizeof(mac), out, 64);
}

static void url_encode(struct sy_buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '_' || ch == '.' || ch == '~')
            sy_buf_printf(b, "%c", ch);
        else
            sy_buf_printf(b, "%%%02X", ch);
    }
}

static const char *str_of(json_t *alert, const char *key)
{
    const char *s = json_string_value(json_object_get(alert, key));
    return s ? s : "";
}

/* A number member as text ("80", "12.5"), or "n/a". */
static void num_of(json_t *alert, const char *key, char out[40])
{
    json_t *v = json_object_get(alert, key);
    if (!json_is_number(v)) {
        snprintf(out, 40, "n/a");
        return;
    }
    double d = json_number_value(v);
    snprintf(out, 40, "%.2f", d);
    char *dot = strchr(out, '.'); /* 80.00 -> 80, 12.50 -> 12.5 */
    if (dot) {
        char *e = out + strlen(out) - 1;
        while (e > dot && *e == '0')
            *e-- = '\0';
        if (e == dot)
            *e = '\0';
    }
}

/* The human text of an alert, as plain lines (<md>: Markdown with a heading and a list). */
static char *alert_text(json_t *alert, bool md)
{
    char value[40], threshold[40];
    num_of(alert, "value", value);
    num_of(alert, "threshold", threshold);
    const char *status = str_of(alert, "status");
    bool firing = strcmp(status, "firing") == 0;
    struct sy_buf b = SY_BUF_INIT;
    if (md)
        sy_buf_printf(&b, "### %s %s\n\n", firing ? "[FIRING]" : "[RESOLVED]",
                      str_of(alert, "rule"));
    sy_buf_printf(&b, "%s\n", str_of(alert, "message"));
    const char *lead = md ? "- **" : "";
    const char *mid = md ? "**: " : ": ";
    sy_buf_printf(&b, "%s%s%s%s %s\n", lead, "Subject", mid, str_of(alert, "scope"),
                  str_of(alert, "subject"));
    sy_buf_printf(&b, "%s%s%s%s (%s)\n", lead, "Rule", mid, str_of(alert, "rule"),
                  str_of(alert, "kind"));
    sy_buf_printf(&b, "%s%s%s%s", lead, "Value", mid, value);
    if (json_is_number(json_object_get(alert, "threshold")) &&
        json_number_value(json_object_get(alert, "threshold")) > 0)
        sy_buf_printf(&b, " (threshold %s)", threshold);
    sy_buf_printf(&b, "\n%s%s%s%s\n", lead, firing ? "Since" : "Resolved at", mid,
                  str_of(alert, "since"));
    return sy_buf_steal(&b, NULL);
}

struct cp_webhook_req *cp__webhook_build(const char *type, const char *url, json_t *alert,
                                         const char *secret, json_t *headers, int64_t now_ms,
                                         char **err)
{
    struct cp_webhook_req *r = sy_xcalloc(1, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    r->fd = -1;
    const char *why = NULL;
    json_t *body = NULL;
    char sig[64];
    if (cp__webhook_parse_url(url, &r->url, &why) < 0) {
        cp__fail(err, -EINVAL, "url %s", why);
        goto fail;
    }
    bool firing = strcmp(str_of(alert, "status"), "firing") == 0;
    char title[200];
    snprintf(title, sizeof(title), "%s %s", firing ? "[FIRING]" : "[RESOLVED]",
             str_of(alert, "rule"));
    if (strcmp(type, "generic") == 0) {
        r->type = "generic";
        body = json_deep_copy(alert);
    } else if (strcmp(type, "slack") == 0) {
        r->type = "slack";
        char *text = alert_text(alert, false);
        body = json_pack("{s:s}", "text", text);
        free(text);
    } else if (strcmp(type, "dingtalk") == 0) {
        r->type = "dingtalk";
        char *text = alert_text(alert, true);
        body = json_pack("{s:s,s:{s:s,s:s}}", "msgtype", "markdown", "markdown", "title", title,
                         "text", text);
        free(text);
        if (secret && *secret) {
            cp__webhook_sign_dingtalk(secret, now_ms, sig);
            struct sy_buf t = SY_BUF_INIT;
            sy_buf_puts(&t, r->url.target);
            sy_buf_printf(&t, "%stimestamp=%lld&sign=", strchr(r->url.target, '?') ? "&" : "?",
                          (long long)now_ms);
            url_encode(&t, sig);
            free(r->url.target);
            r->url.target = sy_buf_steal(&t, NULL);
        }
    } else if (strcmp(type, "feishu") == 0) {
        r->type = "feishu";
        char *text = alert_text(alert, false);
        body = json_pack("{s:s,s:{s:s}}", "msg_type", "text", "content", "text", text);
        free(text);
        if (body && secret && *secret) {
            char ts[24];
            snprintf(ts, sizeof(ts), "%lld", (long long)(now_ms / 1000));
            cp__webhook_sign_feishu(secret, now_ms / 1000, sig);
            json_object_set_new(body, "timestamp", json_string(ts));
            json_object_set_new(body, "sign", json_string(sig));
        }
    } else if (strcmp(type, "wecom") == 0) {
        r->type = "wecom";
        char *text = alert_text(alert, true);
        body = json_pack("{s:s,s:{s:s}}", "msgtype", "markdown", "markdown", "content", text);
        free(text);
    } else {
        cp__fail(err, -EINVAL, "unknown channel type \"%s\"", type);
        goto fail;
    }
    if (!body || !(r->body = json_dumps(body, JSON_COMPACT))) {
        cp__fail(err, -ENOMEM, "cannot build the body");
        goto fail;
    }
    json_decref(body);
    body = NULL;
    if (r->type[0] == 'g' && secret && *secret) {
        char *msg = NULL;
        unsigned char mac[32];
        SY_REQUIRE(asprintf(&msg, "%lld.%s", (long long)(now_ms / 1000), r->body) != -1);
        hmac_sha256(secret, strlen(secret), msg, strlen(msg), mac);
        free(msg);
        sy_buf_printf(&r->headers,
                      "X-Switchyard-Timestamp: %lld\r\nX-Switchyard-Signature: sha256=",
                      (long long)(now_ms / 1000));
        for (int i = 0; i < 32; i++)
            sy_buf_printf(&r->headers, "%02x", mac[i]);
        sy_buf_puts(&r->headers, "\r\n");
    }
    const char *k;
    json_t *v;
    json_object_foreach(headers, k, v)
    {
        if (json_is_string(v))
            sy_buf_printf(&r->headers, "%s: %s\r\n", k, json_string_value(v));
    }
    return r;
fail:
    json_decref(body);
    cp__webhook_free(r);
    return NULL;
}

const char *cp__webhook_body(const struct cp_webhook_req *req)
{
    return req->body;
}

const char *cp__webhook_target(const struct cp_webhook_req *req)
{
    return req->url.target;
}

const char *cp__webhook_headers(const struct cp_webhook_req *req)
{
    return req->headers.data ? req->headers.data : "";
}

void cp__webhook_free(struct cp_webhook_req *req)
{
    if (!req)
        return;
    free(req->url.target);
    free(req->body);
    sy_buf_free(&req->headers);
    pthread_mutex_destroy(&req->lock);
    free(req);
}

/* ============================================================================================
 * The client (runs on a pool thread)
 * ========================================================================================== */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

__attribute__((format(printf, 2, 3))) static void set_error(struct cp_webhook_req *r,
                                                            const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof(r->error), fmt, ap);
    va_end(ap);
}

/* Bound the next blocking socket operation by <deadline> (monotonic ms); false if past it. */
static bool arm(int fd, int64_t deadline)
{
    int64_t left = deadline - mono_ms();
    if (left <= 0)
        return false;
    struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return true;
}

/* Connect to one of the addresses of the URL's host within <connect_ms>; the fd or -1. */
static int dial(struct cp_webhook_req *r, int64_t deadline)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(r->url.host, r->url.port, &hints, &res);
    if (rc != 0) {
        set_error(r, "cannot resolve %s: %s", r->url.host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == -1 && errno != EINPROGRESS) {
            set_error(r, "cannot connect to %s:%s: %s", r->url.host, r->url.port, strerror(errno));
            goto next;
        }
        int64_t until = mono_ms() + r->connect_ms;
        if (until > deadline)
            until = deadline;
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int64_t left = until - mono_ms();
        int n = left > 0 ? poll(&pfd, 1, (int)left) : 0;
        if (n == 0) {
            set_error(r, "connect to %s:%s timed out after %d ms", r->url.host, r->url.port,
                      r->connect_ms);
            goto next;
        }
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == -1 || soerr) {
            set_error(r, "cannot connect to %s:%s: %s", r->url.host, r->url.port,
                      strerror(soerr ? soerr : errno));
            goto next;
        }
        int flags = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        break;
    next:
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* Write all of <p>/<n>; false on error or timeout. */
static bool send_all(struct cp_webhook_req *r, int fd, SSL *ssl, const char *p, size_t n,
                     int64_t deadline)
{
    while (n) {
        if (!arm(fd, deadline)) {
            set_error(r, "timed out after %d ms sending the request", r->total_ms);
            return false;
        }
        ssize_t w;
        if (ssl) {
            size_t done = 0;
            w = SSL_write_ex(ssl, p, n, &done) == 1 ? (ssize_t)done : -1;
        } else {
            w = send(fd, p, n, MSG_NOSIGNAL);
        }
        if (w <= 0) {
            set_error(r, "cannot send the request: %s",
                      errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : strerror(errno));
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* True when <in> holds a whole response head. */
static bool head_complete(const struct sy_buf *in)
{
    return in->len && strstr(in->data, "\r\n\r\n") != NULL;
}

/* True when <in> holds a whole response: its head and the body its Content-Length announces,
 * or the last chunk of a chunked body. */
static bool answer_complete(const struct sy_buf *in)
{
    const char *end = in->len ? strstr(in->data, "\r\n\r\n") : NULL;
    if (!end)
        return false;
    size_t head = (size_t)(end + 4 - in->data);
    const char *cl = strcasestr(in->data, "\r\ncontent-length:");
    if (cl && cl < end)
        return in->len >= head + strtoull(cl + 17, NULL, 10);
    const char *te = strcasestr(in->data, "\r\ntransfer-encoding:");
    if (te && te < end && strcasestr(te, "chunked") && strcasestr(te, "chunked") < end)
        return (in->len == head + 5 && memcmp(in->data + head, "0\r\n\r\n", 5) == 0) ||
               (in->len >= head + 7 && memcmp(in->data + in->len - 7, "\r\n0\r\n\r\n", 7) == 0);
    return false; /* until the peer closes (we sent Connection: close) */
}

/* Read the answer until it is complete, the peer closes, or MAX_RESPONSE. A peer that sent a
 * whole head but neither ends its body nor closes has still answered: its status stands. */
static bool read_answer(struct cp_webhook_req *r, int fd, SSL *ssl, struct sy_buf *in,
                        int64_t deadline)
{
    char chunk[4096];
    for (;;) {
        if (answer_complete(in) || in->len >= MAX_RESPONSE)
            return true;
        if (!arm(fd, deadline)) {
            if (head_complete(in))
                return true;
            set_error(r, "timed out after %d ms waiting for the answer", r->total_ms);
            return false;
        }
        ssize_t n;
        if (ssl) {
            size_t got = 0;
            int ok = SSL_read_ex(ssl, chunk, sizeof(chunk), &got);
            if (!ok) {
                int e = SSL_get_error(ssl, 0);
                if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0 && in->len))
                    return true;
                n = -1;
            } else {
                n = (ssize_t)got;
            }
        } else {
            n = recv(fd, chunk, sizeof(chunk), 0);
        }
        if (n == 0)
            return true;
        if (n < 0) {
            if (head_complete(in))
                return true; /* a close without close_notify, or a body that never ends */
            set_error(r, "%s while reading the answer",
                      errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : strerror(errno));
            return false;
        }
        sy_buf_append(in, chunk, (size_t)n);
    }
}

/* The vendor's error in a 200 answer's JSON body, or NULL. */
static void vendor_error(struct cp_webhook_req *r, const char *body)
{
    const char *code_key = strcmp(r->type, "feishu") == 0 ? "code" : "errcode";
    if (strcmp(r->type, "dingtalk") != 0 && strcmp(r->type, "wecom") != 0 &&
        strcmp(r->type, "feishu") != 0)
        return;
    json_t *j = json_loads(body, 0, NULL);
    json_t *code = json_object_get(j, code_key);
    if (!code && strcmp(r->type, "feishu") == 0)
        code = json_object_get(j, "StatusCode");
    if (json_is_integer(code) && json_integer_value(code) != 0) {
        const char *msg = json_string_value(json_object_get(j, "errmsg"));
        if (!msg)
            msg = json_string_value(json_object_get(j, "msg"));
        set_error(r, "%s answered %s %lld: %s", r->type, code_key,
                  (long long)json_integer_value(code), msg ? msg : "");
    }
    json_decref(j);
}

static void tls_error(struct cp_webhook_req *r, const char *what, SSL *ssl)
{
    long v = SSL_get_verify_result(ssl);
    unsigned long e = ERR_get_error();
    char buf[200] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    if (v != X509_V_OK)
        set_error(r, "%s with %s failed: certificate verification: %s", what, r->url.host,
                  X509_verify_cert_error_string(v));
    else
        set_error(r, "%s with %s failed: %s", what, r->url.host, buf[0] ? buf : "closed");
    ERR_clear_error();
}

static void work_cb(uv_work_t *w)
{
    struct cp_webhook_req *r = w->data;
    int64_t deadline = mono_ms() + r->total_ms;
    SSL *ssl = NULL;
    struct sy_buf out = SY_BUF_INIT, in = SY_BUF_INIT;
    int fd = dial(r, deadline);
    if (fd < 0)
        goto done;
    pthread_mutex_lock(&r->lock);
    bool aborted = r->aborted;
    if (!aborted)
        r->fd = fd; /* from now on an abort shuts it down, which ends any blocking call */
    pthread_mutex_unlock(&r->lock);
    if (aborted) {
        set_error(r, "stopped before sending");
        goto done;
    }
    if (r->url.tls) {
        ssl = SSL_new(r->ssl);
        if (!ssl || SSL_set_fd(ssl, fd) != 1) {
            set_error(r, "cannot set up TLS");
            goto done;
        }
        struct in6_addr a6;
        struct in_addr a4;
        bool literal =
            inet_pton(AF_INET, r->url.host, &a4) == 1 || inet_pton(AF_INET6, r->url.host, &a6) == 1;
        if (literal) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), r->url.host);
        } else {
            SSL_set_tlsext_host_name(ssl, r->url.host);
            SSL_set1_host(ssl, r->url.host);
        }
        SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
        if (!arm(fd, deadline) || SSL_connect(ssl) != 1) {
            tls_error(r, "TLS handshake", ssl);
            goto done;
        }
    }
    bool default_port = strcmp(r->url.port, r->url.tls ? "443" : "80") == 0;
    bool v6 = strchr(r->url.host, ':') != NULL;
    sy_buf_printf(&out,
                  "POST %s HTTP/1.1\r\nHost: %s%s%s%s%s\r\nUser-Agent: switchyard-alerts\r\n"
                  "Content-Type: application/json; charset=utf-8\r\nContent-Length: %zu\r\n"
                  "Connection: close\r\n%s\r\n",
                  r->url.target, v6 ? "[" : "", r->url.host, v6 ? "]" : "", default_port ? "" : ":",
                  default_port ? "" : r->url.port, strlen(r->body),
                  r->headers.data ? r->headers.data : "");
    sy_buf_puts(&out, r->body);
    if (!send_all(r, fd, ssl, out.data, out.len, deadline))
        goto done;
    if (!read_answer(r, fd, ssl, &in, deadline))
        goto done;
    int status = 0;
    if (in.len < 12 || strncmp(in.data, "HTTP/1.", 7) != 0 ||
        sscanf(in.data + 9, "%3d", &status) != 1) {
        set_error(r, "the answer is not HTTP");
        goto done;
    }
    r->status = status;
    const char *body = strstr(in.data, "\r\n\r\n");
    body = body ? body + 4 : "";
    if (status < 200 || status > 299) {
        char snippet[120];
        size_t n = strcspn(body, "\r\n");
        snprintf(snippet, sizeof(snippet), "%.*s", (int)(n > 100 ? 100 : n), body);
        set_error(r, "HTTP %d%s%s", status, snippet[0] ? ": " : "", snippet);
    } else {
        vendor_error(r, body);
    }
done:
    if (ssl) {
        SSL_shutdown(ssl);
        SSL_free(ssl);
    }
    if (fd >= 0) {
        pthread_mutex_lock(&r->lock);
        r->fd = -1;
        aborted = r->aborted;
        pthread_mutex_unlock(&r->lock);
        close(fd);
        if (aborted && !r->error[0])
            set_error(r, "stopped while sending");
    }
    sy_buf_free(&out);
    sy_buf_free(&in);
}

void cp__webhook_abort(struct cp_webhook_req *req)
{
    if (uv_cancel((uv_req_t *)&req->work) == 0)
        return; /* not started: after_work_cb reports UV_ECANCELED */
    pthread_mutex_lock(&req->lock);
    req->aborted = true;
    if (req->fd >= 0)
        shutdown(req->fd, SHUT_RDWR);
    pthread_mutex_unlock(&req->lock);
}

static void after_work_cb(uv_work_t *w, int status)
{
    struct cp_webhook_req *r = w->data;
    if (status == UV_ECANCELED)
        set_error(r, "cancelled at stop");
    r->cb(r, r->ud, r->status, r->error[0] ? r->error : NULL);
    cp__webhook_free(r);
}

int cp__webhook_send(uv_loop_t *loop, struct cp_webhook_req *req, struct ssl_ctx_st *ssl,
                     int connect_ms, int total_ms, cp_webhook_done_cb cb, void *ud)
{
    req->ssl = ssl;
    req->connect_ms = connect_ms;
    req->total_ms = total_ms;
    req->cb = cb;
    req->ud = ud;
    req->work.data = req;
    int rc = uv_queue_work(loop, &req->work, work_cb, after_work_cb);
    if (rc < 0)
        cp__webhook_free(req);
    return rc;
}

struct ssl_ctx_st *cp__webhook_ssl_new(const char *ca_file, char **err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        cp__fail(err, -ENOMEM, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_default_verify_paths(ctx);
    if (ca_file && SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        ERR_clear_error();
        cp__fail(err, -EINVAL, "--webhook-ca-file %s: cannot load certificates from it", ca_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}
