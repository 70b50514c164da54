"""The real command, `rip-server examples/hello w:2 http:PORT --name NAME`, for the rolling
restart and cold start benchmarks: started in a directory of its own (its output there, its
state too), stopped with SIGINT, and `ripctl` to drive it.

Its sockets live in /run/rip/NAME/ as root (the user's runtime directory otherwise), so no
other app may run under the benchmarks' names meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import CHILD_ENV, READY_TIMEOUT, ROOT, VENV_BIN, Proc, Stack, free_port

RIP_SERVER_WORKERS = 2
RIP_SERVER_STOP_TIMEOUT = 10.0  # after SIGINT, then SIGKILL to its process group
ACCESS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+Z (\d{3}) ")  # the balancer's access log


def ripctl(*args: str, timeout: float) -> tuple[int | None, str]:
    """Run .venv/bin/ripctl; its exit status (None if it timed out) and what it printed."""
    try:
        result = subprocess.run(
            [str(VENV_BIN / "ripctl"), *args], cwd=ROOT, env=CHILD_ENV, capture_output=True,
            text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"ripctl {' '.join(args)}: no answer within {timeout:g} s"
    return result.returncode, (result.stdout + result.stderr).strip()


def server_lines(proc: Proc, limit: int = 80, requests: int = 10) -> list[str]:
    """rip-server's output without its 2xx/3xx access-log lines: its log lines and the first
    `requests` failed requests, at most `limit` lines (the last)."""
    lines: list[str] = []
    failed = 0
    try:
        with proc.output.open(errors="replace") as file:
            for line in file:
                access = ACCESS_LINE.match(line)
                if access and access[1][0] in "23":
                    continue
                if access:
                    failed += 1
                    if failed > requests:
                        continue
                lines.append(line.rstrip("\n"))
    except OSError:
        return ["(no output)"]
    if failed > requests:
        lines.append(f"({failed - requests} more non-2xx/3xx access-log lines)")
    return lines[-limit:] or ["(no output)"]


def stop_rip_server(proc: Proc) -> None:
    """SIGINT rip-server (by PID), SIGKILL its process group if it still runs after a while."""
    process = proc.process
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(RIP_SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"  {proc.name} (pid {process.pid}) still runs {RIP_SERVER_STOP_TIMEOUT:g} s "
              "after SIGINT: killing its process group", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if process.returncode not in (0, -signal.SIGINT, 128 + signal.SIGINT):
        print(f"  note: {proc.name} exited with status {process.returncode} after SIGINT; its "
              "output:\n    " + "\n    ".join(server_lines(proc, limit=20)), flush=True)


@contextlib.contextmanager
def rip_server_running(directory: Path, tools: dict[str, str],
                       name: str) -> Iterator[tuple[Stack, Proc, float]]:
    """`rip-server examples/hello w:2 http:PORT --name NAME` on a free port; the stack, the
    process and when it was launched (time.monotonic()). Stopped and reaped on leaving."""
    directory.mkdir()
    stack = Stack(name, directory, tools)
    stack.port = free_port()
    command = [".venv/bin/rip-server", "examples/hello", f"w:{RIP_SERVER_WORKERS}",
               f"http:127.0.0.1:{stack.port}", "--name", name]
    launched_at = time.monotonic()
    # Its state (host registry) in the run's directory, not /var/lib/rip/NAME as for root.
    proc = stack.start("rip-server", command, env={"STATE_DIRECTORY": str(directory / "state")})
    try:
        yield stack, proc, launched_at
    finally:
        stop_rip_server(proc)


def wait_workers_ready(proc: Proc, name: str) -> dict[str, Any]:
    """Poll `ripctl status NAME -j` until it shows every worker ready, RIP_SERVER_WORKERS of
    them serving HTTP; its status then."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(
                f"rip-server {name} exited with status {proc.process.returncode} before its "
                f"workers were ready; its output:\n" + "\n".join(server_lines(proc))
            )
        code, said = ripctl("status", name, "-j", timeout=5.0)
        if code == 0:
            try:
                status: dict[str, Any] = json.loads(said)
                states = [worker["state"] for worker in status["workers"]]
                http = [worker for worker in status["workers"] if worker["kind"] == "http"]
            except (ValueError, KeyError, TypeError) as error:
                last = f"unreadable status ({error!r}): {said[:200]}"
            else:
                # The app's WebSocket worker (an ASGI app gets one) is ready with the others.
                if len(http) == RIP_SERVER_WORKERS and all(s == "ready" for s in states):
                    return status
                last = f"worker states {states}"
        else:
            last = said or f"ripctl status exited with {code}"
        time.sleep(0.1)
    raise RuntimeError(
        f"rip-server {name}: `ripctl status {name} -j` did not show {RIP_SERVER_WORKERS} ready "
        f"workers within {READY_TIMEOUT:g} s ({last}); its output:\n"
        + "\n".join(server_lines(proc))
    )
