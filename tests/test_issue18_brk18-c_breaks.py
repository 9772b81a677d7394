"""Breaker C (issue 18): the fixes of the first breaker round — the class raise at enrichment
(``archiver.retention.binding._raises``), ``call-v1.json`` read back for recording-1, the
folder kept for a call begun, the worker's enrichment loop. Each test proves one way the record
says something false or loses something silently and fails on main as it stands — but the
``test_guard_*`` tests, which hold on main and guard what must stay so.
"""

from __future__ import annotations

import importlib
from datetime import UTC, timedelta
from pathlib import Path

from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import current_lock, invoke, ledger_rows, outcomes

# --- helpers: breaker A's (its module's name has a hyphen: imported by name) -------------------

_A = importlib.import_module("tests.test_issue18_brk18-a_breaks")
PREFIX = _A.PREFIX
lane_env, the_day, noon, backfill, objects = (
    _A.lane_env,
    _A.the_day,
    _A.noon,
    _A.backfill,
    _A.objects,
)
effective_classes, with_rules, sha = (_A.effective_classes, _A.with_rules, _A.sha)
lock_of = current_lock


def recording_key(seaweed: SeaweedFS, bucket: str) -> str:
    return next(k for k in objects(seaweed, bucket) if k.endswith("/recording-1.mp3"))


# --- the class raise at enrichment: one class taken whole, never both floors ------------------

# A long class deleted at its end, and a shorter one kept at its end; v1 and v3 disagree on the
# call's direction (the pages do not promise the words agree: breaker A's premise).
RULES_TWO_FLOORS = """
[retention]
default = "records"

[retention.classes.records]
period = "10y"
lock = "governance"
at_end = "delete"

[retention.classes.orders]
period = "3y"
lock = "governance"
at_end = "keep"

[[retention.rules]]
class = "orders"
direction = "inbound"
"""


