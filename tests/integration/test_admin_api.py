# SPDX-License-Identifier: Apache-2.0
"""The admin REST API of switchyard-controlplane against a real PostgreSQL: providers,
deployments, models, client keys, the catalog and the status, with their validation errors,
ETag/If-Match, pagination, referenced deletes, tokens, the secrecy of credentials and keys, the
config version, and a database outage."""

import hashlib
import json
import os
import secrets
import subprocess
import tempfile
import time

import pytest

import harness
from pg import PG_BIN, PgServer, pg_server  # noqa: F401  (fixture)

MASTER_KEY = "5a" * 32
PROVIDER_SECRET = "sk-live-" + secrets.token_hex(20)  # must never come back out


class ControlPlane(harness.HTTPClientMixin):
    """A running switchyard-controlplane; remembers every response body it got."""

    def __init__(self, build_dir, workdir, db_url, name="controlplane"):
        exe = os.path.join(build_dir, "controlplane", "switchyard-controlplane")
        self.admin = "adm-" + secrets.token_hex(16)
        self.readonly = "ro-" + secrets.token_hex(16)
        port_file = os.path.join(workdir, f"{name}.port")
        argv = [exe, "--database-url", db_url, "--admin-listen", "127.0.0.1:0",
                "--admin-token", self.admin, "--readonly-token", self.readonly,
                "--socket", os.path.join(workdir, f"{name}.sock"), "--port-file", port_file]
        self.process = harness.ManagedProcess(name, argv, os.path.join(workdir, f"{name}.log"),
                                              env={"SWITCHYARD_MASTER_KEY": MASTER_KEY})
        self.proc = self.process.proc
        self.port = harness.wait_port_file(self.process, port_file, 20)
        harness.wait_until_answers(self, "/healthz", 10, 200)
        self.bodies = []

    def call(self, method, path, body=None, token="admin", headers=None):
        """(status, headers, JSON) of <method> /admin/v1/<path> with the admin token ("admin"),
        the read-only one ("ro"), none (None) or a literal token."""
        hdrs = dict(headers or {})
        tok = {"admin": self.admin, "ro": self.readonly}.get(token, token)
        if tok is not None:
            hdrs["Authorization"] = f"Bearer {tok}"
        status, h, data = self.request(method, "/admin/v1/" + path, body, hdrs)
        self.bodies.append(data)
        return status, h, harness.parse_json(status, data)

    def ok(self, method, path, body=None, want=200, **kw):
        status, h, obj = self.call(method, path, body, **kw)
        assert status == want, f"{method} {path}: {status} {obj}"
        return obj, h

    def stop(self):
        self.process.kill()


@pytest.fixture(scope="module")
def db(pg_server):
    name = f"admin_api_{os.getpid()}"
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
    """sql("SELECT ...") -> rows of the module's database."""
    return lambda text: pg_server.psql(text, db=db)


def config_version(sql):
    return int(sql("SELECT version FROM config_state")[0][0])


def expect_error(cp, method, path, body, status, param, *fragments, etype=None, **kw):
    """Assert an error answer: status, error.param, and fragments of error.message."""
    st, _, obj = cp.call(method, path, body, **kw)
    assert st == status, f"{method} {path} {body}: {st} {obj}"
    err = obj["error"]
    assert err["param"] == param, err
    for f in fragments:
        assert f in err["message"], err
    if etype:
        assert err["type"] == etype, err
    elif status == 400:
        assert err["type"] == "invalid_request_error", err
    return err


def provider(cp, name, **fields):
    body = {"name": name, "kind": "openai", "api_key": "sk-test-" + name}
    body.update(fields)
    return cp.ok("POST", "providers", body, 201)[0]


def deployment(cp, name, prov, model="gpt-4o-mini", **fields):
    body = {"name": name, "provider": prov, "model": model}
    body.update(fields)
    return cp.ok("POST", "deployments", body, 201)[0]


# ---- tokens -------------------------------------------------------------------------------------

def test_requests_without_a_valid_token_are_401(cp):
    for token in (None, "wrong", cp.admin + "x"):
        st, _, obj = cp.call("GET", "providers", token=token)
        assert st == 401 and obj["error"]["type"] == "authentication_error"


def test_the_read_only_token_reads_but_gets_403_on_every_write(cp):
    provider(cp, "ro-target")
    assert cp.call("GET", "providers", token="ro")[0] == 200
    assert cp.call("GET", "providers/ro-target", token="ro")[0] == 200
    assert cp.call("GET", "status", token="ro")[0] == 200
    for method, path, body in [("POST", "providers", {"name": "x", "kind": "openai"}),
                               ("PATCH", "providers/ro-target", {"insecure": True}),
                               ("PUT", "providers/ro-target", {"kind": "openai"}),
                               ("DELETE", "providers/ro-target", None),
                               ("POST", "keys", {"name": "k"}),
                               ("POST", "models", {"name": "m", "targets": []})]:
        st, _, obj = cp.call(method, path, body, token="ro")
        assert st == 403 and obj["error"]["type"] == "permission_error", (method, path, obj)
    assert cp.call("GET", "providers/ro-target")[0] == 200


# ---- providers ----------------------------------------------------------------------------------

