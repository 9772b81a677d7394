"""Tampering with a real archive in SeaweedFS, and what ``verify`` makes of it, with the local
ledger and without it (a state directory that has none: an auditor, or a lost worker).

Every attack is done with the raw S3 client, as someone with write access to the bucket would
do it; every forged segment is chained correctly (``prev_sha256`` is the SHA-256 of the real
segment before it), so only what ``verify`` checks beyond the chain link can catch it. The cases
that cannot be caught without the ledger are asserted to pass unnoticed: docs/manifest.md lists
them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from archiver.archive import sink_for
from archiver.config import Settings
from archiver.ledger import EventRecord, Ledger
from archiver.segments import seal
from archiver.simulator import Simulator, SimulatorServer
from archiver.verify import VerifyReport, run_verify
from tests.support import archive_in_two_runs

PREFIX = "t"
SEGMENTS = f"{PREFIX}/_manifest/segments/"


@pytest.fixture
async def archived(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> Settings:
    """Three calls archived in two runs: segment 1 holds seq 1-5, segment 2 seq 6-7."""
    return await archive_in_two_runs(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path)


class Bucket:
    """The raw S3 client on the test bucket: what an attacker with write access can do."""

    def __init__(self, seaweed: Any, name: str) -> None:
        self.client, self.name = seaweed.client(), name

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.name, Key=f"{PREFIX}/{key}")["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=f"{PREFIX}/{key}", Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=f"{PREFIX}/{key}")

    def segment(self, number: int) -> bytes:
        return self.get(f"_manifest/segments/{number:08d}.jsonl")

    def entries(self, number: int) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.segment(number).splitlines()[1:]]

    def put_segment(self, number: int, data: bytes) -> None:
        self.put(f"_manifest/segments/{number:08d}.jsonl", data)


@pytest.fixture
def s3(seaweed: Any, bucket: str) -> Bucket:
    return Bucket(seaweed, bucket)


def line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def forge(number: int, prev: bytes | None, entries: list[Any], /, **header: Any) -> bytes:
    """A segment as the archiver writes one, chained to ``prev``; ``header`` overrides fields."""
    seqs = [e["seq"] for e in entries if isinstance(e, dict) and "seq" in e]
    fields = {
        "type": "segment",
        "schema": 1,
        "number": number,
        "prev_sha256": hashlib.sha256(prev).hexdigest() if prev is not None else None,
        "first_seq": seqs[0],
        "last_seq": seqs[-1],
        "entries": len(entries),
        **header,
    }
    return line(fields) + b"".join(e if isinstance(e, bytes) else line(e) for e in entries)


def plant(
    s3: Bucket, template: dict[str, Any], seq: int, name: str = "CAplanted"
) -> dict[str, Any]:
    """Upload an object the archiver never stored, and the entry that would vouch for it."""
    data = b"ID3" + name.encode() * 100
    key = f"2026/01/01/{name}/recording-1.mp3"
    s3.put(key, data)
    return {
        **template,
        "seq": seq,
        "call_sid": name,
        "key": key,
        "location": f"s3://{s3.name}/{PREFIX}/{key}",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def recording(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in entries if e["kind"] == "recording")


def receipt(original: dict[str, Any], seq: int, **changes: Any) -> dict[str, Any]:
    """An erasure receipt for ``original``, as ``retention purge`` writes one."""
    return {
        "schema": 1,
        "seq": seq,
        "kind": "erasure",
        "call_sid": original["call_sid"],
        "key": original["key"],
        "version_id": original["version_id"],
        "at": "2026-12-01T00:00:00.000Z",
        "actor": "mallory@host",
        "sha256": original["sha256"],
        "size": original["size"],
        "retention_class": "general",
        "retain_until": "2026-11-30T00:00:00Z",
        "deleted_at": "2026-12-01T00:00:00Z",
        "location": original["location"],
        **changes,
    }


def without_ledger(settings: Settings, tmp_path: Path) -> Settings:
    """The same destination seen from a state directory with no ledger."""
    return dataclasses.replace(settings, state_dir=tmp_path / "no-ledger")


def statuses(result: VerifyReport) -> dict[str, str]:
    return {c.key: c.status for c in result.checks if c.status != "ok"}


def problems_with(result: VerifyReport, *words: str) -> list[str]:
    return [p for p in result.chain.problems if all(w in p for w in words)]


# --- what the ledger alone can catch ----------------------------------------------------------


async def test_a_forged_last_segment_planting_an_object(
    archived: Settings, s3: Bucket, tmp_path: Path
) -> None:
    planted = plant(s3, recording(s3.entries(2)), seq=8)
    s3.put_segment(3, forge(3, s3.segment(2), [planted]))

    with_ledger = await run_verify(archived)
    assert not with_ledger.ok
    assert problems_with(with_ledger, "segment 3", "ledger")
    assert statuses(with_ledger) == {planted["key"]: "unexpected"}  # not counted as archived

    alone = await run_verify(without_ledger(archived, tmp_path))
    assert alone.ok, alone.as_dict()  # NOT detectable from the bucket alone (docs/manifest.md)
    assert alone.count("ok") == 8


async def test_a_forged_erasure_receipt_for_an_object_someone_deleted(
    archived: Settings, s3: Bucket, tmp_path: Path
) -> None:
    victim = recording(s3.entries(1))
    s3.delete(victim["key"])
    s3.put_segment(3, forge(3, s3.segment(2), [receipt(victim, seq=8)]))

    with_ledger = await run_verify(archived)
    assert not with_ledger.ok
    assert problems_with(with_ledger, "segment 3", "ledger")
    assert statuses(with_ledger) == {victim["key"]: "missing"}  # the receipt is not believed

    alone = await run_verify(without_ledger(archived, tmp_path))
    assert alone.ok, alone.as_dict()  # a receipt that matches the entry: NOT detectable alone
    assert statuses(alone) == {victim["key"]: "erased"}


async def test_a_deleted_last_segment(archived: Settings, s3: Bucket, tmp_path: Path) -> None:
    lost = s3.entries(2)
    s3.delete(f"_manifest/segments/{2:08d}.jsonl")

    with_ledger = await run_verify(archived)
    assert problems_with(with_ledger, "segment 2", "deleted")
    assert problems_with(with_ledger, "seq 6-7")  # the ledger's sealed entries the chain lost

    alone = await run_verify(without_ledger(archived, tmp_path))
    assert not alone.chain.problems  # NOT detectable alone: the chain ends one segment early
    assert {k for k, s in statuses(alone).items() if s == "unexpected"} == {e["key"] for e in lost}


async def test_the_whole_last_segment_rewritten_consistently(
    archived: Settings, s3: Bucket, tmp_path: Path
) -> None:
    """Seq 7 replaced by a planted object's entry: a chain that is consistent in itself."""
    six, seven = s3.entries(2)
    planted = plant(s3, seven, seq=7)
    s3.put_segment(2, forge(2, s3.segment(1), [six, planted]))

    with_ledger = await run_verify(archived)
    assert problems_with(with_ledger, "segment 2")
    assert problems_with(with_ledger, "seq 7", "ledger")
    assert statuses(with_ledger) == {planted["key"]: "unexpected"}  # seq 7 checked as sealed

    alone = await run_verify(without_ledger(archived, tmp_path))
    assert not alone.chain.problems  # NOT detectable alone
    assert statuses(alone) == {seven["key"]: "unexpected"}  # the real object looks planted


