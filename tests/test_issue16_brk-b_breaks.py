"""Issue 16 (items 8 and 9), reviewer brk-b: ways ``exotel-archiver status`` and the coverage
page of ``reconcile --html`` say something false. Real parts only: the simulator over HTTP, a
local destination or SeaweedFS, real ``python -m archiver`` processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import timedelta
from pathlib import Path

from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env, invoke, status_json, wait_for, worker_env

BAD_URL = "https://recordings.example:99999/a.mp3"


def outcomes(state: Path) -> dict[str, str]:
    with closing(sqlite3.connect(f"{(state / 'ledger.sqlite3').as_uri()}?mode=ro", uri=True)) as db:
        return dict(db.execute("SELECT call_sid, outcome FROM calls"))


def test_status_loses_the_age_of_a_call_that_failed_in_a_one_shot_archive(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A call 28 days old (Exotel deletes its recording at 30) fails in `archive SID`: the
    ledger keeps no created time for it, so status shows no oldest unarchived call and no
    retention warning: "oldest unarchived call none (and 1 of unknown age)"."""
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), state)
    ok = sim.add_call().sid
    old = sim.add_call(created=sim.now() - timedelta(days=28)).sid
    sim.faults.recording_url_for[old] = BAD_URL
    assert invoke(["archive", ok], env).exit_code == 0
    assert invoke(["archive", old], env).exit_code == 1
    _, data = status_json(env)
    assert data["calls"]["failed"] == 1
    oldest = data["oldest_unarchived"]
    assert oldest is not None and oldest["call_sid"] == old, (oldest, data["unknown_age"])
    assert any("Exotel deletes recordings" in a["problem"] for a in data["advice"]), data["advice"]


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_status_writes_no_data_into_the_state_directory_or_the_destination(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """status "writes nothing". The breaker showed that it leaves ledger.sqlite3-wal and -shm
    behind: SQLite's read-only open of a WAL database creates them when the directory is
    writable, and the only way around (``immutable=1``) may read a torn state while a worker
    writes, so that stays (docs/operations.md says so). What must hold: no byte of the ledger,
    the writer lock or the destination changes, the -wal is empty (so the ledger's tables and
    rows are those of its unchanged main file) and no other file appears."""
    state, archive = tmp_path / "state", tmp_path / "archive"
    env = exotel_env(sim, server.base_url, str(archive), state)
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    before, stored = tree(state), tree(archive)
    code, _ = status_json(env)
    assert code == 0
    assert invoke(["status"], env).exit_code == 0
    after = tree(state)
    assert set(after) - set(before) <= {"ledger.sqlite3-wal", "ledger.sqlite3-shm"}
    assert after.get("ledger.sqlite3-wal", b"") == b""
    assert {k: v for k, v in after.items() if k in before} == before
    assert tree(archive) == stored


def test_status_says_ok_after_the_worker_was_killed_with_calls_left_pending(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """`exotel-archiver run` (a real process) finds a call in progress (pending in the ledger)
    and is killed -9 (OOM killer, a host crash): no run is recorded, so status shows the
    `archive` before it as the last run, exit 0, and "ok: nothing needs attention" — while no
    worker runs and the call it found is archived by nobody."""
    env = worker_env(sim, server, tmp_path)
    state = tmp_path / "state"
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    active = sim.add_call(state="active").sid
    worker = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: outcomes(state).get(active) == "pending", timeout=60)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    sim.finish(active)  # the call ends; nobody archives it
    code, data = status_json(env)
    text = invoke(["status"], env).stdout
    assert data["calls"]["pending"] == 1
    assert "ok: nothing needs attention" not in text, text
    assert code != 0, data["advice"]


def test_status_says_ok_while_the_worker_fails_to_start_on_a_flag_of_its_unit(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """The systemd unit's `run --metrics-listen ...` has a typo: every start of the worker
    stops with exit 2 (a crash loop) before its settings are read, so no run is recorded, and
    status (run by the operator with the same environment) says "ok: nothing needs attention"
    with the earlier `archive` as the last run."""
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), state)
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    for _ in range(3):  # Restart=on-failure
        started = invoke(["run", "--metrics-listen", "127.0.0.1:91OO"], env)
        assert started.exit_code == 2, started.output
    code, data = status_json(env)
    text = invoke(["status"], env).stdout
    assert data["last_run"]["command"] == "run", data["last_run"]
    assert code != 0 and "ok: nothing needs attention" not in text, text


def test_status_says_ok_for_a_call_not_ready_for_ten_days(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A call Exotel has shown "active" for 10 days (the worker calls a call stuck after
    daemon.stuck_after, 6 h: a warning and the stuck_calls_now gauge): status files it as a
    note, "still active when last looked at", exit 0 and "ok: nothing needs attention"."""
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), state)
    stuck = sim.add_call(state="active", created=sim.now() - timedelta(days=10)).sid
    assert invoke(["archive", stuck], env).exit_code == 0
    assert outcomes(state)[stuck] == "not_ready"
    code, data = status_json(env)
    text = invoke(["status"], env).stdout
    assert data["oldest_unarchived"]["call_sid"] == stuck
    assert data["oldest_unarchived"]["age_days"] > 9.9
    assert code != 0 and "ok: nothing needs attention" not in text, text
