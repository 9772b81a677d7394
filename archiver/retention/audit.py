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
``class_not_bound_yet``    an object of a rescued call whose class waits for enrichment (no lock
                           meanwhile), rescued longer ago than the grace period: enrichment is
                           not keeping up, or failing. Within the grace it is not a finding, only
                           counted (``pending``): the window between rescue and lock
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from archiver.errors import StorageError
from archiver.ledger import EventRecord, ObjectRecord
from archiver.retention.archive import (
    ERASURE,
    EXTENDED,
    HOLD,
    NOT_BOUND_YET,
    RELEASE,
    Item,
    RetentionArchive,
    iso,
    parse_time,
)
from archiver.retention.binding import CLASS_BOUND, REPAIRED, bound_record
from archiver.retention.jobs import SLACK
from archiver.retention.policy import RetentionClass
from archiver.retention.reports import AuditReport


async def audit(
    archive: RetentionArchive, *, grace: timedelta = timedelta(days=7), now: datetime | None = None
) -> AuditReport:
    now = now or datetime.now(UTC)
    report = AuditReport()
    async for item in archive.items():
        report.checked += 1
        try:
            await _check_item(archive, item, report, now, grace)
        except StorageError as exc:
            report.add("check_failed", item.record.call_sid, item.key, str(exc))
    for page in archive.ledger.event_pages(ERASURE):
        for event in page:
            report.receipts += 1
            try:
                await _check_receipt(archive, event, report, now)
            except StorageError as exc:
                report.add("check_failed", event.call_sid, event.key, str(exc))
    return report


@dataclass
class _Before:
    """What the chain said about a key before one of its receipts."""

    held: bool = False
    erased: bool = False
    extended_until: str | None = None
    versions: set[str | None] = field(default_factory=set)
    bound: dict[str, Any] | None = None
    """The class bound to a rescued call's object at enrichment (``class_bound``)."""


def _before(archive: RetentionArchive, entry: ObjectRecord, seq: int) -> _Before:
    found = _Before(versions={entry.version_id})
    for e in archive.ledger.events_of([entry.key], before=seq):
        if e.kind in (HOLD, RELEASE):
            found.held = e.kind == HOLD
        elif e.kind == ERASURE:
            found.erased = True
        elif e.kind == REPAIRED:
            found.versions.add(e.version_id)
        elif e.kind == CLASS_BOUND and found.bound is None:
            found.bound = json.loads(e.details)
        elif e.kind == EXTENDED:
            until = _field(json.loads(e.details), "retain_until")
            if until and (
                found.extended_until is None or _time(until) > _time(found.extended_until)
            ):
                found.extended_until = until
    return found


