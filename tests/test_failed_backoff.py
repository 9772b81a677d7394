"""A failed call costs the API budget less and less: each sweep lists it again, but it is looked
at again (one call-details request) only once its backoff has passed — growing per failure in a
row, capped, kept in the ledger so a restart does not reset it. It stays ``failed`` in the
ledger, counted (``failed_calls``) and named in the log; a failure that may pass (a 5xx storm)
comes back sooner than one that will not (a malformed URL).

The simulator serves over real HTTP; the destination is a local directory. Sweeps are run by
hand (``sweep_interval=0``) so each one is counted."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
from pathlib import Path

import pytest

from archiver import rechecks
from archiver.config import Settings
from archiver.daemon import Daemon
from archiver.ledger import Ledger
from archiver.rechecks import Backoff
from archiver.report import ARCHIVED, FAILED
from archiver.simulator import Simulator, SimulatorServer
from tests.test_daemon import archived_files, daemon_settings, make_daemon, outcome, running, until

BAD_URL = "https://recordings.example:99999/a.mp3"


async def settle(daemon: Daemon) -> None:
    """Until nothing is due or in flight (what the last sweep scheduled has been looked at)."""
    await until(lambda: not daemon.schedule.in_flight and daemon.schedule.waiting == 0)


def retry_state(settings: Settings, sid: str) -> tuple[int, str | None, str | None]:
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        state = ledger.retry_state(sid)
    finally:
        ledger.close()
    assert state is not None
    return state.failures, state.failed_since, state.retry_at


async def test_a_failed_call_is_not_looked_at_again_at_every_sweep_nor_after_a_restart(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    created = sim.now() - dt.timedelta(hours=2)
    bad = sim.add_call(recordings=1, size=4_000, created=created)
    good = sim.add_call(recordings=1, size=5_000, created=created + dt.timedelta(minutes=1))
    sim.faults.recording_url_for[bad.sid] = BAD_URL
    settings = daemon_settings(sim, server, tmp_path, sweep_interval=0.0, poll_interval=3600.0)
    caplog.set_level(logging.INFO, logger="archiver")
    daemon = make_daemon(settings)
    async with running(daemon):
        assert await daemon.sweep() == 2
        await settle(daemon)
        assert daemon.metrics.calls[ARCHIVED] == 1 and daemon.metrics.calls[FAILED] == 1
        assert sim.counters["v3_call_details"] == 2
        for _ in range(5):  # five more sweeps list it again: none looks at it again
            assert await daemon.sweep() == 0
            await settle(daemon)
        assert sim.counters["v3_call_details"] == 2
        assert daemon.metrics.failed_calls == 1  # counted, not dropped
    failures, since, retry_at = retry_state(settings, bad.sid)
    assert failures == 1 and since is not None and retry_at is not None
    wait = dt.datetime.fromisoformat(retry_at) - dt.datetime.fromisoformat(since)
    assert dt.timedelta(minutes=59) < wait <= dt.timedelta(hours=1)  # bad_url: first wait 1 h
    assert outcome(settings, bad.sid) == FAILED

    again = make_daemon(settings)  # a restart does not make it due again
    async with running(again):
        assert await again.sweep() == 0
        await settle(again)
        assert again.metrics.failed_calls == 1
    assert sim.counters["v3_call_details"] == 2
    assert list(archived_files(settings).values()) == [sim.recording_bytes(good.sid, 1)]

    said = [r.getMessage() for r in caplog.records]
    deferred = [m for m in said if "stays failed" in m]
    assert len(deferred) == 1 and bad.sid in deferred[0] and "bad_url" in deferred[0]
    assert "1 h" in deferred[0] and "None" not in deferred[0]
    waiting = [m for m in said if "waiting for their next look" in m]
    assert len(waiting) == 6, waiting  # every sweep after the failure says so


async def test_the_wait_grows_per_failure_up_to_its_cap(
    sim: Simulator,
    server: SimulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rechecks, "FAILED_BACKOFF", Backoff(first=0.3, cap=1.2))
    bad = sim.add_call(recordings=1, created=sim.now() - dt.timedelta(hours=1))
    sim.faults.recording_url_for[bad.sid] = BAD_URL
    settings = daemon_settings(sim, server, tmp_path, sweep_interval=0.0, poll_interval=3600.0)
    daemon = make_daemon(settings)
    looks: list[float] = []
    async with running(daemon):
        started = time.monotonic()
        while time.monotonic() - started < 5.5:
            await daemon.sweep()
            await settle(daemon)
            while sim.counters["v3_call_details"] > len(looks):
                looks.append(time.monotonic())
            await asyncio.sleep(0.05)
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    # 0.3, 0.6, 1.2, 1.2 ...: about 6 looks in 5.5 s, where every sweep (about 60) cost one
    assert 4 <= len(looks) <= 7, gaps
    assert 0.25 < gaps[0] < 0.6 and gaps[1] > gaps[0] and gaps[2] > gaps[1], gaps
    assert all(g < 1.6 for g in gaps), gaps  # the cap
    assert retry_state(settings, bad.sid)[0] == len(looks)
    assert outcome(settings, bad.sid) == FAILED


async def test_a_failure_that_may_pass_comes_back_sooner_and_is_archived_after_the_storm(
    sim: Simulator,
    server: SimulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exotel answers 500 to every call-details request for a while: the call is tried five
    times in-process, then waits for its (short) retryable backoff — not the hour a malformed
    URL waits — and is archived by the first sweep after it once the storm has passed."""
    monkeypatch.setattr(rechecks, "RETRYABLE_BACKOFF", Backoff(first=1.0, cap=4.0))
    assert rechecks.FAILED_BACKOFF.first >= 3600  # the other kind waits an hour
    call = sim.add_call(recordings=1, size=7_000, created=sim.now() - dt.timedelta(hours=1))
    settings = daemon_settings(sim, server, tmp_path, sweep_interval=0.0, poll_interval=3600.0)
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: sim.counters["active"] == 1)  # the first poll is answered
        sim.faults.api_script.extend([500] * 12)  # 6 looks x 2 attempts: all answered 500
        assert daemon.hint(call.sid)  # (a StatusCallback: no listing request in the way)
        await until(lambda: daemon.metrics.calls[FAILED] == 6)
        await settle(daemon)
        assert outcome(settings, call.sid) == FAILED and not sim.faults.api_script
        failed_at = time.monotonic()
        while daemon.metrics.calls[ARCHIVED] == 0:
            assert time.monotonic() - failed_at < 10
            await daemon.sweep()
            await settle(daemon)
            await asyncio.sleep(0.05)
        assert 0.8 < time.monotonic() - failed_at < 3.0  # its backoff, then the next sweep
    assert outcome(settings, call.sid) == ARCHIVED
    assert list(archived_files(settings).values()) == [sim.recording_bytes(call.sid, 1)]
    assert retry_state(settings, call.sid) == (0, None, None)  # archived: the backoff ends


