# SPDX-License-Identifier: Apache-2.0
"""Hostile input (issue #7): slow clients, oversized heads and bodies, bytes that are not UTF-8,
JSON nested without end, a hundred thousand messages, bodies that are not JSON, and upstreams
that send garbage, endless headers, endless streams or huge answers. Each gets the right error
in the client's API format, and meanwhile a normal client on the same (single) worker is served
and that worker never restarts.

The fuzz targets in tests/fuzz/ cover the same parsers byte by byte; these tests prove the
behaviour end to end, through the real processes."""

import json
import socket
import threading
import time

import pytest

import harness

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


# ---- set-up -------------------------------------------------------------------------------------

def table(mock, timeouts=None):
    """Three models on one mock: `gpt` (OpenAI format, upstream model oai-up), `claude`
    (Anthropic format, ant-up) and `ok` (OpenAI, ok-up), the bystanders' model, which no test
    gives a fault."""
    t = dict(harness.DEFAULT_TIMEOUTS)
    t.update(timeouts or {})

    def dep(name, fmt, model, **extra):
        d = {"name": name, "provider": "mock", "model": model, "format": fmt,
             "base_url": mock.url, "auth": "bearer", "api_key": "sk-test", "timeouts": t}
        d.update(extra)
        return d

    return {
        "version": 1,
        "deployments": [
            dep("oai", "openai", "oai-up"),
            dep("ant", "anthropic", "ant-up", auth="header", auth_name="x-api-key"),
            dep("ok", "openai", "ok-up"),
        ],
        "models": [
            {"name": "gpt", "targets": [{"deployment": "oai"}]},
            {"name": "claude", "targets": [{"deployment": "ant"}]},
            {"name": "ok", "targets": [{"deployment": "ok"}]},
        ],
    }


def start(gateway, mock, args=(), timeouts=None, faults=None):
    """A one-worker gateway, the mock's faults set to <faults> (by upstream model), and the
    worker's pid remembered for assert_unharmed."""
    mock.config({"by_model": faults or {}})
    gw = gateway(table(mock, timeouts), workers=1, args=list(args))
    gw.pids0 = gw.worker_pids()
    assert len(gw.pids0) == 1
    return gw


def chat(model="ok", stream=False, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


def ask(model="claude", stream=False):
    body = {"model": model, "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello"}]}
    if stream:
        body["stream"] = True
    return body


def served(gw):
    """A normal client gets a normal answer."""
    status, _, body = gw.json("POST", CHAT, chat("ok"), timeout=10)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "Hello from the mock provider."


def assert_unharmed(gw):
    """Still serving, on the same worker process: nothing crashed or was restarted."""
    served(gw)
    assert gw.worker_pids() == gw.pids0
    log = gw.log()
    assert "restarting it" not in log and "AddressSanitizer" not in log, log[-3000:]


def during(gw, hostile, *args):
    """Run hostile(*args) in a thread; while it runs, a normal client is served (at least once).
    Returns what hostile returned (or raises what it raised)."""
    out = {}

    def run():
        try:
            out["value"] = hostile(*args)
        except BaseException as e:  # noqa: BLE001 -- handed to the test thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    served(gw)
    while t.is_alive():
        served(gw)
        t.join(0.2)
    if "error" in out:
        raise out["error"]
    return out["value"]


def openai_error(status, body, want_status, code=None):
    assert status == want_status, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def anthropic_error(status, body, want_status):
    assert status == want_status, body
    assert body["type"] == "error"
    assert body["error"]["type"] and body["error"]["message"]
    return body["error"]


