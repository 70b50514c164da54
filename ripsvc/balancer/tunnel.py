"""A WebSocket's way through the balancer: the worker side of it, and the relay of its bytes.

A WebSocket upgrade request goes to a WebSocket worker (worker/websocket.py, many WebSockets
each) on a connection of its own. Until the worker answers, this is an exchange like any other
(WAITING, timed by response_timeout). A `101 Switching Protocols` is passed to the client, whose
connection then relays bytes to this one and back, each side pausing the other's reading when
it cannot write (back-pressure): the worker speaks the protocol (pings, limits, close codes),
the balancer only carries the frames, TLS included. Any other answer (a refusal: 403, 404, …)
goes to the client as it is, and both connections end after it.

    CONNECTING ──▶ HANDSHAKE ──▶ OPEN (relaying) ──▶ CLOSED
                       └──────▶ REFUSED (relaying the refusal) ──┘
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ripsvc import logs

if TYPE_CHECKING:
    from ripsvc.balancer.client import Client
    from ripsvc.balancer.core import Balancer
    from ripsvc.balancer.exchange import Exchange
    from ripsvc.balancer.pool import WebSocketSlot

log = logs.get("balancer.tunnel")

CONNECTING: Final = 0
HANDSHAKE: Final = 1
OPEN: Final = 2
REFUSED: Final = 3
CLOSED: Final = 4

#: The worker's answer to the upgrade: a head larger than this is broken.
MAX_HEAD_BYTES = 64 * 1024


class Tunnel:
    """The connection to a WebSocket worker for one WebSocket (an asyncio protocol)."""

    transport: Any

    def __init__(self, balancer: Balancer, slot: WebSocketSlot, exchange: Exchange) -> None:
        self.balancer = balancer
        self.slot = slot
        self.exchange = exchange
        self.client: Client = exchange.client
        self.state = CONNECTING
        self._head = b""

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.state != CONNECTING:  # given up while connecting
            transport.close()
            return
        self.state = HANDSHAKE
        transport.write(self.exchange.head + self.client.early_bytes())

    def connect_failed(self, why: str) -> None:
        """Called by the network instead of connection_made."""
        if self.state == CONNECTING:
            self.state = CLOSED
            self.balancer.tunnel_ended(self, why, False)

    def data_received(self, data: bytes) -> None:
        if self.state == OPEN or self.state == REFUSED:
            self.exchange.sent += len(data)
            self.client.transport.write(data)
            return
        if self.state != HANDSHAKE:
            return
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD_BYTES:
                self.close()
                self.balancer.tunnel_ended(self, "the WebSocket worker's answer is too large",
                                           True)
            else:
                self._head = head
            return
        self._head = b""
        line = head[:head.find(b"\r\n")].split(b" ", 2)
        if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
            self.close()
            self.balancer.tunnel_ended(self, "the WebSocket worker's answer is malformed", True)
            return
        status = int(line[1])
        self.state = OPEN if status == 101 else REFUSED
        self.balancer.tunnel_answered(self, status, head[:end + 2], head[end + 4:])

    def eof_received(self) -> bool:
        return False  # the worker ended it: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = CLOSED
        if was != CLOSED:
            self.balancer.tunnel_ended(self, "" if was >= OPEN else
                                       "the WebSocket worker closed the connection", was >= OPEN)

    def pause_writing(self) -> None:  # the worker reads slower than the client sends
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()

    # -- from the client -------------------------------------------------------------------------
    def to_worker(self, data: bytes) -> None:
        if self.state == OPEN:
            self.transport.write(data)

    def close(self) -> None:
        """End the worker's side; no event follows (whoever calls knows why)."""
        was = self.state
        self.state = CLOSED
        if was == CONNECTING:
            return  # connection_made closes it, if it comes
        if was != CLOSED:
            self.transport.close()
