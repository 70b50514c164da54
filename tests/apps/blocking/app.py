"""An ASGI app that can block its event loop (/block?s=N), stalling the watchdog pings."""

import asyncio
import os
import time
from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    query = parse_qs(scope["query_string"].decode())
    if scope["path"] == "/block":
        time.sleep(float(query["s"][0]))  # a bug: blocks the whole loop
    elif scope["path"] == "/slow":
        await asyncio.sleep(float(query["s"][0]))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
