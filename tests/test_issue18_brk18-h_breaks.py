"""Breaker H (round 4, issue 18): the fixes of 6581b8c, 5fe8cd5 and e9c6720 (a rescued call's
enrichment not queued again; a rescue cut off before its recording-1 rescued again from the
listing; `both_floors` binding whichever recording takes index 1 at enrichment). Each test fails
on main for the reason its docstring gives.

Everything is real: SeaweedFS (an Object Lock bucket), the simulator, a child `backfill`
process killed (exit 137) inside the rescue (brk18-d's ``killed_backfill``), the CLI through
``invoke``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import current_lock, invoke, ledger_rows, outcomes

BRK18_D = importlib.import_module("tests.test_issue18_brk18-d_breaks")

ORDERS_NUMBER = "+911400000001"

KEPT_GOVERNANCE = f"""
[retention]
default = "general"

[retention.classes.general]
period = "30d"
lock = "compliance"
at_end = "delete"

[retention.classes.orders]
period = "3y"
lock = "governance"
at_end = "keep"

[[retention.rules]]
class = "orders"
virtual_number = "{ORDERS_NUMBER}"
"""
"""``orders`` keeps its calls 3 years under GOVERNANCE; ``general`` (every other call) holds
them 30 days under COMPLIANCE, then deletes them: each class is the stronger in one way."""


def classes_of(state: Path) -> dict[str, tuple[str | None, str | None, str | None]]:
    rows = ledger_rows(
        state,
        "SELECT kind, retention_class, retain_until, lock_mode FROM objects "
        "WHERE kind != 'call_details'",
    )
    return {kind: (cls, until, mode) for kind, cls, until, mode in rows}


# --- both floors: the stronger lock is dropped when the v1 class's date is the later one ------


def test_a_fresh_put_at_enrichment_is_governance_where_v3s_class_says_compliance(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """v1's item names the number ``orders`` keeps (GOVERNANCE, 3 years, kept); v3's details
    name another: ``general`` (COMPLIANCE, 30 days, then deleted). The rescue records
    call-v1.json under ``orders`` and is killed before its recording's download: nothing was
    ever PUT at recording-1. At enrichment `both_floors` should give "the later date, the
    stronger lock" (docs/compliance.md: "so a fresh PUT is locked COMPLIANCE where either class
    says so"). But `_raised` returns None whenever the class stays the bound one and the date
    is not later — whatever the lock — and `both_floors` then falls back to the bound class's
    own lock: the recording, written fresh this very run, is PUT under GOVERNANCE (liftable by
    anyone with s3:BypassGovernanceRetention) though v3's class says COMPLIANCE for its first
    30 days. Expected: recording-1 locked COMPLIANCE (until the later date, 3 years)."""
    call = sim.add_call(created=BRK18_D.noon(), size=4096)
    sim.faults.bulk_item_patches[call.sid] = {"PhoneNumberSid": ORDERS_NUMBER}
    env = BRK18_D.lane_env(sim, server, lock_bucket, tmp_path, KEPT_GOVERNANCE)
    BRK18_D.killed_backfill(env, seaweed, BRK18_D.CRASH_AT_DOWNLOAD)
    state = tmp_path / "state"
    assert ledger_rows(state, "SELECT kind, retention_class FROM objects") == [
        ("v1_record", "orders")
    ]

    again = invoke(["archive", call.sid], env)

    assert again.exit_code == 0, again.output
    assert outcomes(state, call.sid)[call.sid] == "archived"
    key = BRK18_D.full_key(seaweed, lock_bucket, "recording-1.mp3")
    lock = current_lock(seaweed, lock_bucket, key)
    assert (lock or {}).get("Mode") == "COMPLIANCE", (
        f"the recording's lock {lock}; ledger {classes_of(state)}"
    )


# --- a rescue taken up again from the listing ignores call-v1.json's binding ------------------

KEPT_COMPLIANCE = """
[retention]
default = "general"

[retention.classes.general]
period = "30d"
lock = "governance"
at_end = "delete"

[retention.classes.orders]
period = "3y"
lock = "compliance"
at_end = "keep"

