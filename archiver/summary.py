"""What the long-running worker's ``run()`` returns: its counters at the end, and the closing
line it logs (``stopped: ...``; its fields in JSON mode). ``archiver.daemon`` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass

from archiver.metrics import Metrics
from archiver.report import ALREADY_ARCHIVED, ARCHIVED, NO_RECORDING, NOT_READY


@dataclass
class Summary:
    """What ``run()`` returns: the counters, and whether the shutdown was forced."""

    metrics: Metrics
    forced: bool = False
    started: bool = True
    """False: stopped while it waited for another process's writer lock (it did nothing)."""
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
