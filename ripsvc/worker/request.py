"""A parsed request as the worker's app adapters see it."""

from __future__ import annotations

from ripsvc.body import Body


class Request:
    # A plain class, not a dataclass: compiled by mypyc, its __init__ is C, where a
    # dataclass's generated __init__ would run interpreted on every request.
    __slots__ = ("body", "client", "headers", "http_version", "keep_alive", "method", "scheme",
                 "target")

    def __init__(self, method: str, target: bytes, http_version: str,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool, body: Body,
                 client: tuple[str, int] | None, scheme: str) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body
        #: The client as the balancer saw it (its Rip-Client header), for REMOTE_ADDR and ASGI
        #: `client`; and the scheme it was served on (X-Forwarded-Proto, which it sets).
        self.client = client
        self.scheme = scheme

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


def parse_client(value: bytes) -> tuple[str, int] | None:
    """`203.0.113.7:51234` or `[2001:db8::7]:51234` (the balancer's Rip-Client header)."""
    host, sep, port = value.decode("latin-1").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)
