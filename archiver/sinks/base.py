"""The storage contract: what every destination promises the rest of the archiver.

A destination ("sink") stores objects under relative keys such as
``2022/11/03/cabfb1dfa8c5e1c7f2c458423b7716b3/recording-1.mp3``. The sink adds its own prefix
(the ``prefix`` of ``s3://bucket/prefix``, or the root directory of a local destination).

Every implementation keeps these promises; ``tests/test_sinks.py`` runs one test body against
each backend to hold them to it.

1. **Whole or nothing.** When ``put`` returns, the object at the key holds exactly the ``size``
   bytes whose SHA-256 is ``sha256``. When it raises, nothing that claims to be that object was
   left at the key (a local sink's temporary file never has the key's name; an S3 PUT is atomic).
2. **Verified by the store.** The SHA-256 is sent with the bytes where the store can check it
   (``x-amz-checksum-sha256``), so corrupted bytes are refused by the server itself, and the stored
   size and content are confirmed before ``put`` returns, on proof only: the store's answer where
   it echoes the checksum it verified, else a checksum the store itself computed of what it holds
   (the whole object's SHA-256, or a multipart upload's composite of the part checksums it
   verified), else the object read back and hashed. Metadata (``x-amz-meta-sha256``) is never
   proof: whoever writes an object writes its metadata.
3. **Write-once.** ``put`` never replaces an existing object. If one exists at the key with the
   same size and a SHA-256 proven the same — computed by the store, or by reading the object back
   and hashing it, never taken from metadata — ``put`` succeeds with ``created=False`` and writes
   nothing (so a retry never archives twice). Otherwise ``put`` raises ``StorageConflict`` and the
   existing object is left untouched.
4. **Rewindable input.** ``body`` is a seekable binary file. ``put`` reads it from offset 0 and may
   rewind it and read it again; retries never need the source to be downloaded again.
5. **Classified errors.** Failures raise ``StorageError`` subclasses: ``StorageUnavailable``
   (retryable), ``StoragePermanent`` or ``StorageConflict`` (not). Messages name the bucket or
   directory and never contain credentials.
6. **Never blocks the event loop.** Every method is a coroutine (or async iterator); blocking
   clients run in the sink's own thread pool.
7. **No retries inside**, with one exception. A backend makes one attempt per call; retrying is
   the job of ``archiver.sinks.retrying.RetryingSink``, which wraps any backend with the one
   retry policy. The exception: a multipart upload re-sends a failed part from its buffer (under
   the same policy) instead of failing, and so re-sending, the whole object.
8. **Bounded memory.** ``put`` holds at most one part (``part_size``) of the body in memory,
   whatever the object's size; a failed upload leaves no multipart upload open. A streamed
   upload (item 10) holds at most ``part_concurrency + 1`` parts.
9. **Retention is the store's, or refused.** ``put(..., lock=Lock(mode, until))`` writes the
   object with that S3 Object Lock mode and retain-until date in the same request, or fails; it
   never stores the object unlocked instead. ``set_retention`` and ``set_legal_hold`` change them
   afterwards, and ``delete`` removes one version for good; a store that holds the object
   locked refuses with ``StorageLocked`` (not retried). A store without Object Lock (a local
   directory) says so in ``object_lock_enabled`` and refuses every lock request with
   ``StoragePermanent``, whatever it is asked; its ``delete`` works.

   GOVERNANCE is bypassed only when asked, and only to strengthen. No request carries
   ``x-amz-bypass-governance-retention`` unless the caller passes
   ``set_retention(..., bypass_governance=True)``; callers pass it only for the one change that
   needs it and strengthens the lock, GOVERNANCE → COMPLIANCE (the explicit opt-in of
   ``retention apply --strengthen-governance``). Even then the header is sent only if the stored
   version is GOVERNANCE and the date asked is not earlier than the stored one; anything else
   (a shorter date, COMPLIANCE → GOVERNANCE, an extension in the same mode, an unlocked object)
   goes without it, so the store refuses what would weaken the lock. ``delete`` never sends it.
10. **Streaming keeps every promise.** ``begin`` returns an ``Upload`` that takes the object's
    bytes in order while they download (``send``) and stores them with ``finish(size=,
    sha256=)``: whole or nothing, each part verified by the store, write-once (completion
    carries ``If-None-Match: *``; an object already there is adopted or a conflict exactly as
    for ``put``), locked with ``lock``, confirmed before ``finish`` returns. Any failure, and
    ``abort``, leaves no upload open and nothing at the key. Its only difference: the object has
    no ``x-amz-meta-sha256`` (unknown when the upload begins; it is never proof anyway). A sink
    that cannot keep these promises while streaming does not stream (``begin`` returns None).
11. **Encryption at rest is the store's, confirmed, or refused.** A sink given a
    ``ServerSideEncryption`` asks for it with every object it writes (``put``, ``begin``,
    ``put_bytes``: each PUT and multipart start), and ``put``/``finish`` return only once the
    store's answer (a PUT's, else the object's HEAD; after a multipart upload, the completed
    object's HEAD) confirms the mode asked and, with ``aws:kms``, the key asked (an ARN equal, a
    key id equal or the id of the ARN answered; an alias or the default key: the key the
    sink's first answer named). An answer without it, or with another mode or key, is a failed
    write (``StoragePermanent``: the store ignores the setting for every object), and the
    version just written is deleted unless Object Lock keeps it (the message says which).
    ``PutResult.sse``/``sse_kms_key_id`` are what the store confirmed — also with none asked,
    when the store reports a default. An object already at the key is adopted only if
    ``stat`` (``ObjectInfo.sse``) shows the encryption asked; else ``StorageConflict``, and it
    is kept. ``check_writable`` proves the store encrypts as asked (a 1-byte part of the probe
    upload, aborted) or raises ``ConfigError`` naming the key and the permissions. A local
    directory takes no ``ServerSideEncryption`` (``open_sink`` refuses it).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

from archiver.errors import StoragePermanent


@dataclass(frozen=True)
class ObjectInfo:
    """What the store says about one object."""

    key: str
    size: int
    sha256: str | None = None
    """Lower-case hex SHA-256 of the whole object as the store computed it (S3's
    ``ChecksumSHA256``, not a multipart ``...-N`` composite), when it keeps one; else None, and
    only reading the object tells. Never a value from the object's metadata."""
    version_id: str | None = None
    sse: str | None = None
    """The server-side encryption the store reports for the object (``AES256``, ``aws:kms``),
    None when it reports none."""
    sse_kms_key_id: str | None = None
    """The KMS key the store reports it encrypted the object with (``aws:kms``), else None."""


