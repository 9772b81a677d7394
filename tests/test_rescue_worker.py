"""The rescue lane in the long-running worker: its sweeps rescue from the listing, its own loop
enriches; calls seen active still go the v3 way."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from archiver.archive import sink_for
from archiver.config import Settings, load_settings
from archiver.daemon import Daemon
from archiver.ledger import Ledger
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from archiver.summary import Summary
from tests.support import exotel_env


def lane_settings(sim: Simulator, server: SimulatorServer, tmp_path: Path, **env: str) -> Settings:
    settings = load_settings(
        env={
            **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
            "ARCHIVER_RESCUE": "on",
            "ARCHIVER_ATTEMPTS": "2",
            "ARCHIVER_MAX_WAIT": "0.2",
            **env,
        }
    )
    fast = {"poll_interval": 0.1, "recheck_interval": 0.1, "sweep_interval": 3600.0}
    return dataclasses.replace(settings, daemon=dataclasses.replace(settings.daemon, **fast))


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[Summary]]:
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.ready.is_set() or task.done())
        yield task
    finally:
        daemon.stop()
        await asyncio.wait_for(asyncio.shield(task), 30)


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def outcomes(settings: Settings, *sids: str) -> dict[str, str | None]:
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        return {sid: ledger.call_outcome(sid) for sid in sids}
    finally:
        ledger.close()


def stored(settings: Settings) -> dict[str, Any]:
    root = Path(settings.destination or "")
    return {
        e["key"]: (root / e["key"]).read_bytes()
        for e in read_manifest(settings.state_dir / "manifest.jsonl")
        if e["kind"] in ("recording", "v1_record", "call_details")
    }


async def test_the_sweep_rescues_and_the_enrichment_completes(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    calls = [sim.add_call(recordings=n % 2 + 1, size=20_000) for n in range(6)]
    settings = lane_settings(sim, server, tmp_path)
    daemon = Daemon(settings, sink=sink_for(settings))
    async with running(daemon):
        await until(
            lambda: set(outcomes(settings, *(c.sid for c in calls)).values()) == {"archived"}
        )
    files = stored(settings)
    for call in calls:
        names = {k.rsplit("/", 1)[1] for k in files if f"/{call.sid}/" in k}
        want = {f"recording-{i}.mp3" for i in range(1, len(call.recordings) + 1)}
        assert names == want | {"call-v1.json", "call.json"}
        for i in range(1, len(call.recordings) + 1):
            key = next(k for k in files if k.endswith(f"/{call.sid}/recording-{i}.mp3"))
            assert files[key] == sim.recording_bytes(call.sid, i)
    assert sim.counters["v3_call_details"] == len(calls)  # the enrichment's, one a call
    # Each recording downloaded once: the rescued one is not fetched again by the enrichment.
    assert sim.counters["recording_requests"] == sum(len(c.recordings) for c in calls)


async def test_with_enrich_never_the_worker_leaves_rescued_calls_rescued(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    calls = [sim.add_call(size=10_000) for _ in range(3)]
    settings = lane_settings(sim, server, tmp_path, ARCHIVER_ENRICH="never")
    daemon = Daemon(settings, sink=sink_for(settings))
    async with running(daemon):
        await until(
            lambda: set(outcomes(settings, *(c.sid for c in calls)).values()) == {"rescued"}
        )
        await asyncio.sleep(0.5)
    assert sim.counters.get("v3_call_details", 0) == 0
    assert set(outcomes(settings, *(c.sid for c in calls)).values()) == {"rescued"}
