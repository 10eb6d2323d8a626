// SPDX-License-Identifier: Apache-2.0
// Cross-format fallback under streaming: the primary fails with a 500 before any content and
// the backup speaks the other format. The client must get a well-formed stream in its own
// format, as if the backup had been its only model.
import test from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { GATEWAY, KEY, BACKENDS, MOCK_TEXT, TIMEOUT_MS } from './common.mjs';

const ASK = [{ role: 'user', content: 'Say hello' }];

// The raw SSE of a request, split into events ({event, data}).
async function rawEvents(path, headers, body) {
    const r = await fetch(`${GATEWAY}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify(body),
    });
    if (r.status !== 200) assert.fail(`HTTP ${r.status}: ${await r.text()}`);
    assert.match(r.headers.get('content-type'), /^text\/event-stream/);
    const text = await r.text();
    assert.ok(text.endsWith('\n\n'), 'the stream ends with a complete event');
    return {
        headers: r.headers,
        events: text.split(/\n\n/).filter((b) => b.trim()).map((block) => {
            const ev = { event: null, data: [] };
            for (const line of block.split('\n')) {
                if (line.startsWith('event:')) ev.event = line.slice(6).trim();
                else if (line.startsWith('data:')) ev.data.push(line.slice(5).replace(/^ /, ''));
            }
            ev.data = ev.data.join('\n');
            return ev;
        }),
    };
}

test('openai client streams from an anthropic-format backup', async () => {
    const model = BACKENDS.openai.fallback;
    const client = new OpenAI({ baseURL: `${GATEWAY}/v1`, apiKey: KEY, timeout: TIMEOUT_MS, maxRetries: 0 });
    const { data: stream, response } = await client.chat.completions
        .create({ model, messages: ASK, stream: true, stream_options: { include_usage: true } })
        .withResponse();
    assert.equal(response.headers.get('x-switchyard-model'), BACKENDS.anthropic.model);
    assert.equal(response.headers.get('x-switchyard-deployment'), BACKENDS.anthropic.deployment);
    assert.match(response.headers.get('x-switchyard-trace'), /^oa-broken;500;/);
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    for (const c of chunks) {
        assert.equal(c.object, 'chat.completion.chunk');
        assert.equal(c.id, chunks[0].id);
    }
    const withChoice = chunks.filter((c) => c.choices.length > 0);
    assert.equal(withChoice[0].choices[0].delta.role, 'assistant');
    assert.equal(withChoice.map((c) => c.choices[0].delta.content ?? '').join(''), MOCK_TEXT);
    assert.deepEqual(withChoice.map((c) => c.choices[0].finish_reason).filter((f) => f), ['stop']);
    const usage = chunks.filter((c) => c.usage);
    assert.equal(usage.length, 1);
    assert.ok(usage[0].usage.prompt_tokens > 0 && usage[0].usage.completion_tokens === 5,
        JSON.stringify(usage[0].usage));

    // The SDK's stream helper puts the stream together and checks its shape as it goes.
    const helper = client.chat.completions.stream({ model, messages: ASK });
    const final = await helper.finalChatCompletion();
    assert.equal(final.choices[0].message.content, MOCK_TEXT);
    assert.equal(final.choices[0].finish_reason, 'stop');

    // On the wire: only data lines with chunk JSON, no Anthropic event names, [DONE] last.
    const { events } = await rawEvents('/v1/chat/completions', { authorization: `Bearer ${KEY}` },
        { model, messages: ASK, stream: true });
    assert.equal(events.at(-1).data, '[DONE]');
    for (const ev of events.slice(0, -1)) {
        assert.equal(ev.event, null, `no "event:" line in an OpenAI stream: ${ev.event}`);
        assert.equal(JSON.parse(ev.data).object, 'chat.completion.chunk');
    }
});

test('anthropic client streams from an openai-format backup', async () => {
    const model = BACKENDS.anthropic.fallback;
    const client = new Anthropic({ baseURL: GATEWAY, apiKey: KEY, timeout: TIMEOUT_MS, maxRetries: 0 });
    const stream = client.messages.stream({ model, max_tokens: 256, messages: ASK });
    const pieces = [];
    stream.on('text', (t) => pieces.push(t));
    const m = await stream.finalMessage();
    assert.equal(pieces.join(''), MOCK_TEXT);
    assert.equal(m.content[0].text, MOCK_TEXT);
    assert.equal(m.stop_reason, 'end_turn');
    assert.ok(m.usage.input_tokens > 0 && m.usage.output_tokens > 0, JSON.stringify(m.usage));

    // On the wire: named Anthropic events, each name matching its data's type; no [DONE].
    const { headers, events } = await rawEvents('/v1/messages',
        { 'x-api-key': KEY, 'anthropic-version': '2023-06-01' },
        { model, max_tokens: 256, messages: ASK, stream: true });
    assert.equal(headers.get('x-switchyard-deployment'), BACKENDS.openai.deployment);
    for (const ev of events) {
        assert.notEqual(ev.data, '[DONE]');
        assert.equal(JSON.parse(ev.data).type, ev.event);
    }
    assert.equal(events[0].event, 'message_start');
    assert.equal(events.at(-1).event, 'message_stop');
});