async def test_a_call_failing_for_more_than_a_day_is_looked_at_daily(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """Its backoff, from an earlier run, is over; it fails again: next look in a day."""
    bad = sim.add_call(recordings=1, created=sim.now() - dt.timedelta(hours=30))
    sim.faults.recording_url_for[bad.sid] = BAD_URL
    settings = daemon_settings(
        sim, server, tmp_path, sweep_interval=0.0, poll_interval=3600.0, sweep_lookback=3 * 86400.0
    )
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    ledger.track_call(bad.sid)
    ledger.set_call(bad.sid, FAILED, detail="an earlier run's failure")
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    ledger.defer_failed(bad.sid, two_days_ago + dt.timedelta(hours=1), now=two_days_ago)
    ledger.close()
    daemon = make_daemon(settings)
    async with running(daemon):
        assert await daemon.sweep() == 1  # due: its wait ended long ago
        await settle(daemon)
        assert await daemon.sweep() == 0
    assert sim.counters["v3_call_details"] == 1
    failures, since, retry_at = retry_state(settings, bad.sid)
    assert failures == 2 and since is not None and retry_at is not None
    assert dt.datetime.fromisoformat(since) < two_days_ago + dt.timedelta(seconds=1)
    wait = dt.datetime.fromisoformat(retry_at) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23) < wait <= dt.timedelta(days=1)


async def test_after_its_backoff_a_failure_that_may_pass_gets_one_look_not_six(
    sim: Simulator,
    server: SimulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quick in-process retries are for a fresh failure; a call coming back from its
    backoff into the same storm costs one look, and waits again."""
    monkeypatch.setattr(rechecks, "RETRYABLE_BACKOFF", Backoff(first=0.5, cap=0.5))
    call = sim.add_call(recordings=1, size=7_000, created=sim.now() - dt.timedelta(hours=1))
    settings = daemon_settings(sim, server, tmp_path, sweep_interval=0.0, poll_interval=3600.0)
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: sim.counters["active"] == 1)
        sim.faults.api_script.extend([500] * 12)  # 6 looks x 2 attempts
        assert daemon.hint(call.sid)
        await until(lambda: daemon.metrics.calls[FAILED] == 6)
        await settle(daemon)
        while daemon.metrics.calls[FAILED] < 7:  # its backoff passes: a sweep looks again
            if await daemon.sweep():  # (its own listing answered; the look not yet sent)
                sim.faults.api_script.extend([500] * 12)  # still the storm, for 6 looks
            await settle(daemon)
            await asyncio.sleep(0.05)
        sim.faults.api_script.clear()
        await settle(daemon)
        assert retry_state(settings, call.sid)[0] == 2  # deferred again at once, not retried
        assert outcome(settings, call.sid) == FAILED
        while daemon.metrics.calls[ARCHIVED] == 0:  # the storm is over
            await daemon.sweep()
            await settle(daemon)
            await asyncio.sleep(0.05)
    assert daemon.metrics.calls[FAILED] == 7
    assert list(archived_files(settings).values()) == [sim.recording_bytes(call.sid, 1)]
