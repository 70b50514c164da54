"""rip-server and ripctl as a user runs them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

from tests.support.procs import EXAMPLES, REPO
from tests.support.waiting import free_port


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from ripsvc.cli import ripctl_main; "
                           "ripctl_main()", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_rip_server_serves_the_example_until_interrupted(tmp_path):
    port = free_port()
    log = open(tmp_path / "out", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ripsvc.cli import serve_main; serve_main()",
         str(EXAMPLES / "hello"), f"http:127.0.0.1:{port}", "--name", f"rip-cli-{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        body = b""
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    body = r.read()
            except OSError:
                assert proc.poll() is None, (tmp_path / "out").read_text()
                time.sleep(0.05)
        assert body.startswith(b"pong "), (tmp_path / "out").read_text()
        ready = f"ready: try  curl http://127.0.0.1:{port}/"
        while ready not in (tmp_path / "out").read_text():
            assert time.monotonic() < deadline, (tmp_path / "out").read_text()
            time.sleep(0.05)
        # what the ready line points at answers
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200
            assert r.read().startswith(b"Hello from rip-server: examples/hello is serving")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_rip_server_reports_every_bad_token_with_exit_2():
    result = run_cli("serve", "w:0", "http:99999", "nowhere", "elsewhere")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "rip-server: command line: workers: 'w:0' is not a worker count (N, auto, half, 2x, "
        "3x)",
        "rip-server: command line: listen: 'http:99999': expected http:[HOST:]PORT with PORT "
        "in 1..65535",
        "rip-server: command line: 'elsewhere': not understood (the app is 'nowhere'; "
        "settings look like w:N, http:PORT, r:…, --option VALUE)",
        "rip-server: app: 'nowhere' is neither a directory nor a file; a module must be given "
        "as module:attr",
        "rip-server --help lists every option.",
    ]


def test_ripctl_unknown_command_is_a_usage_error():
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_bash_completion_knows_every_ripctl_command_and_option():
    from ripsvc.cli import ripctl_parser

    completion = (REPO / "packaging" / "debian" / "ripctl.bash-completion").read_text()
    commands = completion.split('commands="', 1)[1].split('"', 1)[0].split()
    parser = ripctl_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert sorted(commands) == sorted(subparsers.choices)
    for name in ("status", "reload", "logs", "install"):
        line = next(line for line in completion.splitlines() if line.strip().startswith(f"{name})"))
        options = {o for a in subparsers.choices[name]._actions for o in a.option_strings
                   if o.startswith("--") and o != "--help"}
        assert options <= set(line.split('"')[1].split()), (name, options)
