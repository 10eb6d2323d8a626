# SPDX-License-Identifier: Apache-2.0
"""The data plane's control-plane client (dataplane/src/cpclient.c) against a fake control plane
written here, and client-key authentication (proxy.c).

The fake control plane is a Unix socket server speaking the frame protocol of proto/README.md:
4-byte big-endian body length, type byte, msgpack body. Table bodies are made by the gateway
itself (`switchyard-dataplane --encode-table IN.json OUT.msgpack`), so they are exactly what
sy_table_encode writes; the small messages use the minimal msgpack codec below."""

import hashlib
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time

import pytest

import harness

CHAT = "/v1/chat/completions"
HELLO, TABLE, ACK, PING, PONG = 1, 2, 3, 4, 5


# ---- a minimal msgpack codec (maps, arrays, str, bin, int, float, bool, nil) -------------------

def mp_pack(o):
    if o is None:
        return b"\xc0"
    if o is True:
        return b"\xc3"
    if o is False:
        return b"\xc2"
    if isinstance(o, int):
        if 0 <= o < 128:
            return bytes([o])
        if -32 <= o < 0:
            return struct.pack("b", o)
        return b"\xcf" + struct.pack(">Q", o) if o >= 0 else b"\xd3" + struct.pack(">q", o)
    if isinstance(o, float):
        return b"\xcb" + struct.pack(">d", o)
    if isinstance(o, str):
        b = o.encode()
        return b"\xdb" + struct.pack(">I", len(b)) + b
    if isinstance(o, bytes):
        return b"\xc6" + struct.pack(">I", len(o)) + o
    if isinstance(o, (list, tuple)):
        return b"\xdd" + struct.pack(">I", len(o)) + b"".join(mp_pack(x) for x in o)
    if isinstance(o, dict):
        return b"\xdf" + struct.pack(">I", len(o)) + b"".join(
            mp_pack(k) + mp_pack(v) for k, v in o.items())
    raise TypeError(type(o))


def mp_unpack(data):
    obj, off = _mp_item(data, 0)
    assert off == len(data), f"{len(data) - off} trailing bytes"
    return obj


def _mp_item(d, i):
    c = d[i]
    i += 1
    if c <= 0x7f:
        return c, i
    if c >= 0xe0:
        return c - 256, i
    if 0x80 <= c <= 0x8f:
        return _mp_map(d, i, c & 0x0f)
    if 0x90 <= c <= 0x9f:
        return _mp_array(d, i, c & 0x0f)
    if 0xa0 <= c <= 0xbf:
        n = c & 0x1f
        return d[i:i + n].decode(), i + n
    if c == 0xc0:
        return None, i
    if c in (0xc2, 0xc3):
        return c == 0xc3, i
    sizes = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q",
             0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q", 0xca: ">f", 0xcb: ">d"}
    if c in sizes:
        fmt = sizes[c]
        n = struct.calcsize(fmt)
        return struct.unpack(fmt, d[i:i + n])[0], i + n
    lens = {0xd9: ">B", 0xda: ">H", 0xdb: ">I", 0xc4: ">B", 0xc5: ">H", 0xc6: ">I",
            0xdc: ">H", 0xdd: ">I", 0xde: ">H", 0xdf: ">I"}
    fmt = lens[c]
    k = struct.calcsize(fmt)
    n = struct.unpack(fmt, d[i:i + k])[0]
    i += k
    if c in (0xd9, 0xda, 0xdb):
        return d[i:i + n].decode(), i + n
    if c in (0xc4, 0xc5, 0xc6):
        return bytes(d[i:i + n]), i + n
    if c in (0xdc, 0xdd):
        return _mp_array(d, i, n)
    return _mp_map(d, i, n)


def _mp_array(d, i, n):
    out = []
    for _ in range(n):
        v, i = _mp_item(d, i)
        out.append(v)
    return out, i


def _mp_map(d, i, n):
    out = {}
    for _ in range(n):
        k, i = _mp_item(d, i)
        v, i = _mp_item(d, i)
        out[k] = v
    return out, i


def frame(ftype, body):
    return struct.pack(">IB", len(body), ftype) + body


# ---- the fake control plane ---------------------------------------------------------------------

