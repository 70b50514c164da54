"""The Debian package: `make deb` builds it with Debian's tools, lintian finds nothing, and it
builds the same in a clean Debian 12 root that holds only its Build-Depends.

Building needs root (make deb installs its build dependencies with apt) and a Debian system;
CI has both. The end-to-end test of the package on a clean Debian 12 is
tests/test_package_e2e.py. The first two tests need neither: they keep the build's needs and
the Build-Depends in step on every run.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ripsvc import __version__
from tests.support import rootfs
from tests.support.package import deb_path

ROOT = Path(__file__).parent.parent
CONTROL = ROOT / "packaging" / "debian" / "control"
RULES = ROOT / "packaging" / "debian" / "rules"
DEB = deb_path()
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("dpkg") is None,
                                reason="building the .deb needs root on Debian")


def field(name: str, paragraph: int) -> list[str]:
    """The package names of a relation field of debian/control (versions left out)."""
    text = CONTROL.read_text().split("\n\n")[paragraph]
    found = re.search(rf"^{name}:(.*(?:\n[ \t].*)*)", text, re.MULTILINE)
    assert found, f"no {name} in {CONTROL}"
    return [item.split()[0] for item in found.group(1).replace("\n", " ").split(",")
            if item.strip()]


# -- without root: the build's needs ----------------------------------------------------------
_BLOCKER = """import runpy, sys
blocked = set(sys.argv[1].split(","))
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in Build-Depends)")
sys.meta_path.insert(0, Absent())
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def test_rendering_units_and_man_pages_needs_only_the_build_depends(tmp_path: Path) -> None:
    """debian/rules runs ripsvc.units and ripsvc.manpages: with every runtime dependency that
    is not a Build-Depends made unimportable, both still write everything. (The clean-root
    build below is the proof; this finds a new import in a second, on every run.)"""
    assert re.findall(r"python3 -m (ripsvc\.\w+)", RULES.read_text()) == \
        ["ripsvc.units", "ripsvc.manpages"], "a new module runs at build time: check it here"
    runtime_only = [p.removeprefix("python3-").replace("-", "_") for p in field("Depends", 1)
                    if p.startswith("python3-") and p not in field("Build-Depends", 0)]
    assert "uvloop" in runtime_only and "aiohttp" in runtime_only, runtime_only
    for argv in (["ripsvc.units", str(tmp_path / "system"), str(tmp_path / "generators"),
                  "--python", "/usr/bin/python3"],
                 ["ripsvc.manpages", str(tmp_path / "man")]):
        done = subprocess.run([sys.executable, "-c", _BLOCKER, ",".join(runtime_only), *argv],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "system").glob("*@.*"))) == 4
    assert sorted(p.name for p in (tmp_path / "man").iterdir()) == \
        ["rip-server.1", "rip-worker.8", "rip.toml.5", "ripctl.8"]


def test_make_deb_installs_the_build_depends() -> None:
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^DEB_BUILD_PACKAGES := ((?:.*\\\n)*.*)", makefile, re.MULTILINE)
    assert listed
    packages = set(listed.group(1).replace("\\\n", " ").split())
    wanted = {"debhelper" if p == "debhelper-compat" else p for p in field("Build-Depends", 0)}
    assert packages == wanted | {"lintian"}


# -- built by `make deb` ----------------------------------------------------------------------
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


@needs_root
def test_lintian_is_clean(deb: Path) -> None:
    done = subprocess.run(["lintian", "--fail-on", "error,warning", "--display-level",
                           ">=info", str(deb)], capture_output=True, text=True,
                          env={"PATH": DEBIAN_PATH, "LANG": "C.UTF-8"})
    report = "\n".join(line for line in done.stdout.splitlines() + done.stderr.splitlines()
                       if "root privileges" not in line)
    print(report)
    assert done.returncode == 0 and report.strip() == "", report


@needs_root
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


@needs_root
def test_it_depends_on_debian_packages_only(deb: Path) -> None:
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], check=True,
                             capture_output=True, text=True).stdout
    names = {item.split()[0].split(":")[0] for item in depends.replace("|", ",").split(",")}
    # libc6 and the python3 series: ${shlibs:Depends} and ${python3:Depends} of the compiled
    # hot path.
    assert names <= {"python3", "python3-aiohttp", "python3-cryptography", "python3-dbus-fast",
                     "python3-httptools", "python3-idna", "python3-jinja2",
                     "python3-prometheus-client", "python3-pyroute2", "python3-systemd",
                     "python3-uvloop", "python3-wsproto", "systemd", "libc6"}, names
    assert "python3 (<< 3.12)" in depends and "python3 (>= 3.11~)" in depends, depends
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], check=True,
                               capture_output=True, text=True).stdout.split()
    assert conffiles == ["/etc/rip/hello.toml.example"]


@needs_root
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


# -- built again from the Build-Depends alone ---------------------------------------------------
def listing(deb: Path) -> list[str]:
    """The package's paths, with each file's mode and, for a link, its target."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True,
                         text=True).stdout
    return sorted(f"{line.split()[0]} {' '.join(line.split()[5:])}"
                  for line in out.splitlines())


@needs_root
@pytest.mark.timeout(1800)
def test_it_builds_in_a_clean_root_holding_only_its_build_depends(deb: Path) -> None:
    """What sbuild does: debootstrap's buildd root (the Essential packages and
    build-essential), `apt-get build-dep` of the source tree, then dpkg-buildpackage as an
    unprivileged user with no network. The package holds what `make deb`'s holds."""
    subprocess.run([str(ROOT / "scripts" / "apt-ensure"), "debootstrap", "zstd"], check=True,
                   capture_output=True, timeout=600)
    root = Path(tempfile.mkdtemp(prefix="rip-build-", dir="/var/tmp"))
    started = time.monotonic()
    steps: list[str] = []

    def step(what: str) -> None:
        steps.append(f"{what} {time.monotonic() - started:.0f} s")

    try:
        rootfs.unpack(root, rootfs.BUILDD)
        step("unpacked")
        tree = f"/build/rip-server-{__version__}"
        subprocess.run(["make", "-s", "deb-tree", f"DEB_TREE={root}{tree}"], cwd=ROOT,
                       check=True, capture_output=True, timeout=120)
        rootfs.chroot(root, "apt-get", "-qq", "update", timeout=300)
        rootfs.chroot(root, "apt-get", "-y", "-qq", "--no-install-recommends", "build-dep",
                      tree, timeout=900)
        step("Build-Depends installed")
        rootfs.chroot(root, "useradd", "--create-home", "builder")
        rootfs.chroot(root, "chown", "-R", "builder:", "/build")
        try:
            rootfs.chroot(root, "setpriv", "--reuid=builder", "--regid=builder",
                          "--init-groups", "sh", "-c",
                          f"cd {tree} && HOME=/home/builder dpkg-buildpackage -us -uc -b",
                          network=False, timeout=900)
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"the build from the Build-Depends alone failed:\n{exc.stdout[-6000:]}"
                        f"\n{exc.stderr[-3000:]}")
        step("built")
        clean = root / "build" / DEB.name
        assert clean.is_file(), sorted(p.name for p in (root / "build").iterdir())
        assert listing(clean) == listing(deb)
        for name in ("Depends", "Architecture", "Version"):
            assert subprocess.run(["dpkg-deb", "-f", str(clean), name], capture_output=True,
                                  text=True).stdout == \
                subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True,
                               text=True).stdout, name
    finally:
        print("clean-root build:", ", ".join(steps))
        shutil.rmtree(root, ignore_errors=True)
