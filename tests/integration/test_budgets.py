# SPDX-License-Identifier: Apache-2.0
"""Spend budgets end to end: a real PostgreSQL, the control plane and a data plane of 2 workers
sharing one --shm segment, the mock provider answering with a known usage.

Every request costs exactly COST (10 prompt + 5 completion tokens at 1000 and 2000 per million
tokens = 0.02), so a budget of 0.1 with soft_percent 50 crosses its soft threshold on the 3rd
request and is exhausted by the 5th; the 6th is refused with 429. Keys: k1 (agent bot-a, user
ana), k2 (agent bot-a, user bob), k3 (agent bot-c, user carl).

Periods are computed by PostgreSQL (budget_period in migrations/010_budgets.sql); the SQL test
below pins them down across time zones, daylight-saving changes and month lengths. The period
rollover test shifts the budgets' clock of both planes with SWITCHYARD_TEST_CLOCK_OFFSET_MS so
that a UTC day ends a few seconds after the test starts."""

import datetime
import json
import os
import shutil
import tempfile
import time

import pytest

import harness
from pg import fresh_db, pg_server  # noqa: F401  (fixtures)

MASTER_KEY = "6b" * 32
ADMIN_TOKEN = "budgets-admin-token-0123456789"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
FLUSH_MS = 200
COST = 0.02


class ControlPlane(harness.HTTPClientMixin):
    def __init__(self, build_dir, workdir, db_url, sock, shm, env=None, name="cp", node="node-b"):
        exe = os.path.join(build_dir, "controlplane", "switchyard-controlplane")
        port_file = os.path.join(workdir, f"{name}.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        argv = [exe, "serve", "--database-url", db_url, "--admin-listen", "127.0.0.1:0",
                "--admin-token", ADMIN_TOKEN, "--socket", sock, "--node-id", node,
                "--port-file", port_file, "--shm", shm, "--usage-flush-ms", str(FLUSH_MS),
                "--log-level", "debug"]
        full_env = {"SWITCHYARD_MASTER_KEY": MASTER_KEY}
        full_env.update(env or {})
        self.process = harness.ManagedProcess(name, argv, os.path.join(workdir, f"{name}.log"),
                                              env=full_env)
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
    def __init__(self, build_dir, workdir, sock, shm, env=None, name="dp", node="node-b"):
        exe = os.path.join(build_dir, "dataplane", "switchyard-dataplane")
        port_file = os.path.join(workdir, f"{name}.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        argv = [exe, "--listen", "127.0.0.1:0", "--workers", "2", "--port-file", port_file,
                "--control-socket", sock, "--node-id", node, "--shm", shm]
        self.process = harness.ManagedProcess(name, argv, os.path.join(workdir, f"{name}.log"),
                                              env=env)
        self.port = harness.wait_port_file(self.process, port_file, 10)
        harness.wait_until_answers(self, "/healthz", 10, 200)

    def chat(self, key):
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hello"}]}
        return self.json("POST", CHAT, body, headers={"Authorization": f"Bearer {key}"})

    def message(self, key):
        body = {"model": "alpha", "max_tokens": 16,
                "messages": [{"role": "user", "content": "hello"}]}
        return self.json("POST", MESSAGES, body, headers={"x-api-key": key})

    def stop(self):
        self.process.signal(15)
        try:
            self.process.wait(30)
        finally:
            self.process.kill()


