"""Crash safety: the worker SIGKILLed at random moments, restarted each time, until it completes.

The worker is a real subprocess (``python -m archiver backfill``) against the simulator over HTTP
and SeaweedFS. Kills are drawn from a seeded RNG (a fixed seed by default; the seed is in every
assertion message; set ``CRASH_SEED`` to replay one, ``CRASH_SEED=random`` to explore new ones)
and land in every phase: start-up and ledger open, the listing, downloads (a bandwidth cap,
recordings of several MiB), single and multipart uploads and their completion (5 MiB parts),
ledger commits, manifest appends and segment seals (a segment every 3 entries). After every kill
the invariants that must hold *at any moment* are checked; after the final clean run, the whole
archive is checked byte for byte.

The durability design underneath is tested on its own, each property with a process that dies
(SIGKILL) at a chosen point: the ledger's transactions (WAL, one transaction per state change),
the local sink's temp file + fsync + link (which is also how a segment reaches a local
destination), and the manifest file's torn-tail recovery.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver import segments
from archiver.exotel.models import IST
from archiver.identity import MARKER_KEY
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import decrypt, exotel_env, write_keys

PREFIX = "archive"
SEG_PREFIX = f"{PREFIX}/{segments.PREFIX}"
MARKER = f"{PREFIX}/{MARKER_KEY}"
KILLS = 22
BIG = 6 * 1024 * 1024  # over the 5 MiB part size: a two-part multipart upload
STATE_FILES = {"ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm", "manifest.jsonl"}


DEFAULT_SEED = 20261129
"""The seed of the default run (reproducible in CI); ``CRASH_SEED=random`` explores new ones."""


def _seed() -> int:
    chosen = os.environ.get("CRASH_SEED") or str(DEFAULT_SEED)
    return random.SystemRandom().randrange(1 << 32) if chosen == "random" else int(chosen)


def _objects(client: Any, bucket: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = item
    return found


def _get(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def _open_uploads(client: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _ledger_rows(state: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Object and segment rows of the ledger, read as a second process would (read-only)."""
    path = state / "ledger.sqlite3"
    if not path.exists():
        return [], []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "segments" not in tables:  # killed while the schema was being created
            return [], []
        objects = [dict(r) for r in db.execute("SELECT * FROM objects ORDER BY seq")]
        sealed = [dict(r) for r in db.execute("SELECT * FROM segments ORDER BY number")]
    finally:
        db.close()
    return objects, sealed


