"""`exotel-archiver repair`: the way back after `verify` found objects missing or altered.

Issue 13, item 7. Every case runs the real archiver against the simulator and SeaweedFS, damages
the bucket with a raw client, repairs, and checks the bucket byte for byte and the chain.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from archiver.cli import main
from archiver.identity import MARKER_KEY
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env

PREFIX = "r"


def cli(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


@pytest.fixture
def archived(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> dict[str, Any]:
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state")
    calls = [sim.add_call(recordings=2), sim.add_call()]
    result = cli(["archive", *[c.sid for c in calls]], env)
    assert result.exit_code == 0, result.output
    entries = read_manifest(tmp_path / "state" / "manifest.jsonl")
    return {"env": env, "calls": calls, "entries": entries}


def body(seaweed: Any, bucket: str, key: str) -> bytes:
    return bytes(seaweed.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def recording_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("kind") == "recording"]


def test_a_deleted_recording_is_put_back_and_the_chain_says_so(
    archived: dict[str, Any], seaweed: Any, bucket: str, sim: Simulator
) -> None:
    env, entries = archived["env"], archived["entries"]
    lost = recording_entries(entries)[0]
    full = f"{PREFIX}/{lost['key']}"
    seaweed.client().delete_object(Bucket=bucket, Key=full)
    assert cli(["verify"], env).exit_code == 1
    # Before the fix: `archive SID` said "already archived" and there was no way back.
    report = Path(env["ARCHIVER_STATE_DIR"]) / "repair.json"
    result = cli(["repair", "--report", str(report)], env)
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(body(seaweed, bucket, full)).hexdigest() == lost["sha256"]
    done = json.loads(report.read_text())
    assert [(i["key"], i["outcome"]) for i in done["items"]] == [(lost["key"], "repaired")]
    events = [
        e
        for e in read_manifest(Path(env["ARCHIVER_STATE_DIR"]) / "manifest.jsonl")
        if e.get("kind") == "repaired"
    ]
    assert len(events) == 1
    assert (events[0]["key"], events[0]["sha256"], events[0]["size"]) == (
        lost["key"],
        lost["sha256"],
        lost["size"],
    )
    assert events[0]["previous"] == "missing"
    verified = cli(["verify"], env)
    assert verified.exit_code == 0, verified.output
    again = cli(["repair"], env)  # nothing left to do: no request, no event
    assert again.exit_code == 0 and "nothing to repair" in again.output


def test_an_altered_recording_is_kept_aside_and_replaced(
    archived: dict[str, Any], seaweed: Any, bucket: str
) -> None:
    env, entries = archived["env"], archived["entries"]
    target = recording_entries(entries)[1]
    full = f"{PREFIX}/{target['key']}"
    client = seaweed.client()
    forged = bytearray(body(seaweed, bucket, full))
    forged[100] ^= 0xFF
    client.put_object(Bucket=bucket, Key=full, Body=bytes(forged))
    result = cli(["repair"], env)
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(body(seaweed, bucket, full)).hexdigest() == target["sha256"]
    kept = client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/_manifest/quarantine/")
    aside = [o["Key"] for o in kept.get("Contents", [])]
    assert len(aside) == 1 and body(seaweed, bucket, aside[0]) == bytes(forged)
    assert cli(["verify"], env).exit_code == 0


def test_what_the_source_no_longer_has_is_reported_exit_1(
    archived: dict[str, Any], seaweed: Any, bucket: str, sim: Simulator
) -> None:
    env, entries = archived["env"], archived["entries"]
    lost = recording_entries(entries)[-1]
    seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{lost['key']}")
    sim.calls.pop(lost["call_sid"])  # Exotel's retention ran out
    result = cli(["repair"], env)
    assert result.exit_code == 1, result.output
    assert lost["key"] in result.output and "Exotel no longer has" in result.output
    assert cli(["verify"], env).exit_code == 1  # still missing: nothing claims otherwise
    assert not [
        e
        for e in read_manifest(Path(env["ARCHIVER_STATE_DIR"]) / "manifest.jsonl")
        if e.get("kind") == "repaired"
    ]


def test_other_bytes_at_the_source_are_never_put_back(
    archived: dict[str, Any], seaweed: Any, bucket: str, sim: Simulator
) -> None:
    env, entries = archived["env"], archived["entries"]
    lost = recording_entries(entries)[0]
    full = f"{PREFIX}/{lost['key']}"
    seaweed.client().delete_object(Bucket=bucket, Key=full)
    call = sim.calls[lost["call_sid"]]
    call.recordings[lost["index"] - 1] += 7  # the source serves other bytes now
    sim.calls.pop(call.sid)
    sim._register(call)
    result = cli(["repair"], env)
    assert result.exit_code == 1, result.output
    assert "other bytes" in result.output
    answer = seaweed.client().list_objects_v2(Bucket=bucket, Prefix=full)
    assert answer.get("KeyCount", 0) == 0


def test_a_lost_call_json_cannot_be_fetched_again_and_says_why(
    archived: dict[str, Any], seaweed: Any, bucket: str
) -> None:
    env, entries = archived["env"], archived["entries"]
    snap = next(e for e in entries if e.get("kind") == "call_details")
    seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{snap['key']}")
    result = cli(["repair"], env)
    assert result.exit_code == 1, result.output
    assert snap["key"] in result.output and "snapshot" in result.output


def test_a_wiped_destination_gets_its_marker_segments_and_recordings_back(
    archived: dict[str, Any], seaweed: Any, bucket: str
) -> None:
    env = archived["env"]
    client = seaweed.client()
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    originals = {o["Key"]: body(seaweed, bucket, o["Key"]) for o in listed}
    for key in originals:
        client.delete_object(Bucket=bucket, Key=key)
    refused = cli(["archive", archived["calls"][0].sid], env)
    assert refused.exit_code == 2
    result = cli(["repair"], env)
    assert result.exit_code == 1, result.output  # the call.json snapshots cannot come back
    for key, data in originals.items():
        if key.endswith("call.json"):
            continue
        assert body(seaweed, bucket, key) == data, key  # marker, segments, recordings: exact
    assert f"{PREFIX}/{MARKER_KEY}" in originals
    assert cli(["archive", archived["calls"][0].sid], env).exit_code == 0  # bound again


def test_a_dry_run_names_what_it_would_repair_and_changes_nothing(
    archived: dict[str, Any], seaweed: Any, bucket: str, sim: Simulator
) -> None:
    env, entries = archived["env"], archived["entries"]
    lost = recording_entries(entries)[0]
    seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{lost['key']}")
    before = sim.counters.get("api_requests", 0)
    result = cli(["repair", "--dry-run"], env)
    assert result.exit_code == 0, result.output
    assert lost["key"] in result.output
    assert sim.counters.get("api_requests", 0) == before
    assert cli(["verify"], env).exit_code == 1


def test_a_dry_run_and_a_lost_segment_need_no_exotel_credentials(
    archived: dict[str, Any], seaweed: Any, bucket: str
) -> None:
    env = {
        k: v
        for k, v in archived["env"].items()
        if k not in ("EXOTEL_API_KEY", "EXOTEL_API_TOKEN", "EXOTEL_ACCOUNT_SID")
    }
    listed = seaweed.client().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/_manifest/segments/")
    [segment] = [o["Key"] for o in listed["Contents"]]
    original = body(seaweed, bucket, segment)
    seaweed.client().delete_object(Bucket=bucket, Key=segment)
    dry = cli(["repair", "--dry-run"], env)
    assert dry.exit_code == 0 and segment.removeprefix(f"{PREFIX}/") in dry.output, dry.output
    result = cli(["repair"], env)
    assert result.exit_code == 0, result.output
    assert body(seaweed, bucket, segment) == original
