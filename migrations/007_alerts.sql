-- SPDX-License-Identifier: Apache-2.0
-- Alerts (docs/observability.md, "Alerts"): channels (webhooks), rules, the state of each alert
-- (rule x subject), and the outbox of deliveries.
--
-- Evaluation is alert_evaluate(), one statement run by the control planes on a timer: it takes
-- a transaction-level advisory lock and returns at once when another control plane holds it,
-- so one evaluation runs at a time in the whole fleet, and each one sees the states the last
-- one committed. It measures every enabled rule from what PostgreSQL holds for every node
-- (usage_minute, events, deployments), moves the states (pending -> firing -> resolved), and
-- for each notification writes an `alert` event and one row per channel into alert_deliveries
-- -- all in the same transaction, so a transition and its notifications commit together or not
-- at all. A control plane then claims due deliveries (FOR UPDATE SKIP LOCKED, with a lease),
-- sends them and records the outcome; a claim whose control plane died expires with its lease.
--
-- Rules and channels are not part of the routing table: their writes do not bump the config
-- version (no config_bump triggers), only their own row version (the ETag).
--
-- Migrations run inside a transaction: no BEGIN/COMMIT here.

-- ---- channels ------------------------------------------------------------------------------------

CREATE TABLE alert_channels (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
        CONSTRAINT alert_channels_name_format CHECK (name ~ '^[a-z0-9._-]{1,64}$'),
    type text NOT NULL CONSTRAINT alert_channels_type_known
        CHECK (type IN ('generic', 'slack', 'dingtalk', 'feishu', 'wecom')),
    url text NOT NULL CONSTRAINT alert_channels_url_format
        CHECK (url ~ '^https?://[^[:space:]]+$' AND length(url) <= 2048),
    headers jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT alert_channels_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    -- DingTalk/Feishu signing secret, sealed like provider credentials (crypto.h); never returned
    secret_enc bytea,
    secret_key_id text,
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    version int NOT NULL DEFAULT 1,
    CONSTRAINT alert_channels_secret_complete
        CHECK ((secret_enc IS NULL) = (secret_key_id IS NULL))
);
CREATE TRIGGER alert_channels_touch BEFORE UPDATE ON alert_channels
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION config_touch_row();

CREATE FUNCTION alert_channel_doc(ch alert_channels) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', ch.id,
        'object', 'alert_channel',
        'name', ch.name,
        'type', ch.type,
        'url', ch.url,
        'headers', ch.headers,
        'secret_set', ch.secret_enc IS NOT NULL,
        'enabled', ch.enabled,
        'version', ch.version,
        'created_at', ch.created_at,
        'updated_at', ch.updated_at)
$$;

-- ---- rules ---------------------------------------------------------------------------------------

CREATE TABLE alert_rules (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
        CONSTRAINT alert_rules_name_format CHECK (name ~ '^[a-z0-9._-]{1,64}$'),
    description text,
    kind text NOT NULL CONSTRAINT alert_rules_kind_known
        CHECK (kind IN ('error_rate', 'circuit_open', 'p95_latency', 'limit_use', 'budget_use',
                        'no_traffic')),
    -- what is measured: a model or a deployment (a budget for budget_use)
    scope text NOT NULL CONSTRAINT alert_rules_scope_known
        CHECK (scope IN ('model', 'deployment', 'budget')),
    target text, -- one name, or NULL for every one of the scope
    -- error_rate, limit_use, budget_use: percent; p95_latency: milliseconds; otherwise unused
    threshold double precision NOT NULL DEFAULT 0
        CONSTRAINT alert_rules_threshold_range CHECK (threshold >= 0),
    window_minutes int NOT NULL DEFAULT 5
        CONSTRAINT alert_rules_window_range CHECK (window_minutes BETWEEN 1 AND 1440),
    min_requests int NOT NULL DEFAULT 1
        CONSTRAINT alert_rules_min_requests_range CHECK (min_requests >= 1),
    limit_kind text CONSTRAINT alert_rules_limit_known CHECK (limit_kind IN ('rpm', 'tpm')),
    for_minutes int NOT NULL DEFAULT 0
        CONSTRAINT alert_rules_for_range CHECK (for_minutes BETWEEN 0 AND 1440),
    repeat_minutes int NOT NULL DEFAULT 0
        CONSTRAINT alert_rules_repeat_range CHECK (repeat_minutes BETWEEN 0 AND 10080),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    version int NOT NULL DEFAULT 1
);
CREATE TRIGGER alert_rules_touch BEFORE UPDATE ON alert_rules
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION config_touch_row();

