"""What the store says about ONE object fails that call; what concerns every call stops the run
(issue 15, item 1). And the last resort: a bug while archiving one call fails that call.

S3 answers are injected per object by FaultyS3Proxy in front of SeaweedFS; the worker runs
through click (``archive``) and in-process (``Daemon``) against the simulator over real HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import pytest

from archiver.errors import (
    StoragePermanent,
    StorageRejected,
    StorageUnavailable,
    error_reason,
)
from archiver.exotel import client as exotel_client
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from archiver.sinks.local import LocalSink
from archiver.sinks.s3 import S3Sink
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import exotel_env, invoke, outcomes, recordings_in
from tests.test_daemon import daemon_settings, make_daemon, running, until

PREFIX = "rejects"
KEY = "2026/01/02/c0ffee/recording-1.mp3"
BODY = b"ID3" + bytes(range(256)) * 8

ONE_OBJECT = [
    (400, "InvalidArgument"),
    (400, "InvalidRequest"),
    (400, "KeyTooLongError"),
    (400, "EntityTooLarge"),
    (400, "MetadataTooLarge"),
    (400, "InvalidStorageClass"),
    (409, "Conflict"),
    (409, "BucketNotEmpty"),
    (411, "MissingContentLength"),
    (416, "InvalidRange"),
    (422, "UnprocessableEntity"),
    (400, "SomethingNoStoreSaidYet"),
]
EVERY_CALL = [
    (403, "AccessDenied"),
    (404, "NoSuchBucket"),
    (403, "InvalidAccessKeyId"),
    (403, "SignatureDoesNotMatch"),
    (400, "ExpiredToken"),
    (403, "AllAccessDisabled"),
]
TRANSIENT = [(503, "SlowDown"), (409, "OperationAborted"), (409, "ConditionalRequestConflict")]


async def _put(sink: S3Sink) -> None:
    try:
        await sink.put(
            KEY,
            io.BytesIO(BODY),
            size=len(BODY),
            sha256=hashlib.sha256(BODY).hexdigest(),
            content_type="audio/mpeg",
        )
    finally:
        await sink.close()


@pytest.mark.parametrize(
    "status, code, kind",
    [(s, c, StorageRejected) for s, c in ONE_OBJECT]
    + [(s, c, StoragePermanent) for s, c in EVERY_CALL]
    + [(s, c, StorageUnavailable) for s, c in TRANSIENT],
)
async def test_each_s3_answer_is_classified_as_one_object_every_call_or_transient(
    s3_env: None,
    bucket: str,
    proxy: FaultyS3Proxy,
    status: int,
    code: str,
    kind: type[Exception],
) -> None:
    proxy.fail(lambda m, p: m == "PUT" and KEY in p, status=status, code=code)
    with pytest.raises(kind) as caught:
        await _put(S3Sink(bucket, endpoint_url=proxy.endpoint))
    assert type(caught.value) is kind
    assert code in str(caught.value) or kind is StoragePermanent
    assert proxy.injected[f"rule:{code}"] == 1


def test_a_head_refused_without_a_body_concerns_every_call(
    s3_env: None, bucket: str, proxy: FaultyS3Proxy
) -> None:
    """HEAD answers carry no error document: a bare 403 is the credentials, not the object."""
    proxy.fail(lambda m, p: m == "HEAD" and KEY in p, status=403, code="AccessDenied")
    sink = S3Sink(bucket, endpoint_url=proxy.endpoint)

    async def stat() -> None:
        try:
            await sink.stat(KEY)
        finally:
            await sink.close()

    with pytest.raises(StoragePermanent):
        asyncio.run(stat())


async def test_a_file_name_the_file_system_refuses_fails_that_object_only(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "archive")
    key = f"2026/01/02/c0ffee/{'r' * 300}.mp3"  # over NAME_MAX (255): ENAMETOOLONG
    with pytest.raises(StorageRejected, match="refuses this name") as caught:
        await sink.put(
            key,
            io.BytesIO(BODY),
            size=len(BODY),
            sha256=hashlib.sha256(BODY).hexdigest(),
            content_type="audio/mpeg",
        )
    assert not caught.value.retryable
    assert error_reason(caught.value) == "storage_rejected"
    await sink.close()


# --- end to end ----------------------------------------------------------------------------------


def _env(sim: Simulator, server: SimulatorServer, bucket: str, state: Path) -> dict[str, str]:
    return {
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", state),
        "ARCHIVER_ATTEMPTS": "2",
        "ARCHIVER_MAX_WAIT": "0.1",
        "ARCHIVER_CONCURRENCY": "1",  # the refused call first: the run must go on past it
    }


def _key(sim: Simulator, sid: str) -> str:
    return f"{PREFIX}/{sim.calls[sid].created.astimezone(IST):%Y/%m/%d}/{sid}/recording-1.mp3"


@pytest.mark.parametrize("status, code", [(400, "InvalidArgument"), (409, "Conflict")])
def test_an_object_the_store_refuses_fails_its_call_and_the_run_goes_on(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    code: str,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    refused, good = sim.add_call(size=3000), sim.add_call(size=3000)
    proxy.fail(
        lambda m, p: m == "PUT" and f"/{refused.sid}/" in p, times=100, status=status, code=code
    )
    state = tmp_path / "state"
    result = invoke(["archive", refused.sid, good.sid], _env(sim, server, bucket, state))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"FAILED     {refused.sid}" in result.output and code in result.output
    assert outcomes(state, refused.sid, good.sid) == {refused.sid: "failed", good.sid: "archived"}
    assert recordings_in(seaweed, bucket, PREFIX) == {
        _key(sim, good.sid): sim.recording_bytes(good.sid, 1)
    }
    assert {e["call_sid"] for e in read_manifest(state / "manifest.jsonl")} == {good.sid}


def test_access_denied_on_one_put_still_stops_the_run(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    first, second = sim.add_call(size=3000), sim.add_call(size=3000)
    proxy.fail(
        lambda m, p: m == "PUT" and "/recording-" in p, times=100, status=403, code="AccessDenied"
    )
    state = tmp_path / "state"
    result = invoke(["archive", first.sid, second.sid], _env(sim, server, bucket, state))
    assert result.exit_code == 2, result.output
    assert "access denied" in result.output and "Traceback" not in result.output
    assert recordings_in(seaweed, bucket, PREFIX) == {}


# --- the last resort -----------------------------------------------------------------------------


def _bug_for(monkeypatch: pytest.MonkeyPatch, sid: str) -> None:
    """A bug in our own parsing (not in boto3, aiohttp or the storage layer) that hits one call."""
    parse = exotel_client.parse_call_details

    def buggy(details: Any, **kwargs: Any) -> Any:
        if isinstance(details, dict) and details.get("sid") == sid:
            raise RuntimeError("simulated bug, X-Amz-Signature=f00dfacecafe1515")
        return parse(details, **kwargs)

    monkeypatch.setattr(exotel_client, "parse_call_details", buggy)


def test_a_bug_on_one_call_fails_that_call_and_archive_goes_on(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buggy, good = sim.add_call(size=3000), sim.add_call(size=3000)
    _bug_for(monkeypatch, buggy.sid)
    state = tmp_path / "state"
    result = invoke(["archive", buggy.sid, good.sid], _env(sim, server, bucket, state))
    out = result.output
    assert result.exit_code == 1, out
    assert f"FAILED     {buggy.sid}: internal error (RuntimeError: simulated bug" in out
    assert out.count("Traceback (most recent call last)") == 1  # logged once, in the log line
    assert "f00dfacecafe1515" not in out
    assert outcomes(state, buggy.sid, good.sid) == {buggy.sid: "failed", good.sid: "archived"}
    assert recordings_in(seaweed, bucket, PREFIX) == {
        _key(sim, good.sid): sim.recording_bytes(good.sid, 1)
    }
    assert {e["call_sid"] for e in read_manifest(state / "manifest.jsonl")} == {good.sid}


async def test_a_bug_on_one_call_does_not_stop_the_worker(
    sim: Simulator,
    server: SimulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    buggy = sim.add_call(size=3000)
    _bug_for(monkeypatch, buggy.sid)
    settings = daemon_settings(sim, server, tmp_path)
    daemon = make_daemon(settings)
    with caplog.at_level(logging.ERROR, logger="archiver"):
        async with running(daemon) as task:
            await until(lambda: daemon.metrics.failures["internal_error"] == 1)
            later = sim.add_call(size=3000)
            daemon.hint(later.sid)
            await until(lambda: daemon.metrics.calls["archived"] == 1 or task.done())
            assert not task.done()  # still running
    assert outcomes(settings.state_dir, buggy.sid, later.sid) == {
        buggy.sid: "failed",
        later.sid: "archived",
    }
    entries = read_manifest(settings.state_dir / "manifest.jsonl")
    assert {e["call_sid"] for e in entries} == {later.sid}
    tracebacks = [r for r in caplog.records if r.exc_info or r.exc_text]
    assert len(tracebacks) == 1 and buggy.sid in tracebacks[0].getMessage()
