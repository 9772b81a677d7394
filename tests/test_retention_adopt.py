"""An object already at its key when a call is archived (adopted, not written again) is recorded
with the Object Lock the store reports, brought up to its class where that only strengthens it.

How an object gets there: a run that crashed after the PUT and before the ledger commit (here a
real worker process SIGKILLed as it commits), or a copy put by someone else, unlocked. Against
SeaweedFS, which enforces Object Lock as AWS does.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver.archive import archive_calls
from archiver.config import Settings, load_settings
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.retention.policy import parse_period
from archiver.simulator import SimCall, Simulator, SimulatorServer
from tests.support import exotel_env

PREFIX = "rec"
ORDERS_APP = "233516"
GENERAL, ORDERS = "30d", "3y"

RULES = f"""
[retention]
default = "general"

[retention.classes.general]
period = "{GENERAL}"
lock = "governance"
at_end = "delete"

[retention.classes.orders]
period = "{ORDERS}"
lock = "compliance"
at_end = "keep"

[[retention.rules]]
class = "orders"
app_id = "{ORDERS_APP}"
"""

CLASSES = {"COMPLIANCE": (ORDERS_APP, ORDERS), "GOVERNANCE": (None, GENERAL)}

CRASHING_RUN = """
import asyncio, json, os, signal, sys
from pathlib import Path
from archiver.archive import archive_calls
from archiver.config import load_settings
from archiver.ledger import Ledger

env, config, sid, kill_at = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
commit = Ledger.add_object

def add_object(self, record):
    # The object is in the bucket (the store confirmed the PUT); the process dies before its
    # ledger row is committed, as a power cut or the OOM killer would have it.
    if record.kind == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return commit(self, record)

Ledger.add_object = add_object
asyncio.run(archive_calls(load_settings(env=env, config_file=config), [sid]))
"""


def env_for(sim: Simulator, server: SimulatorServer, tmp_path: Path, bucket: str) -> dict[str, str]:
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state")
    return {**env, "ARCHIVER_ATTEMPTS": "2"}


def settings_for(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, bucket: str
) -> tuple[Settings, Path]:
    config = tmp_path / "archiver.toml"
    config.write_text(RULES)
    return load_settings(env=env_for(sim, server, tmp_path, bucket), config_file=config), config


def recording_key(call: SimCall) -> str:
    """The recording's key inside the destination (without the prefix)."""
    return f"{call.created.astimezone(IST):%Y/%m/%d}/{call.sid}/recording-1.mp3"


def class_until(call: SimCall, period: str) -> datetime:
    return parse_period(period, "").after(call.created.replace(microsecond=0))


