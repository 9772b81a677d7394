"""The long-running archiver: ``exotel-archiver run``.

One asyncio process, one rate limiter, one ledger. Calls reach one schedule (call SID → when to
look at it next) from four sources:

* **active** — ``GET .../calls/active`` every ``poll_interval``: a call is watched while it is
  listed (no call-details request is spent on it then) and scheduled as soon as it is not. A
  poll reads at most ``MAX_ACTIVE_PAGES`` pages and stops at a page that brings nothing new; an
  item with an invalid ``call_sid`` is skipped (``active_bad_sid``), the rest of the poll used.
  A call listed in progress for longer than ``stuck_after`` (from its ``start_time``) is
  reported stuck, and watched as before: that costs nothing extra;
* **sweep** — every ``sweep_interval``, the v1 listing of the recent past: calls never seen
  active, failed calls and calls whose recording appeared late are scheduled; it catches what
  polling and callbacks miss. After downtime sweeps reach back to where the last one got to, in
  bounded steps (``max(sweep_lookback, SWEEP_STEP)`` plus ``SWEEP_OVERLAP`` each) run one after
  the other, each step's end saved (``sweep_until``) as soon as it is listed, so a failure later
  does not list again what was done. A malformed item of a listing is skipped;
* **webhook** — optional StatusCallback hints (``archiver.webhook``): de-duplicated, scheduled now;
* **restart** — calls the ledger holds as ``pending`` or ``not_ready`` from an earlier run.

With the rescue lane on (``rescue``, ``archiver.rescue``), a call the sweep lists with a URL its
recording can be downloaded from, and that nothing else watches or schedules, is rescued from the
listing at once (no call-details request), at most ``concurrency`` at a time: the sweep reads on
only as they finish. Rescued calls are enriched by a loop of their own (``enrich = background``):
oldest first, ``concurrency / 2`` at a time, their requests held to ``enrich_share`` of the one
limiter, a failed one looked at again after ``ENRICH_RETRY``, doubling; live calls never wait for a
worker behind them. Rescues and enrichments cut off by a shutdown lose nothing: the call stays
pending (redone through v3 at the next start) or rescued.

A pool of ``concurrency`` workers takes due calls and archives each with the same code as
``archive`` (``Archiver.archive_call``).

What lives elsewhere: when a call not archived is looked at again — not ready (a doubling
delay, then reported stuck), no recording yet (until ``recording_grace``), failed (five quick
retries, then a backoff kept in the ledger that the sweeps respect) — is ``archiver.rechecks``
(``Rechecks``); the counts and warnings about malformed listing items and polls cut short are
``archiver.discovery`` (``DiscoveryReports``); the schedule itself is ``archiver.schedule``,
the HTTP listeners ``archiver.serving``.

Every found call is in the ledger (``pending``) before it is scheduled, so nothing is lost to a
crash or a restart. Shutdown (``stop()``: the first SIGTERM/SIGINT): polling, sweeps and the
webhook stop; in-flight calls get ``shutdown_grace`` seconds; unfinished ones stay pending for
the next start; waiting manifest entries are sealed. A second ``stop()`` cancels what is in
flight at once. Errors that concern every call (bad Exotel credentials, bucket missing or
denied) stop the worker and are raised from ``run()``.

Manifest entries are sealed into the destination every ``SEAL_EVERY`` seconds, and as soon as
no call has been in flight for ``SEAL_IDLE`` seconds, so the chain there is complete soon after
work stops (``verify`` reports entries still waiting as pending seal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from archiver import identity
from archiver.archive import Archiver, address_policy
from archiver.backfill import binding_for
from archiver.config import Settings
from archiver.discovery import DiscoveryReports
from archiver.errors import ArchiverError, CertificateError, ConfigError, ExotelAuthError
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import ListedCall, active_calls, list_calls
from archiver.exotel.v1 import rescue_url
from archiver.ledger import Ledger, WriterBusy, writer_lock
from archiver.manifest import ManifestWriter
from archiver.metrics import Metrics, oldest_age
from archiver.notify import Notifier
from archiver.preflight import preflight
from archiver.ratelimit import RateLimiter, lane
from archiver.rechecks import Rechecks, duration
from archiver.recorder import Binding
from archiver.report import ARCHIVED, FAILED, NOT_READY, RESCUED, CallResult
from archiver.rescue import ENRICH_LANE, enrich_per_minute, list_for_rescue
from archiver.schedule import Schedule
from archiver.serving import listen, metrics_app
from archiver.sinks import Sink
from archiver.state_errors import state_problem
from archiver.summary import Summary
from archiver.transfer import recording_session
from archiver.webhook import webhook_app

log = logging.getLogger("archiver.daemon")

API_WINDOW = timedelta(days=180)
SWEEP_OVERLAP = timedelta(hours=1)
SWEEP_STEP = timedelta(days=1)
"""The least one catching-up sweep moves on: it lists ``max(sweep_lookback, SWEEP_STEP)`` plus
``SWEEP_OVERLAP``, never more."""
HINT_MEMORY = 10_000
STATUS_EVERY = 10.0
SEAL_EVERY = 600.0
LOCK_POLL = 5.0
ENRICH_IDLE = 5.0
"""Seconds the enrichment loop waits when no rescued call is due."""
ENRICH_RETRY = 600.0
"""Seconds before a rescued call whose enrichment did not complete is taken again; doubled
after each further try, up to 128 times (about 21 hours)."""
"""Seconds between two tries at the state directory's writer lock while another process (a
backfill, a retention job) holds it."""
SEAL_IDLE = 30.0
"""Seconds without a call in flight after which waiting manifest entries are sealed (besides
every SEAL_EVERY seconds): the destination's chain catches up soon after work stops."""


