# SPDX-License-Identifier: Apache-2.0
"""The audit log of the admin API against a real PostgreSQL: every write (POST, PUT, PATCH,
DELETE), accepted or refused, leaves a row saying who (token role and fingerprint, the claimed
actor), what (method, path, resource, item, status, version after, request id, the body with
its secrets redacted) and when; reads leave none; GET /admin/v1/audit pages and filters them
and answers both tokens; and a wrong token of the right length is refused."""

import hashlib
import json
import os
import secrets
import signal
import time

import pytest

import harness
from pg import PG_BIN, pg_server  # noqa: F401  (fixture)
from test_admin_api import ControlPlane

SECRET = "sk-live-" + secrets.token_hex(16)  # must never be stored in the audit log


def fingerprint(token):
    return hashlib.sha256(token.encode()).hexdigest()[:8]


@pytest.fixture(scope="module")
def db(pg_server):
    name = f"audit_{os.getpid()}"
    pg_server.psql(f'CREATE DATABASE "{name}"')
    yield name
    if pg_server.running():
        pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def cp(build_dir, pg_server, db, tmp_path_factory):
    c = ControlPlane(build_dir, str(tmp_path_factory.mktemp("cp")), pg_server.url_for(db))
    yield c
    c.stop()


@pytest.fixture
def sql(pg_server, db):
    return lambda text: pg_server.psql(text, db=db)


def audit(cp, query="", token="admin"):
    """Every audit row matching <query>, following the pages."""
    rows, after = [], None
    while True:
        q = query + (f"&after={after}" if after else "")
        status, _, page = cp.call("GET", "audit?limit=500" + q, token=token)
        assert status == 200, page
        rows += page["data"]
        if not page["has_more"]:
            return rows
        after = page["next_cursor"]


def last_row(cp):
    return audit(cp)[-1]


def test_each_write_kind_leaves_a_row_with_who_what_and_when(cp):
    before = len(audit(cp))
    t0 = time.time()
    body = {"name": "aud-p", "kind": "openai", "api_key": SECRET}
    obj, h = cp.ok("POST", "providers", body, 201,
                   headers={"X-Switchyard-Actor": "alice@example.com"})
    version = int(h["etag"].strip('"'))
    row = last_row(cp)
    assert row["method"] == "POST" and row["action"] == "create"
    assert row["path"] == "/admin/v1/providers"
    assert row["resource"] == "providers" and row["item"] is None
    assert row["status"] == 201
    assert row["version"] == version
    assert row["role"] == "admin"
    assert row["actor"] == "admin:" + fingerprint(cp.admin)
    assert row["actor_claimed"] == "alice@example.com"
    assert row["remote"].startswith("127.0.0.1:")
    assert row["request_id"] == h["x-request-id"]
    assert row["summary"] == {"name": "aud-p", "kind": "openai", "api_key": "[REDACTED]"}
    at = time.mktime(time.strptime(row["at"], "%Y-%m-%dT%H:%M:%S.%fZ")) - time.timezone
    assert t0 - 5 <= at <= time.time() + 5

    cp.ok("PATCH", "providers/aud-p", {"api_key": SECRET + "2"})
    row = last_row(cp)
    assert (row["method"], row["action"], row["item"], row["status"]) == \
        ("PATCH", "update", "aud-p", 200)
    assert row["summary"] == {"api_key": "[REDACTED]"}
    assert row["version"] > version

    cp.ok("PUT", "providers/aud-p", {"name": "aud-p", "kind": "openai", "api_key": SECRET})
    assert (last_row(cp)["action"], last_row(cp)["status"]) == ("replace", 200)

    cp.ok("DELETE", "providers/aud-p", want=204)
    row = last_row(cp)
    assert (row["method"], row["action"], row["item"], row["status"]) == \
        ("DELETE", "delete", "aud-p", 204)
    assert row["summary"] is None
    assert len(audit(cp)) == before + 4


