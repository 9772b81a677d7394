"""The built-in Exotel simulator: v3 call details, active calls, v1 bulk listing, recordings.

One aiohttp application serves, on one host:

* ``GET /v3/accounts/{sid}/calls/{call_sid}`` — call details in the documented envelope; every
  answer mints fresh pre-signed recording URLs, as Exotel does.
* ``GET /v3/accounts/{sid}/calls/active`` — ``response.active_calls[]`` and ``total_active``.
* ``GET /v1/Accounts/{sid}/Calls.json`` — Bulk Call Details: ``DateCreated=gte:..;lte:..`` (IST,
  no offset; at most 31 days, at most 183 days back), ``PageSize`` ≤ 100, ``SortBy``, cursor
  paging through ``Metadata.NextPageUri`` (a relative path with ``After=``), terminal calls only.
* ``GET /exotel-recordings/{account}/{token}.mp3?X-Amz-...`` — the recordings, behaving like S3
  pre-signed URLs: 403 XML after X-Amz-Date + X-Amz-Expires, 403 on a bad signature, 400 when an
  ``Authorization`` header is sent too, Range support.

``Simulator(private_recordings=True)``: an account without pre-signed URLs, as Exotel's
recordings are since October 2024. The v3 ``recordings[].url`` and the v1 ``RecordingUrl`` are
unsigned (``/exotel-recordings/{account}/{token}.{ext}``, no query; no ``PreSignedRecordingUrl``),
and the recording route serves an unsigned request only with HTTP Basic of the account's API key
and token (401 with ``WWW-Authenticate`` otherwise). A signed URL (voice logs) is served as
before, and refused with 400 if it carries an ``Authorization`` header too, as S3 does.

In every mode, each recording request that carried an ``Authorization`` header is counted in
``counters["credentialed_requests"]`` and ``counters["credentialed_requests:HOST"]`` (HOST as the
request's ``Host`` header): tests assert that the credentials never reached another server.

Decisions where Exotel's pages are silent: a wrong account SID in the path answers 401 (Exotel
treats it as an authentication failure); a 400 carries Exotel code 10200 (invented).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import secrets
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from archiver.exotel.models import IST
from archiver.simulator.calls import Asset, SimCall, day_of_calls, make_sid
from archiver.simulator.faults import Faults

_SCOPE = "ap-south-1/s3/aws4_request"
_CODES = {400: 10200, 401: 1010, 404: 10744, 429: 10724, 500: 10715, 503: 10743}
_MESSAGES = {
    400: "Bad Request",
    401: "Authentication failed",
    404: "Call not found",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class Simulator:
    """The simulated Exotel account: its calls, clock, credentials, faults and counters."""

    def __init__(
        self,
        account_sid: str = "simaccount",
        api_key: str = "sim-key",
        api_token: str = "sim-token",
        *,
        url_ttl: float = 300.0,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        rate_limit_per_minute: int | None = None,
        private_recordings: bool = False,
        max_url_validity: int | None = None,
    ) -> None:
        self.account_sid, self.api_key, self.api_token = account_sid, api_key, api_token
        self.private_recordings = private_recordings
        """True: recording URLs are unsigned and served only with HTTP Basic (module docstring)."""
        self.url_ttl = url_ttl
        self.clock = clock
        self.rate_limit_per_minute = rate_limit_per_minute
        self.max_url_validity = max_url_validity
        """Minutes: a v1 ``RecordingUrlValidity`` above it answers 400, as an account allowing
        only that much does (None: Exotel's 5-60)."""
        self.calls: dict[str, SimCall] = {}
        self.faults = Faults(seed)
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "api_requests",
                "v3_call_details",
                "v1_bulk",
                "active",
                "recording_requests",
                "recordings_served_ok",
                "expired_refusals",
                "rate_limited",
                "server_errors",
                "range_requests",
                "bytes_served",
                "credentialed_requests",
                "unauthorized_recording_requests",
            ),
            0,
        )
        self._rng = random.Random(seed)
        self._signing_key = secrets.token_bytes(32)
        self.url_access_key = "AKIA" + secrets.token_hex(8).upper()
        """The access key ID in the X-Amz-Credential of every pre-signed URL (random per run)."""
        self.issued_urls: list[str] = []
        """Every pre-signed URL handed out, signature included (tests grep for leaks with it)."""
        self._tokens: dict[str, Asset] = {}
        self.voice_logs_enabled = True
        """False: the voice-logs endpoint answers 404 (not on this account's portal)."""
        self.legs_enabled = True
        """False: the legs endpoint answers 404 (not enabled for this account)."""
        self._api_times: list[float] = []
        self.api_log: list[float] = []
        """When each API request arrived (clock seconds), for rate measurements."""
        self.api_kinds: list[str] = []
        """Beside ``api_log``, the kind of each request: ``v1`` (the listing) or ``v3``."""
        self._lock = threading.Lock()

    # --- data --------------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _register(self, call: SimCall) -> SimCall:
        with self._lock:
            if not call.tokens:
                call.tokens = [make_sid(self._rng) for _ in call.recordings]
            for i, token in enumerate(call.tokens, start=1):
                self._tokens[token] = self.recording_asset(call, i)
            self.calls[call.sid] = call
        return call

    def add_call(
        self,
        sid: str | None = None,
        *,
        state: str = "terminal",
        status: str = "completed",
        recordings: int | list[int] = 1,
        size: int = 64 * 1024,
        created: datetime | None = None,
        content_type: str = "audio/mpeg",
        **fields: Any,
    ) -> SimCall:
        """Add one call; ``recordings`` is a count (each of ``size`` bytes) or a list of sizes.

        ``state``: ``terminal`` (over and processed), ``active`` (in progress: on the active
        list) or ``processing`` (over, listed by v1, but v3 still says ``active``).
        """
        now = self.now()
        created = created or now - timedelta(minutes=10)
        start = created + timedelta(seconds=5)
        sizes = [size] * recordings if isinstance(recordings, int) else list(recordings)
        end, ready_at = {
            "terminal": (start + timedelta(seconds=84), now - timedelta(seconds=1)),
            "active": (now + timedelta(days=1), now + timedelta(days=1, minutes=2)),
            "processing": (now - timedelta(seconds=30), now + timedelta(days=365)),
        }[state]
        call = SimCall(
            sid=sid or make_sid(self._rng),
            created=created,
            start=min(start, end),
            end=end,
            ready_at=ready_at,
            status=status,
            recordings=sizes,
            content_type=content_type,
            **fields,
        )
        return self._register(call)

    def add_recording(self, sid: str, size: int = 64 * 1024) -> None:
        """Give a call one more recording (as Exotel does minutes after the end)."""
        call = self.calls[sid]
        with self._lock:
            token = make_sid(self._rng)
            call.recordings.append(size)
            call.tokens.append(token)
            self._tokens[token] = self.recording_asset(call, len(call.recordings))

    def finish(self, sid: str, status: str = "completed") -> None:
        """End a call and finish its processing now: it turns terminal."""
        call = self.calls[sid]
        now = self.now()
        call.end = min(call.end, now - timedelta(seconds=2))
        call.start = min(call.start, call.end)
        call.status, call.ready_at = status, now - timedelta(seconds=1)

    def populate(
        self,
        n_calls: int,
        *,
        day: date,
        sizes: tuple[int, int] = (32 * 1024, 256 * 1024),
        seed: int | None = None,
    ) -> list[SimCall]:
        """A realistic day of ``n_calls`` calls (IST), registered and returned."""
        rng = random.Random(seed) if seed is not None else self._rng
        start = datetime(day.year, day.month, day.day, tzinfo=IST)
        return [self._register(c) for c in day_of_calls(rng, n_calls, start, sizes, self.now())]

    @staticmethod
    def recording_asset(call: SimCall, index: int) -> Asset:
        return Asset(call.sid, f"{call.sid}/{index}", call.recordings[index - 1], call.content_type)

    def voice_log_asset(self, call: SimCall, fmt: str, channel: str) -> tuple[str, Asset]:
        """The voice-log file of ``call`` in ``fmt``/``channel`` (registered on first use)."""
        base = sum(call.recordings)
        size = base * (2 if channel == "dual" else 1) * (4 if fmt == "wav" else 1)
        content_type = "audio/wav" if fmt == "wav" else "audio/mpeg"
        asset = Asset(call.sid, f"{call.sid}/voice-log/{fmt}/{channel}", size, content_type)
        token = hashlib.sha256(asset.seed_key.encode()).hexdigest()[:32]
        with self._lock:
            self._tokens[token] = asset
        return token, asset

    def asset(self, token: str) -> Asset | None:
        return self._tokens.get(token)

    def recording_bytes(self, sid: str, index: int) -> bytes:
        return self.recording_asset(self.calls[sid], index).body()

    def voice_log_bytes(self, sid: str, fmt: str, channel: str) -> bytes:
        return self.voice_log_asset(self.calls[sid], fmt, channel)[1].body()

    # --- URLs --------------------------------------------------------------------------------

    def _sign(self, path: str, amz_date: str, expires: int) -> str:
        message = f"{path}\n{amz_date}\n{expires}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    def recording_url(
        self, base_url: str, call: SimCall, index: int, ttl: float | None = None
    ) -> str:
        """The URL of recording ``index`` of ``call`` as the account hands it out: pre-signed,
        or unsigned with ``private_recordings``."""
        if self.private_recordings:
            return self.private_url(base_url, call, index)
        return self.presign(base_url, call, index, ttl)

    def private_url(self, base_url: str, call: SimCall, index: int) -> str:
        """The unsigned URL of recording ``index`` (served only with HTTP Basic when private)."""
        token = call.tokens[index - 1]
        ext = self.recording_asset(call, index).ext
        return f"{base_url}/exotel-recordings/{self.account_sid}/{token}.{ext}"

    def presign(self, base_url: str, call: SimCall, index: int, ttl: float | None = None) -> str:
        token = call.tokens[index - 1]
        return self.presign_token(base_url, token, self.recording_asset(call, index).ext, ttl)

    def presign_token(self, base_url: str, token: str, ext: str, ttl: float | None = None) -> str:
        now = self.now()
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        expires = int(ttl if ttl is not None else self.url_ttl)
        path = f"/exotel-recordings/{self.account_sid}/{token}.{ext}"
        query = urlencode(
            {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Credential": f"{self.url_access_key}/{now:%Y%m%d}/{_SCOPE}",
                "X-Amz-Date": amz_date,
                "X-Amz-Expires": str(expires),
                "X-Amz-SignedHeaders": "host",
                "X-Amz-Signature": self._sign(path, amz_date, expires),
            },
            quote_via=quote,
        )
        url = f"{base_url}{path}?{query}"
        with self._lock:
            self.issued_urls.append(url)
        return url

    # --- the app -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        from archiver.simulator.routes import add_routes

        faults = self.faults

        @web.middleware
        async def latency(request: web.Request, handler: Any) -> web.StreamResponse:
            if faults.latency:  # the round trip and server time of a distant service
                await asyncio.sleep(faults.latency)
            response: web.StreamResponse = await handler(request)
            return response

        application = web.Application(middlewares=[latency])
        add_routes(application, self)
        return application

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + amount

    def note_api_request(self, kind: str = "v3") -> None:
        with self._lock:
            self.counters["api_requests"] = self.counters.get("api_requests", 0) + 1
            self.api_log.append(self.clock())
            self.api_kinds.append(kind)

    def busiest_minute(self, since: float = 0.0, kind: str | None = None) -> int:
        """The most API requests (of ``kind`` only, if given) that arrived within any 60
        seconds (from ``since`` on)."""
        with self._lock:
            logged = zip(self.api_log, self.api_kinds, strict=True)
            times = sorted(t for t, k in logged if t >= since and kind in (None, k))
        best, first = 0, 0
        for last, t in enumerate(times):
            while t - times[first] >= 60:
                first += 1
            best = max(best, last - first + 1)
        return best

    def over_rate_limit(self) -> bool:
        if self.rate_limit_per_minute is None:
            return False
        with self._lock:
            now = self.clock()
            self._api_times = [t for t in self._api_times if now - t < 60]
            if len(self._api_times) >= self.rate_limit_per_minute:
                return True
            self._api_times.append(now)
            return False


