"""When a recording URL dies, and whether there is still time to use it.

Every pre-signed URL has a deadline: ``X-Amz-Date + X-Amz-Expires`` when the URL carries them
(S3 query signing, what Exotel hands out), otherwise the time it was fetched plus the validity we
assume (Exotel's default lifetime, 5 minutes; 5-60 by account setting).

Before a download starts, the archiver compares the time left with the time the download should
take at the transfer rate measured so far (with a safety factor and margin). If it is too close,
it fetches a fresh URL first instead of starting a request that is likely to be refused — or, for
a resumed download, cut off again. A URL fetched less than a second ago is always used: clocks
differ, and a fresh URL is the best there is.

Note: S3 checks a pre-signed URL's expiry when a request arrives, not while the body streams, so
a download that started in time finishes; what expiry costs is the *next* request (a resume after
a cut, a retry). That is why the estimate covers the whole remaining transfer.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

DEFAULT_VALIDITY = 300.0
SAFETY_FACTOR = 1.5
MARGIN = 5.0
FRESH = 1.0


def url_deadline(url: str, fetched_at: float, validity: float = DEFAULT_VALIDITY) -> float:
    """POSIX time after which ``url`` will be refused."""
    try:
        query = parse_qs(urlsplit(url).query)
        signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return signed.timestamp() + float(query["X-Amz-Expires"][0])
    except (KeyError, IndexError, ValueError):
        return fetched_at + validity


class RateMeter:
    """Bytes per second of the downloads of this run, and their average size."""

    def __init__(self) -> None:
        self.bytes = 0
        self.seconds = 0.0
        self.count = 0

    def add(self, size: int, seconds: float) -> None:
        self.bytes += size
        self.seconds += max(seconds, 1e-6)
        self.count += 1

    @property
    def rate(self) -> float | None:
        return self.bytes / self.seconds if self.count else None

    @property
    def typical_size(self) -> int:
        return self.bytes // self.count if self.count else 0

    def seconds_for(self, size: int | None) -> float:
        """Estimated download time for ``size`` bytes (the typical size when unknown)."""
        rate = self.rate
        if not rate:
            return 0.0
        return (size if size is not None else self.typical_size) / rate


def too_close(
    deadline: float,
    fetched_at: float,
    needed: float,
    *,
    now: float | None = None,
) -> bool:
    """True if a URL with this deadline should be refreshed before a transfer of ``needed`` s."""
    now = time.time() if now is None else now
    if now - fetched_at < FRESH:
        return False
    return deadline - now < needed * SAFETY_FACTOR + MARGIN
