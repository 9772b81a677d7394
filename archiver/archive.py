"""Archiving calls by SID: call details → recordings → destination → ledger and manifest.

``archive_calls(settings, call_sids)`` is the plain function behind ``exotel-archiver archive``
(and the demo). For each call it:

1. skips it if the ledger says it is archived already (no API request spent);
2. fetches the v3 call details (rate-limited, retried);
3. leaves an ``active`` call for later (outcome ``not_ready``: recorded, not lost) — or, with a
   ``waiter`` (``archive --wait``, ``archiver.waiting``), looks at it again until it is done;
4. for a ``terminal`` call, streams each recording into a spool file while hashing, stores it
   write-once with its SHA-256 (the store verifies the bytes), and only then records the object
   in the ledger and the manifest. An expired URL is refreshed through the call details (a new API
   request) up to ``url_refreshes`` times; a cut-off body is downloaded again;
5. marks the call ``archived`` once every recording is stored — or ``failed`` with the reason.
   A call whose objects were all in the ledger already is marked so too, but reported
   ``already_archived``: nothing was stored in this run.

Errors that concern every call (bad Exotel credentials, a missing bucket, denied access, a
certificate refused) stop the run with that error instead of failing each call in turn. Every
other error fails only the call it happened in, with its reason: a malformed recording URL
(``bad_url``), one the address policy refuses (``unsafe_address``), one object the store refuses
(``storage_rejected``)... An exception outside the error tree (a bug) fails that call as
``internal_error``, logged once with its traceback, and the run goes on; an ``OSError``,
``sqlite3.Error`` or ``MemoryError`` of the worker's own (its state directory, its ledger)
concerns every call and stops it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import aiohttp

from archiver.addresses import AddressPolicy
from archiver.config import Settings
from archiver.encryption import found_at
from archiver.errors import (
    ArchiverError,
    CertificateError,
    DestinationFull,
    ExotelAuthError,
    ExotelNotFound,
    InvalidCallSid,
    RecordingError,
    RecordingExpired,
    RecordingUnavailable,
    StoragePermanent,
    StorageRejected,
    StoreRefusesAll,
    UnsafeAddress,
    error_reason,
)
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import ListedCall
from archiver.exotel.models import CallDetails, Recording, validate_call_sid
from archiver.exotel.v1 import details_from_listing, file_of, v1_files, v1_files_of, v1_record
from archiver.expiry import RateMeter, too_close, url_deadline
from archiver.files import make_dirs
from archiver.keys import CALL_JSON, LEGS_JSON, V1_JSON, VOICE_LOG_JSON
from archiver.ledger import Ledger, ObjectRecord, writer_lock
from archiver.manifest import ManifestWriter
from archiver.preflight import preflight
from archiver.ratelimit import RateLimiter
from archiver.recorder import Binding, Recorder
from archiver.recording_auth import RecordingAuth
from archiver.redact import redact_text, strip_signed_urls, strip_url
from archiver.report import (
    ALREADY_ARCHIVED,
    ARCHIVED,
    FAILED,
    NO_RECORDING,
    NOT_READY,
    RESCUED,
    CallResult,
    Report,
)
from archiver.retention.binding import as_bound, bind_rescued, both_floors, bound_now
from archiver.retry import retrying
from archiver.segments import seal
from archiver.sinks import Sink, open_sink
from archiver.transfer import Downloaded, Partial, download, recording_session, sniff_format
from archiver.waiting import Waiter

log = logging.getLogger("archiver.archive")
INTERNAL_ERROR = "internal_error"
"""The reason of a call failed by an exception outside the error tree (a bug)."""


Refresh = Callable[[CallDetails, int], Awaitable[str]]
"""Fetches a fresh URL for (call, index) when one has expired (an API request)."""

Known = dict[tuple[str, int], ObjectRecord]
"""A call's objects in the ledger by (kind, index), read once per call."""

REJECT_STREAK = 5
"""Calls refused by the store with the same code, in a row with no recording stored in between,
after which it is taken to refuse every object (``Archiver._rejected``)."""


ENCRYPTED_TO = "encrypted_to"
"""The ledger's worker state: the fingerprint the last run encrypted audio to ("" for none)."""


