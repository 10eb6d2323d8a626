# SPDX-License-Identifier: Apache-2.0
"""Helpers for the integration tests: start the real binaries, speak HTTP to them, stop them.

The fixtures in conftest.py hand these objects to tests:

    mock        a running mock provider (MockProvider)          .url, .stats(), .config({...})
    gateway     a factory: gateway(table) -> Gateway             .json("POST", path, body)
    table_for   a one-deployment routing table for a mock

Every process is started in its own session, with its output in a log file, and is registered so
that it is killed at teardown whatever happened, and its log tail is attached to a failing test.
"""

import http.client
import json
import os
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field

# Processes alive right now, for the teardown safety net and the failure report.
LIVE = []

DEFAULT_TIMEOUTS = {"connect_ms": 1000, "first_byte_ms": 5000, "idle_ms": 5000, "total_ms": 30000}


def log_tail(path, lines=60):
    """The last <lines> lines of a log file, or a note if there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A child process with its log file. Started in a new session so that killing its process
    group also kills the workers it forked."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = str(log_path)
        full_env = dict(os.environ)
        full_env.update({k: str(v) for k, v in (env or {}).items()})
        self._log = open(self.log_path, "ab")
        self._log.write(("$ " + " ".join(self.argv) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                     start_new_session=True)
        self.pid = self.proc.pid
        LIVE.append(self)

    def log(self):
        """The whole log so far, as text."""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def tail(self, lines=60):
        return log_tail(self.log_path, lines)

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout):
        """Wait for exit; returns the exit status (negative: killed by that signal)."""
        return self.proc.wait(timeout=timeout)

    def kill(self):
        """Kill the process and everything in its process group; idempotent."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self in LIVE:
            LIVE.remove(self)
        if not self._log.closed:
            self._log.close()


def kill_all():
    """Kill every process still registered (teardown, SIGTERM, interpreter exit)."""
    for p in list(LIVE):
        p.kill()


