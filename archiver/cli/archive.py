"""``exotel-archiver archive CALL_SID...``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from archiver.archive import archive_calls
from archiver.cli import main
from archiver.cli._shared import (
    EXIT_FAILURES,
    EXIT_OK,
    Progress,
    make_settings,
    print_report,
    run,
    settings_options,
    write_report,
)
from archiver.errors import InvalidCallSid
from archiver.exotel.models import validate_call_sid


@main.command()
@click.argument("call_sids", nargs=-1, required=True, metavar="CALL_SID...")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the run's report as JSON to this file.",
)
@settings_options
@click.pass_context
def archive(
    ctx: click.Context, /, call_sids: tuple[str, ...], report: Path | None, **cli: Any
) -> None:
    """Archive the recordings of the given calls.

    For each CALL_SID: fetch its v3 call details; if the call is terminal, stream every recording
    into the destination with its SHA-256 and record it in the ledger and the manifest. A call
    still active is reported as not ready (run again later). Calls already archived are skipped.

    Credentials come from EXOTEL_API_KEY / EXOTEL_API_TOKEN (or the config file), never flags.
    """
    for sid in call_sids:
        try:
            validate_call_sid(sid)
        except InvalidCallSid as exc:
            raise click.BadParameter(str(exc), param_hint="CALL_SID") from None
    settings = make_settings(ctx, cli)
    with Progress(len(call_sids), "Archiving") as advance:
        result = run(archive_calls(settings, call_sids, on_result=advance))
    print_report(result)
    write_report(result, report)
    sys.exit(EXIT_FAILURES if result.failed else EXIT_OK)
