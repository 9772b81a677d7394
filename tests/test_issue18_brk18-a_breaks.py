"""Breaker A (issue 18): the rescue lane's record — crashes between steps, reruns with other
settings, a hostile or inconsistent Exotel. Each test proves one way the record says something
false or loses something silently; each fails on main as it stands — but the
``test_guard_*`` tests, which hold on main and guard what must stay so.

Crashes are real: the backfill is a child process (``python -m archiver``-like) that dies with
``os._exit`` — as a SIGKILL would, no ``finally``, no flush — at one exact point of a rescue,
then the next run goes on from what the ledger and the bucket hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver.exotel.models import IST
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import (
    ORDERS_APP,
    ORDERS_BY_APP,
    current_lock,
    invoke,
    ledger_rows,
    outcomes,
    wait_for,
    worker_env,
)
from tests.test_rescue import PREFIX, objects, the_day
from tests.test_rescue import lane_env as rescue_env


def lane_env(
    sim: Simulator, server: SimulatorServer, bucket: str, tmp_path: Path, **extra: str
) -> dict[str, str]:
    return rescue_env(sim, server, bucket, tmp_path, ARCHIVER_CONCURRENCY="1", **extra)


def noon() -> datetime:
    return datetime.combine(the_day(), datetime.min.time(), IST) + timedelta(hours=12)


def backfill(env: dict[str, str], day: date | None = None) -> Any:
    day = day or the_day()
    return invoke(["backfill", "--since", str(day), "--until", str(day)], env)


CRASH = textwrap.dedent(
    """
    import os, sys
    import {module} as target
    real = target.{name}
    def crash(*args, **kwargs):
        os._exit(137)  # as SIGKILL: no finally, nothing flushed
    target.{name} = crash
    from archiver.cli import main
    main(args=sys.argv[1:], prog_name="exotel-archiver")
    """
)


def crashing_backfill(
    env: dict[str, str], seaweed: SeaweedFS, module: str, name: str, day: date | None = None
) -> subprocess.CompletedProcess[str]:
    """A real backfill in a child process that dies (exit 137, no clean-up) the moment
    ``module.name`` is called."""
    day = day or the_day()
    child = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ARCHIVER_"))},
        **seaweed.env(),
        **env,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    code = CRASH.format(module=module, name=name)
    args = ["backfill", "--since", str(day), "--until", str(day)]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=child, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 137, done.stderr
    return done


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a crash between recording-1 and call-v1.json, then a run the v3 way ----------------------


def test_half_rescued_call_then_a_v3_run_loses_v3s_first_recording_and_stores_one_twice(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """A call with three recordings whose v1 item names its *second* file (the lane's own
    premise: "matched by file, else by content", recording-1 is whatever v1 listed). The rescue
    stores that file as recording-1, then the process dies before call-v1.json. The next run
    goes the v3 way (ARCHIVER_RESCUE=off; the same happens with `archive SID`, or a rerun with
    enrich = never when rules need v3): without call-v1.json the call is not known as rescued,
    so `_archive_details` matches the ledger's ("recording", 1) by *index* to v3's recording 1.
    Result: the call is `archived` with recordings = 3, but v3's first recording was never
    downloaded (silent loss) and v3's second is stored twice, as recording-1 and recording-2
    (a duplicate). The v3 way must match a lane-stored recording by its file/bytes, as
    enrichment does."""
    call = sim.add_call(created=noon(), recordings=3, size=4096)
    sim.faults.bulk_item_patches[call.sid] = {
        "PreSignedRecordingUrl": sim.presign(server.base_url, call, 2, ttl=3600)
    }
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENRICH="never")
    crashing_backfill(env, seaweed, "archiver.archive", "download")
    rows = ledger_rows(tmp_path / "state", "SELECT kind, idx FROM objects")
    # The crash point (since the fix: call-v1.json is stored first): the v1 record stored, the
    # recording's download begun and cut off.
    assert rows == [("v1_record", 0)]

    again = backfill({**env, "ARCHIVER_RESCUE": "off"})

    assert again.exit_code == 0, again.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    stored = {k.rsplit("/", 1)[1]: v for k, v in objects(seaweed, bucket).items()}
    audio = [v for k, v in stored.items() if k.startswith("recording-")]
    wanted = {sha(sim.recording_asset(call, n).body()) for n in (1, 2, 3)}
    assert len(audio) == len({sha(a) for a in audio}), "the same audio stored under two keys"
    assert {sha(a) for a in audio} == wanted, "a recording v3 lists was never archived"


RULES_NEED_V3 = ORDERS_BY_APP


def effective_classes(state: Path) -> dict[str, str | None]:
    """Each object kind's class as it stands: its ledger row's, or the one a ``class_bound``
    event (the binding at enrichment, archiver.retention.binding) gave it."""
    rows = ledger_rows(state, "SELECT kind, key, retention_class FROM objects")
    bound = {
        key: json.loads(details)["retention_class"]
        for key, details in ledger_rows(
            state, "SELECT key, details FROM events WHERE kind = 'class_bound' ORDER BY seq DESC"
        )
    }
    return {kind: bound.get(key, cls) for kind, key, cls in rows}


def with_rules(env: dict[str, str], tmp_path: Path, config: str) -> dict[str, str]:
    path = tmp_path / "archiver.toml"
    path.write_text(config)
    return {**env, "ARCHIVER_CONFIG": str(path)}


@pytest.mark.parametrize(
    "then", [{"ARCHIVER_RESCUE": "off"}, {"ARCHIVER_ENRICH": "never"}], ids=["rescue-off", "never"]
)
def test_half_rescued_unbound_recording_stays_unlocked_forever_once_a_v3_run_archives_the_call(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
    then: dict[str, str],
) -> None:
    """Rules that need v3 (app_id): the rescue stores recording-1 *unbound* (no class, no
    lock), to be bound at enrichment — then dies before call-v1.json. The next run goes the v3
    way (rescue off, or enrich = never which sends such calls the v3 way): `_archive_details`
    reuses the ledger's recording-1 and marks the call `archived`, but `bind_rescued` runs only
    when call-v1.json is known, so recording-1 is never bound: the call is complete, its class
    `orders` asks for COMPLIANCE for 3 years, and its recording has no lock and no class in the
    ledger — while `unbound_window` (plan/status) counts only calls still `rescued`, so nothing
    reports it. An object left with a shorter lock than its class, silently."""
    call = sim.add_call(created=noon(), size=4096, app_id=ORDERS_APP)
    env = with_rules(lane_env(sim, server, lock_bucket, tmp_path), tmp_path, RULES_NEED_V3)
    crashing_backfill(env, seaweed, "archiver.archive", "download")
    assert ledger_rows(tmp_path / "state", "SELECT kind, retention_class FROM objects") == [
        ("v1_record", None)
    ]

    again = backfill({**env, **then})

    assert again.exit_code == 0, again.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    key = next(k for k in objects(seaweed, lock_bucket) if k.endswith("/recording-1.mp3"))
    rows = [(effective_classes(tmp_path / "state")["recording"],)]
    lock = current_lock(seaweed, lock_bucket, key)
    assert rows == [("orders",)] and lock is not None and lock["Mode"] == "COMPLIANCE", (
        f"an archived call's recording without its class: ledger {rows}, lock {lock}"
    )


# --- a hostile or inconsistent Exotel ----------------------------------------------------------


def test_a_v1_url_to_another_calls_recording_is_kept_as_this_calls_after_enrichment(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """Call A's v1 item carries a pre-signed URL of call B's file (a hostile or buggy
    listing; pre-signed URLs are per file, nothing ties them to the item's Sid). The rescue
    stores B's audio as A's recording-1. Enrichment then learns from v3 which files are A's:
    A's own recording matches nothing rescued (not by file, not by bytes), so it is stored as
    recording-2 — and recording-1, a file v3 does not list for A, stays in A's folder, in the
    ledger and the manifest as A's recording, the call `archived` with recordings = 1 but two
    recording objects. The record says B's audio is A's, and B's audio is stored twice. After
    enrichment every recording of a call must be one v3 lists for it (or the call must say,
    in its outcome/detail, that the rescued file is not among v3's)."""
    a = sim.add_call(created=noon(), size=4096)
    b = sim.add_call(created=noon() + timedelta(minutes=1), size=4096)
    sim.faults.bulk_item_patches[a.sid] = {
        "PreSignedRecordingUrl": sim.presign(server.base_url, b, 1, ttl=3600)
    }
    env = lane_env(sim, server, bucket, tmp_path)

    result = backfill(env)

    assert result.exit_code == 0, result.output
    got = outcomes(tmp_path / "state", a.sid, b.sid)
    rows = ledger_rows(
        tmp_path / "state",
        f"SELECT idx, sha256 FROM objects WHERE call_sid = '{a.sid}' AND kind = 'recording'",
    )
    detail = ledger_rows(tmp_path / "state", f"SELECT detail FROM calls WHERE call_sid = '{a.sid}'")
    own = sha(sim.recording_asset(a, 1).body())
    foreign = [idx for idx, digest in rows if digest != own]
    # Since the fix: kept (Exotel handed it out for this call's item), and said, in the call's
    # detail in the ledger (status, --report) and as a warning.
    said = bool(detail) and "none of the recordings v3 lists" in str(detail[0][0])
    assert not (got[a.sid] == "archived" and foreign and not said), (
        f"call A archived with recording(s) {foreign} that v3 does not list for it "
        f"(B's audio; ledger rows {rows}, detail {detail})"
    )
    assert own in {digest for _, digest in rows}  # A's own recording archived too


RULES_V1_DECIDES = RULES_NEED_V3.replace(f'app_id = "{ORDERS_APP}"', 'direction = "inbound"')


def test_a_class_v1_decided_that_v3_contradicts_is_never_corrected_so_the_recording_is_purged_early(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """Rules v1 decides (direction = inbound → orders: 3 years, COMPLIANCE, keep; else general:
    30 days, delete). v1's Direction says outbound-api, v3's says inbound (an inconsistent
    Exotel: the lane's docs admit the pages do not promise the words agree). The rescue binds
    recording-1 and call-v1.json to `general`; enrichment stores call.json as `orders` — and
    leaves the rescued objects in `general`: `bind_rescued` skips every record with a class.
    The complete call is `orders`, its recording locked 30 days and due for *deletion* by
    `retention purge` after 30 days. At enrichment a class v3 contradicts must be raised to the
    v3 class (a floor may rise, never fall)."""
    call = sim.add_call(created=noon(), size=4096, direction="inbound")
    sim.faults.bulk_item_patches[call.sid] = {"Direction": "outbound-api"}
    env = with_rules(lane_env(sim, server, lock_bucket, tmp_path), tmp_path, RULES_V1_DECIDES)

    result = backfill(env)

    assert result.exit_code == 0, result.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    classes = effective_classes(tmp_path / "state")
    assert classes["call_details"] == "orders"  # v3's class for the complete call
    key = next(k for k in objects(seaweed, lock_bucket) if k.endswith("/recording-1.mp3"))
    lock = current_lock(seaweed, lock_bucket, key)
    # Since the fix: raised to `orders` and its date; a GOVERNANCE lock keeps its mode until
    # `retention apply --strengthen-governance` (the bypass is never taken by itself: the
    # recorder warns and the plan lists it), so the mode is not asserted here.
    assert classes["recording"] == "orders" and lock is not None, (
        f"the orders call's recording is in class {classes['recording']!r}, lock {lock}"
    )
    until = lock["RetainUntilDate"].astimezone(UTC)
    assert until >= (noon() + timedelta(days=3 * 365)).astimezone(UTC), lock


@pytest.mark.parametrize("why", ["v1-date-early", "timezone-east"])
def test_a_v1_date_earlier_than_v3s_gives_the_rescued_recording_a_lock_shorter_than_its_class(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
    why: str,
) -> None:
    """Rules v1 decides; the rescue dates the class's lock from v1's DateCreated (no offset,
    read in EXOTEL_TIMEZONE). When v1's time is earlier than v3's created_time — an
    inconsistent listing, or simply EXOTEL_TIMEZONE set east of the account's zone (Asia/Tokyo
    for an IST account reads every v1 time 3.5 h early) — recording-1 is locked until
    v1-time + 3 years, hours short of v3's created_time + 3 years, and enrichment never looks at
    it again (its class is set). The v3 path would have locked it to v3's time. An object must
    never get a shorter lock than its class."""
    call = sim.add_call(created=noon(), size=4096, direction="inbound")
    env = with_rules(lane_env(sim, server, lock_bucket, tmp_path), tmp_path, RULES_V1_DECIDES)
    if why == "v1-date-early":
        early = call.created.astimezone(IST) - timedelta(hours=10)
        sim.faults.bulk_item_patches[call.sid] = {
            "DateCreated": early.strftime("%Y-%m-%d %H:%M:%S")
        }
    else:  # v1 exactly as Exotel sends it; the account's zone configured east of IST
        env["EXOTEL_TIMEZONE"] = "Asia/Tokyo"

    result = backfill(env)

    assert result.exit_code == 0, result.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    key = next(k for k in objects(seaweed, lock_bucket) if k.endswith("/recording-1.mp3"))
    lock = current_lock(seaweed, lock_bucket, key)
    assert lock is not None
    created = call.created.replace(microsecond=0).astimezone(UTC)
    due = created.replace(year=created.year + 3)
    assert lock["RetainUntilDate"] >= due - timedelta(seconds=1), (
        f"recording-1 locked until {lock['RetainUntilDate']}, its class says {due}"
    )


# --- the worker: a rescue cut off is "redone through v3 at the next start" ----------------------


def test_the_worker_restarted_after_a_crash_mid_rescue_loses_a_recording_and_stores_one_twice(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """The worker (`run`, lane on, nothing else changed) rescues a three-recording call whose
    v1 item names v3's second file, and dies between recording-1 and call-v1.json. Its docs
    say a rescue cut off "stays pending (redone through v3 at the next start)": the restarted
    worker archives the pending call through v3, whose `_archive_details` takes the ledger's
    recording-1 for v3's recording 1 by index. The call ends `archived` with v3's first
    recording never downloaded and its second stored twice — with no setting changed at all."""
    call = sim.add_call(recordings=3, size=4096)
    sim.faults.bulk_item_patches[call.sid] = {
        "PreSignedRecordingUrl": sim.presign(server.base_url, call, 2, ttl=3600)
    }
    env = {
        **worker_env(sim, server, tmp_path),
        "ARCHIVER_RESCUE": "on",
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
        "ARCHIVER_CONCURRENCY": "1",
    }
    code = CRASH.format(module="archiver.archive", name="download")
    died = subprocess.run(
        [sys.executable, "-c", code, "run"], env=env, capture_output=True, text=True, timeout=90
    )
    assert died.returncode == 137, died.stderr[-3000:]
    state = tmp_path / "state"
    assert ledger_rows(state, "SELECT kind, idx FROM objects") == [("v1_record", 0)]

    worker = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: outcomes(state, call.sid)[call.sid] == "archived", timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)

    audio = [p.read_bytes() for p in (tmp_path / "archive").rglob("recording-*")]
    wanted = {sha(sim.recording_asset(call, n).body()) for n in (1, 2, 3)}
    assert len(audio) == len({sha(a) for a in audio}), "the same audio stored under two keys"
    assert {sha(a) for a in audio} == wanted, "a recording v3 lists was never archived"


# --- the summary of a run ----------------------------------------------------------------------


def test_calls_enriched_in_this_run_are_counted_already_archived_when_the_listing_reaches_them(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """A run with enrich = never rescues five evening calls. The next run over the same day
    (enrich = background) enriches them at once — its enrichment takes rescued calls from the
    ledger while the listing is still rescuing the morning's new calls — and stores their
    call.json: they are `archived` by this run. When the listing then reaches them, `_job`
    finds them archived and reports them `already_archived`, overwriting the enrichment's
    result (`results` keeps the last one per call). The summary says 0 archived for them and
    `already_archived` for calls nothing had archived before this run; the plan lists them in
    `already_archived` too. Counts must not depend on which of the two got there first."""
    evening = [
        sim.add_call(created=noon() + timedelta(hours=6, minutes=n), size=4096) for n in range(5)
    ]
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENRICH="never")
    assert backfill(env).exit_code == 0
    assert set(outcomes(tmp_path / "state", *(c.sid for c in evening)).values()) == {"rescued"}
    morning = [
        sim.add_call(created=noon() - timedelta(hours=6, minutes=-n), size=4096) for n in range(20)
    ]
    sim.faults.bandwidth = 16_000  # a quarter of a second a download: the listing waits for them

    again = backfill({**env, "ARCHIVER_ENRICH": "background"})

    assert again.exit_code == 0, again.output
    every = [c.sid for c in evening + morning]
    assert set(outcomes(tmp_path / "state", *every).values()) == {"archived"}
    day = the_day()
    summary = json.loads((tmp_path / "state" / f"backfill-{day}-{day}.json").read_text())
    counts = summary["result"]["counts"]
    assert counts.get("already_archived", 0) == 0 and counts["archived"] == len(every), (
        f"every call was archived by this run; the summary says {counts}"
    )


# --- settings changed between runs -------------------------------------------------------------


def folders_of(seaweed: SeaweedFS, bucket: str, sid: str) -> dict[str, str]:
    """File name -> folder of each of the call's objects."""
    out = {}
    for key in objects(seaweed, bucket):
        folder, name = key.rsplit("/", 1)
        if f"/{sid}" in folder:
            out[name] = folder
    return out


def test_half_rescued_call_rerun_with_another_key_template_splits_the_call_over_two_folders(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """The lane keeps a rescued call in "its first folder, whatever v3 says" — but it takes
    that folder from call-v1.json, never from recording-1. The rescue stores recording-1 and
    dies before call-v1.json; the operator then changes ARCHIVER_KEY_TEMPLATE (adds
    {direction}) and runs again with the lane on: `rescue_call` computes the folder anew, so
    call-v1.json goes to the new folder, and enrichment follows call-v1.json: call.json too.
    recording-1 is left alone in the old folder — `export`/`verify` of a folder, or a human
    looking for the call, sees a call without its recording and a recording without its call.
    A call already begun must keep the folder of the objects it has."""
    call = sim.add_call(created=noon(), size=4096)
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENRICH="never")
    crashing_backfill(env, seaweed, "archiver.archive", "download")

    moved = {**env, "ARCHIVER_KEY_TEMPLATE": "{direction}/{yyyy}/{mm}/{dd}/{call_sid}"}
    assert backfill(moved).exit_code == 0
    assert backfill({**moved, "ARCHIVER_ENRICH": "background"}).exit_code == 0

    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    folders = folders_of(seaweed, bucket, call.sid)
    assert len(set(folders.values())) == 1, f"one call, two folders: {folders}"


def test_guard_a_rescued_call_enriched_by_archive_sid_after_settings_changed_stays_in_one_folder(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """GUARD (holds on main): a call rescued cleanly, then enriched by `archive SID` with the
    key template and the time zone changed, v1's DateCreated a day off v3's: call.json lands
    beside recording-1 and call-v1.json, and the second recording v3 lists too."""
    call = sim.add_call(created=noon(), size=4096, recordings=2)
    off = call.created.astimezone(IST) + timedelta(hours=13)  # the next day
    sim.faults.bulk_item_patches[call.sid] = {"DateCreated": off.strftime("%Y-%m-%d %H:%M:%S")}
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENRICH="never")
    assert backfill(env).exit_code == 0
    changed = {
        **env,
        "ARCHIVER_KEY_TEMPLATE": "{direction}/{yyyy}/{mm}/{dd}/{call_sid}",
        "EXOTEL_TIMEZONE": "UTC",
    }

    result = invoke(["archive", call.sid], changed)

    assert result.exit_code == 0, result.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    folders = folders_of(seaweed, bucket, call.sid)
    assert set(folders) == {"recording-1.mp3", "recording-2.mp3", "call-v1.json", "call.json"}
    assert len(set(folders.values())) == 1, folders


# --- repair over a rescued call -----------------------------------------------------------------


def test_repair_of_a_rescued_recording_fetches_v3s_recording_of_that_index_not_that_file(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """A rescued, enriched call whose v1 item named v3's second file: recording-1 holds v3's
    #2, recording-2 v3's #1 (the lane's "next free index"). recording-1 goes missing from the
    bucket; `repair` asks v3 for the recording *of index 1* — another file — finds other
    bytes, and gives up ("Exotel now serves other bytes"), exit 1, while Exotel still serves
    the archived file as its #2. The lane broke repair's assumption that index = v3 position;
    repair must find the file by its recorded source (or by bytes among v3's recordings)."""
    call = sim.add_call(created=noon(), recordings=2, size=4096)
    sim.faults.bulk_item_patches[call.sid] = {
        "PreSignedRecordingUrl": sim.presign(server.base_url, call, 2, ttl=3600)
    }
    env = lane_env(sim, server, bucket, tmp_path)
    assert backfill(env).exit_code == 0
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    key = next(k for k in objects(seaweed, bucket) if k.endswith("/recording-1.mp3"))
    s3 = seaweed.client()
    for version in s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", []):
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
    s3.delete_object(Bucket=bucket, Key=key)

    result = invoke(["repair"], env)

    assert result.exit_code == 0, result.output
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == sim.recording_asset(call, 2).body()


def test_the_worker_restarted_after_a_crash_mid_rescue_leaves_the_recording_without_its_class(
    sim: Simulator, server: SimulatorServer, seaweed: SeaweedFS, lock_bucket: str, tmp_path: Path
) -> None:
    """The worker, rules that need v3 (app_id), Object Lock: the sweep rescues a call unbound
    and the worker dies between recording-1 and call-v1.json. Restarted with the same
    settings, it redoes the pending call "through v3" — and `bind_rescued` runs only for calls
    with a call-v1.json: the call is `archived`, its recording has no class in the ledger and
    no lock in the bucket (its class asks for COMPLIANCE for 3 years). Nothing reports it: the
    unbound window counts only calls still `rescued`."""
    call = sim.add_call(size=4096, app_id=ORDERS_APP)
    config = tmp_path / "archiver.toml"
    config.write_text(RULES_NEED_V3)
    env = {
        **worker_env(sim, server, tmp_path),
        **seaweed.env(),
        "ARCHIVER_DESTINATION": f"s3://{lock_bucket}/{PREFIX}",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "ARCHIVER_CONFIG": str(config),
        "ARCHIVER_RESCUE": "on",
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
        "ARCHIVER_CONCURRENCY": "1",
    }
    code = CRASH.format(module="archiver.archive", name="download")
    died = subprocess.run(
        [sys.executable, "-c", code, "run"], env=env, capture_output=True, text=True, timeout=90
    )
    assert died.returncode == 137, died.stderr[-3000:]
    state = tmp_path / "state"
    assert ledger_rows(state, "SELECT kind, retention_class FROM objects") == [("v1_record", None)]

    worker = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: outcomes(state, call.sid)[call.sid] == "archived", timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)

    rows = [(effective_classes(state)["recording"],)]
    key = next(k for k in objects(seaweed, lock_bucket) if k.endswith("/recording-1.mp3"))
    lock = current_lock(seaweed, lock_bucket, key)
    assert rows == [("orders",)] and lock is not None and lock["Mode"] == "COMPLIANCE", (
        f"an archived call's recording without its class: ledger {rows}, lock {lock}"
    )


def test_guard_a_crash_after_call_json_before_the_binding_binds_at_the_next_run(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """GUARD (holds on main): enrichment stores call.json and dies before `bind_rescued`
    (no lock, no class_bound event). The next run of the lane binds and locks the rescued
    recording and call-v1.json, and stores nothing twice."""
    call = sim.add_call(created=noon(), size=4096, app_id=ORDERS_APP)
    env = with_rules(lane_env(sim, server, lock_bucket, tmp_path), tmp_path, RULES_NEED_V3)
    crashing_backfill(env, seaweed, "archiver.archive", "bind_rescued")
    kinds = ledger_rows(tmp_path / "state", "SELECT kind FROM objects")
    assert sorted(k for (k,) in kinds) == ["call_details", "recording", "v1_record"]

    again = backfill(env)

    assert again.exit_code == 0, again.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    stored = objects(seaweed, lock_bucket)
    assert len(stored) == 3
    for key in stored:
        lock = current_lock(seaweed, lock_bucket, key)
        assert lock is not None and lock["Mode"] == "COMPLIANCE", (key, lock)
    manifest = (tmp_path / "state" / "manifest.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in manifest if '"index"' in line]
    assert len(keys) == len(set(keys)) == 3


def test_a_backfill_with_the_lane_off_strands_rescued_calls_and_omits_them_from_its_report(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """`--rescue off` is documented as "every call through its v3 details", and enrich
    defaults to background. Calls rescued by an earlier run (enrich = never, or a run cut off
    before its enrichment) are then never completed by a backfill with the lane off: the plan
    files them under `rescued_before`, `archive_calls` is given only `to_archive`, and the
    report holds neither a result nor a count for them — the summary's counts add up to fewer
    calls than were listed, and nothing says three calls of the range are still incomplete.
    Turning the lane off (say, to get out of trouble with it) strands every rescued call."""
    calls = [sim.add_call(created=noon() + timedelta(minutes=n), size=4096) for n in range(3)]
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENRICH="never")
    assert backfill(env).exit_code == 0
    assert set(outcomes(tmp_path / "state", *(c.sid for c in calls)).values()) == {"rescued"}
    off = {k: v for k, v in env.items() if k != "ARCHIVER_ENRICH"}

    again = backfill({**off, "ARCHIVER_RESCUE": "off"})

    assert again.exit_code == 0, again.output
    day = the_day()
    summary = json.loads((tmp_path / "state" / f"backfill-{day}-{day}.json").read_text())
    counts = summary["result"]["counts"]
    got = outcomes(tmp_path / "state", *(c.sid for c in calls))
    assert set(got.values()) == {"archived"}, (
        f"rescued calls left rescued by a backfill 'through v3': {got}; summary counts {counts}"
    )


def test_guard_a_lane_backfill_while_the_worker_runs_is_refused_by_the_writer_lock(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """GUARD (holds on main): a lane backfill started while the worker (lane on) holds the
    state directory is refused with a one-line message naming the other process, exit 2, no
    traceback,
    and nothing of the range is downloaded by it."""
    sim.add_call(created=noon(), size=4096)
    env = {
        **worker_env(sim, server, tmp_path),
        "ARCHIVER_RESCUE": "on",
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
        "ARCHIVER_SWEEP_INTERVAL": "0",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (tmp_path / "state" / "ledger.sqlite3").exists(), timeout=30)
        before = sim.counters.get("recording_requests", 0)
        result = invoke(["backfill", "--since", str(the_day()), "--until", str(the_day())], env)
        assert result.exit_code != 0, result.output
        assert (
            "Traceback" not in result.output and "another exotel-archiver process" in result.output
        )
        assert sim.counters.get("recording_requests", 0) == before
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
