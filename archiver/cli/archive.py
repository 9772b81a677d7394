"""Archiving: ``archive CALL_SID...`` and ``backfill --since --until``."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from archiver.archive import archive_calls
from archiver.cli import main
from archiver.cli._help import LAST_WEEK
from archiver.cli._shared import (
    EXIT_FAILURES,
    EXIT_OK,
    Progress,
    date_range_options,
    day,
    fail,
    make_settings,
    print_report,
    progress_log,
    report_option,
    run,
    settings_options,
    write_json,
    write_report,
)
from archiver.cli.status import note_run, recorded, report_counts
from archiver.errors import InvalidCallSid
from archiver.exotel.models import validate_call_sid

if TYPE_CHECKING:
    from archiver.backfill import Plan
    from archiver.config import Settings
from archiver.waiting import (
    DEFAULT_WAIT,
    MAX_WAIT,
    POLL,
    Wait,
    Waiter,
    Waiting,
    parse_duration,
    shown,
)


@main.command(
    example="exotel-archiver archive --destination s3://my-bucket/exotel "
    "cabfb1dfa8c5e1c7f2c458423b7716b3"
)
@click.argument("call_sids", nargs=-1, required=True, metavar="CALL_SID...")
@click.option(
    "--wait",
    "wait_for",
    is_flag=False,
    flag_value=shown(DEFAULT_WAIT),
    default=None,
    metavar="[DURATION]",
    callback=lambda _ctx, _param, value: _wait_value(value),
    help=f"Wait until every call is over and archived (or has no recording once "
    f"recording_grace has passed since its end), looking again {POLL.first:g} s, then twice as "
    f"long each time up to every {POLL.cap:g} s. DURATION: 90s, 15m, 2h or seconds; "
    f"--wait alone: {shown(DEFAULT_WAIT)}; at most {shown(MAX_WAIT)}. Calls still not ready "
    "when it runs out: exit 1, each named.",
)
@report_option("the run's report")
@settings_options("archive")
@click.pass_context
@recorded("archive")
def archive(
    ctx: click.Context,
    /,
    call_sids: tuple[str, ...],
    wait_for: float | None,
    report: Path | None,
    **cli: Any,
) -> None:
    """Archive the recordings of the given calls.

    For each CALL_SID: fetch its v3 call details; if the call is terminal, stream every recording
    into the destination with its SHA-256 and record it in the ledger and the manifest. A call
    still active is reported as not ready (run again later, or give --wait). Calls already
    archived are skipped.

    Credentials come from EXOTEL_API_KEY / EXOTEL_API_TOKEN (or the config file), never flags.
    """
    for sid in call_sids:
        try:
            validate_call_sid(sid)
        except InvalidCallSid as exc:
            raise click.BadParameter(str(exc), param_hint="CALL_SID") from None
    settings = make_settings(ctx, cli)
    waiter = None
    if wait_for is not None:
        wait = Wait(wait_for, recording_grace=settings.daemon.recording_grace)
        waiter = Waiter(wait, on_wait=_show_waiting)
    with Progress(len(set(call_sids)), "Archiving") as advance:  # each call once
        result = run(
            archive_calls(settings, call_sids, on_result=advance, waiter=waiter),
            state_dir=settings.state_dir,
        )
    note_run(report_counts(result))
    print_report(result)
    write_report(result, report)
    if waiter is not None and waiter.timed_out:
        fail(f"error: {_still_waiting(waiter)}", EXIT_FAILURES)
    sys.exit(EXIT_FAILURES if result.failed else EXIT_OK)


def _wait_value(value: str | None) -> float | None:
    """--wait's DURATION in seconds (None: not given); BadParameter naming --wait otherwise."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _show_waiting(waiting: Waiting) -> None:
    """What --wait waits for, before each sleep: on a terminal a whole line of its own (a
    half-drawn progress bar is cleared first; a line without its newline would get the next
    log line glued onto it), a log line otherwise."""
    if sys.stderr.isatty():
        click.echo(f"\r\x1b[K{waiting.line()}", err=True)
    else:
        progress_log.info("%s", waiting.line())


def _still_waiting(waiter: Waiter) -> str:
    """``still active after 15m: CA1, CA2; no recording yet after 15m: CA3``."""
    by_why: dict[str, list[str]] = {}
    for sid, why in waiter.timed_out.items():
        by_why.setdefault(why, []).append(sid)
    after = shown(waiter.wait.limit)
    return (
        "; ".join(f"{why} after {after}: {', '.join(sids)}" for why, sids in by_why.items())
        + " (not ready: nothing of them archived; run the command again, with a longer --wait)"
    )