-- The channels a rule notifies, in order. A channel in use cannot be deleted (RESTRICT).
CREATE TABLE alert_rule_channels (
    rule_id bigint NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    channel_id bigint NOT NULL REFERENCES alert_channels (id) ON DELETE RESTRICT,
    position int NOT NULL,
    PRIMARY KEY (rule_id, channel_id)
);
CREATE INDEX alert_rule_channels_channel_idx ON alert_rule_channels (channel_id);

CREATE FUNCTION alert_rule_doc(r alert_rules) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', r.id,
        'object', 'alert_rule',
        'name', r.name,
        'description', r.description,
        'kind', r.kind,
        'scope', r.scope,
        'target', r.target,
        -- null where the kind does not use the field
        'threshold', CASE WHEN r.kind IN ('error_rate', 'p95_latency', 'limit_use', 'budget_use')
                          THEN r.threshold END,
        'window_minutes', CASE WHEN r.kind IN ('error_rate', 'p95_latency', 'no_traffic')
                               THEN r.window_minutes END,
        'min_requests', CASE WHEN r.kind IN ('error_rate', 'p95_latency')
                             THEN r.min_requests END,
        'limit', r.limit_kind,
        'for_minutes', r.for_minutes,
        'repeat_minutes', r.repeat_minutes,
        'channels', coalesce((
            SELECT jsonb_agg(ch.name ORDER BY rc.position)
            FROM alert_rule_channels rc JOIN alert_channels ch ON ch.id = rc.channel_id
            WHERE rc.rule_id = r.id), '[]'::jsonb),
        'enabled', r.enabled,
        'version', r.version,
        'created_at', r.created_at,
        'updated_at', r.updated_at)
$$;

-- Create (p_name NULL) or update the rule named p_name from p_doc, a document the admin API has
-- validated for types and ranges: {name, description, kind, scope, target, threshold,
-- window_minutes, min_requests, limit, for_minutes, repeat_minutes, channels: [names], enabled}.
-- This checks what needs the database -- the channels exist, the name is free, the rule still
-- has version p_expected -- and writes the rule and its channels together. Errors carry SQLSTATE
-- SY400/SY404/SY409/SY412 and the field in HINT (api.h, cp_call_db_failed).
CREATE FUNCTION alert_rule_write(p_name text, p_expected int, p_doc jsonb)
RETURNS TABLE (out_doc jsonb, out_version int)
LANGUAGE plpgsql AS $$
DECLARE
    r alert_rules;
    names text[] := ARRAY(SELECT jsonb_array_elements_text(coalesce(p_doc -> 'channels', '[]')));
    ids bigint[] := '{}';
    ch_id bigint;
    old_channels bigint[];
