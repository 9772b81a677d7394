"""Trying it without an account: ``demo`` and ``simulate``."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

import click

from archiver.cli import main
from archiver.cli._shared import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    Progress,
    print_report,
    program,
    run,
)
from archiver.log import setup_logging


@main.command(example="exotel-archiver demo --dir /tmp/demo --calls 50")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("exotel-archive-demo"),
    show_default=True,
    help="Where the demo archives to (recordings/ and state/ inside it).",
)
@click.option(
    "--calls",
    type=click.IntRange(1, 10_000),
    default=24,
    show_default=True,
    help="How many simulated calls the day has.",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Seed of the simulated day (same seed, same calls).",
)
def demo(directory: Path, calls: int, seed: int) -> None:
    """Archive a simulated day of calls into a local directory: no account, no bucket needed.

    Starts the built-in Exotel simulator on 127.0.0.1, archives its calls with the real worker,
    and prints what it archived and where the manifest is.
    """
    from archiver.demo import DEMO_ACCOUNT, run_demo

    setup_logging("warning")
    click.echo(f"Starting the Exotel simulator on 127.0.0.1 with {calls} calls of yesterday...")
    with Progress(calls, "Archiving") as advance:
        result = run(run_demo(directory, calls=calls, seed=seed, on_result=advance))
    print_report(result, details=True)
    click.echo(f"\nRecordings: {result.destination}")
    click.echo(f"Manifest:   {result.manifest}  (one JSON line per object: key, size, sha256)")
    click.echo(f"            and sealed in {result.destination}/_manifest/ as a hash chain")
    destination, state = (
        shlex.quote(str(p)) for p in (result.destination, directory.resolve() / "state")
    )
    # The demo's own account, so that an operator's EXOTEL_ACCOUNT_SID or config file does not
    # make the pasted command refuse the demo's archive as another account's.
    where = f"--account-sid {DEMO_ACCOUNT} --destination {destination} --state-dir {state}"
    click.echo(f"Check it:   {program()} verify {where}")
    click.echo(f"Status:     {program()} status {where}")
    click.echo("Run the demo again: nothing is archived twice.")
    sys.exit(EXIT_FAILURES if result.failed else EXIT_OK)


@main.command(example="exotel-archiver simulate --port 8080 --calls 500 --fail-429 0.05")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Keep loopback unless you need it elsewhere.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port (0 picks a free one).",
)
@click.option(
    "--calls",
    type=click.IntRange(0, 1_000_000),
    default=100,
    show_default=True,
    help="Calls of yesterday (IST) to serve.",
)
@click.option(
    "--min-size",
    type=click.IntRange(1),
    default=32 * 1024,
    show_default=True,
    help="Smallest recording, in bytes.",
)
@click.option(
    "--max-size",
    type=click.IntRange(1),
    default=256 * 1024,
    show_default=True,
    help="Largest recording, in bytes.",
)
@click.option(
    "--url-ttl",
    type=click.FloatRange(1),
    default=300.0,
    show_default=True,
    help="Lifetime of pre-signed recording URLs, in seconds (Exotel's default: 300).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the data set.")
@click.option(
    "--fail-429",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of API requests answered 429 (with Retry-After).",
)
@click.option(
    "--fail-500",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of API requests answered 500.",
)
@click.option(
    "--cut",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of recording downloads cut off mid-body.",
)
@click.option(
    "--bandwidth",
    type=click.IntRange(1),
    default=None,
    help="Cap each recording download at this many bytes/s.",
)
def simulate(
    host: str,
    port: int,
    calls: int,
    min_size: int,
    max_size: int,
    url_ttl: float,
    seed: int,
    fail_429: float,
    fail_500: float,
    cut: float,
    bandwidth: int | None,
) -> None:
    """Run the built-in Exotel simulator until interrupted (v3 call details, v1 bulk listing,
    expiring pre-signed recording URLs)."""
    from datetime import datetime, timedelta

    from archiver.exotel.models import IST
    from archiver.simulator import Simulator, run_simulator

    if min_size > max_size:
        raise click.BadParameter("--min-size must not exceed --max-size", param_hint="--min-size")
    sim = Simulator(url_ttl=url_ttl, seed=seed)
    sim.populate(
        calls, day=(datetime.now(IST) - timedelta(days=1)).date(), sizes=(min_size, max_size)
    )
    sim.faults.api_429_rate, sim.faults.api_500_rate, sim.faults.cut_rate = fail_429, fail_500, cut
    sim.faults.bandwidth = bandwidth

    def ready(base_url: str) -> None:
        click.echo(f"Exotel simulator listening on {base_url} with {len(sim.calls)} calls.")
        click.echo("Point the archiver at it:")
        click.echo(f"  export EXOTEL_API_URL={base_url} EXOTEL_V1_API_URL={base_url}")
        click.echo(f"  export EXOTEL_ACCOUNT_SID={sim.account_sid}")
        click.echo(f"  export EXOTEL_API_KEY={sim.api_key} EXOTEL_API_TOKEN={sim.api_token}")
        sample = " ".join(list(sim.calls)[:3])
        click.echo(f"  {program()} archive --destination ./archive {sample}")
        click.echo("Press Ctrl-C to stop.")

    setup_logging("info")
    try:
        asyncio.run(run_simulator(sim, host, port, on_ready=ready))
    except KeyboardInterrupt:
        click.echo("simulator stopped")
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}; try --port 0", err=True)
        sys.exit(EXIT_USAGE)
