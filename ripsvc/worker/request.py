"""A parsed request as the worker's app adapters see it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ripsvc.body import Body


@dataclass(slots=True)
class Request:
    method: str
    target: bytes
    http_version: str
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    body: Body = field(default_factory=Body)
    #: The client as the balancer saw it (its Rip-Client header), for REMOTE_ADDR and ASGI
    #: `client`; and the scheme it was served on (X-Forwarded-Proto, which it sets).
    client: tuple[str, int] | None = None
    scheme: str = "http"

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
