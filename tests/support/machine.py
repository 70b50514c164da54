"""The balancer's core without processes, sockets or an event loop: fake transports, a fake
network and a clock the test moves, and workers played by the test (bytes in, bytes out).

    rig = Rig(workers=2)
    client = rig.connect()
    client.send(b"GET / HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n")
    rig.settle()                       # connections open, requests reach the workers
    rig.worker("1").respond(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok")
    assert client.received.startswith(b"HTTP/1.1 200 OK")

What asyncio would do later (connection_lost after a close, a connection being made) happens
in `settle()`, so a test (or Hypothesis) can interleave anything in between.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools

from ripsvc.balancer.client import Client
from ripsvc.balancer.core import Balancer
from ripsvc.balancer.options import BalancerOptions
from ripsvc.balancer.upstream import CONNECTING, Upstream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class AccessRecords:
    """The access log's sink: (status, method, target, note) of every finished request."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str, bytes, str]] = []

    def record(self, exchange: Any, status: int, sent: int, seconds: float) -> None:
        self.entries.append((status, exchange.method, exchange.target, exchange.note))


class Transport:
    """Enough of asyncio's transport for the balancer: what it writes is kept, closing is
    reported to the protocol at the next `settle` (asyncio does it at the next iteration).
    `limit`: bytes it holds before it asks the protocol to pause writing (the peer reads
    them with `read()`)."""

    def __init__(self, rig: Rig, protocol: Any, peer: object, limit: int = 1 << 30) -> None:
        self.rig = rig
        self.protocol = protocol
        self.peer = peer
        self.written = bytearray()  # everything, for assertions
        self.unread = 0  # bytes the peer has not read yet (flow control)
        self.limit = limit
        self.paused = False  # the protocol was told to pause writing
        self.reading = True
        self.closed = False  # close() or abort() called, or the peer went away
        self.aborted = False
        self.eof_written = False
        self.lost = False  # connection_lost delivered

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8080)
                if isinstance(self.peer, tuple) else None}.get(name, default)

    def get_write_buffer_size(self) -> int:
        """What the peer has not read yet stands for what a real transport still holds."""
        return self.unread

    def write(self, data: bytes) -> None:
        assert not self.eof_written, "a write after write_eof"
        if self.closed:
            return
        self.written += data
        self.unread += len(data)
        if not self.paused and self.unread > self.limit:
            self.paused = True
            self.protocol.pause_writing()

    def read(self, size: int | None = None) -> None:
        """The peer reads (all, or `size` bytes): writing may resume."""
        self.unread = 0 if size is None else max(0, self.unread - size)
        if self.paused and self.unread <= self.limit // 2 and not self.closed:
            self.paused = False
            self.protocol.resume_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self._end()

    def abort(self) -> None:
        self.aborted = True
        self._end()

    def _end(self, exc: Exception | None = None) -> None:
        if not self.closed:
            self.closed = True
            self.rig.later(lambda: self._lose(exc))

    def _lose(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            protocol, self.protocol = self.protocol, None  # as asyncio's transports let go
            protocol.connection_lost(exc)


class ClientEnd:
    """The client's side of one connection."""

    def __init__(self, rig: Rig, protocol: Client, limit: int) -> None:
        self.protocol = protocol
        self.transport = Transport(rig, protocol, ("127.0.0.1", 40000), limit)
        protocol.connection_made(self.transport)

    @property
    def received(self) -> bytes:
        return bytes(self.transport.written)

    def send(self, data: bytes) -> None:
        if not self.transport.closed:
            self.protocol.data_received(data)

    def half_close(self) -> None:
        if not self.transport.closed and not self.protocol.eof_received():
            self.transport.close()

    def reset(self) -> None:
        """The client goes away at once (RST)."""
        if not self.transport.closed:
            self.transport.closed = True
            self.transport._lose(ConnectionResetError("reset by peer"))

    def responses(self) -> list[tuple[int, bytes]]:
        """The complete responses received so far: (status, body)."""
        return parse_responses(self.received, self.protocol)


class WorkerEnd:
    """A worker played by the test: its connections from the balancer, and what it got."""

    def __init__(self, rig: Rig, worker_id: str, path: str) -> None:
        self.rig = rig
        self.id = worker_id
        self.path = path
        self.connections: list[Transport] = []
        self.refuse = False  # connect() fails: no such socket / refused

    @property
    def live(self) -> list[Transport]:
        return [t for t in self.connections if not t.closed]

    def requests(self, transport: Transport | None = None) -> list[bytes]:
        """The request heads written on `transport` (the last live one by default)."""
        conn = transport or self.live[-1]
        return [head for head in bytes(conn.written).split(b"\r\n\r\n") if head]

    def respond(self, data: bytes, transport: Transport | None = None) -> None:
        conn = transport or self.live[-1]
        if not conn.lost:
            conn.protocol.data_received(data)

    def close(self, transport: Transport | None = None) -> None:
        """The worker ends a connection (it died, or it stops)."""
        for conn in [transport] if transport else self.live:
            if not conn.closed:
                conn.closed = True
                conn._lose(None)


class Network:
    """core.Network: connections are made (or refused) at the rig's next `settle`."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.pending: deque[tuple[str, Upstream]] = deque()

    def connect(self, path: str, upstream: Upstream) -> None:
        self.pending.append((path, upstream))

    def websocket_worker(self, path: str) -> None:
        pass

    def hand_over(self, path: str, transport: object, head: bytes) -> bool:
        return False  # no descriptors here: every WebSocket is relayed


class Rig:
    def __init__(self, workers: int = 2, **options: Any) -> None:
        self.clock = Clock()
        self.records = AccessRecords()
        self.network = Network(self)
        self.options = BalancerOptions(app="test", access_log=False, **options)
        self.balancer = Balancer(self.options, self.clock, self.network, self.records)
        self.workers: dict[str, WorkerEnd] = {}
        self.clients: list[ClientEnd] = []
        self._later: deque[Callable[[], None]] = deque()
        for n in range(1, workers + 1):
            self.join(str(n))

    def join(self, worker_id: str) -> WorkerEnd:
        worker = self.workers.get(worker_id) or WorkerEnd(self, worker_id, f"/w{worker_id}.sock")
        self.workers[worker_id] = worker
        self.balancer.join(worker_id, worker.path, "")
        return worker

    def join_websocket(self, worker_id: str, capacity: int = 1000) -> WorkerEnd:
        worker = self.workers.get(worker_id) or WorkerEnd(self, worker_id, f"/{worker_id}.sock")
        self.workers[worker_id] = worker
        self.balancer.join_websocket(worker_id, worker.path, "", capacity)
        return worker

    def worker(self, worker_id: str) -> WorkerEnd:
        return self.workers[worker_id]

    def connect(self, scheme: bytes = b"http", limit: int = 1 << 30) -> ClientEnd:
        client = ClientEnd(self, Client(self.balancer, scheme), limit)
        self.clients.append(client)
        return client

    def later(self, callback: Callable[[], None]) -> None:
        self._later.append(callback)

    def settle(self, connects: bool = True) -> None:
        """Deliver what asyncio would deliver next: lost connections, and (with `connects`)
        worker connections being made or refused."""
        progress = True
        while progress:
            progress = False
            while self._later:
                self._later.popleft()()
                progress = True
            while connects and self.network.pending:
                path, upstream = self.network.pending.popleft()
                progress = True
                if upstream.state != CONNECTING:
                    continue
                worker = next(w for w in self.workers.values() if w.path == path)
                if worker.refuse:
                    upstream.connect_failed(f"cannot connect to {path}: refused")
                    continue
                transport = Transport(self, upstream, None)
                worker.connections.append(transport)
                upstream.connection_made(transport)

    def tick(self, seconds: float = 0.0) -> None:
        self.clock.now += seconds
        self.balancer.tick(self.clock.now)


def parse_responses(data: bytes, client: Any = None) -> list[tuple[int, bytes]]:
    """Complete HTTP/1.1 responses in `data` (not to HEAD requests): (status, body)."""
    found: list[tuple[int, bytes]] = []

    class Callbacks:
        body = b""

        def on_message_begin(self) -> None:
            self.body = b""

        def on_body(self, chunk: bytes) -> None:
            self.body += chunk

        def on_message_complete(self) -> None:
            found.append((parser.get_status_code(), self.body))

    parser = httptools.HttpResponseParser(Callbacks())
    with contextlib.suppress(httptools.HttpParserError):
        parser.feed_data(data)
    return found
