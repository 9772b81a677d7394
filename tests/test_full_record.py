"""The call's full record beside its audio: call.json, legs.json, voice-log.json and its file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from archiver.archive import archive_calls
from archiver.config import Settings, load_settings
from archiver.manifest import read_manifest
from archiver.report import ARCHIVED, NOT_READY
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env


def settings_for(
    sim: Simulator, server: SimulatorServer, bucket: str, tmp_path: Path, **env: str
) -> Settings:
    base = exotel_env(sim, server.base_url, f"s3://{bucket}/rec", tmp_path / "state")
    return load_settings(env={**base, "ARCHIVER_ATTEMPTS": "2", **env})


def stored(seaweed: Any, bucket: str) -> dict[str, bytes]:
    client = seaweed.client()
    listed = [
        o
        for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])
        if "/_manifest/" not in o["Key"]
    ]
    return {
        o["Key"].split("/", 5)[-1]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
    }


def entries(settings: Settings) -> dict[str, dict[str, Any]]:
    return {e["kind"]: e for e in read_manifest(settings.state_dir / "manifest.jsonl")}


async def test_call_details_are_stored_as_received(
    sim: Simulator, server: SimulatorServer, s3_env: None, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    call = sim.add_call(digits="4-2")
    settings = settings_for(sim, server, bucket, tmp_path)
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED and report.api_requests == 1
    objects = stored(seaweed, bucket)
    assert set(objects) == {"recording-1.mp3", "call.json"}
    details = json.loads(objects["call.json"])["response"]["call_details"]
    assert details["sid"] == call.sid and details["digits"] == "4-2"
    entry = entries(settings)["call_details"]
    assert entry["sha256"] == hashlib.sha256(objects["call.json"]).hexdigest()
    assert entry["content_type"] == "application/json" and entry["key"].endswith("/call.json")
    assert "?" not in entry["source"] and entry["source"].endswith(f"/calls/{call.sid}")


async def test_legs_when_enabled_and_a_note_when_not(
    sim: Simulator, server: SimulatorServer, s3_env: None, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    call = sim.add_call()
    settings = settings_for(sim, server, bucket, tmp_path, ARCHIVER_LEGS="on")
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED and report.api_requests == 2
    legs = json.loads(stored(seaweed, bucket)["legs.json"])["response"]["leg_details"]
    assert legs["call_sid"] == call.sid and legs["to"][0]["group_name"] == "Agents"
    assert (
        entries(settings)["legs"]["sha256"]
        == hashlib.sha256(stored(seaweed, bucket)["legs.json"]).hexdigest()
    )

    other = sim.add_call()
    sim.legs_enabled = False
    report = await archive_calls(settings, [other.sid])
    result = report.results[0]
    assert result.outcome == ARCHIVED  # not fatal
    assert "legs not archived" in (result.detail or "") and "404" in (result.detail or "")
    assert [o.kind for o in result.objects] == ["recording", "call_details"]


@pytest.mark.parametrize("fmt, channel", [("wav", "dual"), ("mp3", "single")])
async def test_voice_log_json_and_file(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
    fmt: str,
    channel: str,
) -> None:
    call = sim.add_call(recordings=2, size=40_000)
    settings = settings_for(
        sim,
        server,
        bucket,
        tmp_path,
        ARCHIVER_VOICE_LOGS="audio",
        ARCHIVER_VOICE_LOG_FORMAT=fmt,
        ARCHIVER_VOICE_LOG_CHANNEL=channel,
    )
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    objects = stored(seaweed, bucket)
    assert set(objects) == {
        "recording-1.mp3",
        "recording-2.mp3",
        "call.json",
        "voice-log.json",
        f"voice-log.{fmt}",
    }
    assert objects[f"voice-log.{fmt}"] == sim.voice_log_bytes(call.sid, fmt, channel)
    voice_log = json.loads(objects["voice-log.json"])["response"]["voice_log"]
    assert voice_log["format"] == fmt and voice_log["channel"] == channel
    entry = entries(settings)["voice_log_audio"]
    assert entry["format"] == fmt and entry["size"] == len(objects[f"voice-log.{fmt}"])
    assert "X-Amz" not in json.dumps(entry)

    api = sim.counters["api_requests"]
    again = await archive_calls(settings, [call.sid])
    assert again.results[0].outcome == "already_archived" and sim.counters["api_requests"] == api


async def test_voice_log_url_expired_is_refreshed(
    sim: Simulator, server: SimulatorServer, s3_env: None, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    call = sim.add_call()
    settings = settings_for(sim, server, bucket, tmp_path, ARCHIVER_VOICE_LOGS="audio")
    sim.faults.recording_script.extend([None, "expired"])  # the recording fine, the voice log not
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    assert sim.counters["voice_logs"] == 2
    assert stored(seaweed, bucket)["voice-log.wav"] == sim.voice_log_bytes(call.sid, "wav", "dual")


async def test_voice_log_absent_or_processing(
    sim: Simulator, server: SimulatorServer, s3_env: None, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    settings = settings_for(sim, server, bucket, tmp_path, ARCHIVER_VOICE_LOGS="audio")
    busy = sim.add_call(voice_log_status="processing")
    report = await archive_calls(settings, [busy.sid])
    assert report.results[0].outcome == NOT_READY
    assert "processing" in (report.results[0].detail or "")
    assert "voice-log.json" not in stored(seaweed, bucket)

    busy.voice_log_status = None  # Exotel has finished: the next run completes the call
    report = await archive_calls(settings, [busy.sid])
    assert report.results[0].outcome == ARCHIVED
    assert report.results[0].stored == 2  # only the voice log JSON and file: audio was kept
    assert {"voice-log.json", "voice-log.wav"} <= set(stored(seaweed, bucket))

    sim.voice_logs_enabled = False
    plain = sim.add_call()
    report = await archive_calls(settings, [plain.sid])
    assert report.results[0].outcome == ARCHIVED
    assert "voice log not archived" in (report.results[0].detail or "")
