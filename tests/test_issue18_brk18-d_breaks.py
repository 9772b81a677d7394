"""Breaker D (issue 18 x issue 19): the rescue lane on encrypted objects (--encrypt-to, --sse),
and what enrichment, repair, verify and the reports do with a rescued call whose stored bytes
are ciphertext. Each test proves one way the record says something false, or a recording is
left unprotected or stored twice; each fails on main as it stands.

Everything is real: SeaweedFS (an Object Lock bucket where retention matters), the simulator,
the CLI through ``invoke``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from archiver.exotel.models import IST
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import (
    ORDERS_APP,
    ORDERS_BY_APP,
    current_lock,
    decrypt,
    invoke,
    ledger_rows,
    outcomes,
    write_keys,
)
from tests.test_rescue import PREFIX, objects, the_day
from tests.test_rescue import lane_env as rescue_env

RULES_NEED_V3 = ORDERS_BY_APP
"""Rules v1 cannot decide (app_id is v3's): a rescued recording is stored unbound, no lock,
and bound (locked COMPLIANCE, 3 years) at enrichment."""


def noon() -> datetime:
    return datetime.combine(the_day(), datetime.min.time(), IST) + timedelta(hours=12)


def lane_env(
    sim: Simulator,
    server: SimulatorServer,
    bucket: str,
    tmp_path: Path,
    rules: str | None = None,
    **extra: str,
) -> dict[str, str]:
    env = rescue_env(sim, server, bucket, tmp_path, ARCHIVER_CONCURRENCY="1", **extra)
    if rules is not None:
        path = tmp_path / "archiver.toml"
        path.write_text(rules)
        env["ARCHIVER_CONFIG"] = str(path)
    return env


def backfill(env: dict[str, str], day: date | None = None, *more: str) -> Any:
    day = day or the_day()
    return invoke(["backfill", "--since", str(day), "--until", str(day), *more], env)


def full_key(seaweed: SeaweedFS, bucket: str, name: str) -> str:
    return next(k for k in objects(seaweed, bucket) if k.endswith(f"/{name}"))


def ledger_key(key: str) -> str:
    """The ledger's key of a bucket key (the destination's prefix left off)."""
    return key.removeprefix(f"{PREFIX}/")


def version_locks(seaweed: SeaweedFS, bucket: str, key: str) -> list[tuple[bool, str | None]]:
    """(is latest, lock mode) of each version of ``key``, newest first."""
    s3 = seaweed.client()
    out = []
    for v in s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", []):
        if v["Key"] != key:
            continue
        try:
            got = s3.get_object_retention(Bucket=bucket, Key=key, VersionId=v["VersionId"])
            mode = got["Retention"].get("Mode")
        except s3.exceptions.ClientError:
            mode = None
        out.append((bool(v["IsLatest"]), mode))
    return out


# --- repair before enrichment: the binding locks a version that is no longer the object ------


def test_enrichment_locks_the_version_repair_replaced_and_leaves_the_recording_unlocked(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    lock_bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """Rules that need v3 (app_id): the rescue stores the encrypted recording-1 unbound (no
    lock yet). It is deleted out of band (a delete marker on top: the rescued version stays
    beneath), `repair --encrypt-to` puts back a fresh ciphertext as a *new* version — its
    `repaired` event names that version. Then enrichment binds the class: `bind_rescued` hands
    `bind_lock` the ledger row's `version_id` (the rescued version), never the repaired one the
    retention jobs know is the object now. COMPLIANCE lands on the hidden old version; the
    current recording — what anyone reads, what a delete removes — has no lock at all, while the
    `class_bound` event says the object is locked COMPLIANCE."""
    public, private = write_keys(tmp_path)
    call = sim.add_call(created=noon(), size=4096, app_id=ORDERS_APP)
    env = lane_env(
        sim, server, lock_bucket, tmp_path, RULES_NEED_V3, ARCHIVER_ENCRYPT_TO=str(public)
    )
    sim.faults.details_body = b"{not json"  # the first enrichment fails: the call stays rescued
    backfill(env)
    sim.faults.details_body = None
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "rescued"
    key = full_key(seaweed, lock_bucket, "recording-1.mp3")
    assert current_lock(seaweed, lock_bucket, key) is None  # unbound: no lock yet
    seaweed.client().delete_object(Bucket=lock_bucket, Key=key)  # a delete marker on top

    repaired = invoke(["repair"], env)
    assert repaired.exit_code == 0, repaired.output
    body = seaweed.client().get_object(Bucket=lock_bucket, Key=key)["Body"].read()
    assert decrypt(private, body) == sim.recording_asset(call, 1).body()

    enriched = backfill(env)

    assert enriched.exit_code == 0, enriched.output
    assert outcomes(tmp_path / "state", call.sid)[call.sid] == "archived"
    [(details,)] = ledger_rows(
        tmp_path / "state",
        f"SELECT details FROM events WHERE kind = 'class_bound' AND key = '{ledger_key(key)}'",
    )
    recorded = json.loads(details)
    lock = current_lock(seaweed, lock_bucket, key)
    assert lock is not None and lock["Mode"] == "COMPLIANCE", (
        f"the class_bound event says {recorded['retention_class']} / {recorded['lock_mode']}, "
        f"but the recording's current version has lock {lock}; by version: "
        f"{version_locks(seaweed, lock_bucket, key)}"
    )


# --- a rescue killed between its encrypted PUT and its commit, then the call the v3 way --------

CRASH_AT_RECORDING_COMMIT = """
import os, sys
import archiver.recorder as recorder
real = recorder.Recorder._record
async def crash(self, row):
    if row.kind == "recording":
        os._exit(137)  # as SIGKILL: the object is in the bucket, its ledger row never committed
    return await real(self, row)
