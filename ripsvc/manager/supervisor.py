"""What the manager needs from whoever runs its processes: systemd, or the embedded backend.

A backend starts the balancer and workers, each with its sockets, and hands back a Handle whose
futures say when the process is ready and when it exited; events (ready, exited, recycle_soon)
are posted to the manager's queue. The manager's logic (core.py) uses nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ripsvc.settings import Settings
from ripsvc.sockets import Bind


@dataclass(frozen=True)
class ServePlan:
    """What the manager runs: the app's settings (the processes' command lines are built
    from them: launch.py), and what depends on where they were read."""

    settings: Settings
    restart_file: Path | None = None
    state: Path | None = None  # the state directory (default: paths.state_dir(name))

    # The settings the manager reads, by the names it reads them.
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

    def worker_socket(self, ident: str) -> Path:
        """A listening socket for a worker position; returns its path."""

    def release_socket(self, path: Path) -> None: ...

    def start_worker(self, ident: str, socket_path: Path, args: list[str],
                     env: dict[str, str]) -> Handle: ...

    async def close(self) -> None:
        """Stop what still runs, release every socket and the runtime directory."""
