"""Proving the archive: ``verify``, ``manifest rebuild|export``, ``export-bag``, ``reconcile``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from archiver.cli import main
from archiver.cli._help import LAST_WEEK
from archiver.cli._shared import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    Progress,
    date_range_options,
    day,
    fail,
    human,
    make_settings,
    report_option,
    run,
    settings_options,
    write_json,
)


@main.command(example="exotel-archiver verify --sample 0.05 --report verify.json")
@date_range_options()
@click.option(
    "--sample",
    type=click.FloatRange(0, 1, min_open=True),
    help="Re-read only this fraction of the objects (e.g. 0.05 for a cheap daily audit).",
)
@click.option(
    "--seed",
    default=None,
    help="Which sample: the same seed picks the same objects. Default: today's date, so daily "
    "samples rotate through the archive.",
)
@report_option()
@settings_options("verify")
@click.pass_context
def verify(
    ctx: click.Context,
    /,
    since: Any,
    until: Any,
    sample: float | None,
    seed: str | None,
    report: Path | None,
    **cli: Any,
) -> None:
    """Fixity audit: check the manifest chain in the destination (and against the local ledger,
    if the state directory has one: opened read-only, so it may run beside the worker), re-read
    the objects it names and compare size and SHA-256, and name every object no entry names.

    Objects the worker has recorded but not sealed yet are "pending seal" (not a failure); without
    a ledger they are unexpected. docs/manifest.md lists what is detected with and without the
    ledger. It also counts the calls: complete (call.json recorded), rescued (recording and
    call-v1.json from the v1 listing, call.json still to come: by design, not a failure; their
    objects are re-read as every other) and incomplete (neither: archiving under way).

    Exit code 0 only when the chain is intact and every object checked is ok, erased or pending
    seal; 1 otherwise (`exotel-archiver repair` puts back what it can); 2 when the state
    directory's ledger belongs to another destination.
    """
    from datetime import date

    from archiver.verify import (
        ALTERED,
        COMPLETE,
        ERASED,
        INCOMPLETE,
        MISSING,
        NOT_ERASED,
        OK,
        PASSING,
        PENDING_SEAL,
        RESCUED,
        UNEXPECTED,
        run_verify,
    )

    settings = make_settings(ctx, cli)
    with Progress(None, "Verifying") as advance:
        result = run(
            run_verify(
                settings,
                since=day(since),
                until=day(until),
                sample=sample,
                seed=seed if seed is not None else date.today().isoformat(),
                on_object=advance,
            )
        )
    for problem in result.chain.problems:
        click.echo(f"  CHAIN      {problem}", err=True)
    for note in result.chain.notes:
        click.echo(f"  NOTE       {note}", err=True)
    for check in result.checks:
        if check.status not in PASSING:
            click.echo(f"  {check.status.upper():10} {check.key}", err=True)
    state = "intact" if not result.chain.problems else "BROKEN"
    against = "checked against the ledger" if result.chain.ledger_used else "no ledger"
    click.echo(
        f"segments: {len(result.chain.segments)} ({state}, {against}); "
        f"objects ok: {result.count(OK)}, pending seal: {result.count(PENDING_SEAL)}, "
        f"missing: {result.count(MISSING)}, altered: {result.count(ALTERED)}, "
        f"unexpected: {result.count(UNEXPECTED)}, erased: {result.count(ERASED)}, "
        f"not erased: {result.count(NOT_ERASED)}"
    )
    calls = result.calls
    click.echo(
        f"calls: complete {calls[COMPLETE]}, rescued {calls[RESCUED]} (recording stored from "
        f"the v1 listing, call.json still to come), incomplete {calls[INCOMPLETE]}"
    )
    write_json(result.as_dict(), report)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILURES)


@main.group()
def manifest() -> None:
    """The checksum manifest: rebuild the local ledger from the destination, or export it."""


@manifest.command(
    example="exotel-archiver manifest rebuild --destination s3://my-bucket/exotel "
    "--state-dir /var/lib/exotel-archiver"
)
@settings_options("manifest rebuild")
@click.pass_context
def rebuild(ctx: click.Context, /, **cli: Any) -> None:
    """Restore a lost ledger (and manifest.jsonl) from the manifest segments in the destination.

    The state directory must not have a ledger with entries already; the chain must be intact.
    """
    from archiver.rebuild import run_rebuild

    settings = make_settings(ctx, cli)
    chain = run(run_rebuild(settings))
    click.echo(
        f"restored {len(chain.entries)} entries from {len(chain.segments)} segment(s) into "
        f"{settings.state_dir}"
    )


@manifest.command("export", example=f"exotel-archiver manifest export {LAST_WEEK} --out ./audit")
@date_range_options()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for manifest.jsonl and SHA256SUMS.",
)
@settings_options("manifest export")
@click.pass_context
def export_manifest_cmd(
    ctx: click.Context, /, since: Any, until: Any, out: Path, **cli: Any
) -> None:
    """Write the manifest of a date range as JSON lines and as a sha256sum listing.

    In a downloaded mirror of the destination, `sha256sum -c SHA256SUMS` checks every object:
    SHA256SUMS lists the bytes as stored, the ciphertext of recordings encrypted with
    --encrypt-to. With encrypted objects in the range, SHA256SUMS.plaintext lists the
    recordings' own hashes too, for a mirror restored with `exotel-archiver decrypt`.
    """
    from archiver.export import PLAINTEXT_SUMS, export_manifest

    settings = make_settings(ctx, cli)
    done = run(export_manifest(settings, out, since=day(since), until=day(until)))
    click.echo(
        f"{done.entries} entries ({human(done.bytes)}) written to {out}/manifest.jsonl "
        f"and {out}/SHA256SUMS (the bytes as stored)"
    )
    if done.encrypted:
        click.echo(
            f"{done.encrypted} of them are encrypted to {', '.join(done.encrypted_to)}: "
            f"SHA256SUMS has their ciphertext's SHA-256; {out}/{PLAINTEXT_SUMS} has every "
            "object's plaintext SHA-256, to check a mirror after exotel-archiver decrypt"
        )


@main.command("export-bag", example=f"exotel-archiver export-bag ./bag {LAST_WEEK}")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@date_range_options()
@click.option("--sha512", is_flag=True, help="Also write manifest-sha512.txt.")
@settings_options("export-bag")
@click.pass_context
def export_bag_cmd(
    ctx: click.Context, /, directory: Path, since: Any, until: Any, sha512: bool, **cli: Any
) -> None:
    """Write a BagIt 1.0 bag (RFC 8493) of a date range into DIRECTORY (new or empty).

    The payload is the objects as stored: recordings encrypted with --encrypt-to are in it as
    ciphertext, and manifest-sha256.txt hashes that; the tag file plaintext-sha256.txt then has
    their plaintext SHA-256 and bag-info.txt says how many are encrypted, to which keys.
    """
    from archiver.export import PLAINTEXT_TAG, export_bag

    settings = make_settings(ctx, cli)
    done = run(export_bag(settings, directory, since=day(since), until=day(until), sha512=sha512))
    click.echo(f"bag written to {directory}: {done.entries} objects, {human(done.bytes)}")
    if done.encrypted:
        click.echo(
            f"{done.encrypted} payload files are encrypted to {', '.join(done.encrypted_to)}: "
            f"the payload manifests hash their ciphertext; {PLAINTEXT_TAG} has their plaintext "
            "SHA-256"
        )


@main.command(
    example=f"exotel-archiver reconcile {LAST_WEEK} --report coverage.json --html coverage.html"
)
@date_range_options(required=True)
@report_option()
@click.option(
    "--html",
    "html",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the coverage page to this file: one self-contained HTML page (a calendar "
    "of the days coloured by coverage, the totals, every call not archived yet with its "
    "reason, the manifest chain's head and check).",
)
@settings_options("reconcile")
@click.pass_context
def reconcile(
    ctx: click.Context,
    /,
    since: Any,
    until: Any,
    report: Path | None,
    html: Path | None,
    **cli: Any,
) -> None:
    """Compare Exotel's own list of calls (v1) for a date range with the archive: each call is
    archived, rescued (its recording stored from the v1 listing, its v3 details still to
    come: audio safe, not complete), erased (archived, then deleted by `retention purge` under
    the rules), missing, no_recording_at_source, still_active or recording_pending (listed
    without a recording less than --listing-settle hours after it was made), with the reason;
    and check the manifest chain as `verify` does (not re-reading the objects).

    Exit code 0 only when the range is complete (every call archived, erased or without a
    recording: a rescued call is not complete yet; the report's recordings_safe says whether
    every recording is stored nonetheless) and the manifest chain intact.
    """
    from datetime import UTC, datetime

    from archiver.coverage_page import write_page
    from archiver.reconcile import reconcile as run_reconcile

    if since > until:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    settings = make_settings(ctx, cli)
    result = run(run_reconcile(settings, since.date(), until.date()))
    for call in result.calls:
        if call["state"] in ("missing", "still_active", "recording_pending"):
            label = call["state"].replace("_", " ").upper()
            click.echo(
                f"  {label:18} {call['call_sid']} (created {call['created']}): {call['reason']}",
                err=True,
            )
    chain = result.chain
    if chain is not None:
        for problem in chain.problems:
            click.echo(f"  CHAIN              {problem}", err=True)
    counts = result.counts()
    click.echo(", ".join(f"{state.replace('_', ' ')}: {n}" for state, n in counts.items()))
    if counts["rescued"]:
        safe = "; every recording Exotel lists is stored" if result.recordings_safe else ""
        click.echo(
            f"rescued: {counts['rescued']} call(s) with the recording stored from the v1 "
            f"listing and the v3 details (call.json) still to come: not complete yet{safe}"
        )
    if chain is not None:
        state = "intact" if chain.intact else "BROKEN"
        head = chain.head_sha256 or "none (no segment sealed yet)"
        click.echo(f"manifest chain: {state}, {chain.segments} segment(s), head {head}")
    write_json(result.as_dict(), report)
    if html is not None:
        try:
            write_page(html, result, generated=datetime.now(UTC), destination=settings.destination)
        except OSError as exc:
            fail(f"error: cannot write the coverage page to {html}: {exc.strerror}", EXIT_USAGE)
        click.echo(f"coverage page written to {html}")
    intact = chain is None or chain.intact
    sys.exit(EXIT_OK if result.complete and intact else EXIT_FAILURES)
