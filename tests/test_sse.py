"""Server-side encryption per object: every write asks for it, and the store's answer proves it.

All against SeaweedFS, which supports SSE-S3 (``AES256``) and SSE-KMS (its local KMS provider,
one key aliased ``alias/seaweedfs-default``: tests/seaweed.py). What the sink reports is checked
against what the test's own boto3 client sees on HEAD. A store that drops the header is
``FaultyS3Proxy`` removing ``x-amz-server-side-encryption*`` from the answers: the write fails,
and nothing is left claiming to be the object.
"""

from __future__ import annotations

import hashlib
import io
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from archiver.errors import StorageConflict, StoragePermanent
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.retry import RetryPolicy
from archiver.simulator import Simulator, SimulatorServer
from archiver.sinks import PutResult, RetryingSink, ServerSideEncryption
from archiver.sinks.s3 import S3Sink, kms_key_matches
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import exotel_env, invoke, ledger_rows

MiB = 1024 * 1024
FAST = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.05)
KEY = "2026/11/21/abc/recording-1.mp3"
ALIAS = "alias/seaweedfs-default"
AES = ServerSideEncryption("AES256")
KMS = ServerSideEncryption("aws:kms", kms_key_id=ALIAS, context='{"app":"exotel-archiver"}')
SSE_HEADERS = ("x-amz-server-side-encryption",)
"""Prefix of ``x-amz-server-side-encryption`` and ``...-aws-kms-key-id``."""
WAYS = ["put", "multipart", "stream"]
DAY = str((datetime.now(IST) - timedelta(days=3)).date())


def default_key_id(seaweed: SeaweedFS, bucket: str) -> str:
    """The id SeaweedFS's local KMS answers for its one key (random per server)."""
    client = seaweed.client()
    client.put_object(
        Bucket=bucket, Key="probe-key", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId=ALIAS
    )
    key_id = str(client.head_object(Bucket=bucket, Key="probe-key")["SSEKMSKeyId"])
    client.delete_object(Bucket=bucket, Key="probe-key")
    return key_id


async def store(sink: S3Sink, way: str, data: bytes, key: str = KEY) -> PutResult:
    sha = hashlib.sha256(data).hexdigest()
    if way == "stream":
        upload = await sink.begin(key, content_type="audio/mpeg")
        assert upload is not None
        try:
            await upload.send(data)
            return await upload.finish(size=len(data), sha256=sha)
        except BaseException:
            await upload.abort()
            raise
    return await sink.put(
        key, io.BytesIO(data), size=len(data), sha256=sha, content_type="audio/mpeg"
    )


def body_for(way: str) -> bytes:
    return os.urandom(11 * MiB + 7 if way != "put" else 3000)


def nothing_left(seaweed: SeaweedFS, bucket: str) -> None:
    client = seaweed.client()
    versions = client.list_object_versions(Bucket=bucket)
    assert [v["Key"] for v in versions.get("Versions", [])] == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("sse", [AES, KMS], ids=["aes256", "kms"])
async def test_every_write_asks_for_sse_and_reports_what_the_store_confirmed(
    seaweed: SeaweedFS, s3_env: None, bucket: str, way: str, sse: ServerSideEncryption
) -> None:
    key_id = default_key_id(seaweed, bucket) if sse.mode == "aws:kms" else None
    data = body_for(way)
    sink = S3Sink(bucket, "p", part_size=5 * MiB, part_retry=FAST, sse=sse)
    try:
        await sink.check_writable()  # the probe (a 1-byte part) resolves the alias
        result = await store(sink, way, data)
    finally:
        await sink.close()
    assert result.created
    head = seaweed.client().head_object(Bucket=bucket, Key=f"p/{KEY}")
    assert head["ServerSideEncryption"] == sse.mode
    assert head.get("SSEKMSKeyId") == key_id
    assert (result.sse, result.sse_kms_key_id) == (sse.mode, key_id)
    got = seaweed.client().get_object(Bucket=bucket, Key=f"p/{KEY}")["Body"].read()
    assert got == data
    nothing_left_but = seaweed.client().list_multipart_uploads(Bucket=bucket)
    assert nothing_left_but.get("Uploads", []) == []


async def test_without_sse_the_result_reports_what_the_store_did(
    seaweed: SeaweedFS, s3_env: None, bucket: str
) -> None:
    """No SSE asked, none sent: the result says what the store reports (here: nothing)."""
    sink = S3Sink(bucket, part_retry=FAST)
    try:
        result = await store(sink, "put", b"plain bytes")
    finally:
        await sink.close()
    assert (result.sse, result.sse_kms_key_id) == (None, None)
    assert "ServerSideEncryption" not in seaweed.client().head_object(Bucket=bucket, Key=KEY)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("sse", [AES, KMS], ids=["aes256", "kms"])
