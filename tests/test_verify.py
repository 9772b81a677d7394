"""verify and manifest rebuild against real tampering in SeaweedFS: each is detected and named."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from archiver import daemon as daemon_module
from archiver.archive import archive_calls, sink_for
from archiver.cli import main
from archiver.config import Settings
from archiver.ledger import EventRecord, Ledger, ObjectRecord
from archiver.manifest import read_manifest
from archiver.rebuild import run_rebuild
from archiver.simulator import Simulator, SimulatorServer
from archiver.verify import ObjectCheck, run_verify, verify
from tests.support import archive_in_two_runs
from tests.test_daemon import daemon_settings, make_daemon, running, until

PREFIX = "v"


@pytest.fixture
async def archived(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> Settings:
    """Three calls archived in two runs: two segments in the bucket."""
    return await archive_in_two_runs(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path)


def recording_keys(seaweed: Any, bucket: str) -> list[str]:
    listed = seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]
    return sorted(o["Key"] for o in listed if "/recording-" in o["Key"])


def segment(n: int) -> str:
    return f"{PREFIX}/_manifest/segments/{n:08d}.jsonl"


async def test_an_untouched_archive_verifies(archived: Settings) -> None:
    result = await run_verify(archived)
    assert result.ok, result.as_dict()
    assert len(result.chain.segments) == 2 and result.count("ok") == 7  # 4 recordings + 3 call.json


async def test_a_changed_byte_is_named_altered(
    archived: Settings, seaweed: Any, bucket: str
) -> None:
    key = recording_keys(seaweed, bucket)[0]
    client = seaweed.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[1000] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    result = await run_verify(archived)
    assert not result.ok
    assert [(c.status, c.key) for c in result.checks if c.status != "ok"] == [
        ("altered", key.removeprefix(f"{PREFIX}/"))
    ]


async def test_a_deleted_object_is_named_missing(
    archived: Settings, seaweed: Any, bucket: str
) -> None:
    key = recording_keys(seaweed, bucket)[-1]
    seaweed.client().delete_object(Bucket=bucket, Key=key)
    result = await run_verify(archived)
    assert [(c.status, c.key) for c in result.checks if c.status != "ok"] == [
        ("missing", key.removeprefix(f"{PREFIX}/"))
    ]


async def test_a_stray_object_is_named_unexpected(
    archived: Settings, seaweed: Any, bucket: str
) -> None:
    seaweed.client().put_object(
        Bucket=bucket, Key=f"{PREFIX}/2026/01/01/x/recording-1.mp3", Body=b"ID3 stray"
    )
    result = await run_verify(archived)
    assert [(c.status, c.key) for c in result.checks if c.status != "ok"] == [
        ("unexpected", "2026/01/01/x/recording-1.mp3")
    ]


async def test_a_deleted_segment_breaks_the_chain(
    archived: Settings, seaweed: Any, bucket: str
) -> None:
    seaweed.client().delete_object(Bucket=bucket, Key=segment(1))
    result = await run_verify(archived)
    assert not result.ok
    assert any("segment 1" in p and "missing" in p for p in result.chain.problems)


async def test_a_deleted_last_segment_is_caught_by_the_ledger(
    archived: Settings, seaweed: Any, bucket: str
) -> None:
    seaweed.client().delete_object(Bucket=bucket, Key=segment(2))
    result = await run_verify(archived)
    assert any("segment 2" in p and "deleted" in p for p in result.chain.problems)


async def test_an_edited_segment_breaks_the_chain(
    archived: Settings, seaweed: Any, bucket: str
) -> None:
    client = seaweed.client()
    text = client.get_object(Bucket=bucket, Key=segment(1))["Body"].read().decode()
    entry = json.loads(text.splitlines()[1])
    forged = text.replace(entry["sha256"], "0" * 64)  # someone "fixes" a checksum
    client.put_object(Bucket=bucket, Key=segment(1), Body=forged.encode())
    shutil.rmtree(archived.state_dir)  # even without the ledger, the chain shows it
    result = await run_verify(archived)
    assert any("does not follow segment 1" in p for p in result.chain.problems)


async def test_rebuild_restores_a_lost_ledger(
    archived: Settings, sim: Simulator, seaweed: Any, bucket: str
) -> None:
    before = read_manifest(archived.state_dir / "manifest.jsonl")
    shutil.rmtree(archived.state_dir)
    chain = await run_rebuild(archived)
    assert len(chain.entries) == 7
    assert read_manifest(archived.state_dir / "manifest.jsonl") == before
    ledger = Ledger(archived.state_dir / "ledger.sqlite3")
    assert len(ledger.unsealed()) == 0 and len(ledger.segments()) == 2
    ledger.close()
    objects_before = recording_keys(seaweed, bucket)
    api = sim.counters["api_requests"]
    report = await archive_calls(archived, sorted({e["call_sid"] for e in before}))
    # The rebuilt ledger knows the calls as archived (issue 13, item 8: it used to list them
    # "to archive" and then report them "archived", one API request each, having stored nothing).
    assert [r.outcome for r in report.results] == ["already_archived"] * 3
    assert sim.counters["recordings_served_ok"] == 4  # nothing downloaded again
    assert sim.counters["api_requests"] - api == 0
    assert recording_keys(seaweed, bucket) == objects_before


def test_verify_cli_exit_codes_and_report(
    archived: Settings, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    env = {
        "ARCHIVER_DESTINATION": archived.destination or "",
        "ARCHIVER_STATE_DIR": str(archived.state_dir),
        "ARCHIVER_CONFIG": "",
    }
    ok = CliRunner().invoke(main, ["verify"], env=env)
    assert ok.exit_code == 0, ok.output
    seaweed.client().delete_object(Bucket=bucket, Key=recording_keys(seaweed, bucket)[0])
    report = tmp_path / "verify.json"
    bad = CliRunner().invoke(main, ["verify", "--report", str(report)], env=env)
    assert bad.exit_code == 1 and "MISSING" in bad.output
    data = json.loads(report.read_text())
    assert data["ok"] is False and data["counts"]["missing"] == 1


async def test_sampling_checks_a_stable_subset(archived: Settings) -> None:
    a = await run_verify(archived, sample=0.5, seed="2026-11-22")
    b = await run_verify(archived, sample=0.5, seed="2026-11-22")
    c = await run_verify(archived, sample=0.5, seed="2026-11-23")
    keys = [{x.key for x in r.checks} for r in (a, b, c)]
    assert keys[0] == keys[1] and 0 < len(keys[0]) < 7
    assert keys[0] != keys[2] or len(keys[2]) != len(keys[0])


async def test_verify_reads_the_ledger_without_writing_to_it(archived: Settings) -> None:
    """Beside a running worker: the worker may be in the middle of a commit (write lock held)."""
    writer = sqlite3.connect(archived.state_dir / "ledger.sqlite3", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        result = await run_verify(archived)
        assert result.ok, result.as_dict()
        assert time.monotonic() - started < 4  # did not wait for the writer (busy timeout: 5 s)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_verify_beside_a_working_worker_reports_pending_seal(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon_module, "SEAL_IDLE", 3600.0)  # no seal meanwhile
    settings = daemon_settings(
        sim, server, tmp_path, env={"ARCHIVER_DESTINATION": f"s3://{bucket}/{PREFIX}"}
    )
    await archive_calls(settings, [sim.add_call().sid])  # sealed history: segment 1
    sim.add_call()  # found by the worker's first sweep
    daemon = make_daemon(settings)
    env = {
        "ARCHIVER_DESTINATION": settings.destination or "",
        "ARCHIVER_STATE_DIR": str(settings.state_dir),
        "ARCHIVER_CONFIG": "",
    }
    async with running(daemon):
        await until(lambda: daemon.metrics.calls["archived"] == 1)
        result = await run_verify(settings)
        assert result.ok, result.as_dict()
        assert result.count("ok") == 2 and result.count("pending_seal") == 2
        assert result.as_dict()["counts"]["pending_seal"] == 2  # type: ignore[index]
        cli = await asyncio.to_thread(CliRunner().invoke, main, ["verify"], env=env)
        assert cli.exit_code == 0, cli.output
        assert "pending seal: 2" in cli.output

        alone = await run_verify(dataclasses.replace(settings, state_dir=tmp_path / "none"))
        assert alone.count("unexpected") == 2 and not alone.ok  # without the ledger: unexpected

        # Recorded but not sealed is no excuse: the bytes are checked against the ledger's row.
        pending = sorted(c.key for c in result.checks if c.status == "pending_seal")
        [recording] = [k for k in pending if "/recording-" in k]
        [details] = [k for k in pending if k != recording]
        client = seaweed.client()
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{recording}", Body=b"ID3 not the same")
        altered = await run_verify(settings)
        found = {c.key: c.status for c in altered.checks}
        assert (found[recording], found[details]) == ("altered", "pending_seal")
        assert not altered.ok
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}/{recording}")
        missing = await run_verify(settings)
        assert {c.key: c.status for c in missing.checks}[recording] == "missing"
        assert not missing.ok


async def test_an_erasure_recorded_but_not_sealed_is_pending_seal(
    archived: Settings, seaweed: Any, bucket: str
) -> None:
    """`retention purge` while the worker holds the state directory: the object is gone, its
    receipt waits in the ledger for the worker's next seal."""
    ledger = Ledger(archived.state_dir / "ledger.sqlite3")
    victim = next(o for o in ledger.all_objects() if o.kind == "recording")
    seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{victim.key}")
    ledger.add_event(erasure_of(victim))
    ledger.close()
    result = await run_verify(archived)
    assert result.ok, result.as_dict()
    assert [(c.status, c.key) for c in result.checks if c.status != "ok"] == [
        ("pending_seal", victim.key)
    ]
    alone = await run_verify(dataclasses.replace(archived, state_dir=archived.state_dir / "x"))
    assert [(c.status, c.key) for c in alone.checks if c.status != "ok"] == [
        ("missing", victim.key)
    ]


