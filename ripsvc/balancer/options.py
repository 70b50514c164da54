"""The balancer's settings (plain values: they travel on the command line)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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


def parse_networks(text: str) -> tuple[Network, ...]:
    """`127.0.0.1,10.0.0.0/8` → networks; empty means no proxy is trusted."""
    networks = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR network") from None
    return tuple(networks)


@dataclass(frozen=True)
class BalancerOptions:
    app: str = "app"
    version: str = ""
    max_queue: int = 1024
    queue_timeout: float = 5.0
    connect_timeout: float = 2.0
    response_timeout: float = 60.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    max_body: int = 100 << 20
    max_header_bytes: int = 64 << 10
    status_path: str = "/status"
    server_path: str = "/server"
    access_log: bool = True
    json_logging: bool = False
    #: Proxies in front whose X-Forwarded-* and X-Request-Id are kept (others' are replaced).
    forwarded_allow_ips: tuple[Network, ...] = ()
    #: Host names served besides the built-in ones; the run-time additions are in hosts_file.
    hosts: tuple[str, ...] = ()
    hosts_file: str = ""
    #: HTTPS: listeners on these ports do TLS with this certificate; listeners on the
    #: redirect ports answer 301 to the first HTTPS port.
    tls_ports: tuple[int, ...] = ()
    redirect_ports: tuple[int, ...] = ()
    cert: str = ""
    key: str = ""
    hsts: bool = False
    hsts_max_age: int = 31536000
    proxy_protocol: bool = False
    metrics_port: int = 0
    nice: int | None = None  # the scheduling priority; None: auto (nice_for)
