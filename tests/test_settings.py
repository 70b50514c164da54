"""Settings declared once: command line, environment, file, defaults, checks, docs."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from ripsvc import launch, paths, units
from ripsvc import settings as st
from ripsvc.apploader import parse_spec
from ripsvc.balancer.__main__ import build_parser as balancer_parser
from ripsvc.balancer.__main__ import plan_from as balancer_plan
from ripsvc.balancer.options import BalancerOptions
from ripsvc.recycle import RecyclePolicy
from ripsvc.worker.__main__ import build_parser as worker_parser
from ripsvc.worker.core import WorkerOptions
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
    assert (balancer.max_queue, balancer.access_log, balancer.response_timeout) == \
        (7, False, 9.0)
    assert [str(n) for n in balancer.forwarded_allow_ips] == ["10.0.0.0/8"]
    assert st.resolve([HELLO], env={}).args_for("balancer") == []  # auto: not passed
    nice = st.resolve([HELLO, "--balancer-nice", "-7"], env={}).args_for("balancer")
    assert balancer_parser().parse_args(nice).balancer_nice == -7
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


def test_memory_limits_are_sizes_each_below_the_next() -> None:
    """max_rss recycles gently; the units' MemoryHigh= and MemoryMax= are the backstops, so
    each must sit above the one before; a size without its unit is a mistake said at once."""
    resolved = st.resolve([HELLO, "--max-rss", "512M", "--memory-high", "1G",
                           "--memory-max", "1536M"], env={})
    assert (resolved.max_rss, resolved.memory_high, resolved.memory_max) == \
        (512 << 20, 1 << 30, 1536 << 20)
    assert (st.DEFAULTS.max_rss, st.DEFAULTS.memory_high, st.DEFAULTS.memory_max) == (0, 0, 0)
    assert st.resolve([HELLO], env={"RIP_MAX_RSS": "none"}).max_rss == 0
    with pytest.raises(st.SettingsError) as err:
        st.resolve([HELLO, "--max-rss", "512"], env={"RIP_MEMORY_MAX": "lots"})
    assert sorted(err.value.problems) == [
        "command line: max_rss: '512' is 512 bytes, less than any Python process needs; a "
        "size takes a unit: did you mean '512M'?",
        "environment RIP_MEMORY_MAX: memory_max: 'lots' is not a size (bytes, or a number "
        "with K, M or G)"]
    for given, problem in (
            (["--max-rss", "1G", "--memory-max", "1G"],
             "max_rss, memory_max: max_rss (1G) must be below memory_max (1G): the kernel "
             "would kill a worker before it recycles"),
            (["--max-rss", "600M", "--memory-high", "500M"],
             "max_rss, memory_high: max_rss (600M) must be below memory_high (500M): the "
             "kernel would slow a worker down before it recycles"),
            (["--memory-high", "2G", "--memory-max", "1G"],
             "memory_high, memory_max: memory_high (2G) must be below memory_max (1G): "
             "MemoryHigh= at or above MemoryMax= does nothing")):
        with pytest.raises(st.SettingsError) as err:
            st.resolve([HELLO, *given], env={})
        assert err.value.problems == [problem]


# -- the processes' command lines come from the same declarations ------------------------------
#: A value other than the default for each setting that a process receives.
OTHER_VALUES = {
    "recycle": "r:9,99s,3r", "recycle_jitter": "5%", "reload": "module",
    "graceful_timeout": "7s", "max_body": "2M", "max_queue": "7", "queue_timeout_ms": "250",
    "connect_timeout": "1.5", "response_timeout": "9", "header_timeout": "4",
    "body_timeout": "11", "keepalive_timeout": "12", "send_timeout": "13",
    "status_path": "/health", "server_path": "/alive", "access_log": "false",
    "json_logging": "true", "forwarded_allow_ips": "10.0.0.0/8,::1",
    "hosts": "shop.example,*.shop.example", "hsts": "true", "hsts_max_age": "600",
    "proxy_protocol": "true", "metrics_port": "9100", "balancer_nice": "3",
    "max_stream_duration": "30", "websocket_connections": "50", "websocket_max_message": "1M",
    "websocket_ping": "5", "ready_path": "/readyz", "shutdown_delay": "5",
    "agent_port": "5555", "static": "/static/=/srv/static;fallback",
    "compression": "true", "compression_types": "text/html,application/json",
    "compression_min_size": "4K", "max_rss": "512M",
}
PARSERS = {"balancer": lambda: balancer_parser(), "worker": lambda: worker_parser()}
POSITIONAL = {"balancer": [], "worker": [HELLO]}


def _options(role: str, args: list[str]) -> object:
    """What the process's logic gets from this command line."""
    parsed = PARSERS[role]().parse_args([*POSITIONAL[role], *args])
    if role == "balancer":
        return balancer_plan(parsed)
    return WorkerOptions.from_settings(st.from_arguments(parsed, role), parse_spec(HELLO))


@pytest.mark.parametrize("role", st.ROLES)
def test_a_process_given_nothing_has_the_settings_defaults(role: str) -> None:
    """The balancer's and the worker's parsers declare no default of their own: what their
    command line does not say is settings.DEFAULTS, and so are their options' defaults."""
    args = PARSERS[role]().parse_args(POSITIONAL[role])
    assert st.from_arguments(args, role) == st.DEFAULTS
    for f in st.role_fields(role):
        assert getattr(args, f.name) == getattr(st.DEFAULTS, f.name), f.name
    defaults = BalancerOptions() if role == "balancer" else WorkerOptions(parse_spec(HELLO))
    given = st.from_arguments(args, role)
    assert defaults == (BalancerOptions.from_settings(given) if role == "balancer" else
                        WorkerOptions.from_settings(given, parse_spec(HELLO)))


