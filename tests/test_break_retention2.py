"""Adversarial tests of the fixes in 0e737f3 and d0ba220 (break14c).

Bugs found: each test not named ``test_held_*`` failed on the code it was written against
(d6a1ee8). ``test_held_*``: attacks the code withstood, kept as regression tests.

Real SeaweedFS and the Exotel simulator over real HTTP; no mocks of boto3, aiohttp or the sinks.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver.archive import archive_calls
from archiver.ledger import EventRecord, Ledger
from archiver.retention.archive import open_retention
from archiver.retention.audit import audit
from archiver.retention.jobs import purge
from archiver.simulator import Simulator, SimulatorServer
from tests.test_break_retention import (
    ORDERS_APP,
    entries,
    env_for,
    forge_receipt,
    invoke,
    recording_of,
    settings_of,
    write_config,
)


def add_event(settings: Any, kind: str, entry: dict[str, Any], **details: Any) -> None:
    """Add an event to the ledger as a job would (actor ``intruder@example``)."""
    version_id = details.pop("version_id", entry.get("version_id"))
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        ledger.add_event(
            EventRecord(
                kind=kind,
                call_sid=entry["call_sid"],
                key=entry["key"],
                at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                actor="intruder@example",
                details=json.dumps(details, sort_keys=True),
                version_id=version_id,
            )
        )
    finally:
        ledger.close()


def snapshot_of(settings: Any, call_sid: str) -> dict[str, Any]:
    return next(e for e in entries(settings, "call_details") if e["call_sid"] == call_sid)


async def pre_rules_order(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, *, days: int = 40
) -> tuple[Any, dict[str, str], Any]:
    """An orders call (10 y, keep by today's rules) archived before any rules existed."""
    destination = str(tmp_path / "archive")
    no_rules = write_config(tmp_path / "none.toml", rules=False)
    env = env_for(sim, server, tmp_path, destination, no_rules)
    order = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=days),
                         app_id=ORDERS_APP)  # fmt: skip
    await archive_calls(settings_of(env, no_rules), [order.sid])
    config = write_config(tmp_path / "archiver.toml")
    env = {**env, "ARCHIVER_CONFIG": str(config)}
    return order, env, settings_of(env, config)


