-- SPDX-License-Identifier: Apache-2.0
-- Retention of the audit log: records older than --audit-retention-days (365) are deleted by the
-- periodic compaction (controlplane/src/usage.c), so a flood of refused writes cannot grow the
-- table without bound.
--
-- Migrations run inside a transaction: no BEGIN/COMMIT here.

-- Delete the audit records older than <retention_days>; returns how many.
CREATE FUNCTION audit_prune(retention_days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM audit_log WHERE at < now() - make_interval(days => retention_days);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