class Archiver:
    """The resources of one run (clients, sink, ledger, manifest) and the per-call logic."""

    def __init__(
        self,
        settings: Settings,
        *,
        sink: Sink,
        ledger: Ledger,
        manifest: ManifestWriter,
        exotel: ExotelClient,
        http: aiohttp.ClientSession,
        stop_on_refusals: bool = True,
        archiving: bool = True,
    ) -> None:
        self.settings = settings
        self.stop_on_refusals = stop_on_refusals
        """A one-shot command stops when the store refuses every object; the worker warns."""
        self.ledger = ledger
        self.exotel = exotel
        self.http = http
        self.recorder = Recorder(
            sink,
            ledger,
            manifest,
            socket.gethostname(),
            segment_size=settings.segment_entries,
            policy=settings.retention,
            encrypt_to=settings.encrypt_to,
            spool_dir=settings.state_dir / "spool",
        )
        self.spool_dir = settings.state_dir / "spool"
        make_dirs(self.spool_dir)  # 0700: the spool files hold recordings
        if archiving:  # a run that archives (not repair): what it encrypts to is said, kept
            self._say_encryption(settings, ledger)
        self.rates = RateMeter()
        self.addresses = address_policy(settings)
        self.recording_auth = RecordingAuth.from_settings(settings)
        self.url_refreshes = 0
        """Fresh URLs fetched, after a 403 or ahead of a deadline: API requests they cost."""
        self.rescue_fallbacks = 0
        """Rescues whose URL could not serve the call, archived through v3 instead."""
        self._reject_streak: tuple[str, set[str]] = ("", set())
        self._stored_at = 0
        self._v1_files: dict[str, set[tuple[str, str, str]]] = {}
        """The files of the v1 recording URLs of each call being rescued now."""
        self._folders: dict[str, str] = {}
        """The folder of each rescued call being enriched now: where its rescue put it."""
        self._rescued: set[str] = set()
        """Calls being enriched now (rescued before): any outcome short of archived keeps them
        rescued in the ledger."""

    @staticmethod
    def _say_encryption(settings: Settings, ledger: Ledger) -> None:
        """Say what this run encrypts the audio to; warn when it is not what the run before
        encrypted to (``--encrypt-to`` dropped or changed between runs: a setting that a
        compliance policy may depend on, changed silently)."""
        now = settings.encrypt_to.fingerprint if settings.encrypt_to is not None else ""
        before = ledger.state(ENCRYPTED_TO)
        if now:
            log.info(
                "recordings and voice-log files are encrypted to %s before they are stored", now
            )
        if before and before != now:
            log.warning(
                "the run before encrypted recordings to %s; this one %s: if that is not meant, "
                "stop and set --encrypt-to (ARCHIVER_ENCRYPT_TO) to that public key",
                before,
                f"encrypts them to {now}" if now else "stores them UNENCRYPTED",
            )
        if before != now and (before or now):
            ledger.set_state(ENCRYPTED_TO, now)

    async def archive_call(self, call_sid: str) -> CallResult:
        """Archive one call. Never raises for a per-call failure: the result says ``failed``.
        A rescued call (``rescue_call``) is enriched: its v3 details complete it."""
        seen = _Attempt()

        async def work() -> CallResult:
            validate_call_sid(call_sid)
            before = self.ledger.call_outcome(call_sid)
            if before == ARCHIVED:
                return CallResult(call_sid, ALREADY_ARCHIVED, self.ledger.objects_of(call_sid))
            seen.known_failed = before == FAILED
            if before == RESCUED:
                self._rescued.add(call_sid)  # an enrichment: its failure keeps it rescued
            details, raw = await self.exotel.call_details(call_sid)
            seen.created = details.created_time.isoformat()
            return await self._archive_details(details, raw, fetched_at=time.time())

        try:
            return await self._guarded(call_sid, work, seen)
        finally:
            self._rescued.discard(call_sid)
            self._folders.pop(call_sid, None)

    async def rescue_call(
        self, listed: ListedCall, url: str, binding: Binding = None
    ) -> CallResult:
        """Rescue a call from its v1 listing item: store the recording ``url`` (the item's
        pre-signed or private URL) as ``recording-1`` and the item beside it as
        ``call-v1.json``, then mark the call ``rescued`` (its v3 details not fetched yet).

        The same transfer path as every recording (spool, content gate, checksum, write-once,
        ledger and manifest). No API request is made — unless the URL cannot serve it (expired,
        too close to its end, refused, not a recording): then the call goes the v3 way
        (``archive_call``), which fetches fresh URLs. Never raises for a per-call failure."""
        sid = listed.sid
        seen = _Attempt(created=listed.date_created.isoformat())

        async def work() -> CallResult:
            before = self.ledger.call_outcome(sid)
            if before == ARCHIVED:
                return CallResult(sid, ALREADY_ARCHIVED, self.ledger.objects_of(sid))
            if before == RESCUED and rescued_whole(self.ledger, sid):
                return CallResult(
                    sid, RESCUED, self.ledger.objects_of(sid), detail="rescued already"
                )
            seen.known_failed = before == FAILED
            details = details_from_listing(listed, url)
            known = {(r.kind, r.idx): r for r in self.ledger.objects_of(sid)}
            self._keep_folder(sid, known)
            result = CallResult(sid, RESCUED)
            # The v1 record first: from then on any path that looks at the call (an
            # enrichment, `archive SID`, a run with the lane off, the worker's restart) knows
            # it as rescued — its folder, the file its recording-1 is — whatever is cut off next.
            self._v1_files[sid] = v1_files(listed)
            snapshot = known.get(("v1_record", 0))
            if snapshot is None:
                snapshot = await self.recorder.store_bytes(
                    details,
                    kind="v1_record",
                    key=f"{self._folder(details)}/{V1_JSON}",
                    data=v1_record(listed),
                    source=self._v1_source(),
                    binding=binding,
                )
                result.stored += 1
            record = known.get(("recording", 1))
            if record is None:
                record = await self._archive_file(
                    details,
                    "recording",
                    1,
                    url,
                    listed.fetched_at or time.time(),
                    None,
                    stem="recording-1",
                    binding=self._rescue_binding(known, snapshot, binding),
                )
                result.stored += 1
            result.objects += [record, snapshot]
            await self._set_call(sid, RESCUED, created_time=seen.created, detail=None)
            log.info("call %s rescued from the v1 listing: %d object(s)", sid, len(result.objects))
            return result

        try:
            return await self._guarded(sid, work, seen, fall_back=True)
        except _FallBack as why:
            self.rescue_fallbacks += 1
            log.info("call %s: %s; archiving it through its v3 details", sid, why)
            result = await self.archive_call(sid)
            result.through_v3 = True
            return result
        finally:
            self._v1_files.pop(sid, None)
            self._folders.pop(sid, None)

    def _rescue_binding(self, known: Known, snapshot: ObjectRecord, binding: Binding) -> Binding:
        """The binding of a rescue's recording-1: ``binding`` (the rules on the v1 fields now),
        unless its ``call-v1.json`` was recorded by an earlier rescue cut off before the
        recording — then that one's class, date and lock (``as_bound``): a class once bound is
        a floor, whatever the rules say now."""
        policy = self.recorder.policy
        if policy is None or ("v1_record", 0) not in known:
            return binding
        return as_bound(policy, bound_now(self.ledger, snapshot))

    def _v1_source(self) -> str:
        exotel = self.settings.exotel
        return f"{exotel.v1_api_url}/v1/Accounts/{exotel.account_sid}/Calls.json"

    async def _guarded(
        self,
        call_sid: str,
        work: Callable[[], Awaitable[CallResult]],
        seen: _Attempt,
        *,
        fall_back: bool = False,
    ) -> CallResult:
        """``work()``, with every per-call error turned into a ``failed`` result (recorded);
        errors that concern every call raised. ``fall_back``: a recording URL that cannot
        serve the call raises ``_FallBack`` instead (a rescue goes the v3 way)."""
        try:
            return await work()
        except (RecordingError, UnsafeAddress) as exc:
            if fall_back:
                raise _FallBack(redact_text(str(exc), self.settings.secrets)) from None
            log.error("call %s failed: %s", call_sid, exc)
            return await self._failed(
                call_sid, str(exc), error_reason(exc), retryable=exc.retryable, created=seen.created
            )
        except (ExotelAuthError, StoragePermanent, CertificateError, DestinationFull):
            raise  # concerns every call: the run stops
        except InvalidCallSid as exc:
            return CallResult(call_sid, FAILED, detail=str(exc), reason="invalid_call_sid")
        except StorageRejected as exc:
            if not seen.known_failed:  # a run again goes past the calls that stopped the last one
                self._rejected(call_sid, exc)  # the same refusal for every call: see there
            log.error("call %s failed: %s", call_sid, exc)
            return await self._failed(
                call_sid, str(exc), error_reason(exc), retryable=exc.retryable, created=seen.created
            )
        except ArchiverError as exc:
            log.error("call %s failed: %s", call_sid, exc)
            return await self._failed(
                call_sid, str(exc), error_reason(exc), retryable=exc.retryable, created=seen.created
            )
        except (OSError, sqlite3.Error, MemoryError):
            raise  # the worker's own state directory or ledger: every call would fail alike
        except Exception as exc:  # a bug: this call fails, the run goes on
            detail = (
                f"internal error ({type(exc).__name__}: "
                f"{redact_text(str(exc), self.settings.secrets)[:200]}); this is a bug in the "
                "archiver: please report it with the log line above"
            )
            log.error("call %s failed on an unexpected error", call_sid, exc_info=True)
            return await self._failed(
                call_sid, detail, INTERNAL_ERROR, retryable=False, created=seen.created
            )

    def _rejected(self, sid: str, exc: StorageRejected) -> None:
        """Count a refusal of one call's object. ``REJECT_STREAK`` distinct calls refused in a
        row with the same code and no recording stored in between look like a store that says
        no to every object (a bucket policy demanding a header, a gateway refusing ours): a
        one-shot command stops on it (``StoreRefusesAll``, exit 1) rather than download every
        recording for nothing; the long-running worker only warns (once per streak) — a false
        stop would keep it down, and its failed calls' backoff bounds what they cost."""
        code, calls = self._reject_streak
        if exc.code != code or self.recorder.stored != self._stored_at:
            code, calls = exc.code, set()
        calls.add(sid)
        self._reject_streak, self._stored_at = (code, calls), self.recorder.stored
        if len(calls) != REJECT_STREAK:
            return
        message = (
            f"the store refused the objects of {len(calls)} calls in a row alike "
            f"({code or 'no code'}) and stored none in between: if it refuses every object, "
            "check the bucket policy (a required encryption header?), a gateway in front of the "
            f"store, or the store's own logs. The last: {exc}"
        )
        if self.stop_on_refusals:
            raise StoreRefusesAll(message + "; stopped before downloading more") from exc
        log.warning("%s", message)

    async def _set_call(self, sid: str, outcome: str, **fields: str | int | None) -> None:
        """``Ledger.set_call`` on the ledger's writer thread, in its next group commit."""
        await self.recorder.writes.run(
            functools.partial(self.ledger.set_call, sid, outcome, **fields)  # type: ignore[arg-type]
        )

    async def _failed(
        self, sid: str, detail: str, reason: str, *, retryable: bool, created: str | None = None
    ) -> CallResult:
        """Record ``sid`` as failed (never archived) and say why; ``created``, the call's
        creation time when its details were fetched, keeps its age (how near Exotel's retention
        it is: ``status``) in the ledger. ``detail`` is redacted here, once, for every place it
        goes (the ledger, ``status``, ``--report``): an error may quote a signed URL."""
        detail = redact_text(detail, self.settings.secrets)
        if sid in self._rescued:
            # An enrichment that failed: the call's recording is safe all the same. It stays
            # rescued in the ledger (with why), to be enriched again; this run reports a failure.
            detail = f"rescued; enrichment failed: {detail}"
            await self._set_call(sid, RESCUED, created_time=created, detail=detail, reason=reason)
        else:
            await self._set_call(sid, FAILED, created_time=created, detail=detail, reason=reason)
        return CallResult(
            sid,
            FAILED,
            self.ledger.objects_of(sid),
            detail=detail,
            reason=reason,
            retryable=retryable,
        )

    async def _archive_details(
        self, details: CallDetails, raw: bytes, *, fetched_at: float
    ) -> CallResult:
        """Archive a call from its details; ``fetched_at`` dates the URLs in them."""
        sid, created = details.sid, details.created_time.isoformat()
        rescued = sid in self._rescued
        if not details.is_terminal:
            await self._set_call(
                sid,
                RESCUED if rescued else NOT_READY,
                created_time=None if rescued else created,
                detail=("rescued; v3 says " if rescued else "") + "call is still active",
            )
            log.info("call %s is still active: not ready, try again later", sid)
            return CallResult(sid, NOT_READY, detail="call is still active (state 'active')")
        # The call's objects the ledger has already, read once (not once per object).
        known = {(r.kind, r.idx): r for r in self.ledger.objects_of(sid)}
        self._keep_folder(sid, known)
        if not details.recordings:
            if rescued or ("v1_record", 0) in known:
                # v1 listed a recording, v3 lists none: the rescued one is kept — also when the
                # rescue was cut off before the call was marked rescued (its call-v1.json is
                # recorded; its recording-1 may be at its key unrecorded: a rescue from the
                # listing records it). Never "no recording": v1 said there is one.
                detail = "rescued; its v3 details list no recording: not enriched"
                if ("recording", 1) not in known:
                    detail += (
                        " (a rescue cut off before its recording was recorded: a backfill of "
                        "its day rescues it again from the listing, while Exotel serves its URL)"
                    )
                await self._set_call(sid, RESCUED, detail=detail, reason="v3_no_recording")
                log.warning("call %s: %s", sid, detail)
                return CallResult(sid, RESCUED, list(known.values()), detail=detail)
            await self._set_call(sid, NO_RECORDING, created_time=created, recordings=0)
            return CallResult(
                sid,
                NO_RECORDING,
                detail=f"status {details.status}, no recordings",
                ended=details.end_time,
            )
        result = CallResult(sid, ARCHIVED)
        if ("v1_record", 0) in known:
            await self._enrich_recordings(result, details, known, fetched_at)
        else:
            for recording in details.recordings:
                record = known.get(("recording", recording.index))
                if record is None:
                    record = await self._archive_file(
                        details,
                        "recording",
                        recording.index,
                        recording.url,
                        fetched_at,
                        self._recording_url,
                        stem=f"recording-{recording.index}",
                    )
                    result.stored += 1
                result.objects.append(record)
        await self._snapshot(
            result, details, "call_details", CALL_JSON, self._source(sid), raw, known
        )
        if ("v1_record", 0) in known:
            result.objects.append(known[("v1_record", 0)])
            result.objects[:] = await bind_rescued(self.recorder, details, result.objects)
        if self.settings.legs:
            await self._archive_legs(result, details, known)
        if self.settings.voice_logs != "off" and not await self._archive_voice_log(
            result, details, known
        ):
            if rescued:  # its audio is safe: it stays rescued, to be enriched again
                detail = f"rescued; {result.detail}"
                await self._set_call(sid, RESCUED, detail=detail, reason="voice_log_processing")
            else:
                await self._set_call(sid, NOT_READY, created_time=created, detail=result.detail)
            result.outcome = NOT_READY
            return result
        await self._set_call(
            sid,
            ARCHIVED,
            created_time=created,
            recordings=len(details.recordings),
            detail=result.detail,
        )
        if result.stored == 0:
            # Every object was in the ledger already (e.g. after `manifest rebuild`, or a run
            # cut off before the call's outcome was written): nothing was stored or confirmed.
            result.outcome = ALREADY_ARCHIVED
            log.info("call %s was archived already: %d object(s)", sid, len(result.objects))
        else:
            log.info("call %s archived: %d object(s)", sid, len(result.objects))
        return result

    async def _enrich_recordings(
        self, result: CallResult, details: CallDetails, known: Known, fetched_at: float
    ) -> None:
        """The recordings v3 lists for a call rescued from its v1 listing item.

        The rescued recording (``recording-1``, from v1's URL) is one of them: the one whose
        file (host and path) is the v1 URL's — or, when the URL forms differ (Exotel's pages do
        not say they match), the one whose bytes have its SHA-256: it is downloaded and
        compared, and not stored again. Every other one is stored under the next free index,
        so no key of the rescued call is ever reused for other bytes. When the rescue did not
        record its recording-1 (its download failed, or was cut off), the v3 recording that is
        v1's file (``call-v1.json`` says which) is stored as recording-1; index 1 is never
        given to another."""
        have = [r for (kind, _), r in known.items() if kind == "recording"]
        matched: set[int] = set()
        by_file = {file_of(r.source): r for r in have}
        v1_pending = not any(r.idx == 1 for r in have)
        v1_file = await self._v1_file_of(details.sid, known) if v1_pending else set()
        todo: list[tuple[Recording, int | None]] = []  # None: the next free index
        for recording in details.recordings or ():
            file = file_of(recording.url)
            record = by_file.get(file)
            if record is not None and record.idx not in matched:
                matched.add(record.idx)
                result.objects.append(record)
            elif v1_pending and file in v1_file and 1 not in matched:
                matched.add(1)
                todo.insert(0, (recording, 1))
            else:
                todo.append((recording, None))
        # Index 1 is held for v1's file only while it may be at its key unrecorded (a rescue
        # cut off between its PUT and its commit); otherwise v3's first unmatched takes it.
        hold_first = v1_pending and (1 in matched or await self._at_key(details, "recording-1"))
        # v1's file is none of v3's (by file): the bytes a cut-off rescue left at recording-1
        # are matched against each of v3's as they download, so they are adopted, not stored
        # a second time under the next index.
        first = await self._unrecorded_first(details) if hold_first and 1 not in matched else set()
        # v1's own recording (by file, or claimed by its bytes) is stored as the rescue would
        # have stored it: under the class its call-v1.json was bound to, from v1's creation.
        as_rescued = self._as_rescued(details, known.get(("v1_record", 0)))

        def claim(sha256: str) -> _Claim | None:
            return _Claim(1, *as_rescued) if 1 not in matched and sha256 in first else None

        next_idx = max({r.idx for r in have} | {1 if hold_first else 0}) + 1
        for recording, fixed in todo:
            idx = fixed if fixed is not None else next_idx

            def same(sha256: str) -> ObjectRecord | None:
                return next(
                    (r for r in have if r.idx not in matched and r.content_sha256 == sha256), None
                )

            async def fresh(d: CallDetails, _idx: int, n: int = recording.index) -> str:
                return await self._recording_url(d, n)

            # Index 1 is v1's recording's: whichever of v3's takes it is stored as the rescue's.
            for_details, binding = as_rescued if idx == 1 and v1_pending else (details, None)
            record = await self._archive_file(
                for_details,
                "recording",
                idx,
                recording.url,
                fetched_at,
                fresh,
                stem=f"recording-{idx}",
                same_as=same if fixed is None else None,
                claim=claim if fixed is None else None,
                binding=binding,
            )
            if record.idx == idx:  # stored now (a match by content has its own index)
                result.stored += 1
                if fixed is None:
                    next_idx += 1
            elif record.idx == 1 and 1 not in matched:  # claimed: the rescue's bytes adopted
                result.stored += 1
                log.info(
                    "recording %d v3 lists for call %s is the one a cut-off rescue left at "
                    "recording-1 (the same SHA-256): adopted there",
                    recording.index,
                    details.sid,
                )
            else:
                log.info(
                    "recording %d v3 lists for call %s is the rescued recording-%d (the same "
                    "SHA-256): not stored again",
                    recording.index,
                    details.sid,
                    record.idx,
                )
            matched.add(record.idx)
            result.objects.append(record)
        stray = [r for r in have if r.idx not in matched]
        if stray:
            # v1's recording is none of those v3 lists for the call, by file or by bytes: kept
            # (its audio came from Exotel for this call's listing item), and said.
            names = ", ".join(f"recording-{r.idx}" for r in stray)
            result.note(
                f"{names} (rescued from the v1 listing) is none of the recordings v3 lists for "
                "this call: kept, check it"
            )
            log.warning("call %s: %s is none of the recordings v3 lists for it", details.sid, names)
            result.objects += stray

    def _as_rescued(
        self, details: CallDetails, v1_row: ObjectRecord | None
    ) -> tuple[CallDetails, Binding]:
        """The details and class v1's recording of a rescued call (index 1) is stored under at
        enrichment, when the rescue was cut off before recording it: the binding its
        ``call-v1.json`` got at rescue (the v1 fields decided it) raised to v3's class —
        ``both_floors``: the later date, the stronger lock, kept if either keeps; a class since
        renamed keeps its own date and lock — with v1's creation time, as the rescue would have
        stored it and enrichment then raised it. v3's details and class (None) when that row
        was stored unbound (the class needs v3)."""
        policy = self.recorder.policy
        if policy is None or v1_row is None:
            return details, None
        binding = both_floors(policy, bound_now(self.ledger, v1_row), details)
        if binding is None:
            return details, None
        try:
            created = datetime.fromisoformat(v1_row.call_created)
        except (TypeError, ValueError):
            return details, binding
        return replace(details, created_time=created), binding

    async def _unrecorded_first(self, details: CallDetails) -> set[str]:
        """The SHA-256 of the recording an unrecorded object at ``recording-1`` holds, on
        proof: the store's (or its bytes') SHA-256 — the recording itself, stored plain — and,
        for a ciphertext, the plaintext SHA-256 of the intent this worker committed for exactly
        those bytes (``archiver.encryption``). Empty: nothing there, or nothing provable."""
        folder = self._folder(details)
        for fmt in ("mp3", "wav"):
            key = f"{folder}/recording-1.{fmt}"
            there = await found_at(self.recorder.sink, key)
            if there is None:
                continue
            shas = {there.sha256}
            for intent in self.ledger.encrypted_writes(key):
                if (intent.sha256, intent.size) == (there.sha256, there.size):
                    shas.add(intent.plaintext_sha256)
            return shas
        return set()

    async def _at_key(self, details: CallDetails, stem: str) -> bool:
        """Whether an object of the call's folder named ``stem`` (any format) is in the
        destination, recorded or not."""
        folder = self._folder(details)
        for fmt in ("mp3", "wav"):
            if await self.recorder.sink.stat(f"{folder}/{stem}.{fmt}") is not None:
                return True
        return False

    async def _v1_file_of(self, sid: str, known: Known) -> set[tuple[str, str, str]]:
        """The files (scheme, host, path) of the recording URLs of the call's v1 record: from
        the rescue of this process, else read back from ``call-v1.json``."""
        if sid in self._v1_files:
            return self._v1_files[sid]
        record = known.get(("v1_record", 0))
        if record is None:
            return set()
        if await self.recorder.sink.stat(record.key) is None:
            # Recorded, yet gone from the destination (deleted out of band; ``verify`` names
            # it): v1's file is unknown, so v3's recordings are matched to a rescued one by
            # their bytes alone. Not a reason to stop this call, nor every other.
            log.warning(
                "call %s: %s is recorded but missing from the destination; v1's recording "
                "file is unknown (run verify, then repair)",
                sid,
                self.recorder.sink.location(record.key),
            )
            return set()
        data = b"".join([chunk async for chunk in self.recorder.sink.read(record.key)])
        try:
            item = json.loads(data)
        except ValueError:
            return set()
        return v1_files_of(item if isinstance(item, dict) else {})

    def _keep_folder(self, sid: str, known: Known) -> None:
        """A call begun in an earlier run (some of its objects recorded) keeps their folder,
        whatever the key template or the details say now: one call, one folder."""
        for record in known.values():
            if not record.key.startswith("_manifest/") and "/" in record.key:
                self._folders[sid] = record.key.rsplit("/", 1)[0]
                return

    def _folder(self, details: CallDetails) -> str:
        if details.sid in self._folders:  # a call begun already: its folder, whatever v3 says
            return self._folders[details.sid]
        return self.settings.key_layout.folder(
            details.sid,
            details.created_time,
            direction=details.direction,
            account_sid=self.settings.exotel.account_sid,
        )

    def _source(self, sid: str, tail: str = "") -> str:
        """The API URL a JSON snapshot came from (no credentials in it), for the manifest."""
        exotel = self.settings.exotel
        return f"{exotel.api_url}/v3/accounts/{exotel.account_sid}/calls/{sid}{tail}"

    async def _snapshot(
        self,
        result: CallResult,
        details: CallDetails,
        kind: str,
        name: str,
        source: str,
        data: bytes | None,
        known: Known,
    ) -> None:
        """Store a JSON response once per call (skipped if the ledger has it already).

        The response is stored as received, except that the pre-signed URLs in it lose their
        query string: the signatures are secrets until they expire (``redact.strip_signed_urls``).
        """
        record = known.get((kind, 0))
        if record is None and data is not None:
            key = f"{self._folder(details)}/{name}"
            record = await self.recorder.store_bytes(
                details, kind=kind, key=key, data=strip_signed_urls(data), source=source
            )
            result.stored += 1
        if record is not None:
            result.objects.append(record)

    async def _archive_legs(self, result: CallResult, details: CallDetails, known: Known) -> None:
        if known.get(("legs", 0)) is None:
            try:
                data: bytes | None = await self.exotel.legs(details.sid)
            except ExotelNotFound as exc:
                result.note(f"legs not archived: the legs API answered 404 ({exc.exotel_code})")
                return
        else:
            data = None
        await self._snapshot(
            result, details, "legs", LEGS_JSON, self._source(details.sid, "/legs"), data, known
        )

    async def _archive_voice_log(
        self, result: CallResult, details: CallDetails, known: Known
    ) -> bool:
        """The voice log (JSON, and the file if asked); False if it is still processing."""
        sid = details.sid
        want_audio = self.settings.voice_logs == "audio"
        have_json = known.get(("voice_log", 0))
        have_audio = known.get(("voice_log_audio", 0))
        if have_json and (have_audio or not want_audio):
            result.objects += [r for r in (have_json, have_audio) if r is not None]
            return True
        try:
            voice_log, raw = await self._voice_log(sid)
            fetched_at = time.time()
        except ExotelNotFound as exc:
            result.note(f"voice log not archived: the endpoint answered 404 ({exc.exotel_code})")
            return True
        status = voice_log.get("status")
        if status == "processing":
            result.note("voice log still processing at Exotel: run again later")
            return False
        source = self._source(sid, "/voice-logs")
        await self._snapshot(result, details, "voice_log", VOICE_LOG_JSON, source, raw, known)
        if not want_audio:
            return True
        if have_audio is not None:
            result.objects.append(have_audio)
            return True
        url = voice_log.get("recording_url")
        if status not in (None, "available") or not isinstance(url, str) or not url:
            result.note(f"voice log file not archived: status {status!r}")
            return True
        record = await self._archive_file(
            details, "voice_log_audio", 0, url, fetched_at, self._voice_log_url, stem="voice-log"
        )
        result.objects.append(record)
        result.stored += 1
        return True

    async def _voice_log(self, sid: str) -> tuple[dict[str, object], bytes]:
        return await self.exotel.voice_log(
            sid, fmt=self.settings.voice_log_format, channel=self.settings.voice_log_channel
        )

    async def _voice_log_url(self, details: CallDetails, _idx: int) -> str:
        voice_log, _raw = await self._voice_log(details.sid)
        url = voice_log.get("recording_url")
        if not isinstance(url, str) or not url:
            raise RecordingUnavailable(f"voice log of {details.sid}: no recording_url any more")
        return url

    async def _recording_url(self, details: CallDetails, index: int) -> str:
        fresh, _raw = await self.exotel.call_details(details.sid)
        same = [r for r in fresh.recordings or () if r.index == index]
        if not same:
            raise RecordingUnavailable(
                f"recording {index} of call {details.sid}: the refreshed call details no longer "
                "list it"
            )
        return same[0].url

    async def _archive_file(
        self,
        details: CallDetails,
        kind: str,
        idx: int,
        url: str,
        fetched_at: float,
        refresh: Refresh | None,
        *,
        stem: str,
        same_as: Callable[[str], ObjectRecord | None] | None = None,
        claim: Callable[[str], _Claim | None] | None = None,
        binding: Binding = None,
    ) -> ObjectRecord:
        """Download an audio file into a spool file and store it under ``{stem}.{format}``.

        A large one streams: once its first bytes say its format (so its key), its parts go
        to the store while it downloads (``archiver.sinks.streaming``); the spool stays the
        rewindable input should that upload fail. It is recorded only once stored.

        ``refresh`` fetches a fresh URL when this one has expired (None: the expiry is raised,
        ``RecordingExpired``). ``same_as`` may name an object recorded already with the
        downloaded bytes' SHA-256: that one is returned and nothing is stored (a streamed
        upload begun meanwhile is aborted). ``claim`` may name, from that SHA-256, another
        index whose key holds these bytes unrecorded (a rescue cut off before its commit): the
        file is stored there instead (so adopted, never stored twice) as ``recording-N``, with
        the details and class the claim gives.
        ``binding``: see ``Recorder.store``.
        """
        what = f"{stem} of call {details.sid}"
        folder = self._folder(details)

        def key_for(head: bytes) -> str | None:
            fmt = sniff_format(head)
            return None if fmt is None else f"{folder}/{stem}.{fmt}"

        tap = self.recorder.tap(details, key_for, binding)
        with tempfile.TemporaryFile(dir=self.spool_dir, prefix="spool-") as spool:
            try:
                got, url = await self._fetch(
                    details, idx, url, fetched_at, Partial(spool, tap=tap), refresh, what=what
                )
                same = same_as(got.sha256) if same_as is not None else None
                if same is not None:
                    return same
                moved = claim(got.sha256) if claim is not None else None
                if moved is not None and moved.idx != idx:
                    idx, stem = moved.idx, f"recording-{moved.idx}"
                    details, binding = moved.details, moved.binding
                    if tap is not None:  # its upload went to the other key: aborted
                        await tap.close()
                        tap = None
                record = await self.recorder.store(
                    details,
                    kind=kind,
                    idx=idx,
                    key=f"{folder}/{stem}.{got.format}",
                    body=spool,
                    size=got.size,
                    sha256=got.sha256,
                    content_type=got.content_type,
                    fmt=got.format,
                    source=strip_url(url),
                    upload=tap,
                    binding=binding,
                )
            finally:
                if tap is not None:  # an upload not completed (any failure) is aborted
                    await tap.close()
        log.info(
            "%s stored at %s (%d bytes, sha256 %s)",
            what,
            record.location,
            record.size,
            record.sha256,
        )
        return record

    async def _fetch(
        self,
        details: CallDetails,
        idx: int,
        url: str,
        fetched_at: float,
        partial: Partial,
        refresh: Refresh | None,
        *,
        what: str,
    ) -> tuple[Downloaded, str]:
        """Download into ``partial``, resuming cut-off bodies and refreshing expired URLs
        (``refresh`` None: an expired URL, or one too close to its deadline, is
        ``RecordingExpired`` at once).

        Returns the body and the URL it finally came from.
        """
        allowed = self.settings.url_refreshes if refresh is not None else 0
        refreshes = 0
        while True:
            try:
                async for attempt in retrying(self.settings.retry, what=f"download {what}"):
                    with attempt:
                        remaining = partial.total - partial.size if partial.total else None
                        needed = self.rates.seconds_for(remaining)
                        # A private URL fetched with the credentials has no end; a pre-signed one
                        # (or one assumed so) ends at its signature's, or url_validity's.
                        close = not self.recording_auth.header_for(url) and too_close(
                            url_deadline(url, fetched_at, self.settings.url_validity),
                            fetched_at,
                            needed,
                        )
                        if close and refresh is None:
                            raise RecordingExpired(f"{what}: the URL is too close to its end")
                        if close and refreshes < allowed and refresh is not None:
                            refreshes += 1
                            log.info("%s: URL too close to its deadline, refreshing it", what)
                            url, fetched_at = await self._refresh(refresh, details, idx)
                        started, offset = time.monotonic(), partial.size
                        got = await download(
                            self.http,
                            url,
                            partial,
                            what=what,
                            max_bytes=self.settings.max_recording_size,
                            policy=self.addresses,
                            auth=self.recording_auth,
                        )
                        self.rates.add(got.size - offset, time.monotonic() - started)
                        return got, url
            except RecordingExpired:
                if refresh is None:
                    raise
                if refreshes >= allowed:
                    raise RecordingExpired(
                        f"{what}: the URL was still refused after {refreshes} fresh URL(s)"
                    ) from None
                refreshes += 1
                log.info("%s: URL expired, fetching a fresh one (%d)", what, refreshes)
                url, fetched_at = await self._refresh(refresh, details, idx)
        raise AssertionError("unreachable")

    async def _refresh(
        self,
        refresh: Refresh,
        details: CallDetails,
        idx: int,
    ) -> tuple[str, float]:
        self.url_refreshes += 1
        url = await refresh(details, idx)
        return url, time.time()