@dataclass(frozen=True)
class ServerSideEncryption:
    """What every write asks the store to encrypt with (settings ``sse``, ``sse_kms_key_id``,
    ``sse_kms_context``); see the module docstring, item 11."""

    mode: str
    """``AES256`` (SSE-S3) or ``aws:kms`` (SSE-KMS)."""
    kms_key_id: str | None = None
    """Key id, key ARN, alias (``alias/name``) or alias ARN; None: the store's default key."""
    context: str | None = None
    """The encryption context, a JSON object text as configured (sent base64), or None."""


@dataclass(frozen=True)
class Lock:
    """S3 Object Lock settings for one object version."""

    mode: str
    """``COMPLIANCE`` or ``GOVERNANCE``."""
    until: datetime
    """Retain-until date (aware)."""


@dataclass(frozen=True)
class LockStatus:
    """An object version's Object Lock state as the store reports it."""

    mode: str | None = None
    until: datetime | None = None
    legal_hold: bool = False
    version_id: str | None = None


@dataclass(frozen=True)
class PutResult:
    """The outcome of a successful ``put``."""

    key: str
    size: int
    sha256: str
    created: bool
    """False when an identical object was already at the key and nothing was written."""
    location: str
    """Where the object is, for people: ``s3://bucket/prefix/key`` or an absolute path."""
    version_id: str | None = None
    sse: str | None = None
    """The server-side encryption the store answered with (``AES256``, ``aws:kms``), checked
    against the one asked (item 11); None: the store reports none (a local directory)."""
    sse_kms_key_id: str | None = None
    """The KMS key the store answered with (``aws:kms``), else None."""
    plaintext_sha256: str | None = None
    """Client-side encryption (``archiver.encryption``): ``size``/``sha256`` are the stored
    ciphertext's, these the recording's own; None when the object is stored as it came."""
    plaintext_size: int | None = None
    encrypted_to: str | None = None
    """The recipient's fingerprint (``archiver.envelope.Recipient.fingerprint``), or None."""


class Upload(Protocol):
    """An upload fed while its bytes arrive (``Sink.begin``; ``archiver.sinks.streaming``).
    It keeps the promises of ``put``; its memory is bounded by the sink's part concurrency."""

    async def send(self, data: bytes) -> None:
        """The next bytes of the object, in order. Raises a part's ``StorageError``."""
        ...

    async def finish(self, *, size: int, sha256: str) -> PutResult:
        """Send the rest, complete, verify: the object is stored (or adopted). Raises
        ``StorageError``; a failed upload is aborted."""
        ...

    async def abort(self) -> None:
        """Abort the upload (never raises; a failure is logged)."""
        ...


