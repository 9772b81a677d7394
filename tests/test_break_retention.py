"""Adversarial tests of the retention jobs (break14a): what was bound, the receipts, the paging.

Part 1 — bugs found: every test in it failed on the code it was written against (commit
7f2fb3a), each proving one way a job or the audit said something false, or lost something it
must keep; all are fixed. Part 2 — attacks the code withstood, kept as regression tests.

Real SeaweedFS and the Exotel simulator over real HTTP; no mocks of boto3, aiohttp or the sinks.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from archiver.archive import archive_calls
from archiver.cli import main
from archiver.config import Settings, load_settings
from archiver.ledger import EventRecord, Ledger, writer_lock
from archiver.manifest import read_manifest
from archiver.retention.archive import open_retention
from archiver.retention.audit import audit
from archiver.retention.jobs import apply, hold, purge
from archiver.simulator import Simulator, SimulatorServer
from tests.support import add_bulk_objects, exotel_env

ORDERS_APP = "233516"

GENERAL_ORDERS = """
[retention]
default = "general"

[retention.classes.general]
period = "{general}"
lock = "{lock}"
at_end = "delete"

[retention.classes.orders]
period = "{orders}"
lock = "{lock}"
at_end = "{orders_end}"

[[retention.rules]]
class = "orders"
app_id = "{app}"
"""


def write_config(
    path: Path,
    *,
    general: str = "30d",
    orders: str = "10y",
    lock: str = "none",
    orders_end: str = "keep",
    rules: bool = True,
) -> Path:
    path.write_text(
        GENERAL_ORDERS.format(
            general=general, orders=orders, lock=lock, orders_end=orders_end, app=ORDERS_APP
        )
        if rules
        else ""
    )
    return path


def env_for(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, destination: str, config: Path
) -> dict[str, str]:
    return {
        **exotel_env(sim, server.base_url, destination, tmp_path / "state"),
        "ARCHIVER_CONFIG": str(config),
        "ARCHIVER_ATTEMPTS": "2",
    }


def settings_of(env: dict[str, str], config: Path) -> Settings:
    return load_settings(env=env, config_file=config)


def entries(settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    found = read_manifest(settings.state_dir / "manifest.jsonl")
    return [e for e in found if kind is None or e["kind"] == kind]


def recording_of(settings: Settings, call_sid: str) -> dict[str, Any]:
    return next(e for e in entries(settings, "recording") if e["call_sid"] == call_sid)


def iso_now(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


def forge_receipt(settings: Settings, entry: dict[str, Any], **details: Any) -> None:
    """Add an erasure receipt to the ledger as purge writes one (the fields it writes), with
    ``details`` overriding; ``at``/``version_id`` may be given among them."""
    at = details.pop("at", iso_now())
    version_id = details.pop("version_id", entry.get("version_id"))
    body = {
        "sha256": entry["sha256"],
        "size": entry["size"],
        "retention_class": entry.get("retention_class"),
        "retain_until": entry.get("retain_until"),
        "bound_retain_until": entry.get("retain_until"),
        "at_end": "delete",
        "deleted_at": at,
        "location": entry["location"],
        **details,
    }
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        ledger.add_event(
            EventRecord(
                kind="erasure",
                call_sid=entry["call_sid"],
                key=entry["key"],
                at=at,
                actor="intruder@example",
                details=json.dumps(body, sort_keys=True),
                version_id=version_id,
            )
        )
    finally:
        ledger.close()


def invoke(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, args, env=env)


@pytest.fixture
def versioned_bucket(seaweed: Any) -> str:
    name = f"brk-ver-{datetime.now(UTC):%H%M%S%f}"
    client = seaweed.client()
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def all_versions(seaweed: Any, bucket: str, full_key: str) -> list[dict[str, Any]]:
    answer = seaweed.client().list_object_versions(Bucket=bucket, Prefix=full_key)
    return [v for v in answer.get("Versions", []) if v["Key"] == full_key]


# =================================================================================================
# Part 1 — bugs found (each failed before its fix)
# =================================================================================================


async def test_was_audit_accepts_a_future_dated_forged_receipt_for_a_premature_deletion(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """An orders recording is bound for 10 years. It is deleted out of band today, and a receipt
    is forged that says what purge would say — right class, right bytes, the bound date — but
    dated 2099, after the bound date. `audit` takes the receipt's own (future) time as the
    erasure time, so it finds nothing: the premature deletion is hidden."""
    destination = str(tmp_path / "archive")
    config = write_config(tmp_path / "archiver.toml", orders_end="delete")
    env = env_for(sim, server, tmp_path, destination, config)
    settings = settings_of(env, config)
    order = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    await archive_calls(settings, [order.sid])
    entry = recording_of(settings, order.sid)
    assert entry["retention_class"] == "orders"
    assert entry["retain_until"] > iso_now(timedelta(days=3000))

    (Path(destination) / entry["key"]).unlink()  # today: ten years early
    forge_receipt(settings, entry, at="2099-01-01T00:00:00.000Z")

    async with open_retention(settings) as archive:
        found = await audit(archive)
    problems = {(f["key"], f["problem"]) for f in found.findings}
    assert not (Path(destination) / entry["key"]).exists()
    # The bucket no longer has an object the manifest binds until 2036; audit must say so.
    assert not found.ok, "audit passed a receipt dated in the future for a deletion made today"
    assert problems & {(entry["key"], "deleted_early"), (entry["key"], "receipt_dated_ahead")}


async def test_was_audit_accepts_a_forged_receipt_for_an_object_archived_before_the_rules(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A call archived before any retention rules; the rules added since put it in `orders`
    (10 years, keep). Its recording is deleted out of band and a receipt forged: class
    `general`, retain_until 2020. `purge` would never have erased it (its class says keep), but
    `audit` has no class or date in the entry to compare with, and accepts the receipt."""
    destination = str(tmp_path / "archive")
    no_rules = write_config(tmp_path / "none.toml", rules=False)
    env = env_for(sim, server, tmp_path, destination, no_rules)
    order = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    await archive_calls(settings_of(env, no_rules), [order.sid])

    config = write_config(tmp_path / "archiver.toml")
    settings = settings_of({**env, "ARCHIVER_CONFIG": str(config)}, config)
    entry = recording_of(settings, order.sid)
    assert entry.get("retention_class") is None  # archived before the rules

    async with open_retention(settings) as archive:
        dry = await purge(archive, dry_run=True)
    assert not [r for r in dry.rows if r["key"] == entry["key"]]  # purge would keep it

    (Path(destination) / entry["key"]).unlink()
    forge_receipt(settings, entry, retention_class="general", retain_until="2020-01-01T00:00:00Z")

    async with open_retention(settings) as archive:
        found = await audit(archive)
    problems = {(f["key"], f["problem"]) for f in found.findings}
    assert not found.ok, (
        "audit accepted a receipt erasing an `orders` (keep, 10y) object as `general`, 2020"
    )
    assert problems & {(entry["key"], "deleted_early"), (entry["key"], "receipt_mismatch")}