async def test_a_forged_receipt_on_call_json_moves_a_kept_pre_rules_recording_to_purge(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A call archived before the rules; by its call.json today's rules put it in `orders`
    (10 years, keep). One erasure receipt is added for its call.json (not for the recording),
    stating class `general`. `class_from_snapshot` no longer reads the call.json — which is
    still there, intact — it takes the class the receipt states, and purge erases the
    recording as `general` (30 days, delete)."""
    order, _env, settings = await pre_rules_order(sim, server, tmp_path)
    recording = recording_of(settings, order.sid)
    snapshot = snapshot_of(settings, order.sid)
    destination = Path(tmp_path / "archive")
    async with open_retention(settings) as archive:
        dry = await purge(archive, dry_run=True)
    assert not [r for r in dry.rows if r["key"] == recording["key"]]  # kept, as it must be

    forge_receipt(settings, snapshot, retention_class="general")
    async with open_retention(settings) as archive:
        done = await purge(archive, dry_run=False)
    deleted = {r["key"] for r in done.rows if r["action"] == "deleted"}
    assert (destination / snapshot["key"]).exists()  # the archived call.json is still there
    assert (destination / recording["key"]).exists(), (
        f"purge erased {sorted(deleted)}: its archived call.json puts it in orders (keep)"
    )


@pytest.mark.xfail(
    strict=True,
    reason="known limitation (docs/compliance.md): once the call.json of a call archived before "
    "the rules is gone, nothing the store holds proves its class, so receipts stating one cannot "
    "be checked against it",
)
async def test_audit_judges_a_pre_rules_call_json_receipt_by_the_class_it_states_itself(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """The fix for a forged receipt on a pre-rules recording (compare the class with the one
    its call.json gives) is undone by forging the call.json's receipt too: both objects deleted
    out of band, two receipts stating `general`. Audit asks `class_from_snapshot`, which answers
    with the class the forged call.json receipt states: each receipt is judged by a receipt,
    and both are accepted — an `orders` (keep) call gone, audit clean."""
    order, _env, settings = await pre_rules_order(sim, server, tmp_path)
    recording = recording_of(settings, order.sid)
    snapshot = snapshot_of(settings, order.sid)
    destination = Path(tmp_path / "archive")
    for entry in (recording, snapshot):
        (destination / entry["key"]).unlink()
        forge_receipt(
            settings, entry, retention_class="general", retain_until="2020-01-01T00:00:00Z"
        )
    async with open_retention(settings) as archive:
        found = await audit(archive)
    problems = {(f["key"], f["problem"]) for f in found.findings}
    assert not found.ok, (
        "audit accepted receipts erasing an `orders` (keep, 10y) call as `general`, each "
        "vouched for by the other"
    )
    assert problems & {
        (recording["key"], "deleted_early"),
        (recording["key"], "receipt_mismatch"),
    }, problems


@pytest.mark.parametrize("target", ["segment", "other_recording"])
async def test_purge_deletes_whatever_a_repaired_event_names_as_its_quarantined_copy(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, target: str
) -> None:
    """A `repaired` event's `quarantined_as` is deleted with the object by purge, whatever key
    it names. One event (forged, or written by another tool) names the first manifest segment,
    or the recording of an `orders` call (10 years, keep), as the quarantined copy of a due
    `general` recording: purge erases it along with the due one, and reports only `deleted`.
    repair only ever writes `_manifest/quarantine/<key>/<sha256>`."""
    destination = tmp_path / "archive"
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, str(destination), config)
    settings = settings_of(env, config)
    long_ago = sim.now() - timedelta(days=40)
    due = sim.add_call(recordings=1, size=3000, created=long_ago)
    order = sim.add_call(recordings=1, size=3000, created=long_ago, app_id=ORDERS_APP)
    await archive_calls(settings, [due.sid, order.sid])
    entry = recording_of(settings, due.sid)
    kept = recording_of(settings, order.sid)
    victim = "_manifest/segments/00000001.jsonl" if target == "segment" else kept["key"]
    assert (destination / victim).is_file()
    add_event(
        settings, "repaired", entry, sha256=entry["sha256"], size=entry["size"],
        previous="altered", quarantined_as=victim, source="https://example.invalid/x.mp3",
    )  # fmt: skip
    async with open_retention(settings) as archive:
        done = await purge(archive, dry_run=False)
    assert entry["key"] in {r["key"] for r in done.rows if r["action"] == "deleted"}
    assert (destination / victim).is_file(), (
        f"purge deleted {victim} as the 'quarantined copy' of {entry['key']}; report: "
        f"{[(r['key'], r['action']) for r in done.rows]}"
    )


async def test_audit_calls_a_legitimate_pre_rules_purge_early_once_its_class_is_lengthened(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A call archived before the rules, `general` (30 days, delete) by its call.json, purged
    at 40 days — rightly. Later `general` is lengthened to 5 years (for new calls). Audit
    computes the pre-rules object's floor from the class as configured *now* and reports both
    receipts `deleted_early`; for a bound object the same edit is no finding
    (test_held_no_false_alarm_after_the_class_is_lengthened_after_the_purge)."""
    destination = str(tmp_path / "archive")
    no_rules = write_config(tmp_path / "none.toml", rules=False)
    env = env_for(sim, server, tmp_path, destination, no_rules)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    await archive_calls(settings_of(env, no_rules), [call.sid])
    config = write_config(tmp_path / "archiver.toml")
    env = {**env, "ARCHIVER_CONFIG": str(config)}
    async with open_retention(settings_of(env, config)) as archive:
        assert (await purge(archive, dry_run=False)).count("deleted") == 2
    async with open_retention(settings_of(env, config)) as archive:
        assert (await audit(archive)).ok
    write_config(config, general="5y")
    async with open_retention(settings_of(env, config)) as archive:
        found = await audit(archive)
    assert found.ok and found.receipts == 2, [(f["problem"], f["detail"]) for f in found.findings]


async def test_apply_locks_a_pre_rules_call_until_year_9999_when_its_call_json_read_fails(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call archived (unlocked) before the rules; today's rules give it `general` (30 days,
    GOVERNANCE). While `retention apply` runs, the store answers the GET of its call.json with
    500s (a passing hiccup). The object is `class_unknown` — kept, rightly — but its Item has
    the default class's lock mode and `until` = FOREVER (no bound date, no class date), so
    apply "locks" it: GOVERNANCE until 9999-12-31, a date no apply can take back (for a
    COMPLIANCE default, nobody can). The call would have been due in 30 days; now the store
    keeps it for 8000 years, and one read error decided it."""
    from tests.s3proxy import FaultyS3Proxy

    no_rules = write_config(tmp_path / "none.toml", rules=False)
    env = env_for(sim, server, tmp_path, f"s3://{lock_bucket}/rec", no_rules)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=10))
    await archive_calls(settings_of(env, no_rules), [call.sid])
    config = write_config(tmp_path / "archiver.toml", lock="governance")
    env = {**env, "ARCHIVER_CONFIG": str(config)}
    recording = recording_of(settings_of(env, config), call.sid)
    client = seaweed.client()
    assert "ObjectLockMode" not in client.head_object(
        Bucket=lock_bucket, Key=f"rec/{recording['key']}"
    )
    with FaultyS3Proxy(seaweed.endpoint) as proxy:
        proxy.fail(
            lambda method, path: method == "GET" and path.split("?")[0].endswith("/call.json"),
            times=50,
        )
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        applied = await asyncio.to_thread(invoke, ["retention", "apply"], env)
        assert proxy.injected, proxy.log
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    stored = client.head_object(Bucket=lock_bucket, Key=f"rec/{recording['key']}")
    class_date = datetime.fromisoformat(recording["call_created"]) + timedelta(days=30)
    until = stored.get("ObjectLockRetainUntilDate")
    assert until is None or until <= class_date + timedelta(days=1), (
        f"apply (exit {applied.exit_code}) locked {stored.get('ObjectLockMode')} until {until} "
        f"a call whose class ends {class_date:%Y-%m-%d}, because its call.json could not be read"
    )


async def test_a_store_error_while_sealing_ends_the_purge_without_its_report(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Purge seals its receipts as it goes (`items()` flushes after each page) and at the end.
    The store fails the segment PUT (500s past the retries): the erasures are done, but the
    seal's StorageError ends the job — `error: ...`, no `--report`, so nobody is told what was
    deleted. (0e737f3 made one store error fail that object, not the job; a seal is a store
    request too, and its events stay in the ledger for the next job to seal.)"""
    from tests.s3proxy import FaultyS3Proxy

    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, f"s3://{bucket}/rec", config)
    settings = settings_of(env, config)
    long_ago = sim.now() - timedelta(days=40)
    calls = [sim.add_call(recordings=1, size=3000, created=long_ago) for _ in range(2)]
    await archive_calls(settings, [c.sid for c in calls])
    report = tmp_path / "purge.json"
    with FaultyS3Proxy(seaweed.endpoint) as proxy:
        proxy.fail(
            lambda method, path: method == "PUT" and "/_manifest/segments/" in path, times=50
        )
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        result = await asyncio.to_thread(
            invoke, ["retention", "purge", "--report", str(report)], env
        )
        assert proxy.injected, proxy.log
    listed = seaweed.client().list_objects_v2(Bucket=bucket, Prefix="rec/2").get("Contents", [])
    assert listed == []  # all four objects erased
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        receipts = [e for e in ledger.events() if e.kind == "erasure"]
    finally:
        ledger.close()
    assert len(receipts) == 4
    assert report.exists(), (
        f"4 objects erased, no report (exit {result.exit_code}): {result.output.strip()[-300:]}"
    )
    assert json.loads(report.read_text())


