"""HTTP clients for the tests: http.client over TCP or a Unix socket, raw bytes for edge cases."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from ripsvc.ctlclient import UnixHTTPConnection, send

__all__ = ["Raw", "UnixHTTPConnection", "control", "fetch", "get", "pipeline", "raw",
           "raw_tcp", "read_all", "read_responses", "request", "tcp"]


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


@dataclass
class Raw:
    """A response read off the wire: its status, header fields (lower-cased names, every
    one), body, and whether the connection ended before it was complete."""

    status: int
    fields: list[tuple[str, str]]
    body: bytes
    complete: bool = True

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.fields if n == name), None)


def read_responses(sock: socket.socket, methods: list[str], timeout: float = 10.0) -> list[Raw]:
    """The responses to `methods` (one per request sent), read in order off `sock`; the
    last one may be incomplete (complete=False) if the connection ended in its middle."""
    sock.settimeout(timeout)
    buffer = b""
    found: list[Raw] = []

    def fill() -> bool:
        nonlocal buffer
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return False
        buffer += chunk
        return bool(chunk)

    for method in methods:
        while b"\r\n\r\n" not in buffer:
            if not fill():
                return found
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        while lines[0].split(" ")[1].startswith("1"):  # an interim response: 100 Continue
            if b"\r\n\r\n" not in buffer and not fill():
                return found
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = [(n.strip().lower(), v.strip()) for n, _, v in
                  (line.partition(":") for line in lines[1:])]
        response = Raw(status, fields, b"")
        found.append(response)
        if method == "HEAD" or status in (204, 304):
            continue
        length = response.header("content-length")
        if length is not None:
            while len(buffer) < int(length):
                if not fill():
                    response.body, response.complete = buffer, False
                    return found
            response.body, buffer = buffer[:int(length)], buffer[int(length):]
        elif response.header("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in buffer:
                    if not fill():
                        response.body, response.complete = body, False
                        return found
                size_line, rest = buffer.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(rest) < size + 2:
                    if not fill():
                        response.body, response.complete = body, False
                        return found
                    size_line, rest = buffer.split(b"\r\n", 1)
                body += rest[:size]
                buffer = rest[size + 2:]
                if size == 0:
                    break
            response.body = body
        else:  # to the end of the connection
            while fill():
                pass
            response.body, buffer = buffer, b""
    return found


def pipeline(port: int, data: bytes, methods: list[str], timeout: float = 10.0,
             shut: bool = False) -> list[Raw]:
    """Send `data` (one or more requests) in one write, then read a response per method;
    `shut`: half-close after sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        return read_responses(sock, methods, timeout)
