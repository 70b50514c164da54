"""The markers of the suite (tests/conftest.py): every test the SLOW table names exists, so a
renamed test does not slip into the fast part unnoticed."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import SLOW
from tests.support.procs import REPO


def test_every_test_named_slow_exists() -> None:
    missing = []
    for file, names in SLOW.items():
        tree = ast.parse((REPO / "tests" / file).read_text())
        defined = {node.name for node in tree.body
                   if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        missing += [f"{file}::{name}" for name in names - {"*"} - defined]
    assert missing == []


def test_the_markers_select_what_they_say() -> None:
    """`-m systemd` and `-m deb` collect the box and package tests, and `-m "not slow"` none
    of them nor a test of the SLOW table."""
    def collect(expression: str, *files: str) -> set[str]:
        done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                               "-p", "no:cacheprovider", "-m", expression, *files],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: none collected
        return {line.split("::")[1].split("[")[0] for line in done.stdout.splitlines()
                if "::" in line}

    boxes = ("tests/test_systemd.py", "tests/test_package_e2e.py", "tests/test_deb.py")
    systemd = collect("systemd", *boxes)
    assert "test_start_blocks_until_ready_then_serves" in systemd
    assert "test_0_apt_ensure_waits_for_another_apt" in systemd
    deb = collect("deb", *boxes)
    assert "test_lintian_is_clean" in deb and "test_0_apt_ensure_waits_for_another_apt" in deb
    assert "test_start_blocks_until_ready_then_serves" not in deb
    fast = collect("not slow", *boxes, "tests/test_server.py", "tests/test_tls.py")
    assert fast & (systemd | deb) == set()
    assert "test_make_deb_installs_the_build_depends" in fast
    assert "test_mkcert_certificate_is_served" not in fast
    assert "test_configured_certificate_with_chain_is_served" in fast
