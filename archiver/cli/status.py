"""``exotel-archiver status`` (the screen an operator reads first), and ``recorded``: the
record of each ``archive``, ``backfill`` and ``run``, which it shows as the last run."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from archiver.cli import main
from archiver.cli._shared import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    fail,
    make_settings,
    run,
    settings_options,
)
from archiver.config import Settings, default_state_dir, read_config_file
from archiver.errors import ConfigError
from archiver.ledger import Ledger, RunRecord, WriterBusy, utc_now
from archiver.liveness import STOPPED
from archiver.options import OPTIONS, OPTIONS_BY_KEY
from archiver.redact import redact_text
from archiver.report import OUTCOMES, Report
from archiver.status import ATTENTION, CONFIG, NothingArchivedYet, Status, gather_status

log = logging.getLogger("archiver.cli")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@main.command(example="exotel-archiver status --json")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@settings_options("status")
@click.pass_context
def status(ctx: click.Context, /, as_json: bool, **cli: Any) -> None:
    """What an operator reads first: the destination and its identity, the last run, calls
    archived / rescued / pending / not ready / failed (with the failure reasons; rescued calls:
    recording stored from the v1 listing, v3 details still to come), the manifest's last
    seal, the oldest unarchived call against Exotel's retention, the bucket's Object Lock, and
    what to do next. Sends Exotel nothing; reads the ledger read-only (it may run beside the
    worker; SQLite may create its empty -wal/-shm files).

    Exit code 0 when nothing needs attention; 1 when something does (failed calls, the oldest
    unarchived call near daemon.source_retention, a last run that stopped on an error or
    without finishing, calls stuck longer than daemon.stuck_after, pending calls or unsealed
    entries with no process archiving, rescued calls whose enrichment failed); rescued calls
    waiting for enrichment alone are not a failure (0); 2 for a
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
    lines.append(f"last run     {_run_line(s.last_run, s.last_run_state)}")
    c = s.calls
    rescued = f", rescued {c['rescued']}" if c["rescued"] else ""
    lines.append(
        f"calls        archived {c['archived']}{rescued}, pending {c['pending']}, not ready "
        f"{c['not_ready']}, failed {c['failed']}, no recording {c['no_recording']}"
    )
    for f in s.failures:
        example = f": {f.example}" if f.example else ""
        lines.append(f"  failed     {f.count} {f.reason}{example}")
    if c["rescued"]:
        lines += _rescued_lines(s)
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


def _rescued_lines(s: Status) -> list[str]:
    """The rescued calls: audio safe, not complete (``archiver.status.Rescued``)."""
    r = s.rescued
    never = " (enrich = never: they stay rescued)" if r.enrich == "never" else ""
    since = f", the earliest rescued at {r.oldest_waiting_since}" if r.oldest_waiting_since else ""
    lines = [f"  rescued    {r.waiting} waiting for enrichment{since}{never}"]
    for f in r.failures:
        example = f": {f.example}" if f.example else ""
        lines.append(f"  rescued    {f.count} enrichment failed ({f.reason}){example}")
    if r.unlocked_objects:
        lines.append(
            f"  rescued    {r.unlocked_objects} object(s) not locked yet (retention class bound "
            f"at enrichment), the earliest stored at {r.oldest_unlocked_since}"
        )
    return lines


