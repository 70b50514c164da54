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
        assert entry["SYSLOG_IDENTIFIER"] == "rip-balancer" and entry["PRIORITY"] == "6"
        assert int(entry["BYTES"]) > 0
        status, method, path, took, worker, sent, request_id = entry["MESSAGE"].split()
        assert (status, method, path, worker) == ("200", "GET", "/ping", "w1")
        assert abs(float(took.removesuffix("ms")) - float(entry["DURATION_MS"])) <= 0.051
        assert (sent, request_id) == (f"{entry['BYTES']}B", entry["REQUEST_ID"])


def test_ripctl_logs_shows_every_process_of_the_app(short_tmp):
    import json as jsonlib

    from tests.support.waiting import free_port

    port = free_port()
    name = "jlogs"

    def every_worker_joined() -> bool:
        """The HTTP worker and the WebSocket worker in the balancer's pool: the manager says
        "ready" once it has their joins (a port that accepts is not yet ready)."""
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return False
        status = jsonlib.loads(fetch(port, "/status").body)
        return bool(status["workers"]["ready"] == 1
                    and status.get("websockets", {}).get("workers") == 1)

    def use() -> None:
        for _ in range(3):
            assert fetch(port, "/ping").status == 200

    ripctl = [sys.executable, "-c", "from ripsvc.cli import ripctl_main; ripctl_main()"]
    (short_tmp / "after.json").write_text(jsonlib.dumps([*ripctl, "logs", name, "-n", "500"]))
    run_under_journal(
        short_tmp,
        [sys.executable, "-c", "from ripsvc.cli import serve_main; serve_main()",
         str(EXAMPLES / "hello"), "w:1", f"tcp:127.0.0.1:{port}", "--name", name],
        ready=every_worker_joined, action=use)
    out = (short_tmp / "after.out").read_text()
    assert (short_tmp / "after.rc").read_text() == "0", out
    lines = out.splitlines()
    assert any("rip-server[" in ln and "ready: jlogs with 1 workers" in ln for ln in lines), out
    assert any("rip-worker[" in ln and "worker=1" in ln and "serving" in ln for ln in lines), out
    access = [ln for ln in lines if "rip-balancer[" in ln and "GET /ping" in ln]
    assert len(access) == 3 and all("status=200" in ln for ln in access), out
