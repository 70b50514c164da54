"""max_rss: a worker whose resident memory is above it after a request recycles, as a recycled
worker does (issue 22), against real workers and a real rip-server; memory_high and memory_max
in the foreground. Under systemd: tests/test_systemd.py."""

from __future__ import annotations

import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ripsvc.exitcodes import ExitCode
from ripsvc.recycle import HOLD_SIGNAL, REASONS, RELEASE_SIGNAL, reason_of, reason_text
from ripsvc.worker.core import RELEASE_SPREAD
from tests.support.client import UnixHTTPConnection, request
from tests.support.procs import TEST_APPS
from tests.support.server import Server, ripctl
from tests.test_availability import healed
from tests.test_https import ripctl_metrics
from tests.test_server import Load

HOG = str(TEST_APPS / "memory_hog.py")  # /grow?kb=N keeps N KiB more; ~28 MiB when loaded
HOG_AIOHTTP = str(TEST_APPS / "memory_hog_aiohttp.py")
LIMIT = "60M"
SAID = "recycling on memory: RSS "


def test_each_reason_is_read_back_from_what_the_worker_says() -> None:
    """The manager counts recycles by the reason in a worker's STATUS= (its log line too)."""
    for reason, detail in (("requests", 10000), ("age", 3600), ("reloads", 10),
                           ("memory", "RSS 81.0 MiB is above max_rss 64.0 MiB")):
        said = reason_text(reason, detail)
        for status in (said, f"{said}; waiting for a successor", f"{said}; stopping"):
            assert reason_of(status) == reason, status
    assert reason_of("hello (asgi): 3 requests, 0 reloads, idle") == "other"
    assert reason_of("recycling after 5 seconds") == "other"
    assert set(REASONS) == {"requests", "age", "reloads", "memory", "other"}


@pytest.mark.parametrize("app", [HOG, HOG_AIOHTTP], ids=["asgi", "aiohttp"])
def test_above_max_rss_after_a_request_it_recycles_with_that_response_complete(
        start_worker, app):
    """Without a hand-off (as under systemd): the request that took it over the limit is
    answered whole, says Connection: close, and the worker exits 75 saying why."""
    worker = start_worker(app, "--max-rss", LIMIT)
    conn = UnixHTTPConnection(worker.socket_path)
    replies = []
    for _ in range(20):
        replies.append(request(conn, "GET", "/grow?kb=8192"))
        if replies[-1].headers.get("connection") == "close":
            break
        # Past the interval after the last read (that of a request, or the one put off to
        # after it): each request is measured before its response goes out.
        time.sleep(0.25)
    assert [r.status for r in replies] == [200] * len(replies)
    assert replies[-1].headers.get("connection") == "close", len(replies)
    assert 3 <= len(replies) <= 6, len(replies)  # 28 MiB + 8 MiB a request, over 60 MiB
    assert replies[-1].body == str(worker.pid).encode()
    assert worker.wait_exit(5) == ExitCode.RECYCLE
    out = worker.output()
    assert f"{SAID}" in out and "is above max_rss 60.0 MiB after" in out, out
    assert "with the app loaded); stopping" in out
    stopping = [s for s in worker.notify.fields("STATUS") if s.startswith("recycling")]
    assert stopping and reason_of(stopping[-1]) == "memory", worker.notify.messages


def test_a_burst_then_silence_is_measured_when_the_interval_is_over(start_worker):
    """Requests closer together than the interval between reads: the read is put off, not
    skipped, so a worker left idle above the limit still recycles."""
    worker = start_worker(HOG, "--max-rss", LIMIT)
    conn = UnixHTTPConnection(worker.socket_path)
    request(conn, "GET", "/pid")  # measured: far below
    for _ in range(10):  # 40 MiB more at once, within the interval
        assert request(conn, "GET", "/grow?kb=4096").status == 200
    assert worker.wait_exit(2) == ExitCode.RECYCLE
    assert SAID in worker.output()


