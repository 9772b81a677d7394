"""The storage contract, one test body per promise, run against every backend.

What ended up in the store is read back outside the sink (boto3 straight to SeaweedFS, or the
file system), so a sink cannot pass by agreeing with itself.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from archiver.errors import (
    ConfigError,
    StorageConflict,
    StorageError,
    StoragePermanent,
    StorageUnavailable,
)
from archiver.retry import RetryPolicy
from archiver.sinks import ObjectInfo, PutResult, RetryingSink, Sink, open_sink
from archiver.sinks.local import LocalSink
from archiver.sinks.s3 import S3Sink
from tests.s3proxy import FaultyS3Proxy

SMALL = os.urandom(5000)
LARGE = os.urandom(9 * 1024 * 1024 + 17)
KEY = "2022/11/03/cabfb1dfa8c5e1c7f2c458423b7716b3/recording-1.mp3"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    """A backend under test, plus a way to look at its contents that bypasses the sink, and one
    to plant an object at a key as someone else would (S3: with ``x-amz-meta-sha256`` claiming
    ``claim``, and no SHA-256 checksum of the store's own)."""

    def __init__(
        self,
        sink: Sink,
        raw: Callable[[str], bytes | None],
        raw_keys: Callable[[], list[str]],
        plant: Callable[[str, bytes, str | None], None],
    ):
        self.sink, self.raw, self.raw_keys, self.plant = sink, raw, raw_keys, plant


@pytest.fixture(params=["s3", "s3-md5", "local"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param.startswith("s3"):
        seaweed = request.getfixturevalue("seaweed")
        request.getfixturevalue("s3_env")
        bucket = request.getfixturevalue("bucket")
        client = seaweed.client()

        def raw(key: str) -> bytes | None:
            try:
                return bytes(client.get_object(Bucket=bucket, Key=f"archive/{key}")["Body"].read())
            except client.exceptions.NoSuchKey:
                return None

        def raw_keys() -> list[str]:
            listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
            return [item["Key"] for item in listed]

        def plant(key: str, data: bytes, claim: str | None) -> None:
            meta = {"sha256": claim} if claim else {}
            client.put_object(Bucket=bucket, Key=f"archive/{key}", Body=data, Metadata=meta)

        checksum = "md5" if request.param == "s3-md5" else "sha256"
        sink: Sink = S3Sink(bucket, "archive", checksum=checksum)
    else:
        root = tmp_path / "dest"

        def raw(key: str) -> bytes | None:
            path = root / key
            return path.read_bytes() if path.exists() else None

        def raw_keys() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

        def plant(key: str, data: bytes, claim: str | None) -> None:  # a file has no metadata
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(data)

        sink = LocalSink(root)
    await sink.check()
    yield Store(sink, raw, raw_keys, plant)
    await sink.close()


async def put(
    sink: Sink, key: str, data: bytes, *, digest: str | None = None, size: int | None = None
) -> PutResult:
    return await sink.put(
        key,
        io.BytesIO(data),
        size=len(data) if size is None else size,
        sha256=digest or sha(data),
        content_type="audio/mpeg",
    )


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["5KB", "9MB"])
async def test_put_stores_exactly_the_bytes(store: Store, data: bytes) -> None:
    result = await put(store.sink, KEY, data)
    assert result.created and result.size == len(data) and result.sha256 == sha(data)
    assert store.raw(KEY) == data
    info = await store.sink.stat(KEY)
    assert info is not None and info.size == len(data) and info.sha256 in (None, sha(data))
    assert b"".join([c async for c in store.sink.read(KEY)]) == data


async def test_same_bytes_again_is_success_without_a_write(store: Store) -> None:
    await put(store.sink, KEY, SMALL)
    before = store.raw_keys()
    again = await put(store.sink, KEY, SMALL)
    assert not again.created
    assert store.raw(KEY) == SMALL and store.raw_keys() == before


async def test_other_bytes_at_the_key_are_a_conflict_and_the_original_is_kept(store: Store) -> None:
    await put(store.sink, KEY, SMALL)
    with pytest.raises(StorageConflict, match="kept, not replaced"):
        await put(store.sink, KEY, b"other bytes")
    assert store.raw(KEY) == SMALL


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["5KB", "9MB"])
async def test_other_bytes_that_claim_our_sha256_are_a_conflict(store: Store, data: bytes) -> None:
    # Same length, other bytes, and metadata saying they are ours: metadata is no proof.
    planted = bytes(b ^ 0xFF for b in data)
    store.plant(KEY, planted, sha(data))
    with pytest.raises(StorageConflict, match="kept, not replaced"):
        await put(store.sink, KEY, data)
    assert store.raw(KEY) == planted
    assert store.raw_keys() == [f"archive/{KEY}" if isinstance(store.sink, S3Sink) else KEY]


async def test_our_bytes_without_a_store_checksum_are_adopted_by_reading_them(store: Store) -> None:
    # No SHA-256 the store computed, no metadata: the bytes read back are the proof.
    store.plant(KEY, SMALL, None)
    result = await put(store.sink, KEY, SMALL)
    assert not result.created and result.sha256 == sha(SMALL)
    assert store.raw(KEY) == SMALL


async def test_a_wrong_checksum_leaves_nothing(store: Store) -> None:
    with pytest.raises(StorageError):
        await put(store.sink, KEY, SMALL, digest=sha(b"not these bytes"))
    assert store.raw(KEY) is None
    assert store.raw_keys() == []


async def test_a_wrong_size_leaves_nothing(store: Store) -> None:
    with pytest.raises(StorageError):
        await put(store.sink, KEY, SMALL, size=len(SMALL) + 10)
    assert store.raw(KEY) is None


async def test_list_gives_relative_keys_in_order(store: Store) -> None:
    keys = [
        "2022/11/04/b/recording-1.mp3",
        "2022/11/03/a/recording-2.mp3",
        "2022/11/03/a/recording-1.mp3",
    ]
    for key in keys:
        await put(store.sink, key, SMALL)
    listed = [info async for info in store.sink.list()]
    assert [i.key for i in listed] == sorted(keys)
    assert all(i.size == len(SMALL) for i in listed)
    assert [i.key async for i in store.sink.list("2022/11/04/")] == ["2022/11/04/b/recording-1.mp3"]


async def test_stat_of_a_missing_object_is_none(store: Store) -> None:
    assert await store.sink.stat("2022/01/01/x/recording-1.mp3") is None


@pytest.mark.parametrize("key", ["../x", "/x", "a//b", "a/./b", "a\x00b", "a\\b", ""])
async def test_keys_that_could_escape_are_refused(store: Store, key: str) -> None:
    with pytest.raises(StoragePermanent, match="invalid object key"):
        await put(store.sink, key, SMALL)
    assert store.raw_keys() == []


def test_local_leftover_temp_files_are_not_objects(tmp_path: Path) -> None:
    import asyncio

    sink = LocalSink(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".recording-1.mp3.part-1234").write_bytes(b"half")
    assert asyncio.run(_collect(sink.list())) == []


async def _collect(items: AsyncIterator[ObjectInfo]) -> list[ObjectInfo]:
    return [i async for i in items]


async def test_missing_bucket_is_permanent_and_named(seaweed: Any, s3_env: None) -> None:
    sink = S3Sink("no-such-bucket-anywhere")
    with pytest.raises(StoragePermanent, match=r"no-such-bucket-anywhere.*create it"):
        await sink.check()
    await sink.close()


async def test_wrong_secret_is_permanent_and_never_shown(
    seaweed: Any, s3_env: None, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-the-wrong-secret")
    sink = S3Sink(bucket)
    with pytest.raises(StoragePermanent) as info:
        await sink.check()
    assert "definitely-the-wrong-secret" not in str(info.value) + repr(info.value)
    await sink.close()


class Flaky:
    """A test double of our own Sink protocol (not of boto3): fails N times, then delegates."""

    def __init__(self, inner: Sink, failures: list[StorageError]) -> None:
        self.inner, self.failures, self.calls = inner, failures, 0

    def describe(self) -> str:
        return self.inner.describe()

    def location(self, key: str) -> str:
        return self.inner.location(key)

    async def check(self) -> None:
        await self.inner.check()

    async def put(
        self,
        key: str,
        body: BinaryIO,
        *,
        size: int,
        sha256: str,
        content_type: str,
        lock: Any = None,
    ) -> PutResult:
        self.calls += 1
        body.read(100)  # a failed attempt may leave the body anywhere: put must rewind
        if self.failures:
            raise self.failures.pop(0)
        return await self.inner.put(
            key, body, size=size, sha256=sha256, content_type=content_type, lock=lock
        )

    def __getattr__(self, name: str) -> Any:  # the Object Lock calls: passed through
        return getattr(self.inner, name)

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self.inner.stat(key)

    def read(self, key: str) -> AsyncIterator[bytes]:
        return self.inner.read(key)

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix)

    async def close(self) -> None:
        await self.inner.close()


FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)


