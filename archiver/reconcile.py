"""Reconciliation: is the archive complete, not just consistent?

``reconcile`` lists the calls of a date range from Exotel itself (v1 Bulk Call Details) and looks
each up in the ledger:

* ``archived`` — the ledger says the call is archived;
* ``no_recording_at_source`` — Exotel lists no recording for it, the call ended at least
  ``listing_settle`` before the listing began (so post-call processing is over), and the ledger
  knows no unfinished attempt at it;
* ``missing`` — Exotel has a recording and the archive does not (yet), or the ledger has the call
  pending or failed;
* ``still_active`` — the ledger saw the call still active (Exotel's listing never shows calls in
  progress, so these also come from the ledger);
* ``recording_pending`` — listed without a recording, but too recently for that to be final:
  its recording may still be in post-call processing.

The report is complete only when every call is ``archived`` or ``no_recording_at_source``: a
range with calls still active or recordings still to come is not complete yet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from archiver.archive import sink_for
from archiver.config import Settings
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import list_calls
from archiver.identity import check_destination
from archiver.ledger import UNFINISHED, Ledger
from archiver.ratelimit import RateLimiter
from archiver.report import ARCHIVED, NOT_READY

RECONCILED = ("archived", "missing", "no_recording_at_source", "still_active", "recording_pending")
SETTLED = frozenset({"archived", "no_recording_at_source"})


@dataclass
class ReconcileReport:
    since: date
    until: date
    calls: list[dict[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found = Counter(c["state"] for c in self.calls)
        return {state: found.get(state, 0) for state in RECONCILED}

    @property
    def complete(self) -> bool:
        return all(c["state"] in SETTLED for c in self.calls)

    def as_dict(self) -> dict[str, object]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "complete": self.complete,
            "counts": self.counts(),
            "calls": self.calls,
        }


async def reconcile(settings: Settings, since: date, until: date) -> ReconcileReport:
    settings.require_exotel_credentials()
    tz = settings.exotel.timezone
    start = datetime.combine(since, time.min, tz)
    end = datetime.combine(until, time.min, tz) + timedelta(days=1) - timedelta(seconds=1)
    report = ReconcileReport(since, until)
    sink = sink_for(settings)
    try:  # the ledger speaks for this destination, or the comparison would be false
        await sink.check()
        await check_destination(settings, sink)
    finally:
        await sink.close()
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        seen: set[str] = set()
        began, settle = datetime.now(tz), timedelta(seconds=settings.listing_settle)
        limiter = RateLimiter(settings.exotel.rate_limit, 60.0)
        async with ExotelClient(settings.exotel, limiter=limiter, retry=settings.retry) as client:
            async for call in list_calls(
                client,
                start,
                end,
                tz=tz,
                url_validity_minutes=int(settings.url_validity // 60),
            ):
                seen.add(call.sid)
                outcome = ledger.call_outcome(call.sid)
                if outcome == ARCHIVED:
                    state = "archived"
                elif outcome == NOT_READY:
                    state = "still_active"
                elif call.has_recording or outcome in UNFINISHED:
                    state = "missing"
                elif call.date_created > began - settle:
                    state = "recording_pending"
                else:
                    state = "no_recording_at_source"
                report.calls.append(
                    {
                        "call_sid": call.sid,
                        "created": call.date_created.isoformat(),
                        "state": state,
                        "exotel_status": call.status,
                    }
                )
        for sid, created in ledger.calls_with_outcome(NOT_READY):
            if sid not in seen and created and start <= datetime.fromisoformat(created) <= end:
                report.calls.append(
                    {
                        "call_sid": sid,
                        "created": created,
                        "state": "still_active",
                        "exotel_status": "in-progress",
                    }
                )
    finally:
        ledger.close()
    return report
