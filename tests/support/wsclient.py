"""A small blocking WebSocket client for the tests (wsproto, which the workers use too)."""

from __future__ import annotations

import contextlib
import socket
import ssl

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class Refused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"refused with {status}")
        self.status = status
        self.body = body


class WebSocket:
    def __init__(self, port: int, path: str = "/echo", *, tls: bool = False,
                 timeout: float = 10.0, headers: list[tuple[bytes, bytes]] | None = None,
                 host: str = "localhost") -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            raw = context.wrap_socket(raw, server_hostname=host)
        self.sock = raw
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.closed: int | None = None  # the close code received
        self.pending: list[object] = []  # events that came with the handshake's answer
        self.sock.sendall(self.ws.send(Request(host=host, target=path,
                                               extra_headers=headers or [])))
        body = b""
        while True:
            events = self._events()
            for n, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    self.pending = events[n + 1:]
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise Refused(status, b"")
                elif isinstance(event, RejectData):
                    body += bytes(event.data)
                    if event.body_finished:
                        raise Refused(status, body)

    def _events(self) -> list[object]:
        if self.pending:
            events, self.pending = self.pending, []
            return events
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        if not data and not self.closed:
            self.closed = 1006
        return list(self.ws.events())

    def send(self, message: str | bytes) -> None:
        event = TextMessage(data=message) if isinstance(message, str) else \
            BytesMessage(data=message)
        self.sock.sendall(self.ws.send(event))

    def receive(self) -> str | bytes | None:
        """The next message; None once the WebSocket is closed (`closed` says with what)."""
        parts: list[str | bytes] = []
        while self.closed is None:
            for event in self._events():
                if isinstance(event, TextMessage | BytesMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        if isinstance(event, TextMessage):
                            return "".join(str(p) for p in parts)
                        return b"".join(bytes(p) for p in parts)
                elif isinstance(event, Ping):
                    self.sock.sendall(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.closed = event.code
                    if self.ws.state == ConnectionState.REMOTE_CLOSING:  # not at a bare EOF
                        with contextlib.suppress(OSError):
                            self.sock.sendall(self.ws.send(event.response()))
        return None

    def close(self, code: int = 1000) -> None:
        with contextlib.suppress(Exception):
            self.sock.sendall(self.ws.send(CloseConnection(code=code)))
        self.sock.close()
