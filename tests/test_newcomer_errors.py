"""What a newcomer meets first: each mistake gets one message that says what to type instead.

The messages are checked whole: they are the documentation a newcomer reads.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from ripsvc import settings as st
from ripsvc.sockets import Bind
from tests.support.procs import EXAMPLES, REPO
from tests.support.waiting import free_port

HELLO = str(EXAMPLES / "hello")
ANY_OPTION = "rip-server --help lists every option."


def rip_server(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from ripsvc.cli import serve_main; "
                           "serve_main()", *args], capture_output=True, text=True, timeout=30,
                          cwd=cwd)


def test_no_arguments_show_what_app_means_with_the_three_usual_frameworks():
    result = rip_server()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "rip-server: app: not given: a module:attr, a path/to/file.py[:attr] or a directory "
        "with app.py",
        "usage: rip-server APP [w:N|auto|half|2x|3x] [http:PORT] [r:REQUESTS,SECONDSs,RELOADSr]"
        " [--option VALUE …] [--config FILE.toml]",
        "       rip-server stop|restart [APP]",
        "",
        "APP, from your project's directory:",
        "  rip-server mysite.wsgi:application    Django (the directory with manage.py)",
        "  rip-server app:app                    Flask (app.py)",
        "  rip-server main:app                   FastAPI (main.py)",
        "  rip-server ./myapp                    a directory with app.py",
        "then open http://127.0.0.1:8000/ (another port: http:8080).",
        ANY_OPTION,
    ]


def test_a_misspelt_app_file_is_answered_with_the_file_meant(tmp_path):
    (tmp_path / "app.py").write_text("app = None\n")
    result = rip_server("ap.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"rip-server: app: 'ap.py': {tmp_path.resolve()}/ap.py does not exist; did you mean "
        "'app.py'?",
    ]
    # a directory, misspelt, and the module:attr form keeps its attribute
    result = rip_server(f"{EXAMPLES}/helo", cwd=tmp_path)
    assert result.stderr.splitlines() == [
        f"rip-server: app: '{EXAMPLES}/helo': {EXAMPLES}/helo does not exist; did you mean "
        f"'{EXAMPLES}/hello'?"]
    result = rip_server("ap.py:application", cwd=tmp_path)
    assert result.stderr.splitlines()[0].endswith("did you mean 'app.py:application'?")


def test_a_django_project_directory_is_answered_with_its_module_attr(tmp_path):
    (tmp_path / "manage.py").write_text("")
    (tmp_path / "mysite").mkdir()
    (tmp_path / "mysite" / "wsgi.py").write_text("application = None\n")
    result = rip_server(".", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"rip-server: app: '.': directory {tmp_path.resolve()} has no app.py; a Django project "
        "is served from its directory as mysite.wsgi:application",
        ANY_OPTION,
    ]


def test_a_misspelt_setting_gets_a_did_you_mean():
    result = rip_server(HELLO, "htp:8000", "w=4", "0.0.0.0:8000", "htps", "--max-queu", "5")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "rip-server: command line: 'htp:8000': not understood; did you mean 'http:8000'?",
        "rip-server: command line: 'w=4': not understood; did you mean 'w:4'?",
        "rip-server: command line: '0.0.0.0:8000': not understood; did you mean "
        "'http:0.0.0.0:8000'?",
        "rip-server: command line: 'htps': not understood; did you mean 'https'?",
        "rip-server: command line: --max-queu: unknown option; did you mean --max-queue?",
    ]


def test_an_app_factory_and_glued_tokens_are_answered():
    result = rip_server("myapp:create_app()", "w4", "--factory", "http8000")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "rip-server: command line: 'w4': not understood; did you mean 'w:4'?",
        "rip-server: command line: --factory: not a rip-server option; here: nothing: name the "
        "app itself (app = create_app() in a module of yours)",
        "rip-server: command line: 'http8000': not understood; did you mean 'http:8000'?",
        "rip-server: app: 'myapp:create_app()': 'create_app()' is not an attribute name; "
        "rip-server takes the app, not a factory: add `app = create_app()` to a module of "
        "yours and name that module's app",
    ]


def test_gunicorn_and_uvicorn_options_are_answered_with_ours():
    result = rip_server(HELLO, "-w", "4", "--bind", "0.0.0.0:8000", "--timeout", "30",
                        "--frobnicate")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "rip-server: command line: -w: not a rip-server option; here: --workers N or w:N",
        "rip-server: command line: --bind: not a rip-server option; here: http:PORT (every "
        "interface) or http:HOST:PORT",
        "rip-server: command line: --timeout: not a rip-server option; here: "
        "--response-timeout SECONDS",
        "rip-server: command line: --frobnicate: unknown option (rip-server --help lists every "
        "option)",
        ANY_OPTION,
    ]


def test_workers_is_a_flag_as_the_settings_table_says():
    result = rip_server(HELLO, "--workers=x")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "rip-server: command line: workers: 'x' is not a worker count (N, auto, half, 2x, 3x)",
        ANY_OPTION,
    ]
    assert st.resolve([HELLO, "--workers", "3"], env={}).workers == 3
    needs = rip_server(HELLO, "--reload")
    assert needs.stderr.splitlines()[0] == \
        "rip-server: command line: --reload: needs a value (none|process|module)"


def test_help_shows_the_examples_and_every_setting():
    result = rip_server("main:app", "--help")
    assert result.returncode == 0
    assert "  rip-server main:app                   FastAPI (main.py)" in result.stdout
    for f in st.FIELDS.values():
        assert f.metadata["help"] in result.stdout


def test_without_a_listen_setting_only_loopback_is_served():
    """gunicorn's and uvicorn's default: nothing on the network unless asked for. A port
    without an address is every interface, as nginx's `listen 8080;`."""
    binds = st.resolve([HELLO], env={}).binds()
    assert [(b.host, b.port, b.tls) for b in binds] == [("127.0.0.1", 8000, False)]
    assert Bind.parse("http:8080").host == "0.0.0.0"
    assert Bind.parse("http:127.0.0.1:8080").host == "127.0.0.1"


def test_a_port_in_use_names_the_address_and_another_port(tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = rip_server(HELLO, "w:1", f"http:127.0.0.1:{port}", "--name",
                            f"rip-busy-{port}")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].split(" ERROR ", 1)[1] == (
        f"cannot listen on 127.0.0.1:{port}: the address is already in use (another process "
        f"listens on port {port}: `ss -ltnp 'sport = {port}'` shows which); choose another "
        f"port, e.g. http:{port + 1}")


def test_make_run_with_its_port_taken_says_how_to_choose_another():
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        # -o: the virtualenv and the extensions are taken as built (the tests run on them)
        result = subprocess.run(["make", "-s", "-o", "deps", "-o", "compile", "run",
                                 f"PORT={port}"], capture_output=True, text=True, timeout=60,
                                cwd=REPO)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == (
        f"make run: port {port} on 127.0.0.1 is already in use; choose another port: "
        f"PORT={port + 1} make run")
