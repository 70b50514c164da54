"""Helpers for what happens meanwhile: background calls, bounded waits, free ports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any


def in_background(fn: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run fn in a thread; the dict gets "value" (or "error") and "at" (monotonic end time)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # reported by the caller's assertions
            result["error"] = exc
        result["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float = 5.0,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def port_open(port: int) -> bool:
    """Does something accept connections on 127.0.0.1:PORT?"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
