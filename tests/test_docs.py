"""The documentation keeps its promises: a README of one screen with the two set-up commands, every command
and option of the CLI documented in docs/CLI.md, an index that reaches every page, and measured numbers
without notes about the machines they were measured on."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from verifier.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CLI = (ROOT / "docs" / "CLI.md").read_text()
SETUP = ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[test]" '
         '&& verifier run')
TESTS = ". .venv/bin/activate && python -m pytest"


def test_the_readme_is_one_screen_with_the_two_commands():
    assert len(README.splitlines()) <= 130
    lines = README.splitlines()
    assert SETUP in lines and TESTS in lines
    for page in ("docs/CLI.md", "docs/TRACKING.md", "docs/README.md", "docs/THEORY.md"):
        assert f"]({page})" in README, page


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_command_and_option_is_documented(command):
    parser = _commands()[command]
    assert f"verifier {command}" in CLI, command
    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    missing = [o for o in options if not re.search(rf"`[^`]*{re.escape(o)}\b", CLI)]
    assert not missing, f"verifier {command}: {missing} not in docs/CLI.md"


def test_the_index_reaches_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*")):
        if page.name != "README.md" and page.suffix in (".md", ".py"):
            assert f"]({page.name})" in index, page.name
    assert "](../benchmarks/README.md)" in index


# Notes about the machines the project was developed on (dates of sessions, clock times, load averages, "this
# VM") do not belong in the docs; a measured number keeps its command, its thread count and its hardware.
ANECDOTES = re.compile(r"\b20\d\d-\d\d-\d\d\b|\b\d\d:\d\d(-\d\d:\d\d)? UTC\b|load average \d|load ~?\d|this VM|"
                       r"this machine|this session|other agents", re.I)


@pytest.mark.parametrize("page", ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
                                  "benchmarks/README.md"])
def test_no_notes_about_the_development_machines(page):
    found = [m.group(0) for m in ANECDOTES.finditer((ROOT / page).read_text())]
    assert not found, f"{page}: {found}"
