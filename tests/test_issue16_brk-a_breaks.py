"""Issue 16 (items 3 and 6), adversarial review brk-a: preflight and ``archive --wait``.

Each test fails on the product as it is; real parts only (the simulator over real HTTP,
SeaweedFS, the real command in this process or as a real process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from archiver.exotel.models import IST
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import GENERAL_30D_LOCKED, UNDER_SYSTEMD, exotel_env, invoke, outcome, wait_for

DAY = str((datetime.now(IST) - timedelta(days=3)).date())

LOCKING_CLASS = GENERAL_30D_LOCKED


def spent(sim: Simulator, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sim.counters.items() if v != before.get(k, 0)}


def error_lines(output: str) -> list[str]:
    """The lines of the command's output that are not info lines."""
    return [line for line in output.splitlines() if line.strip() and '"level": "info"' not in line]


# --- 1. preflight: a local destination that is (under) a regular file ---------------------------


@pytest.mark.parametrize(
    ("where", "args"),
    [
        ("is-a-file", ["backfill", "--since", DAY, "--until", DAY, "--dry-run"]),
        ("is-a-file", ["backfill", "--since", DAY, "--until", DAY]),
        ("under-a-file", ["archive", "SID"]),
    ],
    ids=["is-a-file-backfill-dry-run", "is-a-file-backfill", "under-a-file-archive"],
)
def test_a_local_destination_that_is_a_file_is_a_configuration_error_exit_2_one_line(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, args: list[str], where: str
) -> None:
    """ARCHIVER_DESTINATION naming an existing regular file (an operator pasting the config
    file's path, a typo) or a path under one (ENOTDIR): permanent and knowable up front, like
    the read-only directory preflight already refuses with exit 2. The product retries the
    probe 5 times (warnings "retrying in ...", ~8 s) and exits 1."""
    sim.populate(4, day=datetime.fromisoformat(DAY).date(), sizes=(2000, 4000))
    existing = tmp_path / "archiver.toml"
    existing.write_text("# not a directory\n")
    destination = existing if where == "is-a-file" else existing / "calls"
    env = exotel_env(sim, server.base_url, str(destination), tmp_path / "state")
    args = [sim.add_call().sid if a == "SID" else a for a in args]
    before = dict(sim.counters)
    started = time.monotonic()
    result = invoke(args, env)
    elapsed = time.monotonic() - started

    assert spent(sim, before) == {}  # holds: no Exotel request
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{result.output}"
    lines = error_lines(result.output)
    assert len(lines) == 1, "\n".join(lines)
    assert "retrying" not in result.output
    assert elapsed < 3.0, f"{elapsed:.1f} s of retries for a permanent error"


def test_the_worker_with_a_local_destination_that_is_a_file_exits_2_not_1(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """The same for ``exotel-archiver run``: exit 1 is "restart me" for the units
    (RestartPreventExitStatus=2 only keeps a configuration error down), so the worker
    crash-loops on a destination it can never write, each start spending ~8 s of retries."""
    existing = tmp_path / "archiver.toml"
    existing.write_text("# not a directory\n")
    env = {
        **{k: v for k, v in os.environ.items() if k not in UNDER_SYSTEMD},
        **exotel_env(sim, server.base_url, str(existing), tmp_path / "state"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "archiver", "run"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert sim.counters["api_requests"] == 0  # holds
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr.decode()[-1500:]}"


# --- 2. preflight: repair --dry-run says "would repair", repair refuses -----------------------


def test_repair_dry_run_checks_object_lock_as_the_real_repair_does(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    """A retention class that locks is added to the config after the fact (the bucket has no
    Object Lock); a recording goes missing. ``repair --dry-run`` exits 0 listing what it would
    repair; ``repair`` then refuses at once with exit 2 on Object Lock — a read-only check
    (GetObjectLockConfiguration) the dry run skipped: the dry run promised a repair that
    cannot happen."""
    env = {
        "ARCHIVER_ATTEMPTS": "2",
        **exotel_env(sim, server.base_url, f"s3://{bucket}/calls", tmp_path / "state"),
    }
    first = invoke(["archive", sim.add_call().sid], env)
    assert first.exit_code == 0, first.output
    client = seaweed.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    client.delete_object(Bucket=bucket, Key=next(k for k in keys if k.endswith(".mp3")))
    config = tmp_path / "archiver.toml"
    config.write_text(LOCKING_CLASS)
    env = {**env, "ARCHIVER_CONFIG": str(config)}

    real = invoke(["repair"], env)
    assert real.exit_code == 2 and "Object Lock" in real.output, real.output  # holds
    dry = invoke(["repair", "--dry-run"], env)
    assert dry.exit_code == 2, (
        f"dry run exit {dry.exit_code}, the real repair exit 2:\n{dry.output}"
    )
    assert "Object Lock" in dry.output


# --- 3. --wait: a call waited for is "no_recording" in the ledger until every call's first look


def test_sigint_before_the_wait_began_leaves_a_call_waited_for_no_recording_in_the_ledger(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    """waiting.py: "meanwhile the ledger holds it not ready ... so a run cut off there looks at
    it again". But ``Waiter.settle`` (which writes that) starts only after the first look at
    EVERY call: while another call's recording downloads, the call that ended 8 minutes ago
    without its recording yet is ``no_recording`` in the ledger. Interrupted then, the command
    says "nothing half-done was recorded" and the ledger keeps ``no_recording`` for a call whose
    recording Exotel may still add: the worker, restarted, does not look at it again
    (``Ledger.unarchived`` is pending/not_ready/failed only)."""
    fresh = sim.add_call(recordings=0)  # ended ~8.5 min ago: well within the 20 min grace
    big = sim.add_call(size=3_000_000)
    sim.faults.bandwidth = 100_000  # its download takes ~30 s
    state = tmp_path / "state"
    env = {
        **{k: v for k, v in os.environ.items() if k not in UNDER_SYSTEMD},
        **exotel_env(sim, server.base_url, f"s3://{bucket}/calls", state),
        "ARCHIVER_CONCURRENCY": "2",
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        env[name] = os.environ[name]
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "archive", fresh.sid, big.sid, "--wait=5m"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: sim.counters["recording_requests"] >= 1, timeout=60)
        wait_for(lambda: outcome(state, fresh.sid) is not None, timeout=30)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert outcome(state, big.sid) != "archived"  # it was cut off mid-download: holds
    assert outcome(state, fresh.sid) == "not_ready", (
        f"the call --wait was waiting for is {outcome(state, fresh.sid)!r} in the ledger"
    )
