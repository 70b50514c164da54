"""Real worker processes for the tests, started exactly as systemd starts them.

The test owns the listening Unix socket (passed as fd 3 with LISTEN_*) and the NOTIFY_SOCKET
datagram socket, so it sees every READY/STATUS/WATCHDOG/STOPPING the worker sends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ripsvc.activation import spawn

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TEST_APPS = REPO / "tests" / "apps"


def nice_in_stat(stat: str) -> int:
    """A process's nice value from its /proc/PID/stat: the 19th field, counted after the
    command's closing parenthesis (the command itself may hold spaces)."""
    return int(stat.rpartition(")")[2].split()[16])


class NotifySocket:
    """A NOTIFY_SOCKET the test owns; a thread records every datagram with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def poll(self, timeout: float = 0.0) -> None:
        """Give datagrams in flight `timeout` seconds to arrive."""
        time.sleep(timeout)

    def fields(self, name: str) -> list[str]:
        return [m[name] for _, m in list(self.messages) if name in m]

    def times(self, name: str) -> list[float]:
        return [t for t, m in list(self.messages) if name in m]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(1)
        self.sock.close()


class Process:
    """A rip process under test, started the way systemd starts it, with its own notify socket."""

    def __init__(self, workdir: Path, argv: list[str], sockets: list[tuple[str, socket.socket]],
                 env: dict[str, str] | None, name: str, stdout: str | None = None) -> None:
        """`stdout`: a file for the process' stdout (stderr still goes to its log)."""
        self.workdir = workdir
        self.name = name
        self.notify = NotifySocket(workdir / f"{name}.notify")
        self.log_path = workdir / f"{name}.log"
        inherited = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
        child_env = {k: v for k, v in os.environ.items() if k not in inherited}
        child_env["NOTIFY_SOCKET"] = str(self.notify.path)
        child_env["PYTHONPATH"] = str(REPO)
        child_env.update(env or {})
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 (kept for the process' life)
        out = open(stdout, "wb") if stdout else None  # noqa: SIM115 (closed once passed on)
        try:
            self.proc = spawn(argv, [(n, s.fileno()) for n, s in sockets], child_env,
                              stdout=out or self.log_file,
                              stderr=self.log_file if out else subprocess.STDOUT,
                              cwd=str(workdir))
        finally:
            if out is not None:
                out.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def _explain(self, what: str) -> str:
        return (f"{what}\n--- {self.name} exit code: {self.proc.poll()}\n--- notify: "
                f"{[m for _, m in self.notify.messages]}\n--- output:\n{self.output()}")

    def wait_ready(self, timeout: float = 15.0) -> Process:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.notify.fields("READY"):
                return self
            if self.proc.poll() is not None:
                self.notify.poll(0.05)
                raise AssertionError(self._explain("exited before READY=1"))
            time.sleep(0.01)
        raise AssertionError(self._explain(f"no READY=1 within {timeout} s"))

    def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(self._explain(f"still running after {timeout} s")) from None
        self.notify.poll(0.05)
        return code

    def wait_output(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if text in out:
                return out
            time.sleep(0.05)
        raise AssertionError(self._explain(f"{text!r} not in the output"))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.notify.close()
        self.log_file.close()


class WorkerProcess(Process):
    """One `rip-worker`, its listening Unix socket owned by the test (as systemd owns it)."""

    def __init__(self, workdir: Path, app: str, args: Sequence[str] = (),
                 env: dict[str, str] | None = None, name: str = "w") -> None:
        self.socket_path = str(workdir / f"{name}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(128)
        self.listener = listener
        argv = [sys.executable, "-m", "ripsvc.worker", app, "--recycle-jitter", "0", *args]
        super().__init__(workdir, argv, [("worker", listener)], env, name)

    def close(self) -> None:
        super().close()
        self.listener.close()


class BalancerProcess(Process):
    """`python -m ripsvc.balancer` with a loopback TCP port passed by socket activation."""

    def __init__(self, workdir: Path, args: Sequence[str] = (),
                 env: dict[str, str] | None = None, name: str = "balancer",
                 stdout: str | None = None) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        self.listener = listener
        self.port = listener.getsockname()[1]
        self.control_path = str(workdir / f"{name}.ctl")
        # "{port}" in an argument is the port chosen here (--tls-port {port}: HTTPS on it)
        argv = [sys.executable, "-m", "ripsvc.balancer", "--app", "probe",
                "--control", self.control_path,
                *(arg.replace("{port}", str(self.port)) for arg in args)]
        super().__init__(workdir, argv, [("http", listener)], env, name, stdout)

    def close(self) -> None:
        super().close()
        self.listener.close()
