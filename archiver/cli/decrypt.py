"""``exotel-archiver decrypt``: restore recordings encrypted to a public key (archiver.restore)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from archiver.cli import main
from archiver.cli._shared import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    human,
    make_settings,
    run,
    settings_options,
)
from archiver.errors import ConfigError

_PASSPHRASE_LIMIT = 64 * 1024


def read_passphrase(path: Path | None) -> bytes | None:
    """The passphrase in ``path`` (its one trailing newline dropped), or None. The message of a
    file that cannot be read names the file, never its content."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(_PASSPHRASE_LIMIT + 1)
    except OSError as exc:
        raise ConfigError(
            f"--passphrase-file: {path} cannot be read ({exc.strerror or type(exc).__name__}); "
            "give the file holding the private key's passphrase"
        ) from None
    if len(data) > _PASSPHRASE_LIMIT:
        raise ConfigError(f"--passphrase-file: {path} is too large to hold a passphrase")
    return data.removesuffix(b"\n").removesuffix(b"\r")


@main.command(
    example="exotel-archiver decrypt --identity private.pem --call CALL_SID --out ./restored"
)
@click.argument("keys", metavar="[KEY]...", nargs=-1)
@click.option(
    "--identity",
    "identity_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The PEM private key (X25519 or RSA) whose public key the worker encrypts to. Read by "
    "this command only; never give it to the worker.",
)
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding the passphrase of an encrypted private key (never a flag's value).",
)
@click.option(
    "--call",
    "calls",
    multiple=True,
    metavar="SID",
    help="Restore every encrypted object of this call (repeatable).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to restore into: each object becomes OUT/KEY.",
)
@click.option(
    "--input",
    "input_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Decrypt this file (an object downloaded by hand) instead of reading the destination.",
)
@click.option(
    "--output",
    "output_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --input: where the recording is written.",
)
@click.option(
    "--key",
    "entry_key",
    metavar="KEY",
    help="With --input: the object's key, so that it is checked against its manifest entry.",
)
@settings_options("decrypt")
@click.pass_context
def decrypt(
    ctx: click.Context,
    /,
    keys: tuple[str, ...],
    identity_file: Path,
    passphrase_file: Path | None,
    calls: tuple[str, ...],
    out_dir: Path | None,
    input_file: Path | None,
    output_file: Path | None,
    entry_key: str | None,
    **cli: Any,
) -> None:
    """Restore recordings the worker encrypted to a public key (ARCHIVER_ENCRYPT_TO): each
    object KEY (or each of a call's, --call) is read from the destination, decrypted with the
    private key, and written to OUT/KEY only once every chunk, the stored ciphertext's SHA-256
    and the recording's own SHA-256 and size match its manifest entry. With --input/--output, a
    file downloaded by hand is decrypted instead (checked when --key names its entry).

    Exit code 0 when every object was restored and checked; 1 when some were refused (each named
    with the reason; nothing is written for it) or, with --input and no entry, the recording was
    decrypted but not checked against the manifest; 2 for a usage or configuration error (a bad
    or wrong identity file, no destination). docs/encryption.md has the format and the keys.
    """
    from archiver.envelope import Identity

    if input_file is not None:
        if keys or calls or out_dir is not None:
            fail(
                "error: --input decrypts one file: give --output FILE, not KEY, --call, --out",
                EXIT_USAGE,
            )
        if output_file is None:
            fail("error: --input needs --output FILE (where the recording is written)", EXIT_USAGE)
        if not input_file.is_file():
            fail(
                f"error: --input: {input_file} is not a file (give the downloaded object)",
                EXIT_USAGE,
            )
        if output_file.resolve() == input_file.resolve():
            fail(
                "error: --output is the --input file: the encrypted object would be replaced "
                "by its plaintext; give another --output",
                EXIT_USAGE,
            )
    else:
        if output_file is not None or entry_key is not None:
            fail("error: --output and --key go with --input FILE", EXIT_USAGE)
        if not keys and not calls:
            fail("error: name what to decrypt: KEY..., --call SID, or --input FILE", EXIT_USAGE)
        if out_dir is None:
            fail("error: give --out DIR, the folder to restore into", EXIT_USAGE)
    settings = make_settings(ctx, cli)
    from archiver.restore import inside_destination

    place = out_dir if out_dir is not None else output_file
    root = inside_destination(settings, place) if place is not None else None
    if root is not None:
        fail(
            f"error: {place} is inside the destination ({root}): the plaintext would replace "
            "the archive's own objects; restore into a folder outside it",
            EXIT_USAGE,
        )
    try:
        identity = Identity.from_file(identity_file, read_passphrase(passphrase_file))
    except ConfigError as exc:
        fail(f"error: {exc}", EXIT_USAGE)
    if input_file is not None:
        assert output_file is not None
        sys.exit(run(_one_file(settings, identity, input_file, output_file, entry_key)))
    assert out_dir is not None
    sys.exit(run(_objects(settings, identity, keys, calls, out_dir)))


