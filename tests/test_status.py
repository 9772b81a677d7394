"""``exotel-archiver status``: the one screen an operator reads first, on a real state directory
after real runs (the simulator over HTTP; SeaweedFS or a local directory). What it prints and
its JSON equal what the ledger and the destination hold; it sends Exotel nothing; it reads the
ledger read-only, so it works beside a worker holding the writer lock."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from archiver.exotel.models import IST
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import exotel_env, invoke

BAD_URL = "https://recordings.example:99999/a.mp3"
"""A recording URL the address policy refuses: the call fails (not retryable), no download."""


def ledger_rows(state: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"{(state / 'ledger.sqlite3').as_uri()}?mode=ro", uri=True)) as db:
        return list(db.execute(sql))


def status(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = invoke(["status", "--json", *args], env)
    return result.exit_code, json.loads(result.stdout)


def test_status_after_a_backfill_into_s3_shows_what_the_ledger_holds_and_what_to_do(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    s3_env: None,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    env = {**exotel_env(sim, server.base_url, f"s3://{bucket}/calls", state), **seaweed.env()}
    day = (sim.now().astimezone(IST) - timedelta(days=25)).date()
    noon = datetime.combine(day, time(12), IST)
    good = [sim.add_call(created=noon + timedelta(minutes=n)).sid for n in range(3)]
    bad = [sim.add_call(created=noon + timedelta(minutes=10 + n)).sid for n in range(2)]
    for sid in bad:
        sim.faults.recording_url_for[sid] = BAD_URL
    active = sim.add_call(state="active").sid
    assert invoke(["archive", active], env).exit_code == 0  # not ready
    backfilled = invoke(["backfill", "--since", str(day), "--until", str(day)], env)
    assert backfilled.exit_code == 1, backfilled.output
    summary = json.loads((state / f"backfill-{day}-{day}.json").read_text())
    requests = sim.counters["api_requests"]

    code, data = status(env)

    assert sim.counters["api_requests"] == requests  # not one Exotel request
    assert code == 1  # failed calls, and the oldest of them 25 days into Exotel's 30
    assert data["exit_code"] == 1
    assert data["state_dir"] == str(state)
    assert data["destination"] == f"s3://{bucket}/calls"
    marker = json.loads(
        seaweed.client()
        .get_object(Bucket=bucket, Key="calls/_manifest/destination.json")["Body"]
        .read()
    )
    assert data["identity"]["archive_id"] == marker["archive_id"]
    assert data["identity"]["state"] == "confirmed"
    assert data["object_lock"] is False
    counts = dict(ledger_rows(state, "SELECT outcome, COUNT(*) FROM calls GROUP BY outcome"))
    assert counts == {"archived": 3, "failed": 2, "not_ready": 1}
    archived = ledger_rows(state, "SELECT call_sid FROM calls WHERE outcome = 'archived'")
    assert sorted(sid for (sid,) in archived) == sorted(good)
    assert data["calls"] == {
        "archived": 3,
        "rescued": 0,
        "pending": 0,
        "not_ready": 1,
        "failed": 2,
        "no_recording": 0,
    }
    reasons = ledger_rows(state, "SELECT DISTINCT reason FROM calls WHERE outcome = 'failed'")
    assert reasons == [("bad_url",)]
    assert [(f["reason"], f["count"], sorted(f["calls"])) for f in data["failures"]] == [
        ("bad_url", 2, sorted(bad))
    ]
    run = data["last_run"]
    assert run["command"] == "backfill" and run["exit_code"] == 1
    assert {k: run["counts"][k] for k in summary["result"]["counts"]} == summary["result"]["counts"]
    assert run["counts"]["failed"] == 2 and run["counts"]["archived"] == 3
    segments = ledger_rows(state, "SELECT number, sha256 FROM segments ORDER BY number")
    assert data["manifest"]["segments"] == len(segments) > 0
    assert data["manifest"]["last_segment"]["number"] == segments[-1][0]
    assert data["manifest"]["last_segment"]["sha256"] == segments[-1][1]
    assert data["manifest"]["unsealed"] == 0
    oldest = data["oldest_unarchived"]
    assert oldest["call_sid"] in bad
    # Created at noon (account time) 25 days before today there: 24.5 to 25.5 days old by now.
    expected = (datetime.now(UTC) - noon).total_seconds() / 86400
    assert abs(oldest["age_days"] - expected) < 0.05 and 24.4 < expected < 25.6
    assert data["source_retention_days"] == 30
    assert abs(oldest["days_left"] - (30 - oldest["age_days"])) < 0.01
    attention = [a for a in data["advice"] if a["level"] == "attention"]
    assert len(attention) == 2, data["advice"]
    # The failed calls come longest-failed first: the two failed at once, in either order.
    retry = [a["command"].split() for a in attention if a["command"].count(" ") == len(bad) + 1]
    assert [(c[:2], sorted(c[2:])) for c in retry] == [
        (["exotel-archiver", "archive"], sorted(bad))
    ], attention
    assert any("Exotel deletes recordings after 30 days" in a["problem"] for a in attention)

    text = invoke(["status"], env)
    assert text.exit_code == 1
    out = text.stdout
    assert f"archive {marker['archive_id']}" in out
    assert "archived 3, pending 0, not ready 1, failed 2, no recording 0" in out
    assert any(
        f"2 calls failed (bad_url): exotel-archiver archive {' '.join(order)} retries them" in out
        for order in (bad, bad[::-1])
    ), out
    assert "last run     backfill" in out and "exit 1" in out
    assert f"{len(segments)} sealed" in out
    assert "Object Lock  not enabled" in out
    assert sim.counters["api_requests"] == requests


def test_status_works_beside_a_worker_holding_the_writer_lock_local_destination(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    state, archive = tmp_path / "state", tmp_path / "archive"
    env = exotel_env(sim, server.base_url, str(archive), state)
    sids = [sim.add_call().sid, sim.add_call(recordings=2).sid]
    assert invoke(["archive", *sids], env).exit_code == 0
    requests = sim.counters["api_requests"]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from archiver.ledger import writer_lock\n"
            "with writer_lock(Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(60)",
            str(state),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        busy = invoke(["archive", sim.add_call().sid], env)
        assert busy.exit_code == 2 and "another exotel-archiver process" in busy.output
        code, data = status(env)
        text = invoke(["status"], env)
    finally:
        holder.terminate()
        holder.wait(10)
    assert code == 0, data["advice"]
    assert data["calls"]["archived"] == 2 and data["calls"]["failed"] == 0
    assert data["object_lock"] is None  # a local directory has none
    assert data["identity"]["state"] == "confirmed"
    # The refused run (exit 2, another process held the lock) did nothing: not recorded.
    assert data["last_run"]["command"] == "archive" and data["last_run"]["exit_code"] == 0
    assert data["last_run"]["counts"]["archived"] == 2 and data["last_run"]["error"] is None
    assert text.exit_code == 0
    assert "Object Lock  not available (local directory)" in text.stdout
    assert "nothing needs attention" in text.stdout
    assert sim.counters["api_requests"] == requests


def test_status_of_an_object_lock_bucket(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    lock_bucket: str,
    s3_env: None,
    tmp_path: Path,
) -> None:
    env = {
        **exotel_env(sim, server.base_url, f"s3://{lock_bucket}/calls", tmp_path / "state"),
        **seaweed.env(),
    }
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    code, data = status(env)
    assert code == 0 and data["object_lock"] is True
    assert data["last_run"]["command"] == "archive" and data["last_run"]["exit_code"] == 0
    assert data["last_run"]["counts"]["archived"] == 1


def test_status_without_a_state_directory_says_what_to_run_and_creates_nothing(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), state)
    result = invoke(["status"], env)
    assert result.exit_code == 2
    assert f"nothing archived yet from the state directory {state}" in result.output
    assert "Traceback" not in result.output
    code, data = status(env)
    assert code == 2 and data["exit_code"] == 2
    assert "nothing archived yet" in data["error"]
    assert not state.exists() and not (tmp_path / "archive").exists()
    assert sim.counters["api_requests"] == 0


def test_status_of_a_destination_that_lost_its_marker_is_a_config_problem_with_the_facts(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    state, archive = tmp_path / "state", tmp_path / "archive"
    env = exotel_env(sim, server.base_url, str(archive), state)
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    (archive / "_manifest" / "destination.json").unlink()
    code, data = status(env)
    assert code == 2
    assert data["identity"]["state"] == "mismatch"
    assert data["calls"]["archived"] == 1  # the ledger's facts are still there
    (problem,) = [a for a in data["advice"] if a["level"] == "config"]
    assert "lost its identity marker" in problem["fix"]
    text = invoke(["status"], env)
    assert text.exit_code == 2 and "!! the destination is not this ledger's" in text.stdout
    assert not (archive / "_manifest" / "destination.json").exists()  # status wrote nothing
