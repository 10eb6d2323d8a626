-- SPDX-License-Identifier: Apache-2.0
-- Usage per combination: minute x node x deployment x model x key (with the key's agent and
-- user), so that "the cost of model X for user Y on deployment Z" has an answer
-- (docs/observability.md).
--
-- The segment keeps one cell per combination seen (sy_shm_combo in common/include/sy/shm-t.h):
-- the deployment that answered a request (the last one tried), the public model asked for, the
-- client key (its slot and its id). The flush works exactly like usage_flush() of
-- 005_usage_events.sql, with a watermark per cell: usage_combo_flush() subtracts the totals last
-- accounted for, adds the differences to the current minute and moves the watermark, in the
-- same statement as usage_flush(), so a database outage loses nothing and a control-plane
-- restart counts nothing twice. A cell belongs to one combination for the life of its segment,
-- so the watermark is keyed by cell; a new segment (a new generation) drops the node's
-- watermarks.
--
-- Names: a deployment, a model and a key are named by their ids (a cell is keyed by them too, so
-- a slot reused by another object never takes the old one's counts), or as last seen once they
-- are deleted; a deployment or model without an id (a table from an older control plane) by
-- who owns its slot now. '' stands for "none" (a request refused before it had a model, a
-- deployment or a key). The overflow cell, the requests that found no cell, is named '(other)'
-- in all three.
--
-- The combination counts requests (not attempts), with their latency; it has no retries or
-- fallbacks, which are per model.
--
-- Migrations run inside a transaction: no BEGIN/COMMIT here.

CREATE TABLE usage_combo_minute (
    minute timestamptz NOT NULL,
    node text NOT NULL,
    deployment text NOT NULL DEFAULT '',
    model text NOT NULL DEFAULT '',
    key text NOT NULL DEFAULT '',
    agent text NOT NULL DEFAULT '',
    user_name text NOT NULL DEFAULT '',
    requests bigint NOT NULL DEFAULT 0,
    successes bigint NOT NULL DEFAULT 0,
    errors bigint NOT NULL DEFAULT 0, -- requests - successes
    rate_limited bigint NOT NULL DEFAULT 0,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cost numeric(24, 6) NOT NULL DEFAULT 0,
    latency_count bigint NOT NULL DEFAULT 0,
    latency_sum_us bigint NOT NULL DEFAULT 0,
    latency_buckets bigint[],
    PRIMARY KEY (minute, node, deployment, model, key, agent, user_name)
);
CREATE INDEX usage_combo_minute_model_idx ON usage_combo_minute (model, minute);
CREATE INDEX usage_combo_minute_user_idx ON usage_combo_minute (user_name, minute);

-- Minutes older than the retention, summed per hour.
CREATE TABLE usage_combo_hour (LIKE usage_combo_minute INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE usage_combo_hour RENAME COLUMN minute TO hour;
ALTER TABLE usage_combo_hour ADD PRIMARY KEY (hour, node, deployment, model, key, agent, user_name);

-- Every name a deployment, model or key had last, by id, kept after it is deleted: a cell's
-- counts that reach the flush after its objects were deleted (within one flush period, or
-- while the database was down) still get their names. Filled by triggers on the config tables.
CREATE TABLE usage_names (
    kind text NOT NULL,  -- deployment, model, key
    id bigint NOT NULL,
    name text NOT NULL,
    agent text,          -- keys only
    user_name text,
    PRIMARY KEY (kind, id)
);
INSERT INTO usage_names (kind, id, name)
    SELECT 'deployment', id, name FROM deployments UNION ALL SELECT 'model', id, name FROM models;
INSERT INTO usage_names (kind, id, name, agent, user_name)
    SELECT 'key', id, name, agent, user_name FROM api_keys;

CREATE FUNCTION usage_names_remember() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_names AS u (kind, id, name) VALUES (TG_ARGV[0], NEW.id, NEW.name)
    ON CONFLICT (kind, id) DO UPDATE SET name = EXCLUDED.name;
    RETURN NULL;
END
$$;

CREATE FUNCTION usage_names_remember_key() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_names AS u (kind, id, name, agent, user_name)
    VALUES ('key', NEW.id, NEW.name, NEW.agent, NEW.user_name)
    ON CONFLICT (kind, id) DO UPDATE
        SET name = EXCLUDED.name, agent = EXCLUDED.agent, user_name = EXCLUDED.user_name;
    RETURN NULL;
END
$$;

CREATE TRIGGER deployments_usage_name AFTER INSERT OR UPDATE OF name ON deployments
    FOR EACH ROW EXECUTE FUNCTION usage_names_remember('deployment');
CREATE TRIGGER models_usage_name AFTER INSERT OR UPDATE OF name ON models
    FOR EACH ROW EXECUTE FUNCTION usage_names_remember('model');
CREATE TRIGGER api_keys_usage_name AFTER INSERT OR UPDATE OF name, agent, user_name ON api_keys
    FOR EACH ROW EXECUTE FUNCTION usage_names_remember_key();

-- The totals of each cell of each node last added to the rollups, and the names they went to.
CREATE TABLE usage_combo_watermarks (
    node text NOT NULL,
    generation bigint NOT NULL,
    cell int NOT NULL,
    deployment text NOT NULL DEFAULT '',
    model text NOT NULL DEFAULT '',
    key text NOT NULL DEFAULT '',
    agent text NOT NULL DEFAULT '',
    user_name text NOT NULL DEFAULT '',
    requests bigint NOT NULL,
    successes bigint NOT NULL,
    rate_limited bigint NOT NULL,
    prompt_tokens bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cost_micros bigint NOT NULL,
    latency_count bigint NOT NULL,
    latency_sum_us bigint NOT NULL,
    latency_buckets bigint[],
    flushed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, cell)
);

-- Account for the totals <p_rows> of node <p_node>'s segment <p_generation>: a JSON array of
-- {cell, overflow, deployment_slot, model_slot, key_slot, deployment_id, model_id, key_id,
--  requests, successes, rate_limited, prompt_tokens, completion_tokens, cost_micros,
--  latency_count, latency_sum_us, latency_buckets}, each a total since the segment was created; a slot of -1 is none.
-- Returns the number of rollup rows touched.
CREATE FUNCTION usage_combo_flush(p_node text, p_generation bigint, p_rows jsonb)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('switchyard.usage.' || p_node));
    DELETE FROM usage_combo_watermarks WHERE node = p_node AND generation <> p_generation;

    WITH r AS (
        SELECT * FROM jsonb_to_recordset(p_rows) AS r(
            cell int, overflow boolean, deployment_slot int, model_slot int, key_slot int,
            deployment_id bigint, model_id bigint, key_id bigint, requests bigint,
            successes bigint, rate_limited bigint, prompt_tokens bigint,
            completion_tokens bigint, cost_micros bigint,
            latency_count bigint, latency_sum_us bigint, latency_buckets bigint[])
        WHERE r.cell >= 0
    ), f AS (
        SELECT r.cell,
               CASE WHEN r.overflow THEN '(other)' WHEN r.deployment_slot < 0 THEN ''
                    ELSE coalesce(d.name, dn.name, w.deployment, '#' || r.deployment_slot) END
                   AS deployment,
               CASE WHEN r.overflow THEN '(other)' WHEN r.model_slot < 0 THEN ''
                    ELSE coalesce(m.name, mn.name, w.model, '#' || r.model_slot) END AS model,
               CASE WHEN r.overflow THEN '(other)' WHEN r.key_slot < 0 THEN ''
                    ELSE coalesce(k.name, kn.name, w.key, '#' || r.key_slot) END AS key,
               CASE WHEN k.id IS NOT NULL THEN coalesce(k.agent, '')
                    WHEN kn.id IS NOT NULL THEN coalesce(kn.agent, '')
                    ELSE coalesce(w.agent, '') END AS agent,
               CASE WHEN k.id IS NOT NULL THEN coalesce(k.user_name, '')
                    WHEN kn.id IS NOT NULL THEN coalesce(kn.user_name, '')
                    ELSE coalesce(w.user_name, '') END AS user_name,
               r.requests, r.successes, r.rate_limited, r.prompt_tokens, r.completion_tokens,
               r.cost_micros, r.latency_count, r.latency_sum_us, r.latency_buckets,
               usage_delta(r.requests, w.requests) AS d_requests,
               usage_delta(r.successes, w.successes) AS d_successes,
               usage_delta(r.rate_limited, w.rate_limited) AS d_rate_limited,
               usage_delta(r.prompt_tokens, w.prompt_tokens) AS d_prompt_tokens,
               usage_delta(r.completion_tokens, w.completion_tokens) AS d_completion_tokens,
               usage_delta(r.cost_micros, w.cost_micros) AS d_cost_micros,
               usage_delta(r.latency_count, w.latency_count) AS d_latency_count,
               usage_delta(r.latency_sum_us, w.latency_sum_us) AS d_latency_sum_us,
               usage_hist_delta(r.latency_buckets, w.latency_buckets) AS d_latency_buckets
        FROM r
        LEFT JOIN usage_combo_watermarks w ON w.node = p_node AND w.cell = r.cell
        LEFT JOIN deployments d ON NOT r.overflow AND r.deployment_slot >= 0
             AND CASE WHEN r.deployment_id > 0 THEN d.id = r.deployment_id
                      ELSE d.slot = r.deployment_slot END
        LEFT JOIN models m ON NOT r.overflow AND r.model_slot >= 0
             AND CASE WHEN r.model_id > 0 THEN m.id = r.model_id ELSE m.slot = r.model_slot END
        LEFT JOIN api_keys k ON NOT r.overflow AND r.key_slot >= 0 AND k.id = r.key_id
        LEFT JOIN usage_names dn ON dn.kind = 'deployment' AND dn.id = r.deployment_id
        LEFT JOIN usage_names mn ON mn.kind = 'model' AND mn.id = r.model_id
        LEFT JOIN usage_names kn ON kn.kind = 'key' AND kn.id = r.key_id
    ), up AS (
        INSERT INTO usage_combo_minute AS u (minute, node, deployment, model, key, agent,
                                             user_name, requests, successes, errors,
                                             rate_limited, prompt_tokens, completion_tokens,
                                             cost, latency_count, latency_sum_us,
                                             latency_buckets)
        SELECT date_trunc('minute', now()), p_node, deployment, model, key, agent, user_name,
               sum(d_requests), sum(d_successes),
               greatest(sum(d_requests) - sum(d_successes), 0), sum(d_rate_limited),
               sum(d_prompt_tokens), sum(d_completion_tokens), sum(d_cost_micros) / 1000000.0,
               sum(d_latency_count), sum(d_latency_sum_us), usage_hist_sum(d_latency_buckets)
        FROM f
        WHERE d_requests + d_successes + d_rate_limited + d_prompt_tokens
              + d_completion_tokens + d_cost_micros + d_latency_count > 0
        GROUP BY deployment, model, key, agent, user_name
        ON CONFLICT (minute, node, deployment, model, key, agent, user_name) DO UPDATE SET
            requests = u.requests + EXCLUDED.requests,
            successes = u.successes + EXCLUDED.successes,
            errors = u.errors + EXCLUDED.errors,
            rate_limited = u.rate_limited + EXCLUDED.rate_limited,
            prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
            cost = u.cost + EXCLUDED.cost,
            latency_count = u.latency_count + EXCLUDED.latency_count,
            latency_sum_us = u.latency_sum_us + EXCLUDED.latency_sum_us,
            latency_buckets = usage_hist_add(u.latency_buckets, EXCLUDED.latency_buckets)
        RETURNING 1
    ), wm AS (
        INSERT INTO usage_combo_watermarks AS w (node, generation, cell, deployment, model, key,
                                                 agent, user_name, requests, successes,
                                                 rate_limited, prompt_tokens,
                                                 completion_tokens, cost_micros, latency_count,
                                                 latency_sum_us, latency_buckets)
        SELECT p_node, p_generation, cell, deployment, model, key, agent, user_name, requests,
               successes, rate_limited, prompt_tokens, completion_tokens, cost_micros,
               latency_count, latency_sum_us, latency_buckets
        FROM f
        ON CONFLICT (node, cell) DO UPDATE SET
            generation = EXCLUDED.generation, deployment = EXCLUDED.deployment,
            model = EXCLUDED.model, key = EXCLUDED.key, agent = EXCLUDED.agent,
            user_name = EXCLUDED.user_name, requests = EXCLUDED.requests,
            successes = EXCLUDED.successes, rate_limited = EXCLUDED.rate_limited,
            prompt_tokens = EXCLUDED.prompt_tokens,
            completion_tokens = EXCLUDED.completion_tokens,
            cost_micros = EXCLUDED.cost_micros, latency_count = EXCLUDED.latency_count,
            latency_sum_us = EXCLUDED.latency_sum_us,
            latency_buckets = EXCLUDED.latency_buckets, flushed_at = now()
    )
    SELECT count(*) FROM up INTO n;
    RETURN n;
