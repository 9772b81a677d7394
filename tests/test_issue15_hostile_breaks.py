"""Issue 15, hostile input and the API budget: the cases found after the first fix landed.

1. A recording on an IPv6 literal host is archived, and the manifest's ``source`` is a URL that
   names the same host and port.
2. A call failed for a permanent reason (``bad_url``, ``storage_rejected``) is not fetched or
   downloaded again by every later sweep.
3. A store that refuses every object with the same 4xx stops the run (exit 2) instead of
   downloading every call only to fail it.
4. An IPvFuture host or an empty punycode label is a ``bad_url`` before any DNS lookup.

Real parts only: the simulator over real HTTP, SeaweedFS behind FaultyS3Proxy, a real HTTP
server on the IPv6 loopback, the worker in-process (``Daemon``) and ``exotel-archiver archive``
through click.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from archiver.addresses import AddressPolicy, GuardedResolver
from archiver.archive import REJECT_STREAK
from archiver.errors import ArchiverError, error_reason
from archiver.manifest import read_manifest
from archiver.report import FAILED
from archiver.simulator import Simulator, SimulatorServer
from archiver.transfer import Partial, download
from tests.s3proxy import FaultyS3Proxy
from tests.seaweed import SeaweedFS
from tests.support import NoDns, exotel_env, invoke, outcomes
from tests.test_daemon import daemon_settings, make_daemon, running, until

PREFIX = "brk1"
MP3 = b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 16
SIGNED = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIABRK1&X-Amz-Signature=beefbeef15"


# --- 1. an IPv6 recording host: the manifest's "source" is not a URL -----------------------------


class _Mp3Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "audio/mpeg")
        self.send_header("Content-Length", str(len(MP3)))
        self.end_headers()
        self.wfile.write(MP3)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture
def v6_recordings() -> Iterator[int]:
    """A real HTTP server on [::1] serving one MP3 body; yields its port."""
    httpd = _V6Server(("::1", 0), _Mp3Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_recording_from_an_ipv6_host_is_recorded_with_a_source_that_is_a_url(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, v6_recordings: int
) -> None:
    """A pre-signed URL on an IPv6 literal host is a good URL: it is downloaded and archived.
    The manifest then names where it came from — and that must be a URL that names the same
    host and port (what an auditor or ``repair`` reads back)."""
    call = sim.add_call(size=2000)
    url = f"http://[::1]:{v6_recordings}/rec/{call.sid}.mp3?{SIGNED}"
    sim.faults.recording_url_for[call.sid] = url
    state = tmp_path / "state"
    env = {
        **exotel_env(sim, server.base_url, str(tmp_path / "archive"), state),
        "ARCHIVER_ALLOW_PRIVATE_ADDRESSES": "on",  # ::1 is loopback: the operator allows it
        "ARCHIVER_ATTEMPTS": "1",
    }
    result = invoke(["archive", call.sid], env)
    assert result.exit_code == 0, result.output
    assert "beefbeef15" not in result.output
    [entry] = [e for e in read_manifest(state / "manifest.jsonl") if e["kind"] == "recording"]
    source = entry["source"]
    assert "beefbeef15" not in source
    parts = urlsplit(source)
    # Fails: the source is 'http://::1:PORT/rec/...' (brackets lost): urlsplit reads host ':'
    # and the port raises ValueError.
    assert (parts.hostname, parts.port) == ("::1", v6_recordings), source


# --- 2. a call failed for a permanent reason is fetched again by every sweep ---------------------


async def test_a_call_failed_for_a_malformed_url_is_not_fetched_again_by_every_sweep(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    """``bad_url`` is permanent (not retryable): the URL Exotel gives will not mend itself. The
    worker must not spend a call-details request on it at every sweep for the whole lookback
    (24 h at one sweep per 15 min: 96 requests a bad call, and the listing keeps it there)."""
    bad = sim.add_call(size=2000)
    sim.faults.recording_url_for[bad.sid] = f"https://rec.example.com:99999/r.mp3?{SIGNED}"
    settings = daemon_settings(sim, server, tmp_path)
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.failures["bad_url"] >= 1)  # the first sweep
        first = sim.counters.get("v3_call_details", 0)
        for _ in range(4):  # four more sweeps, as 15-min sweeps would do in an hour
            await daemon.sweep()
            await until(lambda: not daemon.schedule.in_flight and not daemon.schedule.waiting)
        later = sim.counters.get("v3_call_details", 0)
    assert outcomes(settings.state_dir, bad.sid) == {bad.sid: FAILED}
    assert first == 1
    # Fails: every sweep finds the call 'failed in the ledger', schedules it and asks for its
    # details again (and fails it again): 5 requests (and counting) instead of 1.
    assert later == first, f"{later} call-details requests for one permanently bad call"
    assert daemon.metrics.failures["bad_url"] == 1


async def test_a_call_whose_object_the_store_refuses_is_not_downloaded_again_by_every_sweep(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``storage_rejected`` is not retryable either: every sweep downloads the whole recording
    again (bandwidth), asks Exotel again (budget) and has the PUT refused again."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    refused = sim.add_call(size=50_000)
    proxy.fail(
        lambda m, p: m == "PUT" and f"/{refused.sid}/recording-" in p,
        times=10_000,
        status=400,
        code="InvalidArgument",
    )
    settings = daemon_settings(
        sim, server, tmp_path, env={"ARCHIVER_DESTINATION": f"s3://{bucket}/{PREFIX}"}
    )
    daemon = make_daemon(settings)
    async with running(daemon):
        await until(lambda: daemon.metrics.failures["storage_rejected"] >= 1)
        downloads = sim.counters.get("recording_requests", 0)
        for _ in range(4):
            await daemon.sweep()
            await until(lambda: not daemon.schedule.in_flight and not daemon.schedule.waiting)
        again = sim.counters.get("recording_requests", 0)
    assert outcomes(settings.state_dir, refused.sid) == {refused.sid: FAILED}
    assert downloads == 1
    # Fails: 5 downloads of the same 50 kB recording, each refused by the store again.
    assert again == downloads, f"the refused recording was downloaded {again} times"


# --- 3. the same 4xx for every object: the run never says it concerns every call ------------------


def test_a_store_that_refuses_every_object_stops_the_run_instead_of_failing_each_call(
    sim: Simulator,
    server: SimulatorServer,
    seaweed: SeaweedFS,
    s3_env: None,
    bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bucket policy that requires an SSE header the archiver does not send (or a gateway that
    refuses its checksum header) answers EVERY PutObject with 400 InvalidArgument. That is not
    about one object: it concerns every call, like AccessDenied. Each call is downloaded in full
    and then failed; a backfill of 100,000 calls downloads them all and stores none, and the
    worker does so forever (every sweep, every new call). A one-shot command should stop after
    a few refusals of the same kind with nothing stored, naming the problem."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    calls = [sim.add_call(size=20_000).sid for _ in range(12)]
    proxy.fail(
        lambda m, p: m == "PUT" and "/recording-" in p,
        times=10_000,
        status=400,
        code="InvalidArgument",
    )
    state = tmp_path / "state"
    env = {
        **exotel_env(sim, server.base_url, f"s3://{bucket}/{PREFIX}", state),
        "ARCHIVER_ATTEMPTS": "2",
        "ARCHIVER_MAX_WAIT": "0.1",
        "ARCHIVER_CONCURRENCY": "1",
    }
    result = invoke(["archive", *calls], env)
    downloads = sim.counters.get("recording_requests", 0)
    # Failed: exit 1 after downloading all 12 recordings and failing each as storage_rejected.
    # Now the one-shot command stops after REJECT_STREAK calls (exit 1: done, with failures;
    # not 2, a stop that systemd would never restart) naming the likely cause.
    assert "check the bucket policy" in result.output
    assert result.exit_code == 1, (
        f"exit {result.exit_code} after {downloads} downloads, none stored:\n"
        + result.output[-1500:]
    )
    assert downloads == REJECT_STREAK
    # Run again: the calls that stopped the first run are failed in the ledger and do not count
    # again, so a run with a few genuinely bad calls first still gets past them.
    again = invoke(["archive", *calls], env)
    assert again.exit_code == 1 and "check the bucket policy" in again.output
    # 4 failed again (the 5th, which stopped the run, stayed pending) + 5 new ones
    assert sim.counters.get("recording_requests", 0) - downloads == 2 * REJECT_STREAK - 1


# --- 4. an IPvFuture host goes to DNS as a name, and is retried ---------------------------------


@pytest.mark.parametrize("host", ["[v1.fe80]", "xn--", "a.xn--zz-.example"])
async def test_an_ipvfuture_host_is_a_bad_url_before_any_lookup(tmp_path: Path, host: str) -> None:
    """``[v1.fe80]`` (RFC 3986 IPvFuture) is no address anyone can connect to. Today the text
    inside the brackets passes ``well_formed`` as a host name, is looked up in DNS, and the
    failure is a retryable ``RecordingTransferError``: the worker retries the download, then
    the call (five times, each with a call-details request), then at every sweep — for a URL
    that can never work. Likewise a punycode label that decodes to nothing (``xn--``)."""
    url = f"https://{host}/r.mp3?{SIGNED}"
    policy = AddressPolicy.for_hosts(["http://127.0.0.1:1"], allow_private=False)
    dns = NoDns()
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy, inner=dns))
    async with aiohttp.ClientSession(connector=connector) as session:
        with (tmp_path / "spool").open("w+b") as spool:
            try:
                await download(session, url, Partial(spool), what="recording-1", policy=policy)
            except ArchiverError as exc:
                got = (type(exc).__name__, error_reason(exc), exc.retryable)
            else:
                got = ("accepted", "", False)
    # Fails: ('RecordingTransferError', 'recording_transfer_error', True), and DNS was asked
    # for 'v1.fe80'.
    assert got == ("BadUrl", "bad_url", False)
    assert dns.asked == []
