-- SPDX-License-Identifier: Apache-2.0
-- Usage and cost rollups, and the decision log (docs/observability.md).
--
-- Usage. Each data-plane node's shared memory holds cumulative counters per deployment, public
-- model and client key (slot). Every few seconds the control plane of the node sends the
-- current totals of every slot that moved to usage_flush(), which in ONE transaction subtracts
-- the watermark (the totals it last accounted for), adds the differences to the current
-- minute's rollup and stores the new totals as the watermark. Sending totals rather than
-- differences makes a flush idempotent: one that committed but whose answer was lost, or one
-- repeated after a control-plane restart, adds nothing the second time; one that failed (the
-- database was down) leaves the watermark where it was, so the next success adds everything
-- since, in its own minute. A new segment (the data plane restarted: its counters start again
-- at zero) has a new generation, which drops the node's watermarks.
--
-- The segment counts per object, not per combination, so the rollups have three separate
-- dimensions (kind = deployment, model or key); a key's rows carry its agent and user. A
-- deployment counts attempts (a retried request is two), a model and a key count requests.
--
-- Older minutes are moved into usage_hour by usage_compact(), under an advisory lock.
--
-- Migrations run inside a transaction: no BEGIN/COMMIT here.

-- ---- histograms: arrays of per-bucket counts (common/include/sy/hist.h) ---------------------

-- Element-wise a + b; NULL stands for all zeros.
CREATE FUNCTION usage_hist_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
           ELSE ARRAY(SELECT coalesce(x, 0) + coalesce(y, 0)
                      FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i) ORDER BY i) END
$$;

-- Element-wise a - b (a counter that went backwards restarted: its new value is the delta).
CREATE FUNCTION usage_hist_delta(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN a IS NULL THEN NULL WHEN b IS NULL THEN a
           ELSE ARRAY(SELECT CASE WHEN coalesce(x, 0) >= coalesce(y, 0)
                                  THEN coalesce(x, 0) - coalesce(y, 0) ELSE coalesce(x, 0) END
                      FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i) ORDER BY i) END
$$;