async def test_was_audit_accepts_a_duplicated_receipt_and_one_naming_another_version(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A legitimate purge erases a general recording (receipt 1). Then two more receipts are
    added for the same key: an exact duplicate, and one naming a version the manifest entry
    never had. Purge writes one receipt per object, for the entry's version (or one repair put
    back): audit accepts all three."""
    destination = str(tmp_path / "archive")
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, destination, config)
    settings = settings_of(env, config)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    await archive_calls(settings, [call.sid])
    entry = recording_of(settings, call.sid)
    async with open_retention(settings) as archive:
        done = await purge(archive, dry_run=False)
    assert entry["key"] in {r["key"] for r in done.rows if r["action"] == "deleted"}
    (legit,) = [e for e in entries(settings, "erasure") if e["key"] == entry["key"]]
    async with open_retention(settings) as archive:
        assert (await audit(archive)).ok

    forge_receipt(settings, entry, at=legit["deleted_at"], deleted_at=legit["deleted_at"])
    forge_receipt(settings, entry, version_id="3f2a-not-a-version-of-this-object")
    async with open_retention(settings) as archive:
        found = await audit(archive)
    assert found.receipts == 4  # the recording's and call.json's, and the two added
    flagged = [f for f in found.findings if f["key"] == entry["key"]]
    assert len(flagged) >= 2, (
        f"audit accepted a duplicated receipt and one for another version: {flagged}"
    )


async def test_was_a_transient_read_error_of_call_json_lets_purge_erase_a_kept_call(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call archived before the rules; the rules now put it in `orders` (10 years, keep) by
    its call.json. During the purge the store answers the GET of that call.json with 500s (a
    passing hiccup): `_classify_from_snapshot` falls back to the default class (`general`, 30
    days, delete) and purge erases the whole call — a class that says keep, gone for good."""
    from tests.s3proxy import FaultyS3Proxy

    no_rules = write_config(tmp_path / "none.toml", rules=False)
    env = env_for(sim, server, tmp_path, f"s3://{bucket}/rec", no_rules)
    order = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40),
                         app_id=ORDERS_APP)  # fmt: skip
    await archive_calls(settings_of(env, no_rules), [order.sid])
    config = write_config(tmp_path / "archiver.toml")
    keys = {e["key"] for e in entries(settings_of(env, no_rules)) if e["call_sid"] == order.sid}
    client = seaweed.client()

    def present() -> set[str]:
        listed = client.list_objects_v2(Bucket=bucket, Prefix="rec/").get("Contents", [])
        return {o["Key"][4:] for o in listed} & keys

    assert present() == keys and len(keys) == 2
    plain = settings_of({**env, "ARCHIVER_CONFIG": str(config)}, config)
    async with open_retention(plain) as archive:  # no fault: purge keeps the call, as it must
        dry = await purge(archive, dry_run=True)
    assert not [r for r in dry.rows if r["key"] in keys], list(dry.rows)
    with FaultyS3Proxy(seaweed.endpoint) as proxy:
        proxy.fail(
            lambda method, path: method == "GET" and path.split("?")[0].endswith("/call.json"),
            times=20,
        )
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # boto3 reads it
        settings = settings_of({**env, "ARCHIVER_CONFIG": str(config)}, config)
        async with open_retention(settings, actor="timer") as archive:
            done = await purge(archive, dry_run=False)
        assert proxy.injected["rule:InternalError"] >= 1, (proxy.injected, proxy.log)
    deleted = {r["key"] for r in done.rows if r["action"] == "deleted"}
    assert present() == keys, f"purge erased {sorted(deleted)}: the rules say keep (orders)"


