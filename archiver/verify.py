"""Fixity audit: is the manifest chain intact, and is every object still what it recorded?

``verify`` works from the destination itself — the evidence an auditor would look at:

1. It loads the manifest chain and checks it (``archiver.chain``): the segments themselves,
   and, with the local ledger (opened read-only: it may run beside the worker), the two against
   each other, both ways.
2. It re-reads the objects (all, those of a date range, or a sample) and compares size and
   SHA-256 — the entry's, or for a client-side encrypted object that ``repair`` put back as a
   new ciphertext, its latest ``repaired`` event's ``stored_*`` (``chain.stored_as``) —:
   ``ok``, ``missing`` or ``altered``; ``erased``/``not_erased`` for objects with a valid
   erasure receipt. With the ledger, the entries it checks are the ledger's (the chain must equal
   them, step 1): an entry only the destination has vouches for nothing, and entries the worker
   recorded but has not sealed yet are checked too and reported ``pending_seal``.
3. It lists the archive and names every object that no entry names: ``unexpected``. With the
   ledger, an object stored (or deleted) whose row (or receipt) the worker has not committed yet
   is waited for, up to ``LATE_GRACE``, before it is called unexpected (or missing).

The result is ``ok`` only when the chain is intact and every object checked is ``ok``, ``erased``
or ``pending_seal``, with nothing unexpected.

It also counts the calls the entries name (of the date range; a sample re-reads fewer objects
but counts every call): ``complete`` — its ``call.json`` (the v3 details) is recorded; ``rescued``
— its recording was stored from the v1 listing with ``call-v1.json`` beside it and no
``call.json`` yet (``archiver.rescue``: by design, not damage — every object it has is still
re-read byte for byte); ``incomplete`` — neither (e.g. a call whose archiving stopped after
its recordings: the next run completes it). These counts are facts about the chain, not
failures: they never make the result not ``ok``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from archiver import identity
from archiver.archive import sink_for
from archiver.chain import Chain, cross_check, expected, load_chain, stored_as
from archiver.config import Settings
from archiver.ledger import Ledger
from archiver.manifest import entry, is_event
from archiver.sinks import Sink

OK, MISSING, ALTERED, UNEXPECTED = "ok", "missing", "altered", "unexpected"
ERASED, NOT_ERASED = "erased", "not_erased"
"""An object with an erasure receipt: absent as it should be, or still (again) there."""
PENDING_SEAL = "pending_seal"
"""Recorded by the ledger and as recorded, but not (yet) in a segment verify read: the worker
seals it soon. Not a failure; only known with the ledger."""
STATUSES = (OK, MISSING, ALTERED, UNEXPECTED, ERASED, NOT_ERASED, PENDING_SEAL)
PASSING = frozenset({OK, ERASED, PENDING_SEAL})
COMPLETE, RESCUED, INCOMPLETE = "complete", "rescued", "incomplete"
CALL_STATES = (COMPLETE, RESCUED, INCOMPLETE)
"""What the entries say of each call: see the module docstring."""

LATE_GRACE = 15.0
"""Seconds verify waits, with the ledger, for the worker's commit of an object it found stored
(or gone) that the ledger does not have (or has no receipt for) yet: the worker confirms an object
(a HEAD, or in md5 mode a whole read-back) before it commits the row, and ``retention purge``
deletes before it records the receipt. Only an object in doubt costs the wait."""


@dataclass
class ObjectCheck:
    key: str
    status: str
    call_sid: str | None = None
    expected_size: int | None = None
    expected_sha256: str | None = None
    found_size: int | None = None
    found_sha256: str | None = None


@dataclass
class VerifyReport:
    chain: Chain
    checks: list[ObjectCheck] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CALL_STATES, 0))
    """Calls by what their entries hold (``call_state``)."""

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)

    @property
    def ok(self) -> bool:
        return not self.chain.problems and all(c.status in PASSING for c in self.checks)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "segments": len(self.chain.segments),
            "ledger": self.chain.ledger_used,
            "chain_problems": self.chain.problems,
            "notes": self.chain.notes,
            "counts": {s: self.count(s) for s in STATUSES},
            "calls": dict(self.calls),
            "objects": [c.__dict__ for c in self.checks if c.status not in (OK, ERASED)],
            "checked": len([c for c in self.checks if c.status != UNEXPECTED]),
        }


# --- the objects ---------------------------------------------------------------------------------


def selected(
    entry: dict[str, Any], since: date | None, until: date | None, sample: float | None, seed: str
) -> bool:
    day = str(entry.get("call_created", ""))[:10]
    if since is not None and day < since.isoformat():
        return False
    if until is not None and day > until.isoformat():
        return False
    if sample is not None:
        digest = hashlib.sha256(f"{seed}:{entry.get('key')}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < sample
    return True


def call_state(kinds: set[str]) -> str:
    """A call's state from the kinds of its entries: ``call.json`` recorded is complete; the v1
    record without it is rescued; else incomplete."""
    if "call_details" in kinds:
        return COMPLETE
    return RESCUED if "v1_record" in kinds else INCOMPLETE


def count_calls(
    entries: list[dict[str, Any]], since: date | None, until: date | None
) -> dict[str, int]:
    """Calls by ``call_state``, of the object entries of the date range."""
    kinds: dict[str, set[str]] = {}
    for e in entries:
        if is_event(e) or not selected(e, since, until, None, ""):
            continue
        kinds.setdefault(str(e.get("call_sid")), set()).add(str(e.get("kind")))
    counts = dict.fromkeys(CALL_STATES, 0)
    for have in kinds.values():
        counts[call_state(have)] += 1
    return counts


async def verify(
    sink: Sink,
    ledger: Ledger | None,
    *,
    since: date | None = None,
    until: date | None = None,
    sample: float | None = None,
    seed: str = "",
    on_object: Callable[[ObjectCheck], None] | None = None,
) -> VerifyReport:
    """Check the chain, then the objects it names; see the module docstring."""
    chain = await load_chain(sink, ledger)
    report = VerifyReport(chain, calls=count_calls(chain.checked, since, until))

    def add(check: ObjectCheck) -> None:
        report.checks.append(check)
        if on_object is not None:
            on_object(check)

    erased = cross_check(chain.checked)[1]
    stored = stored_as(chain.checked)
    named = {str(e["key"]) for e in chain.checked}
    gone: dict[str, tuple[dict[str, Any], ObjectCheck]] = {}
    stray: dict[str, ObjectCheck] = {}
    for e in chain.checked:
        if is_event(e) or not selected(e, since, until, sample, seed):
            continue
        key = str(e["key"])
        receipt = erased.get(key)
        if receipt is not None:
            present = await sink.stat(key) is not None
            waiting = receipt["seq"] in chain.pending
            status = NOT_ERASED if present else PENDING_SEAL if waiting else ERASED
            add(ObjectCheck(key, status, e.get("call_sid")))
            continue
        check = await _check(sink, e, stored)
        if check.status == OK and e["seq"] in chain.pending:
            check.status = PENDING_SEAL
        elif check.status == MISSING and chain.ledger_used:
            gone[key] = (e, check)  # erased by a retention job as verify ran?
            continue
        add(check)
    async for info in sink.list():
        if info.key.startswith("_manifest/") or info.key in named:
            continue
        if chain.ledger_used:
            stray[info.key] = ObjectCheck(info.key, UNEXPECTED, found_size=info.size)
        else:
            add(ObjectCheck(info.key, UNEXPECTED, found_size=info.size))
    # With the ledger, an object stored but not recorded yet (or deleted, its receipt not yet
    # recorded) is the worker's work in progress: its commit is waited for (LATE_GRACE).
    deadline = time.monotonic() + LATE_GRACE
    while gone or stray:
        for key, (e, check) in list(gone.items()):
            if _erased_since(ledger, e):
                check.status = PENDING_SEAL
                add(gone.pop(key)[1])
        for key in list(stray):
            late = ledger.object_at(key) if ledger is not None else None
            if late is None:
                continue
            del stray[key]
            if selected(entry(late), since, until, sample, seed):  # archived as verify ran
                check = await _check(sink, entry(late), stored)
                if check.status == OK:
                    check.status = PENDING_SEAL
                add(check)
        if time.monotonic() >= deadline or not (gone or stray):
            break
        await asyncio.sleep(0.2)
    for _, check in gone.values():
        add(check)
    for check in stray.values():
        add(check)
    return report


def _erased_since(ledger: Ledger | None, original: dict[str, Any]) -> bool:
    """Whether the ledger now holds a valid erasure receipt for ``original``'s object."""
    return ledger is not None and any(
        r.kind == "erasure"
        and r.key == original["key"]
        and (r.seq or 0) > original["seq"]
        and all(entry(r).get(n) == original[n] for n in ("call_sid", "sha256", "size"))
        for r in ledger.events(str(original["call_sid"]))
    )


