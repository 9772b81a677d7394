"""Keeping secrets out of everything the archiver writes.

Three kinds of secret pass through the worker: the Exotel API key/token, the signatures of
pre-signed recording URLs, and the AWS credentials boto3 finds. This module has the two tools the
rest of the code uses before a string can reach a log line, an error message or the manifest:

* ``strip_url(url)`` — a URL without user-info or query string: what the manifest records as the
  source of an object, and what error messages name.
* ``Redactor`` — replaces known secret values and any signature-looking query parameter in free
  text; installed as a logging filter so that even an unexpected message cannot leak.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

# Query parameters of pre-signed URLs (AWS SigV4 and SigV2 styles) that must never be written out.
_SIGNED_PARAM = re.compile(
    r"(?i)\b(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId"
    r"|X-Goog-Signature|sig)=([^&\s\"'<>]*)"
)
# user:password@ in URLs
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s\"'<>]+@")
# Authorization headers that might appear in a dumped request
_AUTH_HEADER = re.compile(
    r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(basic|bearer|aws4-hmac-sha256)\s+[^'\"\s,]+"
)

REDACTED = "[redacted]"


def strip_url(url: str) -> str:
    """``url`` without user-info, query string or fragment: safe to log and to store."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace known secret values and signature-like URL parts in ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _SIGNED_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)} {REDACTED}", text)


class Redactor(logging.Filter):
    """A logging filter that scrubs every record's final message (and exception text)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact_text(message, self._secrets)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            # Render the traceback now, so that no formatter renders it raw later.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self._secrets)
            record.exc_info = None
        return True
