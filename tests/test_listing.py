"""v1 Bulk Call Details: windows of at most 30 days, cursor paging, and hostile cursors."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from archiver.config import load_settings
from archiver.errors import ExotelProtocolError
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import list_calls, windows
from archiver.exotel.models import IST
from archiver.ratelimit import RateLimiter
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env


def client_for(sim: Simulator, server: SimulatorServer, tmp_path: Path) -> ExotelClient:
    settings = load_settings(env=exotel_env(sim, server.base_url, str(tmp_path), tmp_path))
    return ExotelClient(settings.exotel, limiter=RateLimiter(200), retry=settings.retry)


def test_ranges_are_cut_into_windows_exotel_accepts() -> None:
    start = datetime(2026, 1, 1, tzinfo=IST)
    parts = windows(start, start + timedelta(days=75))
    assert len(parts) == 3
    assert parts[0][0] == start and parts[-1][1] == start + timedelta(days=75)
    for (a, b), (c, _) in itertools.pairwise(parts):
        assert b - a < timedelta(days=30) and c == b + timedelta(seconds=1)


async def test_every_call_of_a_range_once_across_pages_and_windows(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    today = datetime.now(IST).date()
    expected = set()
    for days_back in (40, 20, 2):
        expected |= {c.sid for c in sim.populate(120, day=today - timedelta(days=days_back))}
    sim.add_call(state="active")  # never listed
    since = datetime.combine(today - timedelta(days=45), datetime.min.time(), IST)
    async with client_for(sim, server, tmp_path) as client:
        listed = [c async for c in list_calls(client, since, datetime.now(IST), tz=IST)]
        requests = client.requests
    assert [c.sid for c in listed if c.sid in expected] == [c.sid for c in listed]
    assert {c.sid for c in listed} == expected and len(listed) == len(expected)
    assert [c.date_created for c in listed] == sorted(c.date_created for c in listed)
    assert requests == sim.counters["v1_bulk"] and 4 <= requests <= 8  # 360 calls, 100 a page


@pytest.mark.parametrize(
    "uri, message", [("http://elsewhere.example/v1/x", "another host"), ("SAME", "loop")]
)
async def test_a_hostile_next_page_uri_is_refused(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, uri: str, message: str
) -> None:
    day = datetime.now(IST).date() - timedelta(days=1)
    sim.populate(10, day=day)
    sim.faults.next_page_uri = (
        f"/v1/Accounts/{sim.account_sid}/Calls.json?PageSize=5" if uri == "SAME" else uri
    )
    since = datetime.combine(day, datetime.min.time(), IST)
    async with client_for(sim, server, tmp_path) as client:
        with pytest.raises(ExotelProtocolError, match=message):
            async for _ in list_calls(client, since, since + timedelta(days=1), tz=IST):
                pass


async def test_an_answer_arriving_in_pieces_is_read_whole(tmp_path: Path) -> None:
    """A large page may reach us in several TCP reads; the client must read to the end."""
    import asyncio
    import json

    from aiohttp import web

    from archiver.exotel.listing import active_calls

    items = [{"call_sid": f"sid{n:04d}", "start_time": "2026-11-23T10:00:00Z"} for n in range(300)]
    body = json.dumps({"response": {"active_calls": items, "total_active": 300}}).encode()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), 4000):
            await response.write(body[start : start + 4000])
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v3/accounts/acct/calls/active", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    env = {
        "EXOTEL_ACCOUNT_SID": "acct",
        "EXOTEL_API_KEY": "k",
        "EXOTEL_API_TOKEN": "t",
        "EXOTEL_API_URL": f"http://127.0.0.1:{port}",
    }
    settings = load_settings(env=env)
    try:
        async with ExotelClient(
            settings.exotel, limiter=RateLimiter(200), retry=settings.retry
        ) as client:
            calls = await active_calls(client)
    finally:
        await runner.cleanup()
    assert [c.sid for c in calls] == [i["call_sid"] for i in items]
