"""The one rate limiter that every Exotel API request of a worker passes through.

Exotel allows about 200 API requests per minute per account and answers 429 beyond that. The
limiter keeps the times of the last ``limit`` requests and lets a new one start only when the
oldest of them is at least ``period`` seconds old: there are never more than ``limit`` requests
in any window of ``period`` seconds, which is exactly what Exotel counts. Waiters are served in
arrival order. Recording downloads from pre-signed URLs are not API requests and do not pass here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    """At most ``limit`` acquisitions in any ``period`` seconds (a sliding-window log)."""

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
        self._starts: deque[float] = deque()
        self._lock = asyncio.Lock()
        self.acquired = 0
        """How many requests have passed, for reports."""
        self.waited = 0.0
        """Seconds spent waiting for the window, summed over all requests."""

    async def acquire(self) -> None:
        async with self._lock:  # one waiter at a time, in arrival order
            while True:
                now = self._clock()
                while self._starts and now - self._starts[0] >= self.period:
                    self._starts.popleft()
                if len(self._starts) < self.limit:
                    self._starts.append(now)
                    self.acquired += 1
                    return
                delay = self.period - (now - self._starts[0])
                self.waited += delay
                await asyncio.sleep(delay)