def error_envelope(status: int, message: str | None = None) -> dict[str, Any]:
    return {
        "request_id": secrets.token_hex(16),
        "method": "GET",
        "http_code": status,
        "response": {
            "code": status,
            "status": "failure",
            "error_data": {
                "code": _CODES.get(status, 10715),
                "message": message or _MESSAGES.get(status, "Error"),
                "description": message or _MESSAGES.get(status, "Error"),
            },
        },
    }


@contextlib.asynccontextmanager
async def serve(
    sim: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """Serve ``sim`` on the current event loop (HTTPS with ``ssl_context``); yields the base URL."""
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    server = site._server  # the bound socket tells the real port when port=0
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    try:
        yield f"{'https' if ssl_context else 'http'}://{host}:{bound}"
    finally:
        await runner.cleanup()


async def run_simulator(
    sim: Simulator, host: str, port: int, *, on_ready: Callable[[str], None]
) -> None:
    """Serve until cancelled (Ctrl-C)."""
    async with serve(sim, host, port) as base_url:
        on_ready(base_url)
        await asyncio.Event().wait()


class SimulatorServer:
    """Runs the simulator in a background thread with its own event loop (for tests)."""

    def __init__(
        self,
        sim: Simulator,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.sim, self.host, self.port = sim, host, port
        self.ssl_context = ssl_context
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="exotel-simulator")
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with serve(self.sim, self.host, self.port, ssl_context=self.ssl_context) as url:
                self.base_url = url
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # surfaced to the starting thread
            self._error = exc
            self._ready.set()

    def __enter__(self) -> SimulatorServer:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"simulator failed to start: {self._error}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
