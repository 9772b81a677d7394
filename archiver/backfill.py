"""One-off date-range archival: ``exotel-archiver backfill --since DATE --until DATE``.

0. **Preflight** (``archiver.preflight``), the dry run included: every check that needs no
   Exotel request — credentials, the writer lock free, the destination writable (proven
   without writing to it), Object Lock if a class needs it, the destination's identity —
   before the first one; a problem is exit 2.
1. **List** the range's calls through v1 Bulk Call Details (``archiver.exotel.listing``: windows
   of at most 30 days, 100 a page), the days read in the account's time zone. Exotel keeps its
   API listing for six months: an older start is refused with a clear message. A listing is
   *complete* when the whole range ended at least ``listing_settle`` (6 hours) before the
   listing began: by then every call of the range is over and processed (Exotel lists a call
   only once it is over, its recording only once post-call processing is done, and a call
   created at 23:59 may end hours later). Only a complete listing is saved in the ledger — with
   when it began, under a key naming the time zone — so an interrupted backfill of a settled
   range resumes without listing again; any other range is listed again by every run (a dry
   run included: it saves exactly what a run would). A malformed item of the listing (an
   invalid ``Sid`` or ``DateCreated``) is skipped and kept in the plan (``skipped_items``),
   named in the output and the summary; the rest of the range is archived, the run exits 1,
   and the listing is not saved, so a later run lists the range again and reports it again
   (or finds it mended) instead of reusing a listing without it.
2. **Plan**: calls already archived (the ledger says so: no request needed), calls with no
   recording (listed without one, created ``listing_settle`` or more before the listing began,
   and not known to the ledger as pending, not ready or failed: no request needed), and the
   rest, to archive. ``--dry-run`` stops here and prints the plan with the API requests and the
   time they take at the rate limit (``exotel.rate_limit``: the worker's share of the
   account's 200 a minute).
3. **Archive** the rest with ``archive_calls`` — the same path as ``archive`` — with progress,
   and a summary printed and written as JSON. The summary's result holds every listed call,
   the ones the plan skipped included, so its counts add up to the plan's.

Calls still in progress are never listed by Exotel; calls that have ended but whose post-call
processing is not done are listed, and reported as still active (``not_ready``). Running the
same backfill again later (or the long-running worker) picks both up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo

from archiver.archive import archive_calls, rescued_whole, sink_for
from archiver.config import Settings
from archiver.errors import ConfigError
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import ListedCall, SkippedItem, list_calls
from archiver.exotel.v1 import rescue_url
from archiver.ledger import UNFINISHED, Ledger, utc_text
from archiver.preflight import preflight
from archiver.ratelimit import RateLimiter
from archiver.recorder import UNBOUND, Binding
from archiver.recording_auth import RecordingAuth
from archiver.report import ALREADY_ARCHIVED, ARCHIVED, NO_RECORDING, RESCUED, CallResult, Report

API_WINDOW = timedelta(days=180)
"""How far back Exotel's v1 listing reaches (its pages say six months)."""


def wall_clock(tz: tzinfo) -> datetime:
    """The time now in ``tz``: when a plan's listing begins (tests move it)."""
    return datetime.now(tz)


