"""HAProxy's agent-check, answered by the balancer on its own TCP port (`agent_port`).

HAProxy connects every `agent-inter`, may send a line (`agent-send`), and reads one line of
words that set its server's state. The reply is the whole state each time, because HAProxy
keeps whatever a reply leaves out, and only the agent undoes what the agent set:

- `up ready 75%`: workers in rotation; the weight (of the server's configured weight) comes
  from how busy they have been lately, so HAProxy sends work where workers are idle;
- `up drain`: the app is draining (ripctl drain, or a stop waiting out shutdown_delay): no new
  connections, those open go on, and requests still arriving are served;
- `down ready #no worker ready` (or `down drain …`): nothing in rotation (starting, every
  worker gone). `down` rather than `maint`: HAProxy's own health checks keep running under
  `down`, and its stats page shows a failure, not maintenance someone asked for.

The answer goes out when the connection opens, whatever the peer sends, so a half-sent or
endless `agent-send` costs nothing: input is read and dropped (the connection is cut past
MAX_INPUT bytes), our side is shut for writing after the line, and the connection is cut
LINGER seconds after it opened. At most MAX_CONNECTIONS are open at once; others are cut at
once, so a flood of connections cannot hold the balancer's memory or descriptors.

The core (core.py) does no I/O; this adapter reads its pool and draining state only.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any, cast

from ripsvc import logs
from ripsvc.sockets import Bind, SocketError

if TYPE_CHECKING:
    from ripsvc.balancer.core import Balancer

log = logs.get("balancer")

#: The load is averaged over about this many seconds (HAProxy asks every 2 s by default):
#: single-request workers are busy or idle at any instant, so one look would be noise.
LOAD_WINDOW = 2.0
SAMPLE_INTERVAL = 0.1
MAX_CONNECTIONS = 64
MAX_INPUT = 1024
LINGER = 2.0


def weight(load: float) -> int:
    """The weight in % for `load`, the busy workers and queued requests per worker in
    rotation: 100 when every worker is idle, 10 when every one is busy, less when requests
    queue (10/load), never below 1 (HAProxy takes 0% for drain)."""
    if load <= 1.0:
        return round(100 - 90 * max(load, 0.0))
    return max(1, round(10 / load))


def reply(usable: int, load: float, draining: bool) -> bytes:
    """The agent's line for `usable` workers in rotation, their `load`, and whether the
    app is draining."""
    admin = b"drain" if draining else b"ready"
    if not usable:
        return b"down " + admin + b" #no worker ready\n"
    if draining:
        return b"up drain\n"
    return b"up ready %d%%\n" % weight(load)


class Load:
    """An exponential moving average of the load, over LOAD_WINDOW seconds."""

    def __init__(self) -> None:
        self.value = 0.0
        self._at: float | None = None

    def sample(self, now: float, usable: int, busy: int, queued: int) -> None:
        current = (busy + queued) / usable if usable else 0.0
        if self._at is None:
            self.value = current
        else:
            share = 1.0 - math.exp(-max(0.0, now - self._at) / LOAD_WINDOW)
            self.value += share * (current - self.value)
        self._at = now


class Agent:
    """The agent port of one balancer: its listening server and its load average."""

    def __init__(self, loop: asyncio.AbstractEventLoop, balancer: Balancer) -> None:
        self.loop = loop
        self.balancer = balancer
        self.load = Load()
        self.open = 0
        self.server: asyncio.AbstractServer | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def start(self, address: str) -> bool:
        """Listen on "HOST:PORT". A port that cannot be had is logged and the app serves
        without it (HAProxy takes an agent it cannot reach as no news; its health check
        still runs): the agent must never be what keeps the app down."""
        try:
            sock = Bind.parse(f"tcp:{address}").open()
        except (SocketError, OSError) as exc:
            log.error("agent_port %s: cannot listen (%s); serving without HAProxy's "
                      "agent-check", address, exc)
            return False
        self.server = await self.loop.create_server(
            lambda: cast(asyncio.Protocol, AgentConnection(self)), sock=sock)
        self._timer = self.loop.call_later(SAMPLE_INTERVAL, self._sample)
        log.info("answering HAProxy's agent-check on %s", address)
        return True

    def _sample(self) -> None:
        self._timer = self.loop.call_later(SAMPLE_INTERVAL, self._sample)  # re-armed first
        try:
            usable, busy = self._counts()
            self.load.sample(self.loop.time(), usable, busy, self.balancer.pool.queued)
        except Exception as exc:
            self.balancer.internal_error(exc, "the agent's load sample")

    def _counts(self) -> tuple[int, int]:
        usable = busy = 0
        for slot in self.balancer.pool.slots.values():
            if slot.usable:
                usable += 1
                busy += slot.exchange is not None
        return usable, busy

    def answer(self) -> bytes:
        balancer = self.balancer
        usable, _ = self._counts()
        return reply(usable, self.load.value,
                     bool(balancer.draining) or not balancer.accepting)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.server is not None:
            self.server.close()


class AgentConnection:
    """One agent-check: the line at once, then whatever comes is dropped until the peer
    closes, MAX_INPUT bytes or LINGER seconds. An asyncio protocol (the loop calls these)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.transport: Any = None
        self.received = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        agent = self.agent
        agent.open += 1
        if agent.open > MAX_CONNECTIONS:
            agent.balancer.stats["agent_refused"] += 1
            transport.abort()
            return
        self._timer = agent.loop.call_later(LINGER, transport.abort)
        try:
            line = agent.answer()
        except Exception as exc:  # a bug of ours: this check gets nothing, the next may
            agent.balancer.internal_error(exc, "the agent's answer")
            transport.abort()
            return
        agent.balancer.stats["agent_checks"] += 1
        transport.write(line)
        transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > MAX_INPUT:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # the peer is done too: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.agent.open -= 1
        if self._timer is not None:
            self._timer.cancel()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass
