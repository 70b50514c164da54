"""What the manager needs from whoever runs its processes: systemd, or the embedded backend.

A backend starts the balancer and workers, each with its sockets, and hands back a Handle whose
futures say when the process is ready and when it exited; events (ready, exited, recycle_soon)
are posted to the manager's queue. The manager's logic (core.py) uses nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ripsvc.sockets import Bind


@dataclass(frozen=True)
class ServePlan:
    app: str
    name: str
    workers: int
    listen: list[Bind]
    worker_args: list[str] = field(default_factory=list)
    balancer_args: list[str] = field(default_factory=list)
    restart_file: Path | None = None
    watchdog_sec: float = 30.0
    graceful_timeout: float = 30.0
    hosts: tuple[str, ...] = ()  # configured (the balancer gets them in balancer_args too)
    cert: str = ""
    key: str = ""
    state: Path | None = None  # the state directory (default: paths.state_dir(name))


Post = Callable[[str, Any, Any], None]


class Handle(Protocol):
    """One running process (a worker or the balancer)."""

    role: str
    id: str
    pid: int
    version: int
    status: str
    started: float
    last_ping: float  # the loop time of its last WATCHDOG=1
    retired: bool  # replaced or stopped on purpose: its exit is expected
    ready: asyncio.Future[None]
    exited: asyncio.Future[int]

    def terminate(self) -> None: ...

    def abort(self) -> None: ...

    def kill(self) -> None: ...

    def send(self, signum: int) -> None:
        """A signal to the process (the recycling hold and release)."""


class Supervisor(Protocol):
    runtime: Path  # the app's runtime directory (control sockets, worker sockets)
    own_watchdog: bool  # the backend kills workers that miss their watchdog (else the manager)
    recycle_handoff: bool  # workers may announce a recycle and wait for their successor

    async def open(self) -> None:
        """Take the listening ports (or find them), before anything starts."""

    def ports(self) -> list[str]: ...

    def binds(self) -> list[Bind]:
        """The listening addresses with the ports actually used (after a fallback)."""

    def start_balancer(self, args: list[str]) -> Handle: ...

    def close_ports(self) -> None:
        """The app is stopping: the listening ports accept no new connection from now on
        (the balancer finishes what it accepted)."""

    def worker_socket(self, ident: str) -> Path:
        """A listening socket for a worker position; returns its path."""

    def release_socket(self, path: Path) -> None: ...

    def start_worker(self, ident: str, socket_path: Path, args: list[str],
                     env: dict[str, str]) -> Handle: ...

    async def close(self) -> None:
        """Stop what still runs, release every socket and the runtime directory."""