@dataclass
class Plan:
    """What a backfill of ``since..until`` will do, sorted from the range's v1 listing.

    Every listed call is in exactly one of ``already_archived``, ``no_recording`` and
    ``to_archive``; the counts mean what the result's outcomes of the same names mean
    (``archiver.report``).
    """

    since: date
    until: date
    listed: int = 0
    already_archived: list[str] = field(default_factory=list)
    no_recording: list[str] = field(default_factory=list)
    """Listed without a recording, created at least ``listing_settle`` before the listing began,
    and not known to the ledger as unfinished: not asked about again."""
    to_archive: list[str] = field(default_factory=list)
    """Calls archived through their v3 details (one request each, and more with legs or voice
    logs)."""
    to_rescue: list[str] = field(default_factory=list)
    """Calls the listing gives a URL for: rescued from it (``archiver.rescue``)."""
    rescued_before: list[str] = field(default_factory=list)
    """Calls an earlier run rescued: waiting for enrichment."""
    enrich: bool = True
    """Whether rescued calls are enriched (their v3 details fetched) in this run."""
    enrich_share: int = 0
    """Requests a minute the enrichment may use."""
    enrich_requests: int = 0
    """Requests the enrichment spent (after a run)."""
    rescue_fallbacks: int = 0
    """Rescues whose URL could not serve the call, archived through v3 (after a run)."""
    listing_requests: int = 0
    """v1 requests spent listing (0 when a saved complete listing was reused)."""
    listing_began: datetime | None = None
    """When the listing used began (a reused one: when it was made)."""
    listing_complete: bool = False
    """The range ended at least ``listing_settle`` before the listing began (every call of it
    was over and processed) and no item was skipped, so the listing is saved and later runs
    reuse it."""
    requests_per_call: int = 1
    skipped: list[SkippedItem] = field(default_factory=list)
    """Malformed items of the listing, left out of it (none when a saved listing was reused:
    a listing with any is never saved)."""
    limiter: RateLimiter | None = field(default=None, repr=False, compare=False)
    """The limiter the listing used, for the archiving to continue from (one budget)."""

    @property
    def api_requests(self) -> int:
        """Requests the archiving will cost (URL refreshes aside): the calls through v3, and
        the enrichment of rescued calls when this run enriches."""
        return len(self.to_archive) * self.requests_per_call + self.enrichment_estimate

    @property
    def enrichment_estimate(self) -> int:
        """Requests the enrichment of this range's rescued calls will cost."""
        if not self.enrich:
            return 0
        return (len(self.to_rescue) + len(self.rescued_before)) * self.requests_per_call

    def enrich_minutes(self) -> float:
        """Minutes the enrichment takes at its share of the budget."""
        return self.enrichment_estimate / self.enrich_share if self.enrich_share else 0.0

    def minutes_at(self, rate_limit: int) -> float:
        """Minutes the archiving takes at ``rate_limit`` requests a minute, when the API is
        what limits it (the listing is done by then): the calls through v3 and the enrichment
        side by side in the one budget, the enrichment never more than its share. (The share
        is a cap, not a reservation: the calls through v3 take whatever it leaves.)"""
        direct = len(self.to_archive) * self.requests_per_call
        return max((direct + self.enrichment_estimate) / rate_limit, self.enrich_minutes())

    def as_dict(self, rate_limit: int) -> dict[str, object]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "calls_listed": self.listed,
            "already_archived": len(self.already_archived),
            "no_recording": len(self.no_recording),
            "to_archive": len(self.to_archive),
            "listing_requests": self.listing_requests,
            "listing_began": utc_text(self.listing_began) if self.listing_began else None,
            "listing_complete": self.listing_complete,
            "to_rescue": len(self.to_rescue),
            "rescued_before": len(self.rescued_before),
            "enrich": self.enrich,
            "rescue": {
                "calls": len(self.to_rescue),
                "estimated_api_requests": 0,
                "note": "rescued from the listing: its requests are the only ones",
            },
            "enrichment": {
                "calls": len(self.to_rescue) + len(self.rescued_before) if self.enrich else 0,
                "estimated_api_requests": self.enrichment_estimate,
                "share_per_minute": self.enrich_share,
                "estimated_minutes": round(self.enrich_minutes(), 1),
                "estimated_duration": duration_text(self.enrich_minutes()),
                "api_requests": self.enrich_requests,
            },
            "v3_calls": {
                "calls": len(self.to_archive),
                "estimated_api_requests": len(self.to_archive) * self.requests_per_call,
            },
            "rescue_fallbacks": self.rescue_fallbacks,
            "estimated_api_requests": self.api_requests,
            "rate_limit_per_minute": rate_limit,
            "estimated_minutes_at_rate_limit": round(self.minutes_at(rate_limit), 1),
            "estimated_duration": duration_text(self.minutes_at(rate_limit)),
            "estimated_bytes": None,  # Exotel's listing does not give recording sizes
            "skipped_items": [item.as_dict() for item in self.skipped],
        }