def wait_for(what, pred, timeout=15, interval=0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Stack:
    """A database, a control plane with the config and three keys, and (unless <dp> is False)
    a data plane; <env> goes to both planes. With <config> False, a second node of the same
    database: its own control plane and data plane, named <node>."""

    def __init__(self, build_dir, workdir, db, mock, env=None, dp=True, node="node-b",
                 config=True, keys=None):
        self.build_dir, self.workdir, self.db, self.env = build_dir, workdir, db, env
        self.node = node
        self.sockdir = tempfile.mkdtemp(prefix="sy-bud-")
        self.sock = os.path.join(self.sockdir, "cp.sock")
        self.shm = f"/dev/shm/sy-budget-test-{os.getpid()}-{id(self)}"
        self.dp = None
        self.cp = ControlPlane(build_dir, workdir, db.url, self.sock, self.shm, env=env,
                               name=f"cp-{node}", node=node)
        if not config:
            self.keys = keys
            if dp:
                self.start_dp()
            return
        mock.reset()
        mock.config({"by_model": {"a-up": {"usage": {"prompt_tokens": 10,
                                                     "completion_tokens": 5}}}})
        self.cp.ok("POST", "/providers", {
            "name": "mock", "kind": "custom", "base_url": mock.url, "format": "openai",
            "auth_style": "bearer", "api_key": "sk-mock"}, 201)
        self.cp.ok("POST", "/deployments", {"name": "dep-a", "provider": "mock", "model": "a-up",
                                            "price": {"input": 1000, "output": 2000}}, 201)
        self.cp.ok("POST", "/models", {"name": "alpha", "targets": [{"deployment": "dep-a"}]},
                   201)
        self.keys = {}
        for name, agent, user in (("k1", "bot-a", "ana"), ("k2", "bot-a", "bob"),
                                  ("k3", "bot-c", "carl")):
            doc = self.cp.ok("POST", "/keys", {"name": name, "agent": agent, "user": user}, 201)
            self.keys[name] = (doc["key"], doc["id"])
        if dp:
            self.start_dp()

    def key(self, name):
        return self.keys[name][0]

    def start_dp(self, name="dp"):
        self.dp = DataPlane(self.build_dir, self.workdir, self.sock, self.shm, env=self.env,
                            name=f"{name}-{self.node}", node=self.node)
        self.wait_workers()

    def wait_workers(self):
        def ready():
            st = self.cp.ok("GET", "/status")
            ws = st["publisher"]["workers"]
            return len(ws) == 2 and all(w["version"] == st["config_version"] for w in ws)
        wait_for("both workers serving the config", ready)

    def budget(self, body):
        doc = self.cp.ok("POST", "/budgets", body, 201)
        self.wait_workers()
        if self.dp:
            self.wait_enforced(body["name"])
        return doc

    def wait_enforced(self, name):
        """Until this node's shared memory has the budget's period set up."""
        return wait_for(f"budget {name} enforced", lambda: (lambda g: g if g["enforced"] else None)(
            self.cp.ok("GET", f"/budgets/{name}")))

    def chat_ok(self, key, n=1):
        for _ in range(n):
            status, _, body = self.dp.chat(self.key(key))
            assert status == 200, body

    def close(self):
        """Stops the planes cleanly (a sanitizer build reports leaks then), then kills."""
        for p in (self.dp, self.cp):
            if p and p.process.alive():
                try:
                    p.stop()
                except Exception:  # noqa: BLE001  (a hung stop is killed below)
                    pass
            if p:
                p.process.kill()
        shutil.rmtree(self.sockdir, ignore_errors=True)
        if os.path.exists(self.shm):
            os.unlink(self.shm)


@pytest.fixture
def stack(build_dir, tmp_path, fresh_db, mock):
    st = Stack(build_dir, str(tmp_path), fresh_db, mock)
    yield st
    st.close()


def events(cp, reason=None):
    rows = cp.ok("GET", "/events?kind=budget&limit=500")["data"]
    return [r for r in rows if reason is None or r["reason"] == reason]


def wait_refused(st, key, timeout=10):
    """Send until the data plane refuses <key> (the control plane sets a budget up within a
    refresh); returns (status, headers, body) of the refusal and how many were served first."""
    served = []

    def refused():
        status, headers, body = st.dp.chat(st.key(key))
        if status == 200:
            served.append(1)
        return (status, headers, body) if status == 429 else None
    return wait_for(f"{key} refused", refused, timeout, interval=0.1), len(served)


# ---- the admin API ---------------------------------------------------------------------------

def test_budget_writes_are_validated_field_by_field(build_dir, tmp_path, fresh_db, mock):
    st = Stack(build_dir, str(tmp_path), fresh_db, mock, dp=False)
    try:
        k1 = st.keys["k1"][1]
        good = {"name": "team-a", "scope": "agent", "subject": "bot-a", "amount": 10,
                "period": "month"}

        def bad(body, param, words):
            status, _, doc = st.cp.admin("POST", "/budgets", body)
            assert status == 400, (body, status, doc)
            err = doc["error"]
            assert err["param"] == param and err["type"] == "invalid_request_error", doc
            assert words in err["message"], err["message"]

        bad({**good, "scope": None}, "scope", "required")
        bad({**good, "scope": "team"}, "scope", "\"key\", \"agent\", \"user\"")
        bad({**good, "subject": ""}, "subject", "empty")
        bad({**good, "amount": 0}, "amount", "greater than 0")
        bad({**good, "amount": -5}, "amount", "greater than 0")
        bad({**good, "amount": "10"}, "amount", "number")
        bad({k: v for k, v in good.items() if k != "amount"}, "amount", "required")
        bad({**good, "period": "year"}, "period", "\"day\", \"week\", \"month\"")
        bad({**good, "soft_percent": 0}, "soft_percent", "1")
        bad({**good, "soft_percent": 101}, "soft_percent", "100")
        bad({**good, "name": "Team A"}, "name", "name")
        bad({**good, "colour": "red"}, "colour", "unknown")
        bad({**good, "timezone": "Mars/Olympus"}, "timezone", "unknown time zone")
        bad({**good, "timezone": "UTC+3"}, "timezone", "IANA name")
        bad({**good, "timezone": ""}, "timezone", "empty")
        bad({**good, "scope": "key", "subject": "abc"}, "subject", "id")
        bad({**good, "scope": "key", "subject": 999999}, "subject", "no client key")

        doc = st.cp.ok("POST", "/budgets", {**good, "timezone": "Europe/Paris"}, 201)
        assert doc["object"] == "budget" and doc["soft_percent"] == 80 and doc["enabled"]
        assert doc["timezone"] == "Europe/Paris" and float(doc["amount"]) == 10
        status, _, dup = st.cp.admin("POST", "/budgets", good)
        assert status == 409, dup
        kb = st.cp.ok("POST", "/budgets", {"name": "k1-daily", "scope": "key", "subject": k1,
                                           "amount": 0.5, "period": "day"}, 201)
        assert kb["subject"] == str(k1) and kb["timezone"] == "UTC"

        # the read of one budget shows its current period
        got = st.cp.ok("GET", "/budgets/team-a")
        assert got["spent"] == 0 and got["state"] == "ok" and not got["enforced"], got
        start = datetime.datetime.fromisoformat(got["period_start"].replace("Z", "+00:00"))
        end = datetime.datetime.fromisoformat(got["period_end"].replace("Z", "+00:00"))
        paris = start.astimezone(datetime.timezone(datetime.timedelta(hours=1)))
        assert start <= datetime.datetime.now(datetime.timezone.utc) < end
        assert start.minute == 0 and paris.day == 1 and paris.hour in (0, 1), got
        listing = st.cp.ok("GET", "/budgets?scope=key")["data"]
        assert [b["name"] for b in listing] == ["k1-daily"]

        # PATCH validates the merged document; a stale If-Match is refused
        status, _, doc = st.cp.admin("PATCH", "/budgets/team-a", {"period": "fortnight"})
        assert status == 400 and doc["error"]["param"] == "period"
        doc = st.cp.ok("PATCH", "/budgets/team-a", {"amount": 12.5, "soft_percent": 90})
        assert float(doc["amount"]) == 12.5 and doc["soft_percent"] == 90 and doc["version"] == 2
        status, _, doc = st.cp.json("PATCH", "/admin/v1/budgets/team-a", {"amount": 1},
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                             "If-Match": '"1"'})
        assert status == 412, doc
        st.cp.ok("DELETE", "/budgets/team-a", want=204)
        status, _, doc = st.cp.admin("GET", "/budgets/team-a")
        assert status == 404 and "team-a" in doc["error"]["message"]
    finally:
        st.close()


