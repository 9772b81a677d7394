"""What was bound at archive time holds, whatever the configuration says later.

A call is bound to a class and a retain-until date when it is archived (its manifest entry says
so). Renaming, removing or shortening the class afterwards must never let ``purge`` erase it
early, and ``audit`` judges every erasure receipt by the object's own manifest entry, so a
forged or premature receipt is found. Run against a plain S3 bucket (no Object Lock: the
program's rules are all that keeps the objects) and a local directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from archiver.archive import archive_calls
from archiver.cli import main
from archiver.config import Settings, load_settings
from archiver.ledger import EventRecord, Ledger
from archiver.manifest import read_manifest
from archiver.retention.archive import open_retention
from archiver.retention.audit import audit
from archiver.retention.jobs import hold, purge
from archiver.simulator import Simulator, SimulatorServer
from tests.support import GENERAL_30D, exotel_env

ORDERS_APP = "233516"
GENERAL = GENERAL_30D
ORDERS = """
[retention.classes.{name}]
period = "{period}"
lock = "none"
at_end = "delete"

[[retention.rules]]
class = "{name}"
app_id = "{app}"
"""
EDITS = {
    "kept": ORDERS.format(name="orders", period="10y", app=ORDERS_APP),
    "renamed": ORDERS.format(name="broker_orders", period="10y", app=ORDERS_APP),
    "removed": "",
    "shortened": ORDERS.format(name="orders", period="1d", app=ORDERS_APP),
}


@pytest.fixture(params=["s3", "local"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "archive")
    request.getfixturevalue("s3_env")
    bucket: str = request.getfixturevalue("bucket")
    return f"s3://{bucket}/rec"


def settings_with(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, destination: str, orders: str
) -> Settings:
    config = tmp_path / "archiver.toml"
    config.write_text(GENERAL + orders)
    env = exotel_env(sim, server.base_url, destination, tmp_path / "state")
    return load_settings(env={**env, "ARCHIVER_ATTEMPTS": "2"}, config_file=config)


def stored(destination: str, seaweed: Any | None) -> dict[str, bytes]:
    """Every object in the destination (but the manifest's own), key -> bytes."""
    if not destination.startswith("s3://"):
        root = Path(destination)
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and not p.relative_to(root).as_posix().startswith("_manifest/")
        }
    assert seaweed is not None
    bucket, prefix = destination[5:].split("/", 1)
    client = seaweed.client()
    found = {}
    for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", []):
        key = o["Key"][len(prefix) + 1 :]
        if not key.startswith("_manifest/"):
            found[key] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return found