def test_refused_writes_are_recorded_with_their_status(cp):
    before = audit(cp)
    wrong_same_length = "x" * len(cp.admin)
    cases = [
        (dict(token=None), 401, "anonymous", "none"),
        (dict(token=wrong_same_length), 401, "none:" + fingerprint(wrong_same_length), "none"),
        (dict(token="ro"), 403, "read:" + fingerprint(cp.readonly), "read"),
        (dict(), 400, "admin:" + fingerprint(cp.admin), "admin"),
    ]
    for kw, status, actor, role in cases:
        body = {"name": "refused", "kind": "openai", "api_key": SECRET}
        if status == 400:
            body["kind"] = "not-a-kind"
        st, _, obj = cp.call("POST", "providers", body, **kw)
        assert st == status, obj
        row = last_row(cp)
        assert (row["status"], row["actor"], row["role"]) == (status, actor, role), row
        assert row["summary"]["api_key"] == "[REDACTED]"
        assert row["version"] is None
    # other refusals: unknown item, method not allowed, not JSON at all
    assert cp.call("DELETE", "providers/nope")[0] == 404
    assert last_row(cp)["status"] == 404
    assert cp.call("POST", "status", {})[0] == 405
    assert last_row(cp)["status"] == 405
    assert cp.call("POST", "providers", f'{{"api_key": "{SECRET}" oops')[0] == 400
    row = last_row(cp)
    assert row["status"] == 400
    assert row["summary"]["invalid_json"] is True
    assert len(audit(cp)) == len(before) + 7


def test_a_wrong_token_of_the_right_length_is_refused(cp):
    for token in ("x" * len(cp.admin), cp.admin[:-1] + ("0" if cp.admin[-1] != "0" else "1"),
                  "x" * len(cp.readonly)):
        st, _, obj = cp.call("GET", "providers", token=token)
        assert st == 401 and obj["error"]["code"] == "invalid_admin_token"


def test_secrets_are_redacted_at_any_depth_and_never_stored(cp, sql):
    body = {"name": "deep", "kind": "openai", "api_key": SECRET,
            "nested": {"token": SECRET, "list": [{"password": SECRET, "ok": "visible"}],
                       "client_secret": SECRET, "Api_Key": SECRET, "key": SECRET,
                       "secret": SECRET, "description": "kept"}}
    st, _, _ = cp.call("POST", "providers", body)
    assert st == 400  # "nested" is not a provider field: refused, and recorded
    s = last_row(cp)["summary"]
    assert s["api_key"] == "[REDACTED]"
    n = s["nested"]
    assert n["token"] == n["client_secret"] == n["Api_Key"] == n["key"] == n["secret"] == \
        "[REDACTED]"
    assert n["list"] == [{"password": "[REDACTED]", "ok": "visible"}]
    assert n["description"] == "kept"
    # not in any row, whatever the column
    assert sql(f"SELECT count(*) FROM audit_log WHERE audit_log::text LIKE '%{SECRET}%'") == \
        [["0"]]
    status, _, data = cp.request("GET", "/admin/v1/audit?limit=500",
                                 headers={"Authorization": f"Bearer {cp.admin}"})
    assert SECRET.encode() not in data


def test_reads_are_not_recorded(cp):
    n = len(audit(cp))
    cp.ok("GET", "providers")
    cp.call("GET", "providers/none-such")
    cp.request("HEAD", "/admin/v1/providers", headers={"Authorization": f"Bearer {cp.admin}"})
    cp.ok("GET", "audit")
    cp.ok("GET", "status")
    assert len(audit(cp)) == n


def test_the_read_only_token_reads_the_audit_log_but_cannot_write(cp):
    rows = audit(cp, token="ro")
    assert rows and rows == audit(cp)
    one = rows[0]
    status, _, obj = cp.call("GET", f"audit/{one['id']}", token="ro")
    assert status == 200 and obj == one
    assert cp.call("POST", "providers", {"name": "ro-try", "kind": "openai"},
                   token="ro")[0] == 403
    assert cp.call("DELETE", f"audit/{one['id']}")[0] == 405
    assert cp.call("GET", "audit/999999999")[0] == 404
    assert cp.call("GET", "audit/abc")[0] == 404


