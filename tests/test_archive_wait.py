"""``archive --wait[=DURATION]``: the simulator over real HTTP, SeaweedFS, the real command.

A call that ends 3 s after the command first looks at it is archived byte for byte, with a
number of call-details requests bounded by the backoff; one that stays active runs the time out
(exit 1, named, nothing archived); a terminal call without recordings is waited for only within
``recording_grace`` of its end; SIGINT while waiting ends cleanly. Without --wait nothing
changes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from threading import Event

import pytest

from archiver.simulator import Simulator, SimulatorServer
from archiver.waiting import POLL, parse_duration, shown
from tests.seaweed import SeaweedFS
from tests.support import UNDER_SYSTEMD, exotel_env, invoke, outcome, recordings_in, wait_for

PREFIX = "calls"


@pytest.fixture
def env(
    sim: Simulator, server: SimulatorServer, seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> dict[str, str]:
    """The command's environment: ``sim``, ``s3://BUCKET/calls`` on SeaweedFS, text logs (not
    under systemd), nothing of the developer's AWS setup."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "NOTIFY_", "ARCHIVER_", "EXOTEL_")) and k not in UNDER_SYSTEMD
    }
    return {
        **base,
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "ARCHIVER_ATTEMPTS": "3",
    }


def key(sim: Simulator, sid: str, index: int = 1) -> str:
    from archiver.exotel.models import IST

    return f"{PREFIX}/{sim.calls[sid].created.astimezone(IST):%Y/%m/%d}/{sid}/recording-{index}.mp3"


def looks_within(seconds: float) -> int:
    """The most looks at one call ``--wait`` makes in ``seconds``: the first, one after each
    backoff step that fits, and the last one at the deadline."""
    looks, at = 1, 0.0
    while True:
        at += POLL.delay(looks)
        if at > seconds:
            return looks + 1
        looks += 1


def after_looks(sim: Simulator, looks: int, seconds: float, action: Callable[[], None]) -> Event:
    """Run ``action`` ``seconds`` after the simulator has answered ``looks`` call-details
    requests (not after a fixed time: a slow start on a busy machine must not let the command's
    first look find the call over already). Set the returned event to call it off."""
    stop = Event()

    def main() -> None:
        while sim.counters["v3_call_details"] < looks:
            if stop.wait(0.05):
                return
        if not stop.wait(seconds):
            action()

    threading.Thread(target=main, daemon=True).start()
    return stop


