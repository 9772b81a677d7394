"""Adversarial review of backfill listings, counts, reconcile and sealing (h-break3).

Each test runs the real archiver against the Exotel simulator over HTTP (and SeaweedFS where a
bucket is named), and failed on the code as landed.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from archiver.cli import main
from archiver.config import load_settings
from archiver.exotel.models import IST
from archiver.ledger import Ledger
from archiver.reconcile import reconcile
from archiver.simulator import Simulator, SimulatorServer
from archiver.simulator.calls import fmt_v1
from tests.support import exotel_env


def invoke(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, args, env=env)


def v1_page(items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"Metadata": {"NextPageUri": None}, "Calls": items}).encode()


def v1_item(sim: Simulator, sid: str, *, recording: bool) -> dict[str, Any]:
    call = sim.calls[sid]
    return {
        "Sid": sid,
        "DateCreated": fmt_v1(call.created),
        "Status": "completed",
        "RecordingUrl": "https://recordings.example/x.mp3" if recording else None,
    }


# --- 1. a call listed twice --------------------------------------------------------------------


def test_a_call_listed_twice_is_counted_once_in_plan_and_result(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """v1 pages (offset paging while calls are added) can repeat a call. The plan counted it
    twice (calls_listed 3, to_archive 3), the run archived it once: the result's counts added up
    to 2, not the plan's calls_listed — and the saved listing (one row a call) made the next
    plan of the same settled range say 2."""
    day = datetime.now(IST).date() - timedelta(days=3)
    created = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=10)
    a = sim.add_call(recordings=1, size=3000, created=created)
    b = sim.add_call(recordings=1, size=3000, created=created + timedelta(hours=1))
    item_a, item_b = (v1_item(sim, c.sid, recording=True) for c in (a, b))
    sim.faults.bulk_body = v1_page([item_a, item_a, item_b])
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), state)
    args = ["backfill", "--since", str(day), "--until", str(day)]

    run = invoke([*args, "--report", str(tmp_path / "run.json")], env)
    assert run.exit_code == 0, run.output
    summary = json.loads((tmp_path / "run.json").read_text())
    plan, counts = summary["plan"], summary["result"]["counts"]
    assert sum(counts.values()) == plan["calls_listed"] == 2, (plan, counts)
    assert plan["to_archive"] == counts["archived"] == 2

    again = invoke([*args, "--dry-run", "--report", str(tmp_path / "again.json")], env)
    replan = json.loads((tmp_path / "again.json").read_text())["plan"]
    assert again.exit_code == 0 and replan["listing_requests"] == 0
    assert replan["calls_listed"] == plan["calls_listed"]


def test_a_call_listed_twice_with_and_without_a_recording_is_archived(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """The same call on two pages, once before its recording showed. The dry run saved one row
    for it (the last inserted: without recording); the real run reused the saved listing and
    counted the call `no recording` — never asked, never archived: silent loss."""
    day = datetime.now(IST).date() - timedelta(days=3)
    created = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=10)
    call = sim.add_call(recordings=1, size=3000, created=created)
    sim.faults.bulk_body = v1_page(
        [v1_item(sim, call.sid, recording=True), v1_item(sim, call.sid, recording=False)]
    )
    out, state = tmp_path / "out", tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(out), state)
    args = ["backfill", "--since", str(day), "--until", str(day)]
    dry = invoke([*args, "--dry-run", "--report", str(tmp_path / "dry.json")], env)
    assert dry.exit_code == 0, dry.output
    plan = json.loads((tmp_path / "dry.json").read_text())["plan"]
    assert (plan["calls_listed"], plan["to_archive"], plan["no_recording"]) == (1, 1, 0), plan

    run = invoke(args, env)
    assert run.exit_code == 0, run.output
    assert {p.parent.name for p in out.rglob("recording-*")} == {call.sid}


# --- 2. the dry run's plan and the run's summary -----------------------------------------------


def test_a_dry_run_does_not_overwrite_the_summary_of_the_run(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """Both wrote STATE_DIR/backfill-SINCE-UNTIL.json by default: a dry run after the run (to
    check what is left) replaced the run's result — the record of what was archived — with a
    plan."""
    day = datetime.now(IST).date() - timedelta(days=3)
    sim.populate(5, day=day, sizes=(2000, 3000))
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), state)
    args = ["backfill", "--since", str(day), "--until", str(day)]
    assert invoke(args, env).exit_code == 0
    summary_path = state / f"backfill-{day}-{day}.json"
    before = json.loads(summary_path.read_text())
    assert "result" in before
    dry = invoke([*args, "--dry-run"], env)
    assert dry.exit_code == 0, dry.output
    assert json.loads(summary_path.read_text()) == before  # the run's summary is kept


# --- 3. reconcile ----------------------------------------------------------------------------


async def test_reconcile_does_not_call_a_range_complete_while_the_worker_tracks_a_call_in_it(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """The worker found a call in progress (ledger: pending, with its start time). Exotel's v1
    listing never shows calls in progress, and reconcile added from the ledger only calls
    `not_ready`: the range was reported complete (exit 0) with a call of it still going on."""
    done = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(minutes=30))
    talking = sim.add_call(state="active", created=sim.now() - timedelta(minutes=20))
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    settings = load_settings(env=env)
    from archiver.archive import archive_calls

    await archive_calls(settings, [done.sid])
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:  # what the worker's active-calls poll does (daemon.py)
        ledger.track_call(talking.sid, created_time=talking.created.isoformat())
    finally:
        ledger.close()
    day = talking.created.astimezone(IST).date()
    if done.created.astimezone(IST).date() != day:  # just after midnight: both on one day
        day = done.created.astimezone(IST).date()
    report = await reconcile(settings, day, talking.created.astimezone(IST).date())
    states = {c["call_sid"]: c["state"] for c in report.calls}
    assert states.get(talking.sid) == "still_active", states
    assert not report.complete


async def test_reconcile_names_a_failed_call_exotel_no_longer_lists(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A call the ledger has `failed` (found by the worker, its recording host answered 404)
    that the v1 listing does not show is not reported at all: the range is `complete`."""
    day = datetime.now(IST).date() - timedelta(days=2)
    created = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=9)
    kept = sim.add_call(recordings=1, size=3000, created=created)
    lost = sim.add_call(recordings=1, size=3000, created=created + timedelta(hours=1))
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    settings = load_settings(env=env)
    from archiver.archive import archive_calls

    await archive_calls(settings, [kept.sid])
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        ledger.set_call(
            lost.sid, "failed", created_time=lost.created.isoformat(), detail="recording 404"
        )
    finally:
        ledger.close()
    sim.faults.bulk_body = v1_page([v1_item(sim, kept.sid, recording=True)])
    report = await reconcile(settings, day, day)
    states = {c["call_sid"]: c["state"] for c in report.calls}
    assert states.get(lost.sid) == "missing", states
    assert not report.complete


