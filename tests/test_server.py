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
from tests.test_cli import free_port

VERSIONED_APP = '''
from pathlib import Path

VERSION = (Path(__file__).parent / "VERSION").read_bytes()  # read once, at import


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": VERSION})
'''


class Server:
    def __init__(self, workdir: Path, *tokens: str) -> None:
        self.port = free_port()
        self.log = workdir / "server.log"
        self.out = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from ripsvc.cli import serve_main; serve_main()",
             *tokens, f"http:{self.port}"], stdout=self.out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, workers: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                status = json.loads(fetch(self.port, "/status").body)
                if status["workers"]["ready"] == workers:
                    return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"not healthy in {timeout} s:\n{self.output()}")

    def wait_output(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert time.monotonic() < deadline, f"{text!r} not seen:\n{self.output()}"
            time.sleep(0.05)

    def children(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_serves_through_the_balancer_and_stops_cleanly(short_tmp):
    from tests.support.procs import EXAMPLES

    server = Server(short_tmp, str(EXAMPLES / "hello"), "w:2")
    try:
        server.wait_healthy(2)
        children = server.children()
        assert len(children) == 3  # the balancer and two workers
        replies = [fetch(server.port, "/ping") for _ in range(10)]
        assert all(r.status == 200 and r.text.startswith("pong") for r in replies)
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(20) == 0
        assert not [pid for pid in children if alive(pid)]
    finally:
        server.close()


def test_rolling_restart_under_load_has_no_failed_request(short_tmp):
    app = short_tmp / "versioned"
    app.mkdir()
    (app / "app.py").write_text(VERSIONED_APP)
    (app / "VERSION").write_text("v1")
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
        for version in ("v2", "v3"):
            time.sleep(0.5)
            (app / "VERSION").write_text(version)
            before = server.output().count("rolling restart done")
            server.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while server.output().count("rolling restart done") == before:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
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
        server.wait_output("the balancer exited")
        server.wait_healthy(2)  # a new balancer, with both workers joined again
        assert fetch(server.port, "/ping").status == 200
    finally:
        server.close()
