"""Logging set-up: one handler on stderr, with every record scrubbed of secrets.

The redaction filter (``archiver.redact.Redactor``) sits on the handler, so it sees every record
that reaches the output, whichever library logged it: known secret values (the Exotel key and
token, the webhook secret, and the AWS secret key and session token found in the environment),
signature-looking URL parameters, Authorization and X-Amz-Security-Token headers are replaced
before anything is written. Library loggers (botocore, boto3, s3transfer, urllib3, aiohttp,
asyncio) show WARNING and above; INFO only when the archiver's own level is DEBUG (botocore's
"Found credentials in environment variables." is not news on every command), and never DEBUG:
botocore's DEBUG output prints every request's headers. Should one be turned up anyway, its lines
still pass the redactor.

On a terminal a progress bar shares stderr with the log: the handler (``TerminalHandler``) knows
the bar on screen, clears its line before it writes a record and draws it again after, so a log
line never starts in the middle of the bar.

Two formats: ``text`` (one readable line, for a terminal) and ``json`` (one JSON object per line —
``time``, ``level``, ``logger``, ``message``, ``call_sid`` when the line is about a call — for
journald and log shippers). ``auto`` picks text on a terminal and JSON otherwise. journald adds
its own timestamp; the JSON keeps one so the lines stand alone when shipped elsewhere.

In JSON mode *every* line on stderr is a JSON object, not only log records (journald and log
shippers parse each line alone):

* ``emit()`` writes the commands' own stderr lines (``error: ...``, the worker's ``stopped: ...``
  summary) as events, with structured fields (the summary's counters), whatever the log level;
* Python warnings go through logging (``py.warnings``); an exception nobody catches (in the main
  thread, another thread, or one "ignored" by the interpreter) is one ``critical`` event with its
  traceback in ``error``;
* anything else written to ``sys.stderr`` — a library's ``print``, click's usage errors, the
  listing lines of ``verify`` — is caught by ``JsonStderr`` and written as one event per line
  (logger ``stderr``), redacted like any record.

``wants_json()`` decides before the settings are known (usage and configuration errors): the
``--log-format`` value when there is one, else ``ARCHIVER_LOG_FORMAT``, else ``auto``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, TextIO

from archiver.options import OPTIONS
from archiver.redact import Redactor

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_CALL = re.compile(r"\bcall ([A-Za-z0-9_-]{6,64})\b")
_SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    *(o.env for o in OPTIONS if o.secret),
)
"""Environment variables whose values are secrets: boto3's, and ours (known to the redactor
even before the settings are read, so a configuration error cannot show them)."""
_LIBRARY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "aiohttp", "asyncio")
_CORE = ("time", "level", "logger", "message", "call_sid", "error")
"""The keys every JSON line has (``call_sid`` and ``error`` when known): fields never replace
them."""
FORMAT_VARIABLE = "ARCHIVER_LOG_FORMAT"
_PROBLEM = re.compile(r"(?i)^\s*(error|failed|traceback|usage:)")


def environment_secrets() -> tuple[str, ...]:
    """The secrets in the environment (boto3's and ours), for the redactor; a USER:PASSWORD
    value's password on its own too."""
    values = [v for name in _SECRET_VARIABLES if (v := os.environ.get(name, ""))]
    return tuple(values + [p for v in values if (p := v.partition(":")[2])])


class JsonFormatter(logging.Formatter):
    """One JSON object per record. ``call_sid`` comes from ``extra={"call_sid": ...}`` or, failing
    that, from a ``call <SID>`` phrase in the message (how this code base names calls)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        sid = getattr(record, "call_sid", None)
        if sid is None and (match := _CALL.search(message)):
            sid = match.group(1)
        if sid is not None:
            event["call_sid"] = sid
        fields: Mapping[str, object] = getattr(record, "fields", None) or {}
        event.update((k, v) for k, v in fields.items() if k not in _CORE)
        if record.exc_text:
            event["error"] = record.exc_text
        elif record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False, default=str)


class JsonStderr(io.TextIOBase):
    """``sys.stderr`` in JSON mode: each line written to it becomes one JSON event of the
    ``stderr`` logger (level ``error`` for lines that read as a problem, else ``warning``),
    through ``handler`` (so redacted); a line not ended by a newline is written at ``flush()``.
    The handler itself writes to the stream underneath."""

    def __init__(self, handler: logging.Handler, stream: TextIO) -> None:
        super().__init__()
        self._handler = handler
        self.stream = stream
        self._pending = ""
        self._lock = threading.Lock()
        self._writing = threading.local()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.stream, "encoding", None) or "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.stream, "errors", None)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if getattr(self._writing, "on", False):  # the handler failing: say it plainly
            self.stream.write(text)
            return len(text)
        with self._lock:  # whole lines only, whichever thread writes
            *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._event(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._pending = self._pending, ""
        self._event(line)
        self.stream.flush()

    def _event(self, line: str) -> None:
        line = line.rstrip("\r")
        if not line.strip():
            return
        level = logging.ERROR if _PROBLEM.match(line) else logging.WARNING
        record = logging.LogRecord("stderr", level, __file__, 0, line.strip(), None, None)
        self._writing.on = True
        try:
            self._handler.handle(record)
        finally:
            self._writing.on = False


class Bar(Protocol):
    """A progress bar on screen: one line of text, drawn again whenever asked."""

    def line(self, width: int) -> str:
        """The bar's text now, at most ``width`` characters."""
        ...


_ERASE = "\r\x1b[K"
"""Back to the start of the line and erase it (what every terminal since the VT100 reads)."""


class TerminalHandler(logging.StreamHandler[TextIO]):
    """The archiver's stderr handler. While ``show``n a bar, each record clears the bar's line,
    is written, and the bar is drawn again below it; the bar's own redraws take the handler's
    lock, so a record from another thread never lands inside one."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.bar: Bar | None = None

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        except OSError:  # the terminal gone (hung up): the bar stops, the run goes on
            self.bar = None
        finally:
            self.release()

    def show(self, bar: Bar) -> None:
        """Put ``bar`` on screen (below whatever is written from now on)."""
        with self._held():
            self.bar = bar
            self._draw()

    def redraw(self) -> None:
        """Draw the bar again with its figures of now."""
        with self._held():
            self._draw()

    def done(self) -> None:
        """Leave the bar's last state on screen, end its line, and let records go plainly."""
        with self._held():
            if self.bar is not None:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()
            self.bar = None

    def above(self, text: str) -> None:
        """Write ``text`` (a command's own line) as a record would be: above the bar."""
        with self._held():
            self._clear()
            self.stream.write(text + "\n")
            self._draw()

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar is None:
            super().emit(record)
            return
        self._clear()
        super().emit(record)
        self._draw()

    def _clear(self) -> None:
        if self.bar is not None:
            self.stream.write(_ERASE)

    def _draw(self) -> None:
        if self.bar is None:
            return
        width = max(shutil.get_terminal_size().columns - 1, 20)
        self.stream.write(_ERASE + self.bar.line(width)[:width])
        self.stream.flush()


def terminal_handler() -> TerminalHandler | None:
    """The archiver's handler when it writes text to a terminal (where a bar may be shown)."""
    handler = _handler()
    if (
        isinstance(handler, TerminalHandler)
        and not isinstance(handler.formatter, JsonFormatter)
        and handler.stream.isatty()
    ):
        return handler
    return None


def wants_json(fmt: str | None = None) -> bool:
    """Whether stderr gets JSON: ``fmt`` (a ``--log-format`` value) or, when not given,
    ``$ARCHIVER_LOG_FORMAT``, else ``auto`` (JSON unless stderr is a terminal)."""
    chosen = (fmt or os.environ.get(FORMAT_VARIABLE) or "auto").strip().lower()
    return chosen == "json" or (chosen not in ("text", "json") and not _stderr().isatty())


def setup_logging(
    level: str = "info", *, secrets: Iterable[str] = (), fmt: str = "auto"
) -> logging.Handler:
    """Send log records of ``level`` and above to stderr, redacted. Safe to call again.

    ``fmt`` is ``text``, ``json`` or ``auto`` (text when stderr is a terminal). In JSON mode,
    warnings, uncaught exceptions and stray writes to ``sys.stderr`` become JSON lines too (the
    module docstring). Returns the handler (tests remove it again).
    """
    stream = _stderr()
    handler = TerminalHandler(stream)
    json_mode = fmt == "json" or (fmt == "auto" and not stream.isatty())
    if json_mode:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(Redactor((*secrets, *environment_secrets())))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_archiver", False)]:
        root.removeHandler(old)
    handler._archiver = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.getLogger("archiver").setLevel(numeric)
    # Library INFO ("Found credentials in environment variables.") only when debugging; their
    # DEBUG output (botocore prints every request's headers, session token included) is kept
    # out at any level of ours; it would still pass the redactor.
    library_level = logging.INFO if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for library in _LIBRARY_LOGGERS:
        logging.getLogger(library).setLevel(library_level)
    _route_stderr(handler if json_mode else None, stream)
    return handler


def _route_stderr(handler: logging.Handler | None, stream: TextIO) -> None:
    """JSON mode (``handler``): what bypasses logging goes through it. Text mode: as Python
    does (undoing an earlier JSON set-up, e.g. the early one before ``--log-format text``)."""
    if handler is not None:
        sys.stderr = JsonStderr(handler, stream)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_uncaught
        sys.unraisablehook = _log_unraisable
    else:
        sys.stderr = stream
        if sys.excepthook is _log_uncaught:
            sys.excepthook = sys.__excepthook__
        if threading.excepthook is _log_thread_uncaught:
            threading.excepthook = threading.__excepthook__
        if sys.unraisablehook is _log_unraisable:
            sys.unraisablehook = sys.__unraisablehook__
    logging.captureWarnings(handler is not None)


def emit(
    message: str,
    *,
    level: int = logging.INFO,
    logger: str = "archiver",
    call_sid: str | None = None,
    fields: Mapping[str, object] | None = None,
) -> None:
    """One line of a command's own output on stderr (``error: ...``, a summary), at any log
    level: a JSON event with ``fields`` in JSON mode, ``message`` as it is otherwise (also
    before ``setup_logging``)."""
    handler = _handler()
    if handler is None or not isinstance(handler.formatter, JsonFormatter):
        message = _scrub(message, handler)  # as a log record is: printed, it skips the filter
        if isinstance(handler, TerminalHandler) and handler.bar is not None:
            handler.above(message)
        else:
            print(message, file=_stderr(), flush=True)
        return
    record = logging.LogRecord(logger, level, __file__, 0, message.strip(), None, None)
    if call_sid is not None:
        record.call_sid = call_sid
    record.fields = dict(fields or {})
    handler.handle(record)


def _scrub(message: str, handler: logging.Handler | None) -> str:
    for each in handler.filters if handler is not None else ():
        if isinstance(each, Redactor):
            return each.scrub(message)
    return Redactor(environment_secrets()).scrub(message)


def json_mode() -> bool:
    """True when ``setup_logging`` chose JSON lines."""
    handler = _handler()
    return handler is not None and isinstance(handler.formatter, JsonFormatter)


def _handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger().handlers if getattr(h, "_archiver", False)), None)


