"""The balancer's core driven by Hypothesis: random interleavings of what clients, workers and
time can do, with the pool's invariants checked after every step, and recovery checked at the
end (every worker back in rotation, nothing queued or busy, a fresh request answered).

Clients send well-formed, pipelined, malformed, chunked (with trailers), upgrading or
half-sent requests, split anywhere; they reset, half-close, stop and resume reading. Workers
answer, stream, break midway, answer twice, say they are busy, send garbage, close, refuse
connections, stay silent; time runs out for every kind of timeout. The rig (tests/support/
machine.py) stands for the sockets and the event loop; the core is the real one, compiled
or not, as the test run's build is.
"""

from __future__ import annotations

import itertools

import httptools
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from ripsvc.balancer.pool import READY
from tests.support.machine import ClientEnd, Rig, Transport

WORKERS = 3
WEBSOCKET = (b"Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
HOSTS = [b"localhost", b"localhost:8080", b"evil.example", b""]
METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS"]
PATHS = [b"/", b"/ping", b"/status", b"/server", b"/a?b=c"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request: seven in ten plain and valid (the ones that reach workers), the rest
    invalid or unusual in one of the ways clients are."""
    method = draw(st.sampled_from(METHODS))
    path = draw(st.sampled_from(PATHS))
    version = b"HTTP/1.1"
    hosts = [b"localhost"]
    extras: list[bytes] = []
    if draw(st.integers(0, 9)) >= 7:
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
        hosts = draw(st.sampled_from([[h] for h in HOSTS] + [[b"evil.example", b"localhost"],
                                                              []]))
        extras = draw(st.lists(st.sampled_from([
            b"Connection: close", b"Connection: keep-alive", b"X_Auth_User: admin",
            b"Upgrade: h2c\r\nConnection: Upgrade", b"Expect: 100-continue",
            b"Rip-Client: 6.6.6.6:1", b"X-Forwarded-For: 1.2.3.4",
            b"Content-Length: 3\r\nContent-Length: 3",
            b"Transfer-Encoding: chunked\r\nContent-Length: 3", b"Bad Header",
            b"X-Long: " + b"x" * 200, b"Upgrade: websocket\r\nConnection: upgrade\r\n"
            b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]),
            max_size=2))
    elif draw(st.integers(0, 4)) == 0:  # a WebSocket
        method, extras = b"GET", [WEBSOCKET]
    lines = [method + b" " + path + b" " + version]
    lines += [b"Host: " + host for host in hosts]
    lines += extras
    body = b""
    kind = draw(st.sampled_from(["none", "none", "length", "chunked"]))
    if kind == "length" and extras != [WEBSOCKET]:
        content = draw(st.binary(max_size=40).filter(lambda b: b"\r\n\r\n" not in b))
        lines.append(b"Content-Length: %d" % len(content))
        body = content
    elif kind == "chunked" and extras != [WEBSOCKET]:
        chunks = draw(st.lists(st.binary(min_size=1, max_size=10), max_size=3))
        lines.append(b"Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n"
        trailers = draw(st.sampled_from([b"", b"Host: localhost\r\n", b"X-Injected: 1\r\n"]))
        body += trailers + b"\r\n"
    data = b"\r\n".join(lines) + b"\r\n\r\n" + body
    if draw(st.integers(0, 30)) == 0:
        data = data.replace(b" ", b"  ", 1)  # two spaces in the request line
    return data


class Worker:
    """What the test plays on one worker connection: the requests it got, and how many it
    answered."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.requests: list[tuple[bytes, bool]] = []  # (method, probe)
        self.answered = 0
        self.parser = httptools.HttpRequestParser(self)
        self.seen = 0
        self._probe = False
        self.upgraded = False  # a WebSocket's: what follows is not HTTP

    def on_message_begin(self) -> None:
        self._probe = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"rip-probe":
            self._probe = True

    def on_message_complete(self) -> None:
        self.requests.append((self.parser.get_method(), self._probe))

    def pending(self) -> tuple[bytes, bool] | None:
        written = bytes(self.transport.written)
        if len(written) > self.seen and not self.upgraded:
            try:
                self.parser.feed_data(written[self.seen:])
            except httptools.HttpParserUpgrade:
                self.upgraded = True
                self.requests[-1] = (b"UPGRADE", False)
            self.seen = len(written)
        return self.requests[self.answered] if self.answered < len(self.requests) else None


def ok(method: bytes, body: bytes = b"hello") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body), b"" if method == b"HEAD" else body)


ANSWERS = ["ok", "ok", "ok", "chunked", "stream-start", "break", "busy", "garbage", "interim",
           "extra", "close", "long", "unbuffered", "short-close"]