@pytest.mark.parametrize("role", st.ROLES)
def test_every_setting_a_process_receives_reaches_its_options(role: str) -> None:
    """Each setting, changed alone, travels through args_for, the process's parser (declared
    by add_arguments) and from_arguments unchanged, and changes the process's options."""
    names = [f.name for f in st.role_fields(role)]
    assert set(names) <= set(OTHER_VALUES), "give OTHER_VALUES a value for the new setting"
    for name in names:
        resolved = st.resolve([HELLO], env={f"RIP_{name.upper()}": OTHER_VALUES[name]})
        assert getattr(resolved, name) != getattr(st.DEFAULTS, name), name
        args = resolved.args_for(role)
        assert args[0] == st.FIELDS[name].metadata["arg"], (name, args)
        parsed = st.from_arguments(PARSERS[role]().parse_args([*POSITIONAL[role], *args]),
                                   role)
        assert getattr(parsed, name) == getattr(resolved, name), name
        assert parsed == dataclasses.replace(st.DEFAULTS, **{name: getattr(resolved, name)})
        assert _options(role, args) != _options(role, []), name


#: Options of the processes that are not settings (their own, or the edge the manager made).
NOT_SETTINGS = {
    "BalancerOptions": {"app", "version", "max_header_bytes", "hosts_file", "tls_ports",
                        "redirect_ports", "cert", "key"},
    "WebSocketLimits": set(),
    "WorkerOptions": {"app", "name", "worker_id", "reload_interval", "recycle_handoff",
                      "websocket", "websocket_limits"},
}


@pytest.mark.parametrize("path, cls", [("ripsvc/balancer/options.py", "BalancerOptions"),
                                       ("ripsvc/worker/core.py", "WorkerOptions"),
                                       ("ripsvc/worker/core.py", "WebSocketLimits")])
def test_the_options_defaults_are_the_settings_defaults(path: str, cls: str) -> None:
    """No second default: each option that is a setting is declared with a default taken from
    settings.DEFAULTS, not written again."""
    tree = ast.parse((REPO / path).read_text())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    for node in body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        name = node.target.id
        uses_defaults = node.value is not None and any(
            isinstance(n, ast.Name) and n.id == "DEFAULTS" for n in ast.walk(node.value))
        assert uses_defaults != (name in NOT_SETTINGS[cls]), \
            f"{cls}.{name}: {ast.unparse(node.value) if node.value else 'no default'}"


def test_one_command_line_for_the_balancer_under_both_supervisors(tmp_path: Path) -> None:
    """The generator's ExecStart and the embedded supervisor's argv come from the same
    function (launch.balancer_args) and the same settings."""
    resolved = st.resolve([HELLO, "--max-queue", "7", "--queue-timeout-ms", "250", "https:8443",
                           "--hosts", "shop.example"], env={})
    argv = launch.balancer_args(resolved, resolved.binds(), paths.system_app_dir("hello"),
                                paths.system_state_dir("hello"))
    dropin = units.app_units(resolved, tmp_path / "hello.toml", "/usr/bin/python3")[
        f"rip-balancer@hello.service.d/{units.DROPIN}"]
    assert f"\nExecStart=/usr/bin/python3 -m ripsvc.balancer {units.command_line(argv)}\n" \
        in dropin
    args = balancer_parser().parse_args(argv)
    assert (args.app, args.control) == ("hello", f"{paths.SYSTEM_RUNTIME}/hello/balancer.ctl")
    assert (args.max_queue, args.queue_timeout_ms, args.tls_port, args.redirect_port) == \
        (7, 250, [8443], [80])
    options = BalancerOptions.from_settings(st.from_arguments(args, "balancer"))
    assert (options.queue_timeout, options.hosts) == (0.25, ("shop.example",))


def _path_literals(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef |
                                ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings and ("/run/rip" in n.value or "/var/lib/rip" in n.value)]


def test_run_rip_paths_only_from_paths_py() -> None:
    """/run/rip and /var/lib/rip are spelt in ripsvc/paths.py only; code and unit templates
    take them from there (comments and docstrings may mention them)."""
    found = []
    for source in sorted((REPO / "ripsvc").rglob("*.py")):
        if source.name != "paths.py":
            found += [f"{source.relative_to(REPO)}:{line}: {text!r}"
                      for line, text in _path_literals(ast.parse(source.read_text()))]
    for template in sorted((REPO / "units").glob("*.j2")):
        found += [f"{template.relative_to(REPO)}:{number}: {line}"
                  for number, line in enumerate(template.read_text().splitlines(), 1)
                  if "/run/rip" in line and not line.startswith("#")]
    assert found == []


def test_agent_port_is_loopback_unless_an_address_is_given():
    def agent(value: str) -> str:
        return st.resolve([HELLO, "--agent-port", value], env={}).agent_port

    assert st.DEFAULTS.agent_port == ""  # off
    assert agent("5555") == "127.0.0.1:5555"
    assert agent("0.0.0.0:5555") == "0.0.0.0:5555"
    assert agent("[::1]:5555") == "[::1]:5555"
    assert agent("0") == ""
    for bad in ("70000", "host:", "five"):
        with pytest.raises(st.SettingsError, match="agent_port"):
            agent(bad)