END
$$;

-- Move the combination minutes older than <retention_days> (whole hours) into
-- usage_combo_hour. One control plane at a time: the others return -1 at once.
CREATE FUNCTION usage_combo_compact(retention_days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := date_trunc('hour', now() - make_interval(days => retention_days));
    n integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('switchyard.usage.combo_compact')) THEN
        RETURN -1;
    END IF;
    WITH moved AS (
        DELETE FROM usage_combo_minute WHERE minute < cutoff RETURNING *
    )
    INSERT INTO usage_combo_hour AS u (hour, node, deployment, model, key, agent, user_name,
                                       requests, successes, errors, rate_limited, prompt_tokens,
                                       completion_tokens, cost, latency_count, latency_sum_us,
                                       latency_buckets)
    SELECT date_trunc('hour', minute), node, deployment, model, key, agent, user_name,
           sum(requests), sum(successes), sum(errors), sum(rate_limited), sum(prompt_tokens),
           sum(completion_tokens), sum(cost), sum(latency_count), sum(latency_sum_us),
           usage_hist_sum(latency_buckets)
    FROM moved
    GROUP BY 1, node, deployment, model, key, agent, user_name
    ON CONFLICT (hour, node, deployment, model, key, agent, user_name) DO UPDATE SET
        requests = u.requests + EXCLUDED.requests,
        successes = u.successes + EXCLUDED.successes,
        errors = u.errors + EXCLUDED.errors,
        rate_limited = u.rate_limited + EXCLUDED.rate_limited,
        prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
        cost = u.cost + EXCLUDED.cost,
        latency_count = u.latency_count + EXCLUDED.latency_count,
        latency_sum_us = u.latency_sum_us + EXCLUDED.latency_sum_us,
        latency_buckets = usage_hist_add(u.latency_buckets, EXCLUDED.latency_buckets);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- ---- the request log (controlplane/src/request_log.c) -------------------------------------------

