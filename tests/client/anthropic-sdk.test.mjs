// SPDX-License-Identifier: Apache-2.0
// The official `@anthropic-ai/sdk` against the gateway's Anthropic-compatible endpoint
// (POST /v1/messages), with the model served by an Anthropic-format or an OpenAI-format
// deployment (SY_BACKEND): an agent built on the Anthropic SDK can use any backend.
import test from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import {
    GATEWAY, KEY, LIMITED_KEY, BACKEND, B, MOCK_TEXT, MOCK_TOOL_ARGS, TIMEOUT_MS,
    setFaults, lastUpstreamRequest, textOf,
} from './common.mjs';

// The SDK sends the key as x-api-key and appends /v1/messages to the base URL.
const client = (apiKey = KEY, opts = {}) =>
    new Anthropic({ baseURL: GATEWAY, apiKey, timeout: TIMEOUT_MS, maxRetries: 0, ...opts });

const ASK = [{ role: 'user', content: 'Say hello' }];
const TOOLS = [{
    name: 'get_weather',
    description: 'The current weather in a city',
    input_schema: {
        type: 'object',
        properties: { city: { type: 'string' } },
        required: ['city'],
    },
}];

const textOfMessage = (m) => m.content.filter((b) => b.type === 'text').map((b) => b.text).join('');

test('message', async () => {
    const { data: m, response } = await client().messages
        .create({ model: B.model, max_tokens: 256, system: 'You are terse.', messages: ASK })
        .withResponse();
    assert.equal(response.headers.get('x-switchyard-deployment'), B.deployment);
    assert.equal(m.type, 'message');
    assert.equal(m.role, 'assistant');
    assert.ok(m.id, 'an id');
    assert.equal(m.content.length, 1);
    assert.equal(m.content[0].type, 'text');
    assert.equal(m.content[0].text, MOCK_TEXT);
    assert.equal(m.stop_reason, 'end_turn');
    assert.ok(m.usage.input_tokens > 0, JSON.stringify(m.usage));
    assert.equal(m.usage.output_tokens, 5);

    // the system prompt reached the backend in its own format
    const up = (await lastUpstreamRequest(B.upstream)).json;
    if (BACKEND === 'anthropic') {
        assert.equal(textOf(up.system), 'You are terse.');
    } else {
        assert.equal(up.messages[0].role, 'system');
        assert.equal(textOf(up.messages[0].content), 'You are terse.');
        assert.equal(up.messages[1].role, 'user');
    }
});

test('stream', async () => {
    const stream = client().messages.stream({ model: B.model, max_tokens: 256, messages: ASK });
    const pieces = [];
    stream.on('text', (t) => pieces.push(t));
    const m = await stream.finalMessage();
    assert.equal(pieces.join(''), MOCK_TEXT);
    assert.ok(pieces.length >= 5, `relayed event by event, got ${pieces.length} text deltas`);
    assert.equal(textOfMessage(m), MOCK_TEXT);
    assert.equal(m.role, 'assistant');
    assert.equal(m.stop_reason, 'end_turn');
    assert.ok(m.usage.input_tokens > 0, `input_tokens ${JSON.stringify(m.usage)}`);
    assert.ok(m.usage.output_tokens > 0, `output_tokens ${JSON.stringify(m.usage)}`);
    assert.equal(m.usage.output_tokens, 5);
});

test('raw event stream', async () => {
    const stream = await client().messages.create({
        model: B.model, max_tokens: 256, messages: ASK, stream: true,
    });
    const events = [];
    for await (const ev of stream) events.push(ev);
    const types = events.map((e) => e.type).filter((t) => t !== 'ping');
    assert.equal(types[0], 'message_start');
    assert.equal(types.at(-1), 'message_stop');
    assert.equal(types.at(-2), 'message_delta');
    assert.equal(types[1], 'content_block_start');
    assert.equal(types.at(-3), 'content_block_stop');
    const start = events[0].message;
    assert.equal(start.role, 'assistant');
    assert.deepEqual(start.content, []);
    const deltas = events.filter((e) => e.type === 'content_block_delta');
    assert.ok(deltas.every((e) => e.delta.type === 'text_delta' && e.index === 0));
    assert.equal(deltas.map((e) => e.delta.text).join(''), MOCK_TEXT);
    const md = events.find((e) => e.type === 'message_delta');
    assert.equal(md.delta.stop_reason, 'end_turn');
    assert.equal(md.usage.output_tokens, 5);
    // Input tokens: in message_start, or (a backend that reports usage only at the end) as the
    // whole-message total in message_delta, which the SDK takes over.
    const input = md.usage.input_tokens ?? start.usage.input_tokens;
    assert.ok(input > 0, `input_tokens: start ${JSON.stringify(start.usage)}, delta ${JSON.stringify(md.usage)}`);
});