async def test_a_store_that_drops_the_header_fails_the_write_and_keeps_nothing(
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    proxy: FaultyS3Proxy,
    way: str,
    sse: ServerSideEncryption,
) -> None:
    proxy.strip_response_headers = SSE_HEADERS
    sink = S3Sink(bucket, endpoint_url=proxy.endpoint, part_size=5 * MiB, part_retry=FAST, sse=sse)
    try:
        with pytest.raises(StoragePermanent) as caught:
            await store(sink, way, body_for(way))
    finally:
        await sink.close()
    message = str(caught.value)
    assert KEY in message and sse.mode in message, message
    assert "answered without server-side encryption" in message, message
    assert "deleted" in message, message
    if sse.kms_key_id:
        assert sse.kms_key_id in message, message
    nothing_left(seaweed, bucket)


async def test_a_kms_error_code_is_not_retried(
    seaweed: SeaweedFS, s3_env: None, bucket: str, proxy: FaultyS3Proxy
) -> None:
    proxy.fail(
        lambda method, _path: method == "PUT", times=10, status=400, code="KMS.NotFoundException"
    )
    sink = RetryingSink(
        S3Sink(bucket, endpoint_url=proxy.endpoint, part_retry=FAST, sse=KMS),
        RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.05),
    )
    try:
        with pytest.raises(StoragePermanent) as caught:
            await store(sink.inner, "put", b"x" * 100)  # type: ignore[arg-type]
        with pytest.raises(StoragePermanent):
            await sink.put(
                KEY,
                io.BytesIO(b"x"),
                size=1,
                sha256=hashlib.sha256(b"x").hexdigest(),
                content_type="audio/mpeg",
            )
    finally:
        await sink.close()
    message = str(caught.value)
    assert ALIAS in message and "kms:GenerateDataKey" in message and "kms:Decrypt" in message
    assert [m for m, _ in proxy.log].count("PUT") == 2  # one each: no retry


async def test_an_object_stored_without_the_sse_asked_is_not_adopted(
    seaweed: SeaweedFS, s3_env: None, bucket: str
) -> None:
    data = b"the same bytes"
    seaweed.client().put_object(Bucket=bucket, Key=KEY, Body=data)  # no SSE
    sink = S3Sink(bucket, part_retry=FAST, sse=AES)
    try:
        with pytest.raises(StorageConflict) as caught:
            await store(sink, "put", data)
        again = S3Sink(bucket, part_retry=FAST)  # no SSE asked: adopted, as before
        adopted = await store(again, "put", data)
        await again.close()
    finally:
        await sink.close()
    message = str(caught.value)
    assert "without server-side encryption" in message and "AES256" in message, message
    assert "kept" in message
    head = seaweed.client().head_object(Bucket=bucket, Key=KEY)
    assert "ServerSideEncryption" not in head  # untouched
    assert not adopted.created and adopted.sse is None


async def test_an_object_with_the_sse_asked_is_adopted_with_it(
    seaweed: SeaweedFS, s3_env: None, bucket: str
) -> None:
    key_id = default_key_id(seaweed, bucket)
    data = b"the same bytes"
    seaweed.client().put_object(
        Bucket=bucket, Key=KEY, Body=data, ServerSideEncryption="aws:kms", SSEKMSKeyId=key_id
    )
    sink = S3Sink(bucket, part_retry=FAST, sse=ServerSideEncryption("aws:kms", key_id))
    try:
        result = await store(sink, "put", data)
    finally:
        await sink.close()
    assert not result.created
    assert (result.sse, result.sse_kms_key_id) == ("aws:kms", key_id)


ARN = "arn:aws:kms:ap-south-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize(
    ("asked", "answered", "same"),
    [
        (ARN, ARN, True),
        (ARN, "1234abcd-12ab-34cd-56ef-1234567890ab", False),  # an ARN asked must be equal
        ("1234abcd-12ab-34cd-56ef-1234567890ab", ARN, True),  # AWS answers the ARN
        ("1234abcd-12ab-34cd-56ef-1234567890ab", "1234abcd-12ab-34cd-56ef-1234567890ab", True),
        ("1234abcd-12ab-34cd-56ef-1234567890ab", ARN.replace("1234abcd", "9999abcd"), False),
        ("34cd-56ef-1234567890ab", ARN, False),  # a tail of the id is not the id
    ],
)
def test_which_answered_key_is_the_key_asked(asked: str, answered: str, same: bool) -> None:
    assert kms_key_matches(asked, answered) is same


