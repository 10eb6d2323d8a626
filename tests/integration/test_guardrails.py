# SPDX-License-Identifier: Apache-2.0
"""Guardrails (docs/guardrails.md) as a client and an operator see them.

The first half runs the data plane alone on a routing table file that carries guardrails:
blocks in both API shapes name the guardrail and never the matched text; redactions reach the
provider (the mock records what it got) and the client, in JSON answers and in streams, with
a match split across two SSE events; max_tokens capped or refused; input and output length
limits. The second half runs the whole stack on PostgreSQL: the admin API's validation
(detectors, regexes compiled with vectorscan, a 10,000-keyword list), a live change reaching a
running data plane without a restart, and the decision log's guardrail events."""

import copy
import json
import os

import pytest

import harness
from pg import fresh_db, pg_server  # noqa: F401  (fixtures)
from test_usage import ControlPlane, DataPlane, wait_for

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"

PHONE = "13812345678"
EMAIL = "zhang.san@example.com"
CARD = "4111 1111 1111 1111"


def guarded_table(mock, guardrails, fmt="openai", model="gm"):
    t = harness.table_for(mock, model=model, format=fmt)
    t["guardrails"] = guardrails
    return t


def pii(action="redact", **more):
    g = {"name": "pii", "applies_to": {"all": True},
         "input": {"detectors": ["email", "cn_mobile", "bank_card"], "action": action},
         "output": {"detectors": ["email", "cn_mobile", "bank_card"], "action": action}}
    g.update(more)
    return g


def chat(text, **extra):
    body = {"model": "gm", "messages": [{"role": "user", "content": text}]}
    body.update(extra)
    return body


def last_upstream_body(mock):
    reqs = mock.requests()
    assert reqs, "the provider got no request"
    return json.loads(reqs[-1]["body"])


def stream_text(events, api="openai"):
    """The answer text of a stream, and its finish reason."""
    text, finish = [], None
    for ev in events:
        if ev.done or not ev.data:
            continue
        obj = ev.json()
        if api == "openai":
            for ch in obj.get("choices", []):
                text.append((ch.get("delta") or {}).get("content") or "")
                finish = ch.get("finish_reason") or finish
        elif obj.get("type") == "content_block_delta":
            text.append(obj["delta"].get("text", ""))
        elif obj.get("type") == "message_delta":
            finish = obj["delta"].get("stop_reason")
    return "".join(text), finish


@pytest.fixture
def reset_mock(mock):
    mock.reset()
    yield mock
    mock.reset()


# ---- blocking ------------------------------------------------------------------------------------

def test_input_block_openai_names_the_guardrail_not_the_text(gateway, reset_mock):
    mock = reset_mock
    gw = gateway(guarded_table(mock, [pii("block")]))
    status, _, obj = gw.json("POST", CHAT, chat(f"my phone is {PHONE}"))
    assert status == 400, obj
    err = obj["error"]
    assert err["code"] == "guardrail_blocked" and err["type"] == "invalid_request_error"
    assert '"pii"' in err["message"] and "mobile phone number" in err["message"]
    assert PHONE not in json.dumps(obj)
    assert mock.requests() == []  # nothing went upstream
    # a clean request passes the same guardrail
    status, _, obj = gw.json("POST", CHAT, chat("hello there"))
    assert status == 200, obj


def test_input_block_anthropic_shape(gateway, reset_mock):
    mock = reset_mock
    gw = gateway(guarded_table(mock, [pii("block")], fmt="anthropic"))
    body = {"model": "gm", "max_tokens": 50, "system": f"reach me at {EMAIL}",
            "messages": [{"role": "user", "content": "hi"}]}
    status, _, obj = gw.json("POST", MESSAGES, body)
    assert status == 400, obj
    assert obj["type"] == "error" and obj["error"]["type"] == "invalid_request_error"
    assert '"pii"' in obj["error"]["message"] and "email" in obj["error"]["message"]
    assert EMAIL not in json.dumps(obj)
    assert mock.requests() == []


# ---- redaction of requests -----------------------------------------------------------------------

def test_input_redaction_reaches_the_provider_as_valid_json(gateway, reset_mock):
    mock = reset_mock
    gw = gateway(guarded_table(mock, [pii("redact")]))
    text = f'电话 {PHONE}, "mail" {EMAIL}\n卡 {CARD} 你好'
    body = chat([{"type": "text", "text": text}], temperature=0.5)
    status, _, obj = gw.json("POST", CHAT, body)
    assert status == 200, obj
    sent = last_upstream_body(mock)  # json.loads: the rewritten body is valid JSON
    got = sent["messages"][0]["content"][0]["text"]
    assert got == '电话 138****5678, "mail" [EMAIL]\n卡 **** **** **** 1111 你好'
    assert sent["temperature"] == 0.5 and sent["messages"][0]["role"] == "user"


