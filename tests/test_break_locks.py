"""Adversarial review of the GOVERNANCE bypass, lock adoption and bounded retention periods
(the change since 187df02), against SeaweedFS and the Exotel simulator over real HTTP.

Two parts:

* ``test_was_*``: bugs found. Each failed on the code as reviewed (commit 7f2fb3a), asserting on
  what the store holds (``head_object``) and what the manifest says; all are fixed.
* ``test_holds_*``: attacks that held up, kept as regression tests.

Where the tests need to see (or shape) S3 traffic they go through ``tests.s3proxy``'s
``FaultyS3Proxy``; nothing of boto3, aiohttp or the storage layer is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from archiver.archive import archive_calls
from archiver.cli import main
from archiver.config import Settings, load_settings
from archiver.errors import ConfigError
from archiver.exotel.models import IST
from archiver.manifest import read_manifest
from archiver.retention.archive import open_retention
from archiver.retention.jobs import purge
from archiver.retention.policy import parse_period
from archiver.simulator import SimCall, Simulator, SimulatorServer
from tests.s3proxy import FaultyS3Proxy
from tests.support import exotel_env

PREFIX = "brk"
ORDERS_APP = "233516"
BYPASS = "x-amz-bypass-governance-retention"

CONFIG = """
[retention]
default = "general"

[retention.classes.general]
period = "{general}"
lock = "{general_lock}"
at_end = "delete"

[retention.classes.orders]
period = "3y"
lock = "compliance"
at_end = "keep"

