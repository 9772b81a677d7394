"""Downloading one recording from its URL into a spool file, hashing as it streams.

The body is streamed in chunks into a temporary file (never held whole in memory) while its
SHA-256 and size are computed; the spool file is the rewindable input the storage layer uploads
from, so an upload retry never downloads again. Errors are classified here, where the recording
host's HTTP is spoken:

* 403 (``AccessDenied`` "Request has expired", or any other S3-style refusal) →
  ``RecordingExpired``: the worker fetches a fresh URL from the call details.
* 5xx, 429, a body cut off, shorter or longer than its Content-Length, a reset or a timeout →
  ``RecordingTransferError`` (retryable).
* 401 (a private recording: unsigned, needs HTTP Basic) → ``RecordingAuthRequired``, not
  retried; the message says whether the credentials were sent and, if not, why not
  (``archiver.recording_auth``), and names the fix.
* other 4xx → ``RecordingUnavailable``.
* status 200 with an HTML/XML/JSON body, or an empty body → ``NotARecording``.
* more bytes than ``max_bytes`` (announced by Content-Length, or streamed) → ``RecordingTooLarge``
  (not retried; the spool file is dropped with the failed attempt).
* a URL (or a redirect) the address policy refuses → ``UnsafeAddress`` (``archiver.addresses``);
  one that is not a well-formed http(s) URL → ``BadUrl``, before any connection (and if the
  HTTP stack still finds something to refuse in it, that is ``BadUrl`` too, never a bare
  ``ValueError``/``UnicodeError`` or a retried transfer error).

A resume names the version of the bytes it has (``If-Range`` with the first answer's strong
``ETag``, else its ``Last-Modified``), and a 206 that does not carry the same one is started
again from byte 0: a recording replaced at the source between a cut-off and its resume is never
stored as a mix of two bodies.

``Content-Encoding: gzip`` (or ``deflate``): the recording is what the source means — the
decoded audio — so the body is decoded as it streams, the SHA-256, size and content gate are
those of the decoded bytes, and the cap applies to the decoded size (a small compressed body
cannot inflate past it). An encoded body is never resumed with Range (a byte range of the
encoded stream cannot continue a decoded file): a cut-off one is started again from byte 0. Any
other encoding is refused (``RecordingUnavailable``). The session itself never decodes
(``auto_decompress=False``), so this is the one place it happens.

The pre-signed URL is a secret until it expires: no message here contains it, only its
signature-free form (``archiver.redact.strip_url``). The recording session has no auth and no
cookies. With an ``auth`` (``archiver.recording_auth.RecordingAuth``), each request — the first,
every Range resume, every redirect hop — carries the Exotel credentials (HTTP Basic) only if
``auth.header_for`` allows that exact URL and, for a redirect hop, the hop is same-origin (scheme,
host, port) with the URL the download started from. A pre-signed URL never gets them (S3 refuses
a pre-signed request with an Authorization header), and aiohttp never adds any from user-info:
the address policy refuses a URL that has one before any connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import ssl
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol
from urllib.parse import urljoin

import aiohttp

from archiver.addresses import AddressPolicy, GuardedResolver, well_formed
from archiver.errors import (
    BadUrl,
    NotARecording,
    RecordingAuthRequired,
    RecordingExpired,
    RecordingTooLarge,
    RecordingTransferError,
    RecordingUnavailable,
)
from archiver.recording_auth import HOSTS_VARIABLE, RecordingAuth, same_origin
from archiver.redact import strip_url
from archiver.tls import certificate_refused

CHUNK = 256 * 1024
_FLUSH_AT = 1024 * 1024  # bytes buffered before one write to the spool file (off the loop)
_TEXT_TYPES = ("text/html", "text/xml", "application/xml", "application/json", "text/plain")
_S3_ERROR_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_S3_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{1,200})</Message>")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-\d+/(\d+|\*)$")
_INFLATE_STEP = 1024 * 1024  # decoded bytes produced at a time: memory stays flat on a gzip bomb
_REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 3
TOO_LARGE_FIX = (
    "raise ARCHIVER_MAX_RECORDING_SIZE (--max-recording-size, in MiB) if it is a genuine recording"
)


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


class Tap(Protocol):
    """Takes each piece of the body as the spool does (``archiver.sinks.streaming.Tap``)."""

    async def take(self, offset: int, data: bytes, head: bytes, content_type: str) -> None: ...


class Partial:
    """A download in progress: the spool file and the hash of the bytes in it, so far.

    Survives a failed attempt, so the next attempt (possibly on a fresh URL) asks only for the
    rest with ``Range: bytes=N-``; the SHA-256 keeps running over the whole object. With a
    ``tap``, every piece written to the spool is handed to it too, with its offset (0 again
    after a restart), the body's first bytes and its Content-Type: a streamed upload.
    """

    def __init__(self, spool: BinaryIO, *, tap: Tap | None = None) -> None:
        self.spool = spool
        self.tap = tap
        self.content_type = ""
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
        self.validator: tuple[str, str] | None = None
        """(header, value) naming the version of the body in the spool: its strong ``ETag``,
        else its ``Last-Modified``. A resume sends it as ``If-Range`` and a 206 must carry it:
        the rest of another version of the recording never continues this one."""

    def _write(self, data: bytes) -> None:
        self.spool.write(data)
        self.digest.update(data)  # hashlib releases the GIL for large buffers

    async def append(self, data: bytes) -> None:
        """Write ``data`` to the spool and hash it, in one hop off the event loop."""
        if not data:
            return
        offset = self.size
        await asyncio.to_thread(self._write, data)
        if len(self.head) < 64:
            self.head += data[: 64 - len(self.head)]
        self.size += len(data)
        if self.tap is not None:
            await self.tap.take(offset, data, self.head, self.content_type)


def sniff_format(head: bytes) -> str | None:
    """``mp3`` (ID3 tag or MPEG frame sync), ``wav`` (RIFF....WAVE), or None."""
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    return None


def recording_session(
    timeout: float = 300.0, *, policy: AddressPolicy | None = None
) -> aiohttp.ClientSession:
    """The HTTP session for pre-signed URLs: no auth, no cookies, bytes exactly as served.

    With a ``policy``, every name is resolved through ``GuardedResolver``: connections go only
    to addresses the policy allows, whatever DNS says at the time.
    """
    connector = (
        aiohttp.TCPConnector(resolver=GuardedResolver(policy)) if policy is not None else None
    )
    return aiohttp.ClientSession(
        connector=connector,
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


def _decoder(encoding: str, where: str) -> Any:
    """A zlib decoder for ``Content-Encoding``, None for an unencoded body."""
    value = encoding.strip().lower()
    if value in ("", "identity"):
        return None
    if value in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if value == "deflate":
        return zlib.decompressobj()
    raise RecordingUnavailable(
        f"{where}: the body is encoded as {value[:40]!r}, which the archiver does not decode "
        "(gzip and deflate only); nothing was stored"
    )


def _inflate(decoder: Any, data: bytes) -> Iterator[bytes]:
    """Decode ``data`` in pieces of at most ``_INFLATE_STEP`` bytes."""
    yield decoder.decompress(data, _INFLATE_STEP)
    while decoder.unconsumed_tail:
        yield decoder.decompress(decoder.unconsumed_tail, _INFLATE_STEP)


@dataclass
class _Hop:
    """The last request ``_get`` made: its URL, and whether (or why not) it carried credentials."""

    url: str
    sent_credentials: bool = False
    withheld: str | None = None
    """Why the credentials were not sent (None: no ``auth``, or sent)."""


def _credentials(auth: RecordingAuth | None, first: str, url: str, hop: _Hop) -> dict[str, str]:
    """The Authorization header for a request to ``url`` (``first`` began the download)."""
    hop.url, hop.sent_credentials, hop.withheld = url, False, None
    if auth is None:
        return {}
    if url != first and not same_origin(first, url):
        hop.withheld = "credentials are never sent on a redirect to another host, port or scheme"
        return {}
    why = auth.refusal(url)
    if why is not None:
        hop.withheld = why
        return {}
    header = auth.header_for(url)
    if header is None:  # pragma: no cover - refusal() and header_for() agree
        return {}
    hop.sent_credentials = True
    return {"Authorization": header}


@contextlib.asynccontextmanager
async def _get(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    policy: AddressPolicy | None,
    what: str,
    auth: RecordingAuth | None = None,
    hop: _Hop | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET ``url``, following up to ``MAX_REDIRECTS`` redirects, each hop checked by ``policy``
    and given credentials only as ``_credentials`` says (``hop`` tells the caller what the last
    request was)."""
    first = url
    hop = hop if hop is not None else _Hop(url)
    for _hop in range(MAX_REDIRECTS + 1):
        if policy is not None:
            policy.check_url(url, what=what)
        else:
            well_formed(url, what=what)
        request_headers = {**headers, **_credentials(auth, first, url, hop)}
        try:
            resp = await session.get(url, headers=request_headers, allow_redirects=False)
        except (aiohttp.ClientError, ValueError) as exc:  # UnicodeError (IDNA) is a ValueError
            # A certificate error is a ValueError too: left to download() to classify.
            if isinstance(exc, ssl.SSLError | aiohttp.ClientError) and not isinstance(
                exc, aiohttp.InvalidURL
            ):
                raise
            raise BadUrl(
                f"{what}: the URL was refused by the HTTP client ({type(exc).__name__}): "
                f"{strip_url(url)[:100]!r}"
            ) from None
        location = resp.headers.get("Location")
        if resp.status in _REDIRECTS and location:
            resp.release()
            try:
                url = urljoin(url, location)
            except ValueError:
                raise BadUrl(f"{what}: redirected to a malformed URL") from None
            continue
        try:
            yield resp
        finally:
            resp.release()
        return
    raise RecordingUnavailable(f"{what}: more than {MAX_REDIRECTS} redirects")


