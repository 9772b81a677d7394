"""The ``exotel-archiver`` command: a thin click shell over plain functions.

Commands live beside this file: ``archive.py`` (archive, backfill), ``service.py`` (run, the
long-running worker), ``status.py`` (status), ``audit.py`` (verify, manifest, export-bag,
reconcile), ``retention.py`` (the compliance retention jobs), ``trial.py`` (demo, simulate);
``_shared.py`` has what they share, ``_help.py`` how ``--help`` is laid out.

Each command turns its flags into ``Settings`` (``archiver.config``), calls one plain async
function (``archive_calls``, ``run_demo``, ``run_simulator``) and turns the outcome into output
and an exit code:

* 0 — done (calls that are still active count as done for now: they are reported, not lost);
* 1 — done, but some calls failed (each is listed with its reason);
* 2 — usage or configuration error (bad flag, missing credentials, bucket missing or denied).

Expected errors print one line naming the problem and the fix, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from archiver import __version__
from archiver.cli._help import Group
from archiver.cli._pipe import closed_pipe, guard_streams
from archiver.log import setup_logging, wants_json


class _Group(Group):
    """The command group; in JSON mode its own usage errors (an unknown command, a
    ``--config`` that is a directory) are JSON lines too: they come before ``main`` runs."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        guard_streams()  # a closed pipe (``| head``) drops output, never the exit code
        if wants_json():
            setup_logging(fmt="json")
        return super().main(*args, **kwargs)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with closed_pipe(0):  # only --help prints while parsing
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with closed_pipe(1):  # stopped before it finished: not a success
            return super().invoke(ctx)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="exotel-archiver")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ARCHIVER_CONFIG",
    help="TOML config file ([exotel], [archiver], [daemon], [retention] tables); also "
    "accepted after the command. [env: ARCHIVER_CONFIG]",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Archive Exotel Voice v3 call recordings into S3-compatible storage, with a checksum
    manifest.

    Try it with no account: `exotel-archiver demo`.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    if wants_json():  # usage errors of the command too are JSON lines (archiver.log)
        setup_logging(fmt="json")


# The command modules register themselves on ``main``.
from archiver.cli import (  # noqa: E402
    archive,
    audit,
    decrypt,
    repair,
    retention,
    service,
    status,
    trial,
)

__all__ = [
    "archive",
    "audit",
    "decrypt",
    "main",
    "repair",
    "retention",
    "service",
    "status",
    "trial",
]
