"""`ripctl install`: the app file it writes reads back as the same settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ripsvc.install import InstallError, install
from ripsvc.settings import SettingsError, resolve

EXAMPLE = Path(__file__).parent.parent / "examples" / "hello"


def test_every_kind_of_setting_round_trips(tmp_path: Path) -> None:
    tokens = ["w:3", "http:8081", "tcp:[::1]:9001", "r:100,60s,2r", "--max-body", "10M",
              "--watchdog-sec", "2.5s", "--json-logging", "--no-access-log",
              "--forwarded-allow-ips", "10.0.0.0/8", "--user", "nobody",
              "--read-write-paths", "/srv/a,/srv/b", "--environment-file", "/etc/x.env",
              "--reload", "module", "--queue-timeout-ms", "250"]
    path = install("shop", str(EXAMPLE.relative_to(Path.cwd())), tokens, tmp_path)
    assert path == tmp_path / "shop.toml"
    data = tomllib.loads(path.read_text())
    assert data["app"] == str(EXAMPLE.resolve())  # absolute: the file lives in /etc/rip
    assert data["workers"] == 3 and data["user"] == "nobody"
    assert "max_queue" not in data  # defaults are left out
    again = resolve([], env={}, file=path)
    assert again == resolve([str(EXAMPLE), "--name", "shop", *tokens], env={})
    assert not (tmp_path / ".ripctl-install").exists()


def test_refuses_to_replace_without_force_and_reports_every_problem(tmp_path: Path) -> None:
    install("shop", str(EXAMPLE), ["w:1"], tmp_path)
    with pytest.raises(InstallError, match="exists; edit it, or use --force"):
        install("shop", str(EXAMPLE), ["w:2"], tmp_path)
    install("shop", str(EXAMPLE), ["w:2"], tmp_path, force=True)
    assert tomllib.loads((tmp_path / "shop.toml").read_text())["workers"] == 2
    with pytest.raises(SettingsError) as caught:
        install("other", str(EXAMPLE), ["w:-3", "--max-body", "lots"], tmp_path)
    assert len(caught.value.problems) == 2
    assert not (tmp_path / "other.toml").exists()
    with pytest.raises(ValueError, match="not an app name"):
        install("../etc", str(EXAMPLE), [], tmp_path)
