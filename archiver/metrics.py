"""The long-running worker's counters, and their Prometheus text exposition (``GET /metrics``).

Every name starts with ``exotel_archiver_``. Counters only grow while the process lives (they
start at 0 at each start, as Prometheus expects); gauges are read when scraped:

=================================================  ===========================================
``calls_total{outcome}``                            calls looked at, by outcome (archived,
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
``skipped_items_total{reason}``                     malformed v1 listing items skipped (each
                                                    once per process): invalid_sid,
                                                    invalid_date_created, not_an_object
``active_poll_truncated_total{reason}``             active-call polls cut short: page_cap
                                                    (over 1,000 in progress), no_progress
                                                    (the API ignores ``offset``)
``stuck_calls_total``                               calls reported stuck (not ready for
                                                    ``stuck_after``)
``stuck_calls``                                     calls stuck now (checked rarely, kept)
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

PREFIX = "exotel_archiver_"

_HELP = {
    "calls_total": ("counter", "Calls looked at, by outcome."),
    "bytes_archived_total": ("counter", "Bytes of the objects of archived calls."),
    "failures_total": ("counter", "Failed calls, by kind of error."),
    "url_refreshes_total": ("counter", "Fresh recording URLs fetched (each an API request)."),
    "api_requests_total": ("counter", "Exotel API requests sent."),
    "api_rate_limited_total": ("counter", "Exotel API requests answered 429."),
    "calls_discovered_total": ("counter", "Calls found, by how."),
    "webhook_requests_total": ("counter", "StatusCallback requests, by result."),
    "sweeps_total": ("counter", "Reconciliation sweeps completed."),
    "sweep_errors_total": ("counter", "Reconciliation sweeps that failed."),
    "poll_errors_total": ("counter", "Active-call polls that failed."),
    "skipped_items_total": ("counter", "Malformed v1 listing items skipped, by reason."),
    "active_poll_truncated_total": ("counter", "Active-call polls cut short, by reason."),
    "stuck_calls_total": ("counter", "Calls reported stuck (not ready for stuck_after)."),
    "queue_depth": ("gauge", "Calls waiting to be looked at."),
    "in_flight": ("gauge", "Calls being archived now."),
    "watched_active_calls": ("gauge", "Calls in progress being watched."),
    "stuck_calls": ("gauge", "Calls stuck now: not ready for stuck_after, checked rarely."),
    "failed_calls": ("gauge", "Calls failed in the ledger, looked at again after a backoff."),
    "oldest_unarchived_call_age_seconds": ("gauge", "Age of the oldest call not yet archived."),
    "source_retention_at_risk": (
        "gauge",
        "1 when the oldest call not yet archived is close to Exotel's retention window.",
    ),
    "up_since_seconds": ("gauge", "When this worker started (Unix time)."),
}


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

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """(name without prefix, labels, value) of every sample."""
        out: list[tuple[str, dict[str, str], float]] = []
        for name, counter, label in (
            ("calls_total", self.calls, "outcome"),
            ("failures_total", self.failures, "reason"),
            ("calls_discovered_total", self.discovered, "source"),
            ("webhook_requests_total", self.webhook, "result"),
            ("skipped_items_total", self.skipped_items, "reason"),
            ("active_poll_truncated_total", self.active_poll_truncated, "reason"),
        ):
            out += [(name, {label: key}, value) for key, value in sorted(counter.items())]
        out += [
            ("bytes_archived_total", {}, self.bytes_archived),
            ("url_refreshes_total", {}, self.url_refreshes),
            ("api_requests_total", {}, self.api_requests),
            ("api_rate_limited_total", {}, self.api_rate_limited),
            ("sweeps_total", {}, self.sweeps),
            ("sweep_errors_total", {}, self.sweep_errors),
            ("poll_errors_total", {}, self.poll_errors),
            ("stuck_calls_total", {}, self.stuck_calls_total),
            ("stuck_calls", {}, self.stuck_calls),
            ("failed_calls", {}, self.failed_calls),
            ("queue_depth", {}, self.queue_depth),
            ("in_flight", {}, self.in_flight),
            ("watched_active_calls", {}, self.watched),
            ("oldest_unarchived_call_age_seconds", {}, round(self.oldest_unarchived_age, 3)),
            ("source_retention_at_risk", {}, int(self.retention_at_risk)),
            ("up_since_seconds", {}, round(self.started, 3)),
        ]
        return out

    def render(self) -> str:
        """The Prometheus text format (version 0.0.4)."""
        by_name: dict[str, list[str]] = {name: [] for name in _HELP}
        for name, labels, value in self.samples():
            shown = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            series = f"{PREFIX}{name}{{{shown}}}" if shown else f"{PREFIX}{name}"
            by_name[name].append(f"{series} {_number(value)}")
        lines: list[str] = []
        for name, (kind, text) in _HELP.items():
            lines += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}"]
            lines += by_name[name]
        return "\n".join(lines) + "\n"


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


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
