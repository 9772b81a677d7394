"""One archive, one destination, one state directory: the destination's identity marker.

A ledger says what is archived *in one destination*. Pointed at another (a changed
``ARCHIVER_DESTINATION``, a typo fixed, another store behind the same bucket name) it would
report every earlier call ``already archived`` although the new destination holds none of their
bytes, and seal segment 2 there with no segment 1. So a destination that holds an archive
carries a small marker object, written once (``If-None-Match: *``) by the run that claims it::

    _manifest/destination.json
    {"account_sid":"…","archive_id":"<32 hex>","created_at":"2026-12-01T09:00:00.000Z",
     "created_by":"host:/var/lib/exotel-archiver","schema":1,"type":"exotel-archiver-destination"}

and the ledger records the archive id, the destination's location and the marker's bytes
(``worker_state``: ``destination.*``). Before any API request, every command that uses both
(archive, backfill and its dry run, run, reconcile, verify, retention jobs, repair) checks them:

==========================  ==========================  =========================================
ledger                      destination                 outcome
==========================  ==========================  =========================================
no record, no entries       no marker, no segments      a new archive: claimed (marker written,
                                                        then the ledger bound); a dry run writes
                                                        nothing
no record, no entries       marker or segments          refused: another archive's destination;
                                                        ``manifest rebuild`` adopts it
no record, entries          no marker                   an archive from before markers: bound if
(written before markers)                                the ledger's own locations are this
                                                        destination's and its segments are there,
                                                        else refused
bound to archive A at L     marker of A, at L           go on
bound to archive A at L     anything at another place   refused, naming L and the new place
bound to archive A          marker of archive B         refused: another writer's destination
bound (confirmed) to A, L   no marker at L              refused: the destination was emptied or
                                                        is another store; ``repair`` puts the
                                                        marker (and what it can) back
bound, not yet confirmed    no marker, or marker of A   a claim cut short: the marker is written
                                                        (again) and the binding confirmed
==========================  ==========================  =========================================

Two writers on one destination are therefore refused: only one state directory can hold the
archive id whose marker is there, and of two claiming an empty destination at once the store's
write-once PUT lets exactly one win. Each writer (each host of a split backfill, each account of
the per-account template) gets its own prefix: docs/operations.md.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archiver.config import Settings
from archiver.errors import DestinationMismatch, StorageConflict
from archiver.ledger import Ledger, SegmentRecord, utc_now
from archiver.segments import PREFIX as SEGMENTS
from archiver.segments import ParsedSegment, parse, read_segment, render, segment_key
from archiver.sinks import Sink, put_bytes

MARKER_KEY = "_manifest/destination.json"
MARKER_TYPE = "exotel-archiver-destination"

_ID, _LOCATION, _MARKER, _CONFIRMED = (
    "destination.archive_id",
    "destination.location",
    "destination.marker",
    "destination.confirmed",
)
NOTHING_DONE = "Nothing was done."


@dataclass(frozen=True)
class Marker:
    archive_id: str
    account_sid: str | None
    created_at: str
    created_by: str
    data: bytes

    def describe(self) -> str:
        account = f" of account {self.account_sid}" if self.account_sid else ""
        return (
            f"archive {self.archive_id}{account}, claimed by {self.created_by} on {self.created_at}"
        )


def render_marker(archive_id: str, account_sid: str | None, created_by: str) -> bytes:
    body = {
        "type": MARKER_TYPE,
        "schema": 1,
        "archive_id": archive_id,
        "account_sid": account_sid,
        "created_at": utc_now(),
        "created_by": created_by,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def parse_marker(data: bytes, where: str) -> Marker:
    try:
        body: Any = json.loads(data)
        if not isinstance(body, dict) or body.get("type") != MARKER_TYPE:
            raise ValueError("not an exotel-archiver destination marker")
        archive_id = body["archive_id"]
        if not isinstance(archive_id, str) or not archive_id:
            raise ValueError("no archive_id")
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise DestinationMismatch(
            f"{where} is not a valid destination marker ({exc}): it was edited or replaced. "
            "Restore it from a copy, or point ARCHIVER_DESTINATION at another prefix. "
            + NOTHING_DONE
        ) from None
    account = body.get("account_sid")
    return Marker(
        archive_id,
        account if isinstance(account, str) else None,
        str(body.get("created_at", "?")),
        str(body.get("created_by", "?")),
        data,
    )


async def read_marker(sink: Sink) -> Marker | None:
    if await sink.stat(MARKER_KEY) is None:
        return None
    return parse_marker(await read_segment(sink, MARKER_KEY), sink.location(MARKER_KEY))


@dataclass(frozen=True)
class Binding:
    """What the ledger records of its destination (None: nothing yet)."""

    archive_id: str
    location: str
    marker: bytes
    confirmed: bool


def binding(ledger: Ledger) -> Binding | None:
    archive_id, location, marker = (ledger.state(n) for n in (_ID, _LOCATION, _MARKER))
    if not archive_id or not location or not marker:
        return None
    return Binding(archive_id, location, marker.encode(), ledger.state(_CONFIRMED) == "1")


def record_binding(ledger: Ledger, marker: Marker, location: str, *, confirmed: bool) -> None:
    ledger.set_states(
        {
            _ID: marker.archive_id,
            _LOCATION: location,
            _MARKER: marker.data.decode(),
            _CONFIRMED: "1" if confirmed else "0",
        }
    )


def clear_binding(ledger: Ledger) -> None:
    """Forget a claim that never took (``binding`` is None again)."""
    ledger.set_states({_ID: "", _LOCATION: "", _MARKER: "", _CONFIRMED: ""})


async def _has_segments(sink: Sink) -> bool:
    async for _ in sink.list(SEGMENTS):
        return True
    return False


async def bind(
    settings: Settings,
    sink: Sink,
    ledger: Ledger | None,
    *,
    claim: bool,
    allow_lost_marker: bool = False,
    check_chain: bool = True,
) -> Marker | None:
    """Check that ``ledger`` (None: no ledger yet) and ``sink`` are one archive; see the module
    docstring. With ``claim``, a new destination is claimed (marker written, ledger bound); without
    it nothing is written anywhere. ``allow_lost_marker`` (``repair``) lets a bound ledger go on at
    its own location when the marker is gone. Returns the destination's marker, if any. Raises
    ``DestinationMismatch``. ``check_chain`` False (``verify``, which reports it) skips the check
    for a segment this ledger did not seal."""
    here = sink.describe()
    state = settings.state_dir
    marker = await read_marker(sink)
    bound = binding(ledger) if ledger is not None else None
    account = settings.exotel.account_sid or None
    if (
        bound is not None
        and ledger is not None
        and not bound.confirmed
        and bound.location != here
        and not ledger.has_entries()
    ):
        # A claim elsewhere that never took (the marker PUT failed, or the run stopped before
        # it): nothing was archived under it, so this state directory is still a new one.
        if claim:
            clear_binding(ledger)
        bound = None
    if bound is not None and bound.location != here:
        raise DestinationMismatch(
            f"the state directory {state} belongs to the archive in {bound.location}, not to "
            f"{here}: its ledger would report calls archived that {here} does not hold. To "
            f"archive into {here}, use another --state-dir (ARCHIVER_STATE_DIR): a new one for "
            f"a new archive, or one restored with `exotel-archiver manifest rebuild` if {here} "
            f"already holds an archive. To go on with {bound.location}, set "
            f"ARCHIVER_DESTINATION back to it. {NOTHING_DONE}"
        )
    if marker is not None:
        if bound is None or bound.archive_id != marker.archive_id:
            has = f"archive {bound.archive_id}" if bound is not None else "no record of it"
            raise DestinationMismatch(
                f"{here} belongs to another archive than the state directory {state} ({has}): "
                f"{marker.describe()}. If this is a new machine or a lost state directory of "
                "that archive, run `exotel-archiver manifest rebuild` with this --state-dir "
                "(ARCHIVER_STATE_DIR): it adopts the destination's chain. If it is another "
                "writer (another host, or another account sharing the bucket), give each "
                "archive its own prefix, e.g. ARCHIVER_DESTINATION=s3://bucket/<account_sid>. "
                + NOTHING_DONE
            )
        if account and marker.account_sid and marker.account_sid != account:
            raise DestinationMismatch(
                f"{here} holds the archive of Exotel account {marker.account_sid}, but "
                f"EXOTEL_ACCOUNT_SID is {account}: give each account its own destination "
                f"prefix and state directory. {NOTHING_DONE}"
            )
        if ledger is not None and check_chain:
            await _check_not_behind(settings, sink, ledger)
        if ledger is not None and bound is not None and not bound.confirmed and claim:
            record_binding(ledger, marker, here, confirmed=True)
        return marker
    # No marker in the destination.
    if bound is not None:
        if not bound.confirmed:  # our claim was cut short before (or while) the marker was put
            if claim and ledger is not None:
                return await _put_marker(settings, sink, ledger, parse_marker(bound.marker, here))
            return None
        if allow_lost_marker:
            return None
        raise DestinationMismatch(
            f"{here} has lost its identity marker ({MARKER_KEY}), although the state directory "
            f"{state} claimed it for archive {bound.archive_id}: the destination was emptied, "
            "or AWS_ENDPOINT_URL now points at another store with the same bucket name. Check "
            "the endpoint; then `exotel-archiver verify` shows what is missing and "
            "`exotel-archiver repair` puts back the marker, the manifest segments and every "
            f"recording Exotel still has. {NOTHING_DONE}"
        )
    has_segments = await _has_segments(sink)
    if ledger is None or not ledger.has_entries():
        if has_segments:
            raise DestinationMismatch(
                f"{here} already holds a manifest chain (written before destination markers), "
                f"and the state directory {state} has no record of it. To continue that "
                "archive here, run `exotel-archiver manifest rebuild` with this --state-dir: it "
                "adopts the chain; to start another archive, give it its own prefix. "
                + NOTHING_DONE
            )
        if claim and ledger is not None:
            return await _claim(settings, sink, ledger)
        return None
    # A ledger with entries from before markers: it is this destination's only if its own
    # records say so.
    problem = await _legacy_problem(sink, ledger, segments=not allow_lost_marker)
    if problem is not None:
        raise DestinationMismatch(
            f"the state directory {state} holds the record of another destination, not of "
            f"{here} ({problem}): its ledger would report calls archived that {here} does not "
            "hold. Use another --state-dir (ARCHIVER_STATE_DIR) for this destination, or set "
            "ARCHIVER_DESTINATION back; `exotel-archiver manifest rebuild` restores a state "
            f"directory from a destination's chain. {NOTHING_DONE}"
        )
    if check_chain:
        await _check_not_behind(settings, sink, ledger)
    if claim:
        return await _claim(settings, sink, ledger)
    return None


async def _check_not_behind(settings: Settings, sink: Sink, ledger: Ledger) -> None:
    """The destination holds no manifest segment after the ledger's last one, unless it is the
    one this ledger was sealing when a run was cut short (its bytes are the ledger's unsealed
    rows). Anything else was sealed by another writer of this archive — a state directory
    restored from a backup, or a second one made with ``manifest rebuild`` while the first goes
    on — and sealing after it would take that writer's segment for ours."""
    while True:
        known = ledger.segments()
        number = known[-1].number + 1 if known else 1
        key = segment_key(number)
        if await sink.stat(key) is None:
            return
        try:
            existing = parse(await read_segment(sink, key))
        except ValueError:
            break
        if _sealing_it(ledger, known, number, existing):
            return  # our own seal, cut short before the ledger recorded it
        now = {s.number: s.sha256 for s in ledger.segments()}
        if now.get(number) != existing.sha256:
            break
        # The worker beside us (this check is a dry run, reconcile or a retention job) sealed
        # it meanwhile: look after it too.
    raise DestinationMismatch(
        f"{sink.location(key)} is a manifest segment the state directory {settings.state_dir} "
        "did not seal: another state directory is writing this archive (one restored from a "
        "backup, or one made with `exotel-archiver manifest rebuild` while this one went on). "
        "Stop the other writer, or leave this state directory: restore a current one with "
        "`exotel-archiver manifest rebuild` into a new, empty --state-dir. " + NOTHING_DONE
    )


