"""Group commit: the ledger's writes from the event loop go to one writer thread, which commits
every row that arrived while the last commit ran in one transaction (one fsync).

The promises it keeps, each shown with real SQLite (and a real destination): ``Recorder.store``
returns only once its row is committed and its manifest line appended; the manifest lines stay
in seq order, matching the ledger; many concurrent stores take fewer transactions than rows; a
write that fails inside a batch fails alone, and a transaction that cannot be committed fails
the waiters of that batch only, none of them recorded; a worker SIGKILLed at a random moment
leaves ledger, manifest and bucket consistent, and a re-run completes and verifies.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from archiver.exotel.models import IST, CallDetails, CallState
from archiver.ledger import Ledger, ObjectRecord
from archiver.manifest import ManifestWriter, read_manifest
from archiver.recorder import Recorder
from archiver.simulator import Simulator, SimulatorServer
from archiver.sinks.local import LocalSink
from tests.seaweed import SeaweedFS
from tests.support import exotel_env
from tests.test_crash import PREFIX, check_invariants


def details(sid: str) -> CallDetails:
    return CallDetails(
        sid=sid,
        direction="inbound",
        virtual_number=None,
        state=CallState.TERMINAL,
        status=None,
        legs=None,
        created_time=datetime(2026, 11, 1, 10, 0, tzinfo=IST),
        updated_time=None,
        start_time=None,
        end_time=None,
        total_duration=None,
        total_talk_time=None,
        custom_field=None,
        app_id=None,
        app_name=None,
        digits=None,
        recordings=None,
    )


def recorder(tmp_path: Path) -> tuple[Recorder, Ledger]:
    state = tmp_path / "state"
    state.mkdir()
    ledger = Ledger(state / "ledger.sqlite3")
    manifest = ManifestWriter(state / "manifest.jsonl")
    sink = LocalSink(tmp_path / "archive")
    return Recorder(sink, ledger, manifest, "test-worker", segment_size=10_000), ledger


async def store(rec: Recorder, n: int) -> int:
    sid = f"call{n:06d}"
    record = await rec.store_bytes(
        details(sid),
        kind="call_details",
        key=f"calls/{sid}/call.json",
        data=b'{"n": %d}' % n,
        source="test",
    )
    # Returned only once committed and in the manifest: a second reader sees both now.
    assert record.seq is not None
    other = sqlite3.connect(rec.ledger.path)
    try:
        found = other.execute("SELECT key FROM objects WHERE seq = ?", (record.seq,)).fetchone()
    finally:
        other.close()
    assert found == (record.key,)
    assert record.seq in {e["seq"] for e in read_manifest(rec.manifest.path)}
    return record.seq


def test_concurrent_stores_are_all_committed_in_fewer_transactions_in_seq_order(
    tmp_path: Path,
) -> None:
    rec, ledger = recorder(tmp_path)
    before = ledger.commits

    async def main() -> list[int]:
        return list(await asyncio.gather(*(store(rec, n) for n in range(200))))

    seqs = asyncio.run(main())
    assert sorted(seqs) == list(range(1, 201))
    rows = ledger.all_objects()
    assert len(rows) == 200
    lines = read_manifest(tmp_path / "state" / "manifest.jsonl")
    assert [e["seq"] for e in lines] == list(range(1, 201))
    assert [(e["key"], e["sha256"]) for e in lines] == [(r.key, r.sha256) for r in rows]
    for row in rows:  # every row's object is in the destination, with its bytes
        data = (tmp_path / "archive" / row.key).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256
    transactions = ledger.commits - before
    assert 0 < transactions < 200, f"{transactions} transactions for 200 rows"
    ledger.close()


def test_a_failing_write_fails_alone_and_a_failed_commit_fails_only_its_batch(
    tmp_path: Path,
) -> None:
    rec, ledger = recorder(tmp_path)
    blocker = sqlite3.connect(ledger.path, isolation_level=None)

    async def main() -> list[str]:
        # A write that fails inside a batch (a UNIQUE conflict: the same call, kind and index
        # under another key) is rolled back alone; the others of its batch are committed.
        first = rec.store_bytes(
            details("callA"), kind="legs", key="a/legs.json", data=b"{}", source="t"
        )
        clash = rec.store_bytes(
            details("callA"), kind="legs", key="a/legs-2.json", data=b"[]", source="t"
        )
        third = rec.store_bytes(
            details("callB"), kind="legs", key="b/legs.json", data=b"{}", source="t"
        )
        got = await asyncio.gather(first, clash, third, return_exceptions=True)
        errors = [g for g in got if isinstance(g, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], sqlite3.IntegrityError), got
        assert isinstance(got[2], ObjectRecord), got
        kept = sorted(r.key for r in got if isinstance(r, ObjectRecord))
        assert sorted(r.key for r in ledger.all_objects()) == kept
        # Another connection holds the write lock: this batch cannot begin nor commit (SQLite's
        # "database is locked" after its busy timeout): each of its waiters gets the error...
        blocker.execute("BEGIN IMMEDIATE")
        try:
            failed = await asyncio.gather(
                *(store(rec, n) for n in range(5)), return_exceptions=True
            )
        finally:
            blocker.execute("ROLLBACK")
        assert all(isinstance(f, sqlite3.OperationalError) for f in failed), failed
        # ...and none is recorded; the next batch is.
        assert sorted(r.key for r in ledger.all_objects()) == kept
        assert await store(rec, 9) == 3
        return kept

    kept = asyncio.run(main())
    lines = read_manifest(tmp_path / "state" / "manifest.jsonl")
    assert [e["seq"] for e in lines] == [1, 2, 3]
    assert sorted(e["key"] for e in lines[:2]) == kept
    assert lines[2]["key"] == "calls/call000009/call.json"
    assert [(e["key"], e["sha256"]) for e in lines] == [
        (r.key, r.sha256) for r in ledger.all_objects()
    ]
    blocker.close()
    ledger.close()


def test_sigkilled_backfill_at_concurrency_leaves_ledger_manifest_and_bucket_consistent(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CRASH_SEED") or 20261212)
    rng = random.Random(seed)
    day = datetime.now(IST).date() - timedelta(days=2)
    calls = sim.populate(120, day=day, sizes=(20_000, 60_000))
    state = tmp_path / "state"
    env = {
        **os.environ,
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", state),
        "ARCHIVER_CONCURRENCY": "16",  # many stores in flight: batches of several rows
        "ARCHIVER_SEGMENT_ENTRIES": "7",
        "ARCHIVER_LOG_FORMAT": "json",
    }
    args = [sys.executable, "-m", "archiver", "backfill", "--since", str(day), "--until", str(day)]
    client = seaweed.client()
    for n in range(6):
        delay = rng.uniform(1.0, 3.5)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGKILL), f"run {n} (seed {seed})"
        check_invariants(client, bucket, state, f"after kill {n + 1} at {delay:.2f}s ({seed})")
    final = subprocess.run(args, env=env, capture_output=True)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    check_invariants(client, bucket, state, f"final ({seed})", full=True)
    verify = subprocess.run(
        [sys.executable, "-m", "archiver", "verify"], env=env, capture_output=True
    )
    assert verify.returncode == 0, verify.stdout.decode()[-2000:] + verify.stderr.decode()
    rows = sqlite3.connect(state / "ledger.sqlite3").execute("SELECT key FROM objects").fetchall()
    recorded: set[Any] = {r[0] for r in rows}
    recordings = sum(len(c.recordings or ()) for c in calls)
    assert len([k for k in recorded if "/recording-" in k]) == recordings
