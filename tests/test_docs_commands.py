"""Every command line the docs show, and every ``Example:`` of ``--help``, is one the program takes.

Each ``exotel-archiver ...`` line in a code block of README.md, docs/*.md and systemd/README.md
(``.venv/bin/exotel-archiver`` and ``python -m archiver`` too) is expanded by bash as a reader's
shell would expand it (``"$(date -d yesterday +%F)"`` included; nothing else of the line runs),
then parsed by the real click command: an unknown command or option, a bad choice or date, or a
missing argument fails here. A backfill or reconcile range must also be one the program accepts
today: docs/operations.md once showed fixed dates that had become older than Exotel's six-month
window, so pasted, they were refused.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import click
import pytest

from archiver.backfill import check_range
from archiver.cli import main
from archiver.errors import ConfigError
from tests.test_help import commands

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "systemd" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAM = re.compile(
    r"(?:^|[;&|(]\s*|\b(?:if|then|else|do|while|until|time|exec|!)\s+)"
    r"(?:sudo(?:\s+-[A-Za-z]+(?:\s+\S+(?=\s))?)*\s+)?(?:env\s+)?(?:\w+=\S*\s+)*"
    r"(?:\S*/)?(?:exotel-archiver|python3? -m archiver)(?=\s|\)|$)"
)
"""The program run as a command: first on the line, after ``;``, ``&&``, ``|``, ``$(``, or a
shell keyword (``if``, ``do``...), perhaps after ``sudo [-E] [-u USER]``, ``env``, variable
assignments or a path (``.venv/bin/``)."""
FENCE = re.compile(r"^(?:```|~~~)(\w*)\s*$")
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console"}


ASSIGNMENTS = re.compile(r"^(?:\w+=(?:\$\(date [^)]*\)|[^\s$]+)\s*)+(?:#.*)?$")
"""A line that only sets variables (to a literal or a ``$(date ...)``), kept for the lines after
it; one that runs the program (``x=$(exotel-archiver ...)``) is checked instead."""


def code_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, logical line, the variable assignments before it in its block) of each
    shell code block; ``\\`` continuations joined."""
    in_block, shell, pending, start, assigned = False, False, "", 0, ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = FENCE.match(line.strip())
        if fence:
            in_block, shell, assigned = (not in_block), fence.group(1) in SHELL_BLOCKS, ""
            continue
        if not (in_block and shell):
            continue
        text = line.strip().removeprefix("$ ")
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        if ASSIGNMENTS.match(pending + text):
            assigned += (pending + text).split("#")[0] + "; "
        else:
            yield start, pending + text, assigned
        pending = ""


def command_part(line: str) -> str | None:
    """The words after the program name, up to the end of its simple command (an unquoted
    ``|``, ``;``, ``&``, ``>``, ``<`` or a ``#`` comment), as written; None if the line does not
    run the program."""
    found = PROGRAM.search(line)
    if found is None:
        return None
    rest = line[found.end() :]
    quote, depth = "", 0
    for i, char in enumerate(rest):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif rest.startswith("$(", i):
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0 and (char in "|;&<>)" or (char == "#" and rest[i - 1 : i].isspace())):
            return rest[:i]
    return rest


def expand(words: str, assigned: str = "") -> list[str]:
    """``words`` as bash expands them after ``assigned``: quotes removed, ``$(...)`` run (date,
    nothing else)."""
    for text in (words, assigned):
        assert "`" not in text and not re.search(r"\$\((?!date )", text), text
    done = subprocess.run(
        ["bash", "-c", f'{assigned}printf "%s\\0" {words}'],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LC_ALL": "C"},
    )
    return done.stdout.split("\0")[:-1]


def parse(argv: list[str]) -> click.Context:
    """Parse ``argv`` as ``exotel-archiver`` would, down to the command, without running it."""
    ctx = main.make_context("exotel-archiver", list(argv))
    command: click.Command = main
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return ctx


def check(argv: list[str], where: str) -> None:
    if "--help" in argv or "-h" in argv or "--version" in argv:
        return
    try:
        ctx = parse(argv)
    except click.ClickException as exc:
        pytest.fail(f"{where}: exotel-archiver {' '.join(argv)}: {exc.format_message()}")
    path = ctx.command_path.removeprefix("exotel-archiver ")
    since, until = ctx.params.get("since"), ctx.params.get("until")
    if ctx.params.get("day_range"):
        first, _, last = ctx.params["day_range"].partition("..")
        since, until = date.fromisoformat(first), date.fromisoformat(last)
    if path in ("backfill", "reconcile") and since is not None and until is not None:
        as_dates = [d.date() if hasattr(d, "date") else d for d in (since, until)]
        try:
            check_range(*as_dates)
        except ConfigError as exc:
            pytest.fail(f"{where}: exotel-archiver {' '.join(argv)}: refused today: {exc}")


def documented() -> list[tuple[str, str, str]]:
    found = []
    for path in DOCS:
        for number, line, assigned in code_lines(path):
            words = command_part(line)
            if words is not None:
                found.append((f"{path.relative_to(ROOT)}:{number}", words, assigned))
    return found


DOCUMENTED = documented()


def test_the_docs_show_many_command_lines() -> None:
    assert len(DOCUMENTED) >= 15
    assert {w.split()[0] for _, w, _ in DOCUMENTED if w.split()} >= {
        "demo", "archive", "backfill", "run", "verify", "reconcile", "retention", "status",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("where", "words", "assigned"), DOCUMENTED, ids=[w for w, _, _ in DOCUMENTED]
)
def test_each_documented_command_line_parses(where: str, words: str, assigned: str) -> None:
    check(expand(words, assigned), where)


def test_each_help_example_parses() -> None:
    for path, command in commands():
        example = getattr(command, "example", None)
        assert example, f"{path} has no example"
        words = command_part(example)
        assert words is not None, example
        check(expand(words), f"{path} --help")


def test_a_stale_date_range_is_caught(tmp_path: Path) -> None:
    """The check above can fail: the fixed range docs/operations.md once showed."""
    doc = tmp_path / "old.md"
    doc.write_text(
        "```sh\nexotel-archiver backfill --since 2026-01-01 --until 2026-01-31 --dry-run\n```\n"
    )
    ((_, line, _),) = code_lines(doc)
    words = command_part(line)
    assert words is not None
    with pytest.raises(pytest.fail.Exception, match="six-month"):
        check(expand(words), "old.md:2")
    with pytest.raises(pytest.fail.Exception, match="No such option"):
        check(expand("verify --voice-logs json"), "x")


def test_each_unit_runs_a_command_line_the_program_takes() -> None:
    """The systemd units' ExecStart= lines, with systemd's specifiers filled in as systemd
    would (``%i`` of the backfill template: a range of the last week)."""
    week = f"{date.fromordinal(date.today().toordinal() - 7)}..{date.today()}"
    lines = 0
    for unit in sorted((ROOT / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            if not line.startswith("ExecStart="):
                continue
            words = command_part(line.removeprefix("ExecStart="))
            assert words is not None, f"{unit.name}: {line}"
            words = words.replace("%i", week).replace("%S", "/var/lib")
            for purge_flags in ("", "--dry-run"):
                argv = expand(words.replace("$ARCHIVER_PURGE_FLAGS", purge_flags))
                check(argv, unit.name)
            lines += 1
    assert lines >= 6
