"""Compliance retention jobs: ``retention plan|apply|hold|release|purge|audit``.

Each runs from a systemd timer as well as by hand; the rules are the config file's
``[retention]`` table (docs/compliance.md).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from archiver.cli import main
from archiver.cli._shared import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    make_settings,
    report_option,
    run,
    settings_options,
)
from archiver.config import Settings
from archiver.retention.archive import RetentionArchive, open_retention
from archiver.retention.reports import AuditReport, JobReport

T = TypeVar("T")


@main.group()
def retention() -> None:
    """Compliance retention: classes, Object Lock, legal holds, audited purge.

    The rules are the [retention] table of the config file (docs/compliance.md).
    """


def actor_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--actor",
        help="Who runs the job, recorded in the manifest with what it does. Default: user@host.",
    )(func)


async def _with_archive(
    settings: Settings, actor: str | None, job: Callable[[RetentionArchive], Awaitable[T]]
) -> T:
    async with open_retention(settings, actor=actor) as archive:
        result = await job(archive)
    if isinstance(result, JobReport):
        result.seal_error = archive.seal_error
    return result


def _write(result: JobReport | AuditReport, report: Path | None) -> None:
    """The whole report as JSON, streamed from its spool; then its spool is gone."""
    try:
        if report is not None:
            result.write(report)
    except OSError as exc:
        click.echo(f"error: cannot write the report to {report}: {exc.strerror}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        result.close()


def _row_text(row: dict[str, Any]) -> str:
    """One object of a job's report as a line: action, call, key, class, retain-until date (and
    the date it moves to, the store's date, the legal hold where the row has them)."""
    text = (
        f"  {row['action']:<26} {row['call_sid']}  {row['key']}  {row.get('class') or '-'}  "
        f"until {_day(row.get('retain_until'))}"
    )
    if row.get("new_until"):
        text += f" -> {_day(row['new_until'])}"
    if row.get("stored_until") or row.get("stored_mode"):
        text += f"  (stored: {row.get('stored_mode') or 'no lock'}"
        text += f" until {_day(row['stored_until'])})" if row.get("stored_until") else ")"
    if row.get("legal_hold") or row.get("reason"):
        text += "  legal hold" + (f": {row['reason']}" if row.get("reason") else "")
    return text


def _day(when: object) -> str:
    """The date of an ISO time of a report (the JSON report has the time to the second)."""
    return str(when)[:10] if when else "-"