# --- what the chain shows by itself (with the ledger too) -------------------------------------


SEQ_CASES = {
    # name: the seq values of the rewritten segment 2 (its two entries and a planted one)
    "repeated inside a segment": [6, 7, 7],
    "skipped inside a segment": [6, 7, 9],
    "repeated across segments": [5, 6, 7],
    "skipped across segments": [7, 8, 9],
}


@pytest.mark.parametrize("case", sorted(SEQ_CASES))
@pytest.mark.parametrize("ledger", [True, False], ids=["with-ledger", "without-ledger"])
async def test_seq_that_repeats_or_skips(
    archived: Settings, s3: Bucket, tmp_path: Path, case: str, ledger: bool
) -> None:
    six, seven = s3.entries(2)
    seqs = SEQ_CASES[case]
    planted_at = 0 if case == "repeated across segments" else 2
    entries: list[dict[str, Any]] = [six, seven]
    entries.insert(planted_at, plant(s3, seven, seq=0))
    entries = [{**e, "seq": s} for e, s in zip(entries, seqs, strict=True)]
    s3.put_segment(2, forge(2, s3.segment(1), entries))

    result = await run_verify(archived if ledger else without_ledger(archived, tmp_path))
    assert not result.ok
    assert problems_with(result, "repeats or skips"), result.chain.problems


