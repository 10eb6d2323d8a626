-- SPDX-License-Identifier: Apache-2.0
-- The audit log: one row per admin write (POST, PUT, PATCH, DELETE under /admin/v1/), accepted
-- or refused, stored by the admin API framework (controlplane/src/api_audit.c) right after the
-- response, on the same database connection, so a later read sees it (docs/security.md).
--
-- `actor` is who the token says: its role and the first 8 hex digits of its SHA-256
-- ("admin:1a2b3c4d"), "anonymous" without a token. `actor_claimed` is the X-Switchyard-Actor
-- header as the caller sent it: recorded, never trusted. `summary` is the request body with
-- every secret member (api_key, secret, key, password, token, ... at any depth) replaced by
-- "[REDACTED]".
--
-- Migrations run inside a transaction: no BEGIN/COMMIT here.

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    role text NOT NULL CONSTRAINT audit_log_role_known CHECK (role IN ('admin', 'read', 'none')),
    actor_claimed text,
    remote text,
    method text NOT NULL,
    path text NOT NULL,
    resource text,
    item text,
    status int NOT NULL,
    version bigint,
    request_id text,
    summary jsonb
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_resource ON audit_log (resource, id);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
