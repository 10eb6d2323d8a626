-- SPDX-License-Identifier: Apache-2.0
-- The admin API's documents for deployments, models and client keys (as provider_doc in 002:
-- reads, lists and the RETURNING of writes show exactly the same thing), the function that
-- writes a model and its targets in one statement, and one config version per transaction.

-- ---- one config version per successful write ---------------------------------------------------

-- 001 bumps config_state.version once per statement, even for a statement that changed no row
-- (an UPDATE whose WHERE version = $n no longer matches, a DELETE refused by its own WHERE), and
-- once per statement of a transaction that writes several tables (a model and its targets). A
-- failed write must leave the version alone, and one write must be one version: the triggers
-- below look at the rows the statement changed (a transition table) and bump only the first
-- time in a transaction. The transaction-local setting is rolled back with the transaction (or
-- the savepoint) that set it, like the bump itself.
CREATE FUNCTION config_bump_once() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF coalesce(current_setting('switchyard.config_bumped', true), '') = 'on' THEN
        RETURN false;
    END IF;
    UPDATE config_state SET version = version + 1 WHERE id RETURNING version INTO v;
    PERFORM pg_notify('switchyard_config', v::text);
    PERFORM set_config('switchyard.config_bumped', 'on', true);
    RETURN true;
END
$$;

-- AFTER ... FOR EACH STATEMENT REFERENCING ... TABLE AS changed: bump if a row changed.
CREATE FUNCTION config_bump_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed) THEN
        PERFORM config_bump_once();
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE has no transition table: always a change.
CREATE FUNCTION config_bump_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM config_bump_once();
    RETURN NULL;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['providers', 'deployments', 'models', 'model_targets', 'api_keys']
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %I', t || '_config_bump', t);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS changed'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION config_bump_changed()',
                       t || '_config_bump_insert', t);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %I REFERENCING NEW TABLE AS changed'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION config_bump_changed()',
                       t || '_config_bump_update', t);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS changed'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION config_bump_changed()',
                       t || '_config_bump_delete', t);
        EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION config_bump_truncate()',
                       t || '_config_bump_truncate', t);
    END LOOP;
END
$$;
DROP FUNCTION config_bump();

-- ---- deployments ----------------------------------------------------------------------------

CREATE FUNCTION deployment_doc(d deployments) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', d.id,
        'object', 'deployment',
        'name', d.name,
        'provider', (SELECT p.name FROM providers p WHERE p.id = d.provider_id),
        'model', d.model,
        'weight', d.weight,
        'limits', jsonb_build_object(
            'rpm', d.rpm, 'tpm', d.tpm, 'max_concurrency', d.max_concurrency),
        'timeouts', jsonb_build_object(
            'connect_ms', d.connect_timeout_ms,
            'first_byte_ms', d.first_byte_timeout_ms,
            'idle_ms', d.idle_timeout_ms,
            'total_ms', d.total_timeout_ms),
        'price', jsonb_build_object(
            'input', trim_scale(d.input_price), 'output', trim_scale(d.output_price)),
        'enabled', d.enabled,
        'slot', d.slot,
        'version', d.version,
        'created_at', d.created_at,
        'updated_at', d.updated_at)
$$;

-- ---- models -------------------------------------------------------------------------------------

-- Reserved for the routing policy: the public models to try when every target failed, in order.
ALTER TABLE models ADD COLUMN fallbacks text[] NOT NULL DEFAULT '{}';

CREATE FUNCTION model_doc(m models) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', m.id,
        'object', 'model',
        'name', m.name,
        'description', m.description,
        'targets', coalesce((
            SELECT jsonb_agg(jsonb_build_object('deployment', d.name, 'weight', t.weight)
                             ORDER BY t.position)
            FROM model_targets t JOIN deployments d ON d.id = t.deployment_id
            WHERE t.model_id = m.id), '[]'::jsonb),
        'policy', m.policy,
        'fallbacks', to_jsonb(m.fallbacks),
        'slot', m.slot,
        'version', m.version,
        'created_at', m.created_at,
        'updated_at', m.updated_at)
$$;

-- Create (p_name NULL) or update the model named p_name from p_doc, a document the admin API
-- has validated for types and formats: {name, description, targets: [{deployment, weight}],
-- policy, fallbacks}. This checks what needs the database -- the deployments and fallback models
-- named exist, the name is free, the model still has version p_expected (when not NULL) -- and
-- writes the model and its targets in the caller's one statement, so they change together. Errors
-- carry SQLSTATE SY400/SY404/SY409/SY412, an operator-readable message and the field in HINT.
-- A model whose targets changed gets a new version even when its own row did not.
CREATE FUNCTION model_write(p_name text, p_expected int, p_doc jsonb)
RETURNS TABLE (out_doc jsonb, out_version int)
LANGUAGE plpgsql AS $$
DECLARE
    m models;
    n_targets int := jsonb_array_length(coalesce(p_doc -> 'targets', '[]'));
    dep_ids bigint[] := '{}';
    weights int[] := '{}';
    dep_id bigint;
    v_fallbacks text[] := ARRAY(SELECT jsonb_array_elements_text(
        coalesce(p_doc -> 'fallbacks', '[]')));
    old_targets jsonb;
    targets_changed boolean := true;
