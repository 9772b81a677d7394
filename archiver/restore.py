"""``exotel-archiver decrypt``: recordings encrypted to a public key restored, and checked.

The promises:

- The private key (``archiver.envelope.Identity``) is given to this command only; nothing here
  stores it, logs it or puts it in a message, nor the passphrase it was read with.
- An object is restored only from its manifest entry: the chain in the destination, checked as
  ``verify`` reads it (``archiver.chain.load_chain``, with the state directory's ledger when
  there is one, so entries not sealed yet count), and ``manifest.jsonl`` for what neither holds.
  Anyone holding the public key can make a valid envelope; the manifest's SHA-256 of the stored
  ciphertext is what ties an object to what the worker stored.
- It is written only when all of it checked: every chunk's tag (``Decryptor``), the ciphertext's
  size and SHA-256 against the entry's ``size``/``sha256``, the plaintext's against
  ``plaintext_size``/``plaintext_sha256``. Until then it goes into a temp file (``0600``) beside
  its place; then fsync, rename, fsync of the folder. A refused object leaves nothing behind (a
  file already at its place is left as it was).
- ``restore_file`` does the same for an envelope downloaded by hand, checked against an entry
  when one is given, else only decrypted (``UNCHECKED``): the caller says so.
"""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from archiver import identity as marker
from archiver.archive import sink_for
from archiver.chain import expected, load_chain, stored_as
from archiver.config import Settings
from archiver.envelope import READ, Decryptor, Identity
from archiver.errors import DecryptionError, StoragePermanent
from archiver.files import FILE_MODE, fsync_dir, make_dirs
from archiver.ledger import Ledger
from archiver.manifest import is_event, present_objects, read_manifest
from archiver.sinks import RetryingSink, Sink
from archiver.sinks.base import validate_key
from archiver.sinks.local import LocalSink

RESTORED, REFUSED, UNCHECKED = "restored", "refused", "unchecked"


@dataclass
class Outcome:
    """What became of one object."""

    key: str
    status: str
    """``restored`` (written and checked), ``refused`` (nothing written) or ``unchecked``
    (written; no manifest entry to check it against)."""
    reason: str = ""
    """Why it was refused, in words."""
    path: Path | None = None
    plaintext_size: int | None = None
    plaintext_sha256: str | None = None


@dataclass
class Archive:
    """The destination and the manifest entries of its objects, read for restoring."""

    sink: Sink | None
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Object entries by key (erased objects left out)."""
    problems: list[str] = field(default_factory=list)
    """What is wrong with the manifest chain (``exotel-archiver verify`` tells more)."""
    root: Path | None = None
    """A local destination's directory: nothing is ever restored into it (the plaintext would
    replace the archived ciphertext)."""

    def entry(self, key: str) -> dict[str, Any] | str | None:
        """The entry of ``key`` to check its object against; a refusal reason when the chain is
        damaged (nothing it holds proves what belongs at a key: anyone holding the public key
        can make a valid envelope); None when no entry names it."""
        if self.problems:
            return DAMAGED
        return self.entries.get(key)

    def targets(self, keys: Iterable[str], calls: Iterable[str]) -> list[tuple[str, Any]]:
        """(key, entry or a refusal reason) for each key given, then every encrypted object of
        each call given, in key order; each key once. With a damaged chain, each is refused."""
        out: dict[str, Any] = {}
        for key in keys:
            found = self.entry(key)
            out.setdefault(
                key,
                found
                if found is not None
                else "no manifest entry names it (check the key: `exotel-archiver manifest "
                "export` lists them)",
            )
        for sid in calls:
            of_call = sorted(
                (e for e in self.entries.values() if e.get("call_sid") == sid),
                key=lambda e: str(e["key"]),
            )
            encrypted = [e for e in of_call if e.get("encrypted_to")]
            for e in encrypted:
                out.setdefault(str(e["key"]), DAMAGED if self.problems else e)
            if not encrypted:
                why = "it has no encrypted objects" if of_call else "no manifest entry names it"
                out.setdefault(f"call {sid}", why)
        return list(out.items())


DAMAGED = (
    "the manifest chain in the destination is damaged (`exotel-archiver verify` names what is "
    "wrong): an entry from it proves nothing about the object at its key, so none is restored "
    "from it"
)


def inside_destination(settings: Settings, path: Path) -> Path | None:
    """The local destination's directory if ``path`` is in it (or is it), else None: nothing is
    restored there — the plaintext would replace the archive's own objects."""
    destination = (settings.destination or "").strip()
    if not destination or ("://" in destination and not destination.startswith("file:")):
        return None
    raw = unquote(urlsplit(destination).path) if destination.startswith("file:") else destination
    root = Path(raw).expanduser().resolve()
    return root if path.expanduser().resolve().is_relative_to(root) else None


