"""Several hosts on this machine: network namespaces joined by veth pairs, made by the test and
removed after it, with rip-server, HAProxy and a load client each in its own namespace.

Addresses come from 198.18.0.0/15 (RFC 2544, kept for benchmarking networks) and exist only
inside the namespaces made here: no route leads out of them, so the traffic stays there.

    client (198.18.100.2) ── veth ── (198.18.100.1:8080) HAProxy (198.18.N.1)
                                                 └── veth ── (198.18.N.2:8000) rip host N
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ripsvc import paths
from tests.support.procs import REPO, TEST_APPS

CLIENT_ADDRESS = "198.18.100.2"
FRONT_ADDRESS = "198.18.100.1"
FRONT_PORT = 8080
RIP_PORT = 8000
AGENT_PORT = 5555
LOADGEN = Path(__file__).with_name("loadgen.py")


def host_address(n: int) -> str:
    return f"198.18.{n}.2"


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr}")
    return done.stdout


class Network:
    """The namespaces and links; `close` removes every one of them (and their links)."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"rf{os.urandom(2).hex()}"
        self.namespaces: list[str] = []
        self.client = self._namespace("cl")
        self.balancer = self._namespace("lb")
        self.hosts = [self._namespace(f"h{n}") for n in range(1, hosts + 1)]
        self._link(self.client, CLIENT_ADDRESS, self.balancer, FRONT_ADDRESS, "c")
        for n, host in enumerate(self.hosts, 1):
            self._link(self.balancer, f"198.18.{n}.1", host, host_address(n), f"{n}")

    def _namespace(self, role: str) -> str:
        name = f"{self.tag}-{role}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _link(self, left: str, left_address: str, right: str, right_address: str,
              label: str) -> None:
        a, b = f"{self.tag}a{label}", f"{self.tag}b{label}"  # ≤ 15 characters
        run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        for end, namespace, address in ((a, left, left_address), (b, right, right_address)):
            run("ip", "link", "set", end, "netns", namespace)
            run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", end)
            run("ip", "-n", namespace, "link", "set", end, "up")

    def exec(self, namespace: str) -> list[str]:
        return ["ip", "netns", "exec", namespace]

    def close(self) -> None:
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


