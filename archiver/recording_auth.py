"""When a recording download may carry the Exotel credentials (HTTP Basic).

Since October 2024 Exotel's recordings are private: an unsigned recording URL (such as
``https://recordings.exotel.com/exotelrecordings/ACCOUNT/FILE.mp3``) is served only with HTTP
Basic of the account's API key (user) and token (password), unless the account hands out
pre-signed URLs. Those credentials are the account's master secret, and S3 refuses a pre-signed
request that carries an ``Authorization`` header, so ``RecordingAuth.header_for(url)`` gives the
``Basic ...`` value only when *every* rule holds, and None otherwise:

1. The URL is a string of printable ASCII only: no backslash, no whitespace, no control
   character, nothing non-ASCII (no IDNA/Unicode look-alike of a host).
2. Its scheme is ``https`` (in any case): never plain http.
3. Its authority has no user-info: any ``@`` in it means no credentials.
4. Its authority is written exactly as one of the allow-listed hosts
   (``ARCHIVER_RECORDING_AUTH_HOSTS``, lower case), optionally followed by ``:443``: no other
   port, no empty port, no trailing dot, no upper case, no percent-escape.
5. The host as aiohttp will connect to it (``yarl.URL(url).raw_host``, port 443) and the host
   ``urllib.parse.urlsplit`` sees are that same string: no parser disagreement can send the
   credentials somewhere else.
6. The URL is not pre-signed: ``archiver.redact.is_presigned`` is false, and no query parameter
   is named like a signature or its parts (``X-Amz-*``, ``X-Goog-*``, ``Signature``,
   ``Expires``, ``AWSAccessKeyId``, ``Policy``, ``Key-Pair-Id``, ``sig``, ``se``, ``sp``,
   ``sv``, ``Credential``), percent-encoded or not.
7. There are credentials: both the API key and token are set.

The downloader (``archiver.transfer.download``) asks for every request it makes — the first,
every Range resume, every redirect hop — and a redirect hop carries the credentials only if it is
also same-origin (scheme, host and port) with the URL it started from (``same_origin``). The
recording session itself never has credentials (no session auth, no cookies).

The header value is never shown: the repr and str of a ``RecordingAuth`` name only its hosts.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

import yarl

from archiver.redact import is_presigned

if TYPE_CHECKING:
    from archiver.config import Settings

HTTPS_PORT = 443
HOSTS_VARIABLE = "ARCHIVER_RECORDING_AUTH_HOSTS"

_SIGNING_PARAMS = frozenset(
    {
        "signature",
        "expires",
        "awsaccesskeyid",
        "policy",
        "key-pair-id",
        "sig",
        "se",
        "sp",
        "sv",
        "credential",
    }
)
_SIGNING_PREFIXES = ("x-amz-", "x-goog-")
_PRINTABLE_ASCII = re.compile(r"^[\x21-\x7e]+$")


def _signing_query(query: str) -> bool:
    """True if a parameter of ``query`` is named like part of a URL signature."""
    text = query
    for _ in range(3):  # undo double encoding too: X%252DAmz-Signature
        text = unquote(text)
    for name, _value in parse_qsl(text.replace(";", "&"), keep_blank_values=True):
        key = name.strip().lower()
        if key in _SIGNING_PARAMS or key.startswith(_SIGNING_PREFIXES):
            return True
    return False


def refusal(url: str, hosts: tuple[str, ...]) -> str | None:
    """Why ``url`` may not carry the credentials to one of ``hosts``, or None if it may.

    The reason is safe to show (no URL in it) and names what the operator can change.
    """
    if not isinstance(url, str) or not _PRINTABLE_ASCII.match(url) or "\\" in url:
        return "the URL has characters other than printable ASCII (or a backslash)"
    try:
        parts = urlsplit(url)
        split_host = parts.hostname or ""
        split_port = parts.port
    except ValueError:
        return "the URL is malformed"
    if parts.scheme.lower() != "https":
        return "the URL is not https (credentials are sent over https only)"
    authority = parts.netloc
    if "@" in authority:
        return "the URL carries a user name"
    host, sep, port = authority.partition(":")
    if host not in hosts:
        return f"its host is not in {HOSTS_VARIABLE}"
    if sep and port != str(HTTPS_PORT):
        return "the URL names a port other than 443"
    try:
        parsed = yarl.URL(url)
        connect_host, connect_port = parsed.raw_host, parsed.port
    except (ValueError, TypeError):  # UnicodeError is a ValueError
        return "the URL's host cannot be parsed"
    if connect_host != host or split_host != host or connect_port != HTTPS_PORT:
        return "the URL's host is read differently by different parsers"
    if split_port not in (None, HTTPS_PORT):
        return "the URL names a port other than 443"
    if is_presigned(url) or _signing_query(parts.query):
        return "the URL is pre-signed (it carries its own signature)"
    return None


def same_origin(first: str, other: str) -> bool:
    """True if ``other`` has the scheme, host and port of ``first`` (as aiohttp connects)."""
    try:
        a, b = yarl.URL(first), yarl.URL(other)
        return (a.scheme.lower(), a.raw_host, a.port) == (b.scheme.lower(), b.raw_host, b.port)
    except (ValueError, TypeError):
        return False


@dataclass(frozen=True)
class RecordingAuth:
    """The Exotel credentials for private recording URLs, and the hosts they may go to."""

    hosts: tuple[str, ...]
    _header: str = field(default="", repr=False, compare=False)

    @classmethod
    def from_credentials(
        cls, api_key: str, api_token: str, hosts: tuple[str, ...]
    ) -> RecordingAuth:
        """HTTP Basic of ``api_key``:``api_token``; none at all if either is empty."""
        header = ""
        if api_key and api_token:
            token = base64.b64encode(f"{api_key}:{api_token}".encode()).decode("ascii")
            header = f"Basic {token}"
        return cls(hosts=tuple(hosts), _header=header)

    @classmethod
    def from_settings(cls, settings: Settings) -> RecordingAuth:
        """From the account's API key and token and ``settings.recording_auth_hosts``."""
        return cls.from_credentials(
            settings.exotel.api_key.reveal(),
            settings.exotel.api_token.reveal(),
            settings.recording_auth_hosts,
        )

    def refusal(self, url: str) -> str | None:
        """Why ``url`` gets no credentials (module docstring), or None if it gets them."""
        if not self._header:
            return "no Exotel API key and token are set"
        return refusal(url, self.hosts)

    def header_for(self, url: str) -> str | None:
        """The ``Authorization`` value for a request to exactly ``url``, or None."""
        return self._header if self.refusal(url) is None else None

    def __str__(self) -> str:
        return repr(self)
