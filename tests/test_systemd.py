"""rip-server under a real systemd: generator, units, the manager's D-Bus backend, journald.

One box (tests/support/sysbox.py) is booted for the module: systemd as PID 1 of private
namespaces with only journald and D-Bus, the project's unit templates and generator installed
from the working tree with this interpreter. Requires root (CI runs as root); skipped otherwise,
which RIPSVC_FORBID_SKIPS=1 (.ci/run) turns into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ripsvc import units
from tests.support.boxload import BoxLoad
from tests.support.procs import nice_in_stat
from tests.support.sysbox import SystemdBox, available, install_rip
from tests.support.waiting import wait_for

HERE = Path(__file__).parent
APP_SOURCE = HERE / "apps" / "sysapp"
APP_DIR = "/var/lib/rip/test-apps/sysapp"  # inside the box (a tmpfs there)
PORT = 8080

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


def app_file(workers: int = 2, port: int = PORT, extra: str = "") -> str:
    return (f'app = "{APP_DIR}"\nworkers = {workers}\nlisten = ["http:{port}"]\n'
            f'watchdog_sec = "3s"\ngraceful_timeout = "10s"\n{extra}')


@pytest.fixture(scope="module")
def box() -> Iterator[SystemdBox]:
    console = Path(tempfile.mkdtemp(prefix="rip-box-")) / "console.log"
    box = SystemdBox(f"t{int(time.time() * 1000) % 10**8}", console=console).boot()
    try:
        install_rip(box, sys.executable)
        box.copy(APP_SOURCE / "app.py", f"{APP_DIR}/app.py")
        box.write(f"{APP_DIR}/VERSION", "v1\n")
        box.write("/etc/rip/hello.toml", app_file())
        box.run("systemctl", "daemon-reload")
        yield box
    finally:
        box.stop()
        shutil.rmtree(console.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def hello(box: SystemdBox) -> SystemdBox:
    """rip@hello started (systemctl start returns once it is ready)."""
    started = time.monotonic()
    box.run("systemctl", "start", "rip@hello", timeout=60)
    print(f"systemctl start rip@hello: {time.monotonic() - started:.2f} s")
    return box


def get(box: SystemdBox, path: str, port: int = PORT) -> tuple[int, str]:
    out = box.run("curl", "-s", "-o", "-", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}",
                  net_only=True, check=False).stdout
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


def worker_units(box: SystemdBox, app: str = "hello", websocket: bool = False) -> list[str]:
    """The active units of the app's HTTP workers (`websocket`: of its WebSocket workers)."""
    out = box.run("systemctl", "list-units", f"rip-worker@{app}:*.service", "--state=active",
                  "--plain", "--no-legend").stdout
    units_ = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [u for u in units_ if (f"@{app}:ws" in u) == websocket]


# -- the generator -------------------------------------------------------------------------
def test_generator_writes_units_for_valid_apps_only(box: SystemdBox) -> None:
    box.write("/etc/rip/other.toml", app_file(port=8081, extra='user = "rip"\n'))
    box.write("/etc/rip/broken.toml", 'app = "/nonexistent"\nworkers = "-3"\n')
    try:
        box.run("systemctl", "daemon-reload")
        out = box.path("/run/systemd/generator")
        generated = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        for app in ("hello", "other"):
            assert f"rip-balancer@{app}.socket" in generated
            assert f"rip@{app}.service.d/50-rip.conf" in generated
            assert f"rip-balancer@{app}.service.d/50-rip.conf" in generated
            wants = out / f"rip@{app}.service.wants" / f"rip-balancer@{app}.socket"
            assert os.readlink(wants) == f"../rip-balancer@{app}.socket"
        # nothing half-configured: only a manager that fails with the file's problems
        assert [g for g in generated if "broken" in g] == ["rip@broken.service.d/50-rip.conf"]
        report = box.path("/run/rip/generator.log").read_text()
        assert "/etc/rip/broken.toml: workers: '-3' is not a worker count" in report
        assert "/etc/rip/broken.toml: app: '/nonexistent': /nonexistent does not exist" in report
        assert "hello" not in report
        socket = box.show("rip-balancer@other.socket", "Listen", "UnitFileState")
        assert socket == {"Listen": "0.0.0.0:8081 (Stream)", "UnitFileState": "generated"}
        assert "rip-balancer@other.socket" in box.show("rip@other.service", "Wants")["Wants"]
        refused = box.run("systemctl", "start", "rip@broken", check=False)
        assert refused.returncode != 0
        status = box.run("systemctl", "status", "rip@broken", "-n", "20", check=False).stdout
        assert "(ripctl check broken)" in status and "is not a worker count" in status, status
    finally:
        for name in ("other", "broken"):
            box.path(f"/etc/rip/{name}.toml").unlink()
        box.run("systemctl", "daemon-reload")


