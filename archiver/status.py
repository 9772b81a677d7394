"""``exotel-archiver status``: the facts an operator reads first, and what to do about them.

Everything comes from the state directory's ledger (opened read-only: status runs beside the
worker, which holds the writer lock; SQLite may create the empty -wal/-shm files of a read-only
open, no data is written) and from the destination (its identity marker, the last manifest
segment, the bucket's Object Lock configuration). Exotel is never asked. Whether a process is
archiving comes from ``archiver.liveness`` (the writer lock, the run row's process): a killed
run leaves its ``runs`` row without an end, and the kernel drops its lock.

Each thing wrong becomes one ``Advice``: a problem and the fix, at one of three levels —
``config`` (the next run would stop with exit 2: no destination, another archive's destination,
a destination that cannot be read), ``attention`` (failed calls, the oldest unarchived call near
Exotel's retention, a last run that stopped on an error or was killed, calls not ready or
pending past ``daemon.stuck_after``, failed or pending calls of unknown age, work left while no
process holds the writer lock, rescued calls whose enrichment failed) and ``note`` (nothing
wrong, but worth knowing: entries waiting for the running worker to seal them, calls still
active, rescued calls waiting for enrichment and their objects not locked yet). The exit code
follows the worst: 2, 1, else 0.

A *rescued* call (``archiver.report.RESCUED``) has its recording stored from the v1 listing and
its v3 details still to come: its audio is safe, so it is neither "unarchived" (the oldest
unarchived call, Exotel's retention) nor a failure, and alone it never makes the exit code 1;
it is counted apart from ``archived`` and shown in ``rescued``: how many wait for enrichment
(since when), how many had their enrichment fail (by reason: attention), and, with retention
rules, how many of their objects have no class bound (unlocked) yet and since when — the window
between rescue and lock. With ``enrich = never`` they stay rescued: a note says so, and their
unlocked objects (never locked then) are attention.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from archiver import identity
from archiver.archive import sink_for
from archiver.config import Settings
from archiver.errors import ConfigError, DestinationMismatch, StorageError
from archiver.ledger import FailedCall, Ledger, RunRecord, SegmentRecord, utc_text
from archiver.liveness import RUNNING, STOPPED, state_of, writer_running
from archiver.metrics import oldest_age
from archiver.report import ARCHIVED, FAILED, NO_RECORDING, NOT_READY, RESCUED
from archiver.retention.binding import unbound_window

PENDING = "pending"
CALL_STATES = (ARCHIVED, RESCUED, PENDING, NOT_READY, FAILED, NO_RECORDING)
CONFIG, ATTENTION, NOTE = "config", "attention", "note"
SHOWN_SIDS = 10
"""Call SIDs a failure reason lists (and its retry command names)."""
SHOWN_STUCK = 5
"""Call SIDs a line about stuck calls (or calls of unknown age) names, then "and N more"."""


class NothingArchivedYet(ConfigError):
    """The state directory has no ledger: nothing was archived from it (exit 2)."""


@dataclass(frozen=True)
class Advice:
    """One thing wrong (or worth knowing) and what to do about it."""

    level: str
    problem: str
    fix: str
    command: str | None = None
    """The command to run, as it can be pasted (when the fix is one)."""

    def line(self) -> str:
        return f"{self.problem}: {self.fix}"


@dataclass(frozen=True)
class FailureReason:
    """The failed calls of one kind of error: how many, the first ``SHOWN_SIDS``, an example
    message."""

    reason: str
    count: int
    calls: tuple[str, ...]
    example: str | None


@dataclass(frozen=True)
class Identity:
    """The ledger's binding to its destination, and the destination's marker."""

    state: str
    """``confirmed``, ``claimed`` (a claim cut short: the next run completes it), ``unclaimed``
    (nothing archived yet: the next run claims it), ``mismatch`` or ``unknown`` (the
    destination could not be read)."""
    archive_id: str | None
    marker: str | None
    """How the destination's marker describes itself (who claimed it, when)."""


