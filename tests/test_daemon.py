"""The long-running worker in-process: discovery (active calls, sweep, webhook, restart), the
no-recording grace, metrics and sd_notify. Intervals are shortened through the settings object
(the CLI keeps them at sensible minimums); every wait is on an observable condition."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from archiver import daemon as daemon_module
from archiver.archive import sink_for
from archiver.config import Settings, load_settings
from archiver.daemon import Daemon
from archiver.errors import ConfigError
from archiver.ledger import Ledger
from archiver.manifest import read_manifest
from archiver.notify import Notifier
from archiver.report import ARCHIVED, NO_RECORDING, NOT_READY
from archiver.simulator import Simulator, SimulatorServer
from archiver.summary import Summary
from tests.support import exotel_env, free_port

SECRET = "hook-secret-5f1c"


def daemon_settings(
    sim: Simulator,
    server: SimulatorServer,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    **daemon: Any,
) -> Settings:
    settings = load_settings(
        env={
            **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
            "ARCHIVER_ATTEMPTS": "2",
            "ARCHIVER_MAX_WAIT": "0.2",
            **(env or {}),
        }
    )
    fast = {
        "poll_interval": 0.1,
        "recheck_interval": 0.1,
        "sweep_interval": 3600.0,
        "shutdown_grace": 5.0,
        **daemon,
    }
    return dataclasses.replace(settings, daemon=dataclasses.replace(settings.daemon, **fast))


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[Summary]]:
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.ready.is_set() or task.done())  # listeners up
        yield task
    finally:
        daemon.stop()
        await asyncio.wait_for(asyncio.shield(task), 30)


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in time: {condition.__code__.co_positions}")
        await asyncio.sleep(0.02)


def archived_files(settings: Settings) -> dict[str, bytes]:
    """Recording files in the local destination, key → bytes (the manifest's view)."""
    root = Path(settings.destination or "")
    return {
        e["key"]: (root / e["key"]).read_bytes()
        for e in read_manifest(settings.state_dir / "manifest.jsonl")
        if e["kind"] == "recording"
    }


def outcome(settings: Settings, sid: str) -> str | None:
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        return ledger.call_outcome(sid)
    finally:
        ledger.close()


def make_daemon(settings: Settings, notifier: Notifier | None = None) -> Daemon:
    return Daemon(settings, sink=sink_for(settings), notifier=notifier)


async def test_calls_seen_active_are_archived_once_they_end(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    first = sim.add_call(state="active", recordings=1, size=50_000)
    second = sim.add_call(state="active", recordings=2, size=30_000)
    settings = daemon_settings(sim, server, tmp_path)
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.watched == 2)
        details_before = sim.counters.get("v3_call_details", 0)
        await asyncio.sleep(0.5)  # several polls while both are in progress
        assert sim.counters.get("v3_call_details", 0) == details_before == 0
        assert outcome(settings, first.sid) == "pending"  # in the ledger from the first sight

        sim.finish(first.sid)
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
        third = sim.add_call(state="active", recordings=1, size=20_000)
        await until(lambda: daemon.metrics.watched == 2)
        sim.finish(third.sid)
        sim.finish(second.sid)
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 3)

    files = archived_files(settings)
    expected = {
        (c.sid, i): sim.recording_bytes(c.sid, i)
        for c, n in ((first, 1), (second, 2), (third, 1))
        for i in range(1, n + 1)
    }
    got = {(k.split("/")[-2], int(k.split("-")[-1].split(".")[0])): v for k, v in files.items()}
    assert got == expected
    assert daemon.metrics.discovered["active"] == 3
    assert daemon.metrics.bytes_archived >= 50_000 + 60_000 + 20_000
    assert sim.counters["v3_call_details"] == 3  # one look per call, none while active