class Daemon:
    """The long-running worker. ``await run()`` until ``stop()``; see the module docstring."""

    def __init__(self, settings: Settings, *, sink: Sink, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.config = settings.daemon
        self.sink = sink
        self.notifier = notifier or Notifier({})
        self.metrics = Metrics()
        self.schedule = Schedule()
        self.rechecks = Rechecks(self.config, self.metrics)
        self.reports = DiscoveryReports(self.metrics)
        self._watching: set[str] = set()
        self._failed_calls: set[str] = set()
        """Calls that failed here at least once (the summary counts those failed at the end)."""
        self.sweep_behind = False
        """The last sweep stopped short of now (catching up): the next one follows at once."""
        self._hints: OrderedDict[str, None] = OrderedDict()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self.ready = asyncio.Event()
        """Set once the worker serves (its listeners are up): when READY=1 goes to systemd."""
        self._fatal: BaseException | None = None
        self._warned_retention = 0.0
        self._last_work = time.monotonic()
        self._rescue_slots = asyncio.Semaphore(settings.concurrency)
        self._rescuing: set[asyncio.Task[None]] = set()
        """Rescues in flight (started by a sweep): drained at shutdown like the workers."""
        self._enrich_after: dict[str, float] = {}
        """Rescued call -> when (monotonic) the enrichment may take it again."""
        self._enriching: set[str] = set()
        self._enrichments: set[asyncio.Task[None]] = set()
        self._enrich_cursor: tuple[str, str] | None = None
        """(created, SID) of the rescued call the enrichment loop took or passed last."""
        """Enrichments in flight: drained at shutdown like the workers."""
        self._enrich_tries: dict[str, int] = {}
        """Rescued call -> enrichments taken of it that did not complete it (the backoff)."""
        """When the last call was finished (for sealing once idle)."""
        self.ledger: Ledger | None = None
        self.archiver: Archiver | None = None
        self.exotel: ExotelClient | None = None

    # --- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """First call: drain and stop. Second call: stop now (in-flight calls are redone later)."""
        if self._stop.is_set():
            log.warning("second stop request: cancelling the calls in flight")
            self._force.set()
        else:
            log.info(
                "stopping: no new work; waiting up to %gs for calls in flight",
                self.config.shutdown_grace,
            )
            self._stop.set()
        self.schedule.wake()

    def hint(self, sid: str) -> bool:
        """A StatusCallback says ``sid`` ended. False if it is a duplicate (nothing to do)."""
        if sid in self._hints:
            return False
        self._hints[sid] = None
        if len(self._hints) > HINT_MEMORY:
            self._hints.popitem(last=False)
        assert self.ledger is not None
        if self.ledger.call_outcome(sid) == ARCHIVED:
            return False
        self._watching.discard(sid)
        return self._discover(sid, "webhook")

    # --- the schedule ----------------------------------------------------------------------------

    def _discover(self, sid: str, source: str, *, created: str | None = None) -> bool:
        """Put a call found by ``source`` in the ledger (pending) and the schedule."""
        if sid in self.schedule:
            return False
        assert self.ledger is not None
        self.ledger.track_call(sid, created_time=created)
        self.metrics.discovered[source] += 1
        self.schedule.add(sid)
        return True

    # --- run -------------------------------------------------------------------------------

    async def _take_writer_lock(self, held: contextlib.ExitStack) -> bool:
        """Hold the state directory's writer lock in ``held``; False if stopped first.

        A backfill or a retention job holding it ends by itself: the worker waits (telling
        systemd why, and that its start is not stuck) instead of exiting 2, which the units
        never restart (``RestartPreventExitStatus=2``)."""
        warned = False
        while True:
            try:
                held.enter_context(writer_lock(self.settings.state_dir))
                if warned:
                    log.info("the state directory is free now: starting")
                return True
            except WriterBusy as exc:
                status = (
                    f"waiting for pid {exc.holder} to release the state directory "
                    f"{self.settings.state_dir} (a backfill or a retention job?)"
                )
                if not warned:
                    warned = True
                    log.warning(
                        "another exotel-archiver process (pid %s) is archiving with the state "
                        "directory %s: waiting for it to end (checked every %g s); stop it to "
                        "start the worker sooner",
                        exc.holder,
                        self.settings.state_dir,
                        LOCK_POLL,
                    )
                usec = int((LOCK_POLL * 3) * 1e6)
                self.notifier.send(f"STATUS={status}", f"EXTEND_TIMEOUT_USEC={usec}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=LOCK_POLL)
                if self._stop.is_set():
                    log.info("stopped while waiting for the state directory")
                    return False

    async def run(self) -> Summary:
        settings = self.settings
        settings.require_exotel_credentials()
        if self.config.webhook_listen and not (
            self.config.webhook_secret or self.config.webhook_basic_auth
        ):
            raise ConfigError(
                "the StatusCallback receiver (ARCHIVER_WEBHOOK_LISTEN) needs a secret: set "
                "ARCHIVER_WEBHOOK_SECRET and/or ARCHIVER_WEBHOOK_BASIC_AUTH (or their credential "
                "files), and put it in the callback URL"
            )
        try:  # at once, not after a wait for the lock; the lock is waited for, not checked
            await preflight(settings, self.sink, lock=False)
        except BaseException:
            await self.sink.close()
            raise
        with contextlib.ExitStack() as held:
            if not await self._take_writer_lock(held):
                return Summary(self.metrics, started=False)  # stopped while waiting: did nothing
            self.ledger = Ledger(settings.state_dir / "ledger.sqlite3")
            try:  # the holder we waited for may have claimed it meanwhile: bound again, now
                await identity.bind(settings, self.sink, self.ledger, claim=True)
                manifest = ManifestWriter(settings.state_dir / "manifest.jsonl")
                manifest.sync(self.ledger)
                limiter = RateLimiter(settings.exotel.rate_limit, 60.0)
                limiter.share(ENRICH_LANE, enrich_per_minute(settings))
                async with (
                    ExotelClient(settings.exotel, limiter=limiter, retry=settings.retry) as exo,
                    recording_session(policy=address_policy(settings)) as http,
                ):
                    self.exotel = exo
                    self.archiver = Archiver(
                        settings,
                        sink=self.sink,
                        ledger=self.ledger,
                        manifest=manifest,
                        exotel=exo,
                        http=http,
                        stop_on_refusals=False,  # a false stop would keep it down: it warns
                    )
                    return await self._serve()
            finally:
                if self.archiver is not None:  # writes of calls cut off end before it closes
                    self.archiver.recorder.close()
                self.ledger.close()
                await self.sink.close()

    async def _serve(self) -> Summary:
        assert self.ledger is not None and self.archiver is not None
        for sid, outcome, _created in self.ledger.unarchived():
            if outcome != FAILED:  # failed calls come back through the sweep
                self._discover(sid, "restart")
            else:
                self.metrics.failed_calls += 1
        webhook = metrics = None
        try:
            if self.config.webhook_listen:
                webhook = await listen(
                    self.config.webhook_listen,
                    webhook_app(self.config, self.hint, self.metrics),
                    "StatusCallback receiver",
                )
            if self.config.metrics_listen:
                metrics = await listen(
                    self.config.metrics_listen,
                    metrics_app(self.metrics, self._update_gauges),
                    "metrics",
                )
            intake = [asyncio.create_task(self._guard(self._poll_loop()), name="poll")]
            if self.config.sweep_interval > 0:
                intake.append(asyncio.create_task(self._guard(self._sweep_loop()), name="sweep"))
            if self.settings.enrich == "background":
                intake.append(asyncio.create_task(self._guard(self._enrich_loop()), name="enrich"))
            status = asyncio.create_task(self._guard(self._status_loop()), name="status")
            workers = [
                asyncio.create_task(self._guard(self._work()), name=f"worker-{n}")
                for n in range(self.settings.concurrency)
            ]
            self._update_gauges()
            self.ready.set()
            self.notifier.ready(self._status_line())
            log.info("worker started: %s", self._status_line())
            await self._stop.wait()
            self.notifier.stopping("draining: " + self._status_line())
            for task in intake:
                task.cancel()
            if webhook is not None:
                await webhook.cleanup()
                webhook = None
            forced = await self._drain(workers)
            status.cancel()
            await asyncio.gather(*intake, status, return_exceptions=True)
            if self._fatal is not None:
                raise self._fatal
            sealed = await self.archiver.recorder.seal()
            if sealed:
                log.info("sealed %d manifest segment(s) into the destination", sealed)
            self._update_gauges()
            counts = self.ledger.call_counts()
            left = counts.get("pending", 0) + counts.get(NOT_READY, 0)
            failed = sum(self.ledger.call_outcome(sid) == FAILED for sid in self._failed_calls)
            return Summary(self.metrics, forced=forced, left_pending=left, failed=failed)
        finally:
            for runner in (webhook, metrics):
                if runner is not None:
                    await runner.cleanup()

    async def _drain(self, workers: list[asyncio.Task[None]]) -> bool:
        """Let in-flight calls finish within the grace period (or until forced). True if forced.

        Calls cut off when the grace period ends are not failures: they stay pending in the
        ledger and are redone at the next start; only a second stop request counts as forced.

        Workers take no new call once stopping; an idle worker returns at once.
        """
        if self.schedule.in_flight:
            log.info("waiting for %d call(s) in flight", len(self.schedule.in_flight))
        force: asyncio.Task[Any] = asyncio.create_task(self._force.wait())
        deadline = time.monotonic() + self.config.shutdown_grace
        waiting: set[asyncio.Task[Any]] = set(workers) | self._rescuing | self._enrichments
        while waiting and not force.done() and (remaining := deadline - time.monotonic()) > 0:
            _done, waiting = await asyncio.wait(
                waiting | {force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            waiting.discard(force)
        in_flight = set(self.schedule.in_flight)
        rescues = [*self._rescuing, *self._enrichments]
        for task in (*workers, *rescues, force):
            task.cancel()
        await asyncio.gather(*workers, *rescues, force, return_exceptions=True)
        cut_off = len(in_flight) - self._finished_meanwhile(in_flight)
        if cut_off:
            log.warning(
                "%d call(s) cut off at shutdown: they stay pending (or rescued, an enrichment "
                "cut off) and are redone at the next start",
                cut_off,
            )
        return self._force.is_set()

    def _finished_meanwhile(self, cut_off: set[str]) -> int:
        """Of the calls cut off, count those whose outcome was being committed when they were
        cancelled: the ledger's writer thread commits a write it has begun (it cannot be taken
        back), so once it is done the ledger, not the cancelled task, says what they are. Those
        archived are counted so, not as cut off. Returns how many."""
        if self.archiver is None or self.ledger is None or not cut_off:
            return 0
        self.archiver.recorder.close()  # the writes begun before the cancellation
        archived = [sid for sid in cut_off if self.ledger.call_outcome(sid) == ARCHIVED]
        self.metrics.calls[ARCHIVED] += len(archived)
        return len(archived)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a loop; an error that concerns every call stops the whole worker."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._fatal is None:
                self._fatal = exc
            if isinstance(exc, ArchiverError):
                log.error("stopping: %s", exc)
            elif isinstance(exc, OSError | sqlite3.Error):  # its own files: no traceback
                log.error("stopping: %s", state_problem(exc, self.settings.state_dir).message)
            else:
                log.exception("stopping on an unexpected error")
            self._stop.set()
            self._force.set()

    # --- the loops ---------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _work(self) -> None:
        assert self.archiver is not None
        while not self._stop.is_set():
            sid = await self.schedule.next_due()
            if sid is None:
                continue
            with self.schedule.working_on(sid):
                result = await self.archiver.archive_call(sid)
            self._after(result)
        self.schedule.wake()  # let the other workers see the stop too

    def _after(self, result: CallResult, *, recheck: bool = True) -> None:
        """Count a result; ``Rechecks`` decides when, if ever, to look at the call again
        (not for an enrichment, ``recheck=False``: the enrichment loop takes it again itself,
        within its share of the budget)."""
        assert self.ledger is not None
        sid, outcome = result.call_sid, result.outcome
        self._last_work = time.monotonic()
        self.metrics.calls[outcome] += 1
        if outcome == ARCHIVED:
            self.metrics.bytes_archived += result.bytes
        elif outcome == FAILED:
            self._failed_calls.add(sid)
            self.metrics.failures[result.reason or "unknown"] += 1
        delay = self.rechecks.after(result, self.ledger) if recheck else None
        if delay is not None:
            self.schedule.add(sid, delay)

    async def _poll_loop(self) -> None:
        assert self.exotel is not None and self.ledger is not None
        while not self._stop.is_set():
            try:
                listed = await active_calls(
                    self.exotel, on_truncated=self.reports.poll_truncated, on_skip=self.reports.skip
                )
            except (ExotelAuthError, CertificateError):  # every request would fail alike
                raise
            except ArchiverError as exc:
                self.metrics.poll_errors += 1
                log.warning("polling active calls failed (trying again): %s", exc)
            else:
                now_active = {call.sid for call in listed}
                for call in listed:
                    if call.sid not in self._watching:
                        created = call.start_time.isoformat() if call.start_time else None
                        if self.ledger.track_call(call.sid, created_time=created):
                            self.metrics.discovered["active"] += 1
                            log.info("call %s is in progress: watching it", call.sid)
                    self.schedule.remove(call.sid)  # nothing to fetch while it is listed
                    self.rechecks.check_in_progress(call, self.ledger)
                for sid in self._watching - now_active:
                    self.schedule.add(sid)
                self._watching = now_active
                self._update_gauges()
            await self._pause(self.config.poll_interval)

    async def _sweep_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.sweep()
            except (ExotelAuthError, CertificateError):  # every request would fail alike
                raise
            except ArchiverError as exc:
                self.metrics.sweep_errors += 1
                log.warning(
                    "reconciliation sweep failed (next one in %gs): %s",
                    self.config.sweep_interval,
                    exc,
                )
            else:
                if self.sweep_behind:  # catching up: the next bounded step at once
                    continue
            await self._pause(self.config.sweep_interval)

    async def sweep(self) -> int:
        """List one bounded window of the recent past (v1) and schedule what is not archived;
        returns how many. ``sweep_behind`` then says whether it stopped short of now."""
        assert self.exotel is not None and self.ledger is not None
        tz = self.settings.exotel.timezone
        now = datetime.now(tz).replace(microsecond=0)
        lookback = timedelta(seconds=self.config.sweep_lookback)
        since = now - lookback
        last = self.ledger.state("sweep_until")
        if last is not None:
            since = min(since, datetime.fromisoformat(last) - SWEEP_OVERLAP)
        since = max(since, now - API_WINDOW + timedelta(days=1))
        until = min(now, since + max(lookback, SWEEP_STEP) + SWEEP_OVERLAP)
        if now - until < SWEEP_OVERLAP:  # the last step takes the remainder: not one more sweep
            until = now
        young = timedelta(seconds=self.config.recording_grace) + timedelta(hours=2)
        found = 0
        backing_off: list[datetime] = []  # when each failed call listed may be looked at
        listing = (
            list_for_rescue(self.exotel, since, until, self.settings, self.reports.skip)
            if self.settings.rescue  # URLs to rescue from: the longest validity Exotel allows
            else list_calls(
                self.exotel,
                since,
                until,
                tz=tz,
                url_validity_minutes=int(self.settings.url_validity // 60),
                on_skip=self.reports.skip,
            )
        )
        async for call in listing:
            sid = call.sid
            if sid in self.schedule or sid in self._watching:
                continue
            outcome = self.ledger.call_outcome(sid)
            if outcome == ARCHIVED:
                continue
            if not call.has_recording and (outcome is not None or now - call.date_created > young):
                continue  # nothing to archive, and too old for a recording to appear now
            if outcome == RESCUED:
                continue  # its audio is safe; the enrichment loop completes it
            due = self.rechecks.failed_due(sid, self.ledger) if outcome == FAILED else None
            if due is not None and due > datetime.now(UTC):
                backing_off.append(due)
                continue  # its backoff has not passed: no request spent on it yet
            if due is not None:  # back from its backoff: one look, not the quick retries again
                self.rechecks.one_look(sid)
            if await self._rescued_from(call):
                found += 1
                continue
            if self._discover(sid, "sweep", created=call.date_created.isoformat()):
                found += 1
                log.info(
                    "call %s found by the sweep (%s)",
                    sid,
                    "new" if outcome is None else f"{outcome.replace('_', ' ')} in the ledger",
                )
        self.ledger.set_state("sweep_until", until.isoformat())
        self.sweep_behind = until < now
        self.metrics.sweeps += 1
        self.metrics.failed_calls = self.ledger.call_counts().get(FAILED, 0)
        waiting = (
            f"; {len(backing_off)} failed call(s) waiting for their next look (the first in "
            f"{duration((min(backing_off) - datetime.now(UTC)).total_seconds())})"
            if backing_off
            else ""
        )
        log.info(
            "sweep %s..%s: %d call(s) to look at%s%s",
            since.isoformat(),
            until.isoformat(),
            found,
            waiting,
            "; catching up: the next step follows at once" if self.sweep_behind else "",
        )
        return found

    async def _rescued_from(self, call: ListedCall) -> bool:
        """Rescue ``call`` from its listing item if the lane can (True); it is in the ledger as
        pending first, so a rescue cut off is redone at the next start."""
        if not self.settings.rescue or self.archiver is None or self.ledger is None:
            return False
        url = rescue_url(call, getattr(self.archiver, "recording_auth", None))
        binding = binding_for(self.settings, call) if url is not None else False
        if url is None or isinstance(binding, bool):
            return False
        await self._rescue_slots.acquire()  # the listing reads on only as rescues finish
        if (
            call.sid in self.schedule  # found meanwhile (a StatusCallback, a poll): not twice
            or call.sid in self._watching
            or self.ledger.call_outcome(call.sid) in (ARCHIVED, RESCUED)
        ):
            self._rescue_slots.release()
            return True
        self.ledger.track_call(call.sid, created_time=call.date_created.isoformat())
        self.metrics.discovered["sweep"] += 1
        self.schedule.in_flight.add(call.sid)  # not scheduled by anything else meanwhile
        task = asyncio.create_task(self._guard(self._rescue(call, url, binding)))
        self._rescuing.add(task)
        task.add_done_callback(self._rescuing.discard)
        return True

    async def _rescue(self, call: ListedCall, url: str, binding: Binding) -> None:
        assert self.archiver is not None
        try:
            with self.schedule.working_on(call.sid):
                result = await self.archiver.rescue_call(call, url, binding)
            self._after(result)
        finally:
            self._rescue_slots.release()

    async def _enrich_loop(self) -> None:
        """Enrich rescued calls, oldest first, a few at a time, until stopped."""
        slots = asyncio.Semaphore(max(1, self.settings.concurrency // 2))
        running = self._enrichments
        while not self._stop.is_set():
            sid = self._next_rescued()
            if sid is None:
                await self._pause(ENRICH_IDLE)
                continue
            await slots.acquire()
            if sid in self.schedule or self._stop.is_set():  # a worker has it, or stopping
                slots.release()
                self._enrich_after[sid] = time.monotonic() + ENRICH_IDLE
                continue
            self.schedule.in_flight.add(sid)
            self._enriching.add(sid)
            tries = self._enrich_tries.get(sid, 0)
            self._enrich_tries[sid] = tries + 1
            # Taken again only after a doubling delay: calls whose enrichment keeps failing
            # (v3 has lost them) never crowd out the younger ones from the share.
            self._enrich_after[sid] = time.monotonic() + ENRICH_RETRY * 2 ** min(tries, 7)
            task = asyncio.create_task(self._guard(self._enrich(sid, slots)))
            running.add(task)
            task.add_done_callback(running.discard)
        # Enrichments in flight finish within the shutdown grace (``_drain``), as calls do.

    async def _enrich(self, sid: str, slots: asyncio.Semaphore) -> None:
        assert self.archiver is not None
        try:
            with lane(ENRICH_LANE), self.schedule.working_on(sid):
                result = await self.archiver.archive_call(sid)
            if result.outcome == ARCHIVED:
                self._enrich_after.pop(sid, None)
                self._enrich_tries.pop(sid, None)
            self._after(result, recheck=False)
        finally:
            self._enriching.discard(sid)
            slots.release()

    def _next_rescued(self) -> str | None:
        """The next rescued call, oldest first, not being enriched and not waiting to be tried
        again: read on from where the last one was found (``_enrich_cursor``), wrapping round
        to the oldest once, so calls in their backoff are passed over once a round, not at
        every pick."""
        assert self.ledger is not None
        now = time.monotonic()
        for _ in range(2):
            while True:
                batch = self.ledger.rescued_calls(100, after=self._enrich_cursor)
                for created, sid in batch:
                    self._enrich_cursor = (created, sid)
                    if sid not in self._enriching and self._enrich_after.get(sid, 0.0) <= now:
                        return sid
                if len(batch) < 100:
                    break
            self._enrich_cursor = None  # the end: round to the oldest again
        return None

    async def _status_loop(self) -> None:
        assert self.archiver is not None
        every = min(STATUS_EVERY, self.notifier.watchdog_interval or STATUS_EVERY)
        last_seal = time.monotonic()
        while not self._stop.is_set():
            self._update_gauges()
            self._check_retention()
            self.notifier.status(self._status_line())
            if self.notifier.watchdog_interval:
                self.notifier.watchdog()  # this loop runs: the event loop is not stuck
            if time.monotonic() - last_seal >= SEAL_EVERY or self._idle_with_entries():
                last_seal = time.monotonic()
                await self.archiver.recorder.seal()
            await self._pause(every)

    def _idle_with_entries(self) -> bool:
        """No call in flight for SEAL_IDLE seconds, and manifest entries wait to be sealed."""
        assert self.ledger is not None
        return (
            not self.schedule.in_flight
            and time.monotonic() - self._last_work >= SEAL_IDLE
            and self.ledger.unsealed_count() > 0
        )

    # --- gauges, status, retention ---------------------------------------------------------------

    def _update_gauges(self) -> None:
        m = self.metrics
        m.queue_depth = self.schedule.waiting
        m.in_flight = len(self.schedule.in_flight)
        m.watched = len(self._watching)
        m.stuck_calls = self.rechecks.stuck
        if self.exotel is not None:
            m.api_requests = self.exotel.requests
            m.api_rate_limited = self.exotel.rate_limited
        if self.archiver is not None:
            m.url_refreshes = self.archiver.url_refreshes

    def _status_line(self) -> str:
        m = self.metrics
        return (
            f"archived {m.calls[ARCHIVED]}, failed {m.calls[FAILED]}, queued {m.queue_depth}, "
            f"in flight {m.in_flight}, watching {m.watched} active call(s)"
        )

    def _check_retention(self) -> None:
        """Warn when the oldest call not yet archived nears Exotel's retention window."""
        assert self.ledger is not None
        created = [c for _sid, _outcome, c in self.ledger.unarchived()]
        oldest = oldest_age(created, datetime.now().astimezone())
        limit = self.config.source_retention - self.config.retention_warning
        self.metrics.oldest_unarchived_age = oldest
        self.metrics.retention_at_risk = oldest >= limit
        if oldest >= limit and time.monotonic() - self._warned_retention > 3600:
            self._warned_retention = time.monotonic()
            days_left = (self.config.source_retention - oldest) / 86400
            log.warning(
                "the oldest call not yet archived is %.1f days old: Exotel deletes recordings "
                "after %g days (%.1f days left). Look at the failed calls (exotel-archiver "
                "verify / the ledger) before they are lost at the source",
                oldest / 86400,
                self.config.source_retention / 86400,
                days_left,
            )
