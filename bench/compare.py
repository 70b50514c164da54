"""Compare rip (balancer + 2 workers) with the stacks it replaces, all serving GET /ping.

    .venv/bin/python bench/compare.py [--duration 5] [--rounds 3] [--quick] [--profile]
                                      [--no-rolling] [--no-cold-start]
    .venv/bin/python bench/compare.py --only [--rolling] [--cold-start] [--profile]

Configurations, each started afresh for every run on a free 127.0.0.1 port, with its sockets,
configuration files (rendered from bench/conf/) and logs in a temporary directory:

    rip              the balancer + 2 rip workers (examples/hello), access log to a file
    rip-nolog        the same with --no-access-log: what the access log costs
    rip-wsgi         rip serving the WSGI app gunicorn serves (examples/hello_wsgi)
    nginx-gunicorn   nginx -> 2 gunicorn sync workers (examples/hello_wsgi) on a Unix socket
    haproxy-uvicorn  HAProxy, maxconn 1 per server + queue -> 2 uvicorn processes (one request
                     in flight per process, as with rip)
    nginx-uvicorn    nginx -> 2 uvicorn processes over keep-alive upstreams (several in flight)
    rip-server       the balancer alone, answering its own /server endpoint
    nginx-static     nginx alone, `return 200 "ok\\n"`
    rip-https        rip with the balancer serving HTTPS (a self-signed EC P-256 certificate)
    nginx-https-gunicorn  nginx serving HTTPS (the same certificate) -> 2 gunicorn sync workers
    haproxy-rip      HAProxy as in haproxy-uvicorn -> the 2 rip workers: what a balancer in C
                     makes of the same workers, the bound of any balancer's speed-up
    haproxy-https-rip  the same, HAProxy serving HTTPS
    floor-rip        bench/floor.py -> the 2 rip workers: a balancer in Python that does no
                     HTTP work (no parsing, headers, log, timeouts): the floor of the design
    floor-https-rip  the same, bench/floor.py serving HTTPS
    *-close          rip-https and nginx-https-gunicorn with `Connection: close`: a TLS
                     handshake per request

Every run is `wrk -t2 -c50 --latency` for --duration seconds after --warmup seconds that are
not recorded. The machine is small and noisy, so the configurations alternate within each
round (the order rotates by one every round) and the figures compared are medians over the
rounds. Then a memory check sends 1,000,000 requests (100,000 with --quick) through one rip
stack and samples the balancer's RSS after every fifth of them, and a second one, for
information, 50,000 (5,000) over HTTPS with a new connection for each (rip-https-close), where
what a closed connection leaves behind would show; --profile adds a run under py-spy
(bench/results/balancer-profile.svg and .txt).

Then the embedded manager, `rip-server examples/hello w:2 http:PORT` (clients on 127.0.0.1):

    --rolling     for each round a fresh rip-server --name bench-rolling, once `ripctl status`
                  shows both workers ready: wrk for --duration seconds (steady), then as long
                  again while `ripctl reload bench-rolling --wait` runs 3 times, evenly spaced.
                  Medians of steady and during requests/s and of the rounds' dips, wrk's
                  errors. Target: dip <= 20 %, no error, no failed reload.
    --cold-start  5 times: launch rip-server --name bench-cold, time the first 200 on GET /ping
                  (polled every 10 ms), stop it (SIGINT) and wait for its exit. Target: median
                  and max <= 1.5 s.

Both are part of a default run (--no-rolling, --no-cold-start skip them); --only runs just
what --rolling, --cold-start and --profile ask for and merges it into compare.json, keeping
the figures of the parts not run.

Installs what is missing (wrk, nginx and haproxy with apt-get as root; gunicorn and py-spy
with pip into .venv), prints a table, the ratios against their targets and writes
bench/results/compare.json. Exits 0 whether or not the targets are met, 1 if any rip run saw
errors (non-2xx/3xx responses or socket errors) or a rolling restart failed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import ssl
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from worker import command_output, cpu_model, free_port, package_version, parse_wrk

from ripsvc.balancer.options import NICE
from ripsvc.ctlclient import UnixHTTPConnection

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "bench" / "conf"
RESULTS_DIR = ROOT / "bench" / "results"
RESULTS = RESULTS_DIR / "compare.json"
PROFILE_SVG = RESULTS_DIR / "balancer-profile.svg"
PROFILE_TXT = RESULTS_DIR / "balancer-profile.txt"
VENV_BIN = ROOT / ".venv" / "bin"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
APT_TOOLS = ("wrk", "nginx", "haproxy")  # each is both the command and its Debian package
PIP_TOOLS = ("gunicorn", "py-spy")
PACKAGES = ("rip-server", "gunicorn", "uvicorn", "aiohttp", "httptools", "uvloop", "py-spy")
RSS_LIMIT_KB = 60 * 1024
RSS_GROWTH_KB = 2 * 1024  # more than this between the 20 % and the 100 % samples is a trend
QUIET_OTHERS = 25.0  # % of a core used by "others" (see CpuMeter) above which we say so
PROFILE_RATE = 200
PROFILE_TOP = 15
RIP_SERVER_WORKERS = 2
ROLLING_NAME = "bench-rolling"
ROLLING_RELOADS = 3  # `ripctl reload --wait` during each measured run, evenly spaced
RELOAD_TIMEOUT = 60.0
RELOAD_LEAD = 0.25  # seconds into the run before the first reload, while wrk connects
RECYCLE_LINE = b"recycling after"  # what a rip worker logs when it reaches a recycling limit
RIP_SERVER_STOP_TIMEOUT = 10.0  # after SIGINT, then SIGKILL to its process group
DIP_LIMIT = 20.0  # % fewer requests/s during rolling restarts than steady
COLD_NAME = "bench-cold"
COLD_STARTS = 5
COLD_TIMEOUT = 20.0
COLD_POLL = 0.01
COLD_CLIENT_TIMEOUT = 0.25
COLD_LIMIT = 1.5  # seconds from launch to the first 200
ACCESS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+Z (\d{3}) ")  # the balancer's access log
LEAF_KINDS = {  # native leaf frames (py-spy --native) by what the balancer is doing
    "waiting (epoll)": re.compile(r"epoll_p?wait "),
    "write()": re.compile(r"(__)?(write|writev|send|sendmsg) "),
    "read()": re.compile(r"(__)?(read|readv|recv|recvfrom|recvmsg) "),
}
# The children must not take our terminal's journal or notify socket for theirs.
CHILD_ENV = {
    key: value for key, value in os.environ.items()
    if key not in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
                   "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID")
}


@dataclass(frozen=True)
class Settings:
    duration: int
    rounds: int
    warmup: int
    threads: int
    connections: int
    memory_requests: int
    profile: bool
    profile_seconds: int
    comparison: bool  # the configurations' rounds and the memory check (not with --only)
    rolling: bool
    cold_start: bool


@dataclass
class Proc:
    """A process we started in a session of its own; its output goes to a file."""

    name: str
    process: subprocess.Popen[bytes]
    output: Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.output.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


@dataclass
class Stack:
    """The processes of one configuration, in a directory of their own."""

    config: str
    dir: Path
    tools: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    port: int = 0
    access_log: Path | None = None
    #: Where its processes start, and what their environment adds: bench/ab.py runs the rip
    #: of another tree (its directory, and PYTHONPATH pointing there).
    root: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)

    def start(self, name: str, command: list[str], stdout: Path | None = None,
              env: dict[str, str] | None = None) -> Proc:
        """Start a process in the stack's root; stdout goes to `stdout` if given, else with
        stderr; `env` is added to the environment."""
        output = self.dir / f"{name}.out"
        with contextlib.ExitStack() as files:
            err = files.enter_context(output.open("wb"))
            out = files.enter_context(stdout.open("wb")) if stdout else err
            # A session of its own: only stop_process() signals it, not a Ctrl-C on the terminal.
            process = subprocess.Popen(
                command, cwd=self.root, env={**CHILD_ENV, **self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err, start_new_session=True,
            )
        proc = Proc(name, process, output)
        self.procs.append(proc)
        return proc

    def pid(self, name: str) -> int:
        return next(proc.process.pid for proc in self.procs if proc.name == name)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.process.poll() is not None:
                raise RuntimeError(
                    f"{self.config}: {proc.name} exited with status {proc.process.returncode}; "
                    f"its output:\n{proc.tail()}"
                )

    def stop(self) -> None:
        """Stop the front first, then what it talks to."""
        for proc in reversed(self.procs):
            stop_process(proc)


@dataclass(frozen=True)
class Config:
    name: str
    description: str
    path: str  # what wrk requests
    start: Callable[[Stack], Proc]  # starts the stack, returns its front (listening on port)
    scheme: str = "http"
    close: bool = False  # wrk sends Connection: close: a new connection for every request

    def url(self, port: int) -> str:
        return f"{self.scheme}://127.0.0.1:{port}{self.path}"


@dataclass
class Measured:
    """One measured wrk run against one configuration."""

    config: str
    round: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int
    cpu_percent: dict[str, float]  # see CpuMeter
    access_log_lines: int | None  # written by the whole run: readiness, warm-up and measure

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + self.socket_errors


@dataclass(frozen=True)
class Target:
    label: str
    numerator: str
    denominator: str | None  # None: `minimum` is in requests/s
    minimum: float


TARGETS = (
    Target("rip >= 3x nginx -> gunicorn", "rip", "nginx-gunicorn", 3.0),
    Target("rip >= 3x haproxy -> uvicorn", "rip", "haproxy-uvicorn", 3.0),
    Target("rip >= 0.8x nginx -> uvicorn", "rip", "nginx-uvicorn", 0.8),
    Target("rip >= 12,000 requests/s", "rip", None, 12_000.0),
    Target("rip /server >= 0.4x nginx static", "rip-server", "nginx-static", 0.4),
    Target("rip HTTPS >= 2x nginx HTTPS -> gunicorn (keep-alive)", "rip-https",
           "nginx-https-gunicorn", 2.0),
)
INFO_RATIOS = (("rip-nolog", "rip"),  # without / with the access log
               ("rip", "rip-nice0"),  # the balancer above / at the workers' priority
               ("rip-wsgi", "nginx-gunicorn"),  # the same WSGI app on both sides
               # HAProxy in front of rip's workers: how far a balancer in C gets with them
               ("haproxy-rip", "nginx-gunicorn"),
               ("haproxy-https-rip", "nginx-https-gunicorn"),
               # a balancer in Python that does no HTTP work, in front of rip's workers
               ("floor-rip", "nginx-gunicorn"),
               ("floor-https-rip", "nginx-https-gunicorn"),
               ("rip-https-close", "nginx-https-gunicorn-close"))  # a handshake per request


# -- processes --------------------------------------------------------------------------------

def stop_process(proc: Proc) -> None:
    """SIGTERM the process we started (by PID); SIGKILL its process group if it lingers."""
    process = proc.process
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"  {proc.name} (pid {process.pid}) ignored SIGTERM: killing it", flush=True)
        # The group is the session we created for it (nginx's and gunicorn's workers are in it);
        # it exists as long as the unreaped leader does.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def get_status(connection: http.client.HTTPConnection, path: str) -> int:
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_ready(proc: Proc, connect: Callable[[], http.client.HTTPConnection], path: str) -> None:
    """Poll GET `path` until it answers 200; fail with the process's output otherwise."""
    deadline = time.monotonic() + READY_TIMEOUT
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with status {proc.process.returncode} before it was "
                f"ready; its output:\n{proc.tail()}"
            )
        try:
            status = get_status(connect(), path)
            if status == 200:
                return
            last_error = f"HTTP {status}"
        except OSError as error:  # includes the socket file not existing yet
            last_error = repr(error)
        time.sleep(0.05)
    raise RuntimeError(
        f"{proc.name} did not answer GET {path} within {READY_TIMEOUT:g} s ({last_error}); "
        f"its output:\n{proc.tail()}"
    )


