-- SPDX-License-Identifier: Apache-2.0
-- The configuration schema: providers, deployments, public models and their targets, client API
-- keys, plus the nodes of the fleet and the audit log.
--
-- Every config table carries a statement-level trigger that bumps config_state.version and
-- sends NOTIFY switchyard_config with the new version, in the writing transaction: a change and
-- its version commit together, and every control plane listening hears about it. The row lock on
-- config_state also orders concurrent writers, so versions are committed in increasing order.
--
-- Rows carry `version` (bumped on every change, the admin API's ETag) and created_at/updated_at.
-- Deployments, models and API keys carry `slot`: a small stable integer that indexes their
-- counters in shared memory, the lowest free one assigned on insert.
--
-- Migrations run inside a transaction: no BEGIN/COMMIT here.

-- ---- the config version ----------------------------------------------------------------------

CREATE TABLE config_state (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL DEFAULT 0
);
INSERT INTO config_state DEFAULT VALUES;

CREATE FUNCTION config_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    UPDATE config_state SET version = version + 1 WHERE id RETURNING version INTO v;
    PERFORM pg_notify('switchyard_config', v::text);
    RETURN NULL;
END
$$;

-- ---- per-row bookkeeping ---------------------------------------------------------------------

-- BEFORE UPDATE: a changed row gets a new version and updated_at (an update that changes
-- nothing keeps both, through the trigger's WHEN clause).
CREATE FUNCTION config_touch_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    NEW.created_at := OLD.created_at;
    RETURN NEW;
END
$$;

-- BEFORE INSERT: give NEW.slot the lowest slot not in use in the table, unless the statement
-- chose one. A transaction-level advisory lock per table serializes concurrent inserts, so two
-- of them never pick the same slot; each statement of a trigger function takes a fresh snapshot
-- under READ COMMITTED, so the second sees the first's row once it has the lock.
CREATE FUNCTION config_assign_slot() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.slot IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('switchyard.slot.' || TG_TABLE_NAME));
        EXECUTE format(
            'SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM %1$I WHERE slot = 0) THEN 0'
            ' ELSE (SELECT min(a.slot) + 1 FROM %1$I a'
            '       WHERE NOT EXISTS (SELECT 1 FROM %1$I b WHERE b.slot = a.slot + 1)) END',
            TG_TABLE_NAME)
        INTO NEW.slot;
    END IF;
    RETURN NEW;
END
$$;

-- ---- providers ----------------------------------------------------------------------------------

CREATE TABLE providers (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
        CONSTRAINT providers_name_format CHECK (name ~ '^[a-z0-9._-]{1,64}$'),
    -- a catalog id ("openai", "anthropic", "azure-openai"...) or 'custom'
    kind text NOT NULL CONSTRAINT providers_kind_format CHECK (kind ~ '^[a-z0-9._-]{1,64}$'),
    base_url text NOT NULL CONSTRAINT providers_base_url_format CHECK (base_url ~ '^https?://[^[:space:]]+$'),
    format text NOT NULL CONSTRAINT providers_format_known
        CHECK (format IN ('openai', 'anthropic', 'azure')),
    -- bearer: Authorization: Bearer <key>; header: <auth_name>: <key>; query: ?<auth_name>=<key>
    auth_style text NOT NULL CONSTRAINT providers_auth_style_known
        CHECK (auth_style IN ('bearer', 'header', 'query', 'none')),
    auth_name text CONSTRAINT providers_auth_name_needed
        CHECK (auth_style NOT IN ('header', 'query') OR auth_name IS NOT NULL),
    extra_headers jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT providers_extra_headers_object CHECK (jsonb_typeof(extra_headers) = 'object'),
    -- AES-256-GCM ciphertext of the credential (controlplane/src/crypto.h) and the id of the
    -- master key that sealed it; never returned by the admin API. The hint ("sk-…wxyz") is.
    api_key_enc bytea,
    api_key_key_id text,
    api_key_hint text,
    api_version text,
    ca_file text,
    insecure boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    version int NOT NULL DEFAULT 1,
    CONSTRAINT providers_api_key_complete
        CHECK ((api_key_enc IS NULL) = (api_key_key_id IS NULL))
);

-- ---- deployments: a model at a provider, with its limits, timeouts and prices --------------

CREATE TABLE deployments (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
        CONSTRAINT deployments_name_format CHECK (name ~ '^[a-z0-9._-]{1,64}$'),
    provider_id bigint NOT NULL REFERENCES providers (id) ON DELETE RESTRICT,
    -- the provider's model id; PostgreSQL regexes repeat at most 255 times, hence length()
    model text NOT NULL CONSTRAINT deployments_model_format
        CHECK (model ~ '^[^[:space:][:cntrl:]]+$' AND length(model) <= 256),
    weight int NOT NULL DEFAULT 1 CONSTRAINT deployments_weight_range CHECK (weight >= 0),
    rpm int CONSTRAINT deployments_rpm_positive CHECK (rpm > 0),
    tpm int CONSTRAINT deployments_tpm_positive CHECK (tpm > 0),
    max_concurrency int CONSTRAINT deployments_max_concurrency_positive
        CHECK (max_concurrency > 0),
    -- milliseconds; NULL means the data plane's default
    connect_timeout_ms int CONSTRAINT deployments_connect_timeout_positive
        CHECK (connect_timeout_ms > 0),
    first_byte_timeout_ms int CONSTRAINT deployments_first_byte_timeout_positive
        CHECK (first_byte_timeout_ms > 0),
    idle_timeout_ms int CONSTRAINT deployments_idle_timeout_positive
        CHECK (idle_timeout_ms > 0),
    total_timeout_ms int CONSTRAINT deployments_total_timeout_positive
        CHECK (total_timeout_ms > 0),
    -- per million tokens, in the billing currency
    input_price numeric(20, 6) NOT NULL DEFAULT 0
        CONSTRAINT deployments_input_price_range CHECK (input_price >= 0),
    output_price numeric(20, 6) NOT NULL DEFAULT 0
        CONSTRAINT deployments_output_price_range CHECK (output_price >= 0),
    enabled boolean NOT NULL DEFAULT true,
    slot int NOT NULL UNIQUE CONSTRAINT deployments_slot_range CHECK (slot >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    version int NOT NULL DEFAULT 1
);
-- The foreign key's RESTRICT check and "deployments of this provider".
CREATE INDEX deployments_provider_id_idx ON deployments (provider_id);

-- ---- models: the public names clients ask for -------------------------------------------------

CREATE TABLE models (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
        CONSTRAINT models_name_format CHECK (name ~ '^[^[:space:][:cntrl:]]{1,128}$'),
    description text,
    -- routing policy (strategy, rules, retries...), validated by the admin API
    policy jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT models_policy_object CHECK (jsonb_typeof(policy) = 'object'),
    slot int NOT NULL UNIQUE CONSTRAINT models_slot_range CHECK (slot >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    version int NOT NULL DEFAULT 1
);

-- The deployments a model routes to, in order (position: fallback order; weight: share).
CREATE TABLE model_targets (
    model_id bigint NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    deployment_id bigint NOT NULL REFERENCES deployments (id) ON DELETE RESTRICT,
    weight int NOT NULL DEFAULT 1 CONSTRAINT model_targets_weight_range CHECK (weight >= 0),
    position int NOT NULL CONSTRAINT model_targets_position_range CHECK (position >= 0),
    PRIMARY KEY (model_id, deployment_id),
    -- Deferrable so that one statement may reorder targets (swap two positions).
    CONSTRAINT model_targets_position_unique UNIQUE (model_id, position)
        DEFERRABLE INITIALLY IMMEDIATE
);
-- The foreign key's RESTRICT check and "models using this deployment".
CREATE INDEX model_targets_deployment_id_idx ON model_targets (deployment_id);

-- ---- client API keys ------------------------------------------------------------------------------

CREATE TABLE api_keys (
    id bigserial PRIMARY KEY,
    name text NOT NULL CONSTRAINT api_keys_name_length CHECK (length(name) BETWEEN 1 AND 128),
    -- SHA-256 of the whole key; the key itself is shown once, at creation, and never stored
    key_hash bytea NOT NULL UNIQUE CONSTRAINT api_keys_key_hash_length
        CHECK (length(key_hash) = 32),
    key_prefix text NOT NULL, -- "sk-sy-AbCd", for listings
    agent text,
    user_name text,
    tier text,
    allowed_models text[], -- NULL: every model
    rpm int CONSTRAINT api_keys_rpm_positive CHECK (rpm > 0),
    tpm int CONSTRAINT api_keys_tpm_positive CHECK (tpm > 0),
    expires_at timestamptz,
    revoked boolean NOT NULL DEFAULT false,
    slot int NOT NULL UNIQUE CONSTRAINT api_keys_slot_range CHECK (slot >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    version int NOT NULL DEFAULT 1
);

-- ---- triggers of the config tables -------------------------------------------------------------

CREATE TRIGGER providers_touch BEFORE UPDATE ON providers
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION config_touch_row();
CREATE TRIGGER deployments_touch BEFORE UPDATE ON deployments
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION config_touch_row();
CREATE TRIGGER models_touch BEFORE UPDATE ON models
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION config_touch_row();
CREATE TRIGGER api_keys_touch BEFORE UPDATE ON api_keys
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION config_touch_row();

CREATE TRIGGER deployments_slot BEFORE INSERT ON deployments
    FOR EACH ROW EXECUTE FUNCTION config_assign_slot();
CREATE TRIGGER models_slot BEFORE INSERT ON models
    FOR EACH ROW EXECUTE FUNCTION config_assign_slot();
CREATE TRIGGER api_keys_slot BEFORE INSERT ON api_keys
    FOR EACH ROW EXECUTE FUNCTION config_assign_slot();

CREATE TRIGGER providers_config_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON providers
    FOR EACH STATEMENT EXECUTE FUNCTION config_bump();
CREATE TRIGGER deployments_config_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON deployments
    FOR EACH STATEMENT EXECUTE FUNCTION config_bump();
CREATE TRIGGER models_config_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON models
    FOR EACH STATEMENT EXECUTE FUNCTION config_bump();
CREATE TRIGGER model_targets_config_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON model_targets
    FOR EACH STATEMENT EXECUTE FUNCTION config_bump();
CREATE TRIGGER api_keys_config_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION config_bump();

-- ---- the fleet and the audit log (not config: no version bump) ---------------------------------

CREATE TABLE nodes (
    id text PRIMARY KEY,
    hostname text,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    config_version bigint, -- the routing-table version the node's data plane runs
    info jsonb NOT NULL DEFAULT '{}'
);
-- "live nodes": heartbeat within the last N seconds
CREATE INDEX nodes_heartbeat_at_idx ON nodes (heartbeat_at);

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text,          -- who: admin token name, "cli"...
    action text NOT NULL, -- create, update, delete, rotate-key...
    resource text,       -- providers, deployments, models, api_keys...
    resource_name text,
    detail jsonb
);
-- Listings filtered by time, or by one resource, newest first (paginated by id).
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_resource_idx ON audit_log (resource, resource_name, id);
