-- SPDX-License-Identifier: Apache-2.0
-- The governance policy of a public model (proto/README.md, "policy"): models.policy is the
-- table's `policy` map as the operator wrote it, checked for shape by the admin API
-- (sy_policy_check_json). What needs the database is checked here, in model_write(): the models
-- and deployments that rules target exist, and no loop forms among the models' fallbacks and
-- rule targets. References by name stay true afterwards: a rename rewrites them, and a delete
-- of something still referenced is refused.

-- The public models the rules of <p> send to.
CREATE FUNCTION policy_rule_models(p jsonb) RETURNS SETOF text
LANGUAGE sql IMMUTABLE AS $$
    SELECT r -> 'target' ->> 'model'
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p -> 'rules') = 'array'
                                   THEN p -> 'rules' ELSE '[]' END) r
    WHERE jsonb_typeof(r) = 'object' AND r -> 'target' ->> 'model' IS NOT NULL
$$;

-- The deployments the rules of <p> send to.
CREATE FUNCTION policy_rule_deployments(p jsonb) RETURNS SETOF text
LANGUAGE sql IMMUTABLE AS $$
    SELECT t ->> 'deployment'
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p -> 'rules') = 'array'
                                   THEN p -> 'rules' ELSE '[]' END) r,
         jsonb_array_elements(CASE WHEN jsonb_typeof(r -> 'target' -> 'deployments') = 'array'
                                   THEN r -> 'target' -> 'deployments' ELSE '[]' END) t
    WHERE t ->> 'deployment' IS NOT NULL
$$;