def head(seaweed: Any, bucket: str, key: str) -> dict[str, Any]:
    return dict(seaweed.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{key}"))


def entry(settings: Settings, key: str) -> dict[str, Any]:
    [found] = [e for e in read_manifest(settings.state_dir / "manifest.jsonl") if e["key"] == key]
    return found


def data_keys(seaweed: Any, bucket: str) -> set[str]:
    listed = seaweed.client().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/")
    return {
        o["Key"].removeprefix(f"{PREFIX}/")
        for o in listed.get("Contents", [])
        if "/_manifest/" not in o["Key"]
    }


@pytest.mark.parametrize("kind", ["recording", "call_details"])
@pytest.mark.parametrize("mode", ["COMPLIANCE", "GOVERNANCE"])
async def test_an_object_left_by_a_run_killed_before_its_ledger_commit_keeps_its_lock_mode(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
    mode: str,
    kind: str,
) -> None:
    app_id, period = CLASSES[mode]
    call = sim.add_call(recordings=1, size=5000, **({"app_id": app_id} if app_id else {}))
    settings, config = settings_for(sim, server, tmp_path, lock_bucket)
    died = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(CRASHING_RUN),
            json.dumps(env_for(sim, server, tmp_path, lock_bucket)),
            str(config),
            call.sid,
            kind,
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr.decode()[-3000:]
    key = (
        recording_key(call)
        if kind == "recording"
        else f"{recording_key(call).rsplit('/', 1)[0]}/call.json"
    )
    assert key in data_keys(seaweed, lock_bucket)  # put, and locked in the PUT ...
    assert head(seaweed, lock_bucket, key)["ObjectLockMode"] == mode
    recorded = read_manifest(settings.state_dir / "manifest.jsonl")
    assert key not in {e["key"] for e in recorded}  # ... but never recorded

    report = await archive_calls(settings, [call.sid])  # the next run adopts it
    assert [r.outcome for r in report.results] == ["archived"], report.results[0].detail

    stored = head(seaweed, lock_bucket, key)
    adopted = entry(settings, key)
    assert adopted["lock_mode"] == stored["ObjectLockMode"] == mode
    assert adopted["retain_until"] == class_until(call, period).isoformat().replace("+00:00", "Z")
    assert abs(stored["ObjectLockRetainUntilDate"] - class_until(call, period)) < timedelta(
        seconds=1
    )
    assert adopted["version_id"] == stored["VersionId"]
    for other in read_manifest(settings.state_dir / "manifest.jsonl"):  # the call's other objects
        assert other["lock_mode"] == head(seaweed, lock_bucket, other["key"])["ObjectLockMode"]


def put_copy(
    seaweed: Any, bucket: str, sim: Simulator, call: SimCall, lock: tuple[str, datetime] | None
) -> None:
    """The recording's exact bytes at its key, put by someone else (no archiver involved)."""
    extra: dict[str, Any] = {}
    if lock is not None:
        extra = {"ObjectLockMode": lock[0], "ObjectLockRetainUntilDate": lock[1]}
    seaweed.client().put_object(
        Bucket=bucket,
        Key=f"{PREFIX}/{recording_key(call)}",
        Body=sim.recording_bytes(call.sid, 1),
        ContentType="audio/mpeg",
        ChecksumAlgorithm="SHA256",
        **extra,
    )


@pytest.mark.parametrize("mode", ["COMPLIANCE", "GOVERNANCE"])
async def test_an_identical_object_put_unlocked_beforehand_is_locked_as_its_class_says(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
    mode: str,
) -> None:
    app_id, period = CLASSES[mode]
    call = sim.add_call(recordings=1, size=5000, **({"app_id": app_id} if app_id else {}))
    put_copy(seaweed, lock_bucket, sim, call, None)
    key = recording_key(call)
    assert "ObjectLockMode" not in head(seaweed, lock_bucket, key)
    settings, _config = settings_for(sim, server, tmp_path, lock_bucket)

    report = await archive_calls(settings, [call.sid])
    assert [r.outcome for r in report.results] == ["archived"], report.results[0].detail

    stored = head(seaweed, lock_bucket, key)
    until = class_until(call, period)
    assert stored["ObjectLockMode"] == mode
    assert abs(stored["ObjectLockRetainUntilDate"] - until) < timedelta(seconds=1)
    adopted = entry(settings, key)
    assert adopted["lock_mode"] == mode
    assert adopted["retain_until"] == until.isoformat().replace("+00:00", "Z")
    assert adopted["version_id"] == stored["VersionId"]


async def test_an_adopted_lock_is_extended_never_shortened_nor_weakened(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """GOVERNANCE until tomorrow where the class says 30 days: extended to the class's date.
    GOVERNANCE for longer than the class: left as is. GOVERNANCE where the class says
    COMPLIANCE: its mode left as is (``retention apply --strengthen-governance`` strengthens
    it), with a warning, and its date extended to the class's (that needs no bypass)."""
    now = datetime.now(UTC).replace(microsecond=0)
    short = sim.add_call(recordings=1, size=5000)
    long = sim.add_call(recordings=1, size=5000)
    weaker = sim.add_call(recordings=1, size=5000, app_id=ORDERS_APP)
    put_copy(seaweed, lock_bucket, sim, short, ("GOVERNANCE", now + timedelta(days=1)))
    put_copy(seaweed, lock_bucket, sim, long, ("GOVERNANCE", now + timedelta(days=90)))
    put_copy(seaweed, lock_bucket, sim, weaker, ("GOVERNANCE", now + timedelta(days=2)))
    settings, _config = settings_for(sim, server, tmp_path, lock_bucket)

    with caplog.at_level(logging.WARNING, logger="archiver"):
        report = await archive_calls(settings, [short.sid, long.sid, weaker.sid])
    assert [r.outcome for r in report.results] == ["archived"] * 3

    for call, mode, until in (
        (short, "GOVERNANCE", class_until(short, GENERAL)),
        (long, "GOVERNANCE", now + timedelta(days=90)),
        (weaker, "GOVERNANCE", class_until(weaker, ORDERS)),
    ):
        stored = head(seaweed, lock_bucket, recording_key(call))
        assert stored["ObjectLockMode"] == mode, call.sid
        assert abs(stored["ObjectLockRetainUntilDate"] - until) < timedelta(seconds=1), call.sid
        assert entry(settings, recording_key(call))["lock_mode"] == mode
    # The record keeps the class's date: the promise the archive made, checked by audit.
    assert entry(settings, recording_key(long))["retain_until"] == class_until(
        long, GENERAL
    ).isoformat().replace("+00:00", "Z")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        recording_key(weaker) in m and "retention apply" in m and "COMPLIANCE" in m for m in warned
    ), warned
    assert not any(recording_key(short) in m or recording_key(long) in m for m in warned), warned
