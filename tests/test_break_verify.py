"""Breaking verify, seal, backfill and reconcile as landed (h-break2): each test failed on the
code it was written against, with real parts (SeaweedFS, the Exotel simulator over HTTP)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver import verify as verify_module
from archiver.archive import archive_calls, sink_for
from archiver.chain import load_chain
from archiver.config import Settings, load_settings
from archiver.ledger import Ledger, ObjectRecord
from archiver.recorder import Recorder
from archiver.segments import seal
from archiver.simulator import Simulator, SimulatorServer
from archiver.verify import run_verify
from tests.support import exotel_env

PREFIX = "b"


async def _archived(
    sim: Simulator, server: SimulatorServer, bucket: str, tmp_path: Path
) -> Settings:
    settings = load_settings(
        env=exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state")
    )
    await archive_calls(settings, [sim.add_call(recordings=2).sid, sim.add_call().sid])
    return settings


def _add_rows(settings: Settings, n: int) -> None:
    """``n`` more object rows, as a worker that archived ``n`` more objects records them."""
    db = sqlite3.connect(settings.state_dir / "ledger.sqlite3")
    db.row_factory = sqlite3.Row
    with db:
        template = dict(db.execute("SELECT * FROM objects WHERE kind = 'recording'").fetchone())
        start = db.execute("SELECT MAX(seq) FROM objects").fetchone()[0]
        rows = []
        for i in range(1, n + 1):
            sid = f"CAbulk{start + i:08d}"
            rows.append(
                {
                    **template,
                    "seq": start + i,
                    "call_sid": sid,
                    "key": f"2026/01/01/{sid}/recording-1.mp3",
                    "segment": None,
                }
            )
        columns = list(template)
        db.executemany(
            f"INSERT INTO objects ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(r[c] for c in columns) for r in rows],
        )
    db.close()


async def _load_chain_seconds(
    sim: Simulator, server: SimulatorServer, bucket: str, tmp_path: Path, rows: int
) -> float:
    """The time ``load_chain`` takes, with the ledger, on an archive of ``rows`` more entries
    (the best of two runs)."""
    settings = await _archived(sim, server, bucket, tmp_path)
    _add_rows(settings, rows)
    writer = Ledger(settings.state_dir / "ledger.sqlite3")
    sink = sink_for(settings)
    reader = Ledger(settings.state_dir / "ledger.sqlite3", readonly=True)
    try:
        await seal(writer, sink)
        times = []
        for _ in range(2):
            started = time.perf_counter()
            chain = await load_chain(sink, reader)
            times.append(time.perf_counter() - started)
    finally:
        writer.close()
        reader.close()
        await sink.close()
    assert not chain.problems, chain.problems[:3]
    assert len(chain.checked) == rows + 5
    return min(times)


async def test_verify_with_the_ledger_is_not_quadratic_in_the_entries(
    sim: Simulator, server: SimulatorServer, s3_env: None, seaweed: Any, tmp_path: Path
) -> None:
    """Severity: high (verify on a year's archive never ends). 15 000 entries took 16 s in
    ``_compare`` alone (``vouched | was_sealed`` rebuilt for every row); linear it takes ~1 s.

    A ratio measured in the same run, not a time limit (the machines are shared): four times
    the entries must take well under sixteen times as long (linear: about four times)."""
    times = []
    for n, rows in ((1, 2000), (2, 8000)):
        bucket = f"quadratic-{n}-{time.time_ns() % 10**9}"
        seaweed.client().create_bucket(Bucket=bucket)
        times.append(await _load_chain_seconds(sim, server, bucket, tmp_path / str(n), rows))
    small, large = times
    assert large < 9 * small + 0.5, f"2 000 entries: {small:.2f} s, 8 000: {large:.2f} s"


async def test_verify_while_an_object_is_stored_but_not_yet_recorded(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Severity: medium (false alarm). The recorder PUTs (and confirms: a HEAD, or a whole
    read-back in md5 mode) before it commits the row; a verify listing in between named the
    worker's new recording ``unexpected`` and exited 1 on a healthy archive. The commit is only
    held back here (the real store and the real archiver do the rest)."""
    settings = await _archived(sim, server, bucket, tmp_path)
    stored, release = threading.Event(), threading.Event()
    record = Recorder._record

    def slow_commit(self: Recorder, row: ObjectRecord) -> ObjectRecord:
        if row.kind == "recording":
            stored.set()
            release.wait(30)
        return record(self, row)

    monkeypatch.setattr(Recorder, "_record", slow_commit)
    monkeypatch.setattr(verify_module, "LATE_GRACE", 15.0, raising=False)
    work = asyncio.create_task(archive_calls(settings, [sim.add_call().sid]))
    try:
        assert await asyncio.to_thread(stored.wait, 30)  # in the bucket, not in the ledger
        asyncio.get_running_loop().call_later(1.0, release.set)  # the commit lands 1 s later
        result = await run_verify(settings)
    finally:
        release.set()
        assert (await work).count("archived") == 1
    assert result.ok, result.as_dict()
    assert result.count("unexpected") == 0
    assert (await run_verify(settings)).ok


async def test_verify_while_purge_has_deleted_but_not_yet_recorded_the_receipt(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Severity: medium (false alarm). ``retention purge`` deletes every version, then records
    the receipt; a verify in between named the erased recording ``missing`` (exit 1)."""
    from archiver.retention.archive import RetentionArchive, open_retention
    from archiver.retention.jobs import purge
    from tests.test_retention import settings_for

    bucket = f"lock-b-{time.time_ns()}"
    seaweed.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    expired = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    settings = settings_for(sim, server, tmp_path, bucket)
    await archive_calls(settings, [expired.sid])
    deleted, release = threading.Event(), threading.Event()
    record = RetentionArchive.record

    def slow_record(self: RetentionArchive, kind: str, item: Any, **details: Any) -> Any:
        if kind == "erasure":
            deleted.set()
            release.wait(30)
        return record(self, kind, item, **details)

    monkeypatch.setattr(RetentionArchive, "record", slow_record)
    monkeypatch.setattr(verify_module, "LATE_GRACE", 15.0, raising=False)

    async def job() -> Any:
        async with open_retention(settings, actor="dpo@example") as archive:
            return await purge(archive, dry_run=False)

    work = asyncio.create_task(asyncio.to_thread(asyncio.run, job()))
    try:
        assert await asyncio.to_thread(deleted.wait, 30)  # gone from the bucket, no receipt yet
        asyncio.get_running_loop().call_later(1.0, release.set)
        result = await run_verify(settings)
    finally:
        release.set()
        done = await work
    assert not done.failures
    assert result.ok, result.as_dict()
    assert result.count("missing") == 0
    assert (await run_verify(settings)).ok
