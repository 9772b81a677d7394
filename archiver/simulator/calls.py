"""The simulator's data: calls, their life cycle, and deterministic recording bytes.

A ``SimCall`` is one call as Exotel would report it. Its state follows the clock: in progress
until ``end`` (listed by the active-calls endpoint, never by v1), then post-call processing until
``ready_at`` (v1 lists it, v3 still says ``active``), ``terminal`` after. Recording
bodies are a pure function of (call SID, position, size), so tests can compute the exact bytes a
URL serves and compare them with what the archiver stored.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from archiver.exotel.models import IST

_BLOCK = 64 * 1024
_CHUNK = 256 * 1024

V1_STATUS = {
    "completed": "completed",
    "from_leg_unanswered": "no-answer",
    "to_leg_unanswered": "no-answer",
    "from_leg_cancelled": "canceled",
    "to_leg_no_dial": "failed",
    "from_leg_no_dial": "failed",
}


@dataclass
class SimCall:
    """One simulated call. Mutable: tests move it from active to terminal."""

    sid: str
    created: datetime
    start: datetime
    end: datetime
    ready_at: datetime
    status: str = "completed"
    recordings: list[int] = field(default_factory=list)
    """Byte size of each recording, in recordings[] order."""
    tokens: list[str] = field(default_factory=list)
    """The opaque file name of each recording (not the call SID, as with real Exotel)."""
    direction: str = "outbound-api"
    virtual_number: str = "+911414941199"
    from_number: str = "+919800000001"
    to_number: str = "+919800000002"
    custom_field: str | None = None
    app_id: str | None = None
    app_name: str | None = None
    digits: str | None = None
    content_type: str = "audio/mpeg"
    voice_log_status: str | None = None
    """Forces the voice log's status (e.g. ``processing``); None: derived from the call."""

    def state(self, now: datetime) -> str:
        """The v3 ``state``: ``active`` until post-call processing is done."""
        return "terminal" if now >= self.ready_at else "active"

    def in_progress(self, now: datetime) -> bool:
        """Ringing or talking: what the active-calls endpoint lists."""
        return now < self.end


@dataclass(frozen=True)
class Asset:
    """A file the recording host serves: its bytes are ``recording_body(seed_key, size, ...)``."""

    call_sid: str
    seed_key: str
    size: int
    content_type: str

    @property
    def ext(self) -> str:
        return "wav" if "wav" in self.content_type else "mp3"

    def body(self) -> bytes:
        return b"".join(recording_body(self.seed_key, self.size, content_type=self.content_type))


def fmt_v3(t: datetime) -> str:
    """``2022-11-03 22:54:40+05:30``: v3 times, in IST."""
    text = t.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S%z")
    return f"{text[:-2]}:{text[-2:]}"


def fmt_v1(t: datetime) -> str:
    """``2022-11-03 22:54:40``: v1 times carry no offset; they are IST."""
    return t.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S")


def _header(content_type: str, size: int) -> bytes:
    if "wav" in content_type:
        riff = (max(size, 44) - 8).to_bytes(4, "little")
        return (
            b"RIFF"
            + riff
            + b"WAVEfmt "
            + (16).to_bytes(4, "little")
            + bytes.fromhex("01000100401f0000803e000002001000")
            + b"data"
            + (max(size, 44) - 44).to_bytes(4, "little")
        )
    # ID3v2.4 header (10 bytes, tag size 0) followed by an MPEG-1 Layer III frame header
    return b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64"


def recording_body(
    seed_key: str,
    size: int,
    start: int = 0,
    end: int | None = None,
    content_type: str = "audio/mpeg",
) -> Iterator[bytes]:
    """The bytes ``[start, end)`` of a recording of ``size`` bytes, in chunks of ≤ 256 KiB.

    Deterministic and seekable: one 64 KiB pseudo-random block per recording, chunk ``i`` of it
    rotated by an offset derived from ``i``; a format header overwrites the first bytes.
    """
    end = size if end is None else min(end, size)
    rng = random.Random(hashlib.sha256(seed_key.encode()).digest())
    block = rng.randbytes(_BLOCK)
    header = _header(content_type, size)[:size]
    pos = start
    while pos < end:
        block_no, offset = divmod(pos, _BLOCK)
        rot = (block_no * 7919) % _BLOCK
        rotated = block[rot:] + block[:rot]
        take = min(_BLOCK - offset, end - pos, _CHUNK)
        piece = rotated[offset : offset + take]
        if pos < len(header):
            overlap = header[pos : pos + take]
            piece = overlap + piece[len(overlap) :]
        yield piece
        pos += take


def make_sid(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def day_of_calls(
    rng: random.Random, n: int, day_start: datetime, sizes: tuple[int, int], now: datetime
) -> list[SimCall]:
    """``n`` calls spread over the 24 hours from ``day_start``, like a real day's traffic."""
    calls = []
    offsets = sorted(rng.uniform(0, 86_400 - 900) for _ in range(n))
    statuses = list(V1_STATUS)
    for offset in offsets:
        created = day_start + timedelta(seconds=offset)
        start = created + timedelta(seconds=rng.uniform(2, 20))
        talk = rng.uniform(15, 600)
        end = start + timedelta(seconds=talk)
        roll = rng.random()
        if roll < 0.2:  # unanswered / failed: no recording
            status, count = rng.choice(statuses[1:]), 0
        else:
            status, count = "completed", (2 if roll > 0.9 else 1)
        call = SimCall(
            sid=make_sid(rng),
            created=created,
            start=start,
            end=end,
            ready_at=end + timedelta(seconds=rng.uniform(60, 300)),
            status=status,
            recordings=[rng.randint(*sizes) for _ in range(count)],
            direction=rng.choice(["inbound", "outbound-dial", "outbound-api"]),
            digits=rng.choice([None, None, "1", "2-5"]),
            app_id=rng.choice([None, "233516"]),
        )
        call.app_name = "Support flow" if call.app_id else None
        call.tokens = [make_sid(rng) for _ in call.recordings]
        if call.ready_at > now:  # a call of today still in progress
            call.ready_at = max(call.ready_at, now + timedelta(minutes=5))
        calls.append(call)
    return calls