async def test_retrying_sink_retries_transient_failures(tmp_path: Path) -> None:
    flaky = Flaky(
        LocalSink(tmp_path), [StorageUnavailable("503 SlowDown"), StorageUnavailable("reset")]
    )
    result = await put(RetryingSink(flaky, FAST), KEY, SMALL)
    assert result.created and flaky.calls == 3
    assert (tmp_path / KEY).read_bytes() == SMALL


async def test_retrying_sink_gives_up_after_the_attempts(tmp_path: Path) -> None:
    flaky = Flaky(LocalSink(tmp_path), [StorageUnavailable(f"503 #{i}") for i in range(5)])
    with pytest.raises(StorageUnavailable, match="#2"):
        await put(RetryingSink(flaky, FAST), KEY, SMALL)
    assert flaky.calls == 3 and not (tmp_path / KEY).exists()


async def test_retrying_sink_does_not_retry_permanent_errors(tmp_path: Path) -> None:
    flaky = Flaky(LocalSink(tmp_path), [StoragePermanent("access denied")])
    with pytest.raises(StoragePermanent):
        await put(RetryingSink(flaky, FAST), KEY, SMALL)
    assert flaky.calls == 1


@pytest.mark.parametrize(
    "destination, kind",
    [("s3://my-bucket/some/prefix", "s3"), ("file:///srv/rec", "local"), ("./rel/dir", "local")],
)
def test_open_sink_accepts_the_documented_forms(
    destination: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    sink = open_sink(destination, retry=FAST)
    assert isinstance(sink, RetryingSink)
    assert isinstance(sink.inner, S3Sink if kind == "s3" else LocalSink)
    if kind == "s3":
        assert sink.describe() == "s3://my-bucket/some/prefix"


@pytest.mark.parametrize(
    "destination, message",
    [
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("s3://", "not a valid bucket name"),
        ("s3://Bad_Bucket/x", "not a valid bucket name"),
        ("file://host/x", "absolute path"),
        ("", "empty destination"),
    ],
)
def test_open_sink_refuses_malformed_destinations(destination: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_sink(destination, retry=FAST)


# --- What counts as proof on S3: a SHA-256 the store computed, or the bytes read back ----------

MiB = 1024 * 1024


def plant_multipart(client: Any, bucket: str, key: str, data: bytes, claim: str) -> None:
    """Someone else's multipart upload (5 MiB parts, SHA-256 per part): the store then reports
    a composite checksum ("...-N"), which is not the SHA-256 of the object."""
    started = client.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", Metadata={"sha256": claim}
    )
    parts = []
    for number, offset in enumerate(range(0, len(data), 5 * MiB), 1):
        chunk = data[offset : offset + 5 * MiB]
        digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
        answer = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=started["UploadId"],
            PartNumber=number,
            Body=chunk,
            ChecksumSHA256=digest,
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": digest})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=started["UploadId"], MultipartUpload={"Parts": parts}
    )


