"""README.md and .ci/run must not drift apart: CI runs exactly the documented test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands(text: str) -> list[str]:
    return re.findall(r"```sh\n(python3 -m venv[^\n]+)\n```", text)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = _commands((ROOT / "README.md").read_text())
    assert len(commands) == 2, commands
    assert commands[0].endswith("exotel-archiver demo")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _commands((ROOT / "README.md").read_text())[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