async def test_was_audit_ignores_the_retention_extension_recorded_before_a_receipt(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    """general (30 days, GOVERNANCE, delete); a call 40 days old is archived (bound date past,
    so unlocked). The class is lengthened to 60 days and `apply` locks it until then, recording
    a `retention_extended` entry in the chain. A privileged identity then bypasses GOVERNANCE,
    deletes the recording 20 days early and forges a receipt with the bound date. The audit
    judges the receipt against the bound date only, not the extension its own chain recorded
    before the receipt: it finds nothing (the docs say a bypassed early delete is found)."""
    config = write_config(tmp_path / "archiver.toml", lock="governance")
    env = env_for(sim, server, tmp_path, f"s3://{lock_bucket}/rec", config)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    await archive_calls(settings_of(env, config), [call.sid])
    write_config(config, general="60d", lock="governance")
    settings = settings_of(env, config)
    async with open_retention(settings, actor="dpo") as archive:
        applied = await apply(archive)
    entry = recording_of(settings, call.sid)
    assert {r["action"] for r in applied.rows if r["key"] == entry["key"]} == {"lock"}
    (ext,) = [e for e in entries(settings, "retention_extended") if e["key"] == entry["key"]]
    assert ext["retain_until"] > iso_now(timedelta(days=19))

    client = seaweed.client()
    full = f"rec/{entry['key']}"
    for v in all_versions(seaweed, lock_bucket, full):  # the GOVERNANCE bypass, out of band
        client.delete_object(
            Bucket=lock_bucket, Key=full, VersionId=v["VersionId"], BypassGovernanceRetention=True
        )
    assert all_versions(seaweed, lock_bucket, full) == []
    forge_receipt(settings, entry)  # class general, retain_until = the bound date (10 days ago)

    async with open_retention(settings) as archive:
        found = await audit(archive)
    problems = {(f["key"], f["problem"]) for f in found.findings}
    assert (entry["key"], "deleted_early") in problems, (
        f"erased 20 days before the date `apply` recorded ({ext['retain_until']}); audit: "
        f"{sorted(problems)}"
    )


async def test_was_audit_accepts_a_receipt_while_the_erased_bytes_are_still_in_the_bucket(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    versioned_bucket: str,
    tmp_path: Path,
) -> None:
    """A versioned bucket. A receipt is forged for a general recording that is due, and the
    recording "deleted" with a plain DELETE — which only puts a delete marker on top: every byte
    is still in the bucket. `audit` checks `erased_but_present` with a HEAD of the current
    version only, so it accepts the receipt; the erasure it certifies never happened (purge's
    own contract: "every version of the key, not a delete marker")."""
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, f"s3://{versioned_bucket}/rec", config)
    settings = settings_of(env, config)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    await archive_calls(settings, [call.sid])
    entry = recording_of(settings, call.sid)
    assert entry["version_id"]
    full = f"rec/{entry['key']}"
    seaweed.client().delete_object(Bucket=versioned_bucket, Key=full)  # a delete marker
    left = all_versions(seaweed, versioned_bucket, full)
    assert [v["VersionId"] for v in left] == [entry["version_id"]]  # the bytes are all there
    forge_receipt(settings, entry)

    async with open_retention(settings) as archive:
        found = await audit(archive)
    problems = {(f["key"], f["problem"]) for f in found.findings}
    assert (entry["key"], "erased_but_present") in problems, (
        f"version {entry['version_id']} is still stored; audit: {sorted(problems)}"
    )