@dataclass(frozen=True)
class Oldest:
    call_sid: str
    age_days: float
    days_left: float
    """Until Exotel deletes its recording (``source_retention``): negative once past."""


@dataclass(frozen=True)
class Rescued:
    """The calls rescued from the v1 listing and not complete yet (``calls["rescued"]``)."""

    waiting: int
    """Waiting for enrichment (no attempt failed)."""
    oldest_waiting_since: str | None
    """When the earliest rescued of those was rescued (its first object stored; UTC)."""
    waiting_calls: tuple[str, ...]
    """The first ``SHOWN_SIDS`` of them, earliest rescued first."""
    failures: tuple[FailureReason, ...]
    """Rescued calls whose last enrichment attempt failed, by reason (their audio is safe)."""
    unlocked_objects: int | None
    """With retention rules: objects of rescued calls with no retention class bound yet, in
    their row or a ``class_bound`` event (``archiver.retention.binding.unbound_window``: so
    unlocked); None without rules."""
    oldest_unlocked_since: str | None
    """When the earliest of those was stored: the longest window between rescue and lock."""
    enrich: str
    """``background`` or ``never`` (``archiver.enrich``)."""


@dataclass(frozen=True)
class Status:
    checked_at: str
    state_dir: str
    destination: str | None
    identity: Identity
    object_lock: bool | None
    """Whether the bucket has Object Lock enabled; None for a local directory (it has none) or
    when it could not be read."""
    last_run: RunRecord | None
    calls: dict[str, int]
    failures: tuple[FailureReason, ...]
    rescued: Rescued
    segments: int
    last_segment: SegmentRecord | None
    unsealed: int
    oldest_unarchived: Oldest | None
    unknown_age: int
    """Unarchived calls whose creation time the ledger does not know (not in ``oldest``)."""
    writer_running: bool | None
    """Whether a process holds the state directory's writer lock (a worker, an archive, a
    backfill); None when it could not be told."""
    last_run_state: str | None
    """``ended``, ``running`` (no end yet; it holds the writer lock, or its process still
    runs), ``stopped`` (no end, and no process: killed) or None (no run recorded)."""
    source_retention_days: float
    retention_warning_days: float
    advice: tuple[Advice, ...]

    @property
    def exit_code(self) -> int:
        levels = {a.level for a in self.advice}
        return 2 if CONFIG in levels else 1 if ATTENTION in levels else 0

    def as_dict(self) -> dict[str, object]:
        return {
            "exit_code": self.exit_code,
            "checked_at": self.checked_at,
            "state_dir": self.state_dir,
            "destination": self.destination,
            "identity": asdict(self.identity),
            "object_lock": self.object_lock,
            "last_run": asdict(self.last_run) if self.last_run else None,
            "calls": self.calls,
            "failures": [asdict(f) for f in self.failures],
            "rescued": asdict(self.rescued),
            "manifest": {
                "segments": self.segments,
                "last_segment": asdict(self.last_segment) if self.last_segment else None,
                "unsealed": self.unsealed,
            },
            "oldest_unarchived": asdict(self.oldest_unarchived) if self.oldest_unarchived else None,
            "unknown_age": self.unknown_age,
            "writer_running": self.writer_running,
            "last_run_state": self.last_run_state,
            "source_retention_days": self.source_retention_days,
            "retention_warning_days": self.retention_warning_days,
            "advice": [asdict(a) for a in self.advice],
        }


def nothing_yet(settings: Settings) -> str:
    return (
        f"nothing archived yet from the state directory {settings.state_dir} (no ledger there): "
        "run `exotel-archiver archive CALL_SID...` or `exotel-archiver backfill --since DAY "
        "--until DAY` first, or point --state-dir / ARCHIVER_STATE_DIR at the worker's state "
        "directory"
    )


