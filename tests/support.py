"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from archiver.archive import archive_calls
from archiver.config import Settings, load_settings
from archiver.simulator import Simulator


def exotel_env(sim: Simulator, base_url: str, destination: str, state: Path) -> dict[str, str]:
    """The environment that points the archiver at ``sim`` and a destination."""
    return {
        "EXOTEL_ACCOUNT_SID": sim.account_sid,
        "EXOTEL_API_KEY": sim.api_key,
        "EXOTEL_API_TOKEN": sim.api_token,
        "EXOTEL_API_URL": base_url,
        "EXOTEL_V1_API_URL": base_url,
        "ARCHIVER_DESTINATION": destination,
        "ARCHIVER_STATE_DIR": str(state),
        "ARCHIVER_CONFIG": "",
    }


async def archive_in_two_runs(
    sim: Simulator, base_url: str, destination: str, tmp_path: Path
) -> Settings:
    """Three calls (one with two recordings) archived in two runs into ``destination``: two
    manifest segments: seq 1-5 (3 recordings, 2 call.json) and seq 6-7."""
    settings = load_settings(env=exotel_env(sim, base_url, destination, tmp_path / "state"))
    await archive_calls(settings, [sim.add_call(recordings=2).sid, sim.add_call().sid])
    await archive_calls(settings, [sim.add_call().sid])
    return settings


def add_bulk_objects(
    state_dir: Path, root: Path, count: int, *, call_sid: str | None = None
) -> list[str]:
    """``count`` small files in the local destination ``root``, recorded in the ledger of
    ``state_dir`` as the archive records objects: bound to the class ``general``, their
    retain-until date long past. One call each, or all recordings of ``call_sid``. In one
    transaction: setup for the memory tests and the benchmark, not archiving. Their keys."""
    body = b"hello"
    digest = hashlib.sha256(body).hexdigest()
    db = sqlite3.connect(state_dir / "ledger.sqlite3")
    try:
        (start,) = db.execute(
            "SELECT MAX(m) FROM (SELECT MAX(seq) AS m FROM objects "
            "UNION SELECT MAX(seq) FROM events)"
        ).fetchone()
        rows, keys = [], []
        for n in range(count):
            sid, idx = (call_sid, n + 1) if call_sid else (f"bulk{n:08d}", 1)
            key = f"2026/09/01/{sid}/recording-{idx}.mp3"
            path = root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            keys.append(key)
            rows.append(
                (start + n + 1, sid, "recording", idx, key, str(path), len(body), digest,
                 "audio/mpeg", "mp3", f"https://recordings.example/{sid}-{idx}.mp3",
                 "2026-09-01T10:00:00+05:30", "2026-09-01T05:00:00.000Z", "bulk", "general",
                 "2026-10-01T04:30:00Z")
            )  # fmt: skip
        db.executemany(
            "INSERT INTO objects (seq, call_sid, kind, idx, key, location, size, sha256, "
            "content_type, format, source, call_created, archived_at, worker, retention_class, "
            "retain_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.commit()
    finally:
        db.close()
    return keys