def over_unix(path: Path) -> Callable[[], http.client.HTTPConnection]:
    return lambda: UnixHTTPConnection(path, timeout=1.0)


def over_tls(port: int) -> Callable[[], http.client.HTTPConnection]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our own throwaway certificate
    return lambda: http.client.HTTPSConnection("127.0.0.1", port, timeout=1.0, context=context)


def certificate(stack: Stack) -> tuple[Path, Path]:
    """A self-signed certificate for this stack (what rip makes when none is configured)."""
    from ripsvc import tls

    found = tls.resolve("", "", ["localhost"], stack.dir / "certs", mkcert=None)
    return found.cert, found.key


def over_tcp(port: int) -> Callable[[], http.client.HTTPConnection]:
    return lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)


# -- the configurations -----------------------------------------------------------------------

def start_backends(stack: Stack, commands: dict[str, tuple[Path, list[str]]]) -> None:
    """Start every NAME: (SOCKET, COMMAND) at once, then wait until each socket answers /ping."""
    started = [(stack.start(name, command), path) for name, (path, command) in commands.items()]
    for proc, path in started:
        wait_ready(proc, over_unix(path), "/ping")


def start_rip_workers(stack: Stack, app: str = "examples/hello") -> list[Path]:
    sockets = [stack.dir / f"w{n}.sock" for n in (1, 2)]
    start_backends(stack, {
        f"w{n}": (path, [
            str(VENV_BIN / "rip-worker"), app, "--bind", str(path),
            "--log-level", "warning", "--recycle", "r:0,0s,0r",
        ])
        for n, path in enumerate(sockets, 1)
    })
    return sockets


def start_balancer(stack: Stack, workers: list[Path], *, access_log: bool,
                   tls: bool = False, nice: int = NICE) -> Proc:
    stack.port = free_port()
    command = [
        str(VENV_BIN / "python"), "-m", "ripsvc.balancer", "--app", "hello",
        "--listen", f"tcp:127.0.0.1:{stack.port}", "--control", str(stack.dir / "ctl.sock"),
    ]
    if tls:
        cert, key = certificate(stack)
        command += ["--tls-port", str(stack.port), "--cert", str(cert), "--key", str(key)]
    for n, path in enumerate(workers, 1):
        command += ["--worker", f"{n}={path}"]
    if not access_log:
        command.append("--no-access-log")
    if nice != NICE:
        command += ["--nice", str(nice)]
    log = stack.dir / "access.log"
    stack.access_log = log if access_log else None
    return stack.start("balancer", command, stdout=log)


def start_uvicorns(stack: Stack) -> None:
    start_backends(stack, {
        f"u{n}": (stack.dir / f"u{n}.sock", [
            ".venv/bin/uvicorn", "--app-dir", "examples/hello", "app:app",
            "--uds", str(stack.dir / f"u{n}.sock"), "--log-level", "warning",
            "--no-access-log", "--loop", "uvloop", "--http", "httptools",
        ])
        for n in (1, 2)
    })


def start_gunicorn(stack: Stack) -> None:
    path = stack.dir / "gunicorn.sock"
    start_backends(stack, {
        "gunicorn": (path, [
            ".venv/bin/gunicorn", "--chdir", "examples/hello_wsgi", "-w", "2", "-k", "sync",
            "-b", f"unix:{path}", "--log-level", "warning", "app:app",
        ]),
    })


def render(template: str, **values: str | int) -> str:
    return string.Template((CONF / template).read_text()).substitute(values)


def start_nginx(stack: Stack, site: str) -> Proc:
    """nginx with bench/conf/nginx.conf around bench/conf/nginx-SITE.conf."""
    stack.port = free_port()
    values: dict[str, str | int] = {"dir": str(stack.dir), "port": stack.port}
    if site.startswith("https"):
        cert, key = certificate(stack)
        values.update(cert=str(cert), key=str(key))
    # As root, nginx's workers would run as nobody, who cannot enter our 0700 directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = stack.dir / "nginx.conf"
    conf.write_text(render("nginx.conf", user=user, site=render(f"nginx-{site}.conf", **values),
                           **values))
    stack.access_log = stack.dir / "access.log"
    error_log = stack.dir / "nginx-error.log"
    return stack.start("nginx", [
        stack.tools["nginx"], "-p", str(stack.dir), "-c", str(conf), "-e", str(error_log),
    ])


def start_haproxy(stack: Stack, sockets: str, tls: bool = False, nice: int = 0) -> Proc:
    """HAProxy in front of the backends on `sockets`1.sock and `sockets`2.sock; with `tls`,
    serving HTTPS with the certificate the other HTTPS stacks serve; at priority `nice`."""
    stack.port = free_port()
    options = ""
    if tls:
        cert, key = certificate(stack)
        pem = stack.dir / "haproxy.pem"  # HAProxy takes the certificate and its key in one file
        pem.write_bytes(cert.read_bytes() + key.read_bytes())
        pem.chmod(0o600)
        options = f" ssl crt {pem} alpn http/1.1 ssl-min-ver TLSv1.2"
    conf = stack.dir / "haproxy.cfg"
    conf.write_text(render("haproxy.cfg", dir=str(stack.dir), port=stack.port, tls=options,
                           sockets=sockets))
    stack.access_log = stack.dir / "access.log"
    proc = stack.start("haproxy", [stack.tools["haproxy"], "-f", str(conf), "-db"],
                       stdout=stack.access_log)
    if nice:
        os.setpriority(os.PRIO_PROCESS, proc.process.pid, nice)
    return proc


