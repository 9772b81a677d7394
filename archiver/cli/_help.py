"""``--help`` that shows what matters: options in sections, and one example per command.

Every command is a ``Command``: its own options come first, then the settings it reads
(``archiver.options.OPTIONS``, each with its ``group``) in the sections of
``archiver.options.GROUPS``, then an example line, kept as written (never re-wrapped) so it can
be pasted.
"""

from __future__ import annotations

from typing import Any

import click

from archiver.options import GROUPS

LAST_WEEK = '--since "$(date -d \'7 days ago\' +%F)" --until "$(date -d yesterday +%F)"'
"""A date range for examples that is never refused as too old (tests/test_docs_commands.py)."""

OWN = "Options"
"""The section of a command's own options (--since, --report, --config, --help...)."""


class SectionedOption(click.Option):
    """A click option that knows the ``--help`` section it belongs in."""

    def __init__(self, *args: Any, section: str = OWN, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


class Command(click.Command):
    """A command whose help groups its options and ends with ``Example:``."""

    def __init__(self, *args: Any, example: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.example = example

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", OWN), []).append(record)
        for name in (OWN, *GROUPS):
            if name in sections:
                with formatter.section(name):
                    formatter.write_dl(sections[name])

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if self.example:
            formatter.write_paragraph()
            formatter.write_text("Example:")
            with formatter.indentation():
                for line in self.example.splitlines():
                    formatter.write(f"{' ' * formatter.current_indent}{line}\n")


COMMAND_SECTIONS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Try it",
        (
            ("demo", "Archive a simulated day into a local directory (no account)."),
            ("simulate", "Run the built-in Exotel simulator."),
        ),
    ),
    (
        "Archive",
        (
            ("archive", "Archive the recordings of the given calls."),
            ("backfill", "Archive every call of a date range."),
            ("run", "The long-running worker (systemd)."),
        ),
    ),
    (
        "Check",
        (
            ("status", "What is archived, pending or failed, and what to do next."),
            ("verify", "Fixity audit: re-read every object and check the manifest chain."),
            ("reconcile", "Compare Exotel's list of calls with the archive."),
            ("repair", "Put back what verify found missing or altered."),
        ),
    ),
    (
        "Hand over",
        (
            ("manifest", "Rebuild the ledger from the destination, or export the manifest."),
            ("export-bag", "Write a BagIt bag of a date range for auditors."),
            ("decrypt", "Restore recordings encrypted to a public key, checked."),
        ),
    ),
    ("Compliance", (("retention", "Retention classes, Object Lock, legal holds, purge."),)),
)
"""How ``exotel-archiver --help`` lists the commands, in the order of the work."""


class Group(click.Group):
    """A group of commands: its commands are ``Command``s, its subgroups ``Group``s. The top
    level lists its commands in ``COMMAND_SECTIONS``; any other under "Commands"."""

    command_class = Command
    group_class = type

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if ctx.parent is not None:
            super().format_commands(ctx, formatter)
            return
        listed: set[str] = set()
        others = tuple((name, "") for name in sorted(self.commands))
        for title, entries in (*COMMAND_SECTIONS, ("Commands", others)):
            rows = [
                (name, summary or self.commands[name].get_short_help_str(60))
                for name, summary in entries
                if name in self.commands and name not in listed
            ]
            listed.update(name for name, _ in rows)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
