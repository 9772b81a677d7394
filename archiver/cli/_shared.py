"""What every command shares: settings flags, running a coroutine with clean errors, exit
codes, progress and printing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from archiver.cli._help import SectionedOption
from archiver.config import Settings, load_settings
from archiver.errors import (
    ArchiverError,
    ConfigError,
    ExotelAuthError,
    InvalidCallSid,
    StoragePermanent,
)
from archiver.files import write_atomic
from archiver.ledger import ObjectRecord
from archiver.log import (
    emit,
    loop_exception_handler,
    setup_logging,
    terminal_handler,
    wants_json,
)
from archiver.options import OPTIONS, Option
from archiver.report import (
    ALREADY_ARCHIVED,
    ARCHIVED,
    FAILED,
    NO_RECORDING,
    NOT_READY,
    Report,
)
from archiver.state_errors import state_problem

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130
SCRIPT = "exotel-archiver"
"""The console script's name (pyproject.toml, ``[project.scripts]``)."""
progress_log = logging.getLogger("archiver.progress")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def settings_options(command: str) -> Callable[[F], F]:
    """Add ``--config`` and a flag for every non-secret option that ``command`` reads (its path,
    such as ``"retention plan"``: ``archiver.options.Option.commands``), each in its section."""

    def decorate(func: F) -> F:
        for opt in reversed(OPTIONS):
            if opt.flag is None or command not in opt.commands:
                continue
            func = click.option(
                opt.flag,
                opt.key,
                cls=SectionedOption,
                section=opt.group,
                type=_click_type(opt),
                default=None,
                help=_help(opt),
            )(func)
        return click.option(
            "--config",
            "config_file",
            cls=SectionedOption,
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML config file ([exotel], [archiver], [daemon], [retention] tables); also "
            "accepted before the command. [env: ARCHIVER_CONFIG]",
        )(func)

    return decorate


def _click_type(opt: Option) -> click.ParamType[Any] | type | None:
    if opt.kind == "choice":
        return click.Choice(opt.choices, case_sensitive=False)
    if opt.kind == "path":
        return click.Path(file_okay=False)
    return {"int": int, "float": float}.get(opt.kind)


def _help(opt: Option) -> str:
    default = f" [default: {opt.default}]" if opt.default is not None else ""
    return f"{opt.help}{default} [env: {opt.env}; config: {opt.name}]"


def run(coro: Coroutine[Any, Any, T], *, state_dir: Path | None = None) -> T:
    """Run ``coro``; map expected errors to one clean line and exit code 2 (configuration) or
    1. An ``OSError``/``sqlite3.Error`` of the worker's own files (``state_dir``: a full disk,
    the directory removed or read-only) is one line too: ``archiver.state_errors``."""
    try:
        return asyncio.run(_reporting_loop_errors(coro))
    except (ConfigError, ExotelAuthError, StoragePermanent, InvalidCallSid) as exc:
        fail(f"error: {exc}", EXIT_USAGE)
    except ArchiverError as exc:
        fail(f"error: {exc}", EXIT_FAILURES)
    except BrokenPipeError:
        raise  # the reader of stdout is gone: not a state problem (archiver.cli._pipe)
    except (OSError, sqlite3.Error) as exc:
        problem = state_problem(exc, state_dir)
        fail(f"error: {problem.message}", EXIT_USAGE if problem.config else EXIT_FAILURES)
    except (KeyboardInterrupt, asyncio.CancelledError):
        fail(
            "interrupted: nothing half-done was recorded; run the same command again",
            EXIT_INTERRUPTED,
        )


