# SPDX-License-Identifier: Apache-2.0
"""GET /metrics: the control plane reads the data plane's shared-memory counters and serves them
in Prometheus' text format, with names from the routing table it publishes.

One node for the module: real PostgreSQL, a control plane with --shm, a data plane of 2 workers
on the same segment fed by the control socket, the mock provider. Config goes through the admin
API. A known set of requests is sent once (successes, one of them streamed, 4xx and 5xx
failures); the tests then check the exposition against it, have `promtool check metrics`
validate it, and have a real Prometheus (Debian's /usr/bin/prometheus) scrape the node and
answer a PromQL query with the number of requests sent.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse

import pytest

import harness
from pg import pg_server  # noqa: F401

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MASTER_KEY = "5e" * 32
ADMIN_TOKEN = "admin-token-metrics-0123456789"
METRICS_TOKEN = "metrics-token-abcdefghijklmnop"
PROVIDER_SECRET = "sk-provider-secret-do-not-leak-4242"
CHAT = "/v1/chat/completions"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# What the module sends (see the `node` fixture).
N_OK, N_STREAM, N_4XX, N_5XX = 7, 1, 3, 2
PROMPT_TOKENS = 1      # "hi": 2 characters / 4, at least 1 (the mock's rule)
COMPLETION_TOKENS = 5  # the mock's 5 words
# prices per million tokens, so each success costs 1 x 1.0 + 5 x 2.0 = 11 currency units
PRICE = {"input": 1000000, "output": 2000000}
COST_PER_SUCCESS = 11
AGENT = 'ci "bot"\\1'  # a quote and a backslash: label values must be escaped
USER = "ana"


# ---- processes ----------------------------------------------------------------------------------

def free_port():
    """A free TCP port on 127.0.0.1, below 32768 when one is found there quickly."""
    import random
    for port in random.sample(range(20000, 32000), 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControlPlane(harness.HTTPClientMixin):
    def __init__(self, build_dir, workdir, db_url, sock, shm=None, env=None, name="cp"):
        exe = os.path.join(build_dir, "controlplane", "switchyard-controlplane")
        self.port_file = os.path.join(workdir, f"{name}.port")
        argv = [exe, "serve", "--database-url", db_url, "--admin-listen", "127.0.0.1:0",
                "--admin-token", ADMIN_TOKEN, "--socket", sock, "--node-id", "node-m",
                "--port-file", self.port_file, "--log-level", "debug"]
        if shm:
            argv += ["--shm", shm]
        full_env = {"SWITCHYARD_MASTER_KEY": MASTER_KEY}
        full_env.update(env or {})
        self.process = harness.ManagedProcess(name, argv, os.path.join(workdir, f"{name}.log"),
                                              env=full_env)
        self.proc = self.process.proc
        self.port = harness.wait_port_file(self.process, self.port_file, 15)

    def admin(self, method, path, body=None):
        return self.json(method, "/admin/v1" + path, body,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def ok(self, method, path, body=None, want=200):
        status, _, doc = self.admin(method, path, body)
        assert status == want, (method, path, status, doc)
        return doc

    def metrics(self, token=None):
        """(status, headers, body text) of GET /metrics."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, hdrs, body = self.request("GET", "/metrics", headers=headers)
        return status, hdrs, body.decode()


class DataPlane(harness.HTTPClientMixin):
    def __init__(self, build_dir, workdir, sock, shm, workers=2, name="dp"):
        exe = os.path.join(build_dir, "dataplane", "switchyard-dataplane")
        self.port_file = os.path.join(workdir, f"{name}.port")
        argv = [exe, "--listen", "127.0.0.1:0", "--workers", str(workers), "--port-file",
                self.port_file, "--control-socket", sock, "--node-id", "node-m", "--shm", shm]
        self.process = harness.ManagedProcess(name, argv, os.path.join(workdir, f"{name}.log"))
        self.proc = self.process.proc
        self.pid = self.process.pid
        self.port = harness.wait_port_file(self.process, self.port_file, 10)
        harness.wait_until_answers(self, "/healthz", 10, 200)

    def chat(self, model, key, stream=False):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {key}"}
        if not stream:
            return self.json("POST", CHAT, body, headers=headers)[0]
        body["stream"] = True
        with self.stream(CHAT, body, headers=headers) as s:
            events = s.collect()
            assert events and events[-1].done, [e.data for e in events]
            return s.status


