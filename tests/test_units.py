"""Installing the unit templates, the generator and the user `rip` (no systemd needed)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ripsvc import settings as st
from ripsvc import units
from tests.support.procs import EXAMPLES


def test_install_renders_the_interpreter_into_every_unit(tmp_path: Path) -> None:
    python = sys.executable
    written = units.install(tmp_path / "system", tmp_path / "generators", python,
                            tmp_path / "sysusers.d")
    names = sorted(str(p.relative_to(tmp_path)) for p in written)
    assert names == ["generators/rip-generator", "system/rip-balancer@.service",
                     "system/rip-worker@.service", "system/rip-worker@.socket",
                     "system/rip@.service", "sysusers.d/rip-server.conf"]
    for unit in ("rip@.service", "rip-balancer@.service", "rip-worker@.service"):
        text = (tmp_path / "system" / unit).read_text()
        assert f"ExecStart={python} -m ripsvc." in text
        assert "{{" not in text and "{%" not in text


def test_the_generator_starts_without_site_and_finds_its_modules(tmp_path: Path) -> None:
    units.install(tmp_path / "system", tmp_path / "generators", sys.executable)
    generator = tmp_path / "generators" / "rip-generator"
    assert os.access(generator, os.X_OK)
    lines = generator.read_text().splitlines()
    assert lines[0] == f"#!{sys.executable} -S"
    path = ast.literal_eval(next(line for line in lines if line.startswith("sys.path[:] = "))
                            .removeprefix("sys.path[:] = "))
    assert all(os.path.isabs(p) for p in path)
    # what the script does before `from ripsvc.generator import main`, in a fresh -S python
    probe = (f"import sys; sys.path[:] = {path!r}; import ripsvc.generator, jinja2; "
             "print('site' in sys.modules)")
    done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    assert done.stdout.strip() == "False"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_the_sysusers_entry_creates_the_user_of_the_units(tmp_path: Path) -> None:
    units.install(tmp_path / "system", tmp_path / "gen", sys.executable, tmp_path / "sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(["systemd-sysusers", f"--root={root}",
                    str(tmp_path / "sysusers" / "rip-server.conf")], check=True,
                   capture_output=True)
    user = next(line for line in (root / "etc" / "passwd").read_text().splitlines()
                if line.startswith("rip:"))
    assert user.endswith(":/var/lib/rip:/usr/sbin/nologin")
    assert "User=rip" in (tmp_path / "system" / "rip-balancer@.service").read_text()


@pytest.mark.parametrize("settings, nice", [
    ([], 0),  # auto, with the access log in the journal: the balancer must not starve journald
    (["--no-access-log"], -5),  # auto: above the workers
    (["--balancer-nice", "-3"], -3),
    (["--balancer-nice", "2", "--no-access-log"], 2),
])
def test_the_balancer_unit_sets_its_priority(settings: list[str], nice: int) -> None:
    resolved = st.resolve([str(EXAMPLES / "hello"), *settings], env={})
    dropin = units.app_units(resolved, Path("/etc/rip/hello.toml"), sys.executable)[
        f"rip-balancer@{resolved.name}.service.d/{units.DROPIN}"]
    assert f"\nNice={nice}\n" in dropin


@pytest.mark.parametrize("settings, lines", [
    ([], []),  # no limit of systemd's unless asked
    (["--memory-max", "1G"], ["MemoryMax=1073741824"]),
    (["--memory-high", "400M", "--memory-max", "1G", "--max-rss", "300M"],
     ["MemoryHigh=419430400", "MemoryMax=1073741824"]),
])
def test_the_worker_units_get_the_memory_limits(settings: list[str], lines: list[str]) -> None:
    """memory_high and memory_max go into each worker instance's drop-in (the service's;
    tests/test_systemd.py sees systemd read them), and nothing else says Memory."""
    resolved = st.resolve([str(EXAMPLES / "hello"), *settings], env={})
    dropins = units.worker_dropins(resolved, "1", ["app"], {}, sys.executable, Path("/srv"), 3)
    service = dropins[f"rip-worker@{resolved.name}:1.service"]
    assert [line for line in service.splitlines() if line.startswith("Memory")] == lines
    assert "Memory" not in dropins[f"rip-worker@{resolved.name}:1.socket"]


@pytest.mark.parametrize("settings, balancer, manager", [
    ([], "40s", None),  # rip@.service's own 120 s holds
    (["--shutdown-delay", "15"], "55s", None),
    (["--shutdown-delay", "60", "--graceful-timeout", "30"], "100s", "140s"),
])
def test_stop_timeouts_make_room_for_the_shutdown_delay(settings: list[str], balancer: str,
                                                        manager: str | None) -> None:
    """systemd must not kill a balancer that waits out shutdown_delay, nor the manager that
    waits for it and then for the workers."""
    resolved = st.resolve([str(EXAMPLES / "hello"), *settings], env={})
    found = units.app_units(resolved, Path("/etc/rip/hello.toml"), sys.executable)
    assert f"\nTimeoutStopSec={balancer}\n" in \
        found[f"rip-balancer@{resolved.name}.service.d/{units.DROPIN}"]
    dropin = found[f"rip@{resolved.name}.service.d/{units.DROPIN}"]
    if manager is None:
        assert "TimeoutStopSec" not in dropin
    else:
        assert dropin.endswith(f"\nTimeoutStopSec={manager}\n"), dropin
