"""Issue 19 (server-side encryption per object): what still breaks, against SeaweedFS.

docs/storage.md, "Encryption at rest": an object already at the key "is adopted only if, besides
its bytes, its encryption is the one asked; otherwise the call fails with StorageConflict and the
object is kept", every object's record "says how the store confirmed it is encrypted", and a
store refusing the encryption asked stops the command at the preflight (exit 2). Each test below
is one way that does not hold.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from archiver.archive import archive_calls
from archiver.config import Settings, load_settings
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.repair import run_repair
from archiver.report import ARCHIVED
from archiver.simulator import Simulator, SimulatorServer
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import exotel_env, invoke, ledger_rows

PREFIX = "calls"
ALIAS = "alias/seaweedfs-default"


def env_for(
    sim: Simulator, server: SimulatorServer, bucket: str, state: Path, **extra: str
) -> dict[str, str]:
    return {
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", state),
        "ARCHIVER_ATTEMPTS": "2",
        **extra,
    }


def settings_for(
    sim: Simulator, server: SimulatorServer, bucket: str, state: Path, **extra: str
) -> Settings:
    return load_settings(env=env_for(sim, server, bucket, state, **extra))


def call_key(sim: Simulator, sid: str, name: str) -> str:
    created = sim.calls[sid].created.astimezone(IST)
    return f"{PREFIX}/{created:%Y/%m/%d}/{sid}/{name}"


def manifest(state: Path) -> list[dict[str, Any]]:
    return read_manifest(state / "manifest.jsonl")


def sse_of(seaweed: SeaweedFS, bucket: str, key: str) -> str | None:
    return seaweed.client().head_object(Bucket=bucket, Key=key).get("ServerSideEncryption")


@pytest.mark.parametrize("name", ["recording-1.mp3", "call.json"])
async def test_an_object_without_the_sse_asked_is_adopted_by_the_recorder(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
    name: str,
) -> None:
    """An unencrypted object already at the key (left by an earlier run with --sse none that
    failed before its ledger commit) with our very bytes; this run asks --sse aes256.

    ``S3Sink._adopt`` refuses it (StorageConflict "stored without server-side encryption ...
    kept"), but ``Recorder.store`` catches every StorageConflict: for audio it calls
    ``encryption.adopt`` (even with no --encrypt-to), which adopts "the plaintext itself" on
    its SHA-256 alone; for a JSON snapshot it takes whatever is there (``_existing``). The call
    is reported ARCHIVED, exit 0, and the object stays unencrypted at rest.

    Should: the call fails with the conflict (the object kept, as docs/storage.md says), not
    archived."""
    call = sim.add_call(recordings=1, size=30_000)
    key = call_key(sim, call.sid, name)
    if name == "call.json":  # the bytes this run will fetch: take them from a first run
        first = settings_for(sim, server, bucket, tmp_path / "first")
        await archive_calls(first, [call.sid])
        body = seaweed.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        for item in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]:
            seaweed.client().delete_object(Bucket=bucket, Key=item["Key"])
    else:
        body = sim.recording_bytes(call.sid, 1)
    seaweed.client().put_object(Bucket=bucket, Key=key, Body=body)  # no SSE
    assert sse_of(seaweed, bucket, key) is None

    settings = settings_for(sim, server, bucket, tmp_path / "state", ARCHIVER_SSE="aes256")
    report = await archive_calls(settings, [call.sid])

    assert sse_of(seaweed, bucket, key) is None  # kept as it was: right
    adopted = [e for e in manifest(settings.state_dir) if f"{PREFIX}/{e['key']}" == key]
    assert report.results[0].outcome != ARCHIVED and adopted == [], (
        f"--sse aes256 archived {key}, stored without server-side encryption: "
        f"{report.results[0].outcome}, manifest {adopted}"
    )


async def test_a_segment_without_the_sse_asked_is_adopted(
    monkeypatch: pytest.MonkeyPatch,
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    """A run (--sse none) whose segment PUT reached the store but whose answers were all lost:
    segment 1 is stored, unencrypted, and not sealed in the ledger. The next run asks --sse
    aes256: its PUT of segment 1 is refused (If-None-Match), ``S3Sink._adopt`` raises
    StorageConflict for the encryption, and ``segments.seal`` catches it and adopts the stored
    segment on its bytes alone (``segments.adopt``). Segment 1 is recorded sealed while it is
    not encrypted as asked, and the run succeeds.

    Should: a segment without the encryption asked is not adopted (the entries wait, the run
    says why), as for any object."""
    state = tmp_path / "state"
    first_call = sim.add_call(recordings=1, size=3000)
    with FaultyS3Proxy(seaweed.endpoint) as proxy:
        proxy.fail(
            lambda method, path: method == "PUT" and "/_manifest/segments/" in path,
            times=50,
            action="lost_answer",
        )
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        with pytest.raises(Exception, match="segments/00000001"):
            await archive_calls(settings_for(sim, server, bucket, state), [first_call.sid])
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    segment = f"{PREFIX}/_manifest/segments/00000001.jsonl"
    assert sse_of(seaweed, bucket, segment) is None
    assert ledger_rows(state, "SELECT number FROM segments") == []

    again = settings_for(sim, server, bucket, state, ARCHIVER_SSE="aes256")
    with contextlib.suppress(Exception):  # a refusal here is what should happen
        await archive_calls(again, [sim.add_call(recordings=1, size=3000).sid])

    sealed = [n for (n,) in ledger_rows(state, "SELECT number FROM segments")]
    assert 1 not in sealed or sse_of(seaweed, bucket, segment) == "AES256", (
        f"segment 1 sealed ({sealed}) though it is stored without server-side encryption"
    )


async def test_an_adopted_snapshot_is_recorded_as_not_encrypted(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    """call.json is already stored (an earlier run whose ledger was lost; Exotel's details have
    changed since), encrypted AES256. This run (--sse aes256) keeps the stored snapshot, as it
    does by design (``Recorder.store``: StorageConflict on a snapshot → ``_existing``), but
    records it with ``sse`` None: ``sse=put.sse if put is not None else None``. The manifest
    line has no ``sse`` at all — it says the object is not encrypted at rest, though the store
    reports AES256.

    Should: the record says what the store reports for the object adopted (``AES256``), as
    docs/storage.md "The record" promises for every object."""
    call = sim.add_call(recordings=1, size=3000)
    key = call_key(sim, call.sid, "call.json")
    seaweed.client().put_object(
        Bucket=bucket, Key=key, Body=b'{"older": "details"}', ServerSideEncryption="AES256"
    )
    settings = settings_for(sim, server, bucket, tmp_path / "state", ARCHIVER_SSE="aes256")
    report = await archive_calls(settings, [call.sid])
    assert report.results[0].outcome == ARCHIVED
    assert sse_of(seaweed, bucket, key) == "AES256"
    [line] = [e for e in manifest(settings.state_dir) if e["kind"] == "call_details"]
    assert line.get("sse") == "AES256", line


@pytest.mark.parametrize(
    "context",
    [
        json.dumps({"purpose": "p" * 300}),  # SeaweedFS: a value over 256 characters
        json.dumps({"app": "exotel\u0000archiver"}),  # a NUL in a value
    ],
    ids=["long-value", "nul"],
)
def test_an_encryption_context_the_store_refuses_passes_the_preflight(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
    context: str,
) -> None:
    """``--sse-kms-context`` is accepted by the configuration (a JSON object of strings) and by
    the preflight's probe (CreateMultipartUpload + a 1-byte part take it), but SeaweedFS refuses
    every PutObject carrying it (400 InvalidRequest for a long value, 500 InternalError for a
    NUL, retried). So the command gets past the preflight, the marker PUT (or each call's)
    fails, and it exits 1 with "the store refused this object (InvalidRequest Invalid
    Request)" — nothing naming the encryption context. Under systemd exit 1 is restarted
    (Restart=on-failure, RestartPreventExitStatus=2): a crash loop.

    Should: stopped before anything is written, exit 2, the message naming
    --sse-kms-context."""
    call = sim.add_call(recordings=1, size=3000)
    env = env_for(
        sim,
        server,
        bucket,
        tmp_path / "state",
        ARCHIVER_SSE="aws:kms",
        ARCHIVER_SSE_KMS_KEY_ID=ALIAS,
        ARCHIVER_SSE_KMS_CONTEXT=context,
    )
    result = invoke(["archive", call.sid], env)
    out = result.output
    assert "Traceback" not in out
    assert result.exit_code == 2 and "context" in out.lower(), (result.exit_code, out[-800:])


async def test_a_repaired_object_s_encryption_is_recorded_nowhere(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    """Archived with --sse aws:kms (the manifest says ``sse`` aws:kms and the key id); the
    recording is lost; ``repair`` (now run with --sse aes256) puts it back, and the store
    confirms AES256 for the new object — but that answer is dropped: the ``repaired`` event
    carries sha256, size, source, no ``sse``, and the ledger row keeps aws:kms. The manifest now
    claims the object at that key is encrypted with a KMS key it is not encrypted with.

    Should: the repaired event (or a new record) says what the store confirmed for the object
    put back (``sse`` AES256, ``sse_kms_key_id`` None)."""
    state = tmp_path / "state"
    kms = settings_for(
        sim, server, bucket, state, ARCHIVER_SSE="aws:kms", ARCHIVER_SSE_KMS_KEY_ID=ALIAS
    )
    call = sim.add_call(recordings=1, size=3000)
    await archive_calls(kms, [call.sid])
    key = call_key(sim, call.sid, "recording-1.mp3")
    seaweed.client().delete_object(Bucket=bucket, Key=key)

    report = await run_repair(settings_for(sim, server, bucket, state, ARCHIVER_SSE="aes256"))
    assert [i.outcome for i in report.items] == ["repaired"]
    assert sse_of(seaweed, bucket, key) == "AES256"

    lines = [e for e in manifest(state) if f"{PREFIX}/{e['key']}" == key]
    said = [(e["kind"], e.get("sse"), e.get("sse_kms_key_id")) for e in lines]
    assert said[-1] == ("repaired", "AES256", None), (
        f"the manifest's last word on {key} is {said}; the store holds it AES256"
    )