async def test_the_sweep_finds_calls_never_seen_active(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    missed = sim.add_call(recordings=1, size=40_000)  # ended before the worker started
    no_audio = sim.add_call(recordings=0, created=sim.now() - dt.timedelta(days=2))
    settings = daemon_settings(sim, server, tmp_path)
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
        assert daemon.metrics.sweeps == 1 and daemon.metrics.discovered["sweep"] == 1
        later = sim.add_call(recordings=1, size=10_000)  # short call between two polls
        assert await daemon.sweep() == 1
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 2)
        assert await daemon.sweep() == 0  # nothing left: archived calls are not looked at again

    assert outcome(settings, missed.sid) == ARCHIVED and outcome(settings, later.sid) == ARCHIVED
    assert outcome(settings, no_audio.sid) is None  # listed without recording, long over: skipped
    files = archived_files(settings)
    assert sorted(files.values()) == sorted(
        [sim.recording_bytes(missed.sid, 1), sim.recording_bytes(later.sid, 1)]
    )


async def test_the_first_sweep_after_downtime_reaches_back_to_the_last_one(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    old = sim.add_call(recordings=1, size=8_000, created=sim.now() - dt.timedelta(days=5))
    settings = daemon_settings(sim, server, tmp_path, sweep_lookback=3600.0)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    last = dt.datetime.now(settings.exotel.timezone) - dt.timedelta(days=6)
    ledger.set_state("sweep_until", last.isoformat())
    ledger.close()
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
    assert outcome(settings, old.sid) == ARCHIVED


async def test_a_call_without_recordings_is_rechecked_until_the_grace_ends(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    late = sim.add_call(recordings=0)
    settings = daemon_settings(sim, server, tmp_path, recording_grace=60.0)
    daemon = make_daemon(settings)
    async with running(daemon):
        await daemon.sweep()
        await until(lambda: daemon.metrics.calls[NO_RECORDING] >= 2)  # looked at again
        assert outcome(settings, late.sid) == "not_ready"  # and would be after a restart
        sim.add_recording(late.sid, 12_345)  # Exotel adds the recording minutes later
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
    assert list(archived_files(settings).values()) == [sim.recording_bytes(late.sid, 1)]

    none = sim.add_call(recordings=0)
    settings = daemon_settings(sim, server, tmp_path, recording_grace=0.0)
    daemon = make_daemon(settings)
    async with running(daemon):
        await daemon.sweep()
        await until(lambda: daemon.metrics.calls[NO_RECORDING] == 1)
        await asyncio.sleep(0.3)
        assert daemon.metrics.calls[NO_RECORDING] == 1  # grace over: not looked at again
    assert outcome(settings, none.sid) == NO_RECORDING


async def test_pending_calls_are_taken_up_at_the_next_start(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    call = sim.add_call(recordings=1, size=9_000)
    settings = daemon_settings(sim, server, tmp_path)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    ledger.track_call(call.sid)  # found by an earlier run that stopped before archiving it
    ledger.close()
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
    assert daemon.metrics.discovered["restart"] == 1
    assert outcome(settings, call.sid) == ARCHIVED


async def post(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, **kwargs) as resp:
        return resp.status, await resp.json()


async def test_webhook_hints(sim: Simulator, server: SimulatorServer, tmp_path: Path) -> None:
    port = free_port()
    calls = [sim.add_call(recordings=1, size=5_000) for _ in range(4)]
    settings = daemon_settings(
        sim,
        server,
        tmp_path,
        {"ARCHIVER_WEBHOOK_SECRET": SECRET},
        webhook_listen=("127.0.0.1", port),
        webhook_max_body=2048,
    )
    url = f"http://127.0.0.1:{port}/exotel/status-callback"
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.sweeps == 1)
        daemon_calls_before = daemon.metrics.discovered.copy()
        # wrong or missing secret: refused, nothing scheduled
        assert (await post(f"{url}?secret=wrong", json={"CallSid": calls[0].sid}))[0] == 401
        assert (await post(url, json={"CallSid": calls[0].sid}))[0] == 401
        # oversize body and a body without a call SID
        big = {"CallSid": calls[0].sid, "Padding": "x" * 4096}
        assert (await post(f"{url}?secret={SECRET}", json=big))[0] == 413
        assert (await post(f"{url}?secret={SECRET}", json={"Status": "completed"}))[0] == 400
        assert daemon.metrics.discovered == daemon_calls_before
    # The sweep found all four already; a fresh worker with the sweep off shows the hints work.
    settings = daemon_settings(
        sim,
        server,
        tmp_path / "two",
        {"ARCHIVER_WEBHOOK_SECRET": SECRET},
        webhook_listen=("127.0.0.1", port),
        sweep_interval=0.0,
    )
    daemon = make_daemon(settings)
    async with running(daemon):
        json_hint = await post(f"{url}?secret={SECRET}", json={"CallSid": calls[0].sid})
        assert json_hint == (200, {"status": "accepted"})
        form = {"CallSid": calls[1].sid, "Status": "completed", "RecordingUrl": ""}
        assert (await post(url, data=form, headers={"X-Archiver-Secret": SECRET}))[0] == 200
        multipart = aiohttp.FormData({"CallSid": calls[2].sid, "Status": "completed"})
        multipart.add_field("Legs[]", "x", content_type="text/plain", filename="legs.txt")
        assert (await post(f"{url}?secret={SECRET}", data=multipart))[1]["status"] == "accepted"
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 3)
        again = await post(f"{url}?secret={SECRET}", json={"CallSid": calls[0].sid})
        assert again == (200, {"status": "duplicate"})
        assert (
            await post(
                f"{url}?secret={SECRET}", data="CallSid=x", headers={"Content-Type": "text/plain"}
            )
        )[0] == 415
    assert daemon.metrics.webhook["accepted"] == 3 and daemon.metrics.webhook["duplicate"] == 1
    assert outcome(settings, calls[3].sid) is None  # never hinted, never swept: not touched
    assert sim.counters["v3_call_details"] >= 3


async def test_webhook_basic_auth(sim: Simulator, server: SimulatorServer, tmp_path: Path) -> None:
    port = free_port()
    call = sim.add_call(recordings=1, size=5_000)
    settings = daemon_settings(
        sim,
        server,
        tmp_path,
        {"ARCHIVER_WEBHOOK_BASIC_AUTH": "exotel:pa55word"},
        webhook_listen=("127.0.0.1", port),
        sweep_interval=0.0,
    )
    url = f"http://127.0.0.1:{port}/exotel/status-callback"
    daemon = make_daemon(settings)
    async with running(daemon):
        for password, status in (("wrong", 401), ("pa55word", 200)):
            auth = "Basic " + base64.b64encode(f"exotel:{password}".encode()).decode()
            answer = await post(url, json={"CallSid": call.sid}, headers={"Authorization": auth})
            assert answer[0] == status
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)


