"""What the retention jobs share: the archive as they see it, and how they record what they do.

``open_retention(settings)`` opens the destination and the ledger for a job. Each object the
ledger holds (and no erasure receipt has removed) becomes an ``Item``: its record, the class it
is kept under, the retention it must have (the class's, or later the one ``apply`` extended it
to) and whether a legal hold is recorded for it. Objects archived before retention rules existed
get their class from the rules and the call details stored beside them (``call.json``).

Jobs record what they did as events in the ledger (``record``): legal holds, releases,
retention extensions, erasure receipts. When the job holds the state directory's writer lock it
also appends them to ``manifest.jsonl`` and seals them into the destination's chain at the end;
when the long-running worker holds it, the worker seals them once idle, or within ten minutes.
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
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
from archiver.ledger import EventRecord, Ledger, ObjectRecord, utc_now, writer_lock
from archiver.manifest import ManifestWriter
from archiver.retention.policy import RetentionClass, RetentionPolicy
from archiver.segments import seal
from archiver.sinks import Sink

log = logging.getLogger("archiver.retention")

HOLD, RELEASE = "legal_hold", "legal_hold_release"
EXTENDED, ERASURE, REPAIRED = "retention_extended", "erasure", "repaired"


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


@dataclass
class Item:
    """One stored object under the retention rules."""

    record: ObjectRecord
    cls: RetentionClass
    until: datetime
    """The retention it must have: its class's as configured now, or what ``apply`` extended
    it to, whichever is later."""
    mode: str | None
    held: bool = False
    hold_reason: str | None = None
    versions: tuple[str | None, ...] = ()
    """Every version of the object the archive wrote, oldest first: the archived one and those
    ``repair`` put back (``record.version_id`` is the newest). An erasure deletes them all."""

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


@dataclass
class RetentionArchive:
    settings: Settings
    policy: RetentionPolicy
    sink: Sink
    ledger: Ledger
    lock_enabled: bool
    owns_manifest: bool
    actor: str
    added: list[EventRecord] = field(default_factory=list)
    _snapshot_classes: dict[str, RetentionClass] = field(default_factory=dict)

    def items(self) -> list[Item]:
        """Every stored object not erased, with the retention it must have."""
        events = self.ledger.events()
        erased = {e.key for e in events if e.kind == ERASURE}
        extended: dict[str, dict[str, Any]] = {}
        held: dict[str, str | None] = {}
        repaired: dict[str, list[str | None]] = {}
        for e in events:
            if e.kind == EXTENDED:
                extended[e.key] = json.loads(e.details)
            elif e.kind == HOLD:
                held[e.key] = json.loads(e.details).get("reason")
            elif e.kind == RELEASE:
                held.pop(e.key, None)
            elif e.kind == REPAIRED:
                repaired.setdefault(e.key, []).append(e.version_id)
        classes: dict[str, RetentionClass] = {}
        out = []
        for record in self.ledger.all_objects():
            if record.key in erased:
                continue
            cls = self._class_of(record, classes)
            # The class as configured now (a class lengthened since applies to old objects too;
            # one shortened is reported, and a stored date is never moved earlier).
            until = cls.retain_until(datetime.fromisoformat(record.call_created))
            mode = cls.lock
            if record.key in extended:
                until = max(until, parse_time(extended[record.key]["retain_until"]))
                mode = extended[record.key].get("lock_mode") or mode
            versions = tuple(dict.fromkeys([record.version_id, *repaired.get(record.key, [])]))
            if len(versions) > 1:  # put back by repair: the newest version is the object now
                record = replace(record, version_id=versions[-1])
            out.append(
                Item(
                    record,
                    cls,
                    until,
                    mode,
                    record.key in held,
                    held.get(record.key),
                    versions or (record.version_id,),
                )
            )
        return out

    def _class_of(self, record: ObjectRecord, cache: dict[str, RetentionClass]) -> RetentionClass:
        if record.retention_class in self.policy.classes:
            return self.policy.classes[record.retention_class]
        if record.call_sid not in cache:
            cache[record.call_sid] = self._classify_from_snapshot(record.call_sid)
        return cache[record.call_sid]

    def _classify_from_snapshot(self, call_sid: str) -> RetentionClass:
        """The class of a call archived before the rules (or under a class since removed):
        from its stored call details, else the default class."""
        found = self._snapshot_classes.get(call_sid)
        return found or self.policy.classes[self.policy.default]

    async def load_snapshots(self) -> None:
        """Classify calls archived without a class from their stored ``call.json``."""
        for record in self.ledger.all_objects():
            if record.kind != "call_details" or record.retention_class in self.policy.classes:
                continue
            try:
                data = b"".join([chunk async for chunk in self.sink.read(record.key)])
                envelope = json.loads(data)
                details = parse_call_details(envelope["response"]["call_details"])
            except (ArchiverError, ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "call %s: cannot read its call.json (%s): default class", record.call_sid, exc
                )
                continue
            self._snapshot_classes[record.call_sid] = self.policy.classify(details)

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
        self.added.append(event)
        return event


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
                await archive.load_snapshots()
                yield archive
                if archive.added and owns:
                    ManifestWriter(settings.state_dir / "manifest.jsonl").sync(ledger)
                    await seal(ledger, sink)
                elif archive.added:
                    log.info(
                        "%d event(s) recorded; the running worker seals them into the manifest",
                        len(archive.added),
                    )
            finally:
                ledger.close()
    finally:
        await sink.close()
