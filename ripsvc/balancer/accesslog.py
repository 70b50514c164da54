"""The access log: one entry per answered request, off the hot path's critical cost.

A request's fields are kept as they are and turned into lines a few times a second, in one
write, rather than formatted and written per request; under journald each entry is a native
journal entry with its fields (APP, WORKER, REQUEST_ID, STATUS, DURATION_MS, …) so that
`journalctl STATUS=502` works.
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
HUMAN = "%s.%03dZ %3d %-7s %9.1fms w%-5s %9dB %s %s"

#: What record() keeps of one request: (time, status, method, duration in ms, worker,
#: bytes sent, request id, request target). Lines are formatted when flushed, in one go.
Entry = tuple[float, int, str, float, str, int, str, bytes]


class AccessLog:
    def __init__(self, app: str, loop: asyncio.AbstractEventLoop, *, enabled: bool = True,
                 json_format: bool = False, out: IO[str] | None = None) -> None:
        self.app = app
        self.loop = loop
        self.enabled = enabled
        self.json_format = json_format
        self.out = out or sys.stdout
        self.journal = out is None and stderr_is_journal()
        self._entries: list[Entry] = []
        self._flush: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def _stamp_of(self, second: int) -> str:
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp

    def record(self, exchange: Exchange, status: int, sent: int) -> None:
        """Keep the request's fields (hot path: no formatting here)."""
        if not self.enabled:
            return
        entries = self._entries
        entries.append((time.time(), status, exchange.method,
                        (self.loop.time() - exchange.started) * 1000, exchange.worker_id, sent,
                        exchange.request_id, exchange.target))
        if len(entries) >= FLUSH_LINES:
            self.flush()
        elif self._flush is None:
            self._flush = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        entries, self._entries = self._entries, []
        if not entries:
            return
        if self.journal:
            for entry in entries:
                self._send_to_journal(*entry)
            return
        if self.json_format:
            lines = [self._json(*entry) for entry in entries]
        else:
            stamp = self._stamp_of
            lines = [HUMAN % (stamp(int(now)), (now % 1) * 1000, status, method, ms, worker,
                              sent, request_id, target.decode("latin-1"))
                     for now, status, method, ms, worker, sent, request_id, target in entries]
        lines.append("")
        self.out.write("\n".join(lines))
        self.out.flush()

    def _json(self, now: float, status: int, method: str, ms: float, worker: str, sent: int,
              request_id: str, target: bytes) -> str:
        return json.dumps({
            "time": f"{self._stamp_of(int(now))}.{int(now % 1 * 1000):03d}Z", "app": self.app,
            "status": status, "method": method, "path": target.decode("latin-1"),
            "duration_ms": round(ms, 3), "worker": worker, "bytes": sent,
            "request_id": request_id,
        })

    def _send_to_journal(self, now: float, status: int, method: str, ms: float, worker: str,
                         sent: int, request_id: str, target: bytes) -> None:
        path = target.decode("latin-1")
        journal.send(f"{status} {method} {path} {ms:.1f}ms w{worker} {sent}B {request_id}",
                     SYSLOG_IDENTIFIER="rip-balancer", APP=self.app, WORKER=worker,
                     REQUEST_ID=request_id, STATUS=str(status), METHOD=method, PATH=path,
                     DURATION_MS=f"{ms:.3f}", BYTES=str(sent), PRIORITY="6")