def _validator(resp: aiohttp.ClientResponse) -> tuple[str, str] | None:
    """The body's version as ``If-Range`` can name it: a strong ETag, else Last-Modified."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return "ETag", etag
    modified = resp.headers.get("Last-Modified")
    return ("Last-Modified", modified) if modified else None


def _content_range_start(value: str | None) -> tuple[int, int | None] | None:
    """``bytes 100-199/200`` → (100, 200); None if absent or unreadable."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None
    total = match.group(2)
    return int(match.group(1)), (None if total == "*" else int(total))


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def _auth_required(where: str, url: str, hop: _Hop) -> RecordingAuthRequired:
    """The 401 of a private recording, saying what was (not) sent and the fix."""
    if hop.sent_credentials:
        return RecordingAuthRequired(
            f"{where}: refused with 401 although the Exotel API key and token were sent: the "
            "recording is private and the host does not accept the account's credentials; "
            "check EXOTEL_API_KEY/EXOTEL_API_TOKEN are this account's, or enable pre-signed "
            "recording URLs on the Exotel account"
        )
    why = hop.withheld or "no credentials are given to this download"
    if hop.url != url:
        why = f"{why} (redirected to {strip_url(hop.url)})"
    return RecordingAuthRequired(
        f"{where}: the recording is private (HTTP 401) and the Exotel credentials were not sent: "
        f"{why}. Fix: its host must be in {HOSTS_VARIABLE} and the URL https (or enable "
        "pre-signed recording URLs on the Exotel account)"
    )


