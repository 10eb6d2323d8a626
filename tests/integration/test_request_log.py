# SPDX-License-Identifier: Apache-2.0
"""The optional request log, end to end: a real PostgreSQL, the control plane with or without
--request-log, a data plane of 2 workers sharing one --shm segment, the mock provider.

Off by default (no rows); `metadata` writes one row per request with who, what and how it
ended, never a body; `bodies` adds the prompt and the answer for keys that opted in with
log_bodies, streams included, each cut at 64 KiB with a flag; a full ring drops records and
counts them."""

import json
import os
import shutil
import tempfile
import time

import pytest

import harness
from pg import fresh_db, pg_server  # noqa: F401  (fixtures)

MASTER_KEY = "6f" * 32
ADMIN_TOKEN = "reqlog-admin-token-0123456789"
CHAT = "/v1/chat/completions"
PRICE = {"dep-a": (1000, 2000), "dep-b": (500, 1000)}
BODY_MAX = 64 * 1024


class ControlPlane(harness.HTTPClientMixin):
    def __init__(self, build_dir, workdir, db_url, sock, shm, args, name="cp"):
        exe = os.path.join(build_dir, "controlplane", "switchyard-controlplane")
        port_file = os.path.join(workdir, f"{name}.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        argv = [exe, "serve", "--database-url", db_url, "--admin-listen", "127.0.0.1:0",
                "--admin-token", ADMIN_TOKEN, "--socket", sock, "--node-id", "node-r",
                "--port-file", port_file, "--shm", shm, "--usage-flush-ms", "300",
                "--log-level", "debug"] + args
        self.process = harness.ManagedProcess(name, argv, os.path.join(workdir, f"{name}.log"),
                                              env={"SWITCHYARD_MASTER_KEY": MASTER_KEY})
        self.port = harness.wait_port_file(self.process, port_file, 20)

    def admin(self, method, path, body=None):
        return self.json(method, "/admin/v1" + path, body,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def ok(self, method, path, body=None, want=200):
        status, _, obj = self.admin(method, path, body)
        assert status == want, (method, path, status, obj)
        return obj


def wait_for(what, pred, timeout=15, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Stack:
    """A control plane started with <cp_args>, a data plane with <dp_args>, two models (alpha on
    dep-a, flaky on a failing deployment falling back to beta on dep-b) and two keys: k1 (agent
    bot-a, user ana) and k2 (bot-b, bob)."""

    def __init__(self, build_dir, workdir, db_url, mock, cp_args=(), dp_args=()):
        self.build_dir, self.workdir, self.db_url = build_dir, workdir, db_url
        self.cp_args = list(cp_args)
        self.sockdir = tempfile.mkdtemp(prefix="sy-rl-")
        self.sock = os.path.join(self.sockdir, "cp.sock")
        self.shm = f"/dev/shm/sy-reqlog-test-{os.getpid()}-{id(self)}"
        self.dp = None
        self.cp = self.start_cp()
        mock.reset()
        mock.config({"by_model": {"a-up": {"echo": True}, "b-up": {"content": "from b"},
                                  "bad-up": {"status": 500}}})
        self.cp.ok("POST", "/providers", {
            "name": "mock", "kind": "custom", "base_url": mock.url, "format": "openai",
            "auth_style": "bearer", "api_key": "sk-mock"}, 201)
        for name, up in (("dep-a", "a-up"), ("dep-b", "b-up"), ("dep-bad", "bad-up")):
            inp, out = PRICE.get(name, (0, 0))
            self.cp.ok("POST", "/deployments", {"name": name, "provider": "mock", "model": up,
                                                "price": {"input": inp, "output": out}}, 201)
        self.cp.ok("POST", "/models", {"name": "alpha", "targets": [{"deployment": "dep-a"}]},
                   201)
        self.cp.ok("POST", "/models", {"name": "beta", "targets": [{"deployment": "dep-b"}]},
                   201)
        self.cp.ok("POST", "/models", {"name": "flaky", "targets": [{"deployment": "dep-bad"}],
                                       "fallbacks": ["beta"],
                                       "policy": {"retry": {"attempts": 1}}}, 201)
        k1 = self.cp.ok("POST", "/keys", {"name": "k-one", "agent": "bot-a", "user": "ana"}, 201)
        k2 = self.cp.ok("POST", "/keys", {"name": "k-two", "agent": "bot-b", "user": "bob"}, 201)
        self.k1, self.k1_id = k1["key"], k1["id"]
        self.k2, self.k2_id = k2["key"], k2["id"]
        assert k1["log_bodies"] is False  # off unless the key opts in
        exe = os.path.join(build_dir, "dataplane", "switchyard-dataplane")
        port_file = os.path.join(workdir, "dp.port")
        argv = [exe, "--listen", "127.0.0.1:0", "--workers", "2", "--port-file", port_file,
                "--control-socket", self.sock, "--node-id", "node-r", "--shm", self.shm] + \
            list(dp_args)
        self.dp = harness.ManagedProcess("dp", argv, os.path.join(workdir, "dp.log"))
        self.dp_port = harness.wait_port_file(self.dp, port_file, 10)
        self.wait_workers()

    def start_cp(self, name="cp"):
        return ControlPlane(self.build_dir, self.workdir, self.db_url, self.sock, self.shm,
                            self.cp_args, name=name)

    def wait_workers(self):
        def ready():
            st = self.cp.ok("GET", "/status")
            ws = st["publisher"]["workers"]
            return len(ws) == 2 and all(w["version"] == st["config_version"] for w in ws)
        wait_for("both workers serving the config", ready)

    def chat(self, model, key, content="hello", stream=False):
        """(status, request id, the body sent, the response body bytes)."""
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
        if stream:
            body["stream"] = True
        raw = json.dumps(body).encode()
        status, headers, data = harness.http_request(
            "127.0.0.1", self.dp_port, "POST", CHAT, raw,
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, 30, None)
        return status, headers.get("x-request-id"), raw, data

    def rows(self, query=""):
        return self.cp.ok("GET", "/requests?limit=500" + query)["data"]

    def close(self):
        for p in (self.dp, self.cp.process):
            if p:
                p.kill()
        shutil.rmtree(self.sockdir, ignore_errors=True)
        if os.path.exists(self.shm):
            os.unlink(self.shm)


@pytest.fixture
def make_stack(build_dir, tmp_path, fresh_db, mock):
    made = []

    def make(cp_args=(), dp_args=()):
        st = Stack(build_dir, str(tmp_path), fresh_db.url, mock, cp_args, dp_args)
        made.append(st)
        return st
    yield make
    for st in made:
        st.close()


def wait_rows(st, n, query="", timeout=15):
    return wait_for(f"{n} request-log rows{query}",
                    lambda: (lambda r: r if len(r) >= n else None)(st.rows(query)), timeout)


# ---- tests -------------------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_the_request_log_is_off_by_default(make_stack, fresh_db):
    st = make_stack()
    ids = []
    for _ in range(3):
        status, rid, _, _ = st.chat("alpha", st.k1)
        assert status == 200
        ids.append(rid)
    # the requests were seen by the control plane (their decision-log events are stored)...
    for rid in ids:
        wait_for(f"events of {rid}", lambda: st.cp.ok("GET", f"/events?request_id={rid}")["data"])
    time.sleep(0.5)
    # ...but nothing went to the request log
    assert fresh_db.psql("SELECT count(*) FROM request_log") == [["0"]]
    assert st.rows() == []
    status = st.cp.ok("GET", "/requests/status")["log"]
    assert status["mode"] == "off" and status["stored"] == 0 and status["dropped"] == 0


@pytest.mark.timeout(90)
def test_metadata_mode_writes_one_row_per_request_and_no_body(make_stack):
    st = make_stack(cp_args=["--request-log", "metadata"])
    # an opted-in key still gets no body in metadata mode
    st.cp.ok("PATCH", f"/keys/{st.k1_id}", {"log_bodies": True})
    st.wait_workers()
    status, rid1, _, data = st.chat("alpha", st.k1, "hello there")
    assert status == 200
    usage = json.loads(data)["usage"]
    status, rid2, _, _ = st.chat("alpha", st.k2, stream=True)
    assert status == 200
    status, rid3, _, _ = st.chat("flaky", st.k2)
    assert status == 200
    rows = {r["request_id"]: r for r in wait_rows(st, 3)}
    assert set(rows) == {rid1, rid2, rid3}, rows

    r1 = rows[rid1]
    assert (r1["key"], r1["key_id"], r1["agent"], r1["user"]) == ("k-one", st.k1_id, "bot-a",
                                                                  "ana")
    assert (r1["model"], r1["deployment"], r1["status"], r1["outcome"]) == \
        ("alpha", "dep-a", 200, "success")
    assert r1["prompt_tokens"] == usage["prompt_tokens"]
    assert r1["completion_tokens"] == usage["completion_tokens"]
    want_cost = (usage["prompt_tokens"] * 1000 + usage["completion_tokens"] * 2000) / 1e6
    assert abs(r1["cost"] - want_cost) < 1e-9
    assert r1["stream"] is False and r1["attempts"] == 1 and r1["node"] == "node-r"
    assert r1["latency_ms"] > 0 and r1["ttfb_ms"] > 0 and r1["at"].endswith("Z")
    assert r1["bodies_logged"] is False

    r2 = rows[rid2]
    assert r2["stream"] is True and r2["key"] == "k-two" and r2["outcome"] == "success"
    r3 = rows[rid3]  # failed on dep-bad, answered by dep-b after the fallback
    assert (r3["model"], r3["deployment"], r3["attempts"]) == ("flaky", "dep-b", 2)

    one = st.cp.ok("GET", f"/requests/{r1['id']}")
    assert one["request"] is None and one["response"] is None
    assert {k: one[k] for k in r1} == r1

    # filters and pages
    assert [r["request_id"] for r in st.rows(f"&request_id={rid2}")] == [rid2]
    assert {r["request_id"] for r in st.rows("&key=k-two")} == {rid2, rid3}
    assert [r["request_id"] for r in st.rows("&model=flaky&deployment=dep-b")] == [rid3]
    assert st.rows("&outcome=timeout") == []
    assert st.rows("&since=2999-01-01T00:00:00Z") == []
    page = st.cp.ok("GET", "/requests?limit=1")
    assert len(page["data"]) == 1 and page["has_more"] and page["next_cursor"]
    nxt = st.cp.ok("GET", f"/requests?limit=1&after={page['next_cursor']}")
    assert nxt["data"][0]["id"] > page["data"][0]["id"]


@pytest.mark.timeout(90)
def test_bodies_only_for_keys_that_opt_in_with_streams_and_truncation(make_stack):
    st = make_stack(cp_args=["--request-log", "bodies"])
    doc = st.cp.ok("PATCH", f"/keys/{st.k1_id}", {"log_bodies": True})
    assert doc["log_bodies"] is True and doc["name"] == "k-one"
    assert st.cp.ok("GET", f"/keys/{st.k2_id}")["log_bodies"] is False
    st.wait_workers()

    status, rid1, sent1, got1 = st.chat("alpha", st.k1, "tell me something")
    assert status == 200
    status, rid2, _, got2 = st.chat("alpha", st.k1, "stream it", stream=True)
    assert status == 200
    status, rid3, _, _ = st.chat("alpha", st.k2, "not mine to log")
    assert status == 200
    big = "x" * (100 * 1024)  # echoed back: both sides over 64 KiB
    status, rid4, sent4, got4 = st.chat("alpha", st.k1, big)
    assert status == 200
    rows = {r["request_id"]: r for r in wait_rows(st, 4)}
    assert all("request" not in r and "response" not in r for r in rows.values()), \
        "bodies are never listed"

    one = st.cp.ok("GET", f"/requests/{rows[rid1]['id']}")
    assert one["request"] == {"body": sent1.decode(), "bytes": len(sent1), "truncated": False}
    assert one["response"] == {"body": got1.decode(), "bytes": len(got1), "truncated": False}
    assert "tell me something" in json.loads(one["response"]["body"])["choices"][0]["message"][
        "content"]

    stream = st.cp.ok("GET", f"/requests/{rows[rid2]['id']}")
    assert stream["stream"] is True and stream["response"]["truncated"] is False
    assert stream["response"]["body"] == got2.decode()  # the events as the client got them
    assert "data: [DONE]" in stream["response"]["body"]

    other = st.cp.ok("GET", f"/requests/{rows[rid3]['id']}")
    assert other["bodies_logged"] is False
    assert other["request"] is None and other["response"] is None

    cut = st.cp.ok("GET", f"/requests/{rows[rid4]['id']}")
    assert cut["request"]["truncated"] is True and cut["request"]["bytes"] == len(sent4)
    assert len(cut["request"]["body"]) == BODY_MAX
    assert cut["request"]["body"] == sent4[:BODY_MAX].decode()
    assert cut["response"]["truncated"] is True and cut["response"]["bytes"] == len(got4)
    assert len(cut["response"]["body"]) == BODY_MAX


@pytest.mark.timeout(90)
def test_a_full_ring_drops_records_and_counts_them(make_stack, fresh_db):
    st = make_stack(cp_args=["--request-log", "metadata"],
                    dp_args=["--shm-request-log-cells", "8"])
    # no consumer: the data plane keeps serving on its last table, the ring fills
    st.cp.process.signal(9)
    st.cp.process.wait(10)
    sent = [st.chat("alpha", st.k2)[1] for _ in range(20)]
    st.cp = st.start_cp("cp2")
    rows = wait_rows(st, 8)
    time.sleep(0.5)
    rows = st.rows()
    # a metadata record takes one 1 KiB cell: 8 fit, the other 12 were dropped (which 8: the
    # first pushed, and two workers may push in another order than the client sent)
    got = [r["request_id"] for r in rows]
    assert len(got) == 8 and len(set(got)) == 8 and set(got) <= set(sent), got
    status = st.cp.ok("GET", "/requests/status")["log"]
    assert status["dropped"] == 12 and status["ring_cells"] == 8 and status["stored"] == 8
    metrics = st.cp.request("GET", "/metrics")[2].decode()
    assert "switchyard_request_log_dropped_total 12" in metrics
    # and it works again once there is room
    _, rid, _, _ = st.chat("alpha", st.k2)
    wait_rows(st, 1, f"&request_id={rid}")


@pytest.mark.timeout(60)
def test_request_log_validation_errors_name_the_parameter(make_stack):
    st = make_stack()
    for query, param in (("outcome=nope", "outcome"), ("since=yesterday", "since"),
                         ("key=", "key"), ("limit=0", "limit")):
        status, _, obj = st.cp.admin("GET", "/requests?" + query)
        assert status == 400 and obj["error"]["param"] == param, (query, obj)
    status, _, obj = st.cp.admin("GET", "/requests/abc")
    assert status == 404, obj
    status, _, obj = st.cp.admin("PATCH", f"/keys/{st.k1_id}", {"log_bodies": "yes"})
    assert status == 400 and obj["error"]["param"] == "log_bodies", obj
