"""``archive --wait``: looking at calls again, bounded and politely, until they are done.

A script that archives a call right after it ends finds it still ``active`` (Exotel's post-call
processing) or terminal without its recording yet (Exotel adds recordings minutes after the
end). ``Wait`` is how long it may wait for that; ``Waiter.settle`` looks at each such call
again until it is archived (or settled otherwise: failed, or without a recording once the grace
has passed) or the time is up:

* each look is one ``Archiver.archive_call``: the call-details request goes through the run's
  rate limiter and retry policy like any other, and a call that has become terminal is archived
  by the very same code;
* the looks at one call are ``POLL.first`` seconds apart, twice as long each time up to
  ``POLL.cap`` (``rechecks.Backoff``, the worker's backoff shape): 30 min of waiting cost a call
  about 35 requests, never a tight loop; the last look is at the deadline;
* a terminal call without recordings is waited for until ``recording_grace`` (the worker's
  setting, ``daemon.recording_grace``: 20 min) after its end as Exotel reports it; meanwhile the
  ledger holds it not ready, with the detail the worker writes (``rechecks``), so a run cut off
  there looks at it again. One that ended longer ago is done at once: no recording.

When the time is up, what is still waiting stays ``not_ready`` in the report and the ledger
(``Waiter.timed_out`` names them and why); nothing half-done is recorded. ``parse_duration``
reads the ``--wait`` value.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from archiver.ledger import Ledger
from archiver.rechecks import NO_RECORDING_YET, Backoff, duration
from archiver.report import NO_RECORDING, NOT_READY, CallResult

log = logging.getLogger("archiver.archive")

DEFAULT_WAIT = 30 * 60.0
"""``--wait`` without a value: 30 minutes."""
MAX_WAIT = 6 * 3600.0
"""The longest ``--wait``: 6 h (the worker's ``stuck_after``). Calls that may take longer are
the long-running worker's job (``exotel-archiver run``)."""
POLL = Backoff(first=5.0, cap=60.0)
"""Seconds between two looks at a call still waited for: 5, 10, 20, 40, then every minute."""

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile(rf"^(?:{_NUMBER}|(?:{_NUMBER}[smh])+)$", re.ASCII | re.IGNORECASE)
_PART = re.compile(rf"({_NUMBER})([smh]?)", re.ASCII | re.IGNORECASE)
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``1h30m`` or plain seconds (``120``) as seconds, from 1 s to
    ``MAX_WAIT``.

    Raises ``ValueError`` with a message saying what a duration looks like."""
    if _DURATION.match(text.strip()) is None:
        raise ValueError(
            f"{text!r} is not a duration: write it like 90s, 15m, 2h or plain seconds (give "
            "the call SIDs first, or write --wait=DURATION, so a SID is not read as one)"
        )
    seconds = sum(float(n) * _UNIT[unit.lower()] for n, unit in _PART.findall(text))
    if seconds < 1:
        raise ValueError(f"{text!r}: wait at least 1s")
    if seconds > MAX_WAIT:
        raise ValueError(
            f"{text!r} is longer than {shown(MAX_WAIT)}, the most archive waits: for calls "
            "that take longer, run the worker (exotel-archiver run)"
        )
    return seconds


def shown(seconds: float) -> str:
    """A duration the way ``--wait`` takes it: ``45s``, ``15m``, ``2h``, ``1h30m``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"


@dataclass(frozen=True)
class Wait:
    """How long ``archive --wait`` waits, and how long recordings may follow a call's end."""

    limit: float
    """Seconds, from the start of the run."""
    recording_grace: float
    """Seconds after a call's end during which its recordings may still appear."""
    poll: Backoff = POLL


@dataclass(frozen=True)
class Waiting:
    """What the run waits for now (shown on a terminal, logged otherwise)."""

    calls: dict[str, str]
    """Call SID -> why it is waited for (``still active``, ``no recording yet``...)."""
    left: float
    """Seconds until the wait ends."""
    next_look: float
    """Seconds until the next look."""

    def line(self) -> str:
        sids = ", ".join(f"{sid} ({why})" for sid, why in self.calls.items())
        return (
            f"waiting for {len(self.calls)} call(s): {sids}; next look in "
            f"{duration(self.next_look)}, {duration(self.left)} left of --wait"
        )


class Waiter:
    """Looks at calls again until they are done or ``wait.limit`` has passed (module doc).

    Made before the run starts (its clock starts then); ``timed_out`` says afterwards which
    calls were still waited for when the time ran out, and why."""

    def __init__(
        self,
        wait: Wait,
        *,
        on_wait: Callable[[Waiting], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wait = wait
        self.on_wait = on_wait
        self.clock = clock
        self.deadline = clock() + wait.limit
        self.timed_out: dict[str, str] = {}
        """Call SID -> why it was still waited for when the time ran out."""
        self._first_seen: dict[str, float] = {}

    def waits_for(self, result: CallResult) -> str | None:
        """Why the call of ``result`` is to be looked at again; None: it is done."""
        if result.outcome == NOT_READY:
            if result.detail == NO_RECORDING_YET:  # held by ``hold``
                return "no recording yet"
            return "still active" if "still active" in (result.detail or "") else "not ready"
        if result.outcome != NO_RECORDING:
            return None
        now = time.time()
        since = result.ended.timestamp() if result.ended else None
        if since is None:  # no end time: from when this run first saw it so, as the worker does
            since = self._first_seen.setdefault(result.call_sid, now)
        return "no recording yet" if now - since < self.wait.recording_grace else None

    async def settle(
        self,
        results: list[CallResult],
        look: Callable[[str], Awaitable[CallResult]],
        ledger: Ledger,
        on_result: Callable[[CallResult], None] | None = None,
    ) -> list[CallResult]:
        """``results`` with each call still waited for looked at again (``look``) until it is
        done or the time is up; then those left are ``not_ready`` (in the ledger too) and
        named in ``timed_out``. ``on_result`` hears of each call once it is done."""
        out = list(results)
        waiting: dict[int, str] = {}
        for i, result in enumerate(out):
            if (why := self.waits_for(result)) is not None:
                waiting[i] = why
                self.hold(result, ledger)
        looks = dict.fromkeys(waiting, 0)
        due = {i: self.clock() + self.wait.poll.delay(1) for i in waiting}
        while waiting:
            now = self.clock()
            at = min(min(due[i] for i in waiting), self.deadline)
            if self.on_wait is not None:
                calls = {out[i].call_sid: why for i, why in waiting.items()}
                self.on_wait(Waiting(calls, max(self.deadline - now, 0.0), max(at - now, 0.0)))
            await asyncio.sleep(max(at - now, 0.0))
            final = self.clock() >= self.deadline
            for i in [i for i in waiting if final or due[i] <= self.clock()]:
                looks[i] += 1
                out[i] = await look(out[i].call_sid)
                why = self.waits_for(out[i])
                if why is None:
                    del waiting[i]
                    if on_result is not None:
                        on_result(out[i])
                    continue
                waiting[i] = why
                self.hold(out[i], ledger)
                due[i] = self.clock() + self.wait.poll.delay(looks[i] + 1)
            if final:
                break
        for i, why in waiting.items():
            self.timed_out[out[i].call_sid] = why
            log.info(
                "call %s: %s after %s (--wait): not ready",
                out[i].call_sid,
                why,
                shown(self.wait.limit),
            )
            if on_result is not None:
                on_result(out[i])
        return out

    @staticmethod
    def hold(result: CallResult, ledger: Ledger) -> None:
        """A terminal call whose recordings may still come is not ready, not "no recording":
        in the report, and in the ledger (so a run cut off here looks at it again)."""
        if result.outcome == NO_RECORDING:
            ledger.set_call(result.call_sid, NOT_READY, detail=NO_RECORDING_YET)
            result.outcome, result.detail = NOT_READY, NO_RECORDING_YET
