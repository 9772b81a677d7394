"""Look before you leap: every check that needs no Exotel request, before the first one.

A command that would spend API requests (``archive``, ``backfill`` and its dry run, ``run``,
``repair``) calls ``preflight`` first, so that a problem it can find by itself
stops it with a configuration error (exit 2, one line naming the problem and the fix) before
any request is made or anything written. In order:

1. **Exotel credentials** are set (the configuration itself was loaded and checked already),
   unless the command may need none (``repair`` asks for them when it must fetch).
2. **The writer lock** is free, for a command that does not hold it yet (a backfill lists its
   range before ``archive_calls`` takes the lock; a dry run never takes it): another writer on
   the state directory is named with its pid (``ledger.WriterBusy``). The lock is taken and let
   go at once. The long-running worker waits for the lock instead (it holds it when it calls
   this).
3. **The destination** is reachable and takes new objects — proven without leaving anything
   behind (``Sink.check_writable``: for S3, HeadBucket and a multipart upload started and
   aborted at once; for a local directory, a probe file created and removed), so a dry run may
   run it. ``write=False`` (a ``repair --dry-run``) only checks it is reachable. With
   server-side encryption asked (``--sse``), the probe upload also sends a 1-byte part, encrypted
   as asked, before it is aborted: a KMS key the store refuses (missing, disabled, not these
   credentials' to use) or a store that does not encrypt as asked stops the command here
   (``ConfigError``, naming the key and kms:GenerateDataKey / kms:Decrypt), and an alias is
   resolved to the key every later write must name (``archiver.sinks.base``, item 11).
4. **Object Lock** is enabled when a retention class locks its objects.
5. **The destination's identity** (``archiver.identity``): the state directory belongs to this
   destination. A command holding the writer lock passes its ``ledger`` (and ``claim`` to
   claim a new destination: the only write here, and the last check); the others are checked
   read-only.
"""

from __future__ import annotations

from archiver import identity
from archiver.config import Settings
from archiver.errors import ConfigError
from archiver.ledger import Ledger, writer_lock
from archiver.sinks import Sink


async def preflight(
    settings: Settings,
    sink: Sink,
    *,
    ledger: Ledger | None = None,
    claim: bool = False,
    lock: bool = True,
    write: bool = True,
    check_identity: bool = True,
    exotel: bool = True,
) -> None:
    """Run the checks of the module docstring; raise ``ConfigError`` (``WriterBusy``,
    ``DestinationMismatch``) or ``StoragePermanent`` for the first that fails.

    ``ledger``: the open ledger of a command holding the writer lock (identity is then bound to
    it, claimed with ``claim``). ``lock``: check that the writer lock is free (False when the
    caller holds it, or, like the worker, waits for it). ``write``: the destination must take
    objects (False: a reader). ``check_identity`` False: the caller binds it itself (``repair``,
    which may put a lost marker back). ``exotel`` False: the command asks for the credentials
    itself when it comes to a request (``repair``, which often needs none)."""
    if exotel:
        settings.require_exotel_credentials()
    if lock:
        with writer_lock(settings.state_dir):
            pass  # free now; a writer starting after this is refused when the lock is taken
    if write:
        await sink.check_writable()
    else:
        await sink.check()
    await _object_lock(settings, sink)  # read-only: a dry run checks it as the real run does
    if not check_identity:
        return
    if ledger is not None:
        await identity.bind(settings, sink, ledger, claim=claim)
    else:
        await identity.check_destination(settings, sink)


async def _object_lock(settings: Settings, sink: Sink) -> None:
    """The destination locks objects, if a retention class asks for it."""
    policy = settings.retention
    if policy is None or not policy.needs_object_lock or await sink.object_lock_enabled():
        return
    locking = sorted(c.name for c in policy.classes.values() if c.lock is not None)
    raise ConfigError(
        f"retention class(es) {', '.join(locking)} ask for Object Lock, but "
        f"{sink.describe()} does not have it enabled: use a bucket created with Object Lock "
        '(it cannot be added to every existing bucket), or set lock = "none" in those '
        "classes. Nothing was archived."
    )
