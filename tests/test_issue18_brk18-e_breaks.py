"""Breaker E (issue 18): private recordings' credentials and the one budget's share.

Each test proves one way the archiver's record or its settings say something false, or the
Exotel credentials go where the operator said they must not; each fails on main as it stands.
Real parts only: the simulator over real HTTP(S) (port 443 of a loopback address, as
tests/test_recording_auth.py does it), the CLI, a local destination.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp

from archiver.addresses import AddressPolicy, GuardedResolver
from archiver.config import load_settings
from archiver.errors import ArchiverError, ConfigError
from archiver.exotel.models import IST
from archiver.recording_auth import RecordingAuth
from archiver.simulator import Simulator, SimulatorServer
from archiver.transfer import Partial, download
from tests.support import exotel_env, invoke
from tests.test_recording_auth import (  # noqa: F401 (the fixtures, for this module's scope)
    EXOTEL,
    ToOne,
    addresses,
    cert,
    path_of,
    private_sim,
    sent_credentials,
    serving,
)
from tests.test_rescue import the_day

# --- the allow-list: "Empty: never" ------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    return {
        "EXOTEL_ACCOUNT_SID": "acct",
        "EXOTEL_API_KEY": "exokey-brk18e",
        "EXOTEL_API_TOKEN": "exotok-brk18e",
        "ARCHIVER_CONFIG": "",
        **extra,
    }


async def test_an_empty_recording_auth_hosts_variable_still_sends_the_credentials(
    addresses: tuple[str, str],  # noqa: F811 (the fixture imported above)
    cert: tuple[Path, Path],  # noqa: F811
) -> None:
    """docs/configuration.md and ``--help``: ARCHIVER_RECORDING_AUTH_HOSTS "Empty: never" — the
    operator's way to keep the account's API key and token off every recording download. But
    ``load_settings`` takes an empty environment variable as unset (``env.get(opt.env, "") !=
    ""``), so ``ARCHIVER_RECORDING_AUTH_HOSTS=`` (as written in a systemd EnvironmentFile)
    gives the default ``recordings.exotel.com``, and a download of a private URL there carries
    HTTP Basic of the key and token: the real https server on port 443 counts the credentialed
    request. (An empty ``recording_auth_hosts = ""`` in the TOML file or ``--recording-auth-hosts
    ''`` do mean never.) Expected: an empty variable means what the docs say, no host."""
    settings = load_settings(env=_env(ARCHIVER_RECORDING_AUTH_HOSTS=""))
    sim = private_sim(seed=185)
    sim.api_key = settings.exotel.api_key.reveal()
    sim.api_token = settings.exotel.api_token.reveal()
    call = sim.add_call(size=20 * 1024)
    auth = RecordingAuth.from_settings(settings)
    policy = AddressPolicy(allow_private=True)
    url = f"https://{EXOTEL}{path_of(sim, call)}"
    with serving(sim, addresses[0], 443, cert):
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(policy, ToOne(addresses[0])),  # EXOTEL -> the server
            ssl=ssl.create_default_context(cafile=str(cert[0])),
        )
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        ) as session:
            # Refused without the credentials (RecordingAuthRequired) is what the docs promise.
            with tempfile.TemporaryFile() as spool, contextlib.suppress(ArchiverError):
                await download(
                    session, url, Partial(spool), what="recording 1", policy=policy, auth=auth
                )
    assert sent_credentials(sim) == 0, "the credentials went to " + EXOTEL
    assert settings.recording_auth_hosts == (), settings.recording_auth_hosts


# --- the enrichment's share ---------------------------------------------------------------------


def test_an_enrich_share_over_100_in_the_config_file_is_taken_as_100() -> None:
    """ARCHIVER_ENRICH_SHARE is "percent of --rate-limit", between 1 and 100; from the
    environment ``100.5`` is refused (exit 2). From the TOML file ``enrich_share = 100.5``
    passes: ``_convert`` truncates the float with ``int()`` *before* the range check, so an out
    of range value is accepted as 100 (and ``12.9`` silently becomes 12). Expected: a
    ``ConfigError`` naming the file's key, as for every other out of range value."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "archiver.toml"
        path.write_text("[archiver]\nenrich_share = 100.5\n")
        try:
            settings = load_settings(env=_env(ARCHIVER_CONFIG=str(path)))
        except ConfigError as refused:
            assert "enrich_share" in str(refused)
            return
    raise AssertionError(f"enrich_share = 100.5 accepted as {settings.enrich_share}")


def test_the_plan_at_enrich_share_100_gives_the_calls_through_v3_one_request_a_minute(
    tmp_path: Path,
) -> None:
    """A lane backfill at ARCHIVER_ENRICH_SHARE=100 (a valid value) of 4 calls listed with a
    URL (rescued, then enriched) and 4 listed without one (through v3): 9 requests at 120/min.
    ``Plan.minutes_at`` gives the v3 calls ``rate_limit - enrich_share`` = 0 a minute, floored
    to 1, so the dry run's JSON plan says ``estimated_minutes_at_rate_limit`` 4.0, "4 min" —
    while its printed lines say "under a minute" for both, and the real run then takes about a
    second (the limiter reserves nothing for the enrichment: it only caps it). Expected: an
    estimate the run can meet (9 requests at 120/min: under a minute), one figure in both."""
    sim = Simulator(seed=18)
    noon = datetime.combine(the_day(), datetime.min.time(), IST) + timedelta(hours=12)
    for n in range(4):
        sim.add_call(created=noon + timedelta(minutes=n), size=8_000)
    for n in range(4):
        direct = sim.add_call(created=noon + timedelta(hours=1, minutes=n), size=8_000)
        sim.faults.bulk_item_patches[direct.sid] = {"PreSignedRecordingUrl": None}
    day = str(the_day())
    with SimulatorServer(sim) as server:
        env = {
            **exotel_env(sim, server.base_url, str(tmp_path / "archive"), tmp_path / "state"),
            "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",
            "ARCHIVER_RESCUE": "on",
            "EXOTEL_RATE_LIMIT": "120",
            "ARCHIVER_ENRICH_SHARE": "100",
        }
        planned = tmp_path / "plan.json"
        dry = invoke(
            ["backfill", "--since", day, "--until", day, "--dry-run", "--report", str(planned)],
            env,
        )
        assert dry.exit_code == 0, dry.output
        began = time.monotonic()
        done = invoke(["backfill", "--since", day, "--until", day], env)
        took = time.monotonic() - began
    assert done.exit_code == 0, done.output
    assert took < 30, took
    plan = json.loads(planned.read_text())["plan"]
    assert (plan["to_archive"], plan["to_rescue"]) == (4, 4), plan
    assert "under a minute at 120/min" in dry.output  # the printed plan
    assert plan["estimated_duration"] == "under a minute", (plan["estimated_duration"], took)
    assert plan["estimated_minutes_at_rate_limit"] * 60 <= 60, plan
