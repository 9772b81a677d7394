"""``GET /metrics`` of a real ``archiver run`` process: parsed with prometheus_client's own
parser, every metric name the worker has ever exposed is still there with its type, the counts
are what happened, and the standard ``process_*`` metrics are served too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import exposed, free_port, outcome, scrape, wait_for

PREFIX = "exotel_archiver_"
OLD_NAMES = {
    "calls_total": "counter",
    "bytes_archived_total": "counter",
    "failures_total": "counter",
    "url_refreshes_total": "counter",
    "api_requests_total": "counter",
    "api_rate_limited_total": "counter",
    "calls_discovered_total": "counter",
    "webhook_requests_total": "counter",
    "sweeps_total": "counter",
    "sweep_errors_total": "counter",
    "poll_errors_total": "counter",
    "queue_depth": "gauge",
    "in_flight": "gauge",
    "watched_active_calls": "gauge",
    "oldest_unarchived_call_age_seconds": "gauge",
    "source_retention_at_risk": "gauge",
    "up_since_seconds": "gauge",
}
"""Every name (as exposed: ``# TYPE`` line and samples) served before prometheus-client, frozen:
a rename breaks dashboards and alerts, so it fails here."""
NEW_NAMES = {
    "skipped_items_total": "counter",
    "stuck_calls_total": "counter",
    "stuck_calls_now": "gauge",
    "active_poll_truncated_total": "counter",
    "failed_calls": "gauge",
}


def test_metrics_of_a_running_worker(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
    service_env: dict[str, str],
) -> None:
    state = tmp_path / "state"
    good = [sim.add_call(recordings=1, size=9_000) for _ in range(2)]
    bad = sim.add_call(recordings=1, size=9_000)
    sim.faults.recording_url_for[bad.sid] = f"{server.base_url}/no-such-recording.mp3"
    processing = sim.add_call(state="processing")
    sim.add_call(state="active")
    port = free_port()
    env = {**service_env, "ARCHIVER_METRICS_LISTEN": f"127.0.0.1:{port}"}  # s3://BUCKET/calls
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: (
                all(outcome(state, c.sid) == "archived" for c in good)
                and outcome(state, bad.sid) == "failed"
                and outcome(state, processing.sid) == "not_ready"
            )
        )
        time.sleep(1.5)  # a poll or two later: the gauges are settled
        content_type, text = scrape(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]

    assert content_type.startswith("text/plain") and "version=" in content_type
    types, samples = exposed(text)
    ours = {n.removeprefix(PREFIX): t for n, t in types.items() if n.startswith(PREFIX)}
    assert {n: ours.get(n) for n in OLD_NAMES} == OLD_NAMES
    assert {n: ours.get(n) for n in NEW_NAMES} == NEW_NAMES
    assert set(ours) == set(OLD_NAMES) | set(NEW_NAMES)  # nothing unannounced

    def value(name: str, **labels: str) -> float:
        name = name if name.startswith("process_") else PREFIX + name
        return samples[name, frozenset(labels.items())]

    assert value("calls_total", outcome="archived") == 2
    assert value("calls_total", outcome="failed") == 1
    assert value("calls_total", outcome="not_ready") >= 1
    assert sum(v for (n, _), v in samples.items() if n == PREFIX + "failures_total") == 1
    assert value("bytes_archived_total") >= 2 * 9_000
    assert 0 < value("api_requests_total") <= sim.counters["api_requests"]
    assert value("api_rate_limited_total") == 0
    assert value("calls_discovered_total", source="sweep") >= 4
    assert value("sweeps_total") >= 1 and value("sweep_errors_total") == 0
    assert value("watched_active_calls") == 1
    assert value("in_flight") == 0
    assert value("source_retention_at_risk") == 0
    assert value("stuck_calls_now") == 0 and value("stuck_calls_total") == 0
    truncated = PREFIX + "active_poll_truncated_total"
    assert sum(v for (n, _), v in samples.items() if n == truncated) == 0  # by reason
    assert started - 5 < value("up_since_seconds") <= time.time()

    # The standard process metrics, from prometheus-client's ProcessCollector.
    assert value("process_resident_memory_bytes") > 10_000_000
    assert value("process_open_fds") > 3 and value("process_max_fds") > 0
    assert value("process_cpu_seconds_total") > 0
    assert abs(value("process_start_time_seconds") - value("up_since_seconds")) < 30
    assert any(n == "python_info" for n, _ in samples)


def test_process_metrics_without_proc_stat(tmp_path: Path) -> None:
    """Under the shipped units (``ProcSubset=pid``) /proc/stat, where prometheus-client reads
    the boot time, is hidden: the process metrics must not vanish with it."""
    from archiver.metrics import Metrics, registry

    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").symlink_to(f"/proc/{os.getpid()}")  # the pid entries only, no stat
    from prometheus_client import generate_latest

    _types, samples = exposed(generate_latest(registry(Metrics(), proc=str(proc))).decode())
    names = {n for n, _ in samples}
    assert {"process_resident_memory_bytes", "process_open_fds"} <= names
    start = samples["process_start_time_seconds", frozenset()]
    assert abs(start - time.time()) < 24 * 3600  # a real start time, not seconds since boot


@pytest.mark.parametrize("kind", ["counter", "gauge"])
def test_every_table_row_is_served(kind: str) -> None:
    """Adding a metric is one field of ``Metrics`` and one row of its table: a row whose field
    is missing (or mistyped) fails here, not at the first scrape."""
    from prometheus_client import generate_latest

    from archiver.metrics import METRICS, Metrics, registry

    types, _samples = exposed(generate_latest(registry(Metrics())).decode())
    rows = [row for row in METRICS if row.kind == kind]
    assert rows
    for row in rows:
        assert types.get(PREFIX + row.name) == kind, row
