"""The worker's own files failing — a full disk under the state directory — stop ``archive`` and
``run`` with one clear line naming the path, the problem and the fix, no traceback, exit 1 (a
full disk is not a configuration error: under systemd it is restarted after RestartSec, and
works once space is freed); nothing is recorded that did not happen, and the next run, with
space, archives the call. A state directory that cannot be created at start is a configuration
error (exit 2).

The full disk is real: a 1 MiB tmpfs mounted over the state directory in a private mount
namespace (``unshare -m``, which needs root — the suite runs as root in its container, as
tests/test_local_under_systemd.py's read-only bind mounts do; skipped elsewhere). The commands
are real processes; Exotel is the simulator over real HTTP; the destination a local directory.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from archiver.simulator import Simulator, SimulatorServer
from tests.support import can_mount_privately, clean_env, exotel_env, json_lines, tmpfs

JSON = {"ARCHIVER_LOG_FORMAT": "json"}
BIG = 3 * 1024 * 1024
"""A recording larger than the state directory's file system: its spool file fills it."""


@pytest.fixture
def tmpfs_ok(tmp_path: Path) -> None:
    # A file written on the tmpfs must not be there once the namespace is gone.
    if not can_mount_privately(
        tmp_path, lambda probe: tmpfs(probe, f"touch {shlex.quote(str(probe))}/x")
    ):
        pytest.skip("no private tmpfs mount here (needs root and unshare -m)")


def command(*args: str, out: Path) -> str:
    """Run the archiver with ``args``; its stdout, stderr and exit code to ``out``.*."""
    line = shlex.join([sys.executable, "-m", "archiver", *args])
    q = {k: shlex.quote(str(out.with_suffix(k))) for k in (".out", ".err", ".rc")}
    return f"{{ {line} >{q['.out']} 2>{q['.err']}; echo $? >{q['.rc']}; }}"


def copy(src: Path, dst: Path) -> str:
    return f"cp -a {shlex.quote(str(src))} {shlex.quote(str(dst))}"


def result(out: Path) -> tuple[int, str]:
    return int(out.with_suffix(".rc").read_text()), out.with_suffix(".err").read_text()


def ledger_row(state: Path, sid: str) -> tuple[str, ...] | None:
    db = sqlite3.connect(state / "ledger.sqlite3")
    try:
        row = db.execute("SELECT outcome, detail FROM calls WHERE call_sid = ?", (sid,)).fetchone()
        objects = db.execute("SELECT COUNT(*) FROM objects WHERE call_sid = ?", (sid,)).fetchone()
    finally:
        db.close()
    return None if row is None else (*row, objects[0])


def manifest_lines(state: Path) -> list[dict[str, object]]:
    path = state / "manifest.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def events(err: str) -> list[dict[str, object]]:
    """Every stderr line, each a JSON event (``ARCHIVER_LOG_FORMAT=json``, as under systemd)."""
    return json_lines(err)


def messages(err: str, text: str) -> list[str]:
    return [str(e["message"]) for e in events(err) if text in str(e["message"])]


def assert_clean_failure(code: int, err: str, *must: str) -> str:
    assert code == 1, f"exit code {code}:\n{err}"
    assert "Traceback" not in err and "Errno" not in err and "None" not in err, err
    errors = [e for e in events(err) if str(e["message"]).startswith("error: ")]
    assert len(errors) == 1, err
    assert errors[0]["exit_code"] == 1 and errors[0]["level"] == "error", errors[0]
    line = str(errors[0]["message"])
    for text in must:
        assert text in line, f"{text!r} not in {line!r}"
    return line


