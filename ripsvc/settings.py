"""Every setting of an app, declared once.

Each field of `Settings` carries its whole declaration in its metadata: how to parse it, its
`rip-server` token or flag, its help text, and which process receives it on its command line.
From that one declaration come the `rip-server` arguments, the app file (`/etc/rip/APP.toml`),
the `RIP_*` environment variables, `ripctl check`, the settings table in docs/settings.md, and
the balancer's and the workers' own command lines: `args_for` writes a process's arguments,
`add_arguments` declares them in the process's parser (same flag, parser and help), and
`DEFAULTS` is the one default of each setting, for the processes' options as for rip-server.
Precedence: command line > environment > file > default. Every problem is reported at once,
with where the value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import itertools
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ripsvc import hosts
from ripsvc.apploader import AppLoadError, parse_spec
from ripsvc.mounts import KIND as STATIC_KIND
from ripsvc.mounts import StaticMounts, parse_static
from ripsvc.recycle import RecyclePolicy
from ripsvc.sockets import Bind
from ripsvc.values import (
    Network,
    parse_networks,
    parse_nice,
    parse_seconds,
    parse_size,
    size_text,
    typed,
)

ENV_PREFIX = "RIP_"
RELOAD_MODES = ("none", "process", "module")
#: The processes that receive settings on their command line (a declaration's `to`).
ROLES = ("balancer", "worker")


class SettingsError(Exception):
    """One or more invalid settings; `problems` lists each with where it came from."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -- value parsers: from a string (command line, environment) or a TOML value ----------------
def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a non-empty string")
    return value


