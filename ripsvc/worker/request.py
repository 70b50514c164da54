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