def test_provider_create_read_list_and_catalog_defaults(cp):
    doc = provider(cp, "p-anthropic", kind="anthropic", api_key="sk-ant-api03-abcdefghijklmnop")
    assert doc["object"] == "provider" and doc["format"] == "anthropic"
    assert doc["base_url"] == "https://api.anthropic.com/v1"
    assert doc["auth_style"] == "header" and doc["auth_name"] == "x-api-key"
    assert doc["api_version"] == "2023-06-01"
    assert doc["api_key_set"] is True and doc["api_key_hint"].endswith("mnop")
    assert "api_key" not in doc
    got, h = cp.ok("GET", "providers/p-anthropic")
    assert got == doc and h["etag"] == '"1"'
    doc = provider(cp, "p-qwen", kind="dashscope")
    assert doc["base_url"] == "https://dashscope.aliyuncs.com/compatible-mode/v1"
    listed = cp.ok("GET", "providers?q=qwen")[0]
    assert [p["name"] for p in listed["data"]] == ["p-qwen"]


@pytest.mark.parametrize("body,param,fragment", [
    ({"name": "Bad Name", "kind": "openai"}, "name", "lowercase letters"),
    ({"name": "", "kind": "openai"}, "name", "must not be empty"),
    ({"kind": "openai"}, "name", "is required"),
    ({"name": 5, "kind": "openai"}, "name", "must be a string"),
    ({"name": "x" * 65, "kind": "openai"}, "name", "at most 64"),
    ({"name": "p", "kind": "openai", "colour": "red"}, "colour", "unknown field"),
    ({"name": "p", "kind": "nosuch"}, "kind", "not in the catalog"),
    ({"name": "p", "kind": "custom"}, "base_url", "is required"),
    ({"name": "p", "kind": "custom", "base_url": "ftp://x"}, "base_url", "base_url"),
    ({"name": "p", "kind": "openai", "format": "soap"}, "format", "must be one of"),
    ({"name": "p", "kind": "openai", "auth_style": "header"}, "auth_name", "needs the name"),
    ({"name": "p", "kind": "openai", "headers": []}, "headers", "must be an object"),
    ({"name": "p", "kind": "openai", "headers": {"Host": "x"}}, "headers.Host", "header name"),
    ({"name": "p", "kind": "openai", "insecure": "yes"}, "insecure", "true or false"),
    ({"name": "p", "kind": "openai", "api_key": 42}, "api_key", "must be a string"),
])
def test_provider_validation_errors_name_the_field(cp, body, param, fragment):
    expect_error(cp, "POST", "providers", body, 400, param, fragment)


def test_provider_name_conflict_is_409(cp):
    provider(cp, "p-dup")
    err = expect_error(cp, "POST", "providers", {"name": "p-dup", "kind": "openai"}, 409, "name",
                       'named "p-dup" already exists', etype="conflict_error")
    assert err["code"] == "already_exists"


def test_provider_if_match_flow(cp):
    doc = provider(cp, "p-etag")
    assert doc["version"] == 1
    st, h, obj = cp.call("PATCH", "providers/p-etag", {"insecure": True},
                         headers={"If-Match": '"1"'})
    assert st == 200 and obj["version"] == 2 and obj["insecure"] is True and h["etag"] == '"2"'
    assert obj["api_key_set"] is True  # a PATCH without api_key keeps it
    expect_error(cp, "PATCH", "providers/p-etag", {"insecure": False}, 412, "version",
                 "changed", headers={"If-Match": '"1"'}, etype="precondition_failed")
    expect_error(cp, "DELETE", "providers/p-etag", None, 412, "version", "changed",
                 headers={"If-Match": '"1"'}, etype="precondition_failed")
    expect_error(cp, "PATCH", "providers/p-etag", {}, 400, None, "If-Match",
                 headers={"If-Match": "soon"})
    assert cp.call("DELETE", "providers/p-etag", headers={"If-Match": '"2"'})[0] == 204
    assert cp.call("GET", "providers/p-etag")[0] == 404


def test_provider_used_by_deployments_cannot_be_deleted(cp):
    provider(cp, "p-used")
    deployment(cp, "d-used-b", "p-used")
    deployment(cp, "d-used-a", "p-used")
    err = expect_error(cp, "DELETE", "providers/p-used", None, 409, None,
                       "d-used-a, d-used-b", etype="conflict_error")
    assert err["code"] == "still_referenced"
    for d in ("d-used-a", "d-used-b"):
        assert cp.call("DELETE", f"deployments/{d}")[0] == 204
    assert cp.call("DELETE", "providers/p-used")[0] == 204


def test_unknown_items_and_methods(cp):
    expect_error(cp, "GET", "providers/nope", None, 404, None, 'provider "nope" not found',
                 etype="not_found_error")
    expect_error(cp, "PATCH", "deployments/nope", {}, 404, None, 'deployment "nope" not found')
    expect_error(cp, "DELETE", "models/nope", None, 404, None, 'model "nope" not found')
    st, h, _ = cp.call("POST", "providers/x", {})
    assert st == 405 and "allow" in h


# ---- the secrecy of provider credentials -------------------------------------------------------

