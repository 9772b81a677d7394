"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from archiver.archive import archive_calls
from archiver.config import Settings, load_settings
from archiver.simulator import Simulator


def exotel_env(sim: Simulator, base_url: str, destination: str, state: Path) -> dict[str, str]:
    """The environment that points the archiver at ``sim`` and a destination."""
    return {
        "EXOTEL_ACCOUNT_SID": sim.account_sid,
        "EXOTEL_API_KEY": sim.api_key,
        "EXOTEL_API_TOKEN": sim.api_token,
        "EXOTEL_API_URL": base_url,
        "EXOTEL_V1_API_URL": base_url,
        "ARCHIVER_DESTINATION": destination,
        "ARCHIVER_STATE_DIR": str(state),
        "ARCHIVER_CONFIG": "",
    }


async def archive_in_two_runs(
    sim: Simulator, base_url: str, destination: str, tmp_path: Path
) -> Settings:
    """Three calls (one with two recordings) archived in two runs into ``destination``: two
    manifest segments: seq 1-5 (3 recordings, 2 call.json) and seq 6-7."""
    settings = load_settings(env=exotel_env(sim, base_url, destination, tmp_path / "state"))
    await archive_calls(settings, [sim.add_call(recordings=2).sid, sim.add_call().sid])
    await archive_calls(settings, [sim.add_call().sid])
    return settings
