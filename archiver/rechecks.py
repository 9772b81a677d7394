"""When the long-running worker looks at a call again, after a look that did not archive it.

``Rechecks`` is the worker's policy for that (``archiver.daemon.Daemon`` owns one and puts the
delays it returns in its schedule):

* **not ready** — a call still active, or whose voice log is processing, is looked at again
  after ``recheck_interval``, then twice as long each time up to ``recheck_max``; once
  ``stuck_after`` has passed since its creation (the ledger's creation time, so a restart does
  not reset it; since this worker first saw it not ready when the ledger has none) it is
  reported stuck — one warning, ``stuck_calls_total`` and the ``stuck_calls_now`` gauge — and looked
  at every ``stuck_recheck``, never dropped. A call the active-calls poll lists in progress for
  ``stuck_after`` (from its ``start_time``) is reported stuck alike (``check_in_progress``),
  and watched as before: that costs nothing extra;
* **no recording** — a terminal call without recordings is looked at again every
  ``recheck_interval`` until ``recording_grace`` has passed since it was first seen so (Exotel
  adds recordings minutes after the end);
* **failed** — a failure that may pass (retries exhausted on a 5xx, a timeout) is tried again
  with backoff, ``FAILURE_RETRIES`` times. Then a failed call is left to the sweeps, which list
  it again and again but look at it (one call-details request) only once its backoff has
  passed (``failed_due``): 15 min doubling to hourly for a failure that may pass
  (``RETRYABLE_BACKOFF``), 1 h doubling to every 6 h for one that will not (``FAILED_BACKOFF``:
  bad_url, storage_rejected, internal_error...), daily once it has failed for a day; a look
  after a backoff is one look (``one_look``: not five quick retries again). The backoff is in
  the ledger (``Ledger.defer_failed``), so a restart does not reset it; the call stays
  ``failed`` there.

Its log lines go to the worker's logger (``archiver.daemon``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from archiver.config import DaemonSettings
from archiver.exotel.listing import ActiveCall
from archiver.ledger import Ledger
from archiver.metrics import Metrics
from archiver.report import ALREADY_ARCHIVED, ARCHIVED, FAILED, NO_RECORDING, NOT_READY, CallResult

log = logging.getLogger("archiver.daemon")

NO_RECORDING_YET = "terminal without recordings yet: looked at again"
"""The ledger's detail of a call held not ready while its recordings may still come (the
worker's ``recording_grace``; ``archive --wait`` too)."""

FAILURE_RETRIES = 5


@dataclass(frozen=True)
class Backoff:
    """How long a failed call waits before a sweep may look at it again: ``first`` seconds
    after its first failure in a row, twice as long after each further one, ``cap`` at most."""

    first: float
    cap: float

    def delay(self, failures: int) -> float:
        return float(min(self.first * 2 ** min(max(failures - 1, 0), 30), self.cap))


RETRYABLE_BACKOFF = Backoff(first=900.0, cap=3600.0)
"""A failure that may pass (5xx, timeouts: its five quick retries done): 15 min, 30 min, then
hourly — a storm that has passed is caught up within the hour."""
FAILED_BACKOFF = Backoff(first=3600.0, cap=6 * 3600.0)
"""A failure that will not pass by itself (bad_url, unsafe_address, storage_rejected,
recording_unavailable, internal_error...): 1 h, 2 h, 4 h, then every 6 h."""
FAILED_DAILY_AFTER = 86400.0
FAILED_DAILY = 86400.0
"""A call failing for ``FAILED_DAILY_AFTER`` seconds (since its first failure in a row) is
looked at once every ``FAILED_DAILY`` seconds, whatever its kind (while the sweep's lookback
still lists it)."""