BEGIN
    FOR i IN 1 .. coalesce(array_length(names, 1), 0) LOOP
        SELECT ch.id INTO ch_id FROM alert_channels ch WHERE ch.name = names[i] FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SY400',
                MESSAGE = format('channels[%s]: unknown alert channel "%s" (GET '
                                 '/admin/v1/alert-channels lists them)', i - 1, names[i]),
                HINT = format('channels[%s]', i - 1);
        END IF;
        ids := ids || ch_id;
    END LOOP;
    IF p_name IS NULL THEN
        BEGIN
            INSERT INTO alert_rules (name, description, kind, scope, target, threshold,
                                     window_minutes, min_requests, limit_kind, for_minutes,
                                     repeat_minutes, enabled)
            VALUES (p_doc ->> 'name', p_doc ->> 'description', p_doc ->> 'kind',
                    p_doc ->> 'scope', p_doc ->> 'target', (p_doc ->> 'threshold')::float8,
                    (p_doc ->> 'window_minutes')::int, (p_doc ->> 'min_requests')::int,
                    p_doc ->> 'limit', (p_doc ->> 'for_minutes')::int,
                    (p_doc ->> 'repeat_minutes')::int, (p_doc ->> 'enabled')::boolean)
            RETURNING * INTO r;
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION USING ERRCODE = 'SY409', HINT = 'name',
                MESSAGE = format('an alert rule named "%s" already exists', p_doc ->> 'name');
        END;
    ELSE
        SELECT * INTO r FROM alert_rules x WHERE x.name = p_name FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SY404',
                MESSAGE = format('alert rule "%s" not found', p_name);
        END IF;
        IF p_expected IS NOT NULL AND r.version <> p_expected THEN
            RAISE EXCEPTION USING ERRCODE = 'SY412', HINT = 'version',
                MESSAGE = format('alert rule "%s" was changed by someone else (it is at version'
                                 ' %s, not %s); fetch it again and retry',
                                 p_name, r.version, p_expected);
        END IF;
        old_channels := ARRAY(SELECT rc.channel_id FROM alert_rule_channels rc
                              WHERE rc.rule_id = r.id ORDER BY rc.position);
        BEGIN
            UPDATE alert_rules x SET name = p_doc ->> 'name',
                description = p_doc ->> 'description', kind = p_doc ->> 'kind',
                scope = p_doc ->> 'scope', target = p_doc ->> 'target',
                threshold = (p_doc ->> 'threshold')::float8,
                window_minutes = (p_doc ->> 'window_minutes')::int,
                min_requests = (p_doc ->> 'min_requests')::int,
                limit_kind = p_doc ->> 'limit',
                for_minutes = (p_doc ->> 'for_minutes')::int,
                repeat_minutes = (p_doc ->> 'repeat_minutes')::int,
                enabled = (p_doc ->> 'enabled')::boolean,
                version = CASE WHEN old_channels IS DISTINCT FROM ids THEN x.version + 1
                               ELSE x.version END
            WHERE x.id = r.id
            RETURNING * INTO r;
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION USING ERRCODE = 'SY409', HINT = 'name',
                MESSAGE = format('an alert rule named "%s" already exists', p_doc ->> 'name');
        END;
        IF old_channels IS NOT DISTINCT FROM ids THEN
            RETURN QUERY SELECT alert_rule_doc(r), r.version;
            RETURN;
        END IF;
        DELETE FROM alert_rule_channels rc WHERE rc.rule_id = r.id;
    END IF;
    INSERT INTO alert_rule_channels (rule_id, channel_id, position)
        SELECT r.id, x.c, x.pos - 1 FROM unnest(ids) WITH ORDINALITY AS x (c, pos);
    RETURN QUERY SELECT alert_rule_doc(r), r.version;
END
$$;

-- ---- alert states --------------------------------------------------------------------------------

-- One row per rule x subject that has breached: pending (breached, waiting for for_minutes),
-- firing, or resolved (kept to show when it ended, until it breaches again).
CREATE TABLE alert_states (
    id bigserial UNIQUE, -- the admin API's cursor
    rule_id bigint NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    subject text NOT NULL,
    state text NOT NULL CONSTRAINT alert_states_state_known
        CHECK (state IN ('pending', 'firing', 'resolved')),
    since timestamptz NOT NULL,   -- when the current state began
    value double precision,       -- the last measured value (NULL: no data)
    started_at timestamptz NOT NULL, -- first breach of this episode
    fired_at timestamptz,
    resolved_at timestamptz,
    evaluated_at timestamptz NOT NULL,
    notified_at timestamptz,      -- last notification (firing, repeat or resolved)
    notifications int NOT NULL DEFAULT 0,
    PRIMARY KEY (rule_id, subject)
);
CREATE INDEX alert_states_state_idx ON alert_states (state);

-- ---- the outbox ----------------------------------------------------------------------------------

