"""A clean Debian 12 root filesystem for the package's end-to-end test.

debootstrap (minbase, with systemd and dbus) from the mirror apt already uses on this machine
takes about a minute, so the result is cached as a zstd tarball outside the repository
(/var/cache/rip-test/), keyed by what went into it, and unpacked fresh (≈2 s) for each run.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

CACHE = Path("/var/cache/rip-test")
SUITE = "bookworm"
INCLUDE = ("systemd", "dbus", "ca-certificates")
SOURCES = """Types: deb
URIs: {mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {security}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def host_mirrors() -> tuple[str, str]:
    """The Debian and security mirrors of this machine's apt sources."""
    uris = []
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if not path.is_file() or path.suffix not in (".list", ".sources"):
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if line.startswith("URIs:"):
                uris += words[1:]
            elif words[:1] == ["deb"]:
                uris += [w for w in words[1:] if "://" in w][:1]
    main = next((u for u in uris if "security" not in u), "http://deb.debian.org/debian")
    security = next((u for u in uris if "security" in u), "http://deb.debian.org/debian-security")
    return main, security


def cached_tarball() -> Path:
    """The cached rootfs tarball, built with debootstrap when missing."""
    mirror, security = host_mirrors()
    key = hashlib.sha256(f"{SUITE} {INCLUDE} {mirror} {security} v1".encode()).hexdigest()[:12]
    tarball = CACHE / f"{SUITE}-{key}.tar.zst"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"build-{key}"
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}",
                    SUITE, str(work), mirror], check=True, capture_output=True, timeout=900)
    (work / "etc/apt/sources.list").unlink(missing_ok=True)
    (work / "etc/apt/sources.list.d/debian.sources").write_text(
        SOURCES.format(mirror=mirror, security=security))
    partial = tarball.with_suffix(".partial")
    subprocess.run(f"tar -C {work} -c . | zstd -q -3 -T0 -o {partial}", shell=True,
                   check=True, timeout=300)
    partial.rename(tarball)
    shutil.rmtree(work, ignore_errors=True)
    return tarball


def unpack(target: Path) -> Path:
    """A fresh copy of the rootfs in `target` (an empty or missing directory)."""
    tarball = cached_tarball()
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(f"zstd -q -d -c {tarball} | tar -C {target} -x", shell=True, check=True,
                   timeout=300)
    shutil.copyfile("/etc/resolv.conf", target / "etc/resolv.conf")
    return target