def _sealing_it(
    ledger: Ledger, known: list[SegmentRecord], number: int, existing: ParsedSegment
) -> bool:
    """Whether ``existing`` (segment ``number``) is exactly what this ledger is sealing there:
    its rows from the first unsealed one, rendered after the ledger's last known segment."""
    try:
        first, last = int(existing.header["first_seq"]), int(existing.header["last_seq"])
    except (KeyError, TypeError, ValueError):
        return False
    ours = ledger.entries_between(first, last)
    unsealed = ledger.unsealed(1)
    prev = known[-1].sha256 if known else None
    return (
        bool(ours)
        and bool(unsealed)
        and unsealed[0].seq == first
        and all(e.segment is None for e in ours)
        and hashlib.sha256(render(number, prev, ours)).hexdigest() == existing.sha256
    )


async def _legacy_problem(sink: Sink, ledger: Ledger, *, segments: bool = True) -> str | None:
    """Why a ledger from before markers is not this destination's (None: it is). Its own
    locations must be here; and, unless ``segments`` is False (``repair``, which puts lost
    segments back), its last sealed segment must be there too."""
    for record in ledger.first_and_last_objects():
        if record.location != sink.location(record.key):
            return f"it recorded {record.key} at {record.location}"
    sealed = ledger.segments()
    if sealed and segments:
        info = await sink.stat(sealed[-1].key)
        if info is None:
            return f"its manifest segment {sealed[-1].number} is not there"
    return None


