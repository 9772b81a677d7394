"""One-off date-range archival: ``exotel-archiver backfill --since DATE --until DATE``.

1. **List** the range's calls through v1 Bulk Call Details (``archiver.exotel.listing``: windows
   of at most 30 days, 100 a page), the days read in the account's time zone. Exotel keeps its
   API listing for six months: an older start is refused with a clear message. The complete
   listing is saved in the ledger, so an interrupted backfill of a past range resumes without
   listing again (a range that reaches today is listed again: calls keep arriving).
2. **Plan**: calls already archived (the ledger says so: no request needed), calls with no
   recording at source (v1 lists none: no request needed — unless the call is recent enough
   for its recording still to come), and the rest, to archive.
   ``--dry-run`` stops here and prints the plan with the API requests and the time they take
   at the rate limit.
3. **Archive** the rest with ``archive_calls`` — the same path as ``archive`` — with progress,
   and a summary printed and written as JSON.

Calls still in progress are never listed by Exotel; calls that have ended but whose post-call
processing is not done are listed, and reported as still active (``not_ready``). Running the
same backfill again later (or the long-running worker) picks both up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from archiver.archive import archive_calls, sink_for
from archiver.config import Settings
from archiver.errors import ConfigError
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import list_calls
from archiver.identity import check_destination
from archiver.ledger import Ledger
from archiver.ratelimit import RateLimiter
from archiver.report import ARCHIVED, CallResult, Report

API_WINDOW = timedelta(days=180)
"""How far back Exotel's v1 listing reaches (its pages say six months)."""


@dataclass
class Plan:
    since: date
    until: date
    listed: int = 0
    already_archived: list[str] = field(default_factory=list)
    no_recording: list[str] = field(default_factory=list)
    to_archive: list[str] = field(default_factory=list)
    listing_requests: int = 0
    """v1 requests spent listing (0 when a saved complete listing was reused)."""
    requests_per_call: int = 1
    limiter: RateLimiter | None = field(default=None, repr=False, compare=False)
    """The limiter the listing used, for the archiving to continue from (one budget)."""

    @property
    def api_requests(self) -> int:
        """Requests the archiving will cost (URL refreshes aside)."""
        return len(self.to_archive) * self.requests_per_call

    def minutes_at(self, rate_limit: int) -> float:
        return self.api_requests / rate_limit

    def as_dict(self, rate_limit: int) -> dict[str, object]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "calls_listed": self.listed,
            "already_archived": len(self.already_archived),
            "no_recording_at_source": len(self.no_recording),
            "to_archive": len(self.to_archive),
            "listing_requests": self.listing_requests,
            "estimated_api_requests": self.api_requests,
            "estimated_minutes_at_rate_limit": round(self.minutes_at(rate_limit), 1),
            "estimated_bytes": None,  # Exotel's listing does not give recording sizes
        }


def check_range(since: date, until: date, *, today: date | None = None) -> None:
    today = today or date.today()
    if since > until:
        raise ConfigError(f"--since {since} is after --until {until}: swap them")
    if until > today:
        raise ConfigError(f"--until {until} is in the future: use today ({today}) at the latest")
    if since < today - API_WINDOW:
        raise ConfigError(
            f"--since {since} is older than Exotel's six-month API window (earliest "
            f"{today - API_WINDOW}): Exotel no longer lists those calls, so they cannot be "
            "found; archive them by SID with `exotel-archiver archive` if you have the SIDs"
        )


async def plan_backfill(settings: Settings, since: date, until: date) -> Plan:
    """List the range (or reuse a saved complete listing) and sort its calls."""
    settings.require_exotel_credentials()
    tz = settings.exotel.timezone
    today = datetime.now(tz).date()
    check_range(since, until, today=today)
    plan = Plan(since, until)
    plan.requests_per_call = 1 + int(settings.legs) + int(settings.voice_logs != "off")
    sink = sink_for(settings)
    try:  # before any API request (and writing nothing): the destination is this ledger's
        await check_destination(settings, sink)
    finally:
        await sink.close()
    range_key = f"{since.isoformat()}..{until.isoformat()}"
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        listing = ledger.listing(range_key) if until < today else None
        if listing is None:
            start = datetime.combine(since, time.min, tz)
            end = datetime.combine(until, time.min, tz) + timedelta(days=1, seconds=-1)
            limiter = RateLimiter(settings.exotel.rate_limit, 60.0)
            plan.limiter = limiter
            async with ExotelClient(settings.exotel, limiter=limiter, retry=settings.retry) as c:
                listing = [
                    (call.sid, call.date_created.isoformat(), call.has_recording)
                    async for call in list_calls(
                        c, start, end, tz=tz, url_validity_minutes=int(settings.url_validity // 60)
                    )
                ]
                plan.listing_requests = c.requests
            ledger.save_listing(range_key, listing)
        plan.listed = len(listing)
        # A call that ended minutes ago is listed before its recording is there: look at it
        # through v3 (it is then reported as still active, or archived) rather than skip it.
        young = datetime.now(tz) - timedelta(seconds=settings.daemon.recording_grace, hours=2)
        for sid, created, has_recording in listing:
            if ledger.call_outcome(sid) == ARCHIVED:
                plan.already_archived.append(sid)
            elif not has_recording and datetime.fromisoformat(created) < young:
                plan.no_recording.append(sid)
            else:
                plan.to_archive.append(sid)
    finally:
        ledger.close()
    return plan


async def backfill(
    settings: Settings,
    plan: Plan,
    *,
    on_result: Callable[[CallResult], None] | None = None,
) -> Report:
    """Archive what ``plan`` says is left to archive."""
    limiter = plan.limiter.following() if plan.limiter is not None else None
    return await archive_calls(settings, plan.to_archive, on_result=on_result, limiter=limiter)
