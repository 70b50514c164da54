"""The balancer's edge over plain HTTP: host routing, forwarded-header trust, the client
address the app sees, PROXY protocol (raw and behind a real HAProxy), Prometheus metrics and
the kernel's accept queues."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import (
    UnixHTTPConnection,
    control,
    fetch,
    raw_tcp,
    read_all,
    request,
)
from tests.support.haproxy import running_haproxy
from tests.support.procs import TEST_APPS, nice_in_stat
from tests.support.waiting import free_port, wait_for


def status_of(port: int, host: str, path: str = "/pid") -> int:
    return fetch(port, path, headers={"Host": host}).status


def test_requests_are_routed_by_host(start_stack):
    stack = start_stack(workers=1, args=("--hosts", "Example.COM,*.wild.test,bücher.example"))
    port = stack.port
    for host in ("localhost", f"localhost:{port}", "127.0.0.1", "[::1]:80", "example.com",
                 "EXAMPLE.com.", "example.com:8080", "a.wild.test", "a.b.wild.test",
                 "xn--bcher-kva.example"):
        assert status_of(port, host) == 200, host
    for host in ("wild.test", "example.org", "notexample.com", "x.example.com", "[::2]"):
        reply = fetch(port, "/pid", headers={"Host": host})
        assert (reply.status, reply.body) == (404, b"404 unknown host\n"), host
    # The UTF-8 spelling of an international name is the same host as its punycode.
    reply = raw_tcp(port, "GET /pid HTTP/1.1\r\nHost: Bücher.example\r\nConnection: close"
                    "\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
    # HTTP/1.1 needs a Host; health checks answer whatever the host.
    assert raw_tcp(port, b"GET /pid HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert status_of(port, "unknown.example", "/server") == 200
    assert status_of(port, "unknown.example", "/status") == 200


def test_a_lone_star_serves_every_host(start_stack):
    stack = start_stack(workers=1, args=("--hosts", "*"))
    assert status_of(stack.port, "anything.example") == 200


def test_the_registry_follows_the_control_plane(start_stack, short_tmp):
    hosts_file = short_tmp / "hosts.json"
    hosts_file.write_text('{"hosts": ["from-file.example"]}')
    stack = start_stack(workers=1, args=("--hosts-file", str(hosts_file)))
    assert status_of(stack.port, "from-file.example") == 200
    status, reply = control(stack.control, "hosts", {"added": ["new.example"]})
    assert status == 200 and reply["data"]["added"] == ["new.example"]
    assert status_of(stack.port, "new.example") == 200
    assert status_of(stack.port, "from-file.example") == 404
    status, reply = control(stack.control, "hosts", {"added": ["bad host!"]})
    assert status == 400 and reply["error"]["code"] == "bad-host"


def test_a_corrupt_registry_stops_the_balancer_and_is_kept(short_tmp):
    from tests.support.procs import BalancerProcess

    hosts_file = short_tmp / "hosts.json"
    hosts_file.write_text('{"hosts": ["a.example", ')
    balancer = BalancerProcess(short_tmp, ["--hosts-file", str(hosts_file)])
    try:
        assert balancer.wait_exit() == 2
        assert f"{hosts_file}: not a host registry" in balancer.output()
        assert hosts_file.read_text() == '{"hosts": ["a.example", '
    finally:
        balancer.close()


def forwarded_view(port: int, headers: dict[str, str]) -> tuple[dict, dict]:
    client = json.loads(fetch(port, "/client", headers=headers).body)
    seen = json.loads(fetch(port, "/headers", headers=headers).body)
    return client, seen


def test_forwarded_headers_are_replaced_unless_from_a_trusted_proxy(start_stack):
    spoof = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "evil.example", "Rip-Client": "6.6.6.6:1"}
    untrusted = start_stack(workers=1)
    client, seen = forwarded_view(untrusted.port, spoof)
    assert client["client"][0] == "127.0.0.1" and client["scheme"] == "http"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{untrusted.port}"
    assert not any(name.startswith("rip-") for name in seen), seen

    trusted = start_stack(workers=1, args=("--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8"))
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 10.1.2.3",
             "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example"}
    client, seen = forwarded_view(trusted.port, chain)
    # The last address that is not a trusted proxy is the client; what is left of it could
    # have been made up by that client.
    assert client == {"client": ["203.0.113.9", 0], "scheme": "https"}
    assert seen["x-forwarded-for"] == "198.51.100.1, 203.0.113.9, 10.1.2.3, 127.0.0.1"
    assert seen["x-forwarded-host"] == "shop.example"


def test_a_wsgi_app_sees_the_client_in_remote_addr(start_stack):
    stack = start_stack(workers=1, app=str(TEST_APPS / "wsgi_client.py"))
    seen = json.loads(fetch(stack.port, "/", headers={"Rip-Client": "6.6.6.6:1"}).body)
    assert seen["REMOTE_ADDR"] == "127.0.0.1" and seen["REMOTE_PORT"] != "1"
    assert seen["url_scheme"] == "http" and seen["rip_headers"] == []


# -- PROXY protocol --------------------------------------------------------------------------
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(source: str, source_port: int, dest: str = "127.0.0.1", dest_port: int = 80,
             tlv: bytes = b"") -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton(dest) + struct.pack(
        "!HH", source_port, dest_port)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses) + len(tlv)) \
        + addresses + tlv


def client_through_proxy_header(port: int, header: bytes) -> bytes:
    return raw_tcp(port, header + b"GET /client HTTP/1.1\r\nHost: localhost\r\n"
                   b"Connection: close\r\n\r\n")


def test_proxy_protocol_v1_and_v2_give_the_client_address(start_stack):
    stack = start_stack(workers=1, args=("--proxy-protocol",))
    v1 = client_through_proxy_header(stack.port, b"PROXY TCP4 198.51.100.7 127.0.0.1 "
                                     b"40001 80\r\n")
    assert v1.startswith(b"HTTP/1.1 200")
    assert json.loads(v1.partition(b"\r\n\r\n")[2])["client"] == ["198.51.100.7", 40001]
    v6 = client_through_proxy_header(stack.port, b"PROXY TCP6 2001:db8::7 ::1 40002 443\r\n")
    assert json.loads(v6.partition(b"\r\n\r\n")[2])["client"] == ["2001:db8::7", 40002]
    v2 = client_through_proxy_header(stack.port, proxy_v2("192.0.2.44", 40003,
                                                          tlv=b"\x04\x00\x01x"))
    assert json.loads(v2.partition(b"\r\n\r\n")[2])["client"] == ["192.0.2.44", 40003]
    # UNKNOWN / LOCAL: the connection's own peer stays the client.
    unknown = client_through_proxy_header(stack.port, b"PROXY UNKNOWN\r\n")
    assert json.loads(unknown.partition(b"\r\n\r\n")[2])["client"][0] == "127.0.0.1"
    local = client_through_proxy_header(stack.port, V2_SIGNATURE + b"\x20\x00\x00\x00")
    assert json.loads(local.partition(b"\r\n\r\n")[2])["client"][0] == "127.0.0.1"


@pytest.mark.parametrize("header", [
    b"GET /client HTTP/1.1\r\nHost: localhost\r\n\r\n",  # no PROXY header at all
    b"PROXY TCP4 198.51.100.7 127.0.0.1 70000 80\r\n",
    b"PROXY TCP4 999.1.1.1 127.0.0.1 1 80\r\n",
    b"PROXY UDP4 198.51.100.7 127.0.0.1 1 80\r\n",
    b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
    V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12,  # UDP
    V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
    V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # shorter than its addresses
])
def test_a_malformed_proxy_header_closes_the_connection(start_stack, header):
    stack = start_stack(workers=1, args=("--proxy-protocol",))
    reply = raw_tcp(stack.port, header + b"GET /client HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert reply == b""  # closed, not answered
    assert fetch_proxied_ok(stack.port)  # and the listener goes on serving


def fetch_proxied_ok(port: int) -> bool:
    reply = client_through_proxy_header(port, b"PROXY TCP4 192.0.2.1 127.0.0.1 5 80\r\n")
    return reply.startswith(b"HTTP/1.1 200")


HAPROXY_CONFIG = """
global
    maxconn 100
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend v1
    bind 127.0.0.1:{v1_port}
    default_backend rip_v1
