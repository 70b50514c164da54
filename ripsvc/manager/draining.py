"""Draining the app for a load balancer in front: `ripctl drain APP [--for SECONDS]` and
`ripctl undrain APP`.

Draining fails the balancer's readiness (ready_path, and `drain` on the agent port) while
every request that still arrives is served; with `--for` the app stops once that time is up.
The manager keeps what was asked and the balancer is told: at once, again when it restarts
(`_rejoin_all`), and whenever the health tick finds it saying otherwise (`reconcile_drain`).

A part of the manager (core.Manager inherits it), as hosts_tls.py is: its methods run in the
manager's loop, and the balancer is told by a task, never by a handler waiting on it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ripsvc import logs, sd
from ripsvc.control import CommandError

if TYPE_CHECKING:
    from ripsvc.manager.supervisor import Handle

log = logs.get("manager")


class Draining:
    """The drain commands of core.Manager."""

    # What they use of the manager (set by core.Manager.__init__).
    loop: asyncio.AbstractEventLoop
    stopping: bool
    started: bool

    if TYPE_CHECKING:
        def post(self, kind: str, child: Handle | None, value: Any) -> None: ...
        def begin_stop(self) -> None: ...
        def status_line(self) -> str: ...
        def _spawn(self, coro: Any) -> None: ...
        async def control(self, command: str, body: dict[str, object],
                          timeout: float | None = None) -> dict[str, Any] | None: ...

    def init_draining(self) -> None:
        self.draining_since: float | None = None  # time.time() of the drain; None: not
        self.drain_deadline: float | None = None  # loop time the app stops at (--for)
        self._drain_generation = 0  # a deadline set before the last command is stale
        self._drain_lock = asyncio.Lock()

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def command_drain(self, seconds: float | None = None) -> asyncio.Task[str | None]:
        """Fail readiness from now on; with `seconds`, stop the app after that long. Again
        while draining: the newest `seconds` (or none) is what counts."""
        self._refuse_while_stopping()
        if self.draining_since is None:
            self.draining_since = time.time()
        self._drain_generation += 1
        if seconds is None:
            self.drain_deadline = None
            log.info("draining: readiness fails, requests are still served (ripctl undrain "
                     "ends it)")
        else:
            self.drain_deadline = self.loop.time() + seconds
            self.loop.call_later(seconds, self.post, "drain_deadline", None,
                                 self._drain_generation)
            log.info("draining: readiness fails, requests are still served; stopping in "
                     "%.0f s", seconds)
        self._notify_status()
        return self.loop.create_task(self.tell_balancer_draining())

    def command_undrain(self) -> asyncio.Task[str | None]:
        """Readiness follows the workers again; a stop set by `drain --for` is called off.
        Not draining: nothing changes (a deploy script may undrain in any case)."""
        self._refuse_while_stopping()
        if self.draining_since is not None:
            log.info("undrained after %.0f s: readiness follows the workers again",
                     time.time() - self.draining_since)
        self.draining_since = None
        self.drain_deadline = None
        self._drain_generation += 1
        self._notify_status()
        return self.loop.create_task(self.tell_balancer_draining())

    def _refuse_while_stopping(self) -> None:
        if self.stopping:
            raise CommandError("stopping", "the app is stopping", 409)

    def _notify_status(self) -> None:
        if self.started:
            sd.notify(f"STATUS={self.status_line()}")

    async def handle_drain_deadline(self, _: Handle | None, generation: int) -> None:
        """`ripctl drain --for` ran out: the app stops (unless undrained or drained anew)."""
        if generation != self._drain_generation or not self.draining or self.stopping:
            return
        log.info("drained for as long as asked: stopping")
        self.begin_stop()

    async def tell_balancer_draining(self) -> str | None:
        """Send the balancer the drain state as it is when the call goes out (one call at a
        time, so that the last one sent is the newest). Returns why it failed, or None."""
        async with self._drain_lock:
            reply = await self.control("drain-app", {"draining": self.draining})
        if reply is None:
            return "the balancer does not answer; it is told as soon as it does"
        if not reply.get("ok"):
            return f"the balancer refused: {reply.get('error')}"
        return None

    def reconcile_drain(self, seen: str) -> None:
        """The balancer's drain state as the health tick saw it (`seen`: "" or why it is
        draining): one that says otherwise (restarted, or a call that failed) is told again."""
        if bool(seen) == self.draining or seen == "stopping":
            return
        log.warning("the balancer is %s, the app is %s: telling it again",
                    "draining" if seen else "not draining",
                    "draining" if self.draining else "not draining")
        self._spawn(self.tell_balancer_draining())

    def drain_state(self) -> dict[str, Any]:
        """What ripctl status and drain show."""
        if self.draining_since is None:
            return {"draining": False}
        stops_in = (None if self.drain_deadline is None
                    else round(max(0.0, self.drain_deadline - self.loop.time()), 1))
        return {"draining": True, "since": self.draining_since,
                "for": round(time.time() - self.draining_since, 1), "stops_in": stops_in}

    def drain_text(self) -> str:
        """"draining" and when it stops, for the status line ("" when not draining)."""
        state = self.drain_state()
        if not state["draining"]:
            return ""
        return ("draining" if state["stops_in"] is None
                else f"draining, stopping in {state['stops_in']:.0f} s")
