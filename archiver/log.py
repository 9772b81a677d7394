"""Logging set-up: one handler on stderr, with every record scrubbed of secrets.

The redaction filter (``archiver.redact.Redactor``) sits on the handler, so it sees every record
that reaches the output, whichever library logged it: known secret values (the Exotel key and
token, the webhook secret, and the AWS secret key and session token found in the environment),
signature-looking URL parameters, Authorization and X-Amz-Security-Token headers are replaced
before anything is written. Library loggers (botocore, urllib3, aiohttp...) are held at INFO even
when the archiver's own level is DEBUG: botocore's DEBUG output prints every request's headers.
Should one be turned up anyway, its lines still pass the redactor.

Two formats: ``text`` (one readable line, for a terminal) and ``json`` (one JSON object per line —
``time``, ``level``, ``logger``, ``message``, ``call_sid`` when the line is about a call — for
journald and log shippers). ``auto`` picks text on a terminal and JSON otherwise. journald adds
its own timestamp; the JSON keeps one so the lines stand alone when shipped elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from archiver.redact import Redactor

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_CALL = re.compile(r"\bcall ([A-Za-z0-9_-]{6,64})\b")
_AWS_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
"""Environment variables boto3 reads whose values are secrets (the redactor knows them)."""
_LIBRARY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "aiohttp", "asyncio")


def environment_secrets() -> tuple[str, ...]:
    """The AWS secrets boto3 will find in the environment, for the redactor."""
    return tuple(v for name in _AWS_SECRET_VARIABLES if (v := os.environ.get(name, "")))


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
        if record.exc_text:
            event["error"] = record.exc_text
        elif record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def setup_logging(
    level: str = "info", *, secrets: Iterable[str] = (), fmt: str = "auto"
) -> logging.Handler:
    """Send log records of ``level`` and above to stderr, redacted. Safe to call again.

    ``fmt`` is ``text``, ``json`` or ``auto`` (text when stderr is a terminal). Returns the
    handler (tests remove it again).
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json" or (fmt == "auto" and not sys.stderr.isatty()):
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
    # Library debug output (botocore prints every request's headers, session token included) is
    # kept out at any level of ours; it would still pass the redactor.
    for library in _LIBRARY_LOGGERS:
        logging.getLogger(library).setLevel(max(numeric, logging.INFO))
    return handler
