"""What a retention job reports, in bounded memory however many objects it names.

A purge of a multi-year archive can delete millions of objects, and its report names each one.
So a report keeps in memory only its counts and the first ``SHOWN`` rows of each list (what the
terminal shows); every row is spooled to an anonymous temporary file, and the JSON report is
streamed from there (``write``). ``rows``/``failures``/``findings`` iterate the spool again.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

from archiver.files import write_atomic_with

SHOWN = 50
"""Rows of each list kept in memory for the terminal; the JSON report has them all."""


class Briefed(Protocol):
    def brief(self) -> dict[str, Any]:
        """The fields a report row names the object by."""
        ...


class Spool:
    """A list of JSON rows kept in a temporary file: appended to, counted, read again."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.first: list[dict[str, Any]] = []
        self.length = 0

    def append(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, sort_keys=True).encode() + b"\n")
        self.length += 1
        if len(self.first) < SHOWN:
            self.first.append(row)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"Spool({self.length} rows, first: {self.first[:3]!r})"

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._file.flush()
        self._file.seek(0)
        try:
            for line in self._file:
                yield json.loads(line)
        finally:
            self._file.seek(0, 2)

    def write_array(self, out: TextIO, indent: str) -> None:
        """The rows as a JSON array, one per line."""
        if not self.length:
            out.write("[]")
            return
        out.write("[")
        for n, row in enumerate(self):
            out.write(("," if n else "") + "\n" + indent + "  " + json.dumps(row, sort_keys=True))
        out.write("\n" + indent + "]")

    def close(self) -> None:
        self._file.close()


def _write(path: Path, head: dict[str, Any], lists: dict[str, Spool]) -> None:
    """``head``'s fields, then each spooled list, as one JSON object at ``path`` (atomically)."""

    def write(out: TextIO) -> None:
        out.write("{")
        parts = [(k, v) for k, v in head.items()]
        for n, (name, value) in enumerate(parts):
            out.write(("," if n else "") + f"\n  {json.dumps(name)}: {json.dumps(value)}")
        for name, spool in lists.items():
            out.write(f",\n  {json.dumps(name)}: ")
            spool.write_array(out, "  ")
        out.write("\n}\n")

    write_atomic_with(path, write)


@dataclass
class JobReport:
    """What a job found or did, per object; printed, and written as JSON."""

    job: str
    counts: Counter[str] = field(default_factory=Counter)
    rows: Spool = field(default_factory=Spool)
    failures: Spool = field(default_factory=Spool)
    seal_error: str | None = None
    """Why what the job recorded is not sealed into the destination yet (the next job seals it)."""
    unbound: dict[str, Any] | None = None
    """``plan``: the window between rescue and lock (``objects`` of rescued calls not bound to
    a class yet, the ``oldest`` rescue time among them)."""

    def add(self, item: Briefed, action: str, **extra: Any) -> None:
        self.counts[action] += 1
        self.rows.append({**item.brief(), "action": action, **extra})

    def fail(self, item: Briefed, error: str) -> None:
        self.failures.append({**item.brief(), "error": error})

    def count(self, action: str) -> int:
        return self.counts[action]

    def summary(self) -> dict[str, int]:
        return {a: self.counts[a] for a in sorted(self.counts)} | {"failed": len(self.failures)}

    def as_dict(self) -> dict[str, Any]:
        """The whole report in memory (small reports, tests); ``write`` streams it."""
        return {**self._head(), "objects": list(self.rows), "failures": list(self.failures)}

    def _head(self) -> dict[str, Any]:
        head: dict[str, Any] = {"job": self.job, "counts": self.summary()}
        if self.seal_error is not None:
            head["seal_error"] = self.seal_error
        if self.unbound is not None:
            head["unbound_rescued"] = self.unbound
        return head

    def write(self, path: Path) -> None:
        _write(path, self._head(), {"objects": self.rows, "failures": self.failures})

    def close(self) -> None:
        self.rows.close()
        self.failures.close()


@dataclass
class AuditReport:
    checked: int = 0
    receipts: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    findings: Spool = field(default_factory=Spool)
    pending: Counter[str] = field(default_factory=Counter)
    """What is not a finding yet, counted: objects of rescued calls whose class binds at
    enrichment, rescued within the grace period."""

    def add(self, problem: str, call_sid: str, key: str, detail: str) -> None:
        self.counts[problem] += 1
        self.findings.append(
            {"problem": problem, "call_sid": call_sid, "key": key, "detail": detail}
        )

    @property
    def ok(self) -> bool:
        return not len(self.findings)

    def head(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "receipts_checked": self.receipts,
            "counts": {p: self.counts[p] for p in sorted(self.counts)},
            "pending": {p: self.pending[p] for p in sorted(self.pending)},
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self.head(), "findings": list(self.findings)}

    def write(self, path: Path) -> None:
        _write(path, self.head(), {"findings": self.findings})

    def close(self) -> None:
        self.findings.close()
