"""Client-side encryption of audio on its way to the store (``--encrypt-to``).

With a recipient (a public key, ``archiver.envelope.Recipient``), every recording and voice-log
file is encrypted before any of its bytes leaves the worker: the store, its admins and anyone
with the bucket's credentials get ciphertext only. The JSON snapshots (``call.json`` and the
others) are not: retention classes, audits and repairs read them back (docs/compliance.md says
what that leaves readable to whom).

Two ways in, as for any object (``archiver.recorder``):

* **From the spool** (``seal``): the downloaded plaintext is encrypted into a second spool file,
  the rewindable input ``Sink.put`` takes; its size and SHA-256 are the ciphertext's.
* **Streamed** (``wrap``): an ``EncryptingUpload`` sits between the download's tap and the
  store's upload; each piece is encrypted as it arrives, memory bounded by one chunk.

What the stored object is proven by: the store verifies the ciphertext's SHA-256 like any other
object's, and the manifest records both hashes (``sha256``/``size`` of the ciphertext,
``plaintext_sha256``/``plaintext_size`` of the recording, ``encrypted_to`` the key's
fingerprint). ``verify`` needs no key; ``exotel-archiver decrypt`` checks the plaintext.

**Write-once under a fresh key.** Each encryption draws a new data key, so the same recording
encrypts to other bytes every time: a retry or a second run cannot recognise its own object by
hashing its plaintext again. So before any ciphertext can be completed in the store, its key,
SHA-256 and size are committed to the ledger with the plaintext's (``encrypted_writes``); an
object found at the key later — left by a run that crashed between its PUT and its ledger
commit, or by a streamed upload whose completion was acknowledged late — is adopted only if
the SHA-256 the store computed of it (or its bytes read back) is one of those, for the same
plaintext (``adopt``). Anything else at the key is a conflict, as for any recording. Once the
object is recorded its intents are dropped. A lost state directory loses the intents too: an
encrypted object left unrecorded by a crash is then a conflict, never adopted on a guess.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from archiver.envelope import Encryptor, Recipient, encrypt_file
from archiver.errors import StorageConflict, StorageUnavailable
from archiver.group_commit import GroupCommit
from archiver.ledger import EncryptedWrite, utc_now
from archiver.sinks import PutResult, Sink, Upload

AUDIO_KINDS = frozenset({"recording", "voice_log_audio"})
"""The kinds of objects encrypted client-side: the audio. JSON snapshots are stored as they are."""
STORED_TYPE = "application/vnd.exotel-archiver.encrypted"
"""The Content-Type of an encrypted object in the store (the manifest keeps the source's): not
the audio's (the key's extension tells mp3 or wav; the Content-Type says it is not playable),
and not ``application/octet-stream``, which some stores (SeaweedFS) replace by a guess from the
key's extension."""
_OFF_LOOP = 256 * 1024
"""Pieces at least this large are encrypted in the encryption thread, off the event loop."""

log = logging.getLogger("archiver.encryption")


@dataclass(frozen=True)
class Sealed:
    """A recording encrypted into a spool file: the rewindable input of ``Sink.put``."""

    file: BinaryIO
    size: int
    sha256: str
    plaintext_size: int
    plaintext_sha256: str
    encrypted_to: str

    def result(self, put: PutResult) -> PutResult:
        """``put``, with what makes it an encrypted object."""
        return replace(
            put,
            plaintext_sha256=self.plaintext_sha256,
            plaintext_size=self.plaintext_size,
            encrypted_to=self.encrypted_to,
        )


def _intent(key: str, enc: Encryptor, recipient: Recipient) -> EncryptedWrite:
    return EncryptedWrite(
        key=key,
        sha256=enc.sha256,
        size=enc.size,
        plaintext_sha256=enc.plaintext_sha256,
        plaintext_size=enc.plaintext_size,
        encrypted_to=recipient.fingerprint,
        at=utc_now(),
    )


