"""``exotel-archiver repair``: put back what ``verify`` found missing or altered.

The ledger and the manifest say which bytes belong at each key; repair makes the destination
hold them again, where that can be done without guessing:

1. **The destination's identity marker**, if it is gone (a wiped destination): put back from
   the bytes the ledger recorded when it claimed the destination (``archiver.identity``).
2. **Manifest segments** the ledger sealed that are missing: rendered again from the ledger's
   rows. A segment's bytes depend only on those rows, so the SHA-256 must equal the one recorded
   when it was sealed; if it does not, nothing is put and the segment is reported.
3. **Objects** that ``verify`` names ``missing`` or ``altered``: recordings and voice-log files
   are fetched again from Exotel (fresh call details, so a few API requests each) while Exotel
   still has them. The downloaded SHA-256 must equal the manifest's, or nothing is put (the
   source has other bytes now). An altered object is first copied aside under
   ``_manifest/quarantine/<key>/<its sha256>`` (evidence of what was there), then that version
   is deleted — a version under Object Lock or a legal hold refuses, and the object is
   reported, never unlocked — and the recorded bytes are put back write-once, with the lock the
   object was archived with. Each object put back gets a ``repaired`` event in the manifest
   chain (``sha256``, ``size``, ``previous``: missing|altered, ``quarantined_as``).

   A recording stored **encrypted client-side** (its entry has ``encrypted_to``) is compared by
   its plaintext (``plaintext_sha256``/``plaintext_size``): its recorded ciphertext cannot be
   made again (a fresh data key each time), so the download is encrypted afresh — only to the
   key the entry names, which ``--encrypt-to`` must then give (else the object is reported and
   nothing is fetched) — recorded as an intent (``archiver.encryption``) and put write-once.
   Its ``repaired`` event keeps the entry's ``sha256``/``size`` (the chain matches an event to
   its entry) and adds ``stored_sha256``/``stored_size`` (the new ciphertext: what ``verify``
   and the exports expect at the key from then on, ``chain.stored_as``), ``plaintext_sha256``
   and ``encrypted_to``. A repair cut off between that PUT and its event leaves a ciphertext
   ``verify`` calls altered; the next repair recognises it by its intent and records it, without
   fetching it again or setting it aside.

What cannot be repaired is reported, and the command exits 1: recordings Exotel no longer has,
recordings whose bytes at the source differ from the recorded ones, and the JSON snapshots
(``call.json``, ``legs.json``, ``voice-log.json``) — Exotel answers with new bytes each time (a
new ``request_id``, fresh URLs), so the recorded bytes cannot be fetched again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO

from archiver import identity
from archiver.archive import Archiver, address_policy, sink_for
from archiver.config import Settings
from archiver.encryption import STORED_TYPE, Encryption, found_at, not_as_asked
from archiver.errors import (
    ArchiverError,
    ConfigError,
    DestinationMismatch,
    ExotelNotFound,
    StorageConflict,
    StorageLocked,
)
from archiver.exotel.client import ExotelClient
from archiver.exotel.models import CallDetails
from archiver.exotel.v1 import file_of
from archiver.keys import QUARANTINE
from archiver.ledger import EventRecord, Ledger, ObjectRecord, SegmentRecord, utc_now, writer_lock
from archiver.manifest import ManifestWriter
from archiver.preflight import preflight
from archiver.ratelimit import RateLimiter
from archiver.recorder import SNAPSHOT_KINDS
from archiver.redact import strip_url
from archiver.retention.archive import default_actor
from archiver.retention.binding import bound_now
from archiver.segments import read_segment, render, seal
from archiver.sinks import Lock, PutResult, Sink, put_bytes
from archiver.transfer import Partial, recording_session
from archiver.verify import ALTERED, MISSING, ObjectCheck, verify

log = logging.getLogger("archiver.repair")

REPAIRED, CANNOT, WOULD_REPAIR = "repaired", "cannot_repair", "would_repair"


@dataclass
class Item:
    key: str
    call_sid: str | None
    kind: str | None
    found: str
    """What verify found: ``missing`` or ``altered`` (or ``segment``/``marker``)."""
    outcome: str = WOULD_REPAIR
    detail: str = ""


@dataclass
class RepairReport:
    items: list[Item] = field(default_factory=list)
    marker_restored: bool = False
    segments_restored: list[int] = field(default_factory=list)
    api_requests: int = 0
    dry_run: bool = False

    def count(self, outcome: str) -> int:
        return sum(1 for i in self.items if i.outcome == outcome)

    @property
    def ok(self) -> bool:
        return self.count(CANNOT) == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "marker_restored": self.marker_restored,
            "segments_restored": self.segments_restored,
            "counts": {o: self.count(o) for o in (REPAIRED, CANNOT, WOULD_REPAIR)},
            "api_requests": self.api_requests,
            "items": [i.__dict__ for i in self.items],
        }


async def run_repair(
    settings: Settings,
    *,
    since: date | None = None,
    until: date | None = None,
    dry_run: bool = False,
    on_item: Callable[[Item], None] | None = None,
) -> RepairReport:
    """``exotel-archiver repair``; see the module docstring."""
    path = settings.state_dir / "ledger.sqlite3"
    if not path.exists():
        raise ConfigError(
            f"no ledger in {settings.state_dir}: repair puts back what the ledger recorded. "
            "Restore it first with `exotel-archiver manifest rebuild` (if the destination's "
            "chain is intact), or point --state-dir at the archive's state directory"
        )
    sink = sink_for(settings)
    report = RepairReport(dry_run=dry_run)
    try:
        with writer_lock(settings.state_dir):
            ledger = Ledger(path)
            try:
                await preflight(  # we hold the lock; the identity is bound below
                    settings,
                    sink,
                    lock=False,
                    write=not dry_run,
                    check_identity=False,
                    exotel=False,
                )
                await _reclaim_marker(settings, sink, ledger, report)
                await identity.bind(settings, sink, ledger, claim=False, allow_lost_marker=True)
                await _repair(settings, sink, ledger, report, since, until, on_item)
            finally:
                ledger.close()
    finally:
        await sink.close()
    return report


async def _repair(
    settings: Settings,
    sink: Sink,
    ledger: Ledger,
    report: RepairReport,
    since: date | None,
    until: date | None,
    on_item: Callable[[Item], None] | None,
) -> None:
    def done(item: Item) -> None:
        report.items.append(item)
        if on_item is not None:
            on_item(item)

    if not report.dry_run:
        report.marker_restored = await identity.restore_marker(sink, ledger)
    elif identity.binding(ledger) is not None and await identity.read_marker(sink) is None:
        done(Item(identity.MARKER_KEY, None, "marker", MISSING))
    for segment in ledger.segments():
        if await sink.stat(segment.key) is None:
            item = Item(segment.key, None, "segment", MISSING)
            if not report.dry_run:
                await _restore_segment(sink, ledger, segment, item)
                if item.outcome == REPAIRED:
                    report.segments_restored.append(segment.number)
            if item.outcome != REPAIRED or report.dry_run:
                done(item)
    checked = await verify(sink, ledger, since=since, until=until)
    damaged = [c for c in checked.checks if c.status in (MISSING, ALTERED)]
    if not damaged or report.dry_run:
        for check in damaged:
            record = ledger.object_at(check.key)
            done(Item(check.key, check.call_sid, record.kind if record else None, check.status))
        return
    settings.require_exotel_credentials()  # only now: recordings are to be fetched again
    manifest = ManifestWriter(settings.state_dir / "manifest.jsonl")
    manifest.sync(ledger)
    limiter = RateLimiter(settings.exotel.rate_limit, 60.0)
    async with (
        ExotelClient(settings.exotel, limiter=limiter, retry=settings.retry) as exotel,
        recording_session(policy=address_policy(settings)) as http,
    ):
        archiver = Archiver(
            settings,
            sink=sink,
            ledger=ledger,
            manifest=manifest,
            exotel=exotel,
            http=http,
            archiving=False,  # puts back only what was recorded: the runs' key is not its
        )
        try:
            for check in damaged:
                record = ledger.object_at(check.key)
                item = Item(
                    check.key, check.call_sid, record.kind if record else None, check.status
                )
                if record is None:
                    item.outcome, item.detail = CANNOT, "the ledger has no row for this key"
                else:
                    await _repair_object(archiver, sink, ledger, record, item, check)
                done(item)
        finally:
            archiver.recorder.close()
            report.api_requests = exotel.requests
    manifest.sync(ledger)
    manifest.fsync()
    await seal(ledger, sink)


async def _reclaim_marker(
    settings: Settings, sink: Sink, ledger: Ledger, report: RepairReport
) -> None:
    """A marker replaced by another (or made unreadable) while the destination still holds
    exactly the chain this ledger sealed: keep the stranger aside and put ours back."""
    bound = identity.binding(ledger)
    if bound is None or not bound.confirmed or bound.location != sink.describe():
        return
    try:
        there = await identity.read_marker(sink)
    except DestinationMismatch:  # not a marker at all any more
        there = None
    else:
        if there is None or there.data == bound.marker:
            return  # lost (put back later) or intact
    if await sink.stat(identity.MARKER_KEY) is None:
        return
    sealed = ledger.segments()
    if not sealed:
        return  # nothing to tell this ledger's destination from another's: leave it to bind
    last = sealed[-1]
    if hashlib.sha256(await read_segment(sink, last.key)).hexdigest() != last.sha256:
        return
    if report.dry_run:
        report.items.append(Item(identity.MARKER_KEY, None, "marker", ALTERED))
        return
    aside = await _set_aside(sink, identity.MARKER_KEY, settings.state_dir)
    await identity.restore_marker(sink, ledger)
    report.marker_restored = True
    log.warning("the identity marker was replaced; kept aside at %s, ours put back", aside)


async def _restore_segment(sink: Sink, ledger: Ledger, segment: SegmentRecord, item: Item) -> None:
    entries = ledger.entries_between(segment.first_seq, segment.last_seq)
    data = render(segment.number, segment.prev_sha256, entries) if entries else b""
    sha = hashlib.sha256(data).hexdigest()
    if sha != segment.sha256:
        item.outcome = CANNOT
        item.detail = (
            f"the ledger's rows render to SHA-256 {sha}, not the {segment.sha256} sealed: the "
            "ledger was changed since; nothing was put"
        )
        return
    await put_bytes(sink, segment.key, data, content_type="application/x-ndjson")
    item.outcome = REPAIRED
    log.info("manifest segment %d put back at %s", segment.number, sink.location(segment.key))


def _encryption_for(archiver: Archiver, record: ObjectRecord) -> Encryption | str | None:
    """How ``record``'s object is encrypted again: None for a plaintext object, else the run's
    ``Encryption`` if its key is the one the entry names, else why it cannot be."""
    if record.encrypted_to is None:
        return None
    encryption = archiver.recorder.encryption
    if encryption is None:
        return (
            f"stored encrypted to {record.encrypted_to}; its ciphertext cannot be made again, "
            "and no --encrypt-to key is set to encrypt the recording afresh: set --encrypt-to "
            "(ARCHIVER_ENCRYPT_TO) to the public key with that fingerprint"
        )
    have = encryption.recipient.fingerprint
    if have != record.encrypted_to:
        return (
            f"stored encrypted to {record.encrypted_to}, but --encrypt-to is {have}: nothing "
            "was fetched; set --encrypt-to (ARCHIVER_ENCRYPT_TO) to the public key with "
            f"fingerprint {record.encrypted_to}"
        )
    return encryption


async def _repair_object(
    archiver: Archiver,
    sink: Sink,
    ledger: Ledger,
    record: ObjectRecord,
    item: Item,
    check: ObjectCheck,
) -> None:
    if record.kind in SNAPSHOT_KINDS:
        item.outcome = CANNOT
        item.detail = (
            f"a JSON snapshot ({record.kind}): Exotel answers with new bytes each time (a new "
            "request_id), so the recorded bytes cannot be fetched again"
        )
        return
    encryption = _encryption_for(archiver, record)
    if isinstance(encryption, str):
        item.outcome, item.detail = CANNOT, encryption
        return
    if (
        encryption is not None
        and item.found == ALTERED
        and await _adopt_own(sink, ledger, record, item, check)
    ):
        return
    what = f"{record.kind} {record.idx} of call {record.call_sid}"
    refresh: Callable[[CallDetails, int], Awaitable[str]]
    with tempfile.TemporaryFile(dir=archiver.spool_dir, prefix="spool-") as spool:
        try:
            details, _raw = await archiver.exotel.call_details(record.call_sid)
            fetched_at = time.time()
            if record.kind == "recording":
                # The file it came from first (a rescued call's recording-1 is the file v1
                # listed, whichever of v3's it is; a later one takes the next free index), else
                # the same position in v3's list.
                same_file = [
                    r for r in details.recordings or () if file_of(r.url) == file_of(record.source)
                ]
                same_index = [r for r in details.recordings or () if r.index == record.idx]
                listed = same_file or same_index
                if not listed:
                    item.outcome = CANNOT
                    item.detail = f"Exotel no longer lists recording {record.idx} of this call"
                    return
                url, index = listed[0].url, listed[0].index

                async def refresh(d: CallDetails, _idx: int) -> str:
                    return await archiver._recording_url(d, index)

            else:
                refresh = archiver._voice_log_url
                url = await refresh(details, 0)
            got, url = await archiver._fetch(
                details, record.idx, url, fetched_at, Partial(spool), refresh, what=what
            )
        except ExotelNotFound:
            item.outcome, item.detail = CANNOT, "Exotel no longer has this call"
            return
        except ArchiverError as exc:
            item.outcome = CANNOT
            item.detail = f"Exotel no longer has it, or would not give it: {exc}"
            return
        if got.sha256 != record.content_sha256 or got.size != record.content_size:
            item.outcome = CANNOT
            item.detail = (
                f"Exotel now serves other bytes ({got.size} bytes, SHA-256 {got.sha256}) than "
                f"were archived ({record.content_size} bytes, SHA-256 {record.content_sha256}); "
                "nothing was put"
            )
            return
        quarantined = None
        if item.found == ALTERED:
            try:
                quarantined = await _set_aside(sink, record.key, archiver.spool_dir)
            except StorageLocked as exc:
                item.outcome, item.detail = CANNOT, f"the altered version is locked: {exc}"
                return
        if quarantined and encryption is not None:
            # In a versioned bucket, deleting the altered version makes the one before it
            # current again: the recorded ciphertext itself, if it was not deleted too.
            back = await found_at(sink, record.key)
            if (
                back is not None
                and back.problem is None
                and (back.sha256, back.size)
                == (
                    check.expected_sha256,
                    check.expected_size,
                )
            ):
                _record_repair(
                    ledger, record, item, back.result, quarantined=quarantined, source=record.source
                )
                item.outcome = REPAIRED
                item.detail = (
                    "the altered version was set aside; the recorded one under it is current "
                    f"again ({back.size} bytes, SHA-256 {back.sha256})"
                )
                return
        # A rescued call's object bound at enrichment: the lock its binding gave.
        lock = _lock_of(bound_now(ledger, record))
        try:
            put = await _put_back(sink, record, spool, got.size, got.sha256, lock, encryption)
        except StorageConflict:
            # Another object holds the key: in a versioned bucket, the version under the one
            # set aside (not the recorded bytes, or it was taken above). This key only.
            if encryption is not None:
                ledger.drop_encrypted_writes(record.key)  # the one put cannot land: forgotten
            under = (
                " after the altered version was set aside (a versioned bucket: the version "
                "under it is not the recorded one either)"
                if quarantined
                else ""
            )
            item.outcome = CANNOT
            item.detail = (
                f"another object is at the key{under}; nothing was put. Run `exotel-archiver "
                "repair` again to set that one aside too, or look at the key's versions"
            )
            return
    _record_repair(ledger, record, item, put, quarantined=quarantined, source=strip_url(url))
    item.outcome = REPAIRED
    item.detail = (
        f"put back from Exotel ({record.content_size} bytes, SHA-256 {record.content_sha256})"
    )
    if encryption is not None:
        item.detail += (
            f", encrypted afresh to {record.encrypted_to} ({put.size} bytes, SHA-256 {put.sha256})"
        )
    log.info("%s put back at %s", record.key, put.location)


async def _put_back(
    sink: Sink,
    record: ObjectRecord,
    spool: BinaryIO,
    size: int,
    sha256: str,
    lock: Lock | None,
    encryption: Encryption | None,
) -> PutResult:
    """Put the recording downloaded into ``spool`` back at its key, write-once: the recorded
    bytes, or (encrypted client-side) a fresh ciphertext of them, its intent recorded first.
    Raises ``StorageConflict`` if another object holds the key."""
    if encryption is None:
        mime = record.content_type.split(";")[0].strip() or "application/octet-stream"
        return await sink.put(
            record.key, spool, size=record.size, sha256=record.sha256, content_type=mime, lock=lock
        )
    async with encryption.seal(record.key, spool, size=size, sha256=sha256) as sealed:
        return await sink.put(
            record.key,
            sealed.file,
            size=sealed.size,
            sha256=sealed.sha256,
            content_type=STORED_TYPE,
            lock=lock,
        )


def _record_repair(
    ledger: Ledger,
    record: ObjectRecord,
    item: Item,
    put: PutResult,
    *,
    quarantined: str | None,
    source: str,
) -> None:
    """The ``repaired`` event of ``record``'s object, now the version ``put`` describes."""
    details: dict[str, Any] = {
        "sha256": record.sha256,
        "size": record.size,
        "previous": item.found,
        "quarantined_as": quarantined,
        "source": source,
    }
    if record.encrypted_to is not None:  # a new ciphertext: the bytes at the key from now on
        details.update(
            stored_sha256=put.sha256,
            stored_size=put.size,
            plaintext_sha256=record.plaintext_sha256,
            encrypted_to=record.encrypted_to,
        )
    if put.sse is not None:  # what the store confirmed for the version put back
        details.update(sse=put.sse, sse_kms_key_id=put.sse_kms_key_id)
    ledger.add_event(
        EventRecord(
            kind="repaired",
            call_sid=record.call_sid,
            key=record.key,
            at=utc_now(),
            actor=default_actor(),
            version_id=put.version_id,
            details=json.dumps(details, sort_keys=True),
        )
    )
    # Recorded (first: a crash between the two keeps the intent, and the next repair takes
    # its own ciphertext back by it): the key's intents are spent.
    ledger.drop_encrypted_writes(record.key)