def test_was_a_receipt_with_a_non_string_date_crashes_the_audit(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A receipt whose `retain_until` is a number (a hand-edited or forged ledger row) should
    be `receipt_unreadable`; `_time` only catches ValueError, so `retention audit` dies with an
    AttributeError traceback and writes no report at all."""
    destination = str(tmp_path / "archive")
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, destination, config)
    settings = settings_of(env, config)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    asyncio.run(archive_calls(settings, [call.sid]))
    entry = recording_of(settings, call.sid)
    (Path(destination) / entry["key"]).unlink()
    forge_receipt(settings, entry, retain_until=20200101)
    report = tmp_path / "audit.json"
    result = invoke(["retention", "audit", "--report", str(report)], env)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"audit crashed: {result.exception!r}"
    )
    assert result.exit_code == 1
    found = json.loads(report.read_text())
    assert "receipt_unreadable" in found["counts"], found


async def test_was_a_stored_retention_at_the_end_of_time_crashes_plan_apply_and_audit(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    """Anyone allowed s3:PutObjectRetention may extend a date (docs/compliance.md): a lawyer's
    "keep it for ever" sets 9999-12-31T23:59:59Z on a GOVERNANCE recording. `needed_change`
    and `_check_item` compute `stored.until + SLACK`, past `datetime.max`: plan, apply and
    audit all die with OverflowError, for the whole archive."""
    config = write_config(tmp_path / "archiver.toml", lock="governance")
    env = env_for(sim, server, tmp_path, f"s3://{lock_bucket}/rec", config)
    settings = settings_of(env, config)
    call = sim.add_call(recordings=1, size=3000)
    await archive_calls(settings, [call.sid])
    entry = recording_of(settings, call.sid)
    end_of_time = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    seaweed.client().put_object_retention(
        Bucket=lock_bucket,
        Key=f"rec/{entry['key']}",
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": end_of_time},
    )
    crashed = {}
    for job in (["plan"], ["apply"], ["audit"]):
        result = await asyncio.to_thread(invoke, ["retention", *job], env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            crashed[job[0]] = repr(result.exception)
    assert crashed == {}, crashed


def test_was_purge_of_a_repaired_object_leaves_its_quarantined_copy_in_the_destination(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A recording is altered (one byte flipped: still the whole conversation) and `repair`
    puts the archived bytes back, keeping the altered file under `_manifest/quarantine/`. When
    the recording's class ends, purge deletes the key and writes a receipt — and the
    quarantined copy stays in the destination, unreported by purge and by audit."""
    destination = tmp_path / "archive"
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, str(destination), config)
    settings = settings_of(env, config)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    asyncio.run(archive_calls(settings, [call.sid]))
    entry = recording_of(settings, call.sid)
    path = destination / entry["key"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    repaired = invoke(["repair"], env)
    assert repaired.exit_code in (0, 1), repaired.output
    assert [e for e in entries(settings, "repaired") if e["key"] == entry["key"]], repaired.output
    aside = [p for p in (destination / "_manifest" / "quarantine").rglob("*") if p.is_file()]
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data)

    purged = invoke(["retention", "purge"], env)
    assert purged.exit_code == 0, purged.output
    assert not path.exists()
    assert [e for e in entries(settings, "erasure") if e["key"] == entry["key"]]
    left = [p for p in (destination / "_manifest" / "quarantine").rglob("*") if p.is_file()]
    assert left == [], f"erased, receipt written, and a copy is still at {left}"