def check_invariants(
    client: Any, bucket: str, state: Path, why: str, *, full: bool = False
) -> Counter[str]:
    """What must hold at any moment, even right after a SIGKILL; returns the phase it found."""
    phases: Counter[str] = Counter()
    rows, sealed = _ledger_rows(state)
    stored = _objects(client, bucket)
    if not (state / "ledger.sqlite3").exists():
        phases["before the ledger existed"] += 1
    # Nothing recorded without its bytes: every ledger row's object is there, same size and hash.
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), f"{why}: a key recorded twice"
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), f"{why}: seq has gaps"
    for row in rows:
        full_key = f"{PREFIX}/{row['key']}"
        assert full_key in stored, f"{why}: {row['key']} is in the ledger, not in the bucket"
        assert stored[full_key]["Size"] == row["size"], f"{why}: {row['key']} size differs"
        if full or row["size"] < 64 * 1024:
            data = _get(client, bucket, full_key)
            assert hashlib.sha256(data).hexdigest() == row["sha256"], f"{why}: {row['key']} bytes"
    data_keys = {k for k in stored if not k.startswith(SEG_PREFIX) and k != MARKER}
    if data_keys - {f"{PREFIX}/{k}" for k in keys}:
        phases["stored, not yet in the ledger"] += 1
    # The manifest file: a prefix of the ledger, line for line, no entry twice.
    manifest = read_manifest(state / "manifest.jsonl")
    assert [e["seq"] for e in manifest] == list(range(1, len(manifest) + 1)), f"{why}: manifest"
    assert len(manifest) <= len(rows), f"{why}: a manifest line the ledger does not have"
    for line, row in zip(manifest, rows, strict=False):
        assert (line["key"], line["sha256"], line["size"]) == (
            row["key"],
            row["sha256"],
            row["size"],
        ), f"{why}: manifest line {line['seq']} is not the ledger's row"
    if len(manifest) < len(rows):
        phases["in the ledger, manifest line not yet written"] += 1
    if (
        (state / "manifest.jsonl").exists()
        and not (state / "manifest.jsonl").read_bytes().endswith(b"\n")
        and (state / "manifest.jsonl").stat().st_size
    ):
        phases["torn manifest line"] += 1
    # Segments in the bucket: every one complete and chained; every sealed one is there as sealed.
    seg_keys = sorted(k for k in stored if k.startswith(SEG_PREFIX))
    prev = None
    for number, key in enumerate(seg_keys, start=1):
        assert key == f"{PREFIX}/{segments.segment_key(number)}", f"{why}: segment gap at {key}"
        parsed = segments.parse(_get(client, bucket, key))  # a partial segment fails here
        assert parsed.header["number"] == number and parsed.header["prev_sha256"] == prev, why
        prev = parsed.sha256
        by_seq = {r["seq"]: r for r in rows}
        for e in parsed.entries:  # a sealed entry is a ledger row, unless the ledger lost it
            if e["seq"] in by_seq:
                assert by_seq[e["seq"]]["sha256"] == e["sha256"], f"{why}: {key} seq {e['seq']}"
    assert len(sealed) <= len(seg_keys), f"{why}: a sealed segment missing from the bucket"
    for seg in sealed:
        data = _get(client, bucket, f"{PREFIX}/{seg['key']}")
        assert hashlib.sha256(data).hexdigest() == seg["sha256"], f"{why}: {seg['key']} differs"
    if len(seg_keys) > len(sealed):
        phases["segment stored, not yet in the ledger"] += 1
    if rows and any(r["segment"] is None for r in rows):
        phases["entries waiting to be sealed"] += 1
    if _open_uploads(client, bucket):
        phases["multipart upload open"] += 1
    return phases


@pytest.fixture
def workload(sim: Simulator) -> tuple[date, date, list[Any]]:
    """Four days of calls: ~100 recordings of 100-600 kB and five of 6 MiB (multipart)."""
    until = datetime.now(IST).date() - timedelta(days=2)
    since = until - timedelta(days=3)
    calls: list[Any] = []
    for n in range(4):
        calls += sim.populate(30, day=since + timedelta(days=n), sizes=(100_000, 600_000))
    for n in range(5):
        created = datetime(since.year, since.month, since.day, 10 + n, tzinfo=IST)
        calls.append(sim.add_call(recordings=[BIG], created=created + timedelta(days=n % 4)))
    return since, until, calls


