"""The access log: one entry per answered request, off the hot path's critical cost.

Lines are formatted per request and written a few times a second, in one write, rather than
one write per request; under journald each entry is a native journal entry with its fields
(APP, WORKER, REQUEST_ID, STATUS, DURATION_MS, …) so that `journalctl STATUS=502` works.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import IO, TYPE_CHECKING

from systemd import journal

from ripsvc import logs

if TYPE_CHECKING:
    from ripsvc.balancer.exchange import Exchange

log = logs.get("balancer.accesslog")

FLUSH_INTERVAL = 0.1
FLUSH_LINES = 512
#: At most one error message per this many seconds while entries cannot be written.
LOST_REPORT_INTERVAL = 10.0
#: ".000" to ".999": the milliseconds of a timestamp, looked up rather than formatted.
_MILLIS = [f".{n:03d}" for n in range(1000)]


class AccessLog:
    def __init__(self, app: str, loop: asyncio.AbstractEventLoop, *, enabled: bool = True,
                 json_format: bool = False, out: IO[str] | None = None,
                 stats: Counter[str] | None = None) -> None:
        self.app = app
        self.loop = loop
        self.enabled = enabled
        self.json_format = json_format
        self.out = out or sys.stdout
        self.journal = out is None and logs.stderr_is_journal()
        self._app_field = f"APP={app}"
        self._lines: list[str] = []
        self._flush: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        #: "access_log_lost" counts the entries that could not be written.
        self.stats: Counter[str] = Counter() if stats is None else stats
        self._lost_reported = -LOST_REPORT_INTERVAL

    def _stamp_of(self, second: int) -> str:
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp

    def record(self, exchange: Exchange, status: int, sent: int, seconds: float) -> None:
        """Format the line of a request answered in `seconds` now, write it later.

        Formatting a batch at once instead costs the same and holds the event loop for a
        millisecond or more per batch while workers wait for their next request: measured
        12 % fewer requests/s with 512-line batches."""
        if not self.enabled:
            return
        now = time.time()
        ms = seconds * 1000
        # Where the time went: waiting for a worker, and the worker's own (APM agents read
        # the same from X-Request-Start).
        dispatched = exchange.dispatched
        queue_ms = (dispatched - exchange.queued) * 1000 if exchange.queued and dispatched \
            else 0.0
        worker_ms = (exchange.answered - dispatched) * 1000 if exchange.answered else 0.0
        note = exchange.note  # how it ended, when not simply answered
        if self.journal:
            self._send_to_journal(now, status, exchange.method, ms, exchange.worker_id, sent,
                                  exchange.request_id, exchange.target, note, queue_ms,
                                  worker_ms)
            return
        if self.json_format:
            line = self._json(now, status, exchange.method, ms, exchange.worker_id, sent,
                              exchange.request_id, exchange.target, note, queue_ms, worker_ms)
        else:
            line = self._human(now, status, exchange.method, ms, exchange.worker_id, sent,
                               exchange.request_id, exchange.target, queue_ms, worker_ms)
            if note:
                line += f" ({note})"
        lines = self._lines
        lines.append(line)
        if len(lines) >= FLUSH_LINES:
            self.flush()
        elif self._flush is None:
            self._flush = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        lines = self._lines
        if lines:
            lines.append("")
            try:
                self.out.write("\n".join(lines))
                self.out.flush()
            except OSError as exc:  # a full disk, a closed pipe
                self._lost(len(lines) - 1, exc)
            lines.clear()

    def _lost(self, count: int, exc: OSError) -> None:
        """Entries that could not be written: counted and reported, and requests are answered
        as before; a log that cannot be written must not stop the server (nor does nginx's)."""
        self.stats["access_log_lost"] += count
        now = time.monotonic()
        if now - self._lost_reported >= LOST_REPORT_INTERVAL:
            self._lost_reported = now
            log.error("access log entries cannot be written (%s): %d lost so far", exc,
                      self.stats["access_log_lost"])

    def _human(self, now: float, status: int, method: str, ms: float, worker: str, sent: int,
               request_id: str, target: bytes, queue_ms: float, worker_ms: float) -> str:
        """`2026-12-01T23:00:00.232Z 200 GET     0.7ms w1     118B ID /path queue=0.0ms
        worker=0.5ms`.

        Built from plain pieces, not with %-formatting: compiled, this costs a third less than
        one `%` with the line's widths, which the format string's parsing dominates; the
        tenths of each duration are whole numbers, for the same reason."""
        second = int(now)
        tenths = int(ms * 10 + 0.5)
        queued = int(queue_ms * 10 + 0.5)
        served = int(worker_ms * 10 + 0.5)
        # A status has three digits unless a worker sent a strange one that an old parser let
        # through; now - second < 1 by at least now's precision (~2e-7), so the index of the
        # milliseconds stays below 1000.
        code = str(status) if status >= 100 else str(status).rjust(3)
        return (f"{self._stamp_of(second)}{_MILLIS[int((now - second) * 1000)]}Z {code} "
                f"{method.ljust(7)} {str(tenths // 10).rjust(7)}.{tenths % 10}ms "
                f"w{worker.ljust(5)} {str(sent).rjust(9)}B {request_id} "
                f"{target.decode('latin-1')} queue={queued // 10}.{queued % 10}ms "
                f"worker={served // 10}.{served % 10}ms")

    def _json(self, now: float, status: int, method: str, ms: float, worker: str, sent: int,
              request_id: str, target: bytes, note: str, queue_ms: float,
              worker_ms: float) -> str:
        entry: dict[str, object] = {
            "time": f"{self._stamp_of(int(now))}.{int(now % 1 * 1000):03d}Z", "app": self.app,
            "status": status, "method": method, "path": target.decode("latin-1"),
            "duration_ms": round(ms, 3), "queue_ms": round(queue_ms, 3),
            "worker_ms": round(worker_ms, 3), "worker": worker, "bytes": sent,
            "request_id": request_id,
        }
        if note:
            entry["note"] = note
        return json.dumps(entry)

    def _send_to_journal(self, now: float, status: int, method: str, ms: float, worker: str,
                         sent: int, request_id: str, target: bytes, note: str, queue_ms: float,
                         worker_ms: float) -> None:
        """One native journal entry with the line's fields.

        `journal.sendv` with the fields written out, not `journal.send`: send() looks up its
        caller's file and line in the stack for every entry (CODE_FILE=accesslog.py each
        time), which made the balancer's part of an entry 40 µs instead of 14."""
        path = target.decode("latin-1")
        try:
            if note:
                journal.sendv(f"MESSAGE={status} {method} {path} {ms:.1f}ms w{worker} {sent}B "
                              f"{request_id} ({note})", self._app_field, f"WORKER={worker}",
                              f"REQUEST_ID={request_id}", f"STATUS={status}",
                              f"METHOD={method}", f"PATH={path}", f"DURATION_MS={ms:.3f}",
                              f"QUEUE_MS={queue_ms:.3f}", f"WORKER_MS={worker_ms:.3f}",
                              f"BYTES={sent}", f"NOTE={note}",
                              "SYSLOG_IDENTIFIER=rip-balancer", "PRIORITY=6")
                return
            journal.sendv(f"MESSAGE={status} {method} {path} {ms:.1f}ms w{worker} {sent}B "
                          f"{request_id}", self._app_field, f"WORKER={worker}",
                          f"REQUEST_ID={request_id}", f"STATUS={status}", f"METHOD={method}",
                          f"PATH={path}", f"DURATION_MS={ms:.3f}", f"QUEUE_MS={queue_ms:.3f}",
                          f"WORKER_MS={worker_ms:.3f}", f"BYTES={sent}",
                          "SYSLOG_IDENTIFIER=rip-balancer", "PRIORITY=6")
        except OSError as exc:  # journald's socket is gone
            self._lost(1, exc)
