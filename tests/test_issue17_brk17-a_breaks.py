"""Issue 17 brk17-a: the streamed parallel multipart upload of large recordings, broken."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from archiver.exotel.models import IST
from archiver.simulator import Simulator, SimulatorServer
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import (
    STREAM_PREFIX,
    child_env,
    invoke,
    outcome,
    recording_key,
    streamed_env,
    wait_for,
)

MiB = 1024 * 1024
PREFIX = STREAM_PREFIX


def _is_part(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path and "uploadId=" in path


def _child_env(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    proxy: FaultyS3Proxy,
    bucket: str,
    state: Path,
    **extra: str,
) -> dict[str, str]:
    return child_env(
        **streamed_env(
            sim,
            server,
            seaweed,
            proxy.endpoint,
            bucket,
            state,
            ARCHIVER_POLL_INTERVAL="1",
            ARCHIVER_RECHECK_INTERVAL="1",
            **extra,
        )
    )


def _open_uploads(seaweed: SeaweedFS, bucket: str) -> list[dict]:
    return seaweed.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) or []


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _day(sim: Simulator, sid: str) -> str:
    return f"{sim.calls[sid].created.astimezone(IST):%Y-%m-%d}"


def _parts_sent(proxy: FaultyS3Proxy) -> int:
    return sum(1 for m, p in proxy.log if _is_part(m, p))


def _signal_mid_stream(sim, server, seaweed, bucket, proxy, tmp_path, args, signals, **extra):
    sim.faults.bandwidth = 3 * MiB
    when = sim.now() - timedelta(days=2) if args[0] == "backfill" else None
    call = sim.add_call(size=40 * MiB, created=when)
    state = tmp_path / "state"
    env = _child_env(sim, server, seaweed, proxy, bucket, state, **extra)
    if args[0] == "backfill":
        args = [*args, "--since", _day(sim, call.sid), "--until", _day(sim, call.sid)]
    proc = _start(args, env)
    wait_for(lambda: _parts_sent(proxy) >= 1, timeout=60)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=60)
    return call, state, proc.returncode, err.decode()


def _run(env, *args):
    r = invoke(list(args), env)
    return r.exit_code, r.output


def _is_complete(m, p):
    return m == "POST" and "uploadId=" in p and "/recording-" in p


def test_backfill_stopped_by_sigterm_mid_stream_leaves_its_multipart_upload_open(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """`systemctl stop exotel-archiver-backfill@...` sends SIGTERM; the unit says "SIGTERM makes
    the backfill finish its in-flight transfers before it exits" and docs/storage.md says "the
    worker stopping aborts it" (the streamed upload). backfill installs no SIGTERM handler: the
    process dies at once (-15) with the streamed upload of a 40 MiB recording open, its parts
    billed, no line said."""
    call, state, rc, _err = _signal_mid_stream(
        sim, server, seaweed, bucket, proxy, tmp_path, ["backfill"], [signal.SIGTERM]
    )
    assert _open_uploads(seaweed, bucket) == [], "the streamed upload was left open"
    assert rc != -signal.SIGTERM, "killed by SIGTERM: no clean-up ran, nothing was said"
    assert outcome(state, call.sid) != "archived"


def test_a_killed_runs_upload_is_never_aborted_when_the_next_run_stores_the_key_in_one_put(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """docs/storage.md: "A worker killed mid-upload cannot abort; the next run aborts the
    unfinished uploads of a key before uploading it again". Streaming keeps an upload open for
    the whole download. Killed mid-stream, then the next backfill (the operator raised
    --part-size to 64) archives the call with a single PUT, which never looks for leftovers:
    the backfill completes and the killed run's upload stays open for ever."""
    call, state, _rc, _err = _signal_mid_stream(
        sim, server, seaweed, bucket, proxy, tmp_path, ["backfill"], [signal.SIGKILL]
    )
    assert _open_uploads(seaweed, bucket), "setup: the killed run left its upload open"
    sim.faults.bandwidth = None
    env = _child_env(sim, server, seaweed, proxy, bucket, state, ARCHIVER_PART_SIZE="64")
    day = _day(sim, call.sid)
    again = subprocess.run(
        [sys.executable, "-m", "archiver", "backfill", "--since", day, "--until", day],
        env=env,
        capture_output=True,
        timeout=180,
    )
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert outcome(state, call.sid) == "archived"
    assert _open_uploads(seaweed, bucket) == [], "the backfill completed with an upload left open"


