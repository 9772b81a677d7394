"""Storing one artifact of a call and recording it: the only way an object enters the ledger.

``Recorder.store`` puts the bytes into the destination (write-once, checksum-verified) and only
then adds the ledger row and appends the manifest line. Nothing is recorded that the destination
has not confirmed.

Artifacts, all under the call's folder (see ``archiver.keys``):

===============  ===========================  =============================================
kind             key                          what
===============  ===========================  =============================================
recording        ``recording-{n}.{mp3|wav}``  the audio of ``recordings[n-1]``
call_details     ``call.json``                the v3 call-details response, as received
legs             ``legs.json``                the legs response, as received
voice_log        ``voice-log.json``           the voice-logs response, as received
voice_log_audio  ``voice-log.{mp3|wav}``      the file the voice log points to
v1_record        ``call-v1.json``             the call's v1 listing item, for a rescued call
===============  ===========================  =============================================

The JSON responses are snapshots: a later request gives other bytes (a new ``request_id``, fresh
URLs). So if ``call.json`` (or another snapshot) is already in the destination with other bytes —
a ledger lost and rebuilt, a second worker — the stored one is kept and recorded as it is
(its size and the SHA-256 of its own bytes, as the store computed it or as read back, never its
metadata's claim), instead of failing the call with a conflict. Audio is never treated that
way: other bytes at a recording's key are a conflict.

With retention rules (``archiver.retention.policy``), every object of a call gets the call's
class and retain-until date in its ledger row and manifest line, and — when the class has a lock
mode and the date is still ahead — is written with that Object Lock in the same PUT. An object
found already at its key (left by a run that crashed between its PUT and its ledger commit, or
put by someone else) is recorded with the lock mode the store reports for it, after its lock is
brought up to the class where that only strengthens it (never a shorter date, never a weaker
mode); ``retain_until`` stays the class's date.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Union

from archiver.encryption import AUDIO_KINDS, STORED_TYPE, Encryption, adopt, found_at
from archiver.errors import StorageConflict, StoragePermanent, StorageRejected
from archiver.exotel.models import CallDetails
from archiver.group_commit import GroupCommit
from archiver.ledger import Entry, Ledger, ObjectRecord, utc_now
from archiver.manifest import ManifestWriter
from archiver.segments import seal
from archiver.sinks import Lock, PutResult, Sink
from archiver.sinks.streaming import Tap, mime_of

if TYPE_CHECKING:
    from archiver.envelope import Recipient
    from archiver.retention.policy import RetentionClass, RetentionPolicy

UNBOUND: Literal["unbound"] = "unbound"
"""``Recorder.store(binding=UNBOUND)``: the object gets no class and no lock yet."""


@dataclass(frozen=True)
class Bound:
    """A class already decided with its date and lock (``Recorder.store(binding=...)``): what a
    rescued call's own recording is stored under at enrichment — the class its ``call-v1.json``
    was bound to, raised to v3's (``archiver.retention.binding.both_floors``)."""

    name: str
    until: datetime
    lock: str | None


Binding = Union["RetentionClass", Bound, Literal["unbound"], None]
"""What class an object is stored under: the rules' (None), a given one (a class, or a class
with its date and lock decided), or none yet."""

SNAPSHOT_KINDS = frozenset({"call_details", "legs", "voice_log", "v1_record"})
_STRENGTH = {None: 0, "GOVERNANCE": 1, "COMPLIANCE": 2}
"""Object Lock modes, weakest first."""

log = logging.getLogger("archiver.recorder")


