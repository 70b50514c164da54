"""A minimal ASGI app in the shape tutorials write, for the ASGI conformance tests.

It has no lifespan support and says so by returning at once for any scope but "http". Each
path answers with one of the shapes the ASGI spec allows:

/list-headers   → headers as a list of lists (the spec's own notation)
/tuple-headers  → headers as a tuple of tuples
/bytearray      → the body as a bytearray, header values as bytearrays
/memoryview     → the body as a memoryview (Starlette supports it), of 16-bit items
/pieces         → a streamed body of bytearray and memoryview pieces
/start-only     → http.response.start 204, then the app returns with no body message
/start-only-200 → the same with 200
/start-only-promise → the same with 200 and Content-Length: 5
/more-body-int  → more_body given as 1 and 0 instead of True and False
/str-body       → a str body: not bytes-like, refused
/str-header     → a header value given as a str: refused
/scope          → scope["server"], scope["client"] and the header names as JSON

`took_startup` is the same app with a lifespan that takes lifespan.startup and returns
without answering it.
"""

import array
import json
from types import MappingProxyType


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/list-headers":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [[b"x-a", b"1"], [b"content-type", b"text/plain"]]})
        await send({"type": "http.response.body", "body": b"list\n"})
    elif path == "/tuple-headers":
        await send({"type": "http.response.start", "status": 200,
                    "headers": ((b"x-a", b"1"), (b"content-type", b"text/plain"))})
        await send({"type": "http.response.body", "body": b"tuple\n"})
    elif path == "/bytearray":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(bytearray(b"x-a"), bytearray(b"1"))]})
        await send({"type": "http.response.body", "body": bytearray(b"bytearray\n")})
    elif path == "/memoryview":
        await send({"type": "http.response.start", "status": 200,
                    "headers": iter([(b"x-a", memoryview(b"1"))])})
        body = memoryview(array.array("H", b"memoryview\n\n".ljust(12)))
        await send({"type": "http.response.body", "body": body})
    elif path == "/pieces":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": bytearray(b"one "),
                    "more_body": True})
        await send({"type": "http.response.body", "body": memoryview(b"two\n"),
                    "more_body": False})
    elif path == "/start-only":
        await send({"type": "http.response.start", "status": 204, "headers": [(b"x-a", b"1")]})
    elif path == "/start-only-200":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    elif path == "/start-only-promise":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})
    elif path.startswith("/status-"):  # a status that is no final answer: 100, 103, 600
        await send({"type": "http.response.start", "status": int(path[8:]), "headers": []})
        await send({"type": "http.response.body", "body": b"text"})
    elif path == "/str-body":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": "text"})
    elif path == "/str-header":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", "1")]})
        await send({"type": "http.response.body", "body": b"text"})
    elif path == "/more-body-int":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one ", "more_body": 1})
        await send({"type": "http.response.body", "body": b"two\n", "more_body": 0})
    elif path == "/scope":
        seen = {"server": scope["server"], "client": scope["client"],
                "headers": [name.decode() for name, _ in scope["headers"]]}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(seen).encode()})


async def took_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        return
    await app(scope, receive, send)


async def mappings(scope, receive, send):
    """Every message it sends is a read-only mapping, not a dict, lifespan replies included."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send(MappingProxyType({"type": message["type"] + ".complete"}))
            if message["type"] == "lifespan.shutdown":
                return
    await send(MappingProxyType({"type": "http.response.start", "status": 200,
                                 "headers": [(b"x-a", b"1")]}))
    await send(MappingProxyType({"type": "http.response.body", "body": b"mapping\n"}))