test('tool use round trip', async () => {
    const c = client();
    await setFaults({ [B.upstream]: { tool_call: true } });
    let first;
    try {
        first = await c.messages.create({ model: B.model, max_tokens: 256, messages: ASK, tools: TOOLS });
    } finally {
        await setFaults();
    }
    assert.equal(first.stop_reason, 'tool_use');
    const uses = first.content.filter((b) => b.type === 'tool_use');
    assert.equal(uses.length, 1);
    const use = uses[0];
    assert.ok(use.id, 'the call has an id');
    assert.equal(use.name, 'get_weather');
    assert.deepEqual(use.input, MOCK_TOOL_ARGS);

    const result = '{"temp_c":21,"sky":"clear"}';
    const second = await c.messages.create({
        model: B.model,
        max_tokens: 256,
        tools: TOOLS,
        messages: [
            ...ASK,
            { role: 'assistant', content: first.content },
            { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: result }] },
        ],
    });
    assert.equal(textOfMessage(second), MOCK_TEXT);
    assert.equal(second.stop_reason, 'end_turn');

    // What the backend got: the call and its result, in its own format, id and arguments exact.
    const up = (await lastUpstreamRequest(B.upstream)).json;
    if (BACKEND === 'anthropic') {
        const asst = up.messages.find((m) => m.role === 'assistant');
        const u = asst.content.find((b) => b.type === 'tool_use');
        assert.equal(u.id, use.id);
        assert.deepEqual(u.input, MOCK_TOOL_ARGS);
        const res = up.messages.at(-1).content.find((b) => b.type === 'tool_result');
        assert.equal(res.tool_use_id, use.id);
        assert.equal(textOf(res.content), result);
    } else {
        assert.equal(up.tools[0].type, 'function');
        assert.equal(up.tools[0].function.name, 'get_weather');
        assert.deepEqual(up.tools[0].function.parameters, TOOLS[0].input_schema);
        const asst = up.messages.find((m) => m.role === 'assistant');
        assert.equal(asst.tool_calls[0].id, use.id);
        assert.equal(asst.tool_calls[0].function.name, 'get_weather');
        assert.deepEqual(JSON.parse(asst.tool_calls[0].function.arguments), MOCK_TOOL_ARGS);
        const tool = up.messages.find((m) => m.role === 'tool');
        assert.equal(tool.tool_call_id, use.id);
        assert.equal(textOf(tool.content), result);
    }
});

test('tool use stream', async () => {
    await setFaults({ [B.upstream]: { tool_call: true } });
    let m;
    const jsonPieces = [];
    try {
        const stream = client().messages.stream({
            model: B.model, max_tokens: 256, messages: ASK, tools: TOOLS,
        });
        stream.on('inputJson', (piece) => jsonPieces.push(piece));
        m = await stream.finalMessage();
    } finally {
        await setFaults();
    }
    assert.equal(m.stop_reason, 'tool_use');
    const use = m.content.find((b) => b.type === 'tool_use');
    assert.ok(use, JSON.stringify(m.content));
    assert.ok(use.id);
    assert.equal(use.name, 'get_weather');
    assert.deepEqual(use.input, MOCK_TOOL_ARGS);
    assert.ok(jsonPieces.length >= 2, 'input_json_delta pieces, as streamed');
    assert.deepEqual(JSON.parse(jsonPieces.join('')), MOCK_TOOL_ARGS);
    assert.ok(m.usage.input_tokens > 0 && m.usage.output_tokens > 0, JSON.stringify(m.usage));
});

test('rate limit from the gateway', async () => {
    assert.ok(LIMITED_KEY, 'SY_KEY_LIMITED is set');
    const c = client(LIMITED_KEY);
    const ok = await c.messages.create({ model: B.model, max_tokens: 64, messages: ASK });
    assert.equal(textOfMessage(ok), MOCK_TEXT);
    await assert.rejects(c.messages.create({ model: B.model, max_tokens: 64, messages: ASK }),
        (err) => {
            assert.ok(err instanceof Anthropic.RateLimitError, `${err?.constructor?.name}: ${err}`);
            assert.equal(err.status, 429);
            assert.ok(Number(err.headers.get('retry-after')) >= 1, 'a Retry-After header');
            assert.equal(err.error?.type, 'error', 'an Anthropic-shaped error body');
            assert.equal(err.error?.error?.type, 'rate_limit_error');
            return true;
        });
    await assert.rejects(
        c.messages.stream({ model: B.model, max_tokens: 64, messages: ASK }).finalMessage(),
        Anthropic.RateLimitError);
});

test('rate limit from the provider', async () => {
    await assert.rejects(
        client().messages.create({ model: B.model429, max_tokens: 64, messages: ASK }),
        (err) => {
            assert.ok(err instanceof Anthropic.RateLimitError, `${err?.constructor?.name}: ${err}`);
            assert.equal(err.status, 429);
            assert.equal(err.error?.type, 'error', 'an Anthropic-shaped error body');
            assert.equal(err.error?.error?.type, 'rate_limit_error');
            return true;
        });
});

test('authentication error', async () => {
    const bad = client('sk-sy-NotAValidKey0123456789abcdef');
    await assert.rejects(bad.messages.create({ model: B.model, max_tokens: 64, messages: ASK }),
        (err) => {
            assert.ok(err instanceof Anthropic.AuthenticationError,
                `${err?.constructor?.name}: ${err}`);
            assert.equal(err.status, 401);
            assert.equal(err.error?.type, 'error', 'an Anthropic-shaped error body');
            assert.equal(err.error?.error?.type, 'authentication_error');
            assert.ok(!JSON.stringify(err.error).includes('NotAValidKey0123456789'), 'key not echoed');
            return true;
        });
    await assert.rejects(
        bad.messages.stream({ model: B.model, max_tokens: 64, messages: ASK }).finalMessage(),
        Anthropic.AuthenticationError);
});
