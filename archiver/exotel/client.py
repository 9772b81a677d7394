"""The Exotel API client: HTTP Basic, the response envelope, error classification, retries.

Every request passes the worker's one ``RateLimiter`` (each attempt counts: Exotel counts retries
too) and the one retry policy (``archiver.retry``). Errors are classified here, where the HTTP
status and Exotel's envelope are seen:

======  ===========================  ==========
status  error                        retried
======  ===========================  ==========
400     ExotelBadRequest             no
401/403 ExotelAuthError              no
404     ExotelNotFound               no
429     ExotelRateLimited            yes, after Retry-After when given
5xx     ExotelServerError            yes
—       ExotelConnectionError        yes (reset, refused, timeout)
2xx     ExotelProtocolError          no (body not in the documented shape)
======  ===========================  ==========

The envelope is ``{request_id, method, http_code, response: {code, status, ...}}``; errors carry
``response.error_data{code, message, description}`` or, on some APIs, ``response.error{code,
message}``: both are read. Redirects are not followed (credentials stay with the API host).
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from archiver.config import ExotelSettings
from archiver.errors import (
    ExotelAuthError,
    ExotelBadRequest,
    ExotelConnectionError,
    ExotelError,
    ExotelNotFound,
    ExotelProtocolError,
    ExotelRateLimited,
    ExotelServerError,
)
from archiver.exotel.models import CallDetails, parse_call_details, validate_call_sid
from archiver.ratelimit import RateLimiter
from archiver.redact import redact_text, strip_url
from archiver.retry import RetryPolicy, retrying
from archiver.tls import certificate_refused

log = logging.getLogger("archiver.exotel")

USER_AGENT = "exotel-archiver"
_MAX_BODY = 16 * 1024 * 1024  # an API answer larger than this is not a call-details answer


@dataclass(frozen=True)
class ApiResponse:
    """A successful (2xx) answer: the parsed envelope and the exact bytes received."""

    envelope: dict[str, Any]
    body: bytes


def _retry_after(headers: Any) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff


def _error_details(body: bytes) -> tuple[Any, str]:
    """(Exotel code, message) from an error envelope, whichever of its two shapes it has."""
    try:
        envelope = json.loads(body)
        response = envelope.get("response") or {}
        error = response.get("error_data") or response.get("error") or {}
        code = error.get("code")
        message = " — ".join(str(error[k]) for k in ("message", "description") if error.get(k))
        return code, message[:300]
    except (ValueError, AttributeError, TypeError):
        return None, ""


def classify(status: int, headers: Any, body: bytes, what: str) -> ExotelError:
    """The typed error for a non-2xx answer."""
    code, message = _error_details(body)
    detail = f" (Exotel code {code}: {message})" if code or message else ""
    text = f"{what}: HTTP {status}{detail}"
    if status == 400:
        return ExotelBadRequest(text, status=status, exotel_code=code)
    if status in (401, 403):
        return ExotelAuthError(
            text
            + " — check EXOTEL_API_KEY, EXOTEL_API_TOKEN, EXOTEL_ACCOUNT_SID and EXOTEL_REGION",
            status=status,
            exotel_code=code,
        )
    if status == 404:
        return ExotelNotFound(text, status=status, exotel_code=code)
    if status == 429:
        return ExotelRateLimited(text, exotel_code=code, retry_after=_retry_after(headers))
    if status >= 500:
        return ExotelServerError(text, status=status, exotel_code=code)
    return ExotelProtocolError(text, status=status, exotel_code=code)


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first ``limit`` bytes if it is longer. (``StreamReader.read(n)``
    alone returns whatever has arrived, which for a large page may be only its first chunk.)"""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


