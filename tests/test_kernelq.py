"""Accept queues read through sock_diag, against real listeners on loopback and in a temp dir."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.diag import inet_diag_msg  # type: ignore[import-untyped]

from ripsvc import kernelq
from ripsvc.kernelq import KernelQueueError, Queue, tcp_listen_queues, unix_listen_queues
from tests.support.waiting import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
Opener = Callable[..., socket.socket]
Address = str | tuple[Any, ...]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


LOOPBACKS = [
    pytest.param(socket.AF_INET, "127.0.0.1", id="ipv4"),
    pytest.param(socket.AF_INET6, "::1", id="ipv6", marks=pytest.mark.skipif(
        not has_ipv6_loopback(), reason="this host has no IPv6 loopback")),
]


@pytest.fixture
def sock() -> Iterator[Opener]:
    """sock(family=AF_INET, type=SOCK_STREAM) → a socket closed after the test."""
    opened: list[socket.socket] = []

    def open_socket(family: int = socket.AF_INET,
                    kind: int = socket.SOCK_STREAM) -> socket.socket:
        new = socket.socket(family, kind)
        new.settimeout(2.0)
        opened.append(new)
        return new

    yield open_socket
    for each in opened:
        each.close()


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rip-k-"))  # short: Unix socket paths < 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def listen(sock: Opener, family: int, address: Address, backlog: int,
           reuseport: bool = False) -> socket.socket:
    server = sock(family)
    if family == socket.AF_INET6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if reuseport:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    server.bind(address)
    server.listen(backlog)
    return server


def connect(sock: Opener, family: int, address: Address, count: int) -> None:
    for _ in range(count):
        sock(family).connect(address)


def wait_for_tcp(port: int, expected: Queue) -> None:
    """The kernel moves a connection to the accept queue when the handshake's ACK lands."""
    wait_for(lambda: tcp_listen_queues([port]).get(port) == expected, timeout=2.0,
             what=f"port {port} to show {expected}")
    assert tcp_listen_queues([port]) == {port: expected}


@pytest.mark.parametrize(("family", "host"), LOOPBACKS)
def test_tcp_counts_connections_not_yet_accepted(sock: Opener, family: int, host: str) -> None:
    server = listen(sock, family, (host, 0), backlog=16)
    port = server.getsockname()[1]
    assert tcp_listen_queues([port]) == {port: Queue(queued=0, backlog=16)}

    connect(sock, family, (host, port), 5)
    wait_for_tcp(port, Queue(queued=5, backlog=16))

    for _ in range(5):
        server.accept()[0].close()
    assert tcp_listen_queues([port]) == {port: Queue(queued=0, backlog=16)}


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this host has no IPv6 loopback")
def test_tcp_sums_ipv4_and_ipv6_listeners_of_one_port(sock: Opener) -> None:
    v4 = listen(sock, socket.AF_INET, ("127.0.0.1", 0), backlog=16)
    port = v4.getsockname()[1]
    listen(sock, socket.AF_INET6, ("::1", port), backlog=8)

    connect(sock, socket.AF_INET, ("127.0.0.1", port), 2)
    connect(sock, socket.AF_INET6, ("::1", port), 3)
    wait_for_tcp(port, Queue(queued=5, backlog=24))


def test_tcp_sums_reuseport_listeners(sock: Opener) -> None:
    first = listen(sock, socket.AF_INET, ("127.0.0.1", 0), backlog=4, reuseport=True)
    port = first.getsockname()[1]
    listen(sock, socket.AF_INET, ("127.0.0.1", port), backlog=6, reuseport=True)

    connect(sock, socket.AF_INET, ("127.0.0.1", port), 4)  # spread over both by the kernel
    wait_for_tcp(port, Queue(queued=4, backlog=10))


def test_tcp_leaves_out_ports_without_listener(sock: Opener) -> None:
    server = listen(sock, socket.AF_INET, ("127.0.0.1", 0), backlog=3)
    port = server.getsockname()[1]
    unused = free_port()
    client = sock()  # a connected socket on `client_port`, but no listener there
    client.connect(("127.0.0.1", port))
    client_port = client.getsockname()[1]

    found = tcp_listen_queues([port, unused, client_port])
    assert found == {port: Queue(queued=1, backlog=3)}
    assert tcp_listen_queues([]) == {}


