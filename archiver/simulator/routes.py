"""The simulator's HTTP handlers (see ``archiver.simulator.server`` for what each route does)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from archiver.exotel.models import IST
from archiver.simulator.calls import V1_STATUS, Asset, SimCall, fmt_v1, fmt_v3, recording_body
from archiver.simulator.faults import DROP

if TYPE_CHECKING:
    from archiver.simulator.server import Simulator

_SENTINEL_END = "1970-01-01 05:30:00+05:30"


def _s3_error(status: int, code: str, message: str, **extra: str) -> web.Response:
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{fields}"
        f"<RequestId>{secrets.token_hex(8).upper()}</RequestId><HostId>{secrets.token_hex(24)}</HostId>"
        "</Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


def _patched(data: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = {**data, **patch}
    return {k: v for k, v in out.items() if v is not DROP}


def add_routes(app: web.Application, sim: Simulator) -> None:
    from archiver.simulator.server import error_envelope

    def base_url(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def api_error(status: int, message: str | None = None) -> web.Response:
        headers = {}
        if status == 429:
            sim.count("rate_limited")
            headers = {
                "Retry-After": f"{sim.faults.retry_after:g}",
                "X-RateLimit-Limit": "200",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(sim.clock()) + int(sim.faults.retry_after) + 1),
            }
        elif status >= 500:
            sim.count("server_errors")
        return web.json_response(error_envelope(status, message), status=status, headers=headers)

    def check_api(request: web.Request) -> web.Response | None:
        """Auth, account, rate limit and injected faults, common to every API route."""
        sim.note_api_request("v1" if request.path.startswith("/v1/") else "v3")
        expected = "Basic " + base64.b64encode(f"{sim.api_key}:{sim.api_token}".encode()).decode()
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return api_error(401)
        if request.match_info["account"] != sim.account_sid:
            return api_error(401, "Authentication failed: unknown account")
        if sim.over_rate_limit():
            return api_error(429)
        fault = sim.faults.next_api()
        if fault is not None:
            return api_error(fault)
        return None

    def envelope(payload: dict[str, Any]) -> web.Response:
        return web.json_response(
            {
                "request_id": secrets.token_hex(16),
                "method": "GET",
                "http_code": 200,
                "response": {"code": 200, "status": "success", **payload},
            }
        )

    def v3_details(call: SimCall, request: web.Request) -> dict[str, Any]:
        now = sim.now()
        common = {
            "sid": call.sid,
            "direction": call.direction,
            "virtual_number": call.virtual_number,
        }
        if call.state(now) == "active":
            return {
                **common,
                "state": "active",
                "status": None,
                "created_time": fmt_v3(call.created),
                "updated_time": fmt_v3(min(now, call.end)),
                "start_time": fmt_v3(call.start),
                "end_time": _SENTINEL_END,
            }
        rewrite = sim.faults.details_recordings or (lambda url: url)
        recordings = [
            {"url": rewrite(sim.recording_url(base_url(request), call, i))}
            for i in range(1, len(call.recordings) + 1)
        ]
        if call.sid in sim.faults.recording_url_for and recordings:
            recordings[0] = {"url": sim.faults.recording_url_for[call.sid]}
        duration = int((call.end - call.created).total_seconds())
        return {
            **common,
            "state": "terminal",
            "status": call.status,
            "legs": f"/v3/accounts/{sim.account_sid}/calls/{call.sid}/legs",
            "created_time": fmt_v3(call.created),
            "updated_time": fmt_v3(call.ready_at),
            "start_time": fmt_v3(call.start),
            "end_time": fmt_v3(call.end),
            "total_duration": duration,
            "total_talk_time": int((call.end - call.start).total_seconds())
            if call.recordings
            else 0,
            "custom_field": call.custom_field,
            "app_id": call.app_id,
            "app_name": call.app_name,
            "digits": call.digits,
            "recordings": recordings or None,
        }

    async def call_details(request: web.Request) -> web.Response:
        refused = check_api(request)
        if refused is not None:
            return refused
        sim.count("v3_call_details")
        if sim.faults.details_body is not None:
            return web.Response(
                body=sim.faults.details_body,
                headers={"Content-Type": sim.faults.details_content_type},
            )
        call = sim.calls.get(request.match_info["call_sid"])
        if call is None:
            return api_error(404)
        details = _patched(v3_details(call, request), sim.faults.details_patch)
        return envelope({"call_details": details})

    async def active_calls(request: web.Request) -> web.Response:
        refused = check_api(request)
        if refused is not None:
            return refused
        sim.count("active")
        now = sim.now()
        active = [
            _patched(
                {
                    "call_sid": c.sid,
                    "status": "in-progress" if now >= c.start else "ringing",
                    "from": c.from_number,
                    "to": c.to_number,
                    "start_time": c.start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "duration": max(0, int((now - c.start).total_seconds())),
                    "recording_enabled": bool(c.recordings),
                },
                sim.faults.active_item_patches.get(c.sid, {}),
            )
            for c in list(sim.calls.values())
            if c.in_progress(now)
        ]
        total = len(active)
        if "limit" in request.query:  # the older page's paging; the newer one lists them all
            try:
                offset = int(request.query.get("offset", "0"))
                if sim.faults.active_ignores_offset:
                    offset = 0
                limit = int(request.query["limit"])
            except ValueError:
                return api_error(400, "limit and offset must be whole numbers")
            active = active[offset : offset + limit]
        return envelope({"active_calls": active, "total_active": total})

    async def bulk_calls(request: web.Request) -> web.Response:
        refused = check_api(request)
        if refused is not None:
            return refused
        sim.count("v1_bulk")
        if sim.faults.bulk_body is not None:
            return web.Response(
                body=sim.faults.bulk_body, headers={"Content-Type": "application/json"}
            )
        q = request.query
        now = sim.now()
        try:
            page_size = int(q.get("PageSize", "50"))
            if not 1 <= page_size <= 100:
                raise ValueError("PageSize must be between 1 and 100")
            gte, lte = _date_range(q.get("DateCreated"), now)
            validity = q.get("RecordingUrlValidity")
            ttl = None
            if validity is not None:
                minutes = int(validity)
                if not 5 <= minutes <= 60:
                    raise ValueError("RecordingUrlValidity must be between 5 and 60")
                if sim.max_url_validity is not None and minutes > sim.max_url_validity:
                    raise ValueError(
                        f"RecordingUrlValidity must be at most {sim.max_url_validity} "
                        "on this account"
                    )
                ttl = minutes * 60.0
        except ValueError as exc:
            return api_error(400, str(exc))
        ascending = q.get("SortBy", "DateCreated:desc").lower().endswith(":asc")
        wanted = set(q["Sid"].split(",")) if q.get("Sid") else None
        calls = sorted(
            (
                c
                for c in list(sim.calls.values())
                if not c.in_progress(now)  # over: listed even while still processing
                # By whole seconds, as Exotel's DateCreated has them: a call at 23:59:59.6 is
                # in the day whose lte is 23:59:59.
                and gte <= c.created.replace(microsecond=0) <= lte
                and (wanted is None or c.sid in wanted)
            ),
            key=lambda c: (c.created, c.sid),
            reverse=not ascending,
        )
        after = q.get("After")
        if after:
            position = next((i for i, c in enumerate(calls) if c.sid == after), None)
            if position is None:
                return api_error(400, "invalid After cursor")
            calls_after = calls[position + 1 :]
        else:
            calls_after = calls
        page = calls_after[:page_size]
        params = {k: v for k, v in q.items() if k != "After"}
        path = request.path
        next_uri = (
            f"{path}?{urlencode({**params, 'After': page[-1].sid})}"
            if len(calls_after) > page_size
            else None
        )
        if sim.faults.next_page_uri is not None:
            next_uri = sim.faults.next_page_uri
        items = [
            _patched(
                _patched(_v1_item(sim, c, base_url(request), ttl), sim.faults.bulk_items_patch),
                sim.faults.bulk_item_patches.get(c.sid, {}),
            )
            for c in page
        ]
        return web.json_response(
            {
                "Metadata": {
                    "Total": len(calls),
                    "PageSize": page_size,
                    "FirstPageUri": f"{path}?{urlencode(params)}",
                    "PrevPageUri": None,
                    "NextPageUri": next_uri,
                },
                "Calls": items,
            }
        )

    def basic_refusal(request: web.Request) -> web.Response | None:
        """None if the request carries the account's HTTP Basic credentials, else a 401."""
        expected = "Basic " + base64.b64encode(f"{sim.api_key}:{sim.api_token}".encode()).decode()
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        sim.count("unauthorized_recording_requests")
        return web.Response(
            status=401,
            text="Authentication required: this recording is private",
            headers={"WWW-Authenticate": 'Basic realm="Exotel recordings"'},
        )

    async def recording(request: web.Request) -> web.StreamResponse:
        sim.count("recording_requests")
        if "Authorization" in request.headers:
            sim.count("credentialed_requests")
            sim.count(f"credentialed_requests:{request.host}")
        signed = any(k.lower().startswith("x-amz-") for k in request.query)
        if sim.private_recordings and not signed:
            refused = basic_refusal(request)
            if refused is not None:
                return refused
            name = request.match_info["name"].rsplit(".", 1)[0]
            asset = sim.asset(name)
            if asset is None or request.match_info["account"] != sim.account_sid:
                return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
            return await _serve(request, sim, asset, sim.faults.next_recording(asset.call_sid))
        if "Authorization" in request.headers:
            return _s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the "
                "X-Amz-Algorithm query parameter, Signature query string parameter or "
                "the Authorization header should be specified",
            )
        name = request.match_info["name"].rsplit(".", 1)[0]
        asset = sim.asset(name)
        if asset is None or request.match_info["account"] != sim.account_sid:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        q = request.query
        try:
            amz_date, expires = q["X-Amz-Date"], int(q["X-Amz-Expires"])
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except (KeyError, ValueError):
            return _s3_error(
                403,
                "AccessDenied",
                "Query-string authentication requires the X-Amz-Date and X-Amz-Expires parameters",
            )
        if not hmac.compare_digest(
            q.get("X-Amz-Signature", ""), sim._sign(request.path, amz_date, expires)
        ):
            return _s3_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        fault = sim.faults.next_recording(asset.call_sid)
        now = sim.now()
        deadline = signed_at + timedelta(seconds=expires)
        if now > deadline or fault == "expired":
            sim.count("expired_refusals")
            return _s3_error(
                403,
                "AccessDenied",
                "Request has expired",
                **{
                    "X-Amz-Expires": str(expires),
                    "Expires": deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "ServerTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            )
        return await _serve(request, sim, asset, fault)

    async def voice_logs(request: web.Request) -> web.Response:
        refused = check_api(request)
        if refused is not None:
            return refused
        sim.count("voice_logs")
        call = sim.calls.get(request.match_info["call_sid"])
        if not sim.voice_logs_enabled or call is None:
            return api_error(404, "Voice logs are not available" if call else None)
        fmt = request.query.get("format", "mp3")
        channel = request.query.get("channel", "single")
        if fmt not in ("mp3", "wav") or channel not in ("single", "dual"):
            return api_error(400, "format must be mp3|wav and channel single|dual")
        now = sim.now()
        log: dict[str, Any] = {"call_sid": call.sid, "format": fmt, "channel": channel}
        if call.voice_log_status is not None:
            log["status"] = call.voice_log_status
        elif call.state(now) == "active":
            log["status"] = "processing"
        elif not call.recordings:
            log["status"] = "not_available"
        else:
            token, asset = sim.voice_log_asset(call, fmt, channel)
            log.update(
                status="available",
                recording_url=sim.presign_token(base_url(request), token, asset.ext),
                recording_duration=int((call.end - call.start).total_seconds()),
                recording_size_bytes=asset.size,
                created_at=call.ready_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                expires_at=(now + timedelta(seconds=sim.url_ttl)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        return envelope({"voice_log": log})

    async def legs(request: web.Request) -> web.Response:
        refused = check_api(request)
        if refused is not None:
            return refused
        sim.count("legs")
        call = sim.calls.get(request.match_info["call_sid"])
        if not sim.legs_enabled or call is None:
            return api_error(404, "Legs API is not enabled for this account" if call else None)

        def leg(n: int, contact: str, **extra: str) -> dict[str, str]:
            return {
                "sid": f"{call.sid[:24]}leg{n:05d}",
                "name": f"leg {n}",
                "contact_uri": contact,
                "date_created": fmt_v3(call.start),
                "date_updated": fmt_v3(call.end),
                "status": "completed" if call.status == "completed" else "no-answer",
                **extra,
            }

        details = {
            "call_sid": call.sid,
            "account_sid": sim.account_sid,
            "from": [leg(1, call.from_number)],
            "to": [leg(2, call.to_number, group_id="1", group_name="Agents")],
        }
        return envelope({"leg_details": details})

    account = r"{account:[^/]+}"
    app.router.add_get(f"/v3/accounts/{account}/calls/{{call_sid}}/voice-logs", voice_logs)
    app.router.add_get(f"/v3/accounts/{account}/calls/{{call_sid}}/legs", legs)
    app.router.add_get(f"/v3/accounts/{account}/calls/active", active_calls)
    app.router.add_get(f"/v3/accounts/{account}/calls/{{call_sid}}", call_details)
    app.router.add_get(f"/v1/Accounts/{account}/Calls.json", bulk_calls)
    app.router.add_get(f"/exotel-recordings/{account}/{{name}}", recording)


async def _serve(
    request: web.Request, sim: Simulator, asset: Asset, fault: str | None
) -> web.StreamResponse:
    """A recording request that passed its checks (signature or credentials): the body, or the
    injected recording fault."""
    if fault == "expired":
        sim.count("expired_refusals")
        return _s3_error(403, "AccessDenied", "Request has expired")
    if fault == "html":
        return web.Response(
            text="<html><body><h1>Recording unavailable</h1></body></html>",
            content_type="text/html",
        )
    if fault == "xml200":
        return web.Response(
            text='<?xml version="1.0"?><Error><Code>NoSuchKey</Code></Error>',
            content_type="application/xml",
        )
    if fault == "empty":
        return web.Response(body=b"", content_type=asset.content_type)
    if fault in ("gzip", "gzip_lie", "brotli", "gzip_bomb"):
        body = asset.body()
        if fault == "gzip":
            body = gzip.compress(body)
        elif fault == "gzip_bomb":
            body = gzip.compress(asset.body()[:14] + bytes(64 * 1024 * 1024))
        encoding = "br" if fault == "brotli" else "gzip"
        return web.Response(
            body=body,
            headers={"Content-Type": asset.content_type, "Content-Encoding": encoding},
        )
    if fault == "redirect":
        raise web.HTTPFound(sim.faults.redirect_to or str(request.url))
    if fault == "endless":
        return await _endless(request, asset)
    return await _stream(request, sim, asset, fault)


async def _stream(
    request: web.Request, sim: Simulator, asset: Asset, fault: str | None
) -> web.StreamResponse:
    size = asset.size
    start, end, status = 0, size, 200
    # As S3 does: a strong ETag for the object's version, and a Range honoured only when an
    # If-Range (if sent) names that version; else the whole body, 200.
    etag = '"' + hashlib.md5(f"{asset.seed_key}:{size}".encode()).hexdigest() + '"'
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range != etag:
        range_header = None
    if range_header and fault != "no_range":
        try:
            unit, spec = range_header.split("=", 1)
            first, _, last = spec.partition("-")
            start = int(first)
            end = int(last) + 1 if last else size
            if unit.strip() != "bytes" or not 0 <= start < size or end <= start:
                raise ValueError
            end, status = min(end, size), 206
        except ValueError:
            return _s3_error(416, "InvalidRange", "The requested range is not satisfiable")
    length = end - start
    announced = length + (1000 if fault == "short_length" else 0)
    headers = {
        "Content-Type": asset.content_type,
        "Accept-Ranges": "bytes",
        "Content-Length": str(10 * 1024**3 if fault == "huge_length" else announced),
        "ETag": etag,
    }
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    if status == 206:
        sim.count("range_requests")
        sim.count("range_bytes_asked", length)
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    try:
        return await _send_body(request, response, sim, asset, fault, start, end, length)
    except ConnectionResetError:  # the client went away (it refused the body): as S3, no error
        return response


async def _send_body(
    request: web.Request,
    response: web.StreamResponse,
    sim: Simulator,
    asset: Asset,
    fault: str | None,
    start: int,
    end: int,
    length: int,
) -> web.StreamResponse:
    size = asset.size
    sent = 0
    cut_at = length // 2 if fault == "cut" else None
    for chunk in recording_body(asset.seed_key, size, start, end, asset.content_type):
        if fault == "noise" and sent == 0:
            chunk = b"\x00NOTAUDIO" + chunk[9:]
        if cut_at is not None and sent + len(chunk) > cut_at:
            sim.count("bytes_served", cut_at - sent)
            await response.write(chunk[: cut_at - sent])
            if request.transport is not None:
                request.transport.abort()  # a connection reset mid-body
            return response
        await response.write(chunk)
        sent += len(chunk)
        sim.count("bytes_served", len(chunk))
        if sim.faults.bandwidth:
            await asyncio.sleep(len(chunk) / sim.faults.bandwidth)
        elif fault == "slow":
            await asyncio.sleep(0.05)
    if fault == "short_length":
        if request.transport is not None:
            request.transport.close()
        return response
    sim.count("recordings_served_ok")
    await response.write_eof()
    return response


async def _endless(request: web.Request, asset: Asset) -> web.StreamResponse:
    """A recording that never ends: the client has to give up (or be capped)."""
    response = web.StreamResponse(headers={"Content-Type": asset.content_type})
    response.enable_chunked_encoding()
    await response.prepare(request)
    head = asset.body()[:14]
    chunk = head + bytes(256 * 1024 - len(head))
    try:
        while True:
            await response.write(chunk)
            chunk = bytes(256 * 1024)
    except (ConnectionError, RuntimeError):
        return response


def _date_range(raw: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``gte:YYYY-MM-DD HH:MM:SS;lte:YYYY-MM-DD HH:MM:SS`` (IST) → aware bounds."""
    if not raw:
        return now - timedelta(days=31), now
    bounds: dict[str, datetime] = {}
    for part in raw.split(";"):
        op, _, value = part.partition(":")
        if op not in ("gte", "lte"):
            raise ValueError(f"DateCreated: unknown operator {op!r}")
        bounds[op] = datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=IST)
    gte = bounds.get("gte", now - timedelta(days=31))
    lte = bounds.get("lte", now)
    if lte < gte:
        raise ValueError("DateCreated: lte is before gte")
    if lte - gte > timedelta(days=31):
        raise ValueError("DateCreated range is longer than one month")
    if gte < now - timedelta(days=183):
        raise ValueError("DateCreated is older than six months")
    return gte, lte


def _v1_item(sim: Simulator, call: SimCall, base_url: str, ttl: float | None) -> dict[str, Any]:
    # While post-call processing runs, the recording is not there yet (nor the final DateUpdated).
    has_recording = bool(call.recordings) and call.state(sim.now()) == "terminal"
    return {
        "Sid": call.sid,
        "ParentCallSid": None,
        "DateCreated": fmt_v1(call.created),
        "DateUpdated": fmt_v1(min(call.ready_at, sim.now())),
        "AccountSid": sim.account_sid,
        "To": call.to_number,
        "From": call.from_number,
        "PhoneNumberSid": call.virtual_number,
        "Status": V1_STATUS.get(call.status, "completed"),
        "StartTime": fmt_v1(call.start),
        "EndTime": fmt_v1(call.end),
        "Duration": int((call.end - call.start).total_seconds()),
        "Price": "1.500",
        "Direction": call.direction,
        "AnsweredBy": "human" if call.status == "completed" else None,
        "RecordingUrl": (
            f"{base_url}/exotel-recordings/{sim.account_sid}/{call.tokens[0]}.mp3"
            if has_recording
            else None
        ),
        "PreSignedRecordingUrl": (
            sim.presign(base_url, call, 1, ttl)
            if has_recording and not sim.private_recordings
            else None
        ),
        "Uri": f"/v1/Accounts/{sim.account_sid}/Calls/{call.sid}.json",
    }
