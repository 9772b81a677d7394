"""backfill: a simulated month through v1 paging, a plan that matches the run, and resumption."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import archiver.backfill as backfill_module
from archiver.backfill import check_range
from archiver.cli import main
from archiver.errors import ConfigError
from archiver.exotel.models import IST
from archiver.ledger import Ledger
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env, outcome

FAST = {"EXOTEL_RATE_LIMIT": "6000"}
"""For the month-long ranges (~200 requests): the simulator has no 200/min limit, and waiting
a minute for the default 120/min share proves nothing here (tests/test_budget.py measures it)."""


def invoke(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, args, env=env)


@pytest.fixture
def month(sim: Simulator) -> tuple[date, date, list[Any]]:
    """A month of calls, 12 on each of 20 days (some without recording), ending 3 days ago."""
    until = datetime.now(IST).date() - timedelta(days=3)
    since = until - timedelta(days=29)
    calls = []
    for n in range(20):
        calls += sim.populate(12, day=since + timedelta(days=n * 29 // 19), sizes=(2000, 6000))
    return since, until, calls


def test_a_month_dry_run_then_real_run_then_resume(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, month: tuple[date, date, list[Any]]
) -> None:
    since, until, calls = month
    with_audio = {c.sid for c in calls if c.recordings}
    env = {**exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state"), **FAST}
    args = ["backfill", "--since", str(since), "--until", str(until)]

    dry = invoke([*args, "--dry-run", "--report", str(tmp_path / "plan.json")], env)
    assert dry.exit_code == 0, dry.output
    plan = json.loads((tmp_path / "plan.json").read_text())["plan"]
    assert plan["calls_listed"] == len(calls) == 240
    assert plan["to_archive"] == len(with_audio) and plan["already_archived"] == 0
    assert plan["no_recording"] == len(calls) - len(with_audio)
    assert plan["listing_requests"] == sim.counters["v1_bulk"] == 3  # 240 calls, 100 a page
    assert sim.counters["v3_call_details"] == 0 and not (tmp_path / "out").exists()

    real = invoke(args, env)
    assert real.exit_code == 0, real.output
    summary = json.loads((tmp_path / "state" / f"backfill-{since}-{until}.json").read_text())
    assert summary["result"]["counts"]["archived"] == plan["to_archive"]  # the plan held
    assert sim.counters["v1_bulk"] == 3  # the saved complete listing was reused
    assert sim.counters["v3_call_details"] == len(with_audio)  # one request per call, no more
    stored = {p.parent.name for p in (tmp_path / "out").rglob("recording-*.*")}
    assert stored == with_audio

    range_args = ["backfill", "--range", f"{since}..{until}"]  # the systemd template's form
    again = invoke([*range_args, "--dry-run", "--report", str(tmp_path / "again.json")], env)
    replan = json.loads((tmp_path / "again.json").read_text())["plan"]
    assert again.exit_code == 0 and replan["to_archive"] == 0
    assert replan["already_archived"] == len(with_audio) and replan["listing_requests"] == 0


def test_an_interrupted_backfill_continues_where_it_stopped(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, month: tuple[date, date, list[Any]]
) -> None:
    since, until, calls = month
    with_audio = [c for c in calls if c.recordings]
    env = {**exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state"), **FAST}
    args = ["backfill", "--since", str(since), "--until", str(until)]
    for c in with_audio[40:]:  # the first run dies part-way: these calls fail
        sim.faults.always_cut.add(c.sid)
    first = invoke([*args, "--attempts", "1"], env)
    assert first.exit_code == 1  # never 0 when something failed
    sim.faults.always_cut.clear()
    details_before = sim.counters["v3_call_details"]

    second = invoke(args, env)
    assert second.exit_code == 0, second.output
    assert sim.counters["v3_call_details"] - details_before == len(with_audio) - 40
    assert {p.parent.name for p in (tmp_path / "out").rglob("recording-*.*")} == {
        c.sid for c in with_audio
    }
    assert len(list((tmp_path / "out").rglob("recording-*.*"))) == sum(
        len(c.recordings) for c in with_audio
    )  # nothing twice


@pytest.mark.parametrize(
    "since, until, message",
    [
        (date(2026, 3, 1), date(2026, 3, 2), "six-month"),
        (date(2026, 11, 10), date(2026, 11, 1), "after --until"),
        (date(2026, 11, 10), date(2026, 12, 31), "in the future"),
    ],
)
def test_ranges_exotel_cannot_answer_are_refused(since: date, until: date, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_range(since, until, today=date(2026, 11, 22))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--range", "2026-05-01"], "is not SINCE..UNTIL"),
        (["--range", "2026-05-01..2026-13-01"], "is not SINCE..UNTIL"),
        (["--range", "2026-05-01..2026-05-02", "--since", "2026-05-01"], "not both"),
        (["--since", "2026-05-01"], "give --since and --until"),
    ],
)
def test_backfill_range_arguments_are_checked(args: list[str], message: str) -> None:
    result = invoke(["backfill", *args], {})
    assert result.exit_code == 2 and message in result.output


def test_a_range_too_old_exits_2_with_the_reason(tmp_path: Path) -> None:
    env = {
        "EXOTEL_ACCOUNT_SID": "a",
        "EXOTEL_API_KEY": "k",
        "EXOTEL_API_TOKEN": "t",
        "ARCHIVER_STATE_DIR": str(tmp_path),
        "ARCHIVER_CONFIG": "",
    }
    result = invoke(["backfill", "--since", "2020-01-01", "--until", "2020-01-02"], env)
    assert (
        result.exit_code == 2 and "six-month" in result.output and "Traceback" not in result.output
    )


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_killed_mid_run_then_resumed_archives_everything_once(
    sim: Simulator,
    server: SimulatorServer,
    tmp_path: Path,
    month: tuple[date, date, list[Any]],
    signal_number: int,
) -> None:
    since, until, calls = month
    with_audio = [c for c in calls if c.recordings]
    out = tmp_path / "out"
    env = {**os.environ, **exotel_env(sim, server.base_url, str(out), tmp_path / "state"), **FAST}
    args = [
        sys.executable,
        "-m",
        "archiver",
        "backfill",
        "--since",
        str(since),
        "--until",
        str(until),
    ]
    sim.faults.bandwidth = 20_000  # slow enough to be interrupted part-way
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.rglob("recording-*.*"))) < 5:
        time.sleep(0.05)
    proc.send_signal(signal_number)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert b"Traceback" not in err
    done_before = len(list(out.rglob("recording-*.*")))
    assert 0 < done_before < sum(len(c.recordings) for c in with_audio)

    sim.faults.bandwidth = None
    resumed = subprocess.run(args, env=env, capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    files = list(out.rglob("recording-*.*"))
    assert len(files) == sum(len(c.recordings) for c in with_audio)  # all, and none twice
    verified = subprocess.run(
        [sys.executable, "-m", "archiver", "verify"], env=env, capture_output=True, timeout=120
    )
    assert verified.returncode == 0, verified.stdout.decode() + verified.stderr.decode()


def test_a_range_reaching_now_with_calls_in_progress_and_processing(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    now = datetime.now(IST)
    done = sim.add_call(recordings=1, size=3000)
    processing = sim.add_call(state="processing", recordings=1, size=3000)  # ended minutes ago
    talking = sim.add_call(state="active", recordings=1, size=3000)  # never listed by v1
    silent = sim.add_call(recordings=0, created=now - timedelta(hours=20))
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    since = (now - timedelta(days=1)).date()
    args = ["backfill", "--since", str(since), "--until", str(now.date())]

    first = invoke([*args, "--report", str(tmp_path / "first.json")], env)
    assert first.exit_code == 0, first.output  # still active is not a failure
    result = json.loads((tmp_path / "first.json").read_text())["result"]
    assert result["counts"]["archived"] == 1 and result["counts"]["not_ready"] == 1
    assert "not ready" in first.output and processing.sid in first.output
    plan = json.loads((tmp_path / "first.json").read_text())["plan"]
    assert plan["calls_listed"] == 3 and plan["no_recording"] == 1  # silent only
    assert {p.parent.name for p in (tmp_path / "out").rglob("recording-*")} == {done.sid}

    sim.finish(processing.sid)
    sim.finish(talking.sid)
    again = invoke(args, env)
    assert again.exit_code == 0, again.output
    stored = {p.parent.name for p in (tmp_path / "out").rglob("recording-*")}
    assert stored == {done.sid, processing.sid, talking.sid} and silent.sid not in stored


# --- a saved listing is trusted only once the range has settled (issue 13, item 3) ----------


def at(monkeypatch: pytest.MonkeyPatch, when: datetime) -> None:
    """Make the backfill believe its listing begins at ``when``."""
    monkeypatch.setattr(backfill_module, "wall_clock", lambda tz: when.astimezone(tz))


def saved_listings(state: Path) -> dict[str, datetime]:
    """The listings the ledger keeps for reuse: range key → when the listing began."""
    with closing(sqlite3.connect(state / "ledger.sqlite3")) as db:
        rows = db.execute("SELECT range_key, listed_at FROM listings").fetchall()
    return {key: datetime.fromisoformat(when) for key, when in rows}


def stored_sids(out: Path) -> set[str]:
    return {p.parent.name for p in out.rglob("recording-*")}


def test_a_listing_made_minutes_after_the_range_ended_is_not_reused(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Yesterday backfilled at 00:10: a call still being processed, one still in progress."""
    midnight = datetime.combine(datetime.now(IST).date(), time_of_day.min, IST)
    day = midnight.date() - timedelta(days=1)
    done = sim.add_call(recordings=1, size=3000, created=midnight - timedelta(hours=14))
    silent = sim.add_call(
        recordings=0, status="to_leg_unanswered", created=midnight - timedelta(hours=13)
    )
    late = sim.add_call(
        state="processing", recordings=1, size=3000, created=midnight - timedelta(minutes=10)
    )
    talking = sim.add_call(
        state="active", recordings=1, size=3000, created=midnight - timedelta(minutes=5)
    )
    out, state = tmp_path / "out", tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(out), state)
    args = ["backfill", "--since", str(day), "--until", str(day)]

    at(monkeypatch, midnight + timedelta(minutes=10))
    first = invoke([*args, "--report", str(tmp_path / "first.json")], env)
    assert first.exit_code == 0, first.output
    plan = json.loads((tmp_path / "first.json").read_text())["plan"]
    assert plan["calls_listed"] == 3  # `talking` is still in progress: Exotel does not list it
    assert plan["listing_complete"] is False
    assert stored_sids(out) == {done.sid}
    assert outcome(state, late.sid) == "not_ready"
    assert saved_listings(state) == {}  # not complete: nothing kept for reuse

    sim.finish(late.sid)
    sim.finish(talking.sid)
    at(monkeypatch, midnight + timedelta(hours=7))  # past the default settle margin
    second = invoke([*args, "--report", str(tmp_path / "second.json")], env)
    assert second.exit_code == 0, second.output
    plan = json.loads((tmp_path / "second.json").read_text())["plan"]
    assert plan["calls_listed"] == 4 and plan["listing_requests"] == 1  # listed again
    assert plan["listing_complete"] is True
    assert stored_sids(out) == {done.sid, late.sid, talking.sid}
    assert outcome(state, late.sid) == outcome(state, talking.sid) == "archived"
    assert list(saved_listings(state).values()) == [midnight + timedelta(hours=7)]

    third = invoke([*args, "--dry-run", "--report", str(tmp_path / "third.json")], env)
    plan = json.loads((tmp_path / "third.json").read_text())["plan"]
    assert third.exit_code == 0 and plan["listing_requests"] == 0  # complete: reused
    assert plan["already_archived"] == 3 and plan["no_recording"] == 1 and silent.sid


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_a_range_listed_while_it_reached_today_is_listed_again_later(
    sim: Simulator,
    server: SimulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dry_run: bool,
) -> None:
    """Backfilled on its own day at 20:00; a call made at 21:00 is archived by the next run."""
    day = datetime.now(IST).date() - timedelta(days=1)
    evening = datetime.combine(day, time_of_day(20, 0), IST)
    before = sim.add_call(recordings=1, size=3000, created=evening - timedelta(hours=3))
    out, state = tmp_path / "out", tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(out), state)
    args = ["backfill", "--since", str(day), "--until", str(day)]

    at(monkeypatch, evening)
    first = invoke([*args, "--dry-run"] if dry_run else args, env)
    assert first.exit_code == 0, first.output
    assert saved_listings(state) == {}  # a dry run saves no more than a run would

    later = sim.add_call(recordings=1, size=3000, created=evening + timedelta(hours=1))
    at(monkeypatch, datetime.now(IST))
    second = invoke(args, env)
    assert second.exit_code == 0, second.output
    assert stored_sids(out) == {before.sid, later.sid}
    assert outcome(state, later.sid) == "archived"


