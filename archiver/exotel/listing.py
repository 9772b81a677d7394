"""Finding calls: those of a date range (v1 Bulk Call Details; v3 has no list endpoint) and
those in progress now (v3 active calls).

``GET /v1/Accounts/{sid}/Calls.json`` with ``DateCreated=gte:...;lte:...`` (times in the account's
time zone, no offset), ``SortBy=DateCreated:asc``, ``PageSize`` up to 100, and cursor paging
through ``Metadata.NextPageUri`` (a relative path). Exotel accepts at most one month per query
and six months back, so ``list_calls`` splits the range into windows of at most 30 days. Every
page is an API request through the client (rate limiter, retries). Calls still in progress are
never listed by Exotel.

Guards against a misbehaving answer: a ``NextPageUri`` to another host or scheme, or one already
followed (a loop) is an ``ExotelProtocolError``, and so is an item whose ``Sid`` is not a valid
call SID (named with the page it came from), or a page whose ``Calls`` is not a list or whose
``Metadata`` is not an object (``[]`` included: it is not read as "no more pages").

``active_calls`` reads ``GET /v3/accounts/{sid}/calls/active``: ``response.active_calls[]`` with
``call_sid``, ``status`` and ``start_time`` (ISO-8601 UTC), and ``response.total_active``. An
older version of Exotel's page described ``limit``/``offset`` paging: when ``total_active`` says
there are more calls than the answer holds, the next ``offset`` is asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from urllib.parse import urljoin, urlsplit

from archiver.errors import ExotelProtocolError, InvalidCallSid
from archiver.exotel.client import ExotelClient
from archiver.exotel.models import validate_call_sid

WINDOW = timedelta(days=30)
MAX_PAGES = 100_000


@dataclass(frozen=True)
class ListedCall:
    """One item of a v1 listing: enough to decide what to archive."""

    sid: str
    date_created: datetime
    status: str
    has_recording: bool


def _v1_time(value: object, tz: tzinfo, what: str) -> datetime:
    if not isinstance(value, str):
        raise ExotelProtocolError(f"{what}: DateCreated is not a string")
    try:
        return datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz)
    except ValueError:
        raise ExotelProtocolError(
            f"{what}: DateCreated {value[:30]!r} is not YYYY-MM-DD HH:MM:SS"
        ) from None


def windows(since: datetime, until: datetime) -> list[tuple[datetime, datetime]]:
    """[since, until] cut into consecutive windows of at most 30 days."""
    out, start = [], since
    while start <= until:
        end = min(start + WINDOW - timedelta(seconds=1), until)
        out.append((start, end))
        start = end + timedelta(seconds=1)
    return out


async def list_calls(
    client: ExotelClient,
    since: datetime,
    until: datetime,
    *,
    tz: tzinfo,
    page_size: int = 100,
    url_validity_minutes: int = 5,
) -> AsyncIterator[ListedCall]:
    """Every call created in [since, until] (aware datetimes), oldest first."""
    base = client.v1_url("/Calls.json")
    host, scheme = urlsplit(base).netloc, urlsplit(base).scheme
    for start, end in windows(since.astimezone(tz), until.astimezone(tz)):
        params: dict[str, str] | None = {
            "DateCreated": f"gte:{start:%Y-%m-%d %H:%M:%S};lte:{end:%Y-%m-%d %H:%M:%S}",
            "SortBy": "DateCreated:asc",
            "PageSize": str(page_size),
            "RecordingUrlValidity": str(url_validity_minutes),
        }
        url, seen = base, set()
        for page in range(MAX_PAGES):
            what = f"GET call list {start:%Y-%m-%d}..{end:%Y-%m-%d} page {page + 1}"
            answer = await client.get_json(url, what=what, params=params)
            calls = answer.envelope.get("Calls")
            metadata = answer.envelope.get("Metadata")
            metadata = {} if metadata is None else metadata  # not `or {}`: [] is no Metadata
            if not isinstance(calls, list) or not isinstance(metadata, dict):
                raise ExotelProtocolError(f"{what}: no 'Calls' list or 'Metadata' object")
            for item in calls:
                if not isinstance(item, dict):
                    raise ExotelProtocolError(f"{what}: an item of 'Calls' is not an object")
                try:
                    sid = validate_call_sid(item.get("Sid"))
                except InvalidCallSid as exc:
                    raise ExotelProtocolError(f"{what}: an item's Sid: {exc}") from None
                yield ListedCall(
                    sid=sid,
                    date_created=_v1_time(item.get("DateCreated"), tz, what),
                    status=str(item.get("Status") or ""),
                    has_recording=bool(
                        item.get("RecordingUrl") or item.get("PreSignedRecordingUrl")
                    ),
                )
            next_uri = metadata.get("NextPageUri")
            if not next_uri:
                break
            url = urljoin(base, str(next_uri))
            if urlsplit(url).scheme != scheme:
                raise ExotelProtocolError(
                    f"{what}: NextPageUri changes the scheme to {urlsplit(url).scheme[:10]!r} "
                    f"(the API is {scheme}); refused, the listing stops here"
                )
            if urlsplit(url).netloc != host:
                raise ExotelProtocolError(
                    f"{what}: NextPageUri points to another host; refused (the credentials stay "
                    "with the API host)"
                )
            if url in seen:
                raise ExotelProtocolError(f"{what}: NextPageUri repeats a page (a loop)")
            seen.add(url)
            params = None  # the cursor URI carries the query
        else:
            raise ExotelProtocolError(f"listing stopped after {MAX_PAGES} pages")


@dataclass(frozen=True)
class ActiveCall:
    """One call in progress, as the active-calls endpoint lists it."""

    sid: str
    start_time: datetime | None


ACTIVE_PAGE = 100
MAX_ACTIVE_PAGES = 100


def _iso_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


async def active_calls(client: ExotelClient) -> list[ActiveCall]:
    """Every call Exotel reports as in progress right now (one request per 100)."""
    url = client.v3_url("/calls/active")
    found: dict[str, ActiveCall] = {}
    for page in range(MAX_ACTIVE_PAGES):
        what = f"GET active calls page {page + 1}"
        params = {"limit": str(ACTIVE_PAGE), "offset": str(page * ACTIVE_PAGE)}
        answer = await client.get_json(url, what=what, params=params)
        response = answer.envelope.get("response")
        items = response.get("active_calls") if isinstance(response, dict) else None
        if not isinstance(response, dict) or not isinstance(items, list):
            raise ExotelProtocolError(f"{what}: the answer has no 'response.active_calls' list")
        for item in items:
            if not isinstance(item, dict):
                raise ExotelProtocolError(f"{what}: an item of 'active_calls' is not an object")
            sid = validate_call_sid(item.get("call_sid") or item.get("sid"))
            found[sid] = ActiveCall(sid, _iso_time(item.get("start_time")))
        total = response.get("total_active")
        if not items or not isinstance(total, int) or len(found) >= total:
            break
    return list(found.values())