class Encryption:
    """Encrypts a run's audio to one recipient; records each ciphertext before it is stored."""

    content_type = STORED_TYPE
    """What the store is told the encrypted objects are."""

    def __init__(self, recipient: Recipient, writes: GroupCommit, spool_dir: Path) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encrypt")
        """One thread for every encryption of the run: a pool of several (asyncio's default)
        gives each its own malloc arena, and the chunks freed there raised the peak RSS of a
        1 GiB streamed recording by 31 MiB (a fifth); with one, by under 5 (benchmark 19A)."""
        self.recipient = recipient
        self.writes = writes
        self.spool_dir = spool_dir

    def close(self) -> None:
        """Let the encryption thread go (after the encryptions under way)."""
        self.pool.shutdown(wait=True)

    async def _intend(self, key: str, enc: Encryptor) -> None:
        """Commit that ``key`` may now receive this ciphertext (before it can be completed)."""
        intent = _intent(key, enc, self.recipient)
        await self.writes.run(lambda: self.writes.ledger.add_encrypted_write(intent))

    @asynccontextmanager
    async def seal(
        self, key: str, body: BinaryIO, *, size: int, sha256: str
    ) -> AsyncIterator[Sealed]:
        """``body`` (the plaintext spool: ``size`` bytes whose SHA-256 is ``sha256``) encrypted
        into a spool file of its own, its ciphertext recorded as an intent for ``key``."""
        with tempfile.TemporaryFile(dir=self.spool_dir, prefix="sealed-") as out:
            loop = asyncio.get_running_loop()
            enc = await loop.run_in_executor(self.pool, _encrypt_file, body, out, self.recipient)
            if enc.plaintext_size != size or enc.plaintext_sha256 != sha256:
                raise StorageUnavailable(  # the spool changed under us: not stored, retried
                    f"{key}: the spool holds {enc.plaintext_size} bytes, sha256 "
                    f"{enc.plaintext_sha256}, not the {size} bytes, sha256 {sha256} downloaded"
                )
            await self._intend(key, enc)
            yield Sealed(
                file=out,
                size=enc.size,
                sha256=enc.sha256,
                plaintext_size=enc.plaintext_size,
                plaintext_sha256=enc.plaintext_sha256,
                encrypted_to=self.recipient.fingerprint,
            )

    def wrap(self, upload: Upload, key: str) -> Upload:
        """A streamed ``upload`` to ``key`` that is fed plaintext and stores ciphertext."""
        return EncryptingUpload(upload, key, self)


def _encrypt_file(src: BinaryIO, dst: BinaryIO, recipient: Recipient) -> Encryptor:
    """``envelope.encrypt_file`` of the whole spool ``src``, ``dst`` left flushed and rewound."""
    src.seek(0)
    enc = encrypt_file(src, dst, recipient)
    dst.flush()
    dst.seek(0)
    return enc


class EncryptingUpload:
    """``Upload`` of plaintext pieces as ciphertext: see the module docstring."""

    def __init__(self, inner: Upload, key: str, encryption: Encryption) -> None:
        self.inner, self.key, self.encryption = inner, key, encryption
        self.enc = Encryptor(encryption.recipient)

    async def _encrypt(self, data: bytes) -> bytes:
        if len(data) >= _OFF_LOOP:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.encryption.pool, self.enc.update, data)
        return self.enc.update(data)

    async def send(self, data: bytes) -> None:
        out = await self._encrypt(data)
        if out:
            await self.inner.send(out)

    async def finish(self, *, size: int, sha256: str) -> PutResult:
        """Complete the inner upload with the ciphertext's tail, once its intent is committed.
        Any failure on the way (the tail's part, the intent's commit — a locked or full ledger
        —, cancellation) aborts the inner upload: nothing is left open."""
        enc = self.enc
        try:
            if enc.plaintext_size != size or enc.plaintext_sha256 != sha256:
                raise StorageUnavailable(  # the tap's fallback: stored from the spool instead
                    f"{self.key}: {enc.plaintext_size} bytes were encrypted while streaming, "
                    f"not the {size} downloaded"
                )
            tail = enc.finish()
            if tail:
                await self.inner.send(tail)
            await self.encryption._intend(self.key, enc)
            put = await self.inner.finish(size=enc.size, sha256=enc.sha256)
        except BaseException:
            await asyncio.shield(self.inner.abort())
            raise
        return replace(
            put,
            plaintext_sha256=enc.plaintext_sha256,
            plaintext_size=enc.plaintext_size,
            encrypted_to=self.encryption.recipient.fingerprint,
        )

    async def abort(self) -> None:
        await self.inner.abort()