@runtime_checkable
class Sink(Protocol):
    """A destination for archived objects. See the module docstring for the promises."""

    @property
    def requests(self) -> int:
        """Requests sent to the store so far (0 for a local directory): what archiving costs."""
        ...

    def describe(self) -> str:
        """The destination for people, without secrets: ``s3://bucket/prefix`` or a path."""
        ...

    def location(self, key: str) -> str:
        """Where ``key`` is (or would be) stored, for people."""
        ...

    def encryption_problem(self, info: ObjectInfo) -> str | None:
        """Why the object ``info`` describes (as ``stat`` found it) is not encrypted as this sink
        asks of every write (item 11); None if it is, or nothing is asked. Every caller that
        would take an object found at its key as its own (an adoption) asks this first."""
        ...

    async def check(self) -> None:
        """The destination exists and can be reached (a local folder is made if missing).
        Raises ``StorageError``."""
        ...

    async def check_writable(self) -> None:
        """Preflight of a command that writes (``archiver.preflight``): the destination exists
        and takes new objects, proven without leaving anything behind — nothing made, nothing
        stored, so a dry run may call it. Raises ``StorageError`` (``ConfigError`` for a local
        folder the file system refuses)."""
        ...

    async def put(
        self,
        key: str,
        body: BinaryIO,
        *,
        size: int,
        sha256: str,
        content_type: str,
        lock: Lock | None = None,
    ) -> PutResult:
        """Store ``size`` bytes from ``body`` at ``key``, write-once and verified (and locked,
        with ``lock``)."""
        ...

    @property
    def stream_threshold(self) -> int | None:
        """Objects of at least this many bytes may be streamed with ``begin`` while they
        download; None: this sink stores only from a file (``put``)."""
        ...

    async def begin(
        self, key: str, *, content_type: str, lock: Lock | None = None
    ) -> Upload | None:
        """Begin a streamed upload of ``key`` (item 10), or None if this sink does not stream.
        Raises ``StorageError``."""
        ...

    async def object_lock_enabled(self) -> bool:
        """Whether the destination enforces Object Lock (retention dates, legal holds)."""
        ...

    async def lock_status(self, key: str, version_id: str | None = None) -> LockStatus | None:
        """The Object Lock state of the object (version) at ``key``; None if there is none."""
        ...

    async def set_retention(
        self,
        key: str,
        lock: Lock,
        *,
        version_id: str | None = None,
        bypass_governance: bool = False,
    ) -> None:
        """Set the object version's retention (the store refuses to shorten COMPLIANCE, and to
        shorten or change GOVERNANCE without the bypass). ``bypass_governance``: the caller's
        opt-in for GOVERNANCE → COMPLIANCE; see the module docstring, item 9."""
        ...

    async def set_legal_hold(self, key: str, on: bool, *, version_id: str | None = None) -> None:
        """Place or lift a legal hold on the object version."""
        ...

    async def delete(self, key: str, *, version_id: str | None = None) -> None:
        """Remove the object version for good (not a delete marker). Missing: no error."""
        ...

    async def stat(self, key: str) -> ObjectInfo | None:
        """The object at ``key``, or None if there is none."""
        ...

    def read(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks. Raises ``StoragePermanent`` if it does not exist."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    async def close(self) -> None:
        """Release connections and threads. The sink is not used after this."""
        ...


def validate_key(key: str) -> str:
    """Refuse keys that could escape the destination or confuse a file system.

    A key is one or more ``/``-separated segments, none empty, ``.`` or ``..``, with no control
    characters or backslashes. Returns the key unchanged.
    """
    if not key or key.startswith("/") or key.endswith("/"):
        raise StoragePermanent(f"invalid object key {key!r}: must be a relative path")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise StoragePermanent(f"invalid object key {key!r}: empty, '.' or '..' segment")
    if any(ord(ch) < 0x20 or ch in "\x7f\\" for ch in key):
        raise StoragePermanent(f"invalid object key {key!r}: control character or backslash")
    return key


async def put_bytes(sink: Sink, key: str, data: bytes, *, content_type: str) -> PutResult:
    """``sink.put`` of a small document held in memory (a manifest segment, the marker)."""
    return await sink.put(
        key,
        io.BytesIO(data),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=content_type,
    )
