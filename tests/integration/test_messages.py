# SPDX-License-Identifier: Apache-2.0
"""The Anthropic-compatible endpoint and cross-format routing, over raw HTTP: errors in the
client's shape, OpenAI clients on Anthropic-format deployments and the other way round, JSON and
streams (the official SDKs are exercised in test_sdk_clients.py)."""

import json

import pytest

MESSAGES = "/v1/messages"
CHAT = "/v1/chat/completions"


@pytest.fixture
def gw(gateway, mock):
    mock.reset()
    deps = [
        {"name": "oai", "provider": "mock", "model": "oai-up", "format": "openai",
         "base_url": mock.url, "auth": "bearer", "api_key": "sk-test"},
        {"name": "ant", "provider": "mock", "model": "ant-up", "format": "anthropic",
         "base_url": mock.url, "auth": "header", "auth_name": "x-api-key",
         "api_key": "sk-ant-test"},
    ]
    models = [
        {"name": "gpt", "targets": [{"deployment": "oai"}]},
        {"name": "claude", "targets": [{"deployment": "ant"}]},
    ]
    return gateway({"version": 1, "deployments": deps, "models": models})


def ask(model, **extra):
    body = {"model": model, "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello"}]}
    body.update(extra)
    return body


def test_messages_errors_have_anthropics_shape(gw):
    status, _, body = gw.json("POST", MESSAGES, {"model": "claude", "messages": []})
    assert status == 400
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    status, _, body = gw.json("POST", MESSAGES, ask("nope"))
    assert status == 404
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"


def test_messages_on_an_anthropic_deployment_is_relayed_with_its_headers(gw, mock):
    status, headers, body = gw.json("POST", MESSAGES, ask("claude"))
    assert status == 200, body
    assert body["type"] == "message"
    assert body["content"][0]["type"] == "text"
    sent = mock.requests()[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == "sk-ant-test"
    assert sent["headers"]["anthropic-version"]
    assert json.loads(sent["body"])["model"] == "ant-up"


def test_openai_client_on_an_anthropic_deployment(gw, mock):
    status, _, body = gw.json("POST", CHAT, {
        "model": "claude", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Say hello"}]})
    assert status == 200, body
    assert body["object"] == "chat.completion"
    assert body["model"] == "claude"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["total_tokens"] == (body["usage"]["prompt_tokens"] +
                                             body["usage"]["completion_tokens"])
    sent = json.loads(mock.requests()[-1]["body"])
    assert sent["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert sent["max_tokens"] > 0
    assert [m["role"] for m in sent["messages"]] == ["user"]


def test_anthropic_client_streams_from_an_openai_deployment(gw, mock):
    s = gw.stream(MESSAGES, ask("gpt", stream=True))
    assert s.status == 200
    events = s.collect()
    kinds = [e.event for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds
    text = "".join(e.json()["delta"].get("text", "") for e in events
                   if e.event == "content_block_delta")
    assert text == "Hello from the mock provider."
    delta = [e.json() for e in events if e.event == "message_delta"][0]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] > 0
    sent = json.loads(mock.requests()[-1]["body"])
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "oai-up"


def test_openai_client_streams_from_an_anthropic_deployment(gw):
    events = gw.stream(CHAT, {"model": "claude", "stream": True,
                              "messages": [{"role": "user", "content": "Say hello"}]}).collect()
    assert events[-1].done
    chunks = [e.json() for e in events if not e.done]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello from the mock provider."
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "stop" for c in chunks)


def test_anthropic_stream_cut_after_content_ends_with_an_error_event(gw, mock):
    mock.config({"by_model": {"ant-up": {"chunks": 6, "abort_after": 2}}})
    events = gw.stream(MESSAGES, ask("claude", stream=True)).collect()
    kinds = [e.event for e in events]
    assert "message_stop" not in kinds
    assert kinds[-1] == "error"
    assert events[-1].json()["type"] == "error"


def test_provider_errors_reach_the_client_in_its_own_shape(gw, mock):
    mock.config({"by_model": {"ant-up": {"status": 400, "body": json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error",
                                    "message": "messages: bad"}})}}})
    status, _, body = gw.json("POST", CHAT, {"model": "claude", "messages": [
        {"role": "user", "content": "x"}]})
    assert status == 400
    assert body["error"]["message"] == "messages: bad"
    assert body["error"]["type"] == "invalid_request_error"


def test_legacy_endpoints_never_go_to_an_anthropic_deployment(gw):
    status, _, body = gw.json("POST", "/v1/embeddings", {"model": "claude", "input": "x"})
    assert status == 503
    assert body["error"]["code"] == "no_healthy_deployment"
