"""Message bodies held by a process: in memory, spooled to a temporary file when large.

`Body` is a request body, complete before it is handed on (the balancer reads it whole before
a worker is chosen; the worker before the app runs). `Spool` is a first-in first-out buffer of
response bytes the balancer could not write to a slow client yet.
"""

from __future__ import annotations

import contextlib
import io
import os
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
        """Add `chunk`; OSError (a full disk) when it does not fit in the temporary file."""
        self.size += len(chunk)
        file = self._file
        if file is not None:
            file.write(chunk)
        elif self.size > MEMORY_BODY_LIMIT:
            file = tempfile.TemporaryFile(prefix="rip-body-")  # noqa: SIM115 (closed by close())
            self._file = file
            file.write(self._memory)
            file.write(chunk)
            self._memory = bytearray()
        else:
            self._memory += chunk
            return
        # Flushed now, so that a full disk is an error of this append, answered 507, and never
        # of a later close() or read (the buffer holds at most a few small chunks: chunks
        # larger than it are written through anyway).
        file.flush()

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def read_all(self) -> bytes:
        """The whole body; only for bodies still in memory."""
        if self._file is not None:
            raise ValueError("the body is spooled to a file: read it with stream() or chunks()")
        return bytes(self._memory)

    def read_at(self, offset: int, size: int = READ_CHUNK) -> bytes:
        """Up to `size` bytes from `offset` (b"" at the end), leaving the body as it is: a body
        sent again to a second worker is read from the start again."""
        file = self._file
        if file is None:
            return bytes(self._memory[offset:offset + size])
        return os.pread(file.fileno(), size, offset)

    def stream(self) -> IO[bytes]:
        """A readable binary file positioned at the start of the body."""
        file = self._file
        if file is None:
            return io.BytesIO(self._memory)
        file.seek(0)
        return file

    def chunks(self) -> Iterator[bytes]:
        if self._file is None:
            yield bytes(self._memory)
            return
        stream = self.stream()
        while chunk := stream.read(READ_CHUNK):
            yield chunk

    def close(self) -> None:
        file = self._file
        if file is not None:
            self._file = None
            with contextlib.suppress(OSError):  # a full disk: what a failed append left
                file.close()  # buffered goes with the body


class Spool:
    """Bytes waiting for a slow reader, first in first out: in memory up to
    MEMORY_BODY_LIMIT, then in a temporary file (written at its end, read from the front)."""

    __slots__ = ("_file", "_memory", "_read", "_written", "size")

    def __init__(self) -> None:
        self.size = 0  # bytes held, not yet taken
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self._read = 0  # the file's offsets
        self._written = 0

    def append(self, data: bytes) -> None:
        """Hold `data`; OSError (a full disk) when it does not fit in the temporary file."""
        file = self._file
        if file is None and self.size + len(data) > MEMORY_BODY_LIMIT:
            file = tempfile.TemporaryFile(prefix="rip-spool-")  # noqa: SIM115 (close())
            self._file = file
            os.pwrite(file.fileno(), self._memory, 0)
            self._read, self._written = 0, len(self._memory)
            self._memory = bytearray()
        if file is not None:
            os.pwrite(file.fileno(), data, self._written)
            self._written += len(data)
        else:
            self._memory += data
        self.size += len(data)

    def take(self, size: int = READ_CHUNK) -> bytes:
        """Up to `size` bytes from the front (b"" when empty)."""
        file = self._file
        if file is None:
            data = bytes(self._memory[:size])
            del self._memory[:size]
        else:
            data = os.pread(file.fileno(), min(size, self.size), self._read)
            self._read += len(data)
        self.size -= len(data)
        if file is not None and not self.size:  # empty: the next bytes start in memory again
            file.close()
            self._file = None
        return data

    def close(self) -> None:
        self.size = 0
        self._memory = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None