[[retention.rules]]
class = "orders"
virtual_number = "{number}"
"""


def test_a_cut_off_rescue_taken_up_again_from_the_listing_drops_call_v1s_kept_class(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """v1's item names the number ``orders`` keeps (COMPLIANCE, 3 years, kept). The rescue
    records call-v1.json under ``orders`` and is killed before its recording's download;
    `archive SID` then finds v3 lists no recording and leaves the call ``rescued`` ("a backfill
    of its day rescues it again from the listing"). The ``orders`` rule is then edited to
    another number (docs/compliance.md: "A class once bound — at rescue or at enrichment — is a
    floor ... a config edited later does not change it"). The backfill takes the rescue up
    again (5fe8cd5), but `_Lane._job` hands `rescue_call` `binding_for(settings, listed)` — the
    rules of today on the v1 fields — never the binding call-v1.json got: the recording v1
    listed is PUT fresh under ``general``, GOVERNANCE for 30 days, then deleted, while its
    call-v1.json stays ``orders``, kept. e9c6720 binds such a recording under call-v1.json's
    floors at enrichment; the listing's path does not. Expected: recording-1 bound as
    call-v1.json is (``orders``, COMPLIANCE)."""
    call = sim.add_call(created=BRK18_D.noon(), size=4096)
    sim.faults.bulk_item_patches[call.sid] = {"PhoneNumberSid": ORDERS_NUMBER}
    rules = tmp_path / "rules.toml"
    env = BRK18_D.lane_env(
        sim, server, lock_bucket, tmp_path, KEPT_COMPLIANCE.format(number=ORDERS_NUMBER)
    )
    BRK18_D.killed_backfill(env, seaweed, BRK18_D.CRASH_AT_DOWNLOAD)
    state = tmp_path / "state"
    sim.faults.details_patch = {"recordings": None}
    first = invoke(["archive", call.sid], env)
    assert first.exit_code == 0, first.output
    assert outcomes(state, call.sid)[call.sid] == "rescued"
    assert ledger_rows(state, "SELECT kind, retention_class FROM objects") == [
        ("v1_record", "orders")
    ]
    rules.write_text(KEPT_COMPLIANCE.format(number="+911400000777"))
    env["ARCHIVER_CONFIG"] = str(rules)

    again = BRK18_D.backfill(env)

    assert again.exit_code == 0, again.output
    classes = classes_of(state)
    assert "recording" in classes, (classes, again.output[-1500:])
    key = BRK18_D.full_key(seaweed, lock_bucket, "recording-1.mp3")
    lock = current_lock(seaweed, lock_bucket, key)
    assert classes["recording"] == classes["v1_record"], (
        f"ledger {classes}; the recording's lock {lock}"
    )


# --- a rescue that falls back to v3 and comes back rescued is enriched a second time ----------


def test_a_rescue_gone_the_v3_way_and_back_rescued_is_enriched_twice_in_one_backfill(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """A cut-off rescue (call-v1.json recorded, nothing at recording-1) whose v3 details list
    no recording is left ``rescued``; the next backfill takes it up again from the listing
    (5fe8cd5). v1's URL now fails (expired): `rescue_call` falls back to `archive_call`, which
    *is* the call's enrichment (its v3 details fetched) and answers ``rescued``
    (v3_no_recording). `_Lane._rescue` reports that result with `_report(result)` — enrich
    True — so the call is queued and `_Lane._enrich` fetches its v3 details a second time in
    the same run, for the same answer. docs/compliance.md: "A backfill enriches such a call
    once per run"; 6581b8c only marks the enrichment lane's own results. Expected: one v3
    details request for the call in the backfill."""
    call = sim.add_call(created=BRK18_D.noon(), size=4096)
    env = BRK18_D.lane_env(sim, server, bucket, tmp_path)
    BRK18_D.killed_backfill(env, seaweed, BRK18_D.CRASH_AT_DOWNLOAD)
    sim.faults.details_patch = {"recordings": None}
    first = invoke(["archive", call.sid], env)
    assert first.exit_code == 0, first.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "rescued"
    sim.faults.expired_rate = 1.0  # v1's URL cannot serve it: the rescue goes the v3 way
    before = sim.counters.get("v3_call_details", 0)

    done = BRK18_D.backfill(env)

    asked = sim.counters.get("v3_call_details", 0) - before
    assert done.exit_code == 0, done.output
    assert asked == 1, f"the call's v3 details fetched {asked} times in one backfill"
