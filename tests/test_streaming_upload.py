"""Large recordings stream: the download feeds a multipart upload whose parts go up in parallel
while the rest is still arriving, and every promise of a plain upload still holds.

All parts are real: the simulator over HTTP (throttled, cut off, ignoring Range, serving noise),
SeaweedFS behind ``FaultyS3Proxy`` (which keeps a timeline of the requests it passed on, and can
hold or fail some), ``exotel-archiver archive`` run as a user runs it. What is asserted is what
the store saw and holds, and what the ledger and manifest say.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from archiver.simulator import Simulator, SimulatorServer
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import (
    HWM_WRAPPER,
    STREAM_PREFIX,
    child_env,
    exotel_env,
    invoke,
    ledger_rows,
    outcome,
    recording_key,
    streamed_env,
)

MiB = 1024 * 1024
PREFIX = STREAM_PREFIX


def _is_part(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path and "uploadId=" in path


def _is_part_n(number: int) -> Callable[[str, str], bool]:
    return lambda method, path: _is_part(method, path) and f"partNumber={number}&" in path + "&"


@contextmanager
def _served_at(sim: Simulator) -> Iterator[dict[str, list[float]]]:
    """When (``time.monotonic()``) each recording response was served to its end, and each Range
    request was answered: sampled from the simulator's counters every few milliseconds."""
    seen: dict[str, list[float]] = {"served": [], "ranges": []}
    stop = threading.Event()
    counters = (("served", "recordings_served_ok"), ("ranges", "range_requests"))

    def sample() -> None:
        last = dict.fromkeys(seen, 0)
        while not stop.is_set():
            now = time.monotonic()
            for name, counter in counters:
                value = sim.counters.get(counter, 0)
                seen[name] += [now] * (value - last[name])
                last[name] = value
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def _parts(proxy: FaultyS3Proxy) -> list[tuple[str, str, float, float]]:
    return [t for t in proxy.timeline if _is_part(t[0], t[1])]


def _count(proxy: FaultyS3Proxy, method: str, query: str) -> int:
    """Requests ``method`` with ``query`` for a recording's key (not preflight's probe)."""
    return sum(1 for m, p in proxy.log if m == method and query in p and "/recording-" in p)


def _overlapping(spans: list[tuple[str, str, float, float]]) -> bool:
    """Two of ``spans`` were in flight at the same time."""
    ordered = sorted(spans, key=lambda t: t[2])
    return any(b[2] < a[3] for a, b in itertools.pairwise(ordered))


def _manifest_sha256(state: Path, sid: str) -> list[str]:
    path = state / "manifest.jsonl"
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e["sha256"] for e in entries if e.get("call_sid") == sid and e["kind"] == "recording"]


def _recording_rows(state: Path, sid: str) -> list[tuple[Any, ...]]:
    if not (state / "ledger.sqlite3").exists():
        return []
    sql = f"SELECT sha256 FROM objects WHERE call_sid = '{sid}' AND kind = 'recording'"
    return ledger_rows(state, sql)


def _assert_stored_once(
    seaweed: SeaweedFS, bucket: str, sim: Simulator, sid: str, state: Path
) -> None:
    """The bucket holds the source's bytes at the key, one version; manifest and ledger agree;
    no upload is left open."""
    expected = sim.recording_bytes(sid, 1)
    client = seaweed.client()
    key = recording_key(sim, sid)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(body) == len(expected) and body == expected, "the stored bytes are not the source's"
    versions = client.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
    assert len([v for v in versions if v["Key"] == key]) == 1
    digest = hashlib.sha256(expected).hexdigest()
    assert _manifest_sha256(state, sid) == [digest]
    assert _recording_rows(state, sid) == [(digest,)]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert outcome(state, sid) == "archived"


def _assert_nothing_of(
    seaweed: SeaweedFS, bucket: str, sim: Simulator, sid: str, state: Path
) -> None:
    client = seaweed.client()
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads"), "an upload is open"
    listed = client.list_objects_v2(Bucket=bucket, Prefix=recording_key(sim, sid)).get(
        "Contents", []
    )
    assert not listed, "an object is at the recording's key"
    assert _manifest_sha256(state, sid) == []
    assert _recording_rows(state, sid) == []


def _archive(env: dict[str, str], *sids: str) -> int:
    return invoke(["archive", *sids], env).exit_code


