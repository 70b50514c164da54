"""HTTP clients for the tests: http.client over a Unix socket, and raw bytes for edge cases."""

from __future__ import annotations

import http.client
import socket
import time
from dataclasses import dataclass


class UnixHTTPConnection(http.client.HTTPConnection):
    """A keep-alive HTTP/1.1 connection to a Unix socket (http.client does the framing)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


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
