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

import array
import asyncio
import contextlib
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol
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
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ripsvc import logs
from ripsvc.worker.request import parse_client

if TYPE_CHECKING:
    from ripsvc.worker.core import WebSocketLimits, Worker

log = logs.get("worker.websocket")

#: Compressed bytes inflated at a time: deflate expands at most ≈ 1,000 times, so one step
#: makes at most ≈ 4 MB before the message's size is checked again.
INFLATE_STEP = 4096


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that stops inflating a message once it is over the size limit
    (1009): wsproto's inflates each frame whole first, so a small frame of zeros (a
    "deflate bomb") grew into gigabytes and held the worker's loop for seconds before the
    limit was ever looked at."""

    def __init__(self, max_message: int) -> None:
        super().__init__()
        self.max_message = max_message
        self.inflated = 0  # of the message being received

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        pieces = []
        for start in range(0, len(data), INFLATE_STEP):
            piece = super().frame_inbound_payload_data(proto, data[start:start + INFLATE_STEP])
            if isinstance(piece, CloseReason):
                return piece
            self.inflated += len(piece)
            if self.inflated > self.max_message:
                return CloseReason.MESSAGE_TOO_BIG
            pieces.append(piece)
        return b"".join(pieces)

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        if fin:
            self.inflated = 0
        return super().frame_inbound_complete(proto, fin)

ASGI_INFO = {"version": "3.0", "spec_version": "2.3"}
Message = dict[str, Any]
MAX_HEAD_BYTES = 64 * 1024
#: Received messages the app has not taken yet before reading from the socket pauses.
QUEUE_HIGH = 32
QUEUE_LOW = 8
#: How long a close we sent waits for the client's before the connection is ended anyway.
CLOSE_WAIT = 1.0
GOING_AWAY = 1001
#: The first bytes of a connection that the balancer uses to hand over its clients' sockets
#: (SCM_RIGHTS) rather than relay their bytes: plain-HTTP WebSockets, where no TLS is in the
#: way. Each hand-over is then a 4-byte length, the upgrade request, and the socket.
HANDOFF_HELLO = b"RIP-HANDOFF/1\r\n"


class Hub:
    """The worker's WebSockets: counts, the idle-ping sweep, and the graceful stop."""

    def __init__(self, worker: Worker, limits: WebSocketLimits) -> None:
        self.worker = worker
        self.limits = limits
        self.loop = worker.loop
        self.connections: set[WebSocketConnection] = set()
        self.opened = 0
        self.channels: set[HandoffChannel] = set()
        self._adopting: set[asyncio.Task[None]] = set()
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

    def adopt(self, fd: int, head: bytes, channel: HandoffChannel) -> None:
        """A client's socket handed over by the balancer, with its upgrade request: from now
        on this worker talks to the client directly."""
        conn = WebSocketConnection(self)
        conn.channel = channel
        task = self.loop.create_task(self._adopt(socket.socket(fileno=fd), conn, head))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _adopt(self, sock: socket.socket, conn: WebSocketConnection, head: bytes) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: conn, sock=sock)
        except OSError as exc:
            log.info("a handed-over WebSocket could not be taken: %s", exc)
            sock.close()
            conn.channel_ended()
            return
        conn.data_received(head)

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
        self.channel: HandoffChannel | None = None  # the balancer's, if it handed us over

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.hub.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.connections.discard(self)
        self.channel_ended()
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

    def channel_ended(self) -> None:
        """Tell the balancer that a WebSocket it handed over is gone (it counts them)."""
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.ended()

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self.scope is None and not self.head and data == HANDOFF_HELLO:
            self._become_channel()
            return
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

    def _become_channel(self) -> None:
        """This connection is the balancer's hand-over channel: its socket is taken from the
        transport (a duplicate, so that closing the transport leaves it open) to be read with
        recvmsg, which the transport cannot do."""
        fd = os.dup(self.transport.get_extra_info("socket").fileno())
        self.hub.connections.discard(self)
        self.closed = True
        self.transport.abort()
        HandoffChannel(self.hub, fd)

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
                extensions=[BoundedDeflate(self.hub.limits.max_message)] if offered else [])))
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