async def test_was_purge_reports_deleted_and_exits_0_while_the_key_still_serves_the_recording(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    versioned_bucket: str,
    tmp_path: Path,
) -> None:
    """A versioned bucket; the same recording bytes are put again at its key by something else
    (a backup restore, a sync tool): a second version. Purge deletes only the version ids it
    knows (the archived one and those repair put back), reports `deleted`, writes a receipt and
    exits 0 — and the key still serves the recording. docs/compliance.md: "The stored version
    is deleted for good (every version of the key, not a delete marker)"."""
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, f"s3://{versioned_bucket}/rec", config)
    settings = settings_of(env, config)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    await archive_calls(settings, [call.sid])
    entry = recording_of(settings, call.sid)
    full = f"rec/{entry['key']}"
    client = seaweed.client()
    body = client.get_object(Bucket=versioned_bucket, Key=full)["Body"].read()
    client.put_object(Bucket=versioned_bucket, Key=full, Body=body)  # the same bytes again
    assert len(all_versions(seaweed, versioned_bucket, full)) == 2

    result = await asyncio.to_thread(invoke, ["retention", "purge"], env)
    receipts = [e for e in entries(settings, "erasure") if e["key"] == entry["key"]]
    left = all_versions(seaweed, versioned_bucket, full)
    if result.exit_code == 0 and receipts:
        assert left == [], (
            f"purge exit 0 and a receipt, yet {len(left)} version(s) of the recording remain"
        )


