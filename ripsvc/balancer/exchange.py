"""One request and its response on their way through the balancer: an explicit state machine.

An exchange is created when a client's request is complete, and moves only along the arrows of
TRANSITIONS (`move` refuses any other, so a bug shows where it happens instead of corrupting a
later request):

    PIPELINED ──▶ QUEUED ──▶ WAITING ──▶ STREAMING ──▶ FLUSHING ──▶ DONE
        │            │       ▲  │  │          │             │
        └────────────┼───────┘  │  │          │             │
                     ▲──────────┘  │ retry    │             │
        every state ─┴─────────────┴──────────┴─────────────┴──▶ DONE

- PIPELINED: complete; waits behind an earlier request of its connection (answers go out in
  order), or for its connection to take it up.
- QUEUED: waits in the balancer's FIFO queue for an idle worker.
- WAITING: sent to a worker (its connection opening, the request being written, or written);
  no byte of the response yet. A retry sends it to another worker (WAITING again) or queues it.
- STREAMING: the response head went to the client; the body follows as the worker sends it.
- FLUSHING: the worker is done (and free again); the client still gets what was spooled.
- DONE: answered, refused or given up; logged once.

A request answered by the balancer itself (/status, an error, a redirect) goes from PIPELINED
(or QUEUED, WAITING: 502, 503, 504) straight to DONE; a static file too large to go out at once
goes from PIPELINED to FLUSHING, the file being what the client still gets (static.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ripsvc.body import Body, Spool

if TYPE_CHECKING:
    from ripsvc.balancer.client import Client
    from ripsvc.balancer.compress import Encoder
    from ripsvc.balancer.pool import Slot
    from ripsvc.balancer.static import FileBody, Mount
    from ripsvc.balancer.tunnel import Tunnel

PIPELINED: Final = 0
QUEUED: Final = 1
WAITING: Final = 2
STREAMING: Final = 3
FLUSHING: Final = 4
DONE: Final = 5
NAMES = ("pipelined", "queued", "waiting", "streaming", "flushing", "done")


def _bits(*states: int) -> int:
    mask = 0
    for state in states:
        mask |= 1 << state
    return mask


#: For each state, the states it may move to (a bit per state).
TRANSITIONS: tuple[int, ...] = (
    _bits(QUEUED, WAITING, FLUSHING, DONE),  # PIPELINED (FLUSHING: a static file)
    _bits(WAITING, DONE),  # QUEUED
    _bits(WAITING, QUEUED, STREAMING, DONE),  # WAITING
    _bits(FLUSHING, DONE),  # STREAMING
    _bits(DONE),  # FLUSHING
    0,  # DONE
)

#: Methods that may be sent to a second worker after the first may have started on them.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class StateError(Exception):
    """A transition the state machine does not have: a bug, reported where it happens."""


class Exchange:
    __slots__ = (
        "accept",
        "answered",
        "attempts",
        "body",
        "chunked",
        "client",
        "close_after",
        "dispatched",
        "encoder",
        "fields",
        "file",
        "head",
        "head_only",
        "host",
        "http10",
        "keep_alive",
        "last_byte",
        "method",
        "mount",
        "note",
        "queue_deadline",
        "queued",
        "received",
        "request_id",
        "sent",
        "slot",
        "spool",
        "state",
        "status",
        "target",
        "tunnel",
        "unbuffered",
        "unknown_host",
        "upgrade",
        "websocket",
        "worker_busy",
        "worker_id",
)

    def __init__(self, client: Client, method: str, target: bytes, head: bytes, body: Body,
                 keep_alive: bool, request_id: str, received: float) -> None:
        # the request
        self.client = client
        self.method = method
        self.target = target
        self.head = head  # request line and headers for the worker, up to the blank line
        self.body = body
        self.keep_alive = keep_alive
        self.request_id = request_id
        self.host = b""  # its Host header
        self.unknown_host = False  # not in the host registry: 404
        self.http10 = False
        self.upgrade = False  # asked for a protocol upgrade (served as plain HTTP/1.1 …)
        self.websocket = 0  # … unless a WebSocket: 1, or the status refusing a bad one
        self.tunnel: Tunnel | None = None  # a WebSocket's way to its worker
        self.mount: Mount | None = None  # a static mount its path is under (static.py) …
        self.fields: list[tuple[bytes, bytes]] | None = None  # … and the request's fields
        # its way through the balancer
        self.state = PIPELINED
        self.attempts = 0  # workers it was sent to
        self.slot: Slot | None = None  # the worker serving it, WAITING and STREAMING
        self.worker_id = "-"
        self.received = received  # times: request begun, queued, sent, last response bytes
        self.queued = 0.0
        self.queue_deadline = 0.0
        self.dispatched = 0.0
        self.last_byte = 0.0
        self.answered = 0.0  # its worker's response complete
        # the response
        self.status = 0
        self.sent = 0  # body bytes the client was given (or handed to its transport)
        self.head_only = method == "HEAD"
        self.chunked = False  # re-framed with chunked coding for the client
        self.close_after = False  # the body ends when the connection does (HTTP/1.0 client)
        self.unbuffered = False  # X-Accel-Buffering: no: never spooled, holds its worker
        self.spool: Spool | None = None  # what the client could not take yet
        self.worker_busy = False  # the worker answered Rip-Worker-Busy: not taken, retried
        self.note = ""  # how it ended, when not simply answered ("client closed", …)
        self.accept = 0  # compress.EXAMINE and the encodings its client accepts; 0: off
        self.encoder: Encoder | None = None  # compresses the response's body (compress.py)
        self.file: FileBody | None = None  # a static file still being sent (static.py)

    def move(self, to: int) -> None:
        if not (TRANSITIONS[self.state] >> to) & 1:
            raise StateError(f"exchange {self.request_id}: {NAMES[self.state]} -> {NAMES[to]}")
        self.state = to

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT

    @property
    def started(self) -> bool:
        """Taken up by its connection: between PIPELINED and DONE."""
        return self.state != PIPELINED and self.state != DONE

    def release_buffers(self) -> None:
        self.body.close()
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        file = self.file
        if file is not None:
            self.file = None
            file.close()
