"""The whole "used-by" story on a clean Debian 12: install the .deb, serve, reload, upgrade,
remove, purge — under a bounded load, with no failed request.

A debootstrap'd bookworm (tests/support/rootfs.py, cached outside the repository) boots its own
systemd as PID 1 of private namespaces (tests/support/sysbox.py); the package and its
dependencies come from the .deb and the Debian archive only (apt runs in the host's network
namespace to reach the mirror; the app's port is in the box's own). Needs root; CI has it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import rootfs
from tests.support.package import deb_path
from tests.support.sysbox import SystemdBox, available
from tests.support.waiting import wait_for

ROOT = Path(__file__).parent.parent
DEB = deb_path()
LOADGEN = Path(__file__).parent / "support" / "loadgen.py"
TRY_DEBIAN = ROOT / "scripts" / "try-debian"
EXAMPLE = "/usr/share/rip-server/examples/hello"
PORT = 8080
APT = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-qq",
       "--no-install-recommends")

pytestmark = pytest.mark.skipif(available() is not None or shutil.which("dpkg") is None,
                                reason=f"needs root, systemd and dpkg ({available()})")


@pytest.fixture(scope="module")
def debian() -> Iterator[SystemdBox]:
    subprocess.run(["make", "-s", "deb"], cwd=ROOT, check=True, capture_output=True,
                   timeout=900)
    subprocess.run([str(ROOT / "scripts" / "apt-ensure"), "debootstrap", "zstd"], check=True,
                   capture_output=True, timeout=600)
    root = Path(tempfile.mkdtemp(prefix="rip-debian-", dir="/var/tmp"))
    started = time.monotonic()
    rootfs.unpack(root)
    box = SystemdBox(f"deb{os.getpid()}", rootfs=root).boot(timeout=60)
    print(f"clean Debian 12 booted in {time.monotonic() - started:.1f} s")
    try:
        shutil.copy(DEB, root / "root" / DEB.name)
        box.run(*APT[:2], "apt-get", "update", "-qq", host_net=True, timeout=300)
        yield box
    finally:
        box.stop()
        shutil.rmtree(root, ignore_errors=True)


def get(box: SystemdBox, path: str) -> tuple[int, str]:
    out = box.run("curl", "-s", "-o", "-", "-w", "\n%{http_code}",
                  f"http://127.0.0.1:{PORT}{path}", net_only=True, check=False).stdout
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


class Load:
    """Bounded GETs from the host's python inside the box's network namespace."""

    def __init__(self, box: SystemdBox, path: str) -> None:
        self.stop_file = Path(tempfile.mkdtemp(prefix="rip-load-")) / "stop"
        self.proc = subprocess.Popen(
            box.command(sys.executable, str(LOADGEN), f"http://127.0.0.1:{PORT}{path}",
                        str(self.stop_file), "--clients", "4", "--max-seconds", "180",
                        net_only=True), stdout=subprocess.PIPE, text=True)

    def finish(self) -> dict[str, object]:
        self.stop_file.write_text("")
        out, _ = self.proc.communicate(timeout=60)
        shutil.rmtree(self.stop_file.parent, ignore_errors=True)
        result: dict[str, object] = json.loads(out)
        print("load:", result)
        return result


def rip_processes(box: SystemdBox) -> list[str]:
    """Command lines of the box's processes that run ripsvc (seen through its /proc)."""
    found = []
    for cmdline in box.path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ripsvc" in text:
            found.append(text)
    return found


def active_rip_units(box: SystemdBox) -> str:
    return box.run("systemctl", "list-units", "rip@*", "rip-balancer@*", "rip-worker@*",
                   "--state=active", "--plain", "--no-legend").stdout.strip()


def test_1_install_starts_nothing_then_the_example_serves_and_logs(debian: SystemdBox) -> None:
    """What scripts/try-debian does (the Vagrantfile runs it too), checked step by step."""
    started = time.monotonic()
    debian.run(*APT, "install", f"/root/{DEB.name}", host_net=True, timeout=600)
    print(f"apt install: {time.monotonic() - started:.1f} s")
    assert debian.run("id", "-u", "rip").stdout.strip().isdigit()
    assert active_rip_units(debian) == ""  # installing starts nothing
    assert rip_processes(debian) == []
    assert debian.path("/usr/share/man/man8/ripctl.8.gz").exists()
    # the rest of the script: the example becomes rip@hello, started
    shutil.copy(TRY_DEBIAN, debian.path("/root/try-debian"))
    done = debian.run("/root/try-debian", f"/root/{DEB.name}", host_net=True, timeout=600)
    assert "rip@hello is serving" in done.stdout
    code, body = get(debian, "/ping")
    assert code == 200 and body.startswith("pong")
    wait_for(lambda: any(e.get("PATH") == "/ping" and e.get("STATUS") == "200"
                         for e in debian.journal("-u", "rip-balancer@hello.service")),
             10, "the access-log entry in the journal")
    workers = debian.run("systemctl", "list-units", "rip-worker@hello:*", "--plain",
                         "--no-legend").stdout.splitlines()
    assert len(workers) == 4  # two workers: their services and sockets


def test_2_ripctl_reload_under_load_fails_no_request(debian: SystemdBox) -> None:
    debian.write(f"{EXAMPLE}/VERSION", "2\n")
    load = Load(debian, "/version")
    time.sleep(0.5)
    debian.run("ripctl", "reload", "hello", "--wait", timeout=120)
    result = load.finish()
    assert result["failed"] == 0, result["errors"]
    assert {get(debian, "/version")[1].strip() for _ in range(6)} == {"2"}


def test_3_an_upgrade_under_load_fails_no_request(debian: SystemdBox) -> None:
    load = Load(debian, "/version")
    time.sleep(0.5)
    debian.run(*APT, "install", "--reinstall", f"/root/{DEB.name}", host_net=True, timeout=600)
    time.sleep(0.5)
    result = load.finish()
    assert result["failed"] == 0, result["errors"]
    assert int(result["ok"]) > 100  # type: ignore[call-overload]
    entries = debian.journal("-u", "rip@hello.service")
    assert any("rolling restart done" in e.get("MESSAGE", "") for e in entries[-40:])
    assert get(debian, "/ping")[0] == 200


def test_4_remove_stops_everything_and_purge_leaves_no_state(debian: SystemdBox) -> None:
    debian.run(*APT, "remove", "rip-server", host_net=True, timeout=300)
    assert active_rip_units(debian) == ""
    wait_for(lambda: rip_processes(debian) == [], 10, "no rip process")
    assert debian.path("/var/lib/rip").exists()  # removal keeps state; purge does not
    debian.run(*APT, "purge", "rip-server", host_net=True, timeout=300)
    for gone in ("/var/lib/rip", "/run/rip", "/etc/rip/hello.toml.example",
                 "/lib/systemd/system/rip@.service"):
        assert not debian.path(gone).exists(), gone
