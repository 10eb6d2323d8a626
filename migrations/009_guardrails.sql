-- SPDX-License-Identifier: Apache-2.0
-- Guardrails (docs/guardrails.md): checks on requests and answers, attached to public models
-- and client keys. The admin API validates a document with the routing table's own reader
-- (sy_guardrail_check_json) and compiles its regexes with vectorscan before it writes; the
-- columns keep what needs no parsing here (name, description, enabled) and the rest as the
-- table's shape: spec = {applies_to, input, output, limits}. Attachments are by name (models)
-- and id (keys) and are not foreign keys: a guardrail naming a model that does not exist yet
-- applies once it does, and deleting a key simply ends its attachment.

CREATE TABLE guardrails (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
        CONSTRAINT guardrails_name_format CHECK (name ~ '^[^[:space:][:cntrl:]]{1,128}$'),
    description text,
    enabled boolean NOT NULL DEFAULT true,
    spec jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT guardrails_spec_object CHECK (jsonb_typeof(spec) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    version int NOT NULL DEFAULT 1
);

CREATE TRIGGER guardrails_touch BEFORE UPDATE ON guardrails
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION config_touch_row();

-- A change is a new config version, published to every data plane (as 003 does for the others).
CREATE TRIGGER guardrails_config_bump_insert AFTER INSERT ON guardrails
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION config_bump_changed();
CREATE TRIGGER guardrails_config_bump_update AFTER UPDATE ON guardrails
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION config_bump_changed();
CREATE TRIGGER guardrails_config_bump_delete AFTER DELETE ON guardrails
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION config_bump_changed();
CREATE TRIGGER guardrails_config_bump_truncate AFTER TRUNCATE ON guardrails
    FOR EACH STATEMENT EXECUTE FUNCTION config_bump_truncate();

CREATE FUNCTION guardrail_doc(g guardrails) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', g.id,
        'object', 'guardrail',
        'name', g.name,
        'description', g.description,
        'enabled', g.enabled,
        'applies_to', coalesce(g.spec -> 'applies_to', '{}'),
        'input', coalesce(g.spec -> 'input', '{}'),
        'output', coalesce(g.spec -> 'output', '{}'),
        'limits', coalesce(g.spec -> 'limits', '{}'),
        'version', g.version,
        'created_at', g.created_at,
        'updated_at', g.updated_at)
$$;
