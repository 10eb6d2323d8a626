# SPDX-License-Identifier: Apache-2.0
"""Governance end to end: fallback chains, retries, timeouts, circuit breakers shared by the
workers of a node, rate limits, load balancing and routing rules, driven by the mock provider's
faults. One mock plays every deployment: each deployment asks for its own upstream model id, and
the mock's per-model faults (POST /mock/config {"by_model": ...}) decide how each one behaves."""

import collections
import http.client
import json
import threading
import time

import pytest

CHAT = "/v1/chat/completions"
FAST = {"connect_ms": 1000, "first_byte_ms": 2000, "idle_ms": 2000, "total_ms": 10000}


def dep(mock, name, upstream=None, **extra):
    d = {"name": name, "provider": "mock", "model": upstream or name + "-up", "format": "openai",
         "base_url": mock.url, "auth": "bearer", "api_key": "sk-test", "timeouts": dict(FAST)}
    d.update(extra)
    return d


def model(name, targets, **policy):
    m = {"name": name, "targets": [{"deployment": t, "weight": w} for t, w in targets]}
    fallbacks = policy.pop("fallbacks", None)
    if fallbacks:
        m["fallbacks"] = fallbacks
    if policy:
        m["policy"] = policy
    return m


def table(deployments, models):
    return {"version": 1, "deployments": deployments, "models": models}