def test_reconcile_with_a_worker_call_tracked_without_an_offset_does_not_crash(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A ledger row whose created time has no offset (a ledger from another version, a hand):
    `datetime.fromisoformat(created)` compared with aware bounds raised TypeError — a
    traceback instead of a report."""
    day = datetime.now(IST).date() - timedelta(days=2)
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    try:
        ledger.set_call("c" * 32, "not_ready", created_time=f"{day}T10:00:00")
    finally:
        ledger.close()
    result = invoke(["reconcile", "--since", str(day), "--until", str(day)], env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 1, result.output  # the call is still active: not complete


# --- 4. sealing and the marker with a lost answer ----------------------------------------------


def test_a_lost_answer_on_the_segment_put_or_the_marker_put_is_not_a_conflict(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    from tests.s3proxy import FaultyS3Proxy
    from tests.test_break_identity import chain_keys_of

    with FaultyS3Proxy(seaweed.endpoint) as proxy:
        for name in ("_manifest/segments/", "_manifest/destination.json"):
            proxy.fail(
                lambda method, path, name=name: method == "PUT" and name in path,
                times=1,
                action="lost_answer",
            )
        env = {
            **exotel_env(sim, server.base_url, f"s3://{bucket}/p", tmp_path / "state"),
            "AWS_ENDPOINT_URL": proxy.endpoint,
        }
        first, second = sim.add_call(), sim.add_call()
        one = invoke(["archive", first.sid], env)
        assert one.exit_code == 0, one.output
        two = invoke(["archive", second.sid], env)
        assert two.exit_code == 0, two.output
        assert proxy.injected["lost_answer"] == 2, proxy.injected
        keys = asyncio.run(chain_keys_of(env))
        assert any(first.sid in k for k in keys) and any(second.sid in k for k in keys)
        verified = invoke(["verify"], env)
        assert verified.exit_code == 0, verified.output


async def test_reconcile_does_not_call_a_call_purged_by_retention_archived(
    sim: Simulator, server: SimulatorServer, s3_env: None, seaweed: Any, tmp_path: Path
) -> None:
    """A call archived, then its recording deleted by `retention purge` (period 30 d, the call
    40 d old, still in Exotel's six-month listing): reconcile says `archived`, complete — the
    destination holds no recording of it."""
    from datetime import UTC

    from archiver.archive import archive_calls
    from archiver.retention.archive import open_retention
    from archiver.retention.jobs import purge
    from tests.test_retention import settings_for

    lock_bucket = f"lock-brk3-{datetime.now(UTC):%H%M%S%f}"
    seaweed.client().create_bucket(Bucket=lock_bucket, ObjectLockEnabledForBucket=True)
    old = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    settings = settings_for(sim, server, tmp_path, lock_bucket)
    await archive_calls(settings, [old.sid])
    async with open_retention(settings, actor="dpo@example") as archive:
        done = await purge(archive, dry_run=False)
    assert not done.failures and done.rows, done.rows
    day = old.created.astimezone(IST).date()
    report = await reconcile(settings, day, day)
    states = {c["call_sid"]: c["state"] for c in report.calls}
    assert states[old.sid] == "erased", states
    assert report.complete  # erased under the rules is settled, not missing
