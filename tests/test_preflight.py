"""Look before you leap: every check that needs no Exotel request runs first — in a dry run too
— and a problem stops the command with exit 2 and one clean line before any API request.

Each case runs ``backfill --dry-run``, ``backfill`` and ``archive`` and asserts exit 2, the line
naming the problem, and that the simulator saw no request at all. The checks are real: a
misspelt bucket on SeaweedFS, credentials left out, a bucket without Object Lock while a
retention class locks, the writer lock held, a state directory of another destination, a
destination under /sys (where even root may create nothing), a store that refuses writes (a
proxy answering AccessDenied). And a dry run leaves the bucket exactly as it was: every key,
version and multipart upload the same before and after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from archiver.cli import main
from archiver.exotel.models import IST
from archiver.ledger import writer_lock
from archiver.simulator import Simulator, SimulatorServer
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import GENERAL_30D_LOCKED, exotel_env

DAY = str((datetime.now(IST) - timedelta(days=3)).date())
COMMANDS = ["backfill --dry-run", "backfill", "archive"]

LOCKING_CLASS = GENERAL_30D_LOCKED


def args_for(command: str, sid: str) -> list[str]:
    if command == "archive":
        return ["archive", sid]
    backfill = ["backfill", "--since", DAY, "--until", DAY]
    return [*backfill, "--dry-run"] if command.endswith("--dry-run") else backfill


@pytest.fixture
def sid(sim: Simulator) -> str:
    """A day of calls the backfill would list (and spend requests on): one SID of them."""
    calls = sim.populate(4, day=datetime.fromisoformat(DAY).date(), sizes=(2000, 4000))
    return calls[0].sid


def invoke(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, args, env=env)


def refused(result: Result, sim: Simulator, before: dict[str, int], *needles: str) -> str:
    """Exit 2, one clean line naming the problem, and not one request at the simulator."""
    out = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"unexpected {result.exception!r}\n{out}") from result.exception
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{out}"
    assert "Traceback" not in out, out
    spent = {k: v - before.get(k, 0) for k, v in sim.counters.items() if v != before.get(k, 0)}
    assert spent == {}, f"requests made before the check failed: {spent}\n{out}"
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"
    assert "plan written" not in out.lower()
    return out


def no_plan(state: Path) -> None:
    assert not (state / f"backfill-{DAY}-{DAY}.plan.json").exists()


@pytest.fixture
def local_env(sim: Simulator, server: SimulatorServer, tmp_path: Path) -> dict[str, str]:
    return exotel_env(sim, server.base_url, str(tmp_path / "out"), tmp_path / "state")


@pytest.fixture
def s3_base(
    sim: Simulator, server: SimulatorServer, s3_env: None, tmp_path: Path
) -> dict[str, str]:
    """The environment of a command: ``sim``; boto3 sees SeaweedFS (``s3_env``)."""
    return {
        "ARCHIVER_ATTEMPTS": "2",
        **exotel_env(sim, server.base_url, "", tmp_path / "state"),
    }


@pytest.mark.parametrize("command", COMMANDS)
def test_a_misspelt_bucket(
    sim: Simulator, sid: str, s3_base: dict[str, str], bucket: str, command: str, tmp_path: Path
) -> None:
    env = {**s3_base, "ARCHIVER_DESTINATION": f"s3://{bucket}-typo/calls"}
    out = refused(invoke(args_for(command, sid), env), sim, dict(sim.counters))
    assert f"bucket '{bucket}-typo' does not exist" in out, out
    assert "ARCHIVER_DESTINATION" in out
    no_plan(tmp_path / "state")


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_exotel_credentials(
    sim: Simulator, sid: str, local_env: dict[str, str], command: str, tmp_path: Path
) -> None:
    env = {**local_env, "EXOTEL_API_TOKEN": ""}
    refused(invoke(args_for(command, sid), env), sim, dict(sim.counters), "EXOTEL_API_TOKEN")
    no_plan(tmp_path / "state")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bucket_without_object_lock_while_a_class_locks(
    sim: Simulator, sid: str, s3_base: dict[str, str], bucket: str, command: str, tmp_path: Path
) -> None:
    config = tmp_path / "archiver.toml"
    config.write_text(LOCKING_CLASS)
    env = {
        **s3_base,
        "ARCHIVER_DESTINATION": f"s3://{bucket}/calls",
        "ARCHIVER_CONFIG": str(config),
    }
    refused(invoke(args_for(command, sid), env), sim, dict(sim.counters), "Object Lock", "general")
    no_plan(tmp_path / "state")


@pytest.mark.parametrize("command", COMMANDS)
def test_another_writer_holds_the_state_directory(
    sim: Simulator, sid: str, local_env: dict[str, str], command: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with writer_lock(state):  # its own open file: the command's flock is refused as another's
        result = invoke(args_for(command, sid), local_env)
    refused(result, sim, dict(sim.counters), f"pid {os.getpid()}", str(state))
    no_plan(state)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_state_directory_of_another_destination(
    sim: Simulator, sid: str, local_env: dict[str, str], command: str, tmp_path: Path
) -> None:
    first = invoke(["archive", sim.add_call().sid], local_env)
    assert first.exit_code == 0, first.output
    before = dict(sim.counters)
    env = {**local_env, "ARCHIVER_DESTINATION": str(tmp_path / "elsewhere")}
    refused(invoke(args_for(command, sid), env), sim, before, "belongs to the archive in")
    no_plan(tmp_path / "state")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_local_destination_it_may_not_write(
    sim: Simulator, sid: str, local_env: dict[str, str], command: str, tmp_path: Path
) -> None:
    # sysfs lets no one create a file or folder, root included: a real EACCES/EPERM.
    destination = Path("/sys/kernel/exotel-archiver-test")
    if destination.exists() or not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys/kernel here")
    env = {**local_env, "ARCHIVER_DESTINATION": str(destination)}
    refused(
        invoke(args_for(command, sid), env),
        sim,
        dict(sim.counters),
        f"the local destination {destination} cannot be written",
    )
    no_plan(tmp_path / "state")


@pytest.fixture
def proxy_env(s3_base: dict[str, str], proxy: FaultyS3Proxy, bucket: str) -> dict[str, str]:
    return {
        **s3_base,
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "ARCHIVER_DESTINATION": f"s3://{bucket}/calls",
    }


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bucket_these_credentials_may_read_but_not_write(
    sim: Simulator,
    sid: str,
    proxy: FaultyS3Proxy,
    proxy_env: dict[str, str],
    command: str,
    tmp_path: Path,
) -> None:
    """HeadBucket and reads pass, every write is AccessDenied (a read-only key, a bucket policy
    denying PutObject): refused at start, not after listing the range."""
    proxy.fail(
        lambda method, _path: method in ("PUT", "POST"), times=1000, status=403, code="AccessDenied"
    )
    refused(invoke(args_for(command, sid), proxy_env), sim, dict(sim.counters), "access denied")
    no_plan(tmp_path / "state")


def everything_in(seaweed: SeaweedFS, name: str) -> dict[str, Any]:
    """Every key and version (delete markers included) and every multipart upload in progress."""
    client = seaweed.client()
    versions = client.list_object_versions(Bucket=name)
    return {
        "versions": sorted(
            (v["Key"], v.get("VersionId"), v.get("ETag"), v.get("Size"))
            for v in versions.get("Versions", [])
        ),
        "delete_markers": sorted(
            (m["Key"], m.get("VersionId")) for m in versions.get("DeleteMarkers", [])
        ),
        "uploads": sorted(
            (u["Key"], u["UploadId"])
            for u in client.list_multipart_uploads(Bucket=name).get("Uploads", [])
        ),
        "objects": sorted(
            (o["Key"], o.get("ETag"))
            for o in client.list_objects_v2(Bucket=name).get("Contents", [])
        ),
    }


@pytest.fixture
def lock_env(s3_base: dict[str, str], lock_bucket: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    config = tmp_path / "archiver.toml"
    config.write_text(LOCKING_CLASS)
    yield {
        **s3_base,
        "ARCHIVER_DESTINATION": f"s3://{lock_bucket}/calls",
        "ARCHIVER_CONFIG": str(config),
    }


def test_a_dry_run_leaves_the_bucket_exactly_as_it_was(
    sim: Simulator, sid: str, seaweed: SeaweedFS, lock_bucket: str, lock_env: dict[str, str]
) -> None:
    empty = everything_in(seaweed, lock_bucket)
    dry = invoke(args_for("backfill --dry-run", sid), lock_env)
    assert dry.exit_code == 0, dry.output
    assert everything_in(seaweed, lock_bucket) == empty  # a new destination is not claimed

    archived = invoke(["archive", sim.add_call().sid], lock_env)
    assert archived.exit_code == 0, archived.output
    before = everything_in(seaweed, lock_bucket)
    assert before["versions"], "the archive run stored nothing to compare with"
    dry = invoke(args_for("backfill --dry-run", sid), lock_env)
    assert dry.exit_code == 0, dry.output
    assert everything_in(seaweed, lock_bucket) == before


def test_a_dry_run_into_a_new_local_directory_creates_nothing(
    sid: str, local_env: dict[str, str], tmp_path: Path
) -> None:
    dry = invoke(args_for("backfill --dry-run", sid), local_env)
    assert dry.exit_code == 0, dry.output
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


async def test_a_probe_left_open_by_a_killed_run_is_aborted_by_the_next_check(
    seaweed: SeaweedFS, s3_env: None, bucket: str
) -> None:
    """A run killed between the writability probe's start and its abort leaves an upload of
    nothing open under _manifest/; no later run writes that key, so the next check aborts it
    (the crash suite found one left after its final clean run)."""
    from archiver.retry import RetryPolicy
    from archiver.sinks import open_sink

    client = seaweed.client()
    left = client.create_multipart_upload(Bucket=bucket, Key="pre/_manifest/.probe-killed")
    other = client.create_multipart_upload(Bucket=bucket, Key="pre/2026/01/01/CA1/recording-1.mp3")
    sink = open_sink(f"s3://{bucket}/pre", retry=RetryPolicy(attempts=2, max_wait=0.2))
    try:
        await sink.check_writable()
    finally:
        await sink.close()
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    open_ids = {u["UploadId"] for u in uploads}
    assert left["UploadId"] not in open_ids
    assert other["UploadId"] in open_ids  # only probes: a recording's upload is its key's run's
    client.abort_multipart_upload(
        Bucket=bucket, Key="pre/2026/01/01/CA1/recording-1.mp3", UploadId=other["UploadId"]
    )
