"""The rescue lane against hostile or broken listings, faults on the wire, and for secrets: a
URL the lane cannot trust sends the call the v3 way; nothing is lost, stored twice or leaked."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from archiver.exotel.models import IST
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import invoke, ledger_rows, outcomes
from tests.test_rescue import by_call, lane_env, manifest, objects, the_day

HOSTILE_URLS = {
    "metadata address": "http://169.254.169.254/latest/meta-data/iam.mp3?X-Amz-Signature=x",
    "not a URL": "javascript:alert(1)",
    "a number": 12345,
    "a list": ["https://example.com/a.mp3"],
    "port out of range": "https://127.0.0.1:99999/a.mp3?X-Amz-Signature=abc",
    "file scheme": "file:///etc/passwd",
}


@pytest.mark.parametrize("what", sorted(HOSTILE_URLS))
def test_a_hostile_presigned_url_is_never_fetched_and_the_call_goes_the_v3_way(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
    what: str,
) -> None:
    day = the_day()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    good = sim.add_call(created=noon)
    bad = sim.add_call(created=noon + timedelta(minutes=1))
    sim.faults.bulk_item_patches[bad.sid] = {"PreSignedRecordingUrl": HOSTILE_URLS[what]}
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENRICH="never")

    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)

    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    got = outcomes(tmp_path / "state", good.sid, bad.sid)
    assert got == {good.sid: "rescued", bad.sid: "archived"}  # through its v3 details
    assert sim.counters["v3_call_details"] == 1
    files = by_call(objects(seaweed, bucket))
    assert files[bad.sid]["recording-1.mp3"] == sim.recording_asset(bad, 1).body()
    # An http(s) URL is tried: the v1 item is stored first (signatures stripped), then the URL
    # fails. Anything else is no URL to rescue from: the call is not rescued at all.
    tried = isinstance(HOSTILE_URLS[what], str) and str(HOSTILE_URLS[what]).startswith("http")
    want = {"recording-1.mp3", "call.json"} | ({"call-v1.json"} if tried else set())
    assert set(files[bad.sid]) == want
    assert b"X-Amz-Signature" not in files[bad.sid].get("call-v1.json", b"")


def test_faults_on_the_wire_lose_nothing_and_store_nothing_twice(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """429s and 500s on the listing and the v3 requests, bodies cut off mid-download."""
    day = the_day()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    calls = [
        sim.add_call(created=noon + timedelta(minutes=n), recordings=1 + n % 2, size=80_000)
        for n in range(30)
    ]
    sim.faults.api_429_rate = 0.2
    sim.faults.api_500_rate = 0.1
    sim.faults.retry_after = 0
    sim.faults.cut_rate = 0.3
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ATTEMPTS="8", ARCHIVER_MAX_WAIT="0.1")

    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)

    assert result.exit_code == 0, result.output
    assert set(outcomes(tmp_path / "state", *(c.sid for c in calls)).values()) == {"archived"}
    files = by_call(objects(seaweed, bucket))
    for call in calls:
        for i in range(1, len(call.recordings) + 1):
            assert files[call.sid][f"recording-{i}.mp3"] == sim.recording_asset(call, i).body()
        assert len([n for n in files[call.sid] if n.startswith("recording-")]) == len(
            call.recordings
        )
    keys = [line["key"] for line in manifest(tmp_path)]
    assert len(keys) == len(set(keys))
    # The faults did happen: refused requests, cut bodies resumed with Range.
    assert sim.counters["rate_limited"] > 0 and sim.counters["server_errors"] > 0
    assert sim.counters["range_requests"] > 0


def test_no_secret_reaches_the_logs_the_summary_or_the_bucket(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    day = the_day()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    calls = [sim.add_call(created=noon + timedelta(minutes=n)) for n in range(5)]
    # One URL expires (the v3 fallback logs about it), one is not a recording.
    from collections import deque

    sim.faults.recording_for[calls[1].sid] = deque(["expired"])
    sim.faults.recording_for[calls[2].sid] = deque(["html"])
    env = lane_env(
        sim, server, bucket, tmp_path, ARCHIVER_LOG_FORMAT="json", ARCHIVER_LOG_LEVEL="debug"
    )

    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)

    assert result.exit_code == 0, result.output
    assert "archiving it through its v3 details" in result.output  # the logs are in it
    summary = (tmp_path / "state" / f"backfill-{day}-{day}.json").read_text()
    texts = {"output": result.output, "summary": summary}
    texts |= {key: body.decode("latin-1") for key, body in objects(seaweed, bucket).items()}
    texts["ledger"] = json.dumps(ledger_rows(tmp_path / "state", "SELECT * FROM objects"))
    texts["ledger calls"] = json.dumps(ledger_rows(tmp_path / "state", "SELECT * FROM calls"))
    for where, text in texts.items():
        for secret in ("X-Amz-Signature", sim.api_token, seaweed.secret_key):
            assert secret not in text, f"{secret[:12]} in {where}"
