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
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-\d+/(\d+|\*)$")


@dataclass(frozen=True)
class Downloaded:
    """A recording body now in the spool file: its size, SHA-256 and what the host said it is."""

    size: int
    sha256: str
    content_type: str
    format: str
    """``mp3`` or ``wav``, from the body's first bytes (the content gate)."""
    resumes: int = 0
    """Range requests that continued a cut-off body."""
    restarts: int = 0
    """Times the body was started again from byte 0 (the source ignored Range)."""


class Partial:
    """A download in progress: the spool file and the hash of the bytes in it, so far.

    Survives a failed attempt, so the next attempt (possibly on a fresh URL) asks only for the
    rest with ``Range: bytes=N-``; the SHA-256 keeps running over the whole object.
    """

    def __init__(self, spool: BinaryIO) -> None:
        self.spool = spool
        self.resumes = 0
        self.restarts = 0
        self.reset()

    def reset(self) -> None:
        self.spool.seek(0)
        self.spool.truncate()
        self.digest = hashlib.sha256()
        self.size = 0
        self.total: int | None = None
        self.head = b""

    async def append(self, data: bytes) -> None:
        await asyncio.to_thread(self.spool.write, data)
        self.digest.update(data)
        if len(self.head) < 64:
            self.head += data[: 64 - len(self.head)]
        self.size += len(data)


def sniff_format(head: bytes) -> str | None:
    """``mp3`` (ID3 tag or MPEG frame sync), ``wav`` (RIFF....WAVE), or None."""
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    return None


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


def _content_range_start(value: str | None) -> tuple[int, int | None] | None:
    """``bytes 100-199/200`` → (100, 200); None if absent or unreadable."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None
    total = match.group(2)
    return int(match.group(1)), (None if total == "*" else int(total))


async def download(
    session: aiohttp.ClientSession,
    url: str,
    partial: Partial,
    *,
    what: str,
    max_bytes: int | None = None,
) -> Downloaded:
    """GET ``url`` into ``partial``, continuing it with a Range request if it has bytes already.

    Raises a ``RecordingError`` on any failure; the bytes received before a failure stay in
    ``partial`` for the next attempt.
    """
    where = f"{what} from {strip_url(url)}"
    headers = {"Range": f"bytes={partial.size}-"} if partial.size else {}
    buffer = bytearray()
    try:
        async with session.get(url, headers=headers, allow_redirects=True, max_redirects=3) as resp:
            content_type = resp.headers.get("Content-Type", "")
            if resp.status not in (200, 206):
                body = await resp.content.read(4096)
                detail = _s3_error(body)
                if resp.status == 403:
                    raise RecordingExpired(
                        f"{where}: refused with 403 ({detail}); the URL needs refreshing"
                    )
                if resp.status == 416:  # our Range is past the end: start again from 0
                    partial.reset()
                    raise RecordingTransferError(f"{where}: range not satisfiable; restarting")
                if resp.status == 429 or resp.status >= 500:
                    raise RecordingTransferError(f"{where}: HTTP {resp.status} ({detail})")
                raise RecordingUnavailable(f"{where}: HTTP {resp.status} ({detail})")
            mime = content_type.split(";")[0].strip().lower()
            if mime in _TEXT_TYPES:
                raise NotARecording(
                    f"{where}: HTTP {resp.status} but the body is {mime}, not audio (an error page)"
                )
            if resp.status == 206:
                span = _content_range_start(resp.headers.get("Content-Range"))
                if span is None or span[0] != partial.size:
                    partial.reset()
                    raise RecordingTransferError(f"{where}: unusable Content-Range; restarting")
                partial.resumes += 1
                partial.total = span[1] if span[1] is not None else partial.total
            else:
                if partial.size:  # the source ignored Range: start cleanly from byte 0
                    partial.restarts += 1
                    partial.reset()
                partial.total = resp.content_length
            if max_bytes is not None and partial.total is not None and partial.total > max_bytes:
                raise RecordingUnavailable(
                    f"{where}: {partial.total} bytes is over the limit of {max_bytes}"
                )
            async for chunk in resp.content.iter_chunked(CHUNK):
                buffer += chunk
                if max_bytes is not None and partial.size + len(buffer) > max_bytes:
                    raise RecordingUnavailable(
                        f"{where}: body exceeds the limit of {max_bytes} bytes"
                    )
                if len(buffer) >= _FLUSH_AT:
                    await partial.append(bytes(buffer))
                    buffer.clear()
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        await partial.append(bytes(buffer))  # what arrived is a valid prefix: keep it
        raise RecordingTransferError(
            f"{where}: transfer cut off after {partial.size} bytes ({type(exc).__name__})"
        ) from None
    except aiohttp.ClientError as exc:
        raise RecordingTransferError(f"{where}: {type(exc).__name__}") from None
    await partial.append(bytes(buffer))
    if partial.total is not None and partial.size != partial.total:
        got = partial.size
        partial.reset()
        raise RecordingTransferError(
            f"{where}: got {got} bytes, the source announced a different length"
        )
    if partial.size == 0:
        raise NotARecording(f"{where}: the body is empty")
    fmt = sniff_format(partial.head)
    if fmt is None:
        raise NotARecording(
            f"{where}: the body is not MP3 or WAV (first bytes {partial.head[:8].hex()})"
        )
    await asyncio.to_thread(partial.spool.flush)
    return Downloaded(
        size=partial.size,
        sha256=partial.digest.hexdigest(),
        content_type=content_type,
        format=fmt,
        resumes=partial.resumes,
        restarts=partial.restarts,
    )
