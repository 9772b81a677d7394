"""``manifest rebuild``: a lost ledger restored from the destination's manifest chain."""

from __future__ import annotations

from archiver import identity
from archiver.archive import sink_for
from archiver.chain import Chain, load_chain
from archiver.config import Settings
from archiver.errors import ConfigError
from archiver.ledger import Entry, Ledger, ObjectRecord, SegmentRecord, writer_lock
from archiver.manifest import ManifestWriter, record_from_entry
from archiver.report import ARCHIVED, RESCUED
from archiver.sinks import Sink

PENDING = "pending"


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


def call_outcomes(
    records: list[Entry], *, voice_logs: bool | str, legs: bool = False
) -> list[tuple[str, str, str, int]]:
    """(call SID, outcome, created time, recordings) of every call the entries name.

    A call is ``archived`` once everything a run stores for it is in the chain: its
    ``call.json`` (stored after every recording of the call), and, when they are asked for, its
    legs, its voice log and (``voice_logs="audio"``) the voice-log file — each stored *after*
    ``call.json``, so a call whose later part failed has a ``call.json`` and is not archived.
    A call with its v1 listing item (``call-v1.json``, kind ``v1_record``) and no ``call.json``
    was rescued from the listing and not enriched yet: ``rescued`` (enrichment completes it).
    Else it is ``pending``, looked at again by the next run (which skips what is stored; at worst
    a few API requests for a part Exotel never had). A call whose objects were erased since
    stays ``archived`` (or ``rescued``): it is never fetched again for them. ``voice_logs``:
    ``off``, ``json`` or ``audio`` (True means ``json``, False ``off``).
    """
    mode = ("json" if voice_logs else "off") if isinstance(voice_logs, bool) else voice_logs
    wanted = {"call_details"}
    if legs:
        wanted.add("legs")
    if mode != "off":
        wanted.add("voice_log")
    if mode == "audio":
        wanted.add("voice_log_audio")
    kinds: dict[str, set[str]] = {}
    created: dict[str, str] = {}
    recordings: dict[str, int] = {}
    erased: set[str] = set()
    for record in records:
        if not isinstance(record, ObjectRecord):
            if record.kind == "erasure" and record.call_sid:
                erased.add(record.call_sid)
            continue
        kinds.setdefault(record.call_sid, set()).add(record.kind)
        created.setdefault(record.call_sid, record.call_created)
        recordings[record.call_sid] = recordings.get(record.call_sid, 0) + (
            record.kind == "recording"
        )
    out = []
    for sid, have in kinds.items():
        done = wanted <= have or ("call_details" in have and sid in erased)
        rescued = "v1_record" in have and "call_details" not in have
        outcome = ARCHIVED if done else RESCUED if rescued else PENDING
        out.append((sid, outcome, created[sid], recordings[sid]))
    return out


async def rebuild(
    sink: Sink, ledger: Ledger, *, voice_logs: bool | str = False, legs: bool = False
) -> Chain:
    """Restore an empty ledger from the destination's segments. The chain must be intact."""
    chain = await load_chain(sink)
    if chain.problems:
        raise ConfigError(
            "the manifest chain in the destination is damaged; not rebuilding from it: "
            + "; ".join(chain.problems)
        )
    records = records_from(chain)
    outcomes = call_outcomes(records, voice_logs=voice_logs, legs=legs)
    ledger.restore(records, chain.segments, outcomes)
    return chain


async def run_rebuild(settings: Settings) -> Chain:
    """``exotel-archiver manifest rebuild``: a lost ledger restored from the destination."""
    sink = sink_for(settings)
    try:
        await sink.check()
        with writer_lock(settings.state_dir):
            ledger = Ledger(settings.state_dir / "ledger.sqlite3")
            try:
                chain = await rebuild(
                    sink, ledger, voice_logs=settings.voice_logs, legs=settings.legs
                )
                # The restored ledger now speaks for this destination: bind it to its marker
                # (or, for a chain from before markers, to a new one).
                await identity.adopt(settings, sink, ledger, chain=bool(chain.segments))
                ManifestWriter(settings.state_dir / "manifest.jsonl").sync(ledger)
                return chain
            finally:
                ledger.close()
    finally:
        await sink.close()
