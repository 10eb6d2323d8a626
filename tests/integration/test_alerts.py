# SPDX-License-Identifier: Apache-2.0
"""Alerts end to end: rules and channels through the admin API, evaluation in PostgreSQL under an
advisory lock, webhooks to a receiver in this process (http.server on port 0, over HTTP or HTTPS,
told to fail N times).

Real traffic through a gateway with the mock provider's faults makes an error_rate rule fire and
then resolve, a circuit open, and a deployment go silent. Without traffic, circuit transitions are
written into the decision log directly (as the event drain would), which is enough to prove the
five body shapes and their signatures, retries with backoff, a delivery that survives a killed
control plane, and two control planes on one database sending one notification per transition."""

import base64
import hashlib
import hmac
import http.server
import json
import os
import shutil
import ssl
import tempfile
import threading
import time
import urllib.parse

import pytest

import harness
from pg import PgServer, fresh_db, pg_server  # noqa: F401  (fixtures)

MASTER_KEY = "a1" * 32
ADMIN_TOKEN = "alerts-admin-token-0123456789"
CHAT = "/v1/chat/completions"


# ---- a webhook receiver -------------------------------------------------------------------------

class Receiver:
    """Records every POST: {path, query, headers (lowercased), body (parsed), raw, t}. Answers 500
    to the next <fail> requests, then 200 with <answer>."""

    def __init__(self, certs=None, host="127.0.0.1"):
        self.requests = []
        self.fail = 0
        self.answer = b'{"errcode":0,"code":0}'
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                url = urllib.parse.urlsplit(self.path)
                with outer.lock:
                    failing = outer.fail > 0 and url.path not in ("/hang", "/hang-long",
                                                                  "/dingbad")
                    if failing:
                        outer.fail -= 1
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                    outer.requests.append({
                        "path": url.path, "query": urllib.parse.parse_qs(url.query),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body, "raw": raw, "t": time.monotonic(), "failed": failing})
                if url.path in ("/hang", "/hang-long"):  # a head, then a body that never ends
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"ok":')
                    self.wfile.flush()
                    time.sleep(5 if url.path == "/hang" else 60)
                    self.close_connection = True
                    return
                out = b'{"error":"told to fail"}' if failing else outer.answer
                if url.path == "/dingbad":  # DingTalk's way of refusing: 200 and an errcode
                    out = b'{"errcode":310000,"errmsg":"sign not match"}'
                self.send_response(500 if failing else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if certs is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certs.cert, certs.key)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.port = self.server.server_address[1]
        self.url = f"{scheme}://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on(self, path):
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def ok(self, path):
        return [r for r in self.on(path) if not r["failed"]]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# ---- the stack ------------------------------------------------------------------------------------

class ControlPlane(harness.HTTPClientMixin):
    def __init__(self, build_dir, workdir, db_url, name="cp", node="node-a", sock=None, shm=None,
                 args=()):
        exe = os.path.join(build_dir, "controlplane", "switchyard-controlplane")
        port_file = os.path.join(workdir, f"{name}.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.sockdir = None
        if sock is None:
            self.sockdir = tempfile.mkdtemp(prefix="sy-al-")
            sock = os.path.join(self.sockdir, "cp.sock")
        argv = [exe, "serve", "--database-url", db_url, "--admin-listen", "127.0.0.1:0",
                "--admin-token", ADMIN_TOKEN, "--socket", sock, "--node-id", node,
                "--port-file", port_file, "--usage-flush-ms", "200", "--alert-interval-ms", "200",
                "--webhook-backoff-ms", "200", "--log-level", "debug", *args]
        if shm:
            argv += ["--shm", shm]
        self.process = harness.ManagedProcess(name, argv, os.path.join(workdir, f"{name}.log"),
                                              env={"SWITCHYARD_MASTER_KEY": MASTER_KEY})
        self.port = harness.wait_port_file(self.process, port_file, 20)

    def admin(self, method, path, body=None, headers=None):
        h = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        h.update(headers or {})
        return self.json(method, "/admin/v1" + path, body, headers=h)

    def ok(self, method, path, body=None, want=200):
        status, _, obj = self.admin(method, path, body)
        assert status == want, (method, path, status, obj)
        return obj

    def metrics(self):
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self, sig=15):
        """Stop with <sig>; after SIGTERM the exit must be clean (under the sanitizers: no leak,
        no error report)."""
        self.process.signal(sig)
        try:
            rc = self.process.wait(15)
        finally:
            self.process.kill()
            if self.sockdir:
                shutil.rmtree(self.sockdir, ignore_errors=True)
        if sig == 15:
            log = self.process.log()
            assert rc == 0 and "Sanitizer" not in log and "runtime error" not in log, \
                f"{self.process.name} exited with {rc}\n{self.process.tail()}"