def wait_port_file(proc, port_file, timeout):
    """Wait until <port_file> holds a port number; fail early if <proc> exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(port_file) as f:
                text = f.read().strip()
            if text.isdigit() and int(text) > 0:
                return int(text)
        except FileNotFoundError:
            pass
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited with status {proc.proc.returncode} before "
                                 f"writing {port_file}\n--- log tail ---\n{proc.tail()}")
        time.sleep(0.02)
    raise AssertionError(f"{proc.name} wrote no port to {port_file} within {timeout}s\n"
                         f"--- log tail ---\n{proc.tail()}")


# ---- HTTP ---------------------------------------------------------------------------------------

def http_request(host, port, method, path, body=None, headers=None, timeout=10, tls=None):
    """One request on a fresh connection. <body>: dict/list (sent as JSON), str or bytes.
    <tls>: an ssl.SSLContext for HTTPS. Returns (status, headers with lowercased names, body)."""
    hdrs = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    if tls is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, lower_headers(resp), data
    finally:
        conn.close()


def lower_headers(resp):
    out = {}
    for k, v in resp.getheaders():
        k = k.lower()
        out[k] = v if k not in out else out[k] + ", " + v
    return out


def parse_json(status, body):
    try:
        return json.loads(body) if body else None
    except ValueError:
        raise AssertionError(f"HTTP {status}: body is not JSON: {body[:500]!r}")


@dataclass
class SSEEvent:
    """One server-sent event and the time.monotonic() at which its last line arrived."""
    data: str
    event: str = "message"
    id: str = None
    t: float = 0.0
    comments: list = field(default_factory=list)

    @property
    def done(self):
        return self.data == "[DONE]"

    def json(self):
        return json.loads(self.data)


class SSEStream:
    """A streaming response. Iterate it for SSEEvents as they arrive; .status and .headers are
    set once the head is in. For a response that is not an event stream, .body() reads it."""

    def __init__(self, conn, resp, t_sent):
        self.conn = conn
        self.resp = resp
        self.status = resp.status
        self.headers = lower_headers(resp)
        self.t_sent = t_sent          # when the request was sent
        self.t_head = time.monotonic()  # when the response head arrived
        self.events = []              # everything yielded so far

    def body(self):
        try:
            return self.resp.read()
        finally:
            self.close()

    def __iter__(self):
        data, event, ev_id, comments = [], None, None, []
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    break
                line = line.decode("utf-8", "replace").rstrip("\r\n")
                if line == "":
                    if data or event is not None:
                        ev = SSEEvent("\n".join(data), event or "message", ev_id,
                                      time.monotonic(), comments)
                        self.events.append(ev)
                        yield ev
                    data, event, ev_id, comments = [], None, None, []
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "":
                    comments.append(value)
                elif name == "data":
                    data.append(value)
                elif name == "event":
                    event = value
                elif name == "id":
                    ev_id = value
        finally:
            self.close()

    def collect(self):
        """Read the whole stream; returns the list of events."""
        for _ in self:
            pass
        return self.events

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def http_stream(host, port, path, body, headers=None, timeout=30, tls=None, method="POST"):
    """Send a request and return an SSEStream without reading the body. <timeout> bounds each
    read (the longest silence), not the whole stream."""
    hdrs = {"Accept": "text/event-stream"}
    hdrs.update(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if tls is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t_sent = time.monotonic()
    conn.request(method, path, body=body, headers=hdrs)
    return SSEStream(conn, conn.getresponse(), t_sent)


class HTTPClientMixin:
    """request/json/stream against self.host:self.port (and self.tls_context, if any)."""
    host = "127.0.0.1"
    tls_context = None

    def request(self, method, path, body=None, headers=None, timeout=10):
        """(status, headers lowercased, body bytes) on a fresh connection."""
        return http_request(self.host, self.port, method, path, body, headers, timeout,
                            self.tls_context)

    def json(self, method, path, body=None, headers=None, timeout=10):
        """(status, headers, parsed JSON body or None when empty)."""
        status, hdrs, data = self.request(method, path, body, headers, timeout)
        return status, hdrs, parse_json(status, data)

    def stream(self, path, body, headers=None, timeout=30):
        """An SSEStream: `for ev in gw.stream(...)` yields events with .t arrival times."""
        return http_stream(self.host, self.port, path, body, headers, timeout, self.tls_context)


# ---- certificates -------------------------------------------------------------------------------

@dataclass
class Certs:
    dir: str
    ca: str            # CA certificate (PEM) that signed cert
    ca_key: str
    cert: str          # server certificate for 127.0.0.1 and localhost
    key: str
    untrusted_ca: str  # a CA that signed nothing here: verifying against it must fail

    def client_context(self):
        return ssl.create_default_context(cafile=self.ca)


def make_certs(d):
    """A CA and a server certificate for 127.0.0.1/localhost, with the openssl command."""
    d = str(d)

    def run(*args):
        r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"openssl {' '.join(args)} failed:\n{r.stderr}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "untrusted-ca"):
        run("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30",
            "-subj", f"/CN=Switchyard test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "30", "-sha256", "-extfile", "server.ext",
        "-out", "server.pem")
    p = lambda n: os.path.join(d, n)  # noqa: E731
    return Certs(d, p("ca.pem"), p("ca.key"), p("server.pem"), p("server.key"),
                 p("untrusted-ca.pem"))


# ---- mock provider ------------------------------------------------------------------------------

class MockProvider(HTTPClientMixin):
    """A running switchyard-mockprovider (tests/mockprovider/README.md)."""

    def __init__(self, build_dir, workdir, certs=None, workers=None, args=(), name="mock"):
        exe = os.path.join(build_dir, "tests", "mockprovider", "switchyard-mockprovider")
        if not os.access(exe, os.X_OK):
            raise AssertionError(f"{exe} is not built")
        os.makedirs(workdir, exist_ok=True)
        port_file = os.path.join(workdir, f"{name}.port")
        argv = [exe, "--listen", "127.0.0.1:0", "--port-file", port_file]
        self.certs = certs
        if certs is not None:
            argv += ["--tls-cert", certs.cert, "--tls-key", certs.key]
            self.tls_context = certs.client_context()
        if workers:
            argv += ["--workers", str(workers)]
        argv += list(args)
        self.process = ManagedProcess(name, argv, os.path.join(workdir, f"{name}.log"))
        self.proc = self.process.proc
        self.pid = self.process.pid
        self.port = wait_port_file(self.process, port_file, 10)
        scheme = "https" if certs is not None else "http"
        self.origin = f"{scheme}://127.0.0.1:{self.port}"
        self.url = self.origin + "/v1"
        wait_until_answers(self, "/mock/stats", 10)

    def stats(self):
        status, _, obj = self.json("GET", "/mock/stats")
        assert status == 200, f"GET /mock/stats: {status}"
        return obj

    def requests(self):
        status, _, obj = self.json("GET", "/mock/requests")
        assert status == 200, f"GET /mock/requests: {status}"
        return obj

    def config(self, cfg):
        status, _, data = self.request("POST", "/mock/config", cfg)
        assert status == 200, f"POST /mock/config: {status} {data[:300]!r}"

    def reset(self):
        status, _, data = self.request("POST", "/mock/reset", b"")
        assert status == 200, f"POST /mock/reset: {status} {data[:300]!r}"

    def log(self):
        return self.process.log()

    def stop(self):
        self.process.kill()


def wait_until_answers(server, path, timeout, want_status=None):
    """Poll GET <path> until it answers (with <want_status>, if given)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not server.process.alive():
            raise AssertionError(f"{server.process.name} exited with status "
                                 f"{server.proc.returncode}\n--- log tail ---\n"
                                 f"{server.process.tail()}")
        try:
            status, _, _ = server.request("GET", path, timeout=2)
            if want_status is None or status == want_status:
                return status
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as e:
            last = repr(e)
        time.sleep(0.05)
    raise AssertionError(f"{server.process.name}: GET {path} did not answer"
                         f"{'' if want_status is None else f' {want_status}'} within {timeout}s "
                         f"(last: {last})\n--- log tail ---\n{server.process.tail()}")


