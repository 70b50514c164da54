"""One host of tests/test_fleet.py's fleet, copied as app.py into a directory named after the
host, with the deployed version in the file VERSION beside it (read at import: a rolling
restart serves the new one). Every answer says "HOST vVERSION CLIENT_IP", after 10 ms of work,
so that requests are in flight when a host is drained or killed."""

import asyncio
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
HOST = HERE.name
VERSION = (HERE / "VERSION").read_text().strip()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await asyncio.sleep(0.01)
    client = scope.get("client") or ("-", 0)
    body = f"{HOST} v{VERSION} {client[0]}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
