"""Real apps: a Django view and a FastAPI route served by rip and by what it replaces, in one
run, as ratios (issue 24).

    .venv/bin/python bench/apps.py [--rounds 5] [--duration 5] [--workers 2,4]
                                   [--apps django,fastapi] [--connections 32]

The apps are made at run time in the work directory: a project of `django-admin
startproject` (DEBUG = False) with one more view, `path("hi/", lambda r:
HttpResponse("hello from django"))`, served as `mysite.wsgi:application`; and a FastAPI app
with `@app.get("/hi") async def hi(): return {"hello": "from fastapi"}`. Each runs with the
same number of worker processes on every stack (--workers: each count in turn; default the
CPUs and twice as many), access logs off everywhere, recycling off for rip:

    rip              rip's balancer -> rip workers (Django as WSGI, FastAPI as ASGI)
    nginx-gunicorn   nginx -> gunicorn sync workers on one Unix socket (Django)
    nginx-uvicorn    nginx -> one uvicorn per Unix socket, keep-alive upstream (FastAPI)
    granian          granian alone, its workers on the TCP port (--interface wsgi / asgi)
    haproxy-rip      HAProxy (C, one thread, maxconn 1 per worker) -> the same rip workers:
                     what the best balancer makes of rip's workers (information)

For every run: requests/s (wrk -t2 -cN --latency), the CPU each stack used per request (µs:
utime + stime of every process of the stack over the run, divided by the requests), the idle
share of the machine while it ran, and for rip the CPU per request outside the app: the
stack's CPU per request minus what the app's callable costs when called in a loop in one
process (measured here too, "app alone"). The stacks alternate within each round (the order
rotates every round) and the figures compared are medians over the rounds. Writes
bench/results/apps.json.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import (
    RESULTS_DIR,
    ROOT,
    VENV_BIN,
    CpuMeter,
    Proc,
    Stack,
    ensure_tools,
    free_port,
    load_parser,
    machine_facts,
    over_tcp,
    over_unix,
    parse_wrk,
    run_main,
    run_wrk,
    settings_from,
    tree_ticks,
    wait_ready,
    work_directory,
)
from stacks import render, start_nginx

RESULTS = RESULTS_DIR / "apps.json"
APT_TOOLS = ("wrk", "nginx", "haproxy")
PIP_TOOLS = ("gunicorn", "granian")
PACKAGES = ("rip-server", "django", "fastapi", "gunicorn", "uvicorn", "granian", "uvloop",
            "httptools")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the apps ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class App:
    name: str
    interface: str  # "wsgi" or "asgi"
    target: str  # module:attribute, importable from `directory`
    path: str  # what wrk requests
    directory: Path


def make_django(workdir: Path) -> App:
    """`django-admin startproject mysite`, DEBUG off, any host, and the /hi/ view."""
    directory = workdir / "django"
    directory.mkdir()
    subprocess.run([str(VENV_BIN / "django-admin"), "startproject", "mysite", str(directory)],
                   check=True)
    settings = directory / "mysite" / "settings.py"
    text = settings.read_text().replace("DEBUG = True", "DEBUG = False")
    settings.write_text(text.replace("ALLOWED_HOSTS = []", 'ALLOWED_HOSTS = ["*"]'))
    urls = directory / "mysite" / "urls.py"
    text = urls.read_text().replace(
        "urlpatterns = [",
        'from django.http import HttpResponse\n\nurlpatterns = [\n'
        '    path("hi/", lambda r: HttpResponse("hello from django")),')
    urls.write_text(text)
    return App("django", "wsgi", "mysite.wsgi:application", "/hi/", directory)


def make_fastapi(workdir: Path) -> App:
    directory = workdir / "fastapi"
    directory.mkdir()
    (directory / "fastapp.py").write_text(textwrap.dedent("""\
        from fastapi import FastAPI

        app = FastAPI()


        @app.get("/hi")
        async def hi():
            return {"hello": "from fastapi"}
        """))
    return App("fastapi", "asgi", "fastapp:app", "/hi", directory)


APPS: dict[str, Callable[[Path], App]] = {"django": make_django, "fastapi": make_fastapi}

#: Calls the app's callable in a loop in this one process: what the app alone costs, in µs of
#: CPU per request (for a WSGI app a fresh environ and the body read each time; for an ASGI app
#: its scope, receive and send on a running loop).
APP_ALONE = textwrap.dedent("""\
    import asyncio, importlib, io, sys, time
    module, _, attribute = sys.argv[1].partition(":")
    app = getattr(importlib.import_module(module), attribute)
    path, interface, count = sys.argv[2], sys.argv[3], int(sys.argv[4])

    def environ():
        return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
                "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1",
                "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.version": (1, 0),
                "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
                "wsgi.errors": sys.stderr, "wsgi.multithread": False,
                "wsgi.multiprocess": True, "wsgi.run_once": False, "REMOTE_ADDR": "127.0.0.1"}

    def wsgi_once():
        status = []
        body = app(environ(), lambda s, h, e=None: status.append(s))
        b"".join(body)
        getattr(body, "close", lambda: None)()
        assert status[0].startswith("200"), status

    async def asgi_once():
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": [(b"host", b"127.0.0.1")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = []
        async def send(message):
            sent.append(message)
        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent

    async def asgi_loop(n):
        for _ in range(n):
            await asgi_once()

    def run(n):
        if interface == "wsgi":
            for _ in range(n):
                wsgi_once()
        else:
            asyncio.run(asgi_loop(n))

    run(count // 10)  # warm up
    start = time.process_time()
    run(count)
    print((time.process_time() - start) / count * 1e6)
    """)


def app_alone_us(app: App, count: int = 20_000) -> float:
    """The app's callable called `count` times in one process: µs of CPU per call."""
    env = {**os.environ, "PYTHONPATH": str(app.directory)}
    result = subprocess.run([str(VENV_BIN / "python"), "-c", APP_ALONE, app.target, app.path,
                             app.interface, str(count)], cwd=app.directory, env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"the app alone ({app.name}) failed:\n{result.stderr}")
    return float(result.stdout.strip())


# -- the stacks -------------------------------------------------------------------------------

def rip_workers(stack: Stack, app: App, workers: int) -> list[Path]:
    sockets = [stack.dir / f"w{n}.sock" for n in range(1, workers + 1)]
    started = [(stack.start(f"w{n}", [
        str(VENV_BIN / "rip-worker"), app.target, "--bind", str(path), "--log-level",
        "warning", "--recycle", "r:0,0s,0r"], env={"PYTHONPATH": str(app.directory)}), path)
        for n, path in enumerate(sockets, 1)]
    for proc, path in started:
        wait_ready(proc, over_unix(path), app.path)
    return sockets


def rip(stack: Stack, app: App, workers: int) -> Proc:
    sockets = rip_workers(stack, app, workers)
    stack.port = free_port()
    command = [str(VENV_BIN / "python"), "-m", "ripsvc.balancer", "--app", app.name,
               "--listen", f"tcp:127.0.0.1:{stack.port}", "--control",
               str(stack.dir / "ctl.sock"), "--no-access-log"]
    for n, path in enumerate(sockets, 1):
        command += ["--worker", f"{n}={path}"]
    return stack.start("balancer", command)


def haproxy_rip(stack: Stack, app: App, workers: int) -> Proc:
    sockets = rip_workers(stack, app, workers)
    stack.port = free_port()
    servers = "\n".join(f"    server w{n} unix@{path} maxconn 1"
                        for n, path in enumerate(sockets, 1))
    conf = stack.dir / "haproxy.cfg"
    conf.write_text(render("haproxy-app.cfg", port=stack.port, servers=servers))
    return stack.start("haproxy", [stack.tools["haproxy"], "-f", str(conf), "-db"])


def nginx_gunicorn(stack: Stack, app: App, workers: int) -> Proc:
    path = stack.dir / "gunicorn.sock"
    proc = stack.start("gunicorn", [
        str(VENV_BIN / "gunicorn"), "--chdir", str(app.directory), "-w", str(workers), "-k",
        "sync", "-b", f"unix:{path}", "--log-level", "warning", app.target])
    wait_ready(proc, over_unix(path), app.path)
    return start_nginx(stack, "app-gunicorn")


def nginx_uvicorn(stack: Stack, app: App, workers: int) -> Proc:
    sockets = [stack.dir / f"u{n}.sock" for n in range(1, workers + 1)]
    started = [(stack.start(f"u{n}", [
        str(VENV_BIN / "uvicorn"), "--app-dir", str(app.directory), app.target, "--uds",
        str(path), "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http",
        "httptools"]), path) for n, path in enumerate(sockets, 1)]
    for proc, path in started:
        wait_ready(proc, over_unix(path), app.path)
    servers = "\n".join(f"        server unix:{path};" for path in sockets)
    stack.port = free_port()
    values: dict[str, str | int] = {"dir": str(stack.dir), "port": stack.port}
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = stack.dir / "nginx.conf"
    conf.write_text(render("nginx.conf", user=user, site=render(
        "nginx-app-uvicorn.conf", servers=servers, **values), **values))
    return stack.start("nginx", [stack.tools["nginx"], "-p", str(stack.dir), "-c", str(conf),
                                 "-e", str(stack.dir / "nginx-error.log")])


def granian(stack: Stack, app: App, workers: int) -> Proc:
    stack.port = free_port()
    return stack.start("granian", [
        str(VENV_BIN / "granian"), "--interface", app.interface, "--workers", str(workers),
        "--host", "127.0.0.1", "--port", str(stack.port), "--working-dir", str(app.directory),
        "--no-access-log", "--log-level", "warning", app.target])


Start = Callable[[Stack, App, int], Proc]
STACKS: dict[str, dict[str, Start]] = {
    "wsgi": {"rip": rip, "nginx-gunicorn": nginx_gunicorn, "granian": granian,
             "haproxy-rip": haproxy_rip},
    "asgi": {"rip": rip, "nginx-uvicorn": nginx_uvicorn, "granian": granian,
             "haproxy-rip": haproxy_rip},
}

#: (stack, against, minimum) per interface: the targets of issue 24 (ratios of requests/s).
TARGETS = {
    "wsgi": (("rip", "nginx-gunicorn", 1.5), ("rip", "granian", 0.8)),
    "asgi": (("rip", "nginx-uvicorn", 1.0),),
}
OUTSIDE_APP_TARGET_US = 70.0  # rip's CPU per request outside the Django view


# -- measuring --------------------------------------------------------------------------------

@dataclass
class Measured:
    app: str
    workers: int
    stack: str
    round: int
    requests_per_s: float
    p99_ms: float
    errors: int
    cpu_us_per_request: dict[str, float]  # per process of the stack, and "total"
    idle_percent: float  # of the whole machine, while wrk ran


def measure(app: App, workers: int, name: str, start: Start, round_: int, settings: Any,
            tools: dict[str, str], workdir: Path) -> Measured:
    directory = workdir / f"{app.name}-{workers}-{name}-{round_}"
    directory.mkdir()
    stack = Stack(name, directory, tools, root=ROOT)
    try:
        front = start(stack, app, workers)
        wait_ready(front, over_tcp(stack.port), app.path)
        url = f"http://127.0.0.1:{stack.port}{app.path}"
        if settings.warmup > 0:
            run_wrk(settings, url, settings.warmup)
        ticks = {proc.name: tree_ticks(proc.process.pid) for proc in stack.procs}
        with CpuMeter(stack) as meter:
            text = run_wrk(settings, url, settings.duration)
        spent = {proc.name: tree_ticks(proc.process.pid) - ticks[proc.name]
                 for proc in stack.procs}
        stack.check_alive()
    finally:
        stack.stop()
        shutil.rmtree(directory, ignore_errors=True)
    run = parse_wrk(text, name, round_)
    requests = max(1, run.requests)
    per_request = {proc: 1e6 * t / CLOCK_TICKS / requests for proc, t in spent.items()}
    per_request["total"] = sum(per_request.values())
    cpus = len(os.sched_getaffinity(0))
    idle = max(0.0, 100.0 - (meter.percent["machine"] + meter.percent["steal"]) / cpus)
    return Measured(app.name, workers, name, round_, run.requests_per_s, run.p99_ms,
                    run.non_2xx_3xx + run.socket_errors,
                    {k: round(v, 1) for k, v in per_request.items()}, round(idle, 1))


def grouped(cpu: dict[str, float]) -> dict[str, float]:
    """CPU per request by role: the workers (w1, u2 …) summed, the front on its own."""
    groups: dict[str, float] = {}
    for name, value in cpu.items():
        role = "workers" if name[0] in "wu" and name[1:].isdigit() else name
        groups[role] = groups.get(role, 0.0) + value
    return groups


def summarize(runs: list[Measured]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for run in runs:
        key = f"{run.app}/{run.workers}/{run.stack}"
        summary.setdefault(key, []).append(run)
    out: dict[str, Any] = {}
    for key, mine in summary.items():
        groups = [grouped(run.cpu_us_per_request) for run in mine]
        out[key] = {
            "requests_per_s": statistics.median(r.requests_per_s for r in mine),
            "p99_ms": statistics.median(r.p99_ms for r in mine),
            "errors": sum(r.errors for r in mine),
            "idle_percent": statistics.median(r.idle_percent for r in mine),
            "cpu_us_per_request": {name: round(statistics.median(g[name] for g in groups), 1)
                                   for name in groups[0]},
        }
    return out


def main() -> int:
    parser = load_parser(__doc__.split("\n", 1)[0], rounds=5)
    parser.set_defaults(connections=32)
    cpus = len(os.sched_getaffinity(0))
    parser.add_argument("--workers", default=f"{cpus},{2 * cpus}",
                        help="worker counts, each in turn (default: %(default)s)")
    parser.add_argument("--apps", default="django,fastapi",
                        help="which apps (default: %(default)s)")
    args = parser.parse_args()
    settings = settings_from(parser, args, rounds=5)
    counts = [int(n) for n in args.workers.split(",")]
    names = args.apps.split(",")
    if not set(names) <= set(APPS):
        parser.error(f"--apps: from {', '.join(APPS)}")
    tools = ensure_tools(APT_TOOLS, PIP_TOOLS)
    runs: list[Measured] = []
    alone: dict[str, float] = {}
    with work_directory() as workdir:
        apps = [APPS[name](workdir) for name in names]
        for app in apps:
            alone[app.name] = round(app_alone_us(app), 1)
            print(f"{app.name}: the app alone costs {alone[app.name]:.1f} µs of CPU per call",
                  flush=True)
        for round_ in range(1, settings.rounds + 1):
            for app in apps:
                for workers in counts:
                    stacks = list(STACKS[app.interface].items())
                    shift = (round_ - 1) % len(stacks)
                    for name, start in stacks[shift:] + stacks[:shift]:
                        run = measure(app, workers, name, start, round_, settings, tools,
                                      workdir)
                        runs.append(run)
                        cpu = grouped(run.cpu_us_per_request)
                        print(f"  round {round_} {app.name:<8} w={workers} {name:<15} "
                              f"{run.requests_per_s:>8.0f} req/s  p99 {run.p99_ms:6.2f} ms  "
                              f"idle {run.idle_percent:4.1f} %  errors {run.errors}  µs/req "
                              + " ".join(f"{k} {v:.0f}" for k, v in cpu.items()), flush=True)
    summary = summarize(runs)
    checks = []
    print(f"\n{'median of rounds':<32} {'req/s':>8} {'p99 ms':>7} {'idle %':>6}  µs of CPU "
          "per request")
    for key, figures in summary.items():
        print(f"{key:<32} {figures['requests_per_s']:>8.0f} {figures['p99_ms']:>7.2f} "
              f"{figures['idle_percent']:>6.1f}  "
              + " ".join(f"{k} {v:.0f}" for k, v in figures["cpu_us_per_request"].items()))
    print()
    for app in apps:
        for workers in counts:
            for stack, against, minimum in TARGETS[app.interface]:
                ratio = (summary[f"{app.name}/{workers}/{stack}"]["requests_per_s"]
                         / summary[f"{app.name}/{workers}/{against}"]["requests_per_s"])
                label = f"{app.name} w={workers}: {stack} >= {minimum}x {against}"
                checks.append({"target": label, "value": round(ratio, 3), "met": ratio >= minimum})
            rip_total = summary[f"{app.name}/{workers}/rip"]["cpu_us_per_request"]["total"]
            outside = rip_total - alone[app.name]
            label = f"{app.name} w={workers}: rip's CPU outside the app (µs/request)"
            check = {"target": label, "value": round(outside, 1)}
            if app.name == "django":
                check["met"] = outside <= OUTSIDE_APP_TARGET_US
                check["maximum"] = OUTSIDE_APP_TARGET_US
            checks.append(check)
    for check in checks:
        state = "" if "met" not in check else ("met" if check["met"] else "NOT met")
        print(f"{check['target']:<60} {check['value']:>8}  {state}")
    errors = sum(run.errors for run in runs if run.stack == "rip")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": machine_facts(tools, PACKAGES),
        "settings": {"duration": settings.duration, "rounds": settings.rounds,
                     "connections": settings.connections, "threads": settings.threads,
                     "workers": counts},
        "app_alone_us": alone, "summary": summary, "targets": checks,
        "runs": [asdict(run) for run in runs],
    }, indent=2) + "\n")
    print(f"results written to {RESULTS.relative_to(ROOT)}")
    return 1 if errors else 0


if __name__ == "__main__":
    run_main(main, "apps.py")
