"""What the retention jobs share: the archive as they see it, and how they record what they do.

``open_retention(settings)`` opens the destination and the ledger for a job. Each object the
ledger holds (and no erasure receipt has removed) becomes an ``Item``: its record, the class it
is kept under, the retention it must have and whether a legal hold is recorded for it.

What was bound at archive time is a floor no configuration edit lowers: the class recorded with
the object stays its class (a class since renamed or removed keeps the object, never purged, and
is reported), and its retention is the latest of the bound ``retain_until``, the date the class
gives as configured now, and any extension ``apply`` recorded. Only objects archived before
retention rules existed get their class now, from the rules and the call details stored beside
them (``call.json``). An object of a rescued call that the v1 fields could not classify has no
class until enrichment binds one (a ``class_bound`` event: ``archiver.retention.binding``, read
here as if the class were in its row); until then it is ``class_not_bound_yet``: kept, never
purged, reported — never classified from a ``call.json`` it does not have yet.

``items()`` reads the ledger a page at a time, so a job over millions of objects runs in bounded
memory.

Jobs record what they did as events in the ledger (``record``): legal holds, releases,
retention extensions, erasure receipts. When the job holds the state directory's writer lock it
also appends them to ``manifest.jsonl`` and seals them into the destination's chain at the end;
when the long-running worker holds it, the worker seals them once idle, or within ten minutes.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import re
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from archiver.archive import sink_for
from archiver.config import Settings
from archiver.errors import ArchiverError, ConfigError
from archiver.exotel.models import parse_call_details
from archiver.identity import bind
from archiver.keys import QUARANTINE
from archiver.ledger import PAGE, EventRecord, Ledger, ObjectRecord, utc_now, writer_lock
from archiver.manifest import ManifestWriter
from archiver.report import RESCUED
from archiver.retention.binding import CLASS_BOUND, REPAIRED, bound_record
from archiver.retention.policy import Period, RetentionClass, RetentionPolicy
from archiver.segments import seal
from archiver.sinks import Sink

log = logging.getLogger("archiver.retention")

HOLD, RELEASE = "legal_hold", "legal_hold_release"
EXTENDED, ERASURE = "retention_extended", "erasure"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def stronger(a: str | None, b: str | None) -> str | None:
    """The stronger of two lock modes (COMPLIANCE > GOVERNANCE > none)."""
    order = {None: 0, "GOVERNANCE": 1, "COMPLIANCE": 2}
    return a if order.get(a, 0) >= order.get(b, 0) else b


FOREVER = datetime.max.replace(tzinfo=UTC)
_QUARANTINED = re.compile(re.escape(QUARANTINE) + r".+/[0-9a-f]{64}")
"""The key of a copy ``repair`` set aside: ``_manifest/quarantine/<key>/<sha256>``."""
SNAPSHOT_CACHE = 1024
"""Calls archived before the rules whose class (from their ``call.json``) is remembered."""


@dataclass
class Item:
    """One stored object under the retention rules."""

    record: ObjectRecord
    cls: RetentionClass
    """The class bound at archive time, as configured now (for an object archived before the
    rules: the class the rules give its call.json). A bound class no longer configured is kept
    as an unconfigured class that says ``keep`` (see ``undecided``)."""
    until: datetime
    """The retention it must have: the latest of the date bound at archive time, the date its
    class gives as configured now, and what ``apply`` extended it to. Never earlier than the
    bound date, whatever the configuration says later."""
    mode: str | None
    """The lock it must have: the stronger of the mode it was written with, its class's mode now
    and what ``apply`` set."""
    held: bool = False
    hold_reason: str | None = None
    versions: tuple[str | None, ...] = ()
    """Every version of the object the archive wrote, oldest first: the archived one and those
    ``repair`` put back (``record.version_id`` is the newest). An erasure deletes them all."""
    bound_until: datetime | None = None
    """``retain_until`` as bound at archive time (None: archived before retention rules)."""
    undecided: tuple[str, str] | None = None
    """Why the rules cannot decide this object's retention now — (problem, detail) — so it is
    kept, never purged, and reported: ``class_not_configured`` (its bound class was renamed or
    removed), ``class_unknown`` (archived before the rules, and its call.json cannot be read,
    or is not the archived one), ``retention_unreadable`` (its dates cannot be computed)."""
    class_until: datetime | None = None
    """The date its class gives as configured now (None when undecided)."""
    quarantined: tuple[str, ...] = ()
    """Keys of the altered copies ``repair`` set aside for this object: erased with it."""

    @property
    def key(self) -> str:
        return self.record.key

    def brief(self) -> dict[str, Any]:
        return {
            "call_sid": self.record.call_sid,
            "key": self.key,
            "class": self.cls.name,
            "retain_until": iso(self.until),
            "lock_mode": self.mode,
            "at_end": self.cls.at_end,
            "legal_hold": self.held,
        }

    def kept_because(self) -> str:
        """The report's words for an undecided object."""
        return self.undecided[1] if self.undecided else ""


