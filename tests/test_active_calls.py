"""What the worker does with the active-calls list when a call on it is odd: an item with an
invalid ``call_sid`` is skipped and reported (the rest of the poll is used), and a call listed
as in progress for longer than ``stuck_after`` is reported stuck — one warning, counted — while
it is watched as before, at no extra cost.

The simulator serves the list over real HTTP (``sim.faults.active_item_patches`` for the bad
item); the destination is a local directory."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import pytest

from archiver.report import ARCHIVED
from archiver.simulator import Simulator, SimulatorServer
from tests.test_daemon import archived_files, daemon_settings, make_daemon, running, until

HOSTILE_SID = "../../etc/passwd\x1b[2J\u0417"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_invalid_call_sid_on_the_active_list_is_skipped_and_the_poll_used(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = sim.add_call(state="active", recordings=1, size=7_000)
    bad = sim.add_call(state="active", recordings=1, size=8_000)
    empty = sim.add_call(state="active", recordings=1, size=9_000)
    sim.faults.active_item_patches[bad.sid] = {"call_sid": HOSTILE_SID}
    sim.faults.active_item_patches[empty.sid] = {"call_sid": ""}
    settings = daemon_settings(sim, server, tmp_path, sweep_interval=0.0)
    daemon = make_daemon(settings)
    caplog.set_level(logging.INFO, logger="archiver")
    async with running(daemon):
        await until(lambda: daemon.metrics.watched == 1)  # the good one, from the first poll
        polls = sim.counters["active"]
        await until(lambda: sim.counters["active"] >= polls + 5)  # several polls, same items
        assert daemon.metrics.poll_errors == 0
        assert daemon.metrics.skipped_items == {"active_bad_sid": 2}  # once per value
        sim.finish(good.sid)
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
    assert list(archived_files(settings).values()) == [sim.recording_bytes(good.sid, 1)]

    said = warnings(caplog)
    assert len(said) == 2, said
    text = "\n".join(said)
    assert all("GET active calls page 1: a malformed item was skipped" in w for w in said)
    assert "skipped_items_total{reason=active_bad_sid}" in text
    assert '"../../etc/passwd\\u001b[2J\\u0417"' in text  # escaped, never raw
    assert "\x1b" not in text and "\u0417" not in text and "'../" not in text
    assert "exotel-archiver archive" not in text  # no SID to archive by hand


async def test_a_call_listed_in_progress_for_longer_than_stuck_after_is_reported_stuck(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = sim.add_call(
        state="active", recordings=1, size=6_000, created=sim.now() - dt.timedelta(hours=7)
    )
    young = sim.add_call(state="active", recordings=1, size=5_000)
    settings = daemon_settings(sim, server, tmp_path, sweep_interval=0.0)  # stuck_after 6 h
    daemon = make_daemon(settings)
    caplog.set_level(logging.INFO, logger="archiver")
    async with running(daemon):
        await until(lambda: daemon.metrics.watched == 2)
        polls = sim.counters["active"]
        await until(lambda: sim.counters["active"] >= polls + 5)
        assert daemon.metrics.stuck_calls == 1 and daemon.metrics.stuck_calls_total == 1
        assert sim.counters["v3_call_details"] == 0  # watched as before: nothing extra spent
        sim.finish(old.sid)
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
        assert daemon.metrics.stuck_calls == 0 and daemon.metrics.stuck_calls_total == 1
        await asyncio.sleep(0.3)  # more polls: the young call is not stuck
        assert daemon.metrics.stuck_calls_total == 1
    assert sim.counters["v3_call_details"] == 1  # the old call, once it ended
    assert list(archived_files(settings).values()) == [sim.recording_bytes(old.sid, 1)]
    said = [w for w in warnings(caplog) if "stuck" in w]
    assert len(said) == 1, said
    assert old.sid in said[0] and young.sid not in said[0]
    assert "in progress" in said[0] and "7.0 h" in said[0] and "None" not in said[0]
