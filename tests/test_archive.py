"""End to end: the simulator over real HTTP → the worker → SeaweedFS; bucket and manifest checked.

Every test asserts on what ended up in the bucket (byte for byte) and in the manifest, not only on
what the worker says.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from archiver.archive import archive_calls
from archiver.config import Settings, load_settings
from archiver.errors import DestinationMismatch, ExotelAuthError
from archiver.exotel.models import IST
from archiver.ledger import Ledger
from archiver.manifest import read_manifest
from archiver.report import ALREADY_ARCHIVED, ARCHIVED, FAILED, NO_RECORDING, NOT_READY
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env

PREFIX = "archive"


def make_settings(
    sim: Simulator, base_url: str, destination: str, state: Path, **env: str
) -> Settings:
    return load_settings(
        env={**exotel_env(sim, base_url, destination, state), "ARCHIVER_ATTEMPTS": "3", **env}
    )


@pytest.fixture
def settings(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> Settings:
    return make_settings(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state")


def drop_manifest(seaweed: Any, bucket: str) -> None:
    """Delete the archive's chain and identity marker: what is left are objects with no archive
    around them, which a new state directory may then claim (tests/test_identity.py)."""
    client = seaweed.client()
    for item in client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/_manifest/")["Contents"]:
        client.delete_object(Bucket=bucket, Key=item["Key"])


def bucket_objects(seaweed: Any, bucket: str, *, everything: bool = False) -> dict[str, bytes]:
    """Objects in the bucket, key → bytes, read straight from SeaweedFS: recordings only, unless
    ``everything`` (the call's JSON too). Manifest segments are tested on their own."""
    client = seaweed.client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if "/_manifest/" in item["Key"]:
                continue
            if everything or "/recording-" in item["Key"]:
                out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def manifest_of(settings: Settings, kind: str | None = "recording") -> list[dict[str, Any]]:
    entries = read_manifest(settings.state_dir / "manifest.jsonl")
    return [e for e in entries if kind is None or e["kind"] == kind]


def expected_key(sim: Simulator, sid: str, index: int, ext: str = "mp3") -> str:
    created = sim.calls[sid].created.astimezone(IST)  # keys use the day of Exotel's v3 times
    return f"{PREFIX}/{created:%Y/%m/%d}/{sid}/recording-{index}.{ext}"


async def test_terminal_call_with_one_recording(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call(recordings=1, size=100_000)
    report = await archive_calls(settings, [call.sid])

    assert [r.outcome for r in report.results] == [ARCHIVED]
    body = sim.recording_bytes(call.sid, 1)
    key = expected_key(sim, call.sid, 1)
    assert bucket_objects(seaweed, bucket) == {key: body}
    [entry] = manifest_of(settings)
    assert entry["call_sid"] == call.sid and entry["seq"] == 1
    assert entry["key"] == key.removeprefix(PREFIX + "/")
    assert entry["location"] == f"s3://{bucket}/{key}"
    assert entry["size"] == len(body)
    assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    assert "?" not in entry["source"] and "Signature" not in json.dumps(entry)
    head = seaweed.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "audio/mpeg"


async def test_terminal_call_with_several_recordings(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call(recordings=[10_000, 250_000, 3_000])
    report = await archive_calls(settings, [call.sid])

    assert report.results[0].outcome == ARCHIVED
    stored = bucket_objects(seaweed, bucket)
    assert stored == {
        expected_key(sim, call.sid, i): sim.recording_bytes(call.sid, i) for i in (1, 2, 3)
    }
    entries = manifest_of(settings)
    assert [e["index"] for e in entries] == [1, 2, 3]
    assert [e["seq"] for e in entries] == [1, 2, 3]
    for e in entries:
        assert e["sha256"] == hashlib.sha256(sim.recording_bytes(call.sid, e["index"])).hexdigest()


async def test_active_call_is_not_ready_then_archived_when_terminal(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call(state="active")
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == NOT_READY
    assert bucket_objects(seaweed, bucket) == {}
    assert manifest_of(settings) == []

    sim.finish(call.sid)
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    assert list(bucket_objects(seaweed, bucket)) == [expected_key(sim, call.sid, 1)]


async def test_call_without_recording(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call(recordings=0, status="to_leg_unanswered")
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == NO_RECORDING
    assert bucket_objects(seaweed, bucket) == {}


async def test_rerun_archives_nothing_twice(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    calls = [sim.add_call(recordings=2), sim.add_call(recordings=1)]
    sids = [c.sid for c in calls]
    first = await archive_calls(settings, sids)
    assert [r.outcome for r in first.results] == [ARCHIVED, ARCHIVED]
    objects, manifest = bucket_objects(seaweed, bucket), manifest_of(settings)
    before = sim.counters["api_requests"]

    second = await archive_calls(settings, sids)
    assert [r.outcome for r in second.results] == [ALREADY_ARCHIVED, ALREADY_ARCHIVED]
    assert second.api_requests == 0 and sim.counters["api_requests"] == before
    assert bucket_objects(seaweed, bucket) == objects
    assert manifest_of(settings) == manifest
    assert len(manifest) == 3


async def test_a_call_whose_objects_are_all_in_the_ledger_is_already_archived(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    """E.g. killed between its last object and its outcome, or after ``manifest rebuild``: the
    details are looked at again, nothing is stored, and the result does not say ``archived``."""
    call = sim.add_call(recordings=2)
    first = await archive_calls(settings, [call.sid])
    assert first.results[0].outcome == ARCHIVED and first.results[0].stored == 3
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    ledger.set_call(call.sid, "pending")
    ledger.close()
    objects, manifest = bucket_objects(seaweed, bucket, everything=True), manifest_of(settings)

    second = await archive_calls(settings, [call.sid])
    result = second.results[0]
    assert result.outcome == ALREADY_ARCHIVED and result.stored == 0 and len(result.objects) == 3
    assert second.count(ARCHIVED) == 0 and second.bytes_archived == 0
    assert second.as_dict()["counts"]["already_archived"] == 1
    assert bucket_objects(seaweed, bucket, everything=True) == objects
    assert manifest_of(settings) == manifest
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    assert ledger.call_outcome(call.sid) == ARCHIVED
    ledger.close()


async def test_rerun_with_a_lost_ledger_finds_the_objects_already_stored(
    sim: Simulator, server: SimulatorServer, s3_env: None, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    call = sim.add_call(recordings=1)
    first = make_settings(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "a")
    await archive_calls(first, [call.sid])
    objects = bucket_objects(seaweed, bucket, everything=True)  # the recording and call.json
    assert len(objects) == 2
    last_modified = {
        key: seaweed.client().head_object(Bucket=bucket, Key=key)["LastModified"] for key in objects
    }

    fresh = make_settings(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "b")
    # A new ledger on a destination that holds an archive is refused (tests/test_identity.py);
    # objects with no manifest around them (copied in from elsewhere) are found and adopted.
    with pytest.raises(DestinationMismatch):
        await archive_calls(fresh, [call.sid])
    drop_manifest(seaweed, bucket)
    report = await archive_calls(fresh, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    assert report.results[0].stored == 2  # recorded again in the new ledger...
    assert bucket_objects(seaweed, bucket, everything=True) == objects  # ...but not written again
    for key, when in last_modified.items():
        assert seaweed.client().head_object(Bucket=bucket, Key=key)["LastModified"] == when
    # call.json is a snapshot: the one stored first is kept and recorded as it is
    assert [(e["kind"], e["sha256"]) for e in manifest_of(fresh, kind=None)] == [
        (e["kind"], e["sha256"]) for e in manifest_of(first, kind=None)
    ]


@pytest.mark.parametrize("checksum", ["sha256", "md5"])
async def test_a_planted_snapshot_is_recorded_with_its_own_sha256_not_its_metadata(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
    checksum: str,
) -> None:
    # call.json replaced by other bytes of the same length, whose metadata claims the SHA-256
    # the first run recorded: a run with a lost ledger keeps the stored snapshot, and must
    # record the SHA-256 of the bytes that are there, not the claim.
    call = sim.add_call(recordings=1)
    env = {"ARCHIVER_S3_CHECKSUM": checksum}
    first = make_settings(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "a", **env)
    await archive_calls(first, [call.sid])
    [recorded] = manifest_of(first, "call_details")
    key = f"{PREFIX}/{recorded['key']}"
    client = seaweed.client()
    original = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    planted = original[::-1]
    assert planted != original
    client.put_object(Bucket=bucket, Key=key, Body=planted, Metadata={"sha256": recorded["sha256"]})

    drop_manifest(seaweed, bucket)  # objects without their archive's chain and marker
    fresh = make_settings(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "b", **env)
    report = await archive_calls(fresh, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == planted
    [again] = manifest_of(fresh, "call_details")
    assert (again["size"], again["sha256"]) == (len(planted), hashlib.sha256(planted).hexdigest())


async def test_a_different_object_at_the_key_is_a_conflict_and_is_kept(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call(recordings=1)
    key = expected_key(sim, call.sid, 1)
    seaweed.client().put_object(Bucket=bucket, Key=key, Body=b"someone else's bytes")

    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == FAILED
    assert "conflict" in (report.results[0].detail or "").lower() or "exists" in (
        report.results[0].detail or ""
    )
    assert bucket_objects(seaweed, bucket) == {key: b"someone else's bytes"}
    assert manifest_of(settings) == []


async def test_bad_credentials_stop_the_run(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    call = sim.add_call()
    bad = make_settings(
        sim,
        server.base_url,
        f"s3://{bucket}/{PREFIX}",
        tmp_path / "s",
        EXOTEL_API_TOKEN="wrong-token-value",
    )
    with pytest.raises(ExotelAuthError) as info:
        await archive_calls(bad, [call.sid])
    assert "401" in str(info.value) and "EXOTEL_API_TOKEN" in str(info.value)
    assert "wrong-token-value" not in str(info.value)


async def test_unknown_call_fails_with_404_and_others_still_archive(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call()
    report = await archive_calls(settings, ["0123456789abcdef0123456789abcdef", call.sid])
    outcomes = {r.call_sid: r for r in report.results}
    assert outcomes["0123456789abcdef0123456789abcdef"].outcome == FAILED
    assert "404" in (outcomes["0123456789abcdef0123456789abcdef"].detail or "")
    assert outcomes[call.sid].outcome == ARCHIVED
    assert len(bucket_objects(seaweed, bucket)) == 1


@pytest.mark.parametrize("status", [429, 500])
async def test_transient_api_errors_are_retried(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str, status: int
) -> None:
    call = sim.add_call()
    sim.faults.retry_after = 1.5
    sim.faults.api_script.extend([status, status])
    started = time.monotonic()
    report = await archive_calls(settings, [call.sid])
    elapsed = time.monotonic() - started
    assert report.results[0].outcome == ARCHIVED
    assert report.api_requests == 3  # two refused, one answered
    if status == 429:  # Retry-After was honoured (a lower bound: noise only makes it slower)
        assert elapsed >= 3.0
    assert bucket_objects(seaweed, bucket) == {
        expected_key(sim, call.sid, 1): sim.recording_bytes(call.sid, 1)
    }


async def test_persistent_server_errors_fail_the_call_after_the_attempts(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call()
    sim.faults.api_script.extend([500] * 3)
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == FAILED and "500" in (report.results[0].detail or "")
    assert report.api_requests == 3
    assert bucket_objects(seaweed, bucket) == {} and manifest_of(settings) == []


async def test_expired_url_is_refreshed(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call()
    sim.faults.recording_script.append("expired")
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    assert sim.counters["v3_call_details"] == 2  # the first fetch and one refresh
    assert bucket_objects(seaweed, bucket) == {
        expected_key(sim, call.sid, 1): sim.recording_bytes(call.sid, 1)
    }


async def test_url_that_stays_expired_fails_and_records_nothing(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call()
    sim.faults.recording_script.extend(["expired"] * 10)
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == FAILED
    assert "fresh URL" in (report.results[0].detail or "")
    assert sim.counters["v3_call_details"] == 1 + settings.url_refreshes
    assert bucket_objects(seaweed, bucket) == {} and manifest_of(settings) == []


async def test_body_cut_off_resumes_with_a_range_request(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    size = 3_000_000
    call = sim.add_call(size=size)
    sim.faults.recording_script.append("cut")
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    body = sim.recording_bytes(call.sid, 1)
    assert bucket_objects(seaweed, bucket) == {expected_key(sim, call.sid, 1): body}
    [entry] = manifest_of(settings)
    assert entry["sha256"] == hashlib.sha256(body).hexdigest()  # the hash spans both requests
    assert sim.counters["range_requests"] == 1
    # The resumed request asked only for what had not arrived: the first part was not fetched
    # again. (bytes_served counts what the server wrote before the reset, some of which may
    # never have reached the client, so it is not an exact measure.)
    assert 0 < sim.counters["range_bytes_asked"] < size
    assert sim.counters["bytes_served"] >= size


async def test_source_that_ignores_range_is_restarted_cleanly(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    size = 3_000_000
    call = sim.add_call(size=size)
    sim.faults.recording_script.extend(["cut", "no_range"])
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    assert sim.counters["range_requests"] == 0
    assert sim.counters["recording_requests"] == 2  # the cut one, then one clean restart
    assert bucket_objects(seaweed, bucket) == {
        expected_key(sim, call.sid, 1): sim.recording_bytes(call.sid, 1)
    }
    [entry] = manifest_of(settings)
    assert entry["size"] == size
    assert entry["sha256"] == hashlib.sha256(sim.recording_bytes(call.sid, 1)).hexdigest()


async def test_cut_off_then_expired_resumes_on_a_fresh_url(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call(size=2_000_000)
    sim.faults.recording_script.extend(["cut", "expired"])
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    assert sim.counters["v3_call_details"] == 2 and sim.counters["range_requests"] == 1
    assert bucket_objects(seaweed, bucket) == {
        expected_key(sim, call.sid, 1): sim.recording_bytes(call.sid, 1)
    }


async def test_wav_recordings_keep_their_format(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call(content_type="audio/wav", size=50_000)
    await archive_calls(settings, [call.sid])
    key = expected_key(sim, call.sid, 1, ext="wav")
    assert bucket_objects(seaweed, bucket) == {key: sim.recording_bytes(call.sid, 1)}
    assert manifest_of(settings)[0]["format"] == "wav"


async def test_body_always_cut_off_records_nothing(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call(size=300_000)
    sim.faults.always_cut.add(call.sid)
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == FAILED
    assert bucket_objects(seaweed, bucket) == {}
    assert manifest_of(settings) == []
    assert list((settings.state_dir / "spool").iterdir()) == []  # spool files are gone


@pytest.mark.parametrize(
    "fault, message",
    [
        ("html", "text/html, not audio"),
        ("xml200", "application/xml, not audio"),
        ("empty", "the body is empty"),
        ("short_length", "bytes"),
        ("noise", "not MP3 or WAV"),
    ],
)
async def test_bodies_that_are_not_recordings_are_refused(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str, fault: str, message: str
) -> None:
    call = sim.add_call()
    sim.faults.recording_script.extend([fault] * 5)
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == FAILED
    assert message in (report.results[0].detail or "")
    assert bucket_objects(seaweed, bucket) == {} and manifest_of(settings) == []


async def test_local_directory_destination(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    calls = [sim.add_call(recordings=2), sim.add_call(recordings=1)]
    root = tmp_path / "archive"
    settings = make_settings(sim, server.base_url, f"file://{root}", tmp_path / "state")
    report = await archive_calls(settings, [c.sid for c in calls])
    assert [r.outcome for r in report.results] == [ARCHIVED, ARCHIVED]

    files = {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not str(p.relative_to(root)).startswith("_manifest/")
    }
    assert (root / "_manifest" / "segments" / "00000001.jsonl").exists()
    expected = {
        expected_key(sim, c.sid, i).removeprefix(PREFIX + "/"): sim.recording_bytes(c.sid, i)
        for c in calls
        for i in range(1, len(c.recordings) + 1)
    }
    call_json = {k for k in files if k.endswith("/call.json")}
    assert len(call_json) == 2
    assert {k: v for k, v in files.items() if k not in call_json} == expected  # no temp files
    assert {e["location"] for e in manifest_of(settings)} == {str(root / k) for k in expected}


async def test_no_secret_reaches_the_logs_or_the_manifest(
    sim: Simulator,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from archiver.log import setup_logging

    caplog.set_level(logging.DEBUG)  # the raw records, before any redaction
    handler = setup_logging("debug", secrets=settings.secrets)  # the real one, on captured stderr
    calls = [sim.add_call() for _ in range(3)]
    sim.faults.recording_script.extend(["expired", "cut"])
    sim.faults.api_script.append(500)
    try:
        report = await archive_calls(
            settings, [c.sid for c in calls] + ["0123456789abcdef0123456789abcdef"]
        )
    finally:
        logging.getLogger().removeHandler(handler)

    written = "\n".join(
        [
            caplog.text,
            capsys.readouterr().err,
            (settings.state_dir / "manifest.jsonl").read_text(),
            json.dumps(report.as_dict()),
        ]
    )
    assert "archived" in written  # the logs were really captured
    for secret in (sim.api_token, sim.api_key, "X-Amz-Signature=", "X-Amz-Credential="):
        assert secret not in written


async def test_a_custom_key_template(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    call = sim.add_call(direction="inbound", recordings=1)
    root = tmp_path / "out"
    settings = make_settings(
        sim,
        server.base_url,
        str(root),
        tmp_path / "state",
        ARCHIVER_KEY_TEMPLATE="{account_sid}/{direction}/{yyyy}-{mm}/{call_sid}",
    )
    await archive_calls(settings, [call.sid])
    folder = root / sim.account_sid / "inbound" / f"{sim.calls[call.sid].created:%Y-%m}" / call.sid
    assert (folder / "recording-1.mp3").read_bytes() == sim.recording_bytes(call.sid, 1)
    assert (folder / "call.json").exists()


async def test_a_hostile_call_sid_from_the_api_is_never_written(
    sim: Simulator, settings: Settings, seaweed: Any, bucket: str
) -> None:
    call = sim.add_call()
    sim.calls[call.sid].sid = "../../evil"  # the API now answers with a SID that is a path
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == FAILED
    assert "invalid call SID" in (report.results[0].detail or "")
    assert bucket_objects(seaweed, bucket, everything=True) == {}
    assert manifest_of(settings, kind=None) == []
