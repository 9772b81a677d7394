"""``exotel-archiver status`` (the screen an operator reads first), and ``recorded``: the
record of each ``archive``, ``backfill`` and ``run``, which it shows as the last run."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sqlite3
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import click

from archiver.cli import main
from archiver.cli._shared import EXIT_USAGE, fail, make_settings, run, settings_options
from archiver.config import Settings
from archiver.errors import ConfigError
from archiver.ledger import Ledger, RunRecord, WriterBusy, utc_now
from archiver.redact import redact_text
from archiver.report import OUTCOMES, Report
from archiver.status import ATTENTION, CONFIG, NothingArchivedYet, Status, gather_status

log = logging.getLogger("archiver.cli")
F = TypeVar("F", bound=Callable[..., Any])


@main.command(example="exotel-archiver status --json")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@settings_options("status")
@click.pass_context
def status(ctx: click.Context, /, as_json: bool, **cli: Any) -> None:
    """What an operator reads first: the destination and its identity, the last run, calls
    archived / pending / not ready / failed (with the failure reasons), the manifest's last
    seal, the oldest unarchived call against Exotel's retention, the bucket's Object Lock, and
    what to do next. Sends Exotel nothing; reads the ledger read-only (it may run beside the
    worker).

    Exit code 0 when nothing needs attention; 1 when something does (failed calls, the oldest
    unarchived call near daemon.source_retention, a last run that stopped on an error); 2 for a
    configuration problem (no ledger in the state directory yet, no destination, the
    destination unreadable or another archive's).
    """
    settings = make_settings(ctx, cli)
    result = run(_gather(settings), state_dir=settings.state_dir)
    if isinstance(result, NothingArchivedYet):
        if as_json:
            click.echo(json.dumps({"exit_code": EXIT_USAGE, "error": str(result)}))
            sys.exit(EXIT_USAGE)
        fail(f"error: {result}", EXIT_USAGE)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(screen(result))
    sys.exit(result.exit_code)


async def _gather(settings: Settings) -> Status | NothingArchivedYet:
    """The status, or why there is none (said apart: in JSON mode it is the JSON object)."""
    try:
        return await gather_status(settings)
    except NothingArchivedYet as exc:
        return exc


def screen(s: Status) -> str:
    """The status as the lines a terminal shows."""
    lines = [f"exotel-archiver status at {s.checked_at}"]
    who = s.identity
    ident = f"archive {who.archive_id}, {who.state}" if who.archive_id else who.state
    lines.append(f"destination  {s.destination or '(none set)'} ({ident})")
    if who.marker:
        lines.append(f"             marker: {who.marker}")
    if s.object_lock is None:
        lock = (
            "not available (local directory)"
            if s.destination and not s.destination.startswith("s3://")
            else "unknown"
        )
    else:
        lock = "enabled" if s.object_lock else "not enabled"
    lines.append(f"Object Lock  {lock}")
    lines.append(f"state dir    {s.state_dir}")
    lines.append(f"last run     {_run_line(s.last_run)}")
    c = s.calls
    lines.append(
        f"calls        archived {c['archived']}, pending {c['pending']}, not ready "
        f"{c['not_ready']}, failed {c['failed']}, no recording {c['no_recording']}"
    )
    for f in s.failures:
        example = f": {f.example}" if f.example else ""
        lines.append(f"  failed     {f.count} {f.reason}{example}")
    last = s.last_segment
    sealed = (
        f"{s.segments} sealed, the last: number {last.number} (seq {last.first_seq}-"
        f"{last.last_seq}, sha256 {last.sha256[:16]}...)"
        if last
        else "no segment sealed yet"
    )
    lines.append(f"manifest     {sealed}; {s.unsealed} entries not sealed yet")
    o = s.oldest_unarchived
    oldest = (
        f"{o.call_sid}, {o.age_days:.1f} days old; Exotel deletes recordings after "
        f"{s.source_retention_days:g} days ({o.days_left:.1f} days left)"
        if o
        else "none"
    )
    unknown = f" (and {s.unknown_age} of unknown age)" if s.unknown_age else ""
    lines.append(f"oldest unarchived call  {oldest}{unknown}")
    worry = [a for a in s.advice if a.level in (CONFIG, ATTENTION)]
    if not worry:
        lines.append("ok: nothing needs attention")
    if s.advice:
        lines.append("next:")
        for a in s.advice:
            mark = {CONFIG: "!!", ATTENTION: "! "}.get(a.level, "- ")
            lines.append(f"  {mark} {a.line()}")
    return "\n".join(lines)


def _run_line(r: RunRecord | None) -> str:
    if r is None:
        return "none recorded"
    order = [o for o in OUTCOMES if o in r.counts] + sorted(
        k for k in r.counts if k not in OUTCOMES and k != "api_requests"
    )
    counts = ", ".join(f"{k.replace('_', ' ')} {r.counts[k]}" for k in order)
    api = f"; {r.counts['api_requests']} API requests" if "api_requests" in r.counts else ""
    error = f": {r.error}" if r.error else ""
    took = ""
    with contextlib.suppress(ValueError):
        seconds = datetime.fromisoformat(r.ended_at) - datetime.fromisoformat(r.started_at)
        took = f" after {seconds.total_seconds():.0f} s"
    return f"{r.command}, ended {r.ended_at}{took}, exit {r.exit_code}{error}; {counts}{api}"


# --- the record of runs --------------------------------------------------------------------------


def recorded(command: str, *, dry_run_flag: str | None = None) -> Callable[[F], F]:
    """Record each run of the decorated command in the ledger when it ends: its exit code,
    the counts it noted (``note_run``), and the error it stopped on — the "last run" of
    ``status``. ``dry_run_flag`` names a flag that makes it ``COMMAND --dry-run``.

    Nothing is recorded when the command stopped before its settings were read, when another
    process held the writer lock (the run was refused: that process's run is the one that
    counts), or when the state directory has no ledger (nothing was done); a failure to record
    is logged, never the command's outcome."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            name = f"{command} --dry-run" if dry_run_flag and kwargs.get(dry_run_flag) else command
            started, code, error = utc_now(), 1, None
            try:
                result = func(*args, **kwargs)
                code = 0
                return result
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
                if isinstance(exc.__context__, WriterBusy):
                    ctx.ensure_object(dict).pop("settings", None)  # refused: nothing was done
                elif code and exc.__context__ is not None:  # ``fail`` in ``run``'s except
                    error = str(exc.__context__)
                raise
            finally:
                settings = (ctx.obj or {}).get("settings")
                if isinstance(settings, Settings):
                    counts = (ctx.obj or {}).get("run_counts") or {}
                    if error is not None:
                        error = redact_text(error, settings.secrets)
                    _record(settings, RunRecord(name, started, utc_now(), code, counts, error))

        return wrapper  # type: ignore[return-value]

    return decorate


def note_run(counts: Mapping[str, object]) -> None:
    """Note the counts of the run under way (calls per outcome, API requests) for its record:
    the integer values of ``counts``."""
    ctx = click.get_current_context()
    ctx.ensure_object(dict)
    ctx.obj["run_counts"] = {
        k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)
    }


def report_counts(report: Report) -> dict[str, int]:
    """A run's report as the counts its record keeps."""
    return {**{o: report.count(o) for o in OUTCOMES}, "api_requests": report.api_requests}


def _record(settings: Settings, record: RunRecord) -> None:
    path = settings.state_dir / "ledger.sqlite3"
    if not path.is_file():
        return
    try:
        ledger = Ledger(path)
        try:
            ledger.add_run(record)
        finally:
            ledger.close()
    except (OSError, sqlite3.Error, ConfigError) as exc:
        log.warning("could not record this run in %s: %s", path, exc)
