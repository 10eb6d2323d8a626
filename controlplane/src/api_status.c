/* SPDX-License-Identifier: Apache-2.0 */
/** The admin API's status of this control plane: GET /admin/v1/status (the collection path
 * only).
 *
 *     {"object": "status", "node": "<node id>", "config_version": <n> | null,
 *      "database": "up" | "down", "started_at": "<RFC 3339>", "live_nodes": <n> | null,
 *      "publisher": {...}}
 *
 * live_nodes is the count every limit is divided by (migrations/006_governance.sql).
 *
 * It answers 200 also when the database is down: then database is "down" and config_version
 * null, which is what an operator needs to see. */

#include <stdio.h>
#include <time.h>

#include "api.h"

static void on_version(struct cp_call *c, const PGresult *res, const char *err)
{
    struct cp_server *cp = c->cp;
    bool up = !err && PQntuples(res) == 1;
    json_int_t version = up ? (json_int_t)atoll(PQgetvalue(res, 0, 0)) : 0;
    json_int_t nodes = up ? (json_int_t)atoll(PQgetvalue(res, 0, 1)) : 0;

    time_t secs = (time_t)(cp->started_ms / 1000);
    struct tm tm;
    char started[48];
    gmtime_r(&secs, &tm);
    size_t n = strftime(started, sizeof(started), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(started + n, sizeof(started) - n, ".%03dZ", (int)(cp->started_ms % 1000));

    json_t *publisher = cp__publisher_status(cp);
    json_t *doc =
        json_pack("{s:s,s:s,s:o,s:s,s:s,s:o,s:o}", "object", "status", "node",
                  cp->cfg.node_id ? cp->cfg.node_id : "", "config_version",
                  up ? json_integer(version) : json_null(), "database", up ? "up" : "down",
                  "started_at", started, "live_nodes", up ? json_integer(nodes) : json_null(),
                  "publisher", publisher ? publisher : json_null());
    cp_call_json(c, 200, doc, -1);
}

static void status(struct cp_call *c)
{
    cp_call_query(c, "SELECT version, live_nodes FROM config_state", 0, NULL, on_version);
}

/* /admin/v1/status/<anything> is no resource. */
static void no_item(struct cp_call *c)
{
    cp_call_error(c, 404, "not_found_error", "unknown_url", NULL,
                  "Unknown URL: the status is GET /admin/v1/status");
}

const struct cp_resource cp_api_status = {
    .name = "status",
    .kind = "status",
    .list = status,
    .get = no_item,
};
