"""JSON log mode: every line the worker and the oneshot commands write to stderr is one JSON
object, and no message shows a Python repr (``None``, ``<... object at 0x...>``).

Real processes (``python -m archiver ...``) against the simulator over HTTP and SeaweedFS: what
systemd would put in the journal is exactly what these tests read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import free_port, json_lines, outcome, wait_for

PREFIX = "calls"  # conftest's service_env archives to s3://BUCKET/calls
REPR = re.compile(r"\bNone\b|<[\w.]+ object at 0x|\bobject at 0x[0-9a-f]+")


@pytest.fixture
def json_env(service_env: dict[str, str]) -> dict[str, str]:
    """A worker's environment (conftest's ``service_env``) asking for JSON logs."""
    return {**service_env, "ARCHIVER_LOG_FORMAT": "json"}


def events(stderr: bytes) -> list[dict[str, Any]]:
    """Every stderr line as JSON (the test fails on the first line that is not), each a JSON
    object with a message free of Python reprs."""
    out = json_lines(stderr)
    for n, event in enumerate(out, 1):
        assert {"time", "level", "logger", "message"} <= set(event), event
        assert not REPR.search(event["message"]), f"a Python repr in line {n}: {event}"
    return out


def callback(url: str, call: Any) -> None:
    """A StatusCallback without a Status field, once the receiver listens."""
    body = json.dumps({"CallSid": call.sid}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
                return
        except (ConnectionError, urllib.error.URLError):
            assert time.monotonic() < deadline, "the receiver never listened"
            time.sleep(0.1)


def archiver(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "archiver", *args], env=env, capture_output=True, timeout=120
    )


def test_run_writes_only_json_lines_through_work_and_a_sigterm_drain(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, json_env: dict[str, str]
) -> None:
    state = tmp_path / "state"
    good = sim.add_call(recordings=1, size=8_000)
    bad = sim.add_call(recordings=1, size=8_000)
    sim.faults.recording_url_for[bad.sid] = f"{server.base_url}/no-such-recording.mp3"
    processing = sim.add_call(state="processing")  # over, but v3 says active: not ready
    sim.add_call(state="active")  # watched while listed
    slow = sim.add_call(recordings=1, size=2_000_000)
    sim.faults.bandwidth = 200_000  # ten seconds: the SIGTERM lands mid-transfer
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env={
            **json_env,
            "ARCHIVER_WEBHOOK_LISTEN": f"127.0.0.1:{port}",
            "ARCHIVER_WEBHOOK_SECRET": "hook-secret-1234",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Older than the sweep's day: found by its StatusCallback alone.
        hinted = sim.add_call(recordings=1, size=8_000, created=sim.now() - dt.timedelta(days=3))
        callback(f"http://127.0.0.1:{port}/exotel/status-callback?secret=hook-secret-1234", hinted)
        wait_for(
            lambda: all(
                outcome(state, call.sid) == expected
                for call, expected in (
                    (good, "archived"),
                    (bad, "failed"),
                    (processing, "not_ready"),
                    (hinted, "archived"),
                )
            )
        )
        assert outcome(state, slow.sid) == "pending"  # in flight
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert outcome(state, slow.sid) == "archived"  # drained, not cut off
    logged = events(err)
    assert any(e.get("call_sid") == bad.sid and e["level"] == "error" for e in logged)
    assert any(e.get("call_sid") == processing.sid for e in logged)
    assert any(e.get("call_sid") == hinted.sid and "StatusCallback" in e["message"] for e in logged)
    stopped = logged[-1]  # the summary is the last line, as a structured event
    assert stopped["message"].startswith("stopped: "), stopped
    assert stopped["event"] == "stopped" and stopped["forced"] is False
    assert stopped["archived"] == 3 and stopped["failed"] == 1
    assert stopped["left_pending"] == 2  # the processing call and the active one
    assert stopped["api_requests"] > 0 and stopped["bytes_archived"] >= 2_016_000


def test_archive_writes_only_json_lines(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, json_env: dict[str, str]
) -> None:
    good = sim.add_call(recordings=1, size=8_000)
    bad = sim.add_call(recordings=1, size=8_000)
    sim.faults.recording_url_for[bad.sid] = f"{server.base_url}/no-such-recording.mp3"
    processing = sim.add_call(state="processing")
    done = archiver("archive", good.sid, bad.sid, processing.sid, env=json_env)
    assert done.returncode == 1, done.stderr.decode()[-3000:]
    logged = events(done.stderr)
    failed = [e for e in logged if e.get("call_sid") == bad.sid and e["level"] == "error"]
    assert failed, logged
    assert b"archived: 1 calls" in done.stdout  # the report stays on stdout, as text


def test_usage_and_configuration_errors_are_json_lines_too(
    sim: Simulator, tmp_path: Path, json_env: dict[str, str]
) -> None:
    usage = archiver("archive", "not a call sid!", env=json_env)
    assert usage.returncode == 2
    assert any("CALL_SID" in e["message"] for e in events(usage.stderr))

    no_token = {k: v for k, v in json_env.items() if k != "EXOTEL_API_TOKEN"}
    config = archiver("run", env=no_token)
    assert config.returncode == 2
    (error,) = [e for e in events(config.stderr) if e["level"] == "error"]
    assert "EXOTEL_API_TOKEN" in error["message"] and error["exit_code"] == 2

    unknown = archiver("run", "--no-such-flag", env=json_env)
    assert unknown.returncode == 2
    assert any("--no-such-flag" in e["message"] for e in events(unknown.stderr))


def test_verify_findings_are_json_lines(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
    json_env: dict[str, str],
) -> None:
    calls = [sim.add_call(recordings=1, size=8_000) for _ in range(2)]
    assert archiver("archive", *(c.sid for c in calls), env=json_env).returncode == 0
    client = seaweed.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/")["Contents"]
    gone = next(o["Key"] for o in listed if calls[0].sid in o["Key"] and "recording-" in o["Key"])
    client.delete_object(Bucket=bucket, Key=gone)
    verified = archiver("verify", env=json_env)
    assert verified.returncode == 1, verified.stderr.decode()[-3000:]
    logged = events(verified.stderr)
    assert any(gone.removeprefix(f"{PREFIX}/") in e["message"] for e in logged), logged


def test_warnings_uncaught_errors_and_stray_writes_become_json_lines(tmp_path: Path) -> None:
    """What no archiver code logs — a Python warning, an exception nobody catches, a library
    printing to stderr — still reaches the journal as JSON (and redacted)."""
    script = (
        "import sys, warnings\n"
        "from archiver.log import setup_logging\n"
        "setup_logging('info', secrets=['sekrit-token-value'], fmt='json')\n"
        "warnings.warn('an old API (token sekrit-token-value)', DeprecationWarning)\n"
        "print('a library prints this', file=sys.stderr)\n"
        "sys.stderr.write('no newline at the end')\n"
        "sys.stderr.flush()\n"
        "import asyncio, gc\n"
        "from archiver.cli._shared import run\n"
        "async def lose_a_task():\n"
        "    async def boom():\n"
        "        raise ValueError('lost in a task')\n"
        "    task = asyncio.ensure_future(boom())\n"
        "    await asyncio.sleep(0.05)\n"
        "    del task\n"
        "    gc.collect()\n"
        "run(lose_a_task())\n"
        "raise RuntimeError('nobody caught this: sekrit-token-value')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", script],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 1
    logged = events(done.stderr)
    assert b"sekrit-token-value" not in done.stderr
    messages = [e["message"] for e in logged]
    assert any("an old API" in m for m in messages), messages
    assert any("a library prints this" in m for m in messages), messages
    assert any("no newline at the end" in m for m in messages), messages
    (lost,) = [e for e in logged if "never retrieved" in e["message"]]
    assert "ValueError: lost in a task" in lost["message"] and "coro=<" not in lost["message"]
    assert "Traceback" in lost["error"]
    crash = logged[-1]
    assert crash["level"] == "critical" and "RuntimeError" in crash["message"]
    assert "Traceback" in crash["error"]
