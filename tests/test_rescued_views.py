"""Issue 18: `status`, `reconcile`, `verify`, `manifest rebuild` and the reports tell a rescued
call (its recording stored from the v1 listing with `call-v1.json` beside it, its v3 details
still to come) from a complete one — on SeaweedFS, with the simulator over HTTP.

The rescued calls here are made as the rescue lane leaves them (``rescue_by_hand``): through
the destination and the ledger's own code, the recording at ``recording-1`` whose source is the
v1 URL without query, the v1 item at ``call-v1.json`` (kind ``v1_record``), no ``call.json``,
the call's outcome ``rescued``, the entries sealed into the chain."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from archiver.archive import sink_for
from archiver.config import load_settings
from archiver.exotel.models import IST
from archiver.ledger import Ledger, ObjectRecord, utc_now
from archiver.manifest import ManifestWriter
from archiver.metrics import Metrics, registry
from archiver.segments import seal
from archiver.simulator import Simulator, SimulatorServer
from tests.seaweed import SeaweedFS
from tests.support import GENERAL_30D, exotel_env, invoke, ledger_rows, status_json


def s3(
    sim: Simulator, server: SimulatorServer, seaweed: SeaweedFS, bucket: str, tmp: Path
) -> dict[str, str]:
    return {**exotel_env(sim, server.base_url, f"s3://{bucket}/calls", tmp / "state"),
            **seaweed.env()}  # fmt: skip


async def _rescue(env: dict[str, str], sim: Simulator, sid: str) -> None:
    settings = load_settings(env=env)
    call = sim.calls[sid]
    folder = settings.key_layout.folder(
        sid, call.created, direction=call.direction, account_sid=sim.account_sid
    )
    audio = sim.recording_bytes(sid, 1)
    ext = "mp3" if call.content_type == "audio/mpeg" else "wav"
    item = json.dumps({"Sid": sid, "DateCreated": call.created.isoformat()}).encode()
    source = f"{settings.exotel.api_url}/v1/Accounts/{sim.account_sid}/Calls.json"
    sink = sink_for(settings)
    ledger = Ledger(settings.state_dir / "ledger.sqlite3")
    try:
        for kind, idx, name, body, mime, fmt, src in (
            ("recording", 1, f"recording-1.{ext}", audio, call.content_type, ext,
             f"https://recordings.example/{call.tokens[0]}.{ext}"),
            ("v1_record", 0, "call-v1.json", item, "application/json", "json", source),
        ):  # fmt: skip
            key = f"{folder}/{name}"
            put = await sink.put(
                key,
                io.BytesIO(body),
                size=len(body),
                sha256=hashlib.sha256(body).hexdigest(),
                content_type=mime,
            )
            ledger.add_object(
                ObjectRecord(
                    call_sid=sid, kind=kind, idx=idx, key=key, location=put.location,
                    size=put.size, sha256=put.sha256, content_type=mime, format=fmt,
                    source=src, call_created=call.created.isoformat(), archived_at=utc_now(),
                    worker="rescue-by-hand", version_id=put.version_id,
                )
            )  # fmt: skip
        ledger.set_call(sid, "rescued", created_time=call.created.isoformat(), recordings=1)
        ManifestWriter(settings.state_dir / "manifest.jsonl").sync(ledger)
        await seal(ledger, sink)
    finally:
        ledger.close()
        await sink.close()


def rescue_by_hand(env: dict[str, str], sim: Simulator, *sids: str) -> None:
    """Leave ``sids`` rescued, as the rescue lane does (see the module docstring). The
    destination must be claimed already (a run before)."""
    for sid in sids:
        asyncio.run(_rescue(env, sim, sid))


def edit(state: Path, sql: str, *args: object) -> None:
    with closing(sqlite3.connect(state / "ledger.sqlite3")) as db:
        db.execute(sql, args)
        db.commit()


def test_status_counts_rescued_calls_apart_not_unarchived_failed_enrichment_is_attention(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    s3_env: None,
    tmp_path: Path,
) -> None:
    env = s3(sim, server, seaweed, bucket, tmp_path)
    state = tmp_path / "state"
    done = sim.add_call().sid
    assert invoke(["archive", done], env).exit_code == 0
    old = datetime.now(UTC) - timedelta(days=29)  # a day from Exotel's 30-day retention
    waiting = sim.add_call(created=old).sid
    failing = sim.add_call(created=old + timedelta(minutes=1)).sid
    rescue_by_hand(env, sim, waiting, failing)
    edit(
        state,
        "UPDATE calls SET reason = 'rate_limited', detail = 'enrichment: 429 for 10 min' "
        "WHERE call_sid = ?",
        failing,
    )
    (rescued_at,) = ledger_rows(
        state, f"SELECT MIN(archived_at) FROM objects WHERE call_sid = '{waiting}'"
    )[0]

    code, data = status_json(env)

    assert data["calls"] == {
        "archived": 1,
        "rescued": 2,
        "pending": 0,
        "not_ready": 0,
        "failed": 0,
        "no_recording": 0,
    }
    r = data["rescued"]
    assert (r["waiting"], r["oldest_waiting_since"], r["waiting_calls"]) == (
        1,
        rescued_at,
        [waiting],
    )
    assert [(f["reason"], f["count"], f["calls"]) for f in r["failures"]] == [
        ("rate_limited", 1, [failing])
    ]
    assert r["unlocked_objects"] is None  # no retention rules
    # 29 days old, but their audio is safe: not the oldest unarchived, no retention warning.
    assert data["oldest_unarchived"] is None
    assert not any("Exotel deletes" in a["problem"] for a in data["advice"])
    attention = [a for a in data["advice"] if a["level"] == "attention"]
    assert [a["command"] for a in attention] == [f"exotel-archiver archive {failing}"]
    assert "enrichment failed (rate_limited: enrichment: 429 for 10 min)" in attention[0]["problem"]
    assert code == data["exit_code"] == 1
    notes = [a for a in data["advice"] if a["level"] == "note" and "rescued" in a["problem"]]
    assert len(notes) == 1 and "waiting for enrichment" in notes[0]["problem"]
    assert rescued_at in notes[0]["problem"]

    text = invoke(["status"], env)
    assert text.exit_code == 1
    assert "calls        archived 1, rescued 2, pending 0," in text.stdout
    assert f"  rescued    1 waiting for enrichment, the earliest rescued at {rescued_at}" in (
        text.stdout
    )
    assert "  rescued    1 enrichment failed (rate_limited)" in text.stdout

    # Once the failed attempt is gone (retried, waiting again): rescued alone is exit 0.
    edit(state, "UPDATE calls SET reason = NULL, detail = NULL WHERE call_sid = ?", failing)
    code, data = status_json(env)
    assert code == 0 and data["rescued"]["waiting"] == 2 and data["rescued"]["failures"] == []
    assert sorted(data["rescued"]["waiting_calls"]) == sorted([waiting, failing])
    assert "ok: nothing needs attention" in invoke(["status"], env).stdout

    # enrich = never: a note that they stay rescued, still exit 0.
    code, data = status_json({**env, "ARCHIVER_ENRICH": "never"})
    assert code == 0 and data["rescued"]["enrich"] == "never"
    assert any("stay rescued: enrich = never" in a["problem"] for a in data["advice"])


def test_status_with_retention_rules_reports_rescued_objects_not_locked_yet(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    s3_env: None,
    tmp_path: Path,
) -> None:
    config = tmp_path / "archiver.toml"
    config.write_text(GENERAL_30D)
    env = {**s3(sim, server, seaweed, bucket, tmp_path), "ARCHIVER_CONFIG": str(config)}
    state = tmp_path / "state"
    assert invoke(["archive", sim.add_call().sid], env).exit_code == 0  # bound at archive time
    sids = [sim.add_call().sid for _ in range(2)]
    rescue_by_hand(env, sim, *sids)  # their class not decided from v1: NULL until enrichment
    (first,) = ledger_rows(
        state,
        "SELECT MIN(o.archived_at) FROM objects o JOIN calls c USING (call_sid) "
        "WHERE c.outcome = 'rescued'",
    )[0]

    code, data = status_json(env)

    assert (data["rescued"]["unlocked_objects"], data["rescued"]["oldest_unlocked_since"]) == (
        4,
        first,
    )
    window = [a for a in data["advice"] if "not under retention yet" in a["problem"]]
    assert [a["level"] for a in window] == ["note"] and code == 0
    assert first in window[0]["problem"] and "2 calls to enrich" in window[0]["fix"]
    assert "4 object(s) not locked yet" in invoke(["status"], env).stdout

    # With enrich = never nothing will bind or lock them: attention.
    code, data = status_json({**env, "ARCHIVER_ENRICH": "never"})
    window = [a for a in data["advice"] if "not under retention yet" in a["problem"]]
    assert code == 1 and [a["level"] for a in window] == ["attention"]


def _reconcile(env: dict[str, str], day: str, tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    report = tmp_path / "reconcile.json"
    html = tmp_path / "coverage.html"
    result = invoke(
        ["reconcile", "--since", day, "--until", day, "--report", str(report), "--html", str(html)],
        env,
    )
    return result.exit_code, json.loads(report.read_text()), result.output + html.read_text()


def test_reconcile_reports_a_listed_rescued_call_as_rescued_not_archived_nor_missing(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    s3_env: None,
    tmp_path: Path,
) -> None:
    env = s3(sim, server, seaweed, bucket, tmp_path)
    state = tmp_path / "state"
    day = (sim.now().astimezone(IST) - timedelta(days=3)).date()
    noon = datetime.combine(day, time(12), IST)
    done = sim.add_call(created=noon).sid
    assert invoke(["archive", done], env).exit_code == 0
    rescued = sim.add_call(created=noon + timedelta(minutes=5)).sid
    failing = sim.add_call(created=noon + timedelta(minutes=6)).sid
    rescue_by_hand(env, sim, rescued, failing)
    edit(
        state,
        "UPDATE calls SET reason = 'rate_limited', detail = 'enrichment: 429' WHERE call_sid = ?",
        failing,
    )
    on = day.isoformat()

    code, data, out = _reconcile(env, on, tmp_path)

    states = {c["call_sid"]: c for c in data["calls"]}
    assert {sid: states[sid]["state"] for sid in (done, rescued, failing)} == {
        done: "archived",
        rescued: "rescued",
        failing: "rescued",
    }
    assert data["counts"]["rescued"] == 2 and data["counts"]["archived"] == 1
    assert data["counts"]["missing"] == 0
    assert "enrichment fetches them" in states[rescued]["reason"]
    assert "enrichment has not completed: enrichment: 429" in states[failing]["reason"]
    assert data["complete"] is False and data["recordings_safe"] is True
    assert code == 1  # not complete until enriched
    assert "archived: 1, rescued: 2, erased: 0, missing: 0" in out
    assert "rescued: 2 call(s) with the recording stored from the v1 listing" in out
    assert '<td class="n" id="count-rescued">2</td>' in out
    assert "NOT COMPLETE: 2 rescued" in out

    # Enriched (as enrichment leaves it): archived, complete.
    for sid in (rescued, failing):
        assert invoke(["archive", sid], env).exit_code == 0
    assert [o for (o,) in ledger_rows(state, "SELECT DISTINCT outcome FROM calls")] == ["archived"]
    code, data, out = _reconcile(env, on, tmp_path)
    assert code == 0 and data["complete"] and data["counts"]["rescued"] == 0


def test_verify_counts_rescued_calls_apart_and_still_checks_their_objects(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    s3_env: None,
    tmp_path: Path,
) -> None:
    env = s3(sim, server, seaweed, bucket, tmp_path)
    state = tmp_path / "state"
    done = [sim.add_call().sid, sim.add_call(recordings=2).sid]
    assert invoke(["archive", *done], env).exit_code == 0
    rescued = [sim.add_call().sid for _ in range(3)]
    rescue_by_hand(env, sim, *rescued)
    report = tmp_path / "verify.json"

    result = invoke(["verify", "--report", str(report)], env)

    data = json.loads(report.read_text())
    assert result.exit_code == 0, result.output
    assert data["ok"] is True and data["chain_problems"] == []
    assert data["calls"] == {"complete": 2, "rescued": 3, "incomplete": 0}
    (objects,) = ledger_rows(state, "SELECT COUNT(*) FROM objects")[0]
    assert data["counts"]["ok"] == data["checked"] == objects == 2 + 3 + 3 * 2
    assert data["counts"]["missing"] == 0 and data["objects"] == []
    assert "calls: complete 2, rescued 3 (recording stored from the v1 listing" in result.output

    # A rescued call's recording is checked byte for byte as any other.
    (key,) = ledger_rows(
        state,
        f"SELECT key FROM objects WHERE call_sid = '{rescued[0]}' AND kind = 'recording'",
    )[0]
    seaweed.client().delete_object(Bucket=bucket, Key=f"calls/{key}")
    result = invoke(["verify", "--report", str(report)], env)
    data = json.loads(report.read_text())
    assert result.exit_code == 1 and data["counts"]["missing"] == 1
    assert [o["key"] for o in data["objects"]] == [key]
    assert data["calls"]["rescued"] == 3


def test_manifest_rebuild_restores_a_rescued_call_as_rescued(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    s3_env: None,
    tmp_path: Path,
) -> None:
    env = s3(sim, server, seaweed, bucket, tmp_path)
    done = sim.add_call().sid
    assert invoke(["archive", done], env).exit_code == 0
    rescued = sim.add_call().sid
    rescue_by_hand(env, sim, rescued)
    fresh = {**env, "ARCHIVER_STATE_DIR": str(tmp_path / "rebuilt")}

    result = invoke(["manifest", "rebuild"], fresh)

    assert result.exit_code == 0, result.output
    rows = dict(ledger_rows(tmp_path / "rebuilt", "SELECT call_sid, outcome FROM calls"))
    assert rows == {done: "archived", rescued: "rescued"}
    code, data = status_json(fresh)
    assert data["calls"]["rescued"] == 1 and data["rescued"]["waiting_calls"] == [rescued]
    assert code == 0


def test_metrics_count_rescued_as_an_outcome() -> None:
    metrics = Metrics()
    metrics.calls["rescued"] += 3
    text = generate_latest(registry(metrics)).decode()
    assert 'exotel_archiver_calls_total{outcome="rescued"} 3.0' in text


def test_end_to_end_a_real_backfill_rescues_the_views_say_rescued_then_enrichment_completes(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    bucket: str,
    s3_env: None,
    tmp_path: Path,
) -> None:
    """The lane itself (no hand-made state): a backfill with enrich = never leaves every call
    rescued; status, reconcile, verify and a rebuilt ledger all say so; a backfill that
    enriches, run on the rebuilt ledger, completes them, and the views say complete."""
    day = (datetime.now(IST) - timedelta(days=3)).date()
    noon = datetime.combine(day, time(12), IST)
    sids = [sim.add_call(created=noon + timedelta(minutes=n)).sid for n in range(3)]
    sids.append(sim.add_call(created=noon + timedelta(minutes=9), recordings=2).sid)
    env = {
        **s3(sim, server, seaweed, bucket, tmp_path),
        "ARCHIVER_RESCUE": "on",
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
        "EXOTEL_RATE_LIMIT": "6000",
    }
    never = {**env, "ARCHIVER_ENRICH": "never"}
    on = str(day)

    result = invoke(["backfill", "--since", on, "--until", on], never)

    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "state" / f"backfill-{on}-{on}.json").read_text())
    assert summary["result"]["counts"]["rescued"] == 4
    assert summary["result"]["counts"]["archived"] == 0
    code, data = status_json(never)
    assert code == 0, data["advice"]
    assert (data["calls"]["rescued"], data["calls"]["archived"]) == (4, 0)
    assert data["last_run"]["counts"]["rescued"] == 4
    assert any("stay rescued: enrich = never" in a["problem"] for a in data["advice"])
    text = invoke(["status"], never).stdout
    assert "archived 0, rescued 4," in text and "archived 0, rescued 4, already archived" in text

    code, report, out = _reconcile(never, on, tmp_path)
    assert code == 1 and report["complete"] is False and report["recordings_safe"] is True
    assert {c["call_sid"]: c["state"] for c in report["calls"]} == dict.fromkeys(sids, "rescued")
    assert all("enrich = never: it stays rescued" in c["reason"] for c in report["calls"])
    assert "rescued: 4 call(s) with the recording stored from the v1 listing" in out

    checked = tmp_path / "verify.json"
    assert invoke(["verify", "--report", str(checked)], never).exit_code == 0
    found = json.loads(checked.read_text())
    assert found["calls"] == {"complete": 0, "rescued": 4, "incomplete": 0}
    assert found["counts"]["ok"] == 8 and found["counts"]["missing"] == 0

    rebuilt = {**env, "ARCHIVER_STATE_DIR": str(tmp_path / "rebuilt")}
    assert invoke(["manifest", "rebuild"], rebuilt).exit_code == 0
    restored = dict(ledger_rows(tmp_path / "rebuilt", "SELECT call_sid, outcome FROM calls"))
    assert restored == dict.fromkeys(sids, "rescued")

    # Enrichment, on the rebuilt ledger: every call complete, the second recording found.
    result = invoke(["backfill", "--since", on, "--until", on], rebuilt)
    assert result.exit_code == 0, result.output
    restored = dict(ledger_rows(tmp_path / "rebuilt", "SELECT call_sid, outcome FROM calls"))
    assert restored == dict.fromkeys(sids, "archived")
    code, data = status_json(rebuilt)
    assert code == 0 and data["calls"]["rescued"] == 0 and data["calls"]["archived"] == 4
    assert invoke(["verify", "--report", str(checked)], rebuilt).exit_code == 0
    found = json.loads(checked.read_text())
    assert found["calls"] == {"complete": 4, "rescued": 0, "incomplete": 0}
    assert found["counts"]["ok"] == 4 * 3 + 1  # recording, call-v1.json, call.json; recording-2
    code, report, _ = _reconcile(rebuilt, on, tmp_path)
    assert code == 0 and report["complete"] and report["counts"]["archived"] == 4