frontend v2
    bind 127.0.0.1:{v2_port}
    default_backend rip_v2
backend rip_v1
    server rip 127.0.0.1:{rip_port} send-proxy
backend rip_v2
    server rip 127.0.0.1:{rip_port} send-proxy-v2
"""


def test_behind_a_real_haproxy_with_send_proxy_v1_and_v2(start_stack, short_tmp):
    stack = start_stack(workers=1, args=("--proxy-protocol",))
    v1_port, v2_port = free_port(), free_port()
    config = HAPROXY_CONFIG.format(v1_port=v1_port, v2_port=v2_port, rip_port=stack.port)
    with running_haproxy(config, short_tmp, (v1_port, v2_port)):
        for front in (v1_port, v2_port):
            # The client connects from 127.0.0.2; HAProxy from 127.0.0.1: the app sees the
            # address HAProxy saw, carried by the PROXY header.
            with socket.create_connection(("127.0.0.1", front), timeout=10,
                                          source_address=("127.0.0.2", 0)) as sock:
                sock.sendall(b"GET /client HTTP/1.1\r\nHost: localhost\r\n"
                             b"Connection: close\r\n\r\n")
                reply = read_all(sock)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            assert json.loads(reply.partition(b"\r\n\r\n")[2])["client"][0] == "127.0.0.2"


# -- metrics and the kernel's view ----------------------------------------------------------------
def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_prometheus_metrics_on_the_control_socket_and_a_loopback_port(start_stack):
    metrics_port = free_port()
    stack = start_stack(workers=2, args=("--metrics-port", str(metrics_port)))
    for _ in range(20):
        assert fetch(stack.port, "/pid").status == 200
    for _ in range(3):
        assert status_of(stack.port, "nobody.example") == 404
    conn = UnixHTTPConnection(stack.control)
    reply = request(conn, "GET", "/metrics")
    conn.close()
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = metric_samples(reply.text)
    assert samples[("rip_requests_total", (("code", "2xx"),))] == 20
    assert samples[("rip_requests_total", (("code", "4xx"),))] == 3
    assert samples[("rip_request_duration_seconds_count", ())] == 23
    assert samples[("rip_request_duration_seconds_bucket", (("le", "+Inf"),))] == 23
    assert samples[("rip_workers", (("state", "ready"),))] == 2
    assert samples[("rip_queue_max", ())] == 1024
    assert samples[("rip_access_log_lost_total", ())] == 0
    assert ("rip_kernel_accept_queue", (("socket", f"port:{stack.port}"),)) in samples
    assert ("rip_kernel_accept_queue", (("socket", "worker:1"),)) in samples
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        scraped = metric_samples(r.read().decode())
    assert scraped[("rip_requests_total", (("code", "2xx"),))] == 20
    # Label values stay bounded: unknown hosts and paths make no new series.
    assert {name for name, _ in samples} >= {"rip_retries_total", "rip_queue_wait_seconds_sum",
                                             "rip_worker_restarts_total", "rip_reloads_total"}


def test_the_kernel_accept_queue_of_a_worker_socket_moves(start_stack):
    stack = start_stack(workers=1)
    worker = stack.workers[0]

    def queued() -> int:
        _, reply = control(stack.control, "kernel")
        return int(reply["data"]["worker:1"]["queued"])

    assert queued() == 0
    os.kill(worker.pid, signal.SIGSTOP)  # it accepts nothing while stopped
    waiting = []
    try:
        for _ in range(3):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(worker.socket_path))
            waiting.append(sock)
        wait_for(lambda: queued() == 3, 5, "3 connections in the worker's accept queue")
        _, reply = control(stack.control, "kernel")
        assert reply["data"][f"port:{stack.port}"]["backlog"] == min(4096, somaxconn())
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    for sock in waiting:
        sock.close()
    wait_for(lambda: queued() == 0, 5, "the worker to accept them")


def test_stats_of_a_listening_port_move_when_the_balancer_is_stopped(start_stack):
    stack = start_stack(workers=1)
    from ripsvc import kernelq

    os.kill(stack.balancer.pid, signal.SIGSTOP)
    clients = []
    try:
        for _ in range(4):
            clients.append(socket.create_connection(("127.0.0.1", stack.port), timeout=5))
        wait_for(lambda: kernelq.tcp_listen_queues([stack.port])[stack.port].queued == 4, 5,
                 "4 connections in the port's accept queue")
    finally:
        os.kill(stack.balancer.pid, signal.SIGCONT)
    for sock in clients:
        sock.close()

    def queued() -> int:
        _, reply = control(stack.control, "kernel")
        return int(reply["data"][f"port:{stack.port}"]["queued"])

    wait_for(lambda: queued() == 0, 5, "the balancer to accept them once resumed")


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def test_an_aiohttp_app_sees_the_client_in_request_remote(start_stack):
    stack = start_stack(workers=1, app=str(TEST_APPS / "aiohttp_client.py"))
    seen = json.loads(fetch(stack.port, "/", headers={"Rip-Client": "6.6.6.6:1"}).body)
    assert seen == {"remote": "127.0.0.1", "scheme": "http", "rip_headers": []}


def _nice_of(pid: int) -> int:
    return nice_in_stat(Path(f"/proc/{pid}/stat").read_text())


def test_the_balancer_runs_above_its_workers_priority(start_stack):
    # Every request waits for the balancer twice: it must not queue behind the workers' wake-ups.
    # (Its log goes to a file here, not to journald: auto means -5.)
    stack = start_stack()
    assert _nice_of(stack.balancer.pid) == -5
    assert {_nice_of(worker.pid) for worker in stack.workers} == {0}
    assert _nice_of(start_stack(workers=1, args=("--nice", "0")).balancer.pid) == 0


def test_without_the_privilege_the_balancer_keeps_its_priority_and_says_so():
    program = ("import logging, os\n"
               "from ripsvc import logs\n"
               "from ripsvc.process import set_priority\n"
               "logs.setup('balancer', level=logging.INFO, APP='probe')\n"
               "set_priority('balancer', -5)\n"
               "print(os.getpriority(os.PRIO_PROCESS, 0))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    # What an unprivileged rip-server is: root without CAP_SYS_NICE (util-linux's setpriv).
    result = subprocess.run(["setpriv", "--bounding-set=-sys_nice", sys.executable, "-c",
                             program], capture_output=True, text=True, env=env, timeout=60,
                            check=True)
    assert result.stdout.strip() == "0"
    assert "running at nice 0: nice -5 needs root or CAP_SYS_NICE" in result.stderr
