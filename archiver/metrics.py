"""The long-running worker's counters and gauges, served as Prometheus metrics (``GET /metrics``).

The worker counts in a plain ``Metrics`` dataclass (one event loop updates it:
``metrics.calls[outcome] += 1``). ``registry(metrics)`` builds a prometheus-client
``CollectorRegistry`` for it — one per worker, never the library's global one — whose collector
reads the fields when scraped, following the ``METRICS`` table (adding a metric is one field and
one row); the same registry has the standard ``process_*`` metrics (CPU seconds, resident and
virtual memory, open and maximum file descriptors, start time) and ``python_info``.

Every name of ours starts with ``exotel_archiver_``. Counters only grow while the process lives
(they start at 0 at each start, as Prometheus expects); gauges are read when scraped:

=================================================  ===========================================
``calls_total{outcome}``                            calls looked at, by outcome (archived,
                                                    rescued: recording stored from the v1
                                                    listing, v3 details to come;
                                                    already_archived, not_ready, no_recording,
                                                    failed)
``bytes_archived_total``                            bytes of the objects of archived calls
``failures_total{reason}``                          failed calls, by error kind
``url_refreshes_total``                             fresh recording URLs fetched
``api_requests_total`` / ``api_rate_limited_total`` Exotel API requests sent / answered 429
``calls_discovered_total{source}``                  calls found by: active, sweep, webhook,
                                                    restart
``webhook_requests_total{result}``                  StatusCallbacks: accepted, duplicate,
                                                    unauthorized, too_large, bad_request
``sweeps_total`` / ``sweep_errors_total``           reconciliation sweeps done / failed
``poll_errors_total``                               active-call polls that failed
``skipped_items_total{reason}``                     malformed listing items skipped (each
                                                    once per process): invalid_sid,
                                                    invalid_date_created, not_an_object
``active_poll_truncated_total{reason}``             active-call polls cut short: page_cap
                                                    (over 1,000 in progress), no_progress
                                                    (the API ignores ``offset``)
``stuck_calls_total``                               calls reported stuck (not ready, or listed
                                                    in progress, for ``stuck_after``)
``stuck_calls_now``                                 calls stuck now (checked rarely, kept)
``failed_calls``                                    calls failed in the ledger (each looked at
                                                    again after its backoff), as of the last
                                                    sweep
``queue_depth``                                     calls waiting to be looked at (due or later)
``in_flight``                                       calls being archived now
``watched_active_calls``                            calls in progress being watched
``oldest_unarchived_call_age_seconds``              age of the oldest call not yet archived
``source_retention_at_risk``                        1 when that age is within the warning margin
                                                    of Exotel's retention (calls about to be lost)
``up_since_seconds``                                start time (Unix seconds)
=================================================  ===========================================
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

PREFIX = "exotel_archiver_"


@dataclass(frozen=True)
class Row:
    """One metric: its name as exposed (without the prefix), type, help text, the ``Metrics``
    field it reads and, for a ``Counter[str]`` field, the label its keys go in."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    field: str
    label: str | None = None


METRICS = (
    Row("calls_total", "counter", "Calls looked at, by outcome.", "calls", "outcome"),
    Row("bytes_archived_total", "counter", "Bytes of the objects of archived calls.",
        "bytes_archived"),
    Row("failures_total", "counter", "Failed calls, by kind of error.", "failures", "reason"),
    Row("url_refreshes_total", "counter", "Fresh recording URLs fetched (each an API request).",
        "url_refreshes"),
    Row("api_requests_total", "counter", "Exotel API requests sent.", "api_requests"),
    Row("api_rate_limited_total", "counter", "Exotel API requests answered 429.",
        "api_rate_limited"),
    Row("calls_discovered_total", "counter", "Calls found, by how.", "discovered", "source"),
    Row("webhook_requests_total", "counter", "StatusCallback requests, by result.", "webhook",
        "result"),
    Row("sweeps_total", "counter", "Reconciliation sweeps completed.", "sweeps"),
    Row("sweep_errors_total", "counter", "Reconciliation sweeps that failed.", "sweep_errors"),
    Row("poll_errors_total", "counter", "Active-call polls that failed.", "poll_errors"),
    Row("skipped_items_total", "counter",
        "Malformed listing items skipped (invalid Sid or DateCreated...), by reason.",
        "skipped_items", "reason"),
    Row("stuck_calls_total", "counter",
        "Calls reported stuck: not ready, or listed in progress, for stuck_after.",
        "stuck_calls_total"),
    Row("active_poll_truncated_total", "counter",
        "Active-call polls cut short (the page cap, or a page with no new call), by reason.",
        "active_poll_truncated", "reason"),
    Row("queue_depth", "gauge", "Calls waiting to be looked at.", "queue_depth"),
    Row("in_flight", "gauge", "Calls being archived now.", "in_flight"),
    Row("watched_active_calls", "gauge", "Calls in progress being watched.", "watched"),
    Row("stuck_calls_now", "gauge", "Calls stuck now (still checked, rarely).", "stuck_calls"),
    Row("failed_calls", "gauge", "Calls failed in the ledger, looked at again after a backoff.",
        "failed_calls"),
    Row("oldest_unarchived_call_age_seconds", "gauge", "Age of the oldest call not yet archived.",
        "oldest_unarchived_age"),
    Row("source_retention_at_risk", "gauge",
        "1 when the oldest call not yet archived is close to Exotel's retention window.",
        "retention_at_risk"),
    Row("up_since_seconds", "gauge", "When this worker started (Unix time).", "started"),
)  # fmt: skip
"""Every metric of ours, in the order served. A new one: a field of ``Metrics`` and a row."""