def _workers(value: Any) -> int:
    cpus = os.cpu_count() or 1
    named = {"auto": cpus, "half": max(1, cpus // 2), "2x": 2 * cpus, "3x": 3 * cpus}
    text = str(value).strip().removeprefix("w:")
    if text in named:
        return named[text]
    if text.isdigit() and 0 < int(text) <= 1024:
        return int(text)
    raise ValueError(f"{str(value)!r} is not a worker count (N, auto, half, 2x, 3x)")


def _listen(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(f"{value!r} is not a list of listen addresses")
    result = []
    for item in items:
        text = str(item).strip()
        if not (text.startswith(("http:", "https:", "tcp:")) or text.isdigit()
                or text == "https"):
            raise ValueError(f"{text!r} is not a listen address (http:PORT, https:PORT, PORT, "
                             "https or tcp:HOST:PORT)")
        Bind.parse(text)
        result.append(text)
    ports = [bind.port for bind in map(Bind.parse, result)]
    if len(set(ports)) != len(ports):
        raise ValueError(f"{value!r}: a port is listed twice")
    return tuple(result)


def _hosts(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"{value!r} is not a list of host names")
    return tuple(dict.fromkeys(hosts.normalize(str(item)) for item in items
                               if str(item).strip()))


def _redirect_port(value: Any) -> int:
    """`auto`: 80 (or, without systemd, the next free port from 5000); 0: no redirect."""
    if value == "auto":
        return -1
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or not 0 <= int(text) < 65536:
        raise ValueError(f"{value!r} is not a port (0..65535, 0: off) or auto")
    return int(text)


def _port_or_off(value: Any) -> int:
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or not 0 <= int(text) < 65536:
        raise ValueError(f"{value!r} is not a port (1..65535, 0: off)")
    return int(text)


def _agent_port(value: Any) -> str:
    """`PORT` (on 127.0.0.1), `HOST:PORT` or `[V6]:PORT` → "HOST:PORT"; 0 or "" → "" (off)."""
    text = str(value).strip()
    if isinstance(value, bool) or text in ("", "0"):
        return ""
    bind = Bind.parse(f"tcp:{text}" if ":" in text else f"tcp:127.0.0.1:{text}")
    if bind.host is None or not 0 < bind.port < 65536:
        raise ValueError(f"{value!r} is not a port (1..65535) or HOST:PORT (0: off)")
    return f"[{bind.host}]:{bind.port}" if ":" in bind.host else f"{bind.host}:{bind.port}"


def _path_or_empty(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a path")
    return value


_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _user(value: Any) -> str:
    if not isinstance(value, str) or not _USER.match(value):
        raise ValueError(f"{value!r} is not a user name")
    return value


def _absolute(value: Any) -> str:
    text = str(value)
    if not isinstance(value, str) or not os.path.isabs(text) or any(c in text for c in " \n\\"):
        raise ValueError(f"{value!r} is not an absolute path (without spaces)")
    return os.path.normpath(text)


def _absolute_or_empty(value: Any) -> str:
    return "" if value == "" else _absolute(value)


def _paths(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"{value!r} is not a list of paths")
    return tuple(_absolute(item.strip() if isinstance(item, str) else item) for item in items
                 if item != "")


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not str(value).isdigit():
        raise ValueError(f"{value!r} is not a whole number ≥ 0")
    return int(value)


def _nice(value: Any) -> int | None:
    return parse_nice(str(value))  # TOML's true and false are refused as "True", "False"


def _seconds(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    return parse_seconds(str(value))


def _size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return parse_size(str(value))


def _memory(value: Any) -> int:
    """A memory limit: a size, or 0 / `none` for none. Below 1 MiB is refused: no Python
    process fits, so the number was meant with a unit (`512` for `512M`)."""
    if isinstance(value, str) and value.strip().lower() in ("none", "0", ""):
        return 0
    size = _size(value)
    if 0 < size < 1 << 20:
        raise ValueError(f"{value!r} is {size} bytes, less than any Python process needs; "
                         f"a size takes a unit: did you mean '{str(value).strip()}M'?")
    return size


def _recycle(value: Any) -> RecyclePolicy:
    return RecyclePolicy.parse(str(value))


def _jitter(value: Any) -> float:
    text = str(value).strip()
    share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= share < 1:
        raise ValueError(f"{value!r} must be a share between 0 and 1 (or 0%..99%)")
    return share


def _networks(value: Any) -> tuple[Network, ...]:
    if isinstance(value, tuple) and all(isinstance(n, Network) for n in value):
        return value  # already parsed (a default)
    return parse_networks(",".join(value) if isinstance(value, list) else str(value))


#: What compression applies to unless told (compression_types): text, and the formats of text.
COMPRESSION_TYPES = ("text/*", "application/javascript", "application/json", "application/xml",
                     "application/*+json", "application/*+xml", "image/svg+xml")
_TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+-]*"
_MEDIA_TYPE = re.compile(rf"^{_TOKEN}/(?:\*|\*\+[a-z0-9.-]+|{_TOKEN})$")


def _media_types(value: Any) -> tuple[str, ...]:
    """Media types, `text/*` for every subtype, `application/*+json` for a suffix."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"{value!r} is not a list of media types")
    types = tuple(dict.fromkeys(str(item).strip().lower() for item in items
                                if str(item).strip()))
    for text in types:
        if not _MEDIA_TYPE.match(text):
            raise ValueError(f"{text!r} is not a media type (type/subtype, type/*, "
                             "type/*+suffix)")
    return types


def setting(default: Any, parse: Callable[[Any], Any], help: str, *, flag: str | None = None,
            token: str | tuple[str, ...] | None = None, kind: str = "", to: str = "",
            arg: str = "") -> Any:
    """Declare one setting (see the module docstring). `to`/`arg`: the process that receives
    it ("balancer", "worker" or "both") and its flag there (rip-server's unless said); `kind`:
    how the value is written, for the docs."""
    meta = {"parse": parse, "help": help, "flag": flag, "token": token, "kind": kind,
            "to": to, "arg": arg or flag}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    app: str = setting("", _text, "the app: a directory with app.py, file.py[:attr] or "
                       "module:attr (rip-server: the first argument that exists)",
                       kind="path")
    name: str = setting("", _text, "the app's name (default: the config file's or the app "
                        "directory's name)", flag="--name", kind="text")
    workers: int = setting("half", _workers, "how many workers: N, auto (one per CPU), half, "
                           "2x, 3x", token="w:", flag="--workers", kind="w:N|auto|half|2x|3x")
    websocket_workers: int = setting(1, _count, "WebSocket workers, each holding many WebSockets "
                                     "of an ASGI or aiohttp app (0: none; an upgrade is then "
                                     "served as plain HTTP)", flag="--websocket-workers",
                                     kind="count")
    websocket_connections: int = setting(1000, _count, "WebSockets one WebSocket worker holds "
                                         "at once", flag="--websocket-connections",
                                         kind="count", to="worker")
    websocket_max_message: int = setting(16 << 20, _size, "largest WebSocket message (a larger "
                                         "one closes the WebSocket with 1009)",
                                         flag="--websocket-max-message", kind="size",
                                         to="worker")
    websocket_ping: float = setting(20.0, _seconds, "a WebSocket silent this long is pinged, "
                                    "and closed if no answer comes as long after (0: never)",
                                    flag="--websocket-ping", kind="seconds", to="worker")
    # Loopback unless told otherwise, as gunicorn and uvicorn do: an app started without a
    # listen address is not on the network. A port given without a host (`http:8080`, as
    # nginx's `listen 8080;`) is every IPv4 interface (sockets.Bind).
    listen: tuple[str, ...] = setting(("http:127.0.0.1:8000",), _listen, "where the balancer "
                                      "listens: http:PORT is plain HTTP on every IPv4 "
                                      "interface, http:HOST:PORT on one address; HTTPS on "
                                      "https:PORT, a bare PORT, or `https` (443, else the next "
                                      "free port from 5000)",
                                      token=("http:", "https:", "tcp:"), flag="--listen",
                                      kind="http:[HOST:]PORT, https:[HOST:]PORT, PORT, "
                                      "tcp:HOST:PORT")
    recycle: RecyclePolicy = setting(RecyclePolicy(), _recycle,  # noqa: RUF009 (frozen)
                                     "recycle a worker after that "
                                     "many requests, seconds or module reloads (0: never)",
                                     token="r:", flag="--recycle",
                                     kind="r:REQUESTS,SECONDSs,RELOADSr", to="worker")
    recycle_jitter: float = setting(0.1, _jitter, "lower each worker's request and age limits "
                                    "by up to this share", flag="--recycle-jitter",
                                    kind="share or %", to="worker")
    max_rss: int = setting("none", _memory, "recycle a worker after a request that leaves "
                           "its resident memory (RSS) above this, as gunicorn's users ask of "
                           "uWSGI's reload-on-rss (none: off; not WebSocket workers)",
                           flag="--max-rss", kind="size", to="worker")
    reload: str = setting("process", _choice(*RELOAD_MODES),
                          "none, process (rolling restarts) or module (re-import changed "
                          "modules before a request)", flag="--reload",
                          kind="none|process|module", to="worker")
    restart_file: str = setting("tmp/restart.txt", _path_or_empty, "with reload = process: "
                                "touching this file (relative to the app's directory) starts a "
                                "rolling restart; \"\" turns it off", flag="--restart-file",
                                kind="path")
    watchdog_sec: float = setting(30.0, _seconds, "a worker whose event loop does not ping "
                                  "for this long is killed and replaced (0: off)",
                                  flag="--watchdog-sec", kind="seconds")
    graceful_timeout: float = setting(30.0, _seconds, "how long a request in flight may take "
                                      "to finish when stopping", flag="--graceful-timeout",
                                      kind="seconds", to="both")
    max_body: int = setting(100 << 20, _size, "largest request body (413 beyond)",
                            flag="--max-body", kind="size", to="both")
    max_queue: int = setting(1024, _count, "requests that may wait for a worker (503 beyond)",
                             flag="--max-queue", kind="count", to="balancer")
    queue_timeout_ms: int = setting(5000, _count, "longest wait for a worker, in ms (504 "
                                    "beyond)", flag="--queue-timeout-ms", kind="ms",
                                    to="balancer")
    connect_timeout: float = setting(2.0, _seconds, "time to connect to a worker",
                                     flag="--connect-timeout", kind="seconds", to="balancer")
    response_timeout: float = setting(60.0, _seconds, "a worker silent this long (before "
                                      "its response, or between two pieces of it) is hung "
                                      "(504)", flag="--response-timeout", kind="seconds",
                                      to="balancer")
    header_timeout: float = setting(10.0, _seconds, "time for a client to send its request "
                                    "headers (408)", flag="--header-timeout", kind="seconds",
                                    to="balancer")
    body_timeout: float = setting(60.0, _seconds, "longest pause while a client sends its "
                                  "body (408)", flag="--body-timeout", kind="seconds",
                                  to="balancer")
    keepalive_timeout: float = setting(75.0, _seconds, "idle keep-alive connections close "
                                       "after this", flag="--keepalive-timeout",
                                       kind="seconds", to="balancer")
    send_timeout: float = setting(60.0, _seconds, "a client that reads nothing of its "
                                  "response for this long is disconnected", flag="--send-timeout",
                                  kind="seconds", to="balancer")
    max_stream_duration: float = setting(0.0, _seconds, "the longest a streamed response may "
                                         "go on (a chunked one ends cleanly then); 0: no limit",
                                         flag="--max-stream-duration", kind="seconds",
                                         to="balancer")
    status_path: str = setting("/status", _text, "the balancer's health endpoint",
                               flag="--status-path", kind="path", to="balancer")
    server_path: str = setting("/server", _text, "the balancer's liveness endpoint",
                               flag="--server-path", kind="path", to="balancer")
    ready_path: str = setting("/ready", _text, "the balancer's readiness endpoint: 200, or "
                              "503 while the app is draining, stopping or has no worker ready",
                              flag="--ready-path", kind="path", to="balancer")
    shutdown_delay: float = setting(0.0, _seconds, "on SIGTERM (systemctl stop), fail "
                                    "readiness and keep serving this long before the graceful "
                                    "stop, for a load balancer in front to stop sending "
                                    "(Kubernetes' preStop pattern)", flag="--shutdown-delay",
                                    kind="seconds", to="balancer")
    agent_port: str = setting("0", _agent_port, "answer HAProxy's agent-check on this TCP "
                              "port (PORT on 127.0.0.1, or HOST:PORT): ready and a weight, "
                              "drain, or down (0: off)", flag="--agent-port",
                              kind="[HOST:]PORT", to="balancer")
    access_log: bool = setting(True, _bool, "one log line per request (--no-access-log turns "
                               "it off)", flag="--no-access-log", kind="bool", to="balancer")
    json_logging: bool = setting(False, _bool, "access log lines as JSON",
                                 flag="--json-logging", kind="bool", to="balancer")
    forwarded_allow_ips: tuple[Network, ...] = setting("", _networks, "proxies (IPs, CIDR) whose "
                                       "X-Forwarded-* and X-Request-Id are kept",
                                       flag="--forwarded-allow-ips", kind="CIDR list",
                                       to="balancer")
    hosts: tuple[str, ...] = setting((), _hosts, "host names served besides localhost, "
                                     "127.0.0.1 and ::1 (`*.example.com` for subdomains, `*` "
                                     "for any); other hosts get 404", flag="--hosts",
                                     kind="names", to="balancer")
    cert: str = setting("", _absolute_or_empty, "HTTPS certificate chain (PEM); without it: "
                        "mkcert if installed, else a self-signed certificate",
                        flag="--cert", kind="path")
    key: str = setting("", _absolute_or_empty, "the certificate's private key (PEM)",
                       flag="--key", kind="path")
    redirect_port: int = setting("auto", _redirect_port, "with HTTPS on: this plain-HTTP port "
                                 "answers 301 to HTTPS (auto: 80; 0: off)",
                                 flag="--redirect-port", kind="port|auto")
    hsts: bool = setting(False, _bool, "send Strict-Transport-Security on HTTPS responses",
                         flag="--hsts", kind="bool", to="balancer")
    hsts_max_age: int = setting(31536000, _count, "HSTS max-age in seconds",
                                flag="--hsts-max-age", kind="seconds", to="balancer")
    proxy_protocol: bool = setting(False, _bool, "every listener expects a PROXY protocol v1 "
                                   "or v2 header (behind HAProxy or a cloud load balancer)",
                                   flag="--proxy-protocol", kind="bool", to="balancer")
    metrics_port: int = setting(0, _port_or_off, "serve Prometheus /metrics on "
                                "127.0.0.1:PORT (0: only on the control socket)",
                                flag="--metrics-port", kind="port", to="balancer")
    static: StaticMounts = setting("", parse_static,  # noqa: RUF009 (frozen)
                                   "URL prefixes the balancer serves from "
                                   "directories itself, no worker involved: a table PREFIX = "
                                   "DIR, or PREFIX = { root = DIR, options }; options: "
                                   "fallback (a missing file goes to the app), index (a "
                                   "directory's file), cache_control, dotfiles, symlinks (that "
                                   "lead out of DIR), precompressed (FILE.br and FILE.gz, on); "
                                   "--static is repeatable", flag="--static",
                                   kind=STATIC_KIND, to="balancer")
    compression: bool = setting(False, _bool, "gzip the app's responses of compression_types "
                                "for clients that accept it (brotli too when the brotli module "
                                "is installed); see the BREACH note in docs/operations.md",
                                flag="--compression", kind="bool", to="balancer")
    compression_types: tuple[str, ...] = setting(COMPRESSION_TYPES, _media_types, "the media "
                                                 "types compressed (type/*, type/*+suffix)",
                                                 flag="--compression-types", kind="types",
                                                 to="balancer")
    compression_min_size: int = setting("1K", _size, "responses shorter than this are sent "
                                        "as they are (a streamed one, of unknown length, is "
                                        "compressed)", flag="--compression-min-size",
                                        kind="size", to="balancer")
    balancer_nice: int | None = setting("auto", _nice, "the balancer's scheduling priority, "
                                        "-20..19 (auto: -5, above the workers' 0, or 0 when "
                                        "its access log goes to journald; below 0 needs root "
                                        "or CAP_SYS_NICE, or systemd's Nice=)",
                                        flag="--balancer-nice", kind="nice|auto",
                                        to="balancer", arg="--nice")
    # Under systemd: settings of the units rather than of the processes.
    user: str = setting("rip", _user, "under systemd: the unprivileged user the workers (the "
                        "app's code) run as; the balancer is always user rip",
                        flag="--user", kind="user")
    read_write_paths: tuple[str, ...] = setting((), _paths, "under systemd: paths the workers "
                                                "may write (the rest of the system is "
                                                "read-only to them)", flag="--read-write-paths",
                                                kind="paths")
    environment_file: str = setting("", _absolute_or_empty, "under systemd: a file of VAR=value "
                                    "lines for the workers (systemd's EnvironmentFile=)",
                                    flag="--environment-file", kind="path")
    memory_high: int = setting("none", _memory, "under systemd: each worker unit's MemoryHigh= "
                               "(above it the kernel reclaims and slows the worker down; "
                               "none: no limit; rip-server in the foreground says it ignores "
                               "it)", flag="--memory-high", kind="size")
    memory_max: int = setting("none", _memory, "under systemd: each worker unit's MemoryMax= "
                              "(a worker above it is killed by the kernel and restarted by "
                              "systemd; none: no limit; rip-server in the foreground says it "
                              "ignores it)", flag="--memory-max", kind="size")

    # -- what the processes get ----------------------------------------------------------------
    def args_for(self, role: str) -> list[str]:
        """The command-line arguments of the balancer or a worker (`role`) for these settings:
        each setting it receives whose value is not the default (which the process has from
        DEFAULTS too); its parser comes from add_arguments."""
        args: list[str] = []
        for f in role_fields(role):
            value = getattr(self, f.name)
            if value == getattr(DEFAULTS, f.name):
                continue
            if isinstance(value, bool):
                args.append(f.metadata["arg"])  # a flag says what differs from the default
            else:
                args += [f.metadata["arg"], _argument(value)]
        return args

    def binds(self) -> list[Bind]:
        """The listening addresses, with the redirect port when HTTPS is on."""
        binds = [Bind.parse(text) for text in self.listen]
        if any(b.tls for b in binds) and self.redirect_port != 0:
            auto = self.redirect_port < 0
            port = 80 if auto else self.redirect_port
            if all(b.port != port for b in binds):
                host = next(b.host for b in binds if b.tls)  # the interface HTTPS is on
                binds.append(Bind(host=host, port=port, fallback=auto, redirect=True))
        return binds

    @property
    def tls(self) -> bool:
        return any(Bind.parse(text).tls for text in self.listen)


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
FLAGS = {f.metadata["flag"]: f for f in FIELDS.values() if f.metadata["flag"]}


def _defaults() -> Settings:
    """Every setting at its declared default, parsed (the app and its name have none)."""
    return Settings(**{name: f.metadata["parse"](f.default) for name, f in FIELDS.items()
                       if name not in ("app", "name")})


#: The default of every setting, parsed (`workers`: for this machine's CPUs): rip-server's,
#: and the balancer's and the workers' for what their command line does not say.
DEFAULTS: Final = _defaults()


# -- the processes' own command lines -----------------------------------------------------------
def role_fields(role: str) -> list[dataclasses.Field[Any]]:
    """The settings that the balancer or a worker (`role`) receives on its command line."""
    if role not in ROLES:
        raise ValueError(f"{role!r} is not one of {', '.join(ROLES)}")
    return [f for f in FIELDS.values() if f.metadata["to"] in (role, "both")]


def _argument(value: Any) -> str:
    """A setting's value as its flag takes it (and its parser reads it back)."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """Declare, in the balancer's or a worker's parser (`role`), the settings it receives:
    the flag, parser and help of each declaration and its default from DEFAULTS, so that a
    process reads back what args_for wrote and has no default of its own."""
    group = parser.add_argument_group("settings (passed on by rip-server or the manager; "
                                      "see docs/settings.md)")
    for f in role_fields(role):
        meta = f.metadata
        default = getattr(DEFAULTS, f.name)
        if isinstance(default, bool):
            group.add_argument(meta["arg"], dest=f.name, default=default, help=meta["help"],
                               action="store_false" if default else "store_true")
        else:
            group.add_argument(meta["arg"], dest=f.name, default=default,
                               type=typed(meta["parse"], meta["kind"]), metavar=meta["kind"],
                               help=f"{meta['help']} (default: {shown_default(f) or 'none'})")


def from_arguments(args: argparse.Namespace, role: str) -> Settings:
    """The settings a process was given (parsed by the options of add_arguments), the others
    at their defaults."""
    return dataclasses.replace(DEFAULTS, **{f.name: getattr(args, f.name)
                                            for f in role_fields(role)})


def _tokens(f: dataclasses.Field[Any]) -> tuple[str, ...]:
    token = f.metadata["token"]
    return (token,) if isinstance(token, str) else tuple(token or ())


TOKENS = {token: f for f in FIELDS.values() for token in _tokens(f)}


def _store(values: dict[str, Any], problems: list[str], where: str, name: str,
           raw: Any) -> None:
    f = FIELDS[name]
    if f.metadata["flag"] == "--no-access-log" and where == "command line":
        raw = False  # the flag negates
    try:
        value = f.metadata["parse"](raw)
    except ValueError as exc:
        problems.append(f"{where}: {name}: {exc}")
        return
    if name == "listen" and where == "command line" and "listen" in values:
        value = values["listen"] + value  # several http: tokens add up
    if name == "static" and where == "command line" and "static" in values:
        try:
            value = values["static"].merged(value)  # several --static flags add up
        except ValueError as exc:
            problems.append(f"{where}: {name}: {exc}")
            return
    values[name] = value


def from_file(path: Path, values: dict[str, Any], problems: list[str]) -> None:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
        return
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML: {exc}")
        return
    for key, raw in data.items():
        if key not in FIELDS:
            problems.append(f"{path}: {key}: unknown setting (known: {', '.join(FIELDS)})")
            continue
        _store(values, problems, str(path), key, raw)
    if "name" not in data and "name" not in values:
        values["name"] = path.stem


def from_env(env: Mapping[str, str], values: dict[str, Any], problems: list[str]) -> None:
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in FIELDS:
            problems.append(f"environment {key}: unknown setting")
            continue
        _store(values, problems, f"environment {key}", name, raw)


#: What gunicorn and uvicorn call options that rip-server spells otherwise: a newcomer's first
#: guesses, answered with ours. All but those of FOREIGN_SWITCHES take a value.
FOREIGN_OPTIONS = {
    "-w": "--workers N or w:N",
    "-b": "http:PORT (every interface) or http:HOST:PORT",
    "--bind": "http:PORT (every interface) or http:HOST:PORT",
    "--host": "http:HOST:PORT",
    "--port": "http:PORT",
    "-t": "--response-timeout SECONDS",
    "--timeout": "--response-timeout SECONDS",
    "--max-requests": "r:REQUESTS,0s,0r or --recycle r:REQUESTS,0s,0r",
    "--limit-max-requests": "r:REQUESTS,0s,0r or --recycle r:REQUESTS,0s,0r",
    "--max-requests-jitter": "--recycle-jitter SHARE",
    "--keep-alive": "--keepalive-timeout SECONDS",
    "--timeout-keep-alive": "--keepalive-timeout SECONDS",
    "--certfile": "--cert PATH",
    "--ssl-certfile": "--cert PATH",
    "--keyfile": "--key PATH",
    "--ssl-keyfile": "--key PATH",
    "-k": "nothing: ASGI, WSGI and aiohttp apps are told apart by themselves",
    "--worker-class": "nothing: ASGI, WSGI and aiohttp apps are told apart by themselves",
    "--interface": "nothing: ASGI, WSGI and aiohttp apps are told apart by themselves",
    "--factory": "nothing: name the app itself (app = create_app() in a module of yours)",
}
FOREIGN_SWITCHES = {"--factory"}

#: The words before a token's ':' (or '=') that a typo or a habit may stand for.
_TOKEN_WORDS = {"w": "w", "workers": "w", "r": "r", "recycle": "r", "http": "http",
                "https": "https", "tcp": "tcp", "port": "http", "listen": "http",
                "bind": "http"}


def token_suggestion(token: str) -> str | None:
    """What a token that is not understood was probably meant to be: `htp:8000` →
    `http:8000`, `workers=4` → `w:4`, `0.0.0.0:8000` → `http:0.0.0.0:8000`, `htps` → `https`."""
    head, sep, rest = token.partition(":")
    if not sep:
        head, sep, rest = token.partition("=")
    if not sep:
        glued = re.fullmatch(r"(w|r|http|https|tcp)(\d.*)", token)  # w4, http8000
        if glued:
            return f"{glued[1]}:{glued[2]}"
        return "https" if difflib.get_close_matches(token, ["https"], cutoff=0.75) else None
    if not rest:
        return None
    word = _TOKEN_WORDS.get(head.lower())
    if word is None:
        close = difflib.get_close_matches(head.lower(), ["http", "https", "tcp"], n=1,
                                          cutoff=0.6)
        word = close[0] if close else None
    if word is not None:
        return f"{word}:{rest}"
    if rest.isdigit() and sep == ":":
        return f"http:{token}"  # HOST:PORT, as gunicorn's --bind takes it
    return None


def _is_attribute(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _may_be_app(token: str, app_exists: Callable[[str], bool]) -> bool:
    """A token that is neither a setting nor an option names the app, unless it is a
    misspelt setting (`htp:8000`): a path, `module:attr`, or a word that may be a path."""
    if app_exists(token):
        return True
    if ":" in token:
        return _is_attribute(token.rpartition(":")[2].removesuffix("()"))  # () a factory
    return token_suggestion(token) is None


def from_command_line(args: Iterable[str], values: dict[str, Any], problems: list[str],
                      *, app_exists: Callable[[str], bool] = os.path.exists) -> Path | None:
    """rip-server's position-independent arguments; returns the --config file, if any."""
    where = "command line"
    config = None
    queue = list(args)
    while queue:
        token = queue.pop(0)
        if token.startswith("-") and not token.lstrip("-").isdigit():
            flag, eq, raw = token.partition("=")
            if flag == "--config":
                config = Path(raw or (queue.pop(0) if queue else ""))
                continue
            f = FLAGS.get(flag)
            if f is None:
                problems.append(_unknown_option(flag, where))
                if flag in FOREIGN_OPTIONS and flag not in FOREIGN_SWITCHES and not eq and \
                        queue and not queue[0].startswith("-"):
                    queue.pop(0)  # its value
                continue
            if f.metadata["kind"] == "bool":
                _store(values, problems, where, f.name, raw or "true")
            elif not eq and (not queue or queue[0].startswith("--")):
                problems.append(f"{where}: {flag}: needs a value ({f.metadata['kind']})")
            else:
                _store(values, problems, where, f.name, raw if eq else queue.pop(0))
            continue
        prefix = next((t for t in TOKENS if token.startswith(t)), None)
        if prefix is not None:
            _store(values, problems, where, TOKENS[prefix].name, token)
        elif token.isdigit() or token == "https":
            _store(values, problems, where, "listen", token)
        elif "app" not in values and _may_be_app(token, app_exists):
            _store(values, problems, where, "app", token)
        else:
            suggestion = token_suggestion(token)
            if suggestion is not None:
                problems.append(f"{where}: {token!r}: not understood; did you mean "
                                f"{suggestion!r}?")
            elif "app" in values:
                problems.append(f"{where}: {token!r}: not understood (the app is "
                                f"{values['app']!r}; settings look like w:N, http:PORT, r:…, "
                                "--option VALUE)")
            else:
                problems.append(f"{where}: {token!r}: not an app, a setting (w:N, http:PORT, "
                                "r:…) or an option")
    return config


def _unknown_option(flag: str, where: str) -> str:
    if flag in FOREIGN_OPTIONS:
        return f"{where}: {flag}: not a rip-server option; here: {FOREIGN_OPTIONS[flag]}"
    close = difflib.get_close_matches(flag, [*FLAGS, "--config"], n=1, cutoff=0.75)
    if close:
        return f"{where}: {flag}: unknown option; did you mean {close[0]}?"
    return f"{where}: {flag}: unknown option (rip-server --help lists every option)"


MISSING_APP = ("app: not given: a module:attr, a path/to/file.py[:attr] or a directory with "
               "app.py")


def app_hint(text: str, cwd: Path) -> str:
    """What a newcomer probably meant by an app string that names nothing: a file or
    directory with a close name, or the module:attr of the project in a directory."""
    location, sep, attr = text.rpartition(":") if ":" in text else (text, "", "")
    if attr.endswith("()"):
        return (f"; rip-server takes the app, not a factory: add `app = {attr}` to a module "
                f"of yours and name that module's app")
    location = location.rstrip("/") or location
    path = cwd / location
    if path.is_dir():
        if (path / "main.py").is_file():
            return f"; for main.py: {location}/main.py:app"
        projects = sorted(p.parent.name for p in path.glob("*/wsgi.py"))
        if (path / "manage.py").is_file() and projects:
            form = f"{projects[0]}.wsgi:application"
            return (f"; a Django project is served from its directory as {form}"
                    if path.resolve() == cwd.resolve() else
                    f"; a Django project: cd {location} && rip-server {form}")
        return ""
    parent = path.parent
    if path.exists() or not parent.is_dir():
        return ""
    names = sorted(p.name for p in parent.iterdir()
                   if p.suffix == ".py" or (p.is_dir() and not p.name.startswith(".")))
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    if not close:
        return ""
    meant = location[:len(location) - len(path.name)] + close[0] + sep + attr
    return f"; did you mean {meant!r}?"


def resolve(args: Iterable[str] = (), env: Mapping[str, str] | None = None,
            file: Path | None = None) -> Settings:
    """Command line > environment > file > default; raise SettingsError with every problem."""
    problems: list[str] = []
    cli: dict[str, Any] = {}
    config = from_command_line(args, cli, problems)
    file = config or file
    values: dict[str, Any] = {}
    if file is not None:
        from_file(file, values, problems)
    from_env(os.environ if env is None else env, values, problems)
    values.update(cli)
    # The app's problems say where it came from, like those of every other setting.
    # (The command line's own problems need no "command line:", as every other setting's.)
    where = ("" if "app" in cli else
             "environment RIP_APP" if "RIP_APP" in (os.environ if env is None else env) else
             str(file) if file is not None else "")
    app = f"{where}: app" if where else "app"
    if not values.get("app"):
        problems.append(MISSING_APP if app == "app" else f"{where}: {MISSING_APP}")
    else:
        cwd = file.parent if file else Path.cwd()
        try:
            spec = parse_spec(values["app"], cwd=cwd)
            values.setdefault("name", spec.directory.name if spec.module == "app"
                              else spec.module)
        except AppLoadError as exc:
            problems.append(f"{app}: {exc}{app_hint(values['app'], cwd)}")
    for name in FIELDS:
        if name not in values and name not in ("app", "name"):  # required; from the app
            values[name] = getattr(DEFAULTS, name)
    if bool(values.get("cert")) != bool(values.get("key")):
        problems.append("cert, key: give both the certificate and its key, or neither")
    problems += _memory_problems(values)
    if problems:
        raise SettingsError(problems)
    return Settings(**values)


def _memory_problems(values: Mapping[str, Any]) -> list[str]:
    """max_rss is the gentle limit, the units' limits the backstop: each below the next."""
    why = {"memory_high": "the kernel would slow a worker down before it recycles",
           "memory_max": "the kernel would kill a worker before it recycles"}
    limits = [(name, values.get(name, 0)) for name in ("max_rss", "memory_high", "memory_max")]
    limits = [(name, limit) for name, limit in limits if isinstance(limit, int) and limit]
    problems = []
    for (lower, low), (upper, high) in itertools.pairwise(limits):
        if low >= high:
            because = why[upper] if lower == "max_rss" else "MemoryHigh= at or above " \
                "MemoryMax= does nothing"
            problems.append(f"{lower}, {upper}: {lower} ({size_text(low)}) must be below "
                            f"{upper} ({size_text(high)}): {because}")
    return problems


def shown_default(f: dataclasses.Field[Any]) -> str:
    """A setting's default as the docs write it (as declared: `half`, `auto`)."""
    default = f.default
    if isinstance(default, tuple):
        return ", ".join(default)
    return str(default).lower() if isinstance(default, bool) else str(default)


def markdown_table() -> str:
    """The settings table of docs/settings.md, generated from the declarations."""
    rows = ["| TOML key / `RIP_*` | rip-server | default | meaning |", "| --- | --- | --- | --- |"]
    for f in FIELDS.values():
        meta = f.metadata
        forms = [f"`{meta['kind']}`"] if meta["token"] else []
        forms += [f"`{meta['flag']}`"] if meta["flag"] else []
        cli = " or ".join(forms) or "first argument"
        shown = shown_default(f)
        cells = [f"`{f.name}` / `RIP_{f.name.upper()}`", cli, f"`{shown}`" if shown else "—",
                 meta["help"]]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m ripsvc.settings: the table of docs/settings.md
    print(markdown_table())
