# SPDX-License-Identifier: Apache-2.0
"""The mock provider behaves like the providers the gateway talks to, and its faults do what
tests/mockprovider/README.md promises. Standard library only.

Run: SWITCHYARD_BUILD_DIR=/work/main/build-mock /usr/bin/pytest tests/integration/test_mockprovider.py
"""
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

BUILD_DIR = os.environ.get("SWITCHYARD_BUILD_DIR", "/work/main/build")
BINARY = os.path.join(BUILD_DIR, "tests", "mockprovider", "switchyard-mockprovider")

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
USER_HELLO = [{"role": "user", "content": "Say hello to the tests please"}]


# ---- harness ---------------------------------------------------------------------------------

class Mock:
    """A running mock provider process."""

    def __init__(self, tmpdir, extra_args=()):
        self.port_file = os.path.join(tmpdir, "mock-%d.port" % id(self))
        self.proc = subprocess.Popen(
            [BINARY, "--listen", "127.0.0.1:0", "--port-file", self.port_file, "--quiet",
             *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out, err = self.proc.communicate(timeout=5)
                raise RuntimeError("mock provider did not start: %r %r" % (out, err))
            time.sleep(0.01)
        with open(self.port_file) as f:
            self.port = int(f.read().strip())
        assert self.proc.stdout.readline().decode() == "mockprovider listening on %d\n" % self.port

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        err = err.decode(errors="replace")
        assert self.proc.returncode == 0, err
        assert "runtime error" not in err and "Sanitizer" not in err, err


@pytest.fixture(scope="module")
def tmpdir_module():
    with tempfile.TemporaryDirectory(prefix="mockprovider-test-") as d:
        yield d


@pytest.fixture(scope="module")
def mock(tmpdir_module):
    if not os.access(BINARY, os.X_OK):
        pytest.fail("no mock provider binary at %s (set SWITCHYARD_BUILD_DIR)" % BINARY)
    m = Mock(tmpdir_module)
    yield m
    m.stop()


@pytest.fixture(autouse=True)
def fresh(request):
    """Every test starts from zeroed stats, an empty request log and no config."""
    if "mock" in request.fixturenames:
        m = request.getfixturevalue("mock")
        status, _, _ = call(m.port, "POST", "/mock/reset")
        assert status == 200


def call(port, method, path, body=None, headers=None, timeout=10, conn=None):
    """One request; returns (status, {lowercased header: value}, body bytes)."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers = {"content-type": "application/json", **(headers or {})}
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    hdrs = {k.lower(): v for k, v in resp.getheaders()}
    if own:
        conn.close()
    return resp.status, hdrs, data


def post(port, path, obj, fault=None, **kw):
    headers = {"x-mock-fault": json.dumps(fault)} if fault is not None else None
    return call(port, "POST", path, obj, headers=headers, **kw)


def chat(model="mock-gpt", stream=False, **extra):
    return {"model": model, "messages": USER_HELLO, "stream": stream, **extra}


def sse(body):
    """[(event name or None, data string)] from an event-stream body."""
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        events.append((name, "\n".join(data)))
    return events


def openai_chunks(body):
    events = sse(body)
    assert events[-1] == (None, "[DONE]")
    return [json.loads(d) for _, d in events[:-1]]


def stats(port):
    return json.loads(call(port, "GET", "/mock/stats")[2])


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def raw_exchange(port, data, timeout=5.0, until_close=True):
    """Send raw bytes; read until the server closes (or the timeout). Returns the bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if until_close:
                    raise
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def http_request(path, body, extra=""):
    b = json.dumps(body).encode()
    return ("POST %s HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n%s\r\n" % (path, len(b), extra)).encode() + b


# ---- OpenAI chat completions ---------------------------------------------------------------------

def test_chat_completion_returns_openai_shape_with_request_model(mock):
    status, hdrs, body = post(mock.port, CHAT, chat(model="gpt-test"))
    assert status == 200
    assert hdrs["content-type"] == "application/json"
    assert int(hdrs["content-length"]) == len(body)
    doc = json.loads(body)
    assert doc["id"].startswith("chatcmpl-mock-")
    assert doc["object"] == "chat.completion"
    assert doc["model"] == "gpt-test"
    assert abs(doc["created"] - time.time()) < 60
    choice = doc["choices"][0]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": "Hello from the mock provider."}
    assert choice["finish_reason"] == "stop"
    prompt = len(USER_HELLO[0]["content"]) // 4
    assert doc["usage"] == {"prompt_tokens": prompt, "completion_tokens": 5,
                            "total_tokens": prompt + 5}


def test_chat_stream_sends_role_words_finish_and_done(mock):
    status, hdrs, body = post(mock.port, CHAT, chat(stream=True))
    assert status == 200
    assert hdrs["content-type"] == "text/event-stream"
    assert hdrs["transfer-encoding"] == "chunked"
    chunks = openai_chunks(body)
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "mock-gpt" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert words == ["Hello ", "from ", "the ", "mock ", "provider."]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


def test_chat_stream_include_usage_adds_a_usage_chunk_before_done(mock):
    body = post(mock.port, CHAT, chat(stream=True, stream_options={"include_usage": True}))[2]
    chunks = openai_chunks(body)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 5
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 5


def test_content_chunks_echo_and_usage_override(mock):
    fault = {"content": "one two three", "chunks": 5, "usage": {"prompt_tokens": 7}}
    chunks = openai_chunks(post(mock.port, CHAT, chat(stream=True), fault)[2])
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert words == ["one ", "two ", "three ", "one ", "two "]
    doc = json.loads(post(mock.port, CHAT, chat(), fault)[2])
    assert doc["choices"][0]["message"]["content"] == "one two three one two "
    assert doc["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    doc = json.loads(post(mock.port, CHAT, chat(), {"echo": True})[2])
    assert doc["choices"][0]["message"]["content"] == USER_HELLO[0]["content"]


def test_chat_tool_call_json_and_stream(mock):
    req = chat(tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])
    doc = json.loads(post(mock.port, CHAT, req, {"tool_call": True})[2])
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [{
        "id": "call_mock_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]

    req["stream"] = True
    chunks = openai_chunks(post(mock.port, CHAT, req, {"tool_call": True})[2])
    deltas = [c["choices"][0]["delta"].get("tool_calls") for c in chunks]
    calls = [d[0] for d in deltas if d]
    assert calls[0]["id"] == "call_mock_1" and calls[0]["function"]["name"] == "get_weather"
    pieces = [c["function"]["arguments"] for c in calls[1:]]
    assert len(pieces) >= 2 and all(c["index"] == 0 for c in calls)
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_call_without_tools_in_request_answers_text(mock):
    doc = json.loads(post(mock.port, CHAT, chat(), {"tool_call": True})[2])
    assert doc["choices"][0]["message"]["content"] == "Hello from the mock provider."


# ---- legacy completions, embeddings, models --------------------------------------------------------

def test_legacy_completions_json_and_stream(mock):
    req = {"model": "davinci-mock", "prompt": "Once upon a time"}
    doc = json.loads(post(mock.port, "/v1/completions", req)[2])
    assert doc["object"] == "text_completion"
    assert doc["choices"][0]["text"] == "Hello from the mock provider."
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"]["prompt_tokens"] == 4

    req.update(stream=True, stream_options={"include_usage": True})
    chunks = openai_chunks(post(mock.port, "/v1/completions", req)[2])
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == \
        "Hello from the mock provider."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def test_embeddings_one_vector_per_input(mock):
    doc = json.loads(post(mock.port, "/v1/embeddings",
                          {"model": "embed-mock", "input": ["alpha", "beta", "alpha"]})[2])
    assert doc["object"] == "list" and doc["model"] == "embed-mock"
    assert [d["index"] for d in doc["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in doc["data"])
    assert doc["data"][0]["embedding"] == doc["data"][2]["embedding"]
    assert doc["data"][0]["embedding"] != doc["data"][1]["embedding"]
    assert doc["usage"]["prompt_tokens"] == doc["usage"]["total_tokens"] >= 1
    single = json.loads(post(mock.port, "/v1/embeddings", {"model": "e", "input": "alpha"})[2])
    assert len(single["data"]) == 1


def test_models_list(mock):
    status, _, body = call(mock.port, "GET", "/v1/models")
    assert status == 200
    doc = json.loads(body)
    assert doc["object"] == "list" and all(m["object"] == "model" for m in doc["data"])


def test_unknown_path_is_404_json_and_bad_json_is_400(mock):
    status, _, body = call(mock.port, "GET", "/v2/nothing")
    assert status == 404 and "error" in json.loads(body)
    status, _, body = call(mock.port, "POST", CHAT, "{not json",
                           headers={"content-type": "application/json"})
    assert status == 400 and json.loads(body)["error"]["message"]
    status, _, body = post(mock.port, CHAT, chat(), {"stauts": 500})
    assert status == 400 and "stauts" in json.loads(body)["error"]["message"]


# ---- Anthropic messages ---------------------------------------------------------------------------

def test_anthropic_message_json(mock):
    req = {"model": "claude-mock", "max_tokens": 100, "system": "Be brief.", "messages": USER_HELLO}
    status, _, body = post(mock.port, MESSAGES, req)
    assert status == 200
    doc = json.loads(body)
    assert doc["id"].startswith("msg_mock_")
    assert doc["type"] == "message" and doc["role"] == "assistant"
    assert doc["model"] == "claude-mock"
    assert doc["content"] == [{"type": "text", "text": "Hello from the mock provider."}]
    assert doc["stop_reason"] == "end_turn" and doc["stop_sequence"] is None
    assert doc["usage"] == {"input_tokens": (len(USER_HELLO[0]["content"]) + 9) // 4,
                            "output_tokens": 5}


def test_anthropic_stream_has_the_real_event_sequence(mock):
    req = {"model": "claude-mock", "max_tokens": 100, "messages": USER_HELLO, "stream": True}
    status, hdrs, body = post(mock.port, MESSAGES, req)
    assert status == 200 and hdrs["content-type"] == "text/event-stream"
    events = sse(body)
    names = [n for n, _ in events]
    assert names == ["message_start", "content_block_start", "ping"] + \
        ["content_block_delta"] * 5 + ["content_block_stop", "message_delta", "message_stop"]
    data = [json.loads(d) for _, d in events]
    assert all(d["type"] == n for n, d in zip(names, data))
    start = data[0]["message"]
    assert start["usage"]["input_tokens"] >= 1 and start["usage"]["output_tokens"] == 1
    assert "".join(d["delta"]["text"] for d in data[3:8]) == "Hello from the mock provider."
    assert all(d["delta"]["type"] == "text_delta" for d in data[3:8])
    assert data[-2]["delta"]["stop_reason"] == "end_turn"
    assert data[-2]["usage"]["output_tokens"] == 5


def test_anthropic_tool_use_stream(mock):
    req = {"model": "claude-mock", "max_tokens": 100, "messages": USER_HELLO, "stream": True,
           "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}
    events = [json.loads(d) for _, d in sse(post(mock.port, MESSAGES, req, {"tool_call": True})[2])]
    block = events[1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather"
    parts = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert len(parts) >= 2
    assert all(e["delta"]["type"] == "input_json_delta"
               for e in events if e["type"] == "content_block_delta")
    assert json.loads("".join(parts)) == {"city": "Paris"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_errors_use_anthropic_shape(mock):
    status, hdrs, body = post(mock.port, MESSAGES, {"model": "c", "messages": USER_HELLO},
                              {"status": 529})
    assert status == 529
    doc = json.loads(body)
    assert doc["type"] == "error" and doc["error"]["type"] == "overloaded_error"
    assert doc["error"]["message"]


# ---- faults ---------------------------------------------------------------------------------------

def test_status_with_retry_after_and_headers(mock):
    status, hdrs, body = post(mock.port, CHAT, chat(),
                              {"status": 429, "retry_after": 7, "headers": {"x-extra": "yes"}})
    assert status == 429
    assert hdrs["retry-after"] == "7" and hdrs["x-extra"] == "yes"
    assert json.loads(body) == {"error": {"message": "mock error", "type": "mock_error",
                                          "param": None, "code": "mock"}}
    status, _, body = post(mock.port, CHAT, chat(), {"status": 503, "body": "upstream sad"})
    assert status == 503 and body == b"upstream sad"


def test_fault_precedence_header_then_body_then_by_model_then_default(mock):
    cfg = {"status": 500, "by_model": {"primary": {"status": 502}}}
    assert call(mock.port, "POST", "/mock/config", cfg)[0] == 200
    assert post(mock.port, CHAT, chat(model="other"))[0] == 500
    assert post(mock.port, CHAT, chat(model="primary"))[0] == 502
    assert post(mock.port, CHAT, chat(model="primary", mock={"status": 418}))[0] == 418
    assert post(mock.port, CHAT, chat(model="primary", mock={"status": 418}),
                {"status": 409})[0] == 409
    assert post(mock.port, CHAT, chat(model="primary"), {})[0] == 200


def test_config_by_model_plays_failing_primary_and_healthy_backup(mock):
    cfg = {"by_model": {"primary": {"status": 503, "retry_after": "1"}}}
    assert call(mock.port, "POST", "/mock/config", cfg)[0] == 200
    status, hdrs, _ = post(mock.port, CHAT, chat(model="primary"))
    assert status == 503 and hdrs["retry-after"] == "1"
    status, _, body = post(mock.port, CHAT, chat(model="backup"))
    assert status == 200 and json.loads(body)["model"] == "backup"
    assert call(mock.port, "POST", "/mock/config", {"by_model": []})[0] == 400
    assert call(mock.port, "POST", "/mock/reset")[0] == 200
    assert post(mock.port, CHAT, chat(model="primary"))[0] == 200


def test_delay_ms_delays_the_response_head(mock):
    t0 = time.monotonic()
    status, _, _ = post(mock.port, CHAT, chat(), {"delay_ms": 300})
    assert status == 200 and time.monotonic() - t0 >= 0.29


def test_chunk_delay_spaces_stream_events(mock):
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    conn.request("POST", CHAT, json.dumps(chat(stream=True)),
                 {"x-mock-fault": json.dumps({"chunk_delay_ms": 100, "chunks": 3})})
    resp = conn.getresponse()
    t0 = time.monotonic()
    first = resp.read1(65536)  # the role event arrives at once
    assert time.monotonic() - t0 < 0.09 and first.startswith(b"data: ")
    rest = resp.read()
    # role and the first word at once, then a gap after each word and the finish: 4 gaps
    assert time.monotonic() - t0 >= 0.35
    assert rest.endswith(b"data: [DONE]\n\n")
    conn.close()


def test_hang_never_answers(mock):
    with pytest.raises(socket.timeout):
        post(mock.port, CHAT, chat(), {"hang": True}, timeout=0.5)
    assert wait_for(lambda: stats(mock.port)["aborted"] == 0 and
                    stats(mock.port)["connections_open"] == 1)


def test_reset_closes_with_rst(mock):
    with pytest.raises(ConnectionResetError):
        raw_exchange(mock.port, http_request(CHAT, chat(mock={"reset": True})))


def test_close_closes_without_answering(mock):
    assert raw_exchange(mock.port, http_request(CHAT, chat(mock={"close": True}))) == b""


def test_garbage_is_not_http(mock):
    out = raw_exchange(mock.port, http_request(CHAT, chat(mock={"garbage": True})))
    assert out and not out.startswith(b"HTTP/")
    with pytest.raises(http.client.HTTPException):
        post(mock.port, CHAT, chat(), {"garbage": True})


def test_abort_after_cuts_the_stream_without_terminating_chunk(mock):
    out = raw_exchange(mock.port, http_request(CHAT, chat(stream=True,
                                                          mock={"abort_after": 2})))
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.count(b'"content":"') == 3  # the role chunk's "" plus two words
    assert b"Hello " in out and b"from " in out and b"the " not in out
    assert not out.endswith(b"0\r\n\r\n") and b"[DONE]" not in out
    with pytest.raises(http.client.IncompleteRead):
        post(mock.port, CHAT, chat(stream=True), {"abort_after": 1})


def test_abort_after_on_json_closes_mid_body(mock):
    with pytest.raises(http.client.IncompleteRead):
        post(mock.port, CHAT, chat(), {"abort_after": 0})


def test_malformed_is_200_with_invalid_json_of_correct_length(mock):
    status, hdrs, body = post(mock.port, CHAT, chat(), {"malformed": True})
    assert status == 200 and int(hdrs["content-length"]) == len(body) > 0
    with pytest.raises(ValueError):
        json.loads(body)
    events = sse(post(mock.port, CHAT, chat(stream=True), {"malformed": True})[2])
    bad = 0
    for _, d in events:
        try:
            json.loads(d)
        except ValueError:
            bad += 1
    assert bad >= 1


def test_chunked_sends_json_with_chunked_encoding(mock):
    status, hdrs, body = post(mock.port, CHAT, chat(), {"chunked": True})
    assert status == 200
    assert hdrs["transfer-encoding"] == "chunked" and "content-length" not in hdrs
    assert json.loads(body)["object"] == "chat.completion"


def test_drip_sends_the_body_slowly_in_pieces(mock):
    s = socket.create_connection(("127.0.0.1", mock.port), timeout=5)
    s.sendall(http_request(CHAT, chat(mock={"drip_ms": 20}), "Connection: close\r\n"))
    reads, data, t0 = 0, b"", time.monotonic()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        reads, data = reads + 1, data + chunk
    s.close()
    head, body = data.split(b"\r\n\r\n", 1)
    assert json.loads(body)["object"] == "chat.completion"
    assert reads > 10 and time.monotonic() - t0 >= 0.2


def test_endless_headers_until_client_gives_up(mock):
    s = socket.create_connection(("127.0.0.1", mock.port), timeout=5)
    s.sendall(http_request(CHAT, chat(mock={"endless_headers": True})))
    data = b""
    while len(data) < 8000:
        data += s.recv(65536)
    s.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\n\r\n" not in data
    assert wait_for(lambda: stats(mock.port)["connections_open"] == 1)


def test_endless_stream_and_aborted_counted_when_client_leaves(mock):
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=5)
    conn.request("POST", CHAT, json.dumps(chat(stream=True)),
                 {"x-mock-fault": json.dumps({"endless_stream": True, "chunk_delay_ms": 5})})
    resp = conn.getresponse()
    got = b""
    while got.count(b"data: ") < 30:
        got += resp.read1(65536)
    conn.close()
    assert wait_for(lambda: stats(mock.port)["aborted"] == 1)


def test_aborted_counts_a_stream_the_client_left(mock):
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=5)
    conn.request("POST", CHAT, json.dumps(chat(stream=True)),
                 {"x-mock-fault": json.dumps({"chunk_delay_ms": 100, "chunks": 20})})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read1(100)
    conn.close()
    assert wait_for(lambda: stats(mock.port)["aborted"] == 1)
    assert stats(mock.port)["requests"] == 1
    assert wait_for(lambda: stats(mock.port)["connections_open"] == 1)


# ---- recording, stats, connection handling -------------------------------------------------------

def test_requests_log_records_method_path_headers_and_raw_body(mock):
    raw = json.dumps(chat(model="rewritten-model", stream=True,
                          stream_options={"include_usage": True}))
    call(mock.port, "POST", CHAT + "?api-version=1", raw,
         headers={"Authorization": "Bearer sk-upstream", "Content-Type": "application/json",
                  "X-Dup": "a"})
    call(mock.port, "GET", "/v1/models")
    log = json.loads(call(mock.port, "GET", "/mock/requests")[2])
    assert [r["path"] for r in log] == [CHAT, "/v1/models"]
    first = log[0]
    assert first["method"] == "POST" and first["query"] == "api-version=1"
    assert first["headers"]["authorization"] == "Bearer sk-upstream"
    assert first["headers"]["x-dup"] == "a"
    assert first["body"] == raw
    assert json.loads(first["body"])["stream_options"] == {"include_usage": True}


def test_requests_log_keeps_the_last_50(mock):
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    for i in range(60):
        call(mock.port, "POST", "/v1/embeddings", {"model": "m%d" % i, "input": "x"}, conn=conn)
    conn.close()
    log = json.loads(call(mock.port, "GET", "/mock/requests")[2])
    assert len(log) == 50
    assert json.loads(log[0]["body"])["model"] == "m10"
    assert json.loads(log[-1]["body"])["model"] == "m59"


def test_keep_alive_reuses_one_connection(mock):
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    for stream in (False, True, False, True):
        status, _, body = call(mock.port, "POST", CHAT, chat(stream=stream), conn=conn)
        assert status == 200 and body
    st = stats(mock.port)
    conn.close()
    assert st["requests"] == 4
    assert st["connections_total"] == 2  # the keep-alive one and the stats query's own


def test_pipelined_requests_are_answered_in_order(mock):
    reqs = b"".join(http_request("/v1/embeddings", {"model": "pipe-%d" % i, "input": "x"})
                    for i in range(5))
    reqs += b"GET /v1/models HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\r\n"
    out = raw_exchange(mock.port, reqs)
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 6
    positions = [out.index(b'"model":"pipe-%d"' % i) for i in range(5)]
    assert positions == sorted(positions)
    assert out.rindex(b'"object":"model"') > positions[-1]


def test_chunked_request_body_is_read(mock):
    body = json.dumps(chat(model="chunky")).encode()
    half = len(body) // 2
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n"
           b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n" +
           b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:]))
    out = raw_exchange(mock.port, req)
    head, payload = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in head.lower()
    assert json.loads(payload)["model"] == "chunky"
    log = json.loads(call(mock.port, "GET", "/mock/requests")[2])
    assert log[-1]["body"] == body.decode()


def test_oversized_body_is_refused_at_once_with_413(mock):
    out = raw_exchange(mock.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\n"
                                  b"Content-Length: 999999999999\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 ")


def test_config_replaced_during_a_stream_keeps_the_streams_fault(mock):
    call(mock.port, "POST", "/mock/config", {"chunks": 6, "chunk_delay_ms": 30, "content": "a"})
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
    conn.request("POST", CHAT, json.dumps(chat(stream=True)))
    resp = conn.getresponse()
    for i in range(3):
        call(mock.port, "POST", "/mock/config", {"content": "changed %d" % i})
    call(mock.port, "POST", "/mock/reset")
    chunks = openai_chunks(resp.read())
    conn.close()
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]] == ["a "] * 5 + ["a"]


def test_client_leaving_during_delay_counts_aborted(mock):
    with pytest.raises(socket.timeout):
        post(mock.port, CHAT, chat(), {"delay_ms": 2000}, timeout=0.2)
    assert wait_for(lambda: stats(mock.port)["aborted"] == 1)


def test_stats_count_requests_and_connections(mock):
    for _ in range(3):
        post(mock.port, CHAT, chat())
    st = stats(mock.port)
    assert st["requests"] == 3 and st["connections_total"] == 4 and st["aborted"] == 0
    assert wait_for(lambda: stats(mock.port)["connections_open"] == 1)


# ---- HTTPS ----------------------------------------------------------------------------------------

def make_certs(d):
    def run(*args):
        subprocess.run(["openssl", *args], check=True, cwd=d, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=switchyard test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return [os.path.join(d, n) for n in ("ca.pem", "server.pem", "server.key")]


@pytest.fixture(scope="module")
def tls_mock(tmpdir_module):
    ca, cert, key = make_certs(tmpdir_module)
    m = Mock(tmpdir_module, ["--tls-cert", cert, "--tls-key", key])
    m.ca = ca
    yield m
    m.stop()


def test_https_with_generated_ca(tls_mock):
    ctx = ssl.create_default_context(cafile=tls_mock.ca)
    call(tls_mock.port, "POST", "/mock/reset",
         conn=http.client.HTTPSConnection("127.0.0.1", tls_mock.port, context=ctx))
    for host in ("127.0.0.1", "localhost"):
        conn = http.client.HTTPSConnection(host, tls_mock.port, context=ctx, timeout=10)
        status, _, body = call(tls_mock.port, "POST", CHAT, chat(), conn=conn)
        assert status == 200 and json.loads(body)["object"] == "chat.completion"
        status, _, body = call(tls_mock.port, "POST", MESSAGES,
                               {"model": "c", "messages": USER_HELLO, "stream": True}, conn=conn)
        assert status == 200 and sse(body)[-1][0] == "message_stop"
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        conn.close()
    st = json.loads(call(tls_mock.port, "GET", "/mock/stats",
                         conn=http.client.HTTPSConnection("127.0.0.1", tls_mock.port,
                                                          context=ctx))[2])
    assert st["requests"] == 4 and st["connections_total"] == 3


def test_https_rejects_untrusted_client_and_plain_http(tls_mock):
    with pytest.raises(ssl.SSLCertVerificationError):
        conn = http.client.HTTPSConnection("127.0.0.1", tls_mock.port,
                                           context=ssl.create_default_context(), timeout=5)
        call(tls_mock.port, "GET", "/v1/models", conn=conn)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        call(tls_mock.port, "GET", "/v1/models", timeout=5)


def test_https_faults_and_abort(tls_mock):
    ctx = ssl.create_default_context(cafile=tls_mock.ca)
    conn = http.client.HTTPSConnection("127.0.0.1", tls_mock.port, context=ctx, timeout=10)
    status, hdrs, _ = call(tls_mock.port, "POST", CHAT, chat(),
                           headers={"x-mock-fault": '{"status":429,"retry_after":"2"}'}, conn=conn)
    assert status == 429 and hdrs["retry-after"] == "2"
    status, _, body = call(tls_mock.port, "POST", CHAT, chat(stream=True),
                           headers={"x-mock-fault": '{"drip_ms":1,"chunk_delay_ms":1}'}, conn=conn)
    assert status == 200 and openai_chunks(body)[-1]["choices"][0]["finish_reason"] == "stop"
    conn.close()


# ---- several workers ----------------------------------------------------------------------------

def test_workers_share_one_port(tmpdir_module):
    m = Mock(tmpdir_module, ["--workers", "3"])
    try:
        for _ in range(10):
            assert post(m.port, CHAT, chat())[0] == 200
    finally:
        m.stop()
