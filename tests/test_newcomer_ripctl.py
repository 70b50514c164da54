"""ripctl as a newcomer uses it: no app named when one runs, several apps, none, a pipe.

The apps run as user nobody with a runtime directory of the test's own (ripctl's view of the
host is that directory): root's /run/rip is shared with whatever else runs on the machine.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.client import fetch
from tests.support.procs import EXAMPLES, REPO
from tests.support.waiting import free_port

NOBODY = pwd.getpwnam("nobody")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs the apps as user nobody")


class Host:
    """A runtime directory owned by nobody, and rip-server and ripctl run as nobody in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(root), "HOME": str(root),
                    "STATE_DIRECTORY": str(root / "state")}
        self.apps: dict[str, tuple[subprocess.Popen[bytes], int]] = {}

    def _as_nobody(self) -> dict[str, object]:
        return {"user": NOBODY.pw_uid, "group": NOBODY.pw_gid, "extra_groups": [],
                "env": self.env, "cwd": self.root}

    def start(self, name: str) -> None:
        port = free_port()
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-c", "from ripsvc.cli import serve_main; "
                                 "serve_main()", str(EXAMPLES / "hello"), "w:1",
                                 f"http:127.0.0.1:{port}", "--name", name],
                                stdout=log, stderr=subprocess.STDOUT, **self._as_nobody())
        self.apps[name] = (proc, port)
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (self.root / f"{name}.log").read_text()
            try:
                if json.loads(fetch(port, "/status").body)["workers"]["ready"] == 1:
                    return
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, (self.root / f"{name}.log").read_text()
            time.sleep(0.05)

    def wait_stopped(self, name: str) -> None:
        proc, _ = self.apps.pop(name)
        assert proc.wait(20) == 0

    def ripctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from ripsvc.cli import ripctl_main; "
                               "ripctl_main()", *args], capture_output=True, text=True,
                              timeout=60, **self._as_nobody())  # type: ignore[call-overload]

    def close(self) -> None:
        for proc, _ in self.apps.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def host(short_tmp: Path) -> Iterator[Host]:
    os.chown(short_tmp, NOBODY.pw_uid, NOBODY.pw_gid)
    host = Host(short_tmp)
    yield host
    host.close()


def test_without_an_app_ripctl_acts_on_the_only_one_running(host):
    none = host.ripctl("status")
    assert none.returncode == 1
    assert none.stderr == (f"ripctl: no app is running here (none in {host.root}/rip); start "
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
        proc = subprocess.Popen([sys.executable, "-c", "from ripsvc.cli import ripctl_main; "
                                 "ripctl_main()", "status", "shop"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **host._as_nobody())  # type: ignore[call-overload]
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before ripctl writes a byte
        assert proc.wait(30) == 0
        assert proc.stderr.read() == b""
    # and through a shell pipe, as a user types it
    shell = subprocess.run(f"{sys.executable} -c 'from ripsvc.cli import ripctl_main; "
                           "ripctl_main()' status | head -1", shell=True, capture_output=True,
                           text=True, timeout=60, **host._as_nobody())  # type: ignore[call-overload]
    assert shell.stdout.startswith("shop: healthy") and shell.stderr == ""


def test_rip_server_stop_without_an_app_stops_the_only_one(host):
    host.start("shop")
    stop = subprocess.run([sys.executable, "-c", "from ripsvc.cli import serve_main; "
                           "serve_main()", "stop"], capture_output=True, text=True, timeout=60,
                          **host._as_nobody())  # type: ignore[call-overload]
    assert (stop.returncode, stop.stdout) == (0, "shop: stopping\n"), stop.stderr
    host.wait_stopped("shop")


@pytest.fixture(autouse=True)
def _readable_repo() -> None:
    """nobody must read the tree (and the virtualenv) that the tests run."""
    for path in (REPO, Path(sys.executable).parent):
        if not os.access(path, os.R_OK | os.X_OK) or path.stat().st_mode & 0o005 != 0o005:
            pytest.skip(f"{path} is not readable by other users")
    assert shutil.which("head")