def test_below_max_rss_it_serves_on(start_worker):
    worker = start_worker(HOG, "--max-rss", "200M")
    conn = UnixHTTPConnection(worker.socket_path)
    for _ in range(8):
        assert request(conn, "GET", "/grow?kb=4096").status == 200
        time.sleep(0.12)
    time.sleep(0.3)
    assert worker.proc.poll() is None and SAID not in worker.output()


def test_with_a_hand_off_it_asks_for_a_successor_and_serves_meanwhile(start_worker):
    """Under the embedded supervisor: RIP_RECYCLE=1 with the reason in STATUS=, for the
    manager to start a successor first and count a memory recycle."""
    worker = start_worker(HOG, "--max-rss", LIMIT, "--recycle-handoff", "30")
    conn = UnixHTTPConnection(worker.socket_path)
    for _ in range(10):
        assert request(conn, "GET", "/grow?kb=4096").status == 200
        time.sleep(0.12)
    worker.notify.poll(0.2)
    assert worker.notify.fields("RIP_RECYCLE") == ["1"]
    status = worker.notify.fields("STATUS")[-1]
    assert reason_of(status) == "memory" and status.endswith("; waiting for a successor")
    reply = request(conn, "GET", "/grow?kb=4096")  # still serving, asked only once
    assert reply.status == 200 and reply.headers.get("connection") != "close"
    worker.notify.poll(0.2)
    assert worker.notify.fields("RIP_RECYCLE") == ["1"]
    worker.signal(signal.SIGTERM)  # its successor is in place
    assert worker.wait_exit(5) == 0


def test_an_app_above_max_rss_once_loaded_serves_without_it_and_says_so(start_worker):
    """The app alone needs more than max_rss: each worker would recycle after every request,
    and so would its successors. The limit is off for the worker, said at start."""
    worker = start_worker(HOG, "--max-rss", "20M", "--recycle-handoff", "30")
    out = worker.output()
    assert "max_rss 20.0 MiB is off for this worker: it holds" in out, out
    assert "with the app just loaded, so it would recycle after every request" in out
    conn = UnixHTTPConnection(worker.socket_path)
    for _ in range(5):
        assert request(conn, "GET", "/grow?kb=4096").status == 200
        time.sleep(0.12)
    worker.notify.poll(0.2)
    assert worker.notify.fields("RIP_RECYCLE") == [] and worker.proc.poll() is None


def test_while_recycling_is_held_it_serves_on_and_recycles_once_released(start_worker):
    """A broken deploy (the manager holds recycling): above the limit, the worker keeps
    serving and says so once; released, it asks for its successor."""
    worker = start_worker(HOG, "--max-rss", LIMIT, "--recycle-handoff", "30")
    worker.signal(HOLD_SIGNAL)
    worker.wait_output("recycling held")
    conn = UnixHTTPConnection(worker.socket_path)
    for _ in range(12):
        assert request(conn, "GET", "/grow?kb=4096").status == 200
        time.sleep(0.12)
    out = worker.wait_output("held, since the app on disk cannot load")
    assert out.count(SAID) == 1, out
    worker.notify.poll(0.2)
    assert worker.notify.fields("RIP_RECYCLE") == []
    worker.signal(RELEASE_SIGNAL)
    deadline = time.monotonic() + RELEASE_SPREAD + 2
    while not worker.notify.fields("RIP_RECYCLE") and time.monotonic() < deadline:
        worker.notify.poll(0.05)
    assert worker.notify.fields("RIP_RECYCLE") == ["1"], worker.output()
    assert reason_of(worker.notify.fields("STATUS")[-1]) == "memory"


def test_a_websocket_worker_says_max_rss_does_not_apply(start_worker):
    worker = start_worker(HOG, "--websocket", "--max-rss", LIMIT)
    assert "max_rss 60.0 MiB does not apply to a WebSocket worker" in worker.output()


def memory_recycles(name: str) -> dict[str, float]:
    return {s.labels["reason"]: s.value
            for f in text_string_to_metric_families(ripctl_metrics(name))
            for s in f.samples if s.name == "rip_worker_recycles_total"}


