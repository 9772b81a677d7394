"""A fault-injecting HTTP proxy in front of SeaweedFS, for tests (no patching of boto3).

Requests pass through unchanged (the Host header is kept, so SigV4 signatures still verify)
unless a fault applies. Two ways to inject one:

* ``fail(matches, times=N, status=..., code=..., action=...)``: the next N matching requests
  are answered with that S3-style error (or, with ``action``, reset as below).
* ``random_faults(rate, seed=...)``: each request (that ``matches``, if given) fails with
  probability ``rate``, the kind drawn from ``kinds`` (seeded: the same run, the same faults):

  ================  =========================================================================
  ``internal``      500 ``InternalError``
  ``slowdown``      503 ``SlowDown``
  ``reset``         the connection is reset before the request body is read: no answer
  ``reset_body``    the body is read, then the connection is reset: no answer, store untouched
  ``lost_answer``   the request reaches the store (it is done there), then the connection is
                    reset: the client never learns that it succeeded
  ================  =========================================================================

  A request a ``fail`` rule names meets that rule, never a random fault.

  ``fail(..., action="fake_ok")`` answers 200 without passing the request on: a store that
  acknowledges a write it never made (a CompleteMultipartUpload gets a minimal result document).

``strip_response_headers`` (name prefixes, e.g. ``x-amz-checksum-``) are removed from every
answer: a store that neither echoes nor reports checksums.

Every request is logged as (method, path?query); ``injected`` counts the faults by kind.
``timeline`` has each request passed on as (method, path?query, start, end) in
``time.monotonic()`` seconds: when its headers arrived and when its answer was ready, so a test
can see requests in flight at once. ``delay(matches, seconds)`` holds each matching request that
long before passing it on: a slow store.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

_HOP = {"host", "content-length", "transfer-encoding", "connection", "expect", "keep-alive"}


@dataclass
class Rule:
    matches: Callable[[str, str], bool]
    times: int
    status: int = 500
    code: str = "InternalError"
    action: str | None = None
    """Instead of an error answer: ``reset``, ``reset_body``, ``lost_answer`` or ``fake_ok``."""


FAULT_KINDS = ("internal", "slowdown", "reset", "reset_body", "lost_answer")
_ERRORS = {"internal": (500, "InternalError"), "slowdown": (503, "SlowDown")}


@dataclass
class RandomFaults:
    rate: float
    rng: random.Random
    kinds: tuple[str, ...]
    matches: Callable[[str, str], bool] | None = None

    def draw(self, method: str, path_qs: str) -> str | None:
        if self.matches is not None and not self.matches(method, path_qs):
            return None
        if self.rng.random() >= self.rate:
            return None
        return self.rng.choice(self.kinds)


class _Reset(Exception):
    """The connection was reset on purpose: no answer is written."""


class FaultyS3Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str]] = []
        self.header_log: list[dict[str, str]] = []
        """The request headers of each request in ``log`` (lower-case names)."""
        self.refused_headers: tuple[str, ...] = ()
        """Header name prefixes answered with 400 InvalidArgument, as a store that does not
        support them would (e.g. ``x-amz-checksum-``)."""
        self.strip_response_headers: tuple[str, ...] = ()
        """Header name prefixes (lower case) removed from every answer."""
        self.random: RandomFaults | None = None
        self.timeline: list[tuple[str, str, float, float]] = []
        self.delays: list[tuple[Callable[[str, str], bool], float]] = []
        self.injected: Counter[str] = Counter()
        """Faults injected so far, by kind (``random_faults`` kinds, or ``rule:<code>``)."""
        self.endpoint = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="s3-proxy")

    def fail(
        self,
        matches: Callable[[str, str], bool],
        *,
        times: int = 1,
        status: int = 500,
        code: str = "InternalError",
        action: str | None = None,
    ) -> None:
        if action not in (None, "reset", "reset_body", "lost_answer", "fake_ok"):
            raise ValueError(f"unknown action {action!r}")
        self.rules.append(Rule(matches, times, status, code, action))

    def delay(self, matches: Callable[[str, str], bool], seconds: float) -> None:
        """Hold every matching request ``seconds`` before passing it on."""
        self.delays.append((matches, seconds))

    def random_faults(
        self,
        rate: float,
        *,
        seed: int = 0,
        kinds: tuple[str, ...] = FAULT_KINDS,
        matches: Callable[[str, str], bool] | None = None,
    ) -> None:
        """Fail each request (matching ``matches``) with probability ``rate``; 0 turns it off."""
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.random = RandomFaults(rate, random.Random(seed), kinds, matches) if rate else None

    @staticmethod
    def _reset(request: web.Request) -> None:
        """Close the connection with a TCP RST, without a byte of answer."""
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise _Reset

    def _rule_for(self, method: str, path_qs: str) -> Rule | None:
        for rule in self.rules:
            if rule.times > 0 and rule.matches(method, path_qs):
                rule.times -= 1
                return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle_or_reset(request)
        except _Reset:
            return web.Response(status=599)  # never sent: the transport is gone

    async def _handle_or_reset(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        response = await self._answer(request)
        self.timeline.append((request.method, request.path_qs, started, time.monotonic()))
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        # A rule says what the requests it names must meet; random faults are for the others
        # (drawn first, a random lost answer could store the object a rule is there to refuse).
        rule = self._rule_for(request.method, request.path_qs)
        if rule is not None:
            fault = rule.action
        else:
            fault = self.random.draw(request.method, request.path_qs) if self.random else None
        if fault is not None:
            self.injected[fault] += 1
        if fault == "reset":
            self.log.append((request.method, request.path_qs))
            self.header_log.append({k.lower(): v for k, v in request.headers.items()})
            self._reset(request)
        body = await request.read()
        self.log.append((request.method, request.path_qs))
        names = {k.lower(): v for k, v in request.headers.items()}
        self.header_log.append(names)
        if any(n.startswith(self.refused_headers) for n in names) and self.refused_headers:
            xml = "<Error><Code>InvalidArgument</Code><Message>unsupported header</Message></Error>"
            return web.Response(status=400, text=xml, content_type="application/xml")
        if fault == "reset_body":
            self._reset(request)
        if rule is not None and rule.action is None:
            self.injected[f"rule:{rule.code}"] += 1
            xml = f"<Error><Code>{rule.code}</Code><Message>injected</Message></Error>"
            return web.Response(status=rule.status, text=xml, content_type="application/xml")
        if fault in _ERRORS:
            status, code = _ERRORS[fault]
            xml = f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
            return web.Response(status=status, text=xml, content_type="application/xml")
        if fault == "fake_ok":  # acknowledged, never passed on
            etag = '"00000000000000000000000000000000"'
            if request.method != "POST":
                return web.Response(status=200, headers={"ETag": etag})
            xml = f"<CompleteMultipartUploadResult><ETag>{etag}</ETag>"
            xml += "</CompleteMultipartUploadResult>"
            return web.Response(status=200, text=xml, content_type="application/xml")
        for matches, seconds in self.delays:
            if matches(request.method, request.path_qs):
                await asyncio.sleep(seconds)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.headers["Host"]
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            if fault == "lost_answer":  # the store has done it; the client will never know
                self._reset(request)
            out = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in _HOP
                and k.lower() != "content-encoding"
                and not k.lower().startswith(self.strip_response_headers)
            }
            if request.method == "HEAD":  # no body, but the object's length must come through
                response = web.StreamResponse(status=upstream.status, headers=out)
                response.content_length = int(upstream.headers.get("Content-Length", 0))
                await response.prepare(request)
                await response.write_eof()
                return response
            return web.Response(status=upstream.status, body=data, headers=out)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.endpoint = f"http://127.0.0.1:{port}"
        self._ready.set()
        await self._stop.wait()
        await self._session.close()
        await runner.cleanup()

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