def _run_line(r: RunRecord | None, state: str | None) -> str:
    if r is None:
        return "none recorded"
    if r.ended_at is None:
        if state == STOPPED:
            return f"{r.command}, started {r.started_at}, stopped without finishing (killed?)"
        return f"{r.command}, started {r.started_at}, still running (pid {r.pid})"
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
    """Record each run of the decorated command in the ledger — the "last run" of ``status``:
    a row as soon as its settings are read (no end yet: a run killed with -9 or by a host
    crash keeps it so), completed when it ends with its exit code, the counts it noted
    (``note_run``) and the error it stopped on. ``dry_run_flag`` names a flag that makes it
    ``COMMAND --dry-run``.

    A run whose settings cannot be read (a bad flag in a unit: a crash loop) is recorded with
    exit 2 and its error when its state directory can still be found and already holds a
    ledger (``_state_dir_anyway``). Nothing is recorded when another process held the writer
    lock (the run was refused: that process's run is the one that counts), or when the state
    directory has no ledger (nothing was done; none is created for the record); a failure to
    record is logged, never the command's outcome."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            name = f"{command} --dry-run" if dry_run_flag and kwargs.get(dry_run_flag) else command
            started, code, error = utc_now(), 1, None
            run_id: list[int] = []

            def on_settings(settings: Settings) -> None:
                if (row := _start(settings, name, started)) is not None:
                    run_id.append(row)

            ctx.ensure_object(dict)["on_settings"] = on_settings
            try:
                result = func(*args, **kwargs)
                code = 0
                return result
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
                cause = exc.__context__
                if isinstance(cause, WriterBusy):
                    refused_by = ctx.obj.pop("settings", None)  # refused: nothing was done
                    if run_id and isinstance(refused_by, Settings):
                        _write(refused_by.state_dir, lambda ledger: ledger.drop_run(run_id[0]))
                    raise
                if code and cause is not None:  # ``fail`` in ``run``'s except
                    error = str(cause)
                if code == EXIT_INTERRUPTED:
                    error = "interrupted (SIGINT or SIGTERM): stopped before it finished"
                refused = isinstance(cause, ConfigError) and "settings" not in ctx.obj
                if code == EXIT_USAGE and refused:  # its settings could not be read
                    record = RunRecord(name, started, utc_now(), code, {}, error)
                    _record_refused_start(ctx, kwargs, record)
                raise
            finally:
                settings = (ctx.obj or {}).get("settings")
                if isinstance(settings, Settings) and (ctx.obj or {}).get("did_nothing"):
                    if run_id:  # a worker stopped while it waited for the lock: not a run
                        _write(settings.state_dir, lambda ledger: ledger.drop_run(run_id[0]))
                elif isinstance(settings, Settings):
                    counts = (ctx.obj or {}).get("run_counts") or {}
                    if error is not None:
                        error = redact_text(error, settings.secrets)
                    record = RunRecord(name, started, utc_now(), code, counts, error)
                    _record(settings.state_dir, run_id[0] if run_id else None, record)

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


def _ledger_at(state_dir: Path) -> Ledger | None:
    """The state directory's ledger, opened to write a run's record; None when there is none
    (or it cannot be opened: logged)."""
    path = state_dir / "ledger.sqlite3"
    if not path.is_file():
        return None
    try:
        return Ledger(path)
    except (OSError, sqlite3.Error, ConfigError) as exc:
        log.warning("could not record this run in %s: %s", path, exc)
        return None


def _write(state_dir: Path, what: Callable[[Ledger], T]) -> T | None:
    ledger = _ledger_at(state_dir)
    if ledger is None:
        return None
    try:
        return what(ledger)
    except (OSError, sqlite3.Error) as exc:
        log.warning("could not record this run in %s: %s", ledger.path, exc)
        return None
    finally:
        ledger.close()


def _start(settings: Settings, command: str, started: str) -> int | None:
    pid = os.getpid()
    return _write(settings.state_dir, lambda ledger: ledger.start_run(command, started, pid))


def _record(state_dir: Path, run_id: int | None, record: RunRecord) -> None:
    _write(state_dir, lambda ledger: ledger.end_run(run_id, record))


def _record_refused_start(ctx: click.Context, kwargs: Mapping[str, Any], record: RunRecord) -> None:
    """Record a run whose settings were refused (exit 2), in the ledger of the state directory
    it would have used, if that can be found and holds a ledger: the error redacted with the
    secrets the environment holds."""
    state_dir = _state_dir_anyway(ctx, kwargs)
    if state_dir is None:
        return
    env = os.environ
    secrets = [env.get(o.env, "") for o in OPTIONS if o.secret]
    secrets += [s.partition(":")[2] for s in secrets]
    error = redact_text(record.error, secrets) if record.error else None
    _record(state_dir, None, dataclasses.replace(record, error=error))


def _state_dir_anyway(ctx: click.Context, kwargs: Mapping[str, Any]) -> Path | None:
    """The state directory a run would use, found without its (refused) settings: its
    --state-dir flag, ARCHIVER_STATE_DIR, ``state_dir`` in its config file, else the default
    (``$STATE_DIRECTORY``...). None when the config file names none it can read."""
    opt = OPTIONS_BY_KEY["state_dir"]
    env = os.environ
    if kwargs.get(opt.key):
        return Path(str(kwargs[opt.key])).expanduser()
    if env.get(opt.env):
        return Path(env[opt.env]).expanduser()
    config = (
        kwargs.get("config_file") or (ctx.obj or {}).get("config") or env.get("ARCHIVER_CONFIG")
    )
    if config:
        # Only a file that reads cleanly: a refused one (a typo such as [archivr]) may mean a
        # state_dir it does not show, and the default could be another account's ledger.
        try:
            values = read_config_file(Path(str(config)).expanduser())
        except ConfigError:
            return None
        value = values.get(opt.key)
        if isinstance(value, str) and value:
            return Path(value).expanduser()
    return default_state_dir(env)