[[retention.rules]]
class = "orders"
app_id = "{app}"
"""


def config_text(general: str = "30d", general_lock: str = "governance") -> str:
    return CONFIG.format(general=general, general_lock=general_lock, app=ORDERS_APP)


def env_for(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, bucket: str, config: Path
) -> dict[str, str]:
    env = exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", tmp_path / "state")
    return {**env, "ARCHIVER_CONFIG": str(config), "ARCHIVER_ATTEMPTS": "2"}


def settings_of(env: dict[str, str]) -> Settings:
    return load_settings(env=env, config_file=Path(env["ARCHIVER_CONFIG"]))


async def cli(env: dict[str, str], *args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


def head(seaweed: Any, bucket: str, key: str, version: str | None = None) -> dict[str, Any]:
    extra = {"VersionId": version} if version else {}
    return dict(seaweed.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{key}", **extra))


def entries(settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    found = read_manifest(settings.state_dir / "manifest.jsonl")
    return [e for e in found if kind is None or e["kind"] == kind]


def entry(settings: Settings, key: str) -> dict[str, Any]:
    [found] = [e for e in entries(settings) if e["key"] == key and "sha256" in e and "at" not in e]
    return found


def recording_key(call: SimCall) -> str:
    return f"{call.created.astimezone(IST):%Y/%m/%d}/{call.sid}/recording-1.mp3"


def snapshot_key(call: SimCall) -> str:
    return recording_key(call).rsplit("/", 1)[0] + "/call.json"


def class_until(call: SimCall, period: str) -> datetime:
    return parse_period(period, "").after(call.created.replace(microsecond=0))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def put_copy(
    seaweed: Any,
    bucket: str,
    key: str,
    body: bytes,
    lock: tuple[str, datetime] | None = None,
    *,
    hold: bool = False,
) -> str:
    """``body`` at ``key``, put by someone else (an administrator, straight to SeaweedFS)."""
    extra: dict[str, Any] = {}
    if lock is not None:
        extra = {"ObjectLockMode": lock[0], "ObjectLockRetainUntilDate": lock[1]}
    if hold:
        extra["ObjectLockLegalHoldStatus"] = "ON"
    answer = seaweed.client().put_object(
        Bucket=bucket,
        Key=f"{PREFIX}/{key}",
        Body=body,
        ContentType="audio/mpeg",
        ChecksumAlgorithm="SHA256",
        **extra,
    )
    return str(answer["VersionId"])


def close(a: datetime, b: datetime) -> bool:
    return abs(a - b) < timedelta(seconds=1)


# ==============================================================================================
# BUGS found: each of these failed on the code as reviewed
# ==============================================================================================


async def test_was_apply_without_the_opt_in_lets_the_governance_lock_lapse_at_its_old_date(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    """The class is lengthened (30d -> 3y) and made COMPLIANCE. Without --strengthen-governance
    ``apply`` reports the object as failed (right) but also leaves its GOVERNANCE date at 30
    days, though extending a GOVERNANCE date needs no bypass (docs/storage.md's table). The
    daily unit runs apply without the flag: after 30 days the store protects nothing, while
    the rules say 3 years (compliance.md: "lengthen the period: apply extends their stored
    lock to the new date")."""
    config = tmp_path / "archiver.toml"
    config.write_text(config_text("30d", "governance"))
    env = env_for(sim, server, tmp_path, lock_bucket, config)
    call = sim.add_call(recordings=1, size=3000)
    await archive_calls(settings_of(env), [call.sid])
    key = recording_key(call)
    assert head(seaweed, lock_bucket, key)["ObjectLockMode"] == "GOVERNANCE"

    config.write_text(config_text("3y", "compliance"))
    applied = await cli({**env, **seaweed.limited_env()}, "retention", "apply")
    assert applied.exit_code == 1, applied.output  # reported, with the fix: holds
    assert "--strengthen-governance" in applied.output

    stored = head(seaweed, lock_bucket, key)
    assert stored["ObjectLockMode"] == "GOVERNANCE"  # not strengthened without the opt-in: right
    for e in entries(settings_of(env), "retention_extended"):  # anything recorded is so
        there = head(seaweed, lock_bucket, e["key"])
        assert e["lock_mode"] == there["ObjectLockMode"]
        assert close(parse_iso(e["retain_until"]), there["ObjectLockRetainUntilDate"])
    # The bug: the date S3 lets anyone with s3:PutObjectRetention extend was not extended.
    assert stored["ObjectLockRetainUntilDate"] >= class_until(call, "3y") - timedelta(seconds=1), (
        f"stored GOVERNANCE until {stored['ObjectLockRetainUntilDate']}, the class says "
        f"{class_until(call, '3y')}: apply could have extended it without the bypass"
    )


async def test_was_adoption_leaves_a_short_governance_date_where_the_class_says_compliance(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    """The same gap at adoption: an object already at its key under GOVERNANCE for 2 days,
    its class COMPLIANCE for 3 years. ``_adopt_lock`` leaves it "to retention apply" — which,
    without the opt-in, does not extend it either (above). Extending the GOVERNANCE date
    needs no bypass. (tests/test_retention_adopt.py asserts the short date is kept.)"""
    config = tmp_path / "archiver.toml"
    config.write_text(config_text())
    env = env_for(sim, server, tmp_path, lock_bucket, config)
    call = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    put_copy(
        seaweed,
        lock_bucket,
        recording_key(call),
        sim.recording_bytes(call.sid, 1),
        ("GOVERNANCE", soon),
    )
    report = await archive_calls(settings_of(env), [call.sid])
    assert [r.outcome for r in report.results] == ["archived"]
    stored = head(seaweed, lock_bucket, recording_key(call))
    assert entry(settings_of(env), recording_key(call))["lock_mode"] == stored["ObjectLockMode"]
    assert stored["ObjectLockRetainUntilDate"] >= class_until(call, "3y") - timedelta(seconds=1), (
        f"adopted GOVERNANCE until {stored['ObjectLockRetainUntilDate']}; class: 3 years"
    )


@pytest.mark.parametrize("step", ["put", "adopt"])
async def test_was_a_lock_date_that_passes_while_a_put_is_retried_stops_the_whole_run(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """A call whose class date is a few seconds ahead when its objects are put: the PUT meets
    503 SlowDown and is retried (backoff 0.5 s, 1 s, 2 s, 4 s). The retried PUT still carries
    the lock computed before the first attempt, now in the past; the store refuses it with
    400 (SeaweedFS ``InvalidRequest``, AWS ``InvalidArgument``), which the sink classifies as
    ``StoragePermanent`` — the class of errors that stops the whole run (exit 2). The other
    call of the run is never archived. The recorder checks ``until > now`` once, before the
    PUT and all its retries. ``adopt``: the same for the PutObjectRetention with which
    ``_adopt_lock`` locks an unlocked copy already at the key."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    config = tmp_path / "archiver.toml"
    config.write_text(config_text("1h", "governance"))
    env = {
        **env_for(sim, server, tmp_path, lock_bucket, config),
        "ARCHIVER_ATTEMPTS": "5",
        "ARCHIVER_CONCURRENCY": "1",
    }
    near = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(hours=1, seconds=-4))
    other = sim.add_call(recordings=1, size=3000)
    if step == "adopt":
        put_copy(seaweed, lock_bucket, recording_key(near), sim.recording_bytes(near.sid, 1))
    proxy.fail(
        lambda method, path: (
            method == "PUT"
            and near.sid in path
            and (("?retention" in path) if step == "adopt" else ("?" not in path))
        ),
        times=4,
        status=503,
        code="SlowDown",
    )
    settings = settings_of(env)
    try:
        report = await archive_calls(settings, [near.sid, other.sid])
    except Exception as exc:  # the bug: one call stops the run
        pytest.fail(f"the whole run stopped for one call: {type(exc).__name__}: {exc}")
    outcomes = {r.call_sid: r.outcome for r in report.results}
    assert outcomes[other.sid] == "archived"
    assert head(seaweed, lock_bucket, recording_key(other))["ObjectLockMode"] == "GOVERNANCE"
    assert entry(settings, recording_key(other))["lock_mode"] == "GOVERNANCE"


@pytest.mark.parametrize(
    "stored_mode, cls_app",
    [("COMPLIANCE", ORDERS_APP), ("GOVERNANCE", ORDERS_APP)],
    ids=["left-by-a-crash", "governance-where-class-says-compliance"],
)
async def test_was_adoption_trusts_a_head_without_lock_headers_as_unlocked(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stored_mode: str,
    cls_app: str,
) -> None:
    """AWS S3 returns ``x-amz-object-lock-mode``/``-retain-until-date``/``-legal-hold`` on
    HeadObject "only if the requester has the s3:GetObjectRetention permission" (and
    GetObjectLegalHold) — and the worker's IAM policy (docs/storage.md, docs/compliance.md:
    "writing locked objects") has neither. The proxy answers as AWS would for that identity.
    ``lock_status`` then reads a locked object as unlocked: an object left by a crash (locked
    COMPLIANCE in its PUT) is recorded ``lock_mode: null``; a GOVERNANCE one whose class says
    COMPLIANCE is "locked" COMPLIANCE without the bypass, refused, and the call fails in every
    run (its recording never recorded)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    proxy.strip_response_headers = ("x-amz-object-lock-",)
    config = tmp_path / "archiver.toml"
    config.write_text(config_text())
    env = env_for(sim, server, tmp_path, lock_bucket, config)
    call = sim.add_call(recordings=1, size=3000, app_id=cls_app)
    put_copy(
        seaweed,
        lock_bucket,
        recording_key(call),
        sim.recording_bytes(call.sid, 1),
        (stored_mode, class_until(call, "3y")),
    )
    settings = settings_of(env)
    report = await archive_calls(settings, [call.sid])
    result = report.results[0]
    stored = head(seaweed, lock_bucket, recording_key(call))
    assert stored["ObjectLockMode"] == stored_mode  # nothing was weakened: the store refused
    assert result.outcome == "archived", result.detail
    assert entry(settings, recording_key(call))["lock_mode"] == stored["ObjectLockMode"]


async def test_was_calendar_years_are_counted_in_utc_a_day_short_in_the_calls_own_calendar(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    """A call of 1 March 2025, 03:00 IST (its folder is 2025/03/01; Exotel and the regulator
    count in IST) kept "3y" is kept until 29 February 2028, 03:00 IST: ``Period.after`` does
    the calendar arithmetic in UTC, where the call was made on 28 February. Likewise 1 May
    03:00 IST + 1mo ends on 31 May. Three calendar years from 1 March 2025 end on 1 March 2028
    (the later of the UTC and the local reading never keeps less)."""
    start = datetime(2025, 3, 1, 3, 0, tzinfo=IST)
    config = tmp_path / "archiver.toml"
    config.write_text(config_text("3y", "governance"))
    env = env_for(sim, server, tmp_path, lock_bucket, config)
    call = sim.add_call(recordings=1, size=3000, created=start)
    settings = settings_of(env)
    report = await archive_calls(settings, [call.sid])
    assert [r.outcome for r in report.results] == ["archived"]
    key = recording_key(call)
    assert key.startswith("2025/03/01/")
    stored = head(seaweed, lock_bucket, key)
    recorded = parse_iso(entry(settings, key)["retain_until"])
    three_years = datetime(2028, 3, 1, 3, 0, tzinfo=IST)
    assert recorded >= three_years, f"retain_until {recorded} is before {three_years}"
    assert stored["ObjectLockRetainUntilDate"] >= three_years
    assert parse_period("1mo", "x").after(datetime(2024, 5, 1, 3, 0, tzinfo=IST)) >= datetime(
        2024, 6, 1, 3, 0, tzinfo=IST
    ), "1 May 03:00 IST + 1 month ended before 1 June 03:00 IST"


async def test_was_one_object_with_an_absurd_creation_time_stops_every_retention_job(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """A call Exotel dated 9995 (``parse_time`` takes any ISO time), archived before the rules
    existed. Rules are added (a 5-year class, well within the bound): ``Period.after`` raises
    ``ConfigError`` for that one object, and ``plan``, ``purge`` and ``audit`` stop with exit 2
    and a message that blames the period ("retention periods are at most 1000 years") instead
    of the object. The purge that is due for another call never runs."""
    dest = tmp_path / "dest"
    env = {**exotel_env(sim, server.base_url, str(dest), tmp_path / "state"), "ARCHIVER_CONFIG": ""}
    odd = sim.add_call(recordings=1, size=3000, created=datetime(9995, 6, 1, 10, 0, tzinfo=IST))
    due = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=6 * 366))
    report = await archive_calls(load_settings(env=env), [odd.sid, due.sid])
    assert [r.outcome for r in report.results] == ["archived", "archived"]
    config = tmp_path / "archiver.toml"
    config.write_text(config_text("5y", "none"))
    env["ARCHIVER_CONFIG"] = str(config)
    planned = await cli(env, "retention", "plan")
    purged = await cli(env, "retention", "purge")
    audited = await cli(env, "retention", "audit")
    assert "Traceback" not in planned.output + purged.output + audited.output
    assert (dest / recording_key(due)).exists() is False, (
        f"purge exit {purged.exit_code}: {purged.output.strip()[-300:]}"
    )
    assert planned.exit_code in (0, 1) and audited.exit_code in (0, 1), planned.output


@pytest.mark.parametrize("value", ["5years", "18months", "2weeks", "90days", "12hours", "45sec"])
def test_was_the_long_unit_names_the_period_pattern_lists_are_refused(value: str) -> None:
    """``_PERIOD`` lists ``years?|months?|weeks?|days?|hours?|sec``, but each alternative comes
    after its one-letter prefix (``y``, ``mo``, ``w``, ``d``, ``h``, ``s``), which matches first:
    ``5years`` is read as ``5y`` + ``ears`` and refused. Low severity: refused with a clear
    message (exit 2), never a wrong date; the docs list only the short forms."""
    parse_period(value, "x")


# ==============================================================================================
# HELD UP: attacks that did not break it
# ==============================================================================================


async def test_holds_only_the_opted_in_strengthening_ever_carries_the_bypass_header(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every command, through a proxy that logs each request's headers, with administrator
    credentials (SeaweedFS would obey a wrongly sent header): archive, hold, release, purge
    (dry and real), apply without the opt-in (flag absent, env var 0/false/no), audit, verify,
    apply opted in with credentials that lack the permission. None sends the header. Then
    apply opted in: the header goes on PutObjectRetention of exactly the GOVERNANCE objects
    whose class became COMPLIANCE, the store then holds what the manifest recorded, and
    purge with the rules' clock moved far ahead still sends no bypass and deletes nothing
    the store retains."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    config = tmp_path / "archiver.toml"
    config.write_text(config_text("30d", "governance"))
    env = env_for(sim, server, tmp_path, lock_bucket, config)
    chat = sim.add_call(recordings=1, size=3000)
    order = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    old = sim.add_call(recordings=1, size=3000, created=sim.now() - timedelta(days=40))
    archived = await cli(env, "archive", chat.sid, order.sid, old.sid)
    assert archived.exit_code == 0, archived.output
    assert (await cli(env, "retention", "hold", order.sid, "--reason", "dispute")).exit_code == 0
    assert (await cli(env, "retention", "release", order.sid, "--reason", "over")).exit_code == 0
    assert (await cli(env, "retention", "purge", "--dry-run")).exit_code == 0
    purged = await cli(env, "retention", "purge")
    assert purged.exit_code == 0 and "deleted 2" in purged.output, purged.output
    config.write_text(config_text("1y", "compliance"))
    no_opt_in: list[dict[str, str]] = [{}]
    no_opt_in += [{"ARCHIVER_STRENGTHEN_GOVERNANCE": v} for v in ("0", "false", "no")]
    for extra in no_opt_in:
        refused = await cli({**env, **extra}, "retention", "apply")
        assert refused.exit_code == 1, (extra, refused.output)
        assert "--strengthen-governance" in refused.output
    bad = await cli({**env, "ARCHIVER_STRENGTHEN_GOVERNANCE": "maybe"}, "retention", "apply")
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert (await cli(env, "retention", "audit")).exit_code == 1  # weaker_lock, honestly
    assert (await cli(env, "verify")).exit_code == 0
    assert not [h for h in proxy.header_log if BYPASS in h], "a bypass header before the opt-in"
    chat_keys = {recording_key(chat), snapshot_key(chat)}
    for key in chat_keys:
        assert head(seaweed, lock_bucket, key)["ObjectLockMode"] == "GOVERNANCE"

    # Opted in, credentials without the permission: asked, refused, reported, nothing recorded.
    before = len(proxy.log)
    limited_env = {**env, **seaweed.limited_env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    limited = await cli(limited_env, "retention", "apply", "--strengthen-governance")
    assert limited.exit_code == 1 and "s3:BypassGovernanceRetention" in limited.output
    # Without the strengthening, apply still extended the GOVERNANCE dates (no bypass needed).
    extended = entries(settings_of(env), "retention_extended")
    assert {e["key"] for e in extended} == chat_keys
    assert {(e["lock_mode"], e["previous_lock_mode"]) for e in extended} == {
        ("GOVERNANCE", "GOVERNANCE")
    }
    for key in chat_keys:
        assert head(seaweed, lock_bucket, key)["ObjectLockMode"] == "GOVERNANCE"
    sent = [(proxy.log[i], h) for i, h in enumerate(proxy.header_log) if i >= before]
    assert {m for (m, p), h in sent if BYPASS in h} == {"PUT"}

    # Opted in with the permission.
    before = len(proxy.log)
    done = await cli(env, "retention", "apply", "--strengthen-governance")
    assert done.exit_code == 0, done.output
    with_header = [
        (m, p)
        for i, ((m, p), h) in enumerate(zip(proxy.log, proxy.header_log, strict=True))
        if i >= before and BYPASS in h
    ]
    assert {m for m, _ in with_header} == {"PUT"}, with_header
    assert all("?retention" in p for _, p in with_header), with_header
    assert {p.split("?")[0].split(f"/{PREFIX}/", 1)[1] for _, p in with_header} == chat_keys
    settings = settings_of(env)
    for key in chat_keys:
        stored = head(seaweed, lock_bucket, key)
        assert stored["ObjectLockMode"] == "COMPLIANCE"
        assert stored["ObjectLockRetainUntilDate"] >= class_until(chat, "1y") - timedelta(seconds=1)
        *_, change = [e for e in entries(settings, "retention_extended") if e["key"] == key]
        assert change["lock_mode"] == "COMPLIANCE" and change["previous_lock_mode"] == "GOVERNANCE"
        assert close(parse_iso(change["retain_until"]), stored["ObjectLockRetainUntilDate"])
    assert (await cli(env, "retention", "audit")).exit_code == 0

    # Purge with the rules' clock 5 years ahead: the store's date is the store's; no bypass.
    config.write_text(
        config_text("1y", "compliance").replace('at_end = "keep"', 'at_end = "delete"')
    )
    before = len(proxy.log)
    async with open_retention(settings_of(env)) as archive:
        result = await purge(archive, dry_run=False, now=datetime.now(UTC) + timedelta(days=1900))
    assert len(result.failures) == 0
    assert not [m for m, _ in proxy.log[before:] if m == "DELETE"]
    assert not [h for h in proxy.header_log[before:] if BYPASS in h]
    for call in (chat, order):
        assert head(seaweed, lock_bucket, recording_key(call))["ObjectLockMode"] == "COMPLIANCE"
    result.close()


async def test_holds_adoption_records_what_the_store_holds_and_never_weakens(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    """Objects already at their keys, in one run: unlocked under a legal hold; COMPLIANCE
    longer than the class; COMPLIANCE shorter than the class; a key with two versions (an
    older locked one, the current unlocked); a call.json with other bytes locked GOVERNANCE
    where the class says COMPLIANCE. Every call archived, every recorded lock_mode and
    version the store's, nothing shortened or weakened, the held object still held."""
    config = tmp_path / "archiver.toml"
    config.write_text(config_text())
    env = env_for(sim, server, tmp_path, lock_bucket, config)
    now = datetime.now(UTC).replace(microsecond=0)
    held, longer, shorter, versioned = (sim.add_call(recordings=1, size=3000) for _ in range(4))
    order = sim.add_call(recordings=1, size=3000, app_id=ORDERS_APP)
    rec = {c.sid: sim.recording_bytes(c.sid, 1) for c in (held, longer, shorter, versioned)}
    put_copy(seaweed, lock_bucket, recording_key(held), rec[held.sid], hold=True)
    put_copy(
        seaweed,
        lock_bucket,
        recording_key(longer),
        rec[longer.sid],
        ("COMPLIANCE", now + timedelta(days=90)),
    )
    put_copy(
        seaweed,
        lock_bucket,
        recording_key(shorter),
        rec[shorter.sid],
        ("COMPLIANCE", now + timedelta(days=1)),
    )
    old_version = put_copy(
        seaweed,
        lock_bucket,
        recording_key(versioned),
        rec[versioned.sid],
        ("GOVERNANCE", now + timedelta(days=60)),
    )
    put_copy(seaweed, lock_bucket, recording_key(versioned), rec[versioned.sid])  # current
    put_copy(
        seaweed,
        lock_bucket,
        snapshot_key(order),
        b'{"not": "exotel"}',
        ("GOVERNANCE", now + timedelta(days=5)),
    )
    settings = settings_of(env)
    report = await archive_calls(
        settings, [c.sid for c in (held, longer, shorter, versioned, order)]
    )
    assert [r.outcome for r in report.results] == ["archived"] * 5, [
        r.detail for r in report.results
    ]
    general = {c.sid: class_until(c, "30d") for c in (held, longer, shorter, versioned)}
    expect = {
        recording_key(held): ("GOVERNANCE", general[held.sid]),
        recording_key(longer): ("COMPLIANCE", now + timedelta(days=90)),
        recording_key(shorter): ("COMPLIANCE", general[shorter.sid]),
        recording_key(versioned): ("GOVERNANCE", general[versioned.sid]),
        # GOVERNANCE where the class says COMPLIANCE: the mode stays, the date is extended
        snapshot_key(order): ("GOVERNANCE", class_until(order, "3y")),
    }
    for key, (mode, until) in expect.items():
        stored = head(seaweed, lock_bucket, key)
        assert (stored["ObjectLockMode"], key) == (mode, key)
        assert close(stored["ObjectLockRetainUntilDate"], until), (key, stored)
        recorded = entry(settings, key)
        assert recorded["lock_mode"] == stored["ObjectLockMode"], key
        assert recorded["version_id"] == stored["VersionId"], key
    assert head(seaweed, lock_bucket, recording_key(held))["ObjectLockLegalHoldStatus"] == "ON"
    older = head(seaweed, lock_bucket, recording_key(versioned), old_version)
    assert older["ObjectLockMode"] == "GOVERNANCE"
    assert close(older["ObjectLockRetainUntilDate"], now + timedelta(days=60))
    # Archived again: nothing is adopted twice, nothing changes.
    again = await archive_calls(settings, [held.sid, order.sid])
    assert {r.outcome for r in again.results} <= {"archived", "skipped", "already_archived"}


BAD_PERIODS = [
    "1.5",
    "true",
    '"90"',
    "[5]",
    '"8000y"',
    '"-5d"',
    '""',
    "1979-05-27",
    "{ y = 5 }",
    '"5 parsecs"',
    str(2**63 - 1),
    '"0x10d"',
]
COMMANDS = [
    ["archive", "CA1"],
    ["backfill", "--since", "2026-11-01", "--until", "2026-11-02"],
    ["run"],
    ["retention", "plan"],
    ["retention", "apply"],
    ["retention", "apply", "--strengthen-governance"],
    ["retention", "hold", "CA1", "--reason", "x"],
    ["retention", "release", "CA1", "--reason", "x"],
    ["retention", "purge", "--dry-run"],
    ["retention", "audit"],
    ["verify"],
    ["repair", "--dry-run"],
    ["reconcile", "--since", "2026-11-01", "--until", "2026-11-02"],
    ["manifest", "export", "--out", "OUT"],
]


def test_holds_a_bad_period_is_exit_2_with_file_and_class_from_every_command(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    config = tmp_path / "archiver.toml"
    env = {
        **exotel_env(sim, server.base_url, str(tmp_path / "dest"), tmp_path / "state"),
        "ARCHIVER_CONFIG": str(config),
    }
    runner = CliRunner()
    for value in BAD_PERIODS:
        config.write_text(config_text().replace('period = "30d"', f"period = {value}"))
        for command in COMMANDS:
            args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
            result = runner.invoke(main, args, env=env)
            assert result.exit_code == 2, (value, command, result.output)
            assert isinstance(result.exception, SystemExit), (value, command, result.exception)
            assert "Traceback" not in result.output
            assert f"{config}: [retention.classes.general]" in result.output, (value, command)
            assert "period" in result.output and len(result.output) < 1500


@pytest.mark.parametrize(
    "value, months, exact",
    [
        ("  5Y ", 60, timedelta(0)),
        ("1Y 6MO", 18, timedelta(0)),
        ("5\td", 0, timedelta(days=5)),
        ("0001y", 12, timedelta(0)),
        ("1y1y", 24, timedelta(0)),
        ("2W3D4H5MIN6S", 0, timedelta(weeks=2, days=3, hours=4, minutes=5, seconds=6)),
        ("999y11mo", 11999, timedelta(0)),
        ("31556952000s", 0, timedelta(seconds=31556952000)),
        (365242, 0, timedelta(days=365242)),
        (0, 0, timedelta(0)),
    ],
)
def test_holds_period_variants_parse_exactly(value: object, months: int, exact: timedelta) -> None:
    period = parse_period(value, "x")
    assert (period.months, period.exact) == (months, exact)


@pytest.mark.parametrize(
    "value", ["1000y1s", "83333y4mo", "12000mo1s", "365243d", "9" * 21 + "s", 2**63 - 1]
)
def test_holds_just_over_the_bound_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="1000 years"):
        parse_period(value, "x")


def test_holds_month_ends_and_leap_days() -> None:
    at = datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC)
    assert parse_period("1mo", "x").after(at) == datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    assert parse_period("1mo1d", "x").after(at) == datetime(2024, 3, 1, 23, 59, 59, tzinfo=UTC)
    assert parse_period("25mo", "x").after(at) == datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC)
    leap = datetime(2024, 2, 29, 12, tzinfo=UTC)
    assert parse_period("400y", "x").after(leap) == datetime(2424, 2, 29, 12, tzinfo=UTC)
    assert parse_period("100y", "x").after(leap) == datetime(2124, 2, 29, 12, tzinfo=UTC)
    assert parse_period("76y", "x").after(leap) == datetime(2100, 2, 28, 12, tzinfo=UTC)  # no 29th
    assert parse_period("1000y", "x").after(leap) == datetime(3024, 2, 29, 12, tzinfo=UTC)


async def test_holds_the_longest_period_and_a_zero_period_are_stored_as_recorded(
    sim: Simulator,
    server: SimulatorServer,
    s3_env: None,
    seaweed: Any,
    lock_bucket: str,
    tmp_path: Path,
) -> None:
    """1000 years from a call made now: the store takes a year-3026 date, the manifest says
    the same. A zero period with a lock: the date has passed, written unlocked, recorded so."""
    config = tmp_path / "archiver.toml"
    config.write_text(config_text("1000y", "governance"))
    env = env_for(sim, server, tmp_path, lock_bucket, config)
    call = sim.add_call(recordings=1, size=3000)
    settings = settings_of(env)
    await archive_calls(settings, [call.sid])
    stored = head(seaweed, lock_bucket, recording_key(call))
    recorded = entry(settings, recording_key(call))
    assert stored["ObjectLockMode"] == recorded["lock_mode"] == "GOVERNANCE"
    assert stored["ObjectLockRetainUntilDate"].year == call.created.year + 1000
    assert close(parse_iso(recorded["retain_until"]), stored["ObjectLockRetainUntilDate"])

    config.write_text(config_text("0d", "governance"))
    zero = sim.add_call(recordings=1, size=3000)
    await archive_calls(settings_of(env), [zero.sid])
    stored = head(seaweed, lock_bucket, recording_key(zero))
    assert "ObjectLockMode" not in stored
    assert entry(settings_of(env), recording_key(zero))["lock_mode"] is None


async def test_holds_a_refused_strengthening_by_the_sink_sends_nothing_weaker(
    s3_env: None, seaweed: Any, lock_bucket: str
) -> None:
    """The sink with ``bypass_governance=True`` asked for GOVERNANCE->COMPLIANCE of a version
    that is no longer the one the caller saw (COMPLIANCE since, with a later date): no header,
    refused, unchanged."""
    from archiver.errors import StorageLocked
    from archiver.retry import RetryPolicy
    from archiver.sinks import Lock, open_sink

    sink = open_sink(f"s3://{lock_bucket}/{PREFIX}", retry=RetryPolicy(attempts=1))
    try:
        data = b"ID3 x"
        now = datetime.now(UTC).replace(microsecond=0)
        put = await sink.put(
            "a/recording-1.mp3",
            io.BytesIO(data),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type="audio/mpeg",
            lock=Lock("COMPLIANCE", now + timedelta(days=20)),
        )
        with pytest.raises(StorageLocked):
            await sink.set_retention(
                "a/recording-1.mp3",
                Lock("COMPLIANCE", now + timedelta(days=10)),
                version_id=put.version_id,
                bypass_governance=True,
            )
        stored = head(seaweed, lock_bucket, "a/recording-1.mp3", put.version_id)
        assert stored["ObjectLockMode"] == "COMPLIANCE"
        assert close(stored["ObjectLockRetainUntilDate"], now + timedelta(days=20))
    finally:
        await sink.close()
