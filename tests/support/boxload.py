"""A bounded GET load on an app in a test box, from the host's python inside the box's network
namespace (tests/support/loadgen.py), for the systemd and package tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.sysbox import SystemdBox

LOADGEN = Path(__file__).with_name("loadgen.py")


class BoxLoad:
    """`clients` keep-alive clients sending GET `path` to 127.0.0.1:`port` in the box until
    finish(), at most `max_seconds`."""

    def __init__(self, box: SystemdBox, path: str, *, clients: int = 4, port: int = 8080,
                 max_seconds: float = 90) -> None:
        self.stop_file = Path(tempfile.mkdtemp(prefix="rip-load-")) / "stop"
        self.proc = subprocess.Popen(
            box.command(sys.executable, str(LOADGEN), f"http://127.0.0.1:{port}{path}",
                        str(self.stop_file), "--clients", str(clients), "--max-seconds",
                        str(max_seconds), net_only=True), stdout=subprocess.PIPE, text=True)

    def finish(self) -> dict[str, object]:
        """Stop the clients; their counts: {"ok", "failed", "errors", "bodies"}."""
        self.stop_file.write_text("")
        out, _ = self.proc.communicate(timeout=60)
        shutil.rmtree(self.stop_file.parent, ignore_errors=True)
        result: dict[str, object] = json.loads(out)
        print("load:", result)
        return result
