"""Object keys: where each archived artifact of a call goes inside the destination.

Every artifact of a call sits in the call's folder. The folder comes from a template
(``ARCHIVER_KEY_TEMPLATE``); the default is date-partitioned by the call's creation date, in the
time zone Exotel reported it in (IST for Indian accounts)::

    {yyyy}/{mm}/{dd}/{call_sid}/recording-{n}.{ext}
    {yyyy}/{mm}/{dd}/{call_sid}/call.json            (and legs.json, voice-log.json, ...)

Placeholders: ``{yyyy} {mm} {dd} {hh}`` (creation time), ``{call_sid}``, ``{direction}``
(``inbound``, ``outbound-api``, ...), ``{account_sid}``. The template must contain
``{call_sid}``, so two calls never share a folder. ``n`` is the recording's 1-based position in
``recordings[]``; ``ext`` is the format the content gate found in the bytes (``mp3`` or ``wav``),
never the URL's file name (Exotel's file names are not always the call SID). The destination's
own prefix (``s3://bucket/prefix``) is added by the sink. Call SIDs are validated before they
become part of a key, and every value put into a template is reduced to safe characters and
cut to 64 of them (a 10,000-character ``direction`` from a hostile answer makes a folder, not a
key the store refuses).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import datetime

from archiver.errors import ConfigError
from archiver.exotel.models import validate_call_sid
from archiver.sinks.base import validate_key

DEFAULT_TEMPLATE = "{yyyy}/{mm}/{dd}/{call_sid}"
PLACEHOLDERS = ("yyyy", "mm", "dd", "hh", "call_sid", "direction", "account_sid")
CALL_JSON = "call.json"
LEGS_JSON = "legs.json"
VOICE_LOG_JSON = "voice-log.json"
V1_JSON = "call-v1.json"
"""The call's item of the v1 listing a rescued recording came from (signatures stripped)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_VALUE = 64  # a value from the API never makes a key longer than S3's 1024 bytes

QUARANTINE = "_manifest/quarantine/"
"""Where ``repair`` sets aside an altered object before it puts the archived bytes back:
``_manifest/quarantine/<key>/<sha256 of the altered bytes>``."""


@dataclass(frozen=True)
class KeyLayout:
    """A validated folder template."""

    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as exc:
            raise ConfigError(
                f"key template {self.template!r} does not make a valid key: {exc}"
            ) from None
        unknown = sorted(set(fields) - set(PLACEHOLDERS))
        if unknown:
            raise ConfigError(
                f"key template {self.template!r}: unknown placeholder(s) {', '.join(unknown)}; "
                f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        if "call_sid" not in fields:
            raise ConfigError(
                f"key template {self.template!r} must contain {{call_sid}}, so that two calls "
                "never share a folder"
            )
        try:
            self.folder("x", datetime(2000, 1, 1), direction="inbound", account_sid="a")
        except Exception as exc:
            raise ConfigError(
                f"key template {self.template!r} does not make a valid key: {exc}"
            ) from None

    def folder(
        self, call_sid: str, created: datetime, *, direction: str = "", account_sid: str = ""
    ) -> str:
        """The call's folder, relative to the destination."""
        validate_call_sid(call_sid)
        values = {
            "yyyy": f"{created:%Y}",
            "mm": f"{created:%m}",
            "dd": f"{created:%d}",
            "hh": f"{created:%H}",
            "call_sid": call_sid,
            "direction": _UNSAFE.sub("-", direction).strip("-")[:_MAX_VALUE] or "unknown",
            "account_sid": _UNSAFE.sub("-", account_sid).strip("-")[:_MAX_VALUE] or "unknown",
        }
        return validate_key(self.template.format_map(values).strip("/"))
