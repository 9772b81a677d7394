"""Issue 15, the operator's side: the cases found after the first fix landed, each with real
processes (``python -m archiver``), the simulator over real HTTP and a real local destination.

1. A worker restarted while a retention job holds the state directory waits for the lock (or
   exits with a status systemd restarts), instead of exiting 2, which the shipped unit
   (``RestartPreventExitStatus=2``) never restarts; while it waits it says why, as JSON, and a
   SIGTERM ends the wait with exit 0.
2. Usage errors of the command group (an unknown command, ``ARCHIVER_CONFIG`` naming a folder)
   are JSON lines in JSON mode, like every other line on stderr.
3. A call Exotel keeps listing as in progress past ``stuck_after`` is reported stuck (a warning,
   ``stuck_calls_now`` and ``stuck_calls_total``), like one whose voice log stays processing.
4. The worker's last line (``stopped: ...``, and its JSON fields ``failed`` / ``left_pending``)
   counts failed calls, not failed attempts, and the calls left for the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from archiver.simulator import Simulator
from archiver.simulator.server import SimulatorServer
from tests.support import (
    exotel_env,
    exposed,
    free_port,
    non_json_lines,
    outcome,
    scrape,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "exotel-archiver.service"
PREFIX = "exotel_archiver_"


def process_env(**extra: str) -> dict[str, str]:
    """This environment, without systemd's or AWS's marks, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "NOTIFY_", "ARCHIVER_", "EXOTEL_"))
        and k not in ("INVOCATION_ID", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def prevented_exit_statuses(unit: Path) -> set[int]:
    """The exit codes ``RestartPreventExitStatus=`` of ``unit`` keeps from being restarted."""
    codes: set[int] = set()
    for line in unit.read_text().splitlines():
        if line.startswith("RestartPreventExitStatus="):
            codes |= {int(c) for c in line.split("=", 1)[1].split() if c.isdigit()}
    return codes


# --- 1. a transient lock turned into a permanent failure ------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from archiver.ledger import writer_lock
with writer_lock(Path(sys.argv[1]), required=False) as owns:  # what every retention job does
    print("holding" if owns else "not holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_worker_restarted_while_a_retention_job_runs_is_restarted_again(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    # The daily exotel-archiver-retention.service (Persistent=yes: also at boot; retention purge
    # and audit run for as long as the archive is big, TimeoutStartSec=infinity) takes the
    # state directory's writer lock whenever the worker is not running — `open_retention` uses
    # writer_lock(required=False), which takes it when it is free. If the worker crashes (exit
    # 1), trips the watchdog or is restarted for an upgrade meanwhile, systemd starts it again
    # 10 s later, it finds the lock held, and exits 2 ("another exotel-archiver process is
    # archiving"): RestartPreventExitStatus=2 then keeps it down for good, though the lock is
    # released minutes later. A held lock is not a configuration error: the worker should wait
    # for it, or exit with a status systemd restarts.
    state = tmp_path / "state"
    call = sim.add_call(recordings=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state), "6"],
        env=process_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        env = process_env(
            **exotel_env(sim, server.base_url, str(tmp_path / "out"), state),
            ARCHIVER_POLL_INTERVAL="1",
            ARCHIVER_LOG_FORMAT="json",
            INVOCATION_ID="8c5b0e3cf4a6495c8b8ff0a2d2b0d7a1",  # as started by systemd
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "archiver", "run"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The lock is released after 6 s; then the worker (still running, or started again
            # by systemd after a restartable exit) archives the call.
            # (At most 60 s: what follows judges how the wait ended.)
            with contextlib.suppress(AssertionError):
                wait_for(
                    lambda: worker.poll() is not None or outcome(state, call.sid) == "archived",
                    interval=0.2,
                )
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
    finally:
        holder.kill()
        holder.wait()
    prevented = prevented_exit_statuses(UNIT)
    assert prevented == {2}  # what the shipped unit says today
    if worker.returncode is not None and outcome(state, call.sid) != "archived":
        assert worker.returncode not in {0, *prevented}, (
            f"the worker exited {worker.returncode} because another process held the state "
            f"directory for a few seconds; under {UNIT.name} (Restart=on-failure, "
            f"RestartPreventExitStatus={' '.join(map(str, sorted(prevented)))}) it is never "
            f"restarted and call {call.sid} is never archived:\n{err[-1500:]}"
        )


# --- 2. plain-text lines in JSON mode -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["runn"], {}),  # a typo in a drop-in's ExecStart=
        (["run"], {"ARCHIVER_CONFIG": "DIR"}),  # the config path names a folder
    ],
    ids=["unknown-command", "config-is-a-directory"],
)
def test_usage_errors_of_the_command_group_are_json_lines(
    args: list[str], extra: dict[str, str], tmp_path: Path
) -> None:
    # Under systemd stderr is the journal (not a terminal): auto means JSON, and the docs
    # promise every line on stderr is a JSON object. click reports errors of the group itself
    # (its own parameters, the command name) before main() runs, so before setup_logging.
    env = process_env(
        **{k: (str(tmp_path) if v == "DIR" else v) for k, v in extra.items()},
        JOURNAL_STREAM="8:12345",
        INVOCATION_ID="8c5b0e3cf4a6495c8b8ff0a2d2b0d7a1",
    )
    done = subprocess.run(
        [sys.executable, "-m", "archiver", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip()
    assert non_json_lines(done.stderr) == []


# --- 3. a call listed in progress forever is never reported stuck ---------------------------


def test_a_call_listed_in_progress_past_stuck_after_is_reported_stuck(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    # Both calls were created two hours ago; stuck_after is 15 min (its minimum). One is over
    # but still processing (v3 says active): reported stuck at once. The other is still listed
    # by the active-calls endpoint: watched by the poll, never scheduled, so never looked at by
    # the code that reports stuck calls — no warning, no count, though the metric's help says
    # "Calls reported stuck: not ready, or listed in progress, for stuck_after" and
    # docs/operations.md tells operators to alert on stuck_calls_now.
    two_hours_ago = sim.now() - timedelta(hours=2)
    listed = sim.add_call(state="active", created=two_hours_ago)
    processing = sim.add_call(state="processing", created=two_hours_ago)
    state, port = tmp_path / "state", free_port()
    env = process_env(
        **exotel_env(sim, server.base_url, str(tmp_path / "out"), state),
        ARCHIVER_POLL_INTERVAL="1",
        ARCHIVER_RECHECK_INTERVAL="1",
        ARCHIVER_STUCK_AFTER="0.25",
        ARCHIVER_METRICS_LISTEN=f"127.0.0.1:{port}",
        ARCHIVER_LOG_FORMAT="json",
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: outcome(state, processing.sid) == "not_ready", interval=0.2)
        time.sleep(6)  # several polls of the listed call, several looks at the other
        _, samples = exposed(scrape(port)[1])
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err[-2000:]
    stuck_warnings = [
        json.loads(line)["message"]
        for line in err.splitlines()
        if line.startswith("{") and "reported stuck" in line
    ]
    assert any(processing.sid in m for m in stuck_warnings)  # the mechanism works...
    assert samples[PREFIX + "watched_active_calls", frozenset()] == 1
    said = {sid: any(sid in m for m in stuck_warnings) for sid in (listed.sid, processing.sid)}
    counted = (
        samples[PREFIX + "stuck_calls_now", frozenset()],
        samples[PREFIX + "stuck_calls_total", frozenset()],
    )
    # ...but not for the call listed in progress for two hours.
    assert (said, counted) == ({listed.sid: True, processing.sid: True}, (2.0, 2.0))


# --- 4. the stopped summary miscounts ------------------------------------------------------


def test_the_stopped_summary_counts_calls_not_attempts(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    # Two calls still processing (not ready: redone at the next start) and one whose transfer
    # is always cut off (a retryable failure: the worker tries it again with backoff). After
    # the second failed attempt the worker is stopped. Its summary, the line an operator reads
    # in the journal (and the JSON fields a log shipper alerts on), must say what the ledger
    # says: one call failed, two left for the next start.
    waiting = [sim.add_call(state="processing") for _ in range(2)]
    cut = sim.add_call(recordings=1)
    sim.faults.cut_rate = 1.0  # only `cut` has a recording to download
    state = tmp_path / "state"
    env = process_env(
        **exotel_env(sim, server.base_url, str(tmp_path / "out"), state),
        ARCHIVER_POLL_INTERVAL="1",
        ARCHIVER_RECHECK_INTERVAL="1",
        ARCHIVER_LOG_FORMAT="json",
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"], env=env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    assert worker.stderr is not None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            line = worker.stderr.readline()
            if not line:
                break
            lines.append(line)
            if sum(f"call {cut.sid} failed:" in x for x in lines) >= 2:
                break
    finally:
        worker.send_signal(signal.SIGTERM)
        _, rest = worker.communicate(timeout=60)
    lines += rest.splitlines()
    assert worker.returncode == 0, "".join(lines)[-2000:]
    assert sum(f"call {cut.sid} failed:" in x for x in lines) >= 2  # tried again, failed again
    assert [outcome(state, c.sid) for c in waiting] == ["not_ready", "not_ready"]
    assert outcome(state, cut.sid) == "failed"
    stopped = [json.loads(x) for x in lines if '"event": "stopped"' in x]
    assert len(stopped) == 1, lines[-5:]
    summary = stopped[0]
    assert (summary["failed"], summary["left_pending"]) == (1, 2), summary["message"]


def test_a_worker_waiting_for_the_state_directory_says_why_and_stops_cleanly(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """While it waits for the lock the worker names the holder (once, as JSON), sends no API
    request, and a SIGTERM ends the wait with exit 0."""
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state), "60"],
        env=process_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        env = process_env(
            **exotel_env(sim, server.base_url, str(tmp_path / "out"), state),
            ARCHIVER_LOG_FORMAT="json",
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "archiver", "run"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert worker.stderr is not None
        first = json.loads(worker.stderr.readline())
        assert first["level"] == "warning", first
        assert f"pid {holder.pid}" in first["message"] and "waiting" in first["message"]
        time.sleep(1.0)
        assert worker.poll() is None  # still waiting, not exited
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    finally:
        holder.kill()
        holder.wait()
    assert worker.returncode == 0, err
    assert sim.counters["api_requests"] == 0
    for line in err.splitlines():
        json.loads(line)
