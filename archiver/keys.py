"""Object keys: where each archived artifact of a call goes inside the destination.

The default layout is date-partitioned by the call's creation date, in the time zone Exotel
reported it in (IST for Indian accounts)::

    {yyyy}/{mm}/{dd}/{call_sid}/recording-{n}.{ext}

``n`` is the recording's 1-based position in the call details' ``recordings[]``; ``ext`` is the
format the content gate found in the bytes (``mp3`` or ``wav``), never the URL's file name
(Exotel's file names are not always the call SID). The destination's own prefix
(``s3://bucket/prefix``) is added by the sink. Call SIDs are validated before they become part
of a key.
"""

from __future__ import annotations

from datetime import datetime

from archiver.exotel.models import validate_call_sid

CALL_JSON = "call.json"
LEGS_JSON = "legs.json"
VOICE_LOG_JSON = "voice-log.json"


def call_prefix(call_sid: str, created_time: datetime) -> str:
    """``yyyy/mm/dd/{call_sid}``: the folder of every artifact of one call."""
    validate_call_sid(call_sid)
    return f"{created_time:%Y/%m/%d}/{call_sid}"


def recording_key(call_sid: str, created_time: datetime, index: int, ext: str) -> str:
    if index < 1:
        raise ValueError("recording index is 1-based")
    return f"{call_prefix(call_sid, created_time)}/recording-{index}.{ext}"