def test_anthropic_system_and_messages_are_redacted(gateway, reset_mock):
    mock = reset_mock
    gw = gateway(guarded_table(mock, [pii("redact")], fmt="anthropic"))
    body = {"model": "gm", "max_tokens": 50, "system": f"user phone {PHONE}",
            "messages": [{"role": "user", "content": [{"type": "text", "text": EMAIL}]}]}
    status, _, obj = gw.json("POST", MESSAGES, body)
    assert status == 200, obj
    sent = last_upstream_body(mock)
    assert sent["system"] == "user phone 138****5678"
    assert sent["messages"][0]["content"][0]["text"] == "[EMAIL]"


def test_keywords_chinese_and_english_caseless(gateway, reset_mock):
    mock = reset_mock
    g = {"name": "words", "applies_to": {"models": ["gm"]},
         "input": {"keywords": ["绝密", "Project Falcon"], "action": "redact"}}
    gw = gateway(guarded_table(mock, [g]))
    status, _, _ = gw.json("POST", CHAT, chat("这是绝密: project FALCON launch"))
    assert status == 200
    assert last_upstream_body(mock)["messages"][0]["content"] == \
        "这是[REDACTED]: [REDACTED] launch"


def test_escaped_text_is_scanned_decoded_and_written_back_valid(gateway, reset_mock):
    mock = reset_mock
    g = pii("redact")
    g["input"]["keywords"] = ["绝密"]
    gw = gateway(guarded_table(mock, [g]))
    # 绝密 and the phone's first digits as \u escapes; quotes, a backslash and a newline around
    raw = (b'{"model":"gm","messages":[{"role":"user","content":'
           b'"\\u7edd\\u5bc6 \\"q\\" \\\\ tel \\u0031\\u0033812345678\\n"}]}')
    status, _, body = gw.request("POST", CHAT, raw, headers={"Content-Type": "application/json"})
    assert status == 200, body
    got = last_upstream_body(mock)["messages"][0]["content"]
    assert got == '[REDACTED] "q" \\ tel 138****5678\n'


def test_guardrail_attached_to_another_model_does_not_apply(gateway, reset_mock):
    mock = reset_mock
    g = pii("block", applies_to={"models": ["other-model"]})
    gw = gateway(guarded_table(mock, [g]))
    status, _, obj = gw.json("POST", CHAT, chat(f"phone {PHONE}"))
    assert status == 200, obj
    assert last_upstream_body(mock)["messages"][0]["content"] == f"phone {PHONE}"


# ---- answers -----------------------------------------------------------------------------------

def test_output_redaction_in_json_answers(gateway, reset_mock):
    mock = reset_mock
    mock.config({"content": f"call {PHONE} or {EMAIL} now"})
    gw = gateway(guarded_table(mock, [pii("redact")]))
    status, _, obj = gw.json("POST", CHAT, chat("hi"))
    assert status == 200, obj
    assert obj["choices"][0]["message"]["content"] == "call 138****5678 or [EMAIL] now"


def test_output_redaction_in_streams_catches_a_match_split_across_events(gateway, reset_mock):
    mock = reset_mock
    # the mock streams word by word: "secret " and "plan " are two SSE events
    mock.config({"content": f"the secret plan is {PHONE} ok"})
    g = pii("redact")
    g["output"]["keywords"] = ["secret plan"]
    gw = gateway(guarded_table(mock, [g]))
    with gw.stream(CHAT, chat("hi", stream=True)) as s:
        assert s.status == 200
        events = s.collect()
    text, finish = stream_text(events)
    assert text == "the [REDACTED] is 138****5678 ok"
    assert finish == "stop" and events[-1].done
    assert "secret" not in "".join(e.data for e in events)


