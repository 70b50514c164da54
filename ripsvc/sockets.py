"""Listening sockets a process creates itself (development; under systemd they are passed in)."""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass


class SocketError(RuntimeError):
    """No usable listening socket."""


@dataclass(frozen=True)
class Bind:
    """A listening address a process creates itself."""

    path: str | None = None
    host: str | None = None
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> Bind:
        """`PATH` (Unix socket), `tcp:HOST:PORT`, or `http:PORT` (every IPv4 interface)."""
        if text.startswith("http:"):
            port = text[5:]
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{text!r}: expected http:PORT with PORT in 1..65535")
            return cls(host="0.0.0.0", port=int(port))
        if text.startswith("tcp:"):
            host, sep, port = text[4:].rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"{text!r}: expected tcp:HOST:PORT")
            return cls(host=host.strip("[]") or "127.0.0.1", port=int(port))
        if not text:
            raise ValueError("empty socket path")
        return cls(path=text)

    def open(self) -> socket.socket:
        if self.path is not None:
            return _bind_unix(self.path)
        assert self.host is not None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(1024)
        return sock


def _bind_unix(path: str) -> socket.socket:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
        else:
            raise SocketError(f"{path} exists and is not a socket; refusing to replace it")
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1024)
    return sock


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
