"""Breaker B-R2 (issue 19, second round): the fixes of B-SSE, B-CSE and B-DEC, attacked.

Each test reproduces one problem against real parts (SeaweedFS, the Exotel simulator over
HTTP, the CLI as a user runs it) and fails until it is fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver.envelope import Recipient
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import decrypt, exotel_env, invoke, ledger_rows, write_keys

PREFIX = "r2"


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


def _backfill(sim: Simulator, env: dict[str, str], recordings: int = 1) -> list[dict[str, Any]]:
    """One call on a settled day, backfilled with ``env``; its recording entries."""
    day = _day()
    sim.add_call(
        recordings=recordings,
        size=30_000,
        created=datetime(day.year, day.month, day.day, 10, tzinfo=IST),
    )
    done = invoke(["backfill", "--since", str(day), "--until", str(day)], env)
    assert done.exit_code == 0, done.output
    entries = read_manifest(Path(env["ARCHIVER_STATE_DIR"]) / "manifest.jsonl")
    return [e for e in entries if e["kind"] == "recording"]


def _stored(seaweed: SeaweedFS, bucket: str, key: str) -> bytes:
    return bytes(seaweed.client().get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")["Body"].read())


def _head(seaweed: SeaweedFS, bucket: str, key: str) -> dict[str, Any]:
    return dict(seaweed.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{key}"))


def _repaired(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["ARCHIVER_STATE_DIR"]) / "manifest.jsonl"
    return [e for e in read_manifest(path) if e.get("kind") == "repaired"]


async def _put_as_a_repair_would(env: dict[str, str], public: Path, key: str, source: bytes) -> Any:
    """A repair's ciphertext of ``source`` under ``env``'s settings: its intent committed and
    stored at ``key`` — then "killed" before its event."""
    from archiver.archive import sink_for
    from archiver.config import load_settings
    from archiver.encryption import STORED_TYPE, Encryption
    from archiver.group_commit import GroupCommit
    from archiver.ledger import Ledger

    settings = load_settings(env=env)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    writes = GroupCommit(ledger)
    sink = sink_for(settings)
    sha = hashlib.sha256(source).hexdigest()
    try:
        encryption = Encryption(Recipient.from_file(public), writes, settings.state_dir)
        async with encryption.seal(key, io.BytesIO(source), size=len(source), sha256=sha) as s:
            put = await sink.put(
                key, s.file, size=s.size, sha256=s.sha256, content_type=STORED_TYPE
            )
            assert put.created
        return s
    finally:
        writes.close()
        ledger.close()
        await sink.close()


# --- intents under the SSE refusal -------------------------------------------------------------


def test_intents_pile_up_again_while_the_sse_refusal_stands(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """B-CSE's fix drops a key's intents "once another object holds the key", so that failed
    retries do not pile them up. B-SSE's fix made ``proven_sha256`` raise StorageConflict for
    an object stored with other server-side encryption — before ``encryption.adopt`` gets to
    that drop. So while such an object stands (the documented state until someone copies it
    onto itself), every attempt at the call — each run, each retry the worker makes of the
    failed call — seals the recording afresh, commits one more intent, is refused, and keeps
    it: the table grows by one row per attempt without bound, the very leak B-CSE's fix
    closed.

    Here a first run (--sse none) stored the ciphertext and was killed before its row; the
    archive then runs with --sse aes256, four times. Should: at most the intent of the
    ciphertext that is in the store stays (the one the copy-onto-itself remedy adopts)."""
    public, _private = write_keys(tmp_path)
    state = tmp_path / "state"
    env = _env(
        sim, server, seaweed, bucket, state, ARCHIVER_ENCRYPT_TO=str(public), ARCHIVER_SSE="aes256"
    )
    call = sim.add_call(recordings=1, size=30_000)
    created = sim.calls[call.sid].created.astimezone(IST)
    key = f"{created:%Y/%m/%d}/{call.sid}/recording-1.mp3"
    state.mkdir(parents=True)
    without = {k: v for k, v in env.items() if k != "ARCHIVER_SSE"}
    source = bytes(sim.recording_bytes(call.sid, 1))
    asyncio.run(_put_as_a_repair_would(without, public, key, source))
    assert _head(seaweed, bucket, key).get("ServerSideEncryption") is None

    for _ in range(4):
        result = invoke(["archive", call.sid], env)
        assert result.exit_code == 1 and "server-side encryption" in result.output, result.output[
            -600:
        ]

    intents = ledger_rows(state, "SELECT key, sha256 FROM encrypted_writes")
    assert len(intents) <= 1, f"{len(intents)} intents kept for one refused key: {intents}"


# --- repair's own adoption (_adopt_own) -----------------------------------------------------


def test_repair_records_its_earlier_ciphertext_stored_without_the_sse_asked(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """B-SSE's fix: "an object found at its key is adopted only if the store keeps it with the
    encryption asked" — every adoption path asks ``Sink.encryption_problem`` first. Repair's
    own adoption, ``repair._adopt_own`` (an earlier repair cut off after its PUT: its intent is
    in the ledger, its event is not), does not: it stats the object and records it as
    repaired, whatever the store reports about its encryption at rest.

    Here the archive asks --sse aes256; a repair run once without it (ARCHIVER_SSE unset by
    mistake) put the recording back and was killed before its event. The next repair, with
    --sse aes256, records that unencrypted-at-rest object as repaired, exit 0, verify passes:
    the recording now sits in the bucket without the server-side encryption the archive
    promises, and nothing says so. Should: refused like every other adoption (the object kept,
    the repair reporting it cannot adopt it; exit 1), not recorded."""
    public, _private = write_keys(tmp_path)
    state = tmp_path / "state"
    env = _env(
        sim, server, seaweed, bucket, state, ARCHIVER_ENCRYPT_TO=str(public), ARCHIVER_SSE="aes256"
    )
    [lost] = _backfill(sim, env)
    assert _head(seaweed, bucket, lost["key"]).get("ServerSideEncryption") == "AES256"
    seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{lost['key']}")
    source = bytes(sim.recording_bytes(lost["call_sid"], lost["index"]))
    without = {k: v for k, v in env.items() if k != "ARCHIVER_SSE"}
    asyncio.run(_put_as_a_repair_would(without, public, lost["key"], source))
    assert _head(seaweed, bucket, lost["key"]).get("ServerSideEncryption") is None

    result = invoke(["repair"], env)

    assert _head(seaweed, bucket, lost["key"]).get("ServerSideEncryption") is None  # kept
    events = _repaired(env)
    assert result.exit_code != 0 and events == [], (
        f"repair --sse aes256 recorded {lost['key']}, stored without server-side encryption, "
        f"as repaired (exit {result.exit_code}): {events}"
    )


def test_a_repaired_recording_leaves_its_intent_behind_forever(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """B-CSE's fix: "intents are spent once the key is recorded" — but only ``add_object``
    spends them. A repair of an encrypted recording commits an intent for the fresh
    ciphertext, stores it, records a ``repaired`` *event* (``add_event``), and leaves the
    intent in ``encrypted_writes`` for good: nothing ever reads or drops it again (the object
    row exists; the next repair of that key commits one more). The same leak B-CSE found for a
    plaintext adoption, through repair. Should: the repaired event spends the key's
    intents."""
    public, _private = write_keys(tmp_path)
    state = tmp_path / "state"
    env = _env(sim, server, seaweed, bucket, state, ARCHIVER_ENCRYPT_TO=str(public))
    [lost] = _backfill(sim, env)
    assert ledger_rows(state, "SELECT key FROM encrypted_writes") == []
    for _ in range(2):
        seaweed.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{lost['key']}")
        result = invoke(["repair"], env)
        assert result.exit_code == 0, result.output
    assert len(_repaired(env)) == 2
    assert invoke(["verify"], env).exit_code == 0

    intents = ledger_rows(state, "SELECT key, sha256 FROM encrypted_writes")
    assert intents == [], f"{len(intents)} intents kept after two completed repairs: {intents}"


# --- repair in a versioned bucket ------------------------------------------------------------


def test_repair_of_an_overwritten_encrypted_recording_in_a_versioned_bucket_fails(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
) -> None:
    """A versioned bucket (every Object Lock bucket is one). Someone overwrites an encrypted
    recording: the forged bytes are the current version, the archived ciphertext a noncurrent
    one. ``repair`` sets the forged version aside and deletes it — so the archived ciphertext is
    current again, exactly the entry's bytes — then puts a *fresh* ciphertext write-once:
    refused (If-None-Match), and the object there is not this ciphertext: StorageConflict.
    For a plaintext recording the same put adopts the recorded bytes; for an encrypted one
    repair fails on an archive that is, after its own delete, intact.

    Should: the repair notices the key holds the recorded ciphertext again (or adopts it
    through the intent/entry) and ends with exit 0 and a verify that passes."""
    public, private = write_keys(tmp_path)
    seaweed.client().put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    state = tmp_path / "state"
    env = _env(sim, server, seaweed, bucket, state, ARCHIVER_ENCRYPT_TO=str(public))
    [target] = _backfill(sim, env)
    original = _stored(seaweed, bucket, target["key"])
    forged = bytearray(original)
    forged[-5] ^= 0x01
    seaweed.client().put_object(Bucket=bucket, Key=f"{PREFIX}/{target['key']}", Body=bytes(forged))
    assert invoke(["verify"], env).exit_code == 1

    result = invoke(["repair"], env)

    source = bytes(sim.recording_bytes(target["call_sid"], target["index"]))
    assert decrypt(private, _stored(seaweed, bucket, target["key"])) == source
    verified = invoke(["verify"], env)
    assert result.exit_code == 0 and verified.exit_code == 0, (
        f"repair exit {result.exit_code}: {result.output[-900:]}\nverify exit "
        f"{verified.exit_code}: {verified.output[-400:]}"
    )


# --- the run-to-run encrypted_to warning ----------------------------------------------------


def test_a_repair_without_encrypt_to_silences_the_next_runs_warning(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """3beb994: "a run warns when it does not encrypt to the key the run before encrypted to".
    The state it compares with (``worker_state.encrypted_to``) is written by every
    ``Archiver`` — and ``repair`` makes one (to fetch recordings again) whenever something is
    damaged. A repair run without --encrypt-to (a lost call.json: a snapshot, no key needed)
    prints the warning as if the *worker* had dropped the key ("this one stores them
    UNENCRYPTED", though repair archives nothing new) and sets the state to "none". The next
    archive run that really dropped --encrypt-to (a config change gone wrong) then stores
    recordings unencrypted with no warning at all.

    Should: only archiving runs (run, backfill, archive, rescue) move that state; a repair
    leaves it, so the next archive run without --encrypt-to still warns."""
    public, _private = write_keys(tmp_path)
    state = tmp_path / "state"
    env = _env(sim, server, seaweed, bucket, state, ARCHIVER_ENCRYPT_TO=str(public))
    [first] = _backfill(sim, env)
    call_json = f"{PREFIX}/{first['key'].rsplit('/', 1)[0]}/call.json"
    seaweed.client().delete_object(Bucket=bucket, Key=call_json)
    plain = {k: v for k, v in env.items() if k != "ARCHIVER_ENCRYPT_TO"}
    invoke(["repair"], plain)  # exit 1: a snapshot cannot be fetched again; fine

    later = sim.add_call(recordings=1, size=20_000)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="archiver"):
        result = invoke(["archive", later.sid], plain)
    assert result.exit_code == 0, result.output
    warned = [r.getMessage() for r in caplog.records if "UNENCRYPTED" in r.getMessage()]
    assert warned, (
        "the first archive run without --encrypt-to after runs that encrypted to "
        f"{Recipient.from_file(public).fingerprint} stored {later.sid} unencrypted without the "
        "warning: a repair in between reset the state"
    )


# --- decrypt --out onto the archive itself ---------------------------------------------------


def test_decrypt_out_into_a_local_destination_replaces_the_archived_ciphertext(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """B-DEC's round refused ``--output`` equal to ``--input`` ("the encrypted object would be
    replaced by its plaintext"). The same happens, unrefused, with ``--out`` and a local
    directory destination: OUT/KEY is the archived object's own path when OUT is the
    destination (or ``decrypt --out .`` run inside it). ``decrypt --call SID --out DEST``
    renames each restored plaintext over the stored ciphertext: exit 0 ("restored and
    checked"), and the archive has lost the ciphertext for good — verify now calls it altered,
    and the recording sits unencrypted in the archive the worker encrypted it for.

    Should: refused before anything is written (exit 2), like --output == --input: OUT/KEY
    must never be a place of the destination."""
    public, private = write_keys(tmp_path)
    dest = tmp_path / "archive"
    state = tmp_path / "state"
    env = {
        **exotel_env(sim, server.base_url, str(dest), state),
        "ARCHIVER_ENCRYPT_TO": str(public),
    }
    call = sim.add_call(recordings=1, size=30_000)
    done = invoke(["archive", call.sid], env)
    assert done.exit_code == 0, done.output
    [entry] = [e for e in read_manifest(state / "manifest.jsonl") if e["kind"] == "recording"]
    stored = dest / entry["key"]
    ciphertext = stored.read_bytes()
    assert ciphertext.startswith(b"EXARENC1")

    result = invoke(
        ["decrypt", "--identity", str(private), "--call", call.sid, "--out", str(dest)], env
    )

    now = stored.read_bytes()
    verified = invoke(["verify"], env)
    assert now == ciphertext and result.exit_code == 2, (
        f"decrypt --out {dest} (the destination) exit {result.exit_code}: the stored object is "
        f"now {'its plaintext' if not now.startswith(b'EXARENC1') else 'changed'}; verify "
        f"exit {verified.exit_code}: {verified.output[-300:]}"
    )
