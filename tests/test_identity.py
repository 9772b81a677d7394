"""A state directory belongs to one destination, and a destination to one archive.

Issue 13, item 1 and the multi-writer half of item 2: a changed ``ARCHIVER_DESTINATION`` on a kept
state directory, a fresh state directory pointed at a destination that already holds a chain, and
two state directories writing into one destination. Each must stop before any API request (exit
2, naming both places and the fix), and nothing may be reported archived that is not in the
destination being written. Everything is checked on the bucket itself.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from archiver.archive import archive_calls
from archiver.cli import main
from archiver.config import load_settings
from archiver.errors import DestinationMismatch
from archiver.identity import MARKER_KEY
from archiver.ledger import Ledger
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env


def keys_in(seaweed: Any, bucket: str, prefix: str = "") -> list[str]:
    answer = seaweed.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in answer.get("Contents", []))


def forget_destination(state: Path) -> None:
    """Make the ledger one from before destination markers."""
    with sqlite3.connect(state / "ledger.sqlite3") as db:
        db.execute("DELETE FROM worker_state WHERE name LIKE 'destination.%'")


def cli(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def sim_requests(sim: Simulator) -> int:
    return int(sim.counters.get("api_requests", 0))


def test_a_first_run_writes_the_marker_and_binds_the_ledger(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", tmp_path / "state")
    result = cli(["archive", sim.add_call().sid], env)
    assert result.exit_code == 0, result.output
    body = seaweed.client().get_object(Bucket=bucket, Key=f"a/{MARKER_KEY}")["Body"].read()
    marker = json.loads(body)
    assert marker["type"] == "exotel-archiver-destination"
    assert marker["account_sid"] == sim.account_sid
    assert len(marker["archive_id"]) == 32
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    try:
        assert ledger.state("destination.archive_id") == marker["archive_id"]
        assert ledger.state("destination.location") == f"s3://{bucket}/a"
    finally:
        ledger.close()


@pytest.mark.parametrize("second", ["other-prefix", "other-bucket", "local-directory"])
def test_a_kept_state_directory_refuses_a_changed_destination(
    second: str,
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    tmp_path: Path,
    seaweed: Any,
) -> None:
    state = tmp_path / "state"
    first = exotel_env(sim, server.base_url, f"s3://{bucket}/a", state)
    sids = [sim.add_call().sid for _ in range(2)]
    assert cli(["archive", *sids], first).exit_code == 0
    if second == "other-prefix":
        destination = f"s3://{bucket}/b"
    elif second == "other-bucket":
        other = f"{bucket}-other"
        seaweed.client().create_bucket(Bucket=other)
        destination = f"s3://{other}/a"
    else:
        destination = str(tmp_path / "local-archive")
    env = {**first, "ARCHIVER_DESTINATION": destination}
    before = sim_requests(sim)
    for args in (
        ["archive", *sids],
        ["backfill", "--since", "2026-11-30", "--until", "2026-11-30"],
    ):
        result = cli(args, env)
        assert result.exit_code == 2, result.output
        assert "already archived" not in result.output
        assert f"s3://{bucket}/a" in result.output and destination in result.output
        assert "--state-dir" in result.output and "manifest rebuild" in result.output
        assert "Traceback" not in result.output
    assert sim_requests(sim) == before, "no API request may be spent before the refusal"
    if second == "other-prefix":
        assert keys_in(seaweed, bucket, "b/") == []
    elif second == "local-directory":
        assert not any(p.is_file() for p in (tmp_path / "local-archive").rglob("*"))
    # The first destination is still intact and still works with its own state directory.
    assert cli(["verify"], first).exit_code == 0


def test_a_fresh_state_directory_refuses_a_destination_that_holds_a_chain(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    first = exotel_env(sim, server.base_url, f"s3://{bucket}/a", tmp_path / "state-1")
    old = sim.add_call().sid
    assert cli(["archive", old], first).exit_code == 0
    segments = keys_in(seaweed, bucket, "a/_manifest/segments/")
    fresh = {**first, "ARCHIVER_STATE_DIR": str(tmp_path / "state-2")}
    before = sim_requests(sim)
    result = cli(["archive", old, sim.add_call().sid], fresh)
    assert result.exit_code == 2, result.output
    assert "manifest rebuild" in result.output and str(tmp_path / "state-2") in result.output
    assert sim_requests(sim) == before
    assert keys_in(seaweed, bucket, "a/_manifest/segments/") == segments
    # The way back: adopt the destination's chain, then go on; the old call is not fetched again.
    assert cli(["manifest", "rebuild"], fresh).exit_code == 0
    new = sim.add_call().sid
    before = sim_requests(sim)
    result = cli(["archive", old, new], fresh)
    assert result.exit_code == 0, result.output
    assert sim_requests(sim) == before + 1, "the old call is archived already: no request"
    assert len(keys_in(seaweed, bucket, "a/_manifest/segments/")) == len(segments) + 1
    assert cli(["verify"], fresh).exit_code == 0


def test_two_state_directories_on_one_destination_the_second_is_refused(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    """Two hosts (or two accounts of the per-account template) on one bucket and prefix."""
    one = exotel_env(sim, server.base_url, f"s3://{bucket}/shared", tmp_path / "host-1")
    two = {**one, "ARCHIVER_STATE_DIR": str(tmp_path / "host-2")}
    assert cli(["archive", sim.add_call().sid], one).exit_code == 0
    result = cli(["archive", sim.add_call().sid], two)
    assert result.exit_code == 2, result.output
    assert "belongs to another archive" in result.output
    assert "its own prefix" in result.output
    assert len(keys_in(seaweed, bucket, "shared/_manifest/segments/")) == 1
    assert cli(["verify"], one).exit_code == 0


async def test_two_fresh_writers_racing_for_one_empty_destination(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    """Both claim it at once: the store's write-once marker lets exactly one win."""
    import asyncio

    envs = [
        exotel_env(sim, server.base_url, f"s3://{bucket}/x", tmp_path / f"s{n}") for n in (1, 2)
    ]
    outcomes = await asyncio.gather(
        *(archive_calls(load_settings(env=e), [sim.add_call().sid]) for e in envs),
        return_exceptions=True,
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], DestinationMismatch), outcomes


