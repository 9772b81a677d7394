"""The command line as a user meets it: help, exit codes, clean errors, the demo."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from archiver.cli import main
from archiver.manifest import read_manifest
from archiver.simulator import Simulator, SimulatorServer
from tests.support import exotel_env


def env_for(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, **extra: str
) -> dict[str, str]:
    env = exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state")
    return {**env, **extra}


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["archive"],
        ["demo"],
        ["simulate"],
        ["verify"],
        ["reconcile"],
        ["export-bag"],
        ["manifest"],
        ["manifest", "rebuild"],
        ["manifest", "export"],
    ],
)
def test_help_everywhere(command: list[str]) -> None:
    result = invoke([*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_archive_help_names_every_environment_variable_but_no_secret_flag() -> None:
    out = invoke(["archive", "--help"]).output
    for name in (
        "EXOTEL_ACCOUNT_SID",
        "EXOTEL_REGION",
        "EXOTEL_API_URL",
        "ARCHIVER_DESTINATION",
        "ARCHIVER_STATE_DIR",
        "EXOTEL_API_KEY",
        "EXOTEL_API_TOKEN",
    ):
        assert name in out
    assert "--api-token" not in out and "--api-key" not in out


def test_archive_success_writes_a_report_and_exits_0(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    calls = [sim.add_call(recordings=2), sim.add_call(state="active")]
    report_path = tmp_path / "report.json"
    result = invoke(
        ["archive", *(c.sid for c in calls), "--report", str(report_path)],
        env_for(sim, server, tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert "archived: 1 calls" in result.output and "not ready (still active): 1" in result.output
    report = json.loads(report_path.read_text())
    assert report["counts"]["archived"] == 1 and report["counts"]["not_ready"] == 1
    entries = read_manifest(tmp_path / "state" / "manifest.jsonl")
    assert [e["kind"] for e in entries] == ["recording", "recording", "call_details"]
    for entry in entries:
        data = (tmp_path / "archive" / entry["key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        if entry["kind"] == "recording":
            assert data == sim.recording_bytes(calls[0].sid, entry["index"])


def test_a_failed_call_exits_1(sim: Simulator, server: SimulatorServer, tmp_path: Path) -> None:
    good = sim.add_call()
    result = invoke(
        ["archive", good.sid, "ffffffffffffffffffffffffffffffff"], env_for(sim, server, tmp_path)
    )
    assert result.exit_code == 1
    assert "FAILED" in result.output and "404" in result.output


def test_missing_credentials_exit_2_without_traceback(tmp_path: Path) -> None:
    result = invoke(
        ["archive", "abc"],
        {
            "EXOTEL_API_KEY": "",
            "EXOTEL_API_TOKEN": "",
            "EXOTEL_ACCOUNT_SID": "a",
            "ARCHIVER_DESTINATION": str(tmp_path),
            "ARCHIVER_CONFIG": "",
        },
    )
    assert result.exit_code == 2
    assert "EXOTEL_API_KEY" in result.output and "Traceback" not in result.output


def test_wrong_token_exits_2_and_never_shows_it(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    call = sim.add_call()
    result = invoke(
        ["archive", call.sid], env_for(sim, server, tmp_path, EXOTEL_API_TOKEN="s3cr3t-wrong-token")
    )
    assert result.exit_code == 2
    assert "401" in result.output and "Traceback" not in result.output
    assert "s3cr3t-wrong-token" not in result.output


@pytest.mark.parametrize("sid", ["../../etc/passwd", "a/b", "x\x00y"])
def test_hostile_call_sid_is_a_usage_error(sid: str, tmp_path: Path) -> None:
    result = invoke(["archive", sid], {"ARCHIVER_CONFIG": ""})
    assert result.exit_code == 2 and "invalid call SID" in result.output


def test_bad_setting_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["archive", "abc"], {"EXOTEL_REGION": "mars", "ARCHIVER_CONFIG": ""})
    assert result.exit_code == 2 and "singapore, mumbai" in result.output


def test_missing_bucket_exits_2_naming_it(
    sim: Simulator, server: SimulatorServer, seaweed: Any, s3_env: None, tmp_path: Path
) -> None:
    call = sim.add_call()
    env = {
        **env_for(sim, server, tmp_path),
        **seaweed.env(),
        "ARCHIVER_DESTINATION": "s3://no-such-bucket-here/x",
    }
    result = invoke(["archive", call.sid], env)
    assert result.exit_code == 2, result.output
    assert "no-such-bucket-here" in result.output and "Traceback" not in result.output


def test_demo_archives_a_day_and_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = invoke(["demo", "--dir", str(out), "--calls", "12"])
    assert first.exit_code == 0, first.output
    assert "Manifest:" in first.output and str(out / "state" / "manifest.jsonl") in first.output
    entries = read_manifest(out / "state" / "manifest.jsonl")
    assert entries, "the demo archived nothing"
    for entry in entries:
        data = (out / "recordings" / entry["key"]).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]

    second = invoke(["demo", "--dir", str(out), "--calls", "12"])
    assert second.exit_code == 0
    assert "archived: 0 calls" in second.output
    assert read_manifest(out / "state" / "manifest.jsonl") == entries


def test_progress_off_a_terminal_is_plain_periodic_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from archiver.cli._shared import Progress
    from archiver.report import ARCHIVED, CallResult

    class Stored(CallResult):
        @property
        def bytes(self) -> int:
            return 2048

    with (
        caplog.at_level("INFO", logger="archiver.progress"),
        Progress(4, "Backfilling", every=0.0) as advance,
    ):
        for n in range(4):
            advance(Stored(f"sid{n}", ARCHIVED, stored=1))
    lines = [r.getMessage() for r in caplog.records if r.name == "archiver.progress"]
    assert lines[0].startswith("Backfilling: 1/4 calls, 2.0 KiB") and "s left" in lines[0]
    assert lines[-1].startswith("Backfilling: 4/4 calls, 8.0 KiB")