async def _reporting_loop_errors(coro: Coroutine[Any, Any, T]) -> T:
    """``coro``, with loop errors logged, and SIGTERM (``systemctl stop``, ``kill``) stopping it
    the way Ctrl-C does: the main task is cancelled, so every transfer in flight is aborted
    (an open multipart upload included) and nothing half-done is recorded. ``run`` (the
    worker) installs its own handler, which drains instead."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception_handler)
    main = asyncio.current_task()
    handled = main is not None and threading.current_thread() is threading.main_thread()
    if handled:  # signals reach the main thread only (a command run in a thread: none)
        assert main is not None
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        return await coro
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)


def fail(message: str, code: int) -> NoReturn:
    """Say ``message`` on stderr (a JSON event with ``exit_code`` in JSON mode) and exit."""
    emit(message, level=logging.ERROR, logger="archiver.cli", fields={"exit_code": code})
    sys.exit(code)


def make_settings(ctx: click.Context, cli: dict[str, Any]) -> Settings:
    """The settings of a command from its flags (``cli``), the environment and the config file:
    ``--config`` after the command wins over ``--config`` before it."""
    config_file: Path | None = cli.pop("config_file", None) or (
        ctx.obj.get("config") if ctx.obj else None
    )
    # Until the settings are read, the format comes from --log-format or the environment: a
    # configuration error under systemd is a JSON line like every other.
    setup_logging(fmt="json" if wants_json(cli.get("log_format")) else "text")
    try:
        settings = load_settings(cli, config_file=config_file)
    except ConfigError as exc:
        fail(f"error: {exc}", EXIT_USAGE)
    setup_logging(settings.log_level, secrets=settings.secrets, fmt=settings.log_format)
    ctx.ensure_object(dict)["settings"] = settings  # for the record of the run (cli/status.py)
    if (started := ctx.obj.get("on_settings")) is not None:
        started(settings)  # the record of the run begins (cli/status.py ``recorded``)
    return settings


def report_option(what: str = "the result") -> Callable[[F], F]:
    """--report FILE: also write ``what`` as JSON to FILE."""
    return click.option(
        "--report",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"Also write {what} as JSON to this file.",
    )


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


class Progress:
    """Progress of a run over calls.

    On a terminal: a bar (position, bytes archived, calls per second, time left), or a running
    count when the total is unknown, drawn through the log handler (``archiver.log.
    TerminalHandler``): a log line clears the bar, is written, and the bar is drawn again below
    it. Elsewhere (systemd, a pipe, a log file, JSON logs): one plain log line every ``every``
    seconds with the same figures.
    """

    def __init__(self, total: int | None, label: str, *, every: float = 30.0) -> None:
        self._screen = terminal_handler()
        self._label = label
        self._total = total
        self._done = 0
        self._bytes = 0
        self._started = time.monotonic()
        self._every = every
        self._last_line = self._started

    def __enter__(self) -> Callable[[Any], None]:
        if self._screen is not None:
            self._screen.show(self)
        return self._advance

    def _figures(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        return f"{human(self._bytes)}, {self._done / elapsed:.1f} calls/s"

    def _left(self) -> str:
        if not self._total or not self._done or self._done >= self._total:
            return ""
        rate = self._done / max(time.monotonic() - self._started, 1e-6)
        return f"about {(self._total - self._done) / rate:.0f} s left"

    def line(self, width: int) -> str:
        """The bar as the terminal shows it, at most ``width`` characters."""
        if self._total is None:
            return f"{self._label}: {self._done} calls, {self._figures()}"
        figures = f"  {self._done}/{self._total}  {self._figures()}"
        if left := self._left():
            figures += f", {left}"
        room = min(36, width - len(self._label) - len(figures) - 4)
        if room < 5:
            return f"{self._label}{figures}"
        filled = room * self._done // max(self._total, 1)
        return f"{self._label}  [{'#' * filled}{'-' * (room - filled)}]{figures}"

    def _advance(self, result: Any) -> None:
        self._done += 1
        self._bytes += getattr(result, "bytes", 0) if getattr(result, "stored", 0) else 0
        if self._screen is not None:
            self._screen.redraw()
        elif time.monotonic() - self._last_line >= self._every:
            self._last_line = time.monotonic()
            self._log_line()

    def _log_line(self) -> None:
        of = f"/{self._total}" if self._total is not None else ""
        left = f", {self._left()}" if self._left() else ""
        progress_log.info(
            "%s: %d%s calls, %s%s", self._label, self._done, of, self._figures(), left
        )

    def __exit__(self, *exc: object) -> None:
        if self._screen is not None:
            self._screen.done()


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def program() -> str:
    """This program as words that run it again when pasted into a shell: ``exotel-archiver``
    when that name on PATH is this very script; else the script's absolute path (a venv's
    ``bin/`` is seldom on PATH); else, run as ``python -m archiver``, this interpreter with
    ``-m archiver``. Quoted for the shell."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == SCRIPT and script.is_file():
        found = shutil.which(SCRIPT)
        if found is not None and Path(found).resolve() == script.resolve():
            return SCRIPT
        return shlex.quote(os.path.abspath(script))
    return f"{shlex.quote(sys.executable)} -m archiver"


def objects_text(objects: list[ObjectRecord]) -> str:
    """What ``objects`` are, counted apart: ``2 recording(s), 1 other object(s) (call.json)``."""
    recordings = sum(o.kind == "recording" for o in objects)
    others = [o.key.rsplit("/", 1)[-1] for o in objects if o.kind != "recording"]
    text = f"{recordings} recording(s)"
    if others:
        names = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        text += f", {len(others)} other object(s) ({names})"
    return text


def print_report(report: Report, *, details: bool = False) -> None:
    if details:
        for r in report.results:
            if r.outcome == ARCHIVED:
                click.echo(f"  archived  {r.call_sid}  {objects_text(r.objects)}, {human(r.bytes)}")
    # A local directory takes no requests: its count would only read as "nothing was stored".
    s3 = f"S3 requests: {report.storage_requests}, " if report.destination.startswith("s3:") else ""
    click.echo(
        f"archived: {report.count(ARCHIVED)} calls ({human(report.bytes_archived)}), "
        f"already archived: {report.count(ALREADY_ARCHIVED)}, "
        f"no recording: {report.count(NO_RECORDING)}, "
        f"not ready (still active): {report.count(NOT_READY)}, "
        f"failed: {report.count(FAILED)}; Exotel API requests: {report.api_requests}, "
        f"{s3}manifest segments sealed: {report.segments_sealed}"
    )
    for r in report.results:
        if r.outcome == NOT_READY:
            click.echo(f"  not ready  {r.call_sid}: {r.detail}")
    for r in report.failed:
        emit(
            f"  FAILED     {r.call_sid}: {r.detail}",
            level=logging.ERROR,
            logger="archiver.cli",
            call_sid=r.call_sid,
        )


def write_report(report: Report, path: Path | None) -> None:
    write_json(report.as_dict(), path)


def write_json(data: object, path: Path | None) -> None:
    if path is None:
        return
    try:
        write_atomic(path, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        fail(f"error: cannot write the report to {path}: {exc.strerror}", EXIT_USAGE)


def day(value: Any) -> Any:
    """A click DateTime as a date (or None)."""
    return value.date() if value is not None else None