@pytest.mark.parametrize("known_as", ["not_ready", "pending", "failed"])
def test_a_call_the_ledger_knows_unfinished_is_never_no_recording_from_a_listing(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, known_as: str
) -> None:
    day = datetime.now(IST).date() - timedelta(days=3)
    call = sim.add_call(
        state="processing",
        recordings=1,
        size=3000,
        created=datetime.combine(day, time_of_day(23, 50), IST),
    )
    out, state = tmp_path / "out", tmp_path / "state"
    ledger = Ledger(state / "ledger.sqlite3")
    ledger.set_call(call.sid, known_as, detail="seen before")
    ledger.close()
    env = exotel_env(sim, server.base_url, str(out), state)
    args = ["backfill", "--since", str(day), "--until", str(day)]

    first = invoke([*args, "--report", str(tmp_path / "first.json")], env)
    assert first.exit_code == 0, first.output
    summary = json.loads((tmp_path / "first.json").read_text())
    assert summary["plan"]["no_recording"] == 0 and summary["plan"]["to_archive"] == 1
    assert summary["result"]["counts"]["not_ready"] == 1
    assert outcome(state, call.sid) == "not_ready"

    sim.finish(call.sid)
    second = invoke([*args, "--report", str(tmp_path / "second.json")], env)
    assert second.exit_code == 0, second.output
    plan = json.loads((tmp_path / "second.json").read_text())["plan"]
    assert plan["listing_requests"] == 0  # the saved listing (call without recording) reused
    assert plan["to_archive"] == 1 and plan["no_recording"] == 0
    assert stored_sids(out) == {call.sid} and outcome(state, call.sid) == "archived"


