"""Parsing v3 call details exactly as the documentation shows them."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import pytest

from archiver.errors import ExotelProtocolError, InvalidCallSid
from archiver.exotel.models import (
    CallState,
    CallStatus,
    parse_call_details,
    validate_call_sid,
)

# The two responses of ../shared/exotel-docs/voice-v3-call-details.txt, verbatim.
ACTIVE = {
    "sid": "cabfb1dfa8c5e1c7f2c458423b7716b3",
    "direction": "outbound",
    "virtual_number": "+911414941199",
    "state": "active",
    "status": None,
    "created_time": "2022-11-03 22:54:40+05:30",
    "updated_time": "2022-11-03 22:54:58+05:30",
    "start_time": "2022-11-03 22:54:57+05:30",
    "end_time": "1970-01-01 05:30:00+05:30",
}
TERMINAL = {
    "sid": "cabfb1dfa8c5e1c7f2c458423b7716b3",
    "direction": "outbound",
    "virtual_number": "+911414941199",
    "state": "terminal",
    "status": "completed",
    "legs": "/v3/accounts/<account_sid>/calls/cabfb1dfa8c5e1c7f2c458423b7716b3/legs",
    "created_time": "2022-11-03 22:54:40+05:30",
    "updated_time": "2022-11-03 22:56:04+05:30",
    "start_time": "2022-11-03 22:54:57+05:30",
    "end_time": "2022-11-03 22:56:04+05:30",
    "total_duration": 84,
    "total_talk_time": 59,
    "custom_field": None,
    "app_id": None,
    "app_name": None,
    "digits": None,
    "recordings": [
        {
            "url": "https://s3-ap-south-1.amazonaws.com/exotel-mum1-recordings/Exotel/"
            "cabfb1dfa8c5e1c7f2c458423b7716b3.mp3"
        }
    ],
}
IST = timezone(timedelta(hours=5, minutes=30))


def test_active_call_from_the_docs() -> None:
    call = parse_call_details(ACTIVE)
    assert call.state is CallState.ACTIVE and not call.is_terminal
    assert call.status is None
    assert call.recordings is None
    assert call.end_time is None  # the 1970 sentinel means "not yet"
    assert call.created_time == datetime(2022, 11, 3, 22, 54, 40, tzinfo=IST)


def test_terminal_call_from_the_docs() -> None:
    call = parse_call_details(TERMINAL)
    assert call.is_terminal and call.status is CallStatus.COMPLETED
    assert call.total_duration == 84 and call.total_talk_time == 59
    assert call.end_time == datetime(2022, 11, 3, 22, 56, 4, tzinfo=IST)
    assert call.recordings is not None and len(call.recordings) == 1
    assert call.recordings[0].index == 1
    assert call.recordings[0].url.endswith("cabfb1dfa8c5e1c7f2c458423b7716b3.mp3")
    assert call.legs is not None and call.legs.endswith("/legs")


def test_digits_are_hyphen_separated() -> None:
    call = parse_call_details({**TERMINAL, "digits": "1-0-22"})
    assert call.digits == ("1", "0", "22")


@pytest.mark.parametrize("v2, v3", [("agent_unanswered", CallStatus.FROM_LEG_UNANSWERED)])
def test_v2_status_names_are_mapped(v2: str, v3: CallStatus) -> None:
    assert parse_call_details({**TERMINAL, "status": v2}).status is v3


@pytest.mark.parametrize("status", [s.value for s in CallStatus])
def test_all_six_statuses(status: str) -> None:
    assert parse_call_details({**TERMINAL, "status": status}).status == status


def test_recording_repr_hides_the_signed_url() -> None:
    call = parse_call_details(
        {**TERMINAL, "recordings": [{"url": "https://h/x.mp3?X-Amz-Signature=deadbeef"}]}
    )
    assert "deadbeef" not in repr(call)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"state": "ringing"}, "unknown state"),
        ({"status": "exploded"}, "unknown status"),
        ({"sid": None}, "'sid' is missing"),
        ({"created_time": "yesterday"}, "not a time"),
        ({"total_duration": "84"}, "type str"),
        ({"recordings": [{"url": "ftp://x/y.mp3"}]}, "not an http(s) URL"),
        ({"recordings": [{}]}, "no 'url'"),
        ({"recordings": "x"}, "not an array"),
    ],
)
def test_malformed_details_are_protocol_errors(change: dict[str, object], message: str) -> None:
    data = copy.deepcopy(TERMINAL)
    data.update(change)
    with pytest.raises(ExotelProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_call_details(data)


@pytest.mark.parametrize(
    "sid", ["", "../etc", "a/b", "a\x00b", "ca\u0431fb1", " abc", "x" * 65, None, 42]
)
def test_hostile_call_sids_are_refused(sid: object) -> None:
    with pytest.raises(InvalidCallSid, match="invalid call SID"):
        validate_call_sid(sid)


def test_hostile_sid_in_details_is_refused() -> None:
    with pytest.raises(InvalidCallSid):
        parse_call_details({**TERMINAL, "sid": "../../x"})