async def archive_calls(
    settings: Settings,
    call_sids: Iterable[str],
    *,
    on_result: Callable[[CallResult], None] | None = None,
    sink: Sink | None = None,
    limiter: RateLimiter | None = None,
    waiter: Waiter | None = None,
) -> Report:
    """Archive the given calls with ``settings``; returns the report (never raises per call).

    Raises ``ConfigError``/``ExotelAuthError``/``StoragePermanent`` for problems that concern the
    whole run. ``sink`` overrides the destination of ``settings`` (used by the demo and tests);
    ``limiter`` continues the request budget of an earlier phase (a backfill's listing);
    ``waiter`` looks again at calls not ready yet until they are done or its time is up
    (``archive --wait``: ``archiver.waiting``), with the same clients, limiter and lock.
    """
    settings.require_exotel_credentials()
    if sink is None:
        sink = sink_for(settings)
    manifest_path = settings.state_dir / "manifest.jsonl"
    report = Report(destination=sink.describe(), manifest=str(manifest_path))
    ledger: Ledger | None = None
    try:
        with writer_lock(settings.state_dir):
            ledger = Ledger(settings.state_dir / "ledger.sqlite3")
            await _archive_all(
                settings, call_sids, sink, ledger, report, on_result, limiter, waiter
            )
    finally:
        if ledger is not None:
            ledger.close()
        await sink.close()
    return report