async def _check_receipt(
    archive: RetentionArchive, event: EventRecord, report: AuditReport, now: datetime
) -> None:
    """An erasure receipt holds only if the object's own manifest entry (and the chain before
    the receipt) allowed that erasure: the entry exists and is the object the receipt names
    (bytes, version), the receipt states the class bound to it, the object was erased no
    earlier than the entry's bound date, any extension recorded before and the receipt's own
    date, with no legal hold in
    force, once — and no version of it is still stored. (For an object archived before the
    rules, whose class its call.json gives under today's rules, only the class is compared when
    the call.json can still be read: today's period is not the one its purge applied.)"""
    sid, key = event.call_sid, event.key
    try:
        details = json.loads(event.details)
        if not isinstance(details, dict):
            raise TypeError("not a JSON object")
        stated_until = _field(details, "retain_until")
        deleted_at = _field(details, "deleted_at") or event.at
        erased_at = min(_time(event.at, strict=True), _time(deleted_at, strict=True))
    except (ValueError, TypeError) as exc:
        report.add("receipt_unreadable", sid, key, f"receipt {event.at!r}: {exc}")
        return
    entry = archive.ledger.object_at(key)
    if entry is None or (event.seq or 0) < (entry.seq or 0):
        if await archive.sink.stat(key) is not None:
            report.add("erased_but_present", sid, key, f"receipt {event.at}")
        report.add(
            "receipt_without_entry",
            sid,
            key,
            f"receipt {event.at} names an object the manifest did not hold before it",
        )
        return
    before = _before(archive, entry, event.seq or 0)
    entry = bound_record(entry, before.bound)  # bound at enrichment: as if in its entry
    still = [v for v in sorted(before.versions, key=str) if await archive.sink.lock_status(key, v)]
    if still or await archive.sink.stat(key) is not None:
        report.add("erased_but_present", sid, key, f"receipt {event.at}")
    if erased_at > now + SLACK:
        report.add(
            "receipt_dated_ahead", sid, key, f"receipt dated {iso(erased_at)}, after this audit"
        )
    if before.erased:
        report.add("receipt_duplicate", sid, key, f"receipt {event.at}: the key was erased before")
    for problem in await _receipt_against_entry(archive, details, entry, event, before):
        report.add("receipt_mismatch", sid, key, f"receipt {event.at}: {problem}")
    floors = [
        (entry.retain_until, "bound at archive time (or at enrichment)"),
        (before.extended_until, "extended by `retention apply`"),
        (stated_until, "the receipt's own"),
    ]
    for until, why in floors:
        if until and erased_at < _time(until) - SLACK:
            report.add(
                "deleted_early",
                sid,
                key,
                f"deleted {iso(erased_at)}, retention until {until} ({why})",
            )
            break
    if before.held:
        report.add("deleted_while_held", sid, key, f"receipt {event.at}: a legal hold was in force")


async def _receipt_against_entry(
    archive: RetentionArchive,
    details: dict[str, Any],
    entry: ObjectRecord,
    event: EventRecord,
    before: _Before,
) -> list[str]:
    problems = []
    stated = details.get("retention_class")
    bound = entry.retention_class
    if bound is None:  # archived before the rules: the class its stored call.json gives now
        known = await archive.class_from_snapshot(entry.call_sid, default_if_gone=False)
        bound = known.name if isinstance(known, RetentionClass) else None
    if bound is not None and stated != bound:
        problems.append(f"states class {stated!r}, the object's class is {bound!r}")
    if details.get("sha256") != entry.sha256 or details.get("size") != entry.size:
        problems.append("names other bytes (sha256, size) than the manifest entry")
    if event.version_id not in before.versions:
        problems.append(f"names version {event.version_id!r}, which the archive never wrote there")
    return problems


def _field(details: dict[str, Any], name: str) -> str | None:
    value = details.get(name)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} is {type(value).__name__}, not a time")
    return value


def _time(value: str, *, strict: bool = False) -> datetime:
    """A receipt's time; an unreadable one allows nothing (or raises, ``strict``)."""
    try:
        return parse_time(value)
    except (ValueError, TypeError, AttributeError):
        if strict:
            raise ValueError(f"{value!r} is not a time") from None
        return datetime.max.replace(tzinfo=UTC)


async def _check_item(
    archive: RetentionArchive, item: Item, report: AuditReport, now: datetime, grace: timedelta
) -> None:
    sid, key = item.record.call_sid, item.key
    if item.undecided is not None and item.undecided[0] == NOT_BOUND_YET:
        if _time(item.record.archived_at) >= now - grace:
            report.pending[NOT_BOUND_YET] += 1  # the window between rescue and lock
        else:
            report.add(NOT_BOUND_YET, sid, key, item.kept_because())
    elif item.undecided is not None:
        report.add(item.undecided[0], sid, key, item.kept_because())
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
        elif stored.until is None or stored.until < item.until - SLACK:
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
        and item.until < now - grace
        and not item.held
        and not stored.legal_hold
    ):
        report.add(
            "overdue",
            sid,
            key,
            f"class {item.cls.name} ended {iso(item.until)}: should have been purged",
        )
