"""The Debian package: `make deb` builds it with Debian's tools, lintian finds nothing.

Needs root (make deb installs its build dependencies with apt) and a Debian system; CI has
both. The end-to-end test on a clean Debian 12 root is a separate test (issue 6)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.package import deb_path

ROOT = Path(__file__).parent.parent
DEB = deb_path()
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("dpkg") is None,
                                reason="building the .deb needs root on Debian")


@pytest.fixture(scope="module")
def deb() -> Iterator[Path]:
    subprocess.run(["make", "-s", "deb"], cwd=ROOT, check=True, capture_output=True,
                   timeout=900)
    assert DEB.is_file()
    yield DEB


def contents(deb: Path) -> dict[str, str]:
    """Path in the package → the file's text (empty for directories and binaries)."""
    out = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                         capture_output=True).stdout
    files = {}
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix(".")
            data = tar.extractfile(member) if member.isfile() else None
            text = data.read().decode(errors="replace") if data is not None else ""
            files[name] = text
    return files


def test_lintian_is_clean(deb: Path) -> None:
    done = subprocess.run(["lintian", "--fail-on", "error,warning", "--display-level",
                           ">=info", str(deb)], capture_output=True, text=True,
                          env={"PATH": DEBIAN_PATH, "LANG": "C.UTF-8"})
    report = "\n".join(line for line in done.stdout.splitlines() + done.stderr.splitlines()
                       if "root privileges" not in line)
    print(report)
    assert done.returncode == 0 and report.strip() == "", report


def test_the_package_holds_the_units_generator_user_and_docs(deb: Path) -> None:
    files = contents(deb)
    for path in ("/lib/systemd/system/rip@.service", "/lib/systemd/system/rip-balancer@.service",
                 "/lib/systemd/system/rip-worker@.service",
                 "/lib/systemd/system/rip-worker@.socket",
                 "/lib/systemd/system-generators/rip-generator",
                 "/usr/lib/sysusers.d/rip-server.conf", "/usr/lib/tmpfiles.d/rip-server.conf",
                 "/usr/bin/ripctl", "/usr/bin/rip-server", "/usr/bin/rip-worker",
                 "/usr/share/man/man8/ripctl.8.gz", "/usr/share/man/man5/rip.toml.5.gz",
                 "/usr/share/man/man1/rip-server.1.gz", "/usr/share/man/man8/rip-worker.8.gz",
                 "/usr/share/bash-completion/completions/ripctl",
                 "/etc/rip/hello.toml.example",
                 "/usr/share/rip-server/examples/hello/app.py"):
        assert path in files, path
    assert "ExecStart=/usr/bin/python3 -m ripsvc.manager %i" in \
        files["/lib/systemd/system/rip@.service"]
    generator = files["/lib/systemd/system-generators/rip-generator"]
    assert generator.startswith("#!/usr/bin/python3 -S\n")
    assert "'/usr/lib/python3/dist-packages'" in generator
    assert "u rip - " in files["/usr/lib/sysusers.d/rip-server.conf"]
    # the example is not an app until it is copied to a name ending in .toml
    assert 'app = "/usr/share/rip-server/examples/hello"' in files["/etc/rip/hello.toml.example"]


def test_it_depends_on_debian_packages_only(deb: Path) -> None:
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], check=True,
                             capture_output=True, text=True).stdout
    names = {item.split()[0].split(":")[0] for item in depends.replace("|", ",").split(",")}
    # libc6 and the python3 series: ${shlibs:Depends} and ${python3:Depends} of the compiled
    # hot path.
    assert names <= {"python3", "python3-aiohttp", "python3-cryptography", "python3-dbus-fast",
                     "python3-httptools", "python3-idna", "python3-jinja2",
                     "python3-prometheus-client", "python3-pyroute2", "python3-systemd",
                     "python3-uvloop", "systemd", "libc6"}, names
    assert "python3 (<< 3.12)" in depends and "python3 (>= 3.11~)" in depends, depends
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], check=True,
                               capture_output=True, text=True).stdout.split()
    assert conffiles == ["/etc/rip/hello.toml.example"]


def test_its_hot_path_is_compiled_and_loads_with_debian_python(deb: Path,
                                                               tmp_path: Path) -> None:
    """The package's extensions (built by Debian's mypyc) import with /usr/bin/python3 and
    Debian's libraries, and every hot-path module comes from one of them."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    site = tmp_path / "usr" / "lib" / "python3" / "dist-packages"
    assert list(site.glob("ripsvc/_hotpath__mypyc.*.so")), sorted(site.rglob("*.so"))
    probe = (f"import sys; sys.path.insert(0, {str(site)!r})\n"
             "import importlib, ripsvc.compiled as c\n"
             "for name in c.MODULES: importlib.import_module(name)\n"
             "ok, line = c.state()\n"
             "print(line)\n"
             "raise SystemExit(0 if ok else 1)\n")
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", probe], capture_output=True,
                          text=True, cwd=tmp_path, env={"PATH": DEBIAN_PATH})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "hot path compiled (mypyc)"
