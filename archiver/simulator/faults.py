"""Fault switches of the simulator: scripted (next N requests) and random (seeded rates).

Tests set them from another thread while the server runs; a lock guards the scripts.

API faults (v1 and v3): an HTTP status to answer instead (429 carries ``Retry-After``).
Recording faults:

======================  ========================================================================
``cut``                 full Content-Length announced, about half the body sent, then reset
``expired``             403 ``AccessDenied`` "Request has expired", as S3 answers a stale URL
``html``                200 ``text/html`` error page
``xml200``              200 ``application/xml`` S3-style error body
``empty``               200 with an empty body
``short_length``        Content-Length larger than the body sent, connection then closed
``no_range``            a Range header is ignored: 200 with the whole body
``slow``                a pause between chunks
``noise``               200 audio/mpeg whose bytes are not MP3 (no ID3 tag, no frame sync)
======================  ========================================================================
"""

from __future__ import annotations

import random
import threading
from collections import deque

RECORDING_FAULTS = (
    "cut",
    "expired",
    "html",
    "xml200",
    "empty",
    "short_length",
    "no_range",
    "slow",
    "noise",
)


class Faults:
    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.api_script: deque[int] = deque()
        self.recording_script: deque[str] = deque()
        self.api_429_rate = 0.0
        self.api_500_rate = 0.0
        self.cut_rate = 0.0
        self.expired_rate = 0.0
        self.retry_after: float = 1
        self.latency: float = 0.0
        """Seconds every response (API or recording) waits before it starts."""
        self.bandwidth: int | None = None
        """Bytes per second per recording response, or None for no cap."""
        self.next_page_uri: str | None = None
        """When set, every v1 page answers with this NextPageUri (a loop, another host...)."""
        self.always_cut: set[str] = set()
        """Call SIDs whose recording downloads are always cut off."""

    def next_api(self) -> int | None:
        """The status to answer the next API request with, or None to answer normally."""
        with self._lock:
            if self.api_script:
                return self.api_script.popleft()
            roll = self._rng.random()
            if roll < self.api_429_rate:
                return 429
            if roll < self.api_429_rate + self.api_500_rate:
                return 500
            return None

    def next_recording(self, call_sid: str) -> str | None:
        """The fault for the next recording request, or None."""
        with self._lock:
            if call_sid in self.always_cut:
                return "cut"
            if self.recording_script:
                return self.recording_script.popleft()
            roll = self._rng.random()
            if roll < self.cut_rate:
                return "cut"
            if roll < self.cut_rate + self.expired_rate:
                return "expired"
            return None
