"""``exotel-archiver retention audit``: does the archive keep what the rules say, as long as they
say, and nothing longer than they allow?

Findings (each names the call, the key and the problem):

=====================  =====================================================================
``missing``            an object of the manifest is gone without an erasure receipt: deleted
                       out of band (early, if its retention had not ended)
``not_locked``         its class asks for Object Lock, the stored object has none
``weaker_lock``        stored GOVERNANCE where the class says COMPLIANCE
``retention_shorter``  the stored retain-until date is earlier than the class's
``hold_not_in_force``  a legal hold is recorded but the store does not hold the object
``hold_not_recorded``  the store holds the object but no hold is recorded in the manifest
``overdue``            class says delete, retention ended more than the grace period ago, no
                       hold: kept against its class (run ``retention purge``)
``erased_but_present`` an erasure receipt exists but the object is still there
``deleted_early``      an erasure receipt dated before the object's retain-until date
=====================  =====================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from archiver.retention.archive import ERASURE, Item, RetentionArchive, iso, parse_time
from archiver.retention.jobs import SLACK


@dataclass
class AuditReport:
    checked: int = 0
    findings: list[dict[str, Any]] = field(default_factory=list)

    def add(self, problem: str, call_sid: str, key: str, detail: str) -> None:
        self.findings.append(
            {"problem": problem, "call_sid": call_sid, "key": key, "detail": detail}
        )

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        problems = sorted({f["problem"] for f in self.findings})
        return {
            "ok": self.ok,
            "checked": self.checked,
            "counts": {p: sum(1 for f in self.findings if f["problem"] == p) for p in problems},
            "findings": self.findings,
        }


async def audit(
    archive: RetentionArchive, *, grace: timedelta = timedelta(days=7), now: datetime | None = None
) -> AuditReport:
    now = now or datetime.now(UTC)
    report = AuditReport()
    for item in archive.items():
        report.checked += 1
        await _check_item(archive, item, report, now, grace)
    for event in archive.ledger.events():
        if event.kind != ERASURE:
            continue
        details = json.loads(event.details)
        if await archive.sink.stat(event.key) is not None:
            report.add("erased_but_present", event.call_sid, event.key, f"receipt {event.at}")
        deleted_at = parse_time(details.get("deleted_at") or event.at)
        retain_until = details.get("retain_until")
        if retain_until and deleted_at + SLACK < parse_time(retain_until):
            report.add(
                "deleted_early",
                event.call_sid,
                event.key,
                f"deleted {iso(deleted_at)}, retention until {retain_until}",
            )
    return report


async def _check_item(
    archive: RetentionArchive, item: Item, report: AuditReport, now: datetime, grace: timedelta
) -> None:
    sid, key = item.record.call_sid, item.key
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
