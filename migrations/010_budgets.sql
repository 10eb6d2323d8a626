-- SPDX-License-Identifier: Apache-2.0
-- Spend budgets (docs/governance.md, "Budgets"): a currency amount per client key, per agent or
-- per user over a calendar day, week (Monday to Monday) or month in a time zone.
--
-- The period's spend is what the usage rollups (005) hold for the period, from every node,
-- plus what a node has counted but not flushed yet; the second part only the node knows, so
-- the data plane enforces base + local in shared memory (controlplane/src/budget.c refreshes
-- the base from budget_spent() every flush interval). The functions below are the one place
-- where a period's bounds and spend are computed: the control plane, the admin API and
-- alert_budget_use() all call them.
--
-- Migrations run inside a transaction: no BEGIN/COMMIT here.

CREATE TABLE budgets (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE CONSTRAINT budgets_name_shape CHECK (name ~ '^[a-z0-9._-]{1,64}$'),
    scope text NOT NULL CONSTRAINT budgets_scope_known CHECK (scope IN ('key', 'agent', 'user')),
    -- the key's id (as text), the agent's name or the user's name
    subject text NOT NULL CONSTRAINT budgets_subject_length CHECK (length(subject) BETWEEN 1 AND 128),
    amount numeric(20, 6) NOT NULL CONSTRAINT budgets_amount_positive
        CHECK (amount > 0 AND amount <= 1000000000000),
    period text NOT NULL CONSTRAINT budgets_period_known CHECK (period IN ('day', 'week', 'month')),
    timezone text NOT NULL DEFAULT 'UTC',
    soft_percent int NOT NULL DEFAULT 80 CONSTRAINT budgets_soft_percent_range
        CHECK (soft_percent BETWEEN 1 AND 100),
    enabled boolean NOT NULL DEFAULT true,
    slot int NOT NULL UNIQUE CONSTRAINT budgets_slot_range CHECK (slot >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    version int NOT NULL DEFAULT 1
);
CREATE INDEX budgets_subject_idx ON budgets (scope, subject);

-- A time zone that is not an IANA name PostgreSQL knows, or a key budget whose key does not
-- exist, is refused with SY400 naming the field (the admin API answers 400 with it). Only
-- names: PostgreSQL would also take abbreviations and POSIX strings such as "UTC+3", which
-- means three hours *west* of Greenwich and is a trap for a calendar.
CREATE FUNCTION budgets_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = NEW.timezone) THEN
        RAISE EXCEPTION 'timezone: unknown time zone "%" (use an IANA name such as '
                        '"Europe/Paris", or "UTC")', NEW.timezone
            USING ERRCODE = 'SY400', HINT = 'timezone';
    END IF;
    IF NEW.scope = 'key' AND (NEW.subject !~ '^[1-9][0-9]{0,17}$' OR NOT EXISTS (
            SELECT 1 FROM api_keys WHERE id = NEW.subject::bigint)) THEN
        RAISE EXCEPTION 'subject: no client key with id "%" (a key budget names the key by its '
                        'id)', NEW.subject
            USING ERRCODE = 'SY400', HINT = 'subject';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER budgets_check BEFORE INSERT OR UPDATE ON budgets
    FOR EACH ROW EXECUTE FUNCTION budgets_check();
CREATE TRIGGER budgets_touch BEFORE UPDATE ON budgets
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION config_touch_row();
CREATE TRIGGER budgets_slot BEFORE INSERT ON budgets
    FOR EACH ROW EXECUTE FUNCTION config_assign_slot();
-- Budgets are in the routing table (the keys they cover list them): a change is a new version.
CREATE TRIGGER budgets_config_bump_insert AFTER INSERT ON budgets
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION config_bump_changed();
CREATE TRIGGER budgets_config_bump_update AFTER UPDATE ON budgets
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION config_bump_changed();
CREATE TRIGGER budgets_config_bump_delete AFTER DELETE ON budgets
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION config_bump_changed();
CREATE TRIGGER budgets_config_bump_truncate AFTER TRUNCATE ON budgets
    FOR EACH STATEMENT EXECUTE FUNCTION config_bump_truncate();

-- ---- periods and spend ------------------------------------------------------------------------

