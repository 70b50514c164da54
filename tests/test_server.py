"""rip-server: the embedded manager running a balancer and workers in the foreground."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ripsvc.exitcodes import ExitCode
from tests.support.client import fetch
from tests.support.server import Server, ripctl
from tests.support.waiting import free_port

VERSIONED_APP = '''
from pathlib import Path

VERSION = (Path(__file__).parent / "VERSION").read_bytes()  # read once, at import


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": VERSION})
'''


def versioned_app(root: Path) -> Path:
    """An app directory whose app serves the VERSION it read at import (v1 to begin with)."""
    app = root / "versioned"
    app.mkdir()
    (app / "app.py").write_text(VERSIONED_APP)
    (app / "VERSION").write_text("v1")
    return app


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_serves_through_the_balancer_and_stops_cleanly(short_tmp):
    from tests.support.procs import EXAMPLES

    server = Server(short_tmp, str(EXAMPLES / "hello"), "w:2")
    try:
        server.wait_healthy(2)
        children = server.children()
        assert len(children) == 4  # the balancer, two workers and a WebSocket worker
        replies = [fetch(server.port, "/ping") for _ in range(10)]
        assert all(r.status == 200 and r.text.startswith("pong") for r in replies)
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(20) == 0
        assert not [pid for pid in children if alive(pid)]
        assert not server.state.exists()  # no state to keep: no state directory (issue 23)
    finally:
        server.close()


def test_rolling_restart_under_load_has_no_failed_request(short_tmp):
    app = versioned_app(short_tmp)
    server = Server(short_tmp, str(app), "w:2", "r:0,0s,0r")
    results: list[tuple[float, int, bytes]] = []
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                results.append((time.monotonic(), resp.status, resp.read()))
            except (OSError, http.client.HTTPException) as exc:
                errors.append(repr(exc))
                conn.close()

    try:
        server.wait_healthy(2)
        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        for version in ("v2", "v3", "v4"):
            time.sleep(0.5)
            (app / "VERSION").write_text(version)
            if version == "v3":  # the signal does the same as ripctl reload
                before = server.output().count("rolling restart done")
                server.proc.send_signal(signal.SIGHUP)
                server.wait_output_count("rolling restart done", before + 1)
            else:
                done = ripctl("reload", server.name, "--wait")
                assert done.returncode == 0, done.stderr + server.output()
                assert "rolling restart done" in done.stdout
            done_at = time.monotonic()
            time.sleep(0.5)
            after = [body for at, _, body in list(results) if at > done_at + 0.05]
            assert after and set(after) == {version.encode()}, set(after)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert errors == []
        assert len(results) > 200
        assert {status for _, status, _ in results} == {200}
    finally:
        stop.set()
        server.close()


def test_a_broken_app_stops_the_start_with_a_clear_error(short_tmp):
    from tests.support.procs import TEST_APPS

    server = Server(short_tmp, str(TEST_APPS / "raising_import.py"), "w:2")
    try:
        assert server.proc.wait(20) == ExitCode.APP_LOAD_ERROR
        out = server.output()
        assert "cannot load the app" in out
        assert "ImportError: cannot import name 'nothing'" in out
    finally:
        server.close()


def test_a_killed_balancer_is_restarted_and_its_pool_rebuilt(short_tmp):
    from tests.support.procs import EXAMPLES

    server = Server(short_tmp, str(EXAMPLES / "hello"), "w:2")
    try:
        server.wait_healthy(2)
        balancer = next(pid for pid in server.children()
                        if "ripsvc.balancer" in Path(f"/proc/{pid}/cmdline").read_text())
        subprocess.run(["kill", "-9", str(balancer)], check=True)
        server.wait_output("the balancer was killed by SIGKILL; restarting it")
        server.wait_healthy(2)  # a new balancer, with both workers joined again
        assert fetch(server.port, "/ping").status == 200
    finally:
        server.close()


def test_ripctl_status_scale_stop_and_errors(short_tmp):
    from tests.support.procs import EXAMPLES

    server = Server(short_tmp, str(EXAMPLES / "hello"), "w:2")
    try:
        server.wait_healthy(2)
        for _ in range(4):
            fetch(server.port, "/ping")
        status = ripctl("status", server.name)
        assert status.returncode == 0, status.stderr
        assert f"{server.name}: healthy, version 1, 2 workers, 1 WebSocket worker (0 open), " \
            "4 requests since start (4 by these workers)" in status.stdout
        # what "version" and an id "N.K" are, once each
        assert "  version: 1 at start, +1 for each rolling restart" in status.stdout
        assert "  id N.K: worker position N on its K-th socket" in status.stdout
        assert ripctl("reload", server.name, "--wait").returncode == 0
        status = ripctl("status", server.name)  # the app's total outlives its workers
        assert "version 2, 2 workers, 1 WebSocket worker (0 open), 4 requests since start " \
            "(0 by these workers)" in \
            status.stdout, status.stdout
        data = server.status()
        assert [(w["kind"], w["state"]) for w in data["workers"]] == [
            ("http", "ready"), ("http", "ready"), ("websocket", "ready")]
        assert data["health"] == "healthy" and data["requests_total"] == 4
        assert all(w["pid"] in server.children() for w in data["workers"])
        assert ripctl("scale", server.name, "3").returncode == 0
        server.wait_healthy(3)
        assert ripctl("scale", server.name, "1").returncode == 0
        server.wait_healthy(1)
        assert len(server.status()["workers"]) == 2
        assert "  id wsN: a WebSocket worker" in ripctl("status", server.name).stdout
        bad = ripctl("scale", server.name, "0")
        assert bad.returncode == 1 and "(bad-request)" in bad.stderr
        twin = subprocess.run([sys.executable, "-c", "from ripsvc.cli import serve_main; "
                               "serve_main()", str(EXAMPLES / "hello"), "--name", server.name,
                               f"http:127.0.0.1:{free_port()}"], capture_output=True,
                              text=True, timeout=20)
        assert twin.returncode != 0 and "is already running" in twin.stderr
        stop = ripctl("stop", server.name)
        assert stop.returncode == 0 and "stopping" in stop.stdout
        assert server.proc.wait(20) == 0
        gone = ripctl("status", server.name)
        assert gone.returncode == 1 and f"no app named '{server.name}' is running" in gone.stderr
    finally:
        server.close()
    assert ripctl("status", "bad name!").returncode == 2


class Load:
    """Bounded keep-alive GET load on the server from a few threads, recording every outcome."""

    def __init__(self, port: int, threads: int = 8, path: str = "/ping") -> None:
        self.results: list[tuple[float, int, bytes]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(port, path))
                        for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self, port: int, path: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        deadline = time.monotonic() + 120  # bounded whatever happens to the test
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                self.results.append((time.monotonic(), resp.status, resp.read()))
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))
                conn.close()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)

    def statuses(self) -> set[int]:
        return {status for _, status, _ in self.results}


def test_kill_9_a_worker_every_second_under_load(short_tmp):
    from tests.support.procs import EXAMPLES

    server = Server(short_tmp, str(EXAMPLES / "hello"), "w:2", "r:0,0s,0r")
    try:
        server.wait_healthy(2)
        load = Load(server.port)
        try:
            for round_ in range(6):
                time.sleep(1)
                workers = [pid for pid in server.children()
                           if "ripsvc.worker" in Path(f"/proc/{pid}/cmdline").read_text()]
                subprocess.run(["kill", "-9", str(workers[round_ % len(workers)])])
            time.sleep(1)
        finally:
            load.finish()
        assert load.errors == []
        assert load.statuses() == {200}
        assert len(load.results) > 300
        server.wait_healthy(2)  # the pool healed
    finally:
        server.close()


def test_recycling_under_load_fails_no_request(short_tmp):
    from tests.support.procs import EXAMPLES

    server = Server(short_tmp, str(EXAMPLES / "hello"), "w:2", "r:50,0s,0r",
                    "--recycle-jitter", "0")
    try:
        server.wait_healthy(2)
        load = Load(server.port)
        capacity = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            workers = json.loads(fetch(server.port, "/status").body)["workers"]
            capacity.append(workers["ready"] + workers["busy"])
            time.sleep(0.02)
        load.finish()
        assert load.errors == []
        assert load.statuses() == {200}
        assert server.output().count("asks to be recycled: starting its successor") >= 4
        assert min(capacity) >= 2, capacity  # successors come before the old ones leave
        server.wait_healthy(2)
    finally:
        server.close()


def test_a_broken_reload_keeps_the_old_workers_serving(short_tmp):
    app = versioned_app(short_tmp)
    server = Server(short_tmp, str(app), "w:2")
    try:
        server.wait_healthy(2)
        (app / "app.py").write_text("raise RuntimeError('deploy went wrong')\n")
        load = Load(server.port, threads=4, path="/")
        failed = ripctl("reload", server.name, "--wait")
        load.finish()
        assert failed.returncode == 1
        # The app's own error, and where it was raised (issue 23), not only "exited with 4".
        assert "(reload-failed)" in failed.stderr
        assert (f"cannot load the app: RuntimeError: deploy went wrong ({app}/app.py:1)"
                in failed.stderr), failed.stderr
        assert "RuntimeError: deploy went wrong" in server.output()
        assert load.errors == [] and load.statuses() == {200}
        assert {body for _, _, body in load.results} == {b"v1"}
        assert fetch(server.port, "/").body == b"v1"
        assert server.proc.poll() is None
    finally:
        server.close()


def test_touching_the_restart_file_rolls_the_workers(short_tmp):
    app = versioned_app(short_tmp)
    (app / "tmp").mkdir()
    server = Server(short_tmp, str(app), "w:2")
    try:
        server.wait_healthy(2)
        server.wait_output("for a rolling restart")
        (app / "VERSION").write_text("v2")
        (app / "tmp" / "restart.txt").touch()
        server.wait_output_count("rolling restart done", 1)
        assert fetch(server.port, "/").body == b"v2"
        assert server.status()["version"] == 2
        assert server.output().count("touched: rolling restart") == 1  # one touch, one restart
    finally:
        server.close()


def test_a_deploy_that_switches_a_link_and_touches_the_restart_file_is_served(short_tmp):
    """Capistrano's way: releases/N, `current` pointing at the newest, the app given as
    current/app.py. The switch (an atomic rename of a new link) and a touch of
    current/tmp/restart.txt right after roll the workers onto the new release, whose own
    tmp/ the watch follows."""
    releases = short_tmp / "releases"
    releases.mkdir()
    for version in ("v1", "v2"):
        app = versioned_app(releases)
        app.rename(releases / version)
        (releases / version / "VERSION").write_text(version)
        (releases / version / "tmp").mkdir()
    current = short_tmp / "current"
    current.symlink_to(releases / "v1")
    server = Server(short_tmp, str(current / "app.py"), "w:2")
    try:
        server.wait_healthy(2)
        server.wait_output(f"touch {current}/tmp/restart.txt for a rolling restart")
        assert fetch(server.port, "/").body == b"v1"
        switching = short_tmp / "current.new"
        switching.symlink_to(releases / "v2")
        switching.rename(current)
        (current / "tmp" / "restart.txt").touch()
        server.wait_output_count("rolling restart done", 1)
        assert fetch(server.port, "/").body == b"v2"
        (current / "tmp" / "restart.txt").touch()  # the new release's tmp/ is watched now
        server.wait_output_count("rolling restart done", 2)
    finally:
        server.close()


def test_a_worker_that_stalls_its_loop_is_killed_and_replaced(short_tmp):
    from tests.support.procs import TEST_APPS

    server = Server(short_tmp, str(TEST_APPS / "blocking"), "w:1", "--watchdog-sec", "1")
    try:
        server.wait_healthy(1)
        before = fetch(server.port, "/").body
        blocked = fetch(server.port, "/block?s=4")
        assert blocked.status in (502, 504)  # the worker died under it
        server.wait_output("missed its watchdog")
        server.wait_healthy(1)
        assert fetch(server.port, "/").body != before  # a new process serves
    finally:
        server.close()


def test_a_worker_reported_hung_by_the_balancer_is_replaced(short_tmp):
    from tests.support.procs import TEST_APPS

    server = Server(short_tmp, str(TEST_APPS / "blocking"), "w:1", "--response-timeout", "0.5")
    try:
        server.wait_healthy(1)
        before = fetch(server.port, "/").body
        assert fetch(server.port, "/slow?s=5").status == 504
        server.wait_output("worker 1 reported hung by the balancer: killing it")
        server.wait_healthy(1)
        assert fetch(server.port, "/").body != before
    finally:
        server.close()


def test_rip_server_stop_and_restart_act_on_a_running_app(short_tmp):
    from tests.support.procs import EXAMPLES

    server = Server(short_tmp, str(EXAMPLES / "hello"), "w:1")

    def rip_server(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from ripsvc.cli import serve_main; "
                               "serve_main()", *args], capture_output=True, text=True,
                              timeout=60)

    try:
        server.wait_healthy(1)
        restarted = rip_server("restart", server.name)
        assert restarted.returncode == 0 and "rolling restart done" in restarted.stdout
        stopped = rip_server("stop", server.name)
        assert stopped.returncode == 0
        assert server.proc.wait(20) == 0
        assert rip_server("stop", server.name).returncode == 1
    finally:
        server.close()


def test_rolling_restarts_and_recycling_hand_offs_together(short_tmp):
    """Reloads while workers keep asking to be recycled: no failed request, every reload done."""
    from tests.support.procs import EXAMPLES

    server = Server(short_tmp, str(EXAMPLES / "hello"), "w:2", "r:40,0s,0r",
                    "--recycle-jitter", "0")
    try:
        server.wait_healthy(2)
        load = Load(server.port)
        try:
            for _ in range(3):
                done = ripctl("reload", server.name, "--wait")
                assert done.returncode == 0, done.stderr + server.output()
        finally:
            load.finish()
        assert load.errors == []
        assert load.statuses() == {200}
        assert "asks to be recycled" in server.output()
        assert "Traceback" not in server.output()
        server.wait_healthy(2)
        status = server.status()
        assert [w["kind"] for w in status["workers"]] == ["http", "http", "websocket"]
        assert status["version"] == 4
    finally:
        server.close()
