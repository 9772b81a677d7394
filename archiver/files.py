"""Local files written whole or not at all: temp file, fsync, rename.

A reader (or a process restarted after a crash) sees either the old file or the new one, never
a torn one. Used for the reports and summaries in the state directory and for exports.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (creating its folder): temp file, fsync, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
