"""The whole "used-by" story on a clean Debian 12: install the .deb, serve, reload, upgrade
(under a bounded load, with no failed request), remove, install again, purge, install again
with the app's file already there, and an invalid app file that says what is wrong.

A debootstrap'd bookworm (tests/support/rootfs.py, cached outside the repository) boots its own
systemd as PID 1 of private namespaces (tests/support/sysbox.py); the package and its
dependencies come from the .deb and the Debian archive only (apt runs in the host's network
namespace to reach the mirror; the app's port is in the box's own). Needs root; CI has it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import rootfs
from tests.support.boxload import BoxLoad
from tests.support.package import deb_path
from tests.support.sysbox import SystemdBox, available
from tests.support.waiting import wait_for

ROOT = Path(__file__).parent.parent
DEB = deb_path()
TRY_DEBIAN = ROOT / "scripts" / "try-debian"
EXAMPLE = "/usr/share/rip-server/examples/hello"
PORT = 8080
APT = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-qq",
       "--no-install-recommends")

pytestmark = [pytest.mark.skipif(available() is not None or shutil.which("dpkg") is None,
                                 reason=f"needs root, systemd and dpkg ({available()})"),
              # the first test pays for the box: make deb, the rootfs, apt-get update
              pytest.mark.timeout(900)]


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


def processes(box: SystemdBox, word: str) -> list[str]:
    """Command lines of the box's processes that hold `word` (seen through its /proc)."""
    found = []
    for cmdline in box.path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if word in text:
            found.append(text)
    return found


def rip_processes(box: SystemdBox) -> list[str]:
    return processes(box, "ripsvc")


def active_rip_units(box: SystemdBox) -> str:
    return box.run("systemctl", "list-units", "rip@*", "rip-balancer@*", "rip-worker@*",
                   "--state=active", "--plain", "--no-legend").stdout.strip()


