"""The balancer's settings (plain values: they travel on the command line)."""

from __future__ import annotations

from dataclasses import dataclass


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
    max_body: int = 100 << 20
    max_header_bytes: int = 64 << 10
    status_path: str = "/status"
    server_path: str = "/server"
    access_log: bool = True
    json_logging: bool = False
