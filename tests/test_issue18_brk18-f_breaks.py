"""Breaker F (round 2, issue 18): the rescue lane after the brk18-d fixes — a rescue cut off
between its recording's PUT and its ledger commit, then completed the v3 way (`archive SID`, as
the worker's restart does). Each test fails on main for the reason its docstring gives.

Everything is real: SeaweedFS (an Object Lock bucket where retention matters), the simulator,
a child `backfill` process that dies (exit 137, no clean-up) at the recording's commit, the
CLI through ``invoke``. The crash set-up and the lane's environment are brk18-d's.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import ORDERS_APP, ORDERS_BY_APP, invoke, ledger_rows, outcomes
from tests.test_rescue import objects

BRK18_D = importlib.import_module("tests.test_issue18_brk18-d_breaks")
"""brk18-d's helpers: ``lane_env``, ``noon``, ``killed_backfill`` (dies at the recording's
commit), ``full_key``, ``current_lock``."""


def _recording_files(seaweed: SeaweedFS, bucket: str) -> list[str]:
    return sorted(k.rsplit("/", 1)[1] for k in objects(seaweed, bucket) if "/recording-" in k)


# --- v3 lists no recording for a call whose rescue was cut off: "no recording" ----------------


def test_a_cut_off_rescue_whose_v3_details_list_no_recording_is_reported_no_recording(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """The rescue stores call-v1.json (recorded), then recording-1 from v1's URL, and is
    killed before recording-1's ledger commit (and before the call is marked ``rescued``).
    The call is then archived the v3 way, and v3's details list no recording (the case the
    rescue lane exists for, and that `_archive_details` handles for a rescued call: "v1 listed
    a recording, v3 lists none: the rescued one is kept"). But `_archive_details` asks only
    whether the call's *outcome* is ``rescued`` (``self._rescued``), not whether the ledger
    holds its v1 record: it marks the call ``no_recording`` (exit 0, "no recording: 1",
    `status` "nothing needs attention"), while the recording v1 listed is in the bucket, in no
    ledger row and no manifest entry. `verify` calls it "unexpected" and the same call
    "rescued". Expected: the call kept rescued (or its recording-1 adopted), never
    ``no_recording``."""
    call = sim.add_call(created=BRK18_D.noon(), size=4096)
    env = BRK18_D.lane_env(sim, server, bucket, tmp_path)
    BRK18_D.killed_backfill(env, seaweed)
    state = tmp_path / "state"
    assert ledger_rows(state, "SELECT kind FROM objects") == [("v1_record",)]
    assert _recording_files(seaweed, bucket) == ["recording-1.mp3"]

    sim.faults.details_patch = {"recordings": None}  # v3: no recording (yet, or at all)
    again = invoke(["archive", call.sid], env)

    got = outcomes(state, call.sid)[call.sid]
    recorded = ledger_rows(state, "SELECT key FROM objects WHERE kind = 'recording'")
    assert got != "no_recording", (
        f"outcome {got!r}, exit {again.exit_code}, recordings recorded {recorded}, while the "
        f"bucket holds {_recording_files(seaweed, bucket)}: {again.output[-400:]}"
    )


# --- the class a cut-off rescue locked its recording under is dropped at enrichment ------------

RULES_V1_DECIDES = ORDERS_BY_APP.replace(
    f'app_id = "{ORDERS_APP}"', 'virtual_number = "+911400000001"'
)
"""A rule the v1 fields decide (``PhoneNumberSid``): a rescue binds its call at once."""


@pytest.mark.parametrize("v3_host", ["localhost", "127.0.0.1"], ids=["claimed", "v1-file"])
def test_a_cut_off_rescue_bound_to_a_kept_class_has_its_recording_recorded_to_be_deleted(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
    v3_host: str,
) -> None:
    """v1's item names the number ``orders`` keeps (3 years, COMPLIANCE, kept at the end); v3's
    details name another (``general``: 30 days, then deleted) — fields that contradict, which
    `bind_rescued` settles as "both floors at once, never lowered": a committed rescue's
    recording-1 stays ``orders``. The rescue binds the call to ``orders``: call-v1.json is
    recorded so, recording-1 is PUT locked COMPLIANCE until 2029 — and the run is killed before
    recording-1's commit. `archive SID` then adopts those bytes at recording-1 (by SHA-256 when
    v3 names the file on another host — the brk18-d fix's `claim` — or by v1's file), but
    stores it with `binding=None`: v3's class. The ledger and manifest record recording-1 as
    ``general`` until 30 days from the call (the store holds COMPLIANCE until 2029), and
    `bind_rescued` passes it over (it has a class). `retention plan` lists it
    ``ends_then_delete`` — the recording of a call the rules keep is scheduled for deletion,
    while its call-v1.json stays ``orders``. Expected: recording-1 in ``orders`` as a committed
    rescue leaves it."""
    call = sim.add_call(created=BRK18_D.noon(), size=4096)
    sim.faults.bulk_item_patches[call.sid] = {"PhoneNumberSid": "+911400000001"}
    env = BRK18_D.lane_env(sim, server, lock_bucket, tmp_path, RULES_V1_DECIDES)
    BRK18_D.killed_backfill(env, seaweed)
    state = tmp_path / "state"
    assert ledger_rows(state, "SELECT kind, retention_class FROM objects") == [
        ("v1_record", "orders")
    ]
    key = BRK18_D.full_key(seaweed, lock_bucket, "recording-1.mp3")
    assert (BRK18_D.current_lock(seaweed, lock_bucket, key) or {}).get("Mode") == "COMPLIANCE"

    sim.faults.details_recordings = lambda url: url.replace("127.0.0.1", v3_host)
    again = invoke(["archive", call.sid], env)

    assert again.exit_code == 0, again.output
    assert outcomes(state, call.sid)[call.sid] == "archived"
    assert _recording_files(seaweed, lock_bucket) == ["recording-1.mp3"]
    rows = ledger_rows(
        state,
        "SELECT kind, retention_class, retain_until FROM objects WHERE kind != 'call_details'",
    )
    plan = invoke(["retention", "plan"], env)
    classes = {kind: (cls, until) for kind, cls, until in rows}
    assert classes["recording"] == classes["v1_record"], (
        f"rows {rows}; retention plan: {plan.output[-600:]}"
    )
