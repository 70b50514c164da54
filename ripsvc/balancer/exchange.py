"""One client request on its way through the balancer, and the response that comes back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ripsvc.body import Body

if TYPE_CHECKING:
    from ripsvc.balancer.front import ClientConnection
    from ripsvc.balancer.pool import Slot

#: Methods that may be sent to a second worker after the first may have started on them.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class Response:
    """A worker's response, buffered whole unless the app asked for streaming."""

    __slots__ = ("body", "busy", "head", "headers", "status", "streaming")

    def __init__(self) -> None:
        self.status = 0
        #: The worker's status line and header lines, when they can go to the client as they
        #: are (the common case: see upstream.passable); else b"" and the fields in `headers`.
        self.head = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = Body()
        self.busy = False  # Rip-Worker-Busy: the worker did not take the request
        self.streaming = False  # X-Accel-Buffering: no


class Exchange:
    __slots__ = ("attempts", "body", "client", "head", "host", "keep_alive", "method",
                 "queue_deadline", "request_id", "slot", "started", "target", "unknown_host",
                 "waiting", "worker_id")

    def __init__(self, client: ClientConnection, method: str, target: bytes, head: bytes,
                 body: Body, keep_alive: bool, request_id: str, started: float) -> None:
        self.client = client
        self.method = method
        self.target = target
        self.head = head  # request line and headers for the worker, up to the blank line
        self.body = body
        self.keep_alive = keep_alive
        self.request_id = request_id
        self.started = started
        self.attempts = 0
        self.waiting = False  # in the queue
        self.queue_deadline = 0.0
        self.slot: Slot | None = None
        self.worker_id = "-"
        self.unknown_host = False  # not in the host registry: 404
        self.host = b""  # its Host header

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT

    def queue_timed_out(self) -> None:
        self.waiting = False
        self.client.balancer.stats["queue_timeout"] += 1
        self.client.respond_error(self, 504, "queue timeout")
