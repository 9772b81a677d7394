"""Streamed uploads: a download's bytes go to the store in parallel multipart parts as they arrive.

``Tap`` sits in a download (``archiver.transfer.Partial`` hands it every piece it writes to the
spool, with its offset). Once the body has passed the sink's ``stream_threshold`` and its first
bytes are audio (so the key ``{folder}/{stem}.{mp3|wav}`` is known), it asks the sink to
``begin`` an upload and feeds it; below the threshold, or for a sink that does not stream (a local
directory, ``md5`` mode, conditional writes off), it does nothing and the recording is stored
from the spool as before.

``PartStream`` is the S3 side. Each full part (``part_size``) is sent as soon as it is in memory,
up to ``part_concurrency`` at once; the download waits when that many are in flight, so memory
stays at most ``(part_concurrency + 1) x part_size`` per recording. Each part carries its own
``x-amz-checksum-sha256`` (hashed in the pool thread that sends it, never on the event loop) and
is re-sent from its buffer under the one retry policy (S3 keeps the last part sent under a
number). ``finish`` sends the last part, completes with ``If-None-Match: *`` and the store's
composite checksum is verified as for any multipart upload (``S3Sink._put_multipart``).

Whole or nothing:

* a piece at offset 0 while bytes were taken (the source ignored Range, an encoded body started
  again) aborts the upload; a new one begins lazily. A piece that continues the bytes taken (a
  Range resume) continues the same upload. Any other gap aborts it and streaming stops for this
  recording.
* the tap's ``close`` (always called, cancellation included) aborts an upload not completed:
  a download that failed for good, the content gate, a body too large.
* a part that outlasts its retries with ``StorageUnavailable``, or a completion that fails so,
  aborts the upload; ``finish`` then returns None and the recording is stored from the spool
  (``Sink.put``, its own retries) — never twice: only one completion can ever succeed and
  ``If-None-Match: *`` guards the key. ``StoragePermanent``/``StorageRejected`` abort it and are
  raised (the call fails, or the run stops, as for a plain put).

What proves the object: the SHA-256 of the whole body is the spool's (``Partial`` hashes the
very pieces the tap takes, in order, with no gap: the tap checks every offset), each part's
SHA-256 is checked by the store, and the completed object's composite checksum and size are
checked on HEAD. A streamed object has no ``x-amz-meta-sha256`` (metadata is set when an upload
begins, before the SHA-256 is known; it is information only, never read by the archiver).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from archiver.errors import StoragePermanent, StorageRejected, StorageUnavailable
from archiver.retry import retrying
from archiver.sinks import multipart
from archiver.sinks.base import Lock, PutResult, Sink, Upload

if TYPE_CHECKING:
    from archiver.encryption import Encryption
    from archiver.sinks.s3 import S3Sink

log = logging.getLogger("archiver.sinks.streaming")


def mime_of(content_type: str) -> str:
    """The stored Content-Type of a download's ``Content-Type`` header."""
    return content_type.split(";")[0].strip() or "application/octet-stream"