def test_a_listing_saved_under_another_time_zone_is_not_reused(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    day = datetime.now(IST).date() - timedelta(days=3)
    sim.populate(5, day=day, sizes=(2000, 3000))
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")
    args = ["backfill", "--since", str(day), "--until", str(day), "--dry-run"]
    assert invoke(args, env).exit_code == 0
    assert sim.counters["v1_bulk"] == 1

    utc = invoke([*args, "--report", str(tmp_path / "utc.json")], {**env, "EXOTEL_TIMEZONE": "UTC"})
    assert utc.exit_code == 0, utc.output
    assert json.loads((tmp_path / "utc.json").read_text())["plan"]["listing_requests"] == 1
    assert sim.counters["v1_bulk"] == 2  # the same dates are other instants in UTC

    ist = invoke(args, {**env, "EXOTEL_TIMEZONE": "Asia/Kolkata"})
    assert ist.exit_code == 0 and sim.counters["v1_bulk"] == 2  # its own listing, reused


@pytest.mark.parametrize(
    "settle, after, complete",
    [
        (None, timedelta(hours=6), True),  # the default margin: 6 hours
        (None, timedelta(hours=6, seconds=-1), False),
        ("1", timedelta(hours=1), True),
        ("1", timedelta(minutes=59), False),
    ],
)
def test_a_listing_is_complete_once_the_range_end_plus_the_settle_margin_has_passed(
    sim: Simulator,
    server: SimulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settle: str | None,
    after: timedelta,
    complete: bool,
) -> None:
    midnight = datetime.combine(datetime.now(IST).date(), time_of_day.min, IST)
    day = midnight.date() - timedelta(days=1)
    sim.add_call(recordings=1, size=3000, created=midnight - timedelta(hours=12))
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "out"), state)
    if settle is not None:
        env["ARCHIVER_LISTING_SETTLE"] = settle
    at(monkeypatch, midnight + after)
    result = invoke(["backfill", "--range", f"{day}..{day}", "--dry-run"], env)
    assert result.exit_code == 0, result.output
    assert len(saved_listings(state)) == (1 if complete else 0)
    assert ("listing saved" in result.output) is complete


