"""Breaker G (round 3, issue 18): the fix of 9c9e22f (`_as_rescued`: v1's recording of a
cut-off rescue stored at enrichment under call-v1.json's class, dated from v1). Each test fails
on main for the reason its docstring gives.

Everything is real: SeaweedFS (an Object Lock bucket), the simulator, a child `backfill`
process killed (exit 137) inside the rescue (brk18-d's ``killed_backfill``), the CLI through
``invoke``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import invoke, ledger_rows, outcomes
from tests.test_rescue import objects, the_day

BRK18_D = importlib.import_module("tests.test_issue18_brk18-d_breaks")

ORDERS_NUMBER = "+911400000001"


def rules(orders: str = "orders") -> str:
    return f"""
[retention]
default = "general"

[retention.classes.general]
period = "30d"
lock = "governance"
at_end = "delete"

[retention.classes.{orders}]
period = "3y"
lock = "compliance"
at_end = "keep"

[[retention.rules]]
class = "{orders}"
virtual_number = "{ORDERS_NUMBER}"
"""


def recording_files(seaweed: SeaweedFS, bucket: str) -> list[str]:
    return sorted(k.rsplit("/", 1)[1] for k in objects(seaweed, bucket) if "/recording-" in k)


def classes_of(state: Path) -> dict[str, tuple[str | None, str | None]]:
    rows = ledger_rows(
        state,
        "SELECT kind, retention_class, retain_until FROM objects WHERE kind != 'call_details'",
    )
    return {kind: (cls, until) for kind, cls, until in rows}


# --- a class renamed between rescue and enrichment -------------------------------------------


def test_a_class_renamed_after_a_cut_off_rescue_gives_its_kept_recording_a_30_day_class(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """v1's item names the number ``orders`` keeps (3 years, COMPLIANCE, kept); v3 names
    another (``general``: 30 days, deleted). The rescue records call-v1.json under ``orders``,
    PUTs recording-1 locked COMPLIANCE until 2029 and is killed before its commit. Then the
    config renames ``orders`` to ``orders_3y`` (same rule, same period). `_as_rescued` finds
    no class named ``orders`` any more and falls back to v3's details and class (None): the
    adopted recording-1 is recorded ``general``, 30 days, then deleted — while call-v1.json
    stays ``orders`` (`bind_rescued`'s `_raised` counts a class no longer configured as kept,
    its date stays). A committed rescue's recording-1 would have stayed ``orders`` the same
    way. Expected: recording-1 bound as call-v1.json is (class and date)."""
    call = sim.add_call(created=BRK18_D.noon(), size=4096)
    sim.faults.bulk_item_patches[call.sid] = {"PhoneNumberSid": ORDERS_NUMBER}
    env = BRK18_D.lane_env(sim, server, lock_bucket, tmp_path, rules())
    BRK18_D.killed_backfill(env, seaweed)
    state = tmp_path / "state"
    assert ledger_rows(state, "SELECT kind, retention_class FROM objects") == [
        ("v1_record", "orders")
    ]
    (tmp_path / "archiver.toml").write_text(rules("orders_3y"))

    again = invoke(["archive", call.sid], env)

    assert again.exit_code == 0, again.output
    assert outcomes(state, call.sid)[call.sid] == "archived"
    assert recording_files(seaweed, lock_bucket) == ["recording-1.mp3"]
    key = BRK18_D.full_key(seaweed, lock_bucket, "recording-1.mp3")
    lock = BRK18_D.current_lock(seaweed, lock_bucket, key)
    classes = classes_of(state)
    plan = invoke(["retention", "plan"], env)
    assert classes["recording"] == classes["v1_record"], (
        f"classes {classes}; the store's lock {lock}; retention plan: {plan.output[-600:]}"
    )


# --- the rescue cut off before its download, v3 naming the file on another host --------------


def test_a_rescue_cut_off_before_its_download_then_v3_by_another_host_drops_v1s_kept_class(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """The same contradicting fields (v1: ``orders``, kept 3 years; v3: ``general``, 30 days
    then deleted). The rescue records call-v1.json under ``orders`` and is killed before its
    recording's download begins: nothing at recording-1. v3 names the file with another host
    (the case `_enrich_recordings` allows: "when the URL forms differ"). No v3 recording matches
    v1's file, nothing is at the key to claim, so `_enrich_recordings` gives v1's own recording
    index 1 as "the next free index" with v3's details and class — `_as_rescued` is applied
    only to ``fixed == 1`` and to a claim. The very recording v1 listed (the same bytes) is
    recorded ``general``, locked GOVERNANCE for 30 days, then deleted; by v1's file (v3 on the
    same host) it is ``orders``. Expected: ``orders`` either way, as call-v1.json is."""
    call = sim.add_call(created=BRK18_D.noon(), size=4096)
    sim.faults.bulk_item_patches[call.sid] = {"PhoneNumberSid": ORDERS_NUMBER}
    env = BRK18_D.lane_env(sim, server, lock_bucket, tmp_path, rules())
    BRK18_D.killed_backfill(env, seaweed, BRK18_D.CRASH_AT_DOWNLOAD)
    state = tmp_path / "state"
    assert ledger_rows(state, "SELECT kind, retention_class FROM objects") == [
        ("v1_record", "orders")
    ]
    assert recording_files(seaweed, lock_bucket) == []

    sim.faults.details_recordings = lambda url: url.replace("127.0.0.1", "localhost")
    again = invoke(["archive", call.sid], env)

    assert again.exit_code == 0, again.output
    assert outcomes(state, call.sid)[call.sid] == "archived"
    assert recording_files(seaweed, lock_bucket) == ["recording-1.mp3"]
    body = next(b for k, b in objects(seaweed, lock_bucket).items() if "/recording-1." in k)
    assert body == sim.recording_asset(call, 1).body()  # v1's recording, no other
    key = BRK18_D.full_key(seaweed, lock_bucket, "recording-1.mp3")
    lock = BRK18_D.current_lock(seaweed, lock_bucket, key)
    classes = classes_of(state)
    plan = invoke(["retention", "plan"], env)
    assert classes["recording"] == classes["v1_record"], (
        f"classes {classes}; the store's lock {lock}; retention plan: {plan.output[-600:]}"
    )


# --- v1's class weaker than v3's: a fresh PUT at enrichment under the weaker lock -------------


def test_a_rescue_cut_off_before_its_download_is_put_governance_where_v3s_class_is_compliance(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """The other direction: v1's item names another number (``general``: GOVERNANCE, 30
    days), v3's details the one ``orders`` keeps (COMPLIANCE, 3 years). The rescue records
    call-v1.json under ``general`` and is killed before its recording's download: nothing was
    ever PUT for recording-1. At enrichment the recording is v1's file, so `_as_rescued` has it
    PUT *now*, fresh, under ``general``: locked GOVERNANCE. `bind_rescued` then raises the
    class to ``orders`` but cannot raise a GOVERNANCE lock to COMPLIANCE (the mode needs
    `retention apply --strengthen-governance`'s bypass): a call the rules keep under
    COMPLIANCE has its only recording, written this very run, under a lock any account with
    s3:BypassGovernanceRetention can lift. Nothing forced the weaker lock — no object was at
    the key. Expected: recording-1 PUT (or left) locked COMPLIANCE, as v3's class says."""
    call = sim.add_call(created=BRK18_D.noon(), size=4096, virtual_number=ORDERS_NUMBER)
    sim.faults.bulk_item_patches[call.sid] = {"PhoneNumberSid": "+911400000999"}
    env = BRK18_D.lane_env(sim, server, lock_bucket, tmp_path, rules())
    BRK18_D.killed_backfill(env, seaweed, BRK18_D.CRASH_AT_DOWNLOAD)
    state = tmp_path / "state"
    assert ledger_rows(state, "SELECT kind, retention_class FROM objects") == [
        ("v1_record", "general")
    ]
    assert recording_files(seaweed, lock_bucket) == []

    again = invoke(["archive", call.sid], env)

    assert again.exit_code == 0, again.output
    assert outcomes(state, call.sid)[call.sid] == "archived"
    key = BRK18_D.full_key(seaweed, lock_bucket, "recording-1.mp3")
    lock = BRK18_D.current_lock(seaweed, lock_bucket, key)
    events = ledger_rows(state, "SELECT key, details FROM events WHERE kind = 'class_bound'")
    assert (lock or {}).get("Mode") == "COMPLIANCE", (
        f"the recording's lock {lock}; classes {classes_of(state)}; class_bound {events}"
    )


# --- v3 lists no recording for a rescued call: the backfill's enrichment never ends -----------


def backfill_process(
    env: dict[str, str], seaweed: SeaweedFS, timeout: float, *more: str
) -> subprocess.CompletedProcess[str] | None:
    """A real `backfill` of the lane's day in a child process; None when it is still running
    after ``timeout`` seconds (it is then killed: only that child)."""
    day = str(the_day())
    child = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ARCHIVER_"))},
        **seaweed.env(),
        **env,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    args = [sys.executable, "-m", "archiver", "backfill", "--since", day, "--until", day]
    try:
        return subprocess.run(
            [*args, *more], env=child, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("rescue", ["cut-off", "committed"])
def test_a_backfill_enriching_a_rescued_call_whose_v3_lists_no_recording_never_ends(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
    rescue: str,
) -> None:
    """v3's details list no recording for a rescued call. `_archive_details` answers
    ``rescued`` (reason v3_no_recording) — and the 9c9e22f fix gives that answer now also for a
    rescue cut off before the call was marked rescued, whose detail even says "a backfill of
    its day rescues it again from the listing". But the lane's `_Lane._enrich` pops the call,
    enriches it, and `_report` puts every RESCUED result back on ``to_enrich``: the same call
    is enriched again at once, for ever. The backfill never ends (one call, one recording of
    4 KiB: well under a second's work), fetching the call's v3 details over and over at the
    enrichment's share of the rate limit. Expected: the backfill ends (exit 0 or 1), the call
    left rescued for a later run."""
    call = sim.add_call(created=BRK18_D.noon(), size=4096)
    env = BRK18_D.lane_env(sim, server, bucket, tmp_path)
    state = tmp_path / "state"
    if rescue == "cut-off":
        BRK18_D.killed_backfill(env, seaweed)
        sim.faults.details_patch = {"recordings": None}
        first = invoke(["archive", call.sid], env)
        assert first.exit_code == 0, first.output
        assert "a backfill of its day rescues it again" in first.output
    else:
        sim.faults.details_patch = {"recordings": None}
    before = sim.counters.get("v3_call_details", 0)

    done = backfill_process(env, seaweed, 25)

    asked = sim.counters.get("v3_call_details", 0) - before
    assert done is not None, (
        f"the backfill of one call still ran after 25 s, having fetched its v3 details {asked} "
        f"times; the call is {outcomes(state, call.sid)[call.sid]}"
    )


def test_the_backfill_a_cut_off_rescue_is_told_to_wait_for_never_records_its_recording(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """The rescue is killed between recording-1's PUT and its commit; `archive SID` then finds
    v3 lists no recording and (the 9c9e22f branch) marks the call ``rescued`` with the detail
    "recording-1 is in the destination but not recorded: a rescue cut off; a backfill of its
    day rescues it again from the listing". It does not: the lane's `_job` (and
    `Archiver.rescue_call`) skips every call the ledger has ``rescued`` ("rescued by an
    earlier run"), so nothing ever downloads or adopts recording-1 again. (Run here with
    ``enrich = never``, so the backfill ends: see the test above.) The recording v1 listed stays
    in the bucket outside the ledger and the manifest for good — `verify` exits 1 naming it
    UNEXPECTED, at every run. Expected: the backfill the detail promises records recording-1
    (adopted: the same bytes)."""
    call = sim.add_call(created=BRK18_D.noon(), size=4096)
    env = BRK18_D.lane_env(sim, server, bucket, tmp_path)
    state = tmp_path / "state"
    BRK18_D.killed_backfill(env, seaweed)
    sim.faults.details_patch = {"recordings": None}
    first = invoke(["archive", call.sid], env)
    assert "a backfill of its day rescues it again from the listing" in first.output

    done = backfill_process({**env, "ARCHIVER_ENRICH": "never"}, seaweed, 60)

    assert done is not None and done.returncode in (0, 1), done and done.stderr[-2000:]
    recorded = ledger_rows(state, "SELECT kind FROM objects ORDER BY kind")
    checked = invoke(["verify"], env)
    assert ("recording",) in recorded, (
        f"recorded {recorded}; the bucket holds {recording_files(seaweed, bucket)}; "
        f"verify exit {checked.exit_code}: {checked.output[-500:]}"
    )