@pytest.mark.parametrize("planted_as", ["put", "multipart"])
@pytest.mark.parametrize("checksum", ["sha256", "md5"])
@pytest.mark.parametrize("conditional", [True, False], ids=["if-none-match", "stat-first"])
async def test_s3_adopts_nothing_on_metadata(
    seaweed: Any,
    s3_env: None,
    bucket: str,
    planted_as: str,
    checksum: str,
    conditional: bool,
) -> None:
    client = seaweed.client()
    planted = bytes(b ^ 0xFF for b in LARGE)
    if planted_as == "put":
        client.put_object(Bucket=bucket, Key=KEY, Body=planted, Metadata={"sha256": sha(LARGE)})
    else:
        plant_multipart(client, bucket, KEY, planted, sha(LARGE))
    sink = S3Sink(bucket, conditional_writes=conditional, checksum=checksum)
    try:
        with pytest.raises(StorageConflict, match="kept, not replaced"):
            await put(sink, KEY, LARGE)
        with pytest.raises(StorageConflict):
            await put(sink, KEY, SMALL)  # another length: a conflict without reading
    finally:
        await sink.close()
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == planted
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [KEY]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_s3_stat_reports_only_the_sha256_the_store_computed(
    seaweed: Any, s3_env: None, bucket: str
) -> None:
    client = seaweed.client()
    client.put_object(Bucket=bucket, Key="planted", Body=SMALL, Metadata={"sha256": sha(SMALL)})
    plant_multipart(client, bucket, "multipart", LARGE, sha(LARGE))
    sink = S3Sink(bucket)
    try:
        await put(sink, KEY, SMALL)
        assert (await sink.stat(KEY)) == ObjectInfo(KEY, len(SMALL), sha(SMALL))
        assert (await sink.stat("planted")) == ObjectInfo("planted", len(SMALL), None)
        assert (await sink.stat("multipart")) == ObjectInfo("multipart", len(LARGE), None)
    finally:
        await sink.close()


