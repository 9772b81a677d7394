"""A malformed v1 item is skipped and reported, not a reason to stop listing: in the worker's
sweep (a metric and one warning naming it, progress kept) and in a backfill (named in the
output and the summary, exit 1, the rest of the range archived). The sweep's window stays
bounded: an outage of days is caught up in bounded steps, each one's progress saved.

The simulator serves the bad item over real HTTP (``sim.faults.bulk_item_patches``); the
destination is a local directory (the worker) or SeaweedFS (the backfill)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from archiver.cli import main
from archiver.exotel.models import IST
from archiver.ledger import Ledger
from archiver.report import ARCHIVED
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env
from tests.test_daemon import archived_files, daemon_settings, make_daemon, outcome, running, until

HOSTILE_SID = "../../etc/passwd\x1b[2J\u0417"
"""A path, a terminal escape sequence and a Cyrillic look-alike: shown escaped, never raw."""


def sweep_until(settings: Any) -> dt.datetime | None:
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        value = ledger.state("sweep_until")
    finally:
        ledger.close()
    return dt.datetime.fromisoformat(value) if value else None


async def test_a_bad_v1_item_is_skipped_and_reported_once_and_the_sweep_completes(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hours = [sim.now() - dt.timedelta(hours=h) for h in (5, 4, 3, 2, 1)]
    first, bad_sid, second, bad_date, third = (
        sim.add_call(recordings=1, size=9_000, created=when) for when in hours
    )
    sim.faults.bulk_item_patches[bad_sid.sid] = {"Sid": HOSTILE_SID}
    sim.faults.bulk_item_patches[bad_date.sid] = {"DateCreated": "31/12/2026 25:61"}
    settings = daemon_settings(sim, server, tmp_path)
    daemon = make_daemon(settings)
    caplog.set_level(logging.INFO, logger="archiver")
    async with running(daemon):
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 3)
        assert daemon.metrics.sweeps == 1 and daemon.metrics.sweep_errors == 0
        assert await daemon.sweep() == 0  # again: the same bad items, not counted again
    assert daemon.metrics.skipped_items == {"invalid_sid": 1, "invalid_date_created": 1}
    assert {outcome(settings, c.sid) for c in (first, second, third)} == {ARCHIVED}
    assert outcome(settings, bad_date.sid) is None  # skipped: not guessed at
    assert sorted(archived_files(settings).values()) == sorted(
        sim.recording_bytes(c.sid, 1) for c in (first, second, third)
    )
    until_saved = sweep_until(settings)
    assert until_saved is not None and sim.now() - until_saved < dt.timedelta(minutes=1)

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    skipped = [r for r in warnings if "malformed item was skipped" in r.getMessage()]
    assert len(skipped) == len(warnings) == 2
    text = "\n".join(r.getMessage() for r in skipped)
    assert "\x1b" not in text and "\u0417" not in text  # escaped, not raw
    assert '"../../etc/passwd\\u001b[2J\\u0417"' in text
    assert bad_date.sid in text and '"31/12/2026 25:61"' in text
    assert "'../" not in text and "'31/" not in text  # no Python repr quoting

    found = [r.getMessage() for r in caplog.records if "found by the sweep" in r.getMessage()]
    assert len(found) == 3 and not any("None" in m for m in found)


async def test_sweeps_catch_up_an_outage_in_bounded_steps_keeping_each_ones_progress(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """Down for three days: each sweep lists at most one day (plus the overlap), saves where it
    got to, and the next one goes on from there; a failed one does not lose the steps before."""
    ago = [sim.now() - dt.timedelta(hours=h) for h in (60, 36, 12)]
    calls = [sim.add_call(recordings=1, size=5_000, created=when) for when in ago]
    settings = daemon_settings(sim, server, tmp_path, sweep_interval=0.0)  # sweeps by hand
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    ledger.set_state("sweep_until", (sim.now() - dt.timedelta(days=3)).astimezone(IST).isoformat())
    ledger.close()
    daemon = make_daemon(settings)
    async with running(daemon):
        assert await daemon.sweep() == 1  # [3 d - 1 h, 2 d]: the call of 60 h ago only
        step = sweep_until(settings)
        assert step is not None and abs(sim.now() - dt.timedelta(days=2) - step) < dt.timedelta(
            minutes=1
        )
        sim.faults.bulk_body = b'{"Calls": "not a list"}'  # the next step fails...
        with pytest.raises(Exception, match="no 'Calls' list"):
            await daemon.sweep()
        assert sweep_until(settings) == step  # ...and the step before it stays done
        sim.faults.bulk_body = None
        before = sim.counters["v1_bulk"]
        assert await daemon.sweep() == 1  # [2 d - 1 h, 1 d]: the call of 36 h ago
        assert sim.counters["v1_bulk"] == before + 1  # one page: not the whole outage again
        assert await daemon.sweep() == 1  # the last step reaches now
        last = sweep_until(settings)
        assert last is not None and sim.now() - last < dt.timedelta(minutes=1)
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 3)
    assert {outcome(settings, c.sid) for c in calls} == {ARCHIVED}


async def test_the_sweep_loop_catches_up_without_waiting_a_sweep_interval_per_step(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    old = sim.add_call(recordings=1, size=5_000, created=sim.now() - dt.timedelta(days=4))
    settings = daemon_settings(sim, server, tmp_path, sweep_interval=3600.0)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    # 5 days and a few seconds back: the last step takes the seconds too, not a sixth sweep
    last = sim.now() - dt.timedelta(days=5, seconds=20)
    ledger.set_state("sweep_until", last.astimezone(IST).isoformat())
    ledger.close()
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
        await until(lambda: daemon.metrics.sweeps >= 5)  # 5 days, one a sweep, back to back
        await asyncio.sleep(0.5)
        assert daemon.metrics.sweeps == 5
        saved = sweep_until(settings)
        assert saved is not None and sim.now() - saved < dt.timedelta(minutes=1)
    assert outcome(settings, old.sid) == ARCHIVED
    assert daemon.metrics.sweep_errors == 0


@pytest.fixture
def bad_day(sim: Simulator) -> tuple[dt.date, list[Any], Any, Any]:
    """A day three days back with 8 calls (all with a recording) and two malformed items."""
    day = (sim.now().astimezone(IST) - dt.timedelta(days=3)).date()
    start = dt.datetime.combine(day, dt.time(9), IST)
    calls = [
        sim.add_call(recordings=1, size=4_000, created=start + dt.timedelta(minutes=7 * n))
        for n in range(10)
    ]
    bad_sid, bad_date = calls[3], calls[6]
    sim.faults.bulk_item_patches[bad_sid.sid] = {"Sid": HOSTILE_SID}
    sim.faults.bulk_item_patches[bad_date.sid] = {"DateCreated": 1_700_000_000}
    good = [c for c in calls if c not in (bad_sid, bad_date)]
    return day, good, bad_sid, bad_date


def test_a_backfill_skips_bad_items_names_them_archives_the_rest_and_exits_1(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
    bad_day: tuple[dt.date, list[Any], Any, Any],
) -> None:
    day, good, _bad_sid, bad_date = bad_day
    state = tmp_path / "state"
    env = {**exotel_env(sim, server.base_url, f"s3://{bucket}/exotel", state)}
    env["ARCHIVER_LOG_FORMAT"] = "text"  # the human lines are what this test reads
    args = ["backfill", "--since", str(day), "--until", str(day)]

    dry = CliRunner().invoke(
        main, [*args, "--dry-run", "--report", str(tmp_path / "p.json")], env=env
    )
    assert dry.exit_code == 1, dry.output
    assert "2 malformed item(s) skipped" in dry.output
    plan = json.loads((tmp_path / "p.json").read_text())["plan"]
    assert plan["calls_listed"] == 8 and plan["to_archive"] == 8
    assert plan["listing_complete"] is False  # not saved: a later run lists (and reports) again

    result = CliRunner().invoke(main, [*args, "--report", str(tmp_path / "run.json")], env=env)
    out = result.output
    assert result.exit_code == 1, out
    assert "Traceback" not in out and "\x1b" not in out and "\u0417" not in out
    assert '"../../etc/passwd\\u001b[2J\\u0417"' in out and "invalid call SID" in out
    assert bad_date.sid in out and "DateCreated" in out
    assert "archived: 8 calls" in out
    summary = json.loads((tmp_path / "run.json").read_text())
    skipped = summary["plan"]["skipped_items"]
    assert [s["reason"] for s in skipped] == ["invalid_sid", "invalid_date_created"]
    assert skipped[1]["sid"] == f'"{bad_date.sid}"' and "page 1" in skipped[1]["page"]
    assert summary["result"]["counts"]["archived"] == 8
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert {k.split("/")[-2] for k in keys if "/recording-" in k} == {c.sid for c in good}

    before = sim.counters["v1_bulk"]
    again = CliRunner().invoke(main, args, env=env)
    assert again.exit_code == 1 and "2 malformed item(s) skipped" in again.output
    assert sim.counters["v1_bulk"] == before + 1  # listed again, not a silent saved listing
    assert "already archived: 8" in again.output


def test_an_item_that_is_not_an_object_is_skipped_too(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """(Moved here from test_hostile's whole-page cases: it is one item's problem now.)"""
    day = (sim.now().astimezone(IST) - dt.timedelta(days=3)).date()
    sim.faults.bulk_body = b'{"Calls": [42], "Metadata": {}}'
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    result = CliRunner().invoke(
        main, ["backfill", "--since", str(day), "--until", str(day)], env=env
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "error:" not in result.output
    assert "an item of 'Calls' is not an object: an int (42)" in result.output
    assert "archived: 0 calls" in result.output and sim.counters["v3_call_details"] == 0
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("recording-*"))


async def test_a_caller_without_on_skip_still_gets_the_error(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """reconcile must see every call: for it a malformed item still fails the listing."""
    from archiver.errors import ExotelProtocolError
    from archiver.exotel.listing import SkippedItem, list_calls
    from tests.test_listing import client_for

    calls = [sim.add_call(created=sim.now() - dt.timedelta(hours=h)) for h in (3, 2)]
    sim.faults.bulk_item_patches[calls[0].sid] = {"Sid": HOSTILE_SID}
    since = sim.now() - dt.timedelta(hours=4)
    async with client_for(sim, server, tmp_path) as client:
        with pytest.raises(ExotelProtocolError, match="page 1: a malformed item: invalid call SID"):
            async for _ in list_calls(client, since, sim.now(), tz=IST):
                pass
        skipped: list[SkippedItem] = []
        listed = [
            c.sid
            async for c in list_calls(client, since, sim.now(), tz=IST, on_skip=skipped.append)
        ]
    assert listed == [calls[1].sid]
    assert [(s.reason, s.sid) for s in skipped] == [
        ("invalid_sid", '"../../etc/passwd\\u001b[2J\\u0417"')
    ]
