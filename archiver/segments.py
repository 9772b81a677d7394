"""The manifest in the destination: sealed, hash-chained segments (the evidence).

Entries are kept in the ledger until a segment is sealed — at the end of every run, and whenever
``segment_size`` entries are waiting — so the worker does not PUT once per object. A segment is
one object, written once, with its own SHA-256 checksum::

    _manifest/segments/00000001.jsonl
    _manifest/segments/00000002.jsonl ...

Its first line is a header, the other lines are manifest entries (``archiver.manifest.entry``)::

    {"type":"segment","schema":1,"number":2,"prev_sha256":"<sha256 of segment 1's bytes>",
     "first_seq":101,"last_seq":180,"entries":80}

``prev_sha256`` chains each segment to the one before (null for segment 1), in the spirit of
CloudTrail digest files: deleting, reordering or editing a segment breaks the chain. The bytes of
a segment depend only on the ledger's rows, so sealing again after a crash writes the same bytes
(and the write-once store answers "already there"). docs/manifest.md specifies the format for an
independent checker.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

from archiver.errors import StorageConflict
from archiver.ledger import Entry, Ledger, SegmentRecord
from archiver.manifest import entry
from archiver.sinks import Sink

log = logging.getLogger("archiver.segments")

PREFIX = "_manifest/segments/"
SCHEMA = 1


def segment_key(number: int) -> str:
    return f"{PREFIX}{number:08d}.jsonl"


def render(number: int, prev_sha256: str | None, records: list[Entry]) -> bytes:
    """The exact bytes of a segment holding ``records``."""
    header = {
        "type": "segment",
        "schema": SCHEMA,
        "number": number,
        "prev_sha256": prev_sha256,
        "first_seq": records[0].seq,
        "last_seq": records[-1].seq,
        "entries": len(records),
    }
    lines = [header, *(entry(r) for r in records)]
    return b"".join(
        json.dumps(line, separators=(",", ":"), sort_keys=True).encode() + b"\n" for line in lines
    )


@dataclass(frozen=True)
class ParsedSegment:
    header: dict[str, Any]
    entries: list[dict[str, Any]]
    sha256: str


def parse(data: bytes) -> ParsedSegment:
    """A segment's header and entries; ValueError if it is not one."""
    lines = data.splitlines()
    if not lines:
        raise ValueError("empty segment")
    header = json.loads(lines[0])
    if not isinstance(header, dict) or header.get("type") != "segment":
        raise ValueError("the first line is not a segment header")
    entries = [json.loads(line) for line in lines[1:]]
    if len(entries) != header.get("entries"):
        raise ValueError(f"header says {header.get('entries')} entries, found {len(entries)}")
    return ParsedSegment(header, entries, hashlib.sha256(data).hexdigest())


async def read_segment(sink: Sink, key: str) -> bytes:
    return b"".join([chunk async for chunk in sink.read(key)])


async def seal(ledger: Ledger, sink: Sink) -> list[SegmentRecord]:
    """Seal every entry waiting in the ledger into new segments; returns what was sealed."""
    sealed: list[SegmentRecord] = []
    while True:
        pending = ledger.unsealed()
        if not pending:
            return sealed
        known = ledger.segments()
        number = known[-1].number + 1 if known else 1
        prev = known[-1].sha256 if known else None
        data = render(number, prev, pending)
        key = segment_key(number)
        sha = hashlib.sha256(data).hexdigest()
        try:
            await sink.put(
                key,
                io.BytesIO(data),
                size=len(data),
                sha256=sha,
                content_type="application/x-ndjson",
            )
        except StorageConflict:
            # A crash after the PUT and before the ledger commit, then more entries: the segment
            # in the destination is the truth. Adopt it and seal the rest after it.
            existing = parse(await read_segment(sink, key))
            if existing.header.get("prev_sha256") != prev:
                raise
            record = SegmentRecord(
                number,
                key,
                existing.sha256,
                prev,
                int(existing.header["first_seq"]),
                int(existing.header["last_seq"]),
            )
            log.warning("segment %d was already stored (a previous run); adopting it", number)
        else:
            record = SegmentRecord(
                number, key, sha, prev, int(pending[0].seq or 0), int(pending[-1].seq or 0)
            )
        ledger.add_segment(record)
        sealed.append(record)
