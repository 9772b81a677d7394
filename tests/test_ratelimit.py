"""The shared limiter: never more than `limit` requests in any window of `period` seconds, as
the server counts them (between each request's start and its end)."""

from __future__ import annotations

import asyncio
import time

from archiver.ratelimit import RateLimiter


async def test_no_window_holds_more_than_the_limit() -> None:
    limiter = RateLimiter(5, period=0.5)
    starts: list[float] = []

    async def request() -> None:
        async with limiter.slot():
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
        async with limiter.slot():
            pass
    assert time.monotonic() - t0 < 0.5
    assert limiter.waited == 0


async def test_the_window_counts_from_when_a_request_ended() -> None:
    """A slow request holds its slot until it ends: the next request `limit` later starts a full
    period after that end, so no window at the server can hold more than `limit` arrivals."""
    limiter = RateLimiter(2, period=0.3)
    events: list[tuple[str, float]] = []

    async def request(name: str, duration: float) -> None:
        async with limiter.slot():
            events.append((f"{name} start", time.monotonic()))
            await asyncio.sleep(duration)
            events.append((f"{name} end", time.monotonic()))

    await asyncio.gather(request("slow", 0.2), request("fast", 0.0))
    await request("third", 0.0)
    times = dict(events)
    assert times["third start"] - times["slow end"] >= 0.3 - 0.01  # not from the slow start


async def test_a_following_limiter_continues_the_same_budget() -> None:
    first = RateLimiter(3, period=0.4)
    for _ in range(3):
        async with first.slot():
            pass
    ended = time.monotonic()
    second = first.following()  # e.g. a backfill's archiving after its listing
    async with second.slot():
        started = time.monotonic()
    assert started - ended >= 0.4 - 0.02 and second.waited > 0
