"""A call as its v1 listing item tells it: what a rescue stores and classifies by.

A rescued call (``archiver.rescue``) is archived before its v3 details are fetched, from the
item of the v1 Bulk Call Details listing alone. ``details_from_listing`` makes the
``CallDetails`` the recorder needs of it (the folder, the creation time that dates its
retention, the one recording v1 lists); it is never stored as if v3 had said it.

How v1 and v3 line up (Exotel's pages do not say; docs/exotel.md states the reading):

* ``DateCreated`` (no offset, the account's time zone) is v3's ``created_time``.
* ``Direction`` uses v3's words (``inbound``, ``outbound-dial``, ``outbound-api``).
* ``Status``: only ``completed`` is certainly v3's ``completed``; v1's ``busy``, ``no-answer``,
  ``failed``, ``canceled`` have no certain v3 counterpart, so the status is left unknown (None).
* ``PhoneNumberSid`` is the number v3 calls ``virtual_number``, maybe in another format.
* The one recording v1 lists is taken as the call's recording 1: enrichment matches it against
  v3's ``recordings[]`` by file (host and path), else by content (``archiver.archive``).

``v1_record`` is the item as stored beside the recording (``call-v1.json``): its JSON with every
pre-signed URL's query string cut off (``redact.strip_signed_urls``).
"""

from __future__ import annotations

import json
from typing import Protocol
from urllib.parse import urlsplit

from archiver.exotel.listing import ListedCall
from archiver.exotel.models import CallDetails, CallState, CallStatus, Recording
from archiver.redact import strip_signed_urls


class CredentialsPolicy(Protocol):
    """Whether the Exotel credentials may go with a request to ``url``
    (``archiver.recording_auth.RecordingAuth``)."""

    def header_for(self, url: str) -> str | None: ...


def rescue_url(listed: ListedCall, auth: CredentialsPolicy | None) -> str | None:
    """The URL a listed call's recording can be rescued from: its pre-signed URL, else its
    private ``RecordingUrl`` when the credentials may go to its host (``auth``); else None."""
    if listed.presigned_url:
        return listed.presigned_url
    if listed.recording_url and auth is not None and auth.header_for(listed.recording_url):
        return listed.recording_url
    return None


def details_from_listing(listed: ListedCall, url: str) -> CallDetails:
    """The ``CallDetails`` a rescue of ``listed`` works with; ``url`` is the recording's."""
    return CallDetails(
        sid=listed.sid,
        direction=listed.direction or "unknown",
        virtual_number=listed.phone_number_sid,
        state=CallState.TERMINAL,
        status=CallStatus.COMPLETED if listed.status == "completed" else None,
        legs=None,
        created_time=listed.date_created,
        updated_time=None,
        start_time=None,
        end_time=None,
        total_duration=None,
        total_talk_time=None,
        custom_field=None,
        app_id=None,
        app_name=None,
        digits=None,
        recordings=(Recording(index=1, url=url),),
    )


def v1_files(listed: ListedCall) -> set[tuple[str, str, str]]:
    """The files (scheme, host, path) the listed call's recording URLs name."""
    return v1_files_of(listed.item or {})


def v1_files_of(item: dict[str, object]) -> set[tuple[str, str, str]]:
    """The files named by an item's ``PreSignedRecordingUrl`` and ``RecordingUrl`` (either as
    received or as ``call-v1.json`` keeps them, signatures stripped)."""
    files = set()
    for name in ("PreSignedRecordingUrl", "RecordingUrl"):
        value = item.get(name)
        if isinstance(value, str) and value:
            files.add(file_of(value))
    return files


def file_of(url: str) -> tuple[str, str, str]:
    """(scheme, host[:port], path) of a URL, lower-cased but the path: which file it is,
    whatever its signature."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return parts.scheme.lower(), (parts.hostname or "") + port, parts.path
    except ValueError:
        return "", url, ""


def v1_record(listed: ListedCall) -> bytes:
    """The listing item as ``call-v1.json`` holds it: signatures stripped."""
    data = json.dumps(listed.item or {"Sid": listed.sid}, ensure_ascii=False, indent=1).encode()
    return strip_signed_urls(data)