CREATE TABLE alert_deliveries (
    id bigserial PRIMARY KEY,
    channel_id bigint NOT NULL REFERENCES alert_channels (id) ON DELETE CASCADE,
    rule text NOT NULL,
    subject text NOT NULL,
    status text NOT NULL, -- firing | resolved
    alert jsonb NOT NULL, -- what the body is built from (webhook.c): status, rule, kind...
    created_at timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts int NOT NULL DEFAULT 0,
    last_status int, -- HTTP status of the last attempt, NULL when none came back
    last_error text,
    claimed_by text,  -- node whose control plane is sending it
    claimed_until timestamptz, -- its lease
    delivered_at timestamptz,
    gave_up_at timestamptz
);
CREATE INDEX alert_deliveries_due_idx ON alert_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;

-- ---- measurements --------------------------------------------------------------------------------

-- The <q> quantile (0..1), in ms, of a latency histogram (common/include/sy/hist.h: 40
-- non-cumulative buckets, upper bounds 1, 2, 3, 4, 6, 8, ... 524288, 600000 ms, then +Inf),
-- interpolated within its bucket as api_usage.c does; NULL without samples.
CREATE FUNCTION alert_hist_quantile(b bigint[], q double precision) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    total numeric := 0;
    rank numeric;
    cum numeric := 0;
    lo double precision;
    hi double precision;
BEGIN
    IF b IS NULL THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. array_length(b, 1) LOOP
        total := total + coalesce(b[i], 0);
    END LOOP;
    IF total = 0 THEN
        RETURN NULL;
    END IF;
    rank := ceil(q * total);
    FOR i IN 1 .. array_length(b, 1) LOOP
        CONTINUE WHEN coalesce(b[i], 0) = 0;
        IF cum + b[i] >= rank THEN
            lo := alert_hist_upper(i - 2);
            IF i = 40 THEN
                RETURN lo;
            END IF;
            hi := alert_hist_upper(i - 1);
            RETURN lo + (hi - lo) * (rank - cum) / b[i];
        END IF;
        cum := cum + b[i];
    END LOOP;
    RETURN NULL;
END
$$;

-- Upper bound in ms of 0-based bucket <i> (sy_hist_upper_ms); 0 for i < 0.
CREATE FUNCTION alert_hist_upper(i int) RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN i < 0 THEN 0
                WHEN i = 0 THEN 1
                WHEN i >= 38 THEN 600000
                WHEN i % 2 = 1 THEN (2::double precision) ^ (i / 2 + 1)
                ELSE 3 * (2::double precision) ^ (i / 2 - 1) END
$$;

-- Budget use, in percent of each budget's amount for its current period. This stub returns no
-- rows: the budgets migration (010) drops it and defines the real one, whose percent may be
-- any numeric type (alert_measure casts it).
CREATE FUNCTION alert_budget_use()
RETURNS TABLE (budget text, subject text, percent double precision)
LANGUAGE sql STABLE AS $$
    SELECT NULL::text, NULL::text, NULL::double precision WHERE false
$$;