@dataclass(frozen=True)
class Found:
    """An object found at its key: its size and SHA-256 on proof (the store's checksum, else
    its bytes read back and hashed), as a ``PutResult`` (``created`` False), and why it is not
    encrypted at rest as the sink asks (``Sink.encryption_problem``; None: it is). An object
    with a ``problem`` is never adopted, whatever its bytes."""

    size: int
    sha256: str
    result: PutResult
    problem: str | None

    def refuse(self, sink: Sink) -> None:
        """Raise ``StorageConflict`` if it is not encrypted at rest as asked."""
        if self.problem is not None:
            raise StorageConflict(not_as_asked(sink, self.result.key, self.problem))


async def found_at(sink: Sink, key: str) -> Found | None:
    """What is at ``key`` (``Found``), or None if nothing is."""
    info = await sink.stat(key)
    if info is None:
        return None
    size, sha = info.size, info.sha256
    if sha is None:
        digest, size = hashlib.sha256(), 0
        async for chunk in sink.read(key):
            digest.update(chunk)
            size += len(chunk)
        sha = digest.hexdigest()
    result = PutResult(
        key=key,
        size=size,
        sha256=sha,
        created=False,
        location=sink.location(key),
        version_id=info.version_id,
        sse=info.sse,
        sse_kms_key_id=info.sse_kms_key_id,
    )
    return Found(size, sha, result, sink.encryption_problem(info))


def not_as_asked(sink: Sink, key: str, problem: str) -> str:
    """The message for an object found at ``key`` that the store keeps with other server-side
    encryption than asked."""
    return (
        f"{sink.location(key)} is already stored, but not with the server-side encryption asked "
        f"({problem}): it was kept, neither adopted nor replaced. Copy it onto itself with the "
        "encryption asked (aws s3 cp SRC SRC --sse ...), or run with the setting it was written "
        "under; its call is archived by the next run"
    )


async def adopt(
    sink: Sink, writes: GroupCommit, key: str, *, size: int, sha256: str
) -> PutResult | None:
    """The object already at ``key``, if it is this recording (``size`` bytes of plaintext,
    SHA-256 ``sha256``) on proof: a ciphertext this worker recorded as an intent for it, or the
    plaintext itself (stored before encryption was turned on). None: a conflict."""
    ledger = writes.ledger
    intents = ledger.encrypted_writes(key)
    there = await found_at(sink, key)
    if there is None:
        return None
    found_size, found_sha, found = there.size, there.sha256, there.result
    held = [w for w in intents if (w.sha256, w.size) == (found_sha, found_size)]
    if intents and not held:
        # The key is held, write-once, by bytes none of this worker's ciphertexts are: none of
        # them can ever land there. Forgotten, so that failed retries do not pile up intents.
        await writes.run(lambda: ledger.drop_encrypted_writes(key, keep=None))
    elif len(held) < len(intents):  # the one there is kept (it may be adopted once fixed)
        await writes.run(lambda: ledger.drop_encrypted_writes(key, keep=found_sha))
    ours = next((w for w in held if (w.plaintext_sha256, w.plaintext_size) == (sha256, size)), None)
    plain = (found_sha, found_size) == (sha256, size)
    if ours is None and not plain:
        return None  # not this recording: a conflict, whatever its encryption at rest
    there.refuse(sink)  # this recording, but not encrypted at rest as asked: never adopted
    if ours is not None:
        log.info("%s: found at its key, encrypted by an earlier attempt; adopted", key)
        return replace(
            found,
            plaintext_sha256=ours.plaintext_sha256,
            plaintext_size=ours.plaintext_size,
            encrypted_to=ours.encrypted_to,
        )
    log.warning(
        "%s was stored unencrypted (before --encrypt-to was set?): adopted as it is; it is "
        "recorded as not encrypted",
        sink.location(key),
    )
    return found
