# SPDX-License-Identifier: Apache-2.0
"""The governance policy of a public model through the admin API, against a real PostgreSQL:
valid policies round-trip through GET; every invalid one is a 400 naming the field at fault; rule
targets must exist; a loop among fallbacks and rule targets is refused when it is written, with
the loop named; renames follow into rules and referenced things cannot be deleted."""

import os

import pytest

from pg import pg_server  # noqa: F401  (fixture)
from test_admin_api import ControlPlane, deployment, expect_error, provider


@pytest.fixture(scope="module")
def db(pg_server):
    name = f"model_policy_{os.getpid()}"
    pg_server.psql(f'CREATE DATABASE "{name}"')
    yield name
    if pg_server.running():
        pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def cp(build_dir, pg_server, db, tmp_path_factory):
    c = ControlPlane(build_dir, str(tmp_path_factory.mktemp("cp")), pg_server.url_for(db))
    provider(c, "p-pol")
    for d in ("d-gpt", "d-claude", "d-qwen", "d-cheap", "d-big"):
        deployment(c, d, "p-pol")
    yield c
    c.stop()


def model(cp, name, dep="d-gpt", **fields):
    body = {"name": name, "targets": [{"deployment": dep}]}
    body.update(fields)
    return cp.ok("POST", "models", body, 201)[0]


FULL_POLICY = {
    "balance": "least_connections",
    "retry": {"attempts": 3, "backoff_ms": 50, "max_backoff_ms": 800, "retry_after_cap_ms": 2000,
              "budget_percent": 10, "on": ["connect", "429", "status"]},
    "circuit": {"window_ms": 10000, "min_requests": 5, "error_percent": 40, "consecutive": 3,
                "cooldown_ms": 5000, "half_open_probes": 2},
    "fallback_on": ["connect", "timeout", "429", "5xx", "context_length"],
    "statuses": [408, 503],
    "shed_percent": 90,
    "max_timeout_ms": 120000,
    "rules": [
        {"name": "simple", "when": {"complexity_below": 0.3, "tokens_below": 2000,
                                    "has_tools": False},
         "target": {"deployments": [{"deployment": "d-cheap", "weight": 3},
                                    {"deployment": "d-gpt"}]}},
        {"name": "vip", "when": {"header": {"x-priority": ["high", "urgent"]},
                                 "tier": ["gold"], "agent": "support-bot"},
         "target": {"model": "pol-big"}},
        {"when": {"messages_above": 40, "has_images": True, "user": ["ann", "bob"]},
         "target": {"model": "pol-big"}},
    ],
}


def test_a_full_policy_round_trips_through_get(cp):
    model(cp, "pol-big", "d-big")
    doc = model(cp, "pol-full", policy=FULL_POLICY, fallbacks=["pol-big"])
    assert doc["policy"] == FULL_POLICY and doc["fallbacks"] == ["pol-big"]
    got = cp.ok("GET", "models/pol-full")[0]
    assert got["policy"] == FULL_POLICY and got["fallbacks"] == ["pol-big"]
    # PATCH replaces the policy as a whole
    doc = cp.ok("PATCH", "models/pol-full", {"policy": {"balance": "latency"}})[0]
    assert doc["policy"] == {"balance": "latency"} and doc["fallbacks"] == ["pol-big"]


def test_a_model_without_a_policy_stores_an_empty_one(cp):
    doc = model(cp, "pol-none")
    assert doc["policy"] == {} and doc["fallbacks"] == []


