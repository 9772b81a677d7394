"""Breaker B-CSE (issue 19): client-side encryption of recordings (``--encrypt-to``), attacked.

Each test reproduces one problem against real parts (SeaweedFS, the Exotel simulator over
HTTP, the CLI as a user runs it) and fails until it is fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest

from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import (
    decrypt,
    exotel_env,
    invoke,
    ledger_rows,
    outcome,
    recording_key,
    write_keys,
)

PREFIX = "calls"


def _env(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
    **extra: str,
) -> dict[str, str]:
    return {
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        **extra,
    }


def _intents(state: Path) -> list[tuple[Any, ...]]:
    return ledger_rows(state, "SELECT key, sha256 FROM encrypted_writes")


async def _crash_after_put(env: dict[str, str], key: str, source: bytes, public: Path) -> None:
    """A first attempt with ``env``'s settings, up to its PUT: the recording sealed, its intent
    committed, the ciphertext stored — then the process "killed" before its ledger row."""
    from archiver.archive import sink_for
    from archiver.config import load_settings
    from archiver.encryption import Encryption
    from archiver.envelope import Recipient
    from archiver.group_commit import GroupCommit
    from archiver.ledger import Ledger

    settings = load_settings(env=env)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    writes = GroupCommit(ledger)
    sink = sink_for(settings)
    sha = hashlib.sha256(source).hexdigest()
    try:
        async with Encryption(Recipient.from_file(public), writes, settings.state_dir).seal(
            key, io.BytesIO(source), size=len(source), sha256=sha
        ) as sealed:
            put = await sink.put(
                key,
                sealed.file,
                size=sealed.size,
                sha256=sealed.sha256,
                content_type="application/vnd.exotel-archiver.encrypted",
            )
        assert put.created
    finally:
        writes.close()
        ledger.close()
        await sink.close()


@pytest.mark.parametrize("left", ["plaintext", "ciphertext_of_a_crashed_run"])
def test_a_recording_at_its_key_without_the_sse_asked_is_adopted_not_refused(
    left: str,
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """With ``--sse aes256``, an object at a recording's key that the store holds WITHOUT
    server-side encryption must be a conflict, kept, not recorded (the sink's own promise,
    tests/test_sse.py::test_an_object_stored_without_the_sse_asked_is_not_adopted, and
    docs/storage.md: "our bytes stored without the encryption asked -> StorageConflict").

    What is wrong: ``Recorder.store`` now catches every ``StorageConflict`` of an audio object
    and calls ``encryption.adopt``, which never looks at SSE. So the sink's SSE conflict is
    overridden: a plaintext recording left unencrypted (with or without --encrypt-to: the
    adopt runs even with encryption off), or the ciphertext a crashed run stored under
    ``--sse none`` (a setting changed between runs), is adopted and the call is "archived" with
    an object the store does not encrypt — the operator asked for SSE and is told all is done.
    What should happen: the call fails with the SSE conflict and the object is kept as it is.
    """
    public, _private = write_keys(tmp_path)
    call = sim.add_call(recordings=1, size=30_000)
    key = recording_key(sim, call.sid, PREFIX)
    unprefixed = key.removeprefix(f"{PREFIX}/")
    source = sim.recording_bytes(call.sid, 1)
    if left == "plaintext":
        seaweed.client().put_object(Bucket=bucket, Key=key, Body=source)  # no SSE
        extra: dict[str, str] = {}
    else:
        before = _env(sim, server, seaweed, bucket, tmp_path, ARCHIVER_ENCRYPT_TO=str(public))
        asyncio.run(_crash_after_put(before, unprefixed, source, public))  # under --sse none
        extra = {"ARCHIVER_ENCRYPT_TO": str(public)}
    assert "ServerSideEncryption" not in seaweed.client().head_object(Bucket=bucket, Key=key)

    env = _env(sim, server, seaweed, bucket, tmp_path, ARCHIVER_SSE="aes256", **extra)
    result = invoke(["archive", call.sid], env)

    state = tmp_path / "state"
    rows = ledger_rows(state, f"SELECT sse FROM objects WHERE key = '{unprefixed}'")
    assert (outcome(state, call.sid), rows) != ("archived", [(None,)]), (
        "recorded without the SSE asked: " + result.output[-600:]
    )
    assert outcome(state, call.sid) == "failed"
    assert "ServerSideEncryption" not in seaweed.client().head_object(Bucket=bucket, Key=key)


def test_repair_cannot_put_back_a_lost_encrypted_recording_and_blames_exotel(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """``repair`` takes ``--encrypt-to`` (docs/configuration.md lists it) and puts back a
    missing recording "while Exotel still has it". An encrypted recording deleted from the
    bucket is never put back: repair compares the download's SHA-256 (the plaintext's) with the
    manifest's ``sha256`` (the ciphertext's), which can never match, and reports "Exotel now
    serves other bytes ... than were archived" — false: Exotel serves exactly the
    ``plaintext_sha256`` the manifest recorded. What should happen: the download is checked
    against ``plaintext_sha256``/``plaintext_size``, encrypted afresh to the key, put back
    write-once, and the manifest's repaired event names the new ciphertext (or, if that is not
    to be supported, repair says so truthfully instead of blaming the source)."""
    public, private = write_keys(tmp_path)
    call = sim.add_call(recordings=1, size=30_000)
    env = _env(sim, server, seaweed, bucket, tmp_path, ARCHIVER_ENCRYPT_TO=str(public))
    assert invoke(["archive", call.sid], env).exit_code == 0
    key = recording_key(sim, call.sid, PREFIX)
    seaweed.client().delete_object(Bucket=bucket, Key=key)

    result = invoke(["repair"], env)

    assert "now serves other bytes" not in result.output, result.output[-800:]
    assert result.exit_code == 0, result.output[-800:]
    data = seaweed.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert data.startswith(b"EXARENC1")
    assert decrypt(private, data) == sim.recording_bytes(call.sid, 1)


def test_every_failed_attempt_leaves_one_more_intent_forever(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """An object someone else put at the recording's key: each attempt (every ``archive`` run,
    every retry the worker makes of the failed call, for as long as it keeps trying) seals the
    recording afresh, commits its intent, has its PUT refused as a conflict — and leaves the
    intent in ``encrypted_writes`` for good: intents are dropped only when an encrypted object
    is recorded at the key. The table grows by one row per attempt without bound. A PUT refused
    with If-None-Match stored nothing, so its intent can be dropped when the conflict is
    raised; at most the intents of ciphertexts that may be in the store should remain."""
    public, _private = write_keys(tmp_path)
    call = sim.add_call(recordings=1, size=30_000)
    key = recording_key(sim, call.sid, PREFIX)
    seaweed.client().put_object(Bucket=bucket, Key=key, Body=b"EXARENC1" + b"\0" * 300)
    env = _env(sim, server, seaweed, bucket, tmp_path, ARCHIVER_ENCRYPT_TO=str(public))
    for _ in range(4):
        result = invoke(["archive", call.sid], env)
        assert result.exit_code == 1 and "conflict" in result.output, result.output[-600:]
    assert outcome(tmp_path / "state", call.sid) == "failed"

    intents = _intents(tmp_path / "state")
    assert len(intents) <= 1, f"{len(intents)} intents kept for one refused key: {intents}"


def test_a_plaintext_adoption_leaves_the_intent_of_the_archived_call_behind(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """The recording is at its key unencrypted (stored before --encrypt-to was set): the run
    adopts it and the call is archived — but the intent committed for the ciphertext it sealed
    (and never stored) stays in ``encrypted_writes`` forever: ``add_object`` drops a key's
    intents only when the row it adds is encrypted. The call is done; nothing will ever read or
    drop that row. What should happen: recording the key (encrypted or not) spends its
    intents."""
    public, _private = write_keys(tmp_path)
    call = sim.add_call(recordings=1, size=30_000)
    key = recording_key(sim, call.sid, PREFIX)
    seaweed.client().put_object(Bucket=bucket, Key=key, Body=sim.recording_bytes(call.sid, 1))
    env = _env(sim, server, seaweed, bucket, tmp_path, ARCHIVER_ENCRYPT_TO=str(public))

    result = invoke(["archive", call.sid], env)

    assert result.exit_code == 0, result.output[-600:]
    assert outcome(tmp_path / "state", call.sid) == "archived"
    assert _intents(tmp_path / "state") == []


def test_the_decrypt_command_every_message_points_to_exists() -> None:
    """The worker refuses a private key saying "only exotel-archiver decrypt needs it"; the
    ``--encrypt-to`` help, docs/compliance.md and README name ``exotel-archiver decrypt
    --identity`` as the way to play a recording back, and link docs/encryption.md for the
    format and the key generation. Neither exists: ``decrypt`` is "No such command" and the
    document is missing, so an operator who archived with --encrypt-to has no supported way to
    get a single recording back (the envelope code is there, the command is not)."""
    result = invoke(["decrypt", "--help"], {})
    assert result.exit_code == 0, result.output[-400:]
    assert "--identity" in result.output
    assert (Path(__file__).resolve().parents[1] / "docs" / "encryption.md").is_file()