def test_budget_periods_are_calendar_aligned_in_time_zones(stack, fresh_db):
    def period(p, tz, at):
        return fresh_db.psql(
            "SELECT to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'),"
            " to_char(period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')"
            f" FROM budget_period('{p}', '{tz}', '{at}'::timestamptz)")[0]

    assert period("day", "UTC", "2026-11-27 15:00Z") == ["2026-11-27 00:00", "2026-11-28 00:00"]
    # Paris springs forward on 2026-03-29 (a 23-hour day) and falls back on 2026-10-25 (25 h)
    assert period("day", "Europe/Paris", "2026-03-29 12:00Z") == ["2026-03-28 23:00",
                                                                   "2026-03-29 22:00"]
    assert period("day", "Europe/Paris", "2026-10-25 12:00Z") == ["2026-10-24 22:00",
                                                                   "2026-10-25 23:00"]
    assert period("day", "Asia/Kolkata", "2026-11-27 20:00Z") == ["2026-11-27 18:30",
                                                                   "2026-11-28 18:30"]
    # weeks start on Monday, local midnight
    assert period("week", "UTC", "2026-11-27 15:00Z") == ["2026-11-23 00:00", "2026-11-30 00:00"]
    assert period("week", "America/New_York", "2026-11-02 03:00Z") == ["2026-10-26 04:00",
                                                                        "2026-11-02 05:00"]
    # months have their own lengths; 2028 is a leap year; a UTC instant may be last month
    # locally
    assert period("month", "UTC", "2028-02-15 00:00Z") == ["2028-02-01 00:00", "2028-03-01 00:00"]
    assert period("month", "UTC", "2027-02-15 00:00Z") == ["2027-02-01 00:00", "2027-03-01 00:00"]
    assert period("month", "America/New_York", "2026-02-01 03:00Z") == ["2026-01-01 05:00",
                                                                         "2026-02-01 05:00"]
    assert period("month", "Australia/Sydney", "2026-12-31 14:00Z") == ["2026-12-31 13:00",
                                                                         "2027-01-31 13:00"]


