"""ripctl as a newcomer uses it: no app named when one runs, several apps, none, a pipe.

ripctl's view of the host is the runtime directory (/run/rip for root): the tests give
rip-server and ripctl one of their own, as root a tmpfs on /run/rip in a private mount
namespace, so that whatever else runs on the machine is not counted.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.client import fetch
from tests.support.procs import EXAMPLES
from tests.support.waiting import free_port

RIPCTL = [sys.executable, "-c", "from ripsvc.cli import ripctl_main; ripctl_main()"]
RIP_SERVER = [sys.executable, "-c", "from ripsvc.cli import serve_main; serve_main()"]


class Host:
    """A runtime directory of the test's own, and rip-server and ripctl run with it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "STATE_DIRECTORY": str(root / "state")}
        self.apps: dict[str, subprocess.Popen[bytes]] = {}
        self.holder: subprocess.Popen[str] | None = None
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            self.holder = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "--", "sh", "-c",
                 "mkdir -p /run/rip && mount -t tmpfs -o mode=0755 rip-test /run/rip && "
                 "echo ready && exec sleep infinity"], stdout=subprocess.PIPE, text=True)
            assert self.holder.stdout is not None
            assert self.holder.stdout.readline() == "ready\n"
            self.prefix = ["nsenter", "-t", str(self.holder.pid), "-m", "--"]
            self.runtime = Path("/run/rip")
        else:
            self.env["XDG_RUNTIME_DIR"] = str(root)
            self.runtime = root / "rip"

    def start(self, name: str) -> None:
        port = free_port()
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*self.prefix, *RIP_SERVER, str(EXAMPLES / "hello"), "w:1",
                                     f"http:127.0.0.1:{port}", "--name", name], stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env)
        self.apps[name] = proc
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if json.loads(fetch(port, "/status").body)["workers"]["ready"] == 1:
                    return
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)

    def wait_stopped(self, name: str) -> None:
        assert self.apps.pop(name).wait(20) == 0

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *argv], capture_output=True, text=True,
                              timeout=60, env=self.env)

    def ripctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([*RIPCTL, *args])

    def close(self) -> None:
        for proc in self.apps.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()


@pytest.fixture
def host(short_tmp: Path) -> Iterator[Host]:
    host = Host(short_tmp)
    yield host
    host.close()


def test_without_an_app_ripctl_acts_on_the_only_one_running(host):
    none = host.ripctl("status")
    assert none.returncode == 1
    assert none.stderr == (f"ripctl: no app is running here (none in {host.runtime}); start "
                           "one with rip-server APP, or systemctl start rip@APP\n")
    host.start("shop")
    status = host.ripctl("status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("shop: healthy, version 1, 1 workers")
    reload = host.ripctl("reload", "--wait")
    assert (reload.returncode, reload.stdout) == (0, "shop: rolling restart done (version 2)\n")
    scale = host.ripctl("scale", "2")
    assert (scale.returncode, scale.stdout) == (0, "shop: 2 workers\n")
    stop = host.ripctl("stop")
    assert (stop.returncode, stop.stdout) == (0, "shop: stopping\n")
    host.wait_stopped("shop")


def test_status_without_an_app_shows_every_app_running(host):
    host.start("blog")
    host.start("shop")
    status = host.ripctl("status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["blog", "shop"]
    assert all(", version 1, 1 workers, " in line for line in lines), lines
    assert set(json.loads(host.ripctl("status", "-j").stdout)) == {"blog", "shop"}
    reload = host.ripctl("reload")
    assert reload.returncode == 2
    assert reload.stderr == ("ripctl: 2 apps are running (blog, shop); name one: ripctl "
                             "reload APP\n")


def test_a_reader_that_goes_away_ends_the_output_quietly(host):
    """`ripctl status | head -1`: the rest of the status goes nowhere, without a traceback."""
    host.start("shop")
    for _ in range(3):
        proc = subprocess.Popen([*host.prefix, *RIPCTL, "status", "shop"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=host.env)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before ripctl writes a byte
        assert proc.wait(30) == 0
        assert proc.stderr.read() == b""
    # and through a shell pipe, as a user types it
    shell = subprocess.run(f"{shlex.join([*host.prefix, *RIPCTL, 'status'])} | head -1",
                           shell=True, capture_output=True, text=True, timeout=60, env=host.env)
    assert shell.stdout.startswith("shop: healthy") and shell.stderr == ""


def test_rip_server_stop_without_an_app_stops_the_only_one(host):
    host.start("shop")
    stop = host.run([*RIP_SERVER, "stop"])
    assert (stop.returncode, stop.stdout) == (0, "shop: stopping\n"), stop.stderr
    host.wait_stopped("shop")
