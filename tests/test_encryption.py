"""Client-side encryption end to end (issue 19): ``--encrypt-to`` through a real backfill into
SeaweedFS, the recorder's adoption of its own ciphertext after a crash, and what stays plain.

Every recording in the bucket must be ciphertext only (nothing of the audio readable), its
manifest entry must carry both hashes, and the private key — which the worker never sees —
must restore the source's bytes exactly.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver.config import load_settings
from archiver.encryption import STORED_TYPE
from archiver.envelope import Recipient
from archiver.exotel.models import IST
from archiver.ledger import Ledger
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import decrypt, exotel_env, invoke, outcome, write_keys

MAGIC = b"EXARENC1"
PREFIX = "calls"
BIG = 12 * 1024 * 1024  # over 2 x 5 MiB parts: a streamed multipart upload


def settled_day() -> Any:
    return (datetime.now(IST) - timedelta(days=3)).date()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_keys(tmp_path)


def _env(
    sim: Simulator, server: SimulatorServer, seaweed: SeaweedFS, bucket: str, tmp_path: Path
) -> dict[str, str]:
    return {
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state"),
        "ARCHIVER_PART_SIZE": "5",
    }


def _stored(seaweed: SeaweedFS, bucket: str) -> dict[str, tuple[bytes, str]]:
    client = seaweed.client()
    out: dict[str, tuple[bytes, str]] = {}
    for item in client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/").get("Contents", []):
        got = client.get_object(Bucket=bucket, Key=item["Key"])
        out[item["Key"][len(PREFIX) + 1 :]] = (got["Body"].read(), got.get("ContentType", ""))
    return out


@pytest.mark.parametrize("kind", ["x25519", "rsa"])
def test_a_backfill_stores_only_ciphertext_that_the_private_key_restores_byte_for_byte(
    kind: str,
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    public, private = write_keys(tmp_path, kind)
    day = settled_day()
    start = datetime(day.year, day.month, day.day, 10, tzinfo=IST)
    calls = [
        sim.add_call(recordings=[40_000, 70_000], created=start),
        sim.add_call(recordings=1, size=5_000, created=start + timedelta(minutes=5)),
        sim.add_call(recordings=[BIG], created=start + timedelta(minutes=9)),  # streamed
    ]
    env = {**_env(sim, server, seaweed, bucket, tmp_path), "ARCHIVER_ENCRYPT_TO": str(public)}
    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)
    assert result.exit_code == 0, result.output

    stored = _stored(seaweed, bucket)
    manifest = {e["key"]: e for e in read_manifest(tmp_path / "state" / "manifest.jsonl")}
    fingerprint = Recipient.from_file(public).fingerprint
    recordings = 0
    for call in calls:
        folder = f"{call.created.astimezone(IST):%Y/%m/%d}/{call.sid}"
        for index in range(1, len(call.recordings) + 1):
            key = f"{folder}/recording-{index}.mp3"
            source = sim.recording_bytes(call.sid, index)
            data, content_type = stored[key]
            assert data.startswith(MAGIC)
            assert source[1000:1064] not in data  # nothing of the audio readable
            assert content_type == STORED_TYPE  # not even its format
            entry = manifest[key]
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()  # what verify checks
            assert entry["size"] == len(data)
            assert entry["plaintext_sha256"] == hashlib.sha256(source).hexdigest()
            assert entry["plaintext_size"] == len(source)
            assert entry["encrypted_to"] == fingerprint
            assert decrypt(private, data) == source  # byte for byte
            recordings += 1
        details, _ = stored[f"{folder}/call.json"]
        # The snapshots stay plain: retention, audits and repairs read them back.
        assert json.loads(details)["response"]["call_details"]["sid"] == call.sid
        assert "encrypted_to" not in manifest[f"{folder}/call.json"]
    assert recordings == 4
    verified = invoke(["verify"], env)  # checks the ciphertext without any key
    assert verified.exit_code == 0, verified.output


def test_a_private_key_given_to_the_worker_is_refused_and_not_echoed(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
    keys: tuple[Path, Path],
) -> None:
    _public, private = keys
    env = {**_env(sim, server, seaweed, bucket, tmp_path), "ARCHIVER_ENCRYPT_TO": str(private)}
    day = settled_day()
    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)
    assert result.exit_code == 2, result.output
    assert "private key" in result.output and "ARCHIVER_ENCRYPT_TO" in result.output
    assert "Traceback" not in result.output
    body = private.read_text().splitlines()[1]
    assert body not in result.output
    assert not (tmp_path / "state" / "ledger.sqlite3").exists()  # refused before any work


async def test_an_encrypted_object_left_by_a_crash_before_its_commit_is_adopted_once(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
    keys: tuple[Path, Path],
) -> None:
    """The crash window: the ciphertext is in the store and its intent in the ledger, the
    object's row is not. The next attempt encrypts afresh (other bytes) and must adopt what is
    there, not fail with a conflict nor store it twice."""
    from archiver.archive import archive_calls, sink_for
    from archiver.encryption import Encryption
    from archiver.group_commit import GroupCommit

    public, private = keys
    env = {**_env(sim, server, seaweed, bucket, tmp_path), "ARCHIVER_ENCRYPT_TO": str(public)}
    settings = load_settings(env=env)
    call = sim.add_call(recordings=1, size=30_000)
    source = sim.recording_bytes(call.sid, 1)
    key = f"{call.created.astimezone(IST):%Y/%m/%d}/{call.sid}/recording-1.mp3"
    # The first attempt, up to its PUT: sealed, intent committed, stored — then "killed".
    (tmp_path / "state").mkdir()
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    writes = GroupCommit(ledger)
    sink = sink_for(settings)
    sha = hashlib.sha256(source).hexdigest()
    async with Encryption(Recipient.from_file(public), writes, tmp_path).seal(
        key, io.BytesIO(source), size=len(source), sha256=sha
    ) as sealed:
        first = await sink.put(
            key,
            sealed.file,
            size=sealed.size,
            sha256=sealed.sha256,
            content_type="application/octet-stream",
        )
    writes.close()
    ledger.close()
    await sink.close()
    assert first.created

    [result] = (await archive_calls(settings, [call.sid])).results
    assert result.outcome == "archived", result
    rows = Ledger(tmp_path / "state" / "ledger.sqlite3").objects_of(call.sid)
    [row] = [r for r in rows if r.kind == "recording"]
    assert (row.sha256, row.size) == (first.sha256, first.size)  # the one stored, adopted
    assert row.plaintext_sha256 == sha and row.encrypted_to is not None
    data, _ = _stored(seaweed, bucket)[key]
    assert decrypt(private, data) == source
    assert outcome(tmp_path / "state", call.sid) == "archived"


async def test_without_its_intent_another_ciphertext_at_the_key_is_a_conflict(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
    keys: tuple[Path, Path],
) -> None:
    """A ciphertext at the key that this ledger never intended (a lost state directory, a
    second writer) proves nothing about its content: the call fails and the object is kept."""
    from archiver.archive import archive_calls

    public, _private = keys
    env = {**_env(sim, server, seaweed, bucket, tmp_path), "ARCHIVER_ENCRYPT_TO": str(public)}
    settings = load_settings(env=env)
    call = sim.add_call(recordings=1, size=30_000)
    key = f"{PREFIX}/{call.created.astimezone(IST):%Y/%m/%d}/{call.sid}/recording-1.mp3"
    planted = MAGIC + b"\x00" * 200
    seaweed.client().put_object(Bucket=bucket, Key=key, Body=planted)
    [result] = (await archive_calls(settings, [call.sid])).results
    assert result.outcome == "failed", result
    assert "conflict" in (result.detail or "")
    assert seaweed.client().get_object(Bucket=bucket, Key=key)["Body"].read() == planted


def test_a_rescued_encrypted_recording_is_matched_at_enrichment_by_its_plaintext(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
    keys: tuple[Path, Path],
) -> None:
    """The rescue lane on encrypted objects: v3 names the rescued file otherwise, so the
    enrichment matches it by the SHA-256 of its bytes — the plaintext's, since the stored
    ciphertext's is another every time. It is not stored a second time."""
    from tests.test_rescue import by_call, lane_env, objects, the_day

    public, private = keys
    day = the_day()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    call = sim.add_call(created=noon, recordings=2)
    sim.faults.details_recordings = lambda url: url.replace("127.0.0.1", "localhost")
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENCRYPT_TO=str(public))

    result = invoke(["backfill", "--since", str(day), "--until", str(day)], env)

    assert result.exit_code == 0, result.output
    files = by_call(objects(seaweed, bucket))[call.sid]
    assert set(files) == {"recording-1.mp3", "recording-2.mp3", "call-v1.json", "call.json"}
    assert decrypt(private, files["recording-1.mp3"]) == sim.recording_asset(call, 1).body()
    assert decrypt(private, files["recording-2.mp3"]) == sim.recording_asset(call, 2).body()
    assert outcome(tmp_path / "state", call.sid) == "archived"


