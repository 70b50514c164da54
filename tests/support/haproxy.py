"""HAProxy from Debian, a real PROXY-protocol peer in front of rip (installed by make test)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.waiting import port_open, wait_for


@contextlib.contextmanager
def running_haproxy(config: str, directory: Path, fronts: Sequence[int]) -> Iterator[None]:
    """HAProxy with this configuration, until it listens on every one of `fronts`."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert os.path.exists(haproxy), "haproxy is installed by make test (apt)"
    path = directory / "haproxy.cfg"
    path.write_text(config)
    proc = subprocess.Popen([haproxy, "-db", "-f", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for front in fronts:
            wait_for(lambda p=front: port_open(p), 10, f"haproxy on {front}")
        yield
    finally:
        proc.terminate()
        proc.wait(10)
