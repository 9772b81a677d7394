"""The ``exotel-archiver`` command: a thin click shell over plain functions.

Each command turns its flags into ``Settings`` (``archiver.config``), calls one plain async
function (``archive_calls``, ``run_demo``, ``run_simulator``) and turns the outcome into output
and an exit code:

* 0 — done (calls that are still active count as done for now: they are reported, not lost);
* 1 — done, but some calls failed (each is listed with its reason);
* 2 — usage or configuration error (bad flag, missing credentials, bucket missing or denied).

Expected errors print one line naming the problem and the fix, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from archiver import __version__
from archiver.archive import archive_calls
from archiver.config import OPTIONS, Settings, load_settings
from archiver.errors import (
    ArchiverError,
    ConfigError,
    ExotelAuthError,
    InvalidCallSid,
    StoragePermanent,
)
from archiver.exotel.models import validate_call_sid
from archiver.log import setup_logging
from archiver.report import (
    ALREADY_ARCHIVED,
    ARCHIVED,
    FAILED,
    NO_RECORDING,
    NOT_READY,
    Report,
)

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def settings_options(func: F) -> F:
    """Add a flag for every non-secret option of ``archiver.config.OPTIONS``."""
    for opt in reversed(OPTIONS):
        if opt.flag is None:
            continue
        kind: click.ParamType[Any] | type | None = None
        if opt.kind == "choice":
            kind = click.Choice(opt.choices, case_sensitive=False)
        elif opt.kind == "int":
            kind = int
        elif opt.kind == "float":
            kind = float
        default = f" [default: {opt.default}]" if opt.default is not None else ""
        func = click.option(
            opt.flag,
            opt.key,
            type=kind,
            default=None,
            help=f"{opt.help}{default} [env: {opt.env}; config: {opt.name}]",
        )(func)
    return func


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; map expected errors to one clean line and exit code 2."""
    try:
        return asyncio.run(coro)
    except (ConfigError, ExotelAuthError, StoragePermanent, InvalidCallSid) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except ArchiverError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILURES)
    except KeyboardInterrupt:
        click.echo(
            "interrupted: nothing half-done was recorded; run the same command again", err=True
        )
        sys.exit(130)


def make_settings(ctx: click.Context, cli: dict[str, Any]) -> Settings:
    config_file: Path | None = ctx.obj.get("config") if ctx.obj else None
    try:
        settings = load_settings(cli, config_file=config_file)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    setup_logging(settings.log_level, secrets=settings.secrets)
    return settings


def date_range_options(*, required: bool = False) -> Callable[[F], F]:
    """--since/--until: days of the calls' creation, in the account's time zone (inclusive)."""

    def decorate(func: F) -> F:
        for name, word in (("--until", "before"), ("--since", "after")):
            func = click.option(
                name,
                type=click.DateTime(["%Y-%m-%d"]),
                required=required,
                help=f"Only calls created on or {word} this day (YYYY-MM-DD, account time zone).",
            )(func)
        return func

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="exotel-archiver")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ARCHIVER_CONFIG",
    help="TOML config file with [exotel] and [archiver] tables. [env: ARCHIVER_CONFIG]",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Archive Exotel Voice v3 call recordings into S3-compatible storage, with a checksum
    manifest.

    Try it with no account: `exotel-archiver demo`.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


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
    with _progress(len(call_sids), "Archiving") as advance:
        result = run(archive_calls(settings, call_sids, on_result=advance))
    _print_report(result)
    _write_report(result, report)
    sys.exit(EXIT_FAILURES if result.failed else EXIT_OK)


@main.command()
@date_range_options()
@click.option(
    "--sample",
    type=click.FloatRange(0, 1, min_open=True),
    help="Re-read only this fraction of the objects (e.g. 0.05 for a cheap daily audit).",
)
@click.option(
    "--seed",
    default=None,
    help="Which sample: the same seed picks the same objects. Default: today's date, so daily "
    "samples rotate through the archive.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the result as JSON to this file.",
)
@settings_options
@click.pass_context
def verify(
    ctx: click.Context,
    /,
    since: Any,
    until: Any,
    sample: float | None,
    seed: str | None,
    report: Path | None,
    **cli: Any,
) -> None:
    """Fixity audit: check the manifest chain in the destination, re-read the objects it names
    and compare size and SHA-256, and name every object no manifest entry names.

    Exit code 0 only when everything checked is OK.
    """
    from datetime import date

    from archiver.verify import ALTERED, MISSING, OK, UNEXPECTED, run_verify

    settings = make_settings(ctx, cli)
    with _progress(None, "Verifying") as advance:
        result = run(
            run_verify(
                settings,
                since=_day(since),
                until=_day(until),
                sample=sample,
                seed=seed if seed is not None else date.today().isoformat(),
                on_object=advance,
            )
        )
    for problem in result.chain.problems:
        click.echo(f"  CHAIN      {problem}", err=True)
    for check in result.checks:
        if check.status != OK:
            click.echo(f"  {check.status.upper():10} {check.key}", err=True)
    state = "intact" if not result.chain.problems else "BROKEN"
    click.echo(
        f"segments: {len(result.chain.segments)} ({state}); "
        f"objects ok: {result.count(OK)}, missing: {result.count(MISSING)}, "
        f"altered: {result.count(ALTERED)}, unexpected: {result.count(UNEXPECTED)}"
    )
    _write_json(result.as_dict(), report)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILURES)


