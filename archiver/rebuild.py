"""``manifest rebuild``: a lost ledger restored from the destination's manifest chain."""

from __future__ import annotations

from archiver.archive import sink_for
from archiver.config import Settings
from archiver.errors import ConfigError
from archiver.ledger import Entry, Ledger, SegmentRecord
from archiver.manifest import ManifestWriter, record_from_entry
from archiver.sinks import Sink
from archiver.verify import Chain, load_chain


def records_from(chain: Chain) -> list[Entry]:
    """Ledger rows for every entry of the chain (``manifest rebuild``)."""
    out = []
    for e in chain.entries:
        out.append(record_from_entry(e, segment=_segment_of(chain.segments, e["seq"])))
    return out


def _segment_of(segments: list[SegmentRecord], seq: int) -> int | None:
    for s in segments:
        if s.first_seq <= seq <= s.last_seq:
            return s.number
    return None


async def rebuild(sink: Sink, ledger: Ledger) -> Chain:
    """Restore an empty ledger from the destination's segments. The chain must be intact."""
    chain = await load_chain(sink)
    if chain.problems:
        raise ConfigError(
            "the manifest chain in the destination is damaged; not rebuilding from it: "
            + "; ".join(chain.problems)
        )
    ledger.restore(records_from(chain), chain.segments)
    return chain


async def run_rebuild(settings: Settings) -> Chain:
    """``exotel-archiver manifest rebuild``: a lost ledger restored from the destination."""
    sink = sink_for(settings)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        await sink.check()
        chain = await rebuild(sink, ledger)
        ManifestWriter(settings.state_dir / "manifest.jsonl").sync(ledger)
        return chain
    finally:
        ledger.close()
        await sink.close()
