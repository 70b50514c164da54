"""WebSocket workers run by the manager (rip-server): started beside the HTTP workers,
restarted when they crash, replaced by rolling restarts (their WebSockets closed with 1001
after graceful_timeout, none left hanging), and none for an app that has no WebSockets."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.support.client import fetch
from tests.support.server import Server, ripctl
from tests.support.wsclient import WebSocket

#: An ASGI app whose WebSocket echo says which code answers (VERSION, read at import).
VERSIONED_ECHO = '''
from pathlib import Path

VERSION = (Path(__file__).parent / "VERSION").read_text()


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": f"{VERSION}:{message['text']}"})
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": VERSION.encode()})
'''


def versioned_echo(root: Path) -> Path:
    app = root / "wsapp"
    app.mkdir()
    (app / "app.py").write_text(VERSIONED_ECHO)
    (app / "VERSION").write_text("v1")
    return app


def websocket_workers(server: Server) -> list[dict]:
    return [w for w in server.status()["workers"] if w["id"].startswith("ws")]


def wait_websocket_worker(server: Server, timeout: float = 20) -> dict:
    """The one WebSocket worker, once it is in the balancer's pool."""
    deadline = time.monotonic() + timeout
    while True:
        workers = websocket_workers(server)
        if len(workers) == 1 and workers[0]["state"] == "ready":
            return workers[0]
        assert time.monotonic() < deadline, f"{workers}\n{server.output()}"
        time.sleep(0.1)


def test_rolling_restart_closes_old_websockets_with_1001_and_new_ones_reach_new_code(short_tmp):
    app = versioned_echo(short_tmp)
    server = Server(short_tmp, str(app), "w:2", "--graceful-timeout", "1")
    try:
        server.wait_healthy(2)
        first = wait_websocket_worker(server)
        assert first["id"] == "ws1" and first["pid"] in server.children()
        assert len(server.children()) == 4  # the balancer, two HTTP workers, one WebSocket
        old = [WebSocket(server.port, "/") for _ in range(5)]
        for n, ws in enumerate(old):
            ws.send(f"m{n}")
            assert ws.receive() == f"v1:m{n}"
        (app / "VERSION").write_text("v2")
        done = ripctl("reload", server.name, "--wait")
        assert done.returncode == 0, done.stderr + server.output()
        for ws in old:  # closed by the old worker, within graceful_timeout and its close wait
            assert ws.receive() is None and ws.closed == 1001
            ws.close()
        assert fetch(server.port, "/").text == "v2"
        fresh = WebSocket(server.port, "/")
        fresh.send("again")
        assert fresh.receive() == "v2:again"
        fresh.close()
        second = wait_websocket_worker(server)
        assert second["id"] != "ws1" and second["version"] == 2
        assert not Path(f"/proc/{first['pid']}").exists()
        assert len(server.children()) == 4, server.output()
        balancer = json.loads(fetch(server.port, "/status").body)
        assert balancer["websockets"]["workers"] == 1
    finally:
        server.close()


def test_a_crashed_websocket_worker_is_restarted(short_tmp):
    app = versioned_echo(short_tmp)
    server = Server(short_tmp, str(app), "w:1", "--graceful-timeout", "1")
    try:
        server.wait_healthy(1)
        victim = wait_websocket_worker(server)
        ws = WebSocket(server.port, "/")
        os.kill(victim["pid"], signal.SIGKILL)
        assert ws.receive() is None  # its WebSockets go with it
        ws.close()
        server.wait_output("WebSocket worker ws1 was killed by SIGKILL; restarting")
        deadline = time.monotonic() + 20
        while True:  # restarted on its socket, under its id
            worker = wait_websocket_worker(server)
            if worker["pid"] != victim["pid"]:
                break
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        assert worker["id"] == "ws1"
        ws = WebSocket(server.port, "/")
        ws.send("back")
        assert ws.receive() == "v1:back"
        ws.close()
        assert server.status()["health"] == "healthy"
    finally:
        server.close()


def test_an_app_without_websockets_runs_no_websocket_worker(short_tmp):
    """A WSGI app: its WebSocket worker exits 78 at once, and is not started again, not even
    by a rolling restart; an upgrade reaches the app as a plain request (as under gunicorn)."""
    wsgi = short_tmp / "wsgiapp"
    wsgi.mkdir()
    (wsgi / "app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'upgrade: ' + environ.get('HTTP_UPGRADE', '-').encode()]\n")
    server = Server(short_tmp, str(wsgi / "app.py"), "w:2")
    try:
        server.wait_healthy(2)
        server.wait_output("the app has no WebSockets (a WSGI app)")
        deadline = time.monotonic() + 10
        while len(server.children()) != 3:  # the balancer and two HTTP workers
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        seen = server.status()
        assert seen["health"] == "healthy" and [w["id"] for w in seen["workers"]] == ["1", "2"]
        reply = fetch(server.port, "/", headers={"Upgrade": "websocket",
                                                 "Connection": "Upgrade",
                                                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                 "Sec-WebSocket-Version": "13"})
        # Answered once, by the app (Upgrade is hop by hop: not passed on, as by nginx).
        assert reply.status == 200 and reply.text == "upgrade: -"
        done = ripctl("reload", server.name, "--wait")
        assert done.returncode == 0, done.stderr + server.output()
        assert [w["id"] for w in server.status()["workers"]] == ["1.4", "2.5"]
        assert server.output().count("no WebSocket workers") == 1, server.output()
    finally:
        server.close()

