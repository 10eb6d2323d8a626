# SPDX-License-Identifier: Apache-2.0
"""The data plane's snapshot keeps the providers' credentials encrypted: a real control plane
publishes a table with a credential, the snapshot file on disk does not contain it, and a data
plane restarted from that snapshot alone (control plane and PostgreSQL gone) still sends it to
the provider. A snapshot that does not decrypt (another key, altered bytes, the old plaintext
format) is refused with a clear line, and the data plane waits for the control plane."""

import os
import stat

import pytest

import harness
from pg import PG_BIN, fresh_db, pg_server  # noqa: F401  (fixtures)
from test_publish import (DataPlane, db, sockdir, stack, wait_for,  # noqa: F401  (fixtures)
                          wait_served)

CREDENTIAL = "sk-mock-credential"  # what test_publish.add_provider stores


def snapshot_ready(st):
    wait_for("the snapshot written", lambda: os.path.exists(st.snapshot), 5)
    wait_for("the snapshot key", lambda: os.path.exists(st.snapshot + ".key"), 5)
    with open(st.snapshot, "rb") as f:
        return f.read()


@pytest.mark.timeout(180)
def test_the_snapshot_holds_no_plaintext_credential_and_still_serves_after_a_restart(
        stack, pg_server):
    data = snapshot_ready(stack)
    assert data.startswith(b"SYSNAP01")
    assert CREDENTIAL.encode() not in data
    assert b"gpt-4o-mini" not in data, "the whole table is encrypted, not only the secrets"
    key = stack.snapshot + ".key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    with open(key) as f:
        assert len(f.read().strip()) == 64
    assert CREDENTIAL not in stack.dp.process.log()

    # Everything else goes away; the data plane restarts from the snapshot alone.
    stack.cp.stop()
    stack.sql.close()
    pg_server.stop()
    try:
        stack.dp.stop()
        stack.mock.reset()
        stack.dp = DataPlane(stack.build_dir, stack.workdir, stack.sock, snapshot=stack.snapshot)
        assert "loaded from snapshot" in stack.dp.process.log()
        status, _, body = stack.dp.chat("base")
        assert status == 200, body
        seen = [r for r in stack.mock.requests() if r["path"].endswith("/chat/completions")]
        assert seen and seen[-1]["headers"]["authorization"] == f"Bearer {CREDENTIAL}"
        assert CREDENTIAL not in stack.dp.process.log()
    finally:
        pg_server.start()


def start_from_snapshot(st, name, extra_env=None):
    """A data plane started from <st>'s snapshot with no control plane; returns it once it
    answers (its /readyz tells whether it has a table)."""
    return DataPlane(st.build_dir, st.workdir, st.sock + ".absent", snapshot=st.snapshot,
                     name=name)


@pytest.mark.parametrize("damage", ["another key", "altered byte", "plaintext"])
def test_a_snapshot_that_does_not_decrypt_is_refused_and_the_data_plane_waits(stack, damage):
    data = snapshot_ready(stack)
    stack.dp.stop()
    if damage == "another key":
        with open(stack.snapshot + ".key", "w") as f:
            f.write("ab" * 32 + "\n")
        want = "does not decrypt with the snapshot key"
    elif damage == "altered byte":
        b = bytearray(data)
        b[len(b) // 2] ^= 1
        with open(stack.snapshot, "wb") as f:
            f.write(bytes(b))
        want = "does not decrypt with the snapshot key"
    else:
        with open(stack.snapshot, "wb") as f:
            f.write(b"\x93\x01\x02")  # msgpack, as an older data plane wrote it
        want = "is not an encrypted snapshot"
    stack.cp.stop()
    dp = start_from_snapshot(stack, "damaged")
    try:
        wait_for("the refusal logged", lambda: want in dp.process.log(), 10)
        assert "snapshot unusable" in dp.process.log()
        assert dp.version() == 0  # no table: waiting for the control plane
        assert dp.chat("base")[0] != 200
    finally:
        dp.process.kill()
