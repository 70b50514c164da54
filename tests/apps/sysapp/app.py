"""The app of the systemd tests (copied into the booted box, beside its VERSION file).

/version      → VERSION, read at import (a rolling restart shows the new one)
/pid          → the worker's pid
/slow?ms=N    → answers after N ms
/hang?s=N     → blocks the event loop for N seconds (a hung worker)
/env?name=V   → the environment variable V ("-" if unset)
/write?path=P → writes P: "written", or the error
/user         → the worker's user id
/grow?kb=N    → keeps N KiB (1024 unless said) for the worker's life (a leak); the pid
"""

import asyncio
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

VERSION = (Path(__file__).parent / "VERSION").read_bytes().strip()
KEPT = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(int(query.get("ms", "100")) / 1000)
    elif path == "/hang":
        time.sleep(float(query.get("s", "10")))
    elif path == "/grow":
        KEPT.append(b"\1" * (int(query.get("kb", "1024")) << 10))  # written: resident
    body = {"/version": VERSION, "/pid": str(os.getpid()).encode(),
            "/grow": str(os.getpid()).encode(),
            "/user": str(os.getuid()).encode()}.get(path, b"ok")
    if path == "/env":
        body = os.environ.get(query["name"], "-").encode()
    elif path == "/write":
        try:
            Path(query["path"]).write_text("x")
            body = b"written"
        except OSError as exc:
            body = str(exc).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": body})
