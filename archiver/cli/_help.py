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


class Group(click.Group):
    """A group of commands: its commands are ``Command``s, its subgroups ``Group``s."""

    command_class = Command
    group_class = type
