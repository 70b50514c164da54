"""The embedded backend: processes started and sockets owned the way systemd would.

The backend owns every listening socket (the ports, each worker's Unix socket), as systemd owns
socket units, so a worker restarted on its socket loses no connection waiting in its backlog.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from ripsvc import paths
from ripsvc.manager.children import Child
from ripsvc.manager.supervisor import Post, ServePlan
from ripsvc.sockets import Bind, describe


class AlreadyRunning(OSError):
    pass


def claim_runtime_dir(name: str) -> Path:
    """The app's runtime directory; refuse if a live manager of the same name holds it."""
    path = paths.app_dir(name)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = path / "manager.sock"
    if sock.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(sock))
        except OSError:
            pass  # stale: its manager is gone
        else:
            raise AlreadyRunning(f"an app named {name!r} is already running ({sock}); "
                                 "stop it first or use --name")
        finally:
            probe.close()
    for stale in path.iterdir():
        stale.unlink(missing_ok=True)
    return path


class EmbeddedSupervisor:
    own_watchdog = False  # the manager reads WATCHDOG=1 on each child's notify socket
    recycle_handoff = True

    def __init__(self, plan: ServePlan, post: Post) -> None:
        self.plan = plan
        self.post = post
        self.runtime = claim_runtime_dir(plan.name)
        self.listeners: list[socket.socket] = []
        self.worker_sockets: dict[Path, socket.socket] = {}
        self.children: list[Child] = []

    async def open(self) -> None:
        self.listeners = [bind.open() for bind in self.plan.listen]

    def ports(self) -> list[str]:
        return [describe(sock) for sock in self.listeners]

    def start_balancer(self, args: list[str]) -> Child:
        argv = [sys.executable, "-m", "ripsvc.balancer", *args]
        sockets = [("http", sock) for sock in self.listeners]
        return self._track(Child("balancer", "0", argv, sockets, self.runtime, self.post))

    def worker_socket(self, ident: str) -> Path:
        path = self.runtime / f"w{ident}.sock"
        self.worker_sockets[path] = Bind(path=str(path)).open()
        return path

    def release_socket(self, path: Path) -> None:
        sock = self.worker_sockets.pop(path, None)
        if sock is not None:
            sock.close()
        path.unlink(missing_ok=True)

    def start_worker(self, ident: str, socket_path: Path, args: list[str],
                     env: dict[str, str]) -> Child:
        argv = [sys.executable, "-m", "ripsvc.worker", *args]
        sockets = [("worker", self.worker_sockets[socket_path])]
        return self._track(Child("worker", ident, argv, sockets, self.runtime, self.post, env))

    def _track(self, child: Child) -> Child:
        self.children = [c for c in self.children if not c.exited.done()]
        self.children.append(child)
        return child

    async def close(self) -> None:
        for child in self.children:
            child.kill()
        for sock in self.listeners + list(self.worker_sockets.values()):
            sock.close()
        for path in self.runtime.iterdir():
            path.unlink(missing_ok=True)
        self.runtime.rmdir()
