"""Stub (H1 builds it): whether a recording download may carry the Exotel credentials."""

from __future__ import annotations

from dataclasses import dataclass

from archiver.config import Settings


@dataclass(frozen=True)
class RecordingAuth:
    @classmethod
    def from_settings(cls, settings: Settings) -> RecordingAuth:
        return cls()

    def header_for(self, url: str) -> str | None:
        return None
