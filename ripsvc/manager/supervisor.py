"""What the manager needs from whoever runs its processes: systemd, or the embedded backend.

A backend starts the balancer and workers, each with its sockets and its command line (from
the plan's settings: launch.py), and hands back a Handle whose futures say when the process is
ready and when it exited; events (ready, exited, recycle_soon) are posted to the manager's
queue. The manager's logic (core.py) uses nothing else, and asks no backend what it is: what
differs by backend (how the command line reaches the process, who watches the watchdog,
whether a recycled worker waits for its successor) is decided inside the backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ripsvc import paths
from ripsvc.settings import Settings
from ripsvc.sockets import Bind

# A child's exit whose status could not be learned: systemd reported the unit gone, and by the
# time its ExecMainStatus was read it had started the unit again (a connection on its socket),
# which resets the status. Outside 0..255 and not a signal, so never taken for a real code.
EXIT_UNKNOWN = 256


@dataclass(frozen=True)
class ServePlan:
    """What the manager runs: the app's settings (the processes' command lines are built
    from them: launch.py), and what depends on where they were read."""

    settings: Settings
    restart_file: Path | None = None
    state: Path | None = None  # the state directory (default: paths.state_dir(name))

    # The settings the manager reads, by the names it reads them.
    @property
    def state_directory(self) -> Path:
        """Where the app keeps what outlives it: `state`, else paths.state_dir."""
        return self.state or paths.state_dir(self.name)

    @property
    def app(self) -> str:
        return self.settings.app

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def workers(self) -> int:
        return self.settings.workers

    @property
    def websocket_workers(self) -> int:
        return self.settings.websocket_workers

    @property
    def listen(self) -> list[Bind]:
        return self.settings.binds()

    @property
    def watchdog_sec(self) -> float:
        return self.settings.watchdog_sec

    @property
    def graceful_timeout(self) -> float:
        return self.settings.graceful_timeout

    @property
    def hosts(self) -> tuple[str, ...]:
        """The configured host names (the balancer gets them on its command line too)."""
        return self.settings.hosts

    @property
    def cert(self) -> str:
        return self.settings.cert

    @property
    def key(self) -> str:
        return self.settings.key


Post = Callable[[str, Any, Any], None]


class Handle:
    """One running process (a worker or the balancer), as the manager sees it whoever runs
    it: the state both backends keep (embedded.Child, systemd.UnitHandle), and what the
    manager may do to it."""

    def __init__(self, role: str, ident: str) -> None:
        loop = asyncio.get_running_loop()
        self.role = role
        self.id = ident
        self.pid = 0
        self.version = 0
        self.status = ""
        self.started = time.time()
        self.last_ping = loop.time()  # the loop time of its last WATCHDOG=1
        self.retired = False  # replaced or stopped on purpose: its exit is expected
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()

    def missed_watchdog(self, now: float) -> bool:
        """Has it missed its watchdog, so that the manager must kill it? (Never, where its
        supervisor does that itself.)"""
        return False

    def terminate(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def send(self, signum: int) -> None:
        """A signal to the process (the recycling hold and release)."""


class Supervisor(Protocol):
    runtime: Path  # the app's runtime directory (control sockets, worker sockets)

    async def open(self) -> None:
        """Take the listening ports (or find them), before anything starts."""

    def ports(self) -> list[str]: ...

    def start_balancer(self) -> Handle:
        """Start the balancer with the app's command line (launch.balancer_args)."""

    def close_ports(self) -> None:
        """The app is stopping: the listening ports accept no new connection from now on
        (the balancer finishes what it accepted)."""

    def worker_socket(self, ident: str) -> Path:
        """A listening socket for a worker position; returns its path."""

    def release_socket(self, path: Path) -> None: ...

    def start_worker(self, ident: str, socket_path: Path, websocket: bool = False) -> Handle:
        """Start worker `ident` on its socket with the app's command line
        (launch.worker_args); `websocket`: a WebSocket worker."""

    async def close(self) -> None:
        """Stop what still runs, release every socket and the runtime directory."""