async def _archive_all(
    settings: Settings,
    call_sids: Iterable[str],
    sink: Sink,
    ledger: Ledger,
    report: Report,
    on_result: Callable[[CallResult], None] | None,
    limiter: RateLimiter | None = None,
    waiter: Waiter | None = None,
) -> None:
    """The body of ``archive_calls``, with the writer lock held and the ledger open."""
    async with open_run(settings, sink, ledger, report, limiter) as worker:
        # A fixed pool of workers takes calls from one queue, in order: a backlog of 100,000
        # calls costs 100,000 list entries, not 100,000 waiting tasks, and each call's
        # details (and so its URLs) are fetched only when a worker is free for it.
        order = list(dict.fromkeys(call_sids))
        pending = iter(enumerate(order))
        results: list[CallResult | None] = [None] * len(order)

        async def work() -> None:
            for position, sid in pending:  # shared iterator: each call goes to one worker
                result = await worker.archive_call(sid)
                results[position] = result
                if waiter is not None and waiter.waits_for(result):
                    # At once, not after every call's first look: a run cut off before the
                    # wait begins must leave it not ready in the ledger, to be looked at again.
                    waiter.hold(result, ledger)
                elif on_result is not None:
                    on_result(result)  # a call waited for is reported once it is done

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(settings.concurrency, len(order))):
                    group.create_task(work())
            if waiter is not None:
                done = [r for r in results if r is not None]
                results[:] = await waiter.settle(done, worker.archive_call, ledger, on_result)
        except BaseExceptionGroup as group_error:
            raise first_error(group_error) from None
        finally:
            report.results = [r for r in results if r is not None]


