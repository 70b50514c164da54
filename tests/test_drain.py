"""`ripctl drain|undrain` and shutdown_delay through rip-server's manager: readiness fails at
once, the app keeps serving, `--for` stops it, a restarted balancer is told again, systemd's
STATUS= and `ripctl status` say so (the balancer's side: tests/test_readiness.py)."""

from __future__ import annotations

import json
import os
import signal
import time

from tests.support.client import fetch
from tests.support.procs import TEST_APPS, NotifySocket
from tests.support.server import Server, ripctl
from tests.support.waiting import wait_for

PROBE = str(TEST_APPS / "probe.py")


def balancer_pid(server: Server) -> int:
    for pid in server.children():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"ripsvc.balancer" in cmdline.read():
                    return pid
        except FileNotFoundError:
            continue
    raise AssertionError(f"no balancer among {server.children()}:\n{server.output()}")


def test_drain_undrain_and_status(tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    server = Server(tmp_path, PROBE, "w:2", "--websocket-workers", "0",
                    env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        server.wait_healthy(2)
        wait_for(lambda: notify.fields("READY"), 10, "READY=1")
        assert fetch(server.port, "/ready").status == 200
        drained = ripctl("drain", server.name)
        assert drained.returncode == 0, drained.stderr
        assert "draining: readiness fails" in drained.stdout
        # At once: the reply came after the balancer had it.
        assert fetch(server.port, "/ready").status == 503
        assert fetch(server.port, "/pid").status == 200
        status = ripctl("status", server.name)
        assert status.returncode == 0 and "draining" in status.stdout.split("\n")[0], status
        data = server.status()
        assert data["drain"]["draining"] is True and data["drain"]["stops_in"] is None
        wait_for(lambda: any(s.startswith("draining; ") for s in notify.fields("STATUS")), 5,
                 "STATUS=draining; …")
        # Again: the same state, no error (a script may drain twice).
        assert ripctl("drain", server.name).returncode == 0
        # A rolling restart while draining: new workers join, readiness still fails.
        reload = ripctl("reload", server.name, "--wait")
        assert reload.returncode == 0, reload.stderr
        assert fetch(server.port, "/ready").status == 503
        assert fetch(server.port, "/pid").status == 200
        undrained = ripctl("undrain", server.name)
        assert undrained.returncode == 0 and "undrained" in undrained.stdout, undrained
        assert fetch(server.port, "/ready").status == 200
        again = ripctl("undrain", server.name)
        assert again.returncode == 0 and "was not draining" in again.stdout, again
        assert fetch(server.port, "/ready").status == 200
        bad = ripctl("drain", server.name, "--for", "soon")
        assert bad.returncode == 2 and "not a duration" in bad.stderr
        assert fetch(server.port, "/ready").status == 200
    finally:
        server.close()
        notify.close()


def test_drain_for_stops_the_app_and_undrain_calls_it_off(tmp_path):
    server = Server(tmp_path, PROBE, "w:1", "--websocket-workers", "0")
    try:
        server.wait_healthy(1)
        asked = time.monotonic()
        assert ripctl("drain", server.name, "--for", "2").returncode == 0
        assert ripctl("undrain", server.name).returncode == 0  # calls the stop off
        time.sleep(max(0.0, asked + 2.5 - time.monotonic()))
        assert server.proc.poll() is None
        assert fetch(server.port, "/ready").status == 200
        drained = ripctl("drain", server.name, "--for", "1")
        assert "stopping in 1 s" in drained.stdout, drained
        start = time.monotonic()
        while time.monotonic() - start < 0.8:  # served meanwhile
            assert fetch(server.port, "/pid").status == 200
        assert server.proc.wait(15) == 0
        assert time.monotonic() - start >= 0.9
        assert "drained for as long as asked: stopping" in server.output()
    finally:
        server.close()


def test_a_restarted_balancer_is_drained_again(tmp_path):
    """The balancer dies while the app is drained: the new one must not pass readiness, not
    even between its start and the workers joining it."""
    server = Server(tmp_path, PROBE, "w:2", "--websocket-workers", "0")
    try:
        server.wait_healthy(2)
        assert ripctl("drain", server.name).returncode == 0
        old = balancer_pid(server)
        os.kill(old, signal.SIGKILL)
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                reply = fetch(server.port, "/ready")
            except OSError:
                continue  # between the two balancers
            seen.append(reply.status)
            status = json.loads(fetch(server.port, "/status").body)
            if status["workers"]["ready"] == 2 and len(seen) > 20:
                break
        assert seen and set(seen) == {503}, seen
        assert balancer_pid(server) != old
        assert ripctl("undrain", server.name).returncode == 0
        assert fetch(server.port, "/ready").status == 200
    finally:
        server.close()


def test_shutdown_delay_on_sigterm(tmp_path):
    server = Server(tmp_path, PROBE, "w:1", "--websocket-workers", "0", "--shutdown-delay", "1.5")
    try:
        server.wait_healthy(1)
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: fetch(server.port, "/ready").status == 503, 1, "readiness failing")
        while time.monotonic() - sent < 1.2:
            assert fetch(server.port, "/pid").status == 200
        assert server.proc.wait(15) == 0
        assert time.monotonic() - sent >= 1.4
    finally:
        server.close()


def test_drain_of_an_app_that_is_not_running():
    missing = ripctl("drain", "no-such-app-here")
    assert missing.returncode != 0 and "no app named 'no-such-app-here'" in missing.stderr
