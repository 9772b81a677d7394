"""The simulator against the documentation, over real HTTP: if it drifts, the worker's tests lie."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from archiver.exotel.models import IST, parse_call_details
from archiver.simulator import Simulator, SimulatorServer

V3_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+05:30$")


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(IST).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> Simulator:
    return Simulator(seed=3, clock=clock, url_ttl=300)


@pytest.fixture
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    with SimulatorServer(sim) as srv:
        yield srv


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = basic("sim-key", "sim-token")


async def get(
    url: str, *, auth: dict[str, str] | None = AUTH, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    all_headers = {**(auth or {}), **(headers or {})}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url, headers=all_headers) as r,
    ):
        body = await r.read()
        return r.status, r.headers, body


def v3(server: SimulatorServer, path: str) -> str:
    return f"{server.base_url}/v3/accounts/simaccount{path}"


async def test_terminal_call_matches_the_documented_shape(
    sim: Simulator, server: SimulatorServer
) -> None:
    call = sim.add_call(recordings=2, digits="1-2")
    status, _, body = await get(v3(server, f"/calls/{call.sid}"))
    data = json.loads(body)
    assert status == 200 and set(data) == {"request_id", "method", "http_code", "response"}
    assert data["http_code"] == 200 and data["response"]["status"] == "success"
    details = data["response"]["call_details"]
    assert set(details) == {
        "sid",
        "direction",
        "virtual_number",
        "state",
        "status",
        "legs",
        "created_time",
        "updated_time",
        "start_time",
        "end_time",
        "total_duration",
        "total_talk_time",
        "custom_field",
        "app_id",
        "app_name",
        "digits",
        "recordings",
    }
    for field in ("created_time", "updated_time", "start_time", "end_time"):
        assert V3_TIME.match(details[field]), details[field]
    urls = [r["url"] for r in details["recordings"]]
    assert len(urls) == 2 and all(
        "X-Amz-Signature=" in u and "X-Amz-Expires=300" in u for u in urls
    )
    assert call.sid not in urlsplit(urls[0]).path  # file names are not the call SID
    parsed = parse_call_details(details)
    assert parsed.digits == ("1", "2") and parsed.is_terminal


async def test_active_call_has_only_the_documented_fields(
    sim: Simulator, server: SimulatorServer
) -> None:
    call = sim.add_call(state="active")
    details = json.loads((await get(v3(server, f"/calls/{call.sid}")))[2])["response"][
        "call_details"
    ]
    assert details["state"] == "active" and details["status"] is None
    assert details["end_time"] == "1970-01-01 05:30:00+05:30"
    assert "recordings" not in details
    active = json.loads((await get(v3(server, "/calls/active")))[2])["response"]
    assert active["total_active"] == 1 and active["active_calls"][0]["call_sid"] == call.sid


@pytest.mark.parametrize("auth", [None, basic("sim-key", "wrong")])
async def test_bad_auth_is_401_with_exotel_code(
    sim: Simulator, server: SimulatorServer, auth: Any
) -> None:
    status, _, body = await get(v3(server, f"/calls/{sim.add_call().sid}"), auth=auth)
    assert status == 401
    data = json.loads(body)["response"]
    assert data["status"] == "failure" and data["error_data"]["code"] == 1010


async def test_unknown_call_is_404_and_scripted_429_has_retry_after(
    sim: Simulator, server: SimulatorServer
) -> None:
    status, _, _ = await get(v3(server, "/calls/ffffffffffffffffffffffffffffffff"))
    assert status == 404
    sim.faults.retry_after = 7
    sim.faults.api_script.append(429)
    status, headers, _ = await get(v3(server, f"/calls/{sim.add_call().sid}"))
    assert status == 429 and headers["Retry-After"] == "7"


async def recording_url(sim: Simulator, server: SimulatorServer, sid: str) -> str:
    body = (await get(v3(server, f"/calls/{sid}")))[2]
    return str(json.loads(body)["response"]["call_details"]["recordings"][0]["url"])


async def test_recording_bytes_and_ranges(sim: Simulator, server: SimulatorServer) -> None:
    call = sim.add_call(size=700_000)
    url = await recording_url(sim, server, call.sid)
    status, headers, body = await get(url, auth=None)
    assert status == 200 and body == sim.recording_bytes(call.sid, 1)
    assert body[:3] == b"ID3" and headers["Content-Type"] == "audio/mpeg"
    status, headers, part = await get(url, auth=None, headers={"Range": "bytes=100000-"})
    assert status == 206 and part == body[100000:]
    assert headers["Content-Range"] == f"bytes 100000-{len(body) - 1}/{len(body)}"


async def test_urls_expire_like_s3(sim: Simulator, server: SimulatorServer, clock: Clock) -> None:
    call = sim.add_call()
    url = await recording_url(sim, server, call.sid)
    clock.now += 301
    status, headers, body = await get(url, auth=None)
    assert status == 403 and b"Request has expired" in body and b"<Code>AccessDenied</Code>" in body
    assert headers["Content-Type"].startswith("application/xml")


async def test_credentials_or_a_bad_signature_are_refused(
    sim: Simulator, server: SimulatorServer
) -> None:
    call = sim.add_call()
    url = await recording_url(sim, server, call.sid)
    status, _, body = await get(url, auth=AUTH)
    assert status == 400 and b"Only one auth mechanism" in body
    status, _, body = await get(
        re.sub(r"X-Amz-Signature=\w+", "X-Amz-Signature=00", url), auth=None
    )
    assert status == 403 and b"SignatureDoesNotMatch" in body


async def test_cut_fault_is_an_error_not_a_short_success(
    sim: Simulator, server: SimulatorServer
) -> None:
    call = sim.add_call(size=600_000)
    url = await recording_url(sim, server, call.sid)
    sim.faults.recording_script.append("cut")
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(url, auth=None)


async def test_v1_bulk_pages_every_terminal_call_once_in_order(
    sim: Simulator, server: SimulatorServer
) -> None:
    day = (datetime.now(IST) - timedelta(days=2)).date()
    calls = sim.populate(250, day=day)
    active = sim.add_call(
        state="active",
        created=datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12),
    )
    query = f"DateCreated=gte:{day} 00:00:00;lte:{day} 23:59:59&PageSize=100&SortBy=DateCreated:asc"
    url: str | None = f"/v1/Accounts/simaccount/Calls.json?{query}"
    seen: list[dict[str, Any]] = []
    pages = 0
    while url:
        status, _, body = await get(server.base_url + url)
        assert status == 200
        data = json.loads(body)
        seen += data["Calls"]
        url = data["Metadata"]["NextPageUri"]
        assert url is None or "After=" in parse_qs(urlsplit(url).query) or "After=" in url
        pages += 1
    assert pages == 3
    sids = [c["Sid"] for c in seen]
    assert sorted(sids) == sorted(c.sid for c in calls) and active.sid not in sids
    assert [c["DateCreated"] for c in seen] == sorted(c["DateCreated"] for c in seen)


async def test_v1_page_size_over_100_is_refused(server: SimulatorServer) -> None:
    status, _, _ = await get(server.base_url + "/v1/Accounts/simaccount/Calls.json?PageSize=101")
    assert status == 400


async def test_per_call_hostile_hooks(sim: Simulator, server: SimulatorServer) -> None:
    """The soak's hostile values reach one call only: its recording URL, its v1 item; and
    the active-calls endpoint can ignore ``offset``."""
    day = (datetime.now(IST) - timedelta(days=1)).date()
    bad, good = sim.populate(2, day=day)
    sim.faults.recording_url_for[bad.sid] = "https://a..b/rec.mp3"
    sim.faults.bulk_item_patches[bad.sid] = {"DateCreated": "not a date"}
    for call, url_is_bad in ((bad, True), (good, False)):
        _, _, body = await get(v3(server, f"/calls/{call.sid}"))
        url = json.loads(body)["response"]["call_details"]["recordings"][0]["url"]
        assert (url == "https://a..b/rec.mp3") is url_is_bad
    query = f"DateCreated=gte:{day} 00:00:00;lte:{day} 23:59:59&PageSize=100"
    _, _, body = await get(f"{server.base_url}/v1/Accounts/simaccount/Calls.json?{query}")
    dates = {c["Sid"]: c["DateCreated"] for c in json.loads(body)["Calls"]}
    assert dates[bad.sid] == "not a date" and dates[good.sid] != "not a date"
    for _ in range(3):
        sim.add_call(state="active")
    sim.faults.active_ignores_offset = True
    firsts = set()
    for offset in (0, 1, 2):
        _, _, body = await get(v3(server, f"/calls/active?limit=1&offset={offset}"))
        firsts.add(json.loads(body)["response"]["active_calls"][0]["call_sid"])
    assert len(firsts) == 1


async def test_the_v1_listing_compares_whole_seconds_as_exotels_date_created_has(
    sim: Simulator, server: SimulatorServer
) -> None:
    """A call created at 23:59:59.6 is in its day: the listing's ``lte`` is 23:59:59, and
    Exotel's DateCreated has no fractions of a second (a test that made a call "a day ago" a
    moment before midnight found the day empty)."""
    day = (datetime.now(IST) - timedelta(days=2)).date()
    late = datetime(day.year, day.month, day.day, 23, 59, 59, 600_000, tzinfo=IST)
    call = sim.add_call(created=late)
    query = f"DateCreated=gte:{day} 00:00:00;lte:{day} 23:59:59&PageSize=100"
    _, _, body = await get(f"{server.base_url}/v1/Accounts/simaccount/Calls.json?{query}")
    assert [c["Sid"] for c in json.loads(body)["Calls"]] == [call.sid]


async def test_an_account_capped_at_5_minutes_refuses_a_longer_url_validity(
    clock: Clock,
) -> None:
    """``max_url_validity``: RecordingUrlValidity above it is a 400 (as an account that allows
    only 5 minutes answers); at or below it, the URLs live that long. Unset: 5-60 as before."""
    capped = Simulator(seed=3, clock=clock, max_url_validity=5)
    capped.add_call(created=datetime.now(IST) - timedelta(days=2))
    day = (datetime.now(IST) - timedelta(days=2)).date()
    query = f"DateCreated=gte:{day} 00:00:00;lte:{day} 23:59:59&PageSize=100"
    with SimulatorServer(capped) as srv:
        path = f"{srv.base_url}/v1/Accounts/simaccount/Calls.json?{query}"
        status, _, body = await get(f"{path}&RecordingUrlValidity=60")
        assert status == 400 and b"RecordingUrlValidity" in body
        status, _, body = await get(f"{path}&RecordingUrlValidity=5")
        assert status == 200
        url = json.loads(body)["Calls"][0]["PreSignedRecordingUrl"]
        assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["300"]
    plain = Simulator(seed=3, clock=clock)
    plain.add_call(created=datetime.now(IST) - timedelta(days=2))
    with SimulatorServer(plain) as srv:
        path = f"{srv.base_url}/v1/Accounts/simaccount/Calls.json?{query}"
        status, _, _ = await get(f"{path}&RecordingUrlValidity=60")
        assert status == 200


async def test_the_api_log_tells_listing_from_call_details(
    sim: Simulator, server: SimulatorServer, clock: Clock
) -> None:
    """``api_kinds`` runs beside ``api_log`` (``v1``, ``v3``), and ``busiest_minute`` counts
    one kind when asked: what the benchmark measures an enrichment's share with."""
    call = sim.add_call(created=datetime.now(IST) - timedelta(days=2))
    day = (datetime.now(IST) - timedelta(days=2)).date()
    query = f"DateCreated=gte:{day} 00:00:00;lte:{day} 23:59:59&PageSize=100"
    assert (await get(f"{server.base_url}/v1/Accounts/simaccount/Calls.json?{query}"))[0] == 200
    for _ in range(3):
        assert (await get(v3(server, f"/calls/{call.sid}")))[0] == 200
    assert sim.api_kinds == ["v1", "v3", "v3", "v3"] and len(sim.api_log) == 4
    assert sim.busiest_minute(kind="v3") == 3 and sim.busiest_minute(kind="v1") == 1
    assert sim.busiest_minute() == 4
