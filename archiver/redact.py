"""Keeping secrets out of everything the archiver writes.

Three kinds of secret pass through the worker: the Exotel API key/token, the signatures of
pre-signed recording URLs, and the AWS credentials boto3 finds. This module has the two tools the
rest of the code uses before a string can reach a log line, an error message or the manifest:

* ``strip_url(url)`` — a URL without user-info or query string: what the manifest records as the
  source of an object, and what error messages name.
* ``Redactor`` — replaces known secret values and any signature-looking query parameter in free
  text; installed as a logging filter so that even an unexpected message cannot leak.

A third, ``strip_signed_urls(body)``, is for the JSON responses stored beside the recordings
(``call.json``, ``voice-log.json``, ``legs.json``): every string in them that is a pre-signed URL
loses its query string (and user-info); every other byte stays as received.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

# Query parameters of pre-signed URLs (AWS SigV4 and SigV2 styles) that must never be written out;
# ``Credential=`` also covers the SigV4 Authorization header.
_SIGNED_PARAM = re.compile(
    r"(?i)\b(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId"
    r"|X-Goog-Signature|X-Goog-Credential|Credential|sig)=([^&\s\"'<>,]*)"
)
# user:password@ in URLs
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s\"'<>]+@")
# Authorization headers that might appear in a dumped request (botocore prints b'...' values)
_AUTH_HEADER = re.compile(
    r"(?i)(authorization['\"]?\s*[:=]\s*b?['\"]?)(basic|bearer|aws4-hmac-sha256)\s+[^'\"\s,]+"
)
# Token headers as botocore's DEBUG output shows them: in a dict ('X-Amz-Security-Token':
# b'...') and in the canonical request (x-amz-security-token:...).
_TOKEN_HEADER = re.compile(
    r"(?i)\b(x-amz-security-token|x-archiver-secret)(['\"]?\s*:\s*b?['\"]?)[^'\"\s,}]+"
)
# A JSON string literal, escapes included.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')

REDACTED = "[redacted]"


def strip_url(url: str) -> str:
    """``url`` without user-info, query string or fragment: safe to log and to store."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal keeps its brackets, or the result is not a URL
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:  # unbalanced brackets, a port out of range or not a number
        return REDACTED
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_presigned(url: str) -> bool:
    """True if ``url`` is an http(s) URL whose query carries a signature or credential."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(
        _SIGNED_PARAM.search(unquote(parts.query)) or parts.username or parts.password
    )


def strip_signed_urls(body: bytes) -> bytes:
    """``body`` (JSON as received) with every pre-signed URL in it reduced to ``strip_url``.

    Only the string literals that decode to a pre-signed URL are rewritten (as plain JSON
    strings); every other byte is kept, so the snapshot stays the response as received, less
    the signatures. A body that is not JSON text is searched all the same.
    """

    def replace(match: re.Match[bytes]) -> bytes:
        literal = match.group(0)
        if b"?" not in literal and b"@" not in literal and b"\\" not in literal:
            return literal  # no query, no user-info, no escape that could hide one: not signed
        try:
            value = json.loads(match.group(0))
        except ValueError:
            return match.group(0)
        if not isinstance(value, str) or not is_presigned(value):
            return match.group(0)
        return json.dumps(strip_url(value)).encode()

    return _JSON_STRING.sub(replace, body)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace known secret values (also URL-encoded) and signature-like parts in ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                text = text.replace(form, REDACTED)
    text = _SIGNED_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _TOKEN_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)} {REDACTED}", text)


class Redactor(logging.Filter):
    """A logging filter that scrubs every record's final message (and exception text)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def scrub(self, text: str) -> str:
        """``text`` as this filter leaves a message."""
        return redact_text(text, self._secrets)

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
