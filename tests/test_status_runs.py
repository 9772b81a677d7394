"""``status`` and the record of runs: a run is recorded as it starts and completed as it ends,
a run refused its settings is recorded where its ledger is (and nowhere else), an old ledger's
``runs`` table takes rows without an end, and calls that are stuck or of unknown age are named.
Real parts only: the simulator over HTTP, a local destination, ``python -m archiver`` processes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import timedelta
from pathlib import Path

from archiver.ledger import Ledger, utc_now
from archiver.simulator import Simulator, SimulatorServer
from tests.support import clean_env, exotel_env, invoke, ledger_rows, status_json, wait_for


def test_a_running_worker_is_still_running_and_its_run_is_completed_when_it_stops(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = {
        **{k: v for k, v in clean_env().items() if not k.startswith(("AWS_", "NOTIFY_"))},
        **exotel_env(sim, server.base_url, str(tmp_path / "archive"), state),
        "ARCHIVER_POLL_INTERVAL": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    worker = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: ledger_rows(state, "SELECT command, ended_at FROM runs")[-1] == ("run", None)
        )
        # Its row is written as it starts, a moment before it takes the writer lock.
        wait_for(lambda: status_json(env)[1]["writer_running"] is True)
        code, data = status_json(env)
        text = invoke(["status"], env).stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    assert data["writer_running"] is True and data["last_run_state"] == "running"
    assert data["last_run"]["command"] == "run" and data["last_run"]["ended_at"] is None
    assert code == 0, data["advice"]
    assert "last run     run, started" in text and "still running" in text
    code, data = status_json(env)
    assert data["writer_running"] is False
    assert data["last_run"]["command"] == "run" and data["last_run"]["exit_code"] == 0
    assert data["last_run"]["ended_at"] is not None
    assert code == 0, data["advice"]
    assert [c for (c,) in ledger_rows(state, "SELECT command FROM runs")] == ["archive", "run"]


def test_a_start_refused_its_settings_is_recorded_only_where_a_ledger_is(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), state)
    env.pop("ARCHIVER_STATE_DIR", None)
    config = tmp_path / "archiver.toml"
    config.write_text(f'[archiver]\nstate_dir = "{state}"\n')
    env["ARCHIVER_CONFIG"] = str(config)
    # No ledger there yet: nothing is recorded, and no state directory is made for it.
    refused = invoke(["run", "--metrics-listen", "9101"], env)
    assert refused.exit_code == 2
    assert not state.exists()
    # Once a ledger exists (found through the config file's state_dir), the refusal is recorded.
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    assert invoke(["run", "--metrics-listen", "9101"], env).exit_code == 2
    code, data = status_json(env)
    run = data["last_run"]
    assert (run["command"], run["exit_code"]) == ("run", 2)
    assert "--metrics-listen" in run["error"] and "HOST:PORT" in run["error"]
    assert code == 1
    assert any("exited 2" in a["problem"] for a in data["advice"] if a["level"] == "attention")
    assert sim.counters["api_requests"] == 1  # the archive's one; the refused runs sent none


def test_an_old_ledgers_runs_table_is_rebuilt_to_take_a_run_without_an_end(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, command TEXT NOT NULL, "
            "started_at TEXT NOT NULL, ended_at TEXT NOT NULL, exit_code INTEGER NOT NULL, "
            "counts TEXT NOT NULL, error TEXT)"
        )
        db.execute(
            "INSERT INTO runs (command, started_at, ended_at, exit_code, counts) "
            "VALUES ('backfill', '2026-01-01T00:00:00.000Z', '2026-01-01T00:01:00.000Z', 1, '{}')"
        )
        db.commit()
    ledger = Ledger(path)
    try:
        first = ledger.last_run()
        assert first is not None and (first.command, first.exit_code) == ("backfill", 1)
        ledger.start_run("run", "2026-01-02T00:00:00.000Z", 4242)
        last = ledger.last_run()
        assert last is not None and last.command == "run"
        assert last.ended_at is None and last.exit_code is None and last.pid == 4242
    finally:
        ledger.close()
    tables = [
        t for (t,) in ledger_rows(tmp_path, "SELECT name FROM sqlite_master WHERE type='table'")
    ]
    assert "runs_before_starts" not in tables


def test_stuck_calls_are_named_five_then_how_many_more(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state")
    old = sim.now() - timedelta(days=2)
    stuck = [sim.add_call(state="active", created=old + timedelta(minutes=n)).sid for n in range(7)]
    young = sim.add_call(state="active").sid
    assert invoke(["archive", *stuck, young], env).exit_code == 0
    code, data = status_json(env)
    assert code == 1
    (line,) = [a for a in data["advice"] if "daemon.stuck_after" in a["problem"]]
    assert line["level"] == "attention"
    assert line["problem"].startswith("7 calls still active at Exotel more than 6 h")
    assert line["problem"].endswith(f"{', '.join(stuck[:5])} and 2 more")  # the oldest first
    assert line["command"] == f"exotel-archiver archive {' '.join(stuck[:5])}"
    assert any(a["problem"] == "1 call still active when last looked at" for a in data["advice"])
    assert young not in line["problem"]


def test_a_failed_call_of_unknown_age_needs_attention(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A call whose details could not be fetched fails without a created time: status cannot
    tell how near Exotel's retention it is, and says so."""
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), state)
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    missing = "0123456789abcdef0123456789abcdef"
    assert invoke(["archive", missing], env).exit_code == 1
    assert ledger_rows(
        state, f"SELECT outcome, created_time FROM calls WHERE call_sid = '{missing}'"
    ) == [("failed", None)]
    code, data = status_json(env)
    assert code == 1 and data["unknown_age"] == 1 and data["oldest_unarchived"] is None
    (line,) = [a for a in data["advice"] if "unknown age" in a["problem"]]
    assert line["level"] == "attention" and missing in line["problem"]
    assert line["command"] == f"exotel-archiver archive {missing}"


