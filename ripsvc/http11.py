"""HTTP/1.1 bytes shared by the worker and the balancer."""

from __future__ import annotations

import http
import re
from collections.abc import Sequence

_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in http.HTTPStatus
}
BUSY_HEADER = b"rip-worker-busy: 1\r\n"
#: The callbacks of an httptools parser that must call nothing: one probing the parser's
#: behaviour, or one put in place of a closed connection's, whose own would keep that
#: connection in a reference cycle (balancer/client.py).
NO_CALLBACKS = object()
#: A header field's name is a token (RFC 9110 §5.6.2); names seen valid are remembered (apps
#: use a handful), up to a bound.
_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALID_NAMES: set[bytes] = set()
_VALID_NAMES_MAX = 1024


def field_lines(fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    """An app's header fields as header lines, or ValueError for a field that would not be
    one field on the wire: a CR or LF in a value would end it early and let whoever chose the
    value add fields of their own (response splitting); a NUL, or a name that is not a
    token, is refused too. Values are checked all at once by counting line ends: cheap
    enough for every response."""
    parts: list[bytes] = []
    for name, value in fields:
        if name not in _VALID_NAMES:
            if _NAME.fullmatch(name) is None:
                raise ValueError(f"invalid header field name from the app: {name!r}")
            if len(_VALID_NAMES) < _VALID_NAMES_MAX:
                _VALID_NAMES.add(name)
        parts += (name, b": ", value, b"\r\n")
    lines = b"".join(parts)
    count = len(parts) // 4
    if lines.count(b"\r") != count or lines.count(b"\n") != count or lines.find(b"\0") >= 0:
        bad = next(f for f in fields if any(c in f[1] for c in (b"\r", b"\n", b"\0")))
        raise ValueError(f"invalid header field value from the app: {bad[0]!r}: {bad[1]!r}")
    return lines


def status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    if line is None:
        line = b"HTTP/1.1 %d \r\n" % code
    return line


def status_body(code: int) -> bytes:
    """The plain-text body of a response of our own that says no more than its status: what
    a client reads of an error that is ours to answer, never its cause."""
    return b"%d %s\n" % (code, http.HTTPStatus(code).phrase.encode())


def simple_response(code: int, *, close: bool, extra: bytes = b"", body: bytes = b"") -> bytes:
    if not body and code >= 400:
        body = status_body(code)
    return b"".join((
        status_line(code),
        extra,
        b"content-type: text/plain; charset=utf-8\r\n" if body else b"",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n" if close else b"",
        b"\r\n",
        body,
    ))