# ---- enforcement ------------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_a_key_budget_warns_at_soft_then_refuses_with_429_until_raised(stack):
    st = stack
    k1_id = st.keys["k1"][1]
    st.budget({"name": "k1-daily", "scope": "key", "subject": k1_id, "amount": 0.1,
               "period": "day", "soft_percent": 50})
    st.chat_ok("k1", 2)
    assert events(st.cp) == [], "no event below the soft threshold"
    st.chat_ok("k1", 1)  # 0.06 of 0.1: past 50 %
    soft = wait_for("the soft event", lambda: events(st.cp, "soft"))
    assert len(soft) == 1 and soft[0]["key"] == "k1", soft
    assert "k1-daily" in soft[0]["text"] and "0.06 of 0.1" in soft[0]["text"], soft
    st.chat_ok("k1", 2)  # the 5th request, admitted at 0.08, brings it to 0.1

    status, headers, body = st.dp.chat(st.key("k1"))
    assert status == 429, body
    err = body["error"]
    assert err["code"] == "budget_exceeded" and err["type"] == "insufficient_quota", err
    assert "k1-daily" in err["message"] and "resets at" in err["message"], err
    now = datetime.datetime.now(datetime.timezone.utc)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                          microsecond=0)
    retry_after = int(headers["retry-after"])
    assert abs(retry_after - (midnight - now).total_seconds()) <= 5, (retry_after, now)
    assert midnight.strftime("%Y-%m-%dT%H:%M:%SZ") in err["message"], err

    # the Anthropic shape on /v1/messages
    status, headers, body = st.dp.message(st.key("k1"))
    assert status == 429 and int(headers["retry-after"]) > 0, body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error", body
    assert "k1-daily" in body["error"]["message"], body

    exhausted = wait_for("the exhausted event", lambda: events(st.cp, "exhausted"))
    assert len(exhausted) == 1 and len(events(st.cp, "soft")) == 1, events(st.cp)

    # other keys are not covered
    st.chat_ok("k2", 2)
    st.chat_ok("k3", 1)

    # the read of the budget and the metrics agree
    got = wait_for("the spend flushed", lambda: (lambda g: g if abs(g["spent"] - 0.1) < 1e-9
                                                  else None)(st.cp.ok("GET", "/budgets/k1-daily")))
    assert got["state"] == "exhausted", got
    status, _, text = st.cp.request("GET", "/metrics")
    text = text.decode()
    assert status == 200, text
    assert 'switchyard_budget_spent{budget="k1-daily"} 0.100000' in text, text
    assert 'switchyard_budget_amount{budget="k1-daily"} 0.100000' in text
    assert 'switchyard_budget_state{budget="k1-daily",state="exhausted"} 1' in text
    assert 'switchyard_budget_state{budget="k1-daily",state="ok"} 0' in text

    # more money lets traffic through at once, without a restart
    st.cp.ok("PATCH", "/budgets/k1-daily", {"amount": 1})
    wait_for("k1 admitted again", lambda: st.dp.chat(st.key("k1"))[0] == 200, 10, 0.1)
    assert st.cp.ok("GET", "/budgets/k1-daily")["state"] == "ok"
    # a disabled budget covers nothing
    st.cp.ok("PATCH", "/budgets/k1-daily", {"amount": 0.01})
    wait_refused(st, "k1")
    st.cp.ok("PATCH", "/budgets/k1-daily", {"enabled": False})
    wait_for("k1 admitted without the budget", lambda: st.dp.chat(st.key("k1"))[0] == 200, 10,
             0.1)
    got = st.cp.ok("GET", "/budgets/k1-daily")
    assert not got["enforced"] and not got["enabled"], got


