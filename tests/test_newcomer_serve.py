"""The README's "Serve your app", as a newcomer types it: from the project's directory, APP
as Django, Flask and FastAPI name it. Each project is laid out as its framework lays it out;
Django and FastAPI stand in as what rip-server sees of them (a WSGI callable in
`mysite/wsgi.py` that finds `mysite.settings` through the project directory, an ASGI app in
`main.py` that answers lifespan), Flask is the real one where it is installed (the dev
virtualenv; Debian's packages, which the suite also runs on, have no Flask: a WSGI `app`)."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.client import fetch
from tests.support.waiting import free_port

DJANGO_WSGI = '''\
import importlib, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
settings = importlib.import_module(os.environ["DJANGO_SETTINGS_MODULE"])

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [settings.GREETING.encode()]
'''

FASTAPI_MAIN = '''\
async def app(scope, receive, send):  # as FastAPI answers: lifespan too
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello from main.py"})
'''

FLASK_APP = '''\
from flask import Flask

app = Flask(__name__)

@app.route("/")
def index():
    return "hello from Flask"
'''


FLASK_STAND_IN = '''\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from Flask"]
'''


def flask(root: Path) -> None:
    real = importlib.util.find_spec("flask") is not None
    (root / "app.py").write_text(FLASK_APP if real else FLASK_STAND_IN)


def django(root: Path) -> None:
    (root / "manage.py").write_text("")
    (root / "mysite").mkdir()
    (root / "mysite" / "__init__.py").write_text("")
    (root / "mysite" / "settings.py").write_text('GREETING = "hello from mysite"\n')
    (root / "mysite" / "wsgi.py").write_text(DJANGO_WSGI)


@pytest.mark.parametrize(("app", "layout", "expected"), [
    ("mysite.wsgi:application", django, b"hello from mysite"),
    ("app:app", flask, b"hello from Flask"),
    ("main:app", lambda root: (root / "main.py").write_text(FASTAPI_MAIN), b"hello from main.py"),
], ids=["django", "flask", "fastapi"])
def test_serve_your_app_from_its_directory(short_tmp, app, layout, expected):
    project = short_tmp / "project"
    project.mkdir()
    layout(project)
    port = free_port()
    log = short_tmp / "out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from ripsvc.cli import serve_main; "
                                 "serve_main()", app, "w:1", f"http:127.0.0.1:{port}", "--name",
                                 f"rip-serve-{port}"], cwd=project, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if json.loads(fetch(port, "/status").body)["workers"]["ready"] == 1:
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        reply = fetch(port, "/")
        assert (reply.status, reply.body) == (200, expected), log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
