"""A bad deploy never takes the app down (issue 20, SPEC §8), in the foreground; the same under
systemd is in tests/test_deploy_systemd.py.

Code on disk that cannot load stops the app only on a cold start. Afterwards the old workers
serve on past their recycling limits, a worker that dies anyway leaves its position vacant
(tried again with a back-off, joining only once it loads), the app reports itself degraded
and why, and a port never accepts a connection that nobody will answer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

from tests.support.client import fetch
from tests.support.procs import TEST_APPS
from tests.support.server import Server, ripctl
from tests.support.waiting import free_port, in_background, wait_for
from tests.test_manager_health import cmdline
from tests.test_server import Load, versioned_app

BROKEN = "this is not python\n"


def worker_pids(server: Server) -> list[int]:
    """The HTTP workers' (not the WebSocket worker's)."""
    return [pid for pid in server.children()
            if "ripsvc.worker" in cmdline(pid) and "--websocket" not in cmdline(pid)]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_broken_deploy_with_recycles_and_kills_keeps_serving_degraded(short_tmp):
    """The issue's story: a failed reload, then recycling limits reached under load and old
    workers killed; no request fails, capacity shrinks only by the killed ones, the status
    says why, attempts back off, and a fixed deploy brings the app back whole."""
    app = versioned_app(short_tmp)
    server = Server(short_tmp, str(app), "w:3", "r:40,0s,0r", "--recycle-jitter", "0")
    try:
        server.wait_healthy(3)
        load = Load(server.port)
        try:
            time.sleep(0.5)  # recycling hand-offs under way: the normal life
            (app / "app.py").write_text(VERSIONED_APP_BROKEN)
            failed = ripctl("reload", server.name, "--wait")
            assert failed.returncode == 1
            assert "cannot load the app: SyntaxError: invalid syntax" in failed.stderr
            assert f"({app}/app.py:3)" in failed.stderr, failed.stderr
            # Every worker passes its limit of 40 requests many times over meanwhile.
            server.wait_output("held, since the app on disk cannot load")
            time.sleep(1.5)
            old = worker_pids(server)
            assert len(old) == 3
            os.kill(old[0], signal.SIGKILL)
            server.wait_output("was killed by SIGKILL, and the app on disk fails to load")
            time.sleep(2.5)  # a first attempt fails (after 1 s), the next comes 2 s later
            degraded = server.status()
            os.kill(old[1], signal.SIGKILL)
            time.sleep(1)
        finally:
            load.finish()
        assert load.errors == [], load.errors[:5]
        assert load.statuses() == {200}
        assert {body for _, _, body in load.results} == {b"v1"}
        assert len(load.results) > 300
        left = worker_pids(server)  # (and maybe an attempt, loading at this moment)
        assert old[2] in left and old[0] not in left and old[1] not in left

        health = degraded["health"]
        assert re.fullmatch(r"degraded: 2/3 workers, the app on disk fails to load: "
                            r"SyntaxError: invalid syntax \(.*/app\.py:3\)", health), health
        assert [w["state"] for w in degraded["workers"]].count("vacant") == 1
        human = ripctl("status", server.name).stdout
        assert human.startswith(f"{server.name}: degraded: 1/3 workers, the app on disk fails "
                                "to load: SyntaxError: invalid syntax ("), human
        assert "requests since start" in human and "vacant" in human
        line = json.loads(fetch(server.port, "/status").body)
        assert line["workers"]["ready"] + line["workers"]["busy"] == 1
        # /status says it too, within the manager's next look at the pool (a second)
        deadline = time.monotonic() + 5
        while "fails to load" not in line.get("health", ""):
            assert time.monotonic() < deadline, line
            time.sleep(0.1)
            line = json.loads(fetch(server.port, "/status").body)
        assert line["status"] == "degraded"
        assert line["health"].startswith("degraded: 1/3 workers, the app on disk fails to load")

        # One log line per attempt, each later than the one before (1 s, 2 s, 4 s …).
        out = server.output()
        attempts = [float(m) for m in re.findall(r"the next attempt at position \d+ in (\d+) s",
                                                 out)]
        assert 2 <= len(attempts) <= 8, attempts
        assert out.count("cannot load the app (exit 4)") == 0  # never restarted in place

        # A good deploy: the vacant positions fill as soon as their next attempt loads.
        (app / "VERSION").write_text("v2")
        (app / "app.py").write_text(VERSIONED_APP)
        server.wait_output("the app on disk loads again; recycling resumes", timeout=30)
        done = ripctl("reload", server.name, "--wait")
        assert done.returncode == 0, done.stderr
        server.wait_healthy(3)
        assert server.status()["health"] == "healthy"
        deadline = time.monotonic() + 5
        while "health" in json.loads(fetch(server.port, "/status").body):
            assert time.monotonic() < deadline, "/status still says degraded"
            time.sleep(0.1)
        assert {fetch(server.port, "/").body for _ in range(9)} == {b"v2"}
    finally:
        server.close()


def test_a_worker_killed_after_a_failed_deploy_is_not_restarted_in_a_loop(short_tmp):
    """Light load, one worker killed once the code on disk is known broken: its position is
    tried with a back-off, never in a tight loop, and no request is routed to it."""
    app = versioned_app(short_tmp)
    server = Server(short_tmp, str(app), "w:2", "r:0,0s,0r")
    try:
        server.wait_healthy(2)
        (app / "app.py").write_text(BROKEN)
        assert ripctl("reload", server.name, "--wait").returncode == 1
        os.kill(worker_pids(server)[0], signal.SIGKILL)
        started = time.monotonic()
        replies = []
        while time.monotonic() - started < 4:
            replies.append(fetch(server.port, "/").status)
            time.sleep(0.05)
        assert set(replies) == {200}
        out = server.output()
        # in 4 s: attempts after 1 s and 3 s (then 7 s): two, each one line
        assert out.count("cannot load the app: SyntaxError") <= 4, out
        assert len(re.findall(r"the next attempt at position 1 in", out)) <= 3, out
        assert "exited with 0" not in out
        assert server.proc.poll() is None
    finally:
        server.close()


def test_the_restart_file_works_when_tmp_is_made_after_the_start(short_tmp):
    app = versioned_app(short_tmp)
    server = Server(short_tmp, str(app), "w:1")
    try:
        server.wait_healthy(1)
        assert "does not exist" not in server.output()  # debug level only
        (app / "VERSION").write_text("v2")
        (app / "tmp").mkdir()
        time.sleep(0.2)
        (app / "tmp" / "restart.txt").touch()
        server.wait_output_count("rolling restart done", 1)
        assert fetch(server.port, "/").body == b"v2"
    finally:
        server.close()


def test_ports_refuse_connections_once_the_manager_is_gone_or_stopping(short_tmp):
    """Foreground mode: a killed manager takes its balancer and port along (no connection
    waits for nobody); a stopping one refuses new connections while its requests finish."""
    probe = str(TEST_APPS / "probe.py")
    server = Server(short_tmp, probe, "w:1", "r:0,0s,0r")
    try:
        server.wait_healthy(1)
        slow, result = in_background(fetch, server.port, "/slow?ms=1500")
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(server.port), 1.0, "the port to refuse connections")
        slow.join(10)
        assert result["value"].status == 200  # the request in flight finished
        assert server.proc.wait(10) == 0
    finally:
        server.close()

    killed = Server(short_tmp, probe, "w:1", "r:0,0s,0r", name=f"rip-kill-{free_port()}")
    try:
        killed.wait_healthy(1)
        killed.proc.kill()
        wait_for(lambda: refused(killed.port), 3.0, "the port to refuse connections")
    finally:
        killed.close()


VERSIONED_APP_BROKEN = '''
from pathlib import Path
def app(:
    pass
'''

VERSIONED_APP = '''
from pathlib import Path

VERSION = (Path(__file__).parent / "VERSION").read_bytes()  # read once, at import


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": VERSION})
'''
