# SPDX-License-Identifier: Apache-2.0
"""The official SDKs from npm (`openai`, `@anthropic-ai/sdk`, pinned in package-lock.json) used
as an agent would use them, against a gateway in front of the mock provider.

The tests themselves are JavaScript, in tests/client/*.test.mjs (node:test). This module starts
one mock provider and one gateway for all of them, and runs each JS test in its own
`node --test --test-name-pattern` process, so that every scenario is one pytest case and shows
in the counts. The gateway's table (names shared with tests/client/common.mjs):

    gpt             -> deployment oa         (format openai,    upstream model oa-up)
    claude          -> deployment an         (format anthropic, upstream model an-up)
    gpt-429         -> oa-429                (the mock always answers 429)
    claude-429      -> an-429                (the same, Anthropic format)
    gpt-fallback    -> oa-broken (500)       falls back to claude (Anthropic format)
    claude-fallback -> an-broken (500)       falls back to gpt (OpenAI format)

Keys are required: KEY may use everything, and each scenario that checks the gateway's own 429
gets a key of its own with rpm 1. Each SDK file runs against both backends (SY_BACKEND).

Needs node (20+) and `npm ci` (scripts/install-deps.sh does it).
"""

import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest

import harness

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLIENT_DIR = os.path.join(ROOT, "tests", "client")
NODE_TIMEOUT = 60  # seconds for one node process

KEY = "sk-sy-ClientSdkTests0123456789abcdefgh"

# Each (file, backend): the tests in that file, by name. A name here that the file does not
# define fails (the node run passes no test), so the list and the files cannot drift apart.
SCENARIOS = {
    ("openai-sdk", "openai"): ["chat", "stream", "tool call round trip", "tool call stream",
                               "embeddings", "models", "rate limit from the gateway",
                               "rate limit from the provider", "authentication error"],
    ("openai-sdk", "anthropic"): ["chat", "stream", "tool call round trip", "tool call stream",
                                  "rate limit from the gateway", "rate limit from the provider",
                                  "authentication error"],
    ("anthropic-sdk", "anthropic"): ["message", "stream", "raw event stream",
                                     "tool use round trip", "tool use stream",
                                     "rate limit from the gateway",
                                     "rate limit from the provider", "authentication error"],
    ("anthropic-sdk", "openai"): ["message", "stream", "raw event stream", "tool use round trip",
                                  "tool use stream", "rate limit from the gateway",
                                  "rate limit from the provider", "authentication error"],
    ("fallback", "openai"): ["openai client streams from an anthropic-format backup",
                             "anthropic client streams from an openai-format backup"],
}

CASES = [(f, b, name) for (f, b), names in SCENARIOS.items() for name in names]

# A rate-limited key (rpm 1) for each scenario that needs one: its first request passes, its
# second is the gateway's 429.
LIMITED = {(f, b): f"sk-sy-Lim-{f}-{b}-0123456789abcdef" for (f, b) in SCENARIOS}

# The mock's standing faults, by upstream model id; a test that adds its own keeps these.
FAULTS = {
    "oa-429-up": {"status": 429},
    "an-429-up": {"status": 429},
    "oa-broken-up": {"status": 500},
    "an-broken-up": {"status": 500},
}


def _sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def _table(mock):
    timeouts = dict(harness.DEFAULT_TIMEOUTS)

    def dep(name, fmt):
        d = {"name": name, "provider": "mock-" + fmt, "model": name + "-up", "format": fmt,
             "base_url": mock.url, "api_key": "sk-mock-" + fmt, "timeouts": dict(timeouts)}
        if fmt == "openai":
            d["auth"] = "bearer"
        return d

    def model(name, deployment, fallbacks=None):
        m = {"name": name, "targets": [{"deployment": deployment, "weight": 1}],
             "policy": {"retry": {"attempts": 1}}}
        if fallbacks:
            m["fallbacks"] = fallbacks
        return m

    keys = [{"hash": _sha(KEY), "id": 1, "name": "sdk", "prefix": KEY[:10], "slot": 0}]
    for i, key in enumerate(LIMITED.values()):
        keys.append({"hash": _sha(key), "id": 2 + i, "name": f"limited-{i}", "prefix": key[:10],
                     "slot": 1 + i, "rpm": 1})
    return {
        "version": 1,
        "deployments": [dep("oa", "openai"), dep("an", "anthropic"),
                        dep("oa-429", "openai"), dep("an-429", "anthropic"),
                        dep("oa-broken", "openai"), dep("an-broken", "anthropic")],
        "models": [model("gpt", "oa"), model("claude", "an"),
                   model("gpt-429", "oa-429"), model("claude-429", "an-429"),
                   model("gpt-fallback", "oa-broken", ["claude"]),
                   model("claude-fallback", "an-broken", ["gpt"])],
        "require_keys": True,
        "keys": keys,
    }


@pytest.fixture(scope="module")
def node():
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not installed (the SDK client tests need Node.js 20+)")
    for pkg in ("openai", "@anthropic-ai/sdk"):
        if not os.path.isfile(os.path.join(ROOT, "node_modules", pkg, "package.json")):
            pytest.fail(f"node_modules/{pkg} is missing: run scripts/install-deps.sh (npm ci)")
    return exe


@pytest.fixture(scope="module")
def sdk_gateway(build_dir, mock, tmp_path_factory):
    mock.reset()
    mock.config({"by_model": FAULTS})
    gw = harness.Gateway(build_dir, str(tmp_path_factory.mktemp("sdk-gateway")), _table(mock),
                         workers=1, name="sdk-gateway")
    yield gw
    gw.process.kill()


def _run(node, gw, mock, file, backend, name):
    env = dict(os.environ)
    env.update({
        "SY_GATEWAY_URL": gw.url,
        "SY_KEY": KEY,
        "SY_KEY_LIMITED": LIMITED[(file, backend)],
        "SY_MOCK_URL": mock.origin,
        "SY_MOCK_FAULTS": json.dumps(FAULTS),
        "SY_BACKEND": backend,
        "NODE_NO_WARNINGS": "1",
    })
    argv = [node, "--test", "--test-reporter=tap",
            "--test-name-pattern", "^" + re.escape(name) + "$",
            os.path.join(CLIENT_DIR, f"{file}.test.mjs")]
    try:
        r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=NODE_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        pytest.fail(f"node --test still running after {NODE_TIMEOUT}s\n{out}")
    return r


def _count(tap, what):
    m = re.search(rf"^# {what} (\d+)$", tap, re.M)
    return int(m.group(1)) if m else 0


@pytest.mark.timeout(NODE_TIMEOUT + 15)
@pytest.mark.parametrize("file,backend,name", CASES,
                         ids=[f"{f} {n}" if f == "fallback" else f"{f}[{b} backend] {n}"
                              for f, b, n in CASES])
def test_sdk(node, sdk_gateway, mock, file, backend, name):
    r = _run(node, sdk_gateway, mock, file, backend, name)
    report = f"$ SY_BACKEND={backend} node --test {file}.test.mjs ({name})\n{r.stdout}\n{r.stderr}"
    assert r.returncode == 0, report
    assert _count(r.stdout, "fail") == 0, report
    assert _count(r.stdout, "pass") == 1, f"expected exactly one test named {name!r}\n{report}"