def test_a_run_before_it_takes_the_writer_lock_is_running_until_its_process_is_gone(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A backfill lists calls before it takes the writer lock: its run has no end and the lock
    is free, but its process runs — not a crash. Once that process is gone, it is one."""
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), state)
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    listing = subprocess.Popen(  # an exotel-archiver process that runs until stopped
        [sys.executable, "-m", "archiver", "simulate", "--port", "0", "--calls", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = utc_now()  # recorded once the process runs, as a run's row is
    try:
        ledger = Ledger(state / "ledger.sqlite3")
        try:
            ledger.start_run("backfill", started, listing.pid)
        finally:
            ledger.close()
        code, data = status_json(env)
        assert (data["last_run_state"], data["writer_running"], code) == ("running", False, 0)
        assert "still running" in invoke(["status"], env).stdout
    finally:
        listing.kill()
        listing.wait(10)
    code, data = status_json(env)
    assert (data["last_run_state"], code) == ("stopped", 1)
    (line,) = [a for a in data["advice"] if "stopped without finishing" in a["problem"]]
    assert line["problem"].startswith(f"the last `backfill` (started {started})")
    assert "run `exotel-archiver backfill` again" in line["fix"]


def test_a_status_glancing_at_the_writer_lock_never_refuses_an_archive_starting_then(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """``status`` holds a shared lock on writer.lock for a moment to see whether a writer runs;
    an ``archive`` starting in that moment waits it out instead of being refused as if another
    writer were archiving. A lock held for longer (a real writer) still refuses it, exit 2."""
    import fcntl
    import os
    import threading
    import time

    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), state)
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0

    def glance(seconds: float) -> threading.Thread:
        fd = os.open(state / "writer.lock", os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)

        def release() -> None:
            time.sleep(seconds)
            os.close(fd)

        thread = threading.Thread(target=release)
        thread.start()
        return thread

    thread = glance(0.1)
    archived = invoke(["archive", sim.add_call().sid], env)
    thread.join()
    assert archived.exit_code == 0, archived.output
    thread = glance(3.0)
    refused = invoke(["archive", sim.add_call().sid], env)
    thread.join()
    assert refused.exit_code == 2 and "another exotel-archiver process" in refused.output