def rip(stack: Stack) -> Proc:
    return start_balancer(stack, start_rip_workers(stack), access_log=True)


def rip_wsgi(stack: Stack) -> Proc:
    return start_balancer(stack, start_rip_workers(stack, "examples/hello_wsgi"),
                          access_log=True)


def rip_nolog(stack: Stack) -> Proc:
    return start_balancer(stack, start_rip_workers(stack), access_log=False)


def rip_nice0(stack: Stack) -> Proc:
    return start_balancer(stack, start_rip_workers(stack), access_log=True, nice=0)


def rip_server(stack: Stack) -> Proc:
    return start_balancer(stack, [], access_log=True)


def nginx_gunicorn(stack: Stack) -> Proc:
    start_gunicorn(stack)
    return start_nginx(stack, "gunicorn")


def haproxy_uvicorn(stack: Stack) -> Proc:
    start_uvicorns(stack)
    return start_haproxy(stack, "u")


# In rip's place, HAProxy gets the priority rip's balancer runs at: the same chances.
def haproxy_rip(stack: Stack) -> Proc:
    start_rip_workers(stack)
    return start_haproxy(stack, "w", nice=NICE)


def haproxy_https_rip(stack: Stack) -> Proc:
    start_rip_workers(stack)
    return start_haproxy(stack, "w", tls=True, nice=NICE)


def start_floor(stack: Stack, tls: bool = False) -> Proc:
    """bench/floor.py in front of rip's two workers, at rip's balancer priority."""
    workers = start_rip_workers(stack)
    stack.port = free_port()
    command = [str(VENV_BIN / "python"), str(ROOT / "bench" / "floor.py"), str(stack.port),
               *map(str, workers), "--nice", str(NICE)]
    if tls:
        cert, key = certificate(stack)
        command += ["--cert", str(cert), "--key", str(key)]
    return stack.start("floor", command)


def floor_rip(stack: Stack) -> Proc:
    return start_floor(stack)


def floor_https_rip(stack: Stack) -> Proc:
    return start_floor(stack, tls=True)


def nginx_uvicorn(stack: Stack) -> Proc:
    start_uvicorns(stack)
    return start_nginx(stack, "uvicorn")


def nginx_static(stack: Stack) -> Proc:
    return start_nginx(stack, "static")


def rip_https(stack: Stack) -> Proc:
    return start_balancer(stack, start_rip_workers(stack), access_log=True, tls=True)


def nginx_https_gunicorn(stack: Stack) -> Proc:
    start_gunicorn(stack)
    return start_nginx(stack, "https-gunicorn")


CONFIGS = (
    Config("rip", "balancer + 2 rip workers (ASGI examples/hello), access log to a file",
           "/ping", rip),
    Config("rip-nolog", "the same, balancer --no-access-log", "/ping", rip_nolog),
    Config("rip-nice0", "the same, the balancer at the workers' priority (--nice 0, where "
           f"rip runs it at {NICE})", "/ping", rip_nice0),
    Config("rip-wsgi", "rip with the WSGI app gunicorn serves (examples/hello_wsgi)", "/ping",
           rip_wsgi),
    Config("nginx-gunicorn", "nginx (access log to a file) -> 2 gunicorn sync workers "
           "(WSGI examples/hello_wsgi) on one Unix socket", "/ping", nginx_gunicorn),
    Config("haproxy-uvicorn", "HAProxy (1 thread, access log to a file), maxconn 1 per server "
           "+ queue, http-reuse always -> 2 uvicorn processes on Unix sockets", "/ping",
           haproxy_uvicorn),
    Config("nginx-uvicorn", "nginx (access log to a file) -> 2 uvicorn processes, keepalive 16 "
           "upstream, HTTP/1.1", "/ping", nginx_uvicorn),
    Config("rip-server", "the balancer alone (no workers, access log to a file): GET /server",
           "/server", rip_server),
    Config("nginx-static", 'nginx alone (access log to a file): return 200 "ok\\n"', "/ping",
           nginx_static),
    Config("rip-https", "rip, the balancer serving HTTPS (TLS 1.3, self-signed P-256), "
           "keep-alive clients", "/ping", rip_https, scheme="https"),
    Config("nginx-https-gunicorn", "nginx serving HTTPS (the same certificate) -> 2 gunicorn "
           "sync workers, keep-alive clients", "/ping", nginx_https_gunicorn, scheme="https"),
    Config("haproxy-rip", "HAProxy as in haproxy-uvicorn -> the 2 rip workers of rip: what a "
           f"balancer in C makes of the same workers (at rip's balancer priority, nice {NICE})",
           "/ping", haproxy_rip),
    Config("haproxy-https-rip", "haproxy-rip serving HTTPS (the same certificate, keep-alive "
           "clients)", "/ping", haproxy_https_rip, scheme="https"),
    Config("floor-rip", "bench/floor.py -> the 2 rip workers: a balancer in Python that only "
           "frames requests and responses (no HTTP parsing, headers, log or timeouts), at nice "
           f"{NICE}", "/ping", floor_rip),
    Config("floor-https-rip", "floor-rip serving HTTPS (the same certificate, keep-alive "
           "clients)", "/ping", floor_https_rip, scheme="https"),
    Config("rip-https-close", "rip-https with Connection: close (a handshake per request)",
           "/ping", rip_https, scheme="https", close=True),
    Config("nginx-https-gunicorn-close", "nginx-https-gunicorn with Connection: close",
           "/ping", nginx_https_gunicorn, scheme="https", close=True),
)
RIP = CONFIGS[0]
HTTPS_CLOSE = next(config for config in CONFIGS if config.name == "rip-https-close")


