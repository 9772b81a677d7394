"""The account's API budget: what one poll, one stuck call and one backfill may cost.

* active-call paging stops at a page that brings nothing new (an API ignoring ``offset``) and
  after ``MAX_ACTIVE_PAGES`` pages, counted and warned about once;
* a call that stays active/processing is looked at less and less often (doubling up to
  ``recheck_max``), then reported stuck once and looked at every ``stuck_recheck``, never
  dropped — also right after a restart, from the creation time the ledger holds;
* the default rate is a share of Exotel's 200/min (120), which the worker keeps to over any
  minute, measured where the requests arrive (``sim.api_log``); the dry-run plan says how many
  requests a backfill needs and how long they take at that share.

The simulator serves over real HTTP; the destination is a local directory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver.cli import main
from archiver.config import load_settings
from archiver.errors import ConfigError
from archiver.exotel.models import IST
from archiver.ledger import Ledger
from archiver.report import ARCHIVED, NOT_READY
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env
from tests.test_daemon import archived_files, daemon_settings, make_daemon, outcome, running, until


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


async def test_an_api_ignoring_offset_costs_two_requests_a_poll_not_a_hundred(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(150):
        sim.add_call(state="active")
    sim.faults.active_ignores_offset = True  # every page is the first one
    settings = daemon_settings(sim, server, tmp_path, poll_interval=0.2, sweep_interval=0.0)
    daemon = make_daemon(settings)
    caplog.set_level(logging.INFO, logger="archiver")
    async with running(daemon):
        await until(lambda: daemon.metrics.watched == 100)
        assert sim.counters["active"] <= 3  # the first poll: two pages (a third may start)
        await until(lambda: daemon.metrics.active_poll_truncated["no_progress"] >= 4)
    polls = daemon.metrics.active_poll_truncated["no_progress"]
    assert 2 * polls <= sim.counters["active"] <= 2 * polls + 2  # (one poll cut by the stop)
    said = warnings_about(caplog, "polling active calls")
    assert len(said) == 1, said  # once, not at every poll
    assert "ignore 'offset'" in said[0] and "100 of 150" in said[0]


async def test_a_poll_reads_at_most_ten_pages(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(1050):
        sim.add_call(state="active")
    settings = daemon_settings(sim, server, tmp_path, poll_interval=3600.0, sweep_interval=0.0)
    daemon = make_daemon(settings)
    caplog.set_level(logging.INFO, logger="archiver")
    async with running(daemon):
        await until(lambda: daemon.metrics.active_poll_truncated["page_cap"] == 1)
        assert daemon.metrics.watched == 1000
    assert sim.counters["active"] == 10
    said = warnings_about(caplog, "polling active calls")
    assert len(said) == 1 and "1050 calls in progress" in said[0]


async def test_a_call_that_stays_processing_is_looked_at_less_and_less_then_reported_stuck(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    created = sim.now() - dt.timedelta(minutes=1)  # listed by the worker's first sweep
    call = sim.add_call(state="processing", recordings=1, size=6_000, created=created)
    settings = daemon_settings(
        sim,
        server,
        tmp_path,
        recheck_interval=0.1,
        recheck_max=0.8,
        stuck_after=63.0,  # about 3 s from now: the age counts from the call's creation
        stuck_recheck=1.5,
    )
    daemon = make_daemon(settings)
    caplog.set_level(logging.INFO, logger="archiver")
    looks: list[float] = []
    async with running(daemon):
        started = time.monotonic()
        while time.monotonic() - started < 7.0:
            while daemon.metrics.calls[NOT_READY] > len(looks):
                looks.append(time.monotonic())
            await asyncio.sleep(0.01)
        assert daemon.metrics.stuck_calls == 1 and daemon.metrics.stuck_calls_total == 1
        assert call.sid in daemon.schedule  # still scheduled: never dropped
        assert outcome(settings, call.sid) == NOT_READY
        sim.finish(call.sid)
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
        assert daemon.metrics.stuck_calls == 0 and daemon.metrics.stuck_calls_total == 1

    gaps = [b - a for a, b in itertools.pairwise(looks)]
    # 0.1, 0.2, 0.4, 0.8, 0.8 ... until 63 s have passed since the call's creation, then 1.5 s
    # (a constant 0.1 s recheck would have looked about 70 times).
    assert 6 <= len(looks) <= 11, gaps
    assert gaps[0] < 0.35 and gaps[1] > gaps[0] and gaps[2] > gaps[1], gaps
    assert max(gaps[:4]) < 1.2, gaps  # the cap
    assert all(g > 1.3 for g in gaps[-2:]), gaps  # stuck: rarely
    said = warnings_about(caplog, "reported stuck")
    assert len(said) == 1 and call.sid in said[0] and "every 0.025 min" in said[0]
    assert list(archived_files(settings).values()) == [sim.recording_bytes(call.sid, 1)]


async def test_after_a_restart_a_call_long_not_ready_is_stuck_at_once_not_rechecked_often(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger knows when the call was created (seven hours ago): a restart does not make it
    young again and start the rechecks from the shortest interval."""
    created = sim.now() - dt.timedelta(hours=7)
    call = sim.add_call(state="processing", recordings=1, created=created)
    settings = daemon_settings(sim, server, tmp_path, sweep_interval=0.0)  # recheck 0.1 s
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    ledger.track_call(call.sid, created_time=created.astimezone(IST).isoformat())
    ledger.set_call(call.sid, NOT_READY, detail="call is still active")  # an earlier run's
    ledger.close()
    daemon = make_daemon(settings)
    caplog.set_level(logging.INFO, logger="archiver")
    async with running(daemon):
        await until(lambda: daemon.metrics.calls[NOT_READY] == 1)
        await asyncio.sleep(0.6)  # six default rechecks' worth
        assert daemon.metrics.calls[NOT_READY] == 1  # next look in an hour (stuck_recheck)
        assert daemon.metrics.stuck_calls == 1 and daemon.metrics.discovered["restart"] == 1
    said = warnings_about(caplog, "reported stuck")
    assert len(said) == 1 and call.sid in said[0] and " 7.0 h after it was created" in said[0]
    assert outcome(settings, call.sid) == NOT_READY  # kept for the next start