def test_generator_is_fast_for_twenty_apps(box: SystemdBox) -> None:
    for n in range(20):
        box.write(f"/etc/rip/app{n}.toml", app_file(port=9000 + n))
    try:
        generator = f"/run/systemd/system-generators/{units.GENERATOR}"
        # Timed inside the box (no nsenter), as systemd runs it, alternating with the floor
        # any Python generator with jinja2 pays here: the interpreter started the same way
        # importing only jinja2. This VM's speed drifts by a third over minutes, so the
        # check is on the best of ten of each, taken side by side.
        box.write("/run/gen-floor.py", f"import sys\nsys.path[:] = {sys.path!r}\nimport jinja2\n")
        floor = f"{sys.executable} -S /run/gen-floor.py || exit 1"
        script = ("for i in $(seq 10); do rm -rf /run/gen-test; mkdir /run/gen-test; "
                  "s=$(date +%s%N); " + generator + " /run/gen-test /run/gen-test "
                  "/run/gen-test; e=$(date +%s%N); " + floor + "; f=$(date +%s%N); "
                  "echo $(( (e - s) / 1000000 )) $(( (f - e) / 1000000 )); done")
        rows = [line.split() for line in box.run("bash", "-c", script).stdout.splitlines()]
        times, floors = [int(r[0]) for r in rows], [int(r[1]) for r in rows]
        written = list(box.path("/run/gen-test").glob("rip-balancer@app*.socket"))
        assert len(written) == 20
        print(f"rip-generator for 21 apps: best of ten {min(times)} ms; python + jinja2 "
              f"alone {min(floors)} ms (runs: {times}, floor: {floors})")
        # The goal is < 100 ms in all: 76 to 91 ms on a quiet 2-core VM, over 110 ms when the
        # VM is slow, when python + jinja2 alone take 50 to 60 ms of it. Checked against that
        # floor, measured alongside: what the project adds (settings code, rendering, the
        # files of 20 apps) stays within 1.5 times the floor (1.6 to 1.9 in all, measured).
        assert min(times) < 2.5 * min(floors)
    finally:
        for n in range(20):
            box.path(f"/etc/rip/app{n}.toml").unlink()
        box.run("rm", "-rf", "/run/gen-test")


# -- the app under systemd -------------------------------------------------------------------
def nice_of(box: SystemdBox, unit: str) -> int:
    """The scheduling priority of the unit's running main process."""
    pid = box.show(unit, "MainPID")["MainPID"]
    return nice_in_stat(box.run("cat", f"/proc/{pid}/stat").stdout)


