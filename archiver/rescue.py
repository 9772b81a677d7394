"""The rescue lane: recordings archived straight from the v1 listing, v3 details fetched later.

Exotel allows about 200 API requests a minute per account. Archiving a call through its v3
details costs one request a call; the v1 Bulk Call Details listing returns 100 calls a request,
each with ``PreSignedRecordingUrl`` (where the account has signed URLs) and ``RecordingUrl``
(private since October 2024: HTTP Basic to Exotel's own hosts, ``archiver.recording_auth``).
``rescue_backfill`` pages through a range's listing and, for each listed call whose item carries
a URL the recording can be downloaded from, archives it at once (``Archiver.rescue_call``): the
recording as ``recording-1``, the item beside it as ``call-v1.json``, the call ``rescued``. That
costs about 0.01 requests a call, the listing itself.

* **Pacing.** The listing is read only as fast as the downloads keep up: its items go through a
  queue of ``concurrency`` places, so the next page is asked for only when the queue has room
  for its calls, and no URL waits long enough to die (it asks for ``RecordingUrlValidity=60``,
  the longest Exotel allows; an account refusing that is asked again with ``url_validity``). A
  URL that is too close to its end (or refused) anyway sends its call the v3 way
  (``archive_call``: one request, fresh URLs).
* **Enrichment** (``enrich = background``): meanwhile, the range's rescued calls — rescued now, or
  by an earlier run — are taken in the listing's order (oldest first) and archived through their v3
  details (``archive_call``): ``call.json``, any recording v3 lists that v1 did not, and the call
  becomes ``archived``. Its requests pass the one rate limiter, held to ``enrich_share`` percent of
  it (``RateLimiter.share``); a failed enrichment leaves the call rescued (its audio is safe) for a
  later run. ``enrich = never`` leaves rescued calls rescued; a call whose retention class the v1
  fields cannot decide is then not rescued but archived through v3 at once, so no object stays
  without its class.
* **What is not rescued** goes the v3 way as before: calls listed without a usable URL, calls the
  ledger knows as unfinished, calls listed too soon to be settled; calls listed without a
  recording and settled are ``no_recording`` with no request.

Interrupted, the same backfill continues: archived and rescued calls are known to the ledger
(a rescued one is not downloaded again), and the range is listed again — cheaply, and because a
rescue needs URLs no saved listing has.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from archiver.archive import Archiver, first_error, open_run, rescued_whole, sink_for
from archiver.backfill import (
    Plan,
    binding_for,
    check_range,
    listing_complete,
    listing_key,
    range_end,
    wall_clock,
)
from archiver.config import Settings
from archiver.errors import ExotelBadRequest
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import ListedCall, SkippedItem, list_calls
from archiver.exotel.v1 import rescue_url
from archiver.ledger import UNFINISHED, Ledger, writer_lock
from archiver.ratelimit import RateLimiter, lane
from archiver.recorder import Binding
from archiver.report import (
    ALREADY_ARCHIVED,
    ARCHIVED,
    NO_RECORDING,
    RESCUED,
    CallResult,
    Report,
)

log = logging.getLogger("archiver.rescue")

LONGEST_VALIDITY = 60
"""Minutes: the longest ``RecordingUrlValidity`` Exotel allows, asked for by the lane."""
ENRICH_LANE, LIST_LANE = "enrich", "list"
_RECENT = 2000
"""Calls of the listing remembered to drop a repeat (an item of one page again on the next)."""
_IDLE = 0.5
"""Seconds the enrichment waits for more rescued calls while the listing goes on."""


@dataclass(frozen=True)
class _Rescue:
    listed: ListedCall
    url: str
    binding: Binding


@dataclass(frozen=True)
class _ByDetails:
    sid: str


_Job = _Rescue | _ByDetails


def enrich_per_minute(settings: Settings) -> int:
    """Requests a minute the enrichment may use: ``enrich_share`` percent of the rate limit."""
    return max(1, settings.exotel.rate_limit * settings.enrich_share // 100)


async def list_for_rescue(
    client: ExotelClient,
    start: datetime,
    end: datetime,
    settings: Settings,
    on_skip: Callable[[SkippedItem], None],
) -> AsyncIterator[ListedCall]:
    """``list_calls`` of [start, end] asking for the longest URL validity Exotel allows (60
    minutes), and for ``url_validity`` if the account refuses that before its first item."""
    tz = settings.exotel.timezone
    configured = int(settings.url_validity // 60)
    validities = list(dict.fromkeys([LONGEST_VALIDITY, configured]))
    for n, minutes in enumerate(validities):
        yielded = False
        try:
            async for call in list_calls(
                client, start, end, tz=tz, url_validity_minutes=minutes, on_skip=on_skip
            ):
                yielded = True
                yield call
            return
        except ExotelBadRequest:
            if yielded or n == len(validities) - 1:
                raise
            log.warning(
                "Exotel refused RecordingUrlValidity=%d: listing with %d minutes instead",
                minutes,
                configured,
            )


async def rescue_backfill(
    settings: Settings,
    first: date,
    last: date,
    *,
    on_result: Callable[[CallResult], None] | None = None,
) -> tuple[Plan, Report]:
    """Backfill ``since..until`` (dates) through the rescue lane; the plan as it turned out and
    the report. Raises what ``archive_calls`` raises for problems of the whole run."""
    settings.require_exotel_credentials()
    tz = settings.exotel.timezone
    began = wall_clock(tz)
    check_range(first, last, today=began.date())
    plan = Plan(first, last, listing_began=began)
    plan.requests_per_call = 1 + int(settings.legs) + int(settings.voice_logs != "off")
    plan.enrich = settings.enrich == "background"
    plan.enrich_share = enrich_per_minute(settings)
    sink = sink_for(settings)
    report = Report(
        destination=sink.describe(), manifest=str(settings.state_dir / "manifest.jsonl")
    )
    ledger: Ledger | None = None
    try:
        with writer_lock(settings.state_dir):
            ledger = Ledger(settings.state_dir / "ledger.sqlite3")
            limiter = RateLimiter(settings.exotel.rate_limit, 60.0)
            listing_share = limiter.share(LIST_LANE, settings.exotel.rate_limit)
            enrich_share = limiter.share(ENRICH_LANE, enrich_per_minute(settings))
            async with open_run(settings, sink, ledger, report, limiter) as worker:
                lane_run = _Lane(settings, worker, ledger, plan, on_result)
                try:
                    await lane_run.run()
                except BaseExceptionGroup as group_error:
                    raise first_error(group_error) from None
                finally:
                    plan.listing_requests = listing_share.acquired
                    plan.enrich_requests = enrich_share.acquired
                    report.results = list(lane_run.results.values())
                    plan.rescue_fallbacks = worker.rescue_fallbacks
    finally:
        if ledger is not None:
            ledger.close()
        await sink.close()
    return plan, report


class _Lane:
    """One backfill through the lane: the listing, the rescues and the enrichment."""

    def __init__(
        self,
        settings: Settings,
        worker: Archiver,
        ledger: Ledger,
        plan: Plan,
        on_result: Callable[[CallResult], None] | None,
    ) -> None:
        self.settings, self.worker, self.ledger, self.plan = settings, worker, ledger, plan
        self.on_result = on_result
        self.results: dict[str, CallResult] = {}
        """The last result of each call (a rescue, then its enrichment)."""
        self.queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=settings.concurrency)
        self.rescues_done = asyncio.Event()
        self.listing: list[tuple[str, str, bool]] = []
        self.to_enrich: deque[str] = deque()
        """This run's rescued calls not enriched yet, oldest first (the listing's order)."""

    def _report(self, result: CallResult, *, enrich: bool = True) -> None:
        """Record a call's result; a rescued call is queued for its enrichment (``enrich``),
        but never by the result of its enrichment: a call that stays rescued then (v3 lists
        no recording, a voice log still processing, a failure) is enriched once a run, not
        again and again until the run is stopped."""
        self.results[result.call_sid] = result
        if enrich and result.outcome == RESCUED and self.settings.enrich == "background":
            self.to_enrich.append(result.call_sid)
        if self.on_result is not None:
            self.on_result(result)

    async def run(self) -> None:
        plan = self.plan
        async with asyncio.TaskGroup() as group:
            group.create_task(self._list())
            rescuers = [group.create_task(self._rescue()) for _ in range(self.settings.concurrency)]
            if self.settings.enrich == "background":
                for _ in range(max(1, self.settings.concurrency // 2)):
                    group.create_task(self._enrich())
            await asyncio.gather(*rescuers)
            self.rescues_done.set()
        # The listing is saved as the plain backfill saves it (``archiver.backfill``): complete
        # and without skipped items.
        plan.listing_complete = not plan.skipped and listing_complete(
            plan.until,
            self.settings.exotel.timezone,
            timedelta(seconds=self.settings.listing_settle),
            plan.listing_began or datetime.now(self.settings.exotel.timezone),
        )
        if plan.listing_complete and plan.listing_began is not None:
            key = listing_key(plan.since, plan.until, self.settings.exotel.timezone)
            save = functools.partial(
                self.ledger.save_listing, key, self.listing, began=plan.listing_began
            )
            await self.worker.recorder.writes.run(save)

    def _listed(self) -> AsyncIterator[ListedCall]:
        """The range's listing, oldest first (``list_for_rescue``)."""
        tz = self.settings.exotel.timezone
        start = datetime.combine(self.plan.since, time.min, tz)
        end = range_end(self.plan.until, tz) - timedelta(seconds=1)
        return list_for_rescue(
            self.worker.exotel, start, end, self.settings, self.plan.skipped.append
        )

    async def _list(self) -> None:
        plan, recent = self.plan, OrderedDict[str, bool]()
        settle = timedelta(seconds=self.settings.listing_settle)
        with lane(LIST_LANE):
            async for listed in self._listed():
                if listed.sid in recent:  # a repeat of paging: once is enough
                    continue
                recent[listed.sid] = True
                if len(recent) > _RECENT:
                    recent.popitem(last=False)
                created = listed.date_created.isoformat()
                self.listing.append((listed.sid, created, listed.has_recording))
                plan.listed += 1
                job = self._job(listed, settle)
                if job is not None:
                    await self.queue.put(job)
        for _ in range(self.settings.concurrency):  # not after an error: the run stops then
            await self.queue.put(None)

    def _job(self, listed: ListedCall, settle: timedelta) -> _Job | None:
        """What to do with one listed call (None: nothing, its result reported here)."""
        plan, sid = self.plan, listed.sid
        outcome = self.ledger.call_outcome(sid)
        if outcome == ARCHIVED:
            plan.already_archived.append(sid)
            self._report(CallResult(sid, ALREADY_ARCHIVED, self.ledger.objects_of(sid)))
            return None
        if outcome == RESCUED and rescued_whole(self.ledger, sid):
            plan.rescued_before.append(sid)
            self._report(CallResult(sid, RESCUED, detail="rescued by an earlier run"))
            return None
        auth = getattr(self.worker, "recording_auth", None)
        url = rescue_url(listed, auth) if self.settings.rescue else None
        binding = binding_for(self.settings, listed) if url is not None else False
        if url is not None and binding is not False:
            plan.to_rescue.append(sid)
            assert not isinstance(binding, bool)
            return _Rescue(listed, url, binding)
        if outcome in UNFINISHED or listed.has_recording:
            plan.to_archive.append(sid)
            return _ByDetails(sid)
        if listed.date_created + settle <= (plan.listing_began or listed.date_created):
            plan.no_recording.append(sid)
            self._report(
                CallResult(
                    sid, NO_RECORDING, detail="the v1 listing shows no recording: not asked again"
                )
            )
            return None
        plan.to_archive.append(sid)  # listed before it could be settled: asked through v3
        return _ByDetails(sid)

    async def _rescue(self) -> None:
        while (job := await self.queue.get()) is not None:
            if isinstance(job, _Rescue):
                result = await self.worker.rescue_call(job.listed, job.url, job.binding)
                self._report(result, enrich=not result.through_v3)
            else:  # through v3 already: a call that stays rescued is not enriched again
                self._report(await self.worker.archive_call(job.sid), enrich=False)

    async def _enrich(self) -> None:
        """Enrich this run's rescued calls (rescued now, or by an earlier run and listed now),
        in listing order — the oldest first — until none is left and the rescues are over."""
        while True:
            if not self.to_enrich:
                if self.rescues_done.is_set() and not self.to_enrich:
                    return
                await asyncio.sleep(_IDLE)
                continue
            sid = self.to_enrich.popleft()
            with lane(ENRICH_LANE):
                result = await self.worker.archive_call(sid)
            self._report(result, enrich=False)
