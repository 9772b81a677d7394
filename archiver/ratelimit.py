"""The one rate limiter that every Exotel API request of a worker passes through.

Exotel allows about 200 API requests per minute per account and answers 429 beyond that, counting
requests as they *arrive*. The limiter keeps one slot per recent request, in order, and lets a
new request start only when fewer than ``limit`` slots are held, or when the oldest one was
*finished* (its answer received, or its failure seen) at least ``period`` seconds ago. A request
arrives at Exotel after it starts and before it finishes, so any two requests ``limit`` apart
arrive at least ``period`` apart: Exotel never sees more than ``limit`` in any window. (Counting
from the start instead would let the server see a few more whenever an early request travels
slower than a later one.) Waiters are served in arrival order. Recording downloads from
pre-signed URLs are not API requests.

    async with limiter.slot():
        ... one API request ...

A *lane* of work may be held to a share of the budget: ``limiter.share("enrich", 100)`` makes
every request sent from a task inside ``lane("enrich")`` pass a second limiter of 100 a minute
first, then this one. The lane is a context variable, so the tasks of one worker (the rescue's
listing, the enrichment of rescued calls, the calls archived through v3) share one limiter and
one client without passing the lane to every call.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

_LANE: contextvars.ContextVar[str] = contextvars.ContextVar("archiver_lane", default="")


@contextmanager
def lane(name: str) -> Iterator[None]:
    """Requests sent from this context (and tasks it starts) belong to lane ``name``."""
    token = _LANE.set(name)
    try:
        yield
    finally:
        _LANE.reset(token)


class RateLimiter:
    """At most ``limit`` requests arriving in any ``period`` seconds."""

    def __init__(
        self,
        limit: int,
        period: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._clock = clock
        self._slots: deque[list[float]] = deque()
        """One ``[finished_at]`` per recent request, oldest first; ``inf`` while in flight."""
        self._lock = asyncio.Lock()
        self.acquired = 0
        """How many requests have passed, for reports."""
        self.waited = 0.0
        """Seconds spent waiting for the window, summed over all requests."""
        self._shares: dict[str, RateLimiter] = {}

    def share(self, name: str, limit: int) -> RateLimiter:
        """Hold lane ``name`` to ``limit`` requests a ``period`` (within this limiter's own);
        returns the lane's limiter (its ``acquired`` counts the lane's requests)."""
        limiter = RateLimiter(max(1, min(limit, self.limit)), self.period, clock=self._clock)
        self._shares[name] = limiter
        return limiter

    def following(self) -> RateLimiter:
        """A new limiter (for a new event loop) that remembers this one's recent requests, so
        two phases of one command (a backfill's listing, then its archiving) share one budget."""
        successor = RateLimiter(self.limit, self.period, clock=self._clock)
        now = self._clock()
        successor._slots.extend([min(s[0], now)] for s in self._slots)
        return successor

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for one request: wait for the window (the lane's share first, if the
        current lane has one), and date the slot when it ends."""
        share = self._shares.get(_LANE.get())
        if share is None:
            async with self._own_slot():
                yield
            return
        async with share.slot(), self._own_slot():
            yield

    @asynccontextmanager
    async def _own_slot(self) -> AsyncIterator[None]:
        slot = await self._acquire()
        try:
            yield
        finally:
            slot[0] = self._clock()

    async def _acquire(self) -> list[float]:
        async with self._lock:  # one waiter at a time, in arrival order
            while True:
                now = self._clock()
                while self._slots and now - self._slots[0][0] >= self.period:
                    self._slots.popleft()
                if len(self._slots) < self.limit:
                    slot = [math.inf]
                    self._slots.append(slot)
                    self.acquired += 1
                    return slot
                oldest = self._slots[0][0]
                # In flight: look again soon; finished: wait until it leaves the window.
                delay = 0.05 if oldest == math.inf else self.period - (now - oldest)
                self.waited += delay
                await asyncio.sleep(delay)