def test_unix_counts_connections_not_yet_accepted(sock: Opener, tmp_dir: Path) -> None:
    path = str(tmp_dir / "w.sock")
    server = listen(sock, socket.AF_UNIX, path, backlog=16)
    assert unix_listen_queues([path]) == {path: Queue(queued=0, backlog=16)}

    connect(sock, socket.AF_UNIX, path, 3)  # complete at once, no handshake to wait for
    assert unix_listen_queues([path]) == {path: Queue(queued=3, backlog=16)}

    for _ in range(3):
        server.accept()[0].close()
    assert unix_listen_queues([path]) == {path: Queue(queued=0, backlog=16)}


def test_unix_leaves_out_unknown_paths_and_other_socket_types(sock: Opener,
                                                             tmp_dir: Path) -> None:
    path = str(tmp_dir / "w.sock")
    listen(sock, socket.AF_UNIX, path, backlog=2)
    seqpacket = str(tmp_dir / "seq.sock")
    server = sock(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(seqpacket)
    server.listen(2)
    not_listening = str(tmp_dir / "bound.sock")
    sock(socket.AF_UNIX).bind(not_listening)

    found = unix_listen_queues([path, seqpacket, not_listening, str(tmp_dir / "none.sock")])
    assert found == {path: Queue(queued=0, backlog=2)}


def test_unix_ignores_an_old_listener_whose_file_was_replaced(sock: Opener,
                                                             tmp_dir: Path) -> None:
    path = str(tmp_dir / "w.sock")
    listen(sock, socket.AF_UNIX, path, backlog=16)
    connect(sock, socket.AF_UNIX, path, 1)
    os.unlink(path)  # the old listener lives on, still named `path`
    listen(sock, socket.AF_UNIX, path, backlog=5)
    connect(sock, socket.AF_UNIX, path, 2)

    assert unix_listen_queues([path]) == {path: Queue(queued=2, backlog=5)}


def test_works_inside_a_running_event_loop(sock: Opener) -> None:
    # The balancer calls this from its asyncio loop; pyroute2 0.9's DiagSocket cannot run there.
    server = listen(sock, socket.AF_INET, ("127.0.0.1", 0), backlog=7)
    port = server.getsockname()[1]

    async def read() -> dict[int, Queue]:
        return tcp_listen_queues([port])

    assert asyncio.run(read()) == {port: Queue(queued=0, backlog=7)}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to drop to an unprivileged user")
def test_works_unprivileged_on_sockets_of_another_user(sock: Opener, tmp_dir: Path) -> None:
    server = listen(sock, socket.AF_INET, ("127.0.0.1", 0), backlog=9)
    port = server.getsockname()[1]
    connect(sock, socket.AF_INET, ("127.0.0.1", port), 2)
    wait_for_tcp(port, Queue(queued=2, backlog=9))
    tmp_dir.chmod(0o755)
    path = str(tmp_dir / "w.sock")
    listen(sock, socket.AF_UNIX, path, backlog=4)
    connect(sock, socket.AF_UNIX, path, 3)

    script = ("import sys; from ripsvc.kernelq import tcp_listen_queues, unix_listen_queues; "
              "t = tcp_listen_queues([int(sys.argv[1])])[int(sys.argv[1])]; "
              "u = unix_listen_queues([sys.argv[2]])[sys.argv[2]]; "
              "print(t.queued, t.backlog, u.queued, u.backlog)")
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", script, str(port), path],
        cwd=REPO, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "9", "3", "4"]


def test_kernel_refusal_raises() -> None:
    request = kernelq._inet_listeners(socket.AF_INET)
    request["sdiag_protocol"] = 200  # no sock_diag handler for this protocol
    with kernelq._SockDiag() as diag, pytest.raises(KernelQueueError) as caught:
        diag.dump(request, inet_diag_msg)
    assert caught.value.errno == errno.ENOENT


def test_no_netlink_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    # What RestrictAddressFamilies= without AF_NETLINK gives: socket() fails with EAFNOSUPPORT.
    real_socket = socket.socket

    def no_netlink(*args: Any, **kwargs: Any) -> socket.socket:
        if args[:1] == (socket.AF_NETLINK,):
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return real_socket(*args, **kwargs)

    monkeypatch.setattr(socket, "socket", no_netlink)
    for call in (lambda: tcp_listen_queues([80]), lambda: unix_listen_queues(["/run/x"])):
        with pytest.raises(KernelQueueError) as caught:
            call()
        assert caught.value.errno == errno.EAFNOSUPPORT
        assert isinstance(caught.value, OSError)
        assert "NETLINK_SOCK_DIAG" in str(caught.value)
