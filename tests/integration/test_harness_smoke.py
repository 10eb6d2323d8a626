# SPDX-License-Identifier: Apache-2.0
"""The harness itself: the mock answers, the gateway starts, proxies, streams, reloads and stops
cleanly. If these fail, look here before suspecting the tests built on them."""

import time

import harness

CHAT = "/v1/chat/completions"


def chat_body(**extra):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    body.update(extra)
    return body


def test_mock_answers_chat_completion_directly(mock):
    mock.reset()
    status, _, obj = mock.json("POST", CHAT, chat_body(),
                               headers={"Authorization": "Bearer sk-test"})
    assert status == 200
    assert obj["choices"][0]["message"]["content"]
    assert mock.stats()  # counters answer as JSON


def test_mock_over_tls_verifies_with_the_test_ca(mock_tls, certs):
    assert mock_tls.url.startswith("https://127.0.0.1:")
    status, _, obj = mock_tls.json("POST", CHAT, chat_body())
    assert status == 200
    assert obj["choices"]


def test_gateway_starts_proxies_a_chat_completion_and_stops_with_status_0(gateway, mock,
                                                                          table_for):
    gw = gateway(table_for(mock))
    assert gw.request("GET", "/healthz")[0] == 200
    assert gw.request("GET", "/readyz")[0] == 200
    status, headers, obj = gw.json("POST", CHAT, chat_body())
    assert status == 200, obj
    assert headers["content-type"].startswith("application/json")
    assert obj["choices"][0]["message"]["content"]
    assert len(gw.worker_pids()) == 1
    gw.stop()


def test_gateway_streams_sse_events_as_they_arrive(gateway, mock, table_for):
    gw = gateway(table_for(mock))
    stream = gw.stream(CHAT, chat_body(stream=True, mock={"chunks": 3, "chunk_delay_ms": 100}))
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = stream.collect()
    assert events and events[-1].done
    chunks = [e for e in events if not e.done]
    assert len(chunks) >= 3
    # streamed, not buffered: the chunks did not all arrive at the same moment
    assert chunks[-1].t - chunks[0].t >= 0.15
    gw.stop()


def test_gateway_reload_replaces_workers_and_serves_the_new_table(gateway, mock, table_for):
    gw = gateway(table_for(mock), workers=2)
    before = set(gw.worker_pids())
    assert len(before) == 2
    assert gw.reload(table_for(mock, model="gpt-4o"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if gw.json("POST", CHAT, chat_body(model="gpt-4o"))[0] == 200:
            break
        time.sleep(0.05)
    assert gw.json("POST", CHAT, chat_body(model="gpt-4o"))[0] == 200
    status, _, obj = gw.json("POST", CHAT, chat_body(model="gpt-4o-mini"))
    assert status in (400, 404) and "error" in obj
    gw.stop()


def test_gateway_with_a_broken_table_exits_nonzero(gateway):
    gw = gateway("{ this is not json", wait=False)
    assert gw.proc.wait(timeout=10) != 0
    assert not harness.children_of(gw.pid)