@pytest.mark.parametrize("lane", ["v3", "rescue", "v3-encrypted"])
def test_sigkilled_at_random_moments_then_restarted_archives_everything_exactly_once(
    lane: str,
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
    workload: tuple[date, date, list[Any]],
) -> None:
    seed = _seed()
    rng = random.Random(seed)
    since, until, calls = workload
    with_audio = [c for c in calls if c.recordings]
    state = tmp_path / "state"
    env = {
        **os.environ,
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", state),
        "ARCHIVER_PART_SIZE": "5",  # the minimum: S3 wants 5 MiB parts (but the last)
        "ARCHIVER_SEGMENT_ENTRIES": "3",  # seal often: kills land in seals
        "ARCHIVER_CONCURRENCY": "2",
        "ARCHIVER_LOG_FORMAT": "json",
        # The rescue lane (issue 18): kills land in rescues and in enrichments too.
        "ARCHIVER_RESCUE": "on" if lane == "rescue" else "off",
    }
    private_key = None
    if lane.endswith("encrypted"):  # issue 19: kills land in sealing, intents, adoptions
        public_key, private_key = write_keys(tmp_path)
        env["ARCHIVER_ENCRYPT_TO"] = str(public_key)
    args = [sys.executable, "-m", "archiver", "backfill", "--since", str(since)]
    args += ["--until", str(until)]
    # 2 MB/s per download: a clean run takes ~15 s, a 6 MiB recording alone ~3 s.
    sim.faults.bandwidth = 2_000_000
    client = seaweed.client()
    phases: Counter[str] = Counter()
    delays: list[float] = []
    progress: list[int] = []  # ledger rows after each kill
    finished_early = 0
    logs = tmp_path / "logs"
    logs.mkdir()
    for n in range(KILLS):
        # A fifth very early (interpreter start-up, ledger open, listing), half a few seconds
        # in (small recordings, seals), the rest long enough for a 6 MiB download to finish
        # and its multipart upload to start (start-up takes ~1 s).
        roll = rng.random()
        if roll < 0.2:
            delay = rng.uniform(0.0, 0.8)
        elif roll < 0.7:
            delay = rng.uniform(0.8, 4.0)
        else:
            delay = rng.uniform(4.0, 8.0)
        delays.append(round(delay, 2))
        with (logs / f"run-{n}.err").open("wb") as err:
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
            try:
                proc.wait(timeout=delay)
                finished_early += 1
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
        why = f"after kill {n + 1} at {delay:.2f}s (CRASH_SEED={seed})"
        if proc.returncode not in (-signal.SIGKILL, 0):
            pytest.fail(f"{why}: exited {proc.returncode}: {(logs / f'run-{n}.err').read_text()}")
        phases += check_invariants(client, bucket, state, why)
        progress.append(len(_ledger_rows(state)[0]))
    context = (
        f"CRASH_SEED={seed}, delays {delays}, ledger rows {progress}, finished before the kill "
        f"{finished_early}, phases seen {dict(phases)}"
    )
    print(context)

    report = tmp_path / "final.json"
    final = subprocess.run([*args, "--report", str(report)], env=env, capture_output=True)
    assert final.returncode == 0, f"{context}: {final.stderr.decode()[-3000:]}"
    assert b"Traceback" not in final.stderr, context
    summary = json.loads(report.read_text())
    plan, counts = summary["plan"], summary["result"]["counts"]
    assert counts["failed"] == counts["not_ready"] == 0, f"{context}: {counts}"
    assert counts["already_archived"] + counts["archived"] == len(with_audio), f"{context}: {plan}"

    # Exactly the expected objects, byte for byte the simulator's source bytes; nothing else.
    expected: dict[str, bytes] = {}
    for call in with_audio:
        folder = f"{PREFIX}/{call.created.astimezone(IST):%Y/%m/%d}/{call.sid}"
        for index in range(1, len(call.recordings) + 1):
            expected[f"{folder}/recording-{index}.mp3"] = sim.recording_bytes(call.sid, index)
        expected[f"{folder}/call.json"] = b""
        if lane == "rescue":
            expected[f"{folder}/call-v1.json"] = b""
    stored = _objects(client, bucket)
    data_keys = {k for k in stored if not k.startswith(SEG_PREFIX) and k != MARKER}
    assert data_keys == set(expected), f"{context}: {sorted(data_keys ^ set(expected))[:5]}"
    assert MARKER in stored, f"{context}: the destination's identity marker is not there"
    for key, source in expected.items():
        data = _get(client, bucket, key)
        if "/recording-" in key:
            if private_key is not None:
                data = decrypt(private_key, data)
            assert hashlib.sha256(data).digest() == hashlib.sha256(source).digest(), (
                f"{context}: {key} is not the source's bytes"
            )
        else:  # call.json (call-v1.json): the details (the v1 item) as received, of this call
            assert key.split("/")[-2].encode() in data and json.loads(data), context
            assert b"X-Amz-Signature" not in data, f"{context}: {key} keeps a signature"
    # Ledger = manifest = sealed segments = the bucket; every object once.
    phases_after = check_invariants(client, bucket, state, f"final ({context})", full=True)
    rows, sealed = _ledger_rows(state)
    assert sorted(f"{PREFIX}/{r['key']}" for r in rows) == sorted(expected), context
    manifest = read_manifest(state / "manifest.jsonl")
    assert [(e["key"], e["sha256"]) for e in manifest] == [(r["key"], r["sha256"]) for r in rows]
    for e in manifest:  # encrypted: both hashes, the plaintext's the source's
        if private_key is not None and "/recording-" in e["key"]:
            call_sid, name = e["key"].split("/")[-2:]
            source = sim.recording_bytes(call_sid, int(name.split("-")[1].split(".")[0]))
            assert e["plaintext_sha256"] == hashlib.sha256(source).hexdigest(), context
            assert e["encrypted_to"] and e["sha256"] != e["plaintext_sha256"], context
    in_segments = [
        e["key"]
        for k in sorted(k for k in stored if k.startswith(SEG_PREFIX))
        for e in segments.parse(_get(client, bucket, k)).entries
    ]
    assert sorted(in_segments) == sorted(r["key"] for r in rows), f"{context}: segments"
    assert len(sealed) == len([k for k in stored if k.startswith(SEG_PREFIX)]), context
    assert phases_after == Counter(), f"{context}: {phases_after}"  # nothing half-done
    # No multipart upload left open: a killed one is aborted by the run that uploads its key.
    assert _open_uploads(client, bucket) == [], context
    # No temp or spool file left in the state directory.
    leftovers = sorted(
        str(p.relative_to(state))
        for p in state.rglob("*")
        if p.is_file()
        and p.name not in STATE_FILES | {"writer.lock"}
        and not p.name.startswith("backfill-")
    )
    assert leftovers == [], f"{context}: {leftovers}"
    assert list((state / "spool").iterdir()) == [], context

    verified = subprocess.run(
        [sys.executable, "-m", "archiver", "verify"], env=env, capture_output=True, timeout=300
    )
    assert verified.returncode == 0, f"{context}: {verified.stdout.decode()[-3000:]}"
    for err in logs.iterdir():  # no traceback, no secret in any killed run's log
        text = err.read_text()
        assert "Traceback" not in text, f"{context}: {err.name}: {text[-2000:]}"
        for secret in (sim.api_token, "X-Amz-Signature", seaweed.secret_key):
            assert secret not in text, f"{context}: {err.name} leaks a secret"