recorder.Recorder._record = crash
from archiver.cli import main
main(args=sys.argv[1:], prog_name="exotel-archiver")
"""


CRASH_AT_DOWNLOAD = """
import os, sys
import archiver.archive as archive
def crash(*args, **kwargs):
    os._exit(137)  # as SIGKILL: call-v1.json recorded, the recording's download never begun
archive.download = crash
from archiver.cli import main
main(args=sys.argv[1:], prog_name="exotel-archiver")
"""


def killed_backfill(
    env: dict[str, str], seaweed: SeaweedFS, script: str = CRASH_AT_RECORDING_COMMIT
) -> None:
    """A real lane backfill in a child process that dies (exit 137, no clean-up) where
    ``script`` says: by default right after recording-1 is stored, before its ledger row is
    committed."""
    day = str(the_day())
    child = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ARCHIVER_"))},
        **seaweed.env(),
        **env,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, "backfill", "--since", day, "--until",
         day],
        env=child,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 137, done.stderr[-3000:]


def test_a_rescue_killed_before_its_commit_then_archived_by_sid_stores_the_recording_twice(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """The rescue stores call-v1.json, then the encrypted recording-1 (its intent committed
    first), and is killed before recording-1's ledger row. The call is then archived the v3
    way (`archive SID`, as the worker's restart does with a rescue it cut off), and v3 names
    the file with another host (the case `_enrich_recordings` itself says Exotel's pages allow:
    "matched by its bytes"). No URL matches v1's, so `_enrich_recordings` holds index 1 for the
    object at its key — and never looks at it again: nothing compares it, though its intent
    proves it is this recording's ciphertext. v3's recording is downloaded and stored a second
    time as recording-2; recording-1 stays in the bucket, unrecorded, forever. The same
    audio twice, one copy outside the manifest."""
    public, private = write_keys(tmp_path)
    call = sim.add_call(created=noon(), size=4096)
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENCRYPT_TO=str(public))
    killed_backfill(env, seaweed)
    state = tmp_path / "state"
    assert ledger_rows(state, "SELECT kind FROM objects") == [("v1_record",)]
    assert ledger_rows(state, "SELECT COUNT(*) FROM encrypted_writes") == [(1,)]

    sim.faults.details_recordings = lambda url: url.replace("127.0.0.1", "localhost")
    again = invoke(["archive", call.sid], env)

    assert again.exit_code == 0, again.output
    assert outcomes(state, call.sid)[call.sid] == "archived"
    audio = {
        k.rsplit("/", 1)[1]: decrypt(private, body)
        for k, body in objects(seaweed, bucket).items()
        if "/recording-" in k
    }
    recorded = ledger_rows(state, "SELECT key FROM objects WHERE kind = 'recording'")
    assert list(audio.values()) == [sim.recording_asset(call, 1).body()], (
        f"the one recording is in the bucket as {sorted(audio)}; the ledger records {recorded}"
    )


# --- one rescued call's call-v1.json gone: every call of the run stops -------------------------


def test_a_lost_call_v1_json_of_one_half_rescued_call_stops_the_whole_v3_run(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    bucket: str,
    seaweed: SeaweedFS,
    tmp_path: Path,
) -> None:
    """A rescue cut off before its recording (killed mid-download: call-v1.json recorded, no
    recording-1) leaves the call for the v3 way, where `_enrich_recordings` reads the v1 record
    back from the bucket to know v1's file (`_v1_file_of`). Its call-v1.json is gone (deleted
    out of band; `verify` calls it missing, `repair` cannot put a snapshot back). The read's
    NoSuchKey is `StoragePermanent` — "concerns every call" — so the whole run stops at that
    one call: a backfill over the day archives neither it nor the healthy call listed after it,
    and exits as if the destination were unusable. One object missing must fail (or, v1's file
    unknown, simply archive) that call only; the rest of the run goes on."""
    public, _private = write_keys(tmp_path)
    first = sim.add_call(created=noon(), size=4096)
    env = lane_env(sim, server, bucket, tmp_path, ARCHIVER_ENCRYPT_TO=str(public))
    killed_backfill(env, seaweed, CRASH_AT_DOWNLOAD)
    state = tmp_path / "state"
    assert ledger_rows(state, "SELECT kind FROM objects") == [("v1_record",)]
    seaweed.client().delete_object(Bucket=bucket, Key=full_key(seaweed, bucket, "call-v1.json"))
    second = sim.add_call(created=noon() + timedelta(minutes=5), size=4096)

    again = backfill(env, None, "--rescue", "off")

    got = outcomes(state, first.sid, second.sid)
    assert got[second.sid] == "archived" and again.exit_code in (0, 1), (
        f"exit {again.exit_code}, outcomes {got}: {again.output[-600:]}"
    )
