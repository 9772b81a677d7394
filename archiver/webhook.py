"""The StatusCallback receiver: Exotel's end-of-call POSTs, taken as hints (off by default).

``POST /exotel/status-callback`` — point the StatusCallback of your Exotel flow or API calls at
``https://your-host/exotel/status-callback?secret=...`` (or set HTTP Basic credentials in the
URL, ``https://user:password@your-host/...``). Exotel signs nothing, so the receiver is protected
by what the operator configures:

* a shared secret (``webhook_secret``), given as the ``secret`` query parameter or an
  ``X-Archiver-Secret`` header, and/or
* HTTP Basic auth (``webhook_basic_auth``); with both configured, both are required.

Both are compared in constant time. Bodies may be JSON, ``application/x-www-form-urlencoded`` or
``multipart/form-data`` (Exotel uses all three); only ``CallSid`` is read. Bodies larger than
``webhook_max_body`` are refused with 413 before they are read whole. A valid hint is handed to
``on_hint`` (which de-duplicates and schedules a look at the call details — the API stays the
source of truth: nothing in the body is archived or trusted beyond the call SID).

Answers: 200 ``{"status": "accepted"}`` or ``{"status": "duplicate"}``; 401 without valid
credentials; 400 without a valid ``CallSid``; 413 too large; 415 another content type.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from archiver.config import DaemonSettings
from archiver.errors import InvalidCallSid
from archiver.exotel.models import validate_call_sid
from archiver.metrics import Metrics

log = logging.getLogger("archiver.webhook")

PATH = "/exotel/status-callback"


def webhook_app(
    settings: DaemonSettings, on_hint: Callable[[str], bool], metrics: Metrics
) -> web.Application:
    """The receiver as an aiohttp application. ``on_hint(sid)`` returns False for a duplicate."""
    secret = settings.webhook_secret.reveal().encode()
    basic = settings.webhook_basic_auth.reveal().encode()

    def authorized(request: web.Request) -> bool:
        ok = True
        if secret:
            given = request.query.get("secret") or request.headers.get("X-Archiver-Secret") or ""
            ok = hmac.compare_digest(given.encode(), secret) and ok
        if basic:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            try:
                presented = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                presented = b""
            ok = scheme.lower() == "basic" and hmac.compare_digest(presented, basic) and ok
        return ok and bool(secret or basic)

    def answer(result: str, status: int, **extra: str) -> web.Response:
        metrics.webhook[result] += 1
        return web.json_response({"status": result, **extra}, status=status)

    async def callback(request: web.Request) -> web.Response:
        if not authorized(request):
            log.warning(
                "StatusCallback refused: missing or wrong credentials (from %s)", request.remote
            )
            return answer("unauthorized", 401)
        try:
            fields = await _fields(request)
        except web.HTTPRequestEntityTooLarge:
            log.warning("StatusCallback refused: body over %d bytes", settings.webhook_max_body)
            return answer("too_large", 413)
        except _Unsupported as exc:
            return answer("bad_request", 415, error=str(exc))
        except ValueError:
            return answer("bad_request", 400, error="the body cannot be parsed")
        raw_sid = fields.get("CallSid") or fields.get("call_sid")
        try:
            sid = validate_call_sid(raw_sid)
        except InvalidCallSid:
            return answer("bad_request", 400, error="no valid CallSid in the body")
        if on_hint(sid):
            status = fields.get("Status")
            told = f" (status {status})" if status else " (no status given)"
            log.info("call %s: StatusCallback hint%s", sid, told)
            return answer("accepted", 200)
        return answer("duplicate", 200)

    app = web.Application(client_max_size=settings.webhook_max_body)
    app.router.add_post(PATH, callback)
    return app


class _Unsupported(ValueError):
    pass


async def _fields(request: web.Request) -> dict[str, Any]:
    """The body's top-level fields (JSON object, urlencoded or multipart form)."""
    kind = request.content_type
    if kind == "application/json" or kind.endswith("+json"):
        data = json.loads(await request.read())  # read() enforces client_max_size
        if not isinstance(data, dict):
            raise ValueError("JSON body is not an object")
        return data
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()  # enforces client_max_size too
        return {k: v for k, v in form.items() if isinstance(v, str)}
    raise _Unsupported(f"content type {kind!r}: send JSON, urlencoded or multipart form data")
