"""The checksum manifest: one JSON line per archived object, append-only.

This is the first, simple format (``"schema": 1``): ``manifest.jsonl`` in the state directory, each
line a JSON object with these fields, in ledger order::

    schema        1: the version of this line format
    seq           1, 2, 3 ... (gap-free, the ledger's sequence)
    call_sid      Exotel call SID
    kind          "recording"
    index         position in the call's recordings[] (1-based)
    key           object key relative to the destination
    location      where it is: s3://bucket/prefix/key or an absolute path
    size          bytes
    sha256        lower-case hex SHA-256 of the stored bytes
    content_type  as served by the recording host
    format        "mp3" or "wav", from the bytes themselves (the content gate)
    source        the recording URL without its query string (no signature)
    call_created  the call's created_time as Exotel reported it (ISO 8601 with offset)
    archived_at   when the destination confirmed the object (UTC, ISO 8601)
    worker        host name of the worker that archived it
    version_id    the object's version id in a versioned bucket, else null

With compliance retention rules configured (docs/compliance.md), object lines also carry
``retention_class``, ``retain_until`` (UTC, ISO 8601) and ``lock_mode`` (COMPLIANCE, GOVERNANCE
or null). Lines without them predate the rules.

Where the store confirmed server-side encryption, object lines carry ``sse`` (``AES256`` or
``aws:kms``) and ``sse_kms_key_id`` (the key the store answered with, or null). A recording
encrypted client-side to a public key (``archiver.encryption``) carries ``encrypted_to`` (the
key's fingerprint), ``plaintext_sha256`` and ``plaintext_size``: its ``size`` and ``sha256`` are
then those of the stored ciphertext — what ``verify`` checks without any key — and these the
recording's own, what ``exotel-archiver decrypt`` checks.

Events about stored objects are lines of the same sequence, told apart by their ``kind``
(``EVENT_KINDS``): ``legal_hold`` and ``legal_hold_release`` (with ``reason``),
``retention_extended`` (``lock_mode``, ``retain_until`` and the ``previous_*`` values) and
``erasure`` (the receipt: ``sha256``, ``size``, ``retention_class``, ``retain_until``,
``deleted_at``) and ``class_bound`` (a rescued call's object bound to its retention class at
enrichment, its entry having none: ``retention_class``, ``retain_until``, ``lock_mode``,
``rescued_at``, ``bound_at``; archiver.retention.binding). Each has ``call_sid``, ``key``,
``version_id``, ``at`` (UTC) and ``actor`` (who ran the job). The chain keeps these after the
data itself is gone.

The ledger is the source of truth and the file is written from it: after each stored object the
writer appends every ledger row whose ``seq`` is past the file's last line. It is fsynced when
segments are sealed and at the end of a run, not after every line: the ledger (committed with a
full fsync) already holds every entry, so lines a power loss takes from the file's tail are
written again from it. A crash between the ledger commit and the append loses nothing: the next
write catches up, and never writes a line twice, because it starts from the file's own last
``seq``. A torn last line (power loss mid-append) is cut off and rewritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from archiver.files import fsync_dir, make_dirs, private_opener
from archiver.ledger import Entry, EventRecord, Ledger, ObjectRecord

SCHEMA = 1
"""Version of the line format, in every line as ``schema``."""


OBJECT_KINDS = frozenset(
    {"recording", "call_details", "legs", "voice_log", "voice_log_audio", "v1_record"}
)
"""The kinds of object entries (archiver.recorder's table)."""
EVENT_KINDS = frozenset(
    {"legal_hold", "legal_hold_release", "retention_extended", "erasure", "repaired", "class_bound"}
)
SYNC_BATCH = 10_000
"""Ledger entries ``ManifestWriter.sync`` reads and appends at a time."""
_RETENTION_FIELDS = ("retention_class", "retain_until", "lock_mode")
_SSE_FIELDS = ("sse", "sse_kms_key_id")
_CLIENT_FIELDS = ("plaintext_sha256", "plaintext_size", "encrypted_to")


def entry(record: Entry) -> dict[str, Any]:
    """The manifest line of one entry (the same in manifest.jsonl and in segments)."""
    if isinstance(record, EventRecord):
        return {
            **json.loads(record.details),
            "schema": SCHEMA,
            "seq": record.seq,
            "kind": record.kind,
            "call_sid": record.call_sid,
            "key": record.key,
            "version_id": record.version_id,
            "at": record.at,
            "actor": record.actor,
        }
    line = {
        "schema": SCHEMA,
        "seq": record.seq,
        "call_sid": record.call_sid,
        "kind": record.kind,
        "index": record.idx,
        "key": record.key,
        "location": record.location,
        "size": record.size,
        "sha256": record.sha256,
        "content_type": record.content_type,
        "format": record.format,
        "source": record.source,
        "call_created": record.call_created,
        "archived_at": record.archived_at,
        "worker": record.worker,
        "version_id": record.version_id,
    }
    if record.retention_class is not None:
        line.update({name: getattr(record, name) for name in _RETENTION_FIELDS})
    if record.sse is not None:
        line.update({name: getattr(record, name) for name in _SSE_FIELDS})
    if record.encrypted_to is not None:
        line.update({name: getattr(record, name) for name in _CLIENT_FIELDS})
    return line


def is_event(e: dict[str, Any]) -> bool:
    return e.get("kind") in EVENT_KINDS


def erased_keys(entries: list[dict[str, Any]]) -> set[str]:
    """Keys with an erasure receipt in ``entries``: deleted on purpose, by a retention job."""
    return {str(e["key"]) for e in entries if e.get("kind") == "erasure"}


def present_objects(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The object lines of ``entries`` whose object should still be stored (not erased)."""
    erased = erased_keys(entries)
    return [e for e in entries if not is_event(e) and str(e["key"]) not in erased]


def record_from_entry(e: dict[str, Any], *, segment: int | None = None) -> Entry:
    """The ledger row a manifest line describes (the inverse of ``entry``)."""
    if is_event(e):
        common = {"schema", "seq", "kind", "call_sid", "key", "version_id", "at", "actor"}
        details = {k: v for k, v in e.items() if k not in common}
        return EventRecord(
            kind=e["kind"],
            call_sid=e["call_sid"],
            key=e["key"],
            at=e["at"],
            actor=e["actor"],
            details=json.dumps(details, sort_keys=True),
            version_id=e.get("version_id"),
            seq=e["seq"],
            segment=segment,
        )
    return ObjectRecord(
        call_sid=e["call_sid"],
        kind=e["kind"],
        idx=e["index"],
        key=e["key"],
        location=e["location"],
        size=e["size"],
        sha256=e["sha256"],
        content_type=e["content_type"],
        format=e["format"],
        source=e["source"],
        call_created=e["call_created"],
        archived_at=e["archived_at"],
        worker=e["worker"],
        version_id=e.get("version_id"),
        retention_class=e.get("retention_class"),
        retain_until=e.get("retain_until"),
        lock_mode=e.get("lock_mode"),
        sse=e.get("sse"),
        sse_kms_key_id=e.get("sse_kms_key_id"),
        plaintext_sha256=e.get("plaintext_sha256"),
        plaintext_size=e.get("plaintext_size"),
        encrypted_to=e.get("encrypted_to"),
        seq=e["seq"],
        segment=segment,
    )


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Every complete entry of the manifest file (a torn last line is ignored)."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_bytes().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            break
    return entries


class ManifestWriter:
    """Appends ledger rows to ``manifest.jsonl``; see the module docstring for the guarantees."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last_seq = self._recover()

    def _recover(self) -> int:
        """The last complete line's seq; a torn tail is truncated away. Read a line at a time:
        the file of a multi-year archive is not held in memory."""
        if not self.path.exists():
            return 0
        good_end, last_seq = 0, 0
        with self.path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    last_seq = int(json.loads(line)["seq"])
                except (ValueError, KeyError, TypeError):
                    break
                good_end += len(line)
            size = fh.seek(0, 2)
        if good_end != size:
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)
                os.fsync(fh.fileno())
        return last_seq

    def sync(self, ledger: Ledger) -> int:
        """Append every ledger entry not yet in the file; returns how many lines were written.
        (``SYNC_BATCH`` entries at a time: a retention job may have added a million.)"""
        written = 0
        while True:
            lines = [
                json.dumps(entry(r), separators=(",", ":"), ensure_ascii=True) + "\n"
                for r in ledger.entries_after(self._last_seq, SYNC_BATCH)
            ]
            if not lines:
                return written
            make_dirs(self.path.parent)
            new = not self.path.exists()
            with open(self.path, "ab", opener=private_opener) as fh:  # a new file is 0600
                fh.write("".join(lines).encode())
            if new:
                fsync_dir(self.path.parent)
            self._last_seq = int(json.loads(lines[-1])["seq"])
            written += len(lines)

    def append(self, entries: list[Entry], ledger: Ledger) -> int:
        """Append the lines of ``entries``, just committed (a group commit's batch), in order;
        returns how many lines were written. When they follow the file's last line without a
        gap they are written as they are, without reading them back; otherwise (another process
        added entries in between: a retention job's events) it is ``sync``."""
        seqs = [e.seq for e in entries]
        if seqs != list(range(self._last_seq + 1, self._last_seq + 1 + len(entries))):
            return self.sync(ledger)
        data = "".join(
            json.dumps(entry(r), separators=(",", ":"), ensure_ascii=True) + "\n" for r in entries
        ).encode()
        make_dirs(self.path.parent)
        new = not self.path.exists()
        with open(self.path, "ab", opener=private_opener) as fh:  # a new file is 0600
            fh.write(data)
        if new:
            fsync_dir(self.path.parent)
        self._last_seq += len(entries)
        return len(entries)

    def fsync(self) -> None:
        """Force the appended lines to disk (done when segments are sealed, and at the end)."""
        if self.path.exists():
            with self.path.open("rb") as fh:
                os.fsync(fh.fileno())
