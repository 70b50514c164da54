"""What an aiohttp app is told about a request that came through the balancer: the same as an
ASGI or a WSGI app (tests/test_conformance_asgi.py, test_conformance_wsgi.py)."""

from __future__ import annotations

import json

import pytest

from tests.support.client import raw
from tests.support.procs import TEST_APPS

APP = str(TEST_APPS / "aiohttp_seen.py")


def seen(socket_path: str, head: str) -> dict[str, object]:
    data = raw(socket_path, f"GET / HTTP/1.0\r\n{head}\r\n".encode())
    assert data.startswith(b"HTTP/1.0 200 OK"), data
    result: dict[str, object] = json.loads(data.partition(b"\r\n\r\n")[2])
    return result


def test_header_names_with_underscores_and_rip_headers_are_not_shown(start_worker):
    worker = start_worker(APP)
    got = seen(worker.socket_path, "Host: example.org\r\nrip-client: 203.0.113.7:5000\r\n"
                                   "rip-server: 192.0.2.1:8443\r\nX-Forwarded-Proto: https\r\n"
                                   "X_Auth_User: evil\r\nX-Auth-User: good\r\n")
    assert got == {"remote": "203.0.113.7", "scheme": "https", "host": "example.org",
                   "headers": ["Host", "X-Auth-User", "X-Forwarded-Proto"]}
    # Straight to the worker, without the balancer's headers: underscores are dropped too.
    got = seen(worker.socket_path, "Host: example.org\r\nX_Auth_User: evil\r\n")
    assert got["headers"] == ["Host"]


@pytest.mark.parametrize("server", ["192.0.2.1:8443", "[2001:db8::1]:443"])
def test_without_a_host_header_the_host_is_where_the_client_connected(start_worker, server):
    # aiohttp would put this machine's name there (socket.getfqdn()).
    worker = start_worker(APP)
    got = seen(worker.socket_path, f"rip-client: 203.0.113.7:5000\r\nrip-server: {server}\r\n")
    assert got["host"] == server