@pytest.mark.timeout(90)
def test_agent_and_user_budgets_cover_every_key_of_theirs(stack):
    st = stack
    st.budget({"name": "bot-a-weekly", "scope": "agent", "subject": "bot-a", "amount": 0.1,
               "period": "week"})
    st.budget({"name": "carl-monthly", "scope": "user", "subject": "carl", "amount": 0.04,
               "period": "month", "timezone": "America/New_York"})
    st.chat_ok("k1", 3)
    st.chat_ok("k2", 2)  # bot-a: 5 x 0.02
    for k in ("k1", "k2"):
        status, headers, body = st.dp.chat(st.key(k))
        assert status == 429 and "bot-a-weekly" in body["error"]["message"], (k, body)
        assert int(headers["retry-after"]) <= 7 * 86400
    st.chat_ok("k3", 2)  # carl: 2 x 0.02
    status, _, body = st.dp.chat(st.key("k3"))
    assert status == 429 and "carl-monthly" in body["error"]["message"], body
    got = wait_for("bot-a's spend flushed",
                   lambda: (lambda g: g if abs(g["spent"] - 0.1) < 1e-9 else None)(
                       st.cp.ok("GET", "/budgets/bot-a-weekly")))
    start = datetime.datetime.fromisoformat(got["period_start"].replace("Z", "+00:00"))
    assert start.weekday() == 0 and start.hour == 0, got  # Monday, UTC midnight


@pytest.mark.timeout(120)
def test_spend_survives_a_data_plane_restart(stack, fresh_db):
    st = stack
    st.budget({"name": "k1-daily", "scope": "key", "subject": st.keys["k1"][1], "amount": 0.1,
               "period": "day"})
    st.chat_ok("k1", 5)
    assert st.dp.chat(st.key("k1"))[0] == 429
    # in PostgreSQL: the flushed usage rows of the key
    wait_for("spend in PostgreSQL", lambda: fresh_db.psql(
        "SELECT budget_spent(b, p.period_start, p.period_end) FROM budgets b,"
        " budget_period(b.period, b.timezone, now()) p")[0][0] == "0.100000")
    st.dp.stop()
    st.start_dp(name="dp2")  # a new segment: its counters start at zero
    st.wait_enforced("k1-daily")
    status, _, body = st.dp.chat(st.key("k1"))
    assert status == 429 and "k1-daily" in body["error"]["message"], body
    assert st.dp.chat(st.key("k2"))[0] == 200
    # counted once: a few more flushes change nothing
    time.sleep(3 * FLUSH_MS / 1000)
    assert st.cp.ok("GET", "/budgets/k1-daily")["spent"] == pytest.approx(0.1)


