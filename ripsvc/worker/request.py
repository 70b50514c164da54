"""A parsed request as the worker's app adapters see it, and what they share to check what an
app answers."""

from __future__ import annotations

from typing import Final

from ripsvc.body import Body


class Request:
    # A plain class, not a dataclass: compiled by mypyc, its __init__ is C, where a
    # dataclass's generated __init__ would run interpreted on every request.
    __slots__ = ("body", "client", "headers", "http_version", "keep_alive", "method", "scheme",
                 "server", "target")

    def __init__(self, method: str, target: bytes, http_version: str,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool, body: Body,
                 client: tuple[str, int] | None, scheme: str,
                 server: tuple[str, int] | None = None) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = without_underscores(headers)
        self.keep_alive = keep_alive
        self.body = body
        #: The client as the balancer saw it (its Rip-Client header), for REMOTE_ADDR and ASGI
        #: `client`; the scheme it was served on (X-Forwarded-Proto, which it sets); and the
        #: address and port the client connected to (its Rip-Server header), for ASGI `server`
        #: and SERVER_NAME/SERVER_PORT.
        self.client = client
        self.scheme = scheme
        self.server = server

    @property
    def path_and_query(self) -> tuple[bytes, bytes]:
        path, _, query = self.target.partition(b"?")
        path = path.partition(b"#")[0]
        if not path.startswith(b"/"):  # absolute-form (http://host/path) or "*"
            scheme_sep = path.find(b"://")
            if scheme_sep >= 0:
                slash = path.find(b"/", scheme_sep + 3)
                path = path[slash:] if slash >= 0 else b"/"
        return path, query.partition(b"#")[0]


def without_underscores(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The header fields without those whose name holds an underscore.

    WSGI turns `-` into `_` in header names (so do ASGI frameworks that build CGI-style names,
    as Django does), so `X_Auth_User: evil` would reach the app as the same HTTP_X_AUTH_USER
    as the `X-Auth-User` set by an authenticating proxy, and be merged with it. The balancer
    drops such fields already; this keeps them from reaching the app when a request comes any
    other way. gunicorn (`header_map = drop`) and nginx (`underscores_in_headers off`) drop
    them too."""
    for name, _ in headers:
        if _UNDERSCORE in name:
            return [(name, value) for name, value in headers if _UNDERSCORE not in name]
    return headers


#: An int, not b"_": `b"_" in name` first tries b"_" as an integer, and the TypeError that
#: raises and clears made this scan cost 9,000 instructions a request (bench/hotpath.py).
_UNDERSCORE: Final = ord("_")


def parse_client(value: bytes) -> tuple[str, int] | None:
    """`203.0.113.7:51234` or `[2001:db8::7]:51234`: the balancer's Rip-Client header (the
    client's address and port) and Rip-Server header (those of the socket it connected to)."""
    host, sep, port = value.decode("latin-1").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


def parse_server(value: bytes) -> tuple[str, int] | None:
    """parse_client for the Rip-Server header, which names one of the balancer's few
    listening addresses: parsed once each, not on every request."""
    parsed = _SERVERS.get(value)
    if parsed is None:
        parsed = parse_client(value)
        if parsed is not None:
            if len(_SERVERS) >= 64:  # more than a balancer listens on: stay small
                _SERVERS.clear()
            _SERVERS[value] = parsed
    return parsed


_SERVERS: Final[dict[bytes, tuple[str, int]]] = {}


def as_bytes(value: object, what: str) -> bytes:
    """`value` as bytes if it is bytes-like (bytes, bytearray, memoryview), else TypeError.

    What an app hands us is checked here rather than by a declared type: compiled, a declared
    `bytes` refuses a bytearray with mypyc's own TypeError, which the interpreted build would
    have let through; this way both builds take the same values and refuse the rest alike."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)  # a memoryview of 2-byte items: all its bytes, not len() of them
    raise TypeError(f"{what} must be bytes-like, not {type(value).__name__}")