BEGIN
    FOR i IN 0 .. n_targets - 1 LOOP
        -- KEY SHARE: the deployment cannot be deleted before this transaction commits.
        SELECT d.id INTO dep_id FROM deployments d
            WHERE d.name = p_doc -> 'targets' -> i ->> 'deployment' FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SY400',
                MESSAGE = format('targets[%s].deployment: unknown deployment "%s"', i,
                                 p_doc -> 'targets' -> i ->> 'deployment'),
                HINT = format('targets[%s].deployment', i);
        END IF;
        dep_ids := dep_ids || dep_id;
        weights := weights || coalesce((p_doc -> 'targets' -> i ->> 'weight')::int, 1);
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(v_fallbacks, 1), 0) LOOP
        IF NOT EXISTS (SELECT 1 FROM models x WHERE x.name = v_fallbacks[i]) THEN
            RAISE EXCEPTION USING ERRCODE = 'SY400',
                MESSAGE = format('fallbacks[%s]: unknown model "%s"', i - 1, v_fallbacks[i]),
                HINT = format('fallbacks[%s]', i - 1);
        END IF;
    END LOOP;

    IF p_name IS NULL THEN
        BEGIN
            INSERT INTO models (name, description, policy, fallbacks)
                VALUES (p_doc ->> 'name', p_doc ->> 'description',
                        coalesce(p_doc -> 'policy', '{}'), v_fallbacks)
                RETURNING * INTO m;
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION USING ERRCODE = 'SY409', HINT = 'name',
                MESSAGE = format('a model named "%s" already exists', p_doc ->> 'name');
        END;
    ELSE
        SELECT * INTO m FROM models x WHERE x.name = p_name FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SY404',
                MESSAGE = format('model "%s" not found', p_name);
        END IF;
        IF p_expected IS NOT NULL AND m.version <> p_expected THEN
            RAISE EXCEPTION USING ERRCODE = 'SY412', HINT = 'version',
                MESSAGE = format('model "%s" was changed by someone else (it is at version %s,'
                                 ' not %s); fetch it again and retry',
                                 p_name, m.version, p_expected);
        END IF;
        SELECT jsonb_agg(jsonb_build_array(t.deployment_id, t.weight) ORDER BY t.position)
            INTO old_targets FROM model_targets t WHERE t.model_id = m.id;
        targets_changed := old_targets IS DISTINCT FROM (
            SELECT jsonb_agg(jsonb_build_array(x.d, x.w) ORDER BY x.pos)
            FROM unnest(dep_ids, weights) WITH ORDINALITY AS x (d, w, pos));
        BEGIN
            UPDATE models x SET name = p_doc ->> 'name',
                description = p_doc ->> 'description',
                policy = coalesce(p_doc -> 'policy', '{}'),
                fallbacks = v_fallbacks,
                -- the touch trigger makes any change version + 1; this forces one
                version = CASE WHEN targets_changed THEN x.version + 1 ELSE x.version END
                WHERE x.id = m.id
                RETURNING * INTO m;
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION USING ERRCODE = 'SY409', HINT = 'name',
                MESSAGE = format('a model named "%s" already exists', p_doc ->> 'name');
        END;
        IF m.name <> p_name THEN
            -- a renamed model stays the fallback of the models that named it
            UPDATE models x SET fallbacks = array_replace(x.fallbacks, p_name, m.name)
                WHERE p_name = ANY (x.fallbacks);
        END IF;
        IF targets_changed THEN
            DELETE FROM model_targets t WHERE t.model_id = m.id;
        END IF;
    END IF;
    IF targets_changed AND n_targets > 0 THEN
        INSERT INTO model_targets (model_id, deployment_id, weight, position)
            SELECT m.id, x.d, x.w, x.pos - 1
            FROM unnest(dep_ids, weights) WITH ORDINALITY AS x (d, w, pos);
    END IF;
    RETURN QUERY SELECT model_doc(m), m.version;
END
$$;

-- ---- client API keys ----------------------------------------------------------------------------

-- Never the hash: a listing shows the prefix ("sk-sy-AbCd") to recognise a key by.
CREATE FUNCTION api_key_doc(k api_keys) RETURNS jsonb
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
        'expires_at', k.expires_at,
        'revoked', k.revoked,
        'slot', k.slot,
        'version', k.version,
        'created_at', k.created_at,
        'updated_at', k.updated_at)
$$;
