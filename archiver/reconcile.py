"""Reconciliation: is the archive complete, not just consistent?

``reconcile`` lists the calls of a date range from Exotel itself (v1 Bulk Call Details) and looks
each up in the ledger:

* ``archived`` — the ledger says the call is archived;
* ``rescued`` — the ledger says the call is rescued: its recording is stored (from the v1
  listing, ``archiver.rescue``), its v3 details (``call.json``, any recording v1 did not list)
  are not yet: its audio is safe, but it is not complete (the reason says whether enrichment is
  waiting, failed, or — ``enrich = never`` — will never come);
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
range with calls still active or recordings still to come is not complete yet, nor one with
rescued calls. ``recordings_safe`` says the weaker thing: every call is settled or rescued (no
recording the listing shows is missing from the archive).

Each call also carries a ``reason``: why it is in its state, in words (for a failed call, the
ledger's note of the failure). The report also holds the manifest chain as the destination
has it, checked as ``verify`` checks it (``archiver.chain.load_chain``: the segments and the
ledger, both ways; no object is re-read): its head (the SHA-256 of the last segment) and its
problems. ``coverage_page`` renders the report as the page a compliance officer reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from archiver.archive import sink_for
from archiver.chain import Chain, load_chain
from archiver.config import Settings
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import ListedCall, list_calls
from archiver.identity import check_destination
from archiver.ledger import UNFINISHED, Ledger
from archiver.ratelimit import RateLimiter
from archiver.redact import redact_text
from archiver.report import ARCHIVED, FAILED, NOT_READY, RESCUED

RECONCILED = (
    "archived",
    "rescued",
    "erased",
    "missing",
    "no_recording_at_source",
    "still_active",
    "recording_pending",
)
SETTLED = frozenset({"archived", "erased", "no_recording_at_source"})
SAFE = SETTLED | {"rescued"}
"""States in which no recording Exotel lists is missing from the archive."""


@dataclass
class ChainSummary:
    """The manifest chain of the destination, checked (``load_chain``), in a few numbers."""

    segments: int
    entries: int
    head_sha256: str | None
    """SHA-256 of the last segment: what the next segment's header must name (None: none yet)."""
    pending_seal: int
    """Entries the ledger has that no segment holds yet (the worker seals them soon)."""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ledger_used: bool = False

    @property
    def intact(self) -> bool:
        return not self.problems

    @classmethod
    def of(cls, chain: Chain) -> ChainSummary:
        return cls(
            segments=len(chain.segments),
            entries=len(chain.entries),
            head_sha256=chain.segments[-1].sha256 if chain.segments else None,
            pending_seal=len(chain.pending),
            problems=list(chain.problems),
            notes=list(chain.notes),
            ledger_used=chain.ledger_used,
        )

    def as_dict(self) -> dict[str, object]:
        return {"intact": self.intact, **asdict(self)}


@dataclass
class ReconcileReport:
    since: date
    until: date
    calls: list[dict[str, str]] = field(default_factory=list)
    tz: tzinfo = UTC
    """The account's time zone: the days of the range are its days."""
    chain: ChainSummary | None = None

    def counts(self) -> dict[str, int]:
        found = Counter(c["state"] for c in self.calls)
        return {state: found.get(state, 0) for state in RECONCILED}

    @property
    def complete(self) -> bool:
        return all(c["state"] in SETTLED for c in self.calls)

    @property
    def recordings_safe(self) -> bool:
        """Every call settled or rescued: complete but for the v3 details of rescued calls."""
        return all(c["state"] in SAFE for c in self.calls)

    def as_dict(self) -> dict[str, object]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "timezone": str(self.tz),
            "complete": self.complete,
            "recordings_safe": self.recordings_safe,
            "counts": self.counts(),
            "calls": self.calls,
            "chain": self.chain.as_dict() if self.chain is not None else None,
        }


