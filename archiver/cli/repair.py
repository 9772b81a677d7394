"""``exotel-archiver repair``: put back what ``verify`` found missing or altered."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from archiver.cli import main
from archiver.cli._shared import (
    EXIT_FAILURES,
    EXIT_OK,
    date_range_options,
    day,
    make_settings,
    report_option,
    run,
    settings_options,
    write_json,
)


@main.command(example="exotel-archiver repair --since \"$(date -d '30 days ago' +%F)\" --dry-run")
@date_range_options()
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only name what is missing or altered and would be repaired: no Exotel request, "
    "nothing written.",
)
@report_option()
@settings_options("repair")
@click.pass_context
def repair(
    ctx: click.Context,
    /,
    since: Any,
    until: Any,
    dry_run: bool,
    report: Path | None,
    **cli: Any,
) -> None:
    """Put back what `verify` finds missing or altered: the destination's identity marker and
    manifest segments (from the ledger), and recordings (fetched again from Exotel, while it
    still has them, and put back only if their SHA-256 is the recorded one). An altered object
    is kept aside under _manifest/quarantine/ first; a locked one is never touched. Each object
    put back gets a `repaired` event in the manifest chain.

    A recording encrypted with --encrypt-to is compared by its plaintext and encrypted afresh
    (a new ciphertext, which its `repaired` event names): only to the key its manifest entry
    names, so --encrypt-to must be that public key; otherwise it is named, with both
    fingerprints, and nothing is fetched.

    Exotel credentials are needed only when recordings are to be fetched again (not for a dry
    run, nor for the marker and segments). Exit code 0 when everything is whole again, 1 when
    something cannot be repaired (each is named with the reason).
    """
    from archiver.repair import CANNOT, REPAIRED, WOULD_REPAIR, run_repair

    settings = make_settings(ctx, cli)

    def show(item: Any) -> None:
        label = {REPAIRED: "REPAIRED", CANNOT: "CANNOT", WOULD_REPAIR: "TO REPAIR"}[item.outcome]
        tail = f": {item.detail}" if item.detail else ""
        click.echo(f"  {label:10} {item.key} ({item.found}){tail}", err=True)

    result = run(
        run_repair(settings, since=day(since), until=day(until), dry_run=dry_run, on_item=show)
    )
    parts = []
    if result.marker_restored:
        parts.append("identity marker put back")
    if result.segments_restored:
        parts.append(f"manifest segments put back: {len(result.segments_restored)}")
    if not result.items and not parts:
        click.echo("nothing to repair: every object checked is whole")
    else:
        counts = (
            f"to repair: {result.count(WOULD_REPAIR)}"
            if dry_run
            else f"repaired: {result.count(REPAIRED)}, cannot be repaired: {result.count(CANNOT)}"
        )
        click.echo("; ".join([counts, *parts, f"Exotel API requests: {result.api_requests}"]))
    write_json(result.as_dict(), report)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILURES)
