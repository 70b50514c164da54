"""Single-inflight, sd_notify, recycling, graceful stop and load failures of a real worker."""

from __future__ import annotations

import itertools
import signal
import time

import pytest

from ripsvc.exitcodes import ExitCode
from tests.support.client import UnixHTTPConnection, get, request
from tests.support.procs import EXAMPLES, TEST_APPS
from tests.support.waiting import in_background

HELLO = str(EXAMPLES / "hello")
WSGI = str(EXAMPLES / "hello_wsgi")
AIOHTTP = str(EXAMPLES / "hello_aiohttp")


def wait_busy(worker, timeout=5.0):
    """Until the worker's STATUS says it is busy (it reports state once a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.notify.poll(0.05)
        if any(s.endswith("busy") for s in worker.notify.fields("STATUS")):
            return
    raise AssertionError(f"the worker never reported busy: {worker.notify.fields('STATUS')}")


@pytest.mark.parametrize("app", [HELLO, AIOHTTP], ids=["asgi", "aiohttp"])
def test_second_request_while_one_is_in_flight_gets_busy_503_at_once(start_worker, app):
    worker = start_worker(app)
    thread, slow = in_background(get, worker.socket_path, "/slow?ms=1500")
    wait_busy(worker)
    reply = get(worker.socket_path, "/ping")
    assert reply.status == 503
    assert reply.headers["rip-worker-busy"] == "1"
    assert reply.seconds < 0.5
    thread.join(10)
    assert slow["value"].status == 200, slow
    assert get(worker.socket_path, "/ping").status == 200


def test_a_second_request_to_a_wsgi_worker_waits_for_the_first(start_worker):
    """A WSGI app holds the loop while it runs (worker/wsgi.py), as under gunicorn's sync
    worker: a second connection's request is read once the first is answered, then served.
    (The balancer never sends one; it probes a worker it is unsure of, and waits.)"""
    worker = start_worker(WSGI)
    thread, slow = in_background(get, worker.socket_path, "/slow?ms=1000")
    wait_busy(worker)
    reply = get(worker.socket_path, "/ping")
    thread.join(10)
    assert slow["value"].status == 200 and reply.status == 200
    assert slow["value"].seconds < reply.seconds + 0.3


def test_notify_ready_status_watchdog_and_stopping(start_worker):
    worker = start_worker(HELLO, env={"WATCHDOG_USEC": "400000"})
    ready_at = worker.notify.times("READY")[0]
    for _ in range(3):
        get(worker.socket_path, "/ping")
    time.sleep(1.5)
    worker.notify.poll(0.05)
    pings = [t for t in worker.notify.times("WATCHDOG") if t >= ready_at]
    assert len(pings) >= 5, pings  # every 0.2 s (half of WATCHDOG_USEC)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 0.4, gaps
    statuses = worker.notify.fields("STATUS")
    assert any("3 requests" in s for s in statuses), statuses
    assert worker.notify.fields("MAINPID") == [str(worker.pid)]
    worker.signal()
    assert worker.wait_exit() == 0
    assert worker.notify.fields("STOPPING") == ["1"]


def test_wsgi_request_does_not_stall_the_watchdog(start_worker):
    worker = start_worker(WSGI, env={"WATCHDOG_USEC": "200000"})
    start = time.monotonic()
    assert get(worker.socket_path, "/slow?ms=1200").status == 200
    worker.notify.poll(0.05)
    during = [t for t in worker.notify.times("WATCHDOG") if start < t < start + 1.2]
    assert len(during) >= 8, during  # a ping every 0.1 s while the app's thread sleeps


@pytest.mark.parametrize("app", [HELLO, WSGI, AIOHTTP], ids=["asgi", "wsgi", "aiohttp"])
def test_sigterm_during_slow_request_finishes_it_and_exits_0(start_worker, app):
    worker = start_worker(app)
    thread, slow = in_background(get, worker.socket_path, "/slow?ms=1000")
    wait_busy(worker)
    worker.signal(signal.SIGTERM)
    thread.join(10)
    assert slow["value"].status == 200, slow
    assert slow["value"].text == "slept 1000 ms\n"
    assert worker.wait_exit() == 0
    assert worker.notify.fields("STOPPING") == ["1"]


@pytest.mark.parametrize("app", [HELLO, WSGI], ids=["asgi", "wsgi"])
def test_graceful_timeout_bounds_the_stop(start_worker, app):
    # WSGI: the app's thread, still sleeping in the request, does not hold the process either.
    worker = start_worker(app, "--graceful-timeout", "0.5")
    in_background(get, worker.socket_path, "/slow?ms=5000")
    wait_busy(worker)
    start = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit() == 0
    assert time.monotonic() - start < 3
    assert "did not finish within 0.5 s" in worker.output()


def test_idle_keep_alive_connections_close_on_stop(start_worker):
    worker = start_worker(HELLO)
    conn = UnixHTTPConnection(worker.socket_path)
    assert request(conn, "GET", "/ping").status == 200
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit() == 0
    assert conn.sock.recv(1) == b""  # closed by the worker, not left hanging


@pytest.mark.parametrize("app", [HELLO, AIOHTTP], ids=["asgi", "aiohttp"])
def test_recycles_after_n_requests_with_its_exit_code(start_worker, app):
    worker = start_worker(app, "--recycle", "r:5,0s,0r")
    conn = UnixHTTPConnection(worker.socket_path)
    statuses = [request(conn, "GET", "/ping").status for _ in range(5)]
    assert statuses == [200] * 5
    assert worker.wait_exit() == ExitCode.RECYCLE
    assert "recycling after 5 requests" in worker.output()


def test_recycles_after_its_age_limit(start_worker):
    worker = start_worker(HELLO, "--recycle", "r:0,1s,0r")
    assert worker.wait_exit(5) == ExitCode.RECYCLE
    assert "recycling after 1 s" in worker.output()


def test_recycle_jitter_lowers_limits_within_the_share():
    from ripsvc.recycle import RecyclePolicy

    policy = RecyclePolicy(1000, 3600, 10)
    for _ in range(200):
        jittered = policy.with_jitter(0.1)
        assert 900 <= jittered.requests <= 1000
        assert 3240 <= jittered.seconds <= 3600
        assert jittered.reloads == 10
    assert len({policy.with_jitter(0.1).requests for _ in range(50)}) > 1


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_such_module:app", "could not import module 'no_such_module'"),
        (f"{TEST_APPS}/errors_app.py:missing", "has no attribute 'missing'"),
        (f"{TEST_APPS}/raising_import.py", "ImportError: cannot import name 'nothing'"),
        (f"{TEST_APPS}/raising_import.py", "raising_import.py\", line"),
        (f"{TEST_APPS}/syntax_error.py", "SyntaxError"),
        (f"{TEST_APPS}/not_an_app.py", "is a dict, not an app"),
        (f"{TEST_APPS}/failing_startup.py", "lifespan startup failed: database unreachable"),
    ],
)
def test_load_failures_exit_with_app_load_error_and_say_why(start_worker, app, message):
    worker = start_worker(app, ready=False)
    assert worker.wait_exit() == ExitCode.APP_LOAD_ERROR
    assert message in worker.output()
    assert worker.notify.fields("READY") == []


@pytest.mark.parametrize("app", ["pkg.mod:", "a b:app", "/nonexistent/dir/app.py", "x:1abc"])
def test_bad_import_strings_are_refused(start_worker, app):
    worker = start_worker(app, ready=False)
    assert worker.wait_exit() == ExitCode.APP_LOAD_ERROR
    assert "rip-worker: " in worker.output()


def test_body_limit_413_on_content_length_and_on_chunked(start_worker):
    worker = start_worker(HELLO, "--max-body", "64K")
    conn = UnixHTTPConnection(worker.socket_path)
    at_limit = b"x" * (64 << 10)
    reply = request(conn, "POST", "/echo", body=at_limit)
    assert (reply.status, len(reply.body)) == (200, 64 << 10)
    over = request(UnixHTTPConnection(worker.socket_path), "POST", "/echo", body=at_limit + b"x")
    assert over.status == 413
    chunked = UnixHTTPConnection(worker.socket_path)
    chunked.request("POST", "/echo", body=iter([at_limit, b"y"]), encode_chunked=True)
    assert chunked.getresponse().status == 413


def test_large_body_is_spooled_and_echoed_intact(start_worker):
    worker = start_worker(WSGI)
    body = bytes(range(256)) * (12 << 10)  # 3 MiB, beyond the in-memory threshold
    reply = request(UnixHTTPConnection(worker.socket_path), "POST", "/echo", body=body)
    assert reply.status == 200
    assert reply.body == body


@pytest.mark.parametrize("app", [HELLO, AIOHTTP], ids=["asgi", "aiohttp"])
def test_last_response_before_recycling_says_connection_close(start_worker, app):
    worker = start_worker(app, "--recycle", "r:3,0s,0r")
    conn = UnixHTTPConnection(worker.socket_path)
    conn.request("GET", "/ping")
    first = conn.getresponse()
    first.read()
    assert (first.getheader("connection") or "").lower() != "close"
    request(conn, "GET", "/ping")
    conn.request("GET", "/ping")
    last = conn.getresponse()
    last.read()
    assert last.getheader("connection").lower() == "close"
    assert worker.wait_exit() == ExitCode.RECYCLE


def test_recycle_handoff_announces_keeps_serving_then_times_out(start_worker):
    worker = start_worker(HELLO, "--recycle", "r:3,0s,0r", "--recycle-handoff", "1")
    conn = UnixHTTPConnection(worker.socket_path)
    for _ in range(3):
        assert request(conn, "GET", "/ping").status == 200
    worker.notify.poll(0.2)
    assert worker.notify.fields("RIP_RECYCLE") == ["1"]
    reply = request(conn, "GET", "/ping")  # still serving while a successor is awaited
    assert reply.status == 200 and reply.headers.get("connection") != "close"
    assert worker.wait_exit(5) == ExitCode.RECYCLE
    assert "no successor came" in worker.output()


def test_recycle_handoff_ends_with_sigterm_once_replaced(start_worker):
    worker = start_worker(HELLO, "--recycle", "r:1,0s,0r", "--recycle-handoff", "30")
    assert request(UnixHTTPConnection(worker.socket_path), "GET", "/ping").status == 200
    worker.notify.poll(0.2)
    assert worker.notify.fields("RIP_RECYCLE") == ["1"]
    worker.signal(signal.SIGTERM)  # the supervisor's successor is in place
    assert worker.wait_exit(5) == 0