async def gather_status(settings: Settings, *, now: datetime | None = None) -> Status:
    """The status of the archive of ``settings``; raises ``NothingArchivedYet`` when the state
    directory has no ledger. Nothing is written anywhere; no Exotel request is made."""
    now = now or datetime.now(UTC)
    path = settings.state_dir / "ledger.sqlite3"
    if not path.is_file():
        raise NothingArchivedYet(nothing_yet(settings))
    ledger = Ledger(path, readonly=True)
    try:
        advice: list[Advice] = []
        who, lock = await _destination(settings, ledger, advice)
        counts = ledger.call_counts()
        calls = {state: counts.get(state, 0) for state in CALL_STATES}
        failures = _failures(ledger.failed_calls())
        rescued = _rescued(ledger, settings, calls[RESCUED])
        segments = ledger.segments()
        unsealed = ledger.unsealed_count()
        unarchived = ledger.unarchived_created()
        last_run = ledger.last_run()
    finally:
        ledger.close()
    writing = writer_running(settings.state_dir)
    run_state = state_of(last_run, writing)
    busy = True if run_state == RUNNING else writing  # a process archives here (or will)
    retention = settings.daemon.source_retention / 86400
    warning = settings.daemon.retention_warning / 86400
    oldest = _oldest(unarchived, now, retention)
    unknown = [(sid, outcome) for sid, outcome, created in unarchived if not _readable(created)]
    for f in failures:
        command = f"exotel-archiver archive {' '.join(f.calls)}"
        first = f" (the first {len(f.calls)} of them; `status --json` has them)"
        advice.append(
            Advice(
                ATTENTION,
                f"{f.count} call{'s' if f.count != 1 else ''} failed ({f.reason})",
                f"{command} retries them{first if f.count > len(f.calls) else ''}",
                command,
            )
        )
    if oldest is not None and oldest.age_days >= retention - warning:
        gone = oldest.days_left <= 0
        advice.append(
            Advice(
                ATTENTION,
                f"the oldest unarchived call {oldest.call_sid} is {oldest.age_days:.1f} days "
                f"old, Exotel deletes recordings after {retention:g} days "
                + (
                    "(its recording may be gone already)"
                    if gone
                    else f"({oldest.days_left:.1f} days left)"
                ),
                f"archive it now with exotel-archiver archive {oldest.call_sid} (and the other "
                "failed calls); backfill its day again if more of it is missing",
                f"exotel-archiver archive {oldest.call_sid}",
            )
        )
    if unknown:
        urgent = any(outcome in (FAILED, PENDING) for _, outcome in unknown)
        sids = [sid for sid, _ in unknown]
        advice.append(
            Advice(
                ATTENTION if urgent else NOTE,
                f"{_calls(len(sids))} not archived, of unknown age (the ledger has no creation "
                f"time for {'them' if len(sids) != 1 else 'it'}: {_named(sids)}): how near "
                "Exotel's retention they are is not known",
                f"archive them now with exotel-archiver archive {' '.join(sids[:SHOWN_STUCK])} "
                "(that also records their age)",
                f"exotel-archiver archive {' '.join(sids[:SHOWN_STUCK])}",
            )
        )
    advice += _stuck(unarchived, now, settings.daemon.stuck_after, busy)
    advice += _rescued_advice(rescued, busy)
    advice += _run_advice(last_run, run_state, failures)
    if unsealed:
        entries = f"{unsealed} manifest entr{'ies' if unsealed != 1 else 'y'} not sealed yet"
        if busy is False:
            advice.append(
                Advice(
                    ATTENTION,
                    f"{entries}, and no exotel-archiver process is archiving (the writer lock "
                    "is free)",
                    "start the worker (`systemctl start exotel-archiver`): it seals them within "
                    "minutes; an `exotel-archiver archive` or `backfill` also seals them as it "
                    "ends",
                )
            )
        else:
            advice.append(Advice(NOTE, entries, "the running worker (or the next run) seals them"))
    return Status(
        checked_at=utc_text(now),
        state_dir=str(settings.state_dir),
        destination=settings.destination,
        identity=who,
        object_lock=lock,
        last_run=last_run,
        calls=calls,
        failures=failures,
        rescued=rescued,
        segments=len(segments),
        last_segment=segments[-1] if segments else None,
        unsealed=unsealed,
        oldest_unarchived=oldest,
        unknown_age=len(unknown),
        writer_running=writing,
        last_run_state=run_state,
        source_retention_days=retention,
        retention_warning_days=warning,
        advice=tuple(sorted(advice, key=lambda a: (CONFIG, ATTENTION, NOTE).index(a.level))),
    )


