"""The retry wrapper: the only place storage operations are tried again.

``RetryingSink(inner, policy)`` is a ``Sink`` that runs every call of any backend through
``archiver.retry.retrying``: a ``StorageUnavailable`` (5xx, SlowDown, reset, timeout, a store that
refused corrupted bytes) is retried with backoff; ``StoragePermanent`` and ``StorageConflict``
are not. ``put`` may be retried safely because its input is rewindable and the backend's write is
whole-or-nothing and write-once (a retried PUT whose first answer was lost finds its own bytes
there: "already there, same bytes").

``read`` and ``list`` are streams. Each step of them (the next chunk, the next object) is an
attempt: when one fails retryably, the stream is opened again and what the caller already has is
skipped — the bytes already delivered (objects are write-once, so they are the same bytes), the
keys up to the last one delivered (``list`` is in key order). The caller sees one whole stream,
or the error that outlasted the policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO, TypeVar

from archiver.retry import RetryPolicy, retrying
from archiver.sinks.base import Lock, LockStatus, ObjectInfo, PutResult, Sink, Upload

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

    def encryption_problem(self, info: ObjectInfo) -> str | None:
        return self.inner.encryption_problem(info)

    def location(self, key: str) -> str:
        return self.inner.location(key)

    async def check(self) -> None:
        async for attempt in retrying(self.policy, what=f"check {self.describe()}"):
            with attempt:
                await self.inner.check()

    async def check_writable(self) -> None:
        async for attempt in retrying(self.policy, what=f"check {self.describe()} is writable"):
            with attempt:
                await self.inner.check_writable()

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

    @property
    def stream_threshold(self) -> int | None:
        return self.inner.stream_threshold

    async def begin(
        self, key: str, *, content_type: str, lock: Lock | None = None
    ) -> Upload | None:
        """Begin a streamed upload (retried); its parts are retried by the upload itself."""
        return await self._retried(
            f"begin an upload to {self.location(key)}",
            lambda: self.inner.begin(key, content_type=content_type, lock=lock),
        )

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

    async def set_retention(
        self,
        key: str,
        lock: Lock,
        *,
        version_id: str | None = None,
        bypass_governance: bool = False,
    ) -> None:
        await self._retried(
            f"set retention of {self.location(key)}",
            lambda: self.inner.set_retention(
                key, lock, version_id=version_id, bypass_governance=bypass_governance
            ),
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

    async def read(self, key: str) -> AsyncIterator[bytes]:
        delivered = 0
        stream: AsyncIterator[bytes] | None = None
        try:
            while True:
                chunk: bytes | None = None
                async for attempt in retrying(self.policy, what=f"read {self.location(key)}"):
                    with attempt:
                        if stream is None:  # (re)open, and skip what the caller already has
                            stream, skip = self.inner.read(key), delivered
                        else:
                            skip = 0
                        try:
                            chunk = await _next_chunk(stream, skip)
                        except BaseException:
                            await _close(stream)
                            stream = None
                            raise
                if chunk is None:
                    return
                delivered += len(chunk)
                yield chunk
        finally:
            if stream is not None:
                await _close(stream)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        last: str | None = None
        stream: AsyncIterator[ObjectInfo] | None = None
        try:
            while True:
                info: ObjectInfo | None = None
                async for attempt in retrying(self.policy, what=f"list {self.describe()}"):
                    with attempt:
                        if stream is None:
                            stream = self.inner.list(prefix)
                        try:
                            info = await anext(stream, None)
                            while info is not None and last is not None and info.key <= last:
                                info = await anext(stream, None)  # delivered before a restart
                        except BaseException:
                            await _close(stream)
                            stream = None
                            raise
                if info is None:
                    return
                last = info.key
                yield info
        finally:
            if stream is not None:
                await _close(stream)

    async def close(self) -> None:
        await self.inner.close()


async def _next_chunk(stream: AsyncIterator[bytes], skip: int) -> bytes | None:
    """The next non-empty chunk of ``stream`` after its first ``skip`` bytes; None at the end."""
    while True:
        chunk = await anext(stream, None)
        if chunk is None:
            return None
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        chunk, skip = chunk[skip:], 0
        if chunk:
            return chunk


async def _close(stream: AsyncIterator[object]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
