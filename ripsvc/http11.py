"""HTTP/1.1 bytes shared by the worker and the balancer."""

from __future__ import annotations

import http

_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in http.HTTPStatus
}
BUSY_HEADER = b"rip-worker-busy: 1\r\n"


def status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    if line is None:
        line = b"HTTP/1.1 %d \r\n" % code
    return line


def simple_response(code: int, *, close: bool, extra: bytes = b"", body: bytes = b"") -> bytes:
    if not body and code >= 400:
        body = b"%d %s\n" % (code, http.HTTPStatus(code).phrase.encode())
    return b"".join((
        status_line(code),
        extra,
        b"content-type: text/plain; charset=utf-8\r\n" if body else b"",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n" if close else b"",
        b"\r\n",
        body,
    ))
