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
``gzip``                the whole body gzip-compressed, with ``Content-Encoding: gzip``
``gzip_lie``            ``Content-Encoding: gzip`` on a body that is not gzip
``brotli``              ``Content-Encoding: br`` (an encoding the archiver does not decode)
``gzip_bomb``           a small gzip body that inflates to 64 MiB (an MP3 header, then zeros)
``endless``             a valid MP3 start, then bytes forever (chunked, no Content-Length)
``huge_length``         ``Content-Length`` announces 10 GiB (the body is the normal one)
``redirect``            302 to ``Faults.redirect_to`` (the recording's own URL when unset:
                        a loop)
======================  ========================================================================

Hostile answers (for tests of what the archiver does with bad input):

* ``details_body`` — raw bytes answered (status 200) instead of any call details;
  ``details_patch`` — fields merged into ``call_details`` (a value of ``DROP`` removes the
  field); ``details_recordings`` — a function turning each fresh pre-signed URL into what the
  answer carries instead (another host, another scheme...);
* ``bulk_body`` — raw bytes answered (status 200) instead of any v1 page; ``bulk_items_patch``
  — fields merged into every v1 item.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

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
    "gzip",
    "gzip_lie",
    "brotli",
    "gzip_bomb",
    "endless",
    "huge_length",
    "redirect",
)

DROP = object()
"""In ``details_patch``/``bulk_items_patch``: remove the field from the answer."""


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
        self.recording_for: dict[str, deque[str]] = {}
        """Call SID -> faults for that call's next recording requests, one each, in order."""
        self.always_cut: set[str] = set()
        """Call SIDs whose recording downloads are always cut off."""
        self.details_body: bytes | None = None
        """Raw bytes every call-details request is answered with (status 200)."""
        self.details_content_type: str = "application/json"
        self.details_patch: dict[str, Any] = {}
        """Fields merged into every ``call_details`` (``DROP`` removes one)."""
        self.details_recordings: Callable[[str], str] | None = None
        """Turns each fresh pre-signed recording URL into the URL the answer carries."""
        self.bulk_body: bytes | None = None
        """Raw bytes every v1 page is answered with (status 200)."""
        self.bulk_items_patch: dict[str, Any] = {}
        """Fields merged into every v1 ``Calls[]`` item (``DROP`` removes one)."""
        self.recording_url_for: dict[str, str] = {}
        """Call SID -> the recording URL its call details carry instead of a pre-signed one
        (a hostile value: a port out of range, an empty host label...)."""
        self.bulk_item_patches: dict[str, dict[str, Any]] = {}
        """Call SID -> fields merged into that call's v1 ``Calls[]`` item only (an invalid
        ``Sid`` or ``DateCreated`` for one item of a page)."""
        self.active_item_patches: dict[str, dict[str, Any]] = {}
        """Call SID -> fields merged into that call's item of the active-calls list only (an
        invalid ``call_sid`` for one call in progress)."""
        self.active_ignores_offset = False
        """True: the active-calls endpoint answers every page with the first one (it ignores
        ``offset``), as a misbehaving API might."""
        self.redirect_to: str | None = None
        """Where the ``redirect`` recording fault sends the client."""

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
            if self.recording_for.get(call_sid):
                return self.recording_for[call_sid].popleft()
            if self.recording_script:
                return self.recording_script.popleft()
            roll = self._rng.random()
            if roll < self.cut_rate:
                return "cut"
            if roll < self.cut_rate + self.expired_rate:
                return "expired"
            return None
