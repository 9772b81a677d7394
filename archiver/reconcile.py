"""Reconciliation: is the archive complete, not just consistent?

``reconcile`` lists the calls of a date range from Exotel itself (v1 Bulk Call Details) and looks
each up in the ledger:

* ``archived`` — the ledger says the call is archived;
* ``erased`` — it was archived, and ``retention purge`` has since deleted every recording of it
  under the retention rules (erasure receipts in the manifest chain): settled, not missing;
* ``no_recording_at_source`` — Exotel lists no recording for it, the call ended at least
  ``listing_settle`` before the listing began (so post-call processing is over), and the ledger
  knows no unfinished attempt at it;
* ``missing`` — Exotel has a recording and the archive does not (yet), or the ledger has the call
  pending or failed (a failed call of the range is reported even if Exotel does not list it);
* ``still_active`` — the ledger saw the call still active, or the worker found it in progress
  and Exotel does not list it yet (Exotel's listing never shows calls in progress, so these also
  come from the ledger: every call it has pending or not ready, created in the range);
* ``recording_pending`` — listed without a recording, but too recently for that to be final:
  its recording may still be in post-call processing.

The report is complete only when every call is ``archived``, ``erased`` or
``no_recording_at_source``: a
range with calls still active or recordings still to come is not complete yet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, tzinfo

from archiver.archive import sink_for
from archiver.config import Settings
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import ListedCall, list_calls
from archiver.identity import check_destination
from archiver.ledger import UNFINISHED, Ledger
from archiver.ratelimit import RateLimiter
from archiver.report import ARCHIVED, FAILED, NOT_READY

RECONCILED = (
    "archived",
    "erased",
    "missing",
    "no_recording_at_source",
    "still_active",
    "recording_pending",
)
SETTLED = frozenset({"archived", "erased", "no_recording_at_source"})


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
        began, settle = datetime.now(tz), timedelta(seconds=settings.listing_settle)
        limiter = RateLimiter(settings.exotel.rate_limit, 60.0)
        listed: dict[str, ListedCall] = {}  # a call a page repeats is reported once
        async with ExotelClient(settings.exotel, limiter=limiter, retry=settings.retry) as client:
            async for call in list_calls(
                client,
                start,
                end,
                tz=tz,
                url_validity_minutes=int(settings.url_validity // 60),
            ):
                first = listed.get(call.sid)
                if first is None:
                    listed[call.sid] = call
                elif call.has_recording and not first.has_recording:
                    listed[call.sid] = replace(first, has_recording=True)
        erased = {e.key for e in ledger.events() if e.kind == "erasure"}
        for call in listed.values():
            outcome = ledger.call_outcome(call.sid)
            if outcome == ARCHIVED:
                state = "erased" if _erased(ledger, call.sid, erased) else "archived"
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
        # Calls of the range the ledger knows unfinished but Exotel does not list: in progress
        # (found by the worker: pending, or seen active: not ready), or failed — never complete.
        for sid, outcome, created in ledger.unarchived():
            when = _aware(created, tz)
            if sid in listed or when is None or not start <= when < end + timedelta(seconds=1):
                continue
            report.calls.append(
                {
                    "call_sid": sid,
                    "created": created or "",
                    "state": "missing" if outcome == FAILED else "still_active",
                    "exotel_status": "not listed" if outcome == FAILED else "in-progress",
                }
            )
    finally:
        ledger.close()
    return report


def _erased(ledger: Ledger, call_sid: str, erased: set[str]) -> bool:
    """Whether every recording of the call was erased (with a receipt) since it was archived."""
    recordings = [o.key for o in ledger.objects_of(call_sid) if o.kind == "recording"]
    return bool(recordings) and all(key in erased for key in recordings)


def _aware(created: str | None, tz: tzinfo) -> datetime | None:
    """A ledger's created time as an aware time (one without offset read in ``tz``), or None
    when it is unknown or unreadable."""
    if not created:
        return None
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)