-- What rule <r> measures now: one row per subject it covers, its value (NULL: no data) and
-- whether it breaches the rule. A subject without enough data does not breach.
CREATE FUNCTION alert_measure(r alert_rules)
RETURNS TABLE (subject text, value double precision, breached boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    win_start timestamptz := date_trunc('minute', now() - make_interval(mins => r.window_minutes));
BEGIN
    IF r.kind = 'error_rate' THEN
        RETURN QUERY
            SELECT u.name, (100.0 * sum(u.errors) / sum(u.requests))::double precision,
                   (100.0 * sum(u.errors) / sum(u.requests))::double precision > r.threshold
            FROM usage_minute u
            WHERE u.kind = r.scope AND u.minute >= win_start
              AND (r.target IS NULL OR u.name = r.target)
            GROUP BY u.name HAVING sum(u.requests) >= r.min_requests;
    ELSIF r.kind = 'p95_latency' THEN
        RETURN QUERY
            SELECT x.name, x.p95, x.p95 > r.threshold
            FROM (SELECT u.name, alert_hist_quantile(usage_hist_sum(u.latency_buckets), 0.95) AS p95
                  FROM usage_minute u
                  WHERE u.kind = r.scope AND u.minute >= win_start
                    AND (r.target IS NULL OR u.name = r.target)
                  GROUP BY u.name HAVING sum(u.latency_count) >= r.min_requests) x
            WHERE x.p95 IS NOT NULL;
    ELSIF r.kind = 'no_traffic' THEN
        -- Only subjects older than the window: a new deployment is not silent, just new.
        RETURN QUERY
            SELECT s.name, coalesce(t.n, 0)::double precision,
                   coalesce(t.n, 0) = 0 AND s.created_at <= now() - make_interval(mins => r.window_minutes)
            FROM (SELECT d.name, d.created_at FROM deployments d
                  WHERE r.scope = 'deployment' AND d.enabled
                  UNION ALL
                  SELECT m.name, m.created_at FROM models m WHERE r.scope = 'model') s
            LEFT JOIN (SELECT u.name, sum(u.requests) AS n FROM usage_minute u
                       WHERE u.kind = r.scope AND u.minute >= win_start GROUP BY u.name) t
                   ON t.name = s.name
            WHERE r.target IS NULL OR s.name = r.target;
    ELSIF r.kind = 'circuit_open' THEN
        -- Per node, a deployment's last circuit transition of the last day; the value is the
        -- number of nodes whose circuit is open (not closed again by a successful probe).
        RETURN QUERY
            SELECT d.name, count(l.node) FILTER (WHERE l.reason IS DISTINCT FROM 'circuit_closed')::double precision,
                   count(l.node) FILTER (WHERE l.reason IS DISTINCT FROM 'circuit_closed') > 0
            FROM deployments d
            LEFT JOIN (SELECT DISTINCT ON (e.node, e.deployment) e.node, e.deployment, e.reason
                       FROM events e
                       WHERE e.kind = 'circuit' AND e.at > now() - interval '1 day'
                         AND e.deployment IS NOT NULL
                       ORDER BY e.node, e.deployment, e.id DESC) l ON l.deployment = d.name
            WHERE r.target IS NULL OR d.name = r.target
            GROUP BY d.name;
    ELSIF r.kind = 'limit_use' THEN
        -- The busiest of the last whole minute and the current one, summed over nodes, in
        -- percent of the deployment's (fleet-wide) limit.
        RETURN QUERY
            SELECT d.name, (coalesce(max(x.used), 0) * 100.0 / d.lim)::double precision,
                   (coalesce(max(x.used), 0) * 100.0 / d.lim)::double precision > r.threshold
            FROM (SELECT dd.name, CASE r.limit_kind WHEN 'tpm' THEN dd.tpm ELSE dd.rpm END AS lim
                  FROM deployments dd) d
            LEFT JOIN (SELECT u.name, u.minute,
                              sum(CASE r.limit_kind WHEN 'tpm'
                                  THEN u.prompt_tokens + u.completion_tokens
                                  ELSE u.requests END) AS used
                       FROM usage_minute u
                       WHERE u.kind = 'deployment'
                         AND u.minute >= date_trunc('minute', now()) - interval '1 minute'
                       GROUP BY u.name, u.minute) x ON x.name = d.name
            WHERE d.lim IS NOT NULL AND (r.target IS NULL OR d.name = r.target)
            GROUP BY d.name, d.lim;
    ELSIF r.kind = 'budget_use' THEN
        RETURN QUERY
            SELECT b.budget || CASE WHEN coalesce(b.subject, '') = '' THEN ''
                                    ELSE ' (' || b.subject || ')' END,
                   b.percent::double precision, b.percent::double precision > r.threshold
            FROM alert_budget_use() b
            WHERE r.target IS NULL OR b.budget = r.target;
    END IF;
END
$$;

-- The words of a notification.
CREATE FUNCTION alert_message(r alert_rules, p_subject text, p_value double precision,
                              p_status text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('[%s] %s: %s %s %s', upper(p_status), r.name, r.scope, p_subject,
        CASE r.kind
        WHEN 'error_rate' THEN format('error rate %s%% over %s min (threshold %s%%)',
                                      coalesce(round(p_value::numeric, 2)::text, 'n/a'),
                                      r.window_minutes, r.threshold)
        WHEN 'p95_latency' THEN format('p95 latency %s ms over %s min (threshold %s ms)',
                                       coalesce(round(p_value::numeric, 1)::text, 'n/a'),
                                       r.window_minutes, r.threshold)
        WHEN 'limit_use' THEN format('%s use %s%% of its limit (threshold %s%%)',
                                     r.limit_kind,
                                     coalesce(round(p_value::numeric, 1)::text, 'n/a'),
                                     r.threshold)
        WHEN 'budget_use' THEN format('budget use %s%% (threshold %s%%)',
                                      coalesce(round(p_value::numeric, 1)::text, 'n/a'),
                                      r.threshold)
        WHEN 'no_traffic' THEN CASE WHEN p_status = 'firing'
                                    THEN format('no traffic for %s min', r.window_minutes)
                                    ELSE 'traffic again' END
        WHEN 'circuit_open' THEN CASE WHEN p_status = 'firing'
                                      THEN format('circuit open on %s node(s)', p_value)
                                      ELSE 'circuit closed' END
        END)
$$;

-- Record one notification of rule <r> about <subject>: an `alert` event and one delivery per
-- enabled channel of the rule.
CREATE FUNCTION alert_notify(r alert_rules, s alert_states, p_status text, p_repeat boolean,
                             p_node text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    msg text := alert_message(r, s.subject, s.value, p_status);
    doc jsonb;
BEGIN
    doc := jsonb_build_object(
        'status', p_status,
        'rule', r.name,
        'kind', r.kind,
        'scope', r.scope,
        'subject', s.subject,
        'value', s.value,
        'threshold', r.threshold,
        'window_minutes', r.window_minutes,
        'since', s.since,
        'started_at', s.started_at,
        'repeat', p_repeat,
        'message', msg,
        'node', p_node,
        'at', now());
    INSERT INTO events (at, node, kind, outcome, reason, model, deployment, text)
    VALUES (now(), p_node, 'alert', p_status, r.kind,
            CASE WHEN r.scope = 'model' THEN s.subject END,
            CASE WHEN r.scope = 'deployment' THEN s.subject END, msg);
    INSERT INTO alert_deliveries (channel_id, rule, subject, status, alert)
        SELECT ch.id, r.name, s.subject, p_status, doc
        FROM alert_rule_channels rc JOIN alert_channels ch ON ch.id = rc.channel_id
        WHERE rc.rule_id = r.id AND ch.enabled
        ORDER BY rc.position;
    IF FOUND THEN
        PERFORM pg_notify('switchyard_alerts', '');
    END IF;
END
$$;

-- ---- evaluation ----------------------------------------------------------------------------------

-- Evaluate every enabled rule once, as control plane <p_node>. Returns the number of
-- notifications written, or -1 when another control plane is evaluating right now.
CREATE FUNCTION alert_evaluate(p_node text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r alert_rules;
    m record;
    s alert_states;
    seen text[];
    n integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('switchyard.alerts.evaluate')) THEN
        RETURN -1;
    END IF;
    -- A disabled rule's alerts end without a notification: the operator silenced it.
    UPDATE alert_states st SET state = 'resolved', since = now(), resolved_at = now(),
                               evaluated_at = now()
    FROM alert_rules x
    WHERE x.id = st.rule_id AND NOT x.enabled AND st.state <> 'resolved';
    DELETE FROM alert_states st USING alert_rules x
    WHERE x.id = st.rule_id AND NOT x.enabled AND st.state = 'pending';

    FOR r IN SELECT * FROM alert_rules WHERE enabled ORDER BY id LOOP
      -- One rule that fails (a budget function raising, say) must not silence the others: each
      -- rule runs in a subtransaction, and its failure is a warning in the server's log.
      BEGIN
        seen := '{}';
        FOR m IN SELECT * FROM alert_measure(r) LOOP
            IF NOT m.breached THEN
                -- the value an alert that ends now resolves with (below); a resolved alert
                -- keeps the one it had, so the quiet majority costs no write
                UPDATE alert_states SET value = m.value, evaluated_at = now()
                WHERE rule_id = r.id AND subject = m.subject AND state <> 'resolved';
                CONTINUE;
            END IF;
            SELECT * INTO s FROM alert_states WHERE rule_id = r.id AND subject = m.subject;
            seen := seen || m.subject;
            IF NOT FOUND OR s.state = 'resolved' THEN
                INSERT INTO alert_states AS x (rule_id, subject, state, since, value, started_at,
                                               evaluated_at)
                VALUES (r.id, m.subject, 'pending', now(), m.value, now(), now())
                ON CONFLICT (rule_id, subject) DO UPDATE SET
                    state = 'pending', since = now(), value = m.value, started_at = now(),
                    fired_at = NULL, resolved_at = NULL, evaluated_at = now()
                RETURNING * INTO s;
            ELSE
                UPDATE alert_states SET value = m.value, evaluated_at = now()
                WHERE rule_id = r.id AND subject = m.subject
                RETURNING * INTO s;
            END IF;
            IF s.state = 'pending'
               AND s.started_at <= now() - make_interval(mins => r.for_minutes) THEN
                UPDATE alert_states SET state = 'firing', since = now(), fired_at = now(),
                                        notified_at = now(), notifications = notifications + 1
                WHERE rule_id = r.id AND subject = m.subject
                RETURNING * INTO s;
                PERFORM alert_notify(r, s, 'firing', false, p_node);
                n := n + 1;
            ELSIF s.state = 'firing' AND r.repeat_minutes > 0
                  AND s.notified_at <= now() - make_interval(mins => r.repeat_minutes) THEN
                UPDATE alert_states SET notified_at = now(), notifications = notifications + 1
                WHERE rule_id = r.id AND subject = m.subject
                RETURNING * INTO s;
                PERFORM alert_notify(r, s, 'firing', true, p_node);
                n := n + 1;
            END IF;
        END LOOP;

        -- Whatever no longer breaches (or has no data any more) ends: a firing alert resolves
        -- and says so, a pending one is forgotten.
        DELETE FROM alert_states
        WHERE rule_id = r.id AND state = 'pending' AND subject <> ALL (seen);
        FOR s IN UPDATE alert_states SET state = 'resolved', since = now(), resolved_at = now(),
                                         evaluated_at = now(), notified_at = now(),
                                         notifications = notifications + 1
                 WHERE rule_id = r.id AND state = 'firing' AND subject <> ALL (seen)
                 RETURNING * LOOP
            PERFORM alert_notify(r, s, 'resolved', false, p_node);
            n := n + 1;
        END LOOP;
      EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'alert rule "%" cannot be evaluated: %', r.name, SQLERRM;
      END;
    END LOOP;
    RETURN n;
END
$$;

-- ---- documents of the read-only resources ----------------------------------------------------

CREATE FUNCTION alert_state_doc(s alert_states, r alert_rules) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.id,
        'object', 'alert',
        'rule', r.name,
        'kind', r.kind,
        'scope', r.scope,
        'subject', s.subject,
        'state', s.state,
        'value', s.value,
        'threshold', CASE WHEN r.kind IN ('error_rate', 'p95_latency', 'limit_use', 'budget_use')
                          THEN r.threshold END,
        'since', s.since,
        'started_at', s.started_at,
        'fired_at', s.fired_at,
        'resolved_at', s.resolved_at,
        'evaluated_at', s.evaluated_at,
        'notified_at', s.notified_at,
        'notifications', s.notifications,
        'message', alert_message(r, s.subject, s.value,
                                 CASE s.state WHEN 'resolved' THEN 'resolved' ELSE 'firing' END))
$$;

CREATE FUNCTION alert_delivery_doc(d alert_deliveries) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', d.id,
        'object', 'alert_delivery',
        'channel', (SELECT ch.name FROM alert_channels ch WHERE ch.id = d.channel_id),
        'rule', d.rule,
        'subject', d.subject,
        'status', d.status,
        'state', CASE WHEN d.delivered_at IS NOT NULL THEN 'delivered'
                      WHEN d.gave_up_at IS NOT NULL THEN 'failed' ELSE 'pending' END,
        'attempts', d.attempts,
        'next_attempt_at', CASE WHEN d.delivered_at IS NULL AND d.gave_up_at IS NULL
                                THEN d.next_attempt_at END,
        'last_status', d.last_status,
        'last_error', d.last_error,
        'created_at', d.created_at,
        'delivered_at', d.delivered_at,
        'gave_up_at', d.gave_up_at)
$$;