async def test_was_one_store_error_aborts_the_purge_without_a_report_or_sealed_receipts(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two due calls. The store fails the HEAD of the last object purge looks at (500s, past
    the retries). `lock_status` raises out of `purge` instead of the object being reported as
    failed: the whole job ends with `error: ...`, `--report` is never written, and the receipts
    of what it had already erased are not appended to manifest.jsonl nor sealed into the
    destination (the code after `yield` in `open_retention` does not run)."""
    from tests.s3proxy import FaultyS3Proxy

    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, f"s3://{bucket}/rec", config)
    settings = settings_of(env, config)
    long_ago = sim.now() - timedelta(days=40)
    first, last = (sim.add_call(recordings=1, size=3000, created=long_ago) for _ in range(2))
    await archive_calls(settings, [first.sid, last.sid])
    last_key = entries(settings)[-1]["key"]
    report = tmp_path / "purge.json"
    with FaultyS3Proxy(seaweed.endpoint) as proxy:
        proxy.fail(
            lambda method, path: method == "HEAD" and path.split("?")[0].endswith(last_key),
            times=20,
        )
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        result = await asyncio.to_thread(
            invoke, ["retention", "purge", "--report", str(report)], env
        )
    assert proxy.injected, proxy.log
    deleted = [e["key"] for e in entries(settings, "erasure")]
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        in_ledger = [e.key for e in ledger.events() if e.kind == "erasure"]
    finally:
        ledger.close()
    assert len(in_ledger) == 3, in_ledger  # erased: first's two objects and last's call.json
    problems = []
    if not report.exists():
        problems.append(f"no report written (exit {result.exit_code}: {result.output.strip()})")
    if sorted(deleted) != sorted(in_ledger):
        problems.append(f"{len(in_ledger) - len(deleted)} receipt(s) not in manifest.jsonl")
    assert problems == [], problems


async def test_was_an_altered_call_json_moves_a_call_archived_before_the_rules_to_purge(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A call archived before the rules; by its call.json the rules put it in `orders` (keep).
    Someone edits that call.json in the destination (its SHA-256 no longer the manifest's):
    `_classify_from_snapshot` trusts the altered bytes, the call now matches no rule, falls to
    `general` (30 days, delete), and purge erases the recording. The class of an unbound
    object is decided by bytes the manifest says are not the archived ones."""
    destination = tmp_path / "archive"
    no_rules = write_config(tmp_path / "none.toml", rules=False)
    env = env_for(sim, server, tmp_path, str(destination), no_rules)
    order = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40),
                         app_id=ORDERS_APP)  # fmt: skip
    await archive_calls(settings_of(env, no_rules), [order.sid])
    config = write_config(tmp_path / "archiver.toml")
    settings = settings_of({**env, "ARCHIVER_CONFIG": str(config)}, config)
    recording = recording_of(settings, order.sid)
    snapshot = next(e for e in entries(settings, "call_details") if e["call_sid"] == order.sid)
    path = destination / snapshot["key"]
    text = path.read_text()
    assert f'"{ORDERS_APP}"' in text
    path.write_text(text.replace(f'"{ORDERS_APP}"', '"100001"'))  # out of band

    async with open_retention(settings) as archive:
        done = await purge(archive, dry_run=False)
    deleted = {r["key"] for r in done.rows if r["action"] == "deleted"}
    assert (destination / recording["key"]).exists(), (
        f"purge erased {sorted(deleted)}: the archived call.json puts it in orders (keep)"
    )


