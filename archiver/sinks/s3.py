"""S3 and S3-compatible stores, through boto3 in the sink's own thread pool.

boto3 is synchronous: every call runs in a dedicated ``ThreadPoolExecutor`` so the event loop is
never blocked. botocore's own retries are off (one attempt per call); retrying is the job of
``RetryingSink``. Credentials, endpoint (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``) and region
come from the standard AWS chain.

Uploads send ``x-amz-checksum-sha256`` (the store refuses bytes that do not match) and
``If-None-Match: *`` (the store refuses to replace an existing object), and store the hex SHA-256
as ``x-amz-meta-sha256`` too, for people and tools (not on a streamed upload, ``begin``: it
begins before the SHA-256 is known): it is never taken as proof of anything, since whoever
writes an object writes its metadata. What counts as proof is a checksum the store
computed, or the object read back and hashed:

* after a PUT, the store's answer when it echoes the SHA-256 it verified (AWS S3 and SeaweedFS
  do); else the whole-object ``ChecksumSHA256`` on HEAD (checksum mode enabled); else the object
  is read back (GET, streamed 1 MiB at a time through the pool) and hashed. After a multipart
  upload, the composite checksum on HEAD (``SHA-256 of the part checksums-N``, the store having
  verified each part) must be the one expected; a store that reports none gets the read-back.
* an object already at the key (If-None-Match refused, or found by HEAD when conditional writes
  are off) is adopted (``created=False``) only if its size matches and its SHA-256, as the store
  computed it or as read back, is ours. A composite checksum cannot tell (other part sizes give
  another one for the same bytes), so such an object is read back too.

``checksum="md5"`` is for stores that refuse ``x-amz-checksum-*`` headers (older S3-compatible
servers, some gateways): each request (each part, for multipart uploads) carries
``Content-MD5`` instead, which every S3 implementation checks, and botocore is told to add no
flexible checksums of its own. The body's SHA-256 is then checked by the sink itself, as it
reads the body to compute the MD5: a body that is not the one announced is never sent. No
checksum header is sent in this mode, ``ChecksumMode`` included, so the store reports no SHA-256:
every PUT is confirmed, and every existing object adopted, by reading it back.

Errors (``_classify``): the codes that concern every call — credentials, the bucket missing
or denied (``_PERMANENT_CODES``, a bare 401/403), a TLS certificate refused — are
``StoragePermanent`` and stop the run; 5xx, 429 and the transient codes (``_RETRYABLE_CODES``)
are ``StorageUnavailable``; any other 4xx is about the one object it was sent for
(InvalidArgument, InvalidRequest, 409, 411, KeyTooLongError...) and is ``StorageRejected``: that
call fails, the run goes on.

Server-side encryption (``sse``; ``archiver.sinks.base``, item 11): ``ServerSideEncryption``,
``SSEKMSKeyId`` and ``SSEKMSEncryptionContext`` (base64 of the context JSON) go with every
PutObject and CreateMultipartUpload, never with a GET or HEAD (SSE-S3 and SSE-KMS need none to
read). ``sse_problem`` checks each answer; ``_confirm_sse`` fails the write (and deletes the
version, unless it is locked) when the store did not encrypt as asked. KMS error codes
(``KMS.*``, ``AccessDenied`` naming a ``kms:`` action) are ``StoragePermanent``, except KMS's
own throttling and internal errors.

Object Lock: ``x-amz-bypass-governance-retention`` is sent by ``set_retention`` only when its
caller opts in, and then only for GOVERNANCE → COMPLIANCE with a date not earlier than the
stored one; ``delete`` never sends it (``archiver.sinks.base``, item 9).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)

from archiver.errors import (
    ConfigError,
    StorageConflict,
    StorageError,
    StorageLocked,
    StoragePermanent,
    StorageRejected,
    StorageUnavailable,
)
from archiver.retry import RetryPolicy, retrying
from archiver.sinks import multipart
from archiver.sinks.base import (
    Lock,
    LockStatus,
    ObjectInfo,
    PutResult,
    ServerSideEncryption,
    Upload,
    validate_key,
)
from archiver.sinks.streaming import PartStream
from archiver.tls import certificate_message

T = TypeVar("T")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PERMANENT_CODES = {
    "NoSuchBucket": "bucket '{bucket}' does not exist at {endpoint}: create it, or fix "
    "ARCHIVER_DESTINATION",
    "AccessDenied": "access denied to bucket '{bucket}' at {endpoint}: grant the permissions in "
    "docs/storage.md to these credentials",
    "AllAccessDisabled": "all access to bucket '{bucket}' is disabled",
    "InvalidAccessKeyId": "the AWS access key id is not known to {endpoint}: check "
    "AWS_ACCESS_KEY_ID / AWS_PROFILE",
    "SignatureDoesNotMatch": "the AWS secret key does not match the access key id at {endpoint}: "
    "check AWS_SECRET_ACCESS_KEY / AWS_PROFILE",
    "InvalidBucketName": "'{bucket}' is not a valid bucket name: fix ARCHIVER_DESTINATION",
    "PermanentRedirect": "bucket '{bucket}' is in another region: set AWS_DEFAULT_REGION to it",
    "301": "bucket '{bucket}' is in another region (HTTP 301): set AWS_DEFAULT_REGION to it",
    "AuthorizationHeaderMalformed": "bucket '{bucket}' is in another region: set "
    "AWS_DEFAULT_REGION to it",
    "InvalidToken": "the AWS session token is invalid: refresh AWS_SESSION_TOKEN",
    "ExpiredToken": "the AWS session token has expired: refresh the credentials",
}
_CHUNK = 1024 * 1024
PROBE_FOLDER = "_manifest"
"""Where ``check_writable`` starts (and aborts) its probe upload."""
_OBJECT_MISSING = frozenset({"NoSuchKey"})
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_EXISTS = frozenset({"PreconditionFailed", "412"})
_RETRYABLE_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "BadDigest",
    "XAmzContentSHA256Mismatch",
    "IncompleteBody",
    "OperationAborted",
    "ConditionalRequestConflict",
}


_STRENGTHEN_HINT = (
    "if the version is held under GOVERNANCE: changing GOVERNANCE to COMPLIANCE needs "
    "s3:BypassGovernanceRetention and `retention apply --strengthen-governance` "
    "(docs/compliance.md)"
)
_NO_RETENTION = frozenset({"NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError"})
"""GetObjectRetention's answer for a version without retention (AWS; SeaweedFS)."""
_NO_LEGAL_HOLD = frozenset(
    {
        "NoSuchObjectLegalHold",
        "NoSuchObjectLockConfiguration",
        "ObjectLockConfigurationNotFoundError",
    }
)
"""GetObjectLegalHold's answer for a version that never had a legal hold."""
_NO_LOCK_CONFIG = frozenset(
    {"ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound", "404"}
)