-- <p> with every rule target naming the <kind> ('model' or 'deployment') <old> renamed <new>.
CREATE FUNCTION policy_rename(p jsonb, kind text, old text, new text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    rules jsonb := '[]';
    r jsonb;
BEGIN
    IF jsonb_typeof(p -> 'rules') IS DISTINCT FROM 'array' THEN
        RETURN p;
    END IF;
    FOR r IN SELECT x FROM jsonb_array_elements(p -> 'rules') x LOOP
        IF kind = 'model' AND r -> 'target' ->> 'model' = old THEN
            r := jsonb_set(r, '{target,model}', to_jsonb(new));
        ELSIF kind = 'deployment' AND jsonb_typeof(r -> 'target' -> 'deployments') = 'array' THEN
            r := jsonb_set(r, '{target,deployments}', (
                SELECT jsonb_agg(CASE WHEN t ->> 'deployment' = old
                                      THEN jsonb_set(t, '{deployment}', to_jsonb(new))
                                      ELSE t END ORDER BY i)
                FROM jsonb_array_elements(r -> 'target' -> 'deployments')
                     WITH ORDINALITY AS x (t, i)));
        END IF;
        rules := rules || jsonb_build_array(r);
    END LOOP;
    RETURN jsonb_set(p, '{rules}', rules);
END
$$;

-- The shortest loop through the model <start> among every model's fallbacks and rule targets,
-- as {path: [names, start first and last], via: ['fallback' | 'rule', one per step]}; NULL
-- when there is none. Walks stop at a model seen before, so a loop elsewhere cannot make the
-- search endless.
CREATE FUNCTION model_loop(start text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE edges (src, dst, via) AS (
        SELECT x.name, f, 'fallback' FROM models x, unnest(x.fallbacks) f
        UNION ALL
        SELECT x.name, r, 'rule' FROM models x, policy_rule_models(x.policy) r
    ), walk (node, path, via) AS (
        SELECT e.dst, ARRAY[e.src, e.dst], ARRAY[e.via] FROM edges e WHERE e.src = start
        UNION ALL
        SELECT e.dst, w.path || e.dst, w.via || e.via
        FROM walk w JOIN edges e ON e.src = w.node
        WHERE w.node <> start AND NOT e.dst = ANY (w.path[2:])
    )
    SELECT jsonb_build_object('path', to_jsonb(w.path), 'via', to_jsonb(w.via))
    FROM walk w WHERE w.node = start
    ORDER BY array_length(w.path, 1), w.path LIMIT 1
$$;

-- As in 003, plus the checks of the policy that need the database (see the top of this file).
-- Model writes are serialised by a transaction-scoped advisory lock, so that two writes that
-- each close half of a loop cannot both pass the check.
CREATE OR REPLACE FUNCTION model_write(p_name text, p_expected int, p_doc jsonb)
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
    v_policy jsonb := coalesce(p_doc -> 'policy', '{}');
    v_rules jsonb := CASE WHEN jsonb_typeof(v_policy -> 'rules') = 'array'
                          THEN v_policy -> 'rules' ELSE '[]' END;
    old_targets jsonb;
    targets_changed boolean := true;
    loop_found jsonb;
    loop_text text;
    loop_param text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('switchyard.models'));
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
    FOR i IN 0 .. jsonb_array_length(v_rules) - 1 LOOP
        -- a rule may send to the model itself only in a loop, which is reported below
        IF v_rules -> i -> 'target' ->> 'model' IS NOT NULL
           AND v_rules -> i -> 'target' ->> 'model' <> (p_doc ->> 'name')
           AND NOT EXISTS (SELECT 1 FROM models x
                           WHERE x.name = v_rules -> i -> 'target' ->> 'model') THEN
            RAISE EXCEPTION USING ERRCODE = 'SY400',
                MESSAGE = format('policy.rules[%s].target.model: unknown model "%s"', i,
                                 v_rules -> i -> 'target' ->> 'model'),
                HINT = format('policy.rules[%s].target.model', i);
        END IF;
        FOR j IN 0 .. jsonb_array_length(coalesce(v_rules -> i -> 'target' -> 'deployments',
                                                  '[]')) - 1 LOOP
            PERFORM 1 FROM deployments d
                WHERE d.name = v_rules -> i -> 'target' -> 'deployments' -> j ->> 'deployment'
                FOR KEY SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'SY400',
                    MESSAGE = format('policy.rules[%s].target.deployments[%s].deployment: '
                                     'unknown deployment "%s"', i, j,
                                     v_rules -> i -> 'target' -> 'deployments' -> j
                                         ->> 'deployment'),
                    HINT = format('policy.rules[%s].target.deployments[%s].deployment', i, j);
            END IF;
        END LOOP;
    END LOOP;

    IF p_name IS NULL THEN
        BEGIN
            INSERT INTO models (name, description, policy, fallbacks)
                VALUES (p_doc ->> 'name', p_doc ->> 'description', v_policy, v_fallbacks)
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
                policy = v_policy,
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
            -- a renamed model stays the fallback and the rule target of the models that named it
            UPDATE models x SET fallbacks = array_replace(x.fallbacks, p_name, m.name)
                WHERE p_name = ANY (x.fallbacks);
            UPDATE models x SET policy = policy_rename(x.policy, 'model', p_name, m.name)
                WHERE p_name IN (SELECT policy_rule_models(x.policy));
            SELECT * INTO m FROM models x WHERE x.id = m.id;
        END IF;
        IF targets_changed THEN
            DELETE FROM model_targets t WHERE t.model_id = m.id;
        END IF;
    END IF;

    loop_found := model_loop(m.name);
    IF loop_found IS NOT NULL THEN
        SELECT string_agg(n, ' → ' ORDER BY i) INTO loop_text
            FROM jsonb_array_elements_text(loop_found -> 'path') WITH ORDINALITY AS x (n, i);
        loop_param := CASE WHEN loop_found -> 'via' ->> 0 = 'fallback'
                           THEN 'fallbacks' ELSE 'policy.rules' END;
        IF loop_found -> 'via' @> '["rule"]' THEN
            loop_text := format('routing loop %s (through fallbacks and rule targets)',
                                loop_text);
        ELSE
            loop_text := 'fallback loop ' || loop_text;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'SY400', HINT = loop_param,
            MESSAGE = format('%s: %s', loop_param, loop_text);
    END IF;

    IF targets_changed AND n_targets > 0 THEN
        INSERT INTO model_targets (model_id, deployment_id, weight, position)
            SELECT m.id, x.d, x.w, x.pos - 1
            FROM unnest(dep_ids, weights) WITH ORDINALITY AS x (d, w, pos);
    END IF;
    RETURN QUERY SELECT model_doc(m), m.version;
END
$$;

-- A deployment that a rule still targets cannot be deleted (the routing table would not
-- compile); a renamed one stays the rule target of the models that named it.
CREATE FUNCTION deployments_rule_refs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    names text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT string_agg(x.name, ', ' ORDER BY x.name) INTO names FROM models x
            WHERE OLD.name IN (SELECT policy_rule_deployments(x.policy));
        IF names IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
                MESSAGE = format('deployment "%s" is still a rule target', OLD.name),
                DETAIL = format('it is a rule target of models: %s; remove it from their policy'
                                ' rules first', names);
        END IF;
        RETURN OLD;
    END IF;
    IF NEW.name <> OLD.name THEN
        UPDATE models x SET policy = policy_rename(x.policy, 'deployment', OLD.name, NEW.name)
            WHERE OLD.name IN (SELECT policy_rule_deployments(x.policy));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER deployments_rule_refs_delete BEFORE DELETE ON deployments
    FOR EACH ROW EXECUTE FUNCTION deployments_rule_refs();
CREATE TRIGGER deployments_rule_refs_rename AFTER UPDATE OF name ON deployments
    FOR EACH ROW EXECUTE FUNCTION deployments_rule_refs();
