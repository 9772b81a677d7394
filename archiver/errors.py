"""Every error the archiver raises on purpose, and whether trying again can help.

The tree::

    ArchiverError                 base; ``retryable``: may the same request succeed later?
    ├── ConfigError               bad settings or arguments (CLI exit code 2); never retryable
    │   ├── CertificateError      an endpoint's TLS certificate failed verification (private CA,
    │   │                         wrong host, interception); stops the run; names the fix
    │   └── DestinationMismatch   the state directory and the destination do not belong together
    │                             (changed destination, another archive's destination, a second
    │                             writer, a wiped destination): stops before any API request
    ├── InvalidCallSid            a call SID that cannot safely become part of an object key
    ├── DecryptionError           ``exotel-archiver decrypt`` refuses an object: not an envelope,
    │                             encrypted to another key, altered, cut or extended
    │                             (archiver.envelope); not retryable; nothing written for it
    ├── UnsafeAddress             a URL Exotel handed us (recording, voice log) whose scheme or
    │   │                         address the address policy refuses (archiver.addresses);
    │   │                         not retryable; fails that call only
    │   └── BadUrl                not a well-formed http(s) URL: no host, an empty or over-long
    │                             host label, a port out of range, spaces or control characters,
    │                             a name IDNA cannot encode, absurd length; fails that call only
    ├── ExotelError               the Exotel API (v1/v3) answered with an error, or not at all
    │   ├── ExotelBadRequest      400: our request was wrong; not retryable
    │   ├── ExotelAuthError       401/403: API key/token or account SID wrong; not retryable
    │   ├── ExotelNotFound        404: no such call (or endpoint not enabled); not retryable
    │   ├── ExotelRateLimited     429: retryable, honouring ``retry_after``
    │   ├── ExotelServerError     5xx: retryable
    │   ├── ExotelConnectionError network failure or timeout: retryable
    │   └── ExotelProtocolError   a 2xx answer not in the documented shape; not retryable
    ├── RecordingError            the pre-signed recording URL (not the API)
    │   ├── RecordingExpired      403 "Request has expired"/AccessDenied: not retried as is; the
    │   │                         worker fetches a fresh URL from the call details (bounded)
    │   ├── RecordingAuthRequired 401: a private recording (no signature) that needs HTTP Basic,
    │   │                         and the credentials were not sent to it (host not in
    │   │                         ARCHIVER_RECORDING_AUTH_HOSTS, not https) or not accepted;
    │   │                         not retryable
    │   ├── RecordingUnavailable  any other refusal (404, 400, bad signature); not retryable as is
    │   ├── RecordingTransferError body cut off, length mismatch, network failure: retryable
    │   ├── RecordingTooLarge     over ARCHIVER_MAX_RECORDING_SIZE (announced or streamed); not
    │   │                         retryable
    │   └── NotARecording         an HTML/XML page or empty body where audio was expected
    └── StorageError              the destination (S3-compatible bucket or local directory)
        ├── StorageConflict       an object already exists at the key with other bytes; never
        │                         overwritten, reported loudly; not retryable
        ├── StorageUnavailable    retryable: 5xx, SlowDown, timeouts, connection resets
        ├── StoragePermanent      bucket missing, access denied, bad credentials, a read-only
        │   │                     or full destination: concerns every call; stops the run
        │   └── ManifestConflict  the destination holds a manifest segment this ledger did not
        │                         write (another worker's, or written by hand); stops the run
        ├── StorageRejected       the store refused this one object (an unrecognised 4xx:
        │                         InvalidArgument, 409, 411, KeyTooLong...; a file name the
        │                         local file system refuses): fails that call only; not retryable
        ├── DestinationFull   the local destination's disk is full: concerns every call, stops
        │                         the run with exit 1 (systemd restarts it; it goes on once space
        │                         is freed) before more recordings are downloaded for nothing
        ├── StoreRefusesAll   a one-shot command's first objects all refused alike
        │                         (``StorageRejected`` with one code, nothing stored): exit 1
        └── StorageLocked         a delete or retention change refused: Object Lock retention or
                                  a legal hold protects the object; not retryable

What stops a run and what fails one call: ``ConfigError`` (certificates and destination
mismatches included), ``ExotelAuthError`` and ``StoragePermanent`` concern every call and stop
the run (exit code 2); every other error fails the call it happened in, with its reason
(``error_reason``), and the run goes on. An exception outside this tree while archiving one call
is a bug: that call is failed with the reason ``internal_error`` (logged once with its
traceback) and the run goes on — unless it is an ``OSError``, ``sqlite3.Error`` or
``MemoryError`` of the worker itself (its state directory, its ledger), which concern every call:
the CLI reports those in one line (``archiver.state_errors``: exit 1 for a full disk or an I/O
error, 2 for a state directory read-only, not permitted or removed).

Errors are classified where the wire protocol is spoken (``archiver.exotel.client``,
``archiver.transfer``, ``archiver.sinks.*``); everything else looks only at ``retryable``.
Messages never contain secrets: URLs in them are passed through ``archiver.redact`` first.
"""

from __future__ import annotations

import re


