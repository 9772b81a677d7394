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

A refusal is ``UnsafeAddress``: permanent (not retried), and the call is recorded as failed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from archiver.errors import UnsafeAddress
from archiver.redact import strip_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
"""Cloud instance-metadata endpoints (AWS, GCP, Azure, OpenStack; AWS's IPv6 one)."""

FIX = (
    "if this host is really yours and meant to be reached, set ARCHIVER_ALLOW_PRIVATE_ADDRESSES=on"
)


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
        """Refuse (``UnsafeAddress``) a URL that is not http(s) or names a refused address."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        except ValueError:
            raise UnsafeAddress(
                f"{what}: the URL is malformed ({strip_url(url)[:120]!r})"
            ) from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise UnsafeAddress(
                f"{what}: refused a {scheme or 'scheme-less'}: URL; only http(s) URLs are "
                "downloaded (Exotel sent something that is not a recording link)"
            )
        if not host:
            raise UnsafeAddress(f"{what}: the URL has no host")
        if parts.username or parts.password:
            raise UnsafeAddress(f"{what}: the URL carries a user name or password; refused")
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
