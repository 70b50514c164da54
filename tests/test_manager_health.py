"""The manager keeps the pool whole and never stalls (issue 19, items 14 to 16): a frozen
worker is killed, a stuck or garbled balancer costs the manager nothing but a log line, the
pool is reconciled with the running workers, drains take graceful_timeout, and a streamed
response is logged with its own status."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from ripsvc import paths
from ripsvc.manager.balancer_client import BalancerClient, BalancerUnreachable
from tests.support.client import control, fetch
from tests.support.procs import TEST_APPS
from tests.support.server import Server, ripctl
from tests.support.waiting import in_background, wait_for

PROBE = str(TEST_APPS / "probe.py")


def pool_states(server: Server) -> dict[str, str]:
    _, reply = control(str(paths.app_dir(server.name) / "balancer.ctl"), "pool")
    return {w["id"]: w["state"] for w in reply["data"]}


def healed(server: Server, workers: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = json.loads(fetch(server.port, "/status").body)
        if status["workers"]["ready"] == status["workers"]["total"] == workers:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the pool did not heal: {status}\n{server.output()[-4000:]}")
    assert fetch(server.port, "/pid").status == 200


def worker_pids(server: Server) -> list[int]:
    return [pid for pid in server.children() if "ripsvc.worker" in cmdline(pid)]


def cmdline(pid: int) -> str:
    """The process's command line; empty if it is gone already (a child that just exited)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def dead(pid: int) -> bool:
    """The process is gone or a zombie (its parent has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def worker_pid(server: Server) -> int:
    return worker_pids(server)[0]


def test_a_frozen_hung_worker_is_killed_and_replaced(short_tmp):
    """Item 14: a worker stopped (SIGSTOP) mid-request got SIGABRT, which stays pending; no
    SIGKILL followed and the pool stayed short until someone sent SIGCONT."""
    server = Server(short_tmp, PROBE, "w:1", "r:0,0s,0r", "--response-timeout", "1")
    try:
        server.wait_healthy(1)
        frozen = worker_pid(server)
        thread, result = in_background(fetch, server.port, "/slow?ms=3000")
        time.sleep(0.3)
        os.kill(frozen, signal.SIGSTOP)
        thread.join(10)
        assert result["value"].status == 504
        wait_for(lambda: dead(frozen), timeout=12, what="the frozen worker to be killed")
        healed(server, 1)
        assert "SIGKILL" in server.output()
    finally:
        server.close()


class GarbledControl:
    """A control socket that answers every request with what no JSON parser takes, or with
    nothing at all (`silent`)."""

    def __init__(self, path: Path, silent: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.silent = silent
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.silent:
                self.held.append(conn)
                continue
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nnot json!")
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("silent", [False, True])
def test_the_manager_s_balancer_calls_fail_fast(short_tmp, silent):
    """Item 15: a garbled answer raised out of the manager's health tick (which then stopped
    for good), and a silent balancer stalled it for aiohttp's default 300 s."""
    path = short_tmp / "ctl.sock"
    fake = GarbledControl(path, silent)

    async def ask() -> float:
        client = BalancerClient(path)
        start = time.monotonic()
        try:
            with pytest.raises(BalancerUnreachable):
                await client.query("stats", timeout=1.0)
        finally:
            await client.close()
        return time.monotonic() - start

    try:
        assert asyncio.run(ask()) < 2.0
    finally:
        fake.close()


def test_a_stuck_balancer_stalls_nothing_and_checks_go_on(short_tmp):
    """Item 15: while the balancer is stopped (SIGSTOP), `ripctl status` says so within
    seconds; once it runs again the manager's checks go on: a hung worker is still replaced."""
    server = Server(short_tmp, PROBE, "w:1", "r:0,0s,0r", "--response-timeout", "1")
    try:
        server.wait_healthy(1)
        balancer = next(pid for pid in server.children() if "ripsvc.balancer" in cmdline(pid))
        os.kill(balancer, signal.SIGSTOP)
        try:
            start = time.monotonic()
            status = ripctl("status", server.name)
            assert status.returncode != 0 and "does not answer" in status.stderr, status
            assert time.monotonic() - start < 15
            time.sleep(2)  # the manager's ticks meet the stuck balancer meanwhile
        finally:
            os.kill(balancer, signal.SIGCONT)
        first = worker_pid(server)
        assert fetch(server.port, "/slow?ms=4000").status == 504
        wait_for(lambda: worker_pids(server) and first not in worker_pids(server), timeout=10,
                 what="the hung worker to be replaced")
        healed(server, 1)
    finally:
        server.close()


def test_the_pool_is_reconciled_with_the_running_workers(short_tmp):
    """A ready worker missing from the balancer's pool is joined again, and an id the pool
    holds that no worker has is taken out; both are logged."""
    server = Server(short_tmp, PROBE, "w:2", "r:0,0s,0r")
    try:
        server.wait_healthy(2)
        ctl = str(paths.app_dir(server.name) / "balancer.ctl")
        assert control(ctl, "leave", {"id": "1"})[0] == 200
        assert control(ctl, "join", {"id": "ghost", "socket": str(short_tmp / "no.sock")})[0] \
            == 200
        wait_for(lambda: pool_states(server) == {"1": "ready", "2": "ready", "ws1": "ready"},
                 timeout=10,
                 what="the pool to be reconciled")
        output = server.output()
        assert "worker 1 is ready but not in the balancer's pool: joining it again" in output
        assert "the balancer's pool holds worker ghost, which does not run" in output
    finally:
        server.close()


def test_a_drain_takes_graceful_timeout(short_tmp):
    """Item 16: drains waited a fixed 30 s, whatever graceful_timeout said. With 2 s, a
    rolling restart does not wait for a 10-second request."""
    server = Server(short_tmp, PROBE, "w:1", "r:0,0s,0r", "--graceful-timeout", "2")
    try:
        server.wait_healthy(1)
        in_background(fetch, server.port, "/slow?ms=10000")
        time.sleep(0.3)
        start = time.monotonic()
        result = ripctl("reload", server.name, "--wait")
        assert result.returncode == 0, result
        assert time.monotonic() - start < 8
        healed(server, 1)
    finally:
        server.close()


def test_a_streamed_response_is_logged_with_its_status(short_tmp):
    """Item 16: a streamed response was always logged and counted as 200."""
    server = Server(short_tmp, PROBE, "w:1", "r:0,0s,0r")
    try:
        server.wait_healthy(1)
        assert fetch(server.port, "/stream?n=2&ms=10&status=201").status == 201
        server.wait_output(" 201 GET ")
    finally:
        server.close()