@pytest.mark.parametrize("policy,param,fragment", [
    ({"balance": "random"}, "policy.balance",
     'must be "weighted", "round_robin", "least_connections", "latency" or "cost"'),
    ({"retry": {"attempts": 11}}, "policy.retry.attempts",
     "policy.retry.attempts: must be a whole number from 1 to 10"),
    ({"retry": {"attempts": 0}}, "policy.retry.attempts", "from 1 to 10"),
    ({"retry": {"attempts": "2"}}, "policy.retry.attempts", "from 1 to 10"),
    ({"retry": {"budget_percent": 101}}, "policy.retry.budget_percent", "from 0 to 100"),
    ({"retry": {"backoff_ms": 500, "max_backoff_ms": 100}}, "policy.retry.max_backoff_ms",
     "must be at least backoff_ms (500)"),
    ({"retry": {"tries": 3}}, "policy.retry.tries", "policy.retry.tries: unknown field"),
    ({"retry": {"on": ["connect", "flaky"]}}, "policy.retry.on[1]",
     'unknown trigger "flaky"; valid triggers are "connect", "timeout", "429", "5xx", '
     '"context_length", "status", "malformed"'),
    ({"retry": {"on": ["429", "429"]}}, "policy.retry.on[1]", "listed twice"),
    ({"retry": []}, "policy.retry", "expected a map"),
    ({"circuit": {"error_percent": 0}}, "policy.circuit.error_percent", "from 1 to 100"),
    ({"circuit": {"window_ms": 10}}, "policy.circuit.window_ms", "from 1000 to 3600000"),
    ({"circuit": {"half_open": 1}}, "policy.circuit.half_open", "unknown field"),
    ({"fallback_on": "5xx"}, "policy.fallback_on", "expected an array of trigger names"),
    ({"fallback_on": ["status"]}, "policy.statuses", 'required when retry.on or fallback_on'),
    ({"statuses": [200]}, "policy.statuses[0]", "from 400 to 599"),
    ({"shed_percent": 0}, "policy.shed_percent", "from 1 to 100"),
    ({"max_timeout_ms": -1}, "policy.max_timeout_ms", "from 0 to 3600000"),
    ({"strategy": "weighted", "balance": "cost"}, "policy.strategy", "older name of balance"),
    ({"colour": "red"}, "policy.colour", "policy.colour: unknown field"),
    ({"rules": {}}, "policy.rules", "expected an array of rules"),
    ({"rules": [{"when": {}}]}, "policy.rules[0].target", "missing"),
    ({"rules": [{"target": {}}]}, "policy.rules[0].target",
     "policy.rules[0].target: give either model"),
    ({"rules": [{"target": {"model": "pol-big", "deployments": [{"deployment": "d-gpt"}]}}]},
     "policy.rules[0].target", "give either model"),
    ({"rules": [{"target": {"deployments": []}}]}, "policy.rules[0].target.deployments",
     "at least one deployment"),
    ({"rules": [{"target": {"deployments": [{"deployment": "d-gpt", "weight": 0}]}}]},
     "policy.rules[0].target.deployments", "weights sum to 0"),
    ({"rules": [{"target": {"deployments": [{"deployment": "d-gpt"},
                                            {"deployment": "d-gpt"}]}}]},
     "policy.rules[0].target.deployments[1].deployment", 'deployment "d-gpt" is listed twice'),
    ({"rules": [{"when": {"complexity_above": 1.5}, "target": {"model": "pol-big"}}]},
     "policy.rules[0].when.complexity_above", "must be a number from 0 to 1"),
    ({"rules": [{"when": {"has_tools": 1}, "target": {"model": "pol-big"}}]},
     "policy.rules[0].when.has_tools", "expected true or false"),
    ({"rules": [{"when": {"tokens_above": -5}, "target": {"model": "pol-big"}}]},
     "policy.rules[0].when.tokens_above", "whole number from 0 to"),
    ({"rules": [{"when": {"tier": []}, "target": {"model": "pol-big"}}]},
     "policy.rules[0].when.tier", "must list 1 to"),
    ({"rules": [{"when": {"header": {"x p": "a"}}, "target": {"model": "pol-big"}}]},
     'policy.rules[0].when.header["x p"]', "illegal character"),
    ({"rules": [{"when": {"weekday": "mon"}, "target": {"model": "pol-big"}}]},
     "policy.rules[0].when.weekday", "unknown field"),
    ({"rules": [{"target": {"model": "pol-big"}, "priority": 1}]}, "policy.rules[0].priority",
     "unknown field"),
    # what needs the database
    ({"rules": [{"target": {"model": "pol-ghost"}}]}, "policy.rules[0].target.model",
     'policy.rules[0].target.model: unknown model "pol-ghost"'),
    ({"rules": [{"target": {"model": "pol-big"}},
                {"target": {"deployments": [{"deployment": "d-ghost"}]}}]},
     "policy.rules[1].target.deployments[0].deployment", 'unknown deployment "d-ghost"'),
])
def test_an_invalid_policy_is_400_naming_the_field(cp, policy, param, fragment):
    if cp.call("GET", "models/pol-big")[0] == 404:
        model(cp, "pol-big", "d-big")
    expect_error(cp, "POST", "models",
                 {"name": "pol-bad", "targets": [{"deployment": "d-gpt"}], "policy": policy},
                 400, param, fragment)
    assert cp.call("GET", "models/pol-bad")[0] == 404
    if cp.call("GET", "models/pol-bad-ok")[0] == 404:
        model(cp, "pol-bad-ok")
    expect_error(cp, "PATCH", "models/pol-bad-ok", {"policy": policy}, 400, param, fragment)
    assert cp.ok("GET", "models/pol-bad-ok")[0]["version"] == 1


