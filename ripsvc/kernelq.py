"""Accept-queue lengths of listening sockets, as the kernel reports them (NETLINK_SOCK_DIAG).

The listening sockets belong to other processes (the workers, systemd), so we cannot ask them
with getsockopt(); sock_diag reports every listening socket of this network namespace with its
queue and backlog, and needs no privilege to do so.

pyroute2's `DiagSocket.get_sock_stats()` is not used, for two reasons found in both 0.7.2 and
0.9: a kernel error (NLMSG_ERROR, or NLMSG_DONE carrying an errno) comes back as an empty
result, which would read as "no listener"; and from 0.9 on its synchronous API runs an asyncio
loop of its own, which raises "This event loop is already running" inside the balancer's loop.
We build the requests and decode the replies with pyroute2's sock_diag message classes (the
same in both versions) and do the I/O on a plain blocking socket: a dump of listening sockets
is answered from kernel memory, in well under a millisecond.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import (  # type: ignore[import-untyped]
    NETLINK_SOCK_DIAG,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    nlmsgerr,
)
from pyroute2.netlink.diag import (  # type: ignore[import-untyped]
    SOCK_DIAG_BY_FAMILY,
    SS_LISTEN,
    UDIAG_SHOW_NAME,
    UDIAG_SHOW_RQLEN,
    UDIAG_SHOW_VFS,
    inet_diag_msg,
    inet_diag_req,
    unix_diag_msg,
    unix_diag_req,
)

_LISTEN_ONLY = 1 << SS_LISTEN
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid (<linux/netlink.h>)
_RECV_SIZE = 65536  # the kernel fills dump replies up to 32 KiB
_TIMEOUT = 2.0  # the kernel answers at once; this only bounds a kernel that does not


class KernelQueueError(OSError):
    """The kernel's socket diagnostics (NETLINK_SOCK_DIAG) could not be read."""


@dataclass(frozen=True, slots=True)
class Queue:
    """The accept queue of one listening address (summed over its sockets)."""

    queued: int  # connections the kernel accepted that no process has accept()ed yet
    backlog: int  # the listen() backlog limit, 0 if unknown


def tcp_listen_queues(ports: Iterable[int]) -> dict[int, Queue]:
    """Listening TCP sockets (IPv4 and IPv6) on these local ports, in this network namespace.

    A port with several listening sockets (v4 + v6, SO_REUSEPORT) sums them. Ports with no
    listening socket are absent.
    """
    wanted = set(ports)
    found: dict[int, Queue] = {}
    with _SockDiag() as diag:
        for family in (socket.AF_INET, socket.AF_INET6):
            for reply in diag.dump(_inet_listeners(family), inet_diag_msg):
                port = reply["idiag_sport"]
                if port in wanted:
                    # For a listener the kernel puts the accept queue in rqueue, the backlog
                    # limit in wqueue (inet_diag.c, inet_sk_diag_fill).
                    queue = Queue(reply["idiag_rqueue"], reply["idiag_wqueue"])
                    found[port] = _plus(found.get(port), queue)
    return found


def unix_listen_queues(paths: Iterable[str]) -> dict[str, Queue]:
    """Listening Unix stream sockets bound to these filesystem paths. Absent if not found.

    Paths are matched as they were given to bind(). A listener whose socket file has since been
    unlinked or replaced (a rebind while an old process still holds the old socket) is not
    counted, when the path can be stat()ed from here.
    """
    wanted = {os.fsencode(path): path for path in paths}
    found: dict[str, Queue] = {}
    with _SockDiag() as diag:
        for reply in diag.dump(_unix_listeners(), unix_diag_msg):
            if reply["udiag_type"] != socket.SOCK_STREAM:
                continue
            path = wanted.get(_unix_name(reply))
            if path is None or not _still_bound(path, reply):
                continue
            rqlen = reply.get_attr("UNIX_DIAG_RQLEN")
            if rqlen is None:  # kernels before 3.3
                raise _error(errno.EOPNOTSUPP, "the kernel does not report UNIX_DIAG_RQLEN")
            queue = Queue(rqlen["udiag_rqueue"], rqlen["udiag_wqueue"])
            found[path] = _plus(found.get(path), queue)
    return found


