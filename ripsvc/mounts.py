"""Static mounts as settings: a URL prefix served from a directory by the balancer.

A mount is written in the app file as a TOML table, the prefix mapping to the directory or
to a table of its options:

    static = { "/static/" = "/srv/shop/static", "/media/" = { root = "/srv/shop/media",
               fallback = true, cache_control = "public, max-age=3600" } }

and on rip-server's command line as `--static PREFIX=DIR[;OPTION…]` (repeatable), for
example `--static "/assets/=/srv/shop/assets;cache-control=public, max-age=31536000,
immutable"`. `RIP_STATIC` takes either form, or the JSON of the table. The balancer gets the
mounts as that JSON (`str(mounts)`), one word of its command line.

Plain values only: the balancer resolves the directories when it starts (balancer/static.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from typing import Any

#: The options of a mount, with the type of their value (as TOML writes it).
OPTIONS = {"fallback": bool, "index": str, "cache_control": str, "dotfiles": bool,
           "symlinks": bool, "precompressed": bool}
#: What each option means (docs/operations.md and the settings' help say the same).
KIND = "PREFIX=DIR[;fallback][;index=FILE][;cache-control=VALUE][;dotfiles][;symlinks]" \
       "[;no-precompressed]"


@dataclass(frozen=True)
class StaticMount:
    """URL paths under `prefix` are files under `root`."""

    prefix: str  # starts and ends with "/"
    root: str  # an absolute directory
    #: A missing file (or a path that cannot be one: a dotfile, an encoded slash) goes to the
    #: app instead of 404, as nginx's `try_files $uri @app`; so do methods other than GET/HEAD.
    fallback: bool = False
    index: str = ""  # served for a directory's URL ending in "/" (none: no directory is served)
    cache_control: str = ""  # the Cache-Control of its files (none by default, as nginx)
    dotfiles: bool = False  # serve names starting with "." (default: 404, never looked up)
    symlinks: bool = False  # follow symbolic links that lead out of `root` (default: 403)
    precompressed: bool = True  # FILE.br / FILE.gz for clients that accept them

    def as_json(self) -> dict[str, Any]:
        """Its TOML/JSON table: the root and the options that differ from their default."""
        table: dict[str, Any] = {"root": self.root}
        for f in fields(self):
            if f.name in OPTIONS and getattr(self, f.name) != f.default:
                table[f.name] = getattr(self, f.name)
        return table


@dataclass(frozen=True)
class StaticMounts:
    """Every mount of an app, longest prefix first (the one a path is matched against first).
    `str()` is the JSON that `parse_static` reads back: what the balancer is given."""

    mounts: tuple[StaticMount, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.mounts)

    def __str__(self) -> str:
        if not self.mounts:
            return ""
        return json.dumps({m.prefix: m.as_json() for m in self.mounts}, separators=(",", ":"))

    def merged(self, other: StaticMounts) -> StaticMounts:
        """These mounts and `other`'s (several --static flags add up); a prefix given twice
        is an error."""
        return _ordered([*self.mounts, *other.mounts])


def _prefix(text: Any) -> str:
    if not isinstance(text, str) or not text.startswith("/"):
        raise ValueError(f"{text!r} is not a URL prefix (it starts with /)")
    if any(c in text for c in "?#%\\\0 \t\r\n") or any(s in (".", "..")
                                                       for s in text.split("/")):
        raise ValueError(f"{text!r}: a URL prefix is a plain path (no ?, #, %, \\, spaces, "
                         ". or .. segments)")
    return text if text.endswith("/") else text + "/"


def _root(text: Any) -> str:
    if not isinstance(text, str) or not os.path.isabs(text) or "\0" in text:
        raise ValueError(f"{text!r} is not an absolute directory")
    return os.path.normpath(text)


def _index(text: Any) -> str:
    if not isinstance(text, str) or "/" in text or text in (".", "..") or "\0" in text:
        raise ValueError(f"index {text!r} is not a file name")
    return text


def _table(prefix: Any, value: Any) -> StaticMount:
    """One mount from TOML/JSON: `"/p/" = "/dir"` or `"/p/" = { root = "/dir", … }`."""
    if isinstance(value, str):
        return StaticMount(_prefix(prefix), _root(value))
    if not isinstance(value, dict):
        raise ValueError(f"static {prefix!r}: a directory or a table with root and options")
    unknown = set(value) - {"root", *OPTIONS}
    if unknown:
        raise ValueError(f"static {prefix!r}: unknown option {', '.join(sorted(unknown))} "
                         f"(known: root, {', '.join(OPTIONS)})")
    if "root" not in value:
        raise ValueError(f"static {prefix!r}: no root (the directory to serve)")
    mount = StaticMount(_prefix(prefix), _root(value["root"]))
    options: dict[str, Any] = {}
    for name, kind in OPTIONS.items():
        if name in value:
            if not isinstance(value[name], kind):
                raise ValueError(f"static {prefix!r}: {name} must be "
                                 f"{'true or false' if kind is bool else 'a string'}")
            options[name] = value[name]
    if "index" in options:
        options["index"] = _index(options["index"]) if options["index"] else ""
    if any(c in options.get("cache_control", "") for c in "\r\n\0"):
        raise ValueError(f"static {prefix!r}: cache_control holds a line break")
    return replace(mount, **options)


_SWITCHES = {"fallback": ("fallback", True), "dotfiles": ("dotfiles", True),
             "symlinks": ("symlinks", True), "precompressed": ("precompressed", True),
             "no-precompressed": ("precompressed", False)}


def _text(text: str) -> StaticMount:
    """One mount from `PREFIX=DIR[;OPTION…]` (KIND)."""
    first, *rest = text.split(";")
    prefix, sep, root = first.partition("=")
    if not sep:
        raise ValueError(f"{text!r} is not a static mount ({KIND})")
    table: dict[str, Any] = {"root": root.strip()}
    for option in rest:
        name, eq, value = option.strip().partition("=")
        name = name.strip().lower()
        if not name:
            continue
        if not eq and name in _SWITCHES:
            key, flag = _SWITCHES[name]
            table[key] = flag
        elif eq and name.replace("-", "_") in ("index", "cache_control"):
            table[name.replace("-", "_")] = value.strip()
        else:
            raise ValueError(f"{text!r}: unknown option {option.strip()!r} ({KIND})")
    return _table(prefix.strip(), table)


def _ordered(mounts: list[StaticMount]) -> StaticMounts:
    prefixes = [m.prefix for m in mounts]
    twice = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if twice:
        raise ValueError(f"static: prefix {', '.join(twice)} is mounted twice")
    return StaticMounts(tuple(sorted(mounts, key=lambda m: (-len(m.prefix), m.prefix))))


def parse_static(value: Any) -> StaticMounts:
    """Static mounts from a TOML table, its JSON, or `PREFIX=DIR[;OPTION…]` text."""
    if isinstance(value, StaticMounts):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return StaticMounts()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"static: not valid JSON: {exc}") from None
        else:
            return _ordered([_text(text)])
    if isinstance(value, list):
        return _ordered([_text(item) if isinstance(item, str) else _invalid(item)
                         for item in value])
    if not isinstance(value, dict):
        raise ValueError(f"{value!r} is not a table of static mounts (PREFIX = DIR)")
    return _ordered([_table(prefix, item) for prefix, item in value.items()])


def _invalid(item: Any) -> StaticMount:
    raise ValueError(f"{item!r} is not a static mount ({KIND})")
