"""The rescue lane (issue 18): recordings from the v1 listing at ~0.01 requests a call, then
enrichment through v3, into SeaweedFS; asserted on the bucket, the ledger and the manifest."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver.exotel.models import IST
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import exotel_env, invoke, ledger_rows, outcomes

PREFIX = "calls"


def lane_env(
    sim: Simulator, server: SimulatorServer, bucket: str, tmp_path: Path, **extra: str
) -> dict[str, str]:
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state")
    return {
        **env,
        "ARCHIVER_RESCUE": "on",
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
        "EXOTEL_RATE_LIMIT": "6000",
        **extra,
    }


def the_day() -> date:
    """Three days back: settled, whatever the hour (midnight IST is 18:30 UTC)."""
    return datetime.now(IST).date() - timedelta(days=3)


def objects(seaweed: SeaweedFS, bucket: str) -> dict[str, bytes]:
    s3 = seaweed.client()
    out: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{PREFIX}/"):
        for item in page.get("Contents", []):
            key = item["Key"]
            if "/_manifest/" not in key:
                out[key] = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return out


def by_call(stored: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    calls: dict[str, dict[str, bytes]] = {}
    for key, body in stored.items():
        *_, sid, name = key.split("/")
        calls.setdefault(sid, {})[name] = body
    return calls


def manifest(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "state" / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_backfill_rescues_every_recording_from_the_listing_for_a_hundredth_of_a_request(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    day = the_day()
    calls = [
        sim.add_call(created=datetime.combine(day, datetime.min.time(), IST) + timedelta(minutes=n))
        for n in range(250)
    ]
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENRICH="never")

    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)

    assert result.exit_code == 0, result.output
    # Three listing pages (100 a page), no v3 request at all.
    assert sim.counters.get("v3_call_details", 0) == 0
    assert sim.counters["api_requests"] == sim.counters["v1_bulk"] == 3
    assert sim.counters["api_requests"] / len(calls) <= 0.03
    stored = by_call(objects(seaweed, bucket))
    assert set(stored) == {c.sid for c in calls}
    for call in calls:
        files = stored[call.sid]
        assert set(files) == {"recording-1.mp3", "call-v1.json"}
        assert files["recording-1.mp3"] == sim.recording_asset(call, 1).body()
        item = json.loads(files["call-v1.json"])
        assert item["Sid"] == call.sid and "X-Amz-Signature" not in files["call-v1.json"].decode()
        assert item["PreSignedRecordingUrl"].endswith(".mp3")  # the URL kept, its query cut
    assert set(outcomes(tmp_path / "state", *(c.sid for c in calls)).values()) == {"rescued"}
    lines = manifest(tmp_path)
    assert len(lines) == 2 * len(calls)
    recordings = {ln["call_sid"]: ln for ln in lines if ln["kind"] == "recording"}
    for call in calls:
        body = sim.recording_asset(call, 1).body()
        assert recordings[call.sid]["sha256"] == hashlib.sha256(body).hexdigest()
    summary = json.loads((tmp_path / "state" / f"backfill-{day}-{day}.json").read_text())
    assert summary["result"]["counts"]["rescued"] == len(calls)
    assert summary["plan"]["listing_requests"] == 3
    assert summary["result"]["bytes_archived"] == sum(ln["size"] for ln in lines)
    assert "rescued" in result.output


def test_enrichment_completes_every_call_and_finds_the_second_recording(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    day = the_day()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    one = [sim.add_call(created=noon + timedelta(minutes=n)) for n in range(5)]
    two = [sim.add_call(created=noon + timedelta(minutes=10 + n), recordings=2) for n in range(3)]
    env = lane_env(sim, server, bucket, tmp_path)

    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)

    assert result.exit_code == 0, result.output
    stored = by_call(objects(seaweed, bucket))
    for call in one:
        assert set(stored[call.sid]) == {"recording-1.mp3", "call-v1.json", "call.json"}
    for call in two:
        files = stored[call.sid]
        assert set(files) == {"recording-1.mp3", "recording-2.mp3", "call-v1.json", "call.json"}
        assert files["recording-1.mp3"] == sim.recording_asset(call, 1).body()
        assert files["recording-2.mp3"] == sim.recording_asset(call, 2).body()
    assert set(outcomes(tmp_path / "state", *(c.sid for c in one + two)).values()) == {"archived"}
    # One listing page, one v3 request a call (the enrichment), no URL refresh.
    assert sim.counters["v1_bulk"] == 1
    assert sim.counters["v3_call_details"] == len(one) + len(two)
    # No recording stored twice: one manifest line per object.
    lines = manifest(tmp_path)
    keys = [ln["key"] for ln in lines]
    assert len(keys) == len(set(keys)) == sum(len(f) for f in stored.values())
    summary = json.loads((tmp_path / "state" / f"backfill-{day}-{day}.json").read_text())
    assert summary["result"]["counts"]["archived"] == len(one) + len(two)
    assert summary["result"]["counts"]["rescued"] == 0


def test_a_second_backfill_downloads_nothing_again(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    day = the_day()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    calls = [sim.add_call(created=noon + timedelta(minutes=n)) for n in range(4)]
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENRICH="never")
    assert invoke(["backfill", "--since", str(day), "--until", str(day)], env).exit_code == 0
    downloads = sim.counters["recording_requests"]
    lines = manifest(tmp_path)

    again = invoke(["backfill", "--since", str(day), "--until", str(day)], env)

    assert again.exit_code == 0, again.output
    assert sim.counters["recording_requests"] == downloads
    assert manifest(tmp_path) == lines
    # Then enrichment: each call's one recording is the rescued one, not downloaded again.
    enrich = invoke(
        ["backfill", "--since", str(day), "--until", str(day)],
        {**env, "ARCHIVER_ENRICH": "background"},
    )
    assert enrich.exit_code == 0, enrich.output
    assert sim.counters["recording_requests"] == downloads
    assert set(outcomes(tmp_path / "state", *(c.sid for c in calls)).values()) == {"archived"}
    rows = ledger_rows(tmp_path / "state", "SELECT kind, COUNT(*) FROM objects GROUP BY kind")
    assert dict(rows) == {"recording": 4, "v1_record": 4, "call_details": 4}


@pytest.mark.parametrize("validity", ["expired", "html"])
def test_a_url_that_cannot_serve_the_rescue_sends_its_call_the_v3_way(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
    validity: str,
) -> None:
    day = the_day()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    calls = [sim.add_call(created=noon + timedelta(minutes=n)) for n in range(3)]
    bad = calls[1]
    # The first download of its recording fails: an expired URL, or a refusal.
    sim.faults.recording_for[bad.sid] = deque([validity])
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENRICH="never")

    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)

    assert result.exit_code == 0, result.output
    got = outcomes(tmp_path / "state", *(c.sid for c in calls))
    assert got[bad.sid] == "archived" and got[calls[0].sid] == got[calls[2].sid] == "rescued"
    assert sim.counters["v3_call_details"] == 1  # the one call, through v3
    files = by_call(objects(seaweed, bucket))[bad.sid]
    assert files["recording-1.mp3"] == sim.recording_asset(bad, 1).body()
    assert "call.json" in files


def test_when_v3_names_the_rescued_file_otherwise_it_is_matched_by_its_bytes_not_stored_twice(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """Exotel's pages do not say v1's URL and v3's name the file alike: here v3's host is
    another name for the same server, so no URL matches and the bytes must."""
    day = the_day()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    call = sim.add_call(created=noon, recordings=2)
    sim.faults.details_recordings = lambda url: url.replace("127.0.0.1", "localhost")
    env = lane_env(sim, server, bucket, tmp_path)

    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)

    assert result.exit_code == 0, result.output
    files = by_call(objects(seaweed, bucket))[call.sid]
    assert set(files) == {"recording-1.mp3", "recording-2.mp3", "call-v1.json", "call.json"}
    assert files["recording-1.mp3"] == sim.recording_asset(call, 1).body()
    assert files["recording-2.mp3"] == sim.recording_asset(call, 2).body()
    assert sim.counters["recording_requests"] == 3  # the rescue, then both of v3's
    rows = ledger_rows(
        tmp_path / "state", "SELECT idx, source FROM objects WHERE kind = 'recording'"
    )
    sources = dict(rows)
    assert "127.0.0.1" in sources[1] and "localhost" in sources[2]


def test_the_dry_run_plan_shows_rescue_and_enrichment_apart(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    day = the_day()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    for n in range(7):
        sim.add_call(created=noon + timedelta(minutes=n))
    for n in range(2):
        sim.add_call(created=noon + timedelta(hours=1, minutes=n), recordings=0)
    env = lane_env(sim, server, bucket, tmp_path, EXOTEL_RATE_LIMIT="120", ARCHIVER_LEGS="on")

    dry = invoke(
        [
            "backfill",
            "--since",
            str(day),
            "--until",
            str(day),
            "--dry-run",
            "--report",
            str(tmp_path / "plan.json"),
        ],
        env,
    )

    assert dry.exit_code == 0, dry.output
    plan = json.loads((tmp_path / "plan.json").read_text())["plan"]
    assert plan["to_rescue"] == 7 and plan["to_archive"] == 0 and plan["no_recording"] == 2
    assert plan["enrichment"]["estimated_api_requests"] == 7 * 2  # details and legs a call
    assert plan["enrichment"]["share_per_minute"] == 60  # 50 % of 120
    assert plan["v3_calls"]["estimated_api_requests"] == 0
    assert "rescue: 7 calls from the listing" in dry.output
    assert "enrichment: about 14 API requests" in dry.output
    assert sim.counters.get("recording_requests", 0) == 0  # a dry run downloads nothing
    assert sim.counters.get("v3_call_details", 0) == 0


def test_rescued_calls_are_completed_by_a_backfill_with_the_lane_off_and_counted_by_one(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    day = the_day()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    calls = [sim.add_call(created=noon + timedelta(minutes=n), recordings=2) for n in range(3)]
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENRICH="never")
    assert invoke(["backfill", "--since", str(day), "--until", str(day)], env).exit_code == 0
    args = ["backfill", "--since", str(day), "--until", str(day), "--rescue", "off"]

    kept = invoke(args, env)  # enrich = never: they stay rescued, and are counted so
    assert kept.exit_code == 0, kept.output
    summary = json.loads((tmp_path / "state" / f"backfill-{day}-{day}.json").read_text())
    assert summary["result"]["counts"]["rescued"] == 3
    assert sum(summary["result"]["counts"].values()) == summary["plan"]["calls_listed"] == 3

    done = invoke(args, {**env, "ARCHIVER_ENRICH": "background"})
    assert done.exit_code == 0, done.output
    assert set(outcomes(tmp_path / "state", *(c.sid for c in calls)).values()) == {"archived"}
    files = by_call(objects(seaweed, bucket))
    for call in calls:
        assert files[call.sid]["recording-2.mp3"] == sim.recording_asset(call, 2).body()
        assert "call.json" in files[call.sid]
