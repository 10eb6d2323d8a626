# SPDX-License-Identifier: Apache-2.0
"""The control plane's schema: `switchyard-controlplane migrate` against a real PostgreSQL, the
config tables and their triggers (version bump + NOTIFY, row versions, slots, constraints), and
`rotate-key` re-encrypting provider credentials."""

import os
import subprocess
import threading

import pytest

from pg import PsqlError, fresh_db, pg_server  # noqa: F401  (fixtures)

KEY_OLD = "00" * 32
KEY_NEW = "11" * 32
MIGRATIONS = sorted(f for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "..",
                                                       "migrations")) if f.endswith(".sql"))


@pytest.fixture(scope="session")
def cp_bin(build_dir):
    path = os.path.join(build_dir, "controlplane", "switchyard-controlplane")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: ninja -C {build_dir}")
    return path


def cp(cp_bin, *args, env=None, stdin=None, timeout=60):
    """Run the control plane binary; returns the CompletedProcess (text)."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("SWITCHYARD_MASTER_KEY") and k != "SWITCHYARD_DATABASE_URL"}
    full_env.update(env or {})
    return subprocess.run([cp_bin, *args], input=stdin, capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def migrate(cp_bin, db):
    r = cp(cp_bin, "migrate", "--database-url", db.url)
    assert r.returncode == 0, r.stderr
    return r


def provider_sql(name="openai", extra_cols="", extra_vals=""):
    return (f"INSERT INTO providers (name, kind, base_url, format, auth_style{extra_cols})"
            f" VALUES ('{name}', 'openai', 'https://api.openai.com/v1', 'openai', 'bearer'"
            f"{extra_vals}) RETURNING id")


def config_version(db):
    return int(db.psql("SELECT version FROM config_state")[0][0])


# ---- migrate ------------------------------------------------------------------------------------

def test_migrate_applies_every_migration_to_a_fresh_database(cp_bin, fresh_db):
    r = migrate(cp_bin, fresh_db)
    for f in MIGRATIONS:
        assert f"applied {f[:-4]}" in r.stdout
    rows = fresh_db.psql("SELECT version, name, applied_at IS NOT NULL FROM schema_migrations"
                         " ORDER BY version")
    assert rows == [[str(int(f[:3])), f[4:-4], "t"] for f in MIGRATIONS]
    tables = {r[0] for r in fresh_db.psql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"config_state", "providers", "deployments", "models", "model_targets", "api_keys",
            "nodes", "audit_log", "schema_migrations"} <= tables
    assert fresh_db.psql("SELECT id, version FROM config_state") == [["t", "0"]]


def test_migrate_twice_applies_nothing_the_second_time(cp_bin, fresh_db):
    migrate(cp_bin, fresh_db)
    r = migrate(cp_bin, fresh_db)
    assert "applied 0" not in r.stdout and "up to date" in r.stdout
    assert "applied 001" not in r.stdout
    assert fresh_db.psql("SELECT count(*) FROM schema_migrations") == [[str(len(MIGRATIONS))]]


def test_concurrent_migrations_apply_each_migration_exactly_once(cp_bin, fresh_db):
    results = [None] * 4
    barrier = threading.Barrier(len(results))

    def run(i):
        barrier.wait()
        results[i] = cp(cp_bin, "migrate", "--database-url", fresh_db.url)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert r.returncode == 0, r.stderr
    out = "".join(r.stdout for r in results)
    for f in MIGRATIONS:
        assert out.count(f"applied {f[:-4]}\n") == 1, out
    assert fresh_db.psql("SELECT count(*), count(DISTINCT version) FROM schema_migrations") == \
        [[str(len(MIGRATIONS)), str(len(MIGRATIONS))]]
    assert fresh_db.psql("SELECT count(*) FROM config_state") == [["1"]]


def test_a_database_ahead_of_the_binary_is_refused(cp_bin, fresh_db):
    migrate(cp_bin, fresh_db)
    fresh_db.psql("INSERT INTO schema_migrations (version, name) VALUES (999, 'from_the_future')")
    r = cp(cp_bin, "migrate", "--database-url", fresh_db.url)
    assert r.returncode == 1
    assert "999" in r.stderr and "from_the_future" in r.stderr and "newer" in r.stderr


def test_migrate_without_a_database_says_so(cp_bin, pg_server, tmp_path):
    r = cp(cp_bin, "migrate")
    assert r.returncode == 2 and "SWITCHYARD_DATABASE_URL" in r.stderr
    r = cp(cp_bin, "migrate", "--database-url",
           f"postgresql:///x?host={tmp_path}&user=postgres")
    assert r.returncode == 1
    assert "cannot connect to the database" in r.stderr and str(tmp_path) in r.stderr


def test_migrate_reads_the_url_from_the_environment(cp_bin, fresh_db):
    r = cp(cp_bin, "migrate", env={"SWITCHYARD_DATABASE_URL": fresh_db.url})
    assert r.returncode == 0, r.stderr
    assert "applied 001_init" in r.stdout


def test_migrate_fails_cleanly_while_postgres_is_down_and_works_after(cp_bin, pg_server,
                                                                      fresh_db):
    pg_server.stop()
    try:
        r = cp(cp_bin, "migrate", "--database-url", fresh_db.url)
        assert r.returncode == 1 and "cannot connect to the database" in r.stderr
    finally:
        pg_server.start()
    migrate(cp_bin, fresh_db)


def test_help_and_version(cp_bin):
    r = cp(cp_bin, "--help")
    assert r.returncode == 0 and "migrate" in r.stdout and "rotate-key" in r.stdout
    assert "debug-" not in r.stdout
    r = cp(cp_bin, "--version")
    assert r.returncode == 0 and r.stdout.startswith("switchyard-controlplane ")
    r = cp(cp_bin, "frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr


# ---- the config schema ---------------------------------------------------------------------------

def test_a_config_write_bumps_the_version_and_notifies_listeners(cp_bin, fresh_db):
    migrate(cp_bin, fresh_db)
    # psql reports notifications, including those of its own session, after each command.
    r = fresh_db.psql_raw("LISTEN switchyard_config;\n" + provider_sql() + ";\nSELECT 1;\n")
    assert r.returncode == 0, r.stderr
    assert 'notification "switchyard_config" with payload "1"' in r.stdout + r.stderr
    assert config_version(fresh_db) == 1

    pid = fresh_db.psql("SELECT id FROM providers")[0][0]
    fresh_db.psql(f"INSERT INTO deployments (name, provider_id, model) VALUES"
                  f" ('gpt4o', {pid}, 'gpt-4o')")
    fresh_db.psql("INSERT INTO models (name) VALUES ('gpt-4o')")
    fresh_db.psql("INSERT INTO model_targets (model_id, deployment_id, position)"
                  " SELECT m.id, d.id, 0 FROM models m, deployments d")
    fresh_db.psql("INSERT INTO api_keys (name, key_hash, key_prefix)"
                  " VALUES ('ci', sha256('sk-sy-x'), 'sk-sy-x')")
    assert config_version(fresh_db) == 5
    # A rolled-back write leaves the version alone.
    fresh_db.psql("BEGIN; DELETE FROM model_targets; ROLLBACK;")
    assert config_version(fresh_db) == 5
    # Heartbeats and audit entries are not config.
    fresh_db.psql("INSERT INTO nodes (id, hostname) VALUES ('n1', 'h');"
                  " INSERT INTO audit_log (actor, action) VALUES ('t', 'test')")
    assert config_version(fresh_db) == 5


def test_an_update_bumps_the_row_version_only_when_something_changed(cp_bin, fresh_db):
    migrate(cp_bin, fresh_db)
    fresh_db.psql(provider_sql())
    fresh_db.psql("UPDATE providers SET kind = 'openai'")  # no change
    assert fresh_db.psql("SELECT version, updated_at = created_at FROM providers") == [["1", "t"]]
    fresh_db.psql("UPDATE providers SET base_url = 'https://example.test/v1'")
    assert fresh_db.psql("SELECT version, updated_at > created_at FROM providers") == [["2", "t"]]


def test_deleting_a_provider_used_by_a_deployment_fails(cp_bin, fresh_db):
    migrate(cp_bin, fresh_db)
    pid = fresh_db.psql(provider_sql())[0][0]
    fresh_db.psql(f"INSERT INTO deployments (name, provider_id, model) VALUES ('d', {pid}, 'm')")
    with pytest.raises(PsqlError, match="deployments_provider_id_fkey"):
        fresh_db.psql("DELETE FROM providers")
    # ...and a deployment used by a model's targets too; deleting the model removes its targets.
    fresh_db.psql("INSERT INTO models (name) VALUES ('m');"
                  " INSERT INTO model_targets (model_id, deployment_id, position)"
                  " SELECT m.id, d.id, 0 FROM models m, deployments d")
    with pytest.raises(PsqlError, match="model_targets_deployment_id_fkey"):
        fresh_db.psql("DELETE FROM deployments")
    fresh_db.psql("DELETE FROM models")
    assert fresh_db.psql("SELECT count(*) FROM model_targets") == [["0"]]
    fresh_db.psql("DELETE FROM deployments; DELETE FROM providers")


@pytest.mark.parametrize("table,cols,vals", [
    ("deployments", "name, provider_id, model", "'{n}', {pid}, 'm'"),
    ("models", "name", "'{n}'"),
    ("api_keys", "name, key_hash, key_prefix", "'{n}', sha256('{n}'), 'p'"),
])
def test_slots_are_the_lowest_free_ones(cp_bin, fresh_db, table, cols, vals):
    migrate(cp_bin, fresh_db)
    pid = fresh_db.psql(provider_sql())[0][0]

    def insert(*names):
        rows = ", ".join("(" + vals.format(n=n, pid=pid) + ")" for n in names)
        return [int(r[0]) for r in fresh_db.psql(
            f"INSERT INTO {table} ({cols}) VALUES {rows} RETURNING slot")]

    assert insert("a", "b", "c", "d") == [0, 1, 2, 3]
    fresh_db.psql(f"DELETE FROM {table} WHERE name IN ('b', 'c')")
    assert insert("e") == [1]
    assert insert("f", "g") == [2, 4]
    fresh_db.psql(f"DELETE FROM {table} WHERE name = 'a'")
    assert insert("h") == [0]


def test_concurrent_inserts_get_distinct_slots(cp_bin, fresh_db):
    migrate(cp_bin, fresh_db)
    pid = fresh_db.psql(provider_sql())[0][0]
    errors = []

    def worker(w):
        try:
            for i in range(10):
                fresh_db.psql(f"INSERT INTO deployments (name, provider_id, model)"
                              f" VALUES ('w{w}-{i}', {pid}, 'm')")
        except PsqlError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fresh_db.psql("SELECT count(DISTINCT slot), min(slot), max(slot) FROM deployments") \
        == [["40", "0", "39"]]


@pytest.mark.parametrize("sql,constraint", [
    (provider_sql(name="Bad Name"), "providers_name_format"),
    (provider_sql(name="x" * 65), "providers_name_format"),
    ("INSERT INTO providers (name, kind, base_url, format, auth_style) VALUES"
     " ('p', 'custom', 'https://x', 'grpc', 'bearer')", "providers_format_known"),
    ("INSERT INTO providers (name, kind, base_url, format, auth_style) VALUES"
     " ('p', 'custom', 'https://x', 'openai', 'header')", "providers_auth_name_needed"),
    ("INSERT INTO providers (name, kind, base_url, format, auth_style) VALUES"
     " ('p', 'custom', 'ftp://x', 'openai', 'none')", "providers_base_url_format"),
    (provider_sql(extra_cols=", api_key_enc", extra_vals=", '\\x01'"),
     "providers_api_key_complete"),
    ("INSERT INTO models (name) VALUES ('has space')", "models_name_format"),
    ("INSERT INTO models (name) VALUES ('')", "models_name_format"),
    ("INSERT INTO models (name, policy) VALUES ('m', '[]')", "models_policy_object"),
    ("INSERT INTO api_keys (name, key_hash, key_prefix) VALUES ('k', '\\x00', 'p')",
     "api_keys_key_hash_length"),
])
def test_invalid_rows_are_refused_by_named_constraints(cp_bin, fresh_db, sql, constraint):
    migrate(cp_bin, fresh_db)
    with pytest.raises(PsqlError, match=constraint):
        fresh_db.psql(sql)


def test_deployment_limits_and_prices_are_checked(cp_bin, fresh_db):
    migrate(cp_bin, fresh_db)
    pid = fresh_db.psql(provider_sql())[0][0]
    for col, val in [("weight", "-1"), ("rpm", "0"), ("max_concurrency", "0"),
                     ("total_timeout_ms", "0"), ("input_price", "-0.5")]:
        with pytest.raises(PsqlError, match="violates check constraint"):
            fresh_db.psql(f"INSERT INTO deployments (name, provider_id, model, {col})"
                          f" VALUES ('d', {pid}, 'm', {val})")
    row = fresh_db.psql(f"INSERT INTO deployments (name, provider_id, model, input_price)"
                        f" VALUES ('d', {pid}, 'm', 2.5) RETURNING weight, enabled, rpm,"
                        f" max_concurrency, input_price, output_price")
    assert row == [["1", "t", "", "", "2.500000", "0.000000"]]


# ---- rotate-key ----------------------------------------------------------------------------------

def encrypt(cp_bin, plaintext, env):
    r = cp(cp_bin, "debug-encrypt", env=env, stdin=plaintext + "\n")
    assert r.returncode == 0, r.stderr
    key_id, hexval = r.stdout.strip().split("\t")
    return key_id, hexval


def decrypt(cp_bin, key_id, hexval, env):
    r = cp(cp_bin, "debug-decrypt", key_id, hexval, env=env)
    return r.returncode, r.stdout.rstrip("\n"), r.stderr


def test_rotate_key_re_encrypts_credentials_under_the_current_key(cp_bin, fresh_db, tmp_path):
    migrate(cp_bin, fresh_db)
    old_env = {"SWITCHYARD_MASTER_KEY": f"old:{KEY_OLD}"}
    keys = tmp_path / "keys"
    keys.write_text(f"# current first\nnew:{KEY_NEW}\nold:{KEY_OLD}\n")
    keys.chmod(0o600)
    ring_env = {"SWITCHYARD_MASTER_KEY_FILE": str(keys)}

    for name, secret in [("a", "sk-aaaaaaaaaaaaaaaaaaaa"), ("b", "sk-bbbbbbbbbbbbbbbbbbbb")]:
        kid, hexval = encrypt(cp_bin, secret, old_env)
        assert kid == "old"
        fresh_db.psql(provider_sql(name, ", api_key_enc, api_key_key_id",
                                   f", '{hexval}', '{kid}'"))
    # One already under the new key, and one without a credential: both left alone.
    kid, hexval = encrypt(cp_bin, "sk-cccccccccccccccccccc", ring_env)
    assert kid == "new"
    fresh_db.psql(provider_sql("c", ", api_key_enc, api_key_key_id", f", '{hexval}', '{kid}'"))
    fresh_db.psql(provider_sql("d"))
    before = {r[0]: r[1] for r in fresh_db.psql("SELECT name, api_key_enc FROM providers")}
    version_before = config_version(fresh_db)

    r = cp(cp_bin, "rotate-key", "--database-url", fresh_db.url, env=ring_env)
    assert r.returncode == 0, r.stderr
    assert 're-encrypted 2 provider credentials with master key "new"' in r.stdout

    rows = fresh_db.psql("SELECT name, api_key_key_id, api_key_enc, version FROM providers"
                         " ORDER BY name")
    assert [(n, k) for n, k, _, _ in rows] == [("a", "new"), ("b", "new"), ("c", "new"), ("d", "")]
    assert rows[2][2] == before["c"] and rows[2][3] == "1"
    for name, kid, enc, _ in rows[:2]:
        assert enc != before[name]
        rc, plain, err = decrypt(cp_bin, kid, enc, {"SWITCHYARD_MASTER_KEY": f"new:{KEY_NEW}"})
        assert rc == 0, err
        assert plain == f"sk-{name * 20}"
    # One statement-level bump per UPDATE, and an audit entry.
    assert config_version(fresh_db) > version_before
    assert fresh_db.psql("SELECT actor, action, detail->>'count' FROM audit_log") == \
        [["cli", "rotate-key", "2"]]

    r = cp(cp_bin, "rotate-key", "--database-url", fresh_db.url, env=ring_env)
    assert r.returncode == 0 and "re-encrypted 0 provider credentials" in r.stdout


def test_rotate_key_without_the_old_key_changes_nothing(cp_bin, fresh_db):
    migrate(cp_bin, fresh_db)
    kid, hexval = encrypt(cp_bin, "sk-first-aaaaaaaaaaaaaa", {"SWITCHYARD_MASTER_KEY": KEY_OLD})
    fresh_db.psql(provider_sql("a", ", api_key_enc, api_key_key_id", f", '{hexval}', '{kid}'"))
    before = fresh_db.psql("SELECT api_key_key_id, api_key_enc, version FROM providers")

    r = cp(cp_bin, "rotate-key", "--database-url", fresh_db.url,
           env={"SWITCHYARD_MASTER_KEY": KEY_NEW})
    assert r.returncode == 1
    assert 'provider "a"' in r.stderr and f'"{kid}"' in r.stderr
    assert "nothing was changed" in r.stderr
    assert fresh_db.psql("SELECT api_key_key_id, api_key_enc, version FROM providers") == before


def test_rotate_key_needs_a_master_key(cp_bin, fresh_db):
    migrate(cp_bin, fresh_db)
    r = cp(cp_bin, "rotate-key", "--database-url", fresh_db.url)
    assert r.returncode == 1 and "SWITCHYARD_MASTER_KEY" in r.stderr


def test_a_tampered_credential_is_reported_not_decrypted(cp_bin):
    env = {"SWITCHYARD_MASTER_KEY": f"k:{KEY_OLD}"}
    kid, hexval = encrypt(cp_bin, "sk-secret-value-123456", env)
    flipped = hexval[:-1] + ("0" if hexval[-1] != "0" else "1")
    rc, out, err = decrypt(cp_bin, kid, flipped, env)
    assert rc == 1 and "tampered" in err and "sk-secret" not in out + err
    rc, out, err = decrypt(cp_bin, "other", hexval, env)
    assert rc == 1 and "not in the key ring" in err
