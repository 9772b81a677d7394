"""``exotel-archiver run`` as a real process: signals, exit codes, JSON logs, sd_notify, restart.

The worker runs in a subprocess against the in-process simulator (real HTTP) and SeaweedFS
(real S3); downloads are slowed down with the simulator's bandwidth cap so a signal lands in
the middle of a transfer.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from archiver.manifest import read_manifest
from archiver.simulator import Simulator
from tests.seaweed import SeaweedFS
from tests.support import json_lines, outcome, recordings_in, wait_for

PREFIX = "calls"  # where conftest's service_env archives: s3://BUCKET/calls


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, Callable[[], list[str]]]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    seen: list[str] = []

    def messages() -> list[str]:
        while True:
            try:
                seen.append(sock.recv(4096).decode())
            except BlockingIOError:
                return seen

    try:
        yield str(path), messages
    finally:
        sock.close()


def start(env: dict[str, str], **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env={**env, **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def worker_lines(stderr: bytes) -> list[dict[str, Any]]:
    """Every line is one JSON object (stderr is not a terminal); the last one is the summary
    the command prints."""
    events = json_lines(stderr)
    assert events and events[-1]["message"].startswith("stopped: "), events[-5:]
    return events


def test_sigterm_mid_transfer_lets_it_finish_and_exits_0(
    sim: Simulator, seaweed: SeaweedFS, bucket: str, tmp_path: Path, service_env: dict[str, str]
) -> None:
    call = sim.add_call(recordings=1, size=300_000)
    sim.faults.bandwidth = 150_000  # about two seconds for the body
    with notify_socket(tmp_path) as (address, messages):
        proc = start(service_env, NOTIFY_SOCKET=address)
        wait_for(lambda: sim.counters.get("bytes_served", 0) > 0)
        assert any(m.startswith("READY=1") for m in messages())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-3000:]
        assert any(m.startswith("STOPPING=1") for m in messages())
    assert recordings_in(seaweed, bucket, PREFIX) == {
        f"{PREFIX}/{call.created.astimezone(sim_ist()):%Y/%m/%d}/{call.sid}/recording-1.mp3": (
            sim.recording_bytes(call.sid, 1)
        )
    }
    assert outcome(tmp_path / "state", call.sid) == "archived"
    events = worker_lines(err)
    assert any(e.get("call_sid") == call.sid and "archived" in e["message"] for e in events)
    assert b"Traceback" not in err
    for secret in (sim.api_key, sim.api_token, "X-Amz-Signature=", seaweed.secret_key):
        assert secret.encode() not in err


def sim_ist() -> Any:
    from archiver.exotel.models import IST

    return IST


def test_sigterm_after_the_grace_leaves_nothing_half_done_and_a_restart_redoes_it(
    sim: Simulator, seaweed: SeaweedFS, bucket: str, tmp_path: Path, service_env: dict[str, str]
) -> None:
    call = sim.add_call(recordings=1, size=400_000)
    sim.faults.bandwidth = 40_000  # ten seconds: longer than the grace
    proc = start(service_env, ARCHIVER_SHUTDOWN_GRACE="0.5")
    wait_for(lambda: sim.counters.get("bytes_served", 0) > 0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert b"cut off at shutdown" in err and b"Traceback" not in err
    assert recordings_in(seaweed, bucket, PREFIX) == {}  # nothing that claims to be whole
    uploads = seaweed.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == []
    assert outcome(tmp_path / "state", call.sid) == "pending"  # remembered for the next start
    assert not list((tmp_path / "state" / "spool").iterdir())  # the spool file is gone

    sim.faults.bandwidth = None
    proc = start(service_env)
    wait_for(lambda: outcome(tmp_path / "state", call.sid) == "archived")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert list(recordings_in(seaweed, bucket, PREFIX).values()) == [
        sim.recording_bytes(call.sid, 1)
    ]
    entries = read_manifest(tmp_path / "state" / "manifest.jsonl")
    assert [e["call_sid"] for e in entries if e["kind"] == "recording"] == [call.sid]


def test_a_second_signal_forces_exit_1(
    sim: Simulator, seaweed: SeaweedFS, bucket: str, tmp_path: Path, service_env: dict[str, str]
) -> None:
    call = sim.add_call(recordings=1, size=400_000)
    sim.faults.bandwidth = 20_000
    proc = start(service_env, ARCHIVER_SHUTDOWN_GRACE="120")
    wait_for(lambda: sim.counters.get("bytes_served", 0) > 0)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # draining: waits for the transfer
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and time.monotonic() - started < 8  # not the 10 s backstop
    assert b"Traceback" not in err
    assert recordings_in(seaweed, bucket, PREFIX) == {}
    assert outcome(tmp_path / "state", call.sid) == "pending"


def test_configuration_errors_exit_2_with_one_line(
    sim: Simulator, tmp_path: Path, service_env: dict[str, str]
) -> None:
    no_token = {k: v for k, v in service_env.items() if k != "EXOTEL_API_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "archiver", "run"], env=no_token, capture_output=True, timeout=60
    )
    assert result.returncode == 2
    assert b"EXOTEL_API_TOKEN" in result.stderr and b"Traceback" not in result.stderr

    wrong = {**service_env, "EXOTEL_API_TOKEN": "not-the-token"}
    result = subprocess.run(
        [sys.executable, "-m", "archiver", "run"], env=wrong, capture_output=True, timeout=60
    )
    assert result.returncode == 2, result.stderr.decode()[-2000:]
    assert b"Traceback" not in result.stderr and b"not-the-token" not in result.stderr
