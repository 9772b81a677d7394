"""Issue 16, reviewer brk-d (round two): the record of runs (``recorded``, ``note_run``, the
``runs`` table with its ``pid``) and what ``status`` concludes from it. Each test shows
``status`` saying something false, or a run recorded where it does not belong. Real parts only:
the simulator over HTTP, a local destination, real ``python -m archiver`` processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from archiver.simulator import Simulator, SimulatorServer
from tests.support import (
    exotel_env,
    invoke,
    ledger_rows,
    status_json,
    wait_for,
    worker_env,
)

IST = ZoneInfo("Asia/Kolkata")


def start_worker(env: dict[str, str], state: Path) -> subprocess.Popen[bytes]:
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
        wait_for(lambda: status_json(env)[1]["writer_running"] is True)
    except BaseException:
        worker.kill()
        worker.wait(10)
        raise
    return worker


def test_a_killed_worker_of_a_ledger_from_before_pids_is_still_running_for_ever(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A ledger written by the version before runs kept their pid (``runs`` with ``ended_at``
    nullable, no ``pid`` column), whose worker was killed -9: its row has no end, nobody holds
    the writer lock. That version's status called it stopped (the lock alone); this one finds
    no pid, takes "cannot tell" for "running" and says "still running (pid None)", exit 0,
    "ok: nothing needs attention" — for ever, while no process archives."""
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), state)
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    with closing(sqlite3.connect(state / "ledger.sqlite3")) as db:  # as the older version had it
        db.execute("DROP TABLE runs")
        db.execute(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, command TEXT NOT NULL, "
            "started_at TEXT NOT NULL, ended_at TEXT, exit_code INTEGER, counts TEXT NOT NULL, "
            "error TEXT)"
        )
        db.execute(  # the old worker's run, killed: no end
            "INSERT INTO runs (command, started_at, counts) "
            "VALUES ('run', '2026-11-30T08:00:00.000Z', '{}')"
        )
        db.commit()
    code, data = status_json(env)
    text = invoke(["status"], env).stdout
    assert data["writer_running"] is False
    assert "still running (pid None)" not in text, text
    assert data["last_run_state"] == "stopped", (data["last_run_state"], data["advice"])
    assert code == 1