def test_start_blocks_until_ready_then_serves(hello: SystemdBox) -> None:
    assert hello.show("rip@hello.service", "ActiveState")["ActiveState"] == "active"
    assert sorted(worker_units(hello)) == ["rip-worker@hello:1.service",
                                           "rip-worker@hello:2.service"]
    assert get(hello, "/version") == (200, "v1")
    assert worker_units(hello, websocket=True) == ["rip-worker@hello:ws1.service"]
    status = hello.show("rip@hello.service", "StatusText")["StatusText"]
    assert status.startswith("2/2 workers ready, WebSocket workers 1/1, v1"), status
    user = hello.show("rip-worker@hello:1.service", "User")["User"]
    assert user == "rip"
    # Its access log goes to journald, so its balancer keeps journald's priority (auto).
    assert nice_of(hello, "rip-balancer@hello.service") == 0


def test_systemctl_reload_under_load_fails_no_request(hello: SystemdBox) -> None:
    hello.write(f"{APP_DIR}/VERSION", "v2\n")
    load = BoxLoad(hello, "/version")
    time.sleep(1)
    started = time.monotonic()
    hello.run("systemctl", "reload", "rip@hello", timeout=90)
    print(f"systemctl reload: {time.monotonic() - started:.2f} s")
    time.sleep(0.5)
    result = load.finish()
    assert result["failed"] == 0, result["errors"]
    assert int(result["ok"]) > 50  # type: ignore[call-overload]
    assert {get(hello, "/version")[1] for _ in range(8)} == {"v2"}
    assert len(worker_units(hello)) == 2


def test_ripctl_reload_wait_under_load(hello: SystemdBox) -> None:
    hello.write(f"{APP_DIR}/VERSION", "v3\n")
    load = BoxLoad(hello, "/version")
    time.sleep(0.5)
    out = hello.run(sys.executable, "-m", "ripsvc.cli", "reload", "hello", "--wait",
                    timeout=90)
    result = load.finish()
    assert result["failed"] == 0, (result["errors"], out.stdout, out.stderr)
    assert {get(hello, "/version")[1] for _ in range(8)} == {"v3"}
    status = json.loads(hello.run(sys.executable, "-m", "ripsvc.cli", "status", "hello",
                                  "--json").stdout)
    print("ripctl status:", status)


def restarts_by_systemd(box: SystemdBox, unit: str) -> int:
    """How often systemd restarted `unit` by itself (Restart=). Its NRestarts would not do:
    systemd resets it when a start job comes from outside."""
    return sum(1 for e in box.journal("-u", unit)
               if "Scheduled restart job" in e.get("MESSAGE", ""))


def test_a_failed_rolling_restart_fails_systemctl_reload_and_keeps_serving(
        hello: SystemdBox) -> None:
    app = hello.path(f"{APP_DIR}/app.py")
    good = app.read_text()
    app.write_text(good + "\nthis is not python\n")
    try:
        load = BoxLoad(hello, "/version")
        failed = hello.run("systemctl", "reload", "rip@hello", check=False, timeout=90)
        result = load.finish()
        assert failed.returncode != 0  # ExecReload= failed: systemd says so
        assert result["failed"] == 0, result["errors"]
        assert hello.show("rip@hello.service", "ActiveState")["ActiveState"] == "active"
        assert len(worker_units(hello)) == 2 and get(hello, "/version")[0] == 200
        entries = hello.journal("-u", "rip@hello.service")
        assert any("rolling restart stopped" in e.get("MESSAGE", "") for e in entries)
    finally:
        app.write_text(good)
    # Until a worker loads the app again, the manager knows the app on disk as broken (its
    # workers' recycling is held, a dead one is not restarted on its socket): a good deploy.
    hello.run("systemctl", "reload", "rip@hello", timeout=90)
    status = hello.show("rip@hello.service", "StatusText")["StatusText"]
    assert status.startswith("2/2 workers ready") and "fails to load" not in status, status


