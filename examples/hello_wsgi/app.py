"""The WSGI example (PEP 3333, no framework).

/ping      → "pong <timestamp>"
/slow?ms=N → answers after N milliseconds (blocking, as WSGI apps do)
/echo      → the request body back, read from wsgi.input
/stream    → three pieces from a generator (chunked)
/file      → this file, through wsgi.file_wrapper
/environ   → a few environ keys, one per line
"""

import time
from urllib.parse import parse_qs


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/ping":
        return reply(start_response, b"pong %.6f\n" % time.time())
    if path == "/slow":
        ms = int(parse_qs(environ["QUERY_STRING"]).get("ms", ["100"])[0])
        time.sleep(ms / 1000)
        return reply(start_response, b"slept %d ms\n" % ms)
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        return reply(start_response, body, [("X-Body-Length", str(len(body)))])
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"piece %d\n" % i for i in range(3))
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 1024)  # noqa: SIM115
    if path == "/environ":
        keys = ["REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
                "SERVER_PROTOCOL", "HTTP_HOST", "wsgi.url_scheme", "wsgi.multiprocess"]
        lines = [f"{k}={environ.get(k)}" for k in keys]
        lines.append(f"wsgi.errors={hasattr(environ['wsgi.errors'], 'write')}")
        return reply(start_response, ("\n".join(lines) + "\n").encode())
    return reply(start_response, b"not found\n", status="404 Not Found")


def reply(start_response, body, headers=(), status="200 OK"):
    start_response(status, [("Content-Type", "text/plain"), *headers])
    return [body]
