"""Destinations: the storage contract (``Sink``), its backends, and ``open_sink``.

``open_sink(destination, retry=...)`` turns ``ARCHIVER_DESTINATION`` into a ready ``Sink``:
``s3://bucket/prefix`` → ``S3Sink``; ``file:///abs/path`` or a plain path → ``LocalSink``; each
wrapped in ``RetryingSink``. Anything else is a ``ConfigError`` that names the accepted forms.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from archiver.errors import ConfigError
from archiver.retry import RetryPolicy
from archiver.sinks.base import (
    Lock,
    LockStatus,
    ObjectInfo,
    PutResult,
    ServerSideEncryption,
    Sink,
    Upload,
    put_bytes,
    validate_key,
)
from archiver.sinks.retrying import RetryingSink

__all__ = [
    "Lock",
    "LockStatus",
    "ObjectInfo",
    "PutResult",
    "RetryingSink",
    "ServerSideEncryption",
    "Sink",
    "Upload",
    "open_sink",
    "put_bytes",
    "validate_key",
]

_FORMS = "use s3://bucket/prefix, file:///absolute/path or a directory path"


def open_sink(
    destination: str,
    *,
    retry: RetryPolicy,
    addressing_style: str | None = None,
    conditional_writes: bool = True,
    checksum: str = "sha256",
    part_size: int = 8 * 1024 * 1024,
    part_concurrency: int = 2,
    concurrency: int = 16,
    sse: ServerSideEncryption | None = None,
) -> Sink:
    """The sink for ``destination``, wrapped in the retry policy."""
    destination = destination.strip()
    if not destination:
        raise ConfigError(f"empty destination: {_FORMS}")
    backend: Sink
    if sse is not None and not destination.startswith("s3://"):
        raise ConfigError(
            f"--sse {sse.mode.lower()} asks the store for server-side encryption, but the "
            "destination is a local directory: use an s3:// destination, or --sse none (a "
            "directory is as safe as its disk; --encrypt-to encrypts before anything is stored)"
        )
    if destination.startswith("s3://"):
        from archiver.sinks.s3 import S3Sink, parse_s3_url

        bucket, prefix = parse_s3_url(destination)
        backend = S3Sink(
            bucket,
            prefix,
            addressing_style=addressing_style,
            conditional_writes=conditional_writes,
            checksum=checksum,
            part_size=part_size,
            part_retry=retry,
            part_concurrency=part_concurrency,
            concurrency=concurrency,
            sse=sse,
        )
    elif destination.startswith("file:"):
        from archiver.sinks.local import LocalSink

        parts = urlsplit(destination)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(
                f"destination {destination!r}: a file URL needs an absolute path, as in "
                "file:///srv/recordings (three slashes)"
            )
        backend = LocalSink(Path(unquote(parts.path)))
    elif "://" in destination:
        scheme = destination.split("://", 1)[0]
        raise ConfigError(f"destination {destination!r}: unsupported scheme '{scheme}': {_FORMS}")
    else:
        from archiver.sinks.local import LocalSink

        backend = LocalSink(Path(destination))
    return RetryingSink(backend, retry)
