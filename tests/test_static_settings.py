"""The settings of static mounts and compression: every form they are written in, what is
refused, and their way to the balancer (issue 22). No process: parsing and command lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from ripsvc import launch, paths, units
from ripsvc import settings as st
from ripsvc.balancer.__main__ import build_parser as balancer_parser
from ripsvc.balancer.client import CLOSED
from ripsvc.balancer.compress import Compression
from ripsvc.balancer.options import BalancerOptions
from ripsvc.balancer.static import CLOSED_CLIENT, accepted, byte_range, content_type
from ripsvc.mounts import StaticMount, StaticMounts, parse_static
from tests.support.procs import EXAMPLES

HELLO = str(EXAMPLES / "hello")


def test_the_forms_of_a_mount() -> None:
    toml = parse_static({"/static/": "/srv/shop/static",
                         "/media": {"root": "/srv/shop/media/", "fallback": True,
                                    "index": "index.html", "cache_control": "no-cache",
                                    "dotfiles": True, "symlinks": True,
                                    "precompressed": False}})
    assert toml.mounts == (
        StaticMount("/static/", "/srv/shop/static"),
        StaticMount("/media/", "/srv/shop/media", fallback=True, index="index.html",
                    cache_control="no-cache", dotfiles=True, symlinks=True,
                    precompressed=False))
    text = parse_static("/media/=/srv/shop/media;fallback;index=index.html;"
                        "cache-control=no-cache;dotfiles;symlinks;no-precompressed")
    assert text.mounts == toml.mounts[1:]
    assert parse_static(str(toml)) == toml  # the JSON the balancer is given
    assert parse_static(["/a/=/x", "/b/=/y"]) == parse_static({"/a/": "/x", "/b/": "/y"})
    assert parse_static("") == StaticMounts() and not StaticMounts() and str(StaticMounts()) == ""
    longest_first = parse_static({"/": "/srv/public", "/static/img/": "/srv/img",
                                  "/static/": "/srv/static"})
    assert [m.prefix for m in longest_first.mounts] == ["/static/img/", "/static/", "/"]
    with_commas = parse_static("/a/=/x;cache-control=public, max-age=31536000, immutable")
    assert with_commas.mounts[0].cache_control == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(("value", "says"), [
    ("static/=/x", "starts with /"), ("/s/=relative", "absolute directory"),
    ("/s/=/x;bogus", "unknown option"), ("/s/../=/x", "plain path"), ("/s%2f/=/x", "plain path"),
    ("/s/", "not a static mount"), ({"/s/": {"fallback": True}}, "no root"),
    ({"/s/": {"root": "/x", "fallback": "yes"}}, "true or false"),
    ({"/s/": {"root": "/x", "index": "a/b.html"}}, "not a file name"),
    ({"/s/": {"root": "/x", "colour": "red"}}, "unknown option colour"),
    ({"/s/": 3}, "a directory or a table"), (7, "not a table"), ("{not json", "not valid JSON"),
    ({"/s/": "/x", "/s": "/y"}, "mounted twice"),
])
def test_what_is_refused(value: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_static(value)


def test_rip_server_flags_add_up_and_reach_the_balancer() -> None:
    resolved = st.resolve([HELLO, "--static", "/static/=/srv/static", "--static",
                           "/assets/=/srv/assets;cache-control=public, max-age=60, immutable",
                           "--compression", "--compression-types", "text/html,text/css",
                           "--compression-min-size", "2K"], env={})
    assert [m.prefix for m in resolved.static.mounts] == ["/assets/", "/static/"]
    argv = launch.balancer_args(resolved, resolved.binds(), paths.system_app_dir("hello"),
                                paths.system_state_dir("hello"))
    options = BalancerOptions.from_settings(st.from_arguments(balancer_parser().parse_args(argv),
                                                              "balancer"))
    assert options.static == resolved.static
    assert (options.compression, options.compression_types, options.compression_min_size) == \
        (True, ("text/html", "text/css"), 2048)
    # Under systemd the same argument is one word of ExecStart (quoted, % doubled).
    line = units.command_line(argv)
    assert '"{\\"/assets/\\":{\\"root\\":\\"/srv/assets\\",' in line
    with pytest.raises(st.SettingsError, match="mounted twice"):
        st.resolve([HELLO, "--static", "/s/=/a", "--static", "/s/=/b"], env={})


def test_the_app_file_takes_tables(tmp_path: Path) -> None:
    config = tmp_path / "shop.toml"
    config.write_text(f'app = "{HELLO}"\ncompression = true\n'
                      '[static."/assets/"]\nroot = "/srv/assets"\n'
                      'cache_control = "public, max-age=31536000, immutable"\n'
                      '[static."/media/"]\nroot = "/srv/media"\nfallback = true\n')
    resolved = st.resolve([], env={}, file=config)
    assert resolved.compression
    assert resolved.static.mounts[1] == StaticMount("/media/", "/srv/media", fallback=True)
    config.write_text(f'app = "{HELLO}"\nstatic = {{ "/s/" = "relative" }}\n')
    with pytest.raises(st.SettingsError, match=r"shop.toml: static: 'relative' is not an abs"):
        st.resolve([], env={}, file=config)


def test_media_types_are_checked() -> None:
    with pytest.raises(st.SettingsError, match="not a media type"):
        st.resolve([HELLO, "--compression-types", "text/html,html"], env={})
    with pytest.raises(st.SettingsError, match="not a media type"):
        st.resolve([HELLO, "--compression-types", "*/*"], env={})


def test_accept_encoding_ranges_and_types() -> None:
    assert accepted(b"gzip, deflate, br") == 3
    assert accepted(b"gzip;q=0, br") == 2 and accepted(b"br;q=0.0, *") == 1
    assert accepted(b"*;q=0") == 0 and accepted(b"identity") == 0
    assert accepted(b"GZIP;q=0.5") == 1 and accepted(b"x-gzip") == 1
    assert byte_range(b"bytes=0-9", 100) == (0, 10)
    assert byte_range(b"bytes=-10", 100) == (90, 100)
    assert byte_range(b"bytes=-200", 100) == (0, 100)
    assert byte_range(b"bytes=100-", 100) == (0, 0)  # unsatisfiable
    assert byte_range(b"bytes=1-2,4-5", 100) is None and byte_range(b"bytes=x-", 100) is None
    assert content_type(b"/a/b.JS") == b"text/javascript; charset=utf-8"
    assert content_type(b"/a.b/c") == b"application/octet-stream"
    assert content_type(b"/x.woff2") == b"font/woff2"
    policy = Compression(("text/*", "application/*+json", "image/svg+xml"), 10, False)
    for kind, yes in ((b"text/html; charset=utf-8", True), (b"application/ld+json", True),
                      (b"Image/SVG+xml", True), (b"application/json", False),
                      (b"image/png", False)):
        assert policy.compressible(kind) == yes, kind


def test_the_static_module_knows_the_client_s_closed_state() -> None:
    assert CLOSED_CLIENT == CLOSED  # static.py cannot import client.py (an import circle)