async def test_held_rebuild_after_repair_hold_release_and_purge_audits_and_verifies_clean(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    tmp_path: Path,
) -> None:
    """A versioned bucket: a recording deleted (a delete marker) and put back by repair, a
    hold and a release, then purge; the state directory is lost and `manifest rebuild`
    restores it from the segments. Audit and verify find nothing."""
    name = f"brk14c-ver-{datetime.now(UTC):%H%M%S%f}"
    client = seaweed.client()
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, f"s3://{name}/rec", config)
    settings = settings_of(env, config)
    long_ago = sim.now() - timedelta(days=40)
    call = sim.add_call(recordings=1, size=3000, created=long_ago)
    other = sim.add_call(recordings=1, size=3000, created=long_ago)
    await archive_calls(settings, [call.sid, other.sid])
    entry = recording_of(settings, call.sid)
    client.delete_object(Bucket=name, Key=f"rec/{entry['key']}")
    assert (await asyncio.to_thread(invoke, ["repair"], env)).exit_code == 0
    for args in (
        ["retention", "hold", call.sid, "--reason", "case 1"],
        ["retention", "release", call.sid, "--reason", "case 1 closed"],
        ["retention", "purge"],
    ):
        done = await asyncio.to_thread(invoke, args, env)
        assert done.exit_code == 0, (args, done.output)
    assert len(entries(settings, "erasure")) == 4
    lost = tmp_path / "state.lost"
    settings.state_dir.rename(lost)
    rebuilt = await asyncio.to_thread(invoke, ["manifest", "rebuild"], env)
    assert rebuilt.exit_code == 0, rebuilt.output
    async with open_retention(settings) as archive:
        found = await audit(archive)
    assert found.ok and found.receipts == 4, list(found.findings)
    verified = await asyncio.to_thread(invoke, ["verify"], env)
    assert verified.exit_code == 0, verified.output


