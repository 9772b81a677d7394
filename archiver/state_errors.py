"""The worker's own files failing: its state directory, ledger, manifest, spool files.

An ``OSError`` or ``sqlite3.Error`` there is not about one call: every call would fail alike,
so ``archive`` and ``run`` stop on it (``archiver.archive`` re-raises it). ``state_problem``
turns it into the line an operator reads — the path, the problem, the fix — and says what kind
of problem it is, which decides the exit code:

* **space or I/O** (ENOSPC, EDQUOT, EIO, SQLITE_FULL; an SQLite "disk I/O error" while the file
  system has next to no space left, as SQLite reports a full disk under its ``-shm`` file):
  exit 1. Not a configuration error: under systemd the worker is restarted after
  ``RestartSec``, and goes on once space is freed;
* **the directory unusable** (read-only, permission denied, a file in its place, removed or
  moved while in use):
  exit 2, a configuration error: starting again would fail the same way (and a state directory
  removed under a running worker must not be silently made again, empty).

Nothing is recorded for the call in progress when this happens: the ledger's transaction is
rolled back, and a call is marked archived only after its objects are confirmed, so the next
start does it again.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

LOW_SPACE = 256 * 1024
"""Bytes free under which an I/O error of SQLite is taken for a full disk."""

_SPACE = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS,)
_DENIED = (errno.EACCES, errno.EPERM)
_GONE = (errno.ENOENT, errno.ESTALE)
_BLOCKED = (errno.EEXIST, errno.ENOTDIR)  # a file stands where a directory should be


@dataclass(frozen=True)
class StateProblem:
    """What went wrong with the worker's own files, as one line."""

    message: str
    config: bool
    """True: the state directory is unusable as configured (exit 2); False: space or I/O,
    which may pass (exit 1)."""


def state_problem(exc: OSError | sqlite3.Error, state_dir: Path | None) -> StateProblem:
    """The line for ``exc``, an error of the files in ``state_dir`` (None: not known)."""
    ledger = isinstance(exc, sqlite3.Error)
    where = _where(exc, state_dir)
    kind = _kind(exc, state_dir)
    if kind == "space":
        return StateProblem(
            f"{where}: no space left on the device — free space there (or give the state "
            "directory more room) and start again; nothing was recorded for the call in "
            "progress: it is done again at the next start",
            config=False,
        )
    if kind == "io":
        return StateProblem(
            f"{where}: input/output error — check the disk (dmesg, SMART) and start again",
            config=False,
        )
    fix = {
        "read_only": "the file system is read-only: remount it read-write, or set --state-dir / "
        "ARCHIVER_STATE_DIR to a writable directory",
        "denied": "permission denied: give the worker's user write access to it, or set "
        "--state-dir / ARCHIVER_STATE_DIR to a directory it may write",
        "blocked": "a file stands where a directory should be: move it away, or set "
        "--state-dir / ARCHIVER_STATE_DIR to another directory",
        "gone": "it was removed or moved while in use: put it back (or rebuild the ledger from "
        "the destination with `exotel-archiver manifest rebuild`) and start again",
    }.get(kind)
    if fix is not None:
        return StateProblem(f"{where}: {fix}", config=True)
    what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return StateProblem(
        f"{where}: {what} — check the {'ledger' if ledger else 'state directory'} and start again",
        config=False,
    )


def _where(exc: OSError | sqlite3.Error, state_dir: Path | None) -> str:
    if isinstance(exc, sqlite3.Error):
        return (
            f"the ledger {state_dir / 'ledger.sqlite3'} (state directory {state_dir})"
            if state_dir is not None
            else "the ledger"
        )
    if exc.filename:
        return f"{exc.filename}"
    return f"state directory {state_dir}" if state_dir is not None else "the worker's files"


def _kind(exc: OSError | sqlite3.Error, state_dir: Path | None) -> str:
    if isinstance(exc, OSError):
        code = exc.errno
        if code in _SPACE:
            return "space"
        if code == errno.EIO:
            return "space" if _low(state_dir) else "io"
        for kind, codes in (
            ("read_only", _READ_ONLY),
            ("denied", _DENIED),
            ("blocked", _BLOCKED),
            ("gone", _GONE),
        ):
            if code in codes:
                return kind
        return "other"
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name.startswith("SQLITE_FULL"):
        return "space"
    if name.startswith("SQLITE_IOERR") or "disk I/O error" in str(exc):
        if _low(state_dir):
            return "space"
        if state_dir is not None and not state_dir.is_dir():
            return "gone"
        return "io"
    if name.startswith("SQLITE_READONLY"):
        return "read_only"
    if name.startswith("SQLITE_CANTOPEN"):
        return "gone" if state_dir is not None and not state_dir.is_dir() else "denied"
    return "other"


def _free(state_dir: Path | None) -> int | None:
    if state_dir is None:
        return None
    try:
        stat = os.statvfs(state_dir)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _low(state_dir: Path | None) -> bool:
    free = _free(state_dir)
    return free is not None and free < LOW_SPACE