class Rechecks:
    """The worker's bookkeeping of calls it will look at again; see the module docstring."""

    def __init__(self, config: DaemonSettings, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._no_recording_since: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._not_ready_looks: dict[str, int] = {}
        """Call SID -> how many times this worker found it still active or processing."""
        self._not_ready_since: dict[str, float] = {}
        """Call SID -> when (Unix time) its stuck age starts: its start as the active-calls list
        says, else its creation as the ledger has it."""
        self._stuck: set[str] = set()

    @property
    def stuck(self) -> int:
        """How many calls are reported stuck now (the ``stuck_calls_now`` gauge)."""
        return len(self._stuck)

    def after(self, result: CallResult, ledger: Ledger) -> float | None:
        """Seconds until the call of ``result`` is looked at again; None: not by the worker's
        schedule (done, or left to the sweeps)."""
        sid, outcome, now = result.call_sid, result.outcome, time.monotonic()
        recheck = self.config.recheck_interval
        if outcome != NOT_READY:
            self._ready(sid)
        if outcome in (ARCHIVED, ALREADY_ARCHIVED):
            self._forget(sid)
        elif outcome == NOT_READY:
            return self._not_ready_delay(sid, ledger)
        elif outcome == NO_RECORDING:
            first = self._no_recording_since.setdefault(sid, now)
            if now - first < self.config.recording_grace:
                ledger.set_call(sid, NOT_READY, detail=NO_RECORDING_YET)
                return recheck
            log.info("call %s has no recording", sid)
            self._forget(sid)
        elif outcome == FAILED:
            tries = self._failures.get(sid, 0) + 1
            if result.retryable and tries <= FAILURE_RETRIES:
                self._failures[sid] = tries
                return float(recheck * 2 ** (tries - 1))
            self._forget(sid)
            self._defer_failed(result, ledger)
        return None

    def failed_due(self, sid: str, ledger: Ledger) -> datetime | None:
        """When the failed call ``sid`` may be looked at again; None: now (no backoff kept,
        e.g. failed by ``archive`` or an older version)."""
        state = ledger.retry_state(sid)
        if state is None or state.retry_at is None:
            return None
        try:
            return datetime.fromisoformat(state.retry_at)
        except ValueError:
            return None

    def one_look(self, sid: str) -> None:
        """The failed call ``sid`` is back from its backoff: one look, not the quick retries
        again (a failure now defers it again at once)."""
        self._failures[sid] = FAILURE_RETRIES

    def check_in_progress(self, call: ActiveCall, ledger: Ledger) -> None:
        """A call listed in progress for ``stuck_after`` (from its start as the list says, else
        its creation as the ledger has it, else since this worker first saw it) is reported
        stuck once: one warning, ``stuck_calls_total`` and the ``stuck_calls_now`` gauge. It is
        watched as before (the poll happens anyway) and archived once it is no longer listed."""
        sid, now = call.sid, time.time()
        if sid in self._stuck:
            return
        if sid not in self._not_ready_since:
            started = call.start_time.timestamp() if call.start_time else None
            self._not_ready_since[sid] = (
                min(started, now) if started else _epoch(ledger.call_created(sid), now)
            )
        age = now - self._not_ready_since[sid]
        if age < self.config.stuck_after:
            return
        self._mark_stuck(sid)
        log.warning(
            "call %s has been listed in progress by Exotel for %.1f h: reported stuck. It is "
            "watched as before (at no extra cost) and archived once it ends; look it up in "
            "Exotel's dashboard",
            sid,
            age / 3600,
        )

    def _mark_stuck(self, sid: str) -> None:
        """Count ``sid`` as stuck (``stuck_calls_total``, the ``stuck_calls_now`` gauge)."""
        self._stuck.add(sid)
        self.metrics.stuck_calls_total += 1
        self.metrics.stuck_calls = len(self._stuck)

    def _defer_failed(self, result: CallResult, ledger: Ledger) -> None:
        """Given up on for now: the call stays failed in the ledger, with when a sweep may
        look at it again (``RETRYABLE_BACKOFF``/``FAILED_BACKOFF``, daily once it has failed
        for a day). The ledger keeps it, so a restart does not make it due at once."""
        sid = result.call_sid
        now = datetime.now(UTC)
        before = ledger.retry_state(sid)
        if before is None:
            return  # not in the ledger (an invalid call SID): nothing to look at again
        since = datetime.fromisoformat(before.failed_since) if before.failed_since else now
        failing_for = (now - since).total_seconds()
        failures = before.failures + 1
        policy = RETRYABLE_BACKOFF if result.retryable else FAILED_BACKOFF
        wait = FAILED_DAILY if failing_for >= FAILED_DAILY_AFTER else policy.delay(failures)
        ledger.defer_failed(sid, now + timedelta(seconds=wait), now=now)
        log.info(
            "call %s stays failed in the ledger (%s, %d failure(s) in a row): a sweep looks at "
            "it again in %s at the earliest",
            sid,
            result.reason or "unknown",
            failures,
            duration(wait),
        )

    def _forget(self, sid: str) -> None:
        self._no_recording_since.pop(sid, None)
        self._failures.pop(sid, None)
        self._ready(sid)

    def _ready(self, sid: str) -> None:
        """The call is no longer active or processing: its backoff and stuck state end."""
        self._not_ready_looks.pop(sid, None)
        self._not_ready_since.pop(sid, None)
        if sid in self._stuck:
            self._stuck.discard(sid)
            self.metrics.stuck_calls = len(self._stuck)

    def _not_ready_delay(self, sid: str, ledger: Ledger) -> float:
        """Seconds until a call still active or processing is looked at again: doubling from
        ``recheck_interval`` up to ``recheck_max``; ``stuck_recheck`` once it is stuck."""
        looks = self._not_ready_looks.get(sid, 0)
        self._not_ready_looks[sid] = looks + 1
        now = time.time()
        if sid not in self._not_ready_since:
            self._not_ready_since[sid] = _epoch(ledger.call_created(sid), now)
        age = now - self._not_ready_since[sid]
        config = self.config
        if age < config.stuck_after:
            cap = max(config.recheck_max, config.recheck_interval)
            return float(min(config.recheck_interval * 2 ** min(looks, 30), cap))
        if sid not in self._stuck:
            self._mark_stuck(sid)
            log.warning(
                "call %s is still not ready %.1f h after it was created (Exotel says it is "
                "active, or its voice log is processing): reported stuck. It stays not ready "
                "in the ledger and is looked at every %g min from now on; look it up in "
                "Exotel's dashboard",
                sid,
                age / 3600,
                config.stuck_recheck / 60,
            )
        return config.stuck_recheck


def duration(seconds: float) -> str:
    """A wait as an operator reads it: ``45 s``, ``15 min``, ``1 h``, ``1.5 h``, ``1 day``."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 3570:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} day(s)"


def _epoch(created: str | None, default: float) -> float:
    """A ledger's creation time (ISO 8601 with an offset) as Unix time, not after ``default``;
    ``default`` when it is unknown or unreadable."""
    if not created:
        return default
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        return default
    return default if when.tzinfo is None else min(when.timestamp(), default)
