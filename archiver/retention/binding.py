"""The retention class of a rescued call's objects, bound at enrichment.

A call rescued from the v1 listing (``archiver.rescue``) is stored with its class when the v1
fields decide it (``RetentionPolicy.classify_v1``: locked in the same PUT, as any call). When
the rules need what only the v3 details say (``app_id``, ``app_name``, ``custom_field``, a
status or number v1 cannot tell for certain), its objects are stored *unbound*: no class, no
lock. ``bind_rescued`` binds them once enrichment has the v3 details:

* the class ``policy.classify(details)`` gives, its retain-until date from the call's creation;
* the class's Object Lock put on the stored version (S3 sets retention on an existing version
  in an Object Lock bucket), only ever strengthening: an object already locked longer or
  stronger keeps its lock (``Recorder.bind_lock``);
* a ``class_bound`` event in the ledger and so in the manifest chain (``retention_class``,
  ``retain_until``, ``lock_mode``, ``rescued_at``, ``bound_at``).

An object the v1 fields bound at rescue is checked against v3's class too: when v3 gives a later
date (v1's ``DateCreated`` read in another time zone than Exotel's, or a rule v1 misjudged), it is
raised the same way — never lowered: a class v1 gave that outlasts v3's stays, and one kept at
its end is never turned into one deleted.

The object's own manifest entry is not rewritten: it is sealed into the chain as it was
recorded (``verify`` compares the two), so the binding is the event, and whoever reads an
object's retention reads its row through ``bound_record`` (the retention jobs, ``repair``). A class
once bound — at rescue or at enrichment — is a floor no later config edit lowers: binding again
changes nothing.

Between rescue and binding an unbound object has no lock: ``unbound_window`` says how many
there are and since when (``retention plan`` and ``status`` show it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from archiver.ledger import EventRecord, Ledger, ObjectRecord, utc_now
from archiver.recorder import UNBOUND, Bound
from archiver.report import RESCUED
from archiver.sinks import Lock

if TYPE_CHECKING:
    from archiver.exotel.models import CallDetails
    from archiver.recorder import Recorder
    from archiver.retention.policy import RetentionClass, RetentionPolicy

CLASS_BOUND = "class_bound"
"""The event kind of a binding at enrichment."""
REPAIRED = "repaired"
"""``repair``'s event (``archiver.repair``): the object put back, as a new version."""

log = logging.getLogger("archiver.retention")


def bound_record(record: ObjectRecord, binding: dict[str, Any] | None) -> ObjectRecord:
    """``record`` as it stands after its ``class_bound`` event (``binding``, its details): with
    that class, date and lock mode. Without a binding it is returned as it is. (A binding of a
    record that had a class — one the v1 fields decided, which v3 then contradicted or dated
    later — only ever raises it: ``bind_rescued``.)"""
    if binding is None:
        return record
    return replace(
        record,
        retention_class=str(binding["retention_class"]),
        retain_until=binding.get("retain_until"),
        lock_mode=binding.get("lock_mode"),
    )


