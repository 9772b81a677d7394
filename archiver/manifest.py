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

The ledger is the source of truth and the file is written from it: after each stored object the
writer appends every ledger row whose ``seq`` is past the file's last line, then fsyncs. A crash
between the ledger commit and the append loses nothing: the next write catches up, and never
writes a line twice, because it starts from the file's own last ``seq``. A torn last line (power
loss mid-append) is cut off and rewritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from archiver.ledger import Ledger, ObjectRecord

SCHEMA = 1
"""Version of the line format, in every line as ``schema``."""


def entry(record: ObjectRecord) -> dict[str, Any]:
    """The manifest line of one stored object (the same in manifest.jsonl and in segments)."""
    return {
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


def record_from_entry(e: dict[str, Any], *, segment: int | None = None) -> ObjectRecord:
    """The ledger row a manifest line describes (the inverse of ``entry``)."""
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
        """The last complete line's seq; a torn tail is truncated away."""
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        good_end, last_seq = 0, 0
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            try:
                last_seq = int(json.loads(data[pos:nl])["seq"])
            except (ValueError, KeyError, TypeError):
                break
            good_end = pos = nl + 1
        if good_end != len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)
                os.fsync(fh.fileno())
        return last_seq

    def sync(self, ledger: Ledger) -> int:
        """Append every ledger object not yet in the file; returns how many lines were written."""
        lines = [
            json.dumps(entry(r), separators=(",", ":"), ensure_ascii=True) + "\n"
            for r in ledger.objects_after(self._last_seq)
        ]
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as fh:
            fh.write("".join(lines).encode())
            fh.flush()
            os.fsync(fh.fileno())
        self._last_seq = int(json.loads(lines[-1])["seq"])
        return len(lines)
