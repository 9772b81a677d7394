"""``exotel-archiver demo``: the whole product in one command, with no account and no bucket.

It starts the built-in Exotel simulator on loopback, fills it with a day of calls (yesterday, in
IST), lists them through the v1 Bulk Call Details API as a backfill would, and archives every
one of them with the real worker — the same code path as
``exotel-archiver archive`` — into a local directory::

    exotel-archive-demo/
        recordings/2026/11/21/<call_sid>/recording-1.mp3    the archived objects
        state/manifest.jsonl                                the checksum manifest
        state/ledger.sqlite3                                the worker's ledger

Running it again archives nothing twice: the simulator is seeded, so the calls are the same, and
the ledger already has them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, time, timedelta
from pathlib import Path

from archiver.archive import archive_calls
from archiver.config import load_settings
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import list_calls
from archiver.exotel.models import IST
from archiver.ratelimit import RateLimiter
from archiver.report import CallResult, Report
from archiver.simulator import Simulator, serve

DEMO_ACCOUNT = "simaccount"
"""The simulated Exotel account the demo archives (its destination's identity names it)."""


async def run_demo(
    directory: Path,
    *,
    calls: int = 24,
    seed: int = 1,
    sizes: tuple[int, int] = (32 * 1024, 256 * 1024),
    on_result: Callable[[CallResult], None] | None = None,
) -> Report:
    """Archive a simulated day into ``directory``; returns the run's report."""
    directory = directory.resolve()
    sim = Simulator(seed=seed, account_sid=DEMO_ACCOUNT)
    yesterday = (datetime.now(IST) - timedelta(days=1)).date()
    sim.populate(calls, day=yesterday, sizes=sizes)
    async with serve(sim, host="127.0.0.1", port=0) as base_url:
        settings = load_settings(
            {
                "account_sid": sim.account_sid,
                "api_url": base_url,
                "v1_api_url": base_url,
                "destination": str(directory / "recordings"),
                "state_dir": str(directory / "state"),
            },
            env={"EXOTEL_API_KEY": sim.api_key, "EXOTEL_API_TOKEN": sim.api_token},
        )
        # Find the day's calls the way a backfill does: through the v1 listing, page by page.
        start = datetime.combine(yesterday, time.min, IST)
        limiter = RateLimiter(settings.exotel.rate_limit, 60.0)
        async with ExotelClient(settings.exotel, limiter=limiter, retry=settings.retry) as client:
            listed = [
                c.sid async for c in list_calls(client, start, start + timedelta(days=1), tz=IST)
            ]
        return await archive_calls(settings, listed, on_result=on_result)