async def _destination(
    settings: Settings, ledger: Ledger, advice: list[Advice]
) -> tuple[Identity, bool | None]:
    """The identity check (read-only: ``identity.bind`` without claiming) and Object Lock."""
    bound = identity.binding(ledger)
    archive_id = bound.archive_id if bound else None
    if not settings.destination:
        advice.append(
            Advice(
                CONFIG,
                "no destination set",
                "pass --destination s3://bucket/prefix (or a directory), or set "
                "ARCHIVER_DESTINATION",
            )
        )
        return Identity("unknown", archive_id, None), None
    sink = sink_for(settings)
    try:
        try:
            marker = await identity.bind(settings, sink, ledger, claim=False)
        except DestinationMismatch as exc:
            advice.append(Advice(CONFIG, "the destination is not this ledger's", str(exc)))
            return Identity("mismatch", archive_id, None), None
        except (StorageError, ConfigError) as exc:
            advice.append(Advice(CONFIG, "the destination cannot be read", str(exc)))
            return Identity("unknown", archive_id, None), None
        if marker is not None and bound is not None and bound.confirmed:
            state = "confirmed"
        elif bound is not None:
            state = "claimed"
            advice.append(
                Advice(NOTE, "the destination's claim was cut short", "the next run completes it")
            )
        else:
            state = "unclaimed"
            advice.append(
                Advice(NOTE, "the destination is not claimed yet", "the first run claims it")
            )
        who = Identity(state, archive_id, marker.describe() if marker else None)
        if not settings.destination.startswith("s3://"):
            return who, None
        try:
            lock: bool | None = await sink.object_lock_enabled()
        except StorageError as exc:
            advice.append(Advice(CONFIG, "the bucket's Object Lock state cannot be read", str(exc)))
            return who, None
        policy = settings.retention
        if policy is not None and policy.needs_object_lock and not lock:
            advice.append(
                Advice(
                    CONFIG,
                    "a retention class asks for Object Lock, but the bucket does not have it",
                    'use a bucket created with Object Lock, or set lock = "none" in those classes',
                )
            )
        return who, lock
    finally:
        await sink.close()


def _calls(n: int) -> str:
    return f"{n} call{'s' if n != 1 else ''}"


def _named(sids: list[str]) -> str:
    """The first ``SHOWN_STUCK`` SIDs, then how many more."""
    more = len(sids) - SHOWN_STUCK
    return ", ".join(sids[:SHOWN_STUCK]) + (f" and {more} more" if more > 0 else "")


