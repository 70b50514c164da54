"""The balancer's control commands: workers join, leave and drain; the pool and stats."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from ripsvc import control, edge
from ripsvc.balancer import exposition
from ripsvc.balancer.core import Balancer
from ripsvc.balancer.exposition import RECYCLE_EVENTS
from ripsvc.control import CommandError, require

#: What the manager tells the balancer to count: worker restarts, rolling restarts, workers it
#: found ready but missing from the pool (joined again), ids in the pool it does not run, and
#: workers recycled, by reason (recycles_memory …).
MANAGER_EVENTS = ("worker_restarts", "reloads", "pool_rejoins", "pool_strays",
                  *RECYCLE_EVENTS)


def make_app(balancer: Balancer) -> web.Application:
    pool = balancer.pool

    def find(body: dict[str, Any]) -> Any:
        worker_id = require(body, "id")
        slot = pool.slots.get(worker_id) or pool.websockets.get(worker_id)
        if slot is None:
            raise CommandError("unknown-worker", f"no worker {worker_id!r} in the pool", 404)
        return slot

    async def join(body: dict[str, Any]) -> Any:
        """Add a ready worker: {"id", "socket", "version"}; a known id is replaced. A
        WebSocket worker: "kind": "websocket", with its "capacity" (WebSockets at once)."""
        kind = body.get("kind", "http")
        if kind == "websocket":
            capacity = body.get("capacity", 1000)
            if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
                raise CommandError("bad-request", "'capacity' must be a whole number from 1")
            return balancer.join_websocket(require(body, "id"), require(body, "socket"),
                                           str(body.get("version", "")), capacity).describe()
        if kind != "http":
            raise CommandError("bad-request", "'kind' must be http or websocket")
        slot = balancer.join(require(body, "id"), require(body, "socket"),
                             str(body.get("version", "")))
        return slot.describe()

    async def leave(body: dict[str, Any]) -> Any:
        """Remove a worker at once: {"id"} (drain it first to let its request finish)."""
        slot = find(body)
        balancer.leave(slot, "left")
        return slot.describe()

    async def drain(body: dict[str, Any]) -> Any:
        """No new requests for worker {"id"}; answers when its request in flight is done
        (or after "timeout" seconds, default 30, with code drain-timeout)."""
        slot = find(body)
        timeout = body.get("timeout", 30)
        if not isinstance(timeout, (int, float)) or timeout < 0:
            raise CommandError("bad-request", "'timeout' must be a number of seconds")
        drained = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not drained.done():
                drained.set_result(None)

        balancer.drain(slot, done)
        try:
            await asyncio.wait_for(drained, timeout)
        except TimeoutError:
            raise CommandError("drain-timeout", f"worker {slot.id!r} still busy after "
                               f"{timeout} s", 504) from None
        return slot.describe()

    async def drain_app(body: dict[str, Any]) -> Any:
        """The app's readiness (ready_path, the agent-check): {"draining": true} fails it
        while every request is still served, {"draining": false} undoes that; without a body,
        the state. The manager sends it (ripctl drain), again to a restarted balancer."""
        if body:
            draining = body.get("draining")
            if not isinstance(draining, bool):
                raise CommandError("bad-request", "'draining' must be true or false")
            balancer.drain_app("drained" if draining else "")
        return {"draining": bool(balancer.draining), "for": round(balancer.drained_for(), 3)}

    async def app_health(body: dict[str, Any]) -> Any:
        """{"health": "degraded: …"} from the manager when the app is not healthy (a worker
        position left vacant by a deploy that cannot load), "" when it is again: /status says
        it."""
        health = body.get("health")
        if not isinstance(health, str):
            raise CommandError("bad-request", "'health' must be a string")
        balancer.app_health = "" if health == "healthy" else health
        return {"health": balancer.app_health or "healthy"}

    async def pool_(body: dict[str, Any]) -> Any:
        """Every registered worker with its state (WebSocket workers: "kind": "websocket")."""
        return ([slot.describe() for slot in pool.slots.values()]
                + [slot.describe() for slot in pool.websockets.values()])

    async def stats(body: dict[str, Any]) -> Any:
        """Counters, the queue, and workers reported hung."""
        return {**balancer.status(), "counters": dict(balancer.stats),
                "hung": list(balancer.hung)}

    async def kernel(body: dict[str, Any]) -> Any:
        """The kernel's accept queue of each listening port and worker socket (sock_diag):
        {"port:8080": {"queued", "backlog"}, "worker:1": …}; empty if the kernel refuses."""
        return {name: {"queued": q.queued, "backlog": q.backlog}
                for name, q in balancer.kernel_queues().items()}

    async def hosts_(body: dict[str, Any]) -> Any:
        """The host registry; with {"added": [names]} the run-time names are replaced (the
        manager, which keeps them in the state file, sends the whole list)."""
        if "added" in body:
            added = body["added"]
            if not isinstance(added, list) or not all(isinstance(h, str) for h in added):
                raise CommandError("bad-request", "'added' must be a list of host names")
            try:
                balancer.hosts.set_added(added)
            except ValueError as exc:
                raise CommandError("bad-host", str(exc)) from None
        elif body:
            raise CommandError("bad-request", "expected no body or {\"added\": [names]}")
        return {"configured": list(balancer.hosts.configured),
                "added": list(balancer.hosts.added)}

    async def tls_reload(body: dict[str, Any]) -> Any:
        """Load the certificate files again (renewed): new connections get the new one,
        open connections keep theirs. A broken renewal is refused and the old one stays."""
        options = balancer.options
        if balancer.tls_context is None:
            raise CommandError("no-tls", "this balancer serves no HTTPS port", 409)
        from ripsvc import tls

        try:
            tls.reload(balancer.tls_context, Path(options.cert), Path(options.key))
        except edge.CertificateError as exc:
            raise CommandError("bad-certificate", str(exc), 422) from None
        return {"cert": options.cert}

    async def event(body: dict[str, Any]) -> Any:
        """The manager counts for the metrics: {"name": one of MANAGER_EVENTS}."""
        name = require(body, "name")
        if name not in MANAGER_EVENTS:
            raise CommandError("bad-request", f"'name' must be one of {', '.join(MANAGER_EVENTS)}")
        balancer.stats[name] += 1
        return {name: balancer.stats[name]}

    return control.make_app({"join": join, "leave": leave, "drain": drain, "pool": pool_,
                             "stats": stats, "kernel": kernel, "hosts": hosts_,
                             "tls-reload": tls_reload, "event": event,
                             "drain-app": drain_app, "app-health": app_health},
                            raw={"/metrics": metrics_handler(balancer)})


def metrics_handler(balancer: Balancer) -> Any:
    async def handle(request: web.Request) -> web.Response:
        """Prometheus text format (the control socket's /metrics and the metrics port's)."""
        return web.Response(body=exposition.render(balancer),
                            headers={"Content-Type": exposition.CONTENT_TYPE})

    return handle
