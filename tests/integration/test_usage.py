# SPDX-License-Identifier: Apache-2.0
"""Usage and cost in PostgreSQL, and the decision log, end to end: a real PostgreSQL, the
control plane and a data plane of 2 workers sharing one --shm segment, the mock provider.

Requests go through two models (alpha -> dep-a, beta -> dep-b) with two keys (agents and users),
and a third model, flaky, whose deployment answers 500 and which falls back to beta. Then
GET /admin/v1/usage must equal, per group_by, exactly what was sent; GET /admin/v1/events for a
request id must tell its story; a control-plane restart (clean, then SIGKILL) and a PostgreSQL
outage (its own cluster) must lose nothing and count nothing twice."""

import os
import shutil
import tempfile
import time

import pytest

import harness
from pg import PgServer, fresh_db, pg_server  # noqa: F401  (fixtures)

MASTER_KEY = "5e" * 32
ADMIN_TOKEN = "usage-admin-token-0123456789"
CHAT = "/v1/chat/completions"
FLUSH_MS = 300

# What the mock answers for each deployment's upstream model, and the deployments' prices
# (per million tokens: tokens x price = cost in millionths).
USAGE = {"a-up": (10, 5), "b-up": (20, 7)}
PRICE = {"dep-a": (1000, 2000), "dep-b": (500, 1000)}


class ControlPlane(harness.HTTPClientMixin):
    def __init__(self, build_dir, workdir, db_url, sock, shm, name="cp", flush_ms=FLUSH_MS):
        exe = os.path.join(build_dir, "controlplane", "switchyard-controlplane")
        port_file = os.path.join(workdir, f"{name}.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        argv = [exe, "serve", "--database-url", db_url, "--admin-listen", "127.0.0.1:0",
                "--admin-token", ADMIN_TOKEN, "--socket", sock, "--node-id", "node-u",
                "--port-file", port_file, "--shm", shm, "--usage-flush-ms", str(flush_ms),
                "--log-level", "debug"]
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

    def stop(self, sig=15):
        self.process.signal(sig)
        try:
            self.process.wait(15)
        finally:
            self.process.kill()


