// SPDX-License-Identifier: Apache-2.0
// The official `openai` SDK against the gateway's OpenAI endpoints, with the model served by an
// OpenAI-format or an Anthropic-format deployment (SY_BACKEND): what an agent built on the
// OpenAI SDK sees must not depend on the backend.
import test from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import {
    GATEWAY, KEY, LIMITED_KEY, BACKEND, B, MOCK_TEXT, MOCK_TOOL_ARGS, TIMEOUT_MS,
    setFaults, lastUpstreamRequest, textOf,
} from './common.mjs';

const client = (apiKey = KEY, opts = {}) =>
    new OpenAI({ baseURL: `${GATEWAY}/v1`, apiKey, timeout: TIMEOUT_MS, maxRetries: 0, ...opts });

const ASK = [{ role: 'user', content: 'Say hello' }];
const TOOLS = [{
    type: 'function',
    function: {
        name: 'get_weather',
        description: 'The current weather in a city',
        parameters: {
            type: 'object',
            properties: { city: { type: 'string' } },
            required: ['city'],
        },
    },
}];

test('chat', async () => {
    const { data: r, response } = await client().chat.completions
        .create({ model: B.model, messages: ASK, temperature: 0.2, max_tokens: 64 })
        .withResponse();
    assert.equal(response.headers.get('x-switchyard-deployment'), B.deployment);
    assert.equal(r.object, 'chat.completion');
    assert.ok(r.id, 'an id');
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].index, 0);
    assert.equal(r.choices[0].message.role, 'assistant');
    assert.equal(r.choices[0].message.content, MOCK_TEXT);
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.ok(r.usage.prompt_tokens > 0, JSON.stringify(r.usage));
    assert.equal(r.usage.completion_tokens, 5);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('stream', async () => {
    const stream = await client().chat.completions.create({
        model: B.model, messages: ASK, stream: true, stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.ok(chunks.length > 0);
    for (const c of chunks) {
        assert.equal(c.object, 'chat.completion.chunk');
        assert.equal(c.id, chunks[0].id, 'one id for the whole stream');
    }
    const withChoice = chunks.filter((c) => c.choices.length > 0);
    assert.equal(withChoice[0].choices[0].delta.role, 'assistant');
    const deltas = withChoice.map((c) => c.choices[0].delta.content).filter((t) => t);
    assert.equal(deltas.join(''), MOCK_TEXT);
    assert.ok(deltas.length >= 5, `relayed event by event, got ${deltas.length} content deltas`);
    const finishes = withChoice.map((c) => c.choices[0].finish_reason).filter((f) => f);
    assert.deepEqual(finishes, ['stop']);
    const usage = chunks.filter((c) => c.usage).map((c) => c.usage);
    assert.equal(usage.length, 1, 'one usage chunk (stream_options.include_usage)');
    assert.ok(usage[0].prompt_tokens > 0, JSON.stringify(usage[0]));
    assert.equal(usage[0].completion_tokens, 5);
    assert.equal(usage[0].total_tokens, usage[0].prompt_tokens + usage[0].completion_tokens);
});

test('tool call round trip', async () => {
    const c = client();
    await setFaults({ [B.upstream]: { tool_call: true } });
    let first;
    try {
        first = await c.chat.completions.create({ model: B.model, messages: ASK, tools: TOOLS });
    } finally {
        await setFaults();
    }
    const msg = first.choices[0].message;
    assert.equal(first.choices[0].finish_reason, 'tool_calls');
    assert.equal(msg.tool_calls.length, 1);
    const call = msg.tool_calls[0];
    assert.equal(call.type, 'function');
    assert.ok(call.id, 'the call has an id');
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), MOCK_TOOL_ARGS);

    const result = '{"temp_c":21,"sky":"clear"}';
    const second = await c.chat.completions.create({
        model: B.model,
        tools: TOOLS,
        messages: [...ASK, msg, { role: 'tool', tool_call_id: call.id, content: result }],
    });
    assert.equal(second.choices[0].message.content, MOCK_TEXT);
    assert.equal(second.choices[0].finish_reason, 'stop');

    // What the backend got: the call and its result, in its own format, id and arguments exact.
    const up = (await lastUpstreamRequest(B.upstream)).json;
    if (BACKEND === 'openai') {
        const asst = up.messages.find((m) => m.role === 'assistant');
        assert.equal(asst.tool_calls[0].id, call.id);
        assert.equal(asst.tool_calls[0].function.arguments, call.function.arguments);
        const tool = up.messages.find((m) => m.role === 'tool');
        assert.equal(tool.tool_call_id, call.id);
        assert.equal(textOf(tool.content), result);
    } else {
        assert.equal(up.tools[0].name, 'get_weather');
        assert.deepEqual(up.tools[0].input_schema, TOOLS[0].function.parameters);
        const asst = up.messages.find((m) => m.role === 'assistant');
        const use = asst.content.find((b) => b.type === 'tool_use');
        assert.equal(use.id, call.id);
        assert.equal(use.name, 'get_weather');
        assert.deepEqual(use.input, MOCK_TOOL_ARGS);
        const res = up.messages.flatMap((m) => (Array.isArray(m.content) ? m.content : []))
            .find((b) => b.type === 'tool_result');
        assert.equal(res.tool_use_id, call.id);
        assert.equal(textOf(res.content), result);
    }
});