def test_pages_and_filters(cp):
    for i in range(5):
        cp.ok("POST", "providers", {"name": f"pg-{i}", "kind": "openai", "api_key": SECRET},
              201, headers={"X-Switchyard-Actor": "pager"})
    everything = audit(cp)
    # pages of 2 cover the same rows in the same order
    seen, after = [], None
    while True:
        q = "audit?limit=2" + (f"&after={after}" if after else "")
        page = cp.ok("GET", q)[0]
        assert len(page["data"]) <= 2
        seen += page["data"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        after = page["next_cursor"]
    assert [r["id"] for r in seen] == [r["id"] for r in everything]
    assert [r["id"] for r in everything] == sorted(r["id"] for r in everything)

    mine = audit(cp, "&actor=pager")
    assert len(mine) == 5 and all(r["actor_claimed"] == "pager" for r in mine)
    by_token = audit(cp, "&actor=admin:" + fingerprint(cp.admin))
    assert by_token and all(r["role"] == "admin" for r in by_token)
    assert all(r["resource"] == "providers" for r in audit(cp, "&resource=providers"))
    assert audit(cp, "&resource=deployments") == []
    assert all(r["status"] == 401 for r in audit(cp, "&status=401"))
    assert audit(cp, "&since=2000-01-01T00:00:00Z") == everything
    assert audit(cp, "&until=2000-01-01T00:00:00Z") == []
    assert audit(cp, f"&since={int(time.time()) + 3600}") == []

    for q, param in (("limit=0", "limit"), ("since=yesterday", "since"), ("status=abc", "status"),
                     ("after=x", "after"), ("resource=", "resource")):
        st, _, obj = cp.call("GET", "audit?" + q)
        assert st == 400 and obj["error"]["param"] == param, (q, obj)


# ---- named tokens ---------------------------------------------------------------------------------

class NamedTokensCP(harness.HTTPClientMixin):
    """A control plane whose only tokens come from --admin-tokens-file."""

    def __init__(self, build_dir, workdir, db_url, tokens_file, wait=True):
        exe = os.path.join(build_dir, "controlplane", "switchyard-controlplane")
        port_file = os.path.join(workdir, "named.port")
        argv = [exe, "--database-url", db_url, "--admin-listen", "127.0.0.1:0",
                "--admin-tokens-file", tokens_file, "--port-file", port_file,
                "--socket", os.path.join(workdir, "named.sock")]
        self.process = harness.ManagedProcess("named", argv, os.path.join(workdir, "named.log"),
                                              env={"SWITCHYARD_MASTER_KEY": "5a" * 32})
        if wait:
            self.port = harness.wait_port_file(self.process, port_file, 20)
            harness.wait_until_answers(self, "/healthz", 10, 200)

    def call(self, method, path, token, body=None):
        status, _, data = self.request(method, "/admin/v1/" + path, body,
                                       {"Authorization": f"Bearer {token}"})
        return status, harness.parse_json(status, data)


def test_named_tokens_say_who_and_are_reloaded_on_sighup(build_dir, pg_server, db, tmp_path):
    alice, bob, carol = ("alice-" + secrets.token_hex(12), "bob-" + secrets.token_hex(12),
                         "carol-" + secrets.token_hex(12))
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may change the gateway\nalice:admin:{alice}\n\nbob:read:{bob}\n")
    cp = NamedTokensCP(build_dir, str(tmp_path), pg_server.url_for(db), str(tokens))
    try:
        st, _ = cp.call("POST", "providers", alice,
                        {"name": "by-alice", "kind": "openai", "api_key": SECRET})
        assert st == 201
        st, rows = cp.call("GET", "audit?resource=providers&limit=500", bob)
        assert st == 200
        row = rows["data"][-1]
        assert (row["actor"], row["role"], row["item"], row["status"]) == \
            ("alice", "admin", None, 201)
        assert cp.call("DELETE", "providers/by-alice", bob)[0] == 403
        st, rows = cp.call("GET", "audit?actor=bob", alice)
        assert [(r["actor"], r["role"], r["status"]) for r in rows["data"]] == \
            [("bob", "read", 403)]

        # a broken file on SIGHUP: logged, the tokens in force stay
        tokens.write_text("alice:superuser:" + alice + "\n")
        cp.process.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "the role of \"alice\" must be admin or read" not in cp.process.log():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert cp.call("GET", "providers", alice)[0] == 200

        # alice leaves, carol arrives
        tokens.write_text(f"bob:read:{bob}\ncarol:admin:{carol}\n")
        cp.process.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while cp.call("GET", "providers", carol)[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert cp.call("GET", "providers", alice)[0] == 401
        assert cp.call("DELETE", "providers/by-alice", carol)[0] == 204
        st, rows = cp.call("GET", "audit?actor=carol", bob)
        assert [(r["method"], r["status"]) for r in rows["data"]] == [("DELETE", 204)]
    finally:
        cp.process.kill()


@pytest.mark.parametrize("text,fragment", [
    ("alice:admin:short\n", "must be at least 16 characters"),
    ("alice:root:" + "x" * 20 + "\n", "must be admin or read"),
    ("just-a-token-without-a-name\n", "expected name:role:token"),
    ("bob:read:" + "y" * 20 + "\n", "no admin token"),
    ("a:admin:" + "x" * 20 + "\na:read:" + "y" * 20 + "\n", "named twice"),
])
def test_a_bad_tokens_file_is_fatal_at_start(build_dir, pg_server, db, tmp_path, text, fragment):
    tokens = tmp_path / "tokens"
    tokens.write_text(text)
    cp = NamedTokensCP(build_dir, str(tmp_path), pg_server.url_for(db), str(tokens), wait=False)
    try:
        assert cp.process.wait(15) != 0
        assert fragment in cp.process.log()
    finally:
        cp.process.kill()