def completes(key: str) -> Callable[[str, str], bool]:
    """The request that makes the object: the PUT of ``key``, or its multipart completion."""

    def matches(method: str, path: str) -> bool:
        plain, _, query = path.partition("?")
        if not plain.endswith("/" + key):
            return False
        return (method == "PUT" and not query) or (method == "POST" and "uploadId=" in query)

    return matches


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["5KB", "9MB"])
@pytest.mark.parametrize("checksum", ["sha256", "md5"])
async def test_without_store_checksums_a_put_is_confirmed_by_reading_it_back(
    seaweed: Any, s3_env: None, bucket: str, proxy: FaultyS3Proxy, data: bytes, checksum: str
) -> None:
    proxy.strip_response_headers = ("x-amz-checksum-",)  # no echo, nothing on HEAD
    sink = S3Sink(bucket, endpoint_url=proxy.endpoint, checksum=checksum)
    try:
        result = await put(sink, KEY, data)
    finally:
        await sink.close()
    assert result.created and result.sha256 == sha(data)
    assert ("GET", f"/{bucket}/{KEY}") in proxy.log  # read back, hashed
    assert seaweed.client().get_object(Bucket=bucket, Key=KEY)["Body"].read() == data


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["5KB", "9MB"])
@pytest.mark.parametrize("checksum", ["sha256", "md5"])
async def test_a_store_that_acknowledges_a_write_it_did_not_make_is_caught(
    seaweed: Any, s3_env: None, bucket: str, proxy: FaultyS3Proxy, data: bytes, checksum: str
) -> None:
    # Other bytes of the same length sit at the key, their metadata claiming our SHA-256; the
    # store says OK to our upload but never makes it, and reports no checksum.
    client = seaweed.client()
    planted = bytes(b ^ 0xFF for b in data)
    client.put_object(Bucket=bucket, Key=KEY, Body=planted, Metadata={"sha256": sha(data)})
    proxy.strip_response_headers = ("x-amz-checksum-",)
    proxy.fail(completes(KEY), action="fake_ok")
    sink = S3Sink(bucket, endpoint_url=proxy.endpoint, checksum=checksum)
    try:
        with pytest.raises(StoragePermanent, match=r"(accepted|completed) the upload"):
            await put(sink, KEY, data)
    finally:
        await sink.close()
    assert proxy.injected["fake_ok"] == 1
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == planted
