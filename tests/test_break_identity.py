"""Adversarial review of destination identity, rebuild and repair (h-break1).

Each test runs the real archiver against the Exotel simulator over HTTP and SeaweedFS, and
fails on the code as landed.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from archiver.archive import sink_for
from archiver.chain import load_chain
from archiver.cli import main
from archiver.config import load_settings
from archiver.manifest import is_event
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env


def cli(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


async def chain_keys_of(env: dict[str, str]) -> set[str]:
    """Every object key the destination's own manifest chain names (no events)."""
    sink = sink_for(load_settings(env=env))
    try:
        chain = await load_chain(sink)
    finally:
        await sink.close()
    assert not chain.problems, chain.problems
    return {str(e["key"]) for e in chain.entries if not is_event(e)}


def chain_keys(env: dict[str, str]) -> set[str]:
    return asyncio.run(chain_keys_of(env))


def test_a_state_directory_restored_from_a_backup_is_refused_not_merged(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    """An operator restores last night's backup of the state directory (or a second host was
    set up with `manifest rebuild`, as the second-writer message suggests, while the first goes
    on). Same archive id as the marker, so `bind` lets it write. Its next seal finds segment 2
    taken, adopts the other writer's segment 2 as its own, and marks its own new entries sealed
    in a segment that does not hold them: reported archived, verify ok, absent from the chain."""
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", state)
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    shutil.copytree(state, tmp_path / "backup")
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0  # seals segment 2
    shutil.rmtree(state)
    shutil.copytree(tmp_path / "backup", state)
    late = sim.add_call()
    result = cli(["archive", late.sid], env)
    if result.exit_code == 0:
        # It reported success: then the destination's chain must name what it archived.
        assert cli(["verify"], env).exit_code == 0
        mine = {k for k in chain_keys(env) if late.sid in k}
        assert mine, f"{late.sid} reported archived, but the destination's chain never names it"
    else:
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output


def test_a_call_that_failed_after_its_call_json_is_not_archived_after_a_rebuild(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    """ARCHIVER_VOICE_LOGS=audio: recording, call.json and voice-log.json stored, then the
    voice-log file cannot be had (here: an HTML page instead of audio) and the call is
    `failed`. A rebuilt ledger counted the call `archived` because call.json (and voice-log.json)
    are in the chain, so `archive SID` answered "already archived" and the voice-log file was
    never archived: a failure turned into a success by the rebuild."""
    state = tmp_path / "state"
    env = {
        **exotel_env(sim, server.base_url, f"s3://{bucket}/a", state),
        "ARCHIVER_VOICE_LOGS": "audio",
    }
    call = sim.add_call()
    sim.faults.recording_script.extend(["none"] + ["html"] * 20)  # the recording, then not
    first = cli(["archive", call.sid], env)
    assert first.exit_code != 0, first.output  # the call failed: its voice-log file is missing
    sim.faults.recording_script.clear()
    shutil.rmtree(state)
    assert cli(["manifest", "rebuild"], env).exit_code == 0
    again = cli(["archive", call.sid], env)
    assert again.exit_code == 0, again.output
    assert "already archived: 0" in again.output and "archived: 1 calls" in again.output
    assert any(f"{call.sid}/voice-log." in k and not k.endswith(".json") for k in chain_keys(env))


def test_a_seal_cut_short_before_the_ledger_recorded_it_is_still_adopted(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    """The guard against a stale state directory must not refuse our own crash: segment 2 put,
    the ledger's commit of it lost. (Holds before and after the fix.)"""
    import sqlite3

    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", state)
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    second = sim.add_call()
    assert cli(["archive", second.sid], env).exit_code == 0
    with sqlite3.connect(state / "ledger.sqlite3") as db:
        db.execute("DELETE FROM segments WHERE number = 2")
        for table in ("objects", "events"):
            db.execute(f"UPDATE {table} SET segment = NULL WHERE segment = 2")
    third = sim.add_call()
    result = cli(["archive", third.sid], env)
    assert result.exit_code == 0, result.output
    keys = chain_keys(env)
    assert any(second.sid in k for k in keys) and any(third.sid in k for k in keys)
    assert cli(["verify"], env).exit_code == 0


async def test_the_loser_of_a_claim_race_can_take_its_own_prefix(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    """Two fresh state directories claim one empty prefix at once; the loser is told to give
    each archive its own prefix. It does — and was refused again: its empty ledger stayed bound
    (unconfirmed) to the prefix it lost, so `bound.location != here`."""
    from archiver.archive import archive_calls
    from archiver.errors import DestinationMismatch

    envs = [
        exotel_env(sim, server.base_url, f"s3://{bucket}/x", tmp_path / f"s{n}") for n in (1, 2)
    ]
    outcomes = await asyncio.gather(
        *(archive_calls(load_settings(env=e), [sim.add_call().sid]) for e in envs),
        return_exceptions=True,
    )
    losers = [e for e, o in zip(envs, outcomes, strict=True) if isinstance(o, BaseException)]
    assert len(losers) == 1 and isinstance(
        next(o for o in outcomes if isinstance(o, BaseException)), DestinationMismatch
    ), outcomes
    own = {**losers[0], "ARCHIVER_DESTINATION": f"s3://{bucket}/y"}
    sid = sim.add_call().sid
    await archive_calls(load_settings(env=own), [sid])
    assert any(sid in k for k in await chain_keys_of(own))


def test_a_claim_that_never_took_does_not_bind_the_state_directory(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    """The first run's marker PUT is refused (here AccessDenied on that prefix: a wrong prefix
    the IAM policy does not allow). Nothing was archived. The operator fixes
    ARCHIVER_DESTINATION — and was refused: "the state directory belongs to the archive in
    s3://…/wrong", an archive that never existed."""
    from tests.s3proxy import FaultyS3Proxy

    with FaultyS3Proxy(seaweed.endpoint) as proxy:
        proxy.fail(
            lambda method, path: method == "PUT" and "wrong/_manifest/destination.json" in path,
            times=1000,
            status=403,
            code="AccessDenied",
        )
        env = {
            **exotel_env(sim, server.base_url, f"s3://{bucket}/wrong", tmp_path / "state"),
            "AWS_ENDPOINT_URL": proxy.endpoint,
        }
        sid = sim.add_call().sid
        first = cli(["archive", sid], env)
        assert first.exit_code != 0, first.output
        assert "Traceback" not in first.output
        fixed = {**env, "ARCHIVER_DESTINATION": f"s3://{bucket}/right"}
        second = cli(["archive", sid], fixed)
        assert second.exit_code == 0, second.output
        assert any(sid in k for k in chain_keys(fixed))


async def test_a_repaired_recording_is_the_version_retention_acts_on(
    sim: Simulator, server: SimulatorServer, s3_env: None, seaweed: Any, tmp_path: Path
) -> None:
    """Object Lock bucket (always versioned). A recording is deleted (a delete marker; the
    archived version stays below it), `repair` puts the recorded bytes back as a new version and
    records that version in a `repaired` event — but the ledger row keeps the first version's
    id, and retention acts on that one. `retention purge` deletes the hidden first version,
    writes an erasure receipt, and the repaired copy stays readable: a false erasure receipt."""
    from datetime import UTC, datetime, timedelta

    from archiver.archive import archive_calls
    from archiver.repair import run_repair
    from archiver.retention.archive import open_retention
    from archiver.retention.jobs import purge
    from archiver.verify import NOT_ERASED, verify
    from tests.test_retention import PREFIX, entries, settings_for

    lock_bucket = f"lock-brk-{datetime.now(UTC):%H%M%S%f}"
    seaweed.client().create_bucket(Bucket=lock_bucket, ObjectLockEnabledForBucket=True)
    expired = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    settings = settings_for(sim, server, tmp_path, lock_bucket)
    await archive_calls(settings, [expired.sid])
    recording = next(e for e in entries(settings, "recording"))
    full = f"{PREFIX}/{recording['key']}"
    client = seaweed.client()
    client.delete_object(Bucket=lock_bucket, Key=full)  # a delete marker over the version
    repaired = await run_repair(settings)
    assert repaired.ok and repaired.count("repaired") == 1, repaired.as_dict()
    async with open_retention(settings, actor="dpo@example") as archive:
        done = await purge(archive, dry_run=False)
    assert not done.failures, done.rows
    left = client.list_object_versions(Bucket=lock_bucket, Prefix=full).get("Versions", [])
    sink = sink_for(settings)
    try:
        checked = await verify(sink, None)
    finally:
        await sink.close()
    not_erased = [c.key for c in checked.checks if c.status == NOT_ERASED]
    assert not left and not not_erased, (
        f"erasure receipt written, yet {full} is still there: {left}, {not_erased}"
    )


def test_repair_puts_back_the_last_segment_of_an_archive_from_before_markers(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    """An upgraded installation (ledger and destination from before markers) whose last manifest
    segment was deleted. `repair` is the documented way back; it was refused (exit 2) as "the
    record of another destination", although the ledger's own locations are this one."""
    import sqlite3

    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", state)
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    client = seaweed.client()
    client.delete_object(Bucket=bucket, Key="a/_manifest/destination.json")
    with sqlite3.connect(state / "ledger.sqlite3") as db:
        db.execute("DELETE FROM worker_state WHERE name LIKE 'destination.%'")
    client.delete_object(Bucket=bucket, Key="a/_manifest/segments/00000002.jsonl")
    result = cli(["repair"], env)
    assert result.exit_code == 0, result.output
    assert "segments put back: 1" in result.output
    assert cli(["verify"], env).exit_code == 0


def test_repair_output_report_and_events_carry_no_secrets(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    """(Holds.) A repair that puts one recording back and cannot fetch another."""
    import json

    from archiver.manifest import read_manifest

    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", state)
    calls = [sim.add_call(), sim.add_call()]
    assert cli(["archive", *[c.sid for c in calls]], env).exit_code == 0
    recs = [e for e in read_manifest(state / "manifest.jsonl") if e.get("kind") == "recording"]
    client = seaweed.client()
    for e in recs:
        client.delete_object(Bucket=bucket, Key=f"a/{e['key']}")
    sim.faults.recording_script.extend(["none"] + ["expired"] * 30)
    report = tmp_path / "repair.json"
    result = cli(["repair", "--report", str(report)], env)
    assert result.exit_code == 1, result.output
    texts = [result.output, report.read_text(), (state / "manifest.jsonl").read_text()]
    for segment in client.list_objects_v2(Bucket=bucket, Prefix="a/_manifest/")["Contents"]:
        texts.append(client.get_object(Bucket=bucket, Key=segment["Key"])["Body"].read().decode())
    for text in texts:
        for secret in (sim.api_token, "X-Amz-Signature", "X-Amz-Credential", seaweed.secret_key):
            assert secret not in text
    done = json.loads(report.read_text())
    assert done["counts"]["repaired"] == 1 and done["counts"]["cannot_repair"] == 1, done
    assert "Traceback" not in result.output


def test_repair_of_an_altered_and_a_missing_recording_in_a_local_directory(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """(Holds.)"""
    import hashlib

    from archiver.manifest import read_manifest

    state, root = tmp_path / "state", tmp_path / "archive"
    env = exotel_env(sim, server.base_url, str(root), state)
    assert cli(["archive", sim.add_call(recordings=2).sid], env).exit_code == 0
    recs = [e for e in read_manifest(state / "manifest.jsonl") if e.get("kind") == "recording"]
    altered, missing = root / recs[0]["key"], root / recs[1]["key"]
    forged = bytearray(altered.read_bytes())
    forged[10] ^= 0xFF
    altered.chmod(0o644)
    altered.write_bytes(bytes(forged))
    missing.unlink()
    result = cli(["repair"], env)
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(altered.read_bytes()).hexdigest() == recs[0]["sha256"]
    assert hashlib.sha256(missing.read_bytes()).hexdigest() == recs[1]["sha256"]
    aside = list((root / "_manifest" / "quarantine").rglob("*"))
    assert any(p.is_file() and p.read_bytes() == bytes(forged) for p in aside)
    assert cli(["verify"], env).exit_code == 0
    assert cli(["repair"], env).exit_code == 0


def test_repair_in_a_versioned_bucket_keeps_the_archived_version(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    """(Holds.) Another version written over the archived one: repair removes only that."""
    from archiver.manifest import read_manifest

    client = seaweed.client()
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", state)
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    rec = next(e for e in read_manifest(state / "manifest.jsonl") if e.get("kind") == "recording")
    full = f"a/{rec['key']}"
    original = client.get_object(Bucket=bucket, Key=full)["Body"].read()
    client.put_object(Bucket=bucket, Key=full, Body=original[:-1] + b"\x00")
    result = cli(["repair"], env)
    assert result.exit_code == 0, result.output
    versions = client.list_object_versions(Bucket=bucket, Prefix=full).get("Versions", [])
    assert [v["VersionId"] for v in versions] == [rec["version_id"]], versions
    assert cli(["verify"], env).exit_code == 0


def test_repair_then_rebuild_then_archive_and_verify(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    """(Holds.) A chain with a `repaired` event is rebuilt; nothing is fetched twice."""
    from archiver.manifest import read_manifest

    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", state)
    call = sim.add_call()
    assert cli(["archive", call.sid], env).exit_code == 0
    rec = next(e for e in read_manifest(state / "manifest.jsonl") if e.get("kind") == "recording")
    seaweed.client().delete_object(Bucket=bucket, Key=f"a/{rec['key']}")
    assert cli(["repair"], env).exit_code == 0
    assert cli(["repair"], env).exit_code == 0
    assert cli(["verify"], env).exit_code == 0
    shutil.rmtree(state)
    assert cli(["manifest", "rebuild"], env).exit_code == 0
    before = sim.counters.get("api_requests", 0)
    again = cli(["archive", call.sid], env)
    assert again.exit_code == 0 and "already archived: 1" in again.output, again.output
    assert sim.counters.get("api_requests", 0) == before
    assert cli(["verify"], env).exit_code == 0
    assert cli(["repair"], env).exit_code == 0


async def test_two_claims_racing_without_conditional_writes_lose_nothing(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    """ARCHIVER_S3_CONDITIONAL_WRITES=off (stat, then PUT): both writers' marker PUTs
    "succeeded", the second overwrote the first, both went on, and the first's segment 1 was
    adopted by the second: both runs reported success, one call is in no chain."""
    from archiver.archive import archive_calls

    envs = [
        {
            **exotel_env(sim, server.base_url, f"s3://{bucket}/x", tmp_path / f"s{n}"),
            "ARCHIVER_S3_CONDITIONAL_WRITES": "off",
        }
        for n in (1, 2)
    ]
    sids = [sim.add_call().sid for _ in envs]
    outcomes = await asyncio.gather(
        *(archive_calls(load_settings(env=e), [s]) for e, s in zip(envs, sids, strict=True)),
        return_exceptions=True,
    )
    keys = await chain_keys_of(envs[0])
    for sid, outcome in zip(sids, outcomes, strict=True):
        if not isinstance(outcome, BaseException):
            assert any(sid in k for k in keys), f"{sid} reported archived, in no chain"


def test_a_replaced_marker_is_put_back_by_repair(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    """Someone with write access replaces _manifest/destination.json with a valid marker of
    another archive id. Every command now refuses (exit 2) and points at `manifest rebuild`
    (refused: the ledger is not empty) or another prefix; `repair` refuses as well, although the
    ledger recorded the marker's bytes and the destination still holds this ledger's chain."""
    import json

    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", state)
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    client = seaweed.client()
    key = "a/_manifest/destination.json"
    original = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    forged = json.loads(original)
    forged["archive_id"] = "0" * 32
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(forged).encode())
    assert cli(["archive", sim.add_call().sid], env).exit_code == 2
    result = cli(["repair"], env)
    assert result.exit_code == 0, result.output
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == original