def test_kill_9_of_a_worker_is_restarted_by_systemd_and_rejoined(hello: SystemdBox) -> None:
    unit = sorted(worker_units(hello))[0]
    pid = int(hello.show(unit, "MainPID")["MainPID"])
    restarts = restarts_by_systemd(hello, unit)
    load = BoxLoad(hello, "/version")
    time.sleep(0.5)  # the load runs before, during and after
    hello.run("kill", "-9", str(pid))
    wait_for(lambda: restarts_by_systemd(hello, unit) > restarts, 20, "systemd's restart")
    wait_for(lambda: hello.show(unit, "SubState")["SubState"] == "running", 20, "running")
    time.sleep(1.5)
    result = load.finish()
    assert result["failed"] == 0, result["errors"]
    new_pid = int(hello.show(unit, "MainPID")["MainPID"])
    assert new_pid not in (0, pid)
    pids = {get(hello, "/pid")[1] for _ in range(12)}
    assert str(new_pid) in pids  # the restarted worker serves again


def test_a_crash_looping_worker_never_leaves_its_socket_dead(hello: SystemdBox) -> None:
    """Eight crashes within seconds: more than systemd's default start limit (5 in 10 s),
    which would stop the service and its socket for good."""
    unit = sorted(worker_units(hello))[-1]
    for _ in range(8):
        pid = hello.show(unit, "MainPID")["MainPID"]
        hello.run("kill", "-9", pid)
        wait_for(lambda: hello.show(unit, "MainPID")["MainPID"] not in ("0", pid)  # noqa: B023
                 and hello.show(unit, "SubState")["SubState"] == "running", 20,
                 "the worker back")
    socket = unit.replace(".service", ".socket")
    assert hello.show(socket, "ActiveState")["ActiveState"] == "active"
    assert {get(hello, "/version")[0] for _ in range(6)} == {200}


def test_hung_worker_is_killed_by_the_watchdog(hello: SystemdBox) -> None:
    before = {u: restarts_by_systemd(hello, u) for u in worker_units(hello)}
    get(hello, "/hang?s=20")  # returns once the worker is killed (a GET may be replayed once)

    def watchdog_killed() -> list[str]:
        return [u for u in before if any("Watchdog timeout" in e.get("MESSAGE", "")
                                         for e in hello.journal("-u", u))]

    wait_for(watchdog_killed, 10, "systemd's watchdog")
    wait_for(lambda: all(restarts_by_systemd(hello, u) > before[u] for u in watchdog_killed()),
             20, "systemd restarting the worker")
    assert get(hello, "/version")[0] == 200


def test_journal_has_structured_access_log(hello: SystemdBox) -> None:
    assert get(hello, "/version?from=journal-test")[0] == 200

    def entries() -> list[dict[str, str]]:
        return [e for e in hello.journal("-u", "rip-balancer@hello.service")
                if e.get("PATH") == "/version?from=journal-test"]

    wait_for(entries, 10, "the access-log entry in the balancer's journal")
    entry = entries()[-1]
    assert entry["APP"] == "hello" and entry["STATUS"] == "200"
    assert entry["REQUEST_ID"] and float(entry["DURATION_MS"]) >= 0
    assert entry["WORKER"].startswith(("1", "2"))


def test_journal_durations_have_sub_millisecond_precision(hello: SystemdBox) -> None:
    """DURATION_MS was whole milliseconds ("0.000", "1.000"): now microseconds, as taken."""
    for n in range(10):
        assert get(hello, f"/slow?ms={n % 3}&from=precision-test")[0] == 200

    def durations() -> list[str]:
        return [e["DURATION_MS"] for e in hello.journal("-u", "rip-balancer@hello.service")
                if "from=precision-test" in e.get("PATH", "")]

    wait_for(lambda: len(durations()) == 10, 10, "ten access-log entries")
    found = durations()
    print("DURATION_MS:", found)
    assert all(re.fullmatch(r"\d+\.\d{3}", d) for d in found), found
    assert sum(1 for d in found if not d.endswith(".000")) >= 8, found  # not whole ms


