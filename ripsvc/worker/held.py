"""While a WSGI app holds the event loop: what the loop's timers do, done by a thread.

A WSGI app runs on the loop's own thread (worker/wsgi.py), so while a request runs no timer of
the loop fires. Three of them matter then, and a small thread does their work while
`worker.app_holds_loop` says so (the loop does it otherwise):
- WATCHDOG=1: a long request is not a stalled loop (one that never ends is the balancer's to
  report, after response_timeout);
- STATUS=: the worker says it is busy;
- the bound of a graceful stop: SIGTERM or SIGINT during a request lets it finish for
  graceful_timeout, then the process exits anyway, as it does when the loop runs. The loop
  hears of the signal only once the app returns; the signal's Python handler, which runs on the
  app's thread between two of its bytecodes, notes when it came.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from ripsvc import logs, sd

log = logs.get("worker")

#: How often the thread looks (it does nothing while the loop runs).
TICK = 0.1


class Held(Protocol):
    app_holds_loop: bool
    exit_code: Any


class HeldLoop:
    def __init__(self, worker: Held, status: Callable[[], None], watchdog: float | None,
                 graceful_timeout: float) -> None:
        self.worker = worker
        self.status = status  # sends STATUS= if it changed
        self.watchdog = watchdog  # seconds between pings, or None
        self.graceful_timeout = graceful_timeout
        self.signalled_at = 0.0  # when SIGTERM/SIGINT came while the app held the loop
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="held-loop", daemon=True)

    def start(self) -> None:
        """Start the thread, and note the stop signals (the loop still gets them: its wakeup
        fd is written whatever the Python handler)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._note_signal)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _note_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.worker.app_holds_loop and not self.signalled_at:
            self.signalled_at = time.monotonic()

    def _run(self) -> None:
        last_ping = 0.0
        while not self._stopped.wait(TICK):
            if not self.worker.app_holds_loop:
                continue
            now = time.monotonic()
            if self.watchdog is not None and now - last_ping >= self.watchdog:
                sd.notify("WATCHDOG=1")
                last_ping = now
            self.status()
            if self.signalled_at and now - self.signalled_at > self.graceful_timeout:
                self._exit_now()

    def _exit_now(self) -> None:
        """The request outlived graceful_timeout after a stop signal: exit as the loop would
        have (the app's thread cannot be made to return)."""
        log.warning("the request in flight did not finish within %.1f s; stopping anyway",
                    self.graceful_timeout)
        sd.notify("STOPPING=1")
        logging.shutdown()
        os._exit(int(self.worker.exit_code))
