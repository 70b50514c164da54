"""The embedded backend: processes started and sockets owned the way systemd would.

The backend owns every listening socket (the ports, each worker's Unix socket), as systemd owns
socket units, so a worker restarted on its socket loses no connection waiting in its backlog.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

from ripsvc import launch, logs, paths
from ripsvc.manager.children import Child
from ripsvc.manager.supervisor import Post, ServePlan
from ripsvc.sockets import Bind, describe, local_port
from ripsvc.values import size_text

log = logs.get("manager")


class AlreadyRunning(OSError):
    pass


def claim_runtime_dir(name: str) -> Path:
    """The app's runtime directory; refuse if a live manager of the same name holds it."""
    path = paths.app_dir(name)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = path / paths.MANAGER_SOCKET
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
    _empty(path)
    return path


def _empty(path: Path) -> None:
    """Remove what a runtime directory holds: sockets, and the certificate copy (tls/)."""
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


class EmbeddedSupervisor:
    """Supervisor (supervisor.py) of child processes. A worker that reaches a recycling limit
    waits for its successor (--recycle-handoff); each child's watchdog pings come to its
    notify socket and are checked here (Child.missed_watchdog)."""

    def __init__(self, plan: ServePlan, post: Post) -> None:
        self.plan = plan
        self.post = post
        self.runtime = claim_runtime_dir(plan.name)
        self.listeners: list[socket.socket] = []
        self._binds: list[Bind] = []
        self.worker_sockets: dict[Path, socket.socket] = {}
        self.children: list[Child] = []

    async def open(self) -> None:
        self._say_unit_limits_ignored()
        for bind in self.plan.listen:
            sock = bind.open()
            self.listeners.append(sock)
            port = local_port(sock)
            if bind.path is None and port != bind.port:
                log.warning("port %d cannot be had: %s uses port %d instead", bind.port,
                            "the redirect to HTTPS" if bind.redirect else "HTTPS", port)
            self._binds.append(bind if bind.path is not None else bind.at_port(port))

    def _say_unit_limits_ignored(self) -> None:
        """memory_high and memory_max are the worker units' MemoryHigh=/MemoryMax=: without
        systemd no worker has a unit (a cgroup of its own) to put them on, so they are not
        applied, and said so at start rather than ignored in silence."""
        settings = self.plan.settings
        given = [f"{name} = {size_text(getattr(settings, name))}"
                 for name in ("memory_high", "memory_max") if getattr(settings, name)]
        if given:
            log.warning("%s: ignored here: these are systemd's MemoryHigh=/MemoryMax= of each "
                        "worker unit, applied only under systemd (rip@%s); in the foreground, "
                        "max_rss limits a worker's memory (it recycles after a request that "
                        "leaves it above)", ", ".join(given), self.plan.name)

    def binds(self) -> list[Bind]:
        return list(self._binds)

    def ports(self) -> list[str]:
        return [f"{bind.scheme}://{describe(sock)}"
                for bind, sock in zip(self._binds, self.listeners, strict=True)]

    def start_balancer(self) -> Child:
        args = launch.balancer_args(self.plan.settings, self.binds(), self.runtime,
                                    self.plan.state_directory)
        argv = [sys.executable, "-m", "ripsvc.balancer", *args]
        sockets = [("http", sock) for sock in self.listeners]
        return self._track(Child("balancer", "0", argv, sockets, self.runtime, self.post))

    def close_ports(self) -> None:
        """Our copies of the listening sockets: once the balancer has closed its own (it does
        on SIGTERM), new connections are refused instead of waiting in a backlog that nobody
        will accept from."""
        for sock in self.listeners:
            sock.close()

    def worker_socket(self, ident: str) -> Path:
        path = self.runtime / f"w{ident}.sock"
        self.worker_sockets[path] = Bind(path=str(path)).open()
        return path

    def release_socket(self, path: Path) -> None:
        sock = self.worker_sockets.pop(path, None)
        if sock is not None:
            sock.close()
        path.unlink(missing_ok=True)

    def start_worker(self, ident: str, socket_path: Path, websocket: bool = False) -> Child:
        plan = self.plan
        args = launch.worker_args(plan.settings, plan.app, ident, handoff=not websocket,
                                  websocket=websocket)
        argv = [sys.executable, "-m", "ripsvc.worker", *args]
        sockets = [("worker", self.worker_sockets[socket_path])]
        env = {"WATCHDOG_USEC": str(int(plan.watchdog_sec * 1e6))} if plan.watchdog_sec else {}
        return self._track(Child("worker", ident, argv, sockets, self.runtime, self.post, env,
                                 watchdog=plan.watchdog_sec))

    def _track(self, child: Child) -> Child:
        self.children = [c for c in self.children if not c.exited.done()]
        self.children.append(child)
        return child

    async def close(self) -> None:
        for child in self.children:
            child.kill()
        for sock in self.listeners + list(self.worker_sockets.values()):
            sock.close()
        _empty(self.runtime)
        self.runtime.rmdir()