class BalancerMachine(RuleBasedStateMachine):
    clients = Bundle("clients")

    def __init__(self) -> None:
        super().__init__()
        self.rig = Rig(workers=WORKERS, response_timeout=5.0, queue_timeout=3.0,
                       header_timeout=2.0, body_timeout=2.0, keepalive_timeout=4.0,
                       send_timeout=6.0, max_queue=4, max_body=200)
        self.rig.join_websocket("ws1", capacity=3)
        self.played: dict[int, Worker] = {}

    def worker_connections(self) -> list[Worker]:
        found = []
        for worker in self.rig.workers.values():
            for transport in worker.connections:
                if transport.lost:
                    continue
                if id(transport) not in self.played:
                    self.played[id(transport)] = Worker(transport)
                found.append(self.played[id(transport)])
        return found

    # -- clients --------------------------------------------------------------------------------
    @rule(target=clients, small=st.booleans())
    def connect(self, small: bool) -> ClientEnd:
        return self.rig.connect(limit=40 if small else 1 << 20)

    @rule(client=clients, batch=st.lists(requests(), min_size=1, max_size=3),
          cuts=st.lists(st.integers(0, 400), max_size=3), half=st.booleans())
    def send(self, client: ClientEnd, batch: list[bytes], cuts: list[int], half: bool) -> None:
        data = b"".join(batch)
        if half:  # the last request only half sent
            data = data[: max(1, len(data) - len(batch[-1]) // 2)]
        points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
        for start, end in itertools.pairwise(points):
            client.send(data[start:end])
        self.rig.settle()  # the loop makes the worker connections this asked for

    # Rules are drawn alike: sending and answering, which make things happen, twice as often.
    @rule(client=clients, batch=st.lists(requests(), min_size=1, max_size=3),
          cuts=st.lists(st.integers(0, 400), max_size=3), half=st.booleans())
    def send_more(self, client: ClientEnd, batch: list[bytes], cuts: list[int],
                  half: bool) -> None:
        self.send(client, batch, cuts, half)

    @rule(client=clients, junk=st.binary(min_size=1, max_size=30))
    def send_junk(self, client: ClientEnd, junk: bytes) -> None:
        client.send(junk)

    @rule(client=clients)
    def reset(self, client: ClientEnd) -> None:
        client.reset()

    @rule(client=clients)
    def half_close(self, client: ClientEnd) -> None:
        client.half_close()

    @rule(client=clients, size=st.sampled_from([None, 10, 100]))
    def client_reads(self, client: ClientEnd, size: int | None) -> None:
        client.transport.read(size)

    # -- workers --------------------------------------------------------------------------------
    @rule(answer=st.sampled_from(ANSWERS), which=st.integers(0, 20))
    def worker_answers(self, answer: str, which: int) -> None:
        waiting = [w for w in self.worker_connections() if w.pending() is not None]
        if not waiting:
            return
        worker = waiting[which % len(waiting)]
        method, probe = worker.pending() or (b"GET", False)
        worker.answered += 1
        send = worker.transport.protocol.data_received
        if probe:
            send(b"HTTP/1.1 204 No Content\r\n\r\n" if answer != "busy" else
                 b"HTTP/1.1 503 Service Unavailable\r\nrip-worker-busy: 1\r\n"
                 b"content-length: 0\r\n\r\n")
            return
        head = method == b"HEAD"
        event(f"a worker answers {method.decode()}")
        if method == b"UPGRADE":  # a WebSocket worker's answer
            if answer in ("ok", "chunked", "long"):
                send(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                     b"connection: upgrade\r\n\r\n\x81\x02hi")
                worker.requests[worker.answered - 1] = (b"TUNNEL", False)
                worker.answered -= 1
            elif answer == "busy":
                send(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                self.rig.workers[self.owner(worker)].close(worker.transport)
            else:
                self.rig.workers[self.owner(worker)].close(worker.transport)
            return
        if method == b"TUNNEL":  # an open WebSocket: frames, or its end
            worker.answered -= 1
            if answer in ("close", "break", "garbage", "interim"):
                self.rig.workers[self.owner(worker)].close(worker.transport)
                worker.answered += 1
            else:
                send(b"\x81\x05hello")
            return
        if answer == "ok":
            send(ok(method))
        elif answer == "chunked":
            send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n"
                 + (b"" if head else b"3\r\nabc\r\n"))
            if not head:
                send(b"0\r\n\r\n")
        elif answer == "stream-start":  # a head, the stream goes on later (or never)
            send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"transfer-encoding: chunked\r\n\r\n" + (b"" if head else b"5\r\nhello\r\n"))
            if not head:
                worker.answered -= 1
                worker.requests[worker.answered] = (b"STREAMING", False)
        elif answer == "break":
            send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
            self.rig.workers[self.owner(worker)].close(worker.transport)
        elif answer == "busy":
            send(b"HTTP/1.1 503 Service Unavailable\r\nrip-worker-busy: 1\r\n"
                 b"content-length: 0\r\n\r\n")
        elif answer == "garbage":
            send(b"NOT HTTP AT ALL\r\n\r\n")
        elif answer == "interim":  # no answer: its client must not take what follows for one
            send(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n" + ok(method))
        elif answer == "extra":
            send(ok(method) + ok(method))
        elif answer == "close":
            self.rig.workers[self.owner(worker)].close(worker.transport)
        elif answer == "long":
            send(ok(method, b"x" * 300))
        elif answer == "unbuffered":
            send(b"HTTP/1.1 200 OK\r\nx-accel-buffering: no\r\ncontent-length: 200\r\n\r\n"
                 + (b"" if head else b"y" * 200))
        elif answer == "short-close":
            send(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n"
                 + (b"" if head else b"ok"))
            self.rig.workers[self.owner(worker)].close(worker.transport)

    @rule(answer=st.sampled_from(ANSWERS), which=st.integers(0, 20))
    def worker_answers_more(self, answer: str, which: int) -> None:
        self.worker_answers(answer, which)

    @rule(which=st.integers(0, 20), end=st.booleans())
    def worker_streams(self, which: int, end: bool) -> None:
        streaming = [w for w in self.worker_connections()
                     if (w.pending() or (b"", False))[0] == b"STREAMING"]
        if not streaming:
            return
        worker = streaming[which % len(streaming)]
        send = worker.transport.protocol.data_received
        send(b"6\r\nevent\n\r\n")
        if end:
            worker.answered += 1
            send(b"0\r\n\r\n")

    def owner(self, worker: Worker) -> str:
        return next(w.id for w in self.rig.workers.values()
                    if worker.transport in w.connections)

    @rule(worker_id=st.sampled_from([*(str(n) for n in range(1, WORKERS + 1)), "ws1"]))
    def worker_dies(self, worker_id: str) -> None:
        self.rig.workers[worker_id].close()

    @rule(worker_id=st.sampled_from([str(n) for n in range(1, WORKERS + 1)]),
          refuse=st.booleans())
    def worker_refuses(self, worker_id: str, refuse: bool) -> None:
        self.rig.workers[worker_id].refuse = refuse

    @rule(worker_id=st.sampled_from([str(n) for n in range(1, WORKERS + 1)]))
    def manager_rejoins(self, worker_id: str) -> None:
        self.rig.join(worker_id)

    # -- the loop and time ----------------------------------------------------------------------
    @rule()
    def settle(self) -> None:
        self.rig.settle()

    @rule(seconds=st.sampled_from([0.05, 0.3, 1.0, 2.5, 7.0]))
    def time_passes(self, seconds: float) -> None:
        self.rig.tick(seconds)

    @invariant()
    def consistent(self) -> None:
        assert self.rig.balancer.violations() == []
        assert self.rig.balancer.stats["internal_errors"] == 0
        assert self.rig.balancer.pool.counts()["total"] == WORKERS

    def teardown(self) -> None:
        """Whatever happened, the balancer heals: workers that answer get every worker back in
        rotation, nothing stays queued or busy, and a fresh request is answered."""
        rig = self.rig
        for worker in rig.workers.values():
            worker.refuse = False
        for client in rig.clients:  # WebSockets end when their clients do
            if client.protocol.tunnel is not None:
                client.reset()
        for _ in range(60):
            rig.settle()
            for client in rig.clients:
                client.transport.read()
            for worker in self.worker_connections():
                while (pending := worker.pending()) is not None:
                    method, probe = pending
                    worker.answered += 1
                    if probe:
                        worker.transport.protocol.data_received(
                            b"HTTP/1.1 204 No Content\r\n\r\n")
                    elif method == b"STREAMING":
                        worker.transport.protocol.data_received(b"0\r\n\r\n")
                    elif method in (b"UPGRADE", b"TUNNEL"):
                        self.rig.workers[self.owner(worker)].close(worker.transport)
                    else:
                        worker.transport.protocol.data_received(ok(method))
                    if worker.transport.lost:
                        break
            rig.tick(0.5)
            assert rig.balancer.violations() == []
            counts = rig.balancer.pool.counts()
            if counts["ready"] == WORKERS and rig.balancer.in_flight == 0:
                break
        counts = rig.balancer.pool.counts()
        assert counts["ready"] == WORKERS, (counts, rig.balancer.status())
        assert not rig.balancer.tunnels
        assert rig.balancer.pool.websockets["ws1"].open == 0
        assert rig.balancer.pool.queued == 0
        assert all(slot.state == READY for slot in rig.balancer.pool.slots.values())
        fresh = rig.connect()
        fresh.send(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        rig.settle()
        for worker in self.worker_connections():
            pending = worker.pending()
            if pending is not None:
                worker.answered += 1
                worker.transport.protocol.data_received(ok(pending[0], b"fresh"))
        assert fresh.responses() == [(200, b"fresh")], fresh.received
        assert rig.balancer.stats["internal_errors"] == 0


BalancerMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_the_balancer_heals_whatever_clients_workers_and_time_do = BalancerMachine.TestCase