def test_a_keep_class_v1_decided_blocks_the_raise_so_the_recording_is_locked_short_of_v3s_class(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """v1 says inbound → `orders` (3 years, kept at its end); v3 says outbound-api → `records`
    (10 years, deleted at its end). `_raises` refuses any move from a class kept at its end to
    one deleted at its end — and so refuses the whole raise, the date with it. The complete
    call is `records` (call.json locked 10 years) but its recording and call-v1.json stay
    locked 3 years: after 3 years the recording of a 10-year call can be deleted by anyone
    with delete rights. "Never lowered" must hold for both floors at once: the later date AND
    keep-at-end (a lock until 10 years, then kept) — not one class picked whole."""
    call = sim.add_call(created=noon(), size=4096, direction="outbound-api")
    sim.faults.bulk_item_patches[call.sid] = {"Direction": "inbound"}
    env = with_rules(lane_env(sim, server, lock_bucket, tmp_path), tmp_path, RULES_TWO_FLOORS)

    result = backfill(env)

    assert result.exit_code == 0, result.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    classes = effective_classes(tmp_path / "state")
    assert classes["call_details"] == "records"  # v3's class for the complete call
    lock = lock_of(seaweed, lock_bucket, recording_key(seaweed, lock_bucket))
    assert lock is not None
    created = call.created.replace(microsecond=0).astimezone(UTC)
    due = created.replace(year=created.year + 10)
    assert lock["RetainUntilDate"] >= due - timedelta(seconds=1), (
        f"recording-1 (class {classes['recording']!r}) locked until {lock['RetainUntilDate']}; "
        f"the call's class `records` says {due}"
    )


def test_a_later_v1_date_blocks_the_raise_so_a_recording_v3_says_keep_is_deleted_at_its_end(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """The mirror case: v1 says outbound-api → `records` (10 years, deleted at its end); v3
    says inbound → `orders` (3 years, KEPT at its end). `_raises` raises only to a later date,
    so the recording stays `records`: `retention purge` deletes it after 10 years, while the
    call's own class (call.json is `orders`) says its recording is never deleted. The binding
    must keep the later date and still mark it kept at its end."""
    call = sim.add_call(created=noon(), size=4096, direction="inbound")
    sim.faults.bulk_item_patches[call.sid] = {"Direction": "outbound-api"}
    env = with_rules(lane_env(sim, server, lock_bucket, tmp_path), tmp_path, RULES_TWO_FLOORS)

    result = backfill(env)

    assert result.exit_code == 0, result.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    classes = effective_classes(tmp_path / "state")
    assert classes["call_details"] == "orders"
    at_end = {"records": "delete", "orders": "keep"}
    assert at_end.get(classes["recording"] or "") == "keep", (
        f"the recording of an `orders` call (kept at its end) is in class "
        f"{classes['recording']!r}: deleted at its end"
    )


RULES_BEFORE = """
[retention]
default = "general"

[retention.classes.general]
period = "30d"
lock = "governance"
at_end = "delete"
"""

RULES_AFTER = """
[retention]
default = "standard"

[retention.classes.standard]
period = "30d"
lock = "governance"
at_end = "delete"

[retention.classes.orders]
period = "3y"
lock = "governance"
at_end = "keep"

[[retention.rules]]
class = "orders"
direction = "inbound"
"""


def test_a_class_renamed_between_rescue_and_enrichment_is_never_raised_to_v3s_class(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """Rescued with `general` (30 days, the only class, v1 decides it); before enrichment (the
    worker enriches days or weeks later) the operator renames `general` to `standard` and adds
    `orders` (3 years, kept) for inbound calls — this call. `_raises` returns False for a
    class no longer in the policy ("kept as bound, never touched"), so the recording of an
    `orders` call keeps a 30-day lock and a class the policy does not know. An unknown current
    class gives no floor of its own; v3's class must still be applied (raising, never
    lowering, the lock)."""
    call = sim.add_call(created=noon(), size=4096, direction="inbound")
    base = lane_env(sim, server, lock_bucket, tmp_path)
    first = backfill({**with_rules(base, tmp_path, RULES_BEFORE), "ARCHIVER_ENRICH": "never"})
    assert first.exit_code == 0, first.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "rescued"

    then = with_rules(base, tmp_path, RULES_AFTER)
    again = invoke(["archive", call.sid], then)

    assert again.exit_code == 0, again.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    classes = effective_classes(tmp_path / "state")
    assert classes["call_details"] == "orders"
    lock = lock_of(seaweed, lock_bucket, recording_key(seaweed, lock_bucket))
    assert lock is not None
    created = call.created.replace(microsecond=0).astimezone(UTC)
    due = created.replace(year=created.year + 3)
    assert lock["RetainUntilDate"] >= due - timedelta(seconds=1), (
        f"recording-1 of an `orders` call in class {classes['recording']!r}, locked until "
        f"{lock['RetainUntilDate']}; `orders` says {due}"
    )


# --- call-v1.json read back for recording-1 ----------------------------------------------------


def test_a_rescue_whose_v1_url_is_gone_for_good_archives_v3s_only_recording_as_recording_2(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """v1 lists a recording URL that 404s for good (another file than v3's: Exotel's pages do
    not say the two URL forms match); v3's recording is fine. The rescue stores call-v1.json
    first, its download fails, the call falls back to the v3 way in the same process — which
    now sees a v1 record and no recording-1, reserves index 1 for "v1's file" (matched by file
    only, and no bytes to match by content), finds none, and stores v3's one recording as
    `recording-2`: the archived call has no recording-1, its only recording under index 2 (v3
    calls it 1), and nothing says why. A v1 file that never arrived must not hold index 1
    hostage: v3's recording 1 is recording-1."""
    call = sim.add_call(created=noon(), size=4096)
    gone = sim.presign_token(server.base_url, "no-such-recording", "mp3", ttl=3600)
    sim.faults.bulk_item_patches[call.sid] = {"PreSignedRecordingUrl": gone, "RecordingUrl": gone}
    env = lane_env(sim, server, bucket, tmp_path)

    result = backfill(env)

    assert result.exit_code == 0, result.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    names = sorted(k.rsplit("/", 1)[1] for k in objects(seaweed, bucket))
    rows = ledger_rows(tmp_path / "state", "SELECT kind, idx FROM objects ORDER BY kind, idx")
    assert "recording-1.mp3" in names and ("recording", 1) in rows, (names, rows)


def test_guard_a_rescue_falling_back_on_an_expired_url_stores_each_file_once_at_its_index(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """GUARD (holds on main). A three-recording call whose v1 URL (v3's *second* file) is
    expired: the rescue stores call-v1.json, then falls back to the v3 way in the same process.
    Each of v3's three files is stored once; v1's file is recording-1 (the index the lane
    gives it), the others follow; call-v1.json is kept, without a signature."""
    call = sim.add_call(created=noon(), recordings=3, size=4096)
    real = sim.clock
    sim.clock = lambda: real() - 3600  # signed an hour ago, valid 10 minutes
    expired = sim.presign(server.base_url, call, 2, ttl=600)
    sim.clock = real
    sim.faults.bulk_item_patches[call.sid] = {
        "PreSignedRecordingUrl": expired,
        "RecordingUrl": expired.split("?")[0],
    }
    env = lane_env(sim, server, bucket, tmp_path)

    result = backfill(env)

    assert result.exit_code == 0, result.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    stored = {k.rsplit("/", 1)[1]: v for k, v in objects(seaweed, bucket).items()}
    audio = {k: sha(v) for k, v in stored.items() if k.startswith("recording-")}
    want = {n: sha(sim.recording_asset(call, n).body()) for n in (1, 2, 3)}
    assert sorted(audio.values()) == sorted(want.values()), audio
    assert audio["recording-1.mp3"] == want[2]
    assert b"X-Amz-Signature" not in stored["call-v1.json"]
