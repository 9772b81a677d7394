"""Local files written whole or not at all: temp file, fsync, rename.

A reader (or a process restarted after a crash) sees either the old file or the new one, never
a torn one. Used for the reports and summaries in the state directory and for exports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (creating its folder): temp file, fsync, rename over it."""
    write_atomic_with(path, lambda fh: fh.write(text))


def write_atomic_with(path: Path, write: Callable[[TextIO], object]) -> None:
    """``write_atomic`` of what ``write`` writes to the file it is given, piece by piece (a
    report too large to hold as one string). A failure leaves the old file, and no temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
