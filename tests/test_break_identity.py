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
from archiver.cli import main
from archiver.config import load_settings
from archiver.manifest import is_event
from archiver.simulator import Simulator, SimulatorServer
from archiver.verify import load_chain
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
        [o for o in outcomes if isinstance(o, BaseException)][0], DestinationMismatch
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
