from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.procs import TEST_APPS, BalancerProcess, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
COMPILED_STAMP = ROOT / "ripsvc" / ".compiled"

# RIP_* is the settings' namespace: every rip-server the tests start would refuse this switch's
# old name ("unknown setting"), should an environment still set it.
if "RIP_FORBID_SKIPS" in os.environ:
    os.environ.setdefault("RIPSVC_FORBID_SKIPS", os.environ.pop("RIP_FORBID_SKIPS"))


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite tests the hot path as it ships: compiled by mypyc (`make compile` builds it
    into the tree). Extensions older than a module's source would test yesterday's code, so
    they stop the run; RIPSVC_COMPILE=0 tests the plain Python package, with no extension about."""
    extensions = sorted(ROOT.glob("ripsvc/**/*.so"))
    if os.environ.get("RIPSVC_COMPILE", "1") == "0":
        if extensions:
            pytest.exit(f"RIPSVC_COMPILE=0 but the tree holds compiled modules ({extensions[0]}); "
                        "`make clean` removes them", returncode=2)
        return
    sources = list(ROOT.glob("ripsvc/**/*.py"))
    built = COMPILED_STAMP.stat().st_mtime if COMPILED_STAMP.exists() and extensions else 0.0
    changed = [path for path in sources if path.stat().st_mtime > built]
    if changed:
        pytest.exit(f"the compiled hot path is missing or older than {changed[0].name}: run "
                    "`make compile` (or set RIPSVC_COMPILE=0 to test the interpreted package)",
                    returncode=2)


@pytest.fixture(scope="session", autouse=True)
def private_state_directory() -> Iterator[Path]:
    """rip-server run as root keeps its state in /var/lib/rip/APP: the tests' apps keep
    theirs here instead (STATE_DIRECTORY is how systemd names it, and how paths.state_dir
    finds it)."""
    path = Path(tempfile.mkdtemp(prefix="rip-state-"))
    old = os.environ.get("STATE_DIRECTORY")
    os.environ["STATE_DIRECTORY"] = str(path)
    yield path
    if old is None:
        os.environ.pop("STATE_DIRECTORY", None)
    else:
        os.environ["STATE_DIRECTORY"] = old
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (Unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rip-t-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_worker(short_tmp: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """start_worker(app, *args, env=…, ready=True) → a running WorkerProcess, cleaned up after."""
    started: list[WorkerProcess] = []

    def start(app: str, *args: str, env: dict[str, str] | None = None,
              ready: bool = True) -> WorkerProcess:
        worker = WorkerProcess(short_tmp, app, args, env, name=f"w{len(started)}")
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.close()


class Stack:
    """A balancer in front of real workers, all started as systemd would start them."""

    def __init__(self, balancer: BalancerProcess, workers: list[WorkerProcess]) -> None:
        self.balancer = balancer
        self.workers = workers
        self.websocket_workers: list[WorkerProcess] = []

    @property
    def port(self) -> int:
        return self.balancer.port

    @property
    def control(self) -> str:
        return self.balancer.control_path

    def pids(self) -> list[str]:
        return [str(w.pid) for w in self.workers]


@pytest.fixture
def start_stack(short_tmp: Path) -> Iterator[Callable[..., Stack]]:
    """start_stack(workers=2, app=probe, worker_args=(), args=(), stdout=None,
    balancer_env=None, worker_env=None, websockets=0) → a running Stack (`stdout`: a file for
    the balancer's stdout instead of its log; `balancer_env`, `worker_env`: more environment
    for the balancer, for each worker; `websockets`: WebSocket workers,
    stack.websocket_workers)."""
    procs: list[BalancerProcess | WorkerProcess] = []

    def start(workers: int = 2, app: str = str(TEST_APPS / "probe.py"),
              worker_args: tuple[str, ...] = ("--recycle", "r:0,0s,0r"),
              args: tuple[str, ...] = (), stdout: str | None = None,
              balancer_env: dict[str, str] | None = None,
              worker_env: dict[str, str] | None = None, websockets: int = 0) -> Stack:
        started = []
        stack = len([p for p in procs if isinstance(p, BalancerProcess)])  # several per test
        prefix = f"s{stack}" if stack else ""
        for n in range(workers):
            worker = WorkerProcess(short_tmp, app, worker_args, worker_env,
                                   name=f"{prefix}w{n + 1}")
            procs.append(worker)
            started.append(worker)
        websocket_workers = []
        for n in range(websockets):
            worker = WorkerProcess(short_tmp, app, ("--websocket", *worker_args),
                                   name=f"{prefix}ws{n + 1}")
            procs.append(worker)
            websocket_workers.append(worker)
        for worker in started + websocket_workers:
            worker.wait_ready()
        joins = [f"--worker={n + 1}={w.socket_path}" for n, w in enumerate(started)]
        joins += [f"--websocket-worker=ws{n + 1}={w.socket_path}"
                  for n, w in enumerate(websocket_workers)]
        balancer = BalancerProcess(short_tmp, [*joins, *args], env=balancer_env,
                                   name=f"{prefix}balancer", stdout=stdout)
        procs.append(balancer)
        balancer.wait_ready()
        stack = Stack(balancer, started)
        stack.websocket_workers = websocket_workers
        return stack

    yield start
    for proc in reversed(procs):
        proc.close()


# -- markers (declared in pyproject.toml) --------------------------------------------------------
#: Tests that take a second or more (measured on the project's 2-core VM), by file; "*": every
#: test of the file. Kept here rather than as decorators so that one table says what the fast
#: part leaves out (tests/test_markers.py checks that each name still exists).
SLOW: dict[str, set[str]] = {
    "test_availability.py": {"*"},
    "test_fuzz.py": {"*"},
    "test_hung_traces.py": {"*"},
    "test_streaming.py": {"*"},
    "test_streaming_frameworks.py": {"*"},
    "test_websockets.py": {"*"},
    "test_balancer_machine.py": {"*"},
    "test_manager_health.py": {"*"},
    "test_newcomer_ripctl.py": {"*"},
    "test_newcomer_serve.py": {"*"},
    "test_server.py": {"*"},
    "test_recycle_memory.py": {"*"},
    "test_drain.py": {
        "test_a_restarted_balancer_is_drained_again",
        "test_drain_for_stops_the_app_and_undrain_calls_it_off",
        "test_drain_undrain_and_status", "test_shutdown_delay_on_sigterm"},
    "test_fleet.py": {"*"},
    "test_readiness.py": {
        "test_a_second_sigterm_ends_the_shutdown_delay",
        "test_agent_check_reports_weight_drain_and_down",
        "test_agent_port_survives_floods_half_sent_and_endless_input",
        "test_readiness_fails_while_draining_liveness_never_waits",
        "test_shutdown_delay_fails_readiness_and_serves_before_stopping",
        "test_time_already_drained_counts_toward_the_shutdown_delay"},
    "test_balancer_dispatch.py": {
        "test_busy_worker_is_retried_on_another",
        "test_hung_worker_gets_504_within_the_timeout_and_is_reported",
        "test_queue_is_fifo_503_when_full_504_on_timeout", "test_queue_timeout_answers_504",
        "test_round_robin_over_idle_workers_only",
        "test_sigkill_mid_request_get_is_retried_post_is_not",
        "test_slow_reader_does_not_hold_the_worker", "test_slow_uploader_does_not_hold_the_worker",
        "test_streaming_response_passes_through_and_holds_its_worker"},
    "test_balancer_edges.py": {
        "test_control_bad_messages_get_error_replies", "test_control_join_drain_leave",
        "test_malformed_or_oversized_requests_are_refused_and_closed",
        "test_new_version_workers_are_preferred",
        "test_sigterm_finishes_requests_in_flight_then_exits", "test_slow_body_gets_408",
        "test_slowloris_gets_408_and_idle_keep_alive_is_closed"},
    "test_static.py": {
        "test_a_client_that_stops_reading_a_file_is_disconnected",
        "test_a_large_file_to_a_slow_client_holds_neither_the_loop_nor_memory",
        "test_rip_server_passes_its_mounts_and_compression_to_its_balancer"},
    "test_compression.py": {
        "test_a_stream_is_compressed_piece_by_piece_and_each_piece_arrives_at_once"},
    "test_balancer_front_door.py": {
        "test_a_malformed_proxy_header_closes_the_connection",
        "test_forwarded_headers_are_replaced_unless_from_a_trusted_proxy"},
    "test_conformance_asgi.py": {"test_what_an_app_may_send"},
    "test_conformance_wsgi.py": {
        "test_callables_gunicorn_serves_are_served",
        "test_server_name_without_the_balancer_follows_gunicorn_on_a_unix_socket",
        "test_what_an_app_may_answer"},
    "test_https.py": {
        "test_a_renewed_certificate_is_reloaded_without_dropping_connections",
        "test_metrics_count_reloads_and_worker_restarts", "test_mkcert_is_used_when_installed",
        "test_proxy_protocol_in_front_of_tls",
        "test_ripctl_hosts_manages_a_registry_kept_across_restarts",
        "test_self_signed_certificate_redirect_and_hsts"},
    "test_journal.py": {"test_ripctl_logs_shows_every_process_of_the_app"},
    "test_tls.py": {
        "test_mkcert_cache_is_remade_when_the_ca_changes",
        "test_mkcert_cache_is_reused_and_remade_for_a_new_host",
        "test_mkcert_certificate_is_served", "test_mkcert_is_looked_up_on_path_at_call_time"},
    "test_worker_apps.py": {
        "test_a_header_field_that_would_split_the_response_gets_500", "test_ping_and_echo"},
    "test_worker_lifecycle.py": {
        "test_bad_import_strings_are_refused", "test_graceful_timeout_bounds_the_stop",
        "test_load_failures_exit_with_app_load_error_and_say_why",
        "test_notify_ready_status_watchdog_and_stopping",
        "test_recycle_handoff_announces_keeps_serving_then_times_out",
        "test_recycles_after_its_age_limit", "test_recycles_after_n_requests_with_its_exit_code",
        "test_second_request_while_one_is_in_flight_gets_busy_503_at_once",
        "test_sigterm_during_slow_request_finishes_it_and_exits_0",
        "test_wsgi_request_does_not_stall_the_watchdog"},
    "test_worker_module_reload.py": {
        "test_an_edit_is_served_on_the_next_request_after_the_interval"},
}
#: Fixtures that boot a systemd box (test_systemd.py, test_package_e2e.py) and that build the
#: .deb (test_deb.py, test_package_e2e.py): their tests get the marker, and `slow`.
BY_FIXTURE = {"box": "systemd", "debian": "systemd", "deb": "deb"}
DEB_FIXTURES = {"debian"}  # the clean Debian box installs the .deb too


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests: slow (the SLOW table), systemd and deb (by fixture, and slow too)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        names = {BY_FIXTURE[f] for f in fixtures & BY_FIXTURE.keys()}
        names |= {"deb"} if fixtures & DEB_FIXTURES else set()
        slow = SLOW.get(item.path.name, set())
        if names or "*" in slow or getattr(item, "originalname", item.name) in slow:
            names.add("slow")
        for name in sorted(names):
            item.add_marker(name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With RIPSVC_FORBID_SKIPS=1 (CI), a skipped or xfailed test fails the run."""
    if not os.environ.get("RIPSVC_FORBID_SKIPS"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = reporter.stats if reporter is not None else {}
    skipped = len(stats.get("skipped", [])) + len(stats.get("xfailed", []))
    if skipped:
        print(f"\nRIPSVC_FORBID_SKIPS: {skipped} test(s) skipped or xfailed: failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