def test_a_provider_credential_never_leaves_in_plaintext(cp, pg_server, db, sql):
    provider(cp, "p-secret", api_key=PROVIDER_SECRET)
    cp.ok("PATCH", "providers/p-secret", {"api_version": "v1"})
    cp.ok("GET", "providers/p-secret")
    cp.ok("GET", "providers")
    cp.ok("PUT", "providers/p-secret", {"kind": "openai", "api_key": PROVIDER_SECRET})
    enc = sql("SELECT encode(api_key_enc, 'hex'), api_key_hint FROM providers"
              " WHERE name = 'p-secret'")[0]
    assert PROVIDER_SECRET.encode().hex() not in enc[0]
    assert enc[1].endswith("…" + PROVIDER_SECRET[-4:]) and len(enc[1]) < 16
    for body in cp.bodies:
        assert PROVIDER_SECRET.encode() not in body
    assert PROVIDER_SECRET not in cp.process.log()
    r = subprocess.run(pg_server._as_pg([os.path.join(PG_BIN, "pg_dump"), "--data-only",
                                         "-h", pg_server.sock, "-U", pg_server.user, db]),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "p-secret" in r.stdout and PROVIDER_SECRET not in r.stdout


# ---- deployments --------------------------------------------------------------------------------

def test_deployment_create_read_patch_merges_nested_objects(cp):
    provider(cp, "p-dep")
    doc = deployment(cp, "d-full", "p-dep", model="gpt-4o", weight=3,
                     limits={"rpm": 600, "tpm": 100000, "max_concurrency": 8},
                     timeouts={"connect_ms": 1000, "first_byte_ms": 5000, "idle_ms": 6000,
                               "total_ms": 60000},
                     price={"input": 2.5, "output": 10}, enabled=False)
    assert doc["object"] == "deployment" and doc["provider"] == "p-dep"
    assert doc["model"] == "gpt-4o" and doc["weight"] == 3 and doc["enabled"] is False
    assert doc["limits"] == {"rpm": 600, "tpm": 100000, "max_concurrency": 8}
    assert doc["timeouts"] == {"connect_ms": 1000, "first_byte_ms": 5000, "idle_ms": 6000,
                               "total_ms": 60000}
    assert doc["price"] == {"input": 2.5, "output": 10}
    assert isinstance(doc["slot"], int) and doc["version"] == 1
    for k in ("id", "created_at", "updated_at"):
        assert k in doc
    assert cp.ok("GET", "deployments/d-full")[0] == doc
    doc2 = cp.ok("PATCH", "deployments/d-full", {"limits": {"rpm": 60}, "enabled": True})[0]
    assert doc2["limits"] == {"rpm": 60, "tpm": 100000, "max_concurrency": 8}
    assert doc2["enabled"] is True and doc2["version"] == 2 and doc2["slot"] == doc["slot"]
    # PUT replaces: what is not given goes back to its default
    doc3 = cp.ok("PUT", "deployments/d-full", {"provider": "p-dep", "model": "gpt-4o"})[0]
    assert doc3["limits"] == {"rpm": None, "tpm": None, "max_concurrency": None}
    assert doc3["weight"] == 1 and doc3["price"] == {"input": 0, "output": 0}
    # A fetched document can be sent back as is
    assert cp.ok("PUT", "deployments/d-full", doc3)[0]["version"] == doc3["version"]
    # rename
    assert cp.ok("PATCH", "deployments/d-full", {"name": "d-full2"})[0]["name"] == "d-full2"
    assert cp.call("GET", "deployments/d-full")[0] == 404
    # the provider's rename shows through
    cp.ok("PATCH", "providers/p-dep", {"name": "p-dep2"})
    assert cp.ok("GET", "deployments/d-full2")[0]["provider"] == "p-dep2"


@pytest.mark.parametrize("patch,param,fragment", [
    ({"provider": "nosuch"}, "provider", 'unknown provider "nosuch"'),
    ({"provider": None}, "provider", "is required"),
    ({"model": None}, "model", "is required"),
    ({"model": ""}, "model", "must not be empty"),
    ({"model": "gpt 4"}, "model", "must not contain spaces"),
    ({"name": "D1"}, "name", "lowercase letters"),
    ({"weight": -1}, "weight", "from 0 to"),
    ({"weight": 1.5}, "weight", "whole number"),
    ({"limits": 5}, "limits", "must be an object"),
    ({"limits": {"rpm": 0}}, "limits.rpm", "from 1 to"),
    ({"limits": {"tpm": "many"}}, "limits.tpm", "whole number"),
    ({"limits": {"max_concurrency": -2}}, "limits.max_concurrency", "from 1 to"),
    ({"limits": {"rph": 5}}, "limits.rph", "unknown field"),
    ({"timeouts": {"connect_ms": 0}}, "timeouts.connect_ms", "from 1 to"),
    ({"timeouts": {"total_ms": 86400001}}, "timeouts.total_ms", "from 1 to"),
    ({"timeouts": {"read_ms": 5}}, "timeouts.read_ms", "unknown field"),
    ({"price": {"input": -1}}, "price.input", "number from 0"),
    ({"price": {"output": "free"}}, "price.output", "number from 0"),
    ({"price": {"currency": "EUR"}}, "price.currency", "unknown field"),
    ({"enabled": "yes"}, "enabled", "true or false"),
    ({"region": "eu"}, "region", "unknown field"),
])
def test_deployment_validation_errors_name_the_field(cp, patch, param, fragment):
    if cp.call("GET", "providers/p-val")[0] == 404:
        provider(cp, "p-val")
    body = {"name": "d-val", "provider": "p-val", "model": "m"}
    body.update(patch)
    expect_error(cp, "POST", "deployments", body, 400, param, fragment)
    # the same through PATCH of an existing one
    if cp.call("GET", "deployments/d-val-ok")[0] == 404:
        deployment(cp, "d-val-ok", "p-val")
    if "name" not in patch:
        expect_error(cp, "PATCH", "deployments/d-val-ok", patch, 400, param, fragment)
    assert cp.call("GET", "deployments/d-val")[0] == 404


def test_deployment_conflicts_and_if_match(cp):
    provider(cp, "p-dc")
    deployment(cp, "d-dc1", "p-dc")
    deployment(cp, "d-dc2", "p-dc")
    expect_error(cp, "POST", "deployments", {"name": "d-dc1", "provider": "p-dc", "model": "m"},
                 409, "name", 'deployment named "d-dc1" already exists')
    expect_error(cp, "PATCH", "deployments/d-dc2", {"name": "d-dc1"}, 409, "name",
                 '"d-dc1" already exists')
    expect_error(cp, "PATCH", "deployments/d-dc2", {"weight": 2}, 412, "version", "changed",
                 headers={"If-Match": '"7"'})
    st, h, obj = cp.call("PATCH", "deployments/d-dc2", {"weight": 2}, headers={"If-Match": '"1"'})
    assert st == 200 and h["etag"] == '"2"'
    expect_error(cp, "DELETE", "deployments/d-dc2", None, 412, "version", "since version 1",
                 headers={"If-Match": '"1"'})
    assert cp.call("DELETE", "deployments/d-dc2", headers={"If-Match": '"2"'})[0] == 204


def test_a_deployment_targeted_by_models_cannot_be_deleted(cp):
    provider(cp, "p-ref")
    deployment(cp, "d-ref", "p-ref")
    deployment(cp, "d-ref-other", "p-ref")
    for m in ("m-ref-b", "m-ref-a"):
        cp.ok("POST", "models", {"name": m, "targets": [{"deployment": "d-ref"}]}, 201)
    err = expect_error(cp, "DELETE", "deployments/d-ref", None, 409, None,
                       'deployment "d-ref"', "m-ref-a, m-ref-b", etype="conflict_error")
    assert err["code"] == "still_referenced"
    cp.ok("DELETE", "models/m-ref-a", want=204)
    cp.ok("PATCH", "models/m-ref-b", {"targets": [{"deployment": "d-ref-other"}]})
    cp.ok("DELETE", "deployments/d-ref", want=204)


# ---- models -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_deps(cp):
    provider(cp, "p-mod")
    for d in ("d-mod-a", "d-mod-b", "d-mod-c"):
        deployment(cp, d, "p-mod")
    return ["d-mod-a", "d-mod-b", "d-mod-c"]


def test_model_create_read_update_targets(cp, model_deps, sql):
    doc = cp.ok("POST", "models", {
        "name": "gpt-4o-team", "description": "the team's model",
        "targets": [{"deployment": "d-mod-b", "weight": 3}, {"deployment": "d-mod-a"}]}, 201)[0]
    assert doc["object"] == "model" and doc["name"] == "gpt-4o-team"
    assert doc["targets"] == [{"deployment": "d-mod-b", "weight": 3},
                              {"deployment": "d-mod-a", "weight": 1}]
    assert doc["policy"] == {} and doc["fallbacks"] == [] and doc["version"] == 1
    got, h = cp.ok("GET", "models/gpt-4o-team")
    assert got == doc and h["etag"] == '"1"'
    rows = sql("SELECT d.name, t.weight, t.position FROM model_targets t JOIN models m"
               " ON m.id = t.model_id JOIN deployments d ON d.id = t.deployment_id"
               " WHERE m.name = 'gpt-4o-team' ORDER BY t.position")
    assert rows == [["d-mod-b", "3", "0"], ["d-mod-a", "1", "1"]]
    # changing only the targets is a new version of the model
    doc2, h = cp.ok("PATCH", "models/gpt-4o-team",
                    {"targets": [{"deployment": "d-mod-a"}, {"deployment": "d-mod-c",
                                                             "weight": 0}]})
    assert doc2["version"] == 2 and h["etag"] == '"2"'
    assert doc2["description"] == "the team's model"
    assert [t["deployment"] for t in doc2["targets"]] == ["d-mod-a", "d-mod-c"]
    # the same targets again: nothing changes
    assert cp.ok("PATCH", "models/gpt-4o-team", {"targets": doc2["targets"]})[0]["version"] == 2
    doc3 = cp.ok("PATCH", "models/gpt-4o-team", {"policy": {"strategy": "weighted"}})[0]
    assert doc3["policy"] == {"strategy": "weighted"} and doc3["version"] == 3
    # a name with a slash is reachable percent-encoded
    cp.ok("POST", "models", {"name": "acme/chat", "targets": [{"deployment": "d-mod-a"}]}, 201)
    assert cp.ok("GET", "models/acme%2Fchat")[0]["name"] == "acme/chat"
    assert [m["name"] for m in cp.ok("GET", "models?q=ACME")[0]["data"]] == ["acme/chat"]


@pytest.mark.parametrize("patch,param,fragment", [
    ({"targets": [{"deployment": "d-mod-a"}, {"deployment": "x"}]},
     "targets[1].deployment", 'targets[1].deployment: unknown deployment "x"'),
    ({"targets": [{"deployment": "d-mod-a"}, {"deployment": "d-mod-a"}]},
     "targets[1].deployment", "listed twice"),
    ({"targets": []}, "targets", "array of 1 to"),
    ({"targets": None}, "targets", "array of 1 to"),
    ({"targets": {"deployment": "d-mod-a"}}, "targets", "array of 1 to"),
    ({"targets": ["d-mod-a"]}, "targets[0]", "must be an object"),
    ({"targets": [{"deployment": "d-mod-a", "weight": -1}]}, "targets[0].weight", "from 0 to"),
    ({"targets": [{"deployment": "d-mod-a", "prio": 1}]}, "targets[0].prio", "unknown field"),
    ({"targets": [{"weight": 1}]}, "targets[0].deployment", "is required"),
    ({"targets": [{"deployment": "D"}]}, "targets[0].deployment", "lowercase"),
    ({"name": "has space"}, "name", "must not contain spaces"),
    ({"name": ""}, "name", "must not be empty"),
    ({"name": "x" * 129}, "name", "at most 128"),
    ({"description": 7}, "description", "must be a string"),
    ({"policy": []}, "policy", "must be an object"),
    ({"fallbacks": "m"}, "fallbacks", "must be an array"),
    ({"fallbacks": ["nosuch-model"]}, "fallbacks[0]", 'unknown model "nosuch-model"'),
    ({"fallbacks": ["m-val"]}, "fallbacks[0]", "its own fallback"),
    ({"fallbacks": [3]}, "fallbacks[0]", "must be a string"),
    ({"owner": "me"}, "owner", "unknown field"),
])
def test_model_validation_errors_name_the_field(cp, model_deps, sql, patch, param, fragment):
    before = config_version(sql)
    body = {"name": "m-val", "targets": [{"deployment": "d-mod-a"}]}
    body.update(patch)
    expect_error(cp, "POST", "models", body, 400, param, fragment)
    assert cp.call("GET", "models/m-val")[0] == 404
    if cp.call("GET", "models/m-val-ok")[0] == 404:
        cp.ok("POST", "models", {"name": "m-val-ok", "targets": [{"deployment": "d-mod-a"}]}, 201)
        before = config_version(sql)
    if "name" not in patch and "fallbacks" not in patch:
        expect_error(cp, "PATCH", "models/m-val-ok", patch, 400, param, fragment)
        assert cp.ok("GET", "models/m-val-ok")[0]["version"] == 1
    assert config_version(sql) == before


def test_model_write_is_atomic_and_refused_with_the_right_status(cp, model_deps, sql):
    cp.ok("POST", "models", {"name": "m-atom", "targets": [{"deployment": "d-mod-a"}]}, 201)
    cp.ok("POST", "models", {"name": "m-atom2", "targets": [{"deployment": "d-mod-a"}]}, 201)
    expect_error(cp, "POST", "models", {"name": "m-atom", "targets": [{"deployment": "d-mod-b"}]},
                 409, "name", 'a model named "m-atom" already exists', etype="conflict_error")
    expect_error(cp, "PATCH", "models/m-atom2", {"name": "m-atom"}, 409, "name",
                 '"m-atom" already exists')
    expect_error(cp, "PATCH", "models/m-atom", {"description": "x"}, 412, "version",
                 "changed by someone else", headers={"If-Match": '"9"'},
                 etype="precondition_failed")
    # a failed update leaves the model and its targets as they were
    expect_error(cp, "PUT", "models/m-atom",
                 {"description": "new", "targets": [{"deployment": "d-mod-b"},
                                                    {"deployment": "ghost"}]},
                 400, "targets[1].deployment", "ghost")
    doc = cp.ok("GET", "models/m-atom")[0]
    assert doc["targets"] == [{"deployment": "d-mod-a", "weight": 1}] and doc["version"] == 1
    assert doc["description"] is None
    assert sql("SELECT count(*) FROM model_targets t JOIN models m ON m.id = t.model_id"
               " WHERE m.name = 'm-atom'") == [["1"]]
    doc = cp.ok("PUT", "models/m-atom", {"targets": [{"deployment": "d-mod-b"}]},
                headers={"If-Match": '"1"'})[0]
    assert doc["version"] == 2 and doc["targets"][0]["deployment"] == "d-mod-b"
    cp.ok("DELETE", "models/m-atom2", want=204)
    assert cp.call("DELETE", "models/m-atom", headers={"If-Match": '"1"'})[0] == 412
    cp.ok("DELETE", "models/m-atom", headers={"If-Match": '"2"'}, want=204)
    assert sql("SELECT count(*) FROM model_targets t WHERE NOT EXISTS"
               " (SELECT 1 FROM models m WHERE m.id = t.model_id)") == [["0"]]


def test_a_model_used_as_a_fallback_cannot_be_deleted_and_renames_follow(cp, model_deps):
    for m in ("m-fb-main", "m-fb-spare"):
        cp.ok("POST", "models", {"name": m, "targets": [{"deployment": "d-mod-c"}]}, 201)
    cp.ok("PATCH", "models/m-fb-main", {"fallbacks": ["m-fb-spare"]})
    err = expect_error(cp, "DELETE", "models/m-fb-spare", None, 409, None, "m-fb-main",
                       etype="conflict_error")
    assert err["code"] == "still_referenced"
    cp.ok("PATCH", "models/m-fb-spare", {"name": "m-fb-spare2"})
    assert cp.ok("GET", "models/m-fb-main")[0]["fallbacks"] == ["m-fb-spare2"]
    cp.ok("PATCH", "models/m-fb-main", {"fallbacks": []})
    cp.ok("DELETE", "models/m-fb-spare2", want=204)


# ---- keys ---------------------------------------------------------------------------------------

def test_a_key_is_shown_once_and_stored_as_its_hash(cp, sql):
    doc, h = cp.ok("POST", "keys", {"name": "ci agent", "agent": "builder", "user": "ana",
                                    "tier": "gold", "models": ["gpt-4o", "claude"],
                                    "limits": {"rpm": 100},
                                    "expires_at": "2031-02-03T04:05:06Z"}, want=201)
    key = doc["key"]
    assert key.startswith("sk-sy-") and len(key) == 46 and key[6:].isalnum()
    assert doc["prefix"] == key[:10] and doc["object"] == "api_key"
    assert doc["models"] == ["gpt-4o", "claude"] and doc["limits"] == {"rpm": 100, "tpm": None}
    assert doc["agent"] == "builder" and doc["user"] == "ana" and doc["tier"] == "gold"
    assert doc["expires_at"].startswith("2031-02-03T04:05:06") and doc["revoked"] is False
    assert h["etag"] == '"1"' and isinstance(doc["slot"], int)
    kid = doc["id"]
    stored = sql(f"SELECT encode(key_hash, 'hex'), key_prefix FROM api_keys WHERE id = {kid}")
    assert stored == [[hashlib.sha256(key.encode()).hexdigest(), key[:10]]]
    got = cp.ok("GET", f"keys/{kid}")[0]
    assert "key" not in got and "key_hash" not in got
    assert got == {k: v for k, v in doc.items() if k != "key"}
    listed = cp.ok("GET", "keys?q=builder")[0]["data"]
    assert [k["id"] for k in listed] == [kid]
    for body in cp.bodies[:-3] + cp.bodies[-2:]:  # every answer but the 201
        assert key.encode() not in body
    assert key not in cp.process.log()
    # the hash is not the key: nothing in the database holds the key itself
    assert sql(f"SELECT count(*) FROM api_keys WHERE key_prefix = '{key}'") == [["0"]]


def test_a_key_can_be_revoked_and_updated_with_if_match(cp):
    doc = cp.ok("POST", "keys", {"name": "to revoke"}, want=201)[0]
    kid = doc["id"]
    assert doc["models"] is None and doc["expires_at"] is None
    expect_error(cp, "PATCH", f"keys/{kid}", {"revoked": True}, 412, "version", "changed",
                 headers={"If-Match": '"5"'})
    doc2, h = cp.ok("PATCH", f"keys/{kid}", {"revoked": True}, headers={"If-Match": '"1"'})
    assert doc2["revoked"] is True and doc2["version"] == 2 and h["etag"] == '"2"'
    assert doc2["prefix"] == doc["prefix"] and "key" not in doc2
    assert cp.ok("GET", f"keys/{kid}")[0]["revoked"] is True
    doc3 = cp.ok("PATCH", f"keys/{kid}", {"limits": {"tpm": 5000}, "models": []})[0]
    assert doc3["limits"] == {"rpm": None, "tpm": 5000} and doc3["models"] == []
    doc4 = cp.ok("PUT", f"keys/{kid}", {"name": "renamed"})[0]
    assert doc4["revoked"] is False and doc4["name"] == "renamed" and doc4["models"] is None
    assert cp.call("DELETE", f"keys/{kid}", headers={"If-Match": '"1"'})[0] == 412
    cp.ok("DELETE", f"keys/{kid}", want=204)
    assert cp.call("GET", f"keys/{kid}")[0] == 404


@pytest.mark.parametrize("path", ["keys/abc", "keys/0", "keys/-1", "keys/1e3", "keys/99999999"])
def test_keys_are_addressed_by_numeric_id(cp, path):
    for method, body in (("GET", None), ("PATCH", {"revoked": True}), ("DELETE", None)):
        st, _, obj = cp.call(method, path, body)
        assert st == 404 and obj["error"]["type"] == "not_found_error", (method, path, obj)


@pytest.mark.parametrize("patch,param,fragment", [
    ({"name": None}, "name", "is required"),
    ({"name": ""}, "name", "must not be empty"),
    ({"name": "x" * 129}, "name", "at most 128"),
    ({"name": "a\nb"}, "name", "control characters"),
    ({"agent": 1}, "agent", "must be a string"),
    ({"user": []}, "user", "must be a string"),
    ({"tier": "t" * 65}, "tier", "at most 64"),
    ({"models": "gpt-4o"}, "models", "array"),
    ({"models": ["gpt-4o", "has space"]}, "models[1]", "public model name"),
    ({"models": ["gpt-4o", "gpt-4o"]}, "models[1]", "listed twice"),
    ({"models": [""]}, "models[0]", "public model name"),
    ({"limits": {"rpm": 0}}, "limits.rpm", "from 1 to"),
    ({"limits": {"tpm": 2 ** 31}}, "limits.tpm", "from 1 to"),
    ({"limits": {"burst": 1}}, "limits.burst", "unknown field"),
    ({"limits": []}, "limits", "must be an object"),
    ({"expires_at": "tomorrow"}, "expires_at", "RFC 3339"),
    ({"expires_at": "2030-02-30T00:00:00Z"}, "expires_at", "RFC 3339"),
    ({"expires_at": "2030-01-01 00:00"}, "expires_at", "RFC 3339"),
    ({"expires_at": 1700000000}, "expires_at", "must be a string"),
    ({"revoked": "no"}, "revoked", "true or false"),
    ({"key": "sk-sy-mine"}, "key", "generated by the control plane"),
    ({"scopes": []}, "scopes", "unknown field"),
    ({"model_limits": []}, "model_limits", "must be an object"),
    ({"model_limits": {"has space": {"rpm": 1}}}, "model_limits", "public model name"),
    ({"model_limits": {"gpt-4o": 5}}, "model_limits.gpt-4o", "must be an object"),
    ({"model_limits": {"gpt-4o": {}}}, "model_limits.gpt-4o", "give rpm, tpm or both"),
    ({"model_limits": {"gpt-4o": {"rpm": 0}}}, "model_limits.gpt-4o.rpm", "from 1 to"),
    ({"model_limits": {"qwen2.5": {"tpm": "many"}}}, "model_limits.qwen2.5.tpm", "from 1 to"),
    ({"model_limits": {"gpt-4o": {"burst": 3}}}, "model_limits.gpt-4o.burst", "unknown field"),
])
def test_key_validation_errors_name_the_field(cp, sql, patch, param, fragment):
    before = config_version(sql)
    body = {"name": "k-val"}
    body.update(patch)
    expect_error(cp, "POST", "keys", body, 400, param, fragment)
    assert config_version(sql) == before


def test_key_limits_per_model_merge_model_by_model_and_reach_the_table(cp, sql):
    doc = cp.ok("POST", "keys", {"name": "per-model", "model_limits": {
        "gpt-4o": {"rpm": 60}, "qwen2.5-72b": {"rpm": 10, "tpm": 50000}}}, want=201)[0]
    assert doc["model_limits"] == {"gpt-4o": {"rpm": 60}, "qwen2.5-72b": {"rpm": 10, "tpm": 50000}}
    path = f"keys/{doc['id']}"
    # PATCH merges per model: one changed, one removed with null, one added
    doc = cp.ok("PATCH", path, {"model_limits": {"gpt-4o": {"tpm": 9000}, "qwen2.5-72b": None,
                                                 "claude": {"rpm": 5}}})[0]
    assert doc["model_limits"] == {"gpt-4o": {"tpm": 9000}, "claude": {"rpm": 5}}
    assert cp.ok("GET", path)[0]["model_limits"] == doc["model_limits"]
    row = sql(f"SELECT model_limits::text FROM api_keys WHERE id = {doc['id']}")
    assert json.loads(row[0][0]) == doc["model_limits"]
    # PUT without it clears them
    doc = cp.ok("PUT", path, {"name": "per-model"})[0]
    assert doc["model_limits"] == {}
    cp.ok("DELETE", path, want=204)


def test_key_expiry_accepts_rfc3339_offsets(cp):
    doc = cp.ok("POST", "keys", {"name": "tz", "expires_at": "2030-06-01T12:00:00.5+02:00"},
                want=201)[0]
    assert doc["expires_at"].startswith("2030-06-01T10:00:00.5")
    cp.ok("DELETE", f"keys/{doc['id']}", want=204)


# ---- pagination ---------------------------------------------------------------------------------

@pytest.mark.parametrize("resource", ["keys", "deployments", "models"])
def test_lists_page_by_id(cp, model_deps, resource):
    ids = []
    for i in range(7):
        name = f"pg-{resource[:3]}-{i}"
        body = {"keys": {"name": name},
                "deployments": {"name": name, "provider": "p-mod", "model": "m"},
                "models": {"name": name, "targets": [{"deployment": "d-mod-a"}]}}[resource]
        ids.append(cp.ok("POST", resource, body, 201)[0]["id"])
    seen, after, pages = [], None, 0
    while True:
        path = f"{resource}?q=pg-{resource[:3]}&limit=3" + (f"&after={after}" if after else "")
        page = cp.ok("GET", path, token="ro")[0]
        pages += 1
        assert page["object"] == "list"
        seen += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None and len(page["data"]) == 1
            break
        assert len(page["data"]) == 3 and page["next_cursor"] == str(page["data"][-1]["id"])
        after = page["next_cursor"]
    assert pages == 3 and seen == ids
    all_items = cp.ok("GET", resource + "?limit=500")[0]
    assert [d["id"] for d in all_items["data"]] == sorted(d["id"] for d in all_items["data"])
    expect_error(cp, "GET", resource + "?limit=0", None, 400, "limit", "1 to 500")
    expect_error(cp, "GET", resource + "?limit=501", None, 400, "limit", "1 to 500")
    expect_error(cp, "GET", resource + "?after=x", None, 400, "after", "cursor")


# ---- catalog ------------------------------------------------------------------------------------

def test_the_catalog_lists_the_built_in_providers(cp):
    data = cp.ok("GET", "catalog", token="ro")[0]["data"]
    ids = [e["id"] for e in data]
    assert ids == ["openai", "anthropic", "dashscope", "minimax", "zhipu", "deepseek",
                   "moonshot", "azure-openai", "gemini", "ollama", "vllm"]
    for e in data:
        assert e["object"] == "catalog_entry" and e["base_url"].startswith("http")
        assert e["format"] in ("openai", "anthropic", "azure")
        assert e["price_currency"] in ("USD", "CNY") and e["prices_as_of"]
        assert 2 <= len(e["models"]) <= 6
        for m in e["models"]:
            assert m["input_price"] >= 0 and m["output_price"] >= 0 and m["context_window"] > 0
    by_id = {e["id"]: e for e in data}
    assert by_id["dashscope"]["base_url"] == "https://dashscope.aliyuncs.com/compatible-mode/v1"
    assert by_id["zhipu"]["base_url"] == "https://open.bigmodel.cn/api/paas/v4"
    assert by_id["gemini"]["base_url"] == \
        "https://generativelanguage.googleapis.com/v1beta/openai"
    assert by_id["ollama"]["base_url"] == "http://localhost:11434/v1"
    assert by_id["vllm"]["base_url"] == "http://localhost:8000/v1"
    assert by_id["ollama"]["auth_style"] == by_id["vllm"]["auth_style"] == "none"
    mini = [m for m in by_id["openai"]["models"] if m["id"] == "gpt-4o-mini"][0]
    assert mini == {"id": "gpt-4o-mini", "input_price": 0.15, "output_price": 0.6,
                    "context_window": 128000}


def test_catalog_entry_search_and_read_only(cp):
    az, h = cp.ok("GET", "catalog/azure-openai")
    assert az["format"] == "azure" and az["auth_style"] == "header"
    assert az["auth_name"] == "api-key" and az["api_version"]
    assert "<resource>" in az["base_url"] and "<resource>" in az["notes"]
    assert [e["id"] for e in cp.ok("GET", "catalog?q=QWEN3-coder")[0]["data"]] == ["dashscope"]
    assert [e["id"] for e in cp.ok("GET", "catalog?q=bailian")[0]["data"]] == ["dashscope"]
    assert [e["id"] for e in cp.ok("GET", "catalog?q=qwen")[0]["data"]] == \
        ["dashscope", "ollama", "vllm"]
    assert [e["id"] for e in cp.ok("GET", "catalog?q=claude-sonnet")[0]["data"]] == ["anthropic"]
    assert [e["id"] for e in cp.ok("GET", "catalog?q=kimi")[0]["data"]] == ["moonshot"]
    assert cp.ok("GET", "catalog?q=nothing-like-this")[0]["data"] == []
    expect_error(cp, "GET", "catalog/nosuch", None, 404, None, '"nosuch" not found')
    for method, path in (("POST", "catalog"), ("PUT", "catalog/openai"),
                         ("PATCH", "catalog/openai"), ("DELETE", "catalog/openai")):
        st, _, obj = cp.call(method, path, {})
        assert st == 405 and obj["error"]["code"] == "method_not_allowed"


# ---- status -------------------------------------------------------------------------------------

def test_status_shows_node_config_version_database_and_publisher(cp, sql):
    st = cp.ok("GET", "status", token="ro")[0]
    assert st["object"] == "status" and st["database"] == "up"
    assert st["config_version"] == config_version(sql)
    assert isinstance(st["node"], str) and st["node"]
    assert st["started_at"].endswith("Z") and isinstance(st["publisher"], dict)
    assert cp.call("GET", "status/x")[0] == 404
    assert cp.call("POST", "status", {})[0] == 405


# ---- the config version ---------------------------------------------------------------------------

def test_config_version_moves_by_one_per_successful_write_and_never_on_failure(cp, model_deps,
                                                                              sql):
    def step(method, path, body, want, headers=None):
        before = config_version(sql)
        st, _, obj = cp.call(method, path, body, headers=headers)
        assert st == want, (method, path, obj)
        delta = config_version(sql) - before
        assert delta == (1 if st < 300 else 0), (method, path, st, delta)
        return obj

    step("POST", "providers", {"name": "p-cv", "kind": "openai", "api_key": "sk-x"}, 201)
    step("POST", "providers", {"name": "p-cv", "kind": "openai"}, 409)
    step("PATCH", "providers/p-cv", {"insecure": True}, 412, {"If-Match": '"9"'})
    step("PATCH", "providers/p-cv", {"insecure": True}, 200)
    step("POST", "deployments", {"name": "d-cv", "provider": "p-cv", "model": "m"}, 201)
    step("POST", "deployments", {"name": "d-cv2", "provider": "nosuch", "model": "m"}, 400)
    step("PATCH", "deployments/d-cv", {"provider": "nosuch"}, 400)
    step("PATCH", "deployments/d-cv", {"weight": 5}, 412, {"If-Match": '"3"'})
    step("POST", "models", {"name": "m-cv", "targets": [{"deployment": "d-cv"},
                                                        {"deployment": "d-mod-a"}]}, 201)
    step("POST", "models", {"name": "m-cv2", "targets": [{"deployment": "ghost"}]}, 400)
    step("PATCH", "models/m-cv", {"targets": [{"deployment": "d-cv"}]}, 200)
    step("DELETE", "providers/p-cv", None, 409)
    step("DELETE", "deployments/d-cv", None, 409)
    key = step("POST", "keys", {"name": "cv"}, 201)
    step("PATCH", f"keys/{key['id']}", {"revoked": True}, 200)
    step("DELETE", f"keys/{key['id']}", None, 412, {"If-Match": '"1"'})
    step("DELETE", f"keys/{key['id']}", None, 204)
    step("DELETE", "models/m-cv", None, 204)
    step("DELETE", "deployments/d-cv", None, 412, {"If-Match": '"9"'})
    step("DELETE", "deployments/d-cv", None, 204)
    step("DELETE", "providers/p-cv", None, 204)
    step("DELETE", "providers/p-cv", None, 404)


# ---- a database outage (its own PostgreSQL cluster) ----------------------------------------------

@pytest.mark.timeout(90)
def test_writes_answer_503_while_the_database_is_down_and_work_again_after(build_dir, pg_server,
                                                                          tmp_path):
    srv = PgServer(tempfile.mkdtemp(prefix="sy-pg-"))
    c = None
    try:
        srv.start()
        srv.psql('CREATE DATABASE "outage"')
        c = ControlPlane(build_dir, str(tmp_path), srv.url_for("outage"), name="cp-outage")
        c.ok("POST", "providers", {"name": "before", "kind": "openai"}, want=201)
        srv.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if c.json("GET", "/healthz")[2]["database"] == "down":
                break
            time.sleep(0.05)
        assert c.json("GET", "/healthz")[2] == {"status": "ok", "database": "down"}
        st, _, obj = c.call("POST", "providers", {"name": "during", "kind": "openai"})
        assert st == 503, obj
        assert obj["error"]["code"] == "database_unavailable"
        assert "database is unavailable" in obj["error"]["message"]
        assert "nothing was changed" in obj["error"]["message"]
        assert c.call("PATCH", "providers/before", {"insecure": True})[0] == 503
        assert c.call("GET", "providers")[0] == 503
        status = c.ok("GET", "status")[0]
        assert status["database"] == "down" and status["config_version"] is None

        srv.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if c.json("GET", "/healthz")[2]["database"] == "up":
                break
            time.sleep(0.1)
        assert c.json("GET", "/healthz")[2]["database"] == "up"
        c.ok("POST", "providers", {"name": "after", "kind": "openai"}, want=201)
        names = [p["name"] for p in c.ok("GET", "providers")[0]["data"]]
        assert names == ["before", "after"]
        status = c.ok("GET", "status")[0]
        assert status["database"] == "up" and status["config_version"] == 2
        assert c.process.alive()
    finally:
        if c:
            c.stop()
        srv.destroy()