async def _claim(settings: Settings, sink: Sink, ledger: Ledger) -> Marker:
    created_by = f"{socket.gethostname()}:{Path(settings.state_dir).resolve()}"
    data = render_marker(secrets.token_hex(16), settings.exotel.account_sid or None, created_by)
    marker = parse_marker(data, MARKER_KEY)
    record_binding(ledger, marker, sink.describe(), confirmed=False)  # first: a crash retries
    return await _put_marker(settings, sink, ledger, marker)


async def _put_marker(settings: Settings, sink: Sink, ledger: Ledger, marker: Marker) -> Marker:
    try:
        await put_bytes(sink, MARKER_KEY, marker.data, content_type="application/json")
    except StorageConflict:
        # Another writer claimed it first: our claim never took; refuse with what it wrote.
        clear_binding(ledger)
        await bind(settings, sink, ledger, claim=False)
        raise
    # Read it back: a store without write-once PUTs (ARCHIVER_S3_CONDITIONAL_WRITES=off checks,
    # then writes) lets two claims both "succeed"; the one whose marker is not there lost.
    there = await read_marker(sink)
    if there is None or there.data != marker.data:
        clear_binding(ledger)
        await bind(settings, sink, ledger, claim=False)
        raise DestinationMismatch(
            f"{sink.location(MARKER_KEY)} was not written as claimed (another writer claimed "
            f"{sink.describe()} at the same time). {NOTHING_DONE}"
        )
    record_binding(ledger, marker, sink.describe(), confirmed=True)
    return marker


