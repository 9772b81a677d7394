"""Group commit: the ledger's writes from the event loop, committed on one writer thread.

A write (``GroupCommit.run``) is a function of the ledger (``add_object``, ``set_call`` ...) that
the writer thread runs. Every write that arrives while a transaction commits waits for the next
one, and that one takes them all: one transaction, one fsync, for the rows of a batch. Each
write is a savepoint of its batch (``Ledger.transaction``), so one that raises (a UNIQUE
conflict) is rolled back alone and fails alone. A transaction that cannot begin or commit (the
database locked past its busy timeout, a full disk) fails every write of its batch and records
none of them; the next batch starts afresh.

Each caller awaits its own future, resolved once its batch is committed and, for manifest
entries, once ``after_commit`` (the manifest append) has run for the batch: a caller that got
its row back has it durably in the ledger and its line in the manifest, in seq order (the batch's
seqs are given out in order, on the one thread). The event loop never runs a statement nor waits
for the ledger's lock: reads use the ledger's reader connection, which under WAL does not wait
for a commit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from archiver.ledger import Entry, EventRecord, Ledger, ObjectRecord

T = TypeVar("T")
LINGER = 0.5
"""Seconds the writer thread waits for another write before it ends (one is started again on
demand): under load it stays, and an idle ledger holds no thread."""
_Job = tuple[Callable[[], Any], "Future[Any]"]


class GroupCommit:
    """The writer thread of one ledger; see the module docstring."""

    def __init__(
        self, ledger: Ledger, *, after_commit: Callable[[list[Entry]], None] | None = None
    ) -> None:
        self.ledger = ledger
        self._after_commit = after_commit
        self._pending: list[_Job] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False
        """A batch is being committed (taken off ``_pending``)."""

    async def run(self, write: Callable[[], T]) -> T:
        """Run ``write`` in the next transaction; its result once that is committed."""
        return await asyncio.wrap_future(self.submit(write))

    def submit(self, write: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._wake:
            self._pending.append((write, future))
            if self._thread is None:  # started on demand; it ends after LINGER idle seconds
                self._thread = threading.Thread(
                    target=self._drain, name="ledger-writer", daemon=True
                )
                self._thread.start()
            else:
                self._wake.notify()
        return future

    def close(self) -> None:
        """Wait until every write submitted so far is done (the thread then ends by itself)."""
        with self._wake:
            thread = self._thread
            self._wake.notify()
        if thread is not None:
            while True:
                with self._wake:
                    if not self._pending and not self._busy:
                        return
                thread.join(0.01)
                if not thread.is_alive():
                    return

    def _drain(self) -> None:
        while True:
            with self._wake:
                self._busy = False
                if not self._pending:
                    self._wake.wait(LINGER)
                if not self._pending:
                    self._thread = None
                    return
                batch, self._pending = self._pending, []
                self._busy = True
            self._commit([job for job in batch if job[1].set_running_or_notify_cancel()])

    def _commit(self, batch: list[_Job]) -> None:
        done: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            with self.ledger.transaction():
                for write, future in batch:
                    try:
                        with self.ledger.transaction():  # a savepoint: rolled back alone
                            done.append((future, write(), None))
                    except Exception as exc:
                        if not self.ledger.in_transaction:
                            raise  # SQLite ended the whole transaction: the batch fails
                        done.append((future, None, exc))
        except BaseException as exc:  # not begun or not committed: nothing of it recorded
            for _write, future in batch:
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        entries = [
            r for _f, r, e in done if e is None and isinstance(r, ObjectRecord | EventRecord)
        ]
        failed: BaseException | None = None
        if entries and self._after_commit is not None:
            try:
                self._after_commit(entries)
            except Exception as exc:  # committed, its manifest line not written (a full disk)
                failed = exc
        for future, result, error in done:
            if (
                error is None
                and failed is not None
                and isinstance(result, ObjectRecord | EventRecord)
            ):
                error = failed
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