def test_parts_go_up_in_parallel_while_the_download_runs(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """A 32 MiB recording served at 8 MiB/s, to a store that takes a second per part: parts
    are sent before the download has ended, several at once; the object is the source's."""
    sid = sim.add_call(size=32 * MiB + 123).sid
    sim.faults.bandwidth = 8 * MiB
    proxy.delay(_is_part, 1.0)
    state = tmp_path / "state"
    with _served_at(sim) as seen:
        assert _archive(streamed_env(sim, server, seaweed, proxy.endpoint, bucket, state), sid) == 0
    parts = _parts(proxy)
    assert len(parts) == 7
    assert seen["served"], "the download never ended"
    assert min(p[2] for p in parts) < seen["served"][0] - 1.0, "no part went before the end"
    assert _overlapping(parts), "the parts went up one at a time"
    _assert_stored_once(seaweed, bucket, sim, sid, state)


def test_a_part_that_fails_for_good_mid_stream_leaves_nothing(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """Part 3 is refused every time (500), while the download still runs: the call fails, no
    upload stays open, nothing is at the key, in the ledger or in the manifest; healed, the next
    run archives it once."""
    sid = sim.add_call(size=30 * MiB).sid
    sim.faults.bandwidth = 10 * MiB
    proxy.fail(_is_part_n(3), times=1000, status=500, code="InternalError")
    state = tmp_path / "state"
    env = streamed_env(sim, server, seaweed, proxy.endpoint, bucket, state)
    with _served_at(sim) as seen:
        assert _archive(env, sid) == 1
    assert outcome(state, sid) == "failed"
    third = [t for t in proxy.timeline if _is_part_n(3)(t[0], t[1])]
    assert third and seen["served"] and third[0][2] < seen["served"][0], "not tried mid-stream"
    _assert_nothing_of(seaweed, bucket, sim, sid, state)
    proxy.rules.clear()
    assert _archive(env, sid) == 0
    _assert_stored_once(seaweed, bucket, sim, sid, state)


def test_a_download_cut_off_and_resumed_continues_the_same_upload(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """Cut off half-way (15 MiB: parts 1-2 already sent), resumed with Range: one upload,
    started before the cut, completed; the bytes are exact."""
    sid = sim.add_call(size=30 * MiB).sid
    sim.faults.recording_script.append("cut")
    state = tmp_path / "state"
    with _served_at(sim) as seen:
        assert _archive(streamed_env(sim, server, seaweed, proxy.endpoint, bucket, state), sid) == 0
    assert sim.counters["range_requests"] == 1
    assert _count(proxy, "POST", "?uploads") == 1, "not one upload"
    assert _count(proxy, "DELETE", "uploadId=") == 0, "an upload was aborted"
    first_part = min(p[2] for p in _parts(proxy))
    assert seen["ranges"] and first_part < seen["ranges"][0], "no part went before the cut"
    _assert_stored_once(seaweed, bucket, sim, sid, state)


def test_a_source_that_ignores_range_starts_the_upload_again(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """Cut off, then the source answers the Range request with the whole body: the upload of
    the first attempt's bytes is aborted and a new one completes; nothing is left open."""
    sid = sim.add_call(size=30 * MiB).sid
    sim.faults.recording_script.extend(["cut", "no_range"])
    state = tmp_path / "state"
    assert _archive(streamed_env(sim, server, seaweed, proxy.endpoint, bucket, state), sid) == 0
    assert _count(proxy, "POST", "?uploads") == 2, "the first upload was not started mid-stream"
    assert _count(proxy, "DELETE", "uploadId=") >= 1, "the first upload was not aborted"
    _assert_stored_once(seaweed, bucket, sim, sid, state)


def test_a_large_body_that_is_not_audio_uploads_nothing(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
) -> None:
    """A 20 MiB body served as audio whose first bytes are not MP3 or WAV: the content gate
    refuses it before any upload begins; nothing is sent, left open or recorded."""
    sid = sim.add_call(size=20 * MiB).sid
    sim.faults.recording_script.append("noise")
    state = tmp_path / "state"
    assert _archive(streamed_env(sim, server, seaweed, proxy.endpoint, bucket, state), sid) == 1
    assert outcome(state, sid) == "failed"
    assert _count(proxy, "POST", "?uploads") == 0 and not _parts(proxy)
    _assert_nothing_of(seaweed, bucket, sim, sid, state)


def test_a_256_mib_recording_keeps_memory_bounded(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    """Archived by a child process at the default part size and parallelism: its peak RSS
    stays under 150 MiB. The peak is the child's own ``VmHWM`` read at its exit (as the
    benchmark does), not ``wait4``'s ``ru_maxrss``: Linux carries the parent's high-water mark
    over ``exec`` into the child's, and this test process holds recordings in memory."""
    sid = sim.add_call(size=256 * MiB).sid
    state = tmp_path / "state"
    env = child_env(
        **seaweed.env(),
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", state),
        EXOTEL_RATE_LIMIT="6000",
    )
    hwm = tmp_path / "hwm"
    result = subprocess.run(
        [sys.executable, "-c", HWM_WRAPPER, str(hwm), "archive", sid],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    peak = int(hwm.read_text()) / 1024  # kB
    assert peak <= 150, f"peak RSS {peak:.0f} MiB"
    _assert_stored_once(seaweed, bucket, sim, sid, state)
