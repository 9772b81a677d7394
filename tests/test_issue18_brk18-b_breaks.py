"""Breaker B2 (issue 18): the rescue lane's budget, pacing, the worker, retention and secrets.

Each test here failed on main when it was written (unless marked a GUARD): its docstring says
what it proves and why that is wrong. Real parts only: the simulator over HTTP, a local
destination or SeaweedFS, the real ``backfill`` command or the Daemon in-process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver.archive import sink_for
from archiver.config import Settings, load_settings
from archiver.daemon import Daemon
from archiver.exotel.models import IST
from archiver.ledger import Ledger
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from archiver.summary import Summary
from tests.support import exotel_env, invoke, ledger_rows

# --- helpers -----------------------------------------------------------------------------------


def lane_settings(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, daemon: dict[str, float], **env: str
) -> Settings:
    settings = load_settings(
        env={
            **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
            "ARCHIVER_RESCUE": "on",
            "ARCHIVER_ATTEMPTS": "2",
            "ARCHIVER_MAX_WAIT": "0.2",
            **env,
        }
    )
    fast: dict[str, Any] = {
        "poll_interval": 0.1,
        "recheck_interval": 0.1,
        "sweep_interval": 3600.0,
        **daemon,
    }
    return dataclasses.replace(settings, daemon=dataclasses.replace(settings.daemon, **fast))


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[Summary]]:
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.ready.is_set() or task.done())
        yield task
    finally:
        daemon.stop()
        await asyncio.wait_for(asyncio.shield(task), 60)


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def outcome_of(settings: Settings, sid: str) -> str | None:
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        return ledger.call_outcome(sid)
    finally:
        ledger.close()


def the_day() -> datetime:
    """Noon three days back (IST): settled, whatever the hour."""
    day = datetime.now(IST).date() - timedelta(days=3)
    return datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)


# --- the worker: two writers of one key --------------------------------------------------------


async def test_a_call_hinted_while_the_sweep_waits_for_a_rescue_slot_is_not_written_twice(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """The sweep checks that a listed call is not scheduled, *then* waits for a rescue slot
    (``Daemon._rescued_from``) and rescues it without looking again. A StatusCallback hint
    (``Daemon.hint``, what the webhook calls) arriving meanwhile schedules the same call, and a
    worker archives it through v3 while the rescue downloads it too: two writers of one call,
    one key. The second to record its recording-1 hits the ledger's UNIQUE key, an
    ``sqlite3.IntegrityError`` the archiver takes for its own state directory failing: the whole
    worker stops (or, if it did not, the manifest would hold the key twice). Expected: the
    call archived once, the worker still running."""
    now = sim.now()
    first = sim.add_call(size=1024 * 1024, created=now - timedelta(minutes=20))
    second = sim.add_call(size=2 * 1024 * 1024, created=now - timedelta(minutes=19))
    sim.faults.recording_for[first.sid] = deque(["slow"])
    sim.faults.recording_for[second.sid] = deque(["slow", "slow"])
    settings = lane_settings(
        sim,
        server,
        tmp_path,
        {"poll_interval": 3600.0},
        ARCHIVER_CONCURRENCY="1",
        ARCHIVER_ENRICH="never",
    )
    daemon = Daemon(settings, sink=sink_for(settings))
    async with running(daemon) as task:
        # The sweep rescues the first call (its one slot) and waits for it before the second.
        await until(lambda: first.sid in daemon.schedule.in_flight)
        assert daemon.hint(second.sid)  # the callback of the second call arrives now
        await until(
            lambda: (
                task.done()
                or (
                    outcome_of(settings, second.sid) in ("archived", "rescued", "failed")
                    and not daemon.schedule.in_flight
                    and not daemon._rescuing
                )
            )
        )
        await asyncio.sleep(0.5)
        assert not task.done(), "the worker stopped: " + repr(
            task.exception() if not task.cancelled() else "cancelled"
        )
    keys = [e["key"] for e in read_manifest(settings.state_dir / "manifest.jsonl")]
    assert len(keys) == len(set(keys)), keys
    assert outcome_of(settings, second.sid) == "archived"


# --- budget: the enrichment's share ------------------------------------------------------------


async def test_a_failed_enrichment_is_retried_by_the_workers_outside_the_enrich_share(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """The worker holds enrichment to ``enrich_share`` of the limiter: here 25 % of 20/min, 5
    v3 requests in any minute. An enrichment that fails on a retryable error (the second
    recording's download cut off, again and again) goes through ``Daemon._after`` to
    ``Rechecks``, which hands it to the worker pool's quick retries (recheck_interval doubling,
    five times) — outside ``lane("enrich")``, so those v3 requests pass only the main limiter.
    The module docstring says a failed enrichment is "looked at again after ENRICH_RETRY" (600
    s). Within the first seconds the enrichment of three calls makes far more than 5 requests:
    the share is not a bound, and live calls wait behind failing enrichments."""
    calls = [
        sim.add_call(recordings=2, size=20_000, created=sim.now() - timedelta(minutes=30 - n))
        for n in range(3)
    ]
    for call in calls:  # the rescue of recording 1 is served; every later download is cut off
        sim.faults.recording_for[call.sid] = deque(["no_range"] + ["cut"] * 200)
    settings = lane_settings(
        sim,
        server,
        tmp_path,
        {"poll_interval": 3600.0},
        EXOTEL_RATE_LIMIT="20",
        ARCHIVER_ENRICH_SHARE="25",
        ARCHIVER_CONCURRENCY="4",
    )
    share = max(1, 20 * 25 // 100)
    daemon = Daemon(settings, sink=sink_for(settings))
    async with running(daemon):
        await until(lambda: sim.counters.get("v3_call_details", 0) >= 1)
        started = time.monotonic()
        await asyncio.sleep(12)
        enrichment = sim.counters.get("v3_call_details", 0)
        assert time.monotonic() - started < 60  # all of it within one window of the limiter
    # Every v3 request here is an enrichment (all three calls were rescued by the sweep).
    assert all(outcome_of(settings, c.sid) == "rescued" for c in calls)
    assert enrichment <= share, (
        f"{enrichment} enrichment requests within a minute; the share is {share}/min"
    )


# --- the worker: shutdown ----------------------------------------------------------------------


async def test_the_first_stop_lets_an_enrichment_in_flight_finish_its_transfer(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """README: "the first SIGTERM lets the transfers in flight finish and exits 0"; the
    worker gives calls in flight ``shutdown_grace`` seconds (``Daemon._drain``). An enrichment
    is not among them: ``_enrich_loop`` is an intake task, cancelled at once on the first stop,
    and its ``finally`` cancels every enrichment it runs — a second recording half downloaded
    is thrown away, with no grace and no log line (the drain's count of calls cut off does not
    see it either: it is no longer in flight when the drain looks). Expected: the download in
    flight (about two seconds, well within the grace) completes and the call is archived."""
    call = sim.add_call(recordings=2, size=2 * 1024 * 1024, created=sim.now() - timedelta(hours=1))
    sim.faults.recording_for[call.sid] = deque(["no_range", "slow"])  # recording 2: ~2 s
    settings = lane_settings(
        sim, server, tmp_path, {"poll_interval": 3600.0, "shutdown_grace": 30.0}
    )
    daemon = Daemon(settings, sink=sink_for(settings))
    task = asyncio.create_task(daemon.run())
    await until(lambda: daemon.ready.is_set() or task.done())
    # The enrichment has the v3 details and is downloading the second recording.
    await until(lambda: sim.counters.get("v3_call_details", 0) >= 1)
    await until(lambda: sim.counters.get("recording_requests", 0) >= 2)
    await asyncio.sleep(0.3)
    daemon.stop()
    summary = await asyncio.wait_for(task, 60)
    assert not summary.forced
    assert outcome_of(settings, call.sid) == "archived", (
        "the enrichment in flight was cut off at the first stop"
    )


# --- the plan and the summary ------------------------------------------------------------------


def test_a_backfill_with_the_lane_off_over_rescued_calls_plans_enrichment_it_never_does(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """Calls rescued by a lane backfill with ``enrich = never``; then the same range again with
    the lane off (``ARCHIVER_RESCUE=off``) and enrichment on. ``plan_backfill`` sorts the
    rescued calls into ``rescued_before`` and its JSON plan counts their enrichment in
    ``estimated_api_requests``, but ``backfill`` archives only ``to_archive``: the rescued
    calls are neither enriched nor in the result, so the summary's counts no longer add up to
    ``calls_listed`` (archiver.report: "the result's counts add up to calls_listed") and the
    run exits 0 as if the range were done while every call is still incomplete. Expected: the
    rescued calls enriched (as the plan says), or reported (rescued) and not planned."""
    noon = the_day()
    calls = [sim.add_call(created=noon + timedelta(minutes=n), size=10_000) for n in range(4)]
    env = {
        **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
        "EXOTEL_RATE_LIMIT": "6000",
    }
    day = str(noon.date())
    rescued = invoke(
        ["backfill", "--since", day, "--until", day],
        {**env, "ARCHIVER_RESCUE": "on", "ARCHIVER_ENRICH": "never"},
    )
    assert rescued.exit_code == 0, rescued.output
    assert sim.counters.get("v3_call_details", 0) == 0
    report = tmp_path / "second.json"

    again = invoke(
        ["backfill", "--since", day, "--until", day, "--report", str(report)],
        {**env, "ARCHIVER_RESCUE": "off", "ARCHIVER_ENRICH": "background"},
    )

    assert again.exit_code in (0, 1), again.output
    summary = json.loads(report.read_text())
    plan, counts = summary["plan"], summary["result"]["counts"]
    assert plan["calls_listed"] == len(calls)
    assert sum(counts.values()) == plan["calls_listed"], (plan, counts)
    # What the plan says it will spend is what was spent (no URL refresh in this run).
    assert plan["estimated_api_requests"] == sim.counters.get("v3_call_details", 0), plan
    rows = ledger_rows(tmp_path / "state", "SELECT outcome, COUNT(*) FROM calls GROUP BY outcome")
    assert dict(rows) in ({"archived": len(calls)}, {"rescued": len(calls)})


def test_the_lane_backfill_summary_states_the_enrichment_it_was_run_with(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """``rescue_backfill`` builds its ``Plan`` without ``enrich`` and ``enrich_share`` (only
    ``plan_backfill``, the dry run's, sets them), so the summary of a lane backfill with
    ``enrich = never`` says ``"enrich": true``, plans enrichment requests
    (``enrichment.estimated_api_requests`` > 0, in ``estimated_api_requests`` too) that the run
    will never make, gives a share of 0/min, and its printed line lacks "(enrich = never:
    rescued calls stay rescued)". Expected: the plan of the run says what the run did: no
    enrichment, 0 requests planned for it, the share the settings give."""
    noon = the_day()
    for n in range(5):
        sim.add_call(created=noon + timedelta(minutes=n), size=10_000)
    env = {
        **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
        "EXOTEL_RATE_LIMIT": "120",
        "ARCHIVER_RESCUE": "on",
        "ARCHIVER_ENRICH": "never",
    }
    day = str(noon.date())
    report = tmp_path / "summary.json"

    result = invoke(["backfill", "--since", day, "--until", day, "--report", str(report)], env)

    assert result.exit_code == 0, result.output
    plan = json.loads(report.read_text())["plan"]
    assert plan["to_rescue"] == 5
    assert plan["enrich"] is False, plan
    assert plan["enrichment"]["estimated_api_requests"] == 0, plan["enrichment"]
    assert plan["estimated_api_requests"] == 0, plan
    assert plan["enrichment"]["share_per_minute"] == 60, plan["enrichment"]
    assert "enrich = never" in result.output


class _Arrivals(dict[str, Any]):
    """``Simulator.calls`` that notes when each call's details were asked for (the v3 route
    looks the call up with ``get``): which requests were enrichment, which v3 archiving."""

    def __init__(self, calls: Mapping[str, Any], clock: Callable[[], float]) -> None:
        super().__init__(calls)
        self.clock = clock
        self.asked: list[tuple[str, float]] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.append((str(key), self.clock()))
        return super().get(key, default)


def _busiest(times: list[float]) -> int:
    times, best, first = sorted(times), 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 60:
            first += 1
        best = max(best, last - first + 1)
    return best


def test_guard_a_lane_backfill_keeps_the_limit_and_the_enrichment_to_its_share(
    tmp_path: Path,
) -> None:
    """GUARD (held on main). An account enforcing 20 requests a minute (429 beyond), the
    archiver told 20/min with enrich_share 50 %: 14 calls rescued then enriched, 8 listed
    without a usable URL (archived through v3 at once), 23 requests in all. Not one 429; at
    most 20 arriving in any minute; the enrichment at most 10 in any minute; every call
    archived."""
    sim = Simulator(seed=3, rate_limit_per_minute=20)
    noon = the_day()
    rescued = [sim.add_call(created=noon + timedelta(minutes=n), size=8_000) for n in range(14)]
    direct = [
        sim.add_call(created=noon + timedelta(hours=1, minutes=n), size=8_000) for n in range(8)
    ]
    for call in direct:
        sim.faults.bulk_item_patches[call.sid] = {"PreSignedRecordingUrl": None}
    arrivals = _Arrivals(sim.calls, time.time)
    sim.calls = arrivals
    with SimulatorServer(sim) as server:
        env = {
            **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
            "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
            "ARCHIVER_RESCUE": "on",
            "EXOTEL_RATE_LIMIT": "20",
            "ARCHIVER_ENRICH_SHARE": "50",
        }
        day = str(noon.date())
        result = invoke(["backfill", "--since", day, "--until", day], env)
    assert result.exit_code == 0, result.output
    assert sim.counters["rate_limited"] == 0
    assert sim.busiest_minute() <= 20
    enrich = [t for sid, t in arrivals.asked if sid in {c.sid for c in rescued}]
    assert len(enrich) == len(rescued)
    assert _busiest(enrich) <= 10
    rows = ledger_rows(tmp_path / "state", "SELECT outcome, COUNT(*) FROM calls GROUP BY outcome")
    assert dict(rows) == {"archived": len(rescued) + len(direct)}


# --- pacing ------------------------------------------------------------------------------------


async def test_the_worker_sweep_asks_for_the_longest_url_validity_as_the_backfill_lane_does(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """Issue 18: "Page the listing only as fast as downloads keep up, so no URL waits in a
    queue until it dies (ask for the longest validity the account allows)". The backfill lane
    asks ``RecordingUrlValidity=60`` (``rescue.LONGEST_VALIDITY``); the worker's sweep, which
    rescues from its listing too (``Daemon._rescued_from``, ``concurrency`` at a time while a
    page of 100 waits), asks ``url_validity`` — 5 minutes by default. A catching-up sweep of
    a day's pages on a slow link then sends the tail of each page the v3 way (a request
    each) when the URLs die in the queue, where 60-minute URLs would have served. Expected:
    the sweep's listing asks for 60 minutes."""
    calls = [sim.add_call(size=8_000) for _ in range(3)]
    settings = lane_settings(
        sim, server, tmp_path, {"poll_interval": 3600.0}, ARCHIVER_ENRICH="never"
    )
    daemon = Daemon(settings, sink=sink_for(settings))
    async with running(daemon):
        await until(lambda: all(outcome_of(settings, c.sid) == "rescued" for c in calls))
    listed = [u for u in sim.issued_urls if "X-Amz-Expires=" in u]
    assert listed
    expires = {int(u.split("X-Amz-Expires=")[1].split("&")[0]) for u in listed}
    assert expires == {3600}, f"the sweep's URLs live {sorted(expires)} s"


