"""The local ledger: the worker's memory of what it has archived, in SQLite (WAL mode).

The ledger is what makes a re-run idempotent. Two tables:

* ``calls`` — one row per call the worker has looked at, with its outcome: ``archived``,
  ``pending`` (found by the long-running worker, not yet looked at), ``not_ready`` (still
  active), ``no_recording`` or ``failed`` (with the reason). Only ``archived`` is final; the
  others are looked at again next time. A failed call also has its backoff in the
  long-running worker (``failures`` in a row, ``failed_since``, ``retry_at``: see
  ``RetryState``); any other outcome clears it.
* ``objects`` — one row per object stored in the destination: key, size, SHA-256, content type,
  signature-free source URL, times. ``seq`` orders them; the checksum manifest is these rows, in
  this order (``archiver.manifest`` writes them out).

Smaller tables keep saved listings (for resumed backfills; ``listings.listed_at`` is when the
listing began), sealed manifest segments, the long-running worker's state (``worker_state``:
e.g. the end of its last sweep) and the record of runs (``runs``: one row per ``archive``,
``backfill`` or ``run``, written as it starts and completed with its exit code and counts when
it ends; what ``status`` shows). A failed call keeps the kind of its error in ``calls.reason``
(e.g. ``recording_expired``).

Every state change is one transaction, so a crash leaves either the old state or the new one. An
object row is written only after the destination has confirmed the object (size and checksum):
the ledger never claims bytes that are not stored.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from archiver.errors import ConfigError
from archiver.files import create_private, make_dirs
from archiver.state_errors import state_problem

SCHEMA_VERSION = 1
_OBJECT_COLUMNS = (
    ("retention_class", "TEXT"),
    ("retain_until", "TEXT"),
    ("lock_mode", "TEXT"),
    ("sse", "TEXT"),
    ("sse_kms_key_id", "TEXT"),
    ("plaintext_sha256", "TEXT"),
    ("plaintext_size", "INTEGER"),
    ("encrypted_to", "TEXT"),
)
"""Columns of ``objects`` added after its first form (ALTER TABLE on an older ledger)."""

PAGE = 500
"""Rows a paged read returns at a time (and keys one ``events_of`` query takes)."""

UNFINISHED = ("pending", "not_ready", "failed")
"""Outcomes of a call looked at but not done: it must be looked at again, whatever a listing
says of it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_sid     TEXT PRIMARY KEY,
    outcome      TEXT NOT NULL,
    created_time TEXT,
    recordings   INTEGER,
    detail       TEXT,
    updated_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    call_sid     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    key          TEXT NOT NULL UNIQUE,
    location     TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    format       TEXT NOT NULL,
    source       TEXT NOT NULL,
    call_created TEXT NOT NULL,
    archived_at  TEXT NOT NULL,
    worker       TEXT NOT NULL,
    version_id   TEXT,
    segment      INTEGER,
    UNIQUE (call_sid, kind, idx)
);
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL,
    call_sid     TEXT NOT NULL,
    key          TEXT NOT NULL,
    version_id   TEXT,
    at           TEXT NOT NULL,
    actor        TEXT NOT NULL,
    details      TEXT NOT NULL,
    segment      INTEGER
);
CREATE INDEX IF NOT EXISTS objects_unsealed ON objects (seq) WHERE segment IS NULL;
CREATE INDEX IF NOT EXISTS events_unsealed ON events (seq) WHERE segment IS NULL;
CREATE INDEX IF NOT EXISTS events_key ON events (key);
CREATE INDEX IF NOT EXISTS calls_rescued ON calls (created_time, call_sid)
    WHERE outcome = 'rescued';
