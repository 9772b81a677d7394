"""Finding calls: those of a date range (v1 Bulk Call Details; v3 has no list endpoint) and
those in progress now (v3 active calls).

``GET /v1/Accounts/{sid}/Calls.json`` with ``DateCreated=gte:...;lte:...`` (times in the account's
time zone, no offset), ``SortBy=DateCreated:asc``, ``PageSize`` up to 100, and cursor paging
through ``Metadata.NextPageUri`` (a relative path). Exotel accepts at most one month per query
and six months back, so ``list_calls`` splits the range into windows of at most 30 days. Every
page is an API request through the client (rate limiter, retries). Calls still in progress are
never listed by Exotel.

Guards against a misbehaving answer: a ``NextPageUri`` to another host or scheme, or one already
followed (a loop) is an ``ExotelProtocolError``, and so is a page whose ``Calls`` is not a list or
whose ``Metadata`` is not an object (``[]`` included: it is not read as "no more pages"): they
concern the whole listing. One *item* that cannot be read — not an object, a ``Sid`` that is not
a valid call SID, a ``DateCreated`` that is not ``YYYY-MM-DD HH:MM:SS`` — concerns that item only:
it is a ``SkippedItem`` handed to the caller's ``on_skip`` (to count and report; the hostile
value shown escaped, ``models.quoted``) and the listing goes on. A caller that gives no
``on_skip`` (one that must see every call, such as ``reconcile``) gets the
``ExotelProtocolError`` instead.

``active_calls`` reads ``GET /v3/accounts/{sid}/calls/active``: ``response.active_calls[]`` with
``call_sid``, ``status`` and ``start_time`` (ISO-8601 UTC), and ``response.total_active``. An
older version of Exotel's page described ``limit``/``offset`` paging: when ``total_active`` says
there are more calls than the answers so far hold, the next ``offset`` is asked for — but never
more than ``MAX_ACTIVE_PAGES`` pages a poll, and not after a page that brought no call not seen
already (an API that ignores ``offset`` answers the first page again and again). Either stop is
handed to ``on_truncated`` (``"page_cap"`` or ``"no_progress"``) with a message saying what was
read; the calls found so far are returned. An item of the list that cannot be read (not an
object, a ``call_sid`` that is not a valid call SID) is one call's problem, not the poll's: it
is a ``SkippedItem`` (``active_not_an_object``, ``active_bad_sid``) handed to ``on_skip`` and
the rest of the page is used.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from urllib.parse import urljoin, urlsplit

from archiver.errors import ExotelProtocolError, InvalidCallSid
from archiver.exotel.client import ExotelClient
from archiver.exotel.models import quoted, validate_call_sid

WINDOW = timedelta(days=30)
MAX_PAGES = 100_000


@dataclass(frozen=True)
class ListedCall:
    """One item of a v1 listing: enough to decide what to archive, and to rescue its recording
    straight from the listing (``archiver.rescue``)."""

    sid: str
    date_created: datetime
    status: str
    has_recording: bool
    direction: str | None = None
    """``Direction`` as v1 gives it (``inbound``, ``outbound-dial``, ``outbound-api``)."""
    phone_number_sid: str | None = None
    """``PhoneNumberSid``: the account's number the call went through (v3's virtual_number,
    perhaps in another format)."""
    presigned_url: str | None = field(default=None, repr=False)
    """``PreSignedRecordingUrl``: a secret until it expires (never shown)."""
    recording_url: str | None = field(default=None, repr=False)
    """``RecordingUrl``: unsigned; private since October 2024 (HTTP Basic to Exotel's hosts)."""
    item: dict[str, object] | None = field(default=None, repr=False, compare=False)
    """The item as received (signed URLs in it: strip before storing or showing)."""
    fetched_at: float = field(default=0.0, repr=False, compare=False)
    """When its page was received (``time.time()``): dates the pre-signed URL."""


SKIP_REASONS = (
    "not_an_object",
    "invalid_sid",
    "invalid_date_created",
    "active_not_an_object",
    "active_bad_sid",
)
"""Why an item is skipped (the ``reason`` label of ``skipped_items_total``): the first three in
a v1 listing, the ``active_`` ones in the active-calls list."""
UNNAMED = ("not_an_object", "invalid_sid", "active_not_an_object", "active_bad_sid")
"""Reasons whose item has no valid call SID to name (nor to archive by hand)."""


@dataclass(frozen=True)
class SkippedItem:
    """An item of a v1 page (or of the active-calls list) that cannot be read: left out, for
    the caller to count and report. Every field is safe to show (hostile values are
    ``quoted``)."""

    reason: str
    """One of ``SKIP_REASONS``."""
    page: str
    """The request it came from, e.g. ``GET call list 2026-05-01..2026-05-30 page 3``."""
    sid: str
    """The item's ``Sid`` as shown by ``quoted``: when it is a valid call SID, the call can be
    archived by hand (``exotel-archiver archive SID``) once Exotel's answer is checked."""
    problem: str
    """What is wrong with the item."""

    @property
    def named(self) -> bool:
        """Whether ``sid`` is a valid call SID (one that can be archived by hand)."""
        return self.reason not in UNNAMED

    def line(self) -> str:
        named = f" (Sid {self.sid})" if self.named else ""
        return f"{self.page}: a malformed item was skipped{named}: {self.problem}"

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "page": self.page, "sid": self.sid, "problem": self.problem}