# ---- the text format ----------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def unescape(v):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def parse(text):
    """{(name, frozenset of (label, value)): float}, and {family: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        pairs = frozenset((k, unescape(v)) for k, v in LABEL.findall(labels or ""))
        key = (name, pairs)
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = float(value)
    return samples, types


def value(samples, name, **labels):
    """The value of the one series of <name> whose labels include <labels>."""
    want = {(k, str(v)) for k, v in labels.items()}
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert len(found) == 1, f"{name}{labels}: {len(found)} series"
    return found[0]


def series(samples, name, **labels):
    want = {(k, str(v)) for k, v in labels.items()}
    return {ls: v for (n, ls), v in samples.items() if n == name and want <= ls}


# ---- the node -----------------------------------------------------------------------------------

def wait_for(what, pred, timeout=10, interval=0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Node:
    pass


@pytest.fixture(scope="module")
def node(build_dir, pg_server, mock, tmp_path_factory):  # noqa: F811
    """The node, after the module's requests; attributes: cp, dp, key, key_id, key_prefix,
    shm, workdir."""
    n = Node()
    n.workdir = str(tmp_path_factory.mktemp("metrics"))
    n.sockdir = tempfile.mkdtemp(prefix="sy-met-")
    n.sock = os.path.join(n.sockdir, "cp.sock")
    n.shm = os.path.join(n.sockdir, "segment")
    pg_server.psql("CREATE DATABASE metrics_test")
    db_url = pg_server.url_for("metrics_test")
    mock.reset()
    mock.config({"by_model": {"up-4xx": {"status": 400}, "up-5xx": {"status": 503}}})
    n.cp = ControlPlane(build_dir, n.workdir, db_url, n.sock, shm=n.shm)
    try:
        n.cp.ok("POST", "/providers", {
            "name": "mock-prov", "kind": "custom", "base_url": mock.url, "format": "openai",
            "auth_style": "bearer", "api_key": PROVIDER_SECRET}, 201)
        for dep, upstream in (("dep-ok", "up-ok"), ("dep-4xx", "up-4xx"),
                              ("dep-5xx", "up-5xx")):
            n.cp.ok("POST", "/deployments", {"name": dep, "provider": "mock-prov",
                                             "model": upstream, "price": PRICE}, 201)
        for model, dep in (("m-ok", "dep-ok"), ("m-4xx", "dep-4xx"), ("m-5xx", "dep-5xx")):
            n.cp.ok("POST", "/models", {"name": model, "targets": [{"deployment": dep}]}, 201)
        doc = n.cp.ok("POST", "/keys", {"name": "metrics agent", "agent": AGENT, "user": USER},
                      201)
        n.key, n.key_id, n.key_prefix = doc["key"], doc["id"], doc["prefix"]
        n.dp = DataPlane(build_dir, n.workdir, n.sock, n.shm)

        # both workers on the newest table, before any request is counted
        def current(after=0):
            st = n.cp.ok("GET", "/status")
            pub = st.get("publisher", st)
            ws, v = pub.get("workers", []), pub["config_version"]
            return v > after and len(ws) == 2 and all(w["version"] == v for w in ws) and v
        v = wait_for("both workers on the current table", current)
        # a change while the workers are connected, so the publish latency is measured
        n.cp.ok("POST", "/models", {"name": "m-late", "targets": [{"deployment": "dep-ok"}]},
                201)
        wait_for("both workers on the newest table", lambda: current(v))

        for _ in range(N_OK):
            assert n.dp.chat("m-ok", n.key) == 200
        for _ in range(N_STREAM):
            assert n.dp.chat("m-ok", n.key, stream=True) == 200
        for _ in range(N_4XX):
            assert n.dp.chat("m-4xx", n.key) == 400
        for _ in range(N_5XX):
            assert n.dp.chat("m-5xx", n.key) >= 500

        # accounting ends after the last byte the client reads: wait for it to land
        total = N_OK + N_STREAM + N_4XX + N_5XX

        def counted():
            status, _, text = n.cp.metrics()
            if status != 200:
                return False
            s, _ = parse(text)
            got = sum(series(s, "switchyard_request_duration_seconds_count").values())
            return got == total
        wait_for("every request counted", counted)
        yield n
    finally:
        for p in (getattr(n, "dp", None), n.cp):
            if p:
                p.process.kill()
        shutil.rmtree(n.sockdir, ignore_errors=True)
        mock.config({})


@pytest.fixture(scope="module")
def scrape(node):
    status, headers, text = node.cp.metrics()
    assert status == 200, text
    samples, types = parse(text)
    return headers, text, samples, types


# ---- the exposition -----------------------------------------------------------------------------

def test_metrics_answer_200_in_text_format_0_0_4_without_a_token(scrape):
    headers, text, _, _ = scrape
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert text.endswith("\n")


def test_promtool_check_metrics_accepts_the_exposition(scrape):
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape[1], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_family_has_help_and_type_and_the_switchyard_prefix(scrape):
    _, text, samples, types = scrape
    helps = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# HELP ")}
    assert set(types) == helps
    for (name, _) in samples:
        assert name.startswith("switchyard_")
        fam = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or (fam in types and types[fam] == "histogram"), name
    for fam in ("switchyard_requests_total", "switchyard_retries_total",
                "switchyard_fallbacks_total", "switchyard_rate_limit_rejections_total",
                "switchyard_prompt_tokens_total", "switchyard_completion_tokens_total",
                "switchyard_cost_total", "switchyard_deployment_requests_total",
                "switchyard_deployment_in_flight", "switchyard_key_requests_total",
                "switchyard_key_cost_total", "switchyard_circuit_opens_total",
                "switchyard_decision_log_dropped_total"):
        assert types[fam] == ("gauge" if fam.endswith("in_flight") else "counter"), fam
    for fam in ("switchyard_request_duration_seconds", "switchyard_time_to_first_byte_seconds",
                "switchyard_deployment_request_duration_seconds"):
        assert types[fam] == "histogram", fam
    for fam in ("switchyard_circuit_state", "switchyard_dataplane_workers",
                "switchyard_config_version", "switchyard_connected_workers",
                "switchyard_publish_latency_seconds", "switchyard_database_up",
                "switchyard_controlplane_start_time_seconds"):
        assert types[fam] == "gauge", fam


def by_outcome(samples, name, **labels):
    return {dict(ls)["outcome"]: v for ls, v in series(samples, name, **labels).items()}


# After its retries, a request whose deployment kept answering 5xx is counted by the data plane
# as upstream_5xx or, when nothing was left to try, as unavailable.
FAILED_5XX = {"upstream_5xx", "unavailable"}


def check_outcomes(got, success, upstream_4xx, failed_5xx):
    """<got>: {outcome: count} of one model or key, against what the module sent."""
    assert len(got) == 14 and "rate_limited" in got  # every outcome listed, zeros included
    assert got["success"] == success
    assert got["upstream_4xx"] == upstream_4xx
    assert sum(got[o] for o in FAILED_5XX) == failed_5xx
    others = set(got) - {"success", "upstream_4xx"} - FAILED_5XX
    assert all(got[o] == 0 for o in others), got


def test_request_counters_by_model_equal_the_requests_sent(scrape):
    s = scrape[2]
    check_outcomes(by_outcome(s, "switchyard_requests_total", model="m-ok"), N_OK + N_STREAM, 0, 0)
    check_outcomes(by_outcome(s, "switchyard_requests_total", model="m-4xx"), 0, N_4XX, 0)
    check_outcomes(by_outcome(s, "switchyard_requests_total", model="m-5xx"), 0, 0, N_5XX)
    assert value(s, "switchyard_prompt_tokens_total", model="m-ok") == \
        (N_OK + N_STREAM) * PROMPT_TOKENS
    assert value(s, "switchyard_completion_tokens_total", model="m-ok") == \
        (N_OK + N_STREAM) * COMPLETION_TOKENS
    assert value(s, "switchyard_cost_total", model="m-ok") == (N_OK + N_STREAM) * COST_PER_SUCCESS
    assert value(s, "switchyard_cost_total", model="m-4xx") == 0
    assert value(s, "switchyard_rate_limit_rejections_total", model="m-ok") == 0


def test_histograms_are_cumulative_and_count_every_request(scrape):
    s = scrape[2]
    sent = {"m-ok": N_OK + N_STREAM, "m-4xx": N_4XX, "m-5xx": N_5XX}
    for model, n in sent.items():
        fam = "switchyard_request_duration_seconds"
        assert value(s, fam + "_count", model=model) == n
        buckets = sorted(((float(dict(ls)["le"]), v)
                          for ls, v in series(s, fam + "_bucket", model=model).items()))
        assert len(buckets) == 40 and buckets[-1][0] == float("inf")
        assert [v for _, v in buckets] == sorted(v for _, v in buckets), "not cumulative"
        assert buckets[-1][1] == n
        assert buckets[0][0] == 0.001 and (600.0, n) in buckets
        assert 0 < value(s, fam + "_sum", model=model) < 10 * n
    # every success had a first byte, the streamed one included
    assert value(s, "switchyard_time_to_first_byte_seconds_count", model="m-ok") == N_OK + N_STREAM


def test_deployment_counters_carry_deployment_provider_and_upstream_model(scrape):
    s = scrape[2]
    labels = dict(deployment="dep-ok", provider="mock-prov", model="up-ok")
    assert value(s, "switchyard_deployment_requests_total", outcome="success", **labels) == \
        N_OK + N_STREAM
    assert value(s, "switchyard_deployment_request_duration_seconds_count", **labels) == \
        N_OK + N_STREAM
    assert value(s, "switchyard_deployment_cost_total", **labels) == \
        (N_OK + N_STREAM) * COST_PER_SUCCESS
    assert value(s, "switchyard_deployment_in_flight", **labels) == 0
    assert value(s, "switchyard_deployment_requests_total", deployment="dep-4xx",
                 outcome="upstream_4xx") == N_4XX
    # a 5xx may be retried on the same deployment: each attempt counts there
    retries = value(s, "switchyard_retries_total", model="m-5xx")
    assert 0 <= retries <= N_5XX
    assert value(s, "switchyard_deployment_requests_total", deployment="dep-5xx",
                 outcome="upstream_5xx") == N_5XX + retries
    for dep in ("dep-ok", "dep-4xx", "dep-5xx"):
        assert value(s, "switchyard_circuit_state", deployment=dep) == 0
        assert value(s, "switchyard_circuit_opens_total", deployment=dep) == 0
    # the public model's series are not mixed with the deployments'
    assert not series(s, "switchyard_requests_total", model="up-ok")


def test_key_counters_name_the_key_by_id_and_prefix_with_agent_and_user(node, scrape):
    s = scrape[2]
    labels = dict(key=node.key_id, key_prefix=node.key_prefix, agent=AGENT, user=USER)
    check_outcomes(by_outcome(s, "switchyard_key_requests_total", **labels), N_OK + N_STREAM,
                   N_4XX, N_5XX)
    assert value(s, "switchyard_key_prompt_tokens_total", **labels) == \
        (N_OK + N_STREAM) * PROMPT_TOKENS
    assert value(s, "switchyard_key_cost_total", **labels) == (N_OK + N_STREAM) * COST_PER_SUCCESS
    assert '\\"bot\\"\\\\1' in scrape[1], "the agent's quote and backslash are escaped"


def test_node_and_control_plane_metrics(node, scrape):
    s = scrape[2]
    assert value(s, "switchyard_dataplane_workers") == 2
    assert value(s, "switchyard_connected_workers") == 2
    assert value(s, "switchyard_database_up") == 1
    assert value(s, "switchyard_shm_attached") == 1
    assert value(s, "switchyard_decision_log_dropped_total") == 0
    st = node.cp.ok("GET", "/status")
    assert value(s, "switchyard_config_version") == st.get("publisher", st)["config_version"]
    assert 0 <= value(s, "switchyard_publish_latency_seconds") < 5
    start = value(s, "switchyard_controlplane_start_time_seconds")
    assert time.time() - 600 < start <= time.time()


def test_no_secret_appears_in_the_metrics(node, scrape):
    text = scrape[1]
    assert PROVIDER_SECRET not in text
    assert node.key not in text
    assert node.key[10:20] not in text  # no slice of the key beyond its display prefix
    assert ADMIN_TOKEN not in text and MASTER_KEY not in text


def test_only_get_and_head_are_answered(node):
    status, _, _ = node.cp.request("POST", "/metrics", b"")
    assert status == 405
    status, hdrs, body = node.cp.request("HEAD", "/metrics")
    assert status == 200 and body == b""


# ---- the token, and a segment that comes later --------------------------------------------------

def test_the_metrics_token_is_required_when_set_and_a_late_segment_is_attached(
        build_dir, pg_server, mock, tmp_path):  # noqa: F811
    pg_server.psql("CREATE DATABASE metrics_token")
    sockdir = tempfile.mkdtemp(prefix="sy-met-")
    try:
        sock, shm = os.path.join(sockdir, "cp.sock"), os.path.join(sockdir, "segment")
        cp = ControlPlane(build_dir, str(tmp_path), pg_server.url_for("metrics_token"), sock,
                          shm=shm, env={"SWITCHYARD_METRICS_TOKEN": METRICS_TOKEN})
        status, hdrs, _ = cp.metrics()
        assert status == 401 and "bearer" in hdrs.get("www-authenticate", "").lower()
        assert cp.metrics(token=ADMIN_TOKEN)[0] == 401, "the admin token does not open /metrics"
        assert cp.metrics(token=METRICS_TOKEN + "x")[0] == 401
        status, _, text = cp.metrics(token=METRICS_TOKEN)
        assert status == 200
        s, _ = parse(text)
        # no segment yet: the control plane's own metrics only
        assert value(s, "switchyard_shm_attached") == 0
        assert not series(s, "switchyard_dataplane_workers")
        assert METRICS_TOKEN not in cp.process.log()
        # the data plane starts later: attached within the second
        dp = DataPlane(build_dir, str(tmp_path), sock, shm)

        def attached():
            s, _ = parse(cp.metrics(token=METRICS_TOKEN)[2])
            return (value(s, "switchyard_shm_attached") == 1 and
                    series(s, "switchyard_dataplane_workers") and
                    value(s, "switchyard_dataplane_workers") == 2)
        wait_for("the late segment attached", attached, timeout=5)
        # a restarted data plane makes a new segment: the control plane follows it
        dp.process.kill()
        dp = DataPlane(build_dir, str(tmp_path), sock, shm, name="dp2")
        wait_for("the new segment attached", attached, timeout=5)
        assert "attached read-only (generation" in cp.process.log()
        dp.process.kill()
        cp.process.kill()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


# ---- a real Prometheus --------------------------------------------------------------------------

def prom_query(port, q):
    status, _, body = harness.http_request("127.0.0.1", port, "GET",
                                           "/api/v1/query?query=" + urllib.parse.quote(q))
    doc = harness.parse_json(status, body)
    assert status == 200 and doc["status"] == "success", doc
    return doc["data"]["result"]


@pytest.mark.timeout(90)
@pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK), reason="prometheus is not installed")
def test_a_real_prometheus_scrapes_the_node_and_counts_the_requests_sent(node, tmp_path):
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: switchyard\n    scrape_interval: 1s\n    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{node.cp.port}']\n"
        f"        labels: {{node: node-m}}\n")
    prom = harness.ManagedProcess("prometheus", [
        PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        str(tmp_path / "prometheus.log"))
    try:
        def ready():
            if not prom.alive():
                raise AssertionError("prometheus exited:\n" + prom.tail())
            try:
                return harness.http_request("127.0.0.1", port, "GET", "/-/ready",
                                            timeout=2)[0] == 200
            except OSError:
                return False
        wait_for("prometheus ready", ready, timeout=30, interval=0.2)

        def scraped():
            r = prom_query(port, 'sum(switchyard_requests_total{model="m-ok"})')
            return r and float(r[0]["value"][1]) == N_OK + N_STREAM and r
        wait_for("a scrape with the requests", scraped, timeout=30, interval=0.5)
        up = prom_query(port, 'up{job="switchyard"}')
        assert [float(x["value"][1]) for x in up] == [1.0]
        failed = prom_query(port, 'sum(switchyard_requests_total{model=~"m-4xx|m-5xx",'
                                  'outcome!="success"})')
        assert float(failed[0]["value"][1]) == N_4XX + N_5XX
        count = prom_query(port, 'sum(switchyard_request_duration_seconds_count)')
        assert float(count[0]["value"][1]) == N_OK + N_STREAM + N_4XX + N_5XX
        p95 = prom_query(port, 'histogram_quantile(0.95, sum by (le) '
                               '(switchyard_request_duration_seconds_bucket{model="m-ok"}))')
        assert 0 < float(p95[0]["value"][1]) < 10
    finally:
        prom.kill()


# ---- the deploy assets --------------------------------------------------------------------------

@pytest.mark.skipif(not os.access(PROMTOOL, os.X_OK), reason="promtool is not installed")
def test_promtool_check_rules_accepts_the_alert_rules():
    r = subprocess.run([PROMTOOL, "check", "rules",
                        os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@pytest.mark.skipif(not os.access(PROMTOOL, os.X_OK), reason="promtool is not installed")
def test_promtool_check_config_accepts_the_example_scrape_config(tmp_path):
    # the example names the alert rules by a path relative to itself
    d = tmp_path / "prometheus"
    shutil.copytree(os.path.join(ROOT, "deploy", "prometheus"), d)
    r = subprocess.run([PROMTOOL, "check", "config", str(d / "prometheus.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_grafana_dashboard_queries_only_metrics_we_export(scrape):
    import json
    with open(os.path.join(ROOT, "deploy", "grafana", "switchyard.json")) as f:
        dash = json.load(f)
    types = scrape[3]
    exprs = []

    def walk(p):
        for t in p.get("targets", []):
            exprs.append(t["expr"])
        for sub in p.get("panels", []):
            walk(sub)
    for p in dash["panels"]:
        walk(p)
    assert len(exprs) >= 10
    assert any(v.get("name") == "DS_PROMETHEUS" for v in dash["templating"]["list"]) or \
        any(i.get("name") == "DS_PROMETHEUS" for i in dash.get("__inputs", []))
    for e in exprs:
        for name in re.findall(r"\bswitchyard_[a-z_]+", e):
            fam = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in types or fam in types, f"{name} in {e!r} is not exported"