def test_0_apt_ensure_waits_for_another_apt(debian: SystemdBox) -> None:
    """scripts/apt-ensure (make deps, make deb) while another apt holds the package lists' and
    dpkg's locks (apt takes them with fcntl): it waits for each, then installs."""
    script = debian.path("/root/apt-ensure")
    shutil.copy(ROOT / "scripts" / "apt-ensure", script)
    locks = [open(debian.path(path), "a")  # noqa: SIM115 (held across the run)
             for path in ("/var/lib/apt/lists/lock", "/var/lib/dpkg/lock-frontend")]
    for lock in locks:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    started = time.monotonic()
    proc = subprocess.Popen(debian.command("/root/apt-ensure", "less", host_net=True),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()
        locks.pop(0).close()  # the lists: `apt-get update` runs, then `install` waits
        wait_for(lambda: processes(debian, " install less") != [], 60, "apt-get install")
        time.sleep(2)
        assert proc.poll() is None, proc.communicate()
    finally:
        for lock in locks:
            lock.close()
    out, err = proc.communicate(timeout=300)
    print(f"apt-ensure: {time.monotonic() - started:.1f} s\n{out}{err}")
    assert proc.returncode == 0, out + err
    assert "apt-ensure: waiting: " in err and "/var/lib/apt/lists/lock" in err
    assert debian.run("dpkg-query", "-W", "-f=${Status}", "less").stdout == \
        "install ok installed"


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
    assert len(workers) == 6  # two workers and a WebSocket worker: services and sockets


def test_2_ripctl_reload_under_load_fails_no_request(debian: SystemdBox) -> None:
    debian.write(f"{EXAMPLE}/VERSION", "2\n")
    load = BoxLoad(debian, "/version", max_seconds=180)
    time.sleep(0.5)
    debian.run("ripctl", "reload", "hello", "--wait", timeout=120)
    result = load.finish()
    assert result["failed"] == 0, result["errors"]
    assert {get(debian, "/version")[1].strip() for _ in range(6)} == {"2"}


def test_3_an_upgrade_under_load_fails_no_request(debian: SystemdBox) -> None:
    load = BoxLoad(debian, "/version", max_seconds=180)
    time.sleep(0.5)
    debian.run(*APT, "install", "--reinstall", f"/root/{DEB.name}", host_net=True, timeout=600)
    time.sleep(0.5)
    result = load.finish()
    assert result["failed"] == 0, result["errors"]
    assert int(result["ok"]) > 100  # type: ignore[call-overload]
    entries = debian.journal("-u", "rip@hello.service")
    assert any("rolling restart done" in e.get("MESSAGE", "") for e in entries[-40:])
    assert get(debian, "/ping")[0] == 200


def rip_links(box: SystemdBox) -> dict[str, str]:
    """The symlinks below /etc/systemd/system that point at one of rip's unit templates."""
    found = {}
    root = box.path("/etc/systemd/system")
    for link in root.rglob("*"):
        if link.is_symlink() and os.readlink(link).rpartition("/")[2].startswith("rip"):
            found[f"/{link.relative_to(box.path('/'))}"] = os.readlink(link)
    return found


def test_4_remove_stops_everything_and_leaves_no_dangling_enablement(debian: SystemdBox) -> None:
    debian.run("systemctl", "enable", "rip@hello")
    wanted = "/etc/systemd/system/multi-user.target.wants/rip@hello.service"
    assert rip_links(debian) == {wanted: "/lib/systemd/system/rip@.service"}
    debian.run(*APT, "remove", "rip-server", host_net=True, timeout=300)
    assert active_rip_units(debian) == ""
    wait_for(lambda: rip_processes(debian) == [], 10, "no rip process")
    assert debian.path("/var/lib/rip").exists()  # removal keeps state; purge does not
    assert rip_links(debian) == {}  # nothing points at the removed templates
    # systemd was reloaded: it knows no rip unit, and warns of no unit changed on disk
    status = debian.run("systemctl", "status", "rip@hello", "rip-balancer@hello",
                        check=False)
    assert "could not be found" in status.stderr, status.stdout + status.stderr
    assert "changed on disk" not in status.stdout + status.stderr
    assert debian.run("systemctl", "list-units", "--all", "--plain", "--no-legend",
                      "rip*").stdout.strip() == ""


def test_5_installing_again_enables_the_app_again(debian: SystemdBox) -> None:
    """As Debian does for the units it enables: removal keeps the choice, purge forgets it."""
    debian.run(*APT, "install", f"/root/{DEB.name}", host_net=True, timeout=600)
    assert debian.run("systemctl", "is-enabled", "rip@hello").stdout.strip() == "enabled"
    assert active_rip_units(debian) == ""  # installing starts nothing
    debian.run("systemctl", "start", "rip@hello", timeout=120)
    assert get(debian, "/ping")[0] == 200


def test_6_purge_leaves_no_state_and_no_enablement(debian: SystemdBox) -> None:
    debian.run(*APT, "purge", "rip-server", host_net=True, timeout=300)
    assert active_rip_units(debian) == ""
    wait_for(lambda: rip_processes(debian) == [], 10, "no rip process")
    for gone in ("/var/lib/rip", "/var/lib/rip-server", "/run/rip",
                 "/etc/rip/hello.toml.example", "/lib/systemd/system/rip@.service"):
        assert not debian.path(gone).exists(), gone
    assert rip_links(debian) == {}
    assert debian.path("/etc/rip/hello.toml").exists()  # the administrator's file stays


def test_7_installing_with_the_app_file_present_serves_at_once(debian: SystemdBox) -> None:
    """/etc/rip/hello.toml was there before the package (a purge, or configuration
    management): `systemctl start` works with no daemon-reload of our own."""
    debian.run(*APT, "install", f"/root/{DEB.name}", host_net=True, timeout=600)
    assert debian.run("systemctl", "is-enabled", "rip@hello", check=False).stdout.strip() == \
        "disabled"  # the purge forgot it
    debian.run("systemctl", "start", "rip@hello", timeout=120)
    code, body = get(debian, "/ping")
    assert code == 200 and body.startswith("pong")


def test_8_an_invalid_app_file_says_what_is_wrong_where_one_looks(debian: SystemdBox) -> None:
    debian.write("/etc/rip/bad.toml", 'app = "/srv/nowhere"\nworkers = "-3"\n')
    debian.run("systemctl", "daemon-reload")
    # the unit's description points at the check before anything was started
    assert debian.show("rip@bad.service", "Description")["Description"] == \
        "rip-server app bad: invalid /etc/rip/bad.toml (ripctl check bad)"
    start = debian.run("systemctl", "start", "rip@bad", check=False, timeout=60)
    assert start.returncode != 0
    assert "systemctl status rip@bad.service" in start.stderr, start.stderr
    problems = ["/etc/rip/bad.toml: workers: '-3' is not a worker count",
                "/etc/rip/bad.toml: app: '/srv/nowhere': /srv/nowhere does not exist"]
    status = debian.run("systemctl", "status", "rip@bad", "-n", "20", check=False).stdout
    assert "failed" in status and "ripctl check bad" in status, status
    for problem in problems:
        assert problem in status, status
    check = debian.run("ripctl", "check", "bad", check=False)
    assert check.returncode == 2
    for problem in problems:
        assert problem in check.stderr, check.stderr
    # fixed, but systemd still has the units of the invalid file: the start says so
    debian.write("/etc/rip/bad.toml", f'app = "{EXAMPLE}"\nworkers = 1\n'
                 'listen = ["http:8081"]\n')
    debian.run("systemctl", "reset-failed", "rip@bad")
    assert debian.run("systemctl", "start", "rip@bad", check=False).returncode != 0
    assert "run `systemctl daemon-reload`" in debian.run(
        "journalctl", "-u", "rip@bad", "-n", "5", "--no-pager").stdout
    debian.run("systemctl", "daemon-reload")
    debian.run("systemctl", "start", "rip@bad", timeout=120)
    out = debian.run("curl", "-s", "http://127.0.0.1:8081/ping", net_only=True).stdout
    assert out.startswith("pong")
    # stopped here, not by the box's poweroff: that stops D-Bus before the managers, which
    # then wait out their stop timeout
    debian.run("systemctl", "stop", "rip@bad", "rip@hello", timeout=120)
