"""The balancer's control commands: workers join, leave and drain; the pool and stats."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ripsvc import control
from ripsvc.balancer.core import Balancer
from ripsvc.control import CommandError, require


def make_app(balancer: Balancer) -> web.Application:
    pool = balancer.pool

    def find(body: dict[str, Any]) -> Any:
        worker_id = require(body, "id")
        slot = pool.slots.get(worker_id)
        if slot is None:
            raise CommandError("unknown-worker", f"no worker {worker_id!r} in the pool", 404)
        return slot

    async def join(body: dict[str, Any]) -> Any:
        """Add a ready worker: {"id", "socket", "version"}; a known id is replaced."""
        slot = balancer.join(require(body, "id"), require(body, "socket"),
                             str(body.get("version", "")))
        return slot.describe()

    async def leave(body: dict[str, Any]) -> Any:
        """Remove a worker at once: {"id"} (drain it first to let its request finish)."""
        slot = find(body)
        pool.remove(slot, "left")
        return slot.describe()

    async def drain(body: dict[str, Any]) -> Any:
        """No new requests for worker {"id"}; answers when its request in flight is done
        (or after "timeout" seconds, default 30, with code drain-timeout)."""
        slot = find(body)
        timeout = body.get("timeout", 30)
        if not isinstance(timeout, (int, float)) or timeout < 0:
            raise CommandError("bad-request", "'timeout' must be a number of seconds")
        try:
            await asyncio.wait_for(asyncio.shield(pool.drain(slot)), timeout)
        except TimeoutError:
            raise CommandError("drain-timeout", f"worker {slot.id!r} still busy after "
                               f"{timeout} s", 504) from None
        return slot.describe()

    async def pool_(body: dict[str, Any]) -> Any:
        """Every registered worker with its state."""
        return [slot.describe() for slot in pool.slots.values()]

    async def stats(body: dict[str, Any]) -> Any:
        """Counters, the queue, and workers reported hung."""
        return {**balancer.status(), "counters": dict(balancer.stats),
                "hung": list(balancer.hung)}

    return control.make_app({"join": join, "leave": leave, "drain": drain, "pool": pool_,
                             "stats": stats})