class Recorder:
    def __init__(
        self,
        sink: Sink,
        ledger: Ledger,
        manifest: ManifestWriter,
        worker: str,
        *,
        segment_size: int = 1000,
        policy: RetentionPolicy | None = None,
        encrypt_to: Recipient | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        self.sink, self.ledger, self.manifest, self.worker = sink, ledger, manifest, worker
        self.segment_size = segment_size
        self.policy = policy
        self._sealing = asyncio.Lock()
        self._recording = threading.Lock()
        self.writes = GroupCommit(ledger, after_commit=self._append)
        """The ledger's writer thread: every write of a run goes through it (group commits)."""
        self.encryption = (
            Encryption(encrypt_to, self.writes, spool_dir or Path(tempfile.gettempdir()))
            if encrypt_to is not None
            else None
        )
        """Client-side encryption of the audio (``archiver.encryption``), or None."""
        self.stored = 0
        """Recordings and voice logs (not JSON snapshots) recorded by this process so far."""

    async def store(
        self,
        details: CallDetails,
        *,
        kind: str,
        idx: int,
        key: str,
        body: BinaryIO,
        size: int,
        sha256: str,
        content_type: str,
        fmt: str,
        source: str,
        upload: Tap | None = None,
        binding: Binding = None,
    ) -> ObjectRecord:
        """Put ``body`` at ``key`` and record it; returns the ledger row (with its seq).

        ``upload``: the tap of a download streamed to the store (``tap``); if it streamed to
        ``key`` and completed, that is the put, else ``body`` is put as usual. ``binding``: the
        class to bind instead of the one the rules give ``details`` (a rescue's, decided from
        the v1 fields), or ``UNBOUND``: no class and no lock yet (a rescue whose class needs
        v3 fields: bound at enrichment, ``archiver.retention.binding``)."""
        mime = mime_of(content_type)
        lock, retention_class, retain_until = self._retention(details, binding)
        lock_mode = None
        put: PutResult | None
        try:
            put, lock = await self._put(key, body, size, sha256, mime, lock, upload, kind=kind)
        except StorageConflict:
            if kind in AUDIO_KINDS:  # ours, encrypted by an earlier attempt? else a conflict
                put = await adopt(self.sink, self.writes, key, size=size, sha256=sha256)
                if put is None:
                    raise
            elif kind in SNAPSHOT_KINDS:  # kept as it is: recorded as the store holds it
                put = await self._existing(key)
            else:
                raise
        location, size, sha256, version = put.location, put.size, put.sha256, put.version_id
        adopted = not put.created
        if put.created and lock is not None:
            lock_mode = lock.mode
        if adopted and self.policy is not None:
            # Not written by this PUT (e.g. left by a run that crashed before its ledger commit,
            # or put by someone else): its lock is whatever the store holds.
            lock_mode, version = await self._adopt_lock(key, version, lock)
        row = ObjectRecord(
            call_sid=details.sid,
            kind=kind,
            idx=idx,
            key=key,
            location=location,
            size=size,
            sha256=sha256,
            content_type=content_type,
            format=fmt,
            source=source,
            call_created=details.created_time.isoformat(),
            archived_at=utc_now(),
            worker=self.worker,
            version_id=version,
            retention_class=retention_class,
            retain_until=retain_until,
            lock_mode=lock_mode,
            sse=put.sse,
            sse_kms_key_id=put.sse_kms_key_id,
            plaintext_sha256=put.plaintext_sha256,
            plaintext_size=put.plaintext_size,
            encrypted_to=put.encrypted_to,
        )
        record = await self._record(row)
        if self.ledger.unsealed_count() >= self.segment_size:
            await self._seal_when_full()
        return record

    def close(self) -> None:
        """End the ledger's writes (those of calls cut off included) and the encryption thread:
        before the ledger closes."""
        self.writes.close()
        if self.encryption is not None:
            self.encryption.close()

    async def _seal_when_full(self) -> None:
        """Seal full segments once ``segment_size`` entries wait — looked at again under the
        seal's lock: the other calls in flight that saw the threshold passed meanwhile find
        those entries sealed by the first, and do not seal the few that came after into a
        segment each."""
        async with self._sealing:
            if self.ledger.unsealed_count() >= self.segment_size:
                await self._seal_now(at_least=self.segment_size)

    def _retention(
        self, details: CallDetails, binding: Binding = None
    ) -> tuple[Lock | None, str | None, str | None]:
        """The call's Object Lock (if its class has one and its date is ahead), class name and
        retain-until date (``Z``), from the retention policy (or ``binding``); all None without
        one, or when ``binding`` is ``UNBOUND``."""
        if self.policy is None or isinstance(binding, str):  # UNBOUND
            return None, None, None
        if isinstance(binding, Bound):
            locked = binding.lock is not None and binding.until > datetime.now(UTC)
            lock = Lock(binding.lock, binding.until) if locked and binding.lock else None
            return lock, binding.name, binding.until.isoformat().replace("+00:00", "Z")
        cls = binding if binding is not None else self.policy.classify(details)
        until = cls.retain_until(details.created_time)
        lock = Lock(cls.lock, until) if cls.lock is not None and until > datetime.now(UTC) else None
        return lock, cls.name, until.isoformat().replace("+00:00", "Z")

    def tap(
        self,
        details: CallDetails,
        key_for: Callable[[bytes], str | None],
        binding: Binding = None,
    ) -> Tap | None:
        """A tap that streams a download of ``details`` to the key ``key_for`` its first bytes
        (None: not audio), locked as its class says; None if the sink does not stream."""
        threshold = self.sink.stream_threshold
        if threshold is None:
            return None
        lock = self._retention(details, binding)[0]
        return Tap(self.sink, key_for, threshold=threshold, lock=lock, encryption=self.encryption)

    async def _record(self, row: ObjectRecord) -> ObjectRecord:
        """Commit the ledger row and append the manifest line: on the writer thread, in one
        transaction with the rows of other calls that arrived meanwhile (``writes``). Returns
        once both are done; the event loop goes on with other calls' transfers meanwhile."""
        return await self.writes.run(lambda: self.ledger.add_object(row))

    def _append(self, entries: list[Entry]) -> None:
        """After each commit of ``writes``, on its thread: the manifest lines of the batch."""
        with self._recording:
            self.manifest.append(entries, self.ledger)
            self.stored += sum(
                1 for e in entries if isinstance(e, ObjectRecord) and e.kind not in SNAPSHOT_KINDS
            )

    async def seal(self) -> int:
        """Seal every waiting manifest entry into segments now; returns how many were sealed.

        The long-running worker calls this on a timer and at shutdown, so entries do not wait
        for ``segment_size`` company indefinitely.
        """
        async with self._sealing:
            return await self._seal_now()

    async def _seal_now(self, at_least: int = 1) -> int:
        """``seal``'s work, its lock held (``segments.seal``'s ``at_least``)."""
        with self._recording:
            self.manifest.sync(self.ledger)  # entries other processes added (retention jobs)
            self.manifest.fsync()
        return len(await seal(self.ledger, self.sink, at_least=at_least))

    async def store_bytes(
        self,
        details: CallDetails,
        *,
        kind: str,
        key: str,
        data: bytes,
        source: str,
        binding: Binding = None,
    ) -> ObjectRecord:
        """Store a small JSON document (a response as received)."""
        return await self.store(
            details,
            kind=kind,
            idx=0,
            key=key,
            body=io.BytesIO(data),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type="application/json",
            fmt="json",
            source=source,
            binding=binding,
        )

    async def _put(
        self,
        key: str,
        body: BinaryIO,
        size: int,
        sha256: str,
        mime: str,
        lock: Lock | None,
        upload: Tap | None = None,
        *,
        kind: str = "",
    ) -> tuple[PutResult, Lock | None]:
        """The streamed upload's result if it completed, else ``sink.put``; and the lock it was
        written with. If the class's date passed while the PUT was retried, the store refuses
        the lock (a date in the past): the object is then written unlocked, as any call
        archived after its date is. Audio is encrypted first with ``--encrypt-to``
        (``archiver.encryption``): a streamed upload as it went, a spool into a spool of its
        own."""
        if upload is not None:
            try:
                streamed = await upload.finish(key, size=size, sha256=sha256)
            except (StoragePermanent, StorageRejected):  # a date passed: see _put_file
                if upload.lock is None or upload.lock.until > datetime.now(UTC):
                    raise
                streamed = None
            if streamed is not None:
                return streamed, upload.lock
        if self.encryption is None or kind not in AUDIO_KINDS:
            return await self._put_file(key, body, size, sha256, mime, lock)
        async with self.encryption.seal(key, body, size=size, sha256=sha256) as sealed:
            put, lock = await self._put_file(
                key, sealed.file, sealed.size, sealed.sha256, STORED_TYPE, lock
            )
            return sealed.result(put), lock

    async def _put_file(
        self, key: str, body: BinaryIO, size: int, sha256: str, mime: str, lock: Lock | None
    ) -> tuple[PutResult, Lock | None]:
        try:
            put = await self.sink.put(
                key, body, size=size, sha256=sha256, content_type=mime, lock=lock
            )
            return put, lock
        except (StoragePermanent, StorageRejected):  # not StorageConflict: other bytes there
            # A retain-until date in the past is refused with 400 (InvalidArgument on AWS,
            # InvalidRequest on SeaweedFS): StorageRejected.
            if lock is None or lock.until > datetime.now(UTC):
                raise
        put = await self.sink.put(key, body, size=size, sha256=sha256, content_type=mime)
        return put, None

    async def _adopt_lock(
        self, key: str, version: str | None, wanted: Lock | None
    ) -> tuple[str | None, str | None]:
        """The lock mode and version the store reports for an object already at ``key``, after
        bringing its lock up to ``wanted`` where that only strengthens it: an unlocked object
        is locked, a date of the same (or a stronger) mode that ends earlier is extended. A
        date is never shortened and a mode never weakened; a GOVERNANCE lock where the class
        says COMPLIANCE keeps its mode (changing it is ``retention apply
        --strengthen-governance``'s) and gets the class's date."""
        status = await self.sink.lock_status(key, version)
        if status is None:  # gone since the put confirmed it: nothing to report
            return None, version
        version = version or status.version_id
        if wanted is None or status.mode not in _STRENGTH or wanted.until <= datetime.now(UTC):
            return (
                status.mode,
                version,
            )  # nothing to bring up (its date may have passed), or unknown
        if _STRENGTH[status.mode] < _STRENGTH[wanted.mode] and status.mode is not None:
            # GOVERNANCE where the class says COMPLIANCE: the mode takes the bypass (`retention
            # apply --strengthen-governance`); the date does not, so it is extended meanwhile.
            log.warning(
                "%s was already stored with %s retention, its class says %s: run `exotel-archiver "
                "retention apply --strengthen-governance` to strengthen it",
                self.sink.location(key),
                status.mode,
                wanted.mode,
            )
            if status.until is not None and status.until >= wanted.until:
                return status.mode, version
            raised = Lock(str(status.mode), wanted.until)
        elif status.mode is None:
            raised = wanted
        elif status.until is None or status.until < wanted.until:
            raised = Lock(str(status.mode), wanted.until)  # as strong already: extend the date
        else:
            return status.mode, version
        try:
            await self.sink.set_retention(key, raised, version_id=version)
        except (StoragePermanent, StorageRejected):
            if raised.until > datetime.now(UTC):
                raise
            # The date passed while the request was retried: the store refuses a date in the
            # past, and there is nothing left to lock. Recorded as the store holds it.
            after = await self.sink.lock_status(key, version)
            return (after.mode if after is not None else None), version
        log.info(
            "%s was already stored with %s retention: now %s until %s, as its class says",
            self.sink.location(key),
            status.mode or "no",
            raised.mode,
            raised.until.isoformat(),
        )
        after = await self.sink.lock_status(key, version)
        return (after.mode if after is not None else None), version

    async def _existing(self, key: str) -> PutResult:
        """The object already at ``key`` as found: the SHA-256 the store computed of it
        (``ObjectInfo.sha256`` is never a metadata claim), else its bytes hashed, and the
        server-side encryption the store reports (one other than asked: ``StorageConflict``).
        Its version is left to ``_adopt_lock`` to find."""
        there = await found_at(self.sink, key)
        if there is None:
            raise StoragePermanent(f"{self.sink.location(key)}: refused as a conflict, then gone")
        there.refuse(self.sink)
        return replace(there.result, version_id=None)

    async def bind_lock(
        self, key: str, version_id: str | None, wanted: Lock | None
    ) -> tuple[str | None, str | None]:
        """Bring the lock of an object stored earlier up to ``wanted`` (a rescued call's, bound
        at enrichment: ``archiver.retention.binding``), as ``store`` brings up an object it
        finds at its key: only strengthened, never a date shortened or a mode weakened.
        Returns (the lock mode the store reports now, version id)."""
        if wanted is not None and wanted.until <= datetime.now(UTC):
            wanted = None  # the date has passed: nothing to lock
        return await self._adopt_lock(key, version_id, wanted)