async def test_was_a_hold_recorded_while_purge_is_running_is_ignored_and_the_call_erased(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bucket without Object Lock: holds are recorded, and purge is all that respects them.
    Purge reads the events of a page of 500 objects once, then works through the page (a HEAD
    and a DELETE each, retried on errors: minutes on a real store). A legal hold recorded in
    that window (here: while the store slows purge down on the first object) is not seen:
    purge erases the held call and writes a receipt after the hold in the chain."""
    from tests.s3proxy import FaultyS3Proxy

    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, f"s3://{bucket}/rec", config)
    env["ARCHIVER_ATTEMPTS"] = "4"
    settings = settings_of(env, config)
    long_ago = sim.now() - timedelta(days=40)
    first, disputed = (sim.add_call(recordings=1, size=3000, created=long_ago) for _ in range(2))
    await archive_calls(settings, [first.sid])
    await archive_calls(settings, [disputed.sid])
    first_key = recording_of(settings, first.sid)["key"]
    disputed_key = recording_of(settings, disputed.sid)["key"]
    order = [e["key"] for e in entries(settings)]
    assert order.index(first_key) < order.index(disputed_key)  # one page, first comes first
    client = seaweed.client()
    with FaultyS3Proxy(seaweed.endpoint) as proxy:
        proxy.fail(
            lambda method, path: method == "DELETE" and path.split("?")[0].endswith(first_key),
            times=3, status=503, code="SlowDown",
        )  # fmt: skip
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)

        async def run_purge() -> Any:
            async with open_retention(settings, actor="timer") as archive:
                return await purge(archive, dry_run=False)

        purging = asyncio.create_task(run_purge())
        while not proxy.injected:  # purge is in its page, on the first object
            await asyncio.sleep(0.02)
        async with open_retention(settings, actor="legal@example") as archive:
            held = await hold(archive, [disputed.sid], reason="dispute 42", on=True)
        assert held.count("held") == 2 and not purging.done()
        done = await purging
    assert first_key in {r["key"] for r in done.rows if r["action"] == "deleted"}
    listed = client.list_objects_v2(Bucket=bucket, Prefix="rec/").get("Contents", [])
    assert f"rec/{disputed_key}" in {o["Key"] for o in listed}, (
        f"held (dispute 42) before purge reached it, and erased: {done.count('deleted')} deleted"
    )


# =================================================================================================
# Part 2 — attacks the code withstood
# =================================================================================================


async def test_held_purge_pages_1200_objects_once_each_with_a_hold_recorded_on_page_three(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, str(root), config)
    settings = settings_of(env, config)
    await archive_calls(settings, [sim.add_call(recordings=1, size=2000).sid])  # not due
    add_bulk_objects(settings.state_dir, root, 1200)
    async with open_retention(settings, actor="dpo") as archive:
        await hold(archive, ["bulk00001100"], reason="case 7", on=True)  # seq ~1103: page 3
    async with open_retention(settings) as archive:
        done = await purge(archive, dry_run=False)
    deleted = [r["key"] for r in done.rows if r["action"] == "deleted"]
    assert len(deleted) == len(set(deleted)) == 1199
    assert [r["call_sid"] for r in done.rows if r["action"] == "kept_held"] == ["bulk00001100"]
    left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp3"))
    assert [k for k in left if k.startswith("2026/09/01/")] == [
        "2026/09/01/bulk00001100/recording-1.mp3"
    ]
    receipts = [e["key"] for e in entries(settings, "erasure")]
    assert sorted(receipts) == sorted(deleted)
    async with open_retention(settings) as archive:
        found = await audit(archive)
    assert found.ok and found.receipts == 1199, list(found.findings)[:5]
    async with open_retention(settings) as archive:  # a second run: nothing twice
        again = await purge(archive, dry_run=False)
    assert again.count("deleted") == 0 and not len(again.failures)


async def test_held_a_hold_covers_every_object_of_a_call_of_1200_objects(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, str(root), config)
    settings = settings_of(env, config)
    await archive_calls(settings, [sim.add_call(recordings=1, size=2000).sid])
    keys = add_bulk_objects(settings.state_dir, root, 1200, call_sid="bigcall0001")
    async with open_retention(settings, actor="dpo") as archive:
        held = await hold(archive, ["bigcall0001"], reason="case 8", on=True)
    assert held.count("held") == 1200
    async with open_retention(settings) as archive:
        kept = await purge(archive, dry_run=False)
    assert kept.count("kept_held") == 1200 and kept.count("deleted") == 0
    assert all((root / k).exists() for k in keys)
    async with open_retention(settings, actor="dpo") as archive:
        released = await hold(archive, ["bigcall0001"], reason="case 8 closed", on=False)
    assert released.count("released") == 1200
    async with open_retention(settings) as archive:
        done = await purge(archive, dry_run=False)
    assert done.count("deleted") == 1200 and not any((root / k).exists() for k in keys)
    async with open_retention(settings) as archive:
        assert (await audit(archive)).ok


async def test_held_no_false_alarm_after_the_class_is_lengthened_after_the_purge(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, str(tmp_path / "archive"), config)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    await archive_calls(settings_of(env, config), [call.sid])
    async with open_retention(settings_of(env, config)) as archive:
        assert (await purge(archive, dry_run=False)).count("deleted") == 2
    write_config(config, general="5y")
    async with open_retention(settings_of(env, config)) as archive:
        found = await audit(archive)
    assert found.ok and found.receipts == 2, list(found.findings)


async def test_held_receipts_recorded_while_another_process_holds_the_writer_lock(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, str(tmp_path / "archive"), config)
    settings = settings_of(env, config)
    long_ago = sim.now() - timedelta(days=40)
    calls = [sim.add_call(recordings=1, size=3000, created=long_ago) for _ in range(3)]
    await archive_calls(settings, [c.sid for c in calls])
    with writer_lock(settings.state_dir) as owns:  # as the long-running worker does
        assert owns
        async with open_retention(settings) as archive:
            assert not archive.owns_manifest
            done = await purge(archive, dry_run=False)
        assert done.count("deleted") == 6
        assert entries(settings, "erasure") == []  # left for the worker to seal
        async with open_retention(settings) as archive:
            found = await audit(archive)
        assert found.ok and found.receipts == 6, list(found.findings)
    await archive_calls(settings, [])  # the worker's next seal
    assert len(entries(settings, "erasure")) == 6
    async with open_retention(settings) as archive:
        assert (await audit(archive)).ok
    verified = await asyncio.to_thread(invoke, ["verify"], env)
    assert verified.exit_code == 0, verified.output


async def test_held_a_repaired_object_is_purged_with_every_version_and_audits_clean(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    versioned_bucket: str,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, f"s3://{versioned_bucket}/rec", config)
    settings = settings_of(env, config)
    call = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    await archive_calls(settings, [call.sid])
    entry = recording_of(settings, call.sid)
    full = f"rec/{entry['key']}"
    seaweed.client().delete_object(Bucket=versioned_bucket, Key=full)  # a delete marker
    repaired = await asyncio.to_thread(invoke, ["repair"], env)
    assert repaired.exit_code == 0, repaired.output
    assert len(all_versions(seaweed, versioned_bucket, full)) == 2  # archived + put back
    async with open_retention(settings) as archive:
        done = await purge(archive, dry_run=False)
    assert entry["key"] in {r["key"] for r in done.rows if r["action"] == "deleted"}
    assert all_versions(seaweed, versioned_bucket, full) == []
    async with open_retention(settings) as archive:
        found = await audit(archive)
    assert found.ok, list(found.findings)


async def test_held_changing_the_default_or_lock_never_purges_a_bound_object_earlier(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """general (30 days) bound to a call 10 days old, orders (10 y, keep) to an order 40 days
    old. Then: a new default class of 1 day, general's lock `none` (unchanged), orders'
    at_end still keep, the rule moved to another app: nothing bound is purged."""
    destination = tmp_path / "archive"
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, str(destination), config)
    recent = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=10))
    order = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40),
                         app_id=ORDERS_APP)  # fmt: skip
    await archive_calls(settings_of(env, config), [recent.sid, order.sid])
    config.write_text(
        write_config(tmp_path / "tmp.toml", general="1d").read_text()
        .replace('default = "general"', 'default = "short"')
        .replace(f'app_id = "{ORDERS_APP}"', 'app_id = "999"')
        + '\n[retention.classes.short]\nperiod = "1d"\nlock = "none"\nat_end = "delete"\n'
    )  # fmt: skip
    async with open_retention(settings_of(env, config)) as archive:
        done = await purge(archive, dry_run=False)
    assert done.count("deleted") == 0, list(done.rows)
    files = [p for p in destination.rglob("*") if p.is_file() and "_manifest" not in p.parts]
    assert len(files) == 4


def test_held_reports_are_valid_json_empty_large_and_with_failures(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    config = write_config(tmp_path / "archiver.toml")
    env = env_for(sim, server, tmp_path, str(root), config)
    settings = settings_of(env, config)
    asyncio.run(archive_calls(settings, [sim.add_call(recordings=1, size=2000).sid]))
    empty = tmp_path / "empty.json"
    assert invoke(["retention", "purge", "--dry-run", "--report", str(empty)], env).exit_code == 0
    assert json.loads(empty.read_text()) == {
        "job": "purge", "counts": {"failed": 0}, "objects": [], "failures": []
    }  # fmt: skip
    add_bulk_objects(settings.state_dir, root, 130)
    for n in range(60):  # gone out of band: purge fails them
        (root / f"2026/09/01/bulk{n:08d}/recording-1.mp3").unlink()
    out = tmp_path / "purge.json"
    result = invoke(["retention", "purge", "--report", str(out)], env)
    assert result.exit_code == 1 and "more failure(s)" in result.output, result.output
    report = json.loads(out.read_text())
    assert report["counts"] == {"deleted": 70, "failed": 60}
    assert len(report["objects"]) == 70 and len(report["failures"]) == 60
    assert {f["error"][:12] for f in report["failures"]} == {"already gone"}
    audited = tmp_path / "audit.json"
    result = invoke(["retention", "audit", "--report", str(audited)], env)
    assert result.exit_code == 1
    found = json.loads(audited.read_text())
    assert found["ok"] is False and found["counts"] == {"missing": 60}
    assert len(found["findings"]) == 60 and found["receipts_checked"] == 70