def test_a_fallback_loop_is_refused_with_the_loop_named(cp):
    model(cp, "loop-a", fallbacks=[])
    model(cp, "loop-b", fallbacks=["loop-a"])
    expect_error(cp, "PATCH", "models/loop-a", {"fallbacks": ["loop-b"]}, 400, "fallbacks",
                 "fallbacks: fallback loop loop-a → loop-b → loop-a")
    assert cp.ok("GET", "models/loop-a")[0]["fallbacks"] == []
    # three long
    model(cp, "loop-c", fallbacks=["loop-b"])
    expect_error(cp, "PATCH", "models/loop-a", {"fallbacks": ["loop-c"]}, 400, "fallbacks",
                 "fallback loop loop-a → loop-c → loop-b → loop-a")
    # a rule target counts as much as a fallback
    err = expect_error(cp, "PATCH", "models/loop-a",
                       {"policy": {"rules": [{"target": {"model": "loop-c"}}]}}, 400,
                       "policy.rules", "routing loop loop-a → loop-c → loop-b → loop-a")
    assert "through fallbacks and rule targets" in err["message"]
    # a rule that sends a model to itself
    expect_error(cp, "PATCH", "models/loop-a",
                 {"policy": {"rules": [{"target": {"model": "loop-a"}}]}}, 400, "policy.rules",
                 "routing loop loop-a → loop-a")
    expect_error(cp, "POST", "models", {"name": "loop-self", "targets": [{"deployment": "d-gpt"}],
                                        "policy": {"rules": [{"target": {"model": "loop-self"}}]}},
                 400, "policy.rules", "loop-self → loop-self")
    assert cp.call("GET", "models/loop-self")[0] == 404


def test_a_three_level_chain_is_accepted(cp):
    model(cp, "chain-qwen", "d-qwen")
    model(cp, "chain-claude", "d-claude", fallbacks=["chain-qwen"],
          policy={"fallback_on": ["connect", "timeout", "429", "5xx", "context_length"]})
    doc = model(cp, "chain-gpt", "d-gpt", fallbacks=["chain-claude", "chain-qwen"],
                policy={"retry": {"attempts": 1}})
    assert doc["fallbacks"] == ["chain-claude", "chain-qwen"]
    assert cp.ok("GET", "models/chain-claude")[0]["fallbacks"] == ["chain-qwen"]
    # the same model twice down one chain is no loop
    model(cp, "chain-top", fallbacks=["chain-gpt"],
          policy={"rules": [{"when": {"tokens_above": 100000}, "target": {"model": "chain-qwen"}}]})


def test_rule_targets_follow_renames_and_block_deletes(cp):
    deployment(cp, "d-ren", "p-pol")
    model(cp, "ren-target", "d-qwen")
    model(cp, "ren-user", policy={"rules": [
        {"when": {"tokens_below": 10}, "target": {"model": "ren-target"}},
        {"target": {"deployments": [{"deployment": "d-ren", "weight": 2}]}}]})
    err = expect_error(cp, "DELETE", "models/ren-target", None, 409, None, "ren-user",
                       "rule target", etype="conflict_error")
    assert err["code"] == "still_referenced"
    err = expect_error(cp, "DELETE", "deployments/d-ren", None, 409, None, "ren-user",
                       etype="conflict_error")
    assert err["code"] == "still_referenced"
    cp.ok("PATCH", "models/ren-target", {"name": "ren-target2"})
    cp.ok("PATCH", "deployments/d-ren", {"name": "d-ren2"})
    rules = cp.ok("GET", "models/ren-user")[0]["policy"]["rules"]
    assert rules[0]["target"] == {"model": "ren-target2"}
    assert rules[1]["target"] == {"deployments": [{"deployment": "d-ren2", "weight": 2}]}
    cp.ok("PATCH", "models/ren-user", {"policy": {}})
    cp.ok("DELETE", "models/ren-target2", want=204)
    cp.ok("DELETE", "deployments/d-ren2", want=204)