def erasure_of(record: ObjectRecord) -> EventRecord:
    details = {"sha256": record.sha256, "size": record.size, "location": record.location}
    return EventRecord(
        kind="erasure",
        call_sid=record.call_sid,
        key=record.key,
        at="2026-12-01T00:00:00.000Z",
        actor="ops@host",
        details=json.dumps(details, sort_keys=True),
        version_id=record.version_id,
    )


async def test_what_the_worker_does_while_verify_runs_is_pending_seal(
    archived: Settings, seaweed: Any, bucket: str
) -> None:
    """An object archived and another one erased after verify has read the ledger."""
    writer = Ledger(archived.state_dir / "ledger.sqlite3")
    reader = Ledger(archived.state_dir / "ledger.sqlite3", readonly=True)
    sink = sink_for(archived)
    objects = writer.all_objects()
    victim = [o for o in objects if o.kind == "recording"][-1]
    late_key = "2026/01/01/CAlate/recording-1.mp3"
    data = b"ID3 archived while verify ran"
    client = seaweed.client()

    def meanwhile(check: ObjectCheck) -> None:
        if check.key != objects[0].key:
            return
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{late_key}", Body=data)
        writer.add_object(
            dataclasses.replace(
                objects[0],
                call_sid="CAlate",
                key=late_key,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}/{victim.key}")
        writer.add_event(erasure_of(victim))

    try:
        result = await verify(sink, reader, on_object=meanwhile)
    finally:
        writer.close()
        reader.close()
        await sink.close()
    assert result.ok, result.as_dict()
    assert sorted((c.status, c.key) for c in result.checks if c.status != "ok") == [
        ("pending_seal", late_key),
        ("pending_seal", victim.key),
    ]