class _SockDiag:
    """One NETLINK_SOCK_DIAG socket, closed on leaving the `with` block."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        except OSError as exc:
            # EAFNOSUPPORT: AF_NETLINK filtered (RestrictAddressFamilies=) or absent;
            # EPROTONOSUPPORT: a kernel without sock_diag.
            raise _error(exc.errno or errno.EIO, "cannot open a NETLINK_SOCK_DIAG socket") from exc
        self._sock.settimeout(_TIMEOUT)
        self._seq = 0

    def __enter__(self) -> _SockDiag:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()

    def dump(self, request: Any, reply_class: Any) -> list[Any]:
        """Send a SOCK_DIAG_BY_FAMILY dump request; its replies, decoded as reply_class."""
        self._seq += 1
        request["header"]["type"] = SOCK_DIAG_BY_FAMILY
        request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        request["header"]["sequence_number"] = self._seq
        request.encode()
        replies: list[Any] = []
        try:
            self._sock.sendto(bytes(request.data), (0, 0))  # (0, 0): the kernel
            while True:
                data = self._sock.recv(_RECV_SIZE)
                for offset, kind in self._messages(data):
                    if kind in (NLMSG_DONE, NLMSG_ERROR):
                        # DONE carries an errno too when the dump failed once started.
                        status = nlmsgerr(data, offset=offset)
                        status.decode()
                        if status["error"] < 0:
                            raise _error(-status["error"], "the kernel refused a sock_diag dump")
                        if kind == NLMSG_DONE:
                            return replies
                        continue  # an ACK (error 0), not expected for a dump
                    if kind != SOCK_DIAG_BY_FAMILY:
                        continue  # NLMSG_NOOP
                    reply = reply_class(data, offset=offset)
                    reply.decode()
                    replies.append(reply)
        except TimeoutError as exc:
            raise _error(errno.ETIMEDOUT, "no reply to a sock_diag dump") from exc
        except KernelQueueError:
            raise
        except OSError as exc:
            raise _error(exc.errno or errno.EIO, "sock_diag dump failed") from exc

    def _messages(self, data: bytes) -> list[tuple[int, int]]:
        """(offset, type) of each message in one datagram that answers our last request."""
        found: list[tuple[int, int]] = []
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size or offset + length > len(data):
                raise _error(errno.EBADMSG, "truncated sock_diag reply")
            if seq == self._seq:
                found.append((offset, kind))
            offset += (length + 3) & ~3  # NLMSG_ALIGN
        return found


def _inet_listeners(family: int) -> Any:
    request = inet_diag_req()
    request["sdiag_family"] = family
    request["sdiag_protocol"] = socket.IPPROTO_TCP
    request["idiag_states"] = _LISTEN_ONLY
    return request


def _unix_listeners() -> Any:
    request = unix_diag_req()
    request["sdiag_family"] = socket.AF_UNIX
    request["udiag_states"] = _LISTEN_ONLY
    # For a listener, UNIX_DIAG_RQLEN holds the accept queue and the backlog limit.
    request["udiag_show"] = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_RQLEN
    return request


def _unix_name(reply: Any) -> bytes:
    name = reply.get_attr("UNIX_DIAG_NAME")
    # pyroute2 decodes names as UTF-8 and keeps the bytes of those that are not.
    return os.fsencode(name) if isinstance(name, str) else bytes(name or b"")


def _still_bound(path: str, reply: Any) -> bool:
    """Whether the file at path is this socket's, or cannot be seen from here to tell."""
    vfs = reply.get_attr("UNIX_DIAG_VFS")
    try:
        st = os.stat(path)
    except OSError:
        return True  # another mount namespace (PrivateTmp=) or gone: the name is all we have
    if vfs is None:
        return True
    # The kernel reports its internal dev_t (major << 20 | minor), not stat()'s encoding.
    dev = vfs["udiag_vfs_dev"]
    return bool(vfs["udiag_vfs_ino"] == st.st_ino
                and (dev >> 20, dev & 0xFFFFF) == (os.major(st.st_dev), os.minor(st.st_dev)))


def _plus(total: Queue | None, queue: Queue) -> Queue:
    if total is None:
        return queue
    return Queue(total.queued + queue.queued, total.backlog + queue.backlog)


def _error(code: int, what: str) -> KernelQueueError:
    return KernelQueueError(code, f"{what}: {os.strerror(code)}")
