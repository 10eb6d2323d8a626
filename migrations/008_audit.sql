-- SPDX-License-Identifier: Apache-2.0
-- The audit log of admin writes (docs/security.md). 001 made audit_log for the command-line
-- tools (rotate-key writes actor 'cli'); this adds what an admin API write records: one row
-- per POST, PUT, PATCH or DELETE under /admin/v1/, accepted or refused, stored by the admin API
-- framework (controlplane/src/api_audit.c) right after the response, on the same database
-- connection, so a read that follows the answer finds the row.
--
--   actor          who the token says: a named token's name ("alice"), else its role and
--                  the first 8 hex digits of its SHA-256 ("admin:1a2b3c4d"); "anonymous"
--                  without a token
--   role           admin, read or none (a refused token)
--   actor_claimed  the X-Switchyard-Actor header as the caller sent it: recorded, not trusted
--   remote         the client's address and port
--   method, path   the request; resource and resource_name: /admin/v1/<resource>/<name>
--   status         the HTTP status answered (499: the client left before the answer)
--   version        the version after the write (the answer's ETag), when there is one
--   request_id     the x-request-id of the answer
--   detail         the request body with every secret member (api_key, secret, key, password,
--                  token, *_key, *_token, ... at any depth) replaced by "[REDACTED]"
--
-- Migrations run inside a transaction: no BEGIN/COMMIT here.

ALTER TABLE audit_log
    ADD COLUMN role text CONSTRAINT audit_log_role_known
        CHECK (role IS NULL OR role IN ('admin', 'read', 'none')),
    ADD COLUMN actor_claimed text,
    ADD COLUMN remote text,
    ADD COLUMN method text,
    ADD COLUMN path text,
    ADD COLUMN status int,
    ADD COLUMN version bigint,
    ADD COLUMN request_id text;

-- GET /admin/v1/audit?actor=: one actor's writes, in order.
CREATE INDEX audit_log_actor_idx ON audit_log (actor, id);
