"""The long-running archiver: ``exotel-archiver run``.

One asyncio process, one rate limiter, one ledger. Calls reach one schedule (call SID → when to
look at it next) from four sources:

* **active** — ``GET .../calls/active`` every ``poll_interval``: a call is watched while it is
  listed (no call-details request is spent on it then) and scheduled as soon as it is not. A
  poll reads at most ``MAX_ACTIVE_PAGES`` pages and stops at a page that brings nothing new;
  either stop is counted (``active_poll_truncated_total``) and warned about at most hourly. An
  item with an invalid ``call_sid`` is skipped and reported as a malformed listing item is
  (below; ``active_bad_sid``), the rest of the poll used. A call listed in progress for longer
  than ``stuck_after`` (from its ``start_time``) is reported stuck as a call not ready is
  (below), and watched as before: that costs nothing extra;
* **sweep** — every ``sweep_interval``, the v1 listing of the recent past: calls never seen
  active, failed calls and calls whose recording appeared late are scheduled; it catches what
  polling and callbacks miss. After downtime sweeps reach back to where the last one got to, in
  bounded steps (``max(sweep_lookback, SWEEP_STEP)`` plus ``SWEEP_OVERLAP`` each) run one after
  the other, each step's end saved (``sweep_until``) as soon as it is listed, so a failure later
  does not list again what was done. A malformed item of a listing is skipped, counted
  (``skipped_items_total``) and named in one warning per item;
* **webhook** — optional StatusCallback hints (``archiver.webhook``): de-duplicated, scheduled now;
* **restart** — calls the ledger holds as ``pending`` or ``not_ready`` from an earlier run.

A pool of ``concurrency`` workers takes due calls and archives each with the same code as
``archive`` (``Archiver.archive_call``). A call still active, or whose voice log is processing,
is looked at again after ``recheck_interval``, then twice as long each time up to
``recheck_max``; once ``stuck_after`` has passed since its creation (the ledger's creation time,
so a restart does not reset it; since this worker first saw it not ready when the ledger has
none) it is reported stuck — one warning, ``stuck_calls_total`` and the ``stuck_calls`` gauge —
and looked at every ``stuck_recheck``, never dropped. A terminal call without recordings too, until
``recording_grace`` has passed since it was first seen so (Exotel adds recordings minutes after
the end); a failure that may pass (retries exhausted on a 5xx, a timeout) is tried again with
backoff, five times. Then a failed call is left to the sweeps, which list it again and again
but look at it (one call-details request) only once its backoff has passed: 15 min doubling to
hourly for a failure that may pass (``RETRYABLE_BACKOFF``), 1 h doubling to every 6 h for one
that will not (``FAILED_BACKOFF``: bad_url, storage_rejected, internal_error...), daily once it
has failed for a day; a look after a backoff is one look (not five quick retries again). The
backoff is in the ledger (``Ledger.defer_failed``), so a restart does
not reset it; the call stays ``failed`` there, is counted (``failed_calls``) and each sweep
says how many wait.

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from archiver import identity
from archiver.archive import Archiver, address_policy, preflight
from archiver.config import Settings
from archiver.errors import ArchiverError, CertificateError, ConfigError, ExotelAuthError
from archiver.exotel.client import ExotelClient
from archiver.exotel.listing import ActiveCall, SkippedItem, active_calls, list_calls
from archiver.ledger import Ledger, WriterBusy, writer_lock
from archiver.manifest import ManifestWriter
from archiver.metrics import Metrics, oldest_age
from archiver.notify import Notifier
from archiver.ratelimit import RateLimiter
from archiver.report import ALREADY_ARCHIVED, ARCHIVED, FAILED, NO_RECORDING, NOT_READY, CallResult
from archiver.schedule import Schedule
from archiver.serving import listen, metrics_app
from archiver.sinks import Sink
from archiver.state_errors import state_problem
from archiver.transfer import recording_session
from archiver.webhook import webhook_app

log = logging.getLogger("archiver.daemon")

API_WINDOW = timedelta(days=180)
SWEEP_OVERLAP = timedelta(hours=1)
SWEEP_STEP = timedelta(days=1)
"""The least one catching-up sweep moves on: it lists ``max(sweep_lookback, SWEEP_STEP)`` plus
``SWEEP_OVERLAP``, never more."""
SKIP_MEMORY = 10_000
"""Malformed listing items remembered, so each is counted and warned about once."""
TRUNCATED_WARN_EVERY = 3600.0
"""Seconds between two warnings about active-call polls cut short (of one kind)."""
FAILURE_RETRIES = 5


@dataclass(frozen=True)
class Backoff:
    """How long a failed call waits before a sweep may look at it again: ``first`` seconds
    after its first failure in a row, twice as long after each further one, ``cap`` at most."""

    first: float
    cap: float

    def delay(self, failures: int) -> float:
        return float(min(self.first * 2 ** min(max(failures - 1, 0), 30), self.cap))


RETRYABLE_BACKOFF = Backoff(first=900.0, cap=3600.0)
"""A failure that may pass (5xx, timeouts: its five quick retries done): 15 min, 30 min, then
hourly — a storm that has passed is caught up within the hour."""
FAILED_BACKOFF = Backoff(first=3600.0, cap=6 * 3600.0)
"""A failure that will not pass by itself (bad_url, unsafe_address, storage_rejected,
recording_unavailable, internal_error...): 1 h, 2 h, 4 h, then every 6 h."""
FAILED_DAILY_AFTER = 86400.0
FAILED_DAILY = 86400.0
"""A call failing for ``FAILED_DAILY_AFTER`` seconds (since its first failure in a row) is
looked at once every ``FAILED_DAILY`` seconds, whatever its kind (while the sweep's lookback
still lists it)."""
HINT_MEMORY = 10_000
STATUS_EVERY = 10.0
SEAL_EVERY = 600.0
LOCK_POLL = 5.0
"""Seconds between two tries at the state directory's writer lock while another process (a
backfill, a retention job) holds it."""
SEAL_IDLE = 30.0
"""Seconds without a call in flight after which waiting manifest entries are sealed (besides
every SEAL_EVERY seconds): the destination's chain catches up soon after work stops."""