async def _objects(
    settings: Any, identity: Any, keys: tuple[str, ...], calls: tuple[str, ...], out_dir: Path
) -> int:
    from archiver.restore import REFUSED, open_archive, restore_object

    refused = restored = 0
    async with open_archive(settings) as archive:
        for problem in archive.problems[:5]:
            click.echo(f"  WARNING    manifest chain: {problem}", err=True)
        if archive.problems:
            click.echo(
                "  WARNING    the manifest chain has problems (`exotel-archiver verify`): "
                "nothing is restored from it",
                err=True,
            )
        targets = archive.targets(keys, calls)
        bar = (
            click.progressbar(length=len(targets), label="Decrypting", file=sys.stderr)
            if len(targets) > 1
            else contextlib.nullcontext()
        )
        with bar as progress:
            for key, entry in targets:
                outcome = await restore_object(archive, identity, key, entry, out_dir)
                if progress is not None:
                    progress.update(1)
                if outcome.status == REFUSED:
                    refused += 1
                    click.echo(f"  REFUSED    {key}: {outcome.reason}", err=True)
                else:
                    restored += 1
                    click.echo(
                        f"restored {key} -> {outcome.path} ({human(outcome.plaintext_size or 0)}, "
                        f"sha256 {outcome.plaintext_sha256}: checked)"
                    )
    click.echo(f"decrypted: {restored} restored and checked, {refused} refused")
    return EXIT_FAILURES if refused else EXIT_OK


async def _one_file(
    settings: Any, identity: Any, src: Path, dst: Path, entry_key: str | None
) -> int:
    from archiver.restore import REFUSED, UNCHECKED, open_archive, restore_file

    entry = None
    if entry_key is not None:
        async with open_archive(settings, destination=False) as archive:
            found = archive.entry(entry_key)
        if isinstance(found, str):
            click.echo(f"  REFUSED    {entry_key}: {found}", err=True)
            return EXIT_FAILURES
        entry = found
        if entry is None:
            click.echo(
                f"  REFUSED    {entry_key}: no manifest entry names it (check the key, the "
                "state directory and the destination)",
                err=True,
            )
            return EXIT_FAILURES
    outcome = restore_file(identity, src, dst, entry, key=entry_key or "")
    if outcome.status == REFUSED:
        click.echo(f"  REFUSED    {outcome.key}: {outcome.reason}", err=True)
        return EXIT_FAILURES
    size, sha = human(outcome.plaintext_size or 0), outcome.plaintext_sha256
    if outcome.status == UNCHECKED:
        click.echo(f"decrypted {src} -> {dst} ({size}, sha256 {sha})")
        click.echo(
            "NOT checked against the manifest (no --key): compare the sha256 above with the "
            "entry's plaintext_sha256, or give --key KEY",
            err=True,
        )
        return EXIT_FAILURES
    click.echo(f"restored {outcome.key} -> {dst} ({size}, sha256 {sha}: checked)")
    return EXIT_OK