def test_memory_recycling_under_load_fails_no_request_and_is_counted(short_tmp):
    """Two workers whose every request keeps 1 MiB: each recycles again and again under load,
    its successor first (the embedded hand-off); no request fails, the journal line and the
    metric say why, and the pool heals."""
    server = Server(short_tmp, HOG, "w:2", "r:0,0s,0r", "--max-rss", "64M")
    try:
        server.wait_healthy(2)
        load = Load(server.port, threads=4, path="/grow?kb=1024")
        asked = "asks to be recycled: starting its successor first (recycling on memory: RSS "
        deadline = time.monotonic() + 30
        while server.output().count(asked) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        load.finish()
        out = server.output()
        assert load.errors == [] and load.statuses() == {200}, load.errors
        assert out.count(asked) >= 4, out
        assert out.count(": asking for a successor (serving meanwhile") >= 4  # the workers'
        assert "is above max_rss 64.0 MiB after" in out
        healed(server.port, 2, path="/pid")
        pids = {body for _, _, body in load.results}
        assert len(pids) >= 4  # each worker asks once: the last ones asked were successors
        counted = memory_recycles(server.name)
        assert counted["memory"] >= 4, counted
        assert counted["requests"] == counted["age"] == counted["reloads"] == 0, counted
        assert "does not apply to a WebSocket worker" in out
    finally:
        server.close()


def test_a_broken_deploy_holds_memory_recycling_and_a_good_one_resumes_it(short_tmp):
    """While the app on disk cannot load, a successor would not start: workers above max_rss
    serve on (held, said once each), none is lost, no request fails; a good deploy replaces
    them and memory recycling goes on."""
    app = short_tmp / "hog"
    app.mkdir()
    good = (TEST_APPS / "memory_hog.py").read_text()
    (app / "app.py").write_text(good)
    server = Server(short_tmp, str(app), "w:2", "r:0,0s,0r", "--max-rss", "64M")
    held = "is above max_rss 64.0 MiB"
    try:
        server.wait_healthy(2)
        (app / "app.py").write_text(good + "\nthis is not python\n")
        assert ripctl("reload", server.name, "--wait").returncode == 1
        load = Load(server.port, threads=2, path="/grow?kb=1024")
        try:
            server.wait_output_count(": held, since the app on disk cannot load", 2)
            time.sleep(1)  # far above the limit by now, still serving
            during = len(load.results)
            assert len({body for _, _, body in load.results}) <= 2  # no successor, no loss
            assert memory_recycles(server.name)["memory"] == 0
            assert server.output().count(held) == 2  # once each: held, not asked again
            (app / "app.py").write_text(good)
            done = ripctl("reload", server.name, "--wait")
            assert done.returncode == 0, done.stderr
            deadline = time.monotonic() + 20
            while memory_recycles(server.name)["memory"] < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            load.finish()
        assert load.errors == [] and load.statuses() == {200}, load.errors
        assert len(load.results) > during
        assert memory_recycles(server.name)["memory"] >= 1  # the new workers, recycled
        healed(server.port, 2, path="/pid")
    finally:
        server.close()


def test_the_units_memory_limits_are_said_to_be_ignored_in_the_foreground(short_tmp):
    """memory_high and memory_max are systemd's, per worker unit: rip-server in the foreground
    has no unit to put them on, and says so instead of ignoring them in silence."""
    server = Server(short_tmp, HOG, "w:1", "--memory-high", "1G", "--memory-max", "2G")
    try:
        server.wait_healthy(1)
        out = server.output()
        assert "memory_high = 1G, memory_max = 2G: ignored here: these are systemd's " \
            "MemoryHigh=/MemoryMax= of each worker unit" in out, out
        assert out.count("ignored here") == 1
    finally:
        server.close()
    (short_tmp / "quiet").mkdir()
    quiet = Server(short_tmp / "quiet", HOG, "w:1")  # no limits given: nothing said
    try:
        quiet.wait_healthy(1)
        assert "ignored here" not in quiet.output()
    finally:
        quiet.close()