def test_a_streamed_completion_acknowledged_but_not_made_leaves_the_upload_open(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """The store answers 200 to CompleteMultipartUpload but never completes it (FaultyS3Proxy
    ``fake_ok``). The HEAD that follows finds nothing and the call fails, rightly; but
    ``PartStream.finish`` marked the upload done (``aborted = True``) before verifying it, so
    nothing aborts it: the promise "any failure aborts the upload" is broken and its 22 MiB of
    parts stay billed."""
    sid = sim.add_call(size=22 * MiB).sid
    proxy.fail(_is_complete, times=1, action="fake_ok")
    state = tmp_path / "state"
    env = streamed_env(sim, server, seaweed, proxy.endpoint, bucket, state)
    rc, out = _run(env, "archive", sid)
    assert rc == 1 and outcome(state, sid) == "failed", out[-2000:]
    assert proxy.injected["fake_ok"] == 1
    assert _open_uploads(seaweed, bucket) == [], "the failed streamed upload was left open"


class _ChangingSource:
    """A recording URL whose object is replaced between a cut-off GET and its Range resume:
    the first answer (ETag "a") sends half of body A and resets; the resume (206, ETag "b",
    a valid Content-Range) sends the rest of body B."""

    def __init__(self, a: bytes, b: bytes) -> None:
        import asyncio
        import threading

        from aiohttp import web

        self.a, self.b, self.requests = a, b, []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def handle(request: web.Request) -> web.StreamResponse:
            rng = request.headers.get("Range")
            self.requests.append((rng, request.headers.get("If-Range")))
            n = len(self.a)
            if not rng:
                resp = web.StreamResponse(
                    status=200,
                    headers={"Content-Type": "audio/mpeg", "ETag": '"a"', "Accept-Ranges": "bytes"},
                )
                resp.content_length = n
                await resp.prepare(request)
                await resp.write(self.a[: n // 2])
                request.transport.abort()
                return resp
            start = int(rng.split("=")[1].split("-")[0])
            if request.headers.get("If-Range") not in (None, '"b"'):
                body, status, extra = self.b, 200, {}
            else:
                body, status = self.b[start:], 206
                extra = {"Content-Range": f"bytes {start}-{n - 1}/{n}"}
            resp = web.StreamResponse(
                status=status, headers={"Content-Type": "audio/mpeg", "ETag": '"b"', **extra}
            )
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body)
            return resp

        async def main() -> None:
            app = web.Application()
            app.router.add_get("/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            await asyncio.Event().wait()

        threading.Thread(target=lambda: self._loop.run_until_complete(main()), daemon=True).start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}/rec.mp3"


def test_a_recording_replaced_between_a_cut_and_its_range_resume_is_archived_as_a_mix(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """Cut off after half of a 24 MiB recording (two parts already streamed), the Range resume
    is answered by another version of the object (another ETag; a re-encoded or replaced file
    at the source). The archiver sends no If-Range and never compares the ETag: it completes
    the same upload and records "archived" an object that is neither body — half of A, half of
    B — and its manifest SHA-256 is of that mix, so verify will call it ok for ever."""
    call = sim.add_call(size=24 * MiB)
    a = sim.recording_bytes(call.sid, 1)
    b = a[:MiB] + bytes(x ^ 0x5A for x in a[MiB:])  # the same MP3 start, other audio
    source = _ChangingSource(a, b)
    sim.faults.recording_url_for[call.sid] = source.url
    state = tmp_path / "state"
    env = streamed_env(
        sim, server, seaweed, proxy.endpoint, bucket, state, ARCHIVER_ALLOW_PRIVATE_ADDRESSES="on"
    )
    _run(env, "archive", call.sid)
    assert len(source.requests) >= 2 and source.requests[1][0], source.requests  # resumed
    if outcome(state, call.sid) == "archived":
        stored = (
            seaweed.client()
            .get_object(Bucket=bucket, Key=recording_key(sim, call.sid))["Body"]
            .read()
        )
        digest = hashlib.sha256(stored).hexdigest()
        versions = {hashlib.sha256(x).hexdigest() for x in (a, b)}
        assert digest in versions, (
            f"archived an object that is neither version: first half of A + second half of B "
            f"(requests {source.requests})"
        )
