"""The one retry policy: which failures are tried again, how often, and how long to wait.

Callers never write retry loops of their own. They wrap an attempt::

    async for attempt in retrying(policy, what="GET call details"):
        with attempt:
            details = await fetch()

An exception is retried only when it is an ``ArchiverError`` with ``retryable`` set (errors are
classified where the wire protocol is spoken). A ``retry_after`` attribute (HTTP 429
``Retry-After``) is honoured, capped at ``policy.max_wait``; otherwise the wait grows
exponentially with jitter. After ``policy.attempts`` attempts the last error is re-raised as is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from archiver.errors import ArchiverError

log = logging.getLogger("archiver.retry")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. The defaults suit Exotel's API and S3-compatible stores."""

    attempts: int = 5
    """Attempts in all, the first included."""
    initial_wait: float = 0.5
    """Seconds before the second attempt (then doubling, with jitter)."""
    max_wait: float = 30.0
    """No single wait is longer than this, Retry-After included."""


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ArchiverError) and exc.retryable


class _WaitRetryAfterOrBackoff:
    """Wait what the server asked for (Retry-After), else exponential backoff with jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._max = policy.max_wait
        self._backoff = wait_exponential(
            multiplier=policy.initial_wait, max=policy.max_wait
        ) + wait_random(0, policy.initial_wait)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after >= 0:
            return float(min(retry_after, self._max))
        return float(self._backoff(state))


def _log_before_sleep(what: str) -> object:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        # str(exc) of an ArchiverError is already free of secrets.
        log.warning(
            "%s failed (attempt %d): %s; retrying in %.1fs",
            what,
            state.attempt_number,
            exc if isinstance(exc, ArchiverError) else type(exc).__name__,
            wait,
        )

    return before_sleep


def retrying(policy: RetryPolicy, *, what: str) -> AsyncRetrying:
    """An ``AsyncRetrying`` that applies ``policy`` to retryable ``ArchiverError``s."""
    return AsyncRetrying(
        stop=stop_after_attempt(max(1, policy.attempts)),
        wait=_WaitRetryAfterOrBackoff(policy),
        retry=retry_if_exception(is_retryable),
        before_sleep=_log_before_sleep(what),  # type: ignore[arg-type]
        reraise=True,
    )