def test_a_call_that_ends_while_waiting_is_archived_with_few_requests(
    sim: Simulator, env: dict[str, str], seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    call = sim.add_call(state="active", size=120_000)
    stop = after_looks(sim, 1, 3.0, lambda: sim.finish(call.sid))
    started = time.monotonic()
    try:
        result = invoke(["archive", call.sid, "--wait=60s"], env)
    finally:
        stop.set()
    elapsed = time.monotonic() - started

    assert result.exit_code == 0, result.output
    assert elapsed >= 3.0
    assert recordings_in(seaweed, bucket, PREFIX) == {
        key(sim, call.sid): sim.recording_bytes(call.sid, 1)
    }
    assert outcome(tmp_path / "state", call.sid) == "archived"
    assert "archived: 1 calls" in result.stdout
    # it said what it waited for (a log line: stderr is not a terminal here)
    assert f"waiting for 1 call(s): {call.sid} (still active)" in result.stderr
    # polite: a look before the end, one after it; never more than the backoff allows
    looks = sim.counters["v3_call_details"]
    assert 2 <= looks <= looks_within(elapsed)
    assert looks <= 3


def test_a_call_that_stays_active_runs_the_wait_out_exit_1_named(
    sim: Simulator, env: dict[str, str], seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    active = sim.add_call(state="active")
    done = sim.add_call()
    started = time.monotonic()
    result = invoke(
        ["archive", active.sid, done.sid, "--wait=2s", "--report", str(tmp_path / "r.json")], env
    )
    elapsed = time.monotonic() - started

    assert result.exit_code == 1, result.output
    assert f"still active after 2s: {active.sid}" in result.stderr
    assert done.sid not in result.stderr.split("still active")[-1]
    assert elapsed < 20.0  # 2 s, and the start and the last look
    # the other call is archived; nothing of the active one
    assert recordings_in(seaweed, bucket, PREFIX) == {
        key(sim, done.sid): sim.recording_bytes(done.sid, 1)
    }
    assert outcome(tmp_path / "state", active.sid) == "not_ready"
    # the first look and the last one at the deadline (5 s backoff > 2 s), plus the other call
    assert sim.counters["v3_call_details"] <= 1 + looks_within(2.0)
    assert "not ready (still active): 1" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"]["not_ready"] == 1 and report["counts"]["archived"] == 1


def test_without_wait_an_active_call_is_not_ready_exit_0(
    sim: Simulator, env: dict[str, str], seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    call = sim.add_call(state="active")
    result = invoke(["archive", call.sid], env)

    assert result.exit_code == 0, result.output
    assert f"not ready  {call.sid}" in result.stdout
    assert sim.counters["v3_call_details"] == 1
    assert recordings_in(seaweed, bucket, PREFIX) == {}
    assert outcome(tmp_path / "state", call.sid) == "not_ready"


@pytest.mark.parametrize("value", ["soon", "0s", "7h", "1.5d", "15 minutes"])
def test_a_bad_duration_is_exit_2_naming_wait_before_any_request(
    sim: Simulator, env: dict[str, str], value: str
) -> None:
    call = sim.add_call(state="active")
    result = invoke(["archive", call.sid, f"--wait={value}"], env)

    assert result.exit_code == 2, result.output
    assert "--wait" in result.stderr
    assert "Traceback" not in result.output
    assert sim.counters["api_requests"] == 0


def test_wait_before_the_sid_says_how_to_write_it(sim: Simulator, env: dict[str, str]) -> None:
    """``--wait CALL_SID`` reads the SID as the duration (an option's optional value): the
    message says to give the SIDs first or write --wait=DURATION."""
    call = sim.add_call(state="active")
    result = invoke(["archive", "--wait", call.sid], env)

    assert result.exit_code == 2
    assert "--wait=DURATION" in result.stderr
    assert sim.counters["api_requests"] == 0


def test_recordings_that_come_after_the_end_are_waited_for_an_old_call_is_not(
    sim: Simulator, env: dict[str, str], seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    """Terminal without recordings: within recording_grace of its end it is looked at again
    (the recording Exotel adds 3 s later is archived); a call that ended a day ago is done at
    once (no recording), without a second look."""
    fresh = sim.add_call(recordings=0)  # ended about 8 minutes ago: within the 20 min grace
    old = sim.add_call(recordings=0, created=sim.now() - timedelta(days=1))
    stop = after_looks(sim, 2, 3.0, lambda: sim.add_recording(fresh.sid, 50_000))
    try:
        result = invoke(["archive", fresh.sid, old.sid, "--wait=60s"], env)
    finally:
        stop.set()

    assert result.exit_code == 0, result.output
    assert recordings_in(seaweed, bucket, PREFIX) == {
        key(sim, fresh.sid): sim.recording_bytes(fresh.sid, 1)
    }
    assert outcome(tmp_path / "state", fresh.sid) == "archived"
    assert outcome(tmp_path / "state", old.sid) == "no_recording"
    assert f"{fresh.sid} (no recording yet)" in result.stderr
    assert old.sid not in result.stderr
    assert sim.counters["v3_call_details"] <= 3  # old: 1; fresh: 2 (or 3 if the timer is late)


def test_the_grace_running_out_within_the_wait_ends_in_no_recording(
    sim: Simulator, env: dict[str, str], tmp_path: Path
) -> None:
    """recording_grace is the worker's setting (ARCHIVER_RECORDING_GRACE, minutes): with a
    grace already past at the end, a call without recordings is no_recording at once."""
    call = sim.add_call(recordings=0)
    result = invoke(["archive", call.sid, "--wait=60s"], {**env, "ARCHIVER_RECORDING_GRACE": "1"})

    assert result.exit_code == 0, result.output
    assert outcome(tmp_path / "state", call.sid) == "no_recording"
    assert sim.counters["v3_call_details"] == 1


def test_sigint_while_waiting_ends_cleanly(
    sim: Simulator, env: dict[str, str], seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    call = sim.add_call(state="active")
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "archive", call.sid, "--wait=60s"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: sim.counters["v3_call_details"] >= 1, timeout=60)
        time.sleep(1.0)  # in the backoff's sleep now
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.decode()
    assert proc.returncode == 130, text[-2000:]
    assert "interrupted: nothing half-done was recorded" in text
    assert "Traceback" not in text
    assert recordings_in(seaweed, bucket, PREFIX) == {}
    assert outcome(tmp_path / "state", call.sid) == "not_ready"
    # the writer lock was let go: the call, ended now, is archived by the next run
    sim.finish(call.sid)
    again = invoke(["archive", call.sid], env)
    assert again.exit_code == 0, again.output
    assert outcome(tmp_path / "state", call.sid) == "archived"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("120", 120), ("1.5H", 5400), ("1h30m", 5400)],
)
def test_durations_read_as_written(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(shown(seconds)) == seconds
