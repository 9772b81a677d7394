"""The shared limiter: never more than `limit` starts in any window of `period` seconds."""

from __future__ import annotations

import asyncio
import time

from archiver.ratelimit import RateLimiter


async def test_no_window_holds_more_than_the_limit() -> None:
    limiter = RateLimiter(5, period=0.5)
    starts: list[float] = []

    async def request() -> None:
        await limiter.acquire()
        starts.append(time.monotonic())

    await asyncio.gather(*(request() for _ in range(12)))
    assert len(starts) == 12
    starts.sort()
    for i in range(len(starts) - 5):
        # the 6th start after any start is at least one period later
        assert starts[i + 5] - starts[i] >= 0.5 - 0.01
    assert limiter.acquired == 12 and limiter.waited > 0


async def test_under_the_limit_there_is_no_wait() -> None:
    limiter = RateLimiter(200, period=60)
    t0 = time.monotonic()
    for _ in range(50):
        await limiter.acquire()
    assert time.monotonic() - t0 < 0.5
    assert limiter.waited == 0
