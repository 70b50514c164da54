"""The manager's control socket: what `ripctl status|reload|scale|stop APP` talk to.

It reads the manager's state and sends it commands (which run in the manager's loop); what it
needs of the manager is `Manager` below, which core.Manager is, so that this module does not
import core.py, which imports it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ripsvc import control, hosts, paths
from ripsvc.control import CommandError
from ripsvc.manager.balancer_client import BalancerClient, BalancerUnreachable
from ripsvc.manager.supervisor import Handle, ServePlan


class Slot(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def child(self) -> Handle | None: ...

    @property
    def retry_at(self) -> float:
        """While vacant: the loop time of the next attempt."""

    @property
    def websocket(self) -> bool:
        """A WebSocket worker's position."""


class Manager(Protocol):
    """What the control socket reads of the manager (core.Manager)."""

    @property
    def runtime(self) -> Path: ...

    @property
    def plan(self) -> ServePlan: ...

    @property
    def client(self) -> BalancerClient: ...

    @property
    def slots(self) -> Sequence[Slot]: ...

    @property
    def version(self) -> int: ...

    @property
    def reloading(self) -> asyncio.Task[str | None] | None: ...

    @property
    def hosts(self) -> hosts.Registry: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def load_error(self) -> str | None:
        """Why the app on disk fails to load, since a successor could not (None: it loads)."""

    def health(self) -> str:
        """ "healthy", or "degraded: 2/3 workers, …" and why."""

    def drain_state(self) -> dict[str, Any]:
        """{"draining": false}, or since when, for how long, and "stops_in" (ripctl drain)."""

    def requests_total(self, stats: dict[str, Any]) -> int:
        """The app's requests since start (the balancer's `stats` and its restarts')."""

    async def command(self, name: str, **args: Any) -> Any:
        """Run `command_<name>` in the manager's loop."""


async def serve_control(manager: Manager) -> web.AppRunner:
    runner = web.AppRunner(make_app(manager), handle_signals=False, access_log=None)
    await runner.setup()
    sock = control.bind_socket(str(manager.runtime / paths.MANAGER_SOCKET))
    await web.SockSite(runner, sock).start()
    return runner


def kind(slot: Slot) -> str:
    return "websocket" if slot.websocket else "http"


