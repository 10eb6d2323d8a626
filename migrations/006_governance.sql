-- SPDX-License-Identifier: Apache-2.0
-- Governance: limits of a client key per public model, and the live nodes that share every
-- global limit (docs/governance.md, "Several nodes").
--
-- Migrations run inside a transaction: no BEGIN/COMMIT here.

-- ---- a key's limits per public model -------------------------------------------------------

-- {"<public model>": {"rpm": n, "tpm": n}, ...}; the names need not exist yet (a model may be
-- created after the key). Validated by the admin API (api_keys.c); the shape is checked here too.
ALTER TABLE api_keys ADD COLUMN model_limits jsonb NOT NULL DEFAULT '{}'
    CONSTRAINT api_keys_model_limits_object CHECK (jsonb_typeof(model_limits) = 'object');

CREATE OR REPLACE FUNCTION api_key_doc(k api_keys) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', k.id,
        'object', 'api_key',
        'name', k.name,
        'prefix', k.key_prefix,
        'agent', k.agent,
        'user', k.user_name,
        'tier', k.tier,
        'models', to_jsonb(k.allowed_models),
        'limits', jsonb_build_object('rpm', k.rpm, 'tpm', k.tpm),
        'model_limits', k.model_limits,
        'expires_at', k.expires_at,
        'revoked', k.revoked,
        'slot', k.slot,
        'version', k.version,
        'created_at', k.created_at,
        'updated_at', k.updated_at)
$$;

-- ---- live nodes -------------------------------------------------------------------------------

-- The limits an operator sets (deployments' rpm/tpm/max_concurrency, keys' rpm/tpm and their
-- per-model limits) are for the whole fleet. Each node enforces its share: the limit divided by
-- the live nodes, rounded down, at least 1. A node is live when its control plane was heard
-- from within the window it states and its data plane has workers connected (a control plane
-- serving only the admin API takes no share).
--
-- The count is part of the config: when it changes the config version is bumped and announced
-- like any change, so every control plane recompiles with the same divisor.
ALTER TABLE config_state ADD COLUMN live_nodes int NOT NULL DEFAULT 1
    CONSTRAINT config_state_live_nodes_positive CHECK (live_nodes >= 1);

-- Record the heartbeat of node <p_id> and recount the live nodes, heard from within
-- <p_window_ms>. Returns the count.
CREATE FUNCTION node_heartbeat(p_id text, p_hostname text, p_started_ms double precision,
                               p_version bigint, p_info jsonb, p_window_ms int)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    current int;
    n int;
    v bigint;
BEGIN
    INSERT INTO nodes (id, hostname, started_at, heartbeat_at, config_version, info)
    VALUES (p_id, p_hostname, to_timestamp(p_started_ms / 1000), now(), p_version, p_info)
    ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname,
        started_at = EXCLUDED.started_at, heartbeat_at = now(),
        config_version = EXCLUDED.config_version, info = EXCLUDED.info;
    -- One recount at a time, so that two nodes cannot each write a stale count.
    SELECT live_nodes INTO current FROM config_state WHERE id FOR UPDATE;
    SELECT greatest(count(*), 1)::int INTO n FROM nodes
    WHERE (heartbeat_at > clock_timestamp() - make_interval(secs => p_window_ms / 1000.0)
           AND coalesce((info ->> 'workers')::int, 0) > 0);
    IF n <> current THEN
        UPDATE config_state SET live_nodes = n, version = version + 1 WHERE id
            RETURNING version INTO v;
        PERFORM pg_notify('switchyard_config', v::text);
    END IF;
    RETURN n;
END
$$;