@dataclass
class Summary:
    """What ``run()`` returns: the counters, and whether the shutdown was forced."""

    metrics: Metrics
    forced: bool = False
    left_pending: int = 0
    """Calls not finished at shutdown: still pending in the ledger, taken up at the next start."""
    failed: int = 0
    """Calls this worker looked at that are failed in the ledger at shutdown (each once, however
    often it was tried; ``calls_total{outcome="failed"}`` counts the tries)."""

    def line(self) -> str:
        m = self.metrics
        return (
            f"archived {m.calls[ARCHIVED]} call(s) ({m.bytes_archived} bytes), failed "
            f"{self.failed}, no recording {m.calls[NO_RECORDING]}; {m.api_requests} API "
            f"requests ({m.api_rate_limited} answered 429), {m.url_refreshes} URL refreshes; "
            f"{self.left_pending} call(s) left for the next start"
        )

    def fields(self) -> dict[str, object]:
        """The same figures as JSON fields (the worker's last log line in JSON mode)."""
        m = self.metrics
        return {
            "archived": m.calls[ARCHIVED],
            "already_archived": m.calls[ALREADY_ARCHIVED],
            "failed": self.failed,
            "no_recording": m.calls[NO_RECORDING],
            "not_ready": m.calls[NOT_READY],
            "bytes_archived": m.bytes_archived,
            "api_requests": m.api_requests,
            "api_rate_limited": m.api_rate_limited,
            "url_refreshes": m.url_refreshes,
            "left_pending": self.left_pending,
            "forced": self.forced,
        }