@asynccontextmanager
async def open_run(
    settings: Settings,
    sink: Sink,
    ledger: Ledger,
    report: Report,
    limiter: RateLimiter | None = None,
) -> AsyncIterator[Archiver]:
    """The ``Archiver`` of one run, with the writer lock held and the ledger open: preflight
    first, the manifest caught up; at the end (not after an error) the manifest fsynced and
    its waiting entries sealed, and the run's counters in ``report``."""
    await preflight(settings, sink, ledger=ledger, claim=True, lock=False)  # we hold the lock
    manifest = ManifestWriter(Path(report.manifest))
    manifest.sync(ledger)  # catch up after a crash between ledger commit and manifest append
    segments_before = len(ledger.segments())
    limiter = limiter or RateLimiter(settings.exotel.rate_limit, 60.0)
    async with (
        ExotelClient(settings.exotel, limiter=limiter, retry=settings.retry) as exotel,
        recording_session(policy=address_policy(settings)) as http,
    ):
        worker = Archiver(
            settings, sink=sink, ledger=ledger, manifest=manifest, exotel=exotel, http=http
        )
        try:
            yield worker
        finally:
            worker.recorder.close()  # writes of calls cut off end before the ledger closes
            report.api_requests = exotel.requests
            report.url_refreshes = worker.url_refreshes
    manifest.sync(ledger)
    manifest.fsync()
    await seal(ledger, sink)
    report.segments_sealed = len(ledger.segments()) - segments_before
    report.storage_requests = sink.requests


