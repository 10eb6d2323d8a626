# SPDX-License-Identifier: Apache-2.0
"""HTTPS on the data-plane listener (--tls-cert/--tls-key) and on the admin listener
(--admin-tls-cert/--admin-tls-key): requests and streams over TLS with the test CA, a plain-HTTP
client told so and closed, a silent client closed, certificate reload on SIGHUP (new
connections see the new serial; a broken file keeps the old certificate and the service), and a
bad certificate at start-up refused with a clear message."""

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import warnings

import pytest

import harness
from pg import PG_BIN, pg_server  # noqa: F401  (fixture)

CHAT = "/v1/chat/completions"
MASTER_KEY = "7c" * 32


def chat_body(stream=False):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        body["stream"] = True
    return body


# ---- certificates -------------------------------------------------------------------------------

def new_cert(certs, d, serial):
    """A server certificate for 127.0.0.1/localhost with <serial>, signed by the test CA.
    Returns (cert path, key path)."""
    d = str(d)

    def run(*args):
        r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"s{serial}.key", "-out", f"s{serial}.csr", "-subj", "/CN=localhost")
    run("x509", "-req", "-in", f"s{serial}.csr", "-CA", certs.ca, "-CAkey", certs.ca_key,
        "-set_serial", str(serial), "-days", "30", "-sha256",
        "-extfile", os.path.join(certs.dir, "server.ext"), "-out", f"s{serial}.pem")
    return os.path.join(d, f"s{serial}.pem"), os.path.join(d, f"s{serial}.key")


def install(src, dst):
    """Replace <dst> atomically with a copy of <src> (as a deploy tool would)."""
    shutil.copyfile(src, str(dst) + ".new")
    os.rename(str(dst) + ".new", dst)


def handshake(port, ca):
    """(serial as int, ALPN protocol, TLS version) of a fresh verified connection."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return int(t.getpeercert()["serialNumber"], 16), t.selected_alpn_protocol(), \
                t.version()


def wait_serial(port, ca, serial, timeout=10):
    """Until new connections get the certificate with <serial>, then check 5 more do."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = handshake(port, ca)[0]
        if seen == serial:
            break
        time.sleep(0.05)
    assert seen == serial, f"still serial {seen:x}, want {serial:x}"
    for _ in range(5):
        assert handshake(port, ca)[0] == serial