def _finish(result: JobReport, report: Path | None, *, failed: bool) -> None:
    counts = result.summary()
    click.echo(f"{result.job}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for row in result.rows.first:
        click.echo(_row_text(row))
    if len(result.rows) > len(result.rows.first):
        click.echo(f"  ... and {len(result.rows) - len(result.rows.first)} more (see --report)")
    for row in result.failures.first:
        click.echo(f"  FAILED {row['key']}: {row['error']}", err=True)
    if len(result.failures) > len(result.failures.first):
        more = len(result.failures) - len(result.failures.first)
        click.echo(f"  ... and {more} more failure(s) (see --report)", err=True)
    if result.seal_error is not None:
        click.echo(
            f"  NOT SEALED: what this job did is recorded in the ledger and manifest.jsonl, but "
            f"could not be sealed into the destination ({result.seal_error}); the next job or "
            "the worker seals it",
            err=True,
        )
    _write(result, report)
    sys.exit(EXIT_FAILURES if failed or result.seal_error is not None else EXIT_OK)


@retention.command("plan", example="exotel-archiver retention plan --days 90")
@click.option(
    "--days",
    type=click.IntRange(0, 36_500),
    default=30,
    show_default=True,
    help="List the objects whose retention ends within this many days.",
)
@report_option("the plan")
@settings_options("retention plan")
@click.pass_context
def plan_command(ctx: click.Context, /, days: int, report: Path | None, **cli: Any) -> None:
    """What would change: retention ending soon, objects under legal hold, and objects whose
    stored retention is not what their class says. Changes nothing."""
    from archiver.retention.jobs import plan

    settings = make_settings(ctx, cli)
    result = run(_with_archive(settings, None, lambda a: plan(a, days=days)))
    if result.unbound and result.unbound["objects"]:
        click.echo(
            f"rescued, class not bound yet: {result.unbound['objects']} object(s), unlocked "
            f"since {result.unbound['oldest']}; their class and lock are applied at enrichment"
        )
    _finish(result, report, failed=False)


@retention.command("apply", example="exotel-archiver retention apply --report apply.json")
@click.option(
    "--strengthen-governance",
    is_flag=True,
    envvar="ARCHIVER_STRENGTHEN_GOVERNANCE",
    help="Also turn stored GOVERNANCE retention into COMPLIANCE where the class says so. S3 "
    "allows that change only with the GOVERNANCE bypass: the credentials need "
    "s3:BypassGovernanceRetention, and the bypass is asked for that change alone, never to "
    "shorten or weaken (docs/compliance.md). Without it such objects are reported as failed. "
    "[env: ARCHIVER_STRENGTHEN_GOVERNANCE]",
)
@report_option()
@actor_option
@settings_options("retention apply")
@click.pass_context
def apply_command(
    ctx: click.Context,
    /,
    strengthen_governance: bool,
    report: Path | None,
    actor: str | None,
    **cli: Any,
) -> None:
    """Bring stored retention up to the rules: lock unlocked objects, extend dates, and (with
    --strengthen-governance) turn GOVERNANCE into COMPLIANCE. Never shortens a date nor
    weakens a mode. Each change is recorded in the manifest. Exit code 1 if a change failed."""
    from archiver.retention.jobs import apply

    settings = make_settings(ctx, cli)
    result = run(
        _with_archive(
            settings, actor, lambda a: apply(a, strengthen_governance=strengthen_governance)
        )
    )
    _finish(result, report, failed=bool(len(result.failures)))


def _hold_command(on: bool) -> Callable[..., None]:
    def command(
        ctx: click.Context,
        /,
        call_sids: tuple[str, ...],
        reason: str,
        report: Path | None,
        actor: str | None,
        **cli: Any,
    ) -> None:
        from archiver.retention.jobs import hold

        settings = make_settings(ctx, cli)
        result = run(
            _with_archive(settings, actor, lambda a: hold(a, list(call_sids), reason=reason, on=on))
        )
        _finish(result, report, failed=bool(len(result.failures)))

    return command


for _name, _on, _doc in (
    (
        "hold",
        True,
        "Place a legal hold on every object of the given calls (S3 Object Lock legal hold), "
        "recorded in the manifest with who, why and when. Held objects are never purged.",
    ),
    (
        "release",
        False,
        "Lift the legal hold from every object of the given calls, recorded in the manifest.",
    ),
):
    _cmd = _hold_command(_on)
    _cmd.__doc__ = _doc
    _cmd = click.pass_context(_cmd)
    _cmd = settings_options(f"retention {_name}")(_cmd)
    _cmd = actor_option(_cmd)
    _cmd = report_option()(_cmd)
    _cmd = click.option("--reason", required=True, help="Why (a case number, a request).")(_cmd)
    _cmd = click.argument("call_sids", nargs=-1, required=True, metavar="CALL_SID...")(_cmd)
    retention.command(
        _name,
        example=f"exotel-archiver retention {_name} cabfb1dfa8c5e1c7f2c458423b7716b3 "
        "--reason 'case 2026-114'",
    )(_cmd)


@retention.command("purge", example="exotel-archiver retention purge --dry-run")
@click.option(
    "--dry-run", is_flag=True, help="List what would be deleted; delete nothing (run this first)."
)
@report_option()
@actor_option
@settings_options("retention purge")
@click.pass_context
def purge_command(
    ctx: click.Context, /, dry_run: bool, report: Path | None, actor: str | None, **cli: Any
) -> None:
    """Delete the objects whose class says delete, whose retention has ended (by the rules and
    at the store) and that carry no legal hold. Each deletion removes the stored version for
    good and writes an erasure receipt (call, key, SHA-256, class, retain-until, deleted-at)
    into the manifest chain. Exit code 1 if any deletion failed."""
    from archiver.retention.jobs import purge

    settings = make_settings(ctx, cli)
    result = run(_with_archive(settings, actor, lambda a: purge(a, dry_run=dry_run)))
    _finish(result, report, failed=bool(len(result.failures)))


@retention.command("audit", example="exotel-archiver retention audit --report audit.json")
@click.option(
    "--grace-days",
    type=click.IntRange(0, 3650),
    default=7,
    show_default=True,
    help="An object past its end by more than this, with a class that says delete, is "
    "reported as kept against its class.",
)
@report_option()
@settings_options("retention audit")
@click.pass_context
def audit_command(ctx: click.Context, /, grace_days: int, report: Path | None, **cli: Any) -> None:
    """Check every manifest entry: present with the retention and hold state its class and the
    recorded holds say, nothing deleted early or out of band, nothing kept past its class.
    Exit code 0 only when nothing is found."""
    from datetime import timedelta

    from archiver.retention.audit import audit

    settings = make_settings(ctx, cli)
    result = run(
        _with_archive(settings, None, lambda a: audit(a, grace=timedelta(days=grace_days)))
    )
    counts = result.head()["counts"]
    click.echo(
        f"audit: {result.checked} object(s) and {result.receipts} erasure receipt(s) checked, "
        f"{len(result.findings)} finding(s)"
        + (": " + ", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "")
    )
    for finding in result.findings.first:
        click.echo(
            f"  {finding['problem']:<22} {finding['call_sid']}  {finding['key']}: "
            f"{finding['detail']}"
        )
    if len(result.findings) > len(result.findings.first):
        click.echo(f"  ... and {len(result.findings) - len(result.findings.first)} more")
    if result.pending:
        click.echo(
            f"  not findings yet: {result.pending['class_not_bound_yet']} object(s) of rescued "
            f"calls whose class binds at enrichment, rescued within the last {grace_days} "
            "day(s) (older ones are findings)"
        )
    ok = result.ok
    _write(result, report)
    sys.exit(EXIT_OK if ok else EXIT_FAILURES)