async def test_a_legal_hold_hidden_from_head_is_read_as_no_hold(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AWS returns `x-amz-object-lock-legal-hold` on HeadObject only to callers allowed
    s3:GetObjectLegalHold, as it shows retention only to callers allowed s3:GetObjectRetention.
    d0ba220 made `lock_status` ask GetObjectRetention when HEAD shows no retention, and stop on
    AccessDenied "rather than guess" — but the legal hold is still guessed from HEAD alone. The
    proxy answers as AWS does for such an identity: audit reports the recorded hold, in force at
    the store, as `hold_not_in_force`, and misses a hold placed at the store that the manifest
    does not record (`hold_not_recorded`)."""
    from tests.s3proxy import FaultyS3Proxy

    config = write_config(tmp_path / "archiver.toml", lock="governance")
    env = env_for(sim, server, tmp_path, f"s3://{lock_bucket}/rec", config)
    settings = settings_of(env, config)
    disputed, other = (sim.add_call(recordings=1, size=3000) for _ in range(2))
    await archive_calls(settings, [disputed.sid, other.sid])
    held = await asyncio.to_thread(
        invoke, ["retention", "hold", disputed.sid, "--reason", "case 9"], env
    )
    assert held.exit_code == 0, held.output
    client = seaweed.client()
    out_of_band = recording_of(settings, other.sid)["key"]
    client.put_object_legal_hold(
        Bucket=lock_bucket, Key=f"rec/{out_of_band}", LegalHold={"Status": "ON"}
    )
    with FaultyS3Proxy(seaweed.endpoint) as proxy:
        proxy.strip_response_headers = ("x-amz-object-lock-legal-hold",)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        async with open_retention(settings_of(env, config)) as archive:
            found = await audit(archive)
    problems = sorted((f["problem"], f["key"]) for f in found.findings)
    try:
        assert not [p for p in problems if p[0] == "hold_not_in_force"], (
            f"holds in force at the store reported not in force: {problems}"
        )
        assert ("hold_not_recorded", out_of_band) in problems, problems
    finally:
        for key in [out_of_band, *(e["key"] for e in entries(settings) if e["call_sid"] in
                                   (disputed.sid, other.sid))]:  # fmt: skip
            client.put_object_legal_hold(
                Bucket=lock_bucket, Key=f"rec/{key}", LegalHold={"Status": "OFF"}
            )


async def test_getobjectretention_access_denied_is_a_failure_naming_the_permission(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unlocked object in a lock bucket (lock = none); HEAD shows no retention, the
    fallback GetObjectRetention is refused with AccessDenied: purge must not delete it on a
    guess, and its failure should name s3:GetObjectRetention."""
    from tests.s3proxy import FaultyS3Proxy

    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, f"s3://{lock_bucket}/rec", config)
    settings = settings_of(env, config)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    await archive_calls(settings, [call.sid])
    key = recording_of(settings, call.sid)["key"]
    with FaultyS3Proxy(seaweed.endpoint) as proxy:
        proxy.fail(
            lambda method, path: method == "GET" and "retention" in path.partition("?")[2],
            times=100, status=403, code="AccessDenied",
        )  # fmt: skip
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        async with open_retention(settings_of(env, config)) as archive:
            done = await purge(archive, dry_run=False)
        assert proxy.injected, proxy.log
    assert done.count("deleted") == 0
    listed = seaweed.client().list_objects_v2(Bucket=lock_bucket, Prefix=f"rec/{key}")
    assert listed.get("KeyCount") == 1
    failures = list(done.failures)
    assert failures and all(
        "GetObjectRetention" in f["error"] or "compliance.md" in f["error"] for f in failures
    ), f"the fix named is docs/storage.md, which does not list s3:GetObjectRetention: {failures}"