class Tap:
    """Feeds one download into a streamed upload once its key is known (see the module)."""

    def __init__(
        self,
        sink: Sink,
        key_for: Callable[[bytes], str | None],
        *,
        threshold: int,
        lock: Lock | None,
        encryption: Encryption | None = None,
    ) -> None:
        self.sink = sink
        self.encryption = encryption
        """Client-side encryption (``archiver.encryption``): the upload is fed plaintext and
        stores ciphertext."""
        self.key_for = key_for
        """The key for the body's first bytes, or None if they are not audio (no upload)."""
        self.threshold = threshold
        self.lock = lock
        self.key: str | None = None
        self.upload: Upload | None = None
        self.taken = 0
        self.pending: list[bytes] = []
        """Pieces taken before the upload began (less than ``threshold`` bytes)."""
        self.off = False
        """Streaming given up for this recording: it is stored from the spool."""

    async def take(self, offset: int, data: bytes, head: bytes, content_type: str) -> None:
        """The piece of the body at ``offset`` that the spool has just taken."""
        if self.off or not data:
            return
        if offset != self.taken:
            if offset != 0:  # a gap: cannot continue this upload
                await self._stop("the download skipped bytes")
                return
            await self._restart()
        self.taken += len(data)
        if self.upload is None:
            self.pending.append(data)
            if self.taken >= self.threshold:
                await self._begin(head, content_type)
            return
        try:
            await self.upload.send(data)
        except StorageUnavailable as exc:
            await self._stop(f"a part failed ({exc})")

    async def _begin(self, head: bytes, content_type: str) -> None:
        key = self.key_for(head)
        if key is None:  # not audio: the content gate fails the download; nothing is sent
            self.off, self.pending = True, []
            return
        try:
            stored_as = (
                self.encryption.content_type
                if self.encryption is not None
                else mime_of(content_type)
            )
            self.upload = await self.sink.begin(key, content_type=stored_as, lock=self.lock)
        except StorageUnavailable as exc:
            await self._stop(f"the upload could not begin ({exc})")
            return
        except (StoragePermanent, StorageRejected):
            if self.lock is None or self.lock.until > datetime.now(UTC):
                raise
            # The class's date passed while the recording downloaded: the store refuses a
            # date in the past. The spool's PUT stores it as any call archived after its date.
            await self._stop("its retention date passed while it downloaded")
            return
        if self.upload is None:  # the sink does not stream
            self.off, self.pending = True, []
            return
        if self.encryption is not None:
            self.upload = self.encryption.wrap(self.upload, key)
        self.key = key
        pending, self.pending = self.pending, []
        try:
            for piece in pending:
                await self.upload.send(piece)
        except StorageUnavailable as exc:
            await self._stop(f"a part failed ({exc})")

    async def _restart(self) -> None:
        """The body starts again from byte 0: what was sent is no prefix of it any more."""
        if self.upload is not None:
            log.info("%s: the download started again from byte 0; upload aborted", self.key)
            await asyncio.shield(self.upload.abort())
        self.upload, self.key, self.taken, self.pending = None, None, 0, []

    async def _stop(self, why: str) -> None:
        if self.upload is not None:
            log.warning("%s: %s; it will be stored from the spool", self.key, why)
            await asyncio.shield(self.upload.abort())
        self.upload, self.off, self.pending = None, True, []

    async def finish(self, key: str, *, size: int, sha256: str) -> PutResult | None:
        """The stored object, if this download was streamed to ``key`` and it completed; None:
        store it from the spool (nothing streamed, or streaming gave up)."""
        upload = self.upload
        if upload is None or self.off or key != self.key or self.taken != size:
            await self.close()
            return None
        self.upload = None
        try:
            return await upload.finish(size=size, sha256=sha256)
        except StorageUnavailable as exc:
            log.warning("%s: the streamed upload failed (%s); storing it from the spool", key, exc)
            await asyncio.shield(upload.abort())  # (an upload aborts itself; said once more)
            return None
        except BaseException:  # any other failure, or cancellation: nothing is left open
            await asyncio.shield(upload.abort())
            raise

    async def close(self) -> None:
        """Abort an upload not completed (a failed download, cancellation); never raises."""
        upload, self.upload, self.pending = self.upload, None, []
        if upload is not None:
            await asyncio.shield(upload.abort())


