"""The access log: one entry per answered request, off the hot path's critical cost.

Lines are buffered and written a few times a second rather than one write per request; under
journald each entry is a native journal entry with its fields (APP, WORKER, REQUEST_ID,
STATUS, DURATION_MS, …) so that `journalctl STATUS=502` works.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, TYPE_CHECKING

from systemd import journal

from ripsvc.logs import stderr_is_journal

if TYPE_CHECKING:
    from ripsvc.balancer.exchange import Exchange

FLUSH_INTERVAL = 0.1
FLUSH_LINES = 512


class AccessLog:
    def __init__(self, app: str, loop: asyncio.AbstractEventLoop, *, enabled: bool = True,
                 json_format: bool = False, out: IO[str] | None = None) -> None:
        self.app = app
        self.loop = loop
        self.enabled = enabled
        self.json_format = json_format
        self.out = out or sys.stdout
        self.journal = out is None and stderr_is_journal()
        self._lines: list[str] = []
        self._flush: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def record(self, exchange: Exchange, status: int, sent: int) -> None:
        if not self.enabled:
            return
        ms = (self.loop.time() - exchange.started) * 1000
        path = exchange.target.decode("latin-1")
        if self.journal:
            line = (f"{status} {exchange.method} {path} {ms:.1f}ms "
                    f"w{exchange.worker_id} {sent}B {exchange.request_id}")
            journal.send(line, SYSLOG_IDENTIFIER="rip-balancer", APP=self.app,
                         WORKER=exchange.worker_id, REQUEST_ID=exchange.request_id,
                         STATUS=str(status), METHOD=exchange.method, PATH=path,
                         DURATION_MS=f"{ms:.3f}", BYTES=str(sent), PRIORITY="6")
            return
        if self.json_format:
            line = json.dumps({
                "time": self._timestamp(), "app": self.app, "status": status,
                "method": exchange.method, "path": path, "duration_ms": round(ms, 3),
                "worker": exchange.worker_id, "bytes": sent, "request_id": exchange.request_id,
            })
        else:
            line = (f"{self._timestamp()} {status:3d} {exchange.method:<7} {ms:9.1f}ms "
                    f"w{exchange.worker_id:<5} {sent:>9}B {exchange.request_id} {path}")
        self._lines.append(line)
        if len(self._lines) >= FLUSH_LINES:
            self.flush()
        elif self._flush is None:
            self._flush = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._lines:
            self.out.write("\n".join(self._lines) + "\n")
            self.out.flush()
            self._lines.clear()
