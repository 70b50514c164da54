"""Clean Debian 12 root filesystems: one to install the package in (its end-to-end test), one
to build it in with nothing but its Build-Depends (tests/test_deb.py).

debootstrap from the mirror apt already uses on this machine takes about a minute, so each
result is cached as a zstd tarball outside the repository (/var/cache/rip-test/), keyed by
what went into it, and unpacked fresh (≈2 s) for each run:
- SYSTEM: minbase with systemd and dbus, booted by tests/support/sysbox.py;
- BUILDD: what sbuild builds in, the Essential packages and build-essential (debootstrap's
  buildd variant), entered with `chroot()`.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE = Path("/var/cache/rip-test")
SUITE = "bookworm"


@dataclass(frozen=True)
class Flavour:
    variant: str  # debootstrap --variant
    include: tuple[str, ...]


SYSTEM = Flavour("minbase", ("systemd", "dbus", "ca-certificates"))
BUILDD = Flavour("buildd", ())
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


def cached_tarball(flavour: Flavour = SYSTEM) -> Path:
    """The cached rootfs tarball, built with debootstrap when missing."""
    mirror, security = host_mirrors()
    key = hashlib.sha256(f"{SUITE} {flavour} {mirror} {security} v3".encode()).hexdigest()[:12]
    tarball = CACHE / f"{SUITE}-{key}.tar.zst"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{SUITE}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same one
        if not tarball.exists():
            _debootstrap(flavour, mirror, security, key, tarball)
    return tarball


def _debootstrap(flavour: Flavour, mirror: str, security: str, key: str, tarball: Path) -> None:
    work = CACHE / f"build-{key}"
    shutil.rmtree(work, ignore_errors=True)
    include = [f"--include={','.join(flavour.include)}"] if flavour.include else []
    subprocess.run(["debootstrap", f"--variant={flavour.variant}", *include, SUITE, str(work),
                    mirror], check=True, capture_output=True, timeout=900)
    for deb in (work / "var/cache/apt/archives").glob("*.deb"):  # debootstrap leaves them
        deb.unlink()
    (work / "etc/apt/sources.list").unlink(missing_ok=True)
    (work / "etc/apt/sources.list.d/debian.sources").write_text(
        SOURCES.format(mirror=mirror, security=security))
    partial = tarball.with_suffix(".partial")
    subprocess.run(f"tar -C {work} -c . | zstd -q -f -3 -T0 -o {partial}", shell=True,
                   check=True, timeout=300)
    partial.rename(tarball)
    shutil.rmtree(work, ignore_errors=True)


def unpack(target: Path, flavour: Flavour = SYSTEM) -> Path:
    """A fresh copy of the rootfs in `target` (an empty or missing directory)."""
    tarball = cached_tarball(flavour)
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(f"zstd -q -d -c {tarball} | tar -C {target} -x", shell=True, check=True,
                   timeout=300)
    shutil.copyfile("/etc/resolv.conf", target / "etc/resolv.conf")
    return target


# Inside the root: the kernel's file systems and a minimal /dev, nothing else of the host.
_ENTER = r"""set -eu
root=$1; shift
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o mode=755,nosuid tmpfs "$root/dev"
for d in null zero full random urandom tty; do
    touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
exec chroot "$root" "$@"
"""


def chroot_command(root: Path, *argv: str, network: bool = True) -> list[str]:
    """An argv that runs `argv` as root in `root`, in its own mount and pid namespaces and,
    without `network`, its own network namespace (only a loopback, as on Debian's buildds)."""
    return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
            *([] if network else ["--net"]), "sh", "-c", _ENTER, "enter", str(root), *argv]


def chroot(root: Path, *argv: str, network: bool = True,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `argv` in `root` (see chroot_command); its output is in the CalledProcessError."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(chroot_command(root, *argv, network=network), env=env, check=True,
                          capture_output=True, text=True, timeout=timeout)