def bindings(ledger: Ledger, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The ``class_bound`` details of each of ``keys`` that has one (the first: a binding is
    never redone), at most ``archiver.ledger.PAGE`` keys."""
    found: dict[str, dict[str, Any]] = {}
    for e in ledger.events_of(keys):
        if e.kind == CLASS_BOUND and e.key not in found:
            found[e.key] = json.loads(e.details)
    return found


def bound_now(ledger: Ledger, record: ObjectRecord) -> ObjectRecord:
    """``record`` as it stands now: with its ``class_bound`` event applied, if it has one."""
    return bound_record(record, bindings(ledger, [record.key]).get(record.key))


def current_versions(ledger: Ledger, keys: list[str]) -> dict[str, str | None]:
    """The version each of ``keys`` is now where ``repair`` put it back (its newest
    ``repaired`` event's version), as the retention jobs read it: the row's own version is then
    an older one, hidden under a delete marker or a stranger's version."""
    return {e.key: e.version_id for e in ledger.events_of(keys) if e.kind == REPAIRED}


async def bind_rescued(
    recorder: Recorder, details: CallDetails, records: list[ObjectRecord]
) -> list[ObjectRecord]:
    """Bind the objects of a rescued call that were stored without a class (``records``: every
    object of the call, ``details``: its v3 details); returns ``records`` as they are after
    binding, in the same order.

    Without a retention policy, nothing to do. A record stored at enrichment (classified from
    v3) is returned unchanged, as is one bound by an earlier attempt, and one the v1 fields
    bound at rescue that v3's class would not raise (``_raised``: never lower). For each other
    — unbound, or bound at rescue to a class v3 contradicts or dates later — its lock brought
    up to the class first, then the ``class_bound`` event committed — so a crash between the
    two leaves the object unbound, and the next enrichment binds it again (the lock is then
    already there). A store error is raised; the objects bound before it stay bound."""
    policy = recorder.policy
    if policy is None:
        return list(records)
    target = policy.classify(details)
    target_until = target.retain_until(details.created_time)
    done = bindings(recorder.ledger, [r.key for r in records])
    now_at = current_versions(recorder.ledger, [r.key for r in records])
    out = []
    for record in records:
        raised = None if record.key in done else _raised(record, target, target_until, policy)
        if raised is None:
            out.append(bound_record(record, done.get(record.key)))
            continue
        name, until_at, lock_mode = raised
        until = until_at.isoformat().replace("+00:00", "Z")
        wanted = Lock(lock_mode, until_at) if lock_mode is not None else None
        # The version the key holds now: one repair put back, else the one first stored.
        version_now = now_at.get(record.key, record.version_id)
        mode, version = await recorder.bind_lock(record.key, version_now, wanted)
        now = utc_now()
        binding = {
            "retention_class": name,
            "retain_until": until,
            "lock_mode": mode,
            "rescued_at": record.archived_at,
            "bound_at": now,
        }
        event = EventRecord(
            kind=CLASS_BOUND,
            call_sid=record.call_sid,
            key=record.key,
            at=now,
            actor=recorder.worker,
            details=json.dumps(binding, sort_keys=True),
            version_id=version,
        )
        await recorder.writes.run(partial(recorder.ledger.add_event, event))
        log.info(
            "%s bound to retention class %s at enrichment (until %s, lock %s)",
            record.key,
            name,
            until,
            mode or "none",
        )
        out.append(bound_record(replace(record, version_id=version), binding))
    if recorder.ledger.unsealed_count() >= recorder.segment_size:
        await recorder.seal()
    return out


def _raised(
    record: ObjectRecord, target: RetentionClass, target_until: datetime, policy: RetentionPolicy
) -> tuple[str, datetime, str | None] | None:
    """What binding ``record`` at enrichment gives it — (class, retain-until, lock mode) — or
    None when that raises nothing. ``target`` is the class v3's details give, to
    ``target_until``.

    Unbound: the target. Bound at rescue from the v1 fields: both floors at once, never
    lowered — the later of the two dates, the stronger lock, and a class kept at its end if
    either is (``at_end = "keep"`` wins over a date: a call one class keeps is never deleted
    because another deletes it later). A class since renamed or removed gives no rule of its
    own but its date, and counts as kept (the jobs never delete an object of a class they do
    not know)."""
    if record.retention_class is None:
        return target.name, target_until, target.lock
    current = policy.classes.get(record.retention_class)
    current_until = _instant(record.retain_until)
    current_keeps = current is None or current.at_end == "keep"
    held = current.lock if current is not None else record.lock_mode  # a class gone: its lock
    until = max(current_until, target_until)
    if target.at_end == "keep" or not current_keeps:
        # v3's class keeps, or neither does: v3's class (the rules' answer), the later date.
        name = target.name if target.at_end == "keep" or target_until >= current_until else None
    else:
        name = None  # only the bound class keeps: it stays, with the later date
    name = name or record.retention_class
    mode = _stronger(held, target.lock)
    if name == record.retention_class and until <= current_until and mode == held:
        return None  # nothing raised: not the class, nor the date, nor the lock
    return name, until, mode


def both_floors(policy: RetentionPolicy, row: ObjectRecord, details: CallDetails) -> Bound | None:
    """The class, date and lock a rescued call's own recording is stored under when enrichment
    stores it (a rescue cut off before its recording was recorded): the binding ``row`` (its
    ``call-v1.json``, with any ``class_bound`` applied) got at rescue, raised to v3's class
    as ``bind_rescued`` raises a bound object — the later date, the stronger lock, kept if
    either keeps — so a PUT made now is locked to both floors at once. None when the row was
    stored unbound (the class needs v3: the rules' class for ``details``)."""
    if row.retention_class is None or row.retain_until is None:
        return None
    target = policy.classify(details)
    raised = _raised(row, target, target.retain_until(details.created_time), policy)
    return _as_it_was(policy, row, row.retention_class) if raised is None else Bound(*raised)


def as_bound(policy: RetentionPolicy, row: ObjectRecord) -> Bound | Literal["unbound"]:
    """The binding ``row`` (a rescued call's ``call-v1.json``, with any ``class_bound``
    applied) got, for another object of the same rescue — its recording-1, when a rescue is taken
    up again after it was cut off before recording it: the same class, date and lock (a class
    since renamed keeps the lock it was stored with), whatever the rules say of the v1 fields
    now; ``UNBOUND`` if the row was stored unbound. A class once bound is a floor."""
    if row.retention_class is None or row.retain_until is None:
        return UNBOUND
    return _as_it_was(policy, row, row.retention_class)


def _as_it_was(policy: RetentionPolicy, row: ObjectRecord, name: str) -> Bound:
    current = policy.classes.get(name)
    held = current.lock if current is not None else row.lock_mode
    return Bound(name, _instant(row.retain_until), held)


_STRENGTH = {None: 0, "GOVERNANCE": 1, "COMPLIANCE": 2}


def _stronger(a: str | None, b: str | None) -> str | None:
    return a if _STRENGTH.get(a, 0) >= _STRENGTH.get(b, 0) else b


def _instant(text: str | None) -> datetime:
    if not text:
        return datetime.min.replace(tzinfo=UTC)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class UnboundWindow:
    """The window between rescue and lock: objects of rescued calls still without a class."""

    objects: int
    oldest: str | None
    """The earliest ``archived_at`` among them (UTC, ISO 8601): unlocked since then."""

    def describe(self) -> str:
        if not self.objects:
            return "every rescued object has its retention class"
        return (
            f"{self.objects} object(s) of rescued calls not bound to a retention class yet, "
            f"unlocked since {self.oldest}: they bind (and lock) at enrichment"
        )


def unbound_window(ledger: Ledger) -> UnboundWindow:
    """How many objects of calls still rescued have no class yet (row or ``class_bound``
    event), and the oldest of their rescue times. One query, whatever the archive's size."""
    count, oldest = ledger.unbound_objects(RESCUED, CLASS_BOUND)
    return UnboundWindow(count, oldest)