# --- segment headers and lines -----------------------------------------------------------------


HEADER_CASES = {
    "first_seq": {"first_seq": 5},
    "last_seq": {"last_seq": 8},
    "entries": {"entries": 3},
    "number": {"number": 3},
    "schema": {"schema": 2},
}


@pytest.mark.parametrize("field", sorted(HEADER_CASES))
async def test_a_header_that_disagrees_with_its_segment(
    archived: Settings, s3: Bucket, tmp_path: Path, field: str
) -> None:
    s3.put_segment(2, forge(2, s3.segment(1), s3.entries(2), **HEADER_CASES[field]))
    result = await run_verify(without_ledger(archived, tmp_path))
    assert problems_with(result, "segment 2", field), result.chain.problems
    assert not result.ok


BAD_LINES: dict[str, bytes | dict[str, Any]] = {
    "not JSON": b"{not json\n",
    "a JSON list": b"[7]\n",
    "a JSON string": b'"seven"\n',
    "without sha256": {"drop": "sha256"},
    "without key": {"drop": "key"},
    "with a size that is text": {"size": "12"},
    "of an unknown kind": {"kind": "backdoor"},
    "not canonical": b"",
}


@pytest.mark.parametrize("bad", sorted(BAD_LINES))
async def test_a_bad_entry_line_is_a_chain_problem_not_a_crash(
    archived: Settings, s3: Bucket, tmp_path: Path, bad: str
) -> None:
    six, seven = s3.entries(2)
    spec = BAD_LINES[bad]
    if bad == "not canonical":
        broken: Any = json.dumps(seven, indent=1).replace("\n", " ").encode() + b"\n"
    elif isinstance(spec, bytes):
        broken = spec
    elif "drop" in spec:
        broken = {k: v for k, v in seven.items() if k != spec["drop"]}
    else:
        broken = {**seven, **spec}
    data = forge(2, s3.segment(1), [six, broken], first_seq=6, last_seq=7)
    s3.put_segment(2, data)
    for settings in (archived, without_ledger(archived, tmp_path)):
        result = await run_verify(settings)
        assert not result.ok
        assert problems_with(result, "segment 2", "line 3"), result.chain.problems
        assert not problems_with(result, "repeats or skips")  # the line still holds its seq


async def test_keys_that_are_not_segment_names(
    archived: Settings, s3: Bucket, tmp_path: Path
) -> None:
    s3.put("_manifest/segments/00000003.jsonl.bak", s3.segment(2))
    s3.put("_manifest/segments/3.jsonl", s3.segment(2))
    s3.put("_manifest/segments/00000000.jsonl", s3.segment(1))
    for settings in (archived, without_ledger(archived, tmp_path)):
        result = await run_verify(settings)
        assert not result.ok
        for name in ("00000003.jsonl.bak", "3.jsonl", "00000000.jsonl"):
            assert problems_with(result, f"_manifest/segments/{name} ", "not a segment"), (
                result.chain.problems
            )
        assert len(result.chain.problems) == 3  # segments 1 and 2 are still checked as they are
        assert len(result.chain.segments) == 2 and result.count("ok") == 7


