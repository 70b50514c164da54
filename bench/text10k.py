"""A 10 KB text/html response for bench/static.py --compression (ASGI): the first 10 KB of
the project's README, English prose and code as a page would hold (a synthetic page of
repeated rows would compress to nothing and cost less than a real one)."""

from pathlib import Path

BODY = (Path(__file__).resolve().parent.parent / "README.md").read_bytes()[:10240]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", b"%d" % len(BODY))]})
    await send({"type": "http.response.body", "body": BODY})