def split_response(raw):
    """(status, headers text, body bytes) of one raw HTTP/1.1 response with a length."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None
    return status, head.decode("latin-1"), body


def read_until_close(s, timeout):
    """Everything the server sends until it closes (or <timeout> passes)."""
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except OSError:
        pass
    return out


def post_head(path, length=None, ctype="application/json", extra=""):
    h = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
    if length is not None:
        h += f"Content-Length: {length}\r\n"
    return (h + extra + "\r\n").encode()


def raw(gw, data, timeout=10):
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
    try:
        s.sendall(data)
        return read_until_close(s, timeout)
    finally:
        s.close()


# ---- slow clients ---------------------------------------------------------------------------------

def test_slowloris_heads_get_408_while_a_normal_client_is_served(gateway, mock):
    gw = start(gateway, mock, args=["--header-timeout-ms", "1000"])
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(20)]
    try:
        for s in socks:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        # A header byte on every connection every 50 ms: the heads never end.
        got = {}
        deadline = time.monotonic() + 8
        n = 0
        while len(got) < len(socks) and time.monotonic() < deadline:
            for i, s in enumerate(socks):
                if i in got:
                    continue
                try:
                    s.sendall(b"X-Slow: a\r\n"[n % 11:n % 11 + 1])
                except OSError:
                    got[i] = read_until_close(s, 2)
                    continue
                s.setblocking(False)
                try:
                    b = s.recv(65536)
                    got[i] = b + read_until_close(s, 2) if b else b""
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
            if n == 4:
                served(gw)  # the dribblers are connected and mid-head
            n += 1
            time.sleep(0.05)
        assert len(got) == len(socks), "some slow heads were never cut off"
        for out in got.values():
            status, _, body = split_response(out)
            assert status == 408, out[:300]
            assert json.loads(body)["error"]["code"] == "request_timeout"
    finally:
        for s in socks:
            s.close()
    assert_unharmed(gw)


def test_body_dribbled_slowly_gets_408_at_the_whole_body_deadline(gateway, mock):
    # Each byte comes well inside the 1 s silence timeout; only the whole-body deadline ends it.
    gw = start(gateway, mock, args=["--body-timeout-ms", "1000",
                                    "--body-total-timeout-ms", "1500"])
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        s.sendall(post_head(CHAT, length=10000))
        out = b""
        t0 = time.monotonic()
        for i in range(200):  # 20 s of dribble at most
            try:
                s.sendall(b" ")
            except OSError:
                break
            s.setblocking(False)
            try:
                out += s.recv(65536)
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
            if out:
                break
            if i == 3:
                served(gw)
            time.sleep(0.1)
        out += read_until_close(s, 2)
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    status, head, body = split_response(out)
    assert status == 408, out[:300]
    assert "Connection: close" in head
    err = json.loads(body)["error"]
    assert err["code"] == "request_timeout"
    assert "did not arrive in time" in err["message"]
    assert elapsed < 15  # the dribble alone would have taken 100 s
    assert_unharmed(gw)


# ---- oversized input ------------------------------------------------------------------------------

def test_oversized_head_and_too_many_fields_get_431(gateway, mock):
    gw = start(gateway, mock)

    def hostile():
        big = raw(gw, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * (80 * 1024) +
                  b"\r\n\r\n")
        many = raw(gw, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" +
                   b"".join(b"X-F%d: v\r\n" % i for i in range(300)) + b"\r\n")
        return big, many

    for out in during(gw, hostile):
        status, _, body = split_response(out)
        err = openai_error(status, json.loads(body), 431, "headers_too_large")
        assert err["type"] == "invalid_request_error"
    assert_unharmed(gw)


def test_oversized_body_gets_413_by_length_and_by_chunks(gateway, mock):
    gw = start(gateway, mock, args=["--max-body-bytes", "65536"])

    def hostile():
        by_length = raw(gw, post_head(CHAT, length=10 * 1024 * 1024))
        chunk = b"a" * 40000
        chunked = raw(gw, post_head(CHAT, extra="Transfer-Encoding: chunked\r\n") +
                      (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 3 + b"0\r\n\r\n")
        return by_length, chunked

    for out in during(gw, hostile):
        status, _, body = split_response(out)
        openai_error(status, json.loads(body), 413, "request_too_large")
    assert_unharmed(gw)


# ---- bodies that are not what they should be --------------------------------------------------------

def test_invalid_utf8_in_the_json_body_is_a_400_in_valid_json(gateway, mock):
    gw = start(gateway, mock)
    bad = b'{"model":"ok","messages":[{"role":"user","content":"caf\xe9 \xff\xfe"}]}'

    def hostile():
        a = gw.request("POST", CHAT, bad, headers={"Content-Type": "application/json"})
        b = gw.request("POST", MESSAGES, bad.replace(b'"ok"', b'"claude","max_tokens":5'),
                       headers={"Content-Type": "application/json"})
        return a, b

    (sa, _, ba), (sb, _, bb) = during(gw, hostile)
    # json.loads of bytes decodes them strictly: the error body itself must be UTF-8.
    err = openai_error(sa, json.loads(ba), 400, "invalid_json")
    assert "not valid JSON" in err["message"]
    err = anthropic_error(sb, json.loads(bb), 400)
    assert err["type"] == "invalid_request_error"
    assert_unharmed(gw)


@pytest.mark.parametrize("opener,closer", [(b"[", b"]"), (b'{"a":', b"}")])
def test_json_nested_100000_deep_is_a_400_not_a_stack_overflow(gateway, mock, opener, closer):
    gw = start(gateway, mock)
    deep = b'{"model":"ok","messages":' + opener * 100000 + b"1" + closer * 100000 + b"}"
    status, _, body = during(gw, gw.request, "POST", CHAT, deep,
                             {"Content-Type": "application/json"})
    err = openai_error(status, json.loads(body), 400, "invalid_json")
    assert "depth" in err["message"]
    assert_unharmed(gw)


def test_100000_messages_are_served(gateway, mock):
    gw = start(gateway, mock)
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"}
            for i in range(100000)]
    body = json.dumps({"model": "gpt", "messages": msgs}).encode()
    assert len(body) < 8 * 1024 * 1024  # under the default body limit
    status, _, data = during(gw, gw.request, "POST", CHAT, body,
                             {"Content-Type": "application/json"}, 60)
    assert status == 200, data[:300]
    assert json.loads(data)["usage"]["prompt_tokens"] > 100000 // 4
    sent = [json.loads(r["body"]) for r in mock.requests() if '"oai-up"' in r["body"]]
    assert len(sent[-1]["messages"]) == 100000
    # The same through the translator: an Anthropic client on the OpenAI deployment.
    body = json.dumps({"model": "gpt", "max_tokens": 16, "messages": msgs}).encode()
    status, _, data = during(gw, gw.request, "POST", MESSAGES, body,
                             {"Content-Type": "application/json"}, 60)
    assert status == 200, data[:300]
    assert json.loads(data)["type"] == "message"
    sent = [json.loads(r["body"]) for r in mock.requests() if '"oai-up"' in r["body"]]
    assert len(sent[-1]["messages"]) == 100000
    assert_unharmed(gw)


@pytest.mark.parametrize("body,message", [
    (b"{", "not valid JSON"),
    (b'{"model":"ok",}', "not valid JSON"),
    (b'{"model":"ok","messages":[]} trailing', "not valid JSON"),
    (b"nul", "not valid JSON"),
    (b"\x00\x01\x02", "not valid JSON"),
    (b'{"model":"ok","stream":false\x00,"messages":[]}', "NUL byte at offset 28"),
    (b"[]", "must be a JSON object"),
    (b'"a string"', "not valid JSON"),
    (b"", "empty"),
])
def test_invalid_json_is_a_400_naming_the_problem(gateway, mock, body, message):
    gw = start(gateway, mock)
    for path in (CHAT, MESSAGES):
        status, _, data = gw.request("POST", path, body,
                                     headers={"Content-Type": "application/json"})
        obj = json.loads(data)
        if path == CHAT:
            err = openai_error(status, obj, 400, "invalid_json")
        else:
            err = anthropic_error(status, obj, 400)
        assert message in err["message"], err
    assert_unharmed(gw)


def test_content_type_is_not_trusted_the_body_is(gateway, mock):
    # curl -d sends application/x-www-form-urlencoded; a JSON body is served whatever the label,
    # and a body that is not JSON is refused whatever the label.
    gw = start(gateway, mock)
    good = json.dumps(chat("ok")).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        status, _, data = gw.request("POST", CHAT, good, headers={"Content-Type": ctype})
        assert status == 200, (ctype, data[:300])
    status, _, data = gw.request("POST", CHAT, good)  # no Content-Type at all
    assert status == 200, data[:300]
    form = b"model=ok&messages=hi"
    status, _, data = gw.request("POST", CHAT, form,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    openai_error(status, json.loads(data), 400, "invalid_json")
    multipart = (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nok\r\n--b--\r\n")
    status, _, data = gw.request("POST", CHAT, multipart,
                                 headers={"Content-Type": "multipart/form-data; boundary=b"})
    openai_error(status, json.loads(data), 400, "invalid_json")
    assert_unharmed(gw)


# ---- upstreams that misbehave -----------------------------------------------------------------------

def test_upstream_garbage_is_a_502_in_each_clients_format(gateway, mock):
    gw = start(gateway, mock, faults={"oai-up": {"garbage": True}, "ant-up": {"garbage": True}})

    def hostile():
        return (gw.json("POST", CHAT, chat("gpt")), gw.json("POST", MESSAGES, ask("claude")),
                gw.json("POST", CHAT, chat("claude")), gw.json("POST", MESSAGES, ask("gpt")),
                gw.json("POST", CHAT, chat("gpt", stream=True)))

    oa, an, oa_x, an_x, oa_stream = during(gw, hostile)
    for status, _, body in (oa, oa_x, oa_stream):
        err = openai_error(status, body, 502)
        assert err["type"] == "upstream_error"
    for status, _, body in (an, an_x):
        anthropic_error(status, body, 502)
    assert_unharmed(gw)


def test_upstream_endless_headers_end_in_a_502_with_bounded_memory(gateway, mock):
    gw = start(gateway, mock, faults={"oai-up": {"endless_headers": True},
                                      "ant-up": {"endless_headers": True}})
    rss0 = max(gw.rss_kb().values())

    def hostile():
        return gw.json("POST", CHAT, chat("gpt"), timeout=30), \
            gw.json("POST", MESSAGES, ask("claude"), timeout=30)

    (sa, _, ba), (sb, _, bb) = during(gw, hostile)
    assert sa in (502, 504), ba
    assert ba["error"]["type"] == "upstream_error"
    assert sb in (502, 504), bb
    assert bb["type"] == "error"
    # The head is cut off at its limit (64 KiB), not buffered without end.
    assert max(gw.rss_kb().values()) - rss0 < 32 * 1024
    assert_unharmed(gw)
    assert mock.stats()["aborted"] >= 2  # the gateway hung up on the endless heads


def test_upstream_endless_stream_is_ended_by_the_total_timeout_with_an_error_event(gateway,
                                                                                 mock):
    gw = start(gateway, mock, timeouts={"total_ms": 1500},
               faults={"oai-up": {"endless_stream": True, "chunk_delay_ms": 20},
                       "ant-up": {"endless_stream": True, "chunk_delay_ms": 20}})

    def hostile():
        return (gw.stream(CHAT, chat("gpt", stream=True), timeout=10).collect(),
                gw.stream(MESSAGES, ask("claude", stream=True), timeout=10).collect())

    oa, an = during(gw, hostile)
    # OpenAI client: content, then one error chunk and no [DONE].
    assert any(e.data.startswith("{") and e.json().get("choices") for e in oa)
    assert not any(e.done for e in oa)
    err = oa[-1].json()["error"]
    assert err["type"] == "upstream_error"
    assert "timeout" in err["code"]
    # Anthropic client, from an Anthropic upstream: the stream ends with an error event.
    assert any(e.event == "content_block_delta" for e in an)
    assert an[-1].event == "error"
    assert an[-1].json()["type"] == "error"
    assert not any(e.event == "message_stop" for e in an)
    assert_unharmed(gw)


def test_upstream_huge_answer_is_cut_off_at_the_limit_with_a_502(gateway, mock):
    words = "word " * 4000  # a 20 KB answer
    gw = start(gateway, mock, args=["--max-upstream-body-bytes", "8k"],
               faults={"oai-up": {"content": words}, "ant-up": {"content": words}})

    def hostile():
        return gw.json("POST", CHAT, chat("gpt")), gw.json("POST", MESSAGES, ask("claude")), \
            gw.json("POST", CHAT, chat("claude"))

    (sa, _, ba), (sb, _, bb), (sc, _, bc) = during(gw, hostile)
    openai_error(sa, ba, 502, "upstream_body_too_large")
    anthropic_error(sb, bb, 502)
    assert "larger than 8192 bytes" in bb["error"]["message"]
    openai_error(sc, bc, 502, "upstream_body_too_large")
    # A stream is not buffered: the same answer streams through.
    events = gw.stream(CHAT, chat("gpt", stream=True)).collect()
    assert events[-1].done
    assert_unharmed(gw)
