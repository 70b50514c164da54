"""Static files served by the balancer itself: a request under a mount (settings `static`)
resolved to a file, safely, and answered as nginx's static module answers it; no worker.

What a request gets (`StaticFiles.serve`):
- GET and HEAD: the file, with Content-Type from its extension, Last-Modified, an ETag
  (nginx's form: mtime and size in hex), Accept-Ranges, the mount's Cache-Control;
  If-None-Match / If-Modified-Since → 304; one byte range → 206, an unsatisfiable one → 416
  (several ranges get the whole file, 200: a server may ignore Range, and multipart answers
  are how range requests amplify); FILE.br / FILE.gz instead when the client accepts them
  (Vary: Accept-Encoding). Other methods: 405, or the app's when the mount falls back.
- Refused: a `..` or `.` segment (raw or %-encoded) and NUL → 400; a directory is never
  listed; a name starting with "." (unless `dotfiles`), an encoded slash or a backslash is
  never looked up (404); a file whose real path leaves the mount's directory through a
  symbolic link → 403 (unless `symlinks`); what is not a regular file → 404. With `fallback`,
  each "not found" goes to the app instead (nginx's `try_files $uri @app`).
- Files are opened with O_NONBLOCK (a FIFO cannot hold the event loop) and checked after
  opening (/proc/self/fd: what was opened is what is checked, no race with a rename).

Sending: a small file is read and written with its head at once; a larger one goes out in
pieces as the client takes them (`FileBody`): os.sendfile to the socket while the transport
has nothing buffered (uvloop has no loop.sendfile: it raises NotImplementedError), a piece
read with pread and written through the transport when the socket is full (which arms the
transport's own flow control: pause_writing, then resume_writing when it drained), and never
more than SENDFILE_BURST in one turn of the event loop. Over TLS every piece is read and
written through the transport.
"""

from __future__ import annotations

import asyncio
import email.utils
import mimetypes
import os
import stat
import time
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote_to_bytes

from ripsvc import logs
from ripsvc.http11 import status_line
from ripsvc.mounts import StaticMount, StaticMounts

if TYPE_CHECKING:
    from ripsvc.balancer.client import Client
    from ripsvc.balancer.exchange import Exchange
    from ripsvc.balancer.options import BalancerOptions

log = logs.get("balancer.static")

#: Files up to this size are read whole and written with their head in one write.
SMALL_FILE: Final = 64 << 10
#: A piece read and written through the transport when sendfile cannot go on (socket full, TLS).
READ_PIECE: Final = 256 << 10
#: At most this much is sent in one turn of the event loop; the rest in the next.
SENDFILE_BURST: Final = 4 << 20
#: Heads of files served lately, by path: rebuilt when the file's inode, mtime or size changes.
HEAD_CACHE_SIZE: Final = 1024
OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK

#: Beyond Python's table (which differs between versions): what browsers expect today.
EXTRA_TYPES = {
    ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
    ".json": "application/json", ".map": "application/json", ".wasm": "application/wasm",
    ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf",
    ".webp": "image/webp", ".avif": "image/avif", ".ico": "image/x-icon",
    ".svg": "image/svg+xml", ".webmanifest": "application/manifest+json",
    ".md": "text/markdown", ".mp4": "video/mp4", ".webm": "video/webm",
    ".gz": "application/gzip", ".br": "application/octet-stream", ".txt": "text/plain",
}
DEFAULT_TYPE = b"application/octet-stream"
#: Types that are text: sent with "; charset=utf-8", as Go's and Caddy's file servers do.
_UTF8 = ("text/", "application/javascript", "application/json", "image/svg+xml",
         "application/manifest+json")


def _type_table() -> dict[bytes, bytes]:
    table = dict(mimetypes.MimeTypes(filenames=()).types_map[True])  # not /etc/mime.types
    table.update(EXTRA_TYPES)
    return {ext.encode(): (f"{kind}; charset=utf-8" if kind.startswith(_UTF8) else kind).encode()
            for ext, kind in table.items()}


TYPES = _type_table()

_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec")


def http_date(seconds: float) -> bytes:
    t = time.gmtime(seconds)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min,
        t.tm_sec)