@main.group()
def manifest() -> None:
    """The checksum manifest: rebuild the local ledger from the destination, or export it."""


@manifest.command()
@settings_options
@click.pass_context
def rebuild(ctx: click.Context, /, **cli: Any) -> None:
    """Restore a lost ledger (and manifest.jsonl) from the manifest segments in the destination.

    The state directory must not have a ledger with entries already; the chain must be intact.
    """
    from archiver.verify import run_rebuild

    settings = make_settings(ctx, cli)
    chain = run(run_rebuild(settings))
    click.echo(
        f"restored {len(chain.entries)} entries from {len(chain.segments)} segment(s) into "
        f"{settings.state_dir}"
    )


@manifest.command("export")
@date_range_options()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for manifest.jsonl and SHA256SUMS.",
)
@settings_options
@click.pass_context
def export_manifest_cmd(
    ctx: click.Context, /, since: Any, until: Any, out: Path, **cli: Any
) -> None:
    """Write the manifest of a date range as JSON lines and as a sha256sum listing.

    In a downloaded mirror of the destination, `sha256sum -c SHA256SUMS` checks every object.
    """
    from archiver.export import export_manifest

    settings = make_settings(ctx, cli)
    done = run(export_manifest(settings, out, since=_day(since), until=_day(until)))
    click.echo(
        f"{done.entries} entries ({_human(done.bytes)}) written to {out}/manifest.jsonl "
        f"and {out}/SHA256SUMS"
    )


@main.command("export-bag")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@date_range_options()
@click.option("--sha512", is_flag=True, help="Also write manifest-sha512.txt.")
@settings_options
@click.pass_context
def export_bag_cmd(
    ctx: click.Context, /, directory: Path, since: Any, until: Any, sha512: bool, **cli: Any
) -> None:
    """Write a BagIt 1.0 bag (RFC 8493) of a date range into DIRECTORY (new or empty)."""
    from archiver.export import export_bag

    settings = make_settings(ctx, cli)
    done = run(export_bag(settings, directory, since=_day(since), until=_day(until), sha512=sha512))
    click.echo(f"bag written to {directory}: {done.entries} objects, {_human(done.bytes)}")


def _day(value: Any) -> Any:
    return value.date() if value is not None else None


@main.command()
@date_range_options(required=True)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the result as JSON to this file.",
)
@settings_options
@click.pass_context
def reconcile(
    ctx: click.Context, /, since: Any, until: Any, report: Path | None, **cli: Any
) -> None:
    """Compare Exotel's own list of calls (v1) for a date range with the archive: each call is
    archived, missing, no_recording_at_source or still_active.

    Exit code 0 only when nothing is missing.
    """
    from archiver.reconcile import reconcile as run_reconcile

    if since > until:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    settings = make_settings(ctx, cli)
    result = run(run_reconcile(settings, since.date(), until.date()))
    for call in result.calls:
        if call["state"] == "missing":
            click.echo(f"  MISSING    {call['call_sid']} (created {call['created']})", err=True)
    counts = result.counts()
    click.echo(", ".join(f"{state.replace('_', ' ')}: {n}" for state, n in counts.items()))
    _write_json(result.as_dict(), report)
    sys.exit(EXIT_OK if result.complete else EXIT_FAILURES)


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("exotel-archive-demo"),
    show_default=True,
    help="Where the demo archives to (recordings/ and state/ inside it).",
)
@click.option(
    "--calls",
    type=click.IntRange(1, 10_000),
    default=24,
    show_default=True,
    help="How many simulated calls the day has.",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Seed of the simulated day (same seed, same calls).",
)
def demo(directory: Path, calls: int, seed: int) -> None:
    """Archive a simulated day of calls into a local directory: no account, no bucket needed.

    Starts the built-in Exotel simulator on 127.0.0.1, archives its calls with the real worker,
    and prints what it archived and where the manifest is.
    """
    from archiver.demo import run_demo

    setup_logging("warning")
    click.echo(f"Starting the Exotel simulator on 127.0.0.1 with {calls} calls of yesterday...")
    with _progress(calls, "Archiving") as advance:
        result = run(run_demo(directory, calls=calls, seed=seed, on_result=advance))
    _print_report(result, details=True)
    click.echo(f"\nRecordings: {result.destination}")
    click.echo(f"Manifest:   {result.manifest}  (one JSON line per object: key, size, sha256)")
    click.echo("Run the demo again: nothing is archived twice.")
    sys.exit(EXIT_FAILURES if result.failed else EXIT_OK)


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Keep loopback unless you need it elsewhere.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port (0 picks a free one).",
)
@click.option(
    "--calls",
    type=click.IntRange(0, 1_000_000),
    default=100,
    show_default=True,
    help="Calls of yesterday (IST) to serve.",
)
@click.option(
    "--min-size",
    type=click.IntRange(1),
    default=32 * 1024,
    show_default=True,
    help="Smallest recording, in bytes.",
)
@click.option(
    "--max-size",
    type=click.IntRange(1),
    default=256 * 1024,
    show_default=True,
    help="Largest recording, in bytes.",
)
@click.option(
    "--url-ttl",
    type=click.FloatRange(1),
    default=300.0,
    show_default=True,
    help="Lifetime of pre-signed recording URLs, in seconds (Exotel's default: 300).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the data set.")