class Adopter(Protocol):
    """What takes the sockets a hand-over channel receives (Hub, AiohttpHub)."""

    loop: asyncio.AbstractEventLoop
    channels: set[HandoffChannel]

    def adopt(self, fd: int, head: bytes, channel: HandoffChannel) -> None: ...


class HandoffChannel:
    """The balancer's channel for handing over client sockets (SCM_RIGHTS), read here with
    recvmsg on the event loop; a byte b"C" goes back for each WebSocket that ends."""

    def __init__(self, hub: Adopter, fd: int) -> None:
        self.hub = hub
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.buffer = b""
        self.fds: deque[int] = deque()
        self.closed = False
        hub.channels.add(self)
        hub.loop.add_reader(fd, self._readable)
        self._send(b"OK\n")

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _address = self.sock.recvmsg(
                65536, socket.CMSG_SPACE(16 * 4))
        except BlockingIOError:
            return
        except OSError:
            data, ancillary = b"", []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if not data:
            self.close()
            return
        self.buffer += data
        while len(self.buffer) >= 4:
            size = int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < 4 + size:
                break
            head, self.buffer = self.buffer[4:4 + size], self.buffer[4 + size:]
            if not self.fds:
                log.error("a hand-over without its socket: closing the channel")
                self.close()
                return
            self.hub.adopt(self.fds.popleft(), head, self)

    def ended(self) -> None:
        self._send(b"C")

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.sock.send(data)
        except (BlockingIOError, OSError):
            # (a few bytes on a channel the balancer reads at once: full only if it is stuck)
            log.warning("the balancer's hand-over channel does not take its notes")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.hub.channels.discard(self)
        self.hub.loop.remove_reader(self.sock.fileno())
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.sock.close()


class AiohttpHub:
    """An aiohttp app's WebSocket worker: aiohttp's own server serves the WebSockets (relayed
    ones, and those handed over), this only tells a hand-over channel from them and counts."""

    def __init__(self, worker: Worker, server: Any) -> None:
        self.loop = worker.loop
        self.server = server  # aiohttp's web.Server: a protocol factory
        self.channels: set[HandoffChannel] = set()
        self.connections = 0
        self.opened = 0
        self._adopting: set[asyncio.Task[None]] = set()

    @property
    def open(self) -> int:
        return self.connections

    def factory(self) -> asyncio.Protocol:
        return Sniffing(self)

    def adopt(self, fd: int, head: bytes, channel: HandoffChannel) -> None:
        task = self.loop.create_task(self._adopt(socket.socket(fileno=fd), head, channel))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _adopt(self, sock: socket.socket, head: bytes, channel: HandoffChannel) -> None:
        try:
            _, protocol = await self.loop.connect_accepted_socket(
                lambda: Counted(self, self.server(), channel), sock=sock)
        except OSError as exc:
            log.info("a handed-over WebSocket could not be taken: %s", exc)
            sock.close()
            channel.ended()
            return
        protocol.data_received(head)


class Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted, and the balancer told of its end."""

    def __init__(self, hub: AiohttpHub, inner: Any, channel: HandoffChannel | None) -> None:
        self.hub = hub
        self.inner = inner
        self.channel = channel
        hub.connections += 1
        hub.opened += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return bool(self.inner.eof_received())

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.connections -= 1
        self.inner.connection_lost(exc)
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.ended()


class Sniffing(asyncio.Protocol):
    """A connection to an aiohttp app's WebSocket worker: the balancer's hand-over channel, if
    its first bytes say so; else a relayed WebSocket, handed to aiohttp's protocol."""

    transport: asyncio.Transport

    def __init__(self, hub: AiohttpHub) -> None:
        self.hub = hub

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if data == HANDOFF_HELLO:
            fd = os.dup(self.transport.get_extra_info("socket").fileno())
            self.transport.abort()
            HandoffChannel(self.hub, fd)
            return
        inner = Counted(self.hub, self.hub.server(), None)
        self.transport.set_protocol(inner)
        inner.connection_made(self.transport)
        inner.data_received(data)