def test_a_wiped_destination_is_not_taken_for_the_bound_one(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    """Same bucket and prefix, but emptied (or another store behind the same name)."""
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", tmp_path / "state")
    sid = sim.add_call().sid
    assert cli(["archive", sid], env).exit_code == 0
    client = seaweed.client()
    for key in keys_in(seaweed, bucket):
        client.delete_object(Bucket=bucket, Key=key)
    before = sim_requests(sim)
    result = cli(["archive", sim.add_call().sid], env)
    assert result.exit_code == 2, result.output
    assert "identity marker" in result.output and "repair" in result.output
    assert sim_requests(sim) == before
    assert keys_in(seaweed, bucket) == []


def test_a_ledger_from_before_markers_is_bound_when_its_records_are_there(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    """An upgrade: a ledger and a destination written before identity markers existed."""
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", tmp_path / "state")
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    seaweed.client().delete_object(Bucket=bucket, Key=f"a/{MARKER_KEY}")
    forget_destination(tmp_path / "state")
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    assert f"a/{MARKER_KEY}" in keys_in(seaweed, bucket)
    # ... but not into another destination.
    forget_destination(tmp_path / "state")
    result = cli(
        ["archive", sim.add_call().sid], {**env, "ARCHIVER_DESTINATION": f"s3://{bucket}/c"}
    )
    assert result.exit_code == 2, result.output
    assert keys_in(seaweed, bucket, "c/") == []


def test_a_dry_run_refuses_too_and_writes_nothing(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", tmp_path / "state")
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    moved = {**env, "ARCHIVER_DESTINATION": f"s3://{bucket}/b"}
    before = sim_requests(sim)
    result = cli(["backfill", "--since", "2026-11-30", "--until", "2026-11-30", "--dry-run"], moved)
    assert result.exit_code == 2, result.output
    assert sim_requests(sim) == before
    assert keys_in(seaweed, bucket, "b/") == []


def test_a_fresh_dry_run_claims_nothing(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", tmp_path / "state")
    result = cli(["backfill", "--since", "2026-11-30", "--until", "2026-11-30", "--dry-run"], env)
    assert result.exit_code == 0, result.output
    assert keys_in(seaweed, bucket) == []


def test_after_a_rebuild_plan_and_result_agree_on_what_is_archived(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    """Issue 13, item 8: a rebuilt ledger said `already archived: 0, to archive: N`, then the
    run reported `archived: N` having stored nothing."""
    import shutil
    from datetime import datetime, timedelta

    from archiver.exotel.models import IST

    day = datetime.now(IST).date() - timedelta(days=2)
    calls = sim.populate(12, day=day, sizes=(2000, 6000))
    with_audio = {c.sid for c in calls if c.recordings}
    state = tmp_path / "state"
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", state)
    args = ["backfill", "--since", str(day), "--until", str(day)]
    assert cli(args, env).exit_code == 0
    shutil.rmtree(state)
    assert cli(["manifest", "rebuild"], env).exit_code == 0
    plan_file = tmp_path / "plan.json"
    dry = cli([*args, "--dry-run", "--report", str(plan_file)], env)
    assert dry.exit_code == 0, dry.output
    plan = json.loads(plan_file.read_text())["plan"]
    assert plan["already_archived"] == len(with_audio) and plan["to_archive"] == 0, plan
    details_before = sim.counters.get("v3_call_details", 0)
    real = cli(args, env)
    assert real.exit_code == 0, real.output
    assert sim.counters.get("v3_call_details", 0) == details_before


def test_verify_and_reconcile_refuse_a_ledger_of_another_destination(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    """The ledger would be compared with a destination it never wrote: a false report."""
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", tmp_path / "state")
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    moved = {**env, "ARCHIVER_DESTINATION": f"s3://{bucket}/b"}
    before = sim_requests(sim)
    for args in (["verify"], ["reconcile", "--since", "2026-11-30", "--until", "2026-12-01"]):
        result = cli(args, moved)
        assert result.exit_code == 2, (args, result.output)
        assert f"s3://{bucket}/a" in result.output and f"s3://{bucket}/b" in result.output
    assert sim_requests(sim) == before
    # Without a ledger, verify checks any destination from its own chain (an auditor's view).
    auditor = {**env, "ARCHIVER_STATE_DIR": str(tmp_path / "auditor")}
    assert cli(["verify"], auditor).exit_code == 0


def test_verify_names_a_lost_marker_and_repair_puts_it_back(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/a", tmp_path / "state")
    assert cli(["archive", sim.add_call().sid], env).exit_code == 0
    seaweed.client().delete_object(Bucket=bucket, Key=f"a/{MARKER_KEY}")
    result = cli(["verify"], env)
    assert result.exit_code == 1 and "identity marker" in result.output, result.output
    assert cli(["repair"], env).exit_code == 0
    assert cli(["verify"], env).exit_code == 0


def test_from_a_local_directory_to_a_bucket_and_back(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path, seaweed: Any
) -> None:
    """The other way round: tried with a local directory first, then the bucket configured."""
    state = tmp_path / "state"
    local = exotel_env(sim, server.base_url, str(tmp_path / "trial"), state)
    sids = [sim.add_call().sid for _ in range(2)]
    assert cli(["archive", *sids], local).exit_code == 0
    s3 = {**local, "ARCHIVER_DESTINATION": f"s3://{bucket}/prod"}
    result = cli(["archive", *sids], s3)
    assert result.exit_code == 2 and str(tmp_path / "trial") in result.output, result.output
    assert keys_in(seaweed, bucket) == []
    # The fix the message names: a state directory of its own for the bucket.
    prod = {**s3, "ARCHIVER_STATE_DIR": str(tmp_path / "state-prod")}
    result = cli(["archive", *sids], prod)
    assert result.exit_code == 0 and "archived: 2" in result.output, result.output
    stored = [k for k in keys_in(seaweed, bucket, "prod/") if "/recording-" in k]
    assert len(stored) == 2  # every call reported archived is in the bucket
    assert cli(["verify"], prod).exit_code == 0 and cli(["verify"], local).exit_code == 0


class _SealsFirst:
    """A real sink whose first HEAD of ``key`` lets the worker seal first: the moment a check
    beside a running worker (a dry run, a retention job) looks after the ledger's last segment
    while the worker seals it."""

    def __init__(self, inner: Any, key: str, ledger: Ledger) -> None:
        self._inner, self._key, self._ledger, self.sealed = inner, key, ledger, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def stat(self, key: str) -> Any:
        if key.endswith(self._key) and not self.sealed:
            from archiver.segments import seal

            self.sealed = True
            await seal(self._ledger, self._inner)
        return await self._inner.stat(key)


async def test_a_check_beside_a_worker_that_seals_is_not_a_false_refusal(
    sim: Simulator, server: SimulatorServer, s3_env: None, bucket: str, tmp_path: Path
) -> None:
    from archiver.archive import sink_for
    from archiver.identity import check_destination
    from archiver.ledger import ObjectRecord
    from archiver.segments import segment_key

    settings = load_settings(
        env=exotel_env(sim, server.base_url, f"s3://{bucket}/a", tmp_path / "state")
    )
    await archive_calls(settings, [sim.add_call().sid])
    worker = Ledger(settings.state_dir / "ledger.sqlite3")
    [row] = [r for r in worker.all_objects() if r.kind == "recording"]
    worker.add_object(
        ObjectRecord(
            **{**row.__dict__, "seq": None, "segment": None, "key": row.key + ".x", "idx": 9}
        )
    )
    sink = _SealsFirst(sink_for(settings), segment_key(2), worker)
    try:
        await check_destination(settings, sink)  # type: ignore[arg-type]
    finally:
        worker.close()
        await sink.close()
    assert sink.sealed
