"""A WSGI app for the adapter's edge cases: errors before and after the response started,
exc_info, a body larger than the sockets hold, and close() of the returned iterable."""

import sys

closed = []


class Closing:
    """An iterable whose close() the server must call (PEP 3333)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def __iter__(self):
        return iter(self.pieces)

    def close(self):
        closed.append(1)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/raise":
        1 / 0
    if path == "/no-start":
        return [b"a body without a status\n"]
    if path == "/raise-late":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return late_error()
    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            1 / 0
        except ZeroDivisionError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                           sys.exc_info())
        return [b"an error page\n"]
    if path == "/exc-info-late":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return exc_info_late(start_response)
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"%08d" % i * 8192 for i in range(256))  # 256 pieces of 64 KiB
    if path == "/closing":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"one ", b"two\n"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"closed %d\n" % len(closed)]


def late_error():
    yield b"first piece\n"
    1 / 0


def exc_info_late(start_response):
    yield b"first piece\n"
    try:
        1 / 0
    except ZeroDivisionError:
        start_response("500 Internal Server Error", [], sys.exc_info())  # raises: too late
    yield b"never\n"
