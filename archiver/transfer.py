"""Downloading one recording from its pre-signed URL into a spool file, hashing as it streams.

The body is streamed in chunks into a temporary file (never held whole in memory) while its
SHA-256 and size are computed; the spool file is the rewindable input the storage layer uploads
from, so an upload retry never downloads again. Errors are classified here, where the recording
host's HTTP is spoken:

* 403 (``AccessDenied`` "Request has expired", or any other S3-style refusal) →
  ``RecordingExpired``: the worker fetches a fresh URL from the call details.
* 5xx, 429, a body cut off, shorter or longer than its Content-Length, a reset or a timeout →
  ``RecordingTransferError`` (retryable).
* other 4xx → ``RecordingUnavailable``.
* status 200 with an HTML/XML/JSON body, or an empty body → ``NotARecording``.

The pre-signed URL is a secret until it expires: no message here contains it, only its
signature-free form (``archiver.redact.strip_url``). No credentials or cookies are ever sent to it:
the recording session has no auth, and S3 refuses a pre-signed request that carries an
Authorization header anyway.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO

import aiohttp

from archiver.errors import (
    NotARecording,
    RecordingExpired,
    RecordingTransferError,
    RecordingUnavailable,
)
from archiver.redact import strip_url

CHUNK = 256 * 1024
_FLUSH_AT = 1024 * 1024  # bytes buffered before one write to the spool file (off the loop)
_TEXT_TYPES = ("text/html", "text/xml", "application/xml", "application/json", "text/plain")
_S3_ERROR_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_S3_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{1,200})</Message>")


@dataclass(frozen=True)
class Downloaded:
    """A recording body now in the spool file: its size, SHA-256 and what the host said it is."""

    size: int
    sha256: str
    content_type: str
    head: bytes
    """The first bytes, for format sniffing."""


def recording_session(timeout: float = 300.0) -> aiohttp.ClientSession:
    """The HTTP session for pre-signed URLs: no auth, no cookies, bytes exactly as served."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        headers={"User-Agent": "exotel-archiver"},
    )


def _s3_error(body: bytes) -> str:
    code = _S3_ERROR_CODE.search(body)
    message = _S3_ERROR_MESSAGE.search(body)
    parts = [m.group(1).decode("utf-8", "replace") for m in (code, message) if m]
    return ": ".join(parts) or "no error details"


async def download(
    session: aiohttp.ClientSession,
    url: str,
    spool: BinaryIO,
    *,
    what: str,
    max_bytes: int | None = None,
) -> Downloaded:
    """GET ``url`` into ``spool`` (truncated first). Raises a ``RecordingError`` on any failure."""
    where = f"{what} from {strip_url(url)}"
    spool.seek(0)
    spool.truncate()
    digest = hashlib.sha256()
    size = 0
    head = b""
    try:
        async with session.get(url, allow_redirects=True, max_redirects=3) as resp:
            content_type = resp.headers.get("Content-Type", "")
            if resp.status != 200:
                body = await resp.content.read(4096)
                detail = _s3_error(body)
                if resp.status == 403:
                    raise RecordingExpired(
                        f"{where}: refused with 403 ({detail}); the URL needs refreshing"
                    )
                if resp.status == 429 or resp.status >= 500:
                    raise RecordingTransferError(f"{where}: HTTP {resp.status} ({detail})")
                raise RecordingUnavailable(f"{where}: HTTP {resp.status} ({detail})")
            mime = content_type.split(";")[0].strip().lower()
            if mime in _TEXT_TYPES:
                raise NotARecording(
                    f"{where}: HTTP 200 but the body is {mime}, not audio (an error page)"
                )
            expected = resp.content_length
            if max_bytes is not None and expected is not None and expected > max_bytes:
                raise RecordingUnavailable(
                    f"{where}: {expected} bytes is over the limit of {max_bytes}"
                )
            buffer = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK):
                if not head:
                    head = bytes(chunk[:64])
                digest.update(chunk)
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise RecordingUnavailable(
                        f"{where}: body exceeds the limit of {max_bytes} bytes"
                    )
                buffer += chunk
                if len(buffer) >= _FLUSH_AT:
                    await asyncio.to_thread(spool.write, bytes(buffer))
                    buffer.clear()
            if buffer:
                await asyncio.to_thread(spool.write, bytes(buffer))
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        raise RecordingTransferError(
            f"{where}: transfer failed after {size} bytes ({type(exc).__name__})"
        ) from None
    except aiohttp.ClientError as exc:
        raise RecordingTransferError(f"{where}: {type(exc).__name__}") from None
    if expected is not None and size != expected:
        raise RecordingTransferError(f"{where}: got {size} bytes, Content-Length said {expected}")
    if size == 0:
        raise NotARecording(f"{where}: the body is empty")
    await asyncio.to_thread(spool.flush)
    return Downloaded(size=size, sha256=digest.hexdigest(), content_type=content_type, head=head)
