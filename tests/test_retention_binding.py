"""A rescued call's objects whose class the v1 fields cannot decide are stored unbound (no class,
no lock); enrichment binds them (``archiver.retention.binding.bind_rescued``): the class's Object
Lock on the stored version, only strengthening, and a ``class_bound`` event in the chain. Until
then the retention jobs keep them, never purge them, and report the window.

Against SeaweedFS with Object Lock, which enforces it as AWS does. The rescued state is built by
hand as the rescue lane leaves it: the recording and ``call-v1.json`` put unlocked, their ledger
rows without a class, the call ``rescued``, no ``call.json``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from archiver.archive import archive_calls, sink_for
from archiver.cli import main
from archiver.config import Settings, load_settings
from archiver.exotel.models import IST, CallDetails, parse_call_details
from archiver.ledger import Ledger, ObjectRecord, utc_now
from archiver.manifest import ManifestWriter, read_manifest
from archiver.recorder import Recorder
from archiver.retention.archive import open_retention
from archiver.retention.audit import audit
from archiver.retention.jobs import plan, purge
from archiver.retention.policy import parse_period
from archiver.segments import seal
from archiver.simulator import SimCall, Simulator, SimulatorServer
from archiver.sinks import Lock
from archiver.verify import run_verify
from tests.support import exotel_env

PREFIX = "rec"
ORDERS_APP = "233516"


def rules(orders_period: str = "3y", *, orders_rule: bool = True) -> str:
    rule = f'\n[[retention.rules]]\nclass = "orders"\napp_id = "{ORDERS_APP}"\n'
    return f"""
[retention]
default = "general"

[retention.classes.general]
period = "30d"
lock = "governance"
at_end = "delete"

