"""Handing a plain-HTTP WebSocket's client socket to its WebSocket worker (SCM_RIGHTS), so that
the balancer is out of its way: where no TLS is in the way there is nothing for it to do but
copy bytes, which cost a round trip half again of what the worker itself costs
(bench/websocket.py). Over HTTPS the balancer relays (tunnel.py).

One channel per WebSocket worker, on its own socket: the balancer connects, says HANDOFF_HELLO,
waits for "OK", then sends each hand-over as one message (a 4-byte length and the upgrade
request as the worker is to read it) with the client's socket attached. The worker sends back a
byte b"C" when a WebSocket it was handed ends, so that the balancer's counts (capacity, /status)
stay true. An adapter of the event loop, like server.LoopNetwork, which owns the channels.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import socket
from collections.abc import Callable

from ripsvc import logs

log = logs.get("balancer.handoff")

HANDOFF_HELLO = b"RIP-HANDOFF/1\r\n"  # worker/websocket.py has the same
CONNECTING = 0
READY = 1
CLOSED = 2


class Channel:
    def __init__(self, loop: asyncio.AbstractEventLoop, path: str,
                 ended: Callable[[int], None]) -> None:
        """`ended(n)`: n WebSockets handed over through this channel ended (all of them, when
        the channel is lost: its worker is gone)."""
        self.loop = loop
        self.path = path
        self.ended = ended
        self.state = CONNECTING
        self.handed = 0  # WebSockets handed over and not ended yet
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self._task = loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            await asyncio.wait_for(self.loop.sock_connect(self.sock, self.path), 2.0)
            await self.loop.sock_sendall(self.sock, HANDOFF_HELLO)
            answer = await asyncio.wait_for(self.loop.sock_recv(self.sock, 3), 2.0)
        except (OSError, TimeoutError) as exc:
            log.info("no hand-over channel to %s (WebSockets are relayed): %s", self.path, exc)
            self.close()
            return
        if answer != b"OK\n":
            log.warning("%s does not take hand-overs (WebSockets are relayed)", self.path)
            self.close()
            return
        self.state = READY
        self.loop.add_reader(self.sock.fileno(), self._notes)

    def hand_over(self, fd: int, head: bytes) -> bool:
        """Send the socket `fd` with its upgrade request; False if it could not go (the
        caller relays this WebSocket instead)."""
        if self.state != READY:
            return False
        message = len(head).to_bytes(4, "big") + head
        try:
            sent = self.sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                  array.array("i", [fd]))])
        except BlockingIOError:
            return False
        except OSError as exc:
            log.warning("the hand-over channel to %s failed: %s", self.path, exc)
            self.close()
            return False
        if sent < len(message):
            # The rest goes without the socket, which went with the first byte; a channel
            # this full means a stuck worker: done blocking, briefly, then given up.
            try:
                self.sock.setblocking(True)
                self.sock.settimeout(1.0)
                self.sock.sendall(message[sent:])
            except OSError:
                self.close()
            finally:
                if self.state != CLOSED:
                    self.sock.setblocking(False)
        self.handed += 1
        return True

    def _notes(self) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        ended = data.count(b"C")
        self.handed -= ended
        self.ended(ended)

    def close(self) -> None:
        if self.state == CLOSED:
            return
        was = self.state
        self.state = CLOSED
        if was == READY:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self.handed:
            handed, self.handed = self.handed, 0
            self.ended(handed)  # the worker is gone, and its WebSockets with it


class Channels:
    """The channels of one balancer, by worker socket path (made on first use)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 ended: Callable[[str, int], None]) -> None:
        self.loop = loop
        self.ended = ended
        self.channels: dict[str, Channel] = {}

    def open(self, path: str) -> None:
        """A WebSocket worker joined: its channel, made ready for the first hand-over."""
        channel = self.channels.get(path)
        if channel is None or channel.state == CLOSED:
            self.channels[path] = Channel(self.loop, path, lambda n: self.ended(path, n))

    def hand_over(self, path: str, transport: object, head: bytes) -> bool:
        channel = self.channels.get(path)
        if channel is None or channel.state == CLOSED:
            self.open(path)
            return False  # this one is relayed; the next ones, handed over
        sock = getattr(transport, "get_extra_info", lambda _name: None)("socket")
        if sock is None:
            return False
        with contextlib.suppress(OSError, ValueError):
            return channel.hand_over(sock.fileno(), head)
        return False

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