def chat(gw, model_name="gpt", stream=False, headers=None, timeout=15, **extra):
    body = {"model": model_name, "messages": [{"role": "user", "content": "Say hello"}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    if stream:
        s = gw.stream(CHAT, body, headers=headers, timeout=timeout)
        return s
    return gw.json("POST", CHAT, body, headers=headers, timeout=timeout)


@pytest.fixture
def chain(gateway, mock):
    """gpt (primary) -> claude -> qwen, each one deployment on the mock."""
    mock.reset()
    t = table([dep(mock, "primary"), dep(mock, "backup"), dep(mock, "third")],
              [model("gpt", [("primary", 1)], fallbacks=["claude"],
                     retry={"attempts": 1}),
               model("claude", [("backup", 1)], fallbacks=["qwen"], retry={"attempts": 1}),
               model("qwen", [("third", 1)], retry={"attempts": 1})])
    return gateway(t)


def faults(mock, **by_deployment):
    """Make each named deployment (upstream model id "<name>-up") behave as given."""
    mock.config({"by_model": {name + "-up": f for name, f in by_deployment.items()}})


# ---- fallback on each kind of failure ----------------------------------------------------------

@pytest.mark.parametrize("fault,outcome", [
    ({"status": 500}, "500"),
    ({"status": 503, "body": "overloaded"}, "503"),
    ({"status": 429}, "429"),
    ({"reset": True}, "connect_error"),
    ({"delay_ms": 4000}, "timeout"),
    ({"hang": True}, "timeout"),
    ({"malformed": True}, "malformed"),
])
def test_primary_failure_falls_back_to_the_next_model(chain, mock, fault, outcome):
    faults(mock, primary=fault)
    status, headers, body = chat(chain)
    assert status == 200, body
    assert body["model"] == "backup-up"
    assert headers["x-switchyard-model"] == "claude"
    assert headers["x-switchyard-deployment"] == "backup"
    trace = headers["x-switchyard-trace"]
    assert trace.startswith(f"primary;{outcome};"), trace
    assert "backup;200;" in trace


def test_refused_connection_falls_back(gateway, mock):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    t = table([dep(mock, "primary", base_url=f"http://127.0.0.1:{dead}/v1"), dep(mock, "backup")],
              [model("gpt", [("primary", 1)], fallbacks=["claude"], retry={"attempts": 1}),
               model("claude", [("backup", 1)])])
    gw = gateway(t)
    status, headers, body = chat(gw)
    assert status == 200
    assert headers["x-switchyard-trace"].startswith("primary;connect_error;")


def test_three_level_chain(chain, mock):
    faults(mock, primary={"status": 500}, backup={"status": 502})
    status, headers, body = chat(chain)
    assert status == 200, body
    assert body["model"] == "third-up"
    assert headers["x-switchyard-model"] == "qwen"
    assert [t.split(";")[0] for t in headers["x-switchyard-trace"].split(", ")] == \
        ["primary", "backup", "third"]


def test_when_the_whole_chain_fails_the_last_answer_is_relayed(chain, mock):
    faults(mock, primary={"status": 500}, backup={"status": 502}, third={"status": 503})
    status, headers, body = chat(chain)
    assert status == 503
    assert len(headers["x-switchyard-trace"].split(", ")) == 3


def test_a_client_error_is_not_retried_or_failed_over(chain, mock):
    faults(mock, primary={"status": 400, "body": '{"error":{"message":"bad"}}'})
    status, headers, body = chat(chain)
    assert status == 400
    assert headers["x-switchyard-trace"].count(";") == 2  # one attempt


def test_context_length_error_falls_back_to_a_larger_model(gateway, mock):
    mock.reset()
    t = table([dep(mock, "small"), dep(mock, "large")],
              [model("gpt", [("small", 1)], fallbacks=["gpt-long"],
                     fallback_on=["context_length"], retry={"attempts": 1}),
               model("gpt-long", [("large", 1)])])
    gw = gateway(t)
    faults(mock, small={"status": 400, "body": json.dumps({"error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "code": "context_length_exceeded"}})})
    status, headers, body = chat(gw)
    assert status == 200
    assert body["model"] == "large-up"


# ---- streams --------------------------------------------------------------------------------------

def test_stream_failing_before_content_falls_back_invisibly(chain, mock):
    faults(mock, primary={"abort_after": 0})
    s = chat(chain, stream=True)
    assert s.status == 200
    events = s.collect()
    assert events[-1].done
    assert s.headers["x-switchyard-deployment"] == "backup"
    content = "".join(e.json()["choices"][0]["delta"].get("content", "")
                      for e in events if not e.done and e.json().get("choices"))
    assert content == "Hello from the mock provider."


def test_stream_with_an_error_status_falls_back(chain, mock):
    faults(mock, primary={"status": 503})
    s = chat(chain, stream=True)
    assert s.status == 200
    assert s.collect()[-1].done
    assert s.headers["x-switchyard-trace"].startswith("primary;503;")


def test_stream_cut_after_content_ends_with_an_error_event(chain, mock):
    faults(mock, primary={"abort_after": 2})
    s = chat(chain, stream=True)
    events = s.collect()
    assert not any(e.done for e in events)
    assert "error" in events[-1].json()


# ---- retries ------------------------------------------------------------------------------------

def test_retry_after_is_honoured(gateway, mock):
    mock.reset()
    t = table([dep(mock, "limited"), dep(mock, "spare")],
              [model("gpt", [("limited", 1000), ("spare", 1)],
                     retry={"attempts": 2, "backoff_ms": 1})])
    gw = gateway(t)
    faults(mock, limited={"status": 429, "retry_after": "1"})
    t0 = time.monotonic()
    status, headers, _ = chat(gw)
    took = time.monotonic() - t0
    assert status == 200
    trace = headers["x-switchyard-trace"]
    if not trace.startswith("limited;429;"):
        pytest.skip("the weighted pick went to the spare first")
    assert took >= 0.95, trace


def test_retry_after_beyond_the_cap_is_not_waited_for(gateway, mock):
    mock.reset()
    t = table([dep(mock, "only")], [model("gpt", [("only", 1)],
                                          retry={"attempts": 3, "retry_after_cap_ms": 2000})])
    gw = gateway(t)
    faults(mock, only={"status": 429, "retry_after": "30"})
    t0 = time.monotonic()
    status, headers, _ = chat(gw)
    assert status == 429
    assert headers["retry-after"] == "30"
    assert time.monotonic() - t0 < 1.5


def test_retries_stay_on_the_model_before_falling_back(gateway, mock):
    mock.reset()
    t = table([dep(mock, "a"), dep(mock, "b"), dep(mock, "backup")],
              [model("gpt", [("a", 1), ("b", 1)], fallbacks=["claude"],
                     retry={"attempts": 2, "backoff_ms": 1}),
               model("claude", [("backup", 1)])])
    gw = gateway(t)
    faults(mock, a={"status": 500})
    status, headers, body = chat(gw)
    assert status == 200
    # a failed; the retry went to the sibling b, which answered: no fallback needed.
    deps = [x.split(";")[0] for x in headers["x-switchyard-trace"].split(", ")]
    assert deps[-1] == "b"
    assert "backup" not in deps


# ---- circuit breaker ----------------------------------------------------------------------------

def test_circuit_opens_for_every_worker_and_recovers_half_open(gateway, mock):
    mock.reset()
    circuit = {"consecutive": 3, "cooldown_ms": 1500, "half_open_probes": 1,
               "min_requests": 1000}
    t = table([dep(mock, "primary"), dep(mock, "backup")],
              [model("gpt", [("primary", 1)], fallbacks=["claude"], retry={"attempts": 1},
                     circuit=circuit),
               model("claude", [("backup", 1)])])
    gw = gateway(t, workers=2)
    faults(mock, primary={"status": 500})
    for _ in range(3):
        assert chat(gw)[0] == 200
    # Open now, on every worker: fresh connections land on either worker, and none tries
    # the primary any more.
    before = sum(1 for r in mock.requests() if json.loads(r["body"] or "{}").get("model")
                 == "primary-up")
    for _ in range(10):
        status, headers, _ = chat(gw)
        assert status == 200
        assert headers["x-switchyard-trace"].startswith("backup;"), headers["x-switchyard-trace"]
    after = sum(1 for r in mock.requests() if json.loads(r["body"] or "{}").get("model")
                == "primary-up")
    assert after == before
    # The primary recovers; after the cooldown a probe goes through and closes the circuit.
    mock.config({})
    time.sleep(1.7)
    status, headers, _ = chat(gw)
    assert headers["x-switchyard-trace"].startswith("primary;200;")
    for _ in range(4):
        assert chat(gw)[1]["x-switchyard-deployment"] == "primary"


# ---- load balancing -------------------------------------------------------------------------

def _spread(gw, n, threads=4, model_name="gpt"):
    counts = collections.Counter()
    lock = threading.Lock()
    per = n // threads

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        body = json.dumps({"model": model_name, "messages": [{"role": "user", "content": "x"}]})
        for _ in range(per):
            conn.request("POST", CHAT, body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            with lock:
                counts[r.getheader("x-switchyard-deployment")] += 1
        conn.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return counts


@pytest.mark.timeout(180)
def test_weighted_split_within_3_percent_over_10000_requests(gateway, mock):
    mock.reset()
    t = table([dep(mock, "heavy"), dep(mock, "light")],
              [model("gpt", [("heavy", 3), ("light", 1)], balance="weighted")])
    gw = gateway(t, workers=2)
    counts = _spread(gw, 10000)
    total = sum(counts.values())
    assert total == 10000
    share = counts["heavy"] / total
    assert abs(share - 0.75) <= 0.03, counts


def test_round_robin_alternates(gateway, mock):
    mock.reset()
    t = table([dep(mock, "a"), dep(mock, "b")],
              [model("gpt", [("a", 1), ("b", 1)], balance="round_robin")])
    gw = gateway(t)
    seen = [chat(gw)[1]["x-switchyard-deployment"] for _ in range(6)]
    assert seen.count("a") == 3 and seen.count("b") == 3


def test_least_connections_prefers_the_idle_deployment(gateway, mock):
    mock.reset()
    t = table([dep(mock, "busy"), dep(mock, "idle")],
              [model("gpt", [("busy", 1), ("idle", 1)], balance="least_connections"),
               model("busy-only", [("busy", 1)])])
    gw = gateway(t, workers=2)
    faults(mock, busy={"delay_ms": 1500})
    slow = [threading.Thread(target=chat, args=(gw, "busy-only")) for _ in range(4)]
    for th in slow:
        th.start()
    time.sleep(0.3)
    picks = [chat(gw)[1]["x-switchyard-deployment"] for _ in range(8)]
    for th in slow:
        th.join(10)
    assert picks.count("idle") == 8, picks


def test_cost_strategy_picks_the_cheapest_healthy(gateway, mock):
    mock.reset()
    t = table([dep(mock, "pricey", price={"input": 5, "output": 15}),
               dep(mock, "cheap", price={"input": 0.1, "output": 0.4})],
              [model("gpt", [("pricey", 1), ("cheap", 1)], balance="cost",
                     retry={"attempts": 2, "backoff_ms": 1})])
    gw = gateway(t)
    assert {chat(gw)[1]["x-switchyard-deployment"] for _ in range(5)} == {"cheap"}
    faults(mock, cheap={"status": 500})
    status, headers, _ = chat(gw)
    assert status == 200
    assert headers["x-switchyard-deployment"] == "pricey"


# ---- rate limits --------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_node_wide_rpm_limit_holds_within_5_percent_across_workers(gateway, mock):
    mock.reset()
    t = table([dep(mock, "limited", limits={"rpm": 120})],
              [model("gpt", [("limited", 1)], retry={"attempts": 1})])
    gw = gateway(t, workers=2)
    results = collections.Counter()
    lock = threading.Lock()
    t0 = time.monotonic()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        body = json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
        for _ in range(100):
            conn.request("POST", CHAT, body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            with lock:
                results[r.status] += 1
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.close()

    ts = [threading.Thread(target=client) for _ in range(4)]
    for th in ts:
        th.start()
    for th in ts:
        th.join(60)
    elapsed = time.monotonic() - t0
    allowed = 120 + 120 * elapsed / 60  # the burst, plus what refilled meanwhile
    assert results[200] + results[429] == 400
    assert abs(results[200] - allowed) <= 0.05 * allowed, (results, elapsed)


def test_rate_limited_answer_is_429_with_retry_after(gateway, mock):
    mock.reset()
    t = table([dep(mock, "limited", limits={"rpm": 2})],
              [model("gpt", [("limited", 1)], retry={"attempts": 1})])
    gw = gateway(t)
    assert chat(gw)[0] == 200
    assert chat(gw)[0] == 200
    status, headers, body = chat(gw)
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert body["error"]["code"] == "rate_limit_exceeded"


def test_a_deployment_near_its_limit_sheds_to_its_sibling(gateway, mock):
    mock.reset()
    t = table([dep(mock, "small", limits={"rpm": 10}), dep(mock, "big")],
              [model("gpt", [("small", 100), ("big", 1)], shed_percent=50)])
    gw = gateway(t)
    picks = [chat(gw)[1]["x-switchyard-deployment"] for _ in range(12)]
    # "small" takes traffic until it is half used, then the sibling takes over before small
    # is exhausted: no request is refused.
    assert 4 <= picks.count("small") <= 6, picks
    assert picks.count("big") >= 6


# ---- routing rules ----------------------------------------------------------------------------

@pytest.fixture
def routed(gateway, mock):
    mock.reset()
    rules = [
        {"name": "vip", "when": {"header": {"x-priority": "high"}}, "target": {"model": "strong"}},
        {"name": "long", "when": {"tokens_above": 2000}, "target": {"model": "long-ctx"}},
        {"name": "simple", "when": {"complexity_below": 0.5}, "target": {"model": "cheap"}},
    ]
    t = table([dep(mock, "strong-d"), dep(mock, "cheap-d"), dep(mock, "long-d")],
              [model("auto", [("strong-d", 1)], rules=rules),
               model("strong", [("strong-d", 1)]),
               model("cheap", [("cheap-d", 1)]),
               model("long-ctx", [("long-d", 1)])])
    return gateway(t)


def _ask(gw, text, headers=None):
    status, h, body = gw.json("POST", CHAT, {"model": "auto", "messages": [
        {"role": "user", "content": text}]}, headers=headers)
    assert status == 200, body
    return h["x-switchyard-model"]


def test_rules_send_simple_queries_to_the_cheap_model(routed):
    assert _ask(routed, "Where is my order #12345? What's the tracking number?") == "cheap"
    assert _ask(routed, "我的快递到哪里了？订单号 88231") == "cheap"


def test_rules_send_hard_queries_to_the_default_strong_model(routed):
    hard = ("Prove that the square root of 2 is irrational, then explain step by step how the "
            "argument generalises to any prime, and analyze the trade-offs of proof by "
            "contradiction versus a constructive approach.")
    assert _ask(routed, hard) == "auto"


def test_rules_match_headers_and_token_counts_in_order(routed):
    assert _ask(routed, "hi", headers={"X-Priority": "high"}) == "strong"
    assert _ask(routed, "word " * 9000) == "long-ctx"


def keyed(t, key, **fields):
    """Make table <t> require client keys, with <key> (its fields as given) the only one."""
    import hashlib
    t["require_keys"] = True
    t["keys"] = [dict({"hash": hashlib.sha256(key.encode()).hexdigest(), "id": 1,
                       "name": "agent", "prefix": key[:10]}, **fields)]
    return {"Authorization": f"Bearer {key}"}


def assert_key_limited(gw, auth, fragment, n_ok, **extra):
    for _ in range(n_ok):
        status, _, body = chat(gw, headers=auth, **extra)
        assert status == 200, body
    status, headers, body = chat(gw, headers=auth, **extra)
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert fragment in body["error"]["message"]
    assert int(headers["retry-after"]) >= 1


def test_client_key_rpm_limit(gateway, mock):
    mock.reset()
    t = table([dep(mock, "d")], [model("gpt", [("d", 1)])])
    auth = keyed(t, "sk-sy-limited-key-0123456789", slot=3, rpm=2)
    assert_key_limited(gateway(t, workers=2), auth, "API key (requests per minute)", 2)


def test_tpm_reserves_the_estimate_and_is_reconciled_with_real_usage(gateway, mock):
    mock.reset()
    t = table([dep(mock, "d", limits={"tpm": 1000})], [model("gpt", [("d", 1)],
                                                         retry={"attempts": 1})])
    gw = gateway(t)
    # Each request reserves ~600 tokens (max_tokens) but the mock reports about ten used:
    # without reconciliation the second request would find the bucket short.
    for _ in range(4):
        status, _, body = chat(gw, max_tokens=600)
        assert status == 200, body
    # A request that cannot fit even in an empty bucket is refused.
    status, headers, body = chat(gw, max_tokens=5000)
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"


def test_client_key_limits_per_model_hold_on_that_model_only(gateway, mock):
    """A key's limits on one public model: its own rpm there is 2 (every worker shares it), a
    third request is refused naming the model's limit, and the key's other model is free."""
    mock.reset()
    t = table([dep(mock, "d")], [model("gpt", [("d", 1)]), model("cheap", [("d", 1)])])
    auth = keyed(t, "sk-sy-model-limited-0123456789", slot=4, rpm=100,
                 model_limits={"gpt": {"rpm": 2}, "other.model-1.5": {"tpm": 10}})
    gw = gateway(t, workers=2)
    assert_key_limited(gw, auth, "requests per minute on this model", 2)
    for _ in range(5):
        assert chat(gw, model_name="cheap", headers=auth)[0] == 200


def test_client_key_tpm_per_model_reserves_and_refuses_what_cannot_fit(gateway, mock):
    mock.reset()
    t = table([dep(mock, "d")], [model("gpt", [("d", 1)], retry={"attempts": 1})])
    auth = keyed(t, "sk-sy-model-tpm-0123456789abc", slot=5,
                 model_limits={"gpt": {"tpm": 1000}})
    gw = gateway(t)
    # ~600 reserved each time, ~10 really used: reconciliation gives the rest back; then a
    # request that cannot fit even in an empty bucket is refused.
    for _ in range(4):
        status, _, body = chat(gw, headers=auth, max_tokens=600)
        assert status == 200, body
    status, _, body = chat(gw, headers=auth, max_tokens=5000)
    assert status == 429
    assert "tokens per minute on this model" in body["error"]["message"]