class Daemon:
    """The long-running worker. ``await run()`` until ``stop()``; see the module docstring."""

    def __init__(self, settings: Settings, *, sink: Sink, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.config = settings.daemon
        self.sink = sink
        self.notifier = notifier or Notifier({})
        self.metrics = Metrics()
        self.schedule = Schedule()
        self._watching: set[str] = set()
        self._no_recording_since: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._failed_calls: set[str] = set()
        """Calls that failed here at least once (the summary counts those failed at the end)."""
        self._not_ready_looks: dict[str, int] = {}
        """Call SID -> how many times this worker found it still active or processing."""
        self._not_ready_since: dict[str, float] = {}
        """Call SID -> when (Unix time) its stuck age starts: its start as the active-calls list
        says, else its creation as the ledger has it."""
        self._stuck: set[str] = set()
        self._skipped: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._warned_truncated: dict[str, float] = {}
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
        with contextlib.ExitStack() as held:
            if not await self._take_writer_lock(held):
                return Summary(self.metrics)  # stopped while waiting: nothing was started
            self.ledger = Ledger(settings.state_dir / "ledger.sqlite3")
            try:
                await preflight(settings, self.sink)
                await identity.bind(settings, self.sink, self.ledger, claim=True)
                manifest = ManifestWriter(settings.state_dir / "manifest.jsonl")
                manifest.sync(self.ledger)
                limiter = RateLimiter(settings.exotel.rate_limit, 60.0)
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
        waiting: set[asyncio.Task[Any]] = set(workers)
        while waiting and not force.done() and (remaining := deadline - time.monotonic()) > 0:
            _done, waiting = await asyncio.wait(
                waiting | {force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            waiting.discard(force)
        cut_off = len(self.schedule.in_flight)
        for task in (*workers, force):
            task.cancel()
        await asyncio.gather(*workers, force, return_exceptions=True)
        if cut_off:
            log.warning(
                "%d call(s) cut off at shutdown: they stay pending and are redone at the next "
                "start",
                cut_off,
            )
        return self._force.is_set()

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

    def _after(self, result: CallResult) -> None:
        """Count a result and decide when, if ever, to look at the call again."""
        assert self.ledger is not None
        sid, outcome, now = result.call_sid, result.outcome, time.monotonic()
        self._last_work = now
        self.metrics.calls[outcome] += 1
        recheck = self.config.recheck_interval
        if outcome == FAILED:
            self._failed_calls.add(sid)
        if outcome != NOT_READY:
            self._ready(sid)
        if outcome in (ARCHIVED, ALREADY_ARCHIVED):
            if outcome == ARCHIVED:
                self.metrics.bytes_archived += result.bytes
            self._forget(sid)
        elif outcome == NOT_READY:
            self.schedule.add(sid, self._not_ready_delay(sid))
        elif outcome == NO_RECORDING:
            first = self._no_recording_since.setdefault(sid, now)
            if now - first < self.config.recording_grace:
                self.ledger.set_call(
                    sid, NOT_READY, detail="terminal without recordings yet: looked at again"
                )
                self.schedule.add(sid, recheck)
            else:
                log.info("call %s has no recording", sid)
                self._forget(sid)
        elif outcome == FAILED:
            self.metrics.failures[result.reason or "unknown"] += 1
            tries = self._failures.get(sid, 0) + 1
            if result.retryable and tries <= FAILURE_RETRIES:
                self._failures[sid] = tries
                self.schedule.add(sid, recheck * 2 ** (tries - 1))
            else:
                self._forget(sid)
                self._defer_failed(result)

    def _defer_failed(self, result: CallResult) -> None:
        """Given up on for now: the call stays failed in the ledger, with when a sweep may
        look at it again (``RETRYABLE_BACKOFF``/``FAILED_BACKOFF``, daily once it has failed
        for a day). The ledger keeps it, so a restart does not make it due at once."""
        assert self.ledger is not None
        sid = result.call_sid
        now = datetime.now(UTC)
        before = self.ledger.retry_state(sid)
        if before is None:
            return  # not in the ledger (an invalid call SID): nothing to look at again
        since = datetime.fromisoformat(before.failed_since) if before.failed_since else now
        failing_for = (now - since).total_seconds()
        failures = before.failures + 1
        policy = RETRYABLE_BACKOFF if result.retryable else FAILED_BACKOFF
        wait = FAILED_DAILY if failing_for >= FAILED_DAILY_AFTER else policy.delay(failures)
        self.ledger.defer_failed(sid, now + timedelta(seconds=wait), now=now)
        log.info(
            "call %s stays failed in the ledger (%s, %d failure(s) in a row): a sweep looks at "
            "it again in %s at the earliest",
            sid,
            result.reason or "unknown",
            failures,
            _duration(wait),
        )

    def _forget(self, sid: str) -> None:
        self._no_recording_since.pop(sid, None)
        self._failures.pop(sid, None)
        self._ready(sid)

    def _ready(self, sid: str) -> None:
        """The call is no longer active or processing: its backoff and stuck state end."""
        self._not_ready_looks.pop(sid, None)
        self._not_ready_since.pop(sid, None)
        if sid in self._stuck:
            self._stuck.discard(sid)
            self.metrics.stuck_calls = len(self._stuck)

    def _not_ready_delay(self, sid: str) -> float:
        """Seconds until a call still active or processing is looked at again: doubling from
        ``recheck_interval`` up to ``recheck_max``; ``stuck_recheck`` once it is stuck."""
        assert self.ledger is not None
        looks = self._not_ready_looks.get(sid, 0)
        self._not_ready_looks[sid] = looks + 1
        now = time.time()
        if sid not in self._not_ready_since:
            self._not_ready_since[sid] = _epoch(self.ledger.call_created(sid), now)
        age = now - self._not_ready_since[sid]
        config = self.config
        if age < config.stuck_after:
            cap = max(config.recheck_max, config.recheck_interval)
            return float(min(config.recheck_interval * 2 ** min(looks, 30), cap))
        if sid not in self._stuck:
            self._stuck.add(sid)
            self.metrics.stuck_calls_total += 1
            self.metrics.stuck_calls = len(self._stuck)
            log.warning(
                "call %s is still not ready %.1f h after it was created (Exotel says it is "
                "active, or its voice log is processing): reported stuck. It stays not ready "
                "in the ledger and is looked at every %g min from now on; look it up in "
                "Exotel's dashboard",
                sid,
                age / 3600,
                config.stuck_recheck / 60,
            )
        return config.stuck_recheck

    async def _poll_loop(self) -> None:
        assert self.exotel is not None and self.ledger is not None
        while not self._stop.is_set():
            try:
                listed = await active_calls(
                    self.exotel, on_truncated=self._poll_truncated, on_skip=self._skip
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
                    self._check_in_progress(call)
                for sid in self._watching - now_active:
                    self.schedule.add(sid)
                self._watching = now_active
                self._update_gauges()
            await self._pause(self.config.poll_interval)

    def _check_in_progress(self, call: ActiveCall) -> None:
        """A call listed in progress for ``stuck_after`` (from its start as the list says, else
        its creation as the ledger has it, else since this worker first saw it) is reported
        stuck once: one warning, ``stuck_calls_total`` and the ``stuck_calls`` gauge. It is
        watched as before (the poll happens anyway) and archived once it is no longer listed."""
        assert self.ledger is not None
        sid, now = call.sid, time.time()
        if sid in self._stuck:
            return
        if sid not in self._not_ready_since:
            started = call.start_time.timestamp() if call.start_time else None
            self._not_ready_since[sid] = (
                min(started, now) if started else _epoch(self.ledger.call_created(sid), now)
            )
        age = now - self._not_ready_since[sid]
        if age < self.config.stuck_after:
            return
        self._stuck.add(sid)
        self.metrics.stuck_calls_total += 1
        self.metrics.stuck_calls = len(self._stuck)
        log.warning(
            "call %s has been listed in progress by Exotel for %.1f h: reported stuck. It is "
            "watched as before (at no extra cost) and archived once it ends; look it up in "
            "Exotel's dashboard",
            sid,
            age / 3600,
        )

    def _poll_truncated(self, reason: str, message: str) -> None:
        """An active-call poll was cut short: count it; warn at most hourly of each kind."""
        self.metrics.active_poll_truncated[reason] += 1
        now = time.monotonic()
        last = self._warned_truncated.get(reason)
        if last is None or now - last >= TRUNCATED_WARN_EVERY:
            self._warned_truncated[reason] = now
            log.warning(
                "polling active calls: %s (counted in active_poll_truncated_total; this warning "
                "comes again in %g min at the earliest)",
                message,
                TRUNCATED_WARN_EVERY / 60,
            )

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

    def _skip(self, item: SkippedItem) -> None:
        """A malformed listing item: counted and warned about once per item (sweeps list the
        same past again and again)."""
        key = (item.reason, item.sid, item.problem)
        if key in self._skipped:
            return
        self._skipped[key] = None
        if len(self._skipped) > SKIP_MEMORY:
            self._skipped.popitem(last=False)
        self.metrics.skipped_items[item.reason] += 1
        hint = (
            "; once checked, it can be archived by SID with `exotel-archiver archive "
            f"{item.sid.strip(chr(34))}`"
            if item.named
            else ""
        )
        log.warning(
            "%s. Counted in skipped_items_total{reason=%s}; the rest of the listing goes on%s",
            item.line(),
            item.reason,
            hint,
        )

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
        young = timedelta(seconds=self.config.recording_grace) + timedelta(hours=2)
        found = 0
        backing_off: list[datetime] = []  # when each failed call listed may be looked at
        async for call in list_calls(
            self.exotel,
            since,
            until,
            tz=tz,
            url_validity_minutes=int(self.settings.url_validity // 60),
            on_skip=self._skip,
        ):
            sid = call.sid
            if sid in self.schedule or sid in self._watching:
                continue
            outcome = self.ledger.call_outcome(sid)
            if outcome == ARCHIVED:
                continue
            if not call.has_recording and (outcome is not None or now - call.date_created > young):
                continue  # nothing to archive, and too old for a recording to appear now
            due = self._failed_due(sid) if outcome == FAILED else None
            if due is not None and due > datetime.now(UTC):
                backing_off.append(due)
                continue  # its backoff has not passed: no request spent on it yet
            if due is not None:  # back from its backoff: one look, not the quick retries again
                self._failures[sid] = FAILURE_RETRIES
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
            f"{_duration((min(backing_off) - datetime.now(UTC)).total_seconds())})"
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

    def _failed_due(self, sid: str) -> datetime | None:
        """When the failed call ``sid`` may be looked at again; None: now (no backoff kept,
        e.g. failed by ``archive`` or an older version)."""
        assert self.ledger is not None
        state = self.ledger.retry_state(sid)
        if state is None or state.retry_at is None:
            return None
        try:
            return datetime.fromisoformat(state.retry_at)
        except ValueError:
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
        m.stuck_calls = len(self._stuck)
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


def _duration(seconds: float) -> str:
    """A wait as an operator reads it: ``45 s``, ``15 min``, ``1 h``, ``1.5 h``, ``1 day``."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 3570:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} day(s)"


def _epoch(created: str | None, default: float) -> float:
    """A ledger's creation time (ISO 8601 with an offset) as Unix time, not after ``default``;
    ``default`` when it is unknown or unreadable."""
    if not created:
        return default
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        return default
    return default if when.tzinfo is None else min(when.timestamp(), default)