# --- the record of an enrichment short of complete ---------------------------------------------


def test_an_enrichment_waiting_for_the_voice_log_keeps_the_call_rescued(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """``Archiver._rescued``: "any outcome short of archived keeps them rescued in the
    ledger" (and the lane's ledger facts: a rescued call stays 'rescued', the detail saying
    why enrichment has not completed). With ``ARCHIVER_VOICE_LOGS=json`` an enrichment that
    finds the voice log still processing writes ``not_ready`` instead (``_archive_details``
    sets NOT_READY unconditionally): the ledger now calls a call whose audio is safe "not
    ready" — counted unarchived by the worker's oldest-unarchived retention warning, taken up
    by its restart and recheck paths (outside the enrichment's share), no longer among the
    rescued calls the enrichment loops pick. Expected: outcome 'rescued', the detail naming
    the voice log."""
    noon = the_day()
    waiting = sim.add_call(created=noon, size=8_000, voice_log_status="processing")
    done = sim.add_call(created=noon + timedelta(minutes=1), size=8_000)
    env = {
        **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
        "ARCHIVER_RESCUE": "on",
        "ARCHIVER_VOICE_LOGS": "json",
        "EXOTEL_RATE_LIMIT": "6000",
    }
    day = str(noon.date())

    result = invoke(["backfill", "--since", day, "--until", day], env)

    assert result.exit_code in (0, 1), result.output
    rows = dict(
        ledger_rows(
            tmp_path / "state",
            "SELECT call_sid, outcome || ' | ' || COALESCE(detail, '') FROM calls",
        )
    )
    assert rows[done.sid].startswith("archived")
    assert rows[waiting.sid].startswith("rescued"), rows[waiting.sid]
    assert "voice log" in rows[waiting.sid]


# --- scale: the enrichment's pick of the next rescued call -------------------------------------


def test_picking_the_next_rescued_call_does_not_rescan_every_failed_one(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_Lane._next_rescued`` (and the worker's ``Daemon._next_rescued``) find the next call to
    enrich by reading the ledger's rescued calls from the oldest, 100 at a time, skipping those
    tried already: while enrichments fail (v3 down, answering garbage) the k-th pick reads k/100
    pages, each an ``ORDER BY created_time`` over every rescued call (no index on calls by
    outcome), on the event loop thread. Measured here: 1,000 failing picks cost 1.1 s of
    queries, 2,000 cost 7 s, 4,000 cost 52 s — super-linear, while rescues and downloads on the
    same loop wait. With the issue's backlog (millions rescued, enriched later) a v3 outage
    stalls the lane. Expected: a bounded number of ledger reads per pick (here: at most 3 per
    enrichment); on main about 6 per enrichment for 1,200 calls, growing with the count."""
    noon = the_day() - timedelta(hours=12)
    calls = [
        sim.add_call(created=noon + timedelta(seconds=30 * n), size=2_000) for n in range(1200)
    ]
    env = {
        **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
        "ARCHIVER_RESCUE": "on",
        "EXOTEL_RATE_LIMIT": "10000",
        "ARCHIVER_LOG_LEVEL": "warning",
    }
    day = str(noon.date())
    first = invoke(
        ["backfill", "--since", day, "--until", day], {**env, "ARCHIVER_ENRICH": "never"}
    )
    assert first.exit_code == 0, first.output[-2000:]
    reads = 0
    real = Ledger.rescued_calls

    def counted(self: Ledger, limit: int, *, skip: int = 0) -> list[str]:
        nonlocal reads
        reads += 1
        return real(self, limit, skip=skip)

    monkeypatch.setattr(Ledger, "rescued_calls", counted)
    sim.faults.details_body = b"<html>maintenance</html>"  # v3 answers garbage: all fail

    again = invoke(["backfill", "--since", day, "--until", day], env)

    assert again.exit_code == 1, again.output[-2000:]
    assert sim.counters["v3_call_details"] == len(calls)
    assert reads <= 3 * len(calls), f"{reads} reads of the rescued calls for {len(calls)} picks"