def _class_unknown(why: str) -> tuple[str, str]:
    return (
        "class_unknown",
        f"archived before the retention rules, and {why}: its class cannot be known, so it is "
        "kept, never purged",
    )


NOT_BOUND_YET = "class_not_bound_yet"


def _not_bound_yet(record: ObjectRecord) -> tuple[str, str]:
    return (
        NOT_BOUND_YET,
        f"a rescued call's object (since {record.archived_at}) whose class the v1 fields cannot "
        "decide: its class is bound, and its lock applied, at enrichment; until then it is "
        "kept, never purged",
    )


def _not_configured(name: str) -> tuple[str, str]:
    return (
        "class_not_configured",
        f"class {name!r}, bound at archive time, is not in the config's [retention.classes]: "
        "add it back (a renamed class must keep its old name for the objects archived under "
        "it); until then its objects are kept, never purged",
    )


@dataclass
class _Events:
    """What the events of one page of objects say about each key."""

    erased: set[str] = field(default_factory=set)
    extended: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, str | None] = field(default_factory=dict)
    repaired: dict[str, list[str | None]] = field(default_factory=dict)
    quarantined: dict[str, list[str]] = field(default_factory=dict)
    bound: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The class bound at enrichment to an object of a rescued call (``class_bound``)."""

    @classmethod
    def of(cls, events: list[EventRecord]) -> _Events:
        found = cls()
        for e in events:  # in order: a release after a hold lifts it
            if e.kind == ERASURE:
                found.erased.add(e.key)
            elif e.kind == EXTENDED:
                found.extended[e.key] = json.loads(e.details)
            elif e.kind == HOLD:
                found.held[e.key] = json.loads(e.details).get("reason")
            elif e.kind == RELEASE:
                found.held.pop(e.key, None)
            elif e.kind == CLASS_BOUND:
                found.bound.setdefault(e.key, json.loads(e.details))
            elif e.kind == REPAIRED:
                found.repaired.setdefault(e.key, []).append(e.version_id)
                aside = json.loads(e.details).get("quarantined_as")
                if (
                    isinstance(aside, str)
                    and _QUARANTINED.fullmatch(aside)
                    and aside.startswith(f"{QUARANTINE}{e.key}/")
                ):  # only the copy repair sets aside for this key, never another object
                    found.quarantined.setdefault(e.key, []).append(aside)
        return found


@dataclass
class RetentionArchive:
    settings: Settings
    policy: RetentionPolicy
    sink: Sink
    ledger: Ledger
    lock_enabled: bool
    owns_manifest: bool
    actor: str
    added: int = 0
    """Events this job recorded."""
    _flushed: int = 0
    seal_error: str | None = None
    """Why the events recorded could not be sealed into the destination yet (they are in the
    ledger and ``manifest.jsonl``; the next job, or the worker, seals them)."""
    _manifest: ManifestWriter | None = None
    _snapshot_classes: OrderedDict[str, RetentionClass] = field(default_factory=OrderedDict)

    async def items(self) -> AsyncIterator[Item]:
        """Every stored object not erased, with the retention it must have, in manifest order.

        Read a page of the ledger at a time: memory stays bounded however large the archive.
        """
        for page in self.ledger.object_pages():
            events = _Events.of(self.ledger.events_of([r.key for r in page]))
            for record in page:
                if record.key not in events.erased:
                    yield await self._item(record, events)
            await self.flush(every=self.settings.segment_entries, quietly=True)

    async def items_of(self, call_sid: str) -> list[Item]:
        """The stored objects of one call not erased."""
        records = self.ledger.objects_of(call_sid)
        keys = [r.key for r in records]
        events = _Events.of(
            [
                e
                for n in range(0, len(keys), PAGE)
                for e in self.ledger.events_of(keys[n : n + PAGE])
            ]
        )
        return [await self._item(r, events) for r in records if r.key not in events.erased]

    async def _item(self, record: ObjectRecord, events: _Events) -> Item:
        record = bound_record(record, events.bound.get(record.key))
        cls, undecided = await self._class_of(record)
        bound = by_class = None
        try:
            bound = parse_time(record.retain_until) if record.retain_until else None
            # A class lengthened since applies to old objects too; one shortened does not.
            if undecided is None:
                by_class = cls.retain_until(datetime.fromisoformat(record.call_created))
        except (ValueError, TypeError, ConfigError) as exc:
            undecided = (
                "retention_unreadable",
                f"its retention cannot be computed ({exc}): kept, never purged; check its "
                "manifest entry (call_created, retain_until)",
            )
        until = max([d for d in (bound, by_class) if d is not None], default=FOREVER)
        mode = stronger(cls.lock, record.lock_mode)
        if undecided is not None:
            # Kept, never purged; a lock is asked only as far as a date was bound (never one
            # "until the end of time" on a class nobody can read).
            cls = RetentionClass(cls.name, Period(), None, "keep")
            mode = record.lock_mode if bound is not None else None
        if (change := events.extended.get(record.key)) is not None:
            until = max(until, parse_time(change["retain_until"]))
            mode = stronger(change.get("lock_mode"), mode)
        versions = tuple(dict.fromkeys([record.version_id, *events.repaired.get(record.key, [])]))
        if len(versions) > 1:  # put back by repair: the newest version is the object now
            record = replace(record, version_id=versions[-1])
        return Item(
            record,
            cls,
            until,
            mode,
            record.key in events.held,
            events.held.get(record.key),
            versions or (record.version_id,),
            bound,
            undecided,
            by_class,
            tuple(events.quarantined.get(record.key, ())),
        )

    def held_now(self, key: str) -> bool:
        """Whether a legal hold is recorded for ``key`` now (read again just before a purge
        deletes: a hold recorded while the job runs counts)."""
        held = False
        for e in self.ledger.events_of([key]):
            if e.kind in (HOLD, RELEASE):
                held = e.kind == HOLD
        return held

    async def _class_of(
        self, record: ObjectRecord
    ) -> tuple[RetentionClass, tuple[str, str] | None]:
        """The object's class, and why its retention is undecided (None if it is decided).

        The class bound at archive time is the object's class for good: if the config no longer
        has it, the object is kept (``at_end = keep``) with its bound lock mode, never moved to
        another class. Only an object archived before any rules gets its class now, from its
        call's stored details; an object of a rescued call still unbound has none yet."""
        name = record.retention_class
        if name is not None:
            if name in self.policy.classes:
                return self.policy.classes[name], None
            return RetentionClass(name, Period(), record.lock_mode, "keep"), _not_configured(name)
        if self.rescued_unbound(record.call_sid):
            return RetentionClass("", Period(), None, "keep"), _not_bound_yet(record)
        found = await self.class_from_snapshot(record.call_sid)
        if not isinstance(found, RetentionClass):
            default = self.policy.classes[self.policy.default]
            return RetentionClass(default.name, Period(), default.lock, "keep"), found
        return found, None

    def rescued_unbound(self, call_sid: str) -> bool:
        """Whether an object of ``call_sid`` without a class is a rescued call's, to be bound at
        enrichment: the call is ``rescued``, or (a ledger rebuilt from the chain) it has its v1
        item stored and no v3 details yet."""
        return self.ledger.call_outcome(call_sid) == RESCUED or (
            self.ledger.object_for(call_sid, "call_details", 0) is None
            and self.ledger.object_for(call_sid, "v1_record", 0) is not None
        )

    async def class_from_snapshot(
        self, call_sid: str, *, default_if_gone: bool = True
    ) -> RetentionClass | tuple[str, str] | None:
        """The class the rules give a call archived before them, from its stored call.json —
        or why it cannot be known: its call.json cannot be read, or is not the one archived
        (SHA-256), or is gone (erased or lost: None if not ``default_if_gone``). A call archived
        without a call.json gets the default class. The last ``SNAPSHOT_CACHE`` classes read are
        remembered; a failed read is not, so the next job tries again."""
        cache = self._snapshot_classes
        if call_sid in cache:
            cache.move_to_end(call_sid)
            return cache[call_sid]
        snapshot = self.ledger.object_for(call_sid, "call_details", 0)
        if snapshot is None:  # a call archived without its details: the rules' default
            return self.policy.classes[self.policy.default] if default_if_gone else None
        # The archived call.json decides, read and checked against its SHA-256; a receipt's
        # word for it never does (a receipt is what a forger writes).
        try:
            present = await self.sink.stat(snapshot.key) is not None
        except ArchiverError as exc:
            return _class_unknown(f"its call.json cannot be read now ({exc})")
        if not present:
            return _class_unknown("its call.json is gone") if default_if_gone else None
        digest, data = hashlib.sha256(), bytearray()
        try:
            async for chunk in self.sink.read(snapshot.key):
                digest.update(chunk)
                data += chunk
        except ArchiverError as exc:
            log.warning("call %s: cannot read its call.json: %s", call_sid, exc)
            return _class_unknown(f"its call.json cannot be read now ({exc})")
        if digest.hexdigest() != snapshot.sha256:
            return _class_unknown(
                f"its call.json is not the archived one (SHA-256 {digest.hexdigest()}, "
                f"archived {snapshot.sha256}): run `exotel-archiver verify` and `repair`"
            )
        try:
            envelope = json.loads(bytes(data))
            found = self.policy.classify(parse_call_details(envelope["response"]["call_details"]))
        except (ArchiverError, ValueError, KeyError, TypeError) as exc:
            return _class_unknown(f"its archived call.json cannot be read as call details ({exc})")
        cache[call_sid] = found
        if len(cache) > SNAPSHOT_CACHE:
            cache.popitem(last=False)
        return found

    def record(self, kind: str, item: Item, **details: Any) -> EventRecord:
        """Add an event about ``item``'s object to the ledger (and so to the manifest chain)."""
        event = self.ledger.add_event(
            EventRecord(
                kind=kind,
                call_sid=item.record.call_sid,
                key=item.key,
                at=utc_now(),
                actor=self.actor,
                details=json.dumps(details, sort_keys=True),
                version_id=item.record.version_id,
            )
        )
        self.added += 1
        return event

    async def flush(
        self, *, every: int = 0, leftovers: bool = False, quietly: bool = False
    ) -> None:
        """Append the events recorded so far to ``manifest.jsonl`` and seal them into the
        destination, if this job holds the writer lock and at least ``every`` are waiting:
        a job that records a million events seals them as it goes, in bounded memory.
        ``leftovers``: whatever the ledger holds unsealed, whoever recorded it. ``quietly``: a
        store error is kept in ``seal_error`` (the job goes on; its report says so, and the next
        job seals what waits) instead of raised."""
        waiting = self.added - self._flushed > max(every - 1, 0)
        if leftovers:
            waiting = self.ledger.unsealed_count() > 0
        if not (self.owns_manifest and waiting):
            return
        if self._manifest is None:
            self._manifest = ManifestWriter(self.settings.state_dir / "manifest.jsonl")
        self._manifest.sync(self.ledger)
        try:
            await seal(self.ledger, self.sink)
        except ArchiverError as exc:
            if not quietly:
                raise
            self.seal_error = str(exc)
            log.warning(
                "could not seal %d event(s) into the destination now: %s",
                self.added - self._flushed,
                exc,
            )
            return
        self._flushed = self.added
        self.seal_error = None


