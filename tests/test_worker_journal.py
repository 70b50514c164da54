"""Under systemd (JOURNAL_STREAM set) the worker logs native journal entries with fields."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.support.client import get
from tests.support.procs import EXAMPLES, REPO


def test_worker_logs_structured_entries_to_journald(short_tmp):
    sock = short_tmp / "w.sock"
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "--", sys.executable,
         str(REPO / "tests" / "support" / "journal_ns.py"), str(short_tmp), "--",
         sys.executable, "-m", "ripsvc.worker", str(EXAMPLES / "hello"), "--bind", str(sock),
         "--name", "hello", "--id", "7"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), proc.communicate(timeout=5)[0] if proc.poll() is not None else ""
        assert get(str(sock), "/ping").status == 200
        (short_tmp / "stop").write_text("")
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (short_tmp / "exit").read_text() == "0"
    entries = [json.loads(line) for line in (short_tmp / "journal.json").read_text().splitlines()]
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
