"""The ledger and the manifest file written from it: order, catch-up after a crash, torn lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archiver.errors import ConfigError
from archiver.ledger import Ledger, ObjectRecord
from archiver.manifest import ManifestWriter, read_manifest


def record(call: str, idx: int) -> ObjectRecord:
    return ObjectRecord(
        call_sid=call,
        kind="recording",
        idx=idx,
        key=f"2022/11/03/{call}/recording-{idx}.mp3",
        location=f"s3://b/p/2022/11/03/{call}/recording-{idx}.mp3",
        size=10 * idx,
        sha256="ab" * 32,
        content_type="audio/mpeg",
        format="mp3",
        source="https://h/x.mp3",
        call_created="2022-11-03T22:54:40+05:30",
        archived_at="2022-11-03T17:30:00.000Z",
        worker="test",
    )


def test_manifest_follows_the_ledger_in_order(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    writer = ManifestWriter(tmp_path / "manifest.jsonl")
    for i in (1, 2, 3):
        ledger.add_object(record("c1", i))
    assert writer.sync(ledger) == 3
    assert writer.sync(ledger) == 0  # nothing twice
    entries = read_manifest(tmp_path / "manifest.jsonl")
    assert [(e["seq"], e["index"], e["size"]) for e in entries] == [
        (1, 1, 10),
        (2, 2, 20),
        (3, 3, 30),
    ]


def test_crash_between_ledger_commit_and_append_is_caught_up_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ManifestWriter(tmp_path / "manifest.jsonl").sync(ledger)
    ledger.add_object(record("c1", 1))
    ManifestWriter(tmp_path / "manifest.jsonl").sync(ledger)
    ledger.add_object(record("c2", 1))  # committed, then the worker "dies" before appending
    ledger.close()

    reopened = Ledger(tmp_path / "ledger.sqlite3")
    assert ManifestWriter(tmp_path / "manifest.jsonl").sync(reopened) == 1
    assert [e["call_sid"] for e in read_manifest(tmp_path / "manifest.jsonl")] == ["c1", "c2"]


def test_torn_last_line_is_cut_and_rewritten(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    path = tmp_path / "manifest.jsonl"
    ledger.add_object(record("c1", 1))
    ledger.add_object(record("c1", 2))
    ManifestWriter(path).sync(ledger)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # power loss in the middle of the second line

    assert ManifestWriter(path).sync(ledger) == 1
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2]


def test_one_object_per_call_and_position(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.add_object(record("c1", 1))
    with pytest.raises(Exception, match="UNIQUE"):
        ledger.add_object(record("c1", 1))
    assert len(ledger.objects_of("c1")) == 1


def test_outcomes_are_updated_not_duplicated(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.set_call("c1", "not_ready")
    ledger.set_call("c1", "archived", recordings=1)
    assert ledger.call_outcome("c1") == "archived"
    assert ledger.call_counts() == {"archived": 1}


def test_unwritable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="ARCHIVER_STATE_DIR"):
        Ledger(blocker / "sub" / "ledger.sqlite3")
