"""When to look at each call next: the long-running worker's one schedule.

A call SID is in at most one of two places: *waiting* (with the time it is due) or *in flight*
(a worker has it). ``add`` never moves a call's time later and ignores a call in flight, so
any number of sources may report the same call without it being archived twice or at once by
two workers. ``take`` hands out due calls, earliest first; ``next_due`` waits for one (or for
``wake()``, which a stopping worker uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Schedule:
    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # may hold stale entries; _due is the truth
        self.in_flight: set[str] = set()
        self._changed = asyncio.Event()

    def __contains__(self, sid: object) -> bool:
        return sid in self._due or sid in self.in_flight

    @property
    def waiting(self) -> int:
        return len(self._due)

    def add(self, sid: str, delay: float = 0.0) -> None:
        """Look at ``sid`` in ``delay`` seconds (or sooner, if it is already due sooner)."""
        if sid in self.in_flight:
            return
        due = time.monotonic() + delay
        if sid in self._due and self._due[sid] <= due:
            return
        self._due[sid] = due
        heapq.heappush(self._heap, (due, sid))
        self._changed.set()

    def remove(self, sid: str) -> None:
        """Stop waiting for ``sid`` (a call in flight is not affected)."""
        self._due.pop(sid, None)

    def take(self) -> tuple[str | None, float]:
        """The next due call, now in flight; or None and the seconds until the next one."""
        now = time.monotonic()
        while self._heap:
            due, sid = self._heap[0]
            if self._due.get(sid) != due:  # rescheduled or removed since: a stale entry
                heapq.heappop(self._heap)
                continue
            if due > now:
                return None, due - now
            heapq.heappop(self._heap)
            del self._due[sid]
            self.in_flight.add(sid)
            return sid, 0.0
        return None, 3600.0

    async def next_due(self, *, longest: float = 60.0) -> str | None:
        """Wait until a call is due (and take it), or until ``wake()``; None when woken."""
        sid, wait = self.take()
        if sid is None:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(wait, longest))
        return sid

    def wake(self) -> None:
        """Wake every waiting ``next_due`` (to see a new call, or that the worker stops)."""
        self._changed.set()

    @contextmanager
    def working_on(self, sid: str) -> Iterator[None]:
        """Mark ``sid`` as no longer in flight when the block ends, however it ends."""
        try:
            yield
        finally:
            self.in_flight.discard(sid)