@main.command(example=f"exotel-archiver backfill {LAST_WEEK} --dry-run")
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
@settings_options("backfill")
@click.pass_context
@recorded("backfill", dry_run_flag="dry_run")
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
    from archiver.backfill import plan_backfill

    first, last = _days(day(since), day(until), day_range)
    settings = make_settings(ctx, cli)
    if settings.rescue and not dry_run:
        _rescue_backfill(settings, first, last, report)
    plan = run(plan_backfill(settings, first, last), state_dir=settings.state_dir)
    _print_plan(plan, settings, dry_run)
    name = f"backfill-{plan.since}-{plan.until}{'.plan' if dry_run else ''}.json"
    path = report or settings.state_dir / name
    limit = settings.exotel.rate_limit
    if dry_run:
        write_json({"plan": plan.as_dict(limit), "dry_run": True}, path)
        click.echo(f"dry run: nothing archived. Plan written to {path}")
        sys.exit(EXIT_FAILURES if plan.skipped else EXIT_OK)
    with Progress(len(plan.to_archive), "Backfilling") as advance:
        result = run(run_backfill(settings, plan, on_result=advance), state_dir=settings.state_dir)
    note_run(report_counts(result))
    print_report(result)
    write_json({"plan": plan.as_dict(limit), "result": result.as_dict()}, path)
    if plan.skipped:
        click.echo(f"  {len(plan.skipped)} malformed listing item(s) skipped (above)", err=True)
    click.echo(f"summary written to {path}")
    sys.exit(EXIT_FAILURES if result.failed or plan.skipped else EXIT_OK)


def _rescue_backfill(settings: Settings, first: date, last: date, report: Path | None) -> None:
    """``backfill`` through the rescue lane (``archiver.rescue``): the listing is read as the
    recordings are rescued, so the plan is printed at the end, with what was done."""
    from archiver.rescue import rescue_backfill

    with Progress(None, "Rescuing") as advance:
        plan, result = run(
            rescue_backfill(settings, first, last, on_result=advance),
            state_dir=settings.state_dir,
        )
    _print_plan(plan, settings, dry_run=False)
    limit = settings.exotel.rate_limit
    note_run(report_counts(result))
    print_report(result)
    listed = max(plan.listed, 1)
    click.echo(
        f"rescue lane: {len(plan.to_rescue)} rescued from the listing "
        f"({plan.rescue_fallbacks} through v3 instead: their URL could not serve them), "
        f"{plan.listing_requests} listing request(s) for {plan.listed} calls "
        f"({plan.listing_requests / listed:.3f} a call); enrichment: {plan.enrich_requests} "
        f"request(s) at up to {plan.enrich_share}/min"
        + ("" if plan.enrich else " (enrich = never: rescued calls stay rescued)")
    )
    path = report or settings.state_dir / f"backfill-{plan.since}-{plan.until}.json"
    write_json({"plan": plan.as_dict(limit), "result": result.as_dict()}, path)
    if plan.skipped:
        click.echo(f"  {len(plan.skipped)} malformed listing item(s) skipped (above)", err=True)
    click.echo(f"summary written to {path}")
    sys.exit(EXIT_FAILURES if result.failed or plan.skipped else EXIT_OK)


def _print_plan(plan: Plan, settings: Settings, dry_run: bool) -> None:
    """The plan's lines: what the listing held, what it costs, whether it was saved."""
    from archiver.backfill import duration_text

    limit = settings.exotel.rate_limit
    click.echo(
        f"{plan.since}..{plan.until}: {plan.listed} calls listed"
        f"{' (saved listing reused)' if not plan.listing_requests else ''}; "
        f"already archived: {len(plan.already_archived)}, no recording: "
        f"{len(plan.no_recording)}, to archive: {len(plan.to_archive)}"
        + (
            f", to rescue: {len(plan.to_rescue)}, rescued before: {len(plan.rescued_before)}"
            if settings.rescue
            else ""
        )
    )
    direct = len(plan.to_archive) * plan.requests_per_call
    click.echo(
        f"budget: about {direct} API requests to archive them, "
        f"{duration_text(direct / limit)} "
        f"at {limit}/min (exotel.rate_limit: this worker's share of the 200/min Exotel allows "
        "the account)"
    )
    if settings.rescue:
        click.echo(
            f"rescue: {len(plan.to_rescue)} calls from the listing, no request but the "
            f"listing's; enrichment: about {plan.enrichment_estimate} API requests, "
            f"{duration_text(plan.enrich_minutes())} at {plan.enrich_share}/min "
            f"(enrich_share {settings.enrich_share} %)"
            + ("" if plan.enrich else " — enrich = never: not enriched")
        )
        if direct and plan.enrichment_estimate:
            click.echo(
                f"in all: about {direct + plan.enrichment_estimate} API requests, "
                f"{duration_text(plan.minutes_at(limit))} at {limit}/min"
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
    elif settings.rescue:
        pass  # the lane lists the range again every run: a rescue needs fresh URLs
    elif plan.listing_requests and plan.listing_complete:
        click.echo("listing saved: later runs of this range reuse it")
    elif not plan.listing_complete:
        hours = settings.listing_settle / 3600
        click.echo(
            f"listing not saved: it began less than {hours:g} h (listing_settle) after the "
            "range's end, when calls of the range may still have been in progress or "
            "processing; later runs of this range list it again"
        )


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