class PartStream:
    """One S3 multipart upload, its parts sent in parallel as the bytes arrive."""

    def __init__(self, sink: S3Sink, key: str, full: str, upload_id: str, concurrency: int) -> None:
        self.sink, self.key, self.full, self.upload_id = sink, key, full, upload_id
        self.concurrency = max(1, concurrency)
        self.pieces: list[memoryview] = []
        """The bytes of the next part so far, as the download handed them (not copied)."""
        self.buffered = 0
        self.in_flight: set[asyncio.Task[None]] = set()
        self.calls: set[asyncio.Future[dict[str, Any]]] = set()
        """The requests in the pool now (each part's current attempt)."""
        self.parts: dict[int, dict[str, Any]] = {}
        self.digests: dict[int, bytes] = {}
        self.sent = 0
        self.number = 0
        self.aborted = False

    @classmethod
    async def begin(
        cls, sink: S3Sink, key: str, *, content_type: str, lock: Lock | None, concurrency: int
    ) -> PartStream:
        full = sink._full(key)
        await multipart._abort_leftovers(sink, full)
        created = await sink.call(
            f"start multipart upload of {full}",
            sink.client.create_multipart_upload,
            Bucket=sink.bucket,
            Key=full,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
            **(
                {"ObjectLockMode": lock.mode, "ObjectLockRetainUntilDate": lock.until}
                if lock
                else {}
            ),
            **sink._sse_params,  # the encryption asked (checked on the completed object's HEAD)
        )
        return cls(sink, key, full, str(created["UploadId"]), concurrency)

    async def send(self, data: bytes) -> None:
        # The pieces are kept as they came (``data`` is immutable) and joined into the part in
        # the pool thread that sends it: one copy per byte, not three on the event loop.
        view, size = memoryview(data), self.sink.part_size
        while view:
            take = min(len(view), size - self.buffered)
            self.pieces.append(view[:take])
            self.buffered += take
            view = view[take:]
            if self.buffered == size:
                await self._launch(self._take_pieces())

    def _take_pieces(self) -> list[memoryview]:
        pieces, self.pieces, self.buffered = self.pieces, [], 0
        return pieces

    async def _launch(self, pieces: list[memoryview]) -> None:
        """Send ``pieces`` as the next part; first wait while ``concurrency`` parts are in
        flight."""
        while len(self.in_flight) >= self.concurrency:
            done, _ = await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
            self._reap(done)
        self.number += 1
        self.sent += sum(len(piece) for piece in pieces)
        task = asyncio.create_task(self._part(self.number, pieces))
        self.in_flight.add(task)

    def _reap(self, done: set[asyncio.Task[None]]) -> None:
        """Forget finished parts; raise the first one's error."""
        self.in_flight -= done
        errors = [e for e in (task.exception() for task in done) if e is not None]
        if errors:
            raise errors[0]

    async def _part(self, number: int, pieces: list[memoryview]) -> None:
        sink, what = self.sink, f"upload part {number} of {self.full}"
        checksum: list[str] = []
        joined: list[bytes] = []
        """The part, once joined: every attempt sends these very bytes."""

        def send() -> dict[str, Any]:
            if not joined:  # joined and hashed once, in the pool thread (not on the loop)
                joined.append(b"".join(pieces))
                pieces.clear()
                digest = hashlib.sha256(joined[0]).digest()
                self.digests[number] = digest
                checksum.append(base64.b64encode(digest).decode())
            data = joined[0]
            answer = sink.client.upload_part(
                Bucket=sink.bucket,
                Key=self.full,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,  # bytes: one sendall, not http.client's 8 KiB reads of a file
                ContentLength=len(data),
                ChecksumSHA256=checksum[0],
            )
            return dict(answer)

        async for attempt in retrying(sink.part_retry, what=what):
            with attempt:
                # Shielded: a part cancelled by ``abort`` is waited for before the upload is
                # aborted, so no part can land after the abort.
                call = asyncio.ensure_future(sink.call(what, send))
                self.calls.add(call)
                call.add_done_callback(self.calls.discard)
                answer = await asyncio.shield(call)
        self.parts[number] = {
            "PartNumber": number,
            "ETag": answer["ETag"],
            "ChecksumSHA256": checksum[0],
        }

    async def finish(self, *, size: int, sha256: str) -> PutResult:
        try:
            if self.pieces or self.number == 0:
                await self._launch(self._take_pieces())
            if self.in_flight:
                await asyncio.wait(self.in_flight)
                self._reap(set(self.in_flight))
            if self.sent != size:
                raise StorageUnavailable(
                    f"{self.full}: {self.sent} bytes were streamed, not the {size} downloaded"
                )
            numbers = sorted(self.parts)
            params: dict[str, Any] = {
                "Bucket": self.sink.bucket,
                "Key": self.full,
                "UploadId": self.upload_id,
                "MultipartUpload": {"Parts": [self.parts[n] for n in numbers]},
                "IfNoneMatch": "*",
            }
            done = await self.sink.call_unless(
                frozenset({"PreconditionFailed", "412"}),
                f"complete multipart upload of {self.full}",
                self.sink.client.complete_multipart_upload,
                **params,
            )
        except BaseException:
            await asyncio.shield(self.abort())
            raise
        if done is None:  # something is already at the key: ours, or a conflict
            await self.abort()
            return await self.sink._already_there(self.key, self.full, size, sha256)
        composite = multipart.composite_checksum([self.digests[n] for n in numbers])
        completed = multipart.Completed(
            answer=dict(done), composite=composite, upload_id=self.upload_id
        )
        self.aborted = True  # completed: nothing to abort any more
        return await self.sink._verify_completed(self.key, self.full, size, sha256, completed)

    async def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        for task in self.in_flight:
            task.cancel()
        await asyncio.gather(*self.in_flight, *self.calls, return_exceptions=True)
        self.in_flight.clear()
        await multipart._abort(self.sink, self.full, self.upload_id)
