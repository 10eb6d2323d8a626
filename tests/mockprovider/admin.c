/* SPDX-License-Identifier: Apache-2.0 */
/* The mock's own API under /mock/: stats, reset, the log of recent requests and the fault
 * config. None of these requests is counted or logged, so a test's checks do not disturb what
 * they check. Each log entry is rendered to JSON when the request arrives, into a slot buffer
 * that is reused, so recording costs no allocation once the slots have grown. */
#include <string.h>

#include "internal.h"
#include "sy/util.h"

#define LIT(out, s) sy_buf_append((out), (s), sizeof(s) - 1)

struct mp_stats mp_stats;

static struct sy_buf ring[MP_LOG_SIZE];
static unsigned ring_next;  /* slot of the next entry */
static unsigned ring_count; /* entries held */

void mp_admin_record(const struct mp_conn *c)
{
    const struct mp_request *r = &c->req;
    struct sy_buf *b = &ring[ring_next];
    ring_next = (ring_next + 1) % MP_LOG_SIZE;
    if (ring_count < MP_LOG_SIZE)
        ring_count++;
    sy_buf_reset(b);

    const char *url = r->url.data ? r->url.data : "";
    size_t path_len = strcspn(url, "?");
    LIT(b, "{\"method\":\"");
    sy_buf_puts(b, llhttp_method_name((llhttp_method_t)r->method));
    LIT(b, "\",\"path\":");
    sy_buf_json_str(b, url, path_len);
    LIT(b, ",\"query\":");
    sy_buf_json_str(b, url + path_len + (url[path_len] == '?'),
                    r->url.len - path_len - (url[path_len] == '?'));
    LIT(b, ",\"headers\":{");
    bool first = true;
    for (unsigned i = 0; i < r->nheaders; i++) {
        const struct mp_header *h = &r->headers[i];
        const char *name = r->head.data + h->name_off;
        bool seen = false; /* repeated headers are joined with ", " under the first */
        for (unsigned j = 0; j < i && !seen; j++)
            seen = r->headers[j].name_len == h->name_len &&
                   memcmp(r->head.data + r->headers[j].name_off, name, h->name_len) == 0;
        if (seen)
            continue;
        if (!first)
            LIT(b, ",");
        first = false;
        sy_buf_json_str(b, name, h->name_len);
        LIT(b, ":");
        bool repeated = false;
        for (unsigned j = i + 1; j < r->nheaders && !repeated; j++)
            repeated = r->headers[j].name_len == h->name_len &&
                       memcmp(r->head.data + r->headers[j].name_off, name, h->name_len) == 0;
        if (!repeated) {
            sy_buf_json_str(b, r->head.data + h->value_off, h->value_len);
            continue;
        }
        struct sy_buf joined = SY_BUF_INIT;
        for (unsigned j = i; j < r->nheaders; j++) {
            const struct mp_header *o = &r->headers[j];
            if (o->name_len != h->name_len ||
                memcmp(r->head.data + o->name_off, name, h->name_len) != 0)
                continue;
            if (joined.len)
                LIT(&joined, ", ");
            sy_buf_append(&joined, r->head.data + o->value_off, o->value_len);
        }
        sy_buf_json_str(b, joined.data, joined.len);
        sy_buf_free(&joined);
    }
    LIT(b, "},\"body\":");
    sy_buf_json_str(b, r->body.data ? r->body.data : "", r->body.len);
    LIT(b, "}");
}

static void put_json(struct sy_buf *out, const json_t *v)
{
    if (v == NULL) {
        LIT(out, "{}");
        return;
    }
    size_t need = json_dumpb(v, NULL, 0, JSON_COMPACT);
    sy_buf_reserve(out, need);
    out->len += json_dumpb(v, out->data + out->len, need, JSON_COMPACT);
    out->data[out->len] = '\0';
}

static void reply(struct mp_conn *c, int status)
{
    mp_send_json(c, status);
}

bool mp_admin_handle(struct mp_conn *c, const char *path, size_t path_len)
{
    struct sy_buf *out = &c->body;
    bool get = c->req.method == HTTP_GET;
    bool post = c->req.method == HTTP_POST;
    sy_buf_reset(out);
#define IS(p) (path_len == sizeof(p) - 1 && memcmp(path, p, sizeof(p) - 1) == 0)
    if (get && IS("/mock/stats")) {
        sy_buf_printf(
            out,
            "{\"requests\":%llu,\"connections_open\":%llu,\"connections_total\":%llu,"
            "\"aborted\":%llu}",
            (unsigned long long)mp_stats.requests, (unsigned long long)mp_stats.connections_open,
            (unsigned long long)mp_stats.connections_total, (unsigned long long)mp_stats.aborted);
        reply(c, 200);
        return true;
    }
    if (post && IS("/mock/reset")) {
        /* connections_open is a live gauge: it is not reset. */
        mp_stats.requests = 0;
        mp_stats.connections_total = 0;
        mp_stats.aborted = 0;
        ring_next = ring_count = 0;
        mp_config_clear();
        LIT(out, "{\"ok\":true}");
        reply(c, 200);
        return true;
    }
    if (get && IS("/mock/requests")) {
        LIT(out, "[");
        for (unsigned i = 0; i < ring_count; i++) {
            const struct sy_buf *e =
                &ring[(ring_next + MP_LOG_SIZE - ring_count + i) % MP_LOG_SIZE];
            if (i)
                LIT(out, ",");
            sy_buf_append(out, e->data, e->len);
        }
        LIT(out, "]");
        reply(c, 200);
        return true;
    }
    if (post && IS("/mock/config")) {
        char err[256];
        json_error_t jerr;
        mp_json_use_pool(NULL); /* the config outlives this request */
        json_t *o = json_loadb(c->req.body.data ? c->req.body.data : "", c->req.body.len, 0, &jerr);
        if (o == NULL) {
            mp_reply_error(MP_API_CHAT, 400, "the config is not valid JSON", out);
            reply(c, 400);
            return true;
        }
        if (mp_config_set(o, err, sizeof(err)) < 0) {
            mp_reply_error(MP_API_CHAT, 400, err, out);
            reply(c, 400);
            return true;
        }
        LIT(out, "{\"ok\":true}");
        reply(c, 200);
        return true;
    }
    if (get && IS("/mock/config")) {
        LIT(out, "{\"default\":");
        put_json(out, mp_config.dflt);
        LIT(out, ",\"by_model\":");
        put_json(out, mp_config.by_model);
        LIT(out, "}");
        reply(c, 200);
        return true;
    }
#undef IS
    return false;
}

void mp_admin_free(void)
{
    for (unsigned i = 0; i < MP_LOG_SIZE; i++)
        sy_buf_free(&ring[i]);
    mp_config_clear();
}
