"""Compression of the app's responses (settings `compression`, `compression_types`,
`compression_min_size`): which responses, and the encoders that compress them as they stream.

A response is compressed, as nginx's gzip module does it, when the client accepts gzip (or br,
when the `brotli` module is installed: Debian's python3-brotli) over HTTP/1.1, and the response
has a body, is not a 206, carries no Content-Encoding and no `Cache-Control: no-transform`,
has a type of `compression_types`, and is not known to be shorter than `compression_min_size`
(a streamed one, of unknown length, is compressed). Its Content-Length goes (the body is sent
chunked), its ETag becomes weak (the bytes differ, the meaning does not), and every response
that could be compressed says `Vary: Accept-Encoding`, compressed or not, so that a cache in
between keeps both.

Each piece of the worker's body is compressed and flushed at once (a sync flush), so that a
stream (Server-Sent Events, a chunked response) reaches the client piece by piece as before;
a response read in one piece costs one flush more than compressing it whole (a few bytes).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Final

from ripsvc.balancer.static import ACCEPT_BR, ACCEPT_GZIP, accepted

if TYPE_CHECKING:
    from ripsvc.balancer.options import BalancerOptions

try:  # optional at run time (Suggests: python3-brotli)
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the system
    _brotli = None

brotli: Any = _brotli
#: Set on an exchange whose response is to be looked at (compression on, an HTTP/1.1 request),
#: with the encodings its client accepts (ACCEPT_GZIP, ACCEPT_BR).
EXAMINE: Final = 4
#: zlib's level: 1, nginx's default (gzip_comp_level): on 10 KB of prose, level 6 saves 57 %
#: where 1 saves 54 %, for 60 % more CPU, and the balancer is one process. Brotli's quality 4
#: saves 6 % more than gzip's level 1 there, for 1.8 times its CPU (docs/performance.md);
#: quality 3 costs more than 4 with this library, 1 and 0 save less than gzip.
GZIP_LEVEL: Final = 1
BROTLI_QUALITY: Final = 4


class GzipEncoder:
    __slots__ = ("_z",)

    def __init__(self, length: int) -> None:
        # A window and a hash table no larger than the body needs, as nginx sizes them:
        # less memory to set up per response (a 10 KB body: 40 % less CPU than the default).
        bits = 15 if length < 0 else max(9, min(15, (length - 1).bit_length()))
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + bits, max(1, bits - 7))

    def compress(self, data: bytes) -> bytes:
        z = self._z
        return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class BrotliEncoder:
    __slots__ = ("_c",)

    def __init__(self, length: int) -> None:
        window = 22 if length < 0 else max(10, min(22, (length - 1).bit_length()))
        self._c = brotli.Compressor(mode=brotli.MODE_TEXT, quality=BROTLI_QUALITY, lgwin=window)

    def compress(self, data: bytes) -> bytes:
        c = self._c
        return bytes(c.process(data)) + bytes(c.flush())

    def finish(self) -> bytes:
        return bytes(self._c.finish())


Encoder = GzipEncoder | BrotliEncoder


class Compression:
    """The balancer's compression settings, read once."""

    _last: tuple[BalancerOptions, Compression | None] | None = None

    def __init__(self, types: tuple[str, ...], min_size: int, with_brotli: bool) -> None:
        self.exact = frozenset(t.encode() for t in types if "*" not in t)
        self.prefixes = tuple(t[:-1].encode() for t in types if t.endswith("/*"))  # text/
        #: application/*+json: (b"application/", b"+json")
        self.suffixes = tuple((t.partition("*")[0].encode(), t.partition("*")[2].encode())
                              for t in types if "*+" in t)
        self.min_size = min_size
        self.encodings = ACCEPT_GZIP | (ACCEPT_BR if with_brotli else 0)

    @classmethod
    def of(cls, options: BalancerOptions) -> Compression | None:
        """The balancer's compression (one for all its connections); None when it is off."""
        if not options.compression:
            return None
        last = cls._last
        if last is not None and last[0] is options:
            return last[1]
        found = cls(options.compression_types, options.compression_min_size,
                    brotli is not None)
        cls._last = (options, found)
        return found

    def accepts(self, fields: list[tuple[bytes, bytes]]) -> int:
        """EXAMINE, with the encodings the request's Accept-Encoding asks for that we have."""
        for name, value in fields:
            if name == b"accept-encoding":
                return EXAMINE | (accepted(value) & self.encodings)
        return EXAMINE

    def compressible(self, content_type: bytes) -> bool:
        kind = content_type.partition(b";")[0].strip().lower()
        if kind in self.exact:
            return True
        if kind.startswith(self.prefixes):
            return True
        return any(kind.startswith(start) and kind.endswith(end)
                   for start, end in self.suffixes)

    def negotiate(self, accept: int, status: int, fields: list[tuple[bytes, bytes]]
                  ) -> tuple[Encoder | None, list[tuple[bytes, bytes]]]:
        """The encoder for a response (None: sent as it is) and its fields as they go out."""
        if status == 206 or status < 200:
            return None, fields
        kind = b""
        length = -1
        vary = -1
        for i, (name, value) in enumerate(fields):
            if name == b"content-type":
                kind = value
            elif name == b"content-encoding":
                if value.strip().lower() != b"identity":
                    return None, fields  # already encoded
            elif name == b"cache-control":
                if value.lower().find(b"no-transform") >= 0:
                    return None, fields
            elif name == b"content-range":
                return None, fields
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"vary":
                vary = i
        if not kind or not self.compressible(kind):
            return None, fields
        fields = list(fields)
        if vary < 0:
            fields.append((b"vary", b"Accept-Encoding"))
        else:
            said = fields[vary][1]
            tokens = [t.strip().lower() for t in said.split(b",")]
            if b"accept-encoding" not in tokens and b"*" not in tokens:
                fields[vary] = (b"vary", said + b", Accept-Encoding")
        use = accept & self.encodings
        if not use or 0 <= length < self.min_size:
            return None, fields
        encoder: Encoder
        if use & ACCEPT_BR:
            encoder, coding = BrotliEncoder(length), b"br"
        else:
            encoder, coding = GzipEncoder(length), b"gzip"
        out: list[tuple[bytes, bytes]] = []
        for name, value in fields:
            if name == b"content-length":
                continue
            if name == b"etag" and value.startswith(b'"'):
                value = b"W/" + value  # nginx does the same
            out.append((name, value))
        out.append((b"content-encoding", coding))
        return encoder, out
