"""--reload=module: changed app sources are re-imported before the next request."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ripsvc.exitcodes import ExitCode
from tests.support.client import UnixHTTPConnection, get, request

APPS = {
    "asgi": '''
from version import VERSION

async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": VERSION.encode()})
''',
    "wsgi": '''
from version import VERSION

def app(environ, start_response):
    start_response("200 OK", [])
    return [VERSION.encode()]
''',
    "aiohttp": '''
from aiohttp import web
from version import VERSION

async def handle(request):
    return web.Response(text=VERSION)

app = web.Application()
app.router.add_get("/", handle)
''',
}


def make_app(root: Path, kind: str) -> Path:
    app_dir = root / f"app_{kind}"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APPS[kind])
    set_version(app_dir, "v00")
    return app_dir


def set_version(app_dir: Path, version: str) -> None:
    (app_dir / "version.py").write_text(f"VERSION = {version!r}\n")


@pytest.mark.parametrize("kind", APPS)
def test_an_edit_is_served_on_the_next_request_after_the_interval(start_worker, short_tmp, kind):
    app_dir = make_app(short_tmp, kind)
    # Bytecode caching on (this machine may disable it), so the test can catch stale .pyc use.
    worker = start_worker(str(app_dir), "--reload", "module", "--recycle", "r:0,0s,0r",
                          env={"PYTHONDONTWRITEBYTECODE": ""})
    conn = UnixHTTPConnection(worker.socket_path)
    assert request(conn, "GET", "/").text == "v00"
    # Same size, same second: a bytecode cache keyed on mtime-in-seconds would serve stale code.
    for n in range(1, 16):
        set_version(app_dir, f"v{n:02d}")
        time.sleep(0.11)
        reply = request(conn, "GET", "/")
        assert (reply.status, reply.text) == (200, f"v{n:02d}"), worker.output()
    assert "module reload 15 done" in worker.output()


def test_a_broken_edit_keeps_the_old_code_serving_and_logs_the_error(start_worker, short_tmp):
    app_dir = make_app(short_tmp, "asgi")
    worker = start_worker(str(app_dir), "--reload", "module")
    assert get(worker.socket_path, "/").text == "v00"
    (app_dir / "version.py").write_text("VERSION = 'v01\n")  # unterminated string
    time.sleep(0.11)
    reply = get(worker.socket_path, "/")
    assert (reply.status, reply.text) == (200, "v00")
    out = worker.wait_output("module reload failed")
    assert "SyntaxError" in out and "version.py" in out
    for _ in range(3):  # no retry storm: the broken file is not re-imported on every request
        assert get(worker.socket_path, "/").text == "v00"
        time.sleep(0.11)
    assert worker.output().count("module reload failed") == 1
    set_version(app_dir, "v02")  # fixing the file is noticed
    time.sleep(0.11)
    assert get(worker.socket_path, "/").text == "v02"


def test_a_broken_new_module_is_watched_until_fixed(start_worker, short_tmp):
    app_dir = make_app(short_tmp, "asgi")
    worker = start_worker(str(app_dir), "--reload", "module")
    assert get(worker.socket_path, "/").text == "v00"
    (app_dir / "helper.py").write_text("VALUE = 1 / 0\n")
    set_version(app_dir, "v01")
    (app_dir / "version.py").write_text("from helper import VALUE\nVERSION = 'v01'\n")
    time.sleep(0.11)
    assert get(worker.socket_path, "/").text == "v00"
    worker.wait_output("ZeroDivisionError")
    (app_dir / "helper.py").write_text("VALUE = 1\n")
    time.sleep(0.11)
    assert get(worker.socket_path, "/").text == "v01"


def test_reload_count_triggers_recycle(start_worker, short_tmp):
    app_dir = make_app(short_tmp, "wsgi")
    worker = start_worker(str(app_dir), "--reload", "module", "--recycle", "r:0,0s,2r")
    for n in (1, 2):
        set_version(app_dir, f"v{n:02d}")
        time.sleep(0.11)
        assert get(worker.socket_path, "/").text == f"v{n:02d}"
    assert worker.wait_exit() == ExitCode.RECYCLE
    assert "recycling after 2 module reloads" in worker.output()


def test_without_module_reload_edits_are_not_picked_up(start_worker, short_tmp):
    app_dir = make_app(short_tmp, "asgi")
    worker = start_worker(str(app_dir), "--reload", "none")
    assert get(worker.socket_path, "/").text == "v00"
    set_version(app_dir, "v01")
    time.sleep(0.2)
    assert get(worker.socket_path, "/").text == "v00"