def rescued_whole(ledger: Ledger, sid: str) -> bool:
    """Whether a call the ledger has as rescued holds its recording-1: not so for a rescue cut
    off before that row (its call-v1.json recorded; the recording missing, or at its key
    unrecorded), which a rescue from the listing takes up again (adopting what is there)."""
    return ledger.object_for(sid, "recording", 1) is not None


@dataclass
class _Attempt:
    """What one attempt at a call learnt before it failed: kept in the failure's record."""

    created: str | None = None
    """The call's creation time, once known (a failure keeps the call's age)."""
    known_failed: bool = False
    """The ledger had the call failed before (not counted again in a refusal streak)."""


@dataclass(frozen=True)
class _Claim:
    """Where a downloaded recording goes instead (``Archiver._archive_file``'s ``claim``): the
    index whose key holds its bytes unrecorded, and the details and class it is stored under."""

    idx: int
    details: CallDetails
    binding: Binding


class _FallBack(Exception):
    """A rescue's URL could not serve the call: it goes the v3 way instead."""


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that stopped the run (the others are the cancellations it caused)."""
    first = group.exceptions[0]
    return first_error(first) if isinstance(first, BaseExceptionGroup) else first


def address_policy(settings: Settings) -> AddressPolicy:
    """Where URLs from Exotel may lead (``archiver.addresses``): the API hosts are trusted."""
    return AddressPolicy.for_hosts(
        (settings.exotel.api_url, settings.exotel.v1_api_url),
        allow_private=settings.allow_private_addresses,
    )


def sink_for(settings: Settings) -> Sink:
    """The destination of ``settings``, ready to use (ConfigError if there is none)."""
    return open_sink(
        settings.require_destination(),
        retry=settings.retry,
        addressing_style=settings.s3_addressing_style,
        conditional_writes=settings.s3_conditional_writes,
        checksum=settings.s3_checksum,
        part_size=settings.part_size,
        part_concurrency=settings.part_concurrency,
        concurrency=settings.concurrency,
        sse=settings.sse,
    )
