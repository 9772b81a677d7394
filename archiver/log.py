"""Logging set-up: one handler on stderr, with every record scrubbed of secrets.

The redaction filter (``archiver.redact.Redactor``) sits on the handler, so it sees every record
that reaches the output, whichever library logged it: known secret values (the Exotel key and
token) and signature-looking URL parameters are replaced before anything is written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from archiver.redact import Redactor

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str = "info", *, secrets: Iterable[str] = ()) -> logging.Handler:
    """Send log records of ``level`` and above to stderr, redacted. Safe to call again.

    Returns the handler (tests remove it again).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(Redactor(secrets))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_archiver", False)]:
        root.removeHandler(old)
    handler._archiver = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.getLogger("archiver").setLevel(numeric)
    if numeric <= logging.DEBUG:
        # Library debug output (aiohttp, botocore) is verbose and may print request details;
        # it still passes the redactor, but keep it at INFO unless asked for explicitly.
        for noisy in ("botocore", "boto3", "urllib3", "aiohttp"):
            logging.getLogger(noisy).setLevel(logging.INFO)
    return handler
