"""The balancer's options: what its logic reads, built from its command line.

The options that are settings (settings.py: max_queue, the timeouts, the limits, the access
log …) take their default from `DEFAULTS` and their value from the settings the balancer was
given (`from_settings`); the others are the balancer's own (its name, the registry file, the
edge the manager prepared).
"""

from __future__ import annotations

from dataclasses import dataclass

from ripsvc.mounts import StaticMounts
from ripsvc.settings import DEFAULTS, Settings
from ripsvc.values import Network, parse_networks

__all__ = ["NICE", "BalancerOptions", "Network", "nice_for", "parse_networks"]

#: The balancer's scheduling priority (nice) unless set: above the workers' 0. Every request
#: waits for the balancer twice, once on its way in and once on its way out, so a balancer
#: that the workers' wake-ups push off the CPU leaves them idle (docs/performance.md).
NICE = -5


def nice_for(setting: int | None, access_log_to_journal: bool) -> int:
    """The balancer's priority: `setting`, or when it is None (auto) NICE, unless the access
    log goes to journald. The balancer then waits on journald (a blocking send per request)
    and, above it, starves it: 7 % fewer requests/s at -5 than at 0 (docs/performance.md)."""
    if setting is not None:
        return setting
    return 0 if access_log_to_journal else NICE


def _seconds(ms: int) -> float:
    return ms / 1000


@dataclass(frozen=True)
class BalancerOptions:
    app: str = "app"
    version: str = ""
    max_queue: int = DEFAULTS.max_queue
    queue_timeout: float = _seconds(DEFAULTS.queue_timeout_ms)
    connect_timeout: float = DEFAULTS.connect_timeout
    response_timeout: float = DEFAULTS.response_timeout
    header_timeout: float = DEFAULTS.header_timeout
    body_timeout: float = DEFAULTS.body_timeout
    keepalive_timeout: float = DEFAULTS.keepalive_timeout
    send_timeout: float = DEFAULTS.send_timeout
    max_stream_duration: float = DEFAULTS.max_stream_duration
    max_body: int = DEFAULTS.max_body
    max_header_bytes: int = 64 << 10  # not a setting
    status_path: str = DEFAULTS.status_path
    server_path: str = DEFAULTS.server_path
    ready_path: str = DEFAULTS.ready_path
    #: On SIGTERM: readiness fails and requests are served this long before the stop.
    shutdown_delay: float = DEFAULTS.shutdown_delay
    #: HAProxy's agent-check on this "HOST:PORT" ("": none).
    agent_port: str = DEFAULTS.agent_port
    access_log: bool = DEFAULTS.access_log
    json_logging: bool = DEFAULTS.json_logging
    #: Proxies in front whose X-Forwarded-* and X-Request-Id are kept (others' are replaced).
    forwarded_allow_ips: tuple[Network, ...] = DEFAULTS.forwarded_allow_ips
    #: Host names served besides the built-in ones; the run-time additions are in hosts_file.
    hosts: tuple[str, ...] = DEFAULTS.hosts
    hosts_file: str = ""
    #: HTTPS: listeners on these ports do TLS with this certificate; listeners on the
    #: redirect ports answer 301 to the first HTTPS port. (`cert` and `key` are the copies the
    #: manager made, not the settings of the same name: see edge.py.)
    tls_ports: tuple[int, ...] = ()
    redirect_ports: tuple[int, ...] = ()
    cert: str = ""
    key: str = ""
    hsts: bool = DEFAULTS.hsts
    hsts_max_age: int = DEFAULTS.hsts_max_age
    proxy_protocol: bool = DEFAULTS.proxy_protocol
    metrics_port: int = DEFAULTS.metrics_port
    nice: int | None = DEFAULTS.balancer_nice  # the scheduling priority; None: auto (nice_for)
    #: URL prefixes served from directories (balancer/static.py).
    static: StaticMounts = DEFAULTS.static
    #: The app's responses compressed (balancer/compress.py).
    compression: bool = DEFAULTS.compression
    compression_types: tuple[str, ...] = DEFAULTS.compression_types
    compression_min_size: int = DEFAULTS.compression_min_size

    @classmethod
    def from_settings(cls, settings: Settings, *, app: str = "app", hosts_file: str = "",
                      tls_ports: tuple[int, ...] = (), redirect_ports: tuple[int, ...] = (),
                      cert: str = "", key: str = "") -> BalancerOptions:
        """The options for `settings` (those the balancer receives: settings.role_fields),
        with the balancer's own options that are not settings."""
        s = settings
        return cls(
            app=app, max_queue=s.max_queue, queue_timeout=_seconds(s.queue_timeout_ms),
            connect_timeout=s.connect_timeout, response_timeout=s.response_timeout,
            header_timeout=s.header_timeout, body_timeout=s.body_timeout,
            keepalive_timeout=s.keepalive_timeout, send_timeout=s.send_timeout,
            max_stream_duration=s.max_stream_duration,
            max_body=s.max_body, status_path=s.status_path, server_path=s.server_path,
            ready_path=s.ready_path, shutdown_delay=s.shutdown_delay, agent_port=s.agent_port,
            access_log=s.access_log, json_logging=s.json_logging,
            forwarded_allow_ips=s.forwarded_allow_ips, hosts=s.hosts, hosts_file=hosts_file,
            tls_ports=tls_ports, redirect_ports=redirect_ports, cert=cert, key=key,
            hsts=s.hsts, hsts_max_age=s.hsts_max_age, proxy_protocol=s.proxy_protocol,
            metrics_port=s.metrics_port, nice=s.balancer_nice, static=s.static,
            compression=s.compression, compression_types=s.compression_types,
            compression_min_size=s.compression_min_size)
