// SPDX-License-Identifier: Apache-2.0
// What every client test shares: where the gateway and the mock provider are, which public
// models stand for which backend, and a few helpers. The runner
// (tests/integration/test_sdk_clients.py) starts the mock provider and a gateway whose table
// matches the names below, and passes these environment variables:
//
//   SY_GATEWAY_URL   the gateway's origin, e.g. http://127.0.0.1:41234 (no /v1)
//   SY_KEY           a client key that may use every model
//   SY_KEY_LIMITED   a client key with rpm 1, used by this run only (gateway's own 429)
//   SY_MOCK_URL      the mock provider's origin (for /mock/config and /mock/requests)
//   SY_MOCK_FAULTS   the mock's standing per-model faults (JSON), kept when a test adds its own
//   SY_BACKEND       "openai" or "anthropic": the format of the deployment behind the model
//
// Run one file by hand against running servers:
//   SY_GATEWAY_URL=... SY_KEY=... SY_MOCK_URL=... SY_BACKEND=openai node --test tests/client/openai-sdk.test.mjs

function need(name) {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set (see tests/client/common.mjs)`);
    return v;
}

export const GATEWAY = need('SY_GATEWAY_URL').replace(/\/+$/, '');
export const KEY = need('SY_KEY');
export const LIMITED_KEY = process.env.SY_KEY_LIMITED || '';
export const MOCK = need('SY_MOCK_URL').replace(/\/+$/, '');
export const BACKEND = process.env.SY_BACKEND || 'openai';
const STANDING_FAULTS = JSON.parse(process.env.SY_MOCK_FAULTS || '{}');

// The gateway's table (kept in step with test_sdk_clients.py): for each backend format, the
// public model, its deployment and the upstream model id the mock sees.
export const BACKENDS = {
    openai: {
        model: 'gpt', deployment: 'oa', upstream: 'oa-up',
        model429: 'gpt-429',            // its deployment always answers 429
        fallback: 'gpt-fallback',       // primary oa-broken (500) -> model "claude"
    },
    anthropic: {
        model: 'claude', deployment: 'an', upstream: 'an-up',
        model429: 'claude-429',
        fallback: 'claude-fallback',    // primary an-broken (500) -> model "gpt"
    },
};
if (!BACKENDS[BACKEND]) throw new Error(`SY_BACKEND must be openai or anthropic, not ${BACKEND}`);
export const B = BACKENDS[BACKEND];

// What the mock answers by default (tests/mockprovider/README.md).
export const MOCK_TEXT = 'Hello from the mock provider.';
export const MOCK_TOOL_ARGS = { city: 'Paris' };
export const TIMEOUT_MS = 15000;

// Replace the mock's per-model faults with the standing ones plus <extra> ({upstream: fault}).
export async function setFaults(extra = {}) {
    const r = await fetch(`${MOCK}/mock/config`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ by_model: { ...STANDING_FAULTS, ...extra } }),
    });
    if (r.status !== 200) throw new Error(`POST /mock/config: ${r.status} ${await r.text()}`);
}

// The last request the mock received for upstream model <upstream>, its body parsed.
export async function lastUpstreamRequest(upstream) {
    const r = await fetch(`${MOCK}/mock/requests`);
    if (r.status !== 200) throw new Error(`GET /mock/requests: ${r.status}`);
    const log = await r.json();
    for (let i = log.length - 1; i >= 0; i--) {
        let body;
        try { body = JSON.parse(log[i].body); } catch { continue; }
        if (body && body.model === upstream) return { ...log[i], json: body };
    }
    throw new Error(`the mock received no request for ${upstream}`);
}

// A tool result's text, whether sent as a string or as content blocks.
export function textOf(content) {
    if (typeof content === 'string') return content;
    if (Array.isArray(content)) return content.map((b) => (b.type === 'text' ? b.text : '')).join('');
    return '';
}