@asynccontextmanager
async def open_retention(
    settings: Settings, *, actor: str | None = None
) -> AsyncIterator[RetentionArchive]:
    """The archive for a retention job; events it records are sealed when it ends."""
    policy = settings.retention
    if policy is None:
        raise ConfigError(
            "no retention rules: add a [retention] table to the config file (--config / "
            "ARCHIVER_CONFIG); docs/compliance.md shows one"
        )
    sink = sink_for(settings)
    try:
        await sink.check()
        with writer_lock(settings.state_dir, required=False) as owns:
            ledger = Ledger(settings.state_dir / "ledger.sqlite3")
            try:
                await bind(settings, sink, ledger, claim=False)
                archive = RetentionArchive(
                    settings,
                    policy,
                    sink,
                    ledger,
                    await sink.object_lock_enabled(),
                    owns,
                    actor or default_actor(),
                )
                if owns:  # what an earlier job recorded and could not seal (it failed) goes first
                    await archive.flush(leftovers=True, quietly=True)
                try:
                    yield archive
                except Exception:
                    # The job failed part way: what it recorded (erasures done) is sealed now,
                    # not left for a later job; the job's error is the one reported.
                    if owns:
                        await archive.flush(quietly=True)
                    raise
                if owns:
                    await archive.flush(quietly=True)
                elif archive.added:
                    log.info(
                        "%d event(s) recorded; the running worker seals them into the manifest",
                        archive.added,
                    )
            finally:
                ledger.close()
    finally:
        await sink.close()