class Peer:
    """One data-plane worker connected to the fake control plane."""

    def __init__(self, cp, sock):
        self.cp = cp
        self.sock = sock
        self.hello = None
        self.frames = []  # (type, decoded body) after the HELLO
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, ftype, body):
        try:
            self.sock.sendall(frame(ftype, body))
        except OSError:
            pass

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self.cp.cond:
                    self.closed = True
                    self.cp.cond.notify_all()
                return
            buf += chunk
            while len(buf) >= 5:
                n, ftype = struct.unpack(">IB", buf[:5])
                if len(buf) < 5 + n:
                    break
                body, buf = buf[5:5 + n], buf[5 + n:]
                msg = mp_unpack(body)
                with self.cp.cond:
                    if ftype == HELLO and self.hello is None:
                        self.hello = msg
                    else:
                        self.frames.append((ftype, msg))
                    self.cp.cond.notify_all()

    def acks(self):
        return [m for t, m in self.frames if t == ACK]


class FakeControlPlane:
    """A Unix socket server that greets every worker with a HELLO (unless <hello> is None) and
    pushes tables to all of them."""

    def __init__(self, path, hello="default"):
        self.path = path
        self.cond = threading.Condition()
        self.peers = []
        if hello == "default":
            hello = {"proto": 1, "role": "controlplane", "node": "fake-cp", "pid": os.getpid(),
                     "table_version": 0, "caps": ["table"]}
        self.hello = hello
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(64)
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.running:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            peer = Peer(self, s)
            if self.hello is not None:
                peer.send(HELLO, mp_pack(self.hello))
            with self.cond:
                self.peers.append(peer)
                self.cond.notify_all()

    def wait(self, pred, timeout=10, what="condition"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake control plane: no {what} within {timeout}s")
                self.cond.wait(left)

    def live(self):
        return [p for p in self.peers if not p.closed and p.hello is not None]

    def wait_workers(self, n, timeout=10):
        """The live peers once <n> of them said HELLO, sorted by worker index."""
        self.wait(lambda: len(self.live()) >= n, timeout, f"{n} HELLOs")
        return sorted(self.live(), key=lambda p: p.hello["worker"])

    def push(self, body, peers=None):
        """Send a TABLE with <body> to <peers> (default: every live one); returns them."""
        peers = peers if peers is not None else self.live()
        for p in peers:
            p.send(TABLE, body)
        return peers

    def wait_acks(self, peers, count=1, timeout=10):
        """Wait until each of <peers> sent <count> ACKs; returns the last ACK of each."""
        self.wait(lambda: all(len(p.acks()) >= count for p in peers), timeout, "ACKs")
        return [p.acks()[count - 1] for p in peers]

    def close(self):
        self.running = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for p in self.peers:
            try:
                p.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            p.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


# ---- fixtures and helpers -----------------------------------------------------------------------

@pytest.fixture
def sockdir():
    # sockaddr_un holds 107 bytes: pytest's tmp_path can be longer than that.
    d = tempfile.mkdtemp(prefix="sy-cp-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake_cp(sockdir):
    cps = []

    def start(hello="default"):
        cp = FakeControlPlane(os.path.join(sockdir, "cp.sock"), hello)
        cps.append(cp)
        return cp

    yield start
    for cp in cps:
        cp.close()


@pytest.fixture
def encode(build_dir, tmp_path):
    """encode(table dict) -> the msgpack bytes the gateway itself makes of it."""
    exe = os.path.join(build_dir, "dataplane", "switchyard-dataplane")
    n = [0]

    def run(table):
        n[0] += 1
        src, dst = tmp_path / f"t{n[0]}.json", tmp_path / f"t{n[0]}.msgpack"
        src.write_text(json.dumps(table))
        r = subprocess.run([exe, "--encode-table", str(src), str(dst)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(os.stat(dst).st_mode) == 0o600
        return dst.read_bytes()

    return run


def chat(model, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    body.update(extra)
    return body


def two_models(mock, table_for, version, extra_model):
    """The mock's table with a second public model <extra_model>, at <version>."""
    t = table_for(mock, model="gpt-4o-mini")
    t["version"] = version
    t["models"].append({"name": extra_model, "targets": [{"deployment": "mock-gpt-4o-mini"}]})
    return t


def wait_status(gw, model, status, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        got = gw.json("POST", CHAT, chat(model))[0]
        if got == status or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def cp_args(cp, *more):
    return ["--control-socket", cp.path, *more]


# ---- HELLO, TABLE, ACK --------------------------------------------------------------------------

def test_every_worker_connects_and_says_hello_with_its_table_version(gateway, mock, table_for,
                                                                     fake_cp):
    cp = fake_cp()
    gw = gateway(table_for(mock), workers=2, args=cp_args(cp, "--node-id", "node-x"))
    peers = cp.wait_workers(2)
    hellos = [p.hello for p in peers]
    assert [h["worker"] for h in hellos] == [0, 1]
    for h in hellos:
        assert h["proto"] == 1
        assert h["role"] == "dataplane"
        assert h["node"] == "node-x"
        assert h["table_version"] == 1
        assert "table" in h["caps"]
    assert sorted(h["pid"] for h in hellos) == gw.worker_pids()
    assert "connected to the control plane" in gw.log()


def test_node_id_defaults_to_the_host_name(gateway, mock, table_for, fake_cp):
    cp = fake_cp()
    gateway(table_for(mock), args=cp_args(cp))
    assert cp.wait_workers(1)[0].hello["node"] == socket.gethostname()


def test_pushed_table_goes_live_on_every_worker_and_each_acks(gateway, mock, table_for, fake_cp,
                                                              encode):
    cp = fake_cp()
    gw = gateway(table_for(mock), workers=2, args=cp_args(cp))
    peers = cp.wait_workers(2)
    assert gw.json("POST", CHAT, chat("fresh"))[0] == 404

    cp.push(encode(two_models(mock, table_for, 2, "fresh")))
    acks = cp.wait_acks(peers)
    assert acks == [{"version": 2, "ok": True}, {"version": 2, "ok": True}]
    # Every worker acknowledged: whichever takes the connection serves the new model.
    for _ in range(10):
        status, _, body = gw.json("POST", CHAT, chat("fresh"))
        assert status == 200, body
        assert gw.json("GET", "/readyz")[2]["table_version"] == 2
    assert "table version 1 -> 2" in gw.log()


def test_an_older_or_equal_table_is_ignored(gateway, mock, table_for, fake_cp, encode):
    cp = fake_cp()
    gw = gateway(table_for(mock), args=cp_args(cp))
    peer = cp.wait_workers(1)[0]
    cp.push(encode(two_models(mock, table_for, 5, "five")))
    assert cp.wait_acks([peer], 1) == [{"version": 5, "ok": True}]
    cp.push(encode(two_models(mock, table_for, 4, "four")))
    assert cp.wait_acks([peer], 2) == [{"version": 5, "ok": True}]
    cp.push(encode(two_models(mock, table_for, 5, "also-five")))
    assert cp.wait_acks([peer], 3) == [{"version": 5, "ok": True}]
    assert gw.json("POST", CHAT, chat("five"))[0] == 200
    assert gw.json("POST", CHAT, chat("four"))[0] == 404
    assert gw.json("POST", CHAT, chat("also-five"))[0] == 404
    assert "table version 4 ignored: already serving version 5" in gw.log()


def test_a_broken_table_is_refused_and_the_old_one_keeps_serving(gateway, mock, table_for,
                                                                  fake_cp, encode):
    cp = fake_cp()
    gw = gateway(table_for(mock), workers=2, args=cp_args(cp))
    peers = cp.wait_workers(2)
    bad = two_models(mock, table_for, 7, "x")
    bad["models"][1]["targets"][0]["deployment"] = "nowhere"
    # Valid msgpack, invalid table: the decoder's message comes back.
    body = mp_pack({"schema": 1, "version": 7, "deployments": [],
                    "models": [{"name": "x", "targets": [{"deployment": "nowhere"}]}]})
    cp.push(body)
    for ack in cp.wait_acks(peers, 1):
        assert ack["ok"] is False
        assert ack["version"] == 1
        assert ack["error"] == 'models[0].targets[0]: unknown deployment "nowhere"'
    # Not msgpack at all.
    cp.push(b"\xc1garbage")
    for ack in cp.wait_acks(peers, 2):
        assert ack == {"version": 1, "ok": False,
                       "error": "invalid msgpack byte 0xc1 at offset 0"}
    # The connection survives a refused table, and the old table serves.
    for _ in range(4):
        assert gw.json("POST", CHAT, chat("gpt-4o-mini"))[0] == 200
    cp.push(encode(two_models(mock, table_for, 8, "eight")))
    assert [a["version"] for a in cp.wait_acks(peers, 3)] == [8, 8]
    assert wait_status(gw, "eight", 200) == 200
    assert "table from the control plane refused" in gw.log()


def test_ping_is_answered_with_a_pong_of_the_same_t(gateway, mock, table_for, fake_cp):
    cp = fake_cp()
    gateway(table_for(mock), args=cp_args(cp))
    peer = cp.wait_workers(1)[0]
    peer.send(PING, mp_pack({"t": -123456789}))
    peer.send(99, mp_pack({"from": "the future"}))  # an unknown type is ignored
    peer.send(PING, mp_pack({"t": 42, "extra": [1, 2]}))
    cp.wait(lambda: len([f for f in peer.frames if f[0] == PONG]) >= 2, what="PONGs")
    assert [m for t, m in peer.frames if t == PONG] == [{"t": -123456789}, {"t": 42}]
    assert not peer.closed


def test_a_control_plane_of_another_protocol_version_is_refused(gateway, mock, table_for,
                                                                 fake_cp):
    cp = fake_cp(hello={"proto": 2, "role": "controlplane", "node": "future"})
    gw = gateway(table_for(mock), args=cp_args(cp))
    cp.wait(lambda: any(p.closed for p in cp.peers), what="hang-up")
    assert ("the peer speaks protocol version 2; this build speaks version 1"
            in gw.log())
    assert gw.json("POST", CHAT, chat("gpt-4o-mini"))[0] == 200


# ---- static stability ---------------------------------------------------------------------------

def test_control_plane_outage_keeps_serving_then_reconnects_and_resyncs(gateway, mock,
                                                                        table_for, fake_cp,
                                                                        encode):
    cp = fake_cp()
    gw = gateway(table_for(mock), workers=2, args=cp_args(cp))
    peers = cp.wait_workers(2)
    cp.push(encode(two_models(mock, table_for, 2, "two")))
    cp.wait_acks(peers)

    cp.close()
    time.sleep(0.5)  # several reconnect attempts fail meanwhile
    for _ in range(6):
        assert gw.json("POST", CHAT, chat("two"))[0] == 200
    assert gw.json("GET", "/readyz")[0] == 200

    cp2 = fake_cp()
    peers = cp2.wait_workers(2, timeout=5)  # backoff is at most 2 s
    assert [p.hello["table_version"] for p in peers] == [2, 2]
    cp2.push(encode(two_models(mock, table_for, 3, "three")))
    assert [a["version"] for a in cp2.wait_acks(peers)] == [3, 3]
    assert wait_status(gw, "three", 200) == 200
    assert gw.json("POST", CHAT, chat("two"))[0] == 404
    log = gw.log()
    assert "control plane closed the connection" in log
    assert "cannot connect to the control plane" in log


def test_a_draining_worker_is_not_kept_alive_by_the_connection(gateway, mock, table_for,
                                                                fake_cp):
    cp = fake_cp()
    gw = gateway(table_for(mock), workers=2, args=cp_args(cp))
    cp.wait_workers(2)
    t0 = time.monotonic()
    gw.stop()
    assert time.monotonic() - t0 < 5
    cp.wait(lambda: all(p.closed for p in cp.peers), what="hang-ups")


def test_snapshot_is_written_0600_and_a_restart_without_table_serves_from_it(
        build_dir, gateway, mock, table_for, fake_cp, encode, tmp_path):
    cp = fake_cp()
    snap = tmp_path / "snapshot.msgpack"
    gw = gateway(table_for(mock), workers=2, args=cp_args(cp, "--snapshot", str(snap)))
    peers = cp.wait_workers(2)
    cp.push(encode(two_models(mock, table_for, 6, "snap")))
    cp.wait_acks(peers)
    deadline = time.monotonic() + 5
    while not snap.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert snap.exists(), gw.log()
    assert stat.S_IMODE(os.stat(snap).st_mode) == 0o600
    assert "snapshot of table version 6 written" in gw.log()
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]
    gw.stop()
    cp.close()

    # No --table, no control plane listening: the snapshot is the table.
    exe = os.path.join(build_dir, "dataplane", "switchyard-dataplane")
    port_file = tmp_path / "restart.port"
    p = harness.ManagedProcess("restarted", [exe, "--listen", "127.0.0.1:0", "--workers", "1",
                                             "--port-file", port_file, "--snapshot", snap,
                                             "--control-socket", cp.path],
                               tmp_path / "restarted.log")
    try:
        port = harness.wait_port_file(p, port_file, 10)
        deadline = time.monotonic() + 5
        while True:
            try:
                status, _, body = harness.http_request("127.0.0.1", port, "GET", "/readyz")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert status == 200, body
        assert json.loads(body)["table_version"] == 6
        status, _, body = harness.http_request("127.0.0.1", port, "POST", CHAT, chat("snap"))
        assert status == 200, body
        assert "loaded from snapshot" in p.log()
    finally:
        p.kill()


def test_a_corrupt_snapshot_is_a_warning_not_a_failure(build_dir, tmp_path):
    snap = tmp_path / "snapshot.msgpack"
    snap.write_bytes(b"\x93\x01\x02")
    exe = os.path.join(build_dir, "dataplane", "switchyard-dataplane")
    port_file = tmp_path / "p.port"
    p = harness.ManagedProcess("corrupt", [exe, "--listen", "127.0.0.1:0", "--workers", "1",
                                           "--port-file", port_file, "--snapshot", snap],
                               tmp_path / "corrupt.log")
    try:
        port = harness.wait_port_file(p, port_file, 10)
        deadline = time.monotonic() + 5
        while True:
            try:
                status, _, _ = harness.http_request("127.0.0.1", port, "GET", "/readyz")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert status == 503
        assert "snapshot unusable" in p.log()
    finally:
        p.kill()


def test_table_flag_wins_over_the_snapshot(gateway, mock, table_for, tmp_path, encode):
    snap = tmp_path / "snapshot.msgpack"
    snap.write_bytes(encode(two_models(mock, table_for, 9, "from-snapshot")))
    gw = gateway(table_for(mock), args=["--snapshot", str(snap)])
    assert gw.json("GET", "/readyz")[2]["table_version"] == 1
    assert gw.json("POST", CHAT, chat("from-snapshot"))[0] == 404


def test_a_request_in_flight_during_a_swap_completes_on_its_table(gateway, mock, table_for,
                                                                   fake_cp, encode):
    mock.reset()
    cp = fake_cp()
    gw = gateway(table_for(mock), args=cp_args(cp))
    peer = cp.wait_workers(1)[0]
    result = {}

    def slow():
        result["r"] = gw.json("POST", CHAT, chat("gpt-4o-mini", mock={"delay_ms": 1500}),
                              timeout=15)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.4)  # the request is at the mock now
    # The new table drops the model the request is using.
    new = table_for(mock, model="other")
    new["version"] = 2
    cp.push(encode(new))
    assert cp.wait_acks([peer]) == [{"version": 2, "ok": True}]
    assert gw.json("POST", CHAT, chat("gpt-4o-mini"))[0] == 404  # the new table is live ...
    t.join(15)
    status, _, body = result["r"]
    assert status == 200, body  # ... and the old one finished the request it began
    assert body["object"] == "chat.completion"


# ---- client keys --------------------------------------------------------------------------------

KEY_OK = "sk-sy-AbCdEfGhIjKlMnOpQrStUvWxYz012345"
KEY_LIMITED = "sk-sy-LiMiTeD0123456789abcdefghijkl"
KEY_EXPIRED = "sk-sy-ExPiReD0123456789abcdefghijkl"


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def keyed(gateway, mock, table_for):
    mock.reset()
    t = two_models(mock, table_for, 3, "cheap")
    t["require_keys"] = True
    t["keys"] = [
        {"hash": sha(KEY_OK), "id": 1, "name": "all", "prefix": KEY_OK[:10]},
        {"hash": sha(KEY_LIMITED), "id": 2, "prefix": KEY_LIMITED[:10], "models": ["cheap"],
         "rpm": 10},
        {"hash": sha(KEY_EXPIRED), "id": 3, "prefix": KEY_EXPIRED[:10],
         "expires_ms": int(time.time() * 1000) - 60000},
    ]
    return gateway(t, workers=2, args=["--log-level", "debug"])


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def assert_401(status, body, starts):
    assert status == 401, body
    err = body["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "invalid_api_key"
    assert err["param"] is None
    assert err["message"].startswith(starts), err["message"]


def test_a_missing_key_is_401(keyed):
    status, _, body = keyed.json("POST", CHAT, chat("gpt-4o-mini"))
    assert_401(status, body, "You didn't provide an API key.")
    status, _, body = keyed.json("POST", CHAT, chat("gpt-4o-mini"),
                                 headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert_401(status, body, "You didn't provide an API key.")
    status, _, body = keyed.json("GET", "/v1/models")
    assert_401(status, body, "You didn't provide an API key.")
    # the probes need no key
    assert keyed.json("GET", "/healthz")[0] == 200
    assert keyed.json("GET", "/readyz")[0] == 200


def test_an_unknown_key_is_401_and_only_its_prefix_is_echoed(keyed):
    wrong = "sk-sy-WrOnGkEy0123456789abcdefgh"
    status, _, body = keyed.json("POST", CHAT, chat("gpt-4o-mini"), headers=bearer(wrong))
    assert_401(status, body, "Incorrect API key provided: sk-sy-WrOn\u2026")
    assert wrong not in json.dumps(body)
    # a short key is never echoed whole
    status, _, body = keyed.json("POST", CHAT, chat("gpt-4o-mini"), headers=bearer("abcd"))
    assert_401(status, body, "Incorrect API key provided: ab\u2026")


def test_an_expired_key_is_401(keyed):
    status, _, body = keyed.json("POST", CHAT, chat("gpt-4o-mini"), headers=bearer(KEY_EXPIRED))
    assert_401(status, body, "Incorrect API key provided: sk-sy-ExPi\u2026")
    assert "expired" in body["error"]["message"]
    assert KEY_EXPIRED not in json.dumps(body)


def test_a_model_the_key_may_not_use_is_403(keyed):
    status, _, body = keyed.json("POST", CHAT, chat("gpt-4o-mini"), headers=bearer(KEY_LIMITED))
    assert status == 403, body
    assert body["error"]["type"] == "permission_denied"
    assert body["error"]["code"] == "model_not_allowed"
    assert "gpt-4o-mini" in body["error"]["message"]


def test_an_allowed_key_gets_through_by_bearer_or_x_api_key(keyed, mock):
    status, _, body = keyed.json("POST", CHAT, chat("gpt-4o-mini"), headers=bearer(KEY_OK))
    assert status == 200, body
    status, _, body = keyed.json("POST", CHAT, chat("cheap"), headers=bearer(KEY_LIMITED))
    assert status == 200, body
    status, _, body = keyed.json("POST", CHAT, chat("cheap"), headers={"x-api-key": KEY_LIMITED})
    assert status == 200, body
    status, _, body = keyed.json("POST", "/v1/embeddings",
                                 {"model": "cheap", "input": "x"},
                                 headers={"authorization": f"bearer   {KEY_OK}  "})
    assert status == 200, body
    # the client's key is not the provider's: the deployment's credential goes upstream
    assert mock.requests()[-1]["headers"]["authorization"] == "Bearer sk-test"


def test_models_lists_only_what_the_key_may_use(keyed):
    status, _, body = keyed.json("GET", "/v1/models", headers=bearer(KEY_OK))
    assert status == 200
    assert sorted(m["id"] for m in body["data"]) == ["cheap", "gpt-4o-mini"]
    status, _, body = keyed.json("GET", "/v1/models", headers={"x-api-key": KEY_LIMITED})
    assert status == 200
    assert [m["id"] for m in body["data"]] == ["cheap"]


def test_client_keys_never_appear_in_the_log(keyed):
    for key in (KEY_OK, KEY_LIMITED, KEY_EXPIRED, "sk-sy-NoSuChKeY0123456789"):
        keyed.json("POST", CHAT, chat("gpt-4o-mini"), headers=bearer(key))
        keyed.json("POST", CHAT, chat("cheap"), headers={"x-api-key": key})
        keyed.json("GET", "/v1/models", headers=bearer(key))
    log = keyed.log()
    for key in (KEY_OK, KEY_LIMITED, KEY_EXPIRED, "sk-sy-NoSuChKeY0123456789"):
        assert key not in log
        assert key[6:] not in log


def test_keys_arrive_with_a_pushed_table(gateway, mock, table_for, fake_cp, encode):
    cp = fake_cp()
    gw = gateway(table_for(mock), args=cp_args(cp))
    peer = cp.wait_workers(1)[0]
    assert gw.json("POST", CHAT, chat("gpt-4o-mini"))[0] == 200
    t = table_for(mock)
    t["version"] = 2
    t["require_keys"] = True
    t["keys"] = [{"hash": sha(KEY_OK), "prefix": KEY_OK[:10]}]
    cp.push(encode(t))
    assert cp.wait_acks([peer]) == [{"version": 2, "ok": True}]
    status, _, body = gw.json("POST", CHAT, chat("gpt-4o-mini"))
    assert_401(status, body, "You didn't provide an API key.")
    assert gw.json("POST", CHAT, chat("gpt-4o-mini"), headers=bearer(KEY_OK))[0] == 200
