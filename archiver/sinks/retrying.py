"""The retry wrapper: the only place storage operations are tried again.

``RetryingSink(inner, policy)`` is a ``Sink`` that runs every call but ``read`` and ``list`` of
any backend through ``archiver.retry.retrying``: a ``StorageUnavailable`` (5xx, SlowDown, reset,
timeout, a store that refused corrupted bytes) is retried with backoff; ``StoragePermanent`` and
``StorageConflict`` are not. ``put`` may be retried safely because its input is rewindable and
the backend's write is whole-or-nothing and write-once. ``read`` and ``list`` are streams and are
passed through unretried: a caller that needs them whole starts again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO, TypeVar

from archiver.retry import RetryPolicy, retrying
from archiver.sinks.base import Lock, LockStatus, ObjectInfo, PutResult, Sink

T = TypeVar("T")


class RetryingSink:
    def __init__(self, inner: Sink, policy: RetryPolicy) -> None:
        self.inner = inner
        self.policy = policy

    @property
    def requests(self) -> int:
        return self.inner.requests

    def describe(self) -> str:
        return self.inner.describe()

    def location(self, key: str) -> str:
        return self.inner.location(key)

    async def check(self) -> None:
        async for attempt in retrying(self.policy, what=f"check {self.describe()}"):
            with attempt:
                await self.inner.check()

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
        async for attempt in retrying(self.policy, what=f"store {self.location(key)}"):
            with attempt:
                return await self.inner.put(
                    key, body, size=size, sha256=sha256, content_type=content_type, lock=lock
                )
        raise AssertionError("unreachable: retrying re-raises the last error")

    async def _retried(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        async for attempt in retrying(self.policy, what=what):
            with attempt:
                return await call()
        raise AssertionError("unreachable: retrying re-raises the last error")

    async def object_lock_enabled(self) -> bool:
        return await self._retried(
            f"Object Lock of {self.describe()}", self.inner.object_lock_enabled
        )

    async def lock_status(self, key: str, version_id: str | None = None) -> LockStatus | None:
        return await self._retried(
            f"lock status of {self.location(key)}",
            lambda: self.inner.lock_status(key, version_id),
        )

    async def set_retention(self, key: str, lock: Lock, *, version_id: str | None = None) -> None:
        await self._retried(
            f"set retention of {self.location(key)}",
            lambda: self.inner.set_retention(key, lock, version_id=version_id),
        )

    async def set_legal_hold(self, key: str, on: bool, *, version_id: str | None = None) -> None:
        await self._retried(
            f"legal hold on {self.location(key)}",
            lambda: self.inner.set_legal_hold(key, on, version_id=version_id),
        )

    async def delete(self, key: str, *, version_id: str | None = None) -> None:
        await self._retried(
            f"delete {self.location(key)}",
            lambda: self.inner.delete(key, version_id=version_id),
        )

    async def stat(self, key: str) -> ObjectInfo | None:
        async for attempt in retrying(self.policy, what=f"stat {self.location(key)}"):
            with attempt:
                return await self.inner.stat(key)
        raise AssertionError("unreachable: retrying re-raises the last error")

    def read(self, key: str) -> AsyncIterator[bytes]:
        return self.inner.read(key)

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix)

    async def close(self) -> None:
        await self.inner.close()