def test_a_second_run_stopped_while_waiting_hides_the_workers_death(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """The worker runs (systemd's). An operator also starts `exotel-archiver run` in a terminal;
    it waits for the writer lock, as documented, and the operator stops it (SIGTERM / Ctrl-C):
    it exits 0 and its row, ended 0, is now the "last run". The real worker is then killed -9
    (OOM killer): its row stays without an end, but status looks only at the last row — the
    second `run`, ended fine — and says exit 0, "ok: nothing needs attention", while nothing
    archives. Without that second run, the same kill is "stopped without finishing"."""
    env = worker_env(sim, server, tmp_path)
    state = tmp_path / "state"
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    worker = start_worker(env, state)
    try:
        second = subprocess.Popen(
            [sys.executable, "-m", "archiver", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: len(ledger_rows(state, "SELECT id FROM runs WHERE ended_at IS NULL")) == 2)
        time.sleep(1.0)  # it waits for the lock
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    # The second run did nothing (stopped while it waited for the lock): its row is gone, as a
    # run refused by another writer's lock is, and the killed worker's row is the last.
    assert ledger_rows(state, "SELECT command, ended_at IS NULL, exit_code FROM runs")[-1:] == [
        ("run", 1, None),
    ]
    code, data = status_json(env)
    text = invoke(["status"], env).stdout
    assert data["writer_running"] is False
    assert "ok: nothing needs attention" not in text, text
    assert code != 0, data["advice"]


def test_a_config_typo_records_its_refused_run_in_another_accounts_ledger(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """Two archivers on one host: account A uses the default state directory
    ($XDG_STATE_HOME/exotel-archiver); account B has its own config file naming
    ``state_dir = /srv/b``. A typo in B's section header (``[archivr]``) refuses B's start,
    exit 2 — and, finding no state_dir in the mistyped file, the recorder falls back to the
    default state directory and writes B's refused run into A's ledger. A's status then says
    its last run was B's `run`, "exited 2: config file b.toml: ...", attention: a stranger's
    typo in A's record (and A's real last run is hidden behind it)."""
    xdg = tmp_path / "xdg"
    env_a = exotel_env(sim, server.base_url, str(tmp_path / "archive-a"), tmp_path / "unused")
    env_a.pop("ARCHIVER_STATE_DIR")
    env_a["XDG_STATE_HOME"] = str(xdg)
    assert invoke(["archive", sim.add_call().sid], env_a).exit_code == 0
    ledger_a = xdg / "exotel-archiver"
    assert [c for (c,) in ledger_rows(ledger_a, "SELECT command FROM runs")] == ["archive"]

    config_b = tmp_path / "b.toml"
    config_b.write_text(
        f'[archivr]\nstate_dir = "{tmp_path / "b-state"}"\n'
        f'destination = "{tmp_path / "archive-b"}"\n'
    )
    env_b = {**env_a, "ARCHIVER_DESTINATION": ""}
    refused = invoke(["--config", str(config_b), "run"], env_b)
    assert refused.exit_code == 2 and "archivr" in refused.output, refused.output
    recorded = ledger_rows(ledger_a, "SELECT command, exit_code, error FROM runs")
    assert recorded == [("archive", 0, None)], recorded
    code, data = status_json(env_a)
    assert code == 0, data["advice"]


def test_a_killed_workers_pid_taken_by_a_tail_of_its_log_is_still_running(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """The worker is killed -9. Its pid is reused (real reuse, forced through
    /proc/sys/kernel/ns_last_pid; on a host with pid_max 32768 or in a container it comes
    soon) by the operator's ``tail -f .../exotel-archiver.log`` looking for why. status takes
    any live process whose command line contains "archiver" for the run: "still running",
    exit 0, "ok: nothing needs attention"."""
    env = worker_env(sim, server, tmp_path)
    state = tmp_path / "state"
    log = tmp_path / "exotel-archiver.log"
    log.write_text("")
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0
    worker = start_worker(env, state)
    pid = worker.pid
    os.kill(pid, signal.SIGKILL)
    worker.wait(10)
    tail = None
    for _ in range(50):  # other processes on the machine may take the pid first: try again
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        candidate = subprocess.Popen(["tail", "-f", str(log)])
        if candidate.pid == pid:
            tail = candidate
            break
        candidate.kill()
        candidate.wait(10)
        time.sleep(0.05)
    assert tail is not None, "could not get the pid reused"
    try:
        code, data = status_json(env)
        text = invoke(["status"], env).stdout
    finally:
        tail.kill()
        tail.wait(10)
    assert data["writer_running"] is False
    assert "still running" not in text, text
    assert data["last_run_state"] == "stopped"
    assert code == 1, data["advice"]


def test_an_interrupted_backfill_is_not_said_when_some_call_failed_before(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A call failed earlier (its retry is advised). Then a backfill of a day is interrupted
    with Ctrl-C part way: it exits 130 ("interrupted ... run the same command again") and its
    record says exit 130 — with an empty error (``str(KeyboardInterrupt())``). status advises
    a run that exited non-zero only when it has an error or no call failed: here it says
    nothing of the interrupted backfill, only "retry the failed call"; the operator does so,
    and the rest of the day is never archived."""
    env = worker_env(sim, server, tmp_path)
    state = tmp_path / "state"
    failing = sim.add_call().sid
    sim.faults.recording_url_for[failing] = "https://recordings.example:99999/a.mp3"
    assert invoke(["archive", failing], env).exit_code == 1
    day = (datetime.now(IST) - timedelta(days=2)).date()
    sim.populate(6, day=day, sizes=(2000, 4000))
    backfill = subprocess.Popen(
        [sys.executable, "-m", "archiver", "backfill", "--since", str(day), "--until", str(day)],
        env={**env, "EXOTEL_RATE_LIMIT": "2"},  # slow enough to be interrupted part way
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: status_json(env)[1]["writer_running"] is True, timeout=60)
        time.sleep(1.0)
        backfill.send_signal(signal.SIGINT)
        assert backfill.wait(30) == 130
    finally:
        if backfill.poll() is None:
            backfill.kill()
            backfill.wait(10)
    (last,) = ledger_rows(
        state, "SELECT command, exit_code, error FROM runs ORDER BY id DESC LIMIT 1"
    )
    assert last[:2] == ("backfill", 130), last
    _, data = status_json(env)
    about_runs = [a for a in data["advice"] if "backfill" in a["problem"] or "130" in a["problem"]]
    assert about_runs, (last, [a["problem"] for a in data["advice"]])