async def _check(
    sink: Sink, entry: dict[str, Any], stored: dict[str, tuple[str, int]]
) -> ObjectCheck:
    key = str(entry.get("key"))
    sha256, size = expected(entry, stored)
    check = ObjectCheck(
        key,
        OK,
        call_sid=entry.get("call_sid"),
        expected_size=size,
        expected_sha256=sha256,
    )
    if await sink.stat(key) is None:
        check.status = MISSING
        return check
    digest, size = hashlib.sha256(), 0
    async for chunk in sink.read(key):
        digest.update(chunk)
        size += len(chunk)
    check.found_size, check.found_sha256 = size, digest.hexdigest()
    if size != check.expected_size or check.found_sha256 != check.expected_sha256:
        check.status = ALTERED
    return check


async def run_verify(
    settings: Settings,
    *,
    since: date | None = None,
    until: date | None = None,
    sample: float | None = None,
    seed: str = "",
    on_object: Callable[[ObjectCheck], None] | None = None,
) -> VerifyReport:
    """``exotel-archiver verify``: the destination of ``settings``, with its ledger if any.

    The ledger is opened read-only: verify may run beside the worker that writes it."""
    sink = sink_for(settings)
    path = settings.state_dir / "ledger.sqlite3"
    ledger = Ledger(path, readonly=True) if path.exists() else None
    try:
        await sink.check()
        marker = None
        if ledger is not None:  # a ledger of another destination would be compared falsely
            marker = await identity.bind(
                settings, sink, ledger, claim=False, allow_lost_marker=True, check_chain=False
            )
        report = await verify(
            sink, ledger, since=since, until=until, sample=sample, seed=seed, on_object=on_object
        )
        bound = identity.binding(ledger) if ledger is not None else None
        if bound is not None and bound.confirmed and marker is None:
            report.chain.problems.append(
                f"the destination's identity marker ({identity.MARKER_KEY}) is missing: the "
                "destination was emptied or is another store; `exotel-archiver repair` puts it "
                "back"
            )
        return report
    finally:
        if ledger is not None:
            ledger.close()
        await sink.close()
