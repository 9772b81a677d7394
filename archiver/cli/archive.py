"""Archiving: ``archive CALL_SID...`` and ``backfill --since --until``."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import Any

import click

from archiver.archive import archive_calls
from archiver.cli import main
from archiver.cli._shared import (
    EXIT_FAILURES,
    EXIT_OK,
    Progress,
    date_range_options,
    day,
    make_settings,
    print_report,
    report_option,
    run,
    settings_options,
    write_json,
    write_report,
)
from archiver.errors import InvalidCallSid
from archiver.exotel.models import validate_call_sid


@main.command()
@click.argument("call_sids", nargs=-1, required=True, metavar="CALL_SID...")
@report_option("the run's report")
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
        result = run(
            archive_calls(settings, call_sids, on_result=advance), state_dir=settings.state_dir
        )
    print_report(result)
    write_report(result, report)
    sys.exit(EXIT_FAILURES if result.failed else EXIT_OK)


@main.command()
@date_range_options()
@click.option(
    "--range",
    "day_range",
    metavar="SINCE..UNTIL",
    help="The same as --since SINCE --until UNTIL, in one word (YYYY-MM-DD..YYYY-MM-DD): "
    "what the exotel-archiver-backfill@.service template passes as its instance name.",
)
@click.option("--dry-run", is_flag=True, help="List and plan only: nothing is downloaded.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the JSON summary. Default: STATE_DIR/backfill-SINCE-UNTIL.json "
    "(a dry run's plan: STATE_DIR/backfill-SINCE-UNTIL.plan.json, so it never replaces the "
    "summary of a run).",
)
@settings_options
@click.pass_context
def backfill(
    ctx: click.Context,
    /,
    since: Any,
    until: Any,
    day_range: str | None,
    dry_run: bool,
    report: Path | None,
    **cli: Any,
) -> None:
    """Archive every call of a date range (days in the account's time zone), found through
    Exotel's v1 call listing. Interrupted, the same command continues where it stopped.

    Exit code 0 when every call is done, 1 when some failed or a malformed item of Exotel's
    listing was skipped (a dry run too), 2 for usage or configuration errors.
    """
    from archiver.backfill import backfill as run_backfill
    from archiver.backfill import duration_text, plan_backfill

    first, last = _days(day(since), day(until), day_range)
    settings = make_settings(ctx, cli)
    plan = run(plan_backfill(settings, first, last), state_dir=settings.state_dir)
    limit = settings.exotel.rate_limit
    click.echo(
        f"{plan.since}..{plan.until}: {plan.listed} calls listed"
        f"{' (saved listing reused)' if not plan.listing_requests else ''}; "
        f"already archived: {len(plan.already_archived)}, no recording: "
        f"{len(plan.no_recording)}, to archive: {len(plan.to_archive)}"
    )
    click.echo(
        f"budget: about {plan.api_requests} API requests to archive them, "
        f"{duration_text(plan.minutes_at(limit))} "
        f"at {limit}/min (exotel.rate_limit: this worker's share of the 200/min Exotel allows "
        "the account)"
    )
    if plan.skipped:
        click.echo(
            f"{len(plan.skipped)} malformed item(s) skipped in Exotel's listing (the rest of "
            f"the range is {'planned' if dry_run else 'archived'}; this run exits 1):",
            err=True,
        )
        for item in plan.skipped:
            click.echo(f"  SKIPPED    {item.line()}", err=True)
        click.echo(
            "listing not saved: later runs of this range list it again (and report these "
            "items again until Exotel's answer is mended)"
        )
    elif plan.listing_requests and plan.listing_complete:
        click.echo("listing saved: later runs of this range reuse it")
    elif not plan.listing_complete:
        hours = settings.listing_settle / 3600
        click.echo(
            f"listing not saved: it began less than {hours:g} h (listing_settle) after the "
            "range's end, when calls of the range may still have been in progress or "
            "processing; later runs of this range list it again"
        )
    name = f"backfill-{plan.since}-{plan.until}{'.plan' if dry_run else ''}.json"
    path = report or settings.state_dir / name
    if dry_run:
        write_json({"plan": plan.as_dict(limit), "dry_run": True}, path)
        click.echo(f"dry run: nothing archived. Plan written to {path}")
        sys.exit(EXIT_FAILURES if plan.skipped else EXIT_OK)
    with Progress(len(plan.to_archive), "Backfilling") as advance:
        result = run(run_backfill(settings, plan, on_result=advance), state_dir=settings.state_dir)
    print_report(result)
    write_json({"plan": plan.as_dict(limit), "result": result.as_dict()}, path)
    if plan.skipped:
        click.echo(f"  {len(plan.skipped)} malformed listing item(s) skipped (above)", err=True)
    click.echo(f"summary written to {path}")
    sys.exit(EXIT_FAILURES if result.failed or plan.skipped else EXIT_OK)


def _days(since: date | None, until: date | None, day_range: str | None) -> tuple[date, date]:
    """The range from --since/--until or --range (exactly one of the two ways)."""
    if day_range is None:
        if since is None or until is None:
            raise click.UsageError("give --since and --until (or --range SINCE..UNTIL)")
        return since, until
    if since is not None or until is not None:
        raise click.UsageError("give either --range or --since/--until, not both")
    first, sep, last = day_range.partition("..")
    try:
        if not sep:
            raise ValueError
        return date.fromisoformat(first), date.fromisoformat(last)
    except ValueError:
        raise click.BadParameter(
            f"{day_range!r} is not SINCE..UNTIL such as 2026-05-01..2026-05-31",
            param_hint="--range",
        ) from None
