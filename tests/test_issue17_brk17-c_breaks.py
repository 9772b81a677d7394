"""Issue 17 brk17-c: streamed uploads, with issue 19's encryption and retention on the path.

Each test fails on the current code for the reason its docstring gives.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from archiver.simulator import Simulator, SimulatorServer
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import (
    GENERAL_30D_LOCKED,
    child_env,
    invoke,
    ledger_rows,
    outcome,
    streamed_env,
    wait_for,
    write_keys,
)

MiB = 1024 * 1024


def _is_part(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path and "uploadId=" in path


def _parts_done(proxy: FaultyS3Proxy) -> int:
    """Parts the store has answered (the proxy's timeline holds requests passed on)."""
    return sum(1 for m, p, _s, _e in proxy.timeline if _is_part(m, p))


def _open_uploads(seaweed: SeaweedFS, bucket: str) -> list[dict]:
    return seaweed.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) or []


def _start_encrypted_stream(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> tuple[str, Path, subprocess.Popen[bytes], sqlite3.Connection]:
    """A real ``archive`` of one 12 MiB recording, streamed (5 MiB parts) and encrypted to a
    public key. Once its first part is in the store, another process takes the ledger's write
    lock (as a retention job's transaction, or a disk that stalls, would): the run's next
    ledger write is the ciphertext's intent, at the end of the download."""
    public, _private = write_keys(tmp_path)
    call = sim.add_call(size=12 * MiB)
    sim.faults.bandwidth = 6 * MiB
    state = tmp_path / "state"
    env = child_env(
        **streamed_env(
            sim, server, seaweed, proxy.endpoint, bucket, state, ARCHIVER_ENCRYPT_TO=str(public)
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "archive", call.sid],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: _parts_done(proxy) >= 1, timeout=60)
    holder = sqlite3.connect(state / "ledger.sqlite3", isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    return call.sid, state, proc, holder


def test_an_encrypted_stream_whose_intent_cannot_be_committed_leaves_its_upload_open(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """The ledger write of the ciphertext's intent fails (here: the database stays locked past
    the busy timeout; a full or read-only disk fails it the same way). The run stops, rightly,
    and records nothing, but the streamed upload is never aborted: ``Tap.finish`` drops its
    reference to the upload before calling ``EncryptingUpload.finish``, which (unlike
    ``PartStream.finish``) aborts nothing when it fails, so ``Tap.close`` finds nothing to
    abort. Without --encrypt-to the same failure leaves no upload open."""
    sid, state, proc, holder = _start_encrypted_stream(
        sim, server, seaweed, bucket, proxy, tmp_path
    )
    try:
        _out, err = proc.communicate(timeout=90)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 1, err.decode()[-2000:]
    assert "database is locked" in err.decode()
    assert outcome(state, sid) != "archived"
    assert _parts_done(proxy) >= 2  # the stream had sent its full parts
    assert _open_uploads(seaweed, bucket) == [], "the encrypted streamed upload was left open"


def test_sigterm_while_an_encrypted_stream_records_its_intent_leaves_its_upload_open(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """``systemctl stop`` (SIGTERM) of an ``archive`` while its encrypted stream commits the
    ciphertext's intent (a slow ledger commit: here another process holds the write lock for a
    moment). SIGTERM cancels the run, which promises to abort every open upload; but the
    cancellation lands inside ``EncryptingUpload.finish`` after ``Tap.finish`` let go of the
    upload, so nothing aborts it: the run exits with its multipart upload (10 MiB of parts)
    open and billed, and no line says so."""
    sid, state, proc, holder = _start_encrypted_stream(
        sim, server, seaweed, bucket, proxy, tmp_path
    )
    try:
        # The body is all downloaded (12 MiB at 6 MiB/s) and its full parts sent: the run now
        # waits for the intent's commit.
        wait_for(lambda: sim.counters.get("recordings_served_ok", 0) >= 1, timeout=60)
        wait_for(lambda: _parts_done(proxy) >= 2, timeout=60)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode not in (0, -signal.SIGTERM), err.decode()[-2000:]
    assert outcome(state, sid) != "archived"
    assert _open_uploads(seaweed, bucket) == [], (
        "SIGTERM left the encrypted streamed upload open: " + err.decode()[-1500:]
    )


def test_a_streamed_recording_whose_lock_date_passes_mid_download_fails_instead_of_unlocked(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    lock_bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """A call whose retention class (30 days, GOVERNANCE) ends a few seconds from now: a
    backfill of the oldest calls meets them every day. ``Recorder.tap`` gives the stream the
    lock while its date is still ahead; by the time the download has a part's worth of bytes
    the date has passed, and CreateMultipartUpload is refused (400 InvalidRequest: a
    retain-until date in the past). ``Tap._begin`` catches only ``StorageUnavailable``, so the
    refusal fails the call, after the download, where a recording stored from the spool is
    written unlocked "as any call archived after its date is" (``Recorder._put_file``)."""
    created = sim.now() - timedelta(days=30) + timedelta(seconds=3)
    call = sim.add_call(size=6 * MiB, created=created)
    sim.faults.bandwidth = 1 * MiB  # the first 5 MiB part is ready after ~5 s
    config = tmp_path / "archiver.toml"
    config.write_text(GENERAL_30D_LOCKED)
    state = tmp_path / "state"
    env = streamed_env(
        sim, server, seaweed, proxy.endpoint, lock_bucket, state, ARCHIVER_CONFIG=str(config)
    )
    result = invoke(["archive", call.sid], env)
    assert outcome(state, call.sid) == "archived", result.output[-2000:]
    assert result.exit_code == 0
    assert ledger_rows(state, "SELECT lock_mode FROM objects WHERE kind = 'recording'") == [(None,)]
