"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

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
