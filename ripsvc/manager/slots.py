"""The manager's worker positions (core.py keeps them; replacing.py replaces their workers)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ripsvc.manager.supervisor import Handle


class WorkerSlot:
    """A worker position: its socket, and its id in the balancer's pool, outlive the processes
    that serve it (a crashed or recycled worker is restarted on the same socket and id).

    A WebSocket worker's position (`websocket`) is numbered apart, its id "wsN": it holds
    many WebSockets at once and serves no plain request (worker/websocket.py)."""

    def __init__(self, number: int, ident: str, path: Path, websocket: bool = False) -> None:
        self.number = number
        self.id = ident
        self.path = path
        self.websocket = websocket
        self.child: Handle | None = None  # None: vacant (its successor could not load)
        self.crashes = 0
        self.failed_attempts = 0  # successors that could not load, while vacant
        self.retry: asyncio.TimerHandle | None = None  # the next attempt, while vacant
        self.retry_at = 0.0  # its loop time

    @property
    def role(self) -> str:
        """"worker" or "WebSocket worker", for the log."""
        return "WebSocket worker" if self.websocket else "worker"