def test_journal_keeps_every_access_log_entry_under_load(hello: SystemdBox) -> None:
    # journald in the box drops what a unit logs beyond 500 entries per 30 s (times 3 or 4 with
    # its free space), as Debian's default does beyond 10,000: the balancer's unit is exempt.
    def logged() -> int:
        return hello.run("journalctl", "-u", "rip-balancer@hello.service", "PATH=/journal-load",
                         "-o", "cat").stdout.count("\n")

    load = BoxLoad(hello, "/journal-load")
    try:
        wait_for(lambda: logged() >= 5000, 60, "5,000 access-log entries in the journal")
    finally:
        result = load.finish()
    assert result["failed"] == 0
    wait_for(lambda: logged() >= result["ok"], 10, "an entry for every request answered")
    assert logged() == result["ok"]


def test_security_exposure_of_balancer_and_worker(hello: SystemdBox) -> None:
    scores = {}
    for unit in ("rip-balancer@hello.service", sorted(worker_units(hello))[0],
                 "rip@hello.service"):
        out = hello.run("systemd-analyze", "security", "--no-pager", unit, check=False).stdout
        line = next(line for line in out.splitlines() if "Overall exposure level" in line)
        scores[unit] = float(line.rsplit(":", 1)[1].split()[0])
    print("systemd-analyze security:", scores)
    assert scores["rip-balancer@hello.service"] <= 2.5
    assert max(v for k, v in scores.items() if k.startswith("rip-worker")) <= 2.5


def test_the_readme_s_systemd_analyze_line_rates_every_unit_of_the_app(hello: SystemdBox) -> None:
    """systemd 252 expands no pattern in `systemd-analyze security 'rip*'`: the README's line
    names the units itself."""
    readme = (HERE.parent / "README.md").read_text()
    line = next(line for line in readme.splitlines()
                if line.startswith("systemd-analyze security "))
    out = hello.run("bash", "-c", line.replace("shop", "hello"), check=False)
    rated = re.findall(r"Overall exposure level for (\S+):", out.stdout)
    assert sorted(rated) == sorted(["rip@hello.service", "rip-balancer@hello.service",
                                    *worker_units(hello),
                                    *worker_units(hello, websocket=True)]), out.stdout + out.stderr