[retention.classes.orders]
period = "{orders_period}"
lock = "compliance"
at_end = "keep"
{rule if orders_rule else ""}"""


def settings_with(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, bucket: str, config: str
) -> Settings:
    path = tmp_path / "archiver.toml"
    path.write_text(config)
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state")
    return load_settings(env=env, config_file=path)


def folder(call: SimCall) -> str:
    return f"{call.created.astimezone(IST):%Y/%m/%d}/{call.sid}"


def until(call: SimCall, period: str) -> datetime:
    return parse_period(period, "").after(call.created.replace(microsecond=0))


async def rescue_by_hand(
    settings: Settings, call: SimCall, *, bound_at_rescue: Lock | None = None
) -> list[str]:
    """The call as the rescue lane leaves it: recording-1 and call-v1.json stored and recorded,
    sealed into the chain, the call ``rescued``. Unbound (no class, no lock), or bound at rescue
    to ``orders`` with ``bound_at_rescue``. Their keys."""
    sink = sink_for(settings)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    keys = []
    try:
        v1_item = json.dumps({"Sid": call.sid, "Direction": call.direction}).encode()
        audio = b"ID3" + hashlib.sha256(call.sid.encode()).digest() * 100
        for kind, name, body, mime, fmt in (
            ("recording", "recording-1.mp3", audio, "audio/mpeg", "mp3"),
            ("v1_record", "call-v1.json", v1_item, "application/json", "json"),
        ):
            key = f"{folder(call)}/{name}"
            digest = hashlib.sha256(body).hexdigest()
            put = await sink.put(
                key,
                io.BytesIO(body),
                size=len(body),
                sha256=digest,
                content_type=mime,
                lock=bound_at_rescue,
            )
            bound = bound_at_rescue is not None
            ledger.add_object(
                ObjectRecord(
                    call_sid=call.sid,
                    kind=kind,
                    idx=1 if kind == "recording" else 0,
                    key=key,
                    location=put.location,
                    size=len(body),
                    sha256=digest,
                    content_type=mime,
                    format=fmt,
                    source=f"https://recordings.example/{call.sid}",
                    call_created=call.created.astimezone(IST).isoformat(),
                    archived_at=utc_now(),
                    worker="rescue",
                    version_id=put.version_id,
                    retention_class="orders" if bound else None,
                    retain_until=(
                        bound_at_rescue.until.isoformat().replace("+00:00", "Z")
                        if bound_at_rescue
                        else None
                    ),
                    lock_mode=bound_at_rescue.mode if bound_at_rescue else None,
                )
            )
            keys.append(key)
        ledger.set_call(call.sid, "rescued", created_time=call.created.astimezone(IST).isoformat())
        ManifestWriter(settings.state_dir / "manifest.jsonl").sync(ledger)
        await seal(ledger, sink)  # sealed before enrichment, as a real rescue's entries are
    finally:
        ledger.close()
        await sink.close()
    return keys


def v3_details(sim: Simulator, server: SimulatorServer, call: SimCall) -> CallDetails:
    request = urllib.request.Request(
        f"{server.base_url}/v3/accounts/{sim.account_sid}/calls/{call.sid}",
        headers={
            "Authorization": "Basic "
            + base64.b64encode(f"{sim.api_key}:{sim.api_token}".encode()).decode()
        },
    )
    with urllib.request.urlopen(request) as response:
        return parse_call_details(json.loads(response.read())["response"]["call_details"])


async def enrich_by_hand(
    settings: Settings, details: CallDetails
) -> tuple[list[ObjectRecord], list[ObjectRecord]]:
    """What enrichment does for retention: ``bind_rescued`` over every object of the call,
    then the seal. (The records before, and as returned.)"""
    from archiver.retention.binding import bind_rescued

    sink = sink_for(settings)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        recorder = Recorder(
            sink,
            ledger,
            ManifestWriter(settings.state_dir / "manifest.jsonl"),
            "enricher",
            policy=settings.retention,
        )
        records = ledger.objects_of(details.sid)
        out = await bind_rescued(recorder, details, records)
        recorder.writes.close()
        await recorder.seal()
        return records, out
    finally:
        ledger.close()
        await sink.close()


def retention(seaweed: Any, bucket: str, key: str) -> dict[str, Any]:
    return dict(
        seaweed.client().get_object_retention(Bucket=bucket, Key=f"{PREFIX}/{key}")["Retention"]
    )


def bindings(settings: Settings) -> list[dict[str, Any]]:
    manifest = read_manifest(settings.state_dir / "manifest.jsonl")
    return [e for e in manifest if e["kind"] == "class_bound"]


async def a_normal_call_first(sim: Simulator, settings: Settings) -> None:
    """An ordinary archived call: the destination's marker, the first segment."""
    report = await archive_calls(settings, [sim.add_call(recordings=1, size=3000).sid])
    assert not report.failed


async def jobs(settings: Settings, now: datetime) -> dict[str, Any]:
    async with open_retention(settings) as archive:
        planned = await plan(archive, days=30, now=now)
        purged = await purge(archive, dry_run=True, now=now)
        audited = await audit(archive, now=now)
    found = {
        "plan": planned.as_dict(),
        "purge": purged.as_dict(),
        "audit": audited.as_dict(),
    }
    for r in (planned, purged, audited):
        r.close()
    return found


def actions(report: dict[str, Any], key: str) -> list[str]:
    return [r["action"] for r in report["objects"] if r["key"] == key]


