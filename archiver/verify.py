"""Fixity audit: is the manifest chain intact, and is every object still what it recorded?

``verify`` works from the destination itself — the evidence an auditor would look at:

1. It walks the manifest segments (``_manifest/segments/``): numbered 1, 2, 3 ... without a gap,
   each header's ``prev_sha256`` equal to the SHA-256 of the segment before, each readable and as
   long as its header says. If the local ledger knows segments, their SHA-256 must match too (this
   is what catches a deleted *last* segment, which the chain alone cannot).
2. It re-reads the objects the segments name (all, those of a date range, or a sample) and
   compares size and SHA-256: ``ok``, ``missing`` or ``altered``.
3. It lists the archive and names every object that no manifest entry names: ``unexpected``.

The result is ``ok`` only when the chain is intact and every object checked is ``ok`` with
nothing unexpected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from archiver.archive import sink_for
from archiver.config import Settings
from archiver.ledger import Ledger, SegmentRecord
from archiver.manifest import erased_keys, is_event
from archiver.segments import PREFIX, parse, read_segment, segment_key
from archiver.sinks import Sink

OK, MISSING, ALTERED, UNEXPECTED = "ok", "missing", "altered", "unexpected"
ERASED, NOT_ERASED = "erased", "not_erased"
"""An object with an erasure receipt: absent as it should be, or still (again) there."""
STATUSES = (OK, MISSING, ALTERED, UNEXPECTED, ERASED, NOT_ERASED)


@dataclass
class ObjectCheck:
    key: str
    status: str
    call_sid: str | None = None
    expected_size: int | None = None
    expected_sha256: str | None = None
    found_size: int | None = None
    found_sha256: str | None = None


@dataclass
class Chain:
    """What the destination's segments say, and what is wrong with them."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    segments: list[SegmentRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    chain: Chain
    checks: list[ObjectCheck] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)

    @property
    def ok(self) -> bool:
        return not self.chain.problems and all(c.status in (OK, ERASED) for c in self.checks)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "segments": len(self.chain.segments),
            "chain_problems": self.chain.problems,
            "counts": {s: self.count(s) for s in STATUSES},
            "objects": [c.__dict__ for c in self.checks if c.status not in (OK, ERASED)],
            "checked": len([c for c in self.checks if c.status != UNEXPECTED]),
        }


async def load_chain(sink: Sink, ledger: Ledger | None = None) -> Chain:
    """Read and check every segment in the destination."""
    chain = Chain()
    keys = sorted([info.key async for info in sink.list(PREFIX)])
    prev: str | None = None
    expected = 1
    for key in keys:
        if key != segment_key(expected):
            chain.problems.append(
                f"segment {expected} ({segment_key(expected)}) is missing: found {key} next; "
                "the chain is broken (deleted or renamed segment)"
            )
            expected = _number(key) or expected
            prev = None  # cannot check the link across the gap
        try:
            data = await read_segment(sink, key)
            parsed = parse(data)
        except ValueError as exc:
            chain.problems.append(f"segment {key} is not a valid segment ({exc}): edited?")
            expected += 1
            prev = None
            continue
        header = parsed.header
        if header.get("number") != expected:
            chain.problems.append(f"segment {key} says it is number {header.get('number')}")
        if expected > 1 and prev is not None and header.get("prev_sha256") != prev:
            chain.problems.append(
                f"segment {key} does not follow segment {expected - 1}: its prev_sha256 is not "
                "the SHA-256 of that segment (one of the two was edited or replaced)"
            )
        chain.segments.append(
            SegmentRecord(
                expected,
                key,
                parsed.sha256,
                header.get("prev_sha256"),
                int(header.get("first_seq") or 0),
                int(header.get("last_seq") or 0),
            )
        )
        chain.entries.extend(parsed.entries)
        prev = parsed.sha256
        expected += 1
    if ledger is not None:
        found = {s.number: s for s in chain.segments}
        for known in ledger.segments():
            there = found.get(known.number)
            if there is None:
                chain.problems.append(
                    f"segment {known.number} ({known.key}) is in the ledger but not in the "
                    "destination: deleted"
                )
            elif there.sha256 != known.sha256:
                chain.problems.append(
                    f"segment {known.number} ({known.key}) differs from the one sealed "
                    f"(SHA-256 {there.sha256}, sealed as {known.sha256}): edited"
                )
    return chain


def _number(key: str) -> int | None:
    try:
        return int(key.removeprefix(PREFIX).removesuffix(".jsonl"))
    except ValueError:
        return None


def selected(
    entry: dict[str, Any], since: date | None, until: date | None, sample: float | None, seed: str
) -> bool:
    day = str(entry.get("call_created", ""))[:10]
    if since is not None and day < since.isoformat():
        return False
    if until is not None and day > until.isoformat():
        return False
    if sample is not None:
        digest = hashlib.sha256(f"{seed}:{entry.get('key')}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < sample
    return True


async def verify(
    sink: Sink,
    ledger: Ledger | None,
    *,
    since: date | None = None,
    until: date | None = None,
    sample: float | None = None,
    seed: str = "",
    on_object: Callable[[ObjectCheck], None] | None = None,
) -> VerifyReport:
    """Check the chain, then the objects it names; see the module docstring."""
    chain = await load_chain(sink, ledger)
    report = VerifyReport(chain)
    erased = erased_keys(chain.entries)
    for entry in chain.entries:
        if is_event(entry) or not selected(entry, since, until, sample, seed):
            continue
        if str(entry.get("key")) in erased:
            present = await sink.stat(str(entry.get("key"))) is not None
            check = ObjectCheck(
                str(entry.get("key")), NOT_ERASED if present else ERASED, entry.get("call_sid")
            )
        else:
            check = await _check(sink, entry)
        report.checks.append(check)
        if on_object is not None:
            on_object(check)
    named = {str(e.get("key")) for e in chain.entries}
    async for info in sink.list():
        if not info.key.startswith("_manifest/") and info.key not in named:
            report.checks.append(ObjectCheck(info.key, UNEXPECTED, found_size=info.size))
    return report


async def _check(sink: Sink, entry: dict[str, Any]) -> ObjectCheck:
    key = str(entry.get("key"))
    check = ObjectCheck(
        key,
        OK,
        call_sid=entry.get("call_sid"),
        expected_size=entry.get("size"),
        expected_sha256=entry.get("sha256"),
    )
    if await sink.stat(key) is None:
        check.status = MISSING
        return check
    digest, size = hashlib.sha256(), 0
    async for chunk in sink.read(key):
        digest.update(chunk)
        size += len(chunk)
    check.found_size, check.found_sha256 = size, digest.hexdigest()
    if size != check.expected_size or check.found_sha256 != check.expected_sha256:
        check.status = ALTERED
    return check


async def run_verify(
    settings: Settings,
    *,
    since: date | None = None,
    until: date | None = None,
    sample: float | None = None,
    seed: str = "",
    on_object: Callable[[ObjectCheck], None] | None = None,
) -> VerifyReport:
    """``exotel-archiver verify``: the destination of ``settings``, with its ledger if any."""
    sink = sink_for(settings)
    path = settings.state_dir / "ledger.sqlite3"
    ledger = Ledger(path) if path.exists() else None
    try:
        await sink.check()
        return await verify(
            sink, ledger, since=since, until=until, sample=sample, seed=seed, on_object=on_object
        )
    finally:
        if ledger is not None:
            ledger.close()
        await sink.close()