-- A key's opt-in to body logging: with --request-log bodies, its prompts and answers are kept.
ALTER TABLE api_keys ADD COLUMN log_bodies boolean NOT NULL DEFAULT false;

-- The key document gains log_bodies. The previous definition is kept under another name and
-- wrapped, so whatever earlier migrations put in the document stays in it.
ALTER FUNCTION api_key_doc(api_keys) RENAME TO api_key_doc_before_011;
CREATE FUNCTION api_key_doc(k api_keys) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT api_key_doc_before_011(k) || jsonb_build_object('log_bodies', k.log_bodies)
$$;

-- One row per request a data plane served while --request-log was on. Names are resolved when
-- the record is stored (slots and key ids are the segment's), so a later rename does not
-- rewrite history. Bodies only for keys with log_bodies under --request-log bodies, each cut
-- at 64 KiB (the *_truncated flags say so; *_bytes is the size before the cut).
CREATE TABLE request_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,          -- when the response ended
    request_id text NOT NULL,
    node text NOT NULL,
    worker int,
    key_id bigint,
    key text,                         -- the key's name, never the key
    agent text,
    user_name text,
    model text,                       -- the public model asked for
    deployment text,                  -- the deployment that answered (the last one tried)
    status int,                       -- the HTTP status sent to the client
    outcome text,                     -- success, upstream_5xx, rate_limited...
    latency_ms double precision,
    ttfb_ms double precision,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cost numeric(24, 6) NOT NULL DEFAULT 0,
    stream boolean NOT NULL DEFAULT false,
    attempts int NOT NULL DEFAULT 0,
    table_version bigint,
    request_body text,                -- NULL: not logged
    request_bytes bigint,
    request_truncated boolean NOT NULL DEFAULT false,
    response_body text,               -- a stream's: the raw server-sent events
    response_bytes bigint,
    response_truncated boolean NOT NULL DEFAULT false
);
CREATE INDEX request_log_request_id_idx ON request_log (request_id);
CREATE INDEX request_log_at_idx ON request_log (at);
CREATE INDEX request_log_key_idx ON request_log (key, id);
CREATE INDEX request_log_model_idx ON request_log (model, id);