async def test_an_unbound_rescued_object_is_kept_and_reported_until_enrichment_binds_it(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    settings = settings_with(sim, server, tmp_path, lock_bucket, rules())
    await a_normal_call_first(sim, settings)
    call = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    recording, v1_json = await rescue_by_hand(settings, call)

    # Before enrichment: no class, no lock. The jobs keep the objects, whenever they run (here
    # a year on, when the default class's 30 days are long over), and name them.
    later = datetime.now(UTC) + timedelta(days=365)
    found = await jobs(settings, later)
    for key in (recording, v1_json):
        assert actions(found["plan"], key) == ["class_not_bound_yet"]
        assert actions(found["purge"], key) == ["kept_class_not_bound_yet"]
    assert found["plan"]["unbound_rescued"]["objects"] == 2
    assert found["plan"]["unbound_rescued"]["oldest"] is not None
    assert not any(r["action"] == "would_delete" for r in found["purge"]["objects"])
    # A year after the rescue the window is past the audit's grace: a finding.
    problems = {(f["problem"], f["key"]) for f in found["audit"]["findings"]}
    assert ("class_not_bound_yet", recording) in problems
    # Today, within the grace, it is counted, not a finding.
    today = await jobs(settings, datetime.now(UTC))
    assert today["audit"]["ok"], today["audit"]["findings"]
    assert today["audit"]["pending"] == {"class_not_bound_yet": 2}
    # What an operator sees.
    env = {
        **exotel_env(sim, server.base_url, f"s3://{lock_bucket}/{PREFIX}", tmp_path / "state"),
        "ARCHIVER_CONFIG": str(tmp_path / "archiver.toml"),
    }
    planned = await asyncio.to_thread(CliRunner().invoke, main, ["retention", "plan"], env=env)
    assert planned.exit_code == 0, planned.output
    assert "rescued, class not bound yet: 2 object(s), unlocked since 20" in planned.output
    assert [line.split()[:4] for line in planned.output.splitlines() if recording in line] == [
        ["class_not_bound_yet", call.sid, recording, "-"]
    ]
    audited = await asyncio.to_thread(CliRunner().invoke, main, ["retention", "audit"], env=env)
    assert audited.exit_code == 0, audited.output
    assert "not findings yet: 2 object(s) of rescued calls" in audited.output

    details = await asyncio.to_thread(v3_details, sim, server, call)
    before, after = await enrich_by_hand(settings, details)
    assert [r.retention_class for r in before] == [None, None]
    assert [(r.retention_class, r.lock_mode) for r in after] == [("orders", "COMPLIANCE")] * 2

    expected = until(call, "3y")
    for key in (recording, v1_json):
        stored = retention(seaweed, lock_bucket, key)
        assert stored["Mode"] == "COMPLIANCE"
        assert abs(stored["RetainUntilDate"] - expected) < timedelta(seconds=1)
    events = {e["key"]: e for e in bindings(settings)}
    assert set(events) == {recording, v1_json}
    event = events[recording]
    assert event["retention_class"] == "orders"
    assert event["lock_mode"] == "COMPLIANCE"
    assert event["retain_until"] == expected.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert event["rescued_at"] == before[0].archived_at
    assert event["bound_at"] >= event["rescued_at"]
    # In the chain, sealed: the object entries were not rewritten, verify finds all whole.
    report = await run_verify(settings)
    assert report.ok, report.as_dict()

    # After: bound like any object (the jobs read the binding), the window closed.
    after_jobs = await jobs(settings, datetime.now(UTC))
    for key in (recording, v1_json):
        assert "class_not_bound_yet" not in actions(after_jobs["plan"], key)
        [row] = [r for r in after_jobs["plan"]["objects"] if r["key"] == key] or [None]
        assert row is None  # nothing to do: locked as its class says
    assert after_jobs["plan"]["unbound_rescued"]["objects"] == 0
    assert after_jobs["audit"]["ok"], after_jobs["audit"]["findings"]
    assert after_jobs["audit"]["pending"] == {}


async def test_binding_never_shortens_a_longer_lock(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    settings = settings_with(sim, server, tmp_path, lock_bucket, rules())
    await a_normal_call_first(sim, settings)
    call = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    recording, v1_json = await rescue_by_hand(settings, call)
    # Someone locked the recording for longer than its class (5 years, COMPLIANCE), the v1
    # item GOVERNANCE for longer (4 years) before enrichment.
    longer = datetime.now(UTC).replace(microsecond=0) + timedelta(days=5 * 365)
    gov = datetime.now(UTC).replace(microsecond=0) + timedelta(days=4 * 365)
    client = seaweed.client()
    client.put_object_retention(
        Bucket=lock_bucket,
        Key=f"{PREFIX}/{recording}",
        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": longer},
    )
    client.put_object_retention(
        Bucket=lock_bucket,
        Key=f"{PREFIX}/{v1_json}",
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": gov},
    )
    details = await asyncio.to_thread(v3_details, sim, server, call)
    _, after = await enrich_by_hand(settings, details)

    stored = retention(seaweed, lock_bucket, recording)
    assert (stored["Mode"], stored["RetainUntilDate"]) == ("COMPLIANCE", longer)
    # GOVERNANCE where the class says COMPLIANCE, dated later: its mode takes the bypass
    # (retention apply --strengthen-governance), its date is not shortened.
    stored = retention(seaweed, lock_bucket, v1_json)
    assert (stored["Mode"], stored["RetainUntilDate"]) == ("GOVERNANCE", gov)
    assert [(r.retention_class, r.lock_mode) for r in after] == [
        ("orders", "COMPLIANCE"),
        ("orders", "GOVERNANCE"),
    ]
    # The jobs: the recording kept beyond its class, the v1 item needing the strengthening.
    found = await jobs(settings, datetime.now(UTC))
    assert actions(found["plan"], recording) == ["kept_beyond_class"]
    assert actions(found["plan"], v1_json) == ["strengthen"]


@pytest.mark.parametrize("edit", ["shorter_period", "rule_removed"])
async def test_a_config_edited_between_rescue_and_enrichment_does_not_lower_a_bound_class(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
    edit: str,
) -> None:
    settings = settings_with(sim, server, tmp_path, lock_bucket, rules())
    await a_normal_call_first(sim, settings)
    # One call bound at rescue (its class decided from v1: here given by hand), one bound at its
    # first enrichment; then the config is edited, and both are enriched (again).
    at_rescue = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    lock = Lock("COMPLIANCE", until(at_rescue, "3y"))
    rescued_keys = await rescue_by_hand(settings, at_rescue, bound_at_rescue=lock)
    first = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    first_keys = await rescue_by_hand(settings, first)
    await enrich_by_hand(settings, await asyncio.to_thread(v3_details, sim, server, first))
    assert len(bindings(settings)) == 2

    edited = rules("30d") if edit == "shorter_period" else rules("3y", orders_rule=False)
    settings = settings_with(sim, server, tmp_path, lock_bucket, edited)
    for call in (at_rescue, first):
        details = await asyncio.to_thread(v3_details, sim, server, call)
        _, after = await enrich_by_hand(settings, details)
        assert [(r.retention_class, r.lock_mode) for r in after] == [("orders", "COMPLIANCE")] * 2
        assert [r.retain_until for r in after] == [
            until(call, "3y").astimezone(UTC).isoformat().replace("+00:00", "Z")
        ] * 2
    assert len(bindings(settings)) == 2  # nothing bound twice
    for call, keys in ((at_rescue, rescued_keys), (first, first_keys)):
        for key in keys:
            stored = retention(seaweed, lock_bucket, key)
            assert stored["Mode"] == "COMPLIANCE"
            assert abs(stored["RetainUntilDate"] - until(call, "3y")) < timedelta(seconds=1)
    # The jobs under the edited config: kept to the bound date, nothing to purge, no finding.
    found = await jobs(settings, datetime.now(UTC) + timedelta(days=60))
    for key in first_keys + rescued_keys:
        assert "would_delete" not in actions(found["purge"], key)
        if edit == "shorter_period":
            assert "bound_beyond_class" in actions(found["plan"], key)
    assert (await run_verify(settings)).ok


# --- end to end: a real backfill through the rescue lane -----------------------------------------


def lane_env(
    sim: Simulator, server: SimulatorServer, bucket: str, tmp_path: Path, config: str, **extra: str
) -> dict[str, str]:
    path = tmp_path / "archiver.toml"
    path.write_text(config)
    return {
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state"),
        "ARCHIVER_CONFIG": str(path),
        "ARCHIVER_RESCUE": "on",
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
        "EXOTEL_RATE_LIMIT": "6000",
        **extra,
    }


def lane_calls(sim: Simulator) -> tuple[str, list[SimCall], list[SimCall]]:
    day = (datetime.now(IST) - timedelta(days=3)).date()
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    orders = [
        sim.add_call(created=noon + timedelta(minutes=n), size=3000, app_id=ORDERS_APP)
        for n in range(3)
    ]
    general = [sim.add_call(created=noon + timedelta(minutes=10 + n), size=3000) for n in range(3)]
    return str(day), orders, general


def lane_objects(settings: Settings) -> list[dict[str, Any]]:
    manifest = read_manifest(settings.state_dir / "manifest.jsonl")
    return [e for e in manifest if e["kind"] not in ("class_bound",) and "index" in e]


@pytest.mark.parametrize(
    ("enrich", "rescued"), [("background", True), ("never", False)], ids=["enriched", "never"]
)
async def test_a_backfill_whose_rules_need_v3_binds_the_rescued_objects_at_enrichment(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
    enrich: str,
    rescued: bool,
) -> None:
    day, orders, general = lane_calls(sim)
    env = lane_env(sim, server, lock_bucket, tmp_path, rules(), ARCHIVER_ENRICH=enrich)
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["backfill", "--since", day, "--until", day], env=env
    )
    assert result.exit_code == 0, result.output
    settings = settings_with(sim, server, tmp_path, lock_bucket, rules())

    events = {e["key"]: e for e in bindings(settings)}
    for call, cls, period, mode in [(c, "orders", "3y", "COMPLIANCE") for c in orders] + [
        (c, "general", "30d", "GOVERNANCE") for c in general
    ]:
        rescued_keys = [f"{folder(call)}/recording-1.mp3", f"{folder(call)}/call-v1.json"]
        for key in (*rescued_keys, f"{folder(call)}/call.json"):
            if key.endswith("call-v1.json") and not rescued:
                continue  # with enrich = never the call went the v3 way: no v1 item
            stored = retention(seaweed, lock_bucket, key)
            assert stored["Mode"] == mode, key
            assert abs(stored["RetainUntilDate"] - until(call, period)) < timedelta(seconds=1)
        for key in rescued_keys:
            if rescued:  # stored unbound by the rescue, bound at enrichment
                assert events[key]["retention_class"] == cls
                assert events[key]["lock_mode"] == mode
            else:
                assert key not in events
    # Every object has its class, in its entry or its binding; no window left.
    for e in lane_objects(settings):
        assert e.get("retention_class") or e["key"] in events, e["key"]
    found = await jobs(settings, datetime.now(UTC))
    assert found["plan"]["unbound_rescued"] == {"objects": 0, "oldest": None}
    assert found["audit"]["ok"], found["audit"]["findings"]
    assert (await run_verify(settings)).ok


async def test_a_backfill_whose_rules_v1_decides_binds_and_locks_at_rescue(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    day, orders, general = lane_calls(sim)
    config = rules().replace(f'app_id = "{ORDERS_APP}"', 'direction = "inbound"')
    for call in orders:
        call.direction = "inbound"
    env = lane_env(sim, server, lock_bucket, tmp_path, config)
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["backfill", "--since", day, "--until", day], env=env
    )
    assert result.exit_code == 0, result.output
    settings = settings_with(sim, server, tmp_path, lock_bucket, config)
    assert bindings(settings) == []  # nothing waited for enrichment
    classes = {e["key"]: e["retention_class"] for e in lane_objects(settings)}
    for call in orders:
        assert classes[f"{folder(call)}/recording-1.mp3"] == "orders"
        assert classes[f"{folder(call)}/call-v1.json"] == "orders"
        assert retention(seaweed, lock_bucket, f"{folder(call)}/recording-1.mp3")["Mode"] == (
            "COMPLIANCE"
        )
    for call in general:
        assert classes[f"{folder(call)}/recording-1.mp3"] == "general"