async def download(
    session: aiohttp.ClientSession,
    url: str,
    partial: Partial,
    *,
    what: str,
    max_bytes: int | None = None,
    policy: AddressPolicy | None = None,
    auth: RecordingAuth | None = None,
) -> Downloaded:
    """GET ``url`` into ``partial``, continuing it with a Range request if it has bytes already.

    With ``auth``, a request carries the Exotel credentials only where the module docstring
    says. Raises a ``RecordingError`` (or ``UnsafeAddress``) on any failure; the bytes received
    before a failure stay in ``partial`` for the next attempt (unless the body was encoded).
    """
    where = f"{what} from {strip_url(url)}"
    headers = {"Range": f"bytes={partial.size}-"} if partial.size else {}
    if partial.size and partial.validator is not None:
        headers["If-Range"] = partial.validator[1]
    buffer = bytearray()
    decoder: Any = None
    raw = 0
    encoded_length: int | None = None
    hop = _Hop(url)
    try:
        async with _get(session, url, headers, policy, what, auth, hop) as resp:
            content_type = resp.headers.get("Content-Type", "")
            if resp.status not in (200, 206):
                body = await resp.content.read(4096)
                detail = _s3_error(body)
                if resp.status == 401:
                    raise _auth_required(where, url, hop)
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
            partial.content_type = content_type
            mime = content_type.split(";")[0].strip().lower()
            if mime in _TEXT_TYPES:
                raise NotARecording(
                    f"{where}: HTTP {resp.status} but the body is {mime}, not audio (an error page)"
                )
            decoder = _decoder(resp.headers.get("Content-Encoding", ""), where)
            if decoder is not None:
                if resp.status == 206 or partial.size:  # encoded: no Range, start from byte 0
                    partial.restarts += 1
                    partial.reset()
                    if resp.status == 206:
                        raise RecordingTransferError(f"{where}: encoded range; restarting")
                encoded_length = resp.content_length
            elif resp.status == 206:
                span = _content_range_start(resp.headers.get("Content-Range"))
                if span is None or span[0] != partial.size:
                    partial.reset()
                    raise RecordingTransferError(f"{where}: unusable Content-Range; restarting")
                validator = partial.validator
                if validator is not None and resp.headers.get(validator[0]) != validator[1]:
                    partial.restarts += 1
                    partial.reset()
                    raise RecordingTransferError(
                        f"{where}: the rest came from another version of the recording "
                        f"({validator[0]} changed); restarting from byte 0"
                    )
                partial.resumes += 1
                partial.total = span[1] if span[1] is not None else partial.total
            else:
                if partial.size:  # the source ignored Range (or If-Range): start from byte 0
                    partial.restarts += 1
                    partial.reset()
                partial.validator = _validator(resp)
                partial.total = resp.content_length
                if decoder is not None:
                    partial.total = None  # Content-Length counts encoded bytes
            if max_bytes is not None and partial.total is not None and partial.total > max_bytes:
                raise RecordingTooLarge(
                    f"{where}: the source announces {partial.total} bytes, over the "
                    f"{_mib(max_bytes)} limit; nothing stored — {TOO_LARGE_FIX}"
                )
            async for chunk in resp.content.iter_chunked(CHUNK):
                raw += len(chunk)
                for piece in _inflate(decoder, chunk) if decoder is not None else (chunk,):
                    buffer += piece
                    if max_bytes is not None and partial.size + len(buffer) > max_bytes:
                        raise RecordingTooLarge(
                            f"{where}: the body goes on past the {_mib(max_bytes)} limit; "
                            f"nothing stored — {TOO_LARGE_FIX}"
                        )
                if len(buffer) >= _FLUSH_AT:
                    await partial.append(bytes(buffer))
                    buffer.clear()
            if decoder is not None:
                buffer += decoder.flush()
                if max_bytes is not None and partial.size + len(buffer) > max_bytes:
                    raise RecordingTooLarge(
                        f"{where}: the body goes on past the {_mib(max_bytes)} limit; "
                        f"nothing stored — {TOO_LARGE_FIX}"
                    )
    except aiohttp.ClientConnectorCertificateError as exc:  # not transient: stop, name the fix
        raise certificate_refused(f"download {what}", strip_url(url), exc, s3=False) from None
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        if decoder is not None:  # a decoded prefix cannot be continued by Range
            got = raw
            partial.reset()
        else:
            await partial.append(bytes(buffer))  # what arrived is a valid prefix: keep it
            got = partial.size
        raise RecordingTransferError(
            f"{where}: transfer cut off after {got} bytes ({type(exc).__name__})"
        ) from None
    except zlib.error as exc:
        partial.reset()
        raise NotARecording(f"{where}: the encoded body does not decode ({exc})") from None
    except aiohttp.ClientError as exc:
        raise RecordingTransferError(f"{where}: {type(exc).__name__}") from None
    if decoder is not None:
        if (encoded_length is not None and raw != encoded_length) or not decoder.eof:
            partial.reset()
            raise RecordingTransferError(
                f"{where}: the encoded body was cut off ({raw} bytes"
                + (f" of {encoded_length})" if encoded_length is not None else ")")
            )
        if decoder.unused_data:
            partial.reset()
            raise NotARecording(f"{where}: bytes after the end of the encoded body")
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