CREATE TABLE IF NOT EXISTS listed_calls (
    range_key     TEXT NOT NULL,
    call_sid      TEXT NOT NULL,
    created       TEXT NOT NULL,
    has_recording INTEGER NOT NULL,
    PRIMARY KEY (range_key, call_sid)
);
CREATE TABLE IF NOT EXISTS listings (
    range_key    TEXT PRIMARY KEY,
    listed_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS worker_state (
    name         TEXT PRIMARY KEY,
    value        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS encrypted_writes (
    key              TEXT NOT NULL,
    sha256           TEXT NOT NULL,
    size             INTEGER NOT NULL,
    plaintext_sha256 TEXT NOT NULL,
    plaintext_size   INTEGER NOT NULL,
    encrypted_to     TEXT NOT NULL,
    at               TEXT NOT NULL,
    PRIMARY KEY (key, sha256)
);
CREATE TABLE IF NOT EXISTS segments (
    number       INTEGER PRIMARY KEY,
    key          TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    prev_sha256  TEXT,
    first_seq    INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL
);
"""


_RUNS = """
CREATE TABLE IF NOT EXISTS runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    command      TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    ended_at     TEXT,
    exit_code    INTEGER,
    counts       TEXT NOT NULL,
    error        TEXT,
    pid          INTEGER
)"""
"""The record of runs: a row is written when a run starts (``ended_at`` and ``exit_code`` NULL,
``pid`` the process's) and completed when it ends; one left without an end whose process is
gone is a run that was killed."""

_RETRY_COLUMNS = (
    ("failures", "INTEGER NOT NULL DEFAULT 0"),
    ("failed_since", "TEXT"),
    ("retry_at", "TEXT"),
    ("reason", "TEXT"),
)
"""Columns of ``calls`` added to older ledgers: the failed-call backoff (``RetryState``), and
the kind of a failed call's error (``reason``)."""


class WriterBusy(ConfigError):
    """Another process holds the state directory's writer lock (``holder``: its pid, as it
    wrote it). A command stops on it (exit 2); the long-running worker waits for it instead
    (a backfill or a retention job ends by itself)."""

    def __init__(self, message: str, *, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


def _flock_soon(fd: int, tries: int = 10, pause: float = 0.05) -> None:
    """Take the writer lock, allowing a reader's glance a moment: ``status`` takes a shared lock
    for a few microseconds to see whether a writer runs (archiver.status)."""
    for _ in range(tries - 1):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(pause)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextmanager
def writer_lock(state_dir: Path, *, required: bool = True) -> Iterator[bool]:
    """Hold ``state_dir/writer.lock``: one archiving process per state directory.

    Two writers would both append to the manifest and seal segments of the same number; the
    second one is refused with a message naming the first (its pid). Readers (verify, export,
    reconcile) take no lock: SQLite's WAL lets them read while the writer works. The lock is an
    ``flock``: the kernel drops it when the process dies, so a crash leaves nothing stale.

    With ``required=False`` a busy lock is not an error: the block runs without it and gets
    False (retention jobs then only add ledger rows, which the running writer seals).
    """
    path = state_dir / "writer.lock"
    try:
        make_dirs(state_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {path}: {exc.strerror}; set --state-dir / ARCHIVER_STATE_DIR to a "
            "writable directory"
        ) from None
    try:
        try:
            _flock_soon(fd)
        except BlockingIOError:
            if not required:
                yield False
                return
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise WriterBusy(
                f"another exotel-archiver process (pid {holder}) is archiving with the state "
                f"directory {state_dir}: wait for it to end or stop it (e.g. `systemctl stop "
                "exotel-archiver`) first; one state directory takes one archiving process",
                holder=holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)


def utc_now() -> str:
    return utc_text(datetime.now(UTC))


def utc_text(when: datetime) -> str:
    """An aware time as the ledger keeps times: UTC, milliseconds, ``Z``."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ObjectRecord:
    """One stored object, as the ledger and the manifest know it."""

    call_sid: str
    kind: str
    idx: int
    key: str
    location: str
    size: int
    sha256: str
    content_type: str
    format: str
    source: str
    call_created: str
    archived_at: str
    worker: str
    version_id: str | None = None
    """The object's version in a versioned bucket, else None."""
    retention_class: str | None = None
    """The compliance retention class bound at archive time (None: no retention rules)."""
    retain_until: str | None = None
    """Until when the class keeps the object (UTC, ISO 8601)."""
    lock_mode: str | None = None
    """The Object Lock mode it was written with: COMPLIANCE, GOVERNANCE or None."""
    sse: str | None = None
    """The server-side encryption the store confirmed (``AES256``, ``aws:kms``), else None."""
    sse_kms_key_id: str | None = None
    """The KMS key the store confirmed (``aws:kms``), else None."""
    plaintext_sha256: str | None = None
    """Client-side encrypted (``encrypted_to`` set): ``size`` and ``sha256`` are the stored
    ciphertext's, these the recording's own bytes'."""
    plaintext_size: int | None = None
    encrypted_to: str | None = None
    """The fingerprint of the public key the object was encrypted to, else None."""
    seq: int | None = None
    segment: int | None = None
    """Number of the sealed manifest segment in the destination that holds this entry."""

    @property
    def content_sha256(self) -> str:
        """The SHA-256 of the recording's own bytes: the plaintext's when it is stored
        encrypted, else the stored bytes'."""
        return self.plaintext_sha256 or self.sha256

    @property
    def content_size(self) -> int:
        return self.plaintext_size if self.plaintext_size is not None else self.size


@dataclass(frozen=True)
class EventRecord:
    """Something done to stored objects, kept in the manifest chain beside them: a legal hold
    or its release, a retention change, an erasure receipt. ``details`` is a JSON object."""

    kind: str
    call_sid: str
    key: str
    at: str
    actor: str
    details: str = "{}"
    version_id: str | None = None
    seq: int | None = None
    segment: int | None = None


Entry = ObjectRecord | EventRecord
"""A line of the manifest: an object, or an event about one."""


@dataclass(frozen=True)
class EncryptedWrite:
    """A ciphertext about to be stored at ``key`` (``archiver.encryption``): committed before
    the store can complete it, so an object found there later is recognised as this one."""

    key: str
    sha256: str
    size: int
    plaintext_sha256: str
    plaintext_size: int
    encrypted_to: str
    at: str


@dataclass(frozen=True)
class RetryState:
    """A call's backoff after failures, as the long-running worker keeps it (``defer_failed``):
    how many times in a row it gave up on the call for now, since when (UTC, ISO 8601), and
    when it may look at it again. ``(0, None, None)`` once the call is anything but failed."""

    failures: int
    failed_since: str | None
    retry_at: str | None


@dataclass(frozen=True)
class SavedListing:
    """A v1 listing kept for a backfill range: when it began, and what it listed."""

    began: datetime
    calls: list[tuple[str, str, bool]]
    """(call SID, created time ISO 8601, whether the listing showed a recording)."""


@dataclass(frozen=True)
class SegmentRecord:
    """A sealed manifest segment stored in the destination."""

    number: int
    key: str
    sha256: str
    prev_sha256: str | None
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class RunRecord:
    """One ``archive``, ``backfill`` or ``run``: when, its exit code, its counts (calls per
    outcome, API requests) and, if it stopped on an error, that error's message. ``ended_at``
    and ``exit_code`` are None while it runs — or after it was killed (``status`` tells the two
    apart by the writer lock)."""

    command: str
    started_at: str
    ended_at: str | None
    exit_code: int | None
    counts: dict[str, int]
    error: str | None = None
    pid: int | None = None
    """The process that ran it (recorded at its start; None in older rows)."""


@dataclass(frozen=True)
class FailedCall:
    """A call whose last outcome is ``failed``: the kind of error (None in rows written before
    reasons were kept), its message, and when the ledger was last told."""

    call_sid: str
    reason: str | None
    detail: str | None
    updated_at: str


class Ledger:
    """The ledger at ``state_dir/ledger.sqlite3``. Single writer: one worker per state dir.

    ``readonly=True`` is for readers beside the writer (``verify``): the file must exist, nothing
    is created or upgraded, no write lock is taken, and every write raises."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if readonly:
            self._open_readonly(path)
            return
        try:
            # Created 0600 before SQLite opens it: SQLite gives the -wal, -shm and -journal files
            # the main file's mode, and would create that one 0644 under the usual umask.
            create_private(path)
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            connection.row_factory = sqlite3.Row
            self._db = _Serialized(connection)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
        except (OSError, sqlite3.Error) as exc:
            if not state_problem(exc, path.parent).config:
                raise  # a full disk, an I/O error: not a setting to change (exit 1)
            raise ConfigError(
                f"cannot open the ledger at {path}: {exc}; set --state-dir / ARCHIVER_STATE_DIR "
                "to a writable directory"
            ) from None
        self._check_version()
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            have = {str(r["name"]) for r in self._db.execute("PRAGMA table_info(objects)")}
            for column, kind in _OBJECT_COLUMNS:
                if column not in have:  # a ledger from before retention classes, encryption
                    self._db.execute(f"ALTER TABLE objects ADD COLUMN {column} {kind}")
            have = {str(r["name"]) for r in self._db.execute("PRAGMA table_info(calls)")}
            for column, kind in _RETRY_COLUMNS:
                if column not in have:  # a ledger from before failed calls' backoff, reasons
                    self._db.execute(f"ALTER TABLE calls ADD COLUMN {column} {kind}")
            self._create_runs()
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # Reads get a connection of their own: under WAL they see every committed write and
        # never wait for a commit's fsync on the writing connection.
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        reader.row_factory = sqlite3.Row
        reader.execute("PRAGMA busy_timeout=5000")
        self._read = _Serialized(reader)

    def _create_runs(self) -> None:
        """The ``runs`` table; in a ledger from before runs were recorded at their start (its
        ``ended_at`` NOT NULL, no ``pid``), rebuilt with the rows it has (within the schema
        transaction)."""
        self._db.execute(_RUNS)
        columns = {str(r["name"]): r for r in self._db.execute("PRAGMA table_info(runs)")}
        if not columns["ended_at"]["notnull"] and "pid" in columns:
            return
        self._db.execute("ALTER TABLE runs RENAME TO runs_before_starts")
        self._db.execute(_RUNS)
        self._db.execute(
            "INSERT INTO runs (id, command, started_at, ended_at, exit_code, counts, error) "
            "SELECT id, command, started_at, ended_at, exit_code, counts, error "
            "FROM runs_before_starts"
        )
        self._db.execute("DROP TABLE runs_before_starts")

    def _open_readonly(self, path: Path) -> None:
        """For readers beside a running worker (``verify``): one ``mode=ro`` connection, no
        schema created or upgraded, no write lock taken; every write raises."""
        try:
            connection = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA busy_timeout=5000")
            tables = {
                str(r[0])
                for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot read the ledger at {path}: {exc}") from None
        if not {"objects", "events", "segments"} <= tables:
            connection.close()
            raise ConfigError(
                f"{path} is not a complete exotel-archiver ledger (tables missing): move it away, "
                "or point --state-dir / ARCHIVER_STATE_DIR at the worker's state directory"
            )
        self._db = self._read = _Serialized(connection)
        self._check_version()

    def _check_version(self) -> None:
        version = self._db.execute("PRAGMA user_version").rows[0][0]
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"the ledger at {self.path} was written by a newer exotel-archiver (schema "
                f"{version}); upgrade exotel-archiver"
            )

    def close(self) -> None:
        self._read.close()
        if self._db is not self._read:
            self._db.close()

    def _transaction(self) -> _Tx:
        return _Tx(self._db)

    def transaction(self) -> _Tx:
        """One transaction for several writes (``archiver.group_commit``): each write method
        called inside it is a savepoint, and the block commits them all at once."""
        return _Tx(self._db)

    @property
    def in_transaction(self) -> bool:
        """Whether a ``transaction()`` is still open (SQLite ends one itself on some errors)."""
        return self._db.in_transaction

    @property
    def commits(self) -> int:
        """Transactions this ledger has committed since it was opened."""
        return self._db.commits

    # --- calls ---------------------------------------------------------------------------------

    def call_outcome(self, call_sid: str) -> str | None:
        row = self._read.execute(
            "SELECT outcome FROM calls WHERE call_sid = ?", (call_sid,)
        ).fetchone()
        return None if row is None else str(row["outcome"])

    def call_created(self, call_sid: str) -> str | None:
        """The call's creation time as the ledger has it (ISO 8601), or None."""
        row = self._read.execute(
            "SELECT created_time FROM calls WHERE call_sid = ?", (call_sid,)
        ).fetchone()
        return None if row is None or row["created_time"] is None else str(row["created_time"])

    def call_detail(self, call_sid: str) -> str | None:
        """What the last run noted about the call (a failure's reason, why not ready), or None."""
        row = self._read.execute(
            "SELECT detail FROM calls WHERE call_sid = ?", (call_sid,)
        ).fetchone()
        return None if row is None or row["detail"] is None else str(row["detail"])

    def set_call(
        self,
        call_sid: str,
        outcome: str,
        *,
        created_time: str | None = None,
        recordings: int | None = None,
        detail: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Record the call's outcome; ``reason`` is a failed call's kind of error."""
        with self._transaction():
            self._db.execute(
                """INSERT INTO calls
                     (call_sid, outcome, created_time, recordings, detail, updated_at, reason)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (call_sid) DO UPDATE SET
                     outcome = excluded.outcome,
                     created_time = COALESCE(excluded.created_time, calls.created_time),
                     recordings = COALESCE(excluded.recordings, calls.recordings),
                     detail = excluded.detail,
                     updated_at = excluded.updated_at,
                     failures = CASE WHEN excluded.outcome = 'failed'
                                THEN calls.failures ELSE 0 END,
                     failed_since = CASE WHEN excluded.outcome = 'failed'
                                    THEN calls.failed_since END,
                     retry_at = CASE WHEN excluded.outcome = 'failed' THEN calls.retry_at END,
                     reason = excluded.reason""",
                (call_sid, outcome, created_time, recordings, detail, utc_now(), reason),
            )

    def retry_state(self, call_sid: str) -> RetryState | None:
        """The call's backoff after failures (``RetryState``), or None if the ledger does not
        know the call."""
        row = self._read.execute(
            "SELECT failures, failed_since, retry_at FROM calls WHERE call_sid = ?", (call_sid,)
        ).fetchone()
        if row is None:
            return None
        return RetryState(int(row["failures"]), row["failed_since"], row["retry_at"])

    def defer_failed(self, call_sid: str, retry_at: datetime, *, now: datetime) -> RetryState:
        """Note that the worker gave up on the failed call ``call_sid`` for now and may look at
        it again at ``retry_at``: one more failure in a row (the first one dates
        ``failed_since``). Nothing happens unless the call is failed in the ledger."""
        with self._transaction():
            self._db.execute(
                """UPDATE calls SET failures = failures + 1,
                     failed_since = COALESCE(failed_since, ?), retry_at = ?
                   WHERE call_sid = ? AND outcome = 'failed'""",
                (utc_text(now), utc_text(retry_at), call_sid),
            )
        return self.retry_state(call_sid) or RetryState(0, None, None)

    def rescued_calls(
        self, limit: int, *, after: tuple[str, str] | None = None
    ) -> list[tuple[str, str]]:
        """Up to ``limit`` calls still ``rescued`` (their v3 details not fetched yet) as
        (creation time, call SID), the oldest first, after ``after`` (one of these pairs).
        An index of the rescued calls alone keeps each read short, however many there are."""
        created, sid = after if after is not None else ("", "")
        rows = self._read.execute(
            "SELECT COALESCE(created_time, '') AS created, call_sid FROM calls "
            "WHERE outcome = 'rescued' AND (COALESCE(created_time, ''), call_sid) > (?, ?) "
            "ORDER BY created_time, call_sid LIMIT ?",
            (created, sid, limit),
        )
        return [(str(r["created"]), str(r["call_sid"])) for r in rows]

    def calls_with_outcome(self, outcome: str) -> list[tuple[str, str | None]]:
        """(call SID, created time) of every call whose last outcome is ``outcome``."""
        rows = self._read.execute(
            "SELECT call_sid, created_time FROM calls WHERE outcome = ?", (outcome,)
        )
        return [(str(r["call_sid"]), r["created_time"]) for r in rows]

    def track_call(self, call_sid: str, *, created_time: str | None = None) -> bool:
        """Note a call found by the worker as ``pending`` unless the ledger knows it already.

        A pending call survives a restart: the worker takes it up again at its next start.
        Returns whether it was new.
        """
        with self._transaction():
            cursor = self._db.execute(
                """INSERT INTO calls (call_sid, outcome, created_time, updated_at)
                   VALUES (?, 'pending', ?, ?) ON CONFLICT (call_sid) DO NOTHING""",
                (call_sid, created_time, utc_now()),
            )
        return cursor.rowcount > 0

    def unarchived(self) -> list[tuple[str, str, str | None]]:
        """(call SID, outcome, created time) of every call that is pending, not ready or failed."""
        rows = self._read.execute(
            "SELECT call_sid, outcome, created_time FROM calls "
            "WHERE outcome IN (?, ?, ?) ORDER BY updated_at",
            UNFINISHED,
        )
        return [(str(r["call_sid"]), str(r["outcome"]), r["created_time"]) for r in rows]

    def state(self, name: str) -> str | None:
        """A value the long-running worker keeps between runs (e.g. the last sweep's end)."""
        row = self._read.execute(
            "SELECT value FROM worker_state WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else str(row["value"])

    def set_state(self, name: str, value: str) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO worker_state (name, value) VALUES (?, ?)", (name, value)
            )

    def set_states(self, values: dict[str, str]) -> None:
        """Several ``set_state`` values in one transaction: all or none."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO worker_state (name, value) VALUES (?, ?)",
                list(values.items()),
            )

    def listing(self, range_key: str) -> SavedListing | None:
        """The listing saved for ``range_key``, or None. Whether it is complete for the use at
        hand is the caller's to decide, from when it began (``archiver.backfill``)."""
        row = self._read.execute(
            "SELECT listed_at FROM listings WHERE range_key = ?", (range_key,)
        ).fetchone()
        if row is None:
            return None
        rows = self._read.execute(
            "SELECT call_sid, created, has_recording FROM listed_calls WHERE range_key = ? "
            "ORDER BY created, call_sid",
            (range_key,),
        )
        return SavedListing(
            began=datetime.fromisoformat(str(row["listed_at"])),
            calls=[(str(r["call_sid"]), str(r["created"]), bool(r["has_recording"])) for r in rows],
        )

    def save_listing(
        self, range_key: str, calls: list[tuple[str, str, bool]], *, began: datetime
    ) -> None:
        """Save a complete listing (all or nothing) so a resumed backfill need not list again.

        ``began`` is when the listing began (before its first request), not when it ended: a
        call created while it ran may be missing from it. It is kept as ``listed_at``.
        """
        with self._transaction():
            self._db.execute("DELETE FROM listed_calls WHERE range_key = ?", (range_key,))
            self._db.executemany(
                "INSERT OR REPLACE INTO listed_calls (range_key, call_sid, created, has_recording) "
                "VALUES (?, ?, ?, ?)",
                [(range_key, sid, created, int(has)) for sid, created, has in calls],
            )
            self._db.execute(
                "INSERT OR REPLACE INTO listings (range_key, listed_at) VALUES (?, ?)",
                (range_key, utc_text(began)),
            )

    def failed_calls(self) -> list[FailedCall]:
        """Every call whose last outcome is ``failed``, the longest failed first."""
        rows = self._read.execute(
            "SELECT * FROM calls WHERE outcome = 'failed' ORDER BY updated_at, call_sid"
        )
        return [
            FailedCall(
                str(r["call_sid"]),
                dict(r).get("reason"),  # None in a ledger from before reasons
                r["detail"],
                str(r["updated_at"]),
            )
            for r in rows
        ]

    def unarchived_created(self) -> list[tuple[str, str, str | None]]:
        """(call SID, outcome, created time) of every call pending, not ready or failed; a call
        whose row has no created time (a failure before its details were fetched) takes the one
        a saved backfill listing has of it, if any."""
        rows = self._read.execute(
            "SELECT c.call_sid, c.outcome, COALESCE(c.created_time, (SELECT l.created FROM "
            "listed_calls l WHERE l.call_sid = c.call_sid LIMIT 1)) AS created FROM calls c "
            "WHERE c.outcome IN (?, ?, ?)",
            UNFINISHED,
        )
        return [(str(r["call_sid"]), str(r["outcome"]), r["created"]) for r in rows]

    def start_run(self, command: str, started_at: str, pid: int) -> int:
        """Record a run of process ``pid`` as it starts (no end, no exit code yet); returns its
        id for ``end_run``. A run killed before its end keeps this row as it is."""
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO runs (command, started_at, counts, pid) VALUES (?, ?, '{}', ?)",
                (command, started_at, pid),
            )
        return int(cursor.lastrowid or 0)

    def end_run(self, run_id: int | None, run: RunRecord) -> None:
        """Complete the row ``start_run`` wrote (or record the whole run, when it was not
        recorded at its start: the ledger was created by the run itself)."""
        values = (
            run.command,
            run.started_at,
            run.ended_at,
            run.exit_code,
            json.dumps(run.counts, sort_keys=True),
            run.error,
        )
        with self._transaction():
            if run_id is not None:
                cursor = self._db.execute(
                    "UPDATE runs SET command = ?, started_at = ?, ended_at = ?, exit_code = ?, "
                    "counts = ?, error = ? WHERE id = ?",
                    (*values, run_id),
                )
                if cursor.rowcount:
                    return
            self._db.execute(
                "INSERT INTO runs (command, started_at, ended_at, exit_code, counts, error, pid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*values, run.pid),
            )

    def drop_run(self, run_id: int) -> None:
        """Forget the row of a run that was refused (another process held the writer lock):
        it did nothing."""
        with self._transaction():
            self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def add_run(self, run: RunRecord) -> None:
        """Record a run that ended (``status`` shows the last one)."""
        self.end_run(None, run)

    def last_run(self) -> RunRecord | None:
        """The run recorded last (perhaps still running, or killed: no end), or None (none
        yet, or a ledger from before runs were)."""
        try:
            row = self._read.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        except sqlite3.OperationalError:  # read-only, a ledger older than the runs table
            return None
        if row is None:
            return None
        counts = json.loads(str(row["counts"]))
        return RunRecord(
            str(row["command"]),
            str(row["started_at"]),
            None if row["ended_at"] is None else str(row["ended_at"]),
            None if row["exit_code"] is None else int(row["exit_code"]),
            {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {},
            row["error"],
            dict(row).get("pid"),  # None in a ledger from before runs were recorded at start
        )

    def call_counts(self) -> dict[str, int]:
        rows = self._read.execute("SELECT outcome, COUNT(*) AS n FROM calls GROUP BY outcome")
        return {str(r["outcome"]): int(r["n"]) for r in rows}

    # --- objects -------------------------------------------------------------------------------

    def object_for(self, call_sid: str, kind: str, idx: int) -> ObjectRecord | None:
        row = self._read.execute(
            "SELECT * FROM objects WHERE call_sid = ? AND kind = ? AND idx = ?",
            (call_sid, kind, idx),
        ).fetchone()
        return None if row is None else ObjectRecord(**dict(row))

    def has_entries(self) -> bool:
        """Whether the ledger holds any manifest entry or sealed segment."""
        return bool(
            self._read.execute(
                "SELECT EXISTS (SELECT 1 FROM objects) OR EXISTS (SELECT 1 FROM events) "
                "OR EXISTS (SELECT 1 FROM segments)"
            ).rows[0][0]
        )

    def first_and_last_objects(self) -> list[ObjectRecord]:
        """The oldest and the newest object row (none, one or two)."""
        rows = self._read.execute(
            "SELECT * FROM objects WHERE seq IN ((SELECT MIN(seq) FROM objects), "
            "(SELECT MAX(seq) FROM objects)) ORDER BY seq"
        )
        return [ObjectRecord(**dict(r)) for r in rows]

    def add_object(self, record: ObjectRecord) -> ObjectRecord:
        """Record a stored object; returns it with its manifest sequence number."""
        fields = {k: v for k, v in record.__dict__.items() if k not in ("seq", "segment")}
        with self._transaction():
            seq = self._next_seq()
            self._insert("objects", {**fields, "seq": seq})
            # Recorded, encrypted or not (a plaintext adopted): the key's intents are spent.
            self._db.execute("DELETE FROM encrypted_writes WHERE key = ?", (record.key,))
        return ObjectRecord(**fields, seq=seq)

    def add_encrypted_write(self, write: EncryptedWrite) -> None:
        """Record a ciphertext about to be stored (``archiver.encryption``)."""
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO encrypted_writes (key, sha256, size, plaintext_sha256, "
                "plaintext_size, encrypted_to, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    write.key,
                    write.sha256,
                    write.size,
                    write.plaintext_sha256,
                    write.plaintext_size,
                    write.encrypted_to,
                    write.at,
                ),
            )

    def drop_encrypted_writes(self, key: str, *, keep: str | None = None) -> None:
        """Forget the ciphertexts intended for ``key`` (but the one whose SHA-256 is ``keep``):
        the object at the key holds it for good, write-once, so no other can land there."""
        with self._transaction():
            self._db.execute(
                "DELETE FROM encrypted_writes WHERE key = ? AND sha256 IS NOT ?", (key, keep)
            )

    def encrypted_writes(self, key: str) -> list[EncryptedWrite]:
        """The ciphertexts recorded as about to be stored at ``key`` and not recorded since."""
        rows = self._read.execute("SELECT * FROM encrypted_writes WHERE key = ?", (key,))
        return [EncryptedWrite(**dict(r)) for r in rows]

    def add_event(self, event: EventRecord) -> EventRecord:
        """Record an event about stored objects; returns it with its manifest sequence number."""
        fields = {k: v for k, v in event.__dict__.items() if k not in ("seq", "segment")}
        with self._transaction():
            seq = self._next_seq()
            self._insert("events", {**fields, "seq": seq})
        return EventRecord(**fields, seq=seq)

    def _next_seq(self) -> int:
        """Objects and events share one gap-free sequence: the manifest's order."""
        row = self._db.execute(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM objects), 0), "
            "COALESCE((SELECT MAX(seq) FROM events), 0))"
        ).rows[0]
        return int(row[0]) + 1

    def _insert(self, table: str, fields: dict[str, object]) -> int | None:
        columns, marks = ", ".join(fields), ", ".join("?" * len(fields))
        cursor = self._db.execute(
            f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(fields.values())
        )
        return cursor.lastrowid

    def _entries(
        self, where: str, args: tuple[object, ...] = (), limit: int | None = None
    ) -> list[Entry]:
        """Object and event rows matching ``where``, in ``seq`` order (the first ``limit``)."""
        tail, more = ("", ()) if limit is None else (" ORDER BY seq LIMIT ?", (limit,))
        objects: list[Entry] = [
            ObjectRecord(**dict(r))
            for r in self._read.execute(f"SELECT * FROM objects WHERE {where}{tail}", args + more)
        ]
        events: list[Entry] = [
            EventRecord(**dict(r))
            for r in self._read.execute(f"SELECT * FROM events WHERE {where}{tail}", args + more)
        ]
        return sorted(objects + events, key=lambda e: e.seq or 0)[:limit]

    def entries_after(self, seq: int, limit: int | None = None) -> list[Entry]:
        """Manifest entries (objects and events) with a sequence number past ``seq``, in order
        (the first ``limit`` of them)."""
        return self._entries("seq > ?", (seq,), limit)

    def unsealed(self, limit: int | None = None) -> list[Entry]:
        """Manifest entries not yet in a sealed segment, in order (the first ``limit``)."""
        return self._entries("segment IS NULL", (), limit)

    def unsealed_count(self) -> int:
        return int(
            self._read.execute(
                "SELECT (SELECT COUNT(*) FROM objects WHERE segment IS NULL) + "
                "(SELECT COUNT(*) FROM events WHERE segment IS NULL)"
            ).rows[0][0]
        )

    def events(self, call_sid: str | None = None) -> list[EventRecord]:
        """Events, in order; those of one call if ``call_sid`` is given."""
        if call_sid is None:
            rows = self._read.execute("SELECT * FROM events ORDER BY seq")
        else:
            rows = self._read.execute(
                "SELECT * FROM events WHERE call_sid = ? ORDER BY seq", (call_sid,)
            )
        return [EventRecord(**dict(r)) for r in rows]

    def object_pages(self, size: int = PAGE) -> Iterator[list[ObjectRecord]]:
        """Every object row in order, ``size`` at a time: what a job over the whole archive
        reads, in bounded memory (rows recorded meanwhile are included when their turn comes)."""
        for rows in self._pages("objects", "1 = 1", (), size):
            yield [ObjectRecord(**dict(r)) for r in rows]

    def event_pages(self, kind: str, size: int = PAGE) -> Iterator[list[EventRecord]]:
        """The events of one ``kind`` in order, ``size`` at a time."""
        for rows in self._pages("events", "kind = ?", (kind,), size):
            yield [EventRecord(**dict(r)) for r in rows]

    def _pages(
        self, table: str, where: str, args: tuple[object, ...], size: int
    ) -> Iterator[list[sqlite3.Row]]:
        after = 0
        while rows := self._read.execute(
            f"SELECT * FROM {table} WHERE {where} AND seq > ? ORDER BY seq LIMIT ?",
            (*args, after, size),
        ).rows:
            yield rows
            after = int(rows[-1]["seq"])

    def events_of(self, keys: Sequence[str], *, before: int | None = None) -> list[EventRecord]:
        """The events about these keys (at most ``PAGE`` of them), in order; only those recorded
        before the entry ``before`` if it is given."""
        if len(keys) > PAGE:
            raise ValueError(f"events_of takes at most {PAGE} keys")
        if not keys:
            return []
        marks = ", ".join("?" * len(keys))
        rows = self._read.execute(
            f"SELECT * FROM events WHERE key IN ({marks}) AND seq < ? ORDER BY seq",
            (*keys, before if before is not None else 2**62),
        )
        return [EventRecord(**dict(r)) for r in rows]

    def all_objects(self) -> list[ObjectRecord]:
        return [
            ObjectRecord(**dict(r))
            for r in self._read.execute("SELECT * FROM objects ORDER BY seq")
        ]

    def snapshot(self) -> tuple[list[SegmentRecord], list[Entry]]:
        """The sealed segments and every entry, read in one transaction: a consistent view even
        while a worker records and seals (what ``verify`` compares the destination with)."""
        with self._read.lock:
            self._read.execute("BEGIN")
            try:
                return self.segments(), self._entries("1 = 1")
            finally:
                self._read.execute("COMMIT")

    def object_at(self, key: str) -> ObjectRecord | None:
        row = self._read.execute("SELECT * FROM objects WHERE key = ?", (key,)).fetchone()
        return None if row is None else ObjectRecord(**dict(row))

    def segments(self) -> list[SegmentRecord]:
        rows = self._read.execute("SELECT * FROM segments ORDER BY number")
        return [SegmentRecord(**dict(r)) for r in rows]

    def add_segment(self, segment: SegmentRecord) -> None:
        """Record a sealed segment and mark the entries it holds, in one transaction."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO segments (number, key, sha256, prev_sha256, first_seq, last_seq) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    segment.number,
                    segment.key,
                    segment.sha256,
                    segment.prev_sha256,
                    segment.first_seq,
                    segment.last_seq,
                ),
            )
            for table in ("objects", "events"):
                self._db.execute(
                    f"UPDATE {table} SET segment = ? WHERE seq BETWEEN ? AND ?",
                    (segment.number, segment.first_seq, segment.last_seq),
                )

    def restore(
        self,
        records: list[Entry],
        segments: list[SegmentRecord],
        calls: Sequence[tuple[str, str, str, int]] = (),
    ) -> None:
        """Fill an empty ledger from the destination's segments (``manifest rebuild``), with
        the outcome of every call they name: (call SID, outcome, created time, recordings)."""
        with self._transaction():
            if self._db.execute("SELECT COUNT(*) FROM objects").rows[0][0]:
                raise ConfigError(
                    f"the ledger at {self.path} is not empty: rebuild into a new --state-dir"
                )
            for record in records:
                table = "objects" if isinstance(record, ObjectRecord) else "events"
                self._insert(table, dict(record.__dict__))
            for segment in segments:
                self._insert("segments", dict(segment.__dict__))
            now = utc_now()
            self._db.executemany(
                """INSERT INTO calls (call_sid, outcome, created_time, recordings, updated_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (call_sid) DO UPDATE SET outcome = excluded.outcome,
                     created_time = excluded.created_time, recordings = excluded.recordings,
                     updated_at = excluded.updated_at""",
                [(sid, outcome, created, n, now) for sid, outcome, created, n in calls],
            )

    def entries_between(self, first: int, last: int) -> list[Entry]:
        """Manifest entries with ``first <= seq <= last``, in order (a sealed segment's)."""
        return self._entries("seq BETWEEN ? AND ?", (first, last))

    def objects_of(self, call_sid: str) -> list[ObjectRecord]:
        rows = self._read.execute(
            "SELECT * FROM objects WHERE call_sid = ? ORDER BY seq", (call_sid,)
        )
        return [ObjectRecord(**dict(r)) for r in rows]

    # --- rescued calls (read only: what ``status`` shows of them) -------------------------------

    def rescued_groups(
        self, shown: int
    ) -> list[tuple[str | None, int, str | None, tuple[str, ...], str | None]]:
        """Calls whose last outcome is ``rescued``, grouped by ``reason`` (None: waiting for
        enrichment; else the kind of error its last enrichment attempt failed with), the
        largest group first: (reason, calls, the earliest rescue time — a call's first
        ``archived_at`` —, the first ``shown`` call SIDs, earliest rescued first, and the
        ``detail`` of the first of them)."""
        rescued = (
            "WITH r AS (SELECT c.call_sid, c.reason, c.detail, (SELECT MIN(o.archived_at) "
            "FROM objects o WHERE o.call_sid = c.call_sid) AS rescued_at "
            "FROM calls c WHERE c.outcome = 'rescued') "
        )
        groups = self._read.execute(
            rescued + "SELECT reason, COUNT(*) AS n, MIN(rescued_at) AS oldest FROM r "
            "GROUP BY reason ORDER BY n DESC, reason"
        ).rows
        out: list[tuple[str | None, int, str | None, tuple[str, ...], str | None]] = []
        for group in groups:
            first = self._read.execute(
                rescued + "SELECT call_sid, detail FROM r WHERE reason IS ? "
                "ORDER BY rescued_at IS NULL, rescued_at, call_sid LIMIT ?",
                (group["reason"], shown),
            ).rows
            out.append(
                (
                    group["reason"],
                    int(group["n"]),
                    group["oldest"],
                    tuple(str(r["call_sid"]) for r in first),
                    first[0]["detail"] if first else None,
                )
            )
        return out

    def unbound_objects(self, outcome: str, bound_kind: str) -> tuple[int, str | None]:
        """Read-only: how many objects of calls with ``outcome`` have no retention class, in
        their row or in a ``bound_kind`` event, and the oldest ``archived_at`` among them
        (``archiver.retention.binding.unbound_window``: rescued calls not yet bound)."""
        row = self._read.execute(
            "SELECT COUNT(*), MIN(o.archived_at) FROM calls c JOIN objects o "
            "ON o.call_sid = c.call_sid WHERE c.outcome = ? AND o.retention_class IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.key = o.key AND e.kind = ?)",
            (outcome, bound_kind),
        ).rows[0]
        return int(row[0]), None if row[1] is None else str(row[1])


class _Result:
    """A statement's rows, fetched while the connection was held."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.rows: list[sqlite3.Row] = cursor.fetchall()
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid

    def fetchone(self) -> sqlite3.Row | None:
        return self.rows[0] if self.rows else None

    def __iter__(self) -> Iterator[sqlite3.Row]:
        return iter(self.rows)


class _Serialized:
    """One SQLite connection used from the event loop's thread and from the thread that commits
    objects (``Recorder``): every statement, and every transaction as a whole, holds one lock."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self.lock = threading.RLock()
        self.depth = 0
        """Transactions open (``_Tx``, with the lock held): past the first, savepoints."""
        self.commits = 0
        """Transactions committed on this connection."""

    @property
    def in_transaction(self) -> bool:
        return self._connection.in_transaction

    def execute(self, sql: str, args: tuple[object, ...] | list[object] = ()) -> _Result:
        with self.lock:
            return _Result(self._connection.execute(sql, args))

    def executemany(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        with self.lock:
            self._connection.executemany(sql, rows)

    def close(self) -> None:
        with self.lock:
            self._connection.close()


class _Tx:
    """``with`` block = one IMMEDIATE transaction, committed on success, rolled back on error;
    the connection is held for the whole of it. Inside another one (the group commit's batch,
    ``archiver.group_commit``) it is a savepoint: rolled back alone on error, committed with
    the batch."""

    def __init__(self, db: _Serialized) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE" if self._db.depth == 0 else "SAVEPOINT nested")
            self._db.depth += 1
        except BaseException:
            self._db.lock.release()
            raise

    def __exit__(self, et: object, e: object, tb: object) -> None:
        try:
            self._db.depth -= 1
            if self._db.depth:
                if not self._db.in_transaction:
                    return  # SQLite rolled the whole transaction back (a full disk): raise it
                if et is not None:
                    self._db.execute("ROLLBACK TO nested")
                self._db.execute("RELEASE nested")
                return
            try:
                self._db.execute("COMMIT" if et is None else "ROLLBACK")
            except BaseException:
                if self._db.in_transaction:  # a COMMIT that failed (a full disk) may leave it
                    self._db.execute("ROLLBACK")
                raise
            if et is None:
                self._db.commits += 1
        finally:
            self._db.lock.release()