test('tool call stream', async () => {
    await setFaults({ [B.upstream]: { tool_call: true } });
    const chunks = [];
    try {
        const stream = await client().chat.completions.create({
            model: B.model, messages: ASK, tools: TOOLS, stream: true,
        });
        for await (const chunk of stream) chunks.push(chunk);
    } finally {
        await setFaults();
    }
    // Put the call together the way an agent does: by index, arguments concatenated.
    const calls = [];
    let finish = null;
    for (const c of chunks) {
        for (const ch of c.choices) {
            if (ch.finish_reason) finish = ch.finish_reason;
            for (const d of ch.delta.tool_calls || []) {
                assert.equal(typeof d.index, 'number', 'every tool-call delta has an index');
                const t = (calls[d.index] ??= { id: '', name: '', args: '', pieces: 0 });
                if (d.id) t.id = d.id;
                if (d.function?.name) t.name += d.function.name;
                if (d.function?.arguments) { t.args += d.function.arguments; t.pieces++; }
            }
        }
    }
    assert.equal(finish, 'tool_calls');
    assert.equal(calls.length, 1);
    assert.ok(calls[0].id);
    assert.equal(calls[0].name, 'get_weather');
    assert.deepEqual(JSON.parse(calls[0].args), MOCK_TOOL_ARGS);
    assert.ok(calls[0].pieces >= 2, 'arguments arrive in pieces, as streamed');
});

if (BACKEND === 'openai') {
    // Embeddings exist only on OpenAI-format backends. Without encoding_format the SDK asks for
    // base64 and decodes it; the mock provider answers floats only, so ask for floats.
    test('embeddings', async () => {
        const r = await client().embeddings.create({
            model: B.model, input: ['one', 'two'], encoding_format: 'float',
        });
        assert.equal(r.object, 'list');
        assert.equal(r.data.length, 2);
        assert.deepEqual(r.data.map((d) => d.index), [0, 1]);
        for (const d of r.data) {
            assert.ok(Array.isArray(d.embedding) && d.embedding.length === 8);
            assert.ok(d.embedding.every((x) => typeof x === 'number'));
        }
        assert.notDeepEqual(r.data[0].embedding, r.data[1].embedding);
        const again = await client().embeddings.create({
            model: B.model, input: 'one', encoding_format: 'float',
        });
        assert.deepEqual(again.data[0].embedding, r.data[0].embedding);
        assert.ok(r.usage.prompt_tokens > 0);
    });

    test('models', async () => {
        const ids = [];
        for await (const m of client().models.list()) ids.push(m.id);
        for (const id of ['gpt', 'claude', 'gpt-fallback', 'claude-fallback'])
            assert.ok(ids.includes(id), `${id} in ${ids}`);
    });
}

test('rate limit from the gateway', async () => {
    assert.ok(LIMITED_KEY, 'SY_KEY_LIMITED is set');
    const c = client(LIMITED_KEY);
    const ok = await c.chat.completions.create({ model: B.model, messages: ASK });
    assert.equal(ok.choices[0].message.content, MOCK_TEXT);
    await assert.rejects(c.chat.completions.create({ model: B.model, messages: ASK }), (err) => {
        assert.ok(err instanceof OpenAI.RateLimitError, `${err?.constructor?.name}: ${err}`);
        assert.equal(err.status, 429);
        assert.ok(Number(err.headers.get('retry-after')) >= 1, 'a Retry-After header');
        assert.equal(err.code, 'rate_limit_exceeded');
        return true;
    });
    // a stream is refused the same way, before it starts
    await assert.rejects(
        c.chat.completions.create({ model: B.model, messages: ASK, stream: true }),
        OpenAI.RateLimitError);
});

test('rate limit from the provider', async () => {
    await assert.rejects(client().chat.completions.create({ model: B.model429, messages: ASK }),
        (err) => {
            assert.ok(err instanceof OpenAI.RateLimitError, `${err?.constructor?.name}: ${err}`);
            assert.equal(err.status, 429);
            assert.equal(typeof err.error?.message, 'string', 'an OpenAI-shaped error body');
            return true;
        });
});

test('authentication error', async () => {
    const bad = client('sk-sy-NotAValidKey0123456789abcdef');
    await assert.rejects(bad.chat.completions.create({ model: B.model, messages: ASK }), (err) => {
        assert.ok(err instanceof OpenAI.AuthenticationError, `${err?.constructor?.name}: ${err}`);
        assert.equal(err.status, 401);
        assert.equal(err.code, 'invalid_api_key');
        assert.ok(!JSON.stringify(err.error).includes('NotAValidKey0123456789'), 'key not echoed');
        return true;
    });
    await assert.rejects(
        bad.chat.completions.create({ model: B.model, messages: ASK, stream: true }),
        OpenAI.AuthenticationError);
});