def run_in_namespace(script: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_archive_with_the_state_disk_full_fails_in_one_line_and_records_nothing(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, tmpfs_ok: None
) -> None:
    call = sim.add_call(recordings=1, size=BIG, created=sim.now() - dt.timedelta(hours=1))
    disk, out = tmp_path / "disk", tmp_path / "archive"
    disk.mkdir()
    state = disk / "state"
    env = {**clean_env(), **exotel_env(sim, server.base_url, str(out), state), **JSON}
    first, second = tmp_path / "first", tmp_path / "second"
    run_in_namespace(
        tmpfs(
            disk,
            f"{command('archive', call.sid, out=first)} && {copy(state, tmp_path / 'after')}"
            f" && {{ {copy(out, tmp_path / 'after-out')} || mkdir {tmp_path / 'after-out'}; }}"
            f" && mount -o remount,size=64m {shlex.quote(str(disk))}"
            f" && {command('archive', call.sid, out=second)}"
            f" && {copy(state, tmp_path / 'later')}",
        ),
        env,
    )
    line = assert_clean_failure(
        *result(first), f"state directory {state}", "no space left", "free space"
    )
    assert "start again" in line
    after = tmp_path / "after"
    assert ledger_row(after, call.sid) in (None, ("pending", None, 0))  # nothing claimed
    assert manifest_lines(after) == []
    assert not list((tmp_path / "after-out").rglob("recording-*"))  # nor half-stored
    assert not list((after / "spool").iterdir())  # the spool file went with the failure

    code, err = result(second)  # space again: the same command archives it
    assert code == 0, err
    later = tmp_path / "later"
    assert ledger_row(later, call.sid) == ("archived", None, 2)  # recording + call.json
    stored = [p for p in out.rglob("recording-*")]
    assert [p.read_bytes() for p in stored] == [sim.recording_bytes(call.sid, 1)]


def test_run_with_the_state_disk_full_stops_in_one_line_with_exit_1(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, tmpfs_ok: None
) -> None:
    """The worker's first sweep finds the call; its spool file fills the disk: the worker stops
    (exit 1: systemd restarts it after RestartSec), the call stays pending for the next start."""
    call = sim.add_call(recordings=1, size=BIG, created=sim.now() - dt.timedelta(hours=1))
    disk, out = tmp_path / "disk", tmp_path / "archive"
    disk.mkdir()
    state = disk / "state"
    env = {**clean_env(), **exotel_env(sim, server.base_url, str(out), state), **JSON}
    ran = tmp_path / "ran"
    run_in_namespace(
        tmpfs(disk, f"{command('run', out=ran)} && {copy(state, tmp_path / 'after')}"), env
    )
    code, err = result(ran)
    line = assert_clean_failure(code, err, f"state directory {state}", "no space left")
    assert "free space" in line
    stopping = [m for m in messages(err, "stopping: ") if "no space left" in m]
    assert len(stopping) == 1, err  # the worker's log says it once, without a traceback
    assert ledger_row(tmp_path / "after", call.sid) == ("pending", None, 0)  # for the next start
    assert not list(out.rglob("recording-*"))


def test_a_full_disk_under_the_ledger_names_the_ledger(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, tmpfs_ok: None
) -> None:
    """The ledger exists (a first run archived a call); then the disk is filled up: SQLite says
    only "disk I/O error" — the line says the disk is full, as it is."""
    first = sim.add_call(recordings=1, size=2_000, created=sim.now() - dt.timedelta(hours=1))
    second = sim.add_call(recordings=0, created=sim.now() - dt.timedelta(hours=1))
    disk, out = tmp_path / "disk", tmp_path / "archive"
    disk.mkdir()
    state = disk / "state"
    env = {**clean_env(), **exotel_env(sim, server.base_url, str(out), state), **JSON}
    ok, full = tmp_path / "ok", tmp_path / "full"
    filler = shlex.quote(str(disk / "filler"))
    run_in_namespace(
        tmpfs(
            disk,
            f"{command('archive', first.sid, out=ok)}"
            f" && {{ dd if=/dev/zero of={filler} bs=1k 2>/dev/null; true; }}"
            f" && {command('archive', second.sid, out=full)}"
            f" && rm {filler} && {copy(state, tmp_path / 'after')}",
        ),
        env,
    )
    assert result(ok)[0] == 0, result(ok)[1]
    line = assert_clean_failure(*result(full), str(state), "no space left", "free space")
    assert "ledger" in line
    after = tmp_path / "after"
    assert ledger_row(after, first.sid) == ("archived", None, 2)  # the first run's, intact
    assert ledger_row(after, second.sid) is None


def test_a_state_directory_that_cannot_be_created_is_a_configuration_error(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    call = sim.add_call(recordings=1)
    state = Path("/sys/exotel-archiver-state")  # not even root may create anything there
    env = {**clean_env(), **exotel_env(sim, server.base_url, str(tmp_path / "out"), state)}
    done = subprocess.run(
        [sys.executable, "-m", "archiver", "archive", call.sid],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(state) in done.stderr
    assert sim.counters["api_requests"] == 0