def _lock_params(lock: Lock | None) -> dict[str, Any]:
    if lock is None:
        return {}
    return {"ObjectLockMode": lock.mode, "ObjectLockRetainUntilDate": lock.until}


_KMS_PERMISSIONS = (
    'kms:GenerateDataKey and kms:Decrypt on it (docs/storage.md, "Encryption at rest")'
)
_KMS_RETRYABLE = frozenset(
    {"KMS.ThrottlingException", "KMS.LimitExceededException", "KMS.KMSInternalException"}
)
"""KMS errors an S3 PUT may pass on that a later attempt can get past; every other ``KMS*``
code (KMS.NotFoundException, KMS.DisabledException, KMSKeyNotFoundException...) cannot."""


def _sse_params(sse: ServerSideEncryption | None) -> dict[str, str]:
    """The PutObject / CreateMultipartUpload parameters asking for ``sse`` (none for None)."""
    if sse is None:
        return {}
    params = {"ServerSideEncryption": sse.mode}
    if sse.kms_key_id:
        params["SSEKMSKeyId"] = sse.kms_key_id
    if sse.context:
        params["SSEKMSEncryptionContext"] = base64.b64encode(sse.context.encode()).decode()
    return params


def _by_alias(key_id: str | None) -> bool:
    """None (the store's default key), ``alias/NAME`` or an alias ARN: a name the store's answer
    never repeats (it names the key), so only that answer tells which key it is."""
    return key_id is None or key_id.startswith("alias/") or ":alias/" in key_id


def kms_key_matches(asked: str, answered: str) -> bool:
    """Whether the key the store answered is the key id or key ARN asked: an ARN must be equal;
    a bare key id is equal, or the id of the key ARN answered (AWS answers ARNs)."""
    if asked == answered:
        return True
    return not asked.startswith("arn:") and answered.endswith(f":key/{asked}")


def _same_key(one: str, other: str) -> bool:
    """Two answers name the same key (an ARN and the bare id of it count as the same)."""
    return kms_key_matches(one, other) or kms_key_matches(other, one)


def _described(mode: str | None, key_id: str | None) -> str:
    """An encryption as the store reported it, for people."""
    if mode is None:
        return "without server-side encryption"
    return f"with {mode}" + (f" (KMS key {key_id})" if key_id else "")


def _locked(head: Mapping[str, Any]) -> bool:
    """The HEAD shows a retention or legal hold on the version (it cannot be deleted)."""
    return bool(head.get("ObjectLockMode")) or head.get("ObjectLockLegalHoldStatus") == "ON"


def _s3_config(addressing_style: str | None, checksum: str) -> dict[str, Any] | None:
    """botocore's ``s3`` options. In sha256 mode the payload is not SHA-256-hashed again for the
    SigV4 signature (``payload_signing_enabled``: botocore does it over plain http for every body,
    a second pass over each byte): every upload carries ``x-amz-checksum-sha256``, a signed
    header, and the store verifies the body against it. In md5 mode payloads stay signed."""
    config: dict[str, Any] = {"addressing_style": addressing_style} if addressing_style else {}
    if checksum == "sha256":
        config["payload_signing_enabled"] = False
    return config or None


def _recursion(exc: Exception) -> bool:
    """botocore's region redirect looping on a 301 that names no region, caught (depending on
    how deep the stack was when it overflowed) inside the HTTP layer: ``HTTPClientError``."""
    return isinstance(exc, HTTPClientError) and isinstance(exc.kwargs.get("error"), RecursionError)


def _read_all(body: BinaryIO) -> bytes:
    body.seek(0)
    return body.read()


