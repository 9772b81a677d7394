"""What the long-running worker reports about listings it could not use whole.

``DiscoveryReports`` is what ``archiver.daemon.Daemon`` hands the listings
(``archiver.exotel.listing``) as their callbacks:

* ``skip`` — a malformed item of a listing (v1 sweep or active-call poll) is counted
  (``skipped_items_total{reason}``) and named in one warning per item, however often the sweeps
  list the same past again (the last ``SKIP_MEMORY`` items are remembered);
* ``poll_truncated`` — an active-call poll cut short (``MAX_ACTIVE_PAGES`` read, or a page that
  brought nothing new) is counted (``active_poll_truncated_total{reason}``) and warned about at
  most every ``TRUNCATED_WARN_EVERY`` seconds of each kind.

Its log lines go to the worker's logger (``archiver.daemon``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from archiver.exotel.listing import SkippedItem
from archiver.metrics import Metrics

log = logging.getLogger("archiver.daemon")

SKIP_MEMORY = 10_000
"""Malformed listing items remembered, so each is counted and warned about once."""
TRUNCATED_WARN_EVERY = 3600.0
"""Seconds between two warnings about active-call polls cut short (of one kind)."""


class DiscoveryReports:
    """Counts and warnings about listing items skipped and polls cut short."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._skipped: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._warned_truncated: dict[str, float] = {}

    def skip(self, item: SkippedItem) -> None:
        """A malformed listing item: counted and warned about once per item (sweeps list the
        same past again and again)."""
        key = (item.reason, item.sid, item.problem)
        if key in self._skipped:
            return
        self._skipped[key] = None
        if len(self._skipped) > SKIP_MEMORY:
            self._skipped.popitem(last=False)
        self.metrics.skipped_items[item.reason] += 1
        hint = (
            "; once checked, it can be archived by SID with `exotel-archiver archive "
            f"{item.sid.strip(chr(34))}`"
            if item.named
            else ""
        )
        log.warning(
            "%s. Counted in skipped_items_total{reason=%s}; the rest of the listing goes on%s",
            item.line(),
            item.reason,
            hint,
        )

    def poll_truncated(self, reason: str, message: str) -> None:
        """An active-call poll was cut short: count it; warn at most hourly of each kind."""
        self.metrics.active_poll_truncated[reason] += 1
        now = time.monotonic()
        last = self._warned_truncated.get(reason)
        if last is None or now - last >= TRUNCATED_WARN_EVERY:
            self._warned_truncated[reason] = now
            log.warning(
                "polling active calls: %s (counted in active_poll_truncated_total; this warning "
                "comes again in %g min at the earliest)",
                message,
                TRUNCATED_WARN_EVERY / 60,
            )
