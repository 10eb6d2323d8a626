# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the integration tests (see harness.py for the objects they return).

    build_dir   absolute path of the build to test (SWITCHYARD_BUILD_DIR, default "build")
    certs       a CA and a server certificate for 127.0.0.1/localhost (session)
    mock        a mock provider over HTTP (one per test module; call mock.reset() if you need
                clean counters)
    mock_tls    the same over HTTPS, with a certificate signed by certs.ca
    gateway     factory: gw = gateway(table, workers=1, args=[...], env={}, wait=True)
    table_for   harness.table_for: a one-deployment table for a mock

Every process is killed at teardown, also when the test failed or pytest was interrupted, and
the tail of each one's log is attached to the report of a failing test. A test that runs longer
than SWITCHYARD_TEST_TIMEOUT seconds (default 120; @pytest.mark.timeout(N) per test) fails.
"""

import atexit
import os
import signal

import pytest

import harness

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): fail the test after that long")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")

    # timeout(1) and CI stop pytest with SIGTERM: turn it into an interruption so that fixtures
    # tear down and no server outlives the run.
    def on_term(signum, frame):
        harness.kill_all()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    atexit.register(harness.kill_all)


# ---- per-test deadline --------------------------------------------------------------------------

class DeadlineExceeded(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if item.config.pluginmanager.hasplugin("timeout"):  # pytest-timeout does it, if installed
        yield
        return
    marker = item.get_closest_marker("timeout")
    seconds = float(marker.args[0]) if marker else float(
        os.environ.get("SWITCHYARD_TEST_TIMEOUT", "120"))

    def on_alarm(signum, frame):
        raise DeadlineExceeded(f"test still running after {seconds:g}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- log tails of failing tests ------------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for p in harness.LIVE:
            report.sections.append((f"log of {p.name} (pid {p.pid}, {p.log_path})", p.tail()))


# ---- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def build_dir():
    d = os.environ.get("SWITCHYARD_BUILD_DIR", "build")
    if not os.path.isabs(d):
        d = os.path.join(ROOT, d)
    if not os.path.isdir(d):
        pytest.fail(f"build directory {d} does not exist (meson setup build && ninja -C build)")
    return d


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return harness.make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def mock(build_dir, tmp_path_factory):
    m = harness.MockProvider(build_dir, str(tmp_path_factory.mktemp("mock")), name="mock")
    yield m
    m.stop()


@pytest.fixture(scope="module")
def mock_tls(build_dir, certs, tmp_path_factory):
    m = harness.MockProvider(build_dir, str(tmp_path_factory.mktemp("mock-tls")), certs=certs,
                             name="mock-tls")
    yield m
    m.stop()


@pytest.fixture
def gateway(build_dir, tmp_path):
    """gateway(table, workers=1, args=(), env=None, wait=True, name="gateway") -> Gateway.
    <table> is a dict (written as JSON) or raw text. With wait=False the caller waits
    (gw.wait_ready()) or watches it fail (gw.proc.wait())."""
    started = []

    def start(table, workers=1, args=(), env=None, wait=True, name=None, start_timeout=10):
        name = name or ("gateway" if not started else f"gateway{len(started) + 1}")
        gw = harness.Gateway(build_dir, str(tmp_path), table, workers=workers, args=args,
                             env=env, wait=False, name=name)
        started.append(gw)
        if wait:
            gw.wait_ready(start_timeout)
        return gw

    yield start
    for gw in started:
        gw.process.kill()


@pytest.fixture
def table_for():
    return harness.table_for