async def test_an_alias_is_resolved_once_and_every_later_answer_must_name_that_key(
    seaweed: SeaweedFS, s3_env: None, bucket: str
) -> None:
    key_id = default_key_id(seaweed, bucket)
    sink = S3Sink(bucket, part_retry=FAST, sse=KMS)
    try:
        first = await store(sink, "put", b"first")
        assert sink.sse_problem("aws:kms", key_id) is None
        problem = sink.sse_problem("aws:kms", "1234abcd-0000-0000-0000-000000000000")
        assert problem is not None and key_id in problem and ALIAS in problem, problem
        assert sink.sse_problem("AES256", None) is not None
        assert sink.sse_problem("aws:kms", None) is not None  # a KMS answer names its key
    finally:
        await sink.close()
    assert first.sse_kms_key_id == key_id


# --- the command line: preflight, and a whole archive --------------------------------------


@pytest.fixture
def sid(sim: Simulator) -> str:
    calls = sim.populate(2, day=datetime.fromisoformat(DAY).date(), sizes=(2000, 4000))
    return calls[0].sid


@pytest.fixture
def env(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> dict[str, str]:
    return {
        **exotel_env(sim, server.base_url, f"s3://{bucket}/calls", tmp_path / "state"),
        "ARCHIVER_ATTEMPTS": "2",
    }


def test_a_kms_key_the_store_refuses_stops_the_backfill_at_preflight(
    sim: Simulator, sid: str, env: dict[str, str], seaweed: SeaweedFS, bucket: str
) -> None:
    before = dict(sim.counters)
    result = invoke(
        ["backfill", "--since", DAY, "--until", DAY],
        {**env, "ARCHIVER_SSE": "aws:kms", "ARCHIVER_SSE_KMS_KEY_ID": "alias/nope"},
    )
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    for needle in ("alias/nope", "kms:GenerateDataKey", "kms:Decrypt", "docs/storage.md"):
        assert needle in out, out
    assert {k: v - before.get(k, 0) for k, v in sim.counters.items() if v != before.get(k, 0)} == {}
    nothing_left(seaweed, bucket)


def test_an_archive_with_sse_kms_stores_every_object_encrypted(
    sim: Simulator, sid: str, env: dict[str, str], seaweed: SeaweedFS, bucket: str
) -> None:
    key_id = default_key_id(seaweed, bucket)
    result = invoke(
        ["archive", sid], {**env, "ARCHIVER_SSE": "aws:kms", "ARCHIVER_SSE_KMS_KEY_ID": ALIAS}
    )
    assert result.exit_code == 0, result.output
    client = seaweed.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.endswith(".mp3") or k.endswith(".wav") for k in keys), keys
    assert any("_manifest" in k for k in keys), keys  # the marker (and any segment) too
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        assert (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) == ("aws:kms", key_id)
    # The manifest records what the store confirmed, for every object.
    lines = read_manifest(Path(env["ARCHIVER_STATE_DIR"]) / "manifest.jsonl")
    assert lines and {(e["sse"], e["sse_kms_key_id"]) for e in lines} == {("aws:kms", key_id)}


class _DropsSseOnObjects(FaultyS3Proxy):
    """A store that encrypts multipart parts as asked (so the preflight probe passes) but
    answers every other request without its SSE headers: its objects seem unencrypted."""

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        part = "partNumber=" in request.query_string
        self.strip_response_headers = () if part else SSE_HEADERS
        return await super()._answer(request)


def test_a_store_that_drops_the_header_archives_nothing(
    sim: Simulator,
    sid: str,
    env: dict[str, str],
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    with _DropsSseOnObjects(seaweed.endpoint) as proxy:
        result = invoke(
            ["archive", sid],
            {**env, "AWS_ENDPOINT_URL": proxy.endpoint, "ARCHIVER_SSE": "aes256"},
        )
    out = result.output
    assert result.exit_code != 0, out
    assert "Traceback" not in out
    assert "answered without server-side encryption" in out, out
    nothing_left(seaweed, bucket)
    state = tmp_path / "state"
    if (state / "ledger.sqlite3").exists():
        archived: list[Any] = ledger_rows(state, "SELECT * FROM objects")
        assert archived == []