def wait_for(what, pred, timeout=20, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def provider_and_deployments(cp, names, base_url="http://127.0.0.1:9/v1"):
    cp.ok("POST", "/providers", {"name": "mock", "kind": "custom", "base_url": base_url,
                                 "format": "openai", "auth_style": "bearer",
                                 "api_key": "sk-mock"}, 201)
    for name, up in names:
        cp.ok("POST", "/deployments", {"name": name, "provider": "mock", "model": up}, 201)


def circuit(db, deployment, reason, node="node-x"):
    """A circuit transition in the decision log, as the event drain writes it."""
    db.psql(f"INSERT INTO events (at, node, kind, reason, deployment, text) VALUES "
            f"(now(), '{node}', 'circuit', '{reason}', '{deployment}', 'test')")


def firing(reqs):
    return [r for r in reqs if r["body"] and r["body"].get("status") == "firing"]


def resolved(reqs):
    return [r for r in reqs if r["body"] and r["body"].get("status") == "resolved"]


# ---- validation -----------------------------------------------------------------------------------

def test_rule_and_channel_validation_names_the_field_and_secrets_stay_hidden(
        build_dir, tmp_path, fresh_db):
    cp = ControlPlane(build_dir, str(tmp_path), fresh_db.url)
    try:
        ch = cp.ok("POST", "/alert-channels", {"name": "ding", "type": "dingtalk",
                                               "url": "https://oapi.example.com/robot/send?"
                                                      "access_token=abc",
                                               "secret": "SECdingtalk-secret-value",
                                               "headers": {"X-Team": "sre"}}, 201)
        assert ch["secret_set"] is True and "secret" not in ch
        cp.ok("POST", "/alert-channels", {"name": "gen", "type": "generic",
                                          "url": "http://127.0.0.1:9/hook"}, 201)
        bad = [
            ("/alert-channels", {"name": "x", "type": "teams", "url": "http://h/"}, "type"),
            ("/alert-channels", {"name": "x", "type": "slack", "url": "ftp://h/"}, "url"),
            ("/alert-channels", {"name": "x", "type": "slack", "url": "http://u:p@h/"}, "url"),
            ("/alert-channels", {"name": "x", "type": "slack", "url": "http://h/",
                                 "secret": "s"}, "secret"),
            ("/alert-channels", {"name": "x", "type": "generic", "url": "http://h/",
                                 "headers": {"Content-Length": "1"}}, "headers.Content-Length"),
            ("/alert-channels", {"name": "X Y", "type": "generic", "url": "http://h/"}, "name"),
            ("/alert-channels", {"name": "x", "type": "generic", "url": "http://h/",
                                 "colour": 1}, "colour"),
            ("/alert-rules", {"name": "r", "kind": "error_ratio", "threshold": 5}, "kind"),
            ("/alert-rules", {"name": "r", "kind": "error_rate", "threshold": 150}, "threshold"),
            ("/alert-rules", {"name": "r", "kind": "error_rate"}, "threshold"),
            ("/alert-rules", {"name": "r", "kind": "p95_latency", "threshold": -1}, "threshold"),
            ("/alert-rules", {"name": "r", "kind": "error_rate", "threshold": 5,
                              "window_minutes": 0}, "window_minutes"),
            ("/alert-rules", {"name": "r", "kind": "error_rate", "threshold": 5,
                              "scope": "key"}, "scope"),
            ("/alert-rules", {"name": "r", "kind": "circuit_open", "scope": "model"}, "scope"),
            ("/alert-rules", {"name": "r", "kind": "limit_use", "threshold": 80}, "limit"),
            ("/alert-rules", {"name": "r", "kind": "limit_use", "threshold": 80,
                              "limit": "rph"}, "limit"),
            ("/alert-rules", {"name": "r", "kind": "no_traffic", "repeat_minutes": -1},
             "repeat_minutes"),
            ("/alert-rules", {"name": "r", "kind": "no_traffic", "channels": ["nope"]},
             "channels[0]"),
            ("/alert-rules", {"name": "r", "kind": "no_traffic", "channels": ["gen", "gen"]},
             "channels[1]"),
            ("/alert-rules", {"name": "r", "kind": "no_traffic", "channels": "gen"}, "channels"),
        ]
        for path, body, param in bad:
            status, _, obj = cp.admin("POST", path, body)
            assert status == 400, (body, status, obj)
            assert obj["error"]["param"] == param, (body, obj)
            assert param.split("[")[0].split(".")[0] in obj["error"]["message"], obj

        rule = cp.ok("POST", "/alert-rules", {
            "name": "errors", "kind": "error_rate", "scope": "model", "target": "alpha",
            "threshold": 5, "window_minutes": 10, "min_requests": 20, "repeat_minutes": 30,
            "channels": ["ding", "gen"]}, 201)
        assert rule["channels"] == ["ding", "gen"] and rule["enabled"] is True
        assert rule["threshold"] == 5 and rule["window_minutes"] == 10
        # A rule is read back as written, PATCHed member by member, guarded by its ETag.
        status, headers, got = cp.admin("GET", "/alert-rules/errors")
        assert status == 200 and got == rule and headers["etag"] == f'"{rule["version"]}"'
        patched = cp.ok("PATCH", "/alert-rules/errors", {"threshold": 7.5, "channels": ["gen"]})
        assert patched["threshold"] == 7.5 and patched["channels"] == ["gen"]
        assert patched["version"] == rule["version"] + 1
        status, _, obj = cp.admin("PATCH", "/alert-rules/errors", {"threshold": 9},
                                  headers={"If-Match": f'"{rule["version"]}"'})
        assert status == 412, obj
        status, _, obj = cp.admin("POST", "/alert-rules", {"name": "errors", "kind": "no_traffic"})
        assert status == 409 and obj["error"]["param"] == "name", obj
        assert cp.admin("GET", "/alert-rules/nope")[0] == 404

        # A channel in use cannot be deleted; its rules are named.
        status, _, obj = cp.admin("DELETE", "/alert-channels/gen")
        assert status == 409 and "errors" in obj["error"]["message"], obj

        # The secret never comes back, in any read; PATCH without it keeps it, null clears it.
        for path in ("/alert-channels/ding", "/alert-channels"):
            status, _, body = cp.request("GET", "/admin/v1" + path,
                                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert status == 200 and b"SECdingtalk" not in body and b"secret\":\"" not in body
        # nor in the audit log of the write that set it
        status, _, body = cp.request("GET", "/admin/v1/audit?limit=500",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status == 200 and b"alert-channels" in body and b"SECdingtalk" not in body
        kept = cp.ok("PATCH", "/alert-channels/ding", {"url": "https://oapi.example.com/x"})
        assert kept["secret_set"] is True and kept["headers"] == {"X-Team": "sre"}
        row = fresh_db.psql("SELECT encode(secret_enc, 'hex') FROM alert_channels "
                            "WHERE name = 'ding'")[0][0]
        assert "SECdingtalk".encode().hex() not in row  # stored sealed
        cleared = cp.ok("PATCH", "/alert-channels/ding", {"secret": None})
        assert cleared["secret_set"] is False
        cp.ok("PATCH", "/alert-channels/ding", {"secret": "again"})
        slack = cp.ok("PATCH", "/alert-channels/ding", {"type": "slack"})
        assert slack["secret_set"] is False  # Slack is never signed: the secret goes

        # Read-only resources.
        assert cp.ok("GET", "/alerts")["data"] == []
        status, _, obj = cp.admin("GET", "/alerts?state=burning")
        assert status == 400 and obj["error"]["param"] == "state"
        assert cp.admin("POST", "/alerts", {})[0] == 405
        cp.ok("DELETE", "/alert-rules/errors", want=204)
        cp.ok("DELETE", "/alert-channels/gen", want=204)
    finally:
        cp.stop()


# ---- shapes and signatures ------------------------------------------------------------------------

def test_five_shapes_with_signatures_fire_and_resolve_once(build_dir, tmp_path, fresh_db,
                                                           receiver):
    cp = ControlPlane(build_dir, str(tmp_path), fresh_db.url)
    try:
        provider_and_deployments(cp, [("dep-x", "x-up")])
        secrets = {"ding": "SEC-ding-123", "feishu": "feishu-secret", "gen": "gen-secret"}
        chans = [("gen", "generic", "/gen"), ("slack", "slack", "/slack"),
                 ("ding", "dingtalk", "/ding?access_token=tok"), ("feishu", "feishu", "/feishu"),
                 ("wecom", "wecom", "/wecom")]
        for name, typ, path in chans:
            body = {"name": name, "type": typ, "url": receiver.url + path}
            if name in secrets:
                body["secret"] = secrets[name]
            if name == "gen":
                body["headers"] = {"X-Team": "sre"}
            cp.ok("POST", "/alert-channels", body, 201)
        # A rule that cannot be evaluated (evaluated first) does not silence the others.
        fresh_db.psql("DROP FUNCTION alert_budget_use();"
                      "CREATE FUNCTION alert_budget_use() RETURNS TABLE (budget text,"
                      " subject text, percent numeric) LANGUAGE sql STABLE AS $$"
                      " SELECT 'b', 's', 1 / 0::numeric $$")
        cp.ok("POST", "/alert-rules", {"name": "broken", "kind": "budget_use", "threshold": 1,
                                       "channels": ["gen"]}, 201)
        cp.ok("POST", "/alert-rules", {"name": "breaker", "kind": "circuit_open",
                                       "target": "dep-x",
                                       "channels": [c[0] for c in chans]}, 201)
        circuit(fresh_db, "dep-x", "circuit_consecutive")
        paths = ["/gen", "/slack", "/ding", "/feishu", "/wecom"]
        wait_for("a firing notification on every channel",
                 lambda: all(firing(receiver.on(p)) or (p != "/gen" and receiver.on(p))
                             for p in paths))

        g = receiver.on("/gen")[0]
        body = g["body"]
        assert body["status"] == "firing" and body["rule"] == "breaker"
        assert body["kind"] == "circuit_open" and body["subject"] == "dep-x"
        assert body["scope"] == "deployment" and body["value"] == 1
        assert "since" in body and "circuit open" in body["message"]
        assert g["headers"]["x-team"] == "sre"
        assert g["headers"]["content-type"].startswith("application/json")
        ts = g["headers"]["x-switchyard-timestamp"]
        want = hmac.new(b"gen-secret", ts.encode() + b"." + g["raw"], hashlib.sha256).hexdigest()
        assert g["headers"]["x-switchyard-signature"] == "sha256=" + want

        s = receiver.on("/slack")[0]["body"]
        assert set(s) == {"text"} and "breaker" in s["text"] and "dep-x" in s["text"]

        d = receiver.on("/ding")[0]
        assert d["body"]["msgtype"] == "markdown"
        assert d["body"]["markdown"]["title"] == "[FIRING] breaker"
        assert "dep-x" in d["body"]["markdown"]["text"]
        assert d["query"]["access_token"] == ["tok"]
        dts = d["query"]["timestamp"][0]
        assert abs(int(dts) - time.time() * 1000) < 120000  # milliseconds
        want = base64.b64encode(hmac.new(b"SEC-ding-123", f"{dts}\nSEC-ding-123".encode(),
                                         hashlib.sha256).digest()).decode()
        assert d["query"]["sign"] == [want]

        f = receiver.on("/feishu")[0]["body"]
        assert f["msg_type"] == "text" and "dep-x" in f["content"]["text"]
        fts = f["timestamp"]
        assert abs(int(fts) - time.time()) < 120  # seconds, as a string
        want = base64.b64encode(hmac.new(f"{fts}\nfeishu-secret".encode(), b"",
                                         hashlib.sha256).digest()).decode()
        assert f["sign"] == want

        w = receiver.on("/wecom")[0]["body"]
        assert w["msgtype"] == "markdown" and "dep-x" in w["markdown"]["content"]

        # The alert is listed as firing, with an `alert` event in the decision log.
        alerts = cp.ok("GET", "/alerts?state=firing")["data"]
        assert [(a["rule"], a["subject"], a["state"]) for a in alerts] == \
            [("breaker", "dep-x", "firing")]
        ev = cp.ok("GET", "/events?kind=alert&deployment=dep-x")["data"]
        assert [e["outcome"] for e in ev] == ["firing"] and ev[0]["reason"] == "circuit_open"

        # Closed again: one resolved notification per channel; nothing repeats meanwhile.
        time.sleep(1)
        circuit(fresh_db, "dep-x", "circuit_closed")
        wait_for("a resolved notification on every channel",
                 lambda: all(len(receiver.on(p)) == 2 for p in paths))
        assert resolved(receiver.on("/gen"))[0]["body"]["subject"] == "dep-x"
        assert "RESOLVED" in receiver.on("/ding")[1]["body"]["markdown"]["title"]
        time.sleep(1.5)  # several evaluations later: still one of each
        assert all(len(receiver.on(p)) == 2 for p in paths)
        assert cp.ok("GET", "/alerts?state=resolved")["data"][0]["subject"] == "dep-x"
        m = cp.metrics()
        assert m["switchyard_alerts_firing"] == 0
        assert m["switchyard_alert_deliveries_pending"] == 0
        assert m["switchyard_alert_webhooks_sent_total"] == 10
        dl = cp.ok("GET", "/alert-deliveries?state=delivered")["data"]
        assert len(dl) == 10 and all(x["attempts"] == 1 and x["last_status"] == 200 for x in dl)
        assert cp.ok("GET", f"/alert-deliveries/{dl[0]['id']}") == dl[0]
        one = cp.ok("GET", "/alerts")["data"][0]
        assert cp.ok("GET", f"/alerts/{one['id']}")["subject"] == "dep-x"
        assert cp.admin("GET", "/alerts/999")[0] == 404
        assert cp.admin("GET", "/alert-deliveries/x1")[0] == 404
    finally:
        cp.stop()


# ---- retries, giving up, HTTPS ---------------------------------------------------------------------

def test_retries_with_backoff_then_success_and_gives_up_after_the_bound(
        build_dir, tmp_path, fresh_db, receiver):
    cp = ControlPlane(build_dir, str(tmp_path), fresh_db.url,
                      args=["--webhook-max-attempts", "4", "--webhook-timeout-ms", "2000"])
    try:
        provider_and_deployments(cp, [("dep-x", "x-up")])
        cp.ok("POST", "/alert-channels", {"name": "flaky", "type": "generic",
                                          "url": receiver.url + "/flaky"}, 201)
        cp.ok("POST", "/alert-channels", {"name": "dead", "type": "generic",
                                          "url": "http://127.0.0.1:9/nobody"}, 201)
        cp.ok("POST", "/alert-channels", {"name": "dingbad", "type": "dingtalk",
                                          "url": receiver.url + "/dingbad"}, 201)
        cp.ok("POST", "/alert-channels", {"name": "hang", "type": "generic",
                                          "url": receiver.url + "/hang"}, 201)
        cp.ok("POST", "/alert-rules", {"name": "breaker", "kind": "circuit_open",
                                       "channels": ["flaky", "dead", "hang", "dingbad"]},
              201)
        receiver.fail = 3
        circuit(fresh_db, "dep-x", "circuit_error_rate")
        wait_for("a delivery after three 500s", lambda: receiver.ok("/flaky"))
        reqs = receiver.on("/flaky")
        assert [r["failed"] for r in reqs] == [True, True, True, False]
        assert len({r["raw"] for r in reqs}) == 1  # the same notification, retried
        gaps = [b["t"] - a["t"] for a, b in zip(reqs, reqs[1:])]
        # backoff 200 ms doubled each time, jitter -20%: at least 160, 320, 640 ms
        assert all(g >= 0.16 * 2 ** i for i, g in enumerate(gaps)), gaps

        def dead_failed():
            d = cp.ok("GET", "/alert-deliveries?channel=dead")["data"]
            return d if d and d[0]["state"] == "failed" else None
        d = wait_for("the dead channel's delivery to be given up", dead_failed)[0]
        assert d["attempts"] == 4 and d["gave_up_at"] and d["last_status"] is None
        assert "connect" in d["last_error"], d
        ev = cp.ok("GET", "/events?kind=alert")["data"]
        undelivered = [e for e in ev if e["outcome"] == "undelivered"]
        assert any("channel dead given up after 4 attempts" in e["text"] for e in undelivered), ev
        ok = cp.ok("GET", "/alert-deliveries?channel=flaky")["data"][0]
        assert ok["state"] == "delivered" and ok["attempts"] == 4 and ok["last_status"] == 200
        # A receiver that answered 200 but never finished its body got the notification once.
        hang = wait_for("the hanging receiver's delivery", lambda: [
            x for x in cp.ok("GET", "/alert-deliveries?channel=hang")["data"]
            if x["state"] == "delivered"])
        assert hang[0]["attempts"] == 1 and hang[0]["last_status"] == 200
        assert len(receiver.on("/hang")) == 1
        # A 200 whose body says the vendor refused is a failure, retried, then given up.
        refused = wait_for("the refused DingTalk delivery", lambda: [
            x for x in cp.ok("GET", "/alert-deliveries?channel=dingbad")["data"]
            if x["state"] == "failed"])[0]
        assert refused["last_status"] == 200 and refused["attempts"] == 4
        assert "errcode 310000: sign not match" in refused["last_error"], refused
        assert len(receiver.on("/dingbad")) == 4
        wait_for("the failed gauge", lambda: cp.metrics().get(
            "switchyard_alert_deliveries_failed") == 2)
    finally:
        cp.stop()


def test_https_webhooks_verify_the_certificate(build_dir, tmp_path, fresh_db, certs):
    good = Receiver(certs=certs)
    wrong_host = Receiver(certs=certs, host="127.0.0.2")  # the certificate is not for it
    cp = ControlPlane(build_dir, str(tmp_path), fresh_db.url,
                      args=["--webhook-ca-file", certs.ca, "--webhook-max-attempts", "1"])
    try:
        provider_and_deployments(cp, [("dep-x", "x-up")])
        cp.ok("POST", "/alert-channels", {"name": "tls", "type": "slack",
                                          "url": good.url + "/s"}, 201)
        cp.ok("POST", "/alert-channels", {"name": "mismatch", "type": "slack",
                                          "url": wrong_host.url + "/s"}, 201)
        cp.ok("POST", "/alert-rules", {"name": "breaker", "kind": "circuit_open",
                                       "channels": ["tls", "mismatch"]}, 201)
        circuit(fresh_db, "dep-x", "circuit_consecutive")
        wait_for("the HTTPS delivery", lambda: good.on("/s"))

        def refused():
            d = cp.ok("GET", "/alert-deliveries?channel=mismatch")["data"]
            return d if d and d[0]["state"] == "failed" else None
        d = wait_for("the mismatched host to be refused", refused)[0]
        assert "certificate" in d["last_error"] or "TLS" in d["last_error"], d
        assert wrong_host.on("/s") == []
    finally:
        cp.stop()
        good.close()
        wrong_host.close()


def test_a_stop_does_not_wait_for_a_hanging_webhook(build_dir, tmp_path, fresh_db, receiver):
    cp = ControlPlane(build_dir, str(tmp_path), fresh_db.url,
                      args=["--webhook-timeout-ms", "120000"])
    provider_and_deployments(cp, [("dep-x", "x-up")])
    cp.ok("POST", "/alert-channels", {"name": "hang", "type": "generic",
                                      "url": receiver.url + "/hang-long"}, 201)
    cp.ok("POST", "/alert-rules", {"name": "breaker", "kind": "circuit_open",
                                   "channels": ["hang"]}, 201)
    circuit(fresh_db, "dep-x", "circuit_consecutive")
    wait_for("the webhook to be hanging", lambda: receiver.on("/hang-long"))
    time.sleep(0.3)
    # The receiver holds the answer for 60 s and the timeout is 120 s: stop() allows 15 s and
    # wants a clean exit.
    cp.stop()
    rows = fresh_db.psql("SELECT delivered_at IS NULL, claimed_by FROM alert_deliveries")
    assert rows == [["t", "node-a"]]  # not recorded as sent; its claim ends at the next start


def test_webhook_concurrency_bounds_the_sends_in_flight(build_dir, tmp_path, fresh_db, receiver):
    cp = ControlPlane(build_dir, str(tmp_path), fresh_db.url,
                      args=["--webhook-concurrency", "1", "--webhook-timeout-ms", "1500"])
    try:
        provider_and_deployments(cp, [("dep-x", "x-up")])
        for name in ("h1", "h2"):
            cp.ok("POST", "/alert-channels", {"name": name, "type": "generic",
                                              "url": receiver.url + "/hang"}, 201)
        cp.ok("POST", "/alert-rules", {"name": "breaker", "kind": "circuit_open",
                                       "channels": ["h1", "h2"]}, 201)
        circuit(fresh_db, "dep-x", "circuit_consecutive")
        wait_for("both deliveries", lambda: len(receiver.on("/hang")) == 2)
        a, b = receiver.on("/hang")
        # each holds its answer past the 1.5 s timeout: one at a time, the second waits
        assert b["t"] - a["t"] >= 1.4, b["t"] - a["t"]
        wait_for("both recorded", lambda: len(cp.ok(
            "GET", "/alert-deliveries?state=delivered")["data"]) == 2)
    finally:
        cp.stop()


# ---- restart, and two control planes --------------------------------------------------------------

def test_a_pending_delivery_is_sent_after_the_control_plane_is_killed(
        build_dir, tmp_path, fresh_db, receiver):
    cp = ControlPlane(build_dir, str(tmp_path), fresh_db.url)
    provider_and_deployments(cp, [("dep-x", "x-up")])
    cp.ok("POST", "/alert-channels", {"name": "gen", "type": "generic",
                                      "url": receiver.url + "/gen"}, 201)
    cp.ok("POST", "/alert-rules", {"name": "breaker", "kind": "circuit_open",
                                   "channels": ["gen"]}, 201)
    receiver.fail = 1000
    circuit(fresh_db, "dep-x", "circuit_consecutive")
    wait_for("two failed attempts", lambda: len(receiver.on("/gen")) >= 2)
    cp.stop(sig=9)
    n_before = len(receiver.on("/gen"))
    rows = fresh_db.psql("SELECT count(*) FROM alert_deliveries WHERE delivered_at IS NULL")
    assert rows == [["1"]]
    receiver.fail = 0
    cp2 = ControlPlane(build_dir, str(tmp_path), fresh_db.url, name="cp2")
    try:
        wait_for("the delivery after the restart", lambda: receiver.ok("/gen"), timeout=30)
        time.sleep(1)
        assert len(receiver.ok("/gen")) == 1
        assert receiver.ok("/gen")[0]["body"]["subject"] == "dep-x"
        assert len(receiver.on("/gen")) > n_before
        # The state survived too: the restarted evaluator does not notify the same alert again.
        assert len(firing(receiver.on("/gen"))) == len(receiver.on("/gen"))
        assert fresh_db.psql("SELECT count(*) FROM alert_deliveries") == [["1"]]
    finally:
        cp2.stop()


def test_two_control_planes_send_one_notification_per_transition(build_dir, tmp_path, fresh_db,
                                                                 receiver):
    a = ControlPlane(build_dir, str(tmp_path), fresh_db.url, name="cp-a", node="node-a",
                     args=["--alert-interval-ms", "100"])
    b = ControlPlane(build_dir, str(tmp_path), fresh_db.url, name="cp-b", node="node-b",
                     args=["--alert-interval-ms", "100"])
    try:
        provider_and_deployments(a, [("dep-x", "x-up"), ("dep-y", "y-up")])
        a.ok("POST", "/alert-channels", {"name": "gen", "type": "generic",
                                         "url": receiver.url + "/gen"}, 201)
        b.ok("POST", "/alert-rules", {"name": "breaker", "kind": "circuit_open",
                                      "channels": ["gen"]}, 201)
        for round_ in range(3):
            circuit(fresh_db, "dep-x", "circuit_consecutive", node="n1")
            circuit(fresh_db, "dep-y", "circuit_retry_after", node="n2")
            wait_for("two firing notifications",
                     lambda: len(firing(receiver.on("/gen"))) >= 2 * (round_ + 1))
            time.sleep(0.5)
            circuit(fresh_db, "dep-x", "circuit_closed", node="n1")
            circuit(fresh_db, "dep-y", "circuit_closed", node="n2")
            wait_for("two resolved notifications",
                     lambda: len(resolved(receiver.on("/gen"))) >= 2 * (round_ + 1))
            time.sleep(0.5)
        time.sleep(1)
        reqs = receiver.on("/gen")
        assert len(firing(reqs)) == 6 and len(resolved(reqs)) == 6, [
            (r["body"]["status"], r["body"]["subject"], r["body"]["node"]) for r in reqs]
        for subject in ("dep-x", "dep-y"):
            seq = [r["body"]["status"] for r in reqs if r["body"]["subject"] == subject]
            assert seq == ["firing", "resolved"] * 3, seq
        # Both evaluated (under the lock, in turn); the events agree with the webhooks.
        ev = a.ok("GET", "/events?kind=alert&limit=100")["data"]
        assert len(ev) == 12
        ma, mb = a.metrics(), b.metrics()
        assert ma["switchyard_alert_evaluations_total"] > 0
        assert mb["switchyard_alert_evaluations_total"] > 0
        assert ma["switchyard_alert_webhooks_sent_total"] + \
            mb["switchyard_alert_webhooks_sent_total"] == 12
    finally:
        a.stop()
        b.stop()


# ---- what rules measure ------------------------------------------------------------------------

def usage_row(node, kind, name, requests, errors=0, bucket=None, tokens=0):
    """SQL for a rollup of the current minute, as usage_flush() writes it; <bucket> (0-based,
    hist.h) holds every request's latency."""
    hist = "NULL" if bucket is None else (
        f"(SELECT array_agg(CASE WHEN i = {bucket + 1} THEN {requests} ELSE 0 END ORDER BY i)"
        f" FROM generate_series(1, 40) i)")
    return (f"INSERT INTO usage_minute (minute, node, kind, name, requests, successes, errors,"
            f" prompt_tokens, latency_count, latency_buckets) VALUES (date_trunc('minute', now()),"
            f" '{node}', '{kind}', '{name}', {requests}, {requests - errors}, {errors}, {tokens},"
            f" {requests if bucket is not None else 0}, {hist});")


def test_rules_measure_the_rollups_wait_for_minutes_and_repeat(build_dir, tmp_path, fresh_db,
                                                               receiver):
    cp = ControlPlane(build_dir, str(tmp_path), fresh_db.url)
    try:
        provider_and_deployments(cp, [("dep-a", "a-up"), ("dep-b", "b-up")])
        cp.ok("PATCH", "/deployments/dep-a", {"limits": {"rpm": 10, "tpm": 1000}})
        cp.ok("POST", "/alert-channels", {"name": "gen", "type": "generic",
                                          "url": receiver.url + "/gen"}, 201)
        # dep-a: 9 + 3 requests on two nodes, all within (1024, 1536] ms; dep-b: fast. In one
        # transaction, before the rules: every evaluation sees all of it.
        fresh_db.psql(usage_row("n1", "deployment", "dep-a", 9, bucket=20, tokens=500) +
                      usage_row("n2", "deployment", "dep-a", 3, bucket=20, tokens=100) +
                      usage_row("n1", "deployment", "dep-b", 10, bucket=3) +
                      usage_row("n1", "model", "alpha", 20, errors=5) +
                      # 9.5 spent by agent bot-a's key today, 1 by bot-b's
                      "INSERT INTO usage_minute (minute, node, kind, name, agent, requests,"
                      " successes, cost) VALUES (date_trunc('minute', now()), 'n1', 'key', 'k1',"
                      " 'bot-a', 1, 1, 9.5), (date_trunc('minute', now()), 'n1', 'key', 'k2',"
                      " 'bot-b', 1, 1, 1);")
        cp.ok("POST", "/budgets", {"name": "team-a", "scope": "agent", "subject": "bot-a",
                                   "amount": 10, "period": "day"}, 201)
        cp.ok("POST", "/budgets", {"name": "team-b", "scope": "agent", "subject": "bot-b",
                                   "amount": 10, "period": "day"}, 201)
        circuit(fresh_db, "dep-b", "circuit_consecutive")
        for rule in (
                {"name": "slow", "kind": "p95_latency", "threshold": 100, "min_requests": 5},
                {"name": "busy", "kind": "limit_use", "limit": "rpm", "threshold": 80},
                {"name": "tokens", "kind": "limit_use", "limit": "tpm", "threshold": 80},
                {"name": "model-errors", "kind": "error_rate", "scope": "model",
                 "target": "alpha", "threshold": 10, "min_requests": 10, "for_minutes": 5},
                {"name": "spend", "kind": "budget_use", "threshold": 90},
                {"name": "again", "kind": "circuit_open", "target": "dep-b",
                 "repeat_minutes": 1}):
            cp.ok("POST", "/alert-rules", dict(rule, channels=["gen"]), 201)

        def got(rule):
            return [r["body"] for r in receiver.on("/gen") if r["body"]["rule"] == rule]
        wait_for("four rules firing",
                 lambda: all(got(r) for r in ("slow", "busy", "spend", "again")))
        time.sleep(0.6)
        slow = got("slow")
        assert [(b["subject"], b["value"]) for b in slow] == [("dep-a", 1536)]  # dep-b: 4 ms
        busy = got("busy")
        assert [(b["subject"], b["value"]) for b in busy] == [("dep-a", 120)]  # both nodes
        assert got("tokens") == []  # 600 of 1000 tokens: 60%
        assert [(b["subject"], b["value"]) for b in got("spend")] == [("team-a (bot-a)", 95)]
        assert got("model-errors") == []
        pending = cp.ok("GET", "/alerts?state=pending")["data"]
        assert [(a["rule"], a["subject"], a["value"]) for a in pending] == \
            [("model-errors", "alpha", 25)]

        # for_minutes: breaching for 5 minutes (backdated) fires.
        fresh_db.psql("UPDATE alert_states SET started_at = started_at - interval '6 minutes'"
                      " WHERE state = 'pending'")
        wait_for("model-errors firing", lambda: got("model-errors"))
        assert got("model-errors")[0]["subject"] == "alpha"

        # repeat_minutes: a still-firing alert notifies again once the interval has passed.
        assert len(got("again")) == 1
        fresh_db.psql("UPDATE alert_states SET notified_at = now() - interval '2 minutes'"
                      " WHERE subject = 'dep-b'")
        wait_for("a repeated notification", lambda: len(got("again")) == 2)
        time.sleep(0.6)
        again = got("again")
        assert len(again) == 2 and again[1]["repeat"] is True and again[1]["status"] == "firing"

        # Disabling a rule ends its alerts without a notification.
        cp.ok("PATCH", "/alert-rules/busy", {"enabled": False})
        wait_for("busy resolved", lambda: cp.ok("GET", "/alerts?rule=busy")["data"][0]["state"]
                 == "resolved")
        time.sleep(0.6)
        assert len(got("busy")) == 1
    finally:
        cp.stop()


# ---- real traffic ------------------------------------------------------------------------------------

class DataPlane(harness.HTTPClientMixin):
    def __init__(self, build_dir, workdir, sock, shm, node):
        exe = os.path.join(build_dir, "dataplane", "switchyard-dataplane")
        port_file = os.path.join(workdir, "dp.port")
        argv = [exe, "--listen", "127.0.0.1:0", "--workers", "1", "--port-file", port_file,
                "--control-socket", sock, "--node-id", node, "--shm", shm]
        self.process = harness.ManagedProcess("dp", argv, os.path.join(workdir, "dp.log"))
        self.port = harness.wait_port_file(self.process, port_file, 10)
        harness.wait_until_answers(self, "/healthz", 10, 200)

    def chat(self, model, key):
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
        status, _, _ = self.json("POST", CHAT, body, headers={"Authorization": f"Bearer {key}"})
        return status


@pytest.mark.timeout(150)
def test_traffic_fires_error_rate_circuit_and_no_traffic_then_resolves(
        build_dir, tmp_path, fresh_db, mock, receiver):
    sockdir = tempfile.mkdtemp(prefix="sy-al-")
    sock = os.path.join(sockdir, "cp.sock")
    shm = f"/dev/shm/sy-alerts-test-{os.getpid()}"
    cp = ControlPlane(build_dir, str(tmp_path), fresh_db.url, sock=sock, shm=shm, node="node-t")
    dp = None
    try:
        mock.reset()
        mock.config({"by_model": {"e-up": {"status": 500}, "c-up": {"status": 500}}})
        provider_and_deployments(cp, [("dep-e", "e-up"), ("dep-c", "c-up"),
                                      ("dep-idle", "i-up")], base_url=mock.url)
        no_retry = {"retry": {"attempts": 1}}
        cp.ok("POST", "/models", {"name": "m-e", "targets": [{"deployment": "dep-e"}],
                                  "policy": dict(no_retry, circuit={"consecutive": 1000,
                                                                    "min_requests": 1000})}, 201)
        cp.ok("POST", "/models", {"name": "m-c", "targets": [{"deployment": "dep-c"}],
                                  "policy": dict(no_retry, circuit={"consecutive": 3,
                                                                    "cooldown_ms": 600000})},
              201)
        key = cp.ok("POST", "/keys", {"name": "k"}, 201)["key"]
        # dep-idle has existed for longer than the no_traffic window (a new deployment is not
        # silent, only new): backdate it without the touch trigger, which keeps created_at.
        fresh_db.psql("ALTER TABLE deployments DISABLE TRIGGER deployments_touch;"
                      "UPDATE deployments SET created_at = now() - interval '10 minutes'"
                      " WHERE name = 'dep-idle';"
                      "ALTER TABLE deployments ENABLE TRIGGER deployments_touch")
        cp.ok("POST", "/alert-channels", {"name": "gen", "type": "generic",
                                          "url": receiver.url + "/gen"}, 201)
        cp.ok("POST", "/alert-rules", {"name": "errors", "kind": "error_rate",
                                       "target": "dep-e", "threshold": 50, "window_minutes": 1,
                                       "min_requests": 3, "channels": ["gen"]}, 201)
        cp.ok("POST", "/alert-rules", {"name": "breaker", "kind": "circuit_open",
                                       "target": "dep-c", "channels": ["gen"]}, 201)
        cp.ok("POST", "/alert-rules", {"name": "silence", "kind": "no_traffic",
                                       "scope": "deployment", "window_minutes": 1,
                                       "channels": ["gen"]}, 201)
        dp = DataPlane(build_dir, str(tmp_path), sock, shm, "node-t")

        def about(rule, subject, status):
            return [r for r in receiver.on("/gen") if r["body"]["rule"] == rule and
                    r["body"]["subject"] == subject and r["body"]["status"] == status]

        # The only silent deployment is the old one with no traffic.
        wait_for("no_traffic on dep-idle", lambda: about("silence", "dep-idle", "firing"))
        assert not about("silence", "dep-e", "firing") and not about("silence", "dep-c", "firing")

        for _ in range(4):
            assert dp.chat("m-e", key) >= 500
        got = wait_for("error_rate firing", lambda: about("errors", "dep-e", "firing"))[0]["body"]
        assert got["kind"] == "error_rate" and got["value"] == 100 and got["threshold"] == 50

        for _ in range(3):
            assert dp.chat("m-c", key) >= 500
        got = wait_for("circuit_open firing", lambda: about("breaker", "dep-c", "firing"))
        assert got[0]["body"]["value"] == 1

        # Recovery: 20 successes take dep-e's error rate to 4 in 24 (17%): resolved.
        mock.config({"by_model": {"c-up": {"status": 500}}})
        for _ in range(20):
            assert dp.chat("m-e", key) == 200
        got = wait_for("error_rate resolved", lambda: about("errors", "dep-e", "resolved"))
        assert got[0]["body"]["value"] < 50
        time.sleep(1)
        assert len(about("errors", "dep-e", "firing")) == 1  # deduplicated
        assert len(about("breaker", "dep-c", "firing")) == 1
        assert len(about("silence", "dep-idle", "firing")) == 1

        firing_now = cp.ok("GET", "/alerts?state=firing")["data"]
        assert sorted((a["rule"], a["subject"]) for a in firing_now) == \
            [("breaker", "dep-c"), ("silence", "dep-idle")]
        res = cp.ok("GET", "/alerts?state=resolved&rule=errors")["data"]
        assert len(res) == 1 and res[0]["subject"] == "dep-e" and res[0]["fired_at"]
        wait_for("the firing gauge", lambda: cp.metrics().get("switchyard_alerts_firing") == 2)
    finally:
        if dp:
            dp.process.kill()
        cp.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
        if os.path.exists(shm):
            os.unlink(shm)
