"""rip-server in the foreground, as the tests run it: its own name, port and state directory."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ripsvc import paths
from tests.support.client import fetch
from tests.support.waiting import free_port


class Server:
    def __init__(self, workdir: Path, *tokens: str, env: dict[str, str] | None = None,
                 name: str = "") -> None:
        self.port = free_port()
        self.state = workdir / "state"  # the host registry, certificates (not /var/lib/rip)
        self.name = name or f"rip-test-{os.urandom(3).hex()}"
        self.log = workdir / "server.log"
        self.out = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from ripsvc.cli import serve_main; serve_main()",
             *tokens, f"http:127.0.0.1:{self.port}", "--name", self.name], stdout=self.out,
            stderr=subprocess.STDOUT, env={**os.environ, **(env or {}),
                                           "STATE_DIRECTORY": str(self.state)})

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

    def wait_output_count(self, text: str, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.output().count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} not seen {count}x:\n{self.output()}"
            time.sleep(0.05)

    def status(self) -> dict:
        """What `ripctl status NAME --json` says of this app."""
        done = ripctl("status", self.name, "--json")
        assert done.returncode == 0, done.stderr + self.output()
        return dict(json.loads(done.stdout))

    def children(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def close(self) -> None:
        if self.proc.poll() is None:  # a graceful stop first: it removes its runtime directory
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(paths.app_dir(self.name), ignore_errors=True)
        self.out.close()


def ripctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from ripsvc.cli import ripctl_main; "
                           "ripctl_main()", *args], capture_output=True, text=True, timeout=120)
