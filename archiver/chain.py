"""The manifest chain as the destination holds it, checked: what ``verify`` (and ``manifest
rebuild``, ``manifest export``, ``export-bag``) read before they trust a single entry.

``load_chain`` walks ``_manifest/segments/``: only segment names there, numbered 1, 2, 3 ...
without a gap, each header's ``prev_sha256`` equal to the SHA-256 of the segment before, each
line canonical JSON, each header agreeing with the entries that follow it, each entry complete,
``seq`` running 1, 2, 3 ... across all segments without a repeat or a gap, no key named by two
object entries, every event about an object an earlier entry names, and every erasure receipt or
``repaired`` event matching that entry (``sha256``, ``size``, ``call_sid``). A ``repaired``
event about a client-side encrypted object also names the ciphertext it put back
(``stored_sha256``, ``stored_size``): ``stored_as`` says which bytes each key must hold now.

With the local ledger (opened read-only: it may run beside the worker), the destination and the
ledger must agree both ways: every segment the ledger sealed is there with its SHA-256 (this
catches a deleted *last* segment, which the chain alone cannot), every segment there is one the
ledger sealed — or exactly what it would write, a seal the ledger has not recorded yet — and
every entry there equals the ledger's entry of the same ``seq``. The entries whose objects are
then checked are the ledger's (``Chain.checked``), those not sealed yet marked ``pending``.
docs/manifest.md's table says what is and is not detected, with and without the ledger.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from archiver.ledger import Entry, Ledger, SegmentRecord
from archiver.manifest import EVENT_KINDS, OBJECT_KINDS, entry, is_event
from archiver.segments import PREFIX, SCHEMA, read_segment, render, segment_key
from archiver.sinks import Sink

SEGMENT_NAME = re.compile(r"(\d{8})\.jsonl")
_EVENT_FIELDS = ("schema", "seq", "kind", "call_sid", "key", "version_id", "at", "actor")
_OBJECT_FIELDS = (
    *("schema", "seq", "call_sid", "kind", "index", "key", "location", "size", "sha256"),
    *("content_type", "format", "source", "call_created", "archived_at", "worker", "version_id"),
)
RECEIPTS = frozenset({"erasure", "repaired"})
"""Events that name the bytes of the object they are about: they must match its entry."""
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Chain:
    """What the destination's segments say, and what is wrong with them."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    """Every well-formed entry of the segments, in order (what ``manifest rebuild`` restores)."""
    segments: list[SegmentRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Things worth saying that are not problems (a seal the ledger has not recorded yet)."""
    checked: list[dict[str, Any]] = field(default_factory=list)
    """The entries whose objects ``verify`` checks: the ledger's, or without one the chain's."""
    pending: set[int] = field(default_factory=set)
    """``seq`` of the checked entries that are not in the chain read (yet): pending seal."""
    ledger_used: bool = False


@dataclass(frozen=True)
class _Line:
    number: int
    seq: int | None
    """Its ``seq``, if it has a usable one (even when the rest of it is not an entry)."""
    entry: dict[str, Any] | None
    """The entry, if the line is a well-formed one."""


@dataclass
class _Segment:
    record: SegmentRecord
    data: bytes
    lines: list[_Line]
    """The lines after the header."""


async def load_chain(sink: Sink, ledger: Ledger | None = None) -> Chain:
    """Read and check every segment in the destination (and, given one, against the ledger)."""
    chain = Chain()
    before = ledger.snapshot() if ledger is not None else None
    if before is not None and not before[0] and not before[1]:
        chain.notes.append("the local ledger is empty: checked without it")
        before = None
    read = await _read_segments(sink, chain)
    _check_sequence(read, chain)
    chain.problems.extend(cross_check(chain.entries)[0])
    if ledger is None or before is None:
        chain.checked = chain.entries
        return chain
    chain.ledger_used = True
    # The worker may seal while this runs: whatever it sealed before ``before`` must be here;
    # whatever is here must be in the ledger as read after the segments were (``after``).
    if chain.segments and (not before[0] or chain.segments[-1].number > before[0][-1].number):
        after = ledger.snapshot()
    else:
        after = before
    _compare(read, chain, before, after)
    return chain


async def _read_segments(sink: Sink, chain: Chain) -> list[_Segment]:
    numbered: dict[int, str] = {}
    for key in sorted([info.key async for info in sink.list(PREFIX)]):
        name = SEGMENT_NAME.fullmatch(key.removeprefix(PREFIX))
        if name is None or int(name[1]) == 0:
            chain.problems.append(
                f"{key} is not a segment name (segments are {PREFIX}NNNNNNNN.jsonl, numbered from "
                "00000001): a stray or renamed object in the manifest's folder"
            )
            continue
        numbered[int(name[1])] = key
    out: list[_Segment] = []
    expected, prev = 1, None
    for number in sorted(numbered):
        key = numbered[number]
        if number != expected:
            missing = f"{expected}" if number == expected + 1 else f"{expected} to {number - 1}"
            chain.problems.append(
                f"segment {missing} ({segment_key(expected)}) is missing: found {key} next; the "
                "chain is broken (deleted or renamed segment)"
            )
            prev = None  # cannot check the link across the gap
        data = await read_segment(sink, key)
        segment = _parse(number, key, data, chain.problems)
        header_prev = segment.record.prev_sha256
        if number == 1 and header_prev is not None:
            chain.problems.append(f"segment 1 ({key}) has a prev_sha256: the first has none")
        elif number > 1 and prev is not None and header_prev != prev:
            chain.problems.append(
                f"segment {key} does not follow segment {number - 1}: its prev_sha256 is not "
                "the SHA-256 of that segment (one of the two was edited or replaced)"
            )
        chain.segments.append(segment.record)
        chain.entries.extend(line.entry for line in segment.lines if line.entry is not None)
        out.append(segment)
        prev, expected = segment.record.sha256, number + 1
    return out


def _parse(number: int, key: str, data: bytes, problems: list[str]) -> _Segment:
    """One segment's header and lines; every fault goes to ``problems``, none raises."""
    where = f"segment {number} ({key})"
    raw = data.split(b"\n")
    if raw[-1] == b"":
        raw.pop()
    elif data:
        problems.append(f"{where} does not end with a newline: cut off or edited")
    parsed: list[Any] = []
    for n, text in enumerate(raw, start=1):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            problems.append(f"{where} line {n} is not valid JSON")
            parsed.append(None)
            continue
        if _canonical(value) != text:
            problems.append(
                f"{where} line {n} is not written as the archiver writes it (sorted keys, no "
                "spaces, each key once): edited"
            )
        parsed.append(value)
    header = parsed[0] if parsed and isinstance(parsed[0], dict) else {}
    body = list(enumerate(parsed[1:], start=2))
    if not parsed:
        problems.append(f"{where} is empty")
    elif header.get("type") != "segment":
        problems.append(f"{where} line 1 is not a segment header")
    lines: list[_Line] = []
    for n, value in body:
        fault = entry_problem(value)
        if fault is not None and value is not None:  # (None: not JSON, already said)
            problems.append(f"{where} line {n}: {fault}")
        lines.append(_Line(n, _seq(value), value if fault is None else None))
    seqs = [line.seq for line in lines]
    if header:
        _check_header(where, number, header, seqs, problems)
    record = SegmentRecord(
        number,
        key,
        hashlib.sha256(data).hexdigest(),
        header.get("prev_sha256") if isinstance(header.get("prev_sha256"), str) else None,
        _int(header.get("first_seq")) or 0,
        _int(header.get("last_seq")) or 0,
    )
    return _Segment(record, data, lines)


def _check_header(
    where: str, number: int, header: dict[str, Any], seqs: list[int | None], problems: list[str]
) -> None:
    if header.get("schema") != SCHEMA:
        problems.append(f"{where}: header schema is {header.get('schema')!r}, not {SCHEMA}")
    if header.get("number") != number:
        problems.append(f"{where}: header number says it is number {header.get('number')!r}")
    if header.get("entries") != len(seqs):
        problems.append(
            f"{where}: header entries says {header.get('entries')!r}, the segment holds {len(seqs)}"
        )
    if not seqs:
        problems.append(f"{where} holds no entries (the archiver never seals an empty segment)")
        return
    for name, actual in (("first_seq", seqs[0]), ("last_seq", seqs[-1])):
        if actual is not None and header.get(name) != actual:
            problems.append(
                f"{where}: header {name} says {header.get(name)!r}, the entry there has seq "
                f"{actual}"
            )


def _canonical(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _seq(value: Any) -> int | None:
    return _int(value.get("seq")) if isinstance(value, dict) else None


def entry_problem(e: Any) -> str | None:
    """What makes ``e`` not a manifest entry (docs/manifest.md, "Entries"), or None."""
    if not isinstance(e, dict):
        return f"not an entry (a JSON {type(e).__name__}, not an object)"
    kind = e.get("kind")
    if kind not in OBJECT_KINDS and kind not in EVENT_KINDS:
        return f"unknown kind {kind!r}"
    required = _EVENT_FIELDS + (("sha256", "size") if kind in RECEIPTS else ())
    if kind in OBJECT_KINDS:
        required = _OBJECT_FIELDS
    lacking = [name for name in required if name not in e]
    if lacking:
        return f"the {kind} entry lacks {', '.join(lacking)}"
    if e["schema"] != 1:
        return f"schema {e['schema']!r}, not 1"
    seq = _int(e["seq"])
    if seq is None or seq < 1:
        return f"seq {e['seq']!r} is not a positive whole number"
    if not isinstance(e["key"], str) or not e["key"] or not isinstance(e["call_sid"], str):
        return "key and call_sid must be non-empty text"
    if "size" in required and (_int(e["size"]) is None or e["size"] < 0):
        return f"size {e['size']!r} is not a whole number of bytes"
    if "sha256" in required and not (
        isinstance(e["sha256"], str) and _HEX64.fullmatch(e["sha256"])
    ):
        return f"sha256 {e['sha256']!r} is not 64 lower-case hex digits"
    if kind == "repaired" and ("stored_sha256" in e or "stored_size" in e):
        stored_sha, stored_size = e.get("stored_sha256"), _int(e.get("stored_size"))
        if not (isinstance(stored_sha, str) and _HEX64.fullmatch(stored_sha)):
            return f"stored_sha256 {stored_sha!r} is not 64 lower-case hex digits"
        if stored_size is None or stored_size < 0:
            return f"stored_size {e.get('stored_size')!r} is not a whole number of bytes"
    return None


def _check_sequence(read: list[_Segment], chain: Chain) -> None:
    """``seq`` runs 1, 2, 3 ... over every line of every segment, in order."""
    expected = 1
    for segment in read:
        for line in segment.lines:
            if line.seq is not None and line.seq != expected:
                chain.problems.append(
                    f"segment {segment.record.number} line {line.number} has seq {line.seq} where "
                    f"seq {expected} is due: the sequence repeats or skips"
                )
                expected = line.seq
            expected += 1


def cross_check(entries: Iterable[dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """What entries say about each other that cannot all be true (docs/manifest.md, step 3), and
    the valid erasure receipts: key → the receipt that follows its object's entry and matches it.
    """
    problems: list[str] = []
    objects: dict[str, dict[str, Any]] = {}
    erased: dict[str, dict[str, Any]] = {}
    for e in entries:
        key, seq = str(e["key"]), e["seq"]
        if not is_event(e):
            if key in objects:
                problems.append(
                    f"{key} is named by two object entries (seq {objects[key]['seq']} and {seq})"
                )
            else:
                objects[key] = e
            continue
        kind, original = e["kind"], objects.get(key)
        if original is None:
            problems.append(
                f"{kind} event seq {seq} is about {key}, which no earlier object entry names"
            )
            continue
        if key in erased:
            problems.append(
                f"{kind} event seq {seq} is about {key} after its erasure (seq "
                f"{erased[key]['seq']})"
            )
        differ = [
            name
            for name in ("call_sid", *(("sha256", "size") if kind in RECEIPTS else ()))
            if e.get(name) != original.get(name)
        ]
        if kind == "repaired" and "stored_sha256" in e:
            # A new ciphertext of the same recording: only for an object stored encrypted.
            differ += [
                name
                for name in ("encrypted_to", "plaintext_sha256")
                if original.get(name) is None or e.get(name) != original[name]
            ]
        if differ:
            problems.append(
                f"{kind} event seq {seq} about {key} does not match its object entry (seq "
                f"{original['seq']}): {', '.join(differ)} differ"
            )
        elif kind == "erasure" and key not in erased:
            erased[key] = e
    return problems, erased


def stored_as(entries: Iterable[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """The bytes a key must hold where they are not its object entry's: key → (SHA-256, size) of
    the ciphertext the latest ``repaired`` event put back for a client-side encrypted object
    (its entry's ciphertext cannot be made again: a fresh data key each time). Keys absent here
    hold their entry's ``sha256``/``size`` (a ``repaired`` event without ``stored_*``, of a
    plaintext object, put back exactly those). What ``verify``, ``manifest export`` and
    ``export-bag`` check stored bytes against, with ``expected``."""
    out: dict[str, tuple[str, int]] = {}
    for e in entries:
        if e.get("kind") == "repaired" and "stored_sha256" in e:
            out[str(e["key"])] = (str(e["stored_sha256"]), int(e["stored_size"]))
    return out


def expected(e: dict[str, Any], stored: dict[str, tuple[str, int]]) -> tuple[str, int]:
    """(SHA-256, size) the object of entry ``e`` must have in the store (see ``stored_as``)."""
    return stored.get(str(e["key"]), (str(e["sha256"]), int(e["size"])))


def _compare(
    read: list[_Segment],
    chain: Chain,
    before: tuple[list[SegmentRecord], list[Entry]],
    after: tuple[list[SegmentRecord], list[Entry]],
) -> None:
    """The destination and the ledger, both ways (see the module docstring, step 2).

    ``before`` was read before the segments, ``after`` after them: what the ledger had sealed
    when verify began must be there; what is there must be in the ledger as it is now.
    """
    found = {s.number: s for s in chain.segments}
    sealed_before = {s.number: s for s in before[0]}
    sealed_after = {s.number: s for s in after[0]}
    rows = {r.seq: r for r in after[1]}
    for sealed in before[0]:
        there = found.get(sealed.number)
        if there is None:
            chain.problems.append(
                f"segment {sealed.number} ({sealed.key}) is in the ledger but not in the "
                "destination: deleted"
            )
        elif there.sha256 != sealed.sha256:
            chain.problems.append(_differs(sealed, there))
    for segment in read:
        record = segment.record
        known = sealed_after.get(record.number)
        if record.number in sealed_before:
            pass  # compared above
        elif known is not None:
            if known.sha256 != record.sha256:
                chain.problems.append(_differs(known, record))
        elif _renders(segment, rows):
            chain.notes.append(
                f"segment {record.number} ({record.key}) is stored but the ledger has not "
                "recorded it yet (a seal cut short, or under way); it is exactly what the "
                "ledger writes there, and the next run adopts it"
            )
        else:
            chain.problems.append(
                f"segment {record.number} ({record.key}) is in the destination, but the ledger "
                "never sealed it and it is not what the ledger would write there: forged, or "
                "written by another worker into this destination"
            )
        unknown, differ = [], []
        for line in segment.lines:
            if line.entry is None:
                continue
            row = rows.get(line.entry["seq"])
            if row is None:
                unknown.append(line.entry["seq"])
            elif entry(row) != line.entry:
                differ.append(line.entry["seq"])
        if unknown:
            chain.problems.append(
                f"segment {record.number}: entries seq {_ranges(unknown)} are not in the ledger"
            )
        if differ:
            chain.problems.append(
                f"segment {record.number}: entries seq {_ranges(differ)} differ from the ledger's"
            )
    vouched = {e["seq"] for e in chain.entries if (r := rows.get(e["seq"])) and entry(r) == e}
    lost = [r.seq or 0 for r in before[1] if r.segment is not None and r.seq not in vouched]
    if lost:
        chain.problems.append(
            f"the ledger's sealed entries seq {_ranges(lost)} are not in the destination's "
            "segments as sealed"
        )
    was_sealed = {r.seq for r in before[1] if r.segment is not None}
    chain.checked = [entry(r) for r in after[1]]
    settled = vouched | was_sealed  # (once: inside the comprehension it was quadratic)
    chain.pending = {r.seq or 0 for r in after[1] if r.seq not in settled}


def _differs(known: SegmentRecord, there: SegmentRecord) -> str:
    return (
        f"segment {known.number} ({known.key}) differs from the one sealed (SHA-256 "
        f"{there.sha256}, sealed as {known.sha256}): edited or replaced"
    )


def _renders(segment: _Segment, rows: dict[int | None, Entry]) -> bool:
    """Whether ``segment`` is byte for byte what the ledger writes for the range it covers."""
    record = segment.record
    span = [rows[s] for s in range(record.first_seq, record.last_seq + 1) if s in rows]
    return bool(span) and render(record.number, record.prev_sha256, span) == segment.data


def _ranges(seqs: Iterable[int]) -> str:
    """``[6, 7, 9]`` → ``"6-7, 9"``."""
    out: list[str] = []
    ordered = sorted(set(seqs))
    start = prev = ordered[0]
    for seq in [*ordered[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    return ", ".join(out)