def table_for(mock, model="gpt-4o-mini", **overrides):
    """A routing table with one deployment on <mock> serving public model <model>. <overrides>
    replace deployment fields; "timeouts" is merged into the defaults. An HTTPS mock gets its
    CA file."""
    dep = {
        "name": "mock-" + model,
        "provider": "mock",
        "model": model,
        "format": "openai",
        "base_url": mock.url,
        "auth": "bearer",
        "api_key": "sk-test",
        "timeouts": dict(DEFAULT_TIMEOUTS),
    }
    if getattr(mock, "certs", None) is not None:
        dep["ca_file"] = mock.certs.ca
    for k, v in overrides.items():
        if k == "timeouts" and isinstance(v, dict):
            dep["timeouts"].update(v)
        else:
            dep[k] = v
    return {
        "version": 1,
        "deployments": [dep],
        "models": [{"name": model, "targets": [{"deployment": dep["name"], "weight": 1}]}],
    }


# ---- data plane ---------------------------------------------------------------------------------

def _proc_stats():
    """(pid, state, ppid, pgrp) of every process, from /proc/PID/stat."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: fields start after the last ")"
        fields = stat[stat.rindex(")") + 2:].split()
        yield int(entry), fields[0], int(fields[1]), int(fields[2])


def children_of(pid):
    """Live (not zombie) PIDs whose parent is <pid>."""
    return sorted(p for p, state, ppid, _ in _proc_stats() if ppid == pid and state != "Z")


def group_pids(pgid):
    """Live (not zombie) PIDs in process group <pgid>."""
    return sorted(p for p, state, _, pgrp in _proc_stats() if pgrp == pgid and state != "Z")


def rss_kb(pid):
    """VmRSS of <pid> in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Gateway(HTTPClientMixin):
    """A running switchyard-dataplane master and its workers."""

    def __init__(self, build_dir, workdir, table, workers=1, args=(), env=None, wait=True,
                 name="gateway", start_timeout=10):
        exe = os.path.join(build_dir, "dataplane", "switchyard-dataplane")
        if not os.access(exe, os.X_OK):
            raise AssertionError(f"{exe} is not built")
        os.makedirs(workdir, exist_ok=True)
        self.workers = workers
        self.table_path = os.path.join(workdir, f"{name}-table.json")
        self.port_file = os.path.join(workdir, f"{name}.port")
        self._write_table(table)
        argv = [exe, "--listen", "127.0.0.1:0", "--workers", str(workers),
                "--table", self.table_path, "--port-file", self.port_file, *args]
        self.process = ManagedProcess(name, argv, os.path.join(workdir, f"{name}.log"), env=env)
        self.proc = self.process.proc
        self.pid = self.process.pid
        self.port = None
        self.url = None
        if wait:
            self.wait_ready(start_timeout)

    def wait_ready(self, timeout=10):
        """Wait for the port file and a 200 from /healthz."""
        t0 = time.monotonic()
        self.port = wait_port_file(self.process, self.port_file, timeout)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until_answers(self, "/healthz", max(1, timeout - (time.monotonic() - t0)), 200)
        return self

    def _write_table(self, table):
        tmp = self.table_path + ".tmp"
        with open(tmp, "w") as f:
            if isinstance(table, (dict, list)):
                json.dump(table, f, indent=1)
            else:
                f.write(table)  # raw text: lets a test hand over a broken table
        os.rename(tmp, self.table_path)

    def worker_pids(self):
        return children_of(self.pid)

    def reload(self, table, wait=True, timeout=10):
        """Rewrite the table file and SIGHUP the master. With <wait>, wait until <workers> new
        worker processes run and return True; False if they did not appear in <timeout>
        (a rejected table keeps the old workers)."""
        old = set(self.worker_pids())
        self._write_table(table)
        self.process.signal(signal.SIGHUP)
        if not wait:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = set(self.worker_pids()) - old
            if len(new) >= self.workers:
                return True
            time.sleep(0.05)
        return False

    def rss_kb(self):
        """{worker pid: VmRSS KiB}."""
        return {p: rss_kb(p) for p in self.worker_pids()}

    def log(self):
        return self.process.log()

    def stop(self, expect_exit=0, timeout=35):
        """SIGTERM, wait, and check the exit status (None: do not check). Returns the status."""
        self.process.signal(signal.SIGTERM)
        try:
            rc = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"gateway did not exit within {timeout}s of SIGTERM\n"
                                 f"--- log tail ---\n{self.process.tail()}")
        # The master waits for its workers: none may outlive it.
        deadline = time.monotonic() + 2
        strays = group_pids(self.pid)
        while strays and time.monotonic() < deadline:
            time.sleep(0.05)
            strays = group_pids(self.pid)
        self.process.kill()  # kills strays, unregisters
        if expect_exit is not None:
            assert rc == expect_exit, (f"gateway exited with {rc}, expected {expect_exit}\n"
                                       f"--- log tail ---\n{self.process.tail()}")
            assert not strays, f"processes {strays} outlived the gateway master"
        return rc
