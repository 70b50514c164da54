"""Running one of our processes under a private journald (see journal_ns.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.procs import REPO


def run_under_journal(workdir: Path, argv: list[str], ready: Callable[[], bool],
                      action: Callable[[], None]) -> list[dict[str, str]]:
    """Start `argv` with its stderr as a journal stream; once `ready()`, run `action()`, stop
    the process with SIGTERM and return every journal entry as a dict."""
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "--", sys.executable,
         str(REPO / "tests" / "support" / "journal_ns.py"), str(workdir), "--", *argv],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # a group of its own: a failure kills all of it (below)
    try:
        deadline = time.monotonic() + 15
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"not ready: {proc.communicate(timeout=5)[0]}")
            time.sleep(0.05)
        action()
        (workdir / "stop").write_text("")
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output
    finally:
        # The whole group: journald and the command too, not only the namespace's first
        # process (killed alone, it left rip-server running for hours, orphaned).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (workdir / "exit").read_text() == "0"
    return [json.loads(line) for line in (workdir / "journal.json").read_text().splitlines()]