# --- plan, result and summary count the same things (issue 13, item 8) -----------------------


def test_plan_result_and_summary_agree_on_a_mixed_range(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    day = datetime.now(IST).date() - timedelta(days=3)
    calls = sim.populate(30, day=day, sizes=(2000, 6000))
    with_audio = [c for c in calls if c.recordings]
    silent = [c for c in calls if not c.recordings]
    assert len(silent) >= 2 and len(with_audio) >= 10
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/exotel", state)
    early = invoke(["archive", *[c.sid for c in with_audio[:4]]], env)
    assert early.exit_code == 0, early.output
    args = ["backfill", "--since", str(day), "--until", str(day)]

    dry = invoke([*args, "--dry-run", "--report", str(tmp_path / "plan.json")], env)
    assert dry.exit_code == 0, dry.output
    plan = json.loads((tmp_path / "plan.json").read_text())["plan"]
    assert plan["calls_listed"] == 30 and plan["already_archived"] == 4
    assert plan["no_recording"] == len(silent) and plan["to_archive"] == len(with_audio) - 4
    assert f"already archived: 4, no recording: {len(silent)}," in dry.output

    real = invoke([*args, "--report", str(tmp_path / "run.json")], env)
    assert real.exit_code == 0, real.output
    summary = json.loads((tmp_path / "run.json").read_text())
    assert {**summary["plan"], "listing_requests": 1} == plan
    counts = summary["result"]["counts"]
    assert counts == {
        "archived": plan["to_archive"],
        "already_archived": plan["already_archived"],
        "not_ready": 0,
        "no_recording": plan["no_recording"],
        "failed": 0,
        "rescued": 0,  # the rescue lane is off here (tests/conftest.py)
    }
    assert sum(counts.values()) == plan["calls_listed"]
    assert (
        f"archived: {plan['to_archive']} calls" in real.output
        and f"already archived: 4, no recording: {len(silent)}," in real.output
    )
    outcomes = {c["call_sid"]: c["outcome"] for c in summary["result"]["calls"]}
    assert outcomes == {
        **{c.sid: "already_archived" for c in with_audio[:4]},
        **{c.sid: "archived" for c in with_audio[4:]},
        **{c.sid: "no_recording" for c in silent},
    }
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]]
    recordings = [k for k in keys if "/recording-" in k]
    assert {k.split("/")[-2] for k in recordings} == {c.sid for c in with_audio}
    assert len(recordings) == sum(len(c.recordings) for c in with_audio)
    assert all(outcome(state, c.sid) == "archived" for c in with_audio)
    assert all(outcome(state, c.sid) is None for c in silent)  # never asked: not recorded


