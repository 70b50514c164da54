"""The manager's control socket: what `ripctl status|reload|scale|stop APP` talk to."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from ripsvc import control
from ripsvc.control import CommandError

if TYPE_CHECKING:
    from ripsvc.manager.core import Manager


async def serve_control(manager: Manager) -> web.AppRunner:
    runner = web.AppRunner(make_app(manager), handle_signals=False, access_log=None)
    await runner.setup()
    sock = control.bind_socket(str(manager.runtime / "manager.sock"))
    await web.SockSite(runner, sock).start()
    return runner


async def balancer_query(manager: Manager, command: str) -> Any:
    connector = aiohttp.UnixConnector(path=str(manager.control_path))
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(f"http://rip/{urllib.parse.quote(command)}") as resp:
        reply = json.loads(await resp.read())
    if not reply.get("ok"):
        raise CommandError("balancer", f"the balancer answered: {reply.get('error')}", 502)
    return reply["data"]


def make_app(manager: Manager) -> web.Application:
    async def status(body: dict[str, Any]) -> Any:
        """Each worker (id, pid, state, version, requests, uptime), the queue, totals."""
        try:
            pool = {w["id"]: w for w in await balancer_query(manager, "pool")}
            stats = await balancer_query(manager, "stats")
        except (aiohttp.ClientError, OSError) as exc:
            raise CommandError("balancer-unreachable", f"the balancer does not answer: {exc}",
                               502) from None
        now = time.time()
        workers = []
        for slot in manager.slots:
            child = slot.child
            if child is None:
                continue
            seen = pool.get(child.id, {})
            state = seen.get("state") or ("starting" if not child.ready.done() else "out")
            workers.append({"id": child.id, "pid": child.pid, "state": state,
                            "version": child.version, "requests": seen.get("served", 0),
                            "uptime": round(now - child.started, 1), "status": child.status})
        return {"app": manager.plan.name, "version": manager.version, "workers": workers,
                "queue": stats["queue"], "balancer": stats["status"],
                "requests": sum(w["requests"] for w in workers),
                "reloading": manager.reloading is not None and not manager.reloading.done()}

    async def reload(body: dict[str, Any]) -> Any:
        """A rolling restart; with {"wait": true} the reply comes when it is done."""
        task = await manager.command("reload")
        if task is None:
            raise CommandError("reload-in-progress", "a rolling restart is already in progress",
                               409)
        if not body.get("wait"):
            return {"started": True, "version": manager.version}
        failure = await asyncio.shield(task)
        if failure:
            raise CommandError("reload-failed", failure, 500)
        return {"done": True, "version": manager.version}

    async def scale(body: dict[str, Any]) -> Any:
        """Run {"workers": N} workers."""
        workers = body.get("workers")
        if not isinstance(workers, int) or isinstance(workers, bool) or not 0 < workers <= 1024:
            raise CommandError("bad-request", "'workers' must be a whole number in 1..1024")
        await asyncio.shield(await manager.command("scale", workers=workers))
        return {"workers": len(manager.slots)}

    async def stop(body: dict[str, Any]) -> Any:
        """Stop the app gracefully (the reply comes first)."""
        await manager.command("stop")
        return {"stopping": True}

    return control.make_app({"status": status, "reload": reload, "scale": scale,
                             "stop": stop})
