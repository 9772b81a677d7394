"""S3 multipart upload for large objects, with memory bounded by one part per upload.

Used by ``S3Sink.put`` for objects of ``part_size`` bytes or more (default 8 MiB; S3 wants at
least 5 MiB per part but the last). Each part is read from the rewindable body into memory only
while it is sent, with its own ``x-amz-checksum-sha256`` so the store refuses a corrupted part. A
part that fails transiently is re-sent from its buffer under the one retry policy: an upload
retry never downloads again, and never re-sends the parts already accepted.

The whole object is hashed as the parts are read; if that hash is not the SHA-256 the caller
announced (the spool changed under us), nothing is completed. Completion carries
``If-None-Match: *`` (write-once). Any failure — and cancellation — aborts the upload, so no
orphaned parts are left in the bucket. The store's resulting checksum is the composite
"SHA-256 of the part SHA-256s, -N"; ``composite_checksum`` computes the value to expect.

A process killed mid-upload (SIGKILL, OOM, power loss) cannot abort: its upload stays open, its
parts billed. Before starting an upload of a key (and before a single PUT of 5 MiB or more,
``S3Sink.put``, in case a killed run used a smaller part size), ``upload`` therefore lists the
unfinished uploads of exactly that key and aborts them. A killed upload belongs to a call that
was not recorded as archived, so the next run uploads that key again and cleans up first: once a
backfill completes, no upload it started is left open. One state directory has one writer (the
writer lock), so an open upload of a key we are about to write is a leftover, not a live one.
Listing needs ``s3:ListBucketMultipartUploads``; without it the clean-up is skipped with a
warning and the bucket's lifecycle rule (docs/storage.md) is what removes leftovers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from archiver.errors import StorageError, StorageUnavailable
from archiver.retry import RetryPolicy, retrying

if TYPE_CHECKING:
    from archiver.sinks.s3 import S3Sink

log = logging.getLogger("archiver.sinks.multipart")

MIN_PART = 5 * 1024 * 1024


@dataclass(frozen=True)
class Completed:
    answer: dict[str, Any]
    composite: str
    """The checksum the store should report: base64(SHA-256 of part digests) + "-N"."""
    upload_id: str = ""
    """The upload completed: aborted if the completed object cannot be confirmed."""


def composite_checksum(part_digests: list[bytes]) -> str:
    joined = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(joined).decode()}-{len(part_digests)}"


def _read_at(body: BinaryIO, offset: int, length: int) -> bytes:
    body.seek(offset)
    return body.read(length)


async def upload(
    sink: S3Sink,
    full_key: str,
    body: BinaryIO,
    *,
    size: int,
    sha256: str,
    content_type: str,
    part_size: int,
    retry: RetryPolicy,
    extra: dict[str, Any] | None = None,
) -> Completed | None:
    """Upload ``body`` in parts; None if the completion found an object already at the key."""
    loop = asyncio.get_running_loop()
    client = sink.client
    md5 = sink.checksum == "md5"
    algorithm = {} if md5 else {"ChecksumAlgorithm": "SHA256"}
    await _abort_leftovers(sink, full_key)
    created = await sink.call(
        f"start multipart upload of {full_key}",
        client.create_multipart_upload,
        Bucket=sink.bucket,
        Key=full_key,
        ContentType=content_type,
        Metadata={"sha256": sha256},
        **algorithm,
        **(extra or {}),
    )
    upload_id = created["UploadId"]
    try:
        parts: list[dict[str, Any]] = []
        digests: list[bytes] = []
        whole = hashlib.sha256()
        offset = 0
        while offset < size:
            number = len(parts) + 1
            data = await loop.run_in_executor(
                sink.pool, _read_at, body, offset, min(part_size, size - offset)
            )
            if not data:
                raise StorageUnavailable(f"{full_key}: the body ended at {offset} of {size} bytes")
            digest = hashlib.sha256(data).digest()
            whole.update(data)
            if md5:
                part_md5 = hashlib.md5(data, usedforsecurity=False).digest()
                check = {"ContentMD5": base64.b64encode(part_md5).decode()}
            else:
                check = {"ChecksumSHA256": base64.b64encode(digest).decode()}
            async for attempt in retrying(retry, what=f"upload part {number} of {full_key}"):
                with attempt:
                    answer = await sink.call(
                        f"upload part {number} of {full_key}",
                        client.upload_part,
                        Bucket=sink.bucket,
                        Key=full_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=io.BytesIO(data),
                        ContentLength=len(data),
                        **check,
                    )
            part = {"PartNumber": number, "ETag": answer["ETag"]}
            if not md5:
                part["ChecksumSHA256"] = check["ChecksumSHA256"]
            parts.append(part)
            digests.append(digest)
            offset += len(data)
            del data
        if whole.hexdigest() != sha256:
            raise StorageUnavailable(
                f"{full_key}: the bytes read ({whole.hexdigest()}) are not the ones announced "
                f"({sha256}); nothing was completed"
            )
        params: dict[str, Any] = {
            "Bucket": sink.bucket,
            "Key": full_key,
            "UploadId": upload_id,
            "MultipartUpload": {"Parts": parts},
        }
        if sink.conditional_writes:
            params["IfNoneMatch"] = "*"
        done = await sink.call_unless(
            frozenset({"PreconditionFailed", "412"}),
            f"complete multipart upload of {full_key}",
            client.complete_multipart_upload,
            **params,
        )
    except BaseException:
        await asyncio.shield(_abort(sink, full_key, upload_id))
        raise
    if done is None:
        await _abort(sink, full_key, upload_id)
        return None
    return Completed(
        answer=dict(done), composite=composite_checksum(digests), upload_id=str(upload_id)
    )


async def _abort_leftovers(sink: S3Sink, full_key: str) -> None:
    """Abort the unfinished uploads of ``full_key`` an earlier, killed run left open."""
    try:
        listed = await sink.call(
            f"list unfinished multipart uploads of {full_key}",
            sink.client.list_multipart_uploads,
            Bucket=sink.bucket,
            Prefix=full_key,
        )
    except StorageError as exc:  # e.g. no s3:ListBucketMultipartUploads: the lifecycle rule's job
        log.warning("could not look for unfinished uploads of %s: %s", full_key, exc)
        return
    for item in listed.get("Uploads") or []:
        if item.get("Key") == full_key and item.get("UploadId"):
            log.warning(
                "aborting an unfinished multipart upload of %s left by an earlier run", full_key
            )
            await _abort(sink, full_key, str(item["UploadId"]))


async def abort_probes(sink: S3Sink, prefix: str) -> None:
    """Abort the writability probes (``S3Sink.check_writable``) under ``prefix`` that runs
    killed between their start and their abort left open: uploads of nothing, which no later
    run would otherwise touch. A listing refused is logged; the lifecycle rule cleans up."""
    try:
        listed = await sink.call(
            f"list unfinished probe uploads under {prefix}",
            sink.client.list_multipart_uploads,
            Bucket=sink.bucket,
            Prefix=prefix,
        )
    except StorageError as exc:
        log.warning("could not look for unfinished probe uploads under %s: %s", prefix, exc)
        return
    for item in listed.get("Uploads") or []:
        key, upload_id = item.get("Key"), item.get("UploadId")
        if isinstance(key, str) and key.startswith(prefix) and upload_id:
            await _abort(sink, key, str(upload_id))


async def _abort(sink: S3Sink, full_key: str, upload_id: str) -> None:
    """Abort the upload so its parts are freed (retried like a part; an upload already gone
    counts as aborted); a failure that outlasts the retries is logged, not raised."""
    what = f"abort multipart upload of {full_key}"
    try:
        async for attempt in retrying(sink.part_retry, what=what):
            with attempt:
                await sink.call_unless(
                    frozenset({"NoSuchUpload"}),
                    what,
                    sink.client.abort_multipart_upload,
                    Bucket=sink.bucket,
                    Key=full_key,
                    UploadId=upload_id,
                )
    except Exception as exc:  # the original error matters more; a lifecycle rule cleans up
        log.warning("could not abort the multipart upload of %s: %s", full_key, exc)