async def test_webhook_without_a_secret_is_refused_at_start(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    settings = daemon_settings(sim, server, tmp_path, webhook_listen=("127.0.0.1", free_port()))
    with pytest.raises(ConfigError, match="needs a secret"):
        await make_daemon(settings).run()


async def test_metrics_endpoint(sim: Simulator, server: SimulatorServer, tmp_path: Path) -> None:
    port = free_port()
    call = sim.add_call(recordings=1, size=7_000)
    old = sim.add_call(state="active")
    ledger_created = (sim.now() - dt.timedelta(days=29)).isoformat()
    settings = daemon_settings(sim, server, tmp_path, metrics_listen=("127.0.0.1", port))
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    ledger.track_call(old.sid, created_time=ledger_created)  # 29 days old, not archived
    ledger.close()
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200 and resp.content_type == "text/plain"
            text = await resp.text()
    samples = {
        series: float(value)
        for series, value in (
            line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
    }
    assert samples['exotel_archiver_calls_total{outcome="archived"}'] == 1
    assert samples["exotel_archiver_bytes_archived_total"] >= 7_000
    assert samples["exotel_archiver_api_requests_total"] >= 3  # poll, sweep, details
    assert samples["exotel_archiver_api_rate_limited_total"] == 0
    assert samples["exotel_archiver_watched_active_calls"] == 1
    assert samples["exotel_archiver_oldest_unarchived_call_age_seconds"] > 28 * 86400
    assert samples["exotel_archiver_source_retention_at_risk"] == 1  # 30 days - 7 warned
    assert call.sid not in text  # no per-call labels: bounded series


async def test_sd_notify_messages_on_a_real_socket(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        messages: list[str] = []

        async def read() -> None:  # as systemd does: keep reading
            while True:
                messages.append((await asyncio.get_running_loop().sock_recv(sock, 4096)).decode())

        reader = asyncio.create_task(read())
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000"})
        settings = daemon_settings(sim, server, tmp_path)
        daemon = make_daemon(settings, notifier)
        async with running(daemon):
            await asyncio.sleep(0.4)  # several watchdog periods (50 ms each)
        await asyncio.sleep(0.1)
        reader.cancel()
    assert messages[0].startswith("READY=1\nSTATUS=")
    assert sum(m == "WATCHDOG=1" for m in messages) >= 3
    assert any(m.startswith("STATUS=archived 0, failed 0") for m in messages)
    assert messages[-1].startswith("STOPPING=1\nSTATUS=draining")
    assert not any(m.startswith("READY=1") for m in messages[1:])


def test_a_full_notify_socket_never_blocks(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))  # nobody reads: the queue fills up
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        started = time.monotonic()
        for _ in range(1000):
            notifier.status("x" * 1000)
        assert time.monotonic() - started < 10  # returned: dropped, not blocked


def test_notifier_outside_systemd_and_with_an_abstract_socket(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    Notifier({}).ready("nothing happens")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = f"exotel-archiver-test-{time.monotonic_ns()}"
        sock.bind(b"\0" + name.encode())
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert sock.recv(100) == b"READY=1\nSTATUS=up"
    other_pid = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval is None  # the watchdog is someone else's


async def test_a_call_that_ended_but_is_still_processing_is_looked_at_again(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    call = sim.add_call(state="active", recordings=1, size=6_000)
    settings = daemon_settings(sim, server, tmp_path)
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.watched == 1)
        call.end = sim.now() - dt.timedelta(seconds=1)  # hung up; v3 still says active
        await until(lambda: daemon.metrics.calls[NOT_READY] >= 2)  # looked at, and again
        assert outcome(settings, call.sid) == NOT_READY and daemon.metrics.watched == 0
        sim.finish(call.sid)
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
    assert list(archived_files(settings).values()) == [sim.recording_bytes(call.sid, 1)]


async def test_an_idle_worker_seals_soon_not_only_every_ten_minutes(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries wait for a seal while calls come in; once nothing is in flight for SEAL_IDLE
    seconds they are sealed, so the destination's chain is soon complete again."""
    monkeypatch.setattr(daemon_module, "SEAL_IDLE", 0.5)
    monkeypatch.setattr(daemon_module, "STATUS_EVERY", 0.05)
    assert daemon_module.SEAL_EVERY >= 600  # the timer alone would not seal within the test
    sim.add_call(recordings=1, size=9_000)
    settings = daemon_settings(sim, server, tmp_path)
    segments = Path(settings.destination or "") / "_manifest" / "segments"
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 1)
        archived_at = time.monotonic()
        assert not segments.exists() or not any(segments.iterdir())

        def sealed() -> bool:
            # The segment is in the destination a moment before the ledger records it sealed
            # (and a temp file of it before that): wait for both.
            ledger = daemon.ledger
            return (
                ledger is not None
                and any(segments.glob("*.jsonl"))
                and ledger.unsealed_count() == 0
            )

        await until(sealed, timeout=10)
        assert time.monotonic() - archived_at >= 0.4  # after the idle time, not at once
        assert not daemon.schedule.in_flight
        ledger = Ledger(settings.state_dir / "ledger.sqlite3")
        try:
            assert ledger.unsealed_count() == 0 and len(ledger.segments()) == 1
        finally:
            ledger.close()
        later = sim.add_call(recordings=1, size=7_000)
        await daemon.sweep()
        await until(lambda: daemon.metrics.calls[ARCHIVED] == 2)
        await until(lambda: len(list(segments.iterdir())) == 2, timeout=10)
    assert outcome(settings, later.sid) == ARCHIVED