-- The calendar period <p_period> (day, week, month) containing <p_at>, in time zone
-- <p_timezone>: from local midnight of its first day (a Monday for weeks) to local midnight of
-- the next period's first day. Computed on local time and converted back, so a day across a
-- daylight-saving change is 23 or 25 hours long and a month is its own length.
CREATE FUNCTION budget_period(p_period text, p_timezone text, p_at timestamptz,
                              OUT period_start timestamptz, OUT period_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT date_trunc(p_period, p_at AT TIME ZONE p_timezone) AT TIME ZONE p_timezone,
           (date_trunc(p_period, p_at AT TIME ZONE p_timezone)
            + ('1 ' || p_period)::interval) AT TIME ZONE p_timezone
$$;

-- What budget <b> covers of the usage rows: kind 'key' rows of its agent, its user, or its
-- key's name (the rollups identify a key by name, so two keys with one name share a key
-- budget's recorded spend; see docs/governance.md).
CREATE FUNCTION budget_spent(b budgets, p_from timestamptz, p_to timestamptz) RETURNS numeric
LANGUAGE sql STABLE AS $$
    WITH k AS (
        SELECT name FROM api_keys WHERE b.scope = 'key' AND id = b.subject::bigint
    ), rows AS (
        SELECT u.cost, u.name, u.agent, u.user_name FROM usage_minute u
        WHERE u.kind = 'key' AND u.minute >= p_from AND u.minute < p_to
        UNION ALL
        SELECT u.cost, u.name, u.agent, u.user_name FROM usage_hour u
        WHERE u.kind = 'key' AND u.hour >= p_from AND u.hour < p_to
    )
    SELECT coalesce(sum(r.cost), 0) FROM rows r
    WHERE CASE b.scope WHEN 'agent' THEN r.agent = b.subject
                       WHEN 'user' THEN r.user_name = b.subject
                       ELSE r.name = (SELECT name FROM k) END
$$;

-- Every enabled budget at <p_at> (the control plane's clock): its period, the spend PostgreSQL
-- holds for it, in millionths (what the shared memory counts in). <p_offset_ms> is how far the
-- control plane's clock is ahead of PostgreSQL's (SWITCHYARD_TEST_CLOCK_OFFSET_MS in tests, 0
-- otherwise): the rows are stamped with PostgreSQL's, so the bounds are moved back by it.
CREATE FUNCTION budget_state(p_at timestamptz, p_offset_ms bigint DEFAULT 0)
RETURNS TABLE (id bigint, slot int, name text, amount numeric, soft_percent int,
               period_start timestamptz, period_end timestamptz, spent_micros bigint)
LANGUAGE sql STABLE AS $$
    SELECT b.id, b.slot, b.name, b.amount, b.soft_percent, p.period_start, p.period_end,
           (budget_spent(b, p.period_start - make_interval(secs => p_offset_ms / 1000.0),
                         p.period_end - make_interval(secs => p_offset_ms / 1000.0))
            * 1000000)::bigint
    FROM budgets b, budget_period(b.period, b.timezone, p_at) p
    WHERE b.enabled
    ORDER BY b.id
$$;

-- For the alert evaluator (rule kind budget_use): each enabled budget's spend in its current
-- period as PostgreSQL knows it (flushed usage, so up to one flush interval behind the data
-- plane), in percent of its amount. Replaces the stub of migration 007.
DROP FUNCTION IF EXISTS alert_budget_use();
CREATE FUNCTION alert_budget_use()
RETURNS TABLE (budget text, subject text, percent numeric)
LANGUAGE sql STABLE AS $$
    SELECT b.name, b.subject,
           round(100 * budget_spent(b, p.period_start, p.period_end) / b.amount, 2)
    FROM budgets b, budget_period(b.period, b.timezone, now()) p
    WHERE b.enabled
    ORDER BY b.name
$$;

-- ---- the admin API's document -------------------------------------------------------------------

CREATE FUNCTION budget_doc(b budgets) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', b.id,
        'object', 'budget',
        'name', b.name,
        'scope', b.scope,
        'subject', b.subject,
        'amount', b.amount,
        'period', b.period,
        'timezone', b.timezone,
        'soft_percent', b.soft_percent,
        'enabled', b.enabled,
        'slot', b.slot,
        'version', b.version,
        'created_at', b.created_at,
        'updated_at', b.updated_at)
$$;