class ArchiverError(Exception):
    """Base of all errors the archiver raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConfigError(ArchiverError):
    """A setting or argument is missing or wrong. The message names it and the fix."""


class DestinationMismatch(ConfigError):
    """The state directory's ledger and the destination are not one archive (``archiver.identity``).

    Going on would report calls archived that the destination does not hold, or mix two writers'
    manifests. The message names both places and the fix."""


class CertificateError(ConfigError):
    """TLS certificate verification failed for an endpoint (Exotel API, recording host, S3).

    Verification is never turned off; the message (``archiver.tls.certificate_refused``) names
    the endpoint, the reason and the fix (a CA bundle through SSL_CERT_FILE or AWS_CA_BUNDLE).
    """


class InvalidCallSid(ArchiverError):
    """A call SID that is not of the expected shape (slashes, '..', control characters, empty)."""


class DecryptionError(ArchiverError):
    """An encrypted object (``archiver.envelope``) that cannot be restored: not an envelope,
    encrypted to another key (the message names both fingerprints), or its ciphertext altered,
    reordered, cut or extended. Never retryable; the message holds no key material."""


class UnsafeAddress(ArchiverError):
    """A URL from Exotel that the address policy refuses: not http(s), or a host that is (or
    resolves to) a loopback, link-local, private, metadata or otherwise non-public address."""


class BadUrl(UnsafeAddress):
    """A URL from Exotel that is not a well-formed http(s) URL (``archiver.addresses``): no host,
    an empty or over-long host label, a port out of range, spaces or control characters, a name
    IDNA cannot encode, thousands of characters. No connection is attempted; that call fails."""


# --- Exotel API ------------------------------------------------------------------------------


class ExotelError(ArchiverError):
    """The Exotel API answered with an error (or did not answer)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        exotel_code: int | str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.exotel_code = exotel_code


class ExotelBadRequest(ExotelError):
    """HTTP 400: the request was not accepted as sent."""


class ExotelAuthError(ExotelError):
    """HTTP 401/403: the API key, token or account SID is wrong."""


class ExotelNotFound(ExotelError):
    """HTTP 404: no such call, or the endpoint is not enabled for the account."""


class ExotelRateLimited(ExotelError):
    """HTTP 429: too many requests. ``retry_after`` is the server's hint in seconds, if any."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        exotel_code: int | str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, exotel_code=exotel_code)
        self.retry_after = retry_after


class ExotelServerError(ExotelError):
    """HTTP 5xx: Exotel failed; the same request may succeed later."""

    retryable = True


class ExotelConnectionError(ExotelError):
    """No usable answer: connection refused or reset, DNS failure, timeout."""

    retryable = True


class ExotelProtocolError(ExotelError):
    """A successful status, but a body that is not in the documented shape."""


# --- recording host --------------------------------------------------------------------------


class RecordingError(ArchiverError):
    """Fetching a recording from its pre-signed URL failed."""


class RecordingExpired(RecordingError):
    """The pre-signed URL was refused (403: expired, or its signature no longer valid).

    Retrying the same URL cannot help, so ``retryable`` is False; a fresh URL from the call
    details can, and the worker fetches one (a bounded number of times).
    """


class RecordingAuthRequired(RecordingError):
    """The recording host answered 401: the recording is private (``archiver.recording_auth``).

    The message says whether the Exotel credentials were sent and, if not, why not, and names
    the fix: the host in ARCHIVER_RECORDING_AUTH_HOSTS and an https URL, or pre-signed URLs
    enabled on the account. Retrying the same request cannot help."""


class RecordingUnavailable(RecordingError):
    """The recording host refused for a reason a fresh URL would not fix."""


class RecordingTransferError(RecordingError):
    """The body was cut off, was shorter or longer than announced, or the connection failed."""

    retryable = True


class RecordingTooLarge(RecordingError):
    """The recording is larger than the configured cap (``archiver.max_recording_size``)."""


class NotARecording(RecordingError):
    """The body is not audio: an HTML/XML error page with status 200, or empty."""


# --- destination -----------------------------------------------------------------------------


class StorageError(ArchiverError):
    """Writing to or reading from the destination failed."""


class StorageConflict(StorageError):
    """An object already exists at the key with different content. It is kept, never replaced."""


class StorageUnavailable(StorageError):
    """A transient failure of the destination (5xx, SlowDown, timeout, reset)."""

    retryable = True


class StoragePermanent(StorageError):
    """The destination refuses for good: no such bucket, access denied, bad credentials."""


class ManifestConflict(StoragePermanent):
    """A manifest segment is already stored under the number this ledger seals next, and its bytes
    are not what this ledger would write there: another writer uses this destination's manifest.
    Nothing is marked sealed; the run stops."""


class StorageRejected(StorageError):
    """The store refused this one object for a reason that does not concern the others: an S3
    answer outside the known account-wide and transient ones (400 InvalidArgument, 409, 411,
    KeyTooLongError...), or a file name the local file system refuses. Not retried as is; the
    call fails with this reason and the run goes on — unless the same refusal keeps coming with
    nothing stored in between (``archiver.archive.REJECT_STREAK`` calls): then a one-shot
    command stops (``StoreRefusesAll``) and the worker warns (it never stops on it: a false
    stop would keep it down).

    ``code``: the store's error code (``InvalidArgument``, ``409``, ``ENAMETOOLONG``...)."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class DestinationFull(StorageError):
    """The local destination's disk is full (ENOSPC, EDQUOT). Every call would fail alike
    after downloading its recordings, so the run stops (exit 1, not a configuration error:
    space can be freed, and systemd restarts the worker)."""


class StoreRefusesAll(StorageError):
    """A one-shot command's first ``REJECT_STREAK`` calls were all refused by the store with
    the same code and nothing was stored: the store refuses every object (a bucket policy, a
    gateway), and going on would download every recording for nothing. Exit 1."""


class StorageLocked(StorageError):
    """The store refuses to delete or weaken an object: retention or a legal hold protects it."""


def error_reason(exc: BaseException) -> str:
    """The kind of an error, for metrics: ``RecordingExpired`` → ``recording_expired``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
