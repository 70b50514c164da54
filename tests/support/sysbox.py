"""A real systemd for tests: PID 1 of private namespaces, booted in a fraction of a second.

    with SystemdBox("t1") as box:
        box.install_units(...)
        box.run("systemctl", "start", "rip@hello")

The box shares the host's filesystem (so the project's venv and examples work unchanged) but has
its own pid, mount, cgroup, uts, ipc and network namespaces; sysbox_stage2.sh puts tmpfs on
every directory systemd or rip would write (/run, /tmp, /var/tmp, /etc/systemd/system, /etc/rip, the
journal, rip's state) and boots a target that starts only journald and D-Bus. A checkout (and its
virtualenv) under /tmp or /var/tmp stays visible: stage 2 puts it back over the tmpfs
(`kept()`). See ../shared/SYSTEMD-TESTING.md for the measured facts behind each step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STAGE2 = Path(__file__).with_name("sysbox_stage2.sh")
STAGE2_ROOTFS = Path(__file__).with_name("sysbox_stage2_rootfs.sh")
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")  # this host runs cgroups in hybrid mode
SIGRTMIN_4 = signal.SIGRTMIN + 4  # systemd: poweroff (exit, in a container)
REPO = Path(__file__).resolve().parents[2]
#: The host directories on which the box mounts an empty tmpfs (sysbox_stage2.sh).
HIDDEN = (Path("/tmp"), Path("/var/tmp"))


class BoxError(RuntimeError):
    pass


def kept(paths: list[Path] | None = None) -> list[Path]:
    """Of `paths` (default: the checkout and the interpreter's virtualenv, which the units run),
    those under a directory the box hides with a tmpfs, outermost only: stage 2 mounts them
    again at the same place, so a checkout under /tmp works as one anywhere else."""
    wanted = [REPO, Path(sys.prefix)] if paths is None else paths
    hidden = [p.resolve() for p in wanted
              if any(p.resolve().is_relative_to(d) and p.resolve() != d for d in HIDDEN)]
    outer = [p for p in hidden if not any(p != q and p.is_relative_to(q) for q in hidden)]
    for path in outer:
        if any(c.isspace() for c in str(path)):
            raise BoxError(f"{path}: a path with spaces cannot be kept visible in the box")
    return sorted(set(outer))


def available() -> str | None:
    """Why a box cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    if not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed"
    if not CGROUP_ROOT.is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "no cgroup2 hierarchy"
    return None


class SystemdBox:
    def __init__(self, name: str, console: Path | None = None,
                 rootfs: Path | None = None) -> None:
        """`rootfs`: boot that root filesystem's own systemd (multi-user.target) instead of
        the host's with the minimal target."""
        self.name = name
        self.rootfs = rootfs
        base = CGROUP_ROOT if CGROUP_ROOT.is_dir() else Path("/sys/fs/cgroup")
        self.cgroup = base / f"rip-test-{name}"
        self.console = console
        self.launcher: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the box's systemd, as the host sees it

    # -- life cycle ------------------------------------------------------------------------
    def boot(self, timeout: float = 30.0) -> SystemdBox:
        self.cgroup.mkdir(exist_ok=True)
        log = open(self.console, "wb") if self.console else subprocess.DEVNULL  # noqa: SIM115
        # the launcher enters its own cgroup first, so the box's cgroup namespace is rooted
        # there and parallel boxes never meet
        stage2 = f"{STAGE2_ROOTFS} {self.rootfs}" if self.rootfs else str(STAGE2)
        keep = " ".join(map(str, kept()))
        script = (f"echo $$ > {self.cgroup}/cgroup.procs; exec unshare --pid --fork --mount "
                  "--propagation private --cgroup --uts --ipc --net env -i container=rip-test "
                  f"PATH=/usr/sbin:/usr/bin:/sbin:/bin RIP_BOX_KEEP={shlex.quote(keep)} "
                  f"{stage2}")
        self.launcher = subprocess.Popen(["bash", "-c", script], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        if log is not subprocess.DEVNULL:
            log.close()
        deadline = time.monotonic() + timeout
        while not self.pid:
            children = Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children")
            try:
                found = children.read_text().split()
            except OSError:
                found = []
            if found:
                self.pid = int(found[0])
            elif self.launcher.poll() is not None or time.monotonic() > deadline:
                raise BoxError(f"the box {self.name} did not start (see {self.console})")
            else:
                time.sleep(0.01)
        while True:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return self
            if time.monotonic() > deadline:
                raise BoxError(f"the box {self.name} is {state!r} after {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Power off (SIGRTMIN+4 to the box's systemd), then remove its cgroup."""
        if self.launcher is None:
            return
        if self.pid and self.launcher.poll() is None:
            os.kill(self.pid, SIGRTMIN_4)
            try:
                self.launcher.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.launcher.wait(10)
        deadline = time.monotonic() + 10
        while self.cgroup.exists() and time.monotonic() < deadline:
            for path in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()
            try:
                self.cgroup.rmdir()
            except OSError:
                time.sleep(0.05)
        self.launcher = None

    def __enter__(self) -> SystemdBox:
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inside --------------------------------------------------------------------------
    def command(self, *argv: str, net_only: bool = False, host_net: bool = False) -> list[str]:
        """An argv that runs `argv` inside the box: in all its namespaces, only in its
        network (net_only), or in all but its network (host_net: apt reaching a mirror)."""
        which = ["-n"] if net_only else ["-m", "-u", "-i", "-p", "-C", "-r", "-w"] \
            if host_net else ["-a"]
        return ["nsenter", "-t", str(self.pid), *which, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60.0,
            net_only: bool = False, host_net: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*argv, net_only=net_only, host_net=host_net),
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise BoxError(f"{' '.join(argv)} exited with {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")
        return result

    def path(self, inside: str) -> Path:
        """A path inside the box as the host reaches it (through the box's mount namespace)."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def copy(self, source: Path, inside: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(mode)

    def journal(self, *args: str) -> list[dict[str, str]]:
        """Journal entries (journalctl -o json ARGS) of the box."""
        out = self.run("journalctl", "--no-pager", "-o", "json", *args, check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def install_rip(box: SystemdBox, python: str) -> None:
    """The project's unit templates and generator, rendered for `python`, installed in the box
    (the generator runs at the daemon-reload that follows)."""
    from ripsvc import units

    for name, text in units.static_units(python).items():
        if name == units.GENERATOR:
            box.write(f"/run/systemd/system-generators/{name}", text, 0o755)
        else:
            box.write(f"/etc/systemd/system/{name}", text)
    box.run("systemctl", "daemon-reload")
