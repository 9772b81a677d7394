"""Exports auditors can check with their own tools.

* ``manifest export``: ``manifest.jsonl`` (the manifest entries of a date range, one JSON object a
  line) and ``SHA256SUMS`` (``<sha256>  <key>``, the format of GNU ``sha256sum``), so that
  ``sha256sum -c SHA256SUMS`` run in a downloaded mirror of the destination checks every object.
  ``SHA256SUMS`` lists the bytes **as stored**: for a client-side encrypted recording, its
  ciphertext (the entry's ``sha256``, or the one its latest ``repaired`` event put back:
  ``chain.stored_as``). When the range holds encrypted objects, ``SHA256SUMS.plaintext`` lists
  every object's own bytes (``plaintext_sha256`` for the encrypted, ``sha256`` for the rest):
  what a mirror whose encrypted objects ``exotel-archiver decrypt`` restored checks against.
* ``export-bag``: a BagIt 1.0 bag (RFC 8493) of a date range: ``data/`` with the objects (under
  their keys), ``manifest-sha256.txt`` (and ``manifest-sha512.txt`` if asked), ``bag-info.txt``
  with ``Payload-Oxum``, the account SID and the date range, ``bagit.txt`` and
  ``tagmanifest-sha256.txt``. Every object is re-hashed while it is copied and must match its
  manifest entry: a bag is never written with bytes the manifest does not vouch for. The payload
  is the objects as stored, so an encrypted recording is in it as ciphertext and the payload
  manifests hash that; with encrypted objects the bag also has the tag file
  ``plaintext-sha256.txt`` (every payload file's own bytes, as ``SHA256SUMS.plaintext``) and
  ``bag-info.txt`` says how many payload files are encrypted, to which key fingerprints, and
  that the payload manifests hold their ciphertext's hashes.

Both read the manifest from the destination's segments — the evidence — and refuse to export
from a broken chain (run ``exotel-archiver verify`` to see what is wrong).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from archiver import __version__
from archiver.archive import sink_for
from archiver.chain import expected, load_chain, stored_as
from archiver.config import Settings
from archiver.errors import ConfigError, StorageError
from archiver.files import make_dirs, private_opener, write_atomic
from archiver.manifest import present_objects
from archiver.sinks import Sink, validate_key
from archiver.verify import selected

PLAINTEXT_SUMS = "SHA256SUMS.plaintext"
PLAINTEXT_TAG = "plaintext-sha256.txt"


@dataclass(frozen=True)
class Exported:
    entries: int
    bytes: int
    directory: Path
    encrypted: int = 0
    """How many of the objects are stored encrypted client-side (their hashes as stored are
    the ciphertext's)."""
    encrypted_to: tuple[str, ...] = ()
    """The key fingerprints they are encrypted to."""


@dataclass(frozen=True)
class _Selected:
    entries: list[dict[str, Any]]
    stored: dict[str, tuple[str, int]]
    """``chain.stored_as``: the ciphertext ``repair`` put back, where it is not the entry's."""
    repairs: list[dict[str, Any]] = field(default_factory=list)
    """The ``repaired`` events that say so (``stored_sha256``), of the entries' keys."""

    def as_stored(self, e: dict[str, Any]) -> tuple[str, int]:
        return expected(e, self.stored)

    @property
    def encrypted(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e.get("encrypted_to")]

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(sorted({str(e["encrypted_to"]) for e in self.encrypted}))


def _own_sha256(e: dict[str, Any]) -> str:
    """The SHA-256 of the object's own bytes: the plaintext's for an encrypted one."""
    return str(e.get("plaintext_sha256") or e["sha256"])


async def _entries(sink: Sink, since: date | None, until: date | None) -> _Selected:
    chain = await load_chain(sink)
    if chain.problems:
        raise ConfigError(
            "the manifest chain in the destination is damaged; not exporting from it (run "
            "exotel-archiver verify): " + "; ".join(chain.problems)
        )
    # The objects still stored; events (holds, erasure receipts) stay in the chain itself.
    entries = [e for e in present_objects(chain.entries) if selected(e, since, until, None, "")]
    keys = {e["key"] for e in entries}
    repairs = [
        e
        for e in chain.entries
        if e.get("kind") == "repaired" and "stored_sha256" in e and e.get("key") in keys
    ]
    return _Selected(entries, stored_as(chain.entries), repairs)


async def export_manifest(
    settings: Settings, out: Path, *, since: date | None, until: date | None
) -> Exported:
    sink = sink_for(settings)
    try:
        await sink.check()
        chosen = await _entries(sink, since, until)
    finally:
        await sink.close()
    entries = chosen.entries
    # The entries, then the repairs that put another ciphertext at their keys: with them, the
    # lines say what SHA256SUMS lists (docs/manifest.md, "Which bytes a key holds").
    lines = [*entries, *chosen.repairs]
    write_atomic(
        out / "manifest.jsonl", "".join(json.dumps(e, sort_keys=True) + "\n" for e in lines)
    )
    sums = "".join(f"{chosen.as_stored(e)[0]}  {e['key']}\n" for e in entries)
    write_atomic(out / "SHA256SUMS", sums)
    plain = out / PLAINTEXT_SUMS
    if chosen.encrypted:
        write_atomic(plain, "".join(f"{_own_sha256(e)}  {e['key']}\n" for e in entries))
    elif plain.exists():  # an earlier export into the same folder: not of these entries
        plain.unlink()
    return Exported(
        len(entries),
        sum(chosen.as_stored(e)[1] for e in entries),
        out,
        encrypted=len(chosen.encrypted),
        encrypted_to=chosen.fingerprints,
    )


async def export_bag(
    settings: Settings,
    out: Path,
    *,
    since: date | None,
    until: date | None,
    sha512: bool = False,
) -> Exported:
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: choose a new directory for the bag")
    sink = sink_for(settings)
    manifests: dict[str, list[str]] = {"sha256": [], "sha512": []}
    total = 0
    try:
        await sink.check()
        chosen = await _entries(sink, since, until)
        entries = chosen.entries
        for e in entries:
            key = validate_key(str(e["key"]))
            target = out / "data" / key
            make_dirs(target.parent)
            h256, h512, size = hashlib.sha256(), hashlib.sha512(), 0
            with open(target, "wb", opener=private_opener) as fh:
                async for chunk in sink.read(key):
                    fh.write(chunk)
                    h256.update(chunk)
                    if sha512:
                        h512.update(chunk)
                    size += len(chunk)
            if (h256.hexdigest(), size) != chosen.as_stored(e):
                raise StorageError(
                    f"{key}: the stored object is not what the manifest records (run "
                    "exotel-archiver verify); the bag was not finished"
                )
            total += size
            manifests["sha256"].append(f"{h256.hexdigest()}  data/{key}\n")
            if sha512:
                manifests["sha512"].append(f"{h512.hexdigest()}  data/{key}\n")
    finally:
        await sink.close()
    write_atomic(out / "bagit.txt", "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n")
    info = [
        f"Bagging-Date: {datetime.now(UTC):%Y-%m-%d}",
        f"Payload-Oxum: {total}.{len(entries)}",
        f"Bag-Software-Agent: exotel-archiver {__version__}",
        f"External-Identifier: {settings.exotel.account_sid or 'unknown-account'}",
        f"Exotel-Account-Sid: {settings.exotel.account_sid or 'unknown'}",
        f"Date-Range: {since or 'beginning'} to {until or 'end'}",
        f"Source-Destination: {settings.destination}",
        "External-Description: Exotel call recordings and call records archived by "
        "exotel-archiver, with their manifest checksums",
    ]
    encrypted = chosen.encrypted
    if encrypted:
        info += [
            f"Encrypted-Payload-Files: {len(encrypted)}",
            *(f"Encrypted-To: {fingerprint}" for fingerprint in chosen.fingerprints),
            f"Payload-Manifest-Hashes: of the payload as stored: for the {len(encrypted)} "
            f"encrypted files their ciphertext; {PLAINTEXT_TAG} has every payload file's "
            "plaintext SHA-256 (check it after exotel-archiver decrypt)",
        ]
    write_atomic(out / "bag-info.txt", "".join(line + "\n" for line in info))
    tag_files = ["bagit.txt", "bag-info.txt"]
    if encrypted:
        plain = "".join(f"{_own_sha256(e)}  data/{e['key']}\n" for e in entries)
        write_atomic(out / PLAINTEXT_TAG, plain)
        tag_files.append(PLAINTEXT_TAG)
    for algorithm in ("sha256", "sha512"):
        if algorithm == "sha256" or sha512:
            write_atomic(out / f"manifest-{algorithm}.txt", "".join(manifests[algorithm]))
            tag_files.append(f"manifest-{algorithm}.txt")
    tags = "".join(
        f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}\n" for name in tag_files
    )
    write_atomic(out / "tagmanifest-sha256.txt", tags)
    return Exported(
        len(entries), total, out, encrypted=len(encrypted), encrypted_to=chosen.fingerprints
    )
