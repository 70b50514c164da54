"""The host registry: which Host names an app answers, and the file that keeps them.

Names are compared in one canonical form: lower case, no port, no trailing dot, IDNA
(punycode) for international names, IPv6 without brackets. `*.example.com` matches every name
under example.com (not example.com itself); a lone `*` matches every host.

The registry is the built-in names (localhost and the loopback addresses), the configured ones
(`hosts` in the app's settings) and the ones added at run time with `ripctl hosts APP add`;
only the last are kept in the state file, written atomically.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from pathlib import Path

import idna

from ripsvc.files import write_atomic

BUILT_IN = ("localhost", "127.0.0.1", "::1")
FILE_NAME = "hosts.json"
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
#: Host headers seen, with the answer: a bounded cache keeps the per-request cost a lookup.
CACHE_SIZE = 1024


class HostFileError(Exception):
    """The registry file cannot be read as a list of hosts; it is never silently emptied."""


def normalize(text: str) -> str:
    """The canonical form of a host name, IP address or wildcard; ValueError if it is none."""
    host = text.strip().lower()
    if host == "*":
        return host
    if host.startswith("["):  # [::1] or [::1]:8080
        end = host.find("]")
        if end < 0 or (host[end + 1:] and not re.fullmatch(r":\d{1,5}", host[end + 1:])):
            raise ValueError(f"{text!r} is not a host name")
        host = host[1:end]
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
        if not port.isdigit():
            raise ValueError(f"{text!r} is not a host name")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    host = host.removesuffix(".")
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if not host.isascii():
        try:  # IDNA 2008 with UTS #46 mapping: what browsers and curl send
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise ValueError(f"{text!r} is not a valid international host name") from None
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r} is not a host name")
    return f"*.{host}" if wildcard else host


class Registry:
    """Answers "is this Host header ours?" for the balancer, once per request."""

    def __init__(self, configured: Iterable[str] = (), added: Iterable[str] = ()) -> None:
        self.configured = tuple(dict.fromkeys([*BUILT_IN, *map(normalize, configured)]))
        self.added: tuple[str, ...] = ()
        self._exact: frozenset[str] = frozenset()
        self._suffixes: tuple[str, ...] = ()
        self._any = False
        self._cache: dict[bytes, bool] = {}
        self.generation = 0  # bumped by every change: what a connection checked is stale
        self.set_added(added)

    def names(self) -> list[str]:
        return list(dict.fromkeys([*self.configured, *self.added]))

    def set_added(self, added: Iterable[str]) -> None:
        self.added = tuple(n for n in dict.fromkeys(map(normalize, added))
                           if n not in self.configured)
        names = self.names()
        self._exact = frozenset(n for n in names if not n.startswith("*"))
        self._suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        self._any = "*" in names
        self._cache.clear()
        self.generation += 1

    def allows(self, host: bytes) -> bool:
        """Is a request with this Host header (port and case ignored) ours?"""
        known = self._cache.get(host)
        if known is not None:
            return known
        if self._any:
            answer = True
        else:
            try:
                name = normalize(host.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                name = ""
            answer = name in self._exact or name.endswith(self._suffixes)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()  # bounded: a flood of made-up names costs a re-check
        self._cache[host] = answer
        return answer


# -- the state file ----------------------------------------------------------------------------
def load(path: Path) -> list[str]:
    """The hosts added at run time; none if the file does not exist yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise HostFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(text)
        hosts = data["hosts"]
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise ValueError("'hosts' is not a list of names")
        return [normalize(h) for h in hosts]
    except (ValueError, KeyError, TypeError) as exc:
        raise HostFileError(f"{path}: not a host registry ({exc}); fix or remove the file "
                            "(it is never emptied automatically)") from None


def save(path: Path, hosts: Iterable[str]) -> None:
    """Written atomically; readable by all (the balancer, user rip, reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"hosts": list(hosts)}, indent=1) + "\n"
    write_atomic(path, text.encode(), 0o644)
