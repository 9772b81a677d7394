"""The retention jobs that change things: ``plan`` (what would change), ``apply`` (extend stored
retention to the rules), ``hold``/``release`` (legal holds) and ``purge`` (erase what may go).

Safety rules, enforced here and by the store:

* ``apply`` only extends: a retain-until date is never moved earlier and COMPLIANCE is never
  turned into GOVERNANCE. An object kept longer or stronger than its class says is reported and
  left alone (a COMPLIANCE date cannot be shortened by anyone; a GOVERNANCE one could, but this
  job does not try). Turning GOVERNANCE into COMPLIANCE is the one change S3 lets only a
  principal allowed to bypass GOVERNANCE make: ``apply`` asks for the bypass for that change
  alone, and only when told to (``strengthen_governance``); otherwise it reports the object as
  failed, with the fix.
* ``purge`` deletes only objects whose class says ``delete``, whose retention has ended by the
  date bound at archive time, by the rules as configured now and at the store, and that carry no
  legal hold (recorded or at the store). An object whose bound class is no longer configured is
  never deleted. It never bypasses GOVERNANCE retention. Each deletion removes the stored
  versions for good and writes an erasure receipt (with the bound class and dates) into the
  manifest chain.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from archiver.errors import ConfigError, StorageError
from archiver.retention.archive import (
    ERASURE,
    EXTENDED,
    HOLD,
    RELEASE,
    Item,
    RetentionArchive,
    iso,
    stronger,
)
from archiver.retention.binding import unbound_window
from archiver.retention.reports import JobReport
from archiver.sinks import Lock, LockStatus

log = logging.getLogger("archiver.retention")

SLACK = timedelta(seconds=1)
"""Stores keep retain-until dates to the second."""


def needed_change(item: Item, stored: LockStatus, now: datetime) -> str | None:
    """What the stored retention lacks against the rules: lock, strengthen, extend, or None."""
    if item.mode is None or item.until <= now:
        return None
    if stored.mode is None:
        return "lock"
    if stored.mode == "GOVERNANCE" and item.mode == "COMPLIANCE":
        return "strengthen"
    if stored.until is None or stored.until < item.until - SLACK:
        return "extend"
    return None


def kept_beyond(item: Item, stored: LockStatus) -> str | None:
    """Why the store keeps more than the class says (left alone), or None."""
    if stored.until is not None and stored.until - SLACK > item.until:
        return f"stored retention until {iso(stored.until)} is later than the class's"
    if stronger(stored.mode, item.mode) != item.mode:
        return f"stored mode {stored.mode} is stronger than the class's {item.mode}"
    return None


STRENGTHEN_NEEDS_OPT_IN = (
    "stored GOVERNANCE, the class says COMPLIANCE: S3 lets only a principal allowed to bypass "
    "GOVERNANCE retention change it; run `retention apply --strengthen-governance` with "
    "credentials granted s3:BypassGovernanceRetention (docs/compliance.md, docs/storage.md)"
)


async def plan(archive: RetentionArchive, *, days: int, now: datetime | None = None) -> JobReport:
    """Objects whose retention ends within ``days``, under legal hold, or not as the rules say;
    and the window between rescue and lock (``report.unbound``: objects of rescued calls whose
    class binds at enrichment, listed one by one as ``class_not_bound_yet``)."""
    now = now or datetime.now(UTC)
    report = JobReport("plan")
    horizon = now + timedelta(days=days)
    async for item in archive.items():
        if item.held:
            report.add(item, "held", reason=item.hold_reason)
        if item.undecided is not None:
            report.add(item, item.undecided[0], detail=item.kept_because())
        elif now < item.until <= horizon or (item.until <= now and item.cls.at_end == "delete"):
            ends = "delete" if item.cls.at_end == "delete" and not item.held else "keep"
            report.add(item, f"ends_then_{ends}")
        if (
            item.bound_until is not None
            and item.class_until is not None
            and item.bound_until - SLACK > item.class_until
            and item.bound_until > now
        ):
            report.add(
                item,
                "bound_beyond_class",
                detail=f"bound at archive time until {iso(item.bound_until)}; class "
                f"{item.cls.name} now says {iso(item.class_until)}: kept until the bound date",
            )
        if item.mode is None or not archive.lock_enabled:
            continue
        try:
            stored = await archive.sink.lock_status(item.key, item.record.version_id)
        except StorageError as exc:
            report.fail(item, str(exc))
            continue
        if stored is None:
            report.add(item, "missing")
            continue
        change = needed_change(item, stored, now)
        if change is not None:
            report.add(item, change, stored_mode=stored.mode, stored_until=_iso(stored.until))
        elif (beyond := kept_beyond(item, stored)) is not None:
            report.add(item, "kept_beyond_class", detail=beyond)
    window = unbound_window(archive.ledger)
    report.unbound = {"objects": window.objects, "oldest": window.oldest}
    return report


async def apply(
    archive: RetentionArchive,
    *,
    strengthen_governance: bool = False,
    now: datetime | None = None,
) -> JobReport:
    """Bring stored retention up to the rules: lock, extend, and (only with
    ``strengthen_governance``) turn GOVERNANCE into COMPLIANCE — never shorten, never weaken."""
    now = now or datetime.now(UTC)
    report = JobReport("apply")
    if not archive.lock_enabled:
        needs_lock = 0
        async for item in archive.items():
            needs_lock += item.mode is not None and item.until > now
        if needs_lock:
            raise ConfigError(
                f"{needs_lock} object(s) belong to classes with a lock mode, but "
                f"{archive.sink.describe()} has no Object Lock: nothing can be applied"
            )
        return report
    async for item in archive.items():
        if item.mode is None or item.until <= now:
            continue
        try:
            stored = await archive.sink.lock_status(item.key, item.record.version_id)
        except StorageError as exc:
            report.fail(item, str(exc))
            continue
        if stored is None:
            report.fail(item, "the object is missing: run `exotel-archiver retention audit`")
            continue
        change = needed_change(item, stored, now)
        if change is None:
            if (beyond := kept_beyond(item, stored)) is not None:
                report.add(item, "left_longer", detail=beyond)
            continue
        until = max(item.until, stored.until or item.until)  # never earlier than stored
        mode = stronger(item.mode, stored.mode) or "GOVERNANCE"
        if change == "strengthen" and not strengthen_governance:
            report.fail(item, STRENGTHEN_NEEDS_OPT_IN)
            if stored.until is None or stored.until >= item.until - SLACK:
                continue
            # The mode cannot change without the opt-in, the date can: extended in GOVERNANCE
            # (no bypass needed), the object stays protected until the class's date.
            change, mode = "extend", "GOVERNANCE"
        try:
            await archive.sink.set_retention(
                item.key,
                Lock(mode, until),
                version_id=item.record.version_id,
                bypass_governance=change == "strengthen",
            )
        except StorageError as exc:
            report.fail(item, str(exc))
            continue
        archive.record(
            EXTENDED,
            item,
            lock_mode=mode,
            retain_until=iso(until),
            previous_lock_mode=stored.mode,
            previous_retain_until=_iso(stored.until),
            retention_class=item.cls.name,
        )
        report.add(item, change, lock_mode=mode, new_until=iso(until))
    return report


async def hold(
    archive: RetentionArchive, call_sids: list[str], *, reason: str, on: bool
) -> JobReport:
    """Place (``on``) or lift a legal hold on every object of each call, and record it."""
    if not reason.strip():
        raise ConfigError("--reason must say why (it goes into the manifest)")
    report = JobReport("hold" if on else "release")
    calls = [(sid, await archive.items_of(sid)) for sid in call_sids]
    for sid, mine in calls:
        if not mine:
            raise ConfigError(f"call {sid} has no archived objects in this archive")
    for _sid, mine in calls:
        for item in mine:
            if item.held == on:
                report.add(item, "already_held" if on else "not_held")
                continue
            if archive.lock_enabled:
                try:
                    await archive.sink.set_legal_hold(
                        item.key, on, version_id=item.record.version_id
                    )
                except StorageError as exc:
                    report.fail(item, str(exc))
                    continue
            archive.record(HOLD if on else RELEASE, item, reason=reason.strip())
            report.add(
                item,
                "held" if on else "released",
                enforced_by_store=archive.lock_enabled,
            )
    if not archive.lock_enabled and len(report.rows):
        log.warning(
            "%s has no Object Lock: the hold is recorded in the manifest and respected by "
            "`retention purge`, but the store itself does not enforce it",
            archive.sink.describe(),
        )
    return report


async def purge(
    archive: RetentionArchive, *, dry_run: bool, now: datetime | None = None
) -> JobReport:
    """Delete what may go (see the module docstring); an erasure receipt for each.

    ``now`` is the rules' clock (tests move it); what the store retains is judged by real time,
    as the store judges it.
    """
    now = now or datetime.now(UTC)
    report = JobReport("purge")
    async for item in archive.items():
        if item.undecided is not None:
            report.add(item, f"kept_{item.undecided[0]}", detail=item.kept_because())
            continue
        if item.cls.at_end != "delete" or item.until > now:
            continue
        if item.held:
            report.add(item, "kept_held", reason=item.hold_reason)
            continue
        try:
            await _erase(archive, item, report, dry_run=dry_run)
        except StorageError as exc:
            report.fail(item, str(exc))
    return report


async def _erase(
    archive: RetentionArchive, item: Item, report: JobReport, *, dry_run: bool
) -> None:
    """Erase one object whose retention has ended by the rules, if the store lets it go."""
    # Every version the archive wrote (the archived one, and those repair put back) must be free
    # to go, and all of them go — with the altered copies repair set aside: an erasure receipt
    # never leaves a copy behind.
    versions = item.versions or (item.record.version_id,)
    found = [await archive.sink.lock_status(item.key, v) for v in versions]
    stored = [f for f in found if f is not None]
    if not stored:
        report.fail(item, "already gone without an erasure receipt: see `retention audit`")
        return
    if any(f.legal_hold for f in stored):
        report.add(item, "kept_held_at_store")
        return
    retained = [f.until for f in stored if f.until is not None]
    if retained and max(retained) > datetime.now(UTC):  # the store's clock
        report.add(item, "kept_retained_at_store", stored_until=iso(max(retained)))
        return
    if dry_run:
        report.add(item, "would_delete")
        return
    if archive.held_now(item.key):  # a hold recorded since this job read the object
        report.add(item, "kept_held", reason="placed while this purge ran")
        return
    for aside in item.quarantined:
        await archive.sink.delete(aside)
    for version, there in zip(versions, found, strict=True):
        if there is not None:
            await archive.sink.delete(item.key, version_id=version)
    archive.record(
        ERASURE,
        item,
        sha256=item.record.sha256,
        size=item.record.size,
        retention_class=item.cls.name,
        retain_until=iso(item.until),
        bound_retain_until=_iso(item.bound_until),
        at_end=item.cls.at_end,
        deleted_at=iso(datetime.now(UTC)),
        location=item.record.location,
        quarantine_erased=list(item.quarantined),
    )
    if await archive.sink.stat(item.key) is not None:
        report.fail(
            item,
            "the archived version(s) were erased (receipt written), but the key still holds a "
            "version the archive did not write: erase it by hand, then run `retention audit`",
        )
        return
    report.add(item, "deleted")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso(moment)
