"""Breaking verify, seal, backfill and reconcile as landed (h-break2): each test failed on the
code it was written against, with real parts (SeaweedFS, the Exotel simulator over HTTP)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from archiver.archive import archive_calls, sink_for
from archiver.config import Settings, load_settings
from archiver.ledger import Ledger
from archiver.segments import seal
from archiver.simulator import Simulator, SimulatorServer
from archiver.verify import load_chain
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


async def test_verify_with_the_ledger_is_not_quadratic_in_the_entries(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    """Severity: high (verify on a year's archive never ends). 15 000 entries took 16 s in
    ``_compare`` alone (``vouched | was_sealed`` rebuilt for every row); linear it takes ~1 s."""
    settings = await _archived(sim, server, bucket, tmp_path)
    _add_rows(settings, 15000)
    writer = Ledger(settings.state_dir / "ledger.sqlite3")
    sink = sink_for(settings)
    reader = Ledger(settings.state_dir / "ledger.sqlite3", readonly=True)
    try:
        await seal(writer, sink)
        started = time.perf_counter()
        chain = await load_chain(sink, reader)
        took = time.perf_counter() - started
    finally:
        writer.close()
        reader.close()
        await sink.close()
    assert not chain.problems, chain.problems[:3]
    assert len(chain.checked) == 15005
    assert took < 6, f"load_chain took {took:.1f} s for 15 005 entries"