class DataPlane(harness.HTTPClientMixin):
    def __init__(self, build_dir, workdir, sock, shm, name="dp"):
        exe = os.path.join(build_dir, "dataplane", "switchyard-dataplane")
        port_file = os.path.join(workdir, f"{name}.port")
        argv = [exe, "--listen", "127.0.0.1:0", "--workers", "2", "--port-file", port_file,
                "--control-socket", sock, "--node-id", "node-u", "--shm", shm]
        self.process = harness.ManagedProcess(name, argv, os.path.join(workdir, f"{name}.log"))
        self.port = harness.wait_port_file(self.process, port_file, 10)
        harness.wait_until_answers(self, "/healthz", 10, 200)

    def chat(self, model, key):
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
        status, headers, obj = self.json("POST", CHAT, body,
                                         headers={"Authorization": f"Bearer {key}"})
        return status, headers.get("x-request-id"), obj


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
    """PostgreSQL database <db_url>, a control plane, a data plane, the config and two keys."""

    def __init__(self, build_dir, workdir, db_url, mock, flush_ms=FLUSH_MS):
        self.build_dir, self.workdir, self.db_url, self.mock = build_dir, workdir, db_url, mock
        self.flush_ms = flush_ms
        self.sockdir = tempfile.mkdtemp(prefix="sy-use-")
        self.sock = os.path.join(self.sockdir, "cp.sock")
        self.shm = f"/dev/shm/sy-usage-test-{os.getpid()}-{id(self)}"
        self.cp = self.start_cp()
        mock.reset()
        mock.config({"by_model": {
            "a-up": {"usage": {"prompt_tokens": 10, "completion_tokens": 5}},
            "b-up": {"usage": {"prompt_tokens": 20, "completion_tokens": 7}},
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
        self.k1 = self.cp.ok("POST", "/keys", {"name": "k-one", "agent": "bot-a",
                                               "user": "ana"}, 201)["key"]
        self.k2 = self.cp.ok("POST", "/keys", {"name": "k-two", "agent": "bot-b",
                                               "user": "bob"}, 201)["key"]
        self.dp = DataPlane(build_dir, workdir, self.sock, self.shm)
        # Wait without requests (every request counts): both workers on the last version.
        self.wait_workers()
        self.sent = []  # (model, key name) of every request sent
        self.send("alpha", self.k1, 1)
        self.send("flaky", self.k1, 1)

    def wait_workers(self):
        def ready():
            st = self.cp.ok("GET", "/status")
            pub = st["publisher"]
            ws = pub["workers"]
            return len(ws) == 2 and all(w["version"] == st["config_version"] for w in ws)
        wait_for("both workers serving the config", ready)

    def start_cp(self, name="cp"):
        return ControlPlane(self.build_dir, self.workdir, self.db_url, self.sock, self.shm,
                            name=name, flush_ms=self.flush_ms)

    def send(self, model, key, n):
        keyname = "k-one" if key == self.k1 else "k-two"
        ids = []
        for _ in range(n):
            status, rid, body = self.dp.chat(model, key)
            assert status == 200, body
            ids.append(rid)
            self.sent.append((model, keyname))
        return ids

    def close(self):
        for p in (self.dp, self.cp):
            p.process.kill()
        shutil.rmtree(self.sockdir, ignore_errors=True)
        if os.path.exists(self.shm):
            os.unlink(self.shm)


# ---- what was sent, as the API should report it ------------------------------------------------

AGENT = {"k-one": "bot-a", "k-two": "bot-b"}
USER = {"k-one": "ana", "k-two": "bob"}


def expected(sent, group_by):
    """{group: {calls, successes, prompt_tokens, completion_tokens, cost_micros}}."""
    out = {}

    def add(group, calls, ok, pt, ct, cost):
        e = out.setdefault(group, {"calls": 0, "successes": 0, "prompt_tokens": 0,
                                   "completion_tokens": 0, "cost_micros": 0})
        e["calls"] += calls
        e["successes"] += ok
        e["prompt_tokens"] += pt
        e["completion_tokens"] += ct
        e["cost_micros"] += cost

    for model, key in sent:
        dep = {"alpha": "dep-a", "beta": "dep-b", "flaky": "dep-b"}[model]
        pt, ct = USAGE["a-up" if dep == "dep-a" else "b-up"]
        cost = pt * PRICE[dep][0] + ct * PRICE[dep][1]
        if group_by == "model":
            add(model, 1, 1, pt, ct, cost)
        elif group_by == "deployment":
            if model == "flaky":  # the failed attempt first
                add("dep-bad", 1, 0, 0, 0, 0)
            add(dep, 1, 1, pt, ct, cost)
        else:
            group = {"key": key, "agent": AGENT[key], "user": USER[key]}[group_by]
            add(group, 1, 1, pt, ct, cost)
    return out


def usage(cp, group_by):
    """The totals per group over everything so far, from GET /admin/v1/usage."""
    obj = cp.ok("GET", f"/usage?group_by={group_by}&interval=day&from=2020-01-01T00:00:00Z")
    out = {}
    for row in obj["data"]:
        e = out.setdefault(row["group"], {"calls": 0, "successes": 0, "prompt_tokens": 0,
                                          "completion_tokens": 0, "cost_micros": 0})
        for k in ("calls", "successes", "prompt_tokens", "completion_tokens"):
            e[k] += row[k]
        e["cost_micros"] += round(row["cost"] * 1e6)
    return out


# ---- per combination: deployment x model x key ------------------------------------------------

DEP_OF = {"alpha": "dep-a", "beta": "dep-b", "flaky": "dep-b"}  # the deployment that answered
COMBO_FIELD = {"model": 0, "deployment": 1, "key": 2,
               "agent": None, "user": None}


def combo_of(model, key):
    return {"model": model, "deployment": DEP_OF[model], "key": key, "agent": AGENT[key],
            "user": USER[key]}


def expected_combos(sent, group_by, **filters):
    """What /usage?group_by=<group_by>&<filters> must say: requests whose combination matches
    every filter, grouped; a deployment counts the requests it answered."""
    out = {}
    for model, key in sent:
        c = combo_of(model, key)
        if any(c[f] != v for f, v in filters.items()):
            continue
        dep = c["deployment"]
        pt, ct = USAGE["a-up" if dep == "dep-a" else "b-up"]
        e = out.setdefault(c[group_by], {"calls": 0, "successes": 0, "prompt_tokens": 0,
                                         "completion_tokens": 0, "cost_micros": 0})
        e["calls"] += 1
        e["successes"] += 1
        e["prompt_tokens"] += pt
        e["completion_tokens"] += ct
        e["cost_micros"] += pt * PRICE[dep][0] + ct * PRICE[dep][1]
    return out


def usage_filtered(cp, group_by, **filters):
    q = "".join(f"&{k}={v}" for k, v in filters.items())
    obj = cp.ok("GET", f"/usage?group_by={group_by}&interval=day&from=2020-01-01T00:00:00Z{q}")
    assert obj["filters"] == filters
    out = {}
    for row in obj["data"]:
        assert row["retries"] is None and row["fallbacks"] is None, row
        e = out.setdefault(row["group"], {"calls": 0, "successes": 0, "prompt_tokens": 0,
                                          "completion_tokens": 0, "cost_micros": 0})
        for k in ("calls", "successes", "prompt_tokens", "completion_tokens"):
            e[k] += row[k]
        e["cost_micros"] += round(row["cost"] * 1e6)
    return out


# Every combination of the test's traffic, and cross-cuts of it: one filter, two filters.
COMBO_QUERIES = [
    ("user", {"model": "alpha"}),
    ("model", {"user": "ana"}),
    ("deployment", {"key": "k-two"}),
    ("key", {"deployment": "dep-b"}),
    ("agent", {"model": "flaky", "deployment": "dep-b"}),
    ("model", {"agent": "bot-a", "deployment": "dep-a"}),
    ("user", {"model": "beta", "deployment": "dep-b", "key": "k-one"}),
]


def combos_exact(stack, cp):
    for group_by, filters in COMBO_QUERIES:
        if usage_filtered(cp, group_by, **filters) != \
                expected_combos(stack.sent, group_by, **filters):
            return False
    return True


def wait_usage_exact(stack, cp, timeout=20):
    for group_by in ("model", "deployment", "key", "agent", "user"):
        want = expected(stack.sent, group_by)
        wait_for(f"usage by {group_by} = {want}", lambda: usage(cp, group_by) == want, timeout)
    wait_for("usage per combination exact", lambda: combos_exact(stack, cp), timeout)


def stays_exact(stack, cp, seconds):
    """A few more flushes change nothing: nothing counted twice."""
    time.sleep(seconds)
    for group_by in ("model", "deployment", "key"):
        assert usage(cp, group_by) == expected(stack.sent, group_by), group_by
    for group_by, filters in COMBO_QUERIES:
        assert usage_filtered(cp, group_by, **filters) == \
            expected_combos(stack.sent, group_by, **filters), (group_by, filters)


# ---- tests -------------------------------------------------------------------------------------------

@pytest.fixture
def stack(build_dir, tmp_path, fresh_db, mock):
    st = Stack(build_dir, str(tmp_path), fresh_db.url, mock)
    yield st
    st.close()


@pytest.mark.timeout(120)
def test_usage_totals_match_what_was_sent_and_survive_control_plane_restarts(stack, fresh_db):
    st = stack
    st.send("alpha", st.k1, 5)
    st.send("beta", st.k2, 4)
    st.send("alpha", st.k2, 3)
    st.send("flaky", st.k1, 1)
    wait_usage_exact(st, st.cp)

    # the shape of a row: rates, latency from the histograms, cost
    rows = st.cp.ok("GET", "/usage?group_by=model&interval=minute")["data"]
    alpha = [r for r in rows if r["group"] == "alpha"]
    assert alpha and all(r["success_rate"] == 1.0 for r in alpha)
    assert all(r["avg_latency_ms"] is not None and r["p95_latency_ms"] >= r["avg_latency_ms"] / 4
               for r in alpha)
    assert all(r["start"].endswith(":00.000Z") for r in rows)
    keyrows = st.cp.ok("GET", "/usage?group_by=user")["data"]
    assert {r["group"] for r in keyrows} == {"ana", "bob"}
    assert all(r["p95_latency_ms"] is None for r in keyrows), "no histogram per key"
    dep_bad = [r for r in st.cp.ok("GET", "/usage?group_by=deployment")["data"]
               if r["group"] == "dep-bad"]
    assert dep_bad and sum(r["errors"] for r in dep_bad) == 2
    flaky = [r for r in rows if r["group"] == "flaky"]
    assert sum(r["fallbacks"] for r in flaky) == 2

    # a clean stop flushes what the last periodic flush has not: the rows are in PostgreSQL
    # while no control plane runs
    st.send("beta", st.k2, 2)
    st.cp.stop(15)
    rows = fresh_db.psql("SELECT name, sum(requests) FROM usage_minute WHERE kind = 'model'"
                         " GROUP BY name ORDER BY name")
    want = expected(st.sent, "model")
    assert rows == [[m, str(want[m]["calls"])] for m in sorted(want)]
    # requests served while it is away are counted once the next one starts
    st.send("beta", st.k1, 3)
    st.send("flaky", st.k2, 1)
    st.cp = st.start_cp("cp2")
    wait_usage_exact(st, st.cp)
    stays_exact(st, st.cp, 4 * FLUSH_MS / 1000)

    # SIGKILL: no last flush, but the watermark in PostgreSQL says what is already counted
    st.send("alpha", st.k1, 2)
    st.cp.stop(9)
    st.send("alpha", st.k2, 2)
    st.cp = st.start_cp("cp3")
    wait_usage_exact(st, st.cp)
    stays_exact(st, st.cp, 4 * FLUSH_MS / 1000)


@pytest.mark.timeout(120)
def test_usage_per_combination_is_exact_for_two_keys_two_models_two_deployments(stack, fresh_db):
    st = stack
    # every combination of 2 keys x 3 models (over 2 answering deployments), unequal counts
    st.send("alpha", st.k1, 3)
    st.send("alpha", st.k2, 2)
    st.send("beta", st.k1, 1)
    st.send("beta", st.k2, 4)
    st.send("flaky", st.k2, 2)
    wait_usage_exact(st, st.cp)

    # the rows: one per combination (and minute), with the key's agent and user
    rows = fresh_db.psql("SELECT deployment, model, key, agent, user_name, sum(requests),"
                         " sum(successes), sum(prompt_tokens) FROM usage_combo_minute"
                         " GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3")
    want = {}
    for model, key in st.sent:
        c = combo_of(model, key)
        k = (c["deployment"], model, key, c["agent"], c["user"])
        want[k] = want.get(k, 0) + 1
    assert rows == [[*k, str(n), str(n), str(n * USAGE["a-up" if k[0] == "dep-a" else "b-up"][0])]
                    for k, n in sorted(want.items())]

    # the cost of model X for user Y on deployment Z, per minute, with latency per combination
    obj = st.cp.ok("GET", "/usage?group_by=user&model=alpha&deployment=dep-a&interval=minute")
    assert {r["group"] for r in obj["data"]} == {"ana", "bob"}
    assert all(r["avg_latency_ms"] is not None and r["p95_latency_ms"] is not None
               and r["success_rate"] == 1.0 for r in obj["data"])
    # a filter nothing matches: no rows, not an error
    assert st.cp.ok("GET", "/usage?model=nope")["data"] == []
    # without a filter the object rollups answer as before: a deployment counts attempts
    dep_bad = expected(st.sent, "deployment")["dep-bad"]
    assert usage(st.cp, "deployment")["dep-bad"] == dep_bad
    assert "dep-bad" not in usage_filtered(st.cp, "deployment", model="flaky")

    # the gauge of cells in use, and no overflow
    metrics = st.cp.request("GET", "/metrics")[2].decode()
    assert "switchyard_usage_combination_overflow_total 0" in metrics
    assert "switchyard_usage_combinations 6" in metrics, metrics
    stays_exact(st, st.cp, 3 * FLUSH_MS / 1000)


@pytest.mark.timeout(120)
def test_a_reused_slot_does_not_take_the_old_objects_combination_counts(build_dir, tmp_path,
                                                                      fresh_db, mock):
    # No flush between the two owners of the slots: only the last one, at stop.
    st = Stack(build_dir, str(tmp_path), fresh_db.url, mock, flush_ms=3600000)
    try:
        st.cp.ok("POST", "/deployments", {"name": "dep-old", "provider": "mock",
                                          "model": "a-up"}, 201)
        old = st.cp.ok("POST", "/models", {"name": "short-lived",
                                           "targets": [{"deployment": "dep-old"}]}, 201)
        st.wait_workers()
        st.send("short-lived", st.k1, 2)
        st.cp.ok("DELETE", f"/models/{old['name']}", want=204)
        st.cp.ok("DELETE", "/deployments/dep-old", want=204)
        st.cp.ok("POST", "/deployments", {"name": "dep-new", "provider": "mock",
                                          "model": "b-up"}, 201)
        new = st.cp.ok("POST", "/models", {"name": "short-lived",
                                           "targets": [{"deployment": "dep-new"}]}, 201)
        assert new["slot"] == old["slot"], "the model's slot is reused"
        st.wait_workers()
        st.send("short-lived", st.k1, 3)
        st.cp.stop(15)  # the last flush
        rows = fresh_db.psql("SELECT deployment, model, key, sum(requests) FROM"
                             " usage_combo_minute WHERE model = 'short-lived'"
                             " GROUP BY 1, 2, 3 ORDER BY 1")
        assert rows == [["dep-new", "short-lived", "k-one", "3"],
                        ["dep-old", "short-lived", "k-one", "2"]], rows
    finally:
        st.close()


@pytest.mark.timeout(60)
def test_the_events_of_a_request_tell_its_story(stack):
    st = stack
    [rid] = st.send("flaky", st.k2, 1)
    assert rid

    def story():
        obj = st.cp.ok("GET", f"/events?request_id={rid}")
        return obj["data"] if len(obj["data"]) >= 3 else None

    events = wait_for("three events for the request", story, 10)
    assert [e["kind"] for e in events] == ["attempt", "fallback", "attempt"], events
    first, fb, second = events
    assert first["deployment"] == "dep-bad" and first["outcome"] == "upstream_5xx"
    assert first["status"] == 500 and first["model"] == "flaky" and first["attempt"] == 1
    assert "flaky -> beta" in fb["text"]
    assert second["deployment"] == "dep-b" and second["outcome"] == "success"
    assert second["status"] == 200
    assert all(e["request_id"] == rid and e["node"] == "node-u" for e in events)
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert all(e["at"].endswith("Z") for e in events)

    # filters, pages and one event by id
    attempts = st.cp.ok("GET", "/events?kind=attempt&deployment=dep-bad")["data"]
    assert attempts and all(e["kind"] == "attempt" and e["deployment"] == "dep-bad"
                            for e in attempts)
    page = st.cp.ok("GET", "/events?limit=1")
    assert len(page["data"]) == 1 and page["has_more"] and page["next_cursor"]
    nxt = st.cp.ok("GET", f"/events?limit=1&after={page['next_cursor']}")
    assert nxt["data"][0]["id"] > page["data"][0]["id"]
    assert st.cp.ok("GET", f"/events/{first['id']}") == first
    assert st.cp.ok("GET", "/events?since=2999-01-01T00:00:00Z")["data"] == []

    status = wait_for("the usage flusher attached",
                      lambda: (lambda s: s if s["usage"]["attached"] else None)(
                          st.cp.ok("GET", "/events/status")), 5)
    assert status["log"]["attached"] and status["log"]["dropped"] == 0
    assert status["log"]["stored"] >= 3 and status["log"]["ring_cells"] > 0


@pytest.mark.parametrize("query,param", [
    ("group_by=tenant", "group_by"),
    ("interval=week", "interval"),
    ("from=yesterday", "from"),
    ("to=2030-13-01T00:00:00Z", "to"),
    ("from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z", "from"),
    ("interval=minute&from=2000-01-01T00:00:00Z", "interval"),
    ("model=", "model"),
    ("user=" + "u" * 300, "user"),
    ("group_by=key&deployment=", "deployment"),
])
def test_usage_validation_errors_name_the_parameter(stack, query, param):
    status, _, obj = stack.cp.admin("GET", "/usage?" + query)
    assert status == 400, obj
    assert obj["error"]["param"] == param and param in obj["error"]["message"]


@pytest.mark.parametrize("query,param", [
    ("kind=nonsense", "kind"),
    ("since=tomorrow", "since"),
    ("limit=0", "limit"),
    ("after=x", "after"),
])
def test_events_validation_errors_name_the_parameter(stack, query, param):
    status, _, obj = stack.cp.admin("GET", "/events?" + query)
    assert status == 400, obj
    assert obj["error"]["param"] == param


@pytest.mark.timeout(120)
def test_a_database_outage_loses_no_usage_and_counts_nothing_twice(build_dir, tmp_path, mock):
    srv = PgServer(tempfile.mkdtemp(prefix="sy-pg-"))
    st = None
    try:
        srv.start()
        srv.psql('CREATE DATABASE "usage_outage"')
        st = Stack(build_dir, str(tmp_path), srv.url_for("usage_outage"), mock)
        st.send("alpha", st.k1, 4)
        st.send("beta", st.k2, 2)
        wait_usage_exact(st, st.cp)

        srv.stop()
        wait_for("the control plane to see the database down",
                 lambda: st.cp.json("GET", "/healthz")[2]["database"] == "down", 10)
        during = st.send("alpha", st.k2, 3) + st.send("flaky", st.k1, 1)
        st.send("beta", st.k1, 2)
        time.sleep(3 * FLUSH_MS / 1000)  # flushes fail meanwhile

        srv.start()
        wait_for("the control plane to see the database up",
                 lambda: st.cp.json("GET", "/healthz")[2]["database"] == "up", 20)
        wait_usage_exact(st, st.cp)
        stays_exact(st, st.cp, 4 * FLUSH_MS / 1000)
        # the decision log kept the outage's events in memory and wrote them afterwards
        for rid in during:
            wait_for(f"events of {rid}",
                     lambda: st.cp.ok("GET", f"/events?request_id={rid}")["data"], 10)
        status = st.cp.ok("GET", "/events/status")
        assert status["usage"]["failures"] >= 1 and status["usage"]["last_error"] is None
    finally:
        if st:
            st.close()
        srv.destroy()