def entries(settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    found = read_manifest(settings.state_dir / "manifest.jsonl")
    return [e for e in found if kind is None or e["kind"] == kind]


@pytest.mark.parametrize("edit", ["renamed", "removed", "shortened"])
async def test_a_class_edited_after_archiving_never_lets_purge_erase_what_it_bound(
    sim: Simulator,
    server: SimulatorServer,
    destination: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    edit: str,
) -> None:
    long_ago = sim.now() - timedelta(days=40)
    order = sim.add_call(recordings=1, size=3000, created=long_ago, app_id=ORDERS_APP)
    chat = sim.add_call(recordings=1, size=3000, created=long_ago)  # general: 30 days, ended
    settings = settings_with(sim, server, tmp_path, destination, EDITS["kept"])
    await archive_calls(settings, [order.sid, chat.sid])
    seaweed = request.getfixturevalue("seaweed") if destination.startswith("s3://") else None
    bound = {e["key"]: e for e in entries(settings) if e["call_sid"] == order.sid}
    assert {e["retention_class"] for e in bound.values()} == {"orders"}
    before = stored(destination, seaweed)
    assert {k for k in before if order.sid in k} == set(bound)

    edited = settings_with(sim, server, tmp_path, destination, EDITS[edit])
    async with open_retention(edited, actor="dpo@example") as archive:
        done = await purge(archive, dry_run=False)
    assert not len(done.failures)
    deleted = {r["key"] for r in done.rows if r["action"] == "deleted"}
    assert deleted == {e["key"] for e in entries(settings) if e["call_sid"] == chat.sid}
    # Every object bound to orders is still there, byte for byte.
    after = stored(destination, seaweed)
    for key, entry in bound.items():
        assert hashlib.sha256(after[key]).hexdigest() == entry["sha256"]
        assert after[key] == before[key]
    kept = {r["key"]: r for r in done.rows if r["call_sid"] == order.sid}
    if edit == "shortened":
        assert kept == {}  # not due: the bound date (10 years) is later than the class's now
    else:
        assert set(kept) == set(bound)
        assert {r["action"] for r in kept.values()} == {"kept_class_not_configured"}
        assert {r["class"] for r in kept.values()} == {"orders"}

    # The receipts state the class and the date bound to each erased object.
    receipts = entries(settings, "erasure")
    assert {r["key"] for r in receipts} == deleted
    for receipt in receipts:
        entry = next(
            e
            for e in entries(settings, "recording") + entries(settings, "call_details")
            if e["key"] == receipt["key"]
        )
        assert receipt["retention_class"] == entry["retention_class"] == "general"
        assert receipt["bound_retain_until"] == entry["retain_until"] == receipt["retain_until"]
        assert receipt["retain_until"] <= receipt["deleted_at"]

    async with open_retention(edited) as archive:
        found = await audit(archive)
    problems = {(f["key"], f["problem"]) for f in found.findings}
    if edit == "shortened":
        assert problems == set() and found.ok and found.receipts == len(deleted)
    else:
        assert problems == {(k, "class_not_configured") for k in bound}
        assert "add it back" in next(iter(found.findings))["detail"]


async def test_audit_judges_every_receipt_by_the_objects_own_manifest_entry(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    destination = str(tmp_path / "archive")
    long_ago = sim.now() - timedelta(days=40)
    order = sim.add_call(recordings=1, size=3000, created=long_ago, app_id=ORDERS_APP)
    held = sim.add_call(recordings=1, size=3000, created=long_ago)
    other = sim.add_call(recordings=1, size=3000, created=long_ago)
    settings = settings_with(sim, server, tmp_path, destination, EDITS["kept"])
    await archive_calls(settings, [order.sid, held.sid, other.sid])
    async with open_retention(settings, actor="dpo@example") as archive:
        await hold(archive, [held.sid], reason="case 9", on=True)
    async with open_retention(settings) as archive:
        clean = await audit(archive)
    assert {(f["call_sid"], f["problem"]) for f in clean.findings} == {(other.sid, "overdue")}

    def recording(call_sid: str) -> dict[str, Any]:
        return next(e for e in entries(settings, "recording") if e["call_sid"] == call_sid)

    # Out of band: three objects go, and receipts are forged to cover them.
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    forged = {
        # An orders recording (bound for 10 years) "erased" as if it were general, long ended.
        recording(order.sid)["key"]: {"retention_class": "general", "retain_until": "2020-01-01Z"},
        # A held recording erased while the hold is in force, receipt otherwise as purge writes.
        recording(held.sid)["key"]: {
            "retention_class": "general",
            "retain_until": recording(held.sid)["retain_until"],
        },
        # A receipt naming other bytes than the entry.
        recording(other.sid)["key"]: {
            "retention_class": "general",
            "retain_until": recording(other.sid)["retain_until"],
            "sha256": "0" * 64,
        },
    }
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        for key, fake in forged.items():
            entry = next(e for e in entries(settings) if e["key"] == key)
            (Path(destination) / key).unlink()
            details = {"sha256": entry["sha256"], "size": entry["size"], "deleted_at": now, **fake}
            ledger.add_event(
                EventRecord(
                    kind="erasure",
                    call_sid=entry["call_sid"],
                    key=key,
                    at=now,
                    actor="intruder",
                    details=json.dumps(details),
                )
            )
        ledger.add_event(  # and one for an object the archive never held
            EventRecord(
                kind="erasure",
                call_sid="nosuchcall",
                key="2026/01/01/nosuchcall/recording-1.mp3",
                at=now,
                actor="intruder",
                details=json.dumps({"retention_class": "general", "deleted_at": now}),
            )
        )
    finally:
        ledger.close()

    async with open_retention(settings) as archive:
        found = await audit(archive)
    problems = {(f["key"], f["problem"]) for f in found.findings}
    order_key, held_key, other_key = forged
    assert (order_key, "deleted_early") in problems
    assert (order_key, "receipt_mismatch") in problems  # states general, bound orders
    assert (held_key, "deleted_while_held") in problems
    assert (other_key, "receipt_mismatch") in problems
    assert ("2026/01/01/nosuchcall/recording-1.mp3", "receipt_without_entry") in problems
    assert not found.ok and found.receipts == 4

    env = {
        **exotel_env(sim, server.base_url, destination, tmp_path / "state"),
        "ARCHIVER_CONFIG": str(tmp_path / "archiver.toml"),
    }
    result = await asyncio.to_thread(  # the command runs its own event loop
        CliRunner().invoke,
        main,
        ["retention", "audit", "--report", str(tmp_path / "audit.json")],
        env=env,
    )
    assert result.exit_code == 1, result.output
    assert "deleted_early" in result.output and "Traceback" not in result.output
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["ok"] is False and report["receipts_checked"] == 4
    assert report["counts"]["deleted_early"] == 1
    assert {f["problem"] for f in report["findings"]} >= {"deleted_while_held", "receipt_mismatch"}


LOCKED = """
[retention]
default = "general"

[retention.classes.general]
period = "30d"
lock = "{lock}"
at_end = "delete"
"""


async def test_governance_becomes_compliance_only_with_the_opt_in_and_the_permission(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    bucket = lock_bucket
    config = tmp_path / "archiver.toml"
    config.write_text(LOCKED.format(lock="governance"))
    env = {
        **exotel_env(sim, server.base_url, f"s3://{bucket}/rec", tmp_path / "state"),
        "ARCHIVER_CONFIG": str(config),
        "ARCHIVER_ATTEMPTS": "2",
    }
    settings = load_settings(env=env, config_file=config)
    call = sim.add_call(recordings=1, size=3000)
    await archive_calls(settings, [call.sid])
    key = next(e["key"] for e in entries(settings, "recording"))
    client = seaweed.client()

    def stored_lock() -> tuple[str, datetime]:
        head = client.head_object(Bucket=bucket, Key=f"rec/{key}")
        return head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]

    mode, until = stored_lock()
    assert mode == "GOVERNANCE"
    config.write_text(LOCKED.format(lock="compliance"))  # the class is made stronger

    async def apply_cli(*args: str, **extra: str) -> Any:
        return await asyncio.to_thread(
            CliRunner().invoke, main, ["retention", "apply", *args], env={**env, **extra}
        )

    plain = await apply_cli()
    assert plain.exit_code == 1, plain.output
    assert "--strengthen-governance" in plain.output and "Traceback" not in plain.output
    assert stored_lock() == ("GOVERNANCE", until)
    # Opted in, but the credentials may not bypass GOVERNANCE: refused, and it says why.
    limited = await apply_cli("--strengthen-governance", **seaweed.limited_env())
    assert limited.exit_code == 1, limited.output
    assert "s3:BypassGovernanceRetention" in limited.output
    assert stored_lock() == ("GOVERNANCE", until)
    assert entries(settings, "retention_extended") == []

    done = await apply_cli(**{"ARCHIVER_STRENGTHEN_GOVERNANCE": "1"})  # the env var form
    assert done.exit_code == 0, done.output
    mode, after = stored_lock()
    assert mode == "COMPLIANCE" and after >= until
    changes = [e for e in entries(settings, "retention_extended") if e["key"] == key]
    assert len(changes) == 1 and changes[0]["previous_lock_mode"] == "GOVERNANCE"
    assert changes[0]["lock_mode"] == "COMPLIANCE"
    audited = await asyncio.to_thread(CliRunner().invoke, main, ["retention", "audit"], env=env)
    assert audited.exit_code == 0, audited.output
    # Made weaker again in the config: nothing is weakened, nothing is reported as wrong.
    config.write_text(LOCKED.format(lock="governance"))
    again = await apply_cli("--strengthen-governance")
    assert again.exit_code == 0 and stored_lock() == ("COMPLIANCE", after), again.output
