"""Listening sockets a process creates itself (development; under systemd they are passed in)."""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass, replace

#: Where a port that cannot be had falls back to (the seeds' rule: 443/80, else 5000 and up).
FALLBACK_FIRST = 5000
FALLBACK_LAST = 5099


class SocketError(OSError):
    """No usable listening socket; `errno` is the system's reason, when there is one."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


@dataclass(frozen=True)
class Bind:
    """A listening address a process creates itself."""

    path: str | None = None
    host: str | None = None
    port: int = 0
    tls: bool = False  # HTTPS on this port
    #: Without systemd, a port that is taken or privileged falls back to the next free one
    #: from 5000 (`https` without a port; the automatic redirect port).
    fallback: bool = False
    redirect: bool = False  # plain HTTP that only answers 301 to HTTPS

    @classmethod
    def parse(cls, text: str) -> Bind:
        """`PATH` (Unix socket), `tcp:HOST:PORT`, `http:[HOST:]PORT` (HOST: every IPv4
        interface unless given), `https:[HOST:]PORT` or a bare `PORT` (HTTPS), `https` (443,
        else the next free port from 5000)."""
        if text == "https":
            return cls(host="0.0.0.0", port=443, tls=True, fallback=True)
        if text.isdigit():
            text = f"https:{text}"
        scheme, sep, rest = text.partition(":")
        if sep and scheme in ("http", "https"):
            host, _, port = rest.rpartition(":")
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{text!r}: expected {scheme}:[HOST:]PORT with PORT in "
                                 "1..65535")
            return cls(host=host.strip("[]") or "0.0.0.0", port=int(port),
                       tls=scheme == "https")
        if text.startswith("tcp:"):
            host, sep, port = text[4:].rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"{text!r}: expected tcp:HOST:PORT")
            return cls(host=host.strip("[]") or "127.0.0.1", port=int(port))
        if not text:
            raise ValueError("empty socket path")
        return cls(path=text)

    def open(self) -> socket.socket:
        """Bind and listen; a `fallback` address that is taken (EADDRINUSE) or privileged
        (EACCES) moves to the next free port from 5000."""
        if self.path is not None:
            return _bind_unix(self.path)
        try:
            return self._bind_tcp(self.port)
        except OSError as exc:
            if not self.fallback or exc.errno not in (errno.EACCES, errno.EADDRINUSE):
                raise self.cannot_listen(exc) from None
        for port in range(FALLBACK_FIRST, FALLBACK_LAST + 1):
            try:
                return self._bind_tcp(port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise SocketError(f"port {self.port} cannot be had and none of "
                          f"{FALLBACK_FIRST}..{FALLBACK_LAST} is free")

    def _bind_tcp(self, port: int) -> socket.socket:
        assert self.host is not None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        return sock

    def cannot_listen(self, exc: OSError) -> Exception:
        """The error a person can act on: which address, why, and what to type instead."""
        assert self.host is not None
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        scheme = "https" if self.tls else "http"
        other = self.port + 1 if self.port < 65535 else 8000
        if exc.errno == errno.EADDRINUSE:
            return SocketError(f"cannot listen on {address}: the address is already in use "
                               f"(another process listens on port {self.port}: `ss -ltnp "
                               f"'sport = {self.port}'` shows which); choose another port, "
                               f"e.g. {scheme}:{other}", exc.errno)
        if exc.errno == errno.EACCES and self.port < 1024:
            return SocketError(f"cannot listen on {address}: ports below 1024 need root or "
                               "CAP_NET_BIND_SERVICE (under systemd, rip@APP opens them); "
                               f"choose a port from 1024, e.g. {scheme}:8080", exc.errno)
        if exc.errno == errno.EADDRNOTAVAIL:
            return SocketError(f"cannot listen on {address}: no interface of this machine "
                               f"has the address {self.host}", exc.errno)
        return exc

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "redirect" if self.redirect else "http"

    def at_port(self, port: int) -> Bind:
        return replace(self, port=port, fallback=False)


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
    sock.listen(BACKLOG)
    return sock


#: asyncio listens again on a socket it is given, with a backlog of 100 unless told: that
#: would shrink systemd's Backlog= (and ours). The kernel caps it at net.core.somaxconn.
BACKLOG = 4096


def local_port(sock: socket.socket) -> int:
    """The TCP port a socket is bound to (0 for a Unix socket)."""
    if sock.family == socket.AF_UNIX:
        return 0
    return int(sock.getsockname()[1])


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