async def test_a_gap_in_the_segment_keys(archived: Settings, s3: Bucket, tmp_path: Path) -> None:
    s3.put_segment(4, forge(4, s3.segment(2), [plant(s3, recording(s3.entries(2)), seq=8)]))
    for settings in (archived, without_ledger(archived, tmp_path)):
        result = await run_verify(settings)
        assert problems_with(result, "segment 3", "missing"), result.chain.problems


# --- what entries may say about each other -----------------------------------------------------


async def test_one_key_named_by_two_object_entries(
    archived: Settings, s3: Bucket, tmp_path: Path
) -> None:
    first = recording(s3.entries(1))
    s3.put_segment(3, forge(3, s3.segment(2), [{**first, "seq": 8}]))
    for settings in (archived, without_ledger(archived, tmp_path)):
        result = await run_verify(settings)
        assert problems_with(result, first["key"], "two object entries"), result.chain.problems


def _event(kind: str, about: dict[str, Any], seq: int) -> dict[str, Any]:
    common = {
        "schema": 1,
        "seq": seq,
        "kind": kind,
        "call_sid": about["call_sid"],
        "key": about["key"],
        "version_id": None,
        "at": "2026-12-01T00:00:00.000Z",
        "actor": "mallory@host",
    }
    extra: dict[str, dict[str, Any]] = {
        "legal_hold": {"reason": "x"},
        "retention_extended": {
            "lock_mode": "GOVERNANCE",
            "retain_until": "2030-01-01T00:00:00Z",
            "previous_lock_mode": None,
            "previous_retain_until": None,
            "retention_class": "general",
        },
        "erasure": {k: v for k, v in receipt(about, seq).items() if k not in common},
        "repaired": {"sha256": about["sha256"], "size": about["size"]},
    }
    return {**common, **extra[kind]}


@pytest.mark.parametrize("kind", ["legal_hold", "retention_extended", "erasure", "repaired"])
async def test_an_event_about_a_key_no_earlier_object_entry_has(
    archived: Settings, s3: Bucket, tmp_path: Path, kind: str
) -> None:
    ghost = {**recording(s3.entries(2)), "key": "2026/01/01/CAghost/recording-1.mp3"}
    s3.put_segment(3, forge(3, s3.segment(2), [_event(kind, ghost, 8)]))
    for settings in (archived, without_ledger(archived, tmp_path)):
        result = await run_verify(settings)
        assert problems_with(result, kind, ghost["key"], "no earlier object entry")


async def test_an_erasure_receipt_before_the_objects_entry(
    archived: Settings, s3: Bucket, tmp_path: Path
) -> None:
    """A receipt placed in the chain before the entry it claims to erase."""
    six, seven = s3.entries(2)
    s3.delete(seven["key"])
    early = receipt(seven, seq=6)
    s3.put_segment(2, forge(2, s3.segment(1), [early, {**six, "seq": 7}, {**seven, "seq": 8}]))
    result = await run_verify(without_ledger(archived, tmp_path))
    assert problems_with(result, "erasure", seven["key"], "no earlier object entry")
    assert statuses(result) == {seven["key"]: "missing"}


