"""What a run did: per call, an outcome; for the run, the counters a summary needs.

Each call a run reports has exactly one outcome, and each count (a result's ``counts``, the
printed summary, a backfill's plan) is the number of calls with that outcome; the same name
means the same thing everywhere:

* ``archived`` — this run stored or confirmed (found in the destination with the same SHA-256)
  at least one object of the call, and the call is now whole: every recording, and every
  asked-for artifact, stored and recorded.
* ``already_archived`` — the ledger held the call whole before this run: nothing was stored.
  Either the ledger said so (no API request: a backfill plan's ``already_archived``) or the
  call's details were fetched and every object was found in the ledger. "Whole" is judged by
  the settings the call was archived with: ``voice_logs`` and ``legs`` apply to calls archived
  after they are turned on, not to calls already archived.
* ``not_ready`` — still active, or its voice log still processing: looked at again next run.
* ``no_recording`` — the call has no recording at source: its v3 details say terminal without
  one (asked again, the details are fetched again: recordings can appear late), or — in a
  backfill — the listing shows none and the call was created at least ``listing_settle``
  before the listing began (not asked about: no request; a plan's ``no_recording``).
* ``failed`` — with the reason; what was stored before the failure stays recorded.

A backfill's plan also counts ``to_archive`` (the calls its run looks at) and ``calls_listed``
(every call the listing holds: ``already_archived + no_recording + to_archive``); its run's
result reports every listed call, so the result's counts add up to ``calls_listed``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from archiver.ledger import ObjectRecord

log = logging.getLogger("archiver.archive")

ARCHIVED = "archived"
ALREADY_ARCHIVED = "already_archived"
NOT_READY = "not_ready"
NO_RECORDING = "no_recording"
FAILED = "failed"
RESCUED = "rescued"
"""The call's recording is stored from the v1 listing (``archiver.rescue``): its audio is safe,
its v3 details (``call.json``, any recording v1 did not list) are not fetched yet. Not complete:
enrichment makes it ``archived``."""
OUTCOMES = (ARCHIVED, RESCUED, ALREADY_ARCHIVED, NOT_READY, NO_RECORDING, FAILED)


@dataclass
class CallResult:
    """What happened to one call in this run."""

    call_sid: str
    outcome: str
    objects: list[ObjectRecord] = field(default_factory=list)
    stored: int = 0
    """Objects stored by this run: written, or found in the destination with the same SHA-256
    and recorded (the others of ``objects`` were in the ledger already)."""
    detail: str | None = None
    reason: str | None = None
    """For ``failed``: the kind of error, e.g. ``recording_expired`` (metrics count by it)."""
    retryable: bool = False
    """For ``failed``: whether trying again later may succeed (a transient error that outlasted
    its retries) or not (a conflict, a protocol error)."""
    ended: datetime | None = None
    """For ``no_recording``: the call's end as Exotel reports it (recordings may still come for
    ``recording_grace`` after it: ``archive --wait`` waits for them)."""
    through_v3: bool = False
    """The call's v3 details were fetched for this result (a rescue that fell back to v3): one
    still rescued is not enriched again in the same run."""

    def note(self, text: str) -> None:
        """Add a remark (an optional artifact that could not be had, ...) to ``detail``."""
        log.info("call %s: %s", self.call_sid, text)
        self.detail = f"{self.detail}; {text}" if self.detail else text

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects)


@dataclass
class Report:
    """The outcome of a run: per call, and the counters a summary needs."""

    results: list[CallResult] = field(default_factory=list)
    api_requests: int = 0
    url_refreshes: int = 0
    storage_requests: int = 0
    """Requests sent to the destination (S3): PUTs, HEADs, multipart calls, segments."""
    segments_sealed: int = 0
    """Manifest segments written to the destination by this run."""
    destination: str = ""
    manifest: str = ""

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def failed(self) -> list[CallResult]:
        return [r for r in self.results if r.outcome == FAILED]

    @property
    def bytes_archived(self) -> int:
        """Bytes of the calls archived, and of those rescued, by this run."""
        return sum(
            r.bytes
            for r in self.results
            if r.outcome == ARCHIVED or (r.outcome == RESCUED and r.stored)
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "destination": self.destination,
            "manifest": self.manifest,
            "counts": {o: self.count(o) for o in OUTCOMES},
            "bytes_archived": self.bytes_archived,
            "api_requests": self.api_requests,
            "url_refreshes": self.url_refreshes,
            "segments_sealed": self.segments_sealed,
            "storage_requests": self.storage_requests,
            "storage_requests_per_archived_call": (
                round(self.storage_requests / self.count(ARCHIVED), 2)
                if self.count(ARCHIVED)
                else None
            ),
            "calls": [
                {
                    "call_sid": r.call_sid,
                    "outcome": r.outcome,
                    "reason": r.reason,
                    "detail": r.detail,
                    "objects": [
                        {"key": o.key, "size": o.size, "sha256": o.sha256} for o in r.objects
                    ],
                }
                for r in self.results
            ],
        }
