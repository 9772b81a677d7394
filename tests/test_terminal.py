"""The terminal as an operator sees it: a progress bar that log lines never glue onto, no
library chatter, demo counts that say what they count, printed commands that work when pasted,
a closed pipe that ends quietly, and ``retention plan`` rows that show class and date.

Real processes throughout: a pty is the terminal (``os.openpty``), the Exotel simulator serves
over HTTP, the destination is SeaweedFS or a local directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from archiver.simulator import Simulator, SimulatorServer
from tests.support import GENERAL_30D, add_bulk_objects, exotel_env, free_port, invoke

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+")


def screen(raw: bytes) -> list[str]:
    """The lines a terminal shows for ``raw``: ``\\r`` returns to the line's start, ``ESC[K``
    erases from the cursor to its end, other escape sequences (the cursor hidden, shown) show
    nothing, and text overwrites what is under the cursor."""
    lines: list[str] = []
    line, col = "", 0
    for token in _CONTROL.findall(raw.decode(errors="replace")):
        if token == "\n":
            lines.append(line)
            line, col = "", 0
        elif token == "\r":
            col = 0
        elif token == "\x1b[K":
            line = line[:col]
        elif token.startswith("\x1b"):
            continue
        else:
            line = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return [*lines, line] if line else lines


def on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, bytes, str]:
    """Run ``python -m archiver ARGS`` with a pty as its stderr (stdout a pipe): exit code,
    what the terminal received, stdout."""
    master, slave = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the pty
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "archiver", *args],
            env={**env, "COLUMNS": "100", "TERM": "xterm"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=180,
        )
    finally:
        os.close(slave)
    reader.join(10)
    os.close(master)
    return proc.returncode, b"".join(chunks), proc.stdout.decode()


def test_log_lines_never_glue_onto_the_progress_bar(
    sim: Simulator, server: SimulatorServer, service_env: dict[str, str]
) -> None:
    """Calls archived to SeaweedFS with a pty as stderr, one of them with a recording URL
    nothing listens on: its retries log warnings while the bar is on screen. Every log line
    the terminal shows starts at the start of its line (the bar was cleared first, and
    redrawn after), and botocore's INFO ("Found credentials in environment variables.") is
    not among them — until ``--log-level debug``."""
    calls = [sim.add_call(recordings=1, size=4000).sid for _ in range(4)]
    sim.faults.recording_url_for[calls[1]] = f"http://127.0.0.1:{free_port()}/gone.mp3"
    env = {**service_env, "ARCHIVER_ATTEMPTS": "3", "ARCHIVER_MAX_WAIT": "0.2"}
    code, raw, _ = on_a_terminal(["archive", *calls], env)
    shown = screen(raw)
    logs = [line for line in shown if LOG_LINE.search(line)]
    assert code == 1, shown
    assert any("WARNING" in line for line in logs), shown  # the retries were logged
    glued = [line for line in logs if not LOG_LINE.match(line)]
    assert not glued, f"log lines glued onto the bar: {glued}"
    assert b"Archiving" in raw, "no progress bar was drawn"
    assert not [line for line in logs if "botocore" in line or "boto3" in line], logs
    assert any(line.startswith("FAILED") or "FAILED" in line for line in shown), shown

    code, raw, _ = on_a_terminal(["archive", "--log-level", "debug", *calls], env)
    assert b"Found credentials in environment variables" in raw, screen(raw)


def test_the_demo_counts_recordings_as_recordings_and_its_check_command_works_pasted(
    tmp_path: Path,
) -> None:
    """``.venv/bin/exotel-archiver demo`` run with a PATH that does not hold .venv/bin: each
    call's line counts recordings (the .mp3 files in its folder) apart from the other objects
    (call.json), and the "Check it" command, pasted into bash under the same PATH, exits 0.
    The same through ``python -m archiver demo``."""
    program = Path(sys.executable).parent / "exotel-archiver"
    if not program.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != program.parent
    )
    env = {**os.environ, "PATH": path or "/usr/bin:/bin"}
    for n, how in enumerate(([str(program)], [sys.executable, "-m", "archiver"])):
        out = tmp_path / f"demo {n}"  # a space: the printed paths must be quoted
        done = subprocess.run(
            [*how, "demo", "--dir", str(out), "--calls", "6"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        rows = re.findall(r"(?m)^  archived  (\S+)  (.*)", done.stdout)
        assert rows, done.stdout
        for sid, text in rows:
            (folder,) = (out / "recordings").glob(f"*/*/*/{sid}")
            mp3 = len(list(folder.glob("recording-*")))
            others = len([p for p in folder.iterdir() if not p.name.startswith("recording-")])
            assert f"{mp3} recording(s)" in text, text
            assert f"{others} other object(s)" in text and "call.json" in text, text
        for label in ("Check it", "Status"):
            (check,) = re.findall(rf"{label}:\s+(.*)", done.stdout)
            pasted = subprocess.run(
                ["bash", "-c", check], env=env, capture_output=True, text=True, timeout=120
            )
            assert pasted.returncode == 0, f"{check!r}: {pasted.stdout}{pasted.stderr}"


RULES = GENERAL_30D


def archive_with_many_objects(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, count: int
) -> dict[str, str]:
    root, state = tmp_path / "archive", tmp_path / "state"
    config = tmp_path / "archiver.toml"
    config.write_text(RULES)
    env = {
        **os.environ,
        **exotel_env(sim, server.base_url, str(root), state),
        "ARCHIVER_CONFIG": str(config),
    }
    assert invoke(["archive", sim.add_call(recordings=1, size=2000).sid], env).exit_code == 0
    add_bulk_objects(state, root, count)
    return env


@pytest.mark.parametrize(
    "args", [["--help"], ["retention", "--help"], ["retention", "plan"]], ids=" ".join
)
def test_a_closed_stdout_pipe_ends_quietly_with_exit_0(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, args: list[str]
) -> None:
    """``exotel-archiver ... | head -1`` where head has already gone: the read end of stdout is
    closed before the command writes. It ends with exit 0 and nothing on stderr (no
    BrokenPipeError, no "Exception ignored")."""
    env = archive_with_many_objects(sim, server, tmp_path, 60) if "plan" in args else None
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "archiver", *args],
            env=env or {**os.environ, "ARCHIVER_CONFIG": ""},
            stdin=subprocess.DEVNULL,
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr.decode()) == (0, "")


def test_retention_plan_rows_show_class_and_date(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """Each row of ``retention plan``'s text names the action, the call, the key, the class and
    the retain-until date (the JSON report has the same)."""
    env = archive_with_many_objects(sim, server, tmp_path, 3)
    report = tmp_path / "plan.json"
    planned = invoke(["retention", "plan", "--report", str(report)], env)
    assert planned.exit_code == 0, planned.output
    rows = json.loads(report.read_text())["objects"]
    assert rows
    lines = planned.output.splitlines()
    for row in rows:
        (line,) = [x for x in lines if row["key"] in x and row["action"] in x]
        assert re.search(
            rf"{row['action']}\s+{row['call_sid']}\s+{re.escape(row['key'])}\s+"
            rf"{row['class']}\s+until {row['retain_until'][:10]}",
            line,
        ), (line, row)


def test_screen_reads_a_terminal_stream_as_a_terminal_would() -> None:
    bar = b"\r\x1b[KArchiving  [##--]  1/4"
    assert screen(bar + b"2026-12-01T07:23:20 INFO x\n") == [
        "Archiving  [##--]  1/42026-12-01T07:23:20 INFO x"
    ]
    assert screen(bar + b"\r\x1b[K2026-12-01T07:23:20 INFO x\r\n" + bar) == [
        "2026-12-01T07:23:20 INFO x",
        "Archiving  [##--]  1/4",
    ]


def test_a_closed_stdout_pipe_does_not_hide_failures_nor_skip_the_report(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """``exotel-archiver archive A B | head -1`` where one call fails: the reader's going away
    must not turn the run into a success (exit 0) nor stop it before it writes its --report.
    The output is dropped, the command finishes, and the exit code is the run's own."""
    good, bad = sim.add_call().sid, sim.add_call().sid
    sim.faults.recording_url_for[bad] = f"http://127.0.0.1:{free_port()}/gone.mp3"
    report = tmp_path / "report.json"
    env = {
        **os.environ,
        **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
        "ARCHIVER_ATTEMPTS": "1",
    }
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "archiver", "archive", good, bad, "--report", str(report)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(write)
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    outcomes = {r["call_sid"]: r["outcome"] for r in json.loads(report.read_text())["calls"]}
    assert outcomes == {good: "archived", bad: "failed"}
