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


async def test_a_lane_is_held_to_its_share_and_counts_in_the_whole() -> None:
    """``share("enrich", 2)`` of a limit of 6: the lane's requests never more than 2 a period,
    the others as many as the whole leaves; every request counts in the whole."""
    from archiver.ratelimit import lane

    limiter = RateLimiter(6, period=0.4)
    share = limiter.share("enrich", 2)
    starts: dict[str, list[float]] = {"enrich": [], "other": []}

    async def request(name: str) -> None:
        async with limiter.slot():
            starts[name].append(time.monotonic())

    async def enriching() -> None:
        with lane("enrich"):
            await asyncio.gather(*(request("enrich") for _ in range(6)))

    t0 = time.monotonic()
    await asyncio.gather(enriching(), *(request("other") for _ in range(4)))
    assert share.acquired == 6 and limiter.acquired == 10
    lane_starts = sorted(starts["enrich"])
    for i in range(len(lane_starts) - 2):
        assert lane_starts[i + 2] - lane_starts[i] >= 0.4 - 0.01  # 2 a period, no more
    assert all(s - t0 < 0.2 for s in starts["other"])  # the others did not wait behind it
    everything = sorted(starts["enrich"] + starts["other"])
    for i in range(len(everything) - 6):
        assert everything[i + 6] - everything[i] >= 0.4 - 0.01  # the whole held too