class _BadItem(Exception):
    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason, self.problem = reason, problem


def _v1_time(value: object, tz: tzinfo) -> datetime:
    if not isinstance(value, str):
        raise _BadItem("invalid_date_created", f"DateCreated is not a string: {quoted(value)}")
    try:
        return datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz)
    except ValueError:
        raise _BadItem(
            "invalid_date_created", f"DateCreated {quoted(value)} is not YYYY-MM-DD HH:MM:SS"
        ) from None


def _listed_call(item: object, tz: tzinfo, fetched_at: float = 0.0) -> ListedCall:
    """One v1 item as a ``ListedCall``, or ``_BadItem``."""
    if not isinstance(item, dict):
        raise _BadItem("not_an_object", f"an item of 'Calls' is not an object: {quoted(item)}")
    try:
        sid = validate_call_sid(item.get("Sid"))
    except InvalidCallSid as exc:
        raise _BadItem("invalid_sid", str(exc)) from None
    return ListedCall(
        sid=sid,
        date_created=_v1_time(item.get("DateCreated"), tz),
        status=str(item.get("Status") or ""),
        has_recording=bool(item.get("RecordingUrl") or item.get("PreSignedRecordingUrl")),
        direction=_text(item.get("Direction")),
        phone_number_sid=_text(item.get("PhoneNumberSid")),
        presigned_url=_url(item.get("PreSignedRecordingUrl")),
        recording_url=_url(item.get("RecordingUrl")),
        item=item,
        fetched_at=fetched_at,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _url(value: object) -> str | None:
    """An http(s) URL string, else None (a hostile value is not a URL to rescue from: the call
    goes through its v3 details instead)."""
    if not isinstance(value, str) or not value.lower().startswith(("https://", "http://")):
        return None
    return value


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
    on_skip: Callable[[SkippedItem], None] | None = None,
) -> AsyncIterator[ListedCall]:
    """Every call created in [since, until] (aware datetimes), oldest first.

    An item that cannot be read goes to ``on_skip`` and the listing goes on; without
    ``on_skip`` it is an ``ExotelProtocolError``.
    """
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
            fetched_at = time.time()
            calls = answer.envelope.get("Calls")
            metadata = answer.envelope.get("Metadata")
            metadata = {} if metadata is None else metadata  # not `or {}`: [] is no Metadata
            if not isinstance(calls, list) or not isinstance(metadata, dict):
                raise ExotelProtocolError(f"{what}: no 'Calls' list or 'Metadata' object")
            for item in calls:
                try:
                    listed = _listed_call(item, tz, fetched_at)
                except _BadItem as bad:
                    if on_skip is None:  # the caller must see every call: the listing fails
                        raise ExotelProtocolError(
                            f"{what}: a malformed item: {bad.problem}"
                        ) from None
                    sid = quoted(item.get("Sid")) if isinstance(item, dict) else "missing"
                    on_skip(SkippedItem(bad.reason, what, sid, bad.problem))
                    continue
                yield listed
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
MAX_ACTIVE_PAGES = 10
"""Pages of active calls asked for per poll: 1,000 calls in progress at once, more than the
channels of all but the largest accounts, for at most 10 requests a poll (20 a minute at the
default 30 s poll: a sixth of the default budget). Calls beyond it are found by the sweep once
they are over. The old cap (100 pages) let one poll of an API ignoring ``offset`` cost 100
requests, half a minute of the account's whole budget."""