@dataclass
class Metrics:
    """Counters and gauges of one worker process (plain numbers: one event loop updates them)."""

    calls: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    discovered: Counter[str] = field(default_factory=Counter)
    webhook: Counter[str] = field(default_factory=Counter)
    skipped_items: Counter[str] = field(default_factory=Counter)
    active_poll_truncated: Counter[str] = field(default_factory=Counter)
    bytes_archived: int = 0
    url_refreshes: int = 0
    api_requests: int = 0
    api_rate_limited: int = 0
    sweeps: int = 0
    sweep_errors: int = 0
    poll_errors: int = 0
    stuck_calls_total: int = 0
    stuck_calls: int = 0
    failed_calls: int = 0
    queue_depth: int = 0
    in_flight: int = 0
    watched: int = 0
    oldest_unarchived_age: float = 0.0
    retention_at_risk: bool = False
    started: float = field(default_factory=time.time)


class MetricsCollector:
    """A prometheus-client collector reading a ``Metrics`` when scraped (``refresh()`` first,
    to bring the gauges up to date)."""

    def __init__(self, metrics: Metrics, refresh: Callable[[], None] | None = None) -> None:
        self._metrics = metrics
        self._refresh = refresh

    def collect(self) -> Iterator[Metric]:
        if self._refresh is not None:
            self._refresh()
        return self.describe()

    def describe(self) -> Iterator[Metric]:
        """The families with their current values (the registry checks names with it)."""
        for row in METRICS:
            family = CounterMetricFamily if row.kind == "counter" else GaugeMetricFamily
            value = getattr(self._metrics, row.field)
            if row.label is None:
                yield family(PREFIX + row.name, row.help, value=float(value))
                continue
            labelled = family(PREFIX + row.name, row.help, labels=[row.label])
            for key, count in sorted(value.items()):
                labelled.add_metric([str(key)], float(count))
            yield labelled


class _ProcessCollector(ProcessCollector):
    """prometheus-client's ProcessCollector, which gives up when ``/proc/stat`` (the boot time)
    cannot be read — as under the units' ``ProcSubset=pid``. The boot time then comes from the
    clocks instead; the process's own entries (``/proc/self``) stay readable."""

    def _boot_time(self) -> float:
        try:
            found = super()._boot_time()  # type: ignore[no-untyped-call]
        except OSError:
            found = None
        if found:
            return float(found)
        boottime = getattr(time, "CLOCK_BOOTTIME", None)
        return time.time() - time.clock_gettime(boottime) if boottime is not None else 0.0


def registry(
    metrics: Metrics, refresh: Callable[[], None] | None = None, *, proc: str = "/proc"
) -> CollectorRegistry:
    """A registry of its own for ``metrics`` (refreshed by ``refresh`` at each scrape), with
    the standard process and platform metrics. ``proc``: where ``/proc`` is (tests)."""
    reg = CollectorRegistry()
    reg.register(MetricsCollector(metrics, refresh))
    _ProcessCollector(proc=proc, registry=reg)
    PlatformCollector(registry=reg)
    return reg


def oldest_age(created_times: Iterable[str | None], now: datetime) -> float:
    """Seconds since the earliest of ``created_times`` (ISO 8601 with offsets; unknown or
    unreadable ones are skipped); 0 when there is none."""
    ages = [0.0]
    for created in created_times:
        if not created:
            continue
        try:
            ages.append((now - datetime.fromisoformat(created)).total_seconds())
        except (ValueError, TypeError):
            continue
    return max(ages)
