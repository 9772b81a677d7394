"""Local files and folders: private to the archiver's user, and durable once made.

Every file the archiver creates (recordings in a local destination, the ledger, the manifest,
reports, exports) is created with mode ``0600``, every folder it creates with ``0700``: the
mode is given to the ``open``/``mkdir`` call itself, so the usual umask 022 (the README's
plain commands, the demo) does not leave call recordings readable by every user of the host.
A stricter umask still narrows them. A folder or file that already exists keeps its mode — a
destination root the operator made ``0750`` for a backup group stays so; a file replaced by
``write_atomic`` is a new file, ``0600`` whatever the old one's mode.

A new folder is fsynced into its parent (the name survives a power loss, as do the files then
written into it), and a file written whole (``write_atomic``) goes temp file, fsync, rename,
fsync of the folder: a reader, or a process restarted after a crash, sees the old file or the
new one, never a torn one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    """Force ``path``'s entries (a name created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """Create the folder ``path`` and its missing parents, each ``0700`` and fsynced into its
    parent. Existing folders are left as they are. Raises OSError (NotADirectoryError,
    PermissionError, EROFS ...) as ``os.mkdir`` does."""
    missing: list[Path] = []
    at = path
    while not at.is_dir():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            if folder.is_dir():  # made meanwhile (another writer's thread)
                continue
            raise
        fsync_dir(folder.parent)


def private_opener(path: str | os.PathLike[str], flags: int) -> int:
    """The ``opener`` of ``open()`` (and ``aiofiles.open``) for files the archiver creates: a new
    file gets mode ``0600``."""
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)


def create_private(path: Path) -> bool:
    """Create the empty file ``path`` (``0600``, its folder made and the name fsynced into it)
    unless it exists; True if it was created. For a file another library opens by name (SQLite,
    which gives its -wal/-shm/-journal files the main file's mode)."""
    make_dirs(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    fsync_dir(path.parent)
    return True


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (creating its folder): temp file, fsync, rename over it."""
    write_atomic_with(path, lambda fh: fh.write(text))


def write_atomic_with(path: Path, write: Callable[[TextIO], object]) -> None:
    """``write_atomic`` of what ``write`` writes to the file it is given, piece by piece (a
    report too large to hold as one string). A failure leaves the old file, and no temp file."""
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a crashed writer's, with whatever mode it had
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        with open(fd, "w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