# --- the durability design, property by property ----------------------------------------------

_RECORD = """
from archiver.ledger import Ledger, ObjectRecord

def record(n, source="https://recordings.example/x.mp3"):
    return ObjectRecord(
        call_sid=f"CA{n}", kind="recording", idx=1, key=f"2026/01/01/CA{n}/recording-1.mp3",
        location="here", size=n, sha256=f"{n:064x}", content_type="audio/mpeg", format="mp3",
        source=source, call_created="2026-01-01T10:00:00+05:30",
        archived_at="2026-01-02T00:00:00Z", worker="test",
    )
"""


def run_script(body: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run a test-only script (importing archiver modules) in a fresh interpreter."""
    code = _RECORD + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, timeout=timeout, check=False
    )


def test_the_ledger_is_in_wal_mode_with_full_fsync(tmp_path: Path) -> None:
    from archiver.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        assert ledger._db.execute("PRAGMA journal_mode").rows[0][0] == "wal"
        assert ledger._db.execute("PRAGMA synchronous").rows[0][0] == 2  # FULL
    finally:
        ledger.close()
    header = (tmp_path / "ledger.sqlite3").read_bytes()[:20]
    assert header[18] == header[19] == 2  # WAL, persisted in the file itself


@pytest.mark.parametrize(
    "method, statement",
    [
        ("save_listing", "INSERT OR REPLACE INTO listings"),  # after every listed call's row
        ("add_segment", "UPDATE events"),  # after the segment row and the objects' marks
        ("set_call", "INSERT INTO calls"),  # inside the statement's own transaction
    ],
)
def test_a_ledger_change_killed_halfway_leaves_the_old_state(
    tmp_path: Path, method: str, statement: str
) -> None:
    """SIGKILL inside a multi-statement state change: after reopening, none of it is there."""
    path = tmp_path / "ledger.sqlite3"
    died = run_script(
        """
        import os, signal, sys
        from archiver.ledger import SegmentRecord
        ledger = Ledger(__import__("pathlib").Path(sys.argv[1]))
        for n in range(1, 4):
            ledger.add_object(record(n))
        ledger.set_call("CA1", "failed", detail="before")
        method, statement = sys.argv[2], sys.argv[3]

        def die(sql):
            if sql.startswith(statement):
                os.kill(os.getpid(), signal.SIGKILL)

        ledger._db._connection.set_trace_callback(die)
        if method == "save_listing":
            ledger.save_listing("r", [(f"CA{n}", "2026-01-01", True) for n in range(50)],
                                began=__import__("datetime").datetime.now().astimezone())
        elif method == "add_segment":
            ledger.add_segment(SegmentRecord(1, "_manifest/segments/00000001.jsonl", "a" * 64,
                                             None, 1, 3))
        else:
            ledger.set_call("CA1", "archived", recordings=1)
        """,
        str(path),
        method,
        statement,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr.decode()
    from archiver.ledger import Ledger

    ledger = Ledger(path)
    try:
        assert len(ledger.all_objects()) == 3  # the committed changes survived the kill
        assert ledger.listing("r") is None
        assert ledger._read.execute("SELECT COUNT(*) FROM listed_calls").rows[0][0] == 0
        assert ledger.segments() == [] and ledger.unsealed_count() == 3
        assert ledger.call_outcome("CA1") == "failed"
    finally:
        ledger.close()


def test_a_segment_written_to_a_local_destination_killed_halfway_leaves_no_segment(
    tmp_path: Path,
) -> None:
    """The local sink's temp file + fsync + link: a half-written segment never has its name."""
    import asyncio

    from archiver.ledger import Ledger
    from archiver.sinks.local import LocalSink

    state, root = tmp_path / "state", tmp_path / "dest"
    made = run_script(
        """
        import sys
        from pathlib import Path
        ledger = Ledger(Path(sys.argv[1]))
        for n in range(1, 301):  # about 30 MB of segment: written in 1 MiB chunks
            ledger.add_object(record(n, source="https://r.example/" + "x" * 100_000))
        ledger.close()
        """,
        str(state / "ledger.sqlite3"),
    )
    assert made.returncode == 0, made.stderr.decode()
    ledger = Ledger(state / "ledger.sqlite3")
    expected = segments.render(1, None, ledger.unsealed())
    ledger.close()
    seal_code = _RECORD + textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path
        from archiver.segments import seal
        from archiver.sinks.local import LocalSink
        ledger = Ledger(Path(sys.argv[1]))
        asyncio.run(seal(ledger, LocalSink(Path(sys.argv[2]))))
        """
    )
    folder = root / "_manifest" / "segments"
    final = folder / "00000001.jsonl"
    caught = None
    for _attempt in range(5):  # kill it while the temp file is part-written
        proc = subprocess.Popen(
            [sys.executable, "-c", seal_code, str(state / "ledger.sqlite3"), str(root)],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            temps = [*folder.glob(".*.part-*"), final] if folder.exists() else []
            sizes = [t.stat().st_size for t in temps if t.exists()]
            if any(0 < s < len(expected) for s in sizes):
                proc.send_signal(signal.SIGKILL)
                caught = max(sizes)
                break
            time.sleep(0.001)
        proc.wait(timeout=30)
        if caught is not None and proc.returncode == -signal.SIGKILL:
            break
        caught = None
        final.unlink(missing_ok=True)  # missed the window: start again
    assert caught is not None, "never caught the segment half-written"
    # Killed with `caught` of len(expected) bytes written: nothing at the segment's name.
    assert not final.exists(), f"a partial segment ({final.stat().st_size} bytes) is in place"
    listed = asyncio.run(_list(LocalSink(root)))
    assert listed == [], listed
    ledger = Ledger(state / "ledger.sqlite3")
    try:
        assert ledger.segments() == []  # nothing recorded as sealed
        from archiver.segments import seal

        asyncio.run(seal(ledger, LocalSink(root)))  # the next run seals it, whole
        assert final.read_bytes() == expected
        assert [s.sha256 for s in ledger.segments()] == [hashlib.sha256(expected).hexdigest()]
    finally:
        ledger.close()
    assert list(folder.glob(".*.part-*")) == []  # the killed writer's temp file is gone too


async def _list(sink: Any) -> list[str]:
    return [info.key async for info in sink.list()]
