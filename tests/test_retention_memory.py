"""Retention jobs run in bounded memory, however many objects the archive holds.

The same jobs (plan, audit, a purge dry run and a purge, each naming every object in its
report, the purge recording and sealing a receipt for each) run over
an archive of N and of 10·N objects; the Python heap's peak (tracemalloc: deterministic, unlike
RSS on a shared machine) must not grow with N. The benchmark (figure 7) measures peak RSS at
100 000 objects.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from archiver.archive import archive_calls
from archiver.config import load_settings
from archiver.retention.archive import open_retention
from archiver.retention.audit import audit
from archiver.retention.jobs import plan, purge
from archiver.simulator import Simulator, SimulatorServer
from tests.support import GENERAL_30D, add_bulk_objects, exotel_env

RULES = GENERAL_30D


async def peak_of_jobs(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, count: int
) -> tuple[int, int]:
    root = tmp_path / "archive"
    tmp_path.mkdir()
    config = tmp_path / "archiver.toml"
    config.write_text(RULES)
    # Segments of at most 100 entries, so that both sizes seal as they go (sealing builds a
    # segment in memory: bounded by the segment size, not by the archive).
    env = {
        **exotel_env(sim, server.base_url, str(root), tmp_path / "state"),
        "ARCHIVER_SEGMENT_ENTRIES": "100",
    }
    settings = load_settings(env=env, config_file=config)
    await archive_calls(settings, [sim.add_call(recordings=1, size=2000).sid])
    add_bulk_objects(settings.state_dir, root, count)
    await archive_calls(settings, [])  # seals them, as if they had been archived one by one
    gc.collect()  # what earlier tests left is not this job's
    tracemalloc.start()
    try:
        async with open_retention(settings) as archive:
            planned = await plan(archive, days=30)
            found = await audit(archive)
            dry = await purge(archive, dry_run=True)
            done = await purge(archive, dry_run=False)  # a receipt each, sealed as it goes
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Each job named every object (so the reports were as large as the archive).
    assert planned.count("ends_then_delete") >= count
    assert found.counts["overdue"] >= count and found.checked >= count
    assert dry.count("would_delete") >= count and done.count("deleted") >= count
    for report in (planned, found, dry, done):
        report.close()
    return peak, found.checked


async def test_plan_audit_and_purge_do_not_grow_with_the_archive(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    small, _ = await peak_of_jobs(sim, server, tmp_path / "small", 400)
    large, checked = await peak_of_jobs(sim, server, tmp_path / "large", 4_000)
    assert checked > 4_000
    # Ten times the objects, about the same peak (one page of the ledger at a time); holding
    # every object (or every report row) made it four to six times larger. The margin is for
    # what other threads of the test session allocate meanwhile.
    assert large < 2 * small + 2 * 1024 * 1024, (small, large)
