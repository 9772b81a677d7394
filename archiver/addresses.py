"""The address policy: where URLs handed to us by Exotel may make the archiver connect.

Recording URLs, voice-log URLs and v1 ``NextPageUri`` cursors come from Exotel's answers, not
from the operator. A compromised or buggy answer must not turn the archiver into a proxy into
its own network (server-side request forgery). The policy:

* only ``http`` and ``https`` URLs, with a host, without user:password;
* the host must be, and resolve only to, public addresses. Refused: loopback (127.0.0.0/8,
  ::1), link-local (169.254.0.0/16, fe80::/10), private (RFC 1918, 100.64.0.0/10, fc00::/7),
  unspecified (0.0.0.0, ::), multicast and reserved ranges — anything Python's ``ipaddress``
  does not call global. IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry;
* exceptions: ``archiver.allow_private_addresses`` (ARCHIVER_ALLOW_PRIVATE_ADDRESSES) lifts the
  private/loopback/link-local refusal for every host (e.g. a recording mirror on the LAN), and
  the very host of the configured Exotel API URLs is trusted the same way (so the built-in
  simulator on 127.0.0.1 works with no setting: the operator chose that host);
* never allowed, whatever the settings: the cloud metadata addresses (169.254.169.254,
  fd00:ec2::254), unspecified and multicast addresses.

The check is made twice: up front on the URL (a clear message before any connection), and at
connect time on the addresses DNS actually returned (``GuardedResolver``, installed in the
recording session's connector), so a name that resolves to a public address when checked and
to 127.0.0.1 when connected (DNS rebinding) is still refused. IP literals do not go through a
resolver; the up-front check, made again on every redirect hop, covers them.

Before any of that, the URL must be well formed (``well_formed``): a string of at most
``MAX_URL_LENGTH`` characters, without spaces or control characters, that ``urllib`` and
``yarl`` (what aiohttp connects with) both parse, with a host: an IP literal, or a name of
labels of 1 to 63 characters (letters, digits, ``-``, ``_``; 253 in all) that IDNA encodes and
that does not end in an all-digit label (no top-level domain is numeric: ``256.1.1.1`` is a
broken IP address, not a name), and a port from 0 to 65535. Anything else is ``BadUrl``: the
URL fails its call before any DNS lookup or connection, whatever DNS or the HTTP stack would
have made of it (``ValueError``/``UnicodeError`` deep inside, or retries of a name that can
never resolve).

A refusal is ``UnsafeAddress`` (``BadUrl`` for a malformed URL): permanent (not retried), and
only that call is recorded as failed; the run goes on.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from archiver.errors import BadUrl, UnsafeAddress
from archiver.redact import strip_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
"""Cloud instance-metadata endpoints (AWS, GCP, Azure, OpenStack; AWS's IPv6 one)."""

FIX = (
    "if this host is really yours and meant to be reached, set ARCHIVER_ALLOW_PRIVATE_ADDRESSES=on"
)


MAX_URL_LENGTH = 8192
"""Characters in a URL from Exotel, at most: a pre-signed S3 URL with a session token is
about 2,000; proxies and S3 itself refuse request lines much longer than 8 KiB."""
_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,63}$", re.ASCII)


def _shown(url: str) -> str:
    """``url`` for a message: no user-info, query or signature; short; one line."""
    return repr(strip_url(url)[:100])