def ripctl(box: SystemdBox, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return box.run(sys.executable, "-m", "ripsvc.cli", *args, check=check, timeout=90)


def test_ripctl_install_scale_logs_and_app_overrides(box: SystemdBox) -> None:
    """A second app beside hello, installed by ripctl with a user for its workers, a writable
    path and an environment file of its own."""
    box.write("/var/lib/rip/test-shop/secrets.env", "SHOP_SECRET=s3cret\n")
    box.run("mkdir", "-p", "/var/lib/rip/test-shop/data")
    box.run("chmod", "1777", "/var/lib/rip/test-shop/data")
    shop_port = "8082"
    done = ripctl(box, "install", "shop", "--app", APP_DIR, "--now", "--enable", "w:1",
                  f"http:{shop_port}", "http:80", "--user", "nobody",
                  "--read-write-paths", "/var/lib/rip/test-shop/data",
                  "--environment-file", "/var/lib/rip/test-shop/secrets.env")
    assert "rip@shop: started, enabled at boot" in done.stdout
    try:
        assert box.run("systemctl", "is-enabled", "rip@shop").stdout.strip() == "enabled"
        port = int(shop_port)
        assert get(box, "/env?name=SHOP_SECRET", port) == (200, "s3cret")
        nobody = box.run("id", "-u", "nobody").stdout.strip()
        assert get(box, "/user", port) == (200, nobody)
        assert get(box, "/user", 80) == (200, nobody)  # a privileged port, no root needed
        assert get(box, "/write?path=/var/lib/rip/test-shop/data/f", port) == (200, "written")
        code, body = get(box, f"/write?path={APP_DIR}/f", port)
        assert code == 200 and "Read-only file system" in body  # ProtectSystem=strict
        assert get(box, "/env?name=SHOP_SECRET")[1] == "-"  # hello's workers: not theirs

        assert "shop: 3 workers" in ripctl(box, "scale", "shop", "3").stdout
        wait_for(lambda: len(worker_units(box, "shop")) == 3, 30, "3 shop workers")
        ripctl(box, "scale", "shop", "1")
        wait_for(lambda: len(worker_units(box, "shop")) == 1, 30, "1 shop worker")
        wait_for(lambda: len(list(box.path("/run/systemd/system").glob(
            "rip-worker@shop:[0-9]*.service.d"))) == 1, 10, "the scaled-down drop-ins removed")
        status = json.loads(ripctl(box, "status", "shop", "--json").stdout)
        assert [w["kind"] for w in status["workers"]] == ["http", "websocket"]
        assert status["balancer"] == "healthy"

        logs = ripctl(box, "logs", "shop", "-n", "200", "--json").stdout
        entries = [json.loads(line) for line in logs.splitlines()]
        assert {e.get("APP") for e in entries} == {"shop"}
        assert any(e.get("PATH") == "/user" and e.get("STATUS") == "200" for e in entries)
    finally:
        box.run("systemctl", "disable", "--now", "rip@shop", timeout=60)
        box.path("/etc/rip/shop.toml").unlink()
        box.run("systemctl", "daemon-reload")
    assert worker_units(box, "shop") == []


def test_https_host_registry_metrics_and_kernel_queues_under_systemd(box: SystemdBox) -> None:
    """An HTTPS app: its ports (443-style and the redirect on 80) come from the socket unit,
    the root manager prepares the certificate (mkcert, with the app's own CA) that the
    unprivileged, sandboxed balancer serves; hosts added with ripctl outlive a restart."""
    box.write("/etc/rip/secure.toml", f'app = "{APP_DIR}"\nworkers = 1\nlisten = ["https:8443"]\n'
              'hosts = ["secure.example"]\nhsts = true\nbalancer_nice = -3\n')
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "start", "rip@secure", timeout=60)
    assert nice_of(box, "rip-balancer@secure.service") == -3  # balancer_nice, in its unit
    ca = str(box.path("/var/lib/rip/secure/mkcert/rootCA.pem"))

    def https(host: str, *curl: str) -> subprocess.CompletedProcess[str]:
        return box.run("curl", "-sS", "-D", "-", "--cacert", ca, *curl, "--resolve",
                       f"{host}:8443:127.0.0.1", f"https://{host}:8443/version", net_only=True,
                       check=False)

    try:
        listen = box.run("systemctl", "show", "-P", "Listen", "rip-balancer@secure.socket")
        assert "0.0.0.0:8443" in listen.stdout and "0.0.0.0:80" in listen.stdout
        served = https("secure.example")
        assert served.returncode == 0, served.stderr
        assert served.stdout.startswith("HTTP/1.1 200")
        assert "strict-transport-security: max-age=31536000" in served.stdout
        # A name the certificate does not cover either: not verified here, refused anyway.
        assert https("other.example", "--insecure").stdout.startswith("HTTP/1.1 404")
        moved = box.run("curl", "-sS", "-D", "-", "-H", "Host: secure.example",
                        "http://127.0.0.1:80/x?y=1", net_only=True).stdout
        assert moved.startswith("HTTP/1.1 301")
        assert "location: https://secure.example:8443/x?y=1" in moved

        assert "shop.example\t(added)" in ripctl(box, "hosts", "secure", "add",
                                                  "shop.example").stdout
        assert https("shop.example").stdout.startswith("HTTP/1.1 200")
        box.run("systemctl", "restart", "rip@secure", timeout=60)
        assert https("shop.example").stdout.startswith("HTTP/1.1 200")  # kept in the state dir
        assert "certificate reloaded" in ripctl(box, "reload", "secure", "--tls").stdout

        status = json.loads(ripctl(box, "status", "secure", "--json").stdout)
        kernel = status["kernel"]  # sock_diag works inside the balancer's sandbox
        assert kernel["port:8443"]["queued"] == 0 and kernel["port:8443"]["backlog"] > 0
        assert any(name.startswith("worker:") for name in kernel), kernel
        metrics = box.run("curl", "-sS", "--unix-socket", "/run/rip/secure/manager.sock",
                          "http://rip/metrics").stdout
        assert 'rip_requests_total{code="2xx"}' in metrics
        assert 'rip_kernel_accept_queue{socket="port:8443"} 0.0' in metrics
    finally:
        box.run("systemctl", "stop", "rip@secure", timeout=60)
        box.path("/etc/rip/secure.toml").unlink()
        box.run("systemctl", "daemon-reload")


