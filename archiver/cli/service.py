"""The long-running worker: ``exotel-archiver run``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import click

from archiver.archive import sink_for
from archiver.cli import main
from archiver.cli._shared import EXIT_FAILURES, EXIT_OK, make_settings, settings_options
from archiver.cli._shared import run as run_coroutine
from archiver.cli.status import note_run, recorded
from archiver.config import Settings
from archiver.daemon import Daemon
from archiver.log import emit
from archiver.notify import Notifier
from archiver.summary import Summary

log = logging.getLogger("archiver.daemon")

FORCED_EXIT_AFTER = 10.0
"""Seconds a forced stop may take before the process exits regardless (a stuck upload thread)."""


@main.command(
    "run", example="exotel-archiver run --metrics-listen 127.0.0.1:9100 --log-format json"
)
@settings_options("run")
@click.pass_context
@recorded("run")
def run_command(ctx: click.Context, /, **cli: Any) -> None:
    """Run the long-running archiver (for systemd, Type=notify).

    Watches Exotel's active calls and archives each call once it is over; a periodic sweep over
    the v1 call listing catches calls it never saw; an optional StatusCallback receiver takes
    hints. All Exotel requests share one rate limiter.

    The first SIGTERM or SIGINT stops taking work, lets calls in flight finish within
    --shutdown-grace and exits 0; a second one exits at once (1). What was not finished is taken
    up again at the next start. Exit code 2: configuration error (also for bad credentials or a
    missing bucket found while running).
    """
    settings = make_settings(ctx, cli)
    summary = run_coroutine(serve(settings), state_dir=settings.state_dir)
    note_run(summary.fields())
    if not summary.started:
        ctx.ensure_object(dict)["did_nothing"] = True  # no run to record (cli/status.py)
    emit(
        f"stopped: {summary.line()}",
        logger="archiver.daemon",
        fields={"event": "stopped", **summary.fields()},
    )
    sys.exit(EXIT_FAILURES if summary.forced else EXIT_OK)


async def serve(settings: Settings) -> Summary:
    """Run a ``Daemon`` with signal handling: first signal drains, second forces."""
    daemon = Daemon(settings, sink=sink_for(settings), notifier=Notifier())
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        log.info("received %s", signal.Signals(signum).name)
        daemon.stop()
        if signals >= 2:
            loop.call_later(FORCED_EXIT_AFTER, os._exit, EXIT_FAILURES)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await daemon.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