-- What a counter at <total> adds over its watermark <mark> (NULL: none yet); a counter below
-- its watermark restarted, and all of it is new.
CREATE FUNCTION usage_delta(total bigint, mark bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN total >= coalesce(mark, 0) THEN total - coalesce(mark, 0) ELSE total END
$$;

CREATE AGGREGATE usage_hist_sum(bigint[]) (SFUNC = usage_hist_add, STYPE = bigint[]);

-- ---- rollups ------------------------------------------------------------------------------------

CREATE TABLE usage_minute (
    minute timestamptz NOT NULL,
    node text NOT NULL,
    kind text NOT NULL CONSTRAINT usage_minute_kind_known
        CHECK (kind IN ('deployment', 'model', 'key')),
    name text NOT NULL,
    agent text NOT NULL DEFAULT '',     -- keys only ('' otherwise, or when the key has none)
    user_name text NOT NULL DEFAULT '', -- keys only
    requests bigint NOT NULL DEFAULT 0, -- attempts, for a deployment
    successes bigint NOT NULL DEFAULT 0,
    errors bigint NOT NULL DEFAULT 0,   -- requests - successes
    retries bigint NOT NULL DEFAULT 0,
    fallbacks bigint NOT NULL DEFAULT 0,
    rate_limited bigint NOT NULL DEFAULT 0,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cost numeric(24, 6) NOT NULL DEFAULT 0, -- in the prices' currency
    latency_count bigint NOT NULL DEFAULT 0, -- samples in the histogram (none for keys)
    latency_sum_us bigint NOT NULL DEFAULT 0,
    latency_buckets bigint[], -- per-bucket counts, hist.h's 40 buckets; NULL: none
    PRIMARY KEY (minute, node, kind, name, agent, user_name)
);

-- Minutes older than the retention, summed per hour; same columns.
CREATE TABLE usage_hour (LIKE usage_minute INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE usage_hour RENAME COLUMN minute TO hour;
ALTER TABLE usage_hour ADD PRIMARY KEY (hour, node, kind, name, agent, user_name);

-- The totals of each slot of each node last added to the rollups.
CREATE TABLE usage_watermarks (
    node text NOT NULL,
    generation bigint NOT NULL, -- the segment's (sy_shm_header.generation)
    kind text NOT NULL,
    slot int NOT NULL,
    name text,                  -- its owner then, for counts that arrive after it is deleted
    agent text NOT NULL DEFAULT '',
    user_name text NOT NULL DEFAULT '',
    requests bigint NOT NULL,
    successes bigint NOT NULL,
    retries bigint NOT NULL,
    fallbacks bigint NOT NULL,
    rate_limited bigint NOT NULL,
    prompt_tokens bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cost_micros bigint NOT NULL,
    latency_count bigint NOT NULL,
    latency_sum_us bigint NOT NULL,
    latency_buckets bigint[],
    flushed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, kind, slot)
);

-- Account for the totals <rows> of node <p_node>'s segment <p_generation>: a JSON array of
-- {kind, slot, requests, successes, retries, fallbacks, rate_limited, prompt_tokens,
--  completion_tokens, cost_micros, latency_count, latency_sum_us, latency_buckets}, each a total
-- since the segment was created. Returns the number of rollup rows touched.
CREATE FUNCTION usage_flush(p_node text, p_generation bigint, p_rows jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    -- One flush of a node at a time (a flush at stop may overlap the last periodic one).
    PERFORM pg_advisory_xact_lock(hashtext('switchyard.usage.' || p_node));
    DELETE FROM usage_watermarks WHERE node = p_node AND generation <> p_generation;

    -- One statement: <f> pairs the totals with their owner (now, or as last seen) and their
    -- differences with the watermark; <up> adds the differences to the current minute; the
    -- outer INSERT moves the watermark. A counter below its watermark restarted (its slot was
    -- reset): all of it is new.
    WITH f AS (
        SELECT r.kind, r.slot,
               coalesce(CASE r.kind WHEN 'deployment' THEN d.name WHEN 'model' THEN m.name
                                    ELSE k.name END, w.name, '#' || r.slot) AS name,
               coalesce(CASE WHEN r.kind = 'key' AND k.id IS NOT NULL
                             THEN coalesce(k.agent, '') END, w.agent, '') AS agent,
               coalesce(CASE WHEN r.kind = 'key' AND k.id IS NOT NULL
                             THEN coalesce(k.user_name, '') END, w.user_name, '') AS user_name,
               r.requests, r.successes, r.retries, r.fallbacks, r.rate_limited,
               r.prompt_tokens, r.completion_tokens, r.cost_micros, r.latency_count,
               r.latency_sum_us, r.latency_buckets,
               usage_delta(r.requests, w.requests) AS d_requests,
               usage_delta(r.successes, w.successes) AS d_successes,
               usage_delta(r.retries, w.retries) AS d_retries,
               usage_delta(r.fallbacks, w.fallbacks) AS d_fallbacks,
               usage_delta(r.rate_limited, w.rate_limited) AS d_rate_limited,
               usage_delta(r.prompt_tokens, w.prompt_tokens) AS d_prompt_tokens,
               usage_delta(r.completion_tokens, w.completion_tokens) AS d_completion_tokens,
               usage_delta(r.cost_micros, w.cost_micros) AS d_cost_micros,
               usage_delta(r.latency_count, w.latency_count) AS d_latency_count,
               usage_delta(r.latency_sum_us, w.latency_sum_us) AS d_latency_sum_us,
               usage_hist_delta(r.latency_buckets, w.latency_buckets) AS d_latency_buckets
        FROM jsonb_to_recordset(p_rows) AS r(
                 kind text, slot int, requests bigint, successes bigint, retries bigint,
                 fallbacks bigint, rate_limited bigint, prompt_tokens bigint,
                 completion_tokens bigint, cost_micros bigint, latency_count bigint,
                 latency_sum_us bigint, latency_buckets bigint[])
        LEFT JOIN usage_watermarks w ON w.node = p_node AND w.kind = r.kind AND w.slot = r.slot
        LEFT JOIN deployments d ON r.kind = 'deployment' AND d.slot = r.slot
        LEFT JOIN models m ON r.kind = 'model' AND m.slot = r.slot
        LEFT JOIN api_keys k ON r.kind = 'key' AND k.slot = r.slot
        WHERE r.kind IN ('deployment', 'model', 'key') AND r.slot >= 0
    ), up AS (
        -- Several slots may land in one row (key names need not be unique): summed first.
        INSERT INTO usage_minute AS u (minute, node, kind, name, agent, user_name, requests,
                                       successes, errors, retries, fallbacks, rate_limited,
                                       prompt_tokens, completion_tokens, cost, latency_count,
                                       latency_sum_us, latency_buckets)
        SELECT date_trunc('minute', now()), p_node, kind, name, agent, user_name,
               sum(d_requests), sum(d_successes),
               greatest(sum(d_requests) - sum(d_successes), 0), sum(d_retries),
               sum(d_fallbacks), sum(d_rate_limited), sum(d_prompt_tokens),
               sum(d_completion_tokens), sum(d_cost_micros) / 1000000.0, sum(d_latency_count),
               sum(d_latency_sum_us), usage_hist_sum(d_latency_buckets)
        FROM f
        WHERE d_requests + d_successes + d_retries + d_fallbacks + d_rate_limited
              + d_prompt_tokens + d_completion_tokens + d_cost_micros + d_latency_count > 0
        GROUP BY kind, name, agent, user_name
        ON CONFLICT (minute, node, kind, name, agent, user_name) DO UPDATE SET
            requests = u.requests + EXCLUDED.requests,
            successes = u.successes + EXCLUDED.successes,
            errors = u.errors + EXCLUDED.errors,
            retries = u.retries + EXCLUDED.retries,
            fallbacks = u.fallbacks + EXCLUDED.fallbacks,
            rate_limited = u.rate_limited + EXCLUDED.rate_limited,
            prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
            cost = u.cost + EXCLUDED.cost,
            latency_count = u.latency_count + EXCLUDED.latency_count,
            latency_sum_us = u.latency_sum_us + EXCLUDED.latency_sum_us,
            latency_buckets = usage_hist_add(u.latency_buckets, EXCLUDED.latency_buckets)
        RETURNING 1
    ), wm AS (
        INSERT INTO usage_watermarks AS w (node, generation, kind, slot, name, agent, user_name,
                                           requests, successes, retries, fallbacks,
                                           rate_limited, prompt_tokens, completion_tokens,
                                           cost_micros, latency_count, latency_sum_us,
                                           latency_buckets)
        SELECT p_node, p_generation, kind, slot, name, agent, user_name, requests, successes,
               retries, fallbacks, rate_limited, prompt_tokens, completion_tokens, cost_micros,
               latency_count, latency_sum_us, latency_buckets
        FROM f
        ON CONFLICT (node, kind, slot) DO UPDATE SET
            generation = EXCLUDED.generation, name = EXCLUDED.name, agent = EXCLUDED.agent,
            user_name = EXCLUDED.user_name, requests = EXCLUDED.requests,
            successes = EXCLUDED.successes, retries = EXCLUDED.retries,
            fallbacks = EXCLUDED.fallbacks, rate_limited = EXCLUDED.rate_limited,
            prompt_tokens = EXCLUDED.prompt_tokens,
            completion_tokens = EXCLUDED.completion_tokens,
            cost_micros = EXCLUDED.cost_micros, latency_count = EXCLUDED.latency_count,
            latency_sum_us = EXCLUDED.latency_sum_us,
            latency_buckets = EXCLUDED.latency_buckets, flushed_at = now()
    )
    -- (a data-modifying WITH runs to completion whether or not it is read)
    SELECT count(*) FROM up INTO n;
    RETURN n;
END
$$;

-- Move the minutes older than <retention_days> (whole hours) into usage_hour, and delete the
-- events older than <events_retention_days>. One control plane at a time: the others return
-- -1 at once. Returns the number of minute rows moved.
CREATE FUNCTION usage_compact(retention_days integer, events_retention_days integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := date_trunc('hour', now() - make_interval(days => retention_days));
    n integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('switchyard.usage.compact')) THEN
        RETURN -1;
    END IF;
    WITH moved AS (
        DELETE FROM usage_minute WHERE minute < cutoff RETURNING *
    )
    INSERT INTO usage_hour AS u (hour, node, kind, name, agent, user_name, requests, successes,
                                 errors, retries, fallbacks, rate_limited, prompt_tokens,
                                 completion_tokens, cost, latency_count, latency_sum_us,
                                 latency_buckets)
    SELECT date_trunc('hour', minute), node, kind, name, agent, user_name, sum(requests),
           sum(successes), sum(errors), sum(retries), sum(fallbacks), sum(rate_limited),
           sum(prompt_tokens), sum(completion_tokens), sum(cost), sum(latency_count),
           sum(latency_sum_us), usage_hist_sum(latency_buckets)
    FROM moved
    GROUP BY 1, node, kind, name, agent, user_name
    ON CONFLICT (hour, node, kind, name, agent, user_name) DO UPDATE SET
        requests = u.requests + EXCLUDED.requests,
        successes = u.successes + EXCLUDED.successes,
        errors = u.errors + EXCLUDED.errors,
        retries = u.retries + EXCLUDED.retries,
        fallbacks = u.fallbacks + EXCLUDED.fallbacks,
        rate_limited = u.rate_limited + EXCLUDED.rate_limited,
        prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
        cost = u.cost + EXCLUDED.cost,
        latency_count = u.latency_count + EXCLUDED.latency_count,
        latency_sum_us = u.latency_sum_us + EXCLUDED.latency_sum_us,
        latency_buckets = usage_hist_add(u.latency_buckets, EXCLUDED.latency_buckets);
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM events
    WHERE at < now() - make_interval(days => events_retention_days);
    RETURN n;
END
$$;

-- ---- the decision log -------------------------------------------------------------------------

CREATE TABLE events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    node text NOT NULL,
    worker int,
    request_id text,
    kind text NOT NULL,  -- attempt, retry, fallback, circuit, rate_limited, shed, guardrail...
    outcome text,        -- success, upstream_5xx, timeout... (attempts)
    reason text,         -- circuit_error_rate, rpm... ('' none)
    status int,          -- HTTP status of an attempt
    model text,
    deployment text,
    key text,            -- the client key's name, never the key
    duration_ms int,
    attempt int,
    text text,
    table_version bigint
);
-- The story of one request, in order.
CREATE INDEX events_request_id_idx ON events (request_id, id) WHERE request_id IS NOT NULL;
CREATE INDEX events_at_idx ON events (at);
CREATE INDEX events_kind_idx ON events (kind, id);