def test_recycled_workers_are_restarted_by_systemd_without_a_failed_request(
        box: SystemdBox) -> None:
    """r:40 — each worker exits with 75 after 40 requests; systemd restarts it on its socket."""
    box.write("/etc/rip/recy.toml", app_file(port=8083, extra='recycle = "r:40,0s,0r"\n'
                                             'recycle_jitter = 0\n'))
    box.run("systemctl", "daemon-reload")
    try:
        box.run("systemctl", "start", "rip@recy", timeout=60)
        units_ = worker_units(box, "recy")
        load = BoxLoad(box, "/pid", clients=2, port=8083)
        wait_for(lambda: sum(restarts_by_systemd(box, u) for u in units_) >= 4, 60,
                 "four recycling restarts")
        result = load.finish()
        assert result["failed"] == 0, result["errors"]
        assert len(result["bodies"]) >= 4  # type: ignore[arg-type]  # pids: new processes
        exits = [e for u in units_ for e in box.journal("-u", u)
                 if "status=75" in e.get("MESSAGE", "")]
        assert exits, "no worker exited with 75 (recycle)"
        assert sorted(worker_units(box, "recy")) == sorted(units_)  # same units, restarted
    finally:
        box.run("systemctl", "stop", "rip@recy", timeout=60)
        box.path("/etc/rip/recy.toml").unlink()
        box.run("systemctl", "daemon-reload")


def test_memory_limits_reach_the_worker_units_and_max_rss_recycles(box: SystemdBox) -> None:
    """memory_high and memory_max become each worker unit's MemoryHigh=/MemoryMax=; max_rss
    recycles a worker whose requests keep 1 MiB each: it exits 75 after a request, systemd
    restarts it on its socket, no request fails, and the journal and the metric say why.
    (The box does not enforce the units' limits: a cgroup namespace's, SYSTEMD-TESTING.md.)"""
    box.write("/etc/rip/mem.toml", app_file(port=8085, extra='recycle = "r:0,0s,0r"\n'
                                            'max_rss = "64M"\nmemory_high = "200M"\n'
                                            'memory_max = "300M"\n'))
    box.run("systemctl", "daemon-reload")
    try:
        box.run("systemctl", "start", "rip@mem", timeout=60)
        units_ = worker_units(box, "mem")
        for unit in [*units_, *worker_units(box, "mem", websocket=True)]:
            assert box.show(unit, "MemoryHigh", "MemoryMax") == {
                "MemoryHigh": str(200 << 20), "MemoryMax": str(300 << 20)}, unit
        load = BoxLoad(box, "/grow", clients=2, port=8085)
        wait_for(lambda: sum(restarts_by_systemd(box, u) for u in units_) >= 3, 60,
                 "three restarts after memory recycling")
        result = load.finish()
        assert result["failed"] == 0, result["errors"]
        assert len(result["bodies"]) >= 4  # type: ignore[arg-type]  # pids: new processes
        said = [e for u in units_ for e in box.journal("-u", u)
                if e.get("MESSAGE", "").startswith("recycling on memory: RSS ")]
        assert said and "is above max_rss 64.0 MiB after" in said[0]["MESSAGE"], said
        assert int(said[0]["RSS"]) > int(said[0]["MAX_RSS"]) == 64 << 20  # journal fields
        assert [e for u in units_ for e in box.journal("-u", u)
                if "status=75" in e.get("MESSAGE", "")], "no worker exited with 75 (recycle)"
        metrics = box.run("curl", "-sS", "--unix-socket", "/run/rip/mem/manager.sock",
                          "http://rip/metrics").stdout
        counted = re.search(r'^rip_worker_recycles_total\{reason="memory"\} (\S+)$', metrics,
                            re.MULTILINE)
        assert counted is not None and float(counted[1]) >= 3, metrics
        assert sorted(worker_units(box, "mem")) == sorted(units_)  # same units, restarted
    finally:
        box.run("systemctl", "stop", "rip@mem", timeout=60)
        box.path("/etc/rip/mem.toml").unlink()
        box.run("systemctl", "daemon-reload")


