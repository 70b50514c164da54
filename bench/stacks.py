"""The configurations of the comparison: rip and the stacks it replaces, each started afresh
in a directory of its own from the templates in bench/conf/, on a free 127.0.0.1 port
(bench/README.md has the table). `launched(config, …)` starts one, waits until it answers and
stops all of it on leaving; bench/ab.py starts two builds of `rip` with it.
"""

from __future__ import annotations

import contextlib
import os
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common import (
    ROOT,
    VENV_BIN,
    Proc,
    Stack,
    free_port,
    over_tcp,
    over_tls,
    over_unix,
    wait_ready,
)

from ripsvc.balancer.options import NICE

CONF = ROOT / "bench" / "conf"


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


def certificate(stack: Stack) -> tuple[Path, Path]:
    """A self-signed certificate for this stack (what rip makes when none is configured)."""
    from ripsvc import tls

    found = tls.resolve("", "", ["localhost"], stack.dir / "certs", mkcert=None)
    return found.cert, found.key


def start_backends(stack: Stack, commands: dict[str, tuple[Path, list[str]]]) -> None:
    """Start every NAME: (SOCKET, COMMAND) at once, then wait until each socket answers /ping."""
    started = [(stack.start(name, command), path) for name, (path, command) in commands.items()]
    for proc, path in started:
        wait_ready(proc, over_unix(path), "/ping")


#: The apps on both sides of a comparison: ASGI against uvicorn, WSGI against gunicorn.
ASGI_APP = "examples/hello"
WSGI_APP = "examples/hello_wsgi"


def start_rip_workers(stack: Stack, app: str = ASGI_APP) -> list[Path]:
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
            ".venv/bin/uvicorn", "--app-dir", ASGI_APP, "app:app",
            "--uds", str(stack.dir / f"u{n}.sock"), "--log-level", "warning",
            "--no-access-log", "--loop", "uvloop", "--http", "httptools",
        ])
        for n in (1, 2)
    })


def start_gunicorn(stack: Stack) -> None:
    path = stack.dir / "gunicorn.sock"
    start_backends(stack, {
        "gunicorn": (path, [
            ".venv/bin/gunicorn", "--chdir", WSGI_APP, "-w", "2", "-k", "sync",
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
    return start_balancer(stack, start_rip_workers(stack, WSGI_APP), access_log=True)


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


# In rip's place, HAProxy gets the priority rip's balancer runs at: the same chances. It and
# bench/floor.py front rip's workers serving the WSGI app: they bound what rip could make of
# them against nginx -> gunicorn (rip-wsgi, rip-https).
def haproxy_rip(stack: Stack) -> Proc:
    start_rip_workers(stack, WSGI_APP)
    return start_haproxy(stack, "w", nice=NICE)


def haproxy_https_rip(stack: Stack) -> Proc:
    start_rip_workers(stack, WSGI_APP)
    return start_haproxy(stack, "w", tls=True, nice=NICE)


def start_floor(stack: Stack, tls: bool = False) -> Proc:
    """bench/floor.py in front of rip's two WSGI workers, at rip's balancer priority."""
    workers = start_rip_workers(stack, WSGI_APP)
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
    return start_balancer(stack, start_rip_workers(stack, WSGI_APP), access_log=True, tls=True)


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
    Config("rip-https", "rip-wsgi, the balancer serving HTTPS (TLS 1.3, self-signed P-256), "
           "keep-alive clients", "/ping", rip_https, scheme="https"),
    Config("nginx-https-gunicorn", "nginx serving HTTPS (the same certificate) -> 2 gunicorn "
           "sync workers, keep-alive clients", "/ping", nginx_https_gunicorn, scheme="https"),
    Config("haproxy-rip", "HAProxy as in haproxy-uvicorn -> the 2 rip workers of rip-wsgi: "
           "what a balancer in C makes of the same workers (at rip's balancer priority, nice "
           f"{NICE})", "/ping", haproxy_rip),
    Config("haproxy-https-rip", "haproxy-rip serving HTTPS (the same certificate, keep-alive "
           "clients)", "/ping", haproxy_https_rip, scheme="https"),
    Config("floor-rip", "bench/floor.py -> the 2 rip workers of rip-wsgi: a balancer in Python "
           "that only frames requests and responses (no HTTP parsing, headers, log or "
           f"timeouts), at nice {NICE}", "/ping", floor_rip),
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
