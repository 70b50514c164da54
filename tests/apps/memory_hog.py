"""An ASGI app whose memory grows on request, for max_rss (tests/test_recycle_memory.py).

/grow?kb=N → keeps N KiB more for the rest of the worker's life (a leak); answers the pid
/pid       → the worker's pid
/rss       → the worker's resident memory in bytes, as max_rss measures it
"""

import os
from urllib.parse import parse_qs

KEPT: list[bytes] = []


def rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/grow":
        KEPT.append(b"\1" * (int(query.get("kb", "1024")) << 10))  # written: resident
    body = str(rss() if path == "/rss" else os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
