"""WebSockets for ASGI apps: the worker's end of a WebSocket that the balancer relays.

A WebSocket worker (`rip-worker --websocket`) runs the same app as the HTTP workers, but holds
many connections at once in its event loop, since a WebSocket lives for minutes or hours and
must not take one of the single-request workers. Each connection from the balancer carries one
upgrade request; the handshake and the frames are wsproto's (a sans-IO protocol library, as
Debian's python3-wsproto), the ASGI `websocket` scope is ours (ASGI 3, spec 2.3 with the denial
response extension).

The worker, not the balancer, speaks the protocol: it answers pings, sends its own on an idle
connection and closes one that does not answer, refuses messages larger than the limit (1009),
and on a graceful stop lets connections end on their own for graceful_timeout, then closes the
rest with 1001 (going away).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ripsvc import logs
from ripsvc.worker.request import parse_client

if TYPE_CHECKING:
    from ripsvc.worker.core import WebSocketLimits, Worker

log = logs.get("worker.websocket")

ASGI_INFO = {"version": "3.0", "spec_version": "2.3"}
Message = dict[str, Any]
MAX_HEAD_BYTES = 64 * 1024
#: Received messages the app has not taken yet before reading from the socket pauses.
QUEUE_HIGH = 32
QUEUE_LOW = 8
#: How long a close we sent waits for the client's before the connection is ended anyway.
CLOSE_WAIT = 1.0
GOING_AWAY = 1001


class Hub:
    """The worker's WebSockets: counts, the idle-ping sweep, and the graceful stop."""

    def __init__(self, worker: Worker, limits: WebSocketLimits) -> None:
        self.worker = worker
        self.limits = limits
        self.loop = worker.loop
        self.connections: set[WebSocketConnection] = set()
        self.opened = 0
        self._sweep: asyncio.TimerHandle | None = None

    def factory(self) -> WebSocketConnection:
        return WebSocketConnection(self)

    def start(self) -> None:
        if self.limits.ping_interval:
            self._sweep = self.loop.call_later(self._sweep_every(), self._ping_idle)

    def _sweep_every(self) -> float:
        return max(0.1, min(self.limits.ping_interval, self.limits.ping_timeout) / 4)

    def _ping_idle(self) -> None:
        self._sweep = self.loop.call_later(self._sweep_every(), self._ping_idle)
        now = time.monotonic()
        for conn in list(self.connections):
            try:
                conn.check_alive(now)
            except Exception:  # one connection's trouble must not stop the sweep
                log.exception("checking a WebSocket connection")
                conn.abort()

    @property
    def open(self) -> int:
        return len(self.connections)

    async def stop(self, grace: float) -> None:
        """Let connections end on their own for `grace` seconds, then close the rest with
        1001 and give them CLOSE_WAIT to answer."""
        if self._sweep is not None:
            self._sweep.cancel()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if not self.connections:
            return
        log.info("closing %d WebSockets (going away)", len(self.connections))
        for conn in list(self.connections):
            conn.close_going_away()
        deadline = self.loop.time() + CLOSE_WAIT
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket: the upgrade request, the app's task, and the frames both ways."""

    transport: asyncio.Transport

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.ws = WSConnection(ConnectionType.SERVER)
        self.app = hub.worker.host.app
        self.head = b""  # the upgrade request, until it is complete
        self.scope: Message | None = None
        self.task: asyncio.Task[None] | None = None
        self.inbox: deque[Message] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.accepted = False
        self.closed = False  # the connection is gone, or a close was exchanged
        self.close_code = 1006
        self.reading = True
        self.writable = True
        self._drain: asyncio.Future[None] | None = None
        self._text: list[str] = []  # a message arriving in fragments
        self._bytes: list[bytes] = []
        self._message_size = 0
        self.last_seen = time.monotonic()
        self.ping_sent = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.hub.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.connections.discard(self)
        self.writable = True
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if not self.closed:
            self.closed = True
            with contextlib.suppress(LocalProtocolError, RemoteProtocolError):
                self.ws.receive_data(None)
            self._deliver({"type": "websocket.disconnect", "code": self.close_code})

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self.scope is None:
            data = self._handshake(data)
            if not data:
                return
        try:
            self.ws.receive_data(data)
        except RemoteProtocolError as exc:
            log.info("closing a WebSocket: %s", exc)
            self._write(self.ws.send(exc.event_hint) if exc.event_hint else b"")
            self.abort()
            return
        self._events()

    def _handshake(self, data: bytes) -> bytes:
        """Keep the upgrade request until it is complete; then its scope, and all the bytes
        so far for wsproto, which reads the handshake from them (b"": not complete yet)."""
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD_BYTES:
                self._refuse(431)
            else:
                self.head = head
            return b""
        if self.hub.open > self.hub.limits.connections:
            self._refuse(503)
            return b""
        self.scope = self._scope(head[:end])
        self.head = b""
        return head

    def _refuse(self, status: int) -> None:
        self.closed = True
        self.transport.write(b"HTTP/1.1 %d \r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                             % status)
        self.transport.close()

    def _scope(self, head: bytes) -> Message:
        lines = head.split(b"\r\n")
        _method, target, _version = lines[0].split(b" ", 2)
        headers: list[tuple[bytes, bytes]] = []
        client: tuple[str, int] | None = None
        server: list[Any] | None = None
        scheme = "ws"
        subprotocols: list[str] = []
        for line in lines[1:]:
            raw_name, _, raw_value = line.partition(b":")
            name, value = raw_name.strip().lower(), raw_value.strip()
            if name.startswith(b"rip-"):
                if name == b"rip-client":
                    client = parse_client(value)
                elif name == b"rip-server":
                    found = parse_client(value)
                    server = list(found) if found is not None else None
                continue
            if name == b"x-forwarded-proto":
                scheme = "wss" if value == b"https" else "ws"
            elif name == b"sec-websocket-protocol":
                subprotocols += [p.strip().decode("latin-1") for p in value.split(b",")
                                 if p.strip()]
            headers.append((name, value))
        path, _, query = target.partition(b"?")
        return {
            "type": "websocket", "asgi": ASGI_INFO, "http_version": "1.1", "scheme": scheme,
            "path": unquote_to_bytes(path).decode("utf-8", "surrogateescape"),
            "raw_path": path, "query_string": query, "root_path": "", "headers": headers,
            "client": client, "server": server, "subprotocols": subprotocols,
            "state": dict(getattr(self.hub.worker.host, "state", {})),
        }

    # -- frames from the client -----------------------------------------------------------------
    def _events(self) -> None:
        for event in self.ws.events():
            if isinstance(event, Request):
                self.inbox.append({"type": "websocket.connect"})
                self.hub.opened += 1
                self.task = self.hub.loop.create_task(self._run())
            elif isinstance(event, TextMessage | BytesMessage):
                if isinstance(event, TextMessage):
                    self._text.append(event.data)
                else:
                    self._bytes.append(bytes(event.data))
                self._message_size += len(event.data)
                if self._message_size > self.hub.limits.max_message:
                    self._close(1009, "message too big")
                    return
                if event.message_finished:
                    self._message_size = 0
                    if isinstance(event, TextMessage):
                        text, self._text = "".join(self._text), []
                        self._deliver({"type": "websocket.receive", "text": text})
                    else:
                        data, self._bytes = b"".join(self._bytes), []
                        self._deliver({"type": "websocket.receive", "bytes": data})
            elif isinstance(event, Ping):
                self._write(self.ws.send(event.response()))
            elif isinstance(event, Pong):
                self.ping_sent = 0.0
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if self.ws.state != ConnectionState.CLOSED:
                    self._write(self.ws.send(event.response()))
                self.closed = True
                self._deliver({"type": "websocket.disconnect", "code": event.code})
                self.transport.close()

    def _deliver(self, message: Message) -> None:
        self.inbox.append(message)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if self.reading and len(self.inbox) > QUEUE_HIGH and not self.closed:
            self.reading = False
            self.transport.pause_reading()

    # -- the app --------------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self.scope is not None
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception:
            log.exception("%s: the app raised", self.scope["path"])
            if not self.accepted:
                self._reject(500)
            else:
                self._close(1011, "")
            return
        if not self.accepted:
            self._reject(403)  # returned without accepting: refused
        elif not self.closed:
            self._close(1000, "")

    async def receive(self) -> Message:
        while not self.inbox:
            self.waiter = self.hub.loop.create_future()
            await self.waiter
        message = self.inbox.popleft()
        if not self.reading and len(self.inbox) < QUEUE_LOW and not self.closed:
            self.reading = True
            self.transport.resume_reading()
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            if self.accepted or self.closed:
                raise RuntimeError("websocket.accept: the WebSocket is already accepted or "
                                   "closed")
            self.accepted = True
            headers = [(bytes(n), bytes(v)) for n, v in message.get("headers") or ()]
            offered = self._offered_deflate()
            self._write(self.ws.send(AcceptConnection(
                subprotocol=message.get("subprotocol"), extra_headers=headers,
                extensions=[PerMessageDeflate()] if offered else [])))
        elif kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("websocket.send before websocket.accept")
            if self.closed:
                raise ClosedError(self.close_code)
            text, data = message.get("text"), message.get("bytes")
            if text is not None:
                self._write(self.ws.send(TextMessage(data=text)))
            elif data is not None:
                self._write(self.ws.send(BytesMessage(data=bytes(data))))
            else:
                raise RuntimeError("websocket.send with neither 'bytes' nor 'text'")
            if not self.writable:
                self._drain = self.hub.loop.create_future()
                await self._drain
        elif kind == "websocket.close":
            if not self.accepted:
                self._reject(403)
            elif not self.closed:
                self._close(int(message.get("code", 1000)), str(message.get("reason") or ""))
        elif kind == "websocket.http.response.start":
            if self.accepted:
                raise RuntimeError("websocket.http.response.start after websocket.accept")
            headers = [(bytes(n), bytes(v)) for n, v in message.get("headers") or ()]
            self._write(self.ws.send(RejectConnection(status_code=int(message["status"]),
                                                      headers=headers, has_body=True)))
        elif kind == "websocket.http.response.body":
            more = bool(message.get("more_body", False))
            self._write(self.ws.send(RejectData(data=bytes(message.get("body", b"")),
                                                body_finished=not more)))
            if not more:
                self.closed = True
                self.transport.close()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _offered_deflate(self) -> bool:
        assert self.scope is not None
        for name, value in self.scope["headers"]:
            if name == b"sec-websocket-extensions" and b"permessage-deflate" in value:
                return True
        return False

    # -- ending --------------------------------------------------------------------------------
    def _reject(self, status: int) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(LocalProtocolError):
            self._write(self.ws.send(RejectConnection(status_code=status)))
        self.transport.close()

    def _close(self, code: int, reason: str) -> None:
        """Send a close frame; the connection ends when the client answers, or CLOSE_WAIT
        after."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        with contextlib.suppress(LocalProtocolError):
            self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
        self._deliver({"type": "websocket.disconnect", "code": code})
        self.hub.loop.call_later(CLOSE_WAIT, self.transport.close)

    def close_going_away(self) -> None:
        if self.accepted:
            self._close(GOING_AWAY, "the server is restarting")
        else:
            self.abort()

    def check_alive(self, now: float) -> None:
        limits = self.hub.limits
        if not self.accepted or self.closed:
            return
        if self.ping_sent:
            if now - self.ping_sent > limits.ping_timeout:
                log.info("closing a WebSocket that did not answer a ping in %.0f s",
                         limits.ping_timeout)
                self._close(1011, "ping timeout")
        elif now - self.last_seen > limits.ping_interval:
            self.ping_sent = now
            self._write(self.ws.send(Ping(payload=b"rip")))

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()

    def _write(self, data: bytes) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(data)


class ClosedError(OSError):
    """websocket.send after the WebSocket closed (the client left): a subclass of OSError,
    as the ASGI spec asks (uvicorn's is ClientDisconnected), so that an app's send loop ends."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the WebSocket is closed ({code})")
        self.code = code
