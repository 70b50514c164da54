"""Under systemd (JOURNAL_STREAM set) rip logs native journal entries with fields."""

from __future__ import annotations

import socket
import sys

from tests.support.client import fetch, get
from tests.support.journal import run_under_journal
from tests.support.procs import EXAMPLES


def test_worker_logs_structured_entries_to_journald(short_tmp):
    sock = short_tmp / "w.sock"
    entries = run_under_journal(
        short_tmp,
        [sys.executable, "-m", "ripsvc.worker", str(EXAMPLES / "hello"), "--bind", str(sock),
         "--name", "hello", "--id", "7"],
        ready=sock.exists,
        action=lambda: get(str(sock), "/ping"),
    )
    ours = [e for e in entries if e.get("APP") == "hello"]
    messages = [e["MESSAGE"] for e in ours]
    assert any(m.startswith("serving ") for m in messages), entries
    assert any(m.startswith("stopped after 1 requests") for m in messages), messages
    for entry in ours:
        assert entry["WORKER"] == "7"
        assert entry["SYSLOG_IDENTIFIER"] == "rip-worker"
        assert entry["PRIORITY"] == "6"
    # Nothing reached the journal as plain stderr text: every line was a native entry.
    assert not [e for e in entries if e.get("_TRANSPORT") == "stdout"], entries


def test_balancer_access_log_entries_carry_fields(start_worker, short_tmp):
    worker = start_worker(str(EXAMPLES / "hello"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    replies = []

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    entries = run_under_journal(
        short_tmp,
        [sys.executable, "-m", "ripsvc.balancer", "--app", "hello", "--listen",
         f"tcp:127.0.0.1:{port}", f"--worker=1={worker.socket_path}"],
        ready=listening,
        action=lambda: replies.extend(fetch(port, "/ping") for _ in range(3)),
    )
    ids = {r.headers["x-request-id"] for r in replies}
    access = [e for e in entries if e.get("REQUEST_ID") in ids]
    assert len(access) == 3, entries
    for entry in access:
        assert entry["APP"] == "hello"
        assert entry["WORKER"] == "1"
        assert entry["STATUS"] == "200"
        assert entry["METHOD"] == "GET" and entry["PATH"] == "/ping"
        assert float(entry["DURATION_MS"]) >= 0
        assert entry["SYSLOG_IDENTIFIER"] == "rip-balancer"
