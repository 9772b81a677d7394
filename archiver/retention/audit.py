"""``exotel-archiver retention audit``: does the archive keep what the rules say, as long as they
say, and nothing longer than they allow?

Findings (each names the call, the key and the problem):

=========================  =====================================================================
``missing``                an object of the manifest is gone without an erasure receipt: deleted
                           out of band (early, if its retention had not ended)
``not_locked``             its class asks for Object Lock, the stored object has none
``weaker_lock``            stored GOVERNANCE where the class (or the lock bound at archive time)
                           says COMPLIANCE
``retention_shorter``      the stored retain-until date is earlier than the one it must have
``hold_not_in_force``      a legal hold is recorded but the store does not hold the object
``hold_not_recorded``      the store holds the object but no hold is recorded in the manifest
``overdue``                class says delete, retention ended more than the grace period ago, no
                           hold: kept against its class (run ``retention purge``)
``class_not_configured``   the class bound at archive time is not in the config any more: the
                           object is kept (never purged) until the class is added back
``erased_but_present``     an erasure receipt exists but the object is still there
``deleted_early``          an erasure receipt dated before the retain-until date bound to the
                           object at archive time (its manifest entry), or before its own
``deleted_while_held``     an erasure receipt recorded while a legal hold was in force
``receipt_mismatch``       a receipt that states another class than the one bound to the object,
                           or other bytes (SHA-256, size) than its manifest entry
``receipt_without_entry``  a receipt for a key the manifest did not hold before it
``receipt_unreadable``     a receipt whose details or times cannot be read
=========================  =====================================================================

Every receipt is judged by the object's own manifest entry, not by what the receipt says of
itself: a receipt can only claim what the entry allowed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from archiver.ledger import EventRecord, ObjectRecord
from archiver.retention.archive import (
    ERASURE,
    HOLD,
    RELEASE,
    Item,
    RetentionArchive,
    iso,
    parse_time,
)
from archiver.retention.jobs import SLACK
from archiver.retention.reports import AuditReport


async def audit(
    archive: RetentionArchive, *, grace: timedelta = timedelta(days=7), now: datetime | None = None
) -> AuditReport:
    now = now or datetime.now(UTC)
    report = AuditReport()
    async for item in archive.items():
        report.checked += 1
        await _check_item(archive, item, report, now, grace)
    for page in archive.ledger.event_pages(ERASURE):
        for event in page:
            report.receipts += 1
            await _check_receipt(archive, event, report)
    return report


async def _check_receipt(
    archive: RetentionArchive, event: EventRecord, report: AuditReport
) -> None:
    """An erasure receipt holds only if the object's own manifest entry allowed that erasure:
    the entry exists and is the object the receipt names, the receipt states the class bound to
    it, it was erased no earlier than the entry's bound date and the receipt's own, with no legal
    hold in force — and the object is gone."""
    sid, key = event.call_sid, event.key
    try:
        details: dict[str, Any] = json.loads(event.details)
        erased_at = min(parse_time(event.at), parse_time(details.get("deleted_at") or event.at))
    except (ValueError, TypeError, AttributeError):
        report.add("receipt_unreadable", sid, key, f"receipt {event.at}: not a valid receipt")
        return
    if await archive.sink.stat(key) is not None:
        report.add("erased_but_present", sid, key, f"receipt {event.at}")
    entry = archive.ledger.object_at(key)
    if entry is None or (event.seq or 0) < (entry.seq or 0):
        report.add(
            "receipt_without_entry",
            sid,
            key,
            f"receipt {event.at} names an object the manifest did not hold before it",
        )
        return
    for problem in _receipt_against_entry(details, entry):
        report.add("receipt_mismatch", sid, key, f"receipt {event.at}: {problem}")
    floors = [(entry.retain_until, "bound at archive time"), (details.get("retain_until"), "")]
    for until, why in floors:
        if until and erased_at + SLACK < _time(until):
            report.add(
                "deleted_early",
                sid,
                key,
                f"deleted {iso(erased_at)}, retention until {until}" + (f" ({why})" if why else ""),
            )
            break
    if _held_before(archive, key, event.seq or 0):
        report.add("deleted_while_held", sid, key, f"receipt {event.at}: a legal hold was in force")


def _receipt_against_entry(details: dict[str, Any], entry: ObjectRecord) -> list[str]:
    problems = []
    if (
        entry.retention_class is not None
        and details.get("retention_class") != entry.retention_class
    ):
        problems.append(
            f"states class {details.get('retention_class')!r}, the object was bound to "
            f"{entry.retention_class!r}"
        )
    if details.get("sha256") != entry.sha256 or details.get("size") != entry.size:
        problems.append("names other bytes (sha256, size) than the manifest entry")
    return problems


def _held_before(archive: RetentionArchive, key: str, seq: int) -> bool:
    held = False
    for e in archive.ledger.events_of([key], before=seq):
        if e.kind in (HOLD, RELEASE):
            held = e.kind == HOLD
    return held


def _time(value: str) -> datetime:
    try:
        return parse_time(value)
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)  # an unreadable date allows nothing


async def _check_item(
    archive: RetentionArchive, item: Item, report: AuditReport, now: datetime, grace: timedelta
) -> None:
    sid, key = item.record.call_sid, item.key
    if item.unconfigured:
        report.add("class_not_configured", sid, key, item.not_configured())
    stored = await archive.sink.lock_status(key, item.record.version_id)
    if stored is None:
        early = " before its retention ended" if item.until > now else ""
        report.add("missing", sid, key, f"gone without an erasure receipt{early}")
        return
    if item.mode is not None and item.until > now:
        if stored.mode is None:
            report.add(
                "not_locked", sid, key, f"class {item.cls.name} asks for {item.mode} retention"
            )
        elif stored.mode == "GOVERNANCE" and item.mode == "COMPLIANCE":
            report.add("weaker_lock", sid, key, "stored GOVERNANCE, class says COMPLIANCE")
        elif stored.until is None or stored.until + SLACK < item.until:
            shown = iso(stored.until) if stored.until else "none"
            report.add(
                "retention_shorter",
                sid,
                key,
                f"stored until {shown}, class {item.cls.name} says {iso(item.until)}",
            )
    if archive.lock_enabled and item.held and not stored.legal_hold:
        report.add("hold_not_in_force", sid, key, f"recorded hold: {item.hold_reason}")
    if stored.legal_hold and not item.held:
        report.add("hold_not_recorded", sid, key, "the store holds it; the manifest does not")
    if (
        item.cls.at_end == "delete"
        and item.until + grace < now
        and not item.held
        and not stored.legal_hold
    ):
        report.add(
            "overdue",
            sid,
            key,
            f"class {item.cls.name} ended {iso(item.until)}: should have been purged",
        )
