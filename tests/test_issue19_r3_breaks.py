"""Breaker B-R3 (issue 19, third round): the second round's fixes and the one encryption
thread, attacked.

Each test reproduces one problem against real parts (SeaweedFS, the Exotel simulator over
HTTP, the CLI as a user runs it) and fails until it is fixed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from archiver.errors import DecryptionError
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import decrypt, exotel_env, invoke, write_keys

PREFIX = "r3"


def _day() -> Any:
    return (datetime.now(IST) - timedelta(days=3)).date()


def _env(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    state: Path,
    **extra: str,
) -> dict[str, str]:
    return {
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", state),
        "AWS_CONFIG_FILE": str(state.parent / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(state.parent / "no-aws-credentials"),
        **extra,
    }


def _stored(seaweed: SeaweedFS, bucket: str, key: str) -> bytes:
    return bytes(seaweed.client().get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")["Body"].read())


def _overwrite(seaweed: SeaweedFS, bucket: str, key: str, data: bytes, at: int) -> None:
    forged = bytearray(data)
    forged[at] ^= 0x01
    seaweed.client().put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=bytes(forged))


# --- repair in a versioned bucket ------------------------------------------------------------


def test_repair_stops_at_a_key_overwritten_twice_and_leaves_the_rest_unrepaired(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """A versioned bucket, two encrypted recordings damaged. The first (in the chain's order)
    was overwritten twice (the recorded ciphertext, then a forged version of the same size,
    then another): repair sets the current one aside, finds the forged one current now (not the
    recorded bytes, rightly not taken), and puts a fresh ciphertext write-once — refused
    (If-None-Match), StorageConflict — which is not caught per object: the whole repair aborts
    with "conflict ... investigate before archiving this call" (exit 1). The second recording,
    simply overwritten once and repairable, is never looked at, and nothing says so.

    Should: the first is reported (CANNOT, "another version is current now: ...", or set aside
    again until the recorded version is current), and the repair goes on to the second, which
    ends REPAIRED — one bad key does not leave every later one damaged."""
    public, private = write_keys(tmp_path)
    seaweed.client().put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    env = _env(sim, server, seaweed, bucket, tmp_path / "state", ARCHIVER_ENCRYPT_TO=str(public))
    day = _day()
    start = datetime(day.year, day.month, day.day, 10, tzinfo=IST)
    for minute in (0, 5):
        sim.add_call(recordings=1, size=30_000, created=start + timedelta(minutes=minute))
    done = invoke(["backfill", "--since", str(day), "--until", str(day)], env)
    assert done.exit_code == 0, done.output
    entries = read_manifest(tmp_path / "state" / "manifest.jsonl")
    first, second = [e for e in entries if e["kind"] == "recording"]  # the chain's order
    original = _stored(seaweed, bucket, first["key"])
    _overwrite(seaweed, bucket, first["key"], original, -7)  # the forged version, same size
    _overwrite(seaweed, bucket, first["key"], original, -5)  # and another over it
    _overwrite(seaweed, bucket, second["key"], _stored(seaweed, bucket, second["key"]), -5)
    assert invoke(["verify"], env).exit_code == 1

    result = invoke(["repair"], env)

    source = bytes(sim.recording_bytes(second["call_sid"], second["index"]))
    try:
        repaired = decrypt(private, _stored(seaweed, bucket, second["key"])) == source
    except DecryptionError:  # still the altered ciphertext
        repaired = False
    assert repaired, (
        f"the second recording was left altered; repair exit {result.exit_code}: "
        f"{result.output[-700:]}"
    )


# --- an SSE refusal for what is not the recording at all ------------------------------------


def test_a_stranger_at_the_key_is_called_ours_but_for_its_sse_and_the_copy_fixes_nothing(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """``encryption.adopt`` refuses an object stored without the server-side encryption asked
    (``Found.refuse``) before it asks whether the object is this recording at all. So a
    stranger's object at a recording's key — 5,003 bytes of zeros, neither any ciphertext this
    worker recorded an intent for nor the plaintext (the recording is 30,000 bytes) — is
    reported as "already stored, but not with the server-side encryption asked ... Copy it onto
    itself with the encryption asked ...; its call is archived by the next run". The operator
    does exactly that: the stranger is now kept encrypted at rest, blessed by the remedy, and
    the next run calls it what it was all along, a conflict ("other content").

    Should: an object that is not this recording (no intent's SHA-256/size, not the
    plaintext's) is a conflict at once, whatever its encryption at rest; the SSE remedy is
    offered only for an object that would be adopted once copied."""
    public, _private = write_keys(tmp_path)
    env = _env(
        sim,
        server,
        seaweed,
        bucket,
        tmp_path / "state",
        ARCHIVER_ENCRYPT_TO=str(public),
        ARCHIVER_SSE="aes256",
    )
    call = sim.add_call(recordings=1, size=30_000)
    created = sim.calls[call.sid].created.astimezone(IST)
    key = f"{PREFIX}/{created:%Y/%m/%d}/{call.sid}/recording-1.mp3"
    seaweed.client().put_object(Bucket=bucket, Key=key, Body=b"ID3" + bytes(5000))

    result = invoke(["archive", call.sid], env)

    assert result.exit_code == 1
    assert "Copy it onto itself" not in result.output, (
        "a 5,003-byte stranger at a 30,000-byte recording's key is refused only for its "
        f"server-side encryption, with the copy-onto-itself remedy: {result.output[-700:]}"
    )