def duration_text(minutes: float) -> str:
    """``minutes`` for people: ``under a minute``, ``42 min``, ``3 h 5 min``, ``2 d 4 h``."""
    whole = round(minutes)
    if whole < 1:
        return "under a minute"
    if whole < 60:
        return f"{whole} min"
    hours, rest = divmod(whole, 60)
    if hours < 24:
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def range_end(until: date, tz: tzinfo) -> datetime:
    """The end of a range whose last day is ``until``: the midnight after it, in ``tz``."""
    return datetime.combine(until + timedelta(days=1), time.min, tz)


def listing_complete(until: date, tz: tzinfo, settle: timedelta, began: datetime) -> bool:
    """Whether a listing that began at ``began`` holds every call of a range ending ``until``.

    Exotel lists a call only once it is over, and its recording only once post-call processing
    is done; a call created just before midnight may end hours later. So the listing is
    complete only if the whole range ended ``settle`` (``listing_settle``) before it began.
    """
    return range_end(until, tz) + settle <= began


def listing_key(since: date, until: date, tz: tzinfo) -> str:
    """The key a range's listing is saved under. The days are days in ``tz``: under another
    time zone setting the same dates are other instants, so the zone is part of the key."""
    zone = getattr(tz, "key", None) or str(tz)
    return f"{since.isoformat()}..{until.isoformat()} {zone}"


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


def one_per_call(listing: list[tuple[str, str, bool]]) -> list[tuple[str, str, bool]]:
    """The listing with each call once, in first-listed order. Paging can repeat a call (an item
    of one page again on the next); a call is listed with a recording if any of its items shows
    one. Counted twice it would make ``calls_listed`` exceed the calls the run reports, and the
    saved listing keeps one row a call — the last, maybe the one without its recording."""
    once: dict[str, tuple[str, bool]] = {}
    for sid, created, has_recording in listing:
        first = once.get(sid)
        once[sid] = (first[0], first[1] or has_recording) if first else (created, has_recording)
    return [(sid, created, has) for sid, (created, has) in once.items()]