def test_a_flipped_byte_in_a_stored_recording_is_refused_by_decrypt_and_named_by_verify(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
    keys: tuple[Path, Path],
) -> None:
    """Nothing takes an altered ciphertext silently: verify (no key) names the object altered,
    decrypt refuses it and writes nothing, whichever byte was flipped."""
    public, private = keys
    env = {**_env(sim, server, seaweed, bucket, tmp_path), "ARCHIVER_ENCRYPT_TO": str(public)}
    day = settled_day()
    call = sim.add_call(
        recordings=[200_000], created=datetime(day.year, day.month, day.day, 11, tzinfo=IST)
    )
    assert invoke(["backfill", "--since", str(day), "--until", str(day)], env).exit_code == 0
    key = f"{call.created.astimezone(IST):%Y/%m/%d}/{call.sid}/recording-1.mp3"
    client = seaweed.client()
    original = stored = _stored(seaweed, bucket)[key][0]
    for offset in (3, 40, len(stored) // 2, len(stored) - 1):  # magic, header, a chunk, a tag
        flipped = bytearray(original)
        flipped[offset] ^= 0x01
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=bytes(flipped))
        verified = invoke(["verify"], env)
        assert verified.exit_code == 1 and "altered" in verified.output, (offset, verified.output)
        out = tmp_path / f"out-{offset}"
        refused = invoke(["decrypt", "--identity", str(private), "--out", str(out), key], env)
        assert refused.exit_code == 1, (offset, refused.output)
        assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), offset
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=original)
    out = tmp_path / "out"
    restored = invoke(["decrypt", "--identity", str(private), "--out", str(out), key], env)
    assert restored.exit_code == 0, restored.output
    assert (out / key).read_bytes() == sim.recording_bytes(call.sid, 1)


def test_a_run_without_the_encrypt_to_of_the_run_before_says_so(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
    keys: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A setting changed between runs: --encrypt-to dropped from the service's environment. The
    run goes on (it may be meant) but warns, naming the key the run before encrypted to."""
    public, _private = keys
    env = _env(sim, server, seaweed, bucket, tmp_path)
    first = invoke(["archive", sim.add_call().sid], {**env, "ARCHIVER_ENCRYPT_TO": str(public)})
    assert first.exit_code == 0, first.output
    caplog.clear()
    second = invoke(["archive", sim.add_call().sid], env)
    assert second.exit_code == 0, second.output
    fingerprint = Recipient.from_file(public).fingerprint
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(fingerprint in m and "UNENCRYPTED" in m for m in warned), warned
    caplog.clear()
    third = invoke(["archive", sim.add_call().sid], env)  # said once, not at every run
    assert third.exit_code == 0, third.output
    assert not [r for r in caplog.records if "UNENCRYPTED" in r.getMessage()]