def _local_entries(settings: Settings) -> list[dict[str, Any]]:
    return read_manifest(settings.state_dir / "manifest.jsonl")


@asynccontextmanager
async def open_archive(settings: Settings, *, destination: bool = True) -> AsyncIterator[Archive]:
    """The archive of ``settings``: its chain (with the ledger, read-only, as ``verify``) and
    ``manifest.jsonl``. ``destination`` False (``restore_file``): without one, only
    ``manifest.jsonl`` is read. Raises ``ConfigError`` (no destination, another archive's ledger)
    and ``StorageError`` as ``verify`` does."""
    if not destination and not settings.destination:
        yield Archive(None, _by_key(_local_entries(settings)))
        return
    sink = sink_for(settings)
    path = settings.state_dir / "ledger.sqlite3"
    ledger = Ledger(path, readonly=True) if path.exists() else None
    try:
        await sink.check()
        if ledger is not None:  # a ledger of another destination would name other objects
            await marker.bind(
                settings, sink, ledger, claim=False, allow_lost_marker=True, check_chain=False
            )
        chain = await load_chain(sink, ledger)
        seqs = {e.get("seq") for e in chain.checked}
        named = {e.get("key") for e in chain.checked}
        # manifest.jsonl only for what neither holds: a line never stands in for their entry
        local = [
            e
            for e in _local_entries(settings)
            if e.get("seq") not in seqs and e.get("key") not in named
        ]
        backend = sink.inner if isinstance(sink, RetryingSink) else sink
        root = backend.root if isinstance(backend, LocalSink) else None
        yield Archive(sink, _by_key([*chain.checked, *local]), list(chain.problems), root)
    finally:
        if ledger is not None:
            ledger.close()
        await sink.close()


