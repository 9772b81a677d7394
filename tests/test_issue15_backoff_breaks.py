"""What the failed-call backoff and the refusal streak must not do: stop a healthy worker
(one refused call back from its backoff; five bad calls in a row among good ones), or make a
full local destination download every call for nothing.

Real parts only: the simulator over real HTTP, SeaweedFS behind FaultyS3Proxy (per-object S3
answers injected on the wire), the real ``Daemon``. The only thing shortened is our own backoff
constant (as tests/test_failed_backoff.py does), so hours pass in seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shlex
import time
from pathlib import Path

import pytest

from archiver import rechecks
from archiver.rechecks import Backoff
from archiver.report import ARCHIVED, FAILED
from archiver.simulator import Simulator, SimulatorServer
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import clean_env, exotel_env, tmpfs
from tests.test_daemon import daemon_settings, make_daemon, outcome, running, until
from tests.test_state_errors import JSON, command, result, run_in_namespace, tmpfs_ok

PREFIX = "brk3"


__all__ = ["tmpfs_ok"]  # the fixture, used by name


def _s3(bucket: str) -> dict[str, str]:
    return {"ARCHIVER_DESTINATION": f"s3://{bucket}/{PREFIX}"}


def _recording_keys(seaweed: SeaweedFS, bucket: str) -> set[str]:
    client = seaweed.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/").get("Contents", [])
    return {o["Key"] for o in listed if "/recording-" in o["Key"]}


async def test_one_refused_object_looked_at_after_its_backoff_does_not_stop_the_worker(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ONE call whose recording the store refuses (400 InvalidArgument, only for that key) on
    a quiet account: each look after its backoff is refused again, nothing else is stored in
    between, so the fifth look is the fifth "refusal in a row with the same code" and
    REJECT_STREAK stops the worker with StoragePermanent (exit 2, which the units never
    restart). One call's object must fail that call, not the worker."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setattr(rechecks, "FAILED_BACKOFF", Backoff(first=0.2, cap=0.2))
    bad = sim.add_call(recordings=1, size=3_000, created=sim.now() - dt.timedelta(hours=1))
    proxy.fail(
        lambda m, p: m == "PUT" and f"/{bad.sid}/recording-" in p,
        times=1000,
        status=400,
        code="InvalidArgument",
    )
    settings = daemon_settings(
        sim, server, tmp_path, _s3(bucket), sweep_interval=0.0, poll_interval=3600.0
    )
    daemon = make_daemon(settings)
    async with running(daemon) as task:
        started = time.monotonic()
        while daemon.metrics.calls[FAILED] < 6 and not task.done():
            assert time.monotonic() - started < 20, daemon.metrics.calls
            await daemon.sweep()
            await until(lambda: not daemon.schedule.in_flight and daemon.schedule.waiting == 0)
            await asyncio.sleep(0.05)
        # the worker is still serving after six looks at its one bad call
        assert not task.done(), f"the worker stopped: {task.exception()!r}"
    assert outcome(settings, bad.sid) == FAILED


async def test_five_refused_objects_in_a_row_among_good_calls_do_not_stop_the_worker(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five calls whose recordings the store refuses one by one (InvalidArgument for those keys
    only; every other object is stored fine) happen to be looked at one after the other: the
    streak rule takes that for "the store refuses every object", the worker stops (exit 2, not
    restarted) and the good calls listed after them are never archived. The store accepts
    objects all along: one probe PUT would have shown it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    base = sim.now() - dt.timedelta(hours=3)
    bad = [
        sim.add_call(recordings=1, size=3_000, created=base + dt.timedelta(minutes=i))
        for i in range(5)
    ]
    good = [
        sim.add_call(recordings=1, size=3_000, created=base + dt.timedelta(minutes=30 + i))
        for i in range(3)
    ]
    refused = {c.sid for c in bad}
    proxy.fail(
        lambda m, p: m == "PUT" and "/recording-" in p and any(f"/{s}/" in p for s in refused),
        times=1000,
        status=400,
        code="InvalidArgument",
    )
    settings = daemon_settings(
        sim,
        server,
        tmp_path,
        {**_s3(bucket), "ARCHIVER_CONCURRENCY": "1"},
        sweep_interval=0.0,
        poll_interval=3600.0,
    )
    daemon = make_daemon(settings)
    async with running(daemon) as task:
        assert await daemon.sweep() == 8
        await until(
            lambda: task.done() or (not daemon.schedule.in_flight and daemon.schedule.waiting == 0),
            timeout=30,
        )
        assert not task.done(), f"the worker stopped: {task.exception()!r}"
    assert {c.sid: outcome(settings, c.sid) for c in good} == {c.sid: ARCHIVED for c in good}
    assert len(_recording_keys(seaweed, bucket)) == 3


def test_a_full_local_destination_does_not_download_every_call_for_nothing(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, tmpfs_ok: None
) -> None:
    """The local destination's disk is full (a real 1 MiB tmpfs, filled up to a few KiB: room
    for the start-up check, none for a recording); the state
    directory has room. ``archive`` of 12 calls: ENOSPC is now StorageUnavailable, so each call
    is downloaded in full (and its PUT retried), fails, and the next one is downloaded again —
    every recording fetched and every call failed, an API request and a download each, for
    a condition that concerns every call. Wanted: the run stops after the first few with the
    disk named (as a full state directory does), not download all of them."""
    calls = [
        sim.add_call(
            recordings=1, size=20_000, created=sim.now() - dt.timedelta(hours=2, minutes=i)
        )
        for i in range(12)
    ]
    disk = tmp_path / "disk"
    disk.mkdir()
    out, state = disk / "archive", tmp_path / "state"
    env = {**clean_env(), **exotel_env(sim, server.base_url, str(out), state), **JSON}
    env["ARCHIVER_CONCURRENCY"] = "1"
    ran = tmp_path / "ran"
    filler = shlex.quote(str(disk / "filler"))
    run_in_namespace(
        tmpfs(
            disk,
            f"mkdir -p {shlex.quote(str(out))} && dd if=/dev/zero of={filler} bs=4096 count=250"
            f" 2>/dev/null && {command('archive', *[c.sid for c in calls], out=ran)}",
        ),
        env,
    )
    code, err = result(ran)
    assert code != 0, err
    assert "Traceback" not in err, err
    downloaded = sim.counters.get("recordings_served_ok", 0)
    assert downloaded <= 3, (
        f"{downloaded} of {len(calls)} recordings downloaded into a full destination; exit {code}"
    )
