"""Where `make deb` leaves the package: architecture-dependent, since its hot path is compiled."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ripsvc import __version__

ROOT = Path(__file__).resolve().parent.parent.parent


def deb_path() -> Path:
    """build/deb/rip-server_VERSION_ARCH.deb (ARCH "unknown" without dpkg: no Debian, no .deb)."""
    arch = "unknown"
    if shutil.which("dpkg"):
        arch = subprocess.run(["dpkg", "--print-architecture"], check=True,
                              capture_output=True, text=True).stdout.strip()
    return ROOT / "build" / "deb" / f"rip-server_{__version__}_{arch}.deb"
