"""Typed objects for what Exotel's Voice v3 API returns, parsed strictly from the documented shape.

The documentation (../shared/exotel-docs/voice-v3-call-details.txt) is the contract. Where it
leaves room, the parser accepts both readings and says so here:

* ``direction``: the field table lists ``inbound``, ``outbound-dial``, ``outbound-api``; the example
  shows ``outbound``. Any non-empty string is kept as is.
* ``status``: the six v3 statuses; v2 names (``agent_unanswered``) are mapped to v3
  (``from_leg_unanswered``). An unknown status is an ``ExotelProtocolError``: we do not guess.
* Times are ``YYYY-MM-DD HH:MM:SS+hh:mm``. A time without an offset is read as IST (+05:30), the
  zone every documented example uses. ``end_time`` of an active call is the epoch sentinel
  ``1970-01-01 05:30:00+05:30``, parsed as ``None``.
* While ``state`` is ``active``, ``status``, ``recordings``, ``total_duration`` and
  ``total_talk_time`` may be null or absent.
* ``recordings[].url`` must be a string with an http(s) scheme. Whether it is a well-formed
  URL to an allowed address is judged when it is downloaded (``archiver.addresses``): a URL
  with a port out of range or an empty host label fails that call as ``BadUrl``, not here.
* ``recordings[]`` listing the same file twice (the same scheme, host and path; the signature
  may differ) is read as one recording: the first entry is kept, with its position as
  ``index``; the repeat is dropped, so the same audio is never stored under two keys.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from archiver.errors import ExotelProtocolError, InvalidCallSid

IST = timezone(timedelta(hours=5, minutes=30), "IST")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CALL_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$", re.ASCII)


class CallState(enum.StrEnum):
    ACTIVE = "active"
    """Ongoing, or post-call processing pending: data is not final."""
    TERMINAL = "terminal"
    """Completed and all data processed."""


class CallStatus(enum.StrEnum):
    COMPLETED = "completed"
    FROM_LEG_UNANSWERED = "from_leg_unanswered"
    TO_LEG_UNANSWERED = "to_leg_unanswered"
    FROM_LEG_CANCELLED = "from_leg_cancelled"
    TO_LEG_NO_DIAL = "to_leg_no_dial"
    FROM_LEG_NO_DIAL = "from_leg_no_dial"


V2_STATUS_NAMES = {"agent_unanswered": CallStatus.FROM_LEG_UNANSWERED}
"""v2 status names still seen on ccm-api, mapped to their v3 names (per the v3 migration table)."""


def quoted(value: object, limit: int = 40) -> str:
    """A value from the wire as a log line or message may show it: a string JSON-quoted, with
    every control and non-ASCII character escaped (a terminal escape sequence or a look-alike
    letter is seen, not obeyed), cut after ``limit`` characters; another type named with its
    JSON; None as ``missing``. No Python repr."""
    if value is None:
        return "missing"
    if isinstance(value, str):
        text = json.dumps(value[:limit], ensure_ascii=True)
        return text if len(value) <= limit else f'{text[:-1]}..."'
    try:
        shown = json.dumps(value, ensure_ascii=True, default=str)
    except ValueError:  # a circular structure: not from JSON, but never fail on showing it
        shown = "..."
    if len(shown) > limit:
        shown = shown[:limit] + "..."
    kind = type(value).__name__
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} ({shown})"


def validate_call_sid(sid: object) -> str:
    """A call SID safe to put in a URL path and an object key, or ``InvalidCallSid``.

    ASCII letters, digits, ``-`` and ``_``, 1 to 64 characters. This refuses ``/``, ``..``, NUL and
    other control characters, spaces and Unicode look-alikes.
    """
    if not isinstance(sid, str) or not _CALL_SID.match(sid):
        raise InvalidCallSid(
            f"invalid call SID {quoted(sid, 64)}: expected 1-64 ASCII letters, digits, '-' or '_' "
            "(e.g. cabfb1dfa8c5e1c7f2c458423b7716b3)"
        )
    return sid


@dataclass(frozen=True)
class Recording:
    """One entry of ``recordings[]``: a temporary pre-signed URL (a secret until it expires)."""

    index: int
    """1-based position in ``recordings[]``: stable across refreshes of the call details."""
    url: str

    def __repr__(self) -> str:  # the URL carries a signature: never show it
        return f"Recording(index={self.index}, url=<pre-signed>)"


@dataclass(frozen=True)
class CallDetails:
    """``response.call_details`` of GET /v3/accounts/{sid}/calls/{call_sid}."""

    sid: str
    direction: str
    virtual_number: str | None
    state: CallState
    status: CallStatus | None
    legs: str | None
    created_time: datetime
    updated_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    total_duration: int | None
    total_talk_time: int | None
    custom_field: str | None
    app_id: str | None
    app_name: str | None
    digits: tuple[str, ...] | None
    recordings: tuple[Recording, ...] | None
    request_id: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.state is CallState.TERMINAL


def _field(
    data: dict[str, Any], name: str, kinds: type | tuple[type, ...], *, required: bool = False
) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise ExotelProtocolError(f"call details: field '{name}' is missing or null")
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ExotelProtocolError(
            f"call details: field '{name}' has type {type(value).__name__}, expected "
            + (
                " or ".join(k.__name__ for k in kinds)
                if isinstance(kinds, tuple)
                else kinds.__name__
            )
        )
    return value


def parse_time(value: str, name: str) -> datetime:
    """``YYYY-MM-DD HH:MM:SS+hh:mm`` (offset optional: IST assumed)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ExotelProtocolError(
            f"call details: field '{name}' is not a time of the form YYYY-MM-DD HH:MM:SS+hh:mm: "
            f"{value[:40]!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=IST)


def _time(data: dict[str, Any], name: str, *, required: bool = False) -> datetime | None:
    raw = _field(data, name, str, required=required)
    if raw is None:
        return None
    parsed = parse_time(raw, name)
    if parsed == _EPOCH:  # the "not yet" sentinel, 1970-01-01 05:30:00+05:30
        return None
    return parsed


def _int(data: dict[str, Any], name: str) -> int | None:
    value = _field(data, name, int)
    if value is not None and value < 0:
        raise ExotelProtocolError(f"call details: field '{name}' is negative: {value}")
    return value  # type: ignore[no-any-return]


def _status(raw: str | None) -> CallStatus | None:
    if raw is None:
        return None
    if raw in V2_STATUS_NAMES:
        return V2_STATUS_NAMES[raw]
    try:
        return CallStatus(raw)
    except ValueError:
        known = ", ".join(s.value for s in CallStatus)
        raise ExotelProtocolError(
            f"call details: unknown status {raw[:40]!r} (known: {known})"
        ) from None


def _recordings(value: Any) -> tuple[Recording, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ExotelProtocolError("call details: 'recordings' is not an array")
    out: list[Recording] = []
    seen: set[tuple[str, str, str]] = set()
    for i, item in enumerate(value, start=1):
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str) or not url:
            raise ExotelProtocolError(f"call details: recordings[{i - 1}] has no 'url' string")
        try:
            parts = urlsplit(url)
        except ValueError:  # unbalanced brackets: refused as BadUrl when it is downloaded
            file = ("", url, "")
        else:
            if parts.scheme.lower() not in ("http", "https"):
                raise ExotelProtocolError(
                    f"call details: recordings[{i - 1}].url is not an http(s) URL "
                    f"(scheme {parts.scheme[:10]!r})"
                )
            file = (parts.scheme.lower(), parts.netloc.lower(), parts.path)
        if file in seen:
            continue  # the same recording listed twice: kept once
        seen.add(file)
        out.append(Recording(index=i, url=url))
    return tuple(out)


def parse_call_details(details: Any, *, request_id: str | None = None) -> CallDetails:
    """Build ``CallDetails`` from ``response.call_details``, or raise ``ExotelProtocolError``."""
    if not isinstance(details, dict):
        raise ExotelProtocolError("response.call_details is missing or not an object")
    sid = validate_call_sid(_field(details, "sid", str, required=True))
    state_raw = _field(details, "state", str, required=True)
    try:
        state = CallState(state_raw)
    except ValueError:
        raise ExotelProtocolError(
            f"call {sid}: unknown state {state_raw[:40]!r} (expected active or terminal)"
        ) from None
    digits_raw = _field(details, "digits", (str, int))
    digits = tuple(d for d in str(digits_raw).split("-") if d) if digits_raw is not None else None
    created = _time(details, "created_time", required=True)
    if created is None:
        raise ExotelProtocolError(f"call {sid}: created_time is the 1970 sentinel")
    return CallDetails(
        sid=sid,
        direction=_field(details, "direction", str) or "unknown",
        virtual_number=_field(details, "virtual_number", str),
        state=state,
        status=_status(_field(details, "status", str)),
        legs=_field(details, "legs", str),
        created_time=created,
        updated_time=_time(details, "updated_time"),
        start_time=_time(details, "start_time"),
        end_time=_time(details, "end_time"),
        total_duration=_int(details, "total_duration"),
        total_talk_time=_int(details, "total_talk_time"),
        custom_field=_field(details, "custom_field", str),
        app_id=_field(details, "app_id", (str, int)) and str(details["app_id"]),
        app_name=_field(details, "app_name", str),
        digits=digits,
        recordings=_recordings(details.get("recordings")),
        request_id=request_id,
    )
