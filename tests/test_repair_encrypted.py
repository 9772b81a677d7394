"""`repair` and `verify` on recordings encrypted client-side (issue 19: "repair works unchanged
on encrypted objects").

A real backfill encrypts every recording to a public key (a fresh data key each time), so the
recorded ciphertext can never be made again: repair must compare what Exotel serves with the
recording's own hash, encrypt it afresh to the key the entry names — and only that one — and
say in the chain which ciphertext the key holds now, so that verify (with or without the
ledger) passes and the private key still restores the source byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver.chain import cross_check, entry_problem, stored_as
from archiver.envelope import Recipient
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import decrypt, exotel_env, invoke, write_keys

PREFIX = "enc"
MAGIC = b"EXARENC1"


def settled_day() -> Any:
    return (datetime.now(IST) - timedelta(days=3)).date()


@pytest.fixture
def archived(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> dict[str, Any]:
    """A backfill of three recordings (two calls), each encrypted to a fresh X25519 key."""
    public, private = write_keys(tmp_path)
    day = settled_day()
    start = datetime(day.year, day.month, day.day, 10, tzinfo=IST)
    calls = [
        sim.add_call(recordings=[40_000, 70_000], created=start),
        sim.add_call(recordings=1, size=20_000, created=start + timedelta(minutes=5)),
    ]
    env = {
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state"),
        "ARCHIVER_ENCRYPT_TO": str(public),
    }
    done = invoke(["backfill", "--since", str(day), "--until", str(day)], env)
    assert done.exit_code == 0, done.output
    entries = read_manifest(tmp_path / "state" / "manifest.jsonl")
    recordings = [e for e in entries if e["kind"] == "recording"]
    assert len(recordings) == 3 and all(e.get("encrypted_to") for e in recordings)
    return {
        "env": env,
        "calls": calls,
        "recordings": recordings,
        "public": public,
        "private": private,
        "fingerprint": Recipient.from_file(public).fingerprint,
    }


def stored(seaweed: SeaweedFS, bucket: str, key: str) -> bytes:
    return bytes(seaweed.client().get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")["Body"].read())


def source_of(sim: Simulator, e: dict[str, Any]) -> bytes:
    return bytes(sim.recording_bytes(e["call_sid"], e["index"]))


def repaired_events(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["ARCHIVER_STATE_DIR"]) / "manifest.jsonl"
    return [e for e in read_manifest(path) if e.get("kind") == "repaired"]


def test_a_deleted_encrypted_recording_is_encrypted_afresh_put_back_and_verifies(
    archived: dict[str, Any], seaweed: SeaweedFS, bucket: str, sim: Simulator, tmp_path: Path
) -> None:
    env, lost = archived["env"], archived["recordings"][1]
    old = stored(seaweed, bucket, lost["key"])
    seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{lost['key']}")
    missing = invoke(["verify"], env)
    assert missing.exit_code == 1 and "missing" in missing.output, missing.output

    # Before the fix: Exotel's bytes (the plaintext) were compared with the ciphertext's
    # SHA-256 and the recording was reported "other bytes", never put back.
    result = invoke(["repair"], env)
    assert result.exit_code == 0, result.output
    data = stored(seaweed, bucket, lost["key"])
    assert data.startswith(MAGIC) and data != old  # a new ciphertext: a fresh data key
    assert decrypt(archived["private"], data) == source_of(sim, lost)
    [event] = repaired_events(env)
    assert (event["sha256"], event["size"]) == (lost["sha256"], lost["size"])  # the entry's
    assert event["stored_sha256"] == hashlib.sha256(data).hexdigest()
    assert event["stored_size"] == len(data)
    assert event["plaintext_sha256"] == lost["plaintext_sha256"]
    assert event["encrypted_to"] == archived["fingerprint"]
    assert event["previous"] == "missing"

    verified = invoke(["verify"], env)
    assert verified.exit_code == 0, verified.output
    # An auditor's verify, from the chain alone (no ledger): the sealed event says it too.
    alone = {**env, "ARCHIVER_STATE_DIR": str(tmp_path / "auditor")}
    from_chain = invoke(["verify"], alone)
    assert from_chain.exit_code == 0, from_chain.output
    again = invoke(["repair"], env)
    assert again.exit_code == 0 and "nothing to repair" in again.output, again.output
    # The key holds the repair's ciphertext now: decrypt checks it against the repaired event.
    out = tmp_path / "restored"
    restored = invoke(
        ["decrypt", "--identity", str(archived["private"]), "--out", str(out), lost["key"]], env
    )
    assert restored.exit_code == 0, restored.output
    assert (out / lost["key"]).read_bytes() == source_of(sim, lost)


def test_repair_with_another_key_is_refused_naming_both_fingerprints(
    archived: dict[str, Any], seaweed: SeaweedFS, bucket: str, sim: Simulator, tmp_path: Path
) -> None:
    env, lost = archived["env"], archived["recordings"][0]
    seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{lost['key']}")
    (tmp_path / "other").mkdir()
    other, _ = write_keys(tmp_path / "other")
    theirs = Recipient.from_file(other).fingerprint
    report = tmp_path / "repair.json"
    before = sim.counters.get("api_requests", 0)
    result = invoke(["repair", "--report", str(report)], {**env, "ARCHIVER_ENCRYPT_TO": str(other)})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if lost["key"] in line]
    assert "CANNOT" in line and archived["fingerprint"] in line and theirs in line
    assert "--encrypt-to" in line
    assert json.loads(report.read_text())["api_requests"] == 0  # refused before fetching
    assert sim.counters.get("api_requests", 0) == before
    assert not repaired_events(env)
    assert invoke(["verify"], env).exit_code == 1  # still missing: nothing claims otherwise


def test_repair_without_encrypt_to_is_refused_naming_the_key_it_needs(
    archived: dict[str, Any], seaweed: SeaweedFS, bucket: str
) -> None:
    env, lost = archived["env"], archived["recordings"][2]
    seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{lost['key']}")
    plain = {k: v for k, v in env.items() if k != "ARCHIVER_ENCRYPT_TO"}
    result = invoke(["repair"], plain)
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.output.splitlines() if lost["key"] in line]
    assert "CANNOT" in line and archived["fingerprint"] in line and "--encrypt-to" in line
    assert (
        seaweed.client()
        .list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/{lost['key']}")
        .get("KeyCount", 0)
        == 0
    )  # nothing put, least of all the plaintext
    assert not repaired_events(env)


def test_an_altered_encrypted_recording_is_quarantined_and_replaced_twice_over(
    archived: dict[str, Any], seaweed: SeaweedFS, bucket: str, sim: Simulator
) -> None:
    env, target = archived["env"], archived["recordings"][0]
    client, full = seaweed.client(), f"{PREFIX}/{target['key']}"
    source = source_of(sim, target)
    for round_ in (1, 2):  # the second time, against the ciphertext the first repair put
        forged = bytearray(stored(seaweed, bucket, target["key"]))
        forged[200] ^= 0xFF
        client.put_object(Bucket=bucket, Key=full, Body=bytes(forged))
        altered = invoke(["verify"], env)
        assert altered.exit_code == 1 and "altered" in altered.output, altered.output
        result = invoke(["repair"], env)
        assert result.exit_code == 0, result.output
        data = stored(seaweed, bucket, target["key"])
        assert decrypt(archived["private"], data) == source
        kept = client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/_manifest/quarantine/")
        aside = [o["Key"] for o in kept.get("Contents", [])]
        assert len(aside) == round_
        forged_sha = hashlib.sha256(forged).hexdigest()
        assert any(key.endswith(forged_sha) for key in aside)
        events = repaired_events(env)
        assert len(events) == round_ and events[-1]["previous"] == "altered"
        assert events[-1]["stored_sha256"] == hashlib.sha256(data).hexdigest()
        verified = invoke(["verify"], env)
        assert verified.exit_code == 0, verified.output


async def _put_as_a_repair_would(
    env: dict[str, str], public: Path, key: str, source: bytes, sha256: str
) -> Any:
    """A repair's ciphertext of ``source``, its intent committed and stored at ``key`` — then
    "killed" before its event."""
    from archiver.archive import sink_for
    from archiver.config import load_settings
    from archiver.encryption import STORED_TYPE, Encryption
    from archiver.group_commit import GroupCommit
    from archiver.ledger import Ledger

    settings = load_settings(env=env)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    writes = GroupCommit(ledger)
    sink = sink_for(settings)
    try:
        encryption = Encryption(Recipient.from_file(public), writes, settings.state_dir)
        async with encryption.seal(
            key, io.BytesIO(source), size=len(source), sha256=sha256
        ) as sealed:
            await sink.put(
                key, sealed.file, size=sealed.size, sha256=sealed.sha256, content_type=STORED_TYPE
            )
        return sealed
    finally:
        writes.close()
        ledger.close()
        await sink.close()


def test_a_repair_cut_off_after_its_put_is_recorded_by_the_next_without_a_fetch(
    archived: dict[str, Any], seaweed: SeaweedFS, bucket: str, sim: Simulator
) -> None:
    """The crash window of a repair: the new ciphertext is stored and its intent committed,
    the repaired event is not. verify calls it altered; the next repair must recognise its
    own ciphertext — not set it aside (a locked object could not be) nor fetch it again."""
    env, lost = archived["env"], archived["recordings"][1]
    seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{lost['key']}")
    source = source_of(sim, lost)
    sealed = asyncio.run(
        _put_as_a_repair_would(
            env, archived["public"], lost["key"], source, lost["plaintext_sha256"]
        )
    )
    assert invoke(["verify"], env).exit_code == 1  # altered: not the entry's ciphertext
    before = sim.counters.get("api_requests", 0)
    result = invoke(["repair"], env)
    assert result.exit_code == 0, result.output
    assert sim.counters.get("api_requests", 0) == before
    [event] = repaired_events(env)
    assert (event["stored_sha256"], event["stored_size"]) == (sealed.sha256, sealed.size)
    assert event["quarantined_as"] is None
    kept = seaweed.client().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/_manifest/quarantine/")
    assert kept.get("KeyCount", 0) == 0
    assert decrypt(archived["private"], stored(seaweed, bucket, lost["key"])) == source
    assert invoke(["verify"], env).exit_code == 0


def _entry(seq: int, **extra: Any) -> dict[str, Any]:
    return {"seq": seq, "key": "a/recording-1.mp3", "call_sid": "CA1", **extra}


def test_the_chain_accepts_stored_bytes_only_for_an_encrypted_object_of_the_same_recording() -> (
    None
):
    plain = _entry(1, kind="recording", sha256="1" * 64, size=10)
    encrypted = {**plain, "encrypted_to": "x25519:ab", "plaintext_sha256": "2" * 64}
    repaired = _entry(
        2,
        kind="repaired",
        sha256="1" * 64,
        size=10,
        stored_sha256="3" * 64,
        stored_size=12,
        plaintext_sha256="2" * 64,
        encrypted_to="x25519:ab",
    )
    later = {**repaired, "seq": 3, "stored_sha256": "4" * 64, "stored_size": 13}
    assert cross_check([encrypted, repaired, later])[0] == []
    assert stored_as([encrypted, repaired, later]) == {plain["key"]: ("4" * 64, 13)}
    assert stored_as([encrypted]) == {}  # as its entry says
    full = {"schema": 1, "version_id": None, "at": "t", "actor": "a", **repaired}
    assert entry_problem(full) is None
    assert "stored_sha256" in str(entry_problem({**full, "stored_sha256": "X"}))
    assert "stored_size" in str(entry_problem({**full, "stored_size": -1}))
    [problem] = cross_check([plain, repaired])[0]  # a plaintext object has no other bytes
    assert "encrypted_to" in problem
    [problem] = cross_check([encrypted, {**repaired, "plaintext_sha256": "5" * 64}])[0]
    assert "plaintext_sha256" in problem
