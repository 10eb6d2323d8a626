# SPDX-License-Identifier: Apache-2.0
"""Several nodes split every global limit by the live nodes.

Two nodes (each a control plane and a data plane) on one PostgreSQL: a deployment's rpm and a
key's per-model rpm are fleet-wide, so each node admits its share; when a node goes away the
survivor takes the whole limit again; a control plane without a data plane takes no share.
Heartbeats run every 200 ms here (--heartbeat-ms), so a node is gone after 600 ms of silence."""

import os
import time

import pytest

from pg import fresh_db, pg_server  # noqa: F401  (fixtures)
from test_publish import (CLIENT_KEY, ControlPlane, DataPlane, Psql, add_provider, deployment_sql,
                          key_sql, model_sql, sockdir, wait_for, wait_served)  # noqa: F401

BEAT = ["--heartbeat-ms", "200"]


def live_nodes(cp):
    status, _, body = cp.admin("GET", "/status")
    assert status == 200, body
    return body["live_nodes"]


def admitted(dp, model, n):
    """How many of <n> back-to-back requests for <model> are served (the rest must be 429)."""
    ok = 0
    for _ in range(n):
        status, _, body = dp.chat(model)
        assert status in (200, 429), (status, body)
        ok += status == 200
    return ok


def limited_model(sql, name, rpm):
    """A deployment of <rpm> requests per minute (fleet-wide) and a model on it."""
    sql.run(deployment_sql(f"d-{name}", extra_cols=", rpm", extra_vals=f", {rpm}") + ";\n" +
            model_sql(name, f"d-{name}"))


@pytest.fixture
def fleet(build_dir, tmp_path, sockdir, fresh_db, mock):
    mock.reset()
    sql = Psql(fresh_db.url)
    work = str(tmp_path)
    procs = []

    class Node:
        def __init__(self, name, with_dataplane=True):
            sock = os.path.join(sockdir, name, "cp.sock")
            self.cp = ControlPlane(build_dir, work, fresh_db.url, sock, name, name=f"cp-{name}",
                                   args=BEAT)
            procs.append(self.cp)
            self.dp = None
            if with_dataplane:
                self.dp = DataPlane(build_dir, work, sock, workers=2, name=f"dp-{name}",
                                    node=name)
                procs.append(self.dp)

        def stop(self):
            for p in (self.dp, self.cp):
                if p:
                    p.process.kill()

    a = Node("node-a")
    add_provider(a.cp, mock)
    sql.run(key_sql() + ";\n" + deployment_sql("d-base") + ";\n" + model_sql("base", "d-base"))
    wait_served(a.dp, "base")
    yield a, Node, sql
    for p in procs:
        p.process.kill()
    sql.close()


def test_two_nodes_each_admit_half_of_a_global_rpm_and_a_survivor_takes_it_all(fleet):
    a, Node, sql = fleet
    assert live_nodes(a.cp) == 1
    b = Node("node-b")
    wait_for("two live nodes", lambda: live_nodes(a.cp) == 2 and live_nodes(b.cp) == 2, 10)
    # A fleet-wide 10 per minute: each node's share is 5 (its two workers share it).
    limited_model(sql, "half", 10)
    wait_served(a.dp, "half")  # one request: the first of node a's five
    wait_served(b.dp, "half")
    assert admitted(a.dp, "half", 8) == 4
    assert admitted(b.dp, "half", 8) == 4

    # Node b goes away: after three missed heartbeats node a is alone and takes the whole limit.
    b.stop()
    wait_for("one live node", lambda: live_nodes(a.cp) == 1, 10)
    limited_model(sql, "whole", 10)
    wait_served(a.dp, "whole")
    assert admitted(a.dp, "whole", 14) == 9


def test_a_key_limit_per_model_is_split_too(fleet):
    a, Node, sql = fleet
    b = Node("node-b")
    wait_for("two live nodes", lambda: live_nodes(a.cp) == 2, 10)
    sql.run("UPDATE api_keys SET model_limits = '{\"base\": {\"rpm\": 6}}'")
    # The base model has had one request on node a (the fixture's); the key's share is 3 per node.
    wait_for("the new limit on node a", lambda: a.dp.chat("base")[0] == 429, 10)
    status, _, body = b.dp.chat("base")
    assert status == 200, body
    assert admitted(b.dp, "base", 5) == 2
    status, _, body = a.dp.chat("base")
    assert status == 429 and "on this model" in body["error"]["message"]


def test_a_control_plane_without_a_data_plane_takes_no_share(fleet):
    a, Node, sql = fleet
    Node("node-admin", with_dataplane=False)
    # Ten heartbeats of the admin-only node: it is never counted.
    for _ in range(10):
        time.sleep(0.2)
        assert live_nodes(a.cp) == 1