def test_after_a_rebuild_a_call_found_whole_in_the_ledger_is_already_archived(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    day = datetime.now(IST).date() - timedelta(days=3)
    calls = sim.populate(10, day=day, sizes=(2000, 6000))
    with_audio = [c for c in calls if c.recordings]
    destination = f"s3://{bucket}/exotel"
    args = ["backfill", "--since", str(day), "--until", str(day)]
    first = invoke(args, exotel_env(sim, server.base_url, destination, tmp_path / "a"))
    assert first.exit_code == 0, first.output
    client = seaweed.client()

    def contents() -> dict[str, str]:
        return {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}

    before = contents()
    env = exotel_env(sim, server.base_url, destination, tmp_path / "b")  # the state dir lost
    rebuilt = invoke(["manifest", "rebuild"], env)
    assert rebuilt.exit_code == 0, rebuilt.output

    again = invoke([*args, "--report", str(tmp_path / "again.json")], env)
    assert again.exit_code == 0, again.output
    counts = json.loads((tmp_path / "again.json").read_text())["result"]["counts"]
    assert counts["archived"] == 0 and counts["already_archived"] == len(with_audio)
    assert counts["no_recording"] == len(calls) - len(with_audio)
    assert "archived: 0 calls" in again.output
    data_keys = {k for k in contents() if not k.startswith("exotel/_manifest/")}
    assert data_keys == {k for k in before if not k.startswith("exotel/_manifest/")}
    assert all(contents()[k] == before[k] for k in data_keys)  # nothing written again
    assert all(outcome(tmp_path / "b", c.sid) == "archived" for c in with_audio)