class ExotelClient:
    """Async client for the Exotel APIs the archiver uses. One per worker; use ``async with``."""

    def __init__(
        self,
        settings: ExotelSettings,
        *,
        limiter: RateLimiter,
        retry: RetryPolicy,
        timeout: float = 30.0,
    ) -> None:
        self._settings = settings
        self._limiter = limiter
        self._retry = retry
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(10.0, timeout))
        self._session: aiohttp.ClientSession | None = None
        self._secrets = tuple(
            s for s in (settings.api_key.reveal(), settings.api_token.reveal()) if s
        )
        self.requests = 0
        """API requests sent (every attempt), for reports."""
        self.rate_limited = 0
        """Of those, how many Exotel answered with 429 (too many requests)."""

    async def __aenter__(self) -> ExotelClient:
        credentials = f"{self._settings.api_key.reveal()}:{self._settings.api_token.reveal()}"
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
            },
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def v1_url(self, path: str) -> str:
        """A v1 API URL of this account, e.g. ``v1_url("/Calls.json")``."""
        return f"{self._settings.v1_api_url}/v1/Accounts/{self._settings.account_sid}{path}"

    def v3_url(self, path: str) -> str:
        """A v3 API URL of this account, e.g. ``v3_url("/calls/active")``."""
        return f"{self._settings.api_url}/v3/accounts/{self._settings.account_sid}{path}"

    async def call_details(self, call_sid: str) -> tuple[CallDetails, bytes]:
        """GET /v3/accounts/{sid}/calls/{call_sid}: the parsed details and the raw body."""
        validate_call_sid(call_sid)
        what = f"GET call details of {call_sid}"
        answer = await self.get_json(self.v3_url(f"/calls/{call_sid}"), what=what)
        response = answer.envelope.get("response")
        if not isinstance(response, dict):
            raise ExotelProtocolError(f"{what}: the answer has no 'response' object")
        details = parse_call_details(
            response.get("call_details"), request_id=answer.envelope.get("request_id")
        )
        if details.sid != call_sid:
            raise ExotelProtocolError(f"{what}: the answer is about another call ({details.sid})")
        return details, answer.body

    async def voice_log(
        self, call_sid: str, *, fmt: str, channel: str
    ) -> tuple[dict[str, Any], bytes]:
        """GET /v3/accounts/{sid}/calls/{call_sid}/voice-logs: ``response.voice_log`` and the body.

        The endpoint exists only on Exotel's newer portal: a 404 means "not available here".
        """
        validate_call_sid(call_sid)
        what = f"GET voice log of {call_sid}"
        answer = await self.get_json(
            self.v3_url(f"/calls/{call_sid}/voice-logs"),
            what=what,
            params={"format": fmt, "channel": channel},
        )
        response = answer.envelope.get("response")
        voice_log = response.get("voice_log") if isinstance(response, dict) else None
        if not isinstance(voice_log, dict):
            raise ExotelProtocolError(f"{what}: the answer has no 'response.voice_log' object")
        return voice_log, answer.body

    async def legs(self, call_sid: str) -> bytes:
        """GET /v3/accounts/{sid}/calls/{call_sid}/legs: the raw body (404: not enabled)."""
        validate_call_sid(call_sid)
        what = f"GET legs of {call_sid}"
        answer = await self.get_json(self.v3_url(f"/calls/{call_sid}/legs"), what=what)
        response = answer.envelope.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("leg_details"), dict):
            raise ExotelProtocolError(f"{what}: the answer has no 'response.leg_details' object")
        return answer.body

    async def get_json(
        self, url: str, *, what: str, params: dict[str, str] | None = None
    ) -> ApiResponse:
        """One API GET with rate limiting, retries and classification; the 2xx envelope."""
        async for attempt in retrying(self._retry, what=what):
            with attempt:
                return await self._get_once(url, what=what, params=params)
        raise AssertionError("unreachable: retrying re-raises the last error")

    async def _get_once(self, url: str, *, what: str, params: dict[str, str] | None) -> ApiResponse:
        if self._session is None:
            raise RuntimeError("ExotelClient used outside 'async with'")
        try:
            async with self._limiter.slot():
                self.requests += 1
                async with self._session.get(url, params=params, allow_redirects=False) as resp:
                    body = await _read_capped(resp.content, _MAX_BODY + 1)
                    status, headers = resp.status, resp.headers
        except aiohttp.ClientConnectorCertificateError as exc:  # not transient: stop, name the fix
            raise certificate_refused(what, strip_url(url), exc, s3=False) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = redact_text(str(exc) or type(exc).__name__, self._secrets)
            raise ExotelConnectionError(f"{what}: no answer from Exotel ({reason})") from None
        log.debug("%s: HTTP %d, %d bytes", what, status, len(body))
        if len(body) > _MAX_BODY:
            raise ExotelProtocolError(f"{what}: answer larger than {_MAX_BODY} bytes")
        if status == 429:
            self.rate_limited += 1
        if not 200 <= status < 300:
            raise classify(status, headers, body, what)
        try:
            envelope = json.loads(body)
        except ValueError:
            raise ExotelProtocolError(
                f"{what}: HTTP {status} but the body is not JSON "
                f"(Content-Type {headers.get('Content-Type', 'none')!r})"
            ) from None
        if not isinstance(envelope, dict):
            raise ExotelProtocolError(f"{what}: the JSON answer is not an object")
        inner = envelope.get("response")
        if isinstance(inner, dict) and inner.get("status") == "failure":
            # An error envelope behind a 2xx status: trust the envelope's own code.
            code = envelope.get("http_code") or inner.get("code")
            raise classify(int(code) if isinstance(code, int) else 500, headers, body, what)
        return ApiResponse(envelope=envelope, body=body)