@pytest.mark.timeout(120)
def test_a_budget_resets_when_its_period_rolls_over(build_dir, tmp_path, fresh_db, mock):
    # Both planes' budget clock: the next UTC midnight comes 25 s after now.
    now_ms = int(time.time() * 1000)
    midnight_ms = (now_ms // 86400000 + 1) * 86400000
    offset = midnight_ms - now_ms - 25000
    st = Stack(build_dir, str(tmp_path), fresh_db, mock,
               env={"SWITCHYARD_TEST_CLOCK_OFFSET_MS": str(offset)})
    try:
        st.budget({"name": "k1-daily", "scope": "key", "subject": st.keys["k1"][1],
                   "amount": 0.04, "period": "day"})
        got = st.cp.ok("GET", "/budgets/k1-daily")
        assert got["state"] == "ok" and got["enforced"], got
        end_ms = midnight_ms  # of the shifted clock
        assert got["period_end"] == datetime.datetime.fromtimestamp(
            end_ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"), got
        st.chat_ok("k1", 2)
        status, headers, body = st.dp.chat(st.key("k1"))
        assert status == 429, body
        # Retry-After counts to the period's end on the shifted clock: a few seconds
        assert 1 <= int(headers["retry-after"]) <= 25, headers
        # the period ends (at real time now_ms + 25 s); the next one starts empty
        real_end = (end_ms - offset) / 1000
        time.sleep(max(0.0, real_end - time.time()))
        wait_for("k1 admitted in the new period", lambda: st.dp.chat(st.key("k1"))[0] == 200,
                 10, 0.1)
        got = st.cp.ok("GET", "/budgets/k1-daily")
        assert got["period_start"] == datetime.datetime.fromtimestamp(
            end_ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"), got
        assert got["spent"] <= 2 * COST + 1e-9 and got["state"] != "exhausted", got
    finally:
        st.close()


@pytest.mark.timeout(120)
def test_two_nodes_on_one_database_add_up_their_spend(stack, build_dir, tmp_path, fresh_db,
                                                      mock):
    one = stack
    two = Stack(build_dir, str(tmp_path), fresh_db, mock, node="node-c", config=False,
                keys=one.keys)
    try:
        one.budget({"name": "bot-a-daily", "scope": "agent", "subject": "bot-a", "amount": 0.1,
                    "period": "day"})
        two.wait_workers()
        two.wait_enforced("bot-a-daily")
        one.chat_ok("k1", 3)  # 0.06 on node one
        two.chat_ok("k2", 2)  # 0.04 on node two
        # each node learns the other's spend through PostgreSQL: both see 0.1, both refuse
        for st in (one, two):
            wait_for(f"{st.node} sees the whole spend", lambda: (lambda g: g["spent"] == (
                pytest.approx(0.1)) and g["state"] == "exhausted")(
                    st.cp.ok("GET", "/budgets/bot-a-daily")))
            for k in ("k1", "k2"):
                status, _, body = st.dp.chat(st.key(k))
                assert status == 429 and "bot-a-daily" in body["error"]["message"], (st.node, k)
            assert st.dp.chat(st.key("k3"))[0] == 200
        assert fresh_db.psql("SELECT budget, percent FROM alert_budget_use()") == [
            ["bot-a-daily", "100.00"]]
    finally:
        two.close()


@pytest.mark.timeout(120)
def test_enforcement_outlives_the_control_plane_and_its_restart(stack):
    st = stack
    st.budget({"name": "k1-daily", "scope": "key", "subject": st.keys["k1"][1], "amount": 0.1,
               "period": "day"})
    st.chat_ok("k1", 4)  # 0.08: flushed while the control plane runs
    wait_for("0.08 in PostgreSQL", lambda: st.db.psql(
        "SELECT budget_spent(b, p.period_start, p.period_end) FROM budgets b,"
        " budget_period(b.period, b.timezone, now()) p")[0][0] == "0.080000")
    st.cp.stop()
    # without a control plane the data plane goes on counting and enforcing
    st.chat_ok("k1", 1)
    status, _, body = st.dp.chat(st.key("k1"))
    assert status == 429 and "k1-daily" in body["error"]["message"], body
    assert st.dp.chat(st.key("k2"))[0] == 200
    # a new control plane takes the slot over as it is: the spend is neither lost nor doubled
    st.cp = ControlPlane(st.build_dir, st.workdir, st.db.url, st.sock, st.shm, name="cp2")
    st.wait_workers()
    got = st.wait_enforced("k1-daily")
    assert got["spent"] == pytest.approx(0.1) and got["state"] == "exhausted", got
    assert st.dp.chat(st.key("k1"))[0] == 429
    wait_for("0.1 in PostgreSQL", lambda: st.db.psql(
        "SELECT budget_spent(b, p.period_start, p.period_end) FROM budgets b,"
        " budget_period(b.period, b.timezone, now()) p")[0][0] == "0.100000")
    time.sleep(3 * FLUSH_MS / 1000)
    assert st.cp.ok("GET", "/budgets/k1-daily")["spent"] == pytest.approx(0.1)


@pytest.mark.timeout(90)
def test_streams_are_counted_and_a_refused_stream_gets_a_json_429(stack):
    st = stack
    st.budget({"name": "carl-daily", "scope": "user", "subject": "carl", "amount": 0.05,
               "period": "day"})
    body = {"model": "alpha", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {st.key('k3')}"}
    for _ in range(2):
        with st.dp.stream(CHAT, body, headers=auth) as s:
            evs = s.collect()
            assert s.status == 200 and evs[-1].done, evs
    # an Anthropic stream on the same key: 0.06 in all
    with st.dp.stream(MESSAGES, {**body, "max_tokens": 16},
                      headers={"x-api-key": st.key("k3")}) as s:
        evs = s.collect()
        assert s.status == 200 and evs[-1].event == "message_stop", [e.event for e in evs]
    wait_for("the streams' cost counted", lambda: (lambda g: g["spent"] == pytest.approx(
        3 * COST) and g["state"] == "exhausted")(st.cp.ok("GET", "/budgets/carl-daily")))
    with st.dp.stream(CHAT, body, headers=auth) as s:
        assert s.status == 429 and int(s.headers["retry-after"]) > 0
        err = json.loads(s.body())["error"]
        assert err["code"] == "budget_exceeded" and "carl-daily" in err["message"], err
