"""A worker killed as hung first writes where it hung (issue 22): every thread's Python stack,
to its output (the journal under systemd), as uWSGI's harakiri does."""

from __future__ import annotations

from tests.support.client import fetch
from tests.support.procs import TEST_APPS
from tests.support.server import Server


def test_a_hung_worker_s_stack_is_in_the_log(short_tmp):
    server = Server(short_tmp, str(TEST_APPS / "blocking"), "w:1", "--response-timeout", "0.5")
    try:
        server.wait_healthy(1)
        assert fetch(server.port, "/block?s=5").status == 504
        server.wait_output("most recent call first", timeout=10)
        output = server.output()
        trace = output[output.index("most recent call first"):]
        assert "blocking/app.py" in trace and '"app"' not in trace.split("\n")[0]
        assert "line" in trace
    finally:
        server.close()
