"""Child processes of the embedded supervisor, run exactly as systemd runs units.

Each child gets its sockets through socket activation (fds from 3, LISTEN_*), and a notify
socket of its own (NOTIFY_SOCKET), so readiness and status need no pid bookkeeping. Exits are
noticed through a pidfd on the event loop: no SIGCHLD handler, no thread, no polling.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
from pathlib import Path

from ripsvc import logs
from ripsvc.activation import spawn
from ripsvc.manager.supervisor import Handle, Post

log = logs.get("manager")
_serial = itertools.count(1)


class Child(Handle):
    """One supervised process (the balancer or a worker)."""

    def __init__(self, role: str, ident: str, argv: list[str],
                 sockets: list[tuple[str, socket.socket]], runtime: Path, post: Post,
                 extra_env: dict[str, str] | None = None, watchdog: float = 0.0) -> None:
        """`watchdog`: the seconds it may go without WATCHDOG=1 (0: not watched)."""
        super().__init__(role, ident)
        self.post = post
        self.loop = asyncio.get_running_loop()
        self.watchdog = watchdog
        self.notify_path = runtime / f"{role}-{ident}-{next(_serial)}.notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        self.loop.add_reader(self.notify.fileno(), self._read_notify)
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), **(extra_env or {}))
        self.proc = spawn(argv, [(name, sock.fileno()) for name, sock in sockets], env,
                          supervised=True)
        self.pid = self.proc.pid
        self.pidfd = os.pidfd_open(self.pid)
        self.loop.add_reader(self.pidfd, self._reap)

    def _read_notify(self) -> None:
        while True:
            try:
                data = self.notify.recv(4096)
            except BlockingIOError:
                return
            for line in data.decode(errors="replace").splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1" and not self.ready.done():
                    self.ready.set_result(None)
                    self.post("ready", self, 0)
                elif key == "STATUS":
                    self.status = value
                elif key == "WATCHDOG" and value == "1":
                    self.last_ping = self.loop.time()
                elif key == "RIP_RECYCLE" and value == "1":
                    self.post("recycle_soon", self, 0)

    def _reap(self) -> None:
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        code = self.proc.wait()
        self._read_notify()  # its last words (a worker that cannot load says why in STATUS=)
        self.loop.remove_reader(self.notify.fileno())
        self.notify.close()
        self.notify_path.unlink(missing_ok=True)
        if not self.ready.done():
            self.ready.cancel()
        self.exited.set_result(code)
        self.post("exited", self, code)

    def missed_watchdog(self, now: float) -> bool:
        """Ready and silent for longer than its watchdog: this supervisor is the one that
        watches (as systemd's WatchdogSec= does for a unit)."""
        return bool(self.watchdog) and now - self.last_ping > self.watchdog

    def terminate(self) -> None:
        self.retired = True
        if not self.exited.done():
            self.proc.send_signal(signal.SIGTERM)

    def abort(self) -> None:
        """SIGABRT, as systemd does on a watchdog timeout: the exit restarts it."""
        if not self.exited.done():
            self.proc.send_signal(signal.SIGABRT)

    def kill(self) -> None:
        if not self.exited.done():
            self.proc.kill()

    def send(self, signum: int) -> None:
        if not self.exited.done():
            self.proc.send_signal(signum)

    def __repr__(self) -> str:
        return f"{self.role} {self.id} (pid {self.pid})"
