# SPDX-License-Identifier: Apache-2.0
"""PostgreSQL fixtures for the integration tests: a private PostgreSQL 15 cluster per session.

    from pg import pg_server, fresh_db  # noqa: F401  (or pytest_plugins = ["pg"] in conftest)

    pg_server   (session) a cluster in a temporary directory, listening on a Unix socket only,
                never on TCP. As root it runs as the `postgres` user (PostgreSQL refuses root).
                  .url            libpq URL of its `postgres` database, usable by this process
                  .url_for(db)    the same for another database
                  .psql(sql, db=None) -> rows (lists of strings); raises PsqlError on failure
                  .stop()         fast shutdown (outage tests); .start() brings it back
                  .running()
    fresh_db    (function) a new, empty database for one test, dropped afterwards
                  .name, .url, .psql(sql) -> rows

PostgreSQL binaries come from SWITCHYARD_PG_BIN (default /usr/lib/postgresql/15/bin). The
postmaster is a harness.ManagedProcess, so it is killed at teardown whatever happened and its log
tail is attached to a failing test.
"""

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse

import pytest

import harness

PG_BIN = os.environ.get("SWITCHYARD_PG_BIN", "/usr/lib/postgresql/15/bin")


class PsqlError(Exception):
    """psql failed; str() is PostgreSQL's message."""


class PgServer:
    def __init__(self, base):
        self.base = base
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        self.data = os.path.join(base, "data")
        self.sock = os.path.join(base, "sock")
        self.log_path = os.path.join(base, "postgres.log")
        self.proc = None
        os.makedirs(self.sock)
        if self.as_root:
            # The postgres user must reach its directories: /tmp/sy-pg-* is ours, 0755.
            pw = pwd.getpwnam("postgres")
            os.chmod(base, 0o755)
            os.chown(self.sock, pw.pw_uid, pw.pw_gid)
            os.chmod(self.sock, 0o777)
            os.chown(base, pw.pw_uid, pw.pw_gid)
        self._run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", self.user, "-A", "trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"])

    def _as_pg(self, argv):
        return (["runuser", "-u", "postgres", "--"] if self.as_root else []) + argv

    def _run(self, argv):
        r = subprocess.run(self._as_pg(argv), capture_output=True, text=True, cwd=self.base)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{r.stdout}{r.stderr}")
        return r

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout=30):
        """Start the postmaster and wait until it accepts connections."""
        if self.running():
            return
        argv = self._as_pg([
            os.path.join(PG_BIN, "postgres"), "-D", self.data,
            "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.sock}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=100", "-c", "shared_buffers=32MB",
        ])
        # The postmaster must not be in a process group that runuser signals on exit: it gets
        # its own session through ManagedProcess.
        self.proc = harness.ManagedProcess("postgres", argv, self.log_path, cwd=self.base)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError("postgres exited at start:\n" + self.proc.tail())
            r = subprocess.run([os.path.join(PG_BIN, "pg_isready"), "-q", "-h", self.sock,
                                "-U", self.user, "-d", "postgres"], capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres not ready after {timeout}s:\n" + self.proc.tail())

    def _postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def running(self):
        return self.proc is not None and self.proc.alive()

    def stop(self, timeout=30):
        """Fast shutdown: clients are disconnected, nothing is lost. For outage tests."""
        if not self.running():
            return
        pid = self._postmaster_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.proc.kill()
        self.proc = None

    def destroy(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- clients -------------------------------------------------------------------------------

    def url_for(self, db):
        q = urllib.parse.urlencode({"host": self.sock, "user": self.user}, safe="/")
        return f"postgresql:///{urllib.parse.quote(db)}?{q}"

    @property
    def url(self):
        return self.url_for("postgres")

    def psql(self, sql, db=None, timeout=60):
        """Run <sql> (one or more statements) with psql; returns the rows of every statement
        that returns rows, each a list of strings (NULL is ""). Raises PsqlError."""
        r = subprocess.run(
            [os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-F", "\t",
             "-v", "ON_ERROR_STOP=1", "-d", self.url_for(db or "postgres"), "-f", "-"],
            input=sql, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise PsqlError(r.stderr.strip())
        return [line.split("\t") for line in r.stdout.splitlines() if line != ""]

    def psql_raw(self, sql, db=None, timeout=60):
        """psql's CompletedProcess, stdout and stderr included (notifications, errors)."""
        return subprocess.run(
            [os.path.join(PG_BIN, "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.url_for(db or "postgres"), "-f", "-"],
            input=sql, capture_output=True, text=True, timeout=timeout)


class Database:
    def __init__(self, server, name):
        self.server = server
        self.name = name
        self.url = server.url_for(name)

    def psql(self, sql, timeout=60):
        return self.server.psql(sql, db=self.name, timeout=timeout)

    def psql_raw(self, sql, timeout=60):
        return self.server.psql_raw(sql, db=self.name, timeout=timeout)


@pytest.fixture(scope="session")
def pg_server():
    if not os.path.exists(os.path.join(PG_BIN, "postgres")):
        pytest.skip(f"PostgreSQL not found in {PG_BIN} (set SWITCHYARD_PG_BIN)")
    # Not under pytest's tmp dir: that is 0700 root and the postgres user could not enter it.
    # Short, too: a Unix socket path is limited to 107 bytes.
    srv = PgServer(tempfile.mkdtemp(prefix="sy-pg-"))
    try:
        srv.start()
        yield srv
    finally:
        srv.destroy()


_db_counter = itertools.count(1)


@pytest.fixture
def fresh_db(pg_server):
    if not pg_server.running():  # a previous test stopped it and failed before restarting
        pg_server.start()
    name = f"t{os.getpid()}_{next(_db_counter)}"
    pg_server.psql(f'CREATE DATABASE "{name}"')
    yield Database(pg_server, name)
    if pg_server.running():
        pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
