"""`ripctl logs APP [-f]`: an app's entries from the journal, with their fields.

Every rip process logs native journal entries carrying APP (see logs.py), whether systemd or
rip-server started it, so one match on APP finds the manager's, the balancer's (access log
included) and every worker's lines.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

from systemd import journal

SHOWN_FIELDS = ("WORKER", "STATUS", "DURATION_MS", "REQUEST_ID")


def entries(app: str, lines: int, follow: bool,
            path: str | None = None) -> Iterator[dict[str, Any]]:
    reader = journal.Reader(path=path)
    try:
        reader.add_match(APP=app)
        reader.seek_tail()
        backlog = []
        for _ in range(lines):
            entry = reader.get_previous()
            if not entry:
                break
            backlog.append(entry)
        yield from reversed(backlog)
        reader.seek_tail()
        reader.get_previous()  # position after the last entry shown
        while follow:
            if reader.wait(1.0) == journal.APPEND:
                for entry in reader:
                    yield entry
    finally:
        reader.close()


def format_entry(entry: dict[str, Any]) -> str:
    when = entry.get("__REALTIME_TIMESTAMP")
    stamp = when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if isinstance(when, datetime) else "-"
    who = f"{entry.get('SYSLOG_IDENTIFIER', '?')}[{entry.get('_PID', '?')}]"
    extra = " ".join(f"{k.lower()}={entry[k]}" for k in SHOWN_FIELDS
                     if k in entry and k != "REQUEST_ID")
    return f"{stamp} {who} {extra + ' ' if extra else ''}{entry.get('MESSAGE', '')}"


def show(app: str, lines: int, follow: bool, as_json: bool, out: IO[str] = sys.stdout,
         path: str | None = None) -> int:
    count = 0
    for entry in entries(app, lines, follow, path):
        if as_json:
            fields = {k: v for k, v in entry.items() if not k.startswith("__")}
            out.write(json.dumps(fields, default=str) + "\n")
        else:
            out.write(format_entry(entry) + "\n")
        out.flush()
        count += 1
    return count
