"""memory_hog.py as an aiohttp app (served by aiohttp's own server in the worker)."""

import os

from aiohttp import web

KEPT: list[bytes] = []


async def grow(request: web.Request) -> web.Response:
    KEPT.append(b"\1" * (int(request.query.get("kb", "1024")) << 10))  # written: resident
    return web.Response(text=str(os.getpid()))


async def pid(request: web.Request) -> web.Response:
    return web.Response(text=str(os.getpid()))


app = web.Application()
app.router.add_get("/grow", grow)
app.router.add_get("/pid", pid)