def test_a_balancer_unit_older_than_its_app_file_is_said(box: SystemdBox) -> None:
    """The balancer's command line is its unit's (rip-generator, at daemon-reload); the manager
    builds the same one from the app file and says so when they differ."""
    box.write("/etc/rip/stale.toml", app_file(workers=1, port=8084))
    box.run("systemctl", "daemon-reload")
    warning = "the units are older than the app's file"
    try:
        box.run("systemctl", "start", "rip@stale", timeout=60)
        assert not [e for e in box.journal("-u", "rip@stale") if warning in e["MESSAGE"]]
        box.run("systemctl", "stop", "rip@stale", timeout=60)
        box.write("/etc/rip/stale.toml", app_file(workers=1, port=8084,
                                                  extra="max_queue = 7\n"))
        box.run("systemctl", "start", "rip@stale", timeout=60)  # no daemon-reload
        said = [e["MESSAGE"] for e in box.journal("-u", "rip@stale") if warning in e["MESSAGE"]]
        assert len(said) == 1 and "'--max-queue', '7'" in said[0], said
    finally:
        box.run("systemctl", "stop", "rip@stale", timeout=60)
        box.path("/etc/rip/stale.toml").unlink()
        box.run("systemctl", "daemon-reload")


def test_a_crashed_manager_is_restarted_and_takes_its_app_back(hello: SystemdBox) -> None:
    old = set(worker_units(hello))
    pid = hello.show("rip@hello.service", "MainPID")["MainPID"]
    hello.run("kill", "-9", pid)
    wait_for(lambda: hello.show("rip@hello.service", "MainPID")["MainPID"] not in ("0", pid)
             and hello.show("rip@hello.service", "ActiveState")["ActiveState"] == "active",
             30, "the restarted manager ready")
    assert len(worker_units(hello)) == 2
    assert set(worker_units(hello)).isdisjoint(old)  # a clean slate: none left behind
    assert get(hello, "/version")[0] == 200


def test_stop_drains_and_leaves_nothing(hello: SystemdBox) -> None:
    slow = subprocess.Popen(hello.command("curl", "-s", "-o", "-", "-w", "\n%{http_code}",
                                          f"http://127.0.0.1:{PORT}/slow?ms=1500",
                                          net_only=True), stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    hello.run("systemctl", "stop", "rip@hello", timeout=60)
    out, _ = slow.communicate(timeout=30)
    assert out.endswith("\n200"), out  # the request in flight finished
    left = hello.run("systemctl", "list-units", "rip@*", "rip-balancer@*", "rip-worker@*",
                     "--state=active", "--plain",
                     "--no-legend").stdout
    assert left.strip() == ""
    procs = hello.run("ps", "-u", "rip", "-o", "pid=", check=False).stdout
    assert procs.strip() == ""
    assert not list(hello.path("/run/systemd/system").glob("rip-worker@*"))