@contextlib.contextmanager
def launched(config: Config, directory: Path, tools: dict[str, str], root: Path = ROOT,
             env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Start a configuration, wait until it answers, and stop all of it whatever happens."""
    stack = Stack(config.name, directory, tools, root=root, env=env or {})
    try:
        front = config.start(stack)
        connect = over_tls(stack.port) if config.scheme == "https" else over_tcp(stack.port)
        wait_ready(front, connect, config.path)
        yield stack
    finally:
        stack.stop()


# -- measuring --------------------------------------------------------------------------------

def wrk_command(settings: Settings, url: str, seconds: int, close: bool = False) -> list[str]:
    return [
        "wrk", f"-t{settings.threads}", f"-c{settings.connections}", f"-d{seconds}s",
        "--latency", *(["-H", "Connection: close"] if close else []), url,
    ]


def run_wrk(settings: Settings, url: str, seconds: int, close: bool = False) -> str:
    result = subprocess.run(
        wrk_command(settings, url, seconds, close), capture_output=True, text=True,
        timeout=seconds + 30, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def process_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # field 3 on
    return int(fields[11]) + int(fields[12])


def descendants(pid: int) -> list[int]:
    """The live descendants of a process."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def tree_ticks(pid: int) -> int:
    """CPU ticks of a process and of its live descendants (nginx's or gunicorn's workers)."""
    total = 0
    for member in (pid, *descendants(pid)):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += process_ticks(member)
    return total


def children_cpu_seconds() -> float:
    """CPU time of our reaped children (wrk: the servers are reaped only when they stop)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_ticks() -> tuple[int, int]:
    """Busy (user, nice, system, irq, softirq) and stolen clock ticks of all CPUs."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


@dataclass
class CpuMeter:
    """CPU use over a time span in % of one core: the stack's processes, wrk, all CPUs
    ("machine", at most nproc x 100), what the stack and wrk do not account for ("others":
    other processes, including short-lived ones, and kernel work not charged to a process: near
    0 on a quiet machine) and the time the hypervisor gave to other guests ("steal")."""

    stack: Stack
    reaped: str = "wrk"  # what the children we reap while measuring are (they get its CPU)
    ticks: dict[str, int] = field(default_factory=dict)
    wrk_seconds: float = 0.0
    machine: tuple[int, int] = (0, 0)
    started: float = 0.0
    percent: dict[str, float] = field(default_factory=dict)  # set on leaving

    def __enter__(self) -> CpuMeter:
        self.ticks = {proc.name: tree_ticks(proc.process.pid) for proc in self.stack.procs}
        self.wrk_seconds = children_cpu_seconds()
        self.machine = machine_ticks()
        self.started = time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        elapsed = time.monotonic() - self.started
        per_tick = 100.0 / os.sysconf("SC_CLK_TCK") / elapsed
        busy, steal = machine_ticks()
        wrk_seconds = children_cpu_seconds() - self.wrk_seconds
        self.percent = {
            proc.name: per_tick * (tree_ticks(proc.process.pid) - self.ticks[proc.name])
            for proc in self.stack.procs
        }
        self.percent[self.reaped] = 100.0 * wrk_seconds / elapsed
        machine = per_tick * (busy - self.machine[0])
        self.percent["others"] = max(0.0, machine - sum(self.percent.values()))
        self.percent["machine"] = machine
        self.percent["steal"] = per_tick * (steal - self.machine[1])


def count_lines(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        with path.open("rb") as file:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
    except OSError:
        return 0


def measure(config: Config, round_: int, settings: Settings, tools: dict[str, str],
            workdir: Path) -> Measured:
    """Start a fresh stack, warm it up, measure it with wrk and stop it, whatever happens."""
    directory = workdir / f"{round_}-{config.name}"
    directory.mkdir()
    try:
        with launched(config, directory, tools) as stack:
            url = config.url(stack.port)
            if settings.warmup > 0:
                run_wrk(settings, url, settings.warmup, config.close)
            with CpuMeter(stack) as meter:
                text = run_wrk(settings, url, settings.duration, config.close)
            stack.check_alive()
        run = parse_wrk(text, config.name, round_)
        # Counted once stopped: the balancer buffers its access log and flushes it on exit.
        log_lines = count_lines(stack.access_log)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return Measured(
        config=config.name, round=round_, requests_per_s=run.requests_per_s,
        p50_ms=run.p50_ms, p99_ms=run.p99_ms, requests=run.requests,
        non_2xx_3xx=run.non_2xx_3xx, socket_errors=run.socket_errors,
        cpu_percent={name: round(value, 1) for name, value in meter.percent.items()},
        access_log_lines=log_lines,
    )


def describe_cpu(cpu: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.0f}" for name, value in cpu.items())


def run_rounds(settings: Settings, tools: dict[str, str], workdir: Path) -> list[Measured]:
    runs: list[Measured] = []
    for round_ in range(1, settings.rounds + 1):
        shift = (round_ - 1) % len(CONFIGS)
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            run = measure(config, round_, settings, tools, workdir)
            print(
                f"  round {round_} {config.name:<16} {run.requests_per_s:>8.0f} req/s  "
                f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  errors {run.errors}  "
                f"cpu% {describe_cpu(run.cpu_percent)}",
                flush=True,
            )
            runs.append(run)
    return runs


def summarize(runs: list[Measured]) -> dict[str, dict[str, Any]]:
    """Per configuration: medians of requests/s, p50, p99 and CPU, and the total of errors."""
    summary: dict[str, dict[str, Any]] = {}
    for config in CONFIGS:
        mine = [run for run in runs if run.config == config.name]
        names = mine[0].cpu_percent.keys()
        summary[config.name] = {
            "requests_per_s": statistics.median(run.requests_per_s for run in mine),
            "p50_ms": statistics.median(run.p50_ms for run in mine),
            "p99_ms": statistics.median(run.p99_ms for run in mine),
            "errors": sum(run.errors for run in mine),
            "cpu_percent": {
                name: statistics.median(run.cpu_percent[name] for run in mine) for name in names
            },
        }
    return summary


# -- ratios and targets -----------------------------------------------------------------------

def ratios(summary: dict[str, dict[str, Any]], top: str, bottom: str) -> dict[str, float]:
    return {
        key: summary[top][key] / summary[bottom][key]
        for key in ("requests_per_s", "p50_ms", "p99_ms")
    }


def check_targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for target in TARGETS:
        value = summary[target.numerator]["requests_per_s"]
        check: dict[str, Any] = {"target": target.label, "minimum": target.minimum}
        if target.denominator:
            check |= {f"{key}_ratio": round(ratio, 4) for key, ratio in
                      ratios(summary, target.numerator, target.denominator).items()}
            value /= summary[target.denominator]["requests_per_s"]
        check |= {"value": round(value, 4), "met": value >= target.minimum}
        checks.append(check)
    return checks


def print_summary(summary: dict[str, dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    print(f"\n{'median of rounds':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  "
          "cpu% (per process, wrk)")
    for name, figures in summary.items():
        print(
            f"{name:<16} {figures['requests_per_s']:>8.0f} {figures['p50_ms']:>8.2f} "
            f"{figures['p99_ms']:>8.2f} {figures['errors']:>6}  "
            f"{describe_cpu(figures['cpu_percent'])}"
        )
    busiest = max(figures["cpu_percent"]["others"] for figures in summary.values())
    if busiest > QUIET_OTHERS:
        print(f"note: up to {busiest:.0f} % of a core (median of a configuration) went to other "
              "work than the servers and wrk while measuring: the machine was not quiet")
    print(f"\n{'ratio of medians':<34} {'req/s':>7} {'p50':>7} {'p99':>7}  target")
    for check in checks:
        verdict = "met" if check["met"] else "NOT met"
        if "requests_per_s_ratio" in check:
            print(f"{check['target']:<34} {check['requests_per_s_ratio']:>6.2f}x "
                  f"{check['p50_ms_ratio']:>6.2f}x {check['p99_ms_ratio']:>6.2f}x  {verdict}")
        else:
            print(f"{check['target']:<34} {check['value']:>7.0f} {'':>7} {'':>7}  {verdict}")
    for top, bottom in INFO_RATIOS:
        figures = ratios(summary, top, bottom)
        print(f"{top + ' / ' + bottom:<34} {figures['requests_per_s']:>6.2f}x "
              f"{figures['p50_ms']:>6.2f}x {figures['p99_ms']:>6.2f}x  (information)")


# -- memory -----------------------------------------------------------------------------------

def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def memory_check(settings: Settings, tools: dict[str, str], workdir: Path, rate: float,
                 config: Config = RIP, total: int = 0) -> dict[str, Any]:
    """Send `total` requests (memory_requests by default) through one stack of `config`
    (rip's), sampling the balancer's RSS after every fifth of them."""
    total = total or settings.memory_requests
    directory = workdir / f"memory-{config.name}"
    directory.mkdir()
    print(f"\nmemory: {total:,} requests through one {config.name} stack (wrk "
          f"-t{settings.threads} -c{settings.connections}"
          f"{', Connection: close' if config.close else ''}), balancer RSS after every fifth",
          flush=True)
    done = errors = 0
    with launched(config, directory, tools) as stack:
        pid = stack.pid("balancer")
        url = f"{config.scheme}://127.0.0.1:{stack.port}{config.path}"
        samples = [{"requests": 0, "rss_kb": rss_kb(pid)}]
        print(f"  before: {samples[0]['rss_kb'] / 1024:.1f} MB", flush=True)
        for fifth in range(1, 6):
            while done < total * fifth // 5:
                seconds = max(1, math.ceil((total * fifth // 5 - done) / rate))
                run = parse_wrk(run_wrk(settings, url, seconds, config.close), config.name, 0)
                done += run.requests
                errors += run.non_2xx_3xx + run.socket_errors
                rate = max(run.requests_per_s, 100.0)
            samples.append({"requests": done, "rss_kb": rss_kb(pid)})
            print(f"  after {done:>9,} requests: {samples[-1]['rss_kb'] / 1024:.1f} MB "
                  f"(errors so far {errors})", flush=True)
        stack.check_alive()
    shutil.rmtree(directory, ignore_errors=True)
    # The limits are targets of the keep-alive check only; the others are information.
    return {"config": config.name} | judge_memory(samples, errors, targets=config is RIP)


def judge_memory(samples: list[dict[str, int]], errors: int,
                 targets: bool = True) -> dict[str, Any]:
    """Growth from the first fifth (warm) to the end as the trend; with `targets`, the final
    RSS and that growth against their limits."""
    final = samples[-1]["rss_kb"]
    growth = final - samples[1]["rss_kb"]
    later = samples[1:]
    slope = statistics.linear_regression(
        [sample["requests"] for sample in later], [sample["rss_kb"] for sample in later]
    ).slope
    judged: dict[str, Any] = {
        "samples": samples,
        "before_kb": samples[0]["rss_kb"],
        "after_kb": final,
        "growth_after_first_fifth_kb": growth,
        "slope_kb_per_100k_requests": round(slope * 100_000, 2),
        "errors": errors,
    }
    if targets:
        judged |= {
            "limit_kb": RSS_LIMIT_KB,
            "growth_limit_kb": RSS_GROWTH_KB,
            "within_limit": final <= RSS_LIMIT_KB,
            "no_growth_trend": growth <= RSS_GROWTH_KB,
        }
    return judged


def print_memory(memory: dict[str, Any]) -> None:
    if memory["config"] != RIP.name:  # the keep-alive check is the one with targets
        print(f"balancer RSS ({memory['config']}, information): "
              f"{memory['before_kb'] / 1024:.1f} MB before, {memory['after_kb'] / 1024:.1f} MB "
              f"after {memory['samples'][-1]['requests']:,} requests, "
              f"{memory['growth_after_first_fifth_kb']} kB more than after the first fifth "
              f"(slope {memory['slope_kb_per_100k_requests']} kB per 100k requests; "
              f"errors {memory['errors']})")
        return
    limit = "met" if memory["within_limit"] else "NOT met"
    trend = "met" if memory["no_growth_trend"] else "NOT met"
    print(
        f"balancer RSS ({memory['config']}): {memory['before_kb'] / 1024:.1f} MB before, "
        f"{memory['after_kb'] / 1024:.1f} MB after {memory['samples'][-1]['requests']:,} "
        f"requests: <= {RSS_LIMIT_KB // 1024} MB {limit}\n"
        f"balancer RSS growth from 20 % to 100 %: {memory['growth_after_first_fifth_kb']} kB "
        f"(slope {memory['slope_kb_per_100k_requests']} kB per 100k requests): no growth trend "
        f"(<= {RSS_GROWTH_KB} kB) {trend}; errors {memory['errors']}"
    )


# -- rolling restarts and cold starts (rip-server) --------------------------------------------

def ripctl(*args: str, timeout: float) -> tuple[int | None, str]:
    """Run .venv/bin/ripctl; its exit status (None if it timed out) and what it printed."""
    try:
        result = subprocess.run(
            [str(VENV_BIN / "ripctl"), *args], cwd=ROOT, env=CHILD_ENV, capture_output=True,
            text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"ripctl {' '.join(args)}: no answer within {timeout:g} s"
    return result.returncode, (result.stdout + result.stderr).strip()


def server_lines(proc: Proc, limit: int = 80, requests: int = 10) -> list[str]:
    """rip-server's output without its 2xx/3xx access-log lines: its log lines and the first
    `requests` failed requests, at most `limit` lines (the last)."""
    lines: list[str] = []
    failed = 0
    try:
        with proc.output.open(errors="replace") as file:
            for line in file:
                access = ACCESS_LINE.match(line)
                if access and access[1][0] in "23":
                    continue
                if access:
                    failed += 1
                    if failed > requests:
                        continue
                lines.append(line.rstrip("\n"))
    except OSError:
        return ["(no output)"]
    if failed > requests:
        lines.append(f"({failed - requests} more non-2xx/3xx access-log lines)")
    return lines[-limit:] or ["(no output)"]


def stop_rip_server(proc: Proc) -> None:
    """SIGINT rip-server (by PID), SIGKILL its process group if it still runs after a while."""
    process = proc.process
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(RIP_SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"  {proc.name} (pid {process.pid}) still runs {RIP_SERVER_STOP_TIMEOUT:g} s "
              "after SIGINT: killing its process group", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if process.returncode not in (0, -signal.SIGINT, 128 + signal.SIGINT):
        print(f"  note: {proc.name} exited with status {process.returncode} after SIGINT; its "
              "output:\n    " + "\n    ".join(server_lines(proc, limit=20)), flush=True)


@contextlib.contextmanager
def rip_server_running(directory: Path, tools: dict[str, str],
                       name: str) -> Iterator[tuple[Stack, Proc, float]]:
    """`rip-server examples/hello w:2 http:PORT --name NAME` on a free port; the stack, the
    process and when it was launched (time.monotonic()). Stopped and reaped on leaving."""
    directory.mkdir()
    stack = Stack(name, directory, tools)
    stack.port = free_port()
    command = [".venv/bin/rip-server", "examples/hello", f"w:{RIP_SERVER_WORKERS}",
               f"http:127.0.0.1:{stack.port}", "--name", name]
    launched_at = time.monotonic()
    # Its state (host registry) in the run's directory, not /var/lib/rip/NAME as for root.
    proc = stack.start("rip-server", command, env={"STATE_DIRECTORY": str(directory / "state")})
    try:
        yield stack, proc, launched_at
    finally:
        stop_rip_server(proc)


def wait_workers_ready(proc: Proc, name: str) -> dict[str, Any]:
    """Poll `ripctl status NAME -j` until it shows every worker ready; its status then."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(
                f"rip-server {name} exited with status {proc.process.returncode} before its "
                f"workers were ready; its output:\n" + "\n".join(server_lines(proc))
            )
        code, said = ripctl("status", name, "-j", timeout=5.0)
        if code == 0:
            try:
                status: dict[str, Any] = json.loads(said)
                states = [worker["state"] for worker in status["workers"]]
            except (ValueError, KeyError, TypeError) as error:
                last = f"unreadable status ({error!r}): {said[:200]}"
            else:
                if states == ["ready"] * RIP_SERVER_WORKERS:
                    return status
                last = f"worker states {states}"
        else:
            last = said or f"ripctl status exited with {code}"
        time.sleep(0.1)
    raise RuntimeError(
        f"rip-server {name}: `ripctl status {name} -j` did not show {RIP_SERVER_WORKERS} ready "
        f"workers within {READY_TIMEOUT:g} s ({last}); its output:\n"
        + "\n".join(server_lines(proc))
    )


def output_size(proc: Proc) -> int:
    try:
        return proc.output.stat().st_size
    except OSError:
        return 0


def count_between(proc: Proc, needle: bytes, offsets: list[int]) -> list[int]:
    """How many times `needle` occurs in the output between each two offsets."""
    try:
        data = proc.output.read_bytes()
    except OSError:
        return [0] * (len(offsets) - 1)
    return [data[start:end].count(needle) for start, end in itertools.pairwise(offsets)]


def wrk_figures(text: str, cpu: dict[str, float]) -> dict[str, Any]:
    run = parse_wrk(text, "rip-server", 0)
    return {
        "requests_per_s": run.requests_per_s, "p50_ms": run.p50_ms, "p99_ms": run.p99_ms,
        "requests": run.requests, "non_2xx_3xx": run.non_2xx_3xx,
        "socket_errors": run.socket_errors,
        "cpu_percent": {name: round(value, 1) for name, value in cpu.items()},
    }


def load_with_reloads(settings: Settings, url: str, name: str) -> tuple[str, list[dict[str, Any]]]:
    """wrk for --duration seconds while `ripctl reload NAME --wait` runs ROLLING_RELOADS times,
    one after the other, the n-th started RELOAD_LEAD + n x duration / ROLLING_RELOADS seconds
    into the run or when the previous one is done; wrk's report and one record per reload."""
    seconds = settings.duration
    load = subprocess.Popen(
        wrk_command(settings, url, seconds), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    started = time.monotonic()
    reloads: list[dict[str, Any]] = []
    try:
        for n in range(ROLLING_RELOADS):
            time.sleep(max(0.0, started + RELOAD_LEAD + seconds * n / ROLLING_RELOADS
                           - time.monotonic()))
            at = time.monotonic() - started
            code, said = ripctl("reload", name, "--wait", timeout=RELOAD_TIMEOUT)
            reloads.append({"at_s": round(at, 2),
                            "took_s": round(time.monotonic() - started - at, 2),
                            "exit": code, "ok": code == 0, "said": said})
        text, _ = load.communicate(timeout=seconds + 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    if load.returncode != 0:
        raise RuntimeError(f"wrk failed ({load.returncode}):\n{text}")
    return text, reloads


def rolling_round(settings: Settings, tools: dict[str, str], workdir: Path,
                  round_: int) -> dict[str, Any]:
    """A fresh rip-server: wrk steady, then wrk again while it restarts its workers."""
    directory = workdir / f"rolling-{round_}"
    with rip_server_running(directory, tools, ROLLING_NAME) as (stack, proc, _):
        wait_workers_ready(proc, ROLLING_NAME)
        url = f"http://127.0.0.1:{stack.port}/ping"
        if settings.warmup > 0:
            run_wrk(settings, url, settings.warmup)
        offsets = [output_size(proc)]
        with CpuMeter(stack) as steady_cpu:
            steady_text = run_wrk(settings, url, settings.duration)
        offsets.append(output_size(proc))
        with CpuMeter(stack, reaped="wrk+ripctl") as during_cpu:
            during_text, reloads = load_with_reloads(settings, url, ROLLING_NAME)
        offsets.append(output_size(proc))
        code, said = ripctl("status", ROLLING_NAME, "-j", timeout=5.0)
        stack.check_alive()
    # Read once stopped: the balancer buffers its access log (rip-server's stdout).
    log = server_lines(proc)
    recycles = count_between(proc, RECYCLE_LINE, offsets)
    shutil.rmtree(directory, ignore_errors=True)
    try:
        status: Any = json.loads(said) if code == 0 else None
        after: Any = {"version": status["version"],
                      "workers": [[worker["id"], worker["state"]] for worker in status["workers"]]}
    except (ValueError, KeyError, TypeError):
        after = said  # what ripctl said instead
    steady = wrk_figures(steady_text, steady_cpu.percent) | {"recycles": recycles[0]}
    # The old workers exit during the run, taking their CPU time out of rip-server's tree.
    during = wrk_figures(during_text, {name: value for name, value in during_cpu.percent.items()
                                       if name in ("wrk+ripctl", "machine", "steal")}) | {
        "recycles": recycles[1],
        # The share of the run during which a reload was under way.
        "reload_coverage_percent": round(100 * sum(
            min(r["at_s"] + r["took_s"], settings.duration) - min(r["at_s"], settings.duration)
            for r in reloads) / settings.duration, 1),
    }
    record: dict[str, Any] = {
        "round": round_, "steady": steady, "during": during,
        "dip_percent": round(100 * (1 - during["requests_per_s"] / steady["requests_per_s"]), 2),
        "reloads": reloads,
        "after": after,  # `ripctl status` once the run is over
    }
    problems = (sum(not reload["ok"] for reload in reloads) + steady["non_2xx_3xx"]
                + steady["socket_errors"] + during["non_2xx_3xx"] + during["socket_errors"])
    if problems:
        record["server_log"] = log  # logs and non-2xx/3xx access lines, for the report
    return record


def rolling_restarts(settings: Settings, tools: dict[str, str], workdir: Path,
                     facts: dict[str, Any]) -> dict[str, Any]:
    """Requests/s steady and during rolling restarts, over --rounds fresh rip-servers."""
    print(f"\nrolling restarts: rip-server examples/hello w:{RIP_SERVER_WORKERS}, per round "
          f"wrk {settings.duration} s steady, then {settings.duration} s during "
          f"{ROLLING_RELOADS} x `ripctl reload {ROLLING_NAME} --wait`", flush=True)
    rounds = []
    for round_ in range(1, settings.rounds + 1):
        record = rolling_round(settings, tools, workdir, round_)
        rounds.append(record)
        steady, during = record["steady"], record["during"]
        reloads = " ".join(f"{reload['at_s']:.1f}+{reload['took_s']:.1f}s"
                           + ("" if reload["ok"] else f"(FAILED: {reload['said']})")
                           for reload in record["reloads"])
        print(f"  round {round_} steady {steady['requests_per_s']:>7.0f} req/s "
              f"p99 {steady['p99_ms']:6.2f} ms, during {during['requests_per_s']:>7.0f} req/s "
              f"p99 {during['p99_ms']:6.2f} ms, dip {record['dip_percent']:5.1f} %, errors "
              f"{error_pair(steady)} / {error_pair(during)}, recycles {steady['recycles']} / "
              f"{during['recycles']}, reloads at+took {reloads} "
              f"({during['reload_coverage_percent']:.0f} % of the run)",
              flush=True)
        if "server_log" in record:
            print("  rip-server's output (logs and non-2xx/3xx requests):\n    "
                  + "\n    ".join(record["server_log"]), flush=True)
    every = [reload for record in rounds for reload in record["reloads"]]
    return {
        "command": f"rip-server examples/hello w:{RIP_SERVER_WORKERS} http:PORT "
                   f"--name {ROLLING_NAME}",
        "load": f"wrk -t{settings.threads} -c{settings.connections} -d{settings.duration}s "
                "--latency GET /ping on 127.0.0.1",
        "reloads_per_run": ROLLING_RELOADS,
        "date": facts["date"], "git_commit": facts["git_commit"],
        "rounds": rounds,
        "steady_requests_per_s": statistics.median(r["steady"]["requests_per_s"] for r in rounds),
        "during_requests_per_s": statistics.median(r["during"]["requests_per_s"] for r in rounds),
        "steady_p99_ms": statistics.median(r["steady"]["p99_ms"] for r in rounds),
        "during_p99_ms": statistics.median(r["during"]["p99_ms"] for r in rounds),
        "dip_percent": statistics.median(r["dip_percent"] for r in rounds),  # of the rounds' dips
        "errors": {
            part: {kind: sum(r[part][kind] for r in rounds)
                   for kind in ("socket_errors", "non_2xx_3xx")}
            for part in ("steady", "during")
        },
        "reloads": len(every),
        "reloads_failed": sum(not reload["ok"] for reload in every),
        "reload_seconds_median": statistics.median(reload["took_s"] for reload in every),
        "reload_coverage_percent": statistics.median(
            r["during"]["reload_coverage_percent"] for r in rounds),
        "recycles": {part: sum(r[part]["recycles"] for r in rounds)
                     for part in ("steady", "during")},
    }


def error_pair(figures: dict[str, Any]) -> str:
    return f"{figures['socket_errors']}/{figures['non_2xx_3xx']}"


def attempt(what: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What `measure` returns, or {"error": why} if it failed: the other parts still run."""
    try:
        return measure()
    except (RuntimeError, ValueError) as error:
        print(f"\n{what} failed: {error}", flush=True)
        return {"error": str(error)}


def failed_checks(part: str, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**check, "part": part, "value": None, "met": False} for check in checks]


def rolling_targets(rolling: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in rolling:
        return failed_checks("rolling", rolling_targets(
            {"dip_percent": 0.0, "errors": {}, "reloads_failed": 0}))
    errors = sum(sum(kinds.values()) for kinds in rolling["errors"].values())
    return [
        {"part": "rolling", "target": f"rolling restart dip <= {DIP_LIMIT:g} %",
         "maximum": DIP_LIMIT, "value": rolling["dip_percent"],
         "met": rolling["dip_percent"] <= DIP_LIMIT},
        {"part": "rolling", "target": "rolling restart errors = 0", "maximum": 0,
         "value": errors, "met": errors == 0},
        {"part": "rolling", "target": "rolling restart reloads failed = 0", "maximum": 0,
         "value": rolling["reloads_failed"], "met": rolling["reloads_failed"] == 0},
    ]


def print_rolling(rolling: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    if "error" in rolling:
        print(f"\nrolling restarts failed: {rolling['error']}")
        print_checks(checks, lambda check: "")
        return
    errors = rolling["errors"]
    print(f"\nrolling restarts ({rolling['command']}; {rolling['load']}; "
          f"{rolling['reloads_per_run']} reloads per run), medians of "
          f"{len(rolling['rounds'])} rounds:\n"
          f"  steady          {rolling['steady_requests_per_s']:>8.0f} req/s  "
          f"p99 {rolling['steady_p99_ms']:6.2f} ms  socket errors/non-2xx "
          f"{error_pair(errors['steady'])}\n"
          f"  during restarts {rolling['during_requests_per_s']:>8.0f} req/s  "
          f"p99 {rolling['during_p99_ms']:6.2f} ms  socket errors/non-2xx "
          f"{error_pair(errors['during'])}\n"
          f"  reloads {rolling['reloads'] - rolling['reloads_failed']}/{rolling['reloads']} "
          f"succeeded, median {rolling['reload_seconds_median']:.2f} s each, under way "
          f"{rolling['reload_coverage_percent']:.0f} % of the run (median); workers recycled "
          f"(default policy) {rolling['recycles']['steady']} times steady, "
          f"{rolling['recycles']['during']} during, in all rounds")
    print_checks(checks, lambda check: (f"{check['value']:>6.1f} %" if "dip" in check["target"]
                                        else f"{check['value']:>8}"))


def print_checks(checks: list[dict[str, Any]], show: Callable[[dict[str, Any]], str]) -> None:
    for check in checks:
        shown = "failed" if check["value"] is None else show(check)
        print(f"{check['target']:<34} {shown:>8}  {'met' if check['met'] else 'NOT met'}")


def first_200(proc: Proc, port: int, launched_at: float) -> tuple[float, Counter[str]]:
    """Seconds from launch to the first 200 on GET /ping, polling every COLD_POLL seconds
    with a short-timeout client; and what the earlier attempts got."""
    seen: Counter[str] = Counter()
    while time.monotonic() - launched_at < COLD_TIMEOUT:
        if proc.process.poll() is not None:
            raise RuntimeError(
                f"rip-server {COLD_NAME} exited with status {proc.process.returncode} before "
                f"answering; its output:\n" + "\n".join(server_lines(proc))
            )
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=COLD_CLIENT_TIMEOUT)
        try:
            status = get_status(connection, "/ping")
        except OSError as error:
            seen[type(error).__name__] += 1
        else:
            if status == 200:
                return time.monotonic() - launched_at, seen
            seen[f"HTTP {status}"] += 1
        time.sleep(COLD_POLL)
    raise RuntimeError(
        f"rip-server {COLD_NAME} did not answer 200 on GET /ping within {COLD_TIMEOUT:g} s "
        f"({dict(seen)}); its output:\n" + "\n".join(server_lines(proc))
    )


def cold_starts(tools: dict[str, str], workdir: Path, facts: dict[str, Any]) -> dict[str, Any]:
    """COLD_STARTS times: launch rip-server, time the first 200, stop it and wait for its exit."""
    print(f"\ncold start: launching rip-server examples/hello w:{RIP_SERVER_WORKERS} to the "
          f"first 200 on GET /ping, {COLD_STARTS} times", flush=True)
    starts: list[dict[str, Any]] = []
    times: list[float] = []
    for n in range(1, COLD_STARTS + 1):
        with rip_server_running(workdir / f"cold-{n}", tools, COLD_NAME) as (stack, proc, at):
            seconds, before = first_200(proc, stack.port, at)
        times.append(round(seconds, 3))
        starts.append({"seconds": times[-1], "before": dict(before),
                       "exited_s_after_first_200": round(time.monotonic() - at - seconds, 2)})
        shutil.rmtree(workdir / f"cold-{n}", ignore_errors=True)
        print(f"  {n}: first 200 after {seconds:.3f} s (earlier attempts: "
              f"{', '.join(f'{count} x {kind}' for kind, count in before.items()) or 'none'})",
              flush=True)
    return {
        "command": f"rip-server examples/hello w:{RIP_SERVER_WORKERS} http:PORT "
                   f"--name {COLD_NAME}",
        "probe": f"GET /ping on 127.0.0.1 every {COLD_POLL * 1000:g} ms, "
                 f"{COLD_CLIENT_TIMEOUT:g} s client timeout",
        "date": facts["date"], "git_commit": facts["git_commit"],
        # Set: Python compiles whatever has no up-to-date .pyc at every start.
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "starts": starts,
        "median_s": round(statistics.median(times), 3),
        "max_s": max(times),
    }


def cold_targets(cold: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in cold:
        return failed_checks("cold_start", cold_targets({"median_s": 0.0, "max_s": 0.0}))
    return [
        {"part": "cold_start", "target": f"cold start {kind} <= {COLD_LIMIT:g} s",
         "maximum": COLD_LIMIT, "value": cold[f"{kind}_s"], "met": cold[f"{kind}_s"] <= COLD_LIMIT}
        for kind in ("median", "max")
    ]


def print_cold(cold: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    if "error" in cold:
        print(f"\ncold start failed: {cold['error']}")
        print_checks(checks, lambda check: "")
        return
    print(f"\ncold start ({cold['command']} to the first 200; {cold['probe']}), "
          f"{len(cold['starts'])} starts: "
          + ", ".join(f"{start['seconds']:.3f}" for start in cold["starts"]) + " s")
    print_checks(checks, lambda check: f"{check['value']:>6.3f} s")


# -- profile ----------------------------------------------------------------------------------

def py_spy(tools: dict[str, str], pid: int, seconds: int, fmt: str, output: Path,
           *, native: bool = False) -> tuple[bool, str]:
    """Run `py-spy record`; whether it succeeded, and what it said."""
    command = [
        tools["py-spy"], "record", "--pid", str(pid), "--duration", str(seconds),
        "--rate", str(PROFILE_RATE), "--format", fmt, "-o", str(output),
        *(["--native"] if native else []),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                            check=False)
    said = f"$ {' '.join(command[1:])}\n{result.stdout}{result.stderr}".strip()
    return result.returncode == 0, said


def record_raw(tools: dict[str, str], pid: int, seconds: int, raw: Path) -> tuple[bool, str]:
    """Raw stacks with native (C) frames, which show the system calls; without if py-spy can't."""
    ok, said = py_spy(tools, pid, seconds, "raw", raw, native=True)
    if ok:
        return True, said
    ok, again = py_spy(tools, pid, seconds, "raw", raw)
    if not ok:
        raise RuntimeError(f"py-spy failed:\n{said}\n{again}")
    return False, f"{said}\n{again}"


def profile(settings: Settings, tools: dict[str, str], workdir: Path) -> dict[str, Any]:
    """py-spy on the balancer of a rip stack under load: a flame graph, then raw stacks."""
    seconds = settings.profile_seconds
    directory = workdir / "profile"
    directory.mkdir()
    raw = directory / "balancer.raw"
    print(f"\nprofile: py-spy on the balancer under wrk, {seconds} s for the flame graph, then "
          f"{seconds} s of raw stacks", flush=True)
    with launched(RIP, directory, tools) as stack:
        pid = stack.pid("balancer")
        url = f"http://127.0.0.1:{stack.port}{RIP.path}"
        load = subprocess.Popen(
            wrk_command(settings, url, 2 * seconds + 4), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        try:
            time.sleep(1.0)
            ok, said = py_spy(tools, pid, seconds, "flamegraph", PROFILE_SVG)
            if not ok:
                raise RuntimeError(f"py-spy failed:\n{said}")
            with CpuMeter(stack, reaped="py-spy") as meter:  # wrk still runs: in "others"
                native, more = record_raw(tools, pid, seconds, raw)
            wrk_text, _ = load.communicate(timeout=2 * seconds + 30)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        stack.check_alive()
    run = parse_wrk(wrk_text, RIP.name, 0)
    header = [
        f"py-spy record --rate {PROFILE_RATE} --duration {seconds}"
        f"{' --native' if native else ''} on the rip balancer (access log on) under "
        f"wrk -t{settings.threads} -c{settings.connections} GET /ping: "
        f"{run.requests_per_s:.0f} req/s while profiled, errors "
        f"{run.non_2xx_3xx + run.socket_errors}",
        f"CPU during the recording (/proc, % of one core): {describe_cpu(meter.percent)}",
    ]
    text, top = summarize_profile(raw.read_text(), header, f"{said}\n{more}")
    PROFILE_TXT.write_text(text)
    return {"svg": str(PROFILE_SVG.relative_to(ROOT)), "text": str(PROFILE_TXT.relative_to(ROOT)),
            "native": native, "requests_per_s_while_profiled": run.requests_per_s,
            "cpu_percent": {name: round(value, 1) for name, value in meter.percent.items()},
            "errors": run.non_2xx_3xx + run.socket_errors, "top_own": top}


def function_of(frame: str) -> str:
    """`name (path:line)` without the line, so that a function's lines add up."""
    return re.sub(r":\d+\)$", ")", frame)


def count_stacks(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """Samples per function as the leaf (own) and anywhere in the stack (total); all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        functions = [function_of(frame) for frame in stack.split(";")]
        samples += count
        own[functions[-1]] += count
        for function in set(functions):
            total[function] += count
    return own, total, samples


def leaf_kinds(own: Counter[str]) -> str:
    """The leaf samples by kind: the system calls that matter here, and everything else."""
    kinds: Counter[str] = Counter()
    for name, count in own.items():
        kind = next((kind for kind, leaf in LEAF_KINDS.items() if leaf.match(name)), "other")
        kinds[kind] += count
    samples = max(sum(kinds.values()), 1)
    return ", ".join(f"{kind} {100 * count / samples:.1f} %" for kind, count in kinds.most_common())


def summarize_profile(raw: str, header: list[str],
                      said: str) -> tuple[str, list[dict[str, Any]]]:
    """Top functions by own (leaf) samples and by total samples, from py-spy's raw stacks."""
    own, total, samples = count_stacks(raw)
    # Python functions only; those in (nearly) every sample (runpy, main, Runner.run) say nothing.
    python = Counter({name: count for name, count in total.items()
                      if name.endswith(".py)") and count < 0.98 * samples})
    lines = [
        *header,
        f"{samples} samples; leaf frames by kind: {leaf_kinds(own)}",
        "",
        *table_of(f"top {PROFILE_TOP} functions by own samples (leaf frames)", own, total,
                  samples),
        "",
        *table_of(f"top {PROFILE_TOP} Python functions by total samples (own + callees)", python,
                  own, samples, total_first=True),
        "",
        "py-spy said:",
        said,
    ]
    top = [{"function": name, "own_percent": round(100 * count / samples, 1),
            "total_percent": round(100 * total[name] / samples, 1)}
           for name, count in own.most_common(PROFILE_TOP)] if samples else []
    return "\n".join(lines) + "\n", top


def table_of(title: str, ranked: Counter[str], other: Counter[str], samples: int,
             *, total_first: bool = False) -> list[str]:
    if not samples:
        return [title, "  (no samples)"]
    heads = ("total%", "own%") if total_first else ("own%", "total%")
    lines = [title, f"  {heads[0]:>6} {heads[1]:>6}  function (file)"]
    for name, count in ranked.most_common(PROFILE_TOP):
        lines.append(f"  {100 * count / samples:>6.1f} {100 * other[name] / samples:>6.1f}  {name}")
    return lines


# -- set-up and facts -------------------------------------------------------------------------

def find_tool(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def ensure_apt_tools() -> None:
    missing = [name for name in APT_TOOLS if not find_tool(name)]
    if not missing:
        return
    print(f"missing {', '.join(missing)}: installing with scripts/apt-ensure (apt-get). Debian's "
          "packages may enable their own system services; this script never uses them.",
          flush=True)
    if subprocess.run([str(ROOT / "scripts" / "apt-ensure"), *missing]).returncode != 0:
        sys.exit(f"could not install {' '.join(missing)}: install them and try again")


def ensure_pip_tools(names: list[str]) -> None:
    missing = [name for name in names if package_version(name) is None]
    if not missing:
        return
    print(f"missing {', '.join(missing)}: installing into .venv with pip", flush=True)
    command = [sys.executable, "-m", "pip", "install", "-q", *missing]
    if subprocess.run(command).returncode != 0:
        sys.exit(f"could not pip install {' '.join(missing)}")


def ensure_tools(settings: Settings) -> dict[str, str]:
    """The paths of the commands this benchmark runs, installing what is missing."""
    ensure_apt_tools()
    ensure_pip_tools([name for name in PIP_TOOLS if settings.profile or name != "py-spy"])
    tools = {name: find_tool(name) or "" for name in APT_TOOLS}
    tools["py-spy"] = str(VENV_BIN / "py-spy")
    if not all(tools[name] for name in APT_TOOLS):
        sys.exit(f"still missing after installing: {tools}")
    return tools


def machine_facts(tools: dict[str, str]) -> dict[str, Any]:
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "nginx": command_output([tools["nginx"], "-v"]),
        "haproxy": command_output([tools["haproxy"], "-v"]),
        "wrk": command_output([tools["wrk"], "-v"]),
        "git_commit": command_output(["git", "rev-parse", "HEAD"]) + ("+dirty" if dirty else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- main -------------------------------------------------------------------------------------

def parse_args() -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, help="seconds per wrk run (5; --quick: 3)")
    parser.add_argument("--rounds", type=int, help="rounds over all configurations (3; --quick: 1)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unrecorded wrk seconds before each run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=50,
                        help="wrk -c (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 3 s and 100,000 requests for the memory check")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the balancer under load with py-spy")
    parser.add_argument("--profile-duration", type=int, default=10,
                        help="seconds of each py-spy recording (default: %(default)s)")
    parser.add_argument("--rolling", action=argparse.BooleanOptionalAction,
                        help="requests/s and errors during rolling restarts of rip-server "
                             "(part of a default run; --no-rolling skips it)")
    parser.add_argument("--cold-start", action=argparse.BooleanOptionalAction,
                        help="time from launching rip-server to its first 200 (part of a "
                             "default run; --no-cold-start skips it)")
    parser.add_argument("--only", action="store_true",
                        help="skip the configurations and the memory check: run only what "
                             "--rolling, --cold-start and --profile ask for, and merge it into "
                             "bench/results/compare.json")
    args = parser.parse_args()
    if args.only and not (args.rolling or args.cold_start or args.profile):
        parser.error("--only needs --rolling, --cold-start or --profile")
    settings = Settings(
        duration=args.duration or (3 if args.quick else 5),
        rounds=args.rounds or (1 if args.quick else 3),
        warmup=args.warmup, threads=args.threads, connections=args.connections,
        memory_requests=100_000 if args.quick else 1_000_000,
        profile=args.profile, profile_seconds=args.profile_duration,
        comparison=not args.only,
        # With --only, what is asked for; otherwise everything not switched off.
        rolling=bool(args.rolling) if args.only else args.rolling is not False,
        cold_start=bool(args.cold_start) if args.only else args.cold_start is not False,
    )
    if min(settings.duration, settings.rounds, settings.threads, settings.profile_seconds) < 1:
        parser.error("--duration, --rounds, --threads and --profile-duration must be >= 1")
    if settings.warmup < 0 or settings.connections < settings.threads:
        parser.error("--warmup must be >= 0 and --connections >= --threads")
    return settings


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def write_results(new: dict[str, Any], targets: list[dict[str, Any]], parts: set[str]) -> None:
    """Replace what this run measured in bench/results/compare.json and keep the rest: the
    entries of parts not run this time, and their targets."""
    try:
        results = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        results = {}
    if not isinstance(results, dict):
        results = {}
    kept = [check for check in results.get("targets", [])
            if check.get("part", "comparison") not in parts]
    results |= new
    results["targets"] = [*kept, *targets]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {RESULTS.relative_to(ROOT)}")


def describe_run(settings: Settings) -> str:
    parts = []
    if settings.comparison:
        parts.append(f"{settings.rounds} rounds x {len(CONFIGS)} configurations x "
                     f"{settings.duration} s (+{settings.warmup} s warm-up), memory check")
    if settings.rolling:
        parts.append(f"rolling restarts ({settings.rounds} rounds x 2 x {settings.duration} s)")
    if settings.cold_start:
        parts.append(f"cold start ({COLD_STARTS} starts)")
    if settings.profile:
        parts.append("profile")
    return "; ".join(parts) + f"; wrk -t{settings.threads} -c{settings.connections}"


def main() -> int:
    settings = parse_args()
    signal.signal(signal.SIGTERM, interrupt)  # so that the finally clauses stop our servers
    tools = ensure_tools(settings)
    facts = machine_facts(tools)
    print(f"{facts['nproc']} CPUs ({facts['cpu_model']}), Python {facts['python']}; "
          f"{describe_run(settings)}", flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="rip-compare-"))
    runs: list[Measured] = []
    summary: dict[str, dict[str, Any]] = {}
    memory: dict[str, Any] = {}
    memory_tls: dict[str, Any] = {}
    try:
        if settings.comparison:
            runs = run_rounds(settings, tools, workdir)
            summary = summarize(runs)
            memory = memory_check(settings, tools, workdir, summary["rip"]["requests_per_s"])
            # A TLS connection per request: what a closed connection leaves behind shows here.
            memory_tls = memory_check(settings, tools, workdir,
                                      summary[HTTPS_CLOSE.name]["requests_per_s"],
                                      HTTPS_CLOSE, settings.memory_requests // 20)
        rolling = attempt("rolling restarts", lambda: rolling_restarts(
            settings, tools, workdir, facts)) if settings.rolling else None
        cold = attempt("cold start", lambda: cold_starts(
            tools, workdir, facts)) if settings.cold_start else None
        profiled = profile(settings, tools, workdir) if settings.profile else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    new: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    parts: set[str] = set()
    rip_errors = 0
    if settings.comparison:
        checks = check_targets(summary)
        print_summary(summary, checks)
        print_memory(memory)
        print_memory(memory_tls)
        rip_errors = (sum(run.errors for run in runs if run.config.startswith("rip"))
                      + memory["errors"] + memory_tls["errors"]
                      + (profiled["errors"] if profiled else 0))
        new = {
            "machine": facts,
            "settings": asdict(settings) | {
                "load": f"wrk -t{settings.threads} -c{settings.connections} --latency",
                "configs": {config.name: f"{config.description}; GET {config.path}"
                            for config in CONFIGS},
            },
            "runs": [asdict(run) for run in runs],
            "medians": summary,
            "memory": memory,
            "memory_https_close": memory_tls,
            "profile": profiled,
            "rip_errors": rip_errors,
        }
        targets += checks
        parts.add("comparison")
    elif profiled:
        new["profile"] = profiled
        rip_errors += profiled["errors"]
    if profiled:
        print(f"profile: {profiled['svg']} and {profiled['text']}")
    failed_parts = [part for part in (rolling, cold) if part and "error" in part]
    failed_reloads = 0
    if rolling:
        checks = rolling_targets(rolling)
        print_rolling(rolling, checks)
        new["rolling"] = rolling
        targets += checks
        parts.add("rolling")
        if "error" not in rolling:
            rip_errors += sum(sum(kinds.values()) for kinds in rolling["errors"].values())
            failed_reloads = rolling["reloads_failed"]
    if cold:
        checks = cold_targets(cold)
        print_cold(cold, checks)
        new["cold_start"] = cold
        targets += checks
        parts.add("cold_start")
    write_results(new, targets, parts)
    if rip_errors or failed_reloads or failed_parts:
        print(f"rip runs saw {rip_errors} errors (non-2xx/3xx or socket errors), "
              f"{failed_reloads} rolling restarts failed, {len(failed_parts)} parts failed")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (RuntimeError, ValueError) as error:
        sys.exit(f"bench/compare.py: {error}")