def _stuck(
    unarchived: list[tuple[str, str, str | None]],
    now: datetime,
    stuck_after: float,
    busy: bool | None,
) -> list[Advice]:
    """Calls not ready or pending for longer than ``daemon.stuck_after`` since their creation
    (attention, each kind named), and notes for the younger ones."""
    advice: list[Advice] = []
    hours = stuck_after / 3600
    for outcome in (NOT_READY, PENDING):
        ages = [
            (sid, (now - datetime.fromisoformat(created)).total_seconds())
            for sid, state, created in unarchived
            if state == outcome and created and _readable(created)
        ]
        undated = sum(1 for _, state, c in unarchived if state == outcome and not _readable(c))
        stuck = [sid for sid, age in sorted(ages, key=lambda a: -a[1]) if age > stuck_after]
        young = len(ages) - len(stuck) + undated
        if stuck and outcome == NOT_READY:
            advice.append(
                Advice(
                    ATTENTION,
                    f"{_calls(len(stuck))} still active at Exotel more than {hours:g} h "
                    f"(daemon.stuck_after) after being created: {_named(stuck)}",
                    "look at them in Exotel's dashboard (a call left open there is never "
                    f"archived); exotel-archiver archive {' '.join(stuck[:SHOWN_STUCK])} looks "
                    "again",
                    f"exotel-archiver archive {' '.join(stuck[:SHOWN_STUCK])}",
                )
            )
        elif stuck:
            advice.append(
                Advice(
                    ATTENTION,
                    f"{_calls(len(stuck))} found by the worker and not archived more than "
                    f"{hours:g} h (daemon.stuck_after) after being created: {_named(stuck)}",
                    "check the worker (`systemctl status exotel-archiver`, `journalctl -u "
                    f"exotel-archiver`); exotel-archiver archive {' '.join(stuck[:SHOWN_STUCK])} "
                    "archives them now",
                    f"exotel-archiver archive {' '.join(stuck[:SHOWN_STUCK])}",
                )
            )
        if not young:
            continue
        if outcome == NOT_READY:
            advice.append(
                Advice(
                    NOTE,
                    f"{_calls(young)} still active when last looked at",
                    "the next run (or the running worker) looks again",
                )
            )
        elif busy is False:
            advice.append(
                Advice(
                    ATTENTION,
                    f"{_calls(young)} found by the worker, not archived yet, and no "
                    "exotel-archiver process is archiving (the writer lock is free)",
                    "start the worker again (`systemctl start exotel-archiver`, or "
                    "`exotel-archiver run`): it takes them up",
                )
            )
        else:
            advice.append(
                Advice(
                    NOTE,
                    f"{_calls(young)} found by the worker, not archived yet",
                    "the running worker takes them up (`exotel-archiver run` if none runs)",
                )
            )
    return advice


def _run_advice(
    last_run: RunRecord | None, run_state: str | None, failures: tuple[FailureReason, ...]
) -> list[Advice]:
    """What the last run's record says: a run that stopped on an error, or one that stopped
    without finishing (its row has no end, nobody holds the writer lock and its process is
    gone: killed)."""
    if last_run is None or run_state == RUNNING:
        return []
    if run_state == STOPPED:
        again = (
            "start it again (`systemctl start exotel-archiver`)"
            if last_run.command == "run"
            else f"run `exotel-archiver {last_run.command}` again"
        )
        return [
            Advice(
                ATTENTION,
                f"the last `{last_run.command}` (started {last_run.started_at}) stopped without "
                "finishing (killed, out of memory, or the host went down): no process holds the "
                "writer lock",
                f"check `journalctl -u exotel-archiver` (or its terminal) for why; {again}",
            )
        ]
    if last_run.exit_code and (last_run.exit_code != 1 or last_run.error or not failures):
        # An exit 1 with failed calls is said by their own advice; 2 and 130 always are.
        why = f": {last_run.error}" if last_run.error else ""
        return [
            Advice(
                ATTENTION,
                f"the last run ({last_run.command}, ended {last_run.ended_at}) exited "
                f"{last_run.exit_code}{why}",
                "fix what it names, then run it again",
            )
        ]
    return []


def _rescued(ledger: Ledger, settings: Settings, count: int) -> Rescued:
    """What the ledger holds of the rescued calls (no query at all when there are none: a
    ledger from before rescues may lack the columns the queries read)."""
    policy = settings.retention is not None
    if not count:
        return Rescued(0, None, (), (), 0 if policy else None, None, settings.enrich)
    waiting, since = 0, None
    first: tuple[str, ...] = ()
    failed: list[FailureReason] = []
    for reason, n, oldest, sids, detail in ledger.rescued_groups(SHOWN_SIDS):
        if reason is None:
            waiting, since, first = n, oldest, sids
        else:
            failed.append(FailureReason(reason, n, sids, detail))
    window = unbound_window(ledger) if policy else None
    unlocked, unlocked_since = (window.objects, window.oldest) if window else (None, None)
    return Rescued(waiting, since, first, tuple(failed), unlocked, unlocked_since, settings.enrich)


