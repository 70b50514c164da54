"""The aiohttp example: an aiohttp.web.Application with startup and cleanup signals.

/ping      → "pong <timestamp>"
/slow?ms=N → answers after N milliseconds
/echo      → the request body back
/started   → what the startup signal stored
"""

import asyncio
import logging
import time

from aiohttp import web

log = logging.getLogger("rip.app")


async def ping(request):
    return web.Response(text="pong %.6f\n" % time.time())


async def slow(request):
    ms = int(request.query.get("ms", "100"))
    await asyncio.sleep(ms / 1000)
    return web.Response(text=f"slept {ms} ms\n")


async def echo(request):
    body = await request.read()
    return web.Response(body=body, headers={"X-Body-Length": str(len(body))})


async def started(request):
    return web.Response(text=request.app["started"])


async def on_startup(app):
    app["started"] = "startup signal ran\n"


async def on_cleanup(app):
    log.warning("aiohttp example: cleanup signal ran")


app = web.Application(client_max_size=200 << 20)
app.router.add_get("/ping", ping)
app.router.add_get("/slow", slow)
app.router.add_post("/echo", echo)
app.router.add_get("/started", started)
app.on_startup.append(on_startup)
app.on_cleanup.append(on_cleanup)