def test_budget_settings_defaults_and_validation() -> None:
    env = {"EXOTEL_API_KEY": "k", "EXOTEL_API_TOKEN": "t", "ARCHIVER_CONFIG": ""}
    settings = load_settings(env=env)
    assert settings.exotel.rate_limit == 120  # a share of Exotel's 200/min, not all of it
    d = settings.daemon
    assert (d.recheck_max, d.stuck_after, d.stuck_recheck) == (1800.0, 6 * 3600.0, 3600.0)
    tuned = load_settings(
        env={**env, "ARCHIVER_RECHECK_MAX": "10", "ARCHIVER_STUCK_AFTER": "2"}
    ).daemon
    assert tuned.recheck_max == 600.0 and tuned.stuck_after == 7200.0
    with pytest.raises(
        ConfigError,
        match=r"ARCHIVER_RECHECK_MAX \(1 minutes\) is shorter than ARCHIVER_RECHECK_INTERVAL",
    ):
        load_settings(env={**env, "ARCHIVER_RECHECK_MAX": "1", "ARCHIVER_RECHECK_INTERVAL": "90"})
    with pytest.raises(ConfigError, match="ARCHIVER_STUCK_AFTER"):
        load_settings(env={**env, "ARCHIVER_STUCK_AFTER": "0"})


@pytest.mark.slow
def test_a_backfill_keeps_to_the_default_share_over_a_minute_and_its_plan_says_so(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """125 calls at the default 120/min: the dry run says about a minute; the run sends 120
    requests, waits, and sends the last 5 — never more than 120 in any 60 s at the server."""
    day = (sim.now().astimezone(IST) - dt.timedelta(days=3)).date()
    start = dt.datetime.combine(day, dt.time(8), IST)
    calls = [
        sim.add_call(recordings=1, size=1_000, created=start + dt.timedelta(minutes=n))
        for n in range(125)
    ]
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    assert "EXOTEL_RATE_LIMIT" not in env  # the default share
    args = ["backfill", "--since", str(day), "--until", str(day)]

    dry = CliRunner().invoke(
        main, [*args, "--dry-run", "--report", str(tmp_path / "p.json")], env=env
    )
    assert dry.exit_code == 0, dry.output
    assert "budget: about 125 API requests to archive them, 1 min at 120/min" in dry.output
    plan = json.loads((tmp_path / "p.json").read_text())["plan"]
    assert plan["estimated_api_requests"] == 125 and plan["rate_limit_per_minute"] == 120
    assert plan["estimated_minutes_at_rate_limit"] == 1.0 and plan["estimated_duration"] == "1 min"

    began, wall = sim.clock(), time.monotonic()
    real = CliRunner().invoke(main, args, env=env)
    assert real.exit_code == 0, real.output
    assert sim.busiest_minute(since=began) == 120  # the share, used, never exceeded
    assert len([t for t in sim.api_log if t >= began]) == 125  # saved listing reused
    assert time.monotonic() - wall >= 55  # the last five waited for the window
    assert {p.parent.name for p in (tmp_path / "out").rglob("recording-*")} == {
        c.sid for c in calls
    }