async def plan_backfill(settings: Settings, since: date, until: date) -> Plan:
    """List the range (or reuse a saved complete listing) and sort its calls. First, before any
    API request and for a dry run too, every check that needs none (``archiver.preflight``):
    credentials, the writer lock free, the destination writable (proven without writing to
    it), Object Lock if a class needs it, the state directory this destination's."""
    tz = settings.exotel.timezone
    began = wall_clock(tz)
    check_range(since, until, today=began.date())
    settle = timedelta(seconds=settings.listing_settle)
    plan = Plan(since, until)
    plan.requests_per_call = 1 + int(settings.legs) + int(settings.voice_logs != "off")
    plan.enrich = settings.enrich == "background"
    plan.enrich_share = max(1, settings.exotel.rate_limit * settings.enrich_share // 100)
    auth = RecordingAuth.from_settings(settings) if settings.rescue else None
    rescuable: set[str] = set()
    """Calls the listing gives a URL for (with the lane on): rescued, not asked through v3."""
    sink = sink_for(settings)
    try:
        await preflight(settings, sink)
    finally:
        await sink.close()
    key = listing_key(since, until, tz)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        saved = ledger.listing(key) if not settings.rescue else None  # a rescue needs URLs
        if saved is not None and listing_complete(until, tz, settle, saved.began):
            listing, plan.listing_began = saved.calls, saved.began
        else:  # none saved, or one made too soon (under a shorter listing_settle): list again
            start = datetime.combine(since, time.min, tz)
            end = range_end(until, tz) - timedelta(seconds=1)
            limiter = RateLimiter(settings.exotel.rate_limit, 60.0)
            plan.limiter = limiter
            async with ExotelClient(settings.exotel, limiter=limiter, retry=settings.retry) as c:
                listing = []
                async for call in list_calls(
                    c,
                    start,
                    end,
                    tz=tz,
                    url_validity_minutes=int(settings.url_validity // 60),
                    on_skip=plan.skipped.append,
                ):
                    listing.append((call.sid, call.date_created.isoformat(), call.has_recording))
                    if (
                        settings.rescue
                        and rescue_url(call, auth)
                        and binding_for(settings, call) is not False
                    ):
                        rescuable.add(call.sid)
                plan.listing_requests = c.requests
            listing = one_per_call(listing)
            plan.listing_began = began
            # The same rule with --dry-run. A listing with skipped items is not saved: reused,
            # it would hide them from every later run.
            if listing_complete(until, tz, settle, began) and not plan.skipped:
                ledger.save_listing(key, listing, began=began)
        plan.listing_complete = not plan.skipped and listing_complete(
            until, tz, settle, plan.listing_began
        )
        plan.listed = len(listing)
        for sid, created, has_recording in listing:
            outcome = ledger.call_outcome(sid)
            if outcome == ARCHIVED:
                plan.already_archived.append(sid)
            elif outcome == RESCUED and sid in rescuable and not rescued_whole(ledger, sid):
                plan.to_rescue.append(sid)  # a rescue cut off before its recording: again
            elif outcome == RESCUED and (settings.rescue or not plan.enrich):
                plan.rescued_before.append(sid)  # the lane enriches it (or nothing does)
            elif outcome == RESCUED:
                plan.to_archive.append(sid)  # --rescue off: enriched the v3 way now
            elif sid in rescuable:
                plan.to_rescue.append(sid)
            elif outcome in UNFINISHED or has_recording:
                plan.to_archive.append(sid)  # what the ledger knows unfinished is looked at
            elif datetime.fromisoformat(created) + settle <= plan.listing_began:
                plan.no_recording.append(sid)
            else:
                # Listed before it could be over and processed: its recording may still come.
                # Look at it through v3 (then reported as still active, or archived).
                plan.to_archive.append(sid)
    finally:
        ledger.close()
    return plan


def binding_for(settings: Settings, listed: ListedCall) -> Binding | bool:
    """The retention class a rescue of ``listed`` stores its objects under: None without rules;
    the class the v1 fields decide; ``UNBOUND`` when a rule needs v3 fields (bound at
    enrichment) — or False with ``enrich = never``: then the call is not rescued."""
    policy = settings.retention
    if policy is None:
        return None
    decided = policy.classify_v1(listed.direction, listed.status, listed.phone_number_sid)
    if decided is not None:
        return decided
    if settings.enrich == "never":
        return False
    return UNBOUND


async def backfill(
    settings: Settings,
    plan: Plan,
    *,
    on_result: Callable[[CallResult], None] | None = None,
) -> Report:
    """Archive what ``plan`` says is left to archive.

    The report holds every listed call: those the plan skipped (``already_archived`` with the
    objects the ledger holds, ``no_recording`` without a request) and those archived now.
    """
    limiter = plan.limiter.following() if plan.limiter is not None else None
    report = await archive_calls(settings, plan.to_archive, on_result=on_result, limiter=limiter)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        skipped = [
            CallResult(sid, ALREADY_ARCHIVED, ledger.objects_of(sid))
            for sid in plan.already_archived
        ]
    finally:
        ledger.close()
    skipped += [
        CallResult(sid, NO_RECORDING, detail="the v1 listing shows no recording: not asked again")
        for sid in plan.no_recording
    ]
    skipped += [
        CallResult(sid, RESCUED, detail="rescued by an earlier run; enrich = never")
        for sid in plan.rescued_before
    ]
    report.results[:0] = skipped
    return report
