"""The floor of rip's design: a balancer that does nothing a request does not strictly need.

    .venv/bin/python bench/floor.py PORT [--cert FILE --key FILE] [--nice N] WORKER_SOCKET...

It stands where rip's balancer stands in bench/compare.py (`floor-rip`, `floor-https-rip`):
one process on uvloop, a keep-alive connection to each worker's Unix socket, one request in
flight per worker and a FIFO queue for the rest, TLS by the same uvloop layer as rip's
balancer. What it leaves out is everything rip's balancer does besides: no HTTP parsing (a
request ends at its blank line, a response after its Content-Length), no headers added or
checked, no access log, no timeouts, no retries, no limits, no status or metrics. It serves
`GET` requests without a body, from keep-alive clients that send one request at a time (a
`Connection: close` goes to the worker, which closes, and the floor stops), and answers nothing
else correctly: a benchmark's stand-in, not a server.

How far it gets in front of rip's own workers bounds what any balancer in Python gets from
them on the same machine, as HAProxy's rows bound what a balancer in C gets.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import ssl
import sys

import uvloop

HEAD_END = b"\r\n\r\n"
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class Pool:
    """The idle workers and the requests waiting for one, in arrival order."""

    def __init__(self) -> None:
        self.idle: list[Upstream] = []
        self.waiting: collections.deque[tuple[Client, bytes]] = collections.deque()

    def submit(self, client: Client, request: bytes) -> None:
        if self.idle:
            self.idle.pop().send(client, request)
        else:
            self.waiting.append((client, request))

    def release(self, upstream: Upstream) -> None:
        if self.waiting:
            upstream.send(*self.waiting.popleft())
        else:
            self.idle.append(upstream)


class Upstream(asyncio.Protocol):
    """The connection to one worker: a request out, its response back by Content-Length."""

    transport: asyncio.Transport

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.buffer = b""
        self.client: Client | None = None
        self.length = -1  # of the whole response, once its head is in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        sys.exit(f"floor: a worker closed its connection ({exc})")

    def send(self, client: Client, request: bytes) -> None:
        self.client = client
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.length < 0:
            end = self.buffer.find(HEAD_END)
            if end < 0:
                return
            match = CONTENT_LENGTH.search(self.buffer, 0, end + 2)
            if match is None:
                sys.exit("floor: a response without Content-Length, which it cannot frame")
            self.length = end + len(HEAD_END) + int(match[1])
        if len(self.buffer) < self.length:
            return
        response, self.buffer, self.length = self.buffer[:self.length], b"", -1
        client, self.client = self.client, None
        assert client is not None
        self.pool.release(self)
        client.answer(response)


class Client(asyncio.Protocol):
    """A client connection: each request head, once complete, goes to the pool."""

    transport: asyncio.Transport

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.buffer = b""
        self.waiting = False  # for the response to its request
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.next()

    def answer(self, response: bytes) -> None:
        self.waiting = False
        if not self.closed:
            self.transport.write(response)
            self.next()

    def next(self) -> None:
        end = self.buffer.find(HEAD_END)
        if self.waiting or end < 0:
            return
        end += len(HEAD_END)
        request, self.buffer = self.buffer[:end], self.buffer[end:]
        self.waiting = True
        self.pool.submit(self, request)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    pool = Pool()
    for path in args.workers:
        _, upstream = await loop.create_unix_connection(lambda: Upstream(pool), path)
        pool.idle.append(upstream)
    context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.cert, args.key)
        context.set_alpn_protocols(["http/1.1"])
    server = await loop.create_server(lambda: Client(pool), "127.0.0.1", args.port,
                                      ssl=context, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("workers", nargs="+", metavar="WORKER_SOCKET")
    parser.add_argument("--cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--key", help="and this key (PEM)")
    parser.add_argument("--nice", type=int, default=0,
                        help="run at this priority (rip's balancer runs at -5)")
    args = parser.parse_args()
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except PermissionError:  # as rip's balancer does without CAP_SYS_NICE: say so, go on
            print(f"floor: may not run at nice {args.nice}, runs at "
                  f"{os.getpriority(os.PRIO_PROCESS, 0)}", file=sys.stderr)
    uvloop.install()  # uvloop.run() is newer than Debian 12's uvloop 0.17
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