async def _adopt_own(
    sink: Sink, ledger: Ledger, record: ObjectRecord, item: Item, check: ObjectCheck
) -> bool:
    """An "altered" encrypted object that is the ciphertext an earlier repair put back and was
    cut off before recording (its intent for this recording is in the ledger): recorded now."""
    own = [
        w
        for w in ledger.encrypted_writes(record.key)
        if (w.sha256, w.size) == (check.found_sha256, check.found_size)
        and (w.plaintext_sha256, w.plaintext_size)
        == (record.plaintext_sha256, record.plaintext_size)
        and w.encrypted_to == record.encrypted_to
    ]
    info = await sink.stat(record.key) if own else None
    if info is None:
        return False
    problem = sink.encryption_problem(info)
    if problem is not None:  # its bytes, but not encrypted at rest as asked: not taken
        item.outcome, item.detail = CANNOT, not_as_asked(sink, record.key, problem)
        return True
    put = PutResult(
        key=record.key,
        size=own[0].size,
        sha256=own[0].sha256,
        created=False,
        location=sink.location(record.key),
        version_id=info.version_id,
        sse=info.sse,
        sse_kms_key_id=info.sse_kms_key_id,
    )
    _record_repair(ledger, record, item, put, quarantined=None, source=record.source)
    item.outcome = REPAIRED
    item.detail = (
        "the ciphertext an earlier repair put back (its intent recorded, its event not): "
        f"recorded ({put.size} bytes, SHA-256 {put.sha256})"
    )
    log.info("%s: the ciphertext an earlier repair put back, recorded", record.key)
    return True


async def _set_aside(sink: Sink, key: str, spool_dir: Path) -> str:
    """Copy the altered object to the quarantine, then delete that version; its new key."""
    info = await sink.stat(key)
    if info is None:
        return ""
    with tempfile.TemporaryFile(dir=spool_dir, prefix="quarantine-") as copy:
        digest, size = hashlib.sha256(), 0
        async for chunk in sink.read(key):
            copy.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        aside = f"{QUARANTINE}{key}/{digest.hexdigest()}"
        await sink.put(
            aside,
            copy,
            size=size,
            sha256=digest.hexdigest(),
            content_type="application/octet-stream",
        )
    await sink.delete(key, version_id=info.version_id)
    return aside


def _lock_of(record: ObjectRecord) -> Lock | None:
    if record.lock_mode is None or record.retain_until is None:
        return None
    until = datetime.fromisoformat(record.retain_until.replace("Z", "+00:00"))
    return Lock(record.lock_mode, until) if until > datetime.now(UTC) else None
