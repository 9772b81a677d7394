"""The rescue lane of an account without pre-signed URLs (issue 18): its listing's private
``RecordingUrl`` is the rescue's URL, fetched with HTTP Basic over https from an allow-listed
host. Its own module: the https servers of tests/test_recording_auth.py hold port 443 of their
addresses for that module's whole run (module-scoped), so these take other addresses."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from archiver.exotel.models import IST
from tests.seaweed import SeaweedFS
from tests.support import ledger_rows, recordings_in, run_archiver
from tests.test_recording_auth import (  # noqa: F401 (the fixtures, for this module's scope)
    PREFIX,
    addresses,
    cert,
    cli_env,
    no_leak_anywhere,
    private_sim,
    sent_credentials,
    serving,
)


def test_a_backfill_rescues_private_recordings_from_their_recording_url_then_enriches(
    addresses: tuple[str, str],  # noqa: F811 (the fixture imported above)
    cert: tuple[Path, Path],  # noqa: F811
    seaweed: SeaweedFS,
    bucket: str,
    tmp_path: Path,
) -> None:
    """No pre-signed URL in the listing: ``RecordingUrl`` on an allow-listed host over https is
    the rescue's URL, with the credentials; the enrichment finds the second recording and does
    not download the rescued one again."""
    sim = private_sim(seed=181)
    day = datetime.now(IST).date() - timedelta(days=3)
    noon = datetime.combine(day, datetime.min.time(), IST) + timedelta(hours=12)
    one = sim.add_call(created=noon, size=40 * 1024)
    two = sim.add_call(created=noon + timedelta(minutes=5), recordings=2, size=30 * 1024)
    host = addresses[0]
    with serving(sim, host, 443, cert) as srv:
        env = cli_env(
            sim,
            srv.base_url,
            seaweed,
            bucket,
            tmp_path,
            SSL_CERT_FILE=str(cert[0]),
            ARCHIVER_RECORDING_AUTH_HOSTS=host,
            ARCHIVER_RESCUE="on",
            EXOTEL_RATE_LIMIT="6000",
        )
        done = run_archiver(["backfill", "--since", str(day), "--until", str(day)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = recordings_in(seaweed, bucket, PREFIX)
    want = [sim.recording_bytes(one.sid, 1), *(sim.recording_bytes(two.sid, i) for i in (1, 2))]
    assert sorted(stored.values()) == sorted(want)
    assert sim.counters["recording_requests"] == 3  # each recording once
    assert sent_credentials(sim) == 3 and sim.counters[f"credentialed_requests:{host}"] == 3
    rows = ledger_rows(tmp_path / "state", "SELECT call_sid, outcome FROM calls")
    assert dict(rows) == {one.sid: "archived", two.sid: "archived"}
    kinds = ledger_rows(tmp_path / "state", "SELECT kind, COUNT(*) FROM objects GROUP BY kind")
    assert dict(kinds) == {"recording": 3, "v1_record": 2, "call_details": 2}
    no_leak_anywhere(sim, seaweed, bucket, done.stdout, done.stderr)