def _by_key(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Object entries by key, each with the ``sha256``/``size`` its key must hold now: a repair
    of an encrypted recording put back another ciphertext (``chain.stored_as``)."""
    stored = stored_as(entries)
    by_key: dict[str, dict[str, Any]] = {}
    for e in present_objects(entries):
        if not is_event(e):
            sha256, size = expected(e, stored)
            by_key[str(e["key"])] = {**e, "sha256": sha256, "size": size}
    return by_key


def _encrypted_entry(entry: dict[str, Any], identity: Identity) -> str | None:
    """Why ``entry`` cannot be decrypted with ``identity`` (None: it can be tried)."""
    to = entry.get("encrypted_to")
    if not to:
        return "it is not encrypted client-side (stored as it came: download it as it is)"
    own = identity.recipient.fingerprint
    if to != own:
        return f"it is encrypted to {to}, not to this identity ({own})"
    if not isinstance(entry.get("plaintext_sha256"), str) or not isinstance(
        entry.get("plaintext_size"), int
    ):
        return "its manifest entry lacks plaintext_sha256/plaintext_size: nothing to check it by"
    return None


def _check(entry: dict[str, Any], dec: Decryptor) -> str | None:
    """Why the decrypted object does not match its entry (None: it does)."""
    if dec.size != entry.get("size") or dec.sha256 != entry.get("sha256"):
        return (
            f"the stored ciphertext ({dec.size} bytes, sha256 {dec.sha256}) is not what the "
            f"manifest recorded ({entry.get('size')} bytes, sha256 {entry.get('sha256')}): the "
            "object was replaced (`exotel-archiver verify`, `repair`)"
        )
    if (
        dec.plaintext_size != entry["plaintext_size"]
        or dec.plaintext_sha256 != entry["plaintext_sha256"]
    ):
        return (
            f"the decrypted recording ({dec.plaintext_size} bytes, sha256 "
            f"{dec.plaintext_sha256}) is not what the manifest recorded "
            f"({entry['plaintext_size']} bytes, sha256 {entry['plaintext_sha256']})"
        )
    return None


class _Pending:
    """A temp file (``0600``) beside ``target``: kept (fsync, rename) or dropped."""

    def __init__(self, target: Path) -> None:
        make_dirs(target.parent)
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.decrypting"):
            stale.unlink(missing_ok=True)  # a run killed mid-way: unverified plaintext, dropped
        self.target = target
        self.tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.decrypting")
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        self.file: IO[bytes] = open(fd, "wb")  # noqa: SIM115 (kept or dropped below)

    def keep(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)

    def drop(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _place(out_dir: Path, key: str) -> Path:
    try:
        validate_key(key)
    except StoragePermanent as exc:
        raise DecryptionError(str(exc)) from None
    return out_dir.joinpath(*key.split("/"))


async def restore_object(
    archive: Archive, identity: Identity, key: str, entry: Any, out_dir: Path
) -> Outcome:
    """Decrypt the object ``key`` of ``archive`` into ``out_dir/key``, checked against its
    ``entry`` (a string: the reason it is refused without a look)."""
    if isinstance(entry, str):
        return Outcome(key, REFUSED, entry)
    why = _encrypted_entry(entry, identity)
    if why is not None:
        return Outcome(key, REFUSED, why)
    assert archive.sink is not None
    try:
        target = _place(out_dir, key)
    except DecryptionError as exc:
        return Outcome(key, REFUSED, str(exc))
    root = archive.root
    if root is not None and target.resolve().is_relative_to(root):
        return Outcome(
            key,
            REFUSED,
            f"{target} is inside the destination ({root}): the plaintext would replace the "
            "archive's own objects; give an --out outside it",
        )
    info = await archive.sink.stat(key)
    if info is None:
        return Outcome(
            key, REFUSED, "it is missing from the destination (`exotel-archiver repair`)"
        )
    if info.size != entry.get("size"):  # not downloaded at all: it cannot be the recorded one
        return Outcome(
            key,
            REFUSED,
            f"the stored object ({info.size} bytes) is not what the manifest recorded "
            f"({entry.get('size')} bytes): it was replaced (`exotel-archiver verify`, `repair`)",
        )
    try:
        pending = _Pending(target)
    except OSError as exc:
        return Outcome(key, REFUSED, _cannot_write(target, exc))
    try:
        dec = Decryptor(identity)
        async for piece in archive.sink.read(key):
            pending.file.write(dec.update(piece))
        pending.file.write(dec.finish())
        why = _check(entry, dec)
        if why is not None:
            pending.drop()
            return Outcome(key, REFUSED, why)
        pending.keep()
    except DecryptionError as exc:
        pending.drop()
        return Outcome(key, REFUSED, str(exc))
    except OSError as exc:  # the output place (a folder there, a full disk): this object only
        pending.drop()
        return Outcome(key, REFUSED, _cannot_write(target, exc))
    except BaseException:
        pending.drop()
        raise
    return Outcome(key, RESTORED, "", target, dec.plaintext_size, dec.plaintext_sha256)


def _cannot_write(target: Path, exc: OSError) -> str:
    return (
        f"cannot write {target} ({exc.strerror or type(exc).__name__}): nothing was written "
        "for it; free the place (or the disk) and run again"
    )


def restore_file(
    identity: Identity, src: Path, dst: Path, entry: dict[str, Any] | None, *, key: str = ""
) -> Outcome:
    """Decrypt the envelope file ``src`` into ``dst``: checked against ``entry`` when given
    (``restored`` or ``refused``), else ``unchecked`` (its plaintext hash for the caller to
    show). A refused one leaves nothing at ``dst``."""
    name = key or str(src)
    if entry is not None:
        why = _encrypted_entry(entry, identity)
        if why is not None:
            return Outcome(name, REFUSED, why)
    pending = _Pending(dst)
    try:
        dec = Decryptor(identity)
        with open(src, "rb") as f:
            while piece := f.read(READ):
                pending.file.write(dec.update(piece))
        pending.file.write(dec.finish())
        why = _check(entry, dec) if entry is not None else None
        if why is not None:
            pending.drop()
            return Outcome(name, REFUSED, why)
        pending.keep()
    except DecryptionError as exc:
        pending.drop()
        return Outcome(name, REFUSED, str(exc))
    except BaseException:
        pending.drop()
        raise
    status = RESTORED if entry is not None else UNCHECKED
    return Outcome(name, status, "", dst, dec.plaintext_size, dec.plaintext_sha256)