async def reconcile(settings: Settings, since: date, until: date) -> ReconcileReport:
    settings.require_exotel_credentials()
    tz = settings.exotel.timezone
    start = datetime.combine(since, time.min, tz)
    end = datetime.combine(until, time.min, tz) + timedelta(days=1) - timedelta(seconds=1)
    report = ReconcileReport(since, until, tz=tz)
    sink = sink_for(settings)
    try:  # the ledger speaks for this destination, or the comparison would be false
        await sink.check()
        await check_destination(settings, sink)
        ledger = Ledger(settings.state_dir / "ledger.sqlite3")
        try:  # the chain as verify checks it (no object re-read), before any API request
            report.chain = ChainSummary.of(await load_chain(sink, ledger))
        except BaseException:
            ledger.close()
            raise
    finally:
        await sink.close()
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
            note = _note(ledger, call.sid, settings)
            if outcome == ARCHIVED:
                state = "erased" if _erased(ledger, call.sid, erased) else "archived"
                reason = (
                    "archived, then erased under the retention rules (receipts in the manifest)"
                    if state == "erased"
                    else "archived: in the ledger and the manifest"
                )
            elif outcome == RESCUED:
                state = "erased" if _erased(ledger, call.sid, erased) else "rescued"
                reason = (
                    "rescued, then erased under the retention rules (receipts in the manifest)"
                    if state == "erased"
                    else _rescued_reason(ledger, call.sid, settings)
                )
            elif outcome == NOT_READY:
                state, reason = "still_active", f"not ready when last looked at: {note}"
            elif outcome == FAILED:
                state, reason = "missing", f"failed: {note}"
            elif outcome in UNFINISHED:
                state, reason = "missing", "found by the worker (pending), not archived yet"
            elif call.has_recording:
                state = "missing"
                reason = (
                    "Exotel lists a recording; the archiver has not archived this call"
                    if outcome is None
                    else "Exotel lists a recording now; the archiver found none when it looked"
                )
            elif call.date_created > began - settle:
                state = "recording_pending"
                reason = (
                    "listed without a recording less than --listing-settle ago: Exotel may "
                    "still be processing it"
                )
            else:
                state, reason = "no_recording_at_source", "Exotel has no recording of this call"
            report.calls.append(
                {
                    "call_sid": call.sid,
                    "created": call.date_created.isoformat(),
                    "state": state,
                    "exotel_status": call.status,
                    "reason": reason,
                }
            )
        # Calls of the range the ledger knows unfinished but Exotel does not list: in progress
        # (found by the worker: pending, or seen active: not ready), or failed — never complete.
        for sid, outcome, created in ledger.unarchived():
            when = _aware(created, tz)
            if sid in listed or when is None or not start <= when < end + timedelta(seconds=1):
                continue
            if outcome == FAILED:
                reason = f"failed, and Exotel no longer lists it: {_note(ledger, sid, settings)}"
            elif outcome == NOT_READY:
                reason = f"still active when last looked at: {_note(ledger, sid, settings)}"
            else:
                reason = "found in progress by the worker; Exotel lists a call once it ends"
            report.calls.append(
                {
                    "call_sid": sid,
                    "created": created or "",
                    "state": "missing" if outcome == FAILED else "still_active",
                    "exotel_status": "not listed" if outcome == FAILED else "in-progress",
                    "reason": reason,
                }
            )
    finally:
        ledger.close()
    return report


def _rescued_reason(ledger: Ledger, call_sid: str, settings: Settings) -> str:
    """Why a rescued call is not complete: enrichment waiting, failed, or never coming."""
    safe = "rescued: its recording is stored (from the v1 listing); its v3 details are not"
    detail = ledger.call_detail(call_sid)
    if settings.enrich == "never":
        return f"{safe}, and enrich = never: it stays rescued"
    if detail:  # e.g. a failed enrichment attempt (the outcome stays rescued)
        return f"{safe} yet, enrichment has not completed: {_note(ledger, call_sid, settings)}"
    return f"{safe} yet: enrichment fetches them (call.json) and completes it"


def _note(ledger: Ledger, call_sid: str, settings: Settings) -> str:
    """The ledger's note of the call's last outcome (no secret in it), or "no detail"."""
    return redact_text(ledger.call_detail(call_sid) or "no detail", settings.secrets)


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
