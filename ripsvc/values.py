"""Parsers for the value types that settings and command lines share."""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_SIZE = re.compile(r"^(\d+)\s*([KMG]?)(?:i?B)?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes from `1048576`, `512K`, `100M`, `1G` (binary units)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M or G)")
    return int(match[1]) * _SIZE_UNITS[match[2].upper()]


def size_text(size: int) -> str:
    """A size as parse_size reads it, in the largest unit that writes it whole: `512M`."""
    for unit in "GMK":
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)


def parse_nice(text: str) -> int | None:
    """A scheduling priority as nice(1) and systemd's Nice= take it, -20 (first) to 19, or
    `auto` (None): the process chooses."""
    value = text.strip()
    if value == "auto":
        return None
    if not value.lstrip("-").isdigit() or not -20 <= int(value) <= 19:
        raise ValueError(f"{text!r} is not a nice value (a whole number from -20 to 19, "
                         "or auto)")
    return int(value)


def parse_seconds(text: str) -> float:
    """Seconds from `30`, `2.5`, `30s` or `500ms`."""
    value = text.strip().lower()
    scale = 1.0
    if value.endswith("ms"):
        value, scale = value[:-2], 0.001
    elif value.endswith("s"):
        value = value[:-1]
    try:
        seconds = float(value) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (seconds, or e.g. 30s, 500ms)") from None
    if seconds < 0:
        raise ValueError(f"{text!r} is negative")
    return seconds


def parse_networks(text: str) -> tuple[Network, ...]:
    """`127.0.0.1,10.0.0.0/8` → networks; empty means none."""
    networks = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def typed(parse: Callable[[str], T], what: str) -> Callable[[str], T]:
    """An argparse `type` from a parser that raises ValueError, keeping its message."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what
    return convert