def make_app(manager: Manager) -> web.Application:
    async def status(body: dict[str, Any]) -> Any:
        """Each worker (id, kind, pid, state, version, requests, uptime; a WebSocket
        worker's requests are the WebSockets it took, `open` those it holds), the queue,
        totals, and the app's health ("healthy", or "degraded: 2/3 workers, …" and why)."""
        try:
            pool = {w["id"]: w for w in await manager.client.query("pool")}
            stats = await manager.client.query("stats")
            kernel = await manager.client.query("kernel")
        except BalancerUnreachable as exc:
            raise CommandError("balancer-unreachable", f"the balancer does not answer: {exc}",
                               502) from None
        now = time.time()
        workers = []
        for slot in manager.slots:
            child = slot.child
            if child is None:
                wait = max(0.0, slot.retry_at - manager.loop.time())
                workers.append({"id": slot.id, "kind": kind(slot), "pid": 0, "state": "vacant",
                                "reason": f"no worker: the app on disk fails to load; the "
                                          f"next attempt in {wait:.0f} s",
                                "version": 0, "requests": 0, "uptime": 0.0, "status": ""})
                continue
            seen = pool.get(child.id, {})
            state = seen.get("state") or ("starting" if not child.ready.done() else "out")
            reason = seen.get("reason", "") if seen else (
                "" if state == "starting" else "not in the balancer's pool (being joined)")
            workers.append({"id": child.id, "kind": kind(slot), "pid": child.pid,
                            "state": state, "reason": reason, "version": child.version,
                            "requests": seen.get("served", 0),
                            "uptime": round(now - child.started, 1), "status": child.status,
                            **({"open": seen.get("open", 0)} if slot.websocket else {})})
        health = manager.health()
        # The balancer's own "status" also holds the manager's last word on the app's health,
        # told again within a second of a change: what the balancer itself says is whether a
        # worker is in rotation.
        serving = bool(stats.get("serving", True))
        if health == "healthy" and not serving:
            health = "degraded: no worker in rotation"
        return {"app": manager.plan.name, "version": manager.version, "workers": workers,
                "queue": stats["queue"], "balancer": "healthy" if serving else "degraded",
                "health": health,
                "load_error": manager.load_error,
                "kernel": kernel, "ports": stats.get("ports", []),
                "requests": sum(w["requests"] for w in workers if w["kind"] == "http"),
                "requests_total": manager.requests_total(stats),
                "reloading": manager.reloading is not None and not manager.reloading.done(),
                "drain": manager.drain_state()}

    async def reload(body: dict[str, Any]) -> Any:
        """A rolling restart; with {"wait": true} the reply comes when it is done. With
        {"tls": true} only the certificate is reloaded (renewed files), without a restart."""
        if body.get("tls"):
            failure = await asyncio.shield(await manager.command("tls_reload"))
            if failure:
                raise CommandError("tls-reload-failed", failure, 422)
            return {"done": True, "tls": True}
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
        return {"workers": sum(1 for slot in manager.slots if not slot.websocket)}

    async def drain(body: dict[str, Any]) -> Any:
        """Fail readiness while serving every request that arrives; {"for": SECONDS}: then
        stop the app after that long. The reply comes once the balancer has it."""
        seconds = body.get("for")
        if seconds is not None and (not isinstance(seconds, int | float)
                                    or isinstance(seconds, bool) or seconds < 0):
            raise CommandError("bad-request", "'for' must be a number of seconds ≥ 0")
        await told(await manager.command("drain", seconds=seconds))
        return manager.drain_state()

    async def undrain(body: dict[str, Any]) -> Any:
        """Readiness follows the workers again (a stop set by drain --for is called off);
        "was": whether the app was draining (undraining twice changes nothing)."""
        was = manager.drain_state()["draining"]
        await told(await manager.command("undrain"))
        return {**manager.drain_state(), "was": was}

    async def told(task: asyncio.Task[str | None]) -> None:
        failure = await asyncio.shield(task)
        if failure:
            raise CommandError("balancer-unreachable", f"the app's state is kept, but {failure}",
                               502)

    async def stop(body: dict[str, Any]) -> Any:
        """Stop the app gracefully (the reply comes first)."""
        await manager.command("stop")
        return {"stopping": True}

    async def registry(request: web.Request) -> web.Response:
        """The host registry: GET lists it; POST {"host": NAME} adds, DELETE {"host": NAME}
        removes a name (kept in the state file, sent to the balancer)."""
        action = {"GET": "list", "POST": "add", "DELETE": "remove"}.get(request.method)
        if action is None:
            return control.error("bad-method", "use GET, POST or DELETE", 405)
        host: object = request.query.get("host", "")
        if request.can_read_body:
            try:
                body = json.loads(await request.read() or b"{}")
                host = body.get("host", host) if isinstance(body, dict) else None
            except (ValueError, UnicodeDecodeError):
                host = None
            if not isinstance(host, str):
                return control.error("bad-json", 'expected {"host": NAME}', 400)
        if action != "list" and not host:
            return control.error("bad-request", "'host' must be a host name", 400)
        try:
            task = await manager.command("hosts", action=action, host=host)
            if task is not None:
                await asyncio.shield(task)
        except CommandError as exc:
            return control.error(exc.code, str(exc), exc.status)
        return control.ok({"configured": list(manager.hosts.configured),
                           "added": list(manager.hosts.added)})

    async def metrics(request: web.Request) -> web.Response:
        """The balancer's Prometheus metrics, relayed."""
        try:
            status, content_type, body = await manager.client.raw("/metrics")
        except BalancerUnreachable as exc:
            return control.error("balancer-unreachable", f"the balancer does not answer: {exc}",
                                 502)
        return web.Response(body=body, status=status, headers={"Content-Type": content_type})

    return control.make_app({"status": status, "reload": reload, "scale": scale,
                             "stop": stop, "drain": drain, "undrain": undrain},
                            raw={"/registry": registry, "/metrics": metrics})