def _version(version_id: str | None) -> dict[str, str]:
    return {"VersionId": version_id} if version_id else {}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ("bucket", "some/prefix")."""
    if not url.startswith("s3://"):
        raise ConfigError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if "@" in bucket:  # ACCESS:SECRET@bucket: never shown
        raise ConfigError(
            "the destination must not contain credentials (not shown here): use s3://bucket/prefix "
            "with AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )
    if not _BUCKET.match(bucket):
        raise ConfigError(
            f"destination {url!r}: '{bucket}' is not a valid bucket name (3-63 characters: "
            "lower-case letters, digits, '.', '-'); use s3://bucket/prefix"
        )
    prefix = prefix.strip("/")
    if prefix:
        validate_key(prefix)
    return bucket, prefix


def _store_sha256(head: Mapping[str, Any]) -> str | None:
    """The whole object's SHA-256 as the store computed it (lower-case hex), or None.

    Only S3's own ``ChecksumSHA256`` counts: the store computed it from the bytes it received and
    refused them had they not matched the one sent. A multipart object's ``...-N`` (a checksum of
    the parts' checksums) is not the object's SHA-256, and ``x-amz-meta-sha256`` is metadata that
    whoever writes the object sets: neither proves anything about the content.
    """
    checksum = head.get("ChecksumSHA256")
    if not isinstance(checksum, str) or "-" in checksum or head.get("ChecksumType") == "COMPOSITE":
        return None
    try:
        digest = base64.b64decode(checksum, validate=True)
    except ValueError:
        return None
    return digest.hex() if len(digest) == 32 else None


class S3Sink:
    """A bucket (and prefix) of an S3-compatible store. See ``archiver.sinks.base``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str | None = None,
        conditional_writes: bool = True,
        checksum: str = "sha256",
        part_size: int = 8 * 1024 * 1024,
        part_retry: RetryPolicy | None = None,
        part_concurrency: int = 2,
        concurrency: int = 16,
        max_workers: int | None = None,
        sse: ServerSideEncryption | None = None,
    ) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.sse = sse
        """The server-side encryption every write asks for (None: none asked)."""
        self._sse_params = _sse_params(sse)
        """What every PutObject and CreateMultipartUpload carries for ``sse``."""
        self._kms_key: str | None = None
        """The key an alias (or the default key) was found to name by the first answer
        (``sse_problem``); every later answer must name it too."""
        self.conditional_writes = conditional_writes
        if checksum not in ("sha256", "md5"):
            raise ConfigError(f"S3 checksum must be sha256 or md5, not {checksum!r}")
        self.checksum = checksum
        self._checksum_mode = {} if checksum == "md5" else {"ChecksumMode": "ENABLED"}
        self.part_size = max(part_size, multipart.MIN_PART)
        self.part_retry = part_retry or RetryPolicy()
        self.part_concurrency = max(1, part_concurrency)
        # One thread (and connection) per call at work, plus the parts of a streamed upload in
        # flight, plus a few for HEADs and the manifest: threads beyond that would only wait.
        max_workers = max_workers or concurrency + self.part_concurrency + 4
        self.requests = 0
        self._lock_enabled = False
        """Whether ``object_lock_enabled`` found Object Lock on (lock_status then confirms an
        unlocked HEAD with GetObjectRetention)."""
        config = Config(
            retries={"total_max_attempts": 1},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=max_workers,
            s3=_s3_config(addressing_style, checksum),  # type: ignore[arg-type]
            # With md5, no x-amz-checksum-* / aws-chunked trailers unless an operation needs one.
            request_checksum_calculation="when_required" if checksum == "md5" else None,
            response_checksum_validation="when_required" if checksum == "md5" else None,
        )
        session = boto3.session.Session()
        self.client = session.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        self.endpoint = self.client.meta.endpoint_url
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3-sink")

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def stream_threshold(self) -> int | None:
        """Objects of ``part_size`` or more stream (``archiver.sinks.streaming``), except in md5
        mode (each part's Content-MD5 needs the SHA-256 check first) and without conditional
        writes (the existing-object check comes before the upload): those go from the spool."""
        if self.checksum != "sha256" or not self.conditional_writes:
            return None
        return self.part_size

    async def begin(
        self, key: str, *, content_type: str, lock: Lock | None = None
    ) -> Upload | None:
        if self.stream_threshold is None:
            return None
        return await PartStream.begin(
            self, key, content_type=content_type, lock=lock, concurrency=self.part_concurrency
        )

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    async def call(self, what: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """Run one boto3 call in the pool; classify its failure."""
        loop = asyncio.get_running_loop()
        self.requests += 1
        try:
            return await loop.run_in_executor(self.pool, lambda: fn(**kwargs))
        except (ClientError, BotoCoreError) as exc:
            if not _recursion(exc):
                raise self._classify(exc, what) from None
            hint = _PERMANENT_CODES["301"].format(bucket=self.bucket, endpoint=self.endpoint)
            raise StoragePermanent(f"{what}: {hint}") from None
        except RecursionError:  # botocore's region redirect loops on a 301 that names no region
            hint = _PERMANENT_CODES["301"].format(bucket=self.bucket, endpoint=self.endpoint)
            raise StoragePermanent(f"{what}: {hint}") from None

    async def call_unless(
        self, codes: frozenset[str], what: str, fn: Callable[..., T], /, **kwargs: Any
    ) -> T | None:
        """Like ``call``, but None when the store answers with one of ``codes``."""

        def unless() -> T | None:
            try:
                return fn(**kwargs)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) in codes:
                    return None
                raise

        return await self.call(what, unless)

    def _classify(self, exc: Exception, what: str) -> StorageError:
        where = f"{what} ({self.describe()} at {self.endpoint})"
        if isinstance(exc, SSLError):  # not transient: stop, name the fix
            return StoragePermanent(certificate_message(what, self.endpoint, exc, s3=True))
        if isinstance(exc, NoCredentialsError):
            return StoragePermanent(
                f"{where}: no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                "or AWS_PROFILE"
            )
        if isinstance(
            exc,
            EndpointConnectionError
            | ConnectionClosedError
            | ReadTimeoutError
            | ConnectTimeoutError,
        ):
            return StorageUnavailable(f"{where}: cannot reach the store ({type(exc).__name__})")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            message = str(error.get("Message", ""))[:200]
            if (code.startswith("KMS") and code not in _KMS_RETRYABLE) or (
                code == "AccessDenied" and "kms:" in message.lower()
            ):
                # The key is missing, disabled, or not these credentials' to use: the same for
                # every object, not worth another attempt.
                return StoragePermanent(
                    f"{where}: {code} {message}".rstrip() + f"; {self._kms_fix()}"
                )
            if code in _PERMANENT_CODES:
                hint = _PERMANENT_CODES[code].format(bucket=self.bucket, endpoint=self.endpoint)
                return StoragePermanent(f"{what}: {hint}")
            if code == "404" and what.startswith("check"):
                return StoragePermanent(
                    f"{what}: bucket '{self.bucket}' does not exist at {self.endpoint}: create "
                    "it, or fix ARCHIVER_DESTINATION"
                )
            if code == "403" and what.startswith("check"):
                return StoragePermanent(
                    f"{what}: access denied to bucket '{self.bucket}' at {self.endpoint}: check "
                    "the credentials and the permissions in docs/storage.md"
                )
            if code in _RETRYABLE_CODES or status >= 500 or status == 429:
                return StorageUnavailable(f"{where}: {code or status} {message}".rstrip())
            if code in ("401", "403") or status in (401, 403) or code in _OBJECT_MISSING:
                # No code (a HEAD has no body): the credentials are refused, for every call.
                # NoSuchKey: an object that should be there is not (Sink.read's contract).
                return StoragePermanent(f"{where}: {code or status} {message}".rstrip())
            # Anything else is about this one object (400 InvalidArgument, 409, 411,
            # KeyTooLongError...): that call fails, the others go on.
            return StorageRejected(
                f"{where}: the store refused this object ({code or status} {message}".rstrip()
                + ")",
                code=str(code or status),
            )
        return StorageUnavailable(f"{where}: {type(exc).__name__}")

    def _kms_fix(self) -> str:
        """What a KMS refusal asks of the operator (names the key, never a secret)."""
        key = self.sse.kms_key_id if self.sse and self.sse.kms_key_id else None
        named = f"the KMS key {key}" if key else "the store's default KMS key"
        return (
            f"{named} must exist and be enabled, and these credentials need {_KMS_PERMISSIONS}; "
            "or set --sse to another mode"
        )

    def _asked(self) -> str:
        """The encryption asked, for people."""
        if self.sse is None:
            return "no server-side encryption"
        if self.sse.mode != "aws:kms":
            return self.sse.mode
        key = self.sse.kms_key_id
        named = f"KMS key {key}" if key else "the store's default KMS key"
        if _by_alias(key) and self._kms_key:
            named += f", found to be {self._kms_key}"
        return f"aws:kms ({named})"

    def encryption_problem(self, info: ObjectInfo) -> str | None:
        return self.sse_problem(info.sse, info.sse_kms_key_id)

    def sse_problem(self, mode: str | None, key_id: str | None) -> str | None:
        """Why an object the store reports stored with ``mode`` and ``key_id`` is not encrypted
        as asked; None if it is. ``mode`` must be the mode asked; with ``aws:kms`` the store
        must name a key, and that key must be the key id or ARN asked. An alias or the default
        key cannot be compared by its text: the first answer checked here tells which key it
        is, and every later one must name that same key."""
        if self.sse is None:
            return None
        if mode != self.sse.mode:
            return f"asked {self._asked()}, the store answered {_described(mode, key_id)}"
        if mode != "aws:kms":
            return None
        asked = self.sse.kms_key_id
        if not key_id:
            return f"asked {self._asked()}, the store answered aws:kms but named no KMS key"
        if not _by_alias(asked):
            assert asked is not None
            if kms_key_matches(asked, key_id):
                return None
            return f"asked {self._asked()}, the store answered with KMS key {key_id}"
        if self._kms_key is None:
            self._kms_key = key_id
            return None
        if _same_key(self._kms_key, key_id):
            return None
        return (
            f"asked {self._asked()}, the store answered with KMS key {key_id}: another key "
            f"than {asked or 'the default key'} named before"
        )

    async def _confirm_sse(
        self,
        key: str,
        full: str,
        mode: str | None,
        key_id: str | None,
        version: str | None,
        *,
        locked: bool,
    ) -> None:
        """The object just written is encrypted as asked (``sse_problem``), or the write failed:
        the version is deleted (unless Object Lock keeps it) and ``StoragePermanent`` raised —
        a store that ignores the setting ignores it for every object."""
        problem = self.sse_problem(mode, key_id)
        if problem is None:
            return
        if locked:
            fate = "the object stays: its Object Lock retention keeps it (delete it when it ends)"
        else:
            try:
                await self.delete(key, version_id=version)
                fate = "the object was deleted"
            except StorageError as exc:
                fate = f"the object could not be deleted ({exc}): delete it by hand"
        raise StoragePermanent(
            f"PUT {full}: the store did not encrypt the object as asked ({problem}); {fate}. "
            "The store does not honour the setting: check that it supports this server-side "
            'encryption (docs/storage.md, "Encryption at rest"), or change --sse'
        )

    async def check(self) -> None:
        await self.call("check the bucket", self.client.head_bucket, Bucket=self.bucket)

    async def check_writable(self) -> None:
        """HeadBucket, then a multipart upload of a probe key under ``_manifest/`` started and
        aborted at once. The store authorises the start as a PutObject (a read-only key, or a
        bucket policy denying writes, is refused here), yet no part is sent: no object, no
        version, nothing Object Lock could keep. An abort that fails leaves only an incomplete
        upload, never an object: it is logged, and the lifecycle rule of docs/storage.md ends
        it. The probes of earlier runs killed between their start and their abort are aborted
        here too (``multipart.abort_probes``), so none is left open for long."""
        await self.check()
        full = self._full(f"{PROBE_FOLDER}/.probe-{uuid.uuid4().hex}")
        what = (
            f"check that {self.describe()} takes new objects (a multipart upload of {full}, "
            "started and aborted at once)"
        )
        try:
            created = await self.call(
                what,
                self.client.create_multipart_upload,
                Bucket=self.bucket,
                Key=full,
                ContentType="application/octet-stream",
                **self._sse_params,
            )
        except StoragePermanent as exc:
            if self.sse is None or self.sse.mode != "aws:kms" or "kms" not in str(exc).lower():
                raise
            raise ConfigError(self._sse_refused(exc)) from None
        upload_id = str(created["UploadId"])
        try:
            if self.sse is not None:
                await self._probe_sse(full, upload_id)
        finally:
            await asyncio.shield(multipart._abort(self, full, upload_id))  # retried, logged
        await multipart.abort_probes(self, self._full(f"{PROBE_FOLDER}/.probe-"))

    async def _probe_sse(self, full: str, upload_id: str) -> None:
        """One byte sent as part 1 of the probe upload: the store encrypts it as asked (with
        SSE-KMS it asks KMS for a data key: kms:GenerateDataKey), and its answer says how —
        which resolves an alias (``sse_problem``). A refusal that outlasts the retries (AWS:
        KMS.NotFoundException, KMS.DisabledException, AccessDenied; SeaweedFS: 500) or an answer
        without the encryption asked is a ``ConfigError``. The upload is aborted by the caller."""
        what = f"send a 1-byte probe part to {full}"
        check = (
            {
                "ContentMD5": base64.b64encode(
                    hashlib.md5(b"\0", usedforsecurity=False).digest()
                ).decode()
            }
            if self.checksum == "md5"
            else {"ChecksumSHA256": base64.b64encode(hashlib.sha256(b"\0").digest()).decode()}
        )
        try:
            async for attempt in retrying(self.part_retry, what=what):
                with attempt:
                    answer = await self.call(
                        what,
                        self.client.upload_part,
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=1,
                        Body=b"\0",
                        ContentLength=1,
                        **check,
                    )
        except StorageError as exc:
            raise ConfigError(self._sse_refused(exc)) from None
        problem = self.sse_problem(answer.get("ServerSideEncryption"), answer.get("SSEKMSKeyId"))
        if problem is not None:
            raise ConfigError(
                f"{self.describe()} does not encrypt as asked: a probe part {problem}. Check that "
                'the store supports this server-side encryption (docs/storage.md, "Encryption '
                'at rest"), or change --sse. Nothing was archived.'
            )

    def _sse_refused(self, exc: StorageError) -> str:
        """The preflight's message for a store that refused to encrypt as asked."""
        if self.sse is not None and self.sse.mode == "aws:kms":
            fix = self._kms_fix()
        else:
            fix = "the store must support SSE-S3 (AES256), or set --sse none"
        return (
            f"{self.describe()} refused to store a probe encrypted with {self._asked()} ({exc}): "
            f"{fix}. Nothing was archived."
        )

    async def _head(self, key: str, **extra: str) -> dict[str, Any] | None:
        """HEAD the object at ``key``; None if there is none."""
        full = self._full(key)
        head = await self.call_unless(
            _MISSING, f"HEAD {full}", self.client.head_object, Bucket=self.bucket, Key=full, **extra
        )
        return None if head is None else dict(head)

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self._info(key)

    async def _info(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        head = await self._head(key, **self._checksum_mode, **_version(version_id))
        if head is None:
            return None
        return ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            sha256=_store_sha256(head),
            version_id=head.get("VersionId"),
            sse=head.get("ServerSideEncryption"),
            sse_kms_key_id=head.get("SSEKMSKeyId"),
        )

    async def _read_back(self, full: str, version_id: str | None = None) -> tuple[int, str]:
        """Size and SHA-256 of the stored object, by reading it: 1 MiB at a time, each read and
        its hashing in the pool (bounded memory, the event loop never blocked)."""
        answer = await self.call(
            f"GET {full}",
            self.client.get_object,
            Bucket=self.bucket,
            Key=full,
            **_version(version_id),
        )
        stream = answer["Body"]
        digest, size = hashlib.sha256(), 0

        def step() -> int:
            chunk = stream.read(_CHUNK)
            digest.update(chunk)
            return len(chunk)

        loop = asyncio.get_running_loop()
        try:
            while n := await loop.run_in_executor(self.pool, step):
                size += n
        except (BotoCoreError, OSError) as exc:
            raise self._cut_off(full, exc) from None
        finally:
            stream.close()
        return size, digest.hexdigest()

    def _cut_off(self, full: str, exc: Exception) -> StorageUnavailable:
        return StorageUnavailable(
            f"GET {full} ({self.describe()} at {self.endpoint}): the body was cut off "
            f"({type(exc).__name__})"
        )

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
        full = self._full(key)
        locking = _lock_params(lock)
        if not self.conditional_writes:
            existing = await self.stat(key)
            if existing is not None:
                return await self._adopt(key, full, existing, size, sha256)
        actual = body.seek(0, 2)
        if actual != size:  # a short body would leave the store waiting for bytes that never come
            raise StoragePermanent(
                f"PUT {full}: the body has {actual} bytes, not the {size} announced"
            )
        if size >= self.part_size:
            return await self._put_multipart(key, full, body, size, sha256, content_type, locking)
        if size >= multipart.MIN_PART:
            # An object this large may have been streamed or sent in parts by a run that was
            # killed (with a smaller ARCHIVER_PART_SIZE then): its upload is aborted here too,
            # not only before an upload in parts. One listing, for large objects only.
            await multipart._abort_leftovers(self, full)
        # Below the part size the body is sent from memory: one sendall instead of the 8 KiB
        # reads http.client makes of a file (a third of the CPU of an upload), at most
        # part_size per concurrent upload, and still rewindable for a retry.
        data = await asyncio.get_running_loop().run_in_executor(self.pool, _read_all, body)
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": full,
            "Body": data,
            "ContentLength": size,
            "ContentType": content_type,
            "Metadata": {"sha256": sha256},
            **locking,
            **self._sse_params,
        }
        if self.checksum == "md5":
            params["ContentMD5"] = await self._content_md5(full, io.BytesIO(data), size, sha256)
        else:
            params["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
        if self.conditional_writes:
            params["IfNoneMatch"] = "*"
        answer = await self.call_unless(_EXISTS, f"PUT {full}", self.client.put_object, **params)
        if answer is None:  # If-None-Match: * refused: something is already at the key
            return await self._already_there(key, full, size, sha256)
        version = answer.get("VersionId")
        stored: ObjectInfo | None = None
        if answer.get("ChecksumSHA256") != params.get("ChecksumSHA256", "-"):
            # No echo of the SHA-256 the store verified (md5 mode, or a store that does not
            # say): the store's own checksum on HEAD, else the bytes read back, must be ours.
            stored = await self._info(key, version)
            if stored is None:
                raise StoragePermanent(
                    f"PUT {full}: the store accepted the upload but has no object there"
                )
            length, found = stored.size, stored.sha256
            if length == size and found is None:
                length, found = await self._read_back(full, version or stored.version_id)
            if length != size or found != sha256:
                raise StoragePermanent(
                    f"PUT {full}: the store accepted the upload but holds {length} bytes, "
                    f"sha256 {found or 'unknown'}, instead of {size} bytes, sha256 {sha256}"
                )
        # The encryption: the answer's, else (asked, and not in the answer) the HEAD's.
        mode, key_id = answer.get("ServerSideEncryption"), answer.get("SSEKMSKeyId")
        if mode is None and self.sse is not None:
            stored = stored or await self._info(key, version)
            if stored is not None:
                mode, key_id = stored.sse, stored.sse_kms_key_id
        await self._confirm_sse(key, full, mode, key_id, version, locked=lock is not None)
        return self._created(key, size, sha256, version, mode, key_id)

    async def _content_md5(self, full: str, body: BinaryIO, size: int, sha256: str) -> str:
        """The body's Content-MD5, after checking that its SHA-256 is the one announced."""

        def digests() -> tuple[str, str]:
            body.seek(0)
            md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
            while chunk := body.read(1024 * 1024):
                md5.update(chunk)
                sha.update(chunk)
            return base64.b64encode(md5.digest()).decode(), sha.hexdigest()

        content_md5, actual = await asyncio.get_running_loop().run_in_executor(self.pool, digests)
        if actual != sha256:
            raise StoragePermanent(
                f"PUT {full}: the body's sha256 is {actual}, not the {sha256} announced; "
                "nothing was sent"
            )
        return content_md5

    async def _put_multipart(
        self,
        key: str,
        full: str,
        body: BinaryIO,
        size: int,
        sha256: str,
        content_type: str,
        locking: dict[str, Any],
    ) -> PutResult:
        done = await multipart.upload(
            self,
            full,
            body,
            size=size,
            sha256=sha256,
            content_type=content_type,
            part_size=self.part_size,
            retry=self.part_retry,
            extra={**locking, **self._sse_params},
        )
        if done is None:  # If-None-Match: * refused the completion: something is already there
            return await self._already_there(key, full, size, sha256)
        return await self._verify_completed(key, full, size, sha256, done)

    async def _verify_completed(
        self, key: str, full: str, size: int, sha256: str, done: multipart.Completed
    ) -> PutResult:
        """A completed multipart upload holds our bytes: HEAD (the composite of the part
        checksums the store verified, or its whole SHA-256), else the object read back. If that
        fails (a completion acknowledged but not made, a HEAD that outlasts its retries), the
        upload is aborted too: should it still be open, its parts are not left billed (an
        upload the store did complete is gone already, and the abort of it is a no-op)."""
        try:
            return await self._check_completed(key, full, size, sha256, done)
        except BaseException:
            if done.upload_id:
                await asyncio.shield(multipart._abort(self, full, done.upload_id))
            raise

    async def _check_completed(
        self, key: str, full: str, size: int, sha256: str, done: multipart.Completed
    ) -> PutResult:
        version = done.answer.get("VersionId")
        head = await self.call(
            f"HEAD {full}",
            self.client.head_object,
            Bucket=self.bucket,
            Key=full,
            **self._checksum_mode,
            **_version(version),
        )
        length, reported = int(head["ContentLength"]), head.get("ChecksumSHA256")
        found = _store_sha256(head)
        if length == size and not reported:  # no checksum of the store's (md5 mode): read back
            length, found = await self._read_back(full, version)
        # Proof: the composite of the part checksums the store verified, or the whole object's
        # SHA-256 (reported by the store, or read back).
        if length != size or (reported != done.composite and found != sha256):
            raise StoragePermanent(
                f"PUT {full}: the store completed the upload but holds {length} bytes, checksum "
                f"{reported or found or 'unknown'}, instead of {size} bytes, checksum "
                f"{done.composite} (sha256 {sha256})"
            )
        # The create and complete answers need not say how the object is encrypted (SeaweedFS:
        # they do not); the HEAD of the completed object does.
        mode, key_id = head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")
        version = version or head.get("VersionId")
        await self._confirm_sse(key, full, mode, key_id, version, locked=_locked(head))
        return self._created(key, size, sha256, version, mode, key_id)

    def _created(
        self,
        key: str,
        size: int,
        sha256: str,
        version_id: str | None,
        sse: str | None,
        sse_kms_key_id: str | None,
    ) -> PutResult:
        return PutResult(
            key=key,
            size=size,
            sha256=sha256,
            created=True,
            location=self.location(key),
            version_id=version_id,
            sse=sse,
            sse_kms_key_id=sse_kms_key_id,
        )

    async def _already_there(self, key: str, full: str, size: int, sha256: str) -> PutResult:
        """The store refused to overwrite (If-None-Match: *): same bytes, or a conflict."""
        existing = await self.stat(key)
        if existing is None:
            raise StorageUnavailable(f"PUT {full}: precondition failed, then nothing there")
        return await self._adopt(key, full, existing, size, sha256)

    async def _adopt(
        self, key: str, full: str, existing: ObjectInfo, size: int, sha256: str
    ) -> PutResult:
        """An object is already at the key. It is ours (nothing is written) only on proof: the
        SHA-256 the store computed of it, else its bytes read back and hashed. Metadata, ours
        or anyone's, proves nothing. Anything else is a conflict, and the object is kept.
        Our bytes stored without the encryption asked (``sse_problem``) are a conflict too: the
        object is kept, not re-written."""
        found_size, found = existing.size, existing.sha256
        if found_size == size and found is None:
            found_size, found = await self._read_back(full, existing.version_id)
        if found_size == size and found == sha256:
            problem = self.sse_problem(existing.sse, existing.sse_kms_key_id)
            if problem is not None:
                raise StorageConflict(
                    f"conflict at {self.location(key)}: an object with our bytes is already "
                    f"there, stored {_described(existing.sse, existing.sse_kms_key_id)}, but "
                    f"{self._asked()} is asked ({problem}). It was kept, not replaced: copy it "
                    "onto itself with the encryption asked (aws s3 cp --sse ...), or archive "
                    "with the setting it has"
                )
            return PutResult(
                key=key,
                size=size,
                sha256=sha256,
                created=False,
                location=self.location(key),
                version_id=existing.version_id,
                sse=existing.sse,
                sse_kms_key_id=existing.sse_kms_key_id,
            )
        raise StorageConflict(
            f"conflict at {self.location(key)}: an object with other content is already there "
            f"({found_size} bytes, sha256 {found or 'unknown'}; ours: {size} bytes, "
            f"sha256 {sha256}). It was kept, not replaced: investigate before archiving this call"
        )

    # --- Object Lock ---------------------------------------------------------------------------

    async def object_lock_enabled(self) -> bool:
        answer = await self.call_unless(
            _NO_LOCK_CONFIG,
            "read the bucket's Object Lock configuration",
            self.client.get_object_lock_configuration,
            Bucket=self.bucket,
        )
        found: dict[str, Any] = dict(answer or {})
        config: dict[str, Any] = dict(found.get("ObjectLockConfiguration") or {})
        self._lock_enabled = config.get("ObjectLockEnabled") == "Enabled"
        return self._lock_enabled

    async def lock_status(self, key: str, version_id: str | None = None) -> LockStatus | None:
        head = await self._head(key, **_version(version_id))
        if head is None:
            return None
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        hold = head.get("ObjectLockLegalHoldStatus")
        version = head.get("VersionId") or version_id
        if mode is None and self._lock_enabled:
            retention = await self._ask_lock(key, version, "Retention")
            mode, until = retention.get("Mode"), retention.get("RetainUntilDate")
        if hold is None and self._lock_enabled:
            hold = (await self._ask_lock(key, version, "LegalHold")).get("Status")
        return LockStatus(
            mode=mode,
            until=until,
            legal_hold=hold == "ON",
            version_id=head.get("VersionId"),
        )

    async def _ask_lock(self, key: str, version: str | None, part: str) -> dict[str, Any]:
        """The version's ``Retention`` or ``LegalHold``, asked with its own request.

        AWS shows a version's retention (legal hold) in HEAD only to callers allowed
        s3:GetObjectRetention (s3:GetObjectLegalHold); to others a locked version looks
        unlocked. So in a bucket with Object Lock a HEAD without them is asked again, where
        "none" is an answer ({}) and a missing permission an error that names it."""
        full = self._full(key)
        operation, fn, codes = (
            ("GetObjectRetention", self.client.get_object_retention, _NO_RETENTION)
            if part == "Retention"
            else ("GetObjectLegalHold", self.client.get_object_legal_hold, _NO_LEGAL_HOLD)
        )
        answer: Any = await self.call_unless(
            codes,
            f"read the {part} of {full} ({operation}: the credentials need s3:{operation}, "
            "docs/compliance.md)",
            fn,
            Bucket=self.bucket,
            Key=full,
            **_version(version),
        )
        return dict(dict(answer or {}).get(part) or {})

    async def set_retention(
        self,
        key: str,
        lock: Lock,
        *,
        version_id: str | None = None,
        bypass_governance: bool = False,
    ) -> None:
        """PutObjectRetention. ``x-amz-bypass-governance-retention`` goes only with
        ``bypass_governance`` and only for GOVERNANCE → COMPLIANCE with a date not earlier than
        the stored one (one HEAD to see the stored lock); everything else goes without it, so
        the store itself refuses to shorten or weaken. Between that HEAD and the PUT another
        principal could extend the GOVERNANCE date; the PUT would then set the date asked."""
        full = self._full(key)
        what = f"set the retention of {full} to {lock.mode} until {lock.until:%Y-%m-%d %H:%M:%S}"
        bypass, hint = False, ""
        if bypass_governance and lock.mode != "COMPLIANCE":
            hint = "the bypass header was not sent: it is only for GOVERNANCE to COMPLIANCE"
        elif bypass_governance:
            stored = await self.lock_status(key, version_id)
            if stored is not None and stored.mode == "GOVERNANCE":
                if stored.until is not None and lock.until < stored.until:
                    hint = (
                        "the bypass header was not sent: the stored GOVERNANCE date "
                        f"{stored.until:%Y-%m-%d %H:%M:%S} is later than the date asked, and "
                        "the bypass never shortens"
                    )
                else:
                    bypass = True
        elif lock.mode == "COMPLIANCE":
            hint = _STRENGTHEN_HINT
        if bypass:
            hint = (
                "with the governance bypass: these credentials lack s3:BypassGovernanceRetention "
                "(docs/storage.md)"
            )
        await self._locked_call(
            what,
            self.client.put_object_retention,
            hint=hint,
            Bucket=self.bucket,
            Key=full,
            Retention={"Mode": lock.mode, "RetainUntilDate": lock.until},
            **_version(version_id),
            **({"BypassGovernanceRetention": True} if bypass else {}),
        )

    async def set_legal_hold(self, key: str, on: bool, *, version_id: str | None = None) -> None:
        full = self._full(key)
        await self._locked_call(
            f"{'place' if on else 'lift'} the legal hold on {full}",
            self.client.put_object_legal_hold,
            Bucket=self.bucket,
            Key=full,
            LegalHold={"Status": "ON" if on else "OFF"},
            **_version(version_id),
        )

    async def delete(self, key: str, *, version_id: str | None = None) -> None:
        full = self._full(key)
        versions: list[str | None] = [version_id] if version_id else [*await self._versions(full)]
        for version in versions or [None]:  # None: an unversioned bucket, plain DELETE
            await self._locked_call(
                f"delete {full}" + (f" (version {version})" if version else ""),
                self.client.delete_object,
                Bucket=self.bucket,
                Key=full,
                **_version(version),
            )

    async def _versions(self, full: str) -> list[str]:
        """Every version id stored for ``full`` (so a delete erases, not just hides)."""
        answer = await self.call(
            f"list the versions of {full}",
            self.client.list_object_versions,
            Bucket=self.bucket,
            Prefix=full,
        )
        found = [*answer.get("Versions", []), *answer.get("DeleteMarkers", [])]
        return [
            str(v["VersionId"])
            for v in found
            if v.get("Key") == full and v.get("VersionId") not in (None, "null")
        ]

    async def _locked_call(
        self, what: str, fn: Callable[..., Any], /, *, hint: str = "", **kwargs: Any
    ) -> None:
        """A call that Object Lock may refuse: AccessDenied becomes ``StorageLocked`` (with
        ``hint``, when the caller knows more about why)."""
        if await self.call_unless(frozenset({"AccessDenied"}), what, fn, **kwargs) is None:
            raise StorageLocked(
                f"{what}: refused (AccessDenied) by {self.describe()}: the object is protected by "
                "its Object Lock retention or a legal hold — or these credentials lack the "
                "permission (docs/compliance.md lists them)" + (f"; {hint}" if hint else "")
            )

    async def read(self, key: str) -> AsyncIterator[bytes]:
        full = self._full(key)
        answer = await self.call(
            f"GET {full}", self.client.get_object, Bucket=self.bucket, Key=full
        )
        stream = answer["Body"]
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    chunk = await loop.run_in_executor(self.pool, stream.read, _CHUNK)
                except (BotoCoreError, OSError) as exc:  # the body cut off, a reset, a timeout
                    raise self._cut_off(full, exc) from None
                if not chunk:
                    break
                yield chunk
        finally:
            stream.close()

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + prefix}
            if token:
                params["ContinuationToken"] = token
            page = await self.call("LIST", self.client.list_objects_v2, **params)
            for item in page.get("Contents", []):
                yield ObjectInfo(key=item["Key"][len(base) :], size=int(item["Size"]))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")

    async def close(self) -> None:
        self.pool.shutdown(wait=True)
