"""Reconciliation against Exotel's own list: what is archived, missing, recordless or active."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from archiver.archive import archive_calls
from archiver.cli import main
from archiver.config import load_settings
from archiver.exotel.models import IST
from archiver.reconcile import reconcile
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env


async def test_reconcile_names_what_is_missing(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    # Two days back: every call of the day is older than listing_settle (6 h) whatever the
    # hour, so one listed without a recording is final (yesterday's late calls are not, in
    # the first hours after midnight: recording_pending).
    day = (datetime.now(IST) - timedelta(days=2)).date()
    calls = sim.populate(30, day=day)
    with_audio = [c for c in calls if c.recordings]
    without = [c for c in calls if not c.recordings]
    assert with_audio and without
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    settings = load_settings(env=env)
    half = [c.sid for c in with_audio[: len(with_audio) // 2]]
    await archive_calls(settings, half)
    active = sim.add_call(
        state="active",
        created=datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=23),
    )
    await archive_calls(settings, [active.sid])  # seen active: not ready

    report = await reconcile(settings, day, day)
    states = {c["call_sid"]: c["state"] for c in report.calls}
    assert {s for s, st in states.items() if st == "archived"} == set(half)
    assert {s for s, st in states.items() if st == "missing"} == {
        c.sid for c in with_audio[len(with_audio) // 2 :]
    }
    assert {s for s, st in states.items() if st == "no_recording_at_source"} == {
        c.sid for c in without
    }
    assert states[active.sid] == "still_active"
    assert not report.complete

    result = await asyncio.to_thread(  # the CLI runs its own event loop
        CliRunner().invoke,
        main,
        [
            "reconcile",
            "--since",
            str(day),
            "--until",
            str(day),
            "--report",
            str(tmp_path / "r.json"),
        ],
        env=env,
    )
    assert result.exit_code == 1 and "MISSING" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["counts"]["missing"] == len(
        with_audio
    ) - len(half)

    await archive_calls(settings, [c.sid for c in with_audio])
    still = await asyncio.to_thread(
        CliRunner().invoke, main, ["reconcile", "--since", str(day), "--until", str(day)], env=env
    )
    assert still.exit_code == 1, still.output  # a call still active: not complete yet
    active.end = active.ready_at = datetime.now(IST) - timedelta(minutes=1)
    await archive_calls(settings, [active.sid])
    again = await asyncio.to_thread(
        CliRunner().invoke, main, ["reconcile", "--since", str(day), "--until", str(day)], env=env
    )
    assert again.exit_code == 0, again.output


async def test_a_call_still_in_post_call_processing_is_not_reported_complete(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """Listed without a recording because Exotel is still processing it: not 'no recording'.

    Issue 13, item 3 (the same trust in a young listing, in reconcile): the call was reported
    no_recording_at_source and the range complete, exit 0."""
    processing = sim.add_call(state="processing")
    never_seen = sim.add_call(state="processing")
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    settings = load_settings(env=env)
    await archive_calls(settings, [processing.sid])  # v3 says active: not ready
    day = processing.created.astimezone(IST).date()
    report = await reconcile(settings, day, day)
    states = {c["call_sid"]: c["state"] for c in report.calls}
    assert states[processing.sid] == "still_active"
    assert states[never_seen.sid] == "recording_pending"
    assert not report.complete
