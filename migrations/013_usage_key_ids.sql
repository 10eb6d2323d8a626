-- SPDX-License-Identifier: Apache-2.0
-- Usage rows of a client key carry its id.
--
-- Key names need not be unique, and the rollups of kind 'key' identified a key by its name
-- (with its agent and user): two keys of one name shared a row, and so a key budget's recorded
-- spend. From here on every key row carries the key's id (0 on deployment and model rows, and
-- on rows written before this migration), which is part of the row's identity; the usage API
-- groups keys by id, and budget_spent() matches a key budget by id.
--
-- Migrations run inside a transaction: no BEGIN/COMMIT here.

ALTER TABLE usage_minute ADD COLUMN key_id bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_minute DROP CONSTRAINT usage_minute_pkey,
    ADD PRIMARY KEY (minute, node, kind, name, agent, user_name, key_id);
ALTER TABLE usage_hour ADD COLUMN key_id bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_hour DROP CONSTRAINT usage_hour_pkey,
    ADD PRIMARY KEY (hour, node, kind, name, agent, user_name, key_id);
-- The id a slot's owner had when it was last flushed, for counts that arrive after it was
-- deleted (as the watermark keeps its name).
ALTER TABLE usage_watermarks ADD COLUMN key_id bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION usage_flush(p_node text, p_generation bigint, p_rows jsonb) RETURNS integer
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
               CASE WHEN r.kind = 'key' THEN coalesce(k.id, w.key_id, 0) ELSE 0 END AS key_id,
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
        -- Several slots may land in one row (a key deleted and its slot reused within one
        -- flush): summed first.
        INSERT INTO usage_minute AS u (minute, node, kind, name, agent, user_name, key_id, requests,
                                       successes, errors, retries, fallbacks, rate_limited,
                                       prompt_tokens, completion_tokens, cost, latency_count,
                                       latency_sum_us, latency_buckets)
        SELECT date_trunc('minute', now()), p_node, kind, name, agent, user_name, key_id,
               sum(d_requests), sum(d_successes),
               greatest(sum(d_requests) - sum(d_successes), 0), sum(d_retries),
               sum(d_fallbacks), sum(d_rate_limited), sum(d_prompt_tokens),
               sum(d_completion_tokens), sum(d_cost_micros) / 1000000.0, sum(d_latency_count),
               sum(d_latency_sum_us), usage_hist_sum(d_latency_buckets)
        FROM f
        WHERE d_requests + d_successes + d_retries + d_fallbacks + d_rate_limited
              + d_prompt_tokens + d_completion_tokens + d_cost_micros + d_latency_count > 0
        GROUP BY kind, name, agent, user_name, key_id
        ON CONFLICT (minute, node, kind, name, agent, user_name, key_id) DO UPDATE SET
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
                                           key_id,
                                           requests, successes, retries, fallbacks,
                                           rate_limited, prompt_tokens, completion_tokens,
                                           cost_micros, latency_count, latency_sum_us,
                                           latency_buckets)
        SELECT p_node, p_generation, kind, slot, name, agent, user_name, key_id, requests,
               successes,
               retries, fallbacks, rate_limited, prompt_tokens, completion_tokens, cost_micros,
               latency_count, latency_sum_us, latency_buckets
        FROM f
        ON CONFLICT (node, kind, slot) DO UPDATE SET
            generation = EXCLUDED.generation, name = EXCLUDED.name, agent = EXCLUDED.agent,
            user_name = EXCLUDED.user_name, key_id = EXCLUDED.key_id,
            requests = EXCLUDED.requests,
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

CREATE OR REPLACE FUNCTION usage_compact(retention_days integer, events_retention_days integer)
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
    INSERT INTO usage_hour AS u (hour, node, kind, name, agent, user_name, key_id, requests,
                                 successes,
                                 errors, retries, fallbacks, rate_limited, prompt_tokens,
                                 completion_tokens, cost, latency_count, latency_sum_us,
                                 latency_buckets)
    SELECT date_trunc('hour', minute), node, kind, name, agent, user_name, key_id, sum(requests),
           sum(successes), sum(errors), sum(retries), sum(fallbacks), sum(rate_limited),
           sum(prompt_tokens), sum(completion_tokens), sum(cost), sum(latency_count),
           sum(latency_sum_us), usage_hist_sum(latency_buckets)
    FROM moved
    GROUP BY 1, node, kind, name, agent, user_name, key_id
    ON CONFLICT (hour, node, kind, name, agent, user_name, key_id) DO UPDATE SET
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

-- What budget <b> covers of the usage rows: kind 'key' rows of its agent, its user, or its key
-- (by id; rows written before migration 013 have no id and are matched by the key's name).
CREATE OR REPLACE FUNCTION budget_spent(b budgets, p_from timestamptz, p_to timestamptz) RETURNS numeric
LANGUAGE sql STABLE AS $$
    WITH k AS (
        SELECT name FROM api_keys WHERE b.scope = 'key' AND id = b.subject::bigint
    ), rows AS (
        SELECT u.cost, u.name, u.agent, u.user_name, u.key_id FROM usage_minute u
        WHERE u.kind = 'key' AND u.minute >= p_from AND u.minute < p_to
        UNION ALL
        SELECT u.cost, u.name, u.agent, u.user_name, u.key_id FROM usage_hour u
        WHERE u.kind = 'key' AND u.hour >= p_from AND u.hour < p_to
    )
    SELECT coalesce(sum(r.cost), 0) FROM rows r
    WHERE CASE b.scope WHEN 'agent' THEN r.agent = b.subject
                       WHEN 'user' THEN r.user_name = b.subject
                       ELSE r.key_id = b.subject::bigint
                            OR (r.key_id = 0 AND r.name = (SELECT name FROM k)) END
$$;