def raw_exchange(port, data, timeout=5):
    """Send <data> on a plain TCP connection; read until the server closes (or <timeout>).
    Returns (bytes read, closed by the server)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return got, False
            if not chunk:
                return got, True
            got += chunk


# ---- the data plane -----------------------------------------------------------------------------

@pytest.fixture
def tls_files(certs, tmp_path):
    """The certificate and key paths the server is given, copies the tests may replace."""
    cert, key = tmp_path / "listener.pem", tmp_path / "listener.key"
    install(certs.cert, cert)
    install(certs.key, key)
    return cert, key


def start_tls_gateway(gateway, table_for, mock, certs, tls_files, workers=1, args=()):
    cert, key = tls_files
    gw = gateway(table_for(mock), workers=workers, wait=False,
                 args=["--tls-cert", str(cert), "--tls-key", str(key), *args])
    gw.tls_context = certs.client_context()
    gw.wait_ready()
    return gw


def test_a_request_over_https_is_answered_and_alpn_says_http11(gateway, table_for, mock, certs,
                                                                 tls_files):
    gw = start_tls_gateway(gateway, table_for, mock, certs, tls_files)
    status, hdrs, obj = gw.json("POST", CHAT, chat_body())
    assert status == 200, obj
    assert obj["choices"][0]["message"]["content"]
    assert hdrs["x-request-id"]
    _, alpn, version = handshake(gw.port, certs.ca)
    assert alpn == "http/1.1"
    assert version in ("TLSv1.2", "TLSv1.3")
    assert "https://" in gw.log()


def test_keep_alive_and_a_large_body_over_https(gateway, table_for, mock, certs, tls_files):
    gw = start_tls_gateway(gateway, table_for, mock, certs, tls_files)
    import http.client
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, timeout=10,
                                       context=certs.client_context())
    try:
        big = chat_body()
        big["messages"][0]["content"] = "x" * 200000  # many TLS records each way
        for body in (chat_body(), big, chat_body()):
            conn.request("POST", CHAT, body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, data[:300]
    finally:
        conn.close()
    assert mock.stats()["requests"] >= 3


def test_a_stream_over_https_arrives_whole(gateway, table_for, mock, certs, tls_files):
    gw = start_tls_gateway(gateway, table_for, mock, certs, tls_files)
    with gw.stream(CHAT, chat_body(stream=True)) as s:
        assert s.status == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        events = list(s)
    assert events and events[-1].done
    assert any(e.json()["choices"][0]["delta"].get("content") for e in events[:-1]
               if e.json().get("choices"))


def test_plain_http_to_the_tls_port_gets_a_400_and_is_closed(gateway, table_for, mock, certs,
                                                               tls_files):
    gw = start_tls_gateway(gateway, table_for, mock, certs, tls_files)
    got, closed = raw_exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed, "the connection was left open"
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), got
    assert f"content-length: {len(body)}".encode() in head.lower()
    assert json.loads(body)["error"]["code"] == "https_required"
    # and the port still serves HTTPS
    assert gw.json("GET", "/healthz")[0] == 200


def test_a_client_that_never_completes_the_handshake_is_closed(gateway, table_for, mock, certs,
                                                                tls_files):
    gw = start_tls_gateway(gateway, table_for, mock, certs, tls_files,
                           args=["--header-timeout-ms", "300"])
    t0 = time.monotonic()
    got, closed = raw_exchange(gw.port, b"", timeout=10)  # connects, says nothing
    assert closed and got == b""
    assert time.monotonic() - t0 < 8
    # a client that starts a handshake and stalls too
    got, closed = raw_exchange(gw.port, b"\x16\x03\x01\x00\x50", timeout=10)
    assert closed


def test_a_client_that_does_not_trust_the_certificate_fails_and_the_server_goes_on(
        gateway, table_for, mock, certs, tls_files):
    gw = start_tls_gateway(gateway, table_for, mock, certs, tls_files)
    ctx = ssl.create_default_context(cafile=certs.untrusted_ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            ctx.wrap_socket(s, server_hostname="localhost")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            old.wrap_socket(s, server_hostname="localhost")
    assert gw.json("POST", CHAT, chat_body())[0] == 200


def test_sighup_with_a_new_certificate_serves_it_to_new_connections(gateway, table_for, mock,
                                                                      certs, tls_files, tmp_path):
    gw = start_tls_gateway(gateway, table_for, mock, certs, tls_files, workers=2)
    first = handshake(gw.port, certs.ca)[0]
    cert, key = new_cert(certs, tmp_path, 0x5EED01)
    install(cert, tls_files[0])
    install(key, tls_files[1])
    assert gw.reload(table_for(mock))
    wait_serial(gw.port, certs.ca, 0x5EED01)
    assert first != 0x5EED01
    assert gw.json("POST", CHAT, chat_body())[0] == 200
    assert "reload: TLS certificate serial 5EED01" in gw.log()
    gw.stop()  # drains, exits 0
    assert "Sanitizer" not in gw.log() and "drained and exited with status 0" in gw.log()


def test_a_broken_certificate_on_sighup_keeps_the_old_one_serving(gateway, table_for, mock,
                                                                   certs, tls_files, tmp_path):
    gw = start_tls_gateway(gateway, table_for, mock, certs, tls_files, workers=2)
    serial = handshake(gw.port, certs.ca)[0]
    with open(tls_files[0], "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    assert gw.reload(table_for(mock))  # the table reload still replaces the workers
    for _ in range(5):
        assert handshake(gw.port, certs.ca)[0] == serial
        assert gw.json("POST", CHAT, chat_body())[0] == 200
    log = gw.log()
    assert "reload: cannot load the TLS certificate chain" in log
    assert "new workers keep serving certificate serial" in log
    # a matching pair again: the next SIGHUP takes it
    cert, key = new_cert(certs, tmp_path, 0x5EED02)
    install(cert, tls_files[0])
    install(key, tls_files[1])
    assert gw.reload(table_for(mock))
    wait_serial(gw.port, certs.ca, 0x5EED02)


@pytest.mark.parametrize("problem", ["missing", "garbage", "mismatched key", "no key flag"])
def test_a_bad_certificate_at_start_is_fatal_with_a_clear_message(gateway, table_for, mock,
                                                                   certs, tmp_path, problem):
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    install(certs.cert, cert)
    install(certs.key, key)
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    want = "cannot load the TLS"
    if problem == "missing":
        os.unlink(cert)
    elif problem == "garbage":
        cert.write_text("hello\n")
    elif problem == "mismatched key":
        install(new_cert(certs, tmp_path, 77)[1], key)
        want = "does not match the certificate"
    else:
        args = ["--tls-cert", str(cert)]
        want = "--tls-cert is set without --tls-key"
    gw = gateway(table_for(mock), args=args, wait=False)
    rc = gw.process.wait(10)
    assert rc != 0
    assert want in gw.log()
    assert str(cert) in gw.log() or problem == "no key flag"


# ---- the admin listener -------------------------------------------------------------------------

class AdminTLS(harness.HTTPClientMixin):
    """A control plane serving its admin API over HTTPS."""

    def __init__(self, build_dir, workdir, db_url, cert, key, ca):
        exe = os.path.join(build_dir, "controlplane", "switchyard-controlplane")
        self.token = "adm-" + secrets.token_hex(16)
        port_file = os.path.join(workdir, "cp.port")
        argv = [exe, "--database-url", db_url, "--admin-listen", "127.0.0.1:0",
                "--admin-token", self.token, "--socket", os.path.join(workdir, "cp.sock"),
                "--port-file", port_file, "--admin-tls-cert", cert, "--admin-tls-key", key]
        self.process = harness.ManagedProcess("cp-tls", argv, os.path.join(workdir, "cp.log"),
                                              env={"SWITCHYARD_MASTER_KEY": MASTER_KEY})
        self.tls_context = ssl.create_default_context(cafile=ca)
        self.port = harness.wait_port_file(self.process, port_file, 20)
        harness.wait_until_answers(self, "/healthz", 10, 200)

    def admin(self, method, path, body=None):
        return self.json(method, "/admin/v1/" + path, body,
                         headers={"Authorization": f"Bearer {self.token}"})


@pytest.fixture
def admin_db(pg_server):
    name = f"tls_{os.getpid()}_{secrets.token_hex(3)}"
    pg_server.psql(f'CREATE DATABASE "{name}"')
    yield pg_server.url_for(name)
    if pg_server.running():
        pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_admin_api_over_https_and_its_certificate_reload(build_dir, admin_db, certs,
                                                             tls_files, tmp_path):
    cp = AdminTLS(build_dir, str(tmp_path), admin_db, str(tls_files[0]), str(tls_files[1]),
                  certs.ca)
    try:
        status, _, obj = cp.admin("POST", "providers",
                                  {"name": "p", "kind": "openai", "api_key": "sk-over-tls"})
        assert status == 201, obj
        assert cp.admin("GET", "providers/p")[0] == 200
        assert "https://" in cp.process.log()

        got, closed = raw_exchange(cp.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed and got.startswith(b"HTTP/1.1 400 ")

        serial = handshake(cp.port, certs.ca)[0]
        # a broken file: logged, the old certificate stays
        with open(tls_files[1], "w") as f:
            f.write("garbage\n")
        cp.process.signal(signal.SIGHUP)
        harness_wait(lambda: "SIGHUP: cannot load the TLS private key" in cp.process.log())
        assert handshake(cp.port, certs.ca)[0] == serial
        assert cp.admin("GET", "providers/p")[0] == 200
        # a good pair: new connections get it
        cert, key = new_cert(certs, tmp_path, 0xAD4017)
        install(cert, tls_files[0])
        install(key, tls_files[1])
        cp.process.signal(signal.SIGHUP)
        harness_wait(lambda: "admin TLS certificate reloaded: serial AD4017" in
                     cp.process.log())
        wait_serial(cp.port, certs.ca, 0xAD4017)
        assert cp.admin("GET", "providers/p")[0] == 200
        assert cp.process.alive()
        cp.process.signal(signal.SIGTERM)
        assert cp.process.wait(15) == 0
        assert "Sanitizer" not in cp.process.log()
    finally:
        cp.process.kill()


def harness_wait(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
