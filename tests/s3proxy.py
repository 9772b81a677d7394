"""A fault-injecting HTTP proxy in front of SeaweedFS, for tests (no patching of boto3).

Requests pass through unchanged (the Host header is kept, so SigV4 signatures still verify)
unless a rule matches: then the proxy answers with an S3-style error instead, as many times as
the rule says. Every request is logged as (method, path?query).
"""

from __future__ import annotations

import asyncio
import threading
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
    ) -> None:
        self.rules.append(Rule(matches, times, status, code))

    def _rule_for(self, method: str, path_qs: str) -> Rule | None:
        for rule in self.rules:
            if rule.times > 0 and rule.matches(method, path_qs):
                rule.times -= 1
                return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.log.append((request.method, request.path_qs))
        names = {k.lower(): v for k, v in request.headers.items()}
        self.header_log.append(names)
        if any(n.startswith(self.refused_headers) for n in names) and self.refused_headers:
            xml = "<Error><Code>InvalidArgument</Code><Message>unsupported header</Message></Error>"
            return web.Response(status=400, text=xml, content_type="application/xml")
        rule = self._rule_for(request.method, request.path_qs)
        if rule is not None:
            xml = f"<Error><Code>{rule.code}</Code><Message>injected</Message></Error>"
            return web.Response(status=rule.status, text=xml, content_type="application/xml")
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
            out = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in _HOP and k.lower() != "content-encoding"
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
