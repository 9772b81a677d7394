"""Whether a recorded run is still alive: the writer lock, and the process a run row names.

A run's row in the ledger (``runs``) gets its end when the run ends; a run killed with -9, out
of memory or with its host keeps a row without one. Whether such a row is a run still going or
one that died is told here, without writing anything: the writer lock (a shared, non-blocking
``flock`` glance: the kernel drops a dead process's lock) and the row's process (alive, running
exotel-archiver, and started before its row was written: a pid reused after a crash is not it).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
from datetime import datetime
from pathlib import Path

from archiver.ledger import RunRecord

ENDED, RUNNING, STOPPED = "ended", "running", "stopped"
"""What a run's row says of it: it ended; it may still run; it stopped without finishing."""


def writer_running(state_dir: Path) -> bool | None:
    """Whether a process holds ``state_dir/writer.lock`` (``archiver.ledger.writer_lock``):
    one shared, non-blocking ``flock`` attempt on the existing file, released at once. Nothing
    is created or written; a missing file is a free lock; None when the file cannot be opened
    or locked for another reason."""
    try:
        fd = os.open(state_dir / "writer.lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def process_running(pid: int | None, started_at: str | None = None) -> bool | None:
    """Whether the run of process ``pid`` (recorded as started at ``started_at``) may still be
    running: the process exists, runs exotel-archiver (the program or ``-m archiver`` in its
    command line, not merely the word: ``tail -f exotel-archiver.log`` is not it), and started
    before its run was recorded (a pid reused after a crash started later). None when it
    cannot be told (no pid recorded)."""
    if pid is None:
        return None
    if pid == os.getpid():
        return False  # this process runs status, not that run
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OSError:
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    if not _runs_archiver(argv):
        return False
    began = _process_start(pid)
    if began is not None and started_at is not None:
        with contextlib.suppress(ValueError):
            recorded = datetime.fromisoformat(started_at.replace("Z", "+00:00")).timestamp()
            if began > recorded + PROCESS_START_SLACK:
                return False  # started after the run it would be: the pid was reused
    return True


PROCESS_START_SLACK = 5.0
"""Seconds a process's start time (in clock ticks since boot) may seem to follow the time its
run was recorded at."""


def _runs_archiver(argv: list[bytes]) -> bool:
    names = [Path(arg.decode(errors="replace")).name for arg in argv]
    return "exotel-archiver" in names or any(
        a == b"-m" and b.split(b".")[0] == b"archiver" for a, b in itertools.pairwise(argv)
    )


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), from /proc; None if it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rpartition(")")[2].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def state_of(last_run: RunRecord | None, writing: bool | None) -> str | None:
    """``ENDED``, ``RUNNING`` or ``STOPPED`` (see ``Status.last_run_state``)."""
    if last_run is None:
        return None
    if last_run.ended_at is not None:
        return ENDED
    if writing is not False or process_running(last_run.pid, last_run.started_at):
        return RUNNING  # holding the writer lock, or before it (a backfill's listing)
    return STOPPED  # its process is gone (or, recorded without a pid, the lock is free)
