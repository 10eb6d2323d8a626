# SPDX-License-Identifier: Apache-2.0
"""The data plane's proxy core: the OpenAI endpoints, streaming, HTTP/1.1 behaviour, limits,
timeouts, upstream failures, TLS, and the process model (restart, drain, reload)."""

import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

import harness

CHAT = "/v1/chat/completions"


def chat_body(model="gpt-4o-mini", stream=False, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


def raw_exchange(port, data, read_timeout=3.0, until_close=True):
    """Send raw bytes on a fresh socket and return everything read until the peer closes (or
    the read timeout passes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        s.sendall(data)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            chunks.append(b)
            if not until_close:
                break
        return b"".join(chunks)
    finally:
        s.close()


def post_raw(path, body, extra_headers=""):
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra_headers}\r\n").encode() + body


@pytest.fixture
def gw(gateway, mock, table_for):
    mock.reset()
    return gateway(table_for(mock, model="gpt-4o-mini"))


# ---- the endpoints ----------------------------------------------------------------------------

def test_chat_completion_is_relayed_with_the_upstream_model_and_credential(gateway, mock,
                                                                          table_for):
    mock.reset()
    table = table_for(mock, model="gpt-4o-mini")
    table["deployments"][0]["model"] = "upstream-model-7"
    table["deployments"][0]["api_key"] = "sk-upstream-secret"
    gw = gateway(table)
    status, headers, body = gw.json("POST", CHAT, chat_body(temperature=0.25))
    assert status == 200, body
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    assert body["model"] == "upstream-model-7"
    assert headers["x-request-id"].startswith("req_")
    sent = mock.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == "Bearer sk-upstream-secret"
    upstream_body = json.loads(sent["body"])
    assert upstream_body["model"] == "upstream-model-7"
    assert upstream_body["temperature"] == 0.25
    assert upstream_body["messages"] == [{"role": "user", "content": "Say hello"}]
    assert "stream_options" not in upstream_body


def test_request_id_from_the_client_is_kept_and_sent_upstream(gw, mock):
    status, headers, _ = gw.json("POST", CHAT, chat_body(), headers={"X-Request-Id": "abc-123"})
    assert status == 200
    assert headers["x-request-id"] == "abc-123"
    assert mock.requests()[-1]["headers"]["x-request-id"] == "abc-123"


def test_completions_and_embeddings_are_relayed(gw, mock):
    status, _, body = gw.json("POST", "/v1/completions",
                              {"model": "gpt-4o-mini", "prompt": "Once upon a time"})
    assert status == 200, body
    assert body["object"] == "text_completion"
    assert mock.requests()[-1]["path"] == "/v1/completions"
    status, _, body = gw.json("POST", "/v1/embeddings",
                              {"model": "gpt-4o-mini", "input": ["a", "b"]})
    assert status == 200, body
    assert body["object"] == "list"
    assert len(body["data"]) == 2
    assert mock.requests()[-1]["path"] == "/v1/embeddings"


def test_models_lists_the_public_names_of_the_table(gateway, mock, table_for):
    table = table_for(mock, model="gpt-4o-mini")
    table["models"].append({"name": "cheap", "targets": [{"deployment": "mock-gpt-4o-mini"}]})
    gw = gateway(table)
    status, _, body = gw.json("GET", "/v1/models")
    assert status == 200
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == ["cheap", "gpt-4o-mini"]
    assert all(m["object"] == "model" for m in body["data"])


def test_health_and_readiness(gw):
    assert gw.json("GET", "/healthz")[0] == 200
    status, _, body = gw.json("GET", "/readyz")
    assert status == 200
    assert body["status"] == "ready"
    assert body["table_version"] == 1


def test_readyz_is_503_until_a_table_is_loaded(build_dir, tmp_path):
    port_file = tmp_path / "port"
    exe = os.path.join(build_dir, "dataplane", "switchyard-dataplane")
    p = harness.ManagedProcess("gw-no-table", [exe, "--listen", "127.0.0.1:0", "--workers", "1",
                                               "--port-file", port_file], tmp_path / "log")
    try:
        port = harness.wait_port_file(p, port_file, 10)
        deadline = time.monotonic() + 5
        while True:
            try:
                status, _, body = harness.http_request("127.0.0.1", port, "GET", "/readyz")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert status == 503
        assert json.loads(body)["status"] == "not ready"
    finally:
        p.kill()


@pytest.mark.parametrize("body,code,param", [
    (b"{not json", "invalid_json", None),
    (b"[1,2]", "invalid_json", None),
    (b"", "invalid_json", None),
    (b'{"messages":[]}', "missing_required_parameter", "model"),
    (b'{"model":"gpt-4o-mini"}', "missing_required_parameter", "messages"),
    (b'{"model":"gpt-4o-mini","messages":[],"stream":"yes"}', "invalid_type", "stream"),
])
def test_bad_requests_get_openai_shaped_400s(gw, body, code, param):
    status, headers, data = gw.request("POST", CHAT, body,
                                       headers={"Content-Type": "application/json"})
    assert status == 400
    assert headers["content-type"] == "application/json"
    err = json.loads(data)["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] == code
    assert err["param"] == param
    assert err["message"]


def test_unknown_model_is_404_model_not_found(gw, mock):
    before = len(mock.requests())
    status, _, body = gw.json("POST", CHAT, chat_body(model="no-such-model"))
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert "no-such-model" in body["error"]["message"]
    assert len(mock.requests()) == before


def test_wrong_method_and_unknown_path(gw):
    status, headers, body = gw.json("GET", CHAT)
    assert status == 405
    assert headers["allow"] == "POST"
    assert body["error"]["code"] == "method_not_allowed"
    status, _, body = gw.json("GET", "/v1/nothing-here")
    assert status == 404
    assert body["error"]["code"] == "unknown_url"


# ---- streaming --------------------------------------------------------------------------------

def test_each_event_reaches_the_client_before_the_next_is_sent_upstream(gw):
    delay = 0.3
    body = chat_body(stream=True, mock={"chunks": 4, "chunk_delay_ms": int(delay * 1000)})
    with gw.stream(CHAT, body) as s:
        assert s.status == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        events = s.collect()
    content = [e for e in events if not e.done and e.json()["choices"]
               and e.json()["choices"][0]["delta"].get("content")]
    assert len(content) == 4
    # Events arrive spread out as the provider sends them, not bunched at the end.
    gaps = [b.t - a.t for a, b in zip(content, content[1:])]
    assert all(g > delay * 0.6 for g in gaps), gaps
    assert content[0].t - s.t_sent < delay * 4 * 0.75
    assert events[-1].done


def test_usage_chunk_is_requested_upstream_but_only_relayed_when_asked(gw, mock):
    events = gw.stream(CHAT, chat_body(stream=True)).collect()
    assert json.loads(mock.requests()[-1]["body"])["stream_options"] == {"include_usage": True}
    assert not any(not e.done and "usage" in e.json() and e.json()["usage"] for e in events)
    assert events[-1].done

    events = gw.stream(CHAT, chat_body(stream=True,
                                       stream_options={"include_usage": True})).collect()
    usage = [e.json()["usage"] for e in events if not e.done and e.json().get("usage")]
    assert len(usage) == 1
    assert usage[0]["total_tokens"] == usage[0]["prompt_tokens"] + usage[0]["completion_tokens"]
    assert events[-1].done


def test_stream_cut_after_content_ends_with_an_error_not_a_clean_end(gw):
    body = json.dumps(chat_body(stream=True, mock={"chunks": 6, "abort_after": 2})).encode()
    out = raw_exchange(gw.port, post_raw(CHAT, body), read_timeout=5)
    head, _, chunked = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding: chunked" in head
    # The last chunk (0 CRLF CRLF) never comes: no client can take the answer for complete.
    assert not chunked.endswith(b"0\r\n\r\n")
    assert b"data: [DONE]" not in chunked
    errors = [line for line in chunked.split(b"\n") if line.startswith(b"data: {\"error\"")]
    assert len(errors) == 1
    err = json.loads(errors[0][len(b"data: "):])["error"]
    assert err["type"] == "upstream_error"
    assert err["code"] == "closed"


def test_client_disconnect_cancels_the_upstream_request(gw, mock):
    mock.reset()
    body = chat_body(stream=True, mock={"chunks": 50, "chunk_delay_ms": 100})
    s = gw.stream(CHAT, body)
    it = iter(s)
    next(it)
    s.close()
    deadline = time.monotonic() + 5
    while mock.stats()["aborted"] < 1:
        assert time.monotonic() < deadline, mock.stats()
        time.sleep(0.05)


# ---- HTTP/1.1 ---------------------------------------------------------------------------------

def test_pipelined_requests_are_answered_in_order(gw):
    body = json.dumps(chat_body()).encode()
    data = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post_raw(CHAT, body) +
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = raw_exchange(gw.port, data, read_timeout=5)
    assert out.count(b"HTTP/1.1 ") == 3
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 3
    i_health = out.index(b'{"status":"ok"}')
    i_chat = out.index(b'"chat.completion"')
    i_models = out.index(b'"object":"list"')
    assert i_health < i_chat < i_models


def test_keep_alive_serves_many_requests_on_one_connection(gw, mock):
    before = mock.stats()["connections_total"]
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    for _ in range(5):
        conn.request("POST", CHAT, json.dumps(chat_body()),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        r.read()
    conn.close()
    # ...and the upstream connection was pooled too: one new connection from the gateway, and
    # one for this stats call itself.
    assert mock.stats()["connections_total"] - before == 2


def test_chunked_request_body_is_accepted(gw):
    body = json.dumps(chat_body()).encode()
    half = len(body) // 2
    chunked = (f"{half:x}\r\n".encode() + body[:half] + b"\r\n" +
               f"{len(body) - half:x}\r\n".encode() + body[half:] + b"\r\n0\r\n\r\n")
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\nConnection: close\r\n\r\n").encode()
    out = raw_exchange(gw.port, head + chunked)
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b'"chat.completion"' in out


def test_expect_100_continue(gw):
    body = json.dumps(chat_body()).encode()
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        s.sendall((f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n"
                   "Connection: close\r\n\r\n").encode())
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        out = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    finally:
        s.close()
    assert out.startswith(b"HTTP/1.1 200 ")


def test_oversized_header_block_is_431(gw):
    huge = "x" * (70 * 1024)
    out = raw_exchange(gw.port, f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n"
                       .encode())
    assert out.startswith(b"HTTP/1.1 431 ")
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"


def test_oversized_body_is_413_by_length_and_by_chunks(gateway, mock, table_for):
    gw = gateway(table_for(mock), args=["--max-body-bytes", "1024"])
    body = json.dumps(chat_body(padding="p" * 2000)).encode()
    out = raw_exchange(gw.port, post_raw(CHAT, body))
    assert out.startswith(b"HTTP/1.1 413 ")
    assert b"request_too_large" in out
    chunk = b"a" * 800
    data = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode() +
            (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
    out = raw_exchange(gw.port, data)
    assert out.startswith(b"HTTP/1.1 413 ")


def test_malformed_http_is_400(gw):
    out = raw_exchange(gw.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "invalid_request_error"


# ---- timeouts and slow clients ----------------------------------------------------------------

def test_slow_header_drip_gets_408_within_the_header_timeout(gateway, mock, table_for):
    gw = gateway(table_for(mock), args=["--header-timeout-ms", "500"])
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    t0 = time.monotonic()
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        out = b""
        for _ in range(40):  # a byte every 50 ms: never a complete head
            try:
                s.sendall(b"X")
            except OSError:
                break
            time.sleep(0.05)
            s.setblocking(False)
            try:
                out += s.recv(4096)
            except BlockingIOError:
                pass
            s.setblocking(True)
            if out:
                break
        s.settimeout(2)
        try:
            while True:
                b = s.recv(4096)
                if not b:
                    break
                out += b
        except OSError:
            pass
    finally:
        s.close()
    assert out.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - t0 < 1.5


def test_idle_keep_alive_connection_is_closed(gateway, mock, table_for):
    gw = gateway(table_for(mock), args=["--idle-timeout-ms", "300"])
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=3)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        assert s.recv(4096) == b""  # closed by the server
        assert 0.2 < time.monotonic() - t0 < 2.5
    finally:
        s.close()


def test_stalled_body_gets_408(gateway, mock, table_for):
    gw = gateway(table_for(mock), args=["--body-timeout-ms", "300"])
    out = raw_exchange(gw.port, f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                       "{\"model\"".encode())
    assert out.startswith(b"HTTP/1.1 408 ")


# ---- upstream failures ------------------------------------------------------------------------

def test_upstream_error_status_and_body_pass_through(gw):
    body = chat_body(mock={"status": 400, "body": '{"error":{"message":"bad thing",'
                                                   '"type":"invalid_request_error"}}'})
    status, _, data = gw.request("POST", CHAT, body)
    assert status == 400
    assert json.loads(data)["error"]["message"] == "bad thing"


def test_upstream_429_keeps_retry_after(gw):
    status, headers, _ = gw.request("POST", CHAT, chat_body(mock={"status": 429,
                                                                  "retry_after": "7"}))
    assert status == 429
    assert headers["retry-after"] == "7"


def test_refused_connection_is_502(gateway, mock, table_for):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead_port = s.getsockname()[1]
    s.close()
    table = table_for(mock, base_url=f"http://127.0.0.1:{dead_port}/v1")
    gw = gateway(table)
    status, _, body = gw.json("POST", CHAT, chat_body())
    assert status == 502
    assert body["error"]["code"] == "connect_refused"
    assert body["error"]["type"] == "upstream_error"


def test_first_byte_timeout_is_504(gateway, mock, table_for):
    gw = gateway(table_for(mock, timeouts={"first_byte_ms": 300}))
    t0 = time.monotonic()
    status, _, body = gw.json("POST", CHAT, chat_body(mock={"delay_ms": 3000}))
    assert status == 504
    assert body["error"]["code"] == "first_byte_timeout"
    assert time.monotonic() - t0 < 2.5


def test_upstream_reset_is_502(gw):
    status, _, body = gw.json("POST", CHAT, chat_body(mock={"reset": True}))
    assert status == 502
    assert body["error"]["type"] == "upstream_error"


def test_malformed_upstream_body_is_relayed_as_is(gw):
    status, _, data = gw.request("POST", CHAT, chat_body(mock={"malformed": True}))
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(data)


# ---- TLS upstreams ----------------------------------------------------------------------------

def test_https_upstream_verified_with_its_ca_file(gateway, mock_tls, table_for):
    gw = gateway(table_for(mock_tls))
    status, _, body = gw.json("POST", CHAT, chat_body())
    assert status == 200, body
    assert body["object"] == "chat.completion"


def test_https_upstream_failing_verification_is_an_error(gateway, mock_tls, table_for):
    table = table_for(mock_tls)
    del table["deployments"][0]["ca_file"]  # the system store does not know the test CA
    gw = gateway(table)
    status, _, body = gw.json("POST", CHAT, chat_body())
    assert status == 502
    assert body["error"]["code"] == "tls_verify"
    assert "certificate" in body["error"]["message"]


def test_https_upstream_with_wrong_ca_fails_and_insecure_switch_allows(gateway, mock_tls,
                                                                      table_for, certs):
    gw = gateway(table_for(mock_tls, ca_file=certs.untrusted_ca))
    status, _, body = gw.json("POST", CHAT, chat_body())
    assert status == 502
    assert body["error"]["code"] == "tls_verify"
    table = table_for(mock_tls, insecure=True)
    del table["deployments"][0]["ca_file"]
    gw2 = gateway(table)
    status, _, body = gw2.json("POST", CHAT, chat_body())
    assert status == 200, body


def test_https_streaming(gateway, mock_tls, table_for):
    gw = gateway(table_for(mock_tls))
    events = gw.stream(CHAT, chat_body(stream=True)).collect()
    assert events[-1].done
    assert len(events) >= 3


# ---- processes --------------------------------------------------------------------------------

def test_a_worker_that_dies_is_restarted_and_the_others_are_untouched(gateway, mock, table_for):
    gw = gateway(table_for(mock), workers=2)
    deadline = time.monotonic() + 5
    while len(gw.worker_pids()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    victim, survivor = gw.worker_pids()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while True:
        pids = gw.worker_pids()
        if len(pids) == 2 and victim not in pids:
            break
        assert time.monotonic() < deadline, pids
        time.sleep(0.05)
    assert survivor in pids
    for _ in range(10):
        assert gw.json("POST", CHAT, chat_body())[0] == 200


def test_sigterm_drains_in_flight_requests_and_exits_0(gateway, mock, table_for):
    gw = gateway(table_for(mock), workers=2)
    results = []

    def slow_call():
        try:
            results.append(gw.json("POST", CHAT, chat_body(mock={"delay_ms": 1000}), timeout=10))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results.append((repr(e),))

    def slow_stream():
        events = gw.stream(CHAT, chat_body(stream=True, mock={"chunks": 5,
                                                               "chunk_delay_ms": 200})).collect()
        results.append(("stream", events[-1].done))

    threads = [threading.Thread(target=slow_call) for _ in range(3)]
    threads.append(threading.Thread(target=slow_stream))
    for t in threads:
        t.start()
    time.sleep(0.3)
    rc = gw.stop(expect_exit=0)
    for t in threads:
        t.join(10)
    assert rc == 0
    assert len(results) == 4
    assert [r[0] for r in results if r[0] != "stream"] == [200, 200, 200], results
    assert ("stream", True) in results


def test_sighup_replaces_workers_without_failing_a_request(gateway, mock, table_for):
    table = table_for(mock)
    gw = gateway(table, workers=2, args=["--drain-idle-ms", "500"])
    stop = threading.Event()
    failures, successes = [], [0]

    def client():
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
                conn.request("POST", CHAT, json.dumps(chat_body()),
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    failures.append(r.status)
                else:
                    successes[0] += 1
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures.append(repr(e))
                if conn:
                    conn.close()
                conn = None

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(3):
            time.sleep(0.4)
            table["models"].append({"name": f"extra-{i}",
                                    "targets": [{"deployment": "mock-gpt-4o-mini"}]})
            assert gw.reload(table)
        time.sleep(0.8)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert successes[0] > 20
    ids = [m["id"] for m in gw.json("GET", "/v1/models")[2]["data"]]
    assert "extra-2" in ids


def test_sighup_with_a_broken_table_keeps_serving_the_old_one(gateway, mock, table_for):
    gw = gateway(table_for(mock))
    old = gw.worker_pids()
    assert not gw.reload("{broken", timeout=1.5)
    assert gw.worker_pids() == old
    assert gw.json("POST", CHAT, chat_body())[0] == 200


def test_bad_table_at_start_is_fatal_with_a_message(gateway):
    gw = gateway('{"deployments":[{"name":""}]}', wait=False)
    rc = gw.proc.wait(10)
    assert rc != 0
    assert "deployments[0]" in gw.log()


def test_azure_deployment_gets_its_path_api_version_and_key_header(gateway, mock, table_for):
    mock.reset()
    table = table_for(mock, model="gpt-4o-mini", format="azure", auth="header",
                      auth_name="api-key", api_key="azure-secret", api_version="2024-10-21")
    table["deployments"][0]["base_url"] = mock.origin
    table["deployments"][0]["model"] = "my-gpt4o-deployment"
    gw = gateway(table)
    status, _, body = gw.json("POST", CHAT, chat_body())
    assert status == 200, body
    sent = mock.requests()[-1]
    assert sent["path"] == "/openai/deployments/my-gpt4o-deployment/chat/completions"
    assert "api-version=2024-10-21" in sent.get("query", "")
    assert sent["headers"]["api-key"] == "azure-secret"
    assert "authorization" not in sent["headers"]


def test_chunked_body_with_trailers_is_served(gw):
    # Trailers come through llhttp's header callbacks after the head is complete; they must
    # not disturb the headers the request already points at (a use-after-free once).
    body = json.dumps(chat_body()).encode()
    data = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\nX-Request-Id: trailer-test\r\n"
            "Connection: close\r\n\r\n").encode()
    data += f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n"
    data += b"X-Trailer: " + b"t" * 700 + b"\r\n\r\n"
    out = raw_exchange(gw.port, data)
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"x-request-id: trailer-test" in out


def test_an_upgrade_request_is_answered_then_closed(gw):
    out = raw_exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, "
                       b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA"
                       b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"Connection: close" in out
