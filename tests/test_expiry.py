"""URL deadlines: read from the URL, and a URL too close to its end is refreshed before use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archiver.archive import archive_calls
from archiver.config import load_settings
from archiver.expiry import MARGIN, RateMeter, too_close, url_deadline
from archiver.report import ARCHIVED
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env

SIGNED = "https://h/x.mp3?X-Amz-Date=20221103T172440Z&X-Amz-Expires=300&X-Amz-Signature=ab"


def test_deadline_is_amz_date_plus_expires() -> None:
    assert url_deadline(SIGNED, fetched_at=0) == 1667496280 + 300


def test_deadline_without_signing_parameters_is_fetch_time_plus_validity() -> None:
    assert url_deadline("https://h/x.mp3", fetched_at=1000.0, validity=600) == 1600.0


def test_too_close_weighs_the_measured_rate() -> None:
    rates = RateMeter()
    rates.add(10_000_000, 10.0)  # 1 MB/s
    needed = rates.seconds_for(60_000_000)  # 60 s for 60 MB
    assert too_close(deadline=1080.0, fetched_at=900.0, needed=needed, now=1000.0)  # 80 s left
    assert not too_close(deadline=1200.0, fetched_at=900.0, needed=needed, now=1000.0)
    assert too_close(deadline=1000.0 + MARGIN - 1, fetched_at=900.0, needed=0, now=1000.0)


def test_a_url_just_fetched_is_always_used() -> None:
    assert not too_close(deadline=0.0, fetched_at=1000.0, needed=100.0, now=1000.5)


async def test_second_url_dying_during_the_first_download_is_refreshed_before_use(
    sim: Simulator, server: SimulatorServer, s3_env: None, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    sim.url_ttl = 2  # both URLs come with the same call details and live 2 s
    sim.faults.bandwidth = 200_000  # the first recording takes about 3 s
    call = sim.add_call(recordings=[600_000, 20_000])
    settings = load_settings(env=exotel_env(sim, server.base_url, f"s3://{bucket}/e", tmp_path))
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    assert sim.counters["expired_refusals"] == 0  # never sent a request with a dead URL
    assert report.url_refreshes == 1 and sim.counters["v3_call_details"] == 2
    client = seaweed.client()
    for index in (1, 2):
        key = next(
            o.key for o in report.results[0].objects if o.idx == index and o.kind == "recording"
        )
        body = client.get_object(Bucket=bucket, Key=f"e/{key}")["Body"].read()
        assert body == sim.recording_bytes(call.sid, index)