@click.option(
    "--fail-429",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of API requests answered 429 (with Retry-After).",
)
@click.option(
    "--fail-500",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of API requests answered 500.",
)
@click.option(
    "--cut",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of recording downloads cut off mid-body.",
)
@click.option(
    "--bandwidth",
    type=click.IntRange(1),
    default=None,
    help="Cap each recording download at this many bytes/s.",
)
def simulate(
    host: str,
    port: int,
    calls: int,
    min_size: int,
    max_size: int,
    url_ttl: float,
    seed: int,
    fail_429: float,
    fail_500: float,
    cut: float,
    bandwidth: int | None,
) -> None:
    """Run the built-in Exotel simulator until interrupted (v3 call details, v1 bulk listing,
    expiring pre-signed recording URLs)."""
    from datetime import datetime, timedelta

    from archiver.exotel.models import IST
    from archiver.simulator import Simulator, run_simulator

    if min_size > max_size:
        raise click.BadParameter("--min-size must not exceed --max-size", param_hint="--min-size")
    sim = Simulator(url_ttl=url_ttl, seed=seed)
    sim.populate(
        calls, day=(datetime.now(IST) - timedelta(days=1)).date(), sizes=(min_size, max_size)
    )
    sim.faults.api_429_rate, sim.faults.api_500_rate, sim.faults.cut_rate = fail_429, fail_500, cut
    sim.faults.bandwidth = bandwidth

    def ready(base_url: str) -> None:
        click.echo(f"Exotel simulator listening on {base_url} with {len(sim.calls)} calls.")
        click.echo("Point the archiver at it:")
        click.echo(f"  export EXOTEL_API_URL={base_url} EXOTEL_V1_API_URL={base_url}")
        click.echo(f"  export EXOTEL_ACCOUNT_SID={sim.account_sid}")
        click.echo(f"  export EXOTEL_API_KEY={sim.api_key} EXOTEL_API_TOKEN={sim.api_token}")
        sample = " ".join(list(sim.calls)[:3])
        click.echo(f"  exotel-archiver archive --destination ./archive {sample}")
        click.echo("Press Ctrl-C to stop.")

    setup_logging("info")
    try:
        asyncio.run(run_simulator(sim, host, port, on_ready=ready))
    except KeyboardInterrupt:
        click.echo("simulator stopped")
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}; try --port 0", err=True)
        sys.exit(EXIT_USAGE)


class _progress:
    """Progress on a terminal: a click progress bar when the total is known, a running count
    otherwise; nothing when stderr is not a terminal (the log lines say enough)."""

    def __init__(self, total: int | None, label: str) -> None:
        self._tty = sys.stderr.isatty()
        self._label = label
        self._done = 0
        self._bar: Any = (
            click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
            if self._tty and total is not None
            else None
        )

    def __enter__(self) -> Callable[[Any], None]:
        if self._bar is not None:
            self._bar.__enter__()
        return self._advance

    def _advance(self, _item: Any) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self._tty:
            click.echo(f"\r{self._label}: {self._done}", nl=False, err=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        elif self._tty and self._done:
            click.echo("", err=True)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _print_report(report: Report, *, details: bool = False) -> None:
    if details:
        for r in report.results:
            if r.outcome == ARCHIVED:
                click.echo(
                    f"  archived  {r.call_sid}  {len(r.objects)} recording(s), {_human(r.bytes)}"
                )
    click.echo(
        f"archived: {report.count(ARCHIVED)} calls ({_human(report.bytes_archived)}), "
        f"already archived: {report.count(ALREADY_ARCHIVED)}, "
        f"no recording: {report.count(NO_RECORDING)}, "
        f"not ready (still active): {report.count(NOT_READY)}, "
        f"failed: {report.count(FAILED)}; Exotel API requests: {report.api_requests}, "
        f"storage requests: {report.storage_requests}, manifest segments sealed: "
        f"{report.segments_sealed}"
    )
    for r in report.results:
        if r.outcome == NOT_READY:
            click.echo(f"  not ready  {r.call_sid}: {r.detail}")
    for r in report.failed:
        click.echo(f"  FAILED     {r.call_sid}: {r.detail}", err=True)


def _write_report(report: Report, path: Path | None) -> None:
    _write_json(report.as_dict(), path)


def _write_json(data: object, path: Path | None) -> None:
    if path is None:
        return
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        click.echo(f"error: cannot write the report to {path}: {exc.strerror}", err=True)
        sys.exit(EXIT_USAGE)