def well_formed(url: object, *, what: str) -> SplitResult:
    """The parts of ``url`` if it is a well-formed http(s) URL with a host (see the module
    docstring); ``BadUrl`` (or ``UnsafeAddress`` for another scheme, or user-info) if not."""
    if not isinstance(url, str) or not url:
        raise BadUrl(f"{what}: the URL is empty or not a string")
    if len(url) > MAX_URL_LENGTH:
        raise BadUrl(
            f"{what}: the URL is {len(url)} characters long (at most {MAX_URL_LENGTH}); refused"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise BadUrl(f"{what}: the URL contains a space or a control character; refused")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:
        raise BadUrl(f"{what}: the URL is malformed ({_reason(exc)}): {_shown(url)}") from None
    scheme = parts.scheme.lower()
    if scheme and scheme not in ("http", "https"):
        raise UnsafeAddress(
            f"{what}: refused a {scheme}: URL, which is not an http(s) URL; only http(s) URLs "
            "are downloaded (Exotel sent something that is not a recording link)"
        )
    if not scheme or "://" not in url:
        raise BadUrl(f"{what}: {_shown(url)} is not a URL (no http(s)://host)")
    if "@" in parts.netloc:
        raise UnsafeAddress(f"{what}: the URL carries a user name or password; refused")
    if not host:
        raise BadUrl(f"{what}: the URL has no host: {_shown(url)}")
    try:
        raw = yarl.URL(url).raw_host or ""
    except (ValueError, TypeError) as exc:  # UnicodeError is a ValueError
        raise BadUrl(f"{what}: the URL's host cannot be encoded ({_reason(exc)})") from None
    if _ip(host) is None:
        if "[" in parts.netloc:  # brackets hold an IPv6 address, nothing else connects
            raise BadUrl(f"{what}: the URL's bracketed host is not an IPv6 address; refused")
        _check_name(raw or host, what)
    if port is not None and not 0 < port <= 65535:
        raise BadUrl(f"{what}: the URL's port {port} is out of range (1-65535)")
    return parts


def _check_name(name: str, what: str) -> None:
    """A host name (IDNA-encoded, as it goes to DNS) that DNS can carry; else ``BadUrl``."""
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if len(name.rstrip(".")) > 253:
        raise BadUrl(f"{what}: the URL's host name is {len(name)} characters long (at most 253)")
    for label in labels:
        if not _LABEL.match(label):
            problem = (
                "an empty label"
                if not label
                else f"a label of {len(label)} characters (at most 63)"
                if len(label) > 63
                else "characters a host name cannot have"
            )
            raise BadUrl(f"{what}: the URL's host name has {problem}: {name[:80]!r}")
    if labels[-1].isdigit():
        raise BadUrl(f"{what}: the URL's host {name[:80]!r} is neither an IP address nor a name")
    try:
        name.encode("idna")  # what the resolver does with it
        for label in labels:
            if label.lower().startswith("xn--"):
                label.encode("ascii").decode("idna")  # punycode that decodes to nothing
    except UnicodeError as exc:
        raise BadUrl(f"{what}: the URL's host name cannot be encoded ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    """A parser's complaint, for a message: one short line, no URL in it."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:80]


def _ip(host: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def classify(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (``"loopback"``, ``"private"``...), or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "the cloud metadata address"
    for name in ("unspecified", "multicast", "loopback", "link_local", "reserved", "private"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if not ip.is_global:
        return "not a public address"
    return None


_NEVER = ("the cloud metadata address", "unspecified", "multicast")


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a URL from Exotel may lead to. See the module docstring."""

    allow_private: bool = False
    trusted_hosts: frozenset[str] = field(default_factory=frozenset)
    """Host names (lower case) of the configured Exotel API URLs."""

    @classmethod
    def for_hosts(cls, urls: Iterable[str], *, allow_private: bool) -> AddressPolicy:
        hosts = frozenset((urlsplit(u).hostname or "").lower() for u in urls) - {""}
        return cls(allow_private=allow_private, trusted_hosts=hosts)

    def refusal(self, host: str, ip: IPAddress) -> str | None:
        """Why connecting to ``ip`` (for ``host``) is refused, or None if it is allowed."""
        why = classify(ip)
        if why is None:
            return None
        if why in _NEVER:
            return why
        if self.allow_private or host.lower().rstrip(".") in self.trusted_hosts:
            return None
        return why

    def check_url(self, url: str, *, what: str) -> None:
        """Refuse a URL that is malformed (``BadUrl``), not http(s) or names a refused address
        (``UnsafeAddress``)."""
        host = well_formed(url, what=what).hostname or ""
        ip = _ip(host)
        if ip is None:
            if host.rstrip(".").lower() == "localhost" or host.lower().endswith(".localhost"):
                ip = ipaddress.ip_address("127.0.0.1")
            else:
                return  # a name: judged on what it resolves to, at connect time
        why = self.refusal(host, ip)
        if why is not None:
            raise UnsafeAddress(f"{what}: refused to connect to {host} ({why}); {FIX}")


class GuardedResolver(AbstractResolver):
    """A resolver that drops addresses the policy refuses; none left → ``UnsafeAddress``."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refused: list[str] = []
        for result in results:
            ip = _ip(result["host"])
            why = "not an IP address" if ip is None else self.policy.refusal(host, ip)
            if why:
                refused.append(why)
            else:
                allowed.append(result)
        if not allowed:
            first = refused[0] if refused else "no address"
            raise UnsafeAddress(f"refused to connect to {host}: it resolves to {first}; {FIX}")
        return allowed

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
