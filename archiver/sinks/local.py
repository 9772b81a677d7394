"""A local directory as the destination, written with aiofiles: temp file, fsync, link, fsync dir.

``put`` writes to ``.{name}.part-{random}`` in the object's folder (a name no key can have: key
segments never start with ``.part``-style temp names we create, and ``list`` skips them), hashes
while writing, fsyncs, then ``os.link``s it to the final name. ``link`` is atomic and fails if the
name exists, so write-once holds even against another process; the folder is fsynced so the new
name survives a power loss. A local store cannot report a checksum without reading the file, so
``stat`` leaves ``sha256`` empty and ``put`` reads an existing file to compare.

Files are created ``0600`` and the folders it makes ``0700``, each fsynced into its parent
(``archiver.files``); an existing root keeps its mode.

A process killed mid-write leaves its temp file behind (never at the key's name). Once a key is
in place, ``put`` removes the temp files of that key left by earlier attempts: nothing can
become of them any more (the name is taken, write-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import BinaryIO

import aiofiles
import aiofiles.os

from archiver.errors import (
    ConfigError,
    DestinationFull,
    StorageConflict,
    StorageError,
    StoragePermanent,
    StorageRejected,
    StorageUnavailable,
)
from archiver.files import make_dirs, private_opener
from archiver.sinks.base import Lock, LockStatus, ObjectInfo, PutResult, Upload, validate_key

_CHUNK = 1024 * 1024
_TEMP_MARK = ".part-"


def _is_temp(name: str) -> bool:
    return name.startswith(".") and _TEMP_MARK in name


def _classify(exc: OSError, what: str) -> StorageError:
    if isinstance(exc, PermissionError):
        return StoragePermanent(f"{what}: permission denied: let the worker's user write there")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # every call would fail alike; space can
        # be freed: the run stops with exit 1 (systemd restarts it), not a configuration error
        return DestinationFull(
            f"{what}: the disk is full: free space there, then start again (nothing half-done "
            "was recorded)"
        )
    if exc.errno == errno.EROFS:
        return StoragePermanent(f"{what}: the file system is read-only")
    if exc.errno in (errno.ENAMETOOLONG, errno.EILSEQ):  # this one name: the call fails
        return StorageRejected(
            f"{what}: the file system refuses this name ({exc.strerror})",
            code=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
        )
    return StorageUnavailable(f"{what}: {exc.strerror or type(exc).__name__}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(final: Path) -> None:
    """Remove the temp files of ``final`` that killed writers left (best effort)."""
    for stale in final.parent.glob(f".{glob.escape(final.name)}{_TEMP_MARK}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _hash_file(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_NOT_A_DIRECTORY = (errno.ENOTDIR, errno.EEXIST, errno.ELOOP)
"""The root (or a folder on its way) is a file or a loop of links: no retry makes it a folder."""
DROP_IN_DOC = "docs/installation.md#a-local-directory-as-the-destination"


def under_systemd(env: Mapping[str, str] | None = None) -> bool:
    """Started by systemd (a service's environment has INVOCATION_ID, its stderr in the journal
    JOURNAL_STREAM)."""
    env = os.environ if env is None else env
    return bool(env.get("INVOCATION_ID") or env.get("JOURNAL_STREAM"))


def not_writable(root: Path, error: int, env: Mapping[str, str] | None = None) -> str:
    """Why the local destination ``root`` cannot be written, and the fix: under systemd, the
    drop-in that lets the sandboxed units write there."""
    if error == errno.EROFS:
        why = "read-only file system"
    else:
        why = f"permission denied to uid {os.geteuid()}, the user the archiver runs as"
    head = f"the local destination {root} cannot be written ({why})"
    if under_systemd(env):
        cause = (
            "the units make every path read-only but their state directory (ProtectSystem=strict)"
            if error == errno.EROFS
            else "the units run as a transient user (DynamicUser=yes) that owns nothing there"
        )
        drop_in = "/etc/systemd/system/exotel-.service.d/destination.conf"
        return (
            f"{head}: under systemd, {cause}. Create the directory and let every exotel-archiver "
            f"unit write it with a drop-in, {drop_in}: [Service] ReadWritePaths={root} (then "
            "systemctl daemon-reload); and give it to the service's user: a static user "
            "(DynamicUser=no, User=, chown), or put the destination in a StateDirectory= under "
            f"/var/lib that systemd owns for it. Both are explained in {DROP_IN_DOC}"
        )
    if error == errno.EROFS:
        fix = "remount it read-write, or choose a writable directory"
    else:
        fix = "give that user write access to it (chown or chmod), or choose another directory"
    return f"{head}: {fix} (ARCHIVER_DESTINATION, or destination in the config file)"


class LocalSink:
    """A directory tree. See ``archiver.sinks.base`` for the promises."""

    def __init__(self, root: Path) -> None:
        try:
            self.root = root.expanduser().resolve()
        except RuntimeError:  # Python 3.11's "Symlink loop from ...": no retry mends it
            raise ConfigError(
                f"the local destination {root} is not a directory (its path is a loop of "
                "symbolic links): point ARCHIVER_DESTINATION at a directory"
            ) from None
        self.requests = 0

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def location(self, key: str) -> str:
        return str(self._path(key))

    async def check(self) -> None:
        """The root can be written: made (0700) if missing, a probe file written and removed.
        A root the file system refuses (read-only, permission) is a configuration error: every
        call would fail, so the run stops at start, before any API request."""
        what = f"check directory {self.root}"
        try:
            await asyncio.to_thread(make_dirs, self.root)
            probe = self.root / f".probe{_TEMP_MARK}{uuid.uuid4().hex}"
            async with aiofiles.open(probe, "wb", opener=private_opener) as fh:
                await fh.write(b"probe")
            await aiofiles.os.remove(probe)
        except OSError as exc:
            raise self._unusable(exc) or _classify(exc, what) from None

    def _unusable(self, exc: OSError) -> ConfigError | None:
        """The configuration error ``exc`` means for the root, if it is one."""
        if exc.errno in _NOT_WRITABLE:
            return ConfigError(not_writable(self.root, exc.errno))
        if exc.errno in _NOT_A_DIRECTORY:
            return ConfigError(
                f"the local destination {self.root} is not a directory (a file stands at it or "
                "on its way): point ARCHIVER_DESTINATION at a directory"
            )
        return None

    async def check_writable(self) -> None:
        """The root takes a new file — or, while it does not exist yet, the nearest folder above
        it, where it would be made: a probe file created there and removed at once. Unlike
        ``check`` nothing is made and nothing stays (a dry run may call it). Refused by the file
        system (read-only, permission): a configuration error, as in ``check``."""

        def probe() -> None:
            at = self.root
            while not at.exists() and at.parent != at:
                at = at.parent
            if not at.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(at))
            path = at / f".probe{_TEMP_MARK}{uuid.uuid4().hex}"
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            os.unlink(path)

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            raise self._unusable(exc) or _classify(exc, f"check directory {self.root}") from None

    async def put(
        self,
        key: str,
        body: BinaryIO,
        *,
        size: int,
        sha256: str,
        content_type: str,
        lock: Lock | None = None,
    ) -> PutResult:
        if lock is not None:
            self._no_lock(f"write {key} with {lock.mode} retention")
        final = self._path(key)
        what = f"write {final}"
        if await aiofiles.os.path.exists(final):
            existing = await self._existing(key, final, size, sha256)
            await asyncio.to_thread(_remove_stale_temps, final)
            return existing
        temp = final.parent / f".{final.name}{_TEMP_MARK}{uuid.uuid4().hex}"
        try:
            await asyncio.to_thread(make_dirs, final.parent)
            digest, written = hashlib.sha256(), 0
            body.seek(0)
            async with aiofiles.open(temp, "wb", opener=private_opener) as out:  # 0600
                while written < size:
                    chunk = await asyncio.to_thread(body.read, min(_CHUNK, size - written))
                    if not chunk:
                        break
                    digest.update(chunk)
                    written += len(chunk)
                    await out.write(chunk)
                await out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
            if written != size or digest.hexdigest() != sha256:
                raise StorageUnavailable(
                    f"{what}: the bytes read ({written}, sha256 {digest.hexdigest()}) are not the "
                    f"ones announced ({size}, sha256 {sha256})"
                )
            try:
                await asyncio.to_thread(os.link, temp, final)
            except FileExistsError:  # someone else stored it meanwhile
                return await self._existing(key, final, size, sha256)
            await asyncio.to_thread(_fsync_dir, final.parent)
        except OSError as exc:
            raise _classify(exc, what) from None
        finally:  # best effort: a name too long to create is too long to remove
            with contextlib.suppress(OSError):
                await aiofiles.os.remove(temp)
        await asyncio.to_thread(_remove_stale_temps, final)
        return PutResult(key=key, size=size, sha256=sha256, created=True, location=str(final))

    async def _existing(self, key: str, path: Path, size: int, sha256: str) -> PutResult:
        try:
            have_size, have_sha = await asyncio.to_thread(_hash_file, path)
        except OSError as exc:
            raise _classify(exc, f"read {path}") from None
        if have_size == size and have_sha == sha256:
            return PutResult(key=key, size=size, sha256=sha256, created=False, location=str(path))
        raise StorageConflict(
            f"conflict at {path}: a file with other content is already there ({have_size} bytes, "
            f"sha256 {have_sha}; ours: {size} bytes, sha256 {sha256}). It was kept, not "
            "replaced: investigate before archiving this call"
        )

    def encryption_problem(self, info: ObjectInfo) -> str | None:
        return None  # a directory is asked for no server-side encryption (open_sink refuses it)

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = await aiofiles.os.stat(self._path(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _classify(exc, f"stat {key}") from None
        return ObjectInfo(key=key, size=st.st_size)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            async with aiofiles.open(path, "rb") as fh:
                while chunk := await fh.read(_CHUNK):
                    yield chunk
        except FileNotFoundError:
            raise StoragePermanent(f"read {path}: no such object") from None
        except OSError as exc:
            raise _classify(exc, f"read {path}") from None

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        def walk() -> list[ObjectInfo]:
            found = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                for name in filenames:
                    if _is_temp(name) or name.startswith(".probe"):
                        continue
                    path = Path(dirpath) / name
                    key = path.relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        found.append(ObjectInfo(key=key, size=path.stat().st_size))
            return sorted(found, key=lambda o: o.key)

        for info in await asyncio.to_thread(walk):
            yield info

    # --- no Object Lock here ---------------------------------------------------------------

    def _no_lock(self, what: str) -> None:
        raise StoragePermanent(
            f"{what}: a local directory ({self.root}) has no Object Lock; use an S3 bucket with "
            "Object Lock enabled for retention classes with a lock mode"
        )

    @property
    def stream_threshold(self) -> int | None:
        return None  # a file is written from the spool, whole, then linked into place

    async def begin(
        self, key: str, *, content_type: str, lock: Lock | None = None
    ) -> Upload | None:
        return None

    async def object_lock_enabled(self) -> bool:
        return False

    async def lock_status(self, key: str, version_id: str | None = None) -> LockStatus | None:
        return None if await self.stat(key) is None else LockStatus()

    async def set_retention(
        self,
        key: str,
        lock: Lock,
        *,
        version_id: str | None = None,
        bypass_governance: bool = False,
    ) -> None:
        self._no_lock(f"set the retention of {key}")

    async def set_legal_hold(self, key: str, on: bool, *, version_id: str | None = None) -> None:
        self._no_lock(f"{'place' if on else 'lift'} a legal hold on {key}")

    async def delete(self, key: str, *, version_id: str | None = None) -> None:
        path = self._path(key)
        try:
            await aiofiles.os.remove(path)
            await asyncio.to_thread(_fsync_dir, path.parent)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _classify(exc, f"delete {path}") from None

    async def close(self) -> None:
        return None
