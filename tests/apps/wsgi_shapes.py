"""WSGI callables of the shapes gunicorn serves, for the loader and conformance tests.

Each one reports, as JSON, what the server put in its environ about the server, the client
and the request's headers.
"""

import functools
import json
from wsgiref.validate import validator

KEYS = ("SERVER_NAME", "SERVER_PORT", "HTTP_HOST", "REMOTE_ADDR", "HTTP_X_AUTH_USER",
        "wsgi.url_scheme")


def app(environ, start_response):
    seen = {key: environ.get(key) for key in KEYS}
    seen["headers"] = sorted(key for key in environ if key.startswith("HTTP_"))
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


#: wsgiref's validator: a (*args, **kw) wrapper that also checks the server's side of PEP 3333.
validated = validator(app)


def _log_calls(inner):
    def wrapper(*args, **kwargs):  # no functools.wraps: the signature is (*args, **kwargs)
        return inner(*args, **kwargs)
    return wrapper


wrapped = _log_calls(app)


def with_exc_info(environ, start_response, exc_info=None):
    """A third, optional parameter: still called with two arguments."""
    return app(environ, start_response)


partial = functools.partial(with_exc_info, exc_info=None)


class Instance:
    def __call__(self, environ, start_response):
        return app(environ, start_response)


instance = Instance()


class AppClass:
    """PEP 3333's own example of a class as the application object: an instance is the body."""

    def __init__(self, environ, start_response):
        self.response = app(environ, start_response)

    def __iter__(self):
        yield from self.response


def bodies(environ, start_response):
    """Response shapes beyond PEP 3333's letter that gunicorn takes, and two it refuses."""
    path = environ["PATH_INFO"]
    if path == "/tuple-headers":
        start_response("200 OK", (("Content-Type", "text/plain"),))
        return [b"tuple\n"]
    if path == "/list-headers":
        start_response("200 OK", [["Content-Type", "text/plain"]])
        return [b"list\n"]
    if path == "/asyncio":  # what some views do, and async_to_sync (asgiref, with Django)
        import asyncio

        from asgiref.sync import async_to_sync

        ran = asyncio.run(asyncio.sleep(0, result="asyncio.run"))
        converted = async_to_sync(asyncio.sleep)(0, result="async_to_sync")
        start_response("200 OK", [])
        return [f"{ran} {converted}\n".encode()]
    if path == "/bytes-like":
        start_response("200 OK", [])
        return iter([bytearray(b"one "), memoryview(b"two\n")])
    if path == "/bytes-like-list":
        start_response("200 OK", [])
        return [bytearray(b"one "), memoryview(b"two\n")]
    if path == "/write":
        write = start_response("200 OK", [])
        write(bytearray(b"written "))
        return [b"returned\n"]
    if path == "/file-wrapper":
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](BytearrayFile(b"from a file-like\n"), 4)
    if path == "/str-piece":
        start_response("200 OK", [])
        return iter(["text"])
    if path == "/bytes-header":
        start_response("200 OK", [(b"X-A", b"1")])
        return [b"bytes\n"]
    if path.startswith("/status-"):  # a status that is no final answer: 100, 103, 600
        start_response(f"{path[8:]} Whatever", [])
        return [b"text"]
    if path == "/bytes-status":
        start_response(b"200 OK", [])
        return [b"bytes\n"]
    start_response("404 Not Found", [])
    return [b""]


class BytearrayFile:
    """A file-like object whose read() returns bytearrays, as a buffer-backed reader may."""

    def __init__(self, data):
        self.data = bytearray(data)

    def read(self, size):
        piece, self.data = self.data[:size], self.data[size:]
        return piece
