"""The README says what works: its first screen shows how to serve an app, and every
rip-server command and TOML setting it shows is one the settings code accepts."""

from __future__ import annotations

import re
import shlex
import tomllib

from ripsvc import settings as st
from tests.support.procs import REPO

README = (REPO / "README.md").read_text()
FIRST_SCREEN = 40  # lines: what a terminal or a repository page shows before scrolling


def code_lines(text: str) -> list[str]:
    return [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
            for line in block.splitlines()]


def test_the_first_screen_shows_how_to_serve_your_app():
    first = README.splitlines()[:FIRST_SCREEN]
    assert "## Serve your app" in first
    for command in ("rip-server mysite.wsgi:application", "rip-server app:app",
                    "rip-server main:app"):
        assert any(line.startswith(command + " ") for line in first), command
    assert "make run     # installs what it needs, then serves examples/hello on " \
        "http://127.0.0.1:8000/" in first
    assert "make test    # installs what it needs, then runs ruff, mypy and the whole test " \
        "suite" in first


def test_every_rip_server_command_shown_is_accepted():
    shown = [line.split("#")[0].strip() for line in code_lines(README)
             if line.startswith("rip-server ")]
    shown += [cell.strip("` ") for cell in re.findall(r"`rip-server [^`]*`", README)]
    assert len(shown) > 8
    for command in shown:
        tokens = shlex.split(command)[1:]
        if tokens in (["--help"], ["stop"]) or any(t.startswith(("htp:", "APP")) for t in tokens):
            continue
        # the app need not exist here: module:attr is checked by the worker that imports it
        st.resolve(tokens, env={})


def test_the_command_line_column_of_the_gunicorn_table_is_accepted():
    table = README.split("## Coming from gunicorn or uvicorn", 1)[1].split("\n\n", 2)[1]
    rows = [row.split(" | ") for row in table.splitlines()[2:]]
    assert len(rows) > 10
    fragments = [f for row in rows for f in re.findall(r"`([^`]+)`", row[1])]
    checked = 0
    for fragment in fragments:
        if fragment.startswith(("rip-server", "ripctl", "kill")) or "--cert" in fragment:
            continue  # commands: checked above; a certificate needs real files
        st.resolve(["main:app", *shlex.split(fragment)], env={})
        checked += 1
    assert checked > 8


def test_every_toml_setting_shown_is_accepted():
    heredoc = README.split("<<'TOML'\n", 1)[1].split("\nTOML\n", 1)[0]
    snippets = [heredoc]
    snippets += re.findall(r"`(\w+ = [^`]+)`", README)
    assert len(snippets) > 10
    for snippet in snippets:
        for key, value in tomllib.loads(snippet).items():
            assert key in st.FIELDS, key
            if key != "app":  # an absolute path on a server, not here
                st.FIELDS[key].metadata["parse"](value)


def anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_between_the_readme_and_docs_arrives():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if fragment and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                assert fragment in {anchor(h) for h in headings}, f"{page.name}: {target}"
            checked += 1
    assert checked > 20