def _iso_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _active_call(item: object) -> ActiveCall:
    """One item of the active-calls list as an ``ActiveCall``, or ``_BadItem``."""
    if not isinstance(item, dict):
        raise _BadItem(
            "active_not_an_object", f"an item of 'active_calls' is not an object: {quoted(item)}"
        )
    try:
        sid = validate_call_sid(item.get("call_sid") or item.get("sid"))
    except InvalidCallSid as exc:
        raise _BadItem("active_bad_sid", str(exc)) from None
    return ActiveCall(sid, _iso_time(item.get("start_time")))


async def active_calls(
    client: ExotelClient,
    *,
    max_pages: int = MAX_ACTIVE_PAGES,
    on_truncated: Callable[[str, str], None] | None = None,
    on_skip: Callable[[SkippedItem], None] | None = None,
) -> list[ActiveCall]:
    """The calls Exotel reports as in progress right now (one request per 100, at most
    ``max_pages``). A poll cut short (``"page_cap"``, ``"no_progress"``) is told to
    ``on_truncated`` with a message; the calls found so far are returned either way. An item
    that cannot be read goes to ``on_skip`` and the rest of the page is used; without
    ``on_skip`` it is an ``ExotelProtocolError``."""
    url = client.v3_url("/calls/active")
    found: dict[str, ActiveCall] = {}
    skipped = 0  # items of the pages so far that could not be read: listed, but not calls
    total: object = None
    for page in range(max_pages):
        what = f"GET active calls page {page + 1}"
        params = {"limit": str(ACTIVE_PAGE), "offset": str(page * ACTIVE_PAGE)}
        answer = await client.get_json(url, what=what, params=params)
        response = answer.envelope.get("response")
        items = response.get("active_calls") if isinstance(response, dict) else None
        if not isinstance(response, dict) or not isinstance(items, list):
            raise ExotelProtocolError(f"{what}: the answer has no 'response.active_calls' list")
        new = 0
        for item in items:
            try:
                call = _active_call(item)
            except _BadItem as bad:
                if on_skip is None:
                    raise ExotelProtocolError(f"{what}: a malformed item: {bad.problem}") from None
                shown = item.get("call_sid") or item.get("sid") if isinstance(item, dict) else None
                on_skip(SkippedItem(bad.reason, what, quoted(shown), bad.problem))
                skipped += 1
                continue
            new += call.sid not in found
            found[call.sid] = call
        total = response.get("total_active")
        if not items or not isinstance(total, int) or len(found) + skipped >= total:
            break
        if not new:
            if on_truncated is not None:
                on_truncated(
                    "no_progress",
                    f"{what} brought no call the pages before had not (the API seems to ignore "
                    f"'offset'): paging stopped with {len(found)} of {total} calls in progress",
                )
            break
    else:
        if on_truncated is not None:
            on_truncated(
                "page_cap",
                f"{total} calls in progress: only the first {len(found)} are watched "
                f"({max_pages} pages of {ACTIVE_PAGE} a poll); the others are found by the "
                "sweep once they are over",
            )
    return list(found.values())