def parse_http_date(value: bytes) -> int | None:
    try:
        parsed = email.utils.parsedate_tz(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    return None if parsed is None else int(email.utils.mktime_tz(parsed))


def content_type(name: bytes) -> bytes:
    dot = name.rfind(b".")
    if dot < 0 or name.rfind(b"/") > dot:
        return DEFAULT_TYPE
    return TYPES.get(name[dot:].lower(), DEFAULT_TYPE)


class Reply:
    """What the balancer answers: a status, its head (status line and fields, without the
    request id and connection fields the client adds), a body, or a file to send after it."""

    __slots__ = ("body", "file", "head", "status")

    def __init__(self, status: int, head: bytes, body: bytes = b"",
                 file: FileBody | None = None) -> None:
        self.status = status
        self.head = head
        self.body = body
        self.file = file


def _error(status: int, why: bytes, extra: bytes = b"") -> Reply:
    body = b"%d %s\n" % (status, why)
    return Reply(status, b"".join((status_line(status),
                                   b"content-type: text/plain; charset=utf-8\r\n",
                                   b"content-length: %d\r\n" % len(body), extra)), body)


class Mount:
    """A mount as the balancer uses it: bytes, and its directory's real path."""

    def __init__(self, mount: StaticMount) -> None:
        self.prefix = mount.prefix.encode()
        self.root = os.fsencode(mount.root)
        self.real = self._real()
        self.fallback = mount.fallback
        self.index = os.fsencode(mount.index)
        self.cache_control = (b"cache-control: " + mount.cache_control.encode("latin-1") +
                              b"\r\n") if mount.cache_control else b""
        self.dotfiles = mount.dotfiles
        self.symlinks = mount.symlinks
        self.precompressed = mount.precompressed
        #: Files served lately, by path: (device, inode, mtime, size, ETag, validator fields,
        #: type fields). An entry is made once the file passed the symbolic-link check: the
        #: same device and inode at the same path later are the same file, checked already.
        self.heads: dict[bytes, tuple[int, int, int, int, bytes, bytes, bytes]] = {}

    def _real(self) -> bytes:
        return os.path.realpath(self.root).rstrip(b"/") + b"/"

    def inside(self, fd: int) -> bool:
        """Is the open file `fd` under the mount's directory, symbolic links resolved? The
        directory itself may be a link that a deploy switches: looked up again on a miss."""
        try:
            real = os.readlink(b"/proc/self/fd/%d" % fd)
        except OSError:
            return False
        if real.startswith(self.real):
            return True
        now = self._real()
        if now == self.real:
            return False
        self.real = now
        return real.startswith(now)


#: A request under a mount that is not a file: the app's, or 404.
NOT_FOUND: Final = 0
NOT_A_FILE: Final = 1


class StaticFiles:
    """Every mount of the balancer, longest prefix first."""

    _last: tuple[StaticMounts, StaticFiles] | None = None

    def __init__(self, mounts: StaticMounts) -> None:
        self.mounts = [Mount(m) for m in mounts.mounts]
        self._date_second = -1
        self._date = b""

    @classmethod
    def of(cls, options: BalancerOptions) -> StaticFiles | None:
        """The balancer's static files (one for all its connections), None without mounts."""
        mounts = options.static
        if not mounts.mounts:
            return None
        last = cls._last
        if last is not None and last[0] is mounts:
            return last[1]
        files = cls(mounts)
        cls._last = (mounts, files)
        return files

    def check(self) -> None:
        """Log what will not serve (at the start, before any request)."""
        for mount in self.mounts:
            if not os.path.isdir(mount.root):
                log.warning("static %s: %s is not a directory: its requests get 404%s",
                            mount.prefix.decode(), os.fsdecode(mount.root),
                            " (or the app's answer)" if mount.fallback else "")

    def match(self, target: bytes) -> Mount | None:
        for mount in self.mounts:
            if target.startswith(mount.prefix):
                return mount
        path = target.partition(b"?")[0] + b"/"
        for mount in self.mounts:  # /static for the mount /static/: redirected
            if path == mount.prefix:
                return mount
        return None

    def date(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date = b"date: " + http_date(now) + b"\r\n"
        return self._date

    # -- a request --------------------------------------------------------------------------
    def serve(self, mount: Mount, method: str, target: bytes,
              fields: list[tuple[bytes, bytes]], sock: int) -> Reply | None:
        """The answer to a request under `mount`, or None: the app's (fallback). `sock`: the
        client's socket for sendfile, or -1 (TLS)."""
        if method != "GET" and method != "HEAD":
            if mount.fallback:
                return None
            return _error(405, b"Method Not Allowed", b"allow: GET, HEAD\r\n")
        path, _, query = target.partition(b"?")
        if len(path) < len(mount.prefix):  # the mount's own directory, without its slash
            if not mount.index:
                return None if mount.fallback else _error(404, b"Not Found")
            return _error(301, b"Moved Permanently", b"location: " + mount.prefix +
                          (b"?" + query if query else b"") + b"\r\n")
        relative = path[len(mount.prefix):]
        name = self._name(mount, relative)
        if isinstance(name, Reply):
            return name
        if name is None:
            return None if mount.fallback else _error(404, b"Not Found")
        is_index = not relative or relative.endswith(b"/")
        if is_index:
            if not mount.index:
                return None if mount.fallback else _error(404, b"Not Found")
            name += mount.index
        request = RequestFields(fields)
        if method == "HEAD":
            request.range = b""  # defined for GET only (RFC 9110 §14.2)
        reply = self._variant(mount, name, request, sock)
        if reply is not None:
            return reply
        return self._file(mount, name, b"", request, sock, path, query, is_index)

    @staticmethod
    def _name(mount: Mount, relative: bytes) -> bytes | Reply | None:
        """The file's path for the URL path under the mount; None if it cannot be a file we
        serve (a dotfile, an encoded slash, a backslash); a Reply (400) for a traversal."""
        decoded = relative
        not_a_file = False
        if relative.find(b"%") >= 0:
            lower = relative.lower()
            not_a_file = lower.find(b"%2f") >= 0 or lower.find(b"%5c") >= 0
            decoded = unquote_to_bytes(relative)
        if decoded.find(b"\0") >= 0:
            return _error(400, b"Bad Request")
        if decoded.find(b"\\") >= 0:
            not_a_file = True
            decoded = decoded.replace(b"\\", b"/")  # for the checks below only
        for segment in decoded.split(b"/"):
            if segment.startswith(b"."):
                if segment == b".." or segment == b".":
                    return _error(400, b"Bad Request")
                if not mount.dotfiles:
                    not_a_file = True
        return None if not_a_file else mount.root + b"/" + decoded

    def _variant(self, mount: Mount, name: bytes, request: RequestFields,
                 sock: int) -> Reply | None:
        """NAME.br or NAME.gz, when the client accepts it and it is there."""
        if not mount.precompressed or not request.accept:
            return None
        for bit, suffix, encoding in ((ACCEPT_BR, b".br", b"br"), (ACCEPT_GZIP, b".gz", b"gzip")):
            if request.accept & bit:
                found = self._file(mount, name + suffix, encoding, request, sock, b"", b"",
                                   False)
                if found is not None:
                    return found
        return None

    def _file(self, mount: Mount, name: bytes, encoding: bytes, request: RequestFields,
              sock: int, path: bytes, query: bytes, is_index: bool) -> Reply | None:
        """Open `name` and answer with it (`encoding`: a precompressed variant's)."""
        try:
            fd = os.open(name, OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return self._missing(mount, encoding)
        except PermissionError:
            return None if encoding else _error(403, b"Forbidden")
        except OSError:  # a loop of links, a name too long …
            return self._missing(mount, encoding)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISDIR(st.st_mode) and mount.index and not is_index and not encoding:
                    location = path + b"/" + (b"?" + query if query else b"")
                    return _error(301, b"Moved Permanently",
                                  b"location: " + location + b"\r\n")
                return self._missing(mount, encoding)
            cached = mount.heads.get(name)
            mtime = int(st.st_mtime)
            if cached is None or cached[1] != st.st_ino or cached[0] != st.st_dev or \
                    cached[2] != mtime or cached[3] != st.st_size:
                if not mount.symlinks and not mount.inside(fd):
                    return None if encoding else _error(403, b"Forbidden")
                cached = self._head(mount, name, encoding, st)
            reply = self._answer(st, cached, fd, request, sock)
            if reply.file is not None:
                fd = -1  # the FileBody has it now
            return reply
        finally:
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _missing(mount: Mount, encoding: bytes) -> Reply | None:
        """No such file: the app's (fallback), or 404; a variant's absence: the next one."""
        if encoding or mount.fallback:
            return None
        return _error(404, b"Not Found")

    @staticmethod
    def _head(mount: Mount, name: bytes, encoding: bytes,
              st: os.stat_result) -> tuple[int, int, int, int, bytes, bytes, bytes]:
        """The ETag and fields of a file (those every answer has, a 304's too, and its type
        and coding for the others), kept in the mount's cache."""
        mtime = int(st.st_mtime)
        etag = b'"%x-%x"' % (mtime, st.st_size)
        validators = b"".join((
            b"last-modified: ", http_date(mtime), b"\r\netag: ", etag, b"\r\n",
            mount.cache_control, b"vary: accept-encoding\r\n" if encoding else b""))
        original = name[:-3] if encoding else name  # NAME.br, NAME.gz: NAME's type
        entity = b"".join((b"content-encoding: " + encoding + b"\r\n" if encoding else b"",
                           b"content-type: ", content_type(original), b"\r\n"))
        heads = mount.heads
        if len(heads) >= HEAD_CACHE_SIZE:
            heads.clear()
        entry = heads[name] = (st.st_dev, st.st_ino, mtime, st.st_size, etag, validators,
                               entity)
        return entry

    def _answer(self, st: os.stat_result, cached: tuple[int, int, int, int, bytes, bytes, bytes],
                fd: int, request: RequestFields, sock: int) -> Reply:
        etag, validators, entity = cached[4], cached[5], cached[6]
        size = st.st_size
        if request.not_modified(etag, int(st.st_mtime)):
            return Reply(304, b"".join((status_line(304), self.date(), validators)))
        lines = validators + entity
        start, end = 0, size  # the bytes sent: [start, end)
        status = 200
        if request.range and request.range_applies(etag, int(st.st_mtime)):
            found = byte_range(request.range, size)
            if found is not None:
                if found[0] >= found[1]:
                    return _error(416, b"Range Not Satisfiable",
                                  b"content-range: bytes */%d\r\n" % size)
                start, end = found
                status = 206
        length = end - start
        extra = b"content-range: bytes %d-%d/%d\r\n" % (start, end - 1, size) \
            if status == 206 else b""
        if length <= SMALL_FILE:
            body = os.pread(fd, length, start) if length else b""
            head = b"".join((status_line(status), self.date(), lines, extra,
                             b"accept-ranges: bytes\r\ncontent-length: %d\r\n" % len(body)))
            return Reply(status, head, body)
        head = b"".join((status_line(status), self.date(), lines, extra,
                         b"accept-ranges: bytes\r\ncontent-length: %d\r\n" % length))
        return Reply(status, head, b"", FileBody(fd, start, end, sock))


ACCEPT_GZIP: Final = 1
ACCEPT_BR: Final = 2


def accepted(value: bytes) -> int:
    """The encodings of an Accept-Encoding value that we can send (gzip, br), as bits;
    `x;q=0` refuses x, `*` stands for each one not named."""
    found = 0
    refused = 0
    star = False
    for item in value.lower().split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip()
        q = params.replace(b" ", b"")
        zero = q.startswith(b"q=0") and q[3:].strip(b".0") == b""
        bit = ACCEPT_GZIP if coding == b"gzip" or coding == b"x-gzip" else \
            ACCEPT_BR if coding == b"br" else 0
        if coding == b"*":
            star = not zero
        elif zero:
            refused |= bit
        else:
            found |= bit
    if star:
        found |= (ACCEPT_GZIP | ACCEPT_BR) & ~refused
    return found & ~refused


class RequestFields:
    """The request's fields a static answer depends on."""

    __slots__ = ("accept", "if_modified_since", "if_none_match", "if_range", "range")

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.accept = 0
        self.if_none_match: bytes | None = None
        self.if_modified_since: bytes | None = None
        self.range = b""
        self.if_range: bytes | None = None
        for name, value in fields:
            if name == b"accept-encoding":
                self.accept = accepted(value)
            elif name == b"if-none-match":
                self.if_none_match = value
            elif name == b"if-modified-since":
                self.if_modified_since = value
            elif name == b"range":
                self.range = value
            elif name == b"if-range":
                self.if_range = value

    def not_modified(self, etag: bytes, mtime: int) -> bool:
        """RFC 9110 §13.2.2: If-None-Match first (weak comparison), else If-Modified-Since."""
        inm = self.if_none_match
        if inm is not None:
            if inm.strip() == b"*":
                return True
            return any(tag.strip().removeprefix(b"W/") == etag for tag in inm.split(b","))
        ims = self.if_modified_since
        if ims is not None:
            since = parse_http_date(ims)
            return since is not None and mtime <= since
        return False

    def range_applies(self, etag: bytes, mtime: int) -> bool:
        """If-Range: the range only for this very representation (a strong ETag, or its date)."""
        value = self.if_range
        if value is None:
            return True
        value = value.strip()
        if value.startswith(b'"'):
            return value == etag
        return parse_http_date(value) == mtime


def byte_range(value: bytes, size: int) -> tuple[int, int] | None:
    """[start, end) of a Range field with one byte range; (0, 0) when it cannot be satisfied;
    None to ignore it (not bytes, malformed, or several ranges: the whole file is sent)."""
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes" or spec.find(b",") >= 0:
        return None
    first, dash, last = spec.strip().partition(b"-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:
        if not last:
            return None
        suffix = int(last)
        return (max(0, size - suffix), size) if suffix else (0, 0)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return (0, 0)
    end = min(size, int(last) + 1) if last else size
    return (start, end)


def socket_of(transport: object) -> int:
    """The descriptor sendfile may write to: a plain TCP or Unix socket's; -1 under TLS."""
    get = getattr(transport, "get_extra_info", None)
    if get is None or get("sslcontext") is not None or get("ssl_object") is not None:
        return -1
    sock = get("socket")
    fileno = getattr(sock, "fileno", None)
    return int(fileno()) if fileno is not None else -1


class FileBody:
    """The part [offset, end) of an open file, still to be sent to a client."""

    __slots__ = ("end", "fd", "offset", "sock")

    def __init__(self, fd: int, offset: int, end: int, sock: int) -> None:
        self.fd = fd
        self.offset = offset
        self.end = end
        self.sock = sock

    def send(self, client: Client, exchange: Exchange) -> bool:
        """Send what the client takes now; True once all is sent. Raises OSError when the
        file or the socket fails (the connection is then aborted)."""
        transport = client.transport
        burst = 0
        while self.offset < self.end:
            if not client.writable or client.state == CLOSED_CLIENT:
                return False
            if burst >= SENDFILE_BURST:  # the event loop's other work first
                asyncio.get_running_loop().call_soon(client.send_file, exchange)
                return False
            want = self.end - self.offset
            if self.sock >= 0 and not transport.get_write_buffer_size():
                try:
                    sent = os.sendfile(self.sock, self.fd, self.offset,
                                       min(want, SENDFILE_BURST))
                except BlockingIOError:
                    sent = -1  # the socket is full: a piece through the transport waits
                if sent == 0:
                    raise OSError("the file shrank while it was sent")
                if sent > 0:
                    self.offset += sent
                    burst += sent
                    exchange.sent += sent
                    continue
            piece = os.pread(self.fd, min(want, READ_PIECE), self.offset)
            if not piece:
                raise OSError("the file shrank while it was sent")
            self.offset += len(piece)
            burst += len(piece)
            exchange.sent += len(piece)
            transport.write(piece)
        return True

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


CLOSED_CLIENT: Final = 5  # client.CLOSED (not imported: client imports this module)