def _stderr() -> TextIO:
    """The real stderr stream (under a ``JsonStderr`` when one is installed)."""
    stream: TextIO | JsonStderr = sys.stderr
    while isinstance(stream, JsonStderr):
        stream = stream.stream
    return stream


def loop_exception_handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """For ``loop.set_exception_handler``: asyncio's own reports ("Task exception was never
    retrieved", an error in a callback) as one line of words, the traceback in ``error`` —
    not asyncio's default message with the task's repr in it."""
    exc = context.get("exception")
    task = context.get("task") or context.get("future")
    get_name = getattr(task, "get_name", None)
    where = f" (task {get_name()})" if callable(get_name) else ""
    what = str(context.get("message") or "error in the event loop")
    if isinstance(exc, BaseException):
        logging.getLogger("asyncio").error(
            "%s%s: %s: %s", what, where, type(exc).__name__, exc, exc_info=exc
        )
    else:
        logging.getLogger("asyncio").error("%s%s", what, where)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        logging.getLogger("archiver").warning("interrupted")
        return
    logging.getLogger("archiver").critical(
        "unexpected error: %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb)
    )


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("archiver").critical(
        "unexpected error in %s: %s: %s",
        name,
        args.exc_type.__name__,
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    exc = unraisable.exc_value
    what = unraisable.err_msg or "Exception ignored in"
    obj = unraisable.object
    where = f" {getattr(obj, '__qualname__', None) or type(obj).__name__}" if obj else ""
    logging.getLogger("archiver").error(
        "%s%s: %s: %s",
        what,
        where,
        unraisable.exc_type.__name__,
        exc,
        exc_info=(unraisable.exc_type, exc, unraisable.exc_traceback) if exc else None,
    )
