"""Settings declared once: command line, environment, file, defaults, checks, docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ripsvc import settings as st
from ripsvc.balancer.__main__ import build_parser as balancer_parser
from ripsvc.recycle import RecyclePolicy
from ripsvc.worker.__main__ import build_parser as worker_parser
from tests.support.procs import EXAMPLES, REPO

HELLO = str(EXAMPLES / "hello")


def test_every_default_passes_its_own_validator():
    for f in st.FIELDS.values():
        if f.default != "":
            f.metadata["parse"](f.default)
    resolved = st.resolve([HELLO], env={})
    assert resolved.name == "hello"
    assert resolved.recycle == RecyclePolicy()
    assert resolved.listen == ("http:127.0.0.1:8000",)  # loopback unless told otherwise


def test_precedence_command_line_over_environment_over_file_over_default(tmp_path):
    config = tmp_path / "shop.toml"
    config.write_text(f'app = "{HELLO}"\nworkers = 3\nmax_queue = 10\nqueue_timeout_ms = 100\n')
    env = {"RIP_WORKERS": "5", "RIP_MAX_QUEUE": "20"}
    resolved = st.resolve(["w:7"], env=env, file=config)
    assert (resolved.workers, resolved.max_queue, resolved.queue_timeout_ms) == (7, 20, 100)
    assert resolved.connect_timeout == 2.0  # the default
    assert resolved.name == "shop"  # the file's name
    assert st.resolve([], env=env, file=config).workers == 5
    assert st.resolve([], env={}, file=config).workers == 3


def test_tokens_are_position_independent_and_flags_take_both_forms():
    resolved = st.resolve(["r:50,0s,0r", "--max-body", "1M", HELLO, "http:9001",
                           "--reload=module", "http:9002", "w:2", "--json-logging",
                           "--no-access-log"], env={})
    assert resolved.app == HELLO
    assert resolved.recycle == RecyclePolicy(50, 0, 0)
    assert resolved.max_body == 1 << 20
    assert resolved.listen == ("http:9001", "http:9002")
    assert (resolved.reload, resolved.workers) == ("module", 2)
    assert resolved.json_logging and not resolved.access_log


def test_every_problem_is_reported_at_once_with_its_source(tmp_path):
    config = tmp_path / "myapp.toml"
    config.write_text(f'app = "{HELLO}"\nworkers = "-3"\ncolour = "blue"\n')
    with pytest.raises(st.SettingsError) as err:
        st.resolve(["w:lots", "--max-queue", "x", "https:99999"],
                   env={"RIP_RELOAD": "sometimes"}, file=config)
    problems = err.value.problems
    assert f"{config}: workers: '-3' is not a worker count (N, auto, half, 2x, 3x)" in problems
    assert any(p.startswith(f"{config}: colour: unknown setting") for p in problems)
    assert any(p.startswith("environment RIP_RELOAD: reload: 'sometimes' is not one of")
               for p in problems)
    assert "command line: workers: 'w:lots' is not a worker count (N, auto, half, 2x, 3x)" \
        in problems
    assert any(p.startswith("command line: max_queue: 'x'") for p in problems)
    assert any("'https:99999': expected https:[HOST:]PORT" in p for p in problems)
    assert len(problems) == 6, problems


def test_bad_toml_and_unknown_environment_variables(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text("app = \n")
    with pytest.raises(st.SettingsError, match="not valid TOML"):
        st.resolve([], env={}, file=config)
    with pytest.raises(st.SettingsError, match="environment RIP_WROKERS: unknown setting"):
        st.resolve([HELLO], env={"RIP_WROKERS": "2"})


def test_process_arguments_are_accepted_by_the_processes():
    resolved = st.resolve([HELLO, "r:9,9s,9r", "--reload", "module", "--graceful-timeout", "5",
                           "--max-body", "2M", "--max-queue", "7", "--no-access-log",
                           "--forwarded-allow-ips", "10.0.0.0/8", "--response-timeout", "9"],
                          env={})
    worker = worker_parser().parse_args([HELLO, *resolved.args_for("worker")])
    assert worker.recycle == RecyclePolicy(9, 9, 9)
    assert (worker.reload, worker.graceful_timeout, worker.max_body) == ("module", 5.0, 2 << 20)
    balancer = balancer_parser().parse_args(resolved.args_for("balancer"))
    assert (balancer.max_queue, balancer.no_access_log, balancer.response_timeout) == \
        (7, True, 9.0)
    assert [str(n) for n in balancer.forwarded_allow_ips] == ["10.0.0.0/8"]
    assert st.resolve([HELLO], env={}).args_for("balancer") == []  # auto: not passed
    nice = st.resolve([HELLO, "--balancer-nice", "-7"], env={}).args_for("balancer")
    assert balancer_parser().parse_args(nice).nice == -7
    with pytest.raises(st.SettingsError, match="not a nice value"):
        st.resolve([HELLO, "--balancer-nice", "-21"], env={})


def test_settings_reference_table_is_generated_from_the_declarations():
    reference = (REPO / "docs" / "settings.md").read_text()
    assert st.markdown_table() in reference, \
        "regenerate the table in docs/settings.md: python -m ripsvc.settings"


def test_every_setting_has_a_command_line_form_and_the_table_shows_it():
    """The settings reference says every setting can be given on the command line: each
    one has a flag (those with a token too, as gunicorn's and uvicorn's users type them)."""
    for name, f in st.FIELDS.items():
        assert f.metadata["flag"] or name == "app", name
    table = st.markdown_table()
    assert "| `w:N\\|auto\\|half\\|2x\\|3x` or `--workers` |" in table
    assert "`r:REQUESTS,SECONDSs,RELOADSr` or `--recycle`" in table
    resolved = st.resolve([HELLO, "--workers", "3", "--listen", "http:9001", "--listen=9443",
                           "--recycle=r:5,0s,0r"], env={})
    assert (resolved.workers, resolved.listen) == (3, ("http:9001", "9443"))
    assert resolved.recycle == RecyclePolicy(5, 0, 0)
    assert resolved.args_for("worker")[:2] == ["--recycle", "r:5,0s,0r"]


def test_ripctl_check(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(f'app = "{HELLO}"\nworkers = 2\nlisten = ["http:8080"]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(f'app = "{HELLO}"\nworkers = 0\nmax_body = "lots"\n')

    def check(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from ripsvc.cli import ripctl_main; "
                               "ripctl_main()", "check", target], capture_output=True,
                              text=True, timeout=20, cwd=REPO, env={"PATH": "/usr/bin"})

    ok = check(str(good))
    assert ok.returncode == 0 and "good: " in ok.stdout and "2 workers" in ok.stdout
    failed = check(str(bad))
    assert failed.returncode == 2
    assert f"{bad}: workers: '0' is not a worker count" in failed.stderr
    assert f"{bad}: max_body: 'lots' is not a size" in failed.stderr
    missing = check(str(Path(tmp_path) / "none.toml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
