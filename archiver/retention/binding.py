"""Binding the retention class of a rescued call's objects at enrichment (stub: H2 fills it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from archiver.exotel.models import CallDetails
from archiver.ledger import ObjectRecord

if TYPE_CHECKING:
    from archiver.recorder import Recorder


async def bind_rescued(
    recorder: Recorder, details: CallDetails, records: list[ObjectRecord]
) -> list[ObjectRecord]:
    """The call's records once their class is bound (unchanged for now)."""
    return records