@pytest.mark.parametrize("field", ["sha256", "size", "call_sid"])
@pytest.mark.parametrize("kind", ["erasure", "repaired"])
async def test_a_receipt_that_does_not_match_its_object(
    archived: Settings, s3: Bucket, tmp_path: Path, kind: str, field: str
) -> None:
    victim = recording(s3.entries(1))
    if kind == "erasure":
        s3.delete(victim["key"])
    wrong = {"sha256": "0" * 64, "size": victim["size"] + 1, "call_sid": "CAother"}[field]
    forged = {**_event(kind, victim, 8), field: wrong}
    s3.put_segment(3, forge(3, s3.segment(2), [forged]))
    result = await run_verify(without_ledger(archived, tmp_path))
    assert problems_with(result, kind, victim["key"], field), result.chain.problems
    if kind == "erasure":
        assert statuses(result) == {victim["key"]: "missing"}  # a false receipt erases nothing


async def _record_event(
    settings: Settings, kind: str, about: dict[str, Any], **details: Any
) -> None:
    """Add an event to the ledger and seal it, as the retention jobs and `repair` do."""
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    sink = sink_for(settings)
    try:
        ledger.add_event(
            EventRecord(
                kind=kind,
                call_sid=about["call_sid"],
                key=about["key"],
                at="2026-12-01T00:00:00.000Z",
                actor="ops@host",
                details=json.dumps(details, sort_keys=True),
                version_id=about["version_id"],
            )
        )
        await seal(ledger, sink)
    finally:
        ledger.close()
        await sink.close()


async def test_a_repaired_object_verifies_and_its_event_must_match(
    archived: Settings, s3: Bucket, tmp_path: Path
) -> None:
    damaged = recording(s3.entries(1))
    original = s3.get(damaged["key"])
    s3.put(damaged["key"], b"rot" + original[3:])
    s3.put(damaged["key"], original)  # `repair` puts the original bytes back and says so
    await _record_event(
        archived, "repaired", damaged, sha256=damaged["sha256"], size=damaged["size"]
    )
    for settings in (archived, without_ledger(archived, tmp_path)):
        result = await run_verify(settings)
        assert result.ok, result.as_dict()
        assert result.count("ok") == 7

    other = recording(s3.entries(2))
    await _record_event(archived, "repaired", other, sha256="1" * 64, size=other["size"])
    for settings in (archived, without_ledger(archived, tmp_path)):
        result = await run_verify(settings)
        assert problems_with(result, "repaired", other["key"], "sha256"), result.chain.problems


async def test_an_event_after_the_erasure(archived: Settings, s3: Bucket, tmp_path: Path) -> None:
    gone = recording(s3.entries(1))
    s3.delete(gone["key"])
    forged = [receipt(gone, seq=8), _event("legal_hold", gone, 9)]
    s3.put_segment(3, forge(3, s3.segment(2), forged))
    result = await run_verify(without_ledger(archived, tmp_path))
    assert problems_with(result, "legal_hold", gone["key"], "after its erasure")


# --- the ledger, entry by entry -----------------------------------------------------------------


async def test_an_edited_entry_is_named_against_the_ledger(
    archived: Settings, s3: Bucket, tmp_path: Path
) -> None:
    six, seven = s3.entries(2)
    s3.put_segment(2, forge(2, s3.segment(1), [six, {**seven, "worker": "elsewhere"}]))
    result = await run_verify(archived)
    assert problems_with(result, "segment 2", "differs from the one sealed")
    assert problems_with(result, "seq 7", "differ from the ledger")


async def test_a_stored_segment_the_ledger_did_not_record_yet_is_its_own(
    archived: Settings, s3: Bucket
) -> None:
    """A crash after the PUT of segment 2 and before the ledger's commit: the segment holds
    exactly what the ledger would write, and the next run adopts it — not a forgery."""
    db = sqlite3.connect(archived.state_dir / "ledger.sqlite3")
    with db:
        db.execute("DELETE FROM segments WHERE number = 2")
        for table in ("objects", "events"):
            db.execute(f"UPDATE {table} SET segment = NULL WHERE segment = 2")
    db.close()
    result = await run_verify(archived)
    assert result.ok, result.as_dict()
    assert result.count("ok") == 7 and any("segment 2" in n for n in result.chain.notes)
