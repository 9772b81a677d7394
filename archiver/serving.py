"""The long-running worker's optional HTTP listeners (off unless an address is configured):
``/metrics`` (``archiver.metrics``) and the StatusCallback receiver (``archiver.webhook``).
Each is its own aiohttp ``AppRunner`` on its own address, so the receiver can face a proxy
while the metrics stay on loopback."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from archiver.errors import ConfigError
from archiver.metrics import Metrics
from archiver.metrics import registry as metrics_registry

log = logging.getLogger("archiver.daemon")


async def listen(address: tuple[str, int], app: web.Application, what: str) -> web.AppRunner:
    """Serve ``app`` on ``address``; a ConfigError naming the address if it cannot be had."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, address[0], address[1]).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {address[0]}:{address[1]} for the {what}: "
            f"{exc.strerror or exc}; choose another address"
        ) from None
    log.info("%s listening on %s:%d", what, *address)
    return runner


def metrics_app(metrics: Metrics, refresh: Callable[[], None]) -> web.Application:
    """``GET /metrics``: ``refresh()`` the gauges, then the Prometheus text format
    (prometheus-client's, from a registry of this worker's own)."""
    registry = metrics_registry(metrics, refresh)

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST, "X-Content-Type-Options": "nosniff"},
        )

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
