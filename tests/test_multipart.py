"""Large recordings: multipart uploads with per-part checksums, part retries, no orphans,
and memory that does not grow with the recording's size."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from archiver.archive import archive_calls
from archiver.config import load_settings
from archiver.errors import StorageError, StorageUnavailable
from archiver.report import ARCHIVED
from archiver.retry import RetryPolicy
from archiver.simulator import Simulator, SimulatorServer
from archiver.sinks.multipart import composite_checksum
from archiver.sinks.s3 import S3Sink
from tests.s3proxy import FaultyS3Proxy
from tests.support import exotel_env

MiB = 1024 * 1024
FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)
KEY = "2026/11/21/abc/recording-1.mp3"


def is_part(number: int) -> Any:
    return lambda method, path: method == "PUT" and f"partNumber={number}" in path


async def test_large_object_goes_up_in_checksummed_parts(
    seaweed: Any, s3_env: None, bucket: str
) -> None:
    data = os.urandom(17 * MiB + 123)
    sink = S3Sink(bucket, "p", part_size=5 * MiB, part_retry=FAST)
    result = await sink.put(
        KEY,
        io.BytesIO(data),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="audio/mpeg",
    )
    await sink.close()
    assert result.created
    client = seaweed.client()
    assert client.get_object(Bucket=bucket, Key=f"p/{KEY}")["Body"].read() == data
    head = client.head_object(Bucket=bucket, Key=f"p/{KEY}", ChecksumMode="ENABLED")
    digests = [hashlib.sha256(data[i : i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
    assert len(digests) == 4 and head["ChecksumSHA256"] == composite_checksum(digests)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_failed_part_is_resent_from_its_buffer(
    seaweed: Any, s3_env: None, bucket: str, proxy: FaultyS3Proxy
) -> None:
    data = os.urandom(12 * MiB)
    proxy.fail(is_part(2), times=1, status=503, code="SlowDown")
    sink = S3Sink(bucket, endpoint_url=proxy.endpoint, part_size=5 * MiB, part_retry=FAST)
    await sink.put(
        KEY,
        io.BytesIO(data),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="audio/mpeg",
    )
    await sink.close()
    puts = [p for m, p in proxy.log if m == "PUT" and "partNumber=" in p]
    assert [p.split("partNumber=")[1].split("&")[0] for p in puts] == ["1", "2", "2", "3"]
    assert seaweed.client().get_object(Bucket=bucket, Key=KEY)["Body"].read() == data


async def test_an_upload_that_fails_for_good_leaves_no_parts_behind(
    seaweed: Any, s3_env: None, bucket: str, proxy: FaultyS3Proxy
) -> None:
    data = os.urandom(11 * MiB)
    proxy.fail(is_part(2), times=100)
    sink = S3Sink(bucket, endpoint_url=proxy.endpoint, part_size=5 * MiB, part_retry=FAST)
    with pytest.raises(StorageUnavailable, match="part 2"):
        await sink.put(
            KEY,
            io.BytesIO(data),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type="audio/mpeg",
        )
    await sink.close()
    client = seaweed.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert any(m == "DELETE" and "uploadId=" in p for m, p in proxy.log)  # it was aborted


async def test_wrong_announced_checksum_completes_nothing(
    seaweed: Any, s3_env: None, bucket: str
) -> None:
    data = os.urandom(6 * MiB)
    sink = S3Sink(bucket, part_size=5 * MiB, part_retry=FAST)
    with pytest.raises(StorageUnavailable, match="not the ones announced"):
        await sink.put(
            KEY, io.BytesIO(data), size=len(data), sha256="0" * 64, content_type="audio/mpeg"
        )
    await sink.close()
    client = seaweed.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.slow
async def test_a_96_mib_recording_archives_with_flat_memory(
    sim: Simulator, server: SimulatorServer, s3_env: None, seaweed: Any, bucket: str, tmp_path: Path
) -> None:
    size = 96 * MiB
    call = sim.add_call(size=size)
    settings = load_settings(
        env=exotel_env(sim, server.base_url, f"s3://{bucket}/a", tmp_path / "s")
    )
    await archive_calls(settings, [sim.add_call(size=1000).sid])  # warm up clients and imports
    _peak_rss_reset()
    before = _rss_kib("VmRSS")
    report = await archive_calls(settings, [call.sid])
    growth_mib = (_rss_kib("VmHWM") - before) / 1024
    assert report.results[0].outcome == ARCHIVED
    print(f"peak RSS growth while archiving {size // MiB} MiB: {growth_mib:.1f} MiB")
    assert growth_mib < 48, f"memory grew by {growth_mib:.0f} MiB for a {size // MiB} MiB recording"
    key = next(o.key for o in report.results[0].objects if o.kind == "recording")
    stored = seaweed.client().get_object(Bucket=bucket, Key=f"a/{key}")["Body"].read()
    assert stored == sim.recording_bytes(call.sid, 1)


@pytest.mark.parametrize("size", [300_000, 11 * MiB], ids=["single", "multipart"])
async def test_md5_mode_works_with_a_store_that_refuses_checksum_headers(
    seaweed: Any, s3_env: None, bucket: str, proxy: FaultyS3Proxy, size: int
) -> None:
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    proxy.refused_headers = ("x-amz-checksum-", "x-amz-sdk-checksum-", "x-amz-trailer")

    default = S3Sink(bucket, "md5", endpoint_url=proxy.endpoint, part_size=5 * MiB, part_retry=FAST)
    with pytest.raises(StorageError):
        await default.put(
            KEY, io.BytesIO(data), size=size, sha256=digest, content_type="audio/mpeg"
        )
    await default.close()

    proxy.log.clear()
    proxy.header_log.clear()
    sink = S3Sink(
        bucket,
        "md5",
        endpoint_url=proxy.endpoint,
        part_size=5 * MiB,
        part_retry=FAST,
        checksum="md5",
    )
    result = await sink.put(
        KEY, io.BytesIO(data), size=size, sha256=digest, content_type="audio/mpeg"
    )
    await sink.close()
    assert result.created and result.sha256 == digest
    uploads = [h for (m, _), h in zip(proxy.log, proxy.header_log, strict=True) if m == "PUT"]
    assert uploads and all("content-md5" in h for h in uploads)
    client = seaweed.client()
    assert client.get_object(Bucket=bucket, Key=f"md5/{KEY}")["Body"].read() == data
    assert client.head_object(Bucket=bucket, Key=f"md5/{KEY}")["Metadata"]["sha256"] == digest


async def test_md5_mode_refuses_a_body_that_is_not_the_one_announced(
    seaweed: Any, s3_env: None, bucket: str, proxy: FaultyS3Proxy
) -> None:
    data = os.urandom(100_000)
    sink = S3Sink(bucket, "md5", endpoint_url=proxy.endpoint, checksum="md5", part_retry=FAST)
    with pytest.raises(StorageError, match="nothing was sent"):
        await sink.put(
            KEY, io.BytesIO(data), size=len(data), sha256="0" * 64, content_type="audio/mpeg"
        )
    await sink.close()
    assert not [m for m, _ in proxy.log if m == "PUT"]
