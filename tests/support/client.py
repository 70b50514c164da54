"""HTTP clients for the tests: http.client over TCP or a Unix socket, raw bytes for edge cases."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from ripsvc.ctlclient import UnixHTTPConnection, send

__all__ = ["UnixHTTPConnection", "control", "fetch", "get", "raw", "raw_tcp", "read_all",
           "request", "tcp"]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    @property
    def text(self) -> str:
        return self.body.decode()


def request(conn: http.client.HTTPConnection, method: str, path: str,
            body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    start = time.monotonic()
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data,
                 time.monotonic() - start)


def get(path: str, target: str, **kwargs: object) -> Reply:
    """One request on a fresh connection."""
    conn = UnixHTTPConnection(path)
    try:
        return request(conn, "GET", target, **kwargs)  # type: ignore[arg-type]
    finally:
        conn.close()


def raw(path: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the worker sends until it closes (or goes quiet)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes (or goes quiet, or resets)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError, ssl.SSLError):
        pass
    return b"".join(chunks)


def tcp(port: int, timeout: float = 10.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def fetch(port: int, target: str, method: str = "GET", **kwargs: object) -> Reply:
    """One request to the balancer on a fresh connection."""
    conn = tcp(port)
    try:
        return request(conn, method, target, **kwargs)  # type: ignore[arg-type]
    finally:
        conn.close()


def raw_tcp(port: int, data: bytes, timeout: float = 5.0, pause: float = 0.0,
            rest: bytes = b"") -> bytes:
    """Send raw bytes (then, after `pause` seconds, `rest`); return all until close/quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if pause:
            time.sleep(pause)
        if rest:
            sock.sendall(rest)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def control(path: str, command: str, body: dict[str, Any] | None = None,
            timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """A command on a control socket: (HTTP status, decoded JSON reply)."""
    return send(path, command, body, timeout)
