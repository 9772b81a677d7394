"""Compliance retention against SeaweedFS, which enforces Object Lock as AWS does.

Times: the rules side takes an injected ``now``; the store's own clock is real, so objects
whose retention must be over at the store are calls created long ago (their retain-until date
is already past when they are archived) — no test sleeps.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archiver.archive import archive_calls
from archiver.config import Settings, load_settings
from archiver.errors import ConfigError, StorageConflict, StorageLocked
from archiver.exotel.models import parse_call_details
from archiver.manifest import read_manifest
from archiver.retention.archive import open_retention
from archiver.retention.audit import audit
from archiver.retention.jobs import apply, hold, plan, purge
from archiver.retention.policy import parse_period, parse_policy
from archiver.simulator import Simulator, SimulatorServer
from archiver.verify import ERASED, run_verify
from tests.support import exotel_env

PREFIX = "rec"
ORDERS_APP = "233516"

RULES = """
[retention]
default = "general"

[retention.classes.general]
period = "{general}"
lock = "{general_lock}"
at_end = "delete"

[retention.classes.orders]
period = "{orders}"
lock = "compliance"
at_end = "keep"

[[retention.rules]]
class = "orders"
app_id = "{app}"
"""


def settings_for(
    sim: Simulator,
    server: SimulatorServer,
    tmp_path: Path,
    bucket: str,
    *,
    general: str = "30d",
    general_lock: str = "governance",
    orders: str = "3y",
    rules: bool = True,
) -> Settings:
    config = tmp_path / "archiver.toml"
    config.write_text(
        RULES.format(general=general, general_lock=general_lock, orders=orders, app=ORDERS_APP)
        if rules
        else ""
    )
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state")
    return load_settings(env={**env, "ARCHIVER_ATTEMPTS": "2"}, config_file=config)


def head(seaweed: Any, bucket: str, key: str) -> dict[str, Any]:
    return dict(seaweed.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{key}"))


def entries(settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    found = read_manifest(settings.state_dir / "manifest.jsonl")
    return [e for e in found if kind is None or e["kind"] == kind]


def test_periods_and_rules_are_parsed_and_checked() -> None:
    start = datetime(2024, 1, 31, 10, 0, tzinfo=UTC)
    assert parse_period("1mo", "x").after(start) == datetime(2024, 2, 29, 10, 0, tzinfo=UTC)
    assert parse_period("3y", "x").after(start) == datetime(2027, 1, 31, 10, 0, tzinfo=UTC)
    assert parse_period(90, "x").after(start) == start + timedelta(days=90)
    assert parse_period("1d12h", "x").after(start) == start + timedelta(days=1, hours=12)
    for bad in ("5 parsecs", "", "y5"):
        with pytest.raises(ConfigError, match="period"):
            parse_period(bad, "x")
    policy = parse_policy(
        {
            "default": "general",
            "classes": {
                "general": {"period": "5y", "lock": "governance", "at_end": "delete"},
                "orders": {"period": "3y", "lock": "compliance"},
            },
            "rules": [
                {"class": "orders", "virtual_number": ["+911414941199"], "custom_field": "^ord-"}
            ],
        },
        "test.toml",
    )
    base = {
        "sid": "a1b2c3",
        "direction": "inbound",
        "virtual_number": "+911414941199",
        "state": "terminal",
        "status": "completed",
        "created_time": "2026-11-03 22:54:40+05:30",
        "custom_field": "ord-77",
    }
    assert policy.classify(parse_call_details(base)).name == "orders"
    other = parse_call_details({**base, "custom_field": "support"})
    assert policy.classify(other).name == "general"
    for table, message in [
        ({"classes": {"a": {"period": "1y"}}}, "default = ... is required"),
        ({"default": "a", "classes": {"a": {"period": "1y", "lock": "forever"}}}, "lock must be"),
        ({"default": "a", "classes": {"a": {}}}, "period is required"),
        ({"default": "a", "classes": {"a": {"period": "1y"}}, "rules": [{"class": "b"}]}, "'b'"),
        (
            {"default": "a", "classes": {"a": {"period": "1y"}}, "rules": [{"class": "a"}]},
            "matches every call",
        ),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_policy(table, "test.toml")


async def test_objects_are_written_locked_by_class_and_cannot_be_deleted_or_replaced(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    order = sim.add_call(recordings=1, size=4000, app_id=ORDERS_APP)
    chat = sim.add_call(recordings=1, size=4000)
    settings = settings_for(sim, server, tmp_path, lock_bucket, general="30d", orders="3y")
    report = await archive_calls(settings, [order.sid, chat.sid])
    assert [r.outcome for r in report.results] == ["archived", "archived"]

    by_call = {e["call_sid"]: e for e in entries(settings, "recording")}
    for call, cls, mode, period in (
        (order, "orders", "COMPLIANCE", parse_period("3y", "")),
        (chat, "general", "GOVERNANCE", parse_period("30d", "")),
    ):
        e = by_call[call.sid]
        until = period.after(call.created.replace(microsecond=0))  # v3 times are to the second
        assert (e["retention_class"], e["lock_mode"]) == (cls, mode)
        assert e["retain_until"] == until.isoformat().replace("+00:00", "Z")
        stored = head(seaweed, lock_bucket, e["key"])
        assert stored["ObjectLockMode"] == mode
        assert abs(stored["ObjectLockRetainUntilDate"] - until) < timedelta(seconds=1)
    # call.json is bound too
    snapshots = entries(settings, "call_details")
    assert {e["lock_mode"] for e in snapshots} == {"COMPLIANCE", "GOVERNANCE"}

    async with open_retention(settings) as archive:
        item = (await archive.items_of(order.sid))[0]
        with pytest.raises(StorageLocked, match="Object Lock"):
            await archive.sink.delete(item.key, version_id=item.record.version_id)
        import io

        with pytest.raises(StorageConflict):
            await archive.sink.put(
                item.key,
                io.BytesIO(b"other"),
                size=5,
                sha256="a" * 64,
                content_type="audio/mpeg",
            )
    assert head(seaweed, lock_bucket, by_call[order.sid]["key"])["ContentLength"] == 4000


async def test_a_bucket_without_object_lock_is_refused_when_a_class_needs_it(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    call = sim.add_call(recordings=1, size=3000)
    settings = settings_for(sim, server, tmp_path, bucket)
    with pytest.raises(ConfigError, match="does not have it enabled") as info:
        await archive_calls(settings, [call.sid])
    assert "general, orders" in str(info.value)
    listed = seaweed.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert listed == []  # refused before anything was written: no silent downgrade
    unlocked = settings_for(sim, server, tmp_path, bucket, general_lock="none")
    unlocked_policy = unlocked.retention
    assert unlocked_policy is not None and unlocked_policy.needs_object_lock  # orders still locks


async def test_purge_removes_only_expired_unheld_deletable_objects_and_leaves_receipts(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    long_ago = sim.now() - timedelta(days=40)
    expired = sim.add_call(recordings=1, size=3000, created=long_ago)  # general: 30d, delete
    held = sim.add_call(recordings=1, size=3000, created=long_ago)
    kept = sim.add_call(recordings=1, size=3000, created=long_ago, app_id=ORDERS_APP)  # keep
    recent = sim.add_call(recordings=1, size=3000)  # general, ends in 30 days
    settings = settings_for(sim, server, tmp_path, lock_bucket, orders="1d")
    await archive_calls(settings, [c.sid for c in (expired, held, kept, recent)])
    expired_keys = {e["key"] for e in entries(settings) if e["call_sid"] == expired.sid}

    async with open_retention(settings, actor="dpo@example") as archive:
        hold_report = await hold(archive, [held.sid], reason="case 2026/17", on=True)
        assert hold_report.count("held") == 2 and not hold_report.failures
        dry = await purge(archive, dry_run=True)
        assert {r["key"] for r in dry.rows if r["action"] == "would_delete"} == expired_keys
        done = await purge(archive, dry_run=False)
    assert {r["key"] for r in done.rows if r["action"] == "deleted"} == expired_keys
    assert {r["action"] for r in done.rows if r["call_sid"] == held.sid} == {"kept_held"}
    assert not done.failures

    client = seaweed.client()
    remaining = {o["Key"] for o in client.list_objects_v2(Bucket=lock_bucket)["Contents"]}
    assert not {f"{PREFIX}/{k}" for k in expired_keys} & remaining
    versions = client.list_object_versions(Bucket=lock_bucket, Prefix=f"{PREFIX}/")
    assert not [
        v for v in versions.get("Versions", []) if v["Key"][len(PREFIX) + 1 :] in expired_keys
    ]
    for call in (held, kept, recent):
        assert any(call.sid in k for k in remaining)

    receipts = entries(settings, "erasure")
    assert {r["key"] for r in receipts} == expired_keys
    recording = next(e for e in entries(settings, "recording") if e["call_sid"] == expired.sid)
    receipt = next(r for r in receipts if r["key"] == recording["key"])
    assert receipt["sha256"] == recording["sha256"] and receipt["size"] == 3000
    assert receipt["retention_class"] == "general" and receipt["actor"] == "dpo@example"
    assert receipt["retain_until"] == recording["retain_until"] <= receipt["deleted_at"]
    holds = entries(settings, "legal_hold")
    assert {h["reason"] for h in holds} == {"case 2026/17"} and len(holds) == 2
    assert all(h["actor"] == "dpo@example" and h["at"] for h in holds)
    # The receipts are sealed into the chain, and verify knows those objects are meant to be gone.
    verified = await run_verify(settings)
    assert verified.ok and verified.count(ERASED) == len(expired_keys)
    segment_lines = b"".join(
        client.get_object(Bucket=lock_bucket, Key=o["Key"])["Body"].read()
        for o in client.list_objects_v2(Bucket=lock_bucket, Prefix=f"{PREFIX}/_manifest/")[
            "Contents"
        ]
    )
    assert segment_lines.count(b'"kind":"erasure"') == len(expired_keys)

    # Released, the held call goes at the next purge; the kept class never does.
    async with open_retention(settings, actor="dpo@example") as archive:
        await hold(archive, [held.sid], reason="case closed", on=False)
        again = await purge(archive, dry_run=False)
    assert {r["call_sid"] for r in again.rows if r["action"] == "deleted"} == {held.sid}
    assert entries(settings, "legal_hold_release")[0]["reason"] == "case closed"


async def test_a_locked_object_the_rules_call_expired_is_not_deleted_and_is_reported(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    call = sim.add_call(recordings=1, size=3000)  # general: 30 days GOVERNANCE at the store
    settings = settings_for(sim, server, tmp_path, lock_bucket)
    await archive_calls(settings, [call.sid])
    later = datetime.now(UTC) + timedelta(days=45)  # the rules say it has ended
    async with open_retention(settings) as archive:
        result = await purge(archive, dry_run=False, now=later)
    assert {r["action"] for r in result.rows} == {"kept_retained_at_store"}
    assert entries(settings, "erasure") == []
    # Forcing the delete: the store refuses, and it is reported as such.
    async with open_retention(settings) as archive:
        item = (await archive.items_of(call.sid))[0]
        with pytest.raises(StorageLocked):
            await archive.sink.delete(item.key, version_id=item.record.version_id)


async def test_apply_extends_and_locks_but_never_shortens(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    order = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    before_rules = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    no_rules = settings_for(sim, server, tmp_path, lock_bucket, rules=False)
    await archive_calls(no_rules, [before_rules.sid])  # archived before any rule existed
    settings = settings_for(sim, server, tmp_path, lock_bucket, orders="2d")
    await archive_calls(settings, [order.sid])
    key = next(e["key"] for e in entries(settings, "recording") if e["call_sid"] == order.sid)
    old_key = next(
        e["key"] for e in entries(settings, "recording") if e["call_sid"] == before_rules.sid
    )
    stored_before = head(seaweed, lock_bucket, key)["ObjectLockRetainUntilDate"]
    assert "ObjectLockMode" not in head(seaweed, lock_bucket, old_key)

    shorter = settings_for(sim, server, tmp_path, lock_bucket, orders="1d")
    async with open_retention(shorter) as archive:
        planned = await plan(archive, days=30)
        applied = await apply(archive)
    # The class now says 1 day, the date bound at archive time 2: the bound date holds.
    beyond = {r["key"] for r in planned.rows if r["action"] == "bound_beyond_class"}
    assert key in beyond
    assert {r["key"]: r["action"] for r in planned.rows}.get(old_key) == "lock"  # from call.json
    assert head(seaweed, lock_bucket, key)["ObjectLockRetainUntilDate"] == stored_before
    assert {r["action"] for r in applied.rows if r["key"] == key} == set()  # nothing to change
    old = head(seaweed, lock_bucket, old_key)
    assert old["ObjectLockMode"] == "COMPLIANCE"  # the pre-rules object is now locked

    longer = settings_for(sim, server, tmp_path, lock_bucket, orders="3d")
    async with open_retention(longer) as archive:
        found = await audit(archive)  # the class now says 3 days, the store holds 2
        assert {f["problem"] for f in found.findings} == {"retention_shorter"}
        assert key in {f["key"] for f in found.findings} and len(found.findings) == 4
        applied = await apply(archive)
        assert (await audit(archive)).ok
    new_until = head(seaweed, lock_bucket, key)["ObjectLockRetainUntilDate"]
    assert new_until - stored_before > timedelta(hours=23)
    changes = [e for e in entries(longer, "retention_extended") if e["key"] == key]
    assert changes and changes[-1]["previous_lock_mode"] == "COMPLIANCE"
    assert changes[-1]["retention_class"] == "orders"


async def test_audit_finds_what_is_wrong_and_passes_when_nothing_is(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    long_ago = sim.now() - timedelta(days=40)
    gone = sim.add_call(recordings=1, size=3000, created=long_ago)
    overdue = sim.add_call(recordings=1, size=3000, created=long_ago)
    fine = sim.add_call(recordings=1, size=3000)
    unlocked = sim.add_call(recordings=1, size=3000)
    await archive_calls(
        settings_for(sim, server, tmp_path, lock_bucket, rules=False), [unlocked.sid]
    )
    settings = settings_for(sim, server, tmp_path, lock_bucket)
    await archive_calls(settings, [gone.sid, overdue.sid, fine.sid])
    client = seaweed.client()
    gone_key = next(e["key"] for e in entries(settings, "recording") if e["call_sid"] == gone.sid)
    for v in client.list_object_versions(Bucket=lock_bucket, Prefix=f"{PREFIX}/{gone_key}")[
        "Versions"
    ]:
        client.delete_object(Bucket=lock_bucket, Key=v["Key"], VersionId=v["VersionId"])

    async with open_retention(settings) as archive:
        found = await audit(archive)
    problems = {(f["call_sid"], f["problem"]) for f in found.findings}
    assert (gone.sid, "missing") in problems
    assert (overdue.sid, "overdue") in problems
    assert (unlocked.sid, "not_locked") in problems
    assert not [p for p in problems if p[0] == fine.sid]

    async with open_retention(settings) as archive:
        await apply(archive)
        await purge(archive, dry_run=False)
    # Put an erased object back behind the archive's back: the receipt says it must be gone.
    overdue_key = next(
        e["key"] for e in entries(settings, "recording") if e["call_sid"] == overdue.sid
    )
    client.put_object(Bucket=lock_bucket, Key=f"{PREFIX}/{overdue_key}", Body=b"back")
    async with open_retention(settings) as archive:
        found = await audit(archive)
    problems = {(f["call_sid"], f["problem"]) for f in found.findings}
    assert problems == {(gone.sid, "missing"), (overdue.sid, "erased_but_present")}
    report = found.as_dict()
    assert report["ok"] is False and report["counts"] == {"erased_but_present": 1, "missing": 1}
    json.dumps(report)


def test_the_commands_exit_codes_and_reports(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    import asyncio

    from click.testing import CliRunner

    from archiver.cli import main

    old = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    settings = settings_for(sim, server, tmp_path, lock_bucket)
    asyncio.run(archive_calls(settings, [old.sid]))
    env = {
        **exotel_env(sim, server.base_url, f"s3://{lock_bucket}/{PREFIX}", tmp_path / "state"),
        "ARCHIVER_CONFIG": str(tmp_path / "archiver.toml"),
    }
    runner = CliRunner()

    audited = runner.invoke(
        main, ["retention", "audit", "--report", str(tmp_path / "a.json")], env=env
    )
    assert audited.exit_code == 1 and "overdue" in audited.output  # kept against its class
    assert json.loads((tmp_path / "a.json").read_text())["counts"] == {"overdue": 2}

    dry = runner.invoke(main, ["retention", "purge", "--dry-run"], env=env)
    assert dry.exit_code == 0 and "would_delete 2" in dry.output
    assert entries(settings, "erasure") == []
    done = runner.invoke(main, ["retention", "purge", "--actor", "ops"], env=env)
    assert done.exit_code == 0 and "deleted 2" in done.output, done.output
    assert runner.invoke(main, ["retention", "audit"], env=env).exit_code == 0

    no_reason = runner.invoke(main, ["retention", "hold", old.sid], env=env)
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    unknown = runner.invoke(main, ["retention", "hold", "nosuchcall", "--reason", "x"], env=env)
    assert unknown.exit_code == 2 and "no archived objects" in unknown.output
    bare = runner.invoke(
        main, ["retention", "plan"], env={**env, "ARCHIVER_CONFIG": str(tmp_path / "none.toml")}
    )
    assert bare.exit_code == 2 and "Traceback" not in bare.output


async def test_events_recorded_while_another_process_archives_are_sealed_by_it(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    from archiver.ledger import writer_lock

    call = sim.add_call(recordings=1, size=3000)
    settings = settings_for(sim, server, tmp_path, lock_bucket)
    await archive_calls(settings, [call.sid])
    with writer_lock(settings.state_dir):  # as the long-running worker holds it
        async with open_retention(settings) as archive:
            assert not archive.owns_manifest
            await hold(archive, [call.sid], reason="dispute 9", on=True)
        assert entries(settings, "legal_hold") == []  # not this job's to write
    await archive_calls(settings, [])  # the writer's next seal takes them in
    assert len(entries(settings, "legal_hold")) == 2
    assert (await run_verify(settings)).ok