def _rescued_advice(r: Rescued, busy: bool | None) -> list[Advice]:
    """Rescued calls: waiting for enrichment (a note: their audio is safe), staying rescued
    under ``enrich = never`` (a note), failed enrichment (attention), objects not locked yet
    (a note; attention when ``enrich = never``, as nothing will lock them)."""
    advice: list[Advice] = []
    never = r.enrich == "never"
    total = r.waiting + sum(f.count for f in r.failures)
    if r.waiting and never:
        advice.append(
            Advice(
                NOTE,
                f"{_calls(r.waiting)} rescued (recording stored from the v1 listing) stay "
                "rescued: enrich = never, so no call.json, no app/flow/digits metadata, and a "
                "call with several recordings keeps only the one v1 lists",
                "set enrich = background (ARCHIVER_ENRICH) to complete them",
            )
        )
    elif r.waiting:
        where = (
            "start the worker (`systemctl start exotel-archiver`) or run the backfill again: "
            "it enriches them"
            if busy is False
            else "the running worker (or the next backfill) enriches them"
        )
        advice.append(
            Advice(
                NOTE,
                f"{_calls(r.waiting)} rescued (recording stored from the v1 listing), waiting "
                "for enrichment (v3 details: call.json, any recording v1 did not list), the "
                f"earliest rescued at {r.oldest_waiting_since or 'an unknown time'}",
                f"{where}, oldest first, at --enrich-share of the rate limit",
            )
        )
    for f in r.failures:
        command = f"exotel-archiver archive {' '.join(f.calls)}"
        first = f" (the first {len(f.calls)} of them; `status --json` has them)"
        example = f": {f.example}" if f.example else ""
        advice.append(
            Advice(
                ATTENTION,
                f"{_calls(f.count)} rescued, their enrichment failed ({f.reason}{example}); "
                "their recording is safe, their call.json is not stored",
                f"{command} completes them{first if f.count > len(f.calls) else ''}",
                command,
            )
        )
    if r.unlocked_objects:
        objects = f"{r.unlocked_objects} object{'s' if r.unlocked_objects != 1 else ''}"
        problem = (
            f"{objects} of rescued calls not under retention yet (their class needs the v3 "
            f"details: bound and locked at enrichment), the earliest stored at "
            f"{r.oldest_unlocked_since}"
        )
        if never:
            advice.append(
                Advice(
                    ATTENTION,
                    f"{problem}; with enrich = never nothing binds or locks them",
                    "set enrich = background (ARCHIVER_ENRICH), or make the retention rules "
                    "decide from v1 fields only (docs/compliance.md)",
                )
            )
        else:
            advice.append(
                Advice(
                    NOTE,
                    problem,
                    "enrichment binds their class and locks them"
                    + (f" ({_calls(total)} to enrich)" if total else ""),
                )
            )
    return advice


def _failures(failed: list[FailedCall]) -> tuple[FailureReason, ...]:
    """Failed calls grouped by reason, the largest group first."""
    groups: dict[str, list[FailedCall]] = {}
    for call in failed:
        groups.setdefault(call.reason or "unknown", []).append(call)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return tuple(
        FailureReason(
            reason,
            len(calls),
            tuple(c.call_sid for c in calls[:SHOWN_SIDS]),
            calls[0].detail,
        )
        for reason, calls in ordered
    )


def _readable(created: str | None) -> bool:
    if not created:
        return False
    try:
        return datetime.fromisoformat(created).tzinfo is not None
    except ValueError:
        return False


def _oldest(
    unarchived: list[tuple[str, str, str | None]], now: datetime, retention_days: float
) -> Oldest | None:
    dated = [(sid, created) for sid, _, created in unarchived if created and _readable(created)]
    if not dated:
        return None
    sid, created = min(dated, key=lambda item: datetime.fromisoformat(item[1]))
    age = oldest_age([created], now) / 86400
    return Oldest(sid, round(age, 2), round(retention_days - age, 2))
