"""A message body, complete before it is handed on: in memory, spooled to a file when large."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from typing import IO

#: Bodies up to this size stay in memory; larger ones are spooled to a temporary file.
MEMORY_BODY_LIMIT = 1 << 20
READ_CHUNK = 64 * 1024


class Body:
    """The request body, complete before the app is called (the balancer sends it whole)."""

    __slots__ = ("_file", "_memory", "size")

    def __init__(self) -> None:
        self.size = 0
        self._memory = bytearray()
        self._file: IO[bytes] | None = None

    def append(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._file is not None:
            self._file.write(chunk)
        elif self.size > MEMORY_BODY_LIMIT:
            self._file = tempfile.TemporaryFile(prefix="rip-body-")  # noqa: SIM115 (closed by close())
            self._file.write(self._memory)
            self._file.write(chunk)
            self._memory = bytearray()
        else:
            self._memory += chunk

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def read_all(self) -> bytes:
        """The whole body; only for bodies still in memory."""
        if self._file is not None:
            raise ValueError("the body is spooled to a file: read it with stream() or chunks()")
        return bytes(self._memory)

    def stream(self) -> IO[bytes]:
        """A readable binary file positioned at the start of the body."""
        if self._file is None:
            return io.BytesIO(self._memory)
        self._file.seek(0)
        return self._file

    def chunks(self) -> Iterator[bytes]:
        if self._file is None:
            yield bytes(self._memory)
            return
        stream = self.stream()
        while chunk := stream.read(READ_CHUNK):
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
