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
(and the write-once store answers "already there"): a stored segment is adopted only if its bytes
are exactly what the ledger renders for the range it covers; anything else is another writer's
and stops the run (``ManifestConflict``). docs/manifest.md specifies the format for an
independent checker.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from archiver.errors import ManifestConflict, StorageConflict
from archiver.ledger import Entry, Ledger, SegmentRecord
from archiver.manifest import entry
from archiver.sinks import Sink, put_bytes

log = logging.getLogger("archiver.segments")

PREFIX = "_manifest/segments/"
SEGMENT_MAX = 10_000
"""The most entries one segment holds: a retention job that recorded a million events while the
worker was idle is sealed as many segments, each built in bounded memory."""
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


async def seal(ledger: Ledger, sink: Sink, *, at_least: int = 1) -> list[SegmentRecord]:
    """Seal the entries waiting in the ledger into new segments, for as long as at least
    ``at_least`` of them wait (1: every one); returns what was sealed. A worker sealing a full
    segment passes its size: the few entries its calls in flight commit during the PUT wait
    for the next one instead of becoming a segment each."""
    sealed: list[SegmentRecord] = []
    while True:
        pending = ledger.unsealed(SEGMENT_MAX)
        if not pending or len(pending) < at_least:
            return sealed
        known = ledger.segments()
        number = known[-1].number + 1 if known else 1
        prev = known[-1].sha256 if known else None
        data = render(number, prev, pending)
        key = segment_key(number)
        sha = hashlib.sha256(data).hexdigest()
        try:
            await put_bytes(sink, key, data, content_type="application/x-ndjson")
        except StorageConflict:
            # A crash after the PUT and before the ledger commit (then, maybe, more entries): the
            # stored segment is adopted if it is exactly what this ledger writes for its range.
            record = await adopt(ledger, sink, number, prev, pending)
            log.warning(
                "segment %d was already stored (a previous run); adopting it (seq %d-%d)",
                number,
                record.first_seq,
                record.last_seq,
            )
        else:
            record = SegmentRecord(
                number, key, sha, prev, int(pending[0].seq or 0), int(pending[-1].seq or 0)
            )
        ledger.add_segment(record)
        sealed.append(record)


async def adopt(
    ledger: Ledger, sink: Sink, number: int, prev: str | None, pending: list[Entry]
) -> SegmentRecord:
    """The record of segment ``number``, already stored, if its bytes are exactly what this ledger
    renders for the entries it holds — the first ``n`` of ``pending``; else ManifestConflict.

    Nothing looser will do: a segment with the right ``prev_sha256`` but other entries is another
    writer's, and adopting it would mark this ledger's entries sealed though no segment holds
    them.
    """
    key = segment_key(number)
    info = await sink.stat(key)
    problem = sink.encryption_problem(info) if info is not None else None
    if problem is not None:  # our bytes, maybe, but not encrypted at rest as asked
        raise ManifestConflict(
            f"the manifest segment {sink.location(key)} is already stored (by a run cut off "
            f"before it recorded the seal), but not with the server-side encryption asked "
            f"({problem}). Nothing was marked sealed; the entries wait in the ledger. Copy it "
            "onto itself with the encryption asked (aws s3 cp SRC SRC --sse ...), or run once "
            "with the setting it was written under"
        )
    stored = await read_segment(sink, key)
    try:
        header = json.loads(stored.split(b"\n", 1)[0])
        first, last = int(header["first_seq"]), int(header["last_seq"])
    except (ValueError, KeyError, TypeError):
        first = last = 0
    mine = [r for r in pending if first <= (r.seq or 0) <= last]
    if mine and mine[0] is pending[0] and render(number, prev, mine) == stored:
        return SegmentRecord(number, key, hashlib.sha256(stored).hexdigest(), prev, first, last)
    raise ManifestConflict(
        f"the manifest segment {sink.location(key)} is already stored, and it is not what this "
        f"ledger ({ledger.path}) seals there (its entries from seq {pending[0].seq} on): "
        "another writer — a worker with another state directory, or a hand — writes to this "
        "destination's manifest. Nothing was marked sealed; the entries wait in the ledger. "
        "Give each worker its own destination (bucket or prefix) and state directory; if this "
        "state directory's ledger is a stale copy, rebuild it from the destination with "
        "`exotel-archiver manifest rebuild` into a new --state-dir"
    )