async def adopt(settings: Settings, sink: Sink, ledger: Ledger, *, chain: bool) -> Marker | None:
    """``manifest rebuild``: bind a restored ledger to the destination it was restored from —
    to its marker, or (a chain from before markers, ``chain`` True) to a new one."""
    marker = await read_marker(sink)
    if marker is not None:
        record_binding(ledger, marker, sink.describe(), confirmed=True)
        return marker
    if chain:
        return await _claim(settings, sink, ledger)
    return None


async def restore_marker(sink: Sink, ledger: Ledger) -> bool:
    """``repair``: put the bound marker back where it was lost; True if it was put."""
    bound = binding(ledger)
    if bound is None or bound.location != sink.describe() or await read_marker(sink):
        return False
    await put_bytes(sink, MARKER_KEY, bound.marker, content_type="application/json")
    return True


async def check_destination(settings: Settings, sink: Sink) -> None:
    """A read-only check before a command spends API requests (a dry run, reconcile, verify):
    the state directory's ledger, if there is one, belongs to ``sink``."""
    path = settings.state_dir / "ledger.sqlite3"
    if not path.exists():
        await bind(settings, sink, None, claim=False)
        return
    ledger = Ledger(path, readonly=True)
    try:
        await bind(settings, sink, ledger, claim=False)
    finally:
        ledger.close()