class RipHost:
    """`rip-server` in the host's namespace, serving a copy of tests/apps/fleet_host.py from a
    directory named after the host, behind HAProxy (PROXY protocol v2, the agent port)."""

    def __init__(self, network: Network, n: int, workdir: Path) -> None:
        self.n = n
        self.name = f"fleet-{network.tag}-h{n}"
        self.directory = workdir / f"h{n}"
        self.directory.mkdir()
        shutil.copy(TEST_APPS / "fleet_host.py", self.directory / "app.py")
        self.deploy("1")
        self.log = workdir / f"h{n}.log"
        out = open(self.log, "wb")  # noqa: SIM115 (closed once passed on)
        address = host_address(n)
        try:
            self.proc = subprocess.Popen(
                [*network.exec(network.hosts[n - 1]), sys.executable, "-c",
                 "from ripsvc.cli import serve_main; serve_main()", str(self.directory),
                 "w:2", "--websocket-workers", "0", f"http:{address}:{RIP_PORT}",
                 "--name", self.name, "--proxy-protocol", "--hosts", FRONT_ADDRESS,
                 "--agent-port", f"{address}:{AGENT_PORT}", "--reload", "process"],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO),
                     "STATE_DIRECTORY": str(workdir / f"h{n}-state")})
        finally:
            out.close()

    def deploy(self, version: str) -> None:
        (self.directory / "VERSION").write_text(version)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ripctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """ripctl COMMAND NAME ARGS: through the manager's Unix socket, from any namespace."""
        done = subprocess.run([sys.executable, "-c", "from ripsvc.cli import ripctl_main; "
                               "ripctl_main()", args[0], self.name, *args[1:]],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        if check and done.returncode != 0:
            raise AssertionError(f"ripctl {' '.join(args)}: {done.stderr}\n{self.output()}")
        return done

    def status(self) -> dict[str, object]:
        return dict(json.loads(self.ripctl("status", "--json").stdout))

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            done = self.ripctl("status", "--json", check=False)
            if done.returncode == 0 and json.loads(done.stdout)["health"] == "healthy":
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not healthy in {timeout} s:\n{self.output()}")

    def idle(self) -> bool:
        """No request in flight or waiting on this host."""
        status = self.status()
        workers = status["workers"]
        assert isinstance(workers, list)
        queue = status["queue"]
        assert isinstance(queue, dict)
        return queue["depth"] == 0 and all(w["state"] != "busy" for w in workers)

    def pids(self) -> list[int]:
        """The manager and every process it started (balancer, workers)."""
        out = run("ps", "-o", "pid=", "--ppid", str(self.proc.pid))
        return [self.proc.pid, *map(int, out.split())]

    def kill(self) -> None:
        """The host dies: SIGKILL to each of its processes, by PID."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(paths.app_dir(self.name), ignore_errors=True)


HAPROXY_CONFIG = """\
global
    stats socket {stats} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout check 1s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend fleet
    bind {front}:{front_port}
    default_backend rip

backend rip
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    default-server {server_options}
{servers}
"""
#: Every rip host: PROXY v2 on requests and checks, readiness checked, the agent asked, at
#: most 4 requests at once (twice its workers: HAProxy queues the rest).
SERVER_OPTIONS = ("send-proxy-v2 check check-send-proxy inter {inter} fall 2 rise 2 "
                  "agent-check agent-port {agent_port} agent-inter {inter} weight 100 "
                  "maxconn 4")


class HAProxy:
    """HAProxy in its namespace, checking each rip host's readiness and agent."""

    def __init__(self, network: Network, hosts: int, workdir: Path, inter: str) -> None:
        self.stats_path = workdir / "haproxy.sock"
        servers = "\n".join(f"    server h{n} {host_address(n)}:{RIP_PORT}"
                            for n in range(1, hosts + 1))
        config = workdir / "haproxy.cfg"
        options = SERVER_OPTIONS.format(inter=inter, agent_port=AGENT_PORT)
        config.write_text(HAPROXY_CONFIG.format(
            stats=self.stats_path, front=FRONT_ADDRESS, front_port=FRONT_PORT,
            server_options=options, servers=servers))
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        assert os.path.exists(haproxy), "haproxy is installed by make test (apt)"
        self.log = workdir / "haproxy.log"
        out = open(self.log, "wb")  # noqa: SIM115 (closed once passed on)
        try:
            self.proc = subprocess.Popen([*network.exec(network.balancer), haproxy, "-db",
                                          "-f", str(config)], stdout=out,
                                         stderr=subprocess.STDOUT)
        finally:
            out.close()
        deadline = time.monotonic() + 10
        while not self.stats_path.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "HAProxy did not start"
            time.sleep(0.05)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_path))
            sock.sendall(line.encode() + b"\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend's servers, by name."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(text.splitlines())
        return {row["svname"]: row for row in rows
                if row["pxname"] == "rip" and row["svname"] not in ("BACKEND", "FRONTEND")}

    def wait_status(self, server: str, accept: tuple[str, ...], timeout: float) -> float:
        """Seconds until `server`'s status starts with one of `accept`."""
        start = time.monotonic()
        while True:
            status = self.servers()[server]["status"]
            if status.startswith(accept):
                return time.monotonic() - start
            assert time.monotonic() - start < timeout, (server, status, accept)
            time.sleep(0.02)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Load:
    """tests/support/loadgen.py in the client's namespace, bounded in count and time."""

    def __init__(self, network: Network, workdir: Path, name: str, clients: int,
                 max_seconds: float, max_requests: int) -> None:
        self.stopfile = workdir / f"{name}.stop"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*network.exec(network.client), sys.executable, str(LOADGEN),
             f"http://{FRONT_ADDRESS}:{FRONT_PORT}/", str(self.stopfile), "--clients",
             str(clients), "--max-seconds", str(max_seconds), "--max-requests",
             str(max_requests)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self) -> dict[str, object]:
        self.stopfile.touch()
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return dict(json.loads(out))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stopfile.touch()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