def test_output_redaction_in_anthropic_streams(gateway, reset_mock):
    mock = reset_mock
    mock.config({"content": f"mail {EMAIL} bye"})
    gw = gateway(guarded_table(mock, [pii("redact")], fmt="anthropic"))
    body = {"model": "gm", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with gw.stream(MESSAGES, body) as s:
        events = s.collect()
    text, stop = stream_text(events, "anthropic")
    assert text == "mail [EMAIL] bye"
    assert [e.event for e in events][-1] == "message_stop" and stop == "end_turn"


def test_output_block_mid_stream_ends_with_an_error_event(gateway, reset_mock):
    mock = reset_mock
    mock.config({"content": "one two three forbidden four five"})
    g = {"name": "no-bad-words", "applies_to": {"all": True},
         "output": {"keywords": ["forbidden"], "action": "block"}}
    gw = gateway(guarded_table(mock, [g]))
    with gw.stream(CHAT, chat("hi", stream=True)) as s:
        events = s.collect()
    raw = "".join(e.data for e in events)
    assert "forbidden" not in raw
    err = [e.json()["error"] for e in events if e.data.startswith('{"error"')]
    assert err and err[0]["code"] == "guardrail_blocked" and '"no-bad-words"' in err[0]["message"]


def test_output_block_mid_stream_anthropic(gateway, reset_mock):
    mock = reset_mock
    mock.config({"content": "one two 4111111111111111 three"})
    gw = gateway(guarded_table(mock, [pii("block")], fmt="anthropic"))
    body = {"model": "gm", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with gw.stream(MESSAGES, body) as s:
        events = s.collect()
    assert "4111" not in "".join(e.data for e in events)
    err = [e for e in events if e.event == "error"]
    assert err and err[0].json()["error"]["type"] == "invalid_request_error"
    assert '"pii"' in err[0].json()["error"]["message"]


def test_stream_translated_from_the_other_api_is_checked_in_the_clients_format(gateway,
                                                                               reset_mock):
    mock = reset_mock
    mock.config({"content": f"write to {EMAIL} today"})
    # an OpenAI client on an Anthropic deployment: the guardrail sees OpenAI chunks
    gw = gateway(guarded_table(mock, [pii("redact")], fmt="anthropic"))
    with gw.stream(CHAT, chat("hi", stream=True, max_tokens=50)) as s:
        events = s.collect()
    text, finish = stream_text(events)
    assert text == "write to [EMAIL] today" and finish == "stop"
    assert EMAIL not in "".join(e.data for e in events)


def test_output_block_in_json_answer(gateway, reset_mock):
    mock = reset_mock
    mock.config({"content": "the card is 4111111111111111"})
    gw = gateway(guarded_table(mock, [pii("block")]))
    status, _, obj = gw.json("POST", CHAT, chat("hi"))
    assert status == 400, obj
    assert obj["error"]["code"] == "guardrail_blocked" and "answer" in obj["error"]["message"]
    assert "4111" not in json.dumps(obj)


# ---- limits ------------------------------------------------------------------------------------

def limits(**lim):
    return {"name": "limits", "applies_to": {"all": True}, "limits": lim}


def test_max_tokens_is_lowered_to_the_cap_or_set(gateway, reset_mock):
    mock = reset_mock
    gw = gateway(guarded_table(mock, [limits(max_tokens_cap=100)]))
    status, _, _ = gw.json("POST", CHAT, chat("hi", max_tokens=5000))
    assert status == 200
    assert last_upstream_body(mock)["max_tokens"] == 100
    status, _, _ = gw.json("POST", CHAT, chat("hi", max_tokens=30))
    assert last_upstream_body(mock)["max_tokens"] == 30
    status, _, _ = gw.json("POST", CHAT, chat("hi"))
    assert last_upstream_body(mock)["max_tokens"] == 100


def test_max_tokens_above_the_cap_is_refused(gateway, reset_mock):
    mock = reset_mock
    gw = gateway(guarded_table(mock, [limits(max_tokens_cap=100, max_tokens_mode="refuse")]))
    status, _, obj = gw.json("POST", CHAT, chat("hi", max_tokens=5000))
    assert status == 400
    assert obj["error"]["code"] == "guardrail_max_tokens" and obj["error"]["param"] == "max_tokens"
    assert mock.requests() == []


def test_max_input_chars(gateway, reset_mock):
    mock = reset_mock
    gw = gateway(guarded_table(mock, [limits(max_input_chars=10)]))
    status, _, obj = gw.json("POST", CHAT, chat("你好世界你好世界你好"))  # 10 characters
    assert status == 200, obj
    status, _, obj = gw.json("POST", CHAT, chat("你好世界你好世界你好!"))
    assert status == 400 and obj["error"]["code"] == "guardrail_input_too_long"
    assert "10" in obj["error"]["message"]


def test_max_output_chars_truncates_json_and_streams(gateway, reset_mock):
    mock = reset_mock
    mock.config({"content": "alpha beta gamma delta epsilon"})
    gw = gateway(guarded_table(mock, [limits(max_output_chars=12)]))
    status, _, obj = gw.json("POST", CHAT, chat("hi"))
    assert status == 200
    ch = obj["choices"][0]
    assert ch["message"]["content"] == "alpha beta g" and ch["finish_reason"] == "length"
    with gw.stream(CHAT, chat("hi", stream=True)) as s:
        events = s.collect()
    text, finish = stream_text(events)
    assert text == "alpha beta g" and finish == "length" and events[-1].done


# ---- the whole stack: admin API, live changes, events ---------------------------------------------

@pytest.fixture
def stack(build_dir, tmp_path, fresh_db, mock):
    import tempfile
    sockdir = tempfile.mkdtemp(prefix="sy-guard-")
    sock = os.path.join(sockdir, "cp.sock")
    shm = f"/dev/shm/sy-guard-test-{os.getpid()}"
    cp = ControlPlane(build_dir, str(tmp_path), fresh_db.url, sock, shm)
    mock.reset()
    cp.ok("POST", "/providers", {"name": "mock", "kind": "custom", "base_url": mock.url,
                                 "format": "openai", "auth_style": "bearer",
                                 "api_key": "sk-mock"}, 201)
    cp.ok("POST", "/deployments", {"name": "dep", "provider": "mock", "model": "up"}, 201)
    cp.ok("POST", "/models", {"name": "gm", "targets": [{"deployment": "dep"}]}, 201)
    key = cp.ok("POST", "/keys", {"name": "k"}, 201)
    dp = DataPlane(build_dir, str(tmp_path), sock, shm)
    # both workers on a table with the key (each takes tables on its own)
    hdr = {"Authorization": f"Bearer {key['key']}"}
    wait_for("the key to be served",
             lambda: all(dp.json("POST", CHAT, chat("hi"), headers=hdr)[0] == 200
                         for _ in range(4)), 20)
    yield cp, dp, key
    for p in (dp, cp):
        p.process.kill()
    if os.path.exists(shm):
        os.unlink(shm)


GOOD = {"name": "pii", "applies_to": {"models": ["gm"]},
        "input": {"detectors": ["cn_mobile", "email"], "action": "block",
                  "actions": {"email": "redact"}},
        "limits": {"max_tokens_cap": 500}}


@pytest.mark.parametrize("patch,param,words", [
    ({"input": {"detectors": ["email", "mail"]}}, "input.detectors[1]", '"mail"'),
    ({"input": {"regexes": ["ok", "a(b"]}}, "input.regexes[1]", "input.regexes[1]"),
    ({"output": {"action": "drop"}}, "output.action", '"drop"'),
    ({"limits": {"max_tokens_mode": "cut"}}, "limits.max_tokens_mode", "lower"),
    ({"input": {"keywords": [""]}}, "input.keywords[0]", "1 to 256"),
    ({"applies_to": {"keys": ["k"]}}, "applies_to.keys[0]", "whole number"),
    ({"input": {"detector": []}}, "input.detector", "unknown field"),
    ({"colour": "red"}, "colour", "colour"),
])
def test_admin_api_refuses_bad_guardrails_naming_the_field(stack, patch, param, words):
    cp, _, _ = stack
    body = copy.deepcopy(GOOD)
    body.update(patch)
    status, _, obj = cp.admin("POST", "/guardrails", body)
    assert status == 400, obj
    assert obj["error"]["param"] == param, obj
    assert words in obj["error"]["message"], obj


def test_admin_api_crud_and_a_10k_keyword_list(stack):
    cp, _, _ = stack
    doc = cp.ok("POST", "/guardrails", GOOD, 201)
    assert doc["object"] == "guardrail" and doc["enabled"] is True
    assert doc["input"]["actions"] == {"email": "redact"}
    assert cp.ok("GET", "/guardrails/pii")["limits"] == {"max_tokens_cap": 500}
    status, _, obj = cp.admin("POST", "/guardrails", GOOD)
    assert status == 409, obj
    words = [f"关键词{i:05d}-" + "x" * 200 for i in range(10000)]
    big = {"name": "big", "input": {"keywords": words, "action": "log"}}
    doc = cp.ok("POST", "/guardrails", big, 201)
    assert len(doc["input"]["keywords"]) == 10000
    doc = cp.ok("PATCH", "/guardrails/pii", {"enabled": False})
    assert doc["enabled"] is False and doc["input"]["detectors"] == ["cn_mobile", "email"]
    assert [g["name"] for g in cp.ok("GET", "/guardrails")["data"]] == ["pii", "big"]
    cp.ok("DELETE", "/guardrails/big", want=204)
    status, _, _ = cp.admin("GET", "/guardrails/big")
    assert status == 404


@pytest.mark.timeout(90)
def test_live_change_and_events(stack):
    cp, dp, key = stack
    hdr = {"Authorization": f"Bearer {key['key']}"}

    def call(text):
        return dp.json("POST", CHAT, chat(text), headers=hdr)

    status, _, obj = call(f"phone {PHONE}")
    assert status == 200, obj
    cp.ok("POST", "/guardrails", GOOD, 201)
    # live: no restart, the next tables carry it
    # every worker takes the table on its own: four refusals in a row
    wait_for("the guardrail to block",
             lambda: all(call(f"phone {PHONE}")[0] == 400 for _ in range(4)), 15)
    status, headers, obj = call(f"phone {PHONE}")
    assert obj["error"]["code"] == "guardrail_blocked" and '"pii"' in obj["error"]["message"]
    rid = headers.get("x-request-id")
    status, _, obj = call(f"mail {EMAIL}")
    assert status == 200  # email is redacted, not blocked

    def events():
        data = cp.ok("GET", "/events?kind=guardrail")["data"]
        return data if any(e["request_id"] == rid for e in data) else None

    evs = wait_for("guardrail events", events, 15)
    texts = [e["text"] for e in evs]
    assert any("pii: block cn_mobile (input)" in t for t in texts), texts
    assert any("pii: redact email (input)" in t for t in texts), texts
    assert not any(PHONE in t or EMAIL in t for t in texts)
    # disabled: requests pass again
    cp.ok("PATCH", "/guardrails/pii", {"enabled": False})
    wait_for("the guardrail to be off",
             lambda: all(call(f"phone {PHONE}")[0] == 200 for _ in range(4)), 15)


@pytest.mark.timeout(120)
def test_a_10k_keyword_list_reaches_the_data_plane_and_blocks(stack):
    cp, dp, key = stack
    hdr = {"Authorization": f"Bearer {key['key']}"}
    words = [f"禁词{i:05d}" if i % 2 else f"banned-word-{i:05d}" for i in range(10000)]
    cp.ok("POST", "/guardrails", {"name": "deny-list", "applies_to": {"all": True},
                                  "input": {"keywords": words, "action": "block"}}, 201)

    def call(text):
        return dp.json("POST", CHAT, chat(text), headers=hdr)

    # the workers compile the list off their loops and switch when it is ready
    wait_for("the list to block",
             lambda: all(call("say 禁词09999 please")[0] == 400 for _ in range(4)), 60)
    status, _, obj = call("BANNED-WORD-00042 is here")
    assert status == 400 and '"deny-list"' in obj["error"]["message"]
    assert "00042" not in json.dumps(obj)
    assert call("banned-word-1000 is not in the list")[0] == 200


def test_a_stream_of_two_choices_is_checked_choice_by_choice(gateway):
    """The mock streams one choice; this upstream streams two, interleaved, with an email split
    across two events of choice 1."""
    import http.server
    import threading

    chunks = [(0, "one "), (1, "mail bob@exa"), (0, "two "), (1, "mple.com ok"), (0, "three")]

    class Upstream(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            out = []
            for i, text in chunks:
                out.append({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                            "choices": [{"index": i, "delta": {"content": text},
                                         "finish_reason": None}]})
            for i in (0, 1):
                out.append({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                            "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]})
            body = "".join(f"data: {json.dumps(c)}\n\n" for c in out) + "data: [DONE]\n\n"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        class Up:
            url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        gw = gateway(guarded_table(Up, [pii("redact")]))
        with gw.stream(CHAT, chat("hi", stream=True, n=2)) as s:
            events = s.collect()
        texts, finishes = {0: "", 1: ""}, {}
        for ev in events:
            if ev.done:
                continue
            for ch in ev.json()["choices"]:
                texts[ch["index"]] += (ch.get("delta") or {}).get("content") or ""
                if ch.get("finish_reason"):
                    finishes[ch["index"]] = ch["finish_reason"]
        assert texts == {0: "one two three", 1: "mail [EMAIL] ok"}, texts
        assert finishes == {0: "stop", 1: "stop"} and events[-1].done
    finally:
        srv.shutdown()
